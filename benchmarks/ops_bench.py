"""What operating a run costs (issue 13): its record, usage figures, metrics, alerts and spans.

The ``operations`` suite (``python -m benchmarks --suites operations``; not in the default set) times
the G1 groupby questions with everything a run now does for its operators turned off, and with all
of it turned on, and reports the ratio; the issue bounds it at 1.02 on G1 1e7.

**Data.** G1 of ``--operations-rows`` rows (default 1e7, ``--quick`` 2e4) in
:func:`benchmarks.datagen.g1`'s default number of files (two at 1e7, ~200 MB), the questions of
:mod:`jobs.groupby` (``--operations-questions``, default q1..q10). At 1e7 rows the input is above
``engine.local.max-bytes``, so the groupby suite runs it on the embedded cluster; this suite always
does (``engine.local.max-bytes: 0``), so a small input measures the same path.

**Two systems per question**, taking turns within each repeat, the first one alternating (``max(5,
--repeat)`` repeats; ``--quick``: ``--repeat``), each ``engine.run(job, G1, fresh output, force=True)``
timed whole:

* ``off``: ``ENGINE_HISTORY=off``, no hooks, no tracer provider, and no usage figures (the two
  ``client.run`` calls that read the workers' CPU seconds are skipped; the engine's own
  "figures unavailable" path). What is left is what every run pays whatever the settings: the
  record is still built from the report (``record build`` below).
* ``engine`` (the engine as it runs now, "on" below): the history in a fresh SQLite file (the
  ``running`` record at the start, a heartbeat every ``engine.history.heartbeat`` seconds, the final
  record), the usage figures, ``metrics_file=`` a directory (node-exporter textfile) and ``push_gateway=`` a real Pushgateway
  started by the suite (``prometheus-pushgateway`` on 127.0.0.1, its state in memory, when installed),
  ``on_success=`` the URL of a small HTTP receiver in this process (every successful run is
  announced: each is a forced recompute), and OpenTelemetry spans into an in-memory exporter through
  a ``SimpleSpanProcessor`` (when ``opentelemetry-sdk`` is installed). Parts whose module is not
  there (``engine.metrics``, ``engine.alerts``, ``engine.tracing``) or whose service is missing are
  left off; every record says which parts were on (``parts``).

Each ``on`` run is checked, untimed: its final record is in the store (``committed``), its run id is in
the textfile and on the gateway, the receiver got its ``success`` event, and its spans were exported
(``run <job>`` with its run id); each ``off`` run left no record, event or span. Both answers have
the same row count (the groupby suite checks the values).

**Records.** Per question, a ``measurement`` record per system (``case`` = the question; ``engine``
carries ``ratio`` = median on / median off, ``ratios.off`` the median of the paired ratios,
``ratio_runs`` = on / off within each repeat and ``ratio_range`` their min..max, the noise), the
driver's CPU seconds per run (``cpu_s``, ``cpu_ratio``) and the load average;
an ``operations_total`` record: ``ratio`` = the sum of the ``on`` medians / the sum of the ``off``
medians, ``ratio_range`` = min..max over the repeats of the same sums per repeat, ``met`` (≤ 1.02);
and one ``operations_part`` record per part, its cost alone in milliseconds (median of
``PART_REPEAT``), measured in this process after the timed runs with the report and record of the
``on`` run that had the most tasks:

    record build            telemetry.record_from_report (both modes)
    history put, start      the running record, inserted        (history.put opens the store each time)
    history put, heartbeat  the running record, replaced
    history put, final      the final record replacing the running one
    store open, export      history.open_store() at each export
    usage (2 client.run)    engine.runner._cluster_cpu twice, on the embedded cluster
    metrics textfile        engine.metrics.export(textfile=)
    metrics gateway         engine.metrics.export(gateway=)     (two POSTs)
    heartbeat progress      engine.metrics.progress(gateway=, textfile=)
    alert on_success        engine.alerts.notify(on_success=)   (ledger claim, POST, ledger update)
    span emit               engine.tracing.emit(report)
    imports, fresh process  the modules a first ``on`` run imports, in a new interpreter (once per process)

From them ``predicted_ratio`` per question: (off median + the parts one run pays, heartbeats by the
run's length) / off median, to set against the measured one.

    python -m benchmarks --suites operations                                     # G1 1e7, q1..q10
    python -m benchmarks --suites operations --operations-rows 1e6 --operations-questions q1,q3,q10
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

from benchmarks import harness
from benchmarks.harness import ENGINE, Measured, Outcome

SUITE = "operations"
REPEAT = 5                  # at least this many repeats outside --quick: a 2% bound needs the noise visible
PART_REPEAT = 20            # runs of each part alone (--quick: 5)
TARGET = 1.02
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
ON, OFF = ENGINE, "off"     # the systems: the engine as it runs now (every part on), and with the parts off


# ---------------------------------------------------------------------------------------------
# What is there


def module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pushgateway_binary() -> str | None:
    if os.access(PUSHGATEWAY, os.X_OK):
        return PUSHGATEWAY
    return shutil.which("prometheus-pushgateway")


def available() -> dict[str, bool]:
    """Which parts an ``on`` run can have here (modules present, service installed)."""
    metrics = module_present("engine.metrics") and module_present("prometheus_client")
    return {"history": True, "usage": True, "metrics_file": metrics,
            "push_gateway": metrics and pushgateway_binary() is not None,
            "alerts": module_present("engine.alerts"),
            "tracing": module_present("engine.tracing") and module_present("opentelemetry.sdk")}


# ---------------------------------------------------------------------------------------------
# Services the on runs talk to


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pushgateway:
    """A real Prometheus Pushgateway on 127.0.0.1, started and stopped by the suite."""

    def __init__(self, binary: str, workdir: str, timeout: float = 20.0) -> None:
        self._log = open(os.path.join(workdir, "pushgateway.log"), "wb")  # noqa: SIM115 - closed in stop()
        for _ in range(3):                  # a port taken between _free_port() and the bind: another one
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            # an empty --persistence.file keeps the state in memory (Debian's build persists to a file under
            # /var/lib/prometheus otherwise, which would outlive the suite)
            self.proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{self.port}",  # noqa: S603
                                          "--persistence.file=", "--log.level=warn"],
                                         stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and not self._ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None and self._ready():
                return
            self._end()
        self._log.close()
        raise RuntimeError(f"the Pushgateway ({binary}) did not become ready on 127.0.0.1 (log: "
                           f"{os.path.join(workdir, 'pushgateway.log')})")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:  # noqa: S310 - local
                return r.status == 200
        except OSError:
            return False

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:  # noqa: S310 - local
            return r.read().decode()

    def _end(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._end()
        self._log.close()


class Receiver:
    """An HTTP endpoint in a thread of this process that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        events: list[dict] = []
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    ev = json.loads(body)
                except ValueError:
                    ev = {"unparsed": body[:200].decode(errors="replace")}
                with lock:
                    events.append(ev)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.events = events
        self.lock = lock
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="ops-receiver", daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def since(self, n: int) -> list[dict]:
        with self.lock:
            return list(self.events[n:])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Spans:
    """A tracer provider exporting into memory, switched on and off as the global one.

    The OpenTelemetry API sets its global provider once per process; the suite swaps the module's
    global instead (and puts back what was there), so the ``off`` runs see no provider at all, as a
    program that configured none."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        self._trace = trace
        self.before = getattr(trace, "_TRACER_PROVIDER", None)
        self.preset = self.before is not None or "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def switch(self, on: bool) -> None:
        if not self.preset:
            self._trace._TRACER_PROVIDER = self.provider if on else None   # noqa: SLF001 - see the class doc

    def take(self) -> list:
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans

    def close(self) -> None:
        if not self.preset:
            self._trace._TRACER_PROVIDER = self.before                     # noqa: SLF001
        with contextlib.suppress(Exception):
            self.provider.shutdown()


class Setup:
    """The on runs' destinations (history file, textfile directory, gateway, receiver, spans)."""

    def __init__(self, workdir: str, parts: dict[str, bool], progress=None) -> None:
        self.workdir = workdir
        self.history = os.path.join(workdir, "history.sqlite")
        self.textfile = os.path.join(workdir, "textfile") + os.sep
        os.makedirs(self.textfile, exist_ok=True)
        self.parts = dict(parts)
        self.gateway: Pushgateway | None = None
        self.receiver: Receiver | None = None
        self.spans: Spans | None = None
        self.notes: list[str] = []
        if self.parts["push_gateway"]:
            try:
                self.gateway = Pushgateway(pushgateway_binary() or PUSHGATEWAY, workdir)
            except (OSError, RuntimeError) as exc:
                self.parts["push_gateway"] = False
                self.notes.append(f"push_gateway off: {exc}")
        if self.parts["alerts"]:
            self.receiver = Receiver()
        if self.parts["tracing"]:
            self.spans = Spans()
            if self.spans.preset:
                self.notes.append("a tracer provider was configured before the suite: spans are emitted in the "
                                  "off runs too")

    def hooks(self) -> dict[str, Any]:
        """engine.run's keyword arguments of an on run (only for the parts whose module is there)."""
        out: dict[str, Any] = {}
        if self.parts["metrics_file"]:
            out["metrics_file"] = self.textfile
        if self.parts["push_gateway"] and self.gateway is not None:
            out["push_gateway"] = self.gateway.url
        if self.parts["alerts"] and self.receiver is not None:
            out["on_success"] = self.receiver.url
        return out

    def parts_of(self, system: str) -> dict[str, Any]:
        from engine import config
        if system == ON:
            return {**self.parts, "heartbeat_s": float(config.get("history.heartbeat") or 0)}
        preset = self.spans is not None and self.spans.preset
        return {**{k: False for k in self.parts}, "tracing": preset, "heartbeat_s": 0.0}

    @contextlib.contextmanager
    def mode(self, on: bool):
        """The process set up as for an on (or off) run; everything put back afterwards."""
        import dask.config

        from engine import runner
        saved_env = os.environ.get("ENGINE_HISTORY")
        saved_cpu = runner._cluster_cpu
        os.environ["ENGINE_HISTORY"] = self.history if on else "off"
        if not on:
            runner._cluster_cpu = _no_usage
        if self.spans is not None:
            self.spans.switch(on)
        try:
            with dask.config.set({"engine.metrics.file": None, "engine.metrics.push-gateway": None,
                                  "engine.alerts.on-failure": None, "engine.alerts.on-success": None,
                                  "engine.alerts.on-slo-breach": None}):
                yield
        finally:
            runner._cluster_cpu = saved_cpu
            if saved_env is None:
                os.environ.pop("ENGINE_HISTORY", None)
            else:
                os.environ["ENGINE_HISTORY"] = saved_env
            if self.spans is not None:
                self.spans.switch(False)

    def records_in_store(self) -> int:
        if not os.path.exists(self.history):
            return 0
        con = sqlite3.connect(self.history, timeout=30)
        try:
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()

    def textfile_text(self) -> str:
        text = []
        for name in sorted(os.listdir(self.textfile)):
            with contextlib.suppress(OSError), open(os.path.join(self.textfile, name), encoding="utf-8") as f:
                text.append(f.read())
        return "\n".join(text)

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.spans is not None:
            self.spans.close()


