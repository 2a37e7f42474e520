"""Incremental runs (issue 12): a daily run of one day out of a year against the same job on that day alone.

The ``incremental`` suite (``python -m benchmarks --suites incremental``; not in the default set)
asks whether a scheduled daily run over a year-long Hive input, into a partitioned output that
already holds the other days, costs about what the job costs on that one day's data alone: the
input's other days must be pruned before anything of them is read, and the commit must replace one
partition without rewriting (or re-listing at length) the rest of the output.

**Data.** :func:`events` generates (and caches under the dataset root, as :mod:`benchmarks.datagen`
does) ``events/day=YYYY-MM-DD/part.parquet``: ``--incremental-days`` days (default 365, from
2026-01-01) of ``--incremental-rows-per-day`` rows (default 1e6) of ``ts`` (timestamp, sorted within
the day), ``user_id`` (int64), ``country`` (60 values, Zipf-like), ``event`` (5 types) and ``amount``
(float64). One day is ~12 MB of Parquet (~37 MB decoded); the year is 3.65e8 rows, ~4.3 GB of
Parquet and ~13 GB decoded, generated in ~1.5 min by two threads.

**Job** (as a user writes it; no ``columns=``): ``JOB_SOURCE``, the events per day, country and event
type with their count, sum, mean and max of ``amount``, written partitioned by ``day``.

**Setup** (untimed): the live output is built by the daily runs a scheduler would have made, one per
day for the first ``days - 1`` days (``mode="overwrite-partitions"``, ``date=``, ``where=``), so its
manifest holds every partition's and every date's provenance as a real pipeline leaves it. Their
seconds form the ``setup`` record: the cost of a daily run as the output grows. Each timed
incremental run starts from a fresh copy of that output (the copy untimed).

**Cases** (systems taking turns, ``max(5, --repeat)`` repeats, median and spread):

* ``daily-driver``: the incremental run for the last day, ``engine.run(job, events, out,
  partition_by=["day"], mode="overwrite-partitions", date=d, where="day = '{date}'")`` (system
  ``engine``), against ``alone``: the same job on a directory holding only that day's file (the same
  file, hard-linked, ``day=d/part.parquet``) into an empty output; both in the driver process (the
  day is below ``engine.local.max-bytes``). The engine record's ``ratios.alone`` is the paired
  ratio (a)/(b), the figure the issue bounds at 1.2.
* ``daily-cluster``: the same two on the embedded cluster (``engine.local.max-bytes: 0``).
* ``daily-cli``: the same two as ``mapreduce run`` in a fresh process each (``--date d --where
  "day = '{date}'" --mode overwrite-partitions --partition-by day``).
* ``noop``: the incremental run again over its own committed output (``engine``: in the process;
  ``cli``: a fresh ``mapreduce run`` process), and ``skipped-date``: a run for a day the setup
  committed (mid-year), what each already-done date of a backfill costs.

Checks: both answers equal DuckDB's over the day's file; the incremental run read one input file,
replaced exactly the day's partition, and left the other partitions' manifest entries (paths and
checksums) and files as they were; the no-op runs report ``skipped`` (the command line's: its
manifest's bytes are unchanged). Every record carries ``cpu_s``, the CPU seconds of each run (the
process, all its threads; for the command line, the child process; on the cluster, the driver only),
``cpu_ratios`` (paired, as ``ratios``) and the load average before and after the case.

    python -m benchmarks --suites incremental [--incremental-days 365] [--incremental-rows-per-day 1e6]
    python -m benchmarks.incremental build-live OUT [--days 365] [--rows-per-day 1e6]   # the live output alone
    python -m benchmarks.incremental commit-costs OUT      # CPU ms of the commit path's steps on OUT

``commit-costs`` times what a run's commit path does with a committed output (list its data files,
load its manifest, twice, write the next manifest's bytes, seal it) in this process's engine: run it
from two checkouts to compare revisions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks import common, harness
from benchmarks.harness import ENGINE, Measured, Outcome

FIRST_DAY = dt.date(2026, 1, 1)
DAYS = 365
ROWS_PER_DAY = 1_000_000
REPEAT = 5
WHERE = "day = '{date}'"

JOB_SOURCE = '''\
from engine import Job, agg

job = Job("daily-events").reduce(by=["day", "country", "event"], aggs={
    "events": agg.count(),
    "revenue": agg.sum("amount"),
    "avg_amount": agg.mean("amount"),
    "max_amount": agg.max("amount"),
})
'''

REFERENCE_SQL = """
SELECT '{day}' AS day, country, event, count(*) AS events, sum(amount) AS revenue, avg(amount) AS avg_amount,
       max(amount) AS max_amount
