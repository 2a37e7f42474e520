"""The three dashboards of batch operations, from the run history, as one self-contained HTML page.

* **Executive**: success rate per job (M1), cost per run over time (CPU-seconds and GB-seconds of the
  workers, priced when ``engine.cost.cpu-second`` / ``engine.cost.gb-second`` are set, with a weekly
  trend), SLO compliance, error budget left and burn rates per job and objective.
* **On-call**: the failed, interrupted, refused, lost, late (deadline missed) and slow (over the
  latency objective) runs with their error (type, the user's file:line, message), completion time
  P50/P95/P99 per job (M2), retries and rejected records per run.
* **Debug** (one run: ``run=``, default the newest): the task-duration histogram with its stragglers
  (attempts longer than 1.5x their stage's median) and speculative attempts marked, the per-stage
  table, partition sizes, the age of the newest checkpoint (journaled task result) over the run, and
  the worker timeline.

The indicators and objectives are :mod:`engine.slo`'s (the same figures as ``mapreduce slo`` and
``mapreduce history --since``).

>>> from engine import dashboard, history
>>> dashboard.render(history.open_store(), since=7 * 86400, path="ops.html")   # doctest: +SKIP

or ``mapreduce dashboard -o ops.html --since 7d``. The page embeds bokeh (no network needed to open
it); every string in it comes from the history, which holds no secrets (:mod:`engine.history`),
and is escaped.
"""

from __future__ import annotations

import argparse
import html
import statistics
import time
from collections.abc import Mapping
from typing import Any

from . import slo
from .errors import EngineError, JobDefinitionError
from .history import report_of, shown_status

DEFAULT_WINDOW = 30 * 86400.0
DEFAULT_FILE = "mapreduce-dashboard.html"
STRAGGLER_FACTOR = 1.5          # an attempt longer than this times its stage's median is a straggler
PROBLEMS = ("failed", "interrupted", "refused", "lost")
JOB_PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d",
               "#bab0ac", "#eeca3b")


class RunNotFoundError(EngineError, LookupError):
    """The run asked for (``run=``, ``--run``) is not in the history."""


def render(store, *, since: float | None = None, job: str | None = None, run: str | None = None,
           objectives: Any = None, path: str | None = None, rates: Mapping[str, float] | None = None,
           now: float | None = None) -> str:
    """The dashboards page over the runs that started in the last ``since`` seconds (default 30 days)
    of ``job`` (default all jobs), from ``store`` (:func:`engine.history.open_store`; None: the history
    is off). ``run``: the record id or run id (or a prefix) shown in the debug dashboard, default the
    newest run. ``objectives``: an :class:`engine.slo.Objectives` (or a dict of its fields) for every
    job, or ``{job: objectives}``; default each job's newest declared ones. ``rates``: prices per
    ``cpu_second`` and ``gb_second``, default ``engine.cost.*``. Written to ``path`` if given; returns
    the HTML."""
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models import Div, TabPanel, Tabs
    from bokeh.resources import INLINE

    now = time.time() if now is None else float(now)
    window = DEFAULT_WINDOW if since is None else float(since)
    records = store.records(job=job, since=now - window, newest_first=False) if store is not None else []
    records = [dict(rec, shown=shown_status(rec)) for rec in records]
    chosen = _chosen(store, records, run)
    where = html.escape(getattr(store, "location", "") or "")
    scope = f"job {html.escape(job)}" if job else "all jobs"
    head = (f"<h2>Batch runs: {scope}, last {_window_text(window)}</h2>"
            f"<div>{len(records)} run(s) since {_when(now - window)}; generated {_when(now)}"
            + (f" from the history at <code>{where}</code>" if where else "") + "</div>")
    if not records and chosen is None:
        layout = column(Div(text=head + "<p class='empty'><b>No runs recorded in this window.</b> Every "
                            "<code>engine.run</code> and <code>mapreduce run</code> leaves a record in the history "
                            "(<code>ENGINE_HISTORY</code>); widen the window with <code>--since</code>.</p>",
                            sizing_mode="stretch_width"))
    else:
        objs = _objectives(records, objectives)
        prices = dict(slo.default_rates())
        prices.update({k.replace("-", "_"): float(v or 0.0) for k, v in (rates or {}).items()})
        slis = slo.compute_slis(records, since=now - window, now=now, rates=prices, objectives=objs)
        tabs = [TabPanel(title="Executive", child=_executive(records, slis, objs, prices, now)),
                TabPanel(title="On-call", child=_on_call(records, slis, objs)),
                TabPanel(title="Debug", child=_debug(chosen))]
        layout = column(Div(text=head, sizing_mode="stretch_width"), Tabs(tabs=tabs, name="dashboards"))
    page = file_html(layout, INLINE, title="mapreduce dashboard")
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    return page


