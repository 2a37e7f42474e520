"""The dashboards page and the run report's stage table, error block and timeline.

The history is built from real runs of a tiny job in the driver process (committed runs, one with a
retried task, one whose map raises) plus constructed records of a nightly job over ten days; the pages
are opened in headless Chromium (every figure drawn, no console error, a screenshot per dashboard kept
in ``$TEST_ARTIFACTS``, default ``test-artifacts/``).
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine import Job, agg, dashboard, history
from engine.report import RunReport, StageReport, TaskReport

DAY = 86400.0
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def too_large(tb):
    if pc.max(tb["v"]).as_py() > 2000:          # only the third input file has such readings
        raise ValueError("reading too large")
    return tb


RAISE_LINE = inspect.getsourcelines(too_large)[1] + 2


def _nightly_report(started: float) -> RunReport:
    """A run of two stages: r0-map has three 1 s tasks and a 4 s straggler (partition 3) with a
    speculative copy cancelled after 2 s; r0-reduce has a 2 s and a 6 s task."""
    rep = RunReport("nightly", "nightly-run-0009", "f" * 16, status="committed", start=started, stop=started + 12,
                    output="out/nightly", output_rows=10, output_files=2, cluster={"workers": 2, "threads": 2})
    rep.stages = [StageReport("r0-map", 0, "map", 4, started, started + 4.2, rows_in=400, rows_out=40,
                              bytes_out=4000, attempts=5, speculative=1),
                  StageReport("r0-reduce", 0, "reduce", 2, started + 5, started + 11.5, rows_in=40, rows_out=10,
                              bytes_out=900, attempts=2)]
    w1, w2 = "tcp://127.0.0.1:4001", "tcp://127.0.0.1:4002"
    rep.tasks = [TaskReport("r0-map", p, 0, w1 if p % 2 else w2, started, started + 1.0, 100, 10, 1000)
                 for p in range(3)]
    rep.tasks.append(TaskReport("r0-map", 3, 0, w1, started, started + 4.0, 100, 10, 1000))
    rep.tasks.append(TaskReport("r0-map", 3, 1, w2, started + 2.0, started + 4.0, status="cancelled",
                                speculative=True))
    rep.tasks += [TaskReport("r0-reduce", 0, 0, w1, started + 5, started + 7, 20, 5, 450),
                  TaskReport("r0-reduce", 1, 0, w2, started + 5, started + 11, 20, 5, 450)]
    return rep


def _nightly_records(now: float) -> list[dict]:
    """Ten daily runs: run 3 failed (KeyError at jobs/nightly.py:17), run 6 committed late (90 s against
    a 60 s P95 objective); objectives: 80% success; CPU-seconds 10, 20, ..., GB-seconds 2, 4, ..."""
    out = []
    for i in range(10):
        started = now - (10 - i) * DAY
        failed = i == 3
        seconds = 90.0 if i == 6 else 30.0 + i
        rec = {"record_id": f"nightly{i:02d}", "run_id": f"nightly-run-{i:04d}", "job": "nightly",
               "status": "failed" if failed else "committed", "started": started, "finished": started + seconds,
               "seconds": seconds, "output": "out/nightly", "logical_date": time.strftime(
                   "%Y-%m-%d", time.localtime(started)),
               "message": "KeyError: 'region'" if failed else "committed 10 rows in 2 file(s) to out/nightly",
               "error_type": "KeyError" if failed else None,
               "error_location": "jobs/nightly.py:17" if failed else None,
               "cpu_seconds": 10.0 * (i + 1), "memory_gb_seconds": 2.0 * (i + 1), "retries": i % 3,
               "rejected": 5 if i == 8 else 0, "tasks": 6, "attempts": 7,
               "slo": json.dumps({"success_rate": 0.8, "p95_seconds": 60})}
        if i == 9:
            rec["report"] = json.dumps(_nightly_report(started).to_dict())
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def hist(tmp_path_factory):
    """The history: three committed runs of `tiny` (one with a retried map task), one failed run of
    `fragile`, and the nightly job's ten constructed records."""
    import dask.config
    from engine.faults import Faults
    root = tmp_path_factory.mktemp("dash")
    before = os.environ.get("ENGINE_HISTORY")
    os.environ["ENGINE_HISTORY"] = str(root / "history.sqlite")
    try:
        data = root / "in"
        data.mkdir()
        for i in range(3):
            pq.write_table(pa.table({"k": [f"k{j % 5}" for j in range(100)],
                                     "v": [float(j + 1000 * i) for j in range(100)]}), data / f"part-{i}.parquet")
        tiny = Job("tiny").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})
        tiny.run(str(data), str(root / "out-a"))
        tiny.run(str(data), str(root / "out-b"))
        tiny.run(str(data), str(root / "out-c"), faults=Faults(fail_attempts={("map", 1): 1}))
        fragile = Job("fragile").map(too_large).reduce(by="k", aggs={"n": agg.count()})
        with dask.config.set({"engine.retries.backoff-base": 0.01}):
            with pytest.raises(Exception, match="reading too large"):
                fragile.run(str(data), str(root / "out-f"))
        store = history.open_store()
        now = time.time()
        for rec in _nightly_records(now):
            store.put(rec)
        yield store, root, now
    finally:
        if before is None:
            os.environ.pop("ENGINE_HISTORY", None)
        else:
            os.environ["ENGINE_HISTORY"] = before


