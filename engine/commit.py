"""Output commit: attempt-scoped writes with CRC32C, a driver-only publish, a self-checked manifest.

The protocol, in the order things happen:

1. **Task attempt** writes Parquet (page checksums on) only under ``OUT/_temporary/<run>/`` with a name
   carrying partition, attempt and a uuid, computing CRC32C of every byte as it streams out. It returns
   a commit message: ``{"partition", "attempt", "files": [{"tmp", "rows", "bytes", "crc32c"}]}``.
   It never writes a final name, and nothing once its run has ended (the run's fence, :mod:`engine.fence`).
2. **Driver** collects commit messages; the first successful attempt per partition wins, the others'
   files are deleted.
3. **Job commit** moves winners' files to final names (``part-<partition>-<run>.parquet``, unique per
   run, so an old generation stays intact until the manifest flips), then writes ``OUT/_SUCCESS``, the
   JSON manifest: format version, job, fingerprint, run id, engine version, input snapshot, schema,
   files with rows, bytes and CRC32C, timings, and a checksum of its own canonical content. With
   ``mode="error"`` it is created put-if-absent (``os.link`` of an fsynced temp file on local disks,
   ``If-None-Match: *`` on S3), so of two racing runs exactly one commits. The run's fence is closed
   before publishing, and the output lock is checked right before the manifest write: a run that lost
   its lease never commits.
4. **Readers** go through the manifest, never a listing. :func:`load_manifest` checks the
   manifest's own checksum and that every entry is a relative, normalized path under the output
   (``col=value/`` subdirectories allowed; no ``..``, absolute path or URL), so a forged manifest
   never makes a reader open a file elsewhere. :func:`read` checks every byte of every file it
   reads against the manifest's size and CRC32C (``verify=True``, the default) and decodes the
   Parquet from the very bytes it checked; :func:`verify` also decodes every page.
5. **A damaged manifest** (unreadable, failing its checksum, or listing a bad entry) is refused by
   every reader and by modes ``"error"`` and ``"append"``, with the remedies in the message:
   ``mode="overwrite"`` replaces it (compare-and-swap against the damaged bytes; its generation's
   files are removed after the new commit), and ``mapreduce clean PATH --force`` removes it
   (:func:`remove_damaged_manifest`) together with the engine's data files.

Partitioned outputs (``partition_by``): an attempt splits its rows into Hive partition directories
(:class:`PartitionedAttemptWriter`, escaping by :mod:`engine.hive`); its files still sit flat in the
run's temporary directory and get their ``col=value/…`` name at publish. The manifest (version 2) then
records each file's values, the partitioning, per-partition provenance (``partitions``) and what each
logical date committed (``dates``). ``mode="overwrite-partitions"`` builds the next generation from
the previous one minus the partitions this run produced plus its files, and swaps it in like
``overwrite``; :mod:`engine.publish` does the same from a staged output.

This module never imports dask.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import mmap
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import crc32c as _crc32c
import pyarrow as pa

from .datasets import filesystem, is_local, is_s3, precondition_failed
from .errors import CommitError, ConcurrentRunError, IntegrityError, ManifestError, OutputExistsError

if TYPE_CHECKING:
    import pyarrow.parquet as pq     # imported where used: a rerun with nothing to do needs no Parquet

MANIFEST = "_SUCCESS"
TEMPORARY = "_temporary"
MANIFEST_FORMAT = "engine-manifest"
MANIFEST_VERSION = 2     # 2: Hive-partitioned outputs (partition_by); 1 otherwise
_READ_BLOCK = 8 << 20


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli), the checksum of S3's ``ChecksumCRC32C`` and HDFS."""
    return _crc32c.crc32c(data, value=value)


class ChecksummingFile:
    """A write-only file wrapper that counts bytes and computes CRC32C as they stream through."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.crc = 0
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.crc = crc32c(mv, self.crc)
        self.size += len(mv)
        self.raw.write(mv)
        return len(mv)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.raw.close()

    def abort(self) -> None:
        """Close without publishing where the backend allows it (S3 multipart uploads)."""
        self.closed = True
        discard = getattr(self.raw, "discard", None)
        if callable(discard):
            discard()
        else:
            self.raw.close()


def read_blocks(fs, path: str):
    """The bytes of a stored file, in blocks of ``_READ_BLOCK``."""
    with fs.open(path, "rb") as f:
        while True:
            block = f.read(_READ_BLOCK)
            if not block:
                return
            yield block


def file_crc32c(fs, path: str) -> tuple[int, int]:
    """``(crc32c, size)`` of a stored file, read in blocks."""
    crc, size = 0, 0
    for block in read_blocks(fs, path):
        crc = crc32c(block, crc)
        size += len(block)
    return crc, size


def temporary_dir(out: str, run_id: str) -> str:
    return posixpath.join(out, TEMPORARY, run_id)


_NAME = re.compile(r"^part-\d{5}-(?P<run>[0-9a-f]{8,16})-a\d+-[0-9a-f]{8}\.parquet$")


def engine_file(name: str) -> bool:
    """True for data file names only this engine produces (``part-<p>-<run>-a<attempt>-<uuid>.parquet``)."""
    return bool(_NAME.match(name))



def _bucket_key(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


class ParquetAttemptWriter:
    """Streams one task attempt's output into an attempt-scoped Parquet file with a running CRC32C.

    Local disks and most stores: the file goes to ``OUT/_temporary/<run>/<name>`` and is renamed at
    job commit. S3: the file is written at its final key as a multipart upload that is left
    uncompleted (invisible) until the driver completes it at job commit, or aborts it.

    With a ``fence`` (the run's :class:`engine.fence.RunFence`), the writer checks it before opening
    the file and before closing it, never creates the run's temporary directory (the driver did), and
    checks it once more after the file (or upload) exists: if the run has ended by then, it removes
    the file or aborts the upload and raises FencedError, so a late attempt leaves nothing behind.

    >>> w = ParquetAttemptWriter(fs, "/out", "run1", partition=0, attempt=0)   # doctest: +SKIP
    >>> w.write(table); message = w.close()                                    # doctest: +SKIP
    """

    def __init__(self, fs, out: str, run_id: str, partition: int, attempt: int, *,
                 page_checksums: bool = True, compression: str = "snappy", fence: Any = None,
                 directory: str = "", values: dict | None = None) -> None:
        self.fs, self.out, self.run_id = fs, out, run_id
        self.partition, self.attempt = partition, attempt
        self.page_checksums, self.compression = page_checksums, compression
        self.fence = fence
        self.values = values
        base = f"part-{partition:05d}-{run_id[:16]}-a{attempt}-{uuid.uuid4().hex[:8]}.parquet"
        # the final name, relative to the output: in a Hive partition directory for partitioned outputs
        self.name = posixpath.join(directory, base) if directory else base
        self.s3 = is_s3(fs)
        # Attempt files sit flat in the run's temporary directory (no directory is created there:
        # the fence relies on it); on S3 they are pending uploads at their final key.
        self.path = posixpath.join(out, self.name) if self.s3 else posixpath.join(temporary_dir(out, run_id), base)
        self._file: ChecksummingFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def _what(self) -> str:
        return f"partition {self.partition} attempt {self.attempt}"

    def _open(self, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq          # here: a rerun with nothing to do never writes Parquet
        if self.fence is not None:
            self.fence.check(self._what(), self.path)
        if self.s3:
            raw = self.fs.open(self.path, "wb", autocommit=False)
        else:
            if is_local(self.fs) and self.fence is None:
                self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
            try:
                raw = self.fs.open(self.path, "wb")
            except FileNotFoundError:
                # the run's temporary directory is gone: its run ended and was cleaned up
                if self.fence is not None and not self.fence.is_open():
                    raise self.fence.error(self._what()) from None
                raise
        self._file = ChecksummingFile(raw)
        self._writer = pq.ParquetWriter(self._file, schema, compression=self.compression,
                                        write_page_checksum=self.page_checksums)

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self._writer is None:
            self._open(data.schema)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        self._writer.write_table(data)
        self.rows += data.num_rows

    def close(self, schema: pa.Schema | None = None) -> dict:
        """Finish the file (without publishing it) and return the task's commit message."""
        if self._writer is None:
            self._open(schema if schema is not None else pa.schema([]))
        elif self.fence is not None and not self.fence.is_open():
            self.abort()
            raise self.fence.error(self._what(), self.path)
        self._writer.close()
        self._file.close()
        entry = {"name": self.name, "tmp": self.path, "rows": self.rows, "bytes": self._file.size,
                 "crc32c": self._file.crc, "upload": None}
        if self.values is not None:
            entry["values"] = dict(self.values)
        if self.s3:
            raw = self._file.raw
            entry["upload"] = {"upload_id": raw.mpu["UploadId"], "parts": list(raw.parts)}
        if self.fence is not None and not self.fence.is_open():
            # The file (or upload) exists now; the run ended before this check, so the driver's cleanup
            # may have listed the output before it existed: remove it here.
            self.abort()
            raise self.fence.error(self._what(), self.path)
        return {"partition": self.partition, "attempt": self.attempt, "run_id": self.run_id, "files": [entry]}

    def abort(self) -> None:
        """Discard this attempt's file: nothing of it is ever published."""
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - the file is being discarded anyway
            pass
        if self._file is not None:
            if not self._file.closed:
                with contextlib.suppress(Exception):
                    self._file.abort()
            elif self.s3:
                upload = getattr(self._file.raw, "mpu", None)
                if upload:
                    bucket, key = _bucket_key(self.path)
                    with contextlib.suppress(Exception):
                        self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key,
                                        UploadId=upload["UploadId"])
        if not self.s3:
            if self.fence is not None:
                self.fence.discard(self.fs, self.path)
            else:
                try:
                    self.fs.rm(self.path)
                except (FileNotFoundError, OSError):
                    pass


