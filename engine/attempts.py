"""What one task attempt says about itself when it fails: where it ran, when, and where the user's code raised.

The driver's stage executor wraps every attempt's task function in :func:`run_attempt`. An attempt
that raises leaves the exception as it was (type, message, traceback, the engine's own marks) and
adds one attribute, ``engine_attempt``, an :class:`AttemptInfo`: the worker it ran on, its start and
stop times, the CPU seconds its thread used, and the frame of the user's code it raised in
(``None`` when no user code was running: the engine reading a file, a worker disconnecting).

Which code is the user's is known where the engine calls it: a task calls each of the job's
functions inside :class:`user_code`, which marks an exception leaving the call with the place it was
raised (the innermost frame of the job's own code, wherever it is installed). An exception raised
outside such a call is the user's only when a frame of the user's files (not the engine's, the
standard library's or an installed package's) is on its traceback.

The attribute travels with the pickled exception from a worker to the driver, where the retry policy
(:mod:`engine.retrypolicy`) tells a deterministic user error (the same exception, message and frame
from two workers) from a failure worth retrying, and the report names the worker of every failed
attempt. Some exceptions do not keep attributes when pickled (``json.JSONDecodeError`` has its own
``__reduce__``), some cannot be pickled at all and a message past dask's error length is cut: such an
exception leaves a worker inside a :class:`~engine.errors.RemoteTaskError`, which carries the pickled
original (when it pickles), its marks, class names, message and traceback; the driver's
:func:`unwrap` gives back the original with its marks, or the carrier when the original cannot be
rebuilt. An exception that never passed through an attempt (the scheduler's ``KilledWorker``, a
closed connection, a cancelled task) has no ``engine_attempt``.

While an attempt runs, :func:`running_cpu` tells how much CPU its thread has used so far (the
driver's CPU budget counts running attempts, not only finished ones).

The wrapper also gives the attempt its own scope of counters (:mod:`engine.counters`): what the
job's code counted goes back in the result (``result["counters"]``) of an attempt that returns, and
is dropped with one that raises.

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

import itertools
import os
import pickle
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import counters, ratelimit
from .errors import RemoteTaskError

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


# ---------------------------------------------------------------------------------------------
# Whose code raised


def is_user_file(filename: str) -> bool:
    """Whether code from ``filename`` is the user's by its path: not the engine, the standard library
    or an installed package. Code shipped by value keeps its file name, or a ``<dynamic...>`` one.
    (Job code installed as a package is told by :class:`user_code` instead.)"""
    if not filename:
        return False
    if filename.startswith("<"):
        return filename.startswith("<dynamic")
    f = os.path.abspath(filename)
    if f.startswith(_ENGINE_DIR) or f.startswith(_LIBRARY_DIRS):
        return False
    return f"{os.sep}site-packages{os.sep}" not in f and f"{os.sep}dist-packages{os.sep}" not in f


def _place(tb: Any) -> str:
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{code.co_name}:{tb.tb_lineno}"


def _is_engine(filename: str) -> bool:
    return bool(filename) and not filename.startswith("<") and os.path.abspath(filename).startswith(_ENGINE_DIR)


def user_frame(tb: Any) -> str | None:
    """``"file:function:line"`` of the innermost user frame of traceback ``tb`` (None if there is none)."""
    found = None
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            found = _place(tb)
        tb = tb.tb_next
    return found


def called_frame(tb: Any) -> str:
    """The place in the job's code that traceback ``tb`` (of a call the engine made into the job's
    code: its first entry is the engine's calling frame) raised in: the innermost frame of the user's
    files, or of the package the called function belongs to (job code installed under site-packages),
    else the called function itself."""
    entry = None
    package = None
    found = None
    tb = tb.tb_next if tb is not None else None
    while tb is not None:
        frame = tb.tb_frame
        filename = frame.f_code.co_filename
        if entry is None and not _is_engine(filename):       # past the engine's own wrappers
            entry = _place(tb)
            package = str(frame.f_globals.get("__name__") or "").partition(".")[0] or None
        if entry is not None and not _is_engine(filename):
            if is_user_file(filename) or (
                    package and package not in ("builtins", "__main__")
                    and str(frame.f_globals.get("__name__") or "").partition(".")[0] == package):
                found = _place(tb)
        tb = tb.tb_next
    return found or entry or "the job's function"


class user_code:
    """``with user_code():`` around the engine's call of a job's function: an exception leaving it was
    raised by the job's code, and is marked with the place (``engine_user``) it was raised in."""

    __slots__ = ()

    def __enter__(self) -> user_code:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception) and getattr(exc, "engine_user", None) is None:
            try:
                exc.engine_user = called_frame(tb)
            except Exception:  # noqa: BLE001 - an exception that takes no attributes stays as it is
                pass
        return False


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


# ---------------------------------------------------------------------------------------------
# Running attempts' CPU

_RUNNING: dict[int, tuple[Any, int | None, float, float]] = {}    # n -> (tag, CPU clock, CPU at start, start)
_numbers = itertools.count()


def thread_cpu_clock() -> int | None:
    """This thread's CPU clock, readable from other threads with ``time.clock_gettime`` (None where
    there is none)."""
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None


