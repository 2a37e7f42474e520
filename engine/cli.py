"""The ``mapreduce`` command (also ``python -m engine``).

    mapreduce run JOB [--param KEY=VALUE ...] --input IN | --input NAME=IN ... --output OUT [--scheduler ADDR]
                  [--workers N] [--mode M] [--no-speculation] [--no-skew] [--no-map-combine]
                  [--partition-size SIZE] [--report report.html] [--resume] [--force] [--wait-lock 10m] [--json]
    mapreduce verify PATH [--json]
    mapreduce clean PATH [--force]
    mapreduce explain JOB [--param KEY=VALUE ...] [--input IN] [--json]
    mapreduce history [--job NAME] [--since 30d] [--status S] [--json]
    mapreduce show RUN_ID [--json | --html FILE]
    mapreduce slo [--job NAME] [--since 30d] [--config FILE] [--json]
    mapreduce alerts [--job NAME] [--open] [--test HOOK]
    mapreduce dashboard [-o FILE] [--since 30d] [--job NAME] [--run RUN_ID]
    mapreduce backfill JOB --input IN --output OUT --from DATE --to DATE --partition-by COLS [--where COND]
                  [--parallel N] [--force] [--fail-fast] [--wait SECONDS] [--json] [-q]

``JOB`` is a Python file or an importable module that defines a module-level ``job``, or
``FILE.py:NAME`` / ``module:NAME`` for the ``Job`` called NAME there (``jobs/groupby.py:q3``), or a
function there that returns one, called with the ``--param key=value`` values as keyword arguments
(a value is JSON when it parses as JSON, else text). An input may be a glob (``'data/*.parquet'``,
``'s3://bucket/day=*/'``): the files it matches. ``--wait-lock 10m`` waits for another run that holds
the output's lock instead of failing at once. Exit codes:
0 success (including a rerun that had nothing to do), 1 the run or check failed (one-paragraph
reason on stderr), 2 usage errors (and ``verify`` of a path that does not exist), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: the run
unwinds as on Ctrl-C, releasing its lock and closing its fence, and the history records it).
``mapreduce --debug ...`` also prints the traceback of an unexpected error.

Every ``run`` (and every date of a ``backfill``) leaves a record in the run history whatever its
end (:mod:`engine.history`); ``run --json`` prints it on stdout, on failure too. ``--metrics-file``,
``--push-gateway``, ``--on-failure``, ``--on-success`` and ``--on-slo-breach`` export it
(:mod:`engine.metrics`, :mod:`engine.alerts`).

Output streams: results (the run summary, the plan, the history) go to stdout; progress, log
lines and errors go to stderr. On a terminal the progress is a one-line bar per stage; otherwise
(a pipe, a file, a CI log) it is timestamped lines, ``2026-12-01 09:00:00 STAGE: DONE/TOTAL tasks, ROWS
rows, RATE rows/s, ELAPSED elapsed, ETA LEFT`` (the stage's first task, then at most one line every 5 s,
and the line that ends it). dask's own log lines go to a log file, not the terminal
(:mod:`engine.quiet`; ``--debug`` keeps them on the terminal); ``-q`` leaves errors and the summary.

``explain JOB`` prints the plan and the job fingerprint with what it covers (the code of how many
functions from which user modules, or the ``version=`` that pins it); ``explain OUT`` on a committed
output prints its fingerprint, engine version and run-time decisions.

``backfill`` runs JOB once per logical date from ``--from`` to ``--to`` (``engine.backfill``), skipping
dates already committed from the same input, and prints a table of what each date did; exit 0 when
every date committed or was skipped, 1 when one failed (the table says which), 130/143 when stopped
(after printing what finished; the same command again finishes the rest).

``--force`` recomputes a committed output that the same job already wrote from the same input
(which is otherwise a no-op that exits 0); it does not by itself replace committed output:
``--mode error`` (the default) still refuses it, so pair ``--force`` with ``--mode overwrite``.

A damaged ``_SUCCESS`` (unreadable, failing its own checksum, or listing a file outside the output)
is named by ``verify`` (exit 1); ``run --mode overwrite`` replaces it, and ``clean PATH --force``
removes it together with the engine's data files in PATH (``clean`` without ``--force`` refuses).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_GATE = 3          # a --max-change gate tripped: a staged result or canary was not published, or
                       # `mapreduce diff` found outputs that differ by more than allowed


from .errors import Terminated  # noqa: E402 - SIGTERM as an exception (kept importable from here)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()

log = logging.getLogger("engine")


def _job_error(spec: str, path: str | None, exc: BaseException):
    """A JobDefinitionError for a job file or module that failed while being imported."""
    from .errors import JobDefinitionError
    where = ""
    if isinstance(exc, SyntaxError):
        where = f", line {exc.lineno}" if exc.lineno else ""
    elif path is not None:
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        where = f", line {lines[-1]}" if lines else ""
    detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return JobDefinitionError(f"loading job {spec!r} failed{where}: {type(exc).__name__}: {detail}")


_SPEC_NAME = re.compile(r"(?P<source>.+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``FILE.py:NAME`` or ``module:NAME`` as ``(source, NAME)``; ``(spec, None)`` without ``:NAME``."""
    m = _SPEC_NAME.fullmatch(spec)
    if m is None or os.path.exists(spec):        # a file whose name holds a colon is still that file
        return spec, None
    return m.group("source"), m.group("name")


def parse_params(values: list[str] | None) -> dict[str, Any]:
    """``--param key=value`` values as keyword arguments: a value is JSON when it parses as JSON
    (``10``, ``0.5``, ``true``, ``null``, ``"text"``, ``[1, 2]``), else the text as it is."""
    import json
    from .errors import JobDefinitionError
    params: dict[str, Any] = {}
    for text in values or ():
        key, eq, value = text.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise JobDefinitionError(f"--param {text!r}: expected NAME=VALUE, e.g. --param day=2026-11-30 "
                                     "or --param top=10")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _load_module(source: str, spec: str):
    """The module of a job file (by path) or an importable module (by name)."""
    from .errors import EngineError, JobDefinitionError
    if source.endswith(".py") or os.path.sep in source or (os.altsep and os.altsep in source):
        path = os.path.abspath(source)
        if not os.path.isfile(path):
            raise JobDefinitionError(f"job file {source!r} does not exist" if not os.path.exists(path)
                                     else f"job {source!r} is not a file; pass a Python file that defines `job`")
        name = "mapreduce_job_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise JobDefinitionError(f"cannot load {source!r} as a Python module; the job file must end in .py")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # lets a job file import its neighbours
        try:
            mod_spec.loader.exec_module(module)
        except EngineError:
            sys.modules.pop(name, None)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of user code while loading is a job error
            sys.modules.pop(name, None)
            raise _job_error(spec, path, exc) from exc
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # `mapreduce run jobs.groupby:q3` finds ./jobs as `python -m` would
    try:
        return importlib.import_module(source)
    except EngineError:
        raise
    except ModuleNotFoundError as exc:
        hint = "" if exc.name != source.split(".")[0] else "; pass a path to a .py file, or a module on sys.path"
        raise JobDefinitionError(f"cannot import job module {source!r}: {exc}{hint}") from exc
    except Exception as exc:  # noqa: BLE001
        raise _job_error(spec, None, exc) from exc


def _job_choices(module) -> list[str]:
    """Names in ``module`` that ``FILE.py:NAME`` can choose: its jobs, then its functions annotated to
    return a Job (``def daily(day: str) -> Job``)."""
    import inspect
    from .job import Job
    jobs, functions = [], []
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, Job):
            jobs.append(attr)
        elif inspect.isfunction(value) and value.__module__ == module.__name__:
            ret = value.__annotations__.get("return")
            if ret is Job or (isinstance(ret, str) and ret.rsplit(".", 1)[-1] == "Job"):
                params = ", ".join(inspect.signature(value).parameters)
                functions.append(f"{attr}({params})")
    return jobs + functions


