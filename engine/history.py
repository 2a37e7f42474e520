"""Run history: one record per run, whatever its end, in SQLite (default) or PostgreSQL.

Every call of :func:`engine.run` (and so every ``mapreduce run`` and every date of a backfill)
leaves one record: ``committed``, ``skipped`` (a no-op rerun), ``failed``, ``interrupted``
(Ctrl-C or SIGTERM), ``refused`` (the engine declined to run or to publish: the output exists,
another run holds it, a change gate tripped), or ``running`` while it runs (a record
still ``running`` whose driver is gone is shown as ``lost``).

Where: ``ENGINE_HISTORY`` (or ``engine.history.url``) is a file path (SQLite, default
``~/.local/share/mapreduce-engine/history.sqlite``), a ``postgresql://`` URL for pipelines on several
machines (:mod:`engine.history_pg`, needs ``pip install 'mapreduce-engine[postgres]'``), or ``off``.

A record is a plain dict (:data:`COLUMNS` are its keys; ``report`` is the run report as JSON,
:meth:`engine.report.RunReport.to_dict`). It holds no secrets and no data values: every string of
it goes through :func:`engine.redact.redact`, and the hot keys of skew decisions are short hashes
unless ``engine.report.key-values`` is on (:func:`engine.redact.public_decisions`).

>>> from engine import history
>>> store = history.open_store()                                      # doctest: +SKIP
>>> [r["status"] for r in store.records(job="wordcount", since=time.time() - 86400)]   # doctest: +SKIP
['committed', 'failed', 'committed']

The service-level indicators over these records are in :mod:`engine.slo`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import statistics
import threading
import time
from typing import Any, Iterator

from .redact import redact_obj

# name → SQL type. The first twelve are the columns of the first version of the table (kept, so
# older databases and tools that read them keep working); the rest are added to an older table.
COLUMNS: dict[str, str] = {
    "run_id": "TEXT", "job": "TEXT", "fingerprint": "TEXT", "status": "TEXT", "started": "REAL",
    "seconds": "REAL", "input_bytes": "INTEGER", "output": "TEXT", "output_rows": "INTEGER",
    "output_bytes": "INTEGER", "message": "TEXT", "report": "TEXT",
    # -- version 2
    "record_id": "TEXT",          # one per call of run(): the key of a record (run_id repeats on resume)
    "logical_date": "TEXT",       # the run's date= (YYYY-MM-DD) or NULL
    "finished": "REAL",           # epoch seconds the run ended (NULL while running)
    "updated": "REAL",            # last write of this record (heartbeats while running)
    "error_type": "TEXT",         # the exception class of a failed/refused/interrupted run
    "error_location": "TEXT",     # "path/to/user_file.py:42" of the user's code that raised, if any
    "host": "TEXT", "pid": "INTEGER", "user": "TEXT",
    "input_files": "INTEGER", "input_rows": "INTEGER", "output_files": "INTEGER",
    "tasks": "INTEGER",           # tasks the run's stages had
    "attempts": "INTEGER",        # task attempts started (retries and speculative copies included)
    "task_failures": "INTEGER",   # attempts that failed
    "failed_tasks": "INTEGER",    # distinct tasks (stage, partition) that failed at least once
    "retries": "INTEGER",         # attempts started again after a failure
    "speculative": "INTEGER",     # speculative attempts started
    "resumed": "INTEGER",         # tasks reused from an interrupted run's journal
    "rejected": "INTEGER",        # rows set aside as bad records (0 until bad-record isolation is on)
    "cpu_seconds": "REAL",        # CPU seconds of the task threads
    "worker_cpu_seconds": "REAL",  # CPU seconds of the worker processes during the run (all their threads)
    "thread_seconds": "REAL",     # worker threads x wall seconds of the run: the capacity it had
    "memory_gb_seconds": "REAL",  # worker memory limits (GB) x wall seconds of the run
    "workers": "INTEGER", "threads": "INTEGER",
    "checkpoint_at": "REAL",      # when the newest task result was journaled (resume point)
    "engine_version": "TEXT",
    "slo": "TEXT",                # JSON: the objectives the job declared (engine.slo.Objectives)
    "deadline_missed": "INTEGER",  # 1: the job declares a deadline and this run ended after it without
                                  # delivering by then (0: in time; NULL: no deadline declared)
    "counters": "TEXT",           # JSON {name: int}: the engine.counter() totals of the run (NULL: none)
}
STATUSES = ("running", "committed", "skipped", "failed", "interrupted", "refused")
SHOWN = STATUSES + ("lost",)          # "lost": running, with its driver gone (is_lost)
FINAL = ("committed", "skipped", "failed", "interrupted", "refused")
SUCCEEDED = ("committed", "skipped")

_ALERTS = {
    "key": "TEXT PRIMARY KEY",   # dedup key: kind + job + logical date (or output)
    "kind": "TEXT", "job": "TEXT", "logical_date": "TEXT", "record_id": "TEXT",
    "created": "REAL",           # when the event was first raised (the failure's end)
    "delivered": "REAL",         # when a hook delivered it (NULL: not yet / failed)
    "status": "TEXT",            # pending | delivered | failed | resolved
    "detail": "TEXT",            # JSON: the event, the hook's answer
}


def url() -> str | None:
    """Where the history lives: a SQLite path or a postgresql:// URL; None when it is off."""
    p = os.environ.get("ENGINE_HISTORY")
    if p is None:
        try:
            from . import config
            p = config.get("history.url")
        except Exception:  # noqa: BLE001 - config unavailable: the default
            p = None
    if p and str(p).lower() in ("off", "0", "none", "false"):
        return None
    if p:
        return str(p)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mapreduce-engine", "history.sqlite")


