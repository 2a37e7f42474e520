"""Small inputs run in the driver process; a rerun with nothing to do decides without dask.

Promises checked here:

* a run given no cluster whose input is at most ``engine.local.max-bytes`` runs on the driver's
  threads (the report says so) and commits the same answer as the embedded process cluster, which a
  run above the threshold, one given ``cluster=`` and one under ``DASK_SCHEDULER_ADDRESS`` still get;
* the command line's first run of the README word count imports neither dask nor distributed, and its
  no-op rerun imports neither them nor pandas (checked in fresh processes);
* the README's Python example works from a plain script without ``if __name__ == "__main__":``
  (spawned worker processes used to import the script again);
* ``engine.config`` reads its keys without dask exactly as dask would (defaults, ``dask.config.set``,
  ``DASK_ENGINE__*`` variables), and parses sizes as dask does.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import textwrap

import dask.config
import pytest

import engine
from engine import config
from engine.cluster import get_client, local_max_bytes
from jobs import SAMPLE_DATA
from jobs.wordcount import job as wordcount

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(SAMPLE_DATA, "text")
TIMEOUT = 180


def reference(src: str) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), encoding="utf-8") as f:
            for line in f:
                counts.update(line.lower().split())
    return dict(counts)


def counts(out: str) -> dict[str, int]:
    t = engine.read(out)
    return dict(zip(t["word"].to_pylist(), t["count"].to_pylist()))


def input_bytes(src: str) -> int:
    return sum(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src))


def env_for_subprocess(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "PYTHONPATH")}
    env["PYTHONPATH"] = REPO
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# Where a run goes


def test_small_run_is_in_the_driver_and_agrees_with_the_process_cluster(tmp_path):
    expected = reference(TEXT)
    size = input_bytes(TEXT)
    assert size <= local_max_bytes()          # the bundled sample is "small" by default

    local = wordcount.run(TEXT, str(tmp_path / "local"), partition_size="256B")
    assert local.report.cluster["local"] is True
    assert "in the driver process" in local.report.cluster["where"]
    assert "ran in the driver process" in local.report.summary()
    assert local.report.cluster["speculation"].startswith("off")
    assert local.report.speculation == [] and local.report.zombies == []
    assert {t.worker.split("/")[0] for t in local.report.tasks} == {"driver"}
    assert max(s.tasks for s in local.report.stages) >= 2          # several tasks, on the pool's threads
    assert counts(str(tmp_path / "local")) == expected
    assert engine.verify(str(tmp_path / "local")).files == local.report.output_files

    # One byte under the input: above the threshold, the embedded process cluster (the same default
    # a process that sets nothing gets for big inputs).
    with dask.config.set({"engine.local.max-bytes": size - 1}):
        big = wordcount.run(TEXT, str(tmp_path / "cluster"), partition_size="256B")
    assert big.report.cluster["local"] is False and big.report.cluster["embedded"] is True
    assert "worker process" in big.report.cluster["where"]
    assert "speculation" not in big.report.cluster
    finished = [t for t in big.report.tasks if t.status in ("ok", "lost")]    # (a loaded machine may speculate)
    assert finished and all(t.worker.startswith("tcp://127.0.0.1:") for t in finished)
    assert counts(str(tmp_path / "cluster")) == expected
    assert big.run_id == local.run_id            # the same job on the same input: the same run

    # At exactly the threshold the run stays in the driver; 0 always starts the cluster.
    with dask.config.set({"engine.local.max-bytes": size}):
        _, info = get_client(None, input_bytes=size)
        assert info.local
    with dask.config.set({"engine.local.max-bytes": 0}):
        _, info = get_client(None, input_bytes=1)
        assert not info.local and info.embedded and not info.in_process


def test_a_cluster_the_user_names_is_used_however_small_the_input(tmp_path, monkeypatch):
    with dask.config.set({"engine.local.max-bytes": 0}):
        client, _ = get_client(None, input_bytes=1)         # the embedded process cluster, as a Client
    given = wordcount.run(TEXT, str(tmp_path / "client"), cluster=client)
    assert given.report.cluster["local"] is False
    assert counts(str(tmp_path / "client")) == reference(TEXT)

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)
    by_env = wordcount.run(TEXT, str(tmp_path / "env"))
    assert by_env.report.cluster["local"] is False and by_env.report.cluster["embedded"] is False
    assert counts(str(tmp_path / "env")) == reference(TEXT)


def test_a_failing_task_in_the_driver_is_retried_then_fails_the_stage(tmp_path):
    from engine.errors import StageFailedError
    from engine.faults import Faults
    out = str(tmp_path / "out")
    ok = wordcount.run(TEXT, out, faults=Faults(fail_attempts={("map", 0): 1}))     # fails once, then works
    assert ok.report.cluster["local"] and ok.report.retries and counts(out) == reference(TEXT)
    with pytest.raises(StageFailedError, match="map stage, partition 1"):
        wordcount.run(TEXT, str(tmp_path / "never"), faults=Faults(fail_attempts={("map", 1): 99}))
    assert not os.path.exists(tmp_path / "never" / "_SUCCESS")


# ---------------------------------------------------------------------------------------------
# What the command line imports


MODULES = """
import json, sys
from engine.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(m for m in ("dask", "distributed", "pandas", "pyarrow.dataset")
                                                 if m in sys.modules)}))
