"""Task bodies that run on workers: one map attempt, one reduce attempt.

Each function takes a :class:`TaskContext` (plain, picklable facts about the run and stage), the
run's serialized stage functions, and its share of the data. It streams record batches, writes only
attempt-scoped files, checks for cancellation between batches, and returns a small dict for the
driver (file index or commit message, rows, bytes, timings). It never publishes anything.

Map tasks read batches already conformed to the input's unified schema (:mod:`engine.datasets`).
A hash round's map task combines its spills (the aggregations' partials or the user's combine) until
its first rows show the combine barely reduces them (:class:`CombinePolicy`); then it ships the rest
uncombined and says so in its result. A declarative aggregation reads its Parquet string keys with
small dictionaries dictionary-encoded and keeps them so until the shuffle writes its rows.
An Arrow error raised while computing (user functions, aggregations, the map-side combine, sorting)
is marked ``engine_deterministic`` and names where it happened, so the driver does not retry it.

Every file a task writes (output Parquet, intermediate and shuffle files) goes through the run's
fence (``TaskContext.fence``, :mod:`engine.fence`): checked before the file is opened and before it
is closed, and once more after it exists; an attempt that outlived its run removes its file and
raises FencedError instead of reporting it.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import posixpath
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from . import config, counters, extsort, gracejoin, shuffle
from .attempts import user_code
from .commit import ParquetAttemptWriter, PartitionedAttemptWriter
from .context import set_task_date
from .datasets import Split, is_local, read_split
from .errors import (EngineError, FencedError, InputChangedError, InputError, IntegrityError, JobDefinitionError,
                     SchemaError)
from .joins import check_keys, conform_keys, join_tables, key_types
from .ratelimit import paced


class TaskCancelled(Exception):
    """Raised inside a task whose attempt was cancelled by the driver (a speculative loser)."""


@dataclass(frozen=True)
class CombinePolicy:
    """When a map task gives up its map-side combine (``engine.shuffle.adaptive-combine``,
    ``combine-min-rows``, ``combine-min-reduction``): once it has combined ``min_rows`` input rows,
    if the combine removed less than ``min_reduction`` of them (keys nearly unique in the task), it
    ships the rest of its rows uncombined. Read from the config where the context is made (the driver)."""

    enabled: bool = True
    min_rows: int = 1 << 20
    min_reduction: float = 0.5

    @classmethod
    def from_config(cls) -> CombinePolicy:
        enabled = bool(config.get("shuffle.adaptive-combine"))
        rows, reduction = config.get("shuffle.combine-min-rows"), config.get("shuffle.combine-min-reduction")
        if isinstance(rows, float) and rows.is_integer():
            rows = int(rows)                    # 1e6 from a YAML file or an environment variable
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise JobDefinitionError(f"engine.shuffle.combine-min-rows must be a positive number of rows, got {rows!r}")
        if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 <= reduction <= 1:
            raise JobDefinitionError("engine.shuffle.combine-min-reduction must be a fraction between 0 and 1 "
                                     f"(0.5: the combine must remove half the rows to go on), got {reduction!r}")
        return cls(enabled, int(rows), float(reduction))


@dataclass(frozen=True)
class TaskContext:
    run_id: str
    job: str
    round: int
    rounds: int
    kind: str                         # round kind: aggregate | reduce | sort | map
    keys: tuple[str, ...]
    descending: bool
    shuffle_fs: Any
    shuffle_root: str
    out_fs: Any
    out_root: str
    num_partitions: int = 1
    spill_bytes: int = 64 << 20
    batch_rows: int = 131072
    sort_batch_rows: int = 32768
    sort_batch_bytes: int = 0         # also cap sorted-run batches at this many bytes (0: no cap)
    sample_size: int = 512
    top_keys: int = 0
    columns: tuple[str, ...] | None = None
    partition_types: dict = field(default_factory=dict)
    page_checksums: bool = True
    faults: Any = None                # optional fault-injection hook (tests, benchmarks)
    map_combine: bool = True          # map output is combined (aggregations: partial states)
    report_progress: bool = True      # map tasks tell the speculation supervisor their progress
    fence: Any = None                 # the run's engine.fence.RunFence (None: unfenced, e.g. unit tests)
    side: int = 0                     # map tasks: which side of the node (its maps in the payload)
    ops: tuple = ()                   # map tasks: steps before the side's maps (fused broadcast joins)
    key_types: tuple | None = None    # join/cogroup map tasks: cast the keys to these types before hashing
    combine_policy: CombinePolicy = field(default_factory=CombinePolicy.from_config)
    partition_by: tuple[str, ...] = ()  # the job output's Hive partition columns (last round only)
    max_file_bytes: int = 512 << 20   # a partitioned output's files are rolled at this size
    logical_date: str | None = None   # engine.logical_date() in the job's functions
    guards: Any = None                # engine.guards.Guards (None: every guard at its default)
    # declarative aggregations read Parquet string keys with small dictionaries dictionary-encoded
    encoded_keys: bool = field(default_factory=lambda: bool(config.get("shuffle.encoded-keys")))

    @property
    def last_round(self) -> bool:
        return self.round == self.rounds - 1


# ---------------------------------------------------------------------------------------------
# Helpers

_PAYLOADS: dict[str, Any] = {}


@dataclass(frozen=True)
class PayloadRef:
    """Where a large serialized payload was written (beside the shuffle files), and its SHA-256."""

    fs: Any
    path: str
    digest: str
    size: int


def load_payload(blob: bytes | PayloadRef) -> Any:
    """Deserialize the run's stage functions once per worker process (reading them first when the task
    carries a :class:`PayloadRef`; bytes that do not match its digest are refused)."""
    ref = blob if isinstance(blob, PayloadRef) else None
    digest = ref.digest if ref is not None else hashlib.sha256(blob).hexdigest()
    obj = _PAYLOADS.get(digest)
    if obj is None:
        if ref is not None:
            with ref.fs.open(ref.path, "rb") as f:
                blob = f.read()
            if hashlib.sha256(blob).hexdigest() != ref.digest:
                raise IntegrityError(f"the job's serialized functions at {ref.path} do not match what the driver "
                                     "wrote (changed or truncated); rerun the job")
        obj = pickle.loads(blob)
        if len(_PAYLOADS) > 16:
            _PAYLOADS.clear()
        _PAYLOADS[digest] = obj
    return obj


def _current_attempt() -> tuple[Any, Any] | None:
    """``(worker, task key)`` of the attempt running in this thread; None outside a dask worker."""
    if "distributed" not in sys.modules:      # a run in the driver (engine.local): no worker, no import
        return None
    try:
        from distributed import get_worker
        from distributed.worker import thread_state
    except ImportError:  # pragma: no cover
        return None
    key = getattr(thread_state, "key", None)
    if key is None:
        return None
    try:
        return get_worker(), key
    except ValueError:
        return None


def check_cancelled() -> None:
    """Raise TaskCancelled when the running attempt was cancelled (so its worker is freed early)."""
    current = _current_attempt()
    if current is None:
        return
    worker, key = current
    ts = worker.state.tasks.get(key)
    if ts is None or ts.state in ("cancelled", "released", "forgotten"):
        raise TaskCancelled(f"attempt {key} was cancelled")


def report_progress(rows_done: int, min_interval: float = 0.1) -> None:
    """Tell the driver's speculation supervisor how many input rows this attempt has processed
    (at most every ``min_interval`` seconds; nothing outside a worker)."""
    current = _current_attempt()
    if current is None:
        return
    worker, key = current
    from distributed.worker import thread_state
    now = time.time()
    last_key, last_at = getattr(thread_state, "engine_progress", (None, 0.0))
    if last_key == key and now - last_at < min_interval:
        return
    thread_state.engine_progress = (key, now)
    try:
        from .speculation import PROGRESS_TOPIC
        worker.log_event(PROGRESS_TOPIC, {"key": repr(key), "done": int(rows_done)})
    except Exception:  # noqa: BLE001 - diagnostics must never fail a task
        pass


def _worker_name() -> str:
    if "distributed" not in sys.modules:      # a run in the driver (engine.local): no worker, no import
        return socket.gethostname()
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return socket.gethostname()


def _label(ctx: TaskContext, stage: str, partition: int) -> str:
    return f"round {ctx.round + 1} of {ctx.rounds}, {stage} stage, partition {partition}"


_ARROW_DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


@contextlib.contextmanager
def _computing(what: str) -> Iterator[None]:
    """Mark an Arrow error raised inside as deterministic (it came from computing on rows already in
    memory, so a retry would fail the same way) and name where it happened in its message."""
    try:
        yield
    except _ARROW_DATA_ERRORS as exc:
        if not getattr(exc, "engine_deterministic", False):
            exc.engine_deterministic = True
            exc.args = (f"{exc} (in {what})", *exc.args[1:])
        raise


def _apply(fn, table: pa.Table, what: str) -> pa.Table:
    with _computing(what), user_code():      # (an error leaving fn is the user's: engine.attempts)
        out = fn(table)
    if isinstance(out, pa.RecordBatch):
        out = pa.Table.from_batches([out])
    if not isinstance(out, pa.Table):
        raise SchemaError(f"{what} returned {type(out).__name__}; it must return a pyarrow Table or RecordBatch")
    return out


def _check_keys(table: pa.Table, keys, what: str) -> None:
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise SchemaError(f"{what}: key column(s) {missing} missing from its output; it has columns "
                          f"{table.column_names}")


def _shuffle_fence(ctx: TaskContext, path: str) -> Any:
    """The run's fence where it guards a shuffle or intermediate file: under ``OUT/_temporary/<run>`` and on
    shared stores (a ``shuffle_dir`` URL). A local temporary directory outside the output needs none: the
    driver removes it when the run ends, and a late attempt cannot open a file in a directory that is gone."""
    fence = ctx.fence
    if fence is None or (is_local(ctx.shuffle_fs) and not path.startswith(fence.tmp_root + "/")):
        return None
    return fence


def _fence_check(fence: Any, what: str, path: str | None = None) -> None:
    """Before opening (or closing) a file: FencedError if the run has ended."""
    if fence is not None:
        fence.check(what, path)


@contextlib.contextmanager
def _fenced(fence: Any, fs: Any, path: str, what: str) -> Iterator[None]:
    """Around the whole life of a shuffle file (created lazily inside): check before and re-check after (if
    the run ended meanwhile, remove the file and raise FencedError); on failure, remove the file if the run
    ended (a vanished run directory is then reported as FencedError)."""
    if fence is None:
        yield
        return
    fence.check(what, path)
    try:
        yield
    except FencedError:
        fence.discard(fs, path)
        raise
    except BaseException as exc:
        fenced = False
        with contextlib.suppress(Exception):
            fenced = not fence.is_open()
        if fenced:
            fence.discard(fs, path)
            raise fence.error(what, path) from exc
        raise
    if not fence.is_open():
        fence.discard(fs, path)
        raise fence.error(what, path)


class _Output:
    """Where a stage's final rows go: the job output (last round) or an intermediate IPC file."""

    def __init__(self, ctx: TaskContext, partition: int, attempt: int, stage: str) -> None:
        self.ctx = ctx
        self.partition = partition
        self.what = f"{_label(ctx, stage, partition)}, attempt {attempt}"
        self.schema: pa.Schema | None = None
        self.rows = 0
        self.nbytes = 0
        if ctx.last_round and ctx.partition_by:
            self.writer = PartitionedAttemptWriter(ctx.out_fs, ctx.out_root, ctx.run_id, partition, attempt,
                                                   ctx.partition_by, page_checksums=ctx.page_checksums,
                                                   fence=ctx.fence, max_file_bytes=ctx.max_file_bytes)
        elif ctx.last_round:
            self.writer = ParquetAttemptWriter(ctx.out_fs, ctx.out_root, ctx.run_id, partition, attempt,
                                               page_checksums=ctx.page_checksums, fence=ctx.fence)
        else:
            name = shuffle.attempt_name(f"r{ctx.round}-{stage}-out", partition, attempt)
            self.path = posixpath.join(ctx.shuffle_root, name)
            self.writer = shuffle._IPCFile(ctx.shuffle_fs, self.path)
            self.fence = _shuffle_fence(ctx, self.path)

    def write(self, table: pa.Table) -> None:
        if not self.ctx.last_round:
            table = shuffle.shuffle_ready(table)     # an IPC file: one dictionary per column, no views
        if self.schema is None:
            if self.ctx.last_round and self.ctx.partition_by:
                from .hive import check_partition_columns
                check_partition_columns(table.schema, self.ctx.partition_by)
            self.schema = table.schema
        elif not table.schema.equals(self.schema):
            raise SchemaError(f"output schema changed between chunks: {self.schema} then {table.schema}")
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        self.nbytes += table.nbytes
        if self.ctx.last_round:
            self.writer.write(table)
        else:
            if self.writer.count == 0:
                _fence_check(self.fence, self.what, self.path)        # before the file is opened
            for batch in table.to_batches():
                self.writer.write(batch)

    def abort(self) -> None:
        if self.ctx.last_round:
            self.writer.abort()
        elif self.fence is not None:
            fenced = False
            with contextlib.suppress(Exception):
                fenced = not self.fence.is_open()
            if fenced:
                with contextlib.suppress(Exception):
                    if self.writer._sink is not None:
                        self.writer._sink.close()
                self.fence.discard(self.ctx.shuffle_fs, self.path)

    def close(self) -> dict:
        if self.ctx.last_round:
            if self.rows == 0:
                return {"commit": {"partition": self.partition, "attempt": None, "files": []},
                        "rows_out": 0, "bytes_out": 0, "schema": self.schema}
            message = self.writer.close(self.schema)
            return {"commit": message, "rows_out": self.rows,
                    "bytes_out": sum(f["bytes"] for f in message["files"]), "schema": self.schema}
        with _fenced(self.fence, self.ctx.shuffle_fs, self.path, self.what):
            self.writer.close(self.schema)
        return {"next_input": Split(self.partition, self.path, "ipc", self.nbytes), "rows_out": self.rows,
                "bytes_out": self.nbytes, "schema": self.schema}


