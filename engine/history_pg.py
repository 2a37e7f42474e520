"""The run history in PostgreSQL, for pipelines whose runs start on several machines.

    ENGINE_HISTORY=postgresql://etl:PASSWORD@db.internal:5432/pipelines mapreduce run ...

needs psycopg 3 (``pip install 'mapreduce-engine[postgres]'``). The store holds the same two tables as
the SQLite one, with the same meaning (:mod:`engine.history`): ``runs`` (one row per record, the columns
of :data:`engine.history.COLUMNS`, upserted by ``record_id``) and ``alerts`` (the alert ledger, one row
per dedup key). SQL types are widened where PostgreSQL's are narrower than SQLite's: ``REAL`` is
``double precision`` (epoch seconds need more than a 4-byte float) and ``INTEGER`` is ``bigint`` (byte
counts pass 2**31).

Setup. Opening a store makes what is missing: the tables, their indexes, the columns a table of an
older version lacks (its rows get a record id). A database already set up costs one catalog query;
otherwise the setup runs in one transaction under an advisory lock, so two runs that start at once on
an empty database do not collide (``CREATE TABLE IF NOT EXISTS`` alone is not safe against a concurrent
creation). The tables live in the first schema of the connection's ``search_path``
(``?options=-csearch_path%3Dbatch`` in the URL picks another).

Connections. One connection per store and process, opened at first use and kept; when the server
dropped it (a restart, an idle timeout), the operation is tried once more on a new one. A child
process after ``fork`` opens its own. Connecting gives up after 5 s (the URL's ``connect_timeout``
wins), a statement after 30 s (its ``options=-cstatement_timeout=...`` wins).

Credentials. The URL's password is redacted from everything this process writes from then on
(:func:`engine.redact.remember`); :attr:`PostgresStore.location` is the URL with its credentials masked,
and messages name the host, port and database only. A store that cannot be reached, set up or written
raises :class:`engine.errors.HistoryError` saying what to check; the runner never fails a run for it
(it logs a warning).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, TypeVar

from .errors import HistoryError
from .history import _ALERTS, COLUMNS, Store, _alert_where, _where
from .redact import redact, remember

T = TypeVar("T")

_TYPES = {"TEXT": "TEXT", "REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
_LOCK_KEY = int.from_bytes(b"mr-hist", "big")      # pg_advisory_xact_lock key of the setup
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 30_000
_WHAT_TO_DO = ("check that the server runs and accepts connections from this machine, and the URL in "
               "ENGINE_HISTORY (or engine.history.url); ENGINE_HISTORY=off runs without a history")


def _q(name: str) -> str:
    """A quoted identifier (``user`` is a reserved word in PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def _pg_type(sqlite_type: str) -> str:
    base, _, rest = sqlite_type.partition(" ")
    return _TYPES.get(base, base) + (" " + rest if rest else "")


def _one_line(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split())) or type(exc).__name__


_RUN_COLS = ", ".join(_q(k) for k in COLUMNS)
_ALERT_COLS = ", ".join(_q(k) for k in _ALERTS)
_PUT = (f"INSERT INTO runs ({_RUN_COLS}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (record_id) "
        "DO UPDATE SET " + ", ".join(f"{_q(k)} = EXCLUDED.{_q(k)}" for k in COLUMNS if k != "record_id"))
_INT_COLS = frozenset(k for k, t in COLUMNS.items() if t == "INTEGER")
_TEXT_COLS = frozenset(k for k, t in COLUMNS.items() if t == "TEXT")


def _value(col: str, v: Any) -> Any:
    """A record's value as its column takes it (SQLite converts these silently; PostgreSQL refuses)."""
    if v is None:
        return None
    if isinstance(v, bool) or (col in _INT_COLS and isinstance(v, float) and v.is_integer()):
        return int(v)
    if col in _TEXT_COLS and not isinstance(v, str):
        return str(v)
    return v