def _call_job_function(fn, what: str, params: dict[str, Any]):
    """``fn(**params)`` for a function that returns a Job; errors name the parameter and the flag."""
    import inspect
    from .errors import JobDefinitionError
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        accepted = [p for p in sig.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        names = ", ".join(p.name for p in accepted) or "none"
        unknown = [k for k in params if k not in {p.name for p in accepted}] if not takes_any else []
        if unknown:
            raise JobDefinitionError(f"--param {unknown[0]}: {what} takes no parameter {unknown[0]!r} "
                                     f"(its parameters: {names})")
        missing = [p.name for p in accepted if p.default is p.empty and p.name not in params]
        if missing or any(p.kind is p.POSITIONAL_ONLY and p.default is p.empty for p in sig.parameters.values()):
            if missing:
                raise JobDefinitionError(f"{what} needs a value for its parameter {missing[0]!r}: pass "
                                         + " ".join(f"--param {m}=VALUE" for m in missing))
            raise JobDefinitionError(f"{what} takes positional-only parameters, which --param cannot pass; "
                                     "make them keyword parameters")
    return fn(**params)


def load_job(spec: str, params: dict[str, Any] | None = None):
    """The job that ``spec`` names: ``FILE.py`` or ``module`` (its module-level ``job``), or
    ``FILE.py:NAME`` / ``module:NAME`` (the ``Job`` called NAME there). A function in place of the job
    is called with ``params`` (``--param key=value``) and must return a ``Job``."""
    from .errors import EngineError, JobDefinitionError
    from .job import Job
    params = dict(params or {})
    source, name = split_spec(spec)
    module = _load_module(source, spec)
    attr = name or "job"
    target = getattr(module, attr, None)
    if target is None:
        choices = _job_choices(module)
        example = f"{source}:{choices[0].split('(')[0]}" if choices else None
        if name is not None:
            raise JobDefinitionError(f"{source} has no {name!r}; " + (
                f"it defines {', '.join(choices)}: choose one, e.g. `mapreduce run {example} ...`" if choices else
                "it defines no job (a module-level `engine.Job`, or a function returning one)"))
        if choices:
            raise JobDefinitionError(f"{source} defines no module-level `job` but {len(choices)} job(s): "
                                     f"{', '.join(choices)}; choose one as JOB:NAME, e.g. `mapreduce run {example} ...`")
        raise JobDefinitionError(f"{source} must define a module-level `job = engine.Job(...)`, but it defines no "
                                 "`job`; e.g. job = Job('name').map(fn).reduce(by='key', aggs={'n': agg.count()})")
    what = f"{source}:{attr}"
    if isinstance(target, Job):
        if params:
            raise JobDefinitionError(f"--param {next(iter(params))}: {what} is a Job, not a function, so it takes "
                                     "no parameters; name a function that returns a Job to pass --param values")
        return target
    if not callable(target):
        raise JobDefinitionError(f"{what} is a {type(target).__name__}, not a Job or a function returning one; "
                                 "e.g. job = Job('name').map(fn).reduce(by='key', aggs={'n': agg.count()})")
    try:
        job = _call_job_function(target, what, params)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's function failed while building the job
        path = getattr(module, "__file__", None)
        raise _job_error(spec, os.path.abspath(path) if path else None, exc) from exc
    if not isinstance(job, Job):
        raise JobDefinitionError(f"{what}(...) returned a {type(job).__name__}, not a Job; a job function "
                                 "must return engine.Job(...)")
    return job


def _Progress():  # noqa: N802 - the CLI's progress: a bar on a terminal, timestamped lines otherwise
    from .progress import Progress
    return Progress(sys.stderr)      # a given stream: "tty" when it is one, else "lines" (never the notebook's)


RUN_JSON_HELP = """\
--json prints one JSON document on stdout and nothing else there (progress, logs and the error
paragraph go to stderr; exit codes as without --json). It is the run's history record, on failure too:
  record_id, run_id, job, fingerprint  the run and its job (run_id is the same for the same job and input)
  status          committed | skipped (nothing to do) | failed | interrupted | refused
  skipped         (on success) true when the output already held this job's output for this input
  output_total_rows, output_total_files   (on success) what the output holds after the run (all generations)
  started, finished, seconds   Unix times and duration
  input_files, input_bytes, input_rows
  output          the output path or URL
  output_rows, output_files, output_bytes   what this run wrote (0 when skipped)
  message, error_type, error_location       what happened; for a failure, the error and the user's file:line
  tasks, attempts, retries, speculative, resumed, rejected, task_failures, failed_tasks
  cpu_seconds, worker_cpu_seconds, thread_seconds, memory_gb_seconds, workers, threads
  logical_date, host, pid, user, engine_version, staged (with --stage-to)
  report          the run report: stages, tasks, skew/speculation decisions, error with traceback,
                  settings, versions
A run that fails before it starts (bad arguments, a job that cannot be loaded) still prints a record;
argparse usage errors (exit 2) print none."""

VERIFY_JSON_HELP = """\
--json prints one JSON document on stdout:
  path, ok (true only when intact), verdict: intact | corrupt | incomplete | missing
  intact:   files, rows, bytes, run_id, generation  (what was checked)
  otherwise: error (one paragraph), problems (one entry per bad file)"""

EXPLAIN_JSON_HELP = """\
--json prints one JSON document on stdout:
  for a job:   job, fingerprint, fingerprint_covers, plan (the lines of the plan)
  for an output: output, the manifest's fields (job, run_id, fingerprint, schema, input, meta, ...)
               without its file list, file_count, partition_count
  on an error: ok (false), status, error_type, error"""

JOB_HELP = ("the job: FILE.py or an importable module (its module-level `job`), or FILE.py:NAME / module:NAME "
            "(the Job called NAME there, or a function returning one, called with the --param values)")


def _param_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", "-p", action="append", metavar="KEY=VALUE",
                        help="a keyword argument of the job function JOB:NAME names (repeatable); VALUE is "
                             "read as JSON when it is JSON (10, 0.5, true, [1, 2]), else as text")


