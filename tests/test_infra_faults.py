"""Worker and infrastructure faults on a real cluster: ``dask scheduler`` + ``dask worker`` processes on
127.0.0.1, real SIGKILLs, a real full disk (tmpfs), real input files changed under a run, and a real S3
endpoint (moto) behind a slow, unreliable proxy (:mod:`flaky_proxy`).

Every run that must succeed commits exactly a reference answer computed here with pyarrow; every run
that must fail raises the engine's error and commits nothing (no manifest, no stray files).

One cluster serves the module (a killed worker is restarted by its nanny; a retired one is replaced);
the scheduler-kill test starts a cluster of its own (its rerun resumes on the module's).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import threading
import time
import uuid

import dask.config
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from distributed import Client
from flaky_proxy import FlakyProxy
from samples import (assert_same_rows, custom_job, custom_reference, finish, keyed_table, lower_words, merge_partials,
                     read_parquet_parts, to_partials, wordcount_job, wordcount_reference, write_parquet_parts,
                     write_text_corpus)

import engine
from engine import Job, agg
from engine.errors import ClusterError, InputChangedError, ShuffleSpaceError, StageFailedError
from engine.faults import Faults

pytestmark = pytest.mark.cluster

PARTITION_SIZE = "16KiB"          # several reducers on little data
# The workers import the engine the driver runs (a checkout used without installing it, too); they still
# cannot import this module or ``samples``: the jobs reach them by value.
WORKER_ENV = {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from fixtures import cli_cluster
    with cli_cluster(tmp_path_factory.mktemp("faults-cluster"), env=WORKER_ENV) as c:
        yield c


@pytest.fixture
def ready(cluster):
    """The module's cluster with two workers connected (a killed one is back from its nanny)."""
    with Client(cluster.address, set_as_default=False, timeout="10s") as client:
        client.wait_for_workers(2, timeout=60)
    return cluster


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-data")
    table = keyed_table(30_000, seed=21)
    parquet = write_parquet_parts(root / "parquet", table, files=3)
    text = write_text_corpus(root / "text", files=4, lines=1500, seed=22)
    return {"root": root, "parquet_dir": str(root / "parquet"), "parquet": parquet,
            "table": read_parquet_parts(parquet), "text_dir": str(root / "text"), "text": text}


# ---------------------------------------------------------------------------------------------
# Helpers (the ones that run on workers travel by value)


def _on_worker() -> bool:
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:
        return False
    return True


def _claim(flag: str) -> bool:
    """True for the first caller across all processes (creates ``flag`` holding its pid)."""
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    return True


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _pid_in(flag: str) -> int | None:
    try:
        with open(flag) as f:
            text = f.read()
        return int(text) if text else None
    except FileNotFoundError:
        return None


def _only_committed_files(out: str, manifest) -> None:
    """The output holds the manifest, the files it lists (once each) and the lock file: nothing else."""
    listed = [f["path"] for f in manifest.files]
    assert len(listed) == len(set(listed))
    found = sorted(os.path.relpath(os.path.join(d, n), out) for d, _, names in os.walk(out) for n in names)
    assert found == sorted(listed + ["_SUCCESS", "_lock"]), found


def _nothing_committed(out: str) -> None:
    """No manifest and no file published: outside ``_temporary`` (what a resumed run may reuse) the output
    holds at most the lock file."""
    if not os.path.exists(out):
        return
    found = sorted(os.path.relpath(os.path.join(d, n), out) for d, _, names in os.walk(out) for n in names)
    assert [f for f in found if not f.startswith("_temporary/")] in ([], ["_lock"]), found


# ---------------------------------------------------------------------------------------------
# 1. A worker SIGKILLed during the map stage and during the reduce stage


