"""Counters: a job's code counts things while it runs, as Hadoop's and mrjob's counters do.

Inside a map, combine or reduce function (a streaming reduce, a cogroup function and the maps fused
into a join too), ``engine.counter(name).add(n)`` adds ``n`` to the counter ``name``; the run's
totals are in ``result.report.counters`` (a dict ``name -> int``), on the report's summary, in the
run's history record (``mapreduce history``, ``mapreduce show``), in ``mapreduce run --json`` and
in the metrics export (``mapreduce_counter{name="..."}``)::

    >>> import engine, pyarrow.compute as pc
    >>> def parse(t):
    ...     dates = pc.strptime(t["day"], format="%Y-%m-%d", unit="s", error_is_null=True)
    ...     engine.counter("bad_dates").add(pc.sum(pc.is_null(dates)).as_py() or 0)
    ...     return t.filter(pc.is_valid(dates))
    >>> result = Job("daily").map(parse).reduce(by="day", aggs={"n": agg.count()}).run(IN, OUT)  # doctest: +SKIP
    >>> result.report.counters                                                                    # doctest: +SKIP
    {'bad_dates': 17}

What a total counts, step by step:

1. Each task attempt counts into its own scope, private to it (its thread); nothing leaves the
   attempt while it runs.
2. An attempt that returns carries its counts in its result to the driver. An attempt that
   raises, or is cancelled, carries nothing: its counts are dropped with it.
3. The driver adds the counts of the one attempt per task whose result it keeps (the first that
   finished): a failed attempt, the attempts before a successful retry and a speculative copy that
   lost count nothing. With ``on_error="reject"``, a call of the job's function that raised counts
   nothing either; the calls on parts of its rows that succeed count as any call does.
4. Results go into the run's journal with their counts, so a resumed run (``--resume``) keeps the
   counts of the tasks it reuses and adds those of the tasks it runs again.

So a total says what the committed output's own computation counted, each input row once, however
often tasks ran. One exception is the job's: a combine may run zero, one or many times
(:meth:`engine.job.Job.combine`), so a counter in a combine counts how often it ran.

Outside a task (the driver's own code, a test calling a map function directly; also a thread the
job's code starts itself, unless it runs its work with ``contextvars.copy_context().run``) a
counter counts into a bucket of the calling process that no run reads (:func:`local_counts`). The
engine's own check of the job on a few input rows, before the run, counts nowhere.
:func:`collect` gives a block its own scope, which is how a job's function is unit-tested::

    >>> with collect() as counts:
    ...     counter("seen").add(3)
    ...     counter("seen").add()
    >>> counts
    {'seen': 4}

Names are text (at most :data:`MAX_NAME` characters); amounts are whole numbers (an ``int``, a NumPy
integer; negative ones subtract). A mistake is a :class:`~engine.errors.CounterError`, which fails
the run at once. An attempt may use at most :data:`MAX_NAMES` distinct names (a name built from a
row's value is the usual mistake: counters are for a few figures, not for grouping).

This module never imports dask or pyarrow.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import CounterError

MAX_NAME = 200          # characters of a counter's name
MAX_NAMES = 1000        # distinct counter names in one attempt (Hadoop: 120 per job by default)


class _Scope:
    """The counts of one attempt (or of one part of it); safe to add to from several threads."""

    __slots__ = ("counts", "_lock")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, n: int) -> None:
        with self._lock:
            counts = self.counts
            if name not in counts and len(counts) >= MAX_NAMES:
                raise CounterError(f"engine.counter({name!r}): more than {MAX_NAMES} distinct counter names in one "
                                   "task; counters are for a few figures (bad rows, skipped records), not one per "
                                   "value: count per value with a reduce instead (Job.reduce(by=..., aggs=...))")
            counts[name] = counts.get(name, 0) + n

    def merge(self, counts: Mapping[str, int]) -> None:
        for name, n in counts.items():
            self.add(name, n)


_PROCESS = _Scope()         # counts made outside any scope (no run reads them)
_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("engine_counters", default=None)


def _scope() -> _Scope:
    return _current.get() or _PROCESS


class Counter:
    """A named counter; ``add(n)`` counts into the running task attempt (see the module's docstring)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def add(self, n: int = 1) -> None:
        """Add ``n`` (a whole number, default 1) to this counter."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise CounterError(f"engine.counter({self.name!r}).add() takes a whole number, got {n!r} "
                               f"({type(n).__name__}); for a count of rows pass e.g. "
                               "pc.sum(mask).as_py() or 0, or int(...)")
        _scope().add(self.name, int(n))

    @property
    def value(self) -> int:
        """What this counter holds so far in the current scope (the running attempt's own count in a
        task; the process's bucket, or a :func:`collect` block's, outside one)."""
        return _scope().counts.get(self.name, 0)

    def __repr__(self) -> str:
        return f"Counter({self.name!r})"


def counter(name: str) -> Counter:
    """The counter ``name``; ``engine.counter("bad_dates").add(n)`` inside a job's function.

    >>> import engine
    >>> def keep_valid(t):                          # a map function
    ...     bad = pc.sum(pc.is_null(t["date"])).as_py() or 0
    ...     engine.counter("bad_dates").add(bad)
    ...     return t.filter(pc.is_valid(t["date"]))

    The run adds up what the winning attempt of each task counted: ``result.report.counters``.
    """
    if not isinstance(name, str) or not name.strip():
        raise CounterError(f"engine.counter() takes a name (non-empty text), got {name!r}; e.g. "
                           "engine.counter('bad_dates').add(n)")
    if len(name) > MAX_NAME:
        raise CounterError(f"engine.counter(): a name has at most {MAX_NAME} characters, got {len(name)} "
                           f"({name[:40]!r}...)")
    return Counter(name)


# ---------------------------------------------------------------------------------------------
# Scopes (the engine's side)


@contextlib.contextmanager
def collect() -> Iterator[dict[str, int]]:
    """A scope of its own for the block: counters added inside count into the dict it yields (and
    nowhere else). The engine runs each task attempt inside one."""
    scope = _Scope()
    token = _current.set(scope)
    try:
        yield scope.counts
    finally:
        _current.reset(token)


@contextlib.contextmanager
def tentative(keep: bool = True) -> Iterator[None]:
    """Counts made in the block go to the enclosing scope only if the block ends without an exception
    (and ``keep``): a call whose output is used counts, one that raised (or whose output is thrown
    away) does not."""
    outer = _scope()
    with collect() as counts:
        yield
    if keep and counts:
        outer.merge(counts)


def restart() -> None:
    """Forget what the current attempt counted so far (it starts over on the same input); nothing
    outside a task's scope."""
    scope = _current.get()
    if scope is not None:
        with scope._lock:
            scope.counts.clear()


def local_counts() -> dict[str, int]:
    """What the process counted outside any scope (a copy)."""
    with _PROCESS._lock:
        return dict(_PROCESS.counts)


# ---------------------------------------------------------------------------------------------
# The driver's side


def checked(value: Any) -> dict[str, int]:
    """The counts a task result carries (``result["counters"]``), checked: names to whole numbers.
    ``ValueError`` for anything else (a journal entry is data: it is checked before use)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"counters must map names to whole numbers, got {type(value).__name__}")
    out: dict[str, int] = {}
    for name, n in value.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise ValueError(f"a counter's name must be text of 1 to {MAX_NAME} characters, got {name!r}")
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"counter {name!r} holds {n!r}, not a whole number")
        out[name] = n
    if len(out) > MAX_NAMES:
        raise ValueError(f"a task result holds {len(out)} counters, more than {MAX_NAMES}")
    return out


def add_result(totals: dict[str, int], result: Mapping[str, Any]) -> None:
    """Add the counts of a kept task result (a winner, or a journaled one a resumed run reuses) to
    ``totals`` (the run report's ``counters``)."""
    for name, n in checked(result.get("counters")).items():
        totals[name] = totals.get(name, 0) + n


def summary_line(counts: Mapping[str, int], limit: int = 20) -> str:
    """``"counters: bad_dates=17, skipped=3"`` (sorted by name; ``""`` for none)."""
    if not counts:
        return ""
    items = sorted(counts.items())
    text = ", ".join(f"{k}={v:,}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more in report.counters)"
    return f"counters: {text}"


__all__ = ["counter", "Counter", "collect", "tentative", "restart", "local_counts", "checked", "add_result",
           "summary_line", "MAX_NAME", "MAX_NAMES"]
