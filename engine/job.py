"""The ``Job`` builder: a chain of map, combine, reduce and sort stages.

A job is a sequence of *rounds*; each round is ``map* → (combine) → reduce | sort`` and the last
round may be map-only. Builders are immutable: every method returns a new ``Job``.

Stage contracts (the engine relies on them; the tests check them):

1. **map** ``fn(pa.Table) -> pa.Table`` is called once per record batch group of an input split,
   in any order, possibly more than once for the same data (retries, speculation). It must be a
   pure function of its input.
2. **combine** ``fn(pa.Table) -> pa.Table`` receives rows of many keys and groups them itself. It
   must be associative and commutative, and return the same schema it receives, because the engine
   applies it **zero, one or many times**: per spill of a map task, again when merging the partial
   results of a hot key that was split across reducers.
3. **reduce** ``fn(pa.Table) -> pa.Table`` with ``by=`` keys receives *all* rows of a set of keys in
   one call (a key's rows are never split across calls unless the round has a combine), and groups
   them itself. A task whose rows would not fit in its worker's memory budget fails fast
   (:class:`~engine.errors.PartitionTooLargeError`). ``reduce(fn, by=..., stream=True)`` is the
   streaming form: ``fn(batches) -> tables`` receives a task's rows as an iterator of tables sorted by
   the keys, a key's rows contiguous but possibly continuing into the next table, and yields its
   output tables; it never needs a key's rows in memory at once (:mod:`engine.extsort`).
   ``reduce(by=..., aggs={...})`` derives combine and reduce from declarative
   aggregations (:mod:`engine.agg`), the fast path.
4. **sort** ``by=`` range-partitions the round on sampled key boundaries; output partitions are
   globally ordered.

>>> import pyarrow as pa, pyarrow.compute as pc
>>> from engine import Job, agg
>>> wc = (Job("wordcount")
...       .map(lambda t: pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))}))
...       .reduce(by="word", aggs={"count": agg.count()}))
>>> [r.kind for r in wc.rounds]
['aggregate']

The **fingerprint** (:meth:`Job.fingerprint`) names what the job computes: a rerun over an
unchanged input is a no-op, and a resumed run reuses map outputs, only under the same fingerprint.
It digests the job's name and stage structure (kinds, keys, ``columns=``, ``where=``, the
aggregations; not the columns a round derives from them, which follow from that structure), the
engine version, the run options that change results (the input ``format``), and the code the tasks
execute: what the driver ships to the workers by value, walked by :func:`engine.serialize.code_digest`
(helpers the stage functions call, module globals they read, closures, defaults, and whole user
modules they use as modules). It is equal in any process and folder for unchanged code; comments,
blank lines and file locations do not change it, docstrings and the Python minor version do.

Code with no stable digest (a function that reads an open file or a socket from a global, say)
raises :class:`JobDefinitionError`. ``Job("name", version="2026-12-01")`` pins the fingerprint
instead: name, structure, version, engine version and result options, no code; change the version
whenever the code changes what the job computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ._version import ENGINE_VERSION
from .agg import Aggregation, AggregationSet
from .errors import JobDefinitionError
from .extsort import StreamReduce
from .joins import JoinSpec, normalize_how
from .ratelimit import RateLimited
from .serialize import CodeNotHashable, code_digest

TableFn = Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class Stage:
    """One stage of a job, as the user declared it."""

    kind: str  # "map" | "combine" | "reduce" | "sort" | "join" | "cogroup"
    fn: TableFn | None = None
    by: tuple[str, ...] = ()
    aggs: Mapping[str, Aggregation] | None = None
    descending: bool = False
    columns: tuple[str, ...] | None = None
    others: tuple[tuple[str, Job], ...] = ()     # join: the right side; cogroup: every other input
    join: JoinSpec | None = None
    where: Any = None                            # map: a pyarrow.compute.Expression its input rows must satisfy
    rate_limit: float | None = None              # map: rows per second fed to fn across the run (not fingerprinted)

    def describe(self) -> str:
        if self.kind == "map":
            cols = f" columns={list(self.columns)}" if self.columns else ""
            cond = f" where {describe_where(self.where)}" if self.where is not None else ""
            rate = f" rate_limit={self.rate_limit:g}/s" if self.rate_limit is not None else ""
            return f"map {_fn_name(self.fn) if self.fn is not None else '(identity)'}{cols}{cond}{rate}"
        if self.kind == "combine":
            return f"combine {_fn_name(self.fn)}"
        if self.kind == "sort":
            return f"sort by={list(self.by)}{' descending' if self.descending else ''}"
        if self.kind == "join":
            return f"{self.join.describe()} with {_side_name(self.others[0][1])}"
        if self.kind == "cogroup":
            return (f"cogroup {_fn_name(self.fn)} by={list(self.by)} with "
                    f"{', '.join(f'{k}={_side_name(j)}' for k, j in self.others)}")
        if self.aggs is not None:
            inner = ", ".join(f"{k}={v!r}" for k, v in self.aggs.items())
            return f"reduce by={list(self.by)} aggs={{{inner}}}"
        return f"reduce {_fn_name(self.fn)} by={list(self.by)}"

    @property
    def task_fn(self) -> Any:
        """What a task calls for this stage: the user's function, or for a map with ``where=`` (or no
        function) a :class:`MapStep` that filters first; with ``rate_limit=`` wrapped in an
        :class:`engine.ratelimit.RateLimited` (tasks pace the rows it is fed)."""
        if self.kind != "map" or (self.where is None and self.fn is not None):
            fn = self.fn
        else:
            fn = MapStep(self.fn, self.where, self.columns)
        if self.rate_limit is not None:
            fn = RateLimited(fn, self.rate_limit)
        return fn


class MapStep:
    """A map stage as tasks run it: keep the rows satisfying ``where`` (null counts as false, as in
    SQL), keep ``columns`` (the read may have added the columns ``where`` names), then call ``fn``
    (None: identity)."""

    __slots__ = ("fn", "where", "columns")

    def __init__(self, fn: TableFn | None, where: Any, columns: tuple[str, ...] | None) -> None:
        self.fn, self.where, self.columns = fn, where, columns

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.where is not None:
            table = filter_table(table, self.where)
        if self.columns is not None and table.column_names != list(self.columns):
            table = table.select([c for c in self.columns if c in table.column_names])
        return table if self.fn is None else self.fn(table)

    def __reduce__(self):
        return (MapStep, (self.fn, self.where, self.columns))


def filter_table(table: pa.Table, where: Any) -> pa.Table:
    """The rows of ``table`` for which ``where`` is true; a missing column raises :class:`SchemaError`,
    an expression that is not a boolean condition :class:`JobDefinitionError`."""
    try:
        return table.filter(where)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise where_error(exc, where, table.schema, "its input") from exc


def where_error(exc: Exception, where: Any, schema: pa.Schema, what: str) -> Exception:
    """The engine's error for a ``where=`` that cannot be evaluated over ``schema``."""
    from .errors import SchemaError
    text = str(exc)
    m = re.search(r"No match for FieldRef\.(?:Name\((.*?)\)|Nested\(FieldRef\.Name\((.*?)\))", text)
    if isinstance(exc, pa.ArrowInvalid) and m:
        col = m.group(1) or m.group(2)
        return SchemaError(f"map where {describe_where(where)} names column {col!r}, which {what} lacks; it has "
                           f"columns {schema.names}")
    if "must evaluate to bool" in text:
        return JobDefinitionError(f"map where= must be a condition (a boolean expression such as "
                                  f"pc.field('day') >= '2026-11-01'), got {describe_where(where)}: {text}")
    return JobDefinitionError(f"map where {describe_where(where)} cannot be evaluated over {what} (columns "
                              f"{', '.join(f'{f.name}: {f.type}' for f in schema)}): {text}")


