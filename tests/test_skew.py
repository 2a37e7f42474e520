"""Skew-aware repartitioning: correctness on uniform, Zipf and one-hot-key data, with skew handling on and off."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from conftest import assert_tables_close, write_parts
from engine import Job, agg
from engine.commit import load_manifest
from engine.datasets import filesystem
from engine.skew import coalesce, plan_reducers


def median_per_key(t: pa.Table) -> pa.Table:
    """A reduce that cannot be combined: the exact median of every key's values."""
    r = agg.AggregationSet(["k"], {"med": agg.median("v"), "n": agg.count()}).aggregate(t)
    return r


MEDIAN = Job("median").reduce(median_per_key, by="k")
SUMS = Job("sums").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})


def keyed(n: int, dist: str, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    if dist == "uniform":
        k = rng.integers(0, 2000, n)
    elif dist.startswith("zipf"):     # finite Zipf over 100k keys: p(k) ~ 1 / k^s (s = 1.0 allowed)
        weights = 1.0 / np.arange(1, 100_001) ** float(dist[4:])
        k = rng.choice(100_000, size=n, p=weights / weights.sum())
    elif dist == "half":         # one key holds half of all rows
        k = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 5000, n))
    elif dist == "top10":        # the ten heaviest keys hold half the rows
        k = np.where(rng.random(n) < 0.5, rng.integers(0, 10, n), rng.integers(10, 20000, n))
    else:
        raise ValueError(dist)
    return pa.table({"k": pa.array(k, pa.int64()), "v": rng.normal(0, 1, n)})


def reference(t: pa.Table) -> pa.Table:
    return median_per_key(t)


@pytest.mark.parametrize("dist", ["uniform", "zipf1.0", "zipf1.5", "half", "top10"])
@pytest.mark.parametrize("skew", [True, False])
def test_non_combinable_reduce_equals_reference(tmp_path, dist, skew):
    t = keyed(60_000, dist)
    write_parts(tmp_path / "in", t, parts=3)
    result = MEDIAN.run(str(tmp_path / "in"), str(tmp_path / "out"), skew=skew, partition_size="64KiB")
    assert_tables_close(engine.read(str(tmp_path / "out")), reference(t), "k")
    isolated = [d for d in result.report.skew if d["action"] == "isolate"]
    if not skew or dist == "uniform":
        assert not isolated
    if skew and dist in ("half", "top10"):
        assert isolated, result.report.skew
        hot = {tuple(d["key"]) for d in isolated}
        assert (0,) in hot
        assert all("get a reduce task of their own" in d["reason"] and d["bytes"] > 0 for d in isolated)


@pytest.mark.parametrize("dist", ["zipf1.2", "half"])
def test_combinable_aggregation_equals_reference_with_skew(tmp_path, dist):
    t = keyed(60_000, dist, seed=3)
    write_parts(tmp_path / "in", t, parts=4)
    SUMS.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="16KiB")
    ref = t.group_by("k").aggregate([([], "count_all"), ("v", "sum")])
    ref = pa.table({"k": ref["k"], "n": ref["count_all"], "s": ref["v_sum"]})
    assert_tables_close(engine.read(str(tmp_path / "out")), ref, "k")


@settings(max_examples=10)
@given(seed=st.integers(0, 1000), hot=st.floats(0.0, 0.9), keys=st.integers(1, 3000), parts=st.integers(1, 4),
       skew=st.booleans())
def test_property_random_key_distributions(tmp_path_factory, seed, hot, keys, parts, skew):
    rng = np.random.default_rng(seed)
    n = 20_000
    k = np.where(rng.random(n) < hot, rng.integers(0, 3, n), rng.integers(0, keys, n))
    t = pa.table({"k": pa.array(k, pa.int64()), "v": rng.normal(0, 1, n)})
    d = tmp_path_factory.mktemp("skewprop")
    write_parts(d / "in", t, parts=parts, seed=seed)
    MEDIAN.run(str(d / "in"), str(d / "out"), skew=skew, partition_size="32KiB")
    assert_tables_close(engine.read(str(d / "out")), reference(t), "k")


