"""Projection and predicate pushdown: what a round reads of its input.

- A round that aggregates declaratively reads only its keys and its aggregations' columns (the
  proof: a column whose bytes are corrupt does not fail the plain job; a job whose function needs
  every column still does).
- ``map(where=...)`` filters exactly (every format), and on the first map of a round reading an
  input prunes Hive partitions (a pruned partition's unreadable file is never opened, and is not in
  the snapshot) and Parquet row groups by their statistics (the report counts fewer rows read).

Every answer is checked against DuckDB over the same rows.
"""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from conftest import assert_tables_close
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine import Job, agg
from engine.datasets import prune_splits, read_split, resolve_input
from engine.errors import InputError, JobDefinitionError, SchemaError
from engine.job import filter_table
from engine.plan import build_nodes

DAYS = ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]
ROWS_PER_DAY = 2_000
ROW_GROUP = 200


def duck(table: pa.Table, sql: str) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("x", table)
        rel = con.sql(sql)
        out = rel.arrow()
        return out.read_all() if isinstance(out, pa.RecordBatchReader) else out
    finally:
        con.close()


def _day_table(day: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "k": np.sort(rng.integers(0, 1_000, ROWS_PER_DAY)),          # sorted: row groups have narrow ranges
        "v": rng.random(ROWS_PER_DAY),
        "g": rng.integers(0, 7, ROWS_PER_DAY),
        "s": pa.array([f"s{i % 13}" for i in range(ROWS_PER_DAY)]),
    })


@pytest.fixture(scope="module")
def hive(tmp_path_factory) -> tuple[str, str, pa.Table]:
    """The same rows as Hive-partitioned Parquet (several row groups per file) and CSV, by ``day``;
    the whole table (with ``day``) for DuckDB."""
    root = tmp_path_factory.mktemp("hive")
    parts = []
    for i, day in enumerate(DAYS):
        t = _day_table(day, i)
        for fmt in ("parquet", "csv"):
            d = root / fmt / f"day={day}"
            d.mkdir(parents=True)
            if fmt == "parquet":
                pq.write_table(t, d / "part-0.parquet", row_group_size=ROW_GROUP)
            else:
                pcsv.write_csv(t, d / "part-0.csv")
        parts.append(t.append_column("day", pa.array([day] * t.num_rows)))
    return str(root / "parquet"), str(root / "csv"), pa.concat_tables(parts)


def _where(day: str, k: int):
    return (pc.field("day") >= day) & (pc.field("k") < k)


def _sql(day: str, k: int) -> str:
    return (f"SELECT g, count(*)::BIGINT AS n, sum(v) AS total FROM x WHERE day >= '{day}' AND k < {k} "
            "GROUP BY g")


def _job(day: str, k: int) -> Job:
    return Job("late-small").map(where=_where(day, k)).reduce(by="g", aggs={"n": agg.count(), "total": agg.sum("v")})


# -- projection -----------------------------------------------------------------------------------


def _corrupt_column(path: str, column: int) -> None:
    """Overwrite one column chunk's bytes (its page headers included): reading that column fails,
    reading the others does not (Parquet stores each column of a row group on its own)."""
    meta = pq.read_metadata(path)
    with open(path, "r+b") as f:
        for rg in range(meta.num_row_groups):
            col = meta.row_group(rg).column(column)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            f.seek(start)
            f.write(b"\xff" * col.total_compressed_size)


