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

import math

import numpy as np


@dataclass(frozen=True)
class ReduceAssignment:
    """One reduce task: a contiguous range of hash partitions ``[start, stop)``, possibly filtered.

    ``only`` restricts the task to the listed keys (hot keys packed into a task of their own);
    ``exclude`` drops them (the rest of a partition whose hot keys went elsewhere); ``sub = (j, n)``
    keeps only the rows whose key falls in sub-bucket ``j`` of ``n`` (a second, independent hash), so
    an oversized partition of many keys is read by ``n`` tasks, each key still wholly in one of them.
    ``share = (j, m)`` (with ``only`` = one key, combinable rounds): the j-th of ``m`` tasks that each
    combine the key's rows from a disjoint set of map outputs; a merge task then combines their
    partial results and finishes the key.
    """

    index: int
    start: int
    stop: int
    rows: int
    nbytes: int
    only: tuple[tuple, ...] | None = None
    exclude: tuple[tuple, ...] | None = None
    sub: tuple[int, int] | None = None
    share: tuple[int, int] | None = None

    def describe(self) -> str:
        what = f"hash partitions {self.start}..{self.stop - 1}" if self.stop - self.start > 1 \
            else f"hash partition {self.start}"
        if self.only:
            keys = ", ".join(repr(k) for k in self.only[:3]) + (", ..." if len(self.only) > 3 else "")
            what = f"hot key(s) {keys} of hash partition {self.start}"
            if self.share:
                what = f"share {self.share[0] + 1}/{self.share[1]} of hot key {keys} of hash partition {self.start}"
        else:
            if self.sub:
                what += f", sub-bucket {self.sub[0] + 1}/{self.sub[1]}"
            if self.exclude:
                what += f" without {len(self.exclude)} hot key(s)"
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
                          "reason": f"{len(sizes)} hash partitions of {format_size(total)} in all, coalesced into "
                                    f"{len(groups)} reducer(s) of up to {format_size(effective)}"})
    return ReducePlan(groups, decisions)


