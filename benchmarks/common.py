"""What every benchmark script shares: waiting for an idle cluster, and the environment record."""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _task_count(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


def wait_idle(client, timeout: float = 120.0) -> float:
    """Block until the scheduler holds no tasks (no result of an earlier run can answer the next one);
    returns the seconds waited."""
    start = time.time()
    while True:
        n = client.run_on_scheduler(_task_count)
        if n == 0:
            return time.time() - start
        if time.time() - start > timeout:
            raise RuntimeError(f"the scheduler still holds {n} tasks after {timeout:.0f}s")
        time.sleep(0.05)


def _executing(dask_worker=None) -> int:
    return int(dask_worker.state.executing_count)


def wait_workers_idle(client, timeout: float = 300.0) -> tuple[float, float]:
    """:func:`wait_idle`, then also until no worker executes a task.

    A cancelled attempt (a straggler whose copy won) keeps its worker's thread busy after the
    scheduler has forgotten it. Returns ``(seconds until the scheduler was empty, seconds more until
    the workers were)``.
    """
    waited = wait_idle(client, timeout)
    start = time.time()
    while sum(client.run(_executing).values()):
        if time.time() - start > timeout:
            raise RuntimeError(f"a worker still executes a task {timeout:.0f}s after the scheduler emptied")
        time.sleep(0.05)
    return waited, time.time() - start


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return None


def environment(info, packages: tuple[str, ...] = (), *, settings: bool = False) -> dict:
    """Machine, versions (the engine's core dependencies plus ``packages`` when installed), git revision
    and cluster shape, for every result record; with ``settings``, also the engine's speculation policy
    and split size."""
    versions = {}
    for name in ("engine", "pyarrow", "dask", "distributed", "numpy", *packages):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    env = {
        "python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(), "versions": versions,
        "git_revision": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None,
        "cluster": {"workers": info.workers, "threads": info.threads},
    }
    if settings:
        from engine import config
        env.update({"speculation_policy": dict(config.get("speculation")), "split_size": config.get("split-size")})
    return env


def append_records(path: str, records) -> None:
    """Append JSON lines (one per record) to a results file, creating its folder."""
    import json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, default=str) + "\n")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to 4 places; None when either is missing."""
    if a is None or not b:
        return None
    return round(a / b, 4)


def paired_ratio(a: list[float], b: list[float]) -> float | None:
    """The median of ``a[i] / b[i]`` (runs of two configurations taken in turns)."""
    ratios = [x / y for x, y in zip(a, b) if y]
    return round(statistics.median(ratios), 4) if ratios else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_markdown_table(head: list[str], rows: list[list], file=None) -> None:
    """A padded Markdown table on ``file`` (stdout by default)."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(head, widths)) + " |", file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |", file=file)

