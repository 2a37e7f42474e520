"""A run on a bigger cluster, by simulation: its measured task costs replayed through a list scheduler.

    python -m benchmarks replay REPORT.json [--slots 8,64,512] [--stragglers 0.05:5]
    python -m benchmarks replay RESULTS.jsonl --case skew:median-top10 --system on
    python -m benchmarks replay --shuffle 10000x10000 [--map-bytes 128MiB]   (see benchmarks.objectstore)

The input is a run report: ``RunReport.to_json()`` saved to a file, or the ``report`` of a record in a
results file of ``python -m benchmarks`` (a ``timeline`` record, or the ``run_report`` records the skew
suite keeps of its skew-on and skew-off runs). A task's *cost* is the seconds its winning attempt ran
on its worker, plus the attempts that failed before it. The driver's own time (planning between
stages, the commit: the run's duration minus its stages') is added as it was measured.

The model, step by step:

1. Stages run one after another, as the engine runs them: a stage starts when the previous one ends
   (a round's reduce tasks need all of its map outputs; the next round reads the round's output).
2. Within a stage, a list scheduler with N slots takes the tasks in partition order (the order the
   engine submits them) and gives each to the slot that frees first; the stage lasts until its last
   task ends.
3. Speculation (``--speculation``), the engine's rule with the stage's median known in advance: a task
   still running after ``max(multiplier x median, min_runtime)`` seconds whose cost is over
   ``multiplier x`` its *expected* cost gets a copy on the next free slot (ahead of queued tasks, at
   most ``max_concurrent`` copies at once). The copy costs the expected cost; whichever finishes first
   wins and frees both slots. The expected cost is what the task's input rows take at the stage's
   median seconds per row (a big task is not a slow one: Spark's efficiency filter), the unslowed cost
   of an injected straggler, or, for a task the run itself speculated, its winning copy's seconds.
4. Without skew handling, derived: every hash partition the run split (``RunReport.skew``: a hot key combined
   in shares and merged, keys isolated in tasks of their own, sub-buckets) runs as one task that costs
   the sum of its pieces plus their merge tasks. The report does not say which reduce task read which
   hash partition, so the pieces are found as the engine lays them out: contiguously, in partition
   order, a split partition's hot-key pieces first (each writes at most one row per key it reads),
   then its sub-buckets. A run whose pieces cannot be found so raises :class:`ReplayError`.
   Without skew handling, measured: the report of the same job run with ``skew=False`` (``--skew-off``;
   by default the ``off`` run of the same case when a results file's ``on`` run is replayed), replayed
   the same way. The two differ by what splitting itself costs (a piece that reads only its keys
   still reads and filters its map outputs).
5. Stragglers (``--stragglers FRACTION:FACTOR``): a seeded choice of that fraction of every stage's
   tasks (at least one) runs FACTOR times slower, the same partitions for two runs' stages of one
   name and size; its expected cost stays the unslowed one.
6. Per-task overhead: what a task costs beyond its own run time (submitting it, collecting its result,
   the gap before the next one starts; about 10 ms here) is added to every task. By default it is
   calibrated so that the replay on the run's own slot count takes the run's measured time
   (``--task-overhead SECONDS`` sets it; 0 leaves it out). A split partition put back together pays
   it once.

Left out: contention for disks and network as slots grow, worker start-up, the scheduler's cost per
task (about 2 ms here), memory limits; and the oracle median makes speculation react a little sooner
than the engine, which waits for 75% of a stage to finish before it trusts the median.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import re
import statistics
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine.report import RunReport


class ReplayError(ValueError):
    """The report cannot be replayed as asked (no tasks, or split pieces that cannot be told apart)."""


@dataclass(frozen=True)
class Task:
    """One partition of a stage: what it cost, and what it read and wrote."""

    partition: int
    cost: float
    rows_in: int = 0
    rows_out: int = 0
    expected: float | None = None     # its unslowed cost, where known (see the module docstring, step 3)


@dataclass(frozen=True)
class Stage:
    name: str
    round: int
    kind: str
    tasks: tuple[Task, ...]
    measured: float = 0.0             # the stage's wall time in the run


@dataclass(frozen=True)
class Speculation:
    """The engine's speculation rule (defaults: ``engine.speculation.Policy``)."""

    multiplier: float = 1.5
    min_runtime: float = 0.5
    max_concurrent: int = 2

    @classmethod
    def engine_defaults(cls) -> Speculation:
        from engine.speculation import Policy
        p = Policy()
        return cls(p.multiplier, p.min_runtime, p.max_concurrent)


