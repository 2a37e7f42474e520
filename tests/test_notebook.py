"""The notebooks run top to bottom in a fresh kernel and show the right numbers.

The kernel is this test's own interpreter: a kernel spec written at test time (with
``ipykernel``, whose ``argv`` is ``sys.executable``) in a private directory, so no ``python3``
kernel installed elsewhere on the machine can stand in for it, and it imports the engine of this
checkout. After a notebook's cells, one extra cell reports where the notebook wrote its data, and
the outputs are checked against references computed here without the engine.

* ``quickstart.ipynb``: a word count and grouped statistics with a sort.
* ``backfill.ipynb``: the incident scenario: daily partitioned runs, a bad release that drops a
  region for a week, the damaged days found from provenance, backfilled into staging with the fixed
  release, compared, published, and a canary that stops the bad release.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
BACKFILL = ROOT / "notebooks" / "backfill.ipynb"
TEXT = Path(jobs.SAMPLE_DATA) / "text"
CELL_TIMEOUT = 240

PROBE = """
import json as _json, sys as _sys
print("PROBE" + _json.dumps({"executable": _sys.executable, "engine": engine.__file__, "workdir": workdir,
                             "wc_out": wc_out, "sales_in": sales_in, "stats_out": stats_out}))
"""

BACKFILL_PROBE = """
import json as _json, sys as _sys
print("PROBE" + _json.dumps({"executable": _sys.executable, "engine": engine.__file__, "workdir": workdir,
                             "events": events, "out": out, "staging": staging,
                             "trial": os.path.join(workdir, "release-2-trial")}))
