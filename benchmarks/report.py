"""A self-contained bokeh HTML page from a results file of ``python -m benchmarks``.

    python -m benchmarks report RESULTS.jsonl [-o RESULTS.html]

The page holds: the environment and run parameters; per suite with peers, the engine against each
peer per question (median seconds, bars, with the min-max of the repeats as whiskers) and a table of
the pairwise ratios and answer checks; per knob swept, the engine's throughput (input rows/s) against
the knob's values, one line per case; the scale suite's growth curves (seconds against input rows,
log-log, one line per system and question); and the task timeline of the chosen engine run, drawn by the
engine's own :meth:`engine.report.RunReport.to_html` inside a frame. Bokeh's JavaScript is inlined,
so the file opens without a network.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections import defaultdict
from typing import Any

from benchmarks.compare import ResultsFileError

SYSTEM_COLORS = {"engine": "#4c78a8", "duckdb": "#f58518", "polars": "#54a24b", "pyarrow": "#b279a2",
                 "dask": "#e45756"}
CASE_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d")


def read(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsFileError(f"cannot read results from {path}: {exc}") from exc


def _knob_order(values: list[Any]) -> list[str]:
    """Knob values as axis labels, in a natural order (numbers and sizes by magnitude)."""
    from dask.utils import parse_bytes

    def rank(v: Any) -> tuple:
        if isinstance(v, bool):
            return (0, int(v), str(v))
        if isinstance(v, (int, float)):
            return (1, float(v), str(v))
        try:
            return (2, float(parse_bytes(str(v))), str(v))
        except (ValueError, TypeError):
            return (3, 0.0, str(v))
    return [str(v) for v in sorted(set(values), key=rank)]


def peers_figure(suite: str, recs: list[dict]):
    """Median seconds per case and system, with min-max whiskers."""
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Whisker
    from bokeh.plotting import figure

    rows = [r for r in recs if r.get("median") is not None]
    factors = [(r["case"], r["system"]) for r in rows]
    src = ColumnDataSource({
        "x": factors, "median": [r["median"] for r in rows], "lo": [r["min"] for r in rows],
        "hi": [r["max"] for r in rows], "system": [r["system"] for r in rows],
        "color": [SYSTEM_COLORS.get(r["system"], "#888888") for r in rows],
        "runs": [", ".join(f"{x:.3f}" for x in r["runs"]) for r in rows],
    })
    fig = figure(x_range=FactorRange(*factors), height=340, width=max(500, 34 * len(factors) + 120),
                 title=f"{suite}: engine and peers, median seconds (whiskers: min-max of the repeats)",
                 y_axis_label="seconds", tools="pan,wheel_zoom,reset,save")
    fig.vbar(x="x", top="median", width=0.8, color="color", source=src)
    fig.add_layout(Whisker(base="x", lower="lo", upper="hi", source=src))
    fig.add_tools(HoverTool(tooltips=[("case, system", "@x"), ("median s", "@median{0.000}"), ("runs", "@runs")]))
    fig.xaxis.major_label_orientation = 1.0
    fig.y_range.start = 0
    return fig


def ratio_table(suite: str, recs: list[dict]) -> str:
    engine = [r for r in recs if r["system"] == "engine" and not r.get("sweep")]
    peers = sorted({p for r in engine for p in (r.get("ratios") or {})})
    head = "".join(f"<th>engine / {html.escape(p)}</th>" for p in peers)
    body = []
    for r in engine:
        cells = "".join(f"<td>{'-' if r['ratios'].get(p) is None else format(r['ratios'][p], '.2f')}</td>"
                        for p in peers)
        chk = r.get("check") or {}
        status = "-" if not chk else ("ok" if chk.get("ok") else "DIFFER")
        against = ", ".join(f"{html.escape(k)} ({v.get('how')})" for k, v in (chk.get("against") or {}).items())
        body.append(f"<tr><td>{html.escape(r['case'])}</td><td>{r['median']:.3f}</td>{cells}"
                    f"<td>{status}</td><td>{against}</td></tr>")
    return (f"<table class='ratios'><tr><th>{html.escape(suite)} case</th><th>engine s</th>{head}"
            f"<th>answer</th><th>checked against</th></tr>{''.join(body)}</table>"
            "<p class='note'>Ratios are medians of per-repeat ratios (below 1: the engine is faster).</p>")


def sweep_figure(knob: str, recs: list[dict]):
    """Throughput (input rows per second) against the knob's values, one line per suite/case."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    labels = _knob_order([r["params"].get(knob) for r in recs])
    fig = figure(x_range=labels, height=320, width=560, title=f"throughput vs {knob}",
                 x_axis_label=knob, y_axis_label="input rows / s", tools="pan,wheel_zoom,reset,save")
    by_case: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_case[f"{r['suite']}/{r['case']}"].append(r)
    for i, (case, rows) in enumerate(sorted(by_case.items())):
        rows = sorted((r for r in rows if r.get("rows_per_s")), key=lambda r: labels.index(str(r["params"][knob])))
        src = ColumnDataSource({"x": [str(r["params"][knob]) for r in rows], "y": [r["rows_per_s"] for r in rows],
                                "median": [r["median"] for r in rows], "case": [case] * len(rows)})
        color = CASE_COLORS[i % len(CASE_COLORS)]
        fig.line("x", "y", source=src, color=color, legend_label=case, line_width=2)
        fig.scatter("x", "y", source=src, color=color, size=8)
    fig.add_tools(HoverTool(tooltips=[("case", "@case"), (knob, "@x"), ("rows/s", "@y{0,0}"),
                                      ("median s", "@median{0.000}")]))
    fig.y_range.start = 0
    fig.legend.location = "bottom_left"
    fig.legend.click_policy = "hide"
    return fig


