"""Bad-record isolation: find the rows a job's function fails on, set them aside, go on.

With ``on_error="reject"`` (:class:`engine.guards.Guards`), a map or reduce call that raises is
called again on parts of its rows (up to :data:`SPLIT_PARTS` parts of at least :data:`SPLIT_MIN_ROWS`
rows; halves below that), and so on for each part that fails, until the failing rows are single
rows (map: input rows; reduce: the rows of one key). The rows that pass keep their output (and
what the calls on them counted: a call that raised counts nothing, :mod:`engine.counters`);
each failing row is written, with the error, the traceback, the input file and the row's position,
to ``OUT/_rejected/part-*.parquet``. Those files are attempt files like any output file: the winning
attempt's are published with the run's commit and listed under ``"rejected"`` in its manifest,
every other attempt's are discarded, so a reader sees the rejected rows of exactly the committed run.

Rows a CSV or JSON reader cannot parse (broken quoting, a wrong number of fields, a value of the
wrong type) take the same path (stage ``read``; their text in ``raw``), and with
``on_bad_file="reject"`` so does a whole input file no reader can open (one row, stage ``file``).

The rejected files share one schema (:data:`SCHEMA`): a row's values are in ``record`` as JSON, so
rows of any stage can be read together::

    >>> import engine.rejects as rj
    >>> rj.SCHEMA.names                                         # doctest: +NORMALIZE_WHITESPACE
    ['run_id', 'stage', 'round', 'partition', 'file', 'split', 'row', 'key', 'error_type', 'error',
     'location', 'traceback', 'record', 'raw']

Costs: nothing while no call fails (the rows go through the same calls as without isolation); a
batch of ``n`` rows with one bad row costs about ``n`` rows more: the failed call, then the parts
that fail again (a sixteenth, a 256th... of the batch; by halves it was about ``2n``), and
:data:`PROBES` calls on single rows (the check for a function that fails on every row).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import posixpath
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from . import counters
from .errors import EngineError, TooManyRejectedError

REJECTED_DIR = "_rejected"

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("stage", pa.string()),        # map | reduce | read | file
    ("round", pa.int32()),
    ("partition", pa.int32()),
    ("file", pa.string()),         # the input file (map, read, file); null for a reduce
    ("split", pa.string()),        # the part of the file the task read, when not all of it
    ("row", pa.int64()),           # 0-based data row in ``split`` (the whole file unless ``split`` says)
    ("key", pa.string()),          # reduce: the key's values as JSON
    ("error_type", pa.string()),
    ("error", pa.string()),
    ("location", pa.string()),     # the user's file:line where the error was raised, if known
    ("traceback", pa.string()),
    ("record", pa.string()),       # the row's values as a JSON object
    ("raw", pa.string()),          # read: the text the reader could not parse
])

_TRACEBACK_CHARS = 4000
_RECORD_CHARS = 100_000
SAMPLE = 3                          # rejected rows a task describes to the driver (for error messages)
# A call failing on a batch of at least SYSTEMATIC_ROWS rows, and then on each of PROBES rows (or keys)
# spread evenly over it, is a bug in the function, not bad records: the run stops instead of rejecting
# (and bisecting) every row.
SYSTEMATIC_ROWS = 1024
PROBES = 16
# A failing call's rows are called again in up to SPLIT_PARTS parts of at least SPLIT_MIN_ROWS rows
# (halves below that): with one bad row in n rows, the failing parts add n/16 + n/256 + ... rows to
# the failed call's n, where halving added n/2 + n/4 + ... twice over (measured on word count with one
# bad line per million: the isolation's extra map work about halved; benchmarks/rejects_bench.py).
SPLIT_PARTS = 16
SPLIT_MIN_ROWS = 1024


class SystematicFailure(EngineError, RuntimeError):
    """A function failed on every row of a batch: not bad records but a bug; never rejected."""

    engine_deterministic = True


def _not_data(exc: BaseException, guards: Any = None) -> bool:
    """Errors never blamed on rows: the engine's own, cancellation, memory, transient network errors
    (connection refused or reset, timeouts) and the classes ``retry_on`` retries: the task is retried."""
    from .tasks import TaskCancelled
    if isinstance(exc, (EngineError, TaskCancelled, MemoryError, RecursionError)):
        return True
    if guards is not None and guards.retry_on and guards.attempts_for(exc, 0) != 0:
        return guards.attempts_for(exc, 1) > 1        # the run says how to treat this class
    from .retrypolicy import is_transient          # a network error: the task is retried, no row is blamed
    return is_transient(exc)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _records(table: pa.Table) -> list[str]:
    out = []
    for row in table.to_pylist():
        text = json.dumps(row, default=_json_default, ensure_ascii=False)
        out.append(text if len(text) <= _RECORD_CHARS else text[:_RECORD_CHARS] + "…")
    return out


def _where(exc: BaseException) -> tuple[str | None, str]:
    """(the user's file:line, the traceback) of a function's error: the user's frames when they are
    known (their real file, not the pickled code's), else the whole traceback of this exception alone."""
    location, text = None, ""
    with contextlib.suppress(Exception):
        from .telemetry import error_info
        info = error_info(exc)
        location = info.get("location")
        user = info.get("user_traceback")
        if user:
            text = user if isinstance(user, str) else "".join(user)
    if not text:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
    return location, (text if len(text) <= _TRACEBACK_CHARS else "…" + text[-_TRACEBACK_CHARS:])


class TaskRejects:
    """One task attempt's rejected rows: collected, counted against the limit, written as one file."""

    def __init__(self, ctx: Any, stage: str, partition: int, attempt: int, *, split: Any = None) -> None:
        self.ctx, self.stage, self.partition, self.attempt = ctx, stage, partition, attempt
        guards = ctx.guards
        self.limit = guards.max_rejected if guards is not None and isinstance(guards.max_rejected, int) else None
        self.file = split.path if split is not None and split.schema is not None else None
        self.split = None
        if split is not None and (split.row_groups is not None or split.byte_range is not None):
            self.split = split.describe()[len(split.path):].strip() or None
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.count = 0
        self.unread = 0                   # rows (or files) a reader set aside: input rows no stage counted
        self.reader_invalid: list[int] | None = None   # rows a reader set aside: later rows' file positions skip them
        self.calls_ok = 0                 # calls that succeeded (for telling a bug from bad records)
        self.sample: list[str] = []
        self._writer = None

    # -- adding ------------------------------------------------------------------------------
    def _add(self, n: int, *, stage: str, exc_type: str, error: str, location: str | None, tb: str | None,
             rows: Sequence[int | None], records: Sequence[str | None], raws: Sequence[str | None],
             file: str | None, key: str | None = None) -> None:
        c = self.columns
        for i in range(n):
            c["run_id"].append(self.ctx.run_id)
            c["stage"].append(stage)
            c["round"].append(self.ctx.round)
            c["partition"].append(self.partition)
            c["file"].append(file)
            c["split"].append(self.split if file is not None else None)
            c["row"].append(rows[i])
            c["key"].append(key)
            c["error_type"].append(exc_type)
            c["error"].append(error)
            c["location"].append(location)
            c["traceback"].append(tb)
            c["record"].append(records[i])
            c["raw"].append(raws[i])
        self.count += n
        if stage in ("read", "file"):
            self.unread += n
        if len(self.sample) < SAMPLE:
            where = f"{file} row {rows[0]}" if file is not None and rows and rows[0] is not None else \
                (f"key {key}" if key is not None else (file or f"partition {self.partition}"))
            self.sample.append(f"{where}: {exc_type}: {error}"[:300])
        if len(c["run_id"]) >= 4096:
            self._flush()
        if self.limit is not None and self.count > self.limit:
            raise TooManyRejectedError(
                f"more than max_rejected={self.limit} rows rejected (in {self.ctx.job!r}, round {self.ctx.round + 1}, "
                f"{self.stage} partition {self.partition} alone); e.g. {self.sample[0]}. Nothing was committed: fix "
                "the function or the input, or raise max_rejected", rejected=self.count, limit=self.limit,
                sample=self.sample)

    def add_rows(self, rows: pa.Table, exc: BaseException, first_row: int | None, *, key: str | None = None) -> None:
        """``rows`` (a function failed on them with ``exc``); ``first_row``: the first one's position."""
        n = rows.num_rows
        if n == 0:
            return
        stage = "reduce" if key is not None else "map"
        positions = [first_row + i if first_row is not None else None for i in range(n)]
        if self.reader_invalid and first_row is not None:    # rows read after some were set aside by the reader
            positions = [_file_row(p, self.reader_invalid) for p in positions]
        location, tb = _where(exc)
        self._add(n, stage=stage, exc_type=type(exc).__name__, error=str(exc)[:2000], location=location,
                  tb=tb, rows=positions, records=_records(rows), raws=[None] * n,
                  file=self.file if key is None else None, key=key)

    def add_unparsed(self, row: int | None, raw: str | None, error: str, record: str | None = None) -> None:
        """A row a reader could not parse (its text, or its values as read, and why)."""
        self._add(1, stage="read", exc_type="ParseError", error=error[:2000], location=None, tb=None, rows=[row],
                  records=[record], raws=[raw[:_RECORD_CHARS] if raw is not None else None], file=self.file)

    def add_file(self, path: str, error: str) -> None:
        """A whole input file no reader could open (``on_bad_file="reject"``)."""
        self._add(1, stage="file", exc_type="UnreadableFile", error=error[:2000], location=None, tb=None,
                  rows=[None], records=[None], raws=[None], file=path)

    # -- writing -----------------------------------------------------------------------------
    def _flush(self) -> None:
        if not self.columns["run_id"]:
            return
        from .commit import ParquetAttemptWriter
        table = pa.table({name: pa.array(values, type=SCHEMA.field(name).type)
                          for name, values in self.columns.items()}, schema=SCHEMA)
        if self._writer is None:
            # A stage-specific partition number keeps names distinct across the run's stages.
            number = self.ctx.round * 10000 + (5000 if self.stage != "map" else 0) + self.partition % 5000
            self._writer = ParquetAttemptWriter(self.ctx.out_fs, self.ctx.out_root, self.ctx.run_id, number,
                                                self.attempt, fence=self.ctx.fence, directory=REJECTED_DIR)
        self._writer.write(table)
        self.columns = {name: [] for name in SCHEMA.names}

    def close(self) -> dict | None:
        """The task result's ``rejected`` field (None when nothing was rejected)."""
        if self.count == 0:
            return None
        self._flush()
        message = self._writer.close(SCHEMA)
        return {"count": self.count, "message": message, "sample": self.sample, "unread": self.unread}

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.abort()


# ---------------------------------------------------------------------------------------------
# Bisection


def isolate(call: Callable[[pa.Table], list], table: pa.Table, rejects: TaskRejects, *,
            first_row: int | None = None, what: str = "the function") -> list:
    """``call(table)``, or, if it raises on some rows, ``call`` on the rows it does not fail on (found
    by splitting the rows into parts, and a failing part again, down to single rows; the failing rows
    go to ``rejects``; the outputs stay in row order). ``call`` returns a list of output tables."""
    out: list = []
    failure = _try(call, table, out, rejects)
    if failure is None:
        return out
    n = table.num_rows
    if n >= SYSTEMATIC_ROWS and _fails_everywhere(call, [table.slice(i, 1) for i in _probes(n)], rejects):
        raise SystematicFailure(f"{what} failed on a {n:,}-row batch and on each of {PROBES} rows spread over it, "
                                f"tried alone ({type(failure).__name__}: {str(failure)[:300]}): that is a bug in "
                                "the function, not bad records, so the run stops and commits nothing") from failure
    _bisect(call, table, 0, n, failure, rejects, first_row, out)
    return _unified(out)


def _probes(n: int) -> list[int]:
    return sorted({int(i * (n - 1) / (PROBES - 1)) for i in range(PROBES)})


def _fails_everywhere(call, parts: list, rejects: TaskRejects) -> bool:
    """True when ``call`` fails on every one of ``parts`` (single rows or keys spread over a batch);
    the output of a probe is thrown away, and so are its counters (the rows are called again)."""
    return all(_try(call, part, [], rejects, keep=False) is not None for part in parts)


def _unified(pieces: list) -> list:
    """The pieces of one call's output with one schema (a piece computed from a few rows may infer a
    column as null, or narrower, than the others)."""
    if len(pieces) < 2:
        return pieces
    first = pieces[0].schema
    if all(p.schema.equals(first) for p in pieces[1:]):
        return pieces
    try:
        target = pa.unify_schemas([p.schema for p in pieces], promote_options="permissive")
        return [p.cast(target) if not p.schema.equals(target) else p for p in pieces]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pieces      # the writer names the difference


def _bisect(call, table: pa.Table, lo: int, hi: int, exc: BaseException, rejects: TaskRejects,
            first_row: int | None, out: list) -> None:
    if hi - lo == 1:
        rejects.add_rows(table.slice(lo, 1), exc, None if first_row is None else first_row + lo)
        return
    for a, b in _parts(lo, hi):
        failed = _try(call, table.slice(a, b - a), out, rejects)
        if failed is not None:     # recursed outside the except block: no chain of contexts
            _bisect(call, table, a, b, failed, rejects, first_row, out)


def _parts(lo: int, hi: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` (at least two items) cut into up to SPLIT_PARTS nearly equal parts of at least
    SPLIT_MIN_ROWS items, and never fewer than two parts.

    >>> _parts(0, 5), len(_parts(0, 131072)), _parts(0, 131072)[1], len(_parts(0, 4096))
    ([(0, 2), (2, 5)], 16, (8192, 16384), 4)
    """
    n = hi - lo
    k = max(2, min(SPLIT_PARTS, n // SPLIT_MIN_ROWS))
    edges = [lo + n * i // k for i in range(k + 1)]
    return list(zip(edges, edges[1:]))


def _try(call, part: pa.Table, out: list, rejects: TaskRejects, keep: bool = True) -> BaseException | None:
    """``call(part)`` into ``out``; the data error it raised, if any (engine errors propagate). What the
    call counted (:mod:`engine.counters`) counts only if it succeeded (and ``keep``)."""
    try:
        with counters.tentative(keep):
            pieces = call(part)
        out.extend(pieces)
        rejects.calls_ok += 1
        return None
    except Exception as exc:  # noqa: BLE001
        if _not_data(exc, getattr(rejects.ctx, "guards", None)):
            raise
        return exc


def isolate_groups(call: Callable[[pa.Table], list], table: pa.Table, keys: Sequence[str],
                   rejects: TaskRejects, what: str = "the reduce function") -> list:
    """A reduce call with bisection over whole keys: the rows of a key that fails are rejected together."""
    out: list = []
    failure = _try(call, table, out, rejects)
    if failure is None:
        return out
    import pyarrow.compute as pc
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys])     # nulls last
    sorted_t = table.take(order)
    n = sorted_t.num_rows
    change = None
    for k in keys:
        col = sorted_t.column(k)
        a, b = col.slice(1), col.slice(0, n - 1)
        differ = pc.fill_null(pc.not_equal(a, b), pc.xor(pc.is_null(a), pc.is_null(b)))
        change = differ if change is None else pc.or_(change, differ)
    starts = [0] + ([int(i) + 1 for i in pc.indices_nonzero(change).to_pylist()] if n > 1 else []) + [n]
    groups = len(starts) - 1
    if groups >= PROBES and n >= SYSTEMATIC_ROWS and _fails_everywhere(
            call, [sorted_t.slice(starts[g], starts[g + 1] - starts[g]) for g in _probes(groups)], rejects):
        raise SystematicFailure(f"{what} failed on a partition of {groups:,} keys and on each of {PROBES} of its keys "
                                f"tried alone ({type(failure).__name__}: {str(failure)[:300]}): that is a bug in "
                                "the function, not bad records, so the run stops and commits nothing") from failure
    _bisect_groups(call, sorted_t, starts, 0, groups, failure, rejects, keys, out)
    return _unified(out)


def _bisect_groups(call, table: pa.Table, starts: list[int], g0: int, g1: int, exc: BaseException,
                   rejects: TaskRejects, keys: Sequence[str], out: list) -> None:
    if g1 - g0 == 1:
        rows = table.slice(starts[g0], starts[g1] - starts[g0])
        key = json.dumps({k: rows.column(k)[0].as_py() for k in keys}, default=_json_default, ensure_ascii=False)
        rejects.add_rows(rows, exc, None, key=key)
        return
    for a, b in _parts(g0, g1):        # parts of the keys, as the map's of the rows
        failed = _try(call, table.slice(starts[a], starts[b] - starts[a]), out, rejects)
        if failed is not None:
            _bisect_groups(call, table, starts, a, b, failed, rejects, keys, out)


# ---------------------------------------------------------------------------------------------
# Readers that set unparsable rows aside (after the fast reader failed on the file)

_CSV_NULLS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "N/A",
              "NA", "NULL", "NaN", "n/a", "nan", "null"]


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _cast_rows(strings: pa.Table, target: pa.Schema) -> pa.Table:
    import pyarrow.compute as pc
    arrays = []
    nulls = pa.array(_CSV_NULLS)
    for f in target:
        col = strings.column(f.name)
        if _is_string(f.type):
            arrays.append(col.cast(f.type))
            continue
        col = pc.if_else(pc.is_in(col, value_set=nulls), pa.scalar(None, pa.string()), col)
        if pa.types.is_boolean(f.type):
            low = pc.utf8_lower(col)
            ok = pc.or_kleene(pc.is_null(low), pc.is_in(low, value_set=pa.array(["true", "false", "1", "0"])))
            if not pc.all(ok).as_py():
                raise pa.ArrowInvalid(f"column {f.name!r}: not a boolean")
            arrays.append(pc.if_else(pc.is_null(low), pa.scalar(None, pa.bool_()),
                                     pc.is_in(low, value_set=pa.array(["true", "1"]))))
            continue
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise pa.ArrowInvalid(f"column {f.name!r}: {exc}") from None
    return pa.table(arrays, schema=target)


def read_csv_rejecting(fs, split: Any, rejects: TaskRejects, *, skip: int, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of a CSV split that parse and convert to the input's types (after the first ``skip``
    good rows, which the fast reader already delivered); the others go to ``rejects``."""
    import pyarrow.csv as pcsv
    from .datasets import _compression, _csv_parse
    target = split.schema
    invalid: list[int] = []           # data rows (0-based) the parser skipped
    rejects.reader_invalid = []       # ... and those that did not convert: every row set aside here

    def handler(row) -> str:
        number = row.number - 2 if row.number is not None and row.number > 0 else None   # 1-based, header first
        if number is not None:
            invalid.append(number)
            bisect.insort(rejects.reader_invalid, number)
        rejects.add_unparsed(number, row.text,
                             f"CSV parse error: expected {row.expected_columns} fields, got {row.actual_columns}")
        return "skip"

    parse = _csv_parse(split.path)
    parse = pcsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=handler)
    good = 0                           # good rows seen (parsed and converted or not)
    with fs.open(split.path, "rb", compression=_compression(split.path)) as f:
        reader = pcsv.open_csv(f, parse_options=parse, read_options=pcsv.ReadOptions(block_size=1 << 22,
                                                                                     use_threads=False),
                               convert_options=pcsv.ConvertOptions(
                                   column_types={n: pa.string() for n in target.names}, strings_can_be_null=False))
        for batch in reader:
            strings = pa.Table.from_batches([batch]).select(target.names)
            start = good
            good += strings.num_rows
            if good <= skip:
                continue
            if start < skip:
                strings = strings.slice(skip - start)
                start = skip

            def convert(part: pa.Table) -> list:
                return [_cast_rows(part, target)]

            try:
                kept = convert(strings)
            except pa.ArrowInvalid as exc:
                kept = []
                _bisect_convert(convert, strings, 0, strings.num_rows, exc, rejects, start, invalid, kept)
            for t in kept:
                yield from t.to_batches(max_chunksize=batch_rows)


def _file_row(good_index: int, invalid: list[int]) -> int:
    """The data row in the file of the ``good_index``-th row the parser kept (skipped rows counted)."""
    row = good_index
    for bad in sorted(invalid):
        if bad <= row:
            row += 1
        else:
            break
    return row


def _bisect_convert(convert, strings: pa.Table, lo: int, hi: int, exc: BaseException, rejects: TaskRejects,
                    start: int, invalid: list[int], out: list) -> None:
    if hi - lo == 1:
        row = strings.slice(lo, 1)
        record = _records(row)[0]
        where = _file_row(start + lo, invalid)
        rejects.add_unparsed(where, None, f"CSV conversion error: {exc}", record=record)
        bisect.insort(rejects.reader_invalid, where)
        return
    mid = (lo + hi) // 2
    for a, b in ((lo, mid), (mid, hi)):
        try:
            out.extend(convert(strings.slice(a, b - a)))
        except pa.ArrowInvalid as e:
            _bisect_convert(convert, strings, a, b, e, rejects, start, invalid, out)


def read_json_rejecting(fs, split: Any, rejects: TaskRejects, *, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The lines of a JSON-lines split that parse with the input's schema; the others go to ``rejects``."""
    import pyarrow.json as pjson
    from .datasets import _compression
    with fs.open(split.path, "rb", compression=_compression(split.path)) as f:
        data = f.read()
    lines = [(i, line) for i, line in enumerate(data.split(b"\n")) if line.strip()]
    parse = pjson.ParseOptions(explicit_schema=split.schema, unexpected_field_behavior="ignore")
    # rows are line numbers (0-based): blank lines and lines set aside are skipped by later rows' positions
    blank = sorted(set(range(data.count(b"\n") + 1)) - {i for i, _ in lines})
    rejects.reader_invalid = blank

    def parse_lines(chunk: list) -> list:
        table = pjson.read_json(io.BytesIO(b"\n".join(line for _, line in chunk)), parse_options=parse)
        if table.num_rows != len(chunk):
            raise pa.ArrowInvalid(f"{len(chunk)} lines gave {table.num_rows} rows")
        return [table.select(split.schema.names)]

    def bisect_lines(chunk: list, exc: BaseException, out: list) -> None:
        if len(chunk) == 1:
            i, line = chunk[0]
            rejects.add_unparsed(i, line.decode("utf-8", "replace"), f"JSON parse error: {exc}")
            bisect.insort(rejects.reader_invalid, i)
            return
        mid = len(chunk) // 2
        for part in (chunk[:mid], chunk[mid:]):
            try:
                out.extend(parse_lines(part))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                bisect_lines(part, e, out)

    for s in range(0, len(lines), batch_rows):
        chunk = lines[s:s + batch_rows]
        try:
            tables = parse_lines(chunk)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            tables = []
            bisect_lines(chunk, exc, tables)
        for t in tables:
            yield from t.to_batches(max_chunksize=batch_rows)


# ---------------------------------------------------------------------------------------------
# The driver's side: counting, the limit, the run's rejected files


class RunRejects:
    """What a run's winning attempts rejected: counted against the limit as results arrive."""

    def __init__(self, guards: Any, report: Any) -> None:
        self.guards, self.report = guards, report
        self.messages: list[dict] = []
        self.sample: list[str] = []
        self.count = 0
        self.unread = 0                   # input rows the readers set aside (part of the input all the same)
        self.input_rows: int | None = None
        self.driver_rows: list[tuple[str, str]] = []     # (file, error) found while planning

    def note(self, value: dict) -> None:
        """A winning attempt's result (its ``rejected`` field, if any)."""
        rejected = value.get("rejected")
        if not rejected:
            return
        self.count += int(rejected["count"])
        self.unread += int(rejected.get("unread") or 0)
        self.messages.append(rejected["message"])
        for s in rejected.get("sample") or []:
            if len(self.sample) < SAMPLE:
                self.sample.append(s)
        self.report.rejected = self.count
        self.report.rejected_sample = list(self.sample)
        self.check()

    def check(self, final: bool = False) -> None:
        """TooManyRejectedError once the count is past the limit (a fraction: once the input rows are known)."""
        rows = self.input_rows + self.unread if self.input_rows is not None else None
        limit = self.guards.rejected_limit(rows)
        if limit is None or self.count <= limit:
            return
        what = (f"{self.guards.max_rejected:.4g} of {rows:,} input rows = {limit:,}"
                if isinstance(self.guards.max_rejected, float) else f"{limit:,}")
        raise TooManyRejectedError(
            f"{self.count:,} rows rejected, more than max_rejected ({what}); e.g. "
            f"{self.sample[0] if self.sample else '?'}. Nothing was committed: fix the function or the input "
            "(the rejected rows are described in the run's report), or raise max_rejected",
            rejected=self.count, limit=limit, sample=self.sample)


def discard_messages(fs, values: Sequence[dict]) -> None:
    """Delete the rejected files of attempts that lost or whose stage failed."""
    from .commit import discard
    discard(fs, [v["rejected"]["message"] for v in values if v and v.get("rejected")])


def rejected_entries(doc: dict) -> list[dict]:
    """The manifest's rejected files (each ``{"path", "rows", "bytes", "crc32c", "partition"}``)."""
    entries = doc.get("rejected")
    return list(entries) if isinstance(entries, list) else []


def summarize(path: str, storage_options: dict | None = None) -> dict:
    """``mapreduce rejected OUT``: counts by stage, error and file of a committed output's rejected rows."""
    from .commit import load_manifest
    from .datasets import filesystem
    from .errors import ManifestError
    fs, out = filesystem(path, storage_options)
    manifest = load_manifest(fs, out)
    if manifest is None:
        raise ManifestError(f"{out} has no committed output (no manifest): nothing to summarize",
                            [f"{out}: no manifest"])
    entries = rejected_entries(manifest.doc)
    table = read_rejected(path, storage_options)
    summary: dict = {"output": out, "run_id": manifest.doc.get("run_id"), "rows": table.num_rows,
                     "files": [posixpath.join(out, e["path"]) for e in entries]}
    if table.num_rows:
        grouped = table.group_by(["stage", "error_type", "error"]).aggregate([([], "count_all")])
        rows = sorted(grouped.to_pylist(), key=lambda r: -r["count_all"])
        summary["by_error"] = [{"stage": r["stage"], "error_type": r["error_type"], "error": r["error"],
                                "rows": r["count_all"]} for r in rows[:50]]
        runs = table.group_by(["run_id"]).aggregate([([], "count_all")]).to_pylist()
        summary["runs"] = {r["run_id"]: r["count_all"] for r in runs}
        files = table.group_by(["file"]).aggregate([([], "count_all")]).to_pylist()
        summary["by_file"] = sorted(({"file": r["file"], "rows": r["count_all"]} for r in files),
                                    key=lambda r: -r["rows"])[:50]
        summary["first"] = table.slice(0, 5).select(["stage", "file", "row", "key", "error_type", "error",
                                                     "location", "record", "raw"]).to_pylist()
    return summary


def read_rejected(path: str, storage_options: dict | None = None) -> pa.Table:
    """The rejected rows of a committed output (the files its manifest lists, checked against their
    recorded size and CRC32C); an empty table of :data:`SCHEMA` if it rejected none.

    >>> engine.rejects.read_rejected("out/wc").num_rows          # doctest: +SKIP
    3
    """
    import pyarrow.parquet as pq
    from .commit import _stored_buffer, load_manifest
    from .datasets import filesystem
    from .errors import IntegrityError, ManifestError
    fs, out = filesystem(path, storage_options)
    manifest = load_manifest(fs, out)
    if manifest is None:
        raise ManifestError(f"{out} has no committed output (no manifest)", [f"{out}: no manifest"])
    tables = []
    for e in rejected_entries(manifest.doc):
        where = posixpath.join(out, e["path"])
        buf, crc = _stored_buffer(fs, where, e["bytes"])
        if buf.size != e["bytes"] or crc != e["crc32c"]:
            raise IntegrityError(f"{where}: rejected-rows file does not match its manifest entry (size or CRC32C)",
                                 [where])
        tables.append(pq.read_table(pa.BufferReader(buf)))
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


__all__ = ["SCHEMA", "REJECTED_DIR", "TaskRejects", "RunRejects", "isolate", "isolate_groups",
           "read_csv_rejecting", "read_json_rejecting", "read_rejected", "summarize", "SystematicFailure"]
