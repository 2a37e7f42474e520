"""Stragglers: word count with an injected slow task or slow worker, speculative execution on and off.

    python -m benchmarks.stragglers --repeat 3

Word count (``jobs.wordcount.job``) over a synthetic corpus (:func:`benchmarks.datagen.text`, one
map task per file) on the embedded LocalCluster (``cluster=None``: one single-threaded worker
process per core). Every scenario runs with ``speculation=True`` and ``speculation=False``:

* **healthy**: no faults, the baseline. Speculative attempts launched here are false positives.
* **slow-task**: the first attempt of one map task sleeps ``19 x`` the typical map task duration
  before it starts (20x slower than its siblings): ``Faults(slow_first_attempt={("map", k): ...})``.
  Run for ``k = 0`` and for ``k`` = the last map partition. The scheduler, not the partition
  number, decides when an attempt starts (map 0 usually starts at once, the last one usually in
  the last wave), so the table shows when the straggler actually started.
* **slow-worker**: every task on one of the workers takes ``5 x`` as long
  (``Faults(slow_workers={address: 5.0})``).
* **stuck** (stuck in user code): the word count's map function itself, on the first call that gets
  to run in this run, sleeps ``--stuck-seconds`` (15) in plain ``time.sleep``: code that never
  checks for cancellation, unlike the injected faults. Once a copy of that task wins, the cancelled
  attempt keeps its worker thread; the engine restarts that worker through its nanny (the reason is
  in ``RunReport.zombies``) so that later tasks do not queue behind it. For the issue's case run
  ``--scenarios stuck --files 10``.
* **skewed**: a second corpus, as many files of the same size except the last, which is ``5 x``
  larger (kept under the engine's split size, so it stays one map task). That task is slow because it is
  big; the efficiency filter should launch no speculative attempt. It reads more bytes than the
  healthy corpus, so its ratio to the healthy run is not a slowdown.

``--scenarios placement`` adds a case of its own, outside the table: a map-only job over 4 small
files whose map sleeps ``--placement-seconds`` (1 s), so the 4 tasks are equal and only their
placement decides the job time (2 per worker: 2 s of maps; 3/1: 3 s; 4/0: 4 s). It prints the map
tasks per worker and the job time of each of ``max(5, --repeat)`` runs, and their median.

The typical map task duration is the median map task duration of the first repeat's healthy runs,
then fixed for the rest of the benchmark. Every figure is the median of ``--repeat`` timed runs;
within a repeat the scenarios take turns and speculation on/off alternate which goes first. Before
each timed run the harness waits until the scheduler holds no tasks and no worker is still
executing one (a cancelled attempt keeps its worker's thread busy after the scheduler forgot it).
Every run's answer is compared with a word count computed in this process with pyarrow alone.
Task timelines come from the run report, plus the engine's task-start events for the attempts that
were cancelled (the report lists finished attempts only).

Prints a table (scenario x speculation: median seconds, ratio to the healthy run with the same
setting, speculative attempts launched per run, which attempt won, when the straggler started, the
1-minute load average), the targets, and the command (``--timelines`` adds the median run's task
timeline of every cell); ``--set`` applies a dask config override for diagnostics only;
appends one JSON line per scenario and setting (environment, parameters, every run's time,
speculation decisions and map-stage timeline) to ``benchmarks/results/stragglers.jsonl``.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks import common

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = common.REPO
RESULTS = os.path.join(HERE, "results", "stragglers.jsonl")

SCENARIOS = ("healthy", "slow-task", "slow-task-last", "slow-worker", "stuck", "skewed")
EXTRA = ("placement",)      # cases outside the speculation on/off table


# ---------------------------------------------------------------------------------------------
# Jobs of the stuck and placement cases (their functions travel by value to the workers)


def stuck_wordcount(flag_dir: str, seconds: float):
    """The word count of ``jobs.wordcount``, but the first map call that runs on a worker in this run
    (the first to create ``flag_dir/stuck``) sleeps ``seconds`` first, without checking for cancellation."""
    from engine import Job, agg
    from jobs.wordcount import words

    def words_or_stuck(t):
        try:
            from distributed import get_worker
            get_worker()
        except (ImportError, ValueError):
            return words(t)             # the driver's check on a sample of the input
        try:
            os.close(os.open(os.path.join(flag_dir, "stuck"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            time.sleep(seconds)         # user code: cancelling the attempt does not interrupt this
        except FileExistsError:
            pass
        return words(t)
    return Job("wordcount").map(words_or_stuck, columns=["text"]).reduce(by="word", aggs={"count": agg.count()})


def equal_maps_job(seconds: float):
    """A map-only job whose every map call takes ``seconds`` (equal tasks for the placement case)."""
    from engine import Job

    def pause(t):
        time.sleep(seconds)
        return t
    return Job("placement").map(pause)


# ---------------------------------------------------------------------------------------------
# Data


def skewed_corpus(files: int, file_bytes: int, factor: float, root: str | None = None) -> str:
    """A directory of ``files - 1`` corpus files of ``file_bytes`` and, last, one ``factor x`` larger.

    Both parts come from :func:`benchmarks.datagen.text` (cached); the directory holds hard links
    to them (copies where linking fails) and is built under a temporary name, then renamed.
    """
    from benchmarks import datagen

    small = datagen.text(file_bytes * (files - 1), files - 1)
    big = datagen.text(int(file_bytes * factor), 1, seed=1)
    root = root or datagen.default_root()
    name = f"stragglers_skew_{file_bytes}B_f{files}_x{factor:g}_v1"
    final = os.path.join(root, name)
    if os.path.isfile(os.path.join(final, "_COMPLETE")):
        return final
    tmp = os.path.join(root, f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    sources = [os.path.join(small, f) for f in sorted(os.listdir(small)) if f.endswith(".txt")]
    sources += [os.path.join(big, f) for f in sorted(os.listdir(big)) if f.endswith(".txt")]
    for i, src in enumerate(sources):
        dst = os.path.join(tmp, f"part-{i:05d}.txt")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    with open(os.path.join(tmp, "_COMPLETE"), "w") as f:
        json.dump({"files": [os.path.basename(s) for s in sources], "small": os.path.basename(small),
                   "big": os.path.basename(big)}, f)
    if os.path.isdir(final):
        shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def reference_counts(directory: str):
    """word -> count of every ``.txt`` file in ``directory``, computed with pyarrow in this process."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            text = pa.array([f.read().decode("utf-8")], type=pa.large_string())
        # The generator separates words by single spaces and lines by newlines, so plain substring
        # splits count them exactly, with none of the whitespace classification the job itself uses.
        words = pc.list_flatten(pc.split_pattern(pc.replace_substring(pc.utf8_lower(text), "\n", " "), " "))
        words = words.filter(pc.not_equal(words, ""))   # the file's final newline leaves one empty piece
        counts = pc.value_counts(words)
        parts.append(pa.table({"word": counts.field("values").cast(pa.string()),
                               "count": counts.field("counts").cast(pa.int64())}))
    table = pa.concat_tables(parts).group_by("word").aggregate([("count", "sum")])
    return normalize(table.rename_columns(["word", "count"]))


