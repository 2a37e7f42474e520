"""What a run may reject, retry and consume: one frozen :class:`Guards` per run.

``engine.run``'s guard parameters (and ``mapreduce run``'s flags) arrive here, are checked once,
and travel as one object: the driver's stage executor reads the retry policy, the concurrency
limit and the budgets; tasks read the bad-record policy (``TaskContext.guards``).

>>> g = Guards.build(on_error="reject", max_rejected="0.1%", retry_on={"ConnectionError": 5, ValueError: 1})
>>> g.on_error, g.max_rejected, g.retry_on
('reject', 0.001, (('ConnectionError', 5), ('ValueError', 1)))
>>> g.rejected_limit(2_000_000)
2000
>>> Guards.build(max_rejected=10).rejected_limit(2_000_000)
10

Each parameter left as ``None`` takes its ``engine.rejects.*`` / ``engine.retries.*`` /
``engine.limits.*`` setting (:mod:`engine.config`); ``Guards()`` is a run with every guard at its default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import config
from .errors import JobDefinitionError

ON_ERROR = ("fail", "reject")


@dataclass(frozen=True)
class Guards:
    """A run's bad-record policy, retry policy, concurrency limit and budgets.

    ``on_error``: ``"fail"`` (a map or reduce call that raises fails its task, which is retried) or
    ``"reject"`` (the rows it fails on are found by bisection and set aside in ``OUT/_rejected/``).
    ``max_rejected``: how many rows a run may reject before it fails: a count (int), a fraction of
    the input rows (float below 1), or None for no limit.
    ``on_bad_file``: ``"fail"`` or ``"reject"`` (an input file no reader can open is set aside whole).
    ``retry_on``: ``((exception class name, attempts), ...)``: per-class attempt limits (``0`` or ``1``:
    never retried); a class not listed keeps ``engine.retries.attempts``. Matched by the exception's
    class or any of its bases, by name.
    ``retry_budget``: retries a whole run may spend (None: no run-wide limit).
    ``max_tasks``: attempts of this run running at once (None: as many as the cluster takes).
    ``max_seconds`` / ``max_cpu_seconds``: wall-clock and task CPU-seconds budgets; a run that
    exceeds one is stopped and commits nothing (:class:`~engine.errors.BudgetExceededError`).
    """

    on_error: str = "fail"
    max_rejected: int | float | None = None
    on_bad_file: str = "fail"
    retry_on: tuple[tuple[str, int], ...] = ()
    retry_budget: int | None = None
    max_tasks: int | None = None
    max_seconds: float | None = None
    max_cpu_seconds: float | None = None

    @classmethod
    def build(cls, *, on_error: str | None = None, max_rejected: Any = None, on_bad_file: str | None = None,
              retry_on: Any = None, retry_budget: int | None = None, max_tasks: int | None = None,
              max_seconds: float | str | None = None, max_cpu_seconds: float | None = None,
              job: Any = None) -> Guards:
        """Guards from ``engine.run``'s parameters, then the job's own (``Job(on_error=...)``), then config."""
        def pick(value: Any, attr: str, key: str) -> Any:
            if value is None and job is not None:
                value = getattr(job, attr, None)
            return config.get(key) if value is None else value

        on_error = _choice(pick(on_error, "on_error", "rejects.on-error"), "on_error")
        on_bad_file = _choice(pick(on_bad_file, "on_bad_file", "rejects.on-bad-file"), "on_bad_file")
        limit = pick(max_rejected, "max_rejected", "rejects.max")
        return cls(on_error=on_error, max_rejected=parse_limit(limit), on_bad_file=on_bad_file,
                   retry_on=parse_retry_on(retry_on),
                   retry_budget=_count(pick(retry_budget, "", "retries.budget"), "retry_budget"),
                   max_tasks=_count(pick(max_tasks, "", "limits.max-tasks"), "max_tasks", minimum=1),
                   max_seconds=_seconds(pick(max_seconds, "", "limits.max-seconds"), "max_seconds"),
                   max_cpu_seconds=_seconds(pick(max_cpu_seconds, "", "limits.max-cpu-seconds"), "max_cpu_seconds"))

    @property
    def rejecting(self) -> bool:
        """True when bad rows (or bad files) are set aside instead of failing the run."""
        return self.on_error == "reject" or self.on_bad_file == "reject"

    def rejected_limit(self, input_rows: int | None) -> int | None:
        """The most rows this run may reject: the count, or the fraction of ``input_rows`` (rounded
        down, at least 0); None for no limit (or a fraction before the input rows are known)."""
        if self.max_rejected is None:
            return None
        if isinstance(self.max_rejected, int):
            return self.max_rejected
        if input_rows is None:
            return None
        return int(math.floor(self.max_rejected * input_rows))

    def attempts_for(self, exc: BaseException, default: int) -> int:
        """Attempts allowed for a task failing with ``exc`` (its class or a base named in ``retry_on``)."""
        if not self.retry_on:
            return default
        names = [c.__name__ for c in type(exc).__mro__]
        rules = dict(self.retry_on)
        for name in names:
            if name in rules:
                return rules[name]
        return default

    def describe(self) -> dict:
        """Plain values for the run's record and report."""
        return {"on_error": self.on_error, "max_rejected": self.max_rejected, "on_bad_file": self.on_bad_file,
                "retry_on": [list(r) for r in self.retry_on], "retry_budget": self.retry_budget,
                "max_tasks": self.max_tasks, "max_seconds": self.max_seconds,
                "max_cpu_seconds": self.max_cpu_seconds}