def _duration(text: str) -> float:
    """Seconds from ``30s``, ``10m``, ``1h``, ``2d`` or a bare number of seconds (argparse type)."""
    from .cli_ops import _window
    return _window(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _canary_size(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of partitions or a fraction, got {text!r}") from None
    if value <= 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or a fraction between 0 and 1, got {text!r}")
    return int(value) if value >= 1 else value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mapreduce", description="Run and check dataframe-native MapReduce jobs.",
                                epilog="Exit codes: 0 success, 1 failed (reason on stderr), 2 usage error, 3 a --max-change gate "
                                       "tripped (nothing published), 130/143 interrupted/terminated.")
    p.add_argument("--debug", action="store_true", help="print tracebacks of unexpected errors, and the workers' logs")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{run,backfill,verify,explain,history,show,slo,alerts,dashboard,publish,diff,clean}")
    r = sub.add_parser("run", parents=[common], help="run a job and commit its output",
                       description="Run JOB over the input and commit its output atomically. Rerunning the same "
                                   "job on unchanged input over its own committed output does nothing and exits 0.",
                       epilog=RUN_JSON_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("job", help=JOB_HELP)
    _param_flag(r)
    r.add_argument("--input", "-i", required=True, action="append",
                   help="input path or URL (repeatable); NAME=PATH for a job that reads named inputs")
    r.add_argument("--output", "-o", required=True, help="output path or URL")
    r.add_argument("--scheduler", help="address of an existing dask scheduler (default: an embedded local cluster, "
                                       "or DASK_SCHEDULER_ADDRESS)")
    r.add_argument("--workers", type=_positive_int, help="worker processes of the embedded cluster (default: cores)")
    r.add_argument("--mode", choices=["error", "overwrite", "append", "overwrite-partitions"], default="error",
                   help="what to do with committed output: refuse it (default), replace it, add to it, or replace "
                        "only the partitions this run writes (with --partition-by)")
    r.add_argument("--partition-by", help="write the output Hive-partitioned by these columns, e.g. date,region")
    r.add_argument("--date", help="the run's logical date (YYYY-MM-DD): engine.logical_date() in the job, {date} in "
                                  "--where; a rerun for a date already committed from the same input does nothing")
    r.add_argument("--where", help="only input rows satisfying this condition, e.g. \"date = '{date}'\" or "
                                   "\"date >= '2026-11-01' and region in ('eu', 'us')\"; Hive partitions it rules out "
                                   "are not read")
    r.add_argument("--stage-to", help="commit into this staging output instead, show how it differs from the live "
                                      "partitions it replaces, and publish it only with --max-change (or later with "
                                      "`mapreduce publish`)")
    r.add_argument("--max-change", help="publish the staged result (or go on after the canary) only if no "
                                        "partition's row count moves by more than this, e.g. 5%%; else exit 3")
    r.add_argument("--canary", type=_canary_size, help="first run the job on N sampled input partitions (or a "
                                                       "fraction such as 0.05) and compare with the live output")
    r.add_argument("--format", help="input format (default: from file names)")
    r.add_argument("--no-speculation", action="store_true", help="never re-run straggling tasks speculatively")
    r.add_argument("--no-skew", action="store_true", help="no run-time skew splitting of reduce partitions")
    r.add_argument("--no-map-combine", action="store_true",
                   help="ship map output uncombined (reducers combine it); for tuning")
    r.add_argument("--partition-size", help="target reduce partition size, e.g. 64MiB")
    r.add_argument("--shuffle-dir", help="where map outputs go (a URL every worker reaches)")
    r.add_argument("--report", help="write an HTML run report here")
    r.add_argument("--resume", action="store_true", help="reuse work of an interrupted run of the same job and input")
    r.add_argument("--force", action="store_true",
                   help="recompute even if this job already committed this output from this input "
                        "(combine with --mode overwrite to replace it)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress, log lines or warnings: only the summary and errors")
    r.add_argument("--json", action="store_true",
                   help="print the run's record as one JSON document on stdout (on failure too), for schedulers; "
                        "its fields are listed below")
    r.add_argument("--wait-lock", type=_duration, metavar="DURATION",
                   help="when another run is writing the output, wait up to this long for it to end (e.g. 30s, "
                        "10m, 1h), logging who holds it; then fail as without it (default: fail at once)")
    _ops_flags(r)
    _guard_flags(r)
    _tls_flags(r)
    _backfill_parser(sub, common)
    pb = sub.add_parser("publish", parents=[common], help="make a staged result live (atomic partition replace)",
                        description="Replace the live output's partitions with those of the staged output STAGED "
                                    "(written by `mapreduce run --stage-to STAGED`), in one atomic manifest swap; "
                                    "the other partitions stay as they are.")
    pb.add_argument("staged", help="the staging output")
    pb.add_argument("--output", help="the live output (default: the one the staged run was staged for)")
    pb.add_argument("--force", action="store_true",
                    help="replace live partitions even if another run rewrote them after this result was staged")
    c = sub.add_parser("clean", parents=[common], help="remove what dead runs left in an output",
                       description="Remove attempt files, pending multipart uploads and unreferenced part files "
                                   "that dead runs left in PATH. Refuses (exit 1) while a live run holds PATH, and "
                                   "when PATH's _SUCCESS manifest is damaged unless --force is given.")
    c.add_argument("path")
    c.add_argument("--force", action="store_true",
                   help="also remove a damaged _SUCCESS manifest and every data file of this engine in PATH")
    v = sub.add_parser("verify", parents=[common], help="re-check every committed file's checksum",
                       description="Exit 0 when PATH's committed output is intact, 1 when it is corrupt or "
                                   "incomplete (each bad file is named on stderr), 2 when PATH does not exist.",
                       epilog=VERIFY_JSON_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("path")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout")
    rj = sub.add_parser("rejected", parents=[common], help="summarize the rows a run set aside (OUT/_rejected)",
                        description="Counts by error and by input file of the rows the committed run of OUT "
                                    "rejected (on_error/on_bad_file 'reject'), and the first of them. Exit 0 when "
                                    "it rejected none, 3 when it rejected some, 1 when OUT has no committed output.")
    rj.add_argument("path")
    rj.add_argument("--rows", type=int, default=5, metavar="N", help="print the first N rejected rows (default 5)")
    rj.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    e = sub.add_parser("explain", parents=[common],
                       help="print a job's plan (with --input, the Dask graph size); or, given a committed "
                            "output directory, what its run decided (skew, speculation)",
                       epilog=EXPLAIN_JSON_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("job", help="a job (as for run: FILE.py, FILE.py:NAME, module, module:NAME), or a committed "
                               "output path")
    _param_flag(e)
    e.add_argument("--input", "-i", action="append")
    e.add_argument("--format", help="input format (default: from file names)")
    e.add_argument("--partition-size")
    e.add_argument("--json", action="store_true", help="print the plan (or the committed output's record) as JSON")
    from . import cli_ops
    cli_ops.add_parsers(sub, common, _positive_int)
    for name in ("slo", "alerts", "dashboard"):
        module = _optional_command(name)
        if module is not None:
            module.add_parser(sub, common)
    _diff_parser(sub, common)
    return p


def _ops_flags(parser: argparse.ArgumentParser, each: str = "the run") -> None:
    """--metrics-file, --push-gateway and the alert hooks (``run``, and ``backfill`` for each date's run)."""
    ops = parser.add_argument_group("operations (defaults: the engine.metrics.* and engine.alerts.* settings)")
    ops.add_argument("--metrics-file", help=f"write {each}'s Prometheus metrics to this node-exporter textfile "
                                            "(a .prom file, or a directory)")
    ops.add_argument("--push-gateway", help=f"push {each}'s metrics to this Prometheus Pushgateway URL")
    ops.add_argument("--on-failure", help=f"a command or http(s):// URL given a JSON event when {each} fails "
                                          "(once per job and logical date, however often it is retried)")
    ops.add_argument("--on-success", help=f"a command or http(s):// URL given a JSON event when {each} commits")
    ops.add_argument("--on-slo-breach", help="a command or http(s):// URL given a JSON event when the job's SLOs "
                                             "are breached")


_GUARD_KEYS = {"on_error": "engine.rejects.on-error", "max_rejected": "engine.rejects.max",
               "on_bad_file": "engine.rejects.on-bad-file", "retry_on": "engine.retries.retry-on",
               "retry_budget": "engine.retries.budget", "max_tasks": "engine.limits.max-tasks",
               "max_seconds": "engine.limits.max-seconds", "max_cpu_seconds": "engine.limits.max-cpu-seconds"}


def _guard_flags(parser: argparse.ArgumentParser, each: str = "the run") -> None:
    """Bad-record policy, retry policy, concurrency limit and budgets (engine.guards.Guards)."""
    g = parser.add_argument_group("bad records and guards (defaults: the job's, then the engine.rejects.*, "
                                  "engine.retries.* and engine.limits.* settings)")
    g.add_argument("--on-error", choices=("fail", "reject"),
                   help="reject: rows a map or reduce function fails on go to OUT/_rejected/ and the run goes on")
    g.add_argument("--max-rejected", metavar="N|FRACTION",
                   help=f"rows {each} may reject before it fails: a count (100) or a fraction of its input "
                        "rows (0.001 or 0.1%%); default 1%%")
    g.add_argument("--on-bad-file", choices=("fail", "reject"),
                   help="reject: input files no reader can open are set aside whole")
    g.add_argument("--retry-on", metavar="CLASS=N,...",
                   help="attempts per exception class, e.g. ConnectionError=5,ValueError=1")
    g.add_argument("--retry-budget", type=int, metavar="N", help=f"retries {each} may spend in all")
    g.add_argument("--max-tasks", type=int, metavar="N", help=f"tasks of {each} running at once")
    g.add_argument("--max-seconds", metavar="SECONDS|15m",
                   help=f"wall-clock budget of {each}: past it the run stops and commits nothing")
    g.add_argument("--max-cpu-seconds", type=float, metavar="SECONDS",
                   help=f"task CPU-seconds budget of {each}: past it the run stops and commits nothing")


def _guard_options(args) -> dict[str, Any]:
    """The guard flags given, as ``engine.run`` keyword arguments (they override the job's own)."""
    return {name: getattr(args, name) for name in _GUARD_KEYS if getattr(args, name, None) is not None}


def _tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-ca-file, --tls-cert, --tls-key: the driver's certificate for a tls:// --scheduler."""
    tls = parser.add_argument_group("TLS to a tls:// --scheduler (defaults: the engine.tls.* settings, else dask's "
                                    "distributed.comm.tls.*)")
    tls.add_argument("--tls-ca-file", help="PEM file of the CA that signed the cluster's certificates")
    tls.add_argument("--tls-cert", help="PEM certificate of this driver, signed by that CA")
    tls.add_argument("--tls-key", help="PEM private key of that certificate (if not in the --tls-cert file)")


def _tls_options(args) -> dict[str, Any]:
    keys = {"tls_ca_file": "engine.tls.ca-file", "tls_cert": "engine.tls.cert", "tls_key": "engine.tls.key"}
    return {key: getattr(args, name) for name, key in keys.items() if getattr(args, name, None)}


def _ops_options(args) -> dict[str, Any]:
    """The operations flags as engine.* settings (for every run a command makes)."""
    keys = {"metrics_file": "engine.metrics.file", "push_gateway": "engine.metrics.push-gateway",
            "on_failure": "engine.alerts.on-failure", "on_success": "engine.alerts.on-success",
            "on_slo_breach": "engine.alerts.on-slo-breach"}
    return {key: getattr(args, name) for name, key in keys.items() if getattr(args, name, None)}


def _optional_command(name: str):
    """The module of command ``name`` (engine.slo, engine.dashboard), or None if it cannot be imported."""
    try:
        return importlib.import_module(f"engine.{name}")
    except ImportError:
        return None


def _change_threshold(text: str) -> float:
    from .diff import parse_change
    try:
        return parse_change(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _diff_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("diff", parents=[common], help="compare two committed outputs (rows, keys, aggregates)",
                       description="Compare the committed outputs A (e.g. the live one) and B (e.g. a staged one): "
                                   "row counts per partition, schema, per-column aggregates, and with --key the key "
                                   "coverage and, for outputs of at most --max-rows rows, an exact row-level diff. "
                                   "Every file is checked against its checksum first.",
                       epilog="Exit codes: 0 no partition's row count moved by more than --max-change (or no gate "
                              "given), 3 the gate tripped (each partition is named on stderr), 1 an output is "
                              "missing or damaged or the comparison cannot be made as asked, 2 usage error.")
    d.add_argument("a", metavar="A", help="committed output path or URL (the reference, e.g. the live output)")
    d.add_argument("b", metavar="B", help="committed output path or URL (the candidate, e.g. a staged run)")
    d.add_argument("--key", help="columns that identify a row, comma-separated (key coverage, row-level diff)")
    d.add_argument("--partitions", action="append",
                   help="compare only these partitions (or the partitions under these directories), comma-separated "
                        "or repeated, e.g. date=2026-11-30/region=eu or date=2026-11-30")
    d.add_argument("--by", help="compare per value of these columns (comma-separated) instead of per partition "
                                "directory; --by '' compares the outputs whole")
    d.add_argument("--max-rows", type=_positive_int, default=100_000,
                   help="largest side (in rows) that gets an exact row-level diff (default 100000)")
    d.add_argument("--max-change", type=_change_threshold,
                   help="exit 3 if any partition's row count moves by more than this, e.g. 5%% or 0.05 (a "
                        "partition that appears or disappears is a 100%% change)")
    d.add_argument("--json", action="store_true", help="print the comparison as JSON")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
    return value


def _backfill_parser(sub, common) -> None:
    b = sub.add_parser("backfill", parents=[common], help="run a job once per logical date over a range of dates",
                       description="Run JOB once per logical date from --from to --to (inclusive) into the "
                                   "partitioned output, each date replacing exactly the partitions it writes "
                                   "(--mode overwrite-partitions, --date D, --where with {date} = D). Dates already "
                                   "committed by this job from the same input are skipped, so after a kill the same "
                                   "command finishes the rest. Prints a table of the dates. Exit 0 when every date "
                                   "committed or was skipped, 1 when one failed, 130/143 when interrupted.")
    b.add_argument("job", help=JOB_HELP)
    _param_flag(b)
    b.add_argument("--input", "-i", required=True, action="append",
                   help="input path or URL (repeatable); NAME=PATH for a job that reads named inputs")
    b.add_argument("--output", "-o", required=True, help="the partitioned output path or URL")
    b.add_argument("--from", dest="start", required=True, metavar="DATE", help="first logical date, YYYY-MM-DD")
    b.add_argument("--to", dest="end", required=True, metavar="DATE", help="last logical date (inclusive)")
    b.add_argument("--partition-by", required=True, help="the output's partition columns, e.g. date or date,region")
    b.add_argument("--where", help="the input rows of a date, e.g. \"date = '{date}'\" ({date} is the date run)")
    b.add_argument("--parallel", type=_positive_int, default=1, metavar="N",
                   help="run up to N dates at once (each staged, then published atomically); default 1")
    b.add_argument("--force", action="store_true", help="recompute dates already committed from the same input")
    b.add_argument("--fail-fast", action="store_true", help="stop at the first date that fails")
    b.add_argument("--wait", type=_seconds, metavar="SECONDS",
                   help="wait this long for another backfill of the same output to end (default: refuse at once)")
    b.add_argument("--wait-lock", type=_duration, metavar="DURATION",
                   help="the same as --wait, as a duration (30s, 10m, 1h): wait for another backfill or run "
                        "holding the output")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.add_argument("--quiet", "-q", action="store_true", help="no per-date lines, only the summary and errors")
    _ops_flags(b, each="each date's run")
    _guard_flags(b, each="each date's run")
    _tls_flags(b)
    b.add_argument("--scheduler", help="address of an existing dask scheduler")
    b.add_argument("--workers", type=_positive_int, help="worker processes of the embedded cluster (default: cores)")
    b.add_argument("--format", help="input format (default: from file names)")
    b.add_argument("--no-speculation", action="store_true", help="never re-run straggling tasks speculatively")
    b.add_argument("--no-skew", action="store_true", help="no run-time skew splitting of reduce partitions")
    b.add_argument("--partition-size", help="target reduce partition size, e.g. 64MiB")
    b.add_argument("--shuffle-dir", help="where map outputs go (a URL every worker reaches)")


# Messages of the engine name Python parameters; on the command line the flags are what to type.
_CLI_WORDS = [
    (re.compile(r"\bmode='(error|overwrite|append)'"), r"--mode \1"),
    (re.compile(r"\bforce=True\b"), "--force"),
    (re.compile(r"\bresume=True\b"), "--resume"),
    (re.compile(r"\bshuffle_dir=(?=\s)"), "--shuffle-dir"),
    (re.compile(r"\bformat=(?=\s)"), "--format"),
    (re.compile(r"\bpartition_size=(?=\S)"), "--partition-size "),
    (re.compile(r"\bor run with cluster=None\b"), "or run without --scheduler"),
    (re.compile(r"\b(max_seconds|max_cpu_seconds|retry_budget|max_rejected)=(?=[\s);]|$)"),
     lambda m: "--" + m.group(1).replace("_", "-")),
    (re.compile(r"\braise (max_rejected|retry_budget)\b"), lambda m: "raise --" + m.group(1).replace("_", "-")),
    (re.compile(r"\bmax_rejected \("), "--max-rejected ("),
    (re.compile(r"\bmore than max_rejected=(\d)"), r"more than --max-rejected \1"),
]


def _cli_words(text: str) -> str:
    for pattern, repl in _CLI_WORDS:
        text = pattern.sub(repl, text)
    return text


def _one_paragraph(exc: BaseException) -> str:
    from .redact import redact
    return " ".join(_cli_words(redact(str(exc))).split()) or type(exc).__name__


class _CliFormatter(logging.Formatter):
    """Log lines that name command-line flags where the engine's messages name Python parameters."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        return _cli_words(super().formatMessage(record))


def _configure_logging(quiet: bool, debug: bool) -> None:
    from . import config
    config.on_dask(lambda: _configure_dask(debug))   # when a run needs dask (not for a no-op or a check)
    engine_log = logging.getLogger("engine")
    engine_log.setLevel(logging.ERROR if quiet else logging.INFO)   # -q: retries and warnings are in the report
    if not any(getattr(h, "_mapreduce_cli", False) for h in engine_log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_CliFormatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
        handler._mapreduce_cli = True  # type: ignore[attr-defined]
        engine_log.addHandler(handler)
        engine_log.propagate = False


def _configure_dask(debug: bool) -> None:
    import dask.config
    if debug:
        dask.config.set({"engine.log.dask-terminal": True})     # dask's own lines stay on the terminal
    # distributed configures its loggers (in this process and in every worker process) when it is
    # first imported. Keep its chatter to real problems: a failing task is retried and reported by
    # the engine, so the workers' own "Compute Failed" tracebacks only show with --debug.
    current = dask.config.get("distributed.logging", default=None) or {}
    if isinstance(current, dict) and "version" not in current \
            and not dask.config.get("distributed.logging-file-config", default=None):
        level = {"distributed": "warning" if debug else "error"}
        dask.config.set({"distributed.logging": {**level, **current}})  # the user's own levels win
    if not debug:
        preload = dask.config.get("distributed.worker.preload", default=None) or []
        preload = [preload] if isinstance(preload, str) else list(preload)
        if __name__ not in preload:
            dask.config.set({"distributed.worker.preload": [*preload, __name__]})
    if "distributed" in sys.modules:  # imported already: its configuration has run, adjust the level here
        logging.getLogger("distributed").setLevel(logging.WARNING if debug else logging.ERROR)


class _NoComputeFailed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


def dask_setup(worker: Any) -> None:
    """Worker preload of the embedded cluster the CLI starts (``distributed.worker.preload``).

    A failing task is retried by the driver and, if it keeps failing, reported as one paragraph, so
    the worker does not also log every failed attempt with a traceback (``--debug`` keeps them).
    """
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _NoComputeFailed) for f in log.filters):
        log.addFilter(_NoComputeFailed())


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)    # what was typed, for hints that repeat it
    _configure_logging(getattr(args, "quiet", False), args.debug)
    from .errors import EngineError
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt) as exc:
        if getattr(args, "json", False) and args.command in ("run", "explain", "history"):
            # one JSON document on stdout whatever the end: the failed run's record, else the error
            if args.command == "run" and getattr(exc, "run_record", None) is not None:
                print(_json_doc(exc.run_record), flush=True)
            else:
                print(_error_json(args, exc), flush=True)
        if isinstance(exc, KeyboardInterrupt):
            return _interrupted(exc)
        if isinstance(exc, EngineError):
            return _failed(exc, args)
        return _unexpected(exc, args)


def _json_doc(rec: dict | None, result: Any = None) -> str:
    """``run --json``: the run's record (report included) as one JSON document."""
    import json
    from .cli_ops import record_json
    doc = record_json(rec) if rec is not None else {}
    if result is not None:
        doc.setdefault("output", result.output)
        doc["skipped"] = bool(result.skipped)
        doc["output_total_rows"] = result.report.output_total_rows
        doc["output_total_files"] = result.report.output_total_files
        if result.staged is not None:
            doc["staged"] = result.staged
    return json.dumps(doc, default=str)


def _error_json(args, exc: BaseException) -> str:
    """The JSON document of a command that failed before it had anything else to print."""
    import json
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    doc = {"ok": False, "status": status, "error_type": type(exc).__name__, "error": _one_paragraph(exc)}
    if getattr(args, "output", None):
        doc["output"] = args.output
    return json.dumps(doc)


def _failed(exc: BaseException, args) -> int:
    print(f"error: {type(exc).__name__}: {_one_paragraph(exc)}", file=sys.stderr)
    if args.debug:
        traceback.print_exc()
    from .errors import ChangeGateError
    return EXIT_GATE if isinstance(exc, ChangeGateError) else EXIT_FAILED


def _interrupted(exc: BaseException) -> int:
    if "engine.telemetry" in sys.modules:       # runs still going in other threads (a parallel backfill's)
        from .telemetry import interrupt_live
        interrupt_live(exc)
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    print(f"{what}; the output holds what was committed before (all of a run or none of it): rerun the "
          "same command to finish (--resume reuses the tasks this run finished)", file=sys.stderr)
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _unexpected(exc: BaseException, args) -> int:
    print(f"error: unexpected {type(exc).__name__}: {_one_paragraph(exc)}"
          + ("" if args.debug else " (rerun with `mapreduce --debug ...` for the traceback)"), file=sys.stderr)
    if args.debug:
        traceback.print_exc()
    return EXIT_FAILED


_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)=(.+)")
_GLOB = re.compile(r"[*?\[]")


def expand_glob(path: str) -> list[str]:
    """The data files a glob names (``data/*.parquet``, ``s3://bucket/day=*/``), sorted; a directory it
    matches stands for the files under it. Names starting with ``_`` or ``.`` are skipped, as in a
    directory input; a path without ``*``, ``?`` or ``[`` is returned as it is."""
    if not _GLOB.search(path):
        return [path]
    from .datasets import filesystem, is_local
    from .errors import EmptyInputError, InputError
    fs, pattern = filesystem(path)
    try:
        matches = fs.glob(pattern.rstrip("/") or pattern, detail=True)
    except Exception as exc:  # noqa: BLE001 - a store that cannot be listed
        raise InputError(f"--input {path}: cannot list what the pattern matches: {type(exc).__name__}: {exc}") from exc

    def visible(p: str, root: str) -> bool:
        rel = p[len(root.rstrip("/")) + 1:] if p.startswith(root.rstrip("/") + "/") else os.path.basename(p)
        return not any(part.startswith(("_", ".")) for part in rel.split("/") if part)

    files: list[str] = []
    for name, info in sorted(matches.items()):
        if os.path.basename(name.rstrip("/")).startswith(("_", ".")):
            continue
        if info.get("type") == "directory":
            files += [f for f in sorted(fs.find(name, withdirs=False)) if visible(f, name)]
        else:
            files.append(name)
    if not files:
        raise EmptyInputError(f"--input {path}: the pattern matches no data files"
                              + ("" if matches else " (nothing matches it)"))
    return files if is_local(fs) else [fs.unstrip_protocol(f) for f in files]


def _inputs(values: list[str], job: Any = None) -> Any:
    """``--input`` values as ``engine.run`` takes them: one path, a list of paths, or, for a job that
    reads named inputs, ``{name: path or [paths]}`` from ``NAME=PATH`` values (repeatable per name).
    A value is ``NAME=PATH`` only when NAME is one of the job's input names (so ``data/date=2026-11-30``
    stays a path). A glob (``data/*.parquet``, ``s3://bucket/day=*/``) stands for the files it matches."""
    names = tuple(getattr(job, "inputs", ()) or ())
    named: dict[str, list[str]] = {}
    plain: list[str] = []
    for v in values:
        m = _NAMED.fullmatch(v)
        if m and m.group(1) in names:
            named.setdefault(m.group(1), []).extend(expand_glob(m.group(2)))
        elif m and len(names) > 1:
            from .errors import JobDefinitionError
            raise JobDefinitionError(f"--input {v}: job {job.name!r} reads no input named {m.group(1)!r}; its inputs "
                                     f"are {', '.join(map(repr, names))}")
        else:
            plain.append(v)
    if not named:
        if len(names) > 1:
            from .errors import JobDefinitionError
            raise JobDefinitionError(f"job {job.name!r} reads several inputs; give each as --input NAME=PATH: "
                                     + " ".join(f"--input {n}=PATH" for n in names))
        paths = [p for v in values for p in expand_glob(v)]
        return paths[0] if len(paths) == 1 else paths
    if plain:
        from .errors import JobDefinitionError
        raise JobDefinitionError(f"--input {plain[0]}: job {job.name!r} reads named inputs "
                                 f"({', '.join(map(repr, names))}); write it as --input NAME=PATH")
    return {k: v[0] if len(v) == 1 else v for k, v in named.items()}


def _load_for_run(args):
    """The job and inputs of ``mapreduce run``; a job file that cannot be loaded (or inputs that cannot
    be resolved, e.g. a glob that matches nothing) is a failed run too: it is recorded (under the
    file's name), alerted and, with --json, printed like any other."""
    job = None
    try:
        job = load_job(args.job, parse_params(args.param))
        return job, _inputs(args.input, job)
    except Exception as exc:
        from .telemetry import Hooks, Tracker
        source = split_spec(args.job)[0]
        name = job.name if job is not None else \
            os.path.splitext(os.path.basename(source.rstrip("/")))[0] or args.job
        tracker = Tracker(None, args.output, logical_date=args.date, name=name,
                          hooks=Hooks(args.report, args.metrics_file, args.push_gateway, args.on_failure,
                                      args.on_success, args.on_slo_breach),
                          settings={"job": args.job})
        tracker.begin()
        exc.run_record = tracker.finish(exc=exc)       # type: ignore[attr-defined]
        raise


def _wait_for_output_lock(args) -> float | None:
    """``--wait-lock``: wait (up to that long) until no other run holds the output's lock, before the
    run decides whether it has anything to do (so a run that waited for the same job to commit finds
    nothing to do); returns when the wait began, for the run's own lock, which waits out the rest."""
    if args.wait_lock is None:
        return None
    from .datasets import filesystem
    from .errors import ConcurrentRunError
    from .lock import wait_for_release
    began = time.monotonic()
    fs, out = filesystem(args.output)
    try:
        wait_for_release(fs, out, args.wait_lock)
    except ConcurrentRunError:
        pass            # still held when the time is up: the run's own lock fails, and the run is recorded
    return began


def _with_record(new: BaseException, old: BaseException) -> BaseException:
    """``new`` carrying ``old``'s run record (what ``run --json`` prints on failure)."""
    if getattr(old, "run_record", None) is not None:
        new.run_record = old.run_record      # type: ignore[attr-defined]
    return new


def _noop_hint(args) -> str:
    """The command that recomputes an output a rerun found already committed (``--force``; in mode
    error also ``--mode overwrite``, as ``--force`` alone would be refused)."""
    import shlex
    argv = getattr(args, "argv", None)
    extra = ["--force"] + (["--mode", "overwrite"] if args.mode == "error" else [])
    what = "to recompute and replace it" if args.mode in ("error", "overwrite", "overwrite-partitions") else \
        "to recompute it and append the result again"
    if argv is None:
        return f"add {' '.join(extra)} {what}"
    return f"{what}: {shlex.join(['mapreduce', *argv, *extra])}"


def cmd_run(args) -> int:
    from .errors import ConcurrentRunError, OutputExistsError
    from .lock import lock_wait
    from .runner import run
    job, inputs = _load_for_run(args)
    options: dict[str, Any] = _tls_options(args)
    if args.workers:
        if args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"):
            log.warning("--workers sizes the embedded cluster only; it is ignored with an existing scheduler")
        options["engine.cluster.workers"] = args.workers
    # --json: stdout carries the one JSON document; what the job's own code prints goes to stderr
    user_out = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with _config_set(options), lock_wait(args.wait_lock, since=_wait_for_output_lock(args)), user_out:
            result = run(job, inputs, args.output, cluster=args.scheduler, mode=args.mode,
                         speculation=not args.no_speculation, skew=not args.no_skew, shuffle_dir=args.shuffle_dir,
                         partition_size=args.partition_size, force=args.force, report=args.report,
                         format=args.format, resume=args.resume, progress=False if args.quiet else _Progress(),
                         map_combine=False if args.no_map_combine else None, partition_by=args.partition_by,
                         date=args.date, where=args.where, stage_to=args.stage_to, max_change=args.max_change,
                         canary=args.canary, metrics_file=args.metrics_file, push_gateway=args.push_gateway,
                         on_failure=args.on_failure, on_success=args.on_success, on_slo_breach=args.on_slo_breach,
                         **_guard_options(args))
    except OutputExistsError as exc:
        if args.force and args.mode == "error":
            raise _with_record(OutputExistsError(f"{exc} (--force recomputes, but replaces committed output only "
                                                 "together with --mode overwrite)"), exc) from exc
        raise
    except ConcurrentRunError as exc:
        if args.wait_lock is None and "another run is writing" in str(exc):
            raise _with_record(ConcurrentRunError(f"{exc} (--wait-lock 10m waits up to 10 minutes for it)"),
                               exc) from exc
        raise
    finally:
        _shutdown_embedded()
    if args.json:
        print(_json_doc(result.record, result))
        return EXIT_OK
    if result.skipped:
        previous = result.manifest.doc.get("run_id", "?") if result.manifest is not None else "?"
        print(f"nothing to do: {args.output} already holds the output of job {job.name!r} for this input (run "
              f"{previous}; the output holds {result.rows:,} rows); {_noop_hint(args)}")
        return EXIT_OK
    print(result.report.summary())
    if result.canary is not None:
        c = result.canary
        if c["compared"]:
            verdict = (f"{len(c['compared'])} partition(s) compared with the live output"
                       + (", within --max-change" if args.max_change is not None else " (no --max-change gate)"))
        else:
            verdict = f"nothing compared ({c.get('not_compared') or 'the live output has none of its partitions'})"
        print(f"  canary: {len(c['sampled'])} of {c['of']} input {c.get('unit', 'partitions')}, {c['rows']:,} rows "
              f"written; {verdict}")
    if result.staged is not None:
        if result.diff is not None:
            print(result.diff)
        if result.published is not None:
            print(f"  {result.published}")
        else:
            print(f"  staged at {result.staged}; publish it with: mapreduce publish {result.staged}")
    if args.report:
        print(f"  report: {args.report}")
    return EXIT_OK


def _date_line(d) -> None:
    """One stderr line per finished date of a backfill."""
    if d.status == "failed":
        text = f"{d.date}: failed after {d.seconds or 0:.2f}s: {d.error}"
    elif d.status in ("committed", "skipped"):
        text = (f"{d.date}: {d.status}, {d.rows or 0:,} rows in {len(d.partitions)} partition(s), "
                f"{d.seconds or 0:.2f}s" + (f", resumed {d.resumed} task(s)" if d.resumed else ""))
    else:
        text = f"{d.date}: {d.status}"
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def cmd_backfill(args) -> int:
    from .backfill import backfill
    job = load_job(args.job, parse_params(args.param))
    if args.wait_lock is not None:
        args.wait = max(args.wait or 0.0, args.wait_lock)
    options: dict[str, Any] = {**_ops_options(args), **_tls_options(args)}
    if args.workers:
        options["engine.cluster.workers"] = args.workers
    engine_log = logging.getLogger("engine")
    level = engine_log.level
    if not args.debug:
        engine_log.setLevel(logging.WARNING)    # one line per date (below), not every run's own lines
    try:
        with _config_set(options):
            result = backfill(job, _inputs(args.input, job), args.output, args.start, args.end,
                              partition_by=args.partition_by, where=args.where, parallel=args.parallel,
                              force=args.force, fail_fast=args.fail_fast, cluster=args.scheduler, wait=args.wait,
                              progress=None if args.quiet or args.json else _date_line,
                              speculation=not args.no_speculation, skew=not args.no_skew,
                              shuffle_dir=args.shuffle_dir, partition_size=args.partition_size, format=args.format,
                              **_guard_options(args))
    except KeyboardInterrupt as exc:
        if "engine.telemetry" in sys.modules:   # the dates still running in other threads end here
            from .telemetry import interrupt_live
            interrupt_live(exc)
        partial = getattr(exc, "backfill_result", None)
        if partial is not None:
            print(partial.to_json() if args.json else partial, flush=True)
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}; every date's partitions are as committed before (a date's old or new version, never a mix): "
              "run the same command again to finish (committed dates are skipped)", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        engine_log.setLevel(level)
        _shutdown_embedded()
    print(result.to_json() if args.json else result)
    return result.exit_code


def cmd_publish(args) -> int:
    from .publish import publish
    print(publish(args.staged, args.output, force=args.force))
    return EXIT_OK


def _config_set(options: dict[str, Any]):
    """``dask.config.set(options)``; nothing (and no import of dask) when there are none."""
    if not options:
        import contextlib
        return contextlib.nullcontext()
    from . import config
    return config.dask_config().set(options)


def _shutdown_embedded() -> None:
    """Close the embedded cluster (or the driver's thread pool) now, quietly, rather than at interpreter exit."""
    if "engine.cluster" not in sys.modules:
        return
    try:
        from .cluster import shutdown
        shutdown()
    except Exception:  # noqa: BLE001 - best effort
        pass


def cmd_verify(args) -> int:
    import dataclasses
    import json
    from .commit import verify
    from .datasets import filesystem
    from .errors import IntegrityError, ManifestError
    fs, root = filesystem(args.path)
    if fs.exists(root) and not fs.isdir(root):
        message = (f"{args.path} is a file, not an output directory; verify takes the directory a run committed "
                   "to (the one holding _SUCCESS)")
        if args.json:
            print(json.dumps({"path": args.path, "ok": False, "verdict": "not-an-output", "error": message,
                              "problems": []}))
        print(f"NOT AN OUTPUT {message}", file=sys.stderr)
        return EXIT_USAGE
    if not fs.exists(root):
        message = (f"{args.path} does not exist (nothing was ever written there); check the path, or run the job "
                   "that writes it first")
        if args.json:
            print(json.dumps({"path": args.path, "ok": False, "verdict": "missing", "error": message, "problems": []}))
        print(f"MISSING {message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = verify(args.path)
    except IntegrityError as exc:
        missing = isinstance(exc, ManifestError) and all(p.endswith(": missing") for p in (exc.problems or []))
        verdict = "INCOMPLETE" if missing else "CORRUPT"
        if args.json:
            print(json.dumps({"path": args.path, "ok": False, "verdict": verdict.lower(), "error": _one_paragraph(exc),
                              "problems": list(exc.problems or [])}))
        print(f"{verdict} {args.path}: {_one_paragraph(exc)}", file=sys.stderr)
        for problem in exc.problems or []:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"path": args.path, "ok": True, "verdict": "intact", **dataclasses.asdict(summary)},
                         default=str))
    else:
        print(summary)
    return EXIT_OK