@dataclass
class Replay:
    """The simulated makespan of a plan on ``slots`` slots, stage by stage."""

    slots: int
    seconds: float
    stages: list[tuple[str, float]] = field(default_factory=list)
    driver: float = 0.0
    copies: int = 0
    bound: float = 0.0                # no schedule can beat it: driver + per stage max(longest task, work / slots)


# ---------------------------------------------------------------------------------------------
# From a run report


def stages_of(report: RunReport) -> tuple[list[Stage], float]:
    """The report's stages (in the order they ran) with one :class:`Task` per partition, and the
    driver's own seconds (the run's duration minus its stages')."""
    by_stage: dict[str, dict[int, list]] = {}
    for t in report.tasks:
        by_stage.setdefault(t.stage, {}).setdefault(t.partition, []).append(t)
    stages = []
    for s in sorted(report.stages, key=lambda s: s.start):
        tasks = []
        for p, attempts in sorted(by_stage.get(s.name, {}).items()):
            tasks.append(_task(p, attempts))
        stages.append(Stage(s.name, s.round, s.kind, tuple(tasks), s.duration))
    if not any(s.tasks for s in stages):
        raise ReplayError(f"the report of run {report.run_id[:12]} ({report.job!r}) has no task timings to replay; "
                          "replay a run that executed its stages (not a no-op rerun)")
    driver = max(0.0, report.duration - sum(s.measured for s in stages))
    return stages, driver


def _task(partition: int, attempts: list) -> Task:
    won = [a for a in attempts if a.status == "ok"]
    if not won:
        raise ReplayError(f"partition {partition} of stage {attempts[0].stage} has no successful attempt")
    winner = min(won, key=lambda a: a.stop)
    failed = sum(a.duration for a in attempts if a.status == "failed")
    if winner.speculative:
        # the run's own copy won: the original ran at least until it was cancelled; the copy's time
        # is what the task costs when it is not slow
        original = max((a for a in attempts if not a.speculative), key=lambda a: a.duration, default=winner)
        return Task(partition, failed + max(original.duration, winner.duration), winner.rows_in, winner.rows_out,
                    expected=winner.duration)
    return Task(partition, failed + winner.duration, winner.rows_in, winner.rows_out)


# ---------------------------------------------------------------------------------------------
# The scheduler


def stage_makespan(tasks: Sequence[Task], slots: int, speculation: Speculation | None = None) -> tuple[float, int]:
    """``(makespan, speculative copies launched)`` of one stage's tasks on ``slots`` slots."""
    if slots < 1:
        raise ReplayError(f"slots must be at least 1, got {slots}")
    if not tasks:
        return 0.0, 0
    if speculation is None:
        free = [0.0] * min(slots, len(tasks))
        end = 0.0
        for t in tasks:
            start = heapq.heappop(free)
            heapq.heappush(free, start + t.cost)
            end = max(end, start + t.cost)
        return end, 0
    return _speculative(tasks, slots, speculation)


def _expected_costs(tasks: Sequence[Task]) -> list[float]:
    median = statistics.median(t.cost for t in tasks)
    per_row = [t.cost / t.rows_in for t in tasks if t.rows_in > 0 and t.expected is None]
    rate = statistics.median(per_row) if per_row else None
    out = []
    for t in tasks:
        if t.expected is not None:
            out.append(t.expected)
        elif rate is not None and t.rows_in > 0:
            out.append(t.rows_in * rate)
        else:
            out.append(median)
    return out


