"""String, large_string and dictionary group keys through one map task's work and its reduce, in one
process, on the G1 files (db-benchmark's groupby table: string keys id1, id2 with 100 values, id3 with
N/100).

    python -m benchmarks.keys_bench --data DATA [--rows 1e7] [--questions q1,q2,q3,q10] [--repeat 3]

For each question (q1: sum v1 by id1; q2: by id1, id2; q3: sum v1, mean v3 by id3; q10: sum v3, count
by id1..id6) and each way of holding the string keys, one file of the input goes through the steps of
an engine map task and of the reducers, each timed (median of ``--repeat``, one thread):

* **read**: ``ParquetFile.iter_batches`` of the question's columns, batches of 131,072 rows.
* **prepare**: what the shuffle writer does to each batch before buffering it (``shuffle_ready``).
* **combine**: per spill of 64 MiB, the aggregations' ``partial`` (q10: ``row_states``, as a map task
  does once its combine stops paying: its keys are nearly unique).
* **partition**: the keys' hash partition of the combined rows (64 partitions) and the split by it.
* **shuffle**: the partitioned rows written as an Arrow IPC file, read back (memory-mapped) and merged
  (``merge_finalize``), as the reducers would.

Ways of holding the keys:

* ``string``: as the Parquet files are read today.
* ``large_string``: read, then cast to ``large_string`` (64-bit offsets).
* ``dictionary``: ``read_dictionary=`` the string keys, decoded by ``shuffle_ready`` as the engine's
  shuffle writer does today (values, not codes, decide equality).
* ``dict-kept``: read as dictionaries and kept encoded until the combine groups on the codes (the
  spill's dictionaries unified first), decoding only the combined rows' keys.
* ``dict-small``: ``dict-kept`` for the keys whose dictionary is small by the engine's rule
  (``engine.datasets.small_dictionaries``: a dictionary page of at most half a byte per batch row),
  plain strings for the others. This is what the engine does for declarative aggregations.

Prints a table per question (seconds per step, and the total) and appends records to ``--out``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from engine import agg, shuffle
from engine.agg import AggregationSet

BATCH_ROWS = 131072
SPILL_BYTES = 64 << 20
PARTITIONS = 64
WAYS = ("string", "large_string", "dictionary", "dict-kept", "dict-small")
STEPS = ("read", "prepare", "combine", "partition", "shuffle")

QUESTIONS = {
    "q1": (["id1"], {"v1": agg.sum("v1")}),
    "q2": (["id1", "id2"], {"v1": agg.sum("v1")}),
    "q3": (["id3"], {"v1": agg.sum("v1"), "v3": agg.mean("v3")}),
    "q10": (["id1", "id2", "id3", "id4", "id5", "id6"], {"v3": agg.sum("v3"), "count": agg.count()}),
}


def string_keys(pf: pq.ParquetFile, keys: list[str]) -> list[str]:
    return [k for k in keys if pa.types.is_string(pf.schema_arrow.field(k).type)]


def small_dictionaries(path: str, keys: list[str]) -> list[str]:
    """The string keys the engine reads dictionary-encoded from this file (its own rule, from the metadata)."""
    from engine.datasets import small_dictionaries as chosen
    pf = pq.ParquetFile(path)
    return chosen(pf.metadata, pf.schema_arrow, keys, 0, BATCH_ROWS)


def read(path: str, columns: list[str], way: str, dict_keys: list[str]) -> list[pa.RecordBatch]:
    encoded = dict_keys if way in ("dictionary", "dict-kept", "dict-small") else None
    pf = pq.ParquetFile(path, read_dictionary=encoded)
    batches = list(pf.iter_batches(batch_size=BATCH_ROWS, columns=columns))
    if way == "large_string":
        schema = pa.schema([f.with_type(pa.large_string()) if pa.types.is_string(f.type) else f
                            for f in batches[0].schema])
        batches = [b.cast(schema) for b in batches]
    return batches


def prepare(batches: list[pa.RecordBatch], way: str) -> list[pa.Table]:
    tables = [pa.Table.from_batches([b]) for b in batches]
    if way in ("dict-kept", "dict-small"):
        return tables                     # the dictionaries stay until the combine
    return [shuffle.shuffle_ready(t) for t in tables]


def spills(tables: list[pa.Table]) -> list[pa.Table]:
    out, buf, size = [], [], 0
    for t in tables:
        buf.append(t)
        size += t.nbytes
        if size >= SPILL_BYTES:
            out.append(pa.concat_tables(buf))
            buf, size = [], 0
    if buf:
        out.append(pa.concat_tables(buf))
    return out


def combine(table: pa.Table, aset: AggregationSet, q: str) -> pa.Table:
    """The spill's partial states (q10: per-row states), by the engine's own kernels: dictionary keys
    are grouped on their unified codes (``engine.agg``), and decoded later with the combined rows."""
    return aset.row_states(table) if q == "q10" else aset.partial(table)


def run_once(path: str, q: str, way: str, scratch: str, dict_keys: list[str]) -> tuple[dict, int]:
    keys, aggs = QUESTIONS[q]
    aset = AggregationSet(keys, aggs)
    columns = keys + [c for c in aset.input_columns if c not in keys]
    t: dict[str, float] = {}

    t0 = time.perf_counter()
    batches = read(path, columns, way, dict_keys)
    t["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tables = prepare(batches, way)
    t["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    combined = [combine(s, aset, q) for s in spills(tables)]
    t["combine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    parts = []
    for c in combined:
        c = shuffle.shuffle_ready(c)
        pids = shuffle.partition_ids(c, keys, PARTITIONS)
        parts.extend(part.combine_chunks() for _, part in shuffle.split_by_partition(c, pids, PARTITIONS))
    t["partition"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    target = os.path.join(scratch, f"{q}-{way}.arrow")
    with pa.OSFile(target, "wb") as sink, pa.ipc.new_file(sink, parts[0].schema) as writer:
        for p in parts:
            writer.write_table(p)
    with pa.memory_map(target) as source:
        state = pa.ipc.open_file(source).read_all()
        result = aset.merge_finalize(state)
    os.remove(target)
    t["shuffle"] = time.perf_counter() - t0
    return t, result.num_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "data"))
    ap.add_argument("--rows", default="1e7")
    ap.add_argument("--questions", default="q1,q2,q3,q10")
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="append JSON records here")
    args = ap.parse_args(argv)
    pattern = os.path.join(args.data, f"G1_{args.rows}_1e2_na0_skew0_seed0_p*_v1", "*.parquet")
    files = sorted(glob.glob(pattern))
    if not files:
        print(f"no G1 files match {pattern}; generate them with python -m benchmarks.datagen g1", file=sys.stderr)
        return 2
    path = files[0]
    print(f"# {path} ({pq.ParquetFile(path).metadata.num_rows:,} rows), load {os.getloadavg()[0]:.2f}; "
          f"command: python -m benchmarks.keys_bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for q in args.questions.split(","):
            keys = QUESTIONS[q][0]
            pf = pq.ParquetFile(path)
            all_dict = string_keys(pf, keys)
            small = small_dictionaries(path, all_dict)
            ways = args.ways.split(",")
            times: dict[str, list[dict]] = {w: [] for w in ways}
            rows = {}
            for _ in range(args.repeat):
                for w in ways:                      # alternating, so drifting load hits every way alike
                    t, rows[w] = run_once(path, q, w, scratch, small if w == "dict-small" else all_dict)
                    times[w].append(t)
            assert len(set(rows.values())) == 1, rows
            print(f"\n{q}: keys {keys} (dictionary-small picks {small or 'none'}); seconds, median of {args.repeat}")
            print("| way | " + " | ".join(STEPS) + " | total | vs string |")
            print("|---|" + "---:|" * (len(STEPS) + 2))
            base = None
            for w in ways:
                med = {s: statistics.median(t[s] for t in times[w]) for s in STEPS}
                total = statistics.median(sum(t.values()) for t in times[w])
                base = total if w == "string" else base
                rel = f"{total / base:.2f}" if base else "-"
                print(f"| {w} | " + " | ".join(f"{med[s]:.3f}" for s in STEPS) + f" | {total:.3f} | {rel} |")
                records.append({"question": q, "way": w, "steps": med, "total": total, "rows": rows[w],
                                "repeat": args.repeat, "file": os.path.basename(os.path.dirname(path)),
                                "dict_keys": small if w == "dict-small" else all_dict})
    if args.out:
        with open(args.out, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