FROM read_parquet('{path}') GROUP BY ALL
"""

COUNTRIES = tuple(f"c{i:02d}" for i in range(60))
EVENTS = ("view", "click", "cart", "purchase", "refund")
EVENT_SHARES = (0.6, 0.2, 0.1, 0.07, 0.03)
FORMAT_VERSION = 1


def job():
    """The suite's job, from ``JOB_SOURCE`` (the text the CLI cases run as a job file)."""
    scope: dict[str, Any] = {}
    exec(compile(JOB_SOURCE, "<daily-events job>", "exec"), scope)  # noqa: S102 - our own constant
    return scope["job"]


# ---------------------------------------------------------------------------------------------
# Data


def day_of(i: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=i)).isoformat()


def day_table(day: str, rows: int, seed: int = 0) -> pa.Table:
    """One day's events, seeded by ``(seed, day)``."""
    date = dt.date.fromisoformat(day)
    rng = np.random.default_rng([seed, date.toordinal()])
    start = np.datetime64(day, "ms").astype(np.int64)
    ts = start + np.sort(rng.integers(0, 86_400_000, rows))
    weights = np.cumsum(1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.1)
    weights /= weights[-1]
    country = np.minimum(np.searchsorted(weights, rng.random(rows), side="right"), len(COUNTRIES) - 1)
    shares = np.cumsum(EVENT_SHARES)
    event = np.minimum(np.searchsorted(shares, rng.random(rows) * shares[-1], side="right"), len(EVENTS) - 1)
    return pa.table({
        "ts": pa.array(ts, pa.timestamp("ms")),
        "user_id": pa.array(rng.integers(1, 5_000_001, rows), pa.int64()),
        "country": pa.array(COUNTRIES).take(pa.array(country.astype(np.int32))),
        "event": pa.array(EVENTS).take(pa.array(event.astype(np.int32))),
        "amount": pa.array(np.round(rng.lognormal(3.0, 1.0, rows), 2), pa.float64()),
    })


def events(days: int = DAYS, rows_per_day: int = ROWS_PER_DAY, *, seed: int = 0, out: str | None = None,
           threads: int = 2) -> str:
    """Generate (or reuse) the Hive input ``day=YYYY-MM-DD/part.parquet``; returns its directory."""
    import pyarrow.parquet as pq

    from benchmarks import datagen
    days, rows_per_day = int(days), int(rows_per_day)
    if days < 2 or rows_per_day < 1:
        raise ValueError(f"the incremental suite needs at least 2 days of at least 1 row, got {days} x {rows_per_day}")
    params = {"dataset": "events", "days": days, "rows_per_day": rows_per_day, "first_day": FIRST_DAY.isoformat(),
              "seed": seed}
    name = f"events_{days}d_{datagen._label(rows_per_day)}_seed{seed}_v{FORMAT_VERSION}"

    def write(directory: str) -> list[dict]:
        def one(i: int) -> dict:
            day = day_of(i)
            rel = f"day={day}/part.parquet"
            os.makedirs(os.path.join(directory, f"day={day}"), exist_ok=True)
            path = os.path.join(directory, rel)
            # dictionary pages for the two small string columns, delta encoding for the sorted timestamps
            pq.write_table(day_table(day, rows_per_day, seed), path, compression="snappy",
                           use_dictionary=["country", "event"], column_encoding={"ts": "DELTA_BINARY_PACKED"})
            return {"name": rel, "rows": rows_per_day, "bytes": os.path.getsize(path)}
        with ThreadPoolExecutor(max(1, threads)) as pool:      # numpy and the Parquet writer release the GIL
            return list(pool.map(one, range(days)))

    return datagen._cached(out, name, params, write)


def day_file(data: str, day: str) -> str:
    return os.path.join(data, f"day={day}", "part.parquet")


