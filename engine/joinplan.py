"""How a join (or cogroup) runs, decided between its map stages and its reduce from measured sizes.

Strategies (Spark's adaptive execution made these the usual ones):

* **broadcast**: a side whose map output is at most ``engine.join.broadcast-max`` is sent whole to
  every task of the other side, which joins each chunk of its rows on the way through (no shuffle
  of the big side). Allowed only for a side whose unmatched rows are not part of the output: the
  right side of inner, left, semi and anti joins, the left side of inner and right joins; never for
  full joins or cogroup (:meth:`engine.joins.JoinSpec.broadcastable`).
* **shuffle** (hash join): both sides hash-partitioned by their keys into the same number of
  partitions; contiguous small partitions are coalesced toward the run's ``partition_size``
  (both sides' bytes counted).
* **skew split**: a partition whose bytes on one side are both over ``engine.skew.factor`` x the
  median partition of that side and over ``engine.skew.split-over`` x ``partition_size`` (or over
  that size alone, which also bounds a task's memory) is cut into pieces of that side, each joined
  with all of the other side's rows of the partition (replicated). Only a side that may be cut
  (:meth:`engine.joins.JoinSpec.splittable`): never for full joins or cogroup, whose big partitions
  run whole (reported as such).

A join task's memory does not depend on these cuts: it joins within its worker's budget by itself
(:mod:`engine.gracejoin`). The cuts spread a big partition over the cluster.

This module plans from map-output indexes (:class:`engine.shuffle.MapOutput`); it never imports dask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .joins import JoinSpec, hash_class
from .shuffle import MapOutput


@dataclass
class JoinTask:
    """One reduce task of a shuffle join: hash partitions ``[start, stop)``; ``piece`` = ``(side, j, k)``
    when it holds only part of one side's rows (the j-th of k pieces, by map outputs or by rows)."""

    index: int
    start: int
    stop: int
    refs: list[list[tuple]] = field(default_factory=list)     # per side: map-output slices
    piece: tuple | None = None          # rows cut inside the task: (side, j, k), or (-1, j, k, keys) by a 2nd hash
    nbytes: int = 0

    def describe(self, labels: Sequence[str]) -> str:
        where = f"hash partition {self.start}" if self.stop == self.start + 1 else \
            f"hash partitions {self.start}-{self.stop - 1}"
        if self.piece is not None:
            side, j, k = self.piece[:3]
            where += f", piece {j + 1}/{k} of " + (f"side {labels[side]!r}" if side >= 0 else "every side (2nd hash)")
        return f"{where} ({self.nbytes:,} bytes)"


def side_bytes(outputs: Sequence[MapOutput]) -> int:
    return sum(o.total_bytes for o in outputs)


def choose_broadcast(spec: JoinSpec | None, sizes: Sequence[int | None], limit: int, strategy: str) -> int | None:
    """The side to broadcast (0 left, 1 right) or None for a shuffle join. ``sizes`` are the sides'
    measured map-output bytes (None: not measured yet, e.g. its map stage has not run)."""
    if spec is None or strategy == "shuffle":
        return None
    candidates = [s for s in (1, 0) if spec.broadcastable(s) and sizes[s] is not None]
    if strategy == "broadcast":
        return min(candidates, key=lambda s: sizes[s]) if candidates else None
    fits = [s for s in candidates if sizes[s] <= limit]
    return min(fits, key=lambda s: sizes[s]) if fits else None


