"""The newcomer check: what a new user does first, on a clean clone of this repository, in a fresh
virtual environment made the README's way.

* the README's quick-start command 1, verbatim (set up, run word count on the bundled sample), and
  once more (a no-op);
* the set-up half of command 2 verbatim (the test extras), then the README's Python snippet saved as a
  script (no main guard) and run with that environment's Python, once in the driver and once on the
  embedded cluster;
* the quickstart notebook executed top to bottom in that environment's own kernel.

Command 2's test run is this suite itself: CI's ``.ci/run`` calls it verbatim on a clean clone, so it
is not run again from inside it. Each step's answer is checked against plain Python.

Slow (a fresh environment installs every dependency: about 2-4 min with a warm pip cache).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 1500

pytestmark = pytest.mark.slow


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    """The two commands of the README's quick start, as written."""
    block = readme().split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    return commands


def python_snippet() -> str:
    section = readme().split("## In Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def words(lower: bool) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted((ROOT / "jobs" / "data" / "text").iterdir()):
        for line in path.read_text(encoding="utf-8").splitlines():
            counts.update((line.lower() if lower else line).split())
    return dict(counts)


def committed(out: Path, key: str = "word") -> dict[str, int]:
    doc = json.loads((out / "_SUCCESS").read_text())
    table = pa.concat_tables([pq.read_table(out / f["path"]) for f in doc["files"]])
    return dict(zip(table[key].to_pylist(), table["count"].to_pylist()))


def clean_env(clone: Path) -> dict[str, str]:
    """The environment of a new shell: no PYTHONPATH, no virtualenv of this suite, no dask address."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DASK_SCHEDULER_ADDRESS", "PYTHONHOME")
           and not k.startswith(("DASK_ENGINE__", "ENGINE_", "PYTEST"))}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["ENGINE_HISTORY"] = str(clone / "history.sqlite")       # keep the user's own history untouched
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clean clone of this checkout's committed state (a copy of its tracked files without git)."""
    where = tmp_path_factory.mktemp("newcomer") / "mapreduce-engine"
    if shutil.which("git") and (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(where)], check=True, timeout=300)
    else:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
        for name in files:
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, where / name)
    return where


def shell(command: str, cwd: Path, env: dict[str, str], timeout: float = INSTALL_TIMEOUT):
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def set_up(clone):
    """Command 1 verbatim, twice; then the set-up half of command 2 verbatim."""
    env = clean_env(clone)
    first, second = quick_start_commands()
    runs = [shell(first, clone, env), shell(first, clone, env)]
    setup = second.split("&& .venv/bin/python -m pytest", 1)
    assert len(setup) == 2, second
    tests_setup = shell(setup[0].rstrip(), clone, env)
    return {"env": env, "runs": runs, "setup": tests_setup}


def test_quick_start_command_1_runs_word_count_then_is_a_no_op(clone, set_up):
    first, again = set_up["runs"]
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    out = clone / "out" / "wordcount"
    assert committed(out) == words(lower=True)
    assert "committed" in first.stdout
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in (again.stdout + again.stderr)
    assert "Traceback" not in first.stderr + again.stderr


def test_the_python_snippet_runs_as_a_script(clone, set_up):
    """The README's snippet saved as ``wc.py`` and run with the new environment's Python, with no
    main guard: in the driver (the sample is small), and on the embedded cluster (workers forced)."""
    assert set_up["setup"].returncode == 0, set_up["setup"].stderr[-3000:]
    script = clone / "wc.py"
    script.write_text(python_snippet())
    python = str(clone / ".venv" / "bin" / "python")
    for where, extra in (("driver", {}), ("cluster", {"DASK_ENGINE__LOCAL__MAX_BYTES": "0"})):
        shutil.rmtree(clone / "out" / "wc", ignore_errors=True)
        proc = subprocess.run([python, str(script)], cwd=clone, env={**set_up["env"], **extra}, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (where, proc.stderr[-4000:])
        assert proc.stderr == "", (where, proc.stderr[-4000:])
        assert committed(clone / "out" / "wc") == words(lower=False), where
        ran = re.search(r"ran (in the driver process|on the embedded local cluster \(\d+ worker process)", proc.stdout)
        assert ran and (("driver" in ran.group(1)) == (where == "driver")), proc.stdout


def test_the_quickstart_notebook_runs_in_the_new_environment(clone, set_up):
    assert set_up["setup"].returncode == 0, set_up["setup"].stderr[-3000:]
    runner = clone / "run_notebook.py"
    runner.write_text(
        "import sys, nbformat, nbclient\n"
        "nb = nbformat.read('notebooks/quickstart.ipynb', as_version=4)\n"
        "nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',\n"
        "                        resources={'metadata': {'path': 'notebooks'}}).execute()\n"
        "errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']\n"
        "print('ERRORS', len(errors))\n"
        "print('OUTPUT', ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs))\n")
    env = {**set_up["env"], "IPYTHONDIR": str(clone / ".ipython"), "JUPYTER_RUNTIME_DIR": str(clone / ".runtime")}
    proc = subprocess.run([str(clone / ".venv" / "bin" / "python"), str(runner)], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "ERRORS 0" in proc.stdout
    expected = words(lower=True)
    assert f"committed {len(expected)} rows" in proc.stdout
