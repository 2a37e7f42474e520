"""Executing a plan's stage DAG (:class:`engine.plan.Node`), node by node in dependency order.

A node of one side is a round: its map stage, then its reduce (aggregate, reduce or sort) or
nothing. A join or cogroup node maps each side into hash partitions of the same number, then
joins partition by partition (:mod:`engine.joinplan` decides how, from the measured sizes).

What a node hands to the nodes after it is a :class:`Stream`: the splits to read (its reduce
output, or, after a broadcast join, the big side's own input) and the steps fused before the
reader's maps (``ops``: the big side's maps and the broadcast join itself), so a chain of
broadcast joins runs inside one map stage over the big side, without writing anything between.

Independent sides run concurrently: the map tasks of every side of a shuffle join are one stage.
Only when a side is small enough that it might be broadcast does it run first, alone, so that
its measured size can decide the strategy before the other side is shuffled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from . import config, reduceplan
from .compile import TaskSpec, stage_prefix
from .datasets import InputSpec, Split, is_local
from .errors import SchemaError
from .joinplan import choose_broadcast, hash_class, plan_join_tasks, side_bytes
from .plan import Node, Plan, Side
from .report import RunReport
from .tasks import TaskContext, run_join, run_map

log = logging.getLogger("engine")


@dataclass(frozen=True)
class Stream:
    """What a side reads: splits on a filesystem, and the steps fused before its own maps."""

    splits: tuple[Split, ...]
    fs: Any
    est_bytes: int
    partition_types: dict = field(default_factory=dict)
    columns: tuple[str, ...] | None = None      # input columns to read (named inputs only)
    ops: tuple = ()


@dataclass
class Execution:
    """Everything the nodes of one run share."""

    plan: Plan
    executor: Any                 # engine.executor.StageExecutor
    rep: RunReport
    info: Any                     # engine.cluster.ClusterInfo
    run_id: str
    shipped: Any
    shuffle_fs: Any
    shuffle_root: str
    out_fs: Any
    out: str
    skew_enabled: bool
    faults: Any
    map_combine: bool
    run_fence: Any
    leftovers: list[str] = field(default_factory=list)   # shuffle files read by a later stage (broadcast sides)
    partition_by: tuple[str, ...] = ()    # the output's Hive partition columns
    logical_date: str | None = None       # engine.logical_date() in the job's functions

    @property
    def count(self) -> int:
        return len(self.plan.nodes)

    def prefix(self, node: Node, stage: str) -> str:
        return stage_prefix(self.plan.job.name, node.index, stage, self.plan.fingerprint,
                            f"{self.run_id}:{self.executor.session}")

    def context(self, node: Node, *, kind: str, keys: tuple[str, ...], stream: Stream, num_partitions: int = 1,
                side: int = 0, ops: tuple | None = None) -> TaskContext:
        r = node.round
        return TaskContext(
            run_id=self.run_id, job=self.plan.job.name, round=node.index, rounds=self.count, kind=kind, keys=keys,
            descending=bool(r.reduce.descending) if r.reduce is not None else False, shuffle_fs=self.shuffle_fs,
            shuffle_root=self.shuffle_root, out_fs=self.out_fs, out_root=self.out, num_partitions=num_partitions,
            spill_bytes=reduceplan.spill_bytes(self.info),
            batch_rows=int(config.get("batch-rows")), sort_batch_rows=int(config.get("shuffle.sort-batch-rows")),
            sample_size=int(config.get("shuffle.sample-size")),
            top_keys=int(config.get("skew.top-keys")) if (self.skew_enabled and kind in ("reduce", "aggregate"))
            else 0,
            columns=stream.columns, partition_types=stream.partition_types,
            page_checksums=bool(config.get("checksums.page-checksums")), faults=self.faults,
            map_combine=self.map_combine, report_progress=self.executor.supervisor is not None,
            fence=self.run_fence, side=side, ops=stream.ops if ops is None else ops,
            partition_by=self.partition_by, logical_date=self.logical_date, guards=self.executor.guards,
            max_file_bytes=config.parse_size(config.get("output.max-file-bytes"), name="output.max-file-bytes"))


def input_stream(spec: InputSpec, side: Side) -> Stream:
    read = side.read     # the plan's pushdown: read columns and the splits its where leaves
    if read is None:
        return Stream(tuple(spec.splits), spec.fs, spec.total_bytes, dict(spec.partition_types), side.columns)
    return Stream(read.splits, spec.fs, read.est_bytes, dict(spec.partition_types), read.columns)


def output_stream(ex: Execution, results: dict[int, dict]) -> Stream:
    splits = [results[p]["next_input"] for p in sorted(results)]
    return Stream(tuple(replace(s, index=i) for i, s in enumerate(splits)), ex.shuffle_fs,
                  sum(int(results[p]["bytes_out"] or 0) for p in results))


def execute(ex: Execution, specs: dict[str, InputSpec]) -> tuple[dict[int, dict], pa.Schema | None]:
    """Run every node, level by level (a node's level is one more than its inputs' highest); the last
    node's results (commit messages per partition) and output schema.

    Independent aggregations or reduces of one level (the two sides of a join that both reduce first)
    run together: their map tasks as one stage, then their reduce tasks as one stage.
    """
    streams: dict[int, Stream] = {}
    last = ex.count - 1
    level: dict[int, int] = {}
    for node in ex.plan.nodes:
        level[node.index] = 1 + max((level[u] for u in node.upstream), default=-1)
    for lv in sorted(set(level.values())):
        nodes = [n for n in ex.plan.nodes if level[n.index] == lv]
        together = [n for n in nodes if n.kind in ("aggregate", "reduce") and n.index != last]
        alone = [n for n in nodes if n not in together]
        if together:
            outs = _round_nodes(ex, [(n, _side_streams(n, specs, streams)[0]) for n in together])
            streams.update({n.index: out for n, out in zip(together, outs)})
        for node in alone:
            sides = _side_streams(node, specs, streams)
            out = _join_node(ex, node, sides) if node.kind in ("join", "cogroup") else \
                _round_nodes(ex, [(node, sides[0])])[0]
            if node.index == last:
                return out
            streams[node.index] = out
    raise AssertionError("the last node of a plan depends on every other")


def _side_streams(node: Node, specs: dict[str, InputSpec], streams: dict[int, Stream]) -> list[Stream]:
    return [input_stream(specs[s.input], s) if s.input is not None else streams[s.upstream] for s in node.sides]


def _together(ex: Execution, nodes: list[Node], stage: str, parts: list[tuple[list[TaskSpec], Any]],
              kind: str) -> list[dict[int, dict]]:
    """Run the tasks of several nodes' stages as one stage (partitions numbered one after the other);
    each node's results under its own partition numbers."""
    name = "+".join(f"r{n.index}" for n in nodes) + f"-{stage}"
    tasks, owner, describe = [], {}, {}
    for j, (node_tasks, desc) in enumerate(parts):
        for t in node_tasks:
            # one node keeps its partition numbers (they name its output files: merge tasks come after
            # its reduce tasks); several are numbered one after the other
            g = t.partition if len(parts) == 1 else len(tasks)
            tasks.append(t if len(parts) == 1 else replace(t, partition=g))
            owner[g] = (j, t.partition)
            describe[g] = (desc, t.partition)
    first = nodes[0]
    log.info("stage %s/%d: %s, %d task(s)", "+".join(str(n.index + 1) for n in nodes), ex.count, stage, len(tasks))
    prefix = ex.prefix(first, stage if len(nodes) == 1 else name)
    results = ex.executor.run(name, prefix, tasks, round_index=first.index, round_count=ex.count, kind=kind,
                              describe=lambda g: describe[g][0](describe[g][1]))
    out: list[dict[int, dict]] = [{} for _ in parts]
    for g, v in results.items():
        j, p = owner[g]
        out[j][p] = v
    return out