def path() -> str | None:
    """The history's location (kept name; see :func:`url`)."""
    return url()


class Store:
    """A history store: records of runs and the alert ledger. :class:`SQLiteStore` and
    ``engine.history_pg.PostgresStore`` implement it with the same tables."""

    location: str = ""

    def put(self, rec: dict[str, Any]) -> None:
        """Insert or replace the record with ``rec["record_id"]``."""
        raise NotImplementedError

    def records(self, *, job: str | None = None, since: float | None = None, until: float | None = None,
                status: str | tuple[str, ...] | None = None, logical_date: str | None = None,
                output: str | None = None, limit: int | None = None, newest_first: bool = True
                ) -> list[dict[str, Any]]:
        """Records by start time (``started`` in [since, until)), filtered as asked."""
        raise NotImplementedError

    def get(self, ref: str) -> dict[str, Any] | None:
        """The record whose record id or run id is ``ref`` or starts with it (the newest of several)."""
        raise NotImplementedError

    def jobs(self) -> list[str]:
        raise NotImplementedError

    # -- the alert ledger (engine.alerts) --------------------------------------------------
    def claim_alert(self, row: dict[str, Any]) -> bool:
        """Insert ``row`` into the alert ledger unless its ``key`` is there: True if this call did."""
        raise NotImplementedError

    def update_alert(self, key: str, **fields: Any) -> None:
        raise NotImplementedError

    def delete_alert(self, key: str) -> None:
        raise NotImplementedError

    def alerts(self, *, job: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _where(job, since, until, status, logical_date, output, ph: str = "?") -> tuple[str, list]:
    cond, args = [], []
    if job is not None:
        cond.append(f"job = {ph}")
        args.append(job)
    if since is not None:
        cond.append(f"started >= {ph}")
        args.append(float(since))
    if until is not None:
        cond.append(f"started < {ph}")
        args.append(float(until))
    if status is not None:
        st = (status,) if isinstance(status, str) else tuple(status)
        cond.append(f"status IN ({', '.join([ph] * len(st))})")
        args.extend(st)
    if logical_date is not None:
        cond.append(f"logical_date = {ph}")
        args.append(logical_date)
    if output is not None:
        cond.append(f"output = {ph}")
        args.append(output)
    return (" WHERE " + " AND ".join(cond)) if cond else "", args


_READY: set[tuple] = set()         # (path, device, inode) of SQLite files whose tables are set up
_CONNS: dict[tuple, sqlite3.Connection] = {}      # (path, device, inode, pid) -> the open connection
_CONN_LOCKS: dict[int, threading.Lock] = {}
_CONN_LOCK = threading.Lock()


def _set_up_again(method):
    """Run ``method``; if the file lost its tables or columns meanwhile (replaced by an older or an
    empty database), set them up again and run it once more."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc) and "no column named" not in str(exc) \
                    and "no such column" not in str(exc):
                raise
            self._setup()
            return method(self, *args, **kwargs)
    return wrapper


def _alert_where(job, since, ph: str = "?") -> tuple[str, list]:
    """The WHERE clause of :meth:`Store.alerts` (``ph``: the driver's placeholder)."""
    cond, args = [], []
    if job is not None:
        cond.append(f"job = {ph}")
        args.append(job)
    if since is not None:
        cond.append(f"created >= {ph}")
        args.append(float(since))
    return (" WHERE " + " AND ".join(cond)) if cond else "", args


class SQLiteStore(Store):
    """The history in one SQLite file, safe under concurrent runs (WAL journal, busy timeout)."""

    def __init__(self, path: str) -> None:
        self.location = path
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        try:
            st = os.stat(path)
            ident = (os.path.abspath(path), st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if ident is None or ident not in _READY:        # tables made (or upgraded) once per file and process
            self._setup()
            with contextlib.suppress(OSError):
                st = os.stat(path)
                _READY.add((os.path.abspath(path), st.st_dev, st.st_ino))

    @contextlib.contextmanager
    def _con(self) -> Iterator[sqlite3.Connection]:
        """This process's connection to the file (kept open: closing the last connection checkpoints
        the WAL, an fsync per record), one statement block at a time."""
        try:
            st = os.stat(self.location)
            ident: tuple = (os.path.abspath(self.location), st.st_dev, st.st_ino, os.getpid())
        except OSError:
            ident = (os.path.abspath(self.location), None, None, os.getpid())
        with _CONN_LOCK:
            con = _CONNS.get(ident)
            if con is None:
                con = sqlite3.connect(self.location, timeout=30, check_same_thread=False)
                # WAL with synchronous=NORMAL: a commit survives the process being killed (not a power
                # cut before the next checkpoint), without an fsync per record
                con.execute("PRAGMA synchronous=NORMAL")
                if ident[1] is not None:
                    _CONNS[ident] = con
            lock = _CONN_LOCKS.setdefault(id(con), threading.Lock())
        with lock:
            try:
                yield con
                con.commit()
            except BaseException:
                con.rollback()
                raise
            finally:
                if ident[1] is None:
                    con.close()

    def _setup(self) -> None:
        with self._con() as con:
            with contextlib.suppress(sqlite3.OperationalError):
                con.execute("PRAGMA journal_mode=WAL")
            con.execute("CREATE TABLE IF NOT EXISTS runs (" + ", ".join(f"{k} {t}" for k, t in COLUMNS.items()) + ")")
            have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            for k, t in COLUMNS.items():
                if k not in have:
                    with contextlib.suppress(sqlite3.OperationalError):    # a concurrent run added it
                        con.execute(f"ALTER TABLE runs ADD COLUMN {k} {t}")
            # records of the first version get a record id and their end time
            con.execute("UPDATE runs SET record_id = lower(hex(randomblob(8))), finished = started + seconds "
                        "WHERE record_id IS NULL")
            con.execute("CREATE UNIQUE INDEX IF NOT EXISTS runs_record ON runs (record_id)")
            con.execute("CREATE INDEX IF NOT EXISTS runs_job_started ON runs (job, started)")
            con.execute("CREATE TABLE IF NOT EXISTS alerts (" + ", ".join(f"{k} {t}" for k, t in _ALERTS.items()) + ")")

    @_set_up_again
    def put(self, rec: dict[str, Any]) -> None:
        cols = [k for k in COLUMNS if k in rec]
        with self._con() as con:
            con.execute(f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [rec[k] for k in cols])

    @_set_up_again
    def records(self, *, job=None, since=None, until=None, status=None, logical_date=None, output=None, limit=None,
                newest_first=True) -> list[dict[str, Any]]:
        where, args = _where(job, since, until, status, logical_date, output)
        q = f"SELECT {', '.join(COLUMNS)} FROM runs{where} ORDER BY started {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            q += " LIMIT ?"
            args.append(int(limit))
        with self._con() as con:
            return [dict(zip(COLUMNS, row)) for row in con.execute(q, args)]

    @_set_up_again
    def get(self, ref: str) -> dict[str, Any] | None:
        with self._con() as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE record_id LIKE ? OR run_id LIKE ? "
                              "ORDER BY started DESC LIMIT 1", (ref + "%", ref + "%")).fetchone()
        return dict(zip(COLUMNS, row)) if row else None

    @_set_up_again
    def jobs(self) -> list[str]:
        with self._con() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT job FROM runs ORDER BY job")]

    @_set_up_again
    def claim_alert(self, row: dict[str, Any]) -> bool:
        cols = [k for k in _ALERTS if k in row]
        with self._con() as con:
            cur = con.execute(f"INSERT OR IGNORE INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [row[k] for k in cols])
            return cur.rowcount == 1

    @_set_up_again
    def update_alert(self, key: str, **fields: Any) -> None:
        if not fields:
            return
        with self._con() as con:
            con.execute(f"UPDATE alerts SET {', '.join(f'{k} = ?' for k in fields)} WHERE key = ?",
                        [*fields.values(), key])

    @_set_up_again
    def delete_alert(self, key: str) -> None:
        with self._con() as con:
            con.execute("DELETE FROM alerts WHERE key = ?", (key,))

    @_set_up_again
    def alerts(self, *, job=None, since=None) -> list[dict[str, Any]]:
        where, args = _alert_where(job, since)
        q = f"SELECT {', '.join(_ALERTS)} FROM alerts{where}"
        with self._con() as con:
            return [dict(zip(_ALERTS, row)) for row in con.execute(q + " ORDER BY created", args)]


_STORES: dict[str, Store] = {}


def open_store(location: str | None = None, *, create: bool = True) -> Store | None:
    """The history store at ``location`` (default :func:`url`); None when the history is off, or,
    with ``create=False`` (the commands that only read it), when its SQLite file does not exist."""
    loc = location if location is not None else url()
    if loc is None:
        return None
    if not loc.startswith(("postgresql://", "postgres://")):
        if not create and not os.path.exists(loc):
            return None
        return SQLiteStore(loc)          # a few ms to open; the file may have been moved meanwhile
    store = _STORES.get(loc)
    if store is None:
        from .history_pg import PostgresStore
        store = _STORES[loc] = PostgresStore(loc)
    return store


def new_record_id() -> str:
    return os.urandom(8).hex()


def base_record(record_id: str, job: str, output: str, *, logical_date: str | None = None,
                started: float | None = None) -> dict[str, Any]:
    """The record of a run that has just started (status ``running``)."""
    from ._version import ENGINE_VERSION
    now = time.time()
    user = None
    with contextlib.suppress(Exception):
        import getpass
        user = getpass.getuser()
    return {"record_id": record_id, "run_id": None, "job": job, "status": "running", "output": output,
            "logical_date": logical_date, "started": started if started is not None else now, "updated": now,
            "host": socket.gethostname(), "pid": os.getpid(), "user": user, "engine_version": ENGINE_VERSION}


_WARNED: set[str] = set()
_FAILING: dict[str, float] = {}      # location -> when a write there last failed
RETRY_AFTER = 30.0                   # seconds a failing store is left alone (a running record or a heartbeat)


def put(rec: dict[str, Any], *, redacted: bool = False) -> None:
    """Write a record (best effort: the history never fails a run; a failure is a warning on the
    ``engine`` logger, once per distinct problem). Strings are redacted. After a failed write the
    store is left alone for :data:`RETRY_AFTER` seconds, except for a run's final record, so an
    unreachable store costs a run one connection timeout, not one per write."""
    loc = url()
    if loc is None:
        return
    final = rec.get("status") != "running"
    if not final and time.time() - _FAILING.get(loc, 0.0) < RETRY_AFTER:
        return
    try:
        store = open_store(loc)
        if store is not None:
            store.put(dict(rec) if redacted else redact_obj(dict(rec)))
        _FAILING.pop(loc, None)
    except Exception as exc:  # noqa: BLE001
        _FAILING[loc] = time.time()
        from .redact import redact
        text = redact(f"{type(exc).__name__}: {exc}")
        if text not in _WARNED:
            _WARNED.add(text)
            import logging
            logging.getLogger("engine").warning("could not write the run's record to the history (%s); the run "
                                                "goes on. ENGINE_HISTORY=off turns the history off", text)


def is_lost(rec: dict[str, Any]) -> bool:
    """A record still ``running`` whose driver process on this host is gone (SIGKILL, power loss)."""
    if rec.get("status") != "running" or rec.get("host") != socket.gethostname() or not rec.get("pid"):
        return False
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def shown_status(rec: dict[str, Any]) -> str:
    return "lost" if is_lost(rec) else str(rec.get("status"))


def effective(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as the SLIs count it: a lost run (its driver died while it ran) as ``interrupted``,
    ended at its last heartbeat."""
    if not is_lost(rec):
        return rec
    out = dict(rec)
    out["status"], out["finished"] = "interrupted", rec.get("updated") or rec.get("started")
    out["seconds"] = max(0.0, float(out["finished"] or 0) - float(rec.get("started") or 0))
    out["error_type"] = out.get("error_type") or "lost"
    out["message"] = out.get("message") or "the run's driver ended without recording an end (SIGKILL, a crash)"
    return out


def counters_of(rec: dict[str, Any]) -> dict[str, int]:
    """The record's counters (``engine.counter()`` totals) as a dict; ``{}`` for none or unreadable."""
    raw = rec.get("counters")
    if isinstance(raw, dict):
        return dict(raw)
    try:
        value = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int)} if isinstance(value, dict) else {}


def report_of(rec: dict[str, Any]):
    """The record's run report as a :class:`engine.report.RunReport`."""
    from .report import RunReport
    return RunReport.from_dict(json.loads(rec.get("report") or "{}") or {"job": rec.get("job") or "?",
                                                                         "run_id": rec.get("run_id") or "",
                                                                         "fingerprint": ""})


# -- kept API (mapreduce history before version 2) ------------------------------------------

def record(rep, *, key_values: bool = False) -> None:
    """Write a finished run's report as a record (see :mod:`engine.telemetry` for the full record)."""
    from .telemetry import record_from_report
    put(record_from_report(rep, new_record_id(), key_values=key_values))


def runs(limit: int = 20, job: str | None = None) -> list[dict[str, Any]]:
    store = open_store()
    if store is None:
        return []
    return store.records(job=job, limit=limit)


def slis(job: str | None = None) -> list[dict[str, Any]]:
    """Per job: runs, failed runs, success rate, median and p95 seconds of committed runs (all time;
    :mod:`engine.slo` computes the full set over a window)."""
    store = open_store()
    if store is None:
        return []
    by_job: dict[str, list[tuple[str, float]]] = {}
    for r in store.records(job=job, status=FINAL):
        by_job.setdefault(r["job"], []).append((r["status"], r["seconds"] or 0.0))
    out = []
    for j, items in sorted(by_job.items()):
        ok = sorted(s for st, s in items if st == "committed")
        failed = sum(1 for st, _ in items if st not in SUCCEEDED)
        p95 = ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else None
        out.append({"job": j, "runs": len(items), "failed": failed,
                    "success_rate": 1 - failed / len(items) if items else None,
                    "median_seconds": statistics.median(ok) if ok else None, "p95_seconds": p95})
    return out


__all__ = ["COLUMNS", "STATUSES", "SHOWN", "effective", "FINAL", "SUCCEEDED", "Store", "SQLiteStore", "open_store", "url", "path", "put",
           "record", "runs", "slis", "base_record", "new_record_id", "is_lost", "shown_status", "report_of", "counters_of"]
