"""The retry policy that cannot storm and the resource guards (issue 14), on real clusters.

Failures are real exceptions raised by the job's own functions; marker files on this machine's disk
make them intermittent (the driver, the `dask worker` processes and the tests share it). Workers
matter for the deterministic-error rule, for placement and for concurrency, so those tests run on a
`dask scheduler` with two `dask worker` processes (one thread each); the run-wide accounting tests
(budgets, M10) run in the driver's thread pool, which applies the same executor.

Every failing run is checked to have committed nothing: no manifest (``_SUCCESS``) and no data file in
the output directory (only the engine's ``_temporary``/``_lock`` bookkeeping may remain).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg
from engine.errors import BudgetExceededError, StageFailedError
from engine.report import RunReport

ROOT = Path(engine.__file__).resolve().parents[1]
FAST_BACKOFF = {"engine.retries.backoff-base": 0.01, "engine.retries.backoff-max": 0.05}


# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two `dask worker` processes of one thread each; they import this checkout's engine."""
    from fixtures import cli_cluster
    with cli_cluster(tmp_path_factory.mktemp("guards-cluster"), 2, env={"PYTHONPATH": str(ROOT)}) as c:
        yield c.address


def write_input(directory: Path, files: int, rows: int = 100) -> pa.Table:
    """``files`` Parquet files of ``rows`` rows each (``v`` runs 0.. across files, so the rows of
    file ``i`` are ``v`` in ``[i*rows, (i+1)*rows)``); the whole table."""
    directory.mkdir(parents=True)
    parts = []
    for i in range(files):
        v = list(range(i * rows, (i + 1) * rows))
        t = pa.table({"k": [f"k{x % 7}" for x in v], "v": v})
        pq.write_table(t, directory / f"part-{i}.parquet")
        parts.append(t)
    return pa.concat_tables(parts)


def reference_counts(table: pa.Table) -> dict[str, int]:
    out = table.group_by("k").aggregate([("v", "count")])
    return dict(zip(out["k"].to_pylist(), out["v_count"].to_pylist()))


def committed(out: Path) -> pa.Table:
    doc = json.loads((out / "_SUCCESS").read_text())
    return pa.concat_tables([pq.read_table(out / f["path"]) for f in doc["files"]])


def committed_counts(out: Path) -> dict[str, int]:
    t = committed(out)
    return dict(zip(t["k"].to_pylist(), t["n"].to_pylist()))


def assert_nothing_committed(out: Path) -> None:
    assert not (out / "_SUCCESS").exists()
    stray = [p.name for p in out.iterdir() if p.name not in ("_temporary", "_lock")] if out.exists() else []
    assert stray == [], f"a failed run left {stray} in its output"


def failed_report(excinfo) -> RunReport:
    """The report of a run that raised (from the run record the engine attaches to the exception)."""
    return RunReport.from_dict(json.loads(excinfo.value.run_record["report"]))


def count_job(name: str, fn) -> Job:
    return Job(name).map(fn).reduce(by="k", aggs={"n": agg.count()})


def config(**extra):
    import dask.config
    return dask.config.set({**FAST_BACKOFF, **extra})


# ---------------------------------------------------------------------------------------------
# Deterministic user errors


def test_deterministic_user_error_stops_after_two_workers(cluster, tmp_path):
    """The same exception from the same input on two workers: one retry, then the stage fails."""
    write_input(tmp_path / "in", 4)

    def poisoned(t):
        if pc.max(t["v"]).as_py() >= 300:          # only file 3 (the driver's sample is file 0)
            raise ValueError("v out of range in the last file")
        return t
    out = tmp_path / "out"
    with config(), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("deterministic", poisoned), str(tmp_path / "in"), str(out), cluster=cluster)
    msg = str(excinfo.value)
    rep = failed_report(excinfo)
    failed = [t for t in rep.tasks if t.status == "failed"]
    assert len(failed) == 2 and failed[0].partition == failed[1].partition
    workers = {t.worker for t in failed}
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers), workers
    assert "the error is deterministic: it failed the same way on workers" in msg
    assert all(w in msg for w in workers) and "not retried further" in msg
    assert "ValueError: v out of range in the last file" in msg and "after 2 attempts" in msg
    assert rep.retries_spent == 1 and rep.failures == 1 and sum(s.retries for s in rep.stages) == 1
    assert_nothing_committed(out)


