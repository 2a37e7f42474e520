"""Tests of engine.agg: aggregation results against independent one-process references, the
partial / merge / finalize laws, the value hash, and definition / schema validation."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import agg
from engine.agg import Aggregation, AggregationSet, hash_array, hash_columns
from engine.errors import JobDefinitionError, SchemaError

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Reference implementation (plain Python per group) and comparison helpers
# ---------------------------------------------------------------------------------------------

def _reference_one(a: Aggregation, rows: list[dict]) -> object:
    if a.kind == "count":
        return len(rows)
    vals = [r[a.column] for r in rows if r[a.column] is not None]
    if a.kind in ("count_distinct", "approx_distinct"):
        return len(set(vals))
    if a.kind == "top_k":
        return sorted(vals, reverse=not a.param("smallest"))[:a.param("k")]
    if not vals:
        return None
    if a.kind == "sum":
        return math.fsum(vals) if isinstance(vals[0], float) else sum(vals)
    if a.kind == "min":
        return min(vals)
    if a.kind == "max":
        return max(vals)
    if a.kind == "mean":
        return math.fsum(vals) / len(vals)
    if a.kind in ("var", "std"):
        ddof = a.param("ddof")
        if len(vals) <= ddof:
            return None
        v = float(np.var(np.asarray(vals, dtype=np.float64), ddof=ddof))
        return v if a.kind == "var" else math.sqrt(v)
    if a.kind == "first":
        return vals[0]
    if a.kind == "last":
        return vals[-1]
    if a.kind in ("median", "quantile"):
        return float(np.quantile(np.asarray(vals, dtype=np.float64), a.param("q")))
    raise AssertionError(a.kind)


def reference(table: pa.Table, keys: list[str], aggs: dict[str, Aggregation]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return {key: {name: _reference_one(a, rows) for name, a in aggs.items()}
            for key, rows in groups.items()}


def by_key(table: pa.Table, keys: list[str]) -> dict:
    rows = table.to_pylist()
    result = {tuple(r[k] for k in keys): r for r in rows}
    assert len(result) == len(rows), "finalized output has a key twice"
    return result


def close(a: Aggregation, got: object, want: object, rel: float, abs_: float,
          exact_estimates: bool = False) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if a.kind == "approx_distinct" and not exact_estimates:
        # three standard errors, plus room for register collisions among a handful of values
        return abs(got - want) <= 2 + 3 * 1.04 / math.sqrt(2 ** a.param("precision")) * want
    if isinstance(want, list):
        return len(got) == len(want) and all(close(a, g, w, rel, abs_) for g, w in zip(got, want))
    if isinstance(want, float) or isinstance(got, float):
        return math.isclose(got, want, rel_tol=rel, abs_tol=abs_)
    return got == want


def assert_matches(result: pa.Table, expected: dict, keys: list[str], aggs: dict[str, Aggregation],
                   rel: float = 1e-9, abs_: float = 0.0, exact_estimates: bool = False) -> None:
    got = by_key(result, keys)
    assert set(got) == set(expected)
    for key, want_row in expected.items():
        for name, a in aggs.items():
            g, w = got[key][name], want_row[name]
            assert close(a, g, w, rel, abs_, exact_estimates), \
                f"{name} = {a!r} for key {key}: got {g!r}, want {w!r}"


def assert_same_results(a: pa.Table, b: pa.Table, keys: list[str], aggs: dict[str, Aggregation],
                        abs_: float = 1e-6) -> None:
    """Two finalized tables agree (floats up to summation order; HLL estimates exactly, as
    merging registers is exact)."""
    assert a.schema == b.schema
    expected = {k: {n: r[n] for n in aggs} for k, r in by_key(b, keys).items()}
    assert_matches(a, expected, keys, aggs, rel=1e-9, abs_=abs_, exact_estimates=True)


# ---------------------------------------------------------------------------------------------
# Generated data
# ---------------------------------------------------------------------------------------------

def all_aggs(order_dependent: bool = True) -> dict[str, Aggregation]:
    aggs = {
        "n": agg.count(),
        "sum_f": agg.sum("f"),
        "sum_i": agg.sum("i"),
        "min_s": agg.min("s"),
        "max_i": agg.max("i"),
        "mean_f": agg.mean("f"),
        "var_f": agg.var("f"),
        "std_f": agg.std("f", ddof=0),
        "var_i": agg.var("i", ddof=2),
        "cd_s": agg.count_distinct("s"),
        "ad_s": agg.approx_distinct("s"),
        "ad_i": agg.approx_distinct("i", precision=6),
        "top_f": agg.top_k(3, "f"),
        "bot_s": agg.top_k(2, "s", smallest=True),
        "med_f": agg.median("f"),
        "q_i": agg.quantile("i", 0.3),
    }
    if order_dependent:
        aggs.update({"first_f": agg.first("f"), "last_s": agg.last("s")})
    return aggs


KEY_CHOICES = [["ks"], ["ki"], ["ks", "ki"], ["kd"], ["kd", "ki"]]


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 30) -> pa.Table:
    n = draw(st.integers(0, max_rows))

    def column(elements: st.SearchStrategy) -> list:
        return draw(st.lists(elements, min_size=n, max_size=n))

    return pa.table({
        "ks": pa.array(column(st.sampled_from(["a", "b", "", "ü-long key", None])), pa.string()),
        "ki": pa.array(column(st.sampled_from([0, 1, -7, 2**40, None])), pa.int64()),
        "f": pa.array(column(st.one_of(st.none(), st.integers(-4000, 4000).map(lambda x: x / 4))),
                      pa.float64()),
        "i": pa.array(column(st.one_of(st.none(), st.integers(-10**6, 10**6))), pa.int32()),
        "s": pa.array(column(st.one_of(st.none(), st.text(alphabet="xyz", max_size=3))),
                      pa.string()),
    })


def with_dict_key(chunk: pa.Table) -> pa.Table:
    """Add ``kd``: the string key dictionary-encoded with this chunk's own dictionary."""
    return chunk.append_column("kd", pc.dictionary_encode(chunk.column("ks")))


