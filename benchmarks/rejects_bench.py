"""What bad-record isolation costs (issue 14): word count with ``on_error="reject"``, clean and poisoned.

The ``rejects`` suite (``python -m benchmarks --suites rejects``; not in the default set) asks two
things of ``on_error="reject"`` on word count: with no bad rows it costs at most 3 % over the
default (``fail``), and with one poison line per million it finishes within 1.2 × the clean run.

**Data.** The word-count corpus of :func:`benchmarks.datagen.text`, about ``--rejects-lines`` lines
(default 1e7, ~360 MB in 8 ``.txt`` files of ~45 MB, each one map task; more files past 8 × 96 MB;
``--quick``: 4e4 lines in 2 files), and a poisoned copy (:func:`poisoned`, cached beside it): the same files with one line in
each block of ``--rejects-poison-every`` lines (default 1e6; ``--quick``: 1e4) at a seeded random
place replaced by that line followed by the token :data:`MARKER`. A file's own lines, its rows and
the poisoned lines' originals are in the copy's ``_COMPLETE`` marker.

**Job.** Word count as :mod:`jobs.wordcount` writes it, whose map function raises on a batch with
a word it cannot count (:func:`counted_words`): it splits the batch into words first, then finds the
marker and raises ``ValueError`` -- a failed call costs as much as a successful one, the worst case
for isolation (bisection calls the function on the batch, then on halves down to the row). The same
job for every system; no option a user would not write.

**Systems** (taking turns, the first one rotating, ``max(5, --repeat)`` repeats; ``--quick``:
``--repeat``), each ``engine.run(JOB, data, fresh output, force=True, ...)`` timed whole on the
embedded cluster (``engine.local.max-bytes: 0``, which 1e7 lines need anyway):

* ``fail``: the clean corpus, no guard options (``on_error="fail"``, the default);
* ``reject``: the clean corpus, ``on_error="reject", max_rejected=<the poison lines>``;
* ``poison``: the poisoned corpus, the same options as ``reject``.

**Checks** (untimed, every run): ``fail`` and ``reject`` equal a pyarrow count of the clean files
(:func:`benchmarks.stragglers.reference_counts`); ``poison`` equals it minus the words of the lines
that were poisoned, its report counts exactly that many rejected rows, and ``engine.read_rejected``
of its output holds exactly those lines (file, row, the poisoned text, ``ValueError``), each once.

**Records.** A ``measurement`` record per system (``case`` = ``wordcount``); ``reject`` and
``poison`` carry ``ratio`` (median ÷ ``fail``'s median), ``ratios.fail`` (the median of the paired
ratios), ``ratio_runs`` and ``ratio_range`` (min..max of the paired ratios, the noise), ``target``
and ``met`` (the paired median within the target), and the same for the workers' CPU seconds
(``cpu_ratio``) and the map tasks' thread CPU seconds (``map_cpu_ratio``: the work the isolation
adds, least disturbed by other load on the machine). Every record carries each run's
stage seconds, map-task CPU seconds, worker CPU seconds and rejected count (``extra``), and the
load average around the case. A ``rejects_total`` record gathers both ratios with their ``met``.

    python -m benchmarks --suites rejects                              # 1e7 lines, 1 poison per 1e6
    python -m benchmarks --suites rejects --rejects-lines 1e8 --repeat 7
    python -m benchmarks --suites rejects --rejects-poison-every 1e5   # ten times the poison

Where the time goes, by py-spy sampling the embedded cluster's workers during one run of each system
(needs ``py-spy``; shares of the CPU-active samples: the map function's first call on each batch
apart from its calls during isolation, reading, the map-side combine and shuffle, the rest)::

    python -m benchmarks.rejects_bench profile [--lines 1e7] [--every 1e6] [--systems fail,reject,poison]

The poisoned run with a failing call split in halves against sixteenths (``engine.rejects.SPLIT_PARTS``
set in every worker for the purpose), taking turns, the map tasks' CPU seconds paired::

    python -m benchmarks.rejects_bench split [--repeat 6] [--parts 2,16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import harness
from benchmarks.harness import Measured, Outcome
from engine import Job, agg

SUITE = "rejects"
CASE = "wordcount"
REPEAT = 5                       # at least this many repeats outside --quick: a 3 % bound needs the noise shown
FAIL, REJECT, POISON = "fail", "reject", "poison"
SYSTEMS = (FAIL, REJECT, POISON)
TARGETS = {REJECT: 1.03, POISON: 1.2}
MARKER = "#poison#"              # never a word of the generated corpus (lower-case a-z only)
POISON_SEED = 14


# ---------------------------------------------------------------------------------------------
# The job


def counted_words(t: pa.Table) -> pa.Table:
    """:func:`jobs.wordcount.words`, raising on a batch holding a word it cannot count (:data:`MARKER`)."""
    w = pc.list_flatten(pc.ascii_split_whitespace(pc.utf8_lower(t["text"])))
    w = pc.filter(w, pc.not_equal(w, ""))
    if pc.any(pc.equal(w, MARKER)).as_py():
        raise ValueError(f"cannot count the word {MARKER!r}")
    return pa.table({"word": w})


JOB = Job("wordcount-rejects").map(counted_words, columns=["text"]).reduce(by="word", aggs={"count": agg.count()})


# ---------------------------------------------------------------------------------------------
# Data


def corpus_bytes(lines: int, vocab: int = 50_000, zipf: float = 1.1) -> int:
    """The ``datagen.text`` size that holds about ``lines`` lines."""
    from benchmarks import datagen
    return int(math.ceil(lines * 10 * datagen._mean_word_bytes(datagen.vocabulary(vocab), zipf)))


def clean(lines: int, files: int, root: str | None = None) -> str:
    """The corpus of about ``lines`` lines, in at least ``files`` files and more if need be to keep
    each below ``engine``'s split size (~96 MB): one map task per file, rows counted from its start."""
    from benchmarks import datagen
    size = corpus_bytes(lines)
    return datagen.text(size, max(int(files), math.ceil(size / datagen.TARGET_FILE_BYTES)), out=root)


