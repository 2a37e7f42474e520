"""Inputs: fsspec URLs and paths → input splits (one map task each) and an input snapshot.

A *split* is the unit of work of one map task: a whole file, a run of Parquet row groups of a
large file, or a byte range of a large text file (a split that starts mid-line skips to the next
line, and the last line of a split is read to its end, as Hadoop's line reader does). Small files
are never packed together, so task boundaries stay predictable.

The *snapshot* lists every input file with its size and modification time or ETag; it feeds the
run id, so a rerun on unchanged input is recognised. Files in Hive partitions that the job's
``where`` conditions rule out are not in it (:func:`resolve_input`): they are never read.

*Pushdown* (:func:`prune_splits`): a ``where`` condition drops the splits of partitions it rules
out and the Parquet row groups whose statistics rule it out, decided in the driver from the
partition values and the footers already read, so a pruned split is never a task.

The snapshot also fixes the input's *schema*, one for every job kind: each file's schema is read
before any task runs (Parquet: the footer, one ranged read of the last 64 KiB; Arrow IPC: the file's
schema; CSV / JSON lines: the types pyarrow's reader infers from the file's first MiB; text: one
``text`` column) and they are unified by safe promotions only (:func:`engine.arrowtypes.common_type`:
integers to wider integers or to floats, ``string`` → ``large_string``, ``binary`` → ``large_binary``,
view types to plain types, dictionaries to their values, ``null`` to anything; a column a file lacks
reads as nulls there). Any other disagreement raises :class:`SchemaError` at once, naming the column,
both types and one file of each. Every batch a task reads is then conformed to the unified schema
(safe casts: a value that does not fit, such as an integer above 2**53 in a column unified to
``double``, fails that task with the file and column named; CSV and JSON files are parsed with the
unified types given explicitly). View types (``string_view``, ``binary_view``, ``list_view``, as
Polars, DataFusion and DuckDB write them) are always read as plain ``string``/``binary``/``list``,
because many pyarrow kernels (``take``, hence ``filter``) have none for them.

>>> spec = resolve_input("data/text/")                     # doctest: +SKIP
>>> [s.path for s in spec.splits][:2]                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import stat
import posixpath
import re
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import pyarrow as pa

from . import config
from .arrowtypes import common_type, plain_type
from .errors import EmptyInputError, InputChangedError, InputError, SchemaError
from .hive import parse_partition_dir

FORMATS = ("parquet", "ipc", "csv", "json", "text")

_EXTENSIONS = {
    ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet",
    ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc", ".arrows": "ipc",
    ".csv": "csv", ".tsv": "csv",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".txt": "text", ".text": "text", ".log": "text", ".md": "text",
}

_FORMAT_ALIASES = {"feather": "ipc", "arrow": "ipc", "jsonl": "json", "ndjson": "json", "txt": "text"}


@dataclass(frozen=True)
class Split:
    """One map task's share of the input."""

    index: int
    path: str
    format: str
    size: int
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None
    partition_values: tuple[tuple[str, Any], ...] = ()
    # The input's unified schema (file columns, without partition columns); every batch read from
    # this split is conformed to it. None for engine-written intermediate inputs.
    schema: pa.Schema | None = field(default=None, repr=False, compare=False)
    # The file as the snapshot saw it, ``(size, ETag, modification time)`` (see :func:`file_version`); a
    # task that finds it otherwise fails with InputChangedError. None for engine-written intermediate inputs.
    snapshot: tuple[int, str | None, float | None] | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        extra = ""
        if self.row_groups == ():
            extra = " (nothing left to read after pruning)"
        elif self.row_groups is not None:
            rg = self.row_groups
            if rg[-1] - rg[0] == len(rg) - 1:
                extra = f" row groups {rg[0]}..{rg[-1]}"
            else:       # pruned by statistics: not a run
                extra = " row groups " + ",".join(map(str, rg[:8])) + (f",... ({len(rg)})" if len(rg) > 8 else "")
        elif self.byte_range is not None:
            extra = f" bytes {self.byte_range[0]}..{self.byte_range[1]}"
        return f"{self.path}{extra}"


