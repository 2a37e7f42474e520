"""One run: snapshot → plan → execute stage by stage on distributed → commit → report.

The driver runs each stage as a graph of attempt-keyed tasks, waits for it, and only then decides
the next stage from what the finished tasks reported (number of reducers, coalescing, range
boundaries). The modules under this one:

* :mod:`engine.executor` runs one stage to completion (retries with capped exponential backoff and
  full jitter, speculation through its supervisor, reuse of journaled results on resume);
* :mod:`engine.reduceplan` decides a round's reduce tasks from its map outputs (skew, range pieces,
  merges of split hot keys).

This module orchestrates: checks, the output lock and fence, the shuffle location, the payload,
the rounds (:func:`_execute`), the commit, the report and the history.

Every error string the driver keeps or passes on (task errors in the report, retry log lines,
``StageFailedError`` messages, the manifest's decisions) goes through :func:`engine.redact.redact`;
``redact`` is re-exported here under its old name.

The job's serialized functions travel inside each task (a large payload as one checked file beside
the shuffle files), never as a future every task depends on: the scheduler places tasks next to
their dependencies, so equal tasks would crowd onto the worker that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import commit, config
from ._version import ENGINE_VERSION
from .datasets import InputSpec, filesystem, is_local
from .errors import (ChangeGateError, ClusterError, CommitError, EngineError, InputError, JobDefinitionError, OutputExistsError,
                     ShuffleLocationError, ShuffleSpaceError, StageFailedError)
from .faults import Faults
from .job import Job
from .plan import Plan, build_plan, read_samples, resolve_inputs, validate_on_sample
from .redact import install as _install_redaction, public_decisions, redact, redact_obj
from .redact import remember as _remember_secrets
from .report import RunReport

if TYPE_CHECKING:
    from .cluster import ClusterInfo
    from .executor import ProgressFn, StageExecutor
    from .fence import RunFence
    from .tasks import PayloadRef

# The modules that execute a run (dask, distributed, the executor, the shuffle) are imported when a run
# executes, not when this module is: a rerun with nothing to do decides without them.

log = logging.getLogger("engine")
_install_redaction("engine")     # every record of the "engine" logger is redacted (engine.redact)


@dataclass
class RunResult:
    """What :func:`run` returns: where the output is, whether this run wrote it, and its report."""

    output: str
    run_id: str
    report: RunReport
    skipped: bool = False
    manifest: commit.Manifest | None = None
    storage_options: dict | None = field(default=None, repr=False)
    staged: str | None = None          # stage_to=: where the run committed its result
    diff: Any = None                   # stage_to=: engine.diff.OutputDiff of the staged against the live partitions
    published: Any = None              # engine.publish.PublishResult once the staged result went live
    canary: dict | None = None         # canary=: what the canary run sampled, wrote and how it compared
    record: dict | None = field(default=None, repr=False)   # this run's record in the history (engine.history)

    @property
    def rows(self) -> int:
        return self.manifest.rows if self.manifest is not None else 0

    @property
    def files(self) -> list[str]:
        return [self.manifest.path_of(f) for f in self.manifest.files] if self.manifest is not None else []

    def read(self, verify: bool = True, columns: list[str] | None = None) -> pa.Table:
        """The committed output as a table (``engine.read`` of this output: checksums checked unless
        ``verify=False``)."""
        return commit.read(self.output, self.storage_options, verify=verify, columns=columns)

    def _repr_html_(self) -> str:
        return self.report._repr_html_()

    def __str__(self) -> str:
        return self.report.summary()


# ---------------------------------------------------------------------------------------------
# The run


def _snapshot_digest(spec: InputSpec) -> str:
    h = hashlib.sha256()
    for f in spec.snapshot:
        h.update(json.dumps(f, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _snapshots_digest(specs: dict[str, InputSpec], single: bool) -> str:
    """The input snapshot's digest: a single input's as it always was; named inputs', name by name."""
    if single:
        return _snapshot_digest(next(iter(specs.values())))
    h = hashlib.sha256()
    for name in sorted(specs):
        h.update(f"{name}={_snapshot_digest(specs[name])};".encode())
    return h.hexdigest()[:16]


def _payload(plan: Plan) -> bytes:
    """The functions every task needs, by node: each side's maps, combine, reduce, aggregations, the
    maps fused after it (``post``), and a join's spec or a cogroup's function."""
    from . import serialize
    entries = []
    for node in plan.nodes:
        r = node.round
        user_reduce = r.reduce is not None and r.reduce.kind == "reduce" and r.reduce.aggs is None
        entries.append({
            "sides": [{"label": s.label, "maps": [m.task_fn for m in s.maps]} for s in node.sides],
            "maps": [m.task_fn for m in node.sides[0].maps],
            "combine": r.combine.fn if r.combine is not None else None,
            "reduce": r.reduce.fn if user_reduce else None,
            "aggs": r.aggregations,
            "post": [m.task_fn for m in node.post],
            "join": node.join,
            "cogroup": r.reduce.fn if r.kind == "cogroup" else None,
        })
    return serialize.dumps(entries)


