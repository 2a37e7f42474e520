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
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from . import config
from .datasets import InputSpec, normalize_format, resolve_input, sample_table
from .errors import EngineError, JobDefinitionError, SchemaError
from .job import Job, Round, job_fingerprint


@dataclass(frozen=True)
class Plan:
    """A job bound to an input: rounds, splits and the sizes that drive the number of tasks."""

    job: Job
    fingerprint: str
    rounds: tuple[Round, ...]
    input: InputSpec | None
    partition_size: int
    fingerprint_covers: str = ""

    def initial_partitions(self, estimated_bytes: int) -> int:
        """Hash partitions each map task writes, before the driver coalesces them."""
        lo, hi = int(config.get("shuffle.min-partitions")), int(config.get("shuffle.max-partitions"))
        want = math.ceil(2 * max(estimated_bytes, 1) / self.partition_size)
        return int(min(hi, max(lo, want)))

    def describe(self) -> str:
        lines = [f"Job {self.job.name!r}: {len(self.rounds)} round{'s' if len(self.rounds) != 1 else ''}, "
                 f"fingerprint {self.fingerprint}" + (f" ({self.fingerprint_covers})" if self.fingerprint_covers
                                                      else "")]
        if self.input is not None:
            spec = self.input
            lines.append(f"input: {len(spec.snapshot)} {spec.format} file(s), {_size(spec.total_bytes)}, "
                         f"{len(spec.splits)} split(s) on {spec.protocol}://"
                         + (f", partition columns {list(spec.partition_types)}" if spec.partition_types else ""))
        for r in self.rounds:
            head = f"round {r.index + 1} ({r.kind}" + (f" by {list(r.keys)}" if r.keys else "") + ")"
            lines.append(head)
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


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def build_plan(job: Job, input_spec: InputSpec | None, partition_size: int | str | None = None, *,
               format: str | None = None) -> Plan:
    """The plan of ``job`` over ``input_spec`` (None: no input yet, as in ``explain(job)``).

    The fingerprint covers the options that change results: the input format (resolved from the
    input, else ``format``). Tuning (``partition_size``) does not enter it.
    """
    if not isinstance(job, Job):
        raise JobDefinitionError(f"expected an engine.Job, got {type(job).__name__}")
    size = config.parse_size(partition_size if partition_size is not None else config.get("partition-size"),
                             name="partition_size")
    fmt = input_spec.format if input_spec is not None else normalize_format(format)
    fp = job_fingerprint(job, {"format": fmt})
    return Plan(job, fp.digest, tuple(job.rounds), input_spec, size, fp.covers())


def validate_on_sample(plan: Plan, sample: pa.Table | None) -> None:
    """Run the job's functions on a few input rows in the driver, to catch shape mistakes early."""
    if sample is None:
        return
    table = sample
    for r in plan.rounds:
        where = f"round {r.index + 1} of {len(plan.rounds)}"
        if r.index == 0 and r.columns is not None:
            missing = [c for c in r.columns if c not in table.column_names]
            if missing:
                raise SchemaError(f"{where}: map columns= asks for {missing}, which the input lacks; it has "
                                  f"{table.column_names}")
            table = table.select(list(r.columns))
        for i, m in enumerate(r.maps):
            table = _call(m.fn, table, f"{where}: map function {i + 1} ({m.describe()})")
        if r.kind == "map":
            return
        missing = [k for k in r.keys if k not in table.column_names]
        if missing:
            stage = "sort" if r.kind == "sort" else "reduce"
            raise SchemaError(f"{where}: {stage} key column(s) {missing} not in the map output; it has columns "
                              f"{table.column_names}")
        if r.combine is not None:
            out = _call(r.combine.fn, table, f"{where}: combine")
            if not out.schema.equals(table.schema):
                raise SchemaError(f"{where}: combine changed the schema from {_cols(table.schema)} to "
                                  f"{_cols(out.schema)}; a combine must return the columns and types it receives, "
                                  "because the engine may apply it zero, one or many times")
            table = out
        if r.kind == "aggregate":
            aggs = r.aggregations
            aggs.validate(table.schema)
            table = aggs.aggregate(table)
        elif r.kind == "reduce":
            table = _call(r.reduce.fn, table, f"{where}: reduce function")
        # sort keeps the table as is


def _cols(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _call(fn, table: pa.Table, where: str) -> pa.Table:
    try:
        out = fn(table)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with context, original chained
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
    spec = resolve_input(input, storage_options, format=format) if input is not None else None
    plan = build_plan(job, spec, partition_size, format=format)
    text = plan.describe()
    if spec is not None:
        validate_on_sample(plan, sample_table(spec.fs, spec))
        from .compile import graph_size
        text += "\n" + graph_size(plan)
    return text


__all__ = ["Plan", "build_plan", "validate_on_sample", "explain"]