# ---------------------------------------------------------------------------------------------
# The run report: stage table, error, summary


def test_stage_table_has_the_task_duration_quantiles_shuffle_bytes_and_rows():
    rep = RunReport("q", "run-q", "f", status="committed", start=0.0, stop=30.0)
    rep.stages = [StageReport("r0-map", 0, "map", 5, 0.0, 11.0, rows_in=500, rows_out=50, bytes_out=5120,
                              attempts=7, retries=1),
                  StageReport("r0-reduce", 0, "reduce", 2, 12.0, 20.0, rows_in=50, rows_out=7, bytes_out=700,
                              attempts=2),
                  StageReport("r1-map", 1, "map", 1, 21.0, 22.0, rows_in=7, rows_out=7, bytes_out=300, attempts=1)]
    # map durations 1, 2, 3, 4, 10 s; a failed attempt (50 s) and a cancelled one are not in the quantiles
    rep.tasks = [TaskReport("r0-map", p, 0, "w", 0.0, d, 100, 10, 1024) for p, d in enumerate([3, 1, 10, 2, 4])]
    rep.tasks += [TaskReport("r0-map", 5, 0, "?", 0.0, 50.0, status="failed", error="ValueError: x"),
                  TaskReport("r0-map", 2, 1, "w", 1.0, 9.0, status="cancelled", speculative=True),
                  TaskReport("r0-reduce", 0, 0, "w", 12.0, 14.0, 25, 3, 300),
                  TaskReport("r0-reduce", 1, 0, "w", 12.0, 18.0, 25, 4, 400),
                  TaskReport("r1-map", 0, 0, "w", 21.0, 21.5, 7, 7, 300)]
    m = {row["stage"]: row for row in rep.stage_metrics()}
    assert m["r0-map"]["task_seconds"] == (1.0, 2.0, 3.0, 4.0, 10.0)
    assert m["r0-reduce"]["task_seconds"] == (2.0, 3.0, 4.0, 5.0, 6.0)      # 2 and 6 s: linear in between
    assert m["r0-map"]["shuffle_bytes"] == 5120 and m["r0-map"]["output_bytes"] is None
    assert m["r0-reduce"]["shuffle_bytes"] is None and m["r0-reduce"]["output_bytes"] == 700
    assert m["r1-map"]["shuffle_bytes"] is None and m["r1-map"]["output_bytes"] == 300   # a map-only round
    assert (m["r0-map"]["rows_in"], m["r0-map"]["rows_out"], m["r0-map"]["retries"]) == (500, 50, 1)
    assert m["r0-map"]["spills"] == 0           # these constructed tasks report none (real map tasks count theirs)

    text = rep.summary()
    assert "task seconds min/25/50/75/max: 1.000 / 2.000 / 3.000 / 4.000 / 10.0" in text
    assert "task seconds min/25/50/75/max: 2.000 / 3.000 / 4.000 / 5.000 / 6.000" in text
    assert "5,120 B shuffled" in text
    table = rep.stage_table_html()
    row = table.split("<td>r0-map</td>")[1].split("</tr>")[0]
    assert [c.split(">")[1] for c in row.split("<td class='q'")[1:]] == \
        ["1.000</td", "2.000</td", "3.000</td", "4.000</td", "10.0</td"]
    assert "5.0 KiB" in row
    assert table in rep._repr_html_() and html.escape(table, quote=False) in rep.to_html()   # (in bokeh's JSON)


