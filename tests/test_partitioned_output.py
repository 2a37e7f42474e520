"""Hive-partitioned outputs and atomic partition replace (``partition_by=``, ``mode="overwrite-partitions"``).

Promises checked here, on local disk and on S3 (moto server):
- a partitioned output reads back (engine.read, pyarrow datasets, DuckDB) equal to a reference computed
  from the input in one process, awkward partition values included;
- ``overwrite-partitions`` replaces exactly the partitions a run produced, all of them or none (a reader,
  a SIGKILLed driver and a racing run never see a mix), keeps the others byte for byte, and records each
  partition's provenance; speculation leaves no duplicate;
- logical dates reach the job's functions on the workers, a rerun for a committed date is a no-op, and a
  ``where`` string is typed against the input's columns.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import posixpath
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import dask
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg, commit
from engine.errors import CommitError, ConcurrentRunError
from engine.faults import Faults
from fixtures import Backend, storage_backend

DAYS = [f"2026-11-{d:02d}" for d in range(1, 7)]
JOB = Job("daily-sums").reduce(by=["day", "region"], aggs={"n": agg.count(), "total": agg.sum("v")})


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    return storage_backend(request, tmp_path, "partitioned")


def write_events(backend: Backend, root: str, days, seed: int, rows: int = 400) -> None:
    """A Hive input ``root/day=YYYY-MM-DD/events.parquet`` with the regions and values of ``seed``."""
    for day in days:
        rng = np.random.default_rng([seed, int(day.replace("-", ""))])
        t = pa.table({"region": rng.choice(["eu", "us", "apac", "eu/west"], rows),
                      "v": rng.integers(0, 1000, rows)})
        path = posixpath.join(backend.path(root), f"day={day}", "events.parquet")
        if backend.name == "local":
            os.makedirs(posixpath.dirname(path), exist_ok=True)
        with backend.fs.open(path, "wb") as f:
            pq.write_table(t, f)


def reference(backend: Backend, root: str) -> dict:
    """``{day: sorted rows}`` of JOB over the input, computed by DuckDB from the files alone."""
    con = duckdb.connect()
    tables = []
    for day in DAYS:
        path = posixpath.join(backend.path(root), f"day={day}", "events.parquet")
        with backend.fs.open(path, "rb") as f:
            t = pq.read_table(f)
        tables.append(t.append_column("day", pa.array([day] * t.num_rows)))
    events = pa.concat_tables(tables)   # noqa: F841 - read by DuckDB below
    rows = con.sql("select day, region, count(*) as n, sum(v) as total from events group by all").fetchall()
    out: dict = collections.defaultdict(list)
    for day, region, n, total in rows:
        out[day].append((region, n, int(total)))
    return {k: sorted(v) for k, v in out.items()}


def by_day(table: pa.Table) -> dict:
    out: dict = collections.defaultdict(list)
    for r in table.to_pylist():
        out[r["day"]].append((r["region"], r["n"], r["total"]))
    return {k: sorted(v) for k, v in out.items()}


def files_of(backend: Backend, out: str) -> dict[str, dict]:
    """``{relative path: info}`` of every data file under the output (partition directories included)."""
    root = backend.path(out).rstrip("/")
    backend.fs.invalidate_cache()
    return {p[len(root) + 1:]: info for p, info in backend.fs.find(root, detail=True).items()
            if "/_" not in p[len(root):] and posixpath.basename(p).startswith("part-")}


# ---------------------------------------------------------------------------------------------
# Layout and reading back


def test_awkward_partition_values_read_back_by_every_reader(tmp_path):
    keys = ["a/b", "x=y", "100%", "c:d?e", "spaced out", "ünï©ødé", "", None, "#[]^{}'*\"\\", "plain"]
    rng = np.random.default_rng(3)
    n = 2000
    src = tmp_path / "in"
    src.mkdir()
    table = pa.table({"key": pa.array([keys[i] for i in rng.integers(0, len(keys), n)], pa.string()),
                      "day": pa.array(rng.integers(0, 3, n), pa.int32()), "v": rng.integers(0, 100, n)})
    pq.write_table(table, src / "t.parquet")
    events = table   # noqa: F841 - read by DuckDB below
    job = Job("awkward").reduce(by=["key", "day"], aggs={"s": agg.sum("v"), "n": agg.count()})
    out = str(tmp_path / "out")
    engine.run(job, str(src), out, partition_by=["key", "day"])
    # Hive semantics: an empty string and a null go to one partition, __HIVE_DEFAULT_PARTITION__, and read
    # back as null (the job's groups stay distinct: two rows there)
    con = duckdb.connect()
    expected = sorted(con.sql("select nullif(key, '') as key, day, s, n from (select key, day, sum(v) as s, "
                              "count(*) as n from events group by all)").fetchall(), key=repr)
    got = engine.read(out)
    assert got.schema.field("day").type == pa.int32() and got.schema.names == ["key", "day", "s", "n"]
    assert sorted(((r["key"], r["day"], r["s"], r["n"]) for r in got.to_pylist()), key=repr) == expected
    # every partition directory holds the rows of exactly one (key, day)
    manifest = commit.load_manifest(*engine.datasets.filesystem(out))
    assert len(manifest.doc["partitions"]) == len({(k, d) for k, d, _, _ in expected})
    # an ordinary Hive dataset to pyarrow and DuckDB (names starting with '_' are not data)
    ds = pads.dataset(out, format="parquet", partitioning="hive")
    seen = ds.to_table()
    assert sorted(((r["key"], r["day"], r["s"], r["n"]) for r in seen.to_pylist()), key=repr) == expected
    rows = con.sql(f"select key, day, s, n from read_parquet('{out}/**/*.parquet', hive_partitioning=true)").fetchall()
    assert sorted(((None if k is None else k, int(d), s, n) for k, d, s, n in rows), key=repr) == expected


def test_files_per_partition_are_bounded_by_size(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"day": rng.choice(["d1", "d2"], 200_000), "x": rng.random(200_000)}), src / "a.parquet")
    out = str(tmp_path / "out")
    with dask.config.set({"engine.output.max-file-bytes": "200KiB", "engine.batch-rows": 10_000}):
        engine.run(Job("copy").map(columns=["day", "x"]), str(src), out, partition_by="day")
    manifest = commit.load_manifest(*engine.datasets.filesystem(out))
    per = collections.Counter(commit.partition_of(f["path"]) for f in manifest.files)
    assert set(per) == {"day=d1", "day=d2"} and all(n >= 4 for n in per.values()), per   # ~800 KB each
    assert all(f["bytes"] < 400 << 10 for f in manifest.files)
    assert engine.read(out).num_rows == 200_000


# ---------------------------------------------------------------------------------------------
# Atomic partition replace


def test_overwrite_partitions_replaces_exactly_what_the_run_produced(backend):
    src, out = backend.url("in"), backend.url("out")
    write_events(backend, src, DAYS, seed=1)
    engine.run(JOB, src, out, storage_options=backend.options, partition_by=["day"])
    before = files_of(backend, out)
    gen_before = commit.load_manifest(backend.fs, backend.path(out)).doc["partitions"]
    time.sleep(1.1)                   # mtimes of rewritten files must differ
    changed = [DAYS[1], DAYS[4]]
    write_events(backend, src, changed, seed=2)
    where = pc.field("day").isin(changed)
    result = engine.run(JOB, src, out, storage_options=backend.options, partition_by=["day"],
                        mode="overwrite-partitions", where=where)
    after = files_of(backend, out)
    assert by_day(engine.read(out, backend.options)) == reference(backend, src)
    rewritten = {commit.partition_of(p) for p in set(after) ^ set(before)}
    assert rewritten == {f"day={d}" for d in changed}
    for p, info in before.items():
        if commit.partition_of(p) not in rewritten:
            assert after[p]["size"] == info["size"]
            key = "mtime" if backend.name == "local" else "LastModified"
            assert after[p][key] == info[key], p
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    parts = manifest.doc["partitions"]
    assert manifest.generation == 2
    for d in DAYS:
        rec = parts[f"day={d}"]
        if d in changed:
            assert rec["generation"] == 2 and rec["run_id"] == result.run_id
        else:
            assert rec == gen_before[f"day={d}"]
    assert result.report.output_rows == sum(len(v) for k, v in reference(backend, src).items() if k in changed)
    engine.verify(out, backend.options)


def test_overwrite_partitions_refuses_another_layout_or_schema(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"day": ["a", "b"], "v": [1, 2]}), src / "t.parquet")
    out = str(tmp_path / "out")
    engine.run(Job("j").map(columns=["day", "v"]), str(src), out, partition_by="day")
    with pytest.raises(CommitError, match="partitioned by"):
        engine.run(Job("j2").map(columns=["day", "v"]), str(src), out, partition_by=["v"], mode="overwrite-partitions")
    with pytest.raises(CommitError, match="schema"):
        engine.run(Job("j3").map(lambda t: t.append_column("w", t["v"])), str(src), out, partition_by="day",
                   mode="overwrite-partitions")
    with pytest.raises(CommitError, match="partition_by"):
        engine.run(Job("j4").map(columns=["day", "v"]), str(src), out, mode="overwrite-partitions")
    assert engine.read(out).sort_by("day").to_pylist() == [{"day": "a", "v": 1}, {"day": "b", "v": 2}]


def test_a_reader_sees_all_new_partitions_or_none(tmp_path):
    backend = Backend("local", str(tmp_path), None, engine.datasets.filesystem(str(tmp_path))[0])
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_events(backend, src, DAYS, seed=1, rows=3000)
    engine.run(JOB, src, out, partition_by=["day"])
    old = by_day(engine.read(out))
    write_events(backend, src, DAYS, seed=7, rows=3000)
    new = reference(backend, src)
    seen = collections.Counter()
    stop = threading.Event()
    errors: list[str] = []

    def reader():
        while not stop.is_set():
            try:
                got = by_day(engine.read(out))
            except Exception as exc:  # noqa: BLE001 - any failure of a read is what this test is about
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if got == old:
                seen["old"] += 1
            elif got == new:
                seen["new"] += 1
            else:
                errors.append(f"a mix: {sorted(d for d in got if got[d] != old.get(d))} new")
    t = threading.Thread(target=reader)
    t.start()
    try:
        time.sleep(0.2)
        # back and forth: every replacement deletes the files a reader of the previous generation may
        # be about to open (it then reads the new generation, never fails, never mixes)
        for seed in (7, 1, 7):
            write_events(backend, src, DAYS, seed=seed, rows=3000)
            engine.run(JOB, src, out, partition_by=["day"], mode="overwrite-partitions", force=True,
                       faults=Faults(commit_delay=0.02))
            time.sleep(0.1)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert seen["old"] > 0 and seen["new"] > 0, seen


DRIVER = textwrap.dedent('''
    import json, sys
    import pyarrow.compute as pc
    import engine
    from engine import Job, agg
    args = json.loads(sys.argv[1])
    job = Job("daily-sums").reduce(by=["day", "region"], aggs={"n": agg.count(), "total": agg.sum("v")})
    try:
        result = engine.run(job, args["src"], args["out"], cluster=args["cluster"], storage_options=args["options"],
                            partition_by=["day"], mode="overwrite-partitions", force=True, partition_size="4KiB",
                            where=pc.field("day").isin(args["days"]))
    except engine.EngineError as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print("COMMITTED", result.run_id, flush=True)
''')


def start_driver(tmp_path, cluster, src, out, options, days, faults=None):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    if faults:
        env["ENGINE_FAULTS"] = json.dumps(faults)
    args = json.dumps({"src": src, "out": out, "cluster": cluster, "options": options, "days": days})
    return subprocess.Popen([sys.executable, str(script), args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_driver_killed_during_partition_replace_leaves_old_or_new(backend, tmp_path):
    """SIGKILL of a driver replacing three partitions at random moments: every time, the three are all old
    or all new (never a mix), the other partitions are untouched, and the output verifies. (The input is
    small, so each driver runs its tasks itself: the process killed is the one that commits; killing a
    driver of a cluster run is test_commit_faults' and the race test's.)"""
    dask_cluster = None
    src_old, src_new, out = backend.url("old"), backend.url("new"), backend.url("out")
    changed = [DAYS[0], DAYS[2], DAYS[3]]
    write_events(backend, src_old, DAYS, seed=1)
    write_events(backend, src_new, DAYS, seed=1)
    write_events(backend, src_new, changed, seed=9)
    old, new = reference(backend, src_old), reference(backend, src_new)
    assert all(old[d] != new[d] for d in changed)
    faults = {"commit_delay": 0.15}
    proc = start_driver(tmp_path, dask_cluster, src_old, out, backend.options, DAYS)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    started = time.time()
    proc = start_driver(tmp_path, dask_cluster, src_new, backend.url("calibration"), backend.options, DAYS,
                        faults=faults)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    duration = time.time() - started
    rng = random.Random(20261201)
    outcomes = collections.Counter()
    for i in range(30):
        if outcomes["killed"] >= 10:
            break
        # alternate the direction, so a kill may hit an old→new and a new→old replacement
        src, _ = (src_new, new) if i % 2 == 0 else (src_old, old)
        proc = start_driver(tmp_path, dask_cluster, src, out, backend.options, changed, faults=faults)
        time.sleep(rng.uniform(0.25, 0.9) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            outcomes["killed"] += 1
        proc.wait(timeout=60)
        engine.verify(out, backend.options)
        got = by_day(engine.read(out, backend.options))
        assert {d: got[d] for d in DAYS if d not in changed} == {d: old[d] for d in DAYS if d not in changed}
        state = "old" if all(got[d] == old[d] for d in changed) else \
            "new" if all(got[d] == new[d] for d in changed) else None
        assert state is not None, f"a mix of partitions after run {i}"
        outcomes[state] += 1
    proc = start_driver(tmp_path, dask_cluster, src_new, out, backend.options, changed)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    assert by_day(engine.read(out, backend.options)) == new
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    assert set(files_of(backend, out)) == {f["path"] for f in manifest.files}      # no leftovers
    print(f"driver run {duration:.1f}s;", dict(outcomes))
    assert outcomes["killed"] >= 10 and outcomes["old"] >= 1 and outcomes["new"] >= 1, outcomes


@pytest.mark.slow
def test_two_racing_partition_replacements_never_mix(backend, dask_cluster, tmp_path):
    src_a, src_b, out = backend.url("a"), backend.url("b"), backend.url("out")
    write_events(backend, src_a, DAYS, seed=1)
    write_events(backend, src_b, DAYS, seed=5)
    a, b = reference(backend, src_a), reference(backend, src_b)
    proc = start_driver(tmp_path, dask_cluster, src_a, out, backend.options, DAYS)
    assert proc.wait(timeout=120) == 0
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    procs = [start_driver(tmp_path / "x", dask_cluster, src_b, out, backend.options, DAYS[:4]),
             start_driver(tmp_path / "y", dask_cluster, src_b, out, backend.options, DAYS[2:])]
    results = [p.communicate(timeout=120) for p in procs]
    won = [i for i, p in enumerate(procs) if p.returncode == 0]
    for p, (stdout, _) in zip(procs, results):
        assert p.returncode == 0 or "ConcurrentRunError" in stdout, stdout
    got = by_day(engine.read(out, backend.options))
    expected = dict(a)
    for i in won:
        expected.update({d: b[d] for d in (DAYS[:4] if i == 0 else DAYS[2:])})
    assert got == expected
    engine.verify(out, backend.options)


def test_speculative_attempts_leave_no_duplicate_in_partitions(tmp_path, dask_cluster):
    """A map-only job writes its output from the map tasks: one of them hangs, its speculative copy wins,
    and each partition holds every input row exactly once."""
    backend = Backend("local", str(tmp_path), None, engine.datasets.filesystem(str(tmp_path))[0])
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_events(backend, src, DAYS, seed=4)
    job = Job("copy").map(lambda t: t.append_column("cents", pc.multiply(t["v"], 100)))
    with dask.config.set({"engine.speculation.min-runtime": 0.5}):
        result = engine.run(job, src, out, cluster=dask_cluster, partition_by=["day", "region"],
                            faults=Faults(hang_first_attempt={("map", 2)}))
    assert [d["partition"] for d in result.report.speculation] == [2], result.report.speculation
    expected = pads.dataset(src, partitioning="hive").to_table()
    got = engine.read(out)
    key = lambda r: (r["day"], r["region"], r["v"])   # noqa: E731
    assert sorted(got.select(["day", "region", "v"]).to_pylist(), key=key) == \
        sorted(expected.select(["day", "region", "v"]).to_pylist(), key=key)
    assert got.num_rows == expected.num_rows == 400 * len(DAYS)
    manifest = commit.load_manifest(*engine.datasets.filesystem(out))
    assert set(files_of(backend, out)) == {f["path"] for f in manifest.files}     # the loser's files are gone
    assert len(manifest.doc["partitions"]) == len(DAYS) * 4


# ---------------------------------------------------------------------------------------------
# Logical dates and run-level where


def _tag_with_date(t: pa.Table) -> pa.Table:
    day = engine.logical_date()
    return t.append_column("run_day", pa.array([day.isoformat() if day else None] * t.num_rows))


def test_logical_date_reaches_workers_and_a_committed_date_is_a_noop(tmp_path, dask_cluster):
    backend = Backend("local", str(tmp_path), None, engine.datasets.filesystem(str(tmp_path))[0])
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_events(backend, src, DAYS, seed=3)
    job = Job("tagged").map(_tag_with_date).reduce(by=["day", "run_day"], aggs={"n": agg.count()})
    runs = {}
    for d in DAYS[:2]:
        runs[d] = engine.run(job, src, out, cluster=dask_cluster, partition_by=["day"], mode="overwrite-partitions",
                             date=dt.date.fromisoformat(d), where="day = '{date}'")
        assert not runs[d].skipped and runs[d].report.output_rows == 1
    rows = engine.read(out).sort_by("day").to_pylist()
    assert rows == [{"day": d, "run_day": d, "n": 400} for d in DAYS[:2]]
    assert runs[DAYS[0]].run_id != runs[DAYS[1]].run_id
    again = engine.run(job, src, out, cluster=dask_cluster, partition_by=["day"], mode="overwrite-partitions",
                       date=DAYS[0], where="day = '{date}'")
    assert again.skipped and again.run_id == runs[DAYS[0]].run_id
    dates = commit.load_manifest(*engine.datasets.filesystem(out)).doc["dates"]
    assert sorted(dates) == DAYS[:2] and dates[DAYS[1]]["partitions"] == [f"day={DAYS[1]}"]
    # a changed input file of that day is a new snapshot: the date runs again
    write_events(backend, src, [DAYS[0]], seed=8)
    third = engine.run(job, src, out, cluster=dask_cluster, partition_by=["day"], mode="overwrite-partitions",
                       date=DAYS[0], where="day = '{date}'")
    assert not third.skipped


def test_where_text_is_typed_against_the_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    days = pa.array([dt.date(2026, 11, 1) + dt.timedelta(days=i % 10) for i in range(100)], pa.date32())
    pq.write_table(pa.table({"d": days, "v": np.arange(100)}), src / "t.parquet")
    out = str(tmp_path / "out")
    engine.run(Job("w").reduce(by="d", aggs={"n": agg.count()}), str(src), out, where="d >= '{date}'",
               date="2026-11-08")
    got = engine.read(out).sort_by("d")
    assert got["d"].to_pylist() == [dt.date(2026, 11, 8), dt.date(2026, 11, 9), dt.date(2026, 11, 10)]
    assert got["n"].to_pylist() == [10, 10, 10]


def test_partition_replace_waits_for_no_one_and_refuses_a_held_output(tmp_path):
    """A run that finds the output's lock held (another live run) refuses at once with ConcurrentRunError."""
    from engine.lock import output_lock
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"day": ["a"], "v": [1]}), src / "t.parquet")
    out = str(tmp_path / "out")
    fs, root = engine.datasets.filesystem(out)
    done = threading.Event()
    held = threading.Event()

    def hold():
        with output_lock(fs, root):
            held.set()
            done.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(ConcurrentRunError):
            engine.run(Job("j").map(columns=["day", "v"]), str(src), out, partition_by="day",
                       mode="overwrite-partitions")
    finally:
        done.set()
        t.join()