class PartitionedAttemptWriter:
    """One task attempt's output split into Hive partition directories (``partition_by``).

    Rows are grouped by the values of the partition columns (:func:`engine.hive.split_by_partition`);
    each directory gets its own :class:`ParquetAttemptWriter`, and a file that reaches ``max_file_bytes``
    is closed and the next rows of its directory go to a new one, so a partition holds at most one
    file per reduce task plus one per ``max_file_bytes`` of its data. The partition columns are not
    stored in the files (their values are in the directory names and the manifest), as Hive, Spark,
    pyarrow and DuckDB write them. :meth:`close` returns one commit message listing every file.
    """

    def __init__(self, fs, out: str, run_id: str, partition: int, attempt: int, partition_by: Sequence[str], *,
                 page_checksums: bool = True, compression: str = "snappy", fence: Any = None,
                 max_file_bytes: int = 512 << 20) -> None:
        self.args = (fs, out, run_id, partition, attempt)
        self.kwargs = {"page_checksums": page_checksums, "compression": compression, "fence": fence}
        self.partition, self.attempt, self.run_id = partition, attempt, run_id
        self.partition_by = tuple(partition_by)
        self.max_file_bytes = max_file_bytes
        self.open: dict[str, ParquetAttemptWriter] = {}
        self.done: list[dict] = []
        self.rows = 0
        # rows wait per directory until they make a row group of a useful size (a batch spread over
        # many partitions would otherwise write many tiny row groups); all waiting rows are bounded
        self.pending: dict[str, tuple[dict, list[pa.Table], int, int]] = {}
        self.pending_bytes = 0
        self.group_bytes = max(1, min(self.GROUP_BYTES, max_file_bytes // 4))    # files roll near their bound

    GROUP_ROWS = 1 << 17            # a directory's waiting rows are written once they reach this many...
    GROUP_BYTES = 16 << 20          # ... or this many bytes
    PENDING_BYTES = 64 << 20        # and the largest waiting group goes out while all waiting rows exceed this

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        from . import hive
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        for directory, values, rows in hive.split_by_partition(data, self.partition_by):
            old_values, tables, n, nbytes = self.pending.get(directory, (values, [], 0, 0))
            tables.append(rows)
            self.pending[directory] = (old_values, tables, n + rows.num_rows, nbytes + rows.nbytes)
            self.pending_bytes += rows.nbytes
            self.rows += rows.num_rows
            if n + rows.num_rows >= self.GROUP_ROWS or nbytes + rows.nbytes >= self.group_bytes:
                self._flush(directory)
        while self.pending_bytes > self.PENDING_BYTES and self.pending:
            self._flush(max(self.pending, key=lambda d: self.pending[d][3]))

    def _flush(self, directory: str) -> None:
        values, tables, _, nbytes = self.pending.pop(directory)
        self.pending_bytes -= nbytes
        writer = self.open.get(directory)
        if writer is None:
            writer = self.open[directory] = ParquetAttemptWriter(*self.args, directory=directory, values=values,
                                                                 **self.kwargs)
        writer.write(pa.concat_tables(tables) if len(tables) > 1 else tables[0])
        if writer._file is not None and writer._file.size >= self.max_file_bytes:
            self.done += writer.close()["files"]
            del self.open[directory]

    def close(self, schema: pa.Schema | None = None) -> dict:
        for directory in sorted(self.pending):
            self._flush(directory)
        for directory in sorted(self.open):
            self.done += self.open.pop(directory).close()["files"]
        return {"partition": self.partition, "attempt": self.attempt, "run_id": self.run_id, "files": self.done}

    def abort(self) -> None:
        self.pending.clear()
        for writer in self.open.values():
            writer.abort()
        self.open.clear()
        fs = self.args[0]
        for entry in self.done:
            discard_file(fs, entry)
        self.done = []


def publish_file(fs, out: str, entry: dict) -> str:
    """Make one winning attempt file visible under its final name; idempotent (resumed commits)."""
    final = posixpath.join(out, entry["name"])
    if entry.get("upload"):
        bucket, key = _bucket_key(final)
        try:
            fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=entry["upload"]["upload_id"],
                       MultipartUpload={"Parts": entry["upload"]["parts"]})
        except Exception:  # noqa: BLE001 - already completed by an earlier, interrupted commit?
            fs.invalidate_cache(final)
            if not fs.exists(final) or fs.info(final)["size"] != entry["bytes"]:
                raise
        fs.invalidate_cache(out)
        return final
    if is_local(fs) and "/" in entry["name"]:
        os.makedirs(posixpath.dirname(final), exist_ok=True)     # a Hive partition directory
    try:
        fs.mv(entry["tmp"], final)
    except FileNotFoundError:
        if fs.exists(final) and fs.info(final)["size"] == entry["bytes"]:
            return final                      # published by an earlier, interrupted commit
        raise
    return final


def discard_file(fs, entry: dict) -> None:
    """Delete (or abort the upload of) one losing attempt file."""
    if entry.get("upload"):
        bucket, key = _bucket_key(entry["tmp"])
        try:
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=entry["upload"]["upload_id"])
        except Exception:  # noqa: BLE001 - already aborted or completed elsewhere
            pass
        return
    try:
        fs.rm(entry["tmp"])
    except (FileNotFoundError, OSError):
        pass


