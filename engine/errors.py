"""The engine's exception tree.

Every error the engine raises on purpose derives from :class:`EngineError`, and most also
derive from the builtin they refine, so ``except ValueError`` keeps working for callers who
do not know this module::

    EngineError
    ├── JobDefinitionError (ValueError)      a job is malformed: caught when it is defined or planned
    │   ├── SchemaError                      a stage's input or output columns do not fit
    │   └── CounterError                     engine.counter() misused (a name not text, an amount not whole)
    ├── InputError (ValueError)              input paths, formats or files that cannot be read
    │   ├── EmptyInputError                  the input matched no files
    │   └── PartitionNotFoundError           read(..., partitions=) names a partition the output does not have
    ├── ClusterError (RuntimeError)          the cluster cannot be started, reached or used
    │   └── ShuffleLocationError             the shuffle directory is not reachable by every worker
    ├── HistoryError (RuntimeError)          the run history's store cannot be reached, set up or written
    │                                        (a run never fails for it: the runner logs a warning)
    ├── StageFailedError (RuntimeError)      a task failed for good: names round, stage and partition
    ├── CommitError (RuntimeError)           the output could not be committed
    │   ├── OutputExistsError (FileExistsError-like)  committed output present and mode="error"
    │   ├── ConcurrentRunError               another live run holds the output, won the commit race, or took
    │   │                                    over the lease of this one (then nothing was committed)
    │   ├── FencedError                      a task attempt tried to write after its run had ended (committed,
    │   │                                    failed or fenced off): it wrote nothing and discarded its file
    │   └── ChangeGateError                  a staged or canary result moved more than max_change allows:
    │                                        nothing was published (exit code 3 on the command line)
    ├── IntegrityError (ValueError)          committed output does not match its manifest
    │   └── ManifestError                    the manifest is missing, unreadable or self-inconsistent
    └── DiffError (ValueError)               two outputs cannot be compared as asked (a key column one
                                             lacks, a partition in neither, a bad change threshold)

    Terminated (KeyboardInterrupt)           SIGTERM received during a run (cron, Airflow, systemd, a
                                             container stop): the run unwinds as on Ctrl-C and is
                                             recorded as interrupted

Messages say what happened, where (file, column, partition), and what to do about it.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error raised by the engine on purpose."""


class JobDefinitionError(EngineError, ValueError):
    """A job is malformed (missing ``by``, unknown aggregation, bad stage order, ...)."""


class SchemaError(JobDefinitionError):
    """A stage's input or output columns or types do not fit what the job asks of them."""


class InputError(EngineError, ValueError):
    """An input path, format or file cannot be resolved or read."""


class EmptyInputError(InputError):
    """The input matched no data files."""


class PartitionNotFoundError(InputError):
    """``read(..., partitions=)`` names a partition directory that the committed output does not have
    (or the output is not partitioned)."""


class ClusterError(EngineError, RuntimeError):
    """The cluster cannot be started, reached or used as asked."""


class ShuffleLocationError(ClusterError):
    """The shuffle directory is not reachable by every worker of the cluster."""


class HistoryError(EngineError, RuntimeError):
    """The run history's store (a PostgreSQL server, a SQLite file) cannot be reached, set up or used.

    The message names the store without its credentials and says what to check. A run never fails for
    it: the runner writes its record on a best-effort basis and logs a warning instead.
    """


