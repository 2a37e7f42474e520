"""Multi-input jobs: joins and cogroup, checked against DuckDB over the very same Parquet files.

Every case writes its tables as several Parquet files per input, runs the engine job, and runs the
equivalent SQL in DuckDB over the same files. Both results are compared as multisets of rows (sorted
by every column; floats within a tolerance; NULL equals NULL), with the columns named and ordered by
the documented rule: the left side's columns, then the right side's; a right key column joined to a
left key of the same name appears once (in right and full joins it holds whichever side's key is
present); any other clashing right column gets the suffix; semi and anti joins keep the left columns.

All runs share the engine's embedded cluster (``cluster=None``), except one on a cluster started from
the dask command-line tools and the ``mapreduce`` CLI runs. Small tables and small partition sizes
give several map and reduce tasks per side.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import dask.config
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_parts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine import Job, agg

HOWS = ["inner", "left", "right", "full", "semi", "anti"]
SQL_JOIN = {"inner": "INNER JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL OUTER JOIN"}
# Join types that can broadcast one side (full outer needs both sides partitioned alike).
BROADCASTABLE = {"inner", "left", "right", "semi", "anti"}
SMALL = "4KiB"      # partition size: several reduce tasks on tables of a few thousand rows


# ---------------------------------------------------------------------------------------------
# Data


def key_column(rng, n: int, *, distinct: int = 20, nulls: float = 0.0, hot: float = 0.0, hot_key: int = 0,
               type: pa.DataType = pa.int64()) -> pa.Array:
    """``n`` keys drawn from ``range(distinct)``; a ``hot`` fraction equal to ``hot_key``; a ``nulls`` fraction null."""
    keys = rng.integers(0, max(distinct, 1), n)
    if hot:
        keys = np.where(rng.random(n) < hot, hot_key, keys)
    mask = rng.random(n) < nulls if nulls else None
    return pa.array(keys, type=type, mask=mask)


def left_table(n: int, seed: int = 0, **keys) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": key_column(rng, n, **keys), "a": pa.array(np.arange(n), pa.int64()),
                     "x": rng.normal(0, 1, n), "s": pa.array([f"l{i % 7}" for i in range(n)], pa.string())})


def right_table(n: int, seed: int = 1, **keys) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": key_column(rng, n, **keys), "b": pa.array(np.arange(n), pa.int64()),
                     "y": rng.normal(0, 1, n), "s": pa.array([f"r{i % 5}" for i in range(n)], pa.string())})


def write_input(directory, table: pa.Table, parts: int, seed: int = 0) -> str:
    """``table`` as ``parts`` Parquet files (zero-row files when the table is empty); the directory."""
    write_parts(directory, table, parts=max(1, parts), seed=seed)
    return str(directory)


# ---------------------------------------------------------------------------------------------
# DuckDB reference and comparison


def duck(sql: str, inputs: dict[str, str], where: dict[str, str] | None = None) -> pa.Table:
    """Run ``sql`` with one view per input, named after it, over the input's Parquet files."""
    con = duckdb.connect()
    try:
        for name, directory in inputs.items():
            cond = (where or {}).get(name, "true")
            glob = os.path.join(directory, "*.parquet").replace("'", "''")
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet(\'{glob}\') WHERE {cond}')
        rel = con.sql(sql)
        fetch = getattr(rel, "to_arrow_table", None) or rel.arrow    # duckdb 2 / duckdb 1
        return fetch()
    finally:
        con.close()


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def join_sql(lcols, rcols, lkeys, rkeys, how: str, *, suffix: str = "_right", left: str = "l",
             right: str = "r") -> str:
    """The SQL of ``left.join(right, left_on=lkeys, right_on=rkeys, how=how, suffix=suffix)``."""
    cond = " AND ".join(f"L.{q(a)} = R.{q(b)}" for a, b in zip(lkeys, rkeys))
    if how in ("semi", "anti"):
        cols = ", ".join(f"L.{q(c)}" for c in lcols)
        neg = "" if how == "semi" else "NOT "
        return f"SELECT {cols} FROM {q(left)} L WHERE {neg}EXISTS (SELECT 1 FROM {q(right)} R WHERE {cond})"
    merged = {a for a, b in zip(lkeys, rkeys) if a == b}
    proj = []
    for c in lcols:
        if c in merged and how in ("right", "full"):
            proj.append(f"COALESCE(L.{q(c)}, R.{q(c)}) AS {q(c)}")
        else:
            proj.append(f"L.{q(c)} AS {q(c)}")
    for c in rcols:
        if c in merged:
            continue
        proj.append(f"R.{q(c)} AS {q(c + suffix if c in lcols else c)}")
    return f"SELECT {', '.join(proj)} FROM {q(left)} L {SQL_JOIN[how]} {q(right)} R ON {cond}"


def _sort_key(row):
    return tuple((1, 0) if v is None else (0, round(v, 6) if isinstance(v, float) else v) for v in row)


def assert_same_rows(actual: pa.Table, expected: pa.Table, *, rel: float = 1e-9, ordered: bool = False) -> None:
    """Same column names in the same order, and the same multiset of rows (NULL equals NULL, floats close)."""
    assert actual.column_names == expected.column_names, (actual.column_names, expected.column_names)
    names = actual.column_names
    a = [tuple(r[c] for c in names) for r in actual.to_pylist()]
    e = [tuple(r[c] for c in names) for r in expected.to_pylist()]
    assert len(a) == len(e), f"{len(a)} rows, expected {len(e)}"
    if not ordered:
        a, e = sorted(a, key=_sort_key), sorted(e, key=_sort_key)
    for i, (ra, re_) in enumerate(zip(a, e)):
        for col, av, ev in zip(names, ra, re_):
            if isinstance(ev, float) and isinstance(av, float):
                assert math.isclose(av, ev, rel_tol=rel, abs_tol=1e-9), (i, col, ra, re_)
            else:
                assert av == ev, (i, col, ra, re_)


