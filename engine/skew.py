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
    """One reduce task: a contiguous range of hash partitions ``[start, stop)``.

    ``only`` restricts the task to the listed keys (an isolated hot key); ``exclude`` drops them
    (the rest of a partition whose hot keys were isolated).
    """

    index: int
    start: int
    stop: int
    rows: int
    nbytes: int
    only: tuple[tuple, ...] | None = None
    exclude: tuple[tuple, ...] | None = None

    def describe(self) -> str:
        what = f"hash partitions {self.start}..{self.stop - 1}"
        if self.only:
            what = f"hot key {self.only[0]!r} of hash partition {self.start}"
        elif self.exclude:
            what += f" without {len(self.exclude)} isolated key(s)"
        return f"{what}, ~{self.rows:,} rows"


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


def plan_reducers(rows: Sequence[int], nbytes: Sequence[int], heavy: Sequence[tuple[tuple, int, int]],
                  target: int, *, min_tasks: int = 1, enabled: bool = True, combinable: bool = True,
                  factor: float = 5.0) -> ReducePlan:
    """Reduce tasks from map-output statistics: coalesce small partitions, isolate hot keys of skewed ones.

    A hash partition is *skewed* when it is larger than ``factor`` x the median non-empty partition
    and larger than the effective target. In a round that cannot be combined, each of its heavy
    keys (estimated from the map tasks' samples) worth at least half a target gets a reduce task of
    its own, and the rest of the partition another one. In a combinable round the map-side combine
    has already collapsed every key to a few rows per map task, so a big partition holds many keys
    and is left whole (the decision is recorded). ``heavy`` lists ``(key, partition, rows)`` summed
    over map tasks.
    """
    base = coalesce(rows, nbytes, target, min_tasks=min_tasks)
    sizes = np.asarray(nbytes, dtype=np.int64)
    counts = np.asarray(rows, dtype=np.int64)
    total = int(sizes.sum())
    effective = max(1, min(target, -(-total // max(1, min_tasks)))) if total else target
    nonzero = sizes[sizes > 0]
    if not enabled or len(nonzero) < 2:
        return base
    median = float(np.median(nonzero))
    skewed = [p for p in range(len(sizes)) if sizes[p] > factor * median and sizes[p] > effective]
    if not skewed:
        return base
    decisions = list(base.decisions)
    summary = {"partitions": int(len(sizes)), "median_bytes": int(median), "max_bytes": int(sizes.max()),
               "total_bytes": total, "target_bytes": int(effective)}
    if combinable:
        for p in skewed:
            decisions.append({"action": "keep", "partition": p, "bytes": int(sizes[p]), **summary,
                              "reason": f"hash partition {p} holds {_size(sizes[p])} ({sizes[p] / median:.1f} x the "
                                        f"median); the round's combine already ran on the map side, so it is many "
                                        f"keys, kept in one task"})
        return ReducePlan(base.assignments, decisions)
    by_partition: dict[int, list[tuple[tuple, int]]] = {}
    for key, p, est in heavy:
        if any(v is None for v in key):
            continue          # null keys do not take part in key filters; they stay with their partition
        by_partition.setdefault(int(p), []).append((key, int(est)))
    tasks: list[ReduceAssignment] = []
    skewed_set = set(skewed)

    def add(start: int, stop: int, r: int, b: int, **kw) -> None:
        tasks.append(ReduceAssignment(len(tasks), start, stop, r, b, **kw))

    # Coalesce runs of ordinary partitions; skewed partitions break runs and are planned alone.
    start = acc_b = acc_r = 0
    for p in range(len(sizes) + 1):
        if p == len(sizes) or p in skewed_set:
            if p > start and acc_r:
                # flush the run [start, p) with the ordinary coalescing rule
                sub = coalesce(counts[start:p], sizes[start:p], effective)
                for a in sub.assignments:
                    if a.rows:
                        add(start + a.start, start + a.stop, a.rows, a.nbytes)
            if p == len(sizes):
                break
            bytes_per_row = sizes[p] / max(1, counts[p])
            keys = sorted(by_partition.get(p, []), key=lambda kv: -kv[1])
            isolated = []
            remaining = int(sizes[p])
            for key, est in keys:
                est_bytes = int(est * bytes_per_row)
                if est_bytes < effective / 2 or remaining <= effective:
                    break
                isolated.append(key)
                remaining -= est_bytes
                add(p, p + 1, est, est_bytes, only=(key,))
                decisions.append({"action": "isolate", "partition": p, "key": list(key), "rows": est,
                                  "bytes": est_bytes, **summary,
                                  "reason": f"hot key {key!r} (~{est:,} rows, {_size(est_bytes)}) of hash partition "
                                            f"{p} ({_size(sizes[p])}, {sizes[p] / median:.1f} x the median) gets a "
                                            f"reduce task of its own"})
            rest_rows = int(counts[p]) - sum(t.rows for t in tasks if t.only and t.start == p)
            add(p, p + 1, max(0, rest_rows), max(0, remaining), exclude=tuple(isolated) or None)
            if not isolated:
                decisions.append({"action": "keep", "partition": p, "bytes": int(sizes[p]), **summary,
                                  "reason": f"hash partition {p} ({_size(sizes[p])}) is skewed but no single key "
                                            f"is worth a task of its own"})
            start, acc_b, acc_r = p + 1, 0, 0
        else:
            acc_b += int(sizes[p])
            acc_r += int(counts[p])
    if not tasks:
        return base
    return ReducePlan(tasks, decisions)


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


__all__ = ["ReduceAssignment", "ReducePlan", "coalesce", "plan_reducers", "range_partition_count"]
