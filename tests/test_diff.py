"""Comparing committed outputs (``engine.diff`` and ``mapreduce diff``) against DuckDB.

Outputs are committed by ``engine.run`` of small jobs (small inputs run in the driver, so each run
takes a fraction of a second); every figure of a comparison is checked against DuckDB reading the
files the outputs' manifests list: row counts per partition, per-column aggregates, key coverage and
the row-level differences by key (DuckDB's ``IS DISTINCT FROM``: NaN equals NaN, null equals null).

Promises checked here:

* counts, aggregates, key coverage and the row-level diff agree with DuckDB, with floats compared
  exactly, NaN equal to NaN, null equal to null, and null keys matching null keys;
* duplicate keys are flagged and left out of the row-level diff;
* the change gate trips strictly above the threshold (5% passes at exactly 5%, 5.1% trips), a partition
  that appears or disappears is a 100% change, 0 rows to 0 rows is none;
* ``partitions=`` restricts the comparison; an unknown partition is an error;
* ``mapreduce diff`` exits 0, 3 when the gate trips, 1 for a missing or damaged output, 2 for a bad
  threshold; it runs as a real process and never imports dask;
* a damaged output (one flipped byte in a data file) is refused with IntegrityError, not diffed;
* partitioned outputs (``partition_by``) are compared per partition directory, awkward values included.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg
from engine.cli import EXIT_FAILED, EXIT_GATE, EXIT_OK, EXIT_USAGE, main
from engine.diff import DEFAULT_PARTITION, compare, parse_change, split_partitions
from engine.errors import DiffError, IntegrityError, ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = float("nan")

IDENTITY = Job("identity").map(lambda t: t)
SALES = Job("sales").reduce(by=["region", "customer"], aggs={"amount": agg.sum("amount"), "qty": agg.sum("qty"),
                                                               "orders": agg.count()})


# ---------------------------------------------------------------------------------------------
# Helpers


def commit(job: Job, table: pa.Table, where, name: str, parts: int = 2, **options) -> str:
    """Write ``table`` as ``parts`` shuffled input files and commit ``job``'s output of them."""
    src = where / f"{name}-in"
    src.mkdir()
    order = np.random.default_rng(len(name)).permutation(table.num_rows)
    shuffled = table.take(pa.array(order, pa.int64()))
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for i in range(parts):
        pq.write_table(shuffled.slice(bounds[i], bounds[i + 1] - bounds[i]), src / f"part-{i}.parquet")
    out = str(where / name)
    result = engine.run(job, str(src), out, partition_size="4KiB", **options)
    assert result.report.cluster["local"] is True          # small: ran in the driver
    return out


def files_of(out: str) -> list[str]:
    """The data files of a committed output, from its manifest (what DuckDB reads)."""
    with open(os.path.join(out, "_SUCCESS")) as f:
        return [os.path.join(out, e["path"]) for e in json.load(f)["files"]]


