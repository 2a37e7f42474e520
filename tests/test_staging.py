"""Staged runs, publishing and canary runs (``stage_to=``, ``engine.publish``, ``max_change=``, ``canary=``).

Promises checked here, on local disk and on S3 (moto server):
- a staged run leaves the live output byte for byte as it was, commits a verifiable staged output that
  names its live output, and compares it with the live partitions it would replace (row counts equal to
  DuckDB's); publishing it (API, ``mapreduce publish`` in-process and as a process) replaces exactly
  the staged partitions in one generation, keeps every other file as it was, carries the staged run's
  provenance and removes the staged output;
- ``max_change`` publishes a change up to the threshold and refuses one above it (exit 3 on the command
  line), keeping the live output and the staged result; new partitions never trip it;
- a publish SIGKILLed at random moments leaves the live output all old or all new across the staged
  partitions, and publishing again finishes (``already`` when the swap had happened);
- a publish and a direct ``overwrite-partitions`` run into the same output: one refuses, nothing mixes;
- a canary whose sample moves a partition beyond the gate stops the run before it starts (exit 3), a
  passing canary reports what it sampled and compared, fractions and plain (file) inputs work, and
  ``OUT/_canary`` never stays behind;
- ``engine.read(..., partitions=)`` and ``engine.diff.compare(..., partitions=)`` open only the files of
  the partitions asked for.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import posixpath
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, commit
from engine.cli import main as cli_main
from engine.diff import compare
from engine.errors import (ChangeGateError, ConcurrentRunError, IntegrityError, JobDefinitionError, ManifestError,
                           PartitionNotFoundError, StageFailedError)
from engine.faults import Faults
from engine.publish import publish
from fixtures import Backend, storage_backend

DAYS = [f"2026-11-{d:02d}" for d in range(1, 7)]
TEN_DAYS = [f"2026-11-{d:02d}" for d in range(1, 11)]
JOB = Job("staged-copy").map(columns=["day", "region", "v"])
JOB_SOURCE = 'from engine import Job\njob = Job("staged-copy").map(columns=["day", "region", "v"])\n'


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    return storage_backend(request, tmp_path, "staging")


@pytest.fixture
def cli():
    """``mapreduce ...`` in this process; the logging it sets up for itself is undone afterwards."""
    log = logging.getLogger("engine")
    saved = (list(log.handlers), log.propagate, log.level)
    yield lambda *argv: cli_main(list(argv))
    log.handlers[:] = saved[0]
    log.propagate = saved[1]
    log.setLevel(saved[2])


def local_backend(tmp_path) -> Backend:
    return Backend("local", str(tmp_path), None, engine.datasets.filesystem(str(tmp_path))[0])


def write_days(backend: Backend, root: str, counts: dict[str, int], seed: int) -> None:
    """A Hive input ``root/day=YYYY-MM-DD/events.parquet`` with ``counts[day]`` rows of ``seed``."""
    for day, rows in counts.items():
        rng = np.random.default_rng([seed, int(day.replace("-", ""))])
        t = pa.table({"region": rng.choice(["eu", "us", "apac"], rows), "v": rng.integers(0, 1000, rows)})
        path = posixpath.join(backend.path(root), f"day={day}", "events.parquet")
        if backend.name == "local":
            os.makedirs(posixpath.dirname(path), exist_ok=True)
        with backend.fs.open(path, "wb") as f:
            pq.write_table(t, f)


def events(backend: Backend, root: str) -> pa.Table:
    """Every row of a Hive input written by :func:`write_days`, with its ``day``, read with pyarrow alone."""
    base = backend.path(root).rstrip("/")
    backend.fs.invalidate_cache()
    tables = []
    for path in sorted(backend.fs.find(base)):
        with backend.fs.open(path, "rb") as f:
            t = pq.read_table(f)
        day = path[len(base) + 1:].split("/")[0].split("=", 1)[1]
        tables.append(t.append_column("day", pa.array([day] * t.num_rows)))
    return pa.concat_tables(tables)


def by_day(table: pa.Table) -> dict[str, list]:
    out: dict = collections.defaultdict(list)
    for r in table.select(["day", "region", "v"]).to_pylist():
        out[r["day"]].append((r["region"], r["v"]))
    return {k: sorted(v) for k, v in out.items()}


def counts(table: pa.Table) -> dict[str, int]:
    return dict(collections.Counter(table["day"].to_pylist()))


def expected_live(old: pa.Table, new: pa.Table, days: list[str]) -> dict[str, list]:
    """DuckDB: the old input's rows, the staged days taken from the new input instead."""
    rows = duckdb.sql(f"select day, region, v from old where day not in {tuple(days) + ('',)} union all "
                      f"select day, region, v from new where day in {tuple(days) + ('',)}").to_arrow_table()
    return by_day(rows)


