"""Deterministic, vectorized 64-bit hashing of Arrow columns, stable across processes, runs and chunk layouts.

Hash partitioning (:mod:`engine.shuffle`) and HyperLogLog (:mod:`engine.agg`) both use it.

* Fixed-width values: splitmix64 of their bit pattern (all integer widths hash equal for equal
  values, ``-0.0`` like ``0.0``, every NaN alike).
* Strings and binaries: a polynomial hash over the data buffer computed with prefix sums and inverse
  powers, block by block, mixed with the length.
* Nulls: one constant. Dictionary arrays: the dictionary's hashes taken by index.

>>> import pyarrow as pa
>>> hash_columns(pa.table({"k": ["x", "y"], "n": [1, 2]}), ["k", "n"]).dtype
dtype('uint64')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import SchemaError


_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_S30, _S27, _S31 = _U64(30), _U64(27), _U64(31)
_BASE = 0xA0761D6478BD642F                # odd, so it is invertible modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_LEN_MUL = _U64(0xE7037ED1A0B428DB)
_COMBINE_MUL = _U64(0x100000001B3)
_BYTES_BLOCK = 1 << 16                     # bytes hashed per vectorized block


def _mix_scalar(x: int) -> int:
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


_NULL_HASH = _U64(_mix_scalar(0x6E756C6C2D6B6579))      # the hash of every null value
_STRUCT_SEED = _U64(_mix_scalar(0x7374727563742D31))
_BYTES_SEED = _U64(_mix_scalar(0x62797465732D3031))      # keeps b"" apart from the number 0


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 values (returns a new array)."""
    z = x + _GOLDEN
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return z


_powers_cache: tuple[np.ndarray, np.ndarray] = (np.ones(0, _U64), np.ones(0, _U64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``BASE**j`` and ``BASE**-j`` modulo 2**64 for ``j < n`` (cached, grown on demand)."""
    global _powers_cache
    fwd, inv = _powers_cache
    if len(fwd) < n:
        size = max(n, _BYTES_BLOCK)
        fwd = np.full(size, _BASE, dtype=_U64)
        fwd[0] = 1
        np.cumprod(fwd, out=fwd)
        inv = np.full(size, _BASE_INV, dtype=_U64)
        inv[0] = 1
        np.cumprod(inv, out=inv)
        _powers_cache = (fwd, inv)
    return fwd, inv


def _hash_long(data: np.ndarray) -> int:
    """The polynomial ``sum_j byte_j * BASE**j`` (mod 2**64) of one long byte string, summed
    block by block so memory stays bounded."""
    fwd, _ = _powers(_BYTES_BLOCK)
    total = 0
    for start in range(0, len(data), _BYTES_BLOCK):
        piece = data[start:start + _BYTES_BLOCK].astype(_U64)
        piece *= fwd[:len(piece)]
        total += int(piece.sum(dtype=_U64)) * pow(_BASE, start, 1 << 64)
    return total & ((1 << 64) - 1)


def _hash_bytes(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Hash the byte strings ``data[offsets[i]:offsets[i+1]]``.

    A polynomial hash ``sum_j byte_j * BASE**j`` (mod 2**64), computed for a whole block of
    strings with one prefix sum over position-weighted bytes; each string's slice of the prefix
    sum is re-based to its own start by multiplying with ``BASE**-start``.  The length is mixed in
    and the result goes through splitmix64.
    """
    n = len(offsets) - 1
    out = np.empty(n, dtype=_U64)
    row = 0
    while row < n:
        base = int(offsets[row])
        end_row = int(np.searchsorted(offsets, base + _BYTES_BLOCK, side="right")) - 1
        end_row = min(max(end_row, row + 1), n)
        stop = int(offsets[end_row])
        size = stop - base
        if size > _BYTES_BLOCK:             # one value longer than a block: hash it piecewise
            out[row] = _hash_long(data[base:stop])
            row = end_row
            continue
        fwd, inv = _powers(size + 1)
        weighted = data[base:stop].astype(_U64)
        weighted *= fwd[:size]
        prefix = np.empty(size + 1, dtype=_U64)
        prefix[0] = 0
        np.cumsum(weighted, out=prefix[1:])
        bounds = offsets[row:end_row + 1] - base
        at = prefix[bounds]
        block = out[row:end_row]
        np.subtract(at[1:], at[:-1], out=block)
        block *= inv[bounds[:-1]]
        row = end_row
    lengths = (offsets[1:] - offsets[:-1]).astype(_U64)
    lengths *= _LEN_MUL
    out += lengths
    out ^= _BYTES_SEED
    return _mix(out)


def _buffer_view(arr: pa.Array, dtype: Any, index: int = 1) -> np.ndarray:
    """The fixed-width values of ``arr`` as a numpy view (slicing respected, nulls unmasked)."""
    buf = arr.buffers()[index]
    if buf is None or len(arr) == 0:
        return np.zeros(len(arr), dtype=dtype)
    return np.frombuffer(buf, dtype=dtype)[arr.offset:arr.offset + len(arr)]


def _valid_mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """Boolean numpy mask of valid entries, or None when there are no nulls."""
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _hash_chunk(arr: pa.Array) -> np.ndarray:
    n = len(arr)
    t = arr.type
    if n == 0:
        return np.empty(0, dtype=_U64)
    if pa.types.is_null(t):
        return np.full(n, _NULL_HASH, dtype=_U64)
    if pa.types.is_dictionary(t):
        dict_hash = _hash_chunk(arr.dictionary)
        indices = arr.indices
        codes = _buffer_view(indices, indices.type.to_pandas_dtype()).astype(np.int64)
        valid = _valid_mask(indices)
        if valid is not None:
            codes = np.where(valid, codes, 0)
        if len(dict_hash) == 0:
            return np.full(n, _NULL_HASH, dtype=_U64)
        result = dict_hash[codes]
        if valid is not None:
            result[~valid] = _NULL_HASH
        return result
    if pa.types.is_boolean(t):
        return _hash_chunk(arr.cast(pa.int8()))
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        target = pa.large_string() if pa.types.is_string_view(t) else pa.large_binary()
        return _hash_chunk(arr.cast(target))

    if pa.types.is_struct(t):
        result = np.full(n, _STRUCT_SEED, dtype=_U64)
        for child in arr.flatten():
            result = _combine(result, _hash_chunk(child))
    elif (pa.types.is_string(t) or pa.types.is_binary(t)
          or pa.types.is_large_string(t) or pa.types.is_large_binary(t)):
        wide = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)
        offsets = offsets[arr.offset:arr.offset + n + 1].astype(np.int64)
        buf = arr.buffers()[2]
        data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)
        result = _hash_bytes(data, offsets)
    elif pa.types.is_floating(t):
        width = t.bit_width
        raw = _buffer_view(arr, {16: np.float16, 32: np.float32, 64: np.float64}[width])
        values = raw.astype(np.float64) + 0.0           # folds -0.0 into 0.0
        values[np.isnan(values)] = np.nan                # one NaN bit pattern
        result = _mix(values.view(_U64))
    elif pa.types.is_unsigned_integer(t):
        dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[t.bit_width]
        raw = _buffer_view(arr, dtype)
        result = _mix(raw.astype(_U64, copy=False))
    elif (pa.types.is_integer(t) or pa.types.is_temporal(t)) and t.bit_width in (8, 16, 32, 64) \
            and not pa.types.is_interval(t):
        raw = _buffer_view(arr, {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}[t.bit_width])
        result = _mix(raw.astype(np.int64, copy=False).view(_U64))
    elif (pa.types.is_fixed_size_binary(t) or pa.types.is_decimal(t)
          or pa.types.is_interval(t)):
        width = t.byte_width if not pa.types.is_interval(t) else t.bit_width // 8
        buf = arr.buffers()[1]
        data = np.frombuffer(buf, dtype=np.uint8)
        offsets = (np.arange(n + 1, dtype=np.int64) + arr.offset) * width
        result = _hash_bytes(data, offsets)
    else:
        raise SchemaError(
            f"cannot hash values of type {t}: hashing supports numbers, booleans, strings, "
            "binary, decimals, dates and times, dictionaries and structs of those")
    valid = _valid_mask(arr)
    if valid is not None:
        result[~valid] = _NULL_HASH
    return result