def plan_join_tasks(sides: Sequence[Sequence[MapOutput]], spec: JoinSpec | None, partition_size: int, *,
                    min_tasks: int = 1, skew_enabled: bool = True, factor: float = 5.0,
                    split_over: float = 2.0, labels: Sequence[str] = (),
                    keys: Sequence[Sequence[str]] = ()) -> tuple[list[JoinTask], list[dict]]:
    """Reduce tasks of a shuffle join/cogroup over the sides' map outputs, and the decisions, with sizes."""
    nparts = next((o.num_partitions for outs in sides for o in outs), 1)
    per_side = [[sum(o.nbytes[p] for o in outs) for p in range(nparts)] for outs in sides]
    total = [sum(x[p] for x in per_side) for p in range(nparts)]
    decisions: list[dict] = []
    splits: dict[int, tuple[int, int]] = {}          # partition -> (side, pieces); side -1: by a second hash
    for p in range(nparts):
        best, whole = None, False
        for s, sizes in enumerate(per_side):
            nonzero = sorted(v for v in sizes if v)
            median = nonzero[len(nonzero) // 2] if nonzero else 0
            b = sizes[p]
            skewed = b > factor * median and b > split_over * partition_size
            too_big = b > split_over * partition_size
            if skew_enabled and (skewed or too_big):
                if spec is not None and spec.splittable(s):
                    if best is None or b > per_side[best][p]:
                        best = s
                else:
                    whole = True
        if best is None and whole and keys:
            # No side may be cut with the other replicated (full join, cogroup): cut every side by a
            # second hash of the keys instead; a key's rows stay together, so a single hot key does not shrink.
            k = max(2, min(64, math.ceil(total[p] / partition_size)))
            if spec is not None:
                # Every piece reads the whole partition. A join task keeps within its memory budget by
                # itself (a grace hash join, engine.gracejoin), so pieces are only for parallelism: as
                # many as twice the cluster's threads. A cogroup function receives whole tables: there the
                # pieces bound its memory, as many as it takes.
                k = min(k, max(2, 2 * min_tasks))
            splits[p] = (-1, k)
            decisions.append({"action": "join-subpartition", "partition": p, "pieces": k, "bytes": total[p],
                              "reason": f"hash partition {p} ({total[p]:,} bytes) cut into {k} pieces by a second "
                                        f"hash of the keys (a {spec.how + ' join' if spec else 'cogroup'} cannot "
                                        "replicate a side)"})
        if best is not None:
            b = per_side[best][p]
            k = max(2, min(64, math.ceil(b / partition_size)))
            splits[p] = (best, k)
            other = sum(per_side[s][p] for s in range(len(sides)) if s != best)
            decisions.append({"action": "join-split", "partition": p, "side": _lbl(labels, best), "pieces": k,
                              "bytes": b, "replicated_bytes": other,
                              "reason": f"hash partition {p}: {b:,} bytes of side {_lbl(labels, best)!r} split into "
                                        f"{k} pieces, each joined with the other side's {other:,} bytes "
                                        "(replicated)"})
    tasks: list[JoinTask] = []

    def add(start: int, stop: int, piece=None, refs=None, nbytes: int | None = None) -> None:
        if refs is None:
            refs = [[o.ref([b for q in range(start, stop) for b in o.batches[q]]) for o in outs
                     if any(o.batches[q] for q in range(start, stop))] for outs in sides]
        tasks.append(JoinTask(len(tasks), start, stop, refs, piece,
                              sum(total[start:stop]) if nbytes is None else nbytes))

    # coalesce unsplit partitions toward the target; at least min_tasks groups when there is enough data
    target = partition_size
    unsplit_total = sum(total[p] for p in range(nparts) if p not in splits)
    groups_wanted = min_tasks if unsplit_total >= min_tasks * (1 << 20) else 1
    if groups_wanted > 1:
        target = min(target, max(1, math.ceil(unsplit_total / groups_wanted)))
    start, acc = None, 0
    for p in range(nparts):
        if p in splits:
            if start is not None:
                add(start, p)
                start, acc = None, 0
            side, k = splits[p]
            if side < 0:
                refs = [[o.ref(o.batches[p]) for o in outs if o.batches[p]] for outs in sides]
                for j in range(k):
                    add(p, p + 1, (-1, j, k, tuple(tuple(x) for x in keys)), refs, total[p] // k)
            else:
                _add_pieces(add, sides, p, side, k)
            continue
        if start is None:
            start, acc = p, 0
        elif acc + total[p] > target and acc > 0:
            add(start, p)
            start, acc = p, 0
        acc += total[p]
    if start is not None:
        add(start, nparts)
    before = [t for t in total if t]
    decisions.append({"action": "join-plan", "partitions_before": len(before), "tasks_after": len(tasks),
                      "bytes": sum(total),
                      "reason": f"{len(before)} non-empty hash partitions ({sum(total):,} bytes) -> {len(tasks)} "
                                "join tasks"})
    return tasks, decisions


def _add_pieces(add, sides: Sequence[Sequence[MapOutput]], p: int, side: int, k: int) -> None:
    """k tasks for partition p: side ``side`` cut by map outputs when it has at least k of them with
    rows there (balanced by bytes), else by rows; every other side's rows replicated to each."""
    others = [[o.ref(o.batches[p]) for o in outs if o.batches[p]] for outs in sides]
    replicated = sum(o.nbytes[p] for s, outs in enumerate(sides) if s != side for o in outs)
    sources = [o for o in sides[side] if o.batches[p]]
    if len(sources) >= k:
        weights = [o.nbytes[p] for o in sources]
        total_w, acc = max(1, sum(weights)), 0
        groups: list[list[MapOutput]] = [[] for _ in range(k)]
        for o, w in zip(sources, weights):
            groups[min(k - 1, int((acc + w / 2) * k / total_w))].append(o)
            acc += w
        for g in groups:
            if not g:
                continue
            refs = list(others)
            refs[side] = [o.ref(o.batches[p]) for o in g]
            add(p, p + 1, None, refs, replicated + sum(o.nbytes[p] for o in g))
    else:
        mine = sum(o.nbytes[p] for o in sources)
        for j in range(k):
            add(p, p + 1, (side, j, k), list(others), replicated + mine // k)


def _lbl(labels: Sequence[str], s: int) -> str:
    return labels[s] if s < len(labels) else str(s)


__all__ = ["JoinTask", "choose_broadcast", "plan_join_tasks", "side_bytes", "hash_class"]