def test_intermittent_user_error_is_retried_on_another_worker(cluster, tmp_path):
    table = write_input(tmp_path / "in", 4)
    marker = str(tmp_path / "failed-once")

    def flaky(t, marker=marker):
        if pc.max(t["v"]).as_py() >= 300 and not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError("the lookup service timed out")
        return t
    out = tmp_path / "out"
    with config():
        result = engine.run(count_job("intermittent", flaky), str(tmp_path / "in"), str(out), cluster=cluster)
    assert committed_counts(out) == reference_counts(table)
    rep = result.report
    (failed,) = [t for t in rep.tasks if t.status == "failed"]
    (won,) = [t for t in rep.tasks if t.stage == failed.stage and t.partition == failed.partition
              and t.status == "ok"]
    assert failed.worker.startswith("tcp://") and won.worker.startswith("tcp://")
    assert won.worker != failed.worker, "the retry of a user error goes to another worker"
    assert (rep.failures, rep.retries_spent, rep.retries_per_failure) == (1, 1, 1.0)


def test_deterministic_error_in_the_driver_needs_two_attempts(tmp_path):
    """In the driver's thread pool (one process) two equal failures suffice, whatever the threads."""
    write_input(tmp_path / "in", 3)

    def poisoned(t):
        if pc.max(t["v"]).as_py() >= 200:
            raise KeyError("no such customer: 42")
        return t
    with config(**{"engine.retries.attempts": 5}), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("deterministic-local", poisoned), str(tmp_path / "in"), str(tmp_path / "out"))
    rep = failed_report(excinfo)
    assert len([t for t in rep.tasks if t.status == "failed"]) == 2 and rep.retries_spent == 1
    assert "the error is deterministic: it failed the same way twice in the driver process" in str(excinfo.value)
    assert_nothing_committed(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# retry_on


def _fails_first(tmp_path: Path, times: int, error: BaseException):
    """A map function that raises ``error`` on its first ``times`` calls on file 2 (counted in files on
    this machine's disk, which the workers share), then works."""
    counter = tmp_path / "calls"
    counter.mkdir()

    def flaky(t, counter=str(counter), times=times, error=error):
        if pc.max(t["v"]).as_py() >= 200:
            calls = len(os.listdir(counter))
            open(os.path.join(counter, str(calls)), "w").close()
            if calls < times:
                raise error
        return t
    return flaky


def test_retry_on_gives_a_class_its_attempts(cluster, tmp_path):
    """ConnectionError=5: a task that fails 4 times the same way (on both workers) still succeeds;
    without the rule the second equal failure would have stopped it."""
    table = write_input(tmp_path / "in", 3)
    flaky = _fails_first(tmp_path, 4, ConnectionError("the rate service refused the connection"))
    out = tmp_path / "out"
    with config():
        result = engine.run(count_job("retry-on", flaky), str(tmp_path / "in"), str(out), cluster=cluster,
                            retry_on={ConnectionError: 5})
    assert committed_counts(out) == reference_counts(table)
    rep = result.report
    failed = [t for t in rep.tasks if t.status == "failed"]
    assert len(failed) == 4 and len({t.worker for t in failed}) == 2
    assert (rep.failures, rep.retries_spent) == (1, 4)


def test_retry_on_one_attempt_fails_at_once(cluster, tmp_path):
    write_input(tmp_path / "in", 3)
    marker = str(tmp_path / "failed-once")

    def flaky(t, marker=marker):
        if pc.max(t["v"]).as_py() >= 200 and not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError("bad reading")          # would succeed if retried
        return t
    out = tmp_path / "out"
    with config(), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("retry-on-1", flaky), str(tmp_path / "in"), str(out), cluster=cluster,
                   retry_on={ValueError: 1})
    assert "retry_on allows ValueError 1 attempt(s); not retried" in str(excinfo.value)
    rep = failed_report(excinfo)
    assert len([t for t in rep.tasks if t.status == "failed"]) == 1 and rep.retries_spent == 0
    assert_nothing_committed(out)


