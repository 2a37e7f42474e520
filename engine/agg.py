"""Declarative, mergeable aggregations over Arrow tables.

An aggregation job names its group keys and, for every output column, one
:class:`Aggregation` built by the constructors of this module::

    from engine import agg

    aggs = agg.AggregationSet(
        keys=["country", "year"],
        aggs={"n": agg.count(), "revenue": agg.sum("amount"), "p95": agg.quantile("latency", 0.95)},
    )

The engine never sees a whole group at once.  It runs every aggregation as three steps over
*state tables*, in the spirit of a CombineFn:

1. ``partial(table)`` -- *create + add*.  Raw rows of one input partition become a state table
   with one row per distinct key tuple: the key columns first, then the state columns of every
   output (named ``"<output>__<part>"``), in the order of the ``aggs`` mapping.
2. ``merge(state)`` -- *merge accumulators*.  State rows from any number of partials, concatenated
   in any order, become one row per key, with exactly the schema of the input.  The engine may call
   merge zero, one or many times, on any grouping of states, before a single state row per key
   remains: ``merge`` is associative and commutative, and ``merge(merge(s)) == merge(s)``.
   The exceptions are :func:`first` and :func:`last`, which are order-dependent by nature: they
   respect the row order of the concatenated state, so the engine must concatenate states in
   input order when it wants a meaningful first or last value.
3. ``finalize(state)`` -- *extract output*.  One state row per key becomes the key columns followed
   by one column per output, in the order of the ``aggs`` mapping.  ``finalize`` accepts states
   with several rows per key too: it merges them first.

``aggregate(table)`` is ``finalize(merge(partial(table)))``: the answer a single process gives.

``row_states(table)`` is a ``partial`` that does not group: one state row per input row (each the
state of a group holding that row alone).  ``merge`` accepts its output like any other state, so a
map task whose keys are nearly unique may ship ``row_states`` instead of paying for a ``partial``
that would barely shrink its rows.

Semantics follow Arrow's (and SQL's) grouped aggregation: null values are skipped by every
aggregation except :func:`count`, which counts rows; null keys form a group of their own; a group
whose values are all null yields null (``count_distinct`` and ``approx_distinct`` yield 0,
``top_k`` an empty list).  Dictionary-encoded value columns are aggregated as their decoded
values.  Everything is vectorized with ``pyarrow.compute`` and numpy; no step loops over rows in
Python.

The module also provides :func:`hash_array` and :func:`hash_columns`, a fast 64-bit hash of Arrow
values that is stable across processes, runs and chunk layouts.  ``approx_distinct`` uses it, and
so does the engine's hash partitioning.
"""

from __future__ import annotations

import builtins as _bi
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import JobDefinitionError, SchemaError
from .hashing import hash_array, hash_columns  # noqa: F401  (re-exported)
from .hashing import _U64, _valid_mask

__all__ = [
    "Aggregation", "AggregationSet",
    "count", "sum", "min", "max", "mean", "var", "std", "count_distinct", "approx_distinct",
    "top_k", "first", "last", "median", "quantile",
    "hash_array", "hash_columns",
]


# ---------------------------------------------------------------------------------------------
# Aggregation descriptions
# ---------------------------------------------------------------------------------------------

_KINDS = ("count", "sum", "min", "max", "mean", "var", "std", "count_distinct",
          "approx_distinct", "top_k", "first", "last", "median", "quantile")
_NUMERIC_KINDS = frozenset({"sum", "mean", "var", "std", "median", "quantile"})
_ORDERED_KINDS = frozenset({"min", "max", "top_k"})