def test_a_failed_runs_report_names_the_users_file_and_line(hist):
    store, _, _ = hist
    (rec,) = store.records(job="fragile")
    assert rec["status"] == "failed"
    rep = history.report_of(rec)
    where = f"test_dashboard.py:{RAISE_LINE}"
    assert rep.error["location"].endswith(where) and rec["error_location"].endswith(where)
    assert f"at {rep.error['location']}" in rep.summary()
    page = rep.to_html()
    assert page.index("error-location") < page.index("Tasks per worker")        # the error block is on top
    assert "reading too large" in page


def test_the_error_block_shows_type_message_location_and_traceback_escaped():
    rep = RunReport("e", "run-e", "f", status="failed", start=0.0, stop=1.0,
                    error={"type": "ValueError", "message": "bad <b>row</b>", "location": "jobs/e.py:12",
                           "source": "raise ValueError(...)", "traceback": "Traceback ...\nValueError: bad <b>row</b>"})
    block = rep.error_html()
    assert "ValueError" in block and "jobs/e.py:12" in block and "Traceback ..." in block
    assert "<b>row</b>" not in block and "bad &lt;b&gt;row&lt;/b&gt;" in block
    assert "  error: ValueError at jobs/e.py:12" in rep.summary().splitlines()
    assert RunReport("ok", "r", "f").error_html() == ""