# ---------------------------------------------------------------------------------------------
# Map


class _UnreadableSplit(Exception):
    """The split's file cannot be read (``on_bad_file="reject"``: the attempt starts over without it)."""


def _rejecting(ctx: TaskContext) -> tuple[bool, bool]:
    """(rows a function fails on are rejected, unreadable files are rejected)."""
    g = ctx.guards
    return (g is not None and g.on_error == "reject", g is not None and g.on_bad_file == "reject")


def _schema_only(input_fs: Any, split: Split, ctx: TaskContext) -> pa.Table | None:
    """An empty table of the split's columns (what a task reads from a split with no rows)."""
    schema = split.schema
    if schema is None and split.format == "ipc":
        with contextlib.suppress(Exception):
            schema = shuffle.file_schema(input_fs, split.path)
    if schema is None:
        return None
    if ctx.columns is not None:
        schema = pa.schema([schema.field(c) for c in ctx.columns if c in schema.names])
    return schema.empty_table()


def _reread_rejecting(input_fs: Any, split: Split, ctx: TaskContext, rejects: Any, skip: int) -> Iterator[pa.RecordBatch]:
    """A CSV or JSON split read again, its unparsable rows set aside, from its ``skip``-th good row."""
    from .datasets import _add_partition_columns, _target_schema, conform
    from .rejects import read_csv_rejecting, read_json_rejecting
    if split.format == "csv":
        batches = read_csv_rejecting(input_fs, split, rejects, skip=skip, batch_rows=ctx.batch_rows)
    else:
        batches = read_json_rejecting(input_fs, split, rejects, batch_rows=ctx.batch_rows)
        skipped = 0
        if skip:
            def after(bs, n=skip):
                nonlocal skipped
                for b in bs:
                    if skipped + b.num_rows <= n:
                        skipped += b.num_rows
                        continue
                    if skipped < n:
                        b = b.slice(n - skipped)
                        skipped = n
                    yield b
            batches = after(batches)
    target = _target_schema(split, ctx.columns)
    for batch in batches:
        if ctx.columns is not None:
            batch = batch.select([c for c in ctx.columns if c in batch.schema.names])
        batch = conform(batch, target, split.path)
        if split.partition_values:
            batch = _add_partition_columns(batch, split.partition_values, ctx.partition_types, ctx.columns)
        yield batch