@dataclass(frozen=True)
class InputSpec:
    """A resolved input: its filesystem, format, splits and snapshot."""

    fs: fsspec.AbstractFileSystem
    format: str
    splits: tuple[Split, ...]
    snapshot: tuple[dict, ...]
    partition_types: dict[str, pa.DataType] = field(default_factory=dict)
    read_options: dict = field(default_factory=dict)
    schema: pa.Schema | None = None     # unified schema of the files' columns (see ``unify_schemas``)
    # Parquet footers (``FileMetaData``) by path, kept from the snapshot for row-group pruning.
    footers: dict = field(default_factory=dict, repr=False, compare=False)
    pruned_files: int = 0               # files left out of the snapshot: their partitions cannot match ``where``
    bad_files: tuple[tuple[str, str], ...] = ()   # (path, error): unreadable files set aside (on_bad_file="reject")

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.snapshot)

    @property
    def protocol(self) -> str:
        p = self.fs.protocol
        return p[0] if isinstance(p, (tuple, list)) else p


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a URL or local path; local paths become absolute (workers may run elsewhere)."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {url!r}: {exc}") from exc
    if _is_local(fs):
        path = os.path.abspath(path)
    return fs, path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local disk filesystem."""
    return _is_local(fs)


def is_s3(fs) -> bool:
    """True for S3 file systems (s3fs), whose conditional writes the commit and the lease rely on."""
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocol)

def precondition_failed(exc: BaseException) -> bool:
    """True when S3 refused a conditional write (412, or a conflicting conditional write in flight)."""
    seen = 0
    while exc is not None and seen < 5:
        text = f"{type(exc).__name__} {exc}"
        if isinstance(exc, FileExistsError) or "PreconditionFailed" in text or "412" in text \
                or "pre-condition" in text or "ConditionalRequestConflict" in text:
            return True
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and (
                response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")
                or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def infer_format(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(posixpath.splitext(name)[1])


def normalize_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    fmt = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def _hidden(relpath: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relpath.split("/") if part)


def _find_local(root: str) -> dict[str, dict]:
    """``fs.find(root, detail=True)`` of a local directory, as fsspec describes the files (size, mtime,
    symlinks followed), by ``os.scandir`` and without descending into ``_``/``.`` directories, whose
    files are never input: a year of daily partitions lists in 3 ms, not 30."""
    found: dict[str, dict] = {}
    stack = [root.rstrip("/") or "/"]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            try:
                st = e.stat()                       # follows symlinks, as fsspec's info does
            except OSError:
                continue
            path = f"{d.rstrip('/')}/{e.name}"
            if stat.S_ISDIR(st.st_mode):
                if not e.name.startswith(("_", ".")):
                    stack.append(path)
            else:
                found[path] = {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime}
    return found


def _file_token(info: dict) -> str:
    for key in ("ETag", "etag", "md5"):
        if info.get(key):
            return str(info[key]).strip('"')
    for key in ("mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            value = info[key]
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


def file_version(info: dict) -> tuple[int, str | None, float | None]:
    """``(size, ETag, modification time)`` of a file as a listing or ``info()`` describes it; the time as
    seconds since the epoch whether the store gives a number or a datetime (listings and ``info()`` of one
    store may differ there), None for what the store does not say."""
    etag = next((str(info[k]).strip('"') for k in ("ETag", "etag", "md5") if info.get(k)), None)
    when = None
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        with contextlib.suppress(TypeError, ValueError, OverflowError, OSError):
            when = float(value.timestamp()) if hasattr(value, "timestamp") else float(value)
            break
    return int(info.get("size") or 0), etag, when


def _parse_hive(relpath: str) -> list[tuple[str, str | None]]:
    """The ``(column, value)`` pairs of the ``key=value`` directories of a file's relative path,
    decoded as Hive writes them (:mod:`engine.hive`): names and values unescaped (``eu%2Fwest`` is
    ``eu/west``), ``__HIVE_DEFAULT_PARTITION__`` (a null or empty value) is None."""
    return parse_partition_dir(relpath.rsplit("/", 1)[0] if "/" in relpath else "")


_INT64 = re.compile(r"[+-]?[0-9]{1,19}")


def _infer_partition_type(values: list[str | None]) -> pa.DataType:
    """``int64`` when every non-null value is a decimal integer that fits, else ``string`` (also when
    every value is null)."""
    present = [v for v in values if v is not None]
    if present and all(_INT64.fullmatch(v) and -2 ** 63 <= int(v) < 2 ** 63 for v in present):
        return pa.int64()
    return pa.string()


def resolve_input(source: Any, storage_options: dict | None = None, *, format: str | None = None,
                  split_size: int | None = None, where: Any = None) -> InputSpec:
    """Resolve a path, URL, list of paths or ``pyarrow.dataset.Dataset`` into splits and a snapshot.

    Directories are listed recursively; names starting with ``_`` or ``.`` are skipped (they are
    engine or tool metadata); ``key=value`` directories become partition columns.

    ``where`` (a ``pyarrow.compute.Expression``; every reader of the input needs only rows satisfying
    it) prunes Hive partitions before anything else is read: the files of a partition whose values
    cannot satisfy it are left out of the snapshot, so their footers are never read and a new
    partition it excludes does not change the run id. This needs the expression to be decidable from
    the partition columns alone with the other columns' types unknown (comparisons, arithmetic,
    ``and``/``or``); otherwise every file stays and pruning happens per split (see :func:`prune_splits`).
    """
    fmt = normalize_format(format)
    split_size = split_size or config.parse_size(config.get("split-size"), name="split-size")
    paths: Sequence[str]
    fs: fsspec.AbstractFileSystem | None = None
    pads = sys.modules.get("pyarrow.dataset")    # a dataset given here was made with it: no import (0.25 s)
    # (another thread may be importing pyarrow.dataset right now: its class may not exist yet)
    is_dataset = pads is not None and isinstance(source, getattr(pads, "FileSystemDataset", ()))
    if is_dataset:
        fs = _fsspec_from_arrow(source.filesystem)
        paths = list(source.files)
        fmt = fmt or normalize_format(source.format.default_extname or None)
    elif isinstance(source, (str, os.PathLike)):
        paths = [os.fspath(source)]
    elif isinstance(source, Sequence) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        paths = [os.fspath(p) for p in source]
    else:
        raise InputError(f"input must be a path, a URL, a list of paths or a pyarrow dataset; got {type(source).__name__}")

    files: list[tuple[str, str, dict]] = []  # (path, relpath for hive parsing, info)
    for p in paths:
        pfs, ppath = (fs, p) if fs is not None else filesystem(p, storage_options)
        if fs is None:
            fs = pfs
        elif type(pfs) is not type(fs):
            raise InputError(f"all inputs must share one filesystem; {p!r} differs from the first input")
        try:
            info = fs.info(ppath)
        except FileNotFoundError:
            raise InputError(f"input {p!r} does not exist") from None
        except Exception as exc:
            raise InputError(f"cannot read input {p!r}: {exc}") from exc
        if info["type"] == "directory":
            found = _find_local(ppath) if is_local(fs) else fs.find(ppath, detail=True, withdirs=False)
            for fpath, finfo in sorted(found.items()):
                rel = fpath[len(ppath.rstrip("/")) + 1:] if fpath.startswith(ppath.rstrip("/")) else fpath
                if not _hidden(rel):
                    files.append((fpath, rel, finfo))
        else:
            # An explicitly named file: ``key=value`` directories anywhere in its path are partitions.
            files.append((info.get("name", ppath), info.get("name", ppath).lstrip("/"), info))

    if not files:
        raise EmptyInputError(f"input {list(paths)!r} holds no data files (names starting with '_' or '.' are skipped)")
    assert fs is not None

    formats = {infer_format(f[0]) for f in files}
    if fmt is None:
        known = formats - {None}
        if len(known) > 1:
            raise InputError(f"input mixes formats {sorted(known)}; pass format= to choose one, or split the input")
        fmt = known.pop() if known else "parquet"

    hive_values: dict[str, list[str]] = {}
    for _, rel, _ in files:
        for k, v in _parse_hive(rel):
            hive_values.setdefault(k, []).append(v)
    partition_types = {k: _infer_partition_type(v) for k, v in hive_values.items()}
    if callable(where):
        # a condition that needs the partition columns' types (a where text): built now that they are known
        where = where(pa.schema([pa.field(k, t) for k, t in partition_types.items()])) if partition_types else None
    pruned = 0
    if where is not None and partition_types:
        keep = _prune_listed(files, partition_types, where)
        if keep is not None:
            # Nothing matches: the first file still gives the input its schema (its rows are not read).
            kept = [f for f, k in zip(files, keep) if k] or files[:1]
            pruned, files = len(files) - len(kept), kept

    bad: list[tuple[str, str]] | None = [] if REJECT_BAD_FILES.get() else None
    footers = _read_footers(fs, [(f[0], int(f[2].get("size") or 0)) for f in files], fmt, bad)
    if bad:
        gone = {path for path, _ in bad}
        files = [f for f in files if f[0] not in gone]
        if not files:
            raise InputError(f"no input file of {list(paths)!r} can be read (e.g. {bad[0][0]}: {bad[0][1]})")
    snapshot = tuple({"path": f[0], "size": int(f[2].get("size") or 0), "version": _file_token(f[2])} for f in files)
    snapshot += tuple({"path": path, "size": -1, "version": "unreadable"} for path, _ in (bad or ()))
    schema = unify_schemas([(f[0], footers[f[0]][0]) for f in files])
    splits: list[Split] = []
    for fpath, rel, finfo in files:
        size = int(finfo.get("size") or 0)
        hive = tuple((k, _convert(v, partition_types[k])) for k, v in _parse_hive(rel))
        seen = file_version(finfo)
        for piece in _split_file(fpath, footers[fpath][1], fmt, size, split_size):
            splits.append(Split(len(splits), fpath, fmt, piece.get("size", size), piece.get("row_groups"),
                                piece.get("byte_range"), hive, schema, seen))
    return InputSpec(fs, fmt, tuple(splits), snapshot, partition_types, schema=schema,
                     footers={p: m for p, (_, m) in footers.items() if m is not None}, pruned_files=pruned,
                     bad_files=tuple(bad or ()))


def _convert(value: str | None, typ: pa.DataType) -> Any:
    return int(value) if value is not None and pa.types.is_integer(typ) else value


def _fsspec_from_arrow(afs: Any) -> fsspec.AbstractFileSystem:
    from pyarrow import fs as pafs
    if isinstance(afs, pafs.PyFileSystem) and hasattr(afs.handler, "fs"):
        return afs.handler.fs
    if isinstance(afs, pafs.LocalFileSystem):
        return fsspec.filesystem("file")
    raise InputError(f"datasets on {type(afs).__name__} are not supported; pass the dataset's paths as fsspec URLs")


def _split_file(path: str, meta: Any, fmt: str, size: int, split_size: int) -> list[dict]:
    """The pieces of one file: row-group runs of a large Parquet file (``meta`` is its footer),
    byte ranges of a large uncompressed text file, else the whole file."""
    if size <= split_size:
        return [{}]
    if fmt == "parquet" and meta is not None:
        pieces, current, current_bytes = [], [], 0
        for i in range(meta.num_row_groups):
            rg_bytes = meta.row_group(i).total_byte_size
            if current and current_bytes + rg_bytes > split_size:
                pieces.append({"row_groups": tuple(current), "size": current_bytes})
                current, current_bytes = [], 0
            current.append(i)
            current_bytes += rg_bytes
        if current:
            pieces.append({"row_groups": tuple(current), "size": current_bytes})
        return pieces
    if fmt == "text" and not path.endswith((".gz", ".bz2", ".zst", ".xz")):
        return [{"byte_range": (start, min(start + split_size, size)), "size": min(split_size, size - start)}
                for start in range(0, size, split_size)]
    return [{}]


# ---------------------------------------------------------------------------------------------
# Pushdown of a ``where`` condition: Hive partitions and Parquet row groups that cannot match


def input_schema(spec: InputSpec) -> pa.Schema:
    """The columns a task reading ``spec`` can see: the files' unified columns, then partition columns."""
    fields = list(spec.schema) if spec.schema is not None else []
    names = {f.name for f in fields}
    fields += [pa.field(k, t) for k, t in spec.partition_types.items() if k not in names]
    return pa.schema(fields)