def cmd_rejected(args) -> int:
    import json

    from .errors import IntegrityError
    from .rejects import read_rejected, summarize
    try:
        summary = summarize(args.path)
    except IntegrityError as exc:
        print(f"error: {_one_paragraph(exc)}", file=sys.stderr)
        return EXIT_FAILED
    if args.rows and summary["rows"]:
        rows = read_rejected(args.path).slice(0, args.rows).select(
            ["stage", "file", "row", "key", "error_type", "error", "location", "record", "raw"]).to_pylist()
        summary["first"] = rows
    else:
        summary.pop("first", None)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_GATE if summary["rows"] else EXIT_OK
    if not summary["rows"]:
        print(f"{summary['output']}: the committed run ({summary['run_id']}) rejected no rows")
        return EXIT_OK
    runs = summary.get("runs") or {}
    print(f"{summary['output']}: {summary['rows']:,} rejected row(s) in {len(summary['files'])} file(s), by "
          + ", ".join(f"run {r} ({n:,})" for r, n in runs.items()))
    print("  by error:")
    for e in summary["by_error"]:
        print(f"    {e['rows']:>8,}  {e['stage']:<6} {e['error_type']}: {e['error'][:160]}")
    print("  by input file:")
    for f in summary["by_file"]:
        print(f"    {f['rows']:>8,}  {f['file'] or '(reduce: no input file)'}")
    for r in summary.get("first") or []:
        where = (f"{r['file']} row {r['row']}" if r["file"] and r["row"] is not None else
                 f"{r['file']} (the whole file)" if r["file"] else f"key {r['key']}" if r["key"] else
                 "a fused map's input row")
        print(f"  - {where}: {r['error_type']}: {r['error'][:160]}" + (f" at {r['location']}" if r["location"] else ""))
        print(f"      {(r['record'] or r['raw'] or '')[:200]}")
    print(f"  read them all: engine.rejects.read_rejected({summary['output']!r}), or the Parquet files under "
          f"{summary['output']}/_rejected/")
    return EXIT_GATE