def _hang_in_file(fn, flag: str, file_id: int, after_rows: int):
    """``fn`` that, on a worker, hangs (for good) on the first batch of input file ``file_id`` that starts
    ``after_rows`` rows into it: the map task has spilled part of its output by then."""
    def wrapped(t: pa.Table) -> pa.Table:
        if t.num_rows and t["file_id"][0].as_py() == file_id and _on_worker():
            first = pc.min(t["id"]).as_py()
            if first % 10_000 >= after_rows and _claim(flag):
                time.sleep(120)
        return fn(t)
    return wrapped


def test_worker_killed_while_writing_its_map_output(ready, data, tmp_path):
    """SIGKILL the worker whose map task has half written its shuffle file: the task runs again on the other
    worker (a new file), the reducers read only finished files, and the answer is exact, with nothing twice."""
    flag, out = str(tmp_path / "hung"), str(tmp_path / "out")
    job = Job("kill-map").map(_hang_in_file(to_partials, flag, file_id=1, after_rows=4000)) \
        .combine(merge_partials).reduce(finish, by=["k1", "k2"])
    seen: dict = {}

    def kill() -> None:
        pid = _wait_for(lambda: _pid_in(flag), 60, "the map task to hang")
        seen["pid"] = pid
        # the hung attempt's shuffle file: begun (spills written) but not finished (no IPC footer)
        path = _wait_for(lambda: glob.glob(f"{out}/_temporary/*/shuffle/r0-map-00001-a0-*.arrow"), 10,
                         "the hung map task's shuffle file")[0]
        seen["size"] = os.path.getsize(path)
        try:
            pa.ipc.open_file(path)
            seen["complete"] = True
        except pa.ArrowInvalid:
            seen["complete"] = False
        seen["workers"] = set(ready.worker_pids().values())
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    with dask.config.set({"engine.batch-rows": 1000, "engine.shuffle.spill-size": "4KiB"}):
        result = engine.run(job, data["parquet_dir"], out, cluster=ready.address, partition_size=PARTITION_SIZE)
    killer.join(10)
    assert seen["pid"] in seen["workers"], "the hung task was not on a worker"
    assert seen["size"] > 0 and seen["complete"] is False, seen
    assert_same_rows(engine.read(out), custom_reference(data["table"]), ["k1", "k2"])
    engine.verify(out)
    _only_committed_files(out, result.manifest)
    assert not os.path.exists(os.path.join(out, "_temporary"))
    map_stage = next(s for s in result.report.stages if s.kind == "map")
    assert map_stage.rows_in == data["table"].num_rows      # every input row counted once


def _hang_reduce(fn, flag: str):
    def wrapped(t: pa.Table) -> pa.Table:
        if t.num_rows and _on_worker() and _claim(flag):
            time.sleep(120)
        return fn(t)
    return wrapped


def test_worker_killed_during_reduce_stage(ready, data, tmp_path):
    """SIGKILL a worker in the middle of a word count's reduce stage: its reduce task runs again elsewhere,
    the map outputs it needs are still there (the shuffle directory is shared: nothing was on the dead
    worker alone), and each word is counted once."""
    flag, out = str(tmp_path / "hung"), str(tmp_path / "out")
    job = Job("kill-reduce").map(lower_words, columns=["text"]) \
        .reduce(_hang_reduce(lambda t: t.group_by("word").aggregate([([], "count_all")])
                             .rename_columns(["word", "count"]), flag), by="word")
    killed: dict = {}

    def kill() -> None:
        pid = _wait_for(lambda: _pid_in(flag), 60, "the reduce task to hang")
        killed["was_worker"] = pid in set(ready.worker_pids().values())
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    result = engine.run(job, data["text_dir"], out, cluster=ready.address, partition_size="8KiB")
    killer.join(10)
    assert killed.get("was_worker") and killed.get("pid")
    reduce_stage = next(s for s in result.report.stages if s.kind == "reduce")
    assert reduce_stage.tasks >= 2
    expected = wordcount_reference(data["text"])
    assert_same_rows(engine.read(out), expected.select(["word", "count"]), ["word"])
    engine.verify(out)
    _only_committed_files(out, result.manifest)


# ---------------------------------------------------------------------------------------------
# 2. A worker that leaves gracefully and a new one that joins mid-run