def poison_positions(file_rows: list[int], every: int, seed: int = POISON_SEED) -> dict[int, list[int]]:
    """``{file index: sorted rows}``: one line in each block of ``every`` lines (the files' lines
    counted in order) at a seeded random place in the block; a last, partial block only if the place
    falls inside it."""
    total = sum(file_rows)
    rng = np.random.default_rng(seed)
    starts = np.cumsum([0] + list(file_rows))
    out: dict[int, list[int]] = {}
    for block in range(math.ceil(total / every) if total else 0):
        pos = block * every + int(rng.integers(every))
        if pos >= total:
            continue
        f = int(np.searchsorted(starts, pos, side="right") - 1)
        out.setdefault(f, []).append(int(pos - starts[f]))
    return {f: sorted(rows) for f, rows in out.items()}


def poisoned(clean_dir: str, every: int, root: str | None = None, seed: int = POISON_SEED) -> str:
    """A copy of ``clean_dir`` with one line per ``every`` followed by `` MARKER`` (cached)."""
    from benchmarks import datagen
    marker = datagen.read_marker(clean_dir)
    files = [f["name"] for f in marker["files"]]
    positions = poison_positions([int(f["rows"]) for f in marker["files"]], every, seed)
    params = {"dataset": "text-poisoned", "of": os.path.basename(clean_dir), "every": every, "seed": seed,
              "marker": MARKER}

    def write(directory: str) -> list[dict]:
        out = []
        for i, name in enumerate(files):
            with open(os.path.join(clean_dir, name), "rb") as f:
                data = f.read()
            lines = data.split(b"\n")           # the last piece is the empty one after the final newline
            originals = []
            for row in positions.get(i, []):
                originals.append([row, lines[row].decode()])
                lines[row] = lines[row] + b" " + MARKER.encode()
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(b"\n".join(lines))
            out.append({"name": name, "rows": len(lines) - 1, "bytes": os.path.getsize(path), "poison": originals})
        return out

    name = f"{os.path.basename(clean_dir)}_poison{datagen._label(every)}_s{seed}"
    root = root if root is not None else os.path.dirname(clean_dir)
    return datagen._cached(root, name, params, write)


def poisoned_lines(poison_dir: str) -> list[tuple[str, int, str]]:
    """``(file name, row, original line)`` of every poisoned line of :func:`poisoned`'s copy."""
    from benchmarks import datagen
    return [(f["name"], int(row), text) for f in datagen.read_marker(poison_dir)["files"] for row, text in f["poison"]]


