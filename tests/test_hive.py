"""Hive partition directories (engine/hive.py) and reading them back as inputs (engine/datasets.py).

- ``escape``/``unescape`` follow Hive's ``escapePathName`` (percent-encoding, uppercase hex) and
  round-trip every string (hypothesis).
- Partition values format and parse back for each supported Arrow type; unsupported types and
  columns are refused with errors naming the column.
- ``split_by_partition`` groups exactly (every row once, in its group's values, in input order),
  merges null and empty strings (Hive's ``__HIVE_DEFAULT_PARTITION__``), and is vectorised.
- Independent readers (pyarrow datasets, DuckDB, Polars) read a directory written with these
  functions as the same rows; what each does with names and types is asserted as observed.
- The engine reads such a directory as input with the same decoding (an engine.run in the driver,
  checked against pyarrow).
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import time

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import assert_tables_close
from hypothesis import given
from hypothesis import strategies as st

import engine
from engine import Job, agg
from engine.datasets import resolve_input
from engine.errors import JobDefinitionError, SchemaError
from engine.hive import (DEFAULT_PARTITION, check_partition_columns, escape, format_value, parse_partition_dir,
                         parse_value, parse_values, partition_dir, split_by_partition, unescape)

# -- escaping -------------------------------------------------------------------------------------

HIVE_ESCAPED = [chr(c) for c in range(1, 0x20)] + ["\x7f"] + list("\"#%'*/:=?\\{[]^")


def test_escape_is_hives():
    for c in HIVE_ESCAPED:
        assert escape(c) == f"%{ord(c):02X}", c
    assert escape("\x00") == "%00"                   # NUL too: no filesystem takes it in a name
    for c in " !$&()+,-.;<>@_`|}~aZ09éß日本😀":       # everything else is kept as it is
        assert escape(c) == c, c
    assert escape("2026-11-30 12:34:56") == "2026-11-30 12%3A34%3A56"
    assert escape("eu/west=1%") == "eu%2Fwest%3D1%25"
    assert escape("\x1b[0m") == "%1B%5B0m"           # uppercase hex


@given(st.text())
def test_escape_round_trips(text):
    escaped = escape(text)
    assert unescape(escaped) == text
    assert not set(escaped) & (set(HIVE_ESCAPED + ["\x00"]) - {"%"})
    assert "/" not in escaped and "=" not in escaped


def test_unescape_reads_what_other_tools_write():
    assert unescape("caf%C3%A9") == "café"            # percent-encoded UTF-8 (pyarrow's uri encoding)
    assert unescape("%e6%97%a5") == "日"              # lowercase hex
    assert unescape("%FF%41") == "ÿA"                  # not UTF-8: Hive's reading, U+00FF
    assert unescape("50%") == "50%" and unescape("%zz%4") == "%zz%4"   # no escape: kept
    assert unescape("a+b") == "a+b"                    # '+' is not a space (that is form encoding)


# -- values ---------------------------------------------------------------------------------------

VALUE_CASES = [
    (pa.int8(), -5, "-5"),
    (pa.uint64(), 2 ** 64 - 1, "18446744073709551615"),
    (pa.string(), "eu/west", "eu/west"),
    (pa.large_string(), "café", "café"),
    (pa.bool_(), True, "true"),
    (pa.bool_(), False, "false"),
    (pa.date32(), dt.date(2026, 11, 30), "2026-11-30"),
    (pa.date64(), dt.date(1969, 7, 20), "1969-07-20"),
    (pa.timestamp("s"), dt.datetime(2026, 11, 30, 12, 34, 56), "2026-11-30 12:34:56"),
    (pa.timestamp("us"), dt.datetime(2026, 11, 30, 12, 34, 56, 500000), "2026-11-30 12:34:56.5"),
    (pa.timestamp("us"), dt.datetime(2026, 11, 30), "2026-11-30 00:00:00"),
    (pa.timestamp("ms"), dt.datetime(1960, 1, 1, 0, 0, 0, 1000), "1960-01-01 00:00:00.001"),
    (pa.timestamp("us", "UTC"), dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.timezone.utc), "2026-11-30 23:00:00"),
    (pa.decimal128(7, 2), decimal.Decimal("12.30"), "12.30"),
    (pa.decimal128(7, 2), decimal.Decimal("-0.05"), "-0.05"),
    (pa.float64(), 0.1, "0.1"),
    (pa.float64(), 1e20, "1e+20"),
    (pa.float32(), 0.1, "0.1"),
    (pa.dictionary(pa.int32(), pa.string()), "eu", "eu"),
]


@pytest.mark.parametrize("typ, value, text", VALUE_CASES, ids=[f"{c[0]}-{c[2]}" for c in VALUE_CASES])
def test_format_and_parse_value(typ, value, text):
    assert format_value(value, typ) == text
    scalar = pa.scalar(value, typ) if not pa.types.is_dictionary(typ) else pa.scalar(value, typ.value_type)
    assert format_value(scalar) == text                 # an Arrow scalar: its own type
    back = parse_value(text, typ)
    assert back.type == typ
    got = back.as_py()
    if pa.types.is_float32(typ):
        assert got == pytest.approx(value, rel=1e-7)
    else:
        assert got == value


def test_nanoseconds_and_zoned_timestamps():
    ns = pa.scalar(1_700_000_000_123_456_789, pa.timestamp("ns"))
    assert format_value(ns) == "2023-11-14 22:13:20.123456789"
    assert parse_value("2023-11-14 22:13:20.123456789", pa.timestamp("ns")) == ns
    paris = pa.scalar(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc), pa.timestamp("s", "Europe/Paris"))
    assert format_value(paris) == "2026-11-30 12:00:00"           # UTC, not Paris time (13:00)
    assert parse_value("2026-11-30 12:00:00", paris.type) == paris


def test_nulls_and_empty_strings():
    for typ in (pa.string(), pa.int64(), pa.date32()):
        assert format_value(None, typ) is None
        assert parse_value(None, typ).as_py() is None
        assert parse_value(DEFAULT_PARTITION, typ).as_py() is None
    assert format_value("", pa.string()) is None                   # Hive cannot store "": it reads back null
    assert format_value(DEFAULT_PARTITION, pa.string()) is None
    assert parse_value("", pa.string()).as_py() is None
    assert parse_values(["1", None, DEFAULT_PARTITION, "3"], pa.int16()).to_pylist() == [1, None, None, 3]


@given(st.integers(-2 ** 63, 2 ** 63 - 1))
def test_int_round_trip(n):
    assert parse_value(format_value(n, pa.int64()), pa.int64()).as_py() == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trip(x):
    assert parse_value(format_value(x, pa.float64()), pa.float64()).as_py() == x


@given(st.integers(-62_135_596_800 * 10 ** 6, 253_402_300_799 * 10 ** 6), st.sampled_from(["s", "ms", "us", "ns"]))
def test_timestamp_round_trip(ticks, unit):
    typ = pa.timestamp(unit)
    ticks = ticks * {"s": 1, "ms": 1000, "us": 10 ** 6, "ns": 10 ** 9}[unit] // 10 ** 6
    if unit == "ns" and not -2 ** 63 <= ticks < 2 ** 63:
        return
    scalar = pa.scalar(ticks, pa.int64()).cast(typ)
    text = format_value(scalar)
    assert parse_value(text, typ) == scalar
    assert pa.scalar(text.replace(" ", "T")).cast(typ) == scalar    # plain ISO: what Arrow's own cast reads


@given(st.decimals(min_value=-10 ** 8, max_value=10 ** 8, places=3, allow_nan=False, allow_infinity=False))
def test_decimal_round_trip(d):
    typ = pa.decimal128(12, 3)
    value = pa.scalar(d, typ)
    assert parse_value(format_value(value), typ) == value


def test_unsupported_types_and_values():
    for typ in (pa.binary(), pa.list_(pa.int64()), pa.struct([("a", pa.int64())]), pa.duration("s"), pa.time32("s"),
                pa.float16()):
        with pytest.raises(SchemaError, match="cannot name a Hive partition"):
            format_value(None, typ, column="c")
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(SchemaError, match="'c' holds"):
            format_value(bad, pa.float64(), column="c")
    with pytest.raises(SchemaError, match="not of type int64"):
        parse_value("1.5", pa.int64())
    with pytest.raises(SchemaError, match="neither 'true' nor 'false'"):
        parse_value("yes", pa.bool_())


# -- directories ----------------------------------------------------------------------------------


def test_partition_dir_and_back():
    assert partition_dir(["date", "region"], ["2026-11-30", "eu/west"]) == "date=2026-11-30/region=eu%2Fwest"
    assert partition_dir(["a=b", "c"], {"a=b": None, "c": ""}) == (
        f"a%3Db={DEFAULT_PARTITION}/c={DEFAULT_PARTITION}")
    path = partition_dir(["k", "s"], ["50%", "x:y?"]) + "/part-0.parquet"
    assert parse_partition_dir(path) == [("k", "50%"), ("s", "x:y?")]
    assert parse_partition_dir(f"a%3Db={DEFAULT_PARTITION}/f.parquet") == [("a=b", None)]
    with pytest.raises(ValueError):
        partition_dir(["a", "b"], ["x"])


def test_check_partition_columns():
    schema = pa.schema([("date", pa.date32()), ("region", pa.string()), ("v", pa.float64()),
                        ("_hidden", pa.int64()), ("blob", pa.binary()), ("tags", pa.list_(pa.string()))])
    assert check_partition_columns(schema, ["date", "region"]) == ["date", "region"]
    assert check_partition_columns(schema, "region") == ["region"]
    with pytest.raises(SchemaError, match=r"'nope'.*no such column; its columns are date, region, v"):
        check_partition_columns(schema, ["nope"])
    with pytest.raises(JobDefinitionError, match=r"'_hidden'.*start with '_' or '.'"):
        check_partition_columns(schema, ["_hidden"])
    with pytest.raises(JobDefinitionError, match="'region' twice"):
        check_partition_columns(schema, ["region", "region"])
    with pytest.raises(JobDefinitionError, match="empty"):
        check_partition_columns(schema, [])
    with pytest.raises(SchemaError, match=r"'blob' has type binary"):
        check_partition_columns(schema, ["region", "blob"])
    with pytest.raises(SchemaError, match=r"'tags' has type list<item: string>"):
        check_partition_columns(schema, ["tags"])
    small = pa.schema([("date", pa.date32()), ("region", pa.string())])
    with pytest.raises(SchemaError, match="nothing would be left to store"):
        check_partition_columns(small, ["date", "region"])


# -- splitting ------------------------------------------------------------------------------------


def _reference_groups(table: pa.Table, columns: list[str]) -> dict[str, list[int]]:
    """Directory -> row ids, row by row in Python (the slow, obvious way)."""
    groups: dict[str, list[int]] = {}
    for row in table.to_pylist():
        values = [format_value(row[c], table.schema.field(c).type) for c in columns]
        groups.setdefault(partition_dir(columns, values), []).append(row["id"])
    return groups


@given(st.lists(st.tuples(st.sampled_from(["eu", "eu/west", "", None, "a=b", "50%", "É"]),
                          st.one_of(st.none(), st.integers(-3, 3)),
                          st.sampled_from([dt.date(2026, 11, 30), dt.date(1999, 1, 1), None])),
                min_size=0, max_size=60),
       st.integers(1, 4))
def test_split_matches_a_row_by_row_reference(rows, chunks):
    table = pa.table({"id": list(range(len(rows))), "s": [r[0] for r in rows],
                      "k": pa.array([r[1] for r in rows], pa.int32()),
                      "d": pa.array([r[2] for r in rows], pa.date32())})
    bounds = np.linspace(0, len(rows), chunks + 1).astype(int)       # several chunks: combine_chunks is exercised
    table = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])] or [table])
    columns = ["s", "k", "d"]
    groups = split_by_partition(table, columns)
    assert [g[0] for g in groups] == sorted(_reference_groups(table, columns))
    for directory, values, part in groups:
        assert part.column_names == ["id"]
        assert part["id"].to_pylist() == _reference_groups(table, columns)[directory]   # input order kept
        assert partition_dir(columns, values) == directory
        assert all(v is None or v != "" for v in values.values())


def test_split_merges_null_and_empty_and_decodes_dictionaries():
    s = pa.array(["a", "", None, "a", "b", ""]).dictionary_encode()
    table = pa.table({"s": pa.chunked_array([s.slice(0, 3), pa.array(["a", "b", ""]).dictionary_encode()]),
                      "v": range(6)})
    groups = split_by_partition(table, ["s"])
    assert [(d, vals, part["v"].to_pylist()) for d, vals, part in groups] == [
        (f"s={DEFAULT_PARTITION}", {"s": None}, [1, 2, 5]), ("s=a", {"s": "a"}, [0, 3]), ("s=b", {"s": "b"}, [4])]
    assert split_by_partition(table.slice(0, 0), ["s"]) == []


def test_split_refuses_nan_and_unknown_columns():
    with pytest.raises(SchemaError, match="'f' holds nan"):
        split_by_partition(pa.table({"f": [1.0, float("nan")], "v": [1, 2]}), ["f"])
    with pytest.raises(SchemaError, match="'x'.*its columns are f, v"):
        split_by_partition(pa.table({"f": [1.0], "v": [1]}), ["x"])


def test_split_is_fast_for_a_million_rows_in_a_thousand_partitions():
    rng = np.random.default_rng(0)
    n = 1_000_000
    day = (np.datetime64("2026-01-01") + rng.integers(0, 100, n).astype("timedelta64[D]"))
    table = pa.table({"date": pa.array(day).cast(pa.date32()),
                      "region": pa.array([f"r/{i}" for i in range(10)]).take(pa.array(rng.integers(0, 10, n))),
                      "k": rng.integers(0, 1 << 40, n), "v": rng.random(n)})
    start = time.perf_counter()
    groups = split_by_partition(table, ["date", "region"])
    elapsed = time.perf_counter() - start
    assert len(groups) == 1000 and sum(g[2].num_rows for g in groups) == n
    assert elapsed < 3.0, f"split took {elapsed:.2f} s (about 0.25 s when the machine is idle)"


# -- independent readers --------------------------------------------------------------------------

AWKWARD = ["a/b", "a=b", "50%", "x:y?", "sp ace", "café", "日本", None, "", "#[]^{}*'\"\\", "%41", "tab\tnl",
           "+1", "__x", "..", "-"]


def _awkward_table() -> pa.Table:
    n = len(AWKWARD) * 3
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "s": [AWKWARD[i % len(AWKWARD)] for i in range(n)],
        "k": pa.array([None if i % 4 == 0 else i % 3 - 1 for i in range(n)], pa.int64()),
        "d": pa.array([None if i % 5 == 0 else dt.date(2026, 11, 1 + i % 2) for i in range(n)], pa.date32()),
        "v": pa.array([i * 0.5 for i in range(n)]),
    })


def _write(table: pa.Table, columns: list[str], root) -> list[str]:
    dirs = []
    for directory, _, rows in split_by_partition(table, columns):
        os.makedirs(os.path.join(root, directory))
        pq.write_table(rows, os.path.join(root, directory, "part-0.parquet"))
        dirs.append(directory)
    return dirs


def _expected_rows(table: pa.Table) -> set[tuple]:
    """Hive semantics: an empty string reads back as null."""
    return {(r["id"], r["s"] or None, r["k"], r["d"], r["v"]) for r in table.to_pylist()}


def test_pyarrow_duckdb_and_polars_read_the_partitions(tmp_path):
    table = _awkward_table()
    dirs = _write(table, ["s", "k", "d"], tmp_path)
    assert len(dirs) == len(set(dirs)) == len(_reference_groups(table, ["s", "k", "d"]))
    expected = _expected_rows(table)

    # pyarrow: values decoded, nulls as null; it infers int32 for k and keeps dates as strings.
    got = ds.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table()
    assert got.schema.field("k").type == pa.int32() and got.schema.field("d").type == pa.string()
    assert {(r["id"], r["s"], r["k"], None if r["d"] is None else dt.date.fromisoformat(r["d"]), r["v"])
            for r in got.to_pylist()} == expected

    # DuckDB: values decoded, nulls as null; k BIGINT, d DATE.
    rel = duckdb.sql(f"SELECT id, s, k, d, v FROM read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true)")
    assert rel.types[2] == "BIGINT" and rel.types[3] == "DATE"
    assert set(rel.fetchall()) == expected

    # Polars: values decoded, nulls as null; k Int64, d Date.
    frame = pl.scan_parquet(f"{tmp_path}/**/*.parquet", hive_partitioning=True).select("id", "s", "k", "d", "v").collect()
    assert frame.schema["k"] == pl.Int64 and frame.schema["d"] == pl.Date
    assert set(frame.rows()) == expected


def test_readers_on_other_types_and_an_escaped_column_name(tmp_path):
    """Timestamps, booleans, floats and decimals as partition values; a column named ``odd=name``.
    pyarrow decodes the name; DuckDB and Polars keep it escaped (``odd%3Dname``). The values come back
    equal everywhere (parsed from text where the reader keeps text)."""
    ts = pa.timestamp("us")
    dec = pa.decimal128(5, 2)
    table = pa.table({
        "id": [0, 1, 2, 3],
        "ts": pa.array([dt.datetime(2026, 11, 30, 12, 34, 56, 500000), dt.datetime(2026, 11, 30), None,
                        dt.datetime(2026, 1, 1, 0, 0, 1)], ts),
        "b": [True, False, None, True],
        "f": [0.5, 1e20, -2.25, None],
        "dec": pa.array([decimal.Decimal("1.20"), None, decimal.Decimal("-3.00"), decimal.Decimal("0.05")], dec),
        "odd=name": ["x", "y/z", "x", "y/z"],
    })
    columns = ["ts", "b", "f", "dec", "odd=name"]
    dirs = _write(table, columns, tmp_path)
    assert "ts=2026-11-30 12%3A34%3A56.5/b=true/f=0.5/dec=1.20/odd%3Dname=x" in dirs
    expected = {tuple(r.values()) for r in table.to_pylist()}

    got = ds.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table()
    assert set(got.column_names) == {"id", *columns}                       # the name decoded
    assert all(got.schema.field(c).type == pa.string() for c in columns)   # every value as text
    typed = pa.table({"id": got["id"], **{c: parse_values(got[c].to_pylist(), table.schema.field(c).type)
                                          for c in columns}})
    assert {tuple(r[c] for c in table.column_names) for r in typed.to_pylist()} == expected

    rel = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true)")
    assert "odd%3Dname" in rel.columns and "odd=name" not in rel.columns   # the name as written
    rows = {dict(zip(rel.columns, r))["id"]: dict(zip(rel.columns, r)) for r in rel.fetchall()}
    for r in table.to_pylist():
        got_row = rows[r["id"]]
        assert got_row["odd%3Dname"] == r["odd=name"]
        for c in ("ts", "b", "f", "dec"):                                  # DuckDB keeps these as text
            assert parse_value(got_row[c], table.schema.field(c).type).as_py() == r[c]

    frame = pl.scan_parquet(f"{tmp_path}/**/*.parquet", hive_partitioning=True).collect()
    assert "odd%3Dname" in frame.columns
    assert frame.schema["ts"] == pl.Datetime("us") and frame.schema["b"] == pl.Boolean
    for r in frame.rows(named=True):
        want = next(x for x in table.to_pylist() if x["id"] == r["id"])
        assert (r["ts"], r["b"], r["f"], r["odd%3Dname"]) == (want["ts"], want["b"], want["f"], want["odd=name"])
        assert r["dec"] == (None if want["dec"] is None else float(want["dec"]))   # Polars: decimals as Float64


# -- the engine reading a Hive input --------------------------------------------------------------


def test_engine_input_decodes_escapes_and_default_partition(tmp_path):
    table = _awkward_table()
    _write(table, ["s", "k"], tmp_path / "in")
    spec = resolve_input(str(tmp_path / "in"))
    assert spec.partition_types == {"s": pa.string(), "k": pa.int64()}      # nulls do not make k a string
    values = {dict(s.partition_values)["s"] for s in spec.splits}
    assert values == {v or None for v in AWKWARD}                           # decoded; "" and null are null

    job = Job("by-s-k").reduce(by=["s", "k"], aggs={"n": agg.count(), "total": agg.sum("v")})
    result = engine.run(job, str(tmp_path / "in"), str(tmp_path / "out"))
    reference = ds.dataset(str(tmp_path / "in"), format="parquet", partitioning="hive").to_table()
    reference = reference.set_column(reference.schema.get_field_index("k"), "k", reference["k"].cast(pa.int64()))
    expected = reference.group_by(["s", "k"], use_threads=False).aggregate([([], "count_all"), ("v", "sum")])
    expected = pa.table({"s": expected["s"], "k": expected["k"], "n": expected["count_all"], "total": expected["v_sum"]})
    got = result.read()
    assert got.num_rows == expected.num_rows
    assert_tables_close(got.select(["s", "k", "n", "total"]), expected, ["s", "k"])


def test_engine_partitioned_output_is_the_next_jobs_input(tmp_path):
    """What a run writes with partition_by reads back as the next job's Hive input, rows unchanged."""
    table = _awkward_table()
    os.makedirs(tmp_path / "raw")
    pq.write_table(table, tmp_path / "raw" / "part-0.parquet")
    first = engine.run(Job("copy").map(lambda t: t), str(tmp_path / "raw"), str(tmp_path / "mid"),
                       partition_by=["s", "k"])
    assert first.read().num_rows == table.num_rows
    nxt = engine.run(Job("again").map(lambda t: t), str(tmp_path / "mid"), str(tmp_path / "out"))
    got = nxt.read()
    assert {(r["id"], r["s"], r["k"], r["d"], r["v"]) for r in got.to_pylist()} == _expected_rows(table)


