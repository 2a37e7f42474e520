"""Run history in SQLite, and service-level indicators over it.

Every committed, skipped or failed run appends one row (job, run id, status, timings, rows, bytes)
to ``~/.local/share/mapreduce-engine/history.sqlite`` (``ENGINE_HISTORY`` overrides the path;
``ENGINE_HISTORY=off`` disables it). ``mapreduce history`` prints recent runs and per-job SLIs:
success rate, median and p95 duration.

A row holds no secrets and no data values: every string of it goes through
:func:`engine.redact.redact`, and the hot keys of skew decisions are short hashes unless
``engine.report.key-values`` is on (:func:`engine.redact.public_decisions`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import statistics
from typing import Any

from .redact import public_decisions, redact_obj
from .report import RunReport

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT, job TEXT, fingerprint TEXT, status TEXT, started REAL, seconds REAL,
    input_bytes INTEGER, output TEXT, output_rows INTEGER, output_bytes INTEGER, message TEXT, report TEXT
)"""


def path() -> str | None:
    p = os.environ.get("ENGINE_HISTORY")
    if p and p.lower() in ("off", "0", "none", "false"):
        return None
    if p:
        return p
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mapreduce-engine", "history.sqlite")


@contextlib.contextmanager
def _db():
    p = path()
    if p is None:
        yield None
        return
    os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    con = sqlite3.connect(p, timeout=5)
    try:
        con.execute(_SCHEMA)
        yield con
        con.commit()
    finally:
        con.close()


def record(rep: RunReport, *, key_values: bool = False) -> None:
    """Append a run to the history (best effort: history never fails a run). Strings are redacted; hot
    keys are hashed unless ``key_values``."""
    details = json.loads(json.dumps({"stages": [s.__dict__ for s in rep.stages],
                                     "skew": public_decisions(rep.skew, key_values),
                                     "speculation": rep.speculation, "retries": rep.retries}, default=str))
    row = redact_obj((rep.run_id, rep.job, rep.fingerprint, rep.status, rep.start, rep.duration, rep.input_bytes,
                      rep.output, rep.output_rows, rep.output_bytes, rep.message, json.dumps(redact_obj(details))))
    with _db() as con:
        if con is None:
            return
        con.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)


def runs(limit: int = 20, job: str | None = None) -> list[dict[str, Any]]:
    with _db() as con:
        if con is None:
            return []
        q = "SELECT run_id, job, status, started, seconds, output_rows, output FROM runs"
        args: tuple = ()
        if job:
            q += " WHERE job = ?"
            args = (job,)
        q += " ORDER BY started DESC LIMIT ?"
        cols = ["run_id", "job", "status", "started", "seconds", "output_rows", "output"]
        return [dict(zip(cols, row)) for row in con.execute(q, args + (limit,))]


def slis(job: str | None = None) -> list[dict[str, Any]]:
    """Per job: runs, success rate, median and p95 seconds of committed runs."""
    with _db() as con:
        if con is None:
            return []
        rows = con.execute("SELECT job, status, seconds FROM runs" + (" WHERE job = ?" if job else ""),
                           (job,) if job else ()).fetchall()
    by_job: dict[str, list[tuple[str, float]]] = {}
    for j, status, secs in rows:
        by_job.setdefault(j, []).append((status, secs))
    out = []
    for j, items in sorted(by_job.items()):
        ok = sorted(s for st, s in items if st == "committed")
        failed = sum(1 for st, _ in items if st == "failed")
        p95 = ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else None
        out.append({"job": j, "runs": len(items), "failed": failed,
                    "success_rate": 1 - failed / len(items) if items else None,
                    "median_seconds": statistics.median(ok) if ok else None, "p95_seconds": p95})
    return out


__all__ = ["record", "runs", "slis", "path"]