def running_cpu(tag: Any) -> tuple[float, int]:
    """``(CPU seconds used so far, count)`` of the attempts tagged ``tag`` running in this process.
    Where a thread's CPU clock cannot be read, its attempt counts its wall time so far (an upper bound:
    one thread uses at most one CPU)."""
    total, count, now = 0.0, 0, time.time()
    for entry in list(_RUNNING.values()):
        if entry[0] != tag:
            continue
        clock, cpu0, start = entry[1], entry[2], entry[3]
        used = None
        if clock is not None:
            try:
                used = max(0.0, time.clock_gettime(clock) - cpu0)
            except OSError:          # the attempt ended meanwhile
                continue
        total += now - start if used is None else used
        count += 1
    return total, count


# ---------------------------------------------------------------------------------------------
# The attempt


def run_attempt(func: Any, share: int, *args: Any, tag: Any = None) -> Any:
    """``func(*args)``, the attempt's task function; an exception it raises leaves with ``engine_attempt``.

    ``share``: how many attempts of this stage may run at once (for rate-limited steps); ``tag``: the
    run's name for its attempts while they run (:func:`running_cpu`)."""
    start, cpu0 = time.time(), time.thread_time()
    number = next(_numbers)
    _RUNNING[number] = (tag, thread_cpu_clock(), cpu0, start)
    carrier = None
    try:
        # the attempt's counters (engine.counters) travel in its result; an attempt that raises drops them
        with ratelimit.sharing(share), counters.collect() as counts:
            result = func(*args)
        if counts and isinstance(result, dict):
            result["counters"] = dict(counts)
        return result
    except BaseException as exc:
        if getattr(exc, "engine_attempt", None) is None:
            try:
                exc.engine_attempt = AttemptInfo(worker_name(), start, time.time(), time.thread_time() - cpu0,
                                                 _frame_of(exc))
            except Exception:  # noqa: BLE001 - an exception that takes no attributes stays as it is
                pass
        carrier = _carrier(exc)
        if carrier is None:
            raise
    finally:
        _RUNNING.pop(number, None)
    raise carrier      # (outside the handler: the carrier holds the original, not as its context)


def _frame_of(exc: BaseException) -> str | None:
    marked = getattr(exc, "engine_user", None)
    return marked if marked else user_frame(exc.__traceback__)


# ---------------------------------------------------------------------------------------------
# From a worker to the driver


def _marks(exc: BaseException) -> dict[str, Any]:
    return {k: v for k, v in getattr(exc, "__dict__", {}).items() if k.startswith("engine_")}


def _max_error_length() -> int:
    try:
        import dask.config
        return int(dask.config.get("distributed.admin.max-error-length", 10_000))
    except Exception:  # noqa: BLE001
        return 10_000


def _pickled(exc: BaseException) -> bytes | None:
    try:
        return pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - perhaps by value (a class defined in the job's code)
        pass
    try:
        import cloudpickle
        return cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001
        return None


def _carrier(exc: BaseException) -> RemoteTaskError | None:
    """For an attempt on a dask worker: the carrier its exception must travel in to keep its marks
    (None: it travels as it is). Not for the driver's own threads, where nothing is pickled."""
    info = getattr(exc, "engine_attempt", None)
    if info is None or not isinstance(exc, Exception) or isinstance(exc, RemoteTaskError) \
            or str(getattr(info, "worker", "")).startswith("driver/"):
        return None
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        message = ""
    payload = _pickled(exc)
    if payload is not None and len(message) <= _max_error_length():
        try:
            back = pickle.loads(payload)
            if _marks(back).keys() >= _marks(exc).keys():
                return None               # it keeps its marks: as it is
        except Exception:  # noqa: BLE001 - it does not come back: carried
            pass
    limit = _max_error_length() // 2
    if len(message) > limit:
        message = message[:limit] + " ... (cut)"
    kind = type(exc)
    carrier = RemoteTaskError(f"{kind.__name__}: {message}", type_name=kind.__name__, qualname=kind.__qualname__,
                              module=kind.__module__, class_names=tuple(c.__name__ for c in kind.__mro__),
                              message=message, payload=payload, marks=_marks(exc))
    for name, value in carrier.marks.items():
        setattr(carrier, name, value)
    return carrier.with_traceback(exc.__traceback__)


def unwrap(exc: BaseException) -> BaseException:
    """On the driver: the original exception of a carried one, with its marks and traceback (the
    carrier itself when the original cannot be rebuilt here); any other exception as it is."""
    if not isinstance(exc, RemoteTaskError) or exc.payload is None:
        return exc
    try:
        original = pickle.loads(exc.payload)
        for name, value in exc.marks.items():
            setattr(original, name, value)
    except Exception:  # noqa: BLE001 - a class this process cannot import: the carrier stands for it
        return exc
    if exc.__traceback__ is not None:
        original = original.with_traceback(exc.__traceback__)
    return original


def class_names(exc: BaseException) -> tuple[str, ...]:
    """The names of ``exc``'s class and its bases (of the original's, for a carried exception)."""
    names = getattr(exc, "class_names", None) if isinstance(exc, RemoteTaskError) else None
    return tuple(names) if names else tuple(c.__name__ for c in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    """``"Class: message"`` of ``exc`` (of the original's, for a carried exception)."""
    if isinstance(exc, RemoteTaskError):
        return f"{exc.type_name}: {exc.message}"
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        return type(exc).__name__


__all__ = ["AttemptInfo", "run_attempt", "user_code", "user_frame", "called_frame", "is_user_file", "worker_name",
           "running_cpu", "thread_cpu_clock", "unwrap", "class_names", "describe"]
