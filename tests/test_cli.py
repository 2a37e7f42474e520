"""The ``mapreduce`` command, run as a real subprocess (the installed script and ``python -m engine``).

Outcomes are checked against references computed here without the engine: word counts with plain
Python over the sample text, committed files read with pyarrow through the ``_SUCCESS`` JSON.
Every ``run`` starts an embedded cluster (a few seconds), so the module commits once and works on
copies of that output; ``--workers 1`` keeps the clusters small.
"""

from __future__ import annotations

import collections
import json
import os
import re
import select
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
import jobs

ROOT = Path(__file__).resolve().parents[1]
WORDCOUNT = ROOT / "jobs" / "wordcount.py"
TEXT = Path(jobs.SAMPLE_DATA) / "text"
TIMEOUT = 120


# ---------------------------------------------------------------------------------------------
# Helpers


def reference_counts() -> dict[str, int]:
    """Word counts of the sample text in plain Python: lower-cased, split on whitespace."""
    counts: collections.Counter[str] = collections.Counter()
    files = sorted(TEXT.iterdir())
    assert len(files) >= 2, "the sample text should span several files (several map tasks)"
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            counts.update(line.lower().split())
    return dict(counts)


def mapreduce_script() -> str:
    """The console script that ``pip install`` put next to this interpreter."""
    name = "mapreduce.exe" if os.name == "nt" else "mapreduce"
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    found = shutil.which("mapreduce")
    assert found, "the `mapreduce` script is not installed; run `pip install -e .`"
    return found


