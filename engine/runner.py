"""One run: snapshot → plan → execute stage by stage on distributed → commit → report.

The driver runs each stage as a graph of attempt-keyed tasks, waits for it, and only then decides
the next stage from what the finished tasks reported (number of reducers, coalescing, range
boundaries). Failed tasks are retried by the driver with capped exponential backoff and full
jitter, each retry under a new key; deterministic errors (bad schema, unreadable input) fail the
run at once with a message naming the round, stage and partition.

Every error string the driver keeps or passes on (task errors in the report, retry log lines,
``StageFailedError`` messages, the manifest's decisions) goes through :func:`engine.redact.redact`;
``redact`` is re-exported here under its old name.

The stage loop costs the driver O(1) per task event: running attempts are indexed by partition and
key, completions arrive through a queue (no wait on, or scan of, every running future), and the
results of the tasks that finished together are fetched in one request.

The job's serialized functions travel inside each task (a large payload as one checked file beside
the shuffle files), never as a future every task depends on: the scheduler places tasks next to
their dependencies, so equal tasks would crowd onto the worker that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import os
import posixpath
import queue
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from . import commit, config, serialize, shuffle, skew
from ._version import ENGINE_VERSION
from .cluster import ClusterInfo, get_client
from .compile import TaskSpec, stage_prefix
from .datasets import InputSpec, Split, filesystem, is_local, resolve_input, sample_table
from .errors import (ClusterError, CommitError, EngineError, InputError, JobDefinitionError,
                     OutputExistsError, SchemaError, ShuffleLocationError, StageFailedError)
from .faults import Faults
from .fence import RunFence
from .job import Job
from .journal import Journal, still_valid
from .lock import output_lock
from .plan import Plan, build_plan, validate_on_sample
from .redact import install as _install_redaction, public_decisions, redact, redact_obj
from .redact import remember as _remember_secrets
from .report import RunReport, StageReport, TaskReport
from .tasks import PayloadRef, TaskContext, run_map, run_partial, run_reduce

log = logging.getLogger("engine")
_install_redaction("engine")     # every record of the "engine" logger is redacted (engine.redact)

ProgressFn = Callable[[str, int, int], None]


@dataclass
class RunResult:
    """What :func:`run` returns: where the output is, whether this run wrote it, and its report."""

    output: str
    run_id: str
    report: RunReport
    skipped: bool = False
    manifest: commit.Manifest | None = None
    storage_options: dict | None = field(default=None, repr=False)

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
# Stage execution with retries


_PERMANENT = (SchemaError, InputError, JobDefinitionError, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _is_permanent(exc: BaseException) -> bool:
    """Deterministic failures, never retried: the job's or the input's errors, Arrow's type errors (no
    kernel or cast for these types), and Arrow errors a task marked as raised while *computing* (user
    functions, aggregations, casts: ``engine_deterministic``). An ``ArrowInvalid`` raised while reading
    bytes (a short read of a shuffle file from an object store) is retried."""
    return isinstance(exc, _PERMANENT) or bool(getattr(exc, "engine_deterministic", False))


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
            # One hop to the client's event loop for all futures added since the last call (a callback
            # per future would wake the loop once per task).
            futures, self._unwatched = self._unwatched, []
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


class StageExecutor:
    """Runs one stage's tasks to completion: submit, watch, retry with backoff, collect results.

    ``hooks`` may watch the running attempts and launch extra ones (speculation); the first
    successful attempt of a partition is its result, later ones are recorded as losers.
    """

    def __init__(self, client, report: RunReport, *, progress: ProgressFn | None = None,
                 supervisor: Any = None, journal: Journal | None = None, resume: bool = False,
                 shuffle_fs: Any = None, out_fs: Any = None, out: str | None = None) -> None:
        self.client = client
        self.report = report
        self.progress = progress
        self.supervisor = supervisor
        self.journal = journal
        self.resume = resume
        self.shuffle_fs, self.out_fs, self.out = shuffle_fs, out_fs, out
        self.session = uuid.uuid4().hex[:6]   # keys never collide with a dead driver's tasks
        self.losers: list[dict] = []
        self._pending_uploads: set[str] | None = None
        self.max_attempts = int(config.get("retries.attempts"))
        self.backoff_base = float(config.get("retries.backoff-base"))
        self.backoff_max = float(config.get("retries.backoff-max"))

    def run(self, name: str, prefix: str, tasks: list[TaskSpec], *, round_index: int, round_count: int,
            kind: str, describe: Callable[[int], str]) -> dict[int, dict]:
        stage = StageReport(name, round_index, kind, len(tasks), time.time())
        self.report.stages.append(stage)
        by_partition = {t.partition: t for t in tasks}
        sizes = {t.partition: t.size for t in tasks}
        results: dict[int, dict] = {}
        running = _Running()  # future -> (partition, attempt, submitted, speculative), indexed by partition
        attempts: dict[int, int] = {p: 0 for p in by_partition}
        failures: dict[int, int] = {p: 0 for p in by_partition}
        delayed: list[tuple[float, int]] = []
        losers: list[dict] = []
        specs = {t.partition: _spec_digest(t) for t in tasks}
        if self.resume and self.journal is not None:
            for p, value in self.journal.load(name).items():
                # reuse a journaled result only for the very same task (same inputs, filters, options)
                if p in by_partition and value.get("spec") == specs[p] \
                        and still_valid(self.shuffle_fs, self.out_fs, value, self._uploads()):
                    results[p] = value
            if results:
                log.info("%s: resumed %d of %d task(s) from the journal", name, len(results), len(tasks))
                self.report.retries.append({"stage": name, "resumed": sorted(results)})
                stage.resumed = len(results)

        def submit(partition: int, speculative: bool = False, avoid: set[str] | None = None) -> int:
            attempt = attempts[partition]
            attempts[partition] += 1
            dsk = by_partition[partition].graph(prefix, attempt, {})
            placement = self._placement(avoid or set(), strict=True)
            if speculative:
                placement["priority"] = 10      # ahead of the stage's queued first attempts
            (future,) = self.client.get(dsk, list(dsk), sync=False, **placement)
            running[future] = (partition, attempt, time.time(), speculative)
            stage.attempts += 1
            if speculative:
                stage.speculative += 1
            return attempt

        # First attempts go to the scheduler in one graph, so it queues them (worker-saturation) instead of
        # placing a growing task group one task at a time onto workers, where they wait behind stragglers.
        first = [p for p in by_partition if p not in results]
        if first:
            dsk: dict = {}
            for p in first:
                dsk.update(by_partition[p].graph(prefix, attempts[p], {}))
            futures = self.client.get(_named_graph(dsk), list(dsk), sync=False,
                                      **self._placement(set(), strict=False))
            now = time.time()
            for p, future in zip(first, futures):
                running[future] = (p, attempts[p], now, False)
                attempts[p] += 1
                stage.attempts += 1
        if self.supervisor is not None:
            self.supervisor.stage_started(self, name, prefix, len(tasks))
        try:
            while len(results) < len(tasks):
                now = time.time()
                while delayed and delayed[0][0] <= now:
                    _, p = heapq.heappop(delayed)
                    if p not in results:
                        submit(p)
                if not running:
                    if delayed:
                        time.sleep(max(0.0, delayed[0][0] - time.time()))
                        continue
                    break
                done = running.next_done(timeout=0.1)
                values = self._gather(done)
                for future in done:
                    partition, attempt, submitted, speculative = running.pop(future)
                    if future.status == "finished":
                        value = values[future] if future in values else future.result()
                        future.release()
                        if value.get("input_bytes") is None:
                            value["input_bytes"] = by_partition[partition].size
                        self._record(stage, value, speculative)
                        if self.supervisor is not None and partition not in results:
                            self.supervisor.note_result(partition, attempt)
                        if partition in results:
                            losers.append(value)
                            self.report.tasks[-1].status = "lost"
                            continue
                        results[partition] = value
                        value["spec"] = specs[partition]
                        if self.journal is not None:
                            self.journal.record(name, partition, value)
                        stage.rows_in += int(value.get("rows_in") or 0)
                        stage.rows_out += int(value.get("rows_out") or 0)
                        stage.bytes_out += int(value.get("bytes_out") or 0)
                        self._cancel_siblings(stage, running, partition)
                        if self.progress is not None:
                            self.progress(name, len(results), len(tasks))
                        continue
                    if partition in results:
                        future.release()
                        continue
                    if future.status == "cancelled":
                        # The driver cancels only siblings of a finished partition, so the cluster dropped
                        # this one (e.g. a dependency was lost with a dead worker): retry it, never skip it.
                        exc = ClusterError(f"the cluster cancelled task {future.key!r}")
                    else:
                        exc = future.exception()
                    future.release()
                    if running.attempts_of(partition):
                        continue  # another attempt of this partition is still running
                    failures[partition] += 1
                    error = redact(f"{type(exc).__name__}: {exc}")
                    self.report.tasks.append(TaskReport(name, partition, attempt, "?", submitted, time.time(),
                                                        status="failed", speculative=speculative, error=error))
                    where = (f"round {round_index + 1} of {round_count}, {kind} stage, partition {partition}"
                             f" ({describe(partition)})")
                    if _is_permanent(exc) or failures[partition] >= self.max_attempts:
                        tries = failures[partition]
                        msg = redact(f"{where} failed" + (f" after {tries} attempts" if tries > 1 else "")
                                     + f": {error}")
                        err = StageFailedError(msg, round=round_index, stage=kind, partition=partition, cause=exc)
                        _redact_exception(exc)
                        raise err from exc
                    delay = min(self.backoff_max, self.backoff_base * 2 ** (failures[partition] - 1))
                    delay = random.uniform(0, delay)
                    self.report.retries.append({"stage": name, "partition": partition, "attempt": attempt,
                                                "error": error, "backoff": round(delay, 3)})
                    stage.retries += 1
                    log.warning("%s failed (%s); retrying in %.2fs", where, error, delay)
                    heapq.heappush(delayed, (time.time() + delay, partition))
                if self.supervisor is not None and running:
                    self.supervisor.check(self, running, results, submit, sizes)
        finally:
            for future in list(running):
                future.cancel()
                future.release()
            if self.supervisor is not None:
                self.supervisor.stage_finished(self, name)
        missing = sorted(set(by_partition) - set(results))
        if missing:
            raise StageFailedError(f"round {round_index + 1} of {round_count}, {kind} stage: partition(s) {missing} "
                                   "never finished", round=round_index, stage=kind, partition=missing[0])
        stage.stop = time.time()
        self.losers.extend(losers)
        return results

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
            bucket, _, prefix = self.out.partition("/")
            try:
                listing = self.out_fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
                self._pending_uploads = {u["UploadId"] for u in listing.get("Uploads", [])}
            except Exception:  # noqa: BLE001 - then no journaled upload is trusted
                self._pending_uploads = set()
        return self._pending_uploads

    def _record(self, stage: StageReport, value: dict, speculative: bool) -> None:
        self.report.tasks.append(TaskReport(
            stage.name, value.get("partition", -1), value.get("attempt", 0), value.get("worker", "?"),
            value.get("start", 0.0), value.get("stop", 0.0), int(value.get("rows_in") or 0),
            int(value.get("rows_out") or 0), int(value.get("bytes_out") or 0), speculative=speculative))

    def _cancel_siblings(self, stage: StageReport, running: dict, partition: int) -> None:
        """Cancel the other attempts of a finished partition; the report keeps them as "cancelled".

        Only that partition's attempts are looked at (``running`` is indexed by partition), so the
        driver's work per finished task does not grow with the number of tasks still running."""
        for future, (p, attempt, submitted, speculative) in running.attempts_of(partition):
            if not future.done():   # a finished one is handled as a loser
                future.cancel()
                started, worker = submitted, "?"
                if self.supervisor is not None:
                    started, worker = self.supervisor.starts.get(repr(future.key), (submitted, "?"))
                self.report.tasks.append(TaskReport(stage.name, p, attempt, worker, started, time.time(),
                                                    status="cancelled", speculative=speculative))


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
        return (x.kind, x.keys, x.descending, x.num_partitions, x.map_combine, x.columns, x.round)
    return type(x).__name__


