"""What every benchmark script shares: waiting for an idle scheduler, and the environment record."""

from __future__ import annotations

import importlib
import os
import platform
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


def environment(info, packages: tuple[str, ...] = ()) -> dict:
    """Machine, versions (the engine's core dependencies plus ``packages`` when installed), git revision
    and cluster shape, for every result record."""
    versions = {}
    for name in ("engine", "pyarrow", "dask", "distributed", "numpy", *packages):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(), "versions": versions,
        "git_revision": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None,
        "cluster": {"workers": info.workers, "threads": info.threads},
    }