@extsort.releases_memory
def run_map(ctx: TaskContext, blob: bytes, input_fs: Any, split: Split, partition: int, attempt: int,
            unreadable: str | None = None) -> dict:
    """One map attempt over one split; returns its shuffle index or commit message.

    ``unreadable``: why the split's file cannot be read; the attempt then reads nothing from it and
    rejects the file (``on_bad_file="reject"``)."""
    set_task_date(ctx.logical_date)
    start, cpu0 = time.time(), time.thread_time()
    payload = load_payload(blob)
    stages = payload[ctx.round]
    label = _label(ctx, "map", partition)
    if ctx.faults is not None:
        ctx.faults.before_task(ctx, "map", partition, attempt)
    rows_in = 0
    output = None
    reject_rows, reject_files = _rejecting(ctx)
    rejects = None
    if reject_rows or reject_files:
        from .rejects import TaskRejects
        rejects = TaskRejects(ctx, "map", partition, attempt, split=split)
        if unreadable is not None:
            rejects.add_file(split.path, unreadable)
    # a declarative aggregation reads its string keys dictionary-encoded where the file's dictionaries are
    # small: no user function sees them, the combine groups on their codes and the shuffle decodes them
    encoded = _encoded_keys(ctx, stages)
    try:
        pipeline = _map_pipeline(ctx, payload, f"{label} (input {split.describe()})")

        def batches() -> Iterator[pa.RecordBatch]:
            if unreadable is not None:
                return
            delivered = 0
            try:
                for batch in read_split(input_fs, split, columns=ctx.columns, batch_rows=ctx.batch_rows,
                                        partition_types=ctx.partition_types, dictionaries=encoded):
                    delivered += batch.num_rows
                    yield batch
            except InputError as exc:
                if isinstance(exc, InputChangedError):
                    raise           # the input moved under the run: never a bad file to set aside
                if reject_rows and split.format in ("csv", "json") and split.schema is not None:
                    try:
                        yield from _reread_rejecting(input_fs, split, ctx, rejects, delivered)
                        return
                    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError, OSError) as again:
                        if not reject_files:
                            raise InputError(f"cannot read {split.format} input {split.describe()}: {again}") \
                                from again
                        raise _UnreadableSplit(str(exc)) from exc
                if reject_files:
                    raise _UnreadableSplit(str(exc)) from exc
                raise

        def read() -> Iterator[pa.Table]:
            nonlocal rows_in
            read_any = False
            for batch in batches():
                check_cancelled()
                if ctx.faults is not None:
                    ctx.faults.during_task(ctx, "map", partition, attempt)
                rows_in += batch.num_rows
                read_any = True
                yield pa.Table.from_batches([batch])
                if ctx.report_progress:
                    report_progress(rows_in)
            if not read_any and ctx.kind in ("join", "cogroup"):
                # no rows: the output still carries the schema (the reducers join with it)
                schema = split.schema
                if schema is None and split.format == "ipc":
                    with contextlib.suppress(Exception):
                        schema = shuffle.file_schema(input_fs, split.path)
                if schema is not None:
                    if ctx.columns is not None:
                        schema = pa.schema([schema.field(c) for c in ctx.columns if c in schema.names])
                    yield schema.empty_table()

        def isolated(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
            from .rejects import isolate
            offset = 0
            for table in tables:
                yield from isolate(lambda t: list(pipeline(iter([t]))), table, rejects, first_row=offset,
                                   what=f"the map functions of {label}")
                offset += table.num_rows

        def mapped() -> Iterator[pa.Table]:
            return isolated(read()) if reject_rows else pipeline(read())

        if ctx.kind == "map":
            output = _Output(ctx, partition, attempt, "map")
            for table in mapped():
                output.write(table)
            result = output.close()
        elif ctx.kind == "sort":
            path = posixpath.join(ctx.shuffle_root, shuffle.attempt_name(f"r{ctx.round}-map", partition, attempt))
            with _fenced(_shuffle_fence(ctx, path), ctx.shuffle_fs, path, f"{label}, attempt {attempt}"):
                # sorted runs of at most the task's memory budget each (one run when the rows fit)
                index, schema = extsort.sorted_map_output(
                    ctx.shuffle_fs, path, mapped(), ctx.keys, ctx.descending, batch_rows=ctx.sort_batch_rows,
                    batch_bytes=ctx.sort_batch_bytes or None, sample_size=ctx.sample_size, rows_in=lambda: rows_in,
                    check=lambda t: _check_keys(t, ctx.keys, f"sort of {label}"),
                    computing=lambda: _computing(f"the sorted run of {label} (input {split.describe()})"))
            result = {"shuffle": index, "rows_out": index.rows_out, "bytes_out": index.total_bytes,
                      "schema": schema if schema is not None else pa.schema([])}
        elif ctx.kind in ("join", "cogroup"):
            path = posixpath.join(ctx.shuffle_root, shuffle.attempt_name(f"r{ctx.round}-map", partition, attempt))
            what, fence = f"{label}, attempt {attempt}", _shuffle_fence(ctx, path)
            with _fenced(fence, ctx.shuffle_fs, path, what):
                writer = shuffle.HashShuffleWriter(ctx.shuffle_fs, path, ctx.keys, ctx.num_partitions,
                                                   spill_bytes=ctx.spill_bytes)
                checked = False
                for table in mapped():
                    if not checked:
                        _check_keys(table, ctx.keys, f"the map output of {label}")
                        checked = True
                    if ctx.key_types is not None:
                        table = conform_keys(table, ctx.keys, ctx.key_types)
                    writer.write(table)
                _fence_check(fence, what, path)
                index = writer.close()
            index.rows_in = rows_in
            result = {"shuffle": index, "rows_out": index.total_rows, "bytes_out": index.total_bytes,
                      "schema": writer.schema, "side": ctx.side, "spills": writer.spills}
        else:
            combine = _combiner(ctx, stages, label) if ctx.map_combine else None
            adaptive = None
            if combine is not None and ctx.combine_policy.enabled:
                adaptive = combine = _AdaptiveCombine(combine, _uncombined(stages), ctx.combine_policy)
            path = posixpath.join(ctx.shuffle_root, shuffle.attempt_name(f"r{ctx.round}-map", partition, attempt))
            what, fence = f"{label}, attempt {attempt}", _shuffle_fence(ctx, path)
            with _fenced(fence, ctx.shuffle_fs, path, what):
                writer = shuffle.HashShuffleWriter(ctx.shuffle_fs, path, ctx.keys, ctx.num_partitions,
                                                   combine=combine, spill_bytes=ctx.spill_bytes,
                                                   top_keys=ctx.top_keys, encoded_keys=bool(encoded))
                checked = False
                written = 0
                for table in mapped():
                    if not checked:
                        _check_keys(table, ctx.keys, f"the map output of {label}")
                        if stages.get("aggs") is not None:
                            with _computing(f"the aggregations of {label}"):
                                stages["aggs"].validate(table.schema)
                        checked = True
                    with _computing(f"the map-side combine of {label} (input {split.describe()})"):
                        writer.write(table)
                        written += table.num_rows
                        if adaptive is not None and adaptive.undecided and written >= adaptive.policy.min_rows:
                            writer.spill()      # combine the sample now: the decision need not wait for a full buffer
                if ctx.faults is not None:
                    ctx.faults.during_task(ctx, "map", partition, attempt)
                _fence_check(fence, what, path)          # the file is usually opened by close()
                with _computing(f"the map-side combine of {label} (input {split.describe()})"):
                    index = writer.close()
            index.rows_in = rows_in
            result = {"shuffle": index, "rows_out": index.total_rows, "bytes_out": index.total_bytes,
                      "schema": writer.schema, "spills": writer.spills}
            if adaptive is not None:
                result.update(adaptive.outcome())
    except _UnreadableSplit as exc:
        if output is not None:
            output.abort()
        if rejects is not None:
            rejects.abort()
        counters.restart()          # the attempt starts over without the file: so do its counts
        return run_map(ctx, blob, input_fs, split, partition, attempt, unreadable=str(exc))
    except BaseException:
        if output is not None:
            output.abort()
        if rejects is not None:
            rejects.abort()
        raise
    if rejects is not None:
        try:
            result["rejected"] = rejects.close()
        except BaseException:
            if output is not None:
                output.abort()
            rejects.abort()
            raise
    result.update({"rows_in": rows_in, "start": start, "stop": time.time(), "cpu": time.thread_time() - cpu0, "worker": _worker_name(),
                   "partition": partition, "attempt": attempt, "input_bytes": split.size,
                   "reads_input": split.schema is not None})     # (engine-written intermediate splits have none)
    return result


def _encoded_keys(ctx: TaskContext, stages: dict) -> tuple[str, ...]:
    """The key columns a map task may read dictionary-encoded: those of an aggregation round whose rows
    reach the aggregations as read (no map function, no fused step before them), when the config allows."""
    if ctx.kind != "aggregate" or stages.get("aggs") is None or ctx.ops or ctx.side < 0 or not ctx.encoded_keys:
        return ()
    own = stages.get("sides")
    maps = own[ctx.side]["maps"] if own else stages.get("maps")
    return () if maps else tuple(ctx.keys)


def _map_pipeline(ctx: TaskContext, payload: list, label: str):
    """``tables -> tables`` (iterators): the steps fused before this side (``ctx.ops``: maps of earlier
    stages and broadcast joins), then the side's own maps."""
    steps: list = []

    def maps(fns, where: str) -> None:
        for i, fn in enumerate(fns):
            steps.append(paced(fn, lambda tables, fn=fn, w=f"map function {i + 1} of {where}":
                               (_apply(fn, t, w) for t in tables)))    # (paced: a map with rate_limit=)

    for op in ctx.ops:
        if op[0] == "maps":
            node, side = op[1], op[2]
            entry = payload[node]["sides"][side]
            maps(entry["maps"], f"{entry['label']!r} of stage {node + 1}, {label}")
        elif op[0] == "broadcast":
            steps.append(_broadcast_join(ctx, payload, op, label))
        elif op[0] == "post":
            maps(payload[op[1]]["post"], f"stage {op[1] + 2} (after the join of stage {op[1] + 1}), {label}")
    if ctx.side >= 0:            # -1: the ops already hold every step (a broadcast join written as output)
        own = payload[ctx.round].get("sides")
        maps(own[ctx.side]["maps"] if own else payload[ctx.round]["maps"], label)

    def run(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for step in steps:
            tables = step(tables)
        return tables
    return run


_BROADCAST: dict[tuple, pa.Table] = {}      # small sides of broadcast joins, per worker process (LRU)
_BROADCAST_KEEP = 8
_BROADCAST_LOCK = threading.Lock()


def _broadcast_join(ctx: TaskContext, payload: list, op: tuple, label: str):
    """The step that joins the big side of a broadcast join, in chunks of about ``chunk`` rows, with
    the whole small side (read once per worker process from the small side's map outputs)."""
    _, node, big, refs, schema, chunk = op
    spec = payload[node]["join"]
    cache_key = (ctx.shuffle_root, node, tuple(r[0] for r in refs))
    with _BROADCAST_LOCK:
        small = _BROADCAST.pop(cache_key, None)
        if small is not None:
            _BROADCAST[cache_key] = small           # most recently used last
    if small is None:
        small = shuffle.read_table(ctx.shuffle_fs, refs, schema).combine_chunks()
        with _BROADCAST_LOCK:
            _BROADCAST[cache_key] = small
            while len(_BROADCAST) > _BROADCAST_KEEP:          # least recently used first out
                _BROADCAST.pop(next(iter(_BROADCAST)))
    where = f"the broadcast {spec.describe()} of stage {node + 1}, {label}"
    small_keys = spec.right_on if big == 0 else spec.left_on
    big_keys = spec.left_on if big == 0 else spec.right_on
    conformed: dict[tuple, pa.Table] = {}

    def join(table: pa.Table) -> pa.Table:
        table = shuffle.shuffle_ready(table)        # view types and dictionaries as the shuffle path has them
        with _computing(where):
            # the small side's keys cast to the pair's common types once per task, not once per chunk
            check_keys(table.schema, big_keys, "left" if big == 0 else "right", spec)
            pair = (table.schema, small.schema) if big == 0 else (small.schema, table.schema)
            types = tuple(key_types(*pair, spec))
            if types not in conformed:
                conformed[types] = conform_keys(small, small_keys, types)
            s = conformed[types]
            return join_tables(table, s, spec) if big == 0 else join_tables(s, table, spec)

    cap = (extsort.task_budget() or 0) // 4          # chunks within the task's memory budget too

    def step(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        buffered, rows, size = [], 0, 0
        for t in tables:
            buffered.append(t)
            rows += t.num_rows
            size += t.nbytes
            if rows >= chunk or (cap and size >= cap):
                yield join(_concat_same(buffered))
                buffered, rows, size = [], 0, 0
        if buffered:
            yield join(_concat_same(buffered))
    return step


def _concat_same(tables: list[pa.Table]) -> pa.Table:
    """One table of ``tables`` (batches of one stream: the same columns, perhaps different encodings)."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.concat_tables([shuffle.shuffle_ready(t) for t in tables], promote_options="permissive")


def _combiner(ctx: TaskContext, stages: dict, label: str):
    aggs = stages.get("aggs")
    if aggs is not None:
        return aggs.partial
    user = stages.get("combine")
    if user is None:
        return None

    def combine(table: pa.Table) -> pa.Table:
        out = _apply(user, table, f"combine of {label}")
        if not out.schema.equals(table.schema):
            raise SchemaError(f"combine of {label} changed the schema from {table.schema} to {out.schema}; "
                              "a combine must return the columns and types it receives")
        return out
    return combine


def _uncombined(stages: dict):
    """What a map task ships once it stops combining: the aggregations' per-row states (the reducers
    merge them like any partial state), or the rows as they are (a user combine may run zero times)."""
    aggs = stages.get("aggs")
    return aggs.row_states if aggs is not None else (lambda table: table)


class _AdaptiveCombine:
    """A map task's combine that gives up when it does not pay (see :class:`CombinePolicy`).

    Each spill is combined until ``policy.min_rows`` input rows have been; then, if the combine kept
    more than ``1 - policy.min_reduction`` of them, every later spill goes through ``uncombined``
    instead (no hashing, no grouping). The decision is final and made once per task attempt, from
    the rows the task itself saw; :meth:`outcome` reports it with the task's result."""

    def __init__(self, combine, uncombined, policy: CombinePolicy) -> None:
        self.combine, self.uncombined, self.policy = combine, uncombined, policy
        self.rows_in = self.rows_out = 0        # rows the combine saw and kept, while it ran
        self.stopped_at: int | None = None      # combined input rows when it stopped
        self.undecided = True

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.stopped_at is not None:
            return self.uncombined(table)
        out = self.combine(table)
        self.rows_in += table.num_rows
        self.rows_out += out.num_rows
        if self.undecided and self.rows_in >= self.policy.min_rows:
            self.undecided = False
            if self.rows_out > (1.0 - self.policy.min_reduction) * self.rows_in:
                self.stopped_at = self.rows_in
        return out

    def outcome(self) -> dict:
        """Plain fields for the task's result (and its journal entry)."""
        return {"combine": "stopped" if self.stopped_at is not None else
                ("kept" if not self.undecided else "undecided"),
                "combine_rows_in": self.rows_in, "combine_rows_out": self.rows_out}


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


# ---------------------------------------------------------------------------------------------
# Reduce


def _reduce_input(ctx: TaskContext, refs: list, key_filter: dict | None, schema: pa.Schema | None,
                  partition: int, attempt: int, budget: int | None = None, what: str = "") -> pa.Table:
    """A hash reduce task's rows: its map-output slices, through the skew planner's key filter if any
    (more than ``budget`` bytes of them: PartitionTooLargeError, see :func:`engine.extsort.read_partition`)."""
    table = extsort.read_partition(ctx.shuffle_fs, refs, key_filter, schema, ctx.keys, ctx.num_partitions,
                                   budget=budget, what=what, on_batch=check_cancelled)
    check_cancelled()
    if ctx.faults is not None:
        ctx.faults.during_task(ctx, "reduce", partition, attempt)
    return table


def _hooks(ctx: TaskContext, label: str, attempt: int) -> extsort.Hooks:
    """What the out-of-core code needs of a task: cancellation checks, the fence for spill files, the
    marking of Arrow errors raised while computing, and of errors raised by the job's code."""
    what = f"{label}, attempt {attempt}"
    return extsort.Hooks(on_batch=check_cancelled, computing=_computing, user=user_code,
                         guard=lambda path: _fence_check(_shuffle_fence(ctx, path), what, path))


@extsort.releases_memory
def run_reduce(ctx: TaskContext, blob: bytes, refs: list, bounds: tuple | None, schema: pa.Schema | None,
               partition: int, attempt: int) -> dict:
    """One reduce attempt over its slices of every map file; returns commit message or next input."""
    set_task_date(ctx.logical_date)
    start, cpu0 = time.time(), time.thread_time()
    stages = load_payload(blob)[ctx.round]
    label = _label(ctx, "reduce", partition)
    if ctx.faults is not None:
        ctx.faults.before_task(ctx, "reduce", partition, attempt)
    output = _Output(ctx, partition, attempt, "reduce")
    post = stages.get("post") or []
    rejects = None
    if _rejecting(ctx)[0] and (stages.get("reduce") is not None or post):
        from .rejects import TaskRejects
        rejects = TaskRejects(ctx, "reduce", partition, attempt)

    def after(table: pa.Table) -> pa.Table:
        for i, fn in enumerate(post):   # maps of a fused trailing map-only round
            table = _apply(fn, table, f"map function {i + 1} of round {ctx.round + 2} (fused into {label})")
        return table

    def emit(table: pa.Table) -> None:
        if rejects is None or not post:
            output.write(after(table))
        else:       # rows a fused map fails on are rejected one by one (the reduce's output rows)
            _emit_isolated(after, table, None, rejects, output, label)
    try:
        if ctx.kind == "sort":
            piece = bounds if isinstance(bounds, shuffle.RangePiece) else shuffle.RangePiece(*(bounds or (None, None)))
            rows_in = 0
            # merged from the sorted runs within the task's memory budget (engine.extsort)
            for table in extsort.sort_piece(ctx, refs, piece, schema, partition, attempt, _hooks(ctx, label, attempt),
                                            max(ctx.batch_rows * 8, 1)):
                rows_in += table.num_rows
                emit(table)
        elif isinstance(stages.get("reduce"), extsort.StreamReduce):
            def read() -> None:
                if ctx.faults is not None:
                    ctx.faults.during_task(ctx, "reduce", partition, attempt)
            # the rows through an external sort, to the function as key-sorted batches (engine.extsort)
            rows_in = extsort.stream_reduce(ctx, stages["reduce"], refs, bounds, schema, partition, attempt, emit,
                                            label, _hooks(ctx, label, attempt), after_read=read)["rows_in"]
        else:
            aggs = stages.get("aggs")
            table = _reduce_input(ctx, refs, bounds, schema, partition, attempt,
                                  budget=extsort.task_budget() if aggs is None else None, what=label)
            rows_in = table.num_rows
            if aggs is not None:
                with _computing(f"the aggregations of {label}"):
                    result = aggs.merge_finalize(table) if ctx.map_combine else aggs.aggregate(table)
                emit(result)
            else:
                fn = stages["reduce"]
                if rejects is None:
                    emit(_apply(fn, table, f"reduce function of {label}"))
                else:
                    # the rows of a key the reduce function fails on are rejected together; then rows of its
                    # output that a fused map fails on, one by one
                    from .rejects import isolate_groups
                    for piece in isolate_groups(lambda t: [_apply(fn, t, f"reduce function of {label}")], table,
                                                ctx.keys, rejects, what=f"the reduce function of {label}"):
                        emit(piece)
            if ctx.faults is not None:
                ctx.faults.during_task(ctx, "reduce", partition, attempt)
        result_info = output.close()
        if rejects is not None:
            result_info["rejected"] = rejects.close()
    except BaseException:
        output.abort()
        if rejects is not None:
            rejects.abort()
        raise
    result_info.update({"rows_in": rows_in, "start": start, "stop": time.time(), "cpu": time.thread_time() - cpu0, "worker": _worker_name(),
                        "partition": partition, "attempt": attempt,
                        "input_bytes": None})
    return result_info


def _emit_isolated(call, table: pa.Table, keys, rejects: Any, output: Any, label: str) -> None:
    """Write ``call(table)``; rows it fails on are rejected (by key when ``keys``, else row by row)."""
    from .rejects import isolate, isolate_groups
    if keys:
        pieces = isolate_groups(lambda t: [call(t)], table, keys, rejects, what=f"the reduce function of {label}")
    else:
        pieces = isolate(lambda t: [call(t)], table, rejects, what=f"the maps fused into {label}")
    for piece in pieces:
        output.write(piece)


@extsort.releases_memory
def run_partial(ctx: TaskContext, blob: bytes, refs: list, key_filter: dict | None, schema: pa.Schema | None,
                partition: int, attempt: int) -> dict:
    """One share of a hot key in a combinable round: combine its rows from some map outputs into a
    partial result (a shuffle file of one partition) that a merge task finishes."""
    set_task_date(ctx.logical_date)
    start, cpu0 = time.time(), time.thread_time()
    stages = load_payload(blob)[ctx.round]
    label = _label(ctx, "partial", partition)
    if ctx.faults is not None:
        ctx.faults.before_task(ctx, "reduce", partition, attempt)
    table = _reduce_input(ctx, refs, key_filter, schema, partition, attempt)
    rows_in = table.num_rows
    aggs = stages.get("aggs")
    if aggs is not None:
        with _computing(f"the aggregations of {label}"):
            combined = aggs.merge(table) if ctx.map_combine else aggs.partial(table)
    elif table.num_rows:
        combined = _combiner(ctx, stages, label)(table)
    else:
        combined = table            # a user combine keeps the schema; nothing to combine
    path = posixpath.join(ctx.shuffle_root, shuffle.attempt_name(f"r{ctx.round}-partial", partition, attempt))
    with _fenced(_shuffle_fence(ctx, path), ctx.shuffle_fs, path, f"{label}, attempt {attempt}"):
        writer = shuffle.HashShuffleWriter(ctx.shuffle_fs, path, ctx.keys, 1)
        writer.write(combined)
        index = writer.close()
    return {"shuffle": index, "rows_out": index.total_rows, "bytes_out": index.total_bytes,
            "schema": writer.schema, "rows_in": rows_in, "start": start, "stop": time.time(), "cpu": time.thread_time() - cpu0,
            "worker": _worker_name(), "partition": partition, "attempt": attempt, "input_bytes": None}


def _piece_of(table: pa.Table, piece: tuple | None, side: int, num_partitions: int) -> pa.Table:
    """This task's rows of one side: for a piece ``(side, j, k)``, rows ``[j*n/k, (j+1)*n/k)`` of that
    side; for ``(-1, j, k, keys)``, the rows of every side whose keys' second hash is j (mod k)."""
    if piece is None or piece[2] <= 1:
        return table
    if piece[0] < 0:
        _, j, k, keys = piece
        buckets = shuffle.sub_bucket(table, keys[side], num_partitions, k)
        return table.filter(pa.array(buckets == j))
    if piece[0] != side:
        return table
    _, j, k = piece
    n = table.num_rows
    lo, hi = j * n // k, (j + 1) * n // k
    return table.slice(lo, hi - lo)


@extsort.releases_memory
def run_join(ctx: TaskContext, blob: bytes, refs: list, piece: tuple | None, schemas: list,
             partition: int, attempt: int) -> dict:
    """One join or cogroup attempt: each side's slices of the hash partitions it was given (one side
    perhaps only a piece of them, the other replicated), joined or passed to the cogroup function."""
    set_task_date(ctx.logical_date)
    start, cpu0 = time.time(), time.thread_time()
    stages = load_payload(blob)[ctx.round]
    label = _label(ctx, ctx.kind, partition)
    if ctx.faults is not None:
        ctx.faults.before_task(ctx, "reduce", partition, attempt)
    output = _Output(ctx, partition, attempt, "reduce")
    post = stages.get("post") or []
    rejects = None
    if _rejecting(ctx)[0] and post:
        from .rejects import TaskRejects
        rejects = TaskRejects(ctx, "reduce", partition, attempt)
    def after(table: pa.Table) -> pa.Table:
        for i, fn in enumerate(post):
            table = _apply(fn, table, f"map function {i + 1} of round {ctx.round + 2} (fused into {label})")
        return table

    def emit(result: pa.Table) -> None:
        if rejects is not None and post:    # rows a fused map fails on are rejected one by one
            _emit_isolated(after, result, None, rejects, output, label)
        else:
            output.write(after(result))

    def read() -> None:
        if ctx.faults is not None:
            ctx.faults.during_task(ctx, "reduce", partition, attempt)
    try:
        if ctx.kind == "join":
            # joined at once when both sides fit in the task's memory budget, else a grace hash join
            # through spill files (engine.gracejoin)
            spec, hooks = stages["join"], _hooks(ctx, label, attempt)
            rows_in = gracejoin.join_task(
                ctx.shuffle_fs, lambda: extsort.spill_files(ctx, partition, attempt, "join", hooks.guard), spec,
                refs, piece, schemas, ctx.num_partitions, emit, budget=extsort.task_budget(),
                computing=lambda: _computing(f"the {spec.describe()} of {label}"), on_batch=check_cancelled,
                after_read=read)["rows_in"]
        else:
            tables = []
            for s, (side_refs, schema) in enumerate(zip(refs, schemas)):
                table = _piece_of(shuffle.read_table(ctx.shuffle_fs, side_refs, schema), piece, s, ctx.num_partitions)
                tables.append(table)
                check_cancelled()
            read()
            rows_in = sum(t.num_rows for t in tables)
            labels = [side["label"] for side in stages["sides"]]
            emit(_apply(stages["cogroup"], dict(zip(labels, tables)), f"cogroup function of {label}"))
        result_info = output.close()
        if rejects is not None:
            result_info["rejected"] = rejects.close()
    except BaseException:
        output.abort()
        if rejects is not None:
            rejects.abort()
        raise
    result_info.update({"rows_in": rows_in, "start": start, "stop": time.time(), "cpu": time.thread_time() - cpu0, "worker": _worker_name(),
                        "partition": partition, "attempt": attempt, "input_bytes": None})
    return result_info


__all__ = ["TaskContext", "CombinePolicy", "run_map", "run_reduce", "run_partial", "run_join", "check_cancelled", "TaskCancelled", "load_payload",
           "PayloadRef"]
_ = EngineError
