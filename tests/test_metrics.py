"""Prometheus metrics of runs: a real Pushgateway and node-exporter textfiles, read back with prometheus_client's
parser.

Promises checked here, on the history records of real tiny runs (a committed run, then a run of the
same job whose map partition 1 fails in all three attempts):

* pushed to Debian's ``prometheus-pushgateway`` (started on 127.0.0.1): after the failure, the last
  success still holds the committed run's end, the last failure holds the failed run's end,
  ``mapreduce_last_completion_timestamp_seconds`` has both statuses, the work figures are the failed
  run's (4 attempts, 3 failures, 2 retries), another job's series are untouched, and no series has
  an instance but the gateway's empty one;
* written to a textfile, the same across a success then a failure, with a history store (which also
  fills a fresh file's last success) and without one (the file's own values are kept); several jobs
  share one file, a directory gets ``mapreduce_<job>.prom``, other families in the file are kept;
  eight threads exporting eight jobs to one file at once leave all eight in it;
* ``progress`` marks the job running on the gateway and the final export clears it;
* ``Job.run(..., metrics_file=DIR, push_gateway=URL)`` exports both runs' records to both, as above;
* failures say what failed: an unreachable gateway (the textfile is still written), a file that is
  not in the text format (left as it was), a record that is still running.

Input: two files, keys a b a c | b d a (7 rows, 4 distinct keys), so the committed run reads 7 rows
and writes 4.
"""

from __future__ import annotations

import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import engine  # noqa: E402
from engine import history, metrics  # noqa: E402
from engine.errors import StageFailedError  # noqa: E402
from engine.faults import Faults  # noqa: E402
from services import free_port, pushgateway  # noqa: E402,F401


def write_input(directory) -> str:
    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.table({"k": ["a", "b", "a", "c"], "v": [1, 2, 3, 4]}), os.path.join(directory, "p0.parquet"))
    pq.write_table(pa.table({"k": ["b", "d", "a"], "v": [5, 6, 7]}), os.path.join(directory, "p1.parquet"))
    return str(directory)


def tiny(name: str) -> engine.Job:
    return engine.Job(name).reduce(by="k", aggs={"n": engine.agg.count(), "s": engine.agg.sum("v")})


def newest(name: str) -> dict:
    return history.open_store().records(job=name, limit=1)[0]


def committed_run(tmp_path, name: str) -> dict:
    tiny(name).run(write_input(tmp_path / "in"), str(tmp_path / f"out-{name}"))
    rec = newest(name)
    assert rec["status"] == "committed" and rec["output_rows"] == 4 and rec["input_rows"] == 7
    return rec


def failed_run(tmp_path, name: str) -> dict:
    with pytest.raises(StageFailedError):
        tiny(name).run(write_input(tmp_path / "in"), str(tmp_path / f"never-{name}"),
                       faults=Faults(fail_attempts={("map", 1): 99}))
    rec = newest(name)
    assert rec["status"] == "failed" and (rec["attempts"], rec["task_failures"], rec["retries"]) == (4, 3, 2)
    return rec


def series(samples, name: str, job: str) -> dict:
    """``{labels other than job and instance: value}`` of metric ``name`` for ``job``."""
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance"))): s.value
            for s in samples if s.name == name and s.labels.get("job") == job}


def one(samples, name: str, job: str, **labels: str) -> float | None:
    return series(samples, name, job).get(tuple(sorted(labels.items())))