def _combine(acc: np.ndarray, h: np.ndarray) -> np.ndarray:
    acc = acc * _COMBINE_MUL
    acc ^= h
    return _mix(acc)


def hash_array(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Deterministic 64-bit hash of every value of ``arr``, as a numpy uint64 array.

    The hash depends only on the values: not on the process, the run, ``PYTHONHASHSEED``, the
    chunking or slicing of the array, or dictionary encoding.  Integers hash by value whatever
    their width (``int8(5)`` and ``uint64(5)`` agree), floats by their float64 value (``-0.0``
    like ``0.0``, every NaN alike), strings and binaries by their bytes, booleans as 0/1, dates
    and times by their integer storage; every null hashes to the same constant.  Structs combine
    the hashes of their fields.

    >>> h = hash_array(pa.array(["a", "b", None]))
    >>> bool((h == hash_array(pa.chunked_array([["a"], ["b", None]]))).all())
    True
    """
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 0:
            return np.empty(0, dtype=_U64)
        if arr.num_chunks == 1:
            return _hash_chunk(arr.chunk(0))
        return np.concatenate([_hash_chunk(c) for c in arr.chunks])
    if not isinstance(arr, pa.Array):
        arr = pa.array(arr)
    return _hash_chunk(arr)


def hash_columns(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Deterministic 64-bit hash per row of ``table`` over ``columns`` (order matters), as uint64.

    For one column this is ``hash_array(table[column])``; with several, the column hashes are
    combined in order.  Suitable for hash partitioning: ``hash_columns(t, ["k"]) % n``.

    >>> t = pa.table({"k": ["x", "y"], "n": [1, 2]})
    >>> hash_columns(t, ["k", "n"]).dtype
    dtype('uint64')
    """
    columns = list(columns)
    if not columns:
        return np.full(table.num_rows, _NULL_HASH, dtype=_U64)
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise SchemaError(
            f"cannot hash column {missing[0]!r}: it is not in the table; "
            f"the table has columns: {', '.join(table.schema.names)}")
    result = None
    for name in columns:
        try:
            h = hash_array(table.column(name))
        except SchemaError as exc:
            raise SchemaError(f"key column {name!r}: {exc}") from None
        result = h if result is None else _combine(result, h)
    return result




__all__ = ["hash_array", "hash_columns"]
