"""``python -m benchmarks``: run the benchmark suites, compare two results files, or draw a report.

    python -m benchmarks [--quick] [--suites groupby,sort,...] [--repeat N] [--peers duckdb,polars,...]
                         [--out RESULTS.jsonl] [--no-html] [--timeline SUITE:CASE] [--data DIR]
                         [--g1-rows 1e7] [--g1-parts 8] [--driver-tasks 20000] [--tpch-sf 1]
                         [--scale-rows 1e6,1e7,1e8] [--scale-questions q1,q3,q10] [--answers-in-memory 2e7]
                         [--incremental-days 365] [--incremental-rows-per-day 1e6]
                         [--operations-rows 1e7] [--operations-questions q1,...,q10]
                         [--rejects-lines 1e7] [--rejects-poison-every 1e6]
    python -m benchmarks compare BASELINE.jsonl CANDIDATE.jsonl [--threshold 0.10] [--noise 1.0]
    python -m benchmarks report RESULTS.jsonl [-o RESULTS.html]
    python -m benchmarks summary RESULTS.jsonl          # Markdown tables (for RESULTS.md)
    python -m benchmarks replay REPORT.json [--slots 8,64,512]   # a run replayed on N slots, by simulation

A run writes JSON lines (a ``run`` record with the environment and parameters, one ``measurement``
record per case, system and knob value, the chosen run's ``timeline``, a closing ``summary``) and,
unless ``--no-html``, a self-contained HTML report beside them. It exits 1 when any engine answer
differs from its reference or a system failed, so ``--quick`` serves as a CI smoke test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def run(argv: list[str]) -> int:
    from benchmarks import common, peers, report, suites
    from benchmarks.progress import Progress

    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, 2 repeats: every suite in under 2 minutes")
    ap.add_argument("--suites", default=",".join(suites.SUITES),
                    help=f"comma-separated subset of {suites.SUITES}, or {suites.EXTRA_SUITES} (only when named)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default: 3; 2 with --quick)")
    ap.add_argument("--peers", default=",".join(peers.PEERS),
                    help="comma-separated peers to time where installed (default: all of %(default)s)")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/bench-<time>.jsonl)")
    ap.add_argument("--no-html", action="store_true", help="do not write the HTML report")
    ap.add_argument("--timeline", default="groupby:q3", help="SUITE:CASE whose median engine run's task "
                    "timeline goes into the report (default: %(default)s)")
    ap.add_argument("--data", default=None, help="dataset cache root (default: benchmarks/data)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument("--g1-rows", type=float, default=None,
                    help="rows of the G1 groupby dataset (e.g. 1e7, 1e8; default: the profile's)")
    ap.add_argument("--g1-parts", type=int, default=None, help="Parquet files of the G1 dataset")
    ap.add_argument("--driver-tasks", type=int, default=None,
                    help="no-op tasks in the driver suite's stage (default: 20000; 2000 with --quick)")
    ap.add_argument("--tpch-sf", type=float, default=None,
                    help="TPC-H scale factor of the tpch suite (default: 1; 0.01 with --quick)")
    ap.add_argument("--scale-rows", default=None,
                    help="input sizes of the scale suite (default: 1e6,1e7,1e8; --quick: 1e4,4e4)")
    ap.add_argument("--scale-questions", default=None, help="G1 questions of the scale suite (default: q1,q3,q10)")
    ap.add_argument("--answers-in-memory", type=float, default=2e7,
                    help="G1 answers estimated larger than this many rows are written as Parquet by every system "
                         "and checked streamed (default: %(default)g)")
    ap.add_argument("--skew-partition-size", default=None,
                    help="partition_size of the skew suite's runs (default: the profile's)")
    ap.add_argument("--incremental-days", type=int, default=None,
                    help="days of the incremental suite's Hive input (default: 365; --quick: 6)")
    ap.add_argument("--incremental-rows-per-day", type=float, default=None,
                    help="rows per day of the incremental suite's input (default: 1e6; --quick: 2e4)")
    ap.add_argument("--operations-rows", type=float, default=None,
                    help="G1 rows of the operations suite (default: 1e7; --quick: 2e4)")
    ap.add_argument("--operations-questions", default=None,
                    help="G1 questions of the operations suite (default: q1,...,q10)")
    ap.add_argument("--rejects-lines", type=float, default=None,
                    help="lines of the rejects suite's word-count corpus (default: 1e7; --quick: 4e4)")
    ap.add_argument("--rejects-poison-every", type=float, default=None,
                    help="one poisoned line per this many in the rejects suite (default: 1e6; --quick: 1e4)")
    args = ap.parse_args(argv)

    chosen = _list(args.suites)
    unknown = [s for s in chosen if s not in suites.SUITES + suites.EXTRA_SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {unknown}; choose from {', '.join(suites.SUITES + suites.EXTRA_SUITES)}")
    wanted = _list(args.peers)
    bad = [p for p in wanted if p not in peers.PEERS]
    if bad:
        ap.error(f"unknown peer(s) {bad}; choose from {', '.join(peers.PEERS)}")
    installed = peers.available(tuple(wanted)) if wanted else {}
    missing = [p for p, ok in installed.items() if not ok]
    profile = suites.PROFILES["quick" if args.quick else "standard"]
    if args.g1_rows is not None or args.g1_parts is not None:
        import dataclasses
        profile = dataclasses.replace(profile, g1_rows=int(args.g1_rows or profile.g1_rows),
                                      g1_parts=int(args.g1_parts or profile.g1_parts))
    if args.driver_tasks is not None:
        import dataclasses
        if args.driver_tasks < 1:
            ap.error("--driver-tasks must be at least 1")
        profile = dataclasses.replace(profile, driver_tasks=args.driver_tasks)
    if args.tpch_sf is not None:
        import dataclasses
        if args.tpch_sf <= 0:
            ap.error("--tpch-sf must be positive")
        profile = dataclasses.replace(profile, tpch_sf=args.tpch_sf)
    if args.scale_rows is not None:
        import dataclasses
        try:
            sizes = tuple(int(float(x)) for x in _list(args.scale_rows))
        except ValueError:
            ap.error(f"--scale-rows takes comma-separated row counts (e.g. 1e6,1e7,1e8), got {args.scale_rows!r}")
        if not sizes or min(sizes) < 1:
            ap.error("--scale-rows needs row counts of at least 1")
        profile = dataclasses.replace(profile, scale_rows=sizes)
    if args.scale_questions is not None:
        import dataclasses
        qs = tuple(_list(args.scale_questions))
        wrong = [q for q in qs if q not in suites.QUESTIONS]
        if wrong or not qs:
            ap.error(f"--scale-questions: unknown question(s) {wrong}; choose from {', '.join(suites.QUESTIONS)}")
        profile = dataclasses.replace(profile, scale_questions=qs)
    if args.skew_partition_size is not None:
        import dataclasses
        profile = dataclasses.replace(profile, skew_partition_size=args.skew_partition_size)
    if args.incremental_days is not None or args.incremental_rows_per_day is not None:
        import dataclasses
        days = args.incremental_days if args.incremental_days is not None else profile.incremental_days
        per_day = int(args.incremental_rows_per_day) if args.incremental_rows_per_day is not None \
            else profile.incremental_rows_per_day
        if days < 2 or per_day < 1:
            ap.error("--incremental-days must be at least 2 and --incremental-rows-per-day at least 1")
        profile = dataclasses.replace(profile, incremental_days=days, incremental_rows_per_day=per_day)
    if args.operations_rows is not None or args.operations_questions is not None:
        import dataclasses
        qs = tuple(_list(args.operations_questions)) if args.operations_questions is not None \
            else profile.operations_questions
        wrong = [q for q in qs if q not in suites.QUESTIONS]
        if wrong or not qs:
            ap.error(f"--operations-questions: unknown question(s) {wrong}; choose from {', '.join(suites.QUESTIONS)}")
        n = int(args.operations_rows) if args.operations_rows is not None else profile.operations_rows
        if n < 1:
            ap.error("--operations-rows must be at least 1")
        profile = dataclasses.replace(profile, operations_rows=n, operations_questions=qs)
    if args.rejects_lines is not None or args.rejects_poison_every is not None:
        import dataclasses
        n = int(args.rejects_lines) if args.rejects_lines is not None else profile.rejects_lines
        every = int(args.rejects_poison_every) if args.rejects_poison_every is not None \
            else profile.rejects_poison_every
        if n < 1 or every < 1:
            ap.error("--rejects-lines and --rejects-poison-every must be at least 1")
        profile = dataclasses.replace(profile, rejects_lines=n, rejects_poison_every=every)
    if args.answers_in_memory < 0:
        ap.error("--answers-in-memory must be at least 0")
    repeat = args.repeat or profile.repeat
    if repeat < 1:
        ap.error("--repeat must be at least 1")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = args.out or os.path.join(HERE, "results", f"{'quick' if args.quick else 'bench'}-{stamp}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    logging.getLogger("engine").setLevel(logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    progress = Progress(len(chosen), quiet=args.quiet)
    if missing:
        progress.line(f"peers not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')")
    bench_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
    records: list[dict] = []
    scratch = tempfile.mkdtemp(prefix="benchmarks-")
    started = time.time()
    with open(out, "w", encoding="utf-8") as sink:
        def emit(rec: dict) -> None:
            rec = {"bench_id": bench_id, **rec}
            records.append(rec)
            sink.write(json.dumps(rec, default=str) + "\n")
            sink.flush()

        ctx = suites.Context(profile, repeat, tuple(p for p in wanted if installed.get(p)), scratch, emit,
                             progress, data_root=args.data, timeline=args.timeline,
                             answers_in_memory=int(args.answers_in_memory))
        try:
            _, info = ctx.client()
            emit({"kind": "run", "mode": profile.name, "started": started,
                  "command": "python -m benchmarks " + shlex.join(argv),
                  "params": {"suites": chosen, "repeat": repeat, "peers": list(ctx.peers),
                             "peers_missing": missing, "timeline": args.timeline,
                             "answers_in_memory": int(args.answers_in_memory),
                             "profile": suites.profile_dict(profile)},
                  "environment": common.environment(info, packages=("duckdb", "polars", "pandas"), settings=True)})
            for name in chosen:
                progress.suite(name)
                t0 = time.time()
                try:
                    suites.RUNNERS[name](ctx)
                except Exception as exc:  # noqa: BLE001 - one broken suite must not hide the others
                    ctx.failures.append(f"suite {name} failed: {type(exc).__name__}: {exc}")
                    progress.line(f"suite {name} FAILED: {type(exc).__name__}: {exc}")
                    emit({"kind": "suite_error", "suite": name, "error": f"{type(exc).__name__}: {exc}"})
                progress.line(f"suite {name} done in {time.time() - t0:.1f}s")
            per_suite = suites.summarize(records)
            ok = not ctx.failures and all(s in per_suite for s in chosen)
            emit({"kind": "summary", "seconds": round(time.time() - started, 2), "ok": ok, "suites": per_suite,
                  "failures": ctx.failures})
        finally:
            progress.close()
            shutil.rmtree(scratch, ignore_errors=True)
    html_path = None
    if not args.no_html:
        html_path = report.write(records, os.path.splitext(out)[0] + ".html",
                                 title=f"Benchmarks ({profile.name}) {stamp}")
    for failure in ctx.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print(f"{len([r for r in records if r.get('kind') == 'measurement'])} measurements in "
          f"{time.time() - started:.0f}s: {out}" + (f", {html_path}" if html_path else ""))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from benchmarks import compare
        return compare.main(argv[1:])
    if argv and argv[0] == "summary":
        from benchmarks import summary
        return summary.main(argv[1:])
    if argv and argv[0] == "report":
        from benchmarks import report
        return report.main(argv[1:])
    if argv and argv[0] == "replay":
        from benchmarks import replay
        return replay.main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
