"""OpenTelemetry spans of real runs: run → stage → task, with the report's times and the run id.

Promises checked here (skipped without ``opentelemetry-sdk``, the ``otel`` extra):

* a committed run's report becomes one run span, one span per stage and one per task attempt, in one
  trace, each stage the child of the run and each task the child of its stage, with the report's
  start and end times to the nanosecond and the run id, job, stage, partition, attempt and worker
  as attributes;
* a failed run (map partition 1 fails in all three attempts): its three failed attempts, its stage
  and the run have the status ERROR, the healthy attempt has not;
* the run span is the child of the span current where the spans are emitted (an orchestrator's);
* with no tracer provider configured, nothing is made.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

import engine  # noqa: E402
from engine import history, tracing  # noqa: E402
from engine.errors import StageFailedError  # noqa: E402
from engine.faults import Faults  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def tiny(tmp_path, name: str):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    pq.write_table(pa.table({"k": ["a", "b", "a", "c"], "v": [1, 2, 3, 4]}), src / "p0.parquet")
    pq.write_table(pa.table({"k": ["b", "d", "a"], "v": [5, 6, 7]}), src / "p1.parquet")
    job = engine.Job(name).reduce(by="k", aggs={"n": engine.agg.count()})
    return job, str(src)


def ns(t: float) -> int:
    return int(round(t * 1e9))


def test_a_committed_run_becomes_run_stage_and_task_spans(tmp_path, spans):
    provider, exporter = spans
    job, src = tiny(tmp_path, "traced")
    rep = job.run(src, str(tmp_path / "out")).report
    assert rep.status == "committed" and len(rep.stages) == 2 and len(rep.tasks) == 3     # 2 map tasks, 1 reduce

    assert tracing.emit(rep, tracer_provider=provider) == 1 + 2 + 3
    got = exporter.get_finished_spans()
    runs = [s for s in got if s.name == "run traced"]
    assert len(runs) == 1
    run = runs[0]
    assert run.parent is None and run.status.status_code == StatusCode.UNSET
    assert (run.start_time, run.end_time) == (ns(rep.start), ns(rep.stop))
    assert run.attributes["mapreduce.run_id"] == rep.run_id and run.attributes["mapreduce.status"] == "committed"
    assert run.attributes["mapreduce.output_rows"] == 4
    assert {s.context.trace_id for s in got} == {run.context.trace_id}

    stage_spans = {s.attributes["mapreduce.stage"]: s for s in got if s.name.startswith("stage ")}
    assert set(stage_spans) == {s.name for s in rep.stages}
    for s in rep.stages:
        span = stage_spans[s.name]
        assert span.parent.span_id == run.context.span_id
        assert span.start_time == ns(s.start) and span.end_time >= ns(s.stop)
        assert span.attributes["mapreduce.tasks"] == s.tasks and span.attributes["mapreduce.rows_out"] == s.rows_out

    task_spans = sorted((s for s in got if s.name.startswith("task ")),
                        key=lambda s: (s.attributes["mapreduce.stage"], s.attributes["mapreduce.partition"]))
    expected = sorted(rep.tasks, key=lambda t: (t.stage, t.partition))
    assert len(task_spans) == len(expected)
    for span, t in zip(task_spans, expected):
        assert span.parent.span_id == stage_spans[t.stage].context.span_id
        assert (span.start_time, span.end_time) == (ns(t.start), ns(t.stop))
        assert span.start_time >= stage_spans[t.stage].start_time
        a = span.attributes
        assert (a["mapreduce.partition"], a["mapreduce.attempt"], a["mapreduce.worker"], a["mapreduce.rows_out"],
                a["mapreduce.speculative"], a["mapreduce.run_id"]) == (t.partition, t.attempt, t.worker, t.rows_out,
                                                                        False, rep.run_id)
    # the map tasks read 4 and 3 rows
    assert sorted(s.attributes["mapreduce.rows_in"] for s in task_spans if s.attributes["mapreduce.stage"] ==
                  rep.stages[0].name) == [3, 4]


def test_a_failed_run_marks_its_failed_attempts_stage_and_run(tmp_path, spans):
    provider, exporter = spans
    job, src = tiny(tmp_path, "traced-failing")
    with pytest.raises(StageFailedError):
        job.run(src, str(tmp_path / "never"), faults=Faults(fail_attempts={("map", 1): 99}))
    rep = history.report_of(history.open_store().records(job="traced-failing", limit=1)[0])   # from the history
    assert rep.status == "failed"

    outer_tracer = provider.get_tracer("orchestrator")
    with outer_tracer.start_as_current_span("nightly task") as outer:
        made = tracing.emit(rep, tracer_provider=provider)
    got = exporter.get_finished_spans()
    assert made == len(got) - 1 == 1 + 1 + 4                # run, the map stage, 4 attempts
    run = next(s for s in got if s.name == "run traced-failing")
    assert run.parent.span_id == outer.get_span_context().span_id
    assert run.status.status_code == StatusCode.ERROR and "StageFailedError" in run.status.description
    assert run.attributes["error.type"] == "StageFailedError"
    stage = next(s for s in got if s.name.startswith("stage "))
    assert stage.status.status_code == StatusCode.ERROR and "partition(s) 1 failed" in stage.status.description
    tasks = {(s.attributes["mapreduce.partition"], s.attributes["mapreduce.attempt"]): s
             for s in got if s.name.startswith("task ")}
    assert sorted(tasks) == [(0, 0), (1, 0), (1, 1), (1, 2)]
    assert tasks[(0, 0)].status.status_code == StatusCode.UNSET
    for attempt in range(3):
        span = tasks[(1, attempt)]
        assert span.status.status_code == StatusCode.ERROR
        assert f"attempt {attempt}" in span.attributes["mapreduce.error"]
        assert span.parent.span_id == stage.context.span_id


def test_nothing_is_made_without_a_configured_provider(tmp_path):
    from opentelemetry import trace
    if type(trace.get_tracer_provider()).__name__ != "ProxyTracerProvider":
        pytest.skip("a global tracer provider is configured in this process")
    job, src = tiny(tmp_path, "untraced")
    rep = job.run(src, str(tmp_path / "out")).report
    assert not tracing.enabled() and tracing.emit(rep) == 0
    # a program that never imported OpenTelemetry does not import it for a run's spans
    code = ("import sys; from engine.report import RunReport; from engine import tracing; "
            "print(tracing.emit(RunReport('j', 'r', 'f', status='committed')), 'opentelemetry' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert out.stdout.split() == ["0", "False"], out.stderr
