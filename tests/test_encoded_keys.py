"""Keys that stay encoded: a declarative aggregation reads Parquet string keys with small dictionaries
as dictionaries, groups and hashes their codes, and the shuffle holds values, so equal keys meet
whatever each file's encoding. Answers against DuckDB."""

from __future__ import annotations

import os

import dask
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine import Job, agg
from engine.datasets import resolve_input, read_split, small_dictionaries


def write_inputs(directory: str, rows: int = 4000, seed: int = 7) -> None:
    """Three files with the same keys: dictionary-encoded (few values), plain (no dictionary), and
    one whose second key has so many values that its dictionary is large; nulls in keys."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for p, (use_dictionary, many) in enumerate(((True, False), (False, False), (True, True))):
        few = [None if j % 53 == 0 else f"id{j:03d}" for j in rng.integers(0, 40, rows)]
        second = [f"x{j:06d}" for j in (rng.permutation(rows) if many else rng.integers(0, 5, rows))]
        t = pa.table({"a": pa.array(few, pa.string()), "b": pa.array(second, pa.string()),
                      "n": pa.array(rng.integers(0, 100, rows), pa.int64()),
                      "v": pa.array(rng.normal(size=rows), mask=rng.random(rows) < 0.05)})
        pq.write_table(t, os.path.join(directory, f"part-{p}.parquet"), use_dictionary=use_dictionary,
                       row_group_size=1500)


def test_small_dictionaries_are_chosen_from_the_file_metadata(tmp_path) -> None:
    write_inputs(str(tmp_path / "in"))
    chosen = []
    for p in range(3):
        pf = pq.ParquetFile(str(tmp_path / "in" / f"part-{p}.parquet"))
        chosen.append(small_dictionaries(pf.metadata, pf.schema_arrow, ["a", "b", "n"], 0, 1024))
    assert chosen == [["a", "b"], [], ["a"]]
    spec = resolve_input(str(tmp_path / "in"))
    split = next(s for s in spec.splits if s.path.endswith("part-0.parquet"))
    batches = list(read_split(spec.fs, split, batch_rows=1024, dictionaries=("a", "b")))
    assert {str(b.schema.field("a").type) for b in batches} == {"dictionary<values=string, indices=int32, ordered=0>"}
    assert pa.types.is_float64(batches[0].schema.field("v").type)
    plain = pa.Table.from_batches(list(read_split(spec.fs, split, batch_rows=1024)))
    assert pa.Table.from_batches(batches).cast(plain.schema).equals(plain)


SQL = ("select a, b, count(*) as c, sum(n)::BIGINT as s, avg(v) as m, min(b) as lo, count(distinct n) as d "
       "from read_parquet('{}/*.parquet') group by a, b")


def test_encoded_keys_group_with_plain_ones_and_match_duckdb(tmp_path) -> None:
    write_inputs(str(tmp_path / "in"))
    aggs = {"c": agg.count(), "s": agg.sum("n"), "m": agg.mean("v"), "lo": agg.min("b"), "d": agg.count_distinct("n")}
    want = {(r["a"], r["b"]): r for r in duckdb.sql(SQL.format(tmp_path / "in")).to_arrow_table().to_pylist()}
    for by, settings in ((["a", "b"], {}), (["a"], {"engine.shuffle.map-combine": False}),
                         (["b", "a"], {"engine.shuffle.combine-min-rows": 100, "engine.batch-rows": 500})):
        job = Job("encoded-keys").reduce(by=by, aggs=aggs)
        with dask.config.set(settings):
            out = job.run(str(tmp_path / "in"), str(tmp_path / f"out-{len(by)}-{len(settings)}")).read()
        assert all(pa.types.is_string(out.schema.field(k).type) for k in by)
        got = out.to_pylist()
        assert len({tuple(r[k] for k in by) for r in got}) == len(got), "a key twice: encodings did not meet"
        if by == ["a"]:
            expected = {}
            for (a, _), r in want.items():
                expected[a] = expected.get(a, 0) + r["c"]
            assert {r["a"]: r["c"] for r in got} == expected
            continue
        assert len(got) == len(want)
        for r in got:
            w = want[(r["a"], r["b"])]
            assert (r["c"], r["s"], r["lo"], r["d"]) == (w["c"], w["s"], w["lo"], w["d"])
            assert (r["m"] is None and w["m"] is None) or abs(r["m"] - w["m"]) <= 1e-9 * max(1.0, abs(w["m"]))


def test_map_functions_still_see_strings(tmp_path) -> None:
    write_inputs(str(tmp_path / "in"), rows=500)
    job = Job("encoded-keys-map").map(check_strings).reduce(by="a", aggs={"c": agg.count()})
    out = job.run(str(tmp_path / "in"), str(tmp_path / "out")).read()
    assert sum(out["c"].to_pylist()) == 1500


def check_strings(t: pa.Table) -> pa.Table:
    assert pa.types.is_string(t.schema.field("a").type), t.schema
    return t

