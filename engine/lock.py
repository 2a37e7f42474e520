"""One live run per output: an exclusive lock that a killed run never leaves behind, checked before commit.

:func:`output_lock` yields an :class:`OutputLock`; its ``check()`` raises :class:`ConcurrentRunError`
once the lock is no longer this run's. The job commit calls it right before the manifest write, so a
run that lost its lock never commits.

* Local disks: ``fcntl.flock`` on ``OUT/_lock``. The OS drops it when the process dies, however it dies,
  and never while the process lives: ``check()`` has nothing to do.
* Object stores (S3): a *lease*, the object ``OUT/_lock`` holding the owner's id, host, pid and an
  expiry (``LEASE_SECONDS`` ahead). It is created put-if-absent (``If-None-Match: *``) and taken over
  by the next run when it has expired or when its owner is a dead process on this very host
  (liveness check). A heartbeat thread renews it every third of its duration with a compare-and-swap
  on its ETag (``If-Match``):

  - a renewal that fails for any other reason (network, 5xx, throttling, credentials) is retried with
    capped exponential backoff until the lease would expire; only then is the lease lost;
  - a renewal refused by the compare-and-swap is lost at once, unless the object still names this
    owner (a renewal that landed although its answer was lost, and the client's retry then failed the
    condition it had changed: adopted as this renewal), as is a deleted lock object; the same holds
    for the put-if-absent that takes the lease;
  - ``check()`` renews synchronously: after it passes, the lease is good for its full duration, which
    no well-behaved run cuts short. What remains is a driver paused for longer than that between
    ``check()`` and the manifest write; the manifest's own put-if-absent / compare-and-swap still
    keeps two generations from being committed over the same predecessor;
  - on release the object is deleted only if it still names this owner; a lost lease is left alone.
* ``memory://`` and other single-process stores: a process-wide set; it cannot be lost either.

>>> with output_lock(fs, "/data/out") as lock:    # doctest: +SKIP
...     ...                                        # this process alone writes /data/out
...     lock.check()                               # still ours? (ConcurrentRunError if not)
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from .datasets import is_local, is_s3, precondition_failed
from .errors import ConcurrentRunError

LOCK = "_lock"
LEASE_SECONDS = 30.0

log = logging.getLogger("engine")




class OutputLock:
    """The lock :func:`output_lock` holds; ``check()`` raises ConcurrentRunError once it is lost."""

    kind = "process"

    def __init__(self, out: str) -> None:
        self.out = out

    @property
    def lost(self) -> str | None:
        """Why the lock was lost, or None while it is held."""
        return None

    def check(self) -> None:
        """Raise ConcurrentRunError if this run no longer holds the lock (a flock or process lock cannot be lost)."""


_WAIT: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("engine_lock_wait", default=None)


@contextlib.contextmanager
def lock_wait(seconds: float | None, *, since: float | None = None) -> Iterator[None]:
    """Within the block, :func:`output_lock` calls that give no ``wait`` wait for a lock another run
    holds until ``seconds`` after ``since`` (a ``time.monotonic()``; default now), as
    ``mapreduce run --wait-lock`` does; None: fail at once."""
    token = _WAIT.set(None if seconds is None else
                      (float(seconds), (time.monotonic() if since is None else since) + float(seconds)))
    try:
        yield
    finally:
        _WAIT.reset(token)


@contextlib.contextmanager
def output_lock(fs, out: str, *, lease_seconds: float = LEASE_SECONDS,
                wait: float | None = None) -> Iterator[OutputLock]:
    """Hold the output's lock for the duration of the block; ConcurrentRunError if a live run has it.

    ``wait`` (default: the :func:`lock_wait` in force, else none): seconds to wait for a live run's
    lock, polling (every 0.5 s, growing to 5 s) and logging who holds it (once a minute); when the
    time is up, the same ConcurrentRunError, saying how long it waited."""
    limit = (float(wait), time.monotonic() + float(wait)) if wait is not None else _WAIT.get()
    delay, announced = 0.5, None
    while True:
        stack = contextlib.ExitStack()
        try:
            lock = stack.enter_context(_acquire(fs, out, lease_seconds))
        except ConcurrentRunError as exc:
            now = time.monotonic()
            if limit is None or not limit[0]:
                raise
            total, deadline = limit
            if now >= deadline:
                raise ConcurrentRunError(f"{exc} (waited {total:g}s for it)") from None
            if announced is None or now - announced >= 60:
                log.warning("%s; waiting for it to end (%.0fs left of %gs)", str(exc).split(";")[0],
                            deadline - now, total)
                announced = now
            time.sleep(max(0.0, min(delay, deadline - now)))
            delay = min(delay * 1.5, 5.0)
            continue
        with stack:
            yield lock
        return


def wait_for_release(fs, out: str, wait: float) -> None:
    """Return once no live run holds ``out``'s lock, waiting up to ``wait`` seconds (as
    :func:`output_lock`); at once when there is no lock object. A run that waited for another run of
    the same job to commit then sees that output, and is a no-op instead of a second writer."""
    try:
        if not fs.exists(posixpath.join(out, LOCK)):
            return
    except Exception:  # noqa: BLE001 - cannot tell: the run's own lock decides
        return
    with output_lock(fs, out, wait=wait):
        pass


@contextlib.contextmanager
def _acquire(fs, out: str, lease_seconds: float) -> Iterator[OutputLock]:
    if is_local(fs):
        with _flock(out):
            yield _FlockLock(out)
    elif is_s3(fs):
        lease = _Lease(fs, out, lease_seconds)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()
    else:
        # memory:// and other single-process stores: a process-wide lock is exact.
        with _process_lock(out):
            yield OutputLock(out)


class _FlockLock(OutputLock):
    kind = "flock"


@contextlib.contextmanager
def _flock(out: str) -> Iterator[None]:
    import fcntl
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise ConcurrentRunError(f"another run is writing {out} right now (lock {path}"
                                     + (f" held by {holder}" if holder else "")
                                     + "); wait for it to finish or write elsewhere") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


_PROCESS_LOCKS: set[str] = set()
_PROCESS_GUARD = threading.Lock()


@contextlib.contextmanager
def _process_lock(out: str) -> Iterator[None]:
    with _PROCESS_GUARD:
        if out in _PROCESS_LOCKS:
            raise ConcurrentRunError(f"another run in this process is writing {out}")
        _PROCESS_LOCKS.add(out)
    try:
        yield
    finally:
        with _PROCESS_GUARD:
            _PROCESS_LOCKS.discard(out)


# ---------------------------------------------------------------------------------------------
# S3 lease


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _put(fs, path: str, body: bytes, **conditions) -> str:
    """PUT ``body`` at ``path`` under the given conditions; returns the new ETag."""
    bucket, key = _split(path)
    response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **conditions)
    return response.get("ETag", "")


def _read(fs, path: str) -> tuple[bytes, str] | None:
    """``(body, etag)`` of the lock object, or None. The ETag is read first: if the object changes in
    between, a compare-and-swap on it fails instead of overwriting something this run never saw."""
    bucket, key = _split(path)
    try:
        etag = fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
        return fs.cat_file(path), etag
    except FileNotFoundError:
        return None



def _holder(body: bytes | None) -> dict:
    try:
        doc = json.loads(body) if body else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class _Lost(Exception):
    """The lease now belongs to someone else (or its object is gone)."""


class _Lease(OutputLock):
    kind = "lease"

    def __init__(self, fs, out: str, seconds: float) -> None:
        super().__init__(out)
        self.fs, self.seconds = fs, float(seconds)
        self.path = posixpath.join(out, LOCK)
        self.owner = uuid.uuid4().hex
        self.etag = ""                 # ETag of the lease object as this run last wrote it
        self.expires = 0.0             # the expiry it carries
        self.last_error = ""           # the latest transient renewal failure, for messages
        self.renewals = 0
        self._reason: str | None = None
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> str | None:
        return self._reason

    def _body(self) -> tuple[bytes, float]:
        expires = time.time() + self.seconds
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": expires}).encode(), expires

    # -- acquire / release ----------------------------------------------------------------------
    def acquire(self) -> None:
        body, expires = self._body()
        try:
            self.etag = _put(self.fs, self.path, body, IfNoneMatch="*")
        except Exception as exc:  # noqa: BLE001 - classified below
            if not precondition_failed(exc):
                raise
            existing = _read(self.fs, self.path)
            holder = _holder(existing[0]) if existing else {}
            if existing is not None and holder.get("owner") == self.owner:
                # Our own put landed, its answer was lost, and the retry failed the condition it had set.
                self._adopt(existing, holder)
                return
            dead = holder.get("expires", 0) < time.time() or (
                holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))))
            if existing is None or not dead:
                raise ConcurrentRunError(
                    f"another run is writing {self.out} right now (lease held by pid {holder.get('pid')} on "
                    f"{holder.get('host')}, expires in {max(0.0, holder.get('expires', 0) - time.time()):.0f}s); "
                    "wait for it to finish or write elsewhere") from None
            body, expires = self._body()
            try:
                self.etag = _put(self.fs, self.path, body, IfMatch=existing[1])
            except Exception as exc2:  # noqa: BLE001
                if precondition_failed(exc2):
                    now = _read(self.fs, self.path)
                    if now is not None and _holder(now[0]).get("owner") == self.owner:   # ours, answer lost
                        self._adopt(now, _holder(now[0]))
                        return
                    raise ConcurrentRunError(f"another run took over the expired lock on {self.out} first") from None
                raise
        self.expires = expires
        self._start_heartbeat()

    def _adopt(self, existing: tuple[bytes, str], holder: dict) -> None:
        """Hold the lease this run's own write created (known by its owner token)."""
        self.etag = existing[1]
        self.expires = float(holder.get("expires", time.time() + self.seconds))
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._heartbeat, name=f"engine-lease-{self.out}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.seconds)
        with self._guard:
            if self._reason is not None:
                log.warning("the lease on %s was lost during the run (%s)", self.out, self._reason)
                return
            with contextlib.suppress(Exception):
                existing = _read(self.fs, self.path)
                if existing is not None and _holder(existing[0]).get("owner") == self.owner:
                    self.fs.rm_file(self.path)

    # -- renewals -------------------------------------------------------------------------------
    def _renew_once(self) -> None:
        """One compare-and-swap renewal: _Lost on a takeover, the store's own error when it failed otherwise."""
        with self._guard:
            if self._reason is not None:
                raise _Lost(self._reason)
            for _ in range(2):
                body, expires = self._body()
                try:
                    self.etag = _put(self.fs, self.path, body, IfMatch=self.etag)
                    self.expires = expires
                    self.renewals += 1
                    return
                except Exception as exc:  # noqa: BLE001 - classified
                    if not (precondition_failed(exc) or isinstance(exc, FileNotFoundError)):
                        raise
                existing = _read(self.fs, self.path)
                holder = _holder(existing[0]) if existing else {}
                if existing is not None and holder.get("owner") == self.owner:
                    # A renewal of ours landed although its answer was lost (the client's retry then failed the
                    # condition that write had changed): adopt it. It is this renewal, or an earlier one whose
                    # expiry is too close: then swap again.
                    self.etag = existing[1]
                    self.expires = float(holder.get("expires", self.expires))
                    if self.expires - time.time() > self.seconds / 2:
                        self.renewals += 1
                        return
                    continue
                self._reason = ("the lock object was deleted by someone else" if existing is None else
                                f"taken over by pid {holder.get('pid')} on {holder.get('host')} "
                                f"(owner {str(holder.get('owner'))[:8]})")
                raise _Lost(self._reason)
            self._reason = "the lease object keeps changing under this run"
            raise _Lost(self._reason)

    def _renew(self, until: float) -> bool:
        """Renew, retrying other failures with capped exponential backoff until ``until``; False if it could not."""
        delay = 0.25
        while True:
            try:
                self._renew_once()
                return True
            except _Lost:
                return False
            except Exception as exc:  # noqa: BLE001 - transient until the lease would expire
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("renewing the lease on %s failed (%s); retrying", self.out, self.last_error)
            if time.time() + delay >= until or self._stop.wait(delay):
                return False
            delay = min(delay * 2, max(0.25, self.seconds / 10))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            if self._renew(until=self.expires - min(1.0, self.seconds / 10)):
                continue
            if self._stop.is_set():
                return
            with self._guard:
                if self._reason is None:
                    self._reason = (f"it could not be renewed before it expired "
                                    f"({self.last_error or 'no answer from the store'})")
            return

    def check(self) -> None:
        """Renew now; raise ConcurrentRunError if the lease was taken over, or expires too soon to be sure."""
        margin = self.seconds / 3
        ok = self._renew(until=min(self.expires - margin, time.time() + margin))
        if not ok and self._reason is None and time.time() >= self.expires - margin:
            with self._guard:
                self._reason = (f"it could not be renewed and expires in {max(0.0, self.expires - time.time()):.0f}s "
                                f"({self.last_error or 'no answer from the store'})")
        if self._reason is not None:
            raise ConcurrentRunError(f"lost the output lease at {self.path} ({self._reason}); nothing was committed. "
                                     f"Another run may be writing {self.out}: rerun this job after it ends (the "
                                     "next run removes what this one left)")
        # not ok but still valid for a while: the store is flaky, yet nobody can take the lease before it expires


__all__ = ["output_lock", "OutputLock", "LOCK", "LEASE_SECONDS", "lock_wait", "wait_for_release"]