def test_rows_of_many_partitions_are_written_in_few_row_groups(tmp_path):
    """Batches spread over many partitions are gathered per partition before they are written: a file
    gets row groups of a useful size, not one sliver per input batch."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(2)
    pq.write_table(pa.table({"k": rng.integers(0, 50, 200_000), "x": rng.random(200_000)}), src / "a.parquet",
                   row_group_size=20_000)
    out = str(tmp_path / "out")
    with dask.config.set({"engine.batch-rows": 20_000}):
        engine.run(Job("copy").map(columns=["k", "x"]), str(src), out, partition_by="k")
    manifest = commit.load_manifest(*engine.datasets.filesystem(out))
    groups = [pq.ParquetFile(manifest.path_of(f)).metadata.num_row_groups for f in manifest.files]
    assert len(groups) == 50 and max(groups) == 1, groups
    assert engine.read(out).num_rows == 200_000


@pytest.mark.parametrize("where", ["hour = 1", "hour = '1'", "HOUR = 1", "hour in ('1', 2) and hour < 2"])
def test_where_text_prunes_typed_hive_partitions_before_listing_them(tmp_path, where):
    """Quoted numbers and names in another case prune integer Hive partitions too, so a new hour's files
    are neither read nor part of the snapshot: the rerun is a no-op."""
    src = tmp_path / "in"
    for h in range(3):
        (src / f"hour={h}").mkdir(parents=True)
        pq.write_table(pa.table({"v": [1, 2, 3]}), src / f"hour={h}" / "x.parquet")
    out = str(tmp_path / "out")
    job = Job("h").reduce(by="hour", aggs={"n": agg.count()})
    first = engine.run(job, str(src), out, where=where)
    assert first.report.input_files == 1 and engine.read(out).to_pylist() == [{"hour": 1, "n": 3}]
    (src / "hour=7").mkdir()
    pq.write_table(pa.table({"v": [1]}), src / "hour=7" / "x.parquet")
    assert engine.run(job, str(src), out, where=where).skipped


def test_s3_cleanup_aborts_only_this_outputs_own_pending_uploads(s3, tmp_path):
    """A run's cleanup aborts pending uploads of dead runs of its own output, never those of runs staged
    or canaried below it (``_``-prefixed directories), which are live runs of other outputs."""
    fs, url = s3["fs"], s3["url"]
    out = url(f"cleanup-{time.time_ns()}")
    name = "part-00000-0123456789abcdef-a0-89abcdef.parquet"
    keys = {"staged": f"{out[5:]}/_backfill/2026-11-01/day=a/{name}", "dead": f"{out[5:]}/day=a/{name}"}
    ids = {}
    for what, key in keys.items():
        bucket, _, k = key.partition("/")
        ids[what] = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=k)["UploadId"]
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"day": ["a"], "v": [1]}), src / "t.parquet")
    engine.run(Job("j").map(columns=["day", "v"]), str(src), out, storage_options=s3["storage_options"],
               partition_by="day")
    bucket = s3["bucket"]
    pending = {u["UploadId"] for u in fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])}
    assert ids["staged"] in pending and ids["dead"] not in pending


def test_a_where_on_partition_columns_only_is_applied_by_pruning_alone(tmp_path):
    """When pruning the Hive partitions already applied the where exactly, the job runs as written (no
    filter step: same fingerprint as without the where); a where that also names file columns filters."""
    src = tmp_path / "in"
    for h in range(3):
        (src / f"hour={h}").mkdir(parents=True)
        pq.write_table(pa.table({"v": [1, 2, 3]}), src / f"hour={h}" / "x.parquet")
    job = Job("h").reduce(by="hour", aggs={"n": agg.count()})
    plain = engine.run(job, str(src), str(tmp_path / "plain"))
    pruned = engine.run(job, str(src), str(tmp_path / "pruned"), where="hour >= 1")
    mixed = engine.run(job, str(src), str(tmp_path / "mixed"), where="hour >= 1 and v > 1")
    fp = {name: commit.load_manifest(*engine.datasets.filesystem(str(tmp_path / name))).doc["fingerprint"]
          for name in ("plain", "pruned", "mixed")}
    assert fp["pruned"] == fp["plain"] != fp["mixed"]
    assert pruned.report.input_files == 2
    assert engine.read(str(tmp_path / "pruned")).sort_by("hour").to_pylist() == [{"hour": 1, "n": 3}, {"hour": 2, "n": 3}]
    assert engine.read(str(tmp_path / "mixed")).sort_by("hour").to_pylist() == [{"hour": 1, "n": 2}, {"hour": 2, "n": 2}]
    assert plain.report.input_files == 3
