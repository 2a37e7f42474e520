"""Map-output statistics → reducer assignment.

After a map stage the driver knows, per hash partition, how many rows and bytes every map task
wrote. This module turns those figures into reduce tasks: contiguous small partitions are coalesced
toward a target size (Spark AQE's rule), so the number of reducers follows the data, not a guess
made before the map stage. Every decision is returned as a plain dict for the run report.

This module never imports dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReduceAssignment:
    """One reduce task: a contiguous range of hash partitions ``[start, stop)``."""

    index: int
    start: int
    stop: int
    rows: int
    nbytes: int


@dataclass
class ReducePlan:
    assignments: list[ReduceAssignment]
    decisions: list[dict] = field(default_factory=list)


def coalesce(rows: Sequence[int], nbytes: Sequence[int], target: int, *, min_tasks: int = 1) -> ReducePlan:
    """Group contiguous partitions so each group stays at or under ``target`` bytes.

    ``min_tasks`` keeps at least that many groups when there are enough non-empty partitions, so a
    medium-sized stage still uses every worker (the effective target shrinks to total/min_tasks).
    """
    sizes = np.asarray(nbytes, dtype=np.int64)
    counts = np.asarray(rows, dtype=np.int64)
    total = int(sizes.sum())
    effective = target
    if min_tasks > 1 and total > 0:
        effective = max(1, min(target, -(-total // min_tasks)))
    groups: list[ReduceAssignment] = []
    start, acc_b, acc_r = 0, 0, 0
    for p in range(len(sizes)):
        b = int(sizes[p])
        if p > start and acc_b + b > effective:
            groups.append(ReduceAssignment(len(groups), start, p, acc_r, acc_b))
            start, acc_b, acc_r = p, 0, 0
        acc_b += b
        acc_r += int(counts[p])
    if len(sizes):
        groups.append(ReduceAssignment(len(groups), start, len(sizes), acc_r, acc_b))
    # Drop groups that hold nothing, but keep one so the stage still produces its (empty) output.
    nonempty = [g for g in groups if g.rows > 0] or groups[:1]
    groups = [ReduceAssignment(i, g.start, g.stop, g.rows, g.nbytes) for i, g in enumerate(nonempty)]
    decisions = []
    if len(groups) < len(sizes):
        decisions.append({"action": "coalesce", "partitions_before": int(len(sizes)),
                          "partitions_after": len(groups), "target_bytes": int(effective),
                          "total_bytes": total,
                          "reason": f"{len(sizes)} hash partitions of {_size(total)} in all, coalesced into "
                                    f"{len(groups)} reducer(s) of up to {_size(effective)}"})
    return ReducePlan(groups, decisions)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def range_partition_count(total_bytes: int, target: int, *, min_tasks: int = 1, max_tasks: int = 4096) -> int:
    """How many range partitions a sort round needs for ``total_bytes`` of map output."""
    n = max(1, -(-int(total_bytes) // max(1, target)))
    if total_bytes > 0:
        n = max(n, min_tasks)
    return int(min(n, max_tasks))


__all__ = ["ReduceAssignment", "ReducePlan", "coalesce", "range_partition_count"]