def duck(a: str, b: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name, out in (("a", a), ("b", b)):
        if out is not None:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({files_of(out)!r})")
    return con


def sales(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    regions = np.array(["eu", "us", "ap", "latam"], dtype=object)
    region = regions[rng.integers(0, 4, n)]
    region[rng.random(n) < 0.05] = None
    amount = np.round(rng.random(n) * 100, 2)
    return pa.table({"region": pa.array(region, pa.string()), "customer": rng.integers(0, n // 4, n),
                     "amount": amount, "qty": rng.integers(1, 10, n)})


def close(x, y) -> bool:
    if isinstance(x, float) or isinstance(y, float):
        return x == pytest.approx(y, rel=1e-12, abs=1e-9)
    return x == y


# ---------------------------------------------------------------------------------------------
# Counts, aggregates, keys and rows against DuckDB


@pytest.fixture(scope="module")
def sales_outputs(tmp_path_factory):
    """Two committed versions of a per-(region, customer) aggregate: B drops some customers, adds new
    ones, changes some amounts, and doubles one region."""
    where = tmp_path_factory.mktemp("sales")
    v1 = sales(3000, seed=1)
    rng = np.random.default_rng(2)
    keep = pc.invert(pc.is_in(v1["customer"], value_set=pa.array([3, 5, 8, 13, 21], pa.int64())))
    v2 = v1.filter(keep)
    bump = rng.random(v2.num_rows) < 0.03
    v2 = v2.set_column(2, "amount", pa.array(np.where(bump, np.round(v2["amount"].to_numpy() + 1.25, 2),
                                                       v2["amount"].to_numpy())))
    extra = sales(200, seed=3)
    extra = extra.set_column(1, "customer", pc.add(extra["customer"], 10_000))
    latam = v1.filter(pc.equal(v1["region"], "latam"))
    latam = latam.set_column(1, "customer", pc.add(latam["customer"], 20_000))
    v2 = pa.concat_tables([v2, extra, latam])
    return commit(SALES, v1, where, "v1"), commit(SALES, v2, where, "v2")


def test_counts_aggregates_keys_and_rows_agree_with_duckdb(sales_outputs):
    a, b = sales_outputs
    d = compare(a, b, key=["region", "customer"], partition_columns=["region"])
    con = duck(a, b)

    # rows per partition
    for side, name in (("a", "rows_a"), ("b", "rows_b")):
        expected = {("region=" + (r if r is not None else DEFAULT_PARTITION)): n for r, n in
                    con.execute(f"SELECT region, count(*) FROM {side} GROUP BY region").fetchall()}
        assert {p.name: getattr(p, name) for p in d.partitions if getattr(p, name) is not None} == expected
    assert d.a.rows == con.execute("SELECT count(*) FROM a").fetchone()[0]
    assert d.b.rows == con.execute("SELECT count(*) FROM b").fetchone()[0]
    latam = d.partition("region=latam")
    assert latam.rows_b > latam.rows_a and latam.change == (latam.rows_b - latam.rows_a) / latam.rows_a

    # per-column aggregates
    for side in ("a", "b"):
        for col in ("amount", "qty", "orders", "customer"):
            s = d.columns[col][side]
            total, low, high, mean, nulls = con.execute(
                f"SELECT sum({col}), min({col}), max({col}), avg({col}), count(*) - count({col}) FROM {side}"
            ).fetchone()
            assert close(s["sum"], total) and s["min"] == low and s["max"] == high and close(s["mean"], mean)
            assert s["nulls"] == nulls
        s = d.columns["region"][side]
        distinct, low, high, nulls = con.execute(
            f"SELECT count(DISTINCT region), min(region), max(region), count(*) - count(region) FROM {side}").fetchone()
        assert (s["distinct"], s["min"], s["max"], s["nulls"]) == (distinct, low, high, nulls)

    # key coverage (null regions are keys too: IS NOT DISTINCT FROM)
    only_a, only_b, both = con.execute(
        "SELECT count(*) FILTER (WHERE b.customer IS NULL), count(*) FILTER (WHERE a.customer IS NULL), "
        "count(*) FILTER (WHERE a.customer IS NOT NULL AND b.customer IS NOT NULL) "
        "FROM a FULL OUTER JOIN b ON a.region IS NOT DISTINCT FROM b.region AND a.customer = b.customer").fetchone()
    k = d.keys
    assert (k.only_in_a, k.only_in_b, k.in_both) == (only_a, only_b, both)
    assert k.duplicated_a == k.duplicated_b == 0 and only_a > 0 and only_b > 0

    # rows by key
    join = "FROM a JOIN b ON a.region IS NOT DISTINCT FROM b.region AND a.customer = b.customer"
    r = d.rows
    removed = con.execute("SELECT a.region, a.customer FROM a ANTI JOIN b ON a.region IS NOT DISTINCT FROM b.region "
                          "AND a.customer = b.customer").fetchall()
    added = con.execute("SELECT b.region, b.customer FROM b ANTI JOIN a ON a.region IS NOT DISTINCT FROM b.region "
                        "AND a.customer = b.customer").fetchall()
    assert {(x["region"], x["customer"]) for x in r.removed.to_pylist()} == set(removed)
    assert {(x["region"], x["customer"]) for x in r.added.to_pylist()} == set(added)
    assert r.removed.num_rows == len(removed) == only_a and r.added.num_rows == len(added) == only_b
    for col in ("amount", "qty", "orders"):
        n = con.execute(f"SELECT count(*) {join} WHERE a.{col} IS DISTINCT FROM b.{col}").fetchone()[0]
        assert r.changed_by_column[col] == n
    changed = con.execute(f"SELECT a.region, a.customer, a.amount, b.amount {join} WHERE a.amount IS DISTINCT FROM "
                          "b.amount OR a.qty IS DISTINCT FROM b.qty OR a.orders IS DISTINCT FROM b.orders").fetchall()
    assert r.changed.num_rows == len(changed) > 0
    got = {(x["region"], x["customer"]): (x["a.amount"], x["b.amount"]) for x in r.changed.to_pylist()}
    assert got == {(reg, c): (x, y) for reg, c, x, y in changed}          # exact float values
    assert r.unchanged == both - len(changed) and r.ambiguous == 0

    # presentations
    doc = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert doc["keys"]["only_in_a"] == only_a and doc["rows"]["changed"] == len(changed)
    text = str(d)
    assert f"{only_a:,} only in A" in text and "region=latam" in text and "rows by key:" in text
    assert "<table>" in d._repr_html_()


def test_row_level_diff_is_exact_for_floats_nan_and_null(tmp_path):
    third = 0.1 + 0.2                                     # 0.30000000000000004, not 0.3
    a = pa.table({"k": pa.array([1, 2, 3, 4, 5, 6, 7, 8, None, 10, 11], pa.int64()),
                  "x": [third, NAN, None, None, NAN, 1.0, 2.0, -0.0, 5.0, 1.0, 7.0],
                  "s": ["a", "b", None, "d", "e", None, "g", "h", "i", "j", "k"],
                  "n": pa.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], pa.int64())})
    b = pa.table({"k": pa.array([1, 2, 3, 4, 5, 6, 7, 7, 8, None, 12, 11], pa.int64()),
                  "x": [0.3, NAN, None, 1.0, None, 1.0, 2.0, 2.0, 0.0, 5.0, 1.0, 7.0],
                  "s": ["a", "b", None, "d", "e", "", "g", "g", "h", "i", "l", "k"],
                  "n": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.0, 8.0, 9.5, 12.0, 11.0]})
    out_a = commit(IDENTITY, a, tmp_path, "a")
    out_b = commit(IDENTITY, b, tmp_path, "b")
    d = compare(out_a, out_b, key="k")
    con = duck(out_a, out_b)

    # key 7 is twice in B: flagged, and left out of the row-level diff
    assert (d.keys.duplicated_a, d.keys.duplicated_b, d.keys.duplicate_rows_b) == (0, 1, 2)
    assert d.keys.duplicates_b.to_pylist() == [{"k": 7, "rows": 2}]
    assert d.rows.ambiguous == 1
    # null keys match null keys; 10 only in A, 12 only in B
    assert (d.keys.only_in_a, d.keys.only_in_b, d.keys.in_both) == (1, 1, 10)
    assert d.rows.removed["k"].to_pylist() == [10] and d.rows.added["k"].to_pylist() == [12]

    # the reference: DuckDB's IS DISTINCT FROM (NaN = NaN, null = null, 0.0 = -0.0), keys unique on both sides
    expected = con.execute(
        "SELECT a.k, a.x IS DISTINCT FROM b.x, a.s IS DISTINCT FROM b.s, a.n::DOUBLE IS DISTINCT FROM b.n "
        "FROM a JOIN b ON a.k IS NOT DISTINCT FROM b.k WHERE a.k IS DISTINCT FROM 7").fetchall()
    want = {k: [c for c, hit in zip(("x", "s", "n"), flags) if hit] for k, *flags in expected}
    got = {r["k"]: r["changed"] for r in d.rows.changed.to_pylist()}
    assert got == {k: v for k, v in want.items() if v}
    assert got == {1: ["x"], 4: ["x"], 5: ["x"], 6: ["s"], None: ["n"]}
    assert d.rows.unchanged == sum(1 for v in want.values() if not v) == 4
    assert d.rows.changed_by_column == {"x": 3, "s": 1, "n": 1}
    row = d.rows.changed.filter(pc.equal(d.rows.changed["k"], 1)).to_pylist()[0]
    assert row["a.x"] == third and row["b.x"] == 0.3
    # n is int64 in A and double in B: a schema change, values compared as doubles
    assert d.schema.changed == (("n", "int64", "double"),)
    assert "column 'n' type int64 -> double" in str(d)


