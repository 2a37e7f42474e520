"""Alerts: a failure retried three times reaches a real webhook once, its recovery once, and the next
failure again; command hooks read the event on stdin; a hook that fails is tried again by the next
run; two processes ending the same failure at once deliver it once; page or ticket by criticality.

Every webhook is a real HTTP server on 127.0.0.1 in a thread of the test; every command hook is a real
process; every ledger is a real SQLite history.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dask.config
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg, alerts, history

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATE = "2026-11-30"


class Receiver:
    """A webhook receiver: records every POST (path and JSON body); answers ``codes`` in turn, then 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.codes: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    code = receiver.codes.pop(0) if receiver.codes else 200
                    receiver.posts.append((self.path, {"code": code, "type": self.headers.get("Content-Type"),
                                                       **json.loads(body)}))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def taken(self, path: str | None = None) -> list[dict]:
        """The events answered with 200 (on ``path``)."""
        return [ev for p, ev in self.posts if ev["code"] == 200 and (path is None or p == path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A history of this test's own: engine.run writes its records there."""
    monkeypatch.setenv("ENGINE_HISTORY", str(tmp_path / "history.sqlite"))
    return history.open_store()


def _record(store, job: str, status: str, *, started: float, date: str | None = DATE, slo=None, error_type=None,
            run_id: str = "r1") -> dict:
    """A finished run's record as the runner writes it (for the tests that need no real run), put in the store."""
    rec = {k: None for k in history.COLUMNS}
    rec.update(record_id=history.new_record_id(), run_id=run_id, job=job, status=status, started=started,
               finished=started + 2.0, seconds=2.0, output=f"/data/{job}", logical_date=date, host="h1",
               message=f"{error_type}: it broke" if error_type else "committed 10 rows", error_type=error_type,
               slo=json.dumps(slo) if slo else None)
    store.put(rec)
    return rec


# ---------------------------------------------------------------------------------------------
# The webhook: one alert for a failure retried three times, one recovery, then a new alert


def _flaky_input(directory, broken: bool) -> None:
    """Two files; with ``broken`` the second holds a key the job rejects (after the rows the driver's
    sample check reads, so the run fails in its tasks)."""
    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.table({"k": ["a", "b"] * 50}), os.path.join(directory, "part-0.parquet"))
    pq.write_table(pa.table({"k": ["a"] * 100 + (["bad"] if broken else ["b"])}),
                   os.path.join(directory, "part-1.parquet"))


def _reject_bad(t: pa.Table) -> pa.Table:
    if pc.any(pc.equal(t["k"], "bad")).as_py():
        raise ValueError("upstream sent the key 'bad'")
    return t


def _run(job, inp, out, store, hooks) -> dict:
    """Run the job for DATE with the alert hooks (a failure is expected sometimes); its history record."""
    try:
        engine.run(job, inp, out, date=DATE, mode="overwrite", **hooks)
    except engine.errors.StageFailedError:
        pass
    return store.records(job=job.name, limit=1)[0]


def test_a_failure_retried_three_times_alerts_once_then_recovers_once_then_alerts_again(tmp_path, receiver, store):
    job = Job("alerts-flaky").map(_reject_bad).reduce(by="k", aggs={"n": agg.count()})
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    hooks = {"on_failure": receiver.url + "/failure", "on_success": receiver.url + "/success"}
    _flaky_input(inp, broken=True)
    with dask.config.set({"engine.retries.attempts": 1}):
        records = []
        for _ in range(3):                                 # the scheduler retries the failed run twice
            records.append(_run(job, inp, out, store, hooks))
        assert [(r["status"], r["logical_date"]) for r in records] == [("failed", DATE)] * 3
        assert len({r["record_id"] for r in records}) == 3

        # exactly one webhook for the three failed runs: the first one's
        (ev,) = receiver.taken()
        assert receiver.posts[0][0] == "/failure" and ev["type"] == "application/json"
        assert (ev["kind"], ev["severity"], ev["job"], ev["status"]) == ("failure", "ticket", "alerts-flaky", "failed")
        assert ev["record_id"] == records[0]["record_id"] and ev["run_id"] == records[0]["run_id"]
        assert ev["logical_date"] == DATE and ev["output"] == out and ev["attempts_seen"] == 1
        assert ev["dedup_key"] == f"failure:alerts-flaky:{DATE}"
        assert ev["error_type"] == "StageFailedError"
        assert ev["error_location"].endswith(f"test_alerts.py:{_reject_bad.__code__.co_firstlineno + 2}")
        assert "upstream sent the key 'bad'" in ev["message"] and ev["show"] == f"mapreduce show {ev['record_id']}"
        assert ev["finished_epoch"] == pytest.approx(records[0]["finished"])
        # the ledger holds the episode: when it began, when it was delivered (M4), how many runs failed
        (row,) = [a for a in store.alerts(job="alerts-flaky") if a["key"] == ev["dedup_key"]]
        assert row["status"] == "delivered" and row["created"] == pytest.approx(records[0]["finished"])
        assert 0 < row["delivered"] - row["created"] < 10
        assert json.loads(row["detail"])["count"] == 3

        # the input is fixed: the next run commits, the failure hook hears it is resolved (and success is announced)
        _flaky_input(inp, broken=False)
        fixed = _run(job, inp, out, store, hooks)
        assert fixed["status"] == "committed"
        (recovery,) = receiver.taken("/failure")[1:]
        assert (recovery["kind"], recovery["dedup_key"], recovery["attempts_seen"]) == \
            ("recovery", ev["dedup_key"], 3)
        assert recovery["severity"] == "ticket" and recovery["record_id"] == fixed["record_id"]
        (success,) = receiver.taken("/success")
        assert success["kind"] == "success" and success["severity"] == "info"
        assert success["resolves"] == {"dedup_key": ev["dedup_key"], "attempts_seen": 3}

        # a no-op rerun of the same date tells nobody anything new
        again = _run(job, inp, out, store, hooks)
        assert again["status"] == "skipped" and again["run_id"] == fixed["run_id"]
        assert len(receiver.posts) == 3

        # the episode is closed: the next failure of that date alerts again
        _flaky_input(inp, broken=True)
        later = _run(job, inp, out, store, hooks)
    failures = [e for e in receiver.taken("/failure") if e["kind"] == "failure"]
    assert len(failures) == 2 and failures[1]["record_id"] == later["record_id"]
    assert failures[1]["attempts_seen"] == 1
    keys = sorted(a["key"].split(":resolved:")[0] + (":resolved" if ":resolved:" in a["key"] else "")
                  for a in store.alerts(job="alerts-flaky") if a["kind"] == "failure")
    assert keys == [f"failure:alerts-flaky:{DATE}", f"failure:alerts-flaky:{DATE}:resolved"]


# ---------------------------------------------------------------------------------------------
# Command hooks


HOOK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    out, broken = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    if broken and os.path.exists(broken):
        print("the ticket system is down", file=sys.stderr)
        sys.exit(1)
    event = json.load(sys.stdin)
    env = {k: v for k, v in os.environ.items() if k.startswith("MAPREDUCE_EVENT_")}
    with open(out, "a") as f:
        f.write(json.dumps({"event": event, "env": env}) + "\\n")
""")


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def test_a_command_hook_reads_the_event_on_stdin_and_its_fields_in_the_environment(tmp_path, store):
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    got = tmp_path / "events dir" / "got.jsonl"
    got.parent.mkdir()
    hook = f"{sys.executable} {script} '{got}'"
    t0 = time.time() - 60
    rec = _record(store, "billing", "interrupted", started=t0, slo={"criticality": "page"},
                  error_type="KeyboardInterrupt")
    (sent,) = alerts.notify(rec, store, on_failure=hook)
    assert sent["delivered"] and sent["hook"] == os.path.basename(sys.executable) + " …"
    (line,) = _lines(got)
    ev, env = line["event"], line["env"]
    assert (ev["kind"], ev["severity"], ev["status"], ev["job"]) == ("failure", "page", "interrupted", "billing")
    assert ev["started_epoch"] == t0 and ev["started"].startswith(time.strftime("%Y-%m-%d", time.gmtime(t0)))
    assert ev["error_type"] == "KeyboardInterrupt" and ev["message"] == "KeyboardInterrupt: it broke"
    assert env["MAPREDUCE_EVENT_KIND"] == "failure" and env["MAPREDUCE_EVENT_SEVERITY"] == "page"
    assert env["MAPREDUCE_EVENT_JOB"] == "billing" and env["MAPREDUCE_EVENT_STATUS"] == "interrupted"
    assert env["MAPREDUCE_EVENT_RUN_ID"] == "r1" and env["MAPREDUCE_EVENT_LOGICAL_DATE"] == DATE
    assert env["MAPREDUCE_EVENT_RECORD_ID"] == rec["record_id"]
    assert env["MAPREDUCE_EVENT_MESSAGE"] == "KeyboardInterrupt: it broke"
    assert env["MAPREDUCE_EVENT_DEDUP_KEY"] == f"failure:billing:{DATE}"


def test_a_command_that_exits_1_is_tried_again_by_the_next_run(tmp_path, store, caplog):
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    got, broken = tmp_path / "got.jsonl", tmp_path / "broken"
    broken.write_text("")
    hook = f"{sys.executable} {script} {got} {broken}"
    t0 = time.time() - 600
    first = _record(store, "ledger", "failed", started=t0, error_type="StageFailedError")
    with caplog.at_level(logging.WARNING, logger="engine"):
        (sent,) = alerts.notify(first, store, on_failure=hook)          # must not raise
    assert not sent["delivered"] and "exited with status 1: the ticket system is down" in sent["error"]
    assert "exited with status 1" in caplog.text and _lines(got) == []
    assert store.alerts(job="ledger") == []                           # claimable again
    broken.unlink()
    second = _record(store, "ledger", "failed", started=t0 + 60, error_type="StageFailedError", run_id="r2")
    (sent,) = alerts.notify(second, store, on_failure=hook)
    assert sent["delivered"]
    (line,) = _lines(got)
    assert line["event"]["record_id"] == second["record_id"] and line["event"]["attempts_seen"] == 2
    (row,) = store.alerts(job="ledger")
    # the time to detect counts from the first failure, whose alert was lost
    assert row["created"] == first["finished"] and row["delivered"] - row["created"] > 590


def test_a_webhook_answering_500_is_retried_then_left_for_the_next_run(receiver, store):
    receiver.codes = [500, 503, 500]                   # every attempt of the first run's delivery
    t0 = time.time() - 100
    first = _record(store, "etl", "failed", started=t0, error_type="StageFailedError")
    (sent,) = alerts.notify(first, store, on_failure=receiver.url)
    assert not sent["delivered"] and "HTTP 500" in sent["error"] and "after 3 attempt(s)" in sent["error"]
    assert len(receiver.posts) == 3 and receiver.taken() == []
    second = _record(store, "etl", "failed", started=t0 + 10, error_type="StageFailedError", run_id="r2")
    alerts.notify(second, store, on_failure=receiver.url)
    (ev,) = receiver.taken()
    assert ev["record_id"] == second["record_id"] and ev["attempts_seen"] == 2
    third = _record(store, "etl", "failed", started=t0 + 20, error_type="StageFailedError", run_id="r3")
    assert alerts.notify(third, store, on_failure=receiver.url) == []
    assert len(receiver.taken()) == 1
    # a 4xx is the receiver refusing this request: not tried again at once
    receiver.codes = [404]
    other = _record(store, "etl", "failed", started=t0, date="2026-11-29", error_type="StageFailedError")
    (sent,) = alerts.notify(other, store, on_failure=receiver.url)
    assert not sent["delivered"] and "HTTP 404" in sent["error"] and "after 1 attempt(s)" in sent["error"]


def test_an_unreachable_webhook_does_not_fail_the_caller(store):
    import socket
    with socket.socket() as s:                          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = _record(store, "etl2", "failed", started=time.time() - 5, error_type="StageFailedError")
    (sent,) = alerts.notify(rec, store, on_failure=f"http://127.0.0.1:{port}/hook?token=s3cr3t", timeout=2)
    assert not sent["delivered"] and "ConnectionRefusedError" in sent["error"]
    assert "s3cr3t" not in sent["error"] and sent["hook"] == f"http://127.0.0.1:{port}/…"


# ---------------------------------------------------------------------------------------------
# Two processes ending the same failures at once


RACER = textwrap.dedent("""
    import json, os, sys, time
    from engine import alerts, history
    store_path, url, records, ready, go = sys.argv[1:6]
    store = history.open_store(store_path)
    records = json.load(open(records))
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.002)
    sent = [s["delivered"] for rec in records for s in alerts.notify(rec, store, on_failure=url)]
    print(json.dumps(sent))