def out_table(result) -> pa.Table:
    return engine.read(result.output)


# ---------------------------------------------------------------------------------------------
# Running one join case


def make_join(how: str, *, on=None, left_on=None, right_on=None, suffix: str | None = None, left_map=None,
              right_map=None, right_job: bool = False, name: str = "j") -> Job:
    left = Job(name, input="l")
    if left_map is not None:
        left = left.map(left_map)
    right = "r"
    if right_map is not None or right_job:
        right = Job(f"{name}-r", input="r")
        if right_map is not None:
            right = right.map(right_map)
    kw = {"how": how}
    if suffix is not None:
        kw["suffix"] = suffix
    if on is not None:
        kw["on"] = on
    else:
        kw["left_on"], kw["right_on"] = left_on, right_on
    return left.join(right, **kw)


def check_join(tmp_path, left: pa.Table, right: pa.Table, how: str, *, on=None, left_on=None, right_on=None,
               suffix: str | None = None, left_map=None, right_map=None, where: dict | None = None,
               lparts: int = 3, rparts: int = 2, partition_size: str = SMALL, inputs: dict | None = None,
               **run_options):
    """Run the join on Parquet files of ``left``/``right`` and compare with DuckDB; the RunResult."""
    if inputs is None:
        inputs = {"l": write_input(tmp_path / "l", left, lparts, seed=3),
                  "r": write_input(tmp_path / "r", right, rparts, seed=4)}
    job = make_join(how, on=on, left_on=left_on, right_on=right_on, suffix=suffix, left_map=left_map,
                    right_map=right_map)
    result = engine.run(job, inputs, str(tmp_path / f"out-{how}"), partition_size=partition_size, **run_options)
    lkeys = [on] if isinstance(on, str) else list(on) if on is not None else \
        ([left_on] if isinstance(left_on, str) else list(left_on))
    rkeys = [on] if isinstance(on, str) else list(on) if on is not None else \
        ([right_on] if isinstance(right_on, str) else list(right_on))
    sql = join_sql(left.column_names, right.column_names, lkeys, rkeys, how, suffix=suffix or "_right")
    assert_same_rows(out_table(result), duck(sql, inputs, where))
    return result


def strategies(result) -> list[str]:
    """The strategy of every join (or cogroup) of the run, in the order decided."""
    return [d["strategy"] for d in result.report.joins if "strategy" in d]


def splits(result) -> list[dict]:
    """The decisions that cut a skewed join partition into pieces."""
    return [d for d in result.report.joins if d.get("action") == "join-split" or d.get("strategy") == "split"]


def subpartitions(result) -> list[dict]:
    """The decisions that cut a big partition by a second hash of the keys (no side replicated)."""
    return [d for d in result.report.joins if d.get("action") == "join-subpartition"]


STRATEGY = ["shuffle", "broadcast"]
# Skew handling forced: any partition over the target and over the median is split.
SKEW = {"engine.join.strategy": "shuffle", "engine.skew.factor": 1.01, "engine.skew.split-over": 1.01}


def with_strategy(strategy: str):
    return dask.config.set({"engine.join.strategy": strategy})


def empty(t: pa.Table) -> pa.Table:
    return t.slice(0, 0)


# ---------------------------------------------------------------------------------------------
# 2. Every join type on the awkward cases, under both strategies


@pytest.mark.parametrize("strategy", STRATEGY)
@pytest.mark.parametrize("how", HOWS)
def test_null_keys_never_match(tmp_path, how, strategy):
    left = left_table(400, distinct=30, nulls=0.2)
    right = right_table(300, distinct=30, nulls=0.25)
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k")


@pytest.mark.parametrize("strategy", STRATEGY)
@pytest.mark.parametrize("how", HOWS)
def test_duplicate_keys_many_to_many(tmp_path, how, strategy):
    left = left_table(300, distinct=25)            # ~12 rows per key
    right = right_table(200, distinct=30)          # ~7 rows per key, some keys only on the right
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k")


# The empty side and the strategy vary together; the zero-row-file test below takes the other pairs.
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("side, strategy", [("left", "broadcast"), ("right", "shuffle")])
def test_one_side_emptied_by_its_map(tmp_path, how, strategy, side):
    left, right = left_table(300), right_table(200)
    kw = {"left_map": empty} if side == "left" else {"right_map": empty}
    where = {"l" if side == "left" else "r": "false"}
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k", where=where, **kw)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("side, strategy", [("left", "shuffle"), ("right", "broadcast")])
def test_one_side_has_only_zero_row_files(tmp_path, how, strategy, side):
    left, right = left_table(300), right_table(200)
    if side == "left":
        left = left.slice(0, 0)
    else:
        right = right.slice(0, 0)
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k")


@pytest.mark.parametrize("how", HOWS)
def test_a_zero_row_file_among_others(tmp_path, how):
    left, right = left_table(300), right_table(200)
    inputs = {"l": write_input(tmp_path / "l", left, 3), "r": write_input(tmp_path / "r", right, 2)}
    pq.write_table(right.slice(0, 0), os.path.join(inputs["r"], "part-009.parquet"))
    check_join(tmp_path, left, right, how, on="k", inputs=inputs)


@pytest.mark.parametrize("strategy", STRATEGY)
@pytest.mark.parametrize("how", HOWS)
def test_hot_key_holds_half_of_one_side(tmp_path, how, strategy):
    left = left_table(2000, distinct=200, hot=0.5, hot_key=7)
    right = right_table(300, distinct=60)
    assert 7 in right["k"].to_pylist()
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k")


def two_key_tables():
    rng = np.random.default_rng(5)
    n, m = 500, 300
    left = pa.table({"k1": pa.array([None if x == 0 else f"c{x}" for x in rng.integers(0, 6, n)]),
                     "k2": key_column(rng, n, distinct=8, nulls=0.05, type=pa.int32()),
                     "a": pa.array(np.arange(n)), "x": rng.normal(0, 1, n)})
    right = pa.table({"k2": key_column(rng, m, distinct=10, nulls=0.05, type=pa.int32()),
                      "k1": pa.array([None if x == 0 else f"c{x}" for x in rng.integers(0, 7, m)]),
                      "b": pa.array(np.arange(m)), "x": rng.normal(0, 1, m)})
    return left, right