def test_stragglers_and_checkpoint_ages_by_hand():
    rep = _nightly_report(1000.0)
    slow = {(t.stage, t.partition, t.attempt): round(r, 3) for t, r in dashboard.stragglers(rep)}
    # map median of the successful attempts: 1 s; the 4 s attempt and the 2 s speculative copy are over 1.5 s
    # reduce median: 4 s (2 and 6 s); 6 s is 1.5x, not more
    assert slow == {("r0-map", 3, 0): 4.0, ("r0-map", 3, 1): 2.0}
    rep = RunReport("c", "r", "f", start=100.0, stop=110.0,
                    tasks=[TaskReport("m", 0, 0, "w", 100.0, 101.0), TaskReport("m", 1, 0, "w", 100.0, 104.0),
                           TaskReport("m", 2, 0, "w", 100.0, 105.0, status="failed"),
                           TaskReport("m", 2, 1, "w", 105.0, 109.0)])
    xs, ys = dashboard.checkpoint_ages(rep)
    assert xs == [0.0, 1.0, 1.0, 4.0, 4.0, 9.0, 9.0, 10.0]
    assert ys == [0.0, 1.0, 0.0, 3.0, 0.0, 5.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------
# The dashboards page


def test_the_history_holds_every_run(hist):
    store, _, _ = hist
    recs = store.records(newest_first=False)
    assert [(r["job"], r["status"]) for r in recs if r["job"] != "nightly"] == \
        [("tiny", "committed")] * 3 + [("fragile", "failed")]
    retried = [r for r in recs if r["job"] == "tiny"][2]
    assert retried["retries"] == 1 and retried["task_failures"] == 1


def _slo_rows(page: str) -> list[list[str]]:
    table = page.split("<table class='slo'")[1].split("</table>")[0]
    return [[c.split("</td>")[0] for c in tr.split("<td>")[1:]] for tr in table.split("<tr>")[2:]]


def test_dashboard_content(hist):
    store, root, now = hist
    page = dashboard.render(store, now=now, path=str(root / "dash.html"))
    assert (root / "dash.html").read_text() == page
    page = html.unescape(page)      # the document's JSON is HTML-escaped in its script element
    for title in ("Executive", "On-call", "Debug", "Success rate per job", "CPU-seconds per run",
                  "GB-seconds per run", "Completion time of committed runs", "Retries and rejected records per run",
                  "Task durations", "Rows out per task partition", "Age of the newest checkpoint", "Tasks per worker"):
        assert title in page, title
    # nightly: 9 of 10 runs committed; the committed runs took 30, 31, 32, 34, 35, 37, 38, 39 and 90 s:
    # nearest-rank P50 = the 5th of 9 = 35 s, P95 = P99 = the 9th = 90 s
    assert "90.0%" in page
    assert "35.00s of 9 committed run(s)" in page and page.count("90.00s of 9 committed run(s)") == 2
    # nightly declares 80% success and P95 <= 60 s. Success: 9 of 10 runs; 80% allows 2 bad, 1 spent: 50% left;
    # burn over 30 d = (1/10) / (1 - 0.8) = 0.5; no run ended in the last 6 h. Latency: 8 of 9 committed runs
    # within 60 s; 95% allows 0.45 bad, 1 spent: 1 - 1/0.45 = -122% left, breached; burn (1/9) / 0.05 = 2.22
    assert _slo_rows(page) == [
        ["nightly", "success rate", "80.0%", "90.0%", "9/10", "50%", "-", "-", "0.50", ""],
        ["nightly", "latency p95 &lt;= 60s", "95.0%", "88.9%", "8/9", "-122%", "-", "-", "2.22", "BREACHED"]]
    # on-call: the failed runs with their place, and the slow one
    assert "jobs/nightly.py:17" in page and "slow: took 90.0s, over the 60s latency objective" in page
    assert "reading too large" in page
    # the debug dashboard shows the newest run: fragile's failure
    assert "Debug: fragile run" in page


def test_objectives_and_prices_given(hist):
    store, _, now = hist
    page = html.unescape(dashboard.render(store, now=now, objectives={"success_rate": 0.95},
                                          rates={"cpu_second": 0.5, "gb_second": 0.25}))
    # the objectives replace the declared ones, for every job: 95% success allows 0.5 of nightly's 10 runs
    assert [r[:6] + r[-1:] for r in _slo_rows(page)] == [
        ["fragile", "success rate", "95.0%", "0.0%", "0/1", "-1900%", "BREACHED"],
        ["nightly", "success rate", "95.0%", "90.0%", "9/10", "-100%", "BREACHED"],
        ["tiny", "success rate", "95.0%", "100.0%", "3/3", "100%", ""]]
    assert "latency objective" not in page          # no latency objective any more
    assert "Cost per run (at engine.cost.* rates)" in page and "cost per run</th>" in page


def test_what_makes_a_run_the_on_calls_business():
    from engine.slo import Objectives
    obj = Objectives(deadline="06:00", p95_seconds=40)
    rec = {"shown": "committed", "seconds": 50.0, "deadline_missed": 1}
    assert dashboard._problem(rec, obj) == ("late: missed the 06:00 deadline; "
                                            "slow: took 50.0s, over the 40s latency objective")
    assert dashboard._problem(dict(rec, deadline_missed=0, seconds=40.0), obj) is None
    assert dashboard._problem({"shown": "lost", "seconds": None}, None) == "lost"
    assert dashboard._problem({"shown": "failed", "seconds": 3.0}, obj) == "failed"


def test_empty_history_and_unknown_run(tmp_path):
    store = history.SQLiteStore(str(tmp_path / "empty.sqlite"))
    page = dashboard.render(store)
    assert "No runs recorded in this window" in page
    assert "No runs recorded in this window" in dashboard.render(None)
    with pytest.raises(dashboard.RunNotFoundError, match="no run 'nope'"):
        dashboard.render(store, run="nope")


def test_dashboard_command(hist, tmp_path, capsys, monkeypatch):
    store, _, _ = hist
    monkeypatch.setenv("ENGINE_HISTORY", store.location)
    parser = argparse.ArgumentParser(prog="mapreduce")
    sub = parser.add_subparsers(dest="command")
    dashboard.add_parser(sub, argparse.ArgumentParser(add_help=False))
    out = tmp_path / "d.html"
    args = parser.parse_args(["dashboard", "-o", str(out), "--since", "30d", "--job", "nightly",
                              "--run", "nightly-run-0009"])
    assert args.since == 30 * DAY
    assert dashboard.command(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert "Batch runs: job nightly, last 30d" in page and "Debug: nightly run" in page and "tiny" not in page
    assert dashboard.command(parser.parse_args(["dashboard", "-o", str(out), "--run", "nope"])) == 1
    assert "no run 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["dashboard", "--since", "soon"])
    assert exc.value.code == 2
    assert parser.parse_args(["dashboard", "--since", "12h"]).since == 12 * 3600


# ---------------------------------------------------------------------------------------------
# In a browser


FIGURES = """
const out = [];
function ink(c) {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
  return n;
}
function visit(v, tab) {
  if (v.model.type === 'Figure') {
    const c = v.canvas_view.primary.canvas;
    out.push([tab, v.model.title ? v.model.title.text : '', c.width, c.height, ink(c)]);
  }
  const kids = v.child_views || [];
  for (let i = 0; i < kids.length; i++) {
    const t = v.model.type === 'Tabs' ? v.model.tabs.find(p => p.child === kids[i].model) : null;
    visit(kids[i], t ? t.title : tab);
  }
}
for (const v of Object.values(Bokeh.index)) visit(v, null);
return out;
"""

TEXT_OF = """
function find(root, cls) {
  for (const el of root.querySelectorAll('*')) {
    if (el.classList && el.classList.contains(cls)) return el.textContent;
    if (el.shadowRoot) { const t = find(el.shadowRoot, cls); if (t !== null) return t; }
  }
  return null;
}
return find(document, arguments[0]);
"""

CELLS = """
function cells(root, out) {
  for (const el of root.querySelectorAll('*')) {
    if (el.classList && el.classList.contains('slick-cell')) out.push(el.textContent);
    if (el.shadowRoot) cells(el.shadowRoot, out);
  }
  return out;
}
return cells(document, []);
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from services import headless_chromium
    driver = headless_chromium(tmp_path_factory.mktemp("profile"), window_size="1400,1000")
    yield driver
    driver.quit()


def _open(browser, path: Path, figures: int) -> list:
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(path.as_uri())
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return window.Bokeh && Object.keys(Bokeh.index).length > 0 || false")
        and len(b.execute_script(FIGURES)) >= figures and all(f[4] > 0 for f in b.execute_script(FIGURES)))
    return browser.execute_script(FIGURES)


def _screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # the window as tall as the page (bokeh's root element) plus the window's own frame
    height, frame = browser.execute_script(
        "const r = Object.values(Bokeh.index)[0].el.getBoundingClientRect(); "
        "return [r.bottom + window.scrollY, window.outerHeight - window.innerHeight]")
    browser.set_window_size(1400, int(min(8000, max(800, height + frame + 20))))
    time.sleep(0.3)
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    return path


def _severe(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_dashboard_and_failed_report_render_in_headless_chromium(hist, browser):
    store, root, now = hist
    page = root / "dashboards.html"
    # the debug dashboard of the constructed nightly run: a straggler and a speculative copy
    dashboard.render(store, now=now, run="nightly09", path=str(page))
    _severe(browser)
    figures = _open(browser, page, 10)
    by_tab: dict[str, list] = {}
    for tab, title, w, h, ink in figures:
        by_tab.setdefault(tab, []).append((title, w, h, ink))
    assert set(by_tab) == {"Executive", "On-call", "Debug"}, by_tab
    assert len(by_tab["Executive"]) == 4 and len(by_tab["On-call"]) == 2 and len(by_tab["Debug"]) == 5
    for tab, figs in by_tab.items():
        for title, w, h, ink in figs:
            assert w > 0 and h > 0 and ink > 500, (tab, title, ink)      # drawn: well beyond a blank canvas
    for i, tab in enumerate(("executive", "on-call", "debug")):
        browser.execute_script(f"Bokeh.documents[0].get_model_by_name('dashboards').active = {i}")
        time.sleep(0.3)
        shot = _screenshot(browser, f"dashboard-{tab}.png")
        assert shot.stat().st_size > 10_000
    browser.execute_script("Bokeh.documents[0].get_model_by_name('dashboards').active = 1")
    cells = browser.execute_script(CELLS)
    assert "jobs/nightly.py:17" in cells and "slow: took 90.0s, over the 60s latency objective" in cells
    assert not _severe(browser)

    # the failed run's own report
    (rec,) = store.records(job="fragile")
    report = root / "failed-report.html"
    history.report_of(rec).to_html(str(report))
    figures = _open(browser, report, 1)
    assert len(figures) == 1 and figures[0][1] == "Tasks per worker" and figures[0][4] > 500
    _screenshot(browser, "report-failed-run.png")
    where = browser.execute_script(TEXT_OF, "error-location")       # as shown, on top of the report
    assert where.endswith(f"test_dashboard.py:{RAISE_LINE}"), where
    assert not _severe(browser)