# ---------------------------------------------------------------------------------------------
# Manifest


def _canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


_ENCODER = json.JSONEncoder(sort_keys=True)


def manifest_text(doc: dict) -> bytes:
    """The bytes of a manifest: JSON with sorted keys, one top-level key per line and one entry of
    ``files``, ``partitions`` and ``dates`` per line, each line by the C encoder (``indent=`` makes
    ``json`` encode in Python: 12 ms of CPU for an output of 365 partitions, against 5 ms this way)."""
    enc = _ENCODER.encode

    def value(v: Any) -> str:
        if isinstance(v, list) and v:
            return "[\n  " + ",\n  ".join(map(enc, v)) + "\n ]"
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            return "{\n  " + ",\n  ".join(f"{enc(k)}: {enc(v[k])}" for k in sorted(v)) + "\n }"
        return enc(v)
    return ("{\n" + ",\n".join(f" {enc(k)}: {value(doc[k])}" for k in sorted(doc)) + "\n}").encode()


def seal(doc: dict) -> dict:
    """Add the manifest's checksum of its own canonical content."""
    doc = dict(doc)
    doc["checksum"] = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    return doc


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@dataclass(frozen=True)
class Manifest:
    """A parsed, checksum-verified ``_SUCCESS`` manifest whose every entry names a file under ``root``.

    ``damage`` is set only on what ``load_manifest(..., damaged=True)`` returns for a manifest that
    cannot be trusted (e.g. ``"OUT/_SUCCESS: manifest fails its own checksum"``). Then ``raw`` holds
    its bytes (the compare-and-swap token of an overwrite), ``files`` lists the engine data files
    present in ``root`` (kept until a new generation commits) and nothing else of ``doc`` counts.
    """

    doc: dict
    root: str
    raw: bytes = b""
    damage: str | None = None

    @property
    def files(self) -> list[dict]:
        return self.doc["files"]

    @property
    def schema(self) -> pa.Schema:
        return schema_from_text(self.doc["schema"])

    @property
    def rows(self) -> int:
        return sum(f["rows"] for f in self.files)

    @property
    def generation(self) -> int:
        return int(self.doc.get("generation", 1))

    def path_of(self, entry: dict) -> str:
        return posixpath.join(self.root, entry["path"])


def _remedy(out: str) -> str:
    return (f"rerun the job with mode='overwrite' to replace it, or remove it with "
            f"`mapreduce clean {out} --force` (that also removes the engine's data files there)")


def _bad_entry_path(path: Any) -> str | None:
    """Why ``path`` may not name a data file of an output, or None if it may.

    A data file is named by a relative POSIX path in normal form below the output: no ``..``, no
    absolute path or URL, no ``_``/``.``-prefixed (engine-owned or hidden) part; directories are
    ``col=value`` partition directories.
    """
    if not isinstance(path, str) or not path:
        return "not a file name"
    if len(path) > 1024 or any(ord(ch) < 32 for ch in path) or "\\" in path:
        return "not a plain file name"
    if ":" in path or path.startswith("/"):
        return "an absolute path or URL, outside the output"
    parts = path.split("/")
    if ".." in parts or posixpath.normpath(path) != path:
        return "a path that leaves the output or is not in normal form"
    if any(part.startswith(("_", ".")) for part in parts):
        return "an engine-owned or hidden name"
    if any("=" not in part for part in parts[:-1]):
        return "a subdirectory that is not a col=value partition directory"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entries(path: str, out: str, doc: dict) -> None:
    """ManifestError naming the first entry that is malformed or names a file outside ``out``."""
    files = doc.get("files")
    if not isinstance(files, list):
        raise ManifestError(f"manifest {path} has no list of files; it is damaged or forged: {_remedy(out)}",
                            [f"{path}: no list of files"])
    seen: set[str] = set()
    for i, entry in enumerate(files):
        name = entry.get("path") if isinstance(entry, dict) else None
        why = _bad_entry_path(name)
        if why is None and name in seen:
            why = "listed twice"
        if why is None and not all(_count(entry.get(k)) for k in ("rows", "bytes", "crc32c")):
            why = "an entry whose rows, bytes or crc32c is not a non-negative integer"
        if why is None and not isinstance(entry.get("partition"), int):
            why = "an entry without an integer partition"
        if why is not None:
            raise ManifestError(f"manifest {path} entry {i} ({name!r}) is {why}: a manifest may only list files "
                                f"inside its output {out}, so it was damaged or forged and nothing was read: "
                                f"{_remedy(out)}",
                                [f"{path}: entry {i} {name!r} is {why}"])
        seen.add(name)
    rejected = doc.get("rejected", [])
    if not isinstance(rejected, list):
        raise ManifestError(f"manifest {path} has a malformed list of rejected files; it is damaged or forged: "
                            f"{_remedy(out)}", [f"{path}: malformed rejected list"])
    for i, entry in enumerate(rejected):
        name = entry.get("path") if isinstance(entry, dict) else None
        why = None
        if not isinstance(name, str) or not name.startswith(REJECTED_DIR + "/"):
            why = f"not a file in {REJECTED_DIR}/"
        else:
            why = _bad_entry_path(name[len(REJECTED_DIR) + 1:])
            if why is None and "/" in name[len(REJECTED_DIR) + 1:]:
                why = "in a subdirectory"
        if why is None and not all(_count(entry.get(k)) for k in ("rows", "bytes", "crc32c")):
            why = "an entry whose rows, bytes or crc32c is not a non-negative integer"
        if why is not None:
            raise ManifestError(f"manifest {path} rejected-rows entry {i} ({name!r}) is {why}: it was damaged or "
                                f"forged and nothing was read: {_remedy(out)}", [f"{path}: rejected entry {i} is {why}"])


REJECTED_DIR = "_rejected"       # rejected rows (engine.rejects), published with the run that set them aside


class _NewerManifest(ManifestError):
    """A manifest written by a newer engine: intact, only not for this engine to read or replace."""


