"""Out of core inside one task: sorting, merging and reducing more rows than the task may hold in memory.

A worker's memory is shared by its threads and its own bookkeeping, and dask restarts a worker whose
resident memory passes 95% of its limit (killing every task on it, then retrying them until the run
fails). So each reduce, sort or join task works within a **budget**: ``engine.memory.task-fraction``
(default 0.25) of its worker's memory limit per thread, or ``engine.memory.task-bytes`` when set
(:func:`task_budget`; no budget where no limit is known, as in a run in the driver process).

What the engine does with it (:class:`Sizes`: sorting a table takes a contiguous copy and the sorted
copy, so a sort needs twice the rows it sorts):

* **External sort** (:class:`ExternalSorter`): rows are buffered up to a quarter of the budget, sorted
  and written as a sorted *run* (an Arrow IPC file of batches of 1/128 of the budget) beside the run's
  shuffle files; the runs are then merged (:func:`merge_sorted`): each step takes from every run the
  rows up to the smallest of their current batches' last keys, so the merge holds one small batch per
  run. More runs than a sixth of the budget holds in batches are merged in passes through more run
  files (:func:`merge_bounded`).
* **Streaming reduce** (``Job.reduce(fn, by=..., stream=True)``, :class:`StreamReduce`): the task's
  rows go through the external sort and ``fn`` receives them as an iterator of key-sorted tables of
  about an eighth of the budget. A key's rows are contiguous but may continue from one table into
  the next, so a key larger than memory never needs to be in memory at once (Hadoop's reducer sees an
  iterator of values; :func:`key_groups` gives that view). Bad-record isolation (``on_error="reject"``)
  does not bisect a streaming reduce: a failing call fails its task.
* **Plain reduce, fail fast** (:func:`read_partition`): a task whose rows exceed the budget stops
  reading and raises :class:`~engine.errors.PartitionTooLargeError` naming the partition, the bytes
  and the heaviest key, instead of having the worker killed for memory and retried. (The reduce
  planner also keeps a task's share of a partition of many keys within half the budget, so only a
  single key or a few heavy ones reach it.)
* **Sort rounds**: a map task sorts its rows in pieces of a quarter of the budget, each a sorted run
  of its output file (:func:`sorted_map_output`); a reducer merges its range from all runs, one
  stream per run, never concatenating them (:func:`sort_piece`).
* **Joins**: see :mod:`engine.gracejoin`.

Spill files are named after the task attempt, guarded by the run's fence like every shuffle file,
and removed when the task ends. Freed Arrow memory is handed back to the system after each spill and
at the end of every task (:func:`releases_memory`): the allocator keeps freed pages otherwise, and a
worker paused at 80% of its limit stays paused while it holds them.

This module never imports dask at import time.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import config, shuffle
from .errors import JobDefinitionError, PartitionTooLargeError, SchemaError
from .skew import format_size

DEFAULT_FRACTION = 0.25
# The streaming paths' budget where no memory limit is known (a run in the driver process).
UNBOUNDED_BUDGET = 256 << 20


# ---------------------------------------------------------------------------------------------
# The budget


def _setting(key: str, default: Any) -> Any:
    try:
        value = config.get(key)
    except KeyError:          # not among the engine's registered defaults: only set by the user
        return default
    return default if value is None else value


def budget_for(limit_per_thread: int) -> int | None:
    """The bytes of rows one task may hold in memory on a worker with ``limit_per_thread`` bytes of
    memory per thread (0: unknown): ``engine.memory.task-bytes`` when set, else
    ``engine.memory.task-fraction`` of the limit; None when neither gives one."""
    explicit = _setting("memory.task-bytes", None)
    if explicit is not None:
        return max(1 << 20, config.parse_size(explicit, name="engine.memory.task-bytes"))
    if not limit_per_thread:
        return None
    fraction = _setting("memory.task-fraction", DEFAULT_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise JobDefinitionError(f"engine.memory.task-fraction must be a fraction of a worker thread's memory "
                                 f"between 0 and 1 (0.25: a quarter), got {fraction!r}")
    return max(1 << 20, int(limit_per_thread * fraction))


def worker_limit() -> tuple[int, str]:
    """``(memory limit per thread, address)`` of the dask worker running this thread; ``(0, "")`` outside one
    or when the worker has no limit."""
    import sys
    if "distributed" not in sys.modules:
        return 0, ""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return 0, ""
    limit = int(getattr(worker.memory_manager, "memory_limit", 0) or 0)
    threads = max(1, int(getattr(worker.state, "nthreads", 1) or 1))
    return limit // threads, str(worker.address)


def task_budget() -> int | None:
    """The budget of a task running in this thread (see the module docstring); None: unbounded."""
    return budget_for(worker_limit()[0])


def release_memory() -> None:
    """Hand memory Arrow's allocator keeps after frees back to the system."""
    with contextlib.suppress(Exception):
        pa.default_memory_pool().release_unused()


