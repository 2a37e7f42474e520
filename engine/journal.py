"""The driver's journal of finished tasks, so an interrupted run can be resumed.

Each finished task's result (a map output index, an intermediate file, or a commit message) is
written to ``OUT/_temporary/<run>/journal/<stage>/<partition>.json`` as soon as the driver receives
it. A resumed run (same job fingerprint and input snapshot, hence the same run id) loads the
journal and skips every task whose recorded files still exist.

The journal lives in the output location, and the run id is public (it is in the manifest of any
earlier run of the job), so whoever can write there can write journal entries. The journal
therefore holds data, never code, and loading it trusts nothing:

* An entry is JSON with an explicit encoding per type (:func:`encode_result` / :func:`decode_result`):
  :class:`~engine.shuffle.MapOutput`, :class:`~engine.datasets.Split`, commit messages, plain
  numbers and strings, the attempt's counters (names to whole numbers); Arrow schemas and tables
  (the key sample of a sort run, the heavy keys and batch bounds of a map output) travel as Arrow
  IPC bytes in base64. Nothing is unpickled or imported; files of the old pickle format (``.pkl``)
  are ignored, never opened.
* A file is ``{"doc": {format, version, run_id, stage, partition, entry}, "sha256": ...}``, the
  SHA-256 of the canonical JSON of ``doc`` (sorted keys, no spaces, ASCII); a torn, edited or
  misplaced file (another run, stage or partition) does not match and is ignored.
* Every type is checked, and every path must stay where this run writes: map outputs and
  intermediate files under this run's shuffle root, task output files named as this engine names
  them, for this run, under ``OUT/_temporary/<run>/`` (or, on S3, at ``OUT/<name>`` with a pending
  multipart upload). An entry that fails a check is ignored and logged; its task runs again.

The checksum detects damage, not an adversary (who can compute it): what makes a forged entry
harmless is that it can only name this run's own files, which the resumed run checks still exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import uuid
from typing import Any

import pyarrow as pa

from .commit import _bad_entry_path, engine_file, temporary_dir
from .counters import checked as checked_counters
from .datasets import Split, is_local
from .shuffle import MapOutput

log = logging.getLogger("engine")

FORMAT = "engine-journal"
VERSION = 1
MAX_ENTRY_BYTES = 64 << 20          # a journal entry is an index of a few KiB; refuse anything huge

_RUN_FIELDS = ("spec", "worker")                                                # str | None
_INT_FIELDS = ("rows_in", "rows_out", "bytes_out", "input_bytes", "partition")  # int | None
_FLOAT_FIELDS = ("start", "stop")                                               # float | None
_KINDS = ("shuffle", "next_input", "commit")


class JournalEntryError(ValueError):
    """A journal entry that cannot be trusted (damaged, forged, or of another run): it is ignored."""


# ---------------------------------------------------------------------------------------------
# Values


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise JournalEntryError(f"{what} is not base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise JournalEntryError(f"{what} is not base64: {exc}") from exc


def schema_to_json(schema: pa.Schema | None) -> str | None:
    return None if schema is None else _b64(schema.serialize().to_pybytes())


def schema_from_json(text: Any) -> pa.Schema | None:
    if text is None:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(_unb64(text, "schema")))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise JournalEntryError(f"schema is not an Arrow IPC schema: {exc}") from exc


def table_to_json(table: pa.Table | None) -> str | None:
    if table is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return _b64(sink.getvalue().to_pybytes())


def table_from_json(text: Any, what: str) -> pa.Table | None:
    if text is None:
        return None
    try:
        table = pa.ipc.open_stream(pa.py_buffer(_unb64(text, what))).read_all()
        table.validate(full=True)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise JournalEntryError(f"{what} is not an Arrow IPC stream: {exc}") from exc
    return table


def _column(values: list) -> pa.Array:
    """An Arrow column of Python key values (as ``as_py`` returns them), typed by inference."""
    try:
        return pa.array(values)
    except OverflowError:
        return pa.array(values, pa.uint64())      # keys of a uint64 column above 2**63


def keys_to_json(rows: list[tuple], width: int, extra: dict[str, list[int]]) -> str | None:
    """Rows of ``width``-tuples of key values (plus integer columns) as one Arrow table in base64."""
    if not rows:
        return None
    columns = {f"k{i}": _column([r[i] for r in rows]) for i in range(width)}
    columns.update({name: pa.array(v, pa.int64()) for name, v in extra.items()})
    return table_to_json(pa.table(columns))


def keys_from_json(text: Any, what: str, width: int, extra: tuple[str, ...]) -> tuple[list[tuple], dict]:
    table = table_from_json(text, what)
    if table is None:
        return [], {name: [] for name in extra}
    names = [f"k{i}" for i in range(width)] + list(extra)
    if table.column_names != names:
        raise JournalEntryError(f"{what} has columns {table.column_names}, expected {names}")
    for name in extra:
        if not pa.types.is_integer(table.schema.field(name).type):
            raise JournalEntryError(f"{what} column {name} is not an integer column")
    cols = [table.column(f"k{i}").to_pylist() for i in range(width)]
    rows = list(zip(*cols)) if width else [() for _ in range(table.num_rows)]
    return rows, {name: table.column(name).to_pylist() for name in extra}


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise JournalEntryError(what)


def _int(v: Any, what: str, *, none: bool = False, minimum: int | None = 0) -> int | None:
    if v is None and none:
        return None
    if type(v) is not int or (minimum is not None and v < minimum):
        raise JournalEntryError(f"{what} must be {'a non-negative ' if minimum == 0 else 'an '}integer, got {v!r}")
    return v


def _ints(v: Any, what: str) -> list[int]:
    """A list of non-negative integers (checked in one pass: map outputs list one entry per partition)."""
    if type(v) is not list or not all(type(x) is int for x in v) or (v and min(v) < 0):
        raise JournalEntryError(f"{what} must be a list of non-negative integers")
    return v


def _str(v: Any, what: str, *, none: bool = False) -> str | None:
    if v is None and none:
        return None
    _check(isinstance(v, str), f"{what} must be a string, got {type(v).__name__}")
    return v


def _dict(v: Any, what: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    _check(isinstance(v, dict), f"{what} must be an object")
    unknown = set(v) - allowed
    _check(not unknown, f"{what} has unknown field(s) {sorted(unknown)}")
    missing = set(required) - set(v)
    _check(not missing, f"{what} lacks field(s) {sorted(missing)}")
    return v


# ---------------------------------------------------------------------------------------------
# Types


def map_output_to_json(o: MapOutput) -> dict:
    width = len(o.heavy_keys[0][0]) if o.heavy_keys else (len(o.bounds[0][0]) if o.bounds else 0)
    for key, _p, _r in o.heavy_keys:
        if len(key) != width:
            raise TypeError("heavy keys of different widths")
    return {
        "path": o.path, "num_partitions": int(o.num_partitions),
        "batches": [list(map(int, bs)) for bs in o.batches], "rows": list(map(int, o.rows)),
        "nbytes": list(map(int, o.nbytes)), "rows_in": int(o.rows_in), "rows_out": int(o.rows_out),
        "key_width": width,
        "heavy_keys": keys_to_json([tuple(k) for k, _p, _r in o.heavy_keys], width,
                                   {"partition": [int(p) for _k, p, _r in o.heavy_keys],
                                    "rows": [int(r) for _k, _p, r in o.heavy_keys]}),
        "bounds": keys_to_json([tuple(first) + tuple(last) for first, last, _r in o.bounds], 2 * width,
                               {"rows": [int(r) for _f, _l, r in o.bounds]}),
        "sample": table_to_json(o.sample),
        # where each batch lies in the file (ranged reads on object stores): flat [offset, length, ...]
        "blocks": None if o.blocks is None else [int(x) for block in o.blocks for x in block],
        "schema": schema_to_json(o.schema),
    }


def map_output_from_json(d: Any) -> MapOutput:
    fields = {"path", "num_partitions", "batches", "rows", "nbytes", "rows_in", "rows_out", "key_width",
              "heavy_keys", "bounds", "sample"}
    _dict(d, "shuffle", fields | {"blocks", "schema"}, fields)
    n = _int(d["num_partitions"], "shuffle.num_partitions")
    _check(isinstance(d["batches"], list) and len(d["batches"]) == n, "shuffle.batches must list every partition")
    batches = [_ints(b, "shuffle.batches") for b in d["batches"]]
    rows, nbytes = _ints(d["rows"], "shuffle.rows"), _ints(d["nbytes"], "shuffle.nbytes")
    _check(len(rows) == n and len(nbytes) == n, "shuffle.rows and shuffle.nbytes must list every partition")
    width = _int(d["key_width"], "shuffle.key_width")
    heavy, hx = keys_from_json(d["heavy_keys"], "shuffle.heavy_keys", width, ("partition", "rows"))
    _check(all(0 <= p < max(1, n) for p in hx["partition"]), "shuffle.heavy_keys names a partition out of range")
    bounds, bx = keys_from_json(d["bounds"], "shuffle.bounds", 2 * width, ("rows",))
    return MapOutput(
        path=_str(d["path"], "shuffle.path"), num_partitions=n, batches=batches, rows=rows, nbytes=nbytes,
        rows_in=_int(d["rows_in"], "shuffle.rows_in"), rows_out=_int(d["rows_out"], "shuffle.rows_out"),
        heavy_keys=[(k, int(p), int(r)) for k, p, r in zip(heavy, hx["partition"], hx["rows"])],
        bounds=[(b[:width], b[width:], int(r)) for b, r in zip(bounds, bx["rows"])],
        sample=table_from_json(d["sample"], "shuffle.sample"), blocks=_blocks(d.get("blocks")),
        schema=schema_from_json(d.get("schema")))


def _blocks(v: Any) -> list[tuple[int, int]] | None:
    """A map output's batch extents (absent or null: the file is read whole)."""
    if v is None:
        return None
    flat = _ints(v, "shuffle.blocks")
    _check(len(flat) % 2 == 0, "shuffle.blocks must hold (offset, length) pairs")
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