class StageFailedError(EngineError, RuntimeError):
    """A task failed after its retries; the message names the round, stage and partition.

    Attributes ``round``, ``stage``, ``partition`` and ``cause`` carry the same facts for code.
    """

    def __init__(self, message: str, *, round: int | None = None, stage: str | None = None,
                 partition: int | None = None, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.round = round
        self.stage = stage
        self.partition = partition
        self.cause = cause


class CommitError(EngineError, RuntimeError):
    """The output could not be committed; nothing of this run is visible to readers."""


class OutputExistsError(CommitError, FileExistsError):
    """The output already holds a committed result and ``mode="error"`` forbids replacing it."""


class ConcurrentRunError(CommitError):
    """Another live run holds the output's lock, or committed first."""


class FencedError(CommitError):
    """A task attempt tried to write into an output after its run had ended (a cancelled or late attempt).

    Raised on the worker; the attempt discarded what it had begun (its file, its pending upload), so
    nothing of it reaches the output. ``path`` is the file it was writing.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        return type(self), (str(self), self.path)


class ChangeGateError(CommitError):
    """A staged (or canary) result differs from the live output by more than ``max_change`` allows.

    Nothing was published: the live output is as it was. ``violations`` lists one sentence per
    partition that moved too much; ``staged`` is where the staged result was kept (None for a canary,
    whose result is discarded).
    """

    def __init__(self, message: str, violations: list[str] | None = None, staged: str | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])
        self.staged = staged

    def __reduce__(self):
        return type(self), (str(self), self.violations, self.staged)


class IntegrityError(EngineError, ValueError):
    """Committed output does not match its manifest (missing file, size or checksum mismatch).

    ``problems`` lists one human-readable line per bad file.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class ManifestError(IntegrityError):
    """The manifest (``_SUCCESS``) is missing, unreadable or fails its own checksum."""


class DiffError(EngineError, ValueError):
    """Two committed outputs cannot be compared as asked: a key or partition column missing on one side,
    a partition in neither output, key types without a common type, or a malformed change threshold."""


__all__ = [
    "EngineError", "JobDefinitionError", "SchemaError", "InputError", "EmptyInputError", "PartitionNotFoundError",
    "ClusterError", "ShuffleLocationError", "HistoryError", "StageFailedError", "CommitError",
    "OutputExistsError", "ConcurrentRunError", "FencedError", "ChangeGateError", "IntegrityError", "ManifestError",
    "DiffError", "Terminated",
]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run: its running tasks were cancelled, nothing of it was committed
    unless it had committed already, its lock is released and the history records it as
    ``interrupted``. A subclass of ``KeyboardInterrupt``, so ``except KeyboardInterrupt`` still catches
    it; uncaught in a script it prints one line, not a traceback."""


class Terminated(Interrupted):
    """SIGTERM (cron, Airflow, systemd, a container stop) turned into an exception while a run runs in
    the main thread, so the run unwinds as on Ctrl-C: running tasks are cancelled, its fence closes,
    its lock is released and the history records it as ``interrupted``."""

    def __str__(self) -> str:
        return super().__str__() or "terminated by SIGTERM"


class TooManyRejectedError(StageFailedError):
    """A run rejected more rows than ``max_rejected`` allows (``on_error="reject"``); it commits nothing.

    ``rejected`` is the count when the limit was crossed, ``limit`` the limit, ``sample`` a few of the
    rejected rows' descriptions (file, row, error)."""

    def __init__(self, message: str, *, rejected: int = 0, limit: int | None = None,
                 sample: list[str] | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.rejected, self.limit, self.sample = rejected, limit, list(sample or [])

    def __reduce__(self):
        return _rebuild_too_many, (str(self), self.rejected, self.limit, self.sample)


def _rebuild_too_many(message, rejected, limit, sample):
    return TooManyRejectedError(message, rejected=rejected, limit=limit, sample=sample)


class BudgetExceededError(EngineError, RuntimeError):
    """A run went past its ``max_seconds`` (wall clock) or ``max_cpu_seconds`` (task CPU) budget; its
    running tasks were cancelled and it commits nothing. ``budget`` names which, ``used`` and ``limit``
    are seconds."""

    def __init__(self, message: str, *, budget: str = "", used: float = 0.0, limit: float = 0.0) -> None:
        super().__init__(message)
        self.budget, self.used, self.limit = budget, used, limit

    def __reduce__(self):
        return _rebuild_budget, (str(self), self.budget, self.used, self.limit)


def _rebuild_budget(message, budget, used, limit):
    return BudgetExceededError(message, budget=budget, used=used, limit=limit)


__all__ += ["TooManyRejectedError", "BudgetExceededError"]


class ShuffleSpaceError(ClusterError):
    """A disk the run writes its files to ran out of space ("no space left on device"): the shuffle
    directory, or the output directory where the run stages its files before the commit.

    Not retried (a retry would fill the same disk again). Nothing was committed, and the run removed its
    shuffle and staged files. ``directory`` is the directory whose disk was full.
    """

    def __init__(self, message: str, directory: str | None = None) -> None:
        super().__init__(message)
        self.directory = directory

    def __reduce__(self):
        return type(self), (str(self), self.directory)


class InputChangedError(InputError):
    """An input file changed or disappeared after the run took its snapshot (its size, modification
    time or ETag differ, or it is gone). Not retried: the run would mix two versions of its input.
    ``path`` is the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        return type(self), (str(self), self.path)


__all__ += ["ShuffleSpaceError", "InputChangedError"]


class RemoteTaskError(EngineError):
    """An exception a task raised on a worker that could not reach the driver as it was (it cannot be
    pickled, loses the engine's marks when pickled, or its message is too long for dask): its class
    names, message, traceback and the pickled original when there is one. The driver rebuilds the
    original where it can (``engine.attempts.unwrap``); otherwise this stands for it."""

    def __init__(self, text: str, *, type_name: str = "", qualname: str = "", module: str = "",
                 class_names: tuple[str, ...] = (), message: str = "", payload: bytes | None = None,
                 marks: dict | None = None) -> None:
        super().__init__(text)
        self.type_name, self.qualname, self.module = type_name, qualname or type_name, module
        self.class_names, self.message = tuple(class_names), message
        self.payload, self.marks = payload, dict(marks or {})

    def __reduce__(self):
        return _rebuild_remote, (str(self), self.type_name, self.qualname, self.module, self.class_names,
                                 self.message, self.payload, self.marks)


def _rebuild_remote(text, type_name, qualname, module, class_names, message, payload, marks):
    err = RemoteTaskError(text, type_name=type_name, qualname=qualname, module=module, class_names=class_names,
                          message=message, payload=payload, marks=marks)
    for name, value in err.marks.items():
        setattr(err, name, value)
    return err


__all__ += ["RemoteTaskError"]


class PartitionTooLargeError(EngineError, RuntimeError):
    """A reduce task's rows do not fit in the memory a task may hold on its worker, and its reduce function
    needs them at once (a plain ``Job.reduce(fn, by=...)`` receives all rows of a key in one call).

    Raised before the worker runs out of memory, and never retried (the same rows would not fit on the
    next attempt either). ``partition`` names the task, ``nbytes`` the bytes read when it gave up,
    ``budget`` the bytes a task may hold, ``key`` the heaviest key among the rows read. The fix is the
    streaming form ``Job.reduce(fn, by=..., stream=True)``, a combine, or more memory per worker thread.
    """

    engine_deterministic = True

    def __init__(self, message: str, *, partition: str | None = None, nbytes: int = 0, budget: int = 0,
                 key: tuple | None = None) -> None:
        super().__init__(message)
        self.partition, self.nbytes, self.budget, self.key = partition, nbytes, budget, key

    def __reduce__(self):
        return _rebuild_too_large, (str(self), self.partition, self.nbytes, self.budget, self.key)


def _rebuild_too_large(message, partition, nbytes, budget, key):
    return PartitionTooLargeError(message, partition=partition, nbytes=nbytes, budget=budget, key=key)


__all__ += ["PartitionTooLargeError"]


class CounterError(JobDefinitionError):
    """``engine.counter(name).add(n)`` used wrongly: a name that is not text, an amount that is not a
    whole number, or more distinct names in one task than :data:`engine.counters.MAX_NAMES`. Raised in
    the job's code, and never retried (the next attempt would do the same)."""


__all__ += ["CounterError"]
