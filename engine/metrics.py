"""Prometheus metrics of finished runs: a node-exporter textfile and a Pushgateway.

A batch job cannot be scraped while it runs, so each run leaves its figures where Prometheus
finds them: a textfile for node-exporter's textfile collector (``--metrics-file``), a Pushgateway
(``--push-gateway``), or both. The figures follow Prometheus' conventions for batch jobs:

* **timestamps, not ages**: ``mapreduce_last_success_timestamp_seconds`` holds when the job last
  succeeded; an alert computes the age (``time() - mapreduce_last_success_timestamp_seconds > 26*3600``),
  so the figure stays right however long nobody pushes;
* **add, never replace**: a run writes only the figures it changes, so a failed run never erases
  the last success; the pushes use POST (``pushadd_to_gateway``), never PUT;
* **no instance label**: a batch job is not bound to a machine; the Pushgateway gives the series an
  empty ``instance`` so Prometheus does not attach the gateway's own.

The series, all gauges, all labelled ``job`` (the engine job's name)::

    mapreduce_last_start_timestamp_seconds            when the newest run started
    mapreduce_last_success_timestamp_seconds          when the newest committed or skipped run ended
    mapreduce_last_failure_timestamp_seconds          when the newest failed, interrupted or refused run ended
    mapreduce_last_completion_timestamp_seconds{status}  when the newest run of each final status ended
    mapreduce_duration_seconds{status}                how long that run took
    mapreduce_last_checkpoint_timestamp_seconds       when the newest task result was journaled (resume point)
    mapreduce_running                                 1 while a run of the job runs (heartbeats), 0 once it ended
    mapreduce_input_records, mapreduce_output_records, mapreduce_input_bytes, mapreduce_output_bytes,
    mapreduce_tasks, mapreduce_task_attempts, mapreduce_task_failures, mapreduce_retries,
    mapreduce_speculative_attempts, mapreduce_rejected_records, mapreduce_deadline_misses,
    mapreduce_cpu_seconds                             what the newest finished run did, whatever its end
    mapreduce_run_info{run_id,engine_version,status}  1: which run the figures above describe
    mapreduce_counter{name}                           the job's counters (engine.counter) in the newest
                                                      finished run that counted any (a run that counts
                                                      none leaves the previous ones)

``status`` takes at most the five final statuses (committed, skipped, failed, interrupted,
refused). The logical date and the record id are no labels: a label value that changes with every
date makes a new series every day. ``mapreduce_run_info`` is the one series whose labels change
with each run (as a ``build_info`` does with each deploy): it lets a dashboard or an alert name the
run to open with ``mapreduce show RUN_ID``. The work figures describe the newest finished run, a
failed one included: the task failures and retries of a failed run are what an on-call reader wants.

**Textfile.** ``textfile=`` is a file or a directory. A directory (existing, or given with a
trailing ``/``) gets one file per job, ``DIR/mapreduce_<job>.prom``, node-exporter's usual layout;
a file path is used as given (node-exporter reads only ``*.prom`` files) and may hold several jobs'
series: an export replaces only its own job's. Each write parses the file in place, keeps what the
run does not change, and replaces the file atomically (a temporary file in the same directory, then
a rename) under a lock on the directory, so concurrent runs do not lose each other's updates.
For what the run does not change (a failed run: the last success, the newest committed run's
completion time and duration), the newer of the file's value and the history store's newest record
is kept; with no store, the file's. The file carries a ``job`` label: scraped by a node-exporter
job without ``honor_labels: true``, Prometheus renames it ``exported_job``.

**Pushgateway.** The grouping key is ``job=<the engine job's name>``, Prometheus' convention for
batch jobs: the gateway puts that ``job`` label on every series it exposes (scrape it with
``honor_labels: true`` so it is kept). One group for all jobs (``job="mapreduce"`` with the engine
job as another label) would not do: a POST replaces every series of a pushed metric name in its
group, so one job's push would erase the others'. For the same reason the two families labelled
``status`` live in a group of their own per status (``job=<name>, status=<status>``): a failed run
pushes ``mapreduce_last_completion_timestamp_seconds`` into the ``failed`` group and the committed
run's series in the ``committed`` group stays. Each run makes two POSTs; :func:`forget` deletes a
retired job's groups.

>>> export(record, store, textfile="/var/lib/node_exporter/textfile/", gateway="http://pushgw:9091")  # doctest: +SKIP
'/var/lib/node_exporter/textfile/mapreduce_wordcount.prom'
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator

from .errors import EngineError
from .redact import redact

log = logging.getLogger("engine")

SUCCEEDED = ("committed", "skipped")
FAILED = ("failed", "interrupted", "refused")
FINAL = SUCCEEDED + FAILED

# name -> (help, label names besides job)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mapreduce_last_start_timestamp_seconds": ("When the job's newest run started (Unix time).", ()),
    "mapreduce_last_success_timestamp_seconds": ("When the job's newest committed or skipped run ended (Unix time).",
                                                 ()),
    "mapreduce_last_failure_timestamp_seconds": (
        "When the job's newest failed, interrupted or refused run ended (Unix time).", ()),
    "mapreduce_last_completion_timestamp_seconds": ("When the job's newest run with this final status ended "
                                                    "(Unix time).", ("status",)),
    "mapreduce_duration_seconds": ("Wall seconds of the job's newest run with this final status.", ("status",)),
    "mapreduce_last_checkpoint_timestamp_seconds": ("When the job's newest task result was journaled (Unix time).",
                                                    ()),
    "mapreduce_running": ("1 while a run of the job is running, 0 once it ended.", ()),
    "mapreduce_input_records": ("Rows the newest finished run read.", ()),
    "mapreduce_output_records": ("Rows the newest finished run wrote.", ()),
    "mapreduce_input_bytes": ("Bytes of input the newest finished run read.", ()),
    "mapreduce_output_bytes": ("Bytes the newest finished run wrote.", ()),
    "mapreduce_tasks": ("Tasks of the newest run's stages.", ()),
    "mapreduce_task_attempts": ("Task attempts the newest finished run started (retries and speculative copies "
                                "included).", ()),
    "mapreduce_task_failures": ("Task attempts of the newest finished run that failed.", ()),
    "mapreduce_retries": ("Task attempts the newest finished run started again after a failure.", ()),
    "mapreduce_speculative_attempts": ("Speculative task attempts the newest finished run started.", ()),
    "mapreduce_rejected_records": ("Rows the newest finished run set aside as bad records.", ()),
    "mapreduce_deadline_misses": ("1 if the newest finished run ended after the job's declared deadline, else 0.",
                                  ()),
    "mapreduce_cpu_seconds": ("CPU seconds of the newest finished run's task threads.", ()),
    "mapreduce_run_info": ("1; its labels name the newest finished run.", ("run_id", "engine_version", "status")),
    "mapreduce_counter": ("A counter of the newest finished run that counted (engine.counter(name).add(n)).",
                          ("name",)),
}
STATUS_FAMILIES = ("mapreduce_last_completion_timestamp_seconds", "mapreduce_duration_seconds")

# gauge <- record key (engine.history.COLUMNS)
_WORK = {
    "mapreduce_input_records": "input_rows", "mapreduce_output_records": "output_rows",
    "mapreduce_input_bytes": "input_bytes", "mapreduce_output_bytes": "output_bytes",
    "mapreduce_tasks": "tasks", "mapreduce_task_attempts": "attempts", "mapreduce_task_failures": "task_failures",
    "mapreduce_retries": "retries", "mapreduce_speculative_attempts": "speculative",
    "mapreduce_rejected_records": "rejected", "mapreduce_cpu_seconds": "cpu_seconds",
}

Labels = tuple  # sorted ((name, value), ...) including job
Samples = dict  # {(metric name, Labels): value}


class MetricsExportError(EngineError, RuntimeError):
    """The metrics could not be written to the textfile or pushed to the Pushgateway (the message says
    which, and why). The run itself is not affected."""


# -- what a record says ------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _finished(rec: dict[str, Any]) -> float | None:
    end = _num(rec.get("finished"))
    if end is None and _num(rec.get("started")) is not None and _num(rec.get("seconds")) is not None:
        end = float(rec["started"]) + float(rec["seconds"])
    return end if end is not None else _num(rec.get("updated"))


def _seconds(rec: dict[str, Any]) -> float | None:
    s = _num(rec.get("seconds"))
    if s is None and _finished(rec) is not None and _num(rec.get("started")) is not None:
        s = max(0.0, _finished(rec) - float(rec["started"]))
    return s


def _check(rec: dict[str, Any], final: bool) -> str:
    if not isinstance(rec, dict) or not rec.get("job"):
        raise ValueError("a run's record (a dict with at least 'job' and 'status', see engine.history.COLUMNS) "
                         f"is needed, got {type(rec).__name__}")
    status = rec.get("status")
    if final and status not in FINAL:
        raise ValueError(f"export() takes a finished run's record (status one of {', '.join(FINAL)}); this one is "
                         f"{status!r}: use progress() while a run runs")
    return str(rec["job"])


def run_samples(rec: dict[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """The figures a finished run changes: ``(metric, labels without job, value)``. A figure the record
    does not know (None) is left out, so the previous value stays."""
    status = str(rec["status"])
    out: list[tuple[str, dict[str, str], float]] = []
    end, secs, start = _finished(rec), _seconds(rec), _num(rec.get("started"))
    if start is not None:
        out.append(("mapreduce_last_start_timestamp_seconds", {}, start))
    if end is not None:
        out.append(("mapreduce_last_success_timestamp_seconds" if status in SUCCEEDED
                    else "mapreduce_last_failure_timestamp_seconds", {}, end))
        out.append(("mapreduce_last_completion_timestamp_seconds", {"status": status}, end))
    if secs is not None:
        out.append(("mapreduce_duration_seconds", {"status": status}, secs))
    checkpoint = _num(rec.get("checkpoint_at"))
    if checkpoint is not None:
        out.append(("mapreduce_last_checkpoint_timestamp_seconds", {}, checkpoint))
    out.append(("mapreduce_running", {}, 0.0))
    for name, key in _WORK.items():
        v = _num(rec.get(key))
        if v is not None:
            out.append((name, {}, v))
    from .history import counters_of
    for name, v in sorted(counters_of(rec).items()):
        out.append(("mapreduce_counter", {"name": name}, float(v)))
    misses = _num(rec.get("deadline_misses", rec.get("deadline_missed")))
    out.append(("mapreduce_deadline_misses", {}, misses or 0.0))
    from ._version import ENGINE_VERSION
    out.append(("mapreduce_run_info", {"run_id": str(rec.get("run_id") or ""),
                                       "engine_version": str(rec.get("engine_version") or ENGINE_VERSION),
                                       "status": status}, 1.0))
    return out


def progress_samples(rec: dict[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """The figures of a running run: running, start, newest checkpoint, tasks."""
    out: list[tuple[str, dict[str, str], float]] = [("mapreduce_running", {}, 1.0)]
    start = _num(rec.get("started"))
    if start is not None:
        out.append(("mapreduce_last_start_timestamp_seconds", {}, start))
    checkpoint = _num(rec.get("checkpoint_at"))
    if checkpoint is not None:
        out.append(("mapreduce_last_checkpoint_timestamp_seconds", {}, checkpoint))
    tasks = _num(rec.get("tasks"))
    if tasks:
        out.append(("mapreduce_tasks", {}, tasks))
    return out


# -- exposition --------------------------------------------------------------------------------

class _Snapshot:
    """A collector of fixed samples (ours, as gauges) and of families parsed from a file (kept as they were)."""

    def __init__(self, samples: Samples, *, with_job: bool = True, foreign: list | None = None) -> None:
        self.samples, self.with_job, self.foreign = samples, with_job, foreign or []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        for name, (doc, extra) in GAUGES.items():
            rows = sorted((labels, v) for (n, labels), v in self.samples.items() if n == name)
            if not rows:
                continue
            names = (["job"] if self.with_job else []) + list(extra)
            fam = GaugeMetricFamily(name, doc, labels=names)
            for labels, v in rows:
                d = dict(labels)
                fam.add_metric([d.get(k, "") for k in names], v)
            yield fam
        yield from self.foreign


def _registry(samples: Samples, *, with_job: bool = True, foreign: list | None = None):
    from prometheus_client import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(samples, with_job=with_job, foreign=foreign))
    return reg


def _key(name: str, labels: dict[str, str]) -> tuple[str, Labels]:
    return name, tuple(sorted(labels.items()))


# -- the textfile ------------------------------------------------------------------------------

def _safe(job: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job) or "_"


def textfile_path(textfile: str | os.PathLike, job: str) -> str:
    """Where ``export`` writes ``job``'s textfile: ``DIR/mapreduce_<job>.prom`` for a directory, else the path."""
    p = os.fspath(textfile)
    if os.path.isdir(p) or p.endswith(("/", os.sep)):
        return os.path.join(p, f"mapreduce_{_safe(job)}.prom")
    return p