def alone_input(data: str, day: str, where: str) -> str:
    """A directory holding only ``day``'s file (hard-linked: the very bytes the incremental run reads)."""
    target = os.path.join(where, f"day={day}")
    os.makedirs(target, exist_ok=True)
    dst = os.path.join(target, "part.parquet")
    if not os.path.exists(dst):
        try:
            os.link(day_file(data, day), dst)
        except OSError:
            shutil.copyfile(day_file(data, day), dst)
    return where


def reference(data: str, day: str) -> pa.Table:
    import duckdb
    rel = duckdb.connect().sql(REFERENCE_SQL.format(day=day, path=day_file(data, day)))
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


# ---------------------------------------------------------------------------------------------
# Runs


def daily(job_, data: str, out: str, day: str, **kw):
    """The scheduled daily run, as the issue writes it."""
    import engine
    return engine.run(job_, data, out, partition_by=["day"], mode="overwrite-partitions", date=day, where=WHERE,
                      **kw)


def build_live(job_, data: str, out: str, days: list[str], on_run=None) -> list[float]:
    """The live output as a daily schedule leaves it: one run per day in ``days``; their seconds."""
    seconds = []
    for i, day in enumerate(days):
        t0 = time.perf_counter()
        result = daily(job_, data, out, day)
        seconds.append(time.perf_counter() - t0)
        if result.skipped:
            raise RuntimeError(f"building the live output: the run for {day} was skipped")
        if on_run is not None:
            on_run(i, seconds[-1])
    return seconds


def copy_output(src: str, dst: str) -> str:
    """A copy of a committed output (files and manifest; the engine's lock and scratch left out)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_lock", "_temporary"))
    return dst


def manifest_doc(out: str) -> dict:
    from engine import commit
    from engine.datasets import filesystem
    fs, path = filesystem(out)
    return commit.load_manifest(fs, path).doc


def read_day(out: str, day: str) -> pa.Table:
    import pyarrow.compute as pc

    import engine
    table = engine.read(out)
    return table.filter(pc.equal(table["day"], day))


def structure_check(base: dict, after: dict, day: str, input_files: int) -> dict:
    """What the incremental run did to the output, against the manifest it started from."""
    from engine.commit import partition_of
    produced = f"day={day}"
    before = {f["path"]: f.get("crc32c") for f in base["files"]}
    now = {f["path"]: f.get("crc32c") for f in after["files"]}
    kept_before = {p: c for p, c in before.items() if partition_of(p) != produced}
    kept_now = {p: c for p, c in now.items() if partition_of(p) != produced}
    parts = after.get("partitions") or {}
    replaced = sorted(d for d, rec in parts.items() if rec.get("generation") == after["generation"])
    out = {"partitions": len(parts), "replaced": replaced, "others_unchanged": kept_before == kept_now,
           "input_files_read": input_files, "generation": [base["generation"], after["generation"]],
           "manifest_bytes": None}
    out["ok"] = bool(replaced == [produced] and kept_before == kept_now and input_files == 1
                     and len(parts) == len(base.get("partitions") or {}) + 1)
    return out


def _files_unchanged(out: str, doc: dict, day: str) -> bool:
    """The other partitions' files exist with the sizes their manifest entries record."""
    for f in doc["files"]:
        if f["path"].startswith(f"day={day}/"):
            continue
        p = os.path.join(out, f["path"])
        if not os.path.isfile(p) or os.path.getsize(p) != f["bytes"]:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Command-line runs


def cli_command(job_file: str, data: str, out: str, day: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "engine", "run", job_file, "--input", data, "--output", out, "--partition-by",
           "day", "-q"]
    if day is not None:
        cmd += ["--date", day, "--where", WHERE, "--mode", "overwrite-partitions"]
    return cmd


def _wall(cmd: list[str], env: dict) -> float:
    from benchmarks import startup
    return startup.wall(cmd, env)


# ---------------------------------------------------------------------------------------------
# The suite


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn) -> tuple[float, float, Any]:
    """``(wall seconds, CPU seconds, fn())``."""
    c0, t0 = _cpu(), time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, _cpu() - c0, value


def same_answer(answer: pa.Table, ref: pa.Table) -> tuple[bool, str]:
    from benchmarks import answers
    return answers.same(answer, ref, ["country", "event"])


def _manifest_bytes(out: str) -> bytes:
    with open(os.path.join(out, "_SUCCESS"), "rb") as f:
        return f.read()


