"""Rich notebook display: a job's plan drawn as a DAG, a run's summary, stage table, timeline and decisions.

Everything here is self-contained HTML with inline SVG drawn by this module: no JavaScript, no
stylesheet, no file or network fetch, so a notebook shows it the same when opened offline or on a
site that renders notebooks without running them. Colors and sizes are SVG presentation attributes,
not a stylesheet, so a viewer that drops ``<style>`` still draws them. Every user string (job, input
and column names, function names, errors, worker addresses) is escaped, and every report string
is redacted (:func:`engine.redact.redact`) as in the report's other renderings.

>>> job                        # doctest: +SKIP   (in a notebook: the plan drawn, the text plan beneath)
>>> result = job.run(IN, OUT)  # doctest: +SKIP
>>> result                     # doctest: +SKIP   (summary, stage table, task timeline, decisions)

The drawing of a plan (:func:`plan_svg`) is a tree, because every stage's output feeds exactly one
side of one later stage: the last stage at the bottom, above it the stages and inputs it reads.
Each stage is a box labelled like the text plan (``round N`` for a job over one input, ``stage N``
over several, and ``rN`` as its tasks are named in the report), holding a map node per side, the
map-side combine, and the node that groups by key (reduce, sort, join or cogroup), reached by
dashed shuffle edges that name the partitioning.

The timeline (:func:`timeline_svg`) has a lane per worker (rows within it for attempts that ran at
once), a bar per task attempt colored by its stage, and marks: a red outline for an attempt that
failed, faded and dashed for one whose result was not used (cancelled, or lost to a faster copy),
a green outline for a speculative copy, a dark notch at the start of a retry.

The elements carry ``class`` and ``data-*`` attributes (stage, role, partition, attempt, status)
for programs reading the markup.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from .redact import redact
from .report import _NO_WORKER, STAGE_PALETTE, STATUS_COLORS, RunReport, TaskReport

SVG_NS = "http://www.w3.org/2000/svg"
FONT = "font-family='-apple-system,Segoe UI,Helvetica,Arial,sans-serif'"
MONO = "font-family='Menlo,Consolas,DejaVu Sans Mono,monospace'"
MAX_LINE = 44            # characters of a node's detail line before it is cut (the full text is its tooltip)
MAX_BARS = 2000          # attempts drawn in a timeline; a bigger run shows the first ones and says so
TIMELINE_WIDTH = 900

_ROLE_FILL = {"input": "#eef3f8", "map": "#dbe8f5", "combine": "#e4f1de", "reduce": "#fde6cc", "sort": "#fde6cc",
              "join": "#f6dde9", "cogroup": "#f6dde9", "output": "#eeeeee"}
_SHUFFLE = "#d9822b"


def esc(text: Any) -> str:
    """``text`` as HTML/XML text or attribute value."""
    return html.escape(str(text), quote=True)


def _cut(text: str, n: int = MAX_LINE) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _text_width(text: str, size: float, mono: bool = False) -> float:
    """An upper estimate of the drawn width of ``text`` (sans-serif: ~0.6 em a character)."""
    return len(text) * size * (0.61 if mono else 0.6)


# -- the plan --------------------------------------------------------------------------------------

@dataclass
class _Box:
    """A drawn node of the plan: a title and detail lines; ``x``/``y`` its top-left once placed."""

    id: str
    role: str
    title: str
    lines: list[str] = field(default_factory=list)
    stage: int | None = None
    x: float = 0.0
    y: float = 0.0

    @property
    def w(self) -> float:
        return max([_text_width(_cut(self.title), 12) + 16, 70]
                   + [_text_width(_cut(s), 11, mono=True) + 16 for s in self.lines])

    @property
    def h(self) -> float:
        return 22 + 14 * len(self.lines) + (4 if self.lines else 0)

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    def svg(self) -> str:
        tip = "\n".join([self.title] + self.lines)
        stage = f" data-stage='{self.stage}'" if self.stage is not None else ""
        out = [f"<g class='node' data-id='{esc(self.id)}' data-role='{self.role}'{stage}>",
               f"<title>{esc(tip)}</title>",
               f"<rect x='{self.x:.1f}' y='{self.y:.1f}' width='{self.w:.1f}' height='{self.h:.1f}' rx='5' "
               f"fill='{_ROLE_FILL.get(self.role, '#eeeeee')}' stroke='#5a6b7b' stroke-width='1'/>",
               f"<text x='{self.x + 8:.1f}' y='{self.y + 15:.1f}' font-size='12' font-weight='bold' {FONT} "
               f"fill='#1d2733'>{esc(_cut(self.title))}</text>"]
        for i, line in enumerate(self.lines):
            out.append(f"<text x='{self.x + 8:.1f}' y='{self.y + 32 + 14 * i:.1f}' font-size='11' {MONO} "
                       f"fill='#33414f'>{esc(_cut(line))}</text>")
        out.append("</g>")
        return "".join(out)


@dataclass
class _Edge:
    src: _Box
    dst: _Box
    kind: str                     # read | stage | local | shuffle | output
    label: str = ""


@dataclass
class _Block:
    """One stage of the plan: its side maps in a row, the combine under the first, the keyed node below."""

    node: Any                     # engine.plan.Node
    header: str
    sides: list[_Box]
    combine: _Box | None
    keyed: _Box | None
    children: list[Any]           # per side: the _Block or input _Box it reads
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0

    @property
    def bottom(self) -> _Box:
        """The node whose output leaves the stage."""
        return self.keyed or self.sides[0]


PAD, GAP_X, GAP_Y, HEADER, SHUFFLE_GAP = 10, 18, 34, 20, 44


def _round_word(plan_multi: bool) -> str:
    return "stage" if plan_multi else "round"


def _blocks(job: Any) -> tuple[_Block, list[_Edge], bool]:
    """The plan of ``job`` as blocks (the root: the last stage) and edges."""
    from .job import _fn_name
    from .plan import build_nodes
    nodes = build_nodes(job)
    multi = len(job.inputs) > 1 or any(n.kind in ("join", "cogroup") for n in nodes)
    word = _round_word(multi)
    blocks: dict[int, _Block] = {}
    edges: list[_Edge] = []
    for node in nodes:              # every node comes after the nodes it reads
        n, r = node.index + 1, node.round
        keys = f" by {list(node.sides[0].keys)}" if node.sides[0].keys else ""
        chain = f", job {node.chain!r}" if multi and node.chain != job.name else ""
        header = f"{word} {n} (r{node.index}): {node.kind}{keys}{chain}"
        sides, children = [], []
        for i, side in enumerate(node.sides):
            title = f"map {side.label!r}" if multi else "map"
            lines = [m.describe() for m in side.maps] or ["(identity)"]
            if side.input is not None:
                read = side.describe_read()
                if read:
                    lines.append(f"reads {read}")
            box = _Box(f"s{n}-map{i}", "map", title, lines, n)
            sides.append(box)
            if side.input is not None:
                src = _Box(f"s{n}-input{i}", "input", f"input {side.input!r}" if multi or side.input != "input"
                           else "input", [], None)
                children.append(src)
                edges.append(_Edge(src, box, "read"))
            else:
                up = blocks[side.upstream]
                children.append(up)
                edges.append(_Edge(up.bottom, box, "stage", f"output of {word} {side.upstream + 1}"))
        combine = None
        if r.combine is not None:
            combine = _Box(f"s{n}-combine", "combine", r.combine.describe(), ["per map spill, 0..n times"], n)
        elif node.kind == "aggregate":
            combine = _Box(f"s{n}-combine", "combine", "partial aggregate", ["on the map side, per spill"], n)
        if combine is not None:
            edges.append(_Edge(sides[0], combine, "local"))
        keyed = None
        post = [f"then {m.describe()}" for m in node.post]
        if node.kind != "map":
            role = {"aggregate": "reduce"}.get(node.kind, node.kind)
            if node.kind == "aggregate":
                lines = [f"{k} = {v!r}" for k, v in r.reduce.aggs.items()] + ["merge + finalize per reducer"]
                title = f"reduce by {list(r.keys)}"
            elif node.kind == "reduce":
                lines, title = [f"calls {_fn_name(r.reduce.fn)}"], f"reduce by {list(r.keys)}"
            elif node.kind == "sort":
                lines = ["merge sorted runs per key range"]
                title = f"sort by {list(r.keys)}" + (" descending" if r.reduce.descending else "")
            elif node.kind == "join":
                lines, title = [f"right side: {node.sides[1].label!r}", "broadcast or shuffle: decided at run time"], \
                    node.join.describe()
            else:
                lines = [f"calls {_fn_name(r.reduce.fn)}", "with " + ", ".join(repr(x.label) for x in node.sides)]
                title = f"cogroup by {list(node.sides[0].keys)}"
            keyed = _Box(f"s{n}-{role}", role, title, lines + post, n)
            for i, box in enumerate(sides):
                src = combine if (i == 0 and combine is not None) else box
                how = f"range({list(node.sides[i].keys)})" if node.kind == "sort" else \
                    f"hash({list(node.sides[i].keys)})"
                edges.append(_Edge(src, keyed, "shuffle", how))
        elif post:
            sides[0].lines += post
        blocks[node.index] = _Block(node, header, sides, combine, keyed, children)
    return blocks[nodes[-1].index], edges, multi


def _measure(item: Any) -> tuple[float, float]:
    """Width and height of the subtree of ``item`` (a block or an input box); sets a block's size."""
    if isinstance(item, _Box):
        return item.w, item.h
    kids = [_measure(c) for c in item.children]
    row = sum(s.w for s in item.sides) + GAP_X * (len(item.sides) - 1)
    item.w = max([row, _text_width(item.header, 11) + 4]
                 + [b.w for b in (item.combine, item.keyed) if b is not None]) + 2 * PAD
    h = HEADER + max(s.h for s in item.sides)
    if item.combine is not None:
        h += GAP_Y - 10 + item.combine.h
    if item.keyed is not None:
        h += SHUFFLE_GAP + item.keyed.h
    item.h = h + 2 * PAD
    kids_w = sum(kw for kw, _ in kids) + GAP_X * (len(kids) - 1)
    return max(item.w, kids_w), item.h + GAP_Y + max(kh for _, kh in kids)