def test_row_level_diff_stops_at_max_rows_but_keys_are_still_covered(sales_outputs):
    a, b = sales_outputs
    full = compare(a, b, key=["region", "customer"])
    small = compare(a, b, key=["region", "customer"], max_rows=full.a.rows - 1)
    assert small.rows is None and "max_rows" in small.row_diff_skipped
    assert (small.keys.only_in_a, small.keys.only_in_b, small.keys.in_both) == \
        (full.keys.only_in_a, full.keys.only_in_b, full.keys.in_both)
    assert "rows by key: not compared" in str(small)
    nokey = compare(a, b)
    assert nokey.keys is None and nokey.rows is None and "key" in nokey.row_diff_skipped
    assert [p.name for p in nokey.partitions] == [""] and nokey.partitions[0].rows_a == full.a.rows


# ---------------------------------------------------------------------------------------------
# The gate


def counts_table(counts: dict[str, int]) -> pa.Table:
    """``n`` rows per value of ``p``, numbered 0..n-1 in ``i`` within each."""
    pairs = [(p, i) for p, n in counts.items() for i in range(n)]
    return pa.table({"p": pa.array([p for p, _ in pairs], pa.string()),
                     "i": pa.array([i for _, i in pairs], pa.int64())})


@pytest.fixture(scope="module")
def gate_outputs(tmp_path_factory):
    where = tmp_path_factory.mktemp("gate")
    a = commit(IDENTITY, counts_table({"a": 100, "b": 1000, "c": 20, "e": 40}), where, "a")
    b = commit(IDENTITY, counts_table({"a": 105, "b": 1051, "d": 7, "e": 40}), where, "b")
    return a, b


