"""Notebook display: a job's plan drawn as a DAG, a run's summary, stage table, timeline and decisions.

The markup is parsed (the SVG with ``xml.etree``, the page with ``html.parser``) and checked against
the plans and reports it draws: one node per stage with its label, the plan's edges, one bar per
task attempt of the report, its decisions in words, every user string escaped. The pages are then
opened in headless Chromium: no console error, every drawing of non-zero size.
"""

from __future__ import annotations

import html.parser
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from conftest import write_parts
from engine import Job, agg
from engine.faults import Faults
from engine.report import RunReport, StageReport, TaskReport
from jobs.tpch import QUERIES
from jobs.wordcount import job as wordcount

NS = "{http://www.w3.org/2000/svg}"


def svgs(markup: str) -> list[ET.Element]:
    """Every inline SVG of ``markup``, parsed as XML (it must be well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", markup, flags=re.S)]


def groups(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{NS}g") if g.get("class") == cls]


def title(el: ET.Element) -> str:
    return el.find(f"{NS}title").text


class Page(html.parser.HTMLParser):
    """The tags, attributes and text of an HTML fragment."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def self_contained(markup: str) -> None:
    """No script, no stylesheet or resource fetched from anywhere."""
    page = Page(markup)
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "img", "style")]
    for _, attrs in page.tags:
        for k, v in attrs.items():
            assert not k.startswith("on"), (k, v)
            assert k == "xmlns" or "://" not in (v or ""), (k, v)


def stage_edges(svg: ET.Element) -> set[tuple[str, str]]:
    """The plan's edges between stages, inputs and the output, as the drawing connects them:
    ``(source, target)`` with a stage as ``"s3"``, an input as ``"input 'orders'"``."""
    names = {}
    for g in groups(svg, "node"):
        role, stage = g.get("data-role"), g.get("data-stage")
        names[g.get("data-id")] = title(g).split("\n")[0] if role == "input" else \
            "output" if role == "output" else f"s{stage}"
    out = set()
    for e in groups(svg, "edge"):
        a, b = names[e.get("data-from")], names[e.get("data-to")]
        if a != b:
            out.add((a, b))
    return out


# -- the plan --------------------------------------------------------------------------------------

def test_tpch_q5_plan_draws_each_stage_its_inputs_and_shuffles():
    markup = QUERIES[5]._repr_html_()
    self_contained(markup)
    (svg,) = svgs(markup)
    # the stages as explain() lists them (stage 1: join by ['r_regionkey'], ...)
    stages = {int(g.get("data-stage")): g for g in groups(svg, "stage")}
    assert {n: g.get("data-kind") for n, g in stages.items()} == {
        1: "join", 2: "join", 3: "join", 4: "join", 5: "join", 6: "aggregate", 7: "sort"}
    keyed = {int(g.get("data-stage")): title(g) for g in groups(svg, "node")
             if g.get("data-role") in ("join", "reduce", "sort")}
    assert keyed[1].startswith("inner join left_on=['r_regionkey'] right_on=['n_regionkey']")
    assert keyed[4].startswith("inner join left_on=['o_custkey'] right_on=['c_custkey']")
    assert keyed[5].startswith("inner join left_on=['l_orderkey', 's_nationkey'] right_on=['o_orderkey', "
                               "'c_nationkey']")
    assert keyed[6].startswith("reduce by ['n_name']") and "revenue = sum('volume')" in keyed[6]
    assert keyed[7].startswith("sort by ['revenue'] descending")
    assert "then map q5_suppliers" in keyed[2]          # the map after stage 2's join runs in its tasks
    maps = Counter(g.get("data-stage") for g in groups(svg, "node") if g.get("data-role") == "map")
    assert maps == {"1": 2, "2": 2, "3": 2, "4": 2, "5": 2, "6": 1, "7": 1}
    # the DAG of TPC-H Q5 (region-nation-supplier, joined with lineitem; orders-customer; then both)
    assert stage_edges(svg) == {
        ("input 'region'", "s1"), ("input 'nation'", "s1"), ("s1", "s2"), ("input 'supplier'", "s2"),
        ("input 'lineitem'", "s3"), ("s2", "s3"), ("input 'orders'", "s4"), ("input 'customer'", "s4"),
        ("s3", "s5"), ("s4", "s5"), ("s5", "s6"), ("s6", "s7"), ("s7", "output")}
    shuffles = Counter((e.get("data-to"), title(e)) for e in groups(svg, "edge") if e.get("data-kind") == "shuffle")
    assert shuffles[("s5-join", "hash(['l_orderkey', 's_nationkey'])")] == 1
    assert shuffles[("s5-join", "hash(['o_orderkey', 'c_nationkey'])")] == 1
    assert shuffles[("s7-sort", "range(['revenue'])")] == 1
    assert sum(shuffles.values()) == 5 * 2 + 1 + 1
    # the text plan beneath the drawing
    text = "".join(Page(markup).text)
    assert "stage 5 (join by ['l_orderkey', 's_nationkey'], job 'tpch-q5')" in text