def _no_usage(client: Any, info: Any) -> None:
    """The off runs' stand-in for ``engine.runner._cluster_cpu``: no usage figures."""
    return None


# ---------------------------------------------------------------------------------------------
# One timed run, and what it must have left


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Runs:
    """The systems of one question, and the check of every run they made."""

    def __init__(self, ctx, setup: Setup, job, data: str) -> None:
        self.ctx, self.setup, self.job, self.data = ctx, setup, job, data
        self.problems: list[str] = []
        self.rows: dict[str, set] = {"on": set(), "off": set()}
        self.spans: list[int] = []
        self.kept: tuple[Any, Any] | None = None       # (report, record) of the on run with the most tasks

    def system(self, on: bool):
        import engine
        name = "on" if on else "off"

        def run(keep: bool) -> Outcome:
            s = self.setup
            out = self.ctx.out(f"ops-{self.job.name}-{name}")
            before = (s.records_in_store(), s.receiver.count() if s.receiver else 0)
            if s.spans is not None:
                s.spans.take()
            try:
                with s.mode(on):
                    kwargs = s.hooks() if on else {}
                    c0, t0 = _process_cpu(), time.perf_counter()
                    result = engine.run(self.job, self.data, out, force=True, **kwargs)
                    seconds, cpu = time.perf_counter() - t0, _process_cpu() - c0
            finally:
                shutil.rmtree(out, ignore_errors=True)
            self.rows[name].add(result.rows)
            (self._check_on if on else self._check_off)(result, before)
            return Outcome(seconds, None, result.rows,
                           extra={"cpu_s": round(cpu, 4), "local": bool((result.report.cluster or {}).get("local")),
                                  "tasks": sum(st.tasks for st in result.report.stages)})
        return run

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def _check_on(self, result, before: tuple[int, int]) -> None:
        from engine import history
        s, rid, run_id = self.setup, (result.record or {}).get("record_id"), result.run_id
        rec = history.open_store(s.history).get(rid) if rid else None
        if rec is None or rec.get("status") != "committed":
            self._problem(f"on run {run_id}: no committed record in the history "
                          f"({rec.get('status') if rec else 'none'})")
        if s.parts["metrics_file"] and run_id not in s.textfile_text():
            self._problem(f"on run {run_id}: not in the metrics textfile")
        if s.parts["push_gateway"] and s.gateway is not None and run_id not in s.gateway.metrics_text():
            self._problem(f"on run {run_id}: not on the Pushgateway")
        if s.parts["alerts"] and s.receiver is not None:
            got = [e for e in s.receiver.since(before[1]) if e.get("run_id") == run_id and e.get("kind") == "success"]
            if len(got) != 1:
                self._problem(f"on run {run_id}: the receiver got {len(got)} success event(s), expected 1")
        if s.parts["tracing"] and s.spans is not None:
            spans = s.spans.take()
            runs = [sp for sp in spans if sp.name == f"run {self.job.name}"
                    and (sp.attributes or {}).get("mapreduce.run_id") == run_id]
            if len(runs) != 1:
                self._problem(f"on run {run_id}: {len(runs)} run span(s) among {len(spans)} exported, expected 1")
            self.spans.append(len(spans))
        tasks = sum(st.tasks for st in result.report.stages)
        if self.kept is None or tasks > sum(st.tasks for st in self.kept[0].stages):
            self.kept = (result.report, dict(result.record or {}))

    def _check_off(self, result, before: tuple[int, int]) -> None:
        s = self.setup
        if s.records_in_store() != before[0]:
            self._problem(f"off run {result.run_id}: a record was written to the history")
        if s.receiver is not None and s.receiver.count() != before[1]:
            self._problem(f"off run {result.run_id}: an alert was sent")
        if s.spans is not None and not s.spans.preset and s.spans.take():
            self._problem(f"off run {result.run_id}: spans were exported")
        if (result.report.usage or {}).get("worker_cpu_seconds") is not None:
            self._problem(f"off run {result.run_id}: usage figures were read")

    def check(self) -> dict[str, Any]:
        rows_equal = len(self.rows["on"] | self.rows["off"]) == 1
        if not rows_equal:
            self._problem(f"row counts differ: on {sorted(self.rows['on'])}, off {sorted(self.rows['off'])}")
        return {"ok": not self.problems, "rows_equal": rows_equal, "problems": list(self.problems),
                "spans_per_on_run": sorted(set(self.spans)),
                "against": {"on vs off": {"equal": rows_equal, "how": "rows"}}}


