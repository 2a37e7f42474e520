"""A new user's first hour, as the README leads it: the Python snippet saved as a script with no
main guard, Ctrl-C on a terminal (a pseudo-terminal here), ``-q``, and a user error's traceback.

Each test runs the real thing in a subprocess: the script, the ``mapreduce`` CLI, on the embedded
cluster (``engine.local.max-bytes`` 0, so worker processes start even for the small sample), and
checks what the user sees and what is on disk against references computed here without the engine.
"""

from __future__ import annotations

import collections
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path(jobs.SAMPLE_DATA) / "text"
TIMEOUT = 180
DASK_NOISE = re.compile(r"distributed\.|Nanny|Traceback|CancelledError|lose already computed|Exception ignored")


def python_snippet() -> str:
    """The README's "In Python" code block, verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## In Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def reference_words() -> dict[str, int]:
    """The snippet's word count in plain Python: split on whitespace, case kept."""
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(TEXT.iterdir()):
        for line in path.read_text(encoding="utf-8").splitlines():
            counts.update(line.split())
    return dict(counts)


def committed(out: Path) -> dict[str, int]:
    doc = json.loads((out / "_SUCCESS").read_text())
    table = pa.concat_tables([pq.read_table(out / f["path"]) for f in doc["files"]])
    return dict(zip(table["word"].to_pylist(), table["count"].to_pylist()))


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    env.update(ENGINE_HISTORY=str(tmp / "history.sqlite"), PYTHONIOENCODING="utf-8",
               DASK_ENGINE__LOCAL__MAX_BYTES="0",            # the embedded cluster's worker processes
               DASK_ENGINE__LOG__DASK_FILE=str(tmp / "dask.log"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.update(extra)
    return env


def workspace(tmp: Path) -> Path:
    """A directory laid out as the README's snippet expects: ``jobs/data/text``."""
    (tmp / "jobs" / "data").mkdir(parents=True)
    (tmp / "jobs" / "data" / "text").symlink_to(TEXT, target_is_directory=True)
    return tmp


def gone(pids: list[int], within: float = 15.0) -> list[int]:
    """The pids still alive after ``within`` seconds."""
    deadline = time.time() + within
    alive = list(pids)
    while alive and time.time() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


CHILDREN = """
import os as _os, psutil as _psutil
print("CHILDREN", [p.pid for p in _psutil.Process(_os.getpid()).children(recursive=True)])
"""


def test_readme_snippet_runs_as_a_script_without_a_main_guard(tmp_path):
    """The README's snippet, saved as a file and run with `python`, starts the embedded cluster's
    workers and commits the right counts; nothing but its own prints reaches the terminal, and its
    worker processes end with it."""
    work = workspace(tmp_path)
    script = work / "wc.py"
    snippet = python_snippet()
    assert "__main__" not in snippet
    script.write_text(snippet + CHILDREN)
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env_for(tmp_path), capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]
    assert "ran on the embedded local cluster (2 worker process(es)" in proc.stdout \
        or "ran on the embedded local cluster (1 worker process(es)" in proc.stdout, proc.stdout
    assert committed(work / "out" / "wc") == reference_words()
    children = json.loads(proc.stdout.split("CHILDREN", 1)[1].strip().splitlines()[0])
    assert children, "the run started worker processes"
    assert gone(children) == []
    # dask's own lines went to the log file instead of the terminal
    log = (tmp_path / "dask.log").read_text()
    assert "Start worker at" in log or "Registered to" in log


SLOW_JOB = """
import multiprocessing, time
import pyarrow as pa, pyarrow.compute as pc
from engine import Job, agg

def words(t):
    if multiprocessing.parent_process() is not None:     # in a worker process: a long task
        time.sleep(60)
    return pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))})

job = Job("slow").map(words).reduce(by="word", aggs={"count": agg.count()})
"""

SLOW_SCRIPT = """
import engine
from slowjob import job
result = engine.run(job, {text!r}, {out!r})
print(result.report.summary())
"""


def on_a_terminal(argv: list[str], cwd: Path, env: dict[str, str], *, when: str, timeout: float = TIMEOUT,
                  term: bool = False):
    """Run ``argv`` on a pseudo-terminal, press Ctrl-C once ``when`` has appeared on it and a worker
    is busy; (exit status, what the terminal showed after the Ctrl-C, the worker pids)."""
    pid, fd = pty.fork()
    if pid == 0:       # the child: its own session, the pty as its controlling terminal
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    shown, after, sent, children = b"", b"", False, []
    deadline = time.time() + timeout
    status = None
    try:
        while time.time() < deadline:
            if not sent and when.encode() in shown:
                until = time.time() + 2.0                    # the map tasks are running (and sleeping)
                while time.time() < until:
                    if select.select([fd], [], [], 0.1)[0]:
                        shown += os.read(fd, 65536)
                children = [p.pid for p in psutil.Process(pid).children(recursive=True)]
                if term:
                    os.kill(pid, signal.SIGTERM)             # as cron, Airflow or a container stop does
                else:
                    os.write(fd, b"\x03")                    # Ctrl-C, as the terminal sends it
                sent = True
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                if sent:
                    after += data
                else:
                    shown += data
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
                break
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout}s: {shown.decode(errors='replace')}")
        if status is None:
            _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    assert sent, shown.decode(errors="replace")
    return code, after.decode(errors="replace").replace("\r\n", "\n").replace("^C", ""), children