def files_of(backend: Backend, out: str) -> dict[str, tuple]:
    """``{relative path: (size, modification time)}`` of every data file under the output."""
    root = backend.path(out).rstrip("/")
    backend.fs.invalidate_cache()
    key = "mtime" if backend.name == "local" else "LastModified"
    return {p[len(root) + 1:]: (info["size"], info[key]) for p, info in backend.fs.find(root, detail=True).items()
            if "/_" not in p[len(root):] and posixpath.basename(p).startswith("part-")}


def manifest_of(backend: Backend, out: str) -> commit.Manifest | None:
    return commit.load_manifest(backend.fs, backend.path(out))


def raw_manifest(backend: Backend, out: str) -> bytes:
    backend.fs.invalidate_cache()
    return backend.fs.cat_file(posixpath.join(backend.path(out), "_SUCCESS"))


def gone(backend: Backend, path: str, strict: bool = True) -> bool:
    """Nothing of a published staged output (or a canary) is left: no manifest, no data file and, locally
    (``strict``), no directory; a publish killed after it had removed the staged manifest may leave the
    empty directory with its lock file."""
    backend.fs.invalidate_cache()
    if backend.name == "local" and strict:
        return not os.path.exists(path)
    return not backend.fs.exists(backend.path(path)) or \
        not [p for p in backend.fs.find(backend.path(path)) if not p.endswith("/_lock")]


def stage(backend: Backend, src: str, out: str, st: str, days: list[str], **kw) -> engine.RunResult:
    return engine.run(JOB, src, out, storage_options=backend.options, partition_by=["day"],
                      where=pc.field("day").isin(days), stage_to=st, **kw)


def provenance(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("generation", "published_at")}


