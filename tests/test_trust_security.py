"""What the driver trusts: the resume journal is data, secrets never leave the driver, user data stays out
of metadata.

* A run's id is public (``run_id`` in the manifest; it is a hash of the job fingerprint and the input
  snapshot), so anyone who can write to the output location can plant files in the journal of the next
  run of the same job. Loading the journal must never execute anything, and a journaled path that
  leaves the run's own directories is ignored.
* Error strings carry URLs and keys (a presigned URL in a botocore message, a key in a user's own
  exception). Everything the engine writes down (logs, history, report, error messages, manifest)
  passes through one redaction.
* Hot keys are user data: the manifest and the history carry a short hash of them unless
  ``engine.report.key-values`` is on.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import traceback

import dask.config
import numpy as np
import pyarrow as pa
import pytest

import engine
from conftest import write_parts
from engine import Job, agg
from engine.errors import StageFailedError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([REPO, full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three text files of words and their reference counts."""
    d = tmp_path_factory.mktemp("trust-corpus")
    rng = np.random.default_rng(9)
    vocab = np.array([f"w{i}" for i in range(500)])
    counts: collections.Counter = collections.Counter()
    for i in range(3):
        words = vocab[np.minimum(rng.zipf(1.3, 6_000) - 1, len(vocab) - 1)]
        lines = [" ".join(words[j:j + 8]) for j in range(0, len(words), 8)]
        (d / f"doc-{i}.txt").write_text("\n".join(lines) + "\n")
        counts.update(words.tolist())
    return str(d), dict(counts)


def as_counts(table: pa.Table) -> dict:
    return dict(zip(table["word"].to_pylist(), table["count"].to_pylist()))


# ---------------------------------------------------------------------------------------------
# 1. The resume journal holds data, not code


class _Planted:
    """Unpickling this creates ``marker``: what an attacker's pickle would do instead (run any code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_in_the_journal_never_runs(corpus, dask_cluster, tmp_path):
    src, expected = corpus
    # An earlier run of the job publishes its run id in its manifest; the same job over the same input
    # writing anywhere else gets the same run id.
    first = cli("run", "jobs/wordcount.py", "--input", src, "--output", str(tmp_path / "public"),
                "--scheduler", dask_cluster, "--partition-size", "16KiB", "--quiet")
    assert first.returncode == 0, first.stderr
    run_id = json.loads((tmp_path / "public" / "_SUCCESS").read_text())["run_id"]
    # Someone with write access to the next output location plants a pickle in that run's journal.
    out = tmp_path / "victim"
    marker = tmp_path / "code-ran-in-the-driver"
    for stage in ("r0-map", "r0-reduce"):
        journal = out / "_temporary" / run_id / "journal" / stage
        journal.mkdir(parents=True)
        for p in range(3):
            (journal / f"{p:05d}.pkl").write_bytes(pickle.dumps(_Planted(str(marker))))
    proc = cli("run", "jobs/wordcount.py", "--input", src, "--output", str(out), "--scheduler", dask_cluster,
               "--partition-size", "16KiB", "--resume")
    assert not marker.exists(), "the driver unpickled a file from the output location"
    assert proc.returncode == 0, proc.stderr
    assert as_counts(engine.read(str(out), verify=True)) == expected


def test_forged_json_journal_pointing_outside_the_run_is_ignored(corpus, dask_cluster, tmp_path):
    """A journal entry in the current format whose files lie outside this run's directories is not used."""
    from engine import journal as journal_mod
    src, expected = corpus
    first = wordcount_job().run(src, str(tmp_path / "public"), cluster=dask_cluster, partition_size="16KiB")
    run_id = first.run_id
    # A map output of the attacker's choosing (all words counted 1000 times), outside the run's shuffle root.
    forged = tmp_path / "elsewhere" / "forged.arrow"
    forged.parent.mkdir()
    out = tmp_path / "victim"
    from engine.shuffle import HashShuffleWriter
    import fsspec
    fs = fsspec.filesystem("file")
    w = HashShuffleWriter(fs, str(forged), ["word"], 8)
    w.write(pa.table({"word": list(expected), "count": [1000] * len(expected)}))
    index = w.close()
    root = str(out / "_temporary" / run_id)
    j = journal_mod.Journal(fs, f"{root}/journal", run_id=run_id, out=str(out), shuffle_root=f"{root}/shuffle")
    for p in range(3):
        j.record("r0-map", p, {"shuffle": index, "rows_out": index.total_rows, "bytes_out": index.total_bytes,
                               "schema": None, "spec": "whatever"})
    assert j.load("r0-map") == {}       # the driver refuses it: the file is not under this run's shuffle root
    result = wordcount_job().run(src, str(out), cluster=dask_cluster, partition_size="16KiB", resume=True)
    assert result.report.stages[0].resumed == 0
    assert as_counts(engine.read(str(out), verify=True)) == expected


