"""A shuffle join task within its memory budget: a grace hash join through the shuffle directory.

:mod:`engine.joinplan` gives each join task one or more hash partitions, perhaps a piece of one side
(the other replicated) or a piece of every side by a second hash of the keys. Whether the task's rows
fit in memory is known only to the task (its worker's budget, :func:`engine.extsort.task_budget`), so
the task decides:

* **Fits** (both sides together at most a third of the budget: a join holds its inputs, its hash table
  and its output at once; or no budget known): both sides are read and joined at once
  (:func:`engine.joins.join_tables`), as always.
* **Does not fit** (found while reading, so a piece whose estimate was wrong is caught too): what was
  read and the rest of each side are written to a spill file in ``n`` *buckets* of about a sixth of
  the budget, by a third hash of the keys (the high bits of the keys' 64-bit hash, independent of the
  partition hash and of the second hash of the planner's pieces), so a key's rows of both sides land
  in the same bucket; then the buckets are joined one at a time.
* **A bucket that still does not fit** (one hot key): its smaller side is the *build* side, read in
  chunks that fit, and for each chunk the other side, the *probe*, is streamed past it batch by batch;
  matched rows are emitted as they are found. Rows that must appear unmatched (outer joins) or once
  (semi and anti joins) are tracked with a flag per row: the build chunk's after the probe has passed,
  the probe's (by its row number in the bucket) after every chunk has, then emitted in a last pass.

Every table emitted has the join's output schema. Rows come out in no particular order (as for any
join). This module never imports dask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import extsort, shuffle
from .hashing import hash_columns
from .joins import JoinSpec, join_tables

_ROW = "__engine_grace_row"      # a side's row number within its bucket, while joining a hot bucket
_HIGH_BITS = np.uint64(40)


# ---------------------------------------------------------------------------------------------
# A side's rows


def _rows_range(fs, refs: Sequence[tuple], lo: int, hi: int) -> list[tuple]:
    """The refs trimmed to the batches holding rows ``[lo, hi)`` of their concatenation, and for each the
    rows to skip in its first batch: ``[(ref, skip), ...]`` (row counts from the batches' headers on local
    disks: no data is read)."""
    out, pos = [], 0
    for ref in refs:
        src = shuffle._Batches(fs, ref, mmap=True)
        chosen, skip = [], None
        try:
            for b, batch in zip(src.ids, src.iterate(src.ids, 8 << 20)):
                n = batch.num_rows
                if pos + n > lo and pos < hi:
                    if skip is None:
                        skip = max(0, lo - pos)
                    chosen.append(b)
                pos += n
        finally:
            src.close()
        if chosen:
            out.append(((ref[0], chosen, *ref[2:]), skip))
    return out


def side_batches(fs, refs: Sequence[tuple], piece: tuple | None, side: int, num_partitions: int, *,
                 window: int, on_batch: Callable[[], None] | None = None) -> Iterator[pa.Table]:
    """One side's rows of a join task, batch by batch: for a piece ``(side, j, k)``, rows
    ``[j*n/k, (j+1)*n/k)`` of that side (only the batches holding them are read); for
    ``(-1, j, k, keys)``, the rows of every side whose keys' second hash is j (mod k); all rows otherwise
    (the same rows, in the same order, as the whole-table read)."""
    cut = piece is not None and piece[2] > 1 and (piece[0] < 0 or piece[0] == side)
    if cut and piece[0] >= 0:
        _, j, k = piece
        n = sum(b.num_rows for ref in refs for b in _headers(fs, ref))
        lo, hi = j * n // k, (j + 1) * n // k
        left = hi - lo
        for ref, skip in _rows_range(fs, refs, lo, hi):
            for batch in shuffle.read_slices(fs, [ref], mmap=False, fetch_bytes=window):
                if on_batch is not None:
                    on_batch()
                table = pa.Table.from_batches([batch]).slice(skip, left)
                skip = 0
                left -= table.num_rows
                yield table
        return
    for batch in shuffle.read_slices(fs, refs, mmap=False, fetch_bytes=window):
        if on_batch is not None:
            on_batch()
        table = pa.Table.from_batches([batch])
        if cut:
            _, j, k, keys = piece
            table = table.filter(pa.array(shuffle.sub_bucket(table, keys[side], num_partitions, k) == j))
        yield table


def _headers(fs, ref: tuple) -> Iterator[pa.RecordBatch]:
    src = shuffle._Batches(fs, ref, mmap=True)
    try:
        yield from src.iterate(src.ids, 8 << 20)
    finally:
        src.close()


def _refs_bytes(fs, refs: Sequence[tuple]) -> int:
    """The bytes of the listed batches, an upper bound of a side's rows in a task: their extents' lengths,
    or (local files) the batches' sizes from their headers (no data is read)."""
    total = 0
    for ref in refs:
        if len(ref) > 2 and ref[2] is not None:
            total += sum(n for _off, n in ref[2].blocks.values())
            continue
        src = shuffle._Batches(fs, ref, mmap=True)
        try:
            for b in src.iterate(src.ids, 8 << 20):
                total += b.nbytes
        finally:
            src.close()
    return total


