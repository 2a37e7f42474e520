"""The commit protocol under faults, on local disk and on S3 (moto server), with real processes and kills.

Promise: a reader sees all of a run's output or none of it, never a mix, a partial file or a
duplicate; every committed byte is covered by a checksum; a failed or killed run can be rerun.
"""

from __future__ import annotations

import collections
import json
import os
import posixpath
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest

import engine
from engine import commit
from engine.errors import IntegrityError, ManifestError, StageFailedError
from engine.faults import Faults
from fixtures import Backend, storage_backend
from jobs.wordcount import job as wordcount


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    return storage_backend(request, tmp_path, "faults")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four text files of Zipf words, and the reference counts."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(5)
    vocab = np.array([f"word{i}" for i in range(2000)])
    counts = collections.Counter()
    for i in range(4):
        words = vocab[np.minimum(rng.zipf(1.2, 30_000) - 1, len(vocab) - 1)]
        lines = [" ".join(words[j:j + 10]) for j in range(0, len(words), 10)]
        (d / f"doc-{i}.txt").write_text("\n".join(lines) + "\n")
        counts.update(words.tolist())
    return str(d), dict(counts)


def as_counts(table: pa.Table) -> dict:
    return dict(zip(table["word"].to_pylist(), table["count"].to_pylist()))


def data_files(backend: Backend, out: str) -> set[str]:
    path = backend.path(out)
    backend.fs.invalidate_cache()
    try:
        return {posixpath.basename(p) for p in backend.fs.ls(path, detail=False)
                if posixpath.basename(p).startswith("part-")}
    except FileNotFoundError:
        return set()


def pending_uploads(backend: Backend, out: str) -> list[str]:
    if backend.name != "s3":
        return []
    bucket, _, prefix = backend.path(out).partition("/")
    listing = backend.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
    return [u["Key"] for u in listing.get("Uploads", [])]


# ---------------------------------------------------------------------------------------------
# In-process scenarios


def test_two_finished_attempts_of_one_partition_commit_exactly_one(backend):
    out = backend.path(backend.url("two-attempts"))
    table = pa.table({"word": ["a", "b"], "count": [1, 2]})
    messages = []
    for attempt in (0, 1):
        w = commit.ParquetAttemptWriter(backend.fs, out, "run0000000000001", partition=0, attempt=attempt)
        w.write(table)
        messages.append(w.close())
    winners, losers = commit.choose_winners(messages)
    commit.discard(backend.fs, losers)
    commit.commit_job(backend.fs, out, run_id="run0000000000001", winners=winners, schema=table.schema,
                      mode="error", previous=None, meta={"job": "t", "fingerprint": "f"})
    assert data_files(backend, out) == {messages[0]["files"][0]["name"]}
    assert not backend.fs.exists(messages[1]["files"][0]["tmp"])
    assert pending_uploads(backend, out) == []
    assert engine.read(backend.url("two-attempts"), backend.options, verify=True).equals(table)


def test_exception_after_partial_bytes_publishes_nothing_and_rerun_works(backend, corpus):
    src, expected = corpus
    out = backend.url("partial")
    # Reduce partition 1 fails on every attempt after the other partitions have written their files.
    faults = Faults(fail_attempts={("reduce", 1): 99})
    with pytest.raises(StageFailedError, match="reduce stage, partition 1"):
        wordcount.run(src, out, storage_options=backend.options, partition_size="16KiB", faults=faults)
    assert data_files(backend, out) == set()
    with pytest.raises(ManifestError):
        engine.read(out, backend.options)
    result = wordcount.run(src, out, storage_options=backend.options, partition_size="16KiB")
    assert as_counts(engine.read(out, backend.options, verify=True)) == expected
    assert data_files(backend, out) == {f["path"] for f in result.manifest.files}
    assert pending_uploads(backend, out) == []