def _speculative(tasks: Sequence[Task], slots: int, spec: Speculation) -> tuple[float, int]:
    n = len(tasks)
    median = statistics.median(t.cost for t in tasks)
    expected = _expected_costs(tasks)
    wait = max(spec.multiplier * median, spec.min_runtime)
    events: list[tuple[float, int, str, int]] = []     # (time, sequence, what, task)
    seq = 0
    free = slots
    queue = deque(range(n))
    wanted: deque[int] = deque()
    start = [0.0] * n
    original_end = [0.0] * n
    copy_end: list[float | None] = [None] * n
    done: list[float | None] = [None] * n
    copies = active = 0

    def push(when: float, what: str, i: int) -> None:
        nonlocal seq
        heapq.heappush(events, (when, seq, what, i))
        seq += 1

    def dispatch(now: float) -> None:
        nonlocal free, copies, active
        while free > 0:
            if wanted and active < spec.max_concurrent:
                i = wanted.popleft()
                if done[i] is None and now + expected[i] < original_end[i]:
                    free -= 1
                    active += 1
                    copies += 1
                    copy_end[i] = now + expected[i]
                    push(now + expected[i], "copy", i)
                continue
            if not queue:
                return
            i = queue.popleft()
            free -= 1
            start[i] = now
            original_end[i] = now + tasks[i].cost
            push(original_end[i], "end", i)
            if tasks[i].cost > wait and tasks[i].cost > spec.multiplier * expected[i]:
                push(now + wait, "check", i)

    def finish(i: int, now: float) -> None:
        nonlocal free, active
        done[i] = now
        free += 1                                  # the original's slot
        if copy_end[i] is not None:
            free += 1                              # and the copy's (it won, or it is cancelled now)
            active -= 1

    dispatch(0.0)
    while events:
        now, _, what, i = heapq.heappop(events)
        if done[i] is not None:
            continue
        if what == "check":
            wanted.append(i)
        else:
            finish(i, now)
        dispatch(now)
    return max(d for d in done if d is not None), copies


def replay(stages: Sequence[Stage], driver: float, slots: int, *, speculation: Speculation | None = None) -> Replay:
    """The plan's makespan on ``slots`` slots: its stages one after another, plus the driver's time."""
    out = Replay(slots, driver, driver=driver, bound=driver)
    for s in stages:
        seconds, copies = stage_makespan(s.tasks, slots, speculation)
        out.stages.append((s.name, seconds))
        out.seconds += seconds
        out.copies += copies
        if s.tasks:
            out.bound += max(max(t.cost for t in s.tasks), sum(t.cost for t in s.tasks) / slots)
    return out


# ---------------------------------------------------------------------------------------------
# Without skew handling


_STAGE = re.compile(r"^(?P<rounds>r\d+(?:\+r\d+)*)-(?P<kind>reduce|merge)$")


def _rounds(name: str) -> list[int] | None:
    m = _STAGE.match(name)
    return [int(r[1:]) for r in m["rounds"].split("+")] if m else None


def _layouts(decisions: Sequence[dict], rnd: int) -> list[tuple[int, list[int], int]]:
    """``[(hash partition, [keys read by each hot-key piece], sub-bucket count)]`` of one round's
    split partitions, in partition order."""
    parts: dict[int, dict] = {}
    for d in decisions:
        if d.get("round") != rnd or "partition" not in d or d.get("action") not in ("split", "isolate", "keep"):
            continue
        entry = parts.setdefault(int(d["partition"]), {"shares": [], "bins": [], "rest": 1, "split": False})
        if d["action"] == "split" and "shares" in d:
            entry["shares"] += [1] * int(d["shares"])
            entry["split"] = True
        elif d["action"] == "split" and "sub_buckets" in d:
            entry["rest"] = int(d["sub_buckets"])
            entry["split"] = True
        elif d["action"] == "isolate":
            entry["bins"].append(len(d.get("keys") or [d.get("key")]))
            entry["split"] = True
    return [(p, e["shares"] + e["bins"], e["rest"]) for p, e in sorted(parts.items()) if e["split"]]