# ---------------------------------------------------------------------------------------------
# Buckets


@dataclass
class Buckets:
    """One side's rows in a spill file, by bucket: bucket -> batch numbers, bytes, rows."""

    path: str | None
    batches: list[list[int]]
    nbytes: list[int]
    rows: list[int]
    schema: pa.Schema | None = None
    empty: pa.Table | None = field(default=None, repr=False)

    def read(self, spill: extsort.SpillFiles, bucket: int, on_batch=None) -> Iterator[pa.Table]:
        if self.path is None or not self.batches[bucket]:
            return
        src = shuffle._Batches(spill.fs, (self.path, self.batches[bucket]), mmap=False)
        try:
            for batch in src.iterate(src.ids, 8 << 20, on_batch):
                yield pa.Table.from_batches([batch])
        finally:
            src.close()


def bucket_of(table: pa.Table, keys: Sequence[str], n: int) -> np.ndarray:
    """The bucket of every row: the high bits of its keys' hash, mod ``n`` (null keys hash like any value:
    they never match, but their rows still go to one bucket)."""
    return ((hash_columns(table, keys) >> _HIGH_BITS) % np.uint64(n)).astype(np.int64)


def write_buckets(spill: extsort.SpillFiles, tables: Iterator[pa.Table], keys: Sequence[str], n: int,
                  buffer_bytes: int, batch_bytes: int | None = None) -> Buckets:
    """Spill a side's rows into ``n`` buckets of one file: gathered ``buffer_bytes`` at a time, split by
    bucket, written in batches of at most ``batch_bytes`` (so a reader holds little at a time)."""
    batch_bytes = batch_bytes or buffer_bytes
    out = Buckets(None, [[] for _ in range(n)], [0] * n, [0] * n)
    f: shuffle._IPCFile | None = None
    pending: list[pa.Table] = []
    size = 0

    def flush() -> None:
        nonlocal f, pending, size
        if not pending:
            return
        table = extsort._concat(pending)
        pending, size = [], 0
        if f is None:
            out.path = spill.new("bucket")
            f = shuffle._IPCFile(spill.fs, out.path)
        for b, part in shuffle.split_by_partition(table, bucket_of(table, keys, n), n):
            for piece in extsort.rebatch([part], batch_bytes):
                for batch in piece.combine_chunks().to_batches():
                    i = f.write(batch)
                    out.batches[b].append(i)
                    out.nbytes[b] += batch.nbytes
                    out.rows[b] += batch.num_rows
        spill.written += table.nbytes

    for t in tables:
        if out.schema is None:
            out.schema = t.schema
            out.empty = t.schema.empty_table()
        if t.num_rows == 0:
            continue
        for part in extsort.rebatch([t], buffer_bytes):      # (a table larger than the buffer: in slices)
            if pending and size + part.nbytes > buffer_bytes:
                flush()
            pending.append(part)
            size += part.nbytes
    flush()
    if f is not None:
        f.close(out.schema)
    extsort.release_memory()
    return out


# ---------------------------------------------------------------------------------------------
# Joining


class _Emitter:
    """Every table of one join's output, cast to its schema (pieces of an outer join come from inner
    joins and from unmatched rows alone, whose fields may differ in nullability)."""

    def __init__(self, emit: Callable[[pa.Table], None], schema: pa.Schema) -> None:
        self.emit, self.schema = emit, schema
        self.rows = 0

    def __call__(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names)
        if not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        self.rows += table.num_rows
        self.emit(table)