def subprocess_env(**extra: str) -> dict:
    """This environment, with the engine under test importable (tests run from the repository root)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# Stage, compare, publish


def test_stage_then_publish_replaces_exactly_the_staged_partitions(backend):
    old_src, new_src, out, st = backend.url("old"), backend.url("new"), backend.url("out"), backend.url("staged")
    changed = [DAYS[1], DAYS[4]]
    write_days(backend, old_src, {d: 200 for d in DAYS}, seed=1)
    write_days(backend, new_src, {d: 200 for d in DAYS}, seed=1)
    write_days(backend, new_src, {DAYS[1]: 230, DAYS[4]: 170}, seed=2)
    engine.run(JOB, old_src, out, storage_options=backend.options, partition_by=["day"])
    raw, before, before_doc = raw_manifest(backend, out), files_of(backend, out), manifest_of(backend, out).doc

    result = stage(backend, new_src, out, st, changed)
    # the live output is untouched; the staged one is complete, verifiable, and names the live output
    assert raw_manifest(backend, out) == raw and files_of(backend, out) == before
    assert result.staged == st and result.published is None
    engine.verify(st, backend.options)
    staged = manifest_of(backend, st)
    assert staged.doc["staged_for"] == (backend.path(out) if backend.name == "local" else out)
    # the diff is DuckDB's per-partition row counts of the old and the new input
    old, new = events(backend, old_src), events(backend, new_src)
    ref = duckdb.sql(f"select o.day, o.n, s.n from (select day, count(*) n from old group by day) o join "
                     f"(select day, count(*) n from new where day in {tuple(changed)} group by day) s "
                     "using (day)").fetchall()
    assert {p.name: (p.rows_a, p.rows_b) for p in result.diff.partitions} == {f"day={d}": (a, b) for d, a, b in ref}
    assert {f"day={d}": (a, b) for d, a, b in ref} == {f"day={DAYS[1]}": (200, 230), f"day={DAYS[4]}": (200, 170)}

    pub = publish(st, storage_options=backend.options)
    assert not pub.already and pub.partitions == tuple(f"day={d}" for d in changed) and pub.rows == 400
    assert by_day(engine.read(out, backend.options)) == expected_live(old, new, changed)
    engine.verify(out, backend.options)
    after = files_of(backend, out)
    assert {commit.partition_of(p) for p in set(after) ^ set(before)} == {f"day={d}" for d in changed}
    for p, info in before.items():
        if commit.partition_of(p) not in {f"day={d}" for d in changed}:
            assert after[p] == info, p                     # same file, same size, same modification time
    live = manifest_of(backend, out)
    assert set(after) == {f["path"] for f in live.files}    # nothing replaced stays behind
    assert live.generation == before_doc["generation"] + 1 == pub.generation
    for d in DAYS:
        rec = live.doc["partitions"][f"day={d}"]
        if d in changed:
            assert provenance(rec) == provenance(staged.doc["partitions"][f"day={d}"])
            assert rec["run_id"] == result.run_id and rec["generation"] == live.generation
        else:
            assert rec == before_doc["partitions"][f"day={d}"]
    assert manifest_of(backend, st) is None and gone(backend, st)
    # publishing it again: nothing is staged any more
    with pytest.raises(ManifestError, match="nothing is staged"):
        publish(st, storage_options=backend.options)


def test_publish_from_the_command_line(tmp_path, monkeypatch, capsys, cli):
    """``mapreduce publish STAGED`` in this process and as a process of its own; the staged output names
    its live output by absolute path, so publishing works from any directory."""
    backend = local_backend(tmp_path)
    srcs = [str(tmp_path / f"v{i}") for i in range(3)]
    write_days(backend, srcs[0], {d: 100 for d in DAYS}, seed=1)
    write_days(backend, srcs[1], {d: 100 for d in DAYS}, seed=1)
    write_days(backend, srcs[1], {DAYS[0]: 120}, seed=2)
    write_days(backend, srcs[2], {d: 100 for d in DAYS}, seed=1)
    write_days(backend, srcs[2], {DAYS[0]: 120}, seed=2)
    write_days(backend, srcs[2], {DAYS[3]: 90, DAYS[5]: 80}, seed=3)
    out = str(tmp_path / "out")
    engine.run(JOB, srcs[0], out, partition_by=["day"])
    monkeypatch.chdir(tmp_path)
    stage(backend, srcs[1], "out", "staged-a", [DAYS[0]])        # relative paths
    monkeypatch.chdir(tmp_path / "v0")
    assert cli("publish", str(tmp_path / "staged-a")) == 0
    assert "published 1 partition(s) (day=2026-11-01)" in capsys.readouterr().out
    assert by_day(engine.read(out)) == expected_live(events(backend, srcs[0]), events(backend, srcs[1]), [DAYS[0]])
    assert manifest_of(backend, out).generation == 2 and not os.path.exists(tmp_path / "staged-a")

    result = stage(backend, srcs[2], out, str(tmp_path / "staged-b"), [DAYS[3], DAYS[5]])
    proc = subprocess.run([sys.executable, "-m", "engine", "publish", str(tmp_path / "staged-b")], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"published 2 partition(s) (day={DAYS[3]}, day={DAYS[5]}), 170 rows of run {result.run_id}" in proc.stdout
    assert by_day(engine.read(out)) == by_day(events(backend, srcs[2]))
    live = manifest_of(backend, out)
    assert live.generation == 3 and live.doc["partitions"][f"day={DAYS[5]}"]["run_id"] == result.run_id
    assert not os.path.exists(tmp_path / "staged-b")
    engine.verify(out)


def test_max_change_gate(tmp_path, capsys, cli):
    backend = local_backend(tmp_path)
    src, out, st = str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "staged")
    base = {d: 200 for d in DAYS[:4]}
    write_days(backend, src, base, seed=1)
    engine.run(JOB, src, out, partition_by=["day"])
    # +4.5% and exactly +5%, and a new partition (a "100% change" that must not count): published
    write_days(backend, src, {DAYS[0]: 209, DAYS[1]: 210, DAYS[4]: 50}, seed=2)
    ok = stage(backend, src, out, st, [DAYS[0], DAYS[1], DAYS[4]], max_change="5%")
    assert ok.published is not None and not ok.published.already
    assert [p.name for p in ok.diff.partitions] == [f"day={DAYS[0]}", f"day={DAYS[1]}"]
    assert counts(engine.read(out)) == {DAYS[0]: 209, DAYS[1]: 210, DAYS[2]: 200, DAYS[3]: 200, DAYS[4]: 50}
    assert not os.path.exists(st)
    # +5.5% on one partition: nothing published, the staged result kept for inspection
    write_days(backend, src, {DAYS[2]: 211, DAYS[3]: 201}, seed=3)
    raw = raw_manifest(backend, out)
    with pytest.raises(ChangeGateError) as caught:
        stage(backend, src, out, st, [DAYS[2], DAYS[3]], max_change=0.05)
    assert caught.value.staged == st and len(caught.value.violations) == 1
    assert f"day={DAYS[2]}: 200 rows in A, 211 in B" in caught.value.violations[0]
    assert raw_manifest(backend, out) == raw
    engine.verify(st)
    assert counts(engine.read(st)) == {DAYS[2]: 211, DAYS[3]: 201}
    # the same on the command line: exit 3, one line on stderr
    job_file = tmp_path / "job.py"
    job_file.write_text(JOB_SOURCE)
    capsys.readouterr()              # only what the command prints (runs above may have logged to stderr)
    code = cli("run", str(job_file), "-i", src, "-o", out, "--partition-by", "day", "--where",
               f"day in ('{DAYS[2]}', '{DAYS[3]}')", "--stage-to", st, "--max-change", "5%", "-q")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert len(err) == 1 and err[0].startswith("error: ChangeGateError: the staged result") and "211 in B" in err[0]
    assert raw_manifest(backend, out) == raw and manifest_of(backend, st) is not None
    # published anyway by hand
    publish(st)
    assert counts(engine.read(out))[DAYS[2]] == 211


def test_stage_to_refuses_a_place_inside_the_output(tmp_path):
    backend = local_backend(tmp_path)
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_days(backend, src, {d: 10 for d in DAYS[:2]}, seed=1)
    engine.run(JOB, src, out, partition_by=["day"])
    raw = raw_manifest(backend, out)
    for bad in (out, os.path.join(out, "staged"), str(tmp_path)):
        with pytest.raises(JobDefinitionError, match="stage_to"):
            stage(backend, src, out, bad, DAYS[:1], force=True)
    assert raw_manifest(backend, out) == raw
    # under a name starting with '_' it is no data of the live output
    result = stage(backend, src, out, os.path.join(out, "_staged"), DAYS[:1], force=True)
    assert raw_manifest(backend, out) == raw and engine.verify(out)
    publish(result.staged)
    assert not os.path.exists(os.path.join(out, "_staged")) and engine.verify(out).generation == 2


# ---------------------------------------------------------------------------------------------
# Kills and races


PUBLISHER = textwrap.dedent('''
    import json, sys
    import pyarrow.parquet
    from engine.datasets import filesystem
    from engine.errors import EngineError
    from engine.publish import publish
    args = json.loads(sys.argv[1])
    fs, root = filesystem(args["staged"], args["options"])   # connected before READY (the same instance is reused)
    fs.exists(root)
    hook = None
    if args["hold"]:                       # stop at the first copy until told to go on
        def hook(point, held=[]):
            if not held:
                held.append(point)
                print("HOLDING", point, flush=True)
                sys.stdin.readline()
    print("READY", flush=True)
    sys.stdin.readline()
    try:
        result = publish(args["staged"], storage_options=args["options"], hook=hook, force=args["force"])
    except EngineError as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print("DONE", result.already, flush=True)
''')


def start_publisher(tmp_path, backend: Backend, staged: str, delay: float = 0.0, wait: bool = True,
                    hold: bool = False, force: bool = False) -> subprocess.Popen:
    """A process that imports the engine, says READY, and publishes ``staged`` once it reads a line (with
    ``hold``, it stops at its first copy, holding the output's lock, until it reads another line; else
    the fault hook of ``ENGINE_FAULTS`` slows each step down by ``delay`` seconds)."""
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    env = subprocess_env(ENGINE_FAULTS=json.dumps({"commit_delay": delay}))
    args = {"staged": staged, "options": backend.options, "hold": hold, "force": force}
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(args)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        ready(proc)
    return proc


def ready(proc: subprocess.Popen) -> subprocess.Popen:
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    return proc


def copy_output(backend: Backend, src: str, dst: str) -> None:
    """A committed output copied file by file (manifest included, lock left out)."""
    root = backend.path(src).rstrip("/")
    backend.fs.invalidate_cache()
    for p in backend.fs.find(root):
        rel = p[len(root) + 1:]
        if rel != "_lock":
            target = posixpath.join(backend.path(dst), rel)
            if backend.name == "local":
                os.makedirs(posixpath.dirname(target), exist_ok=True)
            backend.fs.copy(p, target)


def state_of(got: dict, a: dict, b: dict, days: list[str]) -> str | None:
    if all(got.get(d) == a[d] for d in days):
        return "a"
    if all(got.get(d) == b[d] for d in days):
        return "b"
    return None


@pytest.mark.slow
def test_publish_killed_at_random_moments_leaves_old_or_new(backend, tmp_path):
    """SIGKILL of a process publishing three staged partitions, at random moments of the publish: every
    time the three live partitions are all old or all new, the output verifies, and publishing again
    finishes (``already`` when the manifest had been swapped)."""
    src_a, src_b, out, st = backend.url("a"), backend.url("b"), backend.url("out"), backend.url("staged")
    staged_days = [DAYS[0], DAYS[2], DAYS[3]]
    write_days(backend, src_a, {d: 150 for d in DAYS}, seed=1)
    write_days(backend, src_b, {d: 150 for d in DAYS}, seed=1)
    write_days(backend, src_b, {d: 160 for d in staged_days}, seed=9)
    engine.run(JOB, src_a, out, storage_options=backend.options, partition_by=["day"])
    a, b = by_day(events(backend, src_a)), by_day(events(backend, src_b))
    others = {d: a[d] for d in DAYS if d not in staged_days}
    # the two staged results, kept as templates: each round publishes a fresh copy of the one that flips
    # the live output (staging anew each round would only cost time)
    templates = {"a": backend.url("staged-a"), "b": backend.url("staged-b")}
    for name, src in (("a", src_a), ("b", src_b)):
        assert stage(backend, src, out, templates[name], staged_days, force=True).published is None
    delay = 0.06
    rng = random.Random(20261130)
    outcomes: collections.Counter = collections.Counter()
    state, duration, first = "a", None, 0.0
    proc = start_publisher(tmp_path, backend, st, delay, wait=False, force=True)
    for i in range(40):
        if outcomes["killed"] >= 10 and outcomes["old"] and outcomes["new"]:
            proc.kill()
            proc.communicate()
            break
        target = "b" if state == "a" else "a"
        copy_output(backend, templates[target], st)
        ready(proc)
        started = time.time()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        killed = False
        if duration is None:                                       # the first publish runs to the end
            assert proc.stdout.readline().startswith("engine-fault: commit step")
            first = time.time() - started
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0 and "DONE False" in stdout, stderr
            assert stdout.count("engine-fault: commit step") == 5, stdout
            duration = time.time() - started
        else:
            # a random moment: before the first step, or within one of the six steps (three copies, before
            # and after the manifest swap, after the cleanup) that the fault hook announces and slows down
            step = rng.randrange(7)
            for _ in range(step):
                if not proc.stdout.readline().startswith("engine-fault:"):
                    break
            time.sleep(rng.uniform(0.0, first if step == 0 else 1.5 * delay))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
            proc.communicate(timeout=60)
        previous, proc = proc, start_publisher(tmp_path, backend, st, delay, wait=False,
                                               force=True)                    # the next one imports now
        assert previous.returncode in (0, -signal.SIGKILL)
        engine.verify(out, backend.options)
        got = by_day(engine.read(out, backend.options))
        assert {d: got[d] for d in others} == others
        now = state_of(got, a, b, staged_days)
        assert now in (state, target), f"a mix of old and new partitions after publish {i}"
        swapped = now == target
        if killed:
            outcomes["killed"] += 1
            outcomes["new" if swapped else "old"] += 1
        if manifest_of(backend, st) is not None:
            # finishes what the killed one began (force: the templates are re-published back and forth,
            # each staged against the first live state, which the staleness check would refuse)
            again = publish(st, storage_options=backend.options, force=True)
            assert again.already == swapped, (i, again)
            outcomes["already"] += again.already
            assert gone(backend, st)
        else:
            assert swapped                                         # stopped after the staged manifest went
            assert gone(backend, st, strict=False)
            outcomes["gone"] += 1
        state = state_of(by_day(engine.read(out, backend.options)), a, b, staged_days)
        assert state == target
        live = manifest_of(backend, out)
        assert set(files_of(backend, out)) == {f["path"] for f in live.files}      # no leftovers
    engine.verify(out, backend.options)
    print(f"publish {duration:.2f}s (first step after {first:.2f}s);", dict(outcomes))
    assert outcomes["killed"] >= 10 and outcomes["old"] >= 1 and outcomes["new"] >= 1, outcomes


def test_publish_racing_a_direct_partition_replace(backend, tmp_path):
    """A publish and a direct ``overwrite-partitions`` run into the same live output: whichever comes
    second while the other holds the output refuses with ConcurrentRunError, and the output is exactly
    the winner's result."""
    src_a, src_b, src_c = backend.url("a"), backend.url("b"), backend.url("c")
    out, st = backend.url("out"), backend.url("staged")
    write_days(backend, src_a, {d: 100 for d in DAYS}, seed=1)
    write_days(backend, src_b, {d: 110 for d in DAYS}, seed=2)
    write_days(backend, src_c, {d: 90 for d in DAYS}, seed=3)
    engine.run(JOB, src_a, out, storage_options=backend.options, partition_by=["day"])
    a, b, c = (by_day(events(backend, s)) for s in (src_a, src_b, src_c))
    direct = dict(storage_options=backend.options, partition_by=["day"], mode="overwrite-partitions",
                  where=pc.field("day").isin(DAYS[2:]))

    # 1. a publishing process holds the output; the direct run refuses
    stage(backend, src_b, out, st, DAYS[:4])
    proc = start_publisher(tmp_path, backend, st, hold=True)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "HOLDING publish"
    with pytest.raises(ConcurrentRunError):
        engine.run(JOB, src_c, out, **direct)
    stdout, stderr = proc.communicate("go on\n", timeout=60)
    assert proc.returncode == 0 and "DONE False" in stdout, stderr
    assert by_day(engine.read(out, backend.options)) == {d: (b if d in DAYS[:4] else a)[d] for d in DAYS}

    # 2. a direct run holds the output while committing; the publish refuses and keeps the staged result
    stage(backend, src_a, out, st, DAYS[:4])
    entered, release = threading.Event(), threading.Event()

    class Holding(Faults):
        def commit_hook(self, point: str) -> None:
            entered.set()
            release.wait(30)

    results: list = []
    runner = threading.Thread(target=lambda: results.append(engine.run(JOB, src_c, out, faults=Holding(), **direct)))
    runner.start()
    try:
        assert entered.wait(30)
        with pytest.raises(ConcurrentRunError):
            publish(st, storage_options=backend.options)
    finally:
        release.set()
        runner.join(60)
    assert results and not results[0].skipped
    expected = {d: (c if d in DAYS[2:] else b if d in DAYS[:4] else a)[d] for d in DAYS}
    assert by_day(engine.read(out, backend.options)) == expected
    engine.verify(st, backend.options)                            # kept intact, publishable later...
    with pytest.raises(engine.CommitError, match="changed after it was staged"):
        publish(st, storage_options=backend.options)              # ...but not over the newer days 3-4
    assert by_day(engine.read(out, backend.options)) == expected
    publish(st, storage_options=backend.options, force=True)
    assert by_day(engine.read(out, backend.options)) == {d: (a if d in DAYS[:4] else c)[d] for d in DAYS}
    engine.verify(out, backend.options)


