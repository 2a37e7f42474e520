"""The db-benchmark groupby questions (jobs/groupby.py) against DuckDB's answers on generated G1 data.

Each question runs on the embedded cluster over G1 rows shuffled into several files, with a small
partition size so the shuffle has several reducers; DuckDB answers the same SQL over the same rows
in this process. Floats must agree within 1e-9 relative.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import assert_tables_close, write_parts

import engine
from benchmarks import datagen
from jobs.groupby import KEYS, QUESTIONS, SQL

ROWS = 40_000
FILES = 4

# Partition size per question: small enough for at least two reducers on this data, large enough
# that the many-group questions do not turn into hundreds of tiny tasks.
PARTITION_SIZE = {"q1": "2KiB", "q2": "32KiB", "q3": "8KiB", "q4": "4KiB", "q5": "8KiB", "q6": "32KiB",
                  "q7": "8KiB", "q8": "8KiB", "q9": "32KiB", "q10": "32KiB"}


def _arrow(relation) -> pa.Table:
    to_table = getattr(relation, "to_arrow_table", None)
    if to_table is not None:
        return to_table()
    out = relation.arrow()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


def duckdb_answer(table: pa.Table, question: str) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("x", table)
        return _arrow(con.sql(SQL[question]))
    finally:
        con.close()


def _nan_as_marker(table: pa.Table, column: str, marker: float = -1.0) -> pa.Table:
    """NaN (an undefined correlation) is a value both sides must agree on: replace it by ``marker``,
    a value r2 never takes, so the float comparison treats it like any other number."""
    col = table[column]
    fixed = pc.if_else(pc.is_nan(col), marker, col)
    return table.set_column(table.schema.get_field_index(column), column, fixed)


def check_question(question: str, data: pa.Table, directory: str, out: str) -> engine.RunResult:
    result = engine.run(QUESTIONS[question], directory, out, partition_size=PARTITION_SIZE[question])
    stages = {s.name: s for s in result.report.stages}
    assert stages["r0-map"].tasks >= FILES
    assert stages["r0-reduce"].tasks >= 2, f"{question}: want at least two reducers, got {stages['r0-reduce'].tasks}"
    actual = result.read()
    expected = duckdb_answer(data, question)
    assert actual.num_rows == expected.num_rows, (question, actual.num_rows, expected.num_rows)
    if question == "q8":
        def rows(t: pa.Table) -> list[tuple]:
            return sorted(((r["id6"] is None, r["id6"] or 0, r["largest2_v3"]) for r in t.to_pylist()))
        assert actual.column_names == ["id6", "largest2_v3"]
        assert rows(actual) == rows(expected)
    elif question == "q9":
        assert_tables_close(_nan_as_marker(actual, "r2"), _nan_as_marker(expected, "r2"), KEYS[question])
    else:
        assert_tables_close(actual, expected, KEYS[question])
    return result


@pytest.fixture(scope="module")
def g1_uniform(tmp_path_factory):
    table = datagen.g1_table(ROWS, seed=1)
    directory = tmp_path_factory.mktemp("g1")
    write_parts(directory, table, FILES, seed=2)
    return table, str(directory)


@pytest.fixture(scope="module")
def g1_skewed_nulls(tmp_path_factory):
    table = datagen.g1_table(ROWS, skew=1.2, nas=0.05, seed=3)
    directory = tmp_path_factory.mktemp("g1-skew-nulls")
    write_parts(directory, table, FILES, seed=4)
    return table, str(directory)


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_question_matches_duckdb(question, g1_uniform, tmp_path):
    table, directory = g1_uniform
    check_question(question, table, directory, str(tmp_path / question))


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_question_with_skew_and_nulls(question, g1_skewed_nulls, tmp_path):
    table, directory = g1_skewed_nulls
    assert table["id1"].null_count > 0 and table["v3"].null_count > 0
    check_question(question, table, directory, str(tmp_path / question))


def test_generated_g1_shape():
    table = datagen.g1_table(5_000, seed=5)
    assert table.schema.equals(datagen.G1_SCHEMA)
    assert pc.min_max(table["v1"]).as_py() == {"min": 1, "max": 5}
    assert pc.min_max(table["v2"]).as_py()["max"] <= 15
    assert all(len(s) == 12 for s in table["id3"].unique().to_pylist())
    assert table["id4"].unique().to_pylist() and max(table["id6"].to_pylist()) <= 5_000 // 100
    v3 = table["v3"].to_pylist()
    assert all(0 <= v < 100 and round(v, 6) == v for v in v3)
    # the same seed gives the same rows
    assert datagen.g1_table(5_000, seed=5).equals(table)


def test_g1_cache_is_reused_only_when_complete(tmp_path):
    path = datagen.g1(3_000, parts=3, out=tmp_path)
    marker = datagen.read_marker(path)
    assert marker["rows"] == 3_000 and len(marker["files"]) == 3
    first = sorted(os.listdir(path))
    stamp = os.path.getmtime(os.path.join(path, "part-00000.parquet"))
    assert datagen.g1(3_000, parts=3, out=tmp_path) == path
    assert os.path.getmtime(os.path.join(path, "part-00000.parquet")) == stamp
    # a directory without its marker (a generator killed half-way) is regenerated, not reused
    os.remove(os.path.join(path, datagen.MARKER))
    os.remove(os.path.join(path, "part-00002.parquet"))
    assert datagen.g1(3_000, parts=3, out=tmp_path) == path
    assert sorted(os.listdir(path)) == first
    assert datagen.g1_table(3_000).num_rows == sum(pq.ParquetFile(os.path.join(path, f["name"])).metadata.num_rows
                                                   for f in marker["files"])