def _partition_expression(values: Sequence[tuple[str, Any]], types: dict[str, pa.DataType]):
    import pyarrow.compute as pc
    expr = None
    for name, value in values:
        term = pc.field(name) == pa.scalar(value, types.get(name, pa.string()))
        expr = term if expr is None else (expr & term)
    return expr if expr is not None else pc.scalar(True)


def partitions_matching(values: Sequence[tuple[tuple[str, Any], ...]], types: dict[str, pa.DataType],
                        where: Any, schema: pa.Schema) -> list[bool]:
    """For each partition (its ``(column, value)`` pairs), whether rows in it may satisfy ``where``:
    pyarrow simplifies the condition with the partition's values as a guarantee, no file is opened.
    Raises Arrow's error when ``where`` does not bind over ``schema``."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    distinct = list(dict.fromkeys(values))
    paths = [f"/{i}" for i in range(len(distinct))]
    dataset = pads.FileSystemDataset.from_paths(
        paths, schema=schema, format=pads.ParquetFileFormat(), filesystem=pafs.LocalFileSystem(),
        partitions=[_partition_expression(v, types) for v in distinct])
    kept = {frag.path for frag in dataset.get_fragments(filter=where)}
    ok = {v: p in kept for v, p in zip(distinct, paths)}
    return [ok[v] for v in values]


_FIELD_REF = re.compile(r"No match for FieldRef\.Name\((.*?)\) in ")


def _prune_listed(files: list[tuple[str, str, dict]], types: dict[str, pa.DataType], where: Any) -> list[bool] | None:
    """Partition pruning before any footer is read: the columns ``where`` names beyond the partition
    columns are bound as ``null`` (type unknown yet). None when that does not bind (an ``isin`` or a
    string function on a file column): then nothing is pruned here."""
    values = [tuple((k, _convert(v, types[k])) for k, v in _parse_hive(rel)) for _, rel, _ in files]
    fields = [pa.field(k, t) for k, t in types.items()]
    for _ in range(64):
        try:
            return partitions_matching(values, types, where, pa.schema(fields))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            m = _FIELD_REF.search(str(exc))
            if not m or m.group(1) in {f.name for f in fields}:
                return None
            fields.append(pa.field(m.group(1), pa.null()))
    return None


def _row_groups_matching(meta: Any, values: tuple[tuple[str, Any], ...], types: dict[str, pa.DataType],
                         where: Any, schema: pa.Schema) -> tuple[int, ...] | None:
    """The row groups of a Parquet file (its footer ``meta``) whose statistics (min, max, null count)
    and partition values do not rule ``where`` out; None when pyarrow cannot decide (keep them all)."""
    import pyarrow.dataset as pads
    sink = pa.BufferOutputStream()
    meta.write_metadata_file(sink)
    try:
        fragment = pads.ParquetFileFormat().make_fragment(
            pa.BufferReader(sink.getvalue()), partition_expression=_partition_expression(values, types),
            row_groups=range(meta.num_row_groups))
        return tuple(rg.id for rg in fragment.subset(filter=where, schema=schema).row_groups)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError):
        return None


@dataclass(frozen=True)
class Pruning:
    """What pushing a ``where`` into the read of an input kept."""

    splits: tuple[Split, ...]
    files: int                      # files of the snapshot
    files_read: int                 # files with something left to read
    row_groups: int = 0             # Parquet row groups of the snapshot's files
    row_groups_read: int = 0
    rows: int | None = None         # rows in the snapshot's files, and in what is read (Parquet)
    rows_read: int | None = None

    def describe(self) -> str:
        text = f"{self.files_read} of {self.files} file(s)"
        if self.row_groups:
            text += f", {self.row_groups_read} of {self.row_groups} row group(s)"
        if self.rows is not None:
            text += f", {self.rows_read:,} of {self.rows:,} rows"
        return text


def prune_splits(spec: InputSpec, where: Any, schema: pa.Schema | None = None) -> Pruning:
    """The splits of ``spec`` that may hold rows satisfying ``where``: Hive partitions whose values
    rule it out are dropped, and Parquet splits keep only the row groups whose statistics do not
    (decided from the footers read for the snapshot: no further reads). Rows that are read are still
    filtered exactly by the map. When nothing is left, one split that reads nothing keeps the input's
    schema for the stages after it."""
    schema = schema if schema is not None else input_schema(spec)
    splits = list(spec.splits)
    if spec.partition_types:
        try:
            keep = partitions_matching([s.partition_values for s in splits], spec.partition_types, where, schema)
            splits = [s for s, k in zip(splits, keep) if k]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    rg_total = rg_read = 0
    rows_total = rows_read = 0
    kept_groups: dict[str, tuple[int, ...] | None] = {}
    out: list[Split] = []
    for s in splits:
        meta = spec.footers.get(s.path) if s.format == "parquet" else None
        if meta is None:
            out.append(s)
            continue
        if s.path not in kept_groups:
            kept_groups[s.path] = _row_groups_matching(meta, s.partition_values, spec.partition_types, where, schema)
        kept = kept_groups[s.path]
        mine = s.row_groups if s.row_groups is not None else tuple(range(meta.num_row_groups))
        if kept is None or set(mine) <= set(kept):
            out.append(s)
            continue
        chosen = tuple(g for g in mine if g in set(kept))
        if chosen:
            rows = sum(meta.row_group(g).num_rows for g in mine) or 1
            part = sum(meta.row_group(g).num_rows for g in chosen)
            out.append(replace(s, row_groups=chosen, size=max(1, s.size * part // rows)))
    for path, meta in spec.footers.items():
        rg_total += meta.num_row_groups
        rows_total += meta.num_rows
    for s in out:
        meta = spec.footers.get(s.path) if s.format == "parquet" else None
        if meta is not None:
            groups = s.row_groups if s.row_groups is not None else range(meta.num_row_groups)
            rg_read += len(groups)
            rows_read += sum(meta.row_group(g).num_rows for g in groups)
    files_read = len({s.path for s in out})
    if not out:
        out = [replace(spec.splits[0], row_groups=(), size=0)]
    out = [replace(s, index=i) for i, s in enumerate(out)]
    parquet = bool(spec.footers) and spec.format == "parquet"
    return Pruning(tuple(out), len(spec.snapshot), files_read, rg_total if parquet else 0,
                   rg_read if parquet else 0, rows_total if parquet else None, rows_read if parquet else None)


# ---------------------------------------------------------------------------------------------
# Schemas: read each file's schema at snapshot time, unify them by safe promotions only

_INFER_BYTES = 1 << 20          # CSV/JSON: the leading bytes whose types the snapshot infers
_FOOTER_THREADS = 16            # concurrent schema reads (object stores: one or two requests per file)


# Set (by the runner, for ``on_bad_file="reject"``) while an input is resolved: files whose schema
# cannot be read are left out of it and listed in ``InputSpec.bad_files`` instead of failing.
REJECT_BAD_FILES: contextvars.ContextVar[bool] = contextvars.ContextVar("engine_reject_bad_files", default=False)
# Set for ``on_error="reject"``: CSV/JSON types are inferred from the leading rows that parse.
REJECT_ROWS: contextvars.ContextVar[bool] = contextvars.ContextVar("engine_reject_rows", default=False)


def _read_footers(fs, files: list[tuple[str, int]], fmt: str,
                  bad: list[tuple[str, str]] | None = None) -> dict[str, tuple[pa.Schema, Any]]:
    """``path -> (schema, parquet metadata or None)`` for every file, read concurrently. With ``bad``
    (a list), a file that cannot be read is appended there as ``(path, error)`` and left out."""
    if fmt == "text":
        schema = pa.schema([("text", pa.string())])
        return {path: (schema, None) for path, _ in files}

    def one(item: tuple[str, int]) -> tuple[pa.Schema, Any]:
        path, size = item
        try:
            return _file_schema(fs, path, fmt, size)
        except InputError:
            raise
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError, OSError) as exc:
            raise InputError(f"cannot read the schema of {fmt} input {path}: {exc}") from exc

    def tolerant(item: tuple[str, int]):
        try:
            return one(item)
        except InputError as exc:
            if bad is None:
                raise
            return exc

    if len(files) == 1:
        found = {files[0][0]: tolerant(files[0])}
    else:
        from concurrent.futures import ThreadPoolExecutor
        parent = contextvars.copy_context()      # REJECT_ROWS and REJECT_BAD_FILES hold in the pool's threads too
        with ThreadPoolExecutor(min(_FOOTER_THREADS, len(files))) as pool:
            found = dict(zip((path for path, _ in files),
                             pool.map(lambda item: parent.copy().run(tolerant, item), files)))
    for path, value in list(found.items()):
        if isinstance(value, Exception):
            bad.append((path, str(value)))
            del found[path]
    return found


def _file_schema(fs, path: str, fmt: str, size: int) -> tuple[pa.Schema, Any]:
    if fmt == "parquet":
        meta = _parquet_footer(fs, path, size)
        return meta.schema.to_arrow_schema(), meta
    if fmt == "ipc":
        with fs.open(path, "rb") as f:
            try:
                return pa.ipc.open_file(f).schema, None
            except pa.ArrowInvalid:
                f.seek(0)
                return pa.ipc.open_stream(f).schema, None
    if fmt == "csv":
        import pyarrow.csv as pcsv
        parse = _csv_parse(path)
        rejecting = REJECT_ROWS.get()
        if rejecting:
            parse = pcsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=lambda row: "skip")
        with fs.open(path, "rb", compression=_compression(path)) as f:
            reader = pcsv.open_csv(f, parse_options=parse, read_options=pcsv.ReadOptions(block_size=_INFER_BYTES))
            if not rejecting:
                return reader.schema, None
            try:
                head = reader.read_next_batch()
            except StopIteration:
                return reader.schema, None
            return _majority_types(reader.schema, head), None
    if fmt == "json":
        import pyarrow.json as pjson
        with fs.open(path, "rb", compression=_compression(path)) as f:
            try:
                return pjson.open_json(f, read_options=pjson.ReadOptions(block_size=_INFER_BYTES)).schema, None
            except pa.ArrowInvalid:
                if not REJECT_ROWS.get():
                    raise
                f.seek(0)
                head = f.read(_INFER_BYTES)
        return _json_schema_of_good_lines(head), None
    raise InputError(f"unknown format {fmt!r}")  # pragma: no cover - guarded by normalize_format


_INT_TEXT = r"^\s*[-+]?\d+\s*$"
_FLOAT_TEXT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _majority_types(schema: pa.Schema, head: pa.RecordBatch, share: float = 0.99) -> pa.Schema:
    """``on_error="reject"``: a CSV column inferred as text because a few of its leading values are not
    numbers is typed as the numbers that at least ``share`` of its values are (the others are rejected
    when read, instead of turning the column into text)."""
    import pyarrow.compute as pc
    fields = []
    for i, f in enumerate(schema):
        typ = f.type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            col = pc.utf8_trim_whitespace(head.column(i))
            values = col.filter(pc.and_(pc.is_valid(col), pc.not_equal(col, "")))
            n = len(values)
            if n >= 10:
                ints = pc.sum(pc.match_substring_regex(values, _INT_TEXT)).as_py() or 0
                floats = pc.sum(pc.match_substring_regex(values, _FLOAT_TEXT)).as_py() or 0
                if ints >= share * n:
                    typ = pa.int64()
                elif floats >= share * n:
                    typ = pa.float64()
        fields.append(pa.field(f.name, typ))
    return pa.schema(fields)


def _json_schema_of_good_lines(head: bytes) -> pa.Schema:
    """The types of the leading JSON lines that parse (``on_error="reject"``: the others are rejected
    when the file is read)."""
    import json

    import pyarrow.json as pjson
    lines = head.split(b"\n")[:-1] if not head.endswith(b"\n") else head.split(b"\n")
    good = []
    for line in lines:
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                continue
            good.append(line)
    if not good:
        raise pa.ArrowInvalid("no line of the first MiB is valid JSON")
    # a line whose value disagrees in type with the lines before it is left out (it is rejected when read)
    import re
    for _ in range(1000):
        try:
            return pjson.read_json(io.BytesIO(b"\n".join(good))).schema
        except pa.ArrowInvalid as exc:
            m = re.search(r"in row (\d+)", str(exc))
            if m is None or int(m.group(1)) >= len(good):
                break
            del good[int(m.group(1))]
            if not good:
                break
    raise pa.ArrowInvalid("the leading JSON lines disagree on their types")


_FOOTER_GUESS = 64 << 10


def _parquet_footer(fs, path: str, size: int):
    """A Parquet file's footer (``FileMetaData``) in one ranged read of its last 64 KiB (a second one
    only for a larger footer): no ``HEAD``, no read-ahead, which matters on object stores."""
    import pyarrow.parquet as pq
    if size < 12:
        raise InputError(f"{path} is not a Parquet file ({size} bytes)")
    tail = fs.cat_file(path, start=max(0, size - _FOOTER_GUESS), end=size)
    if tail[-4:] != b"PAR1":
        raise InputError(f"{path} is not a Parquet file (no PAR1 magic at its end)")
    length = int.from_bytes(tail[-8:-4], "little") + 8
    if length > len(tail):
        tail = fs.cat_file(path, start=size - length, end=size)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-length:]))


def unify_schemas(schemas: Sequence[tuple[str, pa.Schema]]) -> pa.Schema:
    """One schema for files ``[(path, schema), ...]``: columns in first-seen order, each with the
    :func:`common_type` of its types; a column a file lacks is read as nulls there.

    Raises :class:`SchemaError` naming the column, both types and one file of each when two files'
    types of a column have no safe common type.
    """
    fields: dict[str, pa.Field] = {}
    seen: dict[str, dict[str, str]] = {}       # column -> {str(plain type): first file with it}
    for path, schema in schemas:
        names = schema.names
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise SchemaError(f"input file {path} has two columns named {dup!r}; rename one of them")
        for f in schema:
            typ = plain_type(f.type)
            first = seen.setdefault(f.name, {})
            first.setdefault(str(typ), path)
            have = fields.get(f.name)
            if have is None:
                fields[f.name] = f.with_type(typ)
                continue
            common = common_type(have.type, typ)
            if common is None:
                other_type, other_path = next((t, p) for t, p in first.items() if t != str(typ))
                raise SchemaError(
                    f"input column {f.name!r} has type {other_type} in {other_path} but {typ} in {path}, and "
                    "these types have no lossless common type (the engine promotes only integers to wider "
                    "integers or to floats, string to large_string, binary to large_binary, view types to "
                    "plain ones, dictionaries to their values and nulls to anything); rewrite the files with "
                    "one type for this column, or read them as separate inputs")
            fields[f.name] = have.with_type(common).with_nullable(have.nullable or f.nullable)
    return pa.schema(list(fields.values()))


def conform(batch: pa.RecordBatch, schema: pa.Schema, path: str, encoded: Sequence[str] = ()) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns and types (safe casts; missing columns as nulls);
    a column named in ``encoded`` may stay dictionary-encoded when its values have the schema's type.

    Raises :class:`SchemaError` naming the column and the file when a value does not fit the unified
    type (an integer beyond a float's exact range, a CSV value that parses differently past the
    bytes the snapshot inspected).
    """
    if batch.schema.equals(schema):
        return batch
    arrays, fields = [], []
    for f in schema:
        i = batch.schema.get_field_index(f.name)
        if i < 0:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            fields.append(f)
            continue
        col = batch.column(i)
        if f.name in encoded and pa.types.is_dictionary(col.type) and \
                col.type.value_type.equals(plain_type(f.type)):
            arrays.append(col)
            fields.append(f.with_type(col.type))
            continue
        fields.append(f)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"input column {f.name!r} of {path}: cannot convert its {col.type} values to "
                                  f"the input's unified type {f.type}: {exc}") from exc
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