# -- the pieces ------------------------------------------------------------------------------------

def _chosen(store, records: list[dict], run: str | None) -> dict | None:
    if run is None:
        return records[-1] if records else None
    for rec in reversed(records):
        if str(rec.get("record_id") or "").startswith(run) or str(rec.get("run_id") or "").startswith(run):
            return rec
    rec = store.get(run) if store is not None else None
    if rec is None:
        raise RunNotFoundError(f"no run {run!r} in the history"
                               + (f" at {getattr(store, 'location', '')}" if store is not None else " (it is off)")
                               + "; `mapreduce history` lists the runs and their ids")
    return dict(rec, shown=shown_status(rec))


def _objectives(records: list[dict], objectives: Any) -> dict[str, slo.Objectives]:
    """Per job, the objectives judged: ``objectives`` for every job (an Objectives, or a dict of its
    fields), or per job (``{job: ...}``); None: the newest declared in each job's records."""
    if objectives is None:
        return slo.objectives_from_records(records)
    fields = {f.replace("_", "-") for f in slo.Objectives.__dataclass_fields__} | set(slo.Objectives.__dataclass_fields__)
    if isinstance(objectives, slo.Objectives) or (isinstance(objectives, Mapping) and set(objectives) <= fields):
        one = slo.Objectives.from_obj(objectives)
        return {j: one for j in sorted({str(r.get("job")) for r in records})}
    return {str(j): o for j, v in objectives.items() if (o := slo.Objectives.from_obj(v, what=f"job {j!r}"))}


def _window_text(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:g}s"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _by_job(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(str(r.get("job") or "?"), []).append(r)
    return dict(sorted(out.items()))


def _colors(jobs) -> dict[str, str]:
    return {j: JOB_PALETTE[i % len(JOB_PALETTE)] for i, j in enumerate(jobs)}


def _table(header: list[str], rows: list[list[Any]], cls: str) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}' border=1 style='border-collapse:collapse'><tr>{th}</tr>{body}</table>"


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cpu(rec: dict) -> float:
    """A run's CPU-seconds as engine.slo counts them (M6, M7): the worker processes', else the task threads'."""
    value = rec.get("worker_cpu_seconds")
    return float(value if value is not None else rec.get("cpu_seconds") or 0.0)


def _objective_label(row: Mapping[str, Any]) -> str:
    name, limit = row["objective"], row.get("threshold")
    if name == "success":
        return "success rate"
    if name.startswith("latency") and limit is not None:
        return f"{name} <= {limit:g}s"
    return f"{name} {limit}" if limit is not None else name


def _problem(rec: dict, obj: slo.Objectives | None) -> str | None:
    """Why an ended run needs the on-call's eyes, or None: it failed (or was interrupted, refused,
    lost), missed its deadline, or took longer than the job's latency objective allows."""
    why = []
    if rec["shown"] in PROBLEMS:
        why.append(rec["shown"])
    if rec.get("deadline_missed"):
        why.append(f"late: missed the {obj.deadline} deadline" if obj is not None and obj.deadline
                   else "late: missed its deadline")
    secs = rec.get("seconds")
    if obj is not None and rec["shown"] == "committed" and secs is not None:
        limit = min((x for x in (obj.p95_seconds, obj.p99_seconds) if x is not None), default=None)
        if limit is not None and float(secs) > limit:
            why.append(f"slow: took {float(secs):.1f}s, over the {limit:g}s latency objective")
    return "; ".join(why) or None


