"""OpenTelemetry spans of a finished run: run → stage → task.

When the OpenTelemetry SDK is installed (``pip install 'mapreduce-engine[otel]'``) and the program has
configured a tracer provider (its own code, or ``opentelemetry-instrument``), :func:`emit` turns a
finished :class:`engine.report.RunReport` into spans, after the fact, with the start and end times
the report measured::

    run wordcount                 mapreduce.run_id, mapreduce.job, mapreduce.status, ...
    ├── stage r0-map              mapreduce.stage, mapreduce.round, mapreduce.kind, rows, ...
    │   ├── task r0-map           mapreduce.partition, mapreduce.attempt, mapreduce.worker, rows, ...
    │   └── ...
    └── stage r0-reduce ...

Nothing is traced while the run runs, so tracing costs the hot path nothing. :func:`emit` returns at
once, importing nothing, unless the program has imported OpenTelemetry and configured a provider.
The run span is a child of the span current where :func:`emit` is called (an orchestrator's task
span, say), else the root of a new trace. A failed task attempt, a stage with a partition that
failed in every attempt, and a run that neither committed nor skipped get the status ERROR with the
error's text (redacted, as everywhere in the engine).
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

from .redact import redact

_OK_RUN = ("committed", "skipped", "running")


def _trace(load: bool) -> Any:
    """The ``opentelemetry.trace`` module: only if already imported (whoever configured a tracer provider
    imported it), unless ``load``; None when absent."""
    mod = sys.modules.get("opentelemetry.trace")
    if mod is None and load:
        with contextlib.suppress(ImportError):
            from opentelemetry import trace as mod
    return mod


def enabled() -> bool:
    """True when spans would be recorded: the program imported OpenTelemetry and configured a tracer
    provider (not the API's default proxy)."""
    trace = _trace(load=False)
    if trace is None:
        return False
    return type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def _ns(t: float) -> int:
    return int(round(float(t) * 1e9))


def _attrs(d: dict[str, Any]) -> dict[str, Any]:
    return {f"mapreduce.{k}": v for k, v in d.items() if v is not None and v != ""}


def emit(report: Any, *, tracer_provider: Any = None) -> int:
    """Spans of the finished run ``report`` (a :class:`engine.report.RunReport`); returns how many were
    made (0 when tracing is off). ``tracer_provider`` overrides the global one (tests, several
    exporters)."""
    if tracer_provider is None and not enabled():
        return 0
    trace = _trace(load=True)
    if trace is None:
        return 0
    from opentelemetry.trace import Status, StatusCode
    from ._version import ENGINE_VERSION

    tracer = trace.get_tracer("engine", ENGINE_VERSION, tracer_provider=tracer_provider)
    tasks = list(report.tasks)
    start = report.start or min((t.start for t in tasks if t.start), default=0.0)
    stop = max(report.stop or 0.0, max((t.stop for t in tasks), default=0.0), start)
    err = report.error or {}
    etype = err.get("type")
    if not etype and report.status not in _OK_RUN:      # a report without error details: "Type: message"
        m = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Terminated|Exit)\w*): ", report.message or "")
        etype = m.group(1) if m else None
    run = tracer.start_span(f"run {report.job}", start_time=_ns(start), attributes={
        **_attrs({"run_id": report.run_id, "record_id": report.record_id, "job": report.job,
                  "status": report.status, "logical_date": report.logical_date, "output": redact(report.output),
                  "input_files": report.input_files, "input_bytes": report.input_bytes,
                  "output_rows": report.output_rows, "output_bytes": report.output_bytes,
                  "output_files": report.output_files}),
        **({"error.type": etype} if etype else {})})
    if report.status not in _OK_RUN:
        run.set_status(Status(StatusCode.ERROR, redact(report.message or err.get("message") or report.status)))
    made = 1
    run_ctx = trace.set_span_in_context(run)
    stages: dict[str, tuple[Any, float, float]] = {}
    for s in report.stages:
        mine = [t for t in tasks if t.stage == s.name]
        s_start = s.start or min((t.start for t in mine if t.start), default=start)
        s_stop = max(s.stop or 0.0, max((t.stop for t in mine), default=0.0), s_start)
        span = tracer.start_span(f"stage {s.name}", context=run_ctx, start_time=_ns(s_start), attributes=_attrs({
            "run_id": report.run_id, "job": report.job, "stage": s.name, "round": s.round, "kind": s.kind,
            "tasks": s.tasks, "rows_in": s.rows_in, "rows_out": s.rows_out, "bytes_out": s.bytes_out,
            "attempts": s.attempts, "retries": s.retries, "speculative": s.speculative, "resumed": s.resumed}))
        lost = sorted({t.partition for t in mine if t.status == "failed"} - {t.partition for t in mine
                                                                            if t.status == "ok"})
        if lost:
            span.set_status(Status(StatusCode.ERROR, f"{s.name}: partition(s) {', '.join(map(str, lost))} "
                                                     "failed in every attempt"))
        stages[s.name] = (span, s_start, s_stop)
        made += 1
    for t in tasks:
        parent, p_start, _ = stages.get(t.stage, (run, start, stop))
        t_start = t.start or p_start
        t_stop = max(t.stop or 0.0, t_start)
        span = tracer.start_span(f"task {t.stage}", context=trace.set_span_in_context(parent),
                                 start_time=_ns(t_start), attributes=_attrs({
                                     "run_id": report.run_id, "job": report.job, "stage": t.stage,
                                     "partition": t.partition, "attempt": t.attempt, "worker": t.worker,
                                     "task_status": t.status, "speculative": bool(t.speculative),
                                     "rows_in": t.rows_in, "rows_out": t.rows_out, "bytes_out": t.bytes_out,
                                     "cpu_seconds": t.cpu, "error": redact(t.error) if t.error else None}))
        if t.status == "failed":
            span.set_status(Status(StatusCode.ERROR, redact(t.error or "task attempt failed")))
        span.end(end_time=_ns(t_stop))
        made += 1
    for span, _, s_stop in stages.values():
        span.end(end_time=_ns(s_stop))
    run.end(end_time=_ns(stop))
    return made


__all__ = ["emit", "enabled"]
