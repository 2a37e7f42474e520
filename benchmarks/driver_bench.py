"""Driver cost at scale: the driver's CPU per task, and the bytes reducers read from an object store.

Two measurements, both on the embedded cluster:

* **no-op stage**: one stage of N tasks that do nothing (default 20,000), run by the engine's
  ``StageExecutor`` with the speculation supervisor on, as ``engine.run`` does. Reported: the CPU time
  of the driver's own loop thread (``time.thread_time()`` around ``StageExecutor.run``) per task, and,
  for context, the whole driver process's CPU per task, which also includes the embedded cluster's
  scheduler and the client's event loop (they run in the driver process). Target: loop CPU ≤ 0.2 ms
  per task, the same at any N.
* **S3 reduce bytes**: a real aggregation and a real sort with their input and shuffle on a moto S3
  server that counts the bytes it serves. Every shuffle byte is needed by exactly one reducer, so
  bytes served to the reducers ÷ bytes the map stage wrote is the read amplification of the reduce
  stage (target ≤ 1.5; reading whole map files makes it about the number of reducers).

    python -m benchmarks.driver_bench [--tasks 20000] [--rows 1600000] [--files 16]
    python -m benchmarks --suites driver [--driver-tasks 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

TARGET_CPU_MS = 0.2
TARGET_READ_RATIO = 1.5


# ---------------------------------------------------------------------------------------------
# A stage of no-op tasks


def noop_task(partition: int, attempt: int) -> dict:
    """A task that does nothing but report, as a map task does."""
    now = time.time()
    return {"partition": partition, "attempt": attempt, "start": now, "stop": now, "rows_in": 0, "rows_out": 0,
            "bytes_out": 0}


def noop_stage(client, tasks: int, *, speculation: bool = True) -> dict:
    """Run one stage of ``tasks`` no-op tasks; the driver's loop-thread and process CPU, and wall time."""
    from engine.compile import TaskSpec
    from engine.report import RunReport
    from engine.runner import StageExecutor

    report = RunReport("driver-bench", uuid.uuid4().hex[:8], "noop")
    supervisor = None
    if speculation:
        from engine.speculation import Supervisor
        supervisor = Supervisor.from_config(client, report)
    executor = StageExecutor(client, report, supervisor=supervisor)
    specs = [TaskSpec(i, noop_task, (), None) for i in range(tasks)]
    wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
    results = executor.run("noop", f"driver-bench-noop-{uuid.uuid4().hex[:10]}", specs, round_index=0,
                           round_count=1, kind="map", describe=str)
    wall, cpu, proc = time.perf_counter() - wall0, time.thread_time() - cpu0, time.process_time() - proc0
    if len(results) != tasks:
        raise RuntimeError(f"{len(results)} of {tasks} no-op tasks finished")
    return {"tasks": tasks, "seconds": wall, "loop_cpu_s": cpu, "process_cpu_s": proc,
            "loop_cpu_ms_per_task": 1e3 * cpu / tasks, "process_cpu_ms_per_task": 1e3 * proc / tasks,
            "tasks_per_s": tasks / wall if wall > 0 else None}


# ---------------------------------------------------------------------------------------------
# An S3 endpoint that counts the bytes it serves


