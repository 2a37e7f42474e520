"""The job fingerprint covers the code the tasks run, through the ``mapreduce`` command as a subprocess.

A rerun is a no-op only when the job's fingerprint and the input snapshot are unchanged, and a
resumed run reuses map outputs only of the same fingerprint. So the fingerprint must change with
anything that changes the output: a module constant the map reads, the body of a helper function in
another module of the user's, the declared version of a pinned job; and it must not change between
processes (hash seeds) or with the folder the job file sits in. Every answer is checked against
pyarrow computing the same thing in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine import Job, JobDefinitionError, agg

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180

HELPERS = '''"""Helpers of the fingerprinted job (a user module next to the job file)."""
import pyarrow.compute as pc

SKIP = {{"k3", "k5", "k7", "k11"}}   # a set: its iteration order depends on the hash seed


def scale(col, factor):
    return {body}
'''
SCALE = "pc.multiply(col, factor)"
SCALE_PLUS_ONE = "pc.add(pc.multiply(col, factor), 1)"

JOB = '''"""Sum of scaled values per key, without the keys the helpers skip."""
import pyarrow as pa
import pyarrow.compute as pc

import fp_helpers
from engine import Job, agg

FACTOR = {factor}


def prepare(t):
    t = t.filter(pc.invert(pc.is_in(t["k"], pa.array(sorted(fp_helpers.SKIP)))))
    return pa.table({{"k": t["k"], "v": fp_helpers.scale(t["v"], FACTOR)}})


job = Job("fingerprinted"{version}).map(prepare).reduce(by="k", aggs={{"total": agg.sum("v")}})
'''


def write_job(folder: Path, *, factor: int = 3, body: str = SCALE, version: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fp_helpers.py").write_text(HELPERS.format(body=body))
    path = folder / "fpjob.py"
    path.write_text(JOB.format(factor=factor, version="" if version is None else f", version={version!r}"))
    return path


def expected(table: pa.Table, *, factor: int, plus_one: bool = False) -> dict[str, int]:
    """The job's answer computed with pyarrow alone."""
    t = table.filter(pc.invert(pc.is_in(table["k"], pa.array(["k3", "k5", "k7", "k11"]))))
    v = pc.multiply(t["v"], factor)
    if plus_one:
        v = pc.add(v, 1)
    sums = pa.table({"k": t["k"], "v": v}).group_by("k").aggregate([("v", "sum")])
    return dict(zip(sums["k"].to_pylist(), sums["v_sum"].to_pylist()))


