"""Comparing answers: the engine's output against an independent system's, as Arrow tables.

Both tables are brought to one shape first (the reference's column order, integer columns as
int64, floating columns as float64, strings as string, dictionary columns decoded, rows sorted by
the given columns), then compared column by column: exactly for keys and integers, within a
relative tolerance for floats, where NaN and null count as equal (systems disagree on how to spell
"undefined", e.g. the correlation of a single row).

>>> import pyarrow as pa
>>> same(pa.table({"k": [2, 1], "v": [0.5, 1.0]}), pa.table({"k": [1, 2], "v": [1.0, 0.5]}), ["k"])
(True, '')
"""

from __future__ import annotations

from collections.abc import Sequence

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


__all__ = ["same", "normalize", "AnswerShapeError"]
