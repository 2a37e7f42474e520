"""The suites of ``python -m benchmarks`` and the knob sweeps attached to them.

=============  ==============================================  ============================  ===============
suite          what runs                                       peers (timed)                 sweep (engine)
=============  ==============================================  ============================  ===============
groupby        db-benchmark q1-q10 on G1                       duckdb, polars, pyarrow, dask input partitions
wordcount      ``jobs.wordcount`` on the text corpus           duckdb, polars, pyarrow       combine on/off
sort           ``jobs.terasort`` on TeraSort records           duckdb, polars, pyarrow       partition_size
skew           ``skew_bench``'s median and sums jobs on        -                             skew on/off
               skewed keys
stragglers     word count with one slow map task               -                             speculation on/off
commit         the commit protocol vs plain ``pq.write_table``  pyarrow (plain write, read)   -
               and ``engine.read`` verified vs unverified
cluster        groupby q3 and word count per cluster shape     -                             workers x threads
driver         a stage of no-op tasks (driver CPU per task);   -                             -
               reducers' S3 bytes read / needed (moto)
tpch           TPC-H Q1, Q3, Q5, Q6, Q10, Q12, Q18             duckdb, polars, dask          -
               (``benchmarks.tpch_bench``)
startup        the README's word count and its no-op rerun     duckdb (a fresh process)      -
               as CLI wall time; ``import engine``
               (``benchmarks.startup``)
scale          G1 questions (default q1, q3, q10) at each of   duckdb, polars, pyarrow, dask input rows
               several input sizes (default 1e6, 1e7, 1e8)
incremental    a daily run of one day out of a year into a     the job on that day alone     -
               partitioned output holding the other days
               (``benchmarks.incremental``)
operations     G1 q1-q10 with the run history, usage figures,  the same runs with all of it  -
               metrics, alerts and spans on and off            off
               (``benchmarks.ops_bench``)
rejects        word count with ``on_error="reject"`` on clean   the same job, ``on_error=``   -
               text and on text with 1 poison line per         ``"fail"``, clean text
               million (``benchmarks.rejects_bench``)
=============  ==============================================  ============================  ===============

``driver`` is not in the default set (20,000 tasks take minutes here): ask for it with ``--suites driver``;
``--driver-tasks N`` sets the stage size (``--quick``: 2,000). Neither is ``tpch`` (``--suites tpch``;
``--tpch-sf N`` sets the scale factor, default 1, ``--quick``: 0.01), nor ``startup`` (``--suites startup``),
nor ``scale`` (``--suites scale``;
``--scale-rows 1e6,1e7,1e8`` and ``--scale-questions q1,q3,q10`` choose the sizes and questions; the
growth curve and a straight-line fit ``seconds = a + b x rows`` with its value at 1e9 rows are in
``python -m benchmarks summary``), nor ``incremental`` (``--suites incremental``; ``--incremental-days
365`` and ``--incremental-rows-per-day 1e6`` size its Hive input), nor ``operations``
(``--suites operations``; ``--operations-rows 1e7`` and ``--operations-questions q1,...,q10``, the
defaults, choose the G1 size and questions; its figure is the ratio on/off, bounded at 1.02), nor
``rejects`` (``--suites rejects``; ``--rejects-lines 1e7`` and ``--rejects-poison-every 1e6``, the
defaults, size the corpus and its poison; its figures are reject/fail, bounded at 1.03, and
poison/fail, bounded at 1.2).

Answers too big to hold (a G1 question whose estimated groups exceed ``--answers-in-memory``,
default 2e7 rows: q10 at 1e8) are written as Parquet by every system, in every timed run (the
engine keeps its committed output, DuckDB ``COPY``, polars ``sink_parquet``, dask ``to_parquet``),
and checked by :func:`benchmarks.answers.same_streamed` with bounded memory; the check's peak
memory is in its record (``check.rss_peak_mb``).

Inputs up to ``engine.local.max-bytes`` run in the driver process, as they do for users; the
``stragglers`` and ``cluster`` suites, which measure the cluster itself, set it to 0.

Every engine answer is checked: against each Arrow-answering peer value by value (dask: row count),
and where a suite times no peer, against an untimed independent reference (DuckDB or pyarrow):
groupby answers equal DuckDB's, word count equals a pyarrow count, a sort equals the sorted input,
committed files read back equal what was written (and a verified read equals the unverified one).

The skew suite also keeps the report of its median skew-on and skew-off runs (``run_report``
records) for ``python -m benchmarks replay``.

The *combine* sweep runs word count with ``engine.run(..., map_combine=True/False)``; with an engine
that lacks that switch it runs two jobs differing only in a ``.combine`` stage instead.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from benchmarks import answers, common, harness, peers
from benchmarks.harness import ENGINE, Measured, Outcome, timed
from benchmarks.progress import Progress
from engine import Job

SUITES = ("groupby", "wordcount", "sort", "skew", "stragglers", "commit", "cluster")
EXTRA_SUITES = ("driver", "tpch", "startup", "scale", "incremental", "operations", "rejects")  # run only when asked for by name
QUESTIONS = tuple(f"q{i}" for i in range(1, 11))


@dataclass(frozen=True)
class Profile:
    """Data sizes and sweep values of one mode (``quick`` for CI smoke, ``standard`` by default)."""

    name: str
    repeat: int
    g1_rows: int
    g1_parts: int
    text_bytes: int
    text_files: int
    sort_rows: int
    sort_parts: int
    skew_rows: int
    skew_parts: int
    skew_partition_size: str
    straggler_files: int
    straggler_file_bytes: int
    straggler_sleep: float
    commit_rows: int
    commit_parts: int
    sweep_parts: tuple[int, ...]
    sweep_partition_sizes: tuple[str, ...]
    sweep_shapes: tuple[tuple[int, int], ...]
    questions: tuple[str, ...] = QUESTIONS
    driver_tasks: int = 20_000
    driver_rows: int = 1_600_000
    driver_files: int = 16
    tpch_sf: float = 1.0
    scale_rows: tuple[int, ...] = (1_000_000, 10_000_000, 100_000_000)
    scale_questions: tuple[str, ...] = ("q1", "q3", "q10")
    incremental_days: int = 365
    incremental_rows_per_day: int = 1_000_000
    operations_rows: int = 10_000_000
    operations_questions: tuple[str, ...] = QUESTIONS
    rejects_lines: int = 10_000_000
    rejects_files: int = 8
    rejects_poison_every: int = 1_000_000


PROFILES = {
    "quick": Profile("quick", repeat=2, g1_rows=20_000, g1_parts=2, text_bytes=400_000, text_files=4,
                     sort_rows=20_000, sort_parts=2, skew_rows=40_000, skew_parts=4, skew_partition_size="64KiB",
                     straggler_files=4, straggler_file_bytes=100_000, straggler_sleep=1.5,
                     commit_rows=20_000, commit_parts=4, sweep_parts=(1, 4),
                     sweep_partition_sizes=("32KiB", "64MiB"), sweep_shapes=((1, 2), (2, 1)),
                     driver_tasks=2_000, driver_rows=200_000, driver_files=8, tpch_sf=0.01,
                     scale_rows=(10_000, 40_000), incremental_days=6, incremental_rows_per_day=20_000,
                     operations_rows=20_000, rejects_lines=40_000, rejects_files=2, rejects_poison_every=10_000),
    "standard": Profile("standard", repeat=3, g1_rows=2_000_000, g1_parts=2, text_bytes=40_000_000, text_files=4,
                        # 1 MiB: the top10 dataset's hot keys (~3 MB each) exceed the target, so skew handling
                        # acts (at 4 MiB it split nothing and on/off measured the same plan)
                        sort_rows=1_000_000, sort_parts=4, skew_rows=4_000_000, skew_parts=4,
                        skew_partition_size="1MiB", straggler_files=6, straggler_file_bytes=2_000_000,
                        straggler_sleep=3.0, commit_rows=2_000_000, commit_parts=8, sweep_parts=(1, 2, 4, 8),
                        sweep_partition_sizes=("1MiB", "8MiB", "64MiB"), sweep_shapes=((1, 1), (1, 2), (2, 1))),
}


@dataclass
class Context:
    """What every suite needs: sizes, repeats, peers, where to put things, and how to report."""

    profile: Profile
    repeat: int
    peers: tuple[str, ...]
    scratch: str
    emit: Callable[[dict], None]
    progress: Progress
    data_root: str | None = None
    timeline: str = "groupby:q3"
    failures: list[str] = field(default_factory=list)
    answers_in_memory: int = 20_000_000      # larger answers are written as Parquet and checked streamed

    def client(self):
        from engine.cluster import get_client
        return get_client(None)

    def idle(self) -> None:
        common.wait_idle(self.client()[0])

    def out(self, name: str) -> str:
        return os.path.join(self.scratch, f"{name}-{uuid.uuid4().hex[:8]}")


# ---------------------------------------------------------------------------------------------
# Systems


def engine_system(ctx: Context, job: Job, data: str, *, keep_reports: list | None = None, spill: bool = False,
                  **options: Any):
    """The engine as a system: one ``engine.run`` into a fresh output, ``force=True``, timed whole.

    ``spill``: the answer is too big to hold; keep the committed output's files as the answer
    (a :class:`benchmarks.answers.ParquetAnswer`, removed once checked) instead of reading them."""
    import engine

    def run(keep: bool) -> Outcome:
        out = ctx.out(job.name)
        kept = False
        try:
            seconds, result = timed(lambda: engine.run(job, data, out, force=True, **options))
            if keep and spill:
                answer, kept = answers.ParquetAnswer.of_files(result.files, owner=out), True
            else:
                answer = result.read() if keep else None
        finally:
            if not kept:
                shutil.rmtree(out, ignore_errors=True)
        rep = result.report
        if keep_reports is not None:
            keep_reports.append((seconds, rep.to_dict()))
        extra = {"stages": [{"stage": s.name, "tasks": s.tasks, "seconds": round(s.duration, 4),
                             "rows_out": s.rows_out, "speculative": s.speculative} for s in rep.stages],
                 "skew_decisions": len([d for d in rep.skew if d.get("action") not in ("plan", None)])}
        return Outcome(seconds, answer, result.rows, extra)
    return run


def peer_system(fn: Callable[[], Any]):
    """A peer as a system: ``fn()`` timed; its answer is an Arrow table or a pandas frame."""
    def run(keep: bool) -> Outcome:
        seconds, answer = timed(fn)
        return Outcome(seconds, answer if keep else None, len(answer))
    return run


def peer_files_system(ctx: Context, name: str, write: Callable[[str], Any], *, values: bool = True):
    """A peer whose answer is too big to hold: ``write(directory)`` writes it as Parquet, timed; the
    files are the answer (:class:`benchmarks.answers.ParquetAnswer`) when kept, else removed."""
    def run(keep: bool) -> Outcome:
        out = ctx.out(name)
        try:
            seconds, _ = timed(lambda: write(out))
            answer = answers.ParquetAnswer.of_directory(out, values=values, owner=out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        if not keep:
            answer.discard()
        return Outcome(seconds, answer if keep else None, answer.rows)
    return run


def _compared_by_values(ref: Any) -> bool:
    return isinstance(ref, pa.Table) or (isinstance(ref, answers.ParquetAnswer) and ref.values)


def check(measured: Measured, sort_by: list[str], references: dict[str, Any] | None = None,
          engine_names: tuple[str, ...] = (ENGINE,), *, keys: list[str] | None = None,
          scratch: str | None = None) -> dict:
    """Compare every engine answer with every peer's (Arrow: values; other: row count) and with the
    untimed ``references``; ``ok`` only if at least one comparison ran and all agree.

    Two tables are compared in memory (:func:`benchmarks.answers.same`); as soon as one side is a
    :class:`benchmarks.answers.ParquetAnswer` the comparison streams (``same_streamed``, rows bucketed
    by ``keys``, bucket files under ``scratch``). The record says how, how long the check took and the
    process's memory before and at its peak."""
    refs: dict[str, Any] = {n: a for n, a in measured.answers.items() if n not in engine_names}
    refs.update(references or {})
    out: dict[str, Any] = {"against": {}, "ok": False}
    results = []
    t0 = time.perf_counter()
    with harness.PeakRSS() as mem:
        for name in engine_names:
            mine = measured.answers.get(name)
            for ref_name, ref in refs.items():
                label = ref_name if len(engine_names) == 1 else f"{name} vs {ref_name}"
                if mine is None or ref is None:
                    out["against"][label] = {"equal": False, "how": "missing answer"}
                    results.append(False)
                    continue
                if isinstance(mine, pa.Table) and isinstance(ref, pa.Table):
                    ok, why = answers.same(mine, ref, sort_by)
                    out["against"][label] = {"equal": ok, "how": "values", **({"why": why} if why else {})}
                elif _compared_by_values(ref):
                    ok, why, info = answers.same_streamed(mine, ref, sort_by, keys=keys, scratch=scratch)
                    out["against"][label] = {"equal": ok, "how": f"values, streamed in {info['buckets']} key bucket(s)",
                                             **({"why": why} if why else {})}
                else:
                    theirs, own = answers.rows_of(ref), answers.rows_of(mine)
                    ok = theirs == own
                    out["against"][label] = {"equal": ok, "how": "rows", "rows": [own, theirs]}
                results.append(ok)
    out["ok"] = bool(results) and all(results)
    if any(isinstance(a, answers.ParquetAnswer) for a in [*measured.answers.values(), *refs.values()]):
        out.update({"streamed": True, "seconds": round(time.perf_counter() - t0, 2),
                    "rss_start_mb": round(mem.start / 2**20, 1), "rss_peak_mb": round(mem.peak / 2**20, 1),
                    "arrow_peak_mb": round(mem.arrow_peak / 2**20, 1)})
    return out


