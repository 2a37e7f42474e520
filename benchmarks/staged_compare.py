"""Comparing a few staged partitions with a large live output: what ``stage_to=`` and
``engine.diff.compare(..., partitions=)`` cost when the live output has one partition per day of a year.

Builds a live output partitioned by ``day`` (365 partitions, ``--rows`` rows each, four columns) from
one generated input, and a staged output holding ``--staged`` of those days recomputed from a changed
input, then times, taking turns, with medians over ``--repeat`` rounds:

* **compare**: ``compare(LIVE, STAGED, partitions=[the staged days])``, as ``run(..., stage_to=)`` does;
* **stage**: the whole staged run ``run(job, IN, LIVE, partition_by=["day"], where=<the days>,
  stage_to=STAGED, force=True)`` (reading the input, writing, committing and comparing);
* **compare-all**: ``compare(LIVE, STAGED)`` of everything, for scale.

It prints the bytes of the live files the compared partitions hold, and which engine it ran. As a
script it runs against whichever engine ``PYTHONPATH`` (or the installed one) provides, so two
checkouts can be measured with the same file:

    python -m benchmarks.staged_compare                          # 365 x 5,000 rows, 3 staged days
    PYTHONPATH=CHECKOUT python benchmarks/staged_compare.py --rows 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import engine
from engine import Job, commit
from engine.datasets import filesystem
from engine.diff import compare

JOB = Job("staged-compare").map(columns=["day", "region", "v", "w"])


def make_input(path: str, days: list[str], rows: int, seed: int) -> None:
    """One Parquet file per day under ``path/day=.../`` (a Hive input, so a staged run reads only its days)."""
    rng = np.random.default_rng(seed)
    for day in days:
        d = os.path.join(path, f"day={day}")
        os.makedirs(d, exist_ok=True)
        pq.write_table(pa.table({"region": rng.choice(["eu", "us", "apac", "latam"], rows),
                                 "v": rng.integers(0, 10_000, rows), "w": rng.random(rows)}),
                       os.path.join(d, "events.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rows", type=float, default=5_000, help="rows per day")
    ap.add_argument("--staged", type=int, default=3, help="days staged and compared")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    args = ap.parse_args()
    rows = int(args.rows)
    base = args.dir or tempfile.mkdtemp(prefix="staged-compare-")
    first = dt.date(2025, 12, 1)
    days = [(first + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    staged_days = days[:: max(1, args.days // args.staged)][: args.staged]
    src, live, staged = (os.path.join(base, n) for n in ("in", "live", "staged"))
    try:
        make_input(src, days, rows, seed=1)
        t = time.perf_counter()
        engine.run(JOB, src, live, partition_by=["day"])
        build = time.perf_counter() - t
        make_input(src, staged_days, rows + rows // 50, seed=2)      # the staged days change by 2%
        where = "day in (" + ", ".join(f"'{d}'" for d in staged_days) + ")"
        engine.run(JOB, src, live, partition_by=["day"], where=where, stage_to=staged)
        names = [f"day={d}" for d in staged_days]
        lm = commit.load_manifest(*filesystem(live))
        sm = commit.load_manifest(*filesystem(staged))
        picked = sum(f["bytes"] for f in lm.files if commit.partition_of(f["path"]) in names)
        times: dict[str, list[float]] = {"compare": [], "stage": [], "compare-all": []}
        for _ in range(args.repeat):
            t = time.perf_counter()
            d = compare(live, staged, partitions=names)
            times["compare"].append(time.perf_counter() - t)
            assert [p.name for p in d.partitions] == names and all(p.rows_b == rows + rows // 50 for p in d.partitions)
            t = time.perf_counter()
            r = engine.run(JOB, src, live, partition_by=["day"], where=where, stage_to=staged, force=True)
            times["stage"].append(time.perf_counter() - t)
            assert r.diff is not None and len(r.diff.partitions) == len(names)
            t = time.perf_counter()
            compare(live, staged)
            times["compare-all"].append(time.perf_counter() - t)
        print(json.dumps({
            "engine": os.path.dirname(engine.__file__), "days": args.days, "rows_per_day": rows,
            "live_rows": lm.rows, "live_files": len(lm.files), "live_bytes": sum(f["bytes"] for f in lm.files),
            "staged_partitions": len(names), "live_bytes_of_staged_partitions": picked,
            "staged_bytes": sum(f["bytes"] for f in sm.files), "build_seconds": round(build, 2),
            "median_seconds": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}}, indent=1))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
