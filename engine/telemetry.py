"""What a run tells the world: its record in the history, its metrics, its alerts, its spans.

:class:`Tracker` follows one call of :func:`engine.run` from its start to its end, whatever the end:
it writes a ``running`` record when the run starts (re-written by a heartbeat while it runs, with
progress and the newest checkpoint), and the final record when it ends — ``committed``,
``skipped``, ``failed``, ``interrupted`` or ``refused`` — then exports metrics
(:mod:`engine.metrics`), spans (:mod:`engine.tracing`) and alerts (:mod:`engine.alerts`), and writes
the HTML report when one was asked for (on failure too). None of these ever fails a run: a problem
is a warning on the ``engine`` logger.

A failed run's record names the user's code that raised: :func:`error_info` walks the exception
and its causes (a task's error travels from the worker with its traceback) and keeps the last
frame outside the engine, dask, distributed, pyarrow and the standard library
(``"jobs/wordcount.py:12"``), with the traceback text of those frames.

Ends that are easy to lose are recorded too: SIGTERM while a run holds a process's main thread
(:func:`sigterm_interrupts` turns it into :class:`engine.errors.Terminated`), runs still going in
other threads when the process is interrupted or exits (:func:`interrupt_live`), and a canary's
run, recorded apart as ``<job>:canary`` so that it counts in none of the job's SLIs, metrics or
alerts.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import platform
import re
import signal
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from . import config, history
from .redact import public_decisions, redact, redact_obj

log = logging.getLogger("engine")


@dataclass
class Hooks:
    """What a run exports when it ends (each None: the ``engine.*`` config default)."""

    report: str | None = None            # HTML report path (written whatever the end)
    metrics_file: str | None = None
    push_gateway: str | None = None
    on_failure: str | None = None
    on_success: str | None = None
    on_slo_breach: str | None = None

    def resolved(self) -> Hooks:
        return Hooks(self.report, config.get("metrics.file", self.metrics_file),
                     config.get("metrics.push-gateway", self.push_gateway),
                     config.get("alerts.on-failure", self.on_failure), config.get("alerts.on-success", self.on_success),
                     config.get("alerts.on-slo-breach", self.on_slo_breach))


# -- where the user's code raised -------------------------------------------------------------

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple({p + os.sep for p in (sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("purelib"),
                                            sysconfig.get_paths().get("platlib")) if p})


def _is_user_frame(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return False
    f = os.path.abspath(filename)
    if f.startswith(_ENGINE_DIR) or f.startswith(_LIBRARY_DIRS):
        return False
    return not any(part in f for part in (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}"))


def job_functions(job: Any) -> list[Any]:
    """The user's functions a job holds (every stage's, the joined and cogrouped jobs' too)."""
    found: list[Any] = []
    todo, seen = [job], set()
    while todo:
        j = todo.pop()
        if j is None or id(j) in seen:
            continue
        seen.add(id(j))
        for stage in getattr(j, "stages", ()) or ():
            fn = getattr(stage, "fn", None)
            while fn is not None and not hasattr(fn, "__code__") and hasattr(fn, "fn"):
                fn = fn.fn                      # wrappers keep the user's function as .fn
            if fn is not None:
                found.append(fn)
            todo.extend(other for _, other in getattr(stage, "others", ()) or ())
    return found