@pytest.mark.parametrize("strategy", STRATEGY)
@pytest.mark.parametrize("how", HOWS)
def test_two_key_columns(tmp_path, how, strategy):
    left, right = two_key_tables()           # right lists the keys in the other order; "x" clashes
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on=["k1", "k2"])


@pytest.mark.parametrize("strategy", STRATEGY)
@pytest.mark.parametrize("how", HOWS)
def test_differently_named_keys(tmp_path, how, strategy):
    left = left_table(400, distinct=30, nulls=0.1).rename_columns(["lk", "a", "x", "s"])
    right = right_table(300, distinct=40, nulls=0.1).rename_columns(["rk", "b", "y", "s"])
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, left_on="lk", right_on="rk")


@pytest.mark.parametrize("how", HOWS)
def test_differently_named_keys_where_the_right_key_clashes(tmp_path, how):
    # The right key "a" is joined to the left key "k": it is not merged, and clashes with left's "a".
    left = left_table(300, distinct=30)
    right = right_table(200, distinct=30).rename_columns(["a", "b", "y", "s"])
    check_join(tmp_path, left, right, how, left_on="k", right_on="a")


@pytest.mark.parametrize("how", HOWS)
def test_clashing_columns_take_the_given_suffix(tmp_path, how):
    left = left_table(300, distinct=30).append_column("y", pa.array(np.arange(300) * 2))
    right = right_table(200, distinct=30)    # "s" and "y" clash
    check_join(tmp_path, left, right, how, on="k", suffix="_r2")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("wide, strategy", [("left", "shuffle"), ("right", "broadcast")])
def test_int32_key_joins_int64_key_by_value(tmp_path, how, strategy, wide):
    narrow, big = pa.int32(), pa.int64()
    left = left_table(400, distinct=40, nulls=0.05, type=big if wide == "left" else narrow)
    right = right_table(300, distinct=50, nulls=0.05, type=narrow if wide == "left" else big)
    with with_strategy(strategy):
        result = check_join(tmp_path, left, right, how, on="k")
    k = out_table(result)["k"]
    assert pa.types.is_integer(k.type), k.type


def string_keyed(t: pa.Table, type: pa.DataType) -> pa.Table:
    """``t`` with its key ``k`` as strings of ``type`` (string, large_string or a dictionary of strings)."""
    k = pc.cast(t["k"], pa.string())
    k = k.dictionary_encode() if pa.types.is_dictionary(type) else pc.cast(k, type)
    return t.set_column(t.column_names.index("k"), "k", k)


@pytest.mark.parametrize("how", ["inner", "full", "semi"])
@pytest.mark.parametrize("strategy", STRATEGY)
@pytest.mark.parametrize("types", ["string/large_string", "dictionary/string"])
def test_string_keys_of_different_encodings_match_by_value(tmp_path, how, strategy, types):
    lt, rt = {"string/large_string": (pa.string(), pa.large_string()),
              "dictionary/string": (pa.dictionary(pa.int32(), pa.string()), pa.string())}[types]
    left = string_keyed(left_table(400, distinct=40, nulls=0.05), lt)
    right = string_keyed(right_table(300, distinct=50, nulls=0.05), rt)
    assert pq.read_schema(write_input(tmp_path / "probe", left.slice(0, 5), 1) + "/part-000.parquet") \
        .field("k").type == lt                                   # the files really hold the encoding
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k")


@pytest.mark.parametrize("how", ["left", "full"])
@pytest.mark.parametrize("strategy", STRATEGY)
def test_nested_and_dictionary_columns_are_carried(tmp_path, how, strategy):
    rng = np.random.default_rng(12)
    left = left_table(300, distinct=40)
    right = right_table(200, distinct=50)
    right = right.append_column("tags", pa.array([[int(x), int(x) + 1] if x % 4 else None
                                                  for x in rng.integers(0, 100, 200)], pa.list_(pa.int64())))
    right = right.set_column(right.column_names.index("s"), "s", right["s"].dictionary_encode())
    with with_strategy(strategy):
        check_join(tmp_path, left, right, how, on="k")


@pytest.mark.parametrize("how", ["inner", "left", "full"])
def test_all_null_column_is_carried(tmp_path, how):
    # A column of Arrow type null (all values missing, e.g. from JSON or a map) is data like any other.
    left = left_table(200, distinct=20).append_column("note", pa.nulls(200))
    right = right_table(100, distinct=25).append_column("extra", pa.nulls(100))
    check_join(tmp_path, left, right, how, on="k")


def test_large_key_values_differ_from_their_int32_truncation(tmp_path):
    # int64 keys beyond the int32 range must not match an int32 key equal to their truncation.
    left = pa.table({"k": pa.array([1, 2, 3, 4], pa.int32()), "a": pa.array([10, 20, 30, 40])})
    right = pa.table({"k": pa.array([1, 2**32 + 2, -(2**32) + 3, 4, 2**40], pa.int64()),
                      "b": pa.array([100, 200, 300, 400, 500])})
    for how in ("inner", "full"):
        check_join(tmp_path / how, left, right, how, on="k", lparts=2, rparts=2)


# ---------------------------------------------------------------------------------------------
# cogroup


def counts_and_sum(tables: dict[str, pa.Table]) -> pa.Table:
    """Per key: the rows of each input, and the sum of ``v`` over all of them."""
    per: dict = {}
    names = sorted(tables)
    for i, name in enumerate(names):
        t = tables[name]
        for k, v in zip(t["k"].to_pylist(), t["v"].to_pylist()):
            entry = per.setdefault(k, [0] * len(names) + [0.0])
            entry[i] += 1
            entry[-1] += v
    keys = sorted(per)
    cols = {"k": pa.array(keys, pa.int64())}
    for i, name in enumerate(names):
        cols[f"n_{name}"] = pa.array([per[k][i] for k in keys], pa.int64())
    cols["total"] = pa.array([per[k][-1] for k in keys], pa.float64())
    return pa.table(cols)


