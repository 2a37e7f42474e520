"""The ``mapreduce`` command as pipelines call it: ``FILE.py:NAME`` and ``module:NAME`` job specs with
``--param``, glob inputs, ``--json`` documents, ``--wait-lock``, and summaries and hints that hold.

Every case runs the real command in a subprocess (``python -m engine``) on small Parquet files; the
expected answers are computed here with pyarrow alone, and committed outputs are read back with
pyarrow through the ``_SUCCESS`` manifest. Inputs are small, so runs stay in the driver process.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import AWS_ENV  # the moto S3 server fixture `s3` comes from conftest (one server per session)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120

JOBS = '''\
"""Two jobs and a job function, and no module-level `job`."""
import pyarrow.compute as pc
from engine import Job, agg

by_k = Job("by-k").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})
by_g = Job("by-g").reduce(by="g", aggs={"n": agg.count()})


def above(threshold: int, column: str = "v") -> Job:
    """Rows whose `column` is above `threshold`, counted per k."""
    return (Job(f"above-{threshold}")
            .map(lambda t: t.filter(pc.greater(t[column], threshold)))
            .reduce(by="k", aggs={"n": agg.count()}))
'''


# ---------------------------------------------------------------------------------------------
# Helpers


def cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def committed(out: Path) -> pa.Table:
    """The committed rows, read with pyarrow alone through the manifest's file list."""
    manifest = json.loads((out / "_SUCCESS").read_text())
    return pa.concat_tables([pq.read_table(out / f["path"]) for f in manifest["files"]])


def as_dict(t: pa.Table, key: str, *cols: str) -> dict:
    rows = t.to_pylist()
    return {r[key]: tuple(r[c] for c in cols) for r in rows}


def reference(tables: list[pa.Table], key: str, value: str | None = None, above: int | None = None) -> dict:
    t = pa.concat_tables(tables)
    if above is not None:
        t = t.filter(pa.compute.greater(t["v"], above))
    aggs = [(value or key, "count")] + ([(value, "sum")] if value else [])
    g = t.group_by(key).aggregate(aggs)
    names = [f"{value or key}_count"] + ([f"{value}_sum"] if value else [])
    return as_dict(g, key, *names)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("DASK_SCHEDULER_ADDRESS", None)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["ENGINE_HISTORY"] = str(tmp_path / "history.db")
    e["PYTHONIOENCODING"] = "utf-8"
    return e


@pytest.fixture
def data(tmp_path) -> list[pa.Table]:
    """Three Parquet files under data/ (and an engine-style `_`-file a glob must skip)."""
    rng = np.random.default_rng(15)
    (tmp_path / "data").mkdir()
    tables = []
    for i in range(3):
        t = pa.table({"k": rng.integers(0, 40, 600), "g": rng.integers(0, 5, 600), "v": rng.integers(0, 100, 600)})
        pq.write_table(t, tmp_path / "data" / f"part-{i}.parquet")
        tables.append(t)
    pq.write_table(tables[0], tmp_path / "data" / "_stale.parquet")
    (tmp_path / "myjobs.py").write_text(JOBS)
    (tmp_path / "bykey.py").write_text("from myjobs import by_k as job\n")      # a plain job file
    return tables


# ---------------------------------------------------------------------------------------------
# FILE.py:NAME, module:NAME, --param


