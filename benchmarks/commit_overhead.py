"""Overhead of the commit protocol and checksums against plain ``pyarrow.parquet.write_table``.

Writes the same partitions (same tables, same compression) twice, alternating per repeat:

* **plain**: ``pq.write_table(table, OUT/part-N.parquet)`` for every partition;
* **engine**: every partition through :class:`engine.commit.ParquetAttemptWriter` (attempt-scoped
  temporary name, CRC32C computed while streaming, Parquet page checksums), then
  :func:`engine.commit.commit_job` (publish by rename, fsynced manifest created put-if-absent).

    python -m benchmarks.commit_overhead --rows 2e7 --partitions 16 --repeat 5
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e7)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args(argv)
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
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "commit_overhead.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