def describe_where(where: Any, limit: int = 160) -> str:
    text = " ".join(str(where).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def where_token(where: Any) -> str:
    """A process-independent digest of an expression: its serialized form (``str()`` elides long
    value sets, so two different ``isin`` lists could print alike)."""
    try:
        blob = bytes(where.__reduce__()[1][0])
    except Exception:  # noqa: BLE001 - any other expression form: its text
        blob = str(where).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def leading_where(maps: Sequence[Stage]) -> Any:
    """The condition the input rows of a chain of maps must satisfy that can be checked on the input
    itself: the ``where=`` of the first map, and of the maps after it while every map before has no
    function (a filter only), joined by ``and``. None when the first map has none."""
    out = None
    for m in maps:
        if m.where is not None:
            out = m.where if out is None else (out & m.where)
        if m.fn is not None:
            break
    return out


def needed_columns(maps: Sequence[Stage], reduce: Stage | None) -> tuple[tuple[str, ...] | None, bool]:
    """``(columns, declared)``: the input columns a round reading an input needs, without those its
    ``where=`` names (known only with the input's schema). Declared by the first map's ``columns=``;
    else derived when every map only filters and the round aggregates declaratively (its keys and the
    aggregations' input columns); else None (all: a function may read any column, and a sort, a join,
    a cogroup or a map-only round passes every column on)."""
    if maps and maps[0].columns is not None:
        return maps[0].columns, True
    if any(m.fn is not None for m in maps) or reduce is None or reduce.kind != "reduce" or reduce.aggs is None:
        return None, False
    return tuple(AggregationSet(list(reduce.by), dict(reduce.aggs)).input_columns), False


@dataclass(frozen=True)
class Round:
    """``maps → (combine) → reduce | sort | nothing``; built by :attr:`Job.rounds`."""

    index: int
    maps: tuple[Stage, ...] = ()
    combine: Stage | None = None
    reduce: Stage | None = None

    @property
    def kind(self) -> str:
        """``"aggregate"``, ``"reduce"``, ``"sort"`` or ``"map"`` (map-only)."""
        if self.reduce is None:
            return "map"
        if self.reduce.kind in ("sort", "join", "cogroup"):
            return self.reduce.kind
        return "aggregate" if self.reduce.aggs is not None else "reduce"

    @property
    def keys(self) -> tuple[str, ...]:
        """The key columns this round groups (a join: the left side's keys)."""
        if self.reduce is None:
            return ()
        if self.reduce.join is not None:
            return self.reduce.join.left_on
        return self.reduce.by

    @property
    def aggregations(self) -> AggregationSet | None:
        if self.reduce is None or self.reduce.aggs is None:
            return None
        return AggregationSet(list(self.reduce.by), dict(self.reduce.aggs))

    @property
    def columns(self) -> tuple[str, ...] | None:
        """Input columns the first map declares it needs (None: all)."""
        return self.maps[0].columns if self.maps else None

    @property
    def input_columns(self) -> tuple[str, ...] | None:
        """Input columns this round reads when it reads an input (besides those its ``where=`` names):
        the declared ``columns=``, else derived from its declarative stages (see :func:`needed_columns`)."""
        return needed_columns(self.maps, self.reduce)[0]

    @property
    def where(self) -> Any:
        """The condition on the round's input rows that can be pushed into reading them (see
        :func:`leading_where`)."""
        return leading_where(self.maps)

    @property
    def combinable(self) -> bool:
        return self.kind == "aggregate" or self.combine is not None


def _is_expression(obj: Any) -> bool:
    try:
        import pyarrow.compute as pc
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, pc.Expression)


