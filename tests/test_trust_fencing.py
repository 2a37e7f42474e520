"""Fencing: a run that lost its lease never commits, and nothing is written into an output after its commit.

Black-box: ``engine.run`` on the two-process CLI cluster, the real moto S3 server (behind a small WSGI
front that can refuse chosen requests, for the heartbeat test), a speculative copy winning over an
attempt stuck in user code that wakes up after the commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import commit
from engine import Job
from engine.errors import ConcurrentRunError
from engine.faults import Faults
from jobs.wordcount import job as wordcount


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("fencing-corpus")
    rng = np.random.default_rng(3)
    vocab = np.array([f"f{i}" for i in range(300)])
    for i in range(4):
        words = vocab[rng.integers(0, len(vocab), 4000)]
        (d / f"doc-{i}.txt").write_text("\n".join(" ".join(words[j:j + 10]) for j in range(0, len(words), 10)))
    return str(d)


def _lock_key(s3_out: str) -> str:
    return s3_out[len("s3://"):] + "/_lock"


def _etag(body: bytes) -> str:
    return '"' + hashlib.md5(body).hexdigest() + '"'


def _pending_uploads(fs, s3_out: str) -> list[str]:
    bucket, _, prefix = s3_out[len("s3://"):].partition("/")
    listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
    return [u["Key"] for u in listing.get("Uploads", [])]


# ---------------------------------------------------------------------------------------------
# (a) the S3 lease


@pytest.mark.timeout(180)
@pytest.mark.parametrize("expires_in", [600.0, -600.0], ids=["live-foreign-lease", "expired-foreign-lease"])
def test_s3_lease_taken_over_mid_run_never_commits(s3, corpus, dask_cluster, expires_in):
    fs = s3["fs"]
    out = s3["url"](f"takeover-{'live' if expires_in > 0 else 'expired'}")
    key = _lock_key(out)
    bucket, _, obj = key.partition("/")
    foreign = json.dumps({"owner": "0" * 32, "host": "another-driver", "pid": 4242,
                          "expires": time.time() + expires_in}).encode()
    took_over = threading.Event()
    stop = threading.Event()

    def second_driver() -> None:
        # As a second driver would: compare-and-swap its own lease over the one it read.
        while not stop.is_set():
            try:
                current = fs.cat_file(key)
            except FileNotFoundError:
                time.sleep(0.02)
                continue
            fs.call_s3("put_object", Bucket=bucket, Key=obj, Body=foreign, IfMatch=_etag(current))
            took_over.set()
            return

    thread = threading.Thread(target=second_driver, daemon=True)
    thread.start()
    try:
        with pytest.raises(ConcurrentRunError) as raised:
            wordcount.run(corpus, out, cluster=dask_cluster, storage_options=s3["storage_options"],
                          partition_size="16KiB", faults=Faults(commit_delay=1.0))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert took_over.is_set()
    fs.invalidate_cache()
    assert not fs.exists(out + "/_SUCCESS")
    assert "lost the output lease" in str(raised.value) and "nothing was committed" in str(raised.value)
    assert fs.cat_file(key) == foreign          # the other party's lease is left alone


class _RefusingFront:
    """A WSGI front for moto's S3 app that answers chosen PUTs of a lock object with 503."""

    def __init__(self, app) -> None:
        self.app = app
        self.refuse_puts: set[int] = set()     # 1-based numbers of the PUTs to refuse
        self.lock_suffix: str | None = None
        self.puts = 0
        self.refused = 0

    def __call__(self, environ, start_response):
        if self.lock_suffix and environ["REQUEST_METHOD"] == "PUT" \
                and environ.get("PATH_INFO", "").endswith(self.lock_suffix):
            self.puts += 1
            if self.puts in self.refuse_puts:
                self.refused += 1
                body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                        b"<Message>Service is unable to handle request.</Message></Error>")
                start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                           ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


