"""Arrow type rules shared by the input reader and the shuffle: plain types and safe promotions.

* :func:`plain_type` replaces view types (``string_view``, ``binary_view``, ``list_view``), which
  Polars, DataFusion and DuckDB write and many pyarrow kernels cannot ``take``, by plain ones; with
  ``decode_dictionaries`` it also replaces dictionaries by their value types (what the shuffle writes:
  an Arrow IPC file holds one dictionary per column, and map tasks emit a new one per batch).
* :func:`common_type` is the one promotion rule of input schema drift: the type two files' types
  of a column both convert to without changing a value, or None.

>>> import pyarrow as pa
>>> common_type(pa.int32(), pa.float64())
DataType(double)
>>> common_type(pa.int64(), pa.string()) is None
True
"""

from __future__ import annotations

import pyarrow as pa


def plain_type(t: pa.DataType, *, decode_dictionaries: bool = False) -> pa.DataType:
    """``t`` with Arrow view types replaced by their plain equivalents, at any depth (and, with
    ``decode_dictionaries``, dictionaries by their value types).

    ``string_view`` → ``string``, ``binary_view`` → ``binary``, ``list_view`` → ``list`` (and the
    large variants). Polars, DataFusion and DuckDB write view types; many pyarrow kernels (``take``,
    hence ``filter`` and ``sort``) have none for them.
    """
    def plain(x: pa.DataType) -> pa.DataType:
        return plain_type(x, decode_dictionaries=decode_dictionaries)

    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_list_view(t):
        return pa.list_(t.value_field.with_type(plain(t.value_type)))
    if pa.types.is_large_list(t) or pa.types.is_large_list_view(t):
        return pa.large_list(t.value_field.with_type(plain(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(plain(t.value_type)), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(plain(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(plain(t.key_type)), t.item_field.with_type(plain(t.item_type)),
                       t.keys_sorted)
    if pa.types.is_dictionary(t):
        if decode_dictionaries:
            return plain(t.value_type)
        return pa.dictionary(t.index_type, plain(t.value_type), t.ordered)
    return t


_MANTISSA = {16: 11, 32: 24, 64: 53}


def _int_bits(t: pa.DataType) -> int:
    """Value bits of an integer type (without the sign bit)."""
    return t.bit_width if pa.types.is_unsigned_integer(t) else t.bit_width - 1


def _common_int(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    ua, ub = pa.types.is_unsigned_integer(a), pa.types.is_unsigned_integer(b)
    if ua == ub:
        return a if a.bit_width >= b.bit_width else b
    need = max(_int_bits(a), _int_bits(b)) + 1      # a signed type holding both
    for width, typ in ((8, pa.int8()), (16, pa.int16()), (32, pa.int32()), (64, pa.int64())):
        if width >= need:
            return typ
    return None                                     # uint64 with a signed type: no integer holds both


def common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type both ``a`` and ``b`` convert to without changing a value, or None.

    The rules (types are first made plain, see :func:`plain_type`):

    * ``null`` → any type;
    * integer → the narrowest integer holding both (``uint64`` and a signed type have none: refused);
    * integer → floating point, float → wider float (an integer beyond the float's exact range, e.g.
      above 2**53 for ``double``, fails the read of that file instead of being rounded);
    * ``string`` ↔ ``large_string``, ``binary`` ↔ ``large_binary`` (to the large type);
    * lists, large lists and structs (same field names) whose children follow these rules;
    * a dictionary and its value type (or two different dictionaries) → the plain value type.

    Everything else is refused: a number and a string, a string and binary, timestamps of different
    units or time zones, decimals of different precision or scale, booleans and integers.
    """
    a, b = plain_type(a), plain_type(b)
    if a.equals(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if pa.types.is_dictionary(a) or pa.types.is_dictionary(b):
        va = a.value_type if pa.types.is_dictionary(a) else a
        vb = b.value_type if pa.types.is_dictionary(b) else b
        return common_type(va, vb)
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return _common_int(a, b)
    if pa.types.is_floating(a) and pa.types.is_floating(b):
        return a if a.bit_width >= b.bit_width else b
    if pa.types.is_integer(a) and pa.types.is_floating(b) or pa.types.is_floating(a) and pa.types.is_integer(b):
        i, f = (a, b) if pa.types.is_integer(a) else (b, a)
        return f if _int_bits(i) <= _MANTISSA[f.bit_width] else pa.float64()
    strings = {pa.string(), pa.large_string()}
    binaries = {pa.binary(), pa.large_binary()}
    for family, large in ((strings, pa.large_string()), (binaries, pa.large_binary())):
        if a in family and b in family:
            return large
    lists = (pa.types.is_list, pa.types.is_large_list)
    if any(f(a) for f in lists) and any(f(b) for f in lists):
        child = common_type(a.value_type, b.value_type)
        if child is None:
            return None
        field = a.value_field.with_type(child).with_nullable(a.value_field.nullable or b.value_field.nullable)
        return pa.large_list(field) if pa.types.is_large_list(a) or pa.types.is_large_list(b) else pa.list_(field)
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        if sorted(f.name for f in a) != sorted(f.name for f in b) or len({f.name for f in a}) != a.num_fields:
            return None
        fields = []
        for fa in a:
            fb = b.field(fa.name)
            child = common_type(fa.type, fb.type)
            if child is None:
                return None
            fields.append(fa.with_type(child).with_nullable(fa.nullable or fb.nullable))
        return pa.struct(fields)
    return None


__all__ = ["plain_type", "common_type"]
