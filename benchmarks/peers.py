"""The engine's peers, answering the same questions over the same files in this process.

* **duckdb**: SQL over ``read_parquet`` / ``read_text``, ``threads`` = cores, answer as Arrow.
* **polars**: lazy scans, answer converted to Arrow.
* **pyarrow**: ``pyarrow.dataset`` + ``Table.group_by`` / ``sort_by`` in one process (numpy where
  Arrow has no hash kernel: exact medians, top-2 per group, correlation).
* **dask**: ``dask.dataframe`` on the engine's own LocalCluster (groupby only; the answer is a pandas
  frame, so only its row count is compared).

Every function takes a dataset directory and returns the answer; the caller times it. A peer whose
package is not installed is reported by :func:`available` and skipped by the suites.

An answer too big to hold (G1 q10 at 1e8 rows) is written instead: :data:`TO_PARQUET` has, per peer,
a function that writes the groupby answer as Parquet files into a directory (DuckDB ``COPY ... TO``,
polars ``sink_parquet``, pyarrow ``write_table``, dask ``to_parquet``), timed the same way.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PEERS = ("duckdb", "polars", "pyarrow", "dask")
_MODULES = {"duckdb": "duckdb", "polars": "polars", "pyarrow": "pyarrow", "dask": "dask.dataframe"}
ARROW_ANSWERS = ("duckdb", "polars", "pyarrow")      # peers whose answers are compared value by value


class PeerUnavailableError(RuntimeError):
    """A peer was asked for that is not installed; the message names the package to install."""


def available(names: tuple[str, ...] = PEERS) -> dict[str, bool]:
    """Which peers can run here (their packages import)."""
    out = {}
    for name in names:
        module = _MODULES[name]
        try:
            out[name] = importlib.util.find_spec(module.split(".")[0]) is not None and (
                "." not in module or _imports(module))
        except (ImportError, ValueError):
            out[name] = False
    return out


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _glob(directory: str, ext: str) -> str:
    return os.path.join(directory, f"*.{ext}")


def _duckdb(threads: int):
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET threads = {max(1, int(threads))}")
    return con


def _arrow(rel) -> pa.Table:
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


# ---------------------------------------------------------------------------------------------
# Groupby q1-q10 (column names as jobs.groupby.SQL)


def groupby_duckdb(q: str, data: str, threads: int) -> pa.Table:
    from jobs.groupby import SQL
    con = _duckdb(threads)
    try:
        con.execute(f"CREATE VIEW x AS SELECT * FROM read_parquet('{_glob(data, 'parquet')}')")
        return _arrow(con.sql(SQL[q]))
    finally:
        con.close()


def groupby_polars(q: str, data: str, threads: int) -> pa.Table:
    return _polars_plan(q, data).collect().to_arrow()


def _polars_plan(q: str, data: str):
    import polars as pl
    x = pl.scan_parquet(_glob(data, "parquet"))
    col = pl.col
    plans: dict[str, Callable[[], Any]] = {
        "q1": lambda: x.group_by("id1").agg(col("v1").sum()),
        "q2": lambda: x.group_by("id1", "id2").agg(col("v1").sum()),
        "q3": lambda: x.group_by("id3").agg(col("v1").sum(), col("v3").mean()),
        "q4": lambda: x.group_by("id4").agg(col("v1").mean(), col("v2").mean(), col("v3").mean()),
        "q5": lambda: x.group_by("id6").agg(col("v1").sum(), col("v2").sum(), col("v3").sum()),
        "q6": lambda: x.group_by("id4", "id5").agg(col("v3").median().alias("median_v3"),
                                                   col("v3").std().alias("sd_v3")),
        "q7": lambda: x.group_by("id3").agg((col("v1").max() - col("v2").min()).alias("range_v1_v2")),
        "q8": lambda: (x.drop_nulls("v3").group_by("id6").agg(col("v3").top_k(2).alias("largest2_v3"))
                       .explode("largest2_v3")),
        "q9": lambda: x.group_by("id2", "id4").agg((pl.corr("v1", "v2") ** 2).alias("r2")),
        "q10": lambda: x.group_by("id1", "id2", "id3", "id4", "id5", "id6").agg(col("v3").sum(),
                                                                                 pl.len().alias("count")),
    }
    return plans[q]()


def _groups(t: pa.Table, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """For a table sorted by ``keys``: the first row of every group and every row's group number."""
    n = t.num_rows
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for k in keys:
        col = t[k].combine_chunks()
        if n > 1:
            change[1:] |= np.asarray(pc.not_equal(col.slice(1), col.slice(0, n - 1)).fill_null(True))
    starts = np.flatnonzero(change)
    return starts, np.cumsum(change) - 1


