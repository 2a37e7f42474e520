"""Alerts: a run's end told to a command or a webhook, once per problem, not once per retry.

:func:`notify` is called once at the end of every run with its history record
(:data:`engine.history.COLUMNS`). Three hooks can be set (``engine.run(on_failure=, on_success=,
on_slo_breach=)``, ``mapreduce run --on-failure ...``, or the ``engine.alerts.*`` settings); each is

* an ``http://`` or ``https://`` URL: the event is POSTed as JSON (``Content-Type: application/json``);
  each attempt may take ``timeout`` seconds; a connection error, a timeout, a 429 or a 5xx answer is
  tried again twice, after up to 0.25 s and 0.5 s; any other answer from 300 up is a failed delivery;
* or a command, split like a shell would (:func:`shlex.split`) but run without one: the event JSON
  on its standard input, and the main fields in ``MAPREDUCE_EVENT_*`` environment variables
  (``KIND``, ``SEVERITY``, ``JOB``, ``STATUS``, ``RUN_ID``, ``RECORD_ID``, ``LOGICAL_DATE``,
  ``OUTPUT``, ``MESSAGE``, ``DEDUP_KEY``, ``ATTEMPTS_SEEN``, ``SUMMARY``); an exit status other than
  0, or no exit within ``timeout`` seconds, is a failed delivery. It is not run again at once (it may
  have done half its work); the next run of the job tries again.

In Python a hook may also be a callable taking the event (raising is a failed delivery).

What is sent, and to whom::

    run ends            event (kind)   to            severity                 deduplicated by
    failed/interrupted  failure        on_failure    the job's criticality    job + logical date
    refused             failure        on_failure    the job's criticality    job + logical date
     ... by a change gate                            ticket, always           (its own episode)
    committed/skipped   recovery       on_failure    the failure's            the failure it resolves
    committed/skipped   success        on_success    info                     job + date + run id
    any, with breaches  slo_breach     on_slo_breach the job's criticality    job + objective + day

* **Failures are episodes.** The first failed run of a job for a logical date (or, for a run without
  one, for its output) claims the alert and delivers it; the retries that fail after it only add to
  its count (``attempts_seen``: the failed runs since the last successful one). The next run of that
  job and date that commits, or finds its output already committed, resolves the episode: its
  failure hook (if that run has one) receives a ``recovery`` event with the same ``dedup_key`` (as Alertmanager and
  PagerDuty send "resolved" to the receiver that got the alert), and a later failure alerts again.
  An episode also ends when the history shows a successful run after it, even one that ran without
  hooks (a manual rerun), so an old episode never silences a new failure.
* **Refused runs alert**: an output that already exists, input that is not there or a malformed job
  stop the pipeline as surely as a crash. A tripped change gate (``ChangeGateError``) is an episode
  of its own with severity ``ticket`` whatever the job's criticality: nothing broke, but a person has
  to look at the data before it is published. A run refused because another live run holds the
  output (``ConcurrentRunError``) does not alert: that other run's end is reported.
* **Successes**: ``on_success`` hears of every committed output once. A no-op rerun reports the run id
  of the run that committed, so it is not announced again; a forced recompute is. When the success
  ends a failure episode, its event says so (``resolves``: the episode's key and count).
* **Severity**: ``page`` when the job's objectives (the record's ``slo``) say ``criticality: page``,
  ``ticket`` otherwise; success events are ``info``.
* **SLO breaches**: the caller passes the breaches it found (texts, by :func:`engine.slo.breaches`);
  each objective alerts at most once per job and UTC day. A text names its objective before a colon
  (``"p95 completion: 41 min > 30 min"``); a text without one is its own objective.

The deduplication lives in the history's alert ledger (:meth:`engine.history.Store.claim_alert`,
an insert that only one process can win), so it holds across processes, machines (a PostgreSQL
history) and concurrent runs. Its rows (M4, the time to detect, is computed from them):

* ``failure:JOB:DATE`` (or ``failure:JOB:OUTPUT``; ``gate:...`` for change gates): the open episode,
  ``kind`` failure, ``created`` = when its first failed run ended, ``delivered`` = when the hook took
  the alert (M4 = delivered − created), ``status`` pending (being delivered) or delivered, and in
  ``detail`` the count, the records, the event and the hook's answer;
* ``failure:JOB:DATE:resolved:CREATED``: the same row once resolved (``status`` resolved; the
  recovery and its delivery time in ``detail``);
* ``success:JOB:DATE:RUN_ID`` and ``slo:JOB:OBJECTIVE:DAY``: what was announced (kinds success and
  slo_breach); rows of kind ``takeover`` record that a stale pending row was taken over.

A failed delivery never fails the run: it is a warning on the ``engine`` logger, and the ledger row is
dropped, so the next run of the job and date claims it and sends the alert again (its ``created``
still the first failure's end, so a lost alert shows as a long time to detect). A row left
``pending`` by a process that died while delivering is taken over by a run that ends more than
:data:`STALE_AFTER` seconds later. Without a history (``ENGINE_HISTORY=off``) nothing can be
deduplicated: every failed run alerts, every success is announced, and this is logged once.

``mapreduce alerts`` lists the ledger (open episodes first, with their failed runs and time to
detect); ``mapreduce alerts --test HOOK`` sends a hook a sample event and says whether it took it.

>>> notify(store.records(limit=1)[0], store, on_failure="https://alerts.example/hook")  # doctest: +SKIP
[{'kind': 'failure', 'hook': 'https://alerts.example/…', 'delivered': True, 'error': None, 'event': {...}}]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable

from .errors import EngineError
from .redact import redact, redact_obj

log = logging.getLogger("engine")

KINDS = ("failure", "success", "recovery", "slo_breach")
SEVERITIES = ("page", "ticket", "info")
ALERTING = ("failed", "interrupted", "refused")       # run statuses that raise a failure alert
SUCCEEDED = ("committed", "skipped")                  # run statuses that resolve one
HTTP_ATTEMPTS = 3                                     # a webhook is tried this often on connection errors and 5xx
BACKOFF = 0.25                                        # seconds before the second attempt; doubled after
STALE_AFTER = 300.0                                   # a pending ledger row older than this is taken over
ENV_LIMIT = 4000                                      # characters of a MAPREDUCE_EVENT_* value (the rest is on stdin)

class HookError(EngineError, ValueError):
    """An alert hook is neither an http(s):// URL, a command that can be split, nor a callable."""


