"""Start-up cost: the README's word count and its no-op rerun as command-line wall time, ``import engine``,
and where a run in the driver process stops paying off.

The ``startup`` suite (``python -m benchmarks --suites startup``; not in the default set) times, each
in a fresh process and as the median of ``STARTUP_REPEAT`` runs:

* ``cli-wordcount``: ``mapreduce run jobs/wordcount.py --input jobs/data/text --output OUT`` into a
  fresh ``OUT`` every time (the command of the README's quick start), against DuckDB answering the
  same word count in a fresh ``python`` process (importing duckdb, writing its answer as Parquet),
  and against the same count by pyarrow alone in a fresh process (the floor of any pyarrow job);
* ``cli-noop``: the same command again over its own committed output ("nothing to do");
* ``import``: ``python -c "import engine"``, beside ``python -c pass`` (the interpreter), a job file's
  imports (``import pyarrow.compute; from engine import Job, agg``) and ``import pyarrow.compute``
  alone (what the job file itself needs: the floor of both commands above).

Both answers are checked against a word count by pyarrow in this process.

The sweep (``python -m benchmarks.startup sweep [--data DIR] [--sizes 1,16,64,256] [--repeat 3]``)
runs word count and G1 q1 on inputs of each size (MiB) both in the driver process (``engine.local.
max-bytes`` above the input) and on the embedded 2-process cluster (``engine.local.max-bytes: 0``):
once as a fresh ``mapreduce run`` process (cluster start-up included), once inside one process with
the cluster already running (a notebook's second cell). It prints a table and appends JSON lines.

Subprocesses run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed from their
environment), as an installed engine runs; a first untimed run writes the caches.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import pyarrow as pa

from benchmarks import common, harness
from benchmarks.harness import ENGINE, Measured

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_INPUT = os.path.join("jobs", "data", "text")
README_JOB = os.path.join("jobs", "wordcount.py")
STARTUP_REPEAT = 10
QUICK_REPEAT = 3
TARGET_CLI_S = 1.0
TARGET_NOOP_S = 0.5

DUCKDB_WORDCOUNT = """
import sys, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.sql(f\"\"\"COPY (SELECT word, count(*)::BIGINT AS count FROM (
    SELECT unnest(regexp_split_to_array(lower(line), '\\\\s+')) AS word
    FROM read_csv('{src}/*.txt', columns={{'line': 'VARCHAR'}}, header=false, delim=chr(1), quote='', escape=''))
  WHERE word <> '' GROUP BY word) TO '{out}' (FORMAT parquet)\"\"\")
"""


PYARROW_WORDCOUNT = """
import os, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
text = b"".join(open(os.path.join(src, f), "rb").read() for f in sorted(os.listdir(src)) if f.endswith(".txt"))
words = pc.list_flatten(pc.ascii_split_whitespace(pc.utf8_lower(pa.array(text.decode().splitlines()))))
words = pc.filter(words, pc.not_equal(words, ""))
counts = pa.table({"word": words}).group_by("word").aggregate([([], "count_all")])
pq.write_table(counts.rename_columns(["word", "count"]), out)
"""


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with bytecode caching on and the repository first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def wall(cmd: list[str], env: dict[str, str], *, cwd: str = REPO) -> float:
    """Seconds from start to exit of ``cmd``; its failure raises with its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return seconds


def cli_run(out: str, *, job: str = README_JOB, data: str = README_INPUT) -> list[str]:
    return [sys.executable, "-m", "engine", "run", job, "--input", data, "--output", out, "-q"]


def reference_counts(data: str) -> pa.Table:
    """Word counts by pyarrow in this process: lower-cased, split on ASCII whitespace."""
    import pyarrow.compute as pc
    text = b"\n".join(open(os.path.join(data, f), "rb").read() for f in sorted(os.listdir(data))
                      if f.endswith(".txt"))
    words = pc.list_flatten(pc.ascii_split_whitespace(pc.utf8_lower(pa.array(text.decode().split("\n")))))
    words = pc.filter(words, pc.not_equal(words, ""))
    return pa.table({"word": words}).group_by("word").aggregate([([], "count_all")]).rename_columns(
        ["word", "count"])


def _same(a: pa.Table, b: pa.Table) -> bool:
    from benchmarks import answers
    return answers.same(a.select(["word", "count"]), b.select(["word", "count"]), ["word"])[0]


# ---------------------------------------------------------------------------------------------
# The suite