# ---------------------------------------------------------------------------------------------
# Reading a split (runs on workers)


def read_split(fs, split: Split, *, columns: Sequence[str] | None = None, batch_rows: int | None = None,
               partition_types: dict[str, pa.DataType] | None = None,
               dictionaries: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    """Stream a split's record batches; partition columns are appended as constant columns.

    ``dictionaries``: string columns that a Parquet file stores with a small dictionary
    (:func:`small_dictionaries`) are read dictionary-encoded, and stay so."""
    batch_rows = batch_rows or int(config.get("batch-rows"))
    target = _target_schema(split, columns)
    try:
        empty = None
        # ``row_groups == ()``: a split whose rows were all pruned (it only carries the schema)
        batches = iter(()) if split.row_groups == () else _read_batches(fs, split, columns, batch_rows, dictionaries)
        for batch in batches:
            if target is not None:
                batch = conform(batch, target, split.path, dictionaries)
            if split.partition_values:
                batch = _add_partition_columns(batch, split.partition_values, partition_types or {}, columns)
            if batch.num_rows == 0:
                empty = batch
                continue
            yield batch
            empty = False
        if empty is not None and empty is not False:
            yield empty   # an empty input still tells the stages its schema
        elif empty is None:
            schema = _schema_of(fs, split, columns)
            if schema is not None:
                batch = schema.empty_table().to_batches() or [pa.RecordBatch.from_pylist([], schema=schema)]
                b = batch[0]
                if split.partition_values:
                    b = _add_partition_columns(b, split.partition_values, partition_types or {}, columns)
                yield b
    except (InputError, SchemaError) as exc:
        check_unchanged(fs, split, exc)             # a file that changed under the reader: say that instead
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, ValueError, OSError) as exc:
        check_unchanged(fs, split, exc)
        raise InputError(f"cannot read {split.format} input {split.describe()}: {exc}") from exc
    # Read to its end: the bytes read were the snapshot's only if the file is still as it saw it. (Outside the
    # try: a store that cannot answer now fails the attempt with its own, retryable, error.)
    check_unchanged(fs, split)


