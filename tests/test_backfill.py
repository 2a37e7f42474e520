"""Backfills (``engine.backfill``, ``mapreduce backfill``): one run per logical date over a generated
Hive input ``in/date=YYYY-MM-DD/part.parquet``, checked against DuckDB over the same files.

Real files and real processes: the command runs as a subprocess, killed with SIGKILL at random
moments; two backfills race over one output; a job fails on a chosen logical date.
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import commit
from engine.backfill import BackfillResult, backfill
from engine.cli import load_job
from engine.errors import ConcurrentRunError

ROOT = Path(__file__).resolve().parents[1]
FIRST = dt.date(2026, 11, 1)
WHERE = "date = '{date}'"
TIMEOUT = 180

JOB = '''\
"""Per day and region: how many events and their total amount (the backfill tests' job)."""
import os
import time

import engine
from engine import Job, agg

FAIL_ON = os.environ.get("BACKFILL_FAIL_ON")             # a logical date whose run fails
SLEEP = float(os.environ.get("BACKFILL_SLEEP") or 0)     # seconds each map call takes
SCALE = {scale}


def check(t):
    day = engine.logical_date()
    if FAIL_ON and day is not None and day.isoformat() == FAIL_ON:
        raise ValueError(f"no data may be processed for {{day}}")
    if SLEEP:
        time.sleep(SLEEP)
    return t.set_column(t.schema.get_field_index("amount"), "amount", engine_scale(t["amount"]))


def engine_scale(col):
    import pyarrow.compute as pc
    return pc.multiply(col, SCALE)


job = (Job("daily").map(check)
       .reduce(by=["date", "region"], aggs={{"n": agg.count(), "amount": agg.sum("amount")}}))
'''


def day(i: int) -> str:
    return (FIRST + dt.timedelta(days=i)).isoformat()


def write_day(root: Path, d: str, seed: int, rows: int = 40) -> None:
    rng = np.random.default_rng(seed)
    folder = root / f"date={d}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"region": rng.choice(["eu", "us", "asia", "af"], rows),
                      "amount": rng.integers(0, 1000, rows, dtype=np.int64)})
    pq.write_table(table, folder / "part.parquet")


def make_input(root: Path, days: int, seed: int = 0) -> list[str]:
    dates = [day(i) for i in range(days)]
    for i, d in enumerate(dates):
        write_day(root, d, seed * 1000 + i)
    return dates


def job_file(folder: Path, scale: int = 1) -> Path:
    path = folder / f"daily_x{scale}.py"
    path.write_text(JOB.format(scale=scale))
    return path


def reference(inp: Path, scale: int = 1) -> dict[str, list[tuple]]:
    """Per date, the job's rows from DuckDB over the input files: sorted (region, n, amount)."""
    rows = duckdb.sql(f"""
        SELECT CAST(date AS VARCHAR) AS date, region, count(*) AS n, sum(amount) * {scale} AS amount
        FROM read_parquet('{inp}/*/*.parquet', hive_partitioning = true, hive_types_autocast = false)
        GROUP BY ALL""").fetchall()
    out: dict[str, list[tuple]] = collections.defaultdict(list)
    for d, region, n, amount in rows:
        out[d].append((region, int(n), int(amount)))
    return {d: sorted(v) for d, v in out.items()}


def by_date(table: pa.Table) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = collections.defaultdict(list)
    for r in table.to_pylist():
        out[r["date"]].append((r["region"], r["n"], r["amount"]))
    return {d: sorted(v) for d, v in out.items()}


def manifest(out: Path) -> commit.Manifest:
    m = commit.load_manifest(*engine.datasets.filesystem(str(out)))
    assert m is not None, f"nothing committed at {out}"
    return m


def partition_files(out: Path) -> dict[str, dict[str, int]]:
    """Per committed partition: its files (manifest paths) and their modification times (ns)."""
    got: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for f in manifest(out).files:
        got[commit.partition_of(f["path"])][f["path"]] = os.stat(out / f["path"]).st_mtime_ns
    return dict(got)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def backfill_cmd(job: Path, inp: Path, out: Path, first: str, last: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "backfill", str(job), "--input", str(inp), "--output", str(out),
            "--from", first, "--to", last, "--partition-by", "date", "--where", WHERE, *extra]


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(**env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def daily(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKFILL_FAIL_ON", raising=False)
    monkeypatch.delenv("BACKFILL_SLEEP", raising=False)
    return load_job(str(job_file(tmp_path)))


# ---------------------------------------------------------------------------------------------
# Incremental: only the changed dates are rewritten


def test_thirty_days_then_three_changed_rewrites_exactly_those(tmp_path, daily):
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 30)
    first = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE)
    assert first.exit_code == 0 and first.counts()["committed"] == 30, first
    assert by_date(engine.read(str(out))) == reference(inp)
    before_files, before = partition_files(out), manifest(out).doc
    assert sorted(before_files) == [f"date={d}" for d in dates]
    assert before["generation"] == 30 and sorted(before["dates"]) == dates

    time.sleep(0.01)                 # mtimes of rewritten files must differ from the first ones
    changed = [dates[4], dates[17], dates[29]]
    for i, d in enumerate(changed):
        write_day(inp, d, seed=9000 + i, rows=25)
    again = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by=["date"], where=WHERE)
    print(again)
    assert again.exit_code == 0, again
    assert [d.date for d in again.dates if d.status == "committed"] == changed
    assert again.counts()["skipped"] == 27
    after_files, after = partition_files(out), manifest(out).doc
    for d in dates:
        p = f"date={d}"
        if d in changed:
            # new files (names carry the new run id), a new generation and run in the provenance
            assert not set(after_files[p]) & set(before_files[p]), p
            assert after["partitions"][p]["generation"] > before["generation"]
            assert after["partitions"][p]["run_id"] != before["partitions"][p]["run_id"]
            assert after["partitions"][p]["run_id"] == again[d].run_id
            assert after["dates"][d]["input_digest"] != before["dates"][d]["input_digest"]
        else:
            assert after_files[p] == before_files[p], p              # same files, same mtimes
            assert after["partitions"][p] == before["partitions"][p], p
            assert after["dates"][d] == before["dates"][d], p
    assert after["generation"] == before["generation"] + 3
    assert by_date(engine.read(str(out))) == reference(inp)
    engine.verify(str(out))

    # A rerun with nothing changed touches nothing and costs little per date.
    third = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE)
    assert third.counts()["skipped"] == 30 and manifest(out).generation == after["generation"]
    per_date = sorted(d.seconds for d in third.dates)
    print(f"skipped date: median {per_date[15] * 1000:.1f} ms, max {per_date[-1] * 1000:.1f} ms; "
          f"30 skipped dates in {third.seconds:.2f}s")
    assert per_date[15] < 0.25, per_date
    text = str(third)
    assert "30 skipped" in text and dates[0] in text and dates[-1] in text
    assert third.to_dict()["dates"][0]["status"] == "skipped"
    assert "<table>" in third._repr_html_()


def test_explain_shows_each_partitions_provenance(tmp_path, daily):
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 45)
    res = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE)
    proc = subprocess.run([sys.executable, "-m", "engine", "explain", str(out)], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    print(text)
    doc = manifest(out).doc
    assert "partitioned by date: 45 partition(s), generation 45" in text
    assert "more partition(s)" in text                                   # 20 first, 20 last of 45
    for i in list(range(20)) + list(range(25, 45)):
        rec = doc["partitions"][f"date={dates[i]}"]
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"date={dates[i]} "))
        for value in (dates[i], res[dates[i]].run_id[:12], rec["fingerprint"], rec["input_digest"],
                      rec["engine_version"], rec["committed_at"][:19].replace("T", " ")):
            assert value in line, (value, line)
        assert line.split()[-1] == str(rec["generation"])
    assert f"date={dates[22]} " not in text


# ---------------------------------------------------------------------------------------------
# Kills, resume, signals


def check_each_partition(out: Path, acceptable: list[dict[str, list[tuple]]]) -> collections.Counter:
    """Every committed partition equals one acceptable version of its date, whole; the output verifies."""
    engine.verify(str(out))
    got = by_date(engine.read(str(out)))
    m = manifest(out)
    seen: collections.Counter = collections.Counter()
    for d, rows in got.items():
        versions = [i for i, ref in enumerate(acceptable) if ref.get(d) == rows]
        assert versions, f"partition date={d} is no complete version of that date: {rows}"
        seen[versions[0]] += 1
        run = m.doc["partitions"][f"date={d}"]["run_id"]
        assert all(run[:16] in f["path"] for f in m.files if commit.partition_of(f["path"]) == f"date={d}")
    return seen


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_finishes(tmp_path, daily):
    """The driver (``mapreduce backfill``) is SIGKILLed at random moments, at least 10 times: after every
    kill each partition is its old or its new complete version and the output verifies; a last run
    finishes the rest."""
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 12)
    backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE)
    old = reference(inp)
    assert by_date(engine.read(str(out))) == old
    for i, d in enumerate(dates):                            # every date changes: each is rewritten
        write_day(inp, d, seed=5000 + i, rows=30)
    new = reference(inp)
    assert all(old[d] != new[d] for d in dates)
    job = job_file(tmp_path)
    # each date: map calls that take 0.2 s, a commit whose four steps take 0.15 s each (wider windows)
    env = {"BACKFILL_SLEEP": "0.2", "ENGINE_FAULTS": json.dumps({"commit_delay": 0.15})}
    rng = random.Random(20261201)
    outcomes: collections.Counter = collections.Counter()
    kills = 0
    t0 = time.time()
    while kills < 12:
        # every fourth launch runs two dates at once (staged, then published)
        extra = ("--parallel", "2") if kills % 4 == 2 else ()
        proc = start(backfill_cmd(job, inp, out, dates[0], dates[-1], "-q", *extra), tmp_path, **env)
        steps: list[str] = []
        if kills % 2 == 0:
            time.sleep(rng.uniform(0.4, 2.6))          # any moment: start-up, skipping, a map, a commit
        else:
            # a moment within the next date's commit: after its first step, before or just after its manifest
            line = proc.stdout.readline()
            if line.startswith("engine-fault: commit step"):
                steps.append(line.split()[-1])
            time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            assert proc.returncode == 0, stderr
            outcomes["finished before the kill"] += 1
            break
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=60)
        kills += 1
        steps += [ln.split()[-1] for ln in stdout.splitlines() if ln.startswith("engine-fault: commit step")]
        outcomes[("parallel: " if extra else "") + (f"killed after commit step {steps[-1]}" if steps
                                                    else "killed before any commit step")] += 1
        seen = check_each_partition(out, [old, new])
        assert sum(seen.values()) == len(dates)              # no partition ever disappears
        outcomes["new partitions after kills"] = seen[1]
    print(f"{kills} kills in {time.time() - t0:.1f}s:", dict(outcomes))
    assert kills >= 10, outcomes
    # killed between a date's first commit step and its manifest (its files published, not yet listed)
    unlisted = ("before-publish", "publish", "before-manifest")
    mid_commit = sum(n for k, n in outcomes.items() if not k.startswith("parallel") and k.split()[-1] in unlisted)
    assert mid_commit >= 3, outcomes
    final = subprocess.run(backfill_cmd(job, inp, out, dates[0], dates[-1], "--json"), cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["counts"]["failed"] == 0 and summary["exit_code"] == 0
    assert by_date(engine.read(str(out))) == new
    engine.verify(str(out))
    m = manifest(out)
    assert sorted(m.doc["dates"]) == dates
    # nothing of the killed runs is left: the files on disk are the manifest's
    on_disk = {str(Path(p).relative_to(out)) for p in glob.glob(str(out / "date=*" / "*"))}
    assert on_disk == {f["path"] for f in m.files}
    assert not (out / "_temporary").exists() or not any((out / "_temporary").iterdir())
    assert sorted(os.listdir(out / "_backfill")) == ["_lock"]          # no staging of a killed parallel launch


def test_killed_date_resumes_its_finished_tasks(tmp_path, daily):
    """A kill while a date's reduce runs (its map task journaled): the same command again reuses the map."""
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 3)
    job = job_file(tmp_path)
    faults = json.dumps({"slow_first_attempt": [["reduce", 0, 60]]})
    proc = start(backfill_cmd(job, inp, out, dates[0], dates[-1]), tmp_path, ENGINE_FAULTS=faults)
    deadline = time.time() + 60
    while not glob.glob(str(out / "_temporary" / "*" / "journal" / "*map*" / "*.json")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    again = subprocess.run(backfill_cmd(job, inp, out, dates[0], dates[-1], "--json"), cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    first = summary["dates"][0]
    assert first["status"] == "committed" and first["resumed"] >= 1, summary
    assert by_date(engine.read(str(out))) == reference(inp)


def test_sigterm_prints_what_finished_and_exits_143(tmp_path, daily):
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 10)
    job = job_file(tmp_path)
    proc = start(backfill_cmd(job, inp, out, dates[0], dates[-1]), tmp_path, BACKFILL_SLEEP="0.3")
    line = proc.stderr.readline()                   # the first finished date
    assert line.startswith(f"{dates[0]}: committed"), line + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated" in stdout and f"{dates[0]}  committed" in stdout, stdout
    assert "not run" in stdout and "run the same command again" in stdout
    committed = [d for d in dates if f"{d}  committed" in stdout]
    interrupted = [d for d in dates if f"{d}  interrupted" in stdout]
    # the date the signal interrupted is either committed whole or not at all
    assert set(committed) <= set(manifest(out).doc["dates"]) <= set(committed + interrupted)
    check_each_partition(out, [reference(inp)])


# ---------------------------------------------------------------------------------------------
# Two backfills over one output


def test_overlapping_backfills_refuse_or_wait_never_mix(tmp_path, daily):
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 6)
    job_a, job_b = job_file(tmp_path, 1), job_file(tmp_path, 10)
    ref_a, ref_b = reference(inp, 1), reference(inp, 10)
    a = start(backfill_cmd(job_a, inp, out, dates[0], dates[-1], "--json"), tmp_path, BACKFILL_SLEEP="0.15")
    holder = out / "_backfill" / "_holder.json"
    deadline = time.time() + 60
    while not holder.exists():
        assert a.poll() is None and time.time() < deadline, a.communicate()
        time.sleep(0.02)
    # a second backfill without --wait refuses at once, naming the one that runs
    t = time.time()
    c = subprocess.run(backfill_cmd(job_b, inp, out, dates[0], dates[-1]), cwd=tmp_path, env=cli_env(),
                       capture_output=True, text=True, timeout=TIMEOUT)
    refused_in = time.time() - t
    assert c.returncode == 1, c.stderr
    assert "ConcurrentRunError" in c.stderr and "another backfill is running" in c.stderr, c.stderr
    assert f"pid {a.pid}" in c.stderr and f"{dates[0]} .. {dates[-1]}" in c.stderr, c.stderr
    # with --wait it waits for the first one, then runs every date (another job: all recomputed)
    b = start(backfill_cmd(job_b, inp, out, dates[0], dates[-1], "--json", "--wait", "120"), tmp_path,
              BACKFILL_SLEEP="0.05")
    samples: collections.Counter = collections.Counter()
    while a.poll() is None or b.poll() is None:
        try:
            seen = check_each_partition(out, [ref_a, ref_b])
        except (engine.IntegrityError, FileNotFoundError) as exc:
            # nothing committed yet, or the files read were replaced by a newer generation meanwhile
            samples["absent" if "no committed output" in str(exc) or not (out / "_SUCCESS").exists()
                    else f"read failed: {type(exc).__name__}"] += 1
        else:
            samples["both" if seen[0] and seen[1] else "one"] += 1
        time.sleep(0.05)
    out_a, out_b = a.communicate(), b.communicate()
    assert a.returncode == 0 and b.returncode == 0, (out_a[1], out_b[1])
    sa, sb = json.loads(out_a[0]), json.loads(out_b[0])
    assert sa["counts"]["committed"] == 6 and sb["counts"]["committed"] == 6
    assert "waiting up to 120s" in out_b[1]
    assert by_date(engine.read(str(out))) == ref_b
    engine.verify(str(out))
    print(f"refused in {refused_in:.2f}s; samples while both ran: {dict(samples)}")
    assert samples["one"] + samples["both"] >= 5, samples


def test_backfill_lock_in_process(tmp_path, daily):
    """The API: a second backfill over the output refuses while the lock is held, or waits with wait=."""
    from engine.backfill import backfill_lock
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 2)
    fs, root = engine.datasets.filesystem(str(out))
    with backfill_lock(fs, root, what="dates x .. y"):
        with pytest.raises(ConcurrentRunError, match="another backfill is running"):
            backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE)
        t = time.time()
        with pytest.raises(ConcurrentRunError, match=r"waited 0\.6s"):
            backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE, wait=0.6)
        assert time.time() - t >= 0.6
    assert backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE).ok


# ---------------------------------------------------------------------------------------------
# Failures


def test_a_failing_date_shows_in_the_table_and_exit_code(tmp_path, daily, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 5)
    job = job_file(tmp_path)
    bad = dates[2]
    last = (dt.date.fromisoformat(dates[-1]) + dt.timedelta(days=1)).isoformat()   # no input: 0 rows, not a failure
    proc = subprocess.run(backfill_cmd(job, inp, out, dates[0], last), cwd=tmp_path,
                          env=cli_env(BACKFILL_FAIL_ON=bad), capture_output=True, text=True, timeout=TIMEOUT)
    print(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines() if ln[:4].isdigit()}
    assert rows[bad][1] == "failed" and f"no data may be processed for {bad}" in proc.stdout
    assert "5 committed, 0 skipped, 1 failed" in proc.stdout.splitlines()[0]
    ref = reference(inp)
    got = by_date(engine.read(str(out)))
    assert got == {d: ref[d] for d in dates if d != bad}
    assert sorted(manifest(out).doc["dates"]) == [d for d in dates + [last] if d != bad]
    assert rows[last][1:4] == ["committed", "0", "0"]          # the date without input: nothing to write

    # fail_fast: the dates after the failure are not run; the API's result says the same
    monkeypatch.setenv("BACKFILL_FAIL_ON", dates[1])
    (tmp_path / "failing").mkdir()
    failing = load_job(str(job_file(tmp_path / "failing")))
    res = backfill(failing, str(inp), str(tmp_path / "out2"), dates[0], dates[-1], partition_by="date", where=WHERE,
                   fail_fast=True)
    assert [d.status for d in res.dates] == ["committed", "failed", "not run", "not run", "not run"]
    assert res.exit_code == 1 and "ValueError" in res[dates[1]].error
    assert isinstance(res, BackfillResult) and res.to_dict()["counts"]["not run"] == 3


# ---------------------------------------------------------------------------------------------
# Parallel dates


def test_parallel_dates_stage_and_publish(tmp_path, daily):
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 12)
    res = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE, parallel=3)
    print(res)
    assert res.exit_code == 0 and res.counts()["committed"] == 12, res
    assert by_date(engine.read(str(out))) == reference(inp)
    engine.verify(str(out))
    m = manifest(out).doc
    assert sorted(m["dates"]) == dates and m["generation"] == 12
    assert [p for p in os.listdir(out / "_backfill") if not p.startswith("_")] == []     # staging removed
    again = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE, parallel=3)
    assert again.counts()["skipped"] == 12


def test_parallel_rewrites_changed_dates(tmp_path, daily):
    pytest.importorskip("engine.diff")          # a staged run compares with the live partitions it replaces
    inp, out = tmp_path / "in", tmp_path / "out"
    dates = make_input(inp, 8)
    backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE, parallel=2)
    before = partition_files(out)
    for i, d in enumerate(dates[1::3]):
        write_day(inp, d, seed=7000 + i)
    res = backfill(daily, str(inp), str(out), dates[0], dates[-1], partition_by="date", where=WHERE, parallel=2)
    assert [d.date for d in res.dates if d.status == "committed"] == dates[1::3], res
    after = partition_files(out)
    assert all(after[f"date={d}"] == before[f"date={d}"] for d in dates if d not in dates[1::3])
    assert by_date(engine.read(str(out))) == reference(inp)


# ---------------------------------------------------------------------------------------------
# Object store


def test_backfill_into_s3_with_its_lease(tmp_path, daily, s3):
    """On S3 the backfill lock is a lease object (``OUT/_backfill/_lock``): a second backfill refuses while
    it is held; sequential and parallel dates commit, changed dates are rewritten, the rest skipped."""
    from engine.backfill import backfill_lock
    inp = tmp_path / "in"
    dates = make_input(inp, 4)
    out, opts = s3["url"]("backfill", "out"), s3["storage_options"]
    res = backfill(daily, str(inp), out, dates[0], dates[-1], partition_by="date", where=WHERE,
                   storage_options=opts)
    assert res.counts()["committed"] == 4, res
    write_day(inp, dates[2], seed=4242)
    fs, root = engine.datasets.filesystem(out, opts)
    with backfill_lock(fs, root, what="another"):
        assert fs.exists(f"{root}/_backfill/_lock")
        with pytest.raises(ConcurrentRunError, match="another backfill is running"):
            backfill(daily, str(inp), out, dates[0], dates[-1], partition_by="date", where=WHERE,
                     storage_options=opts)
    again = backfill(daily, str(inp), out, dates[0], dates[-1], partition_by="date", where=WHERE,
                     storage_options=opts, parallel=2)
    assert [d.date for d in again.dates if d.status == "committed"] == [dates[2]], again
    assert by_date(engine.read(out, opts)) == reference(inp)
    engine.verify(out, opts)
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/_backfill/_lock") and not fs.exists(f"{root}/_backfill/{dates[2]}")
