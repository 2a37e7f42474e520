"""Memory bounds: a reduce partition, a hot key, a sort run or a join side larger than a task's memory.

The engine's pieces (external sort and merge, sorted map runs, grace hash join) are checked against
pyarrow in one process with budgets small enough to force every path (spills, merge passes, hot
buckets); whole runs are checked in the driver with ``engine.memory.task-bytes``; and the promise
itself on real ``dask worker --memory-limit`` processes: a hot key growing from 1x to 4x the worker's
memory limit is reduced (streaming form) with the worker's peak resident memory (the kernel's
high-water mark) flat and under the limit, and a plain reduce of such a key fails fast with
PartitionTooLargeError instead of the worker being killed.
"""

from __future__ import annotations

import os
import shutil
import time

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, extsort, gracejoin, shuffle
from engine.errors import PartitionTooLargeError, StageFailedError
from engine.joins import JoinSpec, join_tables

LOCAL = fsspec.filesystem("file")


def _keyed(n: int, seed: int, *, hot: float = 0.3, nulls: bool = True) -> pa.Table:
    """Rows with an int and a string key (a hot value, some nulls), a payload and a row id."""
    rng = np.random.default_rng(seed)
    k1 = rng.integers(0, 50, n)
    k1 = np.where(rng.random(n) < hot, 7, k1)
    k1 = pa.array(k1, mask=(rng.random(n) < 0.02) if nulls else None)
    k2 = pa.array([f"s{x}" for x in rng.integers(0, 4, n)])
    return pa.table({"k1": k1, "k2": k2, "v": pa.array(rng.normal(size=n)),
                     "pad": pa.array([f"{x:08d}" * 4 for x in rng.integers(0, 10**8, n)]),
                     "id": pa.array(np.arange(n))})


def _spill(tmp_path, name="t") -> extsort.SpillFiles:
    root = tmp_path / "spill"
    root.mkdir(exist_ok=True)
    return extsort.SpillFiles(LOCAL, str(root), name)


# ---------------------------------------------------------------------------------------------
# External sort and merge


def test_external_sort_spills_merges_in_passes_and_cleans_up(tmp_path):
    descending = True
    table = _keyed(15_000, 1)
    sizes = extsort.Sizes(120 << 10)                      # ~30 KiB buffers: dozens of runs, merge passes
    spill = _spill(tmp_path)
    sorter = extsort.ExternalSorter(["k1", "k2"], descending, sizes, spill)
    for batch in table.to_batches(max_chunksize=1000):
        sorter.add(pa.Table.from_batches([batch]))
    assert len(sorter.runs) > sizes.heads // sizes.run_batch        # more runs than one merge may hold
    out = list(sorter.sorted())
    assert max(t.nbytes for t in out) <= 2 * sizes.output
    got = pa.concat_tables(out)
    order = shuffle.sort_keys(["k1", "k2"], descending)
    assert got.select(["k1", "k2"]).equals(table.sort_by(order).select(["k1", "k2"]))
    assert got.sort_by("id").equals(table)                             # every row once, unchanged
    assert spill.written > table.nbytes                                # spilled, and merged through runs
    assert os.listdir(tmp_path / "spill") == []                        # every spill file removed


def test_merge_sorted_holds_one_table_per_stream():
    rng = np.random.default_rng(3)
    streams = []
    for _ in range(5):
        keys = np.sort(rng.integers(0, 100, 5000))
        t = pa.table({"k": keys, "s": np.arange(5000)})
        streams.append([pa.Table.from_batches([b]) for b in t.to_batches(max_chunksize=700)])
    steps = list(extsort.merge_sorted(streams, ["k"]))
    merged = pa.concat_tables(steps)
    assert merged.column("k").to_pylist() == sorted(merged.column("k").to_pylist())
    assert merged.num_rows == 25_000
    assert max(t.num_rows for t in steps) <= 5 * 700


def test_key_groups_spans_batches():
    batches = [pa.table({"k": [1, 1]}), pa.table({"k": [1, 2, 2]}), pa.table({"k": [2]}), pa.table({"k": [3]})]
    seen = [(k, [t.num_rows for t in chunks]) for k, chunks in extsort.key_groups(iter(batches), "k")]
    assert seen == [((1,), [2, 1]), ((2,), [2, 1]), ((3,), [1])]
    # a key the caller does not consume is skipped
    assert [k for k, _ in extsort.key_groups(iter(batches), ["k"])] == [(1,), (2,), (3,)]


