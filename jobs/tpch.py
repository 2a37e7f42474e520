"""TPC-H queries 1, 3, 5, 6, 10, 12 and 18 as engine jobs, with their data and DuckDB reference SQL.

**Data.** :func:`generate` runs ``tpchgen-cli`` (a port of TPC's dbgen, ``pip install tpchgen-cli``)
and writes every table as Parquet under ``DIRECTORY/<table>/<table>.<part>.parquet``; a marker
file ``DIRECTORY/_tpch.json`` records the scale factor and parts, so a second call with the same
arguments returns at once. The files it writes (tpchgen-cli 4.0.0) hold:

* keys (``*_orderkey``, ``*_custkey``, ``*_partkey``, ``*_suppkey``, ``*_nationkey``, ``*_regionkey``) as
  ``int64``; ``l_linenumber``, ``o_shippriority``, ``p_size``, ``ps_availqty`` as ``int32``;
* money and quantities (``l_quantity``, ``l_extendedprice``, ``l_discount``, ``l_tax``,
  ``o_totalprice``, ``c_acctbal``, ``s_acctbal``, ``p_retailprice``, ``ps_supplycost``) as
  ``decimal128(15, 2)``;
* dates (``l_shipdate``, ``l_commitdate``, ``l_receiptdate``, ``o_orderdate``) as ``date32``;
* text as ``string_view`` (the engine reads view types as plain ``string``);
* every column non-nullable, Snappy-compressed, row groups of about 7 MiB. Tables of fewer rows
  than parts (nation, region) are written as one file.

Generation takes about 10 s at scale factor 1 (346 MB) and 65 s at 10 (3.7 GB) on 2 cores.

At scale factor 1 lineitem has 6,001,215 rows and orders 1,500,000.

**Precision.** The queries' maps cast the decimal columns they use to ``float64`` before any
arithmetic, and the aggregations sum doubles (``engine.agg.sum`` of a decimal column returns a
double too). DuckDB computes the same expressions in exact decimal arithmetic; the engine's answers
agree with it to about 1e-12 relative at scale factor 1 (the tests allow 1e-6). Filters on money
columns (Q6's discount and quantity bounds) compare the decimals themselves against decimal
constants, so no row falls on the wrong side of a bound through rounding.

**Queries.** Each job reads named inputs (``engine.run(QUERIES[n], {table: path, ...}, out)``,
:data:`INPUTS` names the tables of each, :func:`inputs` builds the dict) and computes the full
answer of the TPC-H query with its standard substitution parameters. Two liberties:

* no ``LIMIT`` (Q3 and Q10 take the first 10 and 20 rows, Q18 the first 100): the jobs return all
  rows;
* ``ORDER BY`` keys are sorted in the direction of the leading key (the engine's sort has one
  direction), e.g. Q3 sorts by ``revenue, o_orderdate`` both descending where TPC-H has
  ``o_orderdate`` ascending. :data:`KEYS` names the columns that identify a row of each answer, for
  comparisons.

:data:`SQL` holds the reference text of each query for DuckDB (standard TPC-H text without
``LIMIT``, over views named like the tables; Q18's ``sum(l_quantity)`` is aliased ``sum_qty``), and
:func:`duckdb_answer` runs it over the same files.

    python -c "from jobs.tpch import generate; generate(1, 'data/tpch-sf1')"
    mapreduce run jobs/tpch.py --input lineitem=data/tpch-sf1/lineitem --output out/q1   # job = Q1
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine import Job, agg

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")
MARKER = "_tpch.json"
GENERATOR = "tpchgen-cli"


# ---------------------------------------------------------------------------------------------
# Data


def generator_command() -> list[str]:
    """How to call tpchgen-cli from this Python environment: the executable installed beside
    ``sys.executable`` (the package ships a native binary, no ``python -m`` entry), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), GENERATOR)
    for candidate in (here, here + ".exe"):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return [candidate]
    found = shutil.which(GENERATOR)
    if found:
        return [found]
    raise RuntimeError(f"{GENERATOR} is not installed in this environment; pip install tpchgen-cli "
                       "(or pip install -e '.[test]')")