def _place(item: Any, x: float, top: float, width: float, height: float, out: list) -> None:
    """Place ``item``'s subtree in the region (``x``, ``top``, ``width``, ``height``): the item at its
    bottom, centered, the subtrees of its sides side by side above it, in the order of its sides."""
    item.x, item.y = x + (width - item.w) / 2, top + height - item.h
    out.append(item)
    if isinstance(item, _Box):
        return
    row_h = max(s.h for s in item.sides)
    row = sum(s.w for s in item.sides) + GAP_X * (len(item.sides) - 1)
    sx = item.x + (item.w - row) / 2
    for side in item.sides:
        side.x, side.y = sx, item.y + PAD + HEADER + (row_h - side.h) / 2
        sx += side.w + GAP_X
    kids = [_measure(c) for c in item.children]
    kids_w = sum(kw for kw, _ in kids) + GAP_X * (len(kids) - 1)
    cx, kids_h = x + (width - kids_w) / 2, height - item.h - GAP_Y
    for child, (cw, ch) in zip(item.children, kids):
        _place(child, cx, top + kids_h - ch, cw, ch, out)
        cx += cw + GAP_X
    y = item.y + PAD + HEADER + row_h
    if item.combine is not None:
        c = item.combine
        c.x, c.y = item.sides[0].cx - c.w / 2, y + GAP_Y - 10
        c.x = min(max(c.x, item.x + PAD), item.x + item.w - PAD - c.w)     # inside the block
        y = c.y + c.h
    if item.keyed is not None:
        item.keyed.x, item.keyed.y = item.x + (item.w - item.keyed.w) / 2, y + SHUFFLE_GAP