# ---------------------------------------------------------------------------------------------
# Sort rounds: several sorted runs per map output, merged by the reducers


def test_sorted_runs_per_map_output_merge_to_the_global_order(tmp_path, monkeypatch):
    table = _keyed(40_000, 2)
    monkeypatch.setattr(extsort, "task_budget", lambda: 400 << 10)
    outputs = []
    for m in range(3):
        part = table.slice(m * 13_000, 13_000)
        out, schema = extsort.sorted_map_output(
            LOCAL, str(tmp_path / f"map-{m}.arrow"), [pa.Table.from_batches([b]) for b in part.to_batches(2000)],
            ["k1"], False, batch_rows=32768, batch_bytes=None, sample_size=256, rows_in=lambda: 13_000)
        assert len(shuffle._runs(out, False)) > 2                 # sorted in pieces, not whole
        outputs.append(out)
    samples = [(o.sample, o.rows_out / o.sample.num_rows) for o in outputs]
    pieces = shuffle.choose_pieces(samples, ["k1"], False, 4)
    assert any(p.share is not None for p in pieces)                # the hot key is split over shares

    class Ctx:
        shuffle_fs, shuffle_root, keys, descending, kind, round = LOCAL, str(tmp_path), ("k1",), False, "sort", 0
    got = []
    for i, piece in enumerate(pieces):
        refs = shuffle.piece_slices(outputs, piece, False)
        got.extend(t for t in extsort.sort_piece(Ctx, refs, piece, schema, i, 0, extsort.Hooks(), 5000) if t.num_rows)
    got = pa.concat_tables(got)
    keys = got.column("k1").to_pylist()
    expected = table.slice(0, 39_000).sort_by("k1").column("k1").to_pylist()
    assert keys == expected                                        # globally ordered, nulls last
    assert sorted(got.column("id").to_pylist()) == list(range(39_000))


# ---------------------------------------------------------------------------------------------
# Grace hash join