def test_single_input_rounds_draw_map_combine_reduce_in_order():
    job = wordcount.sort(by="count", descending=True)
    (svg,) = svgs(job._repr_html_())
    nodes = {g.get("data-id"): (g.get("data-role"), title(g)) for g in groups(svg, "node")}
    assert [g.get("data-kind") for g in groups(svg, "stage")] == ["aggregate", "sort"]
    assert nodes["s1-map0"] == ("map", "map\nmap words columns=['text']\nreads columns ['text'] (columns=)")
    assert nodes["s1-combine"][0] == "combine" and nodes["s2-sort"][1].startswith("sort by ['count'] descending")
    assert nodes["s1-reduce"][1].startswith("reduce by ['word']\ncount = count()")
    edges = [(e.get("data-from"), e.get("data-to"), e.get("data-kind")) for e in groups(svg, "edge")]
    assert sorted(edges) == sorted([
        ("s1-input0", "s1-map0", "read"), ("s1-map0", "s1-combine", "local"), ("s1-combine", "s1-reduce", "shuffle"),
        ("s1-reduce", "s2-map0", "stage"), ("s2-map0", "s2-sort", "shuffle"), ("s2-sort", "output", "output")])
    # drawn top to bottom: every edge goes down
    boxes = {g.get("data-id"): float(g.find(f"{NS}rect").get("y")) for g in groups(svg, "node")}
    assert all(boxes[a] < boxes[b] for a, b, _ in edges)


def test_user_text_is_escaped_in_the_plan():
    evil = "<script>alert('x')</script>"
    job = (Job(evil, input="orders").map(where=pc.field("a<b") == "<i>&", columns=["a<b", "k"])
           .join(Job("r", input="customers"), on="k").reduce(by="a<b", aggs={"n&m": agg.count()}))
    markup = job._repr_html_()
    self_contained(markup)
    assert evil not in markup and "<i>" not in markup and "a<b" not in markup
    (svg,) = svgs(markup)
    texts = "\n".join(title(g) for g in groups(svg, "node"))
    assert "map (identity) columns=['a<b', 'k'] where (a<b == \"<i>&\")" in texts
    assert "n&m = count()" in texts and "reduce by ['a<b']" in texts
    assert f"Job {evil}" in "".join(Page(markup).text)


# -- the run ---------------------------------------------------------------------------------------

def median_per_key(t: pa.Table) -> pa.Table:
    return agg.AggregationSet(["k"], {"med": agg.median("v"), "n": agg.count()}).aggregate(t)


@pytest.fixture(scope="module")
def skewed_run(tmp_path_factory):
    """A run in the driver of a non-combinable reduce over 3 files where key 0 holds half the rows,
    with map partition 1 failing once: its report has a retry and a hot key isolated."""
    root = tmp_path_factory.mktemp("display")
    rng = np.random.default_rng(3)
    n = 40_000
    k = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 3000, n))
    table = pa.table({"k": pa.array(k, pa.int64()), "v": rng.normal(0, 1, n)})
    write_parts(root / "in", table, parts=3)
    job = Job("median <per> key").reduce(median_per_key, by="k")
    result = job.run(str(root / "in"), str(root / "out"), partition_size="64KiB",
                     faults=Faults(fail_attempts={("map", 1): 1}))
    return result, table, root


