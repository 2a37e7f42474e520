"""A dataframe-native MapReduce engine: Arrow tables in, map/combine/reduce rounds on Dask, atomic output.

>>> import pyarrow as pa, pyarrow.compute as pc
>>> import engine
>>> from engine import Job, agg
>>> wc = (Job("wordcount")
...       .map(lambda t: pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))}))
...       .reduce(by="word", aggs={"count": agg.count()}))
>>> result = wc.run("data/text/", "out/wc")                 # doctest: +SKIP
>>> engine.read("out/wc").sort_by("word")                   # doctest: +SKIP
>>> engine.verify("out/wc")                                 # doctest: +SKIP

Job code can count things as it runs (Hadoop's counters): the totals of the winning attempts.

>>> def keep_dated(t):                                      # a map function
...     engine.counter("no_date").add(pc.sum(pc.is_null(t["date"])).as_py() or 0)
...     return t.filter(pc.is_valid(t["date"]))
>>> Job("dated").map(keep_dated).run(IN, OUT).report.counters   # doctest: +SKIP
{'no_date': 17}

Public surface: :class:`Job`, :mod:`agg`, :func:`run`, :func:`read`, :func:`verify`, :class:`RunResult`,
:class:`RunReport`, :func:`counter` (:mod:`engine.counters`), :class:`Progress` (:mod:`engine.progress`)
and the exceptions of :mod:`engine.errors`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import config  # noqa: F401  (the engine.* defaults; it imports dask only when needed)
from .errors import (ClusterError, CommitError, ConcurrentRunError, CounterError, EmptyInputError, EngineError,
                     FencedError, InputError, IntegrityError, JobDefinitionError, ManifestError, OutputExistsError,
                     SchemaError, ShuffleLocationError, StageFailedError, TooManyRejectedError, BudgetExceededError)

if TYPE_CHECKING:
    from . import agg
    from .commit import VerifySummary, read, verify
    from .context import logical_date
    from .counters import counter
    from .progress import Progress
    from .rejects import read_rejected
    from .job import Job
    from .report import RunReport
    from .runner import RunResult, run

# Public names imported on first use (PEP 562): `from engine import Job, agg` loads the job modules
# only, so a job file, and a rerun with nothing to do, do not pay for the run machinery.
_LAZY = {"agg": (".agg", None), "Job": (".job", "Job"), "read": (".commit", "read"),
         "verify": (".commit", "verify"), "VerifySummary": (".commit", "VerifySummary"),
         "RunReport": (".report", "RunReport"), "run": (".runner", "run"), "RunResult": (".runner", "RunResult"),
         "logical_date": (".context", "logical_date"),
         "Progress": (".progress", "Progress"),
         "counter": (".counters", "counter"), "counters": (".counters", None), "read_rejected": (".rejects", "read_rejected"),
         "__version__": ("._version", "ENGINE_VERSION")}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    module = importlib.import_module(where[0], __name__)
    value = module if where[1] is None else getattr(module, where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Job", "agg", "run", "read", "verify", "logical_date", "counter", "RunResult", "RunReport", "VerifySummary", "__version__",
    "EngineError", "JobDefinitionError", "SchemaError", "InputError", "EmptyInputError", "ClusterError",
    "ShuffleLocationError", "StageFailedError", "CommitError", "OutputExistsError", "ConcurrentRunError",
    "IntegrityError", "ManifestError", "FencedError", "read_rejected", "TooManyRejectedError", "BudgetExceededError",
    "CounterError", "Progress",
]
