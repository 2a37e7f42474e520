"""The logical plan: a job's rounds and stages over a resolved input, and ``explain()``.

A plan is immutable and made before anything runs. It checks the job against a sample of the
input (the first rows of the first split), so a missing key column or a combine that changes the
schema is reported by the driver, naming the round and the columns, before any task starts.

The first line names the job fingerprint and what it covers (:func:`engine.job.job_fingerprint`):
the code shipped by value and the user modules it came from, or the pinned ``version=``.

>>> print(job.explain("data/text"))                   # doctest: +SKIP
Job 'wordcount': 1 round, fingerprint 3f2a8c01d2e4b5f6 (code of 1 function from 1 user module
(wordcount) by value, stage structure and aggregations, engine 0.1.0, python 3.11)
round 1 (aggregate by ['word'])
  map   <lambda>               per split: 2 map tasks over 2 files (1.1 MB)
  shuffle hash(['word']) → 8 partitions, coalesced at run time toward 64.0 MiB per reducer
  reduce aggs {count=count()}  partial on map side, merge + finalize per reducer
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from . import config, counters
from .datasets import (InputSpec, Pruning, Split, input_schema, normalize_format, prune_splits, resolve_input,
                       sample_table)
from .errors import EngineError, JobDefinitionError, SchemaError
from .job import (UNNAMED_INPUT, Job, Round, Stage, describe_where, job_fingerprint, leading_where, needed_columns,
                  where_error)
from .joins import JoinSpec, check_keys, join_tables


@dataclass(frozen=True)
class Side:
    """One stream feeding a node: a named input or an earlier node's output, through its maps."""

    label: str
    maps: tuple[Stage, ...]
    keys: tuple[str, ...]                 # the columns this side is partitioned by ((): map-only)
    input: str | None = None              # the named input it reads, or
    upstream: int | None = None           # the node whose output it reads
    columns: tuple[str, ...] | None = None  # the input columns its first map needs (inputs only)
    derived: bool = False                 # ``columns`` derived from declarative stages, not declared
    where: Any = None                     # the condition pushed into reading the input (inputs only)
    read: SideRead | None = field(default=None, compare=False)   # set by build_plan once inputs are known

    def describe(self) -> str:
        return f"input {self.input!r}" if self.input is not None else f"the output of stage {self.upstream + 1}"

    def describe_read(self) -> str:
        """What this side reads of its input, for ``explain``: the columns and the pushed condition."""
        if self.input is None:
            return ""
        if self.columns is None:
            text = "all columns"
        else:
            text = f"columns {list(self.columns)} ({'derived from the aggregation' if self.derived else 'columns='})"
            cols = self.read.columns if self.read is not None else None
            extra = [c for c in cols or () if c not in self.columns]
            if extra:
                text += f" + {extra} for where"
        if self.where is not None:
            text += f"; where {describe_where(self.where)} pushed down"
            if self.read is not None and self.read.pruning is not None:
                text += f": reads {self.read.pruning.describe()}"
        return text


@dataclass(frozen=True)
class SideRead:
    """What one side reads of its named input, decided with the input's schema: the columns (those
    its stages need plus those its ``where`` names; None: all) and the splits left after pruning."""

    columns: tuple[str, ...] | None
    splits: tuple[Split, ...]
    est_bytes: int
    pruning: Pruning | None = None


@dataclass(frozen=True)
class Node:
    """A stage of the plan's DAG: the map stage(s) of its sides, then its reduce (or nothing).

    A single-input job's nodes are its rounds (a trailing map-only round fused into the one
    before it as ``post`` maps); a join or cogroup node has one side per input it combines, and
    the nodes that produce those sides come before it. The last node writes the output.
    """

    index: int
    round: Round
    sides: tuple[Side, ...]
    chain: str                            # the name of the job this round belongs to
    post: tuple[Stage, ...] = ()          # maps run on this node's output before it is written

    @property
    def kind(self) -> str:
        return self.round.kind

    @property
    def join(self) -> JoinSpec | None:
        return self.round.reduce.join if self.round.reduce is not None else None

    @property
    def upstream(self) -> tuple[int, ...]:
        return tuple(s.upstream for s in self.sides if s.upstream is not None)


