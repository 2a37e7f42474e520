"""Runs on a real multi-process cluster started from the dask CLIs (scheduler + two one-thread workers).

The workers cannot import this module, ``samples`` or ``fixtures``: every job below reaches them by
value. Results must equal a single-process pyarrow reference exactly, with at least two input files
and two reducers. Worker kills happen on a cluster of their own.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from distributed import Client
from samples import (assert_globally_sorted, assert_same_rows, custom_job, custom_reference, finish, keyed_table,
                     merge_partials, read_parquet_parts, sort_job, sort_reference, to_partials, wordcount_job,
                     wordcount_reference, write_parquet_parts, write_text_corpus)

import engine
from engine import Job, agg
from engine.cluster import ClusterInfo
from engine.datasets import filesystem, resolve_input
from engine.errors import ClusterError, ShuffleLocationError
from engine.runner import _check_reachability
from jobs.wordcount import job as project_wordcount

pytestmark = pytest.mark.cluster

# Small partitions: the test data is small, and every test needs several reducers.
PARTITION_SIZE = "16KiB"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-data")
    text = write_text_corpus(root / "text", files=3, lines=3000, seed=1)
    table = keyed_table(30_000, seed=2)
    parquet = write_parquet_parts(root / "parquet", table, files=3)
    return {"text_dir": str(root / "text"), "text": text, "parquet_dir": str(root / "parquet"),
            "parquet": parquet, "table": read_parquet_parts(parquet)}


@pytest.fixture(params=["address", "client", "env"])
def cluster(request, dask_cluster, monkeypatch):
    """The shared CLI cluster, reached by address, by a Client object, or by DASK_SCHEDULER_ADDRESS."""
    if request.param == "address":
        yield dask_cluster
    elif request.param == "client":
        with Client(dask_cluster, set_as_default=False, timeout="10s") as client:
            yield client
    else:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_cluster)
        yield None


def _stage(result, kind: str):
    return next(s for s in result.report.stages if s.kind == kind)


def _check_ran_on(result, address: str) -> None:
    with Client(address, set_as_default=False, timeout="10s") as c:
        workers = set(c.scheduler_info(n_workers=-1)["workers"])
    used = {t.worker for t in result.report.tasks}
    assert used and used <= workers, (used, workers)
    assert result.report.cluster["embedded"] is False
    assert result.report.cluster["workers"] == 2


# ---------------------------------------------------------------------------------------------
# Code shipping


def test_workers_cannot_import_test_code(dask_cluster):
    """The premise of the by-value tests: the CLI workers do not see the tests directory."""
    with Client(dask_cluster, set_as_default=False, timeout="10s") as c:
        for name in ("test_cluster", "samples", "fixtures", "conftest"):
            found = c.run(importlib.util.find_spec, name)
            assert set(found.values()) == {None}, (name, found)
        # The engine itself is installed for them.
        assert all(s is not None for s in c.run(importlib.util.find_spec, "engine").values())


SCALE = 3   # a module-level constant read by a function defined in this test module


def _scaled(col):
    return pc.multiply(col, SCALE)


def test_function_defined_in_test_module_runs_on_cli_workers(dask_cluster, data, tmp_path):
    weight = 2   # a closure value

    def weigh(t: pa.Table) -> pa.Table:
        return pa.table({"k1": t["k1"], "x": pc.multiply(_scaled(t["v"]), weight)})

    job = Job("by-value").map(weigh).reduce(by="k1", aggs={"x": agg.sum("x"), "n": agg.count()})
    result = job.run(data["parquet_dir"], str(tmp_path / "out"), cluster=dask_cluster,
                     partition_size=PARTITION_SIZE)
    t = data["table"]
    g = t.group_by("k1").aggregate([("v", "sum"), ([], "count_all")])
    expected = pa.table({"k1": g["k1"], "x": pc.multiply(g["v_sum"], SCALE * weight), "n": g["count_all"]})
    assert_same_rows(engine.read(result.output), expected, ["k1"])
    _check_ran_on(result, dask_cluster)


# ---------------------------------------------------------------------------------------------
# Jobs against the shared cluster, three ways of naming it


def test_wordcount(cluster, dask_cluster, data, tmp_path):
    out = str(tmp_path / "wc")
    result = engine.run(wordcount_job(), data["text_dir"], out, cluster=cluster, partition_size=PARTITION_SIZE)
    assert result.report.status == "committed"
    assert _stage(result, "map").tasks >= 2
    assert _stage(result, "reduce").tasks >= 2
    assert len(result.files) >= 2
    assert_same_rows(engine.read(out), wordcount_reference(data["text"]), ["word"])
    engine.verify(out)
    _check_ran_on(result, dask_cluster)


def test_project_wordcount_job(dask_cluster, data, tmp_path):
    out = str(tmp_path / "wc")
    result = project_wordcount.run(data["text_dir"], out, cluster=dask_cluster, partition_size=PARTITION_SIZE)
    assert _stage(result, "reduce").tasks >= 2
    # Empty lines and edge whitespace yield no words.
    assert_same_rows(engine.read(out), wordcount_reference(data["text"]), ["word"])


def test_custom_reduce(cluster, dask_cluster, data, tmp_path):
    out = str(tmp_path / "custom")
    result = engine.run(custom_job(), data["parquet_dir"], out, cluster=cluster, partition_size=PARTITION_SIZE)
    assert _stage(result, "map").tasks >= 2
    assert _stage(result, "reduce").tasks >= 2
    assert_same_rows(engine.read(out), custom_reference(data["table"]), ["k1", "k2"])
    engine.verify(out)
    _check_ran_on(result, dask_cluster)


def test_sort(cluster, dask_cluster, data, tmp_path):
    out = str(tmp_path / "sorted")
    result = engine.run(sort_job(), data["parquet_dir"], out, cluster=cluster, partition_size=PARTITION_SIZE)
    assert _stage(result, "map").tasks >= 2
    assert _stage(result, "reduce").tasks >= 2
    assert len(result.files) >= 2
    assert_globally_sorted(engine.read(out), sort_reference(data["table"]))
    engine.verify(out)
    _check_ran_on(result, dask_cluster)


def test_rerun_is_noop_and_mode_error_refuses(dask_cluster, data, tmp_path):
    out = str(tmp_path / "wc")
    first = engine.run(wordcount_job(), data["text_dir"], out, cluster=dask_cluster, partition_size=PARTITION_SIZE)
    again = engine.run(wordcount_job(), data["text_dir"], out, cluster=dask_cluster, partition_size=PARTITION_SIZE)
    assert again.skipped and again.run_id == first.run_id
    with pytest.raises(engine.OutputExistsError):
        engine.run(custom_job(), data["parquet_dir"], out, cluster=dask_cluster)


# ---------------------------------------------------------------------------------------------
# Worker killed mid-task (each test on a cluster of its own)


def _claim(flag: str) -> bool:
    """True for the first caller across all processes (creates ``flag`` holding this pid)."""
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    return True


def _on_worker() -> bool:
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:
        return False
    return True


def slow_once(fn, flag: str, file_id: int | None = None, seconds: float = 60.0):
    """``fn`` that, the first time a worker calls it on its trigger, records its pid in ``flag`` and hangs.

    (The driver also calls stage functions, on a sample, to validate the job: those calls never hang.)
    """
    def wrapped(t: pa.Table) -> pa.Table:
        hit = t.num_rows > 0 and (file_id is None or t["file_id"][0].as_py() == file_id) and _on_worker()
        if hit and _claim(flag):
            time.sleep(seconds)
        return fn(t)
    return wrapped


class Killer(threading.Thread):
    """Waits for ``flag``, checks its pid is a worker's, SIGKILLs it."""

    def __init__(self, flag: str, worker_pids: set[int], timeout: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.flag, self.worker_pids, self.timeout = flag, worker_pids, timeout
        self.killed: int | None = None
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                with open(self.flag) as f:
                    text = f.read()
                if text:
                    pid = int(text)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        else:
            self.error = "the slow task never started"
            return
        if pid not in self.worker_pids:
            self.error = f"pid {pid} is not a worker ({self.worker_pids})"
            return
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        self.killed = pid


@pytest.mark.slow
def test_worker_killed_during_map_stage(data, tmp_path):
    from fixtures import cli_cluster
    flag = str(tmp_path / "map-started")
    job = (Job("kill-map").map(slow_once(to_partials, flag, file_id=1)).combine(merge_partials)
           .reduce(finish, by=["k1", "k2"]))
    with cli_cluster(tmp_path / "cluster") as c:
        pids = c.worker_pids()
        killer = Killer(flag, set(pids.values()))
        killer.start()
        t0 = time.monotonic()
        result = engine.run(job, data["parquet_dir"], str(tmp_path / "out"), cluster=c.address,
                            partition_size=PARTITION_SIZE)
        elapsed = time.monotonic() - t0
        killer.join(5)
        assert killer.error is None, killer.error
        assert killer.killed in pids.values()
        assert elapsed < 50, "the killed task was waited out instead of rescheduled"
        assert killer.killed not in c.worker_pids().values()   # the nanny started a fresh process
    assert_same_rows(engine.read(result.output), custom_reference(data["table"]), ["k1", "k2"])
    engine.verify(result.output)


@pytest.mark.slow
def test_worker_killed_during_reduce_stage(data, tmp_path):
    from fixtures import cli_cluster
    flag = str(tmp_path / "reduce-started")
    job = (Job("kill-reduce").map(to_partials).combine(merge_partials)
           .reduce(slow_once(finish, flag), by=["k1", "k2"]))
    with cli_cluster(tmp_path / "cluster") as c:
        pids = c.worker_pids()
        killer = Killer(flag, set(pids.values()))
        killer.start()
        result = engine.run(job, data["parquet_dir"], str(tmp_path / "out"), cluster=c.address,
                            partition_size=PARTITION_SIZE)
        killer.join(5)
        assert killer.error is None, killer.error
        assert killer.killed in pids.values()
    assert _stage(result, "reduce").tasks >= 2
    assert_same_rows(engine.read(result.output), custom_reference(data["table"]), ["k1", "k2"])
    engine.verify(result.output)


# ---------------------------------------------------------------------------------------------
# Workers on other machines


def _remote(workers: int = 2) -> ClusterInfo:
    return ClusterInfo(embedded=False, same_host=False, in_process=False, workers=workers, threads=workers,
                       dashboard=None)


def test_remote_cluster_needs_shuffle_dir(data, tmp_path):
    spec = resolve_input(data["text_dir"])
    out_fs, _ = filesystem(str(tmp_path / "out"))
    with pytest.raises(ShuffleLocationError, match="shuffle_dir"):
        _check_reachability(_remote(), spec, out_fs, None)


def test_remote_cluster_needs_shared_input_and_output(data, tmp_path):
    spec = resolve_input(data["text_dir"])
    out_fs, _ = filesystem(str(tmp_path / "out"))
    with pytest.raises(ClusterError, match="input"):
        _check_reachability(_remote(), spec, out_fs, "s3://bucket/shuffle")


def test_same_host_cluster_needs_nothing(data, tmp_path):
    spec = resolve_input(data["text_dir"])
    out_fs, _ = filesystem(str(tmp_path / "out"))
    same = ClusterInfo(embedded=False, same_host=True, in_process=False, workers=2, threads=2, dashboard=None)
    _check_reachability(same, spec, out_fs, None)


def test_run_refuses_remote_workers_without_shuffle_dir(dask_cluster, data, tmp_path, monkeypatch):
    """End to end: when the workers' addresses are not this host's, the run stops before any task."""
    from engine import cluster as engine_cluster
    monkeypatch.setattr(engine_cluster, "_is_local_host", lambda host: False)
    out = tmp_path / "out"
    with pytest.raises(ShuffleLocationError, match="shuffle_dir"):
        engine.run(wordcount_job(), data["text_dir"], str(out), cluster=dask_cluster)
    assert not out.exists() or not any(p.name == "_SUCCESS" for p in out.iterdir())



