"""Deterministic, vectorized 64-bit hashing of Arrow columns (stable across processes and runs).

Used for hash partitioning (:mod:`engine.shuffle`) and for HyperLogLog (:mod:`engine.agg`).
"""

from __future__ import annotations

from .agg import hash_array, hash_columns  # noqa: F401  (implementation lives beside HyperLogLog for now)

__all__ = ["hash_array", "hash_columns"]
