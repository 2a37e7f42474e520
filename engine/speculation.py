"""Speculative re-execution of stragglers.

The policy (Spark's rule, Hadoop's cap, LATE's estimate), checked by a supervisor in the driver
every ``interval`` seconds while a stage runs:

1. Wait until ``quantile`` of the stage's tasks have finished; their median runtime is the yardstick.
   Before that, once as many tasks as the cluster has slots (at least 2) have finished, only a task
   past ``early-multiplier`` (2) times the usual threshold is a candidate (a straggler that started in the first wave would
   otherwise hold its worker until most of the stage is done).
2. A running task becomes a candidate once it has run longer than ``multiplier x median`` and longer
   than ``min-runtime`` seconds, measured from the moment it *started executing* (a worker plugin
   reports starts, so time spent queued behind another task does not count).
   With progress reports (map tasks report rows done after each input batch), LATE's estimate
   applies too: a task whose estimated total time (time to its last report x expected rows / rows
   done, and at least its elapsed time) exceeds
   ``multiplier x`` the median, or that has reported nothing for ``multiplier x`` the usual time to
   a first report, is a candidate as soon as it passes ``min-runtime``: a 20x straggler is caught
   after a fraction of a typical task, not after 1.5 of them.
3. Unless its input size explains it: when the stage's finished tasks processed ``r`` bytes per
   second (median) and the candidate's input should take ``size / r`` seconds, it is only slow if it
   also exceeds ``multiplier x`` that estimate (Spark's efficiency filter; skewed tasks are big, not slow).
4. At most ``max-concurrent`` speculative attempts run at once, each on a different worker than the
   straggler and than any worker whose finished tasks in this stage took over ``multiplier x`` the
   median (LATE: never place a backup on a slow node), under a new key and ahead of queued tasks.
   The first attempt to finish wins (the commit protocol discards the other's files); the loser is
   cancelled and notices it between batches.

5. A loser is cancelled, but cancelling cannot stop Python code that never checks for it (a user
   function stuck in a sleep, a lock, a network call): such a zombie keeps its worker thread, and
   the scheduler, which has forgotten the cancelled key, queues new tasks behind it. So when a
   partition's winner is in, every other attempt of it that had started is watched: still running
   ``zombie-grace`` seconds (default 1) after the cancel, its worker is restarted through its nanny
   (the scheduler moves the tasks queued there to other workers and the fresh process takes new
   ones); a worker without a nanny (``dask worker --no-nanny``, threads of an in-process cluster)
   cannot be restarted, so the run places no new task of its own there until the attempt returns.
   Each such decision, with its reason, goes into ``RunReport.zombies``.

Every launch, and which attempt won, goes into ``RunReport.speculation``.

A check costs O(attempts executing): finished tasks' statistics are folded in as they arrive and kept
sorted (medians in O(1)), and only this stage's started attempts are looked at, through the
executor's index of running attempts.

The executor drives a :class:`Supervisor` through :class:`engine.executor.StageSupervisor`
(``stage_started``, ``check``, ``note_result``, ``stage_finished``, ``busy_workers``, ``start_of``)
and shows it each stage as an :class:`engine.executor.StageView`: the stage's finished results,
its running attempts by key and partition, and ``speculate(partition, avoid)``, the one thing a
supervisor may do to it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
import weakref
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

from . import config
from .report import RunReport

if TYPE_CHECKING:
    from .executor import StageView

log = logging.getLogger("engine")

TOPIC = "engine-task-start"
PROGRESS_TOPIC = "engine-task-progress"


class TaskStartReporter(WorkerPlugin):
    """Worker plugin: reports the moment each engine task starts executing (exact start times)."""

    name = "engine-task-starts"

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and isinstance(key, tuple) and len(key) == 3:
            try:
                self.worker.log_event(TOPIC, {"key": repr(key), "worker": self.worker.address})
            except Exception:  # noqa: BLE001 - diagnostics must never fail a task
                pass


@dataclass(frozen=True)
class Policy:
    quantile: float = 0.75
    multiplier: float = 1.5
    min_runtime: float = 0.5
    max_concurrent: int = 2
    interval: float = 0.1
    early_multiplier: float = 2.0
    zombie_grace: float = 1.0     # seconds a cancelled attempt may keep running before its worker is restarted

    @classmethod
    def from_config(cls) -> Policy:
        return cls(float(config.get("speculation.quantile")), float(config.get("speculation.multiplier")),
                   float(config.get("speculation.min-runtime")), int(config.get("speculation.max-concurrent")),
                   float(config.get("speculation.interval")), float(config.get("speculation.early-multiplier")),
                   float(config.get("speculation.zombie-grace")))


def _attempt_on_worker(key, dask_worker=None) -> dict:
    """Runs on a worker (``client.run``): is attempt ``key`` still executing there, and how many others are?"""
    executing = [ts.key for ts in dask_worker.state.executing]
    return {"running": key in executing, "others": sum(1 for k in executing if k != key)}



def _median(values: list[float]) -> float:
    """The median of an already sorted list."""
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2


class _Finished:
    """Statistics of a stage's finished tasks, folded in as they arrive and kept sorted, so a check
    reads medians in O(1) instead of re-scanning every result (O(tasks) per check, O(tasks²) a stage)."""

    def __init__(self) -> None:
        self.seen = 0
        self.durations: list[float] = []
        self.rates: list[float] = []
        self.rows_per_byte: list[float] = []
        self.rows_done: list[int] = []
        self.per_worker: dict[str, list[float]] = {}

    def add(self, results: dict) -> None:
        """Fold in the results added since the last call (``results`` only grows, in insertion order)."""
        new = len(results) - self.seen
        if new <= 0:
            return
        self.seen = len(results)
        for v in itertools.islice(reversed(results.values()), new):
            if "start" not in v or "stop" not in v:
                continue
            d = max(1e-6, v["stop"] - v["start"])
            bisect.insort(self.durations, d)
            bisect.insort(self.per_worker.setdefault(v.get("worker", "?"), []), d)
            size = v.get("input_bytes")
            if size:
                bisect.insort(self.rates, size / d)
                if v.get("rows_in"):
                    bisect.insort(self.rows_per_byte, v["rows_in"] / size)
            if v.get("rows_in"):
                bisect.insort(self.rows_done, v["rows_in"])


_REGISTERED: set[int] = set()
_REG_LOCK = threading.Lock()


class _Dispatch:
    """Forwards a client's task events to every live supervisor of that client.

    distributed keeps one handler per topic per client, so runs that share a client at the same time
    (a backfill's parallel dates) would otherwise leave every supervisor but the last one deaf."""

    def __init__(self) -> None:
        self.supervisors: weakref.WeakSet = weakref.WeakSet()

    def on_start(self, event) -> None:
        for s in list(self.supervisors):
            s._on_start(event)

    def on_progress(self, event) -> None:
        for s in list(self.supervisors):
            s._on_progress(event)


_DISPATCH: dict[int, _Dispatch] = {}


class Supervisor:
    """Watches one stage at a time and launches speculative attempts of its stragglers."""

    def __init__(self, client, report: RunReport, policy: Policy) -> None:
        self.client, self.report, self.policy = client, report, policy
        self.starts: dict[str, tuple[float, str]] = {}     # repr(key) -> (start time, worker)
        self._lock = threading.Lock()
        self._stage = ""
        self._prefix_repr = "\0"
        self._total = 0
        self._last = 0.0
        self.speculated: dict[int, dict] = {}
        self.progress: dict[str, tuple[float, int]] = {}    # repr(key) -> (time of report, rows done)
        self._first_gaps: list[float] = []                  # start -> first progress report, this stage (sorted)
        self._executing: dict[str, float] = {}              # repr(key) -> start, this stage's started attempts
        self._mark = 0                                      # len(starts) when the last stage finished
        self._stats = _Finished()
        self._prefix = ""
        self.busy: dict[str, float] = {}     # worker without a nanny -> since when a zombie holds it
        with _REG_LOCK:
            if id(client) not in _REGISTERED:
                client.register_plugin(TaskStartReporter())
                _REGISTERED.add(id(client))
            dispatch = _DISPATCH.get(id(client))
            if dispatch is None or getattr(client, "_engine_dispatch", None) is not dispatch:
                dispatch = _DISPATCH[id(client)] = _Dispatch()
                client._engine_dispatch = dispatch       # ties the dispatcher to this client object
                client.subscribe_topic(TOPIC, dispatch.on_start)
                client.subscribe_topic(PROGRESS_TOPIC, dispatch.on_progress)
            dispatch.supervisors.add(self)
        self._dispatch = dispatch

    def close(self) -> None:
        """Stop receiving task events (the run is over)."""
        with _REG_LOCK:
            self._dispatch.supervisors.discard(self)

    @classmethod
    def from_config(cls, client, report: RunReport) -> Supervisor:
        return cls(client, report, Policy.from_config())

    def _on_start(self, event) -> None:
        _, msg = event
        key, now = msg["key"], time.time()
        with self._lock:
            self.starts[key] = (now, msg["worker"])
            if key.startswith(self._prefix_repr):
                self._executing[key] = now

    def _on_progress(self, event) -> None:
        _, msg = event
        key = msg["key"]
        with self._lock:
            if key not in self.progress and key in self.starts and key.startswith(self._prefix_repr):
                bisect.insort(self._first_gaps, time.time() - self.starts[key][0])
            self.progress[key] = (time.time(), int(msg["done"]))

    def _cluster_shape(self) -> tuple[int, int]:
        now = time.time()
        if now - getattr(self, "_shape_at", 0.0) > 5.0:
            try:
                workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
                self._shape = (len(workers), sum(int(w.get("nthreads", 1)) for w in workers.values()))
            except Exception:  # noqa: BLE001 - a diagnostic only
                self._shape = getattr(self, "_shape", (2, 2))
            self._shape_at = now
        return self._shape

    def _slots(self) -> int:
        return self._cluster_shape()[1]

    def _live_workers(self) -> set[str]:
        try:
            return set(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        except Exception:  # noqa: BLE001 - then no placement can be promised
            return set()

    # -- executor hooks (engine.executor.StageSupervisor) -------------------------------------
    def stage_started(self, stage: StageView) -> None:
        name, prefix = stage.name, stage.prefix
        self._stage, self._total, self._prefix = name, stage.total, prefix
        self.speculated = {}
        self._stats = _Finished()
        with self._lock:
            self._prefix_repr = repr((prefix,))[:-2]      # how this stage's keys start, as reprs
            self._first_gaps = []
            # starts that arrived since the last stage, before this call (its first attempts run already)
            self._executing = {k: self.starts[k][0]
                               for k in itertools.islice(reversed(self.starts), max(0, len(self.starts) - self._mark))
                               if k.startswith(self._prefix_repr)}

    def stage_finished(self, stage: StageView) -> None:
        with self._lock:
            self._mark = len(self.starts)
            self._executing = {}
        for partition, info in self.speculated.items():
            info["decision"]["won"] = info.get("won")
        self.speculated = {}

    def note_result(self, partition: int, attempt: int) -> None:
        info = self.speculated.get(partition)
        if info is not None and info.get("won") is None:
            info["won"] = attempt
            info["decision"]["won"] = attempt
            info["decision"]["outcome"] = ("speculative attempt won" if attempt != info["original"]
                                           else "original attempt won")
            # The other attempt is about to be cancelled: if it does not stop, it is a zombie.
            for loser in {info["original"], info["decision"]["attempt"]} - {attempt}:
                self._watch_loser(partition, loser)

    def busy_workers(self) -> set[str]:
        """Workers (without a nanny) still held by a cancelled attempt: no new task of this run goes there."""
        return set(self.busy)

    def start_of(self, key: str) -> tuple[float, str] | None:
        """``(start time, worker)`` of the attempt ``repr(key)``, once its worker reported it started."""
        with self._lock:
            return self.starts.get(key)

    # -- cancelled attempts that keep running -----------------------------------------------------
    def _watch_loser(self, partition: int, attempt: int) -> None:
        key = (self._prefix, int(partition), int(attempt))
        with self._lock:
            started = self.starts.get(repr(key))
        if started is None:
            return            # never started: cancelling it frees nothing
        where = {"stage": self._stage, "partition": partition, "attempt": attempt, "worker": started[1],
                 "cancelled_at": time.time()}
        threading.Thread(target=self._reap, args=(key, where), name=f"engine-zombie-{partition}",
                         daemon=True).start()

    def _still_running(self, key, worker: str) -> dict | None:
        try:
            return self.client.run(_attempt_on_worker, key, workers=[worker], on_error="return").get(worker)
        except Exception:  # noqa: BLE001 - the worker is gone: nothing left to stop
            return None

    def _reap(self, key, where: dict) -> None:
        """After the grace period: restart the worker of a cancelled attempt that is still running."""
        time.sleep(self.policy.zombie_grace)
        worker = where["worker"]
        state = self._still_running(key, worker)
        if not isinstance(state, dict) or not state.get("running"):
            return            # it noticed the cancel (or its worker is gone): nothing to do
        grace = time.time() - where["cancelled_at"]
        what = (f"{where['stage']} partition {where['partition']}: attempt {where['attempt']} on {worker} was still "
                f"running {grace:.1f}s after it was cancelled (another attempt won), in code that does not stop "
                "when cancelled; new tasks would queue behind it")
        try:
            nanny = self.client.scheduler_info(n_workers=-1).get("workers", {}).get(worker, {}).get("nanny")
        except Exception:  # noqa: BLE001
            nanny = None
        record = {**where, "seconds_after_cancel": round(grace, 3), "others_running": state.get("others", 0)}
        if nanny:
            record["action"] = "restarted"
            record["reason"] = what + ": restarted the worker through its nanny" + (
                f" ({state['others']} other task(s) running there were rescheduled)" if state.get("others") else "")
            self.report.zombies.append(record)
            log.warning("%s", record["reason"])
            try:
                outcome = self.client.restart_workers([worker], timeout=60, raise_for_error=False)
                record["restart"] = str(outcome.get(worker, outcome))
            except Exception as exc:  # noqa: BLE001 - e.g. the worker left meanwhile
                record["restart"] = f"{type(exc).__name__}: {exc}"
            record["restarted_at"] = time.time()
            return
        record["action"] = "avoided"
        record["reason"] = (what + ": the worker has no nanny to restart it, so this run places no new task on it "
                            "until the attempt returns")
        self.report.zombies.append(record)
        log.warning("%s", record["reason"])
        self.busy[worker] = time.time()
        try:
            while True:
                time.sleep(0.5)
                state = self._still_running(key, worker)
                if not isinstance(state, dict) or not state.get("running"):
                    break
        finally:
            self.busy.pop(worker, None)
            record["freed_at"] = time.time()

    def check(self, stage: StageView) -> None:
        """Launch speculative attempts of this stage's stragglers (at most every ``interval`` seconds).

        ``stage`` indexes its running attempts by key and partition; its ``results`` only grow. A check
        costs O(attempts executing + results since the last check), never O(tasks in the stage).
        """
        now = time.time()
        if now - self._last < self.policy.interval:
            return
        self._last = now
        results = stage.results
        total = self._total
        if total < 2:
            return
        early = len(results) < max(1, math.floor(self.policy.quantile * total))
        if early and len(results) < max(2, self._slots()):
            return
        stats = self._stats
        stats.add(results)
        if not stats.durations:
            return
        median = _median(stats.durations)
        threshold = max(self.policy.multiplier * median, self.policy.min_runtime)
        if early:
            threshold *= self.policy.early_multiplier
        slow_nodes = {w for w, ds in stats.per_worker.items() if _median(ds) > self.policy.multiplier * median}
        rate = _median(stats.rates) if stats.rates else None
        with self._lock:
            gaps = list(self._first_gaps)
        silent_limit = max(self.policy.min_runtime, self.policy.multiplier * _median(gaps)) \
            if gaps else math.inf
        if early:
            silent_limit *= self.policy.early_multiplier
        active = stage.speculative
        # Only this stage's started attempts are looked at (the executor indexes its running attempts by
        # key and partition): a check costs O(tasks executing), not O(tasks in the stage).
        by_partition: dict[int, list] = {}
        with self._lock:
            executing = list(self._executing)
        started_running = 0
        for key in executing:
            p = stage.partition_of(key)
            if p is None:
                if stage.ended(key):
                    with self._lock:
                        self._executing.pop(key, None)
                continue        # ended, or not yet registered by the executor
            started_running += 1
            by_partition[p] = stage.attempts_of(p)
        # Work still queued (attempts not started) keeps the other slots busy for about this long; a copy
        # launched now only pays if the straggler would finish after that work plus the copy itself.
        queued = max(0, stage.running - started_running)
        drain = queued * median / max(1, self._slots() - 1)
        durations = stats.durations
        for p, attempts in sorted(by_partition.items()):
            if active >= self.policy.max_concurrent:
                break
            if p in results or p in self.speculated or len(attempts) > 1:
                continue
            key, attempt = attempts[0]
            with self._lock:
                started = self.starts.get(key)
            if started is None:
                continue          # still queued: not a straggler (yet)
            start, worker = started
            elapsed = now - start
            size = stage.size(p)
            expected = size / rate if rate and size else median      # how long this task should take
            factor = self.policy.early_multiplier if early else 1
            # LATE: the task's own progress (map tasks report rows done after each input batch)
            with self._lock:
                reported = self.progress.get(key)
            done = reported[1] if reported else None
            expected_rows = (size * _median(stats.rows_per_byte) if size and stats.rows_per_byte
                             else _median(stats.rows_done) if stats.rows_done else None)
            estimate = None       # its total time, at its rate as of its last report (at least elapsed)
            if done and expected_rows:
                estimate = max(elapsed, (reported[0] - start) * expected_rows / done)
            why = None
            if elapsed > threshold and elapsed > self.policy.multiplier * expected * factor:
                why = (f"has run {elapsed:.2f}s, over {self.policy.multiplier:g} x the median {median:.2f}s of "
                       f"{len(durations)} finished tasks")
            elif elapsed > self.policy.min_runtime * factor:
                if done is None and elapsed > silent_limit:
                    why = (f"has reported no progress in {elapsed:.2f}s (tasks of this stage report within "
                           f"{_median(gaps):.2f}s)")
                elif estimate is not None and estimate > self.policy.multiplier * expected * factor:
                    why = (f"has done {done:,} of ~{expected_rows:,.0f} rows in {elapsed:.2f}s: on course "
                           f"for ~{estimate:.1f}s, over {self.policy.multiplier:g} x the expected {expected:.2f}s")
            if why is None:
                continue      # not slow, or slow because it is big: speculation would not help
            # The time it still needs: from its progress; unbounded when it reports none while its
            # siblings do; otherwise (no progress reports in this stage) assume at least what it has run.
            if estimate is not None:
                left = estimate - elapsed
            elif gaps and done is None:
                left = math.inf
            else:
                left = elapsed
            if left <= drain + expected:
                continue      # it finishes before the queued work does: a copy now would only displace it
            reason = (f"{self._stage} partition {p}: attempt {attempt} on {worker} {why}"
                      + (f" (its input of {size:,} bytes should take {expected:.2f}s)" if rate and size else ""))
            avoid = {worker} | slow_nodes | self.busy_workers()
            if not self._live_workers() - avoid:
                continue          # no other worker, or every other one is slow: a copy would not finish sooner
            if slow_nodes - {worker}:
                reason += f"; not placed on slow worker(s) {', '.join(sorted(slow_nodes - {worker}))}"
            new_attempt = stage.speculate(p, avoid)
            decision = {"stage": self._stage, "partition": p, "attempt": new_attempt, "straggler": attempt,
                        "worker": worker, "elapsed": round(elapsed, 3), "median": round(median, 3),
                        "reason": reason, "won": None}
            self.report.speculation.append(decision)
            self.speculated[p] = {"original": attempt, "decision": decision, "won": None}
            log.info("speculating: %s", reason)
            active += 1


__all__ = ["Supervisor", "Policy", "TaskStartReporter"]