def cogroup_sql(names: list[str], sources: dict[str, str] | None = None) -> str:
    """DuckDB: per-input aggregates over the union of keys (a FULL OUTER JOIN of the aggregates)."""
    sources = sources or {}
    aggs = {n: q("a_" + n) for n in names}
    ctes = [f"{aggs[n]} AS (SELECT k, count(*) AS n, sum(v) AS s FROM {sources.get(n, q(n))} GROUP BY k)"
            for n in names]
    keys = " UNION ".join(f"SELECT k FROM {aggs[n]}" for n in names)
    cols = ["keys.k AS k"] + [f"COALESCE({aggs[n]}.n, 0) AS {q('n_' + n)}" for n in names]
    cols.append("(" + " + ".join(f"COALESCE({aggs[n]}.s, 0.0)" for n in names) + ") AS total")
    joins = " ".join(f"LEFT JOIN {aggs[n]} ON {aggs[n]}.k = keys.k" for n in names)
    return f"WITH {', '.join(ctes)}, keys AS ({keys}) SELECT {', '.join(cols)} FROM keys {joins}"


def cogroup_table(n: int, seed: int, distinct: int, hot: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": key_column(rng, n, distinct=distinct, hot=hot), "v": rng.normal(0, 1, n),
                     "pad": pa.array([f"p{seed}-{i}" for i in range(n)], pa.string())})


def test_cogroup_two_inputs(tmp_path):
    inputs = {"l": write_input(tmp_path / "l", cogroup_table(1500, 1, 80, hot=0.3), 3),
              "r": write_input(tmp_path / "r", cogroup_table(700, 2, 120), 2)}
    job = Job("cg", input="l").cogroup({"r": "r"}, counts_and_sum, by="k")
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size=SMALL)
    assert_same_rows(out_table(result), duck(cogroup_sql(["l", "r"]), inputs))
    assert sum(s.tasks for s in result.report.stages if s.kind == "reduce") >= 2


def test_cogroup_with_a_hot_key_under_forced_skew(tmp_path):
    # fn must still see every row of a key in one call however the big partitions are cut.
    inputs = {"l": write_input(tmp_path / "l", cogroup_table(3000, 11, 400, hot=0.5), 4),
              "r": write_input(tmp_path / "r", cogroup_table(600, 12, 400, hot=0.2), 2)}
    job = Job("cg-skew", input="l").cogroup({"r": "r"}, counts_and_sum, by="k")
    with dask.config.set(SKEW):
        result = engine.run(job, inputs, str(tmp_path / "out"), partition_size="2KiB")
    got = out_table(result)
    assert got["k"].to_pylist().count(0) == 1, "the hot key's rows were grouped in more than one call"
    assert subpartitions(result), result.report.joins
    assert_same_rows(got, duck(cogroup_sql(["l", "r"]), inputs))


def test_cogroup_three_inputs_with_an_empty_one_and_a_mapped_one(tmp_path):
    inputs = {"a": write_input(tmp_path / "a", cogroup_table(900, 3, 50), 3),
              "b": write_input(tmp_path / "b", cogroup_table(600, 4, 70), 2),
              "c": write_input(tmp_path / "c", cogroup_table(400, 5, 30), 2),
              "e": write_input(tmp_path / "e", cogroup_table(0, 6, 1), 2)}

    def double(t: pa.Table) -> pa.Table:
        return t.set_column(t.column_names.index("v"), "v", pc.multiply(t["v"], 2.0))

    job = Job("cg3", input="a").cogroup({"b": Job("cg3-b", input="b").map(double), "c": "c", "e": "e"},
                                         counts_and_sum, by="k")
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size=SMALL)
    expected = duck(cogroup_sql(["a", "b", "c", "e"], {"b": "(SELECT k, 2.0 * v AS v FROM b)"}), inputs)
    assert_same_rows(out_table(result), expected)


# ---------------------------------------------------------------------------------------------
# 3. Property: random key distributions, random join types


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), how=st.sampled_from(HOWS),
       dist=st.sampled_from(["few", "many", "nulls", "skewed"]), nl=st.integers(0, 800), nr=st.integers(0, 400),
       lparts=st.integers(1, 4), rparts=st.integers(1, 3), size=st.sampled_from(["2KiB", "16KiB", "64MiB"]),
       strategy=st.sampled_from(["auto", "shuffle", "broadcast"]))
def test_property_join_equals_duckdb(tmp_path_factory, seed, how, dist, nl, nr, lparts, rparts, size, strategy):
    shape = {"few": dict(distinct=8), "many": dict(distinct=5000), "nulls": dict(distinct=40, nulls=0.4),
             "skewed": dict(distinct=500, hot=0.6)}[dist]
    left = left_table(nl, seed=seed, **shape)
    if dist == "skewed":       # the other side holds the hot key a few times
        shape = dict(distinct=500, hot=0.02)
    right = right_table(nr, seed=seed + 1, **shape)
    d = tmp_path_factory.mktemp("joinprop")
    with with_strategy(strategy):
        check_join(d, left, right, how, on="k", lparts=lparts, rparts=rparts, partition_size=size)


# ---------------------------------------------------------------------------------------------
# 4. Strategies forced: the same answer, and the decision recorded