def run(job: Job, input: Any, output: str, cluster: Any = None, storage_options: dict | None = None,
        mode: str = "error", speculation: bool = True, skew: bool = True, shuffle_dir: str | None = None,
        partition_size: int | str | None = None, force: bool = False, report: str | None = None, *,
        format: str | None = None, resume: bool = False, progress: ProgressFn | bool | None = None,
        faults: Any = None, map_combine: bool | None = None, partition_by: Sequence[str] | str | None = None,
        date: Any = None, where: Any = None, stage_to: str | None = None,
        max_change: float | str | None = None, canary: int | float | None = None,
        metrics_file: str | None = None, push_gateway: str | None = None, on_failure: str | None = None,
        on_success: str | None = None, on_slo_breach: str | None = None, on_error: str | None = None,
        max_rejected: int | float | str | None = None, on_bad_file: str | None = None, retry_on: Any = None,
        retry_budget: int | None = None, max_tasks: int | None = None, max_seconds: float | str | None = None,
        max_cpu_seconds: float | None = None) -> RunResult:
    """Run ``job`` over ``input`` and commit its output to ``output`` atomically.

    >>> import engine
    >>> result = engine.run(wc, "data/text/", "out/wc")          # doctest: +SKIP
    >>> result.report.summary()                                    # doctest: +SKIP

    ``cluster``: None (embedded LocalCluster), a scheduler address, or a ``distributed.Client``.
    ``mode``: "error" refuses committed output, "overwrite" replaces it (the old output stays readable
    until the new one commits), "append" adds the new files to it. A rerun of the same job on the same
    input snapshot over its own committed output is a no-op unless ``force=True``.
    ``progress``: None shows live per-stage progress where someone watches (an updating table in a
    notebook, a bar on a terminal; see :mod:`engine.progress`), False none, a
    :class:`engine.progress.Progress` or any ``fn(stage, done, total)`` as given.
    ``map_combine=False`` ships map output uncombined (the reducers combine it; for tuning and tests;
    default ``engine.shuffle.map-combine``).

    Partitioned outputs and scheduled runs:

    ``partition_by``: output columns to partition by, Hive-style (``OUT/date=2026-11-30/…``); with
    ``mode="overwrite-partitions"`` a run replaces exactly the partitions it produced and keeps the
    others, in one atomic manifest swap.
    ``date``: the run's logical date (``"2026-11-30"`` or a ``datetime.date``): :func:`engine.logical_date`
    returns it inside the job's functions, ``{date}`` in a ``where`` string stands for it, and a rerun
    for a date whose partitions this job already committed from the same input is a no-op.
    ``where``: a condition the input rows must satisfy (a ``pyarrow.compute.Expression``, or text such
    as ``"date = '{date}'"``, see :mod:`engine.whereexpr`); Hive partitions it rules out are not read.

    ``stage_to``: commit into this staging output instead (its manifest names ``output`` as the live
    output it is staged for), compare it with the live partitions it would replace (``result.diff``),
    and publish it (:func:`engine.publish.publish`) only if ``max_change`` is given and no partition's
    row count moves by more than that fraction (``0.05`` or ``"5%"``); otherwise it stays staged for
    ``mapreduce publish``. A gate that trips raises :class:`~engine.errors.ChangeGateError` and
    publishes nothing.

    ``canary``: before the full run, run the job on ``canary`` sampled input partitions (an int), or
    that fraction of them (a float below 1), into ``OUT/_canary``; compare the partitions it wrote
    with the live output's same partitions and, if ``max_change`` is given, stop with
    :class:`~engine.errors.ChangeGateError` before the full run when one moved by more
    (``result.canary`` says what it sampled and found).

    >>> engine.run(daily, "events/", "agg/", partition_by=["date"], mode="overwrite-partitions",
    ...            date="2026-11-30", where="date = '{date}'")              # doctest: +SKIP

    Operations: every call leaves one record in the run history (:mod:`engine.history`), whatever
    its end — committed, skipped, failed, interrupted (Ctrl-C, or SIGTERM while the run holds the
    main thread), refused — and ``report`` is written whatever the end. ``metrics_file`` (a
    node-exporter textfile) and ``push_gateway`` (a Prometheus Pushgateway URL) receive the run's
    metrics (:mod:`engine.metrics`); ``on_failure``, ``on_success`` and ``on_slo_breach`` are alert
    hooks, a command or an http(s) URL that receives a JSON event, deduplicated by job and logical
    date (:mod:`engine.alerts`). Each defaults to its ``engine.metrics.*`` / ``engine.alerts.*`` setting.

    Bad records and guards (:class:`engine.guards.Guards`; each defaults to the job's own setting, then
    to its ``engine.rejects.*`` / ``engine.retries.*`` / ``engine.limits.*`` setting):

    ``on_error="reject"``: a map or reduce call that raises is retried on halves of its rows until the
    rows it fails on are found; those go, with the error, the traceback, the input file and row, to
    ``OUT/_rejected/`` (committed with the run, listed in its manifest; ``mapreduce rejected OUT``),
    and the rest of the run goes on. Rows a CSV or JSON reader cannot parse take the same path, and so
    do whole unreadable input files with ``on_bad_file="reject"``. ``max_rejected`` (a count, or a
    fraction of the input rows such as ``0.001`` or ``"0.1%"``; default 1%) bounds them: past it the
    run fails with :class:`~engine.errors.TooManyRejectedError` and commits nothing.
    ``retry_on``: per-exception-class attempts (``{ConnectionError: 5, ValueError: 1}``), or the only
    classes retried (``[ConnectionError]``); ``retry_budget``: retries the whole run may spend.
    ``max_tasks``: attempts of this run running at once. ``max_seconds`` / ``max_cpu_seconds``: the
    run's wall-clock and task CPU budgets; past one it stops and commits nothing
    (:class:`~engine.errors.BudgetExceededError`).

    >>> engine.run(job, "events/", "out/", on_error="reject", max_rejected=100)   # doctest: +SKIP
    """
    from .telemetry import Hooks, Tracker, sigterm_interrupts
    started = time.time()
    _remember_secrets(storage_options)      # redacted from logs, reports, history and errors from now on
    from .redact import remember_urls
    remember_urls(input, output, stage_to, shuffle_dir, cluster if isinstance(cluster, str) else None)
    arguments = {"input": redact(str(input))[:2000], "mode": mode, "speculation": speculation, "skew": skew,
                 "shuffle_dir": redact(str(shuffle_dir)) if shuffle_dir else None,
                 "partition_size": str(partition_size) if partition_size is not None else None, "force": force,
                 "format": format, "resume": resume, "map_combine": map_combine,
                 "partition_by": partition_by if partition_by is None or isinstance(partition_by, str)
                 else list(partition_by), "date": str(date) if date is not None else None,
                 "where": redact(str(where)) if where is not None else None, "stage_to": redact(str(stage_to))
                 if stage_to else None, "max_change": str(max_change) if max_change is not None else None,
                 "canary": canary, "cluster": redact(str(cluster)) if isinstance(cluster, str) else
                 (type(cluster).__name__ if cluster is not None else None)}
    from .guards import Guards
    guards_error = None
    try:
        guards = Guards.build(on_error=on_error, max_rejected=max_rejected, on_bad_file=on_bad_file,
                              retry_on=retry_on, retry_budget=retry_budget, max_tasks=max_tasks,
                              max_seconds=max_seconds, max_cpu_seconds=max_cpu_seconds, job=job)
        arguments["guards"] = guards.describe()
    except Exception as exc:  # noqa: BLE001 - refused below, with a record
        guards, guards_error = None, exc
    tracker = Tracker(job, output, logical_date=str(date) if date is not None else None, started=started,
                      hooks=Hooks(report, metrics_file, push_gateway, on_failure, on_success, on_slo_breach),
                      settings=arguments)
    tracker.begin()
    try:
        if guards_error is not None:
            raise guards_error
        with sigterm_interrupts():
            result = _run_call(job, input, output, cluster, storage_options, mode, speculation, skew, shuffle_dir,
                               partition_size, force, report, format, resume, progress, faults, map_combine,
                               partition_by, date, where, stage_to, max_change, canary, started, tracker, guards)
    except BaseException as exc:
        rec = tracker.finish(exc=exc)
        if isinstance(exc, KeyboardInterrupt):
            short = _interrupted(job, exc)
            short.run_record = rec          # type: ignore[attr-defined]
            raise short.with_traceback(None) from None
        with contextlib.suppress(Exception):
            exc.run_record = rec            # type: ignore[attr-defined]  (the CLI's --json reads it)
        raise
    result.record = tracker.finish(result=result)
    return result