def describe_difference(answer, reference) -> str:
    """A short account of how ``answer`` differs from ``reference`` (both normalized)."""
    import pyarrow.compute as pc

    j = answer.join(reference, "word", join_type="full outer", left_suffix="_run", right_suffix="_ref")
    bad = j.filter(pc.or_kleene(pc.or_kleene(pc.is_null(j["count_run"]), pc.is_null(j["count_ref"])),
                                pc.not_equal(j["count_run"], j["count_ref"])))
    return (f"{answer.num_rows} words (reference {reference.num_rows}), {pc.sum(answer['count']).as_py()} "
            f"occurrences (reference {pc.sum(reference['count']).as_py()}), {bad.num_rows} words differ, e.g. "
            f"{bad.slice(0, 3).to_pylist()}")


def normalize(table):
    """The answer as ``(word string, count int64)`` sorted by word, for comparison."""
    import pyarrow as pa

    table = table.select(["word", "count"])
    table = table.cast(pa.schema([("word", pa.string()), ("count", pa.int64())]))
    return table.sort_by("word").combine_chunks()


# ---------------------------------------------------------------------------------------------
# Environment

wait_idle = common.wait_workers_idle


def environment(info) -> dict:
    return common.environment(info, settings=True)


# ---------------------------------------------------------------------------------------------
# One run


