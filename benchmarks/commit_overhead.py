"""Overhead of the commit protocol and checksums against plain pyarrow, on the write and the read side.

Write (the default): the same partitions (same tables, same compression) twice, alternating per repeat:

* **plain**: ``pq.write_table(table, OUT/part-N.parquet)`` for every partition;
* **engine**: every partition through :class:`engine.commit.ParquetAttemptWriter` (attempt-scoped
  temporary name, CRC32C computed while streaming, Parquet page checksums), then
  :func:`engine.commit.commit_job` (publish by rename, fsynced manifest created put-if-absent).

Read (``--read``): the db-benchmark G1 table (``benchmarks.datagen``), each of its files committed
as one partition of an engine output by the protocol above, then read back, taking turns:

* **verified**: ``engine.read(out)`` (every byte checked against the manifest's CRC32C);
* **unverified**: ``engine.read(out, verify=False)``;
* **pyarrow**: ``pq.read_table`` of each committed file, concatenated;

once whole and once with ``--columns`` (two columns by default).

    python -m benchmarks.commit_overhead --rows 2e7 --partitions 16 --repeat 5
    python -m benchmarks.commit_overhead --read                      # G1 1e6 rows, quick
    python -m benchmarks.commit_overhead --read --g1-rows 1e7 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine import commit


def make_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "id1": pa.array(np.char.add("id", rng.integers(1, 100, rows).astype(str))),
        "id4": rng.integers(1, 100, rows), "id6": rng.integers(1, rows // 100 + 1, rows),
        "v1": rng.integers(1, 6, rows), "v3": np.round(rng.random(rows) * 100, 6),
    })


def plain(parts: list[pa.Table], out: str) -> None:
    os.makedirs(out)
    for i, t in enumerate(parts):
        pq.write_table(t, os.path.join(out, f"part-{i:05d}.parquet"), compression="snappy")


def protocol(parts: list[pa.Table], out: str) -> None:
    import fsspec
    fs = fsspec.filesystem("file")
    os.makedirs(out)
    run_id = "bench" + os.urandom(6).hex()
    messages = []
    for i, t in enumerate(parts):
        w = commit.ParquetAttemptWriter(fs, out, run_id, i, 0)
        w.write(t)
        messages.append(w.close())
    winners, _ = commit.choose_winners(messages)
    commit.commit_job(fs, out, run_id=run_id, winners=winners, schema=parts[0].schema, mode="error",
                      previous=None, meta={"job": "bench", "fingerprint": "-"})


def committed_files(out: str) -> list[str]:
    """The data files of a committed output in partition order, from its manifest (as engine.read reads them)."""
    with open(os.path.join(out, commit.MANIFEST)) as f:
        files = json.load(f)["files"]
    return [os.path.join(out, e["path"]) for e in sorted(files, key=lambda e: (e["partition"], e["path"]))]


def read_systems(out: str, columns: list[str] | None) -> dict:
    """``name -> fn()`` reading the committed output ``out`` (all columns, or ``columns``)."""
    import engine
    paths = committed_files(out)
    return {
        "verified": lambda: engine.read(out, columns=columns),
        "unverified": lambda: engine.read(out, columns=columns, verify=False),
        "pyarrow": lambda: pa.concat_tables([pq.read_table(p, columns=columns) for p in paths]),
    }


def read_benchmark(args) -> None:
    from benchmarks import datagen
    rows = int(args.g1_rows)
    data = datagen.g1(rows, out=args.data)
    parts = [pq.read_table(os.path.join(data, name)) for name in sorted(os.listdir(data))
             if name.endswith(".parquet")]
    base = args.dir or tempfile.mkdtemp(prefix="commit-read-bench-")
    out = os.path.join(base, "g1-committed")
    shutil.rmtree(out, ignore_errors=True)
    protocol(parts, out)
    size = sum(os.path.getsize(p) for p in committed_files(out))
    del parts
    columns = args.columns.split(",")
    print(f"G1 {rows:,} rows committed as {len(committed_files(out))} files ({size / 2**20:.0f} MiB), "
          f"median of {args.repeat}:")
    for selection in (None, columns):
        systems = read_systems(out, selection)
        times: dict[str, list[float]] = {name: [] for name in systems}
        names = list(systems)
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                table = systems[name]()
                times[name].append(time.perf_counter() - t0)
                del table
        med = {k: statistics.median(v) for k, v in times.items()}
        label = "all columns" if selection is None else f"columns={selection}"
        print(f"  {label}: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items())
              + f"; verified/unverified {med['verified'] / med['unverified']:.3f}")
        result = {"benchmark": "commit_read", "rows": rows, "files": len(committed_files(out)), "bytes": size,
                  "columns": selection, "repeat": args.repeat, **{f"{k}_s": v for k, v in med.items()},
                  "all": times}
        _append_result(result)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


def _append_result(result: dict) -> None:
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "commit_overhead.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e7)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--read", action="store_true", help="time reading a committed output instead of writing one")
    ap.add_argument("--g1-rows", type=float, default=1e6, help="rows of the G1 table read with --read")
    ap.add_argument("--columns", default="id1,v1", help="the projection timed with --read")
    ap.add_argument("--data", default=None, help="dataset cache directory (default: benchmarks.datagen's)")
    args = ap.parse_args(argv)
    if args.read:
        read_benchmark(args)
        return
    rows = int(args.rows)
    table = make_table(rows)
    step = -(-rows // args.partitions)
    parts = [table.slice(i, step) for i in range(0, rows, step)]
    base = args.dir or tempfile.mkdtemp(prefix="commit-bench-")
    times = {"plain": [], "engine": []}
    for r in range(args.repeat):
        for name, fn in (("plain", plain), ("engine", protocol)) if r % 2 == 0 else (("engine", protocol),
                                                                                     ("plain", plain)):
            out = os.path.join(base, f"{name}-{r}")
            t0 = time.perf_counter()
            fn(parts, out)
            times[name].append(time.perf_counter() - t0)
            shutil.rmtree(out)
    med = {k: statistics.median(v) for k, v in times.items()}
    size = table.nbytes
    result = {"benchmark": "commit_overhead", "rows": rows, "partitions": len(parts), "repeat": args.repeat,
              "plain_s": med["plain"], "engine_s": med["engine"], "ratio": med["engine"] / med["plain"],
              "in_memory_bytes": size, "all": times}
    print(f"{rows:,} rows in {len(parts)} partitions ({size / 2**20:.0f} MiB in memory), median of {args.repeat}:")
    print(f"  plain pq.write_table   {med['plain']:.3f} s")
    print(f"  engine commit protocol {med['engine']:.3f} s   ratio {result['ratio']:.3f}")
    _append_result(result)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