def test_partition_type_inference_is_strict():
    from engine.datasets import _infer_partition_type
    assert _infer_partition_type(["1", None, "-3", "+4", "007"]) == pa.int64()
    assert _infer_partition_type([None, None]) == pa.string()
    for odd in (["1_000"], [" 5"], ["1", "x"], ["99999999999999999999"], ["1.5"]):
        assert _infer_partition_type(odd) == pa.string(), odd


def test_where_text_prunes_partitions_with_nulls(tmp_path):
    from engine.whereexpr import parse_where
    table = _awkward_table()
    _write(table, ["s", "k"], tmp_path)
    everything = resolve_input(str(tmp_path))
    cases = {"k is null": pc.field("k").is_null(), "s = 'a/b' or k = 1": (pc.field("s") == "a/b") | (pc.field("k") == 1),
             "s not in ('a/b', '50%')": ~pc.field("s").isin(["a/b", "50%"]) & pc.field("s").is_valid()}
    for text, expr in cases.items():
        pruned = resolve_input(str(tmp_path), where=parse_where(text))
        keep = [s for s in everything.splits
                if pa.table({k: pa.array([v], everything.partition_types[k]) for k, v in s.partition_values})
                .filter(expr).num_rows]
        assert {s.path for s in pruned.splits} == {s.path for s in keep}, text
