"""A real PostgreSQL server for the tests, started from the distribution's binaries on 127.0.0.1.

:class:`PostgresServer` runs ``initdb`` and ``postgres`` in a fresh temporary directory (data, unix
socket and log inside it) on a free port of 127.0.0.1. TCP connections need the password of the user
``engine`` (scram-sha-256), so a test can check that the password never shows; connections over the
socket are trusted (for administration). ``initdb`` and ``postgres`` refuse to run as root: under
root, both run as the ``postgres`` user of the system, which owns the directory. Durability is off
(``fsync``, ``full_page_writes``, ``synchronous_commit``): the server lives for one test session.

The session fixture :func:`postgres_url` yields the URL of a database ``history`` and stops the server
at the end (``pg_ctl stop -m immediate``). Without the binaries (``apt-get install postgresql``) or
psycopg, the tests that use it are skipped, unless ``REQUIRE_SERVICES=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

USER = "engine"
PASSWORD = "pg-test-pw-8c41d2e6"        # distinctive, so a test can look for it in messages and logs
DATABASE = "history"


def require(why: str) -> None:
    """Skip the test (or fail it when REQUIRE_SERVICES=1: there, the service must be installed)."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(why)
    pytest.skip(why)


def bindir() -> str | None:
    """The directory of ``initdb``, ``postgres`` and ``pg_ctl``, or None."""
    candidates = []
    if shutil.which("pg_config"):
        try:
            candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                             timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    if shutil.which("initdb"):
        candidates.append(os.path.dirname(shutil.which("initdb")))
    for d in candidates:
        if d and all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "postgres", "pg_ctl")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary directory; :meth:`start`, :meth:`stop`, :attr:`url`."""

    def __init__(self, bin_dir: str) -> None:
        self.bin = bin_dir
        self.root = tempfile.mkdtemp(prefix="engine-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0
        self._as: dict = {}
        if os.geteuid() == 0:             # initdb and postgres refuse root: run them as the postgres user
            pw = pwd.getpwnam("postgres")
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def admin_url(self, database: str = DATABASE) -> str:
        """Over the unix socket, trusted: for setting up and inspecting the server."""
        return f"postgresql://{USER}@/{database}?host={self.root}&port={self.port}"

    def _run(self, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}
        done = subprocess.run([os.path.join(self.bin, args[0]), *args[1:]], capture_output=True, text=True,
                              env=env, cwd=self.root, timeout=120, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def start(self) -> None:
        t0 = time.monotonic()
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                  "--auth-local=trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
        os.remove(pwfile)
        for _ in range(3):                # a free port may be taken between the probe and the bind
            self.port = _free_port()
            if self._launch():
                break
        else:
            raise RuntimeError(f"postgres did not start: {self.tail()}")
        import psycopg
        with psycopg.connect(self.admin_url("postgres"), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {DATABASE}")
        self.startup_seconds = time.monotonic() - t0

    def _launch(self) -> bool:
        log = open(self.log, "ab")
        if self._as:
            os.chown(self.log, self._as["user"], self._as["group"])
        self.proc = subprocess.Popen(
            [os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.root,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
             "-c", "synchronous_commit=off", "-c", "max_connections=40", "-c", "shared_buffers=16MB",
             "-c", "log_min_messages=warning", "-c", "logging_collector=off"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}, start_new_session=True, **self._as)
        log.close()
        pidfile = os.path.join(self.data, "postmaster.pid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:                           # line 8 of postmaster.pid is the server's status
                with open(pidfile) as f:
                    lines = f.read().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"postgres did not become ready in 30 s: {self.tail()}")

    def tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._run("pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w")
            except (RuntimeError, subprocess.SubprocessError):
                self.proc.kill()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server (see the module docstring); stopped at the end of the session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require("needs psycopg 3 (pip install 'mapreduce-engine[postgres]')")
    bin_dir = bindir()
    if bin_dir is None:
        require("needs PostgreSQL's server binaries (apt-get install -y postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            require("running as root, needs the system user postgres to run the server as")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql://engine:PASSWORD@127.0.0.1:PORT/history`` of the session's server."""
    return postgres_server.url
