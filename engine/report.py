"""RunReport: what a run did — stages, tasks, attempts, timings, rows, bytes, decisions.

>>> result = job.run("data/text", "out/wc")          # doctest: +SKIP
>>> print(result.report.summary())                    # doctest: +SKIP
>>> result.report.to_html("report.html")             # doctest: +SKIP   (bokeh timeline)

Every rendering (``to_dict``/``to_json``, ``summary``, the HTML) passes its strings through
:func:`engine.redact.redact`, so task errors with URLs or keys show ``***`` in their place. The
report is the user's own view of the run: its skew decisions keep the hot keys' values, which the
manifest and the history replace by short hashes (``engine.report.key-values``).
>>> result.report.tasks_per_worker("r0-map")          # doctest: +SKIP
{'tcp://127.0.0.1:40001': 2, 'tcp://127.0.0.1:40002': 2}

``zombies`` lists cancelled attempts that kept running (code that does not stop when cancelled)
and what the run did about each: ``"restarted"`` (their worker, through its nanny) or ``"avoided"``
(no nanny: the run placed no new task there until the attempt returned), with the reason.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .redact import redact, redact_obj


@dataclass
class TaskReport:
    stage: str
    partition: int
    attempt: int
    worker: str
    start: float
    stop: float
    rows_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    status: str = "ok"          # ok | failed | cancelled | lost (a later attempt won)
    speculative: bool = False
    error: str | None = None
    cpu: float = 0.0            # CPU seconds of the task's thread (pyarrow's own threads are not counted)

    @property
    def duration(self) -> float:
        return self.stop - self.start


@dataclass
class StageReport:
    name: str
    round: int
    kind: str                   # map | reduce
    tasks: int
    start: float
    stop: float = 0.0
    rows_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    attempts: int = 0
    retries: int = 0
    speculative: int = 0
    resumed: int = 0
    combine_stopped: int = 0    # map tasks that gave up their map-side combine (engine.shuffle.adaptive-combine)
    combine_kept: int = 0       # map tasks that decided to keep combining

    @property
    def duration(self) -> float:
        return max(0.0, self.stop - self.start)


@dataclass
class RunReport:
    """Everything a run did, for people (``summary()``, HTML) and programs (``to_dict()``)."""

    job: str
    run_id: str
    fingerprint: str
    status: str = "running"     # running | committed | skipped | failed | interrupted | refused
    start: float = 0.0
    stop: float = 0.0
    input_files: int = 0
    input_bytes: int = 0
    output: str = ""
    output_rows: int = 0
    output_bytes: int = 0
    output_files: int = 0
    stages: list[StageReport] = field(default_factory=list)
    tasks: list[TaskReport] = field(default_factory=list)
    skew: list[dict] = field(default_factory=list)
    joins: list[dict] = field(default_factory=list)       # join strategy and skew-split decisions, with sizes
    combine: list[dict] = field(default_factory=list)     # map stages whose tasks stopped combining, see note_combine
    speculation: list[dict] = field(default_factory=list)
    zombies: list[dict] = field(default_factory=list)     # cancelled attempts that kept running, see above
    retries: list[dict] = field(default_factory=list)
    message: str = ""
    cluster: dict = field(default_factory=dict)
    peak_memory: int | None = None
    record_id: str = ""                                   # this run's record in the history (engine.history)
    logical_date: str | None = None
    error: dict = field(default_factory=dict)             # a run that did not commit: type, message, location
                                                          # (the user's file:line), traceback (user frames first)
    settings: dict = field(default_factory=dict)          # the run's arguments and engine.* settings it used
    versions: dict = field(default_factory=dict)          # engine, python, pyarrow, dask, distributed
    usage: dict = field(default_factory=dict)             # cpu_seconds, worker_cpu_seconds, thread_seconds, ...

    @property
    def duration(self) -> float:
        return max(0.0, self.stop - self.start)

    def tasks_per_worker(self, stage: str | None = None) -> dict[str, int]:
        """How many attempts ran on each worker (of ``stage``, or of the whole run), whatever their end;
        attempts cancelled before anyone saw them start (worker ``"?"``) are not counted."""
        counts: dict[str, int] = {}
        for t in self.tasks:
            if (stage is None or t.stage == stage) and t.worker and t.worker != "?":
                counts[t.worker] = counts.get(t.worker, 0) + 1
        return dict(sorted(counts.items()))

    def note_combine(self, stage: StageReport, results: dict[int, dict]) -> None:
        """Count a finished map stage's adaptive-combine decisions (each task reports ``combine``:
        ``"stopped"``, ``"kept"`` or ``"undecided"``, with the rows its combine saw and kept); a stage
        where some task stopped combining gets an entry in ``combine``, with its reason."""
        outcomes = [v for v in results.values() if v.get("combine")]
        if not outcomes:
            return
        stopped = [v for v in outcomes if v["combine"] == "stopped"]
        stage.combine_stopped = len(stopped)
        stage.combine_kept = sum(1 for v in outcomes if v["combine"] == "kept")
        if not stopped:
            return
        seen = sum(int(v.get("combine_rows_in") or 0) for v in stopped)
        kept = sum(int(v.get("combine_rows_out") or 0) for v in stopped)
        share = kept / seen if seen else 1.0
        self.combine.append({
            "stage": stage.name, "round": stage.round, "tasks": len(outcomes), "stopped": len(stopped),
            "kept": stage.combine_kept, "sampled_rows": seen, "sampled_rows_out": kept,
            "reason": f"{stage.name}: {len(stopped)} of {len(outcomes)} map task(s) stopped combining: on the "
                      f"{seen:,} rows they combined first, the combine kept {share:.1%} (less reduction than "
                      f"engine.shuffle.combine-min-reduction asks); they shipped the rest of their rows "
                      f"uncombined, for the reducers to merge"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration"] = self.duration
        d["tasks_per_worker"] = {s.name: self.tasks_per_worker(s.name) for s in self.stages}
        return redact_obj(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunReport:
        """The report back from :meth:`to_dict` (derived entries such as ``duration`` are recomputed)."""
        names = {f.name for f in fields(cls)}
        args = {k: v for k, v in d.items() if k in names}
        args["stages"] = [StageReport(**{k: v for k, v in s.items() if k in {f.name for f in fields(StageReport)}})
                          for s in d.get("stages", [])]
        args["tasks"] = [TaskReport(**{k: v for k, v in t.items() if k in {f.name for f in fields(TaskReport)}})
                         for t in d.get("tasks", [])]
        return cls(**args)

    def _placement_line(self, stage: str) -> str:
        counts = self.tasks_per_worker(stage)
        return ", ".join(f"{w.split('://')[-1]} {n}" for w, n in counts.items()) or "-"

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)

    def summary(self) -> str:
        lines = [f"job {self.job!r} run {self.run_id[:12]}: {self.status} in {self.duration:.2f}s"]
        if self.message:
            lines.append(f"  {self.message}")
        if self.status in ("committed",):
            lines.append(f"  input: {self.input_files} files, {self.input_bytes:,} bytes; output: "
                         f"{self.output_files} files, {self.output_rows:,} rows, {self.output_bytes:,} bytes")
            if self.cluster.get("where"):
                lines.append(f"  ran {self.cluster['where']}")
        for s in self.stages:
            extra = []
            if s.combine_stopped:
                extra.append(f"{s.combine_stopped} stopped combining")
            if s.retries:
                extra.append(f"{s.retries} retried")
            if s.speculative:
                extra.append(f"{s.speculative} speculative")
            lines.append(f"  {s.name:<24} {s.tasks:>4} tasks {s.duration:7.2f}s  rows {s.rows_in:,} -> "
                         f"{s.rows_out:,}  {s.bytes_out:,} B" + (f"  ({', '.join(extra)})" if extra else ""))
            if self.tasks:
                lines.append(f"  {'':<24} tasks per worker: {self._placement_line(s.name)}")
        for d in self.joins:
            lines.append(f"  join: {d.get('reason', d)}")
        for d in self.combine:
            lines.append(f"  combine: {d.get('reason', d)}")
        for d in self.skew:
            lines.append(f"  skew: {d.get('reason', d)}")
        for d in self.speculation:
            lines.append(f"  speculation: {d.get('reason', d)}")
        for d in self.zombies:
            lines.append(f"  zombie: {d.get('reason', d)}")
        return redact("\n".join(lines))

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{s.tasks}</td><td>{s.duration:.2f}s</td>"
            f"<td>{s.rows_in:,}</td><td>{s.rows_out:,}</td><td>{s.bytes_out:,}</td><td>{s.retries}</td>"
            f"<td>{s.speculative}</td><td>{html.escape(self._placement_line(s.name))}</td></tr>" for s in self.stages)
        notes = "".join(f"<li>{html.escape(redact(str(d.get('reason', d))))}</li>"
                        for d in self.joins + self.combine + self.skew + self.speculation + self.zombies)
        return (f"<div><b>{html.escape(self.job)}</b> run <code>{self.run_id[:12]}</code>: {self.status} in "
                f"{self.duration:.2f}s, {self.output_rows:,} rows in {self.output_files} files<br>"
                f"<table><tr><th>stage</th><th>tasks</th><th>time</th><th>rows in</th><th>rows out</th>"
                f"<th>bytes out</th><th>retries</th><th>speculative</th><th>tasks per worker</th></tr>{rows}</table>"
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")

    def to_html(self, path: str | None = None) -> str:
        """A self-contained bokeh page: task timeline per worker, and the summary. Written to ``path`` if given."""
        from bokeh.embed import file_html
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource, Div, HoverTool
        from bokeh.plotting import figure
        from bokeh.resources import INLINE

        t0 = min((t.start for t in self.tasks), default=self.start)
        workers = sorted({t.worker for t in self.tasks}) or ["-"]
        palette = {"ok": "#4c78a8", "failed": "#e45756", "cancelled": "#bab0ac", "lost": "#f58518"}
        src = ColumnDataSource({
            "worker": [t.worker for t in self.tasks],
            "left": [t.start - t0 for t in self.tasks],
            "right": [t.stop - t0 for t in self.tasks],
            "stage": [t.stage for t in self.tasks],
            "partition": [t.partition for t in self.tasks],
            "attempt": [t.attempt for t in self.tasks],
            "status": [t.status + (" (speculative)" if t.speculative else "") for t in self.tasks],
            "rows": [t.rows_out for t in self.tasks],
            "color": [palette.get(t.status, "#72b7b2") if not t.speculative else "#54a24b" for t in self.tasks],
        })
        fig = figure(y_range=workers, height=120 + 40 * len(workers), width=900, title="Tasks per worker",
                     x_axis_label="seconds since first task", tools="xpan,xwheel_zoom,reset,save")
        fig.hbar(y="worker", left="left", right="right", height=0.7, color="color", source=src,
                 line_color="white")
        fig.add_tools(HoverTool(tooltips=[("stage", "@stage"), ("partition", "@partition"),
                                          ("attempt", "@attempt"), ("status", "@status"), ("rows", "@rows")]))
        page = file_html(column(Div(text=f"<pre>{html.escape(self.summary())}</pre>"), fig), INLINE,
                         title=f"{self.job} run {self.run_id[:12]}")
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page


__all__ = ["RunReport", "StageReport", "TaskReport"]
