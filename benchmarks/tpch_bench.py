"""TPC-H Q1, Q3, Q5, Q6, Q10, Q12 and Q18: the engine vs DuckDB, Polars and dask.dataframe, same files.

    python -m benchmarks --suites tpch --tpch-sf 1 [--repeat 3] [--peers duckdb,polars,dask]
    python -m benchmarks summary RESULTS.jsonl          # the per-query table with engine/peer ratios

The data is ``jobs.tpch.generate(SF, DATA/tpch-sfSF)`` (tpchgen-cli, Parquet, four files per table
and unit of scale factor), generated once and reused. Per query:

* **engine**: ``engine.run(jobs.tpch.QUERIES[n], {table: DATA/tpch-sfSF/table, ...}, OUT)`` on the
  embedded LocalCluster, a fresh output per run, timed whole (planning, every stage, writing and
  committing the output).
* **duckdb**: ``jobs.tpch.SQL[n]`` over views on ``read_parquet`` in this process (``threads`` =
  the cluster's threads), fetched as Arrow. Exact decimal arithmetic, as SQL has it.
* **polars**: lazy ``scan_parquet`` plans (:func:`polars_query`), collected and converted to Arrow.
  Money columns are cast to ``Float64`` as the engine's jobs do (Polars' decimal product keeps the
  operands' scale, so it would round every line's price to cents).
* **dask**: ``dd.read_parquet`` + ``merge`` / ``groupby`` (:func:`dask_query`) computed on the
  engine's own LocalCluster, the answer a pandas frame in this process. Money columns are cast to
  ``float64`` after reading (dask cannot build graphs over Arrow decimal columns here), through
  Arrow's cast (pandas' own converts through Python ``Decimal`` objects, 5 s per 6M values).

Answers are compared value by value (every answer converted to Arrow, dask's from pandas; rows
sorted by the query's key columns ``jobs.tpch.KEYS``, floats within 1e-6 relative): the engine's
against every peer's, and every peer's against DuckDB's, so a wrong peer shows too. Answers are
small (Q3, the largest, has about 114,000 rows per unit of scale factor), so they are compared
whole rather than by checksum.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
CASES = (1, 3, 5, 6, 10, 12, 18)
REL = 1e-6


def data_dir(scale_factor: float, root: str | None = None) -> str:
    from jobs.tpch import _number
    return os.path.join(root or DATA, f"tpch-sf{_number(scale_factor)}")


def dataset(scale_factor: float, root: str | None = None) -> str:
    """The generated tables at ``scale_factor`` (generated on first use)."""
    from jobs.tpch import generate
    return generate(scale_factor, data_dir(scale_factor, root))


def _path(directory: str, table: str) -> str:
    return os.path.join(directory, table, "*.parquet")


# ---------------------------------------------------------------------------------------------
# DuckDB


def duckdb_query(q: int, directory: str, threads: int) -> pa.Table:
    from jobs.tpch import duckdb_answer
    return duckdb_answer(q, directory, threads)


# ---------------------------------------------------------------------------------------------
# Polars (lazy)


def polars_query(q: int, directory: str, threads: int = 0) -> pa.Table:
    import polars as pl
    col = pl.col

    def scan(table: str):
        return pl.scan_parquet(_path(directory, table))

    def money(*names: str):
        return [col(n).cast(pl.Float64) for n in names]

    volume = (col("l_extendedprice") * (1 - col("l_discount")))
    d = datetime.date
    if q == 1:
        plan = (scan("lineitem")
                .filter(col("l_shipdate") <= d(1998, 9, 2))
                .with_columns(money("l_quantity", "l_extendedprice", "l_discount", "l_tax"))
                .group_by("l_returnflag", "l_linestatus")
                .agg(col("l_quantity").sum().alias("sum_qty"),
                     col("l_extendedprice").sum().alias("sum_base_price"),
                     volume.sum().alias("sum_disc_price"),
                     (volume * (1 + col("l_tax"))).sum().alias("sum_charge"),
                     col("l_quantity").mean().alias("avg_qty"),
                     col("l_extendedprice").mean().alias("avg_price"),
                     col("l_discount").mean().alias("avg_disc"),
                     pl.len().alias("count_order"))
                .sort("l_returnflag", "l_linestatus"))
    elif q == 3:
        customer = scan("customer").filter(col("c_mktsegment") == "BUILDING")
        orders = scan("orders").filter(col("o_orderdate") < d(1995, 3, 15))
        lineitem = scan("lineitem").filter(col("l_shipdate") > d(1995, 3, 15))
        plan = (customer.join(orders, left_on="c_custkey", right_on="o_custkey")
                .join(lineitem, left_on="o_orderkey", right_on="l_orderkey")
                .with_columns(money("l_extendedprice", "l_discount"))
                .group_by(col("o_orderkey").alias("l_orderkey"), "o_orderdate", "o_shippriority")
                .agg(volume.sum().alias("revenue"))
                .select("l_orderkey", "revenue", "o_orderdate", "o_shippriority")
                .sort(["revenue", "o_orderdate"], descending=[True, False]))
    elif q == 5:
        plan = (scan("customer")
                .join(scan("orders"), left_on="c_custkey", right_on="o_custkey")
                .join(scan("lineitem"), left_on="o_orderkey", right_on="l_orderkey")
                .join(scan("supplier"), left_on=["l_suppkey", "c_nationkey"], right_on=["s_suppkey", "s_nationkey"])
                .join(scan("nation"), left_on="c_nationkey", right_on="n_nationkey")
                .join(scan("region"), left_on="n_regionkey", right_on="r_regionkey")
                .filter((col("r_name") == "ASIA") & (col("o_orderdate") >= d(1994, 1, 1))
                        & (col("o_orderdate") < d(1995, 1, 1)))
                .with_columns(money("l_extendedprice", "l_discount"))
                .group_by("n_name")
                .agg(volume.sum().alias("revenue"))
                .sort("revenue", descending=True))
    elif q == 6:
        plan = (scan("lineitem")
                .filter((col("l_shipdate") >= d(1994, 1, 1)) & (col("l_shipdate") < d(1995, 1, 1))
                        & col("l_discount").is_between(0.05, 0.07) & (col("l_quantity") < 24))
                .with_columns(money("l_extendedprice", "l_discount"))
                .select((col("l_extendedprice") * col("l_discount")).sum().alias("revenue")))
    elif q == 10:
        plan = (scan("customer")
                .join(scan("orders"), left_on="c_custkey", right_on="o_custkey")
                .join(scan("lineitem"), left_on="o_orderkey", right_on="l_orderkey")
                .join(scan("nation"), left_on="c_nationkey", right_on="n_nationkey")
                .filter((col("o_orderdate") >= d(1993, 10, 1)) & (col("o_orderdate") < d(1994, 1, 1))
                        & (col("l_returnflag") == "R"))
                .with_columns(money("l_extendedprice", "l_discount", "c_acctbal"))
                .group_by("c_custkey", "c_name", "c_acctbal", "c_phone", "n_name", "c_address", "c_comment")
                .agg(volume.sum().alias("revenue"))
                .select("c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone",
                        "c_comment")
                .sort("revenue", descending=True))
    elif q == 12:
        high = col("o_orderpriority").is_in(["1-URGENT", "2-HIGH"])
        plan = (scan("orders")
                .join(scan("lineitem"), left_on="o_orderkey", right_on="l_orderkey")
                .filter(col("l_shipmode").is_in(["MAIL", "SHIP"])
                        & (col("l_commitdate") < col("l_receiptdate"))
                        & (col("l_shipdate") < col("l_commitdate"))
                        & (col("l_receiptdate") >= d(1994, 1, 1)) & (col("l_receiptdate") < d(1995, 1, 1)))
                .group_by("l_shipmode")
                .agg(high.sum().alias("high_line_count"), (~high).sum().alias("low_line_count"))
                .sort("l_shipmode"))
    elif q == 18:
        lineitem = scan("lineitem").with_columns(money("l_quantity"))
        large = (lineitem.group_by("l_orderkey").agg(col("l_quantity").sum().alias("sum_qty"))
                 .filter(col("sum_qty") > 300))
        plan = (scan("orders")
                .join(large, left_on="o_orderkey", right_on="l_orderkey")
                .join(scan("customer"), left_on="o_custkey", right_on="c_custkey")
                .with_columns(money("o_totalprice"))
                .select(col("c_name"), col("o_custkey").alias("c_custkey"), "o_orderkey", "o_orderdate",
                        "o_totalprice", "sum_qty")
                .sort(["o_totalprice", "o_orderdate"], descending=[True, False]))
    else:
        raise KeyError(q)
    return plan.collect().to_arrow()


# ---------------------------------------------------------------------------------------------
# dask.dataframe


def dask_query(q: int, directory: str, client) -> Any:
    """Query ``q`` with dask.dataframe on ``client``'s cluster; a pandas frame."""
    import dask.dataframe as dd
    import pandas as pd

    def read(table: str, columns: list[str], money: tuple[str, ...] = ()):
        frame = dd.read_parquet(os.path.join(directory, table), columns=columns)
        if money:
            # decimal -> Arrow double (an Arrow cast) -> numpy float64 (no copy); a direct
            # astype("float64") goes through Python Decimal objects (5 s per 6M values)
            frame = frame.astype({c: "float64[pyarrow]" for c in money}).astype({c: "float64" for c in money})
        return frame

    def compute(expr):
        future = client.compute(expr)
        try:
            return future.result()
        finally:
            future.release()

    d = datetime.date
    if q == 1:
        li = read("lineitem", ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount",
                               "l_tax", "l_shipdate"], ("l_quantity", "l_extendedprice", "l_discount", "l_tax"))
        li = li[li.l_shipdate <= d(1998, 9, 2)]
        li = li.assign(disc_price=li.l_extendedprice * (1 - li.l_discount))
        li = li.assign(charge=li.disc_price * (1 + li.l_tax))
        out = li.groupby(["l_returnflag", "l_linestatus"]).agg(
            sum_qty=("l_quantity", "sum"), sum_base_price=("l_extendedprice", "sum"),
            sum_disc_price=("disc_price", "sum"), sum_charge=("charge", "sum"), avg_qty=("l_quantity", "mean"),
            avg_price=("l_extendedprice", "mean"), avg_disc=("l_discount", "mean"),
            count_order=("l_quantity", "size"))
        return compute(out).reset_index().sort_values(["l_returnflag", "l_linestatus"])
    if q == 3:
        c = read("customer", ["c_custkey", "c_mktsegment"])
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate", "o_shippriority"])
        li = read("lineitem", ["l_orderkey", "l_extendedprice", "l_discount", "l_shipdate"],
                  ("l_extendedprice", "l_discount"))
        c = c[c.c_mktsegment == "BUILDING"]
        o = o[o.o_orderdate < d(1995, 3, 15)]
        li = li[li.l_shipdate > d(1995, 3, 15)]
        j = c.merge(o, left_on="c_custkey", right_on="o_custkey").merge(li, left_on="o_orderkey",
                                                                         right_on="l_orderkey")
        j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
        out = j.groupby(["l_orderkey", "o_orderdate", "o_shippriority"]).revenue.sum().reset_index()
        res = compute(out)
        return res[["l_orderkey", "revenue", "o_orderdate", "o_shippriority"]].sort_values(
            ["revenue", "o_orderdate"], ascending=[False, True])
    if q == 5:
        r = read("region", ["r_regionkey", "r_name"])
        n = read("nation", ["n_nationkey", "n_name", "n_regionkey"])
        s = read("supplier", ["s_suppkey", "s_nationkey"])
        c = read("customer", ["c_custkey", "c_nationkey"])
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate"])
        li = read("lineitem", ["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"],
                  ("l_extendedprice", "l_discount"))
        r = r[r.r_name == "ASIA"]
        o = o[(o.o_orderdate >= d(1994, 1, 1)) & (o.o_orderdate < d(1995, 1, 1))]
        j = (r.merge(n, left_on="r_regionkey", right_on="n_regionkey")
             .merge(c, left_on="n_nationkey", right_on="c_nationkey")
             .merge(o, left_on="c_custkey", right_on="o_custkey")
             .merge(li, left_on="o_orderkey", right_on="l_orderkey")
             .merge(s, left_on=["l_suppkey", "n_nationkey"], right_on=["s_suppkey", "s_nationkey"]))
        j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
        res = compute(j.groupby("n_name").revenue.sum().reset_index())
        return res.sort_values("revenue", ascending=False)
    if q == 6:
        li = read("lineitem", ["l_shipdate", "l_discount", "l_quantity", "l_extendedprice"],
                  ("l_discount", "l_quantity", "l_extendedprice"))
        li = li[(li.l_shipdate >= d(1994, 1, 1)) & (li.l_shipdate < d(1995, 1, 1))
                & (li.l_discount >= 0.05) & (li.l_discount <= 0.07) & (li.l_quantity < 24)]
        revenue = compute((li.l_extendedprice * li.l_discount).sum())
        return pd.DataFrame({"revenue": [float(revenue)]})
    if q == 10:
        c = read("customer", ["c_custkey", "c_name", "c_address", "c_nationkey", "c_phone", "c_acctbal",
                              "c_comment"], ("c_acctbal",))
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate"])
        li = read("lineitem", ["l_orderkey", "l_extendedprice", "l_discount", "l_returnflag"],
                  ("l_extendedprice", "l_discount"))
        n = read("nation", ["n_nationkey", "n_name"])
        o = o[(o.o_orderdate >= d(1993, 10, 1)) & (o.o_orderdate < d(1994, 1, 1))]
        li = li[li.l_returnflag == "R"]
        j = (c.merge(o, left_on="c_custkey", right_on="o_custkey")
             .merge(li, left_on="o_orderkey", right_on="l_orderkey")
             .merge(n, left_on="c_nationkey", right_on="n_nationkey"))
        j = j.assign(revenue=j.l_extendedprice * (1 - j.l_discount))
        keys = ["c_custkey", "c_name", "c_acctbal", "c_phone", "n_name", "c_address", "c_comment"]
        res = compute(j.groupby(keys).revenue.sum().reset_index())
        return res[["c_custkey", "c_name", "revenue", "c_acctbal", "n_name", "c_address", "c_phone",
                    "c_comment"]].sort_values("revenue", ascending=False)
    if q == 12:
        o = read("orders", ["o_orderkey", "o_orderpriority"])
        li = read("lineitem", ["l_orderkey", "l_shipmode", "l_commitdate", "l_receiptdate", "l_shipdate"])
        li = li[li.l_shipmode.isin(["MAIL", "SHIP"]) & (li.l_commitdate < li.l_receiptdate)
                & (li.l_shipdate < li.l_commitdate) & (li.l_receiptdate >= d(1994, 1, 1))
                & (li.l_receiptdate < d(1995, 1, 1))]
        j = o.merge(li, left_on="o_orderkey", right_on="l_orderkey")
        high = j.o_orderpriority.isin(["1-URGENT", "2-HIGH"])
        j = j.assign(high_line_count=high.astype("int64"), low_line_count=(~high).astype("int64"))
        res = compute(j.groupby("l_shipmode")[["high_line_count", "low_line_count"]].sum().reset_index())
        return res.sort_values("l_shipmode")
    if q == 18:
        li = read("lineitem", ["l_orderkey", "l_quantity"], ("l_quantity",))
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate", "o_totalprice"], ("o_totalprice",))
        c = read("customer", ["c_custkey", "c_name"])
        qty = li.groupby("l_orderkey").l_quantity.sum().reset_index().rename(columns={"l_quantity": "sum_qty"})
        large = qty[qty.sum_qty > 300]
        j = (large.merge(o, left_on="l_orderkey", right_on="o_orderkey")
             .merge(c, left_on="o_custkey", right_on="c_custkey"))
        res = compute(j[["c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice", "sum_qty"]])
        return res.sort_values(["o_totalprice", "o_orderdate"], ascending=[False, True])
    raise KeyError(q)


