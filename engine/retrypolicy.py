"""Which failed attempts are retried: a retry policy that cannot storm.

The stage executor asks :meth:`RetryPolicy.decide` once per failed task (a partition none of whose
attempts is still running) and either retries it after backoff or fails the stage with the reason
the policy gives. The rules, in order:

1. The engine's own deterministic errors (a bad schema, unreadable input, an Arrow error raised while
   computing) are never retried (the executor decides those: ``permanent=True``).
2. A **user error** (raised by the job's code, which the engine marks where it calls it, see
   :mod:`engine.attempts`) is retried on another worker. When a class (or a base) is named in
   ``retry_on``, it gets that many attempts in all and nothing else is checked. A **transient** error
   (:func:`is_transient`: a refused or reset connection, a timeout, a failed name lookup: the
   service the job calls was away for a moment) gets ``engine.retries.attempts`` with backoff.
   Otherwise, when two attempts on different workers failed with the same exception class, message
   and user frame, the error is deterministic and the stage fails at once ("failed the same way on
   workers A and B; not retried further"); in the driver's thread pool (one process) two such
   attempts suffice ("twice in the driver process"). Else it gets ``engine.retries.attempts`` in all.
3. An **infrastructure error** (a worker that died, a closed connection, a task the cluster dropped,
   a fenced or cancelled attempt, an I/O error raised outside the user's code) keeps the normal
   attempts; ``retry_on`` does not apply to it.
4. Every retry of the run is paid from ``retry_budget``; the failure that would exceed it fails the
   run ("retry budget of N exhausted: ...").

Exception classes are matched by name (the class and its bases), so an exception that reached the
driver in a :class:`~engine.errors.RemoteTaskError` (it could not be pickled) is judged as its
original class.

The policy also keeps the run's count of failed tasks and retries spent (the seed's M10, retries per
failure), which the executor copies to the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .attempts import class_names
from .errors import ClusterError, FencedError, RemoteTaskError

# Raised by the cluster or its connections, not by the task's own code (matched by class name, so that
# distributed and tornado need not be imported here).
_INFRASTRUCTURE_NAMES = frozenset({
    "KilledWorker", "CommClosedError", "StreamClosedError", "CancelledError", "TaskCancelled", "FutureCancelledError",
    "WorkerLeftError", "MemoryError", "Reschedule", "FencedError", "ClusterError", "ShuffleLocationError",
})

# A user error of these classes (or their subclasses) is transient by default: the network or a service
# the job calls, not the job's code or input (builtin ConnectionError and TimeoutError with their
# subclasses, socket.timeout among them; a failed name lookup; the same names in HTTP and AWS clients).
_TRANSIENT_NAMES = frozenset({
    "ConnectionError", "TimeoutError", "gaierror", "herror", "Timeout", "ConnectTimeout", "ReadTimeout",
    "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
})


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` is the cluster's failure rather than the task's code: it never passed through an
    attempt (the scheduler's or a connection's error), is an infrastructure class, or was raised while
    no user code was running (the engine reading or writing a file, say)."""
    info = getattr(exc, "engine_attempt", None)
    if info is None or isinstance(exc, (ClusterError, FencedError)):
        return True
    if any(name in _INFRASTRUCTURE_NAMES for name in class_names(exc)):
        return True
    return getattr(info, "frame", None) is None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a network failure worth retrying with backoff, wherever it was raised: a
    ConnectionError or TimeoutError (or a subclass), a failed name lookup, or the like from an HTTP or
    AWS client. Bad-record isolation should let such an error fail the task (to be retried) rather
    than reject the rows it was raised on."""
    return any(name in _TRANSIENT_NAMES for name in class_names(exc))


def is_user_error(exc: BaseException) -> bool:
    """An exception a task raised while the user's code was running (not an infrastructure error)."""
    return not is_infrastructure(exc)