def test_planner_isolates_hot_keys_and_keeps_every_row():
    rows = [100, 100, 10_000, 100, 0, 100]
    sizes = [r * 10 for r in rows]
    heavy = [((7,), 2, 6000), ((8,), 2, 3000), ((9,), 0, 50)]
    plan = plan_reducers(rows, sizes, heavy, target=20_000, min_tasks=2, combinable=False)
    only = [a for a in plan.assignments if a.only]
    assert [a.only for a in only] == [((7,),), ((8,),)]
    rest = [a for a in plan.assignments if a.exclude]
    assert len(rest) == 1 and set(rest[0].exclude) == {(7,), (8,)}
    covered = sorted({p for a in plan.assignments for p in range(a.start, a.stop)})
    assert {0, 1, 2, 3, 5} <= set(covered)                 # every non-empty partition is read
    assert sum(a.rows for a in plan.assignments) == sum(rows)
    assert plan_reducers(rows, sizes, heavy, target=20_000, enabled=False).assignments == \
        coalesce(rows, sizes, 20_000).assignments
    # A combinable round spreads each key larger than the target over shares (merged afterwards).
    combined = plan_reducers(rows, sizes, heavy, target=20_000, min_tasks=2, combinable=True)
    shares = [(a.only, a.share) for a in combined.assignments if a.only]
    assert shares == [(((7,),), (0, 3)), (((7,),), (1, 3)), (((7,),), (2, 3)), (((8,),), (0, 2)), (((8,),), (1, 2))]
    assert sum(a.rows for a in combined.assignments) <= sum(rows)


def test_planner_packs_medium_hot_keys_and_sub_buckets_the_rest():
    # One partition of 12 targets: six hot keys of 0.4 target each, the rest light keys.
    rows = [1_000, 120_000, 1_000, 1_000]
    sizes = [r * 10 for r in rows]
    heavy = [((k,), 1, 4_000) for k in range(6)]
    plan = plan_reducers(rows, sizes, heavy, target=100_000, min_tasks=2)
    only = [a for a in plan.assignments if a.only]
    assert sorted(len(a.only) for a in only) == [2, 2, 2]           # packed two per task (0.8 target)
    assert all(a.nbytes <= 100_000 for a in only)
    subs = [a for a in plan.assignments if a.sub]
    assert len(subs) == 10 and sorted(a.sub[0] for a in subs) == list(range(10))
    assert all(set(a.exclude) == {(k,) for k in range(6)} for a in subs)
    assert max(a.nbytes for a in plan.assignments) <= 100_000
    assert any(d["action"] == "split" and d["sub_buckets"] == 10 for d in plan.decisions)
    # Partitions beside the oversized one are still coalesced.
    assert [(a.start, a.stop) for a in plan.assignments if not a.only and not a.sub] == [(0, 1), (2, 4)]


@pytest.mark.parametrize("combinable", [True, False])
def test_oversized_partitions_are_split_and_keep_every_row(tmp_path, combinable):
    import dask
    t = keyed(60_000, "top10", seed=9)
    write_parts(tmp_path / "in", t, parts=3)
    job = SUMS if combinable else MEDIAN
    # Two hash partitions for ~1 MiB of map output against a 64 KiB target: both are oversized.
    with dask.config.set({"engine.shuffle.min-partitions": 2, "engine.shuffle.max-partitions": 2}):
        result = job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="64KiB")
        off = job.run(str(tmp_path / "in"), str(tmp_path / "off"), partition_size="64KiB", skew=False)
    if combinable:
        ref = t.group_by("k").aggregate([([], "count_all"), ("v", "sum")])
        ref = pa.table({"k": ref["k"], "n": ref["count_all"], "s": ref["v_sum"]})
    else:
        ref = reference(t)
    assert_tables_close(engine.read(str(tmp_path / "out")), ref, "k")
    assert_tables_close(engine.read(str(tmp_path / "off")), ref, "k")
    actions = {d["action"] for d in result.report.skew}
    assert "split" in actions, result.report.skew
    if not combinable:
        assert "isolate" in actions
    plan = next(d for d in result.report.skew if d["action"] == "plan")
    plan_off = next(d for d in off.report.skew if d["action"] == "plan")
    assert plan["tasks_after"]["count"] > plan_off["tasks_after"]["count"] == 2
    assert plan["tasks_after"]["max"] < plan_off["tasks_after"]["max"] / 2