@pytest.mark.parametrize("how", ["cli", "script", "script-sigterm"])
def test_ctrl_c_on_a_terminal_prints_one_line(tmp_path, how):
    """Ctrl-C while worker processes run the map: one line says what happened and what to do (no
    tracebacks of the driver or the workers, no dask warnings), nothing is committed, the workers end."""
    (tmp_path / "slowjob.py").write_text(SLOW_JOB)
    out = tmp_path / "out"
    env = env_for(tmp_path)
    if how == "cli":
        argv = [sys.executable, "-m", "engine", "run", str(tmp_path / "slowjob.py"), "--input", str(TEXT),
                "--output", str(out)]
        when = "stage 1/1: map"
    else:
        (tmp_path / "slow.py").write_text(SLOW_SCRIPT.format(text=str(TEXT), out=str(out)))
        argv = [sys.executable, str(tmp_path / "slow.py")]
        env["DASK_ENGINE__LOG__DASK_FILE"] = str(tmp_path / "dask.log")
        when = "r0-map"          # the progress bar on the terminal
    code, after, children = on_a_terminal(argv, tmp_path, env, when=when, term=how.endswith("sigterm"))
    lines = [ln for ln in after.splitlines() if ln.strip()]
    assert len(lines) == 1, after
    assert not DASK_NOISE.search(after), after
    if how == "cli":
        assert code == 130
        assert lines[0].startswith("interrupted; ") and "--resume" in lines[0]
    elif how == "script":     # as Python's own Ctrl-C: the process ends by SIGINT (a shell shows 130)
        assert code == -signal.SIGINT
        assert lines[0].startswith("Interrupted: run of job 'slow' interrupted") and "resume=True" in lines[0]
    else:                     # by SIGTERM (a shell shows 143)
        assert code == -signal.SIGTERM
        assert lines[0].startswith("Terminated: run of job 'slow' terminated by SIGTERM") and "resume=True" in lines[0]
    assert not (out / "_SUCCESS").exists()
    assert children and gone(children) == []


def test_quiet_run_prints_only_the_summary(tmp_path):
    """`-q` on a run whose first map attempt fails and is retried: stdout has the summary, stderr has
    nothing (no retry warning, no progress, no dask lines)."""
    job = tmp_path / "flaky.py"
    job.write_text(textwrap.dedent(f"""
        import multiprocessing, os
        import pyarrow as pa, pyarrow.compute as pc
        from engine import Job, agg

        MARK = {str(tmp_path / "failed-once")!r}

        def words(t):
            if multiprocessing.parent_process() is not None and not os.path.exists(MARK):
                open(MARK, "w").close()
                raise ConnectionError("the network blinked")
            return pa.table({{"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))}})

        job = Job("flaky").map(words).reduce(by="word", aggs={{"count": agg.count()}})
    """))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(job), "--input", str(TEXT), "--output",
                           str(out), "-q"], env=env_for(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "failed-once").exists()          # the retry did happen
    assert proc.stderr == ""
    assert "retries: 1 failure(s)" in proc.stdout or "1 retr" in proc.stdout, proc.stdout
    assert committed(out) == reference_words()