# -- executive -------------------------------------------------------------------------------------

def _executive(records: list[dict], slis: dict, objs: dict, prices: dict[str, float], now: float):
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, FactorRange, HoverTool
    from bokeh.plotting import figure

    jobs = _by_job(records)
    colors = _colors(jobs)
    finished = sum(s["finished"] for s in slis.values())
    ok = sum(s["success_rate"] * s["finished"] for s in slis.values() if s["success_rate"] is not None)
    intro = Div(text=f"<h3>Executive</h3><div>{finished} finished run(s) of {len(jobs)} job(s); overall "
                     f"success rate <b>{_pct(ok / finished if finished else None)}</b>.</div>",
                sizing_mode="stretch_width")
    names = list(slis)
    rows = slo.compliance(records, objs, now=now)
    breached = {r["job"] for r in rows if r["breached"] and r["objective"] == "success"}
    rate_src = ColumnDataSource({
        "job": names, "rate": [100 * (slis[j]["success_rate"] or 0.0) for j in names],
        "label": [_pct(slis[j]["success_rate"]) for j in names],
        "runs": [slis[j]["finished"] for j in names],
        "failed": [slis[j]["finished"] - sum(slis[j]["statuses"].get(k, 0) for k in ("committed", "skipped"))
                   for j in names],
        "color": [("#e45756" if j in breached else colors[j]) for j in names]})
    rate = figure(x_range=names, y_range=(0, 108), height=300, width=440, title="Success rate per job (%)",
                  tools="save")
    rate.vbar(x="job", top="rate", width=0.7, color="color", source=rate_src)
    rate.text(x="job", y="rate", text="label", source=rate_src, text_align="center", text_font_size="9pt",
              y_offset=-2)
    rate.add_tools(HoverTool(tooltips=[("job", "@job"), ("success", "@label"), ("finished runs", "@runs"),
                                       ("not succeeded", "@failed")]))
    rate.xaxis.major_label_orientation = 0.6 if len(names) > 4 else 0
    if rows:
        keys = [(r["job"], r["objective"]) for r in rows]
        bud = figure(x_range=FactorRange(*keys), height=300, width=560, title="Error budget left (%)",
                     tools="save")
        bud.vbar(x="x", top="left", width=0.7, color="color", source=ColumnDataSource({
            "x": keys, "left": [100 * r["budget_remaining"] for r in rows],
            "good": [f"{r['good']}/{r['total']}" for r in rows],
            "color": ["#e45756" if r["breached"] else "#54a24b" for r in rows]}))
        bud.add_tools(HoverTool(tooltips=[("", "@x"), ("budget left", "@left{0.0}%"), ("good/total", "@good")]))
        bud.xaxis.major_label_orientation = 0.6 if len(rows) > 4 else 0
    else:
        bud = Div(text="<p><b>No job declares objectives</b> in this window: declare them with "
                       "<code>Job(..., slo={...})</code> to see compliance and error budgets here.</p>", width=440)
    table = _table(["job", "objective", "target", "measured", "good/total", "budget left", "burn 1h", "burn 6h",
                    "burn 30d", ""],
                   [[r["job"], _objective_label(r), _pct(r["target"]), _pct(r["measured"]), f"{r['good']}/{r['total']}",
                     _pct(r["budget_remaining"], 0), _num(r["burn_1h"]), _num(r["burn_6h"]), _num(r["burn_30d"]),
                     "BREACHED" if r["breached"] else ""] for r in rows], "slo")

    cost_figs = []
    priced = prices.get("cpu_second", 0.0) > 0 or prices.get("gb_second", 0.0) > 0
    measures = [("cpu", "CPU-seconds per run"), ("gb", "GB-seconds per run")]
    if priced:
        measures.append(("cost", "Cost per run (at engine.cost.* rates)"))
    for key, title in measures:
        fig = figure(x_axis_type="datetime", height=260, width=440, title=title, tools="xpan,xwheel_zoom,reset,save")
        for j, recs in jobs.items():
            done = [r for r in recs if r["status"] != "running"]
            cpu = [_cpu(r) for r in done]
            gb = [float(r.get("memory_gb_seconds") or 0.0) for r in done]
            y = {"cpu": cpu, "gb": gb,
                 "cost": [c * prices.get("cpu_second", 0.0) + g * prices.get("gb_second", 0.0)
                          for c, g in zip(cpu, gb)]}[key]
            src = ColumnDataSource({"t": [1000 * float(r["started"]) for r in done], "y": y,
                                    "job": [j] * len(done), "status": [r["shown"] for r in done],
                                    "run": [str(r.get("run_id") or "")[:12] for r in done]})
            fig.line(x="t", y="y", source=src, color=colors[j], legend_label=j)
            fig.scatter(x="t", y="y", source=src, color=colors[j], size=6, legend_label=j)
        fig.add_tools(HoverTool(tooltips=[("job", "@job"), ("run", "@run"), ("status", "@status"),
                                          ("value", "@y{0.000}"), ("started", "@t{%F %T}")],
                                formatters={"@t": "datetime"}))
        fig.legend.location = "top_left"
        fig.legend.label_text_font_size = "8pt"
        cost_figs.append(fig)
    return column(intro, row(rate, bud), Div(text="<h4>SLO compliance</h4>" + table),
                  Div(text="<h4>Cost per run</h4>"), row(*cost_figs[:2]), *cost_figs[2:],
                  Div(text=_weekly_cost(records, prices, priced)))