def _emit_case(ctx: Context, suite: str, case: str, measured: Measured, *, params: dict, check_: dict | None,
               input_rows: int | None, input_bytes: int | None, sweep: str | None = None,
               knob: tuple[str, dict[str, Any]] | None = None, label: str | None = None) -> None:
    """Records of a measured case; with ``knob=(name, {system label: value})`` the labelled systems are
    the engine at different knob values (one record each, ``params[name] = value``)."""
    if knob is None:
        recs = harness.records(suite, case, measured, params=params, sweep=sweep, input_rows=input_rows,
                               input_bytes=input_bytes, check=check_)
    else:
        name, values = knob
        recs = []
        for system, value in values.items():
            one = Measured({ENGINE: measured.runs.get(system, [])}, {}, {ENGINE: measured.rows.get(system)},
                           {ENGINE: measured.extras.get(system, [])},
                           {ENGINE: measured.errors[system]} if system in measured.errors else {})
            recs += harness.records(suite, case, one, params={**params, name: value}, sweep=name,
                                    input_rows=input_rows, input_bytes=input_bytes, check=check_)
    for r in recs:
        ctx.emit(r)
    if check_ is not None and not check_.get("ok"):
        ctx.failures.append(f"{suite} {case}: answers differ: {check_.get('against')}")
    for system, err in measured.errors.items():
        ctx.failures.append(f"{suite} {case} {system}: {err}")
    meds = ", ".join(f"{k} {harness.median(v):.3f}s" for k, v in measured.runs.items() if v)
    status = "" if check_ is None else ("  answers ok" if check_.get("ok") else "  ANSWERS DIFFER")
    ctx.progress.done(f"{label or case}: {meds}{status}")


