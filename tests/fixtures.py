"""Fixtures that stand up real infrastructure on 127.0.0.1: an S3 endpoint and a multi-process dask cluster.

* ``s3`` (session): a moto server speaking the S3 HTTP API, one bucket, and the ``storage_options``
  s3fs needs to reach it. Every engine component (driver and workers) must receive the endpoint
  through ``storage_options``; nothing in the environment points at it.
* ``dask_cluster`` (session): ``dask scheduler`` plus two ``dask worker`` processes started from
  the command-line tools, yielding the scheduler address. The workers run in an empty working
  directory without ``PYTHONPATH``, so they cannot import the test modules: user code defined in a
  test must reach them by value.
* :func:`cli_cluster`: the same cluster as a context manager, for tests that damage their cluster
  (killing workers) or need other worker options (memory limits).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# Distinctive dummy credentials: moto accepts any, and tests assert that they never leak into
# reports or manifests, which needs values that cannot occur there by accident.
S3_KEY = "AKIAENGINETESTKEY7Q2X"
S3_SECRET = "engine-test-secret-5f1c9a7e3b"
S3_BUCKET = "engine-test"

# Keep botocore away from real credentials, profiles and the instance metadata service. The values
# differ from S3_KEY/S3_SECRET so a lost storage_options cannot be masked by the environment.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "env-dummy-key",
    "AWS_SECRET_ACCESS_KEY": "env-dummy-secret",
    "AWS_SESSION_TOKEN": "env-dummy-token",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


# ---------------------------------------------------------------------------------------------
# S3 (moto server)


@pytest.fixture(scope="session")
def s3() -> Iterator[dict]:
    """A moto S3 server with one bucket: ``{"endpoint_url", "storage_options", "bucket", "fs", "url"}``.

    ``url(*parts)`` builds ``s3://bucket/part/...``; ``fs`` is an s3fs filesystem for test setup.
    """
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        options = {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"endpoint_url": endpoint}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(S3_BUCKET)

        def url(*parts: str) -> str:
            return "s3://" + "/".join([S3_BUCKET, *(p.strip("/") for p in parts)])

        yield {"endpoint_url": endpoint, "storage_options": options, "bucket": S3_BUCKET, "fs": fs, "url": url}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------
# A dask cluster from the command-line tools


def _dask_executable() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "dask")
    if not os.path.exists(exe):
        pytest.skip(f"no `dask` executable next to {sys.executable}")
    return exe


def worker_environment(extra: dict | None = None) -> dict[str, str]:
    """The environment of scheduler and worker processes: this one minus PYTHONPATH, plus test settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(AWS_ENV)
    env["ACERO_ALIGNMENT_HANDLING"] = "reallocate"   # as the engine's embedded cluster does
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class CLICluster:
    """A running ``dask scheduler`` + ``dask worker`` set."""

    address: str
    scheduler_file: str
    workdir: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def worker_pids(self) -> dict[str, int]:
        """Worker address → pid of the process that runs tasks (the nanny's child)."""
        from distributed import Client
        with Client(self.address, timeout="10s", set_as_default=False) as client:
            return client.run(os.getpid)

    def logs(self) -> str:
        out = []
        for name in sorted(os.listdir(self.workdir)):
            if name.endswith(".log"):
                with open(os.path.join(self.workdir, name), errors="replace") as f:
                    out.append(f"--- {name}\n{f.read()[-4000:]}")
        return "\n".join(out)


# Runs in the child before it becomes the dask process: ask the kernel for SIGTERM when the test process
# dies, so a killed or timed-out pytest does not leave a cluster behind (the processes run in sessions
# of their own and would outlive it otherwise). The signal setting survives exec.
_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _spawn(args: list[str], workdir: str, env: dict, log_name: str) -> subprocess.Popen:
    if sys.platform.startswith("linux"):
        args = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args]
    log = open(os.path.join(workdir, log_name), "ab")
    try:
        # A session of its own: teardown can signal the whole group (a nanny and its worker).
        return subprocess.Popen(args, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL the process groups; always reap."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
        # Also reaches children a nanny left behind.
        _signal_group(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def _forget_engine_client(address: str) -> None:
    """Close the engine's cached connection to ``address`` before its scheduler goes away."""
    try:
        from engine import cluster as engine_cluster
    except ImportError:  # pragma: no cover
        return
    client = engine_cluster._CLIENTS.pop(address, None)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


@contextlib.contextmanager
def cli_cluster(workdir, n_workers: int = 2, *, nthreads: int = 1, worker_args: tuple[str, ...] = (),
                env: dict | None = None, timeout: float = 60.0) -> Iterator[CLICluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes; tear them down in order."""
    from distributed import Client

    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    exe = _dask_executable()
    env = worker_environment(env)
    scheduler_file = os.path.join(workdir, "scheduler.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(scheduler_file)
    scheduler = _spawn([exe, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", scheduler_file], workdir, env, "scheduler.log")
    cluster = CLICluster("", scheduler_file, workdir, scheduler)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {scheduler.returncode}\n{cluster.logs()}")
            try:
                with open(scheduler_file) as f:
                    cluster.address = json.load(f)["address"]
                break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start within {timeout}s\n{cluster.logs()}")
            time.sleep(0.05)
        for i in range(n_workers):
            cluster.workers.append(_spawn([exe, "worker", "--scheduler-file", scheduler_file, "--nthreads",
                                           str(nthreads), "--no-dashboard", "--name", f"w{i}", *worker_args],
                                          workdir, env, f"worker-{i}.log"))
        with Client(scheduler_file=scheduler_file, timeout="30s", set_as_default=False) as client:
            try:
                client.wait_for_workers(n_workers, timeout=timeout)
            except Exception as exc:
                raise RuntimeError(f"{n_workers} dask workers did not connect: {exc}\n{cluster.logs()}") from exc
        yield cluster
    finally:
        if cluster.address:
            _forget_engine_client(cluster.address)
        _stop(cluster.workers, timeout=20)   # workers first: a worker outliving its scheduler may hang
        _stop([scheduler], timeout=10)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """The address of a shared two-worker cluster (one thread each) started from the dask CLIs."""
    with cli_cluster(tmp_path_factory.mktemp("dask-cluster")) as cluster:
        yield cluster.address


@dataclass
class Backend:
    """One store the commit tests run against: local disk or the moto S3 server."""

    name: str
    root: str
    options: dict | None
    fs: object

    def url(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if self.name == "s3" else os.path.join(self.root, *parts)

    def path(self, url: str) -> str:
        """The filesystem path (no protocol) of a URL of this backend."""
        return url[len("s3://"):] if url.startswith("s3://") else url


def storage_backend(request, tmp_path, prefix: str) -> Backend:
    """The ``Backend`` for a ``params=["local", "s3"]`` fixture (S3: a fresh prefix in the test bucket)."""
    import uuid

    import fsspec
    if request.param == "local":
        return Backend("local", str(tmp_path / "store"), None, fsspec.filesystem("file"))
    s3 = request.getfixturevalue("s3")
    return Backend("s3", s3["url"](f"{prefix}-{uuid.uuid4().hex[:8]}"), s3["storage_options"], s3["fs"])


__all__ = ["Backend", "storage_backend", "s3", "dask_cluster", "cli_cluster", "CLICluster", "worker_environment", "AWS_ENV", "S3_KEY",
           "S3_SECRET", "S3_BUCKET"]