def build_nodes(job: Job) -> tuple[Node, ...]:
    """The DAG of ``job``'s stages, in an order where every node comes after the nodes it reads."""
    nodes: list[Node] = []

    def chain(j: Job) -> tuple[int | None, tuple[Stage, ...]]:
        upstream = None
        for r in j.rounds:
            if r.reduce is None:
                return upstream, r.maps
            first = upstream is None
            sides = [Side(j.label, r.maps, r.keys, input=j.label if first else None, upstream=upstream,
                          **(_reads(r.maps, r.reduce) if first else {}))]
            for label, other in r.reduce.others:
                up, maps = chain(other)
                keys = r.reduce.join.right_on if r.reduce.join is not None else r.reduce.by
                # a side read as it is by a join or cogroup passes every column on (None: all)
                sides.append(Side(label, maps, keys, input=other.label if up is None else None, upstream=up,
                                  **(_reads(maps, None) if up is None else {})))
            nodes.append(Node(len(nodes), r, tuple(sides), j.name))
            upstream = len(nodes) - 1
        return upstream, ()

    up, trailing = chain(job)
    if up is None:
        r = job.rounds[-1]
        nodes.append(Node(0, r, (Side(job.label, trailing, (), input=job.label, **_reads(trailing, None)),),
                          job.name))
    elif trailing:
        nodes[up] = replace(nodes[up], post=trailing)
    # The maps that read a node's output run inside that node's reduce tasks instead, on each output chunk
    # before it is written (every node's output feeds exactly one side): a filter after an aggregation
    # then writes its few rows, not the aggregation's many.
    for i, node in enumerate(nodes):
        sides = list(node.sides)
        for s, side in enumerate(sides):
            if side.upstream is not None and side.maps:
                u = nodes[side.upstream]
                nodes[side.upstream] = replace(u, post=u.post + side.maps)
                sides[s] = replace(side, maps=())
        nodes[i] = replace(nodes[i], sides=tuple(sides))
    return tuple(nodes)


def _reads(maps: tuple[Stage, ...], reduce: Stage | None) -> dict:
    """A side's read of its input, as far as the job's structure decides it (see ``needed_columns``)."""
    columns, declared = needed_columns(maps, reduce)
    return {"columns": columns, "derived": columns is not None and not declared, "where": leading_where(maps)}


def plan_reads(nodes: tuple[Node, ...], specs: Mapping[str, InputSpec]) -> tuple[Node, ...]:
    """``nodes`` with every side that reads a named input told what it reads (:class:`SideRead`): the
    columns its ``where`` names join its own, and the splits its ``where`` cannot rule out.

    Raises :class:`SchemaError` for a ``where`` naming a column the input lacks and
    :class:`JobDefinitionError` for one that is no condition over the input's columns.
    """
    out = []
    for node in nodes:
        sides = []
        for side in node.sides:
            spec = specs.get(side.input) if side.input is not None else None
            if spec is not None:
                side = replace(side, read=_side_read(spec, side, f"stage {node.index + 1} (job {node.chain!r})"))
            sides.append(side)
        out.append(replace(node, sides=tuple(sides)))
    return tuple(out)


def _side_read(spec: InputSpec, side: Side, stage: str) -> SideRead:
    columns, pruning, splits = side.columns, None, tuple(spec.splits)
    what = f"input {side.input!r}" if side.input != UNNAMED_INPUT else "the input"
    if columns is not None and not side.derived and spec.schema is not None:
        names = input_schema(spec).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise SchemaError(f"{stage}: map columns= asks for {missing}, which {what} lacks; it has {names}")
    if side.where is not None and spec.schema is not None:
        schema = input_schema(spec)
        try:
            schema.empty_table().filter(side.where)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            err = where_error(exc, side.where, schema, what)
            err.args = (f"{stage}: {err.args[0]}",)
            raise err from exc
        if columns is not None:
            columns = columns + tuple(c for c in _where_columns(side.where, schema) if c not in columns)
        pruning = prune_splits(spec, side.where, schema)
        splits = pruning.splits
    elif side.where is not None:
        columns = None              # no schema to find the columns the condition names: read them all
    if side.derived and columns is not None and spec.schema is not None \
            and any(c not in input_schema(spec).names for c in columns):
        columns = None     # a key or column the input lacks: read all, and the sample check names it
    est = spec.total_bytes if pruning is None else sum(s.size for s in splits)
    return SideRead(columns, splits, est, pruning)