@pytest.fixture
def data(tmp_path) -> tuple[Path, pa.Table]:
    """Three Parquet files (three map tasks) of keys k0..k19 with small integer values."""
    rng = np.random.default_rng(7)
    n = 6000
    table = pa.table({"k": [f"k{i}" for i in rng.integers(0, 20, n)], "v": rng.integers(0, 100, n)})
    folder = tmp_path / "in"
    folder.mkdir()
    for i, piece in enumerate(np.array_split(np.arange(n), 3)):
        pq.write_table(table.take(pa.array(piece)), folder / f"part-{i}.parquet")
    return folder, table


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.pop("ENGINE_FAULTS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ENGINE_HISTORY"] = str(tmp_path / "history.sqlite")
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def cli(tmp_path: Path, *args, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], env=env_for(tmp_path, **extra_env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def run(tmp_path: Path, job: Path, src: Path, out: Path, *extra, **extra_env: str) -> subprocess.CompletedProcess:
    return cli(tmp_path, "run", job, "--input", src, "--output", out, "--workers", "1",
               "--partition-size", "16KiB", *extra, **extra_env)


def committed(out: Path) -> dict[str, int]:
    """The committed answer, read with pyarrow through the files the manifest lists."""
    doc = json.loads((out / "_SUCCESS").read_text())
    table = pa.concat_tables([pq.read_table(out / entry["path"]) for entry in doc["files"]])
    return dict(zip(table["k"].to_pylist(), table["total"].to_pylist()))


def fingerprint_of(tmp_path: Path, job: Path, seed: str) -> str:
    code = "import sys; from engine.cli import load_job; print(load_job(sys.argv[1]).fingerprint())"
    proc = subprocess.run([sys.executable, "-c", code, str(job)], env=env_for(tmp_path, PYTHONHASHSEED=seed),
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_changed_module_constant_recomputes_and_tuning_knobs_do_not(tmp_path, data):
    src, table = data
    job, out = write_job(tmp_path / "job", factor=3), tmp_path / "out"
    proc = run(tmp_path, job, src, out)
    assert proc.returncode == 0, proc.stderr
    assert committed(out) == expected(table, factor=3)
    # Same code, other tuning: the outputs would be equal, so nothing to do.
    proc = run(tmp_path, job, src, out, "--mode", "overwrite", "--partition-size", "8KiB", "--no-map-combine",
               "--no-skew", "--no-speculation")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    write_job(tmp_path / "job", factor=5)
    proc = run(tmp_path, job, src, out, "--mode", "overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" not in proc.stdout
    assert committed(out) == expected(table, factor=5)


@pytest.mark.slow
def test_changed_helper_module_recomputes_and_unchanged_is_a_no_op(tmp_path, data):
    src, table = data
    job, out = write_job(tmp_path / "job"), tmp_path / "out"
    proc = run(tmp_path, job, src, out)
    assert proc.returncode == 0, proc.stderr
    assert committed(out) == expected(table, factor=3)
    write_job(tmp_path / "job", body=SCALE_PLUS_ONE)
    proc = run(tmp_path, job, src, out, "--mode", "overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" not in proc.stdout
    assert committed(out) == expected(table, factor=3, plus_one=True)
    proc = run(tmp_path, job, src, out, "--mode", "overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert committed(out) == expected(table, factor=3, plus_one=True)


@pytest.mark.slow
def test_resume_after_a_changed_helper_does_not_reuse_old_map_outputs(tmp_path, data):
    src, table = data
    job, out = write_job(tmp_path / "job"), tmp_path / "out"
    # Every attempt of reduce partition 0 fails: the run fails after its map stage was journaled.
    proc = run(tmp_path, job, src, out, ENGINE_FAULTS=json.dumps({"fail_attempts": [["reduce", 0, 99]]}))
    assert proc.returncode == 1, proc.stderr
    assert len(list(out.glob("_temporary/*/journal/r0-map/*"))) == 3, "the map stage should have been journaled"
    write_job(tmp_path / "job", body=SCALE_PLUS_ONE)
    proc = run(tmp_path, job, src, out, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert committed(out) == expected(table, factor=3, plus_one=True)


@pytest.mark.slow
def test_a_pinned_version_decides_alone_whether_the_code_changed(tmp_path, data):
    src, table = data
    job, out = write_job(tmp_path / "job", version="2026-12-01"), tmp_path / "out"
    proc = run(tmp_path, job, src, out)
    assert proc.returncode == 0, proc.stderr
    assert committed(out) == expected(table, factor=3)
    proc = cli(tmp_path, "explain", job)
    assert proc.returncode == 0, proc.stderr
    assert "pinned by version='2026-12-01'" in proc.stdout
    # The code changes but the version does not: the user said it is the same job.
    write_job(tmp_path / "job", body=SCALE_PLUS_ONE, version="2026-12-01")
    proc = run(tmp_path, job, src, out, "--mode", "overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert committed(out) == expected(table, factor=3)
    write_job(tmp_path / "job", body=SCALE_PLUS_ONE, version="2026-12-02")
    proc = run(tmp_path, job, src, out, "--mode", "overwrite")
    assert proc.returncode == 0, proc.stderr
    assert committed(out) == expected(table, factor=3, plus_one=True)


@pytest.mark.slow
def test_fingerprint_is_stable_across_processes_and_folders_and_follows_the_code(tmp_path):
    first = write_job(tmp_path / "a")
    second = tmp_path / "elsewhere" / "b" / "fpjob.py"
    second.parent.mkdir(parents=True)
    shutil.copy(first, second)
    shutil.copy(first.parent / "fp_helpers.py", second.parent / "fp_helpers.py")
    fp = fingerprint_of(tmp_path, first, "1")
    assert fingerprint_of(tmp_path, second, "2") == fp
    assert fingerprint_of(tmp_path, first, "3") == fp
    # A comment and blank lines in the helper module do not change it.
    helpers = second.parent / "fp_helpers.py"
    helpers.write_text("# a comment\n\n\n" + helpers.read_text())
    assert fingerprint_of(tmp_path, second, "4") == fp
    # Any change to what runs does: the helper's body, the job's constant, a helper imported by name.
    write_job(second.parent, body=SCALE_PLUS_ONE)
    assert fingerprint_of(tmp_path, second, "1") != fp
    write_job(second.parent, factor=4)
    assert fingerprint_of(tmp_path, second, "1") != fp
    write_job(second.parent)
    by_name = second.read_text().replace("import fp_helpers\n", "import fp_helpers\nfrom fp_helpers import scale\n")
    second.write_text(by_name.replace("fp_helpers.scale(", "scale("))
    fp_by_name = fingerprint_of(tmp_path, second, "1")
    (second.parent / "fp_helpers.py").write_text(HELPERS.format(body=SCALE_PLUS_ONE))
    assert fingerprint_of(tmp_path, second, "1") != fp_by_name


def test_explain_shows_what_the_fingerprint_covers(tmp_path):
    job = write_job(tmp_path / "job")
    proc = cli(tmp_path, "explain", job)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "fingerprint" in line)
    assert "fp_helpers" in line and "mapreduce_job_fpjob" in line and "engine " in line, line


def test_code_that_cannot_be_fingerprinted_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "notes.txt").write_text("k1\n")
    job = tmp_path / "filejob.py"
    # An open file travels (cloudpickle reads it), but what it holds is not part of the code: refuse to guess.
    job.write_text("import os\nfrom engine import Job\n"
                   "NOTES = open(os.path.join(os.path.dirname(__file__), 'notes.txt'))\n"
                   "def keep(t):\n    return t if NOTES else t\n"
                   "job = Job('filejob').map(keep)\n")
    proc = cli(tmp_path, "explain", job)
    assert proc.returncode == 1
    assert "NOTES" in proc.stderr and "version=" in proc.stderr, proc.stderr
    job.write_text(job.read_text().replace("Job('filejob')", "Job('filejob', version='1')"))
    proc = cli(tmp_path, "explain", job)
    assert proc.returncode == 0, proc.stderr
    assert "pinned by version='1'" in proc.stdout
    # A lock cannot travel at all: say so, instead of fingerprinting its address.
    lockjob = tmp_path / "lockjob.py"
    lockjob.write_text("import threading\nfrom engine import Job\nLOCK = threading.Lock()\n"
                       "def keep(t):\n    with LOCK:\n        return t\n"
                       "job = Job('lockjob').map(keep)\n")
    proc = cli(tmp_path, "explain", lockjob)
    assert proc.returncode == 1
    assert "LOCK" in proc.stderr and "cannot be pickled" in proc.stderr, proc.stderr


def test_version_is_carried_by_every_builder_and_checked():
    def identity(t):
        return t

    job = (Job("pinned", version="2026-12-01").map(identity, columns=["k"]).combine(identity)
           .reduce(identity, by="k").reduce(by="k", aggs={"n": agg.count()}).sort(by="k"))
    assert job.version == "2026-12-01" and len(job.stages) == 5
    assert job.fingerprint() == Job("pinned", version="2026-12-01").map(lambda t: t, columns=["k"]).combine(
        identity).reduce(identity, by="k").reduce(by="k", aggs={"n": agg.count()}).sort(by="k").fingerprint()
    assert job.fingerprint() != Job("pinned", version="2026-12-02").map(identity, columns=["k"]).combine(
        identity).reduce(identity, by="k").reduce(by="k", aggs={"n": agg.count()}).sort(by="k").fingerprint()
    with pytest.raises(JobDefinitionError, match="version="):
        Job("pinned", version="")
