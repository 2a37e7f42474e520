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

Public surface: :class:`Job`, :mod:`agg`, :func:`run`, :func:`read`, :func:`verify`, :class:`RunResult`,
:class:`RunReport` and the exceptions of :mod:`engine.errors`.
"""

from __future__ import annotations

from . import agg, config  # noqa: F401  (config registers the engine.* defaults)
from .commit import VerifySummary, read, verify
from .errors import (ClusterError, CommitError, ConcurrentRunError, EmptyInputError, EngineError, FencedError, InputError,
                     IntegrityError, JobDefinitionError, ManifestError, OutputExistsError, SchemaError,
                     ShuffleLocationError, StageFailedError)
from .job import Job
from .report import RunReport
from .runner import ENGINE_VERSION as __version__
from .runner import RunResult, run

__all__ = [
    "Job", "agg", "run", "read", "verify", "RunResult", "RunReport", "VerifySummary", "__version__",
    "EngineError", "JobDefinitionError", "SchemaError", "InputError", "EmptyInputError", "ClusterError",
    "ShuffleLocationError", "StageFailedError", "CommitError", "OutputExistsError", "ConcurrentRunError",
    "IntegrityError", "ManifestError", "FencedError",
]