def cmd_explain(args) -> int:
    import json
    from .plan import explain
    finished = _committed_run(args.job)
    if finished is not None:
        if args.json:
            from .commit import load_manifest
            from .datasets import filesystem
            fs, root = filesystem(args.job)
            doc = load_manifest(fs, root).doc
            print(json.dumps({"output": args.job, **{k: v for k, v in doc.items() if k not in ("files", "partitions")},
                              "file_count": len(doc.get("files") or []),
                              "partition_count": len(doc.get("partitions") or {})}, default=str))
        else:
            print(finished)
        return EXIT_OK
    folder = args.job.rstrip("/\\")
    if "://" not in folder and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "__init__.py")):
        from .errors import JobDefinitionError
        raise JobDefinitionError(f"{args.job} is a directory with no committed output (no _SUCCESS manifest): "
                                 "`mapreduce explain OUT` needs an output a run committed, and `mapreduce explain "
                                 "JOB` a job file (FILE.py[:NAME]) or module")
    job = load_job(args.job, parse_params(args.param))
    text = explain(job, _inputs(args.input, job) if args.input else None, partition_size=args.partition_size,
                   format=args.format)
    if args.json:
        from .job import job_fingerprint
        fp = job_fingerprint(job)
        print(json.dumps({"job": job.name, "fingerprint": fp.digest, "fingerprint_covers": str(fp),
                          "plan": text.splitlines()}, default=str))
    else:
        print(text)
    return EXIT_OK