def test_a_file_of_several_jobs_lists_them_and_each_runs_by_name(tmp_path, env, data):
    proc = cli("run", "myjobs.py", "-i", "data", "-o", "out0", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "by_k" in proc.stderr and "by_g" in proc.stderr and "above(threshold, column)" in proc.stderr, proc.stderr
    assert "myjobs.py:by_k" in proc.stderr, proc.stderr

    proc = cli("run", "myjobs.py:by_g", "-i", "data", "-o", "out1", "-q", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert as_dict(committed(tmp_path / "out1"), "g", "n") == reference(data, "g")


def test_a_job_function_takes_params_and_errors_name_the_parameter(tmp_path, env, data):
    # module:NAME, found from the working directory as `python -m` would; JSON values (40) and text (v)
    proc = cli("run", "myjobs:above", "--param", "threshold=40", "--param", "column=v", "-i", "data", "-o", "out",
               "-q", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert as_dict(committed(tmp_path / "out"), "k", "n") == reference(data, "k", above=40)

    proc = cli("run", "myjobs.py:above", "--param", "threshold=40", "--param", "colour=v", "-i", "data", "-o",
               "bad", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "colour" in proc.stderr and "threshold, column" in proc.stderr, proc.stderr
    proc = cli("run", "myjobs.py:above", "-i", "data", "-o", "bad", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "--param threshold=VALUE" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------
# Glob inputs


def test_glob_inputs_expand_to_the_matching_files(tmp_path, env, data):
    proc = cli("run", "bykey.py", "-i", "data/part-[01].parquet", "-o", "out", "-q", "--json",
               cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["input_files"] == 2
    assert as_dict(committed(tmp_path / "out"), "k", "n", "s") == reference(data[:2], "k", "v")

    proc = cli("run", "bykey.py", "-i", "data/*.csv", "-o", "none", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "data/*.csv" in proc.stderr and "matches no data files" in proc.stderr, \
        proc.stderr


# ---------------------------------------------------------------------------------------------
# --json, verify of a missing path


def test_verify_of_a_missing_path_says_so_and_json_is_one_document(tmp_path, env, data):
    proc = cli("verify", "no/such/output", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "does not exist" in proc.stderr and "INCOMPLETE" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "missing"

    # a command that fails before it has anything to show still prints one document
    proc = cli("explain", "myjobs.py:nothing", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and json.loads(proc.stdout)["error_type"] == "JobDefinitionError", proc.stdout
    assert "by_k" in json.loads(proc.stdout)["error"]


@pytest.mark.slow
def test_json_documents_of_run_verify_history_explain(tmp_path, env, data):
    # a directory pattern stands for the files under it; `_` names are skipped as in a directory input
    proc = cli("run", "bykey.py", "-i", "da*/", "-o", "out", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)               # the whole of stdout is one document
    want = reference(data, "k", "v")
    assert doc["status"] == "committed" and doc["output_rows"] == len(want) and doc["skipped"] is False
    assert as_dict(committed(tmp_path / "out"), "k", "n", "s") == want

    proc = cli("verify", "out", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["verdict"] == "intact"
    assert json.loads(proc.stdout)["rows"] == len(want)

    proc = cli("history", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0 and [r["run_id"] for r in json.loads(proc.stdout)["runs"]] == [doc["run_id"]]

    # the same spec syntax in explain (a job of the repository's own groupby file, no data needed)
    proc = cli("explain", str(ROOT / "jobs" / "groupby.py") + ":q3", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job"] == "groupby-q3"


# ---------------------------------------------------------------------------------------------
# Hints and summary counts


def test_the_noop_hint_gives_a_command_that_recomputes(tmp_path, env, data):
    args = ["run", "bykey.py", "-i", "data", "-o", "out", "-q"]
    first = cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    again = cli(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout
    m = re.search(r"(mapreduce run .*)$", again.stdout.strip())
    assert m, f"the hint names no command: {again.stdout}"
    before = json.loads((tmp_path / "out" / "_SUCCESS").read_text())["run_id"]
    hinted = shlex.split(m.group(1))
    proc = cli(*hinted[1:], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["run_id"] != before   # recomputed
    assert as_dict(committed(tmp_path / "out"), "k", "n", "s") == reference(data, "k", "v")


def test_summary_after_append_says_what_this_run_wrote_and_what_the_output_holds(tmp_path, env, data):
    first = cli("run", "bykey.py", "-i", "data/part-0.parquet", "-o", "out", "-q", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    proc = cli("run", "bykey.py", "-i", "data/part-1.parquet", "-o", "out", "-q", "--mode", "append",
               cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    mine, before = len(reference(data[1:2], "k")), len(reference(data[:1], "k"))
    assert committed(tmp_path / "out").num_rows == mine + before
    assert f"written by this run: 1 files, {mine:,} rows" in proc.stdout, proc.stdout
    assert f"the output now holds: 2 files, {mine + before:,} rows" in proc.stdout, proc.stdout

    # the same append again has nothing to do: it wrote nothing, and says what the output holds
    proc = cli("run", "bykey.py", "-i", "data/part-1.parquet", "-o", "out", "--mode", "append", "--json",
               cwd=tmp_path, env=env)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["skipped"] is True
    assert doc["output_rows"] == 0 and doc["output_total_rows"] == mine + before, doc


RESUMABLE = '''\
import os
import pyarrow.compute as pc
from engine import Job


def total(t):
    """Sum of v per k; fails on key 7 while the file FAIL exists (not on the driver's sample check)."""
    if os.path.exists(os.environ["FAIL_MARK"]) and (pc.sum(pc.equal(t["k"], 7)).as_py() or 0) > 10:
        raise ValueError("key 7 is not ready")
    g = t.group_by("k").aggregate([("v", "sum")])
    return g.select(["k", "v_sum"]).rename_columns(["k", "s"])


job = Job("resumable").reduce(total, by="k")
'''


@pytest.mark.slow
def test_summary_after_resume_counts_the_resumed_tasks_rows_and_says_so(tmp_path, env, data):
    (tmp_path / "resumable.py").write_text(RESUMABLE)
    mark = tmp_path / "FAIL"
    mark.touch()
    env = {**env, "FAIL_MARK": str(mark)}
    args = ["run", "resumable.py", "-i", "data", "-o", "out", "-q", "--partition-size", "1KiB"]
    proc = cli(*args, cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "key 7 is not ready" in proc.stderr, proc.stderr
    mark.unlink()
    proc = cli(*args, "--resume", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    want = reference(data, "k", "v")
    got = committed(tmp_path / "out")
    assert {r["k"]: r["s"] for r in got.to_pylist()} == {k: v[1] for k, v in want.items()}
    m = re.search(r"written by this run: (\d+) files, ([\d,]+) rows.*including (\d+) task\(s\) resumed", proc.stdout)
    assert m, proc.stdout
    assert int(m.group(2).replace(",", "")) == len(want) and int(m.group(1)) == len(
        json.loads((tmp_path / "out" / "_SUCCESS").read_text())["files"])


# ---------------------------------------------------------------------------------------------
# --wait-lock

SLOW = '''\
import time
from engine import Job, agg


def slow(t):
    if len(t) > 100:            # not the driver's check on a sample of the input
        time.sleep(5)
    return t


job = Job("slow").map(slow).reduce(by="k", aggs={"n": agg.count()})
'''


def _lock_held(path: Path) -> bool:
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.slow
def test_wait_lock_waits_for_the_run_holding_the_output(tmp_path, env, data):
    (tmp_path / "slow.py").write_text(SLOW)
    args = ["run", "slow.py", "-i", "data", "-o", "out"]
    holder = subprocess.Popen([sys.executable, "-m", "engine", *args, "-q"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not _lock_held(tmp_path / "out" / "_lock") and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert holder.poll() is None, holder.communicate()

        waiting = subprocess.Popen([sys.executable, "-m", "engine", *args, "--wait-lock", "2m", "--json"],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL)
        at_once = cli(*args, cwd=tmp_path, env=env)
        assert at_once.returncode == 1 and "another run is writing" in at_once.stderr, at_once.stderr
        assert "--wait-lock" in at_once.stderr, at_once.stderr

        out, err = holder.communicate(timeout=TIMEOUT)
        assert holder.returncode == 0, err
        waited = subprocess.CompletedProcess(waiting.args, 0, *waiting.communicate(timeout=TIMEOUT))
        waited.returncode = waiting.returncode
    finally:
        for p in (holder, locals().get("waiting")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    # it logged who held the lock, then found the other run's commit: the same job on the same input
    assert waited.returncode == 0, waited.stderr
    assert re.search(r"held by pid \d+ .*waiting for it to end", waited.stderr), waited.stderr
    doc = json.loads(waited.stdout)
    assert doc["skipped"] is True and doc["status"] == "skipped"
    assert as_dict(committed(tmp_path / "out"), "k", "n") == reference(data, "k")


@pytest.mark.slow
@pytest.mark.s3
def test_glob_of_s3_directories(tmp_path, env, data, s3):
    for day, t in enumerate(data, start=1):
        with s3["fs"].open(f"{s3['bucket']}/in/day={day}/part-0.parquet", "wb") as f:
            pq.write_table(t, f)
    env = {**env, **AWS_ENV, "FSSPEC_S3_ENDPOINT_URL": s3["endpoint_url"]}
    proc = cli("run", "bykey.py", "-i", s3["url"]("in", "day=[12]") + "/", "-o", "out", "-q", "--json",
               cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["input_files"] == 2
    assert as_dict(committed(tmp_path / "out"), "k", "n", "s") == reference(data[:2], "k", "v")

    proc = cli("run", "bykey.py", "-i", s3["url"]("in", "day=9*") + "/", "-o", "none", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "day=9*" in proc.stderr and "matches no data files" in proc.stderr, proc.stderr
