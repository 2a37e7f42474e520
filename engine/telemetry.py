"""What a run tells the world: its record in the history, its metrics, its alerts, its spans.

:class:`Tracker` follows one call of :func:`engine.run` from its start to its end, whatever the end:
it writes a ``running`` record when the run starts (re-written by a heartbeat while it runs, with
the newest checkpoint), and the final record when it ends, then exports metrics
(:mod:`engine.metrics`), spans (:mod:`engine.tracing`) and alerts (:mod:`engine.alerts`). None of
these ever fails a run: a problem is a warning on the ``engine`` logger.
"""

from __future__ import annotations

import json
from typing import Any

from .redact import public_decisions, redact_obj


def _usage_totals(rep) -> dict[str, Any]:
    tasks = rep.tasks
    failed = [t for t in tasks if t.status == "failed"]
    return {
        "tasks": sum(s.tasks for s in rep.stages),
        "attempts": sum(s.attempts for s in rep.stages) or len([t for t in tasks if t.worker != "?"]),
        "task_failures": len(failed),
        "failed_tasks": len({(t.stage, t.partition) for t in failed}),
        "retries": sum(s.retries for s in rep.stages),
        "speculative": sum(s.speculative for s in rep.stages),
        "resumed": sum(s.resumed for s in rep.stages),
        "cpu_seconds": round(sum(t.cpu for t in tasks), 6),
    }


def record_from_report(rep, record_id: str, *, key_values: bool = False) -> dict[str, Any]:
    """The history record of a run, from its report."""
    d = rep.to_dict()
    d["skew"] = public_decisions(rep.skew, key_values)
    usage = rep.usage or {}
    err = rep.error or {}
    rec = {
        "record_id": rep.record_id or record_id, "run_id": rep.run_id, "job": rep.job, "fingerprint": rep.fingerprint,
        "status": rep.status, "started": rep.start, "finished": rep.stop or None,
        "seconds": rep.duration, "updated": rep.stop or rep.start,
        "input_files": rep.input_files, "input_bytes": rep.input_bytes,
        "input_rows": rep.stages[0].rows_in if rep.stages else 0,
        "output": rep.output, "output_rows": rep.output_rows, "output_bytes": rep.output_bytes,
        "output_files": rep.output_files, "message": rep.message, "logical_date": rep.logical_date,
        "error_type": err.get("type"), "error_location": err.get("location"),
        "workers": (rep.cluster or {}).get("workers"), "threads": (rep.cluster or {}).get("threads"),
        "rejected": int(usage.get("rejected") or 0),
        "worker_cpu_seconds": usage.get("worker_cpu_seconds"), "thread_seconds": usage.get("thread_seconds"),
        "memory_gb_seconds": usage.get("memory_gb_seconds"), "checkpoint_at": usage.get("checkpoint_at"),
        "report": json.dumps(redact_obj(json.loads(json.dumps(d, default=str)))),
    }
    rec.update(_usage_totals(rep))
    return rec


__all__ = ["record_from_report"]