# ---------------------------------------------------------------------------------------------
# Canary runs


def _history_outputs(job: str) -> list[str]:
    """The outputs this job's runs wrote (committed or skipped), per the run history."""
    from engine import history
    return [r["output"] for r in history.runs(limit=1000, job=job) if r["status"] in ("committed", "skipped")]


def _refused(job: str) -> list[tuple[str, str]]:
    from engine import history
    return [(r["output"], r["error_type"]) for r in history.runs(limit=1000, job=job) if r["status"] == "refused"]


def test_canary_gate_stops_the_run_before_it_starts(tmp_path, capsys, cli):
    backend = local_backend(tmp_path)
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_days(backend, src, {d: 200 for d in TEN_DAYS}, seed=1)
    engine.run(JOB, src, out, partition_by=["day"])
    # a passing canary: the full run goes on and commits
    ok = engine.run(JOB, src, out, partition_by=["day"], mode="overwrite-partitions", canary=2, max_change="5%",
                    force=True)
    sampled = [s["day"] for s in ok.canary["sampled"]]
    assert len(set(sampled)) == 2 and set(sampled) <= set(TEN_DAYS) and ok.canary["of"] == 10
    assert ok.canary["compared"] == sorted(f"day={d}" for d in sampled) and ok.canary["violations"] == []
    assert ok.canary["rows"] == 400 and not ok.skipped and manifest_of(backend, out).generation == 2
    assert by_day(engine.read(out)) == by_day(events(backend, src))
    assert not os.path.exists(os.path.join(out, "_canary"))

    # the job changed: half of one sampled day's rows disappear
    bad = sampled[0]
    changed = Job("staged-copy-v2").map(
        lambda t: t.filter(pc.or_(pc.not_equal(t["day"], bad), pc.less(t["v"], 500))).select(["day", "region", "v"]),
        columns=["day", "region", "v"])
    ev = events(backend, src)   # noqa: F841 - read by DuckDB
    kept = duckdb.sql(f"select count(*) from ev where day = '{bad}' and v < 500").fetchall()[0][0]
    assert 0.4 < 1 - kept / 200 < 0.6
    raw, before = raw_manifest(backend, out), files_of(backend, out)
    with pytest.raises(ChangeGateError) as caught:
        engine.run(changed, src, out, partition_by=["day"], mode="overwrite-partitions", canary=2, max_change="5%")
    assert "the full run did not start" in str(caught.value)
    violations = caught.value.violations
    assert len(violations) == 1 and f"day={bad}: 200 rows in A, {kept} in B" in violations[0]
    assert raw_manifest(backend, out) == raw and files_of(backend, out) == before
    # only the canary ran (recorded apart from the job's own runs, so it counts in none of its SLIs)
    assert _history_outputs("staged-copy-v2:canary") == [os.path.join(out, "_canary")]
    assert _history_outputs("staged-copy-v2") == []
    assert _refused("staged-copy-v2") == [(out, "ChangeGateError")]                # and the run was refused
    assert not os.path.exists(os.path.join(out, "_canary"))

    # the command line: exit 3 and one line
    job_file = tmp_path / "changed.py"
    job_file.write_text(textwrap.dedent(f'''
        import pyarrow.compute as pc
        from engine import Job
        job = Job("staged-copy-v3").map(
            lambda t: t.filter(pc.or_(pc.not_equal(t["day"], "{bad}"), pc.less(t["v"], 500))).select(
                ["day", "region", "v"]),
            columns=["day", "region", "v"])
    '''))
    capsys.readouterr()
    code = cli("run", str(job_file), "-i", src, "-o", out, "--partition-by", "day", "--mode",
               "overwrite-partitions", "--canary", "2", "--max-change", "5%", "-q")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert len(err) == 1 and err[0].startswith("error: ChangeGateError: the canary on 2 of 10 input partitions")
    assert "did not start" in err[0] and f"day={bad}" in err[0]
    assert raw_manifest(backend, out) == raw and not os.path.exists(os.path.join(out, "_canary"))
    assert _history_outputs("staged-copy-v3:canary") == [os.path.join(out, "_canary")]
    assert _refused("staged-copy-v3") == [(out, "ChangeGateError")]

    # a rerun with nothing to do runs no canary either
    again = engine.run(JOB, src, out, partition_by=["day"], mode="overwrite-partitions", canary=2, max_change="5%")
    assert again.skipped and again.canary is None
    assert _history_outputs("staged-copy:canary").count(os.path.join(out, "_canary")) == 1  # the passing one above