def _side_name(job: Job) -> str:
    if not job.stages:
        return f"input {job.label!r}"
    return f"job {job.name!r} (input {job.label!r}, {len(job.stages)} stage{'s' if len(job.stages) != 1 else ''})"


def _fn_name(fn: Any) -> str:
    if fn is None:
        return "<none>"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return name


def _as_keys(by: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    if by is None:
        raise JobDefinitionError(f"{what} needs by=: the key column(s) that group its rows, e.g. by='word'")
    keys = (by,) if isinstance(by, str) else tuple(by)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise JobDefinitionError(f"{what} by= must name one or more columns, got {by!r}")
    if len(set(keys)) != len(keys):
        raise JobDefinitionError(f"{what} by= names a column twice: {list(keys)}")
    return keys


def _check_fn(fn: Any, what: str) -> None:
    if not callable(fn):
        raise JobDefinitionError(f"{what} takes a function pa.Table -> pa.Table, got {type(fn).__name__}")


@dataclass(frozen=True)
class Job:
    """A MapReduce job: a name and a chain of stages. Immutable; builder methods return new jobs.

    >>> from engine import Job, agg
    >>> job = Job("per-key").reduce(by="k", aggs={"n": agg.count(), "total": agg.sum("v")})
    >>> print(job.explain())                                 # doctest: +ELLIPSIS
    Job 'per-key': 1 round, fingerprint ...
    round 1 (aggregate by ['k'])
      read   columns ['k', 'v'] (derived from the aggregation)
    ...
    """

    name: str
    stages: tuple[Stage, ...] = field(default=())
    version: str | None = None
    input: str | None = None
    slo: Any = None      # engine.slo.Objectives (or a dict of its fields); not part of the fingerprint
    # the job's own bad-record policy (engine.run's parameters override it); not part of the fingerprint
    on_error: str | None = None
    max_rejected: int | float | str | None = None
    on_bad_file: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise JobDefinitionError("a job needs a non-empty name, e.g. Job('wordcount')")
        if self.on_error is not None or self.max_rejected is not None or self.on_bad_file is not None:
            from .guards import Guards       # checked now, not when the job first runs
            Guards.build(on_error=self.on_error, max_rejected=self.max_rejected, on_bad_file=self.on_bad_file)
        if self.slo is not None:
            from .slo import Objectives    # late: only jobs that declare objectives need it
            object.__setattr__(self, "slo", Objectives.from_obj(self.slo, what=f"job {self.name!r}: slo"))
        if self.input is not None and (not isinstance(self.input, str) or not _INPUT_NAME.fullmatch(self.input)):
            raise JobDefinitionError(f"job {self.name!r}: input= names one of the run's named inputs (letters, "
                                     f"digits, '_', '-', '.'; e.g. input='orders'), got {self.input!r}")
        if self.version is not None and (not isinstance(self.version, str) or not self.version.strip()):
            raise JobDefinitionError(f"job {self.name!r}: version= must be a non-empty string such as "
                                     f"'2026-12-01', got {self.version!r}")

    # -- builders ---------------------------------------------------------------------------
    def _add(self, stage: Stage) -> Job:
        job = dataclasses.replace(self, stages=self.stages + (stage,))
        job._split_rounds(complete=False)  # validates the stage order now, not at run time
        return job

    def map(self, fn: TableFn | None = None, *, columns: Sequence[str] | None = None, where: Any = None,
            rate_limit: float | None = None) -> Job:
        """Add a map stage: ``fn(pa.Table) -> pa.Table`` per chunk of input (None: identity).

        ``columns`` (first map of a round only) names the input columns it needs, so only those
        are read. ``where``, a ``pyarrow.compute.Expression`` such as
        ``pc.field("day") >= "2026-11-01"``, keeps only the rows for which it is true (null counts
        as false) before ``fn`` sees them; on the first map of a round that reads an input it is also
        pushed into the read: Hive partitions and Parquet row groups that cannot match are not read.
        ``rate_limit``, rows per second, paces the rows ``fn`` is fed across the whole run, for a
        function that calls an external system (:mod:`engine.ratelimit`); it does not change what
        the job computes, so it is not part of the fingerprint.

        >>> import pyarrow.compute as pc
        >>> from engine import Job, agg
        >>> j = Job("late").map(where=pc.field("v") > 3).reduce(by="k", aggs={"n": agg.count()})
        >>> j.stages[0].describe()
        'map (identity) where (v > 3)'
        """
        if fn is not None:
            _check_fn(fn, "map")
        if where is not None and not _is_expression(where):
            raise JobDefinitionError(f"map where= takes a pyarrow.compute.Expression such as "
                                     f"pc.field('day') >= '2026-11-01', got {type(where).__name__}")
        if fn is None and columns is None and where is None:
            raise JobDefinitionError("map needs a function, columns= or where= (a map of none is the identity; "
                                     "leave it out)")
        if columns is not None:
            if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns) \
                    or len(set(columns)) != len(list(columns)):
                raise JobDefinitionError(f"map columns= must list distinct column names, e.g. ['id1', 'v1'], "
                                         f"got {columns!r}")
        if rate_limit is not None:
            if fn is None:
                raise JobDefinitionError("map rate_limit= paces the rows a function is fed; give the map a function")
            if isinstance(rate_limit, bool) or not isinstance(rate_limit, (int, float)) \
                    or not math.isfinite(rate_limit) or rate_limit <= 0:
                raise JobDefinitionError(f"map rate_limit= must be a positive number of rows per second, e.g. 1000, "
                                         f"got {rate_limit!r}")
            rate_limit = float(rate_limit)
        return self._add(Stage("map", fn, columns=tuple(columns) if columns is not None else None, where=where,
                               rate_limit=rate_limit))

    def combine(self, fn: TableFn) -> Job:
        """Add a map-side combine for the next ``reduce``: associative, commutative, schema-preserving."""
        _check_fn(fn, "combine")
        return self._add(Stage("combine", fn))

    def reduce(self, fn: TableFn | None = None, *, by: str | Sequence[str] | None = None,
               aggs: Mapping[str, Aggregation] | None = None, stream: bool = False) -> Job:
        """Add a reduce stage grouped ``by`` key columns: a function, or declarative ``aggs``.

        With ``stream=True``, ``fn(batches)`` receives a reduce task's rows as an iterator of
        ``pa.Table`` sorted by ``by`` (ascending, nulls last), each of bounded size; a key's rows are
        contiguous but may continue from one table into the next, so a key larger than the worker's
        memory is never held at once. It yields its output tables (or returns one table or an iterable
        of them). See :class:`engine.extsort.StreamReduce` and :func:`engine.extsort.key_groups`.

        >>> import pyarrow as pa
        >>> def totals(batches):
        ...     for t in batches:      # (a key that continues into the next table is summed again there)
        ...         yield t.group_by("k").aggregate([("v", "sum")])
        >>> print(Job("t").reduce(totals, by="k", stream=True).stages[0].describe())
        reduce totals (streaming) by=['k']
        """
        keys = _as_keys(by, "reduce")
        if not isinstance(stream, bool):
            raise JobDefinitionError(f"reduce stream= must be True or False, got {stream!r}")
        if fn is None and aggs is None:
            raise JobDefinitionError("reduce needs a function or aggs={...}, e.g. "
                                     "reduce(by='word', aggs={'count': agg.count()})")
        if fn is not None and aggs is not None:
            raise JobDefinitionError("reduce takes a function or aggs={...}, not both")
        if stream and fn is None:
            raise JobDefinitionError("reduce(stream=True) streams rows to a function; declarative aggs= need no "
                                     "streaming (they are combined and merged within bounded memory already)")
        if fn is not None:
            _check_fn(fn, "reduce")
            if stream:
                fn = StreamReduce(fn, keys)
            return self._add(Stage("reduce", fn, by=keys))
        if not isinstance(aggs, Mapping) or not aggs:
            raise JobDefinitionError(f"aggs must be a non-empty dict of output name -> engine.agg.*(), got {aggs!r}")
        for out, a in aggs.items():
            if not isinstance(a, Aggregation):
                raise JobDefinitionError(
                    f"unknown aggregation for output {out!r}: {a!r}; use one of engine.agg.count(), sum(col), "
                    "min, max, mean, var, std, median, quantile, count_distinct, approx_distinct, top_k, first, last")
        AggregationSet(list(keys), dict(aggs))  # name clashes etc.
        return self._add(Stage("reduce", None, by=keys, aggs=dict(aggs)))

    def sort(self, by: str | Sequence[str], *, descending: bool = False) -> Job:
        """Add a globally ordered sort on ``by`` (range-partitioned from sampled key boundaries)."""
        return self._add(Stage("sort", None, by=_as_keys(by, "sort"), descending=bool(descending)))

    def join(self, other: Job | str, on: str | Sequence[str] | None = None, *,
             left_on: str | Sequence[str] | None = None, right_on: str | Sequence[str] | None = None,
             how: str = "inner", suffix: str = "_right") -> Job:
        """Join this job's rows (the left side) with ``other``'s (the right side) on key columns.

        ``other`` is a job reading another named input (with its own maps, reduces and joins), or
        the name of an input read as it is. ``how``: ``inner``, ``left``, ``right``, ``full``,
        ``semi`` or ``anti``. Null keys never match. Output columns: the left side's, then the right
        side's; a right key named like its left key appears once, other right columns whose name
        clashes get ``suffix`` (see :mod:`engine.joins`). The strategy (shuffle or broadcast join,
        skewed partitions split) is chosen at run time from the sizes the map stages measured.

        >>> from engine import Job
        >>> orders = Job("orders", input="orders").map(lambda t: t)
        >>> q = Job("q", input="customer").join(orders, left_on="c_custkey", right_on="o_custkey")
        >>> sorted(q.inputs)
        ['customer', 'orders']
        """
        side = _as_side(other, "join")
        if on is not None and (left_on is not None or right_on is not None):
            raise JobDefinitionError("join takes on= (same key names on both sides) or left_on=/right_on=, not both")
        if on is not None:
            lk = rk = _as_keys(on, "join")
        elif left_on is not None and right_on is not None:
            lk, rk = _as_keys(left_on, "join left_on"), _as_keys(right_on, "join right_on")
            if len(lk) != len(rk):
                raise JobDefinitionError(f"join left_on={list(lk)} and right_on={list(rk)} must name as many "
                                         "columns each (keys are paired in order)")
        else:
            raise JobDefinitionError("join needs the key columns: on='key' (same name on both sides) or "
                                     "left_on='a', right_on='b'")
        if not isinstance(suffix, str) or not suffix:
            raise JobDefinitionError(f"join suffix= must be a non-empty string such as '_right', got {suffix!r}")
        spec = JoinSpec(lk, rk, normalize_how(how), suffix)
        return self._add(Stage("join", None, by=lk, others=((side.label, side),), join=spec))

    def cogroup(self, others: Mapping[str, Job | str], fn: Callable[[dict[str, pa.Table]], pa.Table], *,
                by: str | Sequence[str]) -> Job:
        """Group this job's rows and every other input's by the same key columns, and call
        ``fn({name: table, ...}) -> pa.Table`` once per set of keys with all of their rows from each
        input (this job's under its input's name, ``"input"`` when unnamed; a table may be empty).

        >>> from engine import Job
        >>> import pyarrow as pa
        >>> def sizes(t): return pa.table({"clicks": [t["clicks"].num_rows], "views": [t["views"].num_rows]})
        >>> j = Job("c", input="clicks").cogroup({"views": "views"}, sizes, by="user")
        >>> j.rounds[0].kind
        'cogroup'
        """
        _check_fn(fn, "cogroup")
        keys = _as_keys(by, "cogroup")
        if not isinstance(others, Mapping) or not others:
            raise JobDefinitionError("cogroup needs others={'name': job_or_input_name, ...}: at least one other input")
        sides = []
        for label, other in others.items():
            if not isinstance(label, str) or not label:
                raise JobDefinitionError(f"cogroup others= keys name the tables fn receives; got {label!r}")
            sides.append((label, _as_side(other, "cogroup")))
        labels = [self.label] + [lbl for lbl, _ in sides]
        if len(set(labels)) != len(labels):
            raise JobDefinitionError(f"cogroup: the tables fn receives need distinct names, got {labels} (this "
                                     f"job's rows come under {self.label!r}); rename a key of others=")
        return self._add(Stage("cogroup", fn, by=keys, others=tuple(sides)))

    # -- inputs -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The name of the input this job's chain reads (``"input"`` for the single unnamed one)."""
        return self.input if self.input is not None else UNNAMED_INPUT

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every input the job reads, its own and its joins' (in order of appearance)."""
        names = [self.label]
        for st in self.stages:
            for _, other in st.others:
                names.extend(other.inputs)
        return tuple(dict.fromkeys(names))

    # -- structure --------------------------------------------------------------------------
    @property
    def rounds(self) -> list[Round]:
        """The job's rounds; raises JobDefinitionError when the stage order is impossible."""
        return self._split_rounds(complete=True)

    def _split_rounds(self, complete: bool) -> list[Round]:
        rounds: list[Round] = []
        maps: list[Stage] = []
        combine: Stage | None = None
        for stage in self.stages:
            if stage.kind == "map":
                if combine is not None:
                    raise JobDefinitionError(f"job {self.name!r}: a combine must be followed by a reduce, "
                                             "found a map after it")
                if stage.columns is not None and maps:
                    raise JobDefinitionError(f"job {self.name!r}: columns= is only meaningful on the first map of a round")
                maps.append(stage)
            elif stage.kind == "combine":
                if combine is not None:
                    raise JobDefinitionError(f"job {self.name!r}: two combines in one round; merge them into one function")
                combine = stage
            else:
                if combine is not None and stage.kind in ("sort", "join", "cogroup"):
                    raise JobDefinitionError(f"job {self.name!r}: a combine cannot precede a {stage.kind}; "
                                             "combine belongs to a reduce")
                if combine is not None and stage.aggs is not None:
                    raise JobDefinitionError(f"job {self.name!r}: reduce with aggs derives its own combine; "
                                             "drop the explicit combine")
                rounds.append(Round(len(rounds), tuple(maps), combine, stage))
                maps, combine = [], None
        if combine is not None:
            if not complete:
                return rounds
            raise JobDefinitionError(f"job {self.name!r}: the combine at the end has no reduce to feed; "
                                     "add .reduce(fn, by=...) after it")
        if maps or not rounds:
            rounds.append(Round(len(rounds), tuple(maps), None, None))
        return rounds

    def fingerprint(self, options: Mapping[str, Any] | None = None) -> str:
        """The job's identity for reruns and resume (see the module docstring): 16 hex digits.

        ``options`` are the run options that change results (``{"format": "csv"}``); tuning options
        (partition size, combine, speculation, skew) never belong here.
        """
        return job_fingerprint(self, options).digest

    # -- running ----------------------------------------------------------------------------
    def run(self, input: Any, output: str, **options: Any):
        """Run the job; same parameters as :func:`engine.run`. Returns a :class:`RunResult`."""
        from .runner import run    # late: runner depends on job (job <- plan <- compile <- runner)
        return run(self, input, output, **options)

    def explain(self, input: Any = None, **options: Any) -> str:
        """The plan as text: rounds, stages, and with ``input`` the splits and graph size."""
        from .plan import explain    # late: plan depends on job
        return explain(self, input, **options)

    def _repr_html_(self) -> str:
        """In a notebook: the plan drawn as a DAG of stages (inline SVG), the text plan beneath."""
        from .display import job_html     # late: the display draws plans (display -> plan -> job)
        return job_html(self)

    def __repr__(self) -> str:
        version = f", version={self.version!r}" if self.version is not None else ""
        inp = f", input={self.input!r}" if self.input is not None else ""
        return f"Job({self.name!r}, stages=[{', '.join(s.describe() for s in self.stages)}]{version}{inp})"