def _parse_manifest(path: str, out: str, raw: bytes) -> dict:
    """The manifest document in ``raw``; ManifestError if it is unreadable, damaged or forged."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {path} is unreadable, not valid JSON ({exc}); the committed output "
                            f"cannot be trusted: {_remedy(out)}", [f"{path}: unreadable manifest"]) from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path} is not an engine manifest: {_remedy(out)}",
                            [f"{path}: not an engine manifest"])
    expected = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    if doc.get("checksum") != expected:
        raise ManifestError(f"manifest {path} fails its own checksum: it was modified or corrupted after commit, "
                            f"so the committed output cannot be trusted: {_remedy(out)}",
                            [f"{path}: manifest fails its own checksum"])
    version = doc.get("version", 0)
    if not _count(version):
        raise ManifestError(f"manifest {path} has no valid format version ({version!r}): {_remedy(out)}",
                            [f"{path}: no valid format version"])
    if version > MANIFEST_VERSION:
        raise _NewerManifest(f"manifest {path} has format version {version!r}, newer than this engine reads "
                             f"({MANIFEST_VERSION}); upgrade the engine")
    _check_entries(path, out, doc)
    return doc


# The last manifest parsed, ``(path, bytes, document)``: a run reads its output's manifest twice (before and
# under the output lock), and parsing and checking one of 365 partitions costs ~10 ms. Documents are never
# modified in place (a new generation is a new document).
_LAST_PARSED: tuple[str, bytes, dict] | None = None


def load_manifest(fs, out: str, *, damaged: bool = False) -> Manifest | None:
    """The committed manifest of ``out``, or None when nothing is committed.

    Raises ManifestError if the manifest is unreadable, fails its own checksum, or lists an entry
    that is not a file under ``out`` (so a forged manifest never makes a reader open anything
    outside the output). With ``damaged=True`` such a manifest is returned instead, with
    :attr:`Manifest.damage` saying what is wrong (for ``mode="overwrite"`` and ``clean --force``).
    """
    global _LAST_PARSED
    path = posixpath.join(out, MANIFEST)
    try:
        if is_s3(fs):
            fs.invalidate_cache(path)
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    last = _LAST_PARSED
    if last is not None and last[0] == path and last[1] == raw:
        return Manifest(last[2], out, raw)      # the same bytes as the last one parsed: the same document
    try:
        doc = _parse_manifest(path, out, raw)
    except _NewerManifest:
        raise
    except ManifestError as exc:
        if not damaged:
            raise
        return _damaged_manifest(fs, out, raw, exc)
    _LAST_PARSED = (path, raw, doc)
    return Manifest(doc, out, raw)


def _damaged_manifest(fs, out: str, raw: bytes, exc: ManifestError) -> Manifest:
    """Stand-in for a damaged manifest: its bytes, what is wrong, and the engine files present now."""
    try:
        generation = json.loads(raw).get("generation", 0)
    except Exception:  # noqa: BLE001 - damaged: anything goes
        generation = 0
    present = []
    if is_s3(fs):
        fs.invalidate_cache(out)
    for rel, _ in data_files(fs, out):
        if engine_file(posixpath.basename(rel)) and _in_partitions(rel):
            present.append({"path": rel, "partition": -1, "rows": 0, "bytes": 0, "crc32c": 0})
    doc = {"format": MANIFEST_FORMAT, "generation": generation if _count(generation) else 0, "run_id": None,
           "files": present}
    return Manifest(doc, out, raw, damage="; ".join(exc.problems) or str(exc))


def remove_damaged_manifest(fs, out: str, damaged: Manifest) -> str:
    """Delete the damaged ``_SUCCESS`` that ``damaged`` stands for, if it still holds the same bytes.

    Call only while holding the output lock. Returns the path removed; ConcurrentRunError if the
    manifest changed since it was inspected.
    """
    path = posixpath.join(out, MANIFEST)
    if is_s3(fs):
        fs.invalidate_cache(path)
    try:
        current = fs.cat_file(path)
    except FileNotFoundError:
        return path
    if current != damaged.raw:
        raise ConcurrentRunError(f"{path} changed while it was being removed; inspect {out} again")
    fs.rm(path)
    if is_s3(fs):
        fs.invalidate_cache(out)
    return path


def _local_tmp_write(path: str, data: bytes) -> str:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _s3_put(fs, path: str, data: bytes, **conditions) -> None:
    bucket, key = _bucket_key(path)
    fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **conditions)
    fs.invalidate_cache(path)



def write_manifest(fs, path: str, data: bytes, previous: Manifest | None) -> None:
    """Create (put-if-absent) or replace (compare-and-swap on ``previous``) the manifest at ``path``.

    The swap compares the stored bytes with ``previous.raw`` (locally, under the output lock) or its
    MD5 ETag (``If-Match`` on S3), so a damaged manifest is replaced only if it is still the one seen.

    Raises FileExistsError when another writer got there first. On S3 a failed condition is checked
    against the stored bytes: a write whose answer was lost and whose retry then failed its own
    condition (412) is this writer's success, not another writer's.
    """
    if is_local(fs):
        tmp = _local_tmp_write(path, data)
        try:
            if previous is None:
                os.link(tmp, path)             # exactly one creator wins
            else:
                # The caller holds the output lock, so no other run can swap the manifest meanwhile.
                with open(path, "rb") as f:
                    if f.read() != previous.raw:
                        raise FileExistsError(path)
                os.replace(tmp, path)
                tmp = None
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
    elif is_s3(fs):
        try:
            if previous is None:
                _s3_put(fs, path, data, IfNoneMatch="*")
            else:
                _s3_put(fs, path, data, IfMatch='"' + hashlib.md5(previous.raw).hexdigest() + '"')
        except Exception as exc:  # noqa: BLE001 - classified
            if precondition_failed(exc):
                try:
                    stored = _stored(fs, path)
                except Exception as read_exc:  # noqa: BLE001 - the store failed again: say what is unknown
                    raise CommitError(f"the manifest write at {path} met a failed condition and the manifest could "
                                      f"not be read back ({type(read_exc).__name__}: {read_exc}), so whether this "
                                      "run committed is unknown; check with engine.verify or rerun the job (a rerun "
                                      "of a committed run is a no-op)") from read_exc
                if stored == data:
                    # Our own write: it landed, its answer was lost, and the client's retry met the condition
                    # that write had just made false. (The bytes carry this run's id: no other run wrote them.)
                    return
                raise FileExistsError(path) from exc
            raise
    else:
        if previous is None and fs.exists(path):
            raise FileExistsError(path)
        fs.pipe_file(path, data)


def _stored(fs, path: str) -> bytes | None:
    """The bytes stored at ``path`` now (None if there is no such object)."""
    fs.invalidate_cache(path)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Job commit (driver only)


def choose_winners(messages: Sequence[dict]) -> tuple[dict[int, dict], list[dict]]:
    """First commit message per partition wins; returns (winners by partition, losers)."""
    winners: dict[int, dict] = {}
    losers: list[dict] = []
    for m in messages:
        if m["partition"] in winners:
            losers.append(m)
        else:
            winners[m["partition"]] = m
    return winners, losers


def discard(fs, messages: Sequence[dict]) -> None:
    """Delete the files (abort the uploads) of attempts that lost."""
    for m in messages:
        for f in m["files"]:
            discard_file(fs, f)


MODES = ("error", "overwrite", "append", "overwrite-partitions")


def partition_of(path: str) -> str:
    """The Hive partition directory of a manifest entry's path (``""`` for an unpartitioned file)."""
    return posixpath.dirname(path)


def _same_schema(a: pa.Schema, b: pa.Schema) -> bool:
    return a.remove_metadata().equals(b.remove_metadata())


