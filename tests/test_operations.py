"""Every run leaves a record, whatever its end (issue 13): committed, skipped, failed, interrupted
(SIGTERM and SIGINT of a real ``mapreduce run``), refused, and ``running`` while it runs (with its
newest checkpoint; a driver killed with SIGKILL shows as ``lost``). A failure names the user's file
and line in the record, ``mapreduce show`` and the HTML report; ``--json`` gives schedulers the
record on success and on failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg, history
from engine.errors import OutputExistsError, StageFailedError

TIMEOUT = 120


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["ENGINE_HISTORY"] = str(tmp_path / "history.sqlite")
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def _records(env: dict[str, str], job: str) -> list[dict]:
    store = history.open_store(env["ENGINE_HISTORY"])
    return store.records(job=job, newest_first=False)


def _inputs(directory: Path, n: int = 2, rows: int = 5000) -> pa.Table:
    directory.mkdir(parents=True, exist_ok=True)
    tables = []
    for i in range(n):
        t = pa.table({"k": pa.array([(j * 7 + i) % 40 for j in range(rows)], pa.int64()),
                      "v": pa.array(list(range(rows)), pa.int64()), "f": pa.array([f"p{i}"] * rows)})
        pq.write_table(t, directory / f"p{i}.parquet")
        tables.append(t)
    return pa.concat_tables(tables)


def _expected(t: pa.Table) -> dict:
    g = t.group_by("k").aggregate([("v", "count"), ("v", "sum")])
    return {r["k"]: (r["v_count"], r["v_sum"]) for r in g.to_pylist()}


def _got(out: Path) -> dict:
    return {r["k"]: (r["n"], r["s"]) for r in engine.read(str(out)).to_pylist()}


# A job whose map over p1 waits (while SLOW=1) after saying so, and whose map over p0 is quick (the
# driver's check of the map on a sample reads p0).
SLOW_JOB = """
import os, pathlib, time
from engine import Job, agg

MARKS = pathlib.Path({marks!r})

def step(t):
    part = t["f"][0].as_py()
    if part == "p1" and os.environ.get("SLOW") == "1":
        (MARKS / "slow-started").touch()
        time.sleep(60)
    (MARKS / f"done-{{part}}").touch()
    return t

