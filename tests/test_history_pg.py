"""The run history on a real PostgreSQL server started by the tests (tests/postgres_server.py).

The store contract of test_history_store.py on PostgreSQL (each test in a schema of its own), then
what only a server has: its password kept out of messages and records, a dropped connection replaced,
a server that is not there, and two real runs at once writing to one empty database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import history
from engine.errors import EngineError, HistoryError
from engine.redact import redact
from postgres_server import PASSWORD, PostgresServer, _free_port, postgres_server, postgres_url  # noqa: F401
from test_history_store import StoreContract

from engine.history_pg import PostgresStore

try:
    import psycopg
except ImportError:                 # the postgres_server fixture skips (or fails under REQUIRE_SERVICES=1)
    psycopg = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _PostgresBackend:
    """Each location is the server's URL with a search_path of a new, empty schema."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.schemas: dict[str, str] = {}
        self.stores: list[PostgresStore] = []

    def location(self) -> str:
        schema = "t_" + os.urandom(6).hex()
        with psycopg.connect(self.server.admin_url(), autocommit=True) as con:
            con.execute(f"CREATE SCHEMA {schema}")
        url = f"{self.server.url}?options=-csearch_path%3D{schema}"
        self.schemas[url] = schema
        return url

    def open(self, location: str) -> PostgresStore:
        store = PostgresStore(location)
        self.stores.append(store)
        return store

    def create_v1(self, location: str, rows) -> None:
        with psycopg.connect(self.server.admin_url(), autocommit=True,
                             options=f"-csearch_path={self.schemas[location]}") as con:
            con.execute("CREATE TABLE runs (run_id TEXT, job TEXT, fingerprint TEXT, status TEXT, "
                        "started DOUBLE PRECISION, seconds DOUBLE PRECISION, input_bytes BIGINT, output TEXT, "
                        "output_rows BIGINT, output_bytes BIGINT, message TEXT, report TEXT)")
            with con.cursor() as cur:
                cur.executemany("INSERT INTO runs VALUES (" + ", ".join(["%s"] * 12) + ")", rows)

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def pg(postgres_server):
    backend = _PostgresBackend(postgres_server)
    yield backend
    backend.close()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def backend(self, pg):
        return pg


def test_open_store_by_url_and_the_password_stays_out(pg, monkeypatch):
    url = pg.location()
    store = history.open_store(url)
    assert isinstance(store, PostgresStore) and history.open_store(url) is store
    assert PASSWORD not in store.location and store.location.startswith("postgresql://***@127.0.0.1:")
    # once a store was opened, its password is masked wherever the process writes it, even alone
    assert redact(f"could not log in with {PASSWORD}") == "could not log in with ***"
    monkeypatch.setenv("ENGINE_HISTORY", url)
    history.put({"record_id": "p1", "job": "j", "status": "failed", "started": 1.0,
                 "message": f"the job's own database {url} refused {PASSWORD}"})
    (r,) = store.records()
    assert PASSWORD not in r["message"] and "***" in r["message"]
    store.close()
    # the password may also come as a parameter of the URL
    port = pg.server.port
    other = PostgresStore(f"postgresql://127.0.0.1:{port}/history?user=engine&password={PASSWORD}&connect_timeout=3")
    assert PASSWORD not in other.location and other.jobs() == []
    other.close()


def test_threads_share_one_store(pg):
    """A run's heartbeat thread and its main thread write through one store (one kept connection)."""
    from concurrent.futures import ThreadPoolExecutor
    store = pg.open(pg.location())

    def write(t):
        for i in range(25):
            store.put({"record_id": f"t{t}-{i}", "job": f"j{t}", "status": "running", "started": float(i)})
            store.records(job=f"j{t}", limit=1)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    assert len(store.records()) == 100 and store.jobs() == ["j0", "j1", "j2", "j3"]


def test_unreachable_or_refused_server_raises_history_error(postgres_server):
    port = _free_port()                              # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(HistoryError) as err:
        PostgresStore(f"postgresql://engine:{PASSWORD}@127.0.0.1:{port}/history")
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert f"127.0.0.1:{port}/history" in msg and "ENGINE_HISTORY" in msg and PASSWORD not in msg
    assert isinstance(err.value, EngineError) and isinstance(err.value, RuntimeError)

    wrong = "wrong-pw-5e0b77"
    with pytest.raises(HistoryError, match="password authentication failed") as err:
        PostgresStore(postgres_server.url.replace(PASSWORD, wrong))
    assert wrong not in str(err.value) and PASSWORD not in str(err.value)


def test_a_dropped_connection_is_replaced(pg):
    store = pg.open(pg.location())
    store.put({"record_id": "d1", "job": "j", "started": 1.0})
    with psycopg.connect(pg.server.admin_url(), autocommit=True) as admin:
        before = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = 'history' "
                               "AND pid <> pg_backend_pid()").fetchall()
        assert before                                # the store keeps its connection open
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'history' "
                               "AND pid <> pg_backend_pid()").fetchall()
        assert killed and all(k[0] for k in killed)
    store.put({"record_id": "d2", "job": "j", "started": 2.0})     # on a new connection
    assert [r["record_id"] for r in store.records()] == ["d2", "d1"]


RUN_SCRIPT = '''
import sys

import engine
from engine import Job, agg

if __name__ == "__main__":
    name, data, out = sys.argv[1:4]
    result = engine.run(Job(name).reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")}), data, out)
    print(result.run_id)
'''


def test_two_concurrent_runs_leave_their_records(pg, tmp_path):
    """Two `engine.run` processes at once, on an empty database: both set it up and both records land."""
    url = pg.location()
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):                        # k = 0..6, 10 rows each over both files; v = row number
        rows = range(part * 35, part * 35 + 35)
        pq.write_table(pa.table({"k": [i % 7 for i in rows], "v": list(rows)}), data / f"part-{part}.parquet")
    script = tmp_path / "run_job.py"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "ENGINE_HISTORY": url, "PYTHONPATH": ROOT}
    procs = {name: subprocess.Popen([sys.executable, str(script), name, str(data), str(tmp_path / name)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for name in ("pg-run-a", "pg-run-b")}
    run_ids = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        run_ids[name] = out.strip().splitlines()[-1]
    store = pg.open(url)
    records = store.records()
    final = {r["job"]: r for r in records}
    assert len(records) == 2 and set(final) == {"pg-run-a", "pg-run-b"}, records    # one record per run
    for name, r in final.items():
        assert r["status"] == "committed" and r["run_id"] == run_ids[name]
        assert r["output"].endswith(name) and r["output_rows"] == 7
        assert r["record_id"] and r["seconds"] > 0 and r["pid"] == procs[name].pid
        assert PASSWORD not in " ".join(str(v) for v in r.values())
    assert final["pg-run-a"]["record_id"] != final["pg-run-b"]["record_id"]
    assert store.jobs() == ["pg-run-a", "pg-run-b"]
