"""Service levels of jobs, from the run history: indicators (SLIs), objectives (SLOs), error budgets.

A job declares what it promises with :class:`Objectives` (``Job("nightly", slo={...})``, or a TOML or
JSON file read by :func:`load_objectives`); every record of its runs carries them as JSON, so the
history alone is enough to judge it. Three questions, three functions:

* :func:`compute_slis` — how is the job doing? The seed's indicators M1–M10 over a window, plus the
  runs a declared schedule expected that never succeeded (each defined exactly in its docstring).
* :func:`compliance` — does it keep its promises? Per objective: good and total events, the error
  budget, how much of it is left, and how fast it burns over 1 h, 6 h and 30 d.
* :func:`breaches` — after one run, which promises are broken now (the ``on_slo_breach`` alert).

``mapreduce slo`` prints the last two (:func:`add_parser`, :func:`command`);
``mapreduce history --since 30d`` prints :func:`format_slis` of the first.

>>> from engine.slo import Objectives
>>> nightly = Objectives(success_rate=0.99, p95_seconds=1800, deadline="06:00", timezone="Europe/Berlin",
...                      schedule="daily", criticality="page")
>>> nightly.to_dict()["deadline"]
'06:00'
>>> rows = compliance(store.records(job="nightly"), {"nightly": nightly})      # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import difflib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import JobDefinitionError
from .history import SUCCEEDED, effective

FAILED = ("failed", "interrupted")          # the ends M5 measures the recovery from
DAY = 86400.0
BURN_WINDOWS = (("1h", 3600.0), ("6h", 6 * 3600.0), ("30d", 30 * DAY))
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_WINDOW = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_HHMM = re.compile(r"\s*(\d{1,2}):(\d{2})\s*")
_SCHEDULES = {"daily": DAY, "hourly": 3600.0}
_CRITICALITY = ("page", "ticket")


def parse_window(text: Any) -> float:
    """A window or duration in seconds: ``"30d"``, ``"6h"``, ``"90m"``, ``"2w"``, ``"45s"``; a bare
    number is seconds.

    >>> parse_window("30d"), parse_window("6h"), parse_window("90m"), parse_window("2w")
    (2592000.0, 21600.0, 5400.0, 1209600.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _WINDOW.fullmatch(str(text))
        value = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()] if m else -1.0
    if not value > 0 or math.isinf(value):
        raise JobDefinitionError(f"expected a window such as 30d, 6h, 90m or 2w (units s, m, h, d, w), got {text!r}")
    return value


def schedule_seconds(schedule: str) -> float:
    """The interval of a schedule: ``daily`` (a day), ``hourly``, or an interval such as ``6h``."""
    return _SCHEDULES.get(str(schedule).strip().lower()) or parse_window(schedule)