def test_run_result_shows_summary_stage_table_timeline_and_decisions(skewed_run):
    result, table, _ = skewed_run
    rep = result.report
    markup = result._repr_html_()
    assert markup == rep._repr_html_()
    self_contained(markup)
    text = "".join(Page(markup).text)
    assert "job 'median <per> key' run" in text and "median <per> key" not in markup     # escaped
    # the stage table: a row per stage
    rows = [a for t, a in Page(markup).tags if t == "tr"]
    assert len(rows) == 2 + len(rep.stages) == 4
    (svg,) = svgs(markup)
    bars = groups(svg, "task")
    got = Counter((b.get("data-stage"), int(b.get("data-partition")), int(b.get("data-attempt")),
                   b.get("data-status"), b.get("data-worker")) for b in bars)
    assert got == Counter((t.stage, t.partition, t.attempt, t.status, t.worker) for t in rep.tasks)
    # the failed first attempt of map partition 1 (outlined red) and its retry (a notch)
    failed = [b for b in bars if b.get("data-status") == "failed"]
    assert [(b.get("data-stage"), b.get("data-partition")) for b in failed] == [("r0-map", "1")]
    assert failed[0].find(f"{NS}rect").get("stroke") == "#e45756"
    (retry,) = [b for b in bars if b.get("data-attempt") == "1"]
    assert len(retry.findall(f"{NS}rect")) == 2 and "retry (attempt 1)" in title(retry)
    # bars colored by stage; within a worker's row no two bars overlap; later starts further right
    fills = {b.get("data-stage"): b.find(f"{NS}rect").get("fill") for b in bars}
    assert len(set(fills.values())) == 2
    by_row: dict = {}
    for b, t in zip(bars, sorted(rep.tasks, key=lambda t: (t.start, t.stage, t.partition, t.attempt))):
        r = b.find(f"{NS}rect")
        by_row.setdefault((b.get("data-worker"), r.get("y")), []).append((float(r.get("x")), float(r.get("width")),
                                                                           t.start))
    for spans in by_row.values():
        spans.sort()
        assert all(a[0] + a[1] <= b[0] + 0.15 for a, b in zip(spans, spans[1:])), spans
        assert [s[2] for s in spans] == sorted(s[2] for s in spans)
    # the decisions in words: the hot key, computed here from the input, got a task of its own
    counts = Counter(table["k"].to_pylist())
    hot, rows_hot = counts.most_common(1)[0]
    assert hot == 0 and rows_hot > table.num_rows * 0.45
    decisions = Page(markup[markup.index("<h4 style='margin:8px 0 2px 0'>Decisions"):]).text
    isolate = [d for d in rep.skew if d["action"] == "isolate"]
    assert len(isolate) == 1 and isolate[0]["key"] == [hot]
    assert any(d["reason"] == s.strip() for d in isolate for s in decisions)
    assert "retries: 1 failed task(s), 1 retry spent (1 per failure)" in decisions
    assert "off (the run is in the driver process)" in decisions


def test_read_results_stay_plain_arrow_tables(skewed_run):
    result, table, root = skewed_run
    got = engine.read(str(root / "out"))
    assert type(got) is pa.Table and type(result.read()) is pa.Table
    assert not hasattr(got, "_repr_html_")
    assert got.num_rows == len(set(table["k"].to_pylist()))


