"""Service levels from a run history built by hand: every indicator, error budget, burn rate, deadline and
missed run below is checked against figures worked out in the comments beside it.

The histories are real: the records go into a SQLite history (:class:`engine.history.SQLiteStore`) and
are read back with ``records()`` before anything is computed, and the command is run as a process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from engine import Job, agg, slo
from engine.errors import JobDefinitionError
from engine.history import COLUMNS, SQLiteStore
from engine.slo import Objectives, breaches, compliance, compute_slis, load_objectives, parse_window

ROOT = Path(__file__).resolve().parents[1]
H, DAY = 3600.0, 86400.0


def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


NOW = utc(2026, 11, 20, 12, 0)


def rec(job: str, status: str, started: float, seconds: float, **kw) -> dict:
    """A record as the engine writes one: finished = started + seconds unless it still runs."""
    r = {"record_id": uuid.uuid4().hex[:16], "run_id": uuid.uuid4().hex[:16], "job": job, "status": status,
         "started": started, "seconds": None if status == "running" else seconds, "output": f"out/{job}",
         "finished": None if status == "running" else started + seconds, "updated": started + seconds}
    r.update(kw)
    assert set(r) <= set(COLUMNS)
    return r


def stored(tmp_path, records, alerts=()) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "history.sqlite"))
    for r in records:
        store.put(r)
    for a in alerts:
        assert store.claim_alert({k: v for k, v in a.items() if k != "delivered"})
        if a.get("delivered") is not None:
            store.update_alert(a["key"], delivered=a["delivered"], status="delivered")
    return store


# ---------------------------------------------------------------------------------------------
# M1-M10 on one job's ten days

def etl_history():
    """Job ``etl``, window = the last 10 days (since NOW - 10d). r0 is older than the window."""
    S = json.dumps({"schedule": "daily", "success_rate": 0.9})
    c = dict(slo=S)
    r0 = rec("etl", "committed", NOW - 20 * DAY, 1000, logical_date="2026-10-31", attempts=5, cpu_seconds=999, **c)
    r1 = rec("etl", "committed", NOW - 9 * DAY, 100, logical_date="2026-11-11", input_rows=1000, input_bytes=10_000,
             output_rows=100, output_bytes=2_000, attempts=10, task_failures=0, failed_tasks=0, retries=0,
             cpu_seconds=50, worker_cpu_seconds=60, thread_seconds=200, memory_gb_seconds=400, **c)
    r2 = rec("etl", "committed", NOW - 8 * DAY, 200, logical_date="2026-11-12", input_rows=3000, input_bytes=30_000,
             output_rows=300, output_bytes=6_000, attempts=12, task_failures=2, failed_tasks=1, retries=2,
             cpu_seconds=80, worker_cpu_seconds=None, thread_seconds=400, memory_gb_seconds=800, **c)
    r3 = rec("etl", "failed", NOW - 7 * DAY, 50, logical_date="2026-11-13", attempts=9, task_failures=3,
             failed_tasks=1, retries=2, cpu_seconds=20, worker_cpu_seconds=30, thread_seconds=100,
             memory_gb_seconds=100, **c)
    # the rerun of 11-13 ends one hour after the failure did
    r4 = rec("etl", "committed", r3["finished"] + 3000, 600, logical_date="2026-11-13", input_rows=6000,
             input_bytes=60_000, output_rows=600, output_bytes=12_000, attempts=10, task_failures=0, failed_tasks=0,
             retries=0, cpu_seconds=100, worker_cpu_seconds=120, thread_seconds=300, memory_gb_seconds=600, **c)
    r5 = rec("etl", "skipped", NOW - 6 * DAY, 2, logical_date="2026-11-13", attempts=0, **c)
    r6 = rec("etl", "interrupted", NOW - 5 * DAY, 30, logical_date="2026-11-15", attempts=4, task_failures=0,
             failed_tasks=0, retries=0, cpu_seconds=10, thread_seconds=40, memory_gb_seconds=20, **c)
    r7 = rec("etl", "refused", NOW - 4 * DAY, 0.1, logical_date="2026-11-16", attempts=0, **c)
    r8 = rec("etl", "committed", NOW - 3 * DAY, 400, logical_date="2026-11-17", input_rows=10_000,
             input_bytes=100_000, output_rows=1000, output_bytes=20_000, attempts=10, task_failures=0, failed_tasks=0,
             retries=0, cpu_seconds=200, worker_cpu_seconds=220, thread_seconds=500, memory_gb_seconds=1000, **c)
    r9 = rec("etl", "running", NOW - 2 * H, 0, logical_date="2026-11-19", checkpoint_at=NOW - 600, output="out/a", **c)
    r10 = rec("etl", "running", NOW - 1 * H, 0, logical_date="2026-11-19", output="out/b", **c)
    runs = [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10]
    alerts = [
        {"key": "failure|etl|2026-11-13", "kind": "failure", "job": "etl", "record_id": r3["record_id"],
         "created": r3["finished"], "delivered": r3["finished"] + 45, "status": "pending"},
        {"key": "failure|etl|2026-11-15", "kind": "failure", "job": "etl", "record_id": r6["record_id"],
         "created": r6["finished"], "delivered": r6["finished"] + 135, "status": "pending"},
        {"key": "failure|etl|2026-11-16", "kind": "failure", "job": "etl", "record_id": r7["record_id"],
         "created": r7["finished"], "status": "pending"},                       # never delivered
        {"key": "success|etl|2026-11-17", "kind": "success", "job": "etl", "record_id": r8["record_id"],
         "created": r8["finished"], "delivered": r8["finished"] + 999, "status": "pending"},   # not a failure
        {"key": "failure|other|2026-11-13", "kind": "failure", "job": "other", "record_id": "x",
         "created": NOW - DAY, "delivered": NOW - DAY + 999, "status": "pending"},           # another job
    ]
    return runs, alerts


def test_every_sli_matches_the_hand_computed_figures(tmp_path):
    runs, alerts = etl_history()
    store = stored(tmp_path, runs, alerts)
    records = store.records()
    assert len(records) == 11
    slis = compute_slis(records, since=NOW - 10 * DAY, now=NOW, rates={"cpu_second": 0.001, "gb_second": 0.0001},
                        alerts=store.alerts())
    s = slis["etl"]
    # r1..r10 started in the window; r9, r10 still run: 8 finished
    assert (s["runs"], s["finished"]) == (10, 8)
    assert s["statuses"] == {"committed": 4, "skipped": 1, "failed": 1, "interrupted": 1, "refused": 1, "running": 2}
    # M1: (4 committed + 1 skipped) / 8 finished
    assert s["success_rate"] == pytest.approx(5 / 8)
    # M2: committed seconds sorted [100, 200, 400, 600], nearest rank: P50 rank ceil(2.0)=2 -> 200,
    # P95 rank ceil(3.8)=4 -> 600, P99 rank ceil(3.96)=4 -> 600 (r0's 1000 s is before the window)
    assert s["completion_seconds"] == {"p50": 200, "p95": 600, "p99": 600, "runs": 4}
    # M3: task failures 2 (r2) + 3 (r3) = 5; attempts 10+12+9+10+0+4+0+10 = 55
    assert (s["task_failures"], s["attempts"]) == (5, 55)
    assert s["task_failure_rate"] == pytest.approx(5 / 55)
    # M4: delivered 45 s and 135 s after the failures: mean 90, max 135; r7's alert is undelivered;
    # the success alert and the other job's alert do not count
    assert s["time_to_detect"] == {"mean": pytest.approx(90), "max": pytest.approx(135), "alerts": 2,
                                   "undelivered": 1}
    # M5: r3 (11-13) recovered by r4, which ended 3000 + 600 = 3600 s after r3 ended; r6 (11-15) never
    assert s["time_to_recover"] == {"mean": pytest.approx(3600), "max": pytest.approx(3600), "recovered": 1,
                                    "unrecovered": 1}
    # M6: CPU (worker CPU, else task CPU) 60 + 80 + 30 + 120 + 10 + 220 = 520 over thread-seconds
    # 200 + 400 + 100 + 300 + 40 + 500 = 1540 (r5, r7 report no thread-seconds)
    assert s["utilization"] == pytest.approx(520 / 1540)
    # M7: 520 CPU-s / 8 finished runs = 65; GB-s 400+800+100+600+20+1000 = 2920 / 8 = 365;
    # cost 65 * 0.001 + 365 * 0.0001 = 0.065 + 0.0365 = 0.1015
    cost = s["cost_per_run"]
    assert (cost["cpu_seconds"], cost["gb_seconds"], cost["runs"]) == (pytest.approx(65), pytest.approx(365), 8)
    assert cost["cost"] == pytest.approx(0.1015)
    # M8: r9 checkpointed 600 s ago, r10 has no checkpoint and started 3600 s ago: lag 3600;
    # the newest commit (r8) ended 3 days - 400 s ago = 258800 s
    assert s["running"] == 2 and s["checkpoint_lag_seconds"] == pytest.approx(3600)
    assert s["last_output_age_seconds"] == pytest.approx(3 * DAY - 400)
    # M9: committed seconds 100+200+600+400 = 1300; rows in 1000+3000+6000+10000 = 20000,
    # bytes in 200000, rows out 2000, bytes out 40000
    tp = s["throughput"]
    assert tp["rows_in_per_second"] == pytest.approx(20000 / 1300)
    assert tp["bytes_in_per_second"] == pytest.approx(200_000 / 1300)
    assert tp["rows_out_per_second"] == pytest.approx(2000 / 1300)
    assert tp["bytes_out_per_second"] == pytest.approx(40_000 / 1300)
    # M10: retries 2 (r2) + 2 (r3) = 4 over failed tasks 1 + 1 = 2
    assert (s["retries"], s["failed_tasks"], s["retries_per_failure"]) == (4, 2, pytest.approx(2.0))
    # Missed runs (daily, logical dates, no deadline: a date is due at the end of the day after it):
    # span (NOW-10d = 11-10 12:00, NOW]; due dates 11-09 .. 11-18; succeeded 11-11, 11-12, 11-13, 11-17
    assert s["schedule"] == "daily"
    assert s["missed"] == ["2026-11-09", "2026-11-10", "2026-11-14", "2026-11-15", "2026-11-16", "2026-11-18"]
    assert s["missed_runs"] == 6
    # the same, gathered from the store by the helper `mapreduce history --since` uses
    assert slo.slis_from_store(store, since=NOW - 10 * DAY, now=NOW,
                               rates={"cpu_second": 0.001, "gb_second": 0.0001}) == slis
    text = slo.format_slis(slis)
    assert "M10" in text and "62.5%" in text and "missed runs" in text and "2026-11-14" in text, text


def test_an_empty_window_and_a_job_without_failures_give_none_not_zero_division(tmp_path):
    store = stored(tmp_path, [rec("calm", "committed", NOW - DAY, 10, attempts=3)])
    s = compute_slis(store.records(), since="30d", now=NOW, rates={})["calm"]
    assert s["success_rate"] == 1.0 and s["retries_per_failure"] is None and s["utilization"] is None
    assert s["missed_runs"] is None and s["cost_per_run"]["cost"] == 0.0
    s = compute_slis(store.records(), since=NOW - 60, now=NOW)["calm"]
    assert s["runs"] == 0 and s["success_rate"] is None and s["completion_seconds"]["p95"] is None
    assert s["last_output_age_seconds"] == pytest.approx(DAY - 10)     # the last output is older than the window


# ---------------------------------------------------------------------------------------------
# Error budgets and burn rates

def daily_history(now: float, job: str = "daily"):
    obj = {"success_rate": 0.9, "p95_seconds": 300, "p99_seconds": 600, "window": "30d", "criticality": "page"}
    S = json.dumps(obj)
    runs = []
    for k in range(1, 21):                      # one run a day, k days ago
        status = "failed" if k in (3, 10) else "committed"
        runs.append(rec(job, status, now - k * DAY, 500 if k == 5 else 100, slo=S))
    runs.append(rec(job, "committed", now - 3 * H - 200, 200, slo=S))   # ends 3 h ago
    runs.append(rec(job, "failed", now - 2400, 600, slo=S))             # ends 30 min ago
    runs.append(rec(job, "committed", now - 40 * DAY, 100, slo=S))      # before the 30-day window
    return obj, runs


def test_error_budget_and_burn_rates_over_a_constructed_history(tmp_path):
    obj, runs = daily_history(NOW)
    store = stored(tmp_path, runs)
    rows = {r["objective"]: r for r in compliance(store.records(), {"daily": obj}, now=NOW)}
    assert list(rows) == ["success", "latency p95", "latency p99"]
    s = rows["success"]
    # 22 finished runs in 30 days (20 daily + 2 recent), 3 failed: 19 good
    assert (s["good"], s["total"], s["bad"]) == (19, 22, 3)
    assert s["measured"] == pytest.approx(19 / 22) and s["target"] == 0.9
    # allowed bad = (1 - 0.9) * 22 = 2.2; remaining = 1 - 3 / 2.2 = -0.3636...: spent
    assert s["allowed_bad"] == pytest.approx(2.2)
    assert s["budget_remaining"] == pytest.approx(1 - 3 / 2.2) and s["breached"]
    # last hour: the failure 30 min ago alone: (1/1) / 0.1 = 10; 6 h: it and the commit 3 h ago:
    # (1/2) / 0.1 = 5; 30 d: (3/22) / 0.1
    assert s["burn_1h"] == pytest.approx(10) and s["burn_6h"] == pytest.approx(5)
    assert s["burn_30d"] == pytest.approx((3 / 22) / 0.1)
    p95 = rows["latency p95"]
    # committed runs in 30 days: 18 daily + the one 3 h ago = 19; one (k=5, 500 s) over 300 s
    assert (p95["good"], p95["total"], p95["target"]) == (18, 19, 0.95)
    # allowed (1 - 0.95) * 19 = 0.95 bad; 1 - 1/0.95 < 0
    assert p95["budget_remaining"] == pytest.approx(1 - 1 / 0.95) and p95["breached"]
    assert p95["burn_1h"] is None and p95["burn_6h"] == 0 and p95["burn_30d"] == pytest.approx((1 / 19) / 0.05)
    p99 = rows["latency p99"]
    assert (p99["good"], p99["total"], p99["budget_remaining"], p99["breached"]) == (19, 19, 1.0, False)
    table = slo.format_compliance(list(rows.values()))
    assert "BREACHED" in table and "-36%" in table, table


def test_breaches_after_one_run_name_what_is_broken_now(tmp_path):
    obj, runs = daily_history(NOW)
    store = stored(tmp_path, runs)
    failure = runs[21]                          # the failure 30 min ago: the success budget burns 10x
    lines = breaches(failure, store, Objectives.from_obj(obj), now=NOW)
    assert len(lines) == 1, lines
    assert lines[0].startswith("daily: success rate is 86.36% over the last 30d") and "10.0x" in lines[0], lines
    # the slow run of 5 days ago, judged now: the same budget line, and its own P95 overrun (latency p95 is
    # spent too but burns nothing over the last hour, so it is not news)
    lines = breaches(runs[4], store, {"daily": obj}, now=NOW)
    assert len(lines) == 2 and "over the P95 objective of 5m 00s" in lines[1], lines
    # a healthy history breaches nothing; without objectives (no slo on the record) nothing is judged
    assert breaches(runs[0], store, obj, now=NOW + 40 * DAY) == []
    assert breaches({**runs[0], "slo": None}, store, now=NOW) == []


# ---------------------------------------------------------------------------------------------
# Deadlines in a time zone and missed runs

def berlin_history():
    """Logical dates 11-13 .. 11-19 (11-14 never ran); deadline 06:00 Berlin = 05:00 UTC in November."""
    S = json.dumps({"deadline": "06:00", "timezone": "Europe/Berlin", "schedule": "daily", "success_rate": 0.9})

    def run(ld, status, start, end):
        return rec("berlin", status, start, end - start, logical_date=ld, slo=S)

    return [
        run("2026-11-13", "committed", utc(2026, 11, 14, 3, 0), utc(2026, 11, 14, 3, 30)),    # on time
        run("2026-11-15", "committed", utc(2026, 11, 16, 3, 0), utc(2026, 11, 16, 5, 30)),    # 06:30 Berlin: late
        run("2026-11-16", "failed", utc(2026, 11, 17, 3, 0), utc(2026, 11, 17, 4, 0)),        # never committed
        run("2026-11-17", "committed", utc(2026, 11, 18, 3, 0), utc(2026, 11, 18, 4, 30)),    # on time
        run("2026-11-18", "failed", utc(2026, 11, 19, 3, 0), utc(2026, 11, 19, 3, 40)),
        run("2026-11-18", "committed", utc(2026, 11, 19, 4, 0), utc(2026, 11, 19, 4, 50)),    # 05:50 Berlin
        run("2026-11-19", "committed", utc(2026, 11, 20, 3, 0), utc(2026, 11, 20, 4, 0)),     # on time
    ]


def test_deadline_in_a_time_zone_and_missed_daily_runs(tmp_path):
    store = stored(tmp_path, berlin_history())
    records = store.records()
    obj = slo.objectives_from_records(records)["berlin"]
    assert obj.deadline == "06:00" and obj.timezone == "Europe/Berlin"
    # the deadline of a logical date is 06:00 of the next day on Berlin's clock: 05:00 UTC in winter,
    # 04:00 UTC in summer
    assert slo.deadline_at(dt.date(2026, 11, 15), obj) == utc(2026, 11, 16, 5, 0)
    assert slo.deadline_at(dt.date(2026, 7, 1), obj) == utc(2026, 7, 2, 4, 0)
    rows = {r["objective"]: r for r in compliance(records, {"berlin": obj}, now=NOW)}
    d = rows["deadline"]
    # 7 dates: 11-13, 11-17, 11-18, 11-19 committed by the deadline; 11-15 late (05:30 UTC > 05:00),
    # 11-16 only failed, 11-14 never ran (the daily schedule expected it): 4 good of 7
    assert (d["good"], d["total"], d["threshold"]) == (4, 7, "06:00 Europe/Berlin")
    # target = success_rate 0.9: allowed 0.7 bad; remaining 1 - 3/0.7; 30 d burn (3/7)/0.1;
    # the newest event (11-19, good at 04:00 UTC) is 8 h old: no event in the last 1 h or 6 h
    assert d["budget_remaining"] == pytest.approx(1 - 3 / 0.7) and d["breached"]
    assert d["burn_30d"] == pytest.approx((3 / 7) / 0.1) and d["burn_1h"] is None and d["burn_6h"] is None
    # the same deadline on UTC's clock: 11-15's commit at 05:30 UTC is on time, 5 of 7
    in_utc = Objectives.from_obj({**obj.to_dict(), "timezone": "UTC"})
    d_utc = next(r for r in compliance(records, {"berlin": in_utc}, now=NOW) if r["objective"] == "deadline")
    assert (d_utc["good"], d_utc["total"]) == (5, 7)
    # missed runs: the span starts at the first record (11-14 03:00 UTC); dates due (deadline) in it are
    # 11-13 .. 11-19; those with no committed run: 11-14 and 11-16
    s = compute_slis(records, since="30d", now=NOW)["berlin"]
    assert s["missed"] == ["2026-11-14", "2026-11-16"] and s["missed_runs"] == 2
    # after the late run of 11-15: its deadline miss is news, in Berlin time
    late = next(r for r in records if r["logical_date"] == "2026-11-15")
    lines = breaches(late, store, obj, now=NOW)
    assert len(lines) == 1, lines
    assert "2026-11-15 missed its deadline 2026-11-16 06:00 Europe/Berlin (committed at 2026-11-16 06:30" in lines[0]
    # the failure of 11-18 before a commit on time is no breach
    failed = next(r for r in records if r["logical_date"] == "2026-11-18" and r["status"] == "failed")
    assert breaches(failed, store, obj, now=NOW) == []


def test_missed_runs_of_an_interval_schedule():
    S = json.dumps({"schedule": "6h"})

    def ok(end):
        return rec("six", "committed", end - 600, 600, slo=S)

    runs = [ok(utc(2026, 11, 18, 13, 0)),                   # first record: starts 12:50
            ok(utc(2026, 11, 18, 19, 0)),                   # slot 18-24
            ok(utc(2026, 11, 19, 7, 0)),                    # slot 06-12 (00-06 has nothing)
            ok(utc(2026, 11, 19, 12, 30)),                  # slot 12-18
            rec("six", "failed", utc(2026, 11, 19, 19, 50), 600, slo=S),   # slot 18-24: a failure only
            ok(utc(2026, 11, 20, 1, 0)), ok(utc(2026, 11, 20, 8, 0))]
    # span (max(NOW-2d, first start 11-18 12:50), NOW]: whole 6 h slots from 11-18 18:00 to 11-20 12:00
    s = compute_slis(runs, since=NOW - 2 * DAY, now=NOW)["six"]
    assert s["missed"] == ["2026-11-19T00:00Z", "2026-11-19T18:00Z"] and s["missed_runs"] == 2


# ---------------------------------------------------------------------------------------------
# Declaring objectives

def test_objectives_accept_their_fields_and_name_a_wrong_key_or_value(tmp_path):
    o = Objectives.from_obj({"success-rate": "99.5%", "p95_seconds": "30m", "deadline": "6:00", "schedule": "Daily"})
    assert (o.success_rate, o.p95_seconds, o.deadline, o.schedule) == (0.995, 1800.0, "06:00", "daily")
    assert Objectives.from_obj(o) is o and Objectives.from_obj(None) is None
    assert Objectives.from_obj(o.to_json()) == o and hash(o) == hash(Objectives.from_obj(o.to_dict()))
    for bad, needle in [({"p95": 10}, "unknown objective 'p95'"), ({"success_rate": 1}, "success_rate=1"),
                        ({"deadline": "25:00"}, "deadline='25:00'"), ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
                        ({"schedule": "sometimes"}, "schedule='sometimes'"), ({"criticality": "urgent"}, "urgent"),
                        ({"window": "forever"}, "window='forever'"), (["x"], "got list")]:
        with pytest.raises(JobDefinitionError, match=needle.replace("(", r"\(")):
            Objectives.from_obj(bad)
    assert [parse_window(w) for w in ("30d", "6h", "90m", "2w", "45s", 10)] == [30 * DAY, 6 * H, 5400, 14 * DAY, 45, 10]
    with pytest.raises(JobDefinitionError, match="30d"):
        parse_window("30 days")

    toml = tmp_path / "slo.toml"
    toml.write_text('[jobs.nightly]\nsuccess_rate = 0.99\ndeadline = "06:00"\ntimezone = "Europe/Berlin"\n'
                    '[jobs.hourly]\nschedule = "hourly"\ncriticality = "page"\n')
    got = load_objectives(toml)
    assert got == {"nightly": Objectives(success_rate=0.99, deadline="06:00", timezone="Europe/Berlin"),
                   "hourly": Objectives(schedule="hourly", criticality="page")}
    as_json = tmp_path / "slo.json"
    as_json.write_text(json.dumps({"jobs": {k: v.to_dict() for k, v in got.items()}}))
    assert load_objectives(as_json) == got
    as_json.write_text(json.dumps({"jobs": {"nightly": {"sucess_rate": 0.9}}}))
    with pytest.raises(JobDefinitionError, match=r"job 'nightly': unknown objective 'sucess_rate' \(did you mean"):
        load_objectives(as_json)
    as_json.write_text(json.dumps({"nightly": {"success_rate": 0.9}}))
    with pytest.raises(JobDefinitionError, match=r"\[jobs.NAME\]"):
        load_objectives(as_json)


def test_a_job_declares_objectives_without_changing_its_fingerprint():
    def double(t):
        return t

    plain = Job("fp-slo").map(double).reduce(by="k", aggs={"n": agg.count()})
    declared = Job("fp-slo", slo={"success_rate": 0.99, "deadline": "06:00"}).map(double).reduce(
        by="k", aggs={"n": agg.count()})
    assert isinstance(declared.slo, Objectives) and declared.slo.deadline == "06:00"   # kept by every builder
    assert plain.slo is None
    assert declared.fingerprint() == plain.fingerprint()
    assert Job("p", version="1", slo=Objectives(p95_seconds=60)).fingerprint() == Job("p", version="1").fingerprint()
    with pytest.raises(JobDefinitionError, match="job 'fp-slo': slo: unknown objective 'deadlin'"):
        Job("fp-slo", slo={"deadlin": "06:00"})


# ---------------------------------------------------------------------------------------------
# mapreduce slo

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mapreduce")
    common = argparse.ArgumentParser(add_help=False)
    sub = parser.add_subparsers(dest="command", required=True)
    slo.add_parser(sub, common)
    return parser


SCRIPT = ("import sys, argparse\nfrom engine import slo\n"
          "p = argparse.ArgumentParser(prog='mapreduce')\nsub = p.add_subparsers(dest='command')\n"
          "slo.add_parser(sub, argparse.ArgumentParser(add_help=False))\n"
          "sys.exit(slo.command(p.parse_args(sys.argv[1:])))\n")


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENGINE_HISTORY": str(db), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", SCRIPT, "slo", *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=60)


def test_slo_command_prints_compliance_as_json_and_exits_1_on_a_breach(tmp_path, monkeypatch, capsys):
    now = time.time()
    _, runs = daily_history(now)
    healthy = [rec("steady", "committed", now - k * DAY, 60, slo=json.dumps({"success_rate": 0.5, "schedule": "1d"}))
               for k in range(1, 4)]
    store = stored(tmp_path, runs + healthy)
    db = Path(store.location)
    proc = _cli(db, "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {(r["job"], r["objective"]): r for r in doc["objectives"]}
    # the same figures as test_error_budget_and_burn_rates_over_a_constructed_history, from the records' slo
    s = rows[("daily", "success")]
    assert (s["good"], s["total"]) == (19, 22) and s["budget_remaining"] == pytest.approx(1 - 3 / 2.2)
    assert s["burn_1h"] == pytest.approx(10) and s["burn_6h"] == pytest.approx(5)
    assert rows[("steady", "success")]["breached"] is False
    assert sorted(doc["breached"]) == ["daily: latency p95 (≤ 5m 00s)", "daily: success rate"]
    # the indicators over --since: 30 days hold 22 finished runs of daily, 3 of them failed
    assert doc["slis"]["daily"]["success_rate"] == pytest.approx(19 / 22)
    assert doc["slis"]["steady"]["missed_runs"] == 0
    # one healthy job alone: exit 0
    proc = _cli(db, "--job", "steady", "--since", "2w")
    assert proc.returncode == 0, proc.stderr
    assert "steady" in proc.stdout and "daily" not in proc.stdout and "M1" in proc.stdout
    # objectives from a file replace the declared ones
    cfg = tmp_path / "slo.toml"
    cfg.write_text('[jobs.steady]\nsuccess_rate = 0.99\np95_seconds = 30\n')
    monkeypatch.setenv("ENGINE_HISTORY", str(db))
    assert slo.command(_parser().parse_args(["slo", "--job", "steady", "--config", str(cfg)])) == 1
    out, err = capsys.readouterr()
    assert "latency p95 (≤ 30.0s)" in out and "BREACHED" in out and "1 objective(s) breached" in err, out
    with pytest.raises(SystemExit):
        _parser().parse_args(["slo", "--since", "soon"])


def test_slo_through_the_mapreduce_command_when_registered(tmp_path):
    from engine import cli
    if "slo" not in getattr(cli, "_COMMANDS", {}):
        pytest.skip("`mapreduce slo` is not registered in engine/cli.py yet")
    store = stored(tmp_path, [rec("steady", "committed", time.time() - DAY, 60, slo=json.dumps({"success_rate": 0.5}))])
    env = {**os.environ, "ENGINE_HISTORY": store.location, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "engine", "slo", "--json"], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["objectives"][0]["measured"] == 1.0