def growth_figure(recs: list[dict]):
    """The scale suite: median seconds against input rows (log-log), one line per question and system."""
    from bokeh.models import ColumnDataSource, HoverTool, Legend
    from bokeh.plotting import figure

    fig = figure(height=380, width=820, x_axis_type="log", y_axis_type="log", x_axis_label="input rows",
                 y_axis_label="median seconds", title="scale: seconds per input size",
                 tools="pan,wheel_zoom,reset,save")
    fig.add_layout(Legend(click_policy="hide", label_text_font_size="11px"), "right")
    curves: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        if r.get("median"):
            curves[(r["params"]["question"], r["system"])].append(r)
    dashes = ("solid", "dashed", "dotted", "dotdash", "dashdot")
    questions = sorted({q for q, _ in curves})
    for (q, system), rows in sorted(curves.items()):
        rows.sort(key=lambda r: r["params"]["rows"])
        src = ColumnDataSource({"x": [r["params"]["rows"] for r in rows], "y": [r["median"] for r in rows],
                                "label": [f"{q} {system}"] * len(rows)})
        color = SYSTEM_COLORS.get(system, "#888888")
        dash = dashes[questions.index(q) % len(dashes)]
        fig.line("x", "y", source=src, color=color, line_dash=dash, line_width=2, legend_label=f"{q} {system}")
        fig.scatter("x", "y", source=src, color=color, size=7)
    fig.add_tools(HoverTool(tooltips=[("", "@label"), ("rows", "@x{0,0}"), ("median s", "@y{0.000}")]))
    return fig


def timeline_frame(rec: dict) -> str:
    """The engine's own report page of the chosen run, in a frame of this page."""
    from engine.report import RunReport

    page = RunReport.from_dict(rec["report"]).to_html()
    return (f"<h2>Task timeline: {html.escape(rec['suite'])} {html.escape(rec['case'])} (median engine run, "
            f"{rec['seconds']:.2f} s)</h2><iframe class='timeline' title='task timeline' "
            f"srcdoc=\"{html.escape(page, quote=True)}\"></iframe>")


def render(records: list[dict], title: str = "Benchmarks") -> str:
    """The whole page as an HTML string."""
    from bokeh.embed import components
    from bokeh.resources import INLINE

    run = next((r for r in records if r.get("kind") == "run"), {})
    summary = next((r for r in records if r.get("kind") == "summary"), {})
    meas = [r for r in records if r.get("kind") == "measurement"]
    if not meas:
        raise ResultsFileError("no measurements to report")
    sections: list[tuple[str, Any]] = []       # (html before, bokeh model or None)

    env = run.get("environment", {})
    git = (env.get("git_revision") or "")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    facts = {"mode": run.get("mode"), "git": git,
             "cores": env.get("cores"), "memory GiB": round((env.get("memory_bytes") or 0) / 2**30, 1),
             "cluster": env.get("cluster"), "repeat": run.get("params", {}).get("repeat"),
             "peers": run.get("params", {}).get("peers"), "versions": env.get("versions"),
             "wall seconds": summary.get("seconds"), "all answers ok": summary.get("ok")}
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    command = html.escape(run.get("command", ""))
    sections.append((f"<h1>{html.escape(title)}</h1><table class='env'>{head}</table>"
                     f"<p>reproduce: <code>{command}</code></p>", None))

    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in meas:
        if not r.get("sweep"):
            by_suite[r["suite"]].append(r)
    for suite, recs in by_suite.items():
        if len({r["system"] for r in recs}) > 1:
            sections.append((f"<h2>{html.escape(suite)}</h2>", peers_figure(suite, recs)))
            sections.append((ratio_table(suite, recs), None))

    growth = [r for r in meas if r["suite"] == "scale" and not r.get("sweep")]
    if len({r["params"].get("rows") for r in growth}) > 1:
        sections.append(("<h2>scale: growth with input size</h2>", growth_figure(growth)))

    sweeps: dict[str, list[dict]] = defaultdict(list)
    for r in meas:
        if r.get("sweep"):
            sweeps[r["sweep"]].append(r)
    if sweeps:
        sections.append(("<h2>Sweeps (engine)</h2>", None))
    for knob, recs in sorted(sweeps.items()):
        sections.append(("", sweep_figure(knob, recs)))

    frames = "".join(timeline_frame(r) for r in records if r.get("kind") == "timeline")
    models = [m for _, m in sections if m is not None]
    script, divs = components(models) if models else ("", [])
    it = iter(divs)
    body = "".join(text + (next(it) if model is not None else "") for text, model in sections)
    style = ("body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse;margin:.5em 0} "
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px} "
             ".note{color:#666;font-size:12px} iframe.timeline{width:980px;height:560px;border:1px solid #ccc}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"{INLINE.render()}<style>{style}</style></head><body>{body}{frames}{script}</body></html>")


def write(records: list[dict], path: str, title: str = "Benchmarks") -> str:
    page = render(records, title)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results file (JSON lines) of python -m benchmarks")
    ap.add_argument("-o", "--output", default=None, help="the HTML file (default: the results name, .html)")
    args = ap.parse_args(argv)
    out = args.output or os.path.splitext(args.results)[0] + ".html"
    try:
        write(read(args.results), out, title=f"Benchmarks: {os.path.basename(args.results)}")
    except ResultsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


__all__ = ["render", "write", "read", "main"]
