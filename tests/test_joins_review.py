"""Joins: regressions found in review (each failed before its fix).

Self-joins keep their two sides apart (stage names and journal digests), zero-row files of a
Hive-partitioned input, integer keys joined to float keys, non-nullable columns through right and
full joins of nested data, and view-typed columns through a broadcast join.
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job
from engine.errors import SchemaError
from engine.faults import Faults
from engine.joins import JoinSpec, join_tables

from test_joins import assert_same_rows, duck


def test_self_join_resumed_after_a_failed_join_keeps_the_sides_apart(tmp_path):
    # Both sides read input "t" with different maps; input small enough that a side maps first, alone
    # (a broadcast candidate), map output too big to be broadcast: two side stages, then a shuffle join.
    n = 6000
    t = pa.table({"k": pa.array(np.arange(n) % 1500, pa.int64()), "v": pa.array(np.arange(n), pa.int64()),
                  "pad": pa.array(["x" * 40] * n)})
    os.makedirs(tmp_path / "t")
    pq.write_table(t, tmp_path / "t" / "part-0.parquet")
    left = Job("self", input="t").map(lambda x: x.select(["k", "v"]))
    right = Job("self-r", input="t").map(lambda x: x.filter(pc.less(x["v"], 3000)).select(["k", "pad"]))
    job = left.join(right, on="k")
    out = str(tmp_path / "out")
    settings = {"engine.join.broadcast-max": "64KiB", "engine.retries.backoff-base": 0.01}
    with dask.config.set(settings):
        with pytest.raises(engine.StageFailedError):
            engine.run(job, {"t": str(tmp_path / "t")}, out, partition_size="16KiB",
                       faults=Faults(fail_attempts={("reduce", 0): 99}))
        result = engine.run(job, {"t": str(tmp_path / "t")}, out, partition_size="16KiB", resume=True)
    names = [s.name for s in result.report.stages if s.kind == "map"]
    assert len(names) == len(set(names)) == 2, names
    expected = duck('SELECT l.k, l.v, r.pad FROM "t" l JOIN "t" r ON l.k = r.k WHERE r.v < 3000',
                    {"t": str(tmp_path / "t")})
    assert_same_rows(engine.read(out), expected)


def test_zero_row_file_of_a_hive_partitioned_side(tmp_path):
    orders = tmp_path / "orders"
    os.makedirs(orders / "day=1")
    os.makedirs(orders / "day=2")
    pq.write_table(pa.table({"k": pa.array([1, 2], pa.int64())}), orders / "day=1" / "a.parquet")
    pq.write_table(pa.table({"k": pa.array([], pa.int64())}), orders / "day=2" / "b.parquet")
    os.makedirs(tmp_path / "cust")
    pq.write_table(pa.table({"k": pa.array([1, 2], pa.int64()), "name": ["a", "b"]}), tmp_path / "cust" / "c.parquet")
    job = (Job("hive", input="orders").map(lambda t: t.append_column("tag", t["day"].cast(pa.string())))
           .join("cust", on="k"))
    with dask.config.set({"engine.join.strategy": "shuffle"}):
        result = engine.run(job, {"orders": str(orders), "cust": str(tmp_path / "cust")}, str(tmp_path / "out"))
    got = sorted(engine.read(result.output).select(["k", "tag", "name"]).to_pylist(), key=lambda r: r["k"])
    assert got == [{"k": 1, "tag": "1", "name": "a"}, {"k": 2, "tag": "1", "name": "b"}]


@pytest.mark.parametrize("strategy", ["shuffle", "broadcast"])
def test_integer_key_joined_to_float_key_is_refused_whatever_the_strategy(tmp_path, strategy):
    os.makedirs(tmp_path / "l")
    os.makedirs(tmp_path / "r")
    pq.write_table(pa.table({"k": pa.array([1, 2], pa.int64())}), tmp_path / "l" / "a.parquet")
    pq.write_table(pa.table({"k": pa.array([1.0, 2.5])}), tmp_path / "r" / "b.parquet")
    job = Job("mixed", input="l").join("r", on="k")
    with dask.config.set({"engine.join.strategy": strategy}), pytest.raises(SchemaError, match="cast"):
        engine.run(job, {"l": str(tmp_path / "l"), "r": str(tmp_path / "r")}, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")


@pytest.mark.parametrize("how", ["right", "full"])
def test_non_nullable_nested_left_side_in_right_and_full_joins(how):
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), pa.field("l", pa.list_(pa.int64()), nullable=False)])
    left = pa.table({"k": [1, 2], "l": [[1], [2, 2]]}, schema=schema)
    right = pa.table({"k": [2, 3], "b": ["x", "y"]})
    got = join_tables(left, right, JoinSpec(("k",), ("k",), how)).to_pylist()
    expected = [{"k": 2, "l": [2, 2], "b": "x"}, {"k": 3, "l": None, "b": "y"}]
    if how == "full":
        expected.append({"k": 1, "l": [1], "b": None})
    assert sorted(got, key=lambda r: r["k"]) == sorted(expected, key=lambda r: r["k"])


def test_view_typed_column_from_a_map_through_a_broadcast_join(tmp_path):
    os.makedirs(tmp_path / "l")
    os.makedirs(tmp_path / "r")
    pq.write_table(pa.table({"k": pa.array(np.arange(100) % 10, pa.int64()), "s": [f"s{i}" for i in range(100)]}),
                   tmp_path / "l" / "a.parquet")
    pq.write_table(pa.table({"k": pa.array(np.arange(10), pa.int64()), "n": [f"n{i}" for i in range(10)]}),
                   tmp_path / "r" / "b.parquet")
    job = Job("views", input="l").map(lambda t: t.set_column(1, "s", t["s"].cast(pa.string_view()))).join("r", on="k")
    with dask.config.set({"engine.join.strategy": "broadcast"}):
        result = engine.run(job, {"l": str(tmp_path / "l"), "r": str(tmp_path / "r")}, str(tmp_path / "out"))
    assert [d["strategy"] for d in result.report.joins if "strategy" in d] == ["broadcast"]
    got = engine.read(result.output)
    assert got.num_rows == 100
    assert sorted(zip(got["s"].to_pylist(), got["n"].to_pylist())) == sorted((f"s{i}", f"n{i % 10}") for i in range(100))