def _edge_svg(e: _Edge) -> str:
    x1, y1 = e.src.cx, e.src.y + e.src.h
    x2, y2 = e.dst.cx, e.dst.y
    my = (y1 + y2) / 2
    color, dash, width = {"shuffle": (_SHUFFLE, " stroke-dasharray='6,4'", 1.8), "read": ("#7a8794", "", 1.2),
                          "stage": ("#33414f", "", 1.6), "local": ("#5a6b7b", "", 1.2),
                          "output": ("#33414f", "", 1.6)}[e.kind]
    out = [f"<g class='edge' data-kind='{e.kind}' data-from='{esc(e.src.id)}' data-to='{esc(e.dst.id)}'>",
           f"<title>{esc(e.label or e.kind)}</title>",
           f"<path d='M{x1:.1f},{y1:.1f} C{x1:.1f},{my:.1f} {x2:.1f},{my:.1f} {x2:.1f},{y2 - 6:.1f}' fill='none' "
           f"stroke='{color}' stroke-width='{width}'{dash}/>",
           f"<polygon points='{x2 - 4:.1f},{y2 - 7:.1f} {x2 + 4:.1f},{y2 - 7:.1f} {x2:.1f},{y2:.1f}' fill='{color}'/>"]
    if e.kind == "shuffle" and e.label:           # just under its map node, where no other label is
        fit = max(12, int((e.src.w + GAP_X - 8) / 6.1))
        out.append(f"<text x='{e.src.x + 4:.1f}' y='{y1 + 13:.1f}' font-size='10' {MONO} fill='{color}' "
                   f"stroke='white' stroke-width='3' paint-order='stroke'>{esc(_cut(e.label, fit))}</text>")
    out.append("</g>")
    return "".join(out)


