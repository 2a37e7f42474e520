"""Synthetic benchmark datasets, generated chunk by chunk with vectorized numpy and cached on disk.

Three generators:

* :func:`g1` -- the db-benchmark (h2o.ai / DuckDB Labs) "G1" groupby table, N rows, K groups::

      id1, id2  string "id%03d"   sampled from 1..K
      id3       string "id%010d"  sampled from 1..N/K
      id4, id5  int32             sampled from 1..K
      id6       int32             sampled from 1..N/K
      v1        int32 in 1..5,  v2 int32 in 1..15
      v3        float64 uniform in [0, 100), rounded to 6 decimals

  ``skew`` (a Zipf exponent such as 1.2; 0 = uniform, the original) draws the six id columns from
  a bounded Zipf distribution instead (value 1 is the most frequent); ``nas`` is the fraction of
  nulls put independently into every column (db-benchmark's NA variant).
* :func:`text` -- a word-count corpus: lines of 5..15 (on average 10) synthetic lower-case words
  drawn from a Zipf-distributed vocabulary, written as several ``.txt`` files.
* :func:`terasort` -- TeraSort-style records: a 10-byte random printable-ASCII ``key`` and a
  90-byte ``payload`` (10-digit row number + filler), as Parquet.

Every dataset lives in a directory named after its parameters under a cache root (default
``benchmarks/data``, or ``$MAPREDUCE_BENCH_DATA``). It is generated into a temporary sibling
directory, a ``_COMPLETE`` marker (JSON: parameters, files, rows) is written last and the directory
is renamed into place, so a half-written dataset is never reused; a directory without its marker
is regenerated. Files and generation chunks are seeded from ``(seed, file, chunk)``, so the data
does not depend on how much memory a run uses.

Command line::

    python -m benchmarks.datagen g1 --rows 1e7 [--skew 1.2] [--nas 0.05] [--parts P] [--out DIR]
    python -m benchmarks.datagen text --bytes 1GB [--files 8] [--vocab 50000] [--out DIR]
    python -m benchmarks.datagen terasort --rows 1e7 [--parts P] [--out DIR]

Each prints the dataset directory. From Python (tests use small sizes)::

    from benchmarks import datagen
    path = datagen.g1(30_000, parts=3, out=tmp_path)     # cached directory of Parquet files
    table = datagen.g1_table(30_000)                       # the same kind of rows, in memory
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
MARKER = "_COMPLETE"
CHUNK_ROWS = 1 << 20              # rows generated (and written as one row group) at a time
G1_BYTES_PER_ROW = 24             # measured: snappy Parquet of G1 K=100, used to pick `parts`
TARGET_FILE_BYTES = 96 << 20      # default file size aimed at (files land at ~64-128 MB)


# ---------------------------------------------------------------------------------------------
# Cache directories


def default_root() -> str:
    """Where datasets are cached: ``$MAPREDUCE_BENCH_DATA`` or ``benchmarks/data`` of this checkout."""
    env = os.environ.get("MAPREDUCE_BENCH_DATA")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _label(x: float) -> str:
    """``10000000`` -> ``1e7``, ``30000`` -> ``3e4``, ``12345`` -> ``12345``; ``0.05`` -> ``0.05``."""
    if float(x) == int(x) and int(x) >= 10:
        n = int(x)
        exp = int(math.floor(math.log10(n)))
        mant = n / 10 ** exp
        if mant == int(mant):
            return f"{int(mant)}e{exp}"
        return str(n)
    return f"{x:g}"


def is_complete(path: str) -> bool:
    """Whether ``path`` holds a finished dataset (its marker exists)."""
    return os.path.isfile(os.path.join(path, MARKER))


def read_marker(path: str) -> dict:
    with open(os.path.join(path, MARKER)) as f:
        return json.load(f)


def _cached(root: str | os.PathLike | None, name: str, params: dict,
            write: Callable[[str], list[dict]], *, quiet: bool = True) -> str:
    """Return ``root/name``, generating it with ``write(tmpdir) -> files`` unless already complete."""
    root = os.fspath(root) if root is not None else default_root()
    final = os.path.join(root, name)
    if is_complete(final):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        started = time.time()
        files = write(tmp)
        marker = {"format_version": FORMAT_VERSION, "params": params, "files": files,
                  "rows": sum(f.get("rows", 0) for f in files),
                  "bytes": sum(f["bytes"] for f in files),
                  "seconds": round(time.time() - started, 3)}
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(marker, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(final):            # an unfinished earlier attempt: never reused
            if is_complete(final):          # someone else finished meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"generated {final} in {marker['seconds']:.1f}s ({marker['bytes'] / 1e6:.1f} MB)",
                  file=sys.stderr)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _bounds(rows: int, parts: int) -> np.ndarray:
    return np.linspace(0, rows, parts + 1).astype(np.int64)


def _write_parquet_files(directory: str, rows: int, parts: int,
                         make_chunk: Callable[[int, int, int, int], pa.Table],
                         chunk_rows: int = CHUNK_ROWS) -> list[dict]:
    """Write ``parts`` Parquet files of ``rows`` in all; ``make_chunk(file, chunk, start, n)``
    builds each row group (``start`` is the global row number of its first row)."""
    files = []
    bounds = _bounds(rows, parts)
    for i in range(parts):
        name = f"part-{i:05d}.parquet"
        path = os.path.join(directory, name)
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        writer = None
        try:
            for c, start in enumerate(range(lo, hi, chunk_rows)):
                n = min(chunk_rows, hi - start)
                table = make_chunk(i, c, start, n)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="snappy")
                writer.write_table(table, row_group_size=n)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:      # an empty file still gets a schema: make one zero-row chunk
            pq.write_table(make_chunk(i, 0, lo, 0), path, compression="snappy")
        files.append({"name": name, "rows": hi - lo, "bytes": os.path.getsize(path)})
    return files


# ---------------------------------------------------------------------------------------------
# Vectorized helpers


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(s) for s in stream]])


@lru_cache(maxsize=16)
def _zipf_cdf(m: int, s: float) -> np.ndarray:
    weights = np.arange(1, m + 1, dtype=np.float64) ** -float(s)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def sample_ints(rng: np.random.Generator, m: int, n: int, skew: float = 0.0) -> np.ndarray:
    """``n`` integers in ``1..m``: uniform, or bounded Zipf with exponent ``skew`` (1 most frequent)."""
    if skew and skew > 0:
        idx = np.searchsorted(_zipf_cdf(int(m), float(skew)), rng.random(n), side="right")
        return np.minimum(idx, m - 1).astype(np.int64) + 1
    return rng.integers(1, m + 1, size=n, dtype=np.int64)


def fixed_width_strings(matrix: np.ndarray) -> pa.Array:
    """A string array from an ``(n, width)`` uint8 matrix of ASCII bytes (one row per value)."""
    n, width = matrix.shape
    data = np.ascontiguousarray(matrix, dtype=np.uint8)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    typ = pa.string() if offsets[-1] < (1 << 31) else pa.large_string()
    offsets = offsets.astype(np.int32 if typ == pa.string() else np.int64)
    return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offsets), pa.py_buffer(data.reshape(-1))])


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """``(n, width)`` ASCII digit matrix of zero-padded non-negative integers."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] // powers) % 10 + 48).astype(np.uint8)