def startup_cases(repeat: int, scratch: str, peers: tuple[str, ...] = ("duckdb",),
                  on_run=None) -> list[tuple[str, Measured, dict, list[str]]]:
    """``[(case, measured, check, notes)]`` of the three start-up cases."""
    import engine
    env = subprocess_env()
    reference = reference_counts(os.path.join(REPO, README_INPUT))
    warm = os.path.join(scratch, "warm")
    wall(cli_run(warm), env)                  # writes the bytecode caches; untimed
    shutil.rmtree(warm, ignore_errors=True)
    use_duckdb = "duckdb" in peers and _installed("duckdb")
    if use_duckdb:
        wall([sys.executable, "-c", "import duckdb"], env)

    outs: dict[str, list[str]] = {ENGINE: [], "duckdb": []}

    def engine_cli(keep: bool) -> harness.Outcome:
        out = os.path.join(scratch, f"wc-{uuid.uuid4().hex[:8]}")
        seconds = wall(cli_run(out), env)
        outs[ENGINE].append(out)
        return harness.Outcome(seconds, engine.read(out) if keep else None)

    def script(code: str, name: str):
        def run(keep: bool) -> harness.Outcome:
            out = os.path.join(scratch, f"{name}-{uuid.uuid4().hex[:8]}.parquet")
            seconds = wall([sys.executable, "-c", code, os.path.join(REPO, README_INPUT), out], env)
            import pyarrow.parquet as pq
            return harness.Outcome(seconds, pq.read_table(out) if keep else None)
        return run

    systems: dict[str, Any] = {ENGINE: engine_cli, "pyarrow": script(PYARROW_WORDCOUNT, "pyarrow")}
    if use_duckdb:
        systems["duckdb"] = script(DUCKDB_WORDCOUNT, "duckdb")
    cli = harness.measure(systems, repeat, on_run=on_run)
    cli_check = {"against": {}, "ok": False}
    results = []
    mine = cli.answers.get(ENGINE)
    refs = [("pyarrow", reference), ("pyarrow-process", cli.answers.get("pyarrow"))]
    for name, ref in refs + ([("duckdb", cli.answers.get("duckdb"))] if use_duckdb else []):
        ok = mine is not None and ref is not None and _same(mine, ref)
        cli_check["against"][name] = {"equal": ok, "how": "values"}
        results.append(ok)
    cli_check["ok"] = bool(results) and all(results)
    for out in outs[ENGINE]:
        shutil.rmtree(out, ignore_errors=True)

    committed = os.path.join(scratch, "noop")
    wall(cli_run(committed), env)

    def noop(keep: bool) -> harness.Outcome:
        seconds = wall(cli_run(committed), env)
        return harness.Outcome(seconds, engine.read(committed) if keep else None)
    rerun = harness.measure({ENGINE: noop}, repeat, on_run=on_run)
    ok = rerun.answers.get(ENGINE) is not None and _same(rerun.answers[ENGINE], reference)
    noop_check = {"against": {"pyarrow": {"equal": ok, "how": "values"}}, "ok": ok}

    def importing(statement: str):
        def run(keep: bool) -> harness.Outcome:
            return harness.Outcome(wall([sys.executable, "-c", statement], env))
        return run
    imports = harness.measure({ENGINE: importing("import engine"), "python": importing("pass"),
                               "job-file": importing("import pyarrow.compute; from engine import Job, agg"),
                               "pyarrow.compute": importing("import pyarrow.compute")}, repeat, on_run=on_run)
    where = "a fresh process each run; bytecode caches on"
    return [("cli-wordcount", cli, cli_check, [f"mapreduce run {README_JOB} --input {README_INPUT} --output <fresh>; "
                                               f"{where}; target {TARGET_CLI_S} s; pyarrow: the same count in a "
                                               "plain python process (the floor: its imports, pandas included, "
                                               "which pyarrow loads on its first conversion of a Python value)"]),
            ("cli-noop", rerun, noop_check, [f"the same command over its committed output; {where}; "
                                             f"target {TARGET_NOOP_S} s"]),
            ("import", imports, {}, [f"python -c 'import engine'; beside it the interpreter alone, what a job file "
                                     f"imports (pyarrow.compute; from engine import Job, agg) and pyarrow.compute "
                                     f"alone; {where}"])]