def _split_keys(decisions: Sequence[dict], rnd: int) -> list[int]:
    """The hash partition of every key the round split into shares, in the order its merge tasks run."""
    return [int(d["partition"]) for d in decisions
            if d.get("round") == rnd and d.get("action") == "split" and "shares" in d and "partition" in d]


def unsplit(stages: Sequence[Stage], decisions: Sequence[dict]) -> tuple[list[Stage], int]:
    """The stages as they would run without skew handling, and how many split partitions were put
    back together (0: the run split nothing; its plan is the same either way)."""
    out: list[Stage] = []
    folded: dict[tuple[int, int], float] = {}      # (round, hash partition) -> merge seconds to add
    merged = 0
    for s in stages:                               # merge stages first: their costs join the pieces
        rounds = _rounds(s.name)
        if rounds and s.name.endswith("-merge"):
            keys = [p for r in rounds for p in ((r, q) for q in _split_keys(decisions, r))]
            if len(keys) != len(s.tasks):
                raise ReplayError(f"stage {s.name} has {len(s.tasks)} merge tasks but the report names "
                                  f"{len(keys)} split keys")
            for key, t in zip(keys, s.tasks):
                folded[key] = folded.get(key, 0.0) + t.cost
    for s in stages:
        rounds = _rounds(s.name)
        if rounds and s.name.endswith("-merge"):
            continue
        if not rounds or s.kind != "reduce":
            out.append(s)
            continue
        tasks = list(s.tasks)
        cursor = 0
        fused: list[Task] = []
        for r in rounds:
            for p, hot, rest in _layouts(decisions, r):
                i = _find_block(tasks, cursor, hot, rest)
                if i is None:
                    raise ReplayError(
                        f"stage {s.name}: cannot tell which reduce tasks read hash partition {p} (split into "
                        f"{len(hot)} hot-key piece(s) and {rest} sub-bucket(s)); the report does not name a "
                        "task's hash partitions. Replay the skew-off run of the same job instead")
                block = tasks[i:i + len(hot) + rest]
                cost = sum(t.cost for t in block) + folded.pop((r, p), 0.0)
                fused.extend(tasks[cursor:i])
                fused.append(Task(block[0].partition, cost, sum(t.rows_in for t in block),
                                  sum(t.rows_out for t in block)))
                cursor = i + len(block)
                merged += 1
        fused.extend(tasks[cursor:])
        out.append(replace(s, tasks=tuple(fused)))
    if folded:
        raise ReplayError(f"merge tasks of split keys {sorted(folded)} match no split partition")
    return out, merged


def _find_block(tasks: Sequence[Task], cursor: int, hot: Sequence[int], rest: int) -> int | None:
    """The first index from ``cursor`` where ``len(hot)`` tasks that each write at most their keys' rows
    start a block of ``len(hot) + rest`` tasks."""
    if not hot:
        return None               # sub-buckets alone look like any other reduce task
    size = len(hot) + rest
    for i in range(cursor, len(tasks) - size + 1):
        if all(0 < tasks[i + j].rows_out <= k or (tasks[i + j].rows_out == 0 and tasks[i + j].rows_in > 0)
               for j, k in enumerate(hot)):
            return i
    return None


# ---------------------------------------------------------------------------------------------
# Stragglers


