"""Driver cost at scale: what the driver and the reducers do grows with the work, not with its square.

* Reducers on an object store read only their byte ranges of each map file: the bytes an S3 server
  actually serves to a job's reduce stage stay within 1.5 x the shuffle bytes the map stage wrote
  (each written byte is needed by exactly one reducer), for a hash aggregation with many map files
  and several reducers and for a sort. The server counts; the answers are checked against pyarrow.
* The driver's bookkeeping per finished task does not grow with the number of tasks in the stage:
  the calls it makes into distributed's future API (state waits, status and done checks) per finished
  task stay flat from 200 to 1,600 no-op tasks.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg
from fixtures import S3_BUCKET as _BASE_BUCKET

S3_BUCKET = f"{_BASE_BUCKET}-counted"      # moto keeps buckets per process, across servers


# ---------------------------------------------------------------------------------------------
# An S3 endpoint that counts what it serves


@pytest.fixture(scope="module")
def counted_s3():
    """A moto S3 server behind the benchmark's counting middleware (bytes of map files written and served
    under a watched prefix): ``(storage_options, url, counter, fs)``."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from benchmarks.driver_bench import counting_s3
    bucket = S3_BUCKET
    with counting_s3(bucket) as (options, counter, fs):
        yield options, (lambda *parts: "s3://" + "/".join([bucket, *parts])), counter, fs


def _upload_parts(fs, table: pa.Table, files: int, prefix: str, tmp_path) -> None:
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        local = tmp_path / f"part-{i:03d}.parquet"
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), local, row_group_size=5000)
        fs.put(str(local), f"{prefix}/part-{i:03d}.parquet")
    fs.invalidate_cache()


def _input(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": pa.array(rng.integers(0, 40_000, rows).astype(np.int64)),
                     "v": pa.array(rng.integers(-1000, 1000, rows).astype(np.int64)),
                     "id": pa.array(np.arange(rows, dtype=np.int64))})


def _reduce_stage(result):
    return next(s for s in result.report.stages if s.name.endswith("-reduce"))


@pytest.mark.s3
@pytest.mark.slow
def test_reducers_read_only_their_byte_ranges_on_s3(counted_s3, tmp_path):
    so, url, counter, fs = counted_s3
    table = _input(240_000, seed=3)
    _upload_parts(fs, table, 12, f"{S3_BUCKET}/in/agg", tmp_path)

    # A hash aggregation: 12 map files, each holding batches for every reducer.
    job = Job("ranged-agg").reduce(by="k", aggs={"n": agg.count(), "total": agg.sum("v")})
    counter.watch(f"{S3_BUCKET}/shuffle/agg")
    result = engine.run(job, url("in", "agg"), str(tmp_path / "out-agg"), storage_options=so,
                        shuffle_dir=url("shuffle", "agg"), partition_size="256KiB", speculation=False)
    reducers = _reduce_stage(result).tasks
    assert result.report.stages[0].tasks == 12 and reducers >= 4, (result.report.stages[0].tasks, reducers)
    written, served = counter.written, counter.served
    assert written > 1_000_000, written
    # Every shuffle byte is needed by exactly one reducer: serving more than 1.5x that means reducers
    # fetched other reducers' slices.
    assert served <= 1.5 * written, (f"{reducers} reducers were served {served:,} bytes of map files "
                                     f"holding {written:,} bytes ({served / written:.2f}x) in {counter.gets} GETs")
    g = table.group_by("k").aggregate([([], "count_all"), ("v", "sum")])
    expected = pa.table({"k": g["k"], "n": g["count_all"], "total": g["v_sum"]}).sort_by("k")
    got = engine.read(str(tmp_path / "out-agg")).sort_by("k")
    assert got.num_rows == expected.num_rows
    assert got.select(["k", "n", "total"]).equals(expected)

    # A sort: every range reducer takes the overlapping batches of every sorted run.
    _upload_parts(fs, table, 8, f"{S3_BUCKET}/in/sort", tmp_path)
    counter.watch(f"{S3_BUCKET}/shuffle/sort")
    result = engine.run(Job("ranged-sort").sort(by="k"), url("in", "sort"), str(tmp_path / "out-sort"),
                        storage_options=so, shuffle_dir=url("shuffle", "sort"), partition_size="512KiB",
                        speculation=False)
    reducers = _reduce_stage(result).tasks
    assert reducers >= 4, reducers
    written, served = counter.written, counter.served
    assert written > 1_000_000, written
    assert served <= 1.5 * written, (f"{reducers} sort reducers were served {served:,} bytes of sorted runs "
                                     f"holding {written:,} bytes ({served / written:.2f}x) in {counter.gets} GETs")
    got = engine.read(str(tmp_path / "out-sort"))
    assert got.num_rows == table.num_rows
    assert (np.diff(got["k"].to_numpy()) >= 0).all()
    assert got.sort_by([("k", "ascending"), ("id", "ascending")]).equals(
        table.sort_by([("k", "ascending"), ("id", "ascending")]).select(got.column_names))


# ---------------------------------------------------------------------------------------------
# Driver work per finished task


