"""The stage DAG: independent aggregations feeding one join run as shared stages, and the answer holds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import engine
from engine import Job, agg

from test_joins import assert_same_rows, duck, write_input


def test_two_aggregated_sides_of_a_join_run_together(tmp_path):
    rng = np.random.default_rng(5)
    clicks = pa.table({"user": pa.array(rng.integers(0, 300, 5000), pa.int64()), "ms": rng.random(5000)})
    views = pa.table({"user": pa.array(rng.integers(100, 400, 4000), pa.int64()), "page": rng.integers(0, 9, 4000)})
    inputs = {"clicks": write_input(tmp_path / "clicks", clicks, 3), "views": write_input(tmp_path / "views", views, 2)}
    per_view = Job("views", input="views").reduce(by="user", aggs={"views": agg.count()})
    job = (Job("clicks", input="clicks").reduce(by="user", aggs={"clicks": agg.count(), "ms": agg.sum("ms")})
           .join(per_view, on="user", how="full"))
    result = engine.run(job, inputs, str(tmp_path / "out"), partition_size="8KiB")
    names = [s.name for s in result.report.stages]
    # both aggregations' map tasks share one stage, then both reduces one stage; the join after them
    assert names[:2] == ["r0+r1-map", "r0+r1-reduce"], names
    assert {s.name: s.tasks for s in result.report.stages}["r0+r1-map"] == 5
    expected = duck('SELECT coalesce(c.user, v.user) AS "user", c.clicks, c.ms, v.views FROM '
                    '(SELECT "user", count(*) AS clicks, sum(ms) AS ms FROM clicks GROUP BY 1) c FULL JOIN '
                    '(SELECT "user", count(*) AS views FROM views GROUP BY 1) v ON c.user = v.user', inputs)
    assert_same_rows(engine.read(result.output), expected)
