"""The ``--where`` language (engine/whereexpr.py), checked against DuckDB evaluating the same text.

Every case filters one table with ``parse_where(text, schema)`` and with DuckDB's
``SELECT id FROM t WHERE text``; the ids kept must be equal. The table has nulls in every column,
empty strings, a quote inside a string, a column whose name needs quotes, and the common types
(integers, floats, strings, dates, timestamps, booleans, decimals), so SQL's three-valued logic,
precedence and literal typing are all exercised. Random conditions (hypothesis) mix ``and``/``or``/
``not`` without parentheses, so precedence must match too. Errors are checked for their text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import JobDefinitionError, SchemaError
from engine.whereexpr import parse_where

DATE = "2026-11-01"
STRINGS = ["eu", "us", "eu/west", "", None, "it's", "Ab", "é"]
N = 48


def _table() -> pa.Table:
    ids = list(range(N))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "x": pa.array([None if i % 7 == 0 else i % 10 - 3 for i in ids], pa.int64()),
        "i8": pa.array([i % 5 for i in ids], pa.int8()),
        "f": pa.array([None if i % 9 == 0 else i * 0.25 - 3 for i in ids], pa.float64()),
        "s": pa.array([STRINGS[i % len(STRINGS)] for i in ids], pa.string()),
        "d": pa.array([None if i % 11 == 0 else dt.date(2026, 10, 28) + dt.timedelta(days=i % 8) for i in ids],
                      pa.date32()),
        "ts": pa.array([dt.datetime(2026, 11, 1) + dt.timedelta(hours=i) for i in ids], pa.timestamp("us")),
        "b": pa.array([[True, False, None][i % 3] for i in ids], pa.bool_()),
        "dec": pa.array([None if i % 13 == 0 else decimal.Decimal(i * 5) / 100 for i in ids], pa.decimal128(6, 2)),
        "odd name": pa.array([i % 4 for i in ids], pa.int64()),
        "date": pa.array([(dt.date(2026, 10, 30) + dt.timedelta(days=i % 4)).isoformat() for i in ids], pa.string()),
    })


TABLE = _table()
SCHEMA = TABLE.schema
_DUCK = duckdb.connect()
_DUCK.register("t", TABLE)


def _duck_text(text: str) -> str:
    """``{date}`` as DuckDB needs it: the date inside quotes, a quoted date outside them."""
    parts = text.split("'")
    for i in range(len(parts)):
        parts[i] = parts[i].replace("{date}", DATE if i % 2 else f"'{DATE}'")
    return "'".join(parts)


def _ours(text: str) -> list[int]:
    return sorted(TABLE.filter(parse_where(text, SCHEMA, date=DATE))["id"].to_pylist())


def _duckdb(text: str) -> list[int]:
    return sorted(r[0] for r in _DUCK.sql(f"SELECT id FROM t WHERE {_duck_text(text)}").fetchall())


CASES = [
    # comparisons, both spellings of equal and not-equal, literal on either side
    "x = 1", "x == 1", "x != 1", "x <> 1", "x < 2", "x <= 2", "x > 2", "x >= -2", "-2 < x", "1 = x",
    "x = '5'", "x = null", "x <> null", "x = x", "x < i8", "f > x",
    # in, not in, nulls in the list
    "x in (1, 2, 3)", "x not in (1, 2)", "x in (1, null)", "x not in (1, null)", "x in (-3)",
    # null tests, between
    "x is null", "x is not null", "X IS NOT NULL AND s <> 'eu'",
    "x between 0 and 3", "x not between 0 and 3", "x between 3 and 0", "x between -1 and i8",
    # precedence: not > and > or
    "not x = 1", "not (x = 1 or x = 2)", "x = 1 or x = 2 and s = 'eu'", "(x = 1 or x = 2) and s = 'eu'",
    "not x = 1 and not s = 'eu' or b", "not not b", "x > 0 and (f < 0 or f is null) or not (d > '2026-10-30')",
    # other numeric types
    "i8 in (1, 300)", "i8 < 300", "i8 = 2.5", "i8 not in (1, 2.5)", "f > 0", "f <= -1.5", "f = 1", "f = .25",
    "f in (0.5, 1, 1.25)", "f between -1 and 1e0", "f >= -2.5E0",
    # strings: empty, quotes, order, unicode
    "s = 'eu/west'", "s = ''", "s = 'it''s'", "s < 'eu'", "s in ('eu', '', 'it''s')", "s not in ('eu', 'us')",
    "s is null", "s >= 'Ab' and s < 'f'", "s > 'z'", "s = 'é'",
    # dates and timestamps: quoted text read as the column's type, typed literals, the logical date
    "d >= '2026-11-01'", "d = date '2026-11-01'", "d between '2026-10-30' and {date}", "d < {date}",
    "d in ('2026-10-28', '2026-11-02', null)", "d <> '{date}'", "d > timestamp '2026-10-30 12:00:00'",
    "ts >= '2026-11-02 03:00:00'", "ts < timestamp '2026-11-01 05:30:00'", "ts > '2026-11-02'",
    "ts between '2026-11-01 10:00:00.5' and '2026-11-02'",
    # booleans
    "b", "not b", "b = true", "b = false or b is null", "b or x = 1", "b <> false", "b = 'true'",
    # decimals: exact literals
    "dec > 0.5", "dec = 1.05", "dec in (0.1, 0.15, 1)", "dec < '1'", "dec between 0.2 and 0.3", "dec = 1",
    # quoted names, keywords as names, placeholders in and out of quotes
    '"odd name" = 2', '"odd name" in (1, 3) and x > 0', "date = '{date}'", "date >= {date}", '"date" < {date}',
    "date = '{date}' or date = '2026-10-30'",
    # constant conditions
    "true", "false", "null", "not null", "true and null", "false or null",
]


@pytest.mark.parametrize("text", CASES)
def test_matches_duckdb(text):
    assert _ours(text) == _duckdb(text)


def test_cases_keep_some_rows_and_drop_others():
    """The table is built so most cases are selective (a case keeping all or nothing proves little)."""
    selective = [c for c in CASES if 0 < len(_duckdb(c)) < N]
    assert len(selective) >= len(CASES) - 16


def _literal(column: str) -> st.SearchStrategy[str]:
    if column == "x":
        return st.integers(-4, 7).map(str)
    if column == "f":
        return st.integers(-14, 40).map(lambda i: repr(i * 0.25))
    if column == "s":
        return st.sampled_from([s for s in STRINGS if s is not None]).map(lambda s: "'" + s.replace("'", "''") + "'")
    return st.integers(27, 31).map(lambda k: f"'2026-10-{k}'")     # d


def _atom() -> st.SearchStrategy[str]:
    column = st.sampled_from(["x", "f", "s", "d"])
    compare = column.flatmap(lambda c: st.tuples(st.just(c), st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="]),
                                                 _literal(c)).map(" ".join))
    in_list = column.flatmap(lambda c: st.tuples(
        st.just(c), st.sampled_from(["in", "not in"]),
        st.lists(st.one_of(_literal(c), st.just("null")), min_size=1, max_size=4).map(lambda v: "(" + ", ".join(v) + ")")
    ).map(" ".join))
    between = column.flatmap(lambda c: st.tuples(st.just(c), st.sampled_from(["between", "not between"]), _literal(c),
                                                 st.just("and"), _literal(c)).map(" ".join))
    null_test = column.map(lambda c: c + " is null") | column.map(lambda c: c + " is not null")
    return st.one_of(compare, in_list, between, null_test, st.sampled_from(["b", "b = true", "b = false"]))


CONDITIONS = st.recursive(
    _atom(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" and ", " or ", " AND ", " Or "]), inner).map("".join),
        inner.map(lambda c: "not " + c),
        inner.map(lambda c: "(" + c + ")"),
    ),
    max_leaves=8,
)


@given(CONDITIONS)
def test_random_conditions_match_duckdb(text):
    assert _ours(text) == _duckdb(text), text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_string_literals_round_trip(value):
    table = pa.table({"s": [value, value + "x"]})
    quoted = "'" + value.replace("'", "''") + "'"
    assert table.filter(parse_where(f"s = {quoted}", table.schema))["s"].to_pylist() == [value]


# -- without a schema -----------------------------------------------------------------------------


def test_without_schema_literals_keep_their_types():
    assert parse_where("s = 'eu' and x >= 2").equals((pc.field("s") == "eu") & (pc.field("x") >= 2))
    assert parse_where("date = '{date}'", date=dt.date(2026, 11, 30)).equals(pc.field("date") == "2026-11-30")
    assert parse_where("date = {date}", date="2026-11-30").equals(pc.field("date") == "2026-11-30")
    table = pa.table({"x": [1, None, 3], "s": ["a", "b", None]})
    assert table.filter(parse_where("x not in (1, 2) or s in ('b')"))["x"].to_pylist() == [None, 3]


def test_names_ignore_case_when_unambiguous():
    schema = pa.schema([("Region", pa.string()), ("k", pa.int64()), ("K", pa.int64())])
    assert parse_where("region = 'eu' and k = 1", schema).equals((pc.field("Region") == "eu") & (pc.field("k") == 1))
    assert parse_where('"K" = 1', schema).equals(pc.field("K") == 1)
    schema = pa.schema([("ab", pa.int64()), ("AB", pa.int64())])
    with pytest.raises(SchemaError, match=r"column 'Ab', which the input does not have \(did you mean 'ab'\?\)"):
        parse_where("Ab = 1", schema)


def test_an_expression_passes_through():
    expr = pc.field("x") > 1
    assert parse_where(expr, SCHEMA) is expr


# -- errors ---------------------------------------------------------------------------------------


def _message(exc_info) -> str:
    return str(exc_info.value)


def test_syntax_errors_point_at_the_spot():
    with pytest.raises(JobDefinitionError) as e:
        parse_where("x = 1 and and s = 'eu'")
    assert _message(e) == ("cannot parse the where condition at character 11: expected a column or a value, "
                           "found 'and'\n  x = 1 and and s = 'eu'\n            ^")
    with pytest.raises(JobDefinitionError) as e:
        parse_where("x = 1\n  or s == 'eu")
    assert _message(e).startswith("cannot parse the where condition at line 2, character 11: this string is "
                                  "never closed")
    assert _message(e).endswith("\n    or s == 'eu\n            ^")
    for text, fragment in [
        ("", "the condition is empty"),
        ("x = ", "expected a column or a value, found the end of the condition"),
        ("(x = 1", "expected ')' to close the parenthesis"),
        ("x in ()", "expected a literal in the list, found ')'"),
        ("x in (1, 2", "expected ',' or ')' in the list"),
        ("x between 1 or 2", "expected 'and' between the two bounds"),
        ("x is nul", "expected 'null' after 'is'"),
        ("x not like 'a%'", "expected 'in' or 'between' after 'not'"),
        ("x = 1 s = 2", "expected 'and', 'or' or the end of the condition, found 's'"),
        ("x + 1 = 2", "unexpected character '+' (the where language has no arithmetic)"),
        ("x = 99999999999999999999", "does not fit in 64 bits"),
        ("x = 1.5.3", "'1.5.3' is not a number"),
        ("1st = 2", "'1st' is not a number (a name cannot start with a digit"),
        ("d = date 'soon'", "'soon' is not a date"),
        ('"" = 1', "a quoted column name cannot be empty"),
        ("s = {today}", "unknown placeholder {today}; the only one is {date}"),
        ("5", "a value alone is not a condition"),
        ("__import__('os').system('true')", "unexpected character '.'"),    # no eval: just a syntax error
        ("x = 1; drop table t", "unexpected character ';'"),
    ]:
        with pytest.raises(JobDefinitionError, match=re.escape(fragment)):
            parse_where(text, date=DATE)


def test_the_logical_date_is_required_when_used():
    for text in ("date = '{date}'", "d < {date}"):
        with pytest.raises(JobDefinitionError, match=r"uses \{date\}.*no logical date; pass date='YYYY-MM-DD' "
                                                     r"\(command line: --date YYYY-MM-DD\)"):
            parse_where(text, SCHEMA)


def test_schema_errors_name_the_column():
    columns = ", ".join(SCHEMA.names)
    with pytest.raises(SchemaError) as e:
        parse_where("region = 'eu'", SCHEMA)
    assert _message(e) == (f"the where condition names column 'region', which the input does not have; "
                           f"its columns are: {columns}")
    with pytest.raises(SchemaError, match=r"'Xx', which the input does not have \(did you mean 'x'\?\)"):
        parse_where("Xx = 1", SCHEMA)
    with pytest.raises(SchemaError, match=r"compares column 's' \(string\) with the number 5 \(character 5\); "
                                          r"write the value in quotes to compare text: '5'"):
        parse_where("s = 5", SCHEMA)
    with pytest.raises(SchemaError, match=r"compares column 'd' \(date32\[day\]\) with 'soon' \(character 5\), "
                                          r"which is not a value of that type; write dates as 'YYYY-MM-DD'"):
        parse_where("d = 'soon'", SCHEMA)
    with pytest.raises(SchemaError, match=r"column 'x' \(int64\) with 'five'.*write an integer"):
        parse_where("x in (1, 'five')", SCHEMA)
    with pytest.raises(SchemaError, match=r"column 'd' \(date32\[day\]\) with the number 3"):
        parse_where("d > 3", SCHEMA)
    with pytest.raises(SchemaError, match=r"column 'b' \(bool\) with 'maybe'.*write true or false"):
        parse_where("b = 'maybe'", SCHEMA)
    with pytest.raises(SchemaError, match=r"column 'x' \(int64\) with true"):
        parse_where("x = true", SCHEMA)
    with pytest.raises(SchemaError, match=r"uses column 'x' \(int64\) as a condition; only a boolean column"):
        parse_where("x and b", SCHEMA)
    with pytest.raises(SchemaError, match="does not fit the input's column types"):
        parse_where("s < d", SCHEMA)                      # two columns Arrow cannot compare
    with pytest.raises(SchemaError, match="do not share one type"):
        parse_where("x in (1, 'a')")                       # without a schema: the list itself disagrees


# -- in a run -------------------------------------------------------------------------------------


def test_a_run_filtered_by_where_text_matches_duckdb(tmp_path):
    """``engine.run(..., where=text, date=...)`` over a Hive input with escaped and null partition
    values: the rows kept are DuckDB's for the same WHERE over the same files."""
    import engine
    import pyarrow.parquet as pq
    from engine import Job
    from engine.hive import split_by_partition

    regions = ["eu/west", "50%", None, "", "x:y?"]
    rows = pa.table({"id": list(range(60)), "region": [regions[i % 5] for i in range(60)],
                     "k": pa.array([None if i % 4 == 0 else i % 3 for i in range(60)], pa.int64()),
                     "d": pa.array([dt.date(2026, 11, 1 + i % 3) for i in range(60)], pa.date32()),
                     "v": [i * 0.5 for i in range(60)]})
    for directory, _, part in split_by_partition(rows, ["region", "k"]):
        (tmp_path / "in" / directory).mkdir(parents=True)
        pq.write_table(part, tmp_path / "in" / directory / "part-0.parquet")
    for i, text in enumerate(["k is null or region = 'eu/west'", "region in ('50%', 'x:y?') and d >= '2026-11-02'",
                              "k = '1' and v > 3", "d = {date} and region is not null"]):
        result = engine.run(Job("keep").map(lambda t: t), str(tmp_path / "in"), str(tmp_path / f"out{i}"),
                            where=text, date="2026-11-02")
        sql = (f"SELECT id FROM read_parquet('{tmp_path}/in/**/*.parquet', hive_partitioning=true) "
               f"WHERE {text.replace('{date}', repr('2026-11-02'))}")
        assert sorted(result.read()["id"].to_pylist()) == sorted(r[0] for r in duckdb.sql(sql).fetchall()), text
