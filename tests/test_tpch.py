"""TPC-H Q1, Q3, Q5, Q6, Q10, Q12 and Q18 (jobs/tpch.py) against DuckDB on generated scale-factor 0.1 data.

The tables are generated once per session (tpchgen-cli, two Parquet files per table where the table
has enough rows); every query runs on the one embedded cluster, and DuckDB answers the standard SQL
over the same files in this process, once with the default join strategy (at this size every
join broadcasts its smaller side) and once with every join forced to shuffle over many small
partitions. Same rows (sorted by the query's key columns), floats within 1e-6 relative (the engine
sums doubles, DuckDB exact decimals), and the engine's output in the order of its ``sort``. The benchmark's Polars and dask.dataframe versions are checked the same way,
so the benchmark compares like with like.
"""

from __future__ import annotations

import datetime
import os

import dask
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from benchmarks.answers import same
from jobs import tpch

SCALE = 0.1
PARTS = 2
REL = 1e-6
# rows per table at scale factor 0.1 (TPC-H: SF x 150,000 customers, x 1,500,000 orders, ...)
ROWS = {"region": 5, "nation": 25, "supplier": 1_000, "customer": 15_000, "part": 20_000, "partsupp": 80_000,
        "orders": 150_000, "lineitem": 600_572}


@pytest.fixture(scope="session")
def tpch_data(tmp_path_factory) -> str:
    return tpch.generate(SCALE, str(tmp_path_factory.mktemp("tpch") / "sf0.1"), parts=PARTS)


def _files(directory: str, table: str) -> list[str]:
    return sorted(f for f in os.listdir(os.path.join(directory, table)) if f.endswith(".parquet"))


def test_generated_tables_and_types(tpch_data):
    marker = tpch.read_marker(tpch_data)
    assert marker["scale_factor"] == SCALE and marker["parts"] == PARTS and marker["rows"] == ROWS
    for table, rows in ROWS.items():
        files = _files(tpch_data, table)
        assert len(files) == (PARTS if rows > 100 else 1)
        assert sum(pq.ParquetFile(os.path.join(tpch_data, table, f)).metadata.num_rows for f in files) == rows
    schema = pq.read_schema(os.path.join(tpch_data, "lineitem", _files(tpch_data, "lineitem")[0]))
    assert schema.field("l_orderkey").type == pa.int64()
    assert schema.field("l_extendedprice").type == pa.decimal128(15, 2)
    assert schema.field("l_shipdate").type == pa.date32()
    assert pa.types.is_string_view(schema.field("l_returnflag").type)


def test_generation_is_skipped_when_done_and_redone_when_not(tmp_path):
    directory = str(tmp_path / "sf0.01")
    assert tpch.generate(0.01, directory, parts=1, tables=("nation", "region")) == directory
    path = os.path.join(directory, "nation", _files(directory, "nation")[0])
    stamp = os.stat(path).st_mtime_ns
    tpch.generate(0.01, directory, parts=1, tables=("nation",))            # a subset of what is there
    assert os.stat(path).st_mtime_ns == stamp
    # no marker (a generation killed half-way): the tables are written again, not trusted
    os.remove(os.path.join(directory, tpch.MARKER))
    os.remove(path)
    tpch.generate(0.01, directory, parts=1, tables=("nation", "region"))
    assert pq.read_table(path).num_rows == 25 and tpch.read_marker(directory)["tables"] == ["nation", "region"]
    # another scale factor in the same directory replaces the tables
    tpch.generate(0.02, directory, parts=1, tables=("region",))
    assert tpch.read_marker(directory)["scale_factor"] == 0.02