_SCALAR = (str, int, float, bool, type(None))


def split_to_json(s: Split) -> dict:
    for name, value in s.partition_values:
        if not isinstance(name, str) or not isinstance(value, _SCALAR):
            raise TypeError(f"partition value {name}={value!r} is not a plain scalar")
    return {"index": int(s.index), "path": s.path, "format": s.format, "size": int(s.size),
            "row_groups": list(s.row_groups) if s.row_groups is not None else None,
            "byte_range": list(s.byte_range) if s.byte_range is not None else None,
            "partition_values": [[n, v] for n, v in s.partition_values]}


def split_from_json(d: Any) -> Split:
    fields = {"index", "path", "format", "size", "row_groups", "byte_range", "partition_values"}
    _dict(d, "next_input", fields, fields)
    rg = None if d["row_groups"] is None else tuple(_ints(d["row_groups"], "next_input.row_groups"))
    br = d["byte_range"]
    if br is not None:
        br = tuple(_ints(br, "next_input.byte_range"))
        _check(len(br) == 2, "next_input.byte_range must be [start, stop]")
    pv = d["partition_values"]
    _check(isinstance(pv, list) and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                                        and isinstance(x[1], _SCALAR) for x in pv),
           "next_input.partition_values must be [name, scalar] pairs")
    fmt = _str(d["format"], "next_input.format")
    _check(re.fullmatch(r"[a-z]{1,16}", fmt) is not None, f"next_input.format {fmt!r} is not a format name")
    return Split(_int(d["index"], "next_input.index"), _str(d["path"], "next_input.path"), fmt,
                 _int(d["size"], "next_input.size"), rg, br, tuple((n, v) for n, v in pv))


