"""Where a groupby question's time goes: stage times, a sampled profile by category, and the decode floor.

For each question (jobs written the plain way: ``Job(q).reduce(by=..., aggs=...)``), on the embedded
cluster (whatever the input's size: ``engine.local.max-bytes`` is set to 0):

* **decode floor**: pyarrow alone reading the columns the question needs from the same Parquet files
  (``pq.read_table(files, columns=...)``, all cores), the median of ``--repeat``: no engine can answer
  faster than it reads;
* **engine**: the median wall time of ``--repeat`` runs, and the stage times of the last one;
* **profile** (``--sample``, needs ``py-spy``): one more run sampled in every process (driver and
  workers, CPU-active samples only), the samples grouped by what the innermost recognised frame does
  (Parquet decode, the user's functions, aggregation, hash partitioning, shuffle files, output
  write and checksum, the dask runtime, other).

    python -m benchmarks.profile --data G1_DIR --questions q1,q3,q10 [--repeat 3] [--sample] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

# (category, substrings of a frame's "function (file:line)") -- the first category whose pattern
# matches the innermost frame that matches anything wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("parquet decode", ("pyarrow/parquet/", "engine/datasets.py", "pyarrow/dataset")),
    ("user functions", ("/jobs/",)),
    ("aggregate", ("engine/agg.py",)),
    ("hash partition", ("engine/hashing.py",)),
    ("join", ("engine/joins.py",)),
    ("shuffle files", ("engine/shuffle.py",)),
    ("output write + checksum", ("engine/commit.py", "engine/fence.py")),
    ("engine tasks (other)", ("engine/tasks.py",)),
    ("engine driver", ("engine/",)),
    ("dask runtime", ("distributed/", "dask/", "tornado/", "asyncio/", "msgpack", "cloudpickle")),
)


# Leaf frames of threads that wait (py-spy's idle detection misses some of them): not counted.
IDLE = ("selectors.py", "Connection._recv", "Condition.wait", "Popen.poll", "Event.wait", "queue.py")


def categorize(stack: str) -> str | None:
    """The category of one sampled stack (frames root-first, separated by ``;``)."""
    if not stack.strip():
        return "native threads (Arrow's pool)"
    if any(p in stack.rsplit(";", 1)[-1] for p in IDLE):
        return None
    for frame in reversed(stack.split(";")):
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return "other"


def _count_raw(path: str) -> Counter[str]:
    """Samples per category in a py-spy ``--format raw`` file."""
    counts: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if n.isdigit() and (category := categorize(stack)) is not None:
                counts[category] += int(n)
    return counts


def plain(job):
    """``job`` written the plain way: an identity first map that only declared ``columns=`` is dropped."""
    stages = list(job.stages)
    if stages and stages[0].kind == "map" and getattr(stages[0].fn, "__name__", "") == "columns":
        stages = stages[1:]
    return dataclasses.replace(job, stages=tuple(stages))


def needed_columns(job) -> list[str]:
    """The input columns the question's first round reads (the engine's own derivation)."""
    return list(job.rounds[0].input_columns or ())


def decode_floor(data: str, columns: list[str], repeat: int) -> float:
    import pyarrow.parquet as pq
    files = sorted(glob.glob(os.path.join(data, "*.parquet")))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        pq.read_table(files, columns=columns)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_engine(job, data: str, repeat: int, options: dict | None = None) -> tuple[float, list[dict], Any]:
    """``repeat`` runs of ``job`` (``engine.run``'s ``options`` too): the median seconds, the last one's stages and report."""
    import engine
    times, report = [], None
    for _ in range(repeat):
        out = tempfile.mkdtemp(prefix="profile-")
        try:
            t = time.perf_counter()
            result = engine.run(job, data, os.path.join(out, "o"), force=True, **(options or {}))
            times.append(time.perf_counter() - t)
            report = result.report
        finally:
            shutil.rmtree(out, ignore_errors=True)
    stages = [{"stage": s.name, "tasks": s.tasks, "seconds": round(s.duration, 3), "rows_in": s.rows_in,
               "rows_out": s.rows_out} for s in report.stages]
    return statistics.median(times), stages, report


def sample(job, data: str, rate: int = 100, keep: str | None = None, native: bool = False,
           options: dict | None = None, categorize_raw=None) -> dict[str, float]:
    """Shares of CPU-active samples by category in the embedded cluster's worker processes during one
    run of ``job`` (py-spy attached to each worker for the run's duration; ``options``: ``engine.run``'s;
    ``categorize_raw(path) -> Counter``: other categories than :func:`categorize`'s)."""
    import signal
    from engine.cluster import get_client
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        raise SystemExit("--sample needs py-spy (pip install py-spy)")
    client, _ = get_client(None)     # the embedded cluster: the caller sets engine.local.max-bytes to 0
    pids = sorted(set(client.run(os.getpid).values()))
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for pid in pids:
            cmd = [spy, "record", "--pid", str(pid), "-r", str(rate), "--format", "raw", "-o", f"{tmp}/{pid}.txt"]
            procs.append(subprocess.Popen(cmd + (["--native"] if native else []), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        time.sleep(1.0)                      # let py-spy attach
        try:
            run_engine(job, data, 1, options)
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait(timeout=60)
        raws = [f"{tmp}/{pid}.txt" for pid in pids if os.path.exists(f"{tmp}/{pid}.txt")]
        if keep:
            with open(keep, "w") as out:
                for r in raws:
                    with open(r) as f:
                        out.write(f.read())
        counts: Counter[str] = Counter()
        for r in raws:
            counts.update((categorize_raw or _count_raw)(r))
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in counts.most_common()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a G1 dataset directory (python -m benchmarks.datagen g1)")
    ap.add_argument("--questions", default="q1,q3,q10")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sample", action="store_true", help="also sample one run of each question with py-spy")
    ap.add_argument("--native", action="store_true", help="sample native frames too (py-spy --native)")
    ap.add_argument("--raw", default=None, help="keep the sampled stacks as RAW-<question>.txt (py-spy raw format)")
    ap.add_argument("--json", default=None, help="append one JSON record per question to this file")
    args = ap.parse_args(argv)
    import dask.config
    from jobs.groupby import QUESTIONS
    # Worker processes to sample, and the same place for every size: never the driver-process path.
    stack = dask.config.set({"engine.local.max-bytes": 0})
    stack.__enter__()
    for q in args.questions.split(","):
        job = plain(QUESTIONS[q])
        cols = needed_columns(job)
        floor = decode_floor(args.data, cols, args.repeat)
        run_engine(job, args.data, 1)       # warm: worker imports, page cache
        seconds, stages, _ = run_engine(job, args.data, args.repeat)
        record: dict[str, Any] = {"question": q, "data": os.path.basename(args.data.rstrip("/")), "columns": cols,
                                  "decode_floor_s": round(floor, 3), "engine_s": round(seconds, 3),
                                  "engine_over_floor": round(seconds / floor, 2), "stages": stages}
        print(f"{q}: engine {seconds:.2f}s, decode floor {floor:.3f}s ({seconds / floor:.1f}x) for columns {cols}")
        for s in stages:
            print(f"    {s['stage']:<16} {s['tasks']:>4} tasks {s['seconds']:7.2f}s  rows {s['rows_in']:,} -> {s['rows_out']:,}")
        if args.sample:
            shares = sample(job, args.data, keep=f"{args.raw}-{q}.txt" if args.raw else None, native=args.native)
            record["profile"] = shares
            print("    profile: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