def test_a_user_error_names_the_real_file_line_and_source(tmp_path):
    """A map function that raises on the workers: the error names the job file (not
    ``<dynamic-code>``) and `--debug`'s traceback shows the file, the line and its text."""
    job = tmp_path / "badjob.py"
    job.write_text(textwrap.dedent("""
        import multiprocessing
        from engine import Job, agg


        def parse(t):
            if multiprocessing.parent_process() is not None:
                raise ValueError(f"cannot parse {t.num_rows} rows")
            return t


        job = Job("bad").map(parse).reduce(by="text", aggs={"count": agg.count()})
    """))
    line = next(i for i, text in enumerate(job.read_text().splitlines(), 1) if "raise ValueError" in text)
    proc = subprocess.run([sys.executable, "-m", "engine", "--debug", "run", str(job), "--input", str(TEXT),
                           "--output", str(tmp_path / "out")], env=env_for(tmp_path), capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "<dynamic-code>" not in proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and f"badjob.py:parse:{line}" in error[0], proc.stderr[-2000:]
    assert f'File "{job}", line {line}, in parse\n    raise ValueError(f"cannot parse {{t.num_rows}} rows")' \
        in proc.stderr, proc.stderr[-3000:]


def test_json_stdout_is_one_document_even_when_the_job_prints(tmp_path):
    """`run --json` for a scheduler: the job's own print() calls (in the driver's sample check, in
    tasks) go to stderr, so stdout parses as one JSON document."""
    job = tmp_path / "printy.py"
    job.write_text(textwrap.dedent("""
        import pyarrow as pa, pyarrow.compute as pc
        from engine import Job, agg

        def words(t):
            print(f"debug: got {t.num_rows} rows")
            return pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))})

        job = Job("printy").map(words).reduce(by="word", aggs={"count": agg.count()})
    """))
    env = env_for(tmp_path)
    env.pop("DASK_ENGINE__LOCAL__MAX_BYTES")          # in the driver: prints land in this very process
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(job), "--input", str(TEXT), "--output",
                           str(tmp_path / "out"), "--json"], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "committed" and doc["job"] == "printy"
    assert "debug: got" in proc.stderr


def test_explain_and_verify_say_what_a_path_is_not(tmp_path):
    """`explain` of a directory no run committed, `verify` of a file: a one-line error naming it."""
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "_temporary").mkdir()
    env = env_for(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "engine", "explain", "half"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1 and "no committed output" in proc.stderr and "module-level" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "engine", "verify", str(TEXT / "part-0.txt")], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "is a file, not an output directory" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr


LOST_WORKERS = """
import os, signal, sys, time, multiprocessing
import pyarrow as pa, pyarrow.compute as pc
import engine
from engine import Job, agg

def words(t):
    if multiprocessing.parent_process() is not None and os.environ.get("KILL_ALL"):
        os.kill(os.getppid(), signal.SIGKILL)        # the worker's nanny: nothing restarts this worker
        os._exit(1)
    return pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))})

job = Job("lost").map(words).reduce(by="word", aggs={"count": agg.count()})
try:
    engine.run(job, sys.argv[1], sys.argv[2], progress=False)
    print("COMMITTED")
except engine.StageFailedError as exc:
    print("FAILED", str(exc))
os.environ.pop("KILL_ALL")
print("AGAIN", engine.run(job, sys.argv[1], sys.argv[2], progress=False).rows)
"""


def test_a_run_whose_workers_all_died_fails_and_the_next_run_gets_a_new_cluster(tmp_path):
    """Every embedded worker and its nanny killed mid-run: the run fails (the tasks wait no longer than
    engine.cluster.no-workers-timeout) instead of waiting forever, and the next run in the same process
    starts a fresh cluster and commits."""
    script = tmp_path / "lost.py"
    script.write_text(LOST_WORKERS)
    out = tmp_path / "out"
    env = env_for(tmp_path, KILL_ALL="1", DASK_ENGINE__CLUSTER__NO_WORKERS_TIMEOUT="3s")
    proc = subprocess.run([sys.executable, str(script), str(TEXT), str(out)], env=env, capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("FAILED") and "without any running workers" in lines[0], proc.stdout
    assert lines[1] == f"AGAIN {len(reference_words())}", proc.stdout
    assert committed(out) == reference_words()
    assert "lost all its workers; starting a new one" in proc.stderr
    assert not DASK_NOISE.search(proc.stderr), proc.stderr[-3000:]