def _map_outputs(tmp_path, name: str, table: pa.Table, keys, parts: int = 2) -> list:
    outs = []
    for m in range(parts):
        w = shuffle.HashShuffleWriter(LOCAL, str(tmp_path / f"{name}-{m}.arrow"), keys, 1, spill_bytes=64 << 10)
        w.write(table.slice(m * table.num_rows // parts, table.num_rows // parts + (m == parts - 1) * (table.num_rows % parts)))
        outs.append(w.close())
    return outs


@pytest.mark.parametrize("how", ["inner", "left", "right", "full", "semi", "anti"])
def test_grace_join_within_a_small_budget_equals_the_join_in_memory(tmp_path, how):
    left = _keyed(8_000, 4).rename_columns(["k1", "k2", "lv", "lpad", "lid"])
    right = _keyed(12_000, 5, hot=0.5).rename_columns(["k1", "k2", "rv", "rpad", "rid"])
    # one hot key on both sides would multiply out; keep left's hot key to a few rows
    left = left.filter(pc.or_(pc.fill_null(pc.not_equal(left["k1"], 7), True), pc.less(left["lid"], 20)))
    spec = JoinSpec(("k1", "k2"), ("k1", "k2"), how)
    outs = [_map_outputs(tmp_path, "l", left, ["k1", "k2"]), _map_outputs(tmp_path, "r", right, ["k1", "k2"])]
    refs = [[o.ref(o.batches[0]) for o in side] for side in outs]
    emitted = []
    spill = _spill(tmp_path, f"j-{how}")
    figures = gracejoin.join_task(LOCAL, lambda: spill, spec, refs, None, [left.schema, right.schema], 1,
                                  emitted.append, budget=120 << 10, computing=lambda: _null())
    assert figures["buckets"] >= 2                                  # went through the buckets
    expected = join_tables(left, right, spec)
    assert expected.num_rows > 0
    got = pa.concat_tables(emitted)
    assert got.schema.names == expected.schema.names
    sort = [("lid", "ascending")] + ([("rid", "ascending")] if "rid" in got.column_names else [])
    if how in ("right", "full"):
        sort = [("rid", "ascending"), ("lid", "ascending")]
    assert got.sort_by(sort).equals(expected.sort_by(sort).cast(got.schema))
    assert os.listdir(tmp_path / "spill") == []


def _null():
    import contextlib
    return contextlib.nullcontext()


@pytest.mark.parametrize("how", ["inner", "left", "right", "full", "semi", "anti"])
@pytest.mark.parametrize("build", [0, 1])
def test_hot_bucket_join_chunked_build_side(how, build):
    rng = np.random.default_rng(6)
    left = pa.table({"k": pa.array(rng.integers(0, 4, 3000), mask=rng.random(3000) < 0.05), "a": np.arange(3000)})
    right = pa.table({"k": pa.array(rng.integers(1, 6, 200)), "b": np.arange(200)})
    spec = JoinSpec(("k",), ("k",), how)
    out = []
    emitter = gracejoin._Emitter(out.append, join_tables(left.slice(0, 0), right.slice(0, 0), spec).schema)

    def side(t):
        return lambda: iter([pa.Table.from_batches([b]) for b in t.to_batches(max_chunksize=333)])
    gracejoin.join_hot_bucket(side(left), side(right), left.slice(0, 0), right.slice(0, 0), spec, build,
                              4 << 10, emitter)                      # build chunks of ~4 KiB: many chunks
    got = pa.concat_tables(out)
    expected = join_tables(left, right, spec)
    cols = [c for c in ("a", "b") if c in got.column_names]
    assert got.sort_by([(c, "ascending") for c in cols]).equals(
        expected.sort_by([(c, "ascending") for c in cols]).cast(got.schema))


# ---------------------------------------------------------------------------------------------
# Whole runs in the driver, with a small task budget


def _hot_input(directory, rows: int, files: int = 3, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    names = pa.array(["hot"] + [f"k{i}" for i in range(300)])
    idx = np.where(rng.random(rows) < 0.6, 0, rng.integers(1, 301, rows))
    table = pa.table({"k": names.take(pa.array(idx)), "v": pa.array(rng.integers(0, 1000, rows)),
                      "pad": pa.array([f"{x:012d}" * 3 for x in rng.integers(0, 10**12, rows)])})
    for f in range(files):
        pq.write_table(table.slice(f * rows // files, rows // files + (f == files - 1) * (rows % files)),
                       os.path.join(directory, f"part-{f}.parquet"))
    return table


def per_key_stream(batches):
    """Streaming reduce: per key, rows, sum of v, greatest pad; the last key of a batch carried over."""
    carry = None
    for t in batches:
        if t.num_rows == 0:
            continue
        g = t.group_by("k").aggregate([("v", "count"), ("v", "sum"), ("pad", "max")])
        g = g.rename_columns(["k", "rows", "total", "top"])
        if carry is not None:
            g = pa.concat_tables([carry, g]).group_by("k").aggregate(
                [("rows", "sum"), ("total", "sum"), ("top", "max")]).rename_columns(["k", "rows", "total", "top"])
        last = pc.equal(g["k"], t.column("k")[t.num_rows - 1])
        carry = g.filter(last)
        done = g.filter(pc.invert(last))
        if done.num_rows:
            yield done
    if carry is not None and carry.num_rows:
        yield carry


def per_key_plain(t):
    g = t.group_by("k").aggregate([("v", "count"), ("v", "sum"), ("pad", "max")])
    return g.rename_columns(["k", "rows", "total", "top"])


def _reference(table: pa.Table) -> pa.Table:
    return per_key_plain(table).sort_by("k")


def test_streaming_reduce_of_a_hot_key_larger_than_the_budget(tmp_path, monkeypatch):
    table = _hot_input(tmp_path / "in", 120_000)           # the hot key: ~72k rows, ~5 MiB
    monkeypatch.setenv("DASK_ENGINE__MEMORY__TASK_BYTES", "1MiB")
    import dask
    with dask.config.set({"engine.memory.task-bytes": "1MiB"}):
        result = engine.run(Job("stream").reduce(per_key_stream, by="k", stream=True), str(tmp_path / "in"),
                            str(tmp_path / "out"), partition_size="256KiB")
    got = engine.read(result.output).sort_by("k")
    assert got.equals(_reference(table).cast(got.schema))
    assert result.report.retries == []


def test_plain_reduce_of_a_key_over_the_budget_fails_fast_naming_it(tmp_path):
    _hot_input(tmp_path / "in", 120_000)
    import dask
    t0 = time.monotonic()
    with dask.config.set({"engine.memory.task-bytes": "1MiB"}), pytest.raises(StageFailedError) as info:
        engine.run(Job("plain").reduce(per_key_plain, by="k"), str(tmp_path / "in"), str(tmp_path / "out"),
                   partition_size="256KiB")
    cause = info.value.cause
    assert isinstance(cause, PartitionTooLargeError)
    assert cause.key == ("hot",) and cause.budget == 1 << 20 and cause.nbytes > cause.budget
    message = str(info.value)
    assert "'hot'" in message and "1.0 MiB" in message and "stream=True" in message
    assert "after" not in message.split(":")[0]              # failed at once, not after retries
    assert time.monotonic() - t0 < 60
    assert _nothing_committed(tmp_path / "out")


def _nothing_committed(out) -> bool:
    """No manifest and no output file under ``out`` (outside ``_temporary``, where a failed run keeps its
    journal and finished attempts for a rerun to resume from)."""
    return not out.exists() or not [p for p in out.rglob("*") if "_temporary" not in p.relative_to(out).parts
                                    and (p.suffix == ".parquet" or p.name == "_SUCCESS")]


def test_join_within_a_small_budget_through_the_engine(tmp_path):
    rng = np.random.default_rng(8)
    left = pa.table({"k": rng.integers(0, 2000, 40_000), "a": np.arange(40_000)})
    right = pa.table({"k": np.where(rng.random(60_000) < 0.5, 5, rng.integers(0, 2000, 60_000)),
                      "b": np.arange(60_000), "pad": [f"{x:016d}" for x in range(60_000)]})
    left = left.filter(pc.or_(pc.not_equal(left["k"], 5), pc.less(left["a"], 10)))
    for name, t in (("l", left), ("r", right)):
        os.makedirs(tmp_path / name)
        pq.write_table(t, tmp_path / name / "part-0.parquet")
    import dask
    job = Job("fj", input="l").join("r", on="k", how="full")
    with dask.config.set({"engine.memory.task-bytes": "1MiB"}):
        result = engine.run(job, {"l": str(tmp_path / "l"), "r": str(tmp_path / "r")}, str(tmp_path / "out"),
                            partition_size="512KiB")
    got = engine.read(result.output)
    expected = join_tables(left, right, JoinSpec(("k",), ("k",), "full"))
    order = [("b", "ascending"), ("a", "ascending")]
    assert got.sort_by(order).select(expected.column_names).equals(expected.sort_by(order).cast(
        got.select(expected.column_names).schema))


@pytest.mark.parametrize("piece", [None, (0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 1, 3), (-1, 1, 4, (("k1",), ("k1",)))])
def test_side_batches_read_the_rows_of_a_planned_piece(tmp_path, piece):
    from engine.tasks import _piece_of
    table = _keyed(9_000, 9)
    outs = _map_outputs(tmp_path, "s", table, ["k1"], parts=3)
    refs = [o.ref(o.batches[0]) for o in outs]
    got = list(gracejoin.side_batches(LOCAL, refs, piece, 0, 4, window=1 << 20))
    expected = _piece_of(shuffle.read_table(LOCAL, refs), piece, 0, 4)
    assert pa.concat_tables(got).equals(expected)
    if piece is not None and piece[0] == 0:            # only the batches holding the piece's rows are read
        assert len(got) < sum(len(o.batches[0]) for o in outs)


# ---------------------------------------------------------------------------------------------
# The promise on real memory-limited workers: peak resident memory flat as a hot key grows


MEMORY_LIMIT = 384 << 20          # one worker, one thread: dask kills it at 95% (365 MiB)
ROWS_PER_FILE = 200_000           # map tasks of one size whatever the key's size
OTHER_ROWS = 100_000              # rows of 2,000 other keys
PAD = 200


def _pads() -> pa.Array:
    return pa.array([f"{i:05d}" * (PAD // 5) for i in range(997)])


def write_hot_input(directory, factor: float, seed: int = 0) -> tuple[pa.Table, int]:
    """Parquet files whose key 'hot' holds ``factor`` x the worker's memory limit in Arrow bytes (plus
    2,000 small keys), written file by file; returns the reference answer (per key: rows, sum of v,
    greatest pad) computed from the same tables as they are written, and the hot key's bytes."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    pads, names = _pads(), pa.array(["hot"] + [f"k{i}" for i in range(2000)])
    probe = pa.table({"k": names.take(pa.array([0] * 1000)), "v": pa.array(np.zeros(1000, np.int64)),
                      "pad": pads.take(pa.array(np.arange(1000) % 997))})
    hot_rows = int(1.01 * factor * MEMORY_LIMIT / (probe.nbytes / probe.num_rows))     # (rows are drawn at random)
    total = hot_rows + OTHER_ROWS
    files = -(-total // ROWS_PER_FILE)
    partials, hot_bytes = [], 0
    for f in range(files):
        n = min(ROWS_PER_FILE, total - f * ROWS_PER_FILE)
        idx = np.where(rng.random(n) < hot_rows / total, 0, rng.integers(1, 2001, n))
        t = pa.table({"k": names.take(pa.array(idx)), "v": pa.array(rng.integers(0, 1000, n)),
                      "pad": pads.take(pa.array(rng.integers(0, 997, n)))})
        pq.write_table(t, os.path.join(directory, f"part-{f:03d}.parquet"), row_group_size=50_000)
        hot_bytes += t.filter(pc.equal(t["k"], "hot")).nbytes
        partials.append(per_key_plain(t))
    merged = pa.concat_tables(partials).group_by("k").aggregate([("rows", "sum"), ("total", "sum"), ("top", "max")])
    return merged.rename_columns(["k", "rows", "total", "top"]).sort_by("k"), hot_bytes


def _worker_env() -> dict:
    # the workers import this checkout's engine (the test functions reach them by value)
    return {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))}


class MeasuredCluster:
    """One ``dask worker --memory-limit MEMORY_LIMIT`` process (one thread) with its resident memory sampled
    every 50 ms; :meth:`run` runs a job on it and measures (each run on a fresh worker process, so that the
    kernel's high-water mark is the run's own)."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.count = 0

    def run(self, job, data, **options) -> dict:
        """The result (or the error), the worker's kernel high-water mark (VmHWM), its sampled peak per
        stage kind, whether it survived (same process before and after), and the run's seconds."""
        from fixtures import cli_cluster
        from test_out_of_core import _high_water_mark
        import psutil
        import threading
        self.count += 1
        name = f"run{self.count}"
        with cli_cluster(self.tmp_path / f"cluster-{name}", 1, worker_args=("--memory-limit", str(MEMORY_LIMIT)),
                         env=_worker_env()) as c:
            pids = c.worker_pids()
            pid = next(iter(pids.values()))
            proc = psutil.Process(pid)
            series, halt = [], threading.Event()

            def sample() -> None:
                while not halt.is_set():
                    try:
                        series.append((time.time(), proc.memory_info().rss))
                    except psutil.Error:
                        return
                    halt.wait(0.05)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            result = error = None
            try:
                result = engine.run(job, data, str(self.tmp_path / f"out-{name}"), cluster=c.address, **options)
            except Exception as exc:  # noqa: BLE001 - the caller asserts on it
                error = exc
            seconds = time.monotonic() - t0
            halt.set()
            sampler.join(5)
            hwm = _high_water_mark(pid)
            survived = c.worker_pids() == pids
        peaks: dict[str, int] = {}
        for st in (result.report.stages if result is not None else []):
            inside = [v for t, v in series if st.start <= t <= st.stop]
            if inside:
                peaks[st.kind] = max(inside + [peaks.get(st.kind, 0)])
        return {"result": result, "error": error, "hwm": hwm, "peaks": peaks, "survived": survived,
                "seconds": seconds, "out": self.tmp_path / f"out-{name}"}


def _mib(n) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def _stream_hot_key(cluster: MeasuredCluster, data, expected: pa.Table, factor: float, hot_bytes: int) -> dict:
    m = cluster.run(Job("hot-stream").reduce(per_key_stream, by="k", stream=True), str(data))
    assert m["error"] is None, m["error"]
    got = engine.read(m["result"].output).sort_by("k")
    assert got.equals(expected.cast(got.schema))
    assert m["survived"] and m["result"].report.retries == []
    assert m["hwm"] is not None and m["hwm"] < MEMORY_LIMIT, _mib(m["hwm"])
    m.update(factor=factor, hot_bytes=hot_bytes)
    return m


def _table(runs: list[dict], what: str) -> None:
    print(f"\n{what}, one worker --memory-limit {MEMORY_LIMIT >> 20}MiB, one thread")
    print("  factor  hot key (Arrow)  peak RSS (VmHWM)  sampled peak: map stage  reduce stage  run")
    for m in runs:
        print(f"  {m['factor']:>4}x   {_mib(m['hot_bytes']):>13}   {_mib(m['hwm']):>15}   "
              f"{_mib(m['peaks'].get('map')):>20}  {_mib(m['peaks'].get('reduce')):>12}  {m['seconds']:.0f}s")


@pytest.mark.cluster
def test_hot_key_as_large_as_worker_memory_streams_and_plain_reduce_fails_fast(tmp_path):
    """A key of 1x the worker's memory: the streaming reduce commits the reference answer with the
    worker's peak under its limit; the same key through a plain reduce is refused at once with
    PartitionTooLargeError (no worker killed, nothing committed)."""
    pytest.importorskip("psutil")
    cluster = MeasuredCluster(tmp_path)
    expected, hot_bytes = write_hot_input(tmp_path / "in", 1)
    assert hot_bytes >= MEMORY_LIMIT
    streamed = _stream_hot_key(cluster, tmp_path / "in", expected, 1, hot_bytes)
    plain = cluster.run(Job("hot-plain").reduce(per_key_plain, by="k"), str(tmp_path / "in"))
    _table([streamed], "streaming reduce of one hot key (pytest tests/test_memory_bounds.py -k as_large -s)")
    print(f"  plain reduce of the same key: {type(plain['error'].cause).__name__} after {plain['seconds']:.0f}s, "
          f"peak RSS {_mib(plain['hwm'])}")
    assert isinstance(plain["error"], StageFailedError), plain["error"]
    assert isinstance(plain["error"].cause, PartitionTooLargeError), plain["error"]
    assert plain["error"].cause.key == ("hot",)
    assert "stream=True" in str(plain["error"])
    assert plain["survived"] and plain["hwm"] < MEMORY_LIMIT
    assert _nothing_committed(plain["out"])


@pytest.mark.slow
@pytest.mark.cluster
def test_hot_key_1x_to_4x_worker_memory_streams_with_flat_peak(tmp_path):
    pytest.importorskip("psutil")
    cluster = MeasuredCluster(tmp_path)
    runs = []
    for factor in (1, 2, 4):
        expected, hot_bytes = write_hot_input(tmp_path / f"in-{factor}", factor)
        assert hot_bytes >= factor * MEMORY_LIMIT
        runs.append(_stream_hot_key(cluster, tmp_path / f"in-{factor}", expected, factor, hot_bytes))
        shutil.rmtree(tmp_path / f"in-{factor}")
    _table(runs, "streaming reduce of one hot key (pytest tests/test_memory_bounds.py -k 1x_to_4x -s -m slow)")
    assert runs[-1]["hwm"] <= 1.3 * runs[0]["hwm"], [_mib(m["hwm"]) for m in runs]
    assert runs[-1]["peaks"]["reduce"] <= 1.3 * runs[0]["peaks"]["reduce"]


def _output_files(result) -> list[str]:
    """The committed Parquet files of a run, in output-partition order."""
    files = sorted(result.manifest.files, key=lambda f: (f["partition"], f["path"]))
    return [result.manifest.path_of(f) for f in files]


@pytest.mark.slow
@pytest.mark.cluster
def test_sort_and_full_join_of_a_hot_key_1x_and_4x_worker_memory_with_flat_peak(tmp_path):
    """The sort of a key of 1x and 4x the worker's memory (skew splitting off: one range partition holds
    it all, merged from the map tasks' sorted runs), and a full join whose one partition holds it on the
    build side (joined by the grace hash join, chunk by chunk): reference answers, peaks flat and under
    the limit."""
    pytest.importorskip("psutil")
    cluster = MeasuredCluster(tmp_path)
    left_dir = tmp_path / "left"
    os.makedirs(left_dir)
    left = pa.table({"k": ["hot"] + [f"k{i}" for i in range(0, 3000, 2)], "lv": np.arange(1501)})
    pq.write_table(left, left_dir / "l.parquet")
    sorts, joins = [], []
    for factor in (1, 4):
        data = tmp_path / f"in-{factor}"
        expected, hot_bytes = write_hot_input(data, factor)
        m = cluster.run(Job("hot-sort").sort("k"), str(data), skew=False)
        assert m["error"] is None, m["error"]
        assert m["survived"] and m["hwm"] < MEMORY_LIMIT and m["result"].report.retries == []
        # streamed check: keys in order across the committed files, and every row there once
        last, partials = None, []
        for path in _output_files(m["result"]):
            for batch in pq.ParquetFile(path).iter_batches(100_000):
                t = pa.Table.from_batches([batch])
                keys = t.column("k")
                assert last is None or keys[0].as_py() >= last
                assert pc.all(pc.greater_equal(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py() is not False
                last = keys[-1].as_py()
                partials.append(per_key_plain(t))
        got = pa.concat_tables(partials).group_by("k").aggregate([("rows", "sum"), ("total", "sum"), ("top", "max")])
        got = got.rename_columns(expected.column_names).sort_by("k")
        assert got.equals(expected.cast(got.schema))
        m.update(factor=factor, hot_bytes=hot_bytes)
        sorts.append(m)

        import dask
        with dask.config.set({"engine.join.strategy": "shuffle"}):
            m = cluster.run(Job("hot-join", input="l").join("r", on="k", how="full"),
                            {"l": str(left_dir), "r": str(data)})
        assert m["error"] is None, m["error"]
        assert m["survived"] and m["hwm"] < MEMORY_LIMIT and m["result"].report.retries == []
        partials = []
        for path in _output_files(m["result"]):
            for batch in pq.ParquetFile(path).iter_batches(200_000, columns=["k", "lv", "v"]):
                t = pa.Table.from_batches([batch])
                partials.append(t.group_by("k").aggregate([([], "count_all"), ("v", "sum"), ("lv", "max")]))
        got = pa.concat_tables(partials).group_by("k").aggregate(
            [("count_all", "sum"), ("v_sum", "sum"), ("lv_max", "max")]).sort_by("k")
        # reference: every right row once, with its left value where the key is on the left; left keys with
        # no right rows once, with nulls
        ref = expected.select(["k", "rows", "total"]).join(left, "k", join_type="full outer")
        ref = ref.select(["k", "rows", "total", "lv"]).sort_by("k")
        assert got.column("k").equals(ref.column("k"))
        assert got.column(1).to_pylist() == [r if r is not None else 1 for r in ref.column("rows").to_pylist()]
        assert got.column(2).to_pylist() == ref.column("total").to_pylist()
        assert got.column(3).to_pylist() == ref.column("lv").to_pylist()
        m.update(factor=factor, hot_bytes=hot_bytes)
        joins.append(m)
        shutil.rmtree(data)
    _table(sorts, "sort with the hot key in one range partition (pytest tests/test_memory_bounds.py -k full_join -s)")
    _table(joins, "full join with the hot key on the big side (pytest tests/test_memory_bounds.py -k full_join -s)")
    for runs in (sorts, joins):
        assert runs[1]["hwm"] <= 1.3 * runs[0]["hwm"], [_mib(m["hwm"]) for m in runs]
        assert runs[1]["peaks"]["reduce"] <= 1.3 * runs[0]["peaks"]["reduce"]


@pytest.mark.s3
def test_spills_go_through_a_shuffle_directory_on_s3(s3, tmp_path, monkeypatch):
    """The external sort's runs in an S3 shuffle directory: the answer is the reference, and no spill
    object is left behind."""
    import dask
    so = s3["storage_options"]
    spilled = []
    new = extsort.SpillFiles.new

    def recording(self, what):        # the run is in this process: note where spill files go
        path = new(self, what)
        spilled.append(path)
        return path
    monkeypatch.setattr(extsort.SpillFiles, "new", recording)
    table = _hot_input(tmp_path / "in", 60_000)
    shuffle_dir = s3["url"]("shuffle", "memory-bounds")
    with dask.config.set({"engine.memory.task-bytes": "1MiB"}):
        result = engine.run(Job("s3-stream").reduce(per_key_stream, by="k", stream=True), str(tmp_path / "in"),
                            s3["url"]("out", "memory-bounds"), storage_options=so, shuffle_dir=shuffle_dir,
                            partition_size="256KiB")
    got = engine.read(result.output, storage_options=so).sort_by("k")
    assert got.equals(_reference(table).cast(got.schema))
    assert len(spilled) > 2 and all(p.startswith(shuffle_dir[len("s3://"):]) for p in spilled), spilled
    s3["fs"].invalidate_cache()
    assert not [p for p in spilled if s3["fs"].exists(p)]
