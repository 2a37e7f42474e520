"""Lower a plan's stages to Dask task graphs (``dask.task_spec``) with deterministic keys.

A stage becomes one graph of ``Task`` nodes keyed ``(f"{job}-r{round}-{stage}-{token}", partition,
attempt)``: the prefix groups a stage's tasks in dask's dashboard and duration estimates; the token
is derived from the job fingerprint and run id, so keys are reproducible; a retry or a speculative
attempt is a new key (a resubmitted key would return the existing future and run nothing).

Strategy that depends on data (number of reducers, coalescing, range boundaries) is decided by the
driver between stages from map-output statistics; this module only lowers what was decided.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .plan import graph_size  # noqa: F401  (it moved to engine.plan; the old name works)


def stage_prefix(job_name: str, round_index: int, stage: str, fingerprint: str, run_id: str) -> str:
    """The key prefix of one stage: readable, and unique per run."""
    token = hashlib.sha256(f"{fingerprint}:{run_id}:{round_index}:{stage}".encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9_.]+", "_", job_name)[:40] or "job"
    return f"{safe}-r{round_index}-{stage}-{token}"


def task_key(prefix: str, partition: int, attempt: int) -> tuple[str, int, int]:
    return (prefix, int(partition), int(attempt))


@dataclass(frozen=True)
class TaskSpec:
    """One task of a stage, independent of attempt: ``func(*args, partition, attempt)``."""

    partition: int
    func: Callable[..., Any]
    args: tuple
    size: int | None = None      # input bytes, for speculation's efficiency filter

    def graph(self, prefix: str, attempt: int, shared: dict[str, Any]) -> dict:
        """A one-node graph for this attempt; ``shared`` maps argument names to futures' keys."""
        from dask.task_spec import Task, TaskRef      # imported here: a run in the driver needs no dask
        key = task_key(prefix, self.partition, attempt)
        args = [TaskRef(a.key) if _is_future(a) else a for a in self.args]
        return {key: Task(key, self.func, *args, self.partition, attempt)}


def _is_future(obj: Any) -> bool:
    return type(obj).__name__ == "Future" and hasattr(obj, "key")


def stage_graph(prefix: str, tasks: Sequence[TaskSpec], attempt: int = 0) -> dict:
    """The graph of a whole stage at one attempt number."""
    dsk: dict = {}
    for t in tasks:
        dsk.update(t.graph(prefix, attempt, {}))
    return dsk


__all__ = ["stage_prefix", "task_key", "TaskSpec", "stage_graph", "graph_size"]