def releases_memory(fn: Callable) -> Callable:
    """Decorate a task body: whatever happens, freed Arrow memory goes back to the system when it ends."""
    @functools.wraps(fn)
    def task(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_memory()
    return task


# ---------------------------------------------------------------------------------------------
# Spill files


@dataclass
class Hooks:
    """What a task lends the out-of-core code: a check between batches (cancellation), a guard called with
    each spill file's path before it is opened (the run's fence), the context that marks an Arrow error
    raised while computing as deterministic, and the one around calls of the job's own functions."""

    on_batch: Callable[[], None] | None = None
    guard: Callable[[str], None] | None = None
    computing: Callable[[str], Any] | None = None
    user: Callable[[], Any] | None = None          # around calls of the job's own functions

    def computing_in(self, what: str):
        return self.computing(what) if self.computing is not None else contextlib.nullcontext()

    def user_call(self):
        return self.user() if self.user is not None else contextlib.nullcontext()


class SpillFiles:
    """One task attempt's spill files in the shuffle directory; :meth:`cleanup` removes what is left."""

    def __init__(self, fs, root: str, prefix: str, guard: Callable[[str], None] | None = None) -> None:
        self.fs, self.root, self.prefix, self.guard = fs, root, prefix, guard
        self.paths: set[str] = set()
        self.written = 0            # bytes of rows spilled (Arrow size), for the task's figures

    def new(self, what: str) -> str:
        path = posixpath.join(self.root, f"{self.prefix}-{what}-{uuid.uuid4().hex[:8]}.arrow")
        if self.guard is not None:
            self.guard(path)
        self.paths.add(path)
        return path

    def remove(self, path: str) -> None:
        self.paths.discard(path)
        with contextlib.suppress(Exception):
            self.fs.rm(path)

    def cleanup(self) -> None:
        for path in list(self.paths):
            self.remove(path)


def _open_read(fs, path: str):
    from .datasets import is_local
    return pa.OSFile(path, "r") if is_local(fs) else fs.open(path, "rb")


def write_run(spill: SpillFiles, tables: Iterable[pa.Table], batch_bytes: int) -> str | None:
    """Write ``tables`` (in order) to a new spill file in batches of about ``batch_bytes``; its path, or
    None when there were no rows."""
    path = sink = writer = None
    try:
        for t in rebatch(tables, batch_bytes):
            if writer is None:
                path = spill.new("run")
                sink = spill.fs.open(path, "wb")
                writer = pa.ipc.new_file(sink, t.schema)
            for batch in t.combine_chunks().to_batches():
                writer.write_batch(batch)
            spill.written += t.nbytes
        if writer is not None:
            writer.close()
            sink.close()
            sink = None
        return path
    finally:
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.close()


def read_run(spill: SpillFiles, path: str, on_batch: Callable[[], None] | None = None) -> Iterator[pa.Table]:
    """A spill file's batches in order, one at a time (plain reads, no memory map); the file is removed
    once read to the end."""
    with _open_read(spill.fs, path) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            if on_batch is not None:
                on_batch()
            yield pa.Table.from_batches([reader.get_batch(i)])
    spill.remove(path)


# ---------------------------------------------------------------------------------------------
# Batches of bounded size


def rebatch(tables: Iterable[pa.Table], target_bytes: int, max_rows: int | None = None) -> Iterator[pa.Table]:
    """``tables`` as tables of about ``target_bytes`` (and at most ``max_rows`` rows): small ones
    gathered, large ones cut; order kept."""
    pending: list[pa.Table] = []
    size = rows = 0
    for t in tables:
        if t.num_rows == 0:
            continue
        per_row = max(1.0, t.nbytes / t.num_rows)
        step = max(1, int(target_bytes / per_row))
        if max_rows:
            step = min(step, max_rows)
        offset = 0
        while offset < t.num_rows:
            room = max(1, min(step, int((target_bytes - size) / per_row))) if pending else step
            if max_rows:
                room = min(room, max_rows - rows) if pending else room
            part = t.slice(offset, room)
            offset += part.num_rows
            pending.append(part)
            size += part.nbytes
            rows += part.num_rows
            if size >= target_bytes or (max_rows and rows >= max_rows):
                yield _concat(pending)
                pending, size, rows = [], 0, 0
    if pending:
        yield _concat(pending)


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


# ---------------------------------------------------------------------------------------------
# Merging sorted streams


def _last_key(table: pa.Table, keys: Sequence[str]) -> tuple:
    n = table.num_rows - 1
    return tuple(table.column(k)[n].as_py() for k in keys)


def _count_upto(table: pa.Table, keys: Sequence[str], cutoff: tuple, descending: bool) -> int:
    """Rows of the sorted ``table`` whose key sorts at or before ``cutoff`` (a prefix of it)."""
    mask = pc.or_(shuffle.rows_before(table, keys, cutoff, descending), shuffle.rows_equal(table, keys, cutoff))
    return int(pc.sum(mask).as_py() or 0)


def _first(stream: Iterator[pa.Table]) -> pa.Table | None:
    for t in stream:
        if t.num_rows:
            return t
    return None


def merge_sorted(streams: Sequence[Iterable[pa.Table]], keys: Sequence[str], descending: bool = False,
                 on_batch: Callable[[], None] | None = None) -> Iterator[pa.Table]:
    """Merge streams of tables, each sorted by ``keys`` (in the engine's order: nulls last), into one
    sorted stream. Each step takes, from every stream's current table, the rows up to the smallest of
    their last keys (all of at least one table), sorts them together and yields them; so the merge
    holds one table per stream and a step's rows."""
    order = shuffle.sort_keys(keys, descending)
    heads: list[list] = []
    for s in streams:
        it = iter(s)
        t = _first(it)
        if t is not None:
            heads.append([t, it])
    cmp = functools.cmp_to_key(lambda a, b: shuffle.compare_keys(a, b, descending))
    while heads:
        if on_batch is not None:
            on_batch()
        if len(heads) == 1:
            t, it = heads[0]
            yield t
            for t in it:
                if t.num_rows:
                    yield t
            return
        lasts = [_last_key(h[0], keys) for h in heads]
        cutoff = min(lasts, key=cmp)
        parts = []
        for h, last in zip(heads, lasts):
            t = h[0]
            if shuffle.compare_keys(last, cutoff, descending) <= 0:
                parts.append(t)
                h[0] = None
            else:
                n = _count_upto(t, keys, cutoff, descending)
                if n:
                    parts.append(t.slice(0, n))
                    h[0] = t.slice(n)
        step = _concat(parts)
        # a step of one key (a hot key's rows from every stream) needs no sort
        if not all(shuffle.compare_keys(tuple(p.column(k)[0].as_py() for k in keys), cutoff, descending) == 0
                   for p in parts):
            step = step.combine_chunks()
            step = step.take(pc.sort_indices(step, sort_keys=order))
        parts = []
        yield step
        step = None
        for h in heads:
            if h[0] is None:
                h[0] = _first(h[1])
        heads = [h for h in heads if h[0] is not None]


@dataclass(frozen=True)
class Sizes:
    """How a budget divides between the parts of an external sort and merge (measured: sorting a table
    takes a contiguous copy and the sorted copy, so a sort needs twice the rows it sorts)."""

    budget: int

    @property
    def buffer(self) -> int:           # rows sorted in memory at once
        return max(16 << 10, self.budget // 4)

    @property
    def run_batch(self) -> int:        # batches of spill runs: a merge holds one per run
        return max(4 << 10, self.budget // 128)

    @property
    def heads(self) -> int:            # the merge's current batches, all streams together
        return max(2 * self.run_batch, self.budget // 6)

    @property
    def output(self) -> int:           # tables handed on (to a reduce function, to the output)
        return max(16 << 10, self.budget // 8)


def sorted_slices(table: pa.Table, order: list, rows: int) -> Iterator[pa.Table]:
    """``table`` sorted, as tables of at most ``rows`` rows: one contiguous copy of it (its chunks can
    then go), the sort's indices, and one slice at a time (a whole ``sort_by`` of a chunked table
    holds the table, a concatenated copy and the result at once)."""
    table = table.combine_chunks()
    indices = pc.sort_indices(table, sort_keys=order)
    for offset in range(0, table.num_rows, max(1, rows)):
        yield table.take(indices.slice(offset, rows))


def _rows_for(table: pa.Table, nbytes: int) -> int:
    return max(1, int(nbytes * table.num_rows / max(1, table.nbytes)))


def merge_bounded(streams: Sequence[Iterable[pa.Table]], keys: Sequence[str], descending: bool, sizes: Sizes,
                  spill: SpillFiles, on_batch: Callable[[], None] | None = None) -> Iterator[pa.Table]:
    """:func:`merge_sorted` within a budget: streams are taken in order while their first tables fit in
    ``sizes.heads``; a group that does not fit is merged into a spill run first (of small batches), and
    runs too many to hold at once are merged in passes, ``sizes.heads // sizes.run_batch`` at a time."""
    runs: list[str] = []
    group: list[Iterator[pa.Table]] = []
    used = 0
    for s in streams:
        it = iter(s)
        t = _first(it)
        if t is None:
            continue
        if group and used + t.nbytes > sizes.heads:
            runs.append(write_run(spill, merge_sorted(group, keys, descending, on_batch), sizes.run_batch))
            release_memory()
            group, used = [], 0
        group.append(_chain(t, it))
        used += t.nbytes
    runs = [r for r in runs if r is not None]
    fan_in = max(2, sizes.heads // sizes.run_batch)
    while runs and len(runs) + (1 if group else 0) > fan_in:
        merged = write_run(spill, merge_sorted([read_run(spill, r, on_batch) for r in runs[:fan_in]], keys,
                                               descending, on_batch), sizes.run_batch)
        release_memory()
        runs = runs[fan_in:] + ([merged] if merged is not None else [])
    return merge_sorted([read_run(spill, r, on_batch) for r in runs] + group, keys, descending, on_batch)


def _chain(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


# ---------------------------------------------------------------------------------------------
# External sort


class ExternalSorter:
    """Sort any number of rows within a budget: :meth:`add` tables, then iterate :meth:`sorted`.

    Rows are buffered up to ``sizes.buffer`` bytes, then sorted and written as a run; :meth:`sorted`
    sorts in memory when nothing was spilled, else merges the runs (:func:`merge_bounded`)."""

    def __init__(self, keys: Sequence[str], descending: bool, sizes: Sizes, spill: SpillFiles,
                 on_batch: Callable[[], None] | None = None) -> None:
        self.keys, self.descending, self.sizes, self.spill = list(keys), descending, sizes, spill
        self.on_batch = on_batch
        self.order = shuffle.sort_keys(self.keys, descending)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.runs: list[str] = []
        self.rows = 0
        self.nbytes = 0
        self.schema: pa.Schema | None = None

    def add(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            shuffle._check_sortable(table, self.keys)
        if table.num_rows == 0:
            return
        if self._buffer and self._buffered + table.nbytes > self.sizes.buffer:
            self._spill()           # (before: the buffer never holds more than its size)
        self._buffer.append(table)
        self._buffered += table.nbytes
        self.rows += table.num_rows
        self.nbytes += table.nbytes

    def _sorted_buffer(self, nbytes: int) -> Iterator[pa.Table]:
        table = _concat(self._buffer)
        self._buffer, self._buffered = [], 0
        return sorted_slices(table, self.order, _rows_for(table, nbytes))

    def _spill(self) -> None:
        path = write_run(self.spill, self._sorted_buffer(self.sizes.run_batch), self.sizes.run_batch)
        if path is not None:
            self.runs.append(path)
        release_memory()

    @property
    def spilled(self) -> bool:
        return bool(self.runs)

    def sorted(self) -> Iterator[pa.Table]:
        """Every row added, in order, as tables of about ``sizes.output`` bytes."""
        if not self.runs:
            if self._buffer:
                yield from self._sorted_buffer(self.sizes.output)
            return
        if self._buffer:
            self._spill()
        runs, self.runs = self.runs, []
        yield from rebatch(merge_bounded([read_run(self.spill, r, self.on_batch) for r in runs], self.keys,
                                         self.descending, self.sizes, self.spill, self.on_batch),
                           self.sizes.output)


# ---------------------------------------------------------------------------------------------
# A task's rows


def partition_batches(fs, refs: Sequence[tuple], key_filter: dict | None, keys: Sequence[str],
                      num_partitions: int, *, mmap: bool = False, window: int = 8 << 20,
                      on_batch: Callable[[], None] | None = None) -> Iterator[pa.Table]:
    """A hash reduce task's rows, one map-output batch at a time (on object stores fetched about ``window``
    bytes at a time), through the skew planner's key filter."""
    for batch in shuffle.read_slices(fs, refs, mmap=mmap, fetch_bytes=window):
        if on_batch is not None:
            on_batch()
        table = pa.Table.from_batches([batch])
        if key_filter is not None:
            table = shuffle.select_keys(table, keys, num_partitions=num_partitions, **key_filter)
        yield table


def _heaviest_key(tables: list[pa.Table], keys: Sequence[str]) -> tuple[tuple | None, int]:
    """The key with the most rows among ``tables``, and its rows (None where keys cannot be grouped)."""
    try:
        counts = pa.concat_tables([t.select(list(keys)) for t in tables], promote_options="permissive") \
            .group_by(list(keys), use_threads=False).aggregate([([], "count_all")])
        top = counts.sort_by([("count_all", "descending")]).slice(0, 1).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None, 0
    if not top:
        return None, 0
    return tuple(top[0][k] for k in keys), int(top[0]["count_all"])


def read_partition(fs, refs: Sequence[tuple], key_filter: dict | None, schema: pa.Schema | None,
                   keys: Sequence[str], num_partitions: int, *, budget: int | None, what: str,
                   on_batch: Callable[[], None] | None = None) -> pa.Table:
    """A plain reduce task's rows in one table, read batch by batch; past ``budget`` bytes it stops and
    raises :class:`PartitionTooLargeError` (naming ``what``, the bytes and the heaviest key read)."""
    tables: list[pa.Table] = []
    total = 0
    for table in partition_batches(fs, refs, key_filter, keys, num_partitions, on_batch=on_batch):
        tables.append(table)
        total += table.nbytes
        if budget is not None and total > budget:
            raise too_large(tables, total, budget, keys, what)
    tables = [t for t in tables if t.num_columns]
    if not tables:
        if schema is None and refs:
            schema = shuffle.file_schema(fs, refs[0])
        return pa.Table.from_batches([], schema=schema or pa.schema([]))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def too_large(tables: list[pa.Table], total: int, budget: int, keys: Sequence[str], what: str) -> PartitionTooLargeError:
    """The error of a plain reduce task that read ``total`` bytes (``tables``) and stopped past ``budget``."""
    limit, worker = worker_limit()
    key, rows = _heaviest_key(tables, keys)
    read_rows = sum(t.num_rows for t in tables)
    where = f" on worker {worker}" if worker else ""
    if _setting("memory.task-bytes", None) is not None:
        rule = "engine.memory.task-bytes"
    else:
        rule = (f"engine.memory.task-fraction {_setting('memory.task-fraction', DEFAULT_FRACTION)} of its "
                f"{format_size(limit)} of memory per thread")
    heaviest = (f"; its heaviest key is {key!r} with {rows:,} of the {read_rows:,} rows read"
                if key is not None else "")
    message = (f"{what}: its rows take more than {format_size(budget)} in memory (read {format_size(total)}, then "
               f"stopped), the most a task may hold at once{where} ({rule}){heaviest}. A reduce function receives "
               "all rows of a key in one call, so this task would exhaust the worker's memory. Make it a streaming "
               "reduce, Job.reduce(fn, by=..., stream=True): fn then receives the partition as an iterator of "
               "key-sorted tables (a key may continue into the next table) and never needs a key's rows at once; "
               "or add a combine so that hot keys are split; or give each worker thread more memory")
    return PartitionTooLargeError(message, partition=what, nbytes=total, budget=budget, key=key)


# ---------------------------------------------------------------------------------------------
# The streaming reduce


class StreamReduce:
    """A reduce function that receives its task's rows as a stream (``Job.reduce(fn, by=..., stream=True)``).

    ``fn(batches) -> tables``: ``batches`` is an iterator of ``pa.Table`` sorted by the ``by`` columns
    (ascending, nulls last), each of bounded size. All rows of a key are contiguous in the stream, but
    a key may continue from one table into the next (a key larger than memory spans many): carry its
    partial result over to the next table, or use :func:`key_groups`. ``fn`` returns an iterable of
    tables (a generator that yields them is the usual form), one table, or None; every table must have
    the same columns and types. A task with no rows passes one empty table with the rows' schema.

    Called with a table (the driver's check on a sample), it sorts the table, passes it as the only
    batch and returns the tables ``fn`` gave, concatenated.
    """

    def __init__(self, fn: Callable, keys: Sequence[str]) -> None:
        self.fn, self.keys = fn, tuple(keys)
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
        self.__qualname__ = f"{name} (streaming)"

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows:
            table = table.sort_by(shuffle.sort_keys(self.keys, False))
        outs = list(outputs(self.fn(iter([table])), "the streaming reduce function"))
        if not outs:
            return pa.table({})
        return pa.concat_tables(outs) if len(outs) > 1 else outs[0]

    def __reduce__(self):
        return (StreamReduce, (self.fn, self.keys))

    def __repr__(self) -> str:
        return f"StreamReduce({self.__qualname__!r}, by={list(self.keys)})"


def outputs(result: Any, what: str) -> Iterator[pa.Table]:
    """The tables a streaming function gave: an iterable of tables or record batches, one, or None."""
    if result is None:
        return
    if isinstance(result, (pa.Table, pa.RecordBatch)):
        result = [result]
    elif not isinstance(result, Iterable) or isinstance(result, (str, bytes, dict)):
        raise SchemaError(f"{what} returned {type(result).__name__}; it must yield pyarrow Tables (or return an "
                          "iterable of them, one Table, or None)")
    for out in result:
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        if not isinstance(out, pa.Table):
            raise SchemaError(f"{what} gave a {type(out).__name__}; every item must be a pyarrow Table or RecordBatch")
        yield out


def key_groups(batches: Iterable[pa.Table], by: str | Sequence[str]) -> Iterator[tuple[tuple, Iterator[pa.Table]]]:
    """Hadoop's view of a streaming reduce's input: ``(key, chunks)`` per key, in order, ``chunks`` being an
    iterator of the key's rows (tables, several when the key spans batches). Consume ``chunks`` before
    asking for the next key (what is left of it is skipped). One Python step per key: for many small keys,
    vectorized work on each batch (``group_by``) with the last key's partial result carried over is faster.

    >>> import pyarrow as pa
    >>> batches = [pa.table({"k": [1, 1, 2]}), pa.table({"k": [2, 3]})]
    >>> [(k, sum(t.num_rows for t in chunks)) for k, chunks in key_groups(batches, "k")]
    [((1,), 2), ((2,), 2), ((3,), 1)]
    """
    keys = [by] if isinstance(by, str) else list(by)
    it = iter(batches)
    current: list[pa.Table | None] = [None]

    def head() -> pa.Table | None:
        while current[0] is None or current[0].num_rows == 0:
            current[0] = next(it, None)
            if current[0] is None:
                return None
        return current[0]

    def chunks(key: tuple) -> Iterator[pa.Table]:
        while (t := head()) is not None:
            # the table is sorted: the key's rows lead it
            n = int(pc.sum(shuffle.rows_equal(t, keys, key)).as_py() or 0)
            if n == 0:
                return
            current[0] = t.slice(n)
            yield t.slice(0, n)
            if n < t.num_rows:
                return

    while (t := head()) is not None:
        key = tuple(t.column(k)[0].as_py() for k in keys)
        group = chunks(key)
        yield key, group
        for _ in group:             # skip what the caller left of this key
            pass


def spill_files(ctx: Any, partition: int, attempt: int, stage: str, guard: Callable[[str], None] | None) -> SpillFiles:
    name = shuffle.attempt_name(f"r{ctx.round}-{stage}-spill", partition, attempt)[:-len(".arrow")]
    return SpillFiles(ctx.shuffle_fs, ctx.shuffle_root, name, guard)


def stream_reduce(ctx: Any, reduce: StreamReduce, refs: Sequence[tuple], key_filter: dict | None,
                  schema: pa.Schema | None, partition: int, attempt: int, emit: Callable[[pa.Table], None],
                  label: str, hooks: Hooks, after_read: Callable[[], None] | None = None) -> dict:
    """One streaming reduce task: its rows through an external sort into ``reduce.fn``, whose tables go to
    ``emit``. Returns the task's figures (``rows_in``, ``spilled_bytes``)."""
    sizes = Sizes(task_budget() or UNBOUNDED_BUDGET)
    spill = spill_files(ctx, partition, attempt, "reduce", hooks.guard)
    try:
        sorter = ExternalSorter(ctx.keys, False, sizes, spill, hooks.on_batch)
        # (reading stays outside: an Arrow error while reading a shuffle file is retried, one while
        # sorting rows already read is not)
        for table in partition_batches(ctx.shuffle_fs, refs, key_filter, ctx.keys, ctx.num_partitions,
                                       window=sizes.output, on_batch=hooks.on_batch):
            with hooks.computing_in(f"the external sort of {label}"):
                sorter.add(table)
        if after_read is not None:
            after_read()

        def batches() -> Iterator[pa.Table]:
            any_rows = False
            for t in sorter.sorted():
                any_rows = True
                yield t
            if not any_rows:
                empty = sorter.schema or schema
                yield empty.empty_table() if empty is not None else pa.table({})

        what = f"reduce function of {label}"
        with hooks.computing_in(what), hooks.user_call():
            results = iter(outputs(reduce.fn(batches()), what))
        while True:
            with hooks.computing_in(what), hooks.user_call():
                out = next(results, None)
            if out is None:
                break
            emit(out)
        return {"rows_in": sorter.rows, "spilled_bytes": spill.written}
    finally:
        spill.cleanup()


# ---------------------------------------------------------------------------------------------
# Sort rounds


def sort_piece(ctx: Any, refs: Sequence[tuple], piece: shuffle.RangePiece, schema: pa.Schema | None,
               partition: int, attempt: int, hooks: Hooks, out_rows: int) -> Iterator[pa.Table]:
    """A sort reducer's rows in order, as tables of at most ``out_rows`` rows: a share of a hot key read
    slice by slice (one key: already in order); a range piece merged from its sorted runs (one stream
    per run, :func:`merge_bounded`). Yields one empty table when the piece has no rows."""
    sizes = Sizes(task_budget() or UNBOUNDED_BUDGET)
    fs = ctx.shuffle_fs
    any_rows = False
    if piece.share is not None:
        stream = shuffle.share_slices(fs, refs, piece, ctx.keys, ctx.descending, on_batch=hooks.on_batch,
                                      window=sizes.output)
        for t in rebatch(stream, sizes.output, out_rows):
            any_rows = True
            yield t
    else:
        spill = spill_files(ctx, partition, attempt, "sort", hooks.guard)
        try:
            streams = shuffle.piece_streams(fs, refs, piece, ctx.keys, ctx.descending, on_batch=hooks.on_batch,
                                            window=sizes.output)
            merged = merge_bounded(streams, ctx.keys, ctx.descending, sizes, spill, hooks.on_batch)
            for t in rebatch(merged, sizes.output, out_rows):
                any_rows = True
                yield t
        finally:
            spill.cleanup()
    if not any_rows:
        if schema is None and refs:
            schema = shuffle.file_schema(fs, refs[0])
        yield schema.empty_table() if schema is not None else pa.table({})


def sorted_map_output(fs, path: str, tables: Iterable[pa.Table], keys: Sequence[str], descending: bool, *,
                      batch_rows: int, batch_bytes: int | None, sample_size: int, rows_in: Callable[[], int],
                      check: Callable[[pa.Table], None] | None = None,
                      computing: Callable[[], Any] = contextlib.nullcontext) -> tuple[shuffle.MapOutput, pa.Schema | None]:
    """A sort map task's output file: its rows sorted in pieces of a quarter of the task's budget, each
    written as a sorted run (one run when they fit). Returns the file's index and the rows' schema.
    ``computing()`` surrounds the sorting (not the reading of ``tables``)."""
    budget = task_budget()
    sizes = Sizes(budget) if budget else None
    if sizes is not None:
        batch_bytes = min(batch_bytes or sizes.run_batch, sizes.run_batch)
    writer = shuffle.SortedRunWriter(fs, path, keys, descending, batch_rows=batch_rows, batch_bytes=batch_bytes,
                                     sample_size=sample_size)
    buffer: list[pa.Table] = []
    buffered = 0
    schema = None
    for table in tables:
        if check is not None:
            check(table)
        table = shuffle.shuffle_ready(table)     # one type per column whatever each batch's encoding
        if schema is None:
            schema = table.slice(0, 0).schema
        if not table.num_columns:
            continue
        buffer.append(table)
        buffered += table.nbytes
        if sizes is not None and buffered >= sizes.buffer:
            with computing():
                writer.write_run(_concat(buffer))
            buffer, buffered = [], 0
            release_memory()
    with computing():
        if buffer:
            writer.write_run(_concat(buffer))
        elif schema is not None and not writer.runs:
            shuffle._check_sortable(schema.empty_table(), keys)
        return writer.close(schema, rows_in=rows_in()), schema


__all__ = ["task_budget", "budget_for", "release_memory", "releases_memory", "Hooks", "SpillFiles", "Sizes",
           "ExternalSorter", "merge_sorted", "merge_bounded", "rebatch", "read_partition", "StreamReduce",
           "key_groups", "stream_reduce", "sort_piece", "sorted_map_output", "partition_batches", "outputs"]
