"""Compare two committed outputs before publishing one of them, and gate on how much they differ.

:func:`compare` reads both outputs through their manifests (every byte checked against its CRC32C by
:func:`engine.commit.read`, so a damaged output raises IntegrityError and is never diffed) and returns
an :class:`OutputDiff`:

1. **Partitions.** A partitioned output (manifest ``partition_by``) is compared partition by
   partition, named by its ``col=value/...`` directory; ``partition_columns=`` groups the rows by other
   columns instead (``[]`` compares whole outputs), and an unpartitioned output is one partition named
   ``""``. ``partitions=`` restricts everything below to some partitions (e.g. the ones a staged run
   would replace; ``"date=2026-11-30"`` picks every partition under that directory). When both
   outputs are partitioned by the compared columns, only the files of those partitions are read
   (:func:`engine.commit.read` ``partitions=``), so a few staged partitions compare with a large
   output at the cost of those partitions. Each partition gets its row count in A and in B and the
   relative change.
2. **Schema.** Columns added (only in B), removed (only in A), and whose type changed.
3. **Aggregates**, per column and side: numeric columns sum, min, max, mean and null count (and NaN
   count for floats); other columns null count, distinct count and, where the type is orderable,
   min and max.
4. **Keys** (``key=``): distinct keys only in A, only in B, in both; keys that occur more than once
   on a side are counted and shown.
5. **Rows by key**, when ``key`` is given and neither side has more than ``max_rows`` rows: rows
   added (in B only), removed (in A only) and changed (the changed columns named per row). Keys are
   matched through dictionary codes of both sides' key values together (a null key matches a null
   key, NaN matches NaN, -0.0 matches 0.0), values are compared column by column with Arrow kernels
   (exactly: no tolerance for floats; NaN equals NaN and null equals null). Keys duplicated on either
   side are left out of the row-level diff (they are counted as ambiguous; step 4 names them).

The change gate: :meth:`OutputDiff.violations` lists every partition whose row count moved by more
than a fraction (a partition that appears or disappears is a 100% change; 0 rows to 0 rows is none).

>>> d = compare("out/v1", "out/v2", key=["region", "customer"])     # doctest: +SKIP
>>> print(d)                                                        # doctest: +SKIP
>>> d.violations("5%")                                              # doctest: +SKIP

Both outputs (or the partitions compared) are held in memory while they are compared. This module never imports dask.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import html
import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrowtypes import common_type, plain_type
from .commit import MANIFEST, Manifest, load_manifest, partition_of, read_manifest
from .datasets import filesystem
from .errors import DiffError, IntegrityError, ManifestError
from .hive import DEFAULT_PARTITION

UNPARTITIONED = ""                          # the name of the one partition of an output compared whole
EXAMPLES = 20                               # rows and keys shown per list in reports and in to_dict()
_TEXT_EXAMPLES = 10


# ---------------------------------------------------------------------------------------------
# Small parsers


_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(%?)\s*$")


def parse_change(text: str | float) -> float:
    """A row-count change threshold as a fraction: ``"5%"`` → 0.05, ``"0.05"`` → 0.05.

    The result is the double nearest to the decimal written, so a change of exactly the threshold
    (105 rows against 100 for ``"5%"``) is not above it. Negative, infinite or non-numeric values
    raise DiffError.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        if not math.isfinite(value) or value < 0:
            raise DiffError(f"a change threshold must be a finite fraction >= 0 (0.05 or '5%'), got {text!r}")
        return value
    m = _NUMBER.match(str(text))
    if m is None:
        raise DiffError(f"a change threshold is a fraction like 0.05 or a percentage like 5%, got {text!r}")
    value = Fraction(m.group(1))
    return float(value / 100 if m.group(2) else value)


_NEXT_PARTITION = re.compile(r",(?=[^/,=]+=)")


def split_partitions(values: str | Sequence[str]) -> list[str]:
    """Partition names from comma-separated text (one value or several, e.g. repeated CLI options).

    A comma separates two names only where a ``col=`` follows it: in a partition directory name a
    value's ``=`` and ``/`` are escaped, so ``region=a,b`` stays one name and
    ``date=2026-11-30,date=2026-12-01`` is two.
    """
    values = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for v in values:
        names += [p.strip().strip("/") for p in _NEXT_PARTITION.split(v) if p.strip()]
    return names


