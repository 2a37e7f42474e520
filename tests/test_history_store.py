"""The history store's contract, and the SQLite store that holds it by default.

:class:`StoreContract` is the contract every store keeps (records, upserts, lookups by prefix, the
alert ledger, concurrent writers and claimers in several processes, upgrading a table of the first
version); each store's test class runs it through a ``backend`` fixture: :class:`TestSQLiteStore` here,
``TestPostgresStore`` in test_history_pg.py on a real server.
"""

from __future__ import annotations

import multiprocessing
import re
import sqlite3

import pytest

from engine import history
from engine.history import COLUMNS, SQLiteStore

FORK = multiprocessing.get_context("fork")     # children inherit the test's imports: they start in ms

# The columns of the first version of the table, as it created them.
V1_COLUMNS = ["run_id", "job", "fingerprint", "status", "started", "seconds", "input_bytes", "output",
              "output_rows", "output_bytes", "message", "report"]
V1_ROWS = [
    ("20250301-0001-aaaa", "wordcount", "fp1", "committed", 1740787200.5, 12.25, 1000, "/out/wc", 7, 400, "", "{}"),
    ("20250302-0002-bbbb", "wordcount", "fp1", "failed", 1740873600.0, 3.0, 1000, "/out/wc", 0, 0, "boom", "{}"),
]


def rec(record_id: str, **fields) -> dict:
    return {"record_id": record_id, **fields}


def _put_many(location: str, who: int, n: int, barrier) -> None:
    barrier.wait(30)
    store = history.open_store(location)         # the first open of an empty location races with the others
    for i in range(n):
        store.put(rec(f"w{who}-{i:03d}", run_id=f"run-{who}", job=f"job{who}", status="committed",
                      started=1000.0 + who * 100 + i, seconds=0.5, output_rows=i))


def _claim_many(location: str, keys: list[str], barrier, results) -> None:
    store = history.open_store(location)
    barrier.wait(30)
    results.put([(k, store.claim_alert({"key": k, "kind": "failure", "job": "j", "created": 1.0})) for k in keys])