def _choice(value: Any, name: str) -> str:
    if value not in ON_ERROR:
        raise JobDefinitionError(f"{name} must be 'fail' or 'reject', got {value!r}")
    return value


def parse_limit(value: Any) -> int | float | None:
    """``max_rejected``: None, a count (``100``, ``"100"``), or a fraction (``0.001``, ``"0.1%"``)."""
    if value is None or value == "" or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
        return None
    if isinstance(value, bool):
        raise JobDefinitionError(f"max_rejected must be a count or a fraction, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                value = float(text[:-1]) / 100.0
                if value >= 1.0:
                    return None            # 100%: every row may be rejected
            elif any(c in text for c in ".eE"):
                value = float(text)
            else:
                value = int(text)
        except ValueError:
            raise JobDefinitionError(f"max_rejected must be a count such as 100 or a fraction such as 0.001 or "
                                     f"'0.1%', got {value!r}") from None
    if isinstance(value, int):
        if value < 0:
            raise JobDefinitionError(f"max_rejected must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if value.is_integer() and value >= 1:
            return int(value)
        if not 0.0 <= value < 1.0:
            raise JobDefinitionError(f"max_rejected as a fraction must be in [0, 1), got {value}")
        return value
    raise JobDefinitionError(f"max_rejected must be a count or a fraction, got {type(value).__name__}")


def parse_retry_on(value: Any) -> tuple[tuple[str, int], ...]:
    """``retry_on``: a mapping {exception class or name: attempts}, or a sequence of classes/names that
    alone are retried (with ``engine.retries.attempts``; every other exception is not retried)."""
    if value is None:
        value = config.get("retries.retry-on")
    if not value:
        return ()
    if isinstance(value, str):
        # "ConnectionError=5,ValueError=1" (the CLI's and config's form)
        rules: dict = {}
        for part in value.split(","):
            name, _, n = part.strip().partition("=")
            if not name:
                continue
            try:
                rules[name.strip()] = int(n) if n else int(config.get("retries.attempts"))
            except ValueError:
                raise JobDefinitionError(f"retry_on: {part!r} is not NAME=ATTEMPTS, e.g. 'ConnectionError=5'") \
                    from None
        value = rules
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) or isinstance(value, type):
        seq = [value] if isinstance(value, type) else list(value)
        items = [(c, int(config.get("retries.attempts"))) for c in seq] + [("BaseException", 1)]
    else:
        raise JobDefinitionError(f"retry_on must be a dict {{ExceptionClass: attempts}} or a list of exception "
                                 f"classes, got {type(value).__name__}")
    out = []
    for cls, n in items:
        name = cls.__name__ if isinstance(cls, type) else str(cls)
        if not name.isidentifier():
            raise JobDefinitionError(f"retry_on: {cls!r} is not an exception class or class name")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise JobDefinitionError(f"retry_on: attempts for {name} must be a count >= 0, got {n!r}")
        out.append((name, max(1, n)))
    return tuple(out)


def _count(value: Any, name: str, minimum: int = 0) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise JobDefinitionError(f"{name} must be a whole number, got {value!r}") from None
    if n < minimum or isinstance(value, bool):
        raise JobDefinitionError(f"{name} must be at least {minimum}, got {value!r}")
    return n


def _seconds(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        from .slo import parse_window     # "90s", "15m", "2h"
        try:
            return float(parse_window(value))
        except Exception:  # noqa: BLE001 - a plain number of seconds, or an error below
            pass
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise JobDefinitionError(f"{name} must be seconds (a number) or a duration such as '15m', got {value!r}") \
            from None
    if s <= 0:
        raise JobDefinitionError(f"{name} must be positive, got {value!r}")
    return s


__all__ = ["Guards", "ON_ERROR", "parse_limit", "parse_retry_on"]