def to_arrow(answer: Any) -> pa.Table:
    """An answer as an Arrow table (a pandas frame without its index)."""
    if isinstance(answer, pa.Table):
        return answer
    return pa.Table.from_pandas(answer, preserve_index=False)


def compare(answers: dict[str, Any], reference: pa.Table, keys: list[str]) -> dict[str, dict]:
    """Every answer against ``reference``: ``{system: {"equal": bool, "rows": n, "why": ...}}``."""
    from benchmarks.answers import same
    out = {}
    for system, answer in answers.items():
        if answer is None:
            out[system] = {"equal": False, "how": "missing answer"}
            continue
        table = to_arrow(answer)
        ok, why = same(table, reference, keys, rel=REL)
        out[system] = {"equal": ok, "how": "values", "rows": [table.num_rows, reference.num_rows],
                       **({"why": why} if why else {})}
    return out


# ---------------------------------------------------------------------------------------------
# The suite


def run_suite(ctx) -> None:
    """``python -m benchmarks --suites tpch``: every query, every installed peer, ``ctx.profile.tpch_sf``."""
    import engine
    from benchmarks import peers
    from benchmarks.harness import ENGINE, Outcome, timed
    from benchmarks.suites import _emit_case, _measure, peer_system
    from jobs.tpch import INPUTS, KEYS, QUERIES, _number, inputs, read_marker

    sf = ctx.profile.tpch_sf
    ctx.progress.line(f"tpch: SF {_number(sf)} data in {data_dir(sf, _root(ctx))} (generated on first use)")
    directory = dataset(sf, _root(ctx))
    marker = read_marker(directory) or {}
    client, info = ctx.client()
    have_duckdb = peers.available(("duckdb",))["duckdb"]

    def engine_system(q: int):
        def run(keep: bool) -> Outcome:
            out = ctx.out(f"tpch-q{q}")
            try:
                seconds, result = timed(lambda: engine.run(QUERIES[q], inputs(directory, q), out, force=True))
                answer = result.read() if keep else None
            finally:
                import shutil
                shutil.rmtree(out, ignore_errors=True)
            rep = result.report
            extra = {"stages": [{"stage": s.name, "tasks": s.tasks, "seconds": round(s.duration, 4),
                                 "rows_out": s.rows_out} for s in rep.stages],
                     "joins": list(getattr(rep, "joins", []) or [])}
            return Outcome(seconds, answer, result.rows, extra)
        return run

    # one untimed run of each system first: imports, page cache, worker start-up
    engine_system(6)(False)
    for q in CASES:
        systems = {ENGINE: engine_system(q)}
        for name in ctx.peers:
            if name == "duckdb":
                systems[name] = peer_system(lambda q=q: duckdb_query(q, directory, info.threads))
            elif name == "polars":
                systems[name] = peer_system(lambda q=q: polars_query(q, directory, info.threads))
            elif name == "dask":
                systems[name] = peer_system(lambda q=q: dask_query(q, directory, client))
        if q == CASES[0] and "dask" in systems:
            dask_query(6, directory, client)
        m = _measure(ctx, f"q{q}", systems)
        reference = m.answers.get("duckdb") if "duckdb" in m.answers else (
            duckdb_query(q, directory, info.threads) if have_duckdb else None)
        check = _check(m.answers, reference, KEYS[q])
        rows = sum(marker.get("rows", {}).get(t, 0) for t in INPUTS[q]) or None
        size = sum(_dir_bytes(os.path.join(directory, t)) for t in INPUTS[q])
        _emit_case(ctx, "tpch", f"q{q}", m, params={"scale_factor": sf, "query": q, "tables": INPUTS[q]},
                   check_=check, input_rows=rows, input_bytes=size)


def _check(answers: dict[str, Any], reference: pa.Table | None, keys: list[str]) -> dict:
    from benchmarks.harness import ENGINE
    if reference is None:
        return {"against": {}, "ok": False}
    against = compare({n: a for n, a in answers.items() if n != "duckdb"}, to_arrow(reference), keys)
    labelled = {("duckdb" if n == ENGINE else f"{n} vs duckdb"): v for n, v in against.items()}
    ok = ENGINE in against and all(v["equal"] for v in against.values())
    return {"against": labelled, "ok": ok}


def _root(ctx) -> str | None:
    return ctx.data_root


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".parquet"))


__all__ = ["CASES", "dataset", "data_dir", "duckdb_query", "polars_query", "dask_query", "compare", "to_arrow",
           "run_suite"]
