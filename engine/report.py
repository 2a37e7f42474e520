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

``failures``, ``retries_spent`` and ``retry_budget`` are the run's retry figures: tasks that failed
at least once, retries started, and the run's ``retry_budget=``; ``retries_per_failure`` (the seed's
M10) and ``retry_budget_left`` derive from them (in ``to_dict()`` and the summary's ``retries:`` line).
The history's ``failed_tasks`` and ``retries`` columns, from which :mod:`engine.slo` computes M10,
count the same things.

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
    spills: int = 0             # map tasks: buffers of map output combined, partitioned and written to the
                                # shuffle file (engine.shuffle.spill-size each; 1 when the output fit one)

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
    input_rows: int = 0         # of rows_in, those its map tasks read from the run's input (not from a prior round)
    attempts: int = 0
    retries: int = 0
    speculative: int = 0
    resumed: int = 0
    combine_stopped: int = 0    # map tasks that gave up their map-side combine (engine.shuffle.adaptive-combine)
    combine_kept: int = 0       # map tasks that decided to keep combining

    @property
    def duration(self) -> float:
        return max(0.0, self.stop - self.start)


QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)     # the task-duration columns of the stage table (min .. max)
STATUS_COLORS = {"ok": "#4c78a8", "failed": "#e45756", "cancelled": "#bab0ac", "lost": "#f58518",
                 "speculative": "#54a24b"}


