"""The operations commands of ``mapreduce``: ``show``, ``history`` (and the run flags' JSON form).

    mapreduce show RUN_ID [--json | --html FILE]     one run's record and report, whatever its end
    mapreduce history [--job NAME] [--since 30d] [--status failed] [--limit N] [--json]

``RUN_ID`` is a run id or a record id, or a prefix of one (the newest match); ``last`` is the newest
record. The history's location is ``ENGINE_HISTORY`` (a SQLite path or a postgresql:// URL).
``mapreduce slo`` and ``mapreduce dashboard`` live in :mod:`engine.slo` and :mod:`engine.dashboard`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from . import history


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _window(text: str | None) -> float | None:
    """Seconds from ``30d``, ``6h``, ``90m``, ``2w``, ``45s`` (:func:`engine.slo.parse_window`), for argparse."""
    if text is None:
        return None
    import argparse

    from .errors import JobDefinitionError
    from .slo import parse_window
    try:
        return parse_window(text)
    except JobDefinitionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _store_or_message() -> history.Store | None:
    store = history.open_store(create=False)
    if store is None:
        where = history.url()
        print("the run history is off (ENGINE_HISTORY=off)" if where is None else
              f"no run history at {where} (ENGINE_HISTORY sets where it is)", file=sys.stderr)
    return store


def record_json(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as JSON for programs: the report parsed, the derived status (``lost``) applied."""
    out = dict(rec)
    out["status"] = history.shown_status(rec)
    out["counters"] = history.counters_of(rec)
    for key in ("report", "slo"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out


def show_text(rec: dict[str, Any]) -> str:
    """``mapreduce show``: the record's facts, then the report's summary and the error with the user's
    file, line and source."""
    rep = history.report_of(rec)
    status = history.shown_status(rec)
    lines = [f"run {rec.get('run_id') or '-'} (record {rec.get('record_id')}) of job {rec.get('job')!r}: {status}",
             f"  started {_when(rec.get('started'))}, finished {_when(rec.get('finished'))}, "
             f"{rec.get('seconds') or 0:.2f}s, on {rec.get('host')} (pid {rec.get('pid')}, user {rec.get('user')})"]
    if rec.get("logical_date"):
        lines.append(f"  logical date {rec['logical_date']}")
    lines.append(f"  output {rec.get('output')}")
    if rec.get("message"):
        lines.append(f"  {rec['message']}")
    err = rep.error or {}
    if err.get("location"):
        lines.append(f"  raised at {err['location']}" + (f": {err['source']}" if err.get("source") else ""))
    lines.append(f"  input {rec.get('input_files') or 0} file(s), {rec.get('input_rows') or 0:,} rows, "
                 f"{rec.get('input_bytes') or 0:,} bytes; output {rec.get('output_files') or 0} file(s), "
                 f"{rec.get('output_rows') or 0:,} rows, {rec.get('output_bytes') or 0:,} bytes")
    lines.append(f"  tasks {rec.get('tasks') or 0}, attempts {rec.get('attempts') or 0}, failed attempts "
                 f"{rec.get('task_failures') or 0}, retries {rec.get('retries') or 0}, speculative "
                 f"{rec.get('speculative') or 0}, resumed {rec.get('resumed') or 0}, rejected rows {rec.get('rejected') or 0}")
    cpu = rec.get("worker_cpu_seconds") if rec.get("worker_cpu_seconds") is not None else rec.get("cpu_seconds")
    capacity = rec.get("thread_seconds")
    usage = f"  CPU {cpu or 0:.2f}s"
    if capacity:
        usage += f" of {capacity:.2f} thread-seconds ({(cpu or 0) / capacity:.0%} utilization)"
    if rec.get("memory_gb_seconds"):
        usage += f", {rec['memory_gb_seconds']:.1f} GB-seconds of worker memory"
    lines.append(usage)
    if rep.versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()))
    if rep.stages or rep.tasks:
        lines.append("")
        lines.extend(ln for ln in rep.summary().splitlines()[1:]
                     if ln.strip() != (rec.get("message") or "").strip() and not ln.startswith("  error:"))
    if err.get("user_traceback"):
        lines.append("")
        lines.append("  the user's code that raised (innermost last):")
        lines.extend("    " + ln for ln in err["user_traceback"].rstrip().splitlines())
    return "\n".join(lines)


