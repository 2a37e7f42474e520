"""The ``mapreduce`` command (also ``python -m engine``).

    mapreduce run JOB --input IN --output OUT [--scheduler ADDR] [--workers N] [--mode M]
                  [--no-speculation] [--no-skew] [--partition-size SIZE] [--report report.html]
                  [--resume] [--force]
    mapreduce verify PATH
    mapreduce explain JOB [--input IN]
    mapreduce history [--job NAME]

``JOB`` is a Python file or an importable module that defines a module-level ``job``. Exit codes:
0 success (including a rerun that had nothing to do), 1 the run or check failed (one-paragraph
reason on stderr), 2 usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import time
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def load_job(spec: str):
    """The module-level ``job`` of a Python file or importable module."""
    from .errors import JobDefinitionError
    from .job import Job
    if spec.endswith(".py") or os.path.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.exists(path):
            raise JobDefinitionError(f"job file {spec!r} does not exist")
        name = "mapreduce_job_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        sys.path.insert(0, os.path.dirname(path))
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError as exc:
            raise JobDefinitionError(f"cannot import job module {spec!r}: {exc}") from exc
    job = getattr(module, "job", None)
    if not isinstance(job, Job):
        raise JobDefinitionError(f"{spec} must define a module-level `job = engine.Job(...)`; found "
                                 f"{type(job).__name__ if job is not None else 'nothing'}")
    return job


class _Progress:
    """A one-line progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.tty:
            width = 30
            filled = int(width * done / max(total, 1))
            self.stream.write(f"\r{stage:<12} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()
        elif done == total or time.time() - self.last > 5:
            self.last = time.time()
            print(f"{stage}: {done}/{total} tasks done", file=self.stream, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mapreduce", description="Run and check dataframe-native MapReduce jobs.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a job and commit its output")
    r.add_argument("job", help="Python file or module defining `job`")
    r.add_argument("--input", "-i", required=True, action="append", help="input path or URL (repeatable)")
    r.add_argument("--output", "-o", required=True, help="output path or URL")
    r.add_argument("--scheduler", help="address of an existing dask scheduler (default: embedded cluster)")
    r.add_argument("--workers", type=int, help="worker processes of the embedded cluster (default: cores)")
    r.add_argument("--mode", choices=["error", "overwrite", "append"], default="error")
    r.add_argument("--format", help="input format (default: from file names)")
    r.add_argument("--no-speculation", action="store_true")
    r.add_argument("--no-skew", action="store_true")
    r.add_argument("--partition-size", help="target reduce partition size, e.g. 64MiB")
    r.add_argument("--shuffle-dir", help="where map outputs go (a URL every worker reaches)")
    r.add_argument("--report", help="write an HTML run report here")
    r.add_argument("--resume", action="store_true", help="reuse work of an interrupted run of the same job and input")
    r.add_argument("--force", action="store_true", help="recompute even if this output is already committed")
    r.add_argument("--quiet", "-q", action="store_true")
    v = sub.add_parser("verify", help="re-check every committed file's checksum")
    v.add_argument("path")
    e = sub.add_parser("explain", help="print a job's plan")
    e.add_argument("job")
    e.add_argument("--input", "-i", action="append")
    e.add_argument("--partition-size")
    h = sub.add_parser("history", help="past runs and SLIs")
    h.add_argument("--job")
    h.add_argument("--limit", type=int, default=20)
    return p


def _one_paragraph(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from .errors import EngineError
    try:
        return _COMMANDS[args.command](args)
    except EngineError as exc:
        print(f"error: {type(exc).__name__}: {_one_paragraph(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; nothing was committed by this run", file=sys.stderr)
        return 130


def _inputs(values: list[str]) -> Any:
    return values[0] if len(values) == 1 else values


def cmd_run(args) -> int:
    from . import config
    from .runner import run
    job = load_job(args.job)
    if args.workers:
        import dask.config
        dask.config.set({"engine.cluster.workers": args.workers})
    _ = config
    result = run(job, _inputs(args.input), args.output, cluster=args.scheduler, mode=args.mode,
                 speculation=not args.no_speculation, skew=not args.no_skew, shuffle_dir=args.shuffle_dir,
                 partition_size=args.partition_size, force=args.force, report=args.report, format=args.format,
                 resume=args.resume, progress=None if args.quiet else _Progress())
    print(result.report.summary())
    return EXIT_OK


def cmd_verify(args) -> int:
    from .commit import verify
    from .errors import IntegrityError
    try:
        summary = verify(args.path)
    except IntegrityError as exc:
        print(f"CORRUPT {args.path}", file=sys.stderr)
        for problem in exc.problems or [str(exc)]:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILED
    print(summary)
    return EXIT_OK


def cmd_explain(args) -> int:
    from .plan import explain
    job = load_job(args.job)
    print(explain(job, _inputs(args.input) if args.input else None, partition_size=args.partition_size))
    return EXIT_OK


def cmd_history(args) -> int:
    from . import history
    rows = history.runs(args.limit, args.job)
    if not rows:
        print("no runs recorded" + ("" if history.path() else " (history is off)"))
        return EXIT_OK
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
        print(f"{when}  {r['job']:<20} {r['status']:<9} {r['seconds']:8.2f}s  {r['output_rows'] or 0:>12,} rows  "
              f"{r['run_id'][:12]}  {r['output']}")
    print()
    for s in history.slis(args.job):
        med = f"{s['median_seconds']:.2f}s" if s["median_seconds"] is not None else "-"
        p95 = f"{s['p95_seconds']:.2f}s" if s["p95_seconds"] is not None else "-"
        print(f"{s['job']:<20} runs {s['runs']:>4}  success {s['success_rate']:.0%}  median {med}  p95 {p95}")
    return EXIT_OK


_COMMANDS = {"run": cmd_run, "verify": cmd_verify, "explain": cmd_explain, "history": cmd_history}