class DeliveryError(EngineError, RuntimeError):
    """A hook did not take an event (an HTTP error, a timeout, a command's non-zero exit). :func:`notify`
    logs it as a warning and keeps the alert for the next run; :func:`send` raises it."""


def check_hook(hook: Any) -> None:
    """Raise :class:`HookError` unless ``hook`` can be called (for checking settings before a run)."""
    if hook is None or callable(hook):
        return
    if not isinstance(hook, str) or not hook.strip():
        raise HookError(f"an alert hook is an http(s):// URL or a command line, got {hook!r}")
    if _is_url(hook):
        parts = urllib.parse.urlsplit(hook.strip())
        if not parts.hostname:
            raise HookError(f"the alert hook URL {describe(hook)} names no host")
        return
    if "://" in hook.split()[0]:
        raise HookError(f"alert hooks are POSTed over http:// or https:// only, got {describe(hook)}; "
                        "for anything else give a command that forwards the event it reads on stdin")
    try:
        args = shlex.split(hook)
    except ValueError as e:
        raise HookError(f"the alert hook command cannot be split into arguments ({e}): {hook!r}") from None
    if not args:
        raise HookError("the alert hook command is empty")


def describe(hook: Any) -> str:
    """A hook as logs may show it: a URL's scheme and host (its path and query often hold a token),
    a command's program name."""
    if callable(hook):
        return getattr(hook, "__qualname__", type(hook).__name__)
    text = str(hook).strip()
    if _is_url(text):
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}/…"
    try:
        first = shlex.split(text)[0]
    except (ValueError, IndexError):
        first = text.split()[0] if text.split() else text
    return redact(os.path.basename(first)) + (" …" if len(text) > len(first) else "")


# -- the event ----------------------------------------------------------------------------------

def severity(record: dict[str, Any], kind: str = "failure") -> str:
    """``info`` for a success; ``ticket`` for a tripped change gate; else ``page`` if the job's
    objectives say ``criticality: page``, ``ticket`` otherwise."""
    if kind == "success":
        return "info"
    if record.get("error_type") == "ChangeGateError":
        return "ticket"
    crit = str(_objectives(record).get("criticality") or "ticket").lower()
    return "page" if crit == "page" else "ticket"