def parse_file(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [s for fam in text_string_to_metric_families(f.read()) for s in fam.samples]


def check_after_failure(samples, job: str, ok: dict, bad: dict) -> None:
    assert one(samples, "mapreduce_last_success_timestamp_seconds", job) == ok["finished"]
    assert one(samples, "mapreduce_last_failure_timestamp_seconds", job) == bad["finished"]
    assert series(samples, "mapreduce_last_completion_timestamp_seconds", job) == {
        (("status", "committed"),): ok["finished"], (("status", "failed"),): bad["finished"]}
    assert series(samples, "mapreduce_duration_seconds", job) == {
        (("status", "committed"),): ok["seconds"], (("status", "failed"),): bad["seconds"]}
    assert one(samples, "mapreduce_last_start_timestamp_seconds", job) == bad["started"]
    # the work figures are the failed run's: partition 0 once, partition 1 three times and failed each time
    for name, value in (("mapreduce_task_attempts", 4), ("mapreduce_task_failures", 3), ("mapreduce_retries", 2),
                        ("mapreduce_output_records", 0), ("mapreduce_running", 0), ("mapreduce_deadline_misses", 0)):
        assert one(samples, name, job) == value, name
    assert list(series(samples, "mapreduce_run_info", job)) == [
        (("engine_version", engine.__version__), ("run_id", bad["run_id"]), ("status", "failed"))]


# ---------------------------------------------------------------------------------------------
# Pushgateway


def test_a_failure_pushed_after_a_success_keeps_the_last_success(tmp_path, pushgateway):
    ok = committed_run(tmp_path, "gw-daily")
    other = committed_run(tmp_path, "gw-other")
    bad = failed_run(tmp_path, "gw-daily")
    store = history.open_store()

    metrics.export(ok, store, gateway=pushgateway.url)
    metrics.export(other, store, gateway=pushgateway.url)
    after_success = pushgateway.samples("mapreduce_")
    assert one(after_success, "mapreduce_last_success_timestamp_seconds", "gw-daily") == ok["finished"]
    assert one(after_success, "mapreduce_last_failure_timestamp_seconds", "gw-daily") is None
    assert one(after_success, "mapreduce_input_records", "gw-daily") == 7
    assert one(after_success, "mapreduce_output_records", "gw-daily") == 4
    assert one(after_success, "mapreduce_tasks", "gw-daily") == 3         # 2 map + 1 reduce

    metrics.export(bad, store, gateway=pushgateway.url)
    samples = pushgateway.samples("mapreduce_")
    check_after_failure(samples, "gw-daily", ok, bad)
    # the other job's group is untouched
    assert one(samples, "mapreduce_last_success_timestamp_seconds", "gw-other") == other["finished"]
    assert one(samples, "mapreduce_output_records", "gw-other") == 4
    # batch jobs carry no instance: the gateway's empty one keeps Prometheus from attaching its own
    assert {s.labels.get("instance") for s in samples} == {""}
    # the gateway's own record of the pushes: one group per job, one per job and status
    pushed = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "instance"))
              for s in pushgateway.samples("push_time_seconds") if s.labels["job"] == "gw-daily"}
    assert pushed == {(("job", "gw-daily"),), (("job", "gw-daily"), ("status", "committed")),
                      (("job", "gw-daily"), ("status", "failed"))}


def test_progress_marks_the_job_running_until_its_record_is_exported(tmp_path, pushgateway):
    ok = committed_run(tmp_path, "gw-progress")
    running = history.base_record("r-1", "gw-progress", ok["output"], started=ok["started"])
    running.update(checkpoint_at=ok["started"] + 0.25, tasks=3)
    metrics.progress(running, gateway=pushgateway.url)
    samples = pushgateway.samples("mapreduce_")
    assert one(samples, "mapreduce_running", "gw-progress") == 1
    assert one(samples, "mapreduce_last_checkpoint_timestamp_seconds", "gw-progress") == ok["started"] + 0.25
    assert one(samples, "mapreduce_last_success_timestamp_seconds", "gw-progress") is None
    metrics.export(ok, None, gateway=pushgateway.url)
    samples = pushgateway.samples("mapreduce_")
    assert one(samples, "mapreduce_running", "gw-progress") == 0
    # the run's newest checkpoint; a record without one leaves the heartbeat's
    assert one(samples, "mapreduce_last_checkpoint_timestamp_seconds", "gw-progress") == \
        (ok["checkpoint_at"] if ok["checkpoint_at"] is not None else ok["started"] + 0.25)
    metrics.forget("gw-progress", pushgateway.url)
    assert series(pushgateway.samples("mapreduce_"), "mapreduce_running", "gw-progress") == {}


def test_runs_export_their_metrics_when_they_end(tmp_path, pushgateway):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    hooks = {"metrics_file": str(textdir), "push_gateway": pushgateway.url}
    job = tiny("e2e-nightly")
    job.run(write_input(tmp_path / "in"), str(tmp_path / "out"), **hooks)
    ok = newest("e2e-nightly")
    with pytest.raises(StageFailedError):
        job.run(str(tmp_path / "in"), str(tmp_path / "never"), faults=Faults(fail_attempts={("map", 1): 99}), **hooks)
    bad = newest("e2e-nightly")
    assert (ok["status"], bad["status"]) == ("committed", "failed")
    for samples in (pushgateway.samples("mapreduce_"), parse_file(textdir / "mapreduce_e2e-nightly.prom")):
        check_after_failure(samples, "e2e-nightly", ok, bad)


# ---------------------------------------------------------------------------------------------
# Textfile