def test_plain_aggregate_reads_only_its_columns(tmp_path):
    rng = np.random.default_rng(3)
    n = 3_000
    table = pa.table({"g": rng.integers(0, 5, n), "v": rng.random(n), "w": rng.integers(0, 9, n),
                      "junk": pa.array([f"junk-{i}" for i in range(n)])})
    data = tmp_path / "in"
    data.mkdir()
    for i in range(2):
        path = str(data / f"part-{i}.parquet")
        pq.write_table(table.slice(i * n // 2, n // 2), path, row_group_size=500)
        _corrupt_column(path, 3)

    job = Job("plain").reduce(by="g", aggs={"n": agg.count(), "v": agg.sum("v"), "w": agg.max("w")})
    text = job.explain(str(data))
    assert "columns ['g', 'v', 'w'] (derived from the aggregation)" in text
    result = engine.run(job, str(data), str(tmp_path / "out"))
    expected = duck(table, "SELECT g, count(*)::BIGINT AS n, sum(v) AS v, max(w) AS w FROM x GROUP BY g")
    assert_tables_close(result.read(), expected, "g")

    # A function may read any column, so a round with one reads them all: the corrupt column fails it.
    needs_all = Job("needs-all").map(lambda t: t).reduce(by="g", aggs={"n": agg.count()})
    with pytest.raises(InputError, match="part-0.parquet"):
        engine.run(needs_all, str(data), str(tmp_path / "out2"))


def test_derived_columns_follow_the_structure():
    """Derived only where the stages are declarative; declared columns= win; the fingerprint is the
    one the structure always had (derivation adds nothing to it)."""
    def side(job):
        return build_nodes(job)[0].sides[0]

    plain = Job("a").reduce(by=["g", "day"], aggs={"n": agg.count(), "m": agg.mean("v"), "t": agg.top_k(2, "w")})
    assert (side(plain).columns, side(plain).derived) == (("g", "day", "v", "w"), True)
    counted = Job("a").reduce(by="g", aggs={"n": agg.count()})
    assert side(counted).columns == ("g",)
    filtered = Job("a").map(where=pc.field("k") > 1).reduce(by="g", aggs={"n": agg.count()})
    assert side(filtered).columns == ("g",) and side(filtered).where is not None
    declared = Job("a").map(columns=["g", "v", "x"]).reduce(by="g", aggs={"n": agg.count()})
    assert (side(declared).columns, side(declared).derived) == (("g", "v", "x"), False)
    for needs_all in (Job("a").map(lambda t: t).reduce(by="g", aggs={"n": agg.count()}),
                      Job("a").sort(by="g"), Job("a").reduce(lambda t: t, by="g"),
                      Job("a").map(where=pc.field("k") > 1)):
        assert side(needs_all).columns is None, needs_all
    # the derivation is no part of the fingerprint: the plain job's equals the same structure's
    assert plain.fingerprint() == Job("a", stages=plain.stages).fingerprint()


def test_plain_aggregate_by_a_partition_column(hive, tmp_path):
    parquet, _, table = hive
    job = Job("by-day").reduce(by="day", aggs={"n": agg.count(), "k": agg.max("k")})
    result = engine.run(job, parquet, str(tmp_path / "out"))
    expected = duck(table, "SELECT day, count(*)::BIGINT AS n, max(k) AS k FROM x GROUP BY day")
    assert_tables_close(result.read(), expected, "day")


# -- where: exact filter and pruning, against DuckDB -------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_where_matches_duckdb(hive, tmp_path, fmt):
    parquet, csv, table = hive
    for day, k in [("2026-10-31", 500), ("2027-01-01", 500), ("2026-11-02", 1_000)]:
        result = engine.run(_job(day, k), parquet if fmt == "parquet" else csv, str(tmp_path / f"out-{day}-{k}"))
        assert_tables_close(result.read(), duck(table, _sql(day, k)), "g")


@settings(max_examples=25, deadline=None)
@given(day=st.sampled_from(["2026-10-01"] + DAYS + ["2026-12-01"]), k=st.integers(-1, 1_001),
       op=st.sampled_from(["<", ">=", "=="]), fmt=st.sampled_from(["parquet", "csv"]))
def test_pruning_never_drops_a_matching_row(hive, day, k, op, fmt):
    """What the pruned splits hold, filtered exactly, is exactly DuckDB's answer (read in this process)."""
    parquet, csv, table = hive
    kcond = {"<": pc.field("k") < k, ">=": pc.field("k") >= k, "==": pc.field("k") == k}[op]
    where = (pc.field("day") >= day) & kcond
    spec = resolve_input(parquet if fmt == "parquet" else csv, where=where)
    pruning = prune_splits(spec, where)
    got = [filter_table(pa.Table.from_batches([b]), where)
           for s in pruning.splits for b in read_split(spec.fs, s, partition_types=spec.partition_types)]
    got = pa.concat_tables(got).select(["k", "v", "g", "s", "day"]) if got else None
    expected = duck(table, f"SELECT k, v, g, s, day FROM x WHERE day >= '{day}' AND k {'=' if op == '==' else op} {k}")
    assert (got.num_rows if got is not None else 0) == expected.num_rows
    if expected.num_rows:
        assert_tables_close(got.cast(expected.schema), expected, ["day", "k", "v"])
    if fmt == "parquet":
        assert pruning.rows_read >= expected.num_rows
        assert pruning.files_read <= sum(d >= day for d in DAYS) or expected.num_rows == 0


def test_pruned_partition_is_never_opened_and_not_in_the_snapshot(hive, tmp_path):
    parquet, _, table = hive
    data = tmp_path / "in"
    for day in DAYS:
        (data / f"day={day}").mkdir(parents=True)
        os.link(os.path.join(parquet, f"day={day}", "part-0.parquet"), data / f"day={day}" / "part-0.parquet")
    bad = data / "day=2026-09-01"
    bad.mkdir()
    (bad / "part-0.parquet").write_bytes(b"not parquet at all")     # unreadable, in a pruned partition

    job = _job("2026-11-01", 700)
    out = str(tmp_path / "out")
    first = engine.run(job, str(data), out)
    assert_tables_close(first.read(), duck(table, _sql("2026-11-01", 700)), "g")
    assert first.report.input_files == 2                              # the two kept days only
    text = job.explain(str(data))
    assert "3 more files in partitions that no reader's where can match" in text

    # A new day the where excludes changes nothing: the rerun is a no-op under the same run id.
    old = data / "day=2026-10-15"
    old.mkdir()
    pq.write_table(_day_table("2026-10-15", 9), old / "part-0.parquet")
    again = engine.run(job, str(data), out)
    assert again.skipped and again.run_id == first.run_id
    # A new day it includes is new input.
    new = data / "day=2026-11-03"
    new.mkdir()
    extra = _day_table("2026-11-03", 10)
    pq.write_table(extra, new / "part-0.parquet")
    third = engine.run(job, str(data), out, mode="overwrite")
    assert not third.skipped and third.run_id != first.run_id
    everything = pa.concat_tables([table, extra.append_column("day", pa.array(["2026-11-03"] * extra.num_rows))])
    assert_tables_close(third.read(), duck(everything, _sql("2026-11-01", 700)), "g")

    # The same input read without a where (by another job) fails on the unreadable file.
    with pytest.raises(InputError, match="2026-09-01"):
        engine.run(Job("all").reduce(by="g", aggs={"n": agg.count()}), str(data), str(tmp_path / "out-all"))


def test_row_group_pruning_reads_fewer_rows(hive, tmp_path):
    parquet, _, table = hive
    job = Job("top-k").map(where=pc.field("k") >= 950).reduce(by="g", aggs={"n": agg.count(), "total": agg.sum("v")})
    text = job.explain(parquet)
    assert "where (k >= 950) pushed down: reads 4 of 4 file(s)" in text
    result = engine.run(job, parquet, str(tmp_path / "out"))
    expected = duck(table, "SELECT g, count(*)::BIGINT AS n, sum(v) AS total FROM x WHERE k >= 950 GROUP BY g")
    assert_tables_close(result.read(), expected, "g")
    read = {s.name: s for s in result.report.stages}["r0-map"].rows_in
    matching = int(expected["n"].to_numpy().sum())
    # k is sorted within each file: only the last row group or two of each day can hold k >= 950
    assert matching <= read <= 4 * 2 * ROW_GROUP < table.num_rows


def test_where_on_every_format(tmp_path):
    """The exact filter runs on what any reader yields: IPC, JSON lines and text too."""
    rng = np.random.default_rng(5)
    t = pa.table({"k": rng.integers(0, 100, 500), "g": rng.integers(0, 4, 500)})
    (tmp_path / "ipc").mkdir()
    with pa.ipc.new_file(tmp_path / "ipc" / "a.arrow", t.schema) as w:
        w.write_table(t)
    (tmp_path / "json").mkdir()
    with open(tmp_path / "json" / "a.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in t.to_pylist())
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    where = pc.field("k") < 40
    expected = duck(t, "SELECT k, g FROM x WHERE k < 40 ORDER BY k, g")
    for fmt in ("ipc", "json"):
        spec = resolve_input(str(tmp_path / fmt))
        got = pa.concat_tables(filter_table(pa.Table.from_batches([b]), where)
                               for s in prune_splits(spec, where).splits for b in read_split(spec.fs, s))
        assert got.select(["k", "g"]).sort_by([("k", "ascending"), ("g", "ascending")]).to_pylist() == \
            expected.to_pylist()
    job = Job("lines").map(where=pc.match_substring(pc.field("text"), "7")).reduce(by="text", aggs={"n": agg.count()})
    result = engine.run(job, str(tmp_path / "text"), str(tmp_path / "out"))
    assert sorted(result.read()["text"].to_pylist()) == sorted(f"line {i}" for i in range(50) if "7" in str(i))


def test_where_after_a_reduce_and_with_a_function(hive, tmp_path):
    """A where on a later map filters that map's input (here: the aggregation's output); a where with a
    function filters before the function."""
    parquet, _, table = hive

    def doubled(t: pa.Table) -> pa.Table:
        return t.set_column(t.schema.get_field_index("v"), "v", pc.multiply(t["v"], 2))

    job = (Job("chain").map(doubled, columns=["g", "v"], where=pc.field("s") == "s3")
           .reduce(by="g", aggs={"n": agg.count(), "v": agg.sum("v")})
           .map(where=pc.field("n") > 40))
    assert "+ ['s'] for where" in job.explain(parquet)
    result = engine.run(job, parquet, str(tmp_path / "out"))
    expected = duck(table, "SELECT g, count(*)::BIGINT AS n, sum(v * 2) AS v FROM x WHERE s = 's3' GROUP BY g "
                           "HAVING count(*) > 40")
    assert expected.num_rows
    assert_tables_close(result.read(), expected, "g")


# -- definition errors, fingerprint ------------------------------------------------------------------


def test_where_errors(hive):
    parquet, _, _ = hive
    with pytest.raises(SchemaError, match=r"names column 'nope'.*it has columns \['k', 'v', 'g', 's', 'day'\]"):
        Job("e").map(where=pc.field("nope") > 1).reduce(by="g", aggs={"n": agg.count()}).explain(parquet)
    with pytest.raises(JobDefinitionError, match="must be a condition"):
        Job("e").map(where=pc.field("k") + 1).reduce(by="g", aggs={"n": agg.count()}).explain(parquet)
    with pytest.raises(JobDefinitionError, match="Expression"):
        Job("e").map(where="k > 1")
    with pytest.raises(JobDefinitionError, match="function, columns= or where="):
        Job("e").map()


def test_where_is_in_the_fingerprint():
    def fp(where):
        return Job("f").map(where=where).reduce(by="g", aggs={"n": agg.count()}).fingerprint()

    assert fp(pc.field("k") > 1) == fp(pc.field("k") > 1)
    assert fp(pc.field("k") > 1) != fp(pc.field("k") > 2)
    # long value sets print elided; the fingerprint still tells them apart
    a, b = list(range(1_000)), list(range(1_000))
    b[500] = 5_000
    assert str(pc.field("k").isin(a)) == str(pc.field("k").isin(b))
    assert fp(pc.field("k").isin(a)) != fp(pc.field("k").isin(b))
    plain = Job("f").reduce(by="g", aggs={"n": agg.count()}).fingerprint()
    assert plain != fp(pc.field("k") > 1)