def event(kind: str, record: dict[str, Any], *, dedup_key: str, attempts_seen: int = 1,
          level: str | None = None, breaches: list[str] | None = None,
          resolves: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON event a hook receives (every string redacted)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    sev = level or severity(record, kind)
    started = _num(record.get("started"))
    finished = _finished(record)
    ref = record.get("record_id") or record.get("run_id") or ""
    ev: dict[str, Any] = {
        "version": 1, "kind": kind, "severity": sev, "job": record.get("job"), "status": record.get("status"),
        "run_id": record.get("run_id") or None, "record_id": record.get("record_id"),
        "logical_date": record.get("logical_date"), "output": record.get("output"),
        "started": _iso(started), "started_epoch": started, "finished": _iso(finished), "finished_epoch": finished,
        "seconds": _num(record.get("seconds")), "error_type": record.get("error_type"),
        "error_location": record.get("error_location"), "message": record.get("message"),
        "host": record.get("host") or socket.gethostname(), "dedup_key": dedup_key,
        "attempts_seen": int(attempts_seen), "show": f"mapreduce show {ref}" if ref else None,
        "sent": None,
    }
    if kind == "slo_breach":
        ev["breaches"] = list(breaches or [])
    if resolves:
        ev["resolves"] = resolves
    ev["summary"] = _summary(ev)
    return redact_obj(ev)


def _summary(ev: dict[str, Any]) -> str:
    what = f"{ev['job']} {ev['logical_date'] or ev['output']}"
    tag = ev["severity"].upper()
    if ev["kind"] == "failure":
        runs = f" ({ev['attempts_seen']} failed runs)" if ev["attempts_seen"] > 1 else ""
        return f"[{tag}] {what} {ev['status']}{runs}: {ev['message'] or ev['error_type'] or 'no message'}"
    if ev["kind"] == "recovery":
        return f"[RESOLVED] {what} {ev['status']} after {ev['attempts_seen']} failed run(s)"
    if ev["kind"] == "slo_breach":
        return f"[{tag}] {what}: objective(s) missed: " + "; ".join(ev.get("breaches") or [])
    return f"[INFO] {what} {ev['status']}: {ev['message'] or ''}".rstrip(": ")


# -- delivery -----------------------------------------------------------------------------------

def send(hook: Any, ev: dict[str, Any], *, timeout: float = 5) -> str:
    """Deliver one event to one hook now (no ledger); the hook's answer, or :class:`DeliveryError`."""
    check_hook(hook)
    if not ev.get("sent"):
        ev = dict(ev, sent=_iso(time.time()))
    if callable(hook):
        try:
            answer = hook(ev)
        except Exception as e:  # noqa: BLE001 - the user's hook: any failure is a failed delivery
            raise DeliveryError(f"the alert hook {describe(hook)} raised {type(e).__name__}: {e}") from e
        return "" if answer is None else str(answer)[:200]
    if _is_url(hook):
        return _post(hook.strip(), ev, timeout)
    return _run_command(hook, ev, timeout)


def _post(url: str, ev: dict[str, Any], timeout: float) -> str:
    from ._version import ENGINE_VERSION
    body = json.dumps(ev).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"mapreduce-engine/{ENGINE_VERSION}"}
    why = ""
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            time.sleep(BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random() / 2))
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:       # noqa: S310 - http(s) checked
                return f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code} {e.reason}"
            e.close()
            if e.code != 429 and e.code < 500:
                break                                  # the receiver refuses this request: trying again is no use
        except (urllib.error.URLError, OSError) as e:  # refused, reset, DNS, timeout
            why = f"{type(getattr(e, 'reason', e)).__name__}: {getattr(e, 'reason', e)}"
    raise DeliveryError(f"the alert webhook {describe(url)} did not take the event "
                        f"({why}, after {attempt + 1} attempt(s))")