# ---------------------------------------------------------------------------------------------
# Sort: hot keys spread over adjacent range partitions


SORT = Job("zsort").sort(by="k")


def _output_partition_rows(path) -> list[int]:
    fs, root = filesystem(str(path))
    return [int(f["rows"]) for f in load_manifest(fs, root).files]


def _assert_sorted_permutation(out: pa.Table, t: pa.Table, keys: list[str], descending: bool = False) -> None:
    assert out.num_rows == t.num_rows
    order = "descending" if descending else "ascending"
    ref = t.sort_by([(k, order) for k in keys] + [("v", "ascending")])
    # Globally ordered by the keys ...
    got_keys = out.select(keys)
    assert got_keys.equals(ref.select(keys)), "output is not in key order"
    # ... and the same rows (ties in any order).
    assert out.sort_by([(k, order) for k in keys] + [("v", "ascending")]).equals(ref)


@pytest.mark.parametrize("dist", ["zipf1.2", "half"])
@pytest.mark.parametrize("partition_size", ["96KiB", "48KiB"])
def test_sort_spreads_hot_keys_over_adjacent_partitions(tmp_path, dist, partition_size):
    t = keyed(80_000, dist, seed=5)
    write_parts(tmp_path / "in", t, parts=4, seed=5)
    on = SORT.run(str(tmp_path / "in"), str(tmp_path / "on"), skew=True, partition_size=partition_size)
    off = SORT.run(str(tmp_path / "in"), str(tmp_path / "off"), skew=False, partition_size=partition_size)
    for out in ("on", "off"):
        _assert_sorted_permutation(engine.read(str(tmp_path / out)), t, ["k"])
    rows_on, rows_off = _output_partition_rows(tmp_path / "on"), _output_partition_rows(tmp_path / "off")
    # The hottest key alone holds more than one partition's share: only splitting it keeps balance.
    assert max(rows_on) <= 1.5 * float(np.median(rows_on)), rows_on
    assert max(rows_off) > 1.5 * float(np.median(rows_off)), rows_off
    splits = [d for d in on.report.skew if d["action"] == "split"]
    assert splits and splits[0]["key"] == [0] and splits[0]["shares"] >= 2
    assert not [d for d in off.report.skew if d["action"] in ("split", "isolate")]


def test_sort_hot_key_shares_descending_multi_column_with_nulls(tmp_path):
    rng = np.random.default_rng(11)
    n = 40_000
    a = np.where(rng.random(n) < 0.6, 3, rng.integers(0, 50, n))
    b = np.where(a == 3, 1, rng.integers(0, 4, n))
    a_arr = pa.array(a, pa.int64(), mask=rng.random(n) < 0.05)
    t = pa.table({"a": a_arr, "b": pa.array(b, pa.int64()), "v": rng.normal(0, 1, n)})
    write_parts(tmp_path / "in", t, parts=3, seed=2)
    job = Job("zsort2").sort(by=["a", "b"], descending=True)
    result = job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="64KiB")
    out = engine.read(str(tmp_path / "out"))
    ref = t.sort_by([("a", "descending"), ("b", "descending"), ("v", "ascending")])
    assert out.select(["a", "b"]).equals(ref.select(["a", "b"]))
    assert out.sort_by([("a", "descending"), ("b", "descending"), ("v", "ascending")]).equals(ref)
    assert any(d["action"] == "split" and d["key"] == [3, 1] for d in result.report.skew), result.report.skew


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), hot=st.floats(0.0, 0.95), keys=st.integers(1, 500), parts=st.integers(1, 4),
       size=st.sampled_from(["16KiB", "48KiB", "1MiB"]), descending=st.booleans())
def test_property_sort_any_distribution(tmp_path_factory, seed, hot, keys, parts, size, descending):
    rng = np.random.default_rng(seed)
    n = 15_000
    k = np.where(rng.random(n) < hot, rng.integers(0, 2, n), rng.integers(0, keys, n))
    t = pa.table({"k": pa.array(k, pa.int64()), "v": rng.normal(0, 1, n)})
    d = tmp_path_factory.mktemp("sortprop")
    write_parts(d / "in", t, parts=parts, seed=seed)
    Job("psort").sort(by="k", descending=descending).run(str(d / "in"), str(d / "out"), partition_size=size)
    _assert_sorted_permutation(engine.read(str(d / "out")), t, ["k"], descending)