def _names(value: str | Sequence[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise DiffError(f"{what} must be column names, got {value!r}")
    if len(set(names)) != len(names):
        raise DiffError(f"{what} names a column twice: {list(names)}")
    return names


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Side:
    """One of the compared outputs: where it is, which run committed it, how it is laid out."""

    path: str
    run_id: str | None
    generation: int
    job: str | None
    committed_at: str | None
    total_rows: int                 # rows of the whole output
    rows: int                       # rows compared (those of the chosen partitions)
    partition_by: tuple[str, ...]
    schema: pa.Schema

    def describe(self) -> str:
        job = f"job {self.job!r}, " if self.job else ""
        run = f"run {self.run_id}, " if self.run_id else ""
        layout = f", partitioned by {', '.join(self.partition_by)}" if self.partition_by else ""
        compared = "" if self.rows == self.total_rows else f" ({self.rows:,} compared)"
        return (f"{self.path} ({job}{run}generation {self.generation}{layout}; {self.total_rows:,} rows"
                f"{compared})")

    def to_dict(self) -> dict:
        return {"path": self.path, "run_id": self.run_id, "generation": self.generation, "job": self.job,
                "committed_at": self.committed_at, "total_rows": self.total_rows, "rows": self.rows,
                "partition_by": list(self.partition_by),
                "schema": {f.name: str(f.type) for f in self.schema}}


@dataclass(frozen=True)
class PartitionDiff:
    """Row counts of one partition in A and B; None where the partition does not exist."""

    name: str
    values: dict[str, Any]
    rows_a: int | None
    rows_b: int | None

    @property
    def change(self) -> float:
        """The signed relative change of the row count, ``(B - A) / A``.

        A partition only in B (or going from 0 rows to some) is +1.0, one only in A -1.0 (a 100%
        change either way); 0 rows to 0 rows is 0.0.
        """
        if self.rows_a is None:
            return 1.0
        if self.rows_b is None:
            return -1.0
        if self.rows_a == 0:
            return 0.0 if self.rows_b == 0 else 1.0
        return (self.rows_b - self.rows_a) / self.rows_a      # int / int: correctly rounded

    @property
    def status(self) -> str:
        if self.rows_a is None:
            return "only in B"
        if self.rows_b is None:
            return "only in A"
        return "same count" if self.rows_a == self.rows_b else "changed"

    def where(self) -> str:
        return f"partition {self.name}" if self.name != UNPARTITIONED else "the output"

    def to_dict(self) -> dict:
        return {"name": self.name, "values": {k: _jsonable(v) for k, v in self.values.items()},
                "rows_a": self.rows_a, "rows_b": self.rows_b, "change": self.change, "status": self.status}


@dataclass(frozen=True)
class SchemaDiff:
    """Columns only in B (added), only in A (removed), and in both with another type."""

    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    changed: tuple[tuple[str, str, str], ...] = ()
    partition_by: tuple[tuple[str, ...], tuple[str, ...]] | None = None   # (A's, B's) when they differ

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.partition_by)

    def lines(self) -> list[str]:
        out = [f"column {n!r} added ({t})" for n, t in self.added]
        out += [f"column {n!r} removed ({t})" for n, t in self.removed]
        out += [f"column {n!r} type {a} -> {b}" for n, a, b in self.changed]
        if self.partition_by:
            a, b = self.partition_by
            out.append(f"partitioned by [{', '.join(a)}] in A, by [{', '.join(b)}] in B")
        return out

    def to_dict(self) -> dict:
        return {"added": [{"column": n, "type": t} for n, t in self.added],
                "removed": [{"column": n, "type": t} for n, t in self.removed],
                "changed": [{"column": n, "a": a, "b": b} for n, a, b in self.changed],
                "partition_by": None if self.partition_by is None else
                {"a": list(self.partition_by[0]), "b": list(self.partition_by[1])}}


@dataclass(frozen=True)
class KeyCoverage:
    """Distinct keys only in A, only in B and in both; keys occurring more than once on a side.

    The tables hold examples (at most :data:`EXAMPLES` keys each, in key order); ``duplicates_a`` and
    ``duplicates_b`` have a ``rows`` column with the number of rows of each duplicated key.
    """

    key: tuple[str, ...]
    only_in_a: int
    only_in_b: int
    in_both: int
    duplicated_a: int               # distinct keys with more than one row in A
    duplicated_b: int
    duplicate_rows_a: int           # rows of those keys
    duplicate_rows_b: int
    examples_only_in_a: pa.Table
    examples_only_in_b: pa.Table
    duplicates_a: pa.Table
    duplicates_b: pa.Table

    def to_dict(self) -> dict:
        return {"key": list(self.key), "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
                "in_both": self.in_both, "duplicated_a": self.duplicated_a, "duplicated_b": self.duplicated_b,
                "duplicate_rows_a": self.duplicate_rows_a, "duplicate_rows_b": self.duplicate_rows_b,
                "examples_only_in_a": _rows(self.examples_only_in_a),
                "examples_only_in_b": _rows(self.examples_only_in_b),
                "duplicates_a": _rows(self.duplicates_a), "duplicates_b": _rows(self.duplicates_b)}


@dataclass(frozen=True)
class RowDiff:
    """The exact row-level difference by key.

    ``added``: B's rows whose key is not in A; ``removed``: A's rows whose key is not in B; both with
    all their columns. ``changed``: one row per key in both whose compared columns differ: the key
    columns, ``changed`` (the names of the columns that differ in that row), and ``a.<col>`` /
    ``b.<col>`` for every column that differs in some row. All three are sorted by key.
    ``compared``: the non-key columns present in both (values compared after converting to a common
    type where the types differ); ``not_compared``: columns in both whose types have no common type.
    ``ambiguous``: keys left out because they occur more than once in A or in B.
    """

    key: tuple[str, ...]
    added: pa.Table
    removed: pa.Table
    changed: pa.Table
    changed_by_column: dict[str, int]
    unchanged: int
    ambiguous: int
    compared: tuple[str, ...]
    not_compared: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"key": list(self.key), "added": self.added.num_rows, "removed": self.removed.num_rows,
                "changed": self.changed.num_rows, "unchanged": self.unchanged, "ambiguous": self.ambiguous,
                "changed_by_column": dict(self.changed_by_column), "compared": list(self.compared),
                "not_compared": list(self.not_compared),
                "examples": {"added": _rows(self.added), "removed": _rows(self.removed),
                             "changed": _rows(self.changed)}}