def default_parts(scale_factor: float) -> int:
    """Files per table: four per unit of scale factor, at least one (SF 1: 4 files, lineitem's of
    about 58 MB each; SF 10: 40). Files of that size let every system read in parallel without
    splitting files (dask.dataframe reads one 230 MB file as one partition)."""
    return max(1, int(-(-float(scale_factor) * 4 // 1)))


def read_marker(directory: str) -> dict | None:
    """The marker :func:`generate` leaves in a finished directory, or None."""
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate(scale_factor: float, directory: str, parts: int | None = None, *,
             tables: tuple[str, ...] = TABLES, threads: int | None = None) -> str:
    """TPC-H tables at ``scale_factor`` as Parquet in ``directory/<table>/``; returns ``directory``.

    Skipped when ``directory`` already holds a finished generation of the same scale factor and
    parts with at least these tables (its marker file). Otherwise the tables are (re)written from
    scratch and the marker is written last, so an interrupted generation is redone, not trusted.
    ``parts`` is the number of files per table (default :func:`default_parts`); ``threads`` the
    generator's threads (default: all cores).
    """
    parts = default_parts(scale_factor) if parts is None else int(parts)
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown TPC-H table(s) {unknown}; choose from {TABLES}")
    marker = read_marker(directory)
    if (marker is not None and float(marker.get("scale_factor", -1)) == float(scale_factor)
            and marker.get("parts") == parts and set(tables) <= set(marker.get("tables", ()))):
        return directory
    os.makedirs(directory, exist_ok=True)
    try:
        os.remove(os.path.join(directory, MARKER))
    except FileNotFoundError:
        pass
    for table in tables:
        shutil.rmtree(os.path.join(directory, table), ignore_errors=True)
    command = generator_command() + [
        "parquet", "--scale-factor", _number(scale_factor), "--parts", str(parts), "--tables", ",".join(tables),
        "--output-dir", directory, "--overwrite", "--quiet", "--no-progress"]
    if threads is not None:
        command += ["--num-threads", str(int(threads))]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{GENERATOR} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}")
    seconds = time.perf_counter() - started
    missing = [t for t in tables if not _parquet_files(os.path.join(directory, t))]
    if missing:
        raise RuntimeError(f"{GENERATOR} wrote no Parquet files for {missing} in {directory}")
    version = _generator_version()
    rows = {t: sum(pq.ParquetFile(os.path.join(directory, t, f)).metadata.num_rows
                   for f in _parquet_files(os.path.join(directory, t))) for t in tables}
    doc = {"scale_factor": float(scale_factor), "parts": parts, "tables": list(tables), "rows": rows,
           "generator": version, "seconds": round(seconds, 2)}
    tmp = os.path.join(directory, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, os.path.join(directory, MARKER))
    return directory


def _generator_version() -> str:
    from importlib import metadata
    try:
        return f"{GENERATOR} {metadata.version(GENERATOR)}"
    except metadata.PackageNotFoundError:
        return GENERATOR


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _parquet_files(path: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(path) if f.endswith(".parquet"))
    except FileNotFoundError:
        return []


def inputs(directory: str, query: int) -> dict[str, str]:
    """The named inputs of ``query`` over a generated directory: ``{table: directory/table}``."""
    return {t: os.path.join(directory, t) for t in INPUTS[query]}


# ---------------------------------------------------------------------------------------------
# Helpers for the maps


def columns_only(t: pa.Table) -> pa.Table:
    """Pass the input through: the map's ``columns=`` already chose what is read."""
    return t


def _date(text: str) -> pa.Scalar:
    return pa.scalar(datetime.date.fromisoformat(text), pa.date32())


def _decimal(text: str) -> pa.Scalar:
    return pa.scalar(Decimal(text), pa.decimal128(15, 2))


def _f64(column) -> pa.ChunkedArray:
    return pc.cast(column, pa.float64())


def _volume(t: pa.Table) -> pa.ChunkedArray:
    """``l_extendedprice * (1 - l_discount)`` in float64."""
    return pc.multiply(_f64(t["l_extendedprice"]), pc.subtract(1.0, _f64(t["l_discount"])))


def _between(column, low: pa.Scalar, high: pa.Scalar) -> pa.ChunkedArray:
    """``low <= column < high``."""
    return pc.and_(pc.greater_equal(column, low), pc.less(column, high))


# ---------------------------------------------------------------------------------------------
# Q1: pricing summary report


Q1_SHIPDATE = _date("1998-09-02")               # date '1998-12-01' - interval '90' day


def q1_lines(t: pa.Table) -> pa.Table:
    t = t.filter(pc.less_equal(t["l_shipdate"], Q1_SHIPDATE))
    price, discount = _f64(t["l_extendedprice"]), _f64(t["l_discount"])
    disc_price = pc.multiply(price, pc.subtract(1.0, discount))
    return pa.table({
        "l_returnflag": t["l_returnflag"], "l_linestatus": t["l_linestatus"],
        "quantity": _f64(t["l_quantity"]), "price": price, "discount": discount, "disc_price": disc_price,
        "charge": pc.multiply(disc_price, pc.add(1.0, _f64(t["l_tax"]))),
    })


q1 = (Job("tpch-q1", input="lineitem")
      .map(q1_lines, columns=["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount",
                              "l_tax", "l_shipdate"])
      .reduce(by=["l_returnflag", "l_linestatus"], aggs={
          "sum_qty": agg.sum("quantity"), "sum_base_price": agg.sum("price"),
          "sum_disc_price": agg.sum("disc_price"), "sum_charge": agg.sum("charge"),
          "avg_qty": agg.mean("quantity"), "avg_price": agg.mean("price"), "avg_disc": agg.mean("discount"),
          "count_order": agg.count()})
      .sort(by=["l_returnflag", "l_linestatus"]))


# ---------------------------------------------------------------------------------------------
# Q3: shipping priority


Q3_DATE = _date("1995-03-15")


def q3_customers(t: pa.Table) -> pa.Table:
    return t.filter(pc.equal(t["c_mktsegment"], "BUILDING")).select(["c_custkey"])


def q3_orders(t: pa.Table) -> pa.Table:
    return t.filter(pc.less(t["o_orderdate"], Q3_DATE))


def q3_lines(t: pa.Table) -> pa.Table:
    t = t.filter(pc.greater(t["l_shipdate"], Q3_DATE))
    return pa.table({"l_orderkey": t["l_orderkey"], "volume": _volume(t)})


def q3_answer(t: pa.Table) -> pa.Table:
    return t.select(["l_orderkey", "revenue", "o_orderdate", "o_shippriority"])


q3 = (Job("tpch-q3", input="customer")
      .map(q3_customers, columns=["c_custkey", "c_mktsegment"])
      .join(Job("tpch-q3-orders", input="orders")
            .map(q3_orders, columns=["o_orderkey", "o_custkey", "o_orderdate", "o_shippriority"]),
            left_on="c_custkey", right_on="o_custkey")
      .join(Job("tpch-q3-lineitem", input="lineitem")
            .map(q3_lines, columns=["l_orderkey", "l_extendedprice", "l_discount", "l_shipdate"]),
            left_on="o_orderkey", right_on="l_orderkey")
      .reduce(by=["l_orderkey", "o_orderdate", "o_shippriority"], aggs={"revenue": agg.sum("volume")})
      .map(q3_answer)
      .sort(by=["revenue", "o_orderdate"], descending=True))


# ---------------------------------------------------------------------------------------------
# Q5: local supplier volume


Q5_FROM, Q5_TO = _date("1994-01-01"), _date("1995-01-01")


def q5_region(t: pa.Table) -> pa.Table:
    return t.filter(pc.equal(t["r_name"], "ASIA")).select(["r_regionkey"])


def q5_suppliers(t: pa.Table) -> pa.Table:
    return t.select(["n_name", "s_suppkey", "s_nationkey"])


def q5_orders(t: pa.Table) -> pa.Table:
    return t.filter(_between(t["o_orderdate"], Q5_FROM, Q5_TO)).select(["o_orderkey", "o_custkey"])


def q5_lines(t: pa.Table) -> pa.Table:
    return pa.table({"l_orderkey": t["l_orderkey"], "l_suppkey": t["l_suppkey"], "volume": _volume(t)})


# suppliers in ASIA with their nation's name: region -> nation -> supplier
asian_suppliers = (Job("tpch-q5-region", input="region")
                   .map(q5_region, columns=["r_regionkey", "r_name"])
                   .join("nation", left_on="r_regionkey", right_on="n_regionkey")
                   .join(Job("tpch-q5-supplier", input="supplier")
                         .map(columns_only, columns=["s_suppkey", "s_nationkey"]),
                         left_on="n_nationkey", right_on="s_nationkey")
                   .map(q5_suppliers))

# orders of 1994 with their customer's nation
orders_1994 = (Job("tpch-q5-orders", input="orders")
               .map(q5_orders, columns=["o_orderkey", "o_custkey", "o_orderdate"])
               .join(Job("tpch-q5-customer", input="customer")
                     .map(columns_only, columns=["c_custkey", "c_nationkey"]),
                     left_on="o_custkey", right_on="c_custkey"))

q5 = (Job("tpch-q5", input="lineitem")
      .map(q5_lines, columns=["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"])
      .join(asian_suppliers, left_on="l_suppkey", right_on="s_suppkey")
      # the customer and the supplier are of the same nation
      .join(orders_1994, left_on=["l_orderkey", "s_nationkey"], right_on=["o_orderkey", "c_nationkey"])
      .reduce(by="n_name", aggs={"revenue": agg.sum("volume")})
      .sort(by="revenue", descending=True))


# ---------------------------------------------------------------------------------------------
# Q6: forecasting revenue change (one number: the engine's reduce groups by a constant key)


Q6_FROM, Q6_TO = _date("1994-01-01"), _date("1995-01-01")
Q6_DISCOUNT_LOW, Q6_DISCOUNT_HIGH = _decimal("0.05"), _decimal("0.07")   # 0.06 -/+ 0.01, inclusive
Q6_QUANTITY = _decimal("24")


def q6_lines(t: pa.Table) -> pa.Table:
    keep = pc.and_(pc.and_(_between(t["l_shipdate"], Q6_FROM, Q6_TO),
                           pc.and_(pc.greater_equal(t["l_discount"], Q6_DISCOUNT_LOW),
                                   pc.less_equal(t["l_discount"], Q6_DISCOUNT_HIGH))),
                   pc.less(t["l_quantity"], Q6_QUANTITY))
    t = t.filter(keep)
    return pa.table({"all": pa.repeat(0, t.num_rows).cast(pa.int8()),
                     "change": pc.multiply(_f64(t["l_extendedprice"]), _f64(t["l_discount"]))})


def q6_answer(t: pa.Table) -> pa.Table:
    return t.select(["revenue"])


q6 = (Job("tpch-q6", input="lineitem")
      .map(q6_lines, columns=["l_shipdate", "l_discount", "l_quantity", "l_extendedprice"])
      .reduce(by="all", aggs={"revenue": agg.sum("change")})
      .map(q6_answer))


# ---------------------------------------------------------------------------------------------
# Q10: returned item reporting (revenue per customer first, then the customer's details)


Q10_FROM, Q10_TO = _date("1993-10-01"), _date("1994-01-01")


def q10_orders(t: pa.Table) -> pa.Table:
    return t.filter(_between(t["o_orderdate"], Q10_FROM, Q10_TO)).select(["o_orderkey", "o_custkey"])


def q10_returned(t: pa.Table) -> pa.Table:
    t = t.filter(pc.equal(t["l_returnflag"], "R"))
    return pa.table({"l_orderkey": t["l_orderkey"], "volume": _volume(t)})


def q10_customers(t: pa.Table) -> pa.Table:
    return t.set_column(t.schema.get_field_index("c_acctbal"), "c_acctbal", _f64(t["c_acctbal"]))


def q10_answer(t: pa.Table) -> pa.Table:
    return t.select(["c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone",
                       "c_comment"])


q10 = (Job("tpch-q10", input="orders")
       .map(q10_orders, columns=["o_orderkey", "o_custkey", "o_orderdate"])
       .join(Job("tpch-q10-lineitem", input="lineitem")
             .map(q10_returned, columns=["l_orderkey", "l_extendedprice", "l_discount", "l_returnflag"]),
             left_on="o_orderkey", right_on="l_orderkey")
       .reduce(by="o_custkey", aggs={"revenue": agg.sum("volume")})
       .join(Job("tpch-q10-customer", input="customer")
             .map(q10_customers, columns=["c_custkey", "c_name", "c_address", "c_nationkey", "c_phone",
                                          "c_acctbal", "c_comment"]),
             left_on="o_custkey", right_on="c_custkey")
       .join(Job("tpch-q10-nation", input="nation").map(columns_only, columns=["n_nationkey", "n_name"]),
             left_on="c_nationkey", right_on="n_nationkey")
       .map(q10_answer)
       .sort(by="revenue", descending=True))


# ---------------------------------------------------------------------------------------------
# Q12: shipping modes and order priority


Q12_FROM, Q12_TO = _date("1994-01-01"), _date("1995-01-01")
Q12_MODES = pa.array(["MAIL", "SHIP"])
Q12_HIGH = pa.array(["1-URGENT", "2-HIGH"])


def q12_lines(t: pa.Table) -> pa.Table:
    keep = pc.and_(pc.and_(pc.is_in(t["l_shipmode"], value_set=Q12_MODES),
                           pc.less(t["l_commitdate"], t["l_receiptdate"])),
                   pc.and_(pc.less(t["l_shipdate"], t["l_commitdate"]),
                           _between(t["l_receiptdate"], Q12_FROM, Q12_TO)))
    return t.filter(keep).select(["l_orderkey", "l_shipmode"])


def q12_priorities(t: pa.Table) -> pa.Table:
    high = pc.is_in(t["o_orderpriority"], value_set=Q12_HIGH)
    return pa.table({"l_shipmode": t["l_shipmode"], "high": pc.cast(high, pa.int64()),
                     "low": pc.cast(pc.invert(high), pa.int64())})


q12 = (Job("tpch-q12", input="lineitem")
       .map(q12_lines, columns=["l_orderkey", "l_shipmode", "l_commitdate", "l_receiptdate", "l_shipdate"])
       .join(Job("tpch-q12-orders", input="orders").map(columns_only, columns=["o_orderkey", "o_orderpriority"]),
             left_on="l_orderkey", right_on="o_orderkey")
       .map(q12_priorities)
       .reduce(by="l_shipmode", aggs={"high_line_count": agg.sum("high"), "low_line_count": agg.sum("low")})
       .sort(by="l_shipmode"))


# ---------------------------------------------------------------------------------------------
# Q18: large volume customers (orders of more than 300 units: their quantity is that sum)


Q18_QUANTITY = 300.0


def q18_quantities(t: pa.Table) -> pa.Table:
    return pa.table({"l_orderkey": t["l_orderkey"], "quantity": _f64(t["l_quantity"])})


def q18_large(t: pa.Table) -> pa.Table:
    return t.filter(pc.greater(t["sum_qty"], Q18_QUANTITY))


def q18_orders(t: pa.Table) -> pa.Table:
    return t.set_column(t.schema.get_field_index("o_totalprice"), "o_totalprice", _f64(t["o_totalprice"]))


def q18_answer(t: pa.Table) -> pa.Table:
    return t.select(["c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice", "sum_qty"])


q18 = (Job("tpch-q18", input="lineitem")
       .map(q18_quantities, columns=["l_orderkey", "l_quantity"])
       .reduce(by="l_orderkey", aggs={"sum_qty": agg.sum("quantity")})
       .map(q18_large)
       .join(Job("tpch-q18-orders", input="orders")
             .map(q18_orders, columns=["o_orderkey", "o_custkey", "o_orderdate", "o_totalprice"]),
             left_on="l_orderkey", right_on="o_orderkey")
       .join(Job("tpch-q18-customer", input="customer").map(columns_only, columns=["c_custkey", "c_name"]),
             left_on="o_custkey", right_on="c_custkey")
       .map(q18_answer)
       .sort(by=["o_totalprice", "o_orderdate"], descending=True))


QUERIES: dict[int, Job] = {1: q1, 3: q3, 5: q5, 6: q6, 10: q10, 12: q12, 18: q18}

INPUTS: dict[int, list[str]] = {
    1: ["lineitem"],
    3: ["customer", "orders", "lineitem"],
    5: ["region", "nation", "supplier", "customer", "orders", "lineitem"],
    6: ["lineitem"],
    10: ["customer", "orders", "lineitem", "nation"],
    12: ["orders", "lineitem"],
    18: ["customer", "orders", "lineitem"],
}

KEYS: dict[int, list[str]] = {
    1: ["l_returnflag", "l_linestatus"],
    3: ["l_orderkey"],
    5: ["n_name"],
    6: [],
    10: ["c_custkey"],
    12: ["l_shipmode"],
    18: ["o_orderkey"],
}
"""The columns that identify a row of each query's answer (sort both answers by them to compare)."""

job = q1            # ``mapreduce run jobs/tpch.py``


# ---------------------------------------------------------------------------------------------
# DuckDB reference SQL (standard TPC-H text without LIMIT)


SQL: dict[int, str] = {
    1: """
SELECT l_returnflag, l_linestatus,
       sum(l_quantity) AS sum_qty,
       sum(l_extendedprice) AS sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
       avg(l_quantity) AS avg_qty,
       avg(l_extendedprice) AS avg_price,
       avg(l_discount) AS avg_disc,
       count(*) AS count_order
FROM lineitem
WHERE l_shipdate <= date '1998-12-01' - interval '90' day
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus
""",
    3: """
SELECT l_orderkey,
       sum(l_extendedprice * (1 - l_discount)) AS revenue,
       o_orderdate, o_shippriority
FROM customer, orders, lineitem
WHERE c_mktsegment = 'BUILDING'
  AND c_custkey = o_custkey
  AND l_orderkey = o_orderkey
  AND o_orderdate < date '1995-03-15'
  AND l_shipdate > date '1995-03-15'
GROUP BY l_orderkey, o_orderdate, o_shippriority
ORDER BY revenue DESC, o_orderdate
""",
    5: """
SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue
FROM customer, orders, lineitem, supplier, nation, region
WHERE c_custkey = o_custkey
  AND l_orderkey = o_orderkey
  AND l_suppkey = s_suppkey
  AND c_nationkey = s_nationkey
  AND s_nationkey = n_nationkey
  AND n_regionkey = r_regionkey
  AND r_name = 'ASIA'
  AND o_orderdate >= date '1994-01-01'
  AND o_orderdate < date '1994-01-01' + interval '1' year
GROUP BY n_name
ORDER BY revenue DESC
""",
    6: """
SELECT sum(l_extendedprice * l_discount) AS revenue
FROM lineitem
WHERE l_shipdate >= date '1994-01-01'
  AND l_shipdate < date '1994-01-01' + interval '1' year
  AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01
  AND l_quantity < 24
""",
    10: """
SELECT c_custkey, c_name,
       sum(l_extendedprice * (1 - l_discount)) AS revenue,
       c_acctbal, n_name, c_address, c_phone, c_comment
FROM customer, orders, lineitem, nation
WHERE c_custkey = o_custkey
  AND l_orderkey = o_orderkey
  AND o_orderdate >= date '1993-10-01'
  AND o_orderdate < date '1993-10-01' + interval '3' month
  AND l_returnflag = 'R'
  AND c_nationkey = n_nationkey
GROUP BY c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment
ORDER BY revenue DESC
""",
    12: """
SELECT l_shipmode,
       sum(CASE WHEN o_orderpriority = '1-URGENT' OR o_orderpriority = '2-HIGH' THEN 1 ELSE 0 END)
           AS high_line_count,
       sum(CASE WHEN o_orderpriority <> '1-URGENT' AND o_orderpriority <> '2-HIGH' THEN 1 ELSE 0 END)
           AS low_line_count
FROM orders, lineitem
WHERE o_orderkey = l_orderkey
  AND l_shipmode IN ('MAIL', 'SHIP')
  AND l_commitdate < l_receiptdate
  AND l_shipdate < l_commitdate
  AND l_receiptdate >= date '1994-01-01'
  AND l_receiptdate < date '1994-01-01' + interval '1' year
GROUP BY l_shipmode
ORDER BY l_shipmode
""",
    18: """
SELECT c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity) AS sum_qty
FROM customer, orders, lineitem
WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey HAVING sum(l_quantity) > 300)
  AND c_custkey = o_custkey
  AND o_orderkey = l_orderkey
GROUP BY c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice
ORDER BY o_totalprice DESC, o_orderdate
""",
}


def duckdb_connection(directory: str, tables=TABLES, threads: int | None = None):
    """A DuckDB connection with a view per table over ``directory/<table>/*.parquet``."""
    import duckdb
    con = duckdb.connect()
    if threads is not None:
        con.execute(f"SET threads = {max(1, int(threads))}")
    for table in tables:
        path = os.path.join(directory, table, "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")
    return con


def duckdb_answer(query: int, directory: str, threads: int | None = None) -> pa.Table:
    """The DuckDB answer of ``query`` over the generated ``directory``, as an Arrow table."""
    con = duckdb_connection(directory, INPUTS[query], threads)
    try:
        rel = con.sql(SQL[query])
        if hasattr(rel, "to_arrow_table"):
            return rel.to_arrow_table()
        out = rel.arrow()
        return out.read_all() if isinstance(out, pa.RecordBatchReader) else out
    finally:
        con.close()


__all__ = ["generate", "inputs", "read_marker", "QUERIES", "INPUTS", "KEYS", "SQL", "TABLES", "duckdb_answer",
           "duckdb_connection", "job"]