def _committed_run(path: str) -> str | None:
    """The run-time decisions recorded in a committed output's manifest, as text; None if ``path`` is
    not a committed output."""
    if path.endswith(".py") or ("://" not in path and not os.path.isdir(path)):
        return None
    from .commit import load_manifest
    from .datasets import filesystem
    try:
        fs, root = filesystem(path)
        manifest = load_manifest(fs, root)
    except Exception:  # noqa: BLE001 - not an output: treat it as a job
        return None
    if manifest is None:
        return None
    doc = manifest.doc
    meta = doc.get("meta", doc)
    fingerprint = meta.get("fingerprint", doc.get("fingerprint"))
    engine_version = meta.get("engine_version", doc.get("engine_version"))
    made_by = f" (fingerprint {fingerprint}, engine {engine_version})" if fingerprint else ""
    lines = [f"committed output {path}: job {meta.get('job', doc.get('job'))!r}{made_by}, run {doc.get('run_id')}, "
             f"{len(manifest.files)} file(s), {manifest.rows:,} rows"]
    lines += _partition_provenance(doc, manifest.generation)
    decisions = meta.get("decisions") or doc.get("decisions")
    if decisions and doc.get("partition_by"):
        lines.append(f"  decisions of the last run ({doc.get('run_id')}):")
    if not decisions:
        lines.append("  (this output was committed without run-time decisions)")
        return "\n".join(lines)
    for s in decisions.get("stages", []):
        lines.append(f"  stage {s['name']}: {s['tasks']} task(s), {s['attempts']} attempt(s), "
                     f"{s['speculative']} speculative, {s['retries']} retried")
    inputs = (meta.get("input") or {}).get("inputs")
    for name, info in (inputs or {}).items():
        lines.append(f"  input {name!r}: {info.get('files')} {info.get('format', '')} file(s), "
                     f"{info.get('bytes', 0):,} bytes, snapshot {info.get('digest')}")
    for d in decisions.get("joins", []):
        what = d.get("strategy") or d.get("action")
        lines.append(f"  join {what}: {d.get('reason', d)}")
    for d in decisions.get("skew", []):
        lines.append(f"  skew {d.get('action')}: {d.get('reason', d)}")
    for d in decisions.get("speculation", []):
        lines.append(f"  speculation: {d.get('reason', d)} -> won by attempt {d.get('won')}")
    return "\n".join(lines)


