"""What a job's functions may ask about the run they are part of: its logical date.

A scheduled pipeline runs the same job every day for a *logical date* (the day the data is about,
not the day the run happens: a backfill of November runs in December). ``engine.run(..., date=)``
and ``mapreduce run --date`` set it; inside map, combine and reduce functions, and in the driver
while the run lasts, :func:`logical_date` returns it.

The value is per thread: a task sets it before calling the job's functions (tasks of runs with
different dates may share a worker process), and a run sets it in the driver for its duration.

This module never imports dask.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import threading
from collections.abc import Iterator
from typing import Any

from .errors import JobDefinitionError

_local = threading.local()


def parse_date(value: Any, what: str = "date") -> str | None:
    """``value`` (a ``datetime.date``, or text ``YYYY-MM-DD``) as ISO text; None stays None."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        value = value.date()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise JobDefinitionError(f"{what} must be a date such as '2026-11-30' (YYYY-MM-DD) or a datetime.date, "
                             f"got {value!r}")


def logical_date() -> _dt.date | None:
    """The logical date of the run this code is part of, or None when the run was given none.

    >>> import engine
    >>> def only_today(t):                      # a map function of a daily job
    ...     day = engine.logical_date()          # datetime.date(2026, 11, 30) under --date 2026-11-30
    ...     return t if day is None else t.filter(pc.field("day") == day.isoformat())
    """
    text = getattr(_local, "date", None)
    return _dt.date.fromisoformat(text) if text else None


def set_task_date(text: str | None) -> None:
    """Called by a task before it runs the job's functions."""
    _local.date = text


@contextlib.contextmanager
def using_date(text: str | None) -> Iterator[None]:
    """The driver's side: :func:`logical_date` returns ``text`` inside the block."""
    before = getattr(_local, "date", None)
    _local.date = text
    try:
        yield
    finally:
        _local.date = before


__all__ = ["logical_date", "parse_date", "set_task_date", "using_date"]