def _weekly_cost(records: list[dict], prices: dict[str, float], priced: bool) -> str:
    """Per job and ISO week: finished runs and mean CPU-seconds / GB-seconds (and cost) per run."""
    weeks: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["status"] != "running":
            weeks.setdefault((str(r.get("job")), time.strftime("%G-W%V", time.localtime(float(r["started"])))),
                             []).append(r)
    rows = []
    for (j, wk), recs in sorted(weeks.items()):
        cpu = statistics.fmean(_cpu(r) for r in recs)
        gb = statistics.fmean(float(r.get("memory_gb_seconds") or 0.0) for r in recs)
        cells = [j, wk, len(recs), f"{cpu:.3f}", f"{gb:.3f}"]
        if priced:
            cells.append(f"{cpu * prices.get('cpu_second', 0.0) + gb * prices.get('gb_second', 0.0):.6g}")
        rows.append(cells)
    header = ["job", "week", "runs", "CPU-s per run", "GB-s per run"] + (["cost per run"] if priced else [])
    return "<h4>Weekly trend</h4>" + _table(header, rows, "weekly")


# -- on-call ---------------------------------------------------------------------------------------

def _on_call(records: list[dict], slis: dict, objs: dict):
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, DataTable, Div, FactorRange, HoverTool, TableColumn
    from bokeh.plotting import figure

    problems = [(r, why) for r in records if (why := _problem(r, objs.get(str(r.get("job")))))]
    problems.sort(key=lambda p: -float(p[0].get("started") or 0))
    cols = {
        "started": [_when(r.get("started")) for r, _ in problems],
        "job": [str(r.get("job")) for r, _ in problems],
        "status": [r["shown"] for r, _ in problems],
        "run": [str(r.get("record_id") or r.get("run_id") or "")[:16] for r, _ in problems],
        "why": [why for _, why in problems],
        "error_type": [str(r.get("error_type") or "") for r, _ in problems],
        "location": [str(r.get("error_location") or "") for r, _ in problems],
        "message": [str(r.get("message") or "") for r, _ in problems],
    }
    widths = {"started": 140, "job": 100, "status": 80, "run": 130, "why": 220, "error_type": 120, "location": 200,
              "message": 480}
    table = DataTable(source=ColumnDataSource(cols), width=1300, height=min(420, 60 + 26 * max(1, len(problems))),
                      index_position=None, reorderable=False, name="problems",
                      columns=[TableColumn(field=k, title=k.replace("_", " "), width=w) for k, w in widths.items()])
    intro = Div(text=f"<h3>On-call</h3><div><b>{len(problems)}</b> failed, interrupted, refused, lost, late or "
                     f"slow run(s) in the window{' (newest first)' if problems else ''}. A run's whole report: "
                     "<code>mapreduce show RUN</code>; its debug dashboard: <code>mapreduce dashboard --run RUN"
                     "</code>.</div>", sizing_mode="stretch_width")
    # M2: completion time of the committed runs, per job (nearest-rank percentiles)
    factors, values, labels = [], [], []
    for j, s in slis.items():
        c = s["completion_seconds"]
        for name in ("p50", "p95", "p99"):
            factors.append((j, name.upper()))
            values.append(c[name] or 0.0)
            labels.append(f"{c[name]:.2f}s of {c['runs']} committed run(s)" if c[name] is not None
                          else "no committed run")
    qfig = figure(x_range=FactorRange(*factors) if factors else ["-"], height=300, width=640,
                  title="Completion time of committed runs (seconds)", tools="save")
    qfig.vbar(x="x", top="v", width=0.8, source=ColumnDataSource({
        "x": factors, "v": values, "label": labels,
        "color": [{"P50": "#9ecae9", "P95": "#4c78a8", "P99": "#1f3b63"}[q] for _, q in factors]}), color="color")
    qfig.add_tools(HoverTool(tooltips=[("", "@x"), ("seconds", "@label")]))
    qfig.xaxis.major_label_orientation = 0.8 if len(slis) > 3 else 0
    # retries and rejected records per run
    done = [r for r in records if r["status"] != "running"]
    src = ColumnDataSource({
        "t": [1000 * float(r["started"]) for r in done], "retries": [int(r.get("retries") or 0) for r in done],
        "rejected": [int(r.get("rejected") or 0) for r in done],
        "failures": [int(r.get("task_failures") or 0) for r in done],
        "job": [str(r.get("job")) for r in done], "status": [r["shown"] for r in done],
        "run": [str(r.get("run_id") or "")[:12] for r in done]})
    rfig = figure(x_axis_type="datetime", height=300, width=640, title="Retries and rejected records per run",
                  tools="xpan,xwheel_zoom,reset,save")
    rfig.segment(x0="t", y0=0, x1="t", y1="retries", source=src, color="#f58518", line_width=2)
    r1 = rfig.scatter(x="t", y="retries", source=src, color="#f58518", size=8, legend_label="retries")
    r2 = rfig.scatter(x="t", y="rejected", source=src, color="#e45756", marker="square", size=7,
                      legend_label="rejected records")
    rfig.add_tools(HoverTool(renderers=[r1, r2], tooltips=[
        ("job", "@job"), ("run", "@run"), ("status", "@status"), ("retries", "@retries"),
        ("failed attempts", "@failures"), ("rejected", "@rejected"), ("started", "@t{%F %T}")],
        formatters={"@t": "datetime"}))
    rfig.legend.location = "top_left"
    return column(intro, table, row(qfig, rfig))