def plan_svg(job: Any) -> str:
    """The stage DAG of ``job`` as an SVG element (see the module docstring)."""
    root, edges, multi = _blocks(job)
    w, h = _measure(root)
    out_box = _Box("output", "output", "output", ["Parquet, committed with a _SUCCESS manifest"])
    margin = 8
    width = max(w, out_box.w) + 2 * margin
    placed: list = []
    _place(root, margin + (width - 2 * margin - w) / 2, margin, w, h, placed)
    out_box.x, out_box.y = root.x + (root.w - out_box.w) / 2, root.y + root.h + GAP_Y
    edges.append(_Edge(root.bottom, out_box, "output"))
    height = out_box.y + out_box.h + margin
    parts = [f"<svg xmlns='{SVG_NS}' class='mapreduce-plan' width='{width:.0f}' height='{height:.0f}' "
             f"viewBox='0 0 {width:.0f} {height:.0f}' style='max-width:100%;height:auto' role='img'>",
             f"<title>{esc(f'plan of job {job.name!r}')}</title>"]
    blocks = sorted((b for b in placed if isinstance(b, _Block)), key=lambda b: b.node.index)
    inputs = [b for b in placed if isinstance(b, _Box)]
    for item in blocks:
        parts.append(f"<g class='stage' data-stage='{item.node.index + 1}' data-kind='{item.node.kind}'>"
                     f"<rect x='{item.x:.1f}' y='{item.y:.1f}' width='{item.w:.1f}' height='{item.h:.1f}' "
                     f"rx='8' fill='#fafbfc' stroke='#9aa7b4' stroke-width='1' stroke-dasharray='4,3'/>"
                     f"<text x='{item.x + PAD:.1f}' y='{item.y + PAD + 10:.1f}' font-size='11' {FONT} "
                     f"fill='#5a6b7b'>{esc(item.header)}</text></g>")
    parts += [_edge_svg(e) for e in edges]
    parts += [b.svg() for b in inputs]
    for item in blocks:
        parts += [b.svg() for b in item.sides + [b for b in (item.combine, item.keyed) if b]]
    parts.append(out_box.svg())
    parts.append("</svg>")
    return "".join(parts)