def _code_index(roots: list[Any] = ()) -> dict[str, list[tuple[str, int, int, Any]]]:
    """Function name → (file, first line, last line) of the code the user's modules define (their
    functions, methods and the functions nested in them). User functions travel to the tasks by value,
    and the serializer names their file ``<dynamic-code>`` while keeping names and line numbers: this
    index finds the real file again. Built only when a run fails."""
    index: dict[str, list[tuple[str, int, int, Any]]] = {}
    seen: set[int] = set()

    def add(code: Any) -> None:
        if id(code) in seen or not hasattr(code, "co_lines"):
            return
        seen.add(id(code))
        lines = [ln for _, _, ln in code.co_lines() if ln is not None]
        if lines:
            index.setdefault(code.co_name, []).append((code.co_filename, min(lines), max(lines), code))
        for const in code.co_consts:
            if hasattr(const, "co_lines"):
                add(const)

    def visit(obj: Any, depth: int = 0) -> None:
        code = getattr(getattr(obj, "__func__", obj), "__code__", None)
        if code is not None:
            add(code)
        elif isinstance(obj, type) and depth < 2:
            for member in list(vars(obj).values()):
                visit(member, depth + 1)
    namespaces = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if name == "__main__" or (f and _is_user_frame(f)):
            namespaces.append(getattr(mod, "__dict__", {}))
    for fn in roots:           # the job's functions, and their modules (which may not be in sys.modules)
        with contextlib.suppress(Exception):
            visit(fn)
            namespaces.append(fn.__globals__)
    done: set[int] = set()
    for ns in namespaces:
        if id(ns) in done:
            continue
        done.add(id(ns))
        with contextlib.suppress(Exception):
            for obj in list(ns.values()):
                visit(obj)
    return index


def _real_place(frame: traceback.FrameSummary, code: Any, index: dict | None) -> tuple[str, str | None]:
    """The file of a frame whose code came by value (``<dynamic-code>``), and its source line.

    The frame's own code object decides when it is at hand (its first line and bytecode equal one
    of the user's functions'); a frame rebuilt from another process keeps only its name and line, so
    the functions of that name whose lines cover it decide, and only when they all lie in one file
    (two functions of one name in different files: the frame stays unnamed rather than misnamed)."""
    if not frame.filename.startswith("<dynamic") or not index:
        return frame.filename, frame.line
    lineno = frame.lineno or 0
    candidates = [c for c in index.get(frame.name, ()) if c[1] <= lineno <= c[2] and _is_user_frame(c[0])]
    real = getattr(code, "co_code", None)
    if real is not None:
        exact = [c for c in candidates if c[3].co_firstlineno == getattr(code, "co_firstlineno", -1)
                 and c[3].co_code == real]
        if exact:
            candidates = exact
    files = {c[0] for c in candidates}
    if len(files) != 1:
        return frame.filename, frame.line
    import linecache
    filename = files.pop()
    return filename, linecache.getline(filename, lineno).strip() or None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (``cause`` of the engine's errors, ``__cause__``,
    ``__context__``), without repeats."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen) or len(seen) > 20:
            continue
        seen.append(e)
        todo.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return seen


def error_info(exc: BaseException, roots: list[Any] = (), *, index: dict | None = None) -> dict[str, Any]:
    """``{"type", "message", "location", "source", "traceback", "user_traceback"}`` of a run's error:
    ``location`` is the innermost frame of the user's own code among the exception and its causes
    (None if none). ``roots``: the job's functions (their modules need not be imported by name)."""
    location = source = None
    user_tb: list[str] = []
    for e in reversed(_chain(exc)):           # the original cause first
        frames = []
        for frame_obj, lineno in traceback.walk_tb(e.__traceback__):
            code = getattr(frame_obj, "f_code", None)
            f = traceback.FrameSummary(getattr(code, "co_filename", "?"), lineno, getattr(code, "co_name", "?"),
                                       lookup_line=False)
            if f.filename.startswith("<dynamic"):
                if index is None:
                    index = _code_index(list(roots))
                filename, line = _real_place(f, code, index)
                f = traceback.FrameSummary(filename, lineno, f.name, line=line)
            elif _is_user_frame(f.filename):
                import linecache
                f = traceback.FrameSummary(f.filename, lineno, f.name,
                                           line=linecache.getline(f.filename, lineno or 0).strip() or None)
            if _is_user_frame(f.filename):
                frames.append(f)
        if frames:
            last = frames[-1]
            location = f"{last.filename}:{last.lineno}"
            source = (last.line or "").strip() or None
            try:
                said = f"{type(e).__name__}: {e}\n"
            except Exception:  # noqa: BLE001 - an exception whose str() fails
                said = f"{type(e).__name__}\n"
            user_tb = traceback.format_list(frames) + [said]
            break
    try:
        said = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        said = f"<{type(exc).__name__} whose message cannot be shown>"
    if isinstance(exc, KeyboardInterrupt):
        message = said or "interrupted (Ctrl-C)"
    else:
        message = " ".join(said.split()) or type(exc).__name__
    try:
        full = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001
        full = ""
    return redact_obj({"type": type(exc).__name__, "message": redact(message), "location": location,
                       "source": source, "function": None, "user_traceback": "".join(user_tb)[-8000:],
                       "traceback": full[-16000:]})


