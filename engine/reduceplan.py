"""Reduce planning: a round's reduce tasks, decided by the driver from what its map tasks reported.

* Hash rounds (aggregate, reduce): the map outputs' per-partition rows and bytes and their heavy
  keys go to :func:`engine.skew.plan_reducers`, which coalesces small hash partitions, isolates hot
  keys and splits them over several partial tasks; :func:`reduce_tasks` lowers its assignments to
  tasks, and :func:`merge_tasks` makes one merge task per split key from the partial results.
* Sort rounds: range boundaries from the map outputs' key samples (:func:`engine.shuffle.choose_pieces`),
  one task per range piece.

Every decision, with its reason, goes into ``RunReport.skew``. Also here: the sizes that shape the
shuffle (:func:`spill_bytes`, :func:`sort_batch_bytes`) and the schema the committed output gets
(:func:`final_schema`).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pyarrow as pa

from . import config, extsort, shuffle, skew
from .cluster import ClusterInfo
from .compile import TaskSpec
from .errors import SchemaError
from .plan import Plan
from .report import RunReport
from .tasks import TaskContext, run_partial, run_reduce


def _spread(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    v = sorted(values)
    return {"count": len(v), "min": v[0], "median": v[len(v) // 2], "max": v[-1], "total": sum(v)}


def _fmt_spread(values: list[int]) -> str:
    d = _spread(values)
    if not d["count"]:
        return "none"
    return f"bytes min {d['min']:,} / median {d['median']:,} / max {d['max']:,}"


def spill_bytes(info: ClusterInfo) -> int:
    """The map-side buffer: the configured size, but at most 1/24 of a worker thread's memory
    (a spill holds the buffer, its combined copy and the partitioned copy at once)."""
    size = config.parse_size(config.get("shuffle.spill-size"), name="shuffle.spill-size")
    if info.memory_limit:
        size = min(size, max(4 << 20, info.memory_limit // 24))
    return size


def sort_batch_bytes(partition_size: int, runs: int) -> int:
    """Batch size of sorted runs on an object store: a range reducer also reads the two batches of each
    run that straddle its bounds, so batches of ``partition_size / (4 x runs)`` bytes keep what the
    reducers read within ~1.25x of what they need (local shuffle files are memory-mapped: no cap)."""
    return max(16 << 10, int(partition_size) // (4 * max(1, runs)))


def final_schema(results: dict[int, dict]) -> pa.Schema | None:
    """The output's schema: that of every partition with rows (they must agree), else the first reported."""
    schema, where = None, None
    for p in sorted(results):
        s = results[p].get("schema")
        if s is None or not results[p].get("rows_out"):
            continue
        if schema is None:
            schema, where = s, p
        elif not s.equals(schema):
            raise SchemaError(f"output partitions disagree on the schema: partition {where} has {schema}, partition "
                              f"{p} has {s}; make the last stage return the same columns and types for every key")
    if schema is None:
        schema = next((results[p]["schema"] for p in sorted(results) if results[p].get("schema") is not None), None)
    return schema


