"""The quick-start notebook runs top to bottom in a fresh kernel and shows the right numbers.

The kernel is this test's own interpreter: a kernel spec written at test time (with
``ipykernel``, whose ``argv`` is ``sys.executable``) in a private directory, so no ``python3``
kernel installed elsewhere on the machine can stand in for it. After the notebook's cells, one
extra cell reports where the notebook wrote its data, and the outputs are checked against
references computed here without the engine.
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
TEXT = Path(jobs.SAMPLE_DATA) / "text"
CELL_TIMEOUT = 240

PROBE = """
import json as _json, sys as _sys
print("PROBE" + _json.dumps({"executable": _sys.executable, "workdir": workdir, "wc_out": wc_out,
                             "sales_in": sales_in, "stats_out": stats_out}))
"""


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


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE.strip()))
    client = nbclient.NotebookClient(nb, km=private_kernel(tmp), kernel_name="python3", timeout=CELL_TIMEOUT,
                                     startup_timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}  # the notebook's own cluster
    # No user IPython profile or startup files, and connection files under this test's directory.
    env.update(IPYTHONDIR=str(tmp / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_RUNTIME_DIR", env["JUPYTER_RUNTIME_DIR"])
        client.execute(env=env)
    probe = json.loads(stdout_of(nb.cells.pop()).split("PROBE", 1)[1])
    paths = {k: Path(v) for k, v in probe.items() if k != "executable"}
    yield nb, probe, paths
    shutil.rmtree(paths["workdir"], ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Tests


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert any(c.cell_type == "markdown" for c in nb.cells)
    text = "".join(c.source for c in code)
    assert "tempfile.mkdtemp(" in text and "/home/" not in text and "/tmp/" not in text


def test_notebook_runs_on_this_interpreter_without_errors(executed):
    nb, probe, paths = executed
    assert os.path.realpath(probe["executable"]) == os.path.realpath(sys.executable)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert all(o.output_type != "error" for o in cell.outputs), cell.outputs
        stderr = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
        assert "Traceback" not in stderr, stderr
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