def _slow(fn, seconds: float):
    def wrapped(t: pa.Table) -> pa.Table:
        if t.num_rows and _on_worker():
            time.sleep(seconds)
        return fn(t)
    return wrapped


def _after(fn, flag: str, seconds: float):
    """``fn`` that, on a worker, first waits for ``flag`` to exist (at most a minute), then sleeps ``seconds``."""
    def wrapped(t: pa.Table) -> pa.Table:
        if t.num_rows and _on_worker():
            deadline = time.time() + 60
            while not os.path.exists(flag) and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(seconds)
        return fn(t)
    return wrapped


def test_worker_retires_and_another_joins_mid_run(ready, data, tmp_path):
    """One worker retires (its nanny closes it) during the map stage and a new ``dask worker`` joins: the run
    commits the exact answer, and the newcomer runs some of its tasks (the reducers wait for it to join)."""
    from fixtures import _dask_executable, worker_environment
    out, joined = str(tmp_path / "out"), str(tmp_path / "joined")
    job = Job("retire-join").map(_slow(to_partials, 0.2)).combine(merge_partials) \
        .reduce(_after(finish, joined, 0.1), by=["k1", "k2"])
    name = f"newcomer-{uuid.uuid4().hex[:6]}"
    events: dict = {}

    def churn() -> None:
        with Client(ready.address, set_as_default=False, timeout="10s") as client:
            _wait_for(lambda: glob.glob(f"{out}/_temporary/*/journal/r0-map/*.json"), 60, "a finished map task")
            workers = client.scheduler_info(n_workers=-1)["workers"]
            leaving = sorted(workers)[0]
            events["retired"] = list(client.retire_workers([leaving], close_workers=True, remove=True))
            events["map_done_at_retire"] = len(glob.glob(f"{out}/_temporary/*/journal/r0-map/*.json"))
            # Started directly, not through the fixtures' launcher: that one asks for SIGTERM when the thread
            # that started the process ends (PR_SET_PDEATHSIG follows the thread), and this worker stays in the
            # module's cluster. It exits by itself 30 s after it loses its scheduler.
            with open(os.path.join(ready.workdir, f"{name}.log"), "ab") as log:
                proc = subprocess.Popen(
                    [_dask_executable(), "worker", "--scheduler-file", ready.scheduler_file, "--nthreads", "1",
                     "--no-dashboard", "--name", name, "--death-timeout", "30"], cwd=ready.workdir,
                    env=worker_environment(WORKER_ENV), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            ready.workers.append(proc)          # stopped with the cluster
            events["joined"] = _wait_for(
                lambda: [a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w.get("name") == name],
                60, "the new worker")[0]
            events["joined_at"] = time.time()
            open(joined, "w").close()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    # (no speculation: a fresh worker's first task is slow while it imports, and a copy elsewhere would win)
    with dask.config.set({"engine.batch-rows": 2000}):
        result = engine.run(job, data["parquet_dir"], out, cluster=ready.address, partition_size="4KiB",
                            speculation=False)
    thread.join(30)
    assert events.get("retired") and events.get("joined"), events
    assert events["map_done_at_retire"] < 3, "the worker retired after the map stage"
    assert_same_rows(engine.read(out), custom_reference(data["table"]), ["k1", "k2"])
    engine.verify(out)
    _only_committed_files(out, result.manifest)
    ran = {t.worker for t in result.report.tasks if t.status == "ok"}
    assert events["joined"] in ran, (events, ran)
    assert not any(t.worker == events["retired"][0] and t.start > events["joined_at"] for t in result.report.tasks)


# ---------------------------------------------------------------------------------------------
# 3. The scheduler SIGKILLed mid-run; a rerun on a new cluster resumes


def test_scheduler_killed_fails_fast_and_a_rerun_resumes(ready, data, tmp_path):
    """SIGKILL the scheduler of a cluster of its own once two map tasks have finished: the driver gives up
    within engine.cluster.scheduler-timeout with a ClusterError naming the scheduler, commits nothing, and a
    rerun with resume=True on another cluster (the module's) reuses the journaled tasks."""
    from fixtures import cli_cluster
    out = str(tmp_path / "out")
    job = Job("sched-kill").map(_slow(lower_words, 0.4), columns=["text"]) \
        .reduce(by="word", aggs={"count": agg.count()})
    timeout = 3.0
    with dask.config.set({"engine.cluster.scheduler-timeout": timeout}):
        with cli_cluster(tmp_path / "doomed", n_workers=1, env=WORKER_ENV) as doomed:
            killed: dict = {}

            def kill() -> None:
                _wait_for(lambda: len(glob.glob(f"{out}/_temporary/*/journal/r0-map/*.json")) >= 2, 60,
                          "two finished map tasks")
                os.kill(doomed.scheduler.pid, signal.SIGKILL)
                killed["at"] = time.monotonic()

            threading.Thread(target=kill, daemon=True).start()
            with pytest.raises(ClusterError) as err:
                engine.run(job, data["text_dir"], out, cluster=doomed.address)
            waited = time.monotonic() - killed["at"]
            message = str(err.value)
            assert doomed.address in message and "lost the connection to the scheduler" in message, message
            assert "scheduler-timeout" in message and "resume=True" in message, message
            assert waited < timeout + 3, f"the driver took {waited:.1f}s to give up on its scheduler"
            _nothing_committed(out)
            assert len(glob.glob(f"{out}/_temporary/*/journal/r0-map/*.json")) >= 2
    result = engine.run(job, data["text_dir"], out, cluster=ready.address, resume=True)
    stage = next(s for s in result.report.stages if s.kind == "map")
    assert stage.resumed >= 2, [(s.name, s.resumed) for s in result.report.stages]
    assert_same_rows(engine.read(out), wordcount_reference(data["text"]), ["word"])
    engine.verify(out)
    _only_committed_files(out, result.manifest)


# ---------------------------------------------------------------------------------------------
# 4. A full disk in the shuffle directory


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs mounted for the test (we run as root); skipped where mounting is not allowed, unless
    REQUIRE_SERVICES is set."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if os.environ.get("REQUIRE_SERVICES"):
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield str(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _pass_rows(t: pa.Table) -> pa.Table:
    return t


def _sizes(t: pa.Table) -> pa.Table:
    g = t.group_by("k").aggregate([([], "count_all"), ("n", "sum")])
    return pa.table({"k": g["k"], "rows": g["count_all"], "n": g["n_sum"]})


def test_full_shuffle_disk_fails_cleanly(ready, tmp_path, small_disk):
    """The shuffle (about 20 MB) does not fit an 8 MiB disk: the run stops at the first full write with a
    ShuffleSpaceError naming the directory, commits nothing, and leaves the disk and the output empty; a rerun
    with room commits the reference answer."""
    rng = np.random.default_rng(5)
    inp = tmp_path / "wide"
    inp.mkdir()
    tables = []
    for i in range(4):
        n = 20_000
        payload = pa.FixedSizeBinaryArray.from_buffers(pa.binary(256), n, [None, pa.py_buffer(rng.bytes(256 * n))])
        t = pa.table({"k": rng.integers(0, 500, n), "n": rng.integers(0, 9, n), "payload": payload})
        pq.write_table(t, inp / f"part-{i}.parquet")
        tables.append(t)
    job = Job("wide").map(_pass_rows).reduce(_sizes, by="k")
    out = str(tmp_path / "out")
    t0 = time.monotonic()
    with pytest.raises(ShuffleSpaceError) as err:
        engine.run(job, str(inp), out, cluster=ready.address, shuffle_dir=small_disk)
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert small_disk in message and "no space left" in message.lower(), message
    assert err.value.directory == small_disk
    assert "after 2 attempts" not in message and "after 3 attempts" not in message   # not retried
    assert os.listdir(small_disk) == [], os.listdir(small_disk)
    assert sorted(os.listdir(out)) == ["_lock"], os.listdir(out)
    # a rerun with room commits the answer
    result = engine.run(job, str(inp), out, cluster=ready.address, shuffle_dir=str(tmp_path / "roomy"))
    whole = pa.concat_tables(tables)
    g = whole.group_by("k").aggregate([([], "count_all"), ("n", "sum")])
    expected = pa.table({"k": g["k"], "rows": g["count_all"], "n": g["n_sum"]})
    assert_same_rows(engine.read(out), expected, ["k"])
    _only_committed_files(out, result.manifest)
    assert elapsed < 30


# ---------------------------------------------------------------------------------------------
# 5. An input file that changes or disappears during the run


def _rewrite_file(path: str, extra: int) -> None:
    """Rewrite the Parquet file at ``path`` in place with ``extra`` more rows (same columns)."""
    t = pq.read_table(path)
    pq.write_table(pa.concat_tables([t, t.slice(0, extra)]), path, row_group_size=2000)


class _WhenWaiting(threading.Thread):
    """Runs ``action()`` once the map task of ``partition`` is on a worker: it waits there first (the run's
    ``Faults(slow_first_attempt=...)``), so the action happens before the task opens its file."""

    def __init__(self, address: str, partition: int, action) -> None:
        super().__init__(daemon=True)
        self.address, self.partition, self.action = address, partition, action
        self.done = False

    def run(self) -> None:
        with Client(self.address, set_as_default=False, timeout="10s") as client:
            def waiting():
                return any(isinstance(k, tuple) and "-map-" in k[0] and k[1] == self.partition
                           for keys in client.processing().values() for k in keys)
            _wait_for(waiting, 60, f"map task {self.partition}")
        self.action()
        self.done = True


def _copy_parquet(data, tmp_path) -> tuple[str, list[str]]:
    d = tmp_path / "input"
    d.mkdir()
    paths = []
    for p in data["parquet"]:
        dest = d / os.path.basename(p)
        dest.write_bytes(open(p, "rb").read())
        paths.append(str(dest))
    return str(d), paths


def _check_failed_on(err, path: str, what: str) -> None:
    exc = err.value
    assert isinstance(exc, StageFailedError), type(exc)
    assert isinstance(exc.cause, InputChangedError), repr(exc.cause)
    assert exc.cause.path == path
    assert path in str(exc) and what in str(exc), str(exc)
    assert "attempts" not in str(exc), "a changed input must not be retried"


WAIT = Faults(slow_first_attempt={("map", 2): 2.0})      # map task 2 waits 2 s before it reads its file


def test_input_file_rewritten_before_its_task_reads_it(ready, data, tmp_path):
    """File 2 gains rows after the snapshot, before its map task reads it: the rows read are not the snapshot's,
    so the run fails naming the file instead of committing an answer computed from another input."""
    inp, paths = _copy_parquet(data, tmp_path)
    out = str(tmp_path / "out")
    before = os.path.getsize(paths[2])
    change = _WhenWaiting(ready.address, 2, lambda: _rewrite_file(paths[2], 500))
    change.start()
    with pytest.raises(StageFailedError) as err:
        engine.run(custom_job("changed"), inp, out, cluster=ready.address, faults=WAIT)
    assert change.done
    _check_failed_on(err, paths[2], "changed during the run")
    assert f"from {before:,} to {os.path.getsize(paths[2]):,} bytes" in str(err.value)
    _nothing_committed(out)


def test_input_file_deleted_before_its_task_reads_it(ready, data, tmp_path):
    inp, paths = _copy_parquet(data, tmp_path)
    out = str(tmp_path / "out")
    change = _WhenWaiting(ready.address, 2, lambda: os.remove(paths[2]))
    change.start()
    with pytest.raises(StageFailedError) as err:
        engine.run(custom_job("gone"), inp, out, cluster=ready.address, faults=WAIT)
    assert change.done
    _check_failed_on(err, paths[2], "disappeared during the run")
    _nothing_committed(out)


def _removing_own_file(fn, flag: str, file_id: int, path: str):
    """``fn`` that, on a worker, deletes input file ``file_id`` (``path``) while its map task is reading it."""
    def wrapped(t: pa.Table) -> pa.Table:
        if t.num_rows and t["file_id"][0].as_py() == file_id and _on_worker() and _claim(flag):
            os.remove(path)
        return fn(t)
    return wrapped


def test_input_file_deleted_while_its_task_reads_it(ready, data, tmp_path):
    """A map task's input file is deleted while it reads it (its open file still reads whole): the run fails
    naming the file all the same."""
    inp, paths = _copy_parquet(data, tmp_path)
    out = str(tmp_path / "out")
    job = Job("deleted").map(_removing_own_file(to_partials, str(tmp_path / "flag"), 1, paths[1])) \
        .combine(merge_partials).reduce(finish, by=["k1", "k2"])
    with pytest.raises(StageFailedError) as err:
        engine.run(job, inp, out, cluster=ready.address)
    _check_failed_on(err, paths[1], "disappeared during the run")
    _nothing_committed(out)


@pytest.mark.s3
def test_s3_object_replaced_by_one_of_the_same_size(ready, s3, data, tmp_path):
    """On S3 the snapshot holds each object's ETag: an object overwritten with other bytes of the same size
    fails the run naming it."""
    prefix = f"changed-{uuid.uuid4().hex[:8]}"
    fs = s3["fs"]
    for p in data["parquet"]:
        fs.put(p, f"{s3['bucket']}/{prefix}/in/{os.path.basename(p)}")
    fs.invalidate_cache()
    target = f"{s3['bucket']}/{prefix}/in/part-002.parquet"
    original = fs.cat_file(target)
    # the same rows with the order of two row groups swapped would do; flipping bytes inside the footer's
    # key-value metadata is simpler: a valid file of the same length with another ETag
    changed = original.replace(b"ARROW:schema", b"ARROW:schemb", 1)
    assert len(changed) == len(original) and changed != original

    def replace() -> None:
        fs.pipe_file(target, changed)

    change = _WhenWaiting(ready.address, 2, replace)
    change.start()
    out = s3["url"](prefix, "out")
    with pytest.raises(StageFailedError) as err:
        engine.run(custom_job("etag"), s3["url"](prefix, "in"), out, cluster=ready.address,
                   storage_options=s3["storage_options"], faults=WAIT)
    assert change.done
    exc = err.value
    assert isinstance(exc.cause, InputChangedError) and exc.cause.path == target, repr(exc.cause)
    assert "ETag" in str(exc) and target in str(exc), str(exc)
    fs.invalidate_cache()
    assert not fs.exists(f"{s3['bucket']}/{prefix}/out/_SUCCESS")


# ---------------------------------------------------------------------------------------------
# 6. A slow, flaky S3 endpoint


@pytest.fixture(scope="module")
def s3_text(s3, data):
    prefix = f"flaky-{uuid.uuid4().hex[:8]}"
    for p in data["text"]:
        s3["fs"].put(p, f"{s3['bucket']}/{prefix}/in/{os.path.basename(p)}")
    s3["fs"].invalidate_cache()
    return prefix


def _through(s3, proxy: FlakyProxy) -> dict:
    options = dict(s3["storage_options"])
    options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": proxy.url}
    return options


def _no_pending_uploads(s3, out: str) -> None:
    from engine.commit import pending_uploads
    fs = s3["fs"]
    assert list(pending_uploads(fs, out.split("://", 1)[1])) == []


@pytest.mark.s3
def test_slow_and_flaky_s3_endpoint(ready, s3, s3_text, data):
    """Input, output and shuffle on S3 behind a proxy that delays requests, drops some before they reach the
    service and loses the answers of others after it acted: the run commits the reference answer."""
    seed = 1414
    proxy = FlakyProxy(s3["endpoint_url"], seed=seed, drop=0.04, lose=0.04, delay=0.15, max_delay=0.15)
    with proxy, dask.config.set({"engine.shuffle.max-partitions": 8}):
        options = _through(s3, proxy)
        out = s3["url"](s3_text, "out")
        result = engine.run(wordcount_job("flaky-wc"), s3["url"](s3_text, "in"), out, cluster=ready.address,
                            storage_options=options, shuffle_dir=s3["url"](s3_text, "shuffle"),
                            partition_size=PARTITION_SIZE)
        engine.verify(out, storage_options=options)
        counts = dict(proxy.counts)
    assert counts.get("drop", 0) and counts.get("lose", 0) and counts.get("delay", 0), (seed, counts)
    assert_same_rows(engine.read(out, storage_options=s3["storage_options"]), wordcount_reference(data["text"]),
                     ["word"])
    assert len(result.manifest.files) >= 2
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists(s3["url"](s3_text, "shuffle").split("://", 1)[1] + "/" + result.run_id)
    _no_pending_uploads(s3, out)


def _lose_first(*what: tuple[str, str]):
    """Scripted faults for :class:`FlakyProxy`: lose the answer of the first request with each (method, path
    ending or query part)."""
    return [("lose", lambda m, p, method=method, part=part: m == method and (p.endswith(part) or part in p))
            for method, part in what]


@pytest.mark.s3
def test_lost_answers_of_the_lock_and_an_upload(ready, s3, s3_text, data):
    """S3 acted on a request but its answer never arrived, so the client sent it again: the lock's put-if-absent
    then finds the lock this very run created, and the completion of an output file's upload finds it
    completed. The run commits (it does not take itself for a concurrent run) and its output is whole."""
    out = s3["url"](s3_text, "lost-lock")
    proxy = FlakyProxy(s3["endpoint_url"], seed=7, once=_lose_first(("PUT", "/lost-lock/_lock"),
                                                                      ("POST", "uploadId=")))
    with proxy:
        options = _through(s3, proxy)
        engine.run(wordcount_job("lost-lock"), s3["url"](s3_text, "in"), out, cluster=ready.address,
                   storage_options=options)
        lost = [(m, p) for fate, m, p in proxy.log if fate == "lose"]
    assert len(lost) == 2 and not proxy.once, proxy.log
    engine.verify(out, storage_options=s3["storage_options"])
    assert_same_rows(engine.read(out, storage_options=s3["storage_options"]), wordcount_reference(data["text"]),
                     ["word"])
    _no_pending_uploads(s3, out)
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists(out.split("://", 1)[1] + "/_lock")       # released


@pytest.mark.s3
def test_lost_answers_of_the_manifest_write(ready, s3, s3_text, data):
    """The manifest's put-if-absent (first commit) and its compare-and-swap (an overwrite) land, but their answers
    are lost and the retries are refused: each run sees that the manifest is its own and commits, instead of
    deleting the files a live manifest lists and reporting a concurrent run."""
    out = s3["url"](s3_text, "lost-manifest")
    proxy = FlakyProxy(s3["endpoint_url"], seed=8, once=_lose_first(("PUT", "/lost-manifest/_SUCCESS")))
    with proxy:
        options = _through(s3, proxy)
        first = engine.run(wordcount_job("lost-manifest"), s3["url"](s3_text, "in"), out, cluster=ready.address,
                           storage_options=options)
        assert not proxy.once, proxy.log
        engine.verify(out, storage_options=s3["storage_options"])
        proxy.once = _lose_first(("PUT", "/lost-manifest/_SUCCESS"))
        second = engine.run(wordcount_job("lost-manifest"), s3["url"](s3_text, "in"), out, cluster=ready.address,
                            storage_options=options, mode="overwrite", force=True)
        assert not proxy.once, proxy.log
    engine.verify(out, storage_options=s3["storage_options"])
    assert (first.manifest.generation, second.manifest.generation) == (1, 2)
    assert_same_rows(engine.read(out, storage_options=s3["storage_options"]), wordcount_reference(data["text"]),
                     ["word"])
    _no_pending_uploads(s3, out)
