"""Fault injection for tests, benchmarks and notebooks, without touching a job's code.

>>> from engine.faults import Faults
>>> faults = Faults(hang_first_attempt={("map", 3)}, slow_workers={"tcp://127.0.0.1:4001": 5.0})
>>> engine.run(job, IN, OUT, faults=faults)                   # doctest: +SKIP

* ``hang_first_attempt``: ``(stage, partition)`` pairs ("map"/"reduce", or ``"*"`` for any stage)
  whose attempt 0 sleeps forever (until cancelled), like a task stuck on a dead disk.
* ``slow_first_attempt``: ``{(stage, partition): seconds}``: attempt 0 sleeps that long first.
* ``slow_workers``: ``{worker address or "name:NAME": factor}``: every task on that worker takes
  ``factor`` times as long (it sleeps ``(factor - 1) x`` its own elapsed time after each batch).
* ``fail_attempts``: ``{(stage, partition): n}``: the first ``n`` attempts raise ``InjectedFault``.
* ``commit_delay``: seconds the driver sleeps at each step of the job commit (widens the window for
  kill tests).

``Faults.from_env()`` reads the same fields as JSON from ``ENGINE_FAULTS`` (for CLI subprocesses).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any


class InjectedFault(RuntimeError):
    """Raised by an attempt that a test asked to fail."""


def _match(table: Any, stage: str, partition: int):
    for key in ((stage, partition), ("*", partition)):
        if key in table:
            return table[key] if isinstance(table, dict) else True
    return None


@dataclass
class Faults:
    hang_first_attempt: set = field(default_factory=set)
    slow_first_attempt: dict = field(default_factory=dict)
    slow_workers: dict = field(default_factory=dict)
    fail_attempts: dict = field(default_factory=dict)
    commit_delay: float = 0.0

    @classmethod
    def from_env(cls) -> Faults | None:
        raw = os.environ.get("ENGINE_FAULTS")
        if not raw:
            return None
        d = json.loads(raw)
        pairs = lambda items: {(s, int(p)) for s, p in items}  # noqa: E731
        return cls(hang_first_attempt=pairs(d.get("hang_first_attempt", [])),
                   slow_first_attempt={(s, int(p)): float(v) for s, p, v in d.get("slow_first_attempt", [])},
                   slow_workers={k: float(v) for k, v in d.get("slow_workers", {}).items()},
                   fail_attempts={(s, int(p)): int(n) for s, p, n in d.get("fail_attempts", [])},
                   commit_delay=float(d.get("commit_delay", 0.0)))

    # -- called inside tasks ----------------------------------------------------------------
    def before_task(self, ctx: Any, stage: str, partition: int, attempt: int) -> None:
        from .tasks import check_cancelled
        n = _match(self.fail_attempts, stage, partition)
        if n is not None and attempt < n:
            raise InjectedFault(f"injected failure of {stage} partition {partition} attempt {attempt}")
        if attempt == 0 and _match(self.hang_first_attempt, stage, partition):
            while True:
                time.sleep(0.05)
                check_cancelled()
        delay = _match(self.slow_first_attempt, stage, partition)
        if delay and attempt == 0:
            end = time.time() + delay
            while time.time() < end:
                time.sleep(min(0.05, max(0.0, end - time.time())))
                check_cancelled()
        self._started = time.time()

    def during_task(self, ctx: Any, stage: str, partition: int, attempt: int) -> None:
        factor = self._worker_factor()
        if factor and factor > 1:
            from .tasks import check_cancelled
            started = getattr(self, "_started", None) or time.time()
            end = time.time() + (time.time() - started) * (factor - 1)
            while time.time() < end:      # in slices: a cancelled attempt frees its worker promptly
                time.sleep(min(0.05, max(0.0, end - time.time())))
                check_cancelled()
            self._started = time.time()

    def _worker_factor(self) -> float | None:
        if not self.slow_workers:
            return None
        try:
            from distributed import get_worker
            w = get_worker()
        except (ImportError, ValueError):
            return None
        for key in (w.address, f"name:{w.name}"):
            if key in self.slow_workers:
                return self.slow_workers[key]
        return None

    # -- called by the driver ---------------------------------------------------------------
    def commit_hook(self, point: str) -> None:
        if self.commit_delay:
            print(f"engine-fault: commit step {point}", flush=True)
            time.sleep(self.commit_delay)


__all__ = ["Faults", "InjectedFault"]
