"""One live run per output: an exclusive lock that a killed run never leaves behind.

* Local disks: ``fcntl.flock`` on ``OUT/_lock``. The OS drops it when the process dies, however it dies.
* Object stores (S3): a *lease*, the object ``OUT/_lock`` holding the owner's id, host, pid and an
  expiry. It is created put-if-absent (``If-None-Match: *``), renewed by a heartbeat thread with a
  compare-and-swap on its ETag (``If-Match``), and taken over by the next run when it has expired or
  when its owner is a dead process on this very host (liveness check).

>>> with output_lock(fs, "/data/out"):            # doctest: +SKIP
...     ...                                        # this process alone writes /data/out
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from .datasets import is_local
from .errors import ConcurrentRunError

LOCK = "_lock"
LEASE_SECONDS = 30.0


def _is_s3(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocol)


@contextlib.contextmanager
def output_lock(fs, out: str, *, lease_seconds: float = LEASE_SECONDS) -> Iterator[None]:
    """Hold the output's lock for the duration of the block; ConcurrentRunError if a live run has it."""
    if is_local(fs):
        with _flock(out):
            yield
    elif _is_s3(fs):
        with _lease(fs, out, lease_seconds):
            yield
    else:
        # memory:// and other single-process stores: a process-wide lock is exact.
        with _process_lock(out):
            yield


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


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'   # single-part PUT: ETag is the MD5 of the body


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _put(fs, path: str, body: bytes, **conditions) -> None:
    bucket, key = _split(path)
    fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **conditions)


def _precondition_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, FileExistsError) or "PreconditionFailed" in text or "412" in text \
        or "ConditionalRequestConflict" in text


@contextlib.contextmanager
def _lease(fs, out: str, seconds: float) -> Iterator[None]:
    path = posixpath.join(out, LOCK)
    owner = uuid.uuid4().hex

    def body() -> bytes:
        return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + seconds}).encode()

    current = body()
    try:
        _put(fs, path, current, IfNoneMatch="*")
    except Exception as exc:  # noqa: BLE001 - classified below
        if not _precondition_failed(exc):
            raise
        try:
            existing = fs.cat_file(path)
        except FileNotFoundError:
            existing = None
        holder = json.loads(existing) if existing else {}
        dead = holder.get("expires", 0) < time.time() or (
            holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))))
        if existing is None or not dead:
            raise ConcurrentRunError(
                f"another run is writing {out} right now (lease held by pid {holder.get('pid')} on "
                f"{holder.get('host')}, expires in {max(0.0, holder.get('expires', 0) - time.time()):.0f}s); "
                "wait for it to finish or write elsewhere") from None
        try:
            _put(fs, path, current, IfMatch=_etag(existing))
        except Exception as exc2:  # noqa: BLE001
            if _precondition_failed(exc2):
                raise ConcurrentRunError(f"another run took over the expired lock on {out} first") from None
            raise
    stop = threading.Event()
    lost: list[str] = []

    def heartbeat() -> None:
        nonlocal current
        while not stop.wait(seconds / 3):
            nxt = body()
            try:
                _put(fs, path, nxt, IfMatch=_etag(current))
                current = nxt
            except Exception as exc:  # noqa: BLE001 - recorded; the commit checks it
                lost.append(f"{type(exc).__name__}: {exc}")
                return
    thread = threading.Thread(target=heartbeat, name=f"engine-lease-{out}", daemon=True)
    thread.start()
    try:
        yield
        if lost:
            raise ConcurrentRunError(f"lost the lease on {out} during the run ({lost[0]})")
    finally:
        stop.set()
        thread.join(timeout=5)
        if not lost:
            with contextlib.suppress(Exception):
                fs.rm_file(path)


__all__ = ["output_lock", "LOCK"]