def check_unchanged(fs, split: Split, error: BaseException | None = None) -> None:
    """Raise :class:`InputChangedError` when the file of ``split`` is gone or differs from the snapshot (size,
    then ETag or modification time); nothing for splits without a snapshot (the engine's own files).
    ``error``: the read error that made the caller look (the new error's cause)."""
    if split.snapshot is None or isinstance(error, InputChangedError):
        return
    size, etag, when = split.snapshot
    path = split.path
    try:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(path)           # an object store's listing cache holds the snapshot's answer
        info = fs.info(path)
    except FileNotFoundError:
        raise InputChangedError(
            f"input file {path} disappeared during the run (it was in the input's snapshot when the run started), "
            "so the run cannot read the input it planned for. Rerun once the input is complete: a run reads the "
            "files it listed at its start, so whatever writes or removes input files should do so between runs",
            path) from error
    except Exception:  # noqa: BLE001 - the file cannot be looked at: the caller's own error says more
        if error is not None:
            return
        raise
    now_size, now_etag, now_when = file_version(info)
    if now_size != size:
        what = f"its size went from {size:,} to {now_size:,} bytes"
    elif etag is not None and now_etag is not None:
        if now_etag == etag:
            return
        what = f"its ETag went from {etag} to {now_etag}"
    elif when is not None and now_when is not None:
        if abs(now_when - when) < 2e-6:      # (one store may round to microseconds)
            return
        what = f"its modification time went from {when:.6f} to {now_when:.6f}"
    else:
        return                                  # the store says nothing more to compare
    raise InputChangedError(
        f"input file {path} changed during the run ({what} since the run's snapshot), so the run stops rather than "
        "mix two versions of its input. Rerun once the input is complete: write input files elsewhere and move "
        "them into place, so that a run sees each file whole", path) from error