def test_failed_overwrite_keeps_old_output_and_fewer_partitions_leave_no_stale_files(backend, corpus):
    src, expected = corpus
    out = backend.url("overwrite")
    first = wordcount.run(src, out, storage_options=backend.options, partition_size="8KiB")
    assert len(first.manifest.files) >= 4
    old = engine.read(out, backend.options)
    with pytest.raises(StageFailedError):
        wordcount.run(src, out, storage_options=backend.options, mode="overwrite", force=True,
                      faults=Faults(fail_attempts={("reduce", 0): 99}))
    assert engine.read(out, backend.options, verify=True).equals(old)
    second = wordcount.run(src, out, storage_options=backend.options, mode="overwrite", force=True,
                           partition_size="1GiB")
    assert len(second.manifest.files) < len(first.manifest.files)
    assert data_files(backend, out) == {f["path"] for f in second.manifest.files}
    assert as_counts(engine.read(out, backend.options, verify=True)) == expected
    assert pending_uploads(backend, out) == []


@pytest.mark.parametrize("where", ["data-page", "footer", "manifest"])
def test_a_single_flipped_byte_is_named_by_verify(backend, corpus, where):
    src, _ = corpus
    out = backend.url(f"flip-{where}")
    result = wordcount.run(src, out, storage_options=backend.options, partition_size="16KiB")
    entry = result.manifest.files[0]
    victim = posixpath.join(backend.path(out), entry["path"] if where != "manifest" else "_SUCCESS")
    data = bytearray(backend.fs.cat_file(victim))
    offset = {"data-page": 40, "footer": len(data) - 12, "manifest": len(data) // 2}[where]
    data[offset] ^= 0x01
    backend.fs.pipe_file(victim, bytes(data))
    with pytest.raises(IntegrityError) as exc:
        engine.verify(out, backend.options)
    assert posixpath.basename(victim) in str(exc.value)
    with pytest.raises(IntegrityError):
        engine.read(out, backend.options, verify=True)


# ---------------------------------------------------------------------------------------------
# Real process kills: the driver is a separate Python process talking to a CLI-started cluster


DRIVER = textwrap.dedent('''
    import json, sys
    import engine
    from jobs.wordcount import job
    args = json.loads(sys.argv[1])
    try:
        result = engine.run(job, args["src"], args["out"], cluster=args["cluster"], mode=args["mode"],
                            storage_options=args["options"], partition_size="16KiB", force=args["force"])
    except engine.EngineError as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print("COMMITTED", result.run_id, flush=True)
''')


def start_driver(tmp_path, cluster, src, out, options, *, mode="overwrite", force=True, faults=None):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    if faults:
        env["ENGINE_FAULTS"] = json.dumps(faults)
    args = json.dumps({"src": src, "out": out, "cluster": cluster, "mode": mode, "options": options,
                       "force": force})
    return subprocess.Popen([sys.executable, str(script), args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_all_or_nothing(backend, out, acceptable: list[dict]) -> str:
    """The output is absent, or a committed generation that verifies and equals an acceptable result."""
    try:
        engine.verify(out, backend.options)
    except ManifestError as exc:
        if "no committed output" in str(exc) and not acceptable[0]:
            return "absent"
        raise
    got = as_counts(engine.read(out, backend.options))
    assert got in [a for a in acceptable if a], "committed output equals no run's result"
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    listed = {f["path"] for f in manifest.files}
    assert listed <= data_files(backend, out)
    return "committed"


@pytest.mark.slow
def test_driver_killed_at_random_moments(backend, corpus, dask_cluster, tmp_path):
    src, expected = corpus
    out = backend.url("kills")
    faults = {"commit_delay": 0.1}
    # Calibrate: how long does one whole driver run take here (start-up, stages, commit)?
    durations = []
    for _ in range(2):
        started = time.time()
        proc = start_driver(tmp_path, dask_cluster, src, backend.url("calibration"), backend.options, faults=faults)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
        durations.append(time.time() - started)
    duration = min(durations)
    rng = random.Random(20261127)
    outcomes = collections.Counter()
    committed_before = False
    for i in range(60):
        if outcomes["killed"] >= 20:
            break
        proc = start_driver(tmp_path, dask_cluster, src, out, backend.options, faults=faults)
        # Mostly kill at a random moment; once, early on, let a run commit so that later kills hit
        # an overwrite of a committed previous generation.
        time.sleep(rng.uniform(0.15, 0.95) * duration if i != 4 else 10 * duration)
        phase = "finished"
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            outcomes["killed"] += 1
            stdout = proc.communicate(timeout=60)[0]
            steps = [line.split()[-1] for line in stdout.splitlines() if line.startswith("engine-fault: commit step")]
            phase = f"during commit ({steps[-1]})" if steps else "before commit"
        proc.wait(timeout=60)
        outcomes[phase] += 1
        state = check_all_or_nothing(backend, out, [expected if committed_before else None, expected])
        committed_before = committed_before or state == "committed"
        outcomes[state] += 1
    # After the storm, a normal run commits and equals the reference; no leftovers remain.
    proc = start_driver(tmp_path, dask_cluster, src, out, backend.options)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert as_counts(engine.read(out, backend.options, verify=True)) == expected
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    assert data_files(backend, out) == {f["path"] for f in manifest.files}
    assert pending_uploads(backend, out) == []
    print(f"driver run {duration:.1f}s;", dict(outcomes))
    assert outcomes["killed"] >= 20, outcomes
    assert sum(n for k, n in outcomes.items() if k.startswith("during commit")) >= 2, outcomes
    assert outcomes["committed"] >= 1 and outcomes["before commit"] >= 1, outcomes


@pytest.mark.slow
def test_two_concurrent_runs_one_commits_the_other_fails_cleanly(backend, corpus, dask_cluster, tmp_path):
    src, expected = corpus
    out = backend.url("race")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    procs = [start_driver(tmp_path / d, dask_cluster, src, out, backend.options, mode="error", force=False)
             for d in ("a", "b")]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], results
    loser = [r for p, r in zip(procs, results) if p.returncode == 1][0][0]
    assert "ConcurrentRunError" in loser or "OutputExistsError" in loser, loser
    assert as_counts(engine.read(out, backend.options, verify=True)) == expected
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    assert data_files(backend, out) == {f["path"] for f in manifest.files}


# ---------------------------------------------------------------------------------------------
# A worker frozen mid-task, resume after a driver kill, cleaning leftovers


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _slow_count(t: pa.Table) -> pa.Table:
    """A reduce that dawdles (in user code, which cannot notice cancellation) before counting."""
    time.sleep(2.0)
    r = t.group_by("word").aggregate([([], "count_all")])
    return pa.table({"word": r["word"], "count": r["count_all"]})


SLOW_REDUCE = engine.Job("slow-reduce").map(wordcount.stages[0].fn).reduce(_slow_count, by="word")


def _run_slow_reduce_in_thread(src, out, backend, address):
    """Start SLOW_REDUCE in a thread; returns (thread, box) where box gets "result" or "error"."""
    import threading
    box: dict = {}

    def drive():
        try:
            box["result"] = SLOW_REDUCE.run(src, out, cluster=address, storage_options=backend.options,
                                            partition_size="512KiB", speculation=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertion
            box["error"] = exc
    thread = threading.Thread(target=drive)
    thread.start()
    return thread, box


def _worker_executing_reduce(client):
    """A worker *executing* a reduce attempt (inside its 2 s of user code), not merely assigned one."""
    def executing_reduce(dask_worker):   # nested: travels by value to workers that cannot import tests
        return [k for k, ts in dask_worker.state.tasks.items()
                if ts.state == "executing" and isinstance(k, tuple) and "-reduce-" in k[0]]
    return _wait_for(lambda: next((w for w, ks in client.run(executing_reduce).items() if ks), None), 60,
                     "a reduce attempt to be executing")


@pytest.mark.slow
def test_sigstopped_worker_late_output_is_never_used(backend, corpus, tmp_path):
    from distributed import Client

    from fixtures import cli_cluster
    src, expected = corpus
    out = backend.url("sigstop")
    # A short worker TTL: the scheduler gives up on the frozen worker and re-runs its task elsewhere.
    # No nanny: nothing restarts or kills the frozen worker, so once thawed it really finishes its stale attempt.
    with cli_cluster(tmp_path / "cluster", 2, worker_args=("--no-nanny",),
                     env={"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "3s"}) as cluster, \
            Client(cluster.address, set_as_default=False) as client:
        pids = cluster.worker_pids()
        thread, box = _run_slow_reduce_in_thread(src, out, backend, cluster.address)
        frozen = _worker_executing_reduce(client)
        os.kill(pids[frozen], signal.SIGSTOP)
        try:
            thread.join(timeout=120)
            assert not thread.is_alive() and "error" not in box, box.get("error")
        finally:
            os.kill(pids[frozen], signal.SIGCONT)
        manifest_before = commit.load_manifest(backend.fs, backend.path(out)).raw
        committed = box["result"].manifest
        # The thawed worker finishes its stale attempt (a 2 s sleep, then the write) after the commit.
        def late_output():
            late = [f for f in data_files(backend, out) if f not in {e["path"] for e in committed.files}]
            late += pending_uploads(backend, out)
            tmp = backend.path(out) + "/_temporary"
            backend.fs.invalidate_cache()
            return late + [p for p in (backend.fs.find(tmp) if backend.fs.exists(tmp) else [])]
        # It writes unless it notices, at its next cancellation check, that its attempt was released:
        # both are correct; either way nothing it does may change the committed output.
        deadline = time.time() + 10
        while time.time() < deadline and not late_output():
            time.sleep(0.2)
        time.sleep(1)
        print("late output of the thawed worker:", late_output())
        assert commit.load_manifest(backend.fs, backend.path(out)).raw == manifest_before
    # The stale attempt is garbage: never in the manifest, removed by the next run or `mapreduce clean`.
    assert as_counts(engine.read(out, backend.options, verify=True)) == expected
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    assert data_files(backend, out) == {f["path"] for f in manifest.files}
    commit.cleanup(backend.fs, backend.path(out), keep_run=None, manifest=manifest)
    assert pending_uploads(backend, out) == [] and not backend.fs.exists(backend.path(out) + "/_temporary")


@pytest.mark.slow
def test_worker_sigkilled_mid_write(backend, corpus, tmp_path):
    from distributed import Client

    from fixtures import cli_cluster
    src, expected = corpus
    out = backend.url("worker-kill")
    with cli_cluster(tmp_path / "cluster", 2) as cluster, Client(cluster.address, set_as_default=False) as client:
        thread, box = _run_slow_reduce_in_thread(src, out, backend, cluster.address)
        victim = _worker_executing_reduce(client)
        os.kill(cluster.worker_pids()[victim], signal.SIGKILL)
        thread.join(timeout=180)
        assert not thread.is_alive() and "error" not in box, box.get("error")
    assert as_counts(engine.read(out, backend.options, verify=True)) == expected
    manifest = commit.load_manifest(backend.fs, backend.path(out))
    assert data_files(backend, out) == {f["path"] for f in manifest.files}


@pytest.mark.slow
def test_resume_reuses_finished_map_outputs_after_driver_kill(corpus, dask_cluster, tmp_path):
    src, expected = corpus
    out = tmp_path / "resume"
    # The reduce stage hangs (first attempts), so the driver is surely killed after the map stage.
    proc = start_driver(tmp_path, dask_cluster, src, str(out), None, mode="error", force=False,
                        faults={"hang_first_attempt": [["reduce", 0]]})
    journal = lambda: list(out.glob("_temporary/*/journal/r0-map/*.json"))  # noqa: E731
    _wait_for(lambda: len(journal()) == 4, 120, "the map stage to be journaled")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "_SUCCESS").exists()
    result = wordcount.run(src, str(out), cluster=dask_cluster, partition_size="16KiB", resume=True)
    map_stage = result.report.stages[0]
    assert map_stage.resumed == 4 and map_stage.attempts == 0
    assert as_counts(engine.read(str(out), verify=True)) == expected
    assert not (out / "_temporary").exists()


def test_clean_removes_leftovers_of_dead_runs_but_not_committed_output(corpus, tmp_path):
    src, expected = corpus
    out = tmp_path / "clean"
    with pytest.raises(StageFailedError):
        wordcount.run(src, str(out), partition_size="16KiB", faults=Faults(fail_attempts={("reduce", 1): 99}))
    assert list(out.glob("_temporary/*/*.parquet"))          # leftovers of the failed run
    proc = subprocess.run([sys.executable, "-m", "engine", "clean", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "_temporary").exists()
    wordcount.run(src, str(out), partition_size="16KiB")
    subprocess.run([sys.executable, "-m", "engine", "clean", str(out)], check=True, capture_output=True)
    assert as_counts(engine.read(str(out), verify=True)) == expected