# ---------------------------------------------------------------------------------------------
# One round: map, then reduce / sort / nothing


def _round_nodes(ex: Execution, group: list[tuple[Node, Stream]]) -> list:
    """One or more independent rounds: their map stages as one, then their reduce stages as one."""
    nodes = [n for n, _ in group]
    ctxs, maps = [], []
    for node, stream in group:
        r = node.round
        hashed = r.kind in ("aggregate", "reduce")
        ctx = ex.context(node, kind=r.kind, keys=r.keys, stream=stream,
                         num_partitions=ex.plan.initial_partitions(stream.est_bytes) if hashed else 1)
        if r.kind == "sort" and not is_local(ex.shuffle_fs):
            ctx = replace(ctx, sort_batch_bytes=reduceplan.sort_batch_bytes(ex.plan.partition_size,
                                                                            len(stream.splits)))
        ctxs.append(ctx)
        tasks = [TaskSpec(i, run_map, (ctx, ex.shipped, stream.fs, s), s.size) for i, s in enumerate(stream.splits)]
        by_index = dict(enumerate(stream.splits))
        maps.append((tasks, lambda p, b=by_index: f"input {b[p].describe()}"))
    mapped = _together(ex, nodes, "map", maps, "map")
    if len(nodes) == 1 and nodes[0].kind == "map":
        return [_finish(ex, nodes[0], mapped[0])]
    planned = []
    for node, ctx, results in zip(nodes, ctxs, mapped):
        r = replace(node.round, index=node.index)
        outputs = [results[p]["shuffle"] for p in sorted(results)]
        # (a map task that read nothing, e.g. from a file set aside as unreadable, has no columns to tell)
        schemas = [results[p]["schema"] for p in sorted(results) if results[p].get("schema") is not None]
        schema = next((x for x in schemas if len(x.names)), schemas[0] if schemas else None)
        tasks, describe, merges = reduceplan.reduce_tasks(ex.plan, r, ctx, outputs, schema, ex.shipped, ex.info,
                                                          ex.rep, ex.skew_enabled)
        planned.append((outputs, tasks, describe, merges))
    reduced = _together(ex, nodes, "reduce", [(t, d) for _, t, d, _ in planned], "reduce")
    outs = []
    for node, ctx, (outputs, _, _, merges), results in zip(nodes, ctxs, planned, reduced):
        if merges:
            tasks, described = reduceplan.merge_tasks(ctx, ex.shipped, results, merges)
            merged = _together(ex, [node], "merge", [(tasks, lambda p, d=described: d[p])], "reduce")[0]
            results = reduceplan.merged_results(ex.shuffle_fs, results, merged, merges)
        reduceplan.cleanup_files(ex.shuffle_fs, [o.path for o in outputs])
        outs.append(_finish(ex, node, results))
    return outs