def _merge_files(out: str, previous: Manifest | None, entries: list[dict], schema: pa.Schema, mode: str,
                 partition_by: list[str]) -> tuple[list[dict], set[str]]:
    """The new generation's files, and the partition directories whose earlier files it drops."""
    if previous is None or previous.damage is not None or mode in ("error", "overwrite"):
        return entries, set()
    old_by = list(previous.doc.get("partition_by") or [])
    if old_by != partition_by:
        raise CommitError(f"cannot {'append to' if mode == 'append' else 'replace partitions of'} {out}: it is "
                          f"partitioned by {old_by or 'nothing'}, this run by {partition_by or 'nothing'}; use the "
                          "same partition_by, or write to a new output (or use mode='overwrite')")
    if schema.names and previous.schema.names and not _same_schema(previous.schema, schema):
        raise CommitError(f"cannot {'append to' if mode == 'append' else 'replace partitions of'} {out}: its schema "
                          f"{previous.schema} differs from this run's {schema}; write to a new output or use "
                          "mode='overwrite'")
    if mode == "append":
        offset = 1 + max((f["partition"] for f in previous.files), default=-1)
        return previous.files + [{**f, "partition": f["partition"] + offset} for f in entries], set()
    produced = {partition_of(e["path"]) for e in entries}
    kept = [f for f in previous.files if partition_of(f["path"]) not in produced]
    return kept + entries, produced


def _provenance(previous: Manifest | None, files: list[dict], entries: list[dict], replaced: set[str], mode: str,
                meta: dict, run_id: str, generation: int, committed_at: str, logical_date: str | None,
                partition_by: list[str]) -> dict:
    """The manifest's ``partitions`` (who wrote each Hive partition, from what) and ``dates`` (what
    each logical date's last run committed) for the new generation."""
    prev = previous.doc if previous is not None and previous.damage is None and mode in (
        "append", "overwrite-partitions") else {}
    digest = (meta.get("input") or {}).get("digest")
    produced = sorted({partition_of(e["path"]) for e in entries})
    out: dict = {}
    if partition_by:
        partitions = {d: p for d, p in (prev.get("partitions") or {}).items() if d not in produced}
        totals: dict[str, list[int]] = {}
        for f in files:
            t = totals.setdefault(partition_of(f["path"]), [0, 0, 0])
            t[0] += 1
            t[1] += f["rows"]
            t[2] += f["bytes"]
        values = {partition_of(e["path"]): e.get("values") for e in entries}
        for d in produced:
            n, rows, nbytes = totals[d]
            partitions[d] = {"values": values[d], "run_id": run_id, "job": meta.get("job"),
                             "job_version": meta.get("job_version"), "fingerprint": meta.get("fingerprint"),
                             "code_fingerprint": meta.get("code_fingerprint"), "engine_version": meta.get("engine_version"),
                             "input_digest": digest, "logical_date": logical_date, "committed_at": committed_at,
                             "generation": generation, "files": n, "rows": rows, "bytes": nbytes}
        out["partitions"] = dict(sorted(partitions.items()))
    dates = {}
    for day, rec in (prev.get("dates") or {}).items():
        # a date whose partitions another date's run has just rewritten is no longer as it committed it
        if day != logical_date and not (set(rec.get("partitions") or ()) & replaced):
            dates[day] = rec
    if logical_date is not None:
        dates[logical_date] = {"run_id": run_id, "fingerprint": meta.get("fingerprint"),
                               "job_version": meta.get("job_version"),
                               "code_fingerprint": meta.get("code_fingerprint"), "input_digest": digest,
                               "committed_at": committed_at, "generation": generation, "partitions": produced,
                               "rows": sum(e["rows"] for e in entries)}
    if dates:
        out["dates"] = dict(sorted(dates.items()))
    return out


def commit_job(fs, out: str, *, run_id: str, winners: dict[int, dict], schema: pa.Schema, mode: str,
               previous: Manifest | None, meta: dict, hook: Any = None, fence: Any = None,
               writers: Any = None, partition_by: Sequence[str] = (), logical_date: str | None = None,
               rejected: Sequence[dict] = ()) -> Manifest:
    """Publish the winners' files, then create the manifest; returns the committed manifest.

    Until the manifest is written, readers see the previous generation (or nothing); published
    files of a run that dies before that point are orphans that the next run removes.
    ``hook(point)`` is called at each step (fault-injection tests kill the driver there).

    ``writers`` (the run's :class:`engine.fence.RunFence`) is closed first: no attempt of this run
    writes anything into the output from then on, and the cleanup after the manifest removes what
    late attempts began before. ``fence()`` (the output lock's ``check``) is called right before the
    manifest write and raises ConcurrentRunError if this run lost the output's lock: then nothing is
    committed, and the files it already published are unreferenced orphans that the next run's
    cleanup removes (a run that lost its lock writes and deletes nothing more). It is called again
    before that cleanup, which is skipped if the lock was lost meanwhile.

    ``rejected``: the commit messages of the run's rejected-rows files (:mod:`engine.rejects`); they
    are published with the data files and listed under ``"rejected"`` (an appending run keeps the
    rejected files listed before it, an overwriting one replaces them).
    """
    if writers is not None:
        writers.close()
    partition_by = list(partition_by)
    if mode == "overwrite-partitions" and not partition_by:
        raise CommitError("mode='overwrite-partitions' replaces Hive partitions: pass partition_by=[...] (the output's "
                          "partition columns), or use mode='overwrite' to replace the whole output")
    entries: list[dict] = []
    for partition in sorted(winners):
        for f in winners[partition]["files"]:
            entry = {"path": f["name"], "partition": partition, "rows": f["rows"], "bytes": f["bytes"],
                     "crc32c": f["crc32c"]}
            if partition_by:
                entry["values"] = f.get("values")
            entries.append(entry)
    files, replaced = _merge_files(out, previous, entries, schema, mode, partition_by)
    new_rejected = [{"path": f["name"], "partition": m["partition"], "rows": f["rows"], "bytes": f["bytes"],
                     "crc32c": f["crc32c"], "run_id": run_id, "logical_date": logical_date}
                    for m in rejected for f in m["files"]]
    kept_rejected = []
    if previous is not None and previous.damage is None and mode in ("append", "overwrite-partitions"):
        kept_rejected = [e for e in previous.doc.get("rejected") or [] if isinstance(e, dict)]
    if hook:
        hook("before-publish")
    for partition in sorted(winners):
        for f in winners[partition]["files"]:
            try:
                publish_file(fs, out, f)
            except FileNotFoundError as exc:
                raise CommitError(f"task output {f['tmp']} vanished before job commit; nothing was committed. "
                                  "Was the output cleaned by another process? Rerun the job.") from exc
            if hook:
                hook("publish")
    for m in rejected:
        for f in m["files"]:
            try:
                publish_file(fs, out, f)
            except FileNotFoundError as exc:
                raise CommitError(f"rejected-rows file {f['tmp']} vanished before job commit; nothing was committed. "
                                  "Rerun the job.") from exc
    generation = previous.generation + 1 if previous is not None else 1
    if previous is not None and previous.damage is None and mode in ("append", "overwrite-partitions") \
            and not schema.names:
        schema = previous.schema          # a run that produced nothing keeps the output's schema
    committed_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    extra = _provenance(previous, files, entries, replaced, mode, meta, run_id, generation, committed_at,
                        logical_date, partition_by)
    if partition_by:
        extra["partition_by"] = partition_by
    if logical_date is not None:
        extra["logical_date"] = logical_date
    if mode == "overwrite-partitions" and kept_rejected:
        kept_rejected = kept_rejects(kept_rejected, extra.get("partitions"), {logical_date} - {None})
    if kept_rejected or new_rejected:
        extra["rejected"] = kept_rejected + new_rejected
        extra["rejected_rows"] = sum(e["rows"] for e in new_rejected)
    doc = seal({"format": MANIFEST_FORMAT, "version": 2 if partition_by else 1, "generation": generation,
                "run_id": run_id, "schema": schema_to_text(schema), "files": files,
                "committed_at": committed_at, **extra, **meta})
    data = manifest_text(doc)
    if hook:
        hook("before-manifest")
    if fence is not None:
        fence()
    try:
        write_manifest(fs, posixpath.join(out, MANIFEST), data, previous)
    except FileExistsError:
        for e in entries + new_rejected:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm(posixpath.join(out, e["path"]))
        raise ConcurrentRunError(f"another run committed {out} first; this run's output was discarded and the "
                                 "other run's output is intact") from None
    if hook:
        hook("after-manifest")
    manifest = Manifest(doc, out, data)
    if fence is not None:
        try:
            fence()
        except ConcurrentRunError:
            return manifest          # committed; the leftovers are the next run's to remove
    cleanup(fs, out, keep_run=None, manifest=manifest)
    return manifest


