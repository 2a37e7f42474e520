"""Comparing answers: the engine's output against an independent system's, in memory or streamed.

Both answers are brought to one shape first (the reference's column order, integer columns as
int64, floating columns as float64, strings as string, dictionary columns decoded, rows sorted by
the given columns), then compared column by column: exactly for keys and integers, within a
relative tolerance for floats, where NaN and null count as equal (systems disagree on how to spell
"undefined", e.g. the correlation of a single row).

>>> import pyarrow as pa
>>> same(pa.table({"k": [2, 1], "v": [0.5, 1.0]}), pa.table({"k": [1, 2], "v": [1.0, 0.5]}), ["k"])
(True, '')

An answer too big to hold twice in memory (G1 q10 at 1e8 rows: ~1e8 output rows) is a
:class:`ParquetAnswer`, its Parquet files on local disk, and :func:`same_streamed` compares two
answers with bounded memory, step by step:

1. Each answer is read in batches, brought to the common shape, and its rows are spread over
   ``B`` bucket files by a hash of their key columns (``engine.hashing``, the same on both sides
   because the types are normalized first), ``B`` chosen so a bucket holds about ``bucket_rows``.
2. Bucket by bucket, the two sides' rows are read back, sorted by the key hash (then by the other
   sort columns) and compared as :func:`same` does, with the same tolerance; rows of one key always
   land in the same bucket on both sides.
3. With no key columns (the order itself is the answer, as in a sort), the two answers are instead
   read side by side in batches and compared in order.

Memory is one input batch plus two buckets, whatever the answers' size; disk holds one compressed
copy of each answer while it is checked.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class AnswerShapeError(ValueError):
    """The two answers cannot be compared: different columns."""


def _normal_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(t):
        return _normal_type(t.value_type)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pa.int64()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.binary()
    return t


def normalize(table: pa.Table, columns: Sequence[str], sort_by: Sequence[str]) -> pa.Table:
    """``table`` with exactly ``columns`` (in that order), normalized types, sorted by ``sort_by``."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise AnswerShapeError(f"the answer lacks column(s) {missing}; it has {table.column_names}")
    table = table.select(list(columns))
    schema = pa.schema([(f.name, _normal_type(f.type)) for f in table.schema])
    table = table.cast(schema)
    if sort_by:
        table = table.sort_by([(c, "ascending") for c in sort_by])
    return table.combine_chunks()


def _column_equal(a: pa.ChunkedArray, b: pa.ChunkedArray, rel: float) -> bool:
    if pa.types.is_floating(a.type):
        # "undefined" is NaN in some systems and null in others (a correlation of one row): equal here
        x = a.to_numpy(zero_copy_only=False).astype(np.float64)
        y = b.to_numpy(zero_copy_only=False).astype(np.float64)
        return bool(np.allclose(x, y, rtol=rel, atol=1e-9, equal_nan=True))
    if a.null_count != b.null_count:
        return False
    if a.null_count and not pc.all(pc.equal(pc.is_null(a), pc.is_null(b))).as_py():
        return False
    eq = pc.equal(a, b)
    return eq.null_count == a.null_count and bool(pc.all(eq).as_py() in (True, None))