@pytest.mark.parametrize("how", HOWS)
def test_forced_strategies_agree_and_are_recorded(tmp_path, how):
    left = left_table(1200, distinct=150, nulls=0.05)
    right = right_table(500, distinct=200, nulls=0.05)
    with with_strategy("shuffle"):
        shuffled = check_join(tmp_path / "s", left, right, how, on="k")
    assert strategies(shuffled) and set(strategies(shuffled)) == {"shuffle"}, shuffled.report.joins
    with with_strategy("broadcast"):
        broadcast = check_join(tmp_path / "b", left, right, how, on="k")
    expected = "broadcast" if how in BROADCASTABLE else "shuffle"
    assert strategies(broadcast) and set(strategies(broadcast)) == {expected}, broadcast.report.joins
    assert_same_rows(out_table(shuffled), out_table(broadcast))


@pytest.mark.parametrize("how", HOWS)
def test_forced_broadcast_when_the_left_side_is_the_small_one(tmp_path, how):
    # Each left row meets matches in several right map outputs: broadcasting the left side is right
    # only where every match is output (inner, right); a semi join must still output each left row once.
    left = left_table(30, distinct=20)
    right = right_table(1500, distinct=20)
    with with_strategy("broadcast"):
        result = check_join(tmp_path, left, right, how, on="k", lparts=1, rparts=4)
    assert set(strategies(result)) == {"broadcast" if how in BROADCASTABLE else "shuffle"}, result.report.joins


def test_auto_broadcasts_a_small_side_and_shuffles_two_large_ones(tmp_path):
    left, right = left_table(1500, distinct=300), right_table(40, distinct=300)
    with dask.config.set({"engine.join.broadcast-max": "1MiB"}):
        small = check_join(tmp_path / "small", left, right, "inner", on="k")
    assert strategies(small) == ["broadcast"], small.report.joins
    with dask.config.set({"engine.join.broadcast-max": "1B"}):
        large = check_join(tmp_path / "large", left, right, "inner", on="k")
    assert strategies(large) == ["shuffle"], large.report.joins


# Which side's hot partition may be cut into pieces (the other side's rows of the partition copied to
# each piece) without changing the answer: the copied side must not be one whose unmatched rows are
# output (outer joins), and a semi or anti join must not see a left row in several pieces.
SPLITTABLE = {"left": {"inner", "left", "semi", "anti"}, "right": {"inner", "right"}}


def with_key_rows(t: pa.Table, key: int, rows: int) -> pa.Table:
    """``t`` with its first ``rows`` keys set to ``key`` (the other keys stay)."""
    k = t["k"].to_pylist()
    k[:rows] = [key] * rows
    return t.set_column(t.column_names.index("k"), "k", pa.array(k, t["k"].type))


@pytest.mark.parametrize("hot_side", ["left", "right"])
@pytest.mark.parametrize("how", HOWS)
def test_forced_skew_split_gives_the_same_answer(tmp_path, how, hot_side):
    big = dict(distinct=1000, hot=0.5, hot_key=3, nulls=0.02)
    small = dict(distinct=1000, nulls=0.02)
    if hot_side == "left":
        left, right = left_table(3000, **big), with_key_rows(right_table(400, **small), 3, 3)
    else:
        left, right = with_key_rows(left_table(400, **small), 3, 3), right_table(3000, **big)
    with dask.config.set(SKEW):
        result = check_join(tmp_path, left, right, how, on="k", partition_size="16KiB")
    assert set(strategies(result)) == {"shuffle"}, result.report.joins
    if how in SPLITTABLE[hot_side]:
        assert splits(result), result.report.joins
    else:       # the partition is too big for one task; with no side to replicate it is cut by key
        assert subpartitions(result) and not splits(result), result.report.joins


@pytest.mark.parametrize("how", ["full", "anti", "left"])
def test_forced_skew_with_null_keys_as_the_hot_value(tmp_path, how):
    # Half the left rows have a null key: they match nothing, however the partition is split.
    left = left_table(3000, distinct=1000, nulls=0.5)
    right = with_key_rows(right_table(400, distinct=1000, nulls=0.3), 3, 3)
    with dask.config.set(SKEW):
        check_join(tmp_path, left, right, how, on="k", partition_size="16KiB")


# ---------------------------------------------------------------------------------------------
# 5. Composition with later rounds and other chains


def test_join_then_map_reduce_sort(tmp_path):
    left = left_table(2000, distinct=60, nulls=0.05)
    right = right_table(120, distinct=60)
    inputs = {"l": write_input(tmp_path / "l", left, 3), "r": write_input(tmp_path / "r", right, 2)}

    def weigh(t: pa.Table) -> pa.Table:
        return t.append_column("w", pc.multiply(t["x"], t["y"]))

    job = (Job("jmrs", input="l").join("r", on="k", how="inner")
           .map(weigh)
           .reduce(by="s_right", aggs={"n": agg.count(), "w": agg.sum("w"), "top": agg.max("a")})
           .sort(by="w", descending=True))
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size=SMALL)
    expected = duck("""SELECT r.s AS s_right, count(*) AS n, sum(l.x * r.y) AS w, max(l.a) AS top
                       FROM l JOIN r ON l.k = r.k GROUP BY r.s ORDER BY w DESC""", inputs)
    got = out_table(result)
    assert_same_rows(got, expected)
    w = got["w"].to_pylist()
    assert w == sorted(w, reverse=True)


@pytest.mark.parametrize("how", ["inner", "left", "full"])
def test_other_side_has_its_own_reduce_round(tmp_path, how):
    orders = left_table(500, distinct=80).rename_columns(["k", "o_id", "price", "status"])
    lineitem = right_table(3000, distinct=100, nulls=0.02).rename_columns(["k", "l_id", "qty", "flag"])
    inputs = {"orders": write_input(tmp_path / "o", orders, 3), "lineitem": write_input(tmp_path / "li", lineitem, 3)}
    per_order = Job("per-order", input="lineitem").reduce(by="k", aggs={"qty": agg.sum("qty"), "lines": agg.count()})
    job = Job("orders", input="orders").join(per_order, on="k", how=how)
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size=SMALL)
    key = "COALESCE(o.k, p.k)" if how == "full" else "o.k"
    expected = duck(f"""WITH p AS (SELECT k, sum(qty) AS qty, count(*) AS lines FROM lineitem GROUP BY k)
                        SELECT {key} AS k, o.o_id, o.price, o.status, p.qty, p.lines
                        FROM orders o {SQL_JOIN[how]} p ON o.k = p.k""", inputs)
    assert_same_rows(out_table(result), expected)