# -- objectives -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objectives:
    """What a job promises. Every field is optional; only the objectives given are judged.

    * ``success_rate``: the share of finished runs that must succeed (committed or a no-op), e.g.
      ``0.99`` (``"99%"`` is read too).
    * ``p95_seconds`` / ``p99_seconds``: the completion time 95 % (99 %) of committed runs must stay
      within (a number of seconds, or a duration such as ``"30m"``).
    * ``deadline``: ``"06:00"`` — the output for a logical date must be committed by 06:00 of the day
      after that date; a run without a logical date, by 06:00 of the day it started. The clock is
      ``timezone``'s (an IANA name, default ``"UTC"``). The share of dates that must make it is
      ``success_rate`` (0.99 when none is declared).
    * ``schedule``: how often the job should succeed — ``"daily"``, ``"hourly"`` or an interval such
      as ``"6h"`` (at least a minute): the runs it expected and never got are counted as missed.
    * ``criticality``: ``"page"`` (someone is woken up) or ``"ticket"`` (the default): what a breach
      alert says.
    * ``window``: the period the objectives hold over and the error budget is counted in (``"30d"``).

    Objectives are immutable and hashable; :meth:`from_obj` builds them from a dict of these fields.
    """

    success_rate: float | None = None
    p95_seconds: float | None = None
    p99_seconds: float | None = None
    deadline: str | None = None
    timezone: str = "UTC"
    schedule: str | None = None
    criticality: str = "ticket"
    window: str = "30d"

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.success_rate is not None:
            put(self, "success_rate", _fraction(self.success_rate))
        for name in ("p95_seconds", "p99_seconds"):
            value = getattr(self, name)
            if value is not None:
                put(self, name, _seconds(name, value))
        if self.deadline is not None:
            m = _HHMM.fullmatch(str(self.deadline))
            if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
                raise JobDefinitionError(f"deadline={self.deadline!r}: expected a time of day HH:MM such as '06:00' "
                                         "(the output for a date must be committed by then on the next day)")
            put(self, "deadline", f"{int(m.group(1)):02d}:{m.group(2)}")
        zone = str(self.timezone).strip() if self.timezone is not None else ""
        try:
            _zone(zone)
        except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError, IsADirectoryError, ...
            raise JobDefinitionError(f"timezone={self.timezone!r}: not a known time zone; use an IANA name such as "
                                     "'UTC' or 'Europe/Berlin'") from None
        put(self, "timezone", zone)
        if self.schedule is not None:
            schedule = str(self.schedule).strip().lower()
            try:
                every = schedule_seconds(schedule)
            except JobDefinitionError:
                every = 0.0
            if every < 60:
                raise JobDefinitionError(f"schedule={self.schedule!r}: expected 'daily', 'hourly' or an interval of "
                                         "at least a minute such as '6h' or '1d'")
            put(self, "schedule", schedule)
        criticality = str(self.criticality).strip().lower()
        if criticality not in _CRITICALITY:
            raise JobDefinitionError(f"criticality={self.criticality!r}: expected 'page' or 'ticket'")
        put(self, "criticality", criticality)
        try:
            parse_window(self.window)
        except JobDefinitionError as exc:
            raise JobDefinitionError(f"window={self.window!r}: {exc}") from None
        put(self, "window", str(self.window).strip())

    @classmethod
    def from_obj(cls, obj: Any, *, what: str = "slo") -> Objectives | None:
        """``obj`` as objectives: an :class:`Objectives` (returned as is), a dict of its fields (keys may
        use ``-`` for ``_``), a JSON text of such a dict (a record's ``slo``), or None (no objectives).
        A wrong key or value raises :class:`JobDefinitionError` naming it; ``what`` starts the message."""
        if obj is None or isinstance(obj, cls):
            return obj
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except ValueError as exc:
                raise JobDefinitionError(f"{what}: expected objectives as JSON, got {str(obj)[:80]!r} "
                                         f"({exc})") from None
            if obj is None:
                return None
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(obj, Mapping):
            raise JobDefinitionError(f"{what}: expected engine.slo.Objectives or a dict of its fields "
                                     f"({', '.join(names)}), got {type(obj).__name__}")
        fields: dict[str, Any] = {}
        for key, value in obj.items():
            name = str(key).strip().replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise JobDefinitionError(f"{what}: unknown objective {key!r}{hint}; the fields are {', '.join(names)}")
            fields[name] = value
        try:
            return cls(**fields)
        except JobDefinitionError as exc:
            raise JobDefinitionError(f"{what}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The declared fields (None left out), as plain JSON-able values."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_json(self) -> str:
        """:meth:`to_dict` as the compact JSON a history record's ``slo`` holds."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def window_seconds(self) -> float:
        return parse_window(self.window)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Objectives))


def _fraction(value: Any) -> float:
    text = str(value).strip()
    try:
        f = float(text[:-1]) / 100 if text.endswith("%") else float(value)
    except (TypeError, ValueError):
        f = -1.0
    if not 0 < f < 1:
        raise JobDefinitionError(f"success_rate={value!r}: expected a fraction between 0 and 1 such as 0.99 (or "
                                 "'99%'); 1 would leave no error budget at all")
    return f


def _seconds(name: str, value: Any) -> float:
    try:
        return parse_window(value)
    except JobDefinitionError:
        raise JobDefinitionError(f"{name}={value!r}: expected a positive number of seconds or a duration such as "
                                 "'30m'") from None


def _zone(name: str):
    from zoneinfo import ZoneInfo
    if not name:
        raise ValueError("empty")
    return ZoneInfo(name)


def load_objectives(path: str | os.PathLike) -> dict[str, Objectives]:
    """The objectives of each job in a TOML or JSON file (TOML unless the name ends in ``.json`` or the
    text starts with ``{``)::

        [jobs.nightly]                      # {"jobs": {"nightly": {"success_rate": 0.99, ...}}}
        success_rate = 0.99
        p95_seconds = 1800
        deadline = "06:00"
        timezone = "Europe/Berlin"
        schedule = "daily"
        criticality = "page"
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise JobDefinitionError(f"cannot read the objectives file {name}: {exc.strerror or exc}") from None
    as_json = name.lower().endswith(".json") or (not name.lower().endswith(".toml") and raw.lstrip()[:1] == b"{")
    try:
        if as_json:
            doc = json.loads(raw)
        else:
            import tomllib
            doc = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:     # tomllib.TOMLDecodeError is a ValueError
        raise JobDefinitionError(f"{name}: not valid {'JSON' if as_json else 'TOML'}: {exc}") from None
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict):
        raise JobDefinitionError(f"{name}: expected a table of jobs, [jobs.NAME] tables in TOML or "
                                 '{"jobs": {"NAME": {"success_rate": 0.99, ...}}} in JSON')
    out = {}
    for job, fields in jobs.items():
        obj = Objectives.from_obj(fields, what=f"{name}: job {job!r}")
        if obj is not None:
            out[str(job)] = obj
    return out


def objectives_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Objectives]:
    """Per job, the objectives its newest record carrying any declared (a record whose ``slo`` cannot
    be read is passed over)."""
    newest: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r.get("slo") and (r["job"] not in newest
                             or (r.get("started") or 0) > (newest[r["job"]].get("started") or 0)):
            try:
                Objectives.from_obj(r["slo"])
            except JobDefinitionError:
                continue
            newest[r["job"]] = r
    return {job: Objectives.from_obj(r["slo"]) for job, r in newest.items()}


# -- record helpers ----------------------------------------------------------------------------