def test_canary_fraction_plain_input_and_failures(tmp_path):
    backend = local_backend(tmp_path)
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_days(backend, src, {d: 50 for d in TEN_DAYS}, seed=1)
    engine.run(JOB, src, out, partition_by=["day"])
    frac = engine.run(JOB, src, out, partition_by=["day"], mode="overwrite-partitions", canary=0.2, max_change=0.05,
                      force=True)
    assert len(frac.canary["sampled"]) == 2 and frac.canary["of"] == 10 and len(frac.canary["compared"]) == 2
    assert not os.path.exists(os.path.join(out, "_canary"))

    # a plain input: the canary samples files; its partitions are partial, so they are not compared
    plain, out2 = tmp_path / "plain", str(tmp_path / "out2")
    plain.mkdir()
    ev = events(backend, src)
    rng = np.random.default_rng(5)
    ev = ev.take(pa.array(rng.permutation(ev.num_rows)))
    names = []
    for i in range(5):
        names.append(str(plain / f"part-{i}.parquet"))
        pq.write_table(ev.slice(i * 100, 100), names[-1])
    engine.run(JOB, str(plain), out2, partition_by=["day"])
    raw = raw_manifest(backend, out2)
    with pytest.raises(JobDefinitionError, match="not Hive-partitioned"):
        engine.run(JOB, str(plain), out2, partition_by=["day"], mode="overwrite-partitions", canary=2,
                   max_change="5%", force=True)
    assert raw_manifest(backend, out2) == raw and not os.path.exists(os.path.join(out2, "_canary"))
    smoke = engine.run(JOB, str(plain), out2, partition_by=["day"], mode="overwrite-partitions", canary=2, force=True)
    assert len(smoke.canary["sampled"]) == 2 and set(smoke.canary["sampled"]) <= set(names)
    assert smoke.canary["of"] == 5 and smoke.canary["compared"] == [] and smoke.canary["not_compared"]
    files = smoke.canary["sampled"]
    assert smoke.canary["rows"] == duckdb.sql(f"select count(*) from read_parquet({files})").fetchall()[0][0]
    assert by_day(engine.read(out2)) == by_day(ev) and manifest_of(backend, out2).generation == 2
    assert not os.path.exists(os.path.join(out2, "_canary"))

    # a canary whose task fails for good: the error, no full run, no _canary, and no directory it alone created
    failing = Faults(fail_attempts={("map", 0): 9})
    raw = raw_manifest(backend, out)
    with pytest.raises(StageFailedError, match="injected failure"):
        engine.run(JOB, src, out, partition_by=["day"], mode="overwrite-partitions", canary=1, faults=failing,
                   force=True)
    assert raw_manifest(backend, out) == raw and not os.path.exists(os.path.join(out, "_canary"))
    fresh = str(tmp_path / "fresh")
    with pytest.raises(StageFailedError, match="injected failure"):
        engine.run(JOB, src, fresh, partition_by=["day"], canary=1, faults=failing)
    assert not os.path.exists(fresh)