def classify(exc: BaseException | None, rep: Any, skipped: bool = False) -> str:
    """The status a run's end gets in the history: ``refused`` when the engine declined to run or to
    publish (the output exists, another run holds it, a change gate tripped), ``interrupted`` for
    Ctrl-C and SIGTERM, ``failed`` for every other error (a malformed job and unreadable input too:
    the pipeline did not deliver)."""
    if exc is None:
        return "skipped" if skipped else "committed"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    from .errors import ChangeGateError, ConcurrentRunError, OutputExistsError
    if isinstance(exc, (ChangeGateError, OutputExistsError)):
        return "refused"
    ran = rep is not None and any(s.attempts or s.tasks for s in rep.stages)
    if not ran and isinstance(exc, ConcurrentRunError):
        return "refused"
    return "failed"


def process_cpu() -> float:
    """CPU seconds (user + system) this process has used, all its threads included."""
    t = os.times()
    return t.user + t.system


def _resident_bytes() -> int:
    """This process's resident memory now (0 if unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def versions() -> dict[str, str]:
    from ._version import ENGINE_VERSION
    out = {"engine": ENGINE_VERSION, "python": platform.python_version()}
    for name in ("pyarrow", "dask", "distributed", "fsspec", "s3fs"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__version__", None):
            out[name] = str(mod.__version__)
    return out


def _mask_hook(value: Any) -> Any:
    """A hook or gateway setting as the record keeps it: a URL without its path and query (webhook
    URLs carry their token there), a command without its arguments."""
    if not isinstance(value, str) or not value:
        return value
    if "://" in value:
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0].split("@")[-1]
        return f"{scheme}://{host}/…" if "/" in rest.split("@")[-1] else f"{scheme}://{host}"
    return value.split()[0] + (" …" if len(value.split()) > 1 else "")


def engine_settings() -> dict[str, Any]:
    """The engine.* settings in force (plain values; hook URLs and commands masked)."""
    settings: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        if "dask.config" in sys.modules:
            import dask.config
            settings = json.loads(json.dumps(dask.config.get("engine", default={}) or {}, default=str))
        else:
            settings = json.loads(json.dumps(config.DEFAULTS, default=str))
    for section, keys in (("alerts", ("on-failure", "on-success", "on-slo-breach")), ("metrics", ("push-gateway",))):
        block = settings.get(section)
        if isinstance(block, dict):
            for k in keys:
                if k in block:
                    block[k] = _mask_hook(block[k])
    return settings


@contextlib.contextmanager
def sigterm_interrupts():
    """While a run runs in the main thread of a process that left SIGTERM at its default (die at
    once), turn SIGTERM into :class:`engine.errors.Terminated`, so the run unwinds and is recorded."""
    from .errors import Terminated
    installed = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(Exception):
            previous = signal.getsignal(signal.SIGTERM)
            if previous == signal.SIG_DFL:
                def _raise(signum: int, frame: Any) -> None:
                    raise Terminated()
                signal.signal(signal.SIGTERM, _raise)
                installed = True
    try:
        yield
    finally:
        if installed:
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGTERM, previous)


_LIVE: set[Tracker] = set()          # runs of this process that have not ended (see interrupt_live)
_LIVE_LOCK = threading.Lock()


def interrupt_live(exc: BaseException | None = None) -> int:
    """End every run of this process still going as ``interrupted`` (a Ctrl-C or SIGTERM that stops a
    process whose runs go on in other threads, such as a parallel backfill's, or the interpreter
    exiting under them); returns how many. Their records are final; a run that ends later
    overwrites its own record with its real end."""
    from .errors import Terminated
    with _LIVE_LOCK:
        live = list(_LIVE)
    for tracker in live:
        with contextlib.suppress(Exception):
            tracker.finish(exc=exc if exc is not None else Terminated())
    return len(live)


def _at_exit() -> None:
    if _LIVE:
        interrupt_live(KeyboardInterrupt("the process exited while the run was running"))


atexit.register(_at_exit)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class Tracker:
    """One run's record, from ``running`` to its end (see the module docstring).

    ``exports=False`` (a canary run): only the record, under the job name ``<job>:canary``, so that
    a canary's success neither counts as the job's nor moves its metrics or alerts."""

    def __init__(self, job: Any, output: str, *, logical_date: str | None = None, started: float | None = None,
                 hooks: Hooks | None = None, settings: dict | None = None, exports: bool = True,
                 name: str | None = None) -> None:
        job_name = getattr(job, "name", None)
        self.job_name = name or (job_name if isinstance(job_name, str) and job_name else f"<{type(job).__name__}>")
        if not exports:
            self.job_name += ":canary"
        self.job = job
        slo = getattr(job, "slo", None)
        self.slo = slo.to_dict() if hasattr(slo, "to_dict") else (slo if isinstance(slo, dict) else None)
        self.exports = exports
        self.hooks = (hooks or Hooks()).resolved() if exports else Hooks()
        self.record_id = history.new_record_id()
        self.output = output if "://" in str(output) else os.path.abspath(str(output))
        self.logical_date = logical_date if logical_date and _DATE.fullmatch(str(logical_date)) else None
        self.started = started if started is not None else time.time()
        self.settings = settings or {}
        self.rep: Any = None
        self.finished: dict | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._first: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- while it runs -------------------------------------------------------------------------
    def _base(self) -> dict[str, Any]:
        rec = history.base_record(self.record_id, self.job_name, self.output, logical_date=self.logical_date,
                                  started=self.started)
        rec["slo"] = json.dumps(self.slo) if self.slo else None
        return rec

    def begin(self) -> None:
        """Write the ``running`` record (in the background: a slow history store does not delay the run)."""
        with _LIVE_LOCK:
            _LIVE.add(self)
        rec = self._base()
        self._first = threading.Thread(target=history.put, args=(rec,), name="engine-record", daemon=True)
        self._first.start()

    def attach(self, rep: Any) -> None:
        """The run's report, once it exists; starts the heartbeat."""
        self.rep = rep
        rep.record_id = self.record_id
        rep.logical_date = self.logical_date
        rep.settings = {"arguments": self.settings, "engine": engine_settings()}
        rep.versions = versions()
        interval = float(config.get("history.heartbeat") or 0)
        if interval > 0 and self._beat is None and history.url() is not None:
            self._beat = threading.Thread(target=self._heartbeat, args=(interval,), name="engine-heartbeat",
                                          daemon=True)
            self._beat.start()

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rep = self.rep
            if rep is None:
                continue
            with contextlib.suppress(Exception):
                rec = self._base()
                tasks = list(rep.tasks)
                done = [t for t in tasks if t.status == "ok"]
                rec.update({"run_id": rep.run_id, "fingerprint": rep.fingerprint, "updated": time.time(),
                            "checkpoint_at": max((t.stop for t in done), default=None),
                            "tasks": sum(s.tasks for s in list(rep.stages)), "attempts": len(tasks),
                            "input_files": rep.input_files, "input_bytes": rep.input_bytes,
                            "message": f"{len(done)} task(s) done"})
                with self._lock:
                    if self.finished is None:
                        history.put(rec)
                        self._export("progress", rec)

    # -- at the end ----------------------------------------------------------------------------
    def finish(self, *, result: Any = None, exc: BaseException | None = None) -> dict[str, Any]:
        """Write the final record and export it; returns the record (redacted). Never raises: a
        problem building the full record still writes a minimal one."""
        self._stop.set()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        try:
            rec = self._final(result, exc)
        except Exception as problem:  # noqa: BLE001 - the record of a run must not fail the run
            rec = self._base()
            rec.update({"status": classify(exc, None, bool(getattr(result, "skipped", False))),
                        "finished": time.time(), "updated": time.time(),
                        "seconds": time.time() - self.started,
                        "error_type": type(exc).__name__ if exc is not None else None,
                        "message": f"(the run's record is incomplete: {type(problem).__name__}: {problem})"})
        report = rec.pop("report", None)            # redacted already, as a report (RunReport.to_dict)
        rec = redact_obj(rec)
        rec["report"] = report
        if self._first is not None:
            self._first.join(timeout=10)           # the `running` record must not land after this one
        with self._lock:
            self.finished = rec
        history.put(rec, redacted=True)
        if self.rep is not None and self.hooks.report:
            try:
                self.rep.to_html(self.hooks.report)
            except Exception as e:  # noqa: BLE001 - the report never fails a run
                log.warning("could not write the HTML report to %s: %s", self.hooks.report, redact(str(e)))
        if self.exports:
            self._export("final", rec)
        return rec

    def _final(self, result: Any, exc: BaseException | None) -> dict[str, Any]:
        from .report import RunReport
        rep = self.rep
        if rep is None:
            rep = RunReport(self.job_name, "", "", start=self.started, output=self.output)
            self.attach(rep)
        skipped = bool(getattr(result, "skipped", False))
        status = classify(exc, rep, skipped)
        rep.status = status
        if not rep.stop or exc is not None:
            rep.stop = time.time()
        roots = job_functions(self.job)
        index: dict | None = None
        pending = rep.__dict__.pop("retry_exceptions", None) or []
        for entry, retry_exc in pending:                  # where each retried attempt raised
            with contextlib.suppress(Exception):
                if index is None:
                    index = _code_index(roots)
                entry["location"] = error_info(retry_exc, roots, index=index)["location"]
        if exc is not None:
            rep.error = error_info(exc, roots, index=index)
            rep.message = f"{rep.error['type']}: {rep.error['message']}"
        self._usage(rep)
        rec = record_from_report(rep, self.record_id, key_values=bool(config.get("report.key-values")))
        rec.update({k: v for k, v in self._base().items() if k not in rec or rec[k] is None})
        rec["job"], rec["output"] = self.job_name, self.output     # the live output (not a staging one), absolute
        rec["status"], rec["updated"] = status, time.time()
        rec["deadline_missed"] = self._deadline_missed(rec)
        rec["deadline_misses"] = rec["deadline_missed"] or 0          # the metrics' name for it
        return rec

    def _deadline_missed(self, rec: dict[str, Any]) -> int | None:
        """1 when the job declares a deadline and this run ends after it without having delivered the
        output for its day by then; None without a deadline."""
        if not self.slo or not (self.slo.get("deadline") if isinstance(self.slo, dict) else None):
            return None
        try:
            import datetime as dt

            from . import slo as slo_mod
            objectives = slo_mod.Objectives.from_obj(self.slo)
            if rec.get("logical_date"):
                day, logical = dt.date.fromisoformat(str(rec["logical_date"])), True
            else:
                from zoneinfo import ZoneInfo
                day = dt.datetime.fromtimestamp(rec["started"], ZoneInfo(objectives.timezone or "UTC")).date()
                logical = False
            due = slo_mod.deadline_at(day, objectives, logical=logical)
        except Exception:  # noqa: BLE001 - a deadline that cannot be judged is not a miss
            return None
        return int(float(rec.get("finished") or time.time()) > due)

    def _usage(self, rep: Any) -> None:
        usage = dict(rep.usage or {})
        threads = int((rep.cluster or {}).get("threads") or 0)
        usage.setdefault("cpu_seconds", round(sum(t.cpu for t in rep.tasks), 6))
        if threads:
            usage["thread_seconds"] = round(threads * rep.duration, 6)
            mem = int((rep.cluster or {}).get("memory_limit") or 0) * threads
            if not mem and (rep.cluster or {}).get("local"):
                mem = _resident_bytes()         # in the driver: no worker memory limit, what it holds
            if mem:
                usage["memory_gb_seconds"] = round(mem / 2 ** 30 * rep.duration, 6)
        done = [t.stop for t in rep.tasks if t.status == "ok"]
        if done:
            usage["checkpoint_at"] = max(done)
        rep.usage = usage

    def _export(self, what: str, rec: dict[str, Any]) -> None:
        h = self.hooks
        store = None
        with contextlib.suppress(Exception):
            store = history.open_store()
        if what == "progress":
            if h.push_gateway or h.metrics_file:
                with contextlib.suppress(Exception):
                    from . import metrics
                    progress = getattr(metrics, "progress", None)
                    if progress is not None:
                        progress(rec, gateway=h.push_gateway, textfile=h.metrics_file)
            return
        if h.metrics_file or h.push_gateway:
            try:
                from . import metrics
                metrics.export(rec, store, textfile=h.metrics_file, gateway=h.push_gateway)
            except Exception as e:  # noqa: BLE001 - metrics never fail a run
                log.warning("could not export the run's metrics: %s", redact(str(e)))
        with contextlib.suppress(ImportError):
            from . import tracing
            try:
                tracing.emit(self.rep)
            except Exception as e:  # noqa: BLE001
                log.warning("could not emit the run's trace spans: %s", redact(str(e)))
        if h.on_failure or h.on_success or h.on_slo_breach:
            try:
                from . import alerts
                breaches: list[str] = []
                if h.on_slo_breach and store is not None and self.slo:
                    from . import slo as slo_mod
                    breaches = slo_mod.breaches(rec, store, slo_mod.Objectives.from_obj(self.slo))
                alerts.notify(rec, store, on_failure=h.on_failure, on_success=h.on_success,
                              on_slo_breach=h.on_slo_breach, breaches=breaches)
            except Exception as e:  # noqa: BLE001 - alerts never fail a run
                log.warning("could not deliver the run's alerts: %s", redact(str(e)))


