"""The topic notebooks run top to bottom in a fresh kernel and show the right numbers.

Each notebook generates its own small input, runs it in a kernel on this test's interpreter (the
private kernel spec of ``test_notebook``), and one extra cell reports where it wrote its data. Its
outputs are then checked against references computed here without the engine (DuckDB, or plain
Python over the input files), and its printed figures against those references.

* ``skew.ipynb``: a hot key, the skew decisions, reduce task sizes with skew handling off and on.
* ``speculation.ipynb``: a slow map task on the embedded cluster, the speculative copy winning, no
  duplicate output, the timeline (slow: it starts a cluster and waits out a straggler once).
* ``s3.ipynb``: a job with input, output and shuffle on a moto S3 server the notebook starts.
* ``tuning.ipynb``: a benchmark suite with the combine sweep, and a sweep of input partitions
  through the harness's API (slow: it runs the suite in a subprocess).
* ``joins.ipynb``: inner, left and anti joins of generated tables, broadcast and shuffle.

And every notebook in ``notebooks/`` is stored with its outputs stripped and is executed by a test.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures import AWS_ENV
from test_notebook import CELL_TIMEOUT, assert_no_errors, committed_table, display_of, private_kernel, stdout_of, tagged

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BOKEH = "application/vnd.bokehjs_exec.v0+json"

PROBE_HEAD = """
import json as _json, sys as _sys
_probe = {"executable": _sys.executable, "engine": engine.__file__, "workdir": workdir}
"""
PROBE_TAIL = """
print("PROBE" + _json.dumps(_probe))
"""


def run_notebook(name: str, probe: str, tmp: Path, *, before_tag: str | None = None, env: dict | None = None):
    """Execute ``notebooks/<name>`` with the probe cell appended (or put before the cell tagged
    ``before_tag``); (notebook with outputs, the probe's JSON)."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell((PROBE_HEAD + probe + PROBE_TAIL).strip())
    at = len(nb.cells)
    if before_tag is not None:
        at = next(i for i, c in enumerate(nb.cells) if before_tag in c.get("metadata", {}).get("tags", []))
    nb.cells.insert(at, cell)
    client = nbclient.NotebookClient(nb, km=private_kernel(tmp), kernel_name="python3", timeout=CELL_TIMEOUT,
                                     startup_timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}})
    kernel_env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    kernel_env.update(IPYTHONDIR=str(tmp / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
                      PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    kernel_env.update(env or {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_RUNTIME_DIR", kernel_env["JUPYTER_RUNTIME_DIR"])
        client.execute(env=kernel_env)
    probe_json = json.loads(stdout_of(nb.cells.pop(at)).split("PROBE", 1)[1])
    assert_no_errors(nb, probe_json)
    return nb, probe_json


def executed(tmp_path_factory, name: str, probe: str, **kw):
    nb, probe_json = run_notebook(name, probe, tmp_path_factory.mktemp(name.split(".")[0]), **kw)
    paths = {k: Path(v) if isinstance(v, str) else v for k, v in probe_json.items()
             if k not in ("executable", "engine")}
    return nb, paths


def bokeh_plots(cell) -> int:
    return sum(BOKEH in o.get("data", {}) for o in cell.outputs)


def input_table(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def duckdb_rows(sql: str) -> list[tuple]:
    duckdb = pytest.importorskip("duckdb")
    return duckdb.connect().execute(sql).fetchall()


# ---------------------------------------------------------------------------------------------
# skew.ipynb


@pytest.fixture(scope="module")
def skew_nb(tmp_path_factory):
    nb, paths = executed(tmp_path_factory, "skew.ipynb", '_probe.update(clicks=clicks_in)')
    yield nb, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


def test_skew_notebook_decisions_and_task_sizes(skew_nb):
    nb, paths = skew_nb
    clicks = input_table(paths["clicks"])
    by_user: dict[str, list[float]] = collections.defaultdict(list)
    for user, latency in zip(clicks["user"].to_pylist(), clicks["latency_ms"].to_pylist()):
        by_user[user].append(latency)
    hot = max(by_user, key=lambda u: len(by_user[u]))
    assert hot == "bot-7" and len(by_user[hot]) > 0.35 * clicks.num_rows

    decisions = stdout_of(tagged(nb, "decisions"))
    assert re.search(r"isolate: hash partition \d+ holds .*hot key\(s\) \('bot-7',\)", decisions), decisions
    assert "get a reduce task of their own" in decisions
    assert "isolate" not in stdout_of(tagged(nb, "decisions-off"))

    # The reduce tasks' rows: with skew handling the largest task reads the bot's rows alone; without,
    # the bot's rows and those of the other users of its hash partition.
    lines = dict(line.strip().split(": ", 1) for line in stdout_of(tagged(nb, "tasks")).splitlines())
    largest = {k: int(re.search(r"largest ([\d,]+)", v).group(1).replace(",", "")) for k, v in lines.items()}
    assert largest["skew on"] == len(by_user[hot])
    assert largest["skew off"] > len(by_user[hot])
    assert all(f"all {clicks.num_rows:,}" in v for v in lines.values()), lines
    assert bokeh_plots(tagged(nb, "plot")) == 1

    # The committed medians, both runs, against the median computed here per user.
    for name in ("medians-skew-on", "medians-skew-off"):
        out = committed_table(paths["workdir"] / name).to_pylist()
        assert len(out) == len(by_user)
        for row in out:
            values = by_user[row["user"]]
            assert row["events"] == len(values) and row["median_ms"] == pytest.approx(statistics.median(values))
    same = stdout_of(tagged(nb, "same-answer"))
    assert "same output with skew on and off: True" in same
    assert f"bot-7: {len(by_user[hot]):,} events, median {statistics.median(by_user[hot])} ms" in same


def test_skew_notebook_combinable_aggregation(skew_nb):
    nb, paths = skew_nb
    clicks = input_table(paths["clicks"])
    expected = {u: (n, m) for u, n, m in duckdb_rows(
        f"select user, count(*), avg(latency_ms) from read_parquet('{paths['clicks'].as_posix()}/*.parquet') group by user")}
    got = committed_table(paths["workdir"] / "summary").to_pylist()
    assert {r["user"]: r["events"] for r in got} == {u: n for u, (n, _) in expected.items()}
    assert all(r["mean_ms"] == pytest.approx(expected[r["user"]][1], rel=1e-9) for r in got)
    shown = stdout_of(tagged(nb, "combinable"))
    assert f"map stage: {clicks.num_rows:,} rows in" in shown and "hot keys isolated: []" in shown
    partial = int(re.search(r"([\d,]+) partial rows shuffled", shown).group(1).replace(",", ""))
    assert partial < clicks.num_rows / 5       # the bot's rows were combined on the map side
    assert "same as pyarrow: True" in stdout_of(tagged(nb, "crosscheck"))


# ---------------------------------------------------------------------------------------------
# speculation.ipynb


@pytest.fixture(scope="module")
def speculation_nb(tmp_path_factory):
    nb, paths = executed(tmp_path_factory, "speculation.ipynb", '_probe.update(corpus=corpus)')
    yield nb, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_speculation_notebook(speculation_nb):
    nb, paths = speculation_nb
    expected: collections.Counter[str] = collections.Counter()
    for path in sorted(paths["corpus"].iterdir()):
        expected.update(path.read_text().split())
    assert len(list(paths["corpus"].iterdir())) == 6

    assert "on the embedded local cluster (2 worker process(es)" in stdout_of(tagged(nb, "healthy"))
    waited = stdout_of(tagged(nb, "no-speculation"))
    assert float(re.search(r"speculation off: ([\d.]+) s", waited).group(1)) >= 6.0
    assert "speculative attempts: []" in waited
    won = stdout_of(tagged(nb, "speculation"))
    assert float(re.search(r"speculation on: ([\d.]+) s", won).group(1)) < 6.0
    assert "speculative attempt won: r0-map partition 2: attempt 0 on tcp://" in won

    attempts = stdout_of(tagged(nb, "attempts")).splitlines()
    assert re.fullmatch(r"attempt 0 on tcp://\S+: cancelled, speculative=False, [\d.]+ s", attempts[0]), attempts
    assert re.fullmatch(r"attempt 1 on tcp://\S+: ok, speculative=True, [\d.]+ s", attempts[1]), attempts
    assert attempts[0].split()[3] != attempts[1].split()[3]          # the copy ran on the other worker
    assert "files on disk == files in the manifest: True" in attempts[2]

    # Both outputs, read with pyarrow through their manifests: each word once, with its count.
    for name in ("speculation", "no-speculation", "healthy"):
        out = paths["workdir"] / name
        table = committed_table(out)
        words = table["word"].to_pylist()
        assert len(words) == len(set(words)) == len(expected)
        assert dict(zip(words, table["count"].to_pylist())) == dict(expected)
        listed = {e["path"] for e in json.loads((out / "_SUCCESS").read_text())["files"]}
        assert {p.name for p in out.iterdir() if not p.name.startswith("_")} == listed
    shown = stdout_of(tagged(nb, "no-duplicates"))
    assert f"{len(expected)} rows, {len(expected)} distinct words" in shown
    assert "same counts as the plain Python count: True" in shown and "intact" in shown
    assert bokeh_plots(tagged(nb, "timeline")) == 2


# ---------------------------------------------------------------------------------------------
# s3.ipynb

S3_PROBE = """
import s3fs as _s3fs
_fs = _s3fs.S3FileSystem(**storage_options)
_copy = os.path.join(workdir, "downloaded-output")
_fs.get(out.removeprefix("s3://") + "/", _copy + "/", recursive=True)
_probe.update(orders=local_orders, copy=_copy, keys=sorted(_fs.find("lake")))
"""


@pytest.fixture(scope="module")
def s3_nb(tmp_path_factory):
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    # the probe runs before the notebook stops its server, and copies the output with plain s3fs
    nb, paths = executed(tmp_path_factory, "s3.ipynb", S3_PROBE, before_tag="cleanup", env=AWS_ENV)
    yield nb, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


def test_s3_notebook(s3_nb):
    import crc32c
    nb, paths = s3_nb
    expected = duckdb_rows(f"""
        select product, count(*), sum(quantity), sum(quantity * price) as revenue
        from read_parquet('{paths['orders'].as_posix()}/*.parquet') group by product order by revenue desc""")
    copy = paths["copy"]
    doc = json.loads((copy / "_SUCCESS").read_text())
    for entry in doc["files"]:         # every committed object, byte for byte as the manifest says
        data = (copy / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"] and crc32c.crc32c(data) == entry["crc32c"]
    assert "notebook-secret" not in json.dumps(doc) and "notebook-key" not in json.dumps(doc)
    rows = committed_table(copy).to_pylist()
    assert [r["product"] for r in rows] == [e[0] for e in expected]        # sorted by revenue
    for r, (_, orders, units, revenue) in zip(rows, expected):
        assert (r["orders"], r["units"]) == (orders, units) and r["revenue"] == pytest.approx(revenue, rel=1e-9)

    total = sum(e[1] for e in expected)
    assert total == 20_000
    assert f"committed {len(expected)} rows" in stdout_of(tagged(nb, "run"))
    assert f"intact: {len(doc['files'])} files, {len(expected)} rows" in stdout_of(tagged(nb, "verify"))
    assert str(expected[0][2]) in display_of(tagged(nb, "read"))
    manifest = stdout_of(tagged(nb, "manifest"))
    assert f"run {doc['run_id']}" in manifest and doc["fingerprint"] in manifest
    assert all(f"crc32c {e['crc32c']:#010x}" in manifest for e in doc["files"])
    assert "same as pyarrow: True" in stdout_of(tagged(nb, "crosscheck"))
    rerun = stdout_of(tagged(nb, "rerun"))
    assert "skipped: True" in rerun and "shuffle directory left behind: False" in rerun
    # The bucket holds the input and the committed output, nothing else (no shuffle or temporary
    # objects), and the notebook's listing of the output shows the same objects.
    output_keys = sorted(f"lake/reports/revenue-by-product/{e['path']}" for e in doc["files"])
    output_keys.append("lake/reports/revenue-by-product/_SUCCESS")
    input_keys = [f"lake/orders/{p.name}" for p in sorted(paths["orders"].glob("*.parquet"))]
    assert paths["keys"] == sorted(input_keys + output_keys)
    listing = [word for word in stdout_of(tagged(nb, "listing")).split() if word.startswith("lake/")]
    assert sorted(listing) == sorted(output_keys)


# ---------------------------------------------------------------------------------------------
# joins.ipynb


@pytest.fixture(scope="module")
def joins_nb(tmp_path_factory):
    nb, paths = executed(tmp_path_factory, "joins.ipynb", "_probe.update(orders=orders_in, customers=customers_in)")
    yield nb, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


def test_joins_notebook(joins_nb):
    nb, paths = joins_nb
    o, c = (f"read_parquet('{paths[n].as_posix()}/*.parquet')" for n in ("orders", "customers"))
    expected = duckdb_rows(f"""select segment, country, count(*), sum(amount) as revenue from {o} join {c} on o_cust = c_id
                               group by all order by revenue desc""")
    for name in ("revenue", "revenue-shuffled"):
        rows = committed_table(paths["workdir"] / name).to_pylist()
        assert len(rows) == len(expected) == 12
        got = {(r["segment"], r["country"]): (r["orders"], r["revenue"]) for r in rows}
        for seg, country, n, revenue in expected:
            assert got[(seg, country)][0] == n and got[(seg, country)][1] == pytest.approx(revenue, rel=1e-9)
        assert [r["revenue"] for r in rows] == sorted((r["revenue"] for r in rows), reverse=True)

    orphans = sorted(r[0] for r in duckdb_rows(f"select o_id from {o} where o_cust not in (select c_id from {c})"))
    assert len(orphans) > 1000
    got_orphans = committed_table(paths["workdir"] / "orphans")
    assert sorted(got_orphans["o_id"].to_pylist()) == orphans
    enriched = committed_table(paths["workdir"] / "enriched")
    assert enriched.num_rows == duckdb_rows(f"select count(*) from {o}")[0][0]
    assert enriched["segment"].null_count == len(orphans)
    assert f"{len(orphans):,} orders without a known customer" in stdout_of(tagged(nb, "left"))
    assert f"{len(orphans):,} orphan orders" in stdout_of(tagged(nb, "anti"))

    assert stdout_of(tagged(nb, "decision")).startswith("broadcast - stage 1: broadcast inner join")
    shuffle = stdout_of(tagged(nb, "shuffle"))
    assert shuffle.startswith("shuffle - stage 1: shuffle inner join") and "forced by engine.join.strategy" in shuffle
    assert "same answer as the broadcast join: True" in shuffle
    assert "Job 'revenue-by-segment'" in stdout_of(tagged(nb, "job"))
    check = stdout_of(tagged(nb, "crosscheck"))
    assert check.count(": True") == 3 and "False" not in check


# ---------------------------------------------------------------------------------------------
# tuning.ipynb


@pytest.fixture(scope="module")
def tuning_nb(tmp_path_factory):
    nb, paths = executed(tmp_path_factory, "tuning.ipynb", "_probe.update(results=results, layouts=layouts)")
    yield nb, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_tuning_notebook(tuning_nb):
    nb, paths = tuning_nb
    assert "exit code 0" in stdout_of(tagged(nb, "suite"))
    records = [json.loads(line) for line in paths["results"].read_text().splitlines()]
    measurements = [r for r in records if r["kind"] == "measurement"]
    engine_runs = [r for r in measurements if r["system"] == "engine"]
    assert {r["params"].get("combine") for r in engine_runs if r["sweep"] == "combine"} == {True, False}
    assert all(r["check"]["ok"] and len(r["runs"]) == 2 for r in engine_runs)      # --quick: two repeats
    shown = stdout_of(tagged(nb, "records")).splitlines()
    for r in measurements:     # every record of the file, as the notebook prints it
        knob = f"{r['sweep']}={r['params'][r['sweep']]}" if r["sweep"] else "-"
        assert any(line.split()[:4] == [r["case"], r["system"], knob, f"{r['median']:.3f}"] for line in shown), r
    assert "| combine | wordcount/wordcount-combine |" in stdout_of(tagged(nb, "summary"))

    # The sweep: each layout's committed answer against DuckDB over the same files.
    workdir = paths["workdir"]
    for files in (1, 2, 4, 8):
        folder = workdir / f"g1-{files}-files"
        assert len(list(folder.glob("*.parquet"))) == files
        expected = dict(duckdb_rows(f"select id1, sum(v1) from read_parquet('{folder.as_posix()}/*.parquet') group by id1"))
        table = committed_table(workdir / f"q1-{files}-files")
        assert dict(zip(table["id1"].to_pylist(), table["v1"].to_pylist())) == expected
    sweep = stdout_of(tagged(nb, "sweep")).splitlines()
    assert [line.split()[0] for line in sweep[1:]] == ["1", "2", "4", "8"]
    assert all(len(json.loads(line[line.index("["):])) == 3 for line in sweep[1:])
    assert stdout_of(tagged(nb, "sweep-check")).count("same as pyarrow: True") == 4
    assert bokeh_plots(tagged(nb, "sweep-plot")) == 1


# ---------------------------------------------------------------------------------------------
# Every notebook: stored stripped, executed by a test


def stored_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", stored_notebooks(), ids=lambda p: p.stem)
def test_every_notebook_is_stored_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name} has outputs"
    assert any(c.cell_type == "markdown" for c in nb.cells)
    text = "".join(c.source for c in code)
    assert "tempfile.mkdtemp(" in text and "/home/" not in text and "/tmp/" not in text


def test_every_notebook_is_executed_by_a_test():
    """A notebook is executed by a test module that runs notebooks in a kernel and names its file."""
    executed_names = set()
    for module in sorted((ROOT / "tests").glob("test_*.py")):
        source = module.read_text()
        if "nbclient" in source:
            executed_names.update(re.findall(r"""["'/ ]([\w-]+\.ipynb)["']""", source))
    assert {p.name for p in stored_notebooks()} <= executed_names