def test_retry_on_does_not_apply_to_infrastructure_errors(tmp_path):
    """A failure raised by the engine's side of a task (here the fault hook, as a lost connection to
    a store would be) keeps the normal attempts even when retry_on names its class."""
    from engine.faults import Faults
    table = write_input(tmp_path / "in", 2)
    out = tmp_path / "out"
    with config():
        result = engine.run(count_job("infra", lambda t: t), str(tmp_path / "in"), str(out),
                            retry_on={"RuntimeError": 1}, faults=Faults(fail_attempts={("map", 1): 2}))
    assert committed_counts(out) == reference_counts(table)
    assert (result.report.failures, result.report.retries_spent) == (1, 2)


# ---------------------------------------------------------------------------------------------
# The run's retry budget and M10


def _fails_once_per_file(tmp_path: Path):
    """A map function whose every call on a file fails once (a marker per file), then works."""
    markers = tmp_path / "markers"
    markers.mkdir()

    def once(t, markers=str(markers)):
        first = pc.min(t["v"]).as_py()
        marker = os.path.join(markers, str(first))
        if first >= 100 and not os.path.exists(marker):     # (file 0 is the driver's sample)
            open(marker, "w").close()
            raise TimeoutError(f"slow reply for rows from {first}")
        return t
    return once


def test_retry_budget_exhausted_fails_the_run(tmp_path):
    write_input(tmp_path / "in", 4)
    out = tmp_path / "out"
    with config(**{"engine.cluster.workers": 1}), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("budget", _fails_once_per_file(tmp_path)), str(tmp_path / "in"), str(out),
                   retry_budget=2)
    msg = str(excinfo.value)
    assert msg.startswith("retry budget of 2 exhausted: round 1 of 1, map stage, partition ")
    assert "TimeoutError: slow reply for rows from" in msg
    rep = failed_report(excinfo)
    assert (rep.failures, rep.retries_spent, rep.retry_budget, rep.retry_budget_left) == (3, 2, 2, 0)
    assert_nothing_committed(out)


def test_m10_figures_in_report_summary_and_record(tmp_path):
    table = write_input(tmp_path / "in", 4)
    out = tmp_path / "out"
    with config():
        result = engine.run(count_job("m10", _fails_once_per_file(tmp_path)), str(tmp_path / "in"), str(out),
                            retry_budget=5)
    assert committed_counts(out) == reference_counts(table)
    rep = result.report
    assert (rep.failures, rep.retries_spent, rep.retries_per_failure, rep.retry_budget, rep.retry_budget_left) \
        == (3, 3, 1.0, 5, 2)
    d = rep.to_dict()
    assert (d["failures"], d["retries_spent"], d["retries_per_failure"], d["retry_budget_left"]) == (3, 3, 1.0, 2)
    again = RunReport.from_dict(json.loads(rep.to_json()))
    assert (again.failures, again.retries_spent, again.retry_budget) == (3, 3, 5)
    assert "retries: 3 failed task(s), 3 retries spent (1 per failure); budget 5, 2 left" in rep.summary()
    # the history record (what M10 in engine.slo is computed from) says the same
    assert (result.record["failed_tasks"], result.record["retries"]) == (3, 3)


# ---------------------------------------------------------------------------------------------
# max_tasks


