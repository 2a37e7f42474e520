"""Counters (``engine.counter(name).add(n)``): the totals of the attempts that won, nothing else.

Promises checked here, each against an independent pyarrow computation on the whole input:

* counts made in map, reduce, a fused trailing map, a streaming reduce and the maps around a join
  (shuffled and broadcast) add up to the input's own figures, in the driver's threads and on a
  cluster of ``dask worker`` processes; the report, its summary, the history record, ``mapreduce
  run --json``, ``mapreduce history`` and the metrics textfile show them;
* an attempt that counted and then failed, and a speculative copy that lost after counting all its
  rows, add nothing (a side log written by the job's code shows they did count);
* with ``on_error="reject"``, calls that raised add nothing: only the rows of successful calls count;
* a resumed run keeps the counts of the tasks it reuses from the journal (their code does not run again);
* a misuse (an amount that is not a whole number) fails the run with a message saying what to pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask.config
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, history
from engine.faults import Faults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = 6
ROWS = 2000
POISON = 7          # the reduce function of the reject test fails on this key


def make_input(directory, seed: int = 0) -> str:
    """FILES Parquet files: ``part`` (the file's number), key ``k``, value ``v`` (a few negative), and
    ``day``, a date as text, a few of them not dates (or null)."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for part in range(FILES):
        k = rng.integers(0, 50, ROWS)
        v = rng.integers(0, 100, ROWS)
        v[rng.random(ROWS) < 0.01] = -1
        day = [f"2026-11-{d:02d}" for d in rng.integers(1, 31, ROWS)]
        for i in np.flatnonzero(rng.random(ROWS) < 0.05):
            day[i] = ["2026-13-45", "yesterday", None][i % 3]
        order = rng.permutation(ROWS)
        table = pa.table({"part": pa.array([part] * ROWS, pa.int32()), "k": k, "v": v, "day": day}).take(order)
        pq.write_table(table, os.path.join(str(directory), f"part-{part:03d}.parquet"))
    return str(directory)


def expected_counts(src: str) -> dict[str, int]:
    """What the counting job must report, from the whole input at once."""
    t = ds.dataset(src).to_table()
    dates = pc.strptime(t["day"], format="%Y-%m-%d", unit="s", error_is_null=True)
    good = t.filter(pc.is_valid(dates))
    return {"rows_read": t.num_rows, "bad_dates": t.num_rows - good.num_rows,
            "keys": len(pc.unique(good["k"])), "reduced_rows": good.num_rows,
            "output_rows": len(pc.unique(good["k"]))}


def once(directory: str, name: str) -> bool:
    """True for the first caller only, in any process (an exclusively created marker file)."""
    try:
        os.close(os.open(os.path.join(directory, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def logged(directory: str | None, t: pa.Table) -> None:
    """Note in a side log the rows of each file one call counted (whatever becomes of its attempt)."""
    if directory is not None:
        with open(os.path.join(directory, "calls.log"), "a") as f:
            for part in pc.unique(t["part"]).to_pylist():
                f.write(f"{part} {pc.sum(pc.equal(t['part'], part)).as_py()}\n")


def side_log(directory: str, parts) -> int:
    """The rows of files ``parts`` that calls counted. (The driver's check of the job on the first rows
    of the first file calls it too: the tests look at other files.)"""
    path = os.path.join(directory, "calls.log")
    lines = [line.split() for line in open(path).read().splitlines()] if os.path.exists(path) else []
    return sum(int(n) for part, n in lines if int(part) in set(parts))


def counting_job(markers: str | None = None, *, fail_part: int | None = None, straggle_part: int | None = None,
                 straggle: float = 3.0, name: str = "counted") -> Job:
    """map (counts rows and bad dates) -> reduce by k (counts keys and rows) -> map (counts output rows).
    ``fail_part``: the first attempt reading that file counts, then raises; ``straggle_part``: the first
    attempt reading that file counts, then sleeps ``straggle`` seconds in the job's code."""

    def parse(t: pa.Table) -> pa.Table:
        dates = pc.strptime(t["day"], format="%Y-%m-%d", unit="s", error_is_null=True)
        engine.counter("rows_read").add(t.num_rows)
        engine.counter("bad_dates").add(t.num_rows - pc.count(dates).as_py())
        logged(markers, t)
        parts = set(pc.unique(t["part"]).to_pylist())
        if fail_part in parts and once(markers, f"fail-{fail_part}"):
            raise ConnectionResetError("the lookup service went away (the first attempt only)")
        if straggle_part in parts and once(markers, f"straggle-{straggle_part}"):
            import time
            time.sleep(straggle)
        return t.filter(pc.is_valid(dates)).select(["k", "v"])

    def total(t: pa.Table) -> pa.Table:
        engine.counter("keys").add(len(pc.unique(t["k"])))
        engine.counter("reduced_rows").add(t.num_rows)
        return t.group_by("k").aggregate([("v", "sum")])

    def after(t: pa.Table) -> pa.Table:
        engine.counter("output_rows").add(t.num_rows)
        return t

    return Job(name).map(parse).reduce(total, by="k").map(after)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> str:
    return make_input(tmp_path_factory.mktemp("counters-input"))


# ---------------------------------------------------------------------------------------------
# The module's own rules


def test_scopes_keep_what_succeeded_and_refuse_what_is_no_whole_number():
    from engine.counters import collect, tentative
    with collect() as counts:
        engine.counter("a").add()
        engine.counter("a").add(np.int64(4))
        with tentative():
            engine.counter("b").add(2)
        with pytest.raises(ZeroDivisionError), tentative():
            engine.counter("b").add(100)
            1 / 0
        with tentative(keep=False):
            engine.counter("c").add(1)
        assert engine.counter("a").value == 5
    assert counts == {"a": 5, "b": 2}
    for bad in (1.5, "3", True, None):
        with pytest.raises(engine.CounterError, match="whole number"):
            engine.counter("x").add(bad)
    with pytest.raises(engine.CounterError, match="name"):
        engine.counter("")
    before = engine.counters.local_counts().get("outside", 0)
    engine.counter("outside").add(2)            # outside any run: the process's own bucket
    assert engine.counters.local_counts()["outside"] == before + 2


# ---------------------------------------------------------------------------------------------
# Real runs


@pytest.mark.parametrize("where", ["driver", "cluster"])
def test_counts_equal_the_inputs_own_figures(src, tmp_path, where, request):
    cluster = request.getfixturevalue("dask_cluster") if where == "cluster" else None
    out = str(tmp_path / "out")
    result = counting_job().run(src, out, cluster=cluster, partition_size="16KiB")
    expected = expected_counts(src)
    assert result.report.counters == expected
    assert ("driver" in result.report.cluster.get("where", "")) == (where == "driver"), result.report.cluster
    assert len(engine.read(out)) == expected["output_rows"]
    assert f"counters: bad_dates={expected['bad_dates']:,}" in result.report.summary()
    rec = history.open_store().get(result.report.record_id)
    assert history.counters_of(rec) == expected
    assert json.loads(rec["report"])["counters"] == expected


def test_streaming_reduce_and_the_functions_around_a_join_count(src, tmp_path):
    def rows(batches):
        for t in batches:
            engine.counter("streamed_rows").add(t.num_rows)
            yield t.group_by("k").aggregate([("v", "sum")])
    streaming = Job("streamed").map(lambda t: t.select(["k", "v"])).reduce(rows, by="k", stream=True)
    result = streaming.run(src, str(tmp_path / "s"), partition_size="16KiB")
    assert result.report.counters == {"streamed_rows": FILES * ROWS}

    right = pa.table({"k": np.arange(0, 60, 2), "w": np.arange(30)})
    os.makedirs(tmp_path / "r")
    pq.write_table(right.slice(0, 15), tmp_path / "r" / "a.parquet")
    pq.write_table(right.slice(15), tmp_path / "r" / "b.parquet")

    def left_map(t):
        engine.counter("left_rows").add(t.num_rows)
        return t.select(["k", "v"])

    def right_map(t):
        engine.counter("right_rows").add(t.num_rows)
        return t

    def joined(t):
        engine.counter("joined_rows").add(t.num_rows)
        return t

    left = ds.dataset(src).to_table()
    expected = {"left_rows": left.num_rows, "right_rows": right.num_rows,
                "joined_rows": left.select(["k", "v"]).join(right, "k", join_type="inner").num_rows}
    for strategy in ("broadcast", "shuffle"):
        job = Job("j", input="l").map(left_map).join(Job("j-r", input="r").map(right_map), on="k").map(joined)
        with dask.config.set({"engine.join.strategy": strategy}):
            result = engine.run(job, {"l": src, "r": str(tmp_path / "r")}, str(tmp_path / f"j-{strategy}"),
                                partition_size="16KiB")
        assert result.report.counters == expected, strategy
        assert any(strategy in str(d) for d in result.report.joins), result.report.joins


@pytest.mark.parametrize("where", ["driver", "cluster"])
def test_an_attempt_that_counted_then_failed_counts_nothing(src, tmp_path, where, request):
    cluster = request.getfixturevalue("dask_cluster") if where == "cluster" else None
    markers = str(tmp_path / "markers")
    os.makedirs(markers)
    with dask.config.set({"engine.retries.backoff-base": 0.01}):
        result = counting_job(markers, fail_part=1).run(src, str(tmp_path / "out"), cluster=cluster,
                                                        partition_size="16KiB")
    expected = expected_counts(src)
    assert [t.status for t in result.report.tasks].count("failed") == 1
    assert side_log(markers, [1]) == 2 * ROWS          # the failed attempt did count the file's rows
    assert result.report.counters == expected


@pytest.mark.timeout(180)
def test_a_speculative_copy_that_lost_counts_nothing(src, tmp_path, dask_cluster):
    markers = str(tmp_path / "markers")
    os.makedirs(markers)
    with dask.config.set({"engine.speculation.min-runtime": 0.5, "engine.speculation.zombie-grace": 60}):
        result = counting_job(markers, straggle_part=2).run(src, str(tmp_path / "out"), cluster=dask_cluster,
                                                            partition_size="16KiB")
    expected = expected_counts(src)
    decisions = result.report.speculation
    assert len(decisions) == 1 and decisions[0]["won"] == decisions[0]["attempt"] != decisions[0]["straggler"], \
        decisions
    assert side_log(markers, [2]) == 2 * ROWS          # both attempts of the file counted its rows
    assert result.report.counters == expected


def test_reject_mode_counts_only_the_calls_that_succeeded(src, tmp_path):
    def checked(t):
        engine.counter("mapped_rows").add(t.num_rows)
        if pc.any(pc.less(t["v"], 0)).as_py():
            raise ValueError("a negative value")
        return t.select(["k", "v"])

    def poisoned(t):
        engine.counter("reduced_keys").add(len(pc.unique(t["k"])))
        if pc.any(pc.equal(t["k"], POISON)).as_py():
            raise ValueError(f"key {POISON}")
        return t.group_by("k").aggregate([("v", "sum")])

    job = Job("rejecting").map(checked).reduce(poisoned, by="k")
    result = job.run(src, str(tmp_path / "out"), on_error="reject", max_rejected=FILES * ROWS)
    t = ds.dataset(src).to_table()
    good = t.filter(pc.greater_equal(t["v"], 0))
    keys = set(good["k"].to_pylist())
    assert POISON in keys
    poisoned_rows = good.filter(pc.equal(good["k"], POISON)).num_rows
    assert result.report.rejected == (t.num_rows - good.num_rows) + poisoned_rows
    assert result.report.counters == {"mapped_rows": good.num_rows, "reduced_keys": len(keys) - 1}


def test_a_resumed_run_keeps_the_counts_of_the_tasks_it_reuses(src, tmp_path):
    markers = str(tmp_path / "markers")
    os.makedirs(markers)
    out = str(tmp_path / "out")
    job = counting_job(markers)
    expected = expected_counts(src)
    with dask.config.set({"engine.retries.backoff-base": 0.01}):
        with pytest.raises(engine.StageFailedError):
            job.run(src, out, partition_size="16KiB", faults=Faults(fail_attempts={("reduce", 0): 99}))
    failed = history.open_store().records(job="counted", status="failed", limit=1)[0]
    assert history.counters_of(failed)["rows_read"] == expected["rows_read"]     # the maps that won
    later = range(1, FILES)
    assert side_log(markers, later) == (FILES - 1) * ROWS
    result = job.run(src, out, partition_size="16KiB", resume=True)
    assert result.report.stages[0].resumed == FILES and result.report.stages[0].attempts == 0
    assert side_log(markers, later) == (FILES - 1) * ROWS      # no map task ran again ...
    assert result.report.counters == expected                   # ... and their counts are there


def test_a_count_that_is_no_whole_number_fails_the_run_saying_what_to_pass(src, tmp_path):
    job = Job("misuse").map(lambda t: (engine.counter("share").add(t.num_rows / 2), t)[1])
    with pytest.raises(engine.EngineError, match="whole number") as info:
        job.run(src, str(tmp_path / "out"))
    assert "CounterError" in str(info.value) or isinstance(info.value, engine.CounterError)


# ---------------------------------------------------------------------------------------------
# The command line: run --json, history, the metrics textfile


def test_the_command_line_shows_the_counters(src, tmp_path):
    jobfile = tmp_path / "counted_job.py"
    jobfile.write_text(textwrap.dedent("""
        import pyarrow.compute as pc
        import engine
        from engine import Job

        def parse(t):
            dates = pc.strptime(t["day"], format="%Y-%m-%d", unit="s", error_is_null=True)
            engine.counter("rows_read").add(t.num_rows)
            engine.counter("bad_dates").add(t.num_rows - pc.count(dates).as_py())
            return t.filter(pc.is_valid(dates)).select(["k", "v"])

        job = Job("cli-counted").map(parse).reduce(by="k", aggs={"n": engine.agg.count()})
    """))
    env = {**os.environ, "PYTHONPATH": REPO, "ENGINE_HISTORY": str(tmp_path / "history.sqlite")}
    cli = [sys.executable, "-m", "engine"]
    run = subprocess.run(cli + ["run", str(jobfile), "--input", src, "--output", str(tmp_path / "out"), "--json",
                                "--metrics-file", str(tmp_path / "metrics.prom")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    full = expected_counts(src)
    expected = {"rows_read": full["rows_read"], "bad_dates": full["bad_dates"]}
    assert doc["counters"] == expected and doc["report"]["counters"] == expected
    shown = subprocess.run(cli + ["history"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"counters: bad_dates={expected['bad_dates']:,}, rows_read={expected['rows_read']:,}" in shown.stdout
    listed = json.loads(subprocess.run(cli + ["history", "--json"], env=env, capture_output=True, text=True,
                                       timeout=60).stdout)
    assert listed["runs"][0]["counters"] == expected
    metrics = (tmp_path / "metrics.prom").read_text()
    assert f'mapreduce_counter{{job="cli-counted",name="bad_dates"}} {float(expected["bad_dates"])}' in metrics