_EXPLAIN_PARTITIONS = 20        # explain OUT shows the first and last this many partitions of a larger output


def _partition_provenance(doc: dict, generation: int) -> list[str]:
    """``explain OUT`` lines for a partitioned output: who wrote each partition, from what, and when
    (the manifest's ``partitions``); the first and last ``_EXPLAIN_PARTITIONS`` of many."""
    by = doc.get("partition_by")
    if not by:
        return []
    parts = doc.get("partitions") or {}
    dates = sorted(doc.get("dates") or {})
    head = f"  partitioned by {', '.join(by)}: {len(parts)} partition(s), generation {generation}"
    if dates:
        head += f", {len(dates)} logical date(s) ({dates[0]} .. {dates[-1]})" if len(dates) > 1 else \
            f", logical date {dates[0]}"
    lines = [head]
    if not parts:
        return lines

    def when(text: Any) -> str:
        import datetime as _dt
        try:
            return _dt.datetime.fromisoformat(str(text)).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return str(text or "-")

    def values(d: str, rec: dict) -> str:
        vals = rec.get("values")
        if not isinstance(vals, dict):
            return d
        return ", ".join(f"{k}={'null' if v is None else v}" for k, v in vals.items())

    cols = ["values", "logical date", "run", "version", "code", "fingerprint", "engine", "input digest", "rows",
            "files", "committed at", "gen"]
    names = sorted(parts)
    shown = names if len(names) <= 2 * _EXPLAIN_PARTITIONS else \
        names[:_EXPLAIN_PARTITIONS] + [None] + names[-_EXPLAIN_PARTITIONS:]
    rows = []
    for d in shown:
        if d is None:
            rows.append(None)
            continue
        rec = parts[d] if isinstance(parts[d], dict) else {}
        cells = [values(d, rec), rec.get("logical_date") or "-", str(rec.get("run_id") or "-")[:12],
                 str(rec.get("job_version") or "-"), str(rec.get("code_fingerprint") or "-"),
                 str(rec.get("fingerprint") or "-"), str(rec.get("engine_version") or "-"),
                 str(rec.get("input_digest") or "-"), f"{rec.get('rows', 0):,}", str(rec.get("files", "-")),
                 when(rec.get("committed_at")), str(rec.get("generation", "-"))]
        if rec.get("published_at"):
            cells.append(f"published {when(rec['published_at'])}")
        rows.append(cells)
    width = [max(len(c), *(len(r[i]) for r in rows if r is not None)) for i, c in enumerate(cols)]
    right = {cols.index("rows"), cols.index("files"), cols.index("gen")}

    def fmt(cells: list[str]) -> str:
        out = [c.rjust(width[i]) if i in right else c.ljust(width[i]) for i, c in enumerate(cells[:len(cols)])]
        return "    " + "  ".join(out + cells[len(cols):]).rstrip()

    lines.append(fmt(cols))
    for r in rows:
        lines.append(f"    … {len(names) - 2 * _EXPLAIN_PARTITIONS} more partition(s) …" if r is None else fmt(r))
    return lines