def _run_command(hook: str, ev: dict[str, Any], timeout: float) -> str:
    args = shlex.split(hook)
    env = dict(os.environ)
    for name in ("kind", "severity", "job", "status", "run_id", "record_id", "logical_date", "output", "message",
                 "dedup_key", "attempts_seen", "summary"):
        value = ev.get(name)
        env[f"MAPREDUCE_EVENT_{name.upper()}"] = "" if value is None else str(value)[:ENV_LIMIT]
    try:
        done = subprocess.run(args, input=json.dumps(ev).encode(), env=env, timeout=timeout,  # noqa: S603
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"the alert command {describe(hook)} did not finish within {timeout:g}s") from None
    except OSError as e:
        raise DeliveryError(f"the alert command {describe(hook)} could not be started: {e}") from None
    if done.returncode != 0:
        tail = redact(done.stderr.decode(errors="replace").strip()[-300:])
        raise DeliveryError(f"the alert command {describe(hook)} exited with status {done.returncode}"
                            + (f": {tail}" if tail else ""))
    return f"exit 0{': ' + done.stdout.decode(errors='replace').strip()[:200] if done.stdout.strip() else ''}"


# -- notify: the ledger -------------------------------------------------------------------------

_warned_no_store = False


def notify(record: dict[str, Any], store, *, on_failure: Any = None, on_success: Any = None,
           on_slo_breach: Any = None, breaches: list[Any] | None = None, timeout: float = 5) -> list[dict]:
    """Tell the hooks about a finished run (see the module docstring); never raises.

    ``record``: the run's history record; ``store``: the history (:func:`engine.history.open_store`),
    or None when it is off; ``breaches``: the objectives this run found missed (texts).
    Returns what was sent: ``[{"kind", "hook", "delivered", "error", "event"}]``.
    """
    out: list[dict] = []
    if store is None and (on_failure or on_success or on_slo_breach):
        global _warned_no_store
        if not _warned_no_store:
            _warned_no_store = True
            log.warning("the run history is off: alerts cannot be deduplicated, every run's end is sent")
    steps: list[Callable[[], None]] = []
    status = record.get("status")
    if status in ALERTING and record.get("error_type") != "ConcurrentRunError":
        steps.append(lambda: _failure(record, store, on_failure, timeout, out))
    elif status in SUCCEEDED:
        steps.append(lambda: _success(record, store, on_failure, on_success, timeout, out))
    if on_slo_breach and breaches:
        steps.append(lambda: _slo(record, store, on_slo_breach, breaches, timeout, out))
    for step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - alerts never fail a run
            log.warning("alerts of run %s: %s: %s", record.get("record_id") or record.get("run_id"),
                        type(e).__name__, redact(str(e)))
    return out


def _deliver(hook: Any, ev: dict[str, Any], timeout: float, out: list[dict]) -> tuple[bool, str]:
    ev["sent"] = _iso(time.time())
    try:
        answer = send(hook, ev, timeout=timeout)
    except (DeliveryError, HookError) as e:
        out.append({"kind": ev["kind"], "hook": describe(hook), "delivered": False, "error": str(e), "event": ev})
        log.warning("%s; the next run of %s for %s sends it again", e, ev["job"],
                    ev["logical_date"] or ev["output"])
        return False, str(e)
    out.append({"kind": ev["kind"], "hook": describe(hook), "delivered": True, "error": None, "event": ev})
    return True, answer


