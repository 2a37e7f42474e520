"""Pacing the rows a map function is fed, for stages that call external systems.

``Job.map(fn, rate_limit=1000)`` feeds ``fn`` at most about 1,000 rows per second across the whole
run. Each task paces itself with a token bucket of its own (no coordination between workers): its
rate is the stage's rate divided by the number of the stage's tasks that can run at once, which the
driver works out per stage as ``min(tasks, cluster threads, max_tasks)`` and hands to every attempt
(:func:`engine.attempts.run_attempt` sets :func:`share`). The bucket starts empty and admits its
input in slices of at most an eighth of a second of its rate, so by any time ``t`` after a task
first fed the function it has fed at most ``rate × t`` rows, and in any one second at most its rate
plus one slice.

The function paces itself: inside an attempt, calling a :class:`RateLimited` takes its rows from the
attempt's bucket for it, calling it on slices of a larger table and concatenating what it returns.
So a rate-limited map fused anywhere (first in a stage, or after a reduce, a sort or a join) is
paced however the task calls it. A task's map pipeline meters the batches it reads ahead of the call
(:func:`paced`), through the same bucket, so those rows are not paid for twice.

A slice is a zero-copy ``Table.slice``; the function sees smaller tables, never other rows. The
driver's own calls (checking the job on a sample before the run) are not paced.

>>> bucket = TokenBucket(rate=100.0, burst=10)
>>> t0 = time.monotonic(); bucket.take(10); bucket.take(10); round(time.monotonic() - t0, 1)
0.2
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

SLICE_SECONDS = 0.125        # a task admits its rows in slices of at most this much of its rate

_local = threading.local()


class RateLimited:
    """A map stage's function with its rate limit (rows per second across the run). Called inside an
    attempt, it paces the rows it is fed (the attempt's bucket for it, see the module docstring);
    called elsewhere (the driver's check on a sample), it calls the function as it is. Built by
    :attr:`engine.job.Stage.task_fn`."""

    __slots__ = ("fn", "rate")

    def __init__(self, fn: Callable[[pa.Table], pa.Table], rate: float) -> None:
        self.fn, self.rate = fn, float(rate)

    def __call__(self, table: pa.Table) -> pa.Table:
        pacer = _pacer(self)
        if pacer is None or not isinstance(table, (pa.Table, pa.RecordBatch)):
            return self.fn(table)
        n = table.num_rows
        if n <= pacer.credit or n <= pacer.rows:
            pacer.admit(n)
            return self.fn(table)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        outs = []
        for offset in range(0, n, pacer.rows):
            piece = table.slice(offset, pacer.rows)
            pacer.admit(piece.num_rows)
            out = self.fn(piece)
            if isinstance(out, pa.RecordBatch):
                out = pa.Table.from_batches([out])
            if not isinstance(out, pa.Table):
                return out                 # (the caller says what the function must return)
            outs.append(out)
        return _concat(outs)

    def __reduce__(self):
        return (RateLimited, (self.fn, self.rate))

    def __repr__(self) -> str:
        return f"RateLimited({getattr(self.fn, '__name__', self.fn)!r}, {self.rate:g}/s)"


def _concat(tables: list[pa.Table]) -> pa.Table:
    """What a function returned for the slices of one table, as one table (types promoted if slices
    came back with, say, a null and an int64 column)."""
    try:
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        from .errors import SchemaError
        raise SchemaError(f"a map function with rate_limit= is fed its rows in slices, and returned tables of "
                          f"different schemas for slices of one batch ({exc}); make it return the same columns "
                          "and types whatever rows it is given") from None


class TokenBucket:
    """``take(n)`` blocks until ``n`` tokens are there; tokens accrue at ``rate`` per second up to
    ``burst``; the bucket starts empty. One consumer (one task's thread)."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate, self.burst = float(rate), max(1, int(burst))
        self._clock, self._sleep = clock, sleep
        self._tokens = 0.0
        self._at = clock()

    def take(self, n: int) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n               # a debt, paid by waiting
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


class _Pacer:
    """One attempt's bucket for one rate-limited function: ``rows`` per slice, and ``credit``, rows
    the task's pipeline already admitted ahead of the call (:func:`metered`)."""

    __slots__ = ("fn", "bucket", "rows", "credit")

    def __init__(self, fn: RateLimited, rate: float) -> None:
        self.fn, self.rows, self.credit = fn, slice_rows(rate), 0
        self.bucket = TokenBucket(rate, self.rows)

    def admit(self, n: int) -> None:
        """Let ``n`` rows through to the function: from the credit, the rest from the bucket."""
        paid = min(self.credit, n)
        self.credit -= paid
        if n > paid:
            self.bucket.take(n - paid)


def _pacer(fn: RateLimited) -> _Pacer | None:
    """The running attempt's pacer for ``fn`` (made at its first use); None outside an attempt."""
    pacers = getattr(_local, "pacers", None)
    if pacers is None:
        return None
    pacer = pacers.get(id(fn))
    if pacer is None:
        pacer = pacers[id(fn)] = _Pacer(fn, fn.rate / share())
    return pacer


@contextlib.contextmanager
def sharing(share: int) -> Iterator[None]:
    """Within: :func:`share` is ``share`` in this thread (the attempts of the running stage that may run
    at once), and rate-limited functions pace themselves with buckets of this attempt's own."""
    before = getattr(_local, "share", None), getattr(_local, "pacers", None)
    _local.share = max(1, int(share or 1))
    _local.pacers = {}
    try:
        yield
    finally:
        _local.share, _local.pacers = before


def share() -> int:
    """How many attempts of the running stage may run at once (1 outside an attempt)."""
    return getattr(_local, "share", None) or 1


def slice_rows(rate: float) -> int:
    """The rows a task paced at ``rate`` admits at once."""
    return max(1, math.ceil(rate * SLICE_SECONDS))


def metered(tables: Iterator[pa.Table], bucket: TokenBucket | _Pacer, rows: int) -> Iterator[pa.Table]:
    """``tables`` in slices of at most ``rows`` rows, each let through once ``bucket`` has its rows (a
    pacer's are then the function's credit: its call does not pay for them again)."""
    for table in tables:
        if table.num_rows == 0:
            yield table
            continue
        for offset in range(0, table.num_rows, rows):
            piece = table.slice(offset, rows)
            if isinstance(bucket, _Pacer):
                bucket.bucket.take(piece.num_rows)
                bucket.credit += piece.num_rows
            else:
                bucket.take(piece.num_rows)
            yield piece


def paced(fn: Any, step: Callable[[Iterator[pa.Table]], Iterator[pa.Table]]):
    """The map step ``step`` (tables in, tables out) that calls ``fn``: as it is, or with its input
    metered in slices when ``fn`` is :class:`RateLimited` (at its rate divided by :func:`share`, read
    when the step runs, inside the attempt, through the attempt's bucket for ``fn``)."""
    if not isinstance(fn, RateLimited):
        return step

    def run(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        pacer = _pacer(fn)
        if pacer is None:                 # outside an attempt: a bucket of the step's own
            rate = fn.rate / share()
            rows = slice_rows(rate)
            return step(metered(tables, TokenBucket(rate, rows), rows))
        return step(metered(tables, pacer, pacer.rows))
    return run


__all__ = ["RateLimited", "TokenBucket", "paced", "metered", "sharing", "share", "slice_rows", "SLICE_SECONDS"]