# -- debug -----------------------------------------------------------------------------------------

def stragglers(rep) -> list[tuple[Any, float]]:
    """The attempts of ``rep`` longer than ``STRAGGLER_FACTOR`` times the median duration of their
    stage's successful attempts, with that ratio."""
    medians = {}
    for s in {t.stage for t in rep.tasks}:
        ok = [t.duration for t in rep.tasks if t.stage == s and t.status == "ok"]
        if ok:
            medians[s] = statistics.median(ok)
    out = []
    for t in rep.tasks:
        m = medians.get(t.stage)
        if m and t.duration > STRAGGLER_FACTOR * m and t.worker != "?":
            out.append((t, t.duration / m))
    return out


def checkpoint_ages(rep) -> tuple[list[float], list[float]]:
    """The age of the run's newest checkpoint (a successful task's journaled result; the run's start
    until the first) over the run, as (seconds since the start, age) points of a sawtooth."""
    start = rep.start or min((t.start for t in rep.tasks), default=0.0)
    end = rep.stop or max((t.stop for t in rep.tasks), default=start)
    saves = sorted({t.stop for t in rep.tasks if t.status == "ok" and start <= t.stop <= end})
    xs, ys, last = [0.0], [0.0], start
    for s in saves:
        xs += [s - start, s - start]
        ys += [s - last, 0.0]
        last = s
    xs.append(end - start)
    ys.append(end - last)
    return xs, ys