def _losers_report() -> RunReport:
    """A cluster run of two stages: map partition 3 straggles and its speculative copy wins (the
    first attempt lost); map partition 1 fails once then succeeds; a reduce copy is cancelled."""
    s = 1_000.0
    rep = RunReport("spec & co", "run-spec-0001", "f" * 16, status="committed", start=s, stop=s + 10,
                    output_rows=4, output_files=2, cluster={"workers": 2})
    rep.stages = [StageReport("r0-map", 0, "map", 4, s, s + 5, attempts=6, retries=1, speculative=1),
                  StageReport("r0-reduce", 0, "reduce", 2, s + 5.5, s + 9.5, attempts=3)]
    w1, w2 = "tcp://10.0.0.1:4001", "tcp://10.0.0.2:4002"
    rep.tasks = [TaskReport("r0-map", 0, 0, w1, s, s + 1), TaskReport("r0-map", 2, 0, w2, s, s + 1.2),
                 TaskReport("r0-map", 1, 0, w1, s + 1, s + 1.5, status="failed", error="OSError: <disk> gone"),
                 TaskReport("r0-map", 1, 1, w2, s + 1.6, s + 2.5),
                 TaskReport("r0-map", 3, 0, w1, s + 1.5, s + 5, status="lost"),
                 TaskReport("r0-map", 3, 1, w2, s + 3, s + 4.5, speculative=True),
                 TaskReport("r0-reduce", 0, 0, w1, s + 5.5, s + 7), TaskReport("r0-reduce", 1, 0, w2, s + 5.5, s + 9.5),
                 TaskReport("r0-reduce", 1, 1, w1, s + 7.5, s + 9.5, status="cancelled", speculative=True)]
    rep.speculation = [{"stage": "r0-map", "partition": 3, "attempt": 1, "straggler": 0, "won": 1,
                        "reason": "r0-map partition 3 ran 3.0x the median of its stage: a copy on another worker"}]
    rep.joins = [{"stage": 0, "strategy": "broadcast", "reason": "stage 1: broadcast 'nation' (2.1 KiB <= 32 MiB)"}]
    rep.failures, rep.retries_spent = 1, 1
    return rep


def test_speculative_copies_losers_and_retries_are_marked():
    rep = _losers_report()
    markup = rep._repr_html_()
    (svg,) = svgs(markup)
    bars = {(b.get("data-stage"), int(b.get("data-partition")), int(b.get("data-attempt"))): b
            for b in groups(svg, "task")}
    assert len(bars) == len(rep.tasks) == 9
    rect = lambda key: bars[key].find(f"{NS}rect")  # noqa: E731
    assert rect(("r0-map", 3, 1)).get("stroke") == "#54a24b"                 # the speculative copy, green
    assert rect(("r0-map", 3, 0)).get("fill-opacity") == "0.35"              # the loser, faded and dashed
    assert rect(("r0-map", 3, 0)).get("stroke-dasharray") == "3,2"
    assert "lost: a faster copy's result was used" in title(bars[("r0-map", 3, 0)])
    assert rect(("r0-reduce", 1, 1)).get("stroke") == "#54a24b" and rect(("r0-reduce", 1, 1)).get("fill-opacity")
    assert rect(("r0-map", 1, 0)).get("stroke") == "#e45756"
    assert "OSError: <disk> gone" in title(bars[("r0-map", 1, 0)]) and "<disk>" not in markup
    assert len(bars[("r0-map", 1, 1)].findall(f"{NS}rect")) == 2                        # the retry's notch
    assert len(bars[("r0-map", 3, 1)].findall(f"{NS}rect")) == 1                        # a copy is no retry
    # one lane per worker, the stages' spans on top
    lanes = [(g.get("data-worker"), g.find(f"{NS}text").text) for g in groups(svg, "lane")]
    assert lanes == [("tcp://10.0.0.1:4001",) * 2, ("tcp://10.0.0.2:4002",) * 2]
    assert [g.get("data-stage") for g in groups(svg, "stage-span")] == ["r0-map", "r0-reduce"]
    text = "".join(Page(markup).text)
    assert "r0-map partition 3 ran 3.0x the median of its stage: a copy on another worker" in text
    assert "stage 1: broadcast 'nation' (2.1 KiB <= 32 MiB)" in text
    assert "spec & co" in text and "spec & co" not in markup


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_real_speculated_run_draws_the_copy_and_the_loser(dask_cluster, tmp_path):
    """Map partition 1's first attempt hangs on a two-worker cluster: the drawing shows the
    speculative copy beside the cancelled straggler, and the decision in words."""
    import dask.config
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    for i in range(3):
        words = rng.choice([f"w{j}" for j in range(50)], 2000)
        (tmp_path / "in" / f"doc-{i}.txt").write_text("\n".join(" ".join(words[j:j + 10]) for j in range(0, 2000, 10)))
    with dask.config.set({"engine.speculation.min-runtime": 0.5}):
        result = wordcount.run(str(tmp_path / "in"), str(tmp_path / "out"), cluster=dask_cluster,
                               faults=Faults(hang_first_attempt={("map", 1)}))
    rep = result.report
    (decision,) = rep.speculation
    markup = result._repr_html_()
    (svg,) = svgs(markup)
    bars = groups(svg, "task")
    assert Counter((b.get("data-stage"), b.get("data-partition"), b.get("data-attempt"), b.get("data-status"))
                   for b in bars) == Counter((t.stage, str(t.partition), str(t.attempt), t.status) for t in rep.tasks)
    mine = {b.get("data-attempt"): b for b in bars
            if b.get("data-stage") == "r0-map" and b.get("data-partition") == "1"}
    copy, straggler = mine[str(decision["attempt"])], mine[str(decision["straggler"])]
    assert copy.get("data-speculative") == "true" and copy.find(f"{NS}rect").get("stroke") == "#54a24b"
    assert straggler.get("data-status") == "cancelled" and straggler.find(f"{NS}rect").get("fill-opacity") == "0.35"
    assert {g.get("data-worker") for g in groups(svg, "lane")} == {t.worker for t in rep.tasks if t.worker != "?"}
    assert decision["reason"] in "".join(Page(markup).text)