@dataclass(frozen=True)
class Aggregation:
    """One declarative aggregation: what to compute (``kind``), over which ``column``, with which
    ``params`` (sorted ``(name, value)`` pairs).  Build it with the module's constructors::

        >>> sum("amount")
        sum('amount')
        >>> var("x", ddof=0).param("ddof")
        0
    """

    kind: str
    column: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise JobDefinitionError(
                f"unknown aggregation kind {self.kind!r}; known kinds: {', '.join(_KINDS)}")
        if self.kind == "count":
            if self.column is not None:
                raise JobDefinitionError("count() counts rows and takes no column")
        elif not isinstance(self.column, str) or not self.column:
            raise JobDefinitionError(
                f"{self.kind}() needs a column name (a non-empty string), got {self.column!r}")
        object.__setattr__(self, "params", tuple(sorted(self.params)))

    def param(self, name: str, default: Any = None) -> Any:
        """The value of parameter ``name`` (``default`` when the kind has no such parameter)."""
        for key, value in self.params:
            if key == name:
                return value
        return default

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The input columns this aggregation reads (empty for :func:`count`)."""
        return () if self.column is None else (self.column,)

    def __repr__(self) -> str:
        if self.kind == "count":
            return "count()"
        if self.kind == "top_k":
            return (f"top_k({self.param('k')!r}, {self.column!r}, "
                    f"smallest={self.param('smallest')!r})")
        extra = "".join(f", {key}={value!r}" for key, value in self.params)
        return f"{self.kind}({self.column!r}{extra})"

    def token(self) -> str:
        """A deterministic string identifying this aggregation, for fingerprinting jobs."""
        return f"agg/1:{self!r}"


def _check_column(column: Any, kind: str) -> str:
    if not isinstance(column, str) or not column:
        raise JobDefinitionError(
            f"{kind}() needs a column name (a non-empty string), got {column!r}")
    return column


def _check_int(value: Any, name: str, kind: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise JobDefinitionError(f"{kind}(): {name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise JobDefinitionError(f"{kind}(): {name} must be {bound}, got {value}")
    return value


def count() -> Aggregation:
    """Number of rows in each group, nulls included; int64.

    Example: ``AggregationSet(["user"], {"visits": count()})``.
    """
    return Aggregation("count")


def sum(col: str) -> Aggregation:  # noqa: A001 - mirrors the SQL name on purpose
    """Sum of the non-null values of a numeric column; null when a group has none.

    The result type is Arrow's: int64 for signed integers, uint64 for unsigned ones, float64
    for floats, a widened decimal for decimals.  Example: ``{"revenue": sum("amount")}``.
    """
    return Aggregation("sum", _check_column(col, "sum"))


def min(col: str) -> Aggregation:  # noqa: A001
    """Smallest non-null value (any orderable type: numbers, strings, dates, ...).

    Example: ``{"first_seen": min("timestamp")}``.
    """
    return Aggregation("min", _check_column(col, "min"))


def max(col: str) -> Aggregation:  # noqa: A001
    """Largest non-null value (any orderable type).

    Example: ``{"last_seen": max("timestamp")}``.
    """
    return Aggregation("max", _check_column(col, "max"))


def mean(col: str) -> Aggregation:
    """Arithmetic mean of the non-null values, as float64.  Example: ``{"avg": mean("price")}``."""
    return Aggregation("mean", _check_column(col, "mean"))


def var(col: str, ddof: int = 1) -> Aggregation:
    """Variance of the non-null values with ``ddof`` delta degrees of freedom (1: sample variance),
    as float64; null when a group has ``ddof`` values or fewer.

    Example: ``{"spread": var("latency", ddof=0)}``.
    """
    ddof = _check_int(ddof, "ddof", "var", 0)
    return Aggregation("var", _check_column(col, "var"), (("ddof", ddof),))


def std(col: str, ddof: int = 1) -> Aggregation:
    """Standard deviation, the square root of :func:`var`.  Example: ``{"sd": std("latency")}``."""
    ddof = _check_int(ddof, "ddof", "std", 0)
    return Aggregation("std", _check_column(col, "std"), (("ddof", ddof),))


def count_distinct(col: str) -> Aggregation:
    """Exact number of distinct non-null values, as int64 (like SQL ``COUNT(DISTINCT col)``).

    The state holds every distinct value of the group, so prefer :func:`approx_distinct` for
    large cardinalities.  Example: ``{"users": count_distinct("user_id")}``.
    """
    return Aggregation("count_distinct", _check_column(col, "count_distinct"))


def approx_distinct(col: str, precision: int = 12) -> Aggregation:
    """Estimated number of distinct non-null values (HyperLogLog with ``2**precision`` registers,
    ``4 <= precision <= 16``), as int64.  The relative standard error is about
    ``1.04 / sqrt(2**precision)`` (1.6 % for the default).

    Example: ``{"users": approx_distinct("user_id", precision=14)}``.
    """
    p = _check_int(precision, "precision", "approx_distinct", 4, 16)
    column = _check_column(col, "approx_distinct")
    return Aggregation("approx_distinct", column, (("precision", p),))


def top_k(k: int, by: str, smallest: bool = False) -> Aggregation:
    """The ``k`` largest non-null values of column ``by`` in each group, as a list sorted
    descending (with ``smallest=True``: the ``k`` smallest, sorted ascending).  NaN sorts after
    every number in both directions, as in Arrow's sort.

    Example: ``{"best": top_k(3, "score")}`` gives ``[9.5, 9.1, 8.7]`` per group.
    """
    kk = _check_int(k, "k", "top_k", 1)
    if not isinstance(smallest, bool):
        raise JobDefinitionError(f"top_k(): smallest must be True or False, got {smallest!r}")
    return Aggregation("top_k", _check_column(by, "top_k"), (("k", kk), ("smallest", smallest)))


def first(col: str) -> Aggregation:
    """The first non-null value of the group in input order.

    Order-dependent: the result is only meaningful when partitions are read and states are
    concatenated in input order.  Example: ``{"opening": first("price")}``.
    """
    return Aggregation("first", _check_column(col, "first"))


def last(col: str) -> Aggregation:
    """The last non-null value of the group in input order (order-dependent, like :func:`first`).

    Example: ``{"closing": last("price")}``.
    """
    return Aggregation("last", _check_column(col, "last"))


def median(col: str) -> Aggregation:
    """Exact median of the non-null values, as float64 (the mean of the two middle values for an
    even count).  The state holds every value of the group.  Example: ``{"mid": median("x")}``.
    """
    return Aggregation("median", _check_column(col, "median"), (("q", 0.5),))


def quantile(col: str, q: float) -> Aggregation:
    """Exact ``q``-quantile (``0 <= q <= 1``) of the non-null values, as float64, interpolated
    linearly between the two nearest values like numpy's default method.

    Example: ``{"p99": quantile("latency", 0.99)}``.
    """
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise JobDefinitionError(f"quantile(): q must be a number between 0 and 1, got {q!r}")
    qf = float(q)
    if not 0.0 <= qf <= 1.0:
        raise JobDefinitionError(f"quantile(): q must be between 0 and 1, got {q!r}")
    return Aggregation("quantile", _check_column(col, "quantile"), (("q", qf),))


# ---------------------------------------------------------------------------------------------
# Vectorized grouping helpers
# ---------------------------------------------------------------------------------------------

class _Groups:
    """Dense group ids of a table's rows: ``gid[i]`` in ``0..ng-1``, numbered in order of first
    appearance; ``first[g]`` is the first row of group ``g``."""

    __slots__ = ("gid", "ng", "first")

    def __init__(self, gid: np.ndarray, ng: int, first: np.ndarray) -> None:
        self.gid = gid
        self.ng = ng
        self.first = first


def _codes(column: pa.ChunkedArray, dense: bool = True) -> tuple[np.ndarray, int]:
    """Codes of a column's values (null is a value of its own) and their count: dense and numbered
    in order of first appearance, or with ``dense=False`` perhaps neither (a dictionary's indices)."""
    if pa.types.is_dictionary(column.type):
        found = _dictionary_codes(column, dense)
        if found is not None:
            return found
        column = column.cast(column.type.value_type)
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    if isinstance(encoded, pa.ChunkedArray):
        if encoded.num_chunks == 0:
            return np.empty(0, dtype=np.int64), 0
        # the chunks of an encoded chunked array share one growing dictionary
        card = _bi.max(len(c.dictionary) for c in encoded.chunks)
        codes = np.concatenate(
            [np.asarray(c.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
             for c in encoded.chunks])
        return codes, card
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64), \
        len(encoded.dictionary)


def _dictionary_codes(column: pa.ChunkedArray, dense: bool) -> tuple[np.ndarray, int] | None:
    """Codes of a dictionary-encoded column from its indices, without decoding its values: the chunks'
    dictionaries unified first, so equal values get one code whatever chunk they are in; null gets a
    code of its own. None where the values' own equality is not the module's (floats), or where a
    dictionary holds nulls or a value twice: then the caller decodes."""
    if not _direct_key(column.type.value_type) or column.num_chunks == 0:
        return None
    if column.num_chunks > 1:
        column = pa.table({"c": column}).unify_dictionaries().column(0)
    dictionary = column.chunk(0).dictionary
    if dictionary.null_count or pc.count_distinct(dictionary).as_py() != len(dictionary):
        return None
    card = len(dictionary)
    codes = np.concatenate([_numpy(c.indices, np.int64, fill=card) for c in column.chunks])
    if column.null_count:
        card += 1
    if dense:
        codes, card = _densify(codes)
    return codes, card


def _first_rows(gid: np.ndarray) -> np.ndarray:
    """First row of every group, for ids numbered in order of first appearance."""
    if len(gid) == 0:
        return np.empty(0, dtype=np.int64)
    running = np.maximum.accumulate(gid)
    new = np.empty(len(gid), dtype=bool)
    new[0] = True
    np.greater(running[1:], running[:-1], out=new[1:])
    return np.flatnonzero(new)


def _group_ids(table: pa.Table, keys: Sequence[str]) -> _Groups:
    n = table.num_rows
    if not keys:
        ng = 1 if n else 0
        return _Groups(np.zeros(n, dtype=np.int64), ng, np.zeros(ng, dtype=np.int64))
    codes, card = _codes(table.column(keys[0]), dense=len(keys) == 1)
    for key in keys[1:]:
        more, more_card = _codes(table.column(key), dense=False)
        if card * more_card >= 1 << 62:      # keep the mixed-radix code in int64: re-densify
            codes, card = _densify(codes)
        codes = codes * more_card + more
        card *= more_card
    if len(keys) > 1:
        codes, card = _densify(codes)
    return _Groups(codes, card, _first_rows(codes))


def _densify(codes: np.ndarray) -> tuple[np.ndarray, int]:
    encoded = pc.dictionary_encode(pa.array(codes, type=pa.int64()))
    return (np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64),
            len(encoded.dictionary))