def id_strings(values: np.ndarray, width: int, prefix: str = "id") -> pa.Array:
    """``"id%0{width}d" % v`` for every value, vectorized."""
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    matrix = np.empty((len(values), len(head) + width), dtype=np.uint8)
    matrix[:, :len(head)] = head
    matrix[:, len(head):] = _digits(values, width)
    return fixed_width_strings(matrix)


@lru_cache(maxsize=8)
def _id_dictionary(m: int, width: int) -> pa.Array:
    return id_strings(np.arange(1, m + 1, dtype=np.int64), width)


def _null_mask(rng: np.random.Generator, n: int, nas: float) -> np.ndarray | None:
    if not nas:
        return None
    mask = rng.random(n) < nas
    return mask if mask.any() else None


# ---------------------------------------------------------------------------------------------
# G1 (db-benchmark groupby)

G1_SCHEMA = pa.schema([
    ("id1", pa.string()), ("id2", pa.string()), ("id3", pa.string()),
    ("id4", pa.int32()), ("id5", pa.int32()), ("id6", pa.int32()),
    ("v1", pa.int32()), ("v2", pa.int32()), ("v3", pa.float64()),
])


def g1_chunk(rng: np.random.Generator, n: int, rows: int, k: int = 100, *, nas: float = 0.0,
             skew: float = 0.0) -> pa.Table:
    """``n`` G1 rows for a dataset of ``rows`` rows in all (id3/id6 range over ``1..rows/k``)."""
    m = max(1, rows // k)
    cols: dict[str, pa.Array] = {}
    for name, card, width in (("id1", k, 3), ("id2", k, 3), ("id3", m, 10)):
        codes = sample_ints(rng, card, n, skew) - 1
        mask = _null_mask(rng, n, nas)
        cols[name] = _id_dictionary(card, width).take(pa.array(codes, mask=mask))
    for name, card, sk in (("id4", k, skew), ("id5", k, skew), ("id6", m, skew), ("v1", 5, 0.0), ("v2", 15, 0.0)):
        values = sample_ints(rng, card, n, sk).astype(np.int32)
        cols[name] = pa.array(values, type=pa.int32(), mask=_null_mask(rng, n, nas))
    v3 = np.round(rng.uniform(0.0, 100.0, n), 6)
    cols["v3"] = pa.array(v3, type=pa.float64(), mask=_null_mask(rng, n, nas))
    return pa.Table.from_pydict(cols, schema=G1_SCHEMA)


def g1_table(rows: int, k: int = 100, *, nas: float = 0.0, skew: float = 0.0, seed: int = 0) -> pa.Table:
    """A whole G1 table in memory (for tests and small sizes)."""
    rows = int(rows)
    chunks = [g1_chunk(_rng(seed, 0, c), min(CHUNK_ROWS, rows - start), rows, k, nas=nas, skew=skew)
              for c, start in enumerate(range(0, rows, CHUNK_ROWS))]
    return pa.concat_tables(chunks) if chunks else G1_SCHEMA.empty_table()


def g1_default_parts(rows: int) -> int:
    """Files of ~64-128 MB: one per ~4M rows of G1."""
    return max(1, round(rows * G1_BYTES_PER_ROW / TARGET_FILE_BYTES))


def g1_name(rows: int, k: int = 100, *, nas: float = 0.0, skew: float = 0.0, seed: int = 0,
            parts: int | None = None) -> str:
    parts = parts or g1_default_parts(rows)
    return f"G1_{_label(rows)}_{_label(k)}_na{_label(nas)}_skew{_label(skew)}_seed{seed}_p{parts}_v{FORMAT_VERSION}"


def g1(rows: float, k: int = 100, *, nas: float = 0.0, skew: float = 0.0, seed: int = 0,
       parts: int | None = None, out: str | os.PathLike | None = None, quiet: bool = True) -> str:
    """Generate (or reuse) the G1 dataset; returns its directory of ``part-*.parquet`` files."""
    rows, k = int(rows), int(k)
    if rows < 1 or k < 1:
        raise ValueError(f"rows and k must be positive, got rows={rows}, k={k}")
    if not 0.0 <= nas < 1.0:
        raise ValueError(f"nas is a fraction of nulls in [0, 1), got {nas}")
    if skew < 0:
        raise ValueError(f"skew is a Zipf exponent >= 0 (0: uniform), got {skew}")
    parts = int(parts or g1_default_parts(rows))
    params = {"dataset": "G1", "rows": rows, "k": k, "nas": nas, "skew": skew, "seed": seed, "parts": parts}

    def make(file: int, chunk: int, start: int, n: int) -> pa.Table:
        return g1_chunk(_rng(seed, 1, file, chunk), n, rows, k, nas=nas, skew=skew)

    name = g1_name(rows, k, nas=nas, skew=skew, seed=seed, parts=parts)
    return _cached(out, name, params, lambda d: _write_parquet_files(d, rows, parts, make), quiet=quiet)


# ---------------------------------------------------------------------------------------------
# Text corpus (word count)


@lru_cache(maxsize=4)
def vocabulary(size: int, seed: int = 0) -> pa.Array:
    """``size`` distinct synthetic lower-case words, shortest first (rank 1 = most frequent)."""
    rng = _rng(seed, 2)
    want = int(size * 1.3) + 64
    lengths = np.clip(np.round(rng.gamma(4.0, 1.6, want)), 2, 16).astype(np.int64)
    width = int(lengths.max())
    letters = rng.integers(ord("a"), ord("z") + 1, size=(want, width), dtype=np.uint8)
    # right-pad with NUL so equal prefixes of different lengths stay different words
    letters[np.arange(width)[None, :] >= lengths[:, None]] = 0
    _, first = np.unique(letters.view(np.dtype((np.void, width))).ravel(), return_index=True)
    first = np.sort(first)
    if len(first) < size:
        raise ValueError(f"could not make {size} distinct words; ask for fewer")
    first = first[:size]
    first = first[np.argsort(lengths[first], kind="stable")]
    lens = lengths[first]
    flat = letters[first][np.arange(width)[None, :] < lens[:, None]]
    offsets = np.zeros(size + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), size, [None, pa.py_buffer(offsets), pa.py_buffer(flat)])


