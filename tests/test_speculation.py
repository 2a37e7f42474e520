"""Speculative re-execution on a real multi-process cluster: hung and slow first attempts."""

from __future__ import annotations

import collections
import os
import time

import numpy as np
import pytest

import engine
from engine.faults import Faults
from engine.speculation import Policy
from jobs.wordcount import job as wordcount


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec-corpus")
    rng = np.random.default_rng(9)
    vocab = np.array([f"s{i}" for i in range(500)])
    counts = collections.Counter()
    for i in range(6):
        words = vocab[rng.integers(0, len(vocab), 20_000)]
        (d / f"doc-{i}.txt").write_text("\n".join(" ".join(words[j:j + 10]) for j in range(0, len(words), 10)))
        counts.update(words.tolist())
    return str(d), dict(counts)


def as_counts(table):
    return dict(zip(table["word"].to_pylist(), table["count"].to_pylist()))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stage, partition", [("map", 2), ("reduce", 1)])
def test_hung_first_attempt_is_speculated_and_its_files_discarded(corpus, dask_cluster, tmp_path, stage, partition):
    src, expected = corpus
    out = tmp_path / "out"
    import dask.config
    with dask.config.set({"engine.speculation.min-runtime": 0.5}):
        result = wordcount.run(src, str(out), cluster=dask_cluster, partition_size="24KiB",
                               faults=Faults(hang_first_attempt={(stage, partition)}))
    got = engine.read(str(out), verify=True)
    assert as_counts(got) == expected
    assert got.num_rows == len(set(got["word"].to_pylist()))          # no duplicate rows
    decisions = [d for d in result.report.speculation if d["partition"] == partition]
    assert len(decisions) == 1 and stage in decisions[0]["stage"], result.report.speculation
    assert decisions[0]["won"] == decisions[0]["attempt"] != decisions[0]["straggler"]
    # The report's timeline keeps the loser, cancelled, beside the speculative winner.
    mine = [t for t in result.report.tasks if t.partition == partition and stage in t.stage]
    assert {(t.attempt, t.status, t.speculative) for t in mine} >= {
        (decisions[0]["straggler"], "cancelled", False), (decisions[0]["attempt"], "ok", True)}
    listed = {f["path"] for f in result.manifest.files}
    assert {f for f in os.listdir(out) if f.startswith("part-")} == listed
    assert not (out / "_temporary").exists()


def test_healthy_run_launches_no_speculative_attempt(corpus, dask_cluster, tmp_path):
    src, expected = corpus
    result = wordcount.run(src, str(tmp_path / "out"), cluster=dask_cluster, partition_size="24KiB")
    assert result.report.speculation == []
    assert all(s.speculative == 0 for s in result.report.stages)


def test_speculation_can_be_turned_off(corpus, dask_cluster, tmp_path):
    src, expected = corpus
    import dask.config
    with dask.config.set({"engine.speculation.min-runtime": 0.2}):
        result = wordcount.run(src, str(tmp_path / "out"), cluster=dask_cluster, partition_size="24KiB",
                               speculation=False, faults=Faults(slow_first_attempt={("map", 0): 3.0}))
    assert result.report.speculation == []
    assert as_counts(engine.read(str(tmp_path / "out"))) == expected


def test_policy_defaults_come_from_config():
    import dask.config
    with dask.config.set({"engine.speculation.multiplier": 3.0}):
        assert Policy.from_config().multiplier == 3.0


@pytest.mark.timeout(180)
def test_concurrent_runs_on_one_client_each_speculate(corpus, dask_cluster, tmp_path):
    """Two runs sharing one client at once (a backfill's parallel dates): the first run's supervisor still
    hears its tasks start after the second run's supervisor subscribed, so it speculates its hung attempt
    (before, only the supervisor subscribed last heard any task start, and the first run hung)."""
    import threading

    import dask.config
    from distributed import Client
    src, expected = corpus
    results: dict = {}
    with Client(dask_cluster) as client, dask.config.set({"engine.speculation.min-runtime": 0.5}):
        def go(name, faults):
            try:
                results[name] = wordcount.run(src, str(tmp_path / name), cluster=client, partition_size="24KiB",
                                              faults=faults)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                results[name] = exc
        first = threading.Thread(target=go, args=("a", Faults(hang_first_attempt={("map", 1)})))
        first.start()
        time.sleep(0.5)                 # the first run's supervisor is listening; its map 1 hangs
        second = threading.Thread(target=go, args=("b", None))
        second.start()
        for t in (first, second):
            t.join(150)
    for name in ("a", "b"):
        assert not isinstance(results[name], BaseException), results[name]
        assert as_counts(engine.read(str(tmp_path / name))) == expected
    assert [d["partition"] for d in results["a"].report.speculation] == [1], results["a"].report.speculation
