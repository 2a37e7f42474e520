"""Input schema drift and the Arrow types users meet in the wild, end to end on the embedded cluster.

* Drift between input files is unified at snapshot time by safe promotions only (int64 + double →
  double), the same way for every job kind; anything else (int + string) is refused before any task
  runs, naming the column, both types and a file of each.
* Deterministic errors raised in a task (a value that does not fit the unified type, an Arrow error
  in a user function) fail the run after one attempt, naming round, stage, partition, file, column.
* View types written by Polars / pyarrow are read as plain types; a map may emit dictionary keys,
  decimals, timestamps with time zones, dates, lists and structs, and the shuffle (spilling several
  times) carries them; every answer is checked against pyarrow or DuckDB.
"""

from __future__ import annotations

import json
import os
import sqlite3

import dask.config
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from conftest import assert_tables_close
from engine import Job, agg
from engine.errors import SchemaError, StageFailedError

# Small buffers and batches: every map task spills several times, and reads several batches.
SPILLS = {"engine.shuffle.spill-size": "16KiB", "engine.batch-rows": 500}


def _history(job_name: str) -> list[dict]:
    """This job's runs in the run history: status and the per-stage attempts and retries."""
    with sqlite3.connect(os.environ["ENGINE_HISTORY"]) as con:
        rows = con.execute("SELECT status, message, report FROM runs WHERE job = ?", (job_name,)).fetchall()
    return [{"status": s, "message": m, **json.loads(r)} for s, m, r in rows]