def cmd_clean(args) -> int:
    from .commit import MANIFEST, cleanup, load_manifest, remove_damaged_manifest
    from .datasets import filesystem
    from .errors import ManifestError
    from .lock import output_lock
    fs, out = filesystem(args.path)
    if not fs.exists(out):
        print(f"{args.path}: nothing there")
        return EXIT_OK
    removed: list[str] = []
    with output_lock(fs, out):
        manifest = load_manifest(fs, out, damaged=True)
        if manifest is not None and manifest.damage is not None:
            if not args.force:
                raise ManifestError(f"{manifest.damage}; `mapreduce clean` keeps a "
                                    f"damaged {MANIFEST}: pass --force to remove it together with every data file "
                                    f"of this engine in {args.path} (files of other tools are kept), or rerun the "
                                    "job with --mode overwrite to replace it")
            removed.append(remove_damaged_manifest(fs, out, manifest))
            manifest = None           # nothing is committed now: every engine data file is a leftover
        removed += cleanup(fs, out, keep_run=None, manifest=manifest)
    for r in removed:
        print(f"removed {r}")
    print(f"{args.path}: clean ({len(removed)} leftover(s) removed)")
    return EXIT_OK


def _column_list(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def cmd_diff(args) -> int:
    """``mapreduce diff A B``: the comparison on stdout (text or ``--json``); with ``--max-change`` exit
    ``EXIT_GATE`` when a partition's row count moved by more than allowed, naming each on stderr."""
    import json
    from .diff import compare, percent
    result = compare(args.a, args.b, key=_column_list(args.key), partitions=args.partitions,
                     max_rows=args.max_rows, partition_columns=_column_list(args.by))
    gate = args.max_change
    violations = result.violations(gate) if gate is not None else []
    if args.json:
        doc = result.to_dict()
        doc["max_change"] = gate
        doc["violations"] = violations
        print(json.dumps(doc, indent=1, allow_nan=False))
    else:
        print(result)
        if gate is not None:
            print(f"gate --max-change {percent(gate)}: " + ("passed" if not violations else
                                                          f"TRIPPED by {len(violations)} partition(s)"))
    if violations:
        print(f"gate tripped: {len(violations)} partition(s) of {args.b} moved by more than {percent(gate)} against "
              f"{args.a}:", file=sys.stderr)
        for v in violations:
            print(f"  {v}", file=sys.stderr)
        return EXIT_GATE
    return EXIT_OK


def _ops(name: str):
    def command(args) -> int:
        if name in ("show", "history"):
            from . import cli_ops
            return cli_ops.COMMANDS[name](args)
        module = _optional_command(name)
        return module.command(args)
    return command


_COMMANDS = {"run": cmd_run, "verify": cmd_verify, "rejected": cmd_rejected, "explain": cmd_explain, "history": _ops("history"),
             "show": _ops("show"), "slo": _ops("slo"), "alerts": _ops("alerts"), "dashboard": _ops("dashboard"),
             "clean": cmd_clean, "publish": cmd_publish, "diff": cmd_diff, "backfill": cmd_backfill}