"""

# The country -> region table of the backfill notebook's correct releases (1 and 3), restated here.
REGIONS = {"DE": "emea", "FR": "emea", "GB": "emea", "US": "amer", "CA": "amer",
           "BR": "latam", "MX": "latam", "JP": "apac", "IN": "apac", "AU": "apac"}
DAYS = [f"2026-11-{d:02d}" for d in range(1, 31)]
DAMAGED = DAYS[19:26]           # 2026-11-20 .. 2026-11-26: written by release 2


# ---------------------------------------------------------------------------------------------
# References, computed without the engine


def reference_counts() -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(TEXT.iterdir()):
        for line in path.read_text(encoding="utf-8").splitlines():
            counts.update(line.lower().split())
    return dict(counts)


def committed_table(out: Path) -> pa.Table:
    """The files the ``_SUCCESS`` manifest lists, in its order, read with pyarrow alone."""
    doc = json.loads((out / "_SUCCESS").read_text())
    return pa.concat_tables([pq.read_table(out / entry["path"]) for entry in doc["files"]])


def reference_stats(sales_dir: Path) -> dict[str, dict]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(sales_dir.glob("*.parquet"))])
    region = np.asarray(table["region"].to_pylist(), dtype=object)
    amount = table["amount"].to_numpy()
    out = {}
    for r in sorted(set(region)):
        values = amount[region == r]
        out[r] = {"orders": len(values), "mean_amount": float(values.mean()),
                  "std_amount": float(values.std(ddof=1)), "top3_amounts": sorted(values.tolist(), reverse=True)[:3]}
    return out


# ---------------------------------------------------------------------------------------------
# Running the notebook


def private_kernel(tmp_path: Path):
    """A KernelManager for a 'python3' kernel that runs on this very interpreter."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "python3", overrides={"display_name": "Python 3 (test)"})
    spec = json.loads((kernels / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def display_of(cell, mime: str = "text/plain") -> str:
    for o in cell.outputs:
        if o.output_type in ("execute_result", "display_data") and mime in o.get("data", {}):
            return o["data"][mime]
    raise AssertionError(f"cell shows no {mime}: {cell.outputs}")


def word_rows(text: str) -> list[tuple[str, int]]:
    """(word, count) rows of a displayed table: a pandas DataFrame or, without pandas, a pyarrow Table."""
    if text.startswith("pyarrow.Table"):
        words = json.loads("[" + re.search(r"^word: \[\[(.*)\]\]$", text, flags=re.M).group(1) + "]")
        counts = json.loads("[" + re.search(r"^count: \[\[(.*)\]\]$", text, flags=re.M).group(1) + "]")
        return list(zip(words, counts))
    lines = text.splitlines()
    assert lines[0].split() == ["word", "count"], text
    rows = [re.fullmatch(r"\s*\d+\s+(\S+)\s+(\d+)\s*", line) for line in lines[1:]]
    assert all(rows), text
    return [(m.group(1), int(m.group(2))) for m in rows]


def execute(path: Path, probe: str, tmp: Path):
    """Run the notebook at ``path`` and then ``probe``; (notebook with outputs, the probe's JSON)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(probe.strip()))
    client = nbclient.NotebookClient(nb, km=private_kernel(tmp), kernel_name="python3", timeout=CELL_TIMEOUT,
                                     startup_timeout=120, resources={"metadata": {"path": str(path.parent)}})
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}  # the notebook's own cluster
    # No user IPython profile or startup files, and connection files under this test's directory; the
    # kernel starts in notebooks/, so it is told where this checkout's engine is.
    env.update(IPYTHONDIR=str(tmp / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_RUNTIME_DIR", env["JUPYTER_RUNTIME_DIR"])
        client.execute(env=env)
    probe = json.loads(stdout_of(nb.cells.pop()).split("PROBE", 1)[1])
    return nb, probe


def assert_no_errors(nb, probe: dict) -> None:
    assert os.path.realpath(probe["executable"]) == os.path.realpath(sys.executable)
    assert Path(probe["engine"]).resolve().parent == (ROOT / "engine").resolve()   # this checkout's engine
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert all(o.output_type != "error" for o in cell.outputs), cell.outputs
        stderr = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
        assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb, probe = execute(NOTEBOOK, PROBE, tmp_path_factory.mktemp("notebook"))
    paths = {k: Path(v) for k, v in probe.items() if k not in ("executable", "engine")}
    yield nb, probe, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory):
    nb, probe = execute(BACKFILL, BACKFILL_PROBE, tmp_path_factory.mktemp("backfill"))
    paths = {k: Path(v) for k, v in probe.items() if k not in ("executable", "engine")}
    yield nb, probe, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("path", [NOTEBOOK, BACKFILL], ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert any(c.cell_type == "markdown" for c in nb.cells)
    text = "".join(c.source for c in code)
    assert "tempfile.mkdtemp(" in text and "/home/" not in text and "/tmp/" not in text


def test_notebook_runs_on_this_interpreter_without_errors(executed):
    nb, probe, paths = executed
    assert_no_errors(nb, probe)
    assert paths["workdir"].is_dir()


def test_wordcount_outputs(executed):
    nb, _, paths = executed
    expected = reference_counts()
    assert expected["the"] == 9

    explain = stdout_of(tagged(nb, "explain"))
    assert "Job 'wordcount'" in explain and "aggregate by ['word']" in explain
    assert f"{len(list(TEXT.iterdir()))} map tasks" in explain

    assert f"committed {len(expected)} rows" in stdout_of(tagged(nb, "run"))

    shown = word_rows(display_of(tagged(nb, "top-words")))
    ranking = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))
    assert shown == ranking[:10]
    assert shown[0] == ("the", 9)

    lookup = stdout_of(tagged(nb, "lookup"))
    assert f"{len(expected)} distinct words; 'the' occurs {expected['the']} times" in lookup

    report = display_of(tagged(nb, "report"), "text/html")
    assert "wordcount" in report and "committed" in report and f"{len(expected)} rows" in report

    verify = stdout_of(tagged(nb, "verify"))
    assert "intact" in verify and f"{len(expected)} rows" in verify
    assert "skipped: True" in stdout_of(tagged(nb, "rerun"))

    table = committed_table(paths["wc_out"])
    assert dict(zip(table["word"].to_pylist(), table["count"].to_pylist())) == expected
    assert table.num_rows == len(expected)


def test_grouped_statistics_and_sort_outputs(executed):
    nb, _, paths = executed
    expected = reference_stats(paths["sales_in"])
    table = committed_table(paths["stats_out"])
    assert table.column_names == ["region", "orders", "mean_amount", "std_amount", "top3_amounts"]
    rows = table.to_pylist()
    assert [r["region"] for r in rows] == sorted(expected, key=lambda r: -expected[r]["mean_amount"])
    for row in rows:
        ref = expected[row["region"]]
        assert row["orders"] == ref["orders"]
        assert row["mean_amount"] == pytest.approx(ref["mean_amount"], rel=1e-9)
        assert row["std_amount"] == pytest.approx(ref["std_amount"], rel=1e-9)
        assert row["top3_amounts"] == pytest.approx(ref["top3_amounts"])

    shown = display_of(tagged(nb, "stats"))
    positions = [shown.index(r["region"]) for r in rows]
    assert positions == sorted(positions), shown  # displayed in the committed (sorted) order
    assert "same as pyarrow: True" in stdout_of(tagged(nb, "crosscheck"))


# ---------------------------------------------------------------------------------------------
# The backfill notebook


def reference_daily(events: Path) -> dict[tuple[str, str], tuple[int, float, int]]:
    """(day, region) -> (orders, revenue, customers), computed by DuckDB from the notebook's input."""
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    con.execute("create table regions (country varchar, region varchar)")
    con.executemany("insert into regions values (?, ?)", list(REGIONS.items()))
    rows = con.execute(f"""
        select e.day::varchar, r.region, count(*), sum(e.amount), count(distinct e.user_id)
        from read_parquet('{events.as_posix()}/*/*.parquet', hive_partitioning = true) e
        join regions r using (country)
        group by all""").fetchall()
    unplaced = con.execute(f"""select count(*) from read_parquet('{events.as_posix()}/*/*.parquet')
                               where country not in (select country from regions)""").fetchone()[0]
    assert unplaced == 0
    return {(day, region): (n, total, users) for day, region, n, total, users in rows}


def committed_partitioned(out: Path) -> tuple[dict, pa.Table]:
    """The manifest and the rows of the files it lists, with the partition column from their values."""
    doc = json.loads((out / "_SUCCESS").read_text())
    parts = []
    for entry in doc["files"]:
        t = pq.read_table(out / entry["path"])
        parts.append(t.append_column("day", pa.array([entry["values"]["day"]] * t.num_rows, pa.string())))
    return doc, pa.concat_tables(parts)


def daily_rows(table: pa.Table) -> dict[tuple[str, str], tuple[int, float, int]]:
    rows = table.to_pylist()
    out = {(r["day"], r["region"]): (r["orders"], r["revenue"], r["customers"]) for r in rows}
    assert len(out) == len(rows), "a (day, region) appears twice"
    return out


def assert_same_daily(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for k, (orders, revenue, customers) in expected.items():
        assert got[k][0] == orders and got[k][2] == customers, k
        assert got[k][1] == pytest.approx(revenue, rel=1e-9), k


def test_backfill_notebook_runs_without_errors(backfilled):
    nb, probe, paths = backfilled
    assert_no_errors(nb, probe)
    assert sorted(p.name for p in paths["events"].iterdir()) == [f"day={d}" for d in DAYS]


def test_backfill_notebook_publishes_the_right_numbers(backfilled):
    _, _, paths = backfilled
    expected = reference_daily(paths["events"])
    assert len(expected) == 4 * len(DAYS)
    doc, table = committed_partitioned(paths["out"])
    assert_same_daily(daily_rows(table), expected)
    # what any Hive reader sees in the directory: the same rows, no file of a replaced partition left
    seen = pq.read_table(paths["out"], partitioning="hive")
    seen = seen.set_column(seen.schema.get_field_index("day"), "day", seen["day"].cast(pa.string()))
    assert_same_daily(daily_rows(seen), expected)
    assert not (paths["out"] / "_canary").exists()


def test_backfill_notebook_provenance(backfilled):
    _, _, paths = backfilled
    doc = json.loads((paths["out"] / "_SUCCESS").read_text())
    # 26 cron runs, one publish of the backfill, 4 cron runs after it: the canary and the gated staged
    # run of release 2 committed nothing to the live output
    assert doc["generation"] == 26 + 1 + 4
    parts = doc["partitions"]
    assert sorted(parts) == [f"day={d}" for d in DAYS]
    for i, day in enumerate(DAYS):
        p, rec = parts[f"day={day}"], doc["dates"][day]
        assert p["logical_date"] == day and rec["partitions"] == [f"day={day}"]
        assert p["run_id"] == rec["run_id"] and p["fingerprint"] == rec["fingerprint"]
        assert p["input_digest"] == rec["input_digest"] and p["rows"] == 4
        if day in DAMAGED:          # backfilled with release 3, published together
            assert p["job_version"] == "3" and p["generation"] == 27 and "published_at" in p
        elif day < DAMAGED[0]:      # release 1's cron runs, untouched
            assert p["job_version"] == "1" and p["generation"] == i + 1
        else:                       # release 3's cron runs after the publish
            assert p["job_version"] == "3" and p["generation"] == i + 2
    # the staged output was consumed by the publish; the gated trial of release 2 stays for inspection
    assert not (paths["staging"] / "_SUCCESS").exists() and not list(paths["staging"].rglob("*.parquet"))
    trial = json.loads((paths["trial"] / "_SUCCESS").read_text())
    assert sorted(trial["partitions"]) == ["day=2026-11-05"]
    assert trial["partitions"]["day=2026-11-05"]["job_version"] == "2"
    assert trial["partitions"]["day=2026-11-05"]["rows"] == 3


def test_backfill_notebook_shows_each_step(backfilled):
    nb, _, _ = backfilled
    invariant = stdout_of(tagged(nb, "invariant")).splitlines()
    assert [line.split(":")[0] for line in invariant] == DAMAGED
    damaged = stdout_of(tagged(nb, "damaged"))
    assert f"written by release 2: {DAMAGED[0]} .. {DAMAGED[-1]} (7 days)" in damaged
    assert "same days as the invariant finds: True" in damaged

    summary = stdout_of(tagged(nb, "backfill"))
    assert "7 committed, 0 skipped, 0 failed" in summary
    assert all(f"{d}  committed" in summary for d in DAMAGED)
    assert "same input snapshots as the damaged runs: True" in stdout_of(tagged(nb, "staged-input"))

    diff = stdout_of(tagged(nb, "diff"))
    assert "rows by key: 7 added, 0 removed, 0 changed, 21 unchanged" in diff
    assert all(f"day={d}             3             4  +33.33%" in diff for d in DAMAGED)
    assert all(f"day='{d}', region='latam'" in diff for d in DAMAGED)
    html = display_of(tagged(nb, "diff-html"), "text/html")
    assert html.startswith("<div class='engine-diff'>") and "day=2026-11-20" in html

    assert "published 7 partition(s)" in stdout_of(tagged(nb, "publish"))
    assert "skipped: True" in stdout_of(tagged(nb, "cron-after"))

    canary = stdout_of(tagged(nb, "canary"))
    assert canary.startswith("ChangeGateError: the canary on 3 of 19 input partitions")
    assert "so the full run did not start" in canary and "a change of -25%" in canary
    assert "live output unchanged: True" in canary
    gate = stdout_of(tagged(nb, "staged-gate"))
    assert gate.startswith("ChangeGateError: ") and "so nothing was published" in gate

    assert "intact: 30 files, 120 rows" in stdout_of(tagged(nb, "verify"))
    assert "7 partitions repaired, 19 untouched" in stdout_of(tagged(nb, "provenance-check"))
    assert "published output equals the pyarrow reference: 120 rows, 30 days" in stdout_of(tagged(nb, "reference"))
    for tag in ("plot-before", "plot-after"):
        assert any("application/vnd.bokehjs_exec.v0+json" in o.get("data", {})
                   for o in tagged(nb, tag).outputs), tag


def test_a_run_shows_live_progress_in_the_notebook(executed):
    """The run cell carries the progress table the run kept updating: one row per stage, each finished
    (all its tasks, "done"), with the rows its tasks read and a rate."""
    nb, _, _ = executed
    cell = tagged(nb, "run")
    shown = [o for o in cell.outputs if o.output_type == "display_data"
             and "mapreduce-progress" in o.get("data", {}).get("text/html", "")]
    assert len(shown) == 1, cell.outputs          # one table, updated in place (not one per update)
    table = shown[0]["data"]["text/html"]
    stages = re.findall(r"<td style='text-align:left;font-family:monospace'>([^<]+)</td>", table)
    assert any("map" in s for s in stages) and any("reduce" in s for s in stages), table
    files = len(list(TEXT.iterdir()))
    lines = sum(len(p.read_text().splitlines()) for p in TEXT.iterdir())
    assert f"<td class='tasks'>{files}/{files} tasks</td><td class='rows'>{lines:,} rows</td>" in table, table
    assert table.count("ETA done") == len(stages)
    assert re.search(r"<td class='rate'>[\d.]+k? rows/s</td>", table), table
