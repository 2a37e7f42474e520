"""Hive-style partition directories: ``OUT/date=2026-11-30/region=eu%2Fwest/part-….parquet``.

The building blocks of partitioned output, and of reading it back:

- :func:`escape` / :func:`unescape`: Hive's path escaping. Characters that a path, a URL or Hive's
  own parser would misread are percent-encoded with two uppercase hex digits (``/`` → ``%2F``,
  ``=`` → ``%3D``, ``%`` → ``%25``): the control characters 0x00–0x1F and 0x7F and
  ``"#%'*/:=?\\{[]^``. Everything else, non-ASCII text included, is kept as it is. The set is
  Hive's and Spark's (``escapePathName``) plus NUL, which no filesystem accepts in a name.
- :func:`format_value` / :func:`parse_value`: the text of one partition value for an Arrow type, and
  back (integers and decimals as digits, ``true``/``false``, dates ``2026-11-30``, timestamps
  ``2026-11-30 12:34:56.5`` as Spark writes them, in UTC for zoned types).
- :func:`partition_dir`: the relative directory of one partition, names and values escaped.
- :func:`split_by_partition`: a table's rows grouped by their partition values, vectorised.
- :func:`check_partition_columns`: whether a schema can be partitioned by some of its columns.

**Nulls and empty strings.** Hive has no text for a null partition value: a null *and an empty
string* are both stored as the directory ``col=__HIVE_DEFAULT_PARTITION__`` (:data:`DEFAULT_PARTITION`),
and both read back as null, here and in pyarrow, DuckDB and Polars. A string column whose value is
literally ``__HIVE_DEFAULT_PARTITION__`` reads back as null too (the same ambiguity as in Hive).

**What other readers do** (pyarrow 26 ``partitioning="hive"``, DuckDB 2.0 ``hive_partitioning=true``,
Polars 2.1 ``hive_partitioning=True``; asserted by ``tests/test_hive.py``): all three decode the
percent-encoded *values* (``/ = % : ?``, quotes, control characters, as UTF-8) and read
``__HIVE_DEFAULT_PARTITION__`` as null. Only pyarrow also decodes the column *names*: DuckDB and
Polars name a column ``a=b`` as written, ``a%3Db``. Plain column names (letters, digits, ``_``) are
written as they are, so they read back the same everywhere. The types they give a partition column
differ, since the directory holds text only: integers are ``int32`` in pyarrow and 64-bit in DuckDB
and Polars; dates are strings in pyarrow and dates in DuckDB and Polars; timestamps, booleans,
floats and decimals are strings in pyarrow and DuckDB, while Polars infers datetime, boolean and
float (decimals become floats). ``engine.read`` types them as the manifest's schema says; a job
reading a Hive directory as input sees ``int64`` when every value is an integer, else ``string``.

This module needs pyarrow and numpy only (no dask), so a reader of the output can use it alone.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import decimal
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import JobDefinitionError, SchemaError

DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
"""The directory name of a null (or empty-string) partition value, as Hive writes it."""

_ESCAPED = frozenset([chr(c) for c in range(0x20)] + ["\x7f"] + list("\"#%'*/:=?\\{[]^"))
_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def escape(text: str) -> str:
    """``text`` with Hive's path escaping: each of ``"#%'*/:=?\\{[]^``, 0x00–0x1F and 0x7F becomes
    ``%XX`` (uppercase hex); any other character, non-ASCII included, is kept.

    >>> escape("eu/west=1%")
    'eu%2Fwest%3D1%25'
    """
    if not any(c in _ESCAPED for c in text):
        return text
    return "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in text)


def _decode_run(match: re.Match) -> str:
    raw = bytes(int(match.group(0)[i + 1:i + 3], 16) for i in range(0, len(match.group(0)), 3))
    return raw.decode("utf-8", errors=_LATIN1)


def _latin1_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    # Hive's reading of a byte that is not part of UTF-8: the character U+00XX.
    return error.object[error.start:error.end].decode("latin-1"), error.end


_LATIN1 = "engine-hive-latin1"
codecs.register_error(_LATIN1, _latin1_fallback)


def unescape(text: str) -> str:
    """The inverse of :func:`escape`: ``unescape(escape(s)) == s`` for every string.

    Each ``%XX`` (two hex digits, either case) is decoded; a run of them that forms UTF-8 is read as
    UTF-8 (as pyarrow, DuckDB and Polars decode what other tools wrote, e.g. ``caf%C3%A9``), any other
    ``%XX`` as the character U+00XX (Hive's reading). A ``%`` not followed by two hex digits is kept.

    >>> unescape("eu%2Fwest%3D1%25"), unescape("caf%C3%A9"), unescape("50%")
    ('eu/west=1%', 'café', '50%')
    """
    if "%" not in text:
        return text
    return _PERCENT.sub(_decode_run, text)


# ---------------------------------------------------------------------------------------------
# Types and values


def _value_type(typ: pa.DataType) -> pa.DataType:
    return typ.value_type if pa.types.is_dictionary(typ) else typ


def _is_string(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _supported(typ: pa.DataType) -> bool:
    typ = _value_type(typ)
    return (pa.types.is_integer(typ) or _is_string(typ) or pa.types.is_boolean(typ)
            or pa.types.is_date(typ) or pa.types.is_timestamp(typ) or pa.types.is_decimal(typ)
            or pa.types.is_float32(typ) or pa.types.is_float64(typ) or pa.types.is_null(typ))


_SUPPORTED_TEXT = ("integers, strings, booleans, dates, timestamps, decimals and 32- or 64-bit floating point "
                   "numbers (or dictionaries of these)")


def _unsupported(name: str | None, typ: pa.DataType) -> SchemaError:
    where = f"column {name!r}" if name is not None else "a partition value"
    return SchemaError(f"{where} has type {typ}, which cannot name a Hive partition directory; partition by "
                       f"{_SUPPORTED_TEXT}, or derive such a column in the job (e.g. a date from a timestamp)")


_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EPOCH = _dt.datetime(1970, 1, 1)


def _timestamp_text(ticks: int, unit: str) -> str:
    per_second = _UNITS[unit]
    seconds, fraction = divmod(ticks, per_second)
    t = _EPOCH + _dt.timedelta(seconds=seconds)
    stamp = f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if fraction:
        digits = len(str(per_second)) - 1
        stamp += "." + f"{fraction:0{digits}d}".rstrip("0")
    return stamp


def format_value(value: Any, typ: pa.DataType | None = None, *, column: str | None = None) -> str | None:
    """The text of one partition value of Arrow type ``typ`` (a Python value, or a ``pa.Scalar``,
    whose own type is used).

    Integers and decimals as digits (decimals keep their scale: ``12.30``), strings as they are,
    booleans ``true``/``false``, dates ISO ``2026-11-30``, timestamps ``2026-11-30 12:34:56`` with
    the fraction only when not zero and without trailing zeros (``…:56.5``), as Spark writes them;
    zoned timestamps in UTC. Floats as Python's shortest repr (``0.1``, ``1e+20``); NaN and
    infinities are refused (readers disagree on their text). Dictionaries use their value type.

    Returns None for a null and for the empty string (and the string ``__HIVE_DEFAULT_PARTITION__``):
    Hive stores them all as :data:`DEFAULT_PARTITION` and they read back as null. Raises
    :class:`SchemaError` (naming ``column``) for a type or value that cannot name a partition.
    """
    if isinstance(value, pa.Scalar):
        typ = value.type
        if not value.is_valid:
            return None
        if pa.types.is_dictionary(typ):
            value = value.value
            typ = typ.value_type
        if pa.types.is_timestamp(typ):
            value = value.cast(pa.int64()).as_py()
        elif pa.types.is_date64(typ):
            value = value.cast(pa.date32()).as_py()
        else:
            value = value.as_py()
        return _format_py(value, typ, column, ticks=pa.types.is_timestamp(typ))
    if typ is None:
        raise TypeError("format_value needs the Arrow type of a plain Python value")
    return _format_py(value, _value_type(typ), column, ticks=False)


def _format_py(value: Any, typ: pa.DataType, column: str | None, *, ticks: bool) -> str | None:
    if not _supported(typ):
        raise _unsupported(column, typ)
    if value is None:
        return None
    where = f"column {column!r}" if column is not None else "a partition value"
    if _is_string(typ):
        return None if value in ("", DEFAULT_PARTITION) else str(value)
    if pa.types.is_boolean(typ):
        return "true" if value else "false"
    if pa.types.is_integer(typ):
        return str(int(value))
    if pa.types.is_decimal(typ):
        return format(decimal.Decimal(value), "f")
    if pa.types.is_floating(typ):
        number = float(value)
        if not math.isfinite(number):
            raise SchemaError(f"{where} holds {number!r}, which cannot name a Hive partition (readers disagree "
                              "on its text); replace it with null or a finite value before partitioning")
        return str(np.float32(number)) if pa.types.is_float32(typ) else repr(number)
    if pa.types.is_date(typ):
        if isinstance(value, _dt.datetime):
            value = value.date()
        return value.isoformat()
    if pa.types.is_timestamp(typ):
        if not ticks:                        # a Python datetime: to the type's ticks through Arrow
            value = pa.scalar(value, typ).cast(pa.int64()).as_py()
        try:
            return _timestamp_text(int(value), typ.unit)
        except (OverflowError, ValueError):
            raise SchemaError(f"{where} holds a timestamp outside the years 1–9999, which cannot name a "
                              "Hive partition") from None
    raise _unsupported(column, typ)  # pragma: no cover (null type: value is None above)


def _cast_texts(texts: pa.Array, typ: pa.DataType) -> pa.Array:
    """Cast an array of partition texts (nulls for null values) to ``typ``; raises :class:`SchemaError`."""
    import pyarrow.compute as pc        # where used: 70 ms at import, and reading inputs needs none of it
    vtype = _value_type(typ)
    if not _supported(vtype):
        raise _unsupported(None, vtype)
    try:
        if pa.types.is_boolean(vtype):
            lowered = pc.utf8_lower(texts)
            bad = pc.filter(texts, pc.and_(pc.is_valid(texts), pc.invert(pc.is_in(lowered, pa.array(["true", "false"])))))
            if len(bad):
                raise ValueError(f"{bad[0].as_py()!r} is neither 'true' nor 'false'")
            return pc.equal(lowered, "true").cast(typ)
        if pa.types.is_timestamp(vtype) and vtype.tz is not None:
            # The text of a zoned timestamp is its UTC time without an offset (format_value).
            return texts.cast(pa.timestamp(vtype.unit)).cast(typ)
        if pa.types.is_date64(vtype):
            return texts.cast(pa.date32()).cast(typ)
        return texts.cast(typ)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"partition value(s) not of type {vtype}: {exc}") from None


def parse_value(text: str | None, typ: pa.DataType) -> pa.Scalar:
    """The value of Arrow type ``typ`` whose text is ``text`` (unescaped): the inverse of
    :func:`format_value`, as a ``pa.Scalar`` of ``typ`` (``.as_py()`` gives the Python value; the
    scalar keeps the exact type, and nanoseconds, which Python's ``datetime`` lacks).

    ``None`` and :data:`DEFAULT_PARTITION` are null (so is ``""``, which Hive cannot store: it was
    written as :data:`DEFAULT_PARTITION`). Raises :class:`SchemaError` when the text is not a value
    of the type.
    """
    return parse_values([text], typ)[0]


def parse_values(texts: Sequence[str | None], typ: pa.DataType) -> pa.Array:
    """The typed array of many partition texts (e.g. a partition column read back): each as
    :func:`parse_value`, cast in one call."""
    cleaned = [None if not t or t == DEFAULT_PARTITION else t for t in texts]
    return _cast_texts(pa.array(cleaned, pa.string()), typ)


# ---------------------------------------------------------------------------------------------
# Directories


def partition_dir(columns: Sequence[str], values: Sequence[str | None] | dict[str, str | None]) -> str:
    """The relative directory of one partition: ``col=value`` segments joined by ``/``, names and
    values escaped, a null or empty value as :data:`DEFAULT_PARTITION`.

    ``values`` are texts (as :func:`format_value` returns them), in the order of ``columns`` or as
    a dict by column.

    >>> partition_dir(["date", "region"], ["2026-11-30", "eu/west"])
    'date=2026-11-30/region=eu%2Fwest'
    """
    if isinstance(values, dict):
        values = [values[c] for c in columns]
    if len(values) != len(columns):
        raise ValueError(f"{len(columns)} partition column(s) but {len(values)} value(s)")
    return "/".join(f"{escape(c)}={escape(v) if v else DEFAULT_PARTITION}" for c, v in zip(columns, values))


def parse_partition_dir(path: str) -> list[tuple[str, str | None]]:
    """The ``(column, text)`` pairs of the ``col=value`` segments of a relative path (unescaped;
    :data:`DEFAULT_PARTITION` as None); segments without ``=`` are skipped."""
    pairs = []
    for part in path.split("/"):
        if "=" in part:
            name, value = part.split("=", 1)
            pairs.append((unescape(name), None if value == DEFAULT_PARTITION else unescape(value)))
    return pairs


# ---------------------------------------------------------------------------------------------
# Checking and splitting


def check_partition_columns(schema: pa.Schema, columns: Sequence[str] | str) -> list[str]:
    """Check that ``schema`` can be partitioned by ``columns``; returns them as a list.

    Raises :class:`JobDefinitionError` for an empty list, a name that is not a non-empty string, a
    duplicate, or a name starting with ``_`` or ``.`` (readers skip such directories as metadata),
    and :class:`SchemaError` for a column the schema lacks, a column type that cannot name a
    directory, or partitioning by every column (nothing would be left to store in the files).
    """
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise JobDefinitionError("partition_by is empty; name at least one column, or leave it out")
    seen: set[str] = set()
    for name in columns:
        if not isinstance(name, str) or not name:
            raise JobDefinitionError(f"partition_by holds {name!r}; partition columns are non-empty column names")
        if name.startswith(("_", ".")):
            raise JobDefinitionError(
                f"cannot partition by column {name!r}: directories whose names start with '_' or '.' are "
                "skipped by readers (they hold metadata); rename the column in the job")
        if name in seen:
            raise JobDefinitionError(f"partition_by names column {name!r} twice")
        seen.add(name)
    for name in columns:
        if name not in schema.names:
            raise SchemaError(f"cannot partition by column {name!r}: the output has no such column; its columns "
                              f"are {', '.join(schema.names) or '(none)'}")
        typ = schema.field(name).type
        if not _supported(typ):
            raise _unsupported(name, typ)
    if not set(schema.names) - seen:
        raise SchemaError(f"cannot partition by every output column ({', '.join(columns)}): nothing would be "
                          "left to store in the files; keep at least one column out of partition_by")
    return columns


def _normalize(array: pa.Array, name: str) -> pa.Array:
    """The array whose distinct values are the partitions: dictionaries decoded, views made plain,
    empty strings (and the text ``__HIVE_DEFAULT_PARTITION__`` itself) made null, as Hive stores
    them all the same way; NaN and infinities refused."""
    import pyarrow.compute as pc
    typ = array.type
    if pa.types.is_dictionary(typ):
        array = array.dictionary_decode()
        typ = array.type
    if pa.types.is_string_view(typ):
        array = array.cast(pa.large_string())
    if _is_string(array.type):
        blank = pc.is_in(array, pa.array(["", DEFAULT_PARTITION], array.type))
        array = pc.if_else(blank, pa.scalar(None, array.type), array)
    elif pa.types.is_floating(typ):
        finite = pc.is_finite(array)
        if pc.any(pc.invert(finite)).as_py():
            bad = pc.filter(array, pc.invert(finite))[0].as_py()
            raise SchemaError(f"column {name!r} holds {bad!r}, which cannot name a Hive partition (readers "
                              "disagree on its text); replace it with null or a finite value before partitioning")
    return array


def _texts(dictionary: pa.Array, name: str) -> list[str | None]:
    """The text of each distinct value (a few thousand at most: Python per value is fine)."""
    typ = dictionary.type
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return dictionary.cast(pa.string()).to_pylist()
    if pa.types.is_date(typ):
        return dictionary.cast(pa.date32()).cast(pa.string()).to_pylist()
    if pa.types.is_timestamp(typ):
        ticks = dictionary.cast(pa.int64()).to_pylist()
        return [format_value(t, typ, column=name) if t is None else _ts_checked(t, typ.unit, name) for t in ticks]
    return [format_value(v, typ, column=name) for v in dictionary.to_pylist()]


def _ts_checked(ticks: int, unit: str, name: str) -> str:
    try:
        return _timestamp_text(ticks, unit)
    except (OverflowError, ValueError):
        raise SchemaError(f"column {name!r} holds a timestamp outside the years 1–9999, which cannot name a "
                          "Hive partition") from None


def split_by_partition(table: pa.Table, columns: Sequence[str]) -> list[tuple[str, dict[str, str | None], pa.Table]]:
    """The rows of ``table`` grouped by the distinct values of ``columns``: one
    ``(directory, {column: text or None}, rows)`` per partition, sorted by directory; ``rows`` are the
    group's rows in their original order, without the partition columns.

    Vectorised: each column is dictionary-encoded once, the codes are combined into one group id per
    row (numpy), and one stable sort + ``take`` + zero-copy slices cut the groups; Python runs once
    per distinct value, never per row. A null and an empty string are one partition (Hive's
    :data:`DEFAULT_PARTITION`).
    """
    import pyarrow.compute as pc
    columns = list(columns)
    for name in columns:
        if name not in table.schema.names:
            raise SchemaError(f"cannot partition by column {name!r}: the table has no such column; its columns "
                              f"are {', '.join(table.schema.names)}")
        if not _supported(table.schema.field(name).type):
            raise _unsupported(name, table.schema.field(name).type)
    rest = table.drop_columns(columns)
    n = table.num_rows
    if n == 0:
        return []
    gid = np.zeros(n, dtype=np.int64)
    cardinality = 1
    texts: list[list[str | None]] = []
    codes_per_column: list[np.ndarray] = []
    for name in columns:
        array = _normalize(table.column(name).combine_chunks(), name)
        encoded = pc.dictionary_encode(array, null_encoding="encode")
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        size = max(len(encoded.dictionary), 1)
        texts.append(_texts(encoded.dictionary, name))
        codes_per_column.append(codes)
        if cardinality * size >= 2 ** 62:        # keep the mixed-radix id in int64: renumber densely first
            _, gid = np.unique(gid, return_inverse=True)
            cardinality = int(gid.max()) + 1
        gid = gid * size + codes
        cardinality *= size
    if cardinality <= max(4 * n, 1 << 16):
        # Dense ids (the usual case): counting instead of sorting.
        per_id = np.bincount(gid, minlength=cardinality)
        present = np.flatnonzero(per_id)
        dense = np.cumsum(per_id > 0) - 1
        inverse = dense[gid]
        counts = per_id[present]
        first = np.empty(len(present), dtype=np.int64)
        first[inverse] = np.arange(n)          # a row of each group (any row has its values)
    else:
        _, first, inverse, counts = np.unique(gid, return_index=True, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
    entries = []
    for g, row in enumerate(first):
        values = {name: texts[i][codes_per_column[i][row]] for i, name in enumerate(columns)}
        entries.append((partition_dir(columns, [values[c] for c in columns]), values, g))
    entries.sort(key=lambda e: e[0])
    rank = np.empty(len(entries), dtype=np.int64)
    for position, (_, _, g) in enumerate(entries):
        rank[g] = position
    # numpy's stable sort of 16-bit integers is a radix sort: O(rows) for up to 32,767 partitions.
    keys = rank[inverse]
    if len(entries) == 1 or bool(np.all(keys[1:] >= keys[:-1])):
        ordered = rest                      # already grouped in directory order: slices only
    else:
        order = np.argsort(keys.astype(np.int16) if len(entries) <= 32_767 else keys, kind="stable")
        ordered = rest.take(pa.array(order))
    out = []
    start = 0
    for directory, values, g in entries:
        count = int(counts[g])
        out.append((directory, values, ordered.slice(start, count)))
        start += count
    return out


__all__ = ["DEFAULT_PARTITION", "escape", "unescape", "format_value", "parse_value", "parse_values",
           "partition_dir", "parse_partition_dir", "check_partition_columns", "split_by_partition"]