def noop_task(partition: int, attempt: int) -> dict:
    return {"partition": partition, "attempt": attempt, "start": time.time(), "stop": time.time(),
            "rows_in": 0, "rows_out": 0, "bytes_out": 0}


@contextlib.contextmanager
def _future_api_calls():
    """Count the driver's calls into distributed's future API (a counting wrapper around the real methods)."""
    import distributed.client as dc
    counts = {"n": 0}
    lock = threading.Lock()

    def bump() -> None:
        with lock:
            counts["n"] += 1

    saved = {"wait": dc.FutureState.wait, "done": dc.Future.done, "status": dc.Future.status}

    async def wait(self, timeout=None):
        bump()
        return await saved["wait"](self, timeout)

    def done(self):
        bump()
        return saved["done"](self)

    def status(self):
        bump()
        return saved["status"].fget(self)

    dc.FutureState.wait, dc.Future.done, dc.Future.status = wait, done, property(status)
    try:
        yield counts
    finally:
        dc.FutureState.wait, dc.Future.done, dc.Future.status = saved["wait"], saved["done"], saved["status"]


@pytest.mark.slow
def test_driver_work_per_task_does_not_grow_with_the_stage():
    import cloudpickle

    from engine.cluster import get_client
    from engine.compile import TaskSpec
    from engine.report import RunReport
    from engine.runner import StageExecutor
    from engine.speculation import Supervisor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client, _ = get_client(None)
    per_task = {}
    for n in (200, 1600):
        report = RunReport("driver-cost", f"run-{n}", "fingerprint")
        executor = StageExecutor(client, report, supervisor=Supervisor.from_config(client, report))
        tasks = [TaskSpec(i, noop_task, (), None) for i in range(n)]
        with _future_api_calls() as calls:
            results = executor.run(f"noop-{n}", f"noop-{n}-{time.time_ns()}", tasks, round_index=0, round_count=1,
                                   kind="map", describe=str)
        assert sorted(results) == list(range(n))
        per_task[n] = calls["n"] / n
    # Constant work per task: a handful of calls per finished task (the loop never waits on, polls or
    # scans every running future), the same for a stage eight times larger.
    assert per_task[1600] <= 1.25 * per_task[200] + 1, per_task
    assert max(per_task.values()) <= 12, per_task


# ---------------------------------------------------------------------------------------------
# Ranged reads decode exactly what whole-file reads do (no cluster: the shuffle module on memory://)


def test_ranged_reads_equal_whole_file_reads():
    import fsspec

    from engine import shuffle

    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(5)
    n = 40_000
    hot = np.where(rng.random(n) < 0.4, 7, rng.integers(0, 2000, n))
    table = pa.table({"k": pa.array(hot.astype(np.int64)), "v": pa.array(rng.normal(size=n)),
                      "s": pa.array([f"row-{i}" for i in range(n)]),
                      "d": pa.array([f"tag-{i % 5}" for i in range(n)]).dictionary_encode()})
    plain = table.drop_columns(["d"])

    def whole(refs):                 # the same batches, read from the whole file
        return [(r[0], r[1]) for r in refs]

    # hash shuffle: every partition's batches by ranges equal them from the whole file
    for name, t in (("plain", plain), ("dict", table)):
        w = shuffle.HashShuffleWriter(fs, f"/{name}.arrow", ["k"], 8, spill_bytes=150_000)
        for off in range(0, n, 4000):
            w.write(t.slice(off, 4000))
        out = w.close()
        for p in range(8):
            refs = [out.ref(out.batches[p])]
            assert shuffle.read_table(fs, refs).equals(shuffle.read_table(fs, whole(refs))), (name, p)

    # a file that carries dictionary batches has no byte index: it is read whole
    f = shuffle._IPCFile(fs, "/raw-dict.arrow")
    batches = table.to_batches(max_chunksize=10_000)
    for b in batches:
        f.write(b)
    f.close()
    assert f.blocks is None
    raw = shuffle.MapOutput("/raw-dict.arrow", 1, [list(range(len(batches)))], [n], [table.nbytes],
                            blocks=f.blocks, schema=f.schema)
    assert len(raw.ref([0, 2])) == 2
    assert shuffle.read_table(fs, [raw.ref([0, 2])]).equals(pa.Table.from_batches([batches[0], batches[2]]))

    # sort: range and hot-key share pieces read the same rows by ranges as from whole files
    runs = [shuffle.write_sorted_run(fs, f"/run-{i}.arrow", plain.slice(i * 10_000, 10_000), ["k"], False,
                                     batch_rows=32768, batch_bytes=8_000) for i in range(4)]
    assert all(len(r.batches[0]) > 10 for r in runs)          # the byte cap cut the runs finer
    pieces = shuffle.choose_pieces([(r.sample, r.rows_out / r.sample.num_rows) for r in runs], ["k"], False, 6)
    assert any(p.share is not None for p in pieces)
    seen = []
    for piece in pieces:
        refs = shuffle.piece_slices(runs, piece, False)
        ranged = shuffle.read_piece(fs, refs, piece, ["k"], False)
        assert ranged.equals(shuffle.read_piece(fs, whole(refs), piece, ["k"], False)), piece.describe()
        seen += ranged["s"].to_pylist()
    assert sorted(seen) == sorted(plain["s"].to_pylist())