def with_stragglers(stages: Sequence[Stage], fraction: float, factor: float, seed: int = 0) -> list[Stage]:
    """Every stage with ``fraction`` of its tasks (at least one) ``factor`` times slower, chosen by a
    generator seeded with ``seed`` and the stage's name (two runs' stages of one name and size get the
    same stragglers)."""
    if not 0 < fraction <= 1 or factor < 1:
        raise ReplayError(f"stragglers need 0 < fraction <= 1 and factor >= 1, got {fraction}:{factor}")
    out = []
    for s in stages:
        if not s.tasks:
            out.append(s)
            continue
        rng = random.Random(f"{seed}:{s.name}")
        chosen = set(rng.sample(range(len(s.tasks)), max(1, round(fraction * len(s.tasks)))))
        out.append(replace(s, tasks=tuple(
            replace(t, cost=t.cost * factor, expected=t.expected if t.expected is not None else t.cost)
            if i in chosen else t for i, t in enumerate(s.tasks))))
    return out


# ---------------------------------------------------------------------------------------------
# Per-task overhead


def with_overhead(stages: Sequence[Stage], seconds: float) -> list[Stage]:
    """Every task ``seconds`` dearer (its expected cost too)."""
    if seconds == 0:
        return list(stages)
    return [replace(s, tasks=tuple(replace(t, cost=t.cost + seconds,
                                           expected=None if t.expected is None else t.expected + seconds)
                                   for t in s.tasks)) for s in stages]


def calibrate(stages: Sequence[Stage], driver: float, slots: int, measured: float) -> float:
    """The per-task overhead that makes the replay on ``slots`` slots take ``measured`` seconds (0 when the
    replay without overhead already takes that long)."""
    if replay(stages, driver, slots).seconds >= measured:
        return 0.0
    tasks = sum(len(s.tasks) for s in stages)
    lo, hi = 0.0, measured / max(1, tasks) * slots
    for _ in range(50):
        mid = (lo + hi) / 2
        if replay(with_overhead(stages, mid), driver, slots).seconds < measured:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ---------------------------------------------------------------------------------------------
# Loading reports