@contextlib.contextmanager
def _dir_lock(directory: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:                      # no flock (Windows): last writer wins
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                          # releases the lock


def read_textfile(path: str) -> tuple[Samples, list]:
    """Our samples in an existing textfile (every job's), and the other families it holds; empty if absent."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}, []
    samples: Samples = {}
    foreign = []
    try:
        for fam in text_string_to_metric_families(text):
            if fam.name not in GAUGES:
                foreign.append(fam)
                continue
            for s in fam.samples:
                if s.name == fam.name:
                    samples[_key(s.name, s.labels)] = float(s.value)
    except (ValueError, TypeError, KeyError) as e:
        raise MetricsExportError(f"the metrics file {path} is not in Prometheus' text format ({e}); the run's metrics "
                                 "were not written to it. Remove the file or choose another path") from e
    return samples, foreign


def _newest_per_status(store: Any, job: str, statuses: tuple[str, ...]) -> dict[str, tuple[float, float | None]]:
    """``{status: (end, seconds)}`` of the job's newest record of each status in the store."""
    out: dict[str, tuple[float, float | None]] = {}
    if store is None:
        return out
    for st in statuses:
        try:
            recs = store.records(job=job, status=st, limit=1)
        except Exception as e:  # noqa: BLE001 - the store is a second source: the file's values still stand
            log.warning("metrics: could not read the history store for job %r (%s); the textfile keeps its own "
                        "values", job, redact(str(e)))
            return {}
        if recs and _finished(recs[0]) is not None:
            out[st] = (_finished(recs[0]), _seconds(recs[0]))
    return out


def _merge(state: Samples, job: str, updates: list[tuple[str, dict[str, str], float]]) -> None:
    """Put ``updates`` for ``job`` into ``state``: a family without status loses the job's old series (so
    ``mapreduce_run_info`` keeps one), a status family only the series of the same status."""
    drop = set()
    for name, labels, _ in updates:
        drop.add((name, labels.get("status")) if name in STATUS_FAMILIES else (name, None))
    for key in list(state):
        name, labels = key
        d = dict(labels)
        if d.get("job") != job:
            continue
        if (name, d.get("status") if name in STATUS_FAMILIES else None) in drop:
            del state[key]
    for name, labels, v in updates:
        state[_key(name, {**labels, "job": job})] = v


def _kept_from_store(state: Samples, job: str, status: str, store: Any) -> list[tuple[str, dict[str, str], float]]:
    """For what a run with ``status`` does not change, the store's values where they are newer than the file's."""
    others = tuple(s for s in FINAL if s != status)
    newest = _newest_per_status(store, job, others)
    out: list[tuple[str, dict[str, str], float]] = []

    def current(name: str, **labels: str) -> float | None:
        return state.get(_key(name, {**labels, "job": job}))

    for st, (end, secs) in newest.items():
        have = current("mapreduce_last_completion_timestamp_seconds", status=st)
        if have is None or end > have:
            out.append(("mapreduce_last_completion_timestamp_seconds", {"status": st}, end))
            if secs is not None:
                out.append(("mapreduce_duration_seconds", {"status": st}, secs))
    for name, group in (("mapreduce_last_success_timestamp_seconds", SUCCEEDED),
                        ("mapreduce_last_failure_timestamp_seconds", FAILED)):
        if status in group:
            continue
        ends = [newest[s][0] for s in group if s in newest]
        have = current(name)
        if ends and (have is None or max(ends) > have):
            out.append((name, {}, max(ends)))
    return out


def write_textfile(path: str, job: str, updates: list[tuple[str, dict[str, str], float]], *,
                   status: str | None = None, store: Any = None) -> str:
    """Merge ``updates`` (and, for a finished run with ``status``, the store's newer values) into the
    textfile at ``path``, atomically. Returns the path."""
    from prometheus_client import write_to_textfile
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if not path.endswith(".prom"):
        log.warning("metrics: %s does not end with .prom; node-exporter's textfile collector reads only *.prom files",
                    path)
    with _dir_lock(directory):
        state, foreign = read_textfile(path)
        if status is not None and store is not None:
            updates = _kept_from_store(state, job, status, store) + list(updates)
        _merge(state, job, updates)
        write_to_textfile(path, _registry(state, foreign=foreign))     # temp file beside it, then rename
    return path


# -- the Pushgateway ---------------------------------------------------------------------------

def _push(gateway: str, job: str, updates: list[tuple[str, dict[str, str], float]], timeout: float) -> None:
    from prometheus_client import pushadd_to_gateway
    groups: dict[tuple[tuple[str, str], ...], Samples] = {}
    for name, labels, v in updates:
        if name in STATUS_FAMILIES:
            group = (("status", labels["status"]),)
            labels = {k: x for k, x in labels.items() if k != "status"}
        else:
            group = ()
        groups.setdefault(group, {})[_key(name, labels)] = v
    for group, samples in sorted(groups.items()):
        try:
            pushadd_to_gateway(gateway, job=job, registry=_registry(samples, with_job=False),
                               grouping_key=dict(group), timeout=timeout)
        except Exception as e:  # noqa: BLE001 - urllib's errors: URLError, HTTPError, timeouts, bad URLs
            where = "/".join(f"{k}/{v}" for k, v in (("job", job),) + group)
            raise MetricsExportError(
                f"could not push job {job!r}'s metrics to the Pushgateway at {redact(gateway)} (group {where}): "
                f"{redact(str(e))}. Check that the gateway runs and that the URL is its base address "
                "(http://host:9091)") from e


def forget(job: str, gateway: str, *, timeout: float = 5) -> None:
    """Delete every group :func:`export` pushed for ``job`` from the Pushgateway (a retired job)."""
    from prometheus_client import delete_from_gateway
    for group in [{}] + [{"status": s} for s in FINAL]:
        try:
            delete_from_gateway(gateway, job=job, grouping_key=group, timeout=timeout)
        except Exception as e:  # noqa: BLE001
            raise MetricsExportError(f"could not delete job {job!r}'s metrics from the Pushgateway at "
                                     f"{redact(gateway)}: {redact(str(e))}") from e


# -- the entry points --------------------------------------------------------------------------

def export(record: dict[str, Any], store: Any = None, *, textfile: str | os.PathLike | None = None,
           gateway: str | None = None, timeout: float = 5) -> str | None:
    """Write a finished run's figures to ``textfile`` and push them to ``gateway`` (either may be None).

    ``record`` is the run's history record (:data:`engine.history.COLUMNS`); ``store`` the history
    store it was put in (or None): the textfile takes from it what the run does not change. Both
    destinations are tried; if either fails, :class:`MetricsExportError` says which and why.
    Returns the textfile's path, if one was written.
    """
    job = _check(record, final=True)
    status = str(record["status"])
    updates = run_samples(record)
    errors: list[str] = []
    path = None
    if textfile is not None:
        try:
            path = write_textfile(textfile_path(textfile, job), job, updates, status=status, store=store)
        except MetricsExportError as e:
            errors.append(str(e))
        except OSError as e:
            errors.append(f"could not write job {job!r}'s metrics to {textfile_path(textfile, job)}: {e}")
    if gateway:
        try:
            _push(gateway, job, updates, timeout)
        except MetricsExportError as e:
            errors.append(str(e))
    if errors:
        raise MetricsExportError("; ".join(errors))
    return path


def progress(record: dict[str, Any], gateway: str | None = None, *, textfile: str | os.PathLike | None = None,
             timeout: float = 5) -> None:
    """While a run runs (each heartbeat): ``mapreduce_running`` 1, its start, its newest checkpoint and
    its task count, to the gateway and/or the textfile. Cheap: one POST, or one small file rewrite."""
    job = _check(record, final=False)
    updates = progress_samples(record)
    if textfile is not None:
        try:
            write_textfile(textfile_path(textfile, job), job, updates)
        except OSError as e:
            raise MetricsExportError(f"could not write job {job!r}'s progress to "
                                     f"{textfile_path(textfile, job)}: {e}") from e
    if gateway:
        _push(gateway, job, updates, timeout)


__all__ = ["export", "progress", "forget", "run_samples", "progress_samples", "read_textfile",
           "textfile_path", "write_textfile", "MetricsExportError", "GAUGES", "STATUS_FAMILIES"]