def _with_rows(table: pa.Table, start: int) -> pa.Table:
    return table.append_column(_ROW, pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)))


def _without_rows(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in table.column_names if c.startswith(_ROW)])


def join_hot_bucket(left: Callable[[], Iterator[pa.Table]], right: Callable[[], Iterator[pa.Table]],
                    left_empty: pa.Table, right_empty: pa.Table, spec: JoinSpec, build: int, chunk_bytes: int,
                    out: _Emitter, on_batch: Callable[[], None] | None = None) -> None:
    """Join one bucket too large for memory: the ``build`` side (0 left, 1 right) read in chunks of about
    ``chunk_bytes``, the other side streamed past each chunk (``left()``/``right()`` read a side again)."""
    sides = (left, right)
    empties = (left_empty, right_empty)
    probe = 1 - build
    inner = JoinSpec(spec.left_on, spec.right_on, "inner", spec.suffix)
    # which side's unmatched rows appear (outer joins), or which rows a semi/anti join keeps (the left's)
    keep_unmatched = {0: spec.how in ("left", "full", "anti"), 1: spec.how in ("right", "full")}
    keep_matched_once = {0: spec.how == "semi", 1: False}
    pairs_out = spec.how in ("inner", "left", "right", "full")
    track = {s: keep_unmatched[s] or keep_matched_once[s] for s in (0, 1)}
    probe_rows = None
    probe_seen = np.zeros(0, dtype=bool)

    def pair(p: pa.Table, b: pa.Table) -> pa.Table:
        lt, rt = (p, b) if probe == 0 else (b, p)
        return join_tables(lt, rt, inner)

    def rows_of(joined: pa.Table, side: int) -> np.ndarray:
        name = _ROW if side == 0 else f"{_ROW}{spec.suffix}"
        if name not in joined.column_names:          # the right side's row column kept its name
            name = next(c for c in joined.column_names if c.startswith(_ROW) and c != _ROW)
        return joined.column(name).to_numpy()

    def unmatched(table: pa.Table, side: int) -> pa.Table:
        """``table``'s rows (of ``side``) joined with nothing: the other side's columns null."""
        if spec.how in ("semi", "anti"):
            return table
        how = "left" if side == 0 else "right"
        lt, rt = (table, empties[1]) if side == 0 else (empties[0], table)
        return join_tables(lt, rt, JoinSpec(spec.left_on, spec.right_on, how, spec.suffix))

    for chunk in extsort.rebatch(sides[build](), chunk_bytes):
        if on_batch is not None:
            on_batch()
        chunk = _with_rows(chunk, 0)
        chunk_seen = np.zeros(chunk.num_rows, dtype=bool)
        start = 0
        for p in sides[probe]():
            p = _with_rows(p, start)
            start += p.num_rows
            joined = pair(p, chunk)
            if joined.num_rows:
                if track[build]:
                    chunk_seen[rows_of(joined, build)] = True
                if track[probe]:
                    if probe_seen.size < start:
                        probe_seen = np.concatenate([probe_seen, np.zeros(start - probe_seen.size, dtype=bool)])
                    probe_seen[rows_of(joined, probe)] = True
                if pairs_out:
                    out(_without_rows(joined))
        probe_rows = start
        if keep_unmatched[build] or keep_matched_once[build]:
            keep = ~chunk_seen if keep_unmatched[build] else chunk_seen
            if keep.any():
                out(unmatched(_without_rows(chunk.filter(pa.array(keep))), build))
    if not (keep_unmatched[probe] or keep_matched_once[probe]):
        return
    if probe_rows is None:          # no build rows at all: every probe row is unmatched
        probe_seen = np.zeros(0, dtype=bool)
    start = 0
    for p in sides[probe]():
        n = p.num_rows
        seen = probe_seen[start:start + n]
        if seen.size < n:
            seen = np.concatenate([seen, np.zeros(n - seen.size, dtype=bool)])
        start += n
        keep = ~seen if keep_unmatched[probe] else seen
        if keep.any():
            out(unmatched(p.filter(pa.array(keep)), probe))