def commit_to_json(m: dict) -> dict:
    return commit_from_json(json.loads(json.dumps(m)))     # the same checks as on the way back (a small dict)


def commit_from_json(d: Any) -> dict:
    _dict(d, "commit", {"partition", "attempt", "run_id", "files"}, {"partition", "attempt", "files"})
    out = {"partition": _int(d["partition"], "commit.partition"),
           "attempt": _int(d["attempt"], "commit.attempt", none=True)}
    if "run_id" in d:
        out["run_id"] = _str(d["run_id"], "commit.run_id")
    _check(isinstance(d["files"], list), "commit.files must be a list")
    files = []
    for f in d["files"]:
        fields = {"name", "tmp", "rows", "bytes", "crc32c", "upload"}
        _dict(f, "commit file", fields | {"values"}, fields)
        entry = {"name": _str(f["name"], "commit file name"), "tmp": _str(f["tmp"], "commit file tmp"),
                 "rows": _int(f["rows"], "commit file rows"), "bytes": _int(f["bytes"], "commit file bytes"),
                 "crc32c": _int(f["crc32c"], "commit file crc32c"), "upload": None}
        if "values" in f:        # a Hive partition's values (text, or None for null)
            _check(isinstance(f["values"], dict) and all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                         for k, v in f["values"].items()),
                   "commit file values must map column names to text or null")
            entry["values"] = dict(f["values"])
        if f["upload"] is not None:
            up = _dict(f["upload"], "commit upload", {"upload_id", "parts"}, {"upload_id", "parts"})
            _check(isinstance(up["parts"], list), "commit upload parts must be a list")
            parts = []
            for part in up["parts"]:
                _dict(part, "upload part", set(part) if isinstance(part, dict) else set(), {"PartNumber", "ETag"})
                _check(all(k in ("PartNumber", "ETag") or (k.startswith("Checksum") and isinstance(v, str))
                           for k, v in part.items()), "upload part has unknown fields")
                parts.append({**part, "PartNumber": _int(part["PartNumber"], "PartNumber", minimum=1),
                              "ETag": _str(part["ETag"], "ETag")})
            entry["upload"] = {"upload_id": _str(up["upload_id"], "upload_id"), "parts": parts}
        files.append(entry)
    out["files"] = files
    return out