"""


def _cli_modules(tmp_path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", MODULES, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env_for_subprocess(ENGINE_HISTORY=str(tmp_path / "h.sqlite")))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_run_and_noop_rerun_import_no_more_than_they_need(tmp_path):
    out = str(tmp_path / "wordcount")
    args = ("run", "jobs/wordcount.py", "--input", "jobs/data/text", "--output", out, "-q")
    first = _cli_modules(tmp_path, *args)
    assert first["code"] == 0 and "dask" not in first["loaded"] and "distributed" not in first["loaded"], first
    assert counts(out) == reference(TEXT)
    again = _cli_modules(tmp_path, *args)
    assert again == {"code": 0, "loaded": []}, again           # no dask, distributed, pandas, pyarrow.dataset
    # Asking for the cluster explicitly still works from the command line, and agrees.
    proc = subprocess.run([sys.executable, "-m", "engine", *args[:-2], str(tmp_path / "cluster"), "--workers", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                          env=env_for_subprocess(DASK_ENGINE__LOCAL__MAX_BYTES="0",
                                                 ENGINE_HISTORY=str(tmp_path / "h.sqlite")))
    assert proc.returncode == 0, proc.stderr
    assert "worker process" in proc.stdout and counts(str(tmp_path / "cluster")) == reference(TEXT)


# ---------------------------------------------------------------------------------------------
# A plain script


README_EXAMPLE = """
import pyarrow as pa, pyarrow.compute as pc
import engine
from engine import Job, agg

wc = (Job("wordcount")
      .map(lambda t: pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))}))
      .reduce(by="word", aggs={"count": agg.count()}))     # map-side combine derived automatically

print(wc.explain("jobs/data/text"))          # the plan, before anything runs
result = wc.run("jobs/data/text", "out/wc")  # same options as engine.run
print(result.report.summary())
table = engine.read("out/wc")                # committed output only, through the manifest; checksums checked
engine.verify("out/wc")                      # recomputes every file's CRC32C; raises on mismatch
"""


def test_readme_example_runs_from_a_plain_script_without_a_main_guard(tmp_path):
    shutil.copytree(TEXT, tmp_path / "jobs" / "data" / "text")
    (tmp_path / "example.py").write_text(README_EXAMPLE)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env_for_subprocess(ENGINE_HISTORY=str(tmp_path / "h.sqlite")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ran in the driver process" in proc.stdout
    t = engine.read(str(tmp_path / "out" / "wc"))
    # this example splits on whitespace without lower-casing: compare with that count
    raw: collections.Counter = collections.Counter()
    for name in sorted(os.listdir(TEXT)):
        with open(os.path.join(TEXT, name), encoding="utf-8") as f:
            for line in f:
                raw.update(line.split())
    assert dict(zip(t["word"].to_pylist(), t["count"].to_pylist())) == dict(raw)


# ---------------------------------------------------------------------------------------------
# Configuration without dask


CONFIG_PROBE = """
import json, os, sys
import engine.config as c
first = {"max": c.get("local.max-bytes"), "size": c.get("partition-size"), "threads": c.get("cluster.threads"),
         "dask": "dask" in sys.modules}