def job_html(job: Any) -> str:
    """A job as a notebook shows it: its name, the drawn plan and the text plan (``job.explain()``)."""
    from .errors import EngineError
    try:
        text = job.explain()
        drawing = plan_svg(job)
    except EngineError as exc:              # a job whose stages cannot form a plan says why
        return (f"<div class='mapreduce-job'><b>Job {esc(job.name)}</b>: cannot be planned: "
                f"<code>{esc(type(exc).__name__)}: {esc(exc)}</code></div>")
    return (f"<div class='mapreduce-job'><div style='margin:2px 0 6px 0'><b>Job {esc(job.name)}</b></div>"
            f"<div style='overflow-x:auto'>{drawing}</div>"
            f"<pre style='font-size:85%;white-space:pre-wrap'>{esc(text)}</pre></div>")


# -- the run ---------------------------------------------------------------------------------------

def stage_colors(rep: RunReport) -> dict[str, str]:
    """The color of each stage of ``rep`` in the timeline (the order of its stages, as the report's)."""
    colors = {s.name: STAGE_PALETTE[i % len(STAGE_PALETTE)] for i, s in enumerate(rep.stages)}
    for t in rep.tasks:
        colors.setdefault(t.stage, STAGE_PALETTE[len(colors) % len(STAGE_PALETTE)])
    return colors


def _pack(items: list, start, stop) -> list[int]:
    """A row for each of ``items`` (sorted by start) so that none overlaps another in its row."""
    ends: list[float] = []
    rows = []
    for it in items:
        for i, end in enumerate(ends):
            if start(it) >= end - 1e-9:
                ends[i] = stop(it)
                rows.append(i)
                break
        else:
            ends.append(stop(it))
            rows.append(len(ends) - 1)
    return rows


def _ticks(span: float) -> list[float]:
    """Round tick values from 0 to ``span`` (5 to 10 of them)."""
    if span <= 0:
        return [0.0]
    raw = span / 6
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


def _tick_label(x: float, step: float) -> str:
    if step >= 1:
        return f"{x:.0f}s"
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{x:.{digits + (1 if step * 10 ** digits % 1 else 0)}f}s"


def _worker_name(worker: str) -> str:
    return _NO_WORKER if not worker or worker == "?" else redact(worker)


def _task_marks(t: TaskReport) -> tuple[str, list[str]]:
    """A bar's outline attributes and what its marks say, for its tooltip."""
    notes = []
    if t.status == "failed":
        stroke, notes = f" stroke='{STATUS_COLORS['failed']}' stroke-width='2'", ["failed"]
    elif t.speculative:
        stroke = f" stroke='{STATUS_COLORS['speculative']}' stroke-width='2'"
        notes = ["speculative copy"]
    else:
        stroke = " stroke='white' stroke-width='0.5'"
    if t.status in ("cancelled", "lost"):
        stroke += " stroke-dasharray='3,2' fill-opacity='0.35'"
        if not t.speculative:
            stroke = stroke.replace("stroke='white' stroke-width='0.5'", "stroke='#555' stroke-width='1'")
        notes.append("cancelled: its result was not used" if t.status == "cancelled"
                     else "lost: a faster copy's result was used")
    if t.attempt > 0 and not t.speculative:
        notes.append(f"retry (attempt {t.attempt})")
    return stroke, notes


