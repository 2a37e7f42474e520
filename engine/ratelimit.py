"""Pacing the rows a map function is fed, for stages that call external systems.

``Job.map(fn, rate_limit=1000)`` feeds ``fn`` at most about 1,000 rows per second across the whole
run. Each task paces itself with a token bucket of its own (no coordination between workers): its
rate is the stage's rate divided by the number of the stage's tasks that can run at once, which the
driver works out per stage as ``min(tasks, cluster threads, max_tasks)`` and hands to every attempt
(:func:`engine.attempts.run_attempt` sets :func:`share`). The bucket starts empty and admits its
input in slices of at most an eighth of a second of its rate, so by any time ``t`` after a task
started it has fed at most ``rate × t`` rows, and in any one second at most its rate plus one slice.

A slice is a zero-copy ``Table.slice`` of the batch read; the function sees smaller tables, never
other rows. The driver's own calls (checking the job on a sample before the run) are not paced.

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
    """A map stage's function with its rate limit (rows per second across the run); calling it calls
    the function. Built by :attr:`engine.job.Stage.task_fn`; paced by :func:`paced` inside tasks."""

    __slots__ = ("fn", "rate")

    def __init__(self, fn: Callable[[pa.Table], pa.Table], rate: float) -> None:
        self.fn, self.rate = fn, float(rate)

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.fn(table)

    def __reduce__(self):
        return (RateLimited, (self.fn, self.rate))

    def __repr__(self) -> str:
        return f"RateLimited({getattr(self.fn, '__name__', self.fn)!r}, {self.rate:g}/s)"


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


@contextlib.contextmanager
def sharing(share: int) -> Iterator[None]:
    """Within: :func:`share` is ``share`` in this thread (the attempts of the running stage that may run at once)."""
    before = getattr(_local, "share", None)
    _local.share = max(1, int(share or 1))
    try:
        yield
    finally:
        _local.share = before


def share() -> int:
    """How many attempts of the running stage may run at once (1 outside an attempt)."""
    return getattr(_local, "share", None) or 1


def slice_rows(rate: float) -> int:
    """The rows a task paced at ``rate`` admits at once."""
    return max(1, math.ceil(rate * SLICE_SECONDS))


def metered(tables: Iterator[pa.Table], bucket: TokenBucket, rows: int) -> Iterator[pa.Table]:
    """``tables`` in slices of at most ``rows`` rows, each let through once ``bucket`` has its rows."""
    for table in tables:
        if table.num_rows == 0:
            yield table
            continue
        for offset in range(0, table.num_rows, rows):
            piece = table.slice(offset, rows)
            bucket.take(piece.num_rows)
            yield piece


def paced(fn: Any, step: Callable[[Iterator[pa.Table]], Iterator[pa.Table]]):
    """The map step ``step`` (tables in, tables out) that calls ``fn``: as it is, or with its input
    paced when ``fn`` is :class:`RateLimited` (at its rate divided by :func:`share`, read when the
    step runs, inside the attempt)."""
    if not isinstance(fn, RateLimited):
        return step

    def run(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        rate = fn.rate / share()
        rows = slice_rows(rate)
        return step(metered(tables, TokenBucket(rate, rows), rows))
    return run


__all__ = ["RateLimited", "TokenBucket", "paced", "metered", "sharing", "share", "slice_rows", "SLICE_SECONDS"]