@st.composite
def chunked(draw: st.DrawFn) -> tuple[pa.Table, list[pa.Table]]:
    """A table, and its rows split into contiguous chunks (some possibly empty)."""
    table = draw(tables())
    cuts = sorted(draw(st.lists(st.integers(0, table.num_rows), max_size=5)))
    bounds = [0, *cuts, table.num_rows]
    chunks = [with_dict_key(table.slice(a, b - a)) for a, b in zip(bounds, bounds[1:])]
    return pa.concat_tables(chunks), chunks


def merge_tree(aset: AggregationSet, states: list[pa.Table], draw: st.DrawFn,
               ordered: bool) -> pa.Table:
    """Combine states in a random tree shape: each step merges (zero, one or two times) a group
    of states - a contiguous run when ``ordered``, any subset in any order otherwise."""
    states = list(states)
    while len(states) > 1:
        if ordered:
            i = draw(st.integers(0, len(states) - 2))
            j = draw(st.integers(i + 1, len(states) - 1))
            picked, rest_at = states[i:j + 1], i
            del states[i:j + 1]
        else:
            idx = draw(st.lists(st.integers(0, len(states) - 1), min_size=2, max_size=len(states),
                                unique=True))
            picked = [states[k] for k in idx]
            states = [s for k, s in enumerate(states) if k not in idx]
            rest_at = draw(st.integers(0, len(states)))
        combined = pa.concat_tables(picked)
        times = draw(st.integers(0, 2))
        for _ in range(times):
            combined = aset.merge(combined)
        states.insert(rest_at, combined)
    return states[0]


# ---------------------------------------------------------------------------------------------
# Laws of partial / merge / finalize
# ---------------------------------------------------------------------------------------------

@given(data=st.data(), split=chunked(), keys=st.sampled_from(KEY_CHOICES))
def test_ordered_merge_tree_equals_whole(data: st.DataObject, split, keys: list[str]) -> None:
    whole, chunks = split
    aggs = all_aggs()
    aset = AggregationSet(keys, aggs)
    partials = [aset.partial(c) for c in chunks]
    for p, c in zip(partials, chunks):
        assert p.schema == aset.state_schema(c.schema)
    state = merge_tree(aset, partials, data.draw, ordered=True)
    result = aset.finalize(state)
    expected = aset.aggregate(whole)
    assert result.schema == aset.output_schema(whole.schema)
    assert_same_results(result, expected, keys, aggs)
    decoded = whole.set_column(whole.schema.get_field_index("kd"), "kd",
                               whole.column("kd").cast(pa.string()))
    assert_matches(result, reference(decoded, keys, aggs), keys, aggs, rel=1e-9, abs_=1e-6)


@given(data=st.data(), split=chunked(), keys=st.sampled_from(KEY_CHOICES))
def test_merge_is_commutative(data: st.DataObject, split, keys: list[str]) -> None:
    whole, chunks = split
    aggs = all_aggs(order_dependent=False)
    aset = AggregationSet(keys, aggs)
    partials = [aset.partial(c) for c in chunks]
    order = data.draw(st.permutations(range(len(partials))))
    state = merge_tree(aset, [partials[k] for k in order], data.draw, ordered=False)
    assert_same_results(aset.finalize(state), aset.aggregate(whole), keys, aggs)