job = Job("opsjob").map(step).reduce(by="k", aggs={{"n": agg.count(), "s": agg.sum("v")}})
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_is_recorded_interrupted_and_a_resumed_rerun_reuses_its_finished_tasks(tmp_path, sig):
    data = _inputs(tmp_path / "in")
    marks = tmp_path / "marks"
    marks.mkdir()
    job_file = tmp_path / "opsjob.py"
    job_file.write_text(SLOW_JOB.format(marks=str(marks)))
    out = tmp_path / "out"
    # the driver's two threads (a small input runs in the driver): p0 finishes (and is journaled) while p1
    # waits (the same path on the embedded cluster is test_cli's SIGTERM test)
    env = _env(tmp_path, SLOW="1", DASK_ENGINE__CLUSTER__WORKERS="2", DASK_ENGINE__CLUSTER__THREADS="1",
               DASK_ENGINE__HISTORY__HEARTBEAT="0.2")
    cmd = [sys.executable, "-m", "engine", "run", str(job_file), "-i", str(tmp_path / "in"), "-o", str(out),
           "--no-speculation"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not ((marks / "slow-started").exists() and (marks / "done-p0").exists()) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    # while it runs: a `running` record whose heartbeat carries the newest checkpoint (p0's result)
    running = None
    while time.time() < deadline:
        (running,) = _records(env, "opsjob")
        if running["checkpoint_at"]:
            break
        time.sleep(0.1)
    assert running["status"] == "running" and running["pid"] == proc.pid and running["checkpoint_at"] > running["started"]
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"), stderr
    (rec,) = _records(env, "opsjob")
    assert rec["status"] == "interrupted" and rec["finished"] >= rec["started"], rec
    assert rec["error_type"] == ("Terminated" if sig == signal.SIGTERM else "KeyboardInterrupt")
    report = json.loads(rec["report"])
    finished = [t for t in report["tasks"] if t["status"] == "ok"]
    assert [t["partition"] for t in finished if t["stage"].endswith("map")] == [0], report["tasks"]
    assert not (out / "_SUCCESS").exists()

    # the same command with --resume reuses p0's map result and commits the right answer
    env["SLOW"] = "0"
    done = subprocess.run(cmd + ["--resume", "--json", "-q"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "committed" and doc["resumed"] >= 1 and doc["run_id"] == rec["run_id"], doc
    assert _got(out) == _expected(data)
    assert [r["status"] for r in _records(env, "opsjob")] == ["interrupted", "committed"]


def test_a_killed_driver_leaves_a_running_record_shown_as_lost(tmp_path):
    _inputs(tmp_path / "in")
    marks = tmp_path / "marks"
    marks.mkdir()
    job_file = tmp_path / "opsjob.py"
    job_file.write_text(SLOW_JOB.format(marks=str(marks)))
    env = _env(tmp_path, SLOW="1", DASK_ENGINE__LOCAL__MAX_BYTES="0", DASK_ENGINE__CLUSTER__THREADS="2")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(job_file), "-i", str(tmp_path / "in"), "-o",
                             str(tmp_path / "out"), "--workers", "1"], env=env, cwd=tmp_path,     # (its workers too)
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + TIMEOUT
    while not (marks / "slow-started").exists() and time.time() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)          # the driver and its workers, with no chance to write anything
    proc.wait(timeout=TIMEOUT)
    (rec,) = _records(env, "opsjob")
    assert rec["status"] == "running" and history.shown_status(rec) == "lost"
    shown = _cli("history", "--json", env=env, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["runs"][0]["status"] == "lost"


FAILING_JOB = """
import pyarrow.compute as pc
from engine import Job, agg


def parse(t):
    if pc.any(pc.equal(t["f"], "p1")).as_py():
        raise ValueError("cannot parse this part")
    return t

job = Job("failjob").map(parse).reduce(by="k", aggs={"n": agg.count()})
"""


def test_a_failed_run_names_the_users_file_and_line_everywhere(tmp_path):
    _inputs(tmp_path / "in")
    job_file = tmp_path / "failjob.py"
    job_file.write_text(FAILING_JOB)
    line = FAILING_JOB.splitlines().index('        raise ValueError("cannot parse this part")') + 1
    env = _env(tmp_path, DASK_ENGINE__RETRIES__BACKOFF_BASE="0.01")
    html = tmp_path / "report.html"
    proc = _cli("run", job_file, "-i", tmp_path / "in", "-o", tmp_path / "out", "--report", html, "--json", "-q",
                env=env, cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)                 # a scheduler gets the failed run's record on stdout
    where = f"{job_file}:{line}"
    assert doc["status"] == "failed" and doc["error_type"] == "StageFailedError" and doc["error_location"] == where
    # the same error twice in a row is deterministic: one retry, not two
    assert doc["task_failures"] == 2 and doc["retries"] == 1 and doc["failed_tasks"] == 1
    assert "cannot parse this part" in doc["report"]["error"]["user_traceback"]
    assert [r["location"] for r in doc["report"]["retries"]] == [where]      # each retry's too
    page = html.read_text()                        # --report is written on failure too
    assert "failjob.py" in page and "cannot parse this part" in page
    shown = _cli("show", doc["run_id"][:8], env=env, cwd=tmp_path)
    assert shown.returncode == 0
    assert f"raised at {where}: raise ValueError(\"cannot parse this part\")" in shown.stdout, shown.stdout
    listed = _cli("history", "--status", "failed", env=env, cwd=tmp_path)
    assert f"at {where}" in listed.stdout, listed.stdout


def test_the_same_failure_on_a_cluster_names_the_file_too(tmp_path, dask_cluster):
    import importlib.util
    _inputs(tmp_path / "in")
    job_file = tmp_path / "failjob_cluster.py"
    job_file.write_text(FAILING_JOB)
    line = FAILING_JOB.splitlines().index('        raise ValueError("cannot parse this part")') + 1
    spec = importlib.util.spec_from_file_location("failjob_cluster", job_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(StageFailedError) as caught:
        engine.run(module.job, str(tmp_path / "in"), str(tmp_path / "out"), cluster=dask_cluster, speculation=False)
    rec = caught.value.run_record
    assert rec["status"] == "failed" and rec["error_location"] == f"{job_file}:{line}", rec["error_location"]
    assert history.open_store().get(rec["record_id"])["error_location"] == f"{job_file}:{line}"


def test_every_end_is_recorded_committed_skipped_refused(tmp_path):
    data = _inputs(tmp_path / "in")
    job = Job("endsjob").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})
    out = str(tmp_path / "out")
    first = engine.run(job, str(tmp_path / "in"), out)
    assert first.record["status"] == "committed" and first.record["output_rows"] == len(_expected(data))
    again = engine.run(job, str(tmp_path / "in"), out)
    assert again.skipped and again.record["status"] == "skipped"
    with pytest.raises(OutputExistsError) as caught:
        engine.run(job, str(tmp_path / "in"), out, force=True)
    assert caught.value.run_record["status"] == "refused"
    with pytest.raises(Exception):
        engine.run(job, str(tmp_path / "no-such-input"), str(tmp_path / "out2"))
    recs = history.open_store().records(job="endsjob", newest_first=False)
    assert [r["status"] for r in recs] == ["committed", "skipped", "refused", "failed"]
    assert recs[-1]["error_type"] in ("EmptyInputError", "InputError")
    assert all(r["finished"] >= r["started"] and r["host"] and r["pid"] == os.getpid() for r in recs)
    c = recs[0]
    assert c["input_rows"] == data.num_rows and c["input_files"] == 2 and c["output_bytes"] > 0
    assert c["cpu_seconds"] > 0 and c["thread_seconds"] > 0 and c["checkpoint_at"] <= c["finished"]
    rep = json.loads(c["report"])
    assert rep["versions"]["engine"] and rep["settings"]["arguments"]["mode"] == "error"


def test_sigterm_in_a_plain_script_is_recorded(tmp_path):
    """A script (no CLI) that an orchestrator stops with SIGTERM: the run unwinds and is recorded."""
    _inputs(tmp_path / "in")
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "pipeline.py"
    script.write_text(
        "import pathlib, time, engine\nfrom engine import Job, agg\n"
        f"MARKS = pathlib.Path({str(marks)!r})\n"
        "def slow(t):\n    (MARKS / 'started').touch()\n    time.sleep(60)\n    return t\n"
        "if __name__ == '__main__':\n"
        "    job = Job('scriptjob').map(slow).reduce(by='k', aggs={'n': agg.count()})\n"
        f"    engine.run(job, {str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r})\n")
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not (marks / "started").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    (rec,) = _records(env, "scriptjob")
    assert rec["status"] == "interrupted" and rec["error_type"] == "Terminated"


def test_a_run_after_its_deadline_is_recorded_as_a_miss(tmp_path):
    _inputs(tmp_path / "in")
    job = Job("deadlinejob", slo={"deadline": "06:00", "timezone": "Europe/Paris", "success_rate": 0.99})
    job = job.reduce(by="k", aggs={"n": agg.count()})
    late = engine.run(job, str(tmp_path / "in"), str(tmp_path / "late"), date="2020-01-01")
    # due 2020-01-02 06:00 in Paris; this run ends years later
    assert late.record["deadline_missed"] == 1
    early = engine.run(job, str(tmp_path / "in"), str(tmp_path / "early"), date="2999-12-30")
    assert early.record["deadline_missed"] == 0
    plain = engine.run(Job("nodeadline").reduce(by="k", aggs={"n": agg.count()}), str(tmp_path / "in"),
                       str(tmp_path / "plain"))
    assert plain.record["deadline_missed"] is None
    stored = history.open_store().get(late.record["record_id"])
    assert stored["deadline_missed"] == 1 and json.loads(stored["slo"])["deadline"] == "06:00"


def test_backfill_records_each_date_and_exports_its_metrics(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    src = tmp_path / "events"
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        (src / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"k": [1, 2, 2], "v": [1, 2, 3]}), src / f"day={day}" / "part.parquet")
    job_file = tmp_path / "daily.py"
    job_file.write_text("from engine import Job, agg\n"
                        "job = Job('dailyops').reduce(by=['day', 'k'], aggs={'n': agg.count()})\n")
    env = _env(tmp_path)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    proc = _cli("backfill", job_file, "-i", src, "-o", tmp_path / "out", "--from", "2026-11-01", "--to", "2026-11-03",
                "--partition-by", "day", "--where", "day = '{date}'", "--metrics-file", metrics, "-q",
                env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    recs = _records(env, "dailyops")
    assert sorted(r["logical_date"] for r in recs) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert {r["status"] for r in recs} == {"committed"}
    text = (metrics / "mapreduce_dailyops.prom").read_text()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["mapreduce_last_success_timestamp_seconds"] == max(r["finished"] for r in recs)


def test_the_report_counts_map_spills_and_stage_quantiles(tmp_path):
    from engine import config
    data = _inputs(tmp_path / "in", rows=20_000)
    job = Job("spilljob").map(lambda t: t.select(["k", "v"])).reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})
    with config.dask_config().set({"engine.shuffle.spill-size": "64KiB", "engine.batch-rows": 2000}):
        result = engine.run(job, str(tmp_path / "in"), str(tmp_path / "out"))
    assert _got(tmp_path / "out") == _expected(data)
    maps = [t for t in result.report.tasks if t.stage.endswith("map") and t.status == "ok"]
    # 20,000 rows of two int64 columns per file, in 2,000-row batches: ~32 KiB each, so a spill every 2-3 batches
    assert len(maps) == 2 and all(4 <= t.spills <= 10 for t in maps), [t.spills for t in maps]
    (m,) = [m for m in result.report.stage_metrics() if m["stage"].endswith("map")]
    assert m["spills"] == sum(t.spills for t in maps)
    assert f"{m['spills']} spill(s)" in result.report.summary()