# ---------------------------------------------------------------------------------------------
# Combinable rounds: a hot key split over several tasks, their partial results merged


def _sum_combine(t: pa.Table) -> pa.Table:
    g = t.group_by("k", use_threads=False).aggregate([("n", "sum"), ("s", "sum")])
    return pa.table({"k": g["k"], "n": g["n_sum"], "s": g["s_sum"]})


def _add_count(t: pa.Table) -> pa.Table:
    return pa.table({"k": t["k"], "n": pa.array(np.ones(t.num_rows, np.int64)), "s": t["v"]})


USER_SUMS = Job("usums").map(_add_count).combine(_sum_combine).reduce(_sum_combine, by="k")
MANY = Job("many").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v"), "med": agg.median("v"),
                                        "d": agg.count_distinct("v"), "hi": agg.max("v")})


@pytest.mark.parametrize("job", ["aggs", "user"])
def test_hot_key_split_and_merged_when_map_combine_is_off(tmp_path, job):
    t = keyed(120_000, "half", seed=4)
    write_parts(tmp_path / "in", t, parts=6)
    j = MANY if job == "aggs" else USER_SUMS
    result = j.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="256KiB", map_combine=False)
    out = engine.read(str(tmp_path / "out"))
    if job == "aggs":
        ref = agg.AggregationSet(["k"], {"n": agg.count(), "s": agg.sum("v"), "med": agg.median("v"),
                                         "d": agg.count_distinct("v"), "hi": agg.max("v")}).aggregate(t)
    else:
        ref = _sum_combine(_add_count(t))
    assert_tables_close(out, ref, "k")
    splits = [d for d in result.report.skew if d["action"] == "split" and d.get("key") == [0]]
    assert splits and splits[0]["shares"] >= 2, result.report.skew
    merge = [s for s in result.report.stages if s.name.endswith("merge")]
    assert merge and merge[0].tasks == 1
    # With skew handling off the same job gives the same answer from one big task.
    off = j.run(str(tmp_path / "in"), str(tmp_path / "off"), partition_size="256KiB", map_combine=False, skew=False)
    assert_tables_close(engine.read(str(tmp_path / "off")), ref, "k")
    assert not [s for s in off.report.stages if s.name.endswith("merge")]


# ---------------------------------------------------------------------------------------------
# Edge cases: unsampled keys between hot keys, order-sensitive aggregations, NaN keys


def test_sort_keeps_unsampled_keys_between_two_hot_keys(tmp_path):
    import dask
    k = np.array([1] * 3000 + [2] + [3] * 3000 + [7, 5], dtype=np.int64)
    t = pa.table({"k": k, "v": np.arange(len(k), dtype=np.float64)})
    write_parts(tmp_path / "in", t, parts=2, seed=1)
    with dask.config.set({"engine.shuffle.sample-size": 8, "engine.shuffle.sort-batch-rows": 256}):
        result = SORT.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="16KiB")
    _assert_sorted_permutation(engine.read(str(tmp_path / "out")), t, ["k"])
    assert {tuple(d["key"]) for d in result.report.skew if d["action"] == "split"} == {(1,), (3,)}


def test_first_and_last_follow_input_order_across_hot_key_shares(tmp_path):
    # One hot key over several map outputs (files in order), x rising with the input order.
    os = __import__("os")
    os.makedirs(tmp_path / "in")
    n, start = 0, 0
    for i, size in enumerate([9_000, 30_000, 12_000, 20_000, 6_000]):
        k = np.where(np.arange(size) % 10 < 8, 0, np.arange(size) % 997 + 1)
        x = np.arange(start, start + size, dtype=np.int64)
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"k": pa.array(k, pa.int64()), "x": x}), tmp_path / "in" / f"part-{i:03d}.parquet")
        start += size
        n += size
    job = Job("order").reduce(by="k", aggs={"first": agg.first("x"), "last": agg.last("x"), "n": agg.count()})
    result = job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="96KiB", map_combine=False)
    out = engine.read(str(tmp_path / "out")).sort_by("k")
    hot = out.filter(pc.equal(out["k"], 0)).to_pylist()[0]
    assert hot == {"k": 0, "first": 0, "last": start - 3, "n": sum(
        int((np.arange(s) % 10 < 8).sum()) for s in [9_000, 30_000, 12_000, 20_000, 6_000])}
    assert any(d["action"] == "split" and d.get("key") == [0] for d in result.report.skew), result.report.skew