def _counts_of(lines: list[str]) -> pa.Table:
    if not lines:
        return pa.table({"word": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    words = pc.list_flatten(pc.split_pattern(pa.array(lines, pa.string()), " "))
    words = words.filter(pc.not_equal(words, ""))
    vc = pc.value_counts(words)
    return pa.table({"word": vc.field("values").cast(pa.string()), "count": vc.field("counts").cast(pa.int64())})


def minus(reference: pa.Table, lines: list[str]) -> pa.Table:
    """``reference`` (word, count) less the words of ``lines``; words left with no count dropped."""
    from benchmarks.stragglers import normalize
    less = _counts_of(lines)
    both = pa.concat_tables([reference.select(["word", "count"]).cast(less.schema),
                             less.set_column(1, "count", pc.negate(less["count"]))])
    summed = both.group_by("word").aggregate([("count", "sum")]).rename_columns(["word", "count"])
    return normalize(summed.filter(pc.greater(summed["count"], 0)))


# ---------------------------------------------------------------------------------------------
# Runs and their checks


class Runs:
    """The three systems, and the untimed check of every run they made."""

    def __init__(self, ctx, clean_dir: str, poison_dir: str, limit: int) -> None:
        from benchmarks.stragglers import reference_counts
        self.ctx, self.clean_dir, self.poison_dir, self.limit = ctx, clean_dir, poison_dir, limit
        self.poison = poisoned_lines(poison_dir)
        self.clean_ref = reference_counts(clean_dir)
        self.poison_ref = minus(self.clean_ref, [text for _, _, text in self.poison])
        self.problems: list[str] = []
        self.checked = {s: 0 for s in SYSTEMS}

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def system(self, name: str):
        import engine
        data = self.poison_dir if name == POISON else self.clean_dir
        options = {} if name == FAIL else {"on_error": "reject", "max_rejected": self.limit}

        def run(keep: bool) -> Outcome:
            out = self.ctx.out(f"rejects-{name}")
            try:
                t0 = time.perf_counter()
                result = engine.run(JOB, data, out, force=True, **options)
                seconds = time.perf_counter() - t0
                self._check(name, result, out)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            rep = result.report
            maps = [t for t in rep.tasks if t.stage.endswith("map") and t.status == "ok"]
            extra = {"stages": {s.name: round(s.duration, 4) for s in rep.stages},
                     "map_cpu_s": round(sum(t.cpu for t in maps), 4),
                     "worker_cpu_s": (rep.usage or {}).get("worker_cpu_seconds"),
                     "rejected": rep.rejected, "tasks": sum(s.tasks for s in rep.stages),
                     "attempts": sum(s.attempts for s in rep.stages),
                     "speculative": sum(s.speculative for s in rep.stages),
                     "local": bool((rep.cluster or {}).get("local"))}
            return Outcome(seconds, None, result.rows, extra=extra)
        return run

    def _check(self, name: str, result: Any, out: str) -> None:
        from benchmarks import answers
        from engine.rejects import read_rejected
        from benchmarks.stragglers import normalize
        ref = self.poison_ref if name == POISON else self.clean_ref
        got = normalize(result.read())
        ok, why = answers.same(got, ref, ["word"])
        if not ok:
            self._problem(f"{name} run {result.run_id}: answer differs from the reference: {why}")
        rejected = read_rejected(out)
        want = len(self.poison) if name == POISON else 0
        if result.report.rejected != want or rejected.num_rows != want:
            self._problem(f"{name} run {result.run_id}: {result.report.rejected} rejected in the report, "
                          f"{rejected.num_rows} in {out}/_rejected, expected {want}")
        if name == POISON:
            expected = sorted((f, row, f"{text} {MARKER}") for f, row, text in self.poison)
            got_rows = sorted((os.path.basename(r["file"] or ""), r["row"], json.loads(r["record"] or "{}").get("text"))
                              for r in rejected.to_pylist())
            if got_rows != expected:
                self._problem(f"poison run {result.run_id}: rejected rows {got_rows[:3]}... are not the poisoned "
                              f"lines {expected[:3]}...")
            kinds = {(r["stage"], r["error_type"]) for r in rejected.to_pylist()}
            if want and kinds != {("map", "ValueError")}:
                self._problem(f"poison run {result.run_id}: rejected rows of {kinds}, expected map ValueError")
        self.checked[name] += 1

    def check(self) -> dict[str, Any]:
        return {"ok": not self.problems, "problems": list(self.problems), "runs_checked": dict(self.checked),
                "against": {"fail, reject": {"equal": not any(p.startswith(("fail", "reject")) for p in self.problems),
                                             "how": "values vs a pyarrow count of the clean files"},
                            "poison": {"equal": not any(p.startswith("poison") for p in self.problems),
                                       "how": "values vs the clean count less the poisoned lines' words; "
                                              "rejected rows exactly the poisoned lines"}}}


# ---------------------------------------------------------------------------------------------
# The suite


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _paired(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b) if y]


def run_suite(ctx) -> None:
    """The ``rejects`` suite of ``python -m benchmarks``."""
    import dask.config

    from benchmarks import datagen
    from benchmarks.suites import _dir_bytes, _read_files, rows_label

    p = ctx.profile
    quick = p.name == "quick"
    repeat = ctx.repeat if quick else max(REPEAT, ctx.repeat)
    every = int(p.rejects_poison_every)
    clean_dir = clean(int(p.rejects_lines), int(p.rejects_files), ctx.data_root)
    poison_dir = poisoned(clean_dir, every, ctx.data_root)
    lines = int(datagen.read_marker(clean_dir)["rows"])
    size = _dir_bytes(clean_dir, ".txt")
    runs = Runs(ctx, clean_dir, poison_dir, limit=max(1, len(poisoned_lines(poison_dir))))
    n_poison = len(runs.poison)
    from engine import config
    batch_rows = int(config.get("batch-rows"))
    params = {"lines": lines, "files": len(datagen.read_marker(clean_dir)["files"]), "bytes": size, "poison_every": every,
              "poison_lines": n_poison, "dataset": os.path.basename(clean_dir), "repeat": repeat,
              "mode": "cluster", "batch_rows": batch_rows, "max_rejected": runs.limit}
    ctx.progress.line(f"rejects: word count on {rows_label(lines)} lines ({size / 1e6:.0f} MB, {params['files']} "
                      f"files), {n_poison} poisoned (1 per {every:,}), on the embedded cluster, {repeat} repeats")
    _read_files(clean_dir)
    _read_files(poison_dir)
    with dask.config.set({"engine.local.max-bytes": 0}):
        ctx.client()
        for name in SYSTEMS[:1] if quick else SYSTEMS:       # worker imports, page cache
            runs.system(name)(False)
        load0 = _load()
        m: Measured = harness.measure({s: runs.system(s) for s in SYSTEMS}, repeat, before=ctx.idle,
                                      keep_answers=False,
                                      on_run=lambda s, r, sec: ctx.progress.step(f"{s} {r + 1}/{repeat}", sec))
        load1 = _load()
    check = runs.check()
    _emit(ctx, m, check, params, lines, size, load0, load1)


def _emit(ctx, m: Measured, check: dict, params: dict, lines: int, size: int, load0: list[float],
          load1: list[float]) -> None:
    notes = ["word count whose map raises on the marker after splitting (a failed call costs a full one); "
             "fail: clean text, default options; reject: clean text, on_error='reject'; poison: poisoned text, "
             "on_error='reject'; embedded cluster, force=True into a fresh output, taking turns"]
    base = m.runs.get(FAIL, [])
    base_cpu = [x.get("worker_cpu_s") or 0.0 for x in m.extras.get(FAIL, [])]
    base_map = [x["map_cpu_s"] for x in m.extras.get(FAIL, [])]
    ratios: dict[str, dict[str, Any]] = {}
    for rec in harness.records(SUITE, CASE, m, params=params, input_rows=lines, input_bytes=size, notes=notes):
        system = rec["system"]
        rec["extra"] = m.extras.get(system, [])
        rec["load"] = {"before": load0, "after": load1}
        rec["check"] = check
        runs = m.runs.get(system, [])
        if system in TARGETS and runs and base:
            pr = _paired(runs, base)
            cpu = [x.get("worker_cpu_s") or 0.0 for x in m.extras.get(system, [])]
            cpr = _paired(cpu, base_cpu)
            mpr = _paired([x["map_cpu_s"] for x in m.extras.get(system, [])], base_map)
            paired = harness.median(pr)
            rec["ratio"] = round(harness.median(runs) / harness.median(base), 4)
            rec["ratios"] = {FAIL: round(paired, 4)}
            rec["ratio_runs"] = [round(x, 4) for x in pr]
            rec["ratio_range"] = [round(min(pr), 4), round(max(pr), 4)]
            rec["cpu_ratio"] = round(harness.median(cpr), 4) if cpr else None
            rec["cpu_ratio_range"] = [round(min(cpr), 4), round(max(cpr), 4)] if cpr else None
            rec["map_cpu_ratio"] = round(harness.median(mpr), 4) if mpr else None
            rec["map_cpu_ratio_range"] = [round(min(mpr), 4), round(max(mpr), 4)] if mpr else None
            rec["target"] = TARGETS[system]
            rec["met"] = bool(paired <= TARGETS[system])
            ratios[system] = {k: rec[k] for k in ("ratio", "ratio_range", "cpu_ratio", "cpu_ratio_range",
                                                  "map_cpu_ratio", "map_cpu_ratio_range", "target", "met")} \
                | {"paired": rec["ratios"][FAIL]}
        ctx.emit(rec)
    medians = {s: harness.median(v) for s, v in m.runs.items() if v}
    ctx.emit({"kind": "rejects_total", "suite": SUITE, "params": params, "medians": {
        s: round(v, 4) for s, v in medians.items()}, "ratios": ratios, "check": check,
        "met": bool(ratios) and all(r["met"] for r in ratios.values()) and len(ratios) == len(TARGETS)})
    if not check["ok"]:
        ctx.failures.append(f"{SUITE}: check failed: {'; '.join(check['problems'])[:600]}")
    for system, err in m.errors.items():
        ctx.failures.append(f"{SUITE} {system}: {err}")
    if medians:
        cells = ", ".join(f"{s} {v:.2f}s" for s, v in medians.items())
        rs = "; ".join(f"{s}/fail {r['paired']:.3f} ({r['ratio_range'][0]:.3f}..{r['ratio_range'][1]:.3f}), worker "
                       f"CPU {r['cpu_ratio'] if r['cpu_ratio'] is not None else '-'}, map-task CPU "
                       f"{r['map_cpu_ratio'] if r['map_cpu_ratio'] is not None else '-'}, target ≤ {r['target']} "
                       f"{'met' if r['met'] else 'NOT met'}" for s, r in ratios.items())
        ctx.progress.done(f"word count: {cells}; {rs}{'' if check['ok'] else '  CHECK FAILED'} (load {load0[0]})")


# ---------------------------------------------------------------------------------------------
# Summary


def summary_lines(records: list[dict]) -> list[str]:
    """The suite's records as a Markdown table (empty if the run has none)."""
    meas = {r["system"]: r for r in records if r.get("kind") == "measurement" and r.get("suite") == SUITE}
    if not meas:
        return []
    out = ["| system | data | on_error | median s | ÷ fail (paired median) | range over repeats | worker CPU ÷ fail "
           "| map-task CPU ÷ fail | target | met |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in SYSTEMS:
        r = meas.get(s)
        if r is None:
            continue
        data = "poisoned" if s == POISON else "clean"
        mode = "fail" if s == FAIL else "reject"
        if s in TARGETS and r.get("ratios"):
            rng = f"{r['ratio_range'][0]:.3f}..{r['ratio_range'][1]:.3f}"
            cpu = f"{r['cpu_ratio']:.3f}" if r.get("cpu_ratio") is not None else "-"
            mcpu = f"{r['map_cpu_ratio']:.3f}" if r.get("map_cpu_ratio") is not None else "-"
            out.append(f"| {s} | {data} | {mode} | {r['median']:.2f} | **{r['ratios'][FAIL]:.3f}** | {rng} | {cpu} "
                       f"| {mcpu} | ≤ {r['target']} | {'yes' if r['met'] else 'no'} |")
        else:
            out.append(f"| {s} | {data} | {mode} | {r['median']:.2f} | 1 | - | 1 | 1 | - | - |")
    return out


# ---------------------------------------------------------------------------------------------
# Where the time goes


def categorize(stack: str) -> str | None:
    """The category of one py-spy stack (root first, ``;``-separated) of a worker during a run."""
    from benchmarks import profile
    if "counted_words" in stack:
        return "map function: isolation re-runs" if "_bisect" in stack else "map function: first call"
    if "engine/rejects.py" in stack:
        return "isolation (other)"
    base = profile.categorize(stack)
    if base == "parquet decode":           # engine/datasets.py: the text reader here
        return "read text"
    if base in ("aggregate", "hash partition", "shuffle files"):
        return "combine + shuffle"
    return base


def _count_raw(path: str) -> Counter:
    counts: Counter = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if n.isdigit() and (category := categorize(stack)) is not None:
                counts[category] += int(n)
    return counts


def profile_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rejects_bench profile",
                                 description="py-spy shares of the workers' CPU samples, one run per system")
    ap.add_argument("--lines", type=float, default=1e7)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--every", type=float, default=1e6)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rate", type=int, default=100, help="samples per second (py-spy -r)")
    ap.add_argument("--raw", default=None, help="keep the sampled stacks as RAW-<system>.txt")
    ap.add_argument("--data", default=None, help="dataset cache root (default: benchmarks/data)")
    args = ap.parse_args(argv)
    import dask.config

    from benchmarks import profile
    clean_dir = clean(int(args.lines), args.files, args.data)
    poison_dir = poisoned(clean_dir, int(args.every), args.data)
    limit = max(1, len(poisoned_lines(poison_dir)))
    with dask.config.set({"engine.local.max-bytes": 0}):
        for name in args.systems.split(","):
            data = poison_dir if name == POISON else clean_dir
            options = {} if name == FAIL else {"on_error": "reject", "max_rejected": limit}
            seconds, stages, _ = profile.run_engine(JOB, data, 1, options)     # warm, and timed once
            shares = profile.sample(JOB, data, rate=args.rate, options=options, categorize_raw=_count_raw,
                                    keep=f"{args.raw}-{name}.txt" if args.raw else None)
            times = ", ".join(f"{st['stage']} {st['seconds']:.2f}s" for st in stages)
            print(f"{name}: {seconds:.2f}s ({times}); " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    return 0


def _set_split_parts(client, parts: int) -> None:
    """``engine.rejects.SPLIT_PARTS`` in this process and every worker (a measuring aid, not a setting)."""
    def put(parts: int = parts) -> int:
        import engine.rejects
        engine.rejects.SPLIT_PARTS = parts
        return parts
    put()
    client.run(put)


def split_main(argv: list[str]) -> int:
    """The poisoned run with failing calls split in halves and in sixteenths, taking turns."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rejects_bench split",
                                 description="the poison run with SPLIT_PARTS=2 (halves) and 16, taking turns")
    ap.add_argument("--lines", type=float, default=1e7)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--every", type=float, default=1e6)
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--parts", default="2,16")
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    import dask.config

    import engine
    from engine.cluster import get_client
    clean_dir = clean(int(args.lines), args.files, args.data)
    poison_dir = poisoned(clean_dir, int(args.every), args.data)
    limit = max(1, len(poisoned_lines(poison_dir)))
    parts = [int(x) for x in args.parts.split(",")]
    runs: dict[int, list[dict]] = {k: [] for k in parts}
    import engine.rejects
    default = engine.rejects.SPLIT_PARTS
    with dask.config.set({"engine.local.max-bytes": 0}):
        client, _ = get_client(None)

        def one(k: int) -> dict:
            _set_split_parts(client, k)
            out = os.path.join(os.path.dirname(poison_dir), f".split-{k}-{os.getpid()}")
            t0 = time.perf_counter()
            try:
                r = engine.run(JOB, poison_dir, out, force=True, on_error="reject", max_rejected=limit)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            maps = [t for t in r.report.tasks if t.stage.endswith("map") and t.status == "ok"]
            return {"parts": k, "seconds": round(time.perf_counter() - t0, 3), "rejected": r.report.rejected,
                    "map_cpu_s": round(sum(t.cpu for t in maps), 3),
                    "worker_cpu_s": (r.report.usage or {}).get("worker_cpu_seconds")}
        try:
            one(parts[-1])                                   # warm
            for i in range(args.repeat):
                shift = i % len(parts)
                for k in parts[shift:] + parts[:shift]:
                    runs[k].append(one(k))
                    print(json.dumps(runs[k][-1]), flush=True)
        finally:
            _set_split_parts(client, default)
    base = runs[parts[-1]]
    for k in parts:
        pr = _paired([x["map_cpu_s"] for x in runs[k]], [x["map_cpu_s"] for x in base])
        print(f"SPLIT_PARTS={k}: median {harness.median([x['seconds'] for x in runs[k]]):.2f}s, map-task CPU "
              f"{harness.median([x['map_cpu_s'] for x in runs[k]]):.2f}s, ÷ SPLIT_PARTS={parts[-1]} paired "
              f"{harness.median(pr):.3f} ({min(pr):.3f}..{max(pr):.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "profile":
        return profile_main(argv[1:])
    if argv and argv[0] == "split":
        return split_main(argv[1:])
    print("usage: python -m benchmarks.rejects_bench profile|split [...] (the suite: python -m benchmarks --suites "
          "rejects)", file=sys.stderr)
    return 2


__all__ = ["run_suite", "summary_lines", "JOB", "MARKER", "counted_words", "poisoned", "poison_positions",
           "poisoned_lines", "minus", "TARGETS"]


if __name__ == "__main__":
    sys.exit(main())