def _bar(t: TaskReport, sx, t0: float) -> tuple[float, float]:
    """The left edge and width of an attempt's bar (a failed one at least 3 px wide, to show its outline)."""
    x = sx(t.start or t0)
    return x, max(3.0 if t.status == "failed" else 1.5, sx(max(t.stop, t.start or t0)) - x)


def timeline_svg(rep: RunReport, *, width: int = TIMELINE_WIDTH) -> str:
    """The attempts of ``rep`` on a time axis, a lane per worker (see the module docstring)."""
    tasks = sorted(rep.tasks, key=lambda t: (t.start, t.stage, t.partition, t.attempt))
    shown = tasks[:MAX_BARS]
    colors = stage_colors(rep)
    starts = [t.start for t in shown if t.start] + [s.start for s in rep.stages if s.start]
    t0 = min(starts, default=rep.start or 0.0)
    ends = [max(t.stop, t.start) for t in shown] + [s.stop for s in rep.stages if s.stop]
    t1 = max(ends + [t0])
    span = max(t1 - t0, 1e-3)
    names = {w: _worker_name(w) for w in {t.worker for t in shown}}     # (redacting is slow: once a worker)
    by_worker: dict[str, list[TaskReport]] = {}
    for t in shown:
        by_worker.setdefault(names[t.worker], []).append(t)
    workers = sorted(by_worker)
    label_w = min(190.0, max([_text_width(w, 11) for w in workers + ["stages"]]) + 14)
    left, right = label_w, 16.0
    plot_w = max(200.0, width - left - right)
    sx = lambda v: left + (v - t0) / span * plot_w  # noqa: E731
    row_h, lane_gap, top = 14.0, 8.0, 8.0
    y = top
    # the stages' spans, packed into rows of their own
    last = {}
    for t in shown:
        last[t.stage] = max(last.get(t.stage, 0.0), t.stop)
    spans = [(s.name, s.start or t0, max(s.stop or 0.0, last.get(s.name, s.start or t0))) for s in rep.stages]
    spans.sort(key=lambda p: p[1])
    srows = _pack(spans, lambda p: p[1], lambda p: p[2])
    n_srows = max(srows, default=-1) + 1
    lanes_svg = [f"<text x='{left - 6:.1f}' y='{y + 10.5:.1f}' font-size='11' {FONT} text-anchor='end' "
                 f"fill='#33414f'>stages</text>"]
    for (name, a, b), r in zip(spans, srows):
        x, yy = sx(a), y + r * (row_h + 2)
        w = max(1.5, sx(b) - x)
        fits = _text_width(name, 10) + 6 < w
        lanes_svg.append(
            f"<g class='stage-span' data-stage='{esc(name)}'><title>{esc(f'{name}: {b - a:.3f}s')}</title>"
            f"<rect x='{x:.1f}' y='{yy:.1f}' width='{w:.1f}' height='{row_h:.1f}' fill='{colors.get(name, '#999')}' "
            f"stroke='#5a6b7b' stroke-width='0.5'/>"
            + (f"<text x='{x + 3:.1f}' y='{yy + 10.5:.1f}' font-size='10' {FONT} fill='#1d2733'>{esc(name)}</text>"
               if fits else "") + "</g>")
    y += max(1, n_srows) * (row_h + 2) + lane_gap
    # one lane per worker, attempts that overlap in time on separate rows of it
    for wk in workers:
        mine = by_worker[wk]
        geo = {id(t): _bar(t, sx, t0) for t in mine}        # packed as drawn: a short bar has a least width
        rows = _pack(mine, lambda t: geo[id(t)][0], lambda t: sum(geo[id(t)]))
        n = max(rows) + 1
        lane_h = n * (row_h + 2)
        lanes_svg.append(f"<rect x='{left:.1f}' y='{y - 3:.1f}' width='{plot_w:.1f}' height='{lane_h + 4:.1f}' "
                         f"fill='#f4f6f8'/>")
        lanes_svg.append(f"<g class='lane' data-worker='{esc(wk)}'><title>{esc(wk)}</title>"
                         f"<text x='{left - 6:.1f}' y='{y + 10.5:.1f}' font-size='11' {FONT} text-anchor='end' "
                         f"fill='#33414f'>{esc(_cut(wk, round((label_w - 14) / 6.6)))}</text></g>")
        for t, r in zip(mine, rows):
            (x, w), yy = geo[id(t)], y + r * (row_h + 2)
            stroke, notes = _task_marks(t)
            tip = [f"{t.stage} partition {t.partition} attempt {t.attempt}: {t.status}", *notes,
                   f"{t.duration:.3f}s on {wk}", f"rows {t.rows_in:,} -> {t.rows_out:,}"]
            if t.error:
                tip.append(redact(t.error))
            bar = (f"<g class='task' data-stage='{esc(t.stage)}' data-partition='{t.partition}' "
                   f"data-attempt='{t.attempt}' data-status='{esc(t.status)}' "
                   f"data-speculative='{str(bool(t.speculative)).lower()}' data-worker='{esc(wk)}'>"
                   f"<title>{esc(chr(10).join(tip))}</title>"
                   f"<rect x='{x:.1f}' y='{yy:.1f}' width='{w:.1f}' height='{row_h:.1f}' "
                   f"fill='{colors.get(t.stage, '#999')}'{stroke}/>")
            if t.attempt > 0 and not t.speculative:
                bar += f"<rect x='{x:.1f}' y='{yy:.1f}' width='{min(3.0, w):.1f}' height='{row_h:.1f}' fill='#1d2733'/>"
            if t.status == "failed" and w > 10:
                bar += (f"<text x='{x + w / 2:.1f}' y='{yy + 10.5:.1f}' font-size='10' text-anchor='middle' {FONT} "
                        f"fill='{STATUS_COLORS['failed']}'>✕</text>")
            lanes_svg.append(bar + "</g>")
        y += lane_h + lane_gap
    # the time axis
    ticks = _ticks(span)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else span
    grid = [f"<line x1='{sx(t0 + v):.1f}' y1='{top:.1f}' x2='{sx(t0 + v):.1f}' y2='{y:.1f}' stroke='#d8dde2' "
            f"stroke-width='0.7'/>" for v in ticks]
    axis = [f"<line x1='{left:.1f}' y1='{y:.1f}' x2='{left + plot_w:.1f}' y2='{y:.1f}' stroke='#5a6b7b'/>"]
    for v in ticks:
        axis.append(f"<text x='{sx(t0 + v):.1f}' y='{y + 13:.1f}' font-size='10' {FONT} text-anchor='middle' "
                    f"fill='#33414f'>{_tick_label(v, step)}</text>")
    axis.append(f"<text x='{left + plot_w / 2:.1f}' y='{y + 27:.1f}' font-size='10' {FONT} text-anchor='middle' "
                f"fill='#5a6b7b'>seconds since the first task started</text>")
    y += 40
    # the legend: stage colors, then the marks
    legend, lx = [], left
    items = [(f"<rect width='12' height='10' fill='{c}' stroke='#5a6b7b' stroke-width='0.5'/>", name)
             for name, c in colors.items()]
    items += [(f"<rect width='12' height='10' fill='#dddddd' stroke='{STATUS_COLORS['failed']}' stroke-width='2'/>",
               "failed"),
              ("<rect width='12' height='10' fill='#dddddd' fill-opacity='0.35' stroke='#555' stroke-width='1' "
               "stroke-dasharray='3,2'/>", "cancelled or lost"),
              (f"<rect width='12' height='10' fill='#dddddd' stroke='{STATUS_COLORS['speculative']}' "
               "stroke-width='2'/>", "speculative copy"),
              ("<rect width='12' height='10' fill='#dddddd'/><rect width='3' height='10' fill='#1d2733'/>", "retry")]
    for swatch, name in items:
        w = 18 + _text_width(name, 10) + 14
        if lx + w > width - right and lx > left:
            lx, y = left, y + 16
        legend.append(f"<g class='legend' transform='translate({lx:.1f},{y:.1f})'>{swatch}"
                      f"<text x='16' y='9' font-size='10' {FONT} fill='#33414f'>{esc(name)}</text></g>")
        lx += w
    y += 18
    note = ""
    if len(tasks) > len(shown):
        note = (f"<text x='{left:.1f}' y='{y + 8:.1f}' font-size='10' {FONT} fill='#a33'>showing the first "
                f"{len(shown):,} of {len(tasks):,} attempts</text>")
        y += 16
    return (f"<svg xmlns='{SVG_NS}' class='mapreduce-timeline' width='{width}' height='{y:.0f}' "
            f"viewBox='0 0 {width} {y:.0f}' role='img'><title>{esc(f'task attempts of run {rep.run_id[:12]}')}"
            f"</title>{''.join(grid)}{''.join(lanes_svg)}{''.join(axis)}{''.join(legend)}{note}</svg>")


