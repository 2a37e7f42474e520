"""Stage execution: one stage's attempt-keyed tasks, run to completion on distributed.

:class:`StageExecutor` submits a stage's first attempts in one graph, collects what finishes,
retries failed tasks with capped exponential backoff and full jitter (each retry under a new key),
and fails the stage at once on a deterministic error (bad schema, unreadable input) with a message
naming the round, stage and partition. The first successful attempt of a partition is its result;
later ones are recorded as losers. A resumed run reuses journaled results of the very same tasks.

The run's guards (:class:`engine.guards.Guards`) act here. Which failures are retried, and how often,
is :class:`engine.retrypolicy.RetryPolicy`'s decision: a user error is retried on another worker and
not again once it failed the same way on two; ``retry_on`` sets attempts per exception class;
``retry_budget`` caps the run's retries. ``max_tasks`` bounds the attempts of the run running at once
(first attempts go out in chunks that refill as attempts finish; speculative copies wait for a free
slot too). ``max_seconds`` (from the run's start, the driver's check of a sample included:
:func:`within_budgets`) and ``max_cpu_seconds`` (the CPU of finished and failed attempts, plus
what running ones have used so far, read from their threads' CPU clocks: in this process, or from
the workers at most every ``_CPU_POLL`` seconds) are checked as the loop turns: past one, the
running attempts are cancelled and :class:`~engine.errors.BudgetExceededError` fails the run, which
then commits nothing. Every attempt runs inside :func:`engine.attempts.run_attempt`, so a failed one
names its worker, its times, its CPU seconds and the user's frame it raised in.

The loop costs the driver O(1) per task event: running attempts are indexed by partition and key
(:class:`_Running`), completions arrive through a queue (no wait on, or scan of, every running
future), and the results of the tasks that finished together are fetched in one request.

A speculation supervisor (:class:`StageSupervisor`, implemented by
:class:`engine.speculation.Supervisor`) watches each stage through a :class:`StageView`: what it
may read of the running stage, and the one thing it may do, launch a speculative attempt.

The client is a ``distributed.Client`` (each attempt goes to the scheduler as a one-task graph) or,
for a run in the driver process, an :class:`engine.local.LocalClient` (each attempt is a call on its
thread pool; no graph is built and dask is not imported).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import heapq
import logging
import math
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from . import attempts, commit, config, counters, shuffle
from .attempts import run_attempt
from .cluster import scheduler_timeout
from .compile import TaskSpec, task_key
from .datasets import Split
from .errors import (BudgetExceededError, ClusterError, EngineError, InputError, JobDefinitionError, SchemaError,
                     StageFailedError, TooManyRejectedError)
from .journal import Journal, still_valid
from .redact import redact
from .report import RunReport, StageReport, TaskReport
from .retrypolicy import RetryPolicy, is_user_error
from .tasks import TaskContext

log = logging.getLogger("engine")

ProgressFn = Callable[[str, int, int], None]

_CPU_POLL = 0.5       # seconds between two reads of the running attempts' CPU on a cluster's workers

_PERMANENT = (SchemaError, InputError, JobDefinitionError, TooManyRejectedError, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _count(stage: StageReport, value: dict) -> None:
    """Add a finished task's rows and bytes to its stage's figures."""
    rows_in = int(value.get("rows_in") or 0)
    stage.rows_in += rows_in
    stage.rows_out += int(value.get("rows_out") or 0)
    stage.bytes_out += int(value.get("bytes_out") or 0)
    if value.get("reads_input"):
        stage.input_rows += rows_in


def no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ENOSPC, or a disk quota exceeded, raised by Python
    or by Arrow's own file writers (which say so in their message)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
        seen += 1
    return False


def _is_permanent(exc: BaseException) -> bool:
    """Deterministic failures, never retried: the job's or the input's errors, Arrow's type errors (no
    kernel or cast for these types), and Arrow errors a task marked as raised while *computing* (user
    functions, aggregations, casts: ``engine_deterministic``). An ``ArrowInvalid`` raised while reading
    bytes (a short read of a shuffle file from an object store) is retried."""
    return isinstance(exc, _PERMANENT) or bool(getattr(exc, "engine_deterministic", False)) or no_space(exc)


def redact_exception(exc: BaseException) -> None:
    """Redact, in place, the string arguments of an exception leaving the driver and of its causes, so
    that what prints it later (a traceback, the CLI's paragraph) does not show a secret it quoted."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        with contextlib.suppress(Exception):
            exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        exc = exc.__cause__ or exc.__context__


# ---------------------------------------------------------------------------------------------
# Running attempts


class _Running(dict):
    """A stage's running attempts, ``future -> (partition, attempt, submitted, speculative)``.

    Indexed so that each event costs the driver O(1), whatever the stage's size: by partition (the
    attempts to cancel when one wins, whether another attempt still runs), by ``repr(key)`` (what
    the speculation supervisor's start events name) and a count of speculative attempts. Every
    future put in reports its completion once, through a queue that :meth:`next_done` drains; the
    loop never waits on, or polls, all running futures.
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_partition: dict[int, dict] = {}
        self.by_key: dict[str, Any] = {}
        self.ended: set[str] = set()      # repr(key) of attempts that left (finished, failed, cancelled)
        self.speculative = 0
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._unwatched: list = []

    def __setitem__(self, future, info: tuple[int, int, float, bool]) -> None:
        super().__setitem__(future, info)
        self._by_partition.setdefault(info[0], {})[future] = info
        self.by_key[repr(future.key)] = future
        self.speculative += bool(info[3])
        self._unwatched.append(future)

    def pop(self, future, *default):
        if future not in self:
            if default:
                return default[0]
            raise KeyError(future)
        info = super().pop(future)
        attempts = self._by_partition.get(info[0])
        if attempts is not None:
            attempts.pop(future, None)
            if not attempts:
                del self._by_partition[info[0]]
        key = repr(future.key)
        self.by_key.pop(key, None)
        self.ended.add(key)
        self.speculative -= bool(info[3])
        return info

    def __delitem__(self, future) -> None:
        self.pop(future)

    def attempts_of(self, partition: int) -> list[tuple[Any, tuple[int, int, float, bool]]]:
        """The running attempts of one partition, ``[(future, info), ...]``."""
        return list(self._by_partition.get(partition, {}).items())

    def next_done(self, timeout: float) -> list:
        """The running futures that completed (in any state), waiting up to ``timeout`` for the first."""
        if self._unwatched:
            futures, self._unwatched = self._unwatched, []
            if getattr(futures[0].client, "local", False):      # the driver's threads (engine.local)
                for future in futures:
                    future.add_done_callback(self._done.put)
            else:
                # One hop to the client's event loop for all futures added since the last call (a callback
                # per future would wake the loop once per task).
                futures[0].client.loop.add_callback(_watch, futures, self._done.put)
        try:
            first = self._done.get(timeout=timeout)
        except queue.Empty:
            return []
        done = [first]
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                break
        # A future reports once; one that already left (a cancelled sibling, say) is not ours to handle.
        return [f for f in dict.fromkeys(done) if f in self]


def _named_graph(dsk: dict) -> Any:
    """``dsk`` for ``client.get`` under a random name: its keys are unique already (attempt-keyed), so
    dask need not hash every task to name the graph (a third of the driver's work per task otherwise)."""
    try:
        from dask._expr import LLGExpr
    except ImportError:  # another dask: the plain graph
        return dsk
    return LLGExpr(dsk, _determ_token=uuid.uuid4().hex)


async def _watch(futures: list, put: Callable[[Any], None]) -> None:
    """On the client's event loop: ``put(future)`` once each future leaves the pending state."""
    import asyncio

    from distributed.client import done_callback
    for future in futures:
        asyncio.ensure_future(done_callback(future, put))


# ---------------------------------------------------------------------------------------------
# Journal matching


def _canonical(x: Any) -> Any:
    """A process-independent description of a task argument (file systems and futures drop out)."""
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, pa.Table):
        return ("table", x.schema.names, x.to_pylist())
    if isinstance(x, pa.Schema):
        return ("schema", str(x))
    if isinstance(x, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_canonical(v) for v in x)
    if isinstance(x, (Split, shuffle.RangePiece)):
        return repr(x)
    if isinstance(x, TaskContext):
        base = (x.kind, x.keys, x.descending, x.num_partitions, x.map_combine, x.columns, x.round)
        g = x.guards
        if g is not None and (g.on_error != "fail" or g.on_bad_file != "fail"):
            # what a task rejects is part of its result: a resume with another policy recomputes it
            base += (("rejects", g.on_error, g.on_bad_file),)
        # which side of a join, and the steps fused before it (broadcast joins: which side, which files)
        return base if (x.side == 0 and not x.ops) else base + (x.side, _canonical(x.ops))
    return type(x).__name__


def _spec_digest(task: TaskSpec) -> str:
    """What a journaled result must match to be reused by a resumed run."""
    text = repr((task.func.__name__, task.partition, _canonical(task.args)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The supervisor's interface


class StageSupervisor(Protocol):
    """What the executor expects of a stage supervisor (speculation); it is called from the driver's
    stage loop only, and each call must cost O(attempts executing), never O(tasks in the stage)."""

    def stage_started(self, stage: StageView) -> None: ...      # after the first attempts are submitted
    def check(self, stage: StageView) -> None: ...              # after each batch of completions
    def note_result(self, partition: int, attempt: int) -> None: ...   # a partition's first result
    def stage_finished(self, stage: StageView) -> None: ...     # the stage ended (done, failed, interrupted)
    def busy_workers(self) -> set[str]: ...                     # workers no new attempt may go to
    def start_of(self, key: str) -> tuple[float, str] | None: ...   # (start time, worker) of attempt repr(key)


class StageView:
    """A supervisor's window on one running stage: what it may read, and the one thing it may do
    (:meth:`speculate`). Attempts are named by ``repr(key)``, as the workers' start events name them."""

    __slots__ = ("_executor", "_stage")

    def __init__(self, executor: StageExecutor, stage: _Stage) -> None:
        self._executor, self._stage = executor, stage

    @property
    def name(self) -> str:
        return self._stage.name

    @property
    def prefix(self) -> str:
        return self._stage.prefix

    @property
    def total(self) -> int:
        """The number of partitions (tasks) of the stage."""
        return len(self._stage.tasks)

    @property
    def results(self) -> Mapping[int, dict]:
        """The finished partitions' results, in the order they finished; read only, it only grows."""
        return self._stage.results

    def size(self, partition: int) -> int | None:
        """The estimated input bytes of a partition's task."""
        return self._stage.tasks[partition].size

    @property
    def running(self) -> int:
        """The number of running attempts (queued or executing)."""
        return len(self._stage.running)

    @property
    def speculative(self) -> int:
        """The number of running speculative attempts."""
        return self._stage.running.speculative

    def partition_of(self, key: str) -> int | None:
        """The partition of running attempt ``key``; None when it is not (or not yet) running."""
        future = self._stage.running.by_key.get(key)
        return None if future is None else self._stage.running[future][0]

    def ended(self, key: str) -> bool:
        """Whether attempt ``key`` has left (finished, failed or was cancelled)."""
        return key in self._stage.running.ended

    def attempts_of(self, partition: int) -> list[tuple[str, int]]:
        """The running attempts of a partition, ``[(key, attempt), ...]``."""
        return [(repr(f.key), info[1]) for f, info in self._stage.running.attempts_of(partition)]

    def speculate(self, partition: int, avoid: set[str]) -> int:
        """Launch a speculative attempt of ``partition`` on a worker not in ``avoid``; its attempt number.
        Raises :class:`NoFreeSlot` when the run's ``max_tasks`` attempts are running already."""
        if self._executor.free_slots(self._stage) <= 0:
            raise NoFreeSlot(f"{self._stage.name}: max_tasks={self._executor.max_tasks} attempts are running")
        return self._executor._submit(self._stage, partition, speculative=True, avoid=avoid)


class NoFreeSlot(RuntimeError):
    """A speculative attempt was asked for while the run's ``max_tasks`` attempts are running."""


# ---------------------------------------------------------------------------------------------
# The executor


@dataclass
class _Stage:
    """One stage's state while it runs."""

    name: str
    prefix: str
    kind: str
    round_index: int
    round_count: int
    describe: Callable[[int], str]
    report: StageReport
    tasks: dict[int, TaskSpec]                  # partition -> task
    specs: dict[int, str]                       # partition -> digest, for the journal
    results: dict[int, dict] = field(default_factory=dict)
    running: _Running = field(default_factory=_Running)
    attempts: dict[int, int] = field(default_factory=dict)     # partition -> attempts submitted
    failures: dict[int, int] = field(default_factory=dict)     # partition -> attempts failed
    delayed: list[tuple[float, int]] = field(default_factory=list)   # heap of (due, partition) retries
    losers: list[dict] = field(default_factory=list)
    pending: deque = field(default_factory=deque)              # partitions whose first attempt waits for a slot
    avoid: dict[int, frozenset] = field(default_factory=dict)  # partition -> workers its retry should avoid
    share: int = 1                                             # attempts of the stage that can run at once

    def where(self, partition: int) -> str:
        return (f"round {self.round_index + 1} of {self.round_count}, {self.kind} stage, partition {partition}"
                f" ({self.describe(partition)})")


class StageExecutor:
    """Runs one stage's tasks to completion: submit, watch, retry with backoff, collect results.

    A ``supervisor`` (:class:`StageSupervisor`) may watch the running attempts and launch extra ones
    (speculation); the first successful attempt of a partition is its result, later ones are
    recorded as losers.
    """

    def __init__(self, client, report: RunReport, *, progress: ProgressFn | None = None,
                 supervisor: StageSupervisor | None = None, journal: Journal | None = None, resume: bool = False,
                 shuffle_fs: Any = None, out_fs: Any = None, out: str | None = None, guards: Any = None) -> None:
        self.client = client
        self.report = report
        self.progress = progress
        self.supervisor = supervisor
        self.journal = journal
        self.resume = resume
        self.shuffle_fs, self.out_fs, self.out = shuffle_fs, out_fs, out
        if guards is None:
            from .guards import Guards
            guards = Guards.build()
        self.guards = guards          # engine.guards.Guards: retry policy, concurrency limit, budgets
        from .rejects import RunRejects
        self.rejects = RunRejects(guards, report)     # rows the winning attempts set aside
        self.session = uuid.uuid4().hex[:6]   # keys never collide with a dead driver's tasks
        self.local = bool(getattr(client, "local", False))   # the driver's threads: no graphs, no dask
        self.losers: list[dict] = []
        self._pending_uploads: set[str] | None = None
        self.max_attempts = int(config.get("retries.attempts"))
        self.backoff_base = float(config.get("retries.backoff-base"))
        self.backoff_max = float(config.get("retries.backoff-max"))
        self.policy = RetryPolicy(guards, self.max_attempts, local=self.local)
        self.max_tasks: int | None = getattr(guards, "max_tasks", None)
        self.cpu_used = 0.0           # task CPU seconds of the run's finished and failed attempts
        self._started = report.start or time.time()
        self._running_cpu = (0.0, 0)    # (CPU seconds, attempts) of running attempts when last read
        self._cpu_read_at = 0.0
        report.retry_budget = self.policy.budget
        # The scheduler's address, for the error that names it once the connection to it is lost.
        self.scheduler_address = None if self.local else getattr(getattr(client, "scheduler", None), "address", None)
        self.scheduler_timeout = scheduler_timeout()
        self._lost_since: float | None = None      # when the driver first saw the scheduler unreachable

    def run(self, name: str, prefix: str, tasks: list[TaskSpec], *, round_index: int, round_count: int,
            kind: str, describe: Callable[[int], str]) -> dict[int, dict]:
        """Run ``tasks`` (one per partition) to completion; ``{partition: result}``."""
        st = self._begin(name, prefix, tasks, round_index, round_count, kind, describe)
        self._reuse_journaled(st)
        self._show_progress(st)
        self._check_budgets(st)
        st.pending.extend(p for p in st.tasks if p not in st.results)
        st.share = self._share(len(st.pending))
        self._submit_first(st)
        view = self._hand_off(st)
        try:
            while len(st.results) < len(st.tasks):
                try:
                    self._check_budgets(st)
                    self._submit_due_retries(st)
                    self._submit_first(st)
                    if not st.running:
                        if st.delayed:      # (in short naps: the budgets are checked meanwhile)
                            time.sleep(min(0.1, max(0.0, st.delayed[0][0] - time.time())))
                            continue
                        break
                    done = st.running.next_done(timeout=0.1)
                    if not done and self._scheduler_unreachable():
                        self._await_scheduler(st)     # back: the attempts it lost arrive as cancelled
                    self._collect(st, done)
                    if view is not None and st.running and self.free_slots(st) > 0:
                        with contextlib.suppress(NoFreeSlot):
                            self.supervisor.check(view)
                except Exception as exc:
                    # A call to a scheduler that is gone (submitting a retry, fetching a result) fails with
                    # distributed's own error: say what happened instead.
                    if not isinstance(exc, EngineError) and self._scheduler_unreachable():
                        raise self._scheduler_lost(st) from exc
                    raise
            self._check_budgets(st)
        finally:
            self._stop(st, view)
        return self._finish(st)

    # -- stage set-up ------------------------------------------------------------------------
    def _begin(self, name: str, prefix: str, tasks: list[TaskSpec], round_index: int, round_count: int,
               kind: str, describe: Callable[[int], str]) -> _Stage:
        stage = StageReport(name, round_index, kind, len(tasks), time.time())
        self.report.stages.append(stage)
        by_partition = {t.partition: t for t in tasks}
        return _Stage(name, prefix, kind, round_index, round_count, describe, stage, by_partition,
                      specs={t.partition: _spec_digest(t) for t in tasks},
                      attempts={p: 0 for p in by_partition}, failures={p: 0 for p in by_partition})

    def _reuse_journaled(self, st: _Stage) -> None:
        """On resume: take the journaled results of the very same tasks (same inputs, filters, options)
        whose files are still there."""
        if not (self.resume and self.journal is not None):
            return
        for p, value in self.journal.load(st.name).items():
            if p in st.tasks and value.get("spec") == st.specs[p] \
                    and still_valid(self.shuffle_fs, self.out_fs, value, self._uploads()):
                st.results[p] = value
        for value in st.results.values():      # the stage's figures cover what resumed tasks did too
            _count(st.report, value)
            self.rejects.note(value)
            counters.add_result(self.report.counters, value)      # (and the counts of their attempts)
        if st.results:
            log.info("%s: resumed %d of %d task(s) from the journal", st.name, len(st.results), len(st.tasks))
            self.report.retries.append({"stage": st.name, "resumed": sorted(st.results)})
            st.report.resumed = len(st.results)

    def _submit_first(self, st: _Stage) -> None:
        """First attempts go to the scheduler in one graph, so it queues them (worker-saturation) instead
        of placing a growing task group one task at a time onto workers, where they wait behind stragglers.
        Under ``max_tasks``, as many as there are free slots: called again as attempts end, it refills."""
        free = self.free_slots(st)
        if not st.pending or free <= 0:
            return
        first = [st.pending.popleft() for _ in range(min(free, len(st.pending)))]
        first = [p for p in first if p not in st.results]
        if not first:
            return
        if self.local:
            now = time.time()
            for p in first:
                future = self.client.submit(task_key(st.prefix, p, st.attempts[p]), self._attempt_spec(st, p))
                st.running[future] = (p, st.attempts[p], now, False)
                st.attempts[p] += 1
                st.report.attempts += 1
            return
        dsk: dict = {}
        for p in first:
            dsk.update(self._attempt_spec(st, p).graph(st.prefix, st.attempts[p], {}))
        futures = self.client.get(_named_graph(dsk), list(dsk), sync=False, **self._placement(set(), strict=False))
        now = time.time()
        for p, future in zip(first, futures):
            st.running[future] = (p, st.attempts[p], now, False)
            st.attempts[p] += 1
            st.report.attempts += 1

    def _hand_off(self, st: _Stage) -> StageView | None:
        """Start the supervisor's watch over this stage (its first attempts run already)."""
        if self.supervisor is None:
            return None
        view = StageView(self, st)
        self.supervisor.stage_started(view)
        return view

    # -- submitting --------------------------------------------------------------------------
    def free_slots(self, st: _Stage) -> int | float:
        """How many more attempts may start now under ``max_tasks`` (unbounded without it)."""
        if self.max_tasks is None:
            return math.inf
        return self.max_tasks - len(st.running)

    def _share(self, tasks: int) -> int:
        """How many of a stage's ``tasks`` attempts can run at once: min(tasks, cluster threads, max_tasks)."""
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            threads = sum(int(w.get("nthreads") or 1) for w in workers.values()) or 1
        except Exception:  # noqa: BLE001 - then the tasks alone bound it
            threads = tasks
        return max(1, min(tasks, threads, self.max_tasks or tasks))

    def _attempt_spec(self, st: _Stage, partition: int) -> TaskSpec:
        """The partition's task as an attempt runs it: inside :func:`engine.attempts.run_attempt`."""
        task = st.tasks[partition]
        return TaskSpec(task.partition, functools.partial(run_attempt, task.func, st.share, tag=self.session),
                        task.args, task.size)

    def _submit(self, st: _Stage, partition: int, speculative: bool = False, avoid: set[str] | None = None,
                strict: bool = True) -> int:
        """Submit one more attempt of ``partition`` under a new key; its attempt number. ``avoid``: workers
        it must not go to (``strict``) or, if others are alive, should not."""
        attempt = st.attempts[partition]
        st.attempts[partition] += 1
        if self.local:
            future = self.client.submit(task_key(st.prefix, partition, attempt), self._attempt_spec(st, partition))
            st.running[future] = (partition, attempt, time.time(), speculative)
            st.report.attempts += 1
            st.report.speculative += bool(speculative)
            return attempt
        dsk = self._attempt_spec(st, partition).graph(st.prefix, attempt, {})
        placement = self._placement(set(avoid or ()), strict=strict)
        if speculative:
            placement["priority"] = 10      # ahead of the stage's queued first attempts
        (future,) = self.client.get(dsk, list(dsk), sync=False, **placement)
        st.running[future] = (partition, attempt, time.time(), speculative)
        st.report.attempts += 1
        if speculative:
            st.report.speculative += 1
        return attempt

    def _submit_due_retries(self, st: _Stage) -> None:
        """Submit the retries whose backoff is over (as many as there are free slots), each preferably
        away from the worker its last attempt failed on."""
        now = time.time()
        while st.delayed and st.delayed[0][0] <= now and self.free_slots(st) > 0:
            _, p = heapq.heappop(st.delayed)
            if p not in st.results:
                self._submit(st, p, avoid=st.avoid.pop(p, None), strict=False)

    # -- collecting --------------------------------------------------------------------------
    def _collect(self, st: _Stage, done: list) -> None:
        """Handle the attempts that completed together (their results fetched in one request)."""
        values = self._gather(done)
        for future in done:
            partition, attempt, submitted, speculative = st.running.pop(future)
            if future.status == "finished":
                value = values[future] if future in values else future.result()
                future.release()
                self._on_result(st, partition, attempt, value, speculative)
            else:
                self._on_failure(st, future, partition, attempt, submitted, speculative)

    def _on_result(self, st: _Stage, partition: int, attempt: int, value: dict, speculative: bool) -> None:
        """A finished attempt: the partition's result if it is the first, else a loser."""
        if value.get("input_bytes") is None:
            value["input_bytes"] = st.tasks[partition].size
        self._record(st.report, value, speculative)
        if self.supervisor is not None and partition not in st.results:
            self.supervisor.note_result(partition, attempt)
        if partition in st.results:
            st.losers.append(value)
            self.report.tasks[-1].status = "lost"
            return
        st.results[partition] = value
        value["spec"] = st.specs[partition]
        if self.journal is not None:
            self.journal.record(st.name, partition, value)
        _count(st.report, value)
        self._cancel_siblings(st, partition)
        self.rejects.note(value)
        counters.add_result(self.report.counters, value)     # the winner's counts only (engine.counters)
        self._show_progress(st)

    def _show_progress(self, st: _Stage) -> None:
        if self.progress is None:
            return
        update = getattr(self.progress, "update", None)
        if callable(update):     # engine.progress.Progress: the rows too
            update(st.name, len(st.results), len(st.tasks), rows=int(getattr(st.report, "rows_in", 0) or 0))
        elif len(st.results):
            self.progress(st.name, len(st.results), len(st.tasks))

    def _gather(self, done: list) -> dict:
        """The results of the finished futures among ``done``, fetched in one request (a future whose
        result cannot be fetched this way is left out; the caller asks it alone and sees its error)."""
        finished = [f for f in done if f.status == "finished"]
        if not finished:
            return {}
        try:
            return dict(zip(finished, self.client.gather(finished)))
        except Exception:  # noqa: BLE001 - a lost result: fetched, and failed, one by one by the caller
            return {}

    def _record(self, stage: StageReport, value: dict, speculative: bool) -> None:
        self.cpu_used += float(value.get("cpu") or 0.0)
        self.report.tasks.append(TaskReport(
            stage.name, value.get("partition", -1), value.get("attempt", 0), value.get("worker", "?"),
            value.get("start", 0.0), value.get("stop", 0.0), int(value.get("rows_in") or 0),
            int(value.get("rows_out") or 0), int(value.get("bytes_out") or 0), speculative=speculative,
            cpu=float(value.get("cpu") or 0.0), spills=int(value.get("spills") or 0)))

    def _cancel_siblings(self, st: _Stage, partition: int) -> None:
        """Cancel the other attempts of a finished partition; the report keeps them as "cancelled".

        Only that partition's attempts are looked at (running attempts are indexed by partition), so
        the driver's work per finished task does not grow with the number of tasks still running."""
        for future, (p, attempt, submitted, speculative) in st.running.attempts_of(partition):
            if not future.done():   # a finished one is handled as a loser
                future.cancel()
                started, worker = submitted, "?"
                if self.supervisor is not None:
                    started, worker = self.supervisor.start_of(repr(future.key)) or (submitted, "?")
                self.report.tasks.append(TaskReport(st.report.name, p, attempt, worker, started, time.time(),
                                                    status="cancelled", speculative=speculative))

    # -- failures and retries ----------------------------------------------------------------
    def _on_failure(self, st: _Stage, future, partition: int, attempt: int, submitted: float,
                    speculative: bool) -> None:
        """A failed or cancelled attempt: nothing if the partition is done or another attempt of it still
        runs; else the retry policy decides: the stage fails (a deterministic error, out of attempts, the
        run's retry budget spent) or the task is retried after backoff."""
        if future.status == "cancelled" and partition not in st.results and self._scheduler_unreachable():
            # The client lost its scheduler and cancelled every future: no failure of the task. Wait (a
            # bounded time) for the scheduler to come back, then run the attempt again.
            future.release()
            self._await_scheduler(st)
            if not st.running.attempts_of(partition):
                self._submit(st, partition)
            return
        if future.status == "cancelled":
            # The driver cancels only siblings of a finished partition, so the cluster dropped this one
            # (e.g. a dependency was lost with a dead worker): retry it, never skip it.
            exc = ClusterError(f"the cluster cancelled task {future.key!r}")
        elif partition in st.results:
            future.release()
            return
        else:
            exc = attempts.unwrap(future.exception())      # (one that travelled in a carrier: the original)
        future.release()
        info = getattr(exc, "engine_attempt", None)
        if info is not None:
            self.cpu_used += float(getattr(info, "cpu", 0.0) or 0.0)
        if partition in st.results or st.running.attempts_of(partition):
            return  # the partition is done, or another attempt of it is still running
        st.failures[partition] += 1
        error = redact(attempts.describe(exc))
        worker, start, stop = "?", submitted, time.time()
        if info is not None:
            worker, start, stop = info.worker, info.start, info.stop
        elif self.supervisor is not None:
            start, worker = self.supervisor.start_of(repr(future.key)) or (submitted, "?")
        self.report.tasks.append(TaskReport(st.name, partition, attempt, worker, start, stop, status="failed",
                                            speculative=speculative, error=error,
                                            cpu=float(getattr(info, "cpu", 0.0) or 0.0)))
        decision = self.policy.decide((st.name, partition), exc, st.failures[partition],
                                      permanent=_is_permanent(exc))
        self._note_retries()
        if not decision.retry:
            raise self._stage_failed(st, partition, exc, error, decision.reason, budget=decision.budget) from exc
        if decision.avoid and is_user_error(exc):
            st.avoid[partition] = decision.avoid
        self._retry_later(st, partition, attempt, error)
        # the exception itself, for the run's record to name the user's file and line of each retry
        retried = self.report.__dict__.setdefault("retry_exceptions", [])
        if len(retried) < 100:
            retried.append((self.report.retries[-1], exc))

    # -- a lost scheduler ---------------------------------------------------------------------
    def _scheduler_unreachable(self) -> bool:
        """Whether the client has lost its scheduler (reconnecting, or given up and closed)."""
        return not self.local and getattr(self.client, "status", "running") in ("connecting", "closing", "closed")

    def _await_scheduler(self, st: _Stage) -> None:
        """Wait until the client is connected to its scheduler again, at most ``engine.cluster.scheduler-timeout``
        seconds after the loss was first seen; ClusterError naming the scheduler when it does not come back."""
        if self._lost_since is None:
            self._lost_since = time.time()
            log.warning("lost the connection to the scheduler at %s during %s; waiting up to %gs for it",
                        self.scheduler_address, st.name, self.scheduler_timeout)
        deadline = self._lost_since + self.scheduler_timeout
        while getattr(self.client, "status", "running") == "connecting" and time.time() < deadline:
            time.sleep(0.05)
        if getattr(self.client, "status", "running") == "running":
            log.warning("reconnected to the scheduler at %s after %.1fs; resubmitting the lost attempts of %s",
                        self.scheduler_address, time.time() - self._lost_since, st.name)
            self._lost_since = None
            return
        raise self._scheduler_lost(st)

    def _scheduler_lost(self, st: _Stage) -> ClusterError:
        waited = time.time() - self._lost_since if self._lost_since is not None else 0.0
        done = len(st.results)
        return ClusterError(
            f"lost the connection to the scheduler at {self.scheduler_address} during {st.name} (round "
            f"{st.round_index + 1} of {st.round_count}, {done} of {len(st.tasks)} task(s) done) and it did not come "
            f"back within {max(waited, 0.0):.1f}s (engine.cluster.scheduler-timeout={self.scheduler_timeout:g}s); "
            "nothing was committed. Start the scheduler and its workers again, then rerun with resume=True: the "
            "tasks that finished are reused from the journal")

    def _note_retries(self) -> None:
        """The run's M10 figures, in the report as they change."""
        figures = self.policy.figures()
        self.report.failures = figures["failures"]
        self.report.retries_spent = figures["retries_spent"]

    def _stage_failed(self, st: _Stage, partition: int, exc: BaseException, error: str, reason: str = "",
                      budget: bool = False) -> StageFailedError:
        """The error that fails the stage (a deterministic failure, the partition is out of attempts, or
        the run's retry budget is spent), with the policy's reason."""
        if isinstance(exc, TooManyRejectedError):     # the run's own limit, raised in a task: as it is
            redact_exception(exc)
            return exc
        tries = st.failures[partition]
        msg = f"{st.where(partition)} failed" + (f" after {tries} attempts" if tries > 1 else "") + f": {error}"
        if budget:
            msg = (f"{reason}: {msg} (the run spent {self.policy.spent} retries in all; raise retry_budget= "
                   "or find why tasks fail)")
        elif reason:
            msg += f"; {reason}"
        err = StageFailedError(redact(msg), round=st.round_index, stage=st.kind, partition=partition, cause=exc)
        redact_exception(exc)
        return err

    def _retry_later(self, st: _Stage, partition: int, attempt: int, error: str) -> None:
        """Schedule a retry after capped exponential backoff with full jitter."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** (st.failures[partition] - 1))
        delay = random.uniform(0, delay)
        self.report.retries.append({"stage": st.name, "partition": partition, "attempt": attempt,
                                    "error": error, "backoff": round(delay, 3)})
        st.report.retries += 1
        log.warning("%s failed (%s); retrying in %.2fs", st.where(partition), error, delay)
        heapq.heappush(st.delayed, (time.time() + delay, partition))

    # -- budgets -----------------------------------------------------------------------------
    def _check_budgets(self, st: _Stage) -> None:
        """Past ``max_seconds`` (since the run started) or ``max_cpu_seconds`` (of its attempts so far,
        running ones included): :class:`BudgetExceededError` (the caller's ``finally`` cancels what still runs)."""
        g = self.guards
        limit = getattr(g, "max_seconds", None)
        if limit is not None:
            used = time.time() - self._started
            if used > limit:
                raise self._over_budget(st, "max_seconds", "wall-clock", used, limit)
        limit = getattr(g, "max_cpu_seconds", None)
        if limit is not None:
            used = self.cpu_used + self._running_cpu_now(st)
            if used > limit:
                raise self._over_budget(st, "max_cpu_seconds", "task CPU", used, limit)

    def _running_cpu_now(self, st: _Stage) -> float:
        """The CPU seconds the run's running attempts have used so far: read from their threads here
        (the driver's pool), or asked of every worker at most every ``_CPU_POLL`` seconds."""
        if self.local:
            return attempts.running_cpu(self.session)[0]
        now = time.time()
        if not st.running:
            return 0.0
        if now - self._cpu_read_at >= _CPU_POLL and not self._scheduler_unreachable():
            self._cpu_read_at = now
            try:
                answers = self.client.run(attempts.running_cpu, self.session, on_error="ignore")
                self._running_cpu = (sum(float(a[0]) for a in answers.values()),
                                     sum(int(a[1]) for a in answers.values()))
            except Exception as exc:  # noqa: BLE001 - then the last reading stands
                log.debug("could not read the running attempts' CPU from the workers: %s", exc)
        return self._running_cpu[0]

    def _over_budget(self, st: _Stage, name: str, what: str, used: float, limit: float) -> BudgetExceededError:
        running = len(st.running)
        log.info("%s budget %s=%gs spent (%.2fs): stopping the run", what, name, limit, used)
        stopped = f"its {running} running attempt(s) were cancelled" if running else "no attempt was running"
        return BudgetExceededError(
            f"the run went past its {what} budget: {name}={limit:g}s, {used:.2f}s used, while running round "
            f"{st.round_index + 1} of {st.round_count}, {st.kind} stage {st.name} ({len(st.results)} of "
            f"{len(st.tasks)} tasks done); {stopped} and nothing was committed (raise {name}= to let it finish)",
            budget=name, used=round(used, 3), limit=limit)

    # -- stage end ---------------------------------------------------------------------------
    def _stop(self, st: _Stage, view: StageView | None) -> None:
        """Cancel what still runs (the stage is done, failed or interrupted) and end the supervisor's watch."""
        for future in list(st.running):
            future.cancel()
            future.release()
        if view is not None:
            self.supervisor.stage_finished(view)

    def _finish(self, st: _Stage) -> dict[int, dict]:
        missing = sorted(set(st.tasks) - set(st.results))
        if missing:
            raise StageFailedError(f"round {st.round_index + 1} of {st.round_count}, {st.kind} stage: partition(s) "
                                   f"{missing} never finished", round=st.round_index, stage=st.kind,
                                   partition=missing[0])
        st.report.stop = time.time()
        self.report.note_combine(st.report, st.results)
        self.losers.extend(st.losers)
        read = sum(s.input_rows for s in self.report.stages)
        if read:
            self.rejects.input_rows = read       # a fraction's limit is known once the input has been read
            self.rejects.check()
        return st.results

    # -- placement and the journal -----------------------------------------------------------
    def _placement(self, avoid: set[str], *, strict: bool) -> dict[str, Any]:
        """Worker restrictions for a submission: never ``avoid`` (``strict``) or preferably not, and never
        a worker that a cancelled attempt still holds (the supervisor's ``busy_workers``; without a
        nanny it cannot be restarted, and tasks sent there would queue behind the zombie)."""
        if self.supervisor is not None:
            avoid = avoid | self.supervisor.busy_workers()
        if not avoid:
            return {}
        others = [w for w in self.client.scheduler_info(n_workers=-1).get("workers", {}) if w not in avoid]
        return {"workers": others, "allow_other_workers": not strict} if others else {}

    def _uploads(self) -> set[str] | None:
        if self._pending_uploads is None and self.out_fs is not None and commit.is_s3(self.out_fs):
            try:
                self._pending_uploads = {upload for _, upload, _ in commit.pending_uploads(self.out_fs, self.out)}
            except Exception:  # noqa: BLE001 - then no journaled upload is trusted
                self._pending_uploads = set()
        return self._pending_uploads


def within_budgets(guards: Any, started: float, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` (the driver's own work before any task: checking the job on a sample of the input) within
    the run's budgets: ``max_seconds`` counted from ``started``, and ``max_cpu_seconds`` for the CPU that
    ``fn``'s thread uses. Past one, :class:`BudgetExceededError` (``fn`` goes on in a daemon thread,
    unseen, as a cancelled attempt in the driver's pool does). Without either budget, ``fn()`` here."""
    wall = getattr(guards, "max_seconds", None)
    cpu = getattr(guards, "max_cpu_seconds", None)
    if wall is None and cpu is None:
        return fn()

    def over(name: str, kind: str, used: float, limit: float) -> BudgetExceededError:
        log.info("%s budget %s=%gs spent (%.2fs): stopping the run", kind, name, limit, used)
        return BudgetExceededError(
            f"the run went past its {kind} budget: {name}={limit:g}s, {used:.2f}s used, while {what} (before any "
            f"task ran); nothing was committed (raise {name}= to let it finish)",
            budget=name, used=round(used, 3), limit=limit)
    if wall is not None and time.time() - started > wall:
        raise over("max_seconds", "wall-clock", time.time() - started, wall)
    import contextvars
    outcome: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def work() -> None:
        outcome["clock"] = attempts.thread_cpu_clock()
        outcome["cpu0"] = time.thread_time()
        try:
            outcome["value"] = context.run(fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()
    threading.Thread(target=work, name="engine-driver-check", daemon=True).start()
    while True:
        step = 0.05 if cpu is not None else 1.0
        if wall is not None:
            step = min(step, max(0.0, wall - (time.time() - started)) + 0.01)
        finished = done.wait(step)
        if wall is not None and time.time() - started > wall and not finished:
            raise over("max_seconds", "wall-clock", time.time() - started, wall)
        clock = outcome.get("clock")
        if cpu is not None and clock is not None:
            with contextlib.suppress(OSError):
                used = time.clock_gettime(clock) - outcome["cpu0"]
                if used > cpu:
                    raise over("max_cpu_seconds", "CPU", used, cpu)
        if finished:
            break
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome.get("value")


__all__ = ["StageExecutor", "StageSupervisor", "StageView", "NoFreeSlot", "ProgressFn", "redact_exception",
           "within_budgets"]