def cleanup(fs, out: str, *, keep_run: str | None, manifest: Manifest | None) -> list[str]:
    """Remove what dead runs left in ``out``: attempt directories, pending uploads, unreferenced part files.

    Call only while holding the output lock (so no other live run writes here). ``keep_run``'s
    attempt files survive (a resumed run reuses them). Returns what was removed.
    """
    removed: list[str] = []
    referenced = {f["path"] for f in manifest.files} if manifest is not None else set()
    tmp_root = posixpath.join(out, TEMPORARY)
    with contextlib.suppress(FileNotFoundError):
        kept = 0
        for d in fs.ls(tmp_root, detail=False):
            if keep_run is not None and posixpath.basename(d.rstrip("/")) == keep_run:
                kept += 1
                continue
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm(d, recursive=True)
                removed.append(d)
        if not kept:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm(tmp_root, recursive=True)
    emptied: set[str] = set()
    for rel, p in data_files(fs, out):
        name = posixpath.basename(rel)
        if engine_file(name) and _in_partitions(rel) and rel not in referenced and \
                (keep_run is None or _NAME.match(name).group("run") != keep_run[:16]):
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm(p)
                removed.append(p)
                if "/" in rel:
                    emptied.add(posixpath.dirname(p))
    removed += _cleanup_rejected(fs, out, keep_run, manifest)
    if is_local(fs):
        for d in sorted(emptied, key=len, reverse=True):      # partition directories left empty
            while d.rstrip("/") != out.rstrip("/") and d.startswith(out.rstrip("/") + "/"):
                try:
                    os.rmdir(d)
                except OSError:
                    break
                d = posixpath.dirname(d)
    if is_s3(fs):
        bucket, _ = _bucket_key(out.rstrip("/") + "/")
        with contextlib.suppress(Exception):
            for key, upload_id, rel in pending_uploads(fs, out):
                # only this output's own data files: not those of runs staged or canaried below it
                # (``_``-prefixed directories) nor of other outputs under the same prefix
                m = _NAME.match(posixpath.basename(rel))
                plain = _bad_entry_path(rel) is None or (rel.startswith(REJECTED_DIR + "/") and rel.count("/") == 1)
                if m and plain and (keep_run is None or m.group("run") != keep_run[:16]):
                    with contextlib.suppress(Exception):
                        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
                        removed.append(f"upload {key}")
    return removed


def kept_rejects(entries: Sequence[dict], partitions: dict | None, replaced_dates: set) -> list[dict]:
    """The rejected-rows entries that stay when some partitions (and logical dates) are replaced: those
    of a date run again go (the new run has its own), and those of a run with no date go once none of
    the partitions it wrote is left; a dated run's stay while its date is not rerun, even if it wrote no
    partition (every row of the day rejected)."""
    live = {rec.get("run_id") for rec in (partitions or {}).values() if isinstance(rec, dict)}
    kept = []
    for e in entries:
        day = e.get("logical_date")
        if (day is not None and day not in replaced_dates) or (day is None and e.get("run_id") in live):
            kept.append(e)
    return kept


