"""Where tasks run: equal map tasks spread over the workers, and a cancelled attempt stuck in user
code does not hold back the tasks that come after it.

Both run on a real two-process LocalCluster (one thread per worker, nannies, the engine's
scheduler settings) of this module's own, since the stuck-attempt test restarts a worker.
"""

from __future__ import annotations

import collections
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import dask
    from distributed import Client, LocalCluster

    # The embedded cluster's scheduler settings (engine/cluster.py), with exactly two worker processes.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                          "distributed.nanny.pre-spawn-environ": {"ACERO_ALIGNMENT_HANDLING": "reallocate"},
                          "distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        c = Client(cluster, set_as_default=False)
    try:
        c.wait_for_workers(2, timeout=60)
        yield c
    finally:
        c.close()
        cluster.close()


def _workers(client) -> set[str]:
    return set(client.scheduler_info(n_workers=-1)["workers"])


# ---------------------------------------------------------------------------------------------
# Placement


def _pause_then_pass(t: pa.Table) -> pa.Table:
    time.sleep(0.4)           # equal work per task: placement, not speed, decides where tasks run
    return t


def _big_closure(size: int):
    ballast = os.urandom(size)            # travels with the job's functions

    def pause_then_pass(t: pa.Table) -> pa.Table:
        time.sleep(0.4)
        return t.append_column("b", pa.array([len(ballast)] * t.num_rows, pa.int64()))
    return pause_then_pass


@pytest.mark.parametrize("payload", ["small", "large"])
def test_equal_map_tasks_spread_over_both_workers(client, tmp_path, payload):
    src = tmp_path / "in"
    src.mkdir()
    n = 4
    for i in range(n):
        pq.write_table(pa.table({"k": np.arange(i * 100, (i + 1) * 100)}), src / f"part-{i}.parquet")
    # A small job (its functions travel inside each task) and one that carries 200 KB with it.
    job = Job("placement").map(_pause_then_pass if payload == "small" else _big_closure(200_000))
    spreads, reports = [], []
    for run in range(5):
        result = engine.run(job, str(src), str(tmp_path / f"out-{run}"), cluster=client, speculation=False)
        assert result.read().num_rows == 100 * n
        reports.append(result.report)
        spreads.append(dict(collections.Counter(t.worker for t in result.report.tasks
                                                if t.stage.endswith("-map") and t.status == "ok")))
    for run, ran in enumerate(spreads):
        assert len(ran) == 2 and max(ran.values()) <= n // 2 + 1, (
            f"run {run}: map tasks per worker {ran} (all runs: {[sorted(r.values()) for r in spreads]})")
    even = [r for r in spreads if sorted(r.values()) == [n // 2, n // 2]]
    assert len(even) > len(spreads) // 2, f"most runs should split evenly: {[sorted(r.values()) for r in spreads]}"
    # The report says so itself, per stage, in its summary and in its dict.
    for rep, ran in zip(reports, spreads):
        assert rep.tasks_per_worker("r0-map") == ran
        assert rep.to_dict()["tasks_per_worker"]["r0-map"] == ran
        assert "tasks per worker" in rep.summary()


# ---------------------------------------------------------------------------------------------
# A cancelled attempt stuck in user code


STUCK_SECONDS = 60.0


def _stuck_once_wordcount(flag_dir: str) -> Job:
    """Word count whose very first map call sleeps in user code (no cancellation check), once per run."""
    def words(t: pa.Table) -> pa.Table:
        from distributed import get_worker
        try:
            worker = get_worker().address
        except ValueError:
            worker = None     # the driver's check of the job on a sample of the input
        fd = None
        if worker is not None:
            try:
                fd = os.open(os.path.join(flag_dir, "stuck"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
        if fd is not None:
            os.write(fd, json.dumps({"worker": worker, "start": time.time()}).encode())
            os.close(fd)
            time.sleep(STUCK_SECONDS)
            with open(os.path.join(flag_dir, "woke"), "w") as f:
                f.write(str(time.time()))
        time.sleep(0.15)
        return pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))})
    return Job("stuck-wordcount").map(words).reduce(by="word", aggs={"count": agg.count()})


@pytest.mark.timeout(240)
def test_worker_stuck_in_a_cancelled_attempt_takes_no_new_tasks(client, tmp_path):
    src = tmp_path / "text"
    src.mkdir()
    rng = np.random.default_rng(3)
    vocab = np.array([f"w{i}" for i in range(300)])
    expected = collections.Counter()
    for i in range(10):
        words = vocab[rng.integers(0, len(vocab), 3_000)]
        (src / f"doc-{i}.txt").write_text("\n".join(" ".join(words[j:j + 10]) for j in range(0, len(words), 10)))
        expected.update(words.tolist())
    flags = tmp_path / "flags"
    flags.mkdir()
    out = tmp_path / "out"
    import dask.config
    with dask.config.set({"engine.speculation.min-runtime": 0.5}):
        result = engine.run(_stuck_once_wordcount(str(flags)), str(src), str(out), cluster=client,
                            partition_size="8KiB")
    returned = time.time()
    got = engine.read(str(out))
    assert dict(zip(got["word"].to_pylist(), got["count"].to_pylist())) == dict(expected)
    stuck = json.loads((flags / "stuck").read_text())
    rep = result.report
    [copy] = [d for d in rep.speculation if d["won"] == d["attempt"]]
    assert copy["worker"] == stuck["worker"]
    won_at = next(t.stop for t in rep.tasks if t.stage == copy["stage"] and t.partition == copy["partition"]
                  and t.attempt == copy["attempt"] and t.status == "ok")
    # Nothing ran on the stuck worker after the copy won: later tasks did not queue behind the zombie.
    late = [(t.stage, t.partition, t.attempt, round(t.start - won_at, 2)) for t in rep.tasks
            if t.worker == stuck["worker"] and t.start > won_at]
    assert not late, (f"tasks started on {stuck['worker']} after the copy won at {won_at:.2f}, behind the stuck "
                      f"attempt: {late}")
    # ... and the run did not wait for the stuck attempt: it returned while the attempt still slept, or
    # after its worker was restarted (then it never wakes).
    assert not (flags / "woke").exists() or float((flags / "woke").read_text()) > returned
    # The report says what happened to the stuck attempt and why.
    [zombie] = [z for z in rep.zombies if z["worker"] == stuck["worker"]]
    assert (zombie["stage"], zombie["partition"], zombie["attempt"]) == (copy["stage"], copy["partition"],
                                                                           copy["straggler"])
    assert zombie["action"] == "restarted" and "restart" in zombie["reason"]
    assert any("zombie" in line for line in rep.summary().splitlines())
    # The restart is no failure of any task: nothing was retried.
    assert rep.retries == [] and all(s.retries == 0 for s in rep.stages)
    assert len(_workers(client)) == 2 or client.wait_for_workers(2, timeout=60) is None