UNNAMED_INPUT = "input"
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _as_side(other: Any, what: str) -> Job:
    if isinstance(other, str):
        return Job(other, input=other)
    if not isinstance(other, Job):
        raise JobDefinitionError(f"{what} takes a Job (reading another named input) or an input name, got "
                                 f"{type(other).__name__}")
    return other


@dataclass(frozen=True)
class JobFingerprint:
    """A job's fingerprint and what it covers (shown by ``explain``)."""

    digest: str
    engine_version: str
    options: tuple[tuple[str, str], ...] = ()
    version: str | None = None        # pinned by the user: the code was not hashed
    functions: int = 0                # functions hashed by value
    modules: tuple[str, ...] = ()     # user modules shipped by value with them
    python: str = ""

    def covers(self) -> str:
        """One phrase: ``code of 3 functions from 2 user modules (a, b) by value, engine 0.1.0``."""
        opts = "".join(f", {k}={v}" for k, v in self.options)
        if self.version is not None:
            return f"pinned by version={self.version!r}, code not hashed; engine {self.engine_version}{opts}"
        mods = (f" from {len(self.modules)} user module{'s' if len(self.modules) != 1 else ''} "
                f"({', '.join(self.modules)})") if self.modules else ""
        n = self.functions
        return (f"code of {n} function{'s' if n != 1 else ''}{mods} by value, stage structure and "
                f"aggregations, engine {self.engine_version}, python {self.python}{opts}")