def test_gate_trips_strictly_above_the_threshold(gate_outputs):
    a, b = gate_outputs
    d = compare(*gate_outputs, partition_columns=["p"])
    con = duck(a, b)
    for side, attr in (("a", "rows_a"), ("b", "rows_b")):
        assert {f"p={p}": n for p, n in con.execute(f"SELECT p, count(*) FROM {side} GROUP BY p").fetchall()} == \
            {x.name: getattr(x, attr) for x in d.partitions if getattr(x, attr) is not None}
    assert d.only_in_a == ["p=c"] and d.only_in_b == ["p=d"]
    assert d.partition("p=a").change == 0.05 and d.partition("p=b").change == 0.051

    def tripped(limit):
        return [v.split(":")[0].split(" is only")[0] for v in d.violations(limit)]

    assert tripped(0.05) == tripped("5%") == tripped("0.05") == ["partition p=b", "partition p=c", "partition p=d"]
    assert tripped("5.1%") == tripped(0.051) == ["partition p=c", "partition p=d"]
    assert tripped(0.999) == ["partition p=c", "partition p=d"]
    assert tripped("100%") == tripped(1) == []
    assert tripped(0) == ["partition p=a", "partition p=b", "partition p=c", "partition p=d"]
    sentences = d.violations("5%")
    assert sentences[0] == ("partition p=b: 1,000 rows in A, 1,051 in B, a change of +5.1%, more than the allowed 5%")
    assert "p=c is only in A (20 rows, none in B): it disappears, a 100% change" in sentences[1]
    assert "p=d is only in B (7 rows, none in A): it appears, a 100% change" in sentences[2]

    # only some partitions: the others do not count
    some = compare(a, b, partition_columns=["p"], partitions=["p=a", "p=e"])
    assert [p.name for p in some.partitions] == ["p=a", "p=e"] and some.violations("5%") == []
    assert some.a.rows == 140 and some.b.rows == 145 and some.columns["i"]["a"]["rows"] == 140
    assert some.violations(0.04) == ["partition p=a: 100 rows in A, 105 in B, a change of +5%, more than the "
                                     "allowed 4%"]
    with pytest.raises(DiffError, match="'p=x' matches no partition of A or B"):
        compare(a, b, partition_columns=["p"], partitions=["p=x"])
    with pytest.raises(DiffError, match="not partitioned"):
        compare(a, b, partitions=["p=a"])