def _num(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _end(rec: Mapping[str, Any]) -> float | None:
    """When a run ended: ``finished``, else ``started + seconds``; None while it runs."""
    if rec.get("finished") is not None:
        return float(rec["finished"])
    if rec.get("status") != "running" and rec.get("started") is not None and rec.get("seconds") is not None:
        return float(rec["started"]) + float(rec["seconds"])
    return None


def _cpu(rec: Mapping[str, Any]) -> float:
    value = rec.get("worker_cpu_seconds")
    return _num(value if value is not None else rec.get("cpu_seconds"))


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def nearest_rank(sorted_values: list[float], percent: int) -> float | None:
    """The nearest-rank percentile: the value at rank ``ceil(percent/100 · n)`` (1-based) of the sorted
    values — always one of them, never interpolated. ``[1..10]``: P50 = 5, P95 = P99 = 10."""
    n = len(sorted_values)
    if not n:
        return None
    rank = max(1, -(-percent * n // 100))
    return sorted_values[rank - 1]


def _group(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    seen: set = set()
    for r in records:
        rid = r.get("record_id")
        if rid is not None:
            if rid in seen:
                continue
            seen.add(rid)
        r = effective(r)                     # a lost run (driver gone while running) counts as interrupted
        out.setdefault(r.get("job") or "?", []).append(r)
    return out


def _since(since: Any, now: float) -> float | None:
    if since is None:
        return None
    if isinstance(since, str):
        return now - parse_window(since)
    return float(since)


def default_rates() -> dict[str, float]:
    """Prices per CPU-second and per GB-second: ``engine.cost.cpu-second`` and ``engine.cost.gb-second``
    (0 when unset)."""
    from . import config
    out = {}
    for key, name in (("cpu-second", "cpu_second"), ("gb-second", "gb_second")):
        try:
            out[name] = float(config.get(f"cost.{key}") or 0.0)
        except Exception:  # noqa: BLE001 - no such key in this version of the configuration
            out[name] = 0.0
    return out


# -- dates, deadlines, schedules -------------------------------------------------------------------

def _run_day(rec: Mapping[str, Any], zone) -> tuple[dt.date, bool] | None:
    """``(date, True)`` for a run with a logical date, else ``(the day it started in zone, False)``."""
    ld = rec.get("logical_date")
    if ld:
        try:
            return dt.date.fromisoformat(str(ld)[:10]), True
        except ValueError:
            pass
    if rec.get("started") is None:
        return None
    return dt.datetime.fromtimestamp(float(rec["started"]), zone).date(), False


def deadline_at(day: dt.date, objectives: Objectives, *, logical: bool = True) -> float:
    """The epoch second by which the output for ``day`` is due: ``deadline`` on the day after a logical
    date, or on ``day`` itself for a run without one, on the clock of ``objectives.timezone``."""
    hh, mm = (int(x) for x in (objectives.deadline or "00:00").split(":"))
    when = day + dt.timedelta(days=1) if logical else day
    return dt.datetime.combine(when, dt.time(hh, mm), tzinfo=_zone(objectives.timezone)).timestamp()


def _midnight(day: dt.date, zone) -> float:
    return dt.datetime.combine(day, dt.time(0, 0), tzinfo=zone).timestamp()


def _missed(recs: list[Mapping[str, Any]], obj: Objectives, start: float, end: float) -> tuple[str, list[Any]]:
    """The slots a schedule expected in ``(start, end]`` with no successful run: ``("dates", [date])``
    for a daily job with logical dates, ``("days", [date])`` for another daily job, ``("intervals",
    [epoch])`` otherwise. See :func:`compute_slis`."""
    every = schedule_seconds(obj.schedule)
    zone = _zone(obj.timezone)
    if every == DAY and any(r.get("logical_date") for r in recs):
        done = {str(r["logical_date"])[:10] for r in recs if r.get("status") in SUCCEEDED and r.get("logical_date")}

        def due(d: dt.date) -> float:
            if obj.deadline:
                return deadline_at(d, obj, logical=True)
            return _midnight(d + dt.timedelta(days=2), zone)

        d = dt.datetime.fromtimestamp(start, zone).date() - dt.timedelta(days=3)
        out = []
        while due(d) <= end:
            if due(d) > start and d.isoformat() not in done:
                out.append(d)
            d += dt.timedelta(days=1)
        return "dates", out
    ends = sorted(e for r in recs if r.get("status") in SUCCEEDED and (e := _end(r)) is not None)

    def succeeded_in(a: float, b: float) -> bool:
        i = bisect.bisect_left(ends, a)
        return i < len(ends) and ends[i] < b

    if every == DAY:
        d = dt.datetime.fromtimestamp(start, zone).date()
        out = []
        while _midnight(d + dt.timedelta(days=1), zone) <= end:
            a, b = _midnight(d, zone), _midnight(d + dt.timedelta(days=1), zone)
            if a >= start and not succeeded_in(a, b):
                out.append(d)
            d += dt.timedelta(days=1)
        return "days", out
    t = math.ceil(start / every) * every
    out = []
    while t + every <= end:
        if not succeeded_in(t, t + every):
            out.append(t)
        t += every
    return "intervals", out


def _slot_text(kind: str, slot: Any) -> str:
    if kind == "intervals":
        return dt.datetime.fromtimestamp(slot, dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    return slot.isoformat()


# -- the indicators ------------------------------------------------------------------------------

def compute_slis(records: Iterable[Mapping[str, Any]], *, since: Any, until: float | None = None,
                 now: float | None = None, rates: Mapping[str, float] | None = None,
                 alerts: Iterable[Mapping[str, Any]] | None = None,
                 objectives: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The seed's indicators M1–M10 of each job, from history records (dicts with the keys of
    :data:`engine.history.COLUMNS`; only those fields are read) and the alert ledger rows ``alerts``.

    The window holds the records that *started* in ``[since, until)`` (``since``: epoch seconds, a
    window such as ``"30d"`` counted back from ``now``, or None for all; ``until`` default: none).
    A run is *finished* unless its status is ``running``; *succeeded* means ``committed`` or
    ``skipped`` (a no-op rerun over an output already committed). Records before the window may be
    passed too: they are used only where said (M5, M8, missed runs). Sums treat a missing count as 0;
    a ratio whose denominator is 0 is None.

    * **M1 success rate** = (committed + skipped) ÷ finished runs in the window (failed, interrupted
      and refused runs count against it).
    * **M2 completion time** P50, P95, P99 of ``seconds`` of the committed runs in the window,
      *nearest-rank* percentiles (:func:`nearest_rank`: the value at rank ⌈p·n/100⌉, no interpolation).
    * **M3 task failure rate** = Σ ``task_failures`` ÷ Σ ``attempts`` over the finished runs.
    * **M4 time to detect**: for the failure alerts of the job (ledger rows of kind ``failure`` whose
      run is in the window, or raised in it), ``delivered`` − the failed run's ``finished`` (the
      row's ``created``, the failure's end, when its run is not among the records): mean and max
      over the delivered ones; ``undelivered`` counts the others.
    * **M5 time to recover**: for each failed or interrupted run in the window, from its end to the
      end of the first committed or skipped run of the same job and the same ``logical_date`` (the
      same ``output`` when it has none) that ended at or after it (searched among all records
      given): mean and max; ``unrecovered`` counts failures with no such run yet.
    * **M6 utilization** = Σ CPU seconds ÷ Σ ``thread_seconds`` over the finished runs that report
      ``thread_seconds`` (CPU seconds: ``worker_cpu_seconds``, else the task threads' ``cpu_seconds``).
    * **M7 cost per run**: Σ CPU seconds (as in M6) ÷ finished runs, and Σ ``memory_gb_seconds`` ÷
      finished runs; ``cost`` = CPU-s · ``rates["cpu_second"]`` + GB-s · ``rates["gb_second"]``
      (default :func:`default_rates`, from ``engine.cost.cpu-second`` and ``engine.cost.gb-second``).
    * **M8 checkpoint lag**: for each ``running`` record in the window, ``now`` − ``checkpoint_at``
      (``now`` − ``started`` before its first checkpoint), the largest of them; and the age of the
      last committed output, ``now`` − ``finished`` of the newest committed run among all records.
    * **M9 throughput** over the committed runs in the window: Σ ``input_rows``, Σ ``input_bytes``,
      Σ ``output_rows``, Σ ``output_bytes``, each ÷ Σ ``seconds``.
    * **M10 retries per failure** = Σ ``retries`` ÷ Σ ``failed_tasks`` over the finished runs (None when
      no task failed).
    * **Missed runs**, when the job declares a ``schedule`` (``objectives``, default: the newest
      declaration in the records, :func:`objectives_from_records`). The job is not expected to run
      before its first record: the span is (max(``since``, first record's start), ``until`` or ``now``].
      A daily job with logical dates missed each date whose due time falls in the span and that has
      no committed or skipped run (any record given); a date is due at its deadline when one is
      declared, else at the end of the day after it (in the objectives' time zone). Any other job
      missed each whole schedule interval in the span with no successful run ending in it (a daily
      schedule counts calendar days of the time zone; other intervals are aligned on the Unix epoch,
      so ``6h`` is 00:00, 06:00, ... UTC).
    """
    now = time.time() if now is None else float(now)
    lo = _since(since, now)
    hi = float(until) if until is not None else None
    span_end = hi if hi is not None else now
    prices = dict(default_rates() if rates is None else {"cpu_second": 0.0, "gb_second": 0.0, **rates})
    ledger = [a for a in (alerts or ()) if _is_failure_alert(a)]
    records = list(records)
    objs = objectives_from_records(records) if objectives is None else \
        {k: Objectives.from_obj(v, what=f"job {k!r}") for k, v in objectives.items()}
    out: dict[str, dict[str, Any]] = {}
    for job, recs in sorted(_group(records).items()):
        win = [r for r in recs if r.get("started") is not None and (lo is None or r["started"] >= lo)
               and (hi is None or r["started"] < hi)]
        fin = [r for r in win if r.get("status") != "running"]
        committed = [r for r in fin if r.get("status") == "committed"]
        statuses: dict[str, int] = {}
        for r in win:
            statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
        ok = sum(1 for r in fin if r.get("status") in SUCCEEDED)
        secs = sorted(float(r["seconds"]) for r in committed if r.get("seconds") is not None)
        s: dict[str, Any] = {"job": job, "runs": len(win), "finished": len(fin), "statuses": statuses}
        # M1, M2
        s["success_rate"] = _ratio(ok, len(fin))
        s["completion_seconds"] = {"p50": nearest_rank(secs, 50), "p95": nearest_rank(secs, 95),
                                   "p99": nearest_rank(secs, 99), "runs": len(secs)}
        # M3
        failures, attempts = sum(_num(r.get("task_failures")) for r in fin), sum(_num(r.get("attempts")) for r in fin)
        s["task_failure_rate"] = _ratio(failures, attempts)
        s["task_failures"], s["attempts"] = int(failures), int(attempts)
        # M4
        s["time_to_detect"] = _detect(job, win, recs, ledger, lo, hi)
        # M5
        s["time_to_recover"] = _recover(win, recs)
        # M6
        measured = [r for r in fin if _num(r.get("thread_seconds")) > 0]
        s["utilization"] = _ratio(sum(_cpu(r) for r in measured), sum(_num(r.get("thread_seconds")) for r in measured))
        # M7
        cpu_run = _ratio(sum(_cpu(r) for r in fin), len(fin))
        gb_run = _ratio(sum(_num(r.get("memory_gb_seconds")) for r in fin), len(fin))
        s["cost_per_run"] = {
            "cpu_seconds": cpu_run, "gb_seconds": gb_run, "runs": len(fin), "rates": prices,
            "cost": None if cpu_run is None else cpu_run * prices["cpu_second"] + gb_run * prices["gb_second"]}
        # M8
        lags = [now - float(r.get("checkpoint_at") or r["started"]) for r in win if r.get("status") == "running"]
        last = max((e for r in recs if r.get("status") == "committed" and (e := _end(r)) is not None), default=None)
        s["checkpoint_lag_seconds"] = max(lags) if lags else None
        s["running"] = len(lags)
        s["last_output_age_seconds"] = None if last is None else now - last
        # M9
        busy = sum(_num(r.get("seconds")) for r in committed)
        s["throughput"] = {
            f"{what}_{way}_per_second": _ratio(sum(_num(r.get(f"{way}put_{what}")) for r in committed), busy)
            for way in ("in", "out") for what in ("rows", "bytes")}
        # M10
        retries, failed_tasks = sum(_num(r.get("retries")) for r in fin), sum(_num(r.get("failed_tasks")) for r in fin)
        s["retries_per_failure"] = _ratio(retries, failed_tasks)
        s["retries"], s["failed_tasks"] = int(retries), int(failed_tasks)
        # missed runs
        obj = objs.get(job)
        s["schedule"] = obj.schedule if obj is not None else None
        s["missed_runs"], s["missed"] = None, []
        if obj is not None and obj.schedule:
            first = min(float(r["started"]) for r in recs if r.get("started") is not None)
            kind, slots = _missed(recs, obj, max(first, lo) if lo is not None else first, span_end)
            s["missed_runs"], s["missed"] = len(slots), [_slot_text(kind, x) for x in slots]
        out[job] = s
    return out


def _is_failure_alert(row: Mapping[str, Any]) -> bool:
    kind = str(row.get("kind") or "").lower().replace("-", "_")
    return kind in ("failure", "on_failure")


def _detect(job, win, recs, ledger, lo, hi) -> dict[str, Any]:
    ends = {r.get("record_id"): _end(r) for r in recs if r.get("record_id") is not None}
    in_window = {r.get("record_id") for r in win}
    times, undelivered = [], 0
    for a in ledger:
        if a.get("job") != job:
            continue
        created = a.get("created")
        if not (a.get("record_id") in in_window or (created is not None and (lo is None or created >= lo)
                                                     and (hi is None or created < hi))):
            continue
        if a.get("delivered") is None:
            undelivered += 1
            continue
        failed_at = ends.get(a.get("record_id")) or created
        if failed_at is not None:
            times.append(float(a["delivered"]) - float(failed_at))
    return {"mean": sum(times) / len(times) if times else None, "max": max(times, default=None),
            "alerts": len(times), "undelivered": undelivered}


def _target(rec: Mapping[str, Any]) -> tuple[str, Any]:
    return ("date", str(rec["logical_date"])[:10]) if rec.get("logical_date") else ("output", rec.get("output"))


def _recover(win, recs) -> dict[str, Any]:
    ok = sorted(((e, _target(r)) for r in recs if r.get("status") in SUCCEEDED and (e := _end(r)) is not None),
                key=lambda x: x[0])
    times, unrecovered = [], 0
    for f in win:
        if f.get("status") not in FAILED or (end := _end(f)) is None:
            continue
        key = _target(f)
        nxt = next((e for e, k in ok if k == key and e >= end), None)
        if nxt is None:
            unrecovered += 1
        else:
            times.append(nxt - end)
    return {"mean": sum(times) / len(times) if times else None, "max": max(times, default=None),
            "recovered": len(times), "unrecovered": unrecovered}


# -- objectives, error budgets, burn rates ---------------------------------------------------------

def _deadline_events(recs, obj: Objectives, now: float, span: float) -> tuple[list[tuple[float, bool]], dict]:
    """Per date (logical date, or start day of a run without one): good at its first successful end if
    that is by its deadline; bad at its deadline once that passed without one. Dates a daily schedule
    expected with no run at all are bad too. Also returns the deadline of each date."""
    zone = _zone(obj.timezone)
    days: dict[tuple[dt.date, bool], list] = {}
    for r in recs:
        if r.get("status") == "running":
            continue
        key = _run_day(r, zone)
        if key is not None:
            days.setdefault(key, []).append(r)
    if obj.schedule and schedule_seconds(obj.schedule) == DAY and recs:
        first = min(float(r["started"]) for r in recs if r.get("started") is not None)
        kind, slots = _missed(recs, obj, max(first, now - span), now)
        for d in slots:
            days.setdefault((d, kind == "dates"), [])
    events, due = [], {}
    for (day, logical), rs in days.items():
        limit = deadline_at(day, obj, logical=logical)
        due[day] = limit
        ends = [e for r in rs if r.get("status") in SUCCEEDED and (e := _end(r)) is not None]
        first_ok = min(ends, default=None)
        if first_ok is not None and first_ok <= limit:
            events.append((first_ok, True))
        elif limit <= now:
            events.append((limit, False))
    return events, due


def objective_events(recs: list[Mapping[str, Any]], obj: Objectives, *, now: float) -> list[dict[str, Any]]:
    """The judged events of each declared objective of one job: ``[{objective, target, threshold,
    events: [(time, good)]}]``."""
    out = []
    done = [(e, r) for r in recs if r.get("status") != "running" and (e := _end(r)) is not None]
    if obj.success_rate is not None:
        out.append({"objective": "success", "target": obj.success_rate, "threshold": None,
                    "events": [(e, r.get("status") in SUCCEEDED) for e, r in done]})
    for name, limit, target in (("latency p95", obj.p95_seconds, 0.95), ("latency p99", obj.p99_seconds, 0.99)):
        if limit is not None:
            out.append({"objective": name, "target": target, "threshold": limit,
                        "events": [(e, _num(r.get("seconds")) <= limit) for e, r in done
                                   if r.get("status") == "committed"]})
    if obj.deadline is not None:
        events, _ = _deadline_events(recs, obj, now, max(obj.window_seconds, BURN_WINDOWS[-1][1]))
        out.append({"objective": "deadline", "target": obj.success_rate or 0.99,
                    "threshold": f"{obj.deadline} {obj.timezone}", "events": events})
    return out


def budget(events: list[tuple[float, bool]], target: float, *, now: float, window: float) -> dict[str, Any]:
    """Good and total events in ``(now - window, now]``, the error budget and burn rates (see
    :func:`compliance`)."""
    def count(span: float) -> tuple[int, int]:
        sel = [g for t, g in events if now - span < t <= now]
        return sum(1 for g in sel if g), len(sel)

    good, total = count(window)
    bad = total - good
    allowed = (1 - target) * total
    row: dict[str, Any] = {"good": good, "total": total, "bad": bad, "measured": _ratio(good, total),
                           "allowed_bad": allowed, "budget_remaining": 1 - bad / allowed if allowed > 0 else 1.0}
    for name, span in BURN_WINDOWS:
        g, n = count(span)
        row[f"burn_{name}"] = ((n - g) / n) / (1 - target) if n else None
    row["breached"] = row["budget_remaining"] < 0
    return row


def compliance(records: Iterable[Mapping[str, Any]], objectives: Mapping[str, Any], *,
               now: float | None = None) -> list[dict[str, Any]]:
    """Per job and declared objective: target, measured, good and total events, error budget, budget
    remaining and burn rates. Rows are ordered by job, then success, latency p95, latency p99, deadline.

    The definitions follow the Google SRE workbook (chapters "Implementing SLOs" and "Alerting on
    SLOs"), in short: an SLI is the share of *good* events among the *valid* ones; the objective is
    the share the SLI must reach over the objective's ``window``; the *error budget* is what the
    objective leaves to fail — (1 − target) · total events, here ``allowed_bad`` — and
    ``budget_remaining`` = 1 − bad ÷ allowed_bad is the part of it still unspent (negative once more
    failed than allowed: then ``breached`` is true, the same as measured < target). A *burn rate* is
    how fast the budget goes: the bad share of the events in a recent window divided by (1 − target),
    so 1 spends exactly the budget over the objective's window, and 14.4 over one hour spends 2 % of a
    30-day budget in that hour. Burn rates are given over the last 1 h, 6 h and 30 d (None when the
    window holds no event).

    Events, placed at the time they became known (``now`` default: the clock):

    * **success** (target ``success_rate``): every finished run, at its end; good when committed or
      skipped.
    * **latency p95** (target 0.95) / **latency p99** (target 0.99): every committed run, at its end;
      good when its ``seconds`` ≤ ``p95_seconds`` (``p99_seconds``). Failed runs are the success
      objective's business, not counted twice here.
    * **deadline** (target ``success_rate``, 0.99 when none is declared): each date a run was for (its
      logical date; the day it started, in the objectives' time zone, when it has none) and each date a
      daily ``schedule`` expected and got no run for; good, at its first successful end, when a
      committed or skipped run ended by the deadline (:func:`deadline_at`); bad, at the deadline, once
      that passed without one; not yet an event before.
    """
    now = time.time() if now is None else float(now)
    by_job = _group(records)
    rows = []
    for job in sorted(objectives):
        obj = Objectives.from_obj(objectives[job], what=f"job {job!r}")
        if obj is None:
            continue
        for spec in objective_events(by_job.get(job, []), obj, now=now):
            rows.append({"job": job, "objective": spec["objective"], "target": spec["target"],
                         "threshold": spec["threshold"], "window": obj.window, "criticality": obj.criticality,
                         **budget(spec["events"], spec["target"], now=now, window=obj.window_seconds)})
    return rows


# -- after one run: what is broken now -------------------------------------------------------------

def breaches(record: Mapping[str, Any], store: Any, objectives: Any = None, *, now: float | None = None) -> list[str]:
    """The objectives of ``record``'s job that are breached now, one line each (the ``on_slo_breach``
    alert's text). ``objectives``: the job's :class:`Objectives` (or a dict of its fields, or
    ``{job: objectives}``); None takes the record's own ``slo``. ``store``: the history
    (:class:`engine.history.Store`) to read the job's other runs from.

    An objective is breached when its error budget is spent (``budget_remaining`` < 0) and it burns
    faster than it may over the last hour (burn rate 1 h > 1: the recent runs are still failing it);
    and, whatever the budget, when this run missed the deadline of its date (it ended after it with
    nothing committed by then) or, committed, took longer than ``p95_seconds`` or ``p99_seconds``.
    """
    job = record.get("job")
    if isinstance(objectives, Mapping) and not all(str(k).replace("-", "_") in _FIELDS for k in objectives):
        objectives = objectives.get(job)                             # {job: objectives}
    obj = Objectives.from_obj(objectives if objectives is not None else record.get("slo"), what=f"job {job!r}")
    if obj is None or not job:
        return []
    now = time.time() if now is None else float(now)
    span = max(obj.window_seconds, BURN_WINDOWS[-1][1])
    recs = [r for r in store.records(job=job, since=now - span - 2 * DAY)
            if r.get("record_id") != record.get("record_id")]
    recs += store.records(job=job, newest_first=False, limit=1)     # the job's first run bounds missed runs
    recs.append(dict(record))
    recs = _group(reversed(recs)).get(job, [])                      # this record first: it wins duplicates
    out = []
    for row in compliance(recs, {job: obj}, now=now):
        burn = row["burn_1h"]
        if row["breached"] and burn is not None and burn > 1:
            out.append(f"{job}: {_objective_text(row)} is {_pct(row['measured'])} over the last {row['window']}, "
                       f"below its target {_pct(row['target'])}; the error budget is spent "
                       f"({_pct(row['budget_remaining'], 0)} left) and burning {burn:.1f}x over the last hour")
    out += _this_run(record, obj, recs, now)
    return out


def _this_run(record, obj: Objectives, recs, now: float) -> list[str]:
    out = []
    job, status, end = record.get("job"), record.get("status"), _end(record)
    if obj.deadline is not None and status != "running":
        zone = _zone(obj.timezone)
        key = _run_day(record, zone)
        if key is not None:
            limit = deadline_at(key[0], obj, logical=key[1])
            same = [r for r in recs if _run_day(r, zone) == key and r.get("status") in SUCCEEDED]
            on_time = any((e := _end(r)) is not None and e <= limit for r in same)
            # a date whose deadline is older than the objectives' window (a backfill) is history, not news
            if not on_time and now - obj.window_seconds < limit <= (end if end is not None else now):
                when = dt.datetime.fromtimestamp(limit, zone).strftime("%Y-%m-%d %H:%M")
                what = f"{'logical date' if key[1] else 'run of'} {key[0].isoformat()}"
                how = (f"{status} at {dt.datetime.fromtimestamp(end, zone).strftime('%Y-%m-%d %H:%M')}"
                       if end is not None else status)
                out.append(f"{job}: the {what} missed its deadline {when} {obj.timezone} ({how}; nothing "
                           "committed by then)")
    if status == "committed" and record.get("seconds") is not None:
        for name, limit in (("P95", obj.p95_seconds), ("P99", obj.p99_seconds)):
            if limit is not None and float(record["seconds"]) > limit:
                out.append(f"{job}: the run took {_dur(float(record['seconds']))}, over the {name} objective of "
                           f"{_dur(limit)}")
    return out


# -- text ---------------------------------------------------------------------------------------------

def _pct(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.{digits}f}%"


def _dur(seconds: float | None) -> str:
    """``"42.0s"``, ``"3m 05s"``, ``"2h 01m"``, ``"3d 04h"``."""
    if seconds is None:
        return "-"
    sign, s = ("-" if seconds < 0 else ""), abs(float(seconds))
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m {int(s % 60):02d}s"
    if s < DAY:
        return f"{sign}{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // DAY)}d {int(s % DAY // 3600):02d}h"


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{prefix} {unit}/s"
    return f"{value:.1f} {unit}/s"


def _num_text(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _objective_text(row: Mapping[str, Any]) -> str:
    name = row["objective"]
    if name.startswith("latency") and row.get("threshold") is not None:
        return f"{name} (≤ {_dur(row['threshold'])})"
    if name == "deadline":
        return f"deadline {row['threshold']}"
    return "success rate" if name == "success" else name


def format_slis(slis: Mapping[str, Mapping[str, Any]]) -> str:
    """The indicators of :func:`compute_slis` as text, a block of lines per job."""
    lines = []
    for job, s in slis.items():
        st = ", ".join(f"{n} {k}" for k, n in sorted(s["statuses"].items()))
        lines.append(f"{job}  ({s['runs']} run{'s' if s['runs'] != 1 else ''}{': ' + st if st else ''})")
        c = s["completion_seconds"]
        d, r, cost, tp = s["time_to_detect"], s["time_to_recover"], s["cost_per_run"], s["throughput"]
        rows = [
            ("M1", "success rate", f"{_pct(s['success_rate'], 1)} ({sum(s['statuses'].get(k, 0) for k in SUCCEEDED)} "
                                   f"of {s['finished']} finished)"),
            ("M2", "completion", f"p50 {_dur(c['p50'])}  p95 {_dur(c['p95'])}  p99 {_dur(c['p99'])}  "
                                 f"({c['runs']} committed, nearest rank)"),
            ("M3", "task failure rate", f"{_pct(s['task_failure_rate'])} ({s['task_failures']} of {s['attempts']} "
                                        "attempts)"),
            ("M4", "time to detect", f"mean {_dur(d['mean'])}  max {_dur(d['max'])}  ({d['alerts']} alerts delivered"
                                     f"{', %d undelivered' % d['undelivered'] if d['undelivered'] else ''})"),
            ("M5", "time to recover", f"mean {_dur(r['mean'])}  max {_dur(r['max'])}  ({r['recovered']} recovered, "
                                      f"{r['unrecovered']} unrecovered)"),
            ("M6", "utilization", f"{_pct(s['utilization'], 1)} of the worker threads' time"),
            ("M7", "cost per run", f"{_num_text(cost['cpu_seconds'], 1)} CPU-s  {_num_text(cost['gb_seconds'], 1)} GB-s"
             + (f"  = {cost['cost']:.4g}" if cost["cost"] and any(cost["rates"].values()) else "")),
            ("M8", "checkpoint lag", (f"{_dur(s['checkpoint_lag_seconds'])} ({s['running']} running)"
                                      if s["running"] else "- (none running)")
             + f"; last output {_dur(s['last_output_age_seconds'])} old"),
            ("M9", "throughput", f"in {_rate(tp['rows_in_per_second'], 'rows')} {_rate(tp['bytes_in_per_second'], 'B')}"
                                 f"; out {_rate(tp['rows_out_per_second'], 'rows')} "
                                 f"{_rate(tp['bytes_out_per_second'], 'B')}"),
            ("M10", "retries per failure", f"{_num_text(s['retries_per_failure'])} ({s['retries']} retries, "
                                           f"{s['failed_tasks']} failed tasks)"),
        ]
        if s.get("missed_runs") is not None:
            shown = ", ".join(s["missed"][:8]) + (f", … {len(s['missed']) - 8} more" if len(s["missed"]) > 8 else "")
            rows.append(("", "missed runs", f"{s['missed_runs']} ({s['schedule']}){': ' + shown if shown else ''}"))
        lines += [f"  {m:<4}{name:<20}{text}" for m, name, text in rows]
    return "\n".join(lines)


def format_compliance(rows: list[Mapping[str, Any]]) -> str:
    """The rows of :func:`compliance` as a table."""
    head = ("job", "objective", "target", "measured", "good/total", "budget left", "burn 1h", "burn 6h", "burn 30d", "")
    table = [head]
    for r in rows:
        table.append((r["job"], _objective_text(r), _pct(r["target"]), _pct(r["measured"]), f"{r['good']}/{r['total']}",
                      _pct(r["budget_remaining"], 0), _num_text(r["burn_1h"]), _num_text(r["burn_6h"]),
                      _num_text(r["burn_30d"]), "BREACHED" if r["breached"] else ""))
    width = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    right = {2, 3, 4, 5, 6, 7, 8}
    return "\n".join("  ".join(str(c).rjust(width[i]) if i in right else str(c).ljust(width[i])
                               for i, c in enumerate(row)).rstrip() for row in table)


# -- mapreduce slo ---------------------------------------------------------------------------------

def _window_arg(text: str) -> str:
    try:
        parse_window(text)
    except JobDefinitionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``mapreduce slo`` on the subparsers ``sub`` (``common``: the shared parent parser)."""
    p = sub.add_parser(
        "slo", parents=[common], help="SLO compliance, error budgets, burn rates and the SLIs of each job",
        description="For each job: every declared objective (success rate, P95/P99 completion, deadline) with "
                    "its target, the measured value, the error budget left and the burn rate over the last 1h, 6h "
                    "and 30d; then the indicators M1-M10 over --since, with the runs a declared schedule missed. "
                    "Objectives come from --config, else from what each job declared (Job(..., slo={...})), as "
                    "recorded with its newest run. ENGINE_HISTORY sets the history's location.",
        epilog="Exit codes: 0 every objective is met (or none is declared); 1 an objective is breached: its error "
               "budget over its window is spent (measured below target), so a cron line such as "
               "`mapreduce slo || notify` alerts on it; 2 usage error.")
    p.add_argument("--job", help="only this job")
    p.add_argument("--since", default="30d", type=_window_arg, metavar="WINDOW",
                   help="the indicators' window, e.g. 30d, 6h, 90m, 2w (default 30d; objectives use their own)")
    p.add_argument("--config", metavar="FILE",
                   help="objectives per job, TOML ([jobs.NAME] tables) or JSON ({\"jobs\": {NAME: {...}}})")
    p.add_argument("--json", action="store_true", help="print objectives, breaches and indicators as JSON")
    return p


def _gather(store: Any, jobs: list[str], since: float) -> list[dict[str, Any]]:
    """The records of ``jobs`` that started since ``since``, plus each job's first record (it bounds the
    missed runs), newest committed one (the age of its output) and newest one (its declaration)."""
    recs = []
    for job in jobs:
        recs += store.records(job=job, since=since)
        recs += store.records(job=job, newest_first=False, limit=1)
        recs += store.records(job=job, status="committed", limit=1)
        recs += store.records(job=job, limit=1)
    return recs


def slis_from_store(store: Any, *, since: Any = "30d", job: str | None = None, now: float | None = None,
                    rates: Mapping[str, float] | None = None,
                    objectives: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`compute_slis` of every job in the history ``store`` (or of ``job``) over ``since`` (a window
    such as ``"30d"`` or epoch seconds), with the records and alerts it needs read from the store.

    >>> print(format_slis(slis_from_store(history.open_store(), since="30d")))     # doctest: +SKIP
    """
    now = time.time() if now is None else float(now)
    lo = _since(since, now)
    jobs = [job] if job else store.jobs()
    recs = _gather(store, jobs, lo if lo is not None else 0.0)
    alerts = store.alerts(job=job, since=None if lo is None else lo - DAY)
    return compute_slis(recs, since=lo, now=now, rates=rates, alerts=alerts, objectives=objectives)


def command(args: argparse.Namespace) -> int:
    """``mapreduce slo``: print compliance and indicators; 0 when every objective is met, 1 when one is
    breached (see :func:`add_parser`)."""
    from . import history
    now = time.time()
    since = now - parse_window(args.since)
    store = history.open_store(create=False)
    if store is None:
        where = history.url()
        if getattr(args, "json", False):
            print(json.dumps({"history": where, "objectives": [], "slis": {}}))
        else:
            print("no history: it is off (ENGINE_HISTORY=off), so there is nothing to measure" if where is None
                  else f"no run history at {where}, so there is nothing to measure")
        return 0
    declared = load_objectives(args.config) if args.config else None
    jobs = [args.job] if args.job else sorted(set(store.jobs()) | set(declared or ()))
    reach = min(since, now - BURN_WINDOWS[-1][1])
    recs = _gather(store, jobs, reach)
    objectives = declared if declared is not None else objectives_from_records(recs)
    if args.job:
        objectives = {k: v for k, v in objectives.items() if k == args.job}
    longest = max((o.window_seconds for o in objectives.values()), default=0.0)
    if now - longest < reach:
        recs = _gather(store, jobs, now - longest)
    rows = compliance(recs, objectives, now=now)
    slis = compute_slis(recs, since=since, now=now, alerts=store.alerts(job=args.job, since=since - DAY),
                        objectives=objectives)
    broken = [r for r in rows if r["breached"]]
    if args.json:
        doc = {"now": now, "since": since, "window": args.since, "history": store.location,
               "objectives": rows, "breached": [f"{r['job']}: {_objective_text(r)}" for r in broken], "slis": slis}
        print(json.dumps(doc, indent=1, allow_nan=False, default=str))
        return 1 if broken else 0
    if not recs and not objectives:
        print(f"no runs recorded{' of job ' + args.job if args.job else ''} in {store.location}")
        return 0
    print(format_compliance(rows) if rows else "no objectives declared (Job(..., slo={...}) or --config FILE)")
    print()
    print(f"indicators over the last {args.since}:")
    print(format_slis(slis))
    if broken:
        print(f"\n{len(broken)} objective(s) breached: "
              + "; ".join(f"{r['job']} {_objective_text(r)}" for r in broken), file=sys.stderr)
    return 1 if broken else 0


__all__ = ["Objectives", "load_objectives", "objectives_from_records", "parse_window", "schedule_seconds",
           "compute_slis", "compliance", "breaches", "budget", "objective_events", "deadline_at", "nearest_rank",
           "default_rates", "slis_from_store", "format_slis", "format_compliance", "add_parser", "command"]