""")


def test_two_processes_racing_on_the_same_failures_deliver_each_once(tmp_path, receiver, store):
    t0 = time.time() - 50
    dates = [f"2026-11-{d:02d}" for d in range(1, 9)]
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = []
    for who in range(2):
        recs = [_record(store, "race", "failed", started=t0 + who, date=d, error_type="StageFailedError",
                        run_id=f"p{who}") for d in dates]
        (tmp_path / f"recs{who}.json").write_text(json.dumps(recs))
        env = dict(os.environ, PYTHONPATH=REPO)
        procs.append(subprocess.Popen(
            [sys.executable, str(script), store.location, receiver.url, str(tmp_path / f"recs{who}.json"),
             str(tmp_path / f"ready{who}"), str(tmp_path / "go")], env=env, stdout=subprocess.PIPE, text=True))
    deadline = time.time() + 30
    while not all((tmp_path / f"ready{w}").exists() for w in range(2)) and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").write_text("")
    outs = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(len(o) for o in outs) == len(dates)      # each date sent by one process, not both
    assert sorted(ev["logical_date"] for ev in receiver.taken()) == dates
    rows = [a for a in store.alerts(job="race") if a["kind"] == "failure"]
    assert len(rows) == len(dates) and {r["status"] for r in rows} == {"delivered"}
    assert {json.loads(r["detail"])["count"] for r in rows} == {2}    # both processes' failures counted


# ---------------------------------------------------------------------------------------------
# Severity, refusals, SLO breaches, no history


def test_severity_comes_from_the_jobs_criticality(receiver, store):
    t0 = time.time() - 30
    cases = {"paged": ({"criticality": "page", "success_rate": 0.99}, None, "page"),
             "ticketed": ({"criticality": "ticket"}, None, "ticket"),
             "undeclared": (None, None, "ticket"),
             "gated": ({"criticality": "page"}, "ChangeGateError", "ticket")}
    for job, (slo, error, _) in cases.items():
        rec = _record(store, job, "refused" if error else "failed", started=t0, slo=slo,
                      error_type=error or "StageFailedError")
        alerts.notify(rec, store, on_failure=receiver.url)
    got = {ev["job"]: (ev["severity"], ev["dedup_key"]) for ev in receiver.taken()}
    assert got == {job: (sev, f"{'gate' if err else 'failure'}:{job}:{DATE}")
                   for job, (_, err, sev) in cases.items()}
    # a run refused because another live run holds the output: that run reports its own end
    busy = _record(store, "paged", "refused", started=t0 + 5, error_type="ConcurrentRunError", date="2026-12-01")
    assert alerts.notify(busy, store, on_failure=receiver.url) == []
    # success events are info
    ok = _record(store, "paged", "committed", started=t0 + 10, slo={"criticality": "page"}, run_id="ok1")
    alerts.notify(ok, store, on_failure=receiver.url, on_success=receiver.url + "/ok")
    assert [e["severity"] for e in receiver.taken("/ok")] == ["info"]
    assert [(e["kind"], e["severity"]) for e in receiver.taken() if e["job"] == "paged"][-2:] == \
        [("recovery", "page"), ("success", "info")]


def test_slo_breaches_alert_once_per_objective_and_day(receiver, store):
    t0 = time.time() - 30
    a = _record(store, "nightly", "committed", started=t0, slo={"criticality": "page"})
    alerts.notify(a, store, on_slo_breach=receiver.url, breaches=["p95 completion: 41 min > 30 min"])
    b = _record(store, "nightly", "committed", started=t0 + 5, slo={"criticality": "page"}, run_id="r2")
    alerts.notify(b, store, on_slo_breach=receiver.url,
                  breaches=["p95 completion: 44 min > 30 min", "success rate: 0.91 < 0.99"])
    c = _record(store, "nightly", "committed", started=t0 + 9, slo={"criticality": "page"}, run_id="r3")
    assert alerts.notify(c, store, on_slo_breach=receiver.url,
                         breaches=["p95 completion: 45 min > 30 min", "success rate: 0.90 < 0.99"]) == []
    evs = receiver.taken()
    assert [e["breaches"] for e in evs] == [["p95 completion: 41 min > 30 min"], ["success rate: 0.91 < 0.99"]]
    assert {(e["kind"], e["severity"]) for e in evs} == {("slo_breach", "page")}
    assert alerts.objective_of("deadline missed by 12 min") == alerts.objective_of("deadline missed by 3 min")


def test_without_a_history_every_failure_is_sent_and_that_is_said_once(receiver, caplog, monkeypatch):
    monkeypatch.setattr(alerts, "_warned_no_store", False)
    rec = {k: None for k in history.COLUMNS}
    rec.update(record_id="x1", run_id="r1", job="nohist", status="failed", started=time.time() - 3,
               finished=time.time(), logical_date=DATE, output="/o")
    with caplog.at_level(logging.WARNING, logger="engine"):
        for _ in range(2):
            alerts.notify(rec, None, on_failure=receiver.url)
    assert len(receiver.taken()) == 2
    assert caplog.text.count("cannot be deduplicated") == 1


def test_a_success_after_an_episode_ends_it_even_without_hooks(receiver, store):
    """A manual rerun without hooks commits: the next failure is a new episode, not a repeat of the old."""
    t0 = time.time() - 300
    alerts.notify(_record(store, "manual", "failed", started=t0, error_type="StageFailedError"), store,
                  on_failure=receiver.url)
    _record(store, "manual", "committed", started=t0 + 10, run_id="fix")      # nobody notified
    alerts.notify(_record(store, "manual", "failed", started=t0 + 20, error_type="StageFailedError", run_id="r3"),
                  store, on_failure=receiver.url)
    assert [(e["kind"], e["attempts_seen"]) for e in receiver.taken()] == \
        [("failure", 1), ("recovery", 1), ("failure", 1)]


def test_hooks_are_checked():
    alerts.check_hook("https://hooks.example/T000/B000/XXXX")
    alerts.check_hook("notify-send 'batch failed'")
    with pytest.raises(alerts.HookError, match="http:// or https://"):
        alerts.check_hook("slack://hooks.example/x")
    with pytest.raises(alerts.HookError, match="cannot be split"):
        alerts.check_hook("echo 'unbalanced")
    assert alerts.describe("https://hooks.example/T000/B000/XXXX") == "https://hooks.example/…"


def _cli(*argv: str) -> int:
    """``mapreduce alerts ARGV`` through the command's own parser."""
    import argparse
    parser = argparse.ArgumentParser(prog="mapreduce")
    alerts.add_parser(parser.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    return alerts.command(parser.parse_args(["alerts", *argv]))


def test_mapreduce_alerts_lists_the_ledger_and_tests_a_hook(receiver, store, capsys):
    t0 = time.time() - 120
    for i in range(2):
        alerts.notify(_record(store, "listed", "failed", started=t0 + i, error_type="StageFailedError",
                              run_id=f"r{i}"), store, on_failure=receiver.url)
    capsys.readouterr()
    assert _cli("--open") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["raised", "kind", "status", "runs", "detected", "key"]
    assert out[1].split()[2:5] == ["failure", "delivered", "2"] and out[1].endswith(f"failure:listed:{DATE}")
    assert _cli("--test", receiver.url + "/try") == 0
    (ev,) = receiver.taken("/try")
    assert ev["job"] == "mapreduce-alert-test" and "nothing failed" in ev["message"]
    receiver.codes = [500] * 3
    assert _cli("--test", receiver.url, "--timeout", "2") == 1
    assert "HTTP 500" in capsys.readouterr().out
    assert _cli("--test", "ftp://nowhere/") == 2