import dask.config
with dask.config.set({"engine.partition-size": "1MiB"}):
    inside = c.get("partition_size")
after = c.get("partition-size")
print(json.dumps({**first, "inside": inside, "after": after}))
"""


@pytest.mark.parametrize("variable", [None, "0"])
def test_config_reads_keys_without_dask_as_dask_would(tmp_path, variable):
    env = env_for_subprocess(**({"DASK_ENGINE__LOCAL__MAX_BYTES": variable} if variable is not None else {}))
    proc = subprocess.run([sys.executable, "-c", CONFIG_PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    if variable is None:
        assert got["max"] == config.DEFAULTS["local"]["max-bytes"] and got["dask"] is False
    else:
        assert got["max"] == 0 and got["dask"] is True          # the variable is dask's to read
    assert got["size"] == "64MiB" and got["threads"] == 1
    assert got["inside"] == "1MiB" and got["after"] == "64MiB"


def test_parse_bytes_reads_sizes_as_dask_does():
    from dask.utils import parse_bytes
    for text in ["100", "100 MB", "100M", "5kB", "5.4 kB", "1kiB", "1e6", "1e6 kB", "MB", "64MiB", "1.5 KiB",
                 "2GiB", "1 Ki", "B", 123, 4.5]:
        assert config.parse_bytes(text) == parse_bytes(text), text
    for bad in ["5 foos", "x1", "1..2MB"]:
        with pytest.raises(ValueError):
            parse_bytes(bad)
        with pytest.raises(ValueError):
            config.parse_bytes(bad)


def test_public_names_load_on_first_use():
    code = ("import sys, engine\n"
            "assert 'engine.runner' not in sys.modules and 'engine.job' not in sys.modules\n"
            "from engine import Job, agg\n"
            "assert 'engine.job' in sys.modules and 'engine.runner' not in sys.modules and 'dask' not in sys.modules\n"
            "names = [getattr(engine, n) for n in engine.__all__]\n"
            "assert engine.run is __import__('engine.runner').runner.run and isinstance(engine.__version__, str)\n"
            "assert set(engine.__all__) <= set(dir(engine))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                          env=env_for_subprocess(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError):
        engine.no_such_name  # noqa: B018


STUCK_JOB = """
import pathlib, threading, time
from engine import Job, agg
STARTED = pathlib.Path({started!r})
def stuck(t):
    if threading.current_thread() is threading.main_thread():
        return t                          # the driver's check of the map on a sample
    STARTED.touch()
    time.sleep(600)                       # user code that never returns
    return t
job = Job("stuck").map(stuck).reduce(by="text", aggs={{"n": agg.count()}})
"""


def test_sigterm_stops_a_run_in_the_driver_without_waiting_for_a_stuck_task(tmp_path):
    """A run in the driver unwinds on SIGTERM (exit 143, nothing committed, its fence closed) and the
    process exits although a pool thread is stuck in user code."""
    import signal
    import time
    started = tmp_path / "started"
    (tmp_path / "stuck.py").write_text(STUCK_JOB.format(started=str(started)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(tmp_path / "stuck.py"), "--input", TEXT,
                             "--output", str(out)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env_for_subprocess(ENGINE_HISTORY=str(tmp_path / "h.sqlite")))
    deadline = time.time() + TIMEOUT
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr
    assert not (out / "_SUCCESS").exists()
    assert list(out.glob("_temporary/*/_fence")) == []