def quantiles(values, qs=QUANTILES) -> tuple[float, ...] | None:
    """The ``qs`` quantiles of ``values`` by linear interpolation between the closest ranks (numpy's
    default; for 5 values: min, 2nd, 3rd, 4th, max); None for no values."""
    v = sorted(float(x) for x in values)
    if not v:
        return None
    out = []
    for q in qs:
        pos = q * (len(v) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        out.append(v[lo] + (v[hi] - v[lo]) * (pos - lo))
    return tuple(out)


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    from .skew import format_size
    return format_size(n)


def _status_class(t: TaskReport) -> str:
    """The timeline's color class of an attempt: its status, or "speculative" for a speculative copy."""
    return "speculative" if t.speculative and t.status != "failed" else t.status


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
    output_rows: int = 0               # rows, bytes and files this run wrote (committed with it; none when skipped)
    output_bytes: int = 0
    output_files: int = 0
    output_total_rows: int | None = None    # rows and files the output holds after the run (every generation
    output_total_files: int | None = None   # and partition: more than this run wrote in append and partition modes)
    stages: list[StageReport] = field(default_factory=list)
    tasks: list[TaskReport] = field(default_factory=list)
    skew: list[dict] = field(default_factory=list)
    joins: list[dict] = field(default_factory=list)       # join strategy and skew-split decisions, with sizes
    combine: list[dict] = field(default_factory=list)     # map stages whose tasks stopped combining, see note_combine
    speculation: list[dict] = field(default_factory=list)
    zombies: list[dict] = field(default_factory=list)     # cancelled attempts that kept running, see above
    retries: list[dict] = field(default_factory=list)
    rejected: int = 0                  # rows set aside as bad records (on_error / on_bad_file "reject")
    rejected_sample: list[str] = field(default_factory=list)   # a few of them: where and why
    # the retry figures of the whole run (the seed's M10, retries per failure: retries_spent / failures)
    failures: int = 0                                     # tasks (stage, partition) that failed at least once
    retries_spent: int = 0                                # attempts started again after a failure
    retry_budget: int | None = None                       # retries the run could spend (None: no limit)
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
    counters: dict = field(default_factory=dict)          # engine.counter() totals of the winning attempts

    @property
    def duration(self) -> float:
        return max(0.0, self.stop - self.start)

    @property
    def retries_per_failure(self) -> float | None:
        """Retries spent per failed task (the seed's M10); None when no task failed."""
        return round(self.retries_spent / self.failures, 3) if self.failures else None

    @property
    def retry_budget_left(self) -> int | None:
        """Retries the run could still have spent; None without a budget."""
        return None if self.retry_budget is None else max(0, self.retry_budget - self.retries_spent)

    def retry_line(self) -> str:
        """One line on the run's retries ("" when no task failed and no budget was set)."""
        if not self.failures and self.retry_budget is None:
            return ""
        text = (f"retries: {self.failures} failed task(s), {self.retries_spent} retr"
                f"{'y' if self.retries_spent == 1 else 'ies'} spent")
        if self.retries_per_failure is not None:
            text += f" ({self.retries_per_failure:g} per failure)"
        if self.retry_budget is not None:
            text += f"; budget {self.retry_budget}, {self.retry_budget_left} left"
        return text

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
        d["retries_per_failure"] = self.retries_per_failure
        d["retry_budget_left"] = self.retry_budget_left
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

    def stage_metrics(self) -> list[dict[str, Any]]:
        """Per stage, as Spark's stage page: tasks, attempts, wall time, the quantiles of its successful
        tasks' durations (``task_seconds``: min, 25th, median, 75th, max; None without task reports),
        rows in and out, ``shuffle_bytes`` (what its map tasks wrote for the next stage of the round;
        None for a stage that is no shuffle's map side), ``output_bytes`` (what its tasks wrote
        otherwise), and ``spills`` (map-side buffer spills, when the tasks report them; else None)."""
        reduced_rounds = {s.round for s in self.stages if s.kind != "map"}
        by_stage: dict[str, list[TaskReport]] = {}
        for t in self.tasks:
            by_stage.setdefault(t.stage, []).append(t)
        rows = []
        for s in self.stages:
            mine = by_stage.get(s.name, [])
            ok = [t for t in mine if t.status == "ok"]
            # a stage that failed has no stop time: it lasted until its last attempt ended
            seconds = s.duration if s.stop else max([t.stop - s.start for t in mine] + [0.0])
            shuffles = s.kind == "map" and s.round in reduced_rounds
            spills = [getattr(t, "spills", None) for t in ok]
            rows.append({
                "stage": s.name, "kind": s.kind, "round": s.round, "tasks": s.tasks, "attempts": s.attempts,
                "retries": s.retries, "speculative": s.speculative, "resumed": s.resumed, "seconds": seconds,
                "task_seconds": quantiles(t.duration for t in ok),
                "rows_in": s.rows_in, "rows_out": s.rows_out,
                "shuffle_bytes": s.bytes_out if shuffles else None,
                "output_bytes": None if shuffles else s.bytes_out,
                # (only map tasks that shuffle spill: other stages show none)
                "spills": sum(spills) if shuffles and spills and all(x is not None for x in spills) else None,
            })
        return rows

    def _error_lines(self) -> list[str]:
        err = self.error or {}
        if not err:
            return []
        what = err.get("type") or "error"
        lines = [f"  error: {what}" + (f" at {err['location']}" if err.get("location") else "")]
        msg = str(err.get("message") or "")
        if msg and msg not in self.message:
            lines.append(f"  {msg}")
        return lines

    def summary(self) -> str:
        lines = [f"job {self.job!r} run {self.run_id[:12]}: {self.status} in {self.duration:.2f}s"]
        if self.message:
            lines.append(f"  {self.message}")
        lines += self._error_lines()
        if self.status in ("committed",):
            resumed = sum(s.resumed for s in self.stages)
            lines.append(f"  input: {self.input_files} files, {self.input_bytes:,} bytes; written by this run: "
                         f"{self.output_files} files, {self.output_rows:,} rows, {self.output_bytes:,} bytes"
                         + (f" (including {resumed} task(s) resumed from an earlier, unfinished attempt)"
                            if resumed else ""))
            if self.output_total_rows is not None and (self.output_total_rows, self.output_total_files) != \
                    (self.output_rows, self.output_files):
                lines.append(f"  the output now holds: {self.output_total_files} files, {self.output_total_rows:,} "
                             "rows (this run's and those committed before it)")
            if self.cluster.get("where"):
                lines.append(f"  ran {self.cluster['where']}")
        if self.status == "skipped" and self.output_total_rows is not None:
            lines.append(f"  written by this run: nothing; the output holds: {self.output_total_files} files, "
                         f"{self.output_total_rows:,} rows")
        if self.rejected:
            lines.append(f"  rejected: {self.rejected:,} row(s) set aside in {self.output}/_rejected "
                         f"(mapreduce rejected {self.output}); e.g. {self.rejected_sample[0] if self.rejected_sample else '?'}")
        if self.counters:
            from .counters import summary_line
            lines.append(f"  {summary_line(self.counters)}")
        metrics = {m["stage"]: m for m in self.stage_metrics()}
        for s in self.stages:
            m = metrics[s.name]
            extra = []
            if s.combine_stopped:
                extra.append(f"{s.combine_stopped} stopped combining")
            if s.retries:
                extra.append(f"{s.retries} retried")
            if s.speculative:
                extra.append(f"{s.speculative} speculative")
            if s.resumed:
                extra.append(f"{s.resumed} resumed, counted in the rows")
            lines.append(f"  {s.name:<24} {s.tasks:>4} tasks {m['seconds']:7.2f}s  rows {s.rows_in:,} -> "
                         f"{s.rows_out:,}  {s.bytes_out:,} B" + (" shuffled" if m["shuffle_bytes"] is not None else "")
                         + (f"  ({', '.join(extra)})" if extra else ""))
            if m["task_seconds"] is not None:
                lines.append(f"  {'':<24} task seconds{' (tasks run now)' if s.resumed else ''} min/25/50/75/max: "
                             + " / ".join(_secs(x) for x in m["task_seconds"])
                             + (f"; {m['spills']} spill(s)" if m["spills"] is not None else ""))
            if self.tasks:
                lines.append(f"  {'':<24} tasks per worker: {self._placement_line(s.name)}")
        if self.retry_line():
            lines.append(f"  {self.retry_line()}")
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

    def stage_table_html(self) -> str:
        """The per-stage table (:meth:`stage_metrics`) as an HTML table (every string escaped)."""
        metrics = self.stage_metrics()
        spills = any(m["spills"] is not None for m in metrics)
        head = ("<tr><th rowspan=2>stage</th><th rowspan=2>tasks</th><th rowspan=2>retries</th>"
                "<th rowspan=2>speculative</th><th rowspan=2>time</th><th colspan=5>task seconds</th>"
                "<th rowspan=2>rows in</th><th rowspan=2>rows out</th><th rowspan=2>shuffle write</th>"
                "<th rowspan=2>output</th>" + ("<th rowspan=2>spills</th>" if spills else "")
                + "<th rowspan=2>tasks per worker</th></tr>"
                "<tr><th>min</th><th>25th</th><th>median</th><th>75th</th><th>max</th></tr>")
        body = []
        for m in metrics:
            q = m["task_seconds"] or (None,) * 5
            body.append(
                f"<tr><td>{html.escape(m['stage'])}</td><td>{m['tasks']}</td><td>{m['retries']}</td>"
                f"<td>{m['speculative']}</td><td>{m['seconds']:.2f}s</td>"
                + "".join(f"<td class='q'>{_secs(x)}</td>" for x in q)
                + f"<td>{m['rows_in']:,}</td><td>{m['rows_out']:,}</td><td>{_size(m['shuffle_bytes'])}</td>"
                f"<td>{_size(m['output_bytes'])}</td>"
                + (f"<td>{'-' if m['spills'] is None else m['spills']}</td>" if spills else "")
                + f"<td>{html.escape(redact(self._placement_line(m['stage'])))}</td></tr>")
        return ("<table class='stages' border=1 style='border-collapse:collapse;text-align:right'>"
                f"{head}{''.join(body)}</table>")

    def error_html(self) -> str:
        """The error of a run that did not commit (type, message, the user's file:line and source line,
        the user's frames, the full traceback), as an HTML block; "" when the report has none."""
        err = self.error or {}
        if not err:
            return ""
        esc = lambda x: html.escape(redact(str(x)))  # noqa: E731
        loc = (f"<div>at <code class='error-location'>{esc(err['location'])}</code>"
               + (f": <code>{esc(err['source'])}</code>" if err.get("source") else "") + "</div>"
               if err.get("location") else "")
        pre = "<pre style='white-space:pre-wrap;font-size:90%'>"
        tb = f"{pre}{esc(err['user_traceback'])}</pre>" if err.get("user_traceback") else ""
        if err.get("traceback"):
            tb += (f"<details{'' if tb else ' open'}><summary>full traceback</summary>{pre}"
                   f"{esc(err['traceback'])}</pre></details>")
        return (f"<div class='run-error' style='border:2px solid #e45756;background:#fdecea;padding:6px 10px;"
                f"margin:4px 0'><b>{esc(self.status)}: {esc(err.get('type') or 'error')}</b>: "
                f"{esc(err.get('message') or '')}{loc}{tb}</div>")

    def _repr_html_(self) -> str:
        """In a notebook: the summary, the stage table, the task timeline and the run's decisions, as
        self-contained HTML with inline SVG (:func:`engine.display.report_html`)."""
        from .display import report_html       # late: the display draws reports (display -> report)
        return report_html(self)

    def to_html(self, path: str | None = None) -> str:
        """A self-contained bokeh page: the error of a run that did not commit, the summary, the stage
        table and the task timeline per worker. Written to ``path`` if given."""
        from bokeh.embed import file_html
        from bokeh.layouts import column
        from bokeh.models import Div
        from bokeh.resources import INLINE

        parts = [Div(text=self.error_html(), sizing_mode="stretch_width")] if self.error else []
        parts += [Div(text=f"<pre>{html.escape(self.summary())}</pre>"),
                  Div(text=self.stage_table_html()), timeline_figure(self)]
        page = file_html(column(*parts), INLINE, title=f"{self.job} run {self.run_id[:12]}")
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page


STAGE_PALETTE = ("#9ecae9", "#ffbf79", "#88d27a", "#ff9d98", "#d6a5c9", "#c5b0d5", "#bcbd22", "#8cd17d")
_NO_WORKER = "(no worker seen)"


def timeline_figure(rep: RunReport, *, width: int = 900, title: str = "Tasks per worker"):
    """The bokeh figure of a run's attempts: one row per worker, one bar per attempt colored by its end
    (legend: ok, failed, cancelled, lost, speculative), and a top row with each stage's span, labelled."""
    from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem
    from bokeh.plotting import figure

    tasks = rep.tasks
    t0 = min([t.start for t in tasks] + [s.start for s in rep.stages if s.start], default=rep.start)
    name = lambda w: _NO_WORKER if not w or w == "?" else redact(w)  # noqa: E731
    workers = sorted({name(t.worker) for t in tasks}) or ["-"]
    rows = workers[::-1] + ["stages"]
    fig = figure(y_range=rows, height=140 + 36 * len(rows), width=width, title=title,
                 x_axis_label="seconds since the first task", tools="xpan,xwheel_zoom,reset,save")
    # the stages' spans, on the top row
    ends = {}
    for t in tasks:
        ends[t.stage] = max(ends.get(t.stage, 0.0), t.stop)
    spans = [(s.name, s.start - t0, max(s.stop or 0.0, ends.get(s.name, s.start)) - t0) for s in rep.stages]
    stage_src = ColumnDataSource({
        "y": ["stages"] * len(spans), "left": [a for _, a, _ in spans], "right": [b for _, _, b in spans],
        "stage": [n for n, _, _ in spans], "color": [STAGE_PALETTE[i % len(STAGE_PALETTE)] for i in range(len(spans))],
        "seconds": [round(b - a, 3) for _, a, b in spans]})
    stage_bars = fig.hbar(y="y", left="left", right="right", height=0.8, color="color", source=stage_src,
                          line_color="white")
    fig.text(x="left", y="y", text="stage", source=stage_src, text_baseline="middle", text_font_size="9pt",
             x_offset=3)
    fig.add_tools(HoverTool(renderers=[stage_bars], tooltips=[("stage", "@stage"), ("seconds", "@seconds")]))
    # the attempts, one renderer per color class so that the legend lists every class
    items, bars = [], []
    for cls, color in STATUS_COLORS.items():
        mine = [t for t in tasks if _status_class(t) == cls]
        data = {
            "worker": [name(t.worker) for t in mine], "left": [t.start - t0 for t in mine],
            "right": [t.stop - t0 for t in mine], "stage": [t.stage for t in mine],
            "partition": [t.partition for t in mine], "attempt": [t.attempt for t in mine],
            "status": [t.status + (" (speculative)" if t.speculative else "") for t in mine],
            "rows": [t.rows_out for t in mine], "seconds": [round(t.duration, 3) for t in mine],
            "error": [redact(t.error or "") for t in mine]}
        if not mine:        # one bar of no length: the legend draws the color of a class no attempt has
            data = {k: [workers[0]] if k == "worker" else [0.0] if k in ("left", "right") else [""] for k in data}
        src = ColumnDataSource(data)
        r = fig.hbar(y="worker", left="left", right="right", height=0.7, color=color, source=src,
                     line_color="white")
        bars.append(r)
        items.append(LegendItem(label=cls, renderers=[r]))
    fig.add_layout(Legend(items=items, title="attempt", click_policy="hide"), "right")
    fig.add_tools(HoverTool(renderers=bars, tooltips=[
        ("stage", "@stage"), ("partition", "@partition"), ("attempt", "@attempt"), ("status", "@status"),
        ("seconds", "@seconds"), ("rows out", "@rows"), ("error", "@error")]))
    return fig


__all__ = ["RunReport", "StageReport", "TaskReport", "quantiles", "timeline_figure"]
