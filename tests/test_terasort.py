"""jobs/terasort.py: globally sorted output, balanced partitions, equal to a one-process sort."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import engine
from conftest import write_parts
from jobs.terasort import job


def records(n: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 256, size=(n, 10), dtype=np.uint8)
    key = pa.array([bytes(k).hex() for k in keys])
    payload = pa.array([f"{i:090d}" for i in range(n)])
    return pa.table({"key": key, "payload": payload})


def test_terasort_is_globally_ordered_and_complete(tmp_path):
    table = records(30_000)
    write_parts(tmp_path / "in", table, parts=4)
    result = job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="256KiB")
    out = engine.read(str(tmp_path / "out"), verify=True)
    expected = table.sort_by("key")
    assert out["key"].to_pylist() == expected["key"].to_pylist()
    assert sorted(out["payload"].to_pylist()) == sorted(table["payload"].to_pylist())
    files = result.manifest.files
    assert len(files) >= 3
    rows = [f["rows"] for f in files]
    assert max(rows) <= 2.0 * float(np.median(rows)), rows