def _overlaps(tasks) -> list:
    spans = sorted((t.start, t.stop, t.stage, t.partition) for t in tasks)
    return [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


def test_max_tasks_one_runs_one_attempt_at_a_time_on_two_workers(cluster, tmp_path):
    table = write_input(tmp_path / "in", 4)

    def slow(t):
        time.sleep(0.15)
        return t
    out = tmp_path / "out"
    result = engine.run(count_job("one-at-a-time", slow), str(tmp_path / "in"), str(out), cluster=cluster,
                        max_tasks=1)
    assert committed_counts(out) == reference_counts(table)
    ok = [t for t in result.report.tasks if t.status == "ok"]
    assert len([t for t in ok if t.stage.endswith("map")]) == 4
    assert _overlaps(result.report.tasks) == []
    assert len({t.worker for t in ok}) >= 1


def test_max_tasks_in_the_driver(tmp_path):
    table = write_input(tmp_path / "in", 4)

    def slow(t):
        time.sleep(0.05)
        return t
    with config(**{"engine.cluster.workers": 4}):
        result = engine.run(count_job("one-at-a-time-local", slow), str(tmp_path / "in"), str(tmp_path / "out"),
                            max_tasks=1)
    assert committed_counts(tmp_path / "out") == reference_counts(table)
    assert _overlaps(result.report.tasks) == []


# ---------------------------------------------------------------------------------------------
# Budgets


def test_max_seconds_stops_the_run_and_commits_nothing(cluster, tmp_path):
    write_input(tmp_path / "in", 6)

    def slow(t):
        time.sleep(1.0)
        return t
    out = tmp_path / "out"
    started = time.time()
    with pytest.raises(BudgetExceededError) as excinfo:
        engine.run(count_job("wall-budget", slow), str(tmp_path / "in"), str(out), cluster=cluster,
                   max_seconds=2.5)
    elapsed = time.time() - started
    err = excinfo.value
    assert err.budget == "max_seconds" and err.limit == 2.5 and err.used > 2.5
    assert elapsed < 4.5, f"6 tasks of 1 s on 2 workers would take 4 s; the budget stopped it at {elapsed:.1f}s"
    assert "max_seconds=2.5s" in str(err) and "map stage" in str(err) and "nothing was committed" in str(err)
    assert_nothing_committed(out)


def test_max_cpu_seconds_stops_the_run_and_commits_nothing(tmp_path):
    write_input(tmp_path / "in", 8)

    def busy(t):
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        return t
    out = tmp_path / "out"
    with pytest.raises(BudgetExceededError) as excinfo:
        engine.run(count_job("cpu-budget", busy), str(tmp_path / "in"), str(out), max_cpu_seconds=0.5)
    err = excinfo.value
    assert err.budget == "max_cpu_seconds" and err.used > 0.5
    assert "task CPU budget: max_cpu_seconds=0.5s" in str(err) and "nothing was committed" in str(err)
    rep = failed_report(excinfo)
    # (running attempts' CPU counts as it is used: the run stops before 3 tasks of 0.2 s have finished)
    assert len([t for t in rep.tasks if t.status == "ok"]) < 8
    assert_nothing_committed(out)


def test_cli_budget_exit_code_and_one_line(tmp_path):
    job_file = tmp_path / "slowjob.py"
    job_file.write_text("import time\nfrom engine import Job, agg\n\n"
                        "def slow(t):\n    time.sleep(0.3)\n    return t\n\n"
                        "job = Job('slowjob').map(slow).reduce(by='k', aggs={'n': agg.count()})\n")
    write_input(tmp_path / "in", 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGINE_HISTORY": str(tmp_path / "history.sqlite")}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(job_file), "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"), "--max-seconds", "1", "--quiet"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: BudgetExceededError: the run went past its wall-clock "
                                                   "budget: max_seconds=1s"), proc.stderr
    assert lines[0].endswith("nothing was committed (raise --max-seconds to let it finish)"), lines[0]
    assert_nothing_committed(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Rate limit


def test_rate_limit_paces_rows_across_the_run(cluster, tmp_path):
    """2,000 rows at rate_limit=1000 over 4 tasks on 2 workers: at least 2 s, and no second sees more
    than the rate plus one slice per task running at once."""
    from engine.ratelimit import slice_rows
    table = write_input(tmp_path / "in", 4, rows=500)
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    driver = os.getpid()

    def call_service(t, log_dir=str(log_dir), driver=driver):
        if os.getpid() != driver:           # the driver's check on a sample is not a task
            with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as f:
                f.write(f"{time.time()} {t.num_rows}\n")
        return t
    job = Job("paced").map(call_service, rate_limit=1000)
    assert job.fingerprint() == Job("paced").map(call_service).fingerprint()
    out = tmp_path / "out"
    started = time.time()
    engine.run(job, str(tmp_path / "in"), str(out), cluster=cluster)
    elapsed = time.time() - started
    assert committed(out).sort_by("v").equals(table.sort_by("v"))
    calls = sorted((float(a), int(b)) for p in log_dir.iterdir() for a, b in
                   (line.split() for line in p.read_text().splitlines()))
    assert sum(n for _, n in calls) == 2000
    # the first task's first slice waits 1/8 s; the last of the 2,000 rows is let through 2 s after the start
    assert elapsed >= 2.0 and calls[-1][0] - calls[0][0] >= 1.8, (elapsed, calls[0], calls[-1])
    first = calls[0][0]
    per_second: dict[int, int] = {}
    for at, n in calls:
        per_second[int(at - first)] = per_second.get(int(at - first), 0) + n
    allowance = 2 * slice_rows(1000 / 2)                 # one slice for each of the 2 tasks running at once
    assert max(per_second.values()) <= 1000 + allowance, per_second


def test_rate_limit_is_checked():
    from engine.errors import JobDefinitionError
    for bad in (0, -1, float("inf"), "fast", True):
        with pytest.raises(JobDefinitionError, match="rate_limit"):
            Job("x").map(lambda t: t, rate_limit=bad)
    with pytest.raises(JobDefinitionError, match="rate_limit"):
        Job("x").map(columns=["a"], rate_limit=10)
    assert "rate_limit=250/s" in Job("x").map(lambda t: t, rate_limit=250).stages[0].describe()


# ---------------------------------------------------------------------------------------------
# What counts as the user's error: marked where the engine calls the job's functions


def test_user_error_that_loses_its_attributes_when_pickled_keeps_its_rules(cluster, tmp_path):
    """json.JSONDecodeError pickles by its own ``__reduce__``, which drops what the engine attaches to
    it on the worker; it still arrives as the user's error: ``retry_on`` applies (one attempt), and the
    stage's cause is the original exception. An exception that cannot be pickled at all keeps its class
    name, message and place: the same-error-on-two-workers rule stops it."""
    import threading
    write_input(tmp_path / "in", 3)

    def parse(t):
        if pc.max(t["v"]).as_py() >= 200:
            json.loads("{not json")
        return t
    out = tmp_path / "out"
    with config(), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("json-retry-on", parse), str(tmp_path / "in"), str(out), cluster=cluster,
                   retry_on={ValueError: 1})
    msg = str(excinfo.value)
    assert "JSONDecodeError: Expecting property name" in msg, msg
    assert "retry_on allows JSONDecodeError 1 attempt(s); not retried" in msg, msg
    assert isinstance(excinfo.value.__cause__, json.JSONDecodeError)
    assert excinfo.value.__cause__.engine_attempt.worker.startswith("tcp://127.0.0.1:")
    assert len([t for t in failed_report(excinfo).tasks if t.status == "failed"]) == 1
    assert_nothing_committed(out)

    class HeldLock(ValueError):
        def __init__(self, message):
            super().__init__(message)
            self.lock = threading.Lock()          # cannot be pickled

    def locked(t):
        if pc.max(t["v"]).as_py() >= 200:
            raise HeldLock("the account is locked")
        return t
    out = tmp_path / "out2"
    with config(**{"engine.retries.attempts": 5}), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("unpicklable", locked), str(tmp_path / "in"), str(out), cluster=cluster)
    msg = str(excinfo.value)
    assert "HeldLock: the account is locked" in msg and "after 2 attempts" in msg, msg
    assert "the error is deterministic: it failed the same way on workers" in msg, msg
    assert ":locked:" in msg, msg                 # the user's frame
    assert_nothing_committed(out)