def _debug(rec: dict | None):
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, FactorRange, HoverTool
    from bokeh.plotting import figure
    from .report import STAGE_PALETTE, timeline_figure

    if rec is None:
        return column(Div(text="<h3>Debug</h3><p>No run to show.</p>"))
    rep = report_of(rec)
    rid = html.escape(str(rec.get("record_id") or rep.record_id or "")[:16])
    head = (f"<h3>Debug: {html.escape(str(rec.get('job')))} run <code>{html.escape(rep.run_id[:16])}</code></h3>"
            f"<div>record <code>{rid}</code>, {html.escape(rec['shown'])}, started {_when(rec.get('started'))}, "
            f"{float(rec.get('seconds') or 0):.2f}s. Another run: <code>mapreduce dashboard --run RUN_ID</code>."
            f"</div><pre>{html.escape(rep.summary())}</pre>")
    parts = [Div(text=head + rep.error_html(), sizing_mode="stretch_width"),
             Div(text="<h4>Stages</h4>" + rep.stage_table_html())]
    if not rep.tasks:
        parts.append(Div(text="<p>This run has no task reports (it ran no task).</p>"))
        return column(*parts)
    # duration histogram, stacked: normal, stragglers, speculative
    slow = {id(t): ratio for t, ratio in stragglers(rep)}
    seen = [t for t in rep.tasks if t.worker != "?" or t.status == "failed"]

    def klass(t) -> str:
        return ("failed" if t.status == "failed" else "speculative" if t.speculative
                else "straggler" if id(t) in slow else "normal")
    durations = [t.duration for t in seen]
    lo, hi = min(durations), max(durations)
    nbins = max(5, min(30, len(durations)))
    width = (hi - lo) / nbins or max(hi, 1e-3) / nbins
    edges = [lo + i * width for i in range(nbins + 1)]
    kinds = {"normal": "#4c78a8", "straggler": "#f58518", "speculative": "#54a24b", "failed": "#e45756"}
    counts = {k: [0] * nbins for k in kinds}
    for t in seen:
        i = min(nbins - 1, int((t.duration - lo) / width)) if width else 0
        counts[klass(t)][i] += 1
    hist = figure(height=300, width=560, title=f"Task durations (stragglers: > {STRAGGLER_FACTOR:g}x their "
                  "stage's median)", x_axis_label="seconds", y_axis_label="attempts", tools="save")
    bottom = [0] * nbins
    for k, color in kinds.items():
        top = [b + c for b, c in zip(bottom, counts[k])]
        hist.quad(left=edges[:-1], right=edges[1:], bottom=bottom, top=top, color=color, line_color="white",
                  legend_label=f"{k} ({sum(counts[k])})")
        bottom = top
    hist.legend.location = "top_right"
    slow_rows = [[t.stage, t.partition, t.attempt, t.worker, f"{t.duration:.3f}", f"{r:.1f}x"]
                 for t, r in sorted(stragglers(rep), key=lambda p: -p[1])][:50]
    slow_table = Div(text="<h4>Stragglers</h4>" + (_table(["stage", "partition", "attempt", "worker", "seconds",
                                                           "x stage median"], slow_rows, "stragglers")
                                                    if slow_rows else "<p>none</p>"))
    # partition sizes of the successful attempts
    ok = sorted((t for t in rep.tasks if t.status == "ok"), key=lambda t: (t.stage, t.partition))
    stage_color = {s.name: STAGE_PALETTE[i % len(STAGE_PALETTE)] for i, s in enumerate(rep.stages)}
    psrc = ColumnDataSource({"x": [(t.stage, str(t.partition)) for t in ok], "rows": [t.rows_out for t in ok],
                             "bytes": [t.bytes_out for t in ok],
                             "color": [stage_color.get(t.stage, "#999") for t in ok],
                             "seconds": [round(t.duration, 3) for t in ok]})
    sizes = []
    for key, title in (("rows", "Rows out per task partition"), ("bytes", "Bytes out per task partition")):
        fig = figure(x_range=FactorRange(*psrc.data["x"]) if ok else ["-"], height=280, width=560, title=title,
                     tools="save")
        fig.vbar(x="x", top=key, width=0.8, color="color", source=psrc)
        fig.add_tools(HoverTool(tooltips=[("stage, partition", "@x"), ("rows", "@rows"), ("bytes", "@bytes"),
                                          ("seconds", "@seconds")]))
        fig.xaxis.major_label_orientation = 1.2 if len(ok) > 12 else 0
        sizes.append(fig)
    xs, ys = checkpoint_ages(rep)
    ck = figure(height=280, width=560, title="Age of the newest checkpoint (journaled task result)",
                x_axis_label="seconds since the run started", y_axis_label="seconds", tools="save")
    ck.line(xs, ys, color="#b279a2", line_width=2)
    ck.scatter(xs[1::2], ys[1::2], color="#b279a2", size=5)
    return column(*parts, row(hist, slow_table), row(*sizes), ck, timeline_figure(rep, width=1100))