@pytest.fixture
def refusing_s3(s3):
    """A second endpoint onto the same moto state whose front can refuse the lock's renewals."""
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    front = _RefusingFront(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, front, True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        # One attempt per request: a refused renewal reaches the engine instead of being retried by botocore.
        options = {**s3["storage_options"], "client_kwargs": {"endpoint_url": endpoint},
                   "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        yield front, options
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_s3_lease_survives_one_refused_renewal(s3, refusing_s3, corpus, dask_cluster):
    front, options = refusing_s3
    out = s3["url"]("refused-renewal")
    front.lock_suffix = "/refused-renewal/_lock"
    front.refuse_puts = {2}                     # 1 creates the lease; 2 is the first renewal
    # The commit steps sleep 3.5 s each: the run outlasts the first heartbeat (a third of the 30 s lease).
    result = wordcount.run(corpus, out, cluster=dask_cluster, storage_options=options, partition_size="16KiB",
                           faults=Faults(commit_delay=3.5))
    assert front.refused == 1 and front.puts >= 3, (front.refused, front.puts)
    manifest = commit.load_manifest(s3["fs"], out[len("s3://"):])
    assert manifest is not None and manifest.doc["run_id"] == result.run_id
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists(_lock_key(out))  # released at the end


# ---------------------------------------------------------------------------------------------
# (b) late writers


def _stall_first_call(markers: str):
    """A stage function whose first call on a worker waits until the test says "go" (the driver also calls it
    once, on a sample, to validate the job: that call passes through)."""
    def stall(table: pa.Table) -> pa.Table:
        import os
        import time
        try:
            from distributed import get_worker
            get_worker()
        except ValueError:
            return table
        try:
            fd = os.open(os.path.join(markers, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            time.sleep(0.5)         # every other call takes a steady while, so no worker looks slow
            return table
        os.close(fd)
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(markers, "go")) and time.time() < deadline:
            time.sleep(0.05)        # stuck in user code: never checks for cancellation
        open(os.path.join(markers, "woke"), "w").close()
        return table
    return stall


@pytest.fixture(scope="module")
def keyed_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("fencing-keyed")
    rng = np.random.default_rng(5)
    for i in range(6):
        n = 3000
        pq.write_table(pa.table({"k": rng.integers(0, 4000, n), "v": rng.random(n)}), str(d / f"part-{i}.parquet"))
    return str(d)


@pytest.fixture(scope="module")
def roomy_cluster(tmp_path_factory):
    """Two workers with two threads each: an attempt stuck in user code holds one thread, and the tasks the
    scheduler sends to its worker meanwhile run on the other (with one thread they would queue behind it)."""
    from fixtures import cli_cluster
    with cli_cluster(tmp_path_factory.mktemp("fencing-cluster"), 2, nthreads=2) as cluster:
        yield cluster.address


def _wait_until_idle(address: str, woke: str, timeout: float = 120) -> None:
    """Until the stuck attempt has woken up and every worker thread is free again."""
    from distributed import Client
    deadline = time.time() + timeout
    while not os.path.exists(woke):
        assert time.time() < deadline, "the stuck attempt never woke up"
        time.sleep(0.05)
    with Client(address, set_as_default=False, timeout="20s") as client:
        while sum(client.run(lambda dask_worker: len(dask_worker.active_threads)).values()):
            assert time.time() < deadline, "the late attempt never finished"
            time.sleep(0.1)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store, stage", [("local", "map"), ("s3", "map"), ("local", "reduce")])
def test_late_attempt_writes_nothing_after_commit(s3, keyed_input, roomy_cluster, tmp_path, store, stage):
    import dask.config
    markers = tmp_path / "markers"
    markers.mkdir()
    stall = _stall_first_call(str(markers))
    if stage == "map":
        job = Job(f"late-{stage}").map(stall)
    else:
        job = Job(f"late-{stage}").map(lambda t: t).reduce(stall, by="k")
    if store == "s3":
        out, options = s3["url"](f"late-{stage}-{tmp_path.name}"), s3["storage_options"]
    else:
        out, options = str(tmp_path / "out"), None
    # A zombie-grace longer than the stuck attempt lives: its worker is not restarted under it, so it really
    # wakes up after the commit and tries to write (as an attempt on a frozen or nanny-less worker would).
    with dask.config.set({"engine.speculation.min-runtime": 0.5, "engine.speculation.zombie-grace": 600}):
        result = job.run(keyed_input, out, cluster=roomy_cluster, storage_options=options, partition_size="32KiB")
    assert (markers / "first").exists() and not (markers / "woke").exists(), \
        (result.report.speculation, [(t.stage, t.partition, t.attempt, t.worker, t.status, round(t.stop - t.start, 2))
                                     for t in result.report.tasks if t.stop - t.start > 0.3])
    assert any(d["won"] != d["straggler"] for d in result.report.speculation), result.report.speculation
    expected = engine.read(out, options, verify=True)
    # The stuck attempt lost to its speculative copy and the run committed; now it wakes up and writes.
    (markers / "go").touch()
    _wait_until_idle(roomy_cluster, str(markers / "woke"))
    if store == "s3":
        fs, root = s3["fs"], out[len("s3://"):]
        fs.invalidate_cache()
        assert _pending_uploads(fs, out) == []
        assert fs.find(root + "/_temporary") == []
        listed = {f["path"] for f in result.manifest.files}
        assert {p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)} - {"_SUCCESS"} == listed
    else:
        assert not os.path.exists(os.path.join(out, "_temporary", result.run_id))
        assert not os.path.exists(os.path.join(out, "_temporary"))
        listed = {f["path"] for f in result.manifest.files}
        assert set(os.listdir(out)) - {"_SUCCESS", "_lock"} == listed
    assert engine.read(out, options, verify=True).equals(expected)