def test_reference_sql_gives_the_known_answers(tpch_data):
    """Spot checks of DuckDB's answers that do not depend on the engine: Q1's row counts are the
    lineitem rows shipped by 1998-09-02, Q6 equals a pyarrow computation in exact decimals."""
    q1 = tpch.duckdb_answer(1, tpch_data)
    lineitem = pq.read_table(os.path.join(tpch_data, "lineitem"),
                             columns=["l_shipdate", "l_discount", "l_quantity", "l_extendedprice"])
    shipped = pc.sum(pc.less_equal(lineitem["l_shipdate"], pa.scalar(datetime.date(1998, 9, 2)))).as_py()
    assert q1.num_rows == 4 and sum(q1["count_order"].to_pylist()) == shipped
    rows = lineitem.filter(pc.and_(
        pc.and_(pc.greater_equal(lineitem["l_shipdate"], pa.scalar(datetime.date(1994, 1, 1))),
                pc.less(lineitem["l_shipdate"], pa.scalar(datetime.date(1995, 1, 1)))),
        pc.and_(pc.and_(pc.greater_equal(pc.cast(lineitem["l_discount"], pa.float64()), 0.0499),
                        pc.less_equal(pc.cast(lineitem["l_discount"], pa.float64()), 0.0701)),
                pc.less(pc.cast(lineitem["l_quantity"], pa.float64()), 24.0))))
    exact = sum(p * d for p, d in zip(rows["l_extendedprice"].to_pylist(), rows["l_discount"].to_pylist()))
    assert tpch.duckdb_answer(6, tpch_data)["revenue"].to_pylist() == [exact]


def _check_order(answer: pa.Table, query: int) -> None:
    """The engine's output is in the order of its sort: the leading key never goes the wrong way."""
    sort = tpch.QUERIES[query].stages[-1] if tpch.QUERIES[query].stages[-1].kind == "sort" else None
    if sort is None:
        return
    lead = answer[sort.by[0]]
    if answer.num_rows > 1:
        later, earlier = lead.slice(1), lead.slice(0, answer.num_rows - 1)
        wrong = pc.less(later, earlier) if not sort.descending else pc.greater(later, earlier)
        assert not pc.any(wrong).as_py(), f"q{query}: output not ordered by {sort.by[0]}"


def _check_query(query: int, result: engine.RunResult, tpch_data: str) -> None:
    actual = result.read()
    expected = tpch.duckdb_answer(query, tpch_data)
    assert expected.num_rows > 0
    assert actual.column_names == expected.column_names
    assert actual.num_rows == expected.num_rows, (actual.num_rows, expected.num_rows)
    ok, why = same(actual, expected, tpch.KEYS[query], rel=REL)
    assert ok, f"q{query}: {why}"
    _check_order(actual, query)


@pytest.mark.parametrize("query", list(tpch.QUERIES))
def test_query_matches_duckdb(query, tpch_data, tmp_path):
    """Default settings: at this size every join side fits under broadcast-max, so joins broadcast."""
    result = engine.run(tpch.QUERIES[query], tpch.inputs(tpch_data, query), str(tmp_path / f"q{query}"))
    _check_query(query, result, tpch_data)
    if len(tpch.INPUTS[query]) > 1:
        assert {j["strategy"] for j in result.report.joins if "strategy" in j} == {"broadcast"}


JOINED = [q for q in tpch.QUERIES if len(tpch.INPUTS[q]) > 1]


@pytest.mark.parametrize("query", JOINED)
def test_query_with_shuffle_joins_matches_duckdb(query, tpch_data, tmp_path):
    """Every join forced to a shuffle join, over many small partitions."""
    with dask.config.set({"engine.join.strategy": "shuffle"}):
        result = engine.run(tpch.QUERIES[query], tpch.inputs(tpch_data, query), str(tmp_path / f"q{query}"),
                            partition_size="1MiB")
    joins = [j for j in result.report.joins if "strategy" in j]
    assert joins and {j["strategy"] for j in joins} == {"shuffle"}
    assert max(j["partitions"] for j in joins) > 1
    _check_query(query, result, tpch_data)


@pytest.mark.parametrize("system", ["polars", "dask"])
def test_benchmark_peers_match_duckdb(system, tpch_data):
    from benchmarks import tpch_bench
    pytest.importorskip("polars" if system == "polars" else "dask.dataframe")
    if system == "dask":
        from engine.cluster import get_client
        client, _ = get_client(None)
        answers = {q: tpch_bench.dask_query(q, tpch_data, client) for q in tpch.QUERIES}
    else:
        answers = {q: tpch_bench.polars_query(q, tpch_data) for q in tpch.QUERIES}
    for q, answer in answers.items():
        verdict = tpch_bench.compare({system: answer}, tpch.duckdb_answer(q, tpch_data), tpch.KEYS[q])[system]
        assert verdict["equal"], (q, verdict)