def encode_result(result: dict) -> dict:
    """A task result as plain JSON values; ``TypeError`` for a value this format does not hold."""
    body: dict[str, Any] = {}
    kinds = [k for k in _KINDS if k in result]
    if len(kinds) != 1:
        raise TypeError(f"a task result holds exactly one of {_KINDS}, this one {kinds}")
    kind = kinds[0]
    body["kind"] = kind
    body[kind] = {"shuffle": map_output_to_json, "next_input": split_to_json,
                  "commit": commit_to_json}[kind](result[kind])
    body["schema"] = schema_to_json(result.get("schema"))
    body["attempt"] = result.get("attempt")
    for k in _RUN_FIELDS + _INT_FIELDS + _FLOAT_FIELDS:
        body[k] = result.get(k)
    rejected = result.get("rejected")
    if rejected is not None:      # the attempt's rejected-rows file (engine.rejects)
        body["rejected"] = {"count": int(rejected["count"]), "message": commit_to_json(rejected["message"]),
                            "sample": [str(x) for x in rejected.get("sample") or []][:8],
                            "unread": int(rejected.get("unread") or 0)}
    if result.get("counters"):    # what the attempt's code counted (engine.counters): kept by a resumed run
        body["counters"] = checked_counters(result["counters"])
    extra = {k: v for k, v in result.items()
             if k not in body and k not in _KINDS and k != "schema" and isinstance(v, _SCALAR)}
    unknown = set(result) - set(body) - set(extra) - set(_KINDS) - {"schema"}
    if unknown:
        raise TypeError(f"task result fields {sorted(unknown)} are not plain values")
    body["extra"] = extra
    return body


