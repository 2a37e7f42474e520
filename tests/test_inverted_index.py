"""jobs/inverted_index.py (a reduce that cannot be combined) against a one-process reference."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa

import engine
from conftest import write_parts
from jobs.inverted_index import job


def test_inverted_index_matches_reference(tmp_path):
    rng = np.random.default_rng(11)
    vocab = [f"t{i}" for i in range(400)]
    docs, texts = [], []
    for d in range(600):
        n = int(rng.integers(1, 30))
        words = [vocab[min(int(x) - 1, len(vocab) - 1)] for x in rng.zipf(1.4, n)]
        docs.append(f"doc{d:04d}")
        texts.append(" ".join(w.upper() if rng.random() < 0.1 else w for w in words))
    table = pa.table({"doc": docs, "text": texts})
    write_parts(tmp_path / "in", table, parts=3, fmt="jsonl")
    result = job.run(str(tmp_path / "in"), str(tmp_path / "out"), partition_size="2KiB")
    assert [s.tasks for s in result.report.stages if s.kind == "reduce"][0] >= 2

    expected = collections.defaultdict(set)
    for doc, text in zip(docs, texts):
        for w in text.lower().split():
            expected[w].add(doc)
    out = engine.read(str(tmp_path / "out"))
    got = {r["word"]: r for r in out.to_pylist()}
    assert set(got) == set(expected)
    for w, ds in expected.items():
        assert got[w]["docs"] == sorted(ds)
        assert got[w]["n_docs"] == len(ds)