def _where_columns(where: Any, schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` that ``where`` names: those without which it no longer binds (bound
    by listing the fragments of a one-path dataset, ~0.06 ms a try: no file is touched)."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    out = []
    for i, f in enumerate(schema):
        try:
            list(pads.FileSystemDataset.from_paths(["/0"], schema=schema.remove(i), format=pads.ParquetFileFormat(),
                                                   filesystem=pafs.LocalFileSystem()).get_fragments(filter=where))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            out.append(f.name)
    return out


@dataclass(frozen=True)
class Plan:
    """A job bound to its inputs: the stage DAG, splits and the sizes that drive the number of tasks."""

    job: Job
    fingerprint: str
    rounds: tuple[Round, ...]
    input: InputSpec | None               # the job's only input (None: several, see ``inputs``)
    partition_size: int
    fingerprint_covers: str = ""
    nodes: tuple[Node, ...] = ()
    inputs: Mapping[str, InputSpec] | None = None

    @property
    def multi_input(self) -> bool:
        return len(self.job.inputs) > 1 or any(n.kind in ("join", "cogroup") for n in self.nodes)

    def initial_partitions(self, estimated_bytes: int) -> int:
        """Hash partitions each map task writes, before the driver coalesces them."""
        lo, hi = int(config.get("shuffle.min-partitions")), int(config.get("shuffle.max-partitions"))
        want = math.ceil(2 * max(estimated_bytes, 1) / self.partition_size)
        return int(min(hi, max(lo, want)))

    def describe(self) -> str:
        if self.multi_input:
            return self._describe_dag()
        lines = [f"Job {self.job.name!r}: {len(self.rounds)} round{'s' if len(self.rounds) != 1 else ''}, "
                 f"fingerprint {self.fingerprint}" + (f" ({self.fingerprint_covers})" if self.fingerprint_covers
                                                      else "")]
        if self.input is not None:
            spec = self.input
            lines.append(f"input: {len(spec.snapshot)} {spec.format} file(s), {_size(spec.total_bytes)}, "
                         f"{len(spec.splits)} split(s) on {spec.protocol}://"
                         + (f", partition columns {list(spec.partition_types)}" if spec.partition_types else "")
                         + _pruned(spec))
        for r in self.rounds:
            head = f"round {r.index + 1} ({r.kind}" + (f" by {list(r.keys)}" if r.keys else "") + ")"
            lines.append(head)
            if r.index == 0 and self.nodes:
                lines.append(f"  read   {self.nodes[0].sides[0].describe_read()}")
            if self.input is not None and r.index == 0:
                tasks = f"{len(self.input.splits)} map tasks"
            elif r.index == 0:
                tasks = "one map task per input split"
            else:
                tasks = "one map task per partition of the previous round"
            if not r.maps:
                lines.append(f"  map    (identity)  {tasks}")
            for m in r.maps:
                lines.append(f"  {m.describe():<40} {tasks}")
            if r.combine is not None:
                lines.append(f"  {r.combine.describe():<40} per map spill (0..n times)")
            if r.kind in ("aggregate", "reduce"):
                est = self.input.total_bytes if (self.input is not None and r.index == 0) else None
                parts = f"{self.initial_partitions(est)} partitions" if est is not None else "N partitions (from input size)"
                lines.append(f"  shuffle hash({list(r.keys)}) -> {parts}, coalesced at run time toward "
                             f"{_size(self.partition_size)} per reducer")
                if r.kind == "aggregate":
                    lines.append(f"  {r.reduce.describe()}  (partial on map side; merge + finalize per reducer)")
                else:
                    lines.append(f"  {r.reduce.describe()}")
            elif r.kind == "sort":
                lines.append(f"  shuffle range({list(r.keys)}{', descending' if r.reduce.descending else ''}) "
                             f"from sampled boundaries, ~{_size(self.partition_size)} per reducer")
                lines.append("  reduce  merge sorted runs per key range")
            out = "output (Parquet, committed with a _SUCCESS manifest)" if r.index == len(self.rounds) - 1 \
                else f"input of round {r.index + 2}"
            lines.append(f"  -> {out}")
        return "\n".join(lines)


    def _describe_dag(self) -> str:
        n = len(self.nodes)
        lines = [f"Job {self.job.name!r}: {n} stage{'s' if n != 1 else ''} over inputs {list(self.job.inputs)}, "
                 f"fingerprint {self.fingerprint}" + (f" ({self.fingerprint_covers})" if self.fingerprint_covers
                                                      else "")]
        for name, spec in (self.inputs or {}).items():
            lines.append(f"input {name!r}: {len(spec.snapshot)} {spec.format} file(s), {_size(spec.total_bytes)}, "
                         f"{len(spec.splits)} split(s) on {spec.protocol}://" + _pruned(spec))
        for node in self.nodes:
            r = node.round
            head = f"stage {node.index + 1} ({node.kind}" + (f" by {list(node.sides[0].keys)}" if node.sides[0].keys
                                                               else "") + f", job {node.chain!r})"
            lines.append(head)
            for side in node.sides:
                maps = ", ".join(m.describe() for m in side.maps) or "(identity)"
                lines.append(f"  map {side.label!r} <- {side.describe()}: {maps}")
                if side.input is not None:
                    lines.append(f"    reads {side.describe_read()}")
            if node.kind == "join":
                lines.append(f"  {node.join.describe()} (right side: {node.sides[1].label!r}); strategy at run "
                             f"time: broadcast a side whose map output is at most "
                             f"{_size(config.parse_size(config.get('join.broadcast-max')))} (join types permitting), "
                             f"else shuffle hash join toward {_size(self.partition_size)} per task, skewed "
                             "partitions split")
            elif node.kind == "cogroup":
                lines.append(f"  shuffle hash by {list(node.sides[0].keys)}, then {r.reduce.describe()}")
            elif node.kind in ("aggregate", "reduce"):
                lines.append(f"  shuffle hash({list(r.keys)}), coalesced toward {_size(self.partition_size)}; "
                             f"{r.reduce.describe()}")
            elif node.kind == "sort":
                lines.append(f"  shuffle range({list(r.keys)}{', descending' if r.reduce.descending else ''})")
            for m in node.post:
                lines.append(f"  then {m.describe()}")
            out = "output (Parquet, committed with a _SUCCESS manifest)" if node.index == n - 1 else \
                f"input of stage {', '.join(str(x.index + 1) for x in self.nodes if node.index in x.upstream)}"
            lines.append(f"  -> {out}")
        return "\n".join(lines)


def _pruned(spec: InputSpec) -> str:
    n = spec.pruned_files
    return (f"; {n} more file{'s' if n != 1 else ''} in partitions that no reader's where can match (not read, "
            "not in the snapshot)") if n else ""


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def build_plan(job: Job, input_spec: InputSpec | Mapping[str, InputSpec] | None,
               partition_size: int | str | None = None, *, format: str | None = None) -> Plan:
    """The plan of ``job`` over ``input_spec`` (None: no input yet, as in ``explain(job)``); a job
    reading named inputs takes a dict ``{name: InputSpec}``.

    The fingerprint covers the options that change results: the input format (resolved from the
    input, else ``format``). Tuning (``partition_size``) does not enter it.
    """
    if not isinstance(job, Job):
        raise JobDefinitionError(f"expected an engine.Job, got {type(job).__name__}")
    size = config.parse_size(partition_size if partition_size is not None else config.get("partition-size"),
                             name="partition_size")
    nodes = build_nodes(job)
    if isinstance(input_spec, Mapping):
        specs = dict(input_spec)
        fmts = sorted({s.format for s in specs.values()})
        fmt = fmts[0] if len(fmts) == 1 else ",".join(f"{k}:{specs[k].format}" for k in sorted(specs))
        single = specs[job.label] if len(specs) == 1 and job.label in specs else None
    else:
        specs = {job.label: input_spec} if input_spec is not None else None
        fmt = input_spec.format if input_spec is not None else normalize_format(format)
        single = input_spec
    fp = job_fingerprint(job, {"format": fmt})
    if specs:
        nodes = plan_reads(nodes, specs)
    return Plan(job, fp.digest, tuple(job.rounds), single, size, fp.covers(), nodes, specs)


def validate_on_sample(plan: Plan, sample: pa.Table | Mapping[str, pa.Table | None] | None) -> None:
    """Run the job's functions on a few input rows in the driver, to catch shape mistakes early
    (a job reading named inputs takes a dict of samples; an input without one is not checked).
    What the functions count here (:mod:`engine.counters`) is thrown away: no run counts it."""
    if sample is None:
        return
    with counters.collect():
        _validate_on_sample(plan, sample)


def _validate_on_sample(plan: Plan, sample: pa.Table | Mapping[str, pa.Table | None]) -> None:
    if plan.multi_input or isinstance(sample, Mapping):
        samples = sample if isinstance(sample, Mapping) else {plan.job.label: sample}
        _validate_dag(plan, samples)
        return
    table = sample
    for r in plan.rounds:
        where = f"round {r.index + 1} of {len(plan.rounds)}"
        if r.index == 0 and plan.nodes:
            table = _project(table, plan.nodes[0].sides[0], where, "the input")
        for i, m in enumerate(r.maps):
            table = _call(m.task_fn, table, f"{where}: map function {i + 1} ({m.describe()})")
        if r.kind == "map":
            return
        missing = [k for k in r.keys if k not in table.column_names]
        if missing:
            stage = "sort" if r.kind == "sort" else "reduce"
            raise SchemaError(f"{where}: {stage} key column(s) {missing} not in the map output; it has columns "
                              f"{table.column_names}")
        if r.combine is not None:
            table = _combined(r.combine.fn, table, where)
        if r.kind == "aggregate":
            aggs = r.aggregations
            aggs.validate(table.schema)
            table = aggs.aggregate(table)
        elif r.kind == "reduce":
            table = _call(r.reduce.fn, table, f"{where}: reduce function")
        # sort keeps the table as is


def _validate_dag(plan: Plan, samples: Mapping[str, pa.Table | None]) -> None:
    """The sample check node by node: each node's output on the samples of its inputs (None where an
    input had no sample, and downstream of it)."""
    outputs: dict[int, pa.Table | None] = {}
    for node in plan.nodes:
        where = f"stage {node.index + 1} of {len(plan.nodes)} (job {node.chain!r})"
        tables: list[pa.Table | None] = []
        for side in node.sides:
            table = samples.get(side.input) if side.input is not None else outputs.get(side.upstream)
            if table is not None and side.input is not None:
                table = _project(table, side, where, f"input {side.input!r}")
            for i, m in enumerate(side.maps):
                if table is not None:
                    table = _call(m.task_fn, table, f"{where}: map function {i + 1} of {side.label!r} "
                                  f"({m.describe()})")
            if table is not None and side.keys:
                missing = [k for k in side.keys if k not in table.column_names]
                if missing:
                    raise SchemaError(f"{where}: key column(s) {missing} not in the map output of {side.label!r}; "
                                      f"it has columns {table.column_names}")
            tables.append(table)
        r, out = node.round, None
        if all(t is not None for t in tables):
            t = tables[0]
            if node.kind == "join":
                check_keys(t.schema, node.join.left_on, "left", node.join)
                out = join_tables(t, tables[1], node.join)
            elif node.kind == "cogroup":
                arg = {s.label: x for s, x in zip(node.sides, tables)}
                out = _call(r.reduce.fn, arg, f"{where}: cogroup function")
            elif node.kind == "aggregate":
                r.aggregations.validate(t.schema)
                out = r.aggregations.aggregate(t)
            elif node.kind == "reduce":
                if r.combine is not None:
                    t = _combined(r.combine.fn, t, where)
                out = _call(r.reduce.fn, t, f"{where}: reduce function")
            else:
                out = t
            for i, m in enumerate(node.post):
                out = _call(m.task_fn, out, f"{where}: map function {i + 1} after it ({m.describe()})")
        outputs[node.index] = out


def _project(table: pa.Table, side: Side, where: str, what: str) -> pa.Table:
    """A sample of an input as the side's map tasks read it: its read columns only."""
    cols = side.read.columns if side.read is not None else side.columns
    if cols is None:
        return table
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        if side.derived:
            return table     # a key or an aggregation's column the input lacks: the stage's check names it
        raise SchemaError(f"{where}: map columns= asks for {missing}, which {what} lacks; it has "
                          f"{table.column_names}")
    return table.select(list(cols))


def _combined(fn, table: pa.Table, where: str) -> pa.Table:
    """The user's combine on a sample, which must keep the schema (the engine applies it 0..n times)."""
    out = _call(fn, table, f"{where}: combine")
    if not out.schema.equals(table.schema):
        raise SchemaError(f"{where}: combine changed the schema from {_cols(table.schema)} to "
                          f"{_cols(out.schema)}; a combine must return the columns and types it receives, "
                          "because the engine may apply it zero, one or many times")
    return out


def _cols(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _call(fn, table: pa.Table, where: str) -> pa.Table:
    try:
        out = fn(table)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with context, original chained
        if isinstance(table, Mapping):
            shape = ", ".join(f"{k}: {v.num_rows} rows" for k, v in table.items())
            raise JobDefinitionError(f"{where} failed on a sample of the inputs ({shape}): "
                                     f"{type(exc).__name__}: {exc}") from exc
        raise JobDefinitionError(f"{where} failed on a sample of the input ({table.num_rows} rows with columns "
                                 f"{table.column_names}): {type(exc).__name__}: {exc}") from exc
    if isinstance(out, pa.RecordBatch):
        out = pa.Table.from_batches([out])
    if not isinstance(out, pa.Table):
        raise SchemaError(f"{where} returned {type(out).__name__}; it must return a pyarrow Table or RecordBatch")
    return out


def explain(job: Job, input: Any = None, *, storage_options: dict | None = None, partition_size: Any = None,
            format: str | None = None, **_: Any) -> str:
    """The plan of ``job`` as text; with ``input``, also the splits and the size of the Dask graph."""
    spec = resolve_inputs(job, input, storage_options, format=format) if input is not None else None
    plan = build_plan(job, spec, partition_size, format=format)
    text = plan.describe()
    if spec is not None:
        validate_on_sample(plan, read_samples(plan))
        text += "\n" + graph_size(plan)
    return text


def read_samples(plan: Plan) -> pa.Table | dict[str, pa.Table | None] | None:
    """The first rows of each input, as its map tasks read it: only the columns the sides reading it
    need, from the first split their pushed-down conditions leave (a single-input plan: the table;
    else ``{input: table}``), for :func:`validate_on_sample`."""
    samples: dict[str, pa.Table | None] = {}
    for name, spec in (plan.inputs or {}).items():
        sides = [s for n in plan.nodes for s in n.sides if s.input == name]
        reads = [s.read for s in sides if s.read is not None]
        columns: list[str] | None = []
        for r in reads:
            if r.columns is None or columns is None:
                columns = None
            else:
                columns += [c for c in r.columns if c not in columns]
        if not reads:
            columns = None
        split = next((s for r in reads for s in r.splits[:1] if s.row_groups != ()), None)
        samples[name] = sample_table(spec.fs, spec, columns=columns, split=split)
    if plan.multi_input:
        return samples
    return samples.get(plan.job.label) if plan.input is not None else None


def resolve_inputs(job: Job, input: Any, storage_options: dict | None = None, *,
                   format: str | None = None) -> dict[str, InputSpec]:
    """``{name: InputSpec}`` for every input ``job`` reads.

    ``input`` is a dict of named inputs (``{"orders": "s3://.../orders/", ...}``), or, for a job that
    reads one input, that input itself (a path, a list of paths, a dataset).
    """
    names = job.inputs
    if isinstance(input, Mapping):
        given = dict(input)
        if len(names) == 1 and len(given) == 1 and names[0] not in given and names[0] == UNNAMED_INPUT:
            given = {names[0]: next(iter(given.values()))}
        missing = [n for n in names if n not in given]
        unknown = [n for n in given if n not in names]
        if missing or unknown:
            what = []
            if missing:
                what.append(f"no path for input{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
            if unknown:
                what.append(f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not read by it")
            raise JobDefinitionError(f"job {job.name!r} reads input{'s' if len(names) > 1 else ''} "
                                     f"{', '.join(map(repr, names))}: {'; '.join(what)}. Pass "
                                     + "{" + ", ".join(f"{n!r}: PATH" for n in names) + "} (CLI: "
                                     + " ".join(f"--input {n}=PATH" for n in names) + ")")
    elif len(names) == 1:
        given = {names[0]: input}
    else:
        raise JobDefinitionError(f"job {job.name!r} reads several inputs ({', '.join(map(repr, names))}); pass a dict "
                                 + "{" + ", ".join(f"{n!r}: PATH" for n in names) + "} (CLI: "
                                 + " ".join(f"--input {n}=PATH" for n in names) + ")")
    wheres = input_wheres(job)
    return {n: resolve_input(given[n], storage_options, format=format, where=wheres.get(n)) for n in names}


def input_wheres(job: Job) -> dict[str, Any]:
    """``{input: condition}``: the rows every side reading the input needs (``or`` of the sides'
    pushed conditions); an input that a side reads without one is absent (it is read whole)."""
    conds: dict[str, list] = {}
    for node in build_nodes(job):
        for side in node.sides:
            if side.input is not None:
                conds.setdefault(side.input, []).append(side.where)
    out = {}
    for name, cs in conds.items():
        if all(c is not None for c in cs):
            expr = cs[0]
            for c in cs[1:]:
                expr = expr | c
            out[name] = expr
    return out


def graph_size(plan: Plan) -> str:
    """A line per stage with its task count, as far as it is known before the run."""
    lines = ["dask graph (one Task per attempt; reduce stages sized at run time):"]
    if plan.multi_input:
        return "\n".join(lines + _dag_graph_size(plan))
    n_in = len(plan.input.splits) if plan.input is not None else None
    total = 0
    for r in plan.rounds:
        if n_in is not None:
            lines.append(f"  r{r.index}-map: {n_in} tasks")
            total += n_in
        else:
            lines.append(f"  r{r.index}-map: one task per input partition")
        if r.kind != "map":
            est = plan.input.total_bytes if (plan.input is not None and r.index == 0) else None
            if est is not None:
                hi = plan.initial_partitions(est)
                lines.append(f"  r{r.index}-reduce: 1..{hi} tasks (coalesced from {hi} hash partitions)")
            else:
                lines.append(f"  r{r.index}-reduce: sized from map output")
            n_in = None
    if total:
        lines.append(f"  known before the run: {total} map tasks")
    return "\n".join(lines)


def _dag_graph_size(plan: Plan) -> list[str]:
    lines, total = [], 0
    for node in plan.nodes:
        known = []
        for side in node.sides:
            spec = (plan.inputs or {}).get(side.input) if side.input is not None else None
            if spec is not None:
                known.append(f"{len(spec.splits)} over {side.label!r}")
                total += len(spec.splits)
            else:
                known.append(f"one per partition of stage {side.upstream + 1}" if side.upstream is not None
                             else f"one per split of {side.label!r}")
        lines.append(f"  r{node.index}-map: " + "; ".join(known) + " (a side small enough to be broadcast maps "
                     "first, alone)" * (node.kind == "join"))
        if node.kind == "join":
            lines.append(f"  r{node.index}-join: sized from map output (none for a broadcast join: it runs inside "
                         "the other side's map tasks)")
        elif node.kind != "map":
            stage = "cogroup" if node.kind == "cogroup" else "reduce"
            lines.append(f"  r{node.index}-{stage}: sized from map output")
    if total:
        lines.append(f"  known before the run: {total} map tasks over inputs")
    return lines


__all__ = ["Plan", "Node", "Side", "SideRead", "read_samples", "build_plan", "build_nodes", "validate_on_sample",
           "explain", "resolve_inputs"]