def _failure(record, store, hook, timeout, out) -> None:
    family = "gate" if record.get("error_type") == "ChangeGateError" else "failure"
    key = f"{family}:{record.get('job')}:{_scope(record)}"
    sev = severity(record)
    if store is None:
        if hook:
            _deliver(hook, event("failure", record, dedup_key=key, level=sev), timeout, out)
        return
    streak, last_ok = _streak(store, record, family)
    count = len(streak)
    first = streak[-1]
    for _ in range(3):
        row = _row(store, key, record.get("job"))
        if row is not None and last_ok is not None and _finished(last_ok) > (row["created"] or 0):
            # the history shows a success after this episode began: it is over (resolve it, then claim anew)
            if _resolve(store, row, last_ok, hook, timeout, out) is None:
                time.sleep(0.2)                      # another run is resolving it: look again
            continue
        if row is not None:
            if row["status"] == "pending" and time.time() - _detail(row).get("claimed", 0) > STALE_AFTER:
                _take_over(store, row)
                continue
            detail = _detail(row)
            seen = list(detail.get("records") or [])
            known = record.get("record_id") in seen       # counted by the run that claimed the episode
            detail.update(count=max(count, int(detail.get("count") or 0) + (0 if known else 1)),
                          records=(seen if known else seen + [record.get("record_id")])[-20:],
                          last_record=record.get("record_id"), last_seen=_finished(record))
            store.update_alert(key, detail=json.dumps(detail))
            log.info("%s failed again (%d failed runs); its alert was sent already (%s)", key, detail["count"],
                     row["status"])
            return
        if not hook:
            return                                   # nothing to send: no episode to remember
        claimed_at = time.time()
        detail = {"count": count, "severity": sev, "records": [r.get("record_id") for r in streak[:20]],
                  "last_record": record.get("record_id"), "last_seen": _finished(record), "claimed": claimed_at,
                  "hook": describe(hook)}
        row = {"key": key, "kind": "failure", "job": record.get("job"), "logical_date": record.get("logical_date"),
               "record_id": first.get("record_id"), "created": _finished(first), "delivered": None,
               "status": "pending", "detail": json.dumps(detail)}
        if store.claim_alert(row):
            break
    else:
        return
    ev = event("failure", record, dedup_key=key, attempts_seen=count, level=sev)
    ok, answer = _deliver(hook, ev, timeout, out)
    if ok:
        detail.update(answer=answer, event=ev)
        store.update_alert(key, status="delivered", delivered=time.time(), detail=json.dumps(detail))
    else:
        store.delete_alert(key)


def _success(record, store, on_failure, on_success, timeout, out) -> None:
    job, scope = record.get("job"), _scope(record)
    resolved: dict[str, Any] | None = None
    if store is not None:
        for family in ("failure", "gate"):
            row = _row(store, f"{family}:{job}:{scope}", job)
            if row is None:
                continue
            if row["status"] == "pending" and time.time() - _detail(row).get("claimed", 0) <= STALE_AFTER:
                continue                  # still being delivered: the next success of this job and date resolves it
            if _finished(record) < (row["created"] or 0):
                continue                  # this run ended before the episode began (its alerts come late)
            done = _resolve(store, row, record, on_failure, timeout, out)
            if done and family == "failure":
                resolved = done
    if not on_success:
        return
    key = f"success:{job}:{scope}:{record.get('run_id')}"
    ev = event("success", record, dedup_key=key, attempts_seen=0, resolves=resolved)
    if store is None:
        _deliver(on_success, ev, timeout, out)
        return
    row = {"key": key, "kind": "success", "job": job, "logical_date": record.get("logical_date"),
           "record_id": record.get("record_id"), "created": _finished(record), "delivered": None, "status": "pending",
           "detail": json.dumps({"claimed": time.time(), "hook": describe(on_success)})}
    if not _claim(store, row):
        return                                       # this output was announced already
    ok, answer = _deliver(on_success, ev, timeout, out)
    if ok:
        store.update_alert(key, status="delivered", delivered=time.time(),
                           detail=json.dumps({"hook": describe(on_success), "answer": answer, "event": ev}))
    else:
        store.delete_alert(key)


def _resolve(store, row, success, hook, timeout, out) -> dict[str, Any] | None:
    """End a failure episode: move its row aside as resolved and, if it was delivered and a failure hook
    is set, send that hook the recovery. Returns ``{"dedup_key", "attempts_seen"}`` if this call did it."""
    detail = _detail(row)
    count = int(detail.get("count") or 1)
    key = row["key"]
    moved = dict(row, key=f"{key}:resolved:{row['created']!r}", status="resolved",
                 detail=json.dumps(dict(detail, resolved_by=success.get("record_id"),
                                        resolved_at=_finished(success), claimed=time.time())))
    if not store.claim_alert(moved):
        other = _row(store, moved["key"], row["job"])
        if other is not None and time.time() - _detail(other).get("claimed", 0) > STALE_AFTER:
            store.delete_alert(key)                  # resolved long ago by a run that died before this step
        return None                                  # another run is resolving it
    if hook and row["status"] == "delivered":
        ev = event("recovery", success, dedup_key=key, attempts_seen=count,
                   level=detail.get("severity") or severity(success))
        ok, answer = _deliver(hook, ev, timeout, out)
        if not ok:
            store.delete_alert(moved["key"])         # the next success of this job and date tries again
            return None
        store.update_alert(moved["key"], detail=json.dumps(dict(
            _detail(moved), recovery={"delivered": time.time(), "answer": answer, "event": ev})))
    store.delete_alert(key)
    return {"dedup_key": key, "attempts_seen": count}