def _finish(ex: Execution, node: Node, results: dict[int, dict]):
    if node.index == ex.count - 1:
        return results, reduceplan.final_schema(results)
    return output_stream(ex, results)


# ---------------------------------------------------------------------------------------------
# Joins and cogroups


def _map_sides(ex: Execution, node: Node, streams: list[Stream], which: list[int], num_partitions: int,
               stage: str) -> dict[int, dict[int, dict]]:
    """One map stage over the sides ``which`` (their tasks run together): ``{side: {task: result}}``."""
    tasks, owner, described = [], {}, {}
    for s in which:
        side, stream = node.sides[s], streams[s]
        ctx = ex.context(node, kind=node.kind, keys=side.keys, stream=stream, num_partitions=num_partitions, side=s)
        for split in stream.splits:
            i = len(tasks)
            tasks.append(TaskSpec(i, run_map, (ctx, ex.shipped, stream.fs, split), split.size))
            owner[i] = s
            described[i] = f"side {side.label!r}, input {split.describe()}"
    log.info("stage %d/%d: %s, %d task(s) over side(s) %s", node.index + 1, ex.count, stage, len(tasks),
             ", ".join(repr(node.sides[s].label) for s in which))
    results = ex.executor.run(f"r{node.index}-{stage}", ex.prefix(node, stage), tasks, round_index=node.index,
                              round_count=ex.count, kind="map", describe=lambda p: described[p])
    out: dict[int, dict[int, dict]] = {s: {} for s in which}
    for p, v in results.items():
        out[owner[p]][p] = v
    return out


def _outputs(results: dict[int, dict]) -> list:
    return [results[p]["shuffle"] for p in sorted(results)]