def test_zero_rows_to_zero_rows_is_no_change(tmp_path):
    empty = Job("nothing").map(lambda t: t.slice(0, 0))
    a = commit(empty, counts_table({"a": 3}), tmp_path, "a")
    b = commit(empty, counts_table({"a": 5}), tmp_path, "b")
    full = commit(IDENTITY, counts_table({"a": 5}), tmp_path, "full")
    d = compare(a, b, key="i")
    assert (d.partitions[0].rows_a, d.partitions[0].rows_b, d.partitions[0].change) == (0, 0, 0.0)
    assert d.violations(0) == [] and d.rows.added.num_rows == 0
    grown = compare(a, full)
    assert grown.partitions[0].change == 1.0 and grown.violations(0.5) and not grown.violations(1.0)


def test_parse_change_and_partition_lists():
    assert parse_change("5%") == 0.05 == parse_change("0.05") == parse_change(" 5 % ")
    assert parse_change("5.1%") == 0.051 and parse_change("12.5%") == 0.125 and parse_change("0") == 0.0
    assert parse_change(0.2) == 0.2
    for bad in ("-5%", "abc", "5%%", "", "nan", "inf", float("inf"), -0.1):
        with pytest.raises(DiffError):
            parse_change(bad)
    assert split_partitions("region=a,b") == ["region=a,b"]
    assert split_partitions("date=2026-11-30,date=2026-12-01") == ["date=2026-11-30", "date=2026-12-01"]
    assert split_partitions(["d=1/r=x,y/z", "d=2/r=eu"]) == ["d=1/r=x,y/z", "d=2/r=eu"]


# ---------------------------------------------------------------------------------------------
# Errors: missing and damaged outputs