class _Counting:
    """WSGI middleware: object bytes written (PUT bodies) and served (GET bodies) under a key prefix."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.prefix = "\0"
        self.written = self.served = self.gets = 0

    def watch(self, prefix: str) -> None:
        with self.lock:
            self.prefix = "/" + prefix.strip("/") + "/"
            self.written = self.served = self.gets = 0

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        watched = path.startswith(self.prefix) and path.endswith(".arrow")
        if watched and method == "PUT":
            with self.lock:
                self.written += int(environ.get("CONTENT_LENGTH") or 0)
        body = self.app(environ, start_response)
        return self._served(body) if watched and method == "GET" else body

    def _served(self, body):
        n = 0
        try:
            for chunk in body:
                n += len(chunk)
                yield chunk
        finally:
            with self.lock:
                self.served += n
                self.gets += 1
            if hasattr(body, "close"):
                body.close()


@contextlib.contextmanager
def counting_s3(bucket: str) -> Iterator[tuple[dict, Any, Any]]:
    """A moto S3 server on 127.0.0.1 behind :class:`_Counting`, with ``bucket`` created (moto keeps its
    buckets per process, across servers: use a new name each time): ``(storage_options, counter, fs)``."""
    import s3fs
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    counter = _Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(bucket)
        yield options, counter, fs
    finally:
        server.shutdown()
        thread.join(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"k": pa.array(rng.integers(0, max(1, rows // 6), rows).astype(np.int64)),
                     "v": pa.array(rng.integers(-1000, 1000, rows).astype(np.int64)),
                     "id": pa.array(np.arange(rows, dtype=np.int64))})


def s3_reduce_bytes(rows: int = 1_600_000, files: int = 16, *, partition_size: str = "1MiB") -> dict[str, dict]:
    """Run an aggregation and a sort over S3; per job: bytes served to its reducers, bytes its maps wrote,
    their ratio, GETs, seconds, and whether the answer equals pyarrow's."""
    import pyarrow.parquet as pq

    import engine
    from engine import Job, agg

    table = _table(rows)
    scratch = tempfile.mkdtemp(prefix="driver-bench-")
    out: dict[str, dict] = {}
    try:
        bucket = f"driver-bench-{uuid.uuid4().hex[:8]}"
        with counting_s3(bucket) as (so, counter, fs):
            bounds = np.linspace(0, rows, files + 1).astype(int)
            for i in range(files):
                local = os.path.join(scratch, f"part-{i:03d}.parquet")
                pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), local)
                fs.put(local, f"{bucket}/in/part-{i:03d}.parquet")
            fs.invalidate_cache()
            jobs = {"aggregate": Job("driver-bench-agg").reduce(by="k", aggs={"n": agg.count(), "total": agg.sum("v")}),
                    "sort": Job("driver-bench-sort").sort(by="k")}
            for name, job in jobs.items():
                shuffle = f"{bucket}/shuffle/{name}"
                counter.watch(shuffle)
                dest = os.path.join(scratch, f"out-{name}")
                t0 = time.perf_counter()
                result = engine.run(job, f"s3://{bucket}/in", dest, storage_options=so,
                                    shuffle_dir=f"s3://{shuffle}", partition_size=partition_size,
                                    speculation=False, force=True)
                seconds = time.perf_counter() - t0
                got = engine.read(dest)
                if name == "aggregate":
                    g = table.group_by("k").aggregate([([], "count_all"), ("v", "sum")])
                    expected = pa.table({"k": g["k"], "n": g["count_all"], "total": g["v_sum"]}).sort_by("k")
                    ok = got.select(["k", "n", "total"]).sort_by("k").equals(expected)
                else:
                    ok = (got.num_rows == rows and bool((np.diff(got["k"].to_numpy()) >= 0).all())
                          and got.sort_by([("k", "ascending"), ("id", "ascending")]).equals(
                              table.sort_by([("k", "ascending"), ("id", "ascending")]).select(got.column_names)))
                reducers = next(s.tasks for s in result.report.stages if s.name.endswith("-reduce"))
                out[name] = {"maps": files, "reducers": reducers, "served": counter.served,
                             "written": counter.written, "gets": counter.gets,
                             "ratio": counter.served / counter.written if counter.written else None,
                             "seconds": seconds, "answer_ok": ok}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.driver_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=20_000, help="no-op tasks in the stage (default %(default)s)")
    ap.add_argument("--rows", type=int, default=1_600_000, help="rows of the S3 jobs' input (default %(default)s)")
    ap.add_argument("--files", type=int, default=16, help="input files (map tasks) of the S3 jobs")
    ap.add_argument("--skip-s3", action="store_true")
    args = ap.parse_args(argv)
    from engine.cluster import get_client
    logging.getLogger("distributed").setLevel(logging.ERROR)
    client, _ = get_client(None)
    noop_stage(client, min(args.tasks, 200))         # warm-up: worker imports, plugin registration
    stage = noop_stage(client, args.tasks)
    print(f"no-op stage of {stage['tasks']:,} tasks: {stage['seconds']:.1f}s wall, driver loop CPU "
          f"{stage['loop_cpu_ms_per_task']:.3f} ms/task (target <= {TARGET_CPU_MS}), driver process CPU "
          f"(incl. the embedded scheduler) {stage['process_cpu_ms_per_task']:.3f} ms/task")
    if not args.skip_s3:
        for name, r in s3_reduce_bytes(args.rows, args.files).items():
            print(f"S3 {name}: {r['maps']} maps x {r['reducers']} reducers, served {r['served']:,} of "
                  f"{r['written']:,} shuffle bytes = {r['ratio']:.2f}x (target <= {TARGET_READ_RATIO}) in "
                  f"{r['gets']} GETs, {r['seconds']:.1f}s, answer {'ok' if r['answer_ok'] else 'WRONG'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