def _usage_totals(rep) -> dict[str, Any]:
    tasks = rep.tasks
    failed = [t for t in tasks if t.status == "failed"]
    return {
        "tasks": sum(s.tasks for s in rep.stages),
        "attempts": sum(s.attempts for s in rep.stages) or len([t for t in tasks if t.worker != "?"]),
        "task_failures": len(failed),
        "failed_tasks": len({(t.stage, t.partition) for t in failed}),
        "retries": sum(s.retries for s in rep.stages),
        "speculative": sum(s.speculative for s in rep.stages),
        "resumed": sum(s.resumed for s in rep.stages),
        "cpu_seconds": round(sum(t.cpu for t in tasks), 6),
    }


def record_from_report(rep, record_id: str, *, key_values: bool = False) -> dict[str, Any]:
    """The history record of a run, from its report."""
    d = rep.to_dict()
    d["skew"] = public_decisions(rep.skew, key_values)
    usage = rep.usage or {}
    err = rep.error or {}
    rec = {
        "record_id": rep.record_id or record_id, "run_id": rep.run_id, "job": rep.job, "fingerprint": rep.fingerprint,
        "status": rep.status, "started": rep.start, "finished": rep.stop or None,
        "seconds": rep.duration, "updated": rep.stop or rep.start,
        "input_files": rep.input_files, "input_bytes": rep.input_bytes,
        "input_rows": sum(s.input_rows for s in rep.stages),
        "output": rep.output, "output_rows": rep.output_rows, "output_bytes": rep.output_bytes,
        "output_files": rep.output_files, "message": rep.message, "logical_date": rep.logical_date,
        "error_type": err.get("type"), "error_location": err.get("location"),
        "workers": (rep.cluster or {}).get("workers"), "threads": (rep.cluster or {}).get("threads"),
        "rejected": int(getattr(rep, "rejected", 0) or usage.get("rejected") or 0),
        "worker_cpu_seconds": usage.get("worker_cpu_seconds"), "thread_seconds": usage.get("thread_seconds"),
        "memory_gb_seconds": usage.get("memory_gb_seconds"), "checkpoint_at": usage.get("checkpoint_at"),
        "report": json.dumps(d, default=str),            # (to_dict() has redacted its strings)
        "counters": json.dumps(rep.counters, sort_keys=True) if getattr(rep, "counters", None) else None,
    }
    rec.update(_usage_totals(rep))
    return rec


__all__ = ["Tracker", "Hooks", "record_from_report", "error_info", "classify", "sigterm_interrupts"]