def plan_reducers(rows: Sequence[int], nbytes: Sequence[int], heavy: Sequence[tuple[tuple, int, int]],
                  target: int, *, min_tasks: int = 1, enabled: bool = True, combinable: bool = True,
                  factor: float = 5.0, split_over: float = 2.0,
                  sources: Sequence[int] | None = None) -> ReducePlan:
    """Reduce tasks from map-output statistics: coalesce small partitions, split oversized ones.

    A hash partition is *oversized* when it holds more than ``split_over`` (2) tasks' worth of bytes
    (the effective target), or when it is larger than ``factor`` x the median non-empty partition and than
    the target (Spark AQE's skew test). An oversized partition is split into tasks of about the
    target: its heavy keys (estimated from the map tasks' samples, ``heavy`` = ``(key, partition,
    rows)`` summed over map tasks) worth at least a quarter of the target are packed, largest first,
    into tasks that read only them. A key larger than the target is split over several tasks when the
    round can combine (each combines the key's rows from some of the map outputs, a merge task
    combines their results), and otherwise gets a task of its own (a reduce function receives all
    rows of a key in one call). The partition's other keys are
    divided by a second hash into sub-buckets of about the target, each read by one task. Every
    decision, with the sizes, is returned for the run report.
    """
    base = coalesce(rows, nbytes, target, min_tasks=min_tasks)
    sizes = np.asarray(nbytes, dtype=np.int64)
    counts = np.asarray(rows, dtype=np.int64)
    total = int(sizes.sum())
    effective = max(1, min(target, -(-total // max(1, min_tasks)))) if total else target
    nonzero = sizes[sizes > 0]
    if not enabled or len(nonzero) < 1 or total == 0:
        return base
    median = float(np.median(nonzero))
    oversized = [p for p in range(len(sizes))
                 if sizes[p] > split_over * effective or (len(nonzero) > 1 and sizes[p] > factor * median
                                                 and sizes[p] > effective)]
    if not oversized:
        return base
    decisions = list(base.decisions)
    summary = {"partitions": int(len(sizes)), "median_bytes": int(median), "max_bytes": int(sizes.max()),
               "total_bytes": total, "target_bytes": int(effective)}
    by_partition: dict[int, list[tuple[tuple, int]]] = {}
    for key, p, est in heavy:
        if any(v is None or (isinstance(v, float) and v != v) for v in key):
            continue          # null and NaN keys do not take part in key filters; they stay with their partition
        by_partition.setdefault(int(p), []).append((key, int(est)))
    tasks: list[ReduceAssignment] = []
    oversized_set = set(oversized)

    def add(start: int, stop: int, r: int, b: int, **kw) -> None:
        tasks.append(ReduceAssignment(len(tasks), start, stop, r, b, **kw))

    start = 0
    for p in range(len(sizes) + 1):
        if p < len(sizes) and p not in oversized_set:
            continue
        if p > start and counts[start:p].sum():
            # coalesce the run of ordinary partitions [start, p)
            for a in coalesce(counts[start:p], sizes[start:p], effective).assignments:
                if a.rows:
                    add(start + a.start, start + a.stop, a.rows, a.nbytes)
        if p == len(sizes):
            break
        _split_partition(p, int(counts[p]), int(sizes[p]), by_partition.get(p, []), effective, combinable,
                         median, summary, add, decisions, sources[p] if sources is not None else None)
        start = p + 1
    return ReducePlan(tasks, decisions)


def _split_partition(p: int, count: int, size: int, keys: list[tuple[tuple, int]], effective: int,
                     combinable: bool, median: float, summary: dict, add, decisions: list[dict],
                     sources: int | None = None) -> None:
    """Tasks for one oversized partition: bins of heavy keys, then sub-buckets of the rest."""
    bytes_per_row = size / max(1, count)
    why = (f"hash partition {p} holds {format_size(size)} ({size / max(1.0, median):.1f} x the median, "
           f"{size / effective:.1f} x the target of {format_size(effective)})")
    lumps = sorted(((k, est, int(est * bytes_per_row)) for k, est in keys
                    if est * bytes_per_row >= effective / 4), key=lambda x: -x[2])
    lump_bytes = sum(b for _, _, b in lumps)
    if lump_bytes > size:             # sampled estimates overshoot: scale them to the partition
        scale = size / lump_bytes
        lumps = [(k, int(e * scale), int(b * scale)) for k, e, b in lumps]
    bins: list[list] = []             # [bytes, rows, keys, shared]
    if combinable:                    # keys over one target: spread over shares, merged afterwards
        # (each share reads whole map outputs, so there are at most as many shares as map outputs)
        limit = sources if sources is not None else math.inf
        big = [x for x in lumps if x[2] > effective and min(limit, math.ceil(x[2] / effective)) > 1]
        for key, est, b in big:
            m = int(min(limit, math.ceil(b / effective)))
            for j in range(m):
                add(p, p + 1, est // m, b // m, only=(key,), share=(j, m))
            decisions.append({
                "action": "split", "partition": p, "key": list(key), "shares": m, "rows": est, "bytes": b, **summary,
                "reason": f"{why}: hot key {key!r} (~{est:,} rows, {format_size(b)}) is combined by {m} tasks, each over "
                          f"a share of the map outputs, then merged"})
            bins.append([b, est, [key], True])
        lumps = [x for x in lumps if x not in big]
    for key, est, b in lumps:         # first fit decreasing into bins of one target
        fit = next((x for x in bins if not x[3] and x[0] + b <= effective), None)
        if fit is None:
            fit = [0, 0, [], False]
            bins.append(fit)
        fit[0] += b
        fit[1] += est
        fit[2].append(key)
    for b, r, chosen, shared in bins:
        if shared:
            continue
        add(p, p + 1, r, b, only=tuple(chosen))
        alone = len(chosen) == 1 and b > effective
        decisions.append({
            "action": "isolate", "partition": p, "key": list(chosen[0]), "keys": [list(k) for k in chosen],
            "rows": r, "bytes": b, **summary,
            "reason": f"{why}: hot key(s) {', '.join(repr(k) for k in chosen[:4])}"
                      f"{', ...' if len(chosen) > 4 else ''} (~{r:,} rows, {format_size(b)}) get a reduce task of "
                      f"their own" + (" (one key larger than the target: a reduce function receives all rows "
                                      "of a key in one call)" if alone else "")})
    isolated = tuple(k for _, _, chosen, _ in bins for k in chosen)
    rest_bytes = max(0, size - sum(b[0] for b in bins))
    rest_rows = max(0, count - sum(b[1] for b in bins))
    n = max(1, round(rest_bytes / effective))
    for j in range(n):
        add(p, p + 1, rest_rows // n, rest_bytes // n, exclude=isolated or None, sub=(j, n) if n > 1 else None)
    if n > 1:
        decisions.append({"action": "split", "partition": p, "sub_buckets": n, "rows": rest_rows,
                          "bytes": rest_bytes, **summary,
                          "reason": f"{why}: its other keys ({format_size(rest_bytes)}) are divided by a second hash "
                                    f"into {n} reduce tasks of ~{format_size(rest_bytes / n)}"})
    elif not bins:
        decisions.append({"action": "keep", "partition": p, "bytes": size, **summary,
                          "reason": f"{why}, but neither a key nor a sub-bucket of it is worth a task of its own"})


def format_size(n: float) -> str:
    """Bytes as a short human-readable size (``"38.1 MiB"``)."""
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


__all__ = ["ReduceAssignment", "ReducePlan", "coalesce", "plan_reducers", "range_partition_count", "format_size"]