def load(path: str, case: str | None = None, system: str | None = None) -> RunReport:
    """A run report from a JSON file (``RunReport.to_json()``) or from a results file's records that
    carry one (``timeline``, ``run_report``), chosen by ``case`` (``SUITE:CASE``) and ``system``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "tasks" in doc and "stages" in doc:
        return RunReport.from_dict(doc)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    found = [r for r in records if isinstance(r.get("report"), dict)]
    if case:
        suite, _, name = case.partition(":")
        found = [r for r in found if r.get("suite") == suite and (not name or r.get("case") == name)]
    if system:
        found = [r for r in found if r.get("system", "engine") == system]
    if len(found) != 1:
        choices = sorted({f"--case {r.get('suite')}:{r.get('case')} --system {r.get('system', 'engine')}"
                          for r in records if isinstance(r.get("report"), dict)})
        what = "no" if not found else f"{len(found)}"
        raise ReplayError(f"{path}: {what} run reports match; choose one with " + ("; ".join(choices) or
                          "(the file holds none: run the suite with --timeline SUITE:CASE, or pass a report)"))
    return RunReport.from_dict(found[0]["report"])


# ---------------------------------------------------------------------------------------------
# The table


def _prepared(report: RunReport, overhead: float | None, stragglers, seed: int):
    stages, driver = stages_of(report)
    run_slots = int((report.cluster or {}).get("threads") or 0)
    if overhead is None:
        overhead = calibrate(stages, driver, run_slots, report.duration) if run_slots else 0.0
    if stragglers is not None:
        stages = with_stragglers(stages, *stragglers, seed=seed)
    return with_overhead(stages, overhead), driver, overhead


def scenarios(report: RunReport, slots: Sequence[int], *, speculation: Speculation | None = None,
              stragglers: tuple[float, float] | None = None, seed: int = 0,
              overhead: float | None = None, skew_off: RunReport | None = None) -> dict[str, Any]:
    """Every slot count's makespan: as run and without skew handling, each without and with speculation.
    ``overhead``: seconds added to every task (None: calibrated on the run, see the module docstring);
    ``skew_off``: the report of the same job run without skew handling, replayed alongside."""
    given = overhead
    stages, driver = stages_of(report)
    run_slots = int((report.cluster or {}).get("threads") or 0)
    if overhead is None:
        overhead = calibrate(stages, driver, run_slots, report.duration) if run_slots else 0.0
    if overhead < 0:
        raise ReplayError(f"the per-task overhead must be at least 0, got {overhead}")
    if stragglers is not None:
        stages = with_stragglers(stages, *stragglers, seed=seed)
    spec = speculation or Speculation.engine_defaults()
    try:
        flat, merged = unsplit(stages, report.skew)
        why = None if merged else "the run split no partition: the same plan either way"
    except ReplayError as exc:
        flat, merged, why = None, 0, str(exc)
    stages = with_overhead(stages, overhead)
    flat = with_overhead(flat, overhead) if flat is not None else None
    off = _prepared(skew_off, given, stragglers, seed) if skew_off else None
    rows = []
    for n in ([run_slots] if run_slots and run_slots not in slots else []) + list(slots):
        row = {"slots": n, "as_run": replay(stages, driver, n),
               "as_run_spec": replay(stages, driver, n, speculation=spec)}
        if flat is not None and merged:
            row["unsplit"] = replay(flat, driver, n)
            row["unsplit_spec"] = replay(flat, driver, n, speculation=spec)
        if off is not None:
            row["off"] = replay(off[0], off[1], n)
            row["off_spec"] = replay(off[0], off[1], n, speculation=spec)
        rows.append(row)
    return {"report": report, "stages": stages, "driver": driver, "rows": rows, "merged": merged,
            "unsplit_note": why, "run_slots": run_slots, "speculation": spec, "stragglers": stragglers,
            "overhead": overhead, "skew_off": skew_off, "skew_off_overhead": off[2] if off else None}


def render(result: dict[str, Any]) -> str:
    rep: RunReport = result["report"]
    spec: Speculation = result["speculation"]
    lines = [f"Replay of {rep.job!r} run {rep.run_id[:12]}: {len(result['stages'])} stage(s) "
             f"({', '.join(f'{s.name} {len(s.tasks)}' for s in result['stages'])} tasks), measured "
             f"{rep.duration:.2f} s on {result['run_slots'] or '?'} slots, driver {result['driver']:.2f} s, "
             f"per-task overhead {result['overhead'] * 1e3:.1f} ms"]
    if result["stragglers"]:
        f, k = result["stragglers"]
        lines.append(f"stragglers: {f:.0%} of every stage's tasks (at least one) {k:g}x slower")
    lines.append(f"speculation: copy after max({spec.multiplier:g} x median, {spec.min_runtime:g} s) when over "
                 f"{spec.multiplier:g} x the expected cost, at most {spec.max_concurrent} at once")
    if result["merged"]:
        lines.append(f"without skew handling, derived: {result['merged']} split partition(s) run whole "
                     "(pieces + merges)")
    else:
        lines.append(f"without skew handling, derived: {result['unsplit_note']}")
    off: RunReport | None = result["skew_off"]
    if off is not None:
        lines.append(f"without skew handling, measured: run {off.run_id[:12]} ({len(off.tasks)} tasks, "
                     f"{off.duration:.2f} s, per-task overhead {result['skew_off_overhead'] * 1e3:.1f} ms)")
    lines.append("")
    head = ["slots", "as run s", "+ speculation s"]
    if result["merged"]:
        head += ["no skew handling s", "no skew, + speculation s", "skew handling gains"]
    if off is not None:
        head += ["skew-off run s", "skew-off run, + speculation s", "gain over the skew-off run"]
    head += ["lower bound s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        mark = " (as measured)" if row["slots"] == result["run_slots"] else ""
        cells = [f"{row['slots']}{mark}", f"{row['as_run'].seconds:.3f}",
                 f"{row['as_run_spec'].seconds:.3f} ({row['as_run_spec'].copies} copies)"]
        if "unsplit" in row:
            gain = row["unsplit"].seconds / row["as_run"].seconds if row["as_run"].seconds else float("nan")
            cells += [f"{row['unsplit'].seconds:.3f}",
                      f"{row['unsplit_spec'].seconds:.3f} ({row['unsplit_spec'].copies} copies)", f"{gain:.2f}x"]
        if "off" in row:
            gain = row["off"].seconds / row["as_run"].seconds if row["as_run"].seconds else float("nan")
            cells += [f"{row['off'].seconds:.3f}", f"{row['off_spec'].seconds:.3f} ({row['off_spec'].copies} copies)",
                      f"{gain:.2f}x"]
        cells.append(f"{row['as_run'].bound:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slots(text: str) -> list[int]:
    try:
        out = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slots takes comma-separated counts, e.g. 8,64,512; got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("--slots needs counts of at least 1")
    return out


def _stragglers(text: str) -> tuple[float, float]:
    try:
        f, k = text.split(":")
        return float(f), float(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stragglers takes FRACTION:FACTOR, e.g. 0.05:5; got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("report", nargs="?", help="a run report (JSON) or a results file (JSON lines)")
    ap.add_argument("--case", default=None, help="SUITE:CASE of the run report in a results file")
    ap.add_argument("--system", default=None, help="the system whose report to take (engine, on, off, ...)")
    ap.add_argument("--slots", type=_slots, default=[8, 64, 512], help="slot counts (default: 8,64,512)")
    ap.add_argument("--stragglers", type=_stragglers, default=None, help="FRACTION:FACTOR of slowed tasks")
    ap.add_argument("--seed", type=int, default=0, help="seed of the straggler choice")
    ap.add_argument("--task-overhead", type=float, default=None,
                    help="seconds added to every task (default: calibrated on the run's measured time)")
    ap.add_argument("--multiplier", type=float, default=None, help="speculation multiplier (engine: 1.5)")
    ap.add_argument("--min-runtime", type=float, default=None, help="speculation min runtime s (engine: 0.5)")
    ap.add_argument("--max-concurrent", type=int, default=None, help="speculative copies at once (engine: 2)")
    ap.add_argument("--skew-off", default=None,
                    help="the same job's run without skew handling, replayed alongside: a report file, or a system "
                         "of the same case in the results file (default: 'off' when replaying 'on')")
    ap.add_argument("--shuffle", default=None, help="MAPSxREDUCERS: price a shuffle on an object store instead")
    ap.add_argument("--map-bytes", default="128MiB", help="shuffle bytes each map task writes (with --shuffle)")
    args = ap.parse_args(argv)
    if args.shuffle:
        from benchmarks import objectstore
        return objectstore.main([args.shuffle, "--map-bytes", args.map_bytes,
                                 "--slots", ",".join(str(s) for s in args.slots)])
    if not args.report:
        ap.error("give a run report or results file, or --shuffle MAPSxREDUCERS")
    base = Speculation.engine_defaults()
    spec = Speculation(args.multiplier if args.multiplier is not None else base.multiplier,
                       args.min_runtime if args.min_runtime is not None else base.min_runtime,
                       args.max_concurrent if args.max_concurrent is not None else base.max_concurrent)
    try:
        report = load(args.report, args.case, args.system)
        skew_off = None
        if args.skew_off and os.path.exists(args.skew_off):
            skew_off = load(args.skew_off)
        elif args.skew_off or (args.system == "on" and args.case):
            try:
                skew_off = load(args.report, args.case, args.skew_off or "off")
            except ReplayError:
                if args.skew_off:
                    raise
        result = scenarios(report, args.slots, speculation=spec, stragglers=args.stragglers, seed=args.seed,
                           overhead=args.task_overhead, skew_off=skew_off)
    except (OSError, ReplayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(result))
    return 0


__all__ = ["Task", "Stage", "Speculation", "Replay", "ReplayError", "stages_of", "stage_makespan", "replay",
           "unsplit", "with_stragglers", "with_overhead", "calibrate", "load", "scenarios", "render", "main"]


if __name__ == "__main__":
    sys.exit(main())