def test_left_chain_reduces_before_joining(tmp_path):
    lineitem = right_table(3000, distinct=100).rename_columns(["k", "l_id", "qty", "flag"])
    orders = left_table(300, distinct=120).rename_columns(["k", "o_id", "price", "status"])
    inputs = {"orders": write_input(tmp_path / "o", orders, 2), "lineitem": write_input(tmp_path / "li", lineitem, 3)}
    job = (Job("per-order", input="lineitem").reduce(by="k", aggs={"qty": agg.sum("qty")})
           .join("orders", on="k", how="left"))
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size=SMALL)
    expected = duck("""WITH p AS (SELECT k, sum(qty) AS qty FROM lineitem GROUP BY k)
                       SELECT p.k, p.qty, o.o_id, o.price, o.status FROM p LEFT JOIN orders o ON p.k = o.k""",
                    inputs)
    assert_same_rows(out_table(result), expected)


@pytest.mark.parametrize("how", ["inner", "full", "anti"])
def test_self_join_reads_one_input_on_both_sides(tmp_path, how):
    left = left_table(400, distinct=60, nulls=0.05)
    inputs = {"l": write_input(tmp_path / "l", left, 3)}
    job = Job("self", input="l").join(Job("self-r", input="l").map(lambda t: t.filter(pc.less(t["a"], 200))),
                                      on="k", how=how)
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size=SMALL)
    sql = join_sql(left.column_names, left.column_names, ["k"], ["k"], how, right="r")
    con_inputs = {"l": inputs["l"], "r": inputs["l"]}
    assert_same_rows(out_table(result), duck(sql, con_inputs, {"r": "a < 200"}))


def tpch_like(seed: int = 9):
    rng = np.random.default_rng(seed)
    nc, no, nl = 150, 800, 3000
    customer = pa.table({"c_custkey": pa.array(np.arange(nc), pa.int64()),
                         "c_name": pa.array([f"cust{i}" for i in range(nc)]),
                         "c_segment": pa.array([["A", "B", "C"][i % 3] for i in range(nc)])})
    orders = pa.table({"o_orderkey": pa.array(np.arange(no), pa.int64()),
                       "o_custkey": pa.array(rng.integers(0, nc + 20, no), pa.int32()),   # some unknown customers
                       "o_total": rng.gamma(2.0, 50.0, no)})
    lineitem = pa.table({"l_orderkey": pa.array(rng.integers(0, no + 50, nl), pa.int64()),
                         "l_qty": pa.array(rng.integers(1, 50, nl), pa.int64()),
                         "l_price": rng.gamma(2.0, 10.0, nl)})
    return customer, orders, lineitem


def test_three_way_join_with_post_aggregation(tmp_path):
    customer, orders, lineitem = tpch_like()
    inputs = {"customer": write_input(tmp_path / "c", customer, 2), "orders": write_input(tmp_path / "o", orders, 3),
              "lineitem": write_input(tmp_path / "li", lineitem, 3)}
    only_ab = Job("customer", input="customer").map(lambda t: t.filter(pc.not_equal(t["c_segment"], "C")),
                                                    columns=["c_custkey", "c_name", "c_segment"])
    q3 = (only_ab
          .join(Job("orders", input="orders"), left_on="c_custkey", right_on="o_custkey")
          .join("lineitem", left_on="o_orderkey", right_on="l_orderkey", how="inner"))
    result = engine.run(q3, inputs, str(tmp_path / "rows"), partition_size=SMALL)
    expected = duck("""SELECT c.c_custkey, c.c_name, c.c_segment, o.o_orderkey, o.o_custkey, o.o_total,
                              l.l_orderkey, l.l_qty, l.l_price
                       FROM customer c JOIN orders o ON c.c_custkey = o.o_custkey
                       JOIN lineitem l ON o.o_orderkey = l.l_orderkey WHERE c.c_segment <> 'C'""", inputs)
    assert_same_rows(out_table(result), expected)

    revenue = (q3.map(lambda t: t.append_column("rev", pc.multiply(t["l_qty"], t["l_price"])))
               .reduce(by=["c_name"], aggs={"revenue": agg.sum("rev"), "lines": agg.count()})
               .sort(by="revenue", descending=True))
    result = engine.run(revenue, inputs, str(tmp_path / "revenue"), partition_size=SMALL)
    expected = duck("""SELECT c.c_name, sum(l.l_qty * l.l_price) AS revenue, count(*) AS lines
                       FROM customer c JOIN orders o ON c.c_custkey = o.o_custkey
                       JOIN lineitem l ON o.o_orderkey = l.l_orderkey WHERE c.c_segment <> 'C'
                       GROUP BY c.c_name ORDER BY revenue DESC""", inputs)
    got = out_table(result)
    assert_same_rows(got, expected)
    assert got["revenue"].to_pylist() == sorted(got["revenue"].to_pylist(), reverse=True)


def test_left_outer_three_way_keeps_unmatched_rows_of_the_first(tmp_path):
    customer, orders, lineitem = tpch_like(seed=10)
    inputs = {"customer": write_input(tmp_path / "c", customer, 2), "orders": write_input(tmp_path / "o", orders, 3),
              "lineitem": write_input(tmp_path / "li", lineitem, 3)}
    q = (Job("c", input="customer").join("orders", left_on="c_custkey", right_on="o_custkey", how="left")
         .join("lineitem", left_on="o_orderkey", right_on="l_orderkey", how="left"))
    result = engine.run(q, inputs, str(tmp_path / "out"), partition_size=SMALL)
    expected = duck("""SELECT c.c_custkey, c.c_name, c.c_segment, o.o_orderkey, o.o_custkey, o.o_total,
                              l.l_orderkey, l.l_qty, l.l_price
                       FROM customer c LEFT JOIN orders o ON c.c_custkey = o.o_custkey
                       LEFT JOIN lineitem l ON o.o_orderkey = l.l_orderkey""", inputs)
    assert_same_rows(out_table(result), expected)