def run_suite(ctx) -> None:
    """The ``incremental`` suite of ``python -m benchmarks``."""
    import dask.config

    import engine
    from benchmarks import startup
    from engine import cluster as embedded
    p = ctx.profile
    quick = p.name == "quick"
    repeat = ctx.repeat if quick else max(REPEAT, ctx.repeat)
    ndays, rows = int(p.incremental_days), int(p.incremental_rows_per_day)
    data = events(ndays, rows, out=ctx.data_root)
    days = [day_of(i) for i in range(ndays)]
    day = days[-1]
    day_bytes = os.path.getsize(day_file(data, day))
    in_driver = day_bytes <= embedded.local_max_bytes()
    scratch = tempfile.mkdtemp(prefix="incremental-", dir=ctx.scratch)
    job_ = job()
    job_file = os.path.join(scratch, "daily_events.py")
    with open(job_file, "w", encoding="utf-8") as f:
        f.write(JOB_SOURCE)
    alone = alone_input(data, day, os.path.join(scratch, "alone"))
    ref = reference(data, day)
    params = {"days": ndays, "rows_per_day": rows, "day": day, "day_bytes": day_bytes, "repeat": repeat}

    try:
        # Setup: the live output of days[:-1], committed by daily runs (untimed; their seconds are a record)
        base = os.path.join(scratch, "live")
        ctx.progress.line(f"incremental: building the live output by {ndays - 1} daily runs "
                          f"({rows:,} rows/day, {day_bytes / 1e6:.1f} MB/day)")
        load0, t0 = _load(), time.time()
        setup = build_live(job_, data, base, days[:-1],
                           on_run=lambda i, sec: ctx.progress.step(f"setup day {i + 1}/{ndays - 1}", sec))
        base_doc = manifest_doc(base)
        manifest_size = len(_manifest_bytes(base))
        tenth = max(1, len(setup) // 10)
        first, last = harness.median(setup[:tenth]), harness.median(setup[-tenth:])
        ctx.emit({"kind": "setup", "suite": "incremental", "case": "live-output", "params": params,
                  "seconds": round(time.time() - t0, 2), "runs": [round(x, 4) for x in setup],
                  "first_tenth_median": round(first, 4), "last_tenth_median": round(last, 4),
                  "partitions": len(base_doc.get("partitions") or {}), "dates": len(base_doc.get("dates") or {}),
                  "manifest_bytes": manifest_size, "load": {"before": load0, "after": _load()},
                  "notes": [f"{ndays - 1} daily runs, one per day (as the timed incremental run, in the driver "
                            "process when the day is at most engine.local.max-bytes), building the live output"]})
        ctx.progress.done(f"setup: {ndays - 1} daily runs in {time.time() - t0:.0f}s; a daily run took {first:.3f}s "
                          f"over the first {tenth} days, {last:.3f}s over the last {tenth} "
                          f"(manifest {manifest_size / 1e3:.0f} KB)")

        def fresh(name: str) -> str:
            return os.path.join(scratch, f"{name}-{uuid.uuid4().hex[:8]}")

        def discard(path: str) -> None:
            shutil.rmtree(path, ignore_errors=True)

        structure: dict[str, Any] = {}

        def inspect(label: str, out: str, input_files: int) -> None:
            doc = manifest_doc(out)
            s = structure_check(base_doc, doc, day, input_files)
            s["files_unchanged"] = _files_unchanged(out, doc, day)
            s["ok"] = s["ok"] and s["files_unchanged"]
            s["manifest_bytes"] = len(_manifest_bytes(out))
            structure[label] = s

        def incremental(label: str):
            def run(keep: bool) -> Outcome:
                out = copy_output(base, fresh("inc"))
                try:
                    seconds, cpu, result = _timed(lambda: daily(job_, data, out, day))
                    if result.skipped:
                        raise RuntimeError("the incremental run was skipped")
                    extra = {"local": bool(result.report.cluster.get("local")),
                             "input_files": result.report.input_files, "cpu_s": round(cpu, 4)}
                    if keep:
                        inspect(label, out, result.report.input_files)
                    answer = read_day(out, day) if keep else None
                    return Outcome(seconds, answer, answer.num_rows if keep else None, extra=extra)
                finally:
                    discard(out)
            return run

        def by_itself(keep: bool) -> Outcome:
            out = fresh("alone")
            try:
                seconds, cpu, result = _timed(lambda: engine.run(job_, alone, out, partition_by=["day"]))
                answer = engine.read(out) if keep else None
                return Outcome(seconds, answer, answer.num_rows if keep else None,
                               extra={"local": bool(result.report.cluster.get("local")), "cpu_s": round(cpu, 4)})
            finally:
                discard(out)

        def measure(case: str, systems: dict, *, before=None, notes=(), check_structure: str | None = None,
                    config: dict | None = None, skipped: dict | None = None) -> Measured:
            load0 = _load()
            with dask.config.set(config or {}):
                measured = harness.measure(systems, repeat, before=before, on_run=lambda s, r, sec: ctx.progress.step(
                    f"{case} {s} {r + 1}/{repeat}", sec))
            check: dict[str, Any] = {"against": {}, "ok": False}
            results = []
            for name, answer in measured.answers.items():
                if answer is None:
                    continue
                ok, why = same_answer(answer, ref)
                check["against"][f"{name} vs duckdb"] = {"equal": ok, "how": "values", **({"why": why} if why else {})}
                results.append(ok)
            if check_structure is not None:
                check["structure"] = structure.get(check_structure)
                results.append(bool(check["structure"] and check["structure"].get("ok")))
            if skipped is not None:
                check["skipped"] = dict(skipped)
                results.append(set(skipped) == set(systems) and all(skipped.values()))
            check["ok"] = bool(results) and all(results)
            load1 = _load()
            cpu = {s: [x["cpu_s"] for x in measured.extras.get(s, []) if "cpu_s" in x] for s in measured.runs}
            for rec in harness.records("incremental", case, measured, params=params, input_rows=rows,
                                       input_bytes=day_bytes, check=check, notes=notes):
                rec["load"] = {"before": load0, "after": load1}
                rec["cpu_s"] = cpu.get(rec["system"]) or None
                if rec["system"] == ENGINE and cpu.get(ENGINE):
                    rec["cpu_ratios"] = {s: common.paired_ratio(cpu[ENGINE], c) for s, c in cpu.items()
                                         if s != ENGINE and c}
                ctx.emit(rec)
            if not check["ok"]:
                ctx.failures.append(f"incremental {case}: check failed: {json.dumps(check, default=str)[:600]}")
            for system, err in measured.errors.items():
                ctx.failures.append(f"incremental {case} {system}: {err}")
            meds = ", ".join(f"{s} {harness.median(r):.3f}s" for s, r in measured.runs.items() if r)
            ratio = harness.paired_ratio(measured.runs.get(ENGINE, []), measured.runs.get("alone", []))
            ctx.progress.done(f"{case}: {meds}" + (f", ratio {ratio:.2f}" if ratio else "") + f" (load {load0[0]})")
            return measured

        # the day in the driver process (when it is small enough), then on the embedded cluster
        if in_driver:
            by_itself(False)                       # warm: imports (the where language's too), page cache
            incremental("warm")(False)
            measure("daily-driver", {ENGINE: incremental("driver"), "alone": by_itself}, check_structure="driver",
                    notes=["engine: the incremental run for the last day over the live output of the other days; "
                           "alone: the same job on a directory holding only that day's file, into an empty output; "
                           "both in the driver process; cpu_s: CPU seconds of the process (all its threads)"])
        ctx.client()
        cluster_cfg = {"engine.local.max-bytes": 0}
        with dask.config.set(cluster_cfg):
            by_itself(False)                       # warm the workers
            incremental("warm")(False)
        measure("daily-cluster", {ENGINE: incremental("cluster"), "alone": by_itself}, before=ctx.idle,
                check_structure="cluster", config=cluster_cfg,
                notes=["as daily-driver, on the embedded cluster (engine.local.max-bytes: 0); cpu_s: the driver "
                       "process's CPU seconds only (not the workers')"])

        # the same runs as a scheduler calls them: a fresh `mapreduce run` process each
        env = startup.subprocess_env()
        kept: dict[str, str] = {}

        def cli(cmd: list[str]) -> tuple[float, float]:
            seconds, cpu, _ = _timed(lambda: _wall(cmd, env))
            return seconds, cpu

        def cli_incremental(keep: bool) -> Outcome:
            out = copy_output(base, fresh("cli-inc"))
            try:
                seconds, cpu = cli(cli_command(job_file, data, out, day))
                answer = read_day(out, day) if keep else None
                return Outcome(seconds, answer, answer.num_rows if keep else None, extra={"cpu_s": round(cpu, 4)})
            finally:
                if keep and "cli" not in kept:
                    kept["cli"] = out              # the no-op case reruns the command over it
                else:
                    discard(out)

        def cli_alone(keep: bool) -> Outcome:
            out = fresh("cli-alone")
            try:
                seconds, cpu = cli(cli_command(job_file, alone, out, None))
                answer = engine.read(out) if keep else None
                return Outcome(seconds, answer, answer.num_rows if keep else None, extra={"cpu_s": round(cpu, 4)})
            finally:
                discard(out)

        _wall([sys.executable, "-c", "import engine, pyarrow.compute"], env)     # bytecode caches, page cache
        measure("daily-cli", {ENGINE: cli_incremental, "alone": cli_alone},
                notes=["as daily-driver, each run a fresh `mapreduce run` process (--date D --where \"day = "
                       "'{date}'\" --mode overwrite-partitions --partition-by day, against --partition-by day "
                       "alone); cpu_s: the child process's CPU seconds"])

        # no-op reruns, and a date committed by the setup (what a backfill pays per date already done)
        committed = copy_output(base, fresh("noop"))
        if daily(job_, data, committed, day).skipped:
            raise RuntimeError("the incremental run over a copy of the live output was skipped")
        mid = days[len(days) // 2]
        skipped: dict[str, bool] = {}

        def rerun(name: str, on_day: str):
            def run(keep: bool) -> Outcome:
                seconds, cpu, result = _timed(lambda: daily(job_, data, committed, on_day))
                skipped[name] = skipped.get(name, True) and bool(result.skipped)
                answer = read_day(committed, day) if keep and on_day == day else None
                return Outcome(seconds, answer, answer.num_rows if answer is not None else None,
                               extra={"cpu_s": round(cpu, 4)})
            return run

        def cli_noop(keep: bool) -> Outcome:
            out = kept.get("cli")
            if out is None:
                raise RuntimeError("no output of the command-line incremental run to rerun over")
            before = _manifest_bytes(out)
            seconds, cpu = cli(cli_command(job_file, data, out, day))
            skipped["cli"] = skipped.get("cli", True) and _manifest_bytes(out) == before
            return Outcome(seconds, extra={"cpu_s": round(cpu, 4)})

        measure("noop", {ENGINE: rerun(ENGINE, day), "skipped-date": rerun("skipped-date", mid), "cli": cli_noop},
                skipped=skipped,
                notes=[f"engine: the incremental run for {day} again over its committed output, in the process; "
                       f"skipped-date: a run for {mid}, committed by the setup's daily run, in the process; cli: "
                       "the command-line incremental run again over its own output, in a fresh process (skipped: "
                       "its manifest's bytes unchanged)"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Summary (``python -m benchmarks summary`` includes it)


def summary_lines(records: list[dict]) -> list[str]:
    """The incremental suite's records as a Markdown table (empty if the run has none)."""
    meas = {(r["case"], r["system"]): r for r in records
            if r.get("kind") == "measurement" and r.get("suite") == "incremental"}
    if not meas:
        return []

    def cell(r: dict | None, digits: int = 3) -> str:
        if r is None or r.get("median") is None:
            return "-"
        return f"{r['median']:.{digits}f} (±{100 * (r.get('spread') or 0) / 2:.0f}%)"

    rows = []
    for case in ("daily-driver", "daily-cluster", "daily-cli"):
        eng, alone = meas.get((case, ENGINE)), meas.get((case, "alone"))
        if eng is None:
            continue
        ratio = (eng.get("ratios") or {}).get("alone")
        cpu = (eng.get("cpu_ratios") or {}).get("alone")
        check = eng.get("check") or {}
        rows.append([case, cell(eng), cell(alone), f"**{ratio:.2f}**" if ratio else "-",
                     f"{cpu:.2f}" if cpu else "-", str((eng.get("load") or {}).get("before", ["?"])[0]),
                     "ok" if check.get("ok") else "FAILED"])
    head = ["case", "(a) incremental s", "(b) alone s", "(a)/(b)", "CPU (a)/(b)", "load", "checks"]
    lines = ["Incremental: (a) the daily run of the last day over the live output of the other days vs (b) the "
             "same job on that day alone; median seconds (± half the spread), ratio paired per repeat", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    noop = [(label, meas.get(("noop", s))) for label, s in (("no-op rerun, in the process", ENGINE),
                                                            ("a date committed before (skipped)", "skipped-date"),
                                                            ("no-op rerun, `mapreduce run` process", "cli"))]
    if any(r for _, r in noop):
        lines += ["", "| rerun | s | skipped |", "|---|---|---|"]
        skipped = ((meas.get(("noop", ENGINE)) or {}).get("check") or {}).get("skipped") or {}
        for (label, r), s in zip(noop, (ENGINE, "skipped-date", "cli")):
            lines.append(f"| {label} | {cell(r)} | {'yes' if skipped.get(s) else 'NO'} |")
    setup = next((r for r in records if r.get("kind") == "setup" and r.get("suite") == "incremental"), None)
    if setup:
        lines += ["", f"Setup: {len(setup['runs'])} daily runs in {setup['seconds']:.0f} s; a daily run took "
                  f"{setup['first_tenth_median']:.3f} s (median) over the first tenth of the days and "
                  f"{setup['last_tenth_median']:.3f} s over the last tenth; the live output's manifest is "
                  f"{setup['manifest_bytes'] / 1e3:.0f} KB for {setup['partitions']} partitions and "
                  f"{setup['dates']} dates"]
    return lines


# ---------------------------------------------------------------------------------------------
# What the commit path costs on a committed output (for before/after comparisons of engine revisions)


def commit_costs(out: str, repeat: int = 15) -> dict[str, float]:
    """CPU milliseconds (median of ``repeat``) of what a run's commit path does with an output of many
    partitions: list its data files (a run does it twice), load its manifest (twice: the second time
    the same bytes), write the next manifest's bytes, and seal it."""
    import json as _json

    from engine import commit
    from engine.datasets import filesystem
    fs, path = filesystem(out)

    def cpu_ms(fn) -> float:
        fn()
        xs = []
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            xs.append(time.process_time() - t0)
        return round(1e3 * harness.median(xs), 2)

    def cold_load():
        if hasattr(commit, "_LAST_PARSED"):
            commit._LAST_PARSED = None
        return commit.load_manifest(fs, path)

    doc = cold_load().doc
    writer = getattr(commit, "manifest_text", None) or (lambda d: _json.dumps(d, indent=1, sort_keys=True).encode())
    return {"list data files": cpu_ms(lambda: commit.data_files(fs, path)),
            "load manifest": cpu_ms(cold_load),
            "load manifest again (same bytes)": cpu_ms(lambda: commit.load_manifest(fs, path)),
            "manifest bytes": cpu_ms(lambda: writer(doc)),
            "seal": cpu_ms(lambda: commit.seal(dict(doc)))}


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m benchmarks.incremental", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("commit-costs", help="CPU ms of the commit path's steps on a committed output")
    c.add_argument("output", help="a committed (partitioned) output, e.g. one built by build-live")
    c.add_argument("--repeat", type=int, default=15)
    b = sub.add_parser("build-live", help="the live output of the first DAYS-1 days, by daily runs")
    b.add_argument("output")
    b.add_argument("--days", type=int, default=DAYS)
    b.add_argument("--rows-per-day", type=float, default=ROWS_PER_DAY)
    b.add_argument("--data", default=None, help="dataset cache root (default: benchmarks/data)")
    args = ap.parse_args(argv)
    if args.command == "commit-costs":
        import engine
        costs = commit_costs(args.output, args.repeat)
        print(f"engine {os.path.dirname(engine.__file__)}, load {_load()[0]}")
        for what, ms in costs.items():
            print(f"  {what:<36} {ms:8.2f} ms")
        return 0
    data = events(args.days, int(args.rows_per_day), out=args.data)
    seconds = build_live(job(), data, args.output, [day_of(i) for i in range(args.days - 1)])
    print(f"{args.output}: {len(seconds)} daily runs in {sum(seconds):.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["summary_lines", "commit_costs", "events", "day_table", "job", "JOB_SOURCE", "run_suite", "build_live", "daily"]