def _group_order(gid: np.ndarray, ng: int) -> np.ndarray:
    """The stable permutation that groups rows by id (ids ``0..ng-1``), keeping their order within
    a group.  Small ids are sorted with numpy's radix sort, in one or two 16-bit passes."""
    n = len(gid)
    if ng <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    if ng <= 1 << 8:
        return np.argsort(gid.astype(np.uint8), kind="stable")
    if ng <= 1 << 16:
        return np.argsort(gid.astype(np.uint16), kind="stable")
    if ng <= 1 << 32:
        order = np.argsort((gid & 0xFFFF).astype(np.uint16), kind="stable")
        return order[np.argsort((gid[order] >> 16).astype(np.uint16), kind="stable")]
    return np.argsort(gid, kind="stable")


def _runs(sorted_ids: np.ndarray, ng: int) -> np.ndarray:
    """int32 list offsets for values sorted by group id (every group of ``0..ng-1`` gets one)."""
    offsets = np.zeros(ng + 1, dtype=np.int64)
    if len(sorted_ids):
        np.cumsum(np.bincount(sorted_ids, minlength=ng), out=offsets[1:])
    if offsets[-1] >= 1 << 31:
        raise OverflowError("an aggregation state holds more than 2**31 values in one table")
    return offsets.astype(np.int32)


def _lists(values: pa.Array, sorted_ids: np.ndarray, ng: int, value_type: pa.DataType) -> pa.Array:
    """A list per group of ``values`` (already sorted by ``sorted_ids``)."""
    offsets = pa.array(_runs(sorted_ids, ng), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, _single(values, value_type),
                                    type=pa.list_(value_type))


def _single(arr: pa.Array | pa.ChunkedArray, type_: pa.DataType | None = None) -> pa.Array:
    """A contiguous (non-chunked) array, optionally cast to ``type_``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arr.type)
    if type_ is not None and arr.type != type_:
        arr = arr.cast(type_)
    return arr


def _explode(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Flatten a list column: the element values and, per element, the row it came from."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    value_type = column.type.value_type
    values, parents, row = [], [], 0
    for chunk in chunks:
        values.append(chunk.flatten())
        parents.append(np.asarray(pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False),
                                  dtype=np.int64) + row)
        row += len(chunk)
    if not values:
        return pa.array([], type=value_type), np.empty(0, dtype=np.int64)
    return (pa.concat_arrays(values) if len(values) > 1 else values[0]), np.concatenate(parents)


def _numpy(arr: pa.Array | pa.ChunkedArray, dtype: Any, fill: Any = 0) -> np.ndarray:
    """A writable numpy copy of ``arr`` with nulls replaced by ``fill``."""
    if arr.null_count:
        arr = pc.fill_null(arr, fill)
    out = arr.to_numpy() if isinstance(arr, pa.ChunkedArray) else arr.to_numpy(zero_copy_only=False)
    out = np.asarray(out, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def _group_sum(gid: np.ndarray, weights: np.ndarray, ng: int) -> np.ndarray:
    """float64 sum of ``weights`` per group id."""
    return np.bincount(gid, weights=weights, minlength=ng).astype(np.float64, copy=False)


def _masked(values: np.ndarray, null: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, type=type_, mask=null if null.any() else None)


def _valid_rows(values: pa.ChunkedArray | pa.Array, gid: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The non-null values and their group ids."""
    values = _single(values)
    valid = _valid_mask(values)
    if valid is None:
        return values, gid
    return values.filter(pa.array(valid)), gid[valid]


def _row_offsets(valid: np.ndarray | None, n: int) -> np.ndarray:
    """int32 list offsets giving every row a list of its own value (none for a null row)."""
    offsets = np.arange(n + 1, dtype=np.int64) if valid is None else \
        np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
    if offsets[-1] >= 1 << 31:
        raise OverflowError("an aggregation state holds more than 2**31 values in one table")
    return offsets.astype(np.int32)


def _row_lists(values: pa.Array | pa.ChunkedArray, value_type: pa.DataType) -> pa.Array:
    """Per row, the list of its value: ``[v]``, or ``[]`` where the value is null."""
    values = _single(values)
    valid = _valid_mask(values)
    offsets = pa.array(_row_offsets(valid, len(values)), type=pa.int32())
    if valid is not None:
        values = values.filter(pa.array(valid))
    return pa.ListArray.from_arrays(offsets, _single(values, value_type), type=pa.list_(value_type))


class _Plan:
    """Collects Arrow hash aggregations over one table's group ids and runs them in a single
    ``group_by``; results come back aligned with group ids ``0..ng-1``."""

    def __init__(self, groups: _Groups) -> None:
        self.groups = groups
        self._columns: dict[Any, tuple[str, Any]] = {}
        self._specs: list[tuple[Any, str, Any]] = []
        self._spec_index: dict[Any, int] = {}
        self._results: list[pa.ChunkedArray] | None = None

    def column(self, ident: Any, make: Callable[[], Any]) -> str:
        if ident not in self._columns:
            self._columns[ident] = (f"c{len(self._columns)}", make())
        return self._columns[ident][0]

    def want(self, column: str | None, func: str, options: Any = None,
             options_key: str = "") -> int:
        ident = (column, func, options_key)
        if ident not in self._spec_index:
            target = [] if column is None else column
            spec = (target, func, options) if options is not None else (target, func)
            self._spec_index[ident] = len(self._specs)
            self._specs.append(spec)
        return self._spec_index[ident]

    def run(self) -> None:
        if not self._specs:
            self._results = []
            return
        data = {"__g": pa.array(self.groups.gid, type=pa.int64())}
        data.update({name: arr for name, arr in self._columns.values()})
        result = pa.table(data).group_by("__g", use_threads=False).aggregate(self._specs)
        g_index = result.schema.names.index("__g")
        gids = result.column(g_index).to_numpy()
        if not np.array_equal(gids, np.arange(self.groups.ng)):
            result = result.take(pa.array(np.argsort(gids, kind="stable")))
        self._results = [result.column(i) for i in range(result.num_columns) if i != g_index]

    def __getitem__(self, index: int) -> pa.ChunkedArray:
        assert self._results is not None
        return self._results[index]


@lru_cache(maxsize=None)
def _direct_key(t: pa.DataType) -> bool:
    """Whether Arrow's grouping of a single key column of type ``t`` matches the module's (floats
    are left out for their zeros and NaNs; a dictionary column is grouped on its codes instead, see
    :func:`_dictionary_codes`, as its chunks may not share one dictionary)."""
    return (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_boolean(t)
            or pa.types.is_temporal(t) or pa.types.is_decimal(t)
            or pa.types.is_fixed_size_binary(t))


def _mixed_codes(table: pa.Table, keys: Sequence[str]) -> np.ndarray | None:
    """One int64 code per row for several keys (mixed radix of the keys' dictionary codes, equal
    exactly for equal key tuples), or None when the code would not fit in int64."""
    codes, card = _codes(table.column(keys[0]), dense=False)
    for key in keys[1:]:
        more, more_card = _codes(table.column(key), dense=False)
        if card * more_card >= 1 << 62:
            return None
        codes = codes * more_card + more
        card *= more_card
    return codes