def wordcount_job():
    from jobs.wordcount import job
    return job


# ---------------------------------------------------------------------------------------------
# 2. Secrets in task errors never leave the driver

SIGNATURE = "5e1d2a9c" * 8
ACCESS_KEY = "AKIAZQ3DRSECRETID7QX"
SECRET_KEY = "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"
SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDNOTREALTOKEN1234"
PRESIGNED = ("https://bucket.s3.amazonaws.com/data/part-0.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={ACCESS_KEY}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
             f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token={SESSION_TOKEN}"
             f"&X-Amz-Signature={SIGNATURE}")
SECRETS = (SIGNATURE, ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, "hunter2-db-password")

MESSAGE = (f"fetching {PRESIGNED} failed (aws_secret_access_key={SECRET_KEY}, "
           "db=postgresql://etl:hunter2-db-password@db.internal:5432/x)")

# The message is stored reversed, so that the job's source (which a traceback quotes) holds no secret.
LEAKY_JOB = '''
"""A word count whose map fails {when}, with credentials in its error message."""
import os

import pyarrow as pa
import pyarrow.compute as pc

from engine import Job, agg

FLAG = {flag!r}
REVERSED = {reversed!r}


def words(t):
    if {condition}:
        raise RuntimeError(REVERSED[::-1])
    w = pc.list_flatten(pc.ascii_split_whitespace(t["text"]))
    return pa.table({{"word": w}})


job = Job("leaky").map(words, columns=["text"]).reduce(by="word", aggs={{"count": agg.count()}})
'''


def _leaky_job_file(tmp_path, *, always: bool, in_driver: bool = False) -> str:
    flag = str(tmp_path / "failed-once")
    # Attempt 0 only: the first call anywhere creates the flag atomically and fails; every later call works.
    once = "_in_worker() and _first_call()"
    path = tmp_path / ("driver_leaky.py" if in_driver else "always_leaky.py" if always else "leaky.py")
    condition = "True" if in_driver else "_in_worker()" if always else once
    text = LEAKY_JOB.format(when="always" if always else "once", flag=flag, reversed=MESSAGE[::-1],
                            condition=condition)
    text += textwrap.dedent('''

        def _in_worker():
            """Fail in tasks only (not when the driver checks the map on a sample of the input)."""
            try:
                from distributed import get_worker
                get_worker()
            except (ImportError, ValueError):
                return False
            return True


        def _first_call():
            try:
                os.close(os.open(FLAG, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return False
            return True
        ''')
    path.write_text(text)
    return str(path)


def _assert_no_secret(text, where: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}"


def _history_rows(db: str) -> str:
    with sqlite3.connect(db) as con:
        return json.dumps(con.execute("SELECT * FROM runs").fetchall(), default=str)


def test_retried_task_error_secrets_are_redacted(corpus, dask_cluster, tmp_path):
    src, expected = corpus
    job_file = _leaky_job_file(tmp_path, always=False)
    db = str(tmp_path / "history.sqlite")
    html = tmp_path / "report.html"
    proc = cli("run", job_file, "--input", src, "--output", str(tmp_path / "out"), "--scheduler", dask_cluster,
               "--partition-size", "16KiB", "--report", str(html), env={"ENGINE_HISTORY": db})
    assert proc.returncode == 0, proc.stderr
    _assert_no_secret(proc.stderr, "the log output")
    assert "retrying" in proc.stderr                    # the retry was logged ...
    assert "X-Amz-Signature=***" in proc.stderr         # ... with the URL's shape kept and its secrets masked
    _assert_no_secret(proc.stdout, "the run summary")
    _assert_no_secret(_history_rows(db), "the history database")
    assert "retries" in _history_rows(db)
    history = cli("history", env={"ENGINE_HISTORY": db})
    assert history.returncode == 0 and "leaky" in history.stdout
    _assert_no_secret(history.stdout, "`mapreduce history`")
    _assert_no_secret(html.read_bytes(), "the HTML report")
    assert as_counts(engine.read(str(tmp_path / "out"))) == expected