def _slo(record, store, hook, breaches, timeout, out) -> None:
    job = record.get("job")
    day = datetime.fromtimestamp(_finished(record), timezone.utc).strftime("%Y-%m-%d")
    fresh: list[tuple[str, str]] = []
    for b in breaches:
        text = str(b.get("text") or b) if isinstance(b, dict) else str(b)
        if isinstance(b, dict) and b.get("objective"):
            obj = str(b["objective"])
        else:           # engine.slo's texts begin "<job>: ": the objective is what follows
            obj = objective_of(text[len(f"{job}: "):] if job and text.startswith(f"{job}: ") else text)
        key = f"slo:{job}:{obj}:{day}"
        row = {"key": key, "kind": "slo_breach", "job": job, "logical_date": record.get("logical_date"),
               "record_id": record.get("record_id"), "created": _finished(record), "delivered": None,
               "status": "pending", "detail": json.dumps({"claimed": time.time(), "breach": text})}
        if store is None or _claim(store, row):
            fresh.append((key, text))
    if not fresh:
        return
    ev = event("slo_breach", record, dedup_key=f"slo:{job}:{day}", breaches=[t for _, t in fresh])
    ok, answer = _deliver(hook, ev, timeout, out)
    if store is None:
        return
    for key, text in fresh:
        if ok:
            store.update_alert(key, status="delivered", delivered=time.time(),
                               detail=json.dumps({"breach": text, "answer": answer, "hook": describe(hook)}))
        else:
            store.delete_alert(key)


def objective_of(text: str) -> str:
    """The objective a breach text is about: the words before its first colon (lower case), or the
    whole text with its numbers taken out."""
    head, sep, _ = text.partition(":")
    if sep and 0 < len(head.strip()) <= 60:
        return re.sub(r"\s+", " ", head.strip().lower())
    return re.sub(r"\s+", " ", re.sub(r"[-+]?\d[\d.,:]*\s*%?", "#", text)).strip().lower()[:80]


# -- helpers ------------------------------------------------------------------------------------

def _claim(store, row: dict[str, Any]) -> bool:
    """Insert ``row`` unless its key is there; a pending row abandoned for :data:`STALE_AFTER` is taken over."""
    if store.claim_alert(row):
        return True
    old = _row(store, row["key"], row["job"])
    if old is None:
        return store.claim_alert(row)
    if old["status"] == "pending" and time.time() - _detail(old).get("claimed", 0) > STALE_AFTER:
        _take_over(store, old)
        return store.claim_alert(row)
    return False


def _take_over(store, old: dict[str, Any]) -> None:
    """Drop a row left pending by a run that died while delivering, if this process wins the right to."""
    marker = {"key": f"{old['key']}:takeover:{_detail(old).get('claimed')!r}", "kind": "takeover",
              "job": old["job"], "logical_date": old["logical_date"], "record_id": old["record_id"],
              "created": time.time(), "status": "resolved", "detail": json.dumps({"of": old["key"]})}
    if store.claim_alert(marker):
        log.info("alert %s was left undelivered by a run that ended; sending it now", old["key"])
        store.delete_alert(old["key"])


def _streak(store, record, family: str) -> tuple[list[dict], dict | None]:
    """The failed runs of this job and date (or output) since its last successful run, newest first
    (this record included), and that successful run (None if there is none)."""
    date = record.get("logical_date")
    rows = store.records(job=record.get("job"), logical_date=date, output=None if date else record.get("output"),
                         limit=200)
    streak, last_ok = [], None
    for r in rows:
        if r.get("status") in SUCCEEDED and r.get("record_id") != record.get("record_id"):
            if _finished(r) <= _finished(record):
                last_ok = r
                break
            continue
        if r.get("status") in ALERTING and r.get("error_type") != "ConcurrentRunError" and \
                ("gate" if r.get("error_type") == "ChangeGateError" else "failure") == family:
            streak.append(r)
    if not any(r.get("record_id") == record.get("record_id") for r in streak):
        streak.insert(0, record)                     # not in the history (yet)
    return streak, last_ok


def _row(store, key: str, job: str | None) -> dict[str, Any] | None:
    return next((a for a in store.alerts(job=job) if a["key"] == key), None)


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(TypeError, ValueError):
        d = json.loads(row.get("detail") or "{}")
        if isinstance(d, dict):
            return d
    return {}