def _target_schema(split: Split, columns) -> pa.Schema | None:
    """The unified schema a split's batches are conformed to, projected on ``columns``."""
    if split.schema is None:
        return None
    if columns is None:
        return split.schema
    return pa.schema([split.schema.field(c) for c in columns if c in split.schema.names])


def _schema_of(fs, split: Split, columns) -> pa.Schema | None:
    if split.schema is not None:
        return _target_schema(split, columns)
    if split.format == "parquet":
        import pyarrow.parquet as pq
        with fs.open(split.path, "rb") as f:
            schema = pq.ParquetFile(f).schema_arrow
    elif split.format == "text":
        schema = pa.schema([("text", pa.string())])
    else:
        return None
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns if c in schema.names])
    return schema


def _add_partition_columns(batch, values, types, columns) -> pa.RecordBatch:
    arrays, names = list(batch.columns), list(batch.schema.names)
    for name, value in values:
        if columns is not None and name not in columns:
            continue
        if name in names:
            continue
        typ = types.get(name, pa.string())
        # one value repeated (not a Python list of it: 45 ms against 4 ms for a million rows)
        arrays.append(pa.nulls(batch.num_rows, typ) if value is None else pa.repeat(pa.scalar(value, typ),
                                                                                   batch.num_rows))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _csv_parse(path: str):
    import pyarrow.csv as pcsv
    return pcsv.ParseOptions(delimiter="\t" if path.endswith((".tsv", ".tsv.gz")) else ",")