# -- the command line ------------------------------------------------------------------------------

def add_parser(sub: Any, common: Any) -> None:
    d = sub.add_parser("dashboard", parents=[common], help="write the executive, on-call and debug dashboards "
                       "of the run history as one HTML page",
                       description="Render the run history (ENGINE_HISTORY) as one self-contained HTML page with "
                                   "three dashboards: executive (success rate, cost per run, SLO compliance and "
                                   "error budget per job), on-call (failed and late runs with their errors, P95/P99 "
                                   "completion, retries, rejected records) and debug (one run's task durations, "
                                   "stragglers, partition sizes, checkpoint age and worker timeline). Prints the "
                                   "page's path.")
    d.add_argument("-o", "--output", default=DEFAULT_FILE, help=f"the HTML file to write (default {DEFAULT_FILE})")
    d.add_argument("--since", default="30d", type=_since_arg,
                   help="the window of runs shown, back from now: e.g. 30d, 12h, 90m (default 30d)")
    d.add_argument("--job", help="show only this job's runs")
    d.add_argument("--run", help="the run (record id or run id, or a prefix) of the debug dashboard "
                                 "(default the newest run)")


def _since_arg(text: str) -> float:
    try:
        return slo.parse_window(text)
    except JobDefinitionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def command(args: Any) -> int:
    import os
    import sys
    from . import history
    store = history.open_store(create=False)
    try:
        render(store, since=args.since, job=args.job, run=args.run, path=args.output)
    except RunNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(os.path.abspath(args.output))
    return 0


__all__ = ["render", "stragglers", "checkpoint_ages", "add_parser", "command", "RunNotFoundError",
           "DEFAULT_WINDOW", "DEFAULT_FILE", "STRAGGLER_FACTOR"]