def _measure(ctx: Context, label: str, systems: dict, *, idle: Callable[[], Any] | None = None) -> Measured:
    return harness.measure(systems, ctx.repeat, before=idle or ctx.idle,
                           on_run=lambda name, rep, s: ctx.progress.step(f"{label} {name} {rep + 1}/{ctx.repeat}", s))


def _emit_timeline(ctx: Context, suite: str, case: str, reports: list) -> None:
    if ctx.timeline != f"{suite}:{case}" or not reports:
        return
    ordered = sorted(reports, key=lambda r: r[0])
    seconds, report = ordered[len(ordered) // 2]
    ctx.emit({"kind": "timeline", "suite": suite, "case": case, "seconds": round(seconds, 4), "report": report})


def _emit_run_report(ctx: Context, suite: str, case: str, system: str, reports: list) -> None:
    """The report of the median run of ``system`` as a ``run_report`` record."""
    if not reports:
        return
    seconds, report = sorted(reports, key=lambda r: r[0])[len(reports) // 2]
    ctx.emit({"kind": "run_report", "suite": suite, "case": case, "system": system, "seconds": round(seconds, 4),
              "report": report})


def _read_files(path: str, block: int = 16 << 20) -> None:
    """Read every file of ``path`` once (into the page cache), untimed."""
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                while f.read(block):
                    pass


def _dir_bytes(path: str, ext: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(ext))


def _warm(ctx: Context, job: Job, data: str) -> None:
    """One untimed engine run: worker imports, page cache, first-run costs."""
    engine_system(ctx, job, data)(False)


# ---------------------------------------------------------------------------------------------
# groupby


def g1_groups(q: str, rows: int, k: int = 100) -> int:
    """About how many rows question ``q``'s answer has on G1 of ``rows`` rows (id1, id2, id4, id5 take
    ``k`` values, id3 and id6 ``rows / k``): what decides whether the answer is held or written."""
    from jobs.groupby import KEYS
    card = {"id1": k, "id2": k, "id4": k, "id5": k, "id3": max(1, rows // k), "id6": max(1, rows // k)}
    groups = min(rows, math.prod(card[c] for c in KEYS[q]))
    return 2 * groups if q == "q8" else groups


def _groupby_case(ctx: Context, suite: str, case: str, q: str, data: str, params: dict, *, rows: int,
                  size: int, label: str | None = None) -> None:
    """One G1 question on ``data``: the engine and every installed peer, timed, answers checked."""
    from jobs.groupby import KEYS, QUESTIONS as JOBS
    client, info = ctx.client()
    spill = g1_groups(q, rows) > ctx.answers_in_memory
    reports: list = []
    systems = {ENGINE: engine_system(ctx, JOBS[q], data, keep_reports=reports, spill=spill)}
    for name in ctx.peers:
        if name == "dask":
            if spill:
                systems[name] = peer_files_system(ctx, f"dask-{q}", lambda out, q=q: peers.groupby_dask_to(
                    q, data, client, out), values=False)
            else:
                systems[name] = peer_system(lambda q=q: peers.groupby_dask(q, data, client))
        elif spill and name in peers.TO_PARQUET["groupby"]:
            fn = peers.TO_PARQUET["groupby"][name]
            systems[name] = peer_files_system(ctx, f"{name}-{q}",
                                              lambda out, q=q, fn=fn: fn(q, data, info.threads, out))
        elif name in peers.FUNCTIONS["groupby"]:
            fn = peers.FUNCTIONS["groupby"][name]
            systems[name] = peer_system(lambda q=q, fn=fn: fn(q, data, info.threads))
    m = _measure(ctx, label or case, systems)
    sort_by = KEYS[q] + (["largest2_v3"] if q == "q8" else [])
    references: dict[str, Any] = {}
    try:
        if not any(n in peers.ARROW_ANSWERS for n in systems):      # always one independent reference
            if spill:
                out = ctx.out(f"pyarrow-{q}")
                peers.groupby_pyarrow_to(q, data, info.threads, out)
                references["pyarrow"] = answers.ParquetAnswer.of_directory(out, owner=out)
            else:
                references["pyarrow"] = peers.FUNCTIONS["groupby"]["pyarrow"](q, data, info.threads)
        verdict = check(m, sort_by, references, keys=KEYS[q], scratch=ctx.scratch)
    finally:
        answers.discard([*m.answers.values(), *references.values()])
    _emit_case(ctx, suite, case, m, params={**params, "question": q}, check_=verdict,
               input_rows=rows, input_bytes=size, label=label)
    _emit_timeline(ctx, suite, case, reports)


def groupby(ctx: Context) -> None:
    from benchmarks import datagen
    from jobs.groupby import QUESTIONS as JOBS
    p = ctx.profile
    data = datagen.g1(p.g1_rows, parts=p.g1_parts, out=ctx.data_root)
    rows, size = p.g1_rows, _dir_bytes(data, ".parquet")
    client, info = ctx.client()
    _warm(ctx, JOBS["q1"], data)
    if "dask" in ctx.peers:
        peers.groupby_dask("q1", data, client)
    params = {"rows": rows, "files": p.g1_parts, "dataset": os.path.basename(data)}
    for q in p.questions:
        _groupby_case(ctx, "groupby", q, q, data, params, rows=rows, size=size)

    # sweep: input partitions (same rows in more, smaller files), q3
    q = "q3"
    for parts in p.sweep_parts:
        d = datagen.g1(p.g1_rows, parts=parts, out=ctx.data_root)
        m = _measure(ctx, f"{q} files={parts}", {ENGINE: engine_system(ctx, JOBS[q], d)})
        _emit_case(ctx, "groupby", q, m, params={"rows": rows, "question": q, "input_partitions": parts},
                   check_=None, input_rows=rows, input_bytes=_dir_bytes(d, ".parquet"), sweep="input_partitions",
                   label=f"{q} files={parts}")


# ---------------------------------------------------------------------------------------------
# word count (and the combine sweep)


def _engine_and_peers(ctx: Context, workload: str, job, data: str, info, reports: list) -> dict:
    """The engine and every installed peer that has ``workload``, as timed systems on ``data``."""
    systems = {ENGINE: engine_system(ctx, job, data, keep_reports=reports)}
    for name in ctx.peers:
        if name in peers.FUNCTIONS[workload]:
            fn = peers.FUNCTIONS[workload][name]
            systems[name] = peer_system(lambda fn=fn: fn(data, info.threads))
    return systems


def wordcount(ctx: Context) -> None:
    from benchmarks import datagen
    from jobs.wordcount import job
    p = ctx.profile
    data = datagen.text(p.text_bytes, p.text_files, out=ctx.data_root)
    size = _dir_bytes(data, ".txt")
    lines = datagen.read_marker(data)["rows"]
    _, info = ctx.client()
    _warm(ctx, job, data)
    params = {"bytes": p.text_bytes, "files": p.text_files, "dataset": os.path.basename(data)}
    reports: list = []
    systems = _engine_and_peers(ctx, "wordcount", job, data, info, reports)
    m = _measure(ctx, "wordcount", systems)
    refs = {} if "pyarrow" in systems else {"pyarrow": peers.FUNCTIONS["wordcount"]["pyarrow"](data, 1)}
    _emit_case(ctx, "wordcount", "wordcount", m, params=params, check_=check(m, ["word"], refs),
               input_rows=lines, input_bytes=size)
    _emit_timeline(ctx, "wordcount", "wordcount", reports)

    # sweep: map-side combine (engine.run's map_combine=)
    systems = {on: engine_system(ctx, job, data, map_combine=on == "on") for on in ("on", "off")}
    m = _measure(ctx, "wordcount combine", systems)
    ref = {"pyarrow": peers.FUNCTIONS["wordcount"]["pyarrow"](data, 1)}
    _emit_case(ctx, "wordcount", "wordcount-combine", m, params=params, check_=check(m, ["word"], ref, ("on", "off")),
               input_rows=lines, input_bytes=size, knob=("combine", {"on": True, "off": False}),
               label="wordcount combine on/off")


# ---------------------------------------------------------------------------------------------
# sort (and the partition_size sweep)


def sort(ctx: Context) -> None:
    from benchmarks import datagen
    from jobs.terasort import job
    p = ctx.profile
    data = datagen.terasort(p.sort_rows, parts=p.sort_parts, out=ctx.data_root)
    size = _dir_bytes(data, ".parquet")
    _, info = ctx.client()
    _warm(ctx, job, data)
    params = {"rows": p.sort_rows, "files": p.sort_parts, "dataset": os.path.basename(data)}
    reports: list = []
    systems = _engine_and_peers(ctx, "sort", job, data, info, reports)
    m = _measure(ctx, "terasort", systems)
    refs = {} if "pyarrow" in systems else {"pyarrow": peers.FUNCTIONS["sort"]["pyarrow"](data, 1)}
    _emit_case(ctx, "sort", "terasort", m, params=params, check_=check(m, [], refs),
               input_rows=p.sort_rows, input_bytes=size)
    _emit_timeline(ctx, "sort", "terasort", reports)

    # sweep: target reduce partition size (drives the number of range partitions)
    systems = {s: engine_system(ctx, job, data, partition_size=s) for s in p.sweep_partition_sizes}
    m = _measure(ctx, "terasort partition_size", systems)
    ref = {"sorted input": peers.FUNCTIONS["sort"]["pyarrow"](data, 1)}
    _emit_case(ctx, "sort", "terasort", m, params=params, check_=check(m, [], ref, tuple(systems)),
               input_rows=p.sort_rows, input_bytes=size,
               knob=("partition_size", {s: s for s in p.sweep_partition_sizes}),
               label="terasort partition_size")


# ---------------------------------------------------------------------------------------------
# skew (skew handling on/off)


def skew(ctx: Context) -> None:
    from benchmarks import skew_bench
    p = ctx.profile
    cases = {"median-top10": (skew_bench.MEDIAN, "top10",
                              "SELECT k, quantile_cont(v, 0.5) AS med FROM x GROUP BY k"),
             "sums-half": (skew_bench.SUMS, "half",
                           "SELECT k, count(*)::BIGINT AS n, sum(v) AS s, avg(v) AS m FROM x GROUP BY k")}
    for case, (job, shape, sql) in cases.items():
        data = skew_bench.dataset(shape, p.skew_rows, p.skew_parts, root=ctx.data_root)
        size = _dir_bytes(data, ".parquet")
        _warm(ctx, job, data)
        kept: dict[str, list] = {"on": [], "off": []}
        systems = {on: engine_system(ctx, job, data, skew=on == "on", partition_size=p.skew_partition_size,
                                     keep_reports=kept[on]) for on in ("on", "off")}
        m = _measure(ctx, case, systems)
        for on, reports in kept.items():          # for python -m benchmarks replay
            _emit_run_report(ctx, "skew", case, on, reports)
        ref = {"duckdb": _duckdb_reference(data, sql)} if peers.available(("duckdb",))["duckdb"] else {}
        if not ref:
            ref = {"skew off": m.answers.get("off")} if case == "median-top10" else {"pyarrow": _sums(data)}
        _emit_case(ctx, "skew", case, m, params={"rows": p.skew_rows, "files": p.skew_parts, "shape": shape,
                                                 "partition_size": p.skew_partition_size},
                   check_=check(m, ["k"], ref, ("on", "off")), input_rows=p.skew_rows, input_bytes=size,
                   knob=("skew", {"on": True, "off": False}), label=f"{case} skew on/off")


def _duckdb_reference(data: str, sql: str) -> pa.Table:
    con = peers._duckdb(1)
    try:
        con.execute(f"CREATE VIEW x AS SELECT * FROM read_parquet('{os.path.join(data, '*.parquet')}')")
        return peers._arrow(con.sql(sql))
    finally:
        con.close()


def _sums(data: str) -> pa.Table:
    import pyarrow.dataset as ds
    t = ds.dataset(data, format="parquet").to_table()
    out = t.group_by("k").aggregate([([], "count_all"), ("v", "sum"), ("v", "mean")])
    return pa.table({"k": out["k"], "n": out["count_all"], "s": out["v_sum"], "m": out["v_mean"]})


# ---------------------------------------------------------------------------------------------
# stragglers (speculation on/off)


def stragglers(ctx: Context) -> None:
    from benchmarks import datagen
    from engine.faults import Faults
    from jobs.wordcount import job
    p = ctx.profile
    data = datagen.text(p.straggler_files * p.straggler_file_bytes, p.straggler_files, out=ctx.data_root)
    size = _dir_bytes(data, ".txt")
    lines = datagen.read_marker(data)["rows"]
    reference = {"pyarrow": peers.FUNCTIONS["wordcount"]["pyarrow"](data, 1)}
    _warm(ctx, job, data)
    client = ctx.client()[0]
    slow = Faults(slow_first_attempt={("map", 0): p.straggler_sleep})
    for case, faults in (("healthy", None), ("slow-task", slow)):
        systems = {on: engine_system(ctx, job, data, speculation=on == "on", faults=faults, partition_size="1MiB")
                   for on in ("on", "off")}
        m = _measure(ctx, case, systems, idle=lambda: common.wait_workers_idle(client))
        _emit_case(ctx, "stragglers", case, m,
                   params={"files": p.straggler_files, "file_bytes": p.straggler_file_bytes,
                           "slow_task_sleep_s": p.straggler_sleep if faults else 0.0},
                   check_=check(m, ["word"], reference, ("on", "off")), input_rows=lines, input_bytes=size,
                   knob=("speculation", {"on": True, "off": False}), label=f"{case} speculation on/off")


# ---------------------------------------------------------------------------------------------
# commit overhead


def commit(ctx: Context) -> None:
    import engine
    from benchmarks import commit_overhead
    p = ctx.profile
    table = commit_overhead.make_table(p.commit_rows)
    step = -(-p.commit_rows // p.commit_parts)
    parts = [table.slice(i, step) for i in range(0, p.commit_rows, step)]

    def system(write: Callable, read: Callable) -> Callable[[bool], Outcome]:
        def run(keep: bool) -> Outcome:
            out = ctx.out("commit")
            try:
                seconds, _ = timed(lambda: write(parts, out))
                answer = read(out) if keep else None
            finally:
                shutil.rmtree(out, ignore_errors=True)
            return Outcome(seconds, answer, p.commit_rows)
        return run

    def read_engine(out: str) -> pa.Table:
        engine.verify(out)
        return engine.read(out, verify=False)      # engine.verify just checked every byte

    def read_plain(out: str) -> pa.Table:
        import pyarrow.parquet as pq
        return pa.concat_tables(pq.read_table(os.path.join(out, f)) for f in sorted(os.listdir(out)))

    systems = {ENGINE: system(commit_overhead.protocol, read_engine),
               "pyarrow": system(commit_overhead.plain, read_plain)}
    m = harness.measure(systems, ctx.repeat, on_run=lambda n, r, s: ctx.progress.step(f"commit {n} {r + 1}", s))
    _emit_case(ctx, "commit", "write", m, params={"rows": p.commit_rows, "partitions": len(parts)},
               check_=check(m, [], {"written": table}), input_rows=p.commit_rows, input_bytes=table.nbytes)

    # Reading it back: engine.read verifies every byte by default; what that costs against the
    # unverified read and a plain pq.read_table of the same committed files.
    out = ctx.out("commit-read")
    commit_overhead.protocol(parts, out)
    try:
        size = sum(os.path.getsize(f) for f in commit_overhead.committed_files(out))
        for case, columns in (("read", None), ("read 2 columns", ["id1", "v3"])):
            readers = commit_overhead.read_systems(out, columns)
            names = {ENGINE: "verified", "engine verify=False": "unverified", "pyarrow": "pyarrow"}

            def reading(name: str) -> Callable[[bool], Outcome]:
                def run(keep: bool) -> Outcome:
                    seconds, answer = timed(readers[name])
                    return Outcome(seconds, answer if keep else None, answer.num_rows)
                return run

            m = harness.measure({label: reading(name) for label, name in names.items()}, ctx.repeat,
                                on_run=lambda n, r, s: ctx.progress.step(f"commit {case} {n} {r + 1}", s))
            _emit_case(ctx, "commit", case, m, params={"rows": p.commit_rows, "partitions": len(parts),
                                                       "columns": columns or "all"},
                       check_=check(m, []), input_rows=p.commit_rows, input_bytes=size)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# cluster shape (workers x threads of the embedded LocalCluster)


def cluster(ctx: Context) -> None:
    import dask.config

    from benchmarks import datagen
    from engine import cluster as embedded
    from jobs.groupby import QUESTIONS as JOBS
    from jobs.wordcount import job as wc
    p = ctx.profile
    g1 = datagen.g1(p.g1_rows, parts=p.g1_parts, out=ctx.data_root)
    text = datagen.text(p.text_bytes, p.text_files, out=ctx.data_root)
    workloads = {"q3": (JOBS["q3"], g1, p.g1_rows, _dir_bytes(g1, ".parquet")),
                 "wordcount": (wc, text, datagen.read_marker(text)["rows"], _dir_bytes(text, ".txt"))}
    try:
        for workers, threads in p.sweep_shapes:
            embedded.shutdown()
            with dask.config.set({"engine.cluster.workers": workers, "engine.cluster.threads": threads}):
                ctx.client()
            shape = f"{workers}x{threads}"
            for case, (job, data, rows, size) in workloads.items():
                _warm(ctx, job, data)
                m = _measure(ctx, f"{case} {shape}", {shape: engine_system(ctx, job, data)})
                _emit_case(ctx, "cluster", case, m, params={"rows": rows, "workers": workers, "threads": threads},
                           check_=None, input_rows=rows, input_bytes=size, knob=("workers_x_threads", {shape: shape}),
                           label=f"{case} {shape}")
    finally:
        embedded.shutdown()             # back to the default shape for whatever runs next


# ---------------------------------------------------------------------------------------------
# driver cost (not in the default set)


def driver(ctx: Context) -> None:
    from benchmarks import driver_bench
    p = ctx.profile
    client, _ = ctx.client()
    driver_bench.noop_stage(client, min(200, p.driver_tasks))      # warm-up
    stages: list[dict] = []

    def stage(keep: bool) -> Outcome:
        r = driver_bench.noop_stage(client, p.driver_tasks)
        stages.append(r)
        return Outcome(r["seconds"], None, r["tasks"], {k: round(v, 5) for k, v in r.items() if v is not None})
    m = _measure(ctx, f"no-op stage of {p.driver_tasks:,} tasks", {ENGINE: stage})
    recs = harness.records("driver", "noop-stage", m, params={"tasks": p.driver_tasks, "speculation": True},
                           notes=["loop CPU: time.thread_time() of the thread running StageExecutor.run; process "
                                  "CPU also counts the embedded scheduler and the client's event loop"])
    cpu = harness.median([r["loop_cpu_ms_per_task"] for r in stages])
    proc = harness.median([r["process_cpu_ms_per_task"] for r in stages])
    for r in recs:
        r.update({"driver_loop_cpu_ms_per_task": round(cpu, 4) if cpu is not None else None,
                  "driver_process_cpu_ms_per_task": round(proc, 4) if proc is not None else None,
                  "target_ms_per_task": driver_bench.TARGET_CPU_MS})
        ctx.emit(r)
    if cpu is not None and cpu > driver_bench.TARGET_CPU_MS:
        ctx.progress.line(f"driver loop CPU {cpu:.3f} ms/task is over the {driver_bench.TARGET_CPU_MS} ms target")
    ctx.progress.done(f"no-op stage: loop CPU {cpu:.3f} ms/task, process CPU {proc:.3f} ms/task "
                      f"(median of {len(stages)})")

    try:
        import moto.server  # noqa: F401
    except ImportError:
        ctx.progress.line("S3 read amplification skipped: moto is not installed (pip install -e '.[test]')")
        return
    runs: dict[str, list[dict]] = {}

    def jobs(keep: bool) -> Outcome:
        r = driver_bench.s3_reduce_bytes(p.driver_rows, p.driver_files)
        for name, v in r.items():
            runs.setdefault(name, []).append(v)
        return Outcome(sum(v["seconds"] for v in r.values()), None, None)
    measured = _measure(ctx, "S3 aggregate + sort", {ENGINE: jobs})
    for system, err in measured.errors.items():
        ctx.failures.append(f"driver s3 jobs {system}: {err}")
    for name, rs in runs.items():
        one = Measured({ENGINE: [r["seconds"] for r in rs]}, {}, {ENGINE: None},
                       {ENGINE: [{k: v for k, v in r.items()} for r in rs]}, {})
        ratio = harness.median([r["ratio"] for r in rs if r["ratio"] is not None])
        ok = all(r["answer_ok"] for r in rs)
        check_ = {"against": {"pyarrow": {"equal": ok, "how": "values"}}, "ok": ok}
        for rec in harness.records("driver", f"s3-{name}", one, params={"rows": p.driver_rows,
                                                                     "files": p.driver_files}, check=check_):
            rec.update({"s3_read_ratio": round(ratio, 4) if ratio is not None else None,
                        "target_read_ratio": driver_bench.TARGET_READ_RATIO})
            ctx.emit(rec)
        if not ok:
            ctx.failures.append(f"driver s3-{name}: answer differs from pyarrow's")
        ctx.progress.done(f"S3 {name}: reducers read {ratio:.2f}x the shuffle bytes they need "
                          f"({rs[0]['maps']} maps x {rs[0]['reducers']} reducers){'' if ok else '  ANSWERS DIFFER'}")


# ---------------------------------------------------------------------------------------------
# TPC-H (not in the default set)


def tpch(ctx: Context) -> None:
    from benchmarks import tpch_bench
    tpch_bench.run_suite(ctx)


# ---------------------------------------------------------------------------------------------
# scale: time per input size (not in the default set)


def rows_label(rows: int) -> str:
    """``1e7`` for 10,000,000; ``2.5e6`` for 2,500,000."""
    mantissa, exponent = f"{rows:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def scale(ctx: Context) -> None:
    """G1 questions at each input size: the engine and the peers, answers checked (streamed when big)."""
    from benchmarks import datagen
    from jobs.groupby import QUESTIONS as JOBS
    p = ctx.profile
    client, _ = ctx.client()
    for rows in p.scale_rows:
        data = datagen.g1(rows, out=ctx.data_root)          # the default file count: reuses cached datasets
        files = len([f for f in os.listdir(data) if f.endswith(".parquet")])
        size = _dir_bytes(data, ".parquet")
        _read_files(data)                                    # the page cache, for whichever system goes first
        _warm(ctx, JOBS["q1"], data)                         # worker imports
        if "dask" in ctx.peers:
            peers.groupby_dask("q1", data, client)
        params = {"rows": rows, "files": files, "dataset": os.path.basename(data)}
        for q in p.scale_questions:
            case = f"{q}@{rows_label(rows)}"
            _groupby_case(ctx, "scale", case, q, data, params, rows=rows, size=size,
                          label=f"{q} {rows_label(rows)} rows")


def startup(ctx: Context) -> None:
    from benchmarks import startup as startup_bench
    startup_bench.run_suite(ctx)


def incremental(ctx: Context) -> None:
    from benchmarks import incremental as incremental_bench
    incremental_bench.run_suite(ctx)


def operations(ctx: Context) -> None:
    from benchmarks import ops_bench
    ops_bench.run_suite(ctx)


def rejects(ctx: Context) -> None:
    from benchmarks import rejects_bench
    rejects_bench.run_suite(ctx)


def _on_cluster(suite: Callable[[Context], None]) -> Callable[[Context], None]:
    """A suite about the cluster itself (speculation, worker shapes): its inputs, small enough to run in the
    driver process, run on the embedded cluster (``engine.local.max-bytes: 0``)."""
    def run(ctx: Context) -> None:
        import dask.config
        with dask.config.set({"engine.local.max-bytes": 0}):
            suite(ctx)
    return run


RUNNERS: dict[str, Callable[[Context], None]] = {
    "groupby": groupby, "wordcount": wordcount, "sort": sort, "skew": skew, "stragglers": _on_cluster(stragglers),
    "commit": commit, "cluster": _on_cluster(cluster), "driver": driver, "tpch": tpch, "startup": startup, "scale": scale,
    "incremental": incremental, "operations": operations, "rejects": rejects,
}


def profile_dict(profile: Profile) -> dict:
    return asdict(profile)


def summarize(records: list[dict]) -> dict[str, dict]:
    """Per suite: cases, engine measurements, whether every check passed, errors."""
    out: dict[str, dict] = {}
    for r in records:
        if r.get("kind") != "measurement":
            continue
        s = out.setdefault(r["suite"], {"cases": set(), "measurements": 0, "checked": 0, "checks_ok": True,
                                         "errors": []})
        s["cases"].add(r["case"])
        s["measurements"] += 1
        if r["system"] == ENGINE and r.get("check"):
            s["checked"] += 1
            s["checks_ok"] = s["checks_ok"] and bool(r["check"].get("ok"))
        if r.get("error"):
            s["errors"].append(f"{r['case']} {r['system']}: {r['error']}")
    for s in out.values():
        s["cases"] = sorted(s["cases"])
    return out


__all__ = ["SUITES", "EXTRA_SUITES", "PROFILES", "Profile", "Context", "RUNNERS", "summarize", "check", "g1_groups",
           "rows_label"]