def test_failed_task_error_secrets_are_redacted(corpus, dask_cluster, tmp_path, caplog, monkeypatch):
    import importlib.util
    src, _ = corpus
    db = str(tmp_path / "history.sqlite")
    monkeypatch.setenv("ENGINE_HISTORY", db)
    spec = importlib.util.spec_from_file_location("always_leaky_job", _leaky_job_file(tmp_path, always=True))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with caplog.at_level("INFO", logger="engine"), pytest.raises(StageFailedError) as err:
        engine.run(module.job, src, str(tmp_path / "out"), cluster=dask_cluster, partition_size="16KiB")
    _assert_no_secret(str(err.value), "the raised error")
    assert "RuntimeError" in str(err.value) and "X-Amz-Signature=***" in str(err.value)
    _assert_no_secret("".join(traceback.format_exception(err.value)), "the error's traceback (with its cause)")
    _assert_no_secret(caplog.text, "the log records")
    _assert_no_secret(_history_rows(db), "the history database")
    # The CLI says the same in one paragraph.
    proc = cli("run", _leaky_job_file(tmp_path, always=True), "--input", src, "--output", str(tmp_path / "out2"),
               "--scheduler", dask_cluster, env={"ENGINE_HISTORY": db})
    assert proc.returncode == 1 and "StageFailedError" in proc.stderr
    _assert_no_secret(proc.stderr, "the CLI's error")


def test_map_failing_on_the_driver_sample_does_not_print_secrets(corpus, tmp_path):
    """The driver tries the map on a sample before the run: that error is redacted too."""
    src, _ = corpus
    proc = cli("run", _leaky_job_file(tmp_path, always=True, in_driver=True), "--input", src, "--output",
               str(tmp_path / "out"), "--debug")
    assert proc.returncode == 1 and "JobDefinitionError" in proc.stderr, proc.stderr
    _assert_no_secret(proc.stderr, "the CLI's error and traceback")


# ---------------------------------------------------------------------------------------------
# 3. Hot-key values stay out of metadata unless asked for

HOT = "hot-key-CANARY-7731@example.org"
HOT_SUMS = Job("hot-sums").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})


def _hot_input(directory) -> pa.Table:
    rng = np.random.default_rng(4)
    n = 60_000
    ids = np.where(rng.random(n) < 0.5, -1, rng.integers(0, 5000, n))
    keys = [HOT if i < 0 else f"user-{i}" for i in ids.tolist()]
    t = pa.table({"k": pa.array(keys, pa.string()), "v": rng.normal(0, 1, n)})
    write_parts(directory, t, parts=4)
    return t


def test_hot_key_values_stay_out_of_the_manifest_unless_asked(tmp_path, dask_cluster, monkeypatch):
    db = str(tmp_path / "history.sqlite")
    monkeypatch.setenv("ENGINE_HISTORY", db)
    _hot_input(tmp_path / "in")
    result = HOT_SUMS.run(str(tmp_path / "in"), str(tmp_path / "out"), cluster=dask_cluster,
                          partition_size="64KiB", map_combine=False)
    hot = [d for d in result.report.skew if d["action"] in ("split", "isolate")]
    assert hot and hot[0]["key"] == [HOT], result.report.skew     # the user's own report names the key
    manifest = (tmp_path / "out" / "_SUCCESS").read_text()
    assert HOT not in manifest, "a hot key value was copied into the manifest"
    decided = [d for d in json.loads(manifest)["decisions"]["skew"] if d["action"] in ("split", "isolate")]
    assert decided and decided[0]["key"].startswith("sha256:") and decided[0]["key_type"] == ["str"]
    assert HOT not in _history_rows(db)
    explained = cli("explain", str(tmp_path / "out"))
    assert explained.returncode == 0 and decided[0]["key"] in explained.stdout and HOT not in explained.stdout
    # Opt in: the values are written.
    with dask.config.set({"engine.report.key-values": True}):
        HOT_SUMS.run(str(tmp_path / "in"), str(tmp_path / "out-values"), cluster=dask_cluster,
                     partition_size="64KiB", map_combine=False)
    assert HOT in (tmp_path / "out-values" / "_SUCCESS").read_text()


