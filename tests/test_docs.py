"""The docs/ pages hold only code that runs: their snippets, example files and commands, run for real.

* docs/reading-outputs.md: every Python block (Spark's excepted) against a real partitioned output with
  a failed run's attempt files beside it, compared with a reference computed from the input.
* docs/scheduling.md: the crontab line run as cron runs it (its `%` rules, `/bin/sh`), the Kubernetes
  CronJob's command (docs/examples/cronjob.yaml) run as the pod would, and (slow) the Airflow DAG
  (docs/examples/airflow_dag.py) loaded by Airflow's DagBag and run by `airflow dags test`.
* docs/troubleshooting.md: a section for every public exception class of engine/errors.py.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import errors
from engine.faults import Faults

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
DAYS = ["2026-11-29", "2026-11-30"]


def code_blocks(page: Path, lang: str) -> list[str]:
    """The fenced code blocks of ``page`` whose info string is ``lang``, in order."""
    return re.findall(rf"^```{re.escape(lang)}\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def write_events(root: Path, days: list[str]) -> pa.Table:
    """The events the examples read, ``root/day=D/part-0.parquet``; returns them with their ``day``."""
    pieces = []
    for d in days:
        t = pa.table({"region": ["eu", "us", "eu", "ap"] * 50, "v": list(range(200))})
        (root / f"day={d}").mkdir(parents=True, exist_ok=True)
        pq.write_table(t, root / f"day={d}" / "part-0.parquet")
        pieces.append(t.append_column("day", pa.array([d] * t.num_rows)))
    return pa.concat_tables(pieces)


def reference(events: pa.Table) -> dict[tuple[str, str], tuple[int, int]]:
    """(day, region) -> (n, total), computed in plain Python."""
    out: dict[tuple[str, str], list[int]] = {}
    for row in events.to_pylist():
        acc = out.setdefault((row["day"], row["region"]), [0, 0])
        acc[0] += 1
        acc[1] += row["v"]
    return {k: (n, total) for k, (n, total) in out.items()}


def as_dict(rows) -> dict[tuple[str, str], tuple[int, int]]:
    return {(str(day), region): (n, total) for day, region, n, total in rows}


def daily_job():
    namespace: dict = {}
    exec(compile((EXAMPLES / "daily_events.py").read_text(), str(EXAMPLES / "daily_events.py"), "exec"), namespace)
    return namespace["job"]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def mapreduce_script() -> str:
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "mapreduce")
        if os.path.isfile(candidate):
            return candidate
    found = shutil.which("mapreduce")
    assert found, "the `mapreduce` script is not installed; run `pip install -e .`"
    return found


# ---------------------------------------------------------------------------------------------
# docs/reading-outputs.md


def test_reading_outputs_snippets(tmp_path, monkeypatch):
    events = write_events(tmp_path / "events", DAYS)
    job = daily_job()
    opts = dict(partition_by=["day"], mode="overwrite-partitions", where="day = '{date}'")
    for d in DAYS:
        engine.run(job, str(tmp_path / "events"), str(tmp_path / "agg"), date=d, **opts)
    # A rerun of the second day that fails: its finished reduce tasks' files stay under agg/_temporary/.
    with pytest.raises(errors.StageFailedError):
        engine.run(job, str(tmp_path / "events"), str(tmp_path / "agg"), date=DAYS[1], force=True,
                   partition_size="1B", faults=Faults(fail_attempts={("reduce", 1): 99}), **opts)
    leftovers = list((tmp_path / "agg" / "_temporary").rglob("*.parquet"))
    assert leftovers, "the failed run should leave attempt files for --resume"

    want = reference(events)
    monkeypatch.chdir(tmp_path)
    page = DOCS / "reading-outputs.md"
    blocks = code_blocks(page, "python")
    tested = [b for b in blocks if not b.startswith("# Spark")]
    assert len(blocks) - len(tested) == 1, "exactly one (untested) Spark block"
    ns: dict = {}
    for block in tested:
        exec(compile(block, str(page), "exec"), ns)

    manifest = json.loads((tmp_path / "agg" / "_SUCCESS").read_text())
    assert sorted(ns["files"]) == sorted(f"agg/{f['path']}" for f in manifest["files"])
    cols = ["day", "region", "n", "total"]
    assert as_dict(zip(*[ns["table"][c].to_pylist() for c in cols])) == want
    assert as_dict(zip(*[ns["day"][c].to_pylist() for c in cols])) == {k: v for k, v in want.items()
                                                                       if k[0] == DAYS[1]}
    assert as_dict(ns["pdf"][cols].itertuples(index=False)) == want
    assert as_dict(ns["pdf_files"][cols].itertuples(index=False)) == want
    per_day = {d: (sum(n for (dd, _), (n, _) in want.items() if dd == d),
                   sum(t for (dd, _), (_, t) in want.items() if dd == d)) for d in DAYS}
    assert {str(d): (n, t) for d, n, t in ns["per_day"]} == per_day
    assert {str(d): n for d, n in ns["per_day_pl"].iter_rows()} == {d: n for d, (n, _) in per_day.items()}

    # What the page says about globbing: the recursive glob picks up the failed run's attempt files.
    [(rows, events_n)] = duckdb.sql("SELECT count(*), sum(n) FROM read_parquet('agg/**/*.parquet')").fetchall()
    assert (rows, events_n) != (len(want), sum(n for n, _ in want.values()))
    assert rows > len(want)


# ---------------------------------------------------------------------------------------------
# docs/scheduling.md: cron


def yesterday_utc() -> str:
    return (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()


def cron_command(line: str) -> tuple[list[str], str]:
    """The schedule fields and the command cron gives /bin/sh: up to the first unescaped `%`, with `\\%`
    made `%` (what follows an unescaped `%` is the command's standard input; the page has none)."""
    fields = line.split(None, 5)
    command = fields[5]
    assert not re.search(r"(?<!\\)%", command), "an unescaped % would end the command"
    return fields[:5], command.replace("\\%", "%")


def test_crontab_line_runs_the_job_for_yesterday(tmp_path):
    lines = [ln for b in code_blocks(DOCS / "scheduling.md", "crontab") for ln in b.splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1, lines
    schedule, command = cron_command(lines[0])
    assert schedule == ["30", "2", "*", "*", "*"]
    home = re.search(r"cd (\S+) &&", command).group(1)
    # The page's pipeline directory, laid out as it describes: the job file, the input, a venv's script.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    os.symlink(mapreduce_script(), tmp_path / ".venv" / "bin" / "mapreduce")
    shutil.copy(EXAMPLES / "daily_events.py", tmp_path / "daily_events.py")
    day = yesterday_utc()
    events = write_events(tmp_path / "events", [day])
    command = command.replace(home, str(tmp_path))
    env = cli_env(PATH="/usr/bin:/bin", HOME=str(tmp_path))   # cron's PATH
    for attempt in range(2):
        proc = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, (proc.stdout, proc.stderr, (tmp_path / "daily_events.log").read_text())
    log = (tmp_path / "daily_events.log").read_text()
    assert "committed 3 rows" in log and "nothing to do" in log, log      # the second run was a no-op
    table = engine.read(str(tmp_path / "agg"))
    assert as_dict(zip(*[table[c].to_pylist() for c in ["day", "region", "n", "total"]])) == reference(events)
    assert list(json.loads((tmp_path / "agg" / "_SUCCESS").read_text())["dates"]) == [day]


# ---------------------------------------------------------------------------------------------
# docs/examples/cronjob.yaml


def test_kubernetes_cronjob_runs_a_real_cli_invocation(tmp_path):
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((EXAMPLES / "cronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert set(plain) == {"JOB", "EVENTS", "AGG"}
    # The pod's command as the container runs it, with the paths of this machine instead of the image's.
    day = yesterday_utc()
    events = write_events(tmp_path / "events", [day])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(mapreduce_script(), bindir / "mapreduce")
    env = cli_env(JOB=str(EXAMPLES / "daily_events.py"), EVENTS=str(tmp_path / "events"),
                  AGG=str(tmp_path / "agg"), PATH=f"{bindir}:/usr/bin:/bin", ENGINE_HISTORY="off")
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"day={day}" in proc.stdout
    table = engine.read(str(tmp_path / "agg"))
    assert as_dict(zip(*[table[c].to_pylist() for c in ["day", "region", "n", "total"]])) == reference(events)


# ---------------------------------------------------------------------------------------------
# docs/examples/airflow_dag.py (slow: installs Airflow into a venv of its own, ~2 min)


def airflow_venv(tmp_path_factory) -> Path:
    """A venv with apache-airflow: $AIRFLOW_VENV when set, else a fresh one."""
    given = os.environ.get("AIRFLOW_VENV")
    if given:
        return Path(given)
    venv = tmp_path_factory.mktemp("airflow") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "apache-airflow"], capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode != 0:
        if os.environ.get("REQUIRE_SERVICES"):
            pytest.fail(f"pip install apache-airflow failed:\n{proc.stderr[-3000:]}")
        pytest.skip(f"pip install apache-airflow failed: {proc.stderr.strip().splitlines()[-1:]}")
    return venv


DAGBAG_CHECK = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("daily_events")
task = dag.get_task("aggregate") if dag else None
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "command": task.bash_command if task else None, "retries": task.retries if task else None}))
"""


@pytest.mark.slow
def test_airflow_dag_runs_the_cli_for_the_logical_date(tmp_path, tmp_path_factory):
    venv = airflow_venv(tmp_path_factory)
    day = "2026-11-29"
    events = write_events(tmp_path / "events", [day, "2026-11-30"])
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(EXAMPLES / "airflow_dag.py", dags / "airflow_dag.py")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", MAPREDUCE_BIN=mapreduce_script(),
               DAILY_EVENTS_JOB=str(EXAMPLES / "daily_events.py"), DAILY_EVENTS_INPUT=str(tmp_path / "events"),
               DAILY_EVENTS_OUTPUT=str(tmp_path / "agg"), ENGINE_HISTORY=str(tmp_path / "history.sqlite"))
    airflow = str(venv / "bin" / "airflow")

    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", DAGBAG_CHECK, str(dags)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bag = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bag["errors"] == {} and bag["dags"] == ["daily_events"], bag
    assert "--date {{ ds }}" in bag["command"] and bag["retries"] == 3, bag

    # The engine runs with the project's PYTHONPATH (Airflow's own process does not need it).
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([airflow, "dags", "test", "daily_events", day], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    logged = run.stdout + run.stderr
    assert f"--date {day}" in logged and "Command exited with return code 0" in logged, logged[-3000:]

    # Exactly that date was computed and committed, with the reference's numbers.
    manifest = json.loads((tmp_path / "agg" / "_SUCCESS").read_text())
    assert list(manifest["dates"]) == [day] and list(manifest["partitions"]) == [f"day={day}"]
    table = engine.read(str(tmp_path / "agg"))
    want = {k: v for k, v in reference(events).items() if k[0] == day}
    assert as_dict(zip(*[table[c].to_pylist() for c in ["day", "region", "n", "total"]])) == want


# ---------------------------------------------------------------------------------------------
# docs/troubleshooting.md


def public_exceptions() -> list[str]:
    return sorted(name for name, obj in vars(errors).items()
                  if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
                  and not name.startswith("_"))


def test_troubleshooting_has_a_section_for_every_exception_class():
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,3} `?(\w+)`?[ \t]*$", page, re.M))
    names = public_exceptions()
    assert len(names) >= 20 and "EngineError" in names
    missing = [n for n in names if n not in headings]
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"
    assert set(errors.__all__) <= set(names)


def test_every_doc_page_is_linked_from_another_or_the_security_page():
    pages = {p.name for p in DOCS.glob("*.md")}
    assert {"writing-jobs.md", "cluster.md", "scheduling.md", "reading-outputs.md", "troubleshooting.md",
            "security.md"} <= pages
    text = {p: (DOCS / p).read_text(encoding="utf-8") for p in pages}
    for page in pages:
        for target in re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]+)?\)", text[page]):
            assert target in pages, f"{page} links to a missing page {target}"