DECISIONS = (("joins", "Join strategy"), ("skew", "Skew"), ("combine", "Map-side combine"),
             ("speculation", "Speculation"), ("zombies", "Attempts that kept running after their cancel"))


def decisions_html(rep: RunReport) -> str:
    """What the run decided while it ran (join strategies, skew handling, combine, speculation,
    retries), in words, as the summary's lines say it."""
    sections = []
    for attr, title in DECISIONS:
        entries = getattr(rep, attr)
        if entries:
            items = "".join(f"<li>{esc(redact(str(d.get('reason', d))))}</li>" for d in entries)
            sections.append(f"<div class='decisions' data-kind='{attr}'><b>{esc(title)}</b><ul "
                            f"style='margin:2px 0 6px 0'>{items}</ul></div>")
    if rep.retry_line():
        sections.append(f"<div class='decisions' data-kind='retries'><b>Retries</b><ul style='margin:2px 0 6px 0'>"
                        f"<li>{esc(redact(rep.retry_line()))}</li></ul></div>")
    spec = (rep.cluster or {}).get("speculation")
    if spec and not rep.speculation:
        sections.append(f"<div class='decisions' data-kind='speculation-off'><b>Speculation</b><ul "
                        f"style='margin:2px 0 6px 0'><li>{esc(redact(str(spec)))}</li></ul></div>")
    if not sections:
        return "<p class='decisions-none'>No join, skew, combine, speculation or retry decision: every stage ran " \
               "as planned.</p>"
    return "".join(sections)