@dataclass
class Run:
    seconds: float
    speculative: int
    decisions: list[dict]
    timeline: list[dict]
    answer_ok: bool
    map_durations: list[float]
    load: tuple[float, float]
    stages: list[dict] = field(default_factory=list)
    idle_wait: tuple[float, float] = (0.0, 0.0)
    mismatch: str | None = None
    zombies: list[dict] = field(default_factory=list)


class Bench:
    def __init__(self, client, scratch: str, partition_size: str) -> None:
        self.client = client
        self.scratch = scratch
        self.partition_size = partition_size
        self.references: dict[str, Any] = {}
        self.labels: dict[str, str] = {}      # worker address -> "w<name>" (a restarted worker keeps its name)
        self.n_workers = len(self.refresh())

    def settle(self) -> tuple[float, float]:
        """Wait until every worker is back (after a restart) and idle; see :func:`common.wait_workers_idle`."""
        deadline = time.time() + 120
        while len(self.refresh()) < self.n_workers and time.time() < deadline:
            time.sleep(0.1)
        idle = wait_idle(self.client)
        self.refresh()
        return idle

    def refresh(self) -> dict[str, Any]:
        """Worker address -> name of the workers now connected (a restart changes the address)."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        names = {address: w.get("name", address) for address, w in workers.items()}
        self.labels.update({address: f"w{name}" for address, name in names.items()})
        return names

    def worker_name(self, address: str) -> str:
        if address not in self.labels:
            self.refresh()
        return self.labels.get(address, address)

    def rename(self, text: str) -> str:
        for address, label in self.labels.items():
            text = text.replace(address, label)
        return text

    def timeline(self, rep) -> list[dict]:
        """Every attempt of the run: the report's finished ones, plus the attempts that were cancelled.

        The report lists finished attempts only; the cancelled ones (a straggler whose copy won, a copy
        whose original won) come from the engine's task-start events on the scheduler. A cancelled
        attempt's ``stop`` is when its partition's winner finished (the driver cancels it then).
        """
        from engine.speculation import TOPIC

        base = rep.start
        rows = [{"stage": t.stage, "partition": t.partition, "attempt": t.attempt,
                 "worker": self.worker_name(t.worker), "start": round(t.start - base, 3),
                 "stop": round(t.stop - base, 3), "speculative": t.speculative, "status": t.status}
                for t in rep.tasks]
        seen = {(r["stage"], r["partition"], r["attempt"]) for r in rows}
        won = {(r["stage"], r["partition"]): r["stop"] for r in rows if r["status"] == "ok"}
        copies = {(d["stage"], d["partition"], d["attempt"]) for d in rep.speculation}
        try:
            events = self.client.get_events(TOPIC)
        except Exception:  # noqa: BLE001 - diagnostics only
            events = ()
        for stamp, msg in events:
            if not (rep.start <= stamp <= rep.stop):
                continue
            try:
                prefix, partition, attempt = ast.literal_eval(msg["key"])
            except (ValueError, SyntaxError, TypeError):
                continue
            m = re.search(r"-(r\d+-(?:map|reduce))-", str(prefix))
            if not m or (m.group(1), partition, attempt) in seen:
                continue
            stage = m.group(1)
            seen.add((stage, partition, attempt))
            stop = won.get((stage, partition))
            rows.append({"stage": stage, "partition": partition, "attempt": attempt,
                         "worker": self.worker_name(msg.get("worker", "")), "start": round(stamp - base, 3),
                         "stop": stop, "speculative": (stage, partition, attempt) in copies, "status": "cancelled"})
        return sorted(rows, key=lambda r: (r["stage"], r["start"]))

    def run(self, data: str, speculation: bool, faults: Any = None, job: Any = None) -> Run:
        import engine
        if job is None:
            from jobs.wordcount import job

        idle = self.settle()
        out = os.path.join(self.scratch, f"wc-{uuid.uuid4().hex[:8]}")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = engine.run(job, data, out, speculation=speculation, partition_size=self.partition_size,
                            faults=faults, force=True)
        seconds = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        answer = normalize(result.read())
        shutil.rmtree(out, ignore_errors=True)
        ok = answer.equals(self.references[data])
        mismatch = None if ok else describe_difference(answer, self.references[data])
        rep = result.report
        base = rep.start
        timeline = self.timeline(rep)
        decisions = [{**{k: d.get(k) for k in ("stage", "partition", "attempt", "straggler", "elapsed", "median",
                                                "won", "outcome")},
                      "worker": self.worker_name(d.get("worker", "")), "reason": self.rename(d.get("reason", ""))}
                     for d in rep.speculation]
        stages = [{"stage": s.name, "tasks": s.tasks, "seconds": round(s.duration, 3), "attempts": s.attempts,
                   "speculative": s.speculative, "start": round(s.start - base, 3), "stop": round(s.stop - base, 3)}
                  for s in rep.stages]
        maps = [t.duration for t in rep.tasks if t.stage.endswith("-map") and t.status == "ok"]
        zombies = [{k: (self.rename(v) if isinstance(v, str) else v) for k, v in z.items()
                    if k not in ("cancelled_at", "restarted_at", "freed_at")}
                   for z in getattr(rep, "zombies", [])]
        return Run(seconds, sum(s.speculative for s in rep.stages), decisions, timeline, ok, maps,
                   (load_before, load_after), stages, idle, mismatch, zombies)


def winners(runs: list[Run]) -> str:
    c: Counter = Counter()
    for r in runs:
        for d in r.decisions:
            if d["won"] is None:
                c["none"] += 1
            elif d["won"] == d["straggler"]:
                c["original"] += 1
            else:
                c["speculative"] += 1
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-"


def print_timeline(label: str, run: Run) -> None:
    print(f"\n{label}: {run.seconds:.2f} s (seconds from the run's start)")
    for t in run.timeline:
        if not t["stage"].endswith("-map"):
            continue
        stop = f"{t['stop']:7.2f}" if t["stop"] is not None else "      ?"
        took = f"({t['stop'] - t['start']:5.2f} s)" if t["stop"] is not None else "          "
        print(f"  {t['stage']:<8} p{t['partition']:<3} a{t['attempt']} {t['worker']:<4} {t['start']:7.2f} -> {stop} "
              f"{took}" + ("  speculative" if t["speculative"] else "")
              + (f"  {t['status']}" if t["status"] != "ok" else ""))
    for s in run.stages:
        print(f"  stage {s['stage']:<10} {s['start']:7.2f} -> {s['stop']:7.2f}  attempts {s['attempts']}, "
              f"speculative {s['speculative']}")
    for d in run.decisions:
        print(f"  speculation: {d['reason']} -> won by attempt {d['won']}")


def straggler_start(run: Run, partition: int) -> float | None:
    """When attempt 0 of map ``partition`` started, in seconds from the run's start."""
    for t in run.timeline:
        if t["stage"].endswith("-map") and t["partition"] == partition and t["attempt"] == 0:
            return t["start"]
    return None