def decode_result(body: Any) -> dict:
    """A task result from its JSON form; :class:`JournalEntryError` for anything unexpected."""
    fields = {"kind", "schema", "attempt", "extra", *_KINDS, *_RUN_FIELDS, *_INT_FIELDS, *_FLOAT_FIELDS}
    _dict(body, "entry", fields | {"rejected", "counters"}, fields - set(_KINDS))
    kind = body["kind"]
    _check(kind in _KINDS and kind in body and not (set(_KINDS) - {kind}) & set(body),
           "entry must hold exactly one of shuffle, next_input, commit")
    result: dict[str, Any] = {kind: {"shuffle": map_output_from_json, "next_input": split_from_json,
                                     "commit": commit_from_json}[kind](body[kind])}
    result["schema"] = schema_from_json(body["schema"])
    result["attempt"] = _int(body["attempt"], "attempt", none=True)
    for k in _RUN_FIELDS:
        result[k] = _str(body[k], k, none=True)
    for k in _INT_FIELDS:
        result[k] = _int(body[k], k, none=True)
    for k in _FLOAT_FIELDS:
        v = body[k]
        _check(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
               f"{k} must be a number")
        result[k] = v
    extra = body["extra"]
    _check(isinstance(extra, dict) and all(isinstance(v, _SCALAR) for v in extra.values())
           and not set(extra) & set(result), "entry.extra must hold plain values of other fields")
    result.update(extra)
    if "rejected" in body:
        r = _dict(body["rejected"], "entry.rejected", {"count", "message", "sample", "unread"},
                  {"count", "message", "sample"})
        _check(isinstance(r["sample"], list) and all(isinstance(x, str) for x in r["sample"]),
               "entry.rejected.sample must be a list of text")
        result["rejected"] = {"count": _int(r["count"], "entry.rejected.count"),
                              "message": commit_from_json(r["message"]), "sample": list(r["sample"]),
                              "unread": _int(r.get("unread", 0), "entry.rejected.unread")}
    if "counters" in body:
        try:
            result["counters"] = checked_counters(body["counters"])
        except ValueError as exc:
            raise JournalEntryError(f"entry.counters: {exc}") from exc
    return result


def _no_constant(name: str) -> Any:
    raise JournalEntryError(f"{name} in JSON")


def canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Where a journaled result may point


def _under(path: str, root: str) -> bool:
    """True when ``path`` lies strictly below ``root`` (no ``..`` anywhere)."""
    if not root or not path or ".." in path.split("/"):
        return False
    return posixpath.normpath(path).startswith(posixpath.normpath(root).rstrip("/") + "/")


def check_paths(result: dict, *, run_id: str, out: str, shuffle_root: str | None, s3: bool) -> None:
    """Raise :class:`JournalEntryError` unless every path of ``result`` is one this run writes."""
    if "shuffle" in result or "next_input" in result:
        path = (result.get("shuffle") or result.get("next_input")).path
        _check(shuffle_root is not None and _under(path, shuffle_root),
               f"{path!r} is not under this run's shuffle directory")
    messages = [result["commit"]] if "commit" in result else []
    if result.get("rejected"):
        messages.append(result["rejected"]["message"])
    for message in messages:
        _check(message.get("run_id", run_id) == run_id, "the commit message is of another run")
        for f in message["files"]:
            name = f["name"]
            base = posixpath.basename(name)
            plain = name[len("_rejected/"):] if message is not result.get("commit") and \
                name.startswith("_rejected/") else name
            _check(engine_file(base) and f"-{run_id[:16]}-a" in base and _bad_entry_path(plain) is None,
                   f"{name!r} is not a file of this run")
            staged = posixpath.join(temporary_dir(out, run_id), base)
            final = posixpath.join(out, name)
            if f["upload"] is not None:
                _check(s3 and f["tmp"] == final, f"{f['tmp']!r} is not a pending upload of this output")
            else:
                _check(f["tmp"] == staged, f"{f['tmp']!r} is not under this run's temporary directory")


# ---------------------------------------------------------------------------------------------
# The journal