def test_explain_shows_every_input_and_join(tmp_path):
    customer, orders, lineitem = tpch_like()
    inputs = {"customer": write_input(tmp_path / "c", customer, 2), "orders": write_input(tmp_path / "o", orders, 3),
              "lineitem": write_input(tmp_path / "li", lineitem, 3)}
    q3 = (Job("q3", input="customer").join("orders", left_on="c_custkey", right_on="o_custkey", how="left")
          .join("lineitem", left_on="o_orderkey", right_on="l_orderkey").reduce(by="c_name", aggs={"n": agg.count()}))
    text = q3.explain(inputs)
    for word in ("customer", "orders", "lineitem", "left join", "inner join"):
        assert word in text, text


# ---------------------------------------------------------------------------------------------
# 6. A cluster from the dask command-line tools; an input on S3


@pytest.mark.cluster
def test_join_and_cogroup_on_cli_cluster(dask_cluster, tmp_path):
    customer, orders, lineitem = tpch_like(seed=11)
    inputs = {"customer": write_input(tmp_path / "c", customer, 2), "orders": write_input(tmp_path / "o", orders, 3),
              "lineitem": write_input(tmp_path / "li", lineitem, 3)}
    factor = 3     # a closure value the workers receive by value

    def scale(t: pa.Table) -> pa.Table:
        return t.set_column(t.column_names.index("l_qty"), "l_qty", pc.multiply(t["l_qty"], factor))

    q = (Job("c", input="customer")
         .join("orders", left_on="c_custkey", right_on="o_custkey", how="full")
         .join(Job("li", input="lineitem").map(scale), left_on="o_orderkey", right_on="l_orderkey"))
    with with_strategy("shuffle"):
        result = engine.run(q, inputs, str(tmp_path / "out"), cluster=dask_cluster, partition_size=SMALL,
                            shuffle_dir=str(tmp_path / "shuffle"))
    expected = duck("""SELECT c.c_custkey, c.c_name, c.c_segment, o.o_orderkey, o.o_custkey, o.o_total,
                              l.l_orderkey, 3 * l.l_qty AS l_qty, l.l_price
                       FROM customer c FULL OUTER JOIN orders o ON c.c_custkey = o.o_custkey
                       JOIN lineitem l ON o.o_orderkey = l.l_orderkey""", inputs)
    assert_same_rows(out_table(result), expected)
    assert result.report.cluster["embedded"] is False
    assert result.report.cluster["workers"] == 2 and result.report.tasks
    engine.verify(result.output)


@pytest.mark.s3
def test_one_input_on_s3(s3, tmp_path):
    left, right = left_table(800, distinct=60, nulls=0.05), right_table(500, distinct=80)
    local = write_input(tmp_path / "l", left, 3)
    rdir = write_input(tmp_path / "r", right, 2)
    fs = s3["fs"]
    for name in sorted(os.listdir(rdir)):
        fs.put(os.path.join(rdir, name), f"{s3['bucket']}/join-input/r/{name}")
    fs.invalidate_cache()
    for how in ("left", "full"):
        job = make_join(how, on="k")
        result = engine.run(job, {"l": local, "r": s3["url"]("join-input", "r")}, str(tmp_path / f"out-{how}"),
                            storage_options=s3["storage_options"], partition_size=SMALL)
        sql = join_sql(left.column_names, right.column_names, ["k"], ["k"], how)
        assert_same_rows(out_table(result), duck(sql, {"l": local, "r": rdir}))


# ---------------------------------------------------------------------------------------------
# 7. The command line


JOB_FILE = '''
import pyarrow as pa
import pyarrow.compute as pc
from engine import Job, agg

job = (Job("cli-join", input="l")
       .join("r", on="k", how="left")
       .map(lambda t: t.append_column("xy", pc.multiply(t["x"], pc.fill_null(t["y"], 0.0)))))
'''