def test_a_job_file_that_cannot_load_is_a_recorded_failed_run(tmp_path):
    _inputs(tmp_path / "in")
    broken = tmp_path / "brokenjob.py"
    broken.write_text("import no_such_module_anywhere\n")
    env = _env(tmp_path)
    proc = _cli("run", broken, "-i", tmp_path / "in", "-o", tmp_path / "out", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "JobDefinitionError" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and doc["job"] == "brokenjob" and doc["error_type"] == "JobDefinitionError"
    assert doc["output"] == str(tmp_path / "out")
    (rec,) = _records(env, "brokenjob")
    assert rec["status"] == "failed" and rec["record_id"] == doc["record_id"]


def test_a_password_in_an_output_url_stays_out_of_records_and_json(tmp_path):
    _inputs(tmp_path / "in")
    job_file = tmp_path / "copyjob.py"
    job_file.write_text("from engine import Job, agg\njob = Job('pwjob').reduce(by='k', aggs={'n': agg.count()})\n")
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_EC2_METADATA_DISABLED="true")
    proc = _cli("run", job_file, "-i", tmp_path / "in", "-o", "s3://etl:s3cretPW42@bucket/out", "--json",
                env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "s3cretPW42" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    rows = _records(env, "pwjob")
    assert rows and "s3cretPW42" not in json.dumps(rows)


SAME_NAME_HELPER = """import os


def boom():
    x = {}
    return x["missing"]
"""

SAME_NAME_SCRIPT = """import json, os, sys


def boom():            # the script's own helper of the same name, spanning lines 4-6 (the helper raises at 6)
    print("unrelated")
    return 1


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine
import helpers_same_name
from engine import Job, agg


def step(t):
    if t["f"][0].as_py() == "p1":          # not the driver's check on a sample of p0
        helpers_same_name.boom()
    return t

job = Job("samename").map(step).reduce(by="k", aggs={"n": agg.count()})
if __name__ == "__main__":
    try:
        engine.run(job, sys.argv[1], sys.argv[2])
    except Exception as e:
        print(json.dumps({"location": e.run_record["error_location"]}))
"""


def test_two_functions_of_one_name_do_not_confuse_the_error_location(tmp_path):
    _inputs(tmp_path / "in")
    (tmp_path / "helpers_same_name.py").write_text(SAME_NAME_HELPER)
    script = tmp_path / "samename.py"
    script.write_text(SAME_NAME_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "in"), str(tmp_path / "out")],
                          env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    # the helper's line 6 raised (KeyError); the script's own boom() spans line 6 too and must not be named
    assert doc["location"] == f"{tmp_path / 'helpers_same_name.py'}:6", (doc, proc.stderr[-2000:])


