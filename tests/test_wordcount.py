"""jobs/wordcount.py against an independent single-process reference."""

from __future__ import annotations

import collections
import os

import numpy as np
import pyarrow as pa

import engine
from jobs import SAMPLE_DATA
from jobs.wordcount import job


def reference(paths):
    counts = collections.Counter()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                counts.update(line.lower().split())
    return counts


def test_wordcount_on_bundled_sample(tmp_path):
    src = os.path.join(SAMPLE_DATA, "text")
    result = job.run(src, str(tmp_path / "out"), partition_size="256B")
    got = dict(zip(*engine.read(str(tmp_path / "out")).to_pydict().values()))
    files = [os.path.join(src, f) for f in sorted(os.listdir(src))]
    assert got == dict(reference(files))
    reduce_stage = [s for s in result.report.stages if s.kind == "reduce"][0]
    assert reduce_stage.tasks >= 2


def test_wordcount_on_generated_corpus_with_many_splits(tmp_path):
    rng = np.random.default_rng(7)
    vocab = np.array([f"w{i}" for i in range(3000)])
    src = tmp_path / "text"
    src.mkdir()
    for i in range(4):
        words = vocab[np.minimum(rng.zipf(1.3, 40_000) - 1, len(vocab) - 1)]
        lines = [" ".join(words[j:j + 12]) for j in range(0, len(words), 12)]
        (src / f"doc-{i}.txt").write_text("\n".join(lines) + "\n")
    # A small split size cuts the text files mid-line: no line may be lost or counted twice.
    import dask.config
    with dask.config.set({"engine.split-size": "9KiB"}):
        result = job.run(str(src), str(tmp_path / "out"), partition_size="4KiB")
    map_stage = [s for s in result.report.stages if s.kind == "map"][0]
    assert map_stage.tasks > 4
    got = engine.read(str(tmp_path / "out"))
    assert dict(zip(got["word"].to_pylist(), got["count"].to_pylist())) == \
        dict(reference(sorted(str(p) for p in src.iterdir())))
    assert pa.compute.sum(got["count"]).as_py() == 4 * 40_000