def signature(exc: BaseException) -> tuple[str, str, str | None]:
    """What two failures must share to be the same error: class, message and innermost user frame."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        message = ""
    if isinstance(exc, RemoteTaskError):
        message = exc.message
    info = getattr(exc, "engine_attempt", None)
    kind = exc.qualname if isinstance(exc, RemoteTaskError) else type(exc).__qualname__
    return kind, message, getattr(info, "frame", None)


def worker_of(exc: BaseException) -> str | None:
    """The worker the failed attempt ran on, when it says so."""
    info = getattr(exc, "engine_attempt", None)
    return getattr(info, "worker", None)


@dataclass(frozen=True)
class Decision:
    """``retry``: whether to run the task again; ``reason``: why not (for the stage's error message);
    ``budget``: the stage fails because the run's retry budget is spent; ``avoid``: workers the
    retry should not go to."""

    retry: bool
    reason: str = ""
    budget: bool = False
    avoid: frozenset[str] = frozenset()


class RetryPolicy:
    """One run's retry decisions and retry accounting (see the module docstring).

    ``guards``: the run's :class:`engine.guards.Guards`; ``attempts``: ``engine.retries.attempts``;
    ``local``: the run is in the driver's thread pool (one process: two equal failures suffice).
    """

    def __init__(self, guards: Any, attempts: int, *, local: bool = False) -> None:
        self.guards = guards
        self.attempts = max(1, int(attempts))
        self.local = local
        self.budget: int | None = getattr(guards, "retry_budget", None)
        self.spent = 0                   # retries started in this run
        self.failed = 0                  # tasks (stage, partition) that failed at least once
        self._seen: dict[Any, list[tuple[tuple, str | None]]] = {}   # task -> [(signature, worker)]

    @property
    def left(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.spent)

    def decide(self, task: Any, exc: BaseException, failures: int, *, permanent: bool = False) -> Decision:
        """Whether to retry ``task`` (any hashable name of it) after its ``failures``-th failed attempt, ``exc``."""
        if failures == 1:
            self.failed += 1
        if permanent:
            return Decision(False)
        worker = worker_of(exc)
        avoid = frozenset([worker]) if worker else frozenset()
        if is_user_error(exc):
            name, rule = self.rule_for(exc)
            if rule is not None:
                if failures >= rule:
                    return Decision(False, f"retry_on allows {name} {rule} attempt(s)"
                                    + ("; not retried" if rule == 1 else "; not retried further"))
            elif is_transient(exc):
                if failures >= self.attempts:
                    return Decision(False, "a network error, retried with backoff; if the service it calls is "
                                           f"often away, give it more attempts: retry_on={{{name}: N}}")
            else:
                sig = signature(exc)
                seen = self._seen.setdefault(task, [])
                for before, where in seen:
                    if before == sig and (self.local or (where and worker and where != worker)):
                        places = ("twice in the driver process" if self.local
                                  else f"on workers {where} and {worker}")
                        frame = f" (raised at {sig[2]})" if sig[2] else ""
                        return Decision(False, f"the error is deterministic: it failed the same way {places}{frame}; "
                                               "not retried further (fix the job's code or its input)")
                seen.append((sig, worker))
                if failures >= self.attempts:
                    return Decision(False)
        elif failures >= self.attempts:
            return Decision(False)
        if self.budget is not None and self.spent >= self.budget:
            return Decision(False, f"retry budget of {self.budget} exhausted", budget=True)
        self.spent += 1
        return Decision(True, avoid=avoid)

    def rule_for(self, exc: BaseException) -> tuple[str, int | None]:
        """``(name, attempts)`` of the ``retry_on`` rule for ``exc``'s class or its nearest base so
        named (the class's own name and None when there is none)."""
        names = class_names(exc)
        rules = dict(getattr(self.guards, "retry_on", None) or ())
        for name in names:
            if name in rules:
                return names[0], int(rules[name])
        return names[0], None

    def figures(self) -> dict[str, Any]:
        """The run's M10 figures: failed tasks, retries spent, retries per failure, budget and what is left."""
        return {"failures": self.failed, "retries_spent": self.spent,
                "retries_per_failure": round(self.spent / self.failed, 3) if self.failed else None,
                "retry_budget": self.budget, "retry_budget_left": self.left}


__all__ = ["RetryPolicy", "Decision", "is_infrastructure", "is_user_error", "is_transient", "signature", "worker_of"]