def _schema(results: dict[int, dict]) -> pa.Schema | None:
    return next((results[p]["schema"] for p in sorted(results) if results[p].get("schema") is not None), None)


def _join_node(ex: Execution, node: Node, streams: list[Stream]):
    spec = node.join
    labels = [s.label for s in node.sides]
    nparts = ex.plan.initial_partitions(sum(s.est_bytes for s in streams))
    strategy = str(config.get("join.strategy"))
    if strategy not in ("auto", "shuffle", "broadcast"):
        raise SchemaError(f"engine.join.strategy must be 'auto', 'shuffle' or 'broadcast', got {strategy!r}")
    limit = config.parse_size(config.get("join.broadcast-max"), name="engine.join.broadcast-max")
    results: dict[int, dict[int, dict]] = {}
    first = None
    if spec is not None and strategy != "shuffle":
        candidates = [s for s in (1, 0) if spec.broadcastable(s)]
        if strategy == "auto":       # measured map output decides; input size only picks who runs first
            candidates = [s for s in candidates if streams[s].est_bytes <= 8 * limit]
        first = min(candidates, key=lambda s: streams[s].est_bytes) if candidates else None
    if first is not None:
        results.update(_map_sides(ex, node, streams, [first], nparts, f"map{first}-{_safe(labels[first])}"))
        measured = side_bytes(_outputs(results[first]))
        sizes = [measured if s == first else None for s in range(len(streams))]
        if choose_broadcast(spec, sizes, limit, strategy) == first:
            return _broadcast(ex, node, streams, first, results[first], measured, limit, strategy)
        rest = [s for s in range(len(streams)) if s != first]
        results.update(_map_sides(ex, node, streams, rest, nparts,
                                  "map" if len(rest) > 1 else f"map{rest[0]}-{_safe(labels[rest[0]])}"))
    else:
        results.update(_map_sides(ex, node, streams, list(range(len(streams))), nparts, "map"))
    sides = [_outputs(results[s]) for s in range(len(streams))]
    schemas = [_schema(results[s]) for s in range(len(streams))]
    _check_key_types(node, schemas)
    tasks, decisions = plan_join_tasks(
        sides, spec, ex.plan.partition_size, min_tasks=ex.info.threads if sum(map(side_bytes, sides)) >= (8 << 20)
        else 1, skew_enabled=ex.skew_enabled, factor=float(config.get("skew.factor")),
        split_over=float(config.get("skew.split-over")), labels=labels, keys=[s.keys for s in node.sides])
    sizes = [side_bytes(o) for o in sides]
    what = spec.describe() if spec is not None else "cogroup"
    why = ("forced by engine.join.strategy='shuffle'" if strategy == "shuffle" else
           "a full join or cogroup needs every side's unmatched rows" if spec is None or
           not (spec.broadcastable(0) or spec.broadcastable(1)) else
           f"no side that may be broadcast has at most {limit:,} bytes of map output")
    ex.rep.joins.append({"stage": node.index, "strategy": "shuffle", "how": spec.how if spec else "cogroup",
                         "sides": dict(zip(labels, sizes)), "limit": limit, "partitions": nparts,
                         "tasks": len(tasks),
                         "reason": f"stage {node.index + 1}: shuffle {what} of "
                                   + ", ".join(f"{_who(node, i)} ({b:,} bytes)" for i, b in enumerate(sizes))
                                   + f" into {len(tasks)} tasks ({why})"})
    for d in decisions:
        ex.rep.joins.append({**d, "stage": node.index})
    ctx = ex.context(node, kind=node.kind, keys=node.sides[0].keys, stream=streams[0], num_partitions=nparts)
    specs = [TaskSpec(t.index, run_join, (ctx, ex.shipped, t.refs, t.piece, schemas), t.nbytes) for t in tasks]
    log.info("stage %d/%d: %s, %d task(s)", node.index + 1, ex.count, node.kind, len(specs))
    out = ex.executor.run(f"r{node.index}-{node.kind}", ex.prefix(node, node.kind), specs, round_index=node.index,
                          round_count=ex.count, kind="reduce", describe=lambda p: tasks[p].describe(labels))
    reduceplan.cleanup_files(ex.shuffle_fs, [o.path for outs in sides for o in outs])
    return _finish(ex, node, out)