def _interrupted(job: Any, exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """Ctrl-C or SIGTERM during a run, as one :class:`engine.errors.Interrupted` that says what the
    output holds (the engine's frames and the workers' cancelled tasks are of no use to the user);
    uncaught in a script's main thread it prints that one line (see :func:`_one_line_exit`)."""
    from .errors import Interrupted, Terminated
    what = "terminated by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
    name = getattr(job, "name", "?")
    short = (Terminated if isinstance(exc, Terminated) else Interrupted)(
        f"run of job {name!r} {what}; the output holds what was committed before (all of a run or none of it): "
        "run it again to finish (resume=True reuses the tasks this run finished)")
    _one_line_exit()
    return short


def _one_line_exit() -> None:
    """Let an :class:`engine.errors.Interrupted` that reaches the top of a script print one line instead
    of a traceback, and the script end as Python's own Ctrl-C does (status 130; 143 on SIGTERM); other
    exceptions keep the hook they had."""
    import sys
    if getattr(sys.excepthook, "_engine_one_line", False) or sys.excepthook is not sys.__excepthook__:
        return    # ours already, or the user's (IPython, a framework): leave it alone

    def hook(kind, value, tb):
        from .errors import Interrupted, Terminated
        if isinstance(value, Interrupted):
            print(f"{kind.__name__}: {value}", file=sys.stderr)
            import signal
            from . import cluster       # after its shutdown at exit, the process ends by the signal (130/143)
            cluster._EXIT_SIGNAL.append(signal.SIGTERM if isinstance(value, Terminated) else signal.SIGINT)
            return
        sys.__excepthook__(kind, value, tb)

    hook._engine_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _run_call(job, input, output, cluster, storage_options, mode, speculation, skew, shuffle_dir, partition_size,
              force, report, format, resume, progress, faults, map_combine, partition_by, date, where, stage_to,
              max_change, canary, started, tracker, guards=None) -> RunResult:
    _remember_secrets(storage_options)      # redacted from logs, reports, history and errors from now on
    if mode not in commit.MODES:
        raise CommitError(f"mode must be one of {', '.join(map(repr, commit.MODES))}, got {mode!r}")
    if not isinstance(job, Job):
        raise JobDefinitionError(f"run() expects an engine.Job, got {type(job).__name__}")
    from .context import parse_date, using_date
    logical_date = parse_date(date)
    tracker.logical_date = logical_date
    partition_by = _partition_columns(partition_by)
    if mode == "overwrite-partitions" and not partition_by:
        raise CommitError("mode='overwrite-partitions' replaces Hive partitions of a partitioned output: pass "
                          "partition_by=[...] too, or use mode='overwrite' to replace the whole output")
    out_fs, out = filesystem(output, storage_options)
    args = (cluster, storage_options, mode, speculation, skew, shuffle_dir, partition_size, force, report, format,
            resume, progress, faults, map_combine, partition_by, logical_date, where, started, guards)
    if max_change is not None:
        from .diff import parse_change
        max_change = parse_change(max_change)          # 0.05 or "5%"; refused before anything runs
        if stage_to is None and canary is None:
            raise JobDefinitionError("max_change= gates publishing a staged result or a canary: pass stage_to= "
                                     "or canary= too")
    checked: dict = {}

    def before() -> None:
        # the canary runs only once the run is known to have work to do (not for a no-op rerun)
        if canary is not None:
            checked["canary"] = _canary(job, input, output, out, canary, max_change, args,
                                        staged=stage_to is not None)
    with using_date(logical_date):
        if stage_to is None:
            result = _run(job, input, output, out_fs, out, *args, before=before, tracker=tracker)
        else:
            result = _staged_run(job, input, output, out_fs, out, stage_to, max_change, args, before=before,
                                 tracker=tracker)
    result.canary = checked.get("canary")
    return result


def _canary(job: Job, input: Any, output: str, out: str, canary: int | float, gate: float | None,
            args: tuple, staged: bool = False) -> dict:
    """Run ``job`` on a sample of the input's partitions into ``OUT/_canary`` and compare what it
    wrote with the live output's same partitions; ChangeGateError when ``gate`` is exceeded.

    Only output partitions the sample determines completely are compared: those of a Hive input
    whose partition columns are all output partition columns, with the sampled values. A canary
    that samples files (a plain input), or whose output is partitioned otherwise, writes partial
    partitions; it is a smoke test of the job then, and a ``gate`` meant for it alone is refused
    before anything runs (with ``stage_to``, the gate still guards the publish)."""
    import math

    import pyarrow.compute as pc

    from .job import with_input_filter
    storage_options, fmt, partition_by, logical_date, where = args[1], args[9], args[14], args[15], args[16]
    if isinstance(canary, bool) or not isinstance(canary, (int, float)) or not canary > 0 or \
            (isinstance(canary, float) and canary >= 1 and not canary.is_integer()):
        raise JobDefinitionError(f"canary= is a number of input partitions (an int >= 1) or a fraction of them "
                                 f"(0 < f < 1), got {canary!r}")
    if where is not None:
        _, specs = _filtered_inputs(job, input, where, logical_date, storage_options, fmt)
    else:
        specs = resolve_inputs(job, input, storage_options, format=fmt)
    if len(specs) != 1:
        raise JobDefinitionError(f"canary= samples the input of a job that reads one; job {job.name!r} reads "
                                 f"{', '.join(specs)}")
    spec = next(iter(specs.values()))
    hive = bool(spec.partition_types)
    unit = "partitions" if hive else "files"
    if not partition_by:
        partial = "the output is not partitioned, so there is no partition of it to compare"
    elif not hive:
        partial = ("the input is not Hive-partitioned: the canary samples its files, whose rows may belong to any "
                   "output partition")
    elif not set(spec.partition_types) <= set(partition_by):
        partial = (f"the output is partitioned by {', '.join(partition_by)}, not by every partition column of the "
                   f"input ({', '.join(spec.partition_types)}), so a sampled input partition fills no output "
                   "partition completely")
    else:
        partial = None
    if partial is not None and gate is not None and not staged:
        raise JobDefinitionError(f"max_change= cannot gate this canary: {partial}. Partition the output by the "
                                 "input's Hive partition columns, or run the canary without max_change (a smoke test "
                                 "of the job on a sample)")
    groups = sorted({s.partition_values if hive else s.path for s in spec.splits}, key=repr)
    n = min(len(groups), int(canary) if canary >= 1 else max(1, math.ceil(canary * len(groups))))
    # a deterministic sample spread over the input (not just its first partitions)
    chosen = sorted(groups, key=lambda g: hashlib.sha256(repr(g).encode()).hexdigest())[:n]
    if hive:
        expr = None
        for values in chosen:
            term = None
            for k, v in values:
                cond = pc.field(k) == v if v is not None else pc.field(k).is_null()
                term = cond if term is None else term & cond
            expr = term if expr is None else expr | term
        cjob, cinput = with_input_filter(job, expr), input
        sampled: list = [dict(v) for v in chosen]
    else:
        urls = chosen if is_local(spec.fs) else [spec.fs.unstrip_protocol(p) for p in chosen]
        cjob, cinput = job, list(urls) if len(urls) > 1 else urls[0]
        sampled = list(urls)
    target = output.rstrip("/") + "/_canary"
    cfs, cout = filesystem(target, storage_options)
    out_fs, _ = filesystem(output, storage_options)
    existed = out_fs.exists(out) if is_local(out_fs) else True
    cargs = list(args)
    cargs[2], cargs[7], cargs[8], cargs[10] = "overwrite", True, None, False      # mode, force, report, resume
    started = time.time()
    cargs[17] = started
    ran = False
    diff = None
    compared: list[str] = []
    violations: list[str] = []
    try:
        result = _run(cjob, cinput, target, cfs, cout, *cargs)
        ran = True
        manifest = result.manifest
        produced = sorted({commit.partition_of(f["path"]) for f in manifest.files}) if manifest else []
        live = commit.load_manifest(out_fs, out)
        if partial is None and live is not None and manifest is not None:
            inputs_cols = list(spec.partition_types)
            wanted = [{k: None if v is None else str(v) for k, v in values if k in inputs_cols} for values in chosen]
            info_of = manifest.doc.get("partitions") or {}
            live_parts = live.doc.get("partitions") or {}
            for d in produced:
                values = (info_of.get(d) or {}).get("values") or {}
                if d in live_parts and {k: values.get(k) for k in inputs_cols} in wanted:
                    compared.append(d)
        if compared:
            from .diff import compare
            diff = compare(output, target, storage_options=storage_options, partitions=compared)
            violations = diff.violations(gate) if gate is not None else []
    finally:
        _discard_canary(cfs, cout, ran)
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(out)                 # the output directory only the canary created
    info = {"sampled": sampled, "of": len(groups), "unit": unit, "rows": result.report.output_rows,
            "partitions": produced, "compared": compared, "not_compared": partial, "diff": diff,
            "violations": violations, "seconds": round(time.time() - started, 3)}
    what = f"the canary on {len(chosen)} of {len(groups)} input {unit}"
    if violations:
        raise ChangeGateError(f"{what} moved {len(violations)} partition(s) of {output} by more than max_change="
                              f"{gate:.2%}, so the full run did not start: " + "; ".join(violations[:5]), violations)
    if partial is not None:
        log.warning("%s wrote %s rows in %d partition(s); none is compared with the live output: %s", what,
                    f"{result.report.output_rows:,}", len(produced), partial)
    else:
        log.info("%s wrote %s rows in %d partition(s); %s", what, f"{result.report.output_rows:,}", len(produced),
                 f"{len(compared)} compared with the live output, within max_change" if compared and gate is not None
                 else f"{len(compared)} compared with the live output (no max_change gate)" if compared
                 else "nothing to compare with in the live output")
    return info


def _discard_canary(fs, root: str, ran: bool) -> None:
    """Remove ``OUT/_canary`` whatever the canary did, unless another live run holds it."""
    from .errors import ConcurrentRunError
    from .lock import output_lock
    from .publish import _remove_staged_dir, _remove_staged_files
    if not ran and not fs.exists(root):
        return
    try:
        with output_lock(fs, root):
            _remove_staged_files(fs, root)
            if is_local(fs):
                for name in os.listdir(root):
                    if name != "_lock":
                        path = os.path.join(root, name)
                        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            else:
                for path in fs.find(root, withdirs=False):
                    if posixpath.basename(path) != "_lock":
                        with contextlib.suppress(FileNotFoundError):
                            fs.rm(path)
    except ConcurrentRunError:
        return                                   # another run's canary: it removes its own
    _remove_staged_dir(fs, root)


def _staged_run(job: Job, input: Any, output: str, out_fs, out: str, stage_to: str, max_change: Any,
                args: tuple, before: Any = None, tracker: Any = None) -> RunResult:
    """A run committed into ``stage_to``, compared with the live partitions it replaces, published if
    the gate allows."""
    storage_options, faults, partition_by = args[1], args[12], args[14]
    if not partition_by:
        raise JobDefinitionError("stage_to= stages partitions to replace in the live output: pass partition_by=[...]")
    gate = max_change
    st_fs, st = filesystem(stage_to, storage_options)
    if type(st_fs) is type(out_fs):
        a, b = st.rstrip("/"), out.rstrip("/")
        if a == b:
            raise JobDefinitionError(f"stage_to= must differ from the output ({output})")
        inner = a[len(b) + 1:] if a.startswith(b + "/") else None
        if inner is not None and not inner.startswith(("_", ".")):
            raise JobDefinitionError(f"stage_to={stage_to!r} lies inside the output {output}, where its files would "
                                     f"be taken for foreign files: stage beside it, or under a name starting with "
                                     f"'_' ({output.rstrip('/')}/_staged)")
        if b.startswith(a + "/"):
            raise JobDefinitionError(f"the output {output} lies inside stage_to={stage_to!r}: stage beside it")
    staged_args = list(args)
    staged_args[2] = "overwrite"                     # the staging output holds one staged result at a time
    # the live output as the staged manifest records it: absolute on a local disk, so that
    # `mapreduce publish STAGED` from any directory finds it
    live_name = out if is_local(out_fs) else output
    result = _run(job, input, stage_to, st_fs, st, *staged_args, live=(out_fs, out, live_name), before=before,
                  tracker=tracker)
    if result.skipped:
        return result                                 # the live output holds this already
    result.staged = stage_to
    live = commit.load_manifest(out_fs, out)
    produced = sorted({commit.partition_of(f["path"]) for f in result.manifest.files})
    replaced = [p for p in produced if live is not None and p in (live.doc.get("partitions") or {})]
    if replaced:
        from .diff import compare                    # reads only the replaced partitions of the live output
        result.diff = compare(output, stage_to, storage_options=storage_options, partitions=replaced)
    if gate is None:
        log.info("staged %d partition(s) at %s; compare them with `mapreduce diff %s %s`, publish them with "
                 "`mapreduce publish %s`", len(produced), stage_to, output, stage_to, stage_to)
        return result
    violations = result.diff.violations(gate) if result.diff is not None else []
    if violations:
        raise ChangeGateError(f"the staged result at {stage_to} moves {len(violations)} partition(s) of {output} by "
                              f"more than max_change={gate:.2%}, so nothing was published: " + "; ".join(violations[:5])
                              + f". Inspect it with `mapreduce diff {output} {stage_to}`; publish it anyway with "
                              f"`mapreduce publish {stage_to}`", violations, stage_to)
    from .publish import publish
    if faults is None:
        faults = Faults.from_env()
    result.published = publish(stage_to, output, storage_options,
                               hook=faults.commit_hook if faults is not None else None)
    result.report.message += f"; {result.published}"
    return result


def _partition_columns(partition_by: Sequence[str] | str | None) -> tuple[str, ...]:
    if partition_by is None:
        return ()
    cols = [partition_by] if isinstance(partition_by, str) else list(partition_by)
    cols = [c.strip() for col in cols for c in str(col).split(",") if c.strip()]
    if len(set(cols)) != len(cols):
        raise JobDefinitionError(f"partition_by lists a column twice: {cols}")
    return tuple(cols)


def _filtered_inputs(job: Job, input: Any, where: Any, logical_date: str | None, storage_options: dict | None,
                     format: str | None) -> tuple[Job, dict[str, InputSpec]]:
    """The job with the run's ``where`` in front of its maps, and its inputs resolved with it (pruned)."""
    from .job import _is_expression, check_single_input, with_input_filter
    if isinstance(where, str):
        from .datasets import input_schema, resolve_input
        from .plan import input_wheres
        from .whereexpr import parse_where
        from .errors import SchemaError
        # syntax errors, and a job reading several inputs, are refused before anything is listed
        # (types are checked below, against the input's columns)
        with contextlib.suppress(SchemaError):
            parse_where(where, None, date=logical_date)
        check_single_input(job)
        own = input_wheres(job).get(job.label)

        def pruning(partitions: pa.Schema):
            # the Hive partition columns' types are known once the input is listed: prune with them
            expr = parse_where(where, partitions, date=logical_date, partial=True)
            return expr if own is None else expr & own
        source = input
        if isinstance(input, Mapping):
            if len(input) != 1:
                resolve_inputs(job, input, storage_options, format=format)      # its error names the inputs
            source = next(iter(input.values()))
        spec = resolve_input(source, storage_options, format=format, where=pruning)
        specs = {job.label: spec}
        typed = parse_where(where, input_schema(spec), date=logical_date)
        if _decided_by_partitions(typed, spec):
            return job, specs
        return with_input_filter(job, typed), specs
    if not _is_expression(where):
        raise JobDefinitionError(f"where= takes a pyarrow.compute.Expression such as pc.field('date') == "
                                 f"'2026-11-30', or text such as \"date = '{{date}}'\", got {type(where).__name__}")
    filtered = with_input_filter(job, where)
    specs = resolve_inputs(filtered, input, storage_options, format=format)
    if _decided_by_partitions(where, next(iter(specs.values()))):
        return job, specs
    return filtered, specs


def _decided_by_partitions(where: Any, spec: InputSpec) -> bool:
    """True when pruning Hive partitions has already applied ``where`` exactly: it names partition
    columns only, and the values of every partition left satisfy it. Every row read then satisfies
    it, so no task filters rows again (and the job runs as written: same fingerprint, dictionary-
    encoded keys and projection as without it)."""
    types = spec.partition_types
    if not types or not spec.splits:
        return False
    distinct = {s.partition_values for s in spec.splits}
    columns: dict[str, list] = {k: [] for k in types}
    for values in distinct:
        given = dict(values)
        if set(given) != set(types):
            return False
        for k in types:
            columns[k].append(given[k])
    table = pa.table({k: pa.array(v, types[k]) for k, v in columns.items()})
    try:
        return table.filter(where).num_rows == table.num_rows
    except Exception:  # noqa: BLE001 - it names other columns (or cannot be decided here): tasks filter
        return False


def _run(job: Job, input: Any, output: str, out_fs, out: str, *args: Any, live: tuple | None = None,
         before: Any = None, tracker: Any = None) -> RunResult:
    """One run into ``output``, followed by ``tracker`` (a canary's run, given none, has its own record,
    under ``<job>:canary``)."""
    if tracker is not None:
        return _run_body(job, input, output, out_fs, out, *args, live=live, before=before, tracker=tracker)
    from .telemetry import Tracker
    own = Tracker(job, output, logical_date=args[15], started=args[17], exports=False)     # a canary's run
    own.begin()
    try:
        result = _run_body(job, input, output, out_fs, out, *args, live=live, before=before, tracker=own)
    except BaseException as exc:
        own.finish(exc=exc)
        raise
    own.finish(result=result)
    return result


def _run_body(job: Job, input: Any, output: str, out_fs, out: str, cluster: Any, storage_options: dict | None,
              mode: str, speculation: bool, skew: bool, shuffle_dir: str | None, partition_size: Any, force: bool,
              report: str | None, format: str | None, resume: bool, progress: Any, faults: Any,
              map_combine: bool | None, partition_by: tuple[str, ...], logical_date: str | None, where: Any,
              started: float, guards: Any = None, live: tuple | None = None, before: Any = None,
              tracker: Any = None) -> RunResult:
    code_job = job
    if guards is None:
        from .guards import Guards
        guards = Guards.build(job=job)
    from .datasets import REJECT_BAD_FILES, REJECT_ROWS
    token = REJECT_BAD_FILES.set(guards.on_bad_file == "reject")
    token_rows = REJECT_ROWS.set(guards.on_error == "reject")
    try:
        if where is not None:
            job, specs = _filtered_inputs(job, input, where, logical_date, storage_options, format)
        else:
            specs = resolve_inputs(job, input, storage_options, format=format)
    finally:
        REJECT_BAD_FILES.reset(token)
        REJECT_ROWS.reset(token_rows)
    plan = build_plan(job, specs, partition_size)
    fingerprint = plan.fingerprint
    # The run's where (its date filled in) is part of the fingerprint; the job's code alone is this:
    # the same for every day's run of one release, which provenance shows.
    code_fingerprint = fingerprint
    if code_job is not job:
        from .job import job_fingerprint
        code_fingerprint = job_fingerprint(code_job, {"format": next(iter(specs.values())).format}).digest
    snapshot = _snapshots_digest(specs, single=not plan.multi_input)
    # Same job + same input snapshot (+ logical date, output partitioning) → same run id, so an
    # interrupted run can be resumed.
    identity = f"{fingerprint}:{snapshot}"
    if logical_date is not None:
        identity += f":date={logical_date}"
    if partition_by:
        identity += f":partition_by={','.join(partition_by)}"
    run_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
    if force:
        run_id = f"{run_id[:8]}{uuid.uuid4().hex[:8]}"
    if faults is None:
        faults = Faults.from_env()
    rep = RunReport(job.name, run_id, fingerprint, start=started,
                    input_files=sum(len(s.snapshot) for s in specs.values()),
                    input_bytes=sum(s.total_bytes for s in specs.values()), output=output)
    tracker.attach(rep)

    previous = commit.check_output(out_fs, out, mode)
    against = previous if live is None else commit.load_manifest(live[0], live[1])
    done = _already_committed(against, fingerprint, snapshot, logical_date, partition_by) if not force else None
    if done is not None:
        if live is not None:
            output, previous = live[2], against
        rep.status, rep.stop, rep.run_id = "skipped", time.time(), done
        what = f"for logical date {logical_date} " if logical_date is not None else ""
        again = ("pass force=True with mode='overwrite' to recompute and replace it" if mode == "error" else
                 "pass force=True to recompute it and append the result again" if mode == "append" else
                 "pass force=True to recompute it")
        rep.message = (f"{output} already holds this job's output {what}for this input snapshot (run "
                       f"{done}); nothing to do ({again}).")
        # this run wrote nothing; the output holds what earlier runs committed
        rep.output_total_rows, rep.output_total_files = previous.rows, len(previous.files)
        log.info(rep.message)
        return RunResult(output, done, rep, True, previous, storage_options)
    if previous is not None and mode == "error":
        raise OutputExistsError(f"{output} already holds committed output (job {previous.doc.get('job')!r}, run "
                                f"{previous.doc.get('run_id')}); pass mode='overwrite' to replace it or "
                                "mode='append' to add to it")
    if before is not None:
        before()

    try:
        from .executor import within_budgets       # (max_seconds counts from the run's start)
        within_budgets(guards, started, "checking the job on a sample of the input",
                       lambda: validate_on_sample(plan, read_samples(plan)))
    except EngineError as exc:      # the user's function failed in the driver: its message may quote secrets
        cause = exc.__cause__
        if isinstance(exc, InputError) and guards.rejecting:
            # an input the sample could not be read from: its tasks set it (or its bad rows) aside
            log.info("the sample of the input could not be read (%s); its tasks reject what they cannot read",
                     redact(str(exc)))
        elif guards.on_error == "reject" and cause is not None and not isinstance(cause, EngineError):
            # a function failing on sample rows may fail on bad records only: the tasks set those aside
            log.info("the job's functions failed on a sample of the input (%s); rejecting bad rows as they come",
                     redact(f"{type(cause).__name__}: {cause}"))
        else:
            from .executor import redact_exception
            redact_exception(exc)
            raise

    from .cluster import get_client
    from .executor import StageExecutor, redact_exception
    from .fence import RunFence
    from .journal import Journal
    from .lock import output_lock

    protocols = {s.protocol for s in specs.values()} | {_protocol(out_fs)}
    in_process = "memory" in protocols
    client, info = get_client(cluster, in_process=in_process, input_bytes=rep.input_bytes)
    if in_process and not info.in_process:
        raise ClusterError("memory:// data lives in one process, but the cluster's workers are other processes; "
                           "use a local path or an object store, or run with cluster=None")
    rep.cluster = {"workers": info.workers, "threads": info.threads, "embedded": info.embedded,
                   "dashboard": info.dashboard, "local": info.local, "where": info.where,
                   "memory_limit": info.memory_limit}
    cpu_before = _cluster_cpu(client, info)
    if info.local:
        # Every thread shares this process: no other worker for a speculative copy, none to restart.
        rep.cluster["speculation"] = "off (the run is in the driver process)"
        log.info("running %s: the input (%s bytes) is at most engine.local.max-bytes", info.where,
                 f"{rep.input_bytes:,}")
    for s in specs.values():
        _check_reachability(info, s, out_fs, shuffle_dir)

    with output_lock(out_fs, out) as lock:
        previous = commit.check_output(out_fs, out, mode)
        if previous is not None and mode == "error":
            raise OutputExistsError(f"{output} was committed by another run meanwhile (run "
                                    f"{previous.doc.get('run_id')})")
        if previous is not None and previous.damage is not None:
            log.warning("replacing a damaged manifest (%s); its files go once this run commits", previous.damage)
        # We hold the lock: whatever dead runs left here is garbage (except our own work when resuming).
        removed = commit.cleanup(out_fs, out, keep_run=run_id if resume else None, manifest=previous)
        if removed:
            log.info("removed %d leftover(s) of earlier runs from %s", len(removed), output)
        # Attempts write only while this fence is open; the commit (or the failure below) closes it.
        # It opens before this run's directories exist: a late attempt of an earlier driver of the same
        # run id that finds its own fence gone then leaves them alone.
        run_fence = RunFence.open(out_fs, out, run_id)
        try:
            shuffle_fs, shuffle_root, cleanup = _shuffle_location(shuffle_dir, storage_options, run_id, out_fs, out,
                                                                  info)
        except BaseException:
            run_fence.close()
            raise
        # Loaded entries may name only this run's own files (engine.journal.check_paths).
        journal = Journal(out_fs, posixpath.join(commit.temporary_dir(out, run_id), "journal"), run_id=run_id,
                          out=out, shuffle_root=shuffle_root, s3=commit.is_s3(out_fs))
        blob = _payload(plan)
        shipped = _ship_payload(blob, shuffle_fs, shuffle_root)
        supervisor = None
        if speculation and config.get("speculation.enabled") and not info.local:
            try:
                from .speculation import Supervisor
                supervisor = Supervisor.from_config(client, rep)
            except ImportError:
                supervisor = None
        from .progress import default as default_progress
        shown = default_progress(progress)
        executor = StageExecutor(client, rep, progress=shown, supervisor=supervisor, journal=journal,
                                 resume=resume, shuffle_fs=shuffle_fs, out_fs=out_fs, out=out, guards=guards)
        ok = full = False
        try:
            manifest = _execute(plan, specs, client, info, executor, rep, run_id=run_id, out_fs=out_fs, out=out,
                                shipped=shipped, shuffle_fs=shuffle_fs, shuffle_root=shuffle_root,
                                skew_enabled=bool(skew and config.get("skew.enabled")), mode=mode, previous=previous, snapshot=snapshot,
                                faults=faults, map_combine=bool(config.get("shuffle.map-combine", map_combine)),
                                lock=lock, run_fence=run_fence, partition_by=partition_by,
                                logical_date=logical_date, staged_for=live[2] if live is not None else None,
                                staged_against=against if live is not None else None,
                                code_fingerprint=code_fingerprint)
            ok = True
        except BaseException as exc:
            full = _out_of_space(exc)
            if full:
                # A full disk: the run stops at once (see executor._is_permanent) and removes what it wrote,
                # which is what filled it; the error names the directory.
                exc = _space_error(exc, shuffle_dir, shuffle_fs, shuffle_root, out_fs, out, output)
            rep.status, rep.stop = "failed", time.time()
            rep.message = f"{type(exc).__name__}: {redact(str(exc), storage_options)}"
            redact_exception(exc)
            if full:
                raise exc from exc.__cause__
            raise
        finally:
            if callable(getattr(shown, "close", None)):
                with contextlib.suppress(Exception):
                    shown.close()          # a bar cut short ends its line before the error or the summary
            _note_cluster_cpu(rep, client, info, cpu_before)
            with contextlib.suppress(Exception):
                run_fence.close()
            if supervisor is not None:
                with contextlib.suppress(Exception):
                    supervisor.close()
            cleanup(ok or full)
            if full:
                with contextlib.suppress(Exception):
                    commit.cleanup(out_fs, out, keep_run=None, manifest=previous)
    rep.status, rep.stop = "committed", time.time()
    # what this run wrote (in modes append and overwrite-partitions the output holds more)
    mine = [f for f in manifest.files if f"-{run_id[:16]}-a" in posixpath.basename(f["path"])]
    rep.output_rows = sum(f["rows"] for f in mine)
    rep.output_files = len(mine)
    rep.output_bytes = sum(f["bytes"] for f in mine)
    rep.output_total_rows, rep.output_total_files = manifest.rows, len(manifest.files)
    rep.message = f"committed {rep.output_rows:,} rows in {rep.output_files} file(s) to {output}"
    if partition_by:
        parts = sorted({commit.partition_of(f["path"]) for f in mine})
        rep.message += f", {len(parts)} partition(s)" + (f" ({', '.join(parts[:3])}{', …' if len(parts) > 3 else ''})"
                                                          if parts else "")
    if len(mine) != len(manifest.files):
        kept = len({commit.partition_of(f["path"]) for f in manifest.files})
        rep.message += (f"; the output now holds {manifest.rows:,} rows in {len(manifest.files)} file(s)"
                        + (f", {kept} partition(s)" if partition_by else "") + f" (generation {manifest.generation})")
    log.info("%s in %.2fs (run %s)", rep.message, rep.duration, run_id)
    return RunResult(output, run_id, rep, False, manifest, storage_options)


_INLINE_PAYLOAD = 64 << 10


def _ship_payload(blob: bytes, fs, root: str) -> bytes | PayloadRef:
    """How the serialized stage functions reach the tasks, without steering where the tasks run.

    A future that every task depends on lives on one worker, and the scheduler places tasks next to
    their data: four equal map tasks on two workers ran 4/0 or 3/1. So the payload is no task of its
    own. Up to ``_INLINE_PAYLOAD`` bytes (the jobs of this repository: 0.9-6 KB) it travels inside
    each task (measured: no difference per task up to 64 KB); a bigger one is written once beside the
    shuffle files, which every worker reads, and each worker process loads and checks it once.
    """
    if len(blob) <= _INLINE_PAYLOAD:
        return blob
    from .tasks import PayloadRef
    digest = hashlib.sha256(blob).hexdigest()
    path = posixpath.join(root, f"_payload-{digest[:16]}.pkl")
    with fs.open(path, "wb") as f:
        f.write(blob)
    return PayloadRef(fs, path, digest, len(blob))


def _cluster_cpu(client, info: ClusterInfo) -> dict[str, float] | None:
    """CPU seconds each worker process has used so far (all its threads: pyarrow's too)."""
    from .telemetry import process_cpu
    try:
        if info.local or info.in_process:
            return {"driver": process_cpu()}
        if getattr(client, "status", "running") != "running":
            return None        # the scheduler is gone: asking would wait for it
        return dict(client.run(process_cpu))
    except Exception:  # noqa: BLE001 - usage figures never fail a run
        return None


def _note_cluster_cpu(rep: RunReport, client, info: ClusterInfo, before: dict[str, float] | None) -> None:
    """The CPU seconds the workers used during the run (a worker that restarted counts from zero)."""
    after = _cluster_cpu(client, info) if before is not None else None
    if after is None:
        return
    used = sum(max(0.0, v - before.get(w, 0.0)) if v >= before.get(w, 0.0) else v for w, v in after.items())
    rep.usage["worker_cpu_seconds"] = round(used, 6)


def _protocol(fs) -> str:
    p = fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


def _check_reachability(info: ClusterInfo, spec: InputSpec, out_fs, shuffle_dir: str | None) -> None:
    if info.same_host:
        return
    if shuffle_dir is None:
        raise ShuffleLocationError("the cluster has workers on other machines, and the default shuffle directory is "
                                   "a local temporary directory they cannot reach; pass shuffle_dir= a storage "
                                   "URL every worker can reach (e.g. s3://bucket/shuffle)")
    if is_local(spec.fs):
        raise ClusterError("the input is on this machine's disk, which workers on other machines cannot read; "
                           "put it on shared storage (e.g. s3://)")
    if is_local(out_fs):
        raise ClusterError("the output is on this machine's disk, which workers on other machines cannot write; "
                           "write to shared storage (e.g. s3://)")


def _shuffle_location(shuffle_dir: str | None, storage_options: dict | None, run_id: str, out_fs, out: str,
                      info: ClusterInfo):
    """``(fs, root, cleanup(ok))`` of this run's map outputs.

    Default: under ``OUT/_temporary/<run>/shuffle`` when the output is on a disk every worker shares
    (the files then survive a driver crash, for ``resume``), else a local temporary directory.
    """
    if shuffle_dir is None:
        shuffle_dir = config.get("shuffle.dir")
    if shuffle_dir is None and is_local(out_fs) and info.same_host:
        root = posixpath.join(commit.temporary_dir(out, run_id), "shuffle")
        os.makedirs(root, exist_ok=True)

        def cleanup_local(ok: bool) -> None:
            if ok:
                shutil.rmtree(root, ignore_errors=True)
        return out_fs, root, cleanup_local
    if shuffle_dir is None:
        root = tempfile.mkdtemp(prefix=f"engine-shuffle-{run_id[:8]}-")
        fs, _ = filesystem(root)
        return fs, root, lambda ok: shutil.rmtree(root, ignore_errors=True)
    fs, base = filesystem(shuffle_dir, storage_options)
    root = posixpath.join(base, run_id)
    if is_local(fs):
        os.makedirs(root, exist_ok=True)

    def cleanup(ok: bool) -> None:
        if ok:
            with contextlib.suppress(Exception):
                fs.rm(root, recursive=True)
    return fs, root, cleanup


def _out_of_space(exc: BaseException) -> bool:
    """Whether a run's failure is a full disk (ENOSPC or a quota) where a task or the driver wrote."""
    from .executor import no_space
    return no_space(exc)


def _space_error(exc: BaseException, shuffle_dir: str | None, shuffle_fs, shuffle_root: str, out_fs, out: str,
                 output: str) -> ShuffleSpaceError:
    """The error of a run that filled a disk, naming the directory: the shuffle directory, or the output's when
    that is the disk that is full (of two local directories on different disks, the one with less room)."""
    shown_shuffle = shuffle_dir if shuffle_dir is not None else config.get("shuffle.dir") or shuffle_root
    candidates = [("shuffle directory", shuffle_fs, shuffle_root, str(shown_shuffle)),
                  ("output directory", out_fs, out, output)]
    room: list[tuple[int, int, str, str]] = []
    for i, (what, fs, path, shown) in enumerate(candidates):
        if not is_local(fs):
            continue
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        with contextlib.suppress(OSError):
            room.append((shutil.disk_usage(probe).free, i, what, shown))
    what, shown, free = "shuffle directory", str(shown_shuffle), None
    if room:
        free, _, what, shown = min(room)
    cause = exc.cause if isinstance(exc, StageFailedError) and exc.cause is not None else exc
    where = f" ({str(exc).split(': ', 1)[0]})" if isinstance(exc, StageFailedError) else ""
    left = f"; {free:,} bytes free there now" if free is not None else ""
    err = ShuffleSpaceError(
        f"no space left on device in the {what} {shown}{where}: {type(cause).__name__}: {cause}{left}. Nothing was "
        f"committed, and this run's shuffle and staged files were removed. Free space on that disk, or give the run "
        f"more room (shuffle_dir= or engine.shuffle.dir on a larger disk), then rerun", directory=shown)
    err.__cause__ = exc
    return err


def _execute(plan: Plan, specs: dict[str, InputSpec], client, info: ClusterInfo, executor: StageExecutor,
             rep: RunReport, *, run_id: str, out_fs, out: str, shipped, shuffle_fs, shuffle_root: str,
             skew_enabled: bool, mode: str, previous: commit.Manifest | None, snapshot: str, faults: Any,
             map_combine: bool = True, lock: Any = None, run_fence: RunFence | None = None,
             partition_by: tuple[str, ...] = (), logical_date: str | None = None,
             staged_for: str | None = None, code_fingerprint: str | None = None,
             staged_against: commit.Manifest | None = None) -> commit.Manifest:
    from . import reduceplan
    from .nodes import Execution, execute
    ex = Execution(plan, executor, rep, info, run_id, shipped, shuffle_fs, shuffle_root, out_fs, out, skew_enabled,
                   faults, map_combine, run_fence, partition_by=partition_by, logical_date=logical_date)
    final, schema = execute(ex, specs)
    reduceplan.cleanup_files(shuffle_fs, ex.leftovers)
    messages = [v["commit"] for v in final.values() if v["commit"]["files"]]
    winners, losers = commit.choose_winners(messages)
    commit.discard(out_fs, losers + [v["commit"] for v in executor.losers if "commit" in v])
    from .rejects import discard_messages
    discard_messages(out_fs, executor.losers)
    rejected = _rejected_messages(executor, specs, run_id, out_fs, out, run_fence, rep)
    if schema is None:
        schema = pa.schema([])
    meta = {"job": plan.job.name, "job_version": plan.job.version, "fingerprint": plan.fingerprint,
            "code_fingerprint": code_fingerprint or plan.fingerprint,
            "engine_version": ENGINE_VERSION,
            "input": _input_meta(plan, specs, snapshot),
            "timings": {"started": rep.start, "seconds": round(time.time() - rep.start, 3)},
            # what the run decided at run time, for `mapreduce explain OUT` (plain JSON values only)
            # (hot keys as short hashes unless engine.report.key-values; every string redacted)
            "decisions": redact_obj(json.loads(json.dumps({
                "skew": public_decisions(rep.skew[:500], bool(config.get("report.key-values"))),
                "joins": rep.joins[:500],
                "speculation": rep.speculation[:500],
                "stages": [{"name": s.name, "tasks": s.tasks, "attempts": s.attempts, "speculative": s.speculative,
                            "retries": s.retries} for s in rep.stages]}, default=str)))}
    if staged_for is not None:
        meta["staged_for"] = redact(staged_for)
        # which run each live partition held when this was staged: publish refuses to replace a
        # partition that has changed since (an old staged result never overwrites newer data)
        live_parts = (staged_against.doc.get("partitions") or {}) if staged_against is not None else {}
        meta["staged_against"] = {"generation": staged_against.generation if staged_against is not None else 0,
                                  "partitions": {d: rec.get("run_id") for d, rec in live_parts.items()
                                                 if isinstance(rec, dict)}}
    return commit.commit_job(out_fs, out, run_id=run_id, winners=winners, schema=schema, mode=mode,
                             previous=previous, meta=meta, hook=faults.commit_hook if faults is not None else None,
                             fence=lock.check if lock is not None else None, writers=run_fence,
                             partition_by=partition_by, logical_date=logical_date, rejected=rejected)


def _rejected_messages(executor: StageExecutor, specs: dict[str, InputSpec], run_id: str, out_fs, out: str,
                       run_fence: Any, rep: RunReport) -> list[dict]:
    """The run's rejected-rows files: the winning attempts', and one the driver writes for the input
    files it could not open while planning (``on_bad_file="reject"``); TooManyRejectedError past the limit."""
    rejects = executor.rejects
    bad = [(path, error) for s in specs.values() for path, error in getattr(s, "bad_files", ())]
    if bad:
        from types import SimpleNamespace
        from .rejects import TaskRejects
        ctx = SimpleNamespace(run_id=run_id, job=rep.job, round=0, out_fs=out_fs, out_root=out, fence=run_fence,
                              guards=executor.guards)
        own = TaskRejects(ctx, "file", 4999, 0)
        for path, error in bad:
            own.add_file(path, error)
        rejects.note({"rejected": own.close()})
    rejects.check(final=True)
    rep.rejected, rep.rejected_sample = rejects.count, list(rejects.sample)
    return rejects.messages


def _already_committed(previous: commit.Manifest | None, fingerprint: str, snapshot: str, logical_date: str | None,
                       partition_by: tuple[str, ...]) -> str | None:
    """The run id that already committed this job's output for this input snapshot (and logical
    date, and partitioning), or None when there is something to do."""
    if previous is None or previous.damage is not None:
        return None
    doc = previous.doc
    if list(doc.get("partition_by") or ()) != list(partition_by):
        return None
    if logical_date is not None:
        rec = (doc.get("dates") or {}).get(logical_date)
        if rec and rec.get("fingerprint") == fingerprint and rec.get("input_digest") == snapshot:
            return rec.get("run_id")
        return None
    if doc.get("fingerprint") == fingerprint and (doc.get("input") or {}).get("digest") == snapshot:
        return doc.get("run_id")
    return None


def _input_meta(plan: Plan, specs: dict[str, InputSpec], snapshot: str) -> dict:
    """The manifest's record of what was read: one input's snapshot, or every named input's."""
    if not plan.multi_input:
        spec = next(iter(specs.values()))
        return {"digest": snapshot, "files": len(spec.snapshot), "bytes": spec.total_bytes,
                "snapshot": redact_obj(list(spec.snapshot)[:1000])}
    return {"digest": snapshot, "files": sum(len(s.snapshot) for s in specs.values()),
            "bytes": sum(s.total_bytes for s in specs.values()),
            "inputs": {name: {"digest": _snapshot_digest(s), "format": s.format, "files": len(s.snapshot),
                              "bytes": s.total_bytes, "snapshot": redact_obj(list(s.snapshot)[:1000])}
                       for name, s in specs.items()}}


def __getattr__(name: str) -> Any:
    """Names kept importable from here, loaded on first use: StageExecutor and _spec_digest
    (engine.executor), TaskReport (engine.report)."""
    if name in ("StageExecutor", "_spec_digest"):
        from . import executor
        return getattr(executor, name)
    if name == "TaskReport":
        from .report import TaskReport
        return TaskReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run", "RunResult", "StageExecutor", "ENGINE_VERSION"]
_ = (EngineError,)