def text_lines(rng: np.random.Generator, lines: int, vocab: pa.Array, zipf: float = 1.1) -> pa.Array:
    """``lines`` lines of 5..15 words each (Zipf ranks over ``vocab``), as a string array."""
    per_line = rng.integers(5, 16, size=lines)
    offsets = np.zeros(lines + 1, dtype=np.int64)
    np.cumsum(per_line, out=offsets[1:])
    ranks = sample_ints(rng, len(vocab), int(offsets[-1]), zipf) - 1
    words = vocab.take(pa.array(ranks))
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), words)
    import pyarrow.compute as pc
    return pc.binary_join(lists, " ")


def _mean_word_bytes(vocab: pa.Array, zipf: float) -> float:
    import pyarrow.compute as pc
    lens = np.asarray(pc.utf8_length(vocab).to_numpy(), dtype=np.float64)
    cdf = _zipf_cdf(len(vocab), float(zipf)) if zipf > 0 else np.linspace(1 / len(vocab), 1, len(vocab))
    p = np.diff(np.concatenate([[0.0], cdf]))
    return float((p * (lens + 1)).sum())


def text(total_bytes: float, files: int = 8, *, vocab: int = 50_000, zipf: float = 1.1, seed: int = 0,
         out: str | os.PathLike | None = None, chunk_bytes: int = 16 << 20, quiet: bool = True) -> str:
    """Generate (or reuse) a corpus of about ``total_bytes`` in ``files`` ``.txt`` files."""
    total = int(total_bytes)
    files = max(1, int(files))
    params = {"dataset": "text", "bytes": total, "files": files, "vocab": vocab, "zipf": zipf, "seed": seed}
    words = vocabulary(int(vocab), seed)
    line_bytes = 10 * _mean_word_bytes(words, zipf)     # ~10 words per line, a space or newline each

    def write(directory: str) -> list[dict]:
        out_files = []
        per_file = _bounds(total, files)
        for i in range(files):
            target = int(per_file[i + 1] - per_file[i])
            name = f"part-{i:05d}.txt"
            path = os.path.join(directory, name)
            written, lines_total, c = 0, 0, 0
            with open(path, "wb") as f:
                while written < target:
                    want = min(chunk_bytes, target - written)
                    n = max(1, int(want / line_bytes))
                    lines = text_lines(_rng(seed, 3, i, c), n, words, zipf)
                    blob = _join_lines(lines)
                    f.write(blob)
                    written += len(blob)
                    lines_total += n
                    c += 1
            out_files.append({"name": name, "rows": lines_total, "bytes": os.path.getsize(path)})
        return out_files

    name = f"text_{_label(total)}B_f{files}_v{_label(vocab)}_z{_label(zipf)}_seed{seed}_v{FORMAT_VERSION}"
    return _cached(out, name, params, write, quiet=quiet)