def _compression(path: str) -> str | None:
    return fsspec.utils.infer_compression(path)


def small_dictionaries(metadata: Any, schema: pa.Schema, columns: Sequence[str], row_group: int,
                       batch_rows: int) -> list[str]:
    """Those of ``columns`` (strings) that a Parquet file stores with a dictionary of at most one
    byte per two rows of a batch in ``row_group``: few distinct values, so reading them as
    dictionaries saves decoding every string (G1's 100-value keys: 3x faster), while a large one
    would be rebuilt for every batch (G1's 100,000-value key: 5x slower)."""
    if metadata.num_row_groups == 0:
        return []
    rg = metadata.row_group(row_group)
    limit = min(batch_rows, rg.num_rows) // 2
    chunks = {rg.column(j).path_in_schema: rg.column(j) for j in range(rg.num_columns)}
    chosen = []
    for name in columns:
        i = schema.get_field_index(name)
        t = schema.field(i).type if i >= 0 else None
        col = chunks.get(name)
        if col is None or not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
            continue
        if col.has_dictionary_page and col.data_page_offset - col.dictionary_page_offset <= limit:
            chosen.append(name)
    return chosen


def _read_batches(fs, split: Split, columns, batch_rows, dictionaries: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    fmt, path = split.format, split.path
    if fmt == "parquet":
        import pyarrow.parquet as pq
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f, page_checksum_verification=False)
            if dictionaries:
                encoded = small_dictionaries(pf.metadata, pf.schema_arrow, dictionaries,
                                             (split.row_groups or [0])[0], batch_rows)
                if encoded:
                    pf = pq.ParquetFile(f, page_checksum_verification=False, metadata=pf.metadata,
                                        read_dictionary=encoded)
            cols = None
            if columns is not None:
                cols = [c for c in columns if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=split.row_groups, columns=cols)
    elif fmt == "ipc":
        with fs.open(path, "rb") as f:
            data = f.read()
        buf = pa.py_buffer(data)
        try:
            reader = pa.ipc.open_file(buf)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_stream(buf))
        for b in batches:
            yield b.select(columns) if columns is not None else b
    elif fmt == "csv":
        import pyarrow.csv as pcsv
        with fs.open(path, "rb", compression=_compression(path)) as f:
            # The snapshot's unified types, given explicitly: every file parses a column alike.
            types = {fld.name: fld.type for fld in split.schema} if split.schema is not None else None
            reader = pcsv.open_csv(f, parse_options=_csv_parse(path),
                                   read_options=pcsv.ReadOptions(block_size=1 << 22),
                                   convert_options=pcsv.ConvertOptions(column_types=types))
            for b in reader:
                yield b.select([c for c in columns if c in b.schema.names]) if columns is not None else b
    elif fmt == "json":
        import pyarrow.json as pjson
        with fs.open(path, "rb", compression=_compression(path)) as f:
            parse = pjson.ParseOptions(explicit_schema=split.schema, unexpected_field_behavior="infer") \
                if split.schema is not None else None
            table = pjson.read_json(f, parse_options=parse)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        yield from table.to_batches(max_chunksize=batch_rows)
    elif fmt == "text":
        yield from _read_text(fs, split, batch_rows)
    else:  # pragma: no cover - guarded by normalize_format
        raise InputError(f"unknown format {fmt!r}")


