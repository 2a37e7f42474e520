"""The ten db-benchmark groupby questions over the G1 table, as engine jobs.

G1 (``python -m benchmarks.datagen g1``) has string keys id1, id2 (K values) and id3 (N/K values),
integer keys id4, id5 (K values) and id6 (N/K values), and values v1 (int 1..5), v2 (int 1..15) and
v3 (float in [0, 100)). Output columns follow db-benchmark's SQL answers:

=====  =========================================  ==========================================
q      computes                                   output columns
=====  =========================================  ==========================================
q1     sum v1 by id1                              id1, v1 (sum)
q2     sum v1 by id1, id2                         id1, id2, v1 (sum)
q3     sum v1, mean v3 by id3                     id3, v1 (sum), v3 (mean)
q4     mean v1, v2, v3 by id4                     id4, v1, v2, v3 (means)
q5     sum v1, v2, v3 by id6                      id6, v1, v2, v3 (sums)
q6     median v3, sd v3 by id4, id5               id4, id5, median_v3, sd_v3 (sample sd)
q7     max(v1) - min(v2) by id3                   id3, range_v1_v2
q8     the two largest v3 by id6                  id6, largest2_v3 (one row per value, long)
q9     squared correlation of v1, v2 by id2, id4  id2, id4, r2
q10    sum v3, count by id1, ..., id6             id1, ..., id6, v3 (sum), count (rows)
=====  =========================================  ==========================================

Nulls follow SQL: aggregations skip null values, ``count`` counts rows, null keys form a group of
their own; q8 skips null v3 (a group whose v3 are all null has no rows); q9 uses the rows where
both v1 and v2 are present, and gives null for a group without such a row and NaN where the
correlation is undefined (fewer than two rows, or a constant column), as DuckDB's ``corr`` does.

The jobs are written the plain way, ``Job(name).reduce(by=..., aggs=...)``: a round that only
aggregates reads just its keys and its aggregations' columns (the engine derives them), so no
``columns=`` is needed; q9's map is a function, so it declares its columns. To run one::

    mapreduce run jobs/groupby.py --input G1_DIR --output out/q1        # runs q1 (``job``)

    from jobs.groupby import QUESTIONS
    QUESTIONS["q3"].run(G1_DIR, "out/q3")
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine import Job, agg


def columns(t: pa.Table) -> pa.Table:
    """Pass the input through (kept for callers that wrote ``map(columns, columns=[...])``; the jobs
    below need no such map: their rounds derive the columns they read)."""
    return t


# -- q7 ----------------------------------------------------------------------------------------

def range_v1_v2(t: pa.Table) -> pa.Table:
    """max(v1) - min(v2) per id3, from the reduced max_v1 and min_v2."""
    diff = pc.subtract(pc.cast(t["max_v1"], pa.int64()), pc.cast(t["min_v2"], pa.int64()))
    return pa.table({"id3": t["id3"], "range_v1_v2": diff})


# -- q8 ----------------------------------------------------------------------------------------

def explode_largest2(t: pa.Table) -> pa.Table:
    """One row per value of the ``largest2_v3`` lists: ``id6, largest2_v3`` (db-benchmark's long form)."""
    lists = t["largest2_v3"].combine_chunks()
    parents = pc.list_parent_indices(lists)
    return pa.table({"id6": t["id6"].take(parents), "largest2_v3": pc.list_flatten(lists)})


# -- q9 ----------------------------------------------------------------------------------------

def r2_terms(t: pa.Table) -> pa.Table:
    """Per row, the terms of Pearson's r over the rows where both v1 and v2 are present:
    n (1 or 0), x, y, x*x, y*y, x*y -- as int64, so their sums are exact."""
    both = pc.and_(pc.is_valid(t["v1"]), pc.is_valid(t["v2"]))
    x = pc.if_else(both, pc.cast(t["v1"], pa.int64()), 0)
    y = pc.if_else(both, pc.cast(t["v2"], pa.int64()), 0)
    return pa.table({
        "id2": t["id2"], "id4": t["id4"], "n": pc.cast(both, pa.int64()), "x": x, "y": y,
        "xx": pc.multiply(x, x), "yy": pc.multiply(y, y), "xy": pc.multiply(x, y),
    })


def _exact(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_numpy(), dtype=np.int64)


def r2_from_sums(t: pa.Table) -> pa.Table:
    """r2 = corr(v1, v2)**2 from the sums n, Σx, Σy, Σx², Σy², Σxy of every group.

    With s_xy = nΣxy - ΣxΣy (and s_xx, s_yy alike), r² = s_xy² / (s_xx s_yy). The three s terms are
    computed exactly in integers (int64 while the products cannot overflow, Python integers
    otherwise) and only then rounded once to float64, so there is no cancellation: the result is
    within a few ulps of the true value. Null when a group has no (v1, v2) pair, NaN when the
    correlation is undefined (s_xx or s_yy is 0).
    """
    n, sx, sy = _exact(t["n"]), _exact(t["x"]), _exact(t["y"])
    sxx, syy, sxy = _exact(t["xx"]), _exact(t["yy"]), _exact(t["xy"])
    big = max([int(np.abs(a).max()) if len(a) else 0 for a in (n, sx, sy, sxx, syy, sxy)])
    if big < (1 << 31):
        dxy, dxx, dyy = n * sxy - sx * sy, n * sxx - sx * sx, n * syy - sy * sy
    else:  # products could leave int64: exact arbitrary-precision integers (per group, not per row)
        o = [a.astype(object) for a in (n, sx, sy, sxx, syy, sxy)]
        dxy, dxx, dyy = o[0] * o[5] - o[1] * o[2], o[0] * o[3] - o[1] * o[1], o[0] * o[4] - o[2] * o[2]
    fxy, fxx, fyy = (np.asarray(a, dtype=np.float64) for a in (dxy, dxx, dyy))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = fxy / np.sqrt(fxx) / np.sqrt(fyy)
    r2 = np.where((fxx > 0) & (fyy > 0), r * r, np.nan)
    return pa.table({"id2": t["id2"], "id4": t["id4"],
                     "r2": pa.array(r2, type=pa.float64(), mask=n == 0)})


# -- the questions -----------------------------------------------------------------------------

q1 = Job("groupby-q1").reduce(by="id1", aggs={"v1": agg.sum("v1")})

q2 = Job("groupby-q2").reduce(by=["id1", "id2"], aggs={"v1": agg.sum("v1")})

q3 = Job("groupby-q3").reduce(by="id3", aggs={"v1": agg.sum("v1"), "v3": agg.mean("v3")})

q4 = Job("groupby-q4").reduce(by="id4", aggs={"v1": agg.mean("v1"), "v2": agg.mean("v2"), "v3": agg.mean("v3")})

q5 = Job("groupby-q5").reduce(by="id6", aggs={"v1": agg.sum("v1"), "v2": agg.sum("v2"), "v3": agg.sum("v3")})

q6 = Job("groupby-q6").reduce(by=["id4", "id5"], aggs={"median_v3": agg.median("v3"), "sd_v3": agg.std("v3")})

q7 = (Job("groupby-q7")
      .reduce(by="id3", aggs={"max_v1": agg.max("v1"), "min_v2": agg.min("v2")})
      .map(range_v1_v2))

q8 = (Job("groupby-q8")
      .reduce(by="id6", aggs={"largest2_v3": agg.top_k(2, "v3")})
      .map(explode_largest2))

# q9's map is a function, which may read any column: it declares the ones it needs.
q9 = (Job("groupby-q9")
      .map(r2_terms, columns=["id2", "id4", "v1", "v2"])
      .reduce(by=["id2", "id4"], aggs={c: agg.sum(c) for c in ("n", "x", "y", "xx", "yy", "xy")})
      .map(r2_from_sums))

q10 = Job("groupby-q10").reduce(by=["id1", "id2", "id3", "id4", "id5", "id6"],
                                aggs={"v3": agg.sum("v3"), "count": agg.count()})

# The same questions in SQL over a table ``x`` (db-benchmark's DuckDB answers, integer sums cast to
# BIGINT): the reference the tests and benchmarks compare the engine's output with.
SQL: dict[str, str] = {
    "q1": "SELECT id1, sum(v1)::BIGINT AS v1 FROM x GROUP BY id1",
    "q2": "SELECT id1, id2, sum(v1)::BIGINT AS v1 FROM x GROUP BY id1, id2",
    "q3": "SELECT id3, sum(v1)::BIGINT AS v1, avg(v3) AS v3 FROM x GROUP BY id3",
    "q4": "SELECT id4, avg(v1) AS v1, avg(v2) AS v2, avg(v3) AS v3 FROM x GROUP BY id4",
    "q5": "SELECT id6, sum(v1)::BIGINT AS v1, sum(v2)::BIGINT AS v2, sum(v3) AS v3 FROM x GROUP BY id6",
    "q6": "SELECT id4, id5, quantile_cont(v3, 0.5) AS median_v3, stddev(v3) AS sd_v3 FROM x GROUP BY id4, id5",
    "q7": "SELECT id3, (max(v1) - min(v2))::BIGINT AS range_v1_v2 FROM x GROUP BY id3",
    "q8": ("SELECT id6, largest2_v3 FROM (SELECT id6, v3 AS largest2_v3, row_number() OVER "
           "(PARTITION BY id6 ORDER BY v3 DESC) AS order_v3 FROM x WHERE v3 IS NOT NULL) sub_query "
           "WHERE order_v3 <= 2"),
    "q9": "SELECT id2, id4, pow(corr(v1, v2), 2) AS r2 FROM x GROUP BY id2, id4",
    "q10": ("SELECT id1, id2, id3, id4, id5, id6, sum(v3) AS v3, count(*) AS count FROM x "
            "GROUP BY id1, id2, id3, id4, id5, id6"),
}

KEYS: dict[str, list[str]] = {
    "q1": ["id1"], "q2": ["id1", "id2"], "q3": ["id3"], "q4": ["id4"], "q5": ["id6"], "q6": ["id4", "id5"],
    "q7": ["id3"], "q8": ["id6"], "q9": ["id2", "id4"], "q10": ["id1", "id2", "id3", "id4", "id5", "id6"],
}

QUESTIONS: dict[str, Job] = {"q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5,
                             "q6": q6, "q7": q7, "q8": q8, "q9": q9, "q10": q10}

job = q1