def _spec_digest(task: TaskSpec) -> str:
    """What a journaled result must match to be reused by a resumed run."""
    text = repr((task.func.__name__, task.partition, _canonical(task.args)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The run


def _snapshot_digest(spec: InputSpec) -> str:
    h = hashlib.sha256()
    for f in spec.snapshot:
        h.update(json.dumps(f, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _fused_rounds(plan: Plan) -> list:
    """The rounds that run as stages: a trailing map-only round is fused into the reduce before it.

    Its maps then run inside the previous round's reduce tasks, on each output chunk before it is
    written (the same rows, partition by partition, without a stage of its own).
    """
    rounds = list(plan.rounds)
    if len(rounds) >= 2 and rounds[-1].kind == "map":
        rounds = rounds[:-1]
    return rounds


def _payload(plan: Plan) -> bytes:
    rounds = []
    for r in plan.rounds:
        rounds.append({
            "maps": [m.fn for m in r.maps],
            "combine": r.combine.fn if r.combine is not None else None,
            "reduce": r.reduce.fn if (r.reduce is not None and r.reduce.aggs is None) else None,
            "aggs": r.aggregations,
            "post": [],
        })
    if len(_fused_rounds(plan)) < len(rounds):
        rounds[-2]["post"] = rounds[-1]["maps"]
    return serialize.dumps(rounds)


def run(job: Job, input: Any, output: str, cluster: Any = None, storage_options: dict | None = None,
        mode: str = "error", speculation: bool = True, skew: bool = True, shuffle_dir: str | None = None,
        partition_size: int | str | None = None, force: bool = False, report: str | None = None, *,
        format: str | None = None, resume: bool = False, progress: ProgressFn | None = None,
        faults: Any = None, map_combine: bool | None = None) -> RunResult:
    """Run ``job`` over ``input`` and commit its output to ``output`` atomically.

    >>> import engine
    >>> result = engine.run(wc, "data/text/", "out/wc")          # doctest: +SKIP
    >>> result.report.summary()                                    # doctest: +SKIP

    ``cluster``: None (embedded LocalCluster), a scheduler address, or a ``distributed.Client``.
    ``mode``: "error" refuses committed output, "overwrite" replaces it (the old output stays readable
    until the new one commits), "append" adds the new files to it. A rerun of the same job on the same
    input snapshot over its own committed output is a no-op unless ``force=True``.
    ``map_combine=False`` ships map output uncombined (the reducers combine it; for tuning and tests;
    default ``engine.shuffle.map-combine``).
    """
    started = time.time()
    _remember_secrets(storage_options)      # redacted from logs, reports, history and errors from now on
    if mode not in ("error", "overwrite", "append"):
        raise CommitError(f"mode must be 'error', 'overwrite' or 'append', got {mode!r}")
    if not isinstance(job, Job):
        raise JobDefinitionError(f"run() expects an engine.Job, got {type(job).__name__}")
    out_fs, out = filesystem(output, storage_options)
    spec = resolve_input(input, storage_options, format=format)
    plan = build_plan(job, spec, partition_size)
    fingerprint = plan.fingerprint
    snapshot = _snapshot_digest(spec)
    # Same job + same input snapshot → same run id, so an interrupted run can be resumed.
    run_id = hashlib.sha256(f"{fingerprint}:{snapshot}".encode()).hexdigest()[:16]
    if force:
        run_id = f"{run_id[:8]}{uuid.uuid4().hex[:8]}"
    if faults is None:
        faults = Faults.from_env()
    rep = RunReport(job.name, run_id, fingerprint, start=started, input_files=len(spec.snapshot),
                    input_bytes=spec.total_bytes, output=output)

    previous = commit.check_output(out_fs, out, mode)
    if previous is not None and not force and previous.doc.get("fingerprint") == fingerprint \
            and previous.doc.get("input", {}).get("digest") == snapshot:
        rep.status, rep.stop, rep.run_id = "skipped", time.time(), previous.doc["run_id"]
        rep.message = (f"{output} already holds this job's output for this input snapshot (run "
                       f"{previous.doc['run_id']}); nothing to do. Pass force=True to recompute.")
        rep.output_rows = previous.rows
        rep.output_files = len(previous.files)
        log.info(rep.message)
        _record_history(rep)
        return RunResult(output, previous.doc["run_id"], rep, True, previous, storage_options)
    if previous is not None and mode == "error":
        raise OutputExistsError(f"{output} already holds committed output (job {previous.doc.get('job')!r}, run "
                                f"{previous.doc.get('run_id')}); pass mode='overwrite' to replace it or "
                                "mode='append' to add to it")

    try:
        validate_on_sample(plan, sample_table(spec.fs, spec))
    except EngineError as exc:      # the user's function failed in the driver: its message may quote secrets
        _redact_exception(exc)
        raise

    protocols = {spec.protocol, _protocol(out_fs)}
    in_process = "memory" in protocols
    client, info = get_client(cluster, in_process=in_process)
    if in_process and not info.in_process:
        raise ClusterError("memory:// data lives in one process, but the cluster's workers are other processes; "
                           "use a local path or an object store, or run with cluster=None")
    rep.cluster = {"workers": info.workers, "threads": info.threads, "embedded": info.embedded,
                   "dashboard": info.dashboard}
    _check_reachability(info, spec, out_fs, shuffle_dir)

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
        shuffle_fs, shuffle_root, cleanup = _shuffle_location(shuffle_dir, storage_options, run_id, out_fs, out,
                                                              info)
        # Loaded entries may name only this run's own files (engine.journal.check_paths).
        journal = Journal(out_fs, posixpath.join(commit.temporary_dir(out, run_id), "journal"), run_id=run_id,
                          out=out, shuffle_root=shuffle_root, s3=commit.is_s3(out_fs))
        blob = _payload(plan)
        shipped = _ship_payload(blob, shuffle_fs, shuffle_root)
        supervisor = None
        if speculation and config.get("speculation.enabled"):
            try:
                from .speculation import Supervisor
                supervisor = Supervisor.from_config(client, rep)
            except ImportError:
                supervisor = None
        executor = StageExecutor(client, rep, progress=progress, supervisor=supervisor, journal=journal,
                                 resume=resume, shuffle_fs=shuffle_fs, out_fs=out_fs, out=out)
        # Attempts write only while this fence is open; the commit (or the failure below) closes it.
        run_fence = RunFence.open(out_fs, out, run_id)
        ok = False
        try:
            manifest = _execute(plan, spec, client, info, executor, rep, run_id=run_id, out_fs=out_fs, out=out,
                                shipped=shipped, shuffle_fs=shuffle_fs, shuffle_root=shuffle_root,
                                skew_enabled=bool(skew and config.get("skew.enabled")), mode=mode, previous=previous, snapshot=snapshot,
                                faults=faults, map_combine=bool(config.get("shuffle.map-combine", map_combine)),
                                lock=lock, run_fence=run_fence)
            ok = True
        except BaseException as exc:
            rep.status, rep.stop = "failed", time.time()
            rep.message = f"{type(exc).__name__}: {redact(str(exc), storage_options)}"
            _redact_exception(exc)
            _record_history(rep)
            raise
        finally:
            with contextlib.suppress(Exception):
                run_fence.close()
            cleanup(ok)
    rep.status, rep.stop = "committed", time.time()
    rep.output_rows = manifest.rows
    rep.output_files = len(manifest.files)
    rep.output_bytes = sum(f["bytes"] for f in manifest.files)
    rep.message = f"committed {rep.output_rows:,} rows in {rep.output_files} file(s) to {output}"
    log.info("%s in %.2fs (run %s)", rep.message, rep.duration, run_id)
    if report:
        rep.to_html(report)
    _record_history(rep)
    return RunResult(output, run_id, rep, False, manifest, storage_options)


def _redact_exception(exc: BaseException) -> None:
    """Redact, in place, the string arguments of an exception leaving :func:`run` and of its causes, so
    that what prints it later (a traceback, the CLI's paragraph) does not show a secret it quoted."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        with contextlib.suppress(Exception):
            exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        exc = exc.__cause__ or exc.__context__


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
    digest = hashlib.sha256(blob).hexdigest()
    path = posixpath.join(root, f"_payload-{digest[:16]}.pkl")
    with fs.open(path, "wb") as f:
        f.write(blob)
    return PayloadRef(fs, path, digest, len(blob))


def _record_history(rep: RunReport) -> None:
    try:
        from . import history
    except ImportError:
        return
    with contextlib.suppress(Exception):
        history.record(rep, key_values=bool(config.get("report.key-values")))


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


def _execute(plan: Plan, spec: InputSpec, client, info: ClusterInfo, executor: StageExecutor, rep: RunReport, *,
             run_id: str, out_fs, out: str, shipped, shuffle_fs, shuffle_root: str, skew_enabled: bool,
             mode: str, previous: commit.Manifest | None, snapshot: str, faults: Any,
             map_combine: bool = True, lock: Any = None, run_fence: RunFence | None = None) -> commit.Manifest:
    rounds = _fused_rounds(plan)
    splits: list[Split] = list(spec.splits)
    input_fs = spec.fs
    est_bytes = spec.total_bytes
    final: dict[int, dict] = {}
    schema: pa.Schema | None = None
    for r in rounds:
        base_ctx = TaskContext(
            run_id=run_id, job=plan.job.name, round=r.index, rounds=len(rounds), kind=r.kind, keys=r.keys,
            descending=bool(r.reduce.descending) if r.reduce is not None else False, shuffle_fs=shuffle_fs,
            shuffle_root=shuffle_root, out_fs=out_fs, out_root=out,
            num_partitions=plan.initial_partitions(est_bytes) if r.kind in ("aggregate", "reduce") else 1,
            spill_bytes=_spill_bytes(info),
            batch_rows=int(config.get("batch-rows")), sort_batch_rows=int(config.get("shuffle.sort-batch-rows")),
            sample_size=int(config.get("shuffle.sample-size")),
            top_keys=int(config.get("skew.top-keys")) if (skew_enabled and r.kind in ("reduce", "aggregate"))
            else 0,
            columns=r.columns, partition_types=spec.partition_types if r.index == 0 else {},
            page_checksums=bool(config.get("checksums.page-checksums")), faults=faults,
            map_combine=map_combine, report_progress=executor.supervisor is not None, fence=run_fence)
        if r.kind == "sort" and not is_local(shuffle_fs):
            base_ctx = replace(base_ctx, sort_batch_bytes=_sort_batch_bytes(plan.partition_size, len(splits)))
        # ---- map stage
        prefix = stage_prefix(plan.job.name, r.index, "map", plan.fingerprint, f"{run_id}:{executor.session}")
        tasks = [TaskSpec(i, run_map, (base_ctx, shipped, input_fs, s), s.size) for i, s in enumerate(splits)]
        split_by_index = {i: s for i, s in enumerate(splits)}
        log.info("round %d/%d: map stage, %d task(s)", r.index + 1, len(rounds), len(tasks))
        results = executor.run(f"r{r.index}-map", prefix, tasks, round_index=r.index, round_count=len(rounds),
                               kind="map", describe=lambda p: f"input {split_by_index[p].describe()}")
        if r.kind == "map":
            final, schema = results, _final_schema(results)
            break
        outputs = [results[p]["shuffle"] for p in sorted(results)]
        map_schema = next((results[p]["schema"] for p in sorted(results) if results[p].get("schema") is not None), None)
        reduce_tasks, describe, merges = _reduce_tasks(plan, r, base_ctx, outputs, map_schema, shipped, info,
                                                       rep, skew_enabled)
        prefix = stage_prefix(plan.job.name, r.index, "reduce", plan.fingerprint,
                              f"{run_id}:{executor.session}")
        log.info("round %d/%d: reduce stage, %d task(s)", r.index + 1, len(rounds), len(reduce_tasks))
        results = executor.run(f"r{r.index}-reduce", prefix, reduce_tasks, round_index=r.index,
                               round_count=len(rounds), kind="reduce", describe=describe)
        if merges:
            results = _merge_shares(executor, plan, r, base_ctx, shipped, run_id, results, merges, len(rounds))
        _cleanup_files(shuffle_fs, [o.path for o in outputs])
        if r.index == len(rounds) - 1:
            final, schema = results, _final_schema(results)
            break
        splits = [results[p]["next_input"] for p in sorted(results)]
        splits = [replace(s, index=i) for i, s in enumerate(splits)]
        input_fs = shuffle_fs
        est_bytes = sum(int(results[p]["bytes_out"] or 0) for p in results)
    messages = [v["commit"] for v in final.values() if v["commit"]["files"]]
    winners, losers = commit.choose_winners(messages)
    commit.discard(out_fs, losers + [v["commit"] for v in executor.losers if "commit" in v])
    if schema is None:
        schema = pa.schema([])
    meta = {"job": plan.job.name, "fingerprint": plan.fingerprint, "engine_version": ENGINE_VERSION,
            "input": {"digest": snapshot, "files": len(spec.snapshot), "bytes": spec.total_bytes,
                      "snapshot": redact_obj(list(spec.snapshot)[:1000])},
            "timings": {"started": rep.start, "seconds": round(time.time() - rep.start, 3)},
            # what the run decided at run time, for `mapreduce explain OUT` (plain JSON values only)
            # (hot keys as short hashes unless engine.report.key-values; every string redacted)
            "decisions": redact_obj(json.loads(json.dumps({
                "skew": public_decisions(rep.skew[:500], bool(config.get("report.key-values"))),
                "speculation": rep.speculation[:500],
                "stages": [{"name": s.name, "tasks": s.tasks, "attempts": s.attempts, "speculative": s.speculative,
                            "retries": s.retries} for s in rep.stages]}, default=str)))}
    return commit.commit_job(out_fs, out, run_id=run_id, winners=winners, schema=schema, mode=mode,
                             previous=previous, meta=meta, hook=faults.commit_hook if faults is not None else None,
                             fence=lock.check if lock is not None else None, writers=run_fence)


def _spread(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    v = sorted(values)
    return {"count": len(v), "min": v[0], "median": v[len(v) // 2], "max": v[-1], "total": sum(v)}


def _fmt_spread(values: list[int]) -> str:
    d = _spread(values)
    if not d["count"]:
        return "none"
    return f"bytes min {d['min']:,} / median {d['median']:,} / max {d['max']:,}"


def _spill_bytes(info: ClusterInfo) -> int:
    """The map-side buffer: the configured size, but at most 1/24 of a worker thread's memory
    (a spill holds the buffer, its combined copy and the partitioned copy at once)."""
    size = config.parse_size(config.get("shuffle.spill-size"), name="shuffle.spill-size")
    if info.memory_limit:
        size = min(size, max(4 << 20, info.memory_limit // 24))
    return size


def _sort_batch_bytes(partition_size: int, runs: int) -> int:
    """Batch size of sorted runs on an object store: a range reducer also reads the two batches of each
    run that straddle its bounds, so batches of ``partition_size / (4 x runs)`` bytes keep what the
    reducers read within ~1.25x of what they need (local shuffle files are memory-mapped: no cap)."""
    return max(16 << 10, int(partition_size) // (4 * max(1, runs)))


def _final_schema(results: dict[int, dict]) -> pa.Schema | None:
    schema, where = None, None
    for p in sorted(results):
        s = results[p].get("schema")
        if s is None or not results[p].get("rows_out"):
            continue
        if schema is None:
            schema, where = s, p
        elif not s.equals(schema):
            raise SchemaError(f"output partitions disagree on the schema: partition {where} has {schema}, partition "
                              f"{p} has {s}; make the last stage return the same columns and types for every key")
    if schema is None:
        schema = next((results[p]["schema"] for p in sorted(results) if results[p].get("schema") is not None), None)
    return schema


def _reduce_tasks(plan: Plan, r, ctx: TaskContext, outputs: list[shuffle.MapOutput], map_schema,
                  shipped, info: ClusterInfo, rep: RunReport, skew_enabled: bool):
    total = sum(o.total_bytes for o in outputs)
    min_tasks = info.threads if total >= (8 << 20) else 1
    if r.kind == "sort":
        n = skew.range_partition_count(total, plan.partition_size, min_tasks=min_tasks)
        samples = [(o.sample, o.rows_out / o.sample.num_rows) for o in outputs if o.sample is not None]
        pieces = shuffle.choose_pieces(samples, r.keys, ctx.descending, n, split_hot=skew_enabled)
        tasks = []
        for i, piece in enumerate(pieces):
            refs = shuffle.piece_slices(outputs, piece, ctx.descending)
            # Estimated input bytes: the piece's estimated rows times the runs' bytes per row.
            size = int(piece.rows * total / max(1, sum(o.rows_out for o in outputs)))
            tasks.append(TaskSpec(i, run_reduce, (ctx, shipped, refs, piece, map_schema), size or None))
        hot = [p for p in pieces if p.share is not None]
        sizes = [int(p.rows) for p in pieces]
        rep.skew.append({"action": "range", "round": r.index, "partitions": len(tasks), "total_bytes": total,
                         "estimated_rows": _spread(sizes),
                         "reason": f"round {r.index + 1}: {len(tasks)} range partitions from "
                                   f"{sum(s[0].num_rows for s in samples)} sampled keys over {total:,} bytes "
                                   f"(estimated rows per partition min {min(sizes):,} / max {max(sizes):,})"})
        for key in dict.fromkeys(p.lo for p in hot):
            shares = [p for p in hot if p.lo == key]
            rows = sum(p.rows for p in shares)
            where = (f"spread over {len(shares)} adjacent partitions" if len(shares) > 1
                     else "given a partition of its own")
            rep.skew.append({"action": "split" if len(shares) > 1 else "isolate", "round": r.index,
                             "key": list(key), "shares": len(shares), "rows": int(rows),
                             "reason": f"hot sort key {key!r} (~{rows:,.0f} rows, at least one partition's share "
                                       f"of ~{sum(sizes) / max(1, n):,.0f}) {where}"})
        return tasks, (lambda p: pieces[p].describe()), []
    nparts = outputs[0].num_partitions if outputs else 1
    rows = [sum(o.rows[p] for o in outputs) for p in range(nparts)]
    sizes = [sum(o.nbytes[p] for o in outputs) for p in range(nparts)]
    heavy: dict[tuple, list[int]] = {}
    for o in outputs:
        for key, p, est in o.heavy_keys:
            entry = heavy.setdefault(tuple(key), [p, 0])
            entry[1] += est
    sources = [sum(1 for o in outputs if o.batches[p]) for p in range(nparts)]
    rplan = skew.plan_reducers(rows, sizes, [(k, p, est) for k, (p, est) in heavy.items()], plan.partition_size,
                               sources=sources,
                               min_tasks=min_tasks, enabled=skew_enabled, combinable=r.combinable,
                               factor=float(config.get("skew.factor")),
                               split_over=float(config.get("skew.split-over")))
    for d in rplan.decisions:
        rep.skew.append({**d, "round": r.index})
    before = [b for b in sizes if b]
    after = [a.nbytes for a in rplan.assignments]
    rep.skew.append({"action": "plan", "round": r.index, "partitions_before": _spread(before),
                     "tasks_after": _spread(after),
                     "reason": f"round {r.index + 1}: {len(before)} non-empty hash partitions "
                               f"({_fmt_spread(before)}) -> {len(after)} reduce tasks ({_fmt_spread(after)})"})
    key_schema = pa.schema([map_schema.field(k) for k in r.keys]) if map_schema is not None else None
    tasks = []
    merges: dict[tuple, list[int]] = {}       # (partition, key) -> share task indices
    for a in rplan.assignments:
        sources = [o for o in outputs if any(o.batches[p] for p in range(a.start, a.stop))]
        if a.share is not None:
            # this share's map outputs: a contiguous run of them in map order, cut by their bytes in the
            # partition (order-sensitive aggregations, first/last, see the rows in input order)
            j, m = a.share
            weights = [o.nbytes[a.start] for o in sources]
            total_w, acc, mine = max(1, sum(weights)), 0, []
            for o, w_o in zip(sources, weights):
                if min(m - 1, int((acc + w_o / 2) * m / total_w)) == j:
                    mine.append(o)
                acc += w_o
            sources = mine
            merges.setdefault((a.start, a.only[0]), []).append(a.index)
        refs = [o.ref([b for p in range(a.start, a.stop) for b in o.batches[p]]) for o in sources]
        key_filter = None
        if (a.only or a.exclude or a.sub) and key_schema is not None:
            def key_table(chosen):
                return pa.Table.from_pylist([dict(zip(r.keys, k)) for k in chosen], schema=key_schema) \
                    if chosen else None
            key_filter = {"only": key_table(a.only), "exclude": key_table(a.exclude), "sub": a.sub}
        fn = run_partial if a.share is not None else run_reduce
        tasks.append(TaskSpec(a.index, fn, (ctx, shipped, refs, key_filter, map_schema), a.nbytes))
    assignments = rplan.assignments
    return tasks, (lambda p: assignments[p].describe()), list(merges.items())


def _merge_shares(executor: StageExecutor, plan: Plan, r, ctx: TaskContext, shipped, run_id: str,
                  results: dict[int, dict], merges: list[tuple[tuple, list[int]]], round_count: int) -> dict[int, dict]:
    """After a reduce stage with split hot keys: one merge task per key finishes its shares' partial
    results (through the round's combine) and takes the output partition numbers after the others."""
    merge_ctx = replace(ctx, map_combine=True)
    first = max(results) + 1 if results else 0
    tasks, described = [], {}
    for h, ((partition, key), shares) in enumerate(merges):
        outs = [results[i]["shuffle"] for i in shares]
        refs = [o.ref(o.batches[0]) for o in outs if o.batches[0]]
        schema = next((results[i]["schema"] for i in shares if results[i].get("schema") is not None), None)
        tasks.append(TaskSpec(first + h, run_reduce, (merge_ctx, shipped, refs, None, schema),
                              sum(o.total_bytes for o in outs)))
        described[first + h] = f"merge of {len(shares)} shares of hot key {key!r} (hash partition {partition})"
    prefix = stage_prefix(plan.job.name, r.index, "merge", plan.fingerprint, f"{run_id}:{executor.session}")
    log.info("round %d/%d: merge stage, %d task(s)", r.index + 1, round_count, len(tasks))
    merged = executor.run(f"r{r.index}-merge", prefix, tasks, round_index=r.index, round_count=round_count,
                          kind="reduce", describe=lambda p: described[p])
    shared = {i for _, shares in merges for i in shares}
    partials = [results[i]["shuffle"].path for i in shared]
    out = {p: v for p, v in results.items() if p not in shared}
    out.update(merged)
    _cleanup_files(ctx.shuffle_fs, partials)
    return out


def _cleanup_files(fs, paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(Exception):
            fs.rm(p)


__all__ = ["run", "RunResult", "StageExecutor", "ENGINE_VERSION"]
_ = (EngineError, TaskReport)