def test_job_code_installed_as_a_package_is_the_users(tmp_path, monkeypatch):
    """A job imported from site-packages is the user's code: retry_on applies to its errors, and two
    equal failures in the driver stop it (naming its frame), where it would have had every attempt."""
    site = tmp_path / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "sitejob_guards.py").write_text(
        "import pyarrow.compute as pc\n\n"
        "def check(t):\n"
        "    if pc.max(t['v']).as_py() >= 200:\n"
        "        raise ValueError('bad config value')\n"
        "    return t\n")
    monkeypatch.syspath_prepend(str(site))
    import sitejob_guards
    write_input(tmp_path / "in", 3)
    with config(**{"engine.retries.attempts": 5}), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("site-1", sitejob_guards.check), str(tmp_path / "in"), str(tmp_path / "out"),
                   retry_on={ValueError: 1})
    assert "retry_on allows ValueError 1 attempt(s); not retried" in str(excinfo.value)
    assert len([t for t in failed_report(excinfo).tasks if t.status == "failed"]) == 1
    with config(**{"engine.retries.attempts": 5}), pytest.raises(StageFailedError) as excinfo:
        engine.run(count_job("site-2", sitejob_guards.check), str(tmp_path / "in"), str(tmp_path / "out"))
    msg = str(excinfo.value)
    assert "failed the same way twice in the driver process (raised at sitejob_guards.py:check:5)" in msg, msg
    assert len([t for t in failed_report(excinfo).tasks if t.status == "failed"]) == 2
    assert_nothing_committed(tmp_path / "out")