# ---------------------------------------------------------------------------------------------
# Each part alone


def _median_ms(xs: list[float]) -> float | None:
    m = harness.median(xs)
    return None if m is None else round(m * 1000, 3)


def _time_part(n: int, fn, prepare=None) -> list[float]:
    out = []
    for _ in range(n):
        arg = prepare() if prepare is not None else None
        t0 = time.perf_counter()
        fn(arg)
        out.append(time.perf_counter() - t0)
    return out


def _import_costs(parts: dict[str, bool], n: int) -> list[float]:
    """Seconds a fresh interpreter that imported the engine takes to import what a first on run imports."""
    mods = ["sqlite3"]
    if parts["metrics_file"] or parts["push_gateway"]:
        mods += ["engine.metrics", "prometheus_client", "prometheus_client.exposition"]
    if parts["alerts"]:
        mods += ["engine.alerts", "urllib.request"]
    if parts["tracing"]:
        mods += ["engine.tracing", "opentelemetry.trace"]
    code = ("import time, importlib, engine, engine.runner, engine.telemetry\n"
            f"t = time.perf_counter()\nfor m in {mods!r}: importlib.import_module(m)\n"
            "print(time.perf_counter() - t)")
    from benchmarks import startup
    env = startup.subprocess_env()
    out = []
    for _ in range(n):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: S603
                              timeout=120, check=True)
        out.append(float(done.stdout.strip().splitlines()[-1]))
    return out