def cli(*args, cwd, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-join")
    left, right = left_table(600, distinct=50, nulls=0.05), right_table(300, distinct=60)
    job = d / "job.py"
    job.write_text(textwrap.dedent(JOB_FILE))
    return {"dir": d, "job": job, "l": write_input(d / "l", left, 3), "r": write_input(d / "r", right, 2),
            "left": left, "right": right}


def test_cli_runs_a_two_input_job(cli_inputs, tmp_path):
    out = tmp_path / "out"
    proc = cli("run", cli_inputs["job"], "--input", f"l={cli_inputs['l']}", "--input", f"r={cli_inputs['r']}",
               "--output", out, "--workers", "1", "--partition-size", SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sql = join_sql(cli_inputs["left"].column_names, cli_inputs["right"].column_names, ["k"], ["k"], "left")
    expected = duck(f"SELECT *, x * COALESCE(y, 0.0) AS xy FROM ({sql})", {"l": cli_inputs["l"], "r": cli_inputs["r"]})
    assert_same_rows(engine.read(str(out)), expected)


@pytest.mark.parametrize("inputs, named", [
    (["l={l}"], "r"),                                 # one input missing
    (["l={l}", "r={r}", "zz={r}"], "zz"),             # an input the job does not read
    (["l={l}", "rr={r}"], "r"),                       # a misspelt name: the missing one is named
])
def test_cli_input_name_errors(cli_inputs, tmp_path, inputs, named):
    args = []
    for spec in inputs:
        args += ["--input", spec.format(l=cli_inputs["l"], r=cli_inputs["r"])]
    out = tmp_path / "out"
    proc = cli("run", cli_inputs["job"], *args, "--output", out, "--workers", "1", cwd=tmp_path)
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"'{named}'" in proc.stderr or f'"{named}"' in proc.stderr or f" {named} " in proc.stderr \
        or f"{named}=" in proc.stderr, proc.stderr
    assert not (out / "_SUCCESS").exists()


def test_api_input_name_errors(tmp_path):
    left, right = left_table(50), right_table(50)
    inputs = {"l": write_input(tmp_path / "l", left, 1), "r": write_input(tmp_path / "r", right, 1)}
    job = make_join("inner", on="k")
    with pytest.raises(engine.EngineError, match="'r'|\"r\""):
        engine.run(job, {"l": inputs["l"]}, str(tmp_path / "o1"))
    with pytest.raises(engine.EngineError, match="zz"):
        engine.run(job, {**inputs, "zz": inputs["r"]}, str(tmp_path / "o2"))
    with pytest.raises(engine.EngineError):
        engine.run(job, inputs["l"], str(tmp_path / "o3"))           # one unnamed input for a two-input job
    for o in ("o1", "o2", "o3"):
        assert not (tmp_path / o / "_SUCCESS").exists()


def test_api_definition_errors():
    left = Job("x", input="l")
    with pytest.raises(engine.JobDefinitionError):
        left.join("r", on="k", how="sideways")
    with pytest.raises(engine.JobDefinitionError):
        left.join("r")                                              # no keys
    with pytest.raises(engine.JobDefinitionError):
        left.join("r", on="k", left_on="k", right_on="k")           # both ways at once
    with pytest.raises(engine.JobDefinitionError):
        left.join("r", left_on=["a", "b"], right_on="a")            # unequal lengths


# ---------------------------------------------------------------------------------------------
# 8. Reruns


def test_rerun_is_a_noop_and_a_changed_input_recomputes(tmp_path):
    left, right = left_table(600, distinct=40), right_table(300, distinct=40)
    inputs = {"l": write_input(tmp_path / "l", left, 3), "r": write_input(tmp_path / "r", right, 2)}
    job = make_join("full", on="k")
    out = str(tmp_path / "out")
    sql = join_sql(left.column_names, right.column_names, ["k"], ["k"], "full")
    first = engine.run(job, inputs, out, partition_size=SMALL)
    again = engine.run(job, inputs, out, partition_size=SMALL, mode="overwrite")
    assert again.skipped and again.run_id == first.run_id, again.report.message

    # Change one file of one input: the run recomputes, and its output follows the new data.
    victim = os.path.join(inputs["r"], sorted(os.listdir(inputs["r"]))[0])
    t = pq.read_table(victim)
    pq.write_table(t.set_column(t.column_names.index("k"), "k", pc.add(t["k"], 1000)), victim)
    changed = engine.run(job, inputs, out, partition_size=SMALL, mode="overwrite")
    assert not changed.skipped and changed.run_id != first.run_id
    assert_same_rows(engine.read(out), duck(sql, inputs))

    # The same files under swapped names are another input: recomputed, not skipped.
    swapped_inputs = {"l": write_input(tmp_path / "l2", left.select(["k", "a", "x", "s"]), 2),
                      "r": write_input(tmp_path / "r2", left.select(["k", "a", "x", "s"]).rename_columns(
                          ["k", "b", "y", "s"]), 2, seed=9)}
    out2 = str(tmp_path / "out2")
    a = engine.run(job, swapped_inputs, out2, partition_size=SMALL)
    b = engine.run(job, {"l": swapped_inputs["r"], "r": swapped_inputs["l"]}, out2, partition_size=SMALL,
                   mode="overwrite")
    assert not b.skipped and b.run_id != a.run_id
    sql2 = join_sql(["k", "b", "y", "s"], ["k", "a", "x", "s"], ["k"], ["k"], "full")
    assert_same_rows(engine.read(out2), duck(sql2, {"l": swapped_inputs["r"], "r": swapped_inputs["l"]}))


def test_resume_after_a_failed_join_reuses_both_sides_map_outputs(tmp_path):
    from engine.faults import Faults
    left, right = left_table(600, distinct=40), right_table(300, distinct=40)
    inputs = {"l": write_input(tmp_path / "l", left, 3), "r": write_input(tmp_path / "r", right, 2)}
    job = make_join("full", on="k")
    out = str(tmp_path / "out")
    with with_strategy("shuffle"), dask.config.set({"engine.retries.backoff-base": 0.01}):
        with pytest.raises(engine.StageFailedError):
            engine.run(job, inputs, out, partition_size=SMALL, faults=Faults(fail_attempts={("reduce", 0): 99}))
        assert not os.path.exists(os.path.join(out, "_SUCCESS"))
        result = engine.run(job, inputs, out, partition_size=SMALL, resume=True)
    maps = [s for s in result.report.stages if s.kind == "map"]
    assert sum(s.resumed for s in maps) == 5, [(s.name, s.tasks, s.resumed) for s in result.report.stages]
    sql = join_sql(left.column_names, right.column_names, ["k"], ["k"], "full")
    assert_same_rows(engine.read(out), duck(sql, inputs))


def test_changing_the_other_sides_code_recomputes(tmp_path):
    left, right = left_table(300, distinct=30), right_table(200, distinct=30)
    inputs = {"l": write_input(tmp_path / "l", left, 2), "r": write_input(tmp_path / "r", right, 2)}
    out = str(tmp_path / "out")
    keep = make_join("inner", on="k", right_map=lambda t: t)
    drop = make_join("inner", on="k", right_map=lambda t: t.filter(pc.greater(t["k"], 10)))
    first = engine.run(keep, inputs, out, partition_size=SMALL)
    second = engine.run(drop, inputs, out, partition_size=SMALL, mode="overwrite")
    assert not second.skipped and second.run_id != first.run_id
    sql = join_sql(left.column_names, right.column_names, ["k"], ["k"], "inner")
    assert_same_rows(engine.read(out), duck(sql, inputs, {"r": "k > 10"}))