@given(split=chunked(), keys=st.sampled_from(KEY_CHOICES))
def test_merge_is_idempotent_and_keeps_schema(split, keys: list[str]) -> None:
    whole, chunks = split
    aset = AggregationSet(keys, all_aggs())
    partial = aset.partial(whole)
    assert aset.merge(partial).equals(partial)
    state = pa.concat_tables([aset.partial(c) for c in chunks])
    once = aset.merge(state)
    assert once.schema == state.schema
    twice = aset.merge(once)
    assert twice.schema == once.schema
    assert twice.equals(once)
    key_rows = once.select(keys).to_pylist()
    assert len({tuple(r.values()) for r in key_rows}) == once.num_rows


@given(split=chunked())
def test_merge_of_several_tables_and_sliced_states(split) -> None:
    whole, chunks = split
    aset = AggregationSet(["ks", "ki"], all_aggs())
    partials = [aset.partial(c) for c in chunks]
    big = pa.concat_tables(partials)
    # states that are slices of a larger state table, and a list of tables, merge alike
    half = big.num_rows // 2
    sliced = aset.merge([big.slice(0, half), big.slice(half)])
    assert sliced.equals(aset.merge(big))
    assert_same_results(aset.finalize(sliced), aset.aggregate(whole), ["ks", "ki"], all_aggs())


def test_empty_tables() -> None:
    schema = pa.schema([("ks", pa.string()), ("ki", pa.int64()), ("f", pa.float64()),
                        ("i", pa.int32()), ("s", pa.string())])
    empty = schema.empty_table()
    aset = AggregationSet(["ks", "ki"], all_aggs())
    state = aset.partial(empty)
    assert state.num_rows == 0
    assert state.schema == aset.state_schema(schema)
    assert aset.merge(state).schema == state.schema
    out = aset.finalize(state)
    assert out.num_rows == 0 and out.schema == aset.output_schema(schema)
    assert aset.aggregate(empty).schema == out.schema
    # an empty state merged with a real one changes nothing
    table = pa.table({"ks": ["a", None], "ki": [1, 1], "f": [1.0, 2.0], "i": [3, None],
                      "s": ["x", "y"]}, schema=schema)
    real = aset.partial(table)
    assert aset.merge(pa.concat_tables([state, real, state])).equals(aset.merge(real))
    # a table without chunks
    no_chunks = pa.Table.from_batches([], schema=schema)
    assert aset.partial(no_chunks).schema == state.schema


def test_global_aggregation_without_keys() -> None:
    t = pa.table({"v": [1, 2, None, 4]})
    aset = AggregationSet([], {"n": agg.count(), "s": agg.sum("v"), "m": agg.median("v")})
    assert aset.aggregate(t).to_pylist() == [{"n": 4, "s": 7, "m": 2.0}]
    assert aset.aggregate(t.slice(0, 0)).num_rows == 0
    parts = pa.concat_tables([aset.partial(t.slice(0, 2)), aset.partial(t.slice(2))])
    assert aset.finalize(parts).to_pylist() == [{"n": 4, "s": 7, "m": 2.0}]


# ---------------------------------------------------------------------------------------------
# Results against independent references on larger data
# ---------------------------------------------------------------------------------------------