def cli_env(history: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # always the embedded cluster
    env["ENGINE_HISTORY"] = str(history)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def cli(*args: str, env: dict[str, str], cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    cmd = [mapreduce_script()] if script else [sys.executable, "-m", "engine"]
    return subprocess.run([*cmd, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def run_args(out: Path, *extra: str) -> list[str]:
    return ["run", str(WORDCOUNT), "--input", str(TEXT), "--output", str(out), "--workers", "1", *extra]


def manifest(out: Path) -> dict:
    return json.loads((out / "_SUCCESS").read_text())


def committed_counts(out: Path) -> dict[str, int]:
    """Read exactly the files the manifest lists, with pyarrow alone."""
    doc = manifest(out)
    tables = [pq.read_table(out / entry["path"]) for entry in doc["files"]]
    table = pa.concat_tables(tables)
    assert table.column_names == ["word", "count"]
    words, counts = table["word"].to_pylist(), table["count"].to_pylist()
    assert len(set(words)) == len(words), "each word must appear in exactly one output row"
    assert sum(entry["rows"] for entry in doc["files"]) == table.num_rows
    return dict(zip(words, counts))


def data_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.startswith(("_", "."))}


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def one_paragraph_error(stderr: str) -> str:
    """The error paragraph of a failed command: exactly one line starting with 'error:', no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------
# One committed run, shared (read-only) by the tests below


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def history(workspace) -> Path:
    return workspace / "history.sqlite"


@pytest.fixture(scope="module")
def env(history) -> dict[str, str]:
    return cli_env(history)


@pytest.fixture(scope="module")
def committed(workspace, env):
    """The first run, through the installed ``mapreduce`` script, with stderr a pipe (not a terminal)."""
    out = workspace / "wordcount"
    report = workspace / "report.html"
    started = time.monotonic()
    proc = cli(*run_args(out, "--report", str(report)), env=env, cwd=workspace, script=True)
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "proc": proc, "report": report, "seconds": time.monotonic() - started}


@pytest.fixture
def copy_of(committed, tmp_path):
    """A private copy of the committed output, for tests that change it."""
    def make(name: str = "copy") -> Path:
        dest = tmp_path / name
        shutil.copytree(committed["out"], dest)
        return dest
    return make


# ---------------------------------------------------------------------------------------------
# run


def test_run_commits_the_reference_counts(committed):
    out, proc = committed["out"], committed["proc"]
    expected = reference_counts()
    assert expected["the"] == 9  # the sample data, as the docs describe it
    assert committed_counts(out) == expected
    doc = manifest(out)
    assert data_files(out) == {entry["path"] for entry in doc["files"]}
    assert doc["job"] == "wordcount"
    assert f"committed {len(expected)} rows" in proc.stdout
    assert proc.stdout.startswith("job 'wordcount' run ")
    assert committed["report"].is_file() and "<html" in committed["report"].read_text()[:2000].lower()
    assert f"report: {committed['report']}" in proc.stdout


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(committed):
    stderr = committed["proc"].stderr
    assert "\r" not in stderr
    done = re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+): (\d+)/(\d+) tasks, [\d,]+ rows, .* elapsed, (?:ETA \S+|done)$",
                      stderr, flags=re.M)
    finished = {stage: int(total) for stage, d, total in done if d == total}
    assert any("map" in s for s in finished) and any("reduce" in s for s in finished), stderr
    map_tasks = next(total for stage, total in finished.items() if "map" in stage)
    assert map_tasks == len(list(TEXT.iterdir()))  # one map task per input file
    assert "Traceback" not in stderr
    # distributed's start-up chatter stays out of the way
    assert "Scheduler at" not in stderr and "Start Nanny" not in stderr


def test_rerun_says_nothing_to_do(committed, copy_of, env, workspace):
    out = copy_of()
    before = (out / "_SUCCESS").read_bytes()
    started = time.monotonic()
    proc = cli(*run_args(out), env=env, cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert "--force" in proc.stdout and "force=True" not in proc.stdout + proc.stderr
    assert (out / "_SUCCESS").read_bytes() == before
    assert time.monotonic() - started < committed["seconds"] + 30


def test_force_with_mode_error_refuses_committed_output(copy_of, env, workspace):
    """--force only disables the no-op shortcut; --mode error (the default) still refuses committed output."""
    out = copy_of()
    before = (out / "_SUCCESS").read_bytes()
    files = data_files(out)
    for extra in (["--mode", "error", "--force"], ["--force"]):
        proc = cli(*run_args(out, *extra), env=env, cwd=workspace)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        message = one_paragraph_error(proc.stderr)
        assert "OutputExistsError" in message and str(out) in message
        assert "--mode overwrite" in message and "mode='overwrite'" not in message
        assert (out / "_SUCCESS").read_bytes() == before and data_files(out) == files


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_force_overwrite_recomputes_with_a_progress_bar_on_a_terminal(copy_of, env, workspace):
    import pty

    out = copy_of()
    old = manifest(out)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "engine", *run_args(out, "--mode", "overwrite", "--force")],
                                env=env, cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=slave)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.communicate(timeout=TIMEOUT)[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal
    assert re.search(r"\[#{24}\] 2/2 tasks, [\d,]+ rows, .*elapsed, done", terminal), terminal  # the map's bar
    assert "\x1b[2K" in terminal and not re.search(r"^\d{4}-\d\d-\d\d ", terminal, flags=re.M)
    new = manifest(out)
    assert new["run_id"] != old["run_id"] and new["generation"] == old["generation"] + 1
    assert committed_counts(out) == reference_counts()
    assert data_files(out) == {entry["path"] for entry in new["files"]}  # the old generation's files are gone
    assert "committed" in stdout


FRAGILE_JOB = """
import pyarrow as pa
import pyarrow.compute as pc

from engine import Job, agg

BAD = {bad!r}


def words(t):
    if any(BAD in line.split() for line in t["text"].to_pylist()):
        raise ValueError(f"cannot handle the word {{BAD!r}}")
    return pa.table({{"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))}})


job = Job("fragile").map(words).reduce(by="word", aggs={{"n": agg.count()}})
"""


def test_a_failing_task_is_reported_in_one_paragraph(tmp_path, env):
    """A map that fails on the workers (not on the driver's sample): retried, then one paragraph, no traceback."""
    files = sorted(TEXT.iterdir())
    first = set(files[0].read_text().split())
    bad_file, bad = next((f, w) for f in files[1:] for w in f.read_text().split() if w not in first)
    job = tmp_path / "fragile.py"
    job.write_text(FRAGILE_JOB.format(bad=bad))
    out = tmp_path / "out"
    proc = cli("run", job, "--input", TEXT, "--output", out, "--workers", "1", env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = one_paragraph_error(proc.stderr)
    assert "StageFailedError" in message and "map stage" in message
    assert bad_file.name in message and f"cannot handle the word {bad!r}" in message
    assert "Compute Failed" not in proc.stderr  # the workers' own tracebacks stay out of the way
    assert not (out / "_SUCCESS").exists()


# ---------------------------------------------------------------------------------------------
# verify


def test_verify_intact(committed, env, workspace):
    proc = cli("verify", committed["out"], env=env, cwd=workspace, script=True)
    assert proc.returncode == 0, proc.stderr
    assert "intact" in proc.stdout and f"{len(reference_counts())} rows" in proc.stdout


def test_verify_names_a_data_file_with_a_flipped_byte(copy_of, env, workspace):
    out = copy_of()
    name = manifest(out)["files"][0]["path"]
    flip_byte(out / name)
    proc = cli("verify", out, env=env, cwd=workspace)
    assert proc.returncode == 1, proc.stdout
    assert name in proc.stderr and "CORRUPT" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "intact" not in proc.stdout


def test_verify_names_a_manifest_with_a_flipped_byte(copy_of, env, workspace):
    out = copy_of()
    flip_byte(out / "_SUCCESS")
    proc = cli("verify", out, env=env, cwd=workspace)
    assert proc.returncode == 1, proc.stdout
    assert str(out / "_SUCCESS") in proc.stderr and "CORRUPT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_an_output_that_was_never_committed(tmp_path, env):
    out = tmp_path / "never"
    out.mkdir()                                   # a directory a run never committed to
    proc = cli("verify", out, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "_SUCCESS" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("verify", tmp_path / "nowhere", env=env, cwd=tmp_path)      # no such path at all
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "INCOMPLETE" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# explain, errors, history


def test_explain_prints_the_plan(env, workspace):
    proc = cli("explain", WORDCOUNT, "--input", TEXT, env=env, cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Job 'wordcount': 1 round" in text
    assert "aggregate by ['word']" in text
    assert "2 map tasks" in text and "text file(s)" in text
    assert "dask graph" in text
    # a module name works as well as a file, and no input is needed for the plan alone
    proc = cli("explain", "jobs.wordcount", env=env, cwd=workspace, script=True)
    assert proc.returncode == 0, proc.stderr
    assert "Job 'wordcount'" in proc.stdout


def test_explain_a_committed_output_shows_the_run_time_decisions(tmp_path, env):
    import numpy as np
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):     # key 0 holds 60% of the rows: more than one sort partition's share
        k = np.where(rng.random(30_000) < 0.6, 0, rng.integers(1, 5000, 30_000))
        pq.write_table(pa.table({"k": k, "v": rng.random(30_000)}), tmp_path / "in" / f"p{i}.parquet")
    job = tmp_path / "hotsort.py"
    job.write_text("from engine import Job\njob = Job('hotsort').sort(by='k')\n")
    out = tmp_path / "out"
    proc = cli("run", job, "--input", tmp_path / "in", "--output", out, "--workers", "1",
               "--partition-size", "64KiB", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = cli("explain", out, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"committed output {out}: job 'hotsort'" in text and "60,000 rows" in text
    assert re.search(r"stage r0-map: \d+ task", text) and re.search(r"stage r0-reduce: \d+ task", text)
    # the manifest keeps hot keys as short hashes (data values stay out of metadata unless asked for)
    from engine.redact import key_digest
    assert re.search(rf"skew split: hot sort key {key_digest((0,))} .* spread over \d+ adjacent partitions", text), text
    assert "(0,)" not in text
    assert "skew range:" in text and "estimated rows per partition" in text


def test_job_file_without_job_fails_with_one_paragraph(tmp_path, env):
    bad = tmp_path / "nojob.py"
    bad.write_text("import pyarrow as pa\n\nwork = 42\n")
    proc = cli("run", bad, "--input", TEXT, "--output", tmp_path / "out", env=env, cwd=tmp_path)
    assert proc.returncode != 0
    message = one_paragraph_error(proc.stderr)
    assert "JobDefinitionError" in message and "`job" in message and "nojob.py" in message
    assert not (tmp_path / "out").exists()

    broken = tmp_path / "broken.py"
    broken.write_text("import pyarrow as pa\n\nraise RuntimeError('no database configured')\n")
    proc = cli("explain", broken, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    message = one_paragraph_error(proc.stderr)
    assert "broken.py" in message and "line 3" in message and "no database configured" in message

    proc = cli("explain", tmp_path / "missing.py", env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "missing.py" in one_paragraph_error(proc.stderr)


def test_bad_input_path_names_the_path(tmp_path, env):
    missing = tmp_path / "no-such-input"
    proc = cli(*run_args(tmp_path / "out")[:2], "--input", missing, "--output", tmp_path / "out", env=env,
               cwd=tmp_path)
    assert proc.returncode != 0
    message = one_paragraph_error(proc.stderr)
    assert str(missing) in message
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_usage_errors_exit_2(tmp_path, env):
    proc = cli("run", WORDCOUNT, env=env, cwd=tmp_path)          # no --input/--output
    assert proc.returncode == 2 and "--input" in proc.stderr
    proc = cli(*run_args(tmp_path / "out")[:6], "--workers", "0", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "--workers" in proc.stderr


def test_history_lists_the_runs(committed, env, workspace, tmp_path):
    proc = cli("history", env=env, cwd=workspace, script=True)
    assert proc.returncode == 0, proc.stderr
    run_id = manifest(committed["out"])["run_id"]
    runs = [line for line in proc.stdout.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    lines = [line for line in runs if run_id[:12] in line and " committed " in line]
    assert len(lines) == 1, proc.stdout          # skipped reruns are listed too, as "skipped"
    assert "wordcount" in lines[0] and "committed" in lines[0] and str(committed["out"]) in lines[0]
    assert f" {len(reference_counts())} " in lines[0]
    assert re.search(r"^wordcount\s+\(\d+ runs?: ", proc.stdout, flags=re.M)          # the SLIs per job
    assert re.search(r"^\s+M1\s+success rate\s+\d", proc.stdout, flags=re.M)

    proc = cli("history", "--job", "no-such-job", env=env, cwd=workspace)
    assert proc.returncode == 0 and "no runs recorded" in proc.stdout
    proc = cli("history", env=cli_env(tmp_path / "empty.sqlite"), cwd=tmp_path)
    assert proc.returncode == 0 and "no runs recorded" in proc.stdout


def test_sigterm_unwinds_the_run_and_a_rerun_finishes(tmp_path, env):
    """A scheduler's SIGTERM (cron, Airflow, a container stop) mid-run: exit 143 with a paragraph, nothing
    committed, the lock released and the fence closed, the run in the history; the same command then
    commits the right answer."""
    import signal
    import sqlite3
    rng = np.random.default_rng(3)
    (tmp_path / "in").mkdir()
    tables = []
    for i in range(4):
        t = pa.table({"k": rng.integers(0, 50, 20_000), "v": rng.integers(0, 100, 20_000)})
        pq.write_table(t, tmp_path / "in" / f"p{i}.parquet")
        tables.append(t)
    started = tmp_path / "map-started"
    job = tmp_path / "slowjob.py"
    job.write_text(
        "import pathlib, time\nfrom engine import Job, agg\n"
        f"STARTED = pathlib.Path({str(started)!r})\n"
        "def slow(t):\n"
        "    try:\n        from distributed import get_worker\n        get_worker()\n"
        "    except ValueError:\n        return t              # the driver's check of the map on a sample\n"
        "    STARTED.touch()\n    time.sleep(1.5)\n    return t\n"
        "job = Job('slowjob').map(slow).reduce(by='k', aggs={'n': agg.count(), 's': agg.sum('v')})\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "run", str(job), "--input", str(tmp_path / "in"), "--output", str(out),
           "--workers", "1"]
    env = {**env, "DASK_ENGINE__LOCAL__MAX_BYTES": "0"}     # on a worker process (the map asks get_worker)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "rerun the same command" in stderr, stderr
    assert not (out / "_SUCCESS").exists()
    leftovers = list((out / "_temporary").glob("*/_fence")) if (out / "_temporary").exists() else []
    assert leftovers == [], f"the terminated run left its fence open: {leftovers}"
    with sqlite3.connect(env["ENGINE_HISTORY"]) as db:
        rows = db.execute("SELECT status, message FROM runs WHERE job = 'slowjob'").fetchall()
    assert rows and rows[-1][0] == "interrupted" and "SIGTERM" in rows[-1][1], rows

    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    got = {r["k"]: (r["n"], r["s"]) for r in engine.read(str(out)).to_pylist()}
    whole = pa.concat_tables(tables).group_by("k").aggregate([("v", "count"), ("v", "sum")])
    want = {r["k"]: (r["v_count"], r["v_sum"]) for r in whole.to_pylist()}
    assert got == want