def _cleanup_rejected(fs, out: str, keep_run: str | None, manifest: Manifest | None) -> list[str]:
    """Remove rejected-rows files in ``OUT/_rejected/`` that the manifest does not list (a failed or
    replaced run's), except ``keep_run``'s."""
    referenced = {e.get("path") for e in (manifest.doc.get("rejected") or []) if isinstance(e, dict)} \
        if manifest is not None and manifest.damage is None else set()
    directory = posixpath.join(out, REJECTED_DIR)
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(directory, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        m = _NAME.match(name)
        rel = posixpath.join(REJECTED_DIR, name)
        if m and rel not in referenced and (keep_run is None or m.group("run") != keep_run[:16]):
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm(posixpath.join(directory, name))
                removed.append(posixpath.join(directory, name))
    if is_local(fs):
        with contextlib.suppress(OSError):
            os.rmdir(directory)          # only if empty
    return removed


def pending_uploads(fs, out: str):
    """``(key, upload id, key relative to out)`` of every multipart upload pending under ``out`` on S3,
    page by page (S3 returns at most 1,000 per call)."""
    bucket, prefix = _bucket_key(out.rstrip("/") + "/")
    if prefix == "/":
        prefix = ""
    marker: dict = {}
    while True:
        listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
        for up in listing.get("Uploads", []):
            yield up["Key"], up["UploadId"], up["Key"][len(prefix):]
        if not listing.get("IsTruncated"):
            return
        marker = {"KeyMarker": listing.get("NextKeyMarker", ""), "UploadIdMarker": listing.get("NextUploadIdMarker", "")}


def data_files(fs, out: str) -> list[tuple[str, str]]:
    """``(path relative to out, full path)`` of every file in ``out`` and its ``col=value`` partition
    directories, leaving out ``_``/``.``-prefixed names (the engine's and other tools' own) at any depth."""
    found: list[tuple[str, str]] = []
    root = out.rstrip("/")
    if is_local(fs):
        # os.scandir, not fs.find: fsspec stats every entry in Python (an output of 365 partitions took
        # 15 ms to list, 4 ms this way; a run lists twice); the engine's own directories are not descended into
        for p in sorted(_local_files(root)):
            found.append((p[len(root) + 1:], p))
        return found
    if is_s3(fs):
        fs.invalidate_cache(out)
    try:
        listing = fs.find(out, withdirs=False)
    except FileNotFoundError:
        return found
    for p in sorted(listing):
        rel = p[len(root) + 1:] if p.startswith(root + "/") else None
        if not rel:
            continue
        if not any(part.startswith(("_", ".")) for part in rel.split("/")):
            found.append((rel, p))
    return found


def _local_files(directory: str) -> list[str]:
    """Every entry below a local ``directory`` that is not a directory, leaving out ``_``/``.``-prefixed
    names and what is below them; a symbolic link is an entry, not followed (as ``fs.find`` lists it).
    Empty if ``directory`` is not a directory."""
    out: list[str] = []
    pending = [directory]
    while pending:
        d = pending.pop()
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if e.name.startswith(("_", ".")):
                continue
            path = posixpath.join(d, e.name)
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            (pending if is_dir else out).append(path)
    return out


def _in_partitions(rel: str) -> bool:
    """True for a file directly in ``out`` or in ``col=value`` directories below it."""
    return all("=" in part for part in rel.split("/")[:-1])


def _foreign_files(fs, out: str) -> list[str]:
    """Files in ``out`` that no run of this engine wrote (a data file's name tells)."""
    return [p for rel, p in data_files(fs, out) if not engine_file(posixpath.basename(rel)) or not _in_partitions(rel)]


def check_output(fs, out: str, mode: str) -> Manifest | None:
    """The committed manifest (if any) after checking that ``mode`` allows writing to ``out``.

    A damaged manifest (unreadable, failing its own checksum, or listing a file outside ``out``)
    is refused with ManifestError in modes ``"error"`` and ``"append"``; ``"overwrite"`` returns it
    (``damage`` set) so that the run replaces it: the new manifest is swapped in against the
    damaged bytes, and the damaged generation's files are removed after that commit.
    """
    if mode not in MODES:
        raise CommitError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    manifest = load_manifest(fs, out, damaged=mode == "overwrite")
    if manifest is None or manifest.damage is not None:
        foreign = []
        if fs.exists(out):
            foreign = _foreign_files(fs, out)
        if foreign and manifest is not None:
            raise OutputExistsError(f"output {out} holds a {MANIFEST} that is not a valid engine manifest and files "
                                    f"that no run of this engine committed (e.g. {foreign[0]}); choose an empty or "
                                    "new output path")
        if foreign:
            raise OutputExistsError(f"output {out} exists and holds files that no run of this engine committed "
                                    f"(e.g. {foreign[0]}); choose an empty or new output path")
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading and verifying


# Above this size a file read from an object store is spooled to a temporary local file (and
# memory-mapped from there) rather than held in memory next to the table decoded from it.
_SPOOL_ABOVE = 256 << 20


def _stored_buffer(fs, path: str, size: int) -> tuple[pa.Buffer, int]:
    """``(buffer, crc32c)`` of every byte of a stored file, read once; Parquet is then decoded from
    the same buffer, so what is decoded is exactly what was checked.

    Local files are memory-mapped (no copy in memory, the page cache serves both passes); files on
    other stores are downloaded once, into memory or, above ``_SPOOL_ABOVE``, through a temporary
    file, with the CRC computed block by block as they arrive.
    """
    if is_local(fs):
        if os.path.getsize(path) == 0:
            return pa.py_buffer(b""), 0
        with pa.memory_map(path) as f:
            buf = f.read_buffer()     # the mapping lives as long as the buffer
        return buf, crc32c(memoryview(buf))
    if is_s3(fs):
        # s3fs sizes a download from its listing cache: a directory this process listed before another
        # process wrote the file there would make a committed file look missing
        fs.invalidate_cache(path)
    if size <= _SPOOL_ABOVE:
        data = fs.cat_file(path)
        return pa.py_buffer(data), crc32c(data)
    crc = 0
    spool = tempfile.TemporaryFile(prefix="engine-read-")
    for block in read_blocks(fs, path):
        crc = crc32c(block, crc)
        spool.write(block)
    spool.flush()
    if spool.tell() == 0:
        return pa.py_buffer(b""), crc
    mapped = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
    spool.close()                     # unlinked already; the mapping keeps the data until it is released
    return pa.py_buffer(mapped), crc


def _file_problem(where: str, entry: dict, buf: pa.Buffer | None, crc: int) -> str | None:
    if buf is None:
        return f"{where}: missing"
    if buf.size != entry["bytes"]:
        return f"{where}: size {buf.size} bytes, manifest says {entry['bytes']}"
    if crc != entry["crc32c"]:
        return f"{where}: CRC32C {crc:#010x}, manifest says {entry['crc32c']:#010x}"
    return None


@dataclass(frozen=True)
class VerifySummary:
    """What :func:`verify` checked: every file of the committed generation."""

    path: str
    files: int
    rows: int
    bytes: int
    run_id: str
    generation: int

    def __str__(self) -> str:
        return (f"{self.path}: intact: {self.files} files, {self.rows} rows, {self.bytes} bytes "
                f"(run {self.run_id}, generation {self.generation})")


def verify_manifest(fs, manifest: Manifest, *, pages: bool = True) -> VerifySummary:
    """Check every file of ``manifest``: size, CRC32C and (``pages``) a full decode with page checksums.

    Each file is read once; every problem is collected before IntegrityError is raised.
    """
    import pyarrow.parquet as pq
    problems: list[str] = []
    rejected = [dict(e, partition=e.get("partition", -1), _rejected=True)
                for e in manifest.doc.get("rejected") or [] if isinstance(e, dict)]
    for entry in list(manifest.files) + rejected:
        path = manifest.path_of(entry)
        where = f"{path} (partition {entry['partition']})" if not entry.get("_rejected") else \
            f"{path} (rejected rows)"
        try:
            buf, crc = _stored_buffer(fs, path, entry["bytes"])
        except FileNotFoundError:
            buf, crc = None, 0
        problem = _file_problem(where, entry, buf, crc)
        if problem is not None:
            problems.append(problem)
        elif pages:
            try:
                t = pq.ParquetFile(pa.BufferReader(buf), page_checksum_verification=True).read()
                if t.num_rows != entry["rows"]:
                    problems.append(f"{where}: {t.num_rows} rows, manifest says {entry['rows']}")
            except Exception as exc:  # noqa: BLE001 - any decode failure is corruption here
                problems.append(f"{where}: unreadable Parquet ({exc})")
        del buf
    if problems:
        raise IntegrityError(f"{manifest.root} is corrupt or incomplete: " + "; ".join(problems), problems)
    return VerifySummary(manifest.root, len(manifest.files), manifest.rows,
                         sum(f["bytes"] for f in manifest.files), manifest.doc["run_id"],
                         int(manifest.doc.get("generation", 1)))


def verify(path: str, storage_options: dict | None = None) -> VerifySummary:
    """Re-check every committed file of ``path`` against the manifest; raise IntegrityError naming bad files.

    >>> engine.verify("out/wc")                      # doctest: +SKIP
    VerifySummary(path='/…/out/wc', files=2, rows=10, ...)
    """
    fs, out = filesystem(path, storage_options)
    manifest = load_manifest(fs, out)
    if manifest is None:
        raise ManifestError(f"{out} has no committed output (no {MANIFEST} manifest): the run never committed "
                            "or is still running", [f"{posixpath.join(out, MANIFEST)}: missing"])
    return verify_manifest(fs, manifest)


def read(path: str, storage_options: dict | None = None, verify: bool = True,
         columns: Sequence[str] | None = None, partitions: str | Sequence[str] | None = None) -> pa.Table:
    """The committed output of ``path`` as one table, rows in partition order.

    Reads only the files the manifest lists (never a listing), so files of running or failed runs
    are invisible. With ``verify=True`` (the default) every byte of every file is checked against
    the manifest's size and CRC32C as it is read, whatever ``columns`` asks for, and Parquet is
    decoded from the checked bytes; a mismatch raises IntegrityError naming each damaged file and
    its partition, and returns nothing. Local files are memory-mapped; files on object stores are
    downloaded whole, once (with ``columns`` that is more bytes than a projection needs: pass
    ``verify=False`` to read only the chosen columns unchecked).

    ``partitions`` (a partitioned output only): read only the files of these Hive partition
    directories, each named as in the output (``"date=2026-11-30/region=eu"``) or by its leading
    directories (``"date=2026-11-30"``: every partition below it); the other files are not opened.
    A name that matches no partition raises :class:`~engine.errors.PartitionNotFoundError`.

    >>> table = engine.read("out/wc")                # doctest: +SKIP
    >>> table = engine.read("out/wc", columns=["word"], verify=False)   # doctest: +SKIP
    >>> table = engine.read("out/daily", partitions=["date=2026-11-30"])  # doctest: +SKIP
    """
    fs, out = filesystem(path, storage_options)
    manifest = load_manifest(fs, out)
    if manifest is None:
        raise ManifestError(f"{out} has no committed output (no {MANIFEST} manifest)",
                            [f"{posixpath.join(out, MANIFEST)}: missing"])
    for _ in range(3):
        entries = partition_entries(manifest, partitions) if partitions is not None else None
        try:
            return read_manifest(fs, manifest, verify=verify, columns=columns, entries=entries, path=path)
        except IntegrityError as exc:
            # Files of the generation this read began with can vanish when a new generation commits
            # meanwhile (its cleanup removes the replaced files): read the new one instead. Damage in
            # a generation that is still the committed one is reported as it is.
            if not exc.problems or not all(p.endswith(": missing") for p in exc.problems):
                raise
            newer = load_manifest(fs, out)
            if newer is None or newer.raw == manifest.raw:
                raise
            manifest = newer
    return read_manifest(fs, manifest, verify=verify, columns=columns,
                         entries=partition_entries(manifest, partitions) if partitions is not None else None,
                         path=path)


def partition_entries(manifest: Manifest, partitions: str | Sequence[str]) -> list[dict]:
    """The entries of ``manifest`` in the partition directories ``partitions`` names (whole names or
    leading directories, see :func:`read`); PartitionNotFoundError for a name that matches none."""
    from .errors import PartitionNotFoundError
    names = [partitions] if isinstance(partitions, str) else list(partitions)
    if not all(isinstance(n, str) for n in names):
        raise PartitionNotFoundError(f"partitions= takes partition directory names such as 'date=2026-11-30', got "
                                     f"{partitions!r}")
    names = [n.strip().strip("/") for n in names]
    if not names or not all(names):
        raise PartitionNotFoundError(f"partitions= names no partition ({partitions!r}); give directory names such "
                                     "as 'date=2026-11-30', or leave it out to read every partition")
    partition_by = list(manifest.doc.get("partition_by") or [])
    if not partition_by:
        raise PartitionNotFoundError(f"{manifest.root} is not partitioned (it was written without partition_by), so "
                                     f"it has no partition {names[0]!r}; read it without partitions=")
    known = {partition_of(f["path"]) for f in manifest.files} | set(manifest.doc.get("partitions") or {})
    chosen: set[str] = set()
    for name in names:
        hits = {d for d in known if d == name or d.startswith(name + "/")}
        if not hits:
            shown = ", ".join(sorted(known)[:5]) + (", …" if len(known) > 5 else "")
            raise PartitionNotFoundError(f"{manifest.root} has no partition {name!r} (partitioned by "
                                         f"{', '.join(partition_by)}; {len(known)} partition(s)"
                                         + (f", e.g. {shown}" if known else "") + "); name a partition directory "
                                         "as it appears in the output, or leading directories of one")
        chosen |= hits
    return [f for f in manifest.files if partition_of(f["path"]) in chosen]


def read_manifest(fs, manifest: Manifest, *, verify: bool = True, columns: Sequence[str] | None = None,
                  entries: list[dict] | None = None, path: str | None = None) -> pa.Table:
    """:func:`read` of an already loaded manifest: its files (or only ``entries``, some of them) as one table."""
    import pyarrow.parquet as pq
    out = manifest.root
    path = path if path is not None else out
    schema = manifest.schema
    selected = list(columns) if columns is not None else None
    partition_by = list(manifest.doc.get("partition_by") or [])
    if selected is not None:
        missing = [c for c in selected if c not in schema.names]
        if missing:
            from .errors import SchemaError
            raise SchemaError(f"{out} has no column(s) {missing}; its columns are {schema.names}")
    wanted = selected if selected is not None else schema.names
    if partition_by:                   # the files hold the other columns; the directories hold these
        selected = [c for c in wanted if c not in partition_by]

    def decoded(source, entry: dict) -> pa.Table:
        table = pq.read_table(source, columns=selected)
        return _with_partition_columns(table, entry["path"], schema, partition_by, wanted) if partition_by else table

    tables: list[pa.Table] = []
    problems: list[str] = []
    for entry in sorted(manifest.files if entries is None else entries, key=lambda e: (e["partition"], e["path"])):
        p = manifest.path_of(entry)
        where = f"{p} (partition {entry['partition']})"
        if not verify:
            try:
                if is_local(fs):
                    with pa.memory_map(p) as f:
                        tables.append(decoded(f, entry))
                else:
                    if is_s3(fs):
                        fs.invalidate_cache(p)         # as in _stored_buffer: no stale listing decides
                    with fs.open(p, "rb") as f:
                        tables.append(decoded(f, entry))
            except FileNotFoundError:
                raise IntegrityError(f"{where} is listed in the manifest but missing; run engine.verify('{path}')",
                                     [f"{where}: missing"]) from None
            continue
        try:
            buf, crc = _stored_buffer(fs, p, entry["bytes"])
        except FileNotFoundError:
            buf, crc = None, 0
        problem = _file_problem(where, entry, buf, crc)
        if problem is not None:
            problems.append(problem)
            tables = []               # nothing will be returned: keep checking the rest, decode no more
        elif not problems:
            tables.append(decoded(pa.BufferReader(buf), entry))
        del buf
    if problems:
        raise IntegrityError(f"{out} is damaged, nothing was returned: " + "; ".join(problems) + ". Rerun the "
                             "job with mode='overwrite' and force=True to rewrite the output (engine.verify lists "
                             "every damaged file; read(..., verify=False) skips the checks)", problems)
    if not tables:
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def partition_values(path: str) -> dict[str, str | None]:
    """The Hive partition values of a data file's relative path, unescaped (None for a null value)."""
    from . import hive
    values: dict[str, str | None] = {}
    for part in path.split("/")[:-1]:
        col, _, text = part.partition("=")
        values[hive.unescape(col)] = None if text == hive.DEFAULT_PARTITION else hive.unescape(text)
    return values


def _with_partition_columns(table: pa.Table, path: str, schema: pa.Schema, partition_by: list[str],
                            wanted: list[str]) -> pa.Table:
    """``table`` (a file's columns) with the partition columns its directory names, typed as ``schema``
    says, in the order of ``wanted``."""
    from . import hive
    values = partition_values(path)
    n = table.num_rows
    columns = []
    for name in wanted:
        if name in partition_by:
            typ = schema.field(name).type
            text = values.get(name)
            columns.append(pa.nulls(n, typ) if text is None else pa.repeat(hive.parse_value(text, typ), n))
        else:
            columns.append(table.column(name))
    return pa.table(columns, schema=pa.schema([schema.field(c) for c in wanted]))


__all__ = ["ParquetAttemptWriter", "ChecksummingFile", "Manifest", "VerifySummary", "commit_job", "check_output",
           "cleanup", "publish_file", "discard_file", "write_manifest", "engine_file",
           "choose_winners", "discard", "load_manifest", "remove_damaged_manifest", "read", "read_manifest",
           "partition_entries", "verify", "verify_manifest", "crc32c",
           "file_crc32c", "MANIFEST", "TEMPORARY"]
_ = Any
