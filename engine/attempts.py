"""What one task attempt says about itself when it fails: where it ran, when, and where the user's code raised.

The driver's stage executor wraps every attempt's task function in :func:`run_attempt`. An attempt
that raises leaves the exception as it was (type, message, traceback, the engine's own marks) and
adds one attribute, ``engine_attempt``, an :class:`AttemptInfo`: the worker it ran on, its start and
stop times, the CPU seconds its thread used, and the innermost frame of the user's code on the stack
when it raised (``None`` when no user code was running: the engine reading a file, a worker
disconnecting). The attribute travels with the pickled exception from a worker to the driver, where
the retry policy (:mod:`engine.retrypolicy`) tells a deterministic user error (the same exception,
message and frame from two workers) from a failure worth retrying, and the report names the worker
of every failed attempt. An exception that never passed through an attempt (the scheduler's
``KilledWorker``, a closed connection, a cancelled task) has no such attribute.

The wrapper also tells the attempt how many attempts of its stage may run at once (``share``), which
a rate-limited map step (:mod:`engine.ratelimit`) divides its stage's rate by.

>>> def boom(x, partition, attempt):
...     raise ValueError(f"bad {x}")
>>> try:
...     run_attempt(boom, 1, "row", 0, 0)
... except ValueError as exc:
...     info = exc.engine_attempt
>>> info.worker.startswith("driver/"), info.stop >= info.start
(True, True)
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import ratelimit

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple({os.path.abspath(p) + os.sep for p in (
    sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib"),
    sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")) if p})


@dataclass(frozen=True)
class AttemptInfo:
    """Where and when a failed attempt ran; ``frame``: ``"file:function:line"`` of the innermost frame
    of the user's code on the stack when it raised (None: it raised outside the user's code)."""

    worker: str
    start: float
    stop: float
    cpu: float
    frame: str | None = None


def is_user_file(filename: str) -> bool:
    """Whether code from ``filename`` is the user's: not the engine, the standard library or an installed
    package. Code shipped by value keeps its file name, or a ``<dynamic...>`` one."""
    if not filename:
        return False
    if filename.startswith("<"):
        return filename.startswith("<dynamic")
    f = os.path.abspath(filename)
    if f.startswith(_ENGINE_DIR) or f.startswith(_LIBRARY_DIRS):
        return False
    return f"{os.sep}site-packages{os.sep}" not in f and f"{os.sep}dist-packages{os.sep}" not in f


def user_frame(tb: Any) -> str | None:
    """``"file:function:line"`` of the innermost user frame of traceback ``tb`` (None if there is none)."""
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if is_user_file(code.co_filename):
            found = f"{os.path.basename(code.co_filename)}:{code.co_name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def worker_name() -> str:
    """The dask worker's address, or ``driver/<thread>`` for an attempt in the driver's thread pool."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker
            return get_worker().address
        except (ImportError, ValueError):
            pass
    from .local import WORKER
    return f"{WORKER}/{threading.current_thread().name}"


def run_attempt(func: Any, share: int, *args: Any) -> Any:
    """``func(*args)``, the attempt's task function; an exception it raises leaves with ``engine_attempt``.

    ``share``: how many attempts of this stage may run at once (for rate-limited steps)."""
    start, cpu0 = time.time(), time.thread_time()
    try:
        with ratelimit.sharing(share):
            return func(*args)
    except BaseException as exc:
        if getattr(exc, "engine_attempt", None) is None:
            try:
                exc.engine_attempt = AttemptInfo(worker_name(), start, time.time(), time.thread_time() - cpu0,
                                                 user_frame(exc.__traceback__))
            except Exception:  # noqa: BLE001 - an exception that takes no attributes stays as it is
                pass
        raise


__all__ = ["AttemptInfo", "run_attempt", "user_frame", "is_user_file", "worker_name"]