def _installed(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def run_suite(ctx) -> None:
    """The ``startup`` suite of ``python -m benchmarks``."""
    repeat = QUICK_REPEAT if ctx.profile.name == "quick" else max(STARTUP_REPEAT, ctx.repeat)
    from engine import cluster as embedded
    embedded.shutdown()        # an idle cluster here would share the cores with the timed processes
    scratch = tempfile.mkdtemp(prefix="startup-", dir=ctx.scratch)
    try:
        cases = startup_cases(repeat, scratch, ctx.peers,
                              on_run=lambda s, r, sec: ctx.progress.step(f"{s} repeat {r + 1}/{repeat}", sec))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for case, measured, check, notes in cases:
        for rec in harness.records("startup", case, measured, params={"repeat": repeat}, check=check or None,
                                   notes=notes):
            ctx.emit(rec)
        if check and not check.get("ok"):
            ctx.failures.append(f"startup {case}: answer differs from its reference")
        for system, err in measured.errors.items():
            ctx.failures.append(f"startup {case} {system}: {err}")
        med = harness.median(measured.runs.get(ENGINE, []))
        others = ", ".join(f"{s} {harness.median(r):.3f}s" for s, r in measured.runs.items() if s != ENGINE and r)
        ctx.progress.done(f"{case}: engine {common.fmt(med, 3)}s" + (f", {others}" if others else ""))


# ---------------------------------------------------------------------------------------------
# The sweep: in the driver vs on the embedded cluster, by input size


SWEEP_JOB = """
from jobs.groupby import QUESTIONS
job = QUESTIONS["q1"]
"""


def sweep_data(root: str, sizes_mib: list[int]) -> dict[tuple[str, int], str]:
    """``{(workload, MiB): directory}``: text corpora and G1 tables of about each size, two files each."""
    from benchmarks import datagen
    out = {}
    for mib in sizes_mib:
        size = mib << 20
        out[("wordcount", mib)] = datagen.text(size, 2, out=root)
        out[("q1", mib)] = datagen.g1(max(1000, int(size / datagen.G1_BYTES_PER_ROW)), parts=2, out=root)
    return out


def _inproc_seconds(job, data: str, where: str, scratch: str) -> float:
    import dask.config

    import engine
    limit = "1TiB" if where == "driver" else 0
    out = os.path.join(scratch, f"inproc-{uuid.uuid4().hex[:8]}")
    try:
        with dask.config.set({"engine.local.max-bytes": limit}):
            t0 = time.perf_counter()
            result = engine.run(job, data, out)
            seconds = time.perf_counter() - t0
        assert result.report.cluster.get("local") is (where == "driver"), result.report.cluster
        return seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def sweep(root: str, sizes_mib: list[int], repeat: int, results: str | None) -> list[dict]:
    from engine import cluster as embedded
    from jobs.groupby import QUESTIONS
    from jobs.wordcount import job as wordcount
    data = sweep_data(root, sizes_mib)
    scratch = tempfile.mkdtemp(prefix="startup-sweep-")
    job_file = os.path.join(scratch, "q1job.py")
    with open(job_file, "w") as f:
        f.write(SWEEP_JOB)
    jobs = {"wordcount": (wordcount, README_JOB), "q1": (QUESTIONS["q1"], job_file)}
    envs = {"driver": subprocess_env({"DASK_ENGINE__LOCAL__MAX_BYTES": "1TiB"}),
            "cluster": subprocess_env({"DASK_ENGINE__LOCAL__MAX_BYTES": "0"})}
    rows: list[dict] = []
    try:
        wall(cli_run(os.path.join(scratch, "warm")), envs["driver"])
        for (workload, mib), path in data.items():
            job, job_path = jobs[workload]
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if not f.startswith("_"))
            for how in ("cli", "in-process"):
                runs: dict[str, list[float]] = {"driver": [], "cluster": []}
                if how == "in-process":
                    _inproc_seconds(job, path, "cluster", scratch)     # start the cluster, warm its workers
                    _inproc_seconds(job, path, "driver", scratch)
                for r in range(repeat):
                    for where in (("driver", "cluster") if r % 2 == 0 else ("cluster", "driver")):
                        if how == "cli":
                            out = os.path.join(scratch, f"cli-{uuid.uuid4().hex[:8]}")
                            runs[where].append(wall(cli_run(out, job=job_path, data=path), envs[where]))
                            shutil.rmtree(out, ignore_errors=True)
                        else:
                            runs[where].append(_inproc_seconds(job, path, where, scratch))
                row = {"workload": workload, "MiB": mib, "bytes": size, "how": how,
                       "driver_s": round(statistics.median(runs["driver"]), 3),
                       "cluster_s": round(statistics.median(runs["cluster"]), 3),
                       "runs": runs, "load": os.getloadavg()[0]}
                row["driver_over_cluster"] = round(row["driver_s"] / row["cluster_s"], 3)
                rows.append(row)
                print(f"{workload:<10} {mib:>4} MiB {how:<10} driver {row['driver_s']:7.3f}s  cluster "
                      f"{row['cluster_s']:7.3f}s  ratio {row['driver_over_cluster']:.2f}  (load {row['load']:.1f})",
                      flush=True)
    finally:
        embedded.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    if results:
        common.append_records(results, [{"kind": "sweep", "suite": "startup", "case": "local-threshold", **r}
                                        for r in rows])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="driver process vs embedded cluster, by input size")
    s.add_argument("--data", default=None, help="dataset cache root (default: benchmarks/data)")
    s.add_argument("--sizes", default="1,16,64,256", help="input sizes in MiB (default: %(default)s)")
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    sweep(args.data or os.path.join(REPO, "benchmarks", "data"), sizes, args.repeat, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_suite", "startup_cases", "sweep", "reference_counts"]