def random_table(n: int = 20_000, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    ks = rng.choice(np.array(["alpha", "beta", "gamma", "delta", "ε"], dtype=object), n)
    ks_null = rng.random(n) < 0.05
    ki = rng.integers(0, 9, n)
    f = rng.normal(50, 100, n)
    i = rng.integers(-1000, 1000, n)
    s = rng.integers(0, 400, n).astype(str).astype(object)
    return pa.table({
        "ks": pa.array(ks, pa.string(), mask=ks_null),
        "ki": pa.array(ki, pa.int64(), mask=rng.random(n) < 0.03),
        "f": pa.array(f, pa.float64(), mask=rng.random(n) < 0.1),
        "i": pa.array(i, pa.int32(), mask=rng.random(n) < 0.1),
        "s": pa.array(s, pa.string(), mask=rng.random(n) < 0.1),
    })


def test_against_pyarrow_group_by() -> None:
    t = random_table()
    keys = ["ks", "ki"]
    aggs = {"n": agg.count(), "sum_f": agg.sum("f"), "sum_i": agg.sum("i"), "min_s": agg.min("s"),
            "max_f": agg.max("f"), "mean_i": agg.mean("i"), "var_f": agg.var("f"),
            "std_f": agg.std("f", ddof=0), "cd": agg.count_distinct("s"),
            "first_s": agg.first("s"), "last_f": agg.last("f")}
    aset = AggregationSet(keys, aggs)
    # several chunks merged, as the engine would do it
    state = pa.concat_tables([aset.partial(t.slice(a, 3000)) for a in range(0, t.num_rows, 3000)])
    got = by_key(aset.finalize(aset.merge(state)), keys)
    ref = t.group_by(keys, use_threads=False).aggregate([
        ([], "count_all"), ("f", "sum"), ("i", "sum"), ("s", "min"), ("f", "max"), ("i", "mean"),
        ("f", "variance", pc.VarianceOptions(ddof=1)), ("f", "stddev", pc.VarianceOptions(ddof=0)),
        ("s", "count_distinct"), ("s", "first"), ("f", "last")])
    names = ["n", "sum_f", "sum_i", "min_s", "max_f", "mean_i", "var_f", "std_f", "cd",
             "first_s", "last_f"]
    columns = ["count_all", "f_sum", "i_sum", "s_min", "f_max", "i_mean", "f_variance",
               "f_stddev", "s_count_distinct", "s_first", "f_last"]
    assert len(got) == ref.num_rows
    for row in ref.to_pylist():
        mine = got[(row["ks"], row["ki"])]
        for name, col in zip(names, columns):
            want = row[col]
            if isinstance(want, float):
                assert math.isclose(mine[name], want, rel_tol=1e-9), (name, mine[name], want)
            else:
                assert mine[name] == want, (name, mine[name], want)


def test_variance_accuracy_against_pc_variance() -> None:
    rng = np.random.default_rng(3)
    n = 50_000
    # a large mean and a small spread: the hard case for naive sum-of-squares formulas
    values = 1e6 + rng.normal(0, 1e-2, n)
    g = rng.integers(0, 5, n)
    t = pa.table({"g": g, "v": values})
    aset = AggregationSet(["g"], {"var": agg.var("v"), "std": agg.std("v", ddof=0)})
    state = pa.concat_tables([aset.partial(t.slice(a, 997)) for a in range(0, n, 997)])
    for _ in range(2):  # merge in two rounds of different shapes
        state = aset.merge(state.take(np.random.default_rng(1).permutation(state.num_rows)))
    got = by_key(aset.finalize(state), ["g"])
    for key in range(5):
        vals = pa.array(values[g == key])
        want_var = pc.variance(vals, ddof=1).as_py()
        want_std = pc.stddev(vals, ddof=0).as_py()
        assert math.isclose(got[(key,)]["var"], want_var, rel_tol=1e-9)
        assert math.isclose(got[(key,)]["std"], want_std, rel_tol=1e-9)


def test_against_duckdb() -> None:
    t = random_table(seed=11)
    keys = ["ks", "ki"]
    aggs = {"n": agg.count(), "sum_i": agg.sum("i"), "mean_f": agg.mean("f"),
            "var_f": agg.var("f"), "std_i": agg.std("i"), "vp_f": agg.var("f", ddof=0),
            "cd": agg.count_distinct("s"), "med_f": agg.median("f"), "q_i": agg.quantile("i", 0.9),
            "q0": agg.quantile("f", 0.0), "q1": agg.quantile("f", 1.0),
            "min_f": agg.min("f"), "max_s": agg.max("s")}
    aset = AggregationSet(keys, aggs)
    state = pa.concat_tables([aset.partial(t.slice(a, 4001)) for a in range(0, t.num_rows, 4001)])
    got = by_key(aset.finalize(state), keys)
    con = duckdb.connect()
    con.register("t", t)
    ref = con.sql("""
        select ks, ki, count(*) as n, sum(i) as sum_i, avg(f) as mean_f, var_samp(f) as var_f,
               stddev_samp(i) as std_i, var_pop(f) as vp_f, count(distinct s) as cd,
               quantile_cont(f, 0.5) as med_f, quantile_cont(i, 0.9) as q_i,
               quantile_cont(f, 0.0) as q0, quantile_cont(f, 1.0) as q1,
               min(f) as min_f, max(s) as max_s
        from t group by ks, ki""").to_arrow_table()
    assert len(got) == ref.num_rows
    for row in ref.to_pylist():
        mine = got[(row["ks"], row["ki"])]
        for name in aggs:
            want = row[name]
            if isinstance(want, float):
                assert math.isclose(mine[name], want, rel_tol=1e-9), (name, mine[name], want)
            else:
                assert mine[name] == want, (name, mine[name], want)


def test_quantiles_against_numpy() -> None:
    rng = np.random.default_rng(5)
    n = 5000
    g = rng.integers(0, 7, n)
    v = rng.exponential(10, n)
    t = pa.table({"g": g, "v": v})
    qs = [0.0, 0.1, 0.25, 0.5, 0.5001, 0.9, 0.99, 1.0]
    aggs = {f"q{k}": agg.quantile("v", q) for k, q in enumerate(qs)} | {"med": agg.median("v")}
    aset = AggregationSet(["g"], aggs)
    state = pa.concat_tables([aset.partial(t.slice(a, 333)) for a in range(0, n, 333)])
    got = by_key(aset.finalize(aset.merge(state)), ["g"])
    for key in range(7):
        vals = v[g == key]
        for k, q in enumerate(qs):
            assert math.isclose(got[(key,)][f"q{k}"], float(np.quantile(vals, q)), rel_tol=1e-12)
        assert math.isclose(got[(key,)]["med"], float(np.median(vals)), rel_tol=1e-12)


def test_top_k_and_first_last_details() -> None:
    t = pa.table({"k": ["a", "a", "a", "b", "b", "c", "a"],
                  "v": [3, None, 7, 1, 1, None, 5],
                  "s": [None, "q", "p", "z", None, None, "r"]})
    aset = AggregationSet(["k"], {"top": agg.top_k(2, "v"), "low": agg.top_k(5, "s", smallest=True),
                                  "f": agg.first("s"), "l": agg.last("v")})
    out = by_key(aset.aggregate(t), ["k"])
    assert out[("a",)] == {"k": "a", "top": [7, 5], "low": ["p", "q", "r"], "f": "q", "l": 5}
    assert out[("b",)] == {"k": "b", "top": [1, 1], "low": ["z"], "f": "z", "l": 1}
    assert out[("c",)] == {"k": "c", "top": [], "low": [], "f": None, "l": None}
    # first / last follow the concatenation order of states
    s1, s2 = aset.partial(t.slice(0, 3)), aset.partial(t.slice(3))
    forward = by_key(aset.finalize(aset.merge([s1, s2])), ["k"])
    backward = by_key(aset.finalize(aset.merge([s2, s1])), ["k"])
    assert forward[("a",)]["l"] == 5 and backward[("a",)]["l"] == 7
    assert forward[("a",)]["f"] == "q" and backward[("a",)]["f"] == "r"


def test_output_types_and_order() -> None:
    t = pa.table({
        "k": pa.array(["a", "b"]).dictionary_encode(),
        "i8": pa.array([1, 2], pa.int8()),
        "u16": pa.array([1, 2], pa.uint16()),
        "f32": pa.array([1.5, 2.5], pa.float32()),
        "dec": pa.array([decimal.Decimal("1.25"), decimal.Decimal("2.50")], pa.decimal128(10, 2)),
        "ds": pa.array(["x", "y"]).dictionary_encode(),
        "d": pa.array([datetime.date(2024, 1, 2), None], pa.date32()),
    })
    aggs = {"n": agg.count(), "s8": agg.sum("i8"), "su": agg.sum("u16"), "sf": agg.sum("f32"),
            "sd": agg.sum("dec"), "mean": agg.mean("dec"), "mind": agg.min("d"),
            "maxs": agg.max("ds"), "top": agg.top_k(1, "d"), "cd": agg.count_distinct("ds"),
            "ad": agg.approx_distinct("d"), "med": agg.median("i8"), "v": agg.var("f32")}
    aset = AggregationSet(["k"], aggs)
    out = aset.aggregate(t)
    assert out.schema.names == ["k", *aggs]
    types = {f.name: f.type for f in out.schema}
    assert types["k"] == t.schema.field("k").type
    assert types["n"] == pa.int64() and types["s8"] == pa.int64() and types["su"] == pa.uint64()
    assert types["sf"] == pa.float64() and pa.types.is_decimal(types["sd"])
    assert types["mean"] == pa.float64() and types["mind"] == pa.date32()
    assert types["maxs"] == pa.string() and types["top"] == pa.list_(pa.date32())
    assert types["cd"] == pa.int64() and types["ad"] == pa.int64()
    assert types["med"] == pa.float64() and types["v"] == pa.float64()
    assert out.to_pylist()[0]["sd"] == decimal.Decimal("1.25")
    assert out.to_pylist()[1]["mind"] is None


def test_key_types() -> None:
    t = pa.table({
        "d": pa.array([datetime.date(2024, 1, 1), None, datetime.date(2024, 1, 1), None],
                      pa.date32()),
        "b": pa.array([True, False, True, None]),
        "v": [1, 2, 3, 4],
    })
    aset = AggregationSet(["d", "b"], {"s": agg.sum("v")})
    out = aset.aggregate(t).to_pylist()
    assert out == [{"d": datetime.date(2024, 1, 1), "b": True, "s": 4},
                   {"d": None, "b": False, "s": 2}, {"d": None, "b": None, "s": 4}]
    # a record batch works too, and output keeps first-appearance order of keys
    assert aset.aggregate(t.to_batches()[0]).to_pylist() == out


def test_approx_distinct_accuracy() -> None:
    n = 100_000
    ints = np.arange(n, dtype=np.int64) * 7919
    strs = pa.array([f"user-{k}" for k in range(n)])
    for values, precision in [(pa.array(ints), 12), (strs, 12), (pa.array(ints), 14)]:
        # every value twice, in differently cut chunks
        t = pa.table({"g": np.zeros(2 * n, dtype=np.int64),
                      "v": pa.concat_arrays([values, values])})
        aset = AggregationSet(["g"], {"d": agg.approx_distinct("v", precision=precision)})
        state = pa.concat_tables([aset.partial(t.slice(a, 30_011))
                                  for a in range(0, 2 * n, 30_011)])
        est = aset.finalize(state).column("d")[0].as_py()
        bound = 3 * 1.04 / math.sqrt(2 ** precision)
        assert abs(est - n) / n < bound, (est, precision)
    # small cardinalities: linear counting, far tighter than the HLL bound for small counts
    for k in (1, 10, 100, 1000):
        t = pa.table({"g": [0] * k, "v": np.arange(k)})
        aset = AggregationSet(["g"], {"d": agg.approx_distinct("v")})
        est = aset.aggregate(t).column("d")[0].as_py()
        assert abs(est - k) <= 1 + 3 * 1.04 / math.sqrt(4096) * k, (est, k)


# ---------------------------------------------------------------------------------------------
# Aggregation objects and validation
# ---------------------------------------------------------------------------------------------

def test_aggregation_objects() -> None:
    a = agg.quantile("x", 0.25)
    assert a.kind == "quantile" and a.column == "x" and a.param("q") == 0.25
    assert a.input_columns == ("x",) and agg.count().input_columns == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.column = "y"  # type: ignore[misc]
    assert a == agg.quantile("x", 0.25) and hash(a) == hash(agg.quantile("x", 0.25))
    every = [agg.count(), agg.sum("x"), agg.min("x"), agg.max("x"), agg.mean("x"), agg.var("x"),
             agg.var("x", ddof=0), agg.std("x"), agg.count_distinct("x"), agg.approx_distinct("x"),
             agg.approx_distinct("x", 14), agg.top_k(3, "x"), agg.top_k(3, "x", smallest=True),
             agg.first("x"), agg.last("x"), agg.median("x"), agg.quantile("x", 0.5)]
    tokens = [x.token() for x in every]
    assert len(set(tokens)) == len(tokens)
    assert tokens == [x.token() for x in pickle.loads(pickle.dumps(every))]
    assert agg.top_k(3, "x").param("k") == 3 and repr(agg.sum("x")) == "sum('x')"
    s1 = AggregationSet(["k"], {"a": agg.sum("x"), "b": agg.count()})
    s2 = pickle.loads(pickle.dumps(s1))
    assert s1 == s2 and s1.token() == s2.token()
    assert s1.token() != AggregationSet(["k"], {"b": agg.count(), "a": agg.sum("x")}).token()
    assert s1.input_columns == ["k", "x"]


@pytest.mark.parametrize("make", [
    lambda: agg.quantile("x", 1.5), lambda: agg.quantile("x", "0.5"), lambda: agg.top_k(0, "x"),
    lambda: agg.approx_distinct("x", precision=20), lambda: agg.var("x", ddof=-1),
    lambda: agg.sum(""), lambda: agg.mean(3), lambda: agg.top_k(2, "x", smallest="yes"),
])
def test_bad_parameters(make) -> None:
    with pytest.raises(JobDefinitionError):
        make()


def test_definition_errors() -> None:
    with pytest.raises(JobDefinitionError, match="no aggregations"):
        AggregationSet(["k"], {})
    with pytest.raises(JobDefinitionError,
                       match=r"unknown aggregation 'sum'.*engine\.agg\.count\(\)"):
        AggregationSet(["k"], {"total": "sum"})
    with pytest.raises(JobDefinitionError, match="unknown aggregation"):
        AggregationSet(["k"], {"total": ("v", "sum")})
    with pytest.raises(JobDefinitionError, match="'k'.*group key"):
        AggregationSet(["k"], {"k": agg.count()})
    with pytest.raises(JobDefinitionError, match="twice"):
        AggregationSet(["k", "k"], {"n": agg.count()})
    with pytest.raises(JobDefinitionError, match="clash"):
        AggregationSet(["x__sum"], {"x": agg.sum("v")})


def test_schema_errors_name_the_column() -> None:
    schema = pa.schema([("k", pa.string()), ("name", pa.string()), ("v", pa.int64()),
                        ("tags", pa.list_(pa.string()))])
    with pytest.raises(SchemaError, match=r"'missing'.*k, name, v, tags"):
        AggregationSet(["missing"], {"n": agg.count()}).validate(schema)
    with pytest.raises(SchemaError, match=r"'nope'.*k, name, v, tags"):
        AggregationSet(["k"], {"s": agg.sum("nope")}).validate(schema)
    for make in (agg.sum, agg.mean, agg.var, agg.std, agg.median):
        with pytest.raises(SchemaError, match=r"'name'.*string"):
            AggregationSet(["k"], {"out": make("name")}).validate(schema)
    with pytest.raises(SchemaError, match=r"'name'.*string"):
        AggregationSet(["k"], {"out": agg.quantile("name", 0.5)}).validate(schema)
    with pytest.raises(SchemaError, match="'tags'"):
        AggregationSet(["tags"], {"n": agg.count()}).validate(schema)
    with pytest.raises(SchemaError, match="'tags'"):
        AggregationSet(["k"], {"m": agg.max("tags")}).validate(schema)
    AggregationSet(["k"], {"m": agg.max("name"), "s": agg.sum("v")}).validate(schema)
    # partial validates too, and merge / finalize reject tables that are not states
    t = pa.table({"k": ["a"], "v": [1]})
    with pytest.raises(SchemaError, match="'w'"):
        AggregationSet(["k"], {"s": agg.sum("w")}).partial(t)
    with pytest.raises(SchemaError, match="state table"):
        AggregationSet(["k"], {"s": agg.sum("v")}).merge(t)
    with pytest.raises(SchemaError, match="state table"):
        AggregationSet(["k"], {"s": agg.sum("v")}).finalize(t)


# ---------------------------------------------------------------------------------------------
# hash_array / hash_columns
# ---------------------------------------------------------------------------------------------

GOLDEN_INTS = [16294208416658607535, 10451216379200822465, 16490336266968443936,
               2296115805719413641, 17744430205848883029]
GOLDEN_STRS = [4482065062478790161, 2861530198796203864, 17626076617772116075,
               17744430205848883029]


def test_hash_known_values() -> None:
    ints = hash_array(pa.array([0, 1, -1, 2**40, None], pa.int64()))
    strs = hash_array(pa.array(["", "a", "hello world", None]))
    assert ints.dtype == np.uint64
    assert ints.tolist() == GOLDEN_INTS
    assert strs.tolist() == GOLDEN_STRS


def test_hash_stable_across_processes() -> None:
    code = ("import pyarrow as pa; from engine.agg import hash_array; "
            "print(hash_array(pa.array([0, 1, -1, 2**40, None], pa.int64())).tolist()); "
            "print(hash_array(pa.array(['', 'a', 'hello world', None])).tolist())")
    env = dict(os.environ, PYTHONHASHSEED="12345",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO_ROOT, check=True).stdout.splitlines()
    assert out == [str(GOLDEN_INTS), str(GOLDEN_STRS)]


def _hash_samples() -> list[pa.Array]:
    rng = np.random.default_rng(2)
    n = 1000
    mask = rng.random(n) < 0.1
    words = np.array(["", "a", "bb", "héllo", "x" * 40, "tail"], dtype=object)
    strings = pa.array(rng.choice(words, n), pa.string(), mask=mask)
    return [
        pa.array(rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64), mask=mask),
        pa.array(rng.integers(0, 200, n).astype(np.uint8), pa.uint8(), mask=mask),
        pa.array(rng.normal(size=n), mask=mask),
        pa.array(rng.random(n).astype(np.float32), pa.float32()),
        pa.array(rng.random(n) < 0.5, mask=mask),
        strings,
        strings.cast(pa.large_string()),
        strings.cast(pa.binary()),
        strings.dictionary_encode(),
        pa.array(rng.integers(0, 20000, n).astype(np.int32), pa.date32()),
        pa.array(rng.integers(0, 2**40, n), pa.timestamp("us"), mask=mask),
        pa.array([decimal.Decimal(int(k)) / 100 for k in rng.integers(-10**6, 10**6, n)],
                 pa.decimal128(12, 2)),
        pa.array([bytes([int(b)]) * 3 for b in rng.integers(0, 255, n)], pa.binary(3)),
        pa.StructArray.from_arrays([pa.array(rng.integers(0, 5, n)), strings], names=["a", "b"]),
        pa.nulls(n),
    ]