# ---------------------------------------------------------------------------------------------
# Units: the redaction patterns, the journal's encoding and its checks

@pytest.mark.parametrize("text, secret", [
    (PRESIGNED, SIGNATURE), (PRESIGNED, ACCESS_KEY), (PRESIGNED, SESSION_TOKEN),
    ("s3://AKIAZQ3DRSECRETID7QX:topsecretvalue@bucket/key", "topsecretvalue"),
    ("postgresql://etl:hunter2-db-password@db.internal:5432/x", "hunter2-db-password"),
    ("https://acct.blob.core.windows.net/c/f?sv=2022-11-02&se=2026&sig=Zm9vYmFyYmF6cXV4%3D", "Zm9vYmFyYmF6cXV4"),
    ("GET /o?X-Goog-Signature=9f8e7d6c5b4a&X-Goog-Credential=sa%40p.iam", "9f8e7d6c5b4a"),
    ("https://api.example.com/v1?token=tok_9Qm2LxA7&page=2", "tok_9Qm2LxA7"),
    ("headers: {'Authorization': 'AWS4-HMAC-SHA256 Credential=ASIAZQ3DRSECRETID7QX/2026, Signature=ab12'}", "ab12"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ("calling with bearer ghp_abcdefghijklmnop1234", "ghp_abcdefghijklmnop1234"),
    (f"aws_secret_access_key = {SECRET_KEY}", SECRET_KEY),
    (f"{{'key': 'AKIAZQ3DRSECRETID7QX', 'secret': '{SECRET_KEY}'}}", SECRET_KEY),
    (f"SecretAccessKey {SECRET_KEY} was rejected", SECRET_KEY),
    ("connect(password=hunter2, user=etl)", "hunter2"),
    ("ASIAZQ3DRSECRETID7QX is not authorized", "ASIAZQ3DRSECRETID7QX"),
])
def test_redaction_patterns(text, secret):
    from engine.redact import redact
    clean = redact(text)
    assert secret not in clean and "***" in clean, clean


def test_redaction_keeps_ordinary_text():
    from engine.redact import redact
    for text in ["round 1 of 2, map stage, partition 3 (input /data/in/part-001.parquet) failed: KeyError: 'k'",
                 "tcp://127.0.0.1:8786", "s3://bucket/out/_temporary/0123456789abcdef/part-00001.parquet",
                 "committed 1,234 rows in 2 file(s) to /tmp/out (run c9f6b26b12d854e2)",
                 "hot key ('user-17',) (~3,000 rows, 1.2 MiB) is combined by 3 tasks",
                 "fingerprint 3f786850e387550fdab836ed7e6dc881de23001b3f786850e387550fdab836ed"]:
        assert redact(text) == text


def test_redaction_of_storage_options_and_logs(caplog):
    import logging

    from engine import runner
    from engine.redact import remember
    options = {"key": "plain-access-name", "secret": "s3cr3t-v4lue-zz", "client_kwargs": {"endpoint_url": "http://x"}}
    assert runner.redact("failed with s3cr3t-v4lue-zz", options) == "failed with ***"     # the old name works
    remember(options)
    with caplog.at_level("INFO", logger="engine"):
        logging.getLogger("engine").warning("task failed: %s and %s", "s3cr3t-v4lue-zz", PRESIGNED)
    assert "s3cr3t-v4lue-zz" not in caplog.text and SIGNATURE not in caplog.text
    assert "X-Amz-Signature=***" in caplog.text


def test_public_decisions_hash_keys():
    from engine.redact import key_digest, public_decisions
    d = [{"action": "isolate", "key": ["a@b.c", 7], "keys": [["a@b.c", 7], ["x", 1]],
          "reason": "hot key(s) ('a@b.c', 7), ('x', 1) (~10 rows) get a reduce task of their own"},
         {"action": "plan", "reason": "8 partitions"}]
    out = public_decisions(d)
    assert "a@b.c" not in json.dumps(out) and "'x'" not in json.dumps(out)
    assert out[0]["key"] == key_digest(("a@b.c", 7)) and out[0]["key_type"] == ["str", "int"]
    assert key_digest(("x", 1)) in out[0]["reason"] and out[1] == d[1]
    assert public_decisions(d, key_values=True) == d and d[0]["key"] == ["a@b.c", 7]


def _sample_results(root: str, out: str, run_id: str):
    import datetime
    import decimal

    from engine.datasets import Split
    from engine.shuffle import MapOutput
    sample = pa.table({"k": pa.array([1, 5, None], pa.int64()), "t": pa.array(["a", "b", "c"])})
    heavy = MapOutput(f"{root}/shuffle/r0-map-00001-a0.arrow", 3, [[0], [], [1, 2]], [5, 0, 7], [50, 0, 70],
                      rows_in=12, rows_out=12,
                      heavy_keys=[(("é", decimal.Decimal("1.10"), datetime.date(2020, 1, 2), None), 2, 6),
                                  (("x", decimal.Decimal("2.00"), datetime.date(2021, 1, 1), 2**64 - 1), 0, 3)])
    sort = MapOutput(f"{root}/shuffle/r1-map-00000-a1.arrow", 1, [[0, 1]], [9], [90], rows_out=9,
                     bounds=[((1, "a"), (4, "b"), 5), ((5, "b"), (9, None), 4)], sample=sample)
    name = f"part-00002-{run_id}-a0-0badc0de.parquet"
    commit_msg = {"partition": 2, "attempt": 0, "run_id": run_id,
                  "files": [{"name": name, "tmp": f"{out}/_temporary/{run_id}/{name}", "rows": 3, "bytes": 99,
                             "crc32c": 12345, "upload": None}]}
    schema = pa.schema([("word", pa.string()), ("count", pa.int64())])
    return [
        {"shuffle": heavy, "schema": schema, "rows_in": 12, "rows_out": 12, "bytes_out": 120, "start": 1.5,
         "stop": 2.5, "worker": "tcp://127.0.0.1:1", "partition": 1, "attempt": 0, "input_bytes": 10, "spec": "ab"},
        {"shuffle": sort, "schema": None, "partition": 0, "attempt": 1, "spec": "cd"},
        {"next_input": Split(4, f"{root}/shuffle/r0-reduce-out-00004-a0.arrow", "ipc", 321), "schema": schema,
         "rows_out": 3, "partition": 4, "attempt": 0, "spec": "ef"},
        {"commit": commit_msg, "schema": schema, "rows_out": 3, "bytes_out": 99, "partition": 2, "attempt": 0,
         "spec": "gh"},
        {"commit": {"partition": 5, "attempt": None, "files": []}, "rows_out": 0, "bytes_out": 0, "schema": None,
         "spec": "ij"},
    ]


def test_journal_round_trips_every_result_kind(tmp_path):
    import fsspec

    from engine.journal import Journal
    run_id = "0123456789abcdef"
    out = str(tmp_path / "out")
    root = f"{out}/_temporary/{run_id}"
    j = Journal(fsspec.filesystem("file"), f"{root}/journal", run_id=run_id, out=out, shuffle_root=f"{root}/shuffle")
    results = _sample_results(root, out, run_id)
    for i, r in enumerate(results):
        j.record("stage", i, r)
    assert not list((tmp_path / "out").rglob("*.pkl"))
    loaded = j.load("stage")
    assert sorted(loaded) == list(range(len(results)))
    for i, r in enumerate(results):
        got = loaded[i]
        for k, v in r.items():
            if k == "schema" and v is not None:
                assert got[k].equals(v)
            elif k == "shuffle":
                assert got[k].heavy_keys == v.heavy_keys and got[k].bounds == v.bounds
                assert (got[k].sample is None) == (v.sample is None)
                if v.sample is not None:
                    assert got[k].sample.equals(v.sample)
                assert (got[k].path, got[k].batches, got[k].rows, got[k].nbytes, got[k].rows_out) == \
                    (v.path, v.batches, v.rows, v.nbytes, v.rows_out)
            else:
                assert got[k] == v, k


@pytest.mark.parametrize("damage", ["flip", "outside-shuffle", "traversal", "other-run-file", "staged-elsewhere",
                                    "other-partition", "nan", "pickle-named-json", "unknown-field"])
def test_journal_ignores_damaged_or_forged_entries(tmp_path, damage, caplog):
    import fsspec

    from engine.journal import Journal, canonical
    run_id = "0123456789abcdef"
    out = str(tmp_path / "out")
    root = f"{out}/_temporary/{run_id}"
    j = Journal(fsspec.filesystem("file"), f"{root}/journal", run_id=run_id, out=out, shuffle_root=f"{root}/shuffle")
    results = _sample_results(root, out, run_id)
    j.record("stage", 0, results[0])
    j.record("stage", 3, results[3])
    path0 = tmp_path / "out" / "_temporary" / run_id / "journal" / "stage" / "00000.json"
    path3 = path0.with_name("00003.json")

    def rewrite(path, change):
        import hashlib
        doc = json.loads(path.read_text())["doc"]
        change(doc)
        path.write_text(canonical({"doc": doc, "sha256": hashlib.sha256(canonical(doc).encode()).hexdigest()}))
    if damage == "flip":
        path0.write_text(path0.read_text().replace('"rows_in":12', '"rows_in":13'))
    elif damage == "outside-shuffle":
        rewrite(path0, lambda d: d["entry"]["shuffle"].update(path=str(tmp_path / "elsewhere.arrow")))
    elif damage == "traversal":
        rewrite(path0, lambda d: d["entry"]["shuffle"].update(path=f"{root}/shuffle/../../../../etc/passwd"))
    elif damage == "other-run-file":
        rewrite(path3, lambda d: d["entry"]["commit"]["files"][0].update(
            name="part-00002-fedcba9876543210-a0-0badc0de.parquet"))
    elif damage == "staged-elsewhere":
        rewrite(path3, lambda d: d["entry"]["commit"]["files"][0].update(tmp="/etc/part-00002.parquet"))
    elif damage == "other-partition":
        path3.rename(path3.with_name("00007.json"))
    elif damage == "nan":
        rewrite(path0, lambda d: d["entry"].update(start=1.0))
        path0.write_text(path0.read_text().replace('"start":1.0', '"start":NaN'))
    elif damage == "pickle-named-json":
        path0.write_bytes(pickle.dumps(_Planted(str(tmp_path / "marker"))))
    elif damage == "unknown-field":
        rewrite(path0, lambda d: d["entry"].update(__reduce__="os.system"))
    with caplog.at_level("WARNING", logger="engine"):
        loaded = j.load("stage")
    bad = 3 if damage in ("other-run-file", "staged-elsewhere", "other-partition") else 0
    assert bad not in loaded and "ignored" in caplog.text
    assert len(loaded) == 1
    assert not (tmp_path / "marker").exists()


def test_journal_of_an_s3_output_keeps_pending_uploads_only_at_their_final_key():
    import fsspec

    from engine.journal import Journal
    run_id = "0123456789abcdef"
    fs = fsspec.filesystem("memory")
    out = "/bucket/out"
    j = Journal(fs, f"{out}/_temporary/{run_id}/journal", run_id=run_id, out=out, shuffle_root=None, s3=True)
    name = f"part-00000-{run_id}-a0-0badc0de.parquet"
    good = {"partition": 0, "attempt": 0, "run_id": run_id,
            "files": [{"name": name, "tmp": f"{out}/{name}", "rows": 1, "bytes": 10, "crc32c": 1,
                       "upload": {"upload_id": "u-1", "parts": [{"PartNumber": 1, "ETag": '"e"'}]}}]}
    elsewhere = json.loads(json.dumps(good))
    elsewhere["files"][0]["tmp"] = f"/bucket/other/{name}"
    j.record("r0-reduce", 0, {"commit": good, "schema": None, "spec": "a"})
    j.record("r0-reduce", 1, {"commit": {**elsewhere, "partition": 1}, "schema": None, "spec": "b"})
    # a map output of a run whose shuffle directory is not known (a fresh local one per run): never reused
    from engine.shuffle import MapOutput
    j.record("r0-map", 0, {"shuffle": MapOutput("/tmp/x/r0-map.arrow", 1, [[0]], [1], [1]), "schema": None})
    loaded = j.load("r0-reduce")
    assert list(loaded) == [0] and loaded[0]["commit"] == good
    assert j.load("r0-map") == {}
