"""Backfills: a job run once per logical date over a range of dates, into one partitioned output.

>>> from engine.backfill import backfill
>>> result = backfill(daily, "events/", "agg/", "2026-11-01", "2026-11-30", partition_by=["date"],
...                   where="date = '{date}'")                      # doctest: +SKIP
>>> print(result)                                                   # doctest: +SKIP
>>> result.exit_code                                                # doctest: +SKIP

What it promises, step by step:

1. **One run per date.** For each day ``d`` from ``start`` to ``end`` inclusive, :func:`engine.run`
   with ``date=d``, ``mode="overwrite-partitions"``, the given ``partition_by`` and ``where`` (a
   ``where`` string usually says ``"date = '{date}'"``: ``{date}`` stands for ``d`` and the input's
   other Hive partitions are not even listed into the run's snapshot). Each run replaces exactly the
   partitions it produced, in one manifest swap: a reader sees a date's old partitions or its new
   ones, never a mix. Each date's run should write its own partitions (``partition_by`` holds the
   column that carries the date); when a later date's run replaces an earlier date's partitions,
   the result says so in its ``warnings``.
2. **Skips are cheap.** A date whose partitions this job already committed from the same input
   snapshot (same job fingerprint and snapshot digest as the manifest's ``dates`` record) is a
   no-op of :func:`engine.run` (``skipped``): the input is listed for that date only, nothing is
   executed, no lock is taken. ``force=True`` recomputes every date.
3. **Failures are per date.** A date that fails is recorded with its one-paragraph error and the
   backfill goes on with the next, unless ``fail_fast=True`` (then the remaining dates are "not
   run"). :attr:`BackfillResult.exit_code` is 0 when every date committed or was skipped, else 1.
4. **One backfill per output.** A backfill holds the lock ``OUT/_backfill`` for its whole length
   (:func:`engine.lock.output_lock`: a ``flock`` that dies with its process on local disks, a renewed
   lease on S3), so a second backfill over the same output fails at once with
   :class:`~engine.errors.ConcurrentRunError` naming the holder, or, with ``wait=SECONDS``, polls
   until the first one ends. Single runs of the job still serialize with each date's run on the
   output's own lock (a date that meets one is retried within ``wait``).
5. **Resume = the same call again.** Dates committed before a kill are skipped; the date that was
   running resumes (each run gets ``resume=True``: the tasks it had finished are reused from its
   journal, as its run id is the same for the same job, input snapshot and date).
6. **Parallel dates.** ``parallel=N`` runs up to N dates at once on one cluster (one shared client;
   the embedded cluster or the driver's thread pool serve all of them). The output's lock admits
   one writer, so each date commits into its own staging output ``OUT/_backfill/<date>``
   (``engine.run(..., stage_to=)``) and is published from there (:func:`engine.publish.publish`,
   one at a time, each an atomic partition replace); a kill leaves the live output at its old or
   new generation, and a staged date not yet published is computed again by the next backfill.
7. **Ctrl-C / SIGTERM** stops the backfill: in parallel mode nothing more is published once it
   returns; the ``KeyboardInterrupt`` propagates and carries the summary so far as its
   ``backfill_result`` attribute (the CLI prints it and exits 130 or 143).

This module never imports dask.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import importlib
import json
import logging
import os
import posixpath
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .context import parse_date
from .datasets import filesystem, is_local
from .errors import ConcurrentRunError, EngineError, JobDefinitionError
from .redact import redact

log = logging.getLogger("engine")

LOCK_DIR = "_backfill"           # OUT/_backfill: the backfill's lock, its holder record, parallel staging
_HOLDER = "_holder.json"
STATUSES = ("committed", "skipped", "failed", "interrupted", "not run")
MAX_DATES = 100_000


@dataclass
class DateResult:
    """What happened to one logical date of a backfill."""

    date: str
    status: str = "not run"      # committed | skipped | failed | interrupted | not run
    rows: int | None = None      # rows the date's partitions hold (written now, or earlier when skipped)
    partitions: list[str] = field(default_factory=list)
    seconds: float | None = None
    run_id: str | None = None
    error: str | None = None     # the one-paragraph reason of a failure (type: message)
    resumed: int = 0             # tasks reused from an interrupted earlier run of this date
    generation: int | None = None  # the live manifest generation that holds this date


@dataclass
class BackfillResult:
    """The summary of a backfill: one :class:`DateResult` per date, in date order.

    ``print(result)`` shows the table, ``result.to_dict()`` is plain JSON values, a notebook renders
    ``_repr_html_``. ``exit_code``: 0 every date committed or skipped, 1 otherwise (failed, not run
    or interrupted dates).
    """

    job: str
    output: str
    start: str
    end: str
    dates: list[DateResult]
    parallel: int = 1
    seconds: float = 0.0
    interrupted: str | None = None       # "interrupted" (SIGINT) or "terminated" (SIGTERM) when stopped
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, date: Any) -> DateResult:
        key = parse_date(date)
        for d in self.dates:
            if d.date == key:
                return d
        raise KeyError(date)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for d in self.dates if d.status == s) for s in STATUSES}

    @property
    def ok(self) -> bool:
        return all(d.status in ("committed", "skipped") for d in self.dates) and self.interrupted is None

    @property
    def failed(self) -> list[DateResult]:
        return [d for d in self.dates if d.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def _headline(self) -> str:
        c = self.counts()
        parts = [f"{c[s]} {s}" for s in STATUSES if c[s] or s in ("committed", "skipped", "failed")]
        what = f"backfill of job {self.job!r} into {self.output}: {self.start} .. {self.end} ({len(self.dates)} date(s)"
        what += f", {self.parallel} at a time" if self.parallel > 1 else ""
        stopped = f"; {self.interrupted}" if self.interrupted else ""
        return f"{what}): {', '.join(parts)} in {self.seconds:.2f}s{stopped}"

    def rows(self) -> list[dict[str, Any]]:
        """The table's rows as plain values (what ``__str__`` and ``_repr_html_`` show)."""
        out = []
        for d in self.dates:
            out.append({"date": d.date, "status": d.status,
                        "rows": "-" if d.rows is None else f"{d.rows:,}",
                        "partitions": _partitions_cell(d.partitions) if d.status in ("committed", "skipped") else "-",
                        "seconds": "-" if d.seconds is None else f"{d.seconds:.2f}",
                        "run": (d.run_id or "-")[:12],
                        "note": (d.error or "") if d.status == "failed" else
                        (f"resumed {d.resumed} task(s)" if d.resumed else (d.error or ""))})
        return out

    def __str__(self) -> str:
        rows = self.rows()
        cols = ["date", "status", "rows", "partitions", "seconds", "run"]
        width = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
        right = {"rows", "seconds"}

        def fmt(r: dict) -> str:
            cells = [r[c].rjust(width[c]) if c in right else r[c].ljust(width[c]) for c in cols]
            note = r.get("note") or ""
            return "  ".join(cells + ([_short(note, 100)] if note else [])).rstrip()

        lines = [self._headline(), fmt({c: c for c in cols} | {"note": "note"})]
        lines += [fmt(r) for r in rows]
        for d in self.failed:
            lines.append(f"  {d.date} failed: {d.error}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        if self.failed:
            lines.append("  fix what failed and run the same command again: committed dates are skipped")
        elif not self.ok:
            lines.append("  run the same command again to finish: committed dates are skipped, an interrupted date "
                         "resumes from the tasks it finished")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "output": redact(self.output), "from": self.start, "to": self.end,
                "parallel": self.parallel, "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
                "exit_code": self.exit_code, "counts": self.counts(), "warnings": list(self.warnings),
                "dates": [{**asdict(d), "seconds": None if d.seconds is None else round(d.seconds, 3)}
                          for d in self.dates]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def _repr_html_(self) -> str:
        colour = {"committed": "#1a7f37", "skipped": "#57606a", "failed": "#cf222e", "interrupted": "#9a6700",
                  "not run": "#9a6700"}
        cols = ["date", "status", "rows", "partitions", "seconds", "run", "note"]
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(
                f"<td style='color:{colour.get(r['status'], 'inherit')}'>{html.escape(r[c])}</td>" if c == "status"
                else f"<td><code>{html.escape(r[c])}</code></td>" if c == "run"
                else f"<td>{html.escape(_short(r[c], 200))}</td>" for c in cols) + "</tr>"
            for r in self.rows())
        notes = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        return (f"<div><p>{html.escape(self._headline())}</p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>" + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _partitions_cell(parts: Sequence[str]) -> str:
    if not parts:
        return "0"
    return parts[0] if len(parts) == 1 else f"{len(parts)} ({parts[0]}, …)"


def dates_between(start: Any, end: Any) -> list[str]:
    """The ISO dates from ``start`` to ``end`` inclusive."""
    a, b = parse_date(start, "start"), parse_date(end, "end")
    if a is None or b is None:
        raise JobDefinitionError("a backfill needs both a first and a last date (start=, end=; --from, --to)")
    first, last = _dt.date.fromisoformat(a), _dt.date.fromisoformat(b)
    if last < first:
        raise JobDefinitionError(f"the backfill's last date {b} is before its first date {a}; swap them")
    n = (last - first).days + 1
    if n > MAX_DATES:
        raise JobDefinitionError(f"{a} .. {b} is {n:,} dates; a backfill runs at most {MAX_DATES:,}")
    return [(first + _dt.timedelta(days=i)).isoformat() for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The backfill lock


@contextlib.contextmanager
def backfill_lock(fs, out: str, *, wait: float | None = None, what: str = "") -> Iterator[None]:
    """Hold ``OUT/_backfill``'s lock for the block: one backfill per output.

    Another backfill holding it: ConcurrentRunError naming it at once, or with ``wait`` seconds,
    polls (every 0.5 s, then up to 5 s) until it is free or the time is up.
    """
    from .lock import output_lock
    where = posixpath.join(out, LOCK_DIR)
    deadline = None if wait is None else time.monotonic() + max(0.0, float(wait))
    delay, announced = 0.5, False
    while True:
        try:
            cm = output_lock(fs, where)
            cm.__enter__()
            break
        except ConcurrentRunError as exc:
            holder = _holder(fs, where)
            message = (f"another backfill is running over {out}{holder or ' (' + _lock_text(exc) + ')'}; wait for it "
                       "to end (wait=SECONDS, --wait SECONDS), or stop it and run this one again")
            if deadline is None:
                raise ConcurrentRunError(message) from None
            if time.monotonic() >= deadline:
                raise ConcurrentRunError(f"{message} (waited {wait:g}s)") from None
            if not announced:
                log.warning("waiting up to %gs: %s", wait, message.split(";")[0])
                announced = True
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 5.0)
    try:
        _write_holder(fs, where, what)
        yield
    finally:
        with contextlib.suppress(Exception):
            fs.rm_file(posixpath.join(where, _HOLDER))
        cm.__exit__(None, None, None)


def _lock_text(exc: BaseException) -> str:
    text = str(exc)
    start = text.find("held by")
    if start >= 0:
        return text[start:].split(")")[0]
    return "its lock is taken"


def _write_holder(fs, where: str, what: str) -> None:
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
           "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with contextlib.suppress(Exception):
        if is_local(fs):
            os.makedirs(where, exist_ok=True)
        with fs.open(posixpath.join(where, _HOLDER), "wb") as f:
            f.write(json.dumps(doc).encode())


def _holder(fs, where: str) -> str:
    """`` (pid N on HOST, dates A .. B, since T)`` from the holder's record, or ""."""
    try:
        doc = json.loads(fs.cat_file(posixpath.join(where, _HOLDER)))
    except Exception:  # noqa: BLE001 - not written yet, or unreadable: the lock's own text serves
        return ""
    if not isinstance(doc, dict):
        return ""
    bits = [f"pid {doc.get('pid')} on {doc.get('host')}"]
    if doc.get("what"):
        bits.append(str(doc["what"]))
    if doc.get("since"):
        bits.append(f"since {doc['since']}")
    return " (" + ", ".join(bits) + ")"


# ---------------------------------------------------------------------------------------------
# The backfill


ProgressFn = Callable[[DateResult], None]


def backfill(job: Any, input: Any, output: str, start: Any, end: Any, *, partition_by: Sequence[str] | str,
             where: Any = None, parallel: int = 1, force: bool = False, fail_fast: bool = False,
             cluster: Any = None, storage_options: dict | None = None, progress: ProgressFn | None = None,
             wait: float | None = None, **run_options: Any) -> BackfillResult:
    """Run ``job`` once per logical date from ``start`` to ``end`` inclusive into ``output``.

    ``partition_by``: the output's Hive partition columns (each date's run replaces the partitions it
    produces; include the column that carries the date). ``where``: the input rows of a date, usually
    ``"date = '{date}'"`` (``{date}`` is the date being run). ``parallel``: how many dates run at
    once (default 1, in date order). ``force``: recompute dates already committed. ``fail_fast``:
    stop at the first failed date. ``wait``: seconds to wait for another backfill of the same output
    to end (default: refuse at once). ``progress(date_result)`` is called as each date ends.
    ``run_options`` go to every :func:`engine.run` (``speculation``, ``skew``, ``shuffle_dir``,
    ``partition_size``, ``format``, ``map_combine``, ...).

    Returns a :class:`BackfillResult`; raises only for what stops the whole backfill (bad arguments,
    the lock, a damaged output manifest, Ctrl-C).
    """
    from .job import Job
    t0 = time.time()
    if not isinstance(job, Job):
        raise JobDefinitionError(f"backfill() expects an engine.Job, got {type(job).__name__}")
    days = dates_between(start, end)
    cols = [partition_by] if isinstance(partition_by, str) else list(partition_by or ())
    cols = [c.strip() for col in cols for c in str(col).split(",") if c.strip()]
    if not cols:
        raise JobDefinitionError("a backfill replaces partitions of a partitioned output: pass partition_by=[...] "
                                 "(--partition-by), e.g. the date column")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise JobDefinitionError(f"parallel= is how many dates run at once, a whole number >= 1; got {parallel!r}")
    for name in ("date", "mode", "stage_to", "resume", "canary", "max_change", "input", "output"):
        if name in run_options:
            raise JobDefinitionError(f"backfill() sets {name}= of each date's run itself; do not pass it")
    if isinstance(where, str) and "{date}" not in where:
        log.warning("the where condition %r does not mention {date}: every date's run reads the same input rows",
                    where)
    fs, out = filesystem(output, storage_options)
    options = dict(run_options, cluster=cluster, storage_options=storage_options, partition_by=cols, where=where,
                   force=force)
    result = BackfillResult(job.name, output, days[0], days[-1], [DateResult(d) for d in days],
                            parallel=min(parallel, len(days)))
    what = f"dates {days[0]} .. {days[-1]}"
    with backfill_lock(fs, out, wait=wait, what=what):
        from .commit import check_output
        check_output(fs, out, "overwrite-partitions")     # a damaged manifest or foreign files stop it here
        wait_until = None if wait is None else time.monotonic() + float(wait)
        runner = _Sequential if result.parallel == 1 else _Parallel
        try:
            runner(job, input, output, options, result, progress, fail_fast, wait_until).run()
        except KeyboardInterrupt as exc:
            # the CLI turns SIGTERM into a KeyboardInterrupt subclass that says so
            result.interrupted = "terminated" if "SIGTERM" in str(exc) else "interrupted"
            exc.backfill_result = result          # type: ignore[attr-defined]
            raise
        finally:
            result.seconds = time.time() - t0
            _check_overlaps(fs, out, result)
            _remove_stale_staging(fs, out, result)
    return result


def _one_paragraph(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(redact(str(exc)).split()) or type(exc).__name__}"


class _Sequential:
    """Dates one after another in the calling thread (Ctrl-C unwinds the running date's run)."""

    def __init__(self, job, input, output: str, options: dict, result: BackfillResult, progress: ProgressFn | None,
                 fail_fast: bool, wait_until: float | None) -> None:
        self.job, self.input, self.output, self.options = job, input, output, options
        self.result, self.progress, self.fail_fast, self.wait_until = result, progress, fail_fast, wait_until

    def run(self) -> None:
        for d in self.result.dates:
            d.status = "interrupted"           # until it ends, one way or another
            self.run_date(d, stage_to=None)
            self.report(d)
            if d.status == "failed" and self.fail_fast:
                break

    def report(self, d: DateResult) -> None:
        detail = ""
        if d.status == "failed":
            detail = f" ({d.error})"
        elif d.rows is not None:
            detail = f" ({d.rows:,} rows, {len(d.partitions)} partition(s), {d.seconds or 0:.2f}s)"
        log.info("%s: %s%s", d.date, d.status, detail)
        if self.progress is not None:
            with contextlib.suppress(Exception):
                self.progress(d)

    def run_date(self, d: DateResult, stage_to: str | None) -> Any:
        """Run one date (retrying within ``wait`` while a single run holds the output); fills ``d``."""
        from .runner import run
        t = time.time()
        while True:
            try:
                r = run(self.job, self.input, self.output, mode="overwrite-partitions", date=d.date, resume=True,
                        stage_to=stage_to, **{"progress": False, **self.options})   # one line per date instead
                break
            except ConcurrentRunError as exc:
                if self.wait_until is None or time.monotonic() >= self.wait_until:
                    d.status, d.error, d.seconds = "failed", _one_paragraph(exc), time.time() - t
                    return None
                log.info("%s: the output is busy (%s); trying again", d.date, _short(str(exc), 120))
                time.sleep(min(2.0, max(0.0, self.wait_until - time.monotonic())))
            except EngineError as exc:
                d.status, d.error, d.seconds = "failed", _one_paragraph(exc), time.time() - t
                return None
            except Exception as exc:  # noqa: BLE001 - the user's code failed in the driver; the date fails
                d.status, d.error, d.seconds = "failed", _one_paragraph(exc), time.time() - t
                return None
        d.seconds = time.time() - t
        d.run_id = r.run_id
        # a staged date is committed once published (_Parallel.run_staged)
        d.status = "skipped" if r.skipped else "committed" if stage_to is None else d.status
        d.resumed = sum(getattr(s, "resumed", 0) for s in r.report.stages)
        manifest = r.manifest
        rec = ((manifest.doc.get("dates") or {}).get(d.date) or {}) if manifest is not None else {}
        d.partitions = list(rec.get("partitions") or [])
        d.rows = rec.get("rows", r.report.output_rows if not r.skipped else None)
        if d.rows is None and manifest is not None:
            d.rows = sum((manifest.doc.get("partitions") or {}).get(p, {}).get("rows", 0) for p in d.partitions)
        d.generation = rec.get("generation")
        return r


class _Parallel(_Sequential):
    """Up to ``parallel`` dates at once, each staged at ``OUT/_backfill/<date>`` and published one at a time.

    Worker threads are daemons: on Ctrl-C the calling thread stops publishing (it takes the publish
    lock, so none is half-way), marks the running dates interrupted and returns; their runs end with
    the process (or finish unseen in a notebook: staged, never published).
    """

    def run(self) -> None:
        # Imported here, once: pyarrow.dataset imported lazily by several run threads at once can be
        # seen half-initialized by one of them (AttributeError in engine.datasets.resolve_input).
        importlib.import_module("pyarrow.dataset")
        importlib.import_module("engine.runner")
        todo: queue.Queue = queue.Queue()
        for d in self.result.dates:
            todo.put(d)
        done: queue.Queue = queue.Queue()
        self.halt = threading.Event()          # start no more dates (fail_fast, Ctrl-C)
        self.stop = threading.Event()          # publish nothing more (Ctrl-C)
        self.publishing = threading.Lock()
        threads = [threading.Thread(target=self.worker, args=(todo, done), name=f"engine-backfill-{i}", daemon=True)
                   for i in range(self.result.parallel)]
        for th in threads:
            th.start()
        remaining = len(self.result.dates)
        try:
            while remaining:
                try:
                    d = done.get(timeout=0.2)
                except queue.Empty:
                    if not any(th.is_alive() for th in threads) and done.empty():
                        break
                    continue
                remaining -= 1
                if d is None:
                    continue
                self.report(d)
                if d.status == "failed" and self.fail_fast:
                    self.halt.set()
        except BaseException:
            self.halt.set()
            self.stop.set()
            while not self.publishing.acquire(timeout=0.2):     # wait out a publish under way
                pass
            self.publishing.release()          # the threads see `stop` under it and publish nothing more
            raise
        for th in threads:
            th.join()

    def worker(self, todo: queue.Queue, done: queue.Queue) -> None:
        while not self.halt.is_set():
            try:
                d = todo.get_nowait()
            except queue.Empty:
                return
            d.status = "interrupted"
            try:
                self.run_staged(d)
            except BaseException as exc:  # noqa: BLE001 - a thread reports, it never dies silently
                d.status, d.error = "failed", _one_paragraph(exc)
            if self.stop.is_set() and d.status == "interrupted":
                done.put(None)
                return
            done.put(d)

    def run_staged(self, d: DateResult) -> None:
        from .publish import publish
        stage = self.output.rstrip("/") + f"/{LOCK_DIR}/{d.date}"
        r = self.run_date(d, stage_to=stage)
        if r is None or r.skipped:
            return
        t = time.time()
        d.status = "interrupted"
        while True:
            with self.publishing:
                if self.stop.is_set():
                    return
                try:
                    p = publish(stage, self.output, self.options.get("storage_options"))
                    break
                except ConcurrentRunError as exc:      # a single run holds the live output: retry within wait
                    if self.wait_until is None or time.monotonic() >= self.wait_until:
                        d.status, d.error = "failed", f"staged at {stage} but not published: {_one_paragraph(exc)}"
                        return
                except EngineError as exc:
                    d.status, d.error = "failed", f"staged at {stage} but not published: {_one_paragraph(exc)}"
                    return
            time.sleep(1.0)
        d.status = "committed"
        d.generation = p.generation
        d.seconds = (d.seconds or 0.0) + time.time() - t


def _check_overlaps(fs, out: str, result: BackfillResult) -> None:
    """Warn when a date committed by this backfill is no longer the date of record of its partitions
    (a later date's run replaced them): partition_by does not separate the dates."""
    done = [d for d in result.dates if d.status == "committed"]
    if not done:
        return
    from .commit import load_manifest
    try:
        manifest = load_manifest(fs, out)
    except Exception:  # noqa: BLE001 - a diagnostic only
        return
    if manifest is None:
        return
    dates = manifest.doc.get("dates") or {}
    lost = [d.date for d in done if d.date not in dates]
    if lost:
        result.warnings.append(
            f"{len(lost)} date(s) committed by this backfill ({', '.join(lost[:3])}{', …' if len(lost) > 3 else ''}) "
            "had their partitions replaced by a later date's run: partition_by should include the column that "
            "holds each date, or a rerun recomputes them")


def _remove_stale_staging(fs, out: str, result: BackfillResult) -> None:
    """Remove ``OUT/_backfill/<date>`` of every date that is now committed or skipped: what a killed
    parallel backfill staged there is of no use any more. A failed or interrupted date keeps its
    staging output (the next parallel backfill resumes it). Only a backfill, under its lock, uses them."""
    for d in result.dates:
        if d.status not in ("committed", "skipped"):
            continue
        path = posixpath.join(out, LOCK_DIR, d.date)
        with contextlib.suppress(FileNotFoundError, OSError):
            if is_local(fs):
                if os.path.isdir(path):
                    shutil.rmtree(path)
            elif fs.exists(path):
                fs.rm(path, recursive=True)


__all__ = ["backfill", "BackfillResult", "DateResult", "backfill_lock", "dates_between", "LOCK_DIR"]
