"""Running a small job in the driver process: a thread pool behind the calls the executor makes of a
``distributed.Client``.

A run whose input is at most ``engine.local.max-bytes`` and that was given no cluster runs here
(:func:`engine.cluster.get_client` decides): the same compiled stages, the same attempt-keyed tasks,
retries, journal, commit, report and history, without starting a cluster, spawning worker processes
or importing dask and distributed. Each task is the stage's function called in a pool thread.

What the executor uses, and what it is here:

* ``submit(key, task)`` runs ``task.func(*task.args, partition, attempt)``; a :class:`LocalFuture`
  has the ``key``, ``status`` (pending, finished, error, cancelled), ``done()``, ``result()``,
  ``exception()``, ``cancel()``, ``release()`` and ``add_done_callback()`` of a distributed future;
* ``gather(futures)``; ``scheduler_info()`` names one worker, the driver, with one slot per thread.

Not here: speculation (every thread shares one process: there is no other worker to place a copy
on, and a thread cannot be restarted), so a run in the driver runs without it and its report says
so. ``cancel()`` stops an attempt that has not started; one already running finishes (its output
is discarded by the commit protocol like any loser's).

>>> client = LocalClient(2)
>>> client.scheduler_info()["workers"]["driver"]["nthreads"]
2
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable
from typing import Any

WORKER = "driver"


class LocalFuture:
    """One attempt running (or queued) on the driver's thread pool."""

    __slots__ = ("key", "client", "_future", "_cancelled")

    def __init__(self, client: LocalClient, key: Any, future: cf.Future) -> None:
        self.key, self.client, self._future = key, client, future
        self._cancelled = False

    @property
    def status(self) -> str:
        f = self._future
        if self._cancelled or f.cancelled():
            return "cancelled"
        if not f.done():
            return "pending"
        return "error" if f.exception() is not None else "finished"

    def done(self) -> bool:
        return self._cancelled or self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def cancel(self) -> None:
        """Drop the attempt: a queued one never starts; a running one finishes unseen."""
        if not self._future.done():
            self._cancelled = True
            self._future.cancel()

    def release(self) -> None:
        """Nothing is held anywhere else."""

    def add_done_callback(self, fn: Callable[[LocalFuture], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"<LocalFuture {self.key!r} {self.status}>"


def _call(task: Any, partition: int, attempt: int) -> Any:
    value = task.func(*task.args, partition, attempt)
    if isinstance(value, dict) and "worker" in value:
        value["worker"] = f"{WORKER}/{threading.current_thread().name}"
    return value


class LocalClient:
    """The driver's thread pool, with the small client surface :class:`engine.executor.StageExecutor` uses.

    Its threads are daemons: a run that is interrupted (Ctrl-C, SIGTERM) unwinds and the process exits
    without waiting for an attempt stuck in user code, as it would with a worker process."""

    local = True

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._workers = [threading.Thread(target=self._work, name=f"thread-{i}", daemon=True)
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the driver like a worker's error
                future.set_exception(exc)
            else:
                future.set_result(result)

    @property
    def status(self) -> str:
        return "closed" if self._closed else "running"

    def submit(self, key: Any, task: Any) -> LocalFuture:
        """Queue one attempt of ``task`` (an :class:`engine.compile.TaskSpec`) under ``key``."""
        _, partition, attempt = key
        future: cf.Future = cf.Future()
        self._queue.put((future, _call, (task, partition, attempt)))
        return LocalFuture(self, key, future)

    def gather(self, futures: list[LocalFuture]) -> list[Any]:
        return [f.result() for f in futures]

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": {WORKER: {"nthreads": self.threads, "memory_limit": 0}}}

    def close(self) -> None:
        """Stop the threads once the attempts queued so far have run or been cancelled."""
        if not self._closed:
            self._closed = True
            for _ in self._workers:
                self._queue.put(None)


__all__ = ["LocalClient", "LocalFuture", "WORKER"]