class Journal:
    """Task results of one run, as JSON files under ``root`` (``OUT/_temporary/<run>/journal``).

    ``run_id``, ``out`` and ``shuffle_root`` say which paths a loaded entry may name (see
    :func:`check_paths`); an entry that names anything else is ignored.
    """

    def __init__(self, fs, root: str, *, run_id: str = "", out: str = "", shuffle_root: str | None = None,
                 s3: bool = False) -> None:
        self.fs, self.root = fs, root
        self.run_id, self.out, self.shuffle_root, self.s3 = run_id, out, shuffle_root, s3

    def _path(self, stage: str, partition: int) -> str:
        return posixpath.join(self.root, stage, f"{partition:05d}.json")

    def record(self, stage: str, partition: int, result: dict) -> None:
        try:
            body = encode_result(result)
        except (TypeError, ValueError, pa.ArrowException, JournalEntryError) as exc:
            log.debug("%s partition %d: result not journaled (%s); a resumed run recomputes it", stage, partition,
                      exc)
            return
        doc = canonical({"format": FORMAT, "version": VERSION, "run_id": self.run_id, "stage": stage,
                         "partition": int(partition), "entry": body})
        digest = hashlib.sha256(doc.encode()).hexdigest()
        data = f'{{"doc":{doc},"sha256":"{digest}"}}'.encode()
        path = self._path(stage, partition)
        if is_local(self.fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def parse(self, data: bytes, stage: str, partition: int) -> dict:
        """The result held by one journal file's bytes, after every check."""
        _check(len(data) <= MAX_ENTRY_BYTES, "the entry is too large")
        try:
            doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise JournalEntryError(f"not JSON: {exc}") from exc
        _dict(doc, "journal file", {"doc", "sha256"}, {"doc", "sha256"})
        digest, doc = doc["sha256"], doc["doc"]
        _dict(doc, "journal entry", {"format", "version", "run_id", "stage", "partition", "entry"},
              {"format", "version", "run_id", "stage", "partition", "entry"})
        _check(isinstance(digest, str) and hashlib.sha256(canonical(doc).encode()).hexdigest() == digest,
               "checksum mismatch")
        _check(doc["format"] == FORMAT and doc["version"] == VERSION, "unknown journal format")
        _check(doc["run_id"] == self.run_id and doc["stage"] == stage and doc["partition"] == partition,
               "the entry belongs to another run, stage or partition")
        result = decode_result(doc["entry"])
        check_paths(result, run_id=self.run_id, out=self.out, shuffle_root=self.shuffle_root, s3=self.s3)
        return result

    def load(self, stage: str) -> dict[int, dict]:
        out: dict[int, dict] = {}
        try:
            listing = self.fs.ls(posixpath.join(self.root, stage), detail=True)
        except FileNotFoundError:
            return out
        old = 0
        for item in listing:
            p = item["name"]
            base = posixpath.basename(p)
            if base.endswith(".pkl"):
                old += 1            # the old pickle format: never opened
                continue
            m = re.fullmatch(r"(\d{5,9})\.json", base)
            if m is None:
                continue
            partition = int(m.group(1))
            try:
                size = item.get("size")
                _check(size is None or size <= MAX_ENTRY_BYTES, "the entry is too large")
                out[partition] = self.parse(self.fs.cat_file(p), stage, partition)
            except JournalEntryError as exc:
                log.warning("journal entry %s ignored: %s; its task runs again", p, exc)
            except Exception as exc:  # noqa: BLE001 - unreadable or malformed in a way not foreseen: not used
                log.warning("journal entry %s ignored (%s: %s); its task runs again", p, type(exc).__name__, exc)
        if old:
            log.warning("%d journal file(s) of an old format under %s ignored (never loaded); their tasks run "
                        "again", old, posixpath.join(self.root, stage))
        return out

    def reset(self) -> None:
        try:
            self.fs.rm(self.root, recursive=True)
        except (FileNotFoundError, OSError):
            pass


def still_valid(fs_shuffle, fs_out, result: dict, pending_uploads: set[str] | None) -> bool:
    """True when every file a journaled result points to is still there to be used."""
    try:
        if result.get("rejected"):        # the attempt's rejected-rows file, whatever its result's kind
            for f in result["rejected"]["message"]["files"]:
                if f.get("upload"):
                    if pending_uploads is None or f["upload"]["upload_id"] not in pending_uploads:
                        return False
                elif not fs_out.exists(f["tmp"]):
                    return False
        if "shuffle" in result:
            return fs_shuffle.exists(result["shuffle"].path)
        if "next_input" in result:
            return fs_shuffle.exists(result["next_input"].path)
        if "commit" in result:
            for f in result["commit"]["files"]:
                if f.get("upload"):
                    if pending_uploads is None or f["upload"]["upload_id"] not in pending_uploads:
                        return False
                elif not fs_out.exists(f["tmp"]):
                    return False
            return True
    except Exception:  # noqa: BLE001 - anything odd: recompute the task
        return False
    return False


__all__ = ["Journal", "JournalEntryError", "still_valid", "encode_result", "decode_result", "check_paths"]