def _objectives(record: dict[str, Any]) -> dict[str, Any]:
    slo = record.get("slo")
    if isinstance(slo, str):
        with contextlib.suppress(ValueError):
            slo = json.loads(slo)
    return slo if isinstance(slo, dict) else {}


def _scope(record: dict[str, Any]) -> str:
    return str(record.get("logical_date") or record.get("output") or "?")


def _finished(record: dict[str, Any]) -> float:
    f = _num(record.get("finished"))
    if f is None and _num(record.get("started")) is not None:
        f = _num(record["started"]) + (_num(record.get("seconds")) or 0.0)
    return f if f is not None else time.time()


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _is_url(hook: Any) -> bool:
    return isinstance(hook, str) and hook.strip().lower().startswith(("http://", "https://"))


# -- mapreduce alerts ---------------------------------------------------------------------------

def add_parser(sub, common) -> None:
    """``mapreduce alerts``: the alert ledger (open episodes first), or ``--test HOOK`` to try a hook."""
    a = sub.add_parser("alerts", parents=[common], help="alerts sent and open failure episodes; --test tries a hook",
                       description="List the alert ledger of the run history: each failure episode (job and "
                                   "logical date), how many runs failed in it, when its alert was delivered "
                                   "and how long after the failure (time to detect). With --test, send a "
                                   "sample event to a hook and say whether it took it.")
    a.add_argument("--job", help="only this job")
    a.add_argument("--open", action="store_true", help="only failure episodes not resolved yet")
    a.add_argument("--limit", type=int, default=30, help="rows at most (default 30)")
    a.add_argument("--test", metavar="HOOK", help="an http(s):// URL or a command: send it a sample failure event")
    a.add_argument("--timeout", type=float, default=10, help="seconds a hook may take (default 10)")


def command(args) -> int:
    if args.test:
        return _test_hook(args.test, args.timeout)
    from . import history
    store = history.open_store(create=False)
    if store is None:
        print("the run history is off (ENGINE_HISTORY=off): there is no alert ledger")
        return 0
    rows = [r for r in store.alerts(job=args.job) if r["kind"] in ("failure", "success", "slo_breach")]
    if args.open:
        rows = [r for r in rows if r["kind"] == "failure" and r["status"] != "resolved"]
    rows.sort(key=lambda r: (r["kind"] != "failure" or r["status"] == "resolved", -(r["created"] or 0)))
    if not rows:
        print("no alerts" + (f" for job {args.job}" if args.job else "") + f" in {store.location}")
        return 0
    print(f"{'raised':<16}  {'kind':<10} {'status':<9} {'runs':>4}  {'detected':>8}  key")
    for r in rows[:args.limit]:
        detail = _detail(r)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])) if r["created"] else "?"
        took = f"{r['delivered'] - r['created']:.0f}s" if r["delivered"] and r["created"] else "-"
        runs = str(detail.get("count", "")) if r["kind"] == "failure" else ""
        print(f"{when:<16}  {r['kind']:<10} {r['status']:<9} {runs:>4}  {took:>8}  {r['key'].split(':resolved:')[0]}")
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more (--limit)")
    return 0


def _test_hook(hook: str, timeout: float) -> int:
    try:
        check_hook(hook)
    except HookError as e:
        print(f"error: {e}")
        return 2
    now = time.time()
    rec = {"job": "mapreduce-alert-test", "status": "failed", "run_id": "0" * 16, "record_id": "0" * 16,
           "output": "(none)", "started": now - 1, "finished": now, "seconds": 1.0, "error_type": "TestAlert",
           "message": "a test event sent by `mapreduce alerts --test`: nothing failed"}
    try:
        answer = send(hook, event("failure", rec, dedup_key="test:mapreduce-alert-test", level="ticket"),
                      timeout=timeout)
    except DeliveryError as e:
        print(f"not delivered: {e}")
        return 1
    print(f"delivered to {describe(hook)} ({answer})")
    return 0


__all__ = ["notify", "send", "event", "severity", "check_hook", "describe", "objective_of", "HookError",
           "DeliveryError", "KINDS", "SEVERITIES", "ALERTING", "STALE_AFTER", "add_parser", "command"]