class _KeyPlan(_Plan):
    """A :class:`_Plan` that needs no dense group ids: one Arrow ``group_by`` on the key column
    itself (one key) or on the mixed-radix code of the keys' dictionary codes (several keys).
    ``groups`` is None, so only aggregation steps that ask for nothing but Arrow hash
    aggregations can use it.  Groups come back in order of first appearance; ``keys`` holds their
    key columns."""

    def __init__(self, table: pa.Table, keys: Sequence[str]) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.table = table
        self.key_names = list(keys)
        self.keys: list[pa.ChunkedArray] = []

    def run(self) -> None:
        table, keys = self.table, self.key_names
        # a dictionary key is grouped on its (unified) indices, never decoded
        codes = _mixed_codes(table, keys) if len(keys) > 1 or pa.types.is_dictionary(
            table.schema.field(keys[0]).type) else None
        if codes is not None:
            names = ["k0"]
            data: dict[str, Any] = {"k0": pa.array(codes, type=pa.int64())}
        else:
            names = [f"k{i}" for i in range(len(keys))]
            data = {n: table.column(k) for n, k in zip(names, keys)}
        data.update({name: arr for name, arr in self._columns.values()})
        data["__row"] = pa.array(np.arange(table.num_rows, dtype=np.int64))
        specs = [*self._specs, ("__row", "min")]
        result = pa.table(data).group_by(names, use_threads=False).aggregate(specs)
        key_index = [result.schema.get_field_index(n) for n in names]
        rest = [i for i in range(result.num_columns) if i not in key_index]
        first = np.asarray(result.column(rest[-1]).to_numpy(), dtype=np.int64)
        # the key code is not needed any more: the keys are taken from the first rows
        result = result.select(rest[:-1] if codes is not None else key_index + rest[:-1])
        # Arrow numbers groups almost, but not always, in order of first appearance
        if len(first) > 1 and (first[1:] < first[:-1]).any():
            order = np.argsort(first, kind="stable")  # nearly sorted: cheap
            first = first[order]
            result = result.take(pa.array(order))
        columns = result.columns
        if codes is not None:
            rows = pa.array(first, type=pa.int64())
            self.keys = [table.column(k).take(rows) for k in keys]
        else:
            self.keys, columns = columns[:len(keys)], columns[len(keys):]
        self._results = columns


# ---------------------------------------------------------------------------------------------
# Aggregation kinds: state layout, partial, merge and finalize
# ---------------------------------------------------------------------------------------------

_Finisher = Callable[[], list[pa.Array]]


@lru_cache(maxsize=None)
def _sum_type(value_type: pa.DataType) -> pa.DataType:
    probe = pa.table({"k": pa.array([], pa.int8()), "v": pa.array([], value_type)})
    return probe.group_by("k", use_threads=False).aggregate([("v", "sum")]).column("v_sum").type


def _value_type(t: pa.DataType) -> pa.DataType:
    """The type values of a column are aggregated as: dictionaries decoded, float16 widened."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_float16(t):
        t = pa.float32()
    return t


def _values(table: pa.Table, column: str) -> pa.ChunkedArray:
    arr = table.column(column)
    target = _value_type(arr.type)
    return arr if arr.type == target else arr.cast(target)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t) or pa.types.is_union(t) or pa.types.is_map(t)


class _Kind:
    """Behaviour of one aggregation kind.  ``parts`` are the state column suffixes.
    ``direct_partial`` / ``direct_merge``: the step only asks its plan for Arrow hash aggregations
    and never reads ``plan.groups``, so it also runs on a :class:`_KeyPlan`."""

    parts: tuple[str, ...] = ()
    direct_partial = False
    direct_merge = False

    def state_types(self, agg: Aggregation, vtype: pa.DataType | None) -> list[pa.DataType]:
        raise NotImplementedError

    def partial(self, agg: Aggregation, values: pa.ChunkedArray | None, plan: _Plan) -> _Finisher:
        raise NotImplementedError

    def merge(self, agg: Aggregation, state: list[pa.ChunkedArray], plan: _Plan) -> _Finisher:
        raise NotImplementedError

    def rows(self, agg: Aggregation, values: pa.ChunkedArray | None,
             n: int) -> list[pa.Array | pa.ChunkedArray]:
        """One state row per input row, without grouping: the state ``partial`` gives a group
        that holds that row alone."""
        raise NotImplementedError

    def finalize(self, agg: Aggregation,
                 state: list[pa.ChunkedArray]) -> pa.Array | pa.ChunkedArray:
        raise NotImplementedError

    def output_type(self, agg: Aggregation, state_types: list[pa.DataType]) -> pa.DataType:
        raise NotImplementedError


class _Count(_Kind):
    parts = ("count",)
    direct_partial = direct_merge = True

    def state_types(self, agg, vtype):
        return [pa.int64()]

    def partial(self, agg, values, plan):
        i = plan.want(None, "count_all")
        return lambda: [plan[i]]

    def merge(self, agg, state, plan):
        i = plan.want(plan.column(("state", id(state[0])), lambda: state[0]), "sum")
        return lambda: [plan[i]]

    def rows(self, agg, values, n):
        return [pa.array(np.ones(n, dtype=np.int64), type=pa.int64())]

    def finalize(self, agg, state):
        return state[0]

    def output_type(self, agg, state_types):
        return pa.int64()


class _Reduce(_Kind):
    """sum, min, max: the same Arrow aggregation reduces rows and partial states alike."""

    direct_partial = direct_merge = True

    def __init__(self, func: str) -> None:
        self.func = func
        self.parts = (func,)

    def state_types(self, agg, vtype):
        return [_sum_type(vtype) if self.func == "sum" else vtype]

    def partial(self, agg, values, plan):
        i = plan.want(plan.column(("value", agg.column), lambda: values), self.func)
        return lambda: [plan[i]]

    def merge(self, agg, state, plan):
        i = plan.want(plan.column(("state", id(state[0])), lambda: state[0]), self.func)
        return lambda: [plan[i]]

    def rows(self, agg, values, n):
        return [values if self.func != "sum" else values.cast(_sum_type(values.type))]

    def finalize(self, agg, state):
        return state[0]

    def output_type(self, agg, state_types):
        return state_types[0]


class _Mean(_Kind):
    parts = ("sum", "count")
    direct_partial = direct_merge = True

    def state_types(self, agg, vtype):
        return [pa.float64(), pa.int64()]

    def partial(self, agg, values, plan):
        col = plan.column(("f64", agg.column), lambda: pc.cast(values, pa.float64()))
        s = plan.want(col, "sum", pc.ScalarAggregateOptions(min_count=0), "min_count=0")
        n = plan.want(col, "count", pc.CountOptions(mode="only_valid"), "only_valid")
        return lambda: [plan[s], plan[n]]

    def merge(self, agg, state, plan):
        sc = plan.column(("state", id(state[0])), lambda: state[0])
        nc = plan.column(("state", id(state[1])), lambda: state[1])
        s = plan.want(sc, "sum", pc.ScalarAggregateOptions(min_count=0), "min_count=0")
        n = plan.want(nc, "sum", pc.ScalarAggregateOptions(min_count=0), "min_count=0")
        return lambda: [plan[s], plan[n]]

    def rows(self, agg, values, n):
        f = pc.cast(values, pa.float64())
        return [pc.fill_null(f, 0.0), pc.cast(pc.is_valid(f), pa.int64())]

    def finalize(self, agg, state):
        total = _numpy(state[0], np.float64)
        n = _numpy(state[1], np.int64)
        empty = n == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            result = total / np.where(empty, 1, n)
        return _masked(result, empty, pa.float64())

    def output_type(self, agg, state_types):
        return pa.float64()


class _Var(_Kind):
    """State: count, mean and M2 (sum of squared deviations from the mean) of the non-null
    values; states combine with Chan et al.'s parallel formula."""

    parts = ("n", "mean", "m2")
    direct_partial = True

    def state_types(self, agg, vtype):
        return [pa.int64(), pa.float64(), pa.float64()]

    def partial(self, agg, values, plan):
        col = plan.column(("f64", agg.column), lambda: pc.cast(values, pa.float64()))
        n = plan.want(col, "count", pc.CountOptions(mode="only_valid"), "only_valid")
        mu = plan.want(col, "mean")
        v0 = plan.want(col, "variance", pc.VarianceOptions(ddof=0), "ddof=0")

        def finish() -> list[pa.Array]:
            counts = _numpy(plan[n], np.int64)
            means = _numpy(plan[mu], np.float64)
            m2 = _numpy(plan[v0], np.float64) * counts
            empty = counts == 0
            means[empty] = 0.0
            m2[empty] = 0.0
            return [pa.array(counts), pa.array(means), pa.array(m2)]
        return finish

    def merge(self, agg, state, plan):
        def finish() -> list[pa.Array]:
            g = plan.groups
            counts = _numpy(state[0], np.int64)
            means = _numpy(state[1], np.float64)
            m2 = _numpy(state[2], np.float64)
            ng = g.ng
            weights = counts.astype(np.float64)
            # shift by the first state's mean: exact for a group with a single state row
            ref = means[g.first]
            total = _group_sum(g.gid, weights, ng)
            shift = _group_sum(g.gid, weights * (means - ref[g.gid]), ng)
            with np.errstate(divide="ignore", invalid="ignore"):
                combined = ref + np.where(total > 0, shift / np.where(total > 0, total, 1), 0.0)
            combined[total == 0] = 0.0
            delta = means - combined[g.gid]
            new_m2 = _group_sum(g.gid, m2 + weights * delta * delta, ng)
            new_n = _group_sum(g.gid, weights, ng).astype(np.int64)
            return [pa.array(new_n, pa.int64()), pa.array(combined, pa.float64()),
                    pa.array(new_m2, pa.float64())]
        return finish

    def rows(self, agg, values, n):
        f = pc.cast(values, pa.float64())
        # one value: mean = the value, M2 = 0 (NaN for an infinite or NaN value, as Arrow's variance has it)
        return [pc.cast(pc.is_valid(f), pa.int64()), pc.fill_null(f, 0.0),
                pc.fill_null(pc.subtract(f, f), 0.0)]

    def finalize(self, agg, state):
        n = _numpy(state[0], np.int64)
        m2 = _numpy(state[2], np.float64)
        dof = n - agg.param("ddof")
        null = dof <= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            result = m2 / np.where(null, 1, dof)
        if agg.kind == "std":
            result = np.sqrt(result)
        return _masked(result, null, pa.float64())

    def output_type(self, agg, state_types):
        return pa.float64()