# ---------------------------------------------------------------------------------------------
# Reading and comparing some partitions


def _flip_a_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


def test_read_and_compare_open_only_the_partitions_asked_for(tmp_path):
    backend = local_backend(tmp_path)
    src, out, st = str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "staged")
    write_days(backend, src, {d: 120 for d in DAYS}, seed=4)
    job = Job("by-region").map(columns=["day", "region", "v"])
    engine.run(job, src, out, partition_by=["day", "region"])
    ev = events(backend, src)   # noqa: F841 - read by DuckDB
    one = engine.read(out, partitions=[f"day={DAYS[2]}"])       # a leading directory: every region of the day
    assert by_day(one) == by_day(duckdb.sql(f"select * from ev where day = '{DAYS[2]}'").to_arrow_table())
    assert one.column_names == ["day", "region", "v"]
    pair = engine.read(out, partitions=[f"day={DAYS[0]}/region=eu", f"day={DAYS[5]}/"])
    assert by_day(pair) == by_day(duckdb.sql(f"select * from ev where (day = '{DAYS[0]}' and region = 'eu') or "
                                             f"day = '{DAYS[5]}'").to_arrow_table())
    with pytest.raises(PartitionNotFoundError, match="has no partition 'day=2026-12-01'.*e.g. day=2026-11-01"):
        engine.read(out, partitions=["day=2026-12-01"])
    with pytest.raises(PartitionNotFoundError, match="has no partition 'day=2026-11-0'"):
        engine.read(out, partitions="day=2026-11-0")             # a prefix of a name is no directory
    # files of the other partitions are not opened: damage one, and only a read that includes it fails
    manifest = manifest_of(backend, out)
    victim = next(f for f in manifest.files if f["path"].startswith(f"day={DAYS[4]}/"))
    _flip_a_byte(manifest.path_of(victim))
    assert engine.read(out, partitions=[f"day={DAYS[2]}"]).num_rows == 120
    with pytest.raises(IntegrityError):
        engine.read(out, partitions=[commit.partition_of(victim["path"])])
    with pytest.raises(IntegrityError):
        engine.read(out)

    # compare: a staged day against the live output (whose damaged day is not compared) reads only that day
    write_days(backend, src, {DAYS[2]: 126}, seed=5)
    staged = engine.run(job, src, out, partition_by=["day", "region"], where=f"day = '{DAYS[2]}'", stage_to=st)
    assert sum(p.rows_a for p in staged.diff.partitions) == 120
    assert sum(p.rows_b for p in staged.diff.partitions) == 126
    d = compare(out, st, partitions=[f"day={DAYS[2]}"])
    assert d.a.rows == 120 and d.a.total_rows == 720 and d.b.rows == 126
    with pytest.raises(IntegrityError):
        compare(out, st)
    # an unpartitioned output has no partitions to pick
    flat = str(tmp_path / "flat")
    engine.run(job, src, flat)
    with pytest.raises(PartitionNotFoundError, match="not partitioned"):
        engine.read(flat, partitions=[f"day={DAYS[0]}"])