class PostgresStore(Store):
    """The history in a PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise HistoryError("a postgresql:// history needs psycopg 3: pip install 'mapreduce-engine[postgres]' "
                               "(or set ENGINE_HISTORY to a file path for a SQLite history, or to off)") from None
        self._pg = psycopg
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as e:
            raise HistoryError(f"the history URL {redact(url)} cannot be parsed ({_one_line(e)}); expected "
                               "postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None
        for secret in (params.get("password"), os.environ.get("PGPASSWORD")):
            if secret:
                remember({"password": str(secret)})
        self._url = url
        self.location = redact(url)
        host = params.get("host") or os.environ.get("PGHOST") or "localhost"
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        db = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "?"
        self.where = f"{host}:{port}/{db}"
        self._extra: dict[str, Any] = {}
        if not params.get("connect_timeout"):
            self._extra["connect_timeout"] = CONNECT_TIMEOUT
        options = str(params.get("options") or "")
        if "statement_timeout" not in options:
            self._extra["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} {options}".strip()
        self._conn = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._run("set up its tables", self._setup)

    # -- connections ---------------------------------------------------------------------------
    def _connect(self):
        try:
            return self._pg.connect(self._url, autocommit=True, prepare_threshold=None, **self._extra)
        except self._pg.Error as e:
            raise HistoryError(f"cannot connect to the PostgreSQL history at {self.where}: {_one_line(e)}; "
                               f"{_WHAT_TO_DO}") from None

    def _run(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(connection)`` on the kept connection; once more on a new one if the server dropped it.

        The one case retried blindly is a reply lost after the server did the work: an upsert is the
        same again, a claim of an alert then reads as taken (its notification is not sent twice)."""
        if self._pid != os.getpid():        # a forked child: the parent's connection is not ours
            self._pid, self._conn, self._lock = os.getpid(), None, threading.Lock()
        with self._lock:
            retried = False
            while True:
                reused = self._conn is not None and not self._conn.closed
                conn = self._conn = self._conn if reused else self._connect()
                try:
                    return fn(conn)
                except self._pg.OperationalError as e:
                    if conn.broken or conn.closed:
                        self._conn = None
                        with contextlib.suppress(Exception):
                            conn.close()
                        if reused and not retried:
                            retried = True
                            continue
                    raise HistoryError(f"the PostgreSQL history at {self.where} failed to {what}: {_one_line(e)}; "
                                       f"{_WHAT_TO_DO}") from None
                except self._pg.Error as e:
                    raise HistoryError(f"the PostgreSQL history at {self.where} refused to {what}: {_one_line(e)}; "
                                       "check that the URL's user may create and write tables in its database, "
                                       "and that the tables runs and alerts are this engine's") from None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()

    # -- schema --------------------------------------------------------------------------------
    @staticmethod
    def _columns(conn, table: str) -> set[str]:
        return {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                                           "AND attnum > 0 AND NOT attisdropped", (table,))}

    def _complete(self, conn) -> bool:
        indexes = conn.execute("SELECT to_regclass('runs_record') IS NOT NULL "
                               "AND to_regclass('runs_job_started') IS NOT NULL").fetchone()[0]
        return (indexes and self._columns(conn, "runs") >= set(COLUMNS)
                and self._columns(conn, "alerts") >= set(_ALERTS))

    def _setup(self, conn) -> None:
        if self._complete(conn):
            return
        with conn.transaction():
            conn.execute("SET LOCAL client_min_messages = warning")      # no "already exists, skipping"
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            self._table(conn, "runs", COLUMNS)
            # records of the first version get a record id and their end time
            conn.execute("UPDATE runs SET record_id = substr(md5(random()::text || clock_timestamp()::text), 1, 16), "
                         "finished = COALESCE(finished, started + seconds) WHERE record_id IS NULL")
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS runs_record ON runs (record_id)")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_job_started ON runs (job, started)")
            self._table(conn, "alerts", _ALERTS)

    def _table(self, conn, name: str, columns: dict[str, str]) -> None:
        """Create table ``name`` with ``columns``, or add the columns an older version lacks."""
        conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ("
                     + ", ".join(f"{_q(k)} {_pg_type(t)}" for k, t in columns.items()) + ")")
        have = self._columns(conn, name)
        for k, t in columns.items():
            if k not in have:
                conn.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {_q(k)} {_pg_type(t)}")

    # -- records -------------------------------------------------------------------------------
    def put(self, rec: dict[str, Any]) -> None:
        """Insert the record, or replace the whole row of its ``record_id`` (columns it lacks become NULL,
        as SQLite's INSERT OR REPLACE)."""
        values = [_value(k, rec.get(k)) for k in COLUMNS]
        self._run("write a record", lambda conn: conn.execute(_PUT, values))

    def records(self, *, job=None, since=None, until=None, status=None, logical_date=None, output=None, limit=None,
                newest_first=True) -> list[dict[str, Any]]:
        where, args = _where(job, since, until, status, logical_date, output, ph="%s")
        order = "DESC NULLS LAST" if newest_first else "ASC NULLS FIRST"      # where SQLite puts NULLs
        q = f"SELECT {_RUN_COLS} FROM runs{where} ORDER BY started {order}"
        if limit is not None:
            q += " LIMIT %s"
            args.append(int(limit))
        rows = self._run("read records", lambda conn: conn.execute(q, args).fetchall())
        return [dict(zip(COLUMNS, row)) for row in rows]

    def get(self, ref: str) -> dict[str, Any] | None:
        # a prefix, case-insensitive as SQLite's LIKE; its % and _ are literal characters
        like = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        row = self._run("read a record", lambda conn: conn.execute(
            f"SELECT {_RUN_COLS} FROM runs WHERE record_id ILIKE %s OR run_id ILIKE %s "
            "ORDER BY started DESC NULLS LAST LIMIT 1", (like, like)).fetchone())
        return dict(zip(COLUMNS, row)) if row else None

    def jobs(self) -> list[str]:
        rows = self._run("list jobs", lambda conn: conn.execute(
            "SELECT DISTINCT job FROM runs ORDER BY job NULLS FIRST").fetchall())
        return [r[0] for r in rows]

    # -- the alert ledger ----------------------------------------------------------------------
    def claim_alert(self, row: dict[str, Any]) -> bool:
        cols = [k for k in _ALERTS if k in row]
        q = (f"INSERT INTO alerts ({', '.join(_q(k) for k in cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
             "ON CONFLICT (key) DO NOTHING")
        return self._run("claim an alert", lambda conn: conn.execute(q, [row[k] for k in cols]).rowcount == 1)

    def update_alert(self, key: str, **fields: Any) -> None:
        if not fields:
            return
        unknown = set(fields) - set(_ALERTS)
        if unknown:
            raise ValueError(f"update_alert: unknown alert fields {sorted(unknown)}; known: {list(_ALERTS)}")
        q = f"UPDATE alerts SET {', '.join(f'{_q(k)} = %s' for k in fields)} WHERE key = %s"
        self._run("update an alert", lambda conn: conn.execute(q, [*fields.values(), key]))

    def delete_alert(self, key: str) -> None:
        self._run("delete an alert", lambda conn: conn.execute("DELETE FROM alerts WHERE key = %s", (key,)))

    def alerts(self, *, job=None, since=None) -> list[dict[str, Any]]:
        where, args = _alert_where(job, since, ph="%s")
        q = f"SELECT {_ALERT_COLS} FROM alerts{where} ORDER BY created NULLS FIRST"
        rows = self._run("read alerts", lambda conn: conn.execute(q, args).fetchall())
        return [dict(zip(_ALERTS, row)) for row in rows]


__all__ = ["PostgresStore"]