_TEXT_BLOCK = 8 << 20


def _lines_to_batch(data: bytes, path: str) -> pa.RecordBatch:
    # One value built from its buffers: pa.array() on a Python list imports pandas (0.2-0.4 s) to check it.
    offsets = pa.py_buffer(struct.pack("=qq", 0, len(data)))
    arr = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    lines = pa.compute.list_flatten(pa.compute.split_pattern(arr, b"\n"))
    try:
        lines = lines.cast(pa.large_string()).cast(pa.string())
    except pa.ArrowInvalid as exc:
        raise InputError(f"text input {path} is not valid UTF-8: {exc}") from exc
    lines = pa.compute.utf8_rtrim(lines, characters="\r")
    return pa.RecordBatch.from_arrays([lines], names=["text"])


def _read_text(fs, split: Split, batch_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.compute  # noqa: F401  (binds pa.compute)

    start, end = split.byte_range if split.byte_range else (0, None)
    with fs.open(split.path, "rb", compression=_compression(split.path) if not split.byte_range else None) as f:
        if start > 0:
            f.seek(start - 1)
            # Skip the partial line: it belongs to the previous split.
            if f.read(1) != b"\n":
                f.readline()
        pos = f.tell()
        carry = b""
        while True:
            if end is not None and pos >= end:
                # Past our range: finish the line that straddles the boundary, then stop.
                if carry:
                    carry += f.readline()
                break
            want = _TEXT_BLOCK if end is None else min(_TEXT_BLOCK, end - pos)
            block = f.read(want)
            if not block:
                break
            pos += len(block)
            data = carry + block
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            yield from _chunks(_lines_to_batch(data[:cut], split.path), batch_rows)
        if carry:
            if carry.endswith(b"\n"):
                carry = carry[:-1]
            yield from _chunks(_lines_to_batch(carry, split.path), batch_rows)


def _chunks(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for offset in range(0, batch.num_rows, rows):
        yield batch.slice(offset, rows)


def sample_table(fs, spec: InputSpec, rows: int = 64, *, columns: Sequence[str] | None = None,
                 split: Split | None = None) -> pa.Table | None:
    """The first rows of ``split`` (default: the input's first), only ``columns`` of them (None: all),
    for checking a job's stages before a run."""
    for split in ([split] if split is not None else spec.splits[:1]):
        for batch in read_split(fs, split, columns=columns, batch_rows=rows, partition_types=spec.partition_types):
            return pa.Table.from_batches([batch.slice(0, rows)])
    return None


__all__ = ["Split", "InputSpec", "resolve_input", "read_split", "prune_splits", "Pruning", "input_schema",
           "partitions_matching", "unify_schemas", "conform", "filesystem", "is_local", "sample_table",
           "infer_format", "FORMATS"]
_ = io