def test_a_failed_run_shows_its_error_escaped(tmp_path):
    def bad(t):
        if pc.max(t["k"]).as_py() > 100:           # only the second file's rows: the sample check passes
            raise ValueError("bad <row> & worse")
        return t
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"k": [1, 2]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"k": [300, 4]}), tmp_path / "in" / "b.parquet")
    with pytest.raises(engine.EngineError):
        Job("fails").map(bad).run(str(tmp_path / "in"), str(tmp_path / "out"), retry_on=[])
    from engine import history
    (rec,) = history.open_store().records(job="fails")
    markup = history.report_of(rec)._repr_html_()
    assert "bad <row>" not in markup and "bad &lt;row&gt; &amp; worse" in markup
    svgs(markup)          # well-formed


# -- in a browser ----------------------------------------------------------------------------------

def test_display_renders_in_headless_chromium(skewed_run, tmp_path):
    from services import headless_chromium
    result, _, _ = skewed_run
    page = tmp_path / "display.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    + QUERIES[5]._repr_html_() + result._repr_html_() + _losers_report()._repr_html_()
                    + "</body></html>", encoding="utf-8")
    driver = headless_chromium(tmp_path / "profile", window_size="1200,900")
    try:
        driver.get(page.as_uri())
        time.sleep(0.3)
        sizes = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg')).map(s => {const r = s.getBoundingClientRect();"
            " return [s.getAttribute('class'), r.width, r.height, s.querySelectorAll('g.task').length,"
            " s.querySelectorAll('g.node').length]})")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    assert not errors, errors
    assert [s[0] for s in sizes] == ["mapreduce-plan", "mapreduce-timeline", "mapreduce-timeline"]
    assert all(w > 100 and h > 50 for _, w, h, _, _ in sizes), sizes
    assert sizes[0][1] <= 1200                      # the plan shrinks to the page's width
    assert sizes[0][4] == 6 + 12 + 1 + 7 + 1       # inputs, maps, the combine, keyed nodes, the output
    assert sizes[1][3] == len(result.report.tasks) and sizes[2][3] == 9