def _broadcast(ex: Execution, node: Node, streams: list[Stream], small: int, results: dict[int, dict],
               measured: int, limit: int, strategy: str):
    """Join the big side on its way through its own map stage, with the small side read whole."""
    big = 1 - small
    labels = [s.label for s in node.sides]
    outputs = _outputs(results)
    refs = tuple(o.ref([b for bs in o.batches for b in bs]) for o in outputs if o.total_rows)
    schema = _schema(results)
    ex.leftovers.extend(o.path for o in outputs)
    why = "forced by engine.join.strategy='broadcast'" if strategy == "broadcast" else f"at most {limit:,} bytes"
    ex.rep.joins.append({"stage": node.index, "strategy": "broadcast", "how": node.join.how,
                         "broadcast": labels[small], "bytes": measured, "limit": limit,
                         "other": labels[big], "other_estimated_bytes": streams[big].est_bytes,
                         "reason": f"stage {node.index + 1}: broadcast {node.join.describe()}: side "
                                   f"{_who(node, small)} ({measured:,} bytes of map output, {why}) sent to every "
                                   f"map task of {_who(node, big)} (~{streams[big].est_bytes:,} bytes in)"})
    stream = streams[big]
    # every call of the join kernel builds its hash table anew (~15-40 ms a call on top of the work, measured),
    # so the big side is probed in chunks of engine.join.broadcast-chunk-rows rows, not batch by batch
    # ... and a chunk at least twice the small side keeps the hash table on the small side (built once a chunk)
    chunk = int(config.get("join.broadcast-chunk-rows"))
    small_rows = sum(o.total_rows for o in outputs)
    chunk = max(chunk, min(4 * chunk, 2 * small_rows))
    ops = stream.ops + (("maps", node.index, big), ("broadcast", node.index, big, refs, schema, chunk))
    if node.post:
        ops += (("post", node.index),)
    if node.index < ex.count - 1:
        return replace(stream, ops=ops)
    ctx = ex.context(node, kind="map", keys=(), stream=stream, side=-1, ops=ops)
    tasks = [TaskSpec(i, run_map, (ctx, ex.shipped, stream.fs, s), s.size) for i, s in enumerate(stream.splits)]
    by_index = dict(enumerate(stream.splits))
    log.info("stage %d/%d: broadcast join, %d task(s)", node.index + 1, ex.count, len(tasks))
    out = ex.executor.run(f"r{node.index}-broadcast", ex.prefix(node, "broadcast"), tasks, round_index=node.index,
                          round_count=ex.count, kind="map",
                          describe=lambda p: f"side {labels[big]!r}, input {by_index[p].describe()}")
    return _finish(ex, node, out)


def _check_key_types(node: Node, schemas: list[pa.Schema | None]) -> None:
    """Sides partitioned by keys whose equal values hash differently would never meet."""
    first = node.sides[0]
    for s in range(1, len(node.sides)):
        side = node.sides[s]
        if schemas[0] is None or schemas[s] is None:
            continue
        for lk, rk in zip(first.keys, side.keys):
            if lk not in schemas[0].names or rk not in schemas[s].names:
                continue
            lt, rt = schemas[0].field(lk).type, schemas[s].field(rk).type
            if hash_class(lt) != hash_class(rt):
                raise SchemaError(f"stage {node.index + 1}: key {lk!r} of {first.label!r} is {lt} but key {rk!r} of "
                                  f"{side.label!r} is {rt}; equal values of these types are not partitioned alike, "
                                  f"so they would never match: cast one side's key in a map (e.g. "
                                  f"t.set_column(i, {rk!r}, t[{rk!r}].cast(pa.{lt})))")


def _who(node: Node, s: int) -> str:
    """A side as the decisions name it: its input, or the stage whose output it is (a chain keeps the
    name of the input it started from, which alone would hide that it is a join's or aggregate's result)."""
    side = node.sides[s]
    if side.input is not None:
        return repr(side.label)
    return f"{side.label!r} (the output of stage {side.upstream + 1})"


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in label)[:24]


__all__ = ["Stream", "Execution", "execute"]