def _join_lines(lines: pa.Array) -> bytes:
    """Lines joined by (and ending with) newlines, without a Python loop over lines."""
    import pyarrow.compute as pc
    whole = pa.ListArray.from_arrays(pa.array([0, len(lines)], type=pa.int32()), lines)
    return pc.binary_join(whole, "\n")[0].as_buffer().to_pybytes() + b"\n"


# ---------------------------------------------------------------------------------------------
# TeraSort records

TERASORT_KEY_BYTES = 10
TERASORT_PAYLOAD_BYTES = 90


def terasort_chunk(rng: np.random.Generator, start: int, n: int, *, binary_key: bool = False) -> pa.Table:
    """``n`` records numbered from ``start``: random printable key, payload of row number + filler."""
    keys = rng.integers(32, 127, size=(n, TERASORT_KEY_BYTES), dtype=np.uint8)   # ' '..'~'
    key = fixed_width_strings(keys)
    if binary_key:
        key = key.cast(pa.binary())
    rows = np.arange(start, start + n, dtype=np.int64)
    payload = np.empty((n, TERASORT_PAYLOAD_BYTES), dtype=np.uint8)
    payload[:, :10] = _digits(rows, 10)
    filler = (rows[:, None] + np.arange(TERASORT_PAYLOAD_BYTES - 10)[None, :] // 8) % 26 + ord("A")
    payload[:, 10:] = filler.astype(np.uint8)
    return pa.table({"key": key, "payload": fixed_width_strings(payload)})


def terasort(rows: float, *, parts: int | None = None, seed: int = 0, binary_key: bool = False,
             out: str | os.PathLike | None = None, quiet: bool = True) -> str:
    """Generate (or reuse) TeraSort records (100 bytes each) as Parquet; returns the directory."""
    rows = int(rows)
    parts = int(parts or max(1, round(rows * 100 / (128 << 20))))
    params = {"dataset": "terasort", "rows": rows, "parts": parts, "seed": seed, "binary_key": binary_key}

    def make(file: int, chunk: int, start: int, n: int) -> pa.Table:
        return terasort_chunk(_rng(seed, 4, file, chunk), start, n, binary_key=binary_key)

    name = f"terasort_{_label(rows)}_p{parts}_seed{seed}{'_bin' if binary_key else ''}_v{FORMAT_VERSION}"
    return _cached(out, name, params, lambda d: _write_parquet_files(d, rows, parts, make, chunk_rows=1 << 19),
                   quiet=quiet)


# ---------------------------------------------------------------------------------------------
# Command line


def _number(text: str) -> float:
    """``1e7``, ``10000000``, ``1GB``, ``512MiB`` -> a number."""
    try:
        return float(text)
    except ValueError:
        from dask.utils import parse_bytes
        return float(parse_bytes(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datagen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("g1", help="db-benchmark groupby table G1")
    p.add_argument("--rows", type=_number, default=1e7)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--nas", type=float, default=0.0, help="fraction of nulls per column")
    p.add_argument("--skew", type=float, default=0.0, help="Zipf exponent of the id columns (0: uniform)")
    p.add_argument("--parts", type=int, default=None, help="number of files (default: ~96 MB each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="cache root (default: benchmarks/data)")
    p = sub.add_parser("text", help="word-count corpus")
    p.add_argument("--bytes", type=_number, default=1e9)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p = sub.add_parser("terasort", help="TeraSort-style 100-byte records")
    p.add_argument("--rows", type=_number, default=1e7)
    p.add_argument("--parts", type=int, default=None)
    p.add_argument("--binary-key", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.dataset == "g1":
        path = g1(args.rows, args.k, nas=args.nas, skew=args.skew, seed=args.seed, parts=args.parts,
                  out=args.out, quiet=False)
    elif args.dataset == "text":
        path = text(args.bytes, args.files, vocab=args.vocab, zipf=args.zipf, seed=args.seed, out=args.out,
                    quiet=False)
    else:
        path = terasort(args.rows, parts=args.parts, seed=args.seed, binary_key=args.binary_key, out=args.out,
                        quiet=False)
    print(path)
    return 0


__all__ = ["g1", "g1_table", "g1_chunk", "text", "text_lines", "vocabulary", "terasort", "terasort_chunk",
           "sample_ints", "id_strings", "default_root", "is_complete", "read_marker", "G1_SCHEMA"]

if __name__ == "__main__":
    sys.exit(main())