def _drift_files(directory, n=3000, seed=1) -> pa.Table:
    """Three files whose ``v`` column is int64, double and int32; returns the rows as doubles."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    pieces = []
    for i, typ in enumerate([pa.int64(), pa.float64(), pa.int32()]):
        keys = pa.array([f"k{x}" for x in rng.integers(0, 60, n)])
        raw = rng.integers(-1000, 1000, n)
        values = pa.array(raw + (0.25 if typ == pa.float64() else 0), type=typ)
        piece = pa.table({"k": keys, "v": values})
        pq.write_table(piece, os.path.join(str(directory), f"part-{i}.parquet"))
        pieces.append(piece.cast(pa.schema([("k", pa.string()), ("v", pa.float64())])))
    return pa.concat_tables(pieces)


# ---------------------------------------------------------------------------------------------
# Item 3: schema drift


def test_int_double_drift_promotes_alike_for_aggregate_reduce_and_sort(tmp_path):
    rows = _drift_files(tmp_path / "in")
    ref = rows.group_by("k").aggregate([("v", "sum"), ("v", "max"), ([], "count_all")])
    ref = pa.table({"k": ref["k"], "s": ref["v_sum"], "m": ref["v_max"], "n": ref["count_all"]})
    with dask.config.set(SPILLS):
        aggregated = Job("drift-agg").reduce(by="k", aggs={"s": agg.sum("v"), "m": agg.max("v"), "n": agg.count()}) \
            .run(str(tmp_path / "in"), str(tmp_path / "agg"), partition_size="2KiB")
        reduced = Job("drift-reduce").reduce(
            lambda t: t.group_by("k").aggregate([("v", "sum"), ("v", "max"), ([], "count_all")])
            .rename_columns(["k", "s", "m", "n"]), by="k") \
            .run(str(tmp_path / "in"), str(tmp_path / "reduce"), partition_size="2KiB")
        ordered = Job("drift-sort").sort(by=["k", "v"]).run(str(tmp_path / "in"), str(tmp_path / "sort"),
                                                            partition_size="2KiB")
    got = engine.read(str(tmp_path / "agg"))      # c95fa1f: StageFailedError ... after 3 attempts: ArrowInvalid
    assert got.schema.field("s").type == pa.float64()
    assert_tables_close(got, ref, "k")
    assert_tables_close(engine.read(str(tmp_path / "reduce")), ref, "k")
    sorted_out = engine.read(str(tmp_path / "sort"))
    assert sorted_out.schema.field("v").type == pa.float64()
    assert sorted_out.to_pylist() == rows.sort_by([("k", "ascending"), ("v", "ascending")]).to_pylist()
    # all three job kinds saw one schema and agree
    from_sort = sorted_out.group_by("k").aggregate([("v", "sum")])
    assert_tables_close(pa.table({"k": from_sort["k"], "s": from_sort["v_sum"]}), ref.select(["k", "s"]), "k")
    assert [r.report.stages[-1].tasks >= 2 for r in (aggregated, reduced, ordered)] == [True] * 3


def test_int_string_drift_is_refused_before_any_task_naming_column_types_and_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"k": ["a", "b"], "v": [1, 2]}), d / "old.parquet")
    pq.write_table(pa.table({"k": ["a", "c"], "v": ["3", "x"]}), d / "new.parquet")
    pq.write_table(pa.table({"k": ["b"], "v": [5]}), d / "other.parquet")
    job = Job("drift-refused").reduce(by="k", aggs={"n": agg.count(), "top": agg.max("v")})
    with pytest.raises(SchemaError) as info:      # c95fa1f: StageFailedError after 3 attempts (ArrowInvalid)
        job.run(str(d), str(tmp_path / "out"))
    msg = str(info.value)
    assert "'v'" in msg and "int64" in msg and "string" in msg, msg
    assert "new.parquet" in msg and ("old.parquet" in msg or "other.parquet" in msg), msg
    # refused at snapshot time: no stage ran, so no attempt was made at all (the history records the
    # failed run, with its reason and no task)
    (run,) = _history("drift-refused")
    assert run["status"] == "failed" and "SchemaError" in run["message"] and run["stages"] == [] and run["tasks"] == []
    assert not (tmp_path / "out").exists()


def test_value_outside_the_unified_type_fails_once_naming_file_and_column(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"k": ["a", "b"], "v": pa.array([1.5, 2.5])}), d / "doubles.parquet")
    pq.write_table(pa.table({"k": ["a", "b"], "v": pa.array([2 ** 53 + 1, 3], pa.int64())}), d / "huge.parquet")
    job = Job("drift-overflow").reduce(by="k", aggs={"s": agg.sum("v")})
    with pytest.raises(StageFailedError) as info:
        job.run(str(d), str(tmp_path / "out"), speculation=False)   # (so every attempt is a retry)
    msg = str(info.value)
    # c95fa1f: "... reduce stage, partition 0 ... failed after 3 attempts: ArrowInvalid: Schema at index 1 was different"
    assert "map stage" in msg and "huge.parquet" in msg and "'v'" in msg and "after" not in msg, msg
    assert isinstance(info.value.cause, SchemaError)
    (run,) = _history("drift-overflow")
    assert run["retries"] == [] and sum(s["attempts"] for s in run["stages"]) == sum(s["tasks"] for s in run["stages"])


def test_arrow_error_in_a_user_function_is_not_retried(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"k": ["1", "2"]}), d / "a.parquet")
    pq.write_table(pa.table({"k": ["3", "x"]}), d / "b.parquet")

    def parse(t):
        # the driver's check on a sample (a.parquet) passes; b.parquet holds a value that is not a number
        return pa.table({"k": pc.cast(t["k"], pa.int64())})
    job = Job("arrow-user-error").map(parse).reduce(by="k", aggs={"n": agg.count()})
    with pytest.raises(StageFailedError) as info:
        job.run(str(d), str(tmp_path / "out"), speculation=False)
    msg = str(info.value)
    # c95fa1f: "round 1 of 1, map stage, partition 1 (input .../b.parquet) failed after 3 attempts: ArrowInvalid"
    assert "map stage" in msg and "b.parquet" in msg and "after 3 attempts" not in msg, msg
    (run,) = _history("arrow-user-error")
    assert run["retries"] == [] and sum(s["attempts"] for s in run["stages"]) == sum(s["tasks"] for s in run["stages"])


# ---------------------------------------------------------------------------------------------
# Item 4: types in the wild


def _view_files(directory) -> pa.Table:
    """Two Parquet files with view-typed columns: one written by Polars, one by pyarrow."""
    rng = np.random.default_rng(7)
    os.makedirs(directory, exist_ok=True)
    words = np.array(["apple", "avocado", "banana", "apricot", "cherry", "almond", "date"])
    n = 4000
    a = pl.DataFrame({"s": words[rng.integers(0, len(words), n)].tolist(), "v": rng.integers(0, 100, n)})
    a.write_parquet(os.path.join(str(directory), "polars.parquet"),
                    arrow_schema=pa.schema([("s", pa.string_view()), ("v", pa.int64())]))
    b = pa.table({"s": pa.array(words[rng.integers(0, len(words), n)].tolist(), pa.string_view()),
                  "v": pa.array(rng.integers(0, 100, n))})
    pq.write_table(b, os.path.join(str(directory), "pyarrow.parquet"))
    assert pq.read_schema(os.path.join(str(directory), "polars.parquet")).field("s").type == pa.string_view()
    return pa.concat_tables([a.to_arrow().cast(pa.schema([("s", pa.string()), ("v", pa.int64())])),
                             b.cast(pa.schema([("s", pa.string()), ("v", pa.int64())]))])


def test_string_view_input_through_a_filtering_map(tmp_path):
    rows = _view_files(tmp_path / "in")

    def starts_with_a(t):
        return t.filter(pc.starts_with(t["s"], "a"))
    kept = starts_with_a(rows)
    ref = kept.group_by("s").aggregate([("v", "sum"), ([], "count_all")])
    ref = pa.table({"s": ref["s"], "total": ref["v_sum"], "n": ref["count_all"]})
    with dask.config.set(SPILLS):
        # c95fa1f: JobDefinitionError ... ArrowNotImplementedError: Function 'array_take' has no kernel
        # matching input types (string_view, ...)
        Job("views-agg").map(starts_with_a).reduce(by="s", aggs={"total": agg.sum("v"), "n": agg.count()}) \
            .run(str(tmp_path / "in"), str(tmp_path / "agg"), partition_size="2KiB")
        Job("views-sort").map(starts_with_a).sort(by=["s", "v"]) \
            .run(str(tmp_path / "in"), str(tmp_path / "sort"), partition_size="2KiB")
    assert_tables_close(engine.read(str(tmp_path / "agg")), ref, "s")
    assert engine.read(str(tmp_path / "sort")).to_pylist() == \
        kept.sort_by([("s", "ascending"), ("v", "ascending")]).to_pylist()


def _dictionary_key_map(t):
    # A dictionary-encoded key, with a new dictionary per batch; every other batch plainly encoded,
    # so equal keys arrive both ways and must meet in one group.
    k = pc.utf8_upper(t["k"])
    if t.num_rows % 2 == 0:
        k = k.dictionary_encode()
    return pa.table({"key": k, "v": t["v"]})


def test_dictionary_key_emitted_by_a_map_that_spills_several_times(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "in"
    d.mkdir()
    pieces = []
    for i in range(2):
        n = 6000 + i           # batches of 500 rows, then an odd one
        piece = pa.table({"k": pa.array([f"k{x}" for x in rng.integers(0, 300, n)]), "v": rng.integers(0, 10, n)})
        pq.write_table(piece, d / f"part-{i}.parquet")
        pieces.append(piece)
    rows = pa.concat_tables(pieces)
    rows = pa.table({"key": pc.utf8_upper(rows["k"]), "v": rows["v"]})
    ref = rows.group_by("key").aggregate([("v", "sum"), ([], "count_all")])
    ref = pa.table({"key": ref["key"], "s": ref["v_sum"], "n": ref["count_all"]})
    with dask.config.set(SPILLS):
        # c95fa1f: StageFailedError ... ArrowInvalid: Dictionary replacement detected when writing IPC file format
        result = Job("dict-agg").map(_dictionary_key_map).reduce(by="key", aggs={"s": agg.sum("v"), "n": agg.count()}) \
            .run(str(d), str(tmp_path / "agg"), partition_size="4KiB")
        Job("dict-reduce").map(_dictionary_key_map).reduce(
            lambda t: t.group_by("key").aggregate([("v", "sum"), ([], "count_all")]).rename_columns(["key", "s", "n"]),
            by="key").run(str(d), str(tmp_path / "reduce"), partition_size="4KiB")
        Job("dict-sort").map(_dictionary_key_map).sort(by=["key", "v"]) \
            .run(str(d), str(tmp_path / "sort"), partition_size="4KiB")
    assert result.report.stages[-1].tasks >= 2
    assert_tables_close(engine.read(str(tmp_path / "agg")), ref, "key")
    assert_tables_close(engine.read(str(tmp_path / "reduce")), ref, "key")   # one row per key: no split groups
    got = engine.read(str(tmp_path / "sort"))
    assert got.cast(rows.schema).to_pylist() == rows.sort_by([("key", "ascending"), ("v", "ascending")]).to_pylist()


@pytest.fixture(scope="module")
def duckdb_files(tmp_path_factory):
    """Two Parquet files written by DuckDB with decimals, timestamps with time zone, dates, lists, structs."""
    d = tmp_path_factory.mktemp("duckdb")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for i in range(2):
        con.execute(f"""
            COPY (SELECT 'k' || (r % 37)::VARCHAR AS k,
                         ((r * 7919) % 100000)::DECIMAL(12, 2) / 100 AS price,
                         TIMESTAMPTZ '2026-01-01 00:00:00+00' + INTERVAL (r % 500) MINUTE AS ts,
                         DATE '2026-01-01' + (r % 61)::INTEGER AS day,
                         [r % 3, r % 5, r % 7] AS l,
                         {{'a': r % 11, 'b': 'x' || (r % 4)::VARCHAR}} AS st
                  FROM range({i * 5000}, {(i + 1) * 5000}) t(r))
            TO '{d}/part-{i}.parquet' (FORMAT PARQUET)""")
    return d, con


def _duck(con, d, sql: str) -> pa.Table:
    return con.sql(sql.replace(" FROM T", f" FROM read_parquet('{d}/*.parquet')")).to_arrow_table()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["day", "ts", "price"])
def test_duckdb_types_through_aggregate_reduce_and_sort(duckdb_files, tmp_path, key):
    d, con = duckdb_files
    order = list(dict.fromkeys([key, "price"]))      # prices are distinct: one order only
    ref = _duck(con, d, f"SELECT {key}, count(*) AS n, sum(price) AS total, min(ts) AS first_ts, max(day) AS last_day, "
                        f"sum(list_sum(l)) AS lsum, sum(st.a) AS sa FROM T GROUP BY {key}")
    with dask.config.set(SPILLS):
        Job(f"duck-agg-{key}").reduce(by=key, aggs={"n": agg.count(), "total": agg.sum("price"),
                                                    "first_ts": agg.min("ts"), "last_day": agg.max("day")}) \
            .run(str(d), str(tmp_path / "agg"), partition_size="4KiB")

        def nested(t):     # a user reduce over the nested value columns
            g = pa.table({key: t[key], "lsum": _list_sums(t["l"]), "sa": pc.struct_field(t["st"], "a")})
            out = g.group_by(key).aggregate([("lsum", "sum"), ("sa", "sum")])
            return out.select([key, "lsum_sum", "sa_sum"]).rename_columns([key, "lsum", "sa"])
        Job(f"duck-reduce-{key}").reduce(nested, by=key).run(str(d), str(tmp_path / "reduce"), partition_size="4KiB")
        Job(f"duck-sort-{key}").sort(by=order).run(str(d), str(tmp_path / "sort"),
                                                                  partition_size="4KiB")
    got = engine.read(str(tmp_path / "agg"))
    assert_tables_close(got.cast(got.schema), ref.select(got.column_names).cast(got.schema), key)
    got = engine.read(str(tmp_path / "reduce"))
    exp = ref.select([key, "lsum", "sa"])
    assert_tables_close(got.select(exp.column_names).cast(exp.schema), exp, key)
    expected_sort = _duck(con, d, f"SELECT * FROM T ORDER BY {', '.join(order)}")
    got = engine.read(str(tmp_path / "sort"))
    assert got.to_pylist() == expected_sort.to_pylist()
    assert got.num_rows == 10000 and got.schema.field("st").type == expected_sort.schema.field("st").type


def _list_sums(lists):
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return pa.array(np.add.reduceat(flat, starts) if len(flat) else np.zeros(len(lengths), np.int64))


def test_struct_key_groups_by_value_and_list_key_is_a_schema_error(duckdb_files, tmp_path):
    d, con = duckdb_files
    ref = _duck(con, d, "SELECT st.a AS a, st.b AS b, count(*) AS n FROM T GROUP BY st")

    def count_struct(t):
        flat = pa.table({"a": pc.struct_field(t["st"], "a"), "b": pc.struct_field(t["st"], "b")})
        return flat.group_by(["a", "b"]).aggregate([([], "count_all")]).rename_columns(["a", "b", "n"])
    with dask.config.set(SPILLS):
        Job("struct-key").reduce(count_struct, by="st").run(str(d), str(tmp_path / "struct"), partition_size="4KiB")
        got = engine.read(str(tmp_path / "struct"))
        assert_tables_close(got, ref.cast(got.schema), ["a", "b"])      # one row per struct value
        with pytest.raises(StageFailedError) as info:
            Job("list-key").reduce(lambda t: t, by="l").run(str(d), str(tmp_path / "list"), speculation=False)
    msg = str(info.value)
    assert isinstance(info.value.cause, SchemaError) and "'l'" in msg and "list" in msg, msg
    (run,) = _history("list-key")
    assert run["retries"] == []
