"""Shared test fixtures: hypothesis profiles, engine history isolation, sample data generators."""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, settings
from fixtures import *  # noqa: F401,F403  (s3, dask_cluster, cli_cluster)

# Hypothesis profiles: a fast default for CI, a heavy one for nightly runs (HYPOTHESIS_PROFILE=heavy).
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("heavy", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

def pytest_addoption(parser):
    group = parser.getgroup("engine")
    group.addoption("--soak", type=int, default=50, metavar="N",
                    help="runs of the chaos soak (tests/test_chaos_soak.py), seeds 0..N-1 (default 50)")
    group.addoption("--soak-seed", default=None, metavar="S",
                    help="replay runs of the chaos soak: the one drawn from seed S (or seeds S1,S2,...)")


logging.getLogger("distributed").setLevel(logging.ERROR)
logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture(autouse=True, scope="session")
def _isolated_history(tmp_path_factory):
    os.environ["ENGINE_HISTORY"] = str(tmp_path_factory.mktemp("history") / "history.sqlite")
    yield


def write_parts(directory, table: pa.Table, parts: int, *, seed: int = 0, fmt: str = "parquet") -> list[str]:
    """Write ``table`` as ``parts`` files of shuffled rows (input order must not matter)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(table.num_rows)
    table = table.take(pa.array(order))
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    paths = []
    for i in range(parts):
        piece = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        path = os.path.join(str(directory), f"part-{i:03d}.{ 'parquet' if fmt == 'parquet' else fmt}")
        if fmt == "parquet":
            pq.write_table(piece, path)
        elif fmt == "arrow":
            with pa.ipc.new_file(path, piece.schema) as w:
                w.write_table(piece)
        elif fmt == "csv":
            import pyarrow.csv as pcsv
            pcsv.write_csv(piece, path)
        elif fmt == "jsonl":
            import json
            with open(path, "w") as f:
                for row in piece.to_pylist():
                    f.write(json.dumps(row) + "\n")
        else:
            raise ValueError(fmt)
        paths.append(path)
    return paths


def sorted_rows(table: pa.Table, keys) -> list[dict]:
    keys = [keys] if isinstance(keys, str) else list(keys)
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def assert_tables_close(actual: pa.Table, expected: pa.Table, keys, rel: float = 1e-9) -> None:
    """Same rows (as sets keyed by ``keys``), floats within ``rel`` relative."""
    assert sorted(actual.column_names) == sorted(expected.column_names), (actual.column_names, expected.column_names)
    a = sorted_rows(actual.select(expected.column_names), keys)
    e = sorted_rows(expected, keys)
    assert len(a) == len(e), f"{len(a)} rows, expected {len(e)}"
    for ra, re_ in zip(a, e):
        for col, ev in re_.items():
            av = ra[col]
            if isinstance(ev, float) and isinstance(av, float):
                assert av == pytest.approx(ev, rel=rel, abs=1e-12), (col, ra, re_)
            elif isinstance(ev, list) and ev and isinstance(ev[0], float):
                assert av == pytest.approx(ev, rel=rel), (col, ra, re_)
            else:
                assert av == ev, (col, ra, re_)