def join_task(fs, spill_files: Callable[[], extsort.SpillFiles], spec: JoinSpec, refs: Sequence[Sequence[tuple]],
              piece: tuple | None, schemas: Sequence[pa.Schema | None], num_partitions: int,
              emit: Callable[[pa.Table], None], *, budget: int | None, computing: Callable[[], Any],
              on_batch: Callable[[], None] | None = None, after_read: Callable[[], None] | None = None) -> dict:
    """One join task's output through ``emit``, within ``budget`` bytes (see the module docstring): the
    sides are read until they are all in memory or pass a third of the budget (a join holds its inputs,
    its hash table and its output at once), in which case what was read and the rest go to the buckets. Returns its figures: ``rows_in``, ``buckets`` (0: joined at once),
    ``spilled_bytes``."""
    window = max(64 << 10, (budget or extsort.UNBOUNDED_BUDGET) // 8)
    streams = [side_batches(fs, refs[s], piece, s, num_partitions, window=window, on_batch=on_batch)
               for s in (0, 1)]

    def empty(s: int) -> pa.Table:
        schema = schemas[s] if schemas[s] is not None else (shuffle.file_schema(fs, refs[s][0]) if refs[s] else None)
        return schema.empty_table() if schema is not None else pa.table({})

    read: list[list[pa.Table]] = [[], []]
    total, over = 0, None
    for s in (0, 1):
        for t in streams[s]:
            read[s].append(t)
            total += t.nbytes
            if budget is not None and total > budget // 3:
                over = s
                break
        if over is not None:
            break
    if over is None:
        tables = [extsort._concat([t for t in read[s] if t.num_columns]) if any(t.num_columns for t in read[s])
                  else empty(s) for s in (0, 1)]
        read = []
        if after_read is not None:
            after_read()
        with computing():
            result = join_tables(tables[0], tables[1], spec)
        rows_in = sum(t.num_rows for t in tables)
        tables = None
        emit(result)
        return {"rows_in": rows_in, "buckets": 0, "spilled_bytes": 0}

    spill = spill_files()
    try:
        # buckets of about a sixth of the budget for all the rows the task may have (a bucket that
        # turns out larger, a hot key's, is joined chunk by chunk)
        most = max(total, sum(_refs_bytes(fs, refs[s]) for s in (0, 1)))
        n = max(4, min(1024, -(-most // max(1, budget // 6))))
        keys = (spec.left_on, spec.right_on)
        buckets = []
        for s in (0, 1):
            def rows(s=s) -> Iterator[pa.Table]:
                while read[s]:
                    yield read[s].pop(0)        # (so the tables read go as they are written)
                yield from streams[s]
            buckets.append(write_buckets(spill, rows(), keys[s], n, max(16 << 10, budget // 8),
                                         max(16 << 10, budget // 16)))
        if after_read is not None:
            after_read()
        empties = [buckets[s].empty if buckets[s].empty is not None else empty(s) for s in (0, 1)]
        with computing():
            out = _Emitter(emit, join_tables(empties[0], empties[1], spec).schema)
        for b in range(n):
            lb, rb = buckets[0].nbytes[b], buckets[1].nbytes[b]
            if not buckets[0].rows[b] and not buckets[1].rows[b]:
                continue

            def side(s: int, b=b) -> Iterator[pa.Table]:
                return buckets[s].read(spill, b, on_batch)

            with computing():
                if lb + rb <= budget // 3:
                    tables = [extsort._concat(list(side(s))) if buckets[s].rows[b] else empties[s] for s in (0, 1)]
                    out(join_tables(tables[0], tables[1], spec))
                    tables = None
                else:
                    build = 0 if lb <= rb else 1
                    join_hot_bucket(lambda: side(0), lambda: side(1), empties[0], empties[1], spec, build,
                                    max(16 << 10, budget // 6), out, on_batch)
            extsort.release_memory()
        return {"rows_in": sum(sum(x.rows) for x in buckets), "buckets": n, "spilled_bytes": spill.written}
    finally:
        spill.cleanup()


__all__ = ["join_task", "join_hot_bucket", "side_batches", "write_buckets", "bucket_of", "Buckets"]