def same(answer: pa.Table, reference: pa.Table, sort_by: Sequence[str], *, rel: float = 1e-9) -> tuple[bool, str]:
    """Whether ``answer`` equals ``reference`` (see the module docstring); ``(ok, why not)``."""
    columns = reference.column_names
    try:
        a = normalize(answer, columns, sort_by)
        b = normalize(reference, columns, sort_by)
    except (AnswerShapeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return False, str(exc)
    if a.num_rows != b.num_rows:
        return False, f"{a.num_rows} rows, the reference has {b.num_rows}"
    for name in columns:
        if not _column_equal(a.column(name), b.column(name), rel):
            return False, f"column {name!r} differs"
    return True, ""


# ---------------------------------------------------------------------------------------------
# Answers on disk, compared by streaming


@dataclass
class ParquetAnswer:
    """An answer written as Parquet files on local disk instead of held in memory.

    ``values``: compare it value by value (False: by row count only, for answers whose columns are
    named differently, such as dask's frames). ``owner``: a directory to remove once it is checked.
    """

    paths: list[str]
    rows: int
    values: bool = True
    owner: str | None = None
    schema: pa.Schema | None = field(default=None, repr=False)

    @classmethod
    def of_files(cls, paths: Iterable[str], *, values: bool = True, owner: str | None = None) -> ParquetAnswer:
        """The answer in ``paths`` (rows and schema from the files' footers)."""
        import pyarrow.parquet as pq
        paths = sorted(paths)
        rows, schema = 0, None
        for p in paths:
            meta = pq.read_metadata(p)
            rows += meta.num_rows
            schema = schema or meta.schema.to_arrow_schema()
        return cls(paths, rows, values, owner, schema)

    @classmethod
    def of_directory(cls, directory: str, *, values: bool = True, owner: str | None = None) -> ParquetAnswer:
        """Every ``*.parquet`` file under ``directory`` (any depth)."""
        found = [os.path.join(root, f) for root, _, files in os.walk(directory) for f in files
                 if f.endswith(".parquet")]
        return cls.of_files(found, values=values, owner=owner)

    @property
    def num_rows(self) -> int:
        return self.rows

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names) if self.schema is not None else []

    def batches(self, columns: Sequence[str] | None = None, batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        """The rows in batches, read one row group at a time (``ParquetFile.iter_batches`` held ~480 MiB of
        Arrow buffers reading DuckDB's 50M-row files, one row group at a time holds ~20 MiB)."""
        import pyarrow.parquet as pq
        for p in self.paths:
            f = pq.ParquetFile(p)
            try:
                for g in range(f.num_row_groups):
                    group = f.read_row_group(g, columns=list(columns) if columns else None)
                    yield from group.to_batches(max_chunksize=batch_rows)
                    del group
            finally:
                f.close()

    def discard(self) -> None:
        """Remove the owning directory (the answer is unreadable afterwards)."""
        if self.owner:
            shutil.rmtree(self.owner, ignore_errors=True)
            self.owner = None


def rows_of(answer) -> int:
    return answer.num_rows if hasattr(answer, "num_rows") else len(answer)


def _columns_of(answer) -> list[str]:
    return list(answer.column_names)


def _batches(answer, columns: Sequence[str], batch_rows: int) -> Iterator[pa.Table]:
    """``answer`` in normalized tables of at most ``batch_rows`` rows (columns as ``columns``)."""
    if isinstance(answer, ParquetAnswer):
        missing = [c for c in columns if c not in answer.column_names]
        if missing:
            raise AnswerShapeError(f"the answer lacks column(s) {missing}; it has {answer.column_names}")
        for b in answer.batches(columns, batch_rows):
            yield normalize(pa.Table.from_batches([b]), columns, [])
        return
    table = normalize(answer, columns, [])
    for b in table.to_batches(max_chunksize=batch_rows):
        yield pa.Table.from_batches([b], schema=table.schema)


_HASH = "__key_hash"


def _bucketize(answer, columns: Sequence[str], keys: Sequence[str], buckets: int, directory: str,
               batch_rows: int) -> list[str | None]:
    """Spread ``answer``'s rows over ``buckets`` LZ4-compressed IPC stream files by a hash of ``keys``
    (kept with the rows as one more column, the bucket's sort key)."""
    from engine.hashing import hash_columns
    from engine.shuffle import split_by_partition
    os.makedirs(directory, exist_ok=True)
    paths: list[str | None] = [None] * buckets
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    sinks = {}
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    try:
        for table in _batches(answer, columns, batch_rows):
            if table.num_rows == 0:
                continue
            h = hash_columns(table, keys) if keys else np.zeros(table.num_rows, np.uint64)
            table = table.append_column(_HASH, pa.array(h, pa.uint64()))
            pids = (h % np.uint64(buckets)).astype(np.int64)
            for b, part in split_by_partition(table, pids, buckets):
                if b not in writers:
                    paths[b] = os.path.join(directory, f"bucket-{b:05d}.arrows")
                    sinks[b] = pa.OSFile(paths[b], "wb")
                    writers[b] = pa.ipc.new_stream(sinks[b], table.schema, options=options)
                writers[b].write_table(part)
    finally:
        for w in writers.values():
            w.close()
        for f in sinks.values():
            f.close()
    return paths


def _read_bucket(path: str | None, schema: pa.Schema) -> pa.Table:
    if path is None:
        return schema.append(pa.field(_HASH, pa.uint64())).empty_table()
    with pa.OSFile(path, "rb") as f:
        return pa.ipc.open_stream(f).read_all().combine_chunks()


def _same_bucket(a: pa.Table, b: pa.Table, sort_by: Sequence[str], keys: Sequence[str],
                 rel: float) -> tuple[bool, str]:
    """One bucket of each side: sorted by the key hash (a fixed-width sort, where sorting by several
    string columns took seconds per million rows), then by the other ``sort_by`` columns, and compared
    as :func:`same` does. Should two keys share a hash and sort apart, the exact sort decides."""
    if a.num_rows != b.num_rows:
        return False, f"{a.num_rows} rows, the reference has {b.num_rows}"
    order = [(_HASH, "ascending")] + [(c, "ascending") for c in sort_by if c not in keys]
    a = a.take(pc.sort_indices(a, sort_keys=order)).drop_columns([_HASH])
    b = b.take(pc.sort_indices(b, sort_keys=order)).drop_columns([_HASH])
    if not all(_column_equal(a.column(k), b.column(k), rel) for k in keys):
        return same(a, b, sort_by, rel=rel)
    for name in b.column_names:
        if not _column_equal(a.column(name), b.column(name), rel):
            return False, f"column {name!r} differs"
    return True, ""


def same_streamed(answer, reference, sort_by: Sequence[str], *, keys: Sequence[str] | None = None,
                  rel: float = 1e-9, bucket_rows: int = 500_000, batch_rows: int = 1 << 18,
                  scratch: str | None = None) -> tuple[bool, str, dict]:
    """Whether ``answer`` equals ``reference`` (tables or :class:`ParquetAnswer`), with bounded memory
    (see the module docstring): ``(ok, why not, {"buckets", "rows"})``.

    ``keys`` are the columns rows are bucketed by (default: the non-floating ``sort_by`` columns, so
    a tolerance on floats cannot send two equal rows to different buckets); rows are sorted by
    ``sort_by`` within a bucket. With no ``sort_by`` the answers are compared in order.
    """
    columns = _columns_of(reference)
    rows_a, rows_b = rows_of(answer), rows_of(reference)
    info = {"buckets": 0, "rows": rows_b}
    if rows_a != rows_b:
        return False, f"{rows_a} rows, the reference has {rows_b}", info
    try:
        if not sort_by:
            ok, why = _same_in_order(answer, reference, columns, rel, batch_rows)
            return ok, why, {**info, "buckets": 1, "in_order": True}
        schema = next(_batches(reference, columns, 1), None)
        if schema is None:
            return True, "", info
        schema = schema.schema
        if keys is None:
            keys = [c for c in sort_by if not pa.types.is_floating(schema.field(c).type)]
        buckets = max(1, math.ceil(rows_b / bucket_rows)) if keys else 1
        info["buckets"] = buckets
        work = tempfile.mkdtemp(prefix="answers-", dir=scratch)
        try:
            mine = _bucketize(answer, columns, keys, buckets, os.path.join(work, "answer"), batch_rows)
            theirs = _bucketize(reference, columns, keys, buckets, os.path.join(work, "reference"), batch_rows)
            for b in range(buckets):
                a, r = _read_bucket(mine[b], schema), _read_bucket(theirs[b], schema)
                ok, why = _same_bucket(a, r, sort_by, keys, rel)
                del a, r
                if not ok:
                    return False, f"key bucket {b} of {buckets}: {why}", info
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except (AnswerShapeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return False, str(exc), info
    return True, "", info


def _same_in_order(answer, reference, columns: Sequence[str], rel: float, batch_rows: int) -> tuple[bool, str]:
    """Row ``i`` of one equals row ``i`` of the other, read side by side in batches."""
    left, right = _batches(answer, columns, batch_rows), _batches(reference, columns, batch_rows)
    a = b = None
    offset = 0
    while True:
        if a is None or a.num_rows == 0:
            a = next(left, None)
        if b is None or b.num_rows == 0:
            b = next(right, None)
        if a is None or b is None:
            return (a is None and b is None), ("" if a is None and b is None else "the answers end apart")
        n = min(a.num_rows, b.num_rows)
        for name in columns:
            if not _column_equal(a.column(name).slice(0, n), b.column(name).slice(0, n), rel):
                return False, f"column {name!r} differs in rows {offset}..{offset + n - 1}"
        a, b, offset = a.slice(n), b.slice(n), offset + n


def discard(answers: Iterable) -> None:
    """Remove the files of every :class:`ParquetAnswer` among ``answers``."""
    for a in answers:
        if isinstance(a, ParquetAnswer):
            a.discard()


__all__ = ["same", "same_streamed", "normalize", "AnswerShapeError", "ParquetAnswer", "rows_of", "discard"]