def test_textfile_keeps_the_last_success_with_a_store(tmp_path):
    ok = committed_run(tmp_path, "tf-store")
    bad = failed_run(tmp_path, "tf-store")
    store = history.open_store()
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    path = metrics.export(ok, store, textfile=str(textdir))
    assert path == str(textdir / "mapreduce_tf-store.prom")
    assert one(parse_file(path), "mapreduce_output_records", "tf-store") == 4
    assert metrics.export(bad, store, textfile=str(textdir)) == path
    check_after_failure(parse_file(path), "tf-store", ok, bad)
    assert sorted(os.listdir(textdir)) == ["mapreduce_tf-store.prom"]        # no temporary file left behind

    # a fresh file written by the failure alone: the store gives the last success and the committed run's series
    fresh = tmp_path / "fresh" / "tf.prom"
    metrics.export(bad, store, textfile=str(fresh))
    samples = parse_file(fresh)
    check_after_failure(samples, "tf-store", ok, bad)


def test_textfile_keeps_the_last_success_without_a_store_and_shares_the_file(tmp_path):
    ok = committed_run(tmp_path, "tf-nostore")
    other = committed_run(tmp_path, "tf-neighbour")
    bad = failed_run(tmp_path, "tf-nostore")
    path = tmp_path / "batch.prom"
    path.write_text('# HELP backup_last_success_timestamp_seconds Another batch job.\n'
                    '# TYPE backup_last_success_timestamp_seconds gauge\n'
                    'backup_last_success_timestamp_seconds 1700000000\n')
    metrics.export(ok, None, textfile=str(path))
    metrics.export(other, None, textfile=str(path))
    metrics.export(bad, None, textfile=str(path))
    samples = parse_file(path)
    check_after_failure(samples, "tf-nostore", ok, bad)
    assert one(samples, "mapreduce_last_success_timestamp_seconds", "tf-neighbour") == other["finished"]
    assert one(samples, "mapreduce_output_records", "tf-neighbour") == 4
    assert [s.value for s in samples if s.name == "backup_last_success_timestamp_seconds"] == [1700000000]


def test_concurrent_exports_to_one_file_lose_no_job(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    ok = committed_run(tmp_path, "tf-parallel")
    path = str(tmp_path / "shared.prom")
    names = [f"tf-parallel-{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:       # each export reads, merges and replaces the file under the lock
        list(pool.map(lambda n: metrics.export(dict(ok, job=n), None, textfile=path), names * 3))
    samples = parse_file(path)
    assert {s.labels["job"] for s in samples if s.name == "mapreduce_last_success_timestamp_seconds"} == set(names)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("shared.prom.")]    # no temporary file left


# ---------------------------------------------------------------------------------------------
# Failures


def test_failures_say_what_failed_and_spare_the_other_destination(tmp_path):
    ok = committed_run(tmp_path, "err-job")
    nowhere = f"http://127.0.0.1:{free_port()}"                # nothing listens there
    path = tmp_path / "m.prom"
    with pytest.raises(metrics.MetricsExportError, match=r"Pushgateway at http://127\.0\.0\.1:\d+ .*err-job"):
        metrics.export(ok, None, textfile=str(path), gateway=nowhere, timeout=2)
    assert one(parse_file(path), "mapreduce_last_success_timestamp_seconds", "err-job") == ok["finished"]

    garbage = tmp_path / "garbage.prom"
    garbage.write_text("this is { not the text format\n")
    with pytest.raises(metrics.MetricsExportError, match="not in Prometheus' text format"):
        metrics.export(ok, None, textfile=str(garbage))
    assert garbage.read_text() == "this is { not the text format\n"

    running = history.base_record("r-2", "err-job", ok["output"])
    with pytest.raises(ValueError, match="use progress"):
        metrics.export(running, None, textfile=str(path))


# ---------------------------------------------------------------------------------------------
# Cost, printed: PYTHONPATH=. python tests/test_metrics.py


def _measure(repeat: int = 50) -> None:
    import statistics
    import tempfile

    from services import start_pushgateway
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ENGINE_HISTORY"] = os.path.join(tmp, "history.sqlite")
        from pathlib import Path
        ok, bad = committed_run(Path(tmp), "cost"), failed_run(Path(tmp), "cost")
        store = history.open_store()
        with start_pushgateway() as gw:
            for label, kwargs in (("textfile, no store", {"textfile": os.path.join(tmp, "t1.prom")}),
                                  ("textfile + SQLite store",
                                   {"textfile": os.path.join(tmp, "t2.prom"), "store": store}),
                                  ("pushgateway (2 POSTs)", {"gateway": gw.url})):
                store_arg = kwargs.pop("store", None)
                times = []
                for i in range(repeat):
                    t = time.perf_counter()
                    metrics.export(ok if i % 2 else bad, store_arg, **kwargs)
                    times.append((time.perf_counter() - t) * 1e3)
                print(f"export() to {label:<24} median {statistics.median(times):6.2f} ms  "
                      f"max {max(times):6.2f} ms  ({repeat} exports, success and failure alternating)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _measure()