def reduce_tasks(plan: Plan, r, ctx: TaskContext, outputs: list[shuffle.MapOutput], map_schema,
                 shipped, info: ClusterInfo, rep: RunReport, skew_enabled: bool):
    """Round ``r``'s reduce tasks from its map ``outputs``: ``(tasks, describe(partition), merges)``,
    ``merges`` being ``[((hash partition, key), [share task indices]), ...]`` of split hot keys."""
    total = sum(o.total_bytes for o in outputs)
    min_tasks = info.threads if total >= (8 << 20) else 1
    if r.kind == "sort":
        n = skew.range_partition_count(total, plan.partition_size, min_tasks=min_tasks)
        samples = [(o.sample, o.rows_out / o.sample.num_rows) for o in outputs if o.sample is not None]
        pieces = shuffle.choose_pieces(samples, r.keys, ctx.descending, n, split_hot=skew_enabled)
        tasks = []
        for i, piece in enumerate(pieces):
            refs = shuffle.piece_slices(outputs, piece, ctx.descending)
            # Estimated input bytes: the piece's estimated rows times the runs' bytes per row.
            size = int(piece.rows * total / max(1, sum(o.rows_out for o in outputs)))
            tasks.append(TaskSpec(i, run_reduce, (ctx, shipped, refs, piece, map_schema), size or None))
        hot = [p for p in pieces if p.share is not None]
        sizes = [int(p.rows) for p in pieces]
        rep.skew.append({"action": "range", "round": r.index, "partitions": len(tasks), "total_bytes": total,
                         "estimated_rows": _spread(sizes),
                         "reason": f"round {r.index + 1}: {len(tasks)} range partitions from "
                                   f"{sum(s[0].num_rows for s in samples)} sampled keys over {total:,} bytes "
                                   f"(estimated rows per partition min {min(sizes):,} / max {max(sizes):,})"})
        for key in dict.fromkeys(p.lo for p in hot):
            shares = [p for p in hot if p.lo == key]
            rows = sum(p.rows for p in shares)
            where = (f"spread over {len(shares)} adjacent partitions" if len(shares) > 1
                     else "given a partition of its own")
            rep.skew.append({"action": "split" if len(shares) > 1 else "isolate", "round": r.index,
                             "key": list(key), "shares": len(shares), "rows": int(rows),
                             "reason": f"hot sort key {key!r} (~{rows:,.0f} rows, at least one partition's share "
                                       f"of ~{sum(sizes) / max(1, n):,.0f}) {where}"})
        return tasks, (lambda p: pieces[p].describe()), []
    nparts = outputs[0].num_partitions if outputs else 1
    rows = [sum(o.rows[p] for o in outputs) for p in range(nparts)]
    sizes = [sum(o.nbytes[p] for o in outputs) for p in range(nparts)]
    heavy: dict[tuple, list[int]] = {}
    for o in outputs:
        for key, p, est in o.heavy_keys:
            entry = heavy.setdefault(tuple(key), [p, 0])
            entry[1] += est
    sources = [sum(1 for o in outputs if o.batches[p]) for p in range(nparts)]
    # a task's input within the workers' memory budget too (engine.extsort): half of it, so that a
    # partition is split before a plain reduce task would have to refuse it
    budget = extsort.budget_for(info.memory_limit)
    target = plan.partition_size if budget is None else min(plan.partition_size, max(1 << 20, budget // 2))
    rplan = skew.plan_reducers(rows, sizes, [(k, p, est) for k, (p, est) in heavy.items()], target,
                               sources=sources,
                               min_tasks=min_tasks, enabled=skew_enabled, combinable=r.combinable,
                               factor=float(config.get("skew.factor")),
                               split_over=float(config.get("skew.split-over")))
    for d in rplan.decisions:
        rep.skew.append({**d, "round": r.index})
    before = [b for b in sizes if b]
    after = [a.nbytes for a in rplan.assignments]
    rep.skew.append({"action": "plan", "round": r.index, "partitions_before": _spread(before),
                     "tasks_after": _spread(after),
                     "reason": f"round {r.index + 1}: {len(before)} non-empty hash partitions "
                               f"({_fmt_spread(before)}) -> {len(after)} reduce tasks ({_fmt_spread(after)})"})
    key_schema = pa.schema([map_schema.field(k) for k in r.keys]) if map_schema is not None else None
    tasks = []
    merges: dict[tuple, list[int]] = {}       # (partition, key) -> share task indices
    for a in rplan.assignments:
        sources = [o for o in outputs if any(o.batches[p] for p in range(a.start, a.stop))]
        if a.share is not None:
            # this share's map outputs: a contiguous run of them in map order, cut by their bytes in the
            # partition (order-sensitive aggregations, first/last, see the rows in input order)
            j, m = a.share
            weights = [o.nbytes[a.start] for o in sources]
            total_w, acc, mine = max(1, sum(weights)), 0, []
            for o, w_o in zip(sources, weights):
                if min(m - 1, int((acc + w_o / 2) * m / total_w)) == j:
                    mine.append(o)
                acc += w_o
            sources = mine
            merges.setdefault((a.start, a.only[0]), []).append(a.index)
        refs = [o.ref([b for p in range(a.start, a.stop) for b in o.batches[p]]) for o in sources]
        key_filter = None
        if (a.only or a.exclude or a.sub) and key_schema is not None:
            def key_table(chosen):
                return pa.Table.from_pylist([dict(zip(r.keys, k)) for k in chosen], schema=key_schema) \
                    if chosen else None
            key_filter = {"only": key_table(a.only), "exclude": key_table(a.exclude), "sub": a.sub}
        fn = run_partial if a.share is not None else run_reduce
        tasks.append(TaskSpec(a.index, fn, (ctx, shipped, refs, key_filter, map_schema), a.nbytes))
    assignments = rplan.assignments
    return tasks, (lambda p: assignments[p].describe()), list(merges.items())


def merge_tasks(ctx: TaskContext, shipped, results: dict[int, dict],
                merges: list[tuple[tuple, list[int]]]) -> tuple[list[TaskSpec], dict[int, str]]:
    """After a reduce stage with split hot keys: one merge task per key, which finishes its shares'
    partial results (through the round's combine) and takes an output partition number after the
    others. ``(tasks, {partition: description})``."""
    merge_ctx = replace(ctx, map_combine=True)
    first = max(results) + 1 if results else 0
    tasks, described = [], {}
    for h, ((partition, key), shares) in enumerate(merges):
        outs = [results[i]["shuffle"] for i in shares]
        refs = [o.ref(o.batches[0]) for o in outs if o.batches[0]]
        schema = next((results[i]["schema"] for i in shares if results[i].get("schema") is not None), None)
        tasks.append(TaskSpec(first + h, run_reduce, (merge_ctx, shipped, refs, None, schema),
                              sum(o.total_bytes for o in outs)))
        described[first + h] = f"merge of {len(shares)} shares of hot key {key!r} (hash partition {partition})"
    return tasks, described


def merged_results(fs, results: dict[int, dict], merged: dict[int, dict],
                   merges: list[tuple[tuple, list[int]]]) -> dict[int, dict]:
    """The round's results with the merged ones in place of their shares (whose files are removed)."""
    shared = {i for _, shares in merges for i in shares}
    partials = [results[i]["shuffle"].path for i in shared]
    out = {p: v for p, v in results.items() if p not in shared}
    out.update(merged)
    cleanup_files(fs, partials)
    return out


def cleanup_files(fs, paths: list[str]) -> None:
    """Remove shuffle files no later stage reads (best effort)."""
    for p in paths:
        with contextlib.suppress(Exception):
            fs.rm(p)


__all__ = ["reduce_tasks", "merge_tasks", "merged_results", "final_schema", "spill_bytes", "sort_batch_bytes",
           "cleanup_files"]