def test_transient_network_errors_in_user_code_are_retried(tmp_path):
    """A refused connection (a service down for a moment) is retried with backoff, not stopped as
    deterministic by two equal failures."""
    table = write_input(tmp_path / "in", 3)
    call_service = _fails_first(tmp_path, 2, ConnectionRefusedError(111, "Connection refused"))
    out = tmp_path / "out"
    with config():
        result = engine.run(count_job("transient", call_service), str(tmp_path / "in"), str(out))
    assert committed_counts(out) == reference_counts(table)
    assert (result.report.failures, result.report.retries_spent) == (1, 2)


# ---------------------------------------------------------------------------------------------
# Rate limits on maps fused after a shuffle


@pytest.mark.parametrize("kind", ["sort", "reduce"])
def test_rate_limit_paces_a_map_after_a_shuffle(tmp_path, kind):
    """A rate-limited map fused after a sort or a reduce is fed in paced slices, as a first map is."""
    from engine.ratelimit import slice_rows
    table = write_input(tmp_path / "in", 1, rows=400)
    log = tmp_path / "calls.log"

    def call_service(t, log=str(log)):
        import threading
        if threading.current_thread() is not threading.main_thread():   # not the driver's sample check
            with open(log, "a") as f:
                f.write(f"{time.monotonic()} {t.num_rows}\n")
        return t
    first = Job("paced-after").sort("v") if kind == "sort" else Job("paced-after").reduce(lambda t: t, by="k")
    job = first.map(call_service, rate_limit=1000)
    out = tmp_path / "out"
    with config(**{"engine.cluster.workers": 1}):
        engine.run(job, str(tmp_path / "in"), str(out))
    assert committed(out).sort_by("v").equals(table.sort_by("v"))
    calls = [(float(a), int(b)) for a, b in (line.split() for line in log.read_text().splitlines())]
    assert sum(n for _, n in calls) == 400
    assert max(n for _, n in calls) <= slice_rows(1000), calls
    # 400 rows at 1,000/s in slices of 125 (the bucket starts empty): the last slice 0.275 s after the first
    assert calls[-1][0] - calls[0][0] >= 0.25, calls


# ---------------------------------------------------------------------------------------------
# Budgets stop what is running