@pytest.mark.parametrize("arr", _hash_samples(), ids=lambda a: str(a.type))
def test_hash_independent_of_layout(arr: pa.Array) -> None:
    full = hash_array(arr)
    assert full.dtype == np.uint64 and len(full) == len(arr)
    assert np.array_equal(full, hash_array(arr))
    chunked = pa.chunked_array([arr.slice(0, 100), arr.slice(100, 1), arr.slice(101, 0),
                                arr.slice(101)])
    assert np.array_equal(full, hash_array(chunked))
    for start, length in [(1, 500), (333, 667), (999, 1), (5, 0)]:
        assert np.array_equal(full[start:start + length], hash_array(arr.slice(start, length)))
    # a copy with fresh buffers (offsets start at 0) hashes alike
    copy = pa.concat_arrays([arr.slice(7, 100)]) if not pa.types.is_dictionary(arr.type) \
        else arr.slice(7, 100)
    assert np.array_equal(full[7:107], hash_array(copy))
    # nulls all hash to one constant
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if (~valid).any():
        assert len(set(full[~valid].tolist())) == 1


def test_hash_equal_values_hash_equal() -> None:
    five = [pa.array([5], t) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                                       pa.uint8(), pa.uint32(), pa.uint64())]
    assert len({int(hash_array(a)[0]) for a in five}) == 1
    text = ["a", "bc", None, ""]
    variants = [pa.array(text), pa.array(text, pa.large_string()),
                pa.array([None if x is None else x.encode() for x in text], pa.binary()),
                pa.array(text).dictionary_encode(), pa.array(text, pa.string_view())]
    for v in variants[1:]:
        assert np.array_equal(hash_array(variants[0]), hash_array(v))
    floats = hash_array(pa.array([0.0, -0.0, float("nan"), -float("nan")]))
    assert floats[0] == floats[1] and floats[2] == floats[3]
    assert hash_array(pa.array([1.5], pa.float32()))[0] == hash_array(pa.array([1.5]))[0]
    assert hash_array(pa.array([""]))[0] != hash_array(pa.array([0]))[0]
    # a string longer than the hashing block, at different offsets
    long = "z" * 300_000
    a = pa.array(["p", long, "q"])
    b = pa.array([long])
    assert hash_array(a)[1] == hash_array(b)[0] == hash_array(a.slice(1, 1))[0]
    assert hash_array(pa.array([long[:-1] + "y"]))[0] != hash_array(b)[0]