def report_html(rep: RunReport) -> str:
    """A run as a notebook shows it: the headline, the error of a run that did not commit, the summary,
    the stage table, the task timeline and the run's decisions."""
    head = (f"<div style='margin:2px 0 4px 0'><b>{esc(rep.job)}</b> run <code>{esc(rep.run_id[:12])}</code>: "
            f"<b>{esc(rep.status)}</b> in {rep.duration:.2f}s, {rep.output_rows:,} rows in {rep.output_files} "
            f"file(s)</div>")
    timeline = ("<h4 style='margin:8px 0 2px 0'>Tasks per worker</h4>"
                f"<div style='overflow-x:auto'>{timeline_svg(rep)}</div>") if rep.tasks else \
        "<p>This run ran no task.</p>"
    return (f"<div class='mapreduce-run'>{head}{rep.error_html()}"
            f"<pre style='font-size:85%;white-space:pre-wrap'>{esc(rep.summary())}</pre>"
            f"<h4 style='margin:8px 0 2px 0'>Stages</h4>{rep.stage_table_html()}{timeline}"
            f"<h4 style='margin:8px 0 2px 0'>Decisions</h4>{decisions_html(rep)}</div>")


__all__ = ["plan_svg", "job_html", "timeline_svg", "decisions_html", "report_html", "stage_colors"]