@dataclass
class OutputDiff:
    """What differs between the committed outputs A and B (see the module docstring).

    ``partitions`` is sorted by name; ``columns`` maps each column to ``{"a": stats, "b": stats}``
    (None on the side that lacks it); ``keys`` and ``rows`` are None without ``key``, and ``rows``
    also when a side has more than ``max_rows`` rows (``row_diff_skipped`` says why).
    """

    a: Side
    b: Side
    partition_columns: tuple[str, ...]
    partitions: list[PartitionDiff]
    schema: SchemaDiff
    columns: dict[str, dict[str, dict | None]]
    keys: KeyCoverage | None = None
    rows: RowDiff | None = None
    row_diff_skipped: str | None = None
    selected: tuple[str, ...] | None = None          # the partitions= asked for, if any
    _partition_index: dict[str, PartitionDiff] = field(default_factory=dict, repr=False)

    @property
    def only_in_a(self) -> list[str]:
        return [p.name for p in self.partitions if p.rows_b is None]

    @property
    def only_in_b(self) -> list[str]:
        return [p.name for p in self.partitions if p.rows_a is None]

    def partition(self, name: str) -> PartitionDiff:
        if not self._partition_index:
            self._partition_index = {p.name: p for p in self.partitions}
        return self._partition_index[name]

    # -- the gate

    def violations(self, max_change: float | str) -> list[str]:
        """One sentence per partition whose row count moved by more than ``max_change``.

        ``max_change`` is a fraction (0.05) or text (``"5%"``, ``"0.05"``, see :func:`parse_change`).
        A partition that appears or disappears is a 100% change; 0 rows to 0 rows is no change.
        """
        limit = parse_change(max_change)
        out = []
        for p in self.partitions:
            if abs(p.change) <= limit:
                continue
            allowed = f"more than the allowed {percent(limit)}"
            if p.rows_a is None:
                out.append(f"{p.where()} is only in B ({_n(p.rows_b, 'row')}, none in A): it appears, a 100% "
                           f"change, {allowed}")
            elif p.rows_b is None:
                out.append(f"{p.where()} is only in A ({_n(p.rows_a, 'row')}, none in B): it disappears, a 100% "
                           f"change, {allowed}")
            else:
                out.append(f"{p.where()}: {_n(p.rows_a, 'row')} in A, {p.rows_b:,} in B, a change of "
                           f"{percent(p.change, signed=True)}, {allowed}")
        return out

    # -- presentation

    def to_dict(self) -> dict:
        """The whole comparison as JSON-able values (examples limited to :data:`EXAMPLES` rows)."""
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "partition_columns": list(self.partition_columns),
                "selected_partitions": None if self.selected is None else list(self.selected),
                "partitions": [p.to_dict() for p in self.partitions], "only_in_a": self.only_in_a,
                "only_in_b": self.only_in_b, "schema": self.schema.to_dict(),
                "columns": {c: {s: None if v is None else {k: _jsonable(x) for k, x in v.items()}
                                for s, v in sides.items()} for c, sides in self.columns.items()},
                "keys": None if self.keys is None else self.keys.to_dict(),
                "rows": None if self.rows is None else self.rows.to_dict(),
                "row_diff_skipped": self.row_diff_skipped}

    def __str__(self) -> str:
        lines = [f"A: {self.a.describe()}", f"B: {self.b.describe()}"]
        lines += self._partition_lines()
        lines += ["schema: same columns and types"] if not self.schema else \
            ["schema:"] + [f"  {x}" for x in self.schema.lines()]
        lines += self._column_lines()
        lines += self._key_lines()
        lines += self._row_lines()
        return "\n".join(lines)

    def _partition_lines(self) -> list[str]:
        both = sum(1 for p in self.partitions if p.rows_a is not None and p.rows_b is not None)
        if not self.partition_columns:
            p = self.partitions[0]
            return [f"rows: {p.rows_a or 0:,} in A, {p.rows_b or 0:,} in B ({_change_text(p)})"]
        by = ", ".join(self.partition_columns)
        asked = f" (the {len(self.selected)} asked for)" if self.selected is not None else ""
        lines = [f"partitions by {by}{asked}: {both} in both, {len(self.only_in_a)} only in A, "
                 f"{len(self.only_in_b)} only in B"]
        shown = [p for p in self.partitions if p.status != "same count"]
        same = len(self.partitions) - len(shown)
        if len(self.partitions) <= 40:
            shown = self.partitions
        width = max([len(p.name) for p in shown] + [9])
        if shown:
            lines.append(f"  {'partition':<{width}}  {'rows A':>12}  {'rows B':>12}  change")
        for p in shown[:200]:
            a = "-" if p.rows_a is None else f"{p.rows_a:,}"
            b = "-" if p.rows_b is None else f"{p.rows_b:,}"
            lines.append(f"  {p.name:<{width}}  {a:>12}  {b:>12}  {_change_text(p)}")
        if len(shown) > 200:
            lines.append(f"  ... {len(shown) - 200} more changed partitions (to_dict() lists all)")
        if shown is not self.partitions and same:
            lines.append(f"  ({same} more partitions with the same row count in A and B)")
        return lines

    def _column_lines(self) -> list[str]:
        lines = ["columns (A | B; * where they differ):"]
        for col, sides in self.columns.items():
            a, b = sides["a"], sides["b"]
            names = [k for k in (a or b or {}) if k != "type"]
            for s in (b or {}):
                if s not in names and s != "type":
                    names.append(s)
            ta = a["type"] if a else "-"
            tb = b["type"] if b else "-"
            kind = ta if ta == tb else f"{ta} | {tb}"
            parts = []
            for name in names:
                va = _fmt(a.get(name)) if a else "-"
                vb = _fmt(b.get(name)) if b else "-"
                mark = "" if va == vb else " *"
                parts.append(f"{name} {va}" if va == vb else f"{name} {va} | {vb}{mark}")
            lines.append(f"  {col} ({kind}): " + "; ".join(parts))
        return lines

    def _key_lines(self) -> list[str]:
        k = self.keys
        if k is None:
            return []
        key = ", ".join(k.key)
        lines = [f"keys ({key}): {k.in_both:,} in both, {k.only_in_a:,} only in A, {k.only_in_b:,} only in B"]
        for side, n, rows, t in (("A", k.duplicated_a, k.duplicate_rows_a, k.duplicates_a),
                                 ("B", k.duplicated_b, k.duplicate_rows_b, k.duplicates_b)):
            if n:
                examples = ", ".join(f"{_key_text(r, k.key)} x{r['rows']}" for r in t.slice(0, 5).to_pylist())
                lines.append(f"  DUPLICATE KEYS in {side}: {_n(n, 'key')} with more than one row ({rows:,} rows), "
                             f"e.g. {examples}")
        return lines

    def _row_lines(self) -> list[str]:
        if self.rows is None:
            return [f"rows by key: not compared: {self.row_diff_skipped}"] if self.row_diff_skipped else []
        r = self.rows
        by_col = ", ".join(f"{c} {n:,}" for c, n in r.changed_by_column.items() if n)
        lines = [f"rows by key: {r.added.num_rows:,} added, {r.removed.num_rows:,} removed, "
                 f"{r.changed.num_rows:,} changed" + (f" ({by_col})" if by_col else "")
                 + f", {r.unchanged:,} unchanged"
                 + (f"; {_n(r.ambiguous, 'duplicated key')} left out" if r.ambiguous else "")]
        if r.not_compared:
            lines.append(f"  not compared (types without a common type): {', '.join(r.not_compared)}")
        for what, t in (("added", r.added), ("removed", r.removed)):
            if t.num_rows:
                lines.append(f"  {what}" + (f" (first {_TEXT_EXAMPLES})" if t.num_rows > _TEXT_EXAMPLES else "")
                             + ":")
                lines += [f"    {_row_text(row)}" for row in t.slice(0, _TEXT_EXAMPLES).to_pylist()]
        if r.changed.num_rows:
            lines.append("  changed" + (f" (first {_TEXT_EXAMPLES})" if r.changed.num_rows > _TEXT_EXAMPLES else "")
                         + ":")
            for row in r.changed.slice(0, _TEXT_EXAMPLES).to_pylist():
                what = "; ".join(f"{c} {_fmt(row['a.' + c])} -> {_fmt(row['b.' + c])}" for c in row["changed"])
                lines.append(f"    {_key_text(row, r.key)}: {what}")
        return lines

    def __repr__(self) -> str:
        changed = sum(1 for p in self.partitions if p.status != "same count")
        return (f"<OutputDiff {self.a.path} vs {self.b.path}: {len(self.partitions)} partition(s), {changed} with "
                f"another row count; print() it for the report>")

    def _repr_html_(self) -> str:
        e = html.escape
        out = ["<div class='engine-diff'>", "<table>",
               f"<tr><th>A</th><td>{e(self.a.describe())}</td></tr>",
               f"<tr><th>B</th><td>{e(self.b.describe())}</td></tr></table>"]
        out.append("<h4>Partitions</h4><table><tr><th>partition</th><th>rows A</th><th>rows B</th>"
                   "<th>change</th></tr>")
        for p in self.partitions[:500]:
            a = "–" if p.rows_a is None else f"{p.rows_a:,}"
            b = "–" if p.rows_b is None else f"{p.rows_b:,}"
            name = p.name if p.name != UNPARTITIONED else "(whole output)"
            out.append(f"<tr><td>{e(name)}</td><td style='text-align:right'>{a}</td>"
                       f"<td style='text-align:right'>{b}</td><td>{e(_change_text(p))}</td></tr>")
        out.append("</table>")
        if self.schema:
            out.append("<h4>Schema</h4><ul>" + "".join(f"<li>{e(x)}</li>" for x in self.schema.lines()) + "</ul>")
        out.append("<h4>Columns</h4><table><tr><th>column</th><th>statistic</th><th>A</th><th>B</th></tr>")
        for col, sides in self.columns.items():
            a, b = sides["a"] or {}, sides["b"] or {}
            for name in dict.fromkeys([*a, *b]):
                va, vb = _fmt(a.get(name, "-")), _fmt(b.get(name, "-"))
                style = "" if va == vb else " style='background:#fde2e1'"
                out.append(f"<tr{style}><td>{e(col)}</td><td>{e(name)}</td><td>{e(va)}</td><td>{e(vb)}</td></tr>")
        out.append("</table>")
        text = self._key_lines() + self._row_lines()
        if text:
            out.append("<h4>Keys and rows</h4><pre>" + e("\n".join(text)) + "</pre>")
        out.append("</div>")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def percent(x: float, signed: bool = False) -> str:
    """A fraction as a percentage with at most two decimals: 0.051 → ``"5.1%"``, 0.05 → ``"5%"``."""
    text = f"{x * 100:{'+' if signed else ''}.2f}".rstrip("0").rstrip(".")
    return text + "%"


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _change_text(p: PartitionDiff) -> str:
    if p.rows_a is None:
        return "only in B (appears)"
    if p.rows_b is None:
        return "only in A (disappears)"
    if p.rows_a == p.rows_b:
        return "no change"
    return percent(p.change, signed=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if v is None:
        return "null"
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    return repr(v) if isinstance(v, (str, bytes)) else str(v)


def _row_text(row: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in row.items())


def _key_text(row: dict, key: Sequence[str]) -> str:
    values = [_fmt(row[k]) for k in key]
    return values[0] if len(values) == 1 else "(" + ", ".join(values) + ")"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _rows(t: pa.Table, limit: int = EXAMPLES) -> list[dict]:
    return [_jsonable(r) for r in t.slice(0, limit).to_pylist()]


# ---------------------------------------------------------------------------------------------
# Reading one side


@dataclass
class _Loaded:
    label: str                      # "A" or "B"
    path: str
    manifest: Manifest
    table: pa.Table                 # as read, partition columns included
    plain: pa.Table                 # view types and dictionaries decoded (what the kernels below take)

    @property
    def partition_by(self) -> tuple[str, ...]:
        return tuple(self.manifest.doc.get("partition_by") or ())


def _manifest(label: str, path: str, storage_options: dict | None) -> tuple[Any, Manifest]:
    fs, root = filesystem(path, storage_options)
    manifest = load_manifest(fs, root)
    if manifest is None:
        raise ManifestError(f"{label} ({path}) holds no committed output (no {MANIFEST} manifest in {root}), so "
                            "there is nothing to compare: check the path, or run the job that writes it first",
                            [f"{posixpath.join(root, MANIFEST)}: missing"])
    return fs, manifest


def _load(label: str, path: str, fs: Any, manifest: Manifest, entries: list[dict] | None = None) -> _Loaded:
    """``manifest``'s output read (all of it, or only ``entries``), every byte checked against its CRC32C."""
    try:
        table = read_manifest(fs, manifest, entries=entries, path=path)
    except IntegrityError:
        again = load_manifest(fs, manifest.root)
        if again is not None and again.raw != manifest.raw:
            raise DiffError(f"{label} ({path}) changed while it was being read (generation {manifest.generation} "
                            f"became {again.generation}): another run committed it meanwhile; compare again") from None
        raise
    expected = manifest.rows if entries is None else sum(f["rows"] for f in entries)
    if table.num_rows != expected:
        raise DiffError(f"{label} ({path}) changed while it was being read ({table.num_rows:,} rows read, its "
                        f"manifest lists {expected:,}): another run committed it meanwhile; compare again")
    schema = pa.schema([f.with_type(plain_type(f.type, decode_dictionaries=True)) for f in table.schema])
    plain = table if schema.equals(table.schema) else table.cast(schema)
    return _Loaded(label, path, manifest, table, plain)


def _pushdown(names: tuple[str, ...], explicit: tuple[str, ...] | None, a: Manifest,
              b: Manifest) -> tuple[list[dict], list[dict]] | None:
    """The files of A and of B that hold the partitions ``names`` picks, when both outputs are
    partitioned by the compared columns and every name is a partition directory of one of them (or
    leading directories of one); None otherwise (then both are read whole and the names are matched
    against the partitions found in the rows)."""
    by_a, by_b = (tuple(m.doc.get("partition_by") or ()) for m in (a, b))
    cols = explicit if explicit is not None else (by_a or by_b)
    if not cols or by_a != cols or by_b != cols:
        return None
    dirs = [{partition_of(f["path"]) for f in m.files} | set(m.doc.get("partitions") or {}) for m in (a, b)]
    chosen: list[set[str]] = [set(), set()]
    for name in names:
        found = False
        for side, known in enumerate(dirs):
            hits = {d for d in known if d == name or d.startswith(name + "/")}
            chosen[side] |= hits
            found = found or bool(hits)
        if not found:
            return None
    return ([f for f in a.files if partition_of(f["path"]) in chosen[0]],
            [f for f in b.files if partition_of(f["path"]) in chosen[1]])


def _side(x: _Loaded, rows: int) -> Side:
    doc = x.manifest.doc
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else doc
    return Side(path=x.path, run_id=doc.get("run_id"), generation=x.manifest.generation,
                job=meta.get("job", doc.get("job")), committed_at=doc.get("committed_at"),
                total_rows=x.manifest.rows, rows=rows, partition_by=x.partition_by, schema=x.table.schema)


# ---------------------------------------------------------------------------------------------
# Partitions


def _typed(text: Any, type_: pa.DataType) -> Any:
    """A manifest's text partition value as the Python value of the column's type (the text if it
    does not convert)."""
    if text is None or pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return text
    try:
        return pa.array([text], pa.string()).cast(type_)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return text


def _directories(x: _Loaded, cols: tuple[str, ...]) -> dict[tuple, str]:
    """Partition values (typed, in ``cols`` order) → directory name, from x's manifest, when x is
    partitioned by exactly ``cols``."""
    if not cols or x.partition_by != cols:
        return {}
    doc = x.manifest.doc
    found: dict[str, dict] = {}
    for name, info in (doc.get("partitions") or {}).items():
        if isinstance(info, dict) and isinstance(info.get("values"), dict):
            found[name] = info["values"]
    for entry in x.manifest.files:
        if isinstance(entry.get("values"), dict):
            found.setdefault(posixpath.dirname(entry["path"]), entry["values"])
    types = {c: x.plain.schema.field(c).type for c in cols}
    return {tuple(_typed(values.get(c), types[c]) for c in cols): name for name, values in found.items()}


def _label(cols: tuple[str, ...], texts: Sequence[str | None]) -> str:
    return "/".join(f"{c}={DEFAULT_PARTITION if t is None else t}" for c, t in zip(cols, texts))


def _groups(x: _Loaded, cols: tuple[str, ...]) -> dict[tuple, tuple[str, int, bool]]:
    """Partition values → (name, rows, named by x's manifest) for the rows of ``x``."""
    if not cols:
        return {(): (UNPARTITIONED, x.plain.num_rows, False)}
    counts = x.plain.select(list(cols)).group_by(list(cols), use_threads=False).aggregate([([], "count_all")])
    texts = []
    for c in cols:
        try:
            texts.append(pc.cast(counts[c], pa.string()).to_pylist())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DiffError(f"column {c!r} of {x.label} ({counts[c].type}) cannot name partitions: {exc}; choose "
                            "scalar columns as partition columns") from None
    values = [counts[c].to_pylist() for c in cols]
    rows = counts["count_all"].to_pylist()
    directories = _directories(x, cols)
    out: dict[tuple, tuple[str, int, bool]] = {}
    for i, n in enumerate(rows):
        key = tuple(v[i] for v in values)
        name = directories.get(key)
        out[key] = (name if name is not None else _label(cols, [t[i] for t in texts]), n, name is not None)
    for key, name in directories.items():          # partitions of the manifest without rows
        out.setdefault(key, (name, 0, True))
    return out


def _choose_partition_columns(explicit: tuple[str, ...] | None, a: _Loaded, b: _Loaded) -> tuple[str, ...]:
    cols = explicit if explicit is not None else (a.partition_by or b.partition_by)
    for x in (a, b):
        missing = [c for c in cols if c not in x.plain.column_names]
        if missing:
            if explicit is not None:
                raise DiffError(f"partition column {missing[0]!r} is not a column of {x.label} ({x.path}); its "
                                f"columns are {', '.join(x.plain.column_names)}")
            other = a if x is b else b
            raise DiffError(f"{other.label} ({other.path}) is partitioned by {', '.join(cols)} but {x.label} "
                            f"({x.path}) has no column {missing[0]!r}: pass partition_columns=[] (--by '') to "
                            "compare them as whole outputs, or other columns present in both")
    return tuple(cols)


def _mask(table: pa.Table, cols: tuple[str, ...], keys: Sequence[tuple]) -> pa.ChunkedArray | pa.Array:
    """Rows of ``table`` whose values in ``cols`` are one of ``keys`` (null matches null)."""
    if len(cols) == 1:
        col = table[cols[0]]
        wanted = [k[0] for k in keys if k[0] is not None]
        mask = pc.fill_null(pc.is_in(col, value_set=pa.array(wanted, type=col.type)), False)
        if any(k[0] is None for k in keys):
            mask = pc.or_(mask, pc.is_null(col))
        return mask
    mask = pa.array(np.zeros(table.num_rows, dtype=bool))
    for k in keys:
        one = pa.array(np.ones(table.num_rows, dtype=bool))
        for c, v in zip(cols, k):
            col = table[c]
            hit = pc.is_null(col) if v is None else pc.fill_null(pc.equal(col, pa.scalar(v, type=col.type)), False)
            one = pc.and_(one, hit)
        mask = pc.or_(mask, one)
    return mask


# ---------------------------------------------------------------------------------------------
# Aggregates


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _stats(col: pa.ChunkedArray, shown_type: pa.DataType) -> dict[str, Any]:
    t = col.type
    stats: dict[str, Any] = {"type": str(shown_type), "rows": len(col), "nulls": col.null_count}
    if _numeric(t):
        mm = pc.min_max(col)
        stats.update(sum=pc.sum(col).as_py(), min=mm["min"].as_py(), max=mm["max"].as_py(),
                     mean=pc.mean(col).as_py())
        if pa.types.is_floating(t):
            stats["nans"] = int(pc.sum(pc.cast(pc.is_nan(col), pa.int64())).as_py() or 0)
        return stats
    try:
        stats["distinct"] = pc.count_distinct(col, mode="only_valid").as_py()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        stats["distinct"] = None
    try:
        mm = pc.min_max(col)
        stats.update(min=mm["min"].as_py(), max=mm["max"].as_py())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass                                       # not orderable (lists, structs, maps)
    return stats


def _column_stats(a: pa.Table, a_shown: pa.Schema, b: pa.Table, b_shown: pa.Schema) -> dict[str, dict]:
    names = list(dict.fromkeys([*a.column_names, *b.column_names]))
    return {n: {"a": _stats(a[n], a_shown.field(n).type) if n in a.column_names else None,
                "b": _stats(b[n], b_shown.field(n).type) if n in b.column_names else None} for n in names}


def _schema_diff(a: _Loaded, b: _Loaded) -> SchemaDiff:
    sa, sb = a.table.schema, b.table.schema
    added = tuple((f.name, str(f.type)) for f in sb if f.name not in sa.names)
    removed = tuple((f.name, str(f.type)) for f in sa if f.name not in sb.names)
    changed = tuple((f.name, str(f.type), str(sb.field(f.name).type)) for f in sa
                    if f.name in sb.names and not f.type.equals(sb.field(f.name).type))
    layout = None if a.partition_by == b.partition_by else (a.partition_by, b.partition_by)
    return SchemaDiff(added, removed, changed, layout)


# ---------------------------------------------------------------------------------------------
# Keys and rows


def _common(a: pa.ChunkedArray, b: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
    """``a`` and ``b`` converted to one type (None if they have none)."""
    if a.type.equals(b.type):
        return a, b
    t = common_type(a.type, b.type)
    if t is None:
        for target in (b.type, a.type):
            try:
                return a.cast(target), b.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                continue
        return None
    return a.cast(t), b.cast(t)


def _key_codes(a: pa.Table, b: pa.Table, key: tuple[str, ...]) -> tuple[dict, dict]:
    """Per key column, int32 codes of A's and B's values from one dictionary of both (null and NaN
    values get codes of their own, -0.0 the code of 0.0)."""
    codes_a, codes_b = {}, {}
    for i, k in enumerate(key):
        pair = _common(a[k], b[k])
        if pair is None:
            raise DiffError(f"key column {k!r} is {a[k].type} in A and {b[k].type} in B, types without a common "
                            "type: the keys cannot be matched")
        ca, cb = pair
        if pa.types.is_floating(ca.type):
            ca, cb = pc.add(ca, 0.0), pc.add(cb, 0.0)       # -0.0 + 0.0 is 0.0: one code for both zeros
        both = pa.chunked_array(list(ca.chunks) + list(cb.chunks), type=ca.type).combine_chunks()
        try:
            codes = pc.dictionary_encode(both, null_encoding="encode").indices
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            raise DiffError(f"key column {k!r} ({ca.type}) cannot serve as a key: choose scalar columns") from None
        codes_a[f"__k{i}"] = codes.slice(0, len(ca))
        codes_b[f"__k{i}"] = codes.slice(len(ca))
    return codes_a, codes_b


def _distinct_keys(codes: dict, rows: int, side: str) -> pa.Table:
    t = pa.table({**codes, "__row": pa.array(np.arange(rows, dtype=np.int64))})
    g = t.group_by(list(codes), use_threads=False).aggregate([("__row", "min"), ("__row", "count")])
    return g.rename_columns([f"{side}_row" if c == "__row_min" else f"{side}_n" if c == "__row_count" else c
                             for c in g.column_names])


def _sorted(t: pa.Table, key: Sequence[str]) -> pa.Table:
    try:
        return t.sort_by([(k, "ascending") for k in key])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return t


def _first_by_key(t: pa.Table, key: Sequence[str], limit: int = EXAMPLES) -> pa.Table:
    if t.num_rows <= limit:
        return _sorted(t, key)
    try:
        order = pc.sort_indices(t.select(list(key)), sort_keys=[(k, "ascending") for k in key])
        return t.take(order.slice(0, limit))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return t.slice(0, limit)


def _same(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Per row, True where ``a`` and ``b`` hold the same value: equal, both null, or both NaN."""
    try:
        eq = pc.fill_null(pc.equal(a, b), False)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # nested types have no comparison kernel: compare their Python values (the row-level diff
        # is bounded by max_rows)
        return pa.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist())], pa.bool_())
    same = pc.or_(eq, pc.and_(pc.is_null(a), pc.is_null(b)))
    if pa.types.is_floating(a.type):
        same = pc.or_(same, pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False))
    if isinstance(same, pa.ChunkedArray):
        same = same.combine_chunks()
    return same


def _keys_and_rows(a: pa.Table, b: pa.Table, key: tuple[str, ...],
                   row_diff: bool) -> tuple[KeyCoverage, RowDiff | None]:
    codes_a, codes_b = _key_codes(a, b, key)
    kc = list(codes_a)
    da = _distinct_keys(codes_a, a.num_rows, "a")
    db = _distinct_keys(codes_b, b.num_rows, "b")
    j = da.join(db, keys=kc, join_type="full outer", use_threads=False)
    in_a, in_b = pc.is_valid(j["a_n"]), pc.is_valid(j["b_n"])
    only_a = j.filter(pc.and_(in_a, pc.invert(in_b)))
    only_b = j.filter(pc.and_(in_b, pc.invert(in_a)))
    dup_a = da.filter(pc.greater(da["a_n"], 1))
    dup_b = db.filter(pc.greater(db["b_n"], 1))

    def keys_of(t: pa.Table, rows: pa.Array, counts: pa.Array | None = None) -> pa.Table:
        out = t.select(list(key)).take(rows)
        if counts is not None:
            out = out.append_column("rows", counts)
        return _first_by_key(out, key)

    coverage = KeyCoverage(
        key=key, only_in_a=only_a.num_rows, only_in_b=only_b.num_rows,
        in_both=j.num_rows - only_a.num_rows - only_b.num_rows,
        duplicated_a=dup_a.num_rows, duplicated_b=dup_b.num_rows,
        duplicate_rows_a=int(pc.sum(dup_a["a_n"]).as_py() or 0),
        duplicate_rows_b=int(pc.sum(dup_b["b_n"]).as_py() or 0),
        examples_only_in_a=keys_of(a, only_a["a_row"]), examples_only_in_b=keys_of(b, only_b["b_row"]),
        duplicates_a=keys_of(a, dup_a["a_row"], dup_a["a_n"]), duplicates_b=keys_of(b, dup_b["b_row"], dup_b["b_n"]))
    if not row_diff:
        return coverage, None

    unique = pc.and_(pc.fill_null(pc.less_equal(j["a_n"], 1), True), pc.fill_null(pc.less_equal(j["b_n"], 1), True))
    ju = j.filter(unique)
    added = _sorted(b.take(ju.filter(pc.is_null(ju["a_n"]))["b_row"]), key)
    removed = _sorted(a.take(ju.filter(pc.is_null(ju["b_n"]))["a_row"]), key)
    matched = ju.filter(pc.and_(pc.is_valid(ju["a_n"]), pc.is_valid(ju["b_n"])))
    rows_a, rows_b = a.take(matched["a_row"]), b.take(matched["b_row"])

    compared, not_compared, differs = [], [], []
    for col in a.column_names:
        if col in key or col not in b.column_names:
            continue
        pair = _common(rows_a[col], rows_b[col])
        if pair is None:
            not_compared.append(col)
            continue
        compared.append(col)
        differs.append(pc.invert(_same(*pair)))
    n = matched.num_rows
    if differs:
        matrix = np.column_stack([d.to_numpy(zero_copy_only=False) for d in differs])
    else:
        matrix = np.zeros((n, 0), dtype=bool)
    any_change = matrix.any(axis=1)
    changed_rows = np.flatnonzero(any_change)
    sub = matrix[changed_rows]
    hit_rows, hit_cols = np.nonzero(sub)                        # row-major: each row's columns in order
    offsets = np.concatenate([[0], np.cumsum(sub.sum(axis=1))]).astype(np.int32)
    names = pa.array(compared, pa.string()).take(pa.array(hit_cols, pa.int64())) if compared else \
        pa.array([], pa.string())
    idx = pa.array(changed_rows, pa.int64())
    columns = {k: rows_a[k].take(idx) for k in key}
    columns["changed"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), names)
    counts = dict(zip(compared, (int(c) for c in matrix.sum(axis=0))))
    for c in compared:
        if counts[c]:
            columns[f"a.{c}"] = rows_a[c].take(idx)
            columns[f"b.{c}"] = rows_b[c].take(idx)
    changed = _sorted(pa.table(columns), key)
    ambiguous = j.num_rows - ju.num_rows
    rows = RowDiff(key=key, added=added, removed=removed, changed=changed, changed_by_column=counts,
                   unchanged=n - len(changed_rows), ambiguous=ambiguous, compared=tuple(compared),
                   not_compared=tuple(not_compared))
    return coverage, rows


# ---------------------------------------------------------------------------------------------
# The comparison


def compare(a: str, b: str, *, key: str | Sequence[str] | None = None, storage_options: dict | None = None,
            max_rows: int = 100_000, partitions: str | Sequence[str] | None = None,
            partition_columns: str | Sequence[str] | None = None) -> OutputDiff:
    """Compare the committed outputs at ``a`` and ``b`` (paths or fsspec URLs); see the module docstring.

    ``key``: the columns that identify a row; adds key coverage and, when neither side has more than
    ``max_rows`` rows (after ``partitions``), the exact row-level diff. ``partitions``: partition
    names to compare, leaving out the others: a whole name (``"date=2026-11-30/region=eu"``) or its
    leading directories (``"date=2026-11-30"``: every region of that date); a name that matches no
    partition of either output raises DiffError. ``partition_columns``: group rows by these columns
    instead of by the outputs' ``partition_by`` (``[]``: compare the outputs whole).

    Raises ManifestError when an output has no committed manifest (or a damaged one), IntegrityError
    when a data file does not match its checksum, DiffError when the comparison cannot be made as asked.
    """
    key = _names(key, "key")
    explicit = _names(partition_columns, "partition_columns")
    if partitions is not None:
        partitions = tuple(split_partitions(partitions))
        if not partitions:
            raise DiffError("partitions= names no partition; give names like 'date=2026-11-30' or leave it out")
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0:
        raise DiffError(f"max_rows must be a whole number >= 0, got {max_rows!r}")
    (fs_a, man_a), (fs_b, man_b) = _manifest("A", a, storage_options), _manifest("B", b, storage_options)
    # a few partitions of large outputs: read only the files of those partitions
    picked = _pushdown(partitions, explicit, man_a, man_b) if partitions is not None else None
    left = _load("A", a, fs_a, man_a, picked[0] if picked else None)
    right = _load("B", b, fs_b, man_b, picked[1] if picked else None)
    cols = _choose_partition_columns(explicit, left, right)
    for side in (left, right):
        missing = [k for k in key or () if k not in side.plain.column_names]
        if missing:
            raise DiffError(f"key column {missing[0]!r} is not a column of {side.label} ({side.path}); its columns "
                            f"are {', '.join(side.plain.column_names)}")

    groups_a, groups_b = _groups(left, cols), _groups(right, cols)
    values = list(dict.fromkeys([*groups_a, *groups_b]))

    def name_of(v: tuple) -> str:
        found = [g[v] for g in (groups_a, groups_b) if v in g]
        return next((n for n, _, named in found if named), found[0][0])

    names = {v: name_of(v) for v in values}
    table_a, table_b = left.plain, right.plain
    if partitions is not None:
        if not cols:
            raise DiffError("partitions= picks partitions of partitioned outputs, but A and B are not partitioned: "
                            "pass partition_columns= (--by) to group their rows by columns, or leave partitions out")
        lookup: dict[str, tuple] = {}
        for v in values:
            lookup[names[v]] = v
            for g in (groups_a, groups_b):
                if v in g:
                    lookup.setdefault(g[v][0], v)
        chosen: list[tuple] = []
        for p in partitions:
            hits = [v for name, v in lookup.items() if name == p or name.startswith(p + "/")]
            if not hits:
                known = sorted(lookup)
                raise DiffError(f"partition {p!r} matches no partition of A or B; they have {len(known)} partitions, "
                                f"e.g. {', '.join(known[:5])}")
            chosen += hits
        values = list(dict.fromkeys(chosen))
        table_a = table_a.filter(_mask(table_a, cols, values))
        table_b = table_b.filter(_mask(table_b, cols, values))

    parts = sorted((PartitionDiff(names[v], dict(zip(cols, v)), groups_a[v][1] if v in groups_a else None,
                                  groups_b[v][1] if v in groups_b else None) for v in values),
                   key=lambda p: p.name)
    columns = _column_stats(table_a, left.table.schema, table_b, right.table.schema)
    keys = rows = skipped = None
    if key is None:
        skipped = "no key given: pass key= (--key) to compare keys and rows"
    else:
        too_many = [(s, t.num_rows) for s, t in (("A", table_a), ("B", table_b)) if t.num_rows > max_rows]
        if too_many:
            skipped = (f"{too_many[0][0]} has {too_many[0][1]:,} rows, more than max_rows={max_rows:,}: raise max_rows "
                       "(--max-rows) or compare fewer partitions for an exact row-level diff")
        keys, rows = _keys_and_rows(table_a, table_b, key, row_diff=not too_many)
    return OutputDiff(a=_side(left, table_a.num_rows), b=_side(right, table_b.num_rows), partition_columns=cols,
                      partitions=parts, schema=_schema_diff(left, right), columns=columns, keys=keys, rows=rows,
                      row_diff_skipped=skipped, selected=partitions)


__all__ = ["compare", "parse_change", "split_partitions", "OutputDiff", "PartitionDiff", "Side", "SchemaDiff",
           "KeyCoverage", "RowDiff", "percent", "UNPARTITIONED", "DEFAULT_PARTITION"]
