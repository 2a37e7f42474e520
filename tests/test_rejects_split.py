"""How much work finding a bad row costs: a failing call is split into sixteenths, not halves.

The map function logs the size of every call it gets (a file, since the run's tasks may unpickle
their own copy of it); the tests check the rejected rows exactly, the answer against pyarrow, and
the rows the function was called with in all.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg, config
from engine.rejects import SPLIT_MIN_ROWS, SPLIT_PARTS, _parts

BATCH = 131072


def _write(directory, rows: int) -> pa.Table:
    os.makedirs(directory, exist_ok=True)
    t = pa.table({"k": pa.array([i % 7 for i in range(rows)], pa.int64()), "v": pa.array(range(rows), pa.int64())})
    pq.write_table(t, os.path.join(directory, "part-0.parquet"), row_group_size=rows)
    return t


def _logging_map(log: str, bad: frozenset):
    def doubled(t: pa.Table) -> pa.Table:
        w = pc.multiply(t["v"], 2)                           # the work first: a failed call costs a whole one
        with open(log, "a") as f:
            f.write(f"{t.num_rows}\n")
        if pc.any(pc.is_in(t["v"], value_set=pa.array(sorted(bad), pa.int64()))).as_py():
            raise ValueError("bad value")
        return t.append_column("w", w)
    return doubled


def _calls(log: str) -> list[int]:
    with open(log) as f:
        return [int(x) for x in f.read().split()]


def test_parts_cover_the_range_in_order():
    for lo, hi in [(0, 2), (3, 10), (0, 2047), (0, 2048), (5, 5 + BATCH), (0, 1_000_003)]:
        parts = _parts(lo, hi)
        assert parts[0][0] == lo and parts[-1][1] == hi and all(a < b for a, b in parts)
        assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
        n = hi - lo
        assert len(parts) == max(2, min(SPLIT_PARTS, n // SPLIT_MIN_ROWS))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.mark.parametrize("bad_rows", [(100_003,), (7, 64_000, 131_071)])
def test_one_bad_row_in_a_batch_costs_about_one_batch_more(tmp_path, bad_rows):
    """A batch of 131,072 rows with one bad row: the function sees ~2.1 batches' rows in all (halves: 3)."""
    assert int(config.get("batch-rows")) == BATCH
    table = _write(tmp_path / "in", BATCH)
    log = str(tmp_path / "calls.txt")
    bad = frozenset(bad_rows)
    job = Job("split").map(_logging_map(log, bad)).reduce(by="k", aggs={"s": agg.sum("w"), "n": agg.count()})
    out = str(tmp_path / "out")
    r = engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=10)
    assert r.report.rejected == len(bad)
    rejected = engine.read_rejected(out)
    assert sorted(rejected["row"].to_pylist()) == sorted(bad)
    assert sorted(json.loads(x)["v"] for x in rejected["record"].to_pylist()) == sorted(bad)
    keep = table.filter(pc.invert(pc.is_in(table["v"], value_set=pa.array(sorted(bad), pa.int64()))))
    ref = keep.group_by("k").aggregate([("v", "sum"), ("v", "count")])
    got = engine.read(out)
    assert dict(zip(got["k"].to_pylist(), zip(got["s"].to_pylist(), got["n"].to_pylist()))) == \
        {k: (2 * s, n) for k, s, n in zip(ref["k"].to_pylist(), ref["v_sum"].to_pylist(), ref["v_count"].to_pylist())}
    calls = [n for n in _calls(log) if n > 64]           # (the driver's check of a sample: a few tiny calls)
    assert calls[0] == BATCH and calls.count(BATCH) == 1
    total = sum(calls)
    # the batch, its 16 parts (n), each bad row's failing 8192-row part split again (1024-row parts), then
    # halves of the 1024 rows: about 2.1 n for one bad row; by halves from the start it was 3 n
    assert total <= BATCH * (2 + 0.1 * len(bad)), (total / BATCH, calls)
    assert len(calls) <= 1 + 16 + len(bad) * (8 + 2 * 10), len(calls)


def _fussy(bad_keys: frozenset):
    def reduce_fn(t: pa.Table) -> pa.Table:
        if pc.any(pc.is_in(t["k"], value_set=pa.array(sorted(bad_keys), pa.int64()))).as_py():
            raise KeyError("a key that is not allowed")
        g = t.group_by("k").aggregate([("v", "sum")])
        return g.select(["k", "v_sum"]).rename_columns(["k", "s"])
    return reduce_fn


def test_reduce_with_many_keys_rejects_exactly_the_failing_keys(tmp_path):
    """Parts of the keys (sixteenths of 20,000 keys) still reject each failing key whole, no other."""
    rows, keys = 60_000, 20_000
    os.makedirs(tmp_path / "in")
    t = pa.table({"k": pa.array([(i * 7919) % keys for i in range(rows)], pa.int64()),
                  "v": pa.array(range(rows), pa.int64())})
    pq.write_table(t, tmp_path / "in" / "part-0.parquet")
    bad = frozenset({3, 9_999, 19_998})
    out = str(tmp_path / "out")
    r = engine.run(Job("fussy-many").reduce(_fussy(bad), by="k"), str(tmp_path / "in"), out,
                   on_error="reject", max_rejected=100, partition_size="1GiB")
    bad_rows = t.filter(pc.is_in(t["k"], value_set=pa.array(sorted(bad), pa.int64())))
    assert r.report.rejected == bad_rows.num_rows == 9
    rejected = engine.read_rejected(out)
    assert sorted(json.loads(x)["k"] for x in rejected["key"].to_pylist()) == sorted(bad_rows["k"].to_pylist())
    assert sorted(json.loads(x)["v"] for x in rejected["record"].to_pylist()) == sorted(bad_rows["v"].to_pylist())
    got = engine.read(out)
    ref = t.filter(pc.invert(pc.is_in(t["k"], value_set=pa.array(sorted(bad), pa.int64())))) \
        .group_by("k").aggregate([("v", "sum")])
    assert dict(zip(got["k"].to_pylist(), got["s"].to_pylist())) == dict(zip(ref["k"].to_pylist(),
                                                                          ref["v_sum"].to_pylist()))