def groupby_pyarrow(q: str, data: str, threads: int) -> pa.Table:
    import pyarrow.dataset as ds

    from jobs.groupby import KEYS
    keys = KEYS[q]
    cols = {"q1": ["v1"], "q2": ["v1"], "q3": ["v1", "v3"], "q4": ["v1", "v2", "v3"], "q5": ["v1", "v2", "v3"],
            "q6": ["v3"], "q7": ["v1", "v2"], "q8": ["v3"], "q9": ["v1", "v2"], "q10": ["v3"]}[q]
    t = ds.dataset(data, format="parquet").to_table(columns=keys + cols)

    def agg(spec: list[tuple]) -> pa.Table:
        out = t.group_by(keys).aggregate(spec)
        names = {f"{c}_{fn}": c for c, fn, *_ in spec if c}
        return out.rename_columns([names.get(n, n) for n in out.column_names])

    if q in ("q1", "q2"):
        return agg([("v1", "sum")])
    if q == "q3":
        return agg([("v1", "sum"), ("v3", "mean")])
    if q == "q4":
        return agg([(c, "mean") for c in cols])
    if q == "q5":
        return agg([(c, "sum") for c in cols])
    if q == "q7":
        out = agg([("v1", "max"), ("v2", "min")])
        return pa.table({"id3": out["id3"], "range_v1_v2": pc.subtract(pc.cast(out["v1"], pa.int64()),
                                                                        pc.cast(out["v2"], pa.int64()))})
    if q == "q10":
        out = t.group_by(keys).aggregate([("v3", "sum"), ([], "count_all")])
        return out.rename_columns([{"v3_sum": "v3", "count_all": "count"}.get(n, n) for n in out.column_names])
    if q == "q6":
        s = t.sort_by([(k, "ascending") for k in keys] + [("v3", "ascending")])
        starts, _ = _groups(s, keys)
        ends = np.append(starts[1:], s.num_rows)
        valid = np.asarray(pc.is_valid(s["v3"]))
        counts = np.add.reduceat(valid.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
        v = s["v3"].to_numpy(zero_copy_only=False).astype(np.float64)
        lo = np.minimum(starts + np.maximum(counts - 1, 0) // 2, np.maximum(ends - 1, 0))
        hi = np.minimum(starts + counts // 2, np.maximum(ends - 1, 0))
        median = np.where(counts > 0, (v[lo] + v[hi]) / 2 if len(v) else 0.0, np.nan)
        sd = t.group_by(keys).aggregate([("v3", "stddev", pc.VarianceOptions(ddof=1))])
        first = s.take(pa.array(starts)).select(keys)
        med = first.append_column("median_v3", pa.array(median, pa.float64()))
        return med.join(sd.rename_columns([{"v3_stddev": "sd_v3"}.get(n, n) for n in sd.column_names]), keys)
    if q == "q8":
        s = t.filter(pc.is_valid(t["v3"])).sort_by([("id6", "ascending"), ("v3", "descending")])
        starts, group = _groups(s, ["id6"])
        position = np.arange(s.num_rows) - starts[group] if s.num_rows else np.zeros(0, np.int64)
        top = s.filter(pa.array(position < 2))
        return pa.table({"id6": top["id6"], "largest2_v3": top["v3"]})
    if q == "q9":
        both = pc.and_(pc.is_valid(t["v1"]), pc.is_valid(t["v2"]))
        u = t.filter(both)
        x = pc.cast(u["v1"], pa.int64())
        y = pc.cast(u["v2"], pa.int64())
        terms = pa.table({"id2": u["id2"], "id4": u["id4"], "x": x, "y": y, "xx": pc.multiply(x, x),
                          "yy": pc.multiply(y, y), "xy": pc.multiply(x, y)})
        s = terms.group_by(keys).aggregate([(c, "sum") for c in ("x", "y", "xx", "yy", "xy")]
                                           + [([], "count_all")])
        n = s["count_all"].to_numpy()
        sx, sy, sxx, syy, sxy = (s[f"{c}_sum"].to_numpy() for c in ("x", "y", "xx", "yy", "xy"))
        dxy, dxx, dyy = (n * sxy - sx * sy).astype(float), (n * sxx - sx * sx).astype(float), \
            (n * syy - sy * sy).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where((dxx > 0) & (dyy > 0), dxy * dxy / (dxx * dyy), np.nan)
        return pa.table({"id2": s["id2"], "id4": s["id4"], "r2": pa.array(r2, pa.float64())})
    raise KeyError(q)


def groupby_dask(q: str, data: str, client) -> Any:
    """The question on ``client``'s cluster with dask.dataframe (see ``groupby_bench.dask_question``)."""
    import dask.dataframe as dd

    from benchmarks.groupby_bench import dask_question
    x = dd.read_parquet(_glob(data, "parquet"))
    expr, finish = dask_question(q, x)
    future = client.compute(expr)
    try:
        return finish(future.result())
    finally:
        future.release()


# ---------------------------------------------------------------------------------------------
# Groupby answers written as Parquet (answers too big to hold)


def groupby_duckdb_to(q: str, data: str, threads: int, out: str) -> None:
    from jobs.groupby import SQL
    con = _duckdb(threads)
    try:
        con.execute(f"CREATE VIEW x AS SELECT * FROM read_parquet('{_glob(data, 'parquet')}')")
        con.execute(f"COPY ({SQL[q]}) TO '{out}' (FORMAT parquet, PER_THREAD_OUTPUT true, OVERWRITE_OR_IGNORE true)")
    finally:
        con.close()


def groupby_polars_to(q: str, data: str, threads: int, out: str) -> None:
    plan = _polars_plan(q, data)
    os.makedirs(out, exist_ok=True)
    plan.sink_parquet(os.path.join(out, "part-0.parquet"))


def groupby_pyarrow_to(q: str, data: str, threads: int, out: str) -> None:
    import pyarrow.parquet as pq
    os.makedirs(out, exist_ok=True)
    pq.write_table(groupby_pyarrow(q, data, threads), os.path.join(out, "part-0.parquet"))


def groupby_dask_to(q: str, data: str, client, out: str) -> None:
    """The question with dask.dataframe, written by the workers with ``to_parquet`` (output split
    automatically). Only for questions answered without a pandas step on the client."""
    import dask.dataframe as dd

    from benchmarks.groupby_bench import dask_question
    x = dd.read_parquet(_glob(data, "parquet"))
    expr, finish = dask_question(q, x, split_out=True)
    if not _identity(finish):
        raise PeerUnavailableError(f"dask's {q} ends with a pandas step on the client: it cannot be written "
                                   "as Parquet by the workers")
    future = client.compute(expr.to_parquet(out, compute=False))
    try:
        future.result()
    finally:
        future.release()


def _identity(fn: Callable) -> bool:
    marker = object()
    try:
        return fn(marker) is marker
    except Exception:  # noqa: BLE001 - any other function is a real pandas step
        return False


TO_PARQUET: dict[str, dict[str, Callable]] = {
    "groupby": {"duckdb": groupby_duckdb_to, "polars": groupby_polars_to, "pyarrow": groupby_pyarrow_to},
}


# ---------------------------------------------------------------------------------------------
# Word count: (word, count)


def wordcount_duckdb(data: str, threads: int) -> pa.Table:
    con = _duckdb(threads)
    try:
        lines = (f"read_csv('{_glob(data, 'txt')}', columns={{'line': 'VARCHAR'}}, header=false, delim=chr(9), "
                 "quote='', escape='')")
        return _arrow(con.sql(
            "SELECT word, count(*)::BIGINT AS count FROM (SELECT unnest(string_split(lower(line), ' ')) AS word "
            f"FROM {lines}) WHERE word <> '' GROUP BY word"))
    finally:
        con.close()


def wordcount_polars(data: str, threads: int) -> pa.Table:
    import polars as pl
    lines = pl.scan_csv(_glob(data, "txt"), has_header=False, separator="\t", quote_char=None,
                        new_columns=["line"], schema_overrides={"line": pl.String})
    words = (lines.select(pl.col("line").str.to_lowercase().str.split(" ").alias("word")).explode("word")
             .filter(pl.col("word") != ""))
    return words.group_by("word").agg(pl.len().alias("count")).collect().to_arrow()


def wordcount_pyarrow(data: str, threads: int) -> pa.Table:
    from benchmarks.stragglers import reference_counts
    return reference_counts(data)


# ---------------------------------------------------------------------------------------------
# Sort: the whole table ordered by ``key``


def sort_duckdb(data: str, threads: int) -> pa.Table:
    con = _duckdb(threads)
    try:
        return _arrow(con.sql(f"SELECT * FROM read_parquet('{_glob(data, 'parquet')}') ORDER BY key"))
    finally:
        con.close()


def sort_polars(data: str, threads: int) -> pa.Table:
    import polars as pl
    return pl.scan_parquet(_glob(data, "parquet")).sort("key").collect().to_arrow()


def sort_pyarrow(data: str, threads: int) -> pa.Table:
    import pyarrow.dataset as ds
    return ds.dataset(data, format="parquet").to_table().sort_by("key")


FUNCTIONS: dict[str, dict[str, Callable]] = {
    "groupby": {"duckdb": groupby_duckdb, "polars": groupby_polars, "pyarrow": groupby_pyarrow},
    "wordcount": {"duckdb": wordcount_duckdb, "polars": wordcount_polars, "pyarrow": wordcount_pyarrow},
    "sort": {"duckdb": sort_duckdb, "polars": sort_polars, "pyarrow": sort_pyarrow},
}


def function(workload: str, peer: str) -> Callable:
    """The peer's implementation of ``workload``; :class:`PeerUnavailableError` if not installed."""
    if not available((peer,))[peer]:
        raise PeerUnavailableError(f"peer {peer!r} is not installed; pip install -e '.[bench]'")
    return FUNCTIONS[workload][peer]


__all__ = ["PEERS", "ARROW_ANSWERS", "available", "function", "groupby_dask", "groupby_dask_to", "TO_PARQUET",
           "PeerUnavailableError"]