def test_a_damaged_output_is_refused_not_diffed(sales_outputs, tmp_path, capsys):
    a, b = sales_outputs
    damaged = str(tmp_path / "damaged")
    shutil.copytree(b, damaged)
    victim = files_of(damaged)[0]
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    with open(victim, "wb") as f:
        f.write(data)
    with pytest.raises(IntegrityError, match="damaged"):
        compare(a, damaged, key=["region", "customer"])
    assert main(["diff", a, damaged, "--max-change", "5%"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "IntegrityError" in err and os.path.basename(victim) in err

    with pytest.raises(ManifestError, match="holds no committed output"):
        compare(a, str(tmp_path / "nothing-here"))
    assert main(["diff", str(tmp_path / "nothing-here"), a]) == EXIT_FAILED
    assert "A (" in capsys.readouterr().err
    with pytest.raises(DiffError, match="key column 'nope' is not a column of A"):
        compare(a, b, key="nope")


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_exit_codes_and_json(gate_outputs, capsys):
    a, b = gate_outputs
    assert main(["diff", a, b, "--by", "p"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "partitions by p: 3 in both, 1 only in A, 1 only in B" in out
    assert main(["diff", a, b, "--by", "p", "--max-change", "100%"]) == EXIT_OK
    assert "gate --max-change 100%: passed" in capsys.readouterr().out
    assert main(["diff", a, b, "--by", "p", "--max-change", "5%"]) == EXIT_GATE
    captured = capsys.readouterr()
    assert "TRIPPED by 3 partition(s)" in captured.out
    assert "partition p=b: 1,000 rows in A, 1,051 in B" in captured.err and "p=a:" not in captured.err
    assert main(["diff", a, b, "--by", "p", "--partitions", "p=a,p=e", "--max-change", "5%"]) == EXIT_OK
    capsys.readouterr()
    assert main(["diff", a, b, "--by", "p", "--key", "p,i", "--max-change", "0.05", "--json"]) == EXIT_GATE
    doc = json.loads(capsys.readouterr().out)
    assert doc["max_change"] == 0.05 and len(doc["violations"]) == 3
    assert doc["keys"]["key"] == ["p", "i"] and doc["only_in_a"] == ["p=c"]
    assert {p["name"]: (p["rows_a"], p["rows_b"]) for p in doc["partitions"]}["p=b"] == (1000, 1051)
    assert main(["diff", a, b, "--max-change", "lots"]) == EXIT_USAGE
    assert "--max-change" in capsys.readouterr().err


def test_cli_in_a_real_process_without_dask(gate_outputs):
    a, b = gate_outputs
    env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "PYTHONPATH")}
    env["PYTHONPATH"] = REPO
    done = subprocess.run([sys.executable, "-m", "engine", "diff", a, b, "--by", "p", "--key", "p,i",
                           "--max-change", "5%"], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == EXIT_GATE, done.stderr
    assert "rows by key: 63 added, 20 removed, 0 changed" in done.stdout
    assert "gate tripped: 3 partition(s)" in done.stderr
    probe = ("import sys\nfrom engine.cli import main\n"
             f"rc = main(['diff', {a!r}, {b!r}, '--key', 'p,i'])\n"
             "print(rc, sorted(m for m in ('dask', 'distributed') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# Partitioned outputs


def test_partitioned_outputs_are_compared_per_partition_directory(tmp_path):
    regions = ["eu", "a/b", "x=y", "50%", "zürich", None, ""]
    rows = []
    for day in ("2026-11-29", "2026-11-30"):
        for i, r in enumerate(regions):
            rows += [{"date": day, "region": r, "k": j, "v": float(j) / 3} for j in range(10 + i)]
    v1 = pa.Table.from_pylist(rows)
    v2 = pa.Table.from_pylist([x for x in rows if not (x["region"] == "a/b" and x["date"] == "2026-11-30"
                                                        and x["k"] == 0)]
                              + [{"date": "2026-12-01", "region": "eu", "k": 0, "v": 1.0}])
    a = commit(IDENTITY, v1, tmp_path, "a", partition_by=["date", "region"])
    b = commit(IDENTITY, v2, tmp_path, "b", partition_by=["date", "region"])
    d = compare(a, b, key=["date", "region", "k"])
    assert d.partition_columns == ("date", "region")
    manifest = {name for out in (a, b) for name in json.load(open(os.path.join(out, "_SUCCESS")))["partitions"]}
    assert {p.name for p in d.partitions} == manifest
    con = duckdb.connect()
    for side, out in (("rows_a", a), ("rows_b", b)):
        per_dir = con.execute(f"SELECT regexp_replace(filename, '/[^/]*$', '') AS dir, count(*) FROM "
                              f"read_parquet({files_of(out)!r}, filename=true, hive_partitioning=false) GROUP BY dir"
                              ).fetchall()
        expected = {os.path.relpath(dir_, out): n for dir_, n in per_dir}
        assert {p.name: getattr(p, side) for p in d.partitions if getattr(p, side) is not None} == expected
    changed = [p for p in d.partitions if p.status != "same count"]
    assert len(changed) == 2 and d.only_in_b == ["date=2026-12-01/region=eu"]
    slash = next(p for p in changed if p.rows_a is not None)
    assert slash.values == {"date": "2026-11-30", "region": "a/b"} and "a/b" not in slash.name
    assert (slash.rows_a, slash.rows_b) == (11, 10)
    assert d.rows.removed.num_rows == 1 and d.rows.added.num_rows == 1 and d.rows.changed.num_rows == 0
    # a null and an empty region share the default partition and both read back as null: their keys are
    # duplicated (15 per date), flagged, and left out of the row-level diff
    assert (d.keys.duplicated_a, d.keys.duplicated_b, d.rows.ambiguous) == (30, 30, 30)
    violations = d.violations("5%")
    assert len(violations) == 2 and slash.name in violations[0]
    # only the partitions a staged run would replace
    some = compare(a, b, key=["date", "region", "k"], partitions=[slash.name])
    assert [p.name for p in some.partitions] == [slash.name] and some.a.rows == 11
    day = compare(a, b, partitions=["date=2026-11-30"])          # every partition under that directory
    assert {p.name for p in day.partitions} == {n for n in manifest if n.startswith("date=2026-11-30/")}
    assert main(["diff", a, b, "--partitions", slash.name, "--max-change", "10%"]) == EXIT_OK
    assert main(["diff", a, b, "--partitions", slash.name, "--max-change", "5%"]) == EXIT_GATE
    assert math.isclose(some.partitions[0].change, -1 / 11)
