"""End-to-end behaviour on the embedded cluster: formats, rounds, modes, errors, and a property test."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from conftest import assert_tables_close, write_parts
from engine import Job, agg
from engine.errors import InputError, OutputExistsError, StageFailedError


def sample(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table({
        "k": pa.array([f"k{x}" for x in rng.integers(0, 40, n)]),
        "g": rng.integers(0, 5, n),
        "v": rng.normal(10, 3, n),
        "text": pa.array([" ".join(f"w{x}" for x in rng.integers(0, 30, 4)) for _ in range(n)]),
    })


def reference_stats(t: pa.Table) -> pa.Table:
    r = t.group_by("k").aggregate([("v", "sum"), ("v", "mean"), ([], "count_all"), ("v", "max")])
    return pa.table({"k": r["k"], "total": r["v_sum"], "avg": r["v_mean"], "n": r["count_all"], "top": r["v_max"]})


STATS = Job("stats").reduce(by="k", aggs={"total": agg.sum("v"), "avg": agg.mean("v"), "n": agg.count(),
                                          "top": agg.max("v")})


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "csv", "jsonl"])
def test_formats_give_the_reference_result(tmp_path, fmt):
    t = sample().select(["k", "v"])
    write_parts(tmp_path / "in", t, parts=3, fmt=fmt)
    result = STATS.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="1KiB")
    assert [s.tasks for s in result.report.stages] [0] == 3
    assert_tables_close(engine.read(str(tmp_path / "out")), reference_stats(t), "k")


def test_list_of_paths_hive_partitions_and_pyarrow_dataset(tmp_path):
    t = sample()
    for g in range(5):
        d = tmp_path / "hive" / f"g={g}"
        d.mkdir(parents=True)
        pq.write_table(t.filter(pc.equal(t["g"], g)).drop_columns(["g"]), d / "data.parquet")
    job = Job("by-g").reduce(by="g", aggs={"n": agg.count(), "s": agg.sum("v")})
    expected = t.group_by("g").aggregate([([], "count_all"), ("v", "sum")])
    expected = pa.table({"g": expected["g"], "n": expected["count_all"], "s": expected["v_sum"]})
    job.run(str(tmp_path / "hive"), str(tmp_path / "o1"))
    assert_tables_close(engine.read(str(tmp_path / "o1")), expected, "g")

    paths = [str(tmp_path / "hive" / f"g={g}" / "data.parquet") for g in (1, 3)]
    job.run(paths, str(tmp_path / "o2"))
    got = engine.read(str(tmp_path / "o2"))
    assert sorted(got["g"].to_pylist()) == [1, 3]

    import pyarrow.dataset as ds
    dataset = ds.dataset(str(tmp_path / "hive"), format="parquet", partitioning="hive")
    job.run(dataset, str(tmp_path / "o3"))
    assert_tables_close(engine.read(str(tmp_path / "o3")), expected, "g")


def test_memory_filesystem_runs_in_process():
    import fsspec
    fs = fsspec.filesystem("memory")
    t = sample().select(["k", "v"])
    for i in range(2):
        with fs.open(f"/mr-in/part-{i}.parquet", "wb") as f:
            pq.write_table(t.slice(i * 2500, 2500), f)
    STATS.run("memory://mr-in", "memory://mr-out", mode="overwrite", partition_size="1KiB")
    assert_tables_close(engine.read("memory://mr-out"), reference_stats(t), "k")


def test_multi_round_chain_with_custom_reduce_and_sort(tmp_path):
    t = sample()
    write_parts(tmp_path / "in", t, parts=3)

    def explode(tb):
        return pa.table({"w": pc.list_flatten(pc.utf8_split_whitespace(tb["text"]))})

    def count_words(tb):   # a reduce function: receives rows of many keys, groups them itself
        r = tb.group_by("w").aggregate([([], "count_all")])
        return pa.table({"w": r["w"], "n": r["count_all"]})

    def partial(tb):       # combine: associative, schema-preserving
        return tb.group_by("w").aggregate([("n", "sum")]).rename_columns(["w", "n"])

    job = (Job("chain").map(explode).map(lambda tb: tb.append_column("n", pa.array(np.ones(len(tb), "int64"))))
           .combine(partial).reduce(partial, by="w")
           .map(lambda tb: tb.append_column("bucket", pc.divide(tb["n"], 100)))
           .sort(by=["n", "w"], descending=True))
    result = job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="512B")
    out = engine.read(str(tmp_path / "out"))
    words = pc.list_flatten(pc.utf8_split_whitespace(t["text"]))
    ref = count_words(pa.table({"w": words}))
    assert sorted(zip(out["w"].to_pylist(), out["n"].to_pylist())) == sorted(zip(ref["w"].to_pylist(),
                                                                                  ref["n"].to_pylist()))
    pairs = list(zip(out["n"].to_pylist(), out["w"].to_pylist()))
    assert pairs == sorted(pairs, reverse=True)
    assert len([s for s in result.report.stages if s.kind == "reduce"]) == 2


def test_modes_rerun_noop_force_overwrite_append(tmp_path):
    t = sample().select(["k", "v"])
    write_parts(tmp_path / "in", t, parts=2)
    out = str(tmp_path / "out")
    first = STATS.run(str(tmp_path / "in"), out)
    again = STATS.run(str(tmp_path / "in"), out)
    assert again.skipped and "nothing to do" in again.report.message and again.run_id == first.run_id

    other = Job("other").reduce(by="k", aggs={"n": agg.count()})
    with pytest.raises(OutputExistsError, match="mode='overwrite'"):
        other.run(str(tmp_path / "in"), out)
    assert_tables_close(engine.read(out), reference_stats(t), "k")     # refused run changed nothing

    forced = STATS.run(str(tmp_path / "in"), out, force=True, mode="overwrite")
    assert not forced.skipped and forced.run_id != first.run_id
    assert_tables_close(engine.read(out), reference_stats(t), "k")
    listed = sorted(f for f in os.listdir(out) if not f.startswith("_"))
    assert listed == sorted(f["path"] for f in forced.manifest.files)   # no stale files of the old run

    other.run(str(tmp_path / "in"), out, mode="overwrite")
    assert engine.read(out).column_names == ["k", "n"]
    other.run(str(tmp_path / "in"), out, mode="append", force=True)
    assert engine.read(out).num_rows == 2 * 40
    engine.verify(out)


def test_manifest_lists_every_file_with_checksums(tmp_path):
    write_parts(tmp_path / "in", sample().select(["k", "v"]), parts=2)
    result = STATS.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="1KiB")
    doc = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert doc["job"] == "stats" and doc["fingerprint"] == STATS.fingerprint() and doc["run_id"] == result.run_id
    assert {f["path"] for f in doc["files"]} == {f for f in os.listdir(tmp_path / "out") if f.startswith("part-")}
    assert all(set(f) >= {"rows", "bytes", "crc32c", "partition"} for f in doc["files"])
    assert doc["input"]["files"] == 2 and len(doc["input"]["snapshot"]) == 2
    assert not (tmp_path / "out" / "_temporary" / result.run_id).exists()
    # One flipped byte in a data file is named by verify, and read(verify=True) refuses it.
    victim = tmp_path / "out" / doc["files"][0]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(engine.IntegrityError, match=doc["files"][0]["path"]):
        engine.verify(str(tmp_path / "out"))
    with pytest.raises(engine.IntegrityError):
        engine.read(str(tmp_path / "out"), verify=True)


def test_failing_task_names_round_stage_partition_and_file(tmp_path):
    t = sample().select(["k", "v"])
    paths = write_parts(tmp_path / "in", t, parts=3)

    def fragile(tb):
        if pc.min(tb["v"]).as_py() < -100:        # only the poisoned partition fails
            raise ValueError("negative reading")
        return tb
    poisoned = pq.read_table(paths[1])
    poisoned = poisoned.set_column(1, "v", pc.subtract(poisoned["v"], 1000))
    pq.write_table(poisoned, paths[1])
    job = Job("fragile").map(fragile).reduce(by="k", aggs={"n": agg.count()})
    import dask.config
    with dask.config.set({"engine.retries.backoff-base": 0.01}):
        with pytest.raises(StageFailedError) as exc:
            job.run(str(tmp_path / "in"), str(tmp_path / "out"))
    msg = str(exc.value)
    assert "round 1 of 1, map stage, partition" in msg and "part-001.parquet" in msg
    # a user error that fails the same way twice is deterministic: not retried a third time
    assert "after 2 attempts" in msg and "negative reading" in msg and "the error is deterministic" in msg
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        STATS.run(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(engine.EmptyInputError):
        STATS.run(str(tmp_path / "empty"), str(tmp_path / "out"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="x.parquet"):
        STATS.run(str(bad), str(tmp_path / "out"))


@settings(max_examples=12)
@given(seed=st.integers(0, 2**16), parts=st.integers(1, 4), rows=st.integers(0, 3000),
       keys=st.integers(1, 200), size=st.sampled_from(["512B", "4KiB", "64MiB"]))
def test_property_aggregate_equals_reference(tmp_path_factory, seed, parts, rows, keys, size):
    rng = np.random.default_rng(seed)
    t = pa.table({"k": pa.array([f"k{x}" for x in rng.integers(0, keys, rows)], pa.string()),
                  "v": rng.normal(0, 1, rows)})
    d = tmp_path_factory.mktemp("prop")
    write_parts(d / "in", t, parts=max(1, min(parts, rows or 1)), seed=seed)
    STATS.run(str(d / "in"), str(d / "out"), partition_size=size)
    assert_tables_close(engine.read(str(d / "out")), reference_stats(t), "k")