class StoreContract:
    """Tests every store passes. A subclass provides the fixture ``backend``: ``location()`` gives a
    fresh, empty location, ``open(location)`` a store on it, ``create_v1(location, rows)`` the table of
    the first version holding ``rows``."""

    def test_records_filter_order_and_limit(self, backend):
        store = backend.open(backend.location())
        for r in [rec("a1", job="a", started=100.0, status="committed", logical_date="2026-01-01", output="/o/a"),
                  rec("a2", job="a", started=200.0, status="failed", logical_date="2026-01-02", output="/o/a"),
                  rec("a3", job="a", started=300.0, status="committed", logical_date="2026-01-02", output="/o/a2"),
                  rec("b1", job="b", started=150.0, status="skipped", output="/o/b"),
                  rec("b2", job="b", started=250.0, status="running")]:
            store.put(r)

        def ids(**kw):
            return [r["record_id"] for r in store.records(**kw)]

        assert ids() == ["a3", "b2", "a2", "b1", "a1"]
        assert ids(newest_first=False) == ["a1", "b1", "a2", "b2", "a3"]
        assert ids(job="a") == ["a3", "a2", "a1"]
        assert ids(since=150, until=300) == ["b2", "a2", "b1"]          # since inclusive, until exclusive
        assert ids(status="committed") == ["a3", "a1"]
        assert ids(status=("failed", "skipped")) == ["a2", "b1"]
        assert ids(logical_date="2026-01-02") == ["a3", "a2"]
        assert ids(output="/o/a") == ["a2", "a1"]
        assert ids(limit=2) == ["a3", "b2"]
        assert ids(job="a", status="committed", limit=1) == ["a3"]
        assert ids(job="nope") == []
        assert store.jobs() == ["a", "b"]
        assert all(list(r) == list(COLUMNS) for r in store.records())

    def test_put_replaces_the_record_with_its_id(self, backend):
        store = backend.open(backend.location())
        store.put(rec("r1", job="j", status="running", started=10.0, host="h1", pid=42, checkpoint_at=11.0))
        store.put(rec("r2", job="j", status="running", started=20.0))
        store.put(rec("r1", job="j", status="committed", started=10.0, seconds=5.0, finished=15.0, tasks=4))
        rows = store.records(newest_first=False)
        assert [r["record_id"] for r in rows] == ["r1", "r2"]
        first = rows[0]
        assert (first["status"], first["seconds"], first["finished"], first["tasks"]) == ("committed", 5.0, 15.0, 4)
        # a whole-row replacement: what the second write did not carry is gone
        assert (first["host"], first["pid"], first["checkpoint_at"]) == (None, None, None)

    def test_values_round_trip(self, backend):
        store = backend.open(backend.location())
        text = "naïve — ✓ 'single' \"double\" %s %(x)s ?"
        store.put(rec("v1", job="j", started=1767225600.123456, input_bytes=5_000_000_000, output_bytes=2 ** 40,
                      message=text, user="root", pid=123456, cpu_seconds=0.1, resumed=True,
                      slo='{"success_rate": 0.99}', report='{"stages": []}', ignored_key="not a column"))
        r = store.get("v1")
        assert r["started"] == 1767225600.123456 and isinstance(r["started"], float)
        assert (r["input_bytes"], r["output_bytes"], r["pid"], r["resumed"]) == (5_000_000_000, 2 ** 40, 123456, 1)
        assert (r["message"], r["user"], r["cpu_seconds"]) == (text, "root", 0.1)
        assert (r["slo"], r["report"]) == ('{"success_rate": 0.99}', '{"stages": []}')
        assert "ignored_key" not in r

    def test_get_by_record_id_or_run_id_prefix(self, backend):
        store = backend.open(backend.location())
        # run 20260101-aaaa was resumed once: two records share its run id
        store.put(rec("0a1b2c3d4e5f6071", run_id="20260101-aaaa", job="j", started=100.0))
        store.put(rec("0a1bffff00000000", run_id="20260101-aaaa", job="j", started=200.0))
        store.put(rec("9999000011112222", run_id="20260102-bbbb", job="j", started=300.0))

        def got(ref):
            r = store.get(ref)
            return r and r["record_id"]

        assert got("0a1b2c3d4e5f6071") == "0a1b2c3d4e5f6071"
        assert got("0a1b2c") == "0a1b2c3d4e5f6071"         # a unique prefix
        assert got("0a1b") == "0a1bffff00000000"           # two match: the newest
        assert got("20260101-aaaa") == "0a1bffff00000000"  # a run id: its newest record
        assert got("2026") == "9999000011112222"
        assert got("0A1B2C") == "0a1b2c3d4e5f6071"         # ids are matched case-insensitively
        assert got("nothing") is None

    def test_alert_ledger(self, backend):
        store = backend.open(backend.location())
        first = {"key": "failure/a/2026-01-01", "kind": "failure", "job": "a", "logical_date": "2026-01-01",
                 "record_id": "r1", "created": 100.0, "status": "pending"}
        assert store.claim_alert(first) is True
        assert store.claim_alert({**first, "record_id": "r2", "created": 101.0}) is False   # a retry of it
        assert store.claim_alert({"key": "failure/b/2026-01-01", "kind": "failure", "job": "b",
                                  "created": 200.0, "status": "pending"}) is True
        store.update_alert(first["key"], status="delivered", delivered=105.5, detail='{"http": 200}')
        store.update_alert(first["key"])                                         # nothing to change
        (a,) = store.alerts(job="a")
        assert a == {**first, "status": "delivered", "delivered": 105.5, "detail": '{"http": 200}'}
        assert [x["job"] for x in store.alerts()] == ["a", "b"]
        assert [x["job"] for x in store.alerts(since=150)] == ["b"]
        store.delete_alert(first["key"])
        assert [x["job"] for x in store.alerts()] == ["b"]
        assert store.claim_alert(first) is True                                  # claimable again

    def test_concurrent_writers_lose_nothing(self, backend):
        location = backend.location()              # empty: the four processes also race to set it up
        barrier = FORK.Barrier(4)
        procs = [FORK.Process(target=_put_many, args=(location, who, 50, barrier)) for who in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        rows = backend.open(location).records(newest_first=False)
        assert len(rows) == 200
        assert {r["record_id"] for r in rows} == {f"w{who}-{i:03d}" for who in range(4) for i in range(50)}
        assert sum(r["output_rows"] for r in rows) == 4 * sum(range(50))

    def test_claim_alert_is_insert_if_absent_across_processes(self, backend):
        location = backend.location()
        backend.open(location)                      # set up: the race is on the claims
        keys = [f"failure/j/2026-01-{d:02d}" for d in range(1, 31)]
        barrier, results = FORK.Barrier(2), FORK.Queue()
        procs = [FORK.Process(target=_claim_many, args=(location, keys, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60), results.get(timeout=60)]
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
        for i, key in enumerate(keys):
            assert [o[i] for o in outcomes] in ([(key, True), (key, False)], [(key, False), (key, True)])
        assert len(backend.open(location).alerts()) == 30

    def test_table_of_the_first_version_is_upgraded_in_place(self, backend):
        location = backend.location()
        backend.create_v1(location, V1_ROWS)
        store = backend.open(location)
        rows = store.records(newest_first=False)
        assert [(r["run_id"], r["status"], r["started"], r["seconds"], r["output_rows"], r["message"])
                for r in rows] == [(v[0], v[3], v[4], v[5], v[8], v[10]) for v in V1_ROWS]
        ids = [r["record_id"] for r in rows]
        assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids) and len(set(ids)) == 2
        assert [r["finished"] for r in rows] == [1740787200.5 + 12.25, 1740873600.0 + 3.0]
        assert store.get(ids[1][:8])["run_id"] == "20250302-0002-bbbb"
        assert store.get("20250301")["record_id"] == ids[0]
        # the upgraded table takes records of this version, keyed by record id
        store.put(rec(ids[0], run_id="20250301-0001-aaaa", job="wordcount", status="committed",
                      started=1740787200.5, logical_date="2025-03-01"))
        again = backend.open(location)               # a second open finds it set up and changes nothing
        assert [r["record_id"] for r in again.records(newest_first=False)] == ids
        assert again.get(ids[0])["logical_date"] == "2025-03-01"
        assert again.jobs() == ["wordcount"]


class _SQLiteBackend:
    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.n = 0

    def location(self) -> str:
        self.n += 1
        return str(self.tmp / f"h{self.n}" / "history.sqlite")     # its directory does not exist yet

    def open(self, location: str) -> SQLiteStore:
        store = history.open_store(location)
        assert isinstance(store, SQLiteStore)
        return store

    def create_v1(self, location: str, rows) -> None:
        import os
        os.makedirs(os.path.dirname(location), exist_ok=True)
        con = sqlite3.connect(location)
        con.execute("CREATE TABLE runs (run_id TEXT, job TEXT, fingerprint TEXT, status TEXT, started REAL, "
                    "seconds REAL, input_bytes INTEGER, output TEXT, output_rows INTEGER, output_bytes INTEGER, "
                    "message TEXT, report TEXT)")
        con.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        con.commit()
        con.close()


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def backend(self, tmp_path):
        return _SQLiteBackend(tmp_path)