def add_parsers(sub: Any, common: Any, positive_int: Any) -> None:
    s = sub.add_parser("show", parents=[common], help="one run's record and report (any end: failed ones too)",
                       description="Print the record of a run from the history: status, times, error with the "
                                   "user's file and line, tasks, usage, and the run report. RUN is a run id, a "
                                   "record id, a prefix of one, or `last`.")
    s.add_argument("run", help="run id or record id (or a prefix), or `last`")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the record (with its report) as JSON")
    fmt.add_argument("--html", metavar="FILE", help="write the run report as an HTML page")
    h = sub.add_parser("history", parents=[common], help="past runs and SLIs (ENGINE_HISTORY sets the database path)",
                       description="Recent runs, newest first, and per-job service-level indicators over the window.",
                       epilog="--json prints one JSON document on stdout: history (where the records are), runs "
                              "(newest first; each a run record without its report: record_id, run_id, job, status, "
                              "started, finished, seconds, output, output_rows (rows that run wrote), input_rows, "
                              "message, error_type, error_location, ...; `mapreduce show RUN --json` adds the "
                              "report) and slis (per job: runs, success rate, durations, ...).")
    h.add_argument("--job")
    h.add_argument("--limit", type=positive_int, default=20)
    h.add_argument("--since", type=_window, help="only runs started within this window, e.g. 30d, 6h")
    h.add_argument("--status", choices=history.SHOWN, help="only runs with this status")
    h.add_argument("--json", action="store_true", help="print the runs and SLIs as JSON")


def cmd_show(args) -> int:
    store = _store_or_message()
    if store is None:
        return 1
    rec = (store.records(limit=1) or [None])[0] if args.run == "last" else store.get(args.run)
    if rec is None:
        print(f"error: no run {args.run!r} in the history at {store.location}; `mapreduce history` lists them",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record_json(rec), indent=2, default=str))
    elif args.html:
        history.report_of(rec).to_html(args.html)
        print(args.html)
    else:
        print(show_text(rec))
    return 0


def cmd_history(args) -> int:
    store = history.open_store(create=False)
    if store is None:
        where = history.url()
        if args.json:
            print(json.dumps({"history": where, "runs": [], "slis": {}}))
        else:
            print("no runs recorded (history is off: ENGINE_HISTORY=off)" if where is None
                  else f"no runs recorded in {where}")
        return 0
    since = time.time() - args.since if args.since else None
    if args.status in ("lost", "running"):
        rows = [r for r in store.records(job=args.job, since=since, status="running")
                if history.shown_status(r) == args.status][:args.limit]
    else:
        rows = store.records(job=args.job, since=since, status=args.status, limit=args.limit)
    slis: dict[str, Any] = {}
    slo_mod = None
    try:
        from . import slo as slo_mod                  # type: ignore[no-redef]
    except ImportError:
        slo_mod = None
    if slo_mod is not None:
        slis = slo_mod.slis_from_store(store, since=since if since is not None else time.time() - 30 * 86400,
                                       job=args.job)
    if args.json:
        print(json.dumps({"history": store.location, "runs": [_row_json(r) for r in rows], "slis": slis},
                         indent=2, default=str))
        return 0
    if not rows:
        print(f"no runs recorded in {store.location}" + (" for these filters" if args.job or args.since or args.status
                                                          else ""))
        return 0
    print(f"{'started':<19}  {'job':<20} {'status':<11} {'seconds':>9}  {'rows written':>12}  {'run':<12}  output")
    for r in rows:
        print(f"{_when(r['started'])}  {r['job']:<20} {history.shown_status(r):<11} {r['seconds'] or 0:8.2f}s  "
              f"{r['output_rows'] or 0:>12,}  {(r['run_id'] or '-')[:12]:<12}  {r['output']}")
        if r.get("status") not in history.SUCCEEDED and r.get("status") != "running" and r.get("message"):
            where = f" at {r['error_location']}" if r.get("error_location") else ""
            print(f"{'':<21}  {r['message'][:160]}{where}")
        if history.counters_of(r):
            from .counters import summary_line
            print(f"{'':<21}  {summary_line(history.counters_of(r), limit=8)}")
    print()
    if slis and hasattr(slo_mod, "format_slis"):
        print(slo_mod.format_slis(slis))
    else:
        for s in history.slis(args.job):
            med = f"{s['median_seconds']:.2f}s" if s["median_seconds"] is not None else "-"
            p95 = f"{s['p95_seconds']:.2f}s" if s["p95_seconds"] is not None else "-"
            rate = f"{s['success_rate']:.0%}" if s["success_rate"] is not None else "-"
            print(f"{s['job']:<20} runs {s['runs']:>4}  success {rate}  median {med}  p95 {p95}")
    return 0


def _row_json(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in ("report", "slo")}
    out["status"] = history.shown_status(r)
    out["counters"] = history.counters_of(r)
    return out


COMMANDS = {"show": cmd_show, "history": cmd_history}