def part_costs(ctx, setup: Setup, report: Any, record: dict, n: int) -> dict[str, dict[str, Any]]:
    """Each part of an on run alone: ``{name: {"runs": [seconds], "error": text or None}}``."""
    from engine import history, runner, telemetry
    client, info = ctx.client()
    s = setup
    results: dict[str, dict[str, Any]] = {}

    def part(name: str, fn, prepare=None, count: int = n) -> None:
        try:
            results[name] = {"runs": _time_part(count, fn, prepare), "error": None}
        except Exception as exc:  # noqa: BLE001 - one part's failure is a result
            results[name] = {"runs": [], "error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    def running(rid: str) -> dict:
        rec = history.base_record(rid, record.get("job") or "ops", record.get("output") or "", started=time.time())
        rec.update({"run_id": record.get("run_id"), "updated": time.time(), "checkpoint_at": time.time(),
                    "tasks": record.get("tasks"), "attempts": record.get("attempts"),
                    "input_files": record.get("input_files"), "input_bytes": record.get("input_bytes"),
                    "message": "3 task(s) done"})
        return rec

    def fresh(**more: Any) -> dict:
        return {**record, "record_id": history.new_record_id(), **more}

    with s.mode(True):
        part("record build", lambda _: telemetry.record_from_report(report, history.new_record_id()))
        part("history put, start", lambda rec: history.put(rec), lambda: running(history.new_record_id()))
        beat = running(history.new_record_id())
        history.put(beat)
        part("history put, heartbeat", lambda _: history.put(beat))

        def final_over_running() -> dict:
            rid = history.new_record_id()
            history.put(running(rid))
            return {**record, "record_id": rid}
        part("history put, final", lambda rec: history.put(rec), final_over_running)
        part("store open, export", lambda _: history.open_store())
        if info.local:
            results["usage (2 client.run)"] = {"runs": [], "error": "the run was in the driver: no client.run"}
        else:
            def usage(_: Any) -> None:        # before and after the run, as engine.runner does
                runner._cluster_cpu(client, info)
                runner._cluster_cpu(client, info)
            part("usage (2 client.run)", usage)
        store = history.open_store(s.history)
        if s.parts["metrics_file"] or s.parts["push_gateway"]:
            from engine import metrics
            if s.parts["metrics_file"]:
                part("metrics textfile", lambda _: metrics.export(record, store, textfile=s.textfile))
            if s.parts["push_gateway"] and s.gateway is not None:
                part("metrics gateway", lambda _: metrics.export(record, store, gateway=s.gateway.url))
            hooks = s.hooks()
            progress = getattr(metrics, "progress", None)
            if progress is not None:        # what each heartbeat exports (the telemetry's own call)
                part("heartbeat progress", lambda _: progress(beat, gateway=hooks.get("push_gateway"),
                                                              textfile=hooks.get("metrics_file")))
        if s.parts["alerts"] and s.receiver is not None:
            from engine import alerts

            def notify(rec: dict) -> None:
                sent = alerts.notify(rec, store, on_success=s.receiver.url)
                if not sent or not all(x.get("delivered") for x in sent):
                    raise RuntimeError(f"the success event was not delivered: {sent}")
            part("alert on_success", notify, lambda: fresh(run_id=uuid.uuid4().hex[:16]))
        if s.parts["tracing"] and s.spans is not None:
            from engine import tracing

            def emit(_: Any) -> None:
                if not tracing.emit(report):
                    raise RuntimeError("no span was emitted")
            part("span emit", emit)
            s.spans.take()
    try:
        results["imports, fresh process"] = {"runs": _import_costs(s.parts, max(1, min(3, n))), "error": None}
    except Exception as exc:  # noqa: BLE001
        results["imports, fresh process"] = {"runs": [], "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return results


def per_run_ms(costs: dict[str, dict[str, Any]], seconds: float, heartbeat: float) -> float:
    """Milliseconds the parts add to one on run of ``seconds`` (heartbeats by its length)."""
    ms = {k: _median_ms(v["runs"]) or 0.0 for k, v in costs.items()}
    beats = int(seconds // heartbeat) if heartbeat > 0 else 0
    once = (ms.get("history put, start", 0) + ms.get("history put, final", 0) + ms.get("store open, export", 0)
            + ms.get("usage (2 client.run)", 0) + ms.get("metrics textfile", 0) + ms.get("metrics gateway", 0)
            + ms.get("alert on_success", 0) + ms.get("span emit", 0))
    beat = ms.get("history put, heartbeat", 0) + ms.get("store open, export", 0) + ms.get("heartbeat progress", 0)
    return once + beats * beat


# ---------------------------------------------------------------------------------------------
# The suite


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_suite(ctx) -> None:
    """The ``operations`` suite of ``python -m benchmarks``."""
    import dask.config

    from benchmarks import datagen
    from benchmarks.suites import _dir_bytes, _read_files, rows_label
    from engine import config
    from jobs.groupby import QUESTIONS as JOBS

    p = ctx.profile
    quick = p.name == "quick"
    repeat = ctx.repeat if quick else max(REPEAT, ctx.repeat)
    rows = int(p.operations_rows)
    questions = tuple(p.operations_questions)
    data = datagen.g1(rows, out=ctx.data_root)
    files = len([f for f in os.listdir(data) if f.endswith(".parquet")])
    size = _dir_bytes(data, ".parquet")
    _read_files(data)
    parts = available()
    workdir = tempfile.mkdtemp(prefix="operations-", dir=ctx.scratch)
    setup = Setup(workdir, parts)
    heartbeat = float(config.get("history.heartbeat") or 0)
    params = {"rows": rows, "files": files, "dataset": os.path.basename(data), "repeat": repeat,
              "mode": "cluster", "heartbeat_s": heartbeat}
    on_parts = [k for k, v in setup.parts.items() if v]
    missing = [k for k, v in setup.parts.items() if not v]
    ctx.progress.line(f"operations: G1 {rows_label(rows)} ({size / 1e6:.0f} MB, {files} files) on the embedded "
                      f"cluster, {repeat} repeats; on = {', '.join(on_parts)}"
                      + (f"; not available: {', '.join(missing)}" if missing else ""))
    for note in setup.notes:
        ctx.progress.line(f"operations: {note}")
    medians: dict[str, dict[str, float]] = {}
    runs_of: dict[str, dict[str, list[float]]] = {}
    kept: tuple | None = None            # (report, record, question) of the on run with the most tasks
    try:
        with dask.config.set({"engine.local.max-bytes": 0}):      # as G1 1e7 runs: on the embedded cluster
            ctx.client()
            for on in (False, True):                               # worker imports, page cache, store, modules
                Runs(ctx, setup, JOBS[questions[0]], data).system(on)(False)
            for q in questions:
                runs = Runs(ctx, setup, JOBS[q], data)
                load0 = _load()
                m: Measured = harness.measure({OFF: runs.system(False), ON: runs.system(True)}, repeat,
                                              before=ctx.idle, keep_answers=False,
                                              on_run=lambda s, r, sec, q=q: ctx.progress.step(
                                                  f"{q} {s} {r + 1}/{repeat}", sec))
                load1 = _load()
                check = runs.check()
                _emit_question(ctx, q, m, check, params, setup, rows, size, load0, load1)
                if m.runs[ON] and m.runs[OFF]:
                    medians[q] = {"on": harness.median(m.runs[ON]), "off": harness.median(m.runs[OFF])}
                    runs_of[q] = {"on": list(m.runs[ON]), "off": list(m.runs[OFF])}
                if runs.kept is not None and (kept is None or sum(st.tasks for st in runs.kept[0].stages)
                                              > sum(st.tasks for st in kept[0].stages)):
                    kept = runs.kept + (q,)
            costs: dict[str, dict[str, Any]] = {}
            if kept is not None:
                n = 5 if quick else PART_REPEAT
                costs = part_costs(ctx, setup, kept[0], kept[1], n)
                _emit_parts(ctx, costs, kept, n)
        _emit_total(ctx, medians, runs_of, costs, heartbeat, params, setup)
    finally:
        setup.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _emit_question(ctx, q: str, m: Measured, check: dict, params: dict, setup: Setup, rows: int, size: int,
                   load0: list[float], load1: list[float]) -> None:
    on, off = m.runs.get(ON, []), m.runs.get(OFF, [])
    per_repeat = [a / b for a, b in zip(on, off) if b > 0]
    ratio = harness.median(on) / harness.median(off) if on and off and harness.median(off) else None
    notes = ["off: history off, no hooks, no tracer provider, no usage figures; on: every available part "
             "(see parts); both on the embedded cluster, force=True into a fresh output, taking turns"]
    for rec in harness.records(SUITE, q, m, params={**params, "question": q}, input_rows=rows, input_bytes=size,
                               notes=notes):
        system = rec["system"]
        rec["parts"] = setup.parts_of(system)
        rec["cpu_s"] = [x["cpu_s"] for x in m.extras.get(system, [])]
        rec["tasks"] = sorted({x["tasks"] for x in m.extras.get(system, [])})
        rec["load"] = {"before": load0, "after": load1}
        rec["check"] = check
        if system == ON:
            rec["ratio"] = round(ratio, 4) if ratio else None
            rec["ratios"] = {OFF: harness._round(harness.paired_ratio(on, off))}
            rec["ratio_runs"] = [round(x, 4) for x in per_repeat]
            rec["ratio_range"] = [round(min(per_repeat), 4), round(max(per_repeat), 4)] if per_repeat else None
            cpu_on, cpu_off = rec["cpu_s"], [x["cpu_s"] for x in m.extras.get(OFF, [])]
            rec["cpu_ratio"] = harness._round(harness.paired_ratio(cpu_on, cpu_off))
        ctx.emit(rec)
    if not check["ok"]:
        ctx.failures.append(f"{SUITE} {q}: check failed: {'; '.join(check['problems'])[:600]}")
    for system, err in m.errors.items():
        ctx.failures.append(f"{SUITE} {q} {system}: {err}")
    if on and off:
        spread = f" ({min(per_repeat):.3f}..{max(per_repeat):.3f})" if per_repeat else ""
        ctx.progress.done(f"{q}: off {harness.median(off):.3f}s, on {harness.median(on):.3f}s, on/off "
                          f"{ratio:.3f}{spread}{'' if check['ok'] else '  CHECK FAILED'} (load {load0[0]})")


def _emit_parts(ctx, costs: dict[str, dict[str, Any]], kept: tuple, n: int) -> None:
    report, record, q = kept
    tasks = sum(st.tasks for st in report.stages)
    cells = []
    for name, c in costs.items():
        ms = [round(x * 1000, 4) for x in c["runs"]]
        med = _median_ms(c["runs"])
        ctx.emit({"kind": "operations_part", "suite": SUITE, "part": name, "ms": med, "ms_runs": ms,
                  "min_ms": min(ms) if ms else None, "max_ms": max(ms) if ms else None, "n": len(ms),
                  "error": c["error"], "report_of": q, "tasks": tasks,
                  "both_modes": name == "record build", "once_per_process": name == "imports, fresh process"})
        if c["error"]:
            ctx.failures.append(f"{SUITE} part {name}: {c['error']}")
        cells.append(f"{name} {med:.2f}" if med is not None else f"{name} ERROR")
    ctx.progress.done(f"parts alone, ms (median of {n}; report of {q}, {tasks} tasks): " + "; ".join(cells))


def _emit_total(ctx, medians: dict, runs_of: dict, costs: dict, heartbeat: float, params: dict,
                setup: Setup) -> None:
    if not medians:
        ctx.failures.append(f"{SUITE}: no question was measured in both modes")
        return
    on_s = sum(v["on"] for v in medians.values())
    off_s = sum(v["off"] for v in medians.values())
    ratio = on_s / off_s if off_s else None
    k = min(min(len(r["on"]), len(r["off"])) for r in runs_of.values())
    sums = [sum(r["on"][i] for r in runs_of.values()) / sum(r["off"][i] for r in runs_of.values()) for i in range(k)]
    per_q: dict[str, dict[str, Any]] = {}
    for q, med in medians.items():
        pr = [a / b for a, b in zip(runs_of[q]["on"], runs_of[q]["off"]) if b > 0]
        predicted = None
        if costs:
            predicted = (med["off"] + per_run_ms(costs, med["on"], heartbeat) / 1000) / med["off"]
        per_q[q] = {"off_s": round(med["off"], 5), "on_s": round(med["on"], 5),
                    "ratio": round(med["on"] / med["off"], 4),
                    "range": [round(min(pr), 4), round(max(pr), 4)] if pr else None,
                    "predicted_ratio": round(predicted, 4) if predicted else None}
    predicted_total = None
    if costs:
        predicted_total = sum(v["off"] + per_run_ms(costs, v["on"], heartbeat) / 1000
                              for v in medians.values()) / off_s
    rec = {"kind": "operations_total", "suite": SUITE, "params": params, "questions": list(medians),
           "on_s": round(on_s, 5), "off_s": round(off_s, 5), "ratio": round(ratio, 4) if ratio else None,
           "ratio_runs": [round(x, 4) for x in sums],
           "ratio_range": [round(min(sums), 4), round(max(sums), 4)] if sums else None,
           "predicted_ratio": round(predicted_total, 4) if predicted_total else None,
           "target": TARGET, "met": bool(ratio is not None and ratio <= TARGET), "per_question": per_q,
           "parts": setup.parts_of(ON), "notes": list(setup.notes)}
    ctx.emit(rec)
    qs = ", ".join(f"{q} {v['ratio']:.3f} ({v['range'][0]:.3f}..{v['range'][1]:.3f})" if v["range"] else
                   f"{q} {v['ratio']:.3f}" for q, v in per_q.items())
    spread = f" (repeats {min(sums):.3f}..{max(sums):.3f})" if sums else ""
    ctx.progress.done(f"overall on/off {ratio:.3f}{spread}: on {on_s:.2f}s / off {off_s:.2f}s, target ≤ {TARGET} "
                      f"{'met' if rec['met'] else 'NOT met'}"
                      + (f"; predicted from the parts {predicted_total:.3f}" if predicted_total else "")
                      + f"; per question: {qs}")


# ---------------------------------------------------------------------------------------------
# Summary


def summary_lines(records: list[dict]) -> list[str]:
    """The suite's records as Markdown tables (empty if the run has none)."""
    total = next((r for r in records if r.get("kind") == "operations_total"), None)
    if total is None:
        return []
    out = ["| question | off s | on s | on/off | range over repeats | predicted |", "|---|---|---|---|---|---|"]
    for q, v in total["per_question"].items():
        rng = f"{v['range'][0]:.3f}..{v['range'][1]:.3f}" if v.get("range") else "-"
        pred = f"{v['predicted_ratio']:.3f}" if v.get("predicted_ratio") else "-"
        out.append(f"| {q} | {v['off_s']:.3f} | {v['on_s']:.3f} | {v['ratio']:.3f} | {rng} | {pred} |")
    rng = f"{total['ratio_range'][0]:.3f}..{total['ratio_range'][1]:.3f}" if total.get("ratio_range") else "-"
    pred = f"{total['predicted_ratio']:.3f}" if total.get("predicted_ratio") else "-"
    out.append(f"| **all** | {total['off_s']:.2f} | {total['on_s']:.2f} | **{total['ratio']:.3f}** | {rng} | {pred} |")
    parts = [r for r in records if r.get("kind") == "operations_part"]
    if parts:
        out += ["", "| part (alone) | ms | min..max |", "|---|---|---|"]
        for r in parts:
            if r.get("ms") is None:
                out.append(f"| {r['part']} | - | {r.get('error') or '-'} |")
            else:
                out.append(f"| {r['part']} | {r['ms']:.2f} | {r['min_ms']:.2f}..{r['max_ms']:.2f} |")
    return out


__all__ = ["run_suite", "available", "part_costs", "summary_lines", "Setup", "Pushgateway", "Receiver", "Spans",
           "TARGET"]