def test_hash_distribution() -> None:
    n = 1 << 18
    buckets = 256
    for arr in (pa.array(np.arange(n)), pa.array([f"key-{k}" for k in range(n)])):
        h = hash_array(arr)
        assert len(np.unique(h)) == n
        for part in (h % np.uint64(buckets), h >> np.uint64(56)):
            counts = np.bincount(part.astype(np.int64), minlength=buckets)
            expected = n / buckets
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            # chi-square with 255 degrees of freedom: mean 255, sd ~22.6
            assert chi2 < 255 + 6 * 22.6, chi2


def test_hash_columns() -> None:
    t = pa.table({"a": ["x", "y", "x", None], "b": [1, 1, 1, 2]})
    assert np.array_equal(hash_columns(t, ["a"]), hash_array(t.column("a")))
    h = hash_columns(t, ["a", "b"])
    assert h[0] == h[2] and len(set(h.tolist())) == 3
    assert not np.array_equal(h, hash_columns(t, ["b", "a"]))
    rechunked = pa.concat_tables([t.slice(0, 1), t.slice(1)])
    assert np.array_equal(h, hash_columns(rechunked, ["a", "b"]))
    assert len(hash_columns(t, [])) == 4
    with pytest.raises(SchemaError, match="'c'"):
        hash_columns(t, ["c"])
    with pytest.raises(SchemaError):
        hash_array(pa.array([[1, 2], [3]]))