def test_an_old_staged_result_never_replaces_newer_live_data(tmp_path, cli):
    """A result staged, then left unpublished while a newer run rewrote the same day, is refused by publish
    (it would put older data back); --force replaces it on purpose."""
    b = local_backend(tmp_path)
    src_a, src_b, out, staged = (str(tmp_path / n) for n in ("a", "b", "out", "staged"))
    write_days(b, src_a, {d: 100 for d in DAYS}, seed=1)
    write_days(b, src_b, {d: 100 for d in DAYS}, seed=1)
    write_days(b, src_b, {DAYS[2]: 300}, seed=2)
    engine.run(JOB, src_a, out, partition_by=["day"])
    engine.run(JOB, src_a, out, partition_by=["day"], mode="overwrite-partitions", where=f"day = '{DAYS[2]}'",
               stage_to=staged, force=True)                             # staged: day 3 with 100 rows
    newer = engine.run(JOB, src_b, out, partition_by=["day"], mode="overwrite-partitions",
                       where=f"day = '{DAYS[2]}'")                       # live: day 3 rewritten, 300 rows
    before = raw_manifest(b, out)
    with pytest.raises(engine.CommitError, match="changed after it was staged"):
        publish(staged)
    assert raw_manifest(b, out) == before and counts(engine.read(out))[DAYS[2]] == 300
    assert cli("publish", staged) == 1
    assert cli("publish", staged, "--force") == 0
    assert counts(engine.read(out))[DAYS[2]] == 100
    assert commit.load_manifest(b.fs, out).doc["partitions"][f"day={DAYS[2]}"]["run_id"] != newer.run_id