def _distinct_lists(values: pa.Array, gid: np.ndarray, ng: int, vtype: pa.DataType) -> pa.Array:
    values, gid = _valid_rows(values, gid)
    pairs = pa.table({"g": pa.array(gid, type=pa.int64()), "v": values})
    unique = pairs.group_by(["g", "v"], use_threads=False).aggregate([])
    # sorted values make the state canonical, whatever order the rows came in
    order = pc.sort_indices(unique, sort_keys=[("g", "ascending"), ("v", "ascending")])
    unique = unique.take(order)
    return _lists(unique.column("v"), unique.column("g").to_numpy(), ng, vtype)


class _CountDistinct(_Kind):
    parts = ("distinct",)

    def state_types(self, agg, vtype):
        return [pa.list_(vtype)]

    def partial(self, agg, values, plan):
        g = plan.groups
        return lambda: [_distinct_lists(values, g.gid, g.ng, values.type)]

    def merge(self, agg, state, plan):
        g = plan.groups

        def finish() -> list[pa.Array]:
            flat, parents = _explode(state[0])
            return [_distinct_lists(flat, g.gid[parents], g.ng, state[0].type.value_type)]
        return finish

    def rows(self, agg, values, n):
        return [_row_lists(values, values.type)]

    def finalize(self, agg, state):
        return pc.cast(pc.list_value_length(state[0]), pa.int64())

    def output_type(self, agg, state_types):
        return pa.int64()


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Number of significant bits of each uint64 (0 for 0), exactly."""
    x = x.copy()
    bits = np.zeros(len(x), dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = x >= _U64(1 << shift)
        bits[big] += shift
        x[big] >>= _U64(shift)
    return bits + (x > 0)


def _hll_registers(gid: np.ndarray, idx: np.ndarray, rank: np.ndarray, ng: int,
                   precision: int) -> list[pa.Array]:
    """Sparse HLL state per group: register indices (ascending) and their maximal rank."""
    m = 1 << precision
    packed = (gid * m + idx.astype(np.int64)) * 64 + rank.astype(np.int64)
    packed.sort()
    cell = packed >> 6
    keep = np.empty(len(packed), dtype=bool)
    if len(packed):
        keep[-1] = True
        np.not_equal(cell[1:], cell[:-1], out=keep[:-1])
    packed = packed[keep]
    cell = packed >> 6
    groups = cell >> precision
    offsets = pa.array(_runs(groups, ng), type=pa.int32())
    idx_out = pa.array((cell & (m - 1)).astype(np.uint16), type=pa.uint16())
    rank_out = pa.array((packed & 63).astype(np.uint8), type=pa.uint8())
    return [pa.ListArray.from_arrays(offsets, idx_out, type=pa.list_(pa.uint16())),
            pa.ListArray.from_arrays(offsets, rank_out, type=pa.list_(pa.uint8()))]


class _ApproxDistinct(_Kind):
    parts = ("hll_idx", "hll_rank")

    def state_types(self, agg, vtype):
        return [pa.list_(pa.uint16()), pa.list_(pa.uint8())]

    def partial(self, agg, values, plan):
        g = plan.groups
        p = agg.param("precision")

        def finish() -> list[pa.Array]:
            h = hash_array(values)
            gid = g.gid
            valid = _valid_mask(values)
            if valid is not None:
                h, gid = h[valid], gid[valid]
            idx = h >> _U64(64 - p)
            rest = h & _U64((1 << (64 - p)) - 1)
            rank = (64 - p) - _bit_length(rest) + 1
            return _hll_registers(gid, idx, rank, g.ng, p)
        return finish

    def merge(self, agg, state, plan):
        g = plan.groups

        def finish() -> list[pa.Array]:
            idx, parents = _explode(state[0])
            rank, _ = _explode(state[1])
            return _hll_registers(g.gid[parents], _numpy(idx, np.int64), _numpy(rank, np.int64),
                                  g.ng, agg.param("precision"))
        return finish

    def rows(self, agg, values, n):
        p = agg.param("precision")
        values = _single(values)
        h = hash_array(values)
        valid = _valid_mask(values)
        if valid is not None:
            h = h[valid]
        rest = h & _U64((1 << (64 - p)) - 1)
        rank = (64 - p) - _bit_length(rest) + 1
        offsets = pa.array(_row_offsets(valid, n), type=pa.int32())
        idx = pa.array((h >> _U64(64 - p)).astype(np.uint16), type=pa.uint16())
        return [pa.ListArray.from_arrays(offsets, idx, type=pa.list_(pa.uint16())),
                pa.ListArray.from_arrays(offsets, pa.array(rank.astype(np.uint8), type=pa.uint8()),
                                         type=pa.list_(pa.uint8()))]

    def finalize(self, agg, state):
        m = 1 << agg.param("precision")
        ng = len(state[1])
        rank, parents = _explode(state[1])
        ranks = _numpy(rank, np.float64)
        present = np.bincount(parents, minlength=ng).astype(np.float64)
        inverse = _group_sum(parents, np.exp2(-ranks), ng)
        inverse += m - present
        alpha = 0.7213 / (1.0 + 1.079 / m) if m >= 128 else {16: 0.673, 32: 0.697, 64: 0.709}[m]
        estimate = alpha * m * m / inverse
        zeros = m - present
        small = (estimate <= 2.5 * m) & (zeros > 0)
        with np.errstate(divide="ignore"):
            linear = m * np.log(m / np.where(zeros > 0, zeros, 1))
        estimate = np.where(small, linear, estimate)
        return pa.array(np.rint(estimate).astype(np.int64), type=pa.int64())

    def output_type(self, agg, state_types):
        return pa.int64()


def _top_lists(values: pa.Array, gid: np.ndarray, ng: int, k: int, smallest: bool,
               vtype: pa.DataType) -> pa.Array:
    values, gid = _valid_rows(values, gid)
    if len(values) == 0:
        return _lists(pa.array([], type=vtype), gid, ng, vtype)
    order = pc.sort_indices(
        pa.table({"g": pa.array(gid, type=pa.int64()), "v": values}),
        sort_keys=[("g", "ascending"), ("v", "ascending" if smallest else "descending")])
    order = np.asarray(order.to_numpy(), dtype=np.int64)
    sorted_g = gid[order]
    positions = np.arange(len(order))
    boundary = np.empty(len(order), dtype=bool)
    boundary[0] = True
    np.not_equal(sorted_g[1:], sorted_g[:-1], out=boundary[1:])
    run_start = np.maximum.accumulate(np.where(boundary, positions, 0))
    keep = (positions - run_start) < k
    return _lists(values.take(pa.array(order[keep])), sorted_g[keep], ng, vtype)


class _TopK(_Kind):
    parts = ("top",)

    def state_types(self, agg, vtype):
        return [pa.list_(vtype)]

    def partial(self, agg, values, plan):
        g = plan.groups
        return lambda: [_top_lists(values, g.gid, g.ng, agg.param("k"), agg.param("smallest"),
                                   values.type)]

    def merge(self, agg, state, plan):
        g = plan.groups

        def finish() -> list[pa.Array]:
            flat, parents = _explode(state[0])
            return [_top_lists(flat, g.gid[parents], g.ng, agg.param("k"), agg.param("smallest"),
                               state[0].type.value_type)]
        return finish

    def rows(self, agg, values, n):
        return [_row_lists(values, values.type)]

    def finalize(self, agg, state):
        return state[0]

    def output_type(self, agg, state_types):
        return state_types[0]


class _FirstLast(_Kind):
    """The value at the smallest (first) or largest (last) row index among non-null rows."""

    direct_partial = direct_merge = True

    def __init__(self, which: str) -> None:
        self.which = which
        self.parts = (which,)
        self.func = "min" if which == "first" else "max"

    def state_types(self, agg, vtype):
        return [vtype]

    def _pick(self, ident: Any, values: pa.ChunkedArray, plan: _Plan) -> _Finisher:
        def positions() -> pa.Array:
            n = len(values)
            valid = _valid_mask(values)
            return pa.array(np.arange(n, dtype=np.int64),
                            mask=None if valid is None else ~valid)
        i = plan.want(plan.column(ident, positions), self.func)
        return lambda: [_single(values.take(plan[i]))]

    def partial(self, agg, values, plan):
        return self._pick(("rows", agg.column), values, plan)

    def merge(self, agg, state, plan):
        return self._pick(("rows", id(state[0])), state[0], plan)

    def rows(self, agg, values, n):
        return [values]

    def finalize(self, agg, state):
        return state[0]

    def output_type(self, agg, state_types):
        return state_types[0]


def _grouped_value_lists(values: pa.Array, gid: np.ndarray, ng: int) -> pa.Array:
    """The non-null values of every group, as float64, in input order."""
    values, gid = _valid_rows(values, gid)
    data = _numpy(values, np.float64)
    order = _group_order(gid, ng)
    return _lists(pa.array(data[order], type=pa.float64()), gid[order], ng, pa.float64())


def _regrouped_lists(lists: pa.ChunkedArray, gid: np.ndarray, ng: int) -> pa.Array:
    """Concatenate the lists of the rows of every group (ids ``gid`` per row), in row order."""
    lengths = _numpy(pc.list_value_length(lists), np.int64)
    order = _group_order(gid, ng)
    if not np.array_equal(order, np.arange(len(order))):
        lists = lists.take(pa.array(order))
    lists = _single(lists)
    values = lists.flatten()
    offsets = np.zeros(ng + 1, dtype=np.int64)
    if len(gid):
        np.cumsum(np.bincount(gid, weights=lengths, minlength=ng).astype(np.int64),
                  out=offsets[1:])
    if offsets[-1] >= 1 << 31:
        raise OverflowError("an aggregation state holds more than 2**31 values in one table")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), type=pa.int32()),
                                    _single(values, lists.type.value_type), type=lists.type)


class _Quantile(_Kind):
    """State: every non-null value of the group as float64, in no particular order (finalize
    sorts them)."""

    parts = ("values",)

    def state_types(self, agg, vtype):
        return [pa.list_(pa.float64())]

    def partial(self, agg, values, plan):
        g = plan.groups
        return lambda: [_grouped_value_lists(pc.cast(values, pa.float64()), g.gid, g.ng)]

    def merge(self, agg, state, plan):
        g = plan.groups
        return lambda: [_regrouped_lists(state[0], g.gid, g.ng)]

    def rows(self, agg, values, n):
        return [_row_lists(pc.cast(values, pa.float64()), pa.float64())]

    def finalize(self, agg, state):
        ng = len(state[0])
        flat, parents = _explode(state[0])
        valid = _valid_mask(flat)
        data = _numpy(flat, np.float64)
        if valid is not None:
            data, parents = data[valid], parents[valid]
        # NaN sorts last; a NaN anywhere but at the end of its group fails "<=" and is sorted too
        unsorted = (parents[1:] == parents[:-1]) & ~(data[:-1] <= data[1:])
        if unsorted.any():
            # parents are ascending: sort the values within each run of equal parents
            order = pc.sort_indices(pa.table({"p": parents, "v": data}),
                                    sort_keys=[("p", "ascending"), ("v", "ascending")])
            data = data[np.asarray(order.to_numpy(), dtype=np.int64)]
        counts = np.bincount(parents, minlength=ng)
        starts = np.zeros(ng, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        empty = counts == 0
        position = agg.param("q") * (np.maximum(counts, 1) - 1)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, np.maximum(counts, 1) - 1)
        t = position - below
        if len(data) == 0:
            return pa.nulls(ng, type=pa.float64())
        lo = data[np.where(empty, 0, starts + below)]
        hi = data[np.where(empty, 0, starts + above)]
        diff = hi - lo
        # numpy's linear interpolation, including its choice of end point for t >= 0.5
        result = np.where(t >= 0.5, hi - diff * (1.0 - t), lo + diff * t)
        return _masked(result, empty, pa.float64())

    def output_type(self, agg, state_types):
        return pa.float64()


_IMPL: dict[str, _Kind] = {
    "count": _Count(), "sum": _Reduce("sum"), "min": _Reduce("min"), "max": _Reduce("max"),
    "mean": _Mean(), "var": _Var(), "std": _Var(), "count_distinct": _CountDistinct(),
    "approx_distinct": _ApproxDistinct(), "top_k": _TopK(), "first": _FirstLast("first"),
    "last": _FirstLast("last"), "median": _Quantile(), "quantile": _Quantile(),
}


# ---------------------------------------------------------------------------------------------
# AggregationSet
# ---------------------------------------------------------------------------------------------

_CONSTRUCTORS = ("engine.agg.count(), engine.agg.sum('col'), engine.agg.mean('col'), "
                 "engine.agg.min('col'), engine.agg.max('col'), engine.agg.var('col'), "
                 "engine.agg.std('col'), engine.agg.count_distinct('col'), "
                 "engine.agg.approx_distinct('col'), engine.agg.top_k(k, 'col'), "
                 "engine.agg.first('col'), engine.agg.last('col'), engine.agg.median('col') "
                 "or engine.agg.quantile('col', q)")


@lru_cache(maxsize=None)
def _groupable(t: pa.DataType) -> bool:
    if _is_nested(t):
        return False
    try:
        value_type = t.value_type if pa.types.is_dictionary(t) else t
        pc.dictionary_encode(pa.array([], type=value_type))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


@lru_cache(maxsize=None)
def _hashable(t: pa.DataType) -> bool:
    try:
        hash_array(pa.nulls(1, type=t))
    except (SchemaError, pa.ArrowException):
        return False
    return True


def _conform(arr: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    return arr if arr.type == type_ else arr.cast(type_)


class AggregationSet:
    """Group ``keys`` and compute the named aggregations ``aggs`` (output name → Aggregation).

    >>> s = AggregationSet(["k"], {"n": count(), "total": sum("v")})
    >>> s.aggregate(pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})).to_pydict()
    {'k': ['a', 'b'], 'n': [2, 1], 'total': [4, 2]}

    Keys may be empty: then all rows form one group (an empty input still gives no rows).
    See the module docstring for the partial / merge / finalize contract.
    """

    def __init__(self, keys: Sequence[str], aggs: Mapping[str, Aggregation]) -> None:
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, Sequence) or not _bi.all(isinstance(k, str) and k for k in keys):
            raise JobDefinitionError(f"group keys must be a list of column names, got {keys!r}")
        if len(set(keys)) != len(keys):
            raise JobDefinitionError(f"group keys name a column twice: {list(keys)!r}")
        if not isinstance(aggs, Mapping):
            raise JobDefinitionError(
                f"aggregations must be a mapping of output name to aggregation, got {aggs!r}")
        if not aggs:
            raise JobDefinitionError(
                "no aggregations given; name at least one output, "
                "e.g. {'n': engine.agg.count()}")
        for name, value in aggs.items():
            if not isinstance(name, str) or not name:
                raise JobDefinitionError(f"output names must be non-empty strings, got {name!r}")
            if not isinstance(value, Aggregation):
                hint = f" (write engine.agg.{value}(...) rather than {value!r})" \
                    if isinstance(value, str) and value in _KINDS else ""
                raise JobDefinitionError(
                    f"unknown aggregation {value!r} for output {name!r}{hint}: use {_CONSTRUCTORS}")
            if name in keys:
                raise JobDefinitionError(
                    f"output {name!r} has the name of a group key; rename the output")
        self.keys: tuple[str, ...] = tuple(keys)
        self.aggs: dict[str, Aggregation] = dict(aggs)
        self._parts = {name: [f"{name}__{part}" for part in _IMPL[a.kind].parts]
                       for name, a in self.aggs.items()}
        state_names = [c for cols in self._parts.values() for c in cols]
        clash = sorted((set(state_names) & set(self.keys)) | {
            c for c in state_names if state_names.count(c) > 1})
        if clash:
            raise JobDefinitionError(
                f"state column {clash[0]!r} would clash with a key or another output; "
                "rename the output")
        self._state_names = state_names

    # -- description -------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"AggregationSet(keys={list(self.keys)!r}, aggs={self.aggs!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AggregationSet) and self.token() == other.token()

    def __hash__(self) -> int:
        return hash(self.token())

    def token(self) -> str:
        """A deterministic string identifying keys and aggregations, for fingerprinting."""
        body = ", ".join(f"{name!r}: {a.token()}" for name, a in self.aggs.items())
        return f"aggset/1:keys={list(self.keys)!r}:{{{body}}}"

    @property
    def output_names(self) -> list[str]:
        return list(self.aggs)

    @property
    def input_columns(self) -> list[str]:
        """Key columns, then every other input column an aggregation reads (no duplicates)."""
        seen = list(self.keys)
        for a in self.aggs.values():
            for c in a.input_columns:
                if c not in seen:
                    seen.append(c)
        return seen

    @property
    def state_columns(self) -> list[str]:
        """Names of the state columns after the keys, in order."""
        return list(self._state_names)

    # -- schemas -----------------------------------------------------------------------------

    def validate(self, schema: pa.Schema) -> None:
        """Check that ``schema`` has the key columns and columns of fitting types for every
        aggregation; raise :class:`SchemaError` naming the offending column otherwise."""
        names = schema.names
        have = ", ".join(names) if names else "(none)"
        for key in self.keys:
            if key not in names:
                raise SchemaError(
                    f"group key column {key!r} is not in the input; the input has columns: {have}")
            t = schema.field(key).type
            if not _groupable(t):
                raise SchemaError(
                    f"group key column {key!r} has type {t}, which cannot be grouped on; "
                    "group on columns of scalar types (numbers, strings, dates, ...)")
        for out, a in self.aggs.items():
            if a.column is None:
                continue
            if a.column not in names:
                raise SchemaError(
                    f"output {out!r} = {a!r} reads column {a.column!r}, which is not in the "
                    f"input; the input has columns: {have}")
            t = _value_type(schema.field(a.column).type)
            if a.kind in _NUMERIC_KINDS and not _is_numeric(t):
                raise SchemaError(
                    f"output {out!r} = {a!r} needs a numeric column, but column {a.column!r} "
                    f"has type {schema.field(a.column).type}; cast it to a number first")
            if a.kind in _ORDERED_KINDS and _is_nested(t):
                raise SchemaError(
                    f"output {out!r} = {a!r} needs orderable values, but column {a.column!r} "
                    f"has type {t}")
            hashable = _groupable(t) or (a.kind == "approx_distinct" and _hashable(t))
            if a.kind in ("count_distinct", "approx_distinct") and not hashable:
                raise SchemaError(
                    f"output {out!r} = {a!r} cannot compare values of column {a.column!r} "
                    f"of type {t}")

    def state_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """Schema of the state tables ``partial`` produces from input of ``input_schema``."""
        self.validate(input_schema)
        fields = [input_schema.field(k) for k in self.keys]
        for out, a in self.aggs.items():
            vtype = _value_type(input_schema.field(a.column).type) if a.column else None
            for name, t in zip(self._parts[out], _IMPL[a.kind].state_types(a, vtype)):
                fields.append(pa.field(name, t))
        return pa.schema(fields)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """Schema of the table ``finalize`` produces for input of ``input_schema``."""
        return self._final_schema(self.state_schema(input_schema))

    def _final_schema(self, state_schema: pa.Schema) -> pa.Schema:
        fields = [state_schema.field(k) for k in self.keys]
        for out, a in self.aggs.items():
            types = [state_schema.field(c).type for c in self._parts[out]]
            fields.append(pa.field(out, _IMPL[a.kind].output_type(a, types)))
        return pa.schema(fields)

    def _check_state(self, state: pa.Table) -> None:
        expected = list(self.keys) + self._state_names
        if state.schema.names != expected:
            raise SchemaError(
                f"not a state table of {self!r}: expected columns {', '.join(expected)}; "
                f"got {', '.join(state.schema.names) or '(none)'}")

    # -- the three steps ---------------------------------------------------------------------

    def _direct(self, schema: pa.Schema, step: str) -> bool:
        """Whether ``step`` ("partial" or "merge") can group on the key columns of a table of
        ``schema`` directly (see :class:`_KeyPlan`) rather than through dense group ids."""
        if not self.keys:
            return False
        # one key is grouped on as it is; several keys through their dictionary codes
        t = schema.field(self.keys[0]).type
        if len(self.keys) == 1 and not (_direct_key(t) or (pa.types.is_dictionary(t) and _direct_key(t.value_type))):
            return False
        flag = "direct_partial" if step == "partial" else "direct_merge"
        return _bi.all(getattr(_IMPL[a.kind], flag) for a in self.aggs.values())

    def partial(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        """Raw rows → state table: one row per distinct key tuple (in order of first
        appearance), key columns first, then the state columns of every output."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        schema = self.state_schema(table.schema)
        plan = self._plan(table, "partial")
        finishers = []
        for a in self.aggs.values():
            values = _values(table, a.column) if a.column else None
            finishers.append(_IMPL[a.kind].partial(a, values, plan))
        plan.run()
        return self._assemble(table, plan, finishers, schema)

    def row_states(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        """Raw rows → a state table with one row per input row, in input order, without grouping:
        each row's state is the one ``partial`` gives a group holding that row alone (``count``: 1,
        ``sum``: the value, ``mean``: the value and 1, ``count_distinct``: a list of the value, ...).
        Cheaper than ``partial`` where keys are nearly unique; ``merge`` takes both alike."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        schema = self.state_schema(table.schema)
        n = table.num_rows
        columns: list[Any] = [table.column(k) for k in self.keys]
        for a in self.aggs.values():
            values = _values(table, a.column) if a.column else None
            columns.extend(_IMPL[a.kind].rows(a, values, n))
        columns = [_conform(c, f.type) for c, f in zip(columns, schema)]
        return pa.Table.from_arrays(columns, schema=schema)

    def merge(self, state: pa.Table | Sequence[pa.Table]) -> pa.Table:
        """State rows (any number per key, e.g. several partials concatenated) → one state row
        per key, with the schema of the input.  Associative and commutative except for
        ``first``/``last``, which follow the row order of ``state``; ``merge(merge(s))`` equals
        ``merge(s)``.  A sequence of state tables is concatenated in order first."""
        if not isinstance(state, pa.Table):
            state = pa.concat_tables(list(state))
        self._check_state(state)
        plan = self._plan(state, "merge")
        finishers = []
        for out, a in self.aggs.items():
            cols = [state.column(c) for c in self._parts[out]]
            finishers.append(_IMPL[a.kind].merge(a, cols, plan))
        plan.run()
        return self._assemble(state, plan, finishers, state.schema)

    def finalize(self, state: pa.Table, *, merged: bool = False) -> pa.Table:
        """State → key columns followed by one column per output, in the order of ``aggs``.
        States with several rows per key are merged first; ``merged=True`` promises that
        ``state`` has one row per key already (as ``merge`` and ``partial`` return it) and
        skips that check."""
        self._check_state(state)
        if not merged and state.num_rows > 1 and self._distinct_keys(state) != state.num_rows:
            state = self.merge(state)
        schema = self._final_schema(state.schema)
        columns = [state.column(k) for k in self.keys]
        for out, a in self.aggs.items():
            cols = [state.column(c) for c in self._parts[out]]
            columns.append(_conform(_IMPL[a.kind].finalize(a, cols), schema.field(out).type))
        return pa.Table.from_arrays(columns, schema=schema)

    def merge_finalize(self, state: pa.Table | Sequence[pa.Table]) -> pa.Table:
        """``finalize(merge(state))``, grouping the keys only once."""
        return self.finalize(self.merge(state), merged=True)

    def aggregate(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        """``finalize(merge(partial(table)))``: the whole aggregation in one process."""
        # a partial state has one row per key already: merging it changes nothing
        return self.finalize(self.partial(table), merged=True)

    def _plan(self, table: pa.Table, step: str) -> _Plan:
        if table.num_rows and self._direct(table.schema, step):
            return _KeyPlan(table, self.keys)
        return _Plan(_group_ids(table, self.keys))

    def _distinct_keys(self, state: pa.Table) -> int:
        if not self.keys:
            return 1 if state.num_rows else 0
        if _bi.all(_direct_key(state.schema.field(k).type) for k in self.keys):
            return state.select(list(self.keys)).group_by(
                list(self.keys), use_threads=False).aggregate([]).num_rows
        return _group_ids(state, self.keys).ng

    def _assemble(self, source: pa.Table, plan: _Plan, finishers: list[_Finisher],
                  schema: pa.Schema) -> pa.Table:
        if isinstance(plan, _KeyPlan):
            columns: list[Any] = list(plan.keys)
        else:
            first = pa.array(plan.groups.first, type=pa.int64())
            columns = [source.column(k).take(first) for k in self.keys]
        for finish in finishers:
            columns.extend(finish())
        columns = [_conform(c, f.type) for c, f in zip(columns, schema)]
        return pa.Table.from_arrays(columns, schema=schema)