@pytest.mark.parametrize("combinable", [True, False])
def test_nan_hot_key_is_one_group(tmp_path, combinable):
    rng = np.random.default_rng(8)
    n = 60_000
    k = np.where(rng.random(n) < 0.5, np.nan, rng.integers(0, 3000, n).astype(np.float64))
    t = pa.table({"k": k, "v": rng.normal(0, 1, n)})
    write_parts(tmp_path / "in", t, parts=4)
    job = Job("nan").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")}) if combinable else \
        Job("nanfn").reduce(lambda g: agg.AggregationSet(["k"], {"n": agg.count(), "s": agg.sum("v")}).aggregate(g),
                            by="k")
    job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="64KiB", map_combine=False)
    out = engine.read(str(tmp_path / "out"))
    nan_rows = out.filter(pc.is_nan(out["k"])).to_pylist()
    assert len(nan_rows) == 1 and nan_rows[0]["n"] == int(np.isnan(k).sum())
    assert out.num_rows == len(np.unique(k[~np.isnan(k)])) + 1


@pytest.mark.parametrize("descending", [False, True])
def test_sort_with_nan_and_null_keys(tmp_path, descending):
    rng = np.random.default_rng(3)
    n = 12_000
    k = rng.normal(0, 1, n)
    k[rng.random(n) < 0.4] = np.nan
    t = pa.table({"k": pa.array(k, mask=rng.random(n) < 0.05), "v": np.arange(n, dtype=np.float64)})
    write_parts(tmp_path / "in", t, parts=3)
    result = Job("nansort").sort(by="k", descending=descending).run(
        str(tmp_path / "in"), str(tmp_path / "out"), partition_size="16KiB")
    out = engine.read(str(tmp_path / "out"))

    def comparable(table: pa.Table) -> pa.Table:    # NaN != NaN in Arrow equality: compare a stand-in
        col = table["k"]
        return table.set_column(0, "k", pc.if_else(pc.is_nan(col), pa.scalar(1e300), col))
    order = "descending" if descending else "ascending"
    ref = t.sort_by([("k", order), ("v", "ascending")])
    # the output's key sequence is pyarrow's: numbers in order, then NaN, then null ...
    assert comparable(out).select(["k"]).equals(comparable(ref).select(["k"]))
    # ... and it holds every row once
    assert comparable(out.sort_by([("k", order), ("v", "ascending")])).equals(comparable(ref))
    assert any(d["action"] == "split" for d in result.report.skew)     # NaN (40 %) is a hot key


def test_journal_reuses_a_result_only_for_the_same_task():
    from engine.compile import TaskSpec
    from engine.runner import _spec_digest
    from engine.tasks import TaskContext, run_reduce
    ctx = TaskContext(run_id="r", job="j", round=0, rounds=1, kind="reduce", keys=("k",), descending=False,
                      shuffle_fs=None, shuffle_root="/s", out_fs=None, out_root="/o", num_partitions=8)
    refs = [("/s/a.arrow", [0, 3]), ("/s/b.arrow", [1])]
    keys = pa.table({"k": pa.array([7], pa.int64())})

    def spec(c=ctx, r=refs, f=None):
        return TaskSpec(2, run_reduce, (c, object(), r, f, None), 100)
    assert _spec_digest(spec()) == _spec_digest(spec())
    others = [spec(c=replace(ctx, map_combine=False)), spec(r=refs[:1]), spec(f={"only": keys, "exclude": None,
                                                                                  "sub": None}),
              spec(c=replace(ctx, num_partitions=16))]
    assert len({_spec_digest(s) for s in others} | {_spec_digest(spec())}) == 5