def _result_options(options: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """Options that change results, canonical: the default (Parquet input) is left out, so a plan
    without an input has the fingerprint of its runs over Parquet."""
    out = []
    for key, value in sorted((options or {}).items()):
        if value is None or (key == "format" and value == "parquet"):
            continue
        out.append((key, str(value)))
    return tuple(out)


def job_fingerprint(job: Job, options: Mapping[str, Any] | None = None) -> JobFingerprint:
    """The fingerprint of ``job`` with the result-changing run ``options``; see the module docstring.

    Raises :class:`JobDefinitionError` when the code reaches an object with no stable digest.
    """
    opts = _result_options(options)
    h = hashlib.sha256(f"job-fingerprint/2|{job.name}|engine {ENGINE_VERSION}|{opts!r}".encode())
    _structure(job, h, top=True)
    if job.version is not None:
        h.update(f"|pinned|{job.version}".encode())
        return JobFingerprint(h.hexdigest()[:16], ENGINE_VERSION, opts, version=job.version)
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"   # bytecode is specific to it
    labelled, counts = [], {}
    for stage in _all_stages(job):
        if stage.fn is not None:
            counts[stage.kind] = counts.get(stage.kind, 0) + 1
            labelled.append((f"{stage.kind} function {counts[stage.kind]} ({_fn_name(stage.fn)})", stage.fn))
    try:
        code = code_digest(labelled)
    except CodeNotHashable as exc:
        raise _not_hashable(job, exc) from exc
    h.update(f"|{sys.implementation.name} {python}|code {code.digest}".encode())
    return JobFingerprint(h.hexdigest()[:16], ENGINE_VERSION, opts, functions=code.functions,
                          modules=code.modules, python=python)


def _structure(job: Job, h: Any, top: bool = False) -> None:
    """Feed the shape of ``job`` (and of the jobs it joins) into ``h``; a single unnamed input adds
    nothing, so such jobs keep the fingerprint they had before inputs could be named."""
    if not top or job.input is not None:
        h.update(f"|input={job.input}|".encode())
    for stage in job.stages:
        h.update(f"|{stage.kind}|{stage.by}|{stage.descending}|{stage.columns}|".encode())
        if stage.where is not None:
            h.update(f"where {where_token(stage.where)};".encode())
        if stage.aggs is not None:
            for out, a in stage.aggs.items():
                h.update(f"{out}={a.token()};".encode())
        if stage.join is not None:
            h.update(f"join {stage.join!r};".encode())
        for label, other in stage.others:
            h.update(f"side {label}:{other.name}(".encode())
            _structure(other, h)
            h.update(b")")


def _all_stages(job: Job) -> list[Stage]:
    out = []
    for stage in job.stages:
        out.append(stage)
        for _, other in stage.others:
            out.extend(_all_stages(other))
    return out


def _not_hashable(job: Job, exc: CodeNotHashable) -> JobDefinitionError:
    if exc.shippable:
        return JobDefinitionError(
            f"job {job.name!r}: cannot fingerprint its code: {exc.where} is a {exc.type_name}, which has no "
            f"stable value to hash ({exc.reason}). Create it inside the function that uses it, or pin the "
            f"fingerprint yourself with Job({job.name!r}, version='...') and change the version whenever the "
            "code changes what the job computes")
    return JobDefinitionError(
        f"job {job.name!r}: {exc.where} is a {exc.type_name}, which cannot be pickled ({exc.reason}), so the "
        "workers could not receive it either; create it inside the function that uses it, or pass what it "
        "holds as plain data (pinning the fingerprint with version= would not help)")


def function_token(fn: Any) -> str:
    """A process-independent digest of one function and the code and data it reaches (16 hex digits)."""
    try:
        return code_digest([fn]).digest[:16]
    except CodeNotHashable as exc:
        raise JobDefinitionError(f"cannot fingerprint {_fn_name(fn)}: {exc}") from exc


__all__ = ["Job", "Stage", "Round", "MapStep", "filter_table", "needed_columns", "leading_where", "JobFingerprint",
           "job_fingerprint", "function_token", "UNNAMED_INPUT"]


def check_single_input(job: Job) -> None:
    """JobDefinitionError unless ``job`` reads one input (a run's ``where=`` filters that input)."""
    if job.inputs != (job.label,) or any(s.kind in ("join", "cogroup") for s in job.stages):
        raise JobDefinitionError(f"job {job.name!r} reads several inputs: a run's where= filters the input of a "
                                 "job that reads one; give each input its condition with .map(where=...) in the job")


def with_input_filter(job: Job, where: Any) -> Job:
    """``job`` whose input rows must first satisfy ``where`` (a ``pyarrow.compute.Expression``), as
    ``engine.run(..., where=)`` asks: merged into the first map's ``where=`` when the job starts with
    a map, else a map of its own in front (so it is pushed into the read either way)."""
    check_single_input(job)
    first = job.stages[0] if job.stages else None
    if first is not None and first.kind == "map":
        merged = where if first.where is None else (where & first.where)
        stages = (dataclasses.replace(first, where=merged),) + job.stages[1:]
    else:
        stages = (Stage("map", None, where=where),) + job.stages
    return dataclasses.replace(job, stages=stages)