def test_an_interrupted_parallel_backfill_leaves_no_running_record(tmp_path):
    src = tmp_path / "events"
    for day in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"):
        (src / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"k": [1, 2], "v": [1, 2]}), src / f"day={day}" / "part.parquet")
    marks = tmp_path / "marks"
    marks.mkdir()
    job_file = tmp_path / "slowdaily.py"
    job_file.write_text(
        "import pathlib, time, uuid\nfrom engine import Job, agg\n"
        f"MARKS = pathlib.Path({str(marks)!r})\n"
        "def slow(t):\n    (MARKS / uuid.uuid4().hex).touch()\n    time.sleep(60)\n    return t\n"
        "job = Job('slowdaily').map(slow).reduce(by=['day', 'k'], aggs={'n': agg.count()})\n")
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "backfill", str(job_file), "-i", str(src), "-o",
                             str(tmp_path / "out"), "--from", "2026-11-01", "--to", "2026-11-04", "--partition-by",
                             "day", "--where", "day = '{date}'", "--parallel", "2", "-q"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while len(list(marks.iterdir())) < 2 and time.time() < deadline:      # both dates' maps are running
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130
    recs = _records(env, "slowdaily")
    assert len(recs) == 2 and {r["status"] for r in recs} == {"interrupted"}, [(r["status"], r["logical_date"])
                                                                              for r in recs]
    assert all(r["output"] == str(tmp_path / "out") for r in recs)