def _burner(stop: Path, seconds: float = 10.0):
    """A map function that burns CPU on file 1 (not on the driver's sample) for ``seconds`` of
    its thread's CPU time, or until the file ``stop`` exists; it keeps the CPU seconds it has used in
    the file ``stop``.with_suffix(".cpu")."""

    def burn(t, stop=str(stop), seconds=seconds):
        if pc.min(t["v"]).as_py() < 100:        # file 0, the driver's sample
            return t
        cpu0 = time.thread_time()
        i = 0
        while time.thread_time() < cpu0 + seconds:
            i += 1
            if i % 2000 == 0:
                with open(stop + ".cpu.tmp", "w") as f:      # replaced whole: a reader never sees it empty
                    f.write(str(time.thread_time() - cpu0))
                os.replace(stop + ".cpu.tmp", stop + ".cpu")
                if os.path.exists(stop):
                    break
        return t
    return burn


def _stopped_runaway(tmp_path: Path, **where) -> tuple[BudgetExceededError, float]:
    """Run a job whose one task would burn 10 s of CPU under max_cpu_seconds=0.5; the budget error and
    the CPU seconds the task had used when the run returned (this machine's load does not matter)."""
    write_input(tmp_path / "in", 2)
    stop = tmp_path / "stop"
    out = tmp_path / "out"
    try:
        with pytest.raises(BudgetExceededError) as excinfo:
            engine.run(count_job("cpu-runaway", _burner(stop)), str(tmp_path / "in"), str(out),
                       max_cpu_seconds=0.5, **where)
        burnt = float((tmp_path / "stop.cpu").read_text())
    finally:
        stop.touch()
    assert_nothing_committed(out)
    return excinfo.value, burnt


def test_max_cpu_seconds_stops_a_running_task(tmp_path):
    err, burnt = _stopped_runaway(tmp_path)
    assert err.budget == "max_cpu_seconds" and 0.5 < err.used < 1.0, err.used
    assert burnt < 1.5, f"the budget stopped the run once its task had used {burnt:.1f}s of CPU"
    assert "running attempt(s) were cancelled" in str(err) and "nothing was committed" in str(err)


def test_max_cpu_seconds_stops_a_running_task_on_a_cluster(cluster, tmp_path):
    err, burnt = _stopped_runaway(tmp_path, cluster=cluster)
    assert err.budget == "max_cpu_seconds" and 0.5 < err.used < 2.0, err.used
    assert burnt < 2.5, f"the budget stopped the run once its task had used {burnt:.1f}s of CPU"
    assert "running attempt(s) were cancelled" in str(err)


@pytest.mark.parametrize("budget", ["max_seconds", "max_cpu_seconds"])
def test_budgets_cover_the_check_on_a_sample(tmp_path, budget):
    """The wall-clock budget counts from the run's start, and a job whose functions hang or spin on
    the driver's check of a sample is stopped there, by either budget."""
    write_input(tmp_path / "in", 2)
    stop = tmp_path / "stop"
    limit = 1.0 if budget == "max_seconds" else 0.5

    def hangs(t, stop=str(stop), spin=budget == "max_cpu_seconds"):
        end = time.time() + 5.0
        while time.time() < end and not os.path.exists(stop):
            if not spin:
                time.sleep(0.02)
        return t
    out = tmp_path / "out"
    started = time.time()
    try:
        with pytest.raises(BudgetExceededError) as excinfo:
            engine.run(count_job("sample-hangs", hangs), str(tmp_path / "in"), str(out), **{budget: limit})
        elapsed = time.time() - started
    finally:
        stop.touch()
    err = excinfo.value
    assert err.budget == budget and limit <= err.used < limit + 1.0, err.used
    if budget == "max_seconds":
        assert elapsed < 3.0, f"the sample check would take 5 s; the budget stopped it after {elapsed:.1f}s"
    assert "while checking the job on a sample of the input" in str(err), str(err)
    assert "nothing was committed" in str(err)
    assert_nothing_committed(out)