# ---------------------------------------------------------------------------------------------
# The benchmark


def placement_case(bench: Bench, runs: int, seconds: float, tasks: int = 4) -> dict:
    """Job time and map tasks per worker of ``tasks`` equal map tasks of ``seconds`` each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import engine

    src = tempfile.mkdtemp(dir=bench.scratch, prefix="placement-in-")
    for i in range(tasks):
        pq.write_table(pa.table({"k": np.arange(i * 1000, (i + 1) * 1000)}), os.path.join(src, f"part-{i}.parquet"))
    job = equal_maps_job(seconds)
    out = []
    for r in range(runs):
        bench.settle()
        dest = os.path.join(bench.scratch, f"placement-{uuid.uuid4().hex[:8]}")
        t0 = time.perf_counter()
        result = engine.run(job, src, dest, speculation=False, force=True)
        took = time.perf_counter() - t0
        shutil.rmtree(dest, ignore_errors=True)
        per_worker = Counter(bench.worker_name(t.worker) for t in result.report.tasks
                             if t.stage.endswith("-map") and t.status == "ok")
        out.append({"seconds": round(took, 3), "per_worker": dict(sorted(per_worker.items()))})
        print(f"  placement run {r + 1}/{runs}: {took:.2f} s, map tasks per worker {dict(sorted(per_worker.items()))}",
              flush=True)
    return {"tasks": tasks, "task_seconds": seconds, "seconds": statistics.median(r["seconds"] for r in out),
            "runs": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stragglers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--files", type=int, default=12, help="corpus files = map tasks")
    ap.add_argument("--file-bytes", type=float, default=26e6, help="bytes per corpus file")
    ap.add_argument("--partition-size", default="1MiB", help="engine partition_size (sets the reducer count)")
    ap.add_argument("--slowdown", type=float, default=20.0, help="slow-task: the straggler takes this x typical")
    ap.add_argument("--worker-factor", type=float, default=5.0, help="slow-worker: slowdown of one worker")
    ap.add_argument("--skew-factor", type=float, default=5.0, help="skewed: the big file is this x the others")
    ap.add_argument("--stuck-seconds", type=float, default=15.0, help="stuck: how long the stuck map call sleeps")
    ap.add_argument("--placement-seconds", type=float, default=1.0, help="placement: seconds per map task")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of {SCENARIOS + EXTRA}")
    ap.add_argument("--timelines", action="store_true", help="print the median run's task timeline per cell")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="diagnostics only: a dask config override such as engine.speculation.quantile=0.3 "
                         "(recorded with the results; the reference figures use the engine's defaults)")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {os.path.relpath(RESULTS, REPO)}")
    args = ap.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS) - set(EXTRA)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS + EXTRA}")
    extra = [s for s in scenarios if s in EXTRA]
    scenarios = [s for s in scenarios if s not in EXTRA]
    if "healthy" not in scenarios:
        scenarios.insert(0, "healthy")          # the baseline and the typical task duration come from it
    command = "python -m benchmarks.stragglers " + shlex.join(argv if argv is not None else sys.argv[1:])
    logging.getLogger("engine").setLevel(logging.WARNING)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = json.loads(value) if value.strip()[:1] in "0123456789-[{tn" else value
    if overrides:
        import dask
        dask.config.set(overrides)
        print(f"config overrides (diagnostic, not the engine's defaults): {overrides}")

    from benchmarks import datagen
    from engine.cluster import get_client
    from engine.faults import Faults

    file_bytes = int(args.file_bytes)
    t = time.time()
    corpus = datagen.text(file_bytes * args.files, args.files)
    skewed = skewed_corpus(args.files, file_bytes, args.skew_factor) if "skewed" in scenarios else None
    print(f"data: {corpus}" + (f", {skewed}" if skewed else "") + f" ({time.time() - t:.1f} s)", flush=True)
    from engine import config
    split = config.parse_size(config.get("split-size"), name="split-size")
    if skewed and file_bytes * args.skew_factor > split:
        print(f"note: the big file ({file_bytes * args.skew_factor / 2**20:.0f} MiB) is over the split size "
              f"({split / 2**20:.0f} MiB) and becomes several map tasks", flush=True)

    import dask.config
    dask.config.set({"engine.local.max-bytes": 0})   # speculation needs worker processes, however small the input
    client, info = get_client(None)
    env = environment(info)
    scratch = tempfile.mkdtemp(prefix="stragglers-")
    bench = Bench(client, scratch, args.partition_size)
    t = time.time()
    for d in filter(None, (corpus, skewed)):
        bench.references[d] = reference_counts(d)
    print(f"reference answers computed in-process ({time.time() - t:.1f} s); "
          f"{info.workers} workers x {info.threads // max(1, info.workers)} thread(s)", flush=True)

    warm = bench.run(corpus, speculation=False)     # worker imports, page cache; not timed
    print(f"warm-up run: {warm.seconds:.2f} s, answer {'ok' if warm.answer_ok else 'WRONG'}", flush=True)
    placement = placement_case(bench, max(5, args.repeat), args.placement_seconds) if extra else None

    typical: float | None = None
    # By name: the stuck case restarts a worker, which keeps its name but not its address.
    slow_worker = f"name:{sorted(bench.refresh().values(), key=str)[0]}"
    slow_partition = {"slow-task": 0, "slow-task-last": args.files - 1}

    def label(scenario: str) -> str:
        if scenario in slow_partition:
            return f"slow-task (map {slow_partition[scenario]})"
        return scenario
    cells: dict[tuple[str, bool], list[Run]] = {(s, on): [] for s in scenarios for on in (True, False)}

    def job_for(scenario: str):
        if scenario == "stuck":
            return stuck_wordcount(tempfile.mkdtemp(dir=scratch, prefix="flags-"), args.stuck_seconds)
        return None

    def faults_for(scenario: str):
        if scenario in slow_partition:
            return Faults(slow_first_attempt={("map", slow_partition[scenario]): (args.slowdown - 1) * typical})
        if scenario == "slow-worker":
            return Faults(slow_workers={slow_worker: args.worker_factor})
        return None

    started = time.time()
    for r in range(args.repeat):
        for scenario in scenarios:
            data = skewed if scenario == "skewed" else corpus
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                run = bench.run(data, on, faults_for(scenario), job_for(scenario))
                cells[(scenario, on)].append(run)
                print(f"  repeat {r + 1}/{args.repeat} {label(scenario):<18} speculation {'on ' if on else 'off'} "
                      f"{run.seconds:6.2f} s  speculative {run.speculative}  answer "
                      f"{'ok' if run.answer_ok else 'WRONG'}  load {run.load[0]:.1f}"
                      + (f"  (a forgotten attempt kept a worker busy {run.idle_wait[1]:.2f} s before this run)"
                         if run.idle_wait[1] > 0.2 else "")
                      + "".join(f"\n    zombie: {z.get('action')}: {z.get('reason')}" for z in run.zombies)
                      + (f"\n    answer differs: {run.mismatch}" if run.mismatch else ""), flush=True)
            if scenario == "healthy" and typical is None:
                typical = statistics.median(d for on in (True, False) for d in cells[("healthy", on)][0].map_durations)
                print(f"  typical map task: {typical:.2f} s -> slow-task sleep {(args.slowdown - 1) * typical:.1f} s",
                      flush=True)
    wall = time.time() - started

    # ---- report
    med = {k: statistics.median(r.seconds for r in v) for k, v in cells.items()}
    ratio = {k: med[k] / med[("healthy", k[1])] for k in cells}
    params = {"files": args.files, "file_bytes": file_bytes, "corpus_bytes": file_bytes * args.files,
              "partition_size": args.partition_size, "slowdown": args.slowdown,
              "worker_factor": args.worker_factor, "skew_factor": args.skew_factor, "repeat": args.repeat,
              "typical_map_s": round(typical, 3), "slow_task_sleep_s": round((args.slowdown - 1) * typical, 3),
              "slow_worker": "w" + slow_worker.split(":", 1)[1], "slow_partitions": slow_partition, "config_overrides": overrides,
              "map_tasks": {"corpus": args.files, "skewed": args.files if skewed else None},
              "reduce_tasks": sorted({s["tasks"] for r in cells[("healthy", False)] for s in r.stages
                                      if s["stage"].endswith("-reduce")})}
    head = ["scenario", "speculation", "median s", "x healthy", "runs s", "spec. attempts", "won by",
            "straggler start s", "load", "answer"]
    rows = []
    for (scenario, on), runs in cells.items():
        starts = [straggler_start(r, slow_partition[scenario]) for r in runs] if scenario in slow_partition else []
        rows.append([label(scenario), "on" if on else "off", f"{med[(scenario, on)]:.2f}",
                     f"{ratio[(scenario, on)]:.2f}", " ".join(f"{r.seconds:.1f}" for r in runs),
                     " ".join(str(r.speculative) for r in runs), winners(runs),
                     " ".join("?" if x is None else f"{x:.1f}" for x in starts) or "-",
                     f"{statistics.median(r.load[0] for r in runs):.1f}",
                     "ok" if all(r.answer_ok for r in runs) else "WRONG"])
    print(f"\nword count, {args.files} map tasks of {file_bytes / 1e6:.0f} MB ({params['reduce_tasks']} reduce tasks), "
          f"{info.workers} workers x 1 thread, {env['cores']} cores; median of {args.repeat}; "
          f"typical map task {typical:.2f} s; {wall / 60:.1f} min in all")
    common.print_markdown_table(head, rows)

    checks = []

    def target(name: str, ok: bool, detail: str) -> None:
        checks.append({"target": name, "met": ok, "detail": detail})
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")

    print("\ntargets:")
    for s in ("slow-task", "slow-task-last", "slow-worker", "stuck"):
        if (s, True) in cells:
            target(f"{label(s)} with speculation <= 1.3x healthy", ratio[(s, True)] <= 1.3,
                   f"{ratio[(s, True)]:.2f}x")
    for s in ("slow-task", "slow-task-last"):
        if (s, False) in cells:
            target(f"{label(s)} without speculation >= 3x healthy", ratio[(s, False)] >= 3.0,
                   f"{ratio[(s, False)]:.2f}x")
    for s in ("healthy", "skewed"):
        if (s, True) in cells:
            n = [r.speculative for r in cells[(s, True)]]
            target(f"{s}: no speculative attempts", sum(n) == 0, f"per run {n}")
    target("every answer equals the reference", all(r.answer_ok for v in cells.values() for r in v), "")

    if args.timelines:
        for (scenario, on), runs in cells.items():
            if scenario == "healthy" and not on:
                continue
            mid = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
            print_timeline(f"{label(scenario)}, speculation {'on' if on else 'off'} (median run)", mid)

    if placement is not None:
        print(f"\nplacement: {placement['tasks']} equal map tasks of {placement['task_seconds']:g} s, "
              f"{info.workers} workers: median {placement['seconds']:.2f} s over {len(placement['runs'])} runs")
        for r in placement["runs"]:
            print(f"  {r['seconds']:6.2f} s  map tasks per worker {r['per_worker']}")

    if not args.no_record:
        bench_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        if placement is not None:
            common.append_records(RESULTS, [{"benchmark": "stragglers", "bench_id": bench_id, "time": time.time(),
                                             "command": command, "scenario": "placement", **placement,
                                             "environment": env}])
        common.append_records(RESULTS, ({
                "benchmark": "stragglers", "bench_id": bench_id, "time": time.time(), "command": command,
                "scenario": scenario, "label": label(scenario), "speculation": on, "seconds": med[(scenario, on)],
                "ratio_to_healthy": ratio[(scenario, on)],
                "runs": [{"seconds": round(r.seconds, 3), "speculative": r.speculative, "zombies": r.zombies, "answer_ok": r.answer_ok, "mismatch": r.mismatch,
                          "load_average_1m": [round(x, 2) for x in r.load],
                          "idle_wait_s": [round(x, 3) for x in r.idle_wait], "stages": r.stages,
                          "decisions": r.decisions, "timeline": r.timeline} for r in runs],
                "targets": checks, "params": params, "environment": env,
            } for (scenario, on), runs in cells.items()))
        print(f"\nappended {len(cells)} lines to {os.path.relpath(RESULTS, os.getcwd())}")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
