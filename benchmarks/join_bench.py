"""Joins: where broadcasting the small side stops paying, and a skewed shuffle join.

    python -m benchmarks.join_bench [--rows 8e6] [--repeat 3] [--quick]

Every job is written as a user writes it (no ``columns=``)::

    Job("join-bench", input="probe").join("build", on="k").reduce(by="grp", aggs={count, sum x})

and runs on the embedded LocalCluster (``cluster=None``: one single-threaded worker process per
core). Inputs are Parquet, cached under ``benchmarks/data``:

* **probe** (``--rows`` rows, ``--parts`` files): int64 ``k``, float64 ``x``, an 8-letter string ``s``.
* **build**: int64 ``k`` (0, 1, 2, ... one row per key), a low-cardinality string ``grp`` (16 values,
  the reduce key, so the output is 16 rows) and a float64 ``w``.

Experiments:

* **a, broadcast threshold**: the probe's keys are uniform over 32,768 values; build sides whose map
  output is about 1, 4, 16, 64 and 256 MiB (``--sizes``; rows = size / the Arrow bytes of one build
  row), keys 0..rows-1, so every probe row matches exactly one build row (the larger builds also
  carry keys no probe row has). For each size the job runs with ``engine.join.strategy`` forced to
  ``"broadcast"`` and to ``"shuffle"`` (default ``partition_size``). Reported: medians, the ratio
  broadcast / shuffle (also taken within each repeat, in brackets), the crossover (the largest size
  where broadcast is still faster, and where the ratio crosses 1 interpolated on log size), and each
  run's ``result.report.joins`` decisions (the measured bytes of the side).
* **b, skewed join**: probe keys either uniform over 1,000,001 keys, or one key holding half of the
  rows and the rest uniform over 1,000,000 keys; the build has one row per key (1,000,001 rows), so
  the hot key matches one build row. ``engine.join.strategy="shuffle"`` (this measures the skew
  split, not broadcast); ``partition_size`` is the uniform run's join map output / ``--reducers``
  (8), measured in an untimed warm-up run, as in :mod:`benchmarks.skew_bench`. Each shape runs with
  ``skew=True`` and ``skew=False``. Reported: skewed / uniform for both (target with skew handling:
  at most 1.5) and the join decisions (how many pieces the hot partition was cut into).
* **k, kernel**: in this process, one probe chunk (``engine.join.broadcast-chunk-rows`` rows, what
  the broadcast step joins per call) joined with each whole build side by
  :func:`engine.joins.join_tables`, against Acero with its hash table on the broadcast side (Acero
  builds on its right input: the cost of a kernel that does not hash the smaller input, paid once
  per chunk); times the number of chunks of the probe.

Each timed figure is the median of ``--repeat`` runs; configurations take turns and the harness
waits until the scheduler holds no tasks before every run. In a, a strategy whose first run takes
more than ``--give-up`` (4) times the other's is not repeated (its single run is reported).
Answers are checked against DuckDB (untimed, same Parquet files): broadcast, shuffle and DuckDB for
each size of a; skew on and off against DuckDB for each shape of b.

Results are printed as tables and appended as JSON lines (one per experiment, with versions, cores,
git revision, load average, parameters and the command) to ``benchmarks/results/joins.jsonl``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import common
from benchmarks.answers import same
from benchmarks.common import wait_idle
from engine import Job, agg
from engine.skew import format_size

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "joins.jsonl")
QUICK_RESULTS = os.path.join(HERE, "results", "quick-joins.jsonl")     # --quick (not kept in git)
DATA_VERSION = 1

SIZES_MIB = (1, 4, 16, 64, 256)
QUICK_SIZES_MIB = (1, 4, 16)
PROBE_KEYS_A = 32_768         # experiment a: probe keys uniform over 0..32767 (every build has them all)
LIGHT_B = 1_000_000           # experiment b: light keys 1..1,000,000; the hot key is 0
GROUPS = 16                   # values of the build's grp column (the reduce key)
TARGET_SKEWED_OVER_UNIFORM = 1.5


# ---------------------------------------------------------------------------------------------
# The job (module level: the engine ships user functions by value)

AGGS = {"n": agg.count(), "sx": agg.sum("x")}
JOIN = Job("join-bench", input="probe").join("build", on="k").reduce(by="grp", aggs=AGGS)

REFERENCE_SQL = ("SELECT b.grp AS grp, count(*) AS n, sum(p.x) AS sx "
                 "FROM read_parquet('{probe}/*.parquet') p JOIN read_parquet('{build}/*.parquet') b ON p.k = b.k "
                 "GROUP BY b.grp")


# ---------------------------------------------------------------------------------------------
# Data

PROBE_SHAPES: dict[str, str] = {
    "uniform32k": f"uniform over {PROBE_KEYS_A:,} keys",
    "uniform1m": f"uniform over {LIGHT_B + 1:,} keys",
    "half": f"one key holds half the rows, the rest uniform over {LIGHT_B:,} keys",
}
_STREAM = {name: i for i, name in enumerate(PROBE_SHAPES)}


def probe_keys(shape: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if shape == "uniform32k":
        return rng.integers(0, PROBE_KEYS_A, n)
    if shape == "uniform1m":
        return rng.integers(0, LIGHT_B + 1, n)
    if shape == "half":
        return np.where(rng.random(n) < 0.5, 0, rng.integers(1, LIGHT_B + 1, n))
    raise KeyError(shape)


def probe_table(shape: str, rng: np.random.Generator, n: int) -> pa.Table:
    from benchmarks import datagen
    k = probe_keys(shape, rng, n).astype(np.int64)
    letters = rng.integers(65, 91, size=(n, 8), dtype=np.uint8)
    return pa.table({"k": pa.array(k, pa.int64()), "x": pa.array(rng.standard_normal(n), pa.float64()),
                     "s": datagen.fixed_width_strings(letters)})


def build_table(start: int, n: int, rng: np.random.Generator) -> pa.Table:
    from benchmarks import datagen
    k = np.arange(start, start + n, dtype=np.int64)
    grp = datagen.id_strings((k * 7919) % GROUPS, 2, prefix="segment-")
    return pa.table({"k": pa.array(k, pa.int64()), "grp": grp, "w": pa.array(rng.random(n), pa.float64())})


def build_bytes_per_row() -> float:
    """Arrow bytes of one build row (what the map output measures)."""
    t = build_table(0, 10_000, np.random.default_rng(0))
    return t.nbytes / t.num_rows


def build_rows_for(mib: float) -> int:
    return int(round(mib * (1 << 20) / build_bytes_per_row()))


def probe_dataset(shape: str, rows: int, parts: int, seed: int = 0, root: str | None = None) -> str:
    from benchmarks import datagen

    def make(file: int, chunk: int, start: int, n: int) -> pa.Table:
        return probe_table(shape, datagen._rng(seed, 70 + _STREAM[shape], file, chunk), n)

    params = {"dataset": "join-probe", "shape": shape, "rows": rows, "parts": parts, "seed": seed,
              "description": PROBE_SHAPES[shape]}
    name = f"join_probe_{shape}_{datagen._label(rows)}_p{parts}_seed{seed}_v{DATA_VERSION}"
    return datagen._cached(root, name, params, lambda d: datagen._write_parquet_files(d, rows, parts, make),
                           quiet=False)


def build_dataset(rows: int, parts: int, seed: int = 0, root: str | None = None) -> str:
    from benchmarks import datagen

    def make(file: int, chunk: int, start: int, n: int) -> pa.Table:
        return build_table(start, n, datagen._rng(seed, 90, file, chunk))

    params = {"dataset": "join-build", "rows": rows, "parts": parts, "seed": seed,
              "description": f"keys 0..{rows - 1} (one row each), grp: {GROUPS} strings, w: float64"}
    name = f"join_build_{datagen._label(rows)}_p{parts}_seed{seed}_v{DATA_VERSION}"
    return datagen._cached(root, name, params, lambda d: datagen._write_parquet_files(d, rows, parts, make),
                           quiet=False)


def build_parts(mib: float, max_parts: int) -> int:
    """Files of a build side: one per ~8 MiB of map output, 1..max_parts."""
    return max(1, min(max_parts, int(mib // 8)))


def parquet_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".parquet"))


def warm_page_cache(path: str) -> None:
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            while f.read(1 << 24):
                pass


# ---------------------------------------------------------------------------------------------
# Runs


def reference(probe: str, build: str) -> pa.Table:
    """DuckDB's answer over the same Parquet files (untimed)."""
    import duckdb
    con = duckdb.connect()
    try:
        rel = con.sql(REFERENCE_SQL.format(probe=probe, build=build))
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    finally:
        con.close()


def stage_summary(result) -> dict:
    return {s.name: {"tasks": s.tasks, "seconds": round(s.duration, 3), "rows_out": s.rows_out,
                     "bytes_out": s.bytes_out} for s in result.report.stages}


def join_decisions(result) -> list[dict]:
    return [dict(d) for d in result.report.joins]


class Bench:
    def __init__(self, client, scratch: str) -> None:
        self.client = client
        self.scratch = scratch

    def run(self, inputs: dict[str, str], *, strategy: str, skew: bool = True, partition_size: int | None = None,
            keep: bool = False):
        """One timed run: ``(seconds, result, table or None)``; the output is deleted afterwards."""
        import dask

        import engine
        out = os.path.join(self.scratch, f"join-{uuid.uuid4().hex[:8]}")
        gc.collect()
        wait_idle(self.client)
        with dask.config.set({"engine.join.strategy": strategy}):
            t0 = time.perf_counter()
            result = engine.run(JOIN, inputs, out, skew=skew, partition_size=partition_size, force=True)
            seconds = time.perf_counter() - t0
        table = result.read() if keep else None
        shutil.rmtree(out, ignore_errors=True)
        return seconds, result, table


_ratio, _paired, _fmt = common.ratio, common.paired_ratio, common.fmt


def _check(answer: pa.Table, ref: pa.Table) -> str:
    ok, why = same(answer, ref, ["grp"])
    return "ok" if ok else f"DIFFERS ({why})"


def _decision_brief(decisions: list[dict]) -> dict:
    """The strategy decision of a run and its skew splits, short."""
    main = next((d for d in decisions if "strategy" in d), {})
    splits = [d for d in decisions if d.get("action") in ("join-split", "join-subpartition")]
    plan = next((d for d in decisions if d.get("action") == "join-plan"), {})
    out = {"strategy": main.get("strategy")}
    if main.get("strategy") == "broadcast":
        out.update({"broadcast": main.get("broadcast"), "bytes": main.get("bytes")})
    elif main:
        out.update({"sides": main.get("sides"), "tasks": main.get("tasks")})
    if plan:
        out["join_tasks"] = plan.get("tasks_after")
    if splits:
        out["splits"] = [{"partition": d.get("partition"), "side": d.get("side"), "pieces": d.get("pieces"),
                          "bytes": d.get("bytes")} for d in splits]
    return out


# ---------------------------------------------------------------------------------------------
# a: broadcast threshold


def experiment_a(bench: Bench, probe: str, builds: dict[float, str], args, log) -> dict:
    strategies = ("broadcast", "shuffle")
    # Untimed warm-up: first-run costs (worker imports, file metadata) out of the first timed run.
    first = min(builds)
    seconds, _, _ = bench.run({"probe": probe, "build": builds[first]}, strategy="shuffle")
    log(f"[a] warm-up {seconds:.1f}s")
    load_before = os.getloadavg()
    sizes: list[dict] = []
    for mib, build in sorted(builds.items()):
        inputs = {"probe": probe, "build": build}
        times: dict[str, list[float]] = {s: [] for s in strategies}
        runs: dict[str, list[dict]] = {s: [] for s in strategies}
        tables: dict[str, pa.Table] = {}
        for rep in range(args.repeat):
            order = strategies if rep % 2 == 0 else strategies[::-1]
            if rep > 0 and args.give_up:
                # a strategy this much slower than the other after one run need not be run again
                order = [s for s in order if times[s][0] <= args.give_up * min(times[o][0] for o in strategies)]
            for strategy in order:
                keep = rep == 0 and not args.no_check
                seconds, result, table = bench.run(inputs, strategy=strategy, keep=keep)
                times[strategy].append(seconds)
                decisions = join_decisions(result)
                runs[strategy].append({"seconds": round(seconds, 3), "load": round(os.getloadavg()[0], 2),
                                       "rows": result.rows, "joins": decisions, "stages": stage_summary(result)})
                if table is not None:
                    tables[strategy] = table
                brief = _decision_brief(decisions)
                measured = brief.get("bytes") or (brief.get("sides") or {}).get("build")
                log(f"  [a] {mib:g} MiB rep {rep + 1} {strategy:<9} {seconds:6.2f}s  "
                    f"({brief.get('strategy')}, build {format_size(measured) if measured else '?'})  "
                    f"load {os.getloadavg()[0]:.1f}")
        answers: dict[str, str] = {}
        if tables:
            ref = reference(probe, build)
            for s in strategies:
                answers[f"{s}=duckdb"] = _check(tables[s], ref)
            answers["broadcast=shuffle"] = _check(tables["broadcast"], tables["shuffle"])
            rows_joined = int(pc.sum(ref["n"]).as_py())
            answers["rows_joined"] = rows_joined
        med = {s: statistics.median(v) for s, v in times.items()}
        bc = _decision_brief(runs["broadcast"][0]["joins"])
        sh = _decision_brief(runs["shuffle"][0]["joins"])
        sizes.append({
            "target_mib": mib, "build_rows": _rows_of(build),
            "build_parquet_bytes": parquet_bytes(build),
            "measured_build_bytes": bc.get("bytes") if bc.get("broadcast") == "build" else
            (sh.get("sides") or {}).get("build"),
            "broadcast_side": bc.get("broadcast"), "strategies_run": {"broadcast": bc.get("strategy"),
                                                                      "shuffle": sh.get("strategy")},
            "seconds": {s: round(v, 3) for s, v in med.items()},
            "spread": {s: [round(min(v), 3), round(max(v), 3)] for s, v in times.items()},
            "repeats": {s: len(v) for s, v in times.items()},
            "ratio_broadcast_over_shuffle": _ratio(med["broadcast"], med["shuffle"]),
            "paired_ratio": _paired(times["broadcast"], times["shuffle"]),
            "answers": answers or "unchecked",
            "runs": runs,
        })
        tables.clear()
    load_after = os.getloadavg()
    faster = [s["target_mib"] for s in sizes if s["ratio_broadcast_over_shuffle"] is not None
              and s["ratio_broadcast_over_shuffle"] < 1]
    return {"benchmark": "joins", "experiment": "a", "title": "broadcast threshold", "job": JOIN.name,
            "probe_shape": PROBE_SHAPES["uniform32k"], "probe_parquet_bytes": parquet_bytes(probe),
            "sizes": sizes,
            "crossover_mib": max(faster) if faster else None,
            "faster_at_every_size_up_to_crossover": bool(faster) and all(
                s["target_mib"] in faster for s in sizes if s["target_mib"] <= max(faster)),
            "crossover_interpolated_mib": interpolate_crossover(sizes),
            "load_average": {"before": [round(x, 2) for x in load_before],
                             "after": [round(x, 2) for x in load_after]}}


def _rows_of(path: str) -> int:
    from benchmarks import datagen
    return int(datagen.read_marker(path)["rows"])


def interpolate_crossover(sizes: list[dict]) -> float | None:
    """Where broadcast / shuffle crosses 1, interpolating log(ratio) on log(measured bytes), in MiB."""
    pts = [(s["measured_build_bytes"] or s["target_mib"] * (1 << 20), s["ratio_broadcast_over_shuffle"])
           for s in sizes if s["ratio_broadcast_over_shuffle"]]
    pts.sort()
    for (b0, r0), (b1, r1) in zip(pts, pts[1:]):
        if r0 < 1 <= r1:
            f = (0 - math.log(r0)) / (math.log(r1) - math.log(r0))
            return round(math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0))) / (1 << 20), 1)
    return None


# ---------------------------------------------------------------------------------------------
# b: skewed join


def experiment_b(bench: Bench, probes: dict[str, str], build: str, args, log) -> dict:
    skewed, uniform = "half", "uniform1m"
    seconds, warm, _ = bench.run({"probe": probes[uniform], "build": build}, strategy="shuffle")
    map_stage = next(s for s in warm.report.stages if s.name.endswith("-map") and s.name.startswith("r0"))
    map_bytes = map_stage.bytes_out
    psize = max(1 << 20, map_bytes // args.reducers)
    log(f"[b] warm-up {seconds:.1f}s, join map output {format_size(map_bytes)} -> partition_size {format_size(psize)}")
    configs = [(skewed, True), (skewed, False), (uniform, True), (uniform, False)]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    answers: dict[str, str] = {}
    refs: dict[str, pa.Table] = {}
    load_before = os.getloadavg()
    for rep in range(args.repeat):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for shape, skew in order:
            keep = rep == 0 and not args.no_check
            inputs = {"probe": probes[shape], "build": build}
            seconds, result, table = bench.run(inputs, strategy="shuffle", skew=skew, partition_size=psize, keep=keep)
            times[(shape, skew)].append(seconds)
            decisions = join_decisions(result)
            stages = stage_summary(result)
            join_tasks = [t for t in result.report.tasks if t.stage == "r0-join" and t.status == "ok"]
            longest = max(join_tasks, key=lambda t: t.duration) if join_tasks else None
            runs[(shape, skew)].append({
                "seconds": round(seconds, 3), "load": round(os.getloadavg()[0], 2), "rows": result.rows,
                "joins": decisions, "stages": stages,
                "join_stage": {"tasks": len(join_tasks), "work": round(sum(t.duration for t in join_tasks), 3),
                               "longest": round(longest.duration, 3) if longest else None,
                               "longest_rows": longest.rows_in if longest else None}})
            if table is not None:
                if shape not in refs:
                    refs[shape] = reference(probes[shape], build)
                answers[f"{shape}/{'on' if skew else 'off'}"] = _check(table, refs[shape])
            brief = _decision_brief(decisions)
            log(f"  [b] rep {rep + 1} {shape:<9} skew={'on ' if skew else 'off'} {seconds:6.2f}s  "
                f"join {stages.get('r0-join', {}).get('seconds', 0):.2f}s ({brief.get('join_tasks')} tasks, "
                f"{sum(s['pieces'] for s in brief.get('splits', []))} pieces in splits)  load {os.getloadavg()[0]:.1f}")
    load_after = os.getloadavg()
    med = {c: statistics.median(v) for c, v in times.items()}

    def key(c):
        return f"{c[0]}/{'on' if c[1] else 'off'}"

    def median_run(c):
        order = sorted(range(len(times[c])), key=lambda i: times[c][i])
        return runs[c][order[len(order) // 2]]

    return {
        "benchmark": "joins", "experiment": "b", "title": "skewed shuffle join", "job": JOIN.name,
        "skewed": skewed, "uniform": uniform, "shapes": {s: PROBE_SHAPES[s] for s in (skewed, uniform)},
        "build_rows": _rows_of(build), "partition_size": psize, "map_bytes_uniform": map_bytes,
        "seconds": {key(c): round(v, 3) for c, v in med.items()},
        "spread": {key(c): [round(min(v), 3), round(max(v), 3)] for c, v in times.items()},
        "ratios": {
            "skewed_over_uniform_on": _ratio(med[(skewed, True)], med[(uniform, True)]),
            "skewed_over_uniform_off": _ratio(med[(skewed, False)], med[(uniform, False)]),
            "off_over_on_skewed": _ratio(med[(skewed, False)], med[(skewed, True)]),
        },
        "paired_ratios": {
            "skewed_over_uniform_on": _paired(times[(skewed, True)], times[(uniform, True)]),
            "skewed_over_uniform_off": _paired(times[(skewed, False)], times[(uniform, False)]),
        },
        "decisions": {key(c): _decision_brief(runs[c][0]["joins"]) for c in configs},
        "answers": answers or "unchecked",
        "median_run": {key(c): median_run(c) for c in configs},
        "runs": {key(c): v for c, v in runs.items()},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
    }


# ---------------------------------------------------------------------------------------------
# k: the join kernel on the tables of a broadcast join


def experiment_k(probe: str, builds: dict[float, str], args, log) -> dict:
    """One chunk of the probe joined with each whole build side, as the broadcast step joins every chunk
    of the big side: through :func:`engine.joins.join_tables`, and through Acero with its hash table on
    the broadcast side (Acero builds on its right input; what a kernel that does not pick the smaller
    side to hash pays, once per chunk)."""
    import pyarrow.parquet as pq

    from engine import config
    from engine.joins import JoinSpec, join_tables
    spec = JoinSpec(("k",), ("k",), "inner")
    try:
        chunk_rows = int(config.get("join.broadcast-chunk-rows"))
    except KeyError:
        chunk_rows = int(config.get("batch-rows"))
    files = sorted(f for f in os.listdir(probe) if f.endswith(".parquet"))
    first = pq.read_table(os.path.join(probe, files[0]))
    chunk = first.slice(0, chunk_rows).combine_chunks()
    del first
    # a map task reads one file (split); its chunks do not span files
    chunks = sum(math.ceil(pq.ParquetFile(os.path.join(probe, f)).metadata.num_rows / chunk_rows) for f in files)

    def timed(fn) -> float:
        ts: list[float] = []
        while len(ts) < max(1, args.repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
            if ts[-1] > 2.0:         # slow enough that one measurement says it
                break
        return statistics.median(ts)

    out = []
    for mib, build in sorted(builds.items()):
        small = pq.read_table(build).combine_chunks()
        t_kernel = timed(lambda: join_tables(chunk, small, spec))
        t_hash_small = timed(lambda: chunk.join(small, "k", "k", join_type="inner", use_threads=True))
        row = {"target_mib": mib, "build_rows": small.num_rows, "build_bytes": small.nbytes,
               "chunk_rows": chunk.num_rows, "chunks": chunks,
               "seconds_per_chunk": round(t_kernel, 4),
               "seconds_per_chunk_hash_on_broadcast_side": round(t_hash_small, 4),
               "seconds_all_chunks": round(t_kernel * chunks, 2),
               "seconds_all_chunks_hash_on_broadcast_side": round(t_hash_small * chunks, 2),
               "load": round(os.getloadavg()[0], 2)}
        out.append(row)
        log(f"  [k] {mib:g} MiB build ({small.num_rows:,} rows): join_tables {t_kernel * 1000:.0f} ms per "
            f"{chunk.num_rows:,}-row chunk, hash table on the broadcast side {t_hash_small * 1000:.0f} ms; x {chunks} "
            f"chunks = {t_kernel * chunks:.1f}s vs {t_hash_small * chunks:.1f}s  load {os.getloadavg()[0]:.1f}")
    return {"benchmark": "joins", "experiment": "k", "title": "join kernel per broadcast chunk",
            "chunk_rows": chunk_rows, "probe_rows": _rows_of(probe), "sizes": out}


# ---------------------------------------------------------------------------------------------
# Output


def print_tables(records: list[dict], params: dict, env: dict, command: str, out=sys.stdout) -> None:
    cl = env["cluster"]
    print(f"\nJoin benchmark: probe {params['rows']:,} rows in {params['parts']} Parquet files, median of "
          f"{params['repeat']}; {env['cores']} cores, {cl['workers']} workers x "
          f"{cl['threads'] // max(1, cl['workers'])} thread; load {params['load_at_start']}", file=out)
    for r in records:
        if r["experiment"] == "a":
            print("\na. broadcast vs shuffle join (inner join + reduce by grp, 16 output rows)", file=out)
            head = ["build target", "build rows", "measured build bytes", "broadcast s (min-max)",
                    "shuffle s (min-max)", "broadcast/shuffle [paired]", "answers b = s = duckdb"]
            rows = []
            for s in r["sizes"]:
                a = s["answers"]
                ans = a if isinstance(a, str) else (
                    "ok" if all(v == "ok" for k, v in a.items() if k != "rows_joined") else
                    "; ".join(f"{k}: {v}" for k, v in a.items() if k != "rows_joined" and v != "ok"))
                def timing(st: str) -> str:
                    lo, hi = s["spread"][st]
                    n = s["repeats"][st]
                    return f"{s['seconds'][st]:.2f} ({lo:.1f}-{hi:.1f})" if n > 1 else f"{s['seconds'][st]:.2f} (1 run)"
                rows.append([f"{s['target_mib']:g} MiB", f"{s['build_rows']:,}",
                             format_size(s["measured_build_bytes"]) if s["measured_build_bytes"] else "-",
                             timing("broadcast"), timing("shuffle"),
                             f"{_fmt(s['ratio_broadcast_over_shuffle'])} [{_fmt(s['paired_ratio'])}]", ans])
            common.print_markdown_table(head, rows, file=out)
            bad = [s["target_mib"] for s in r["sizes"] if s["broadcast_side"] not in (None, "build")
                   or s["strategies_run"]["broadcast"] != "broadcast"]
            if bad:
                print(f"  note: at {bad} MiB the forced broadcast run did not broadcast the build side", file=out)
            c = r["crossover_mib"]
            print(f"  crossover: broadcast still faster up to {c:g} MiB" if c is not None else
                  "  crossover: broadcast never faster", file=out, end="")
            if c is not None and not r["faster_at_every_size_up_to_crossover"]:
                print(" (not at every smaller size)", file=out, end="")
            ci = r["crossover_interpolated_mib"]
            print(f"; ratio crosses 1 at ~{ci:g} MiB (log-interpolated)" if ci else "", file=out)
            la = r["load_average"]
            print(f"  load {la['before'][0]:.1f} -> {la['after'][0]:.1f}", file=out)
        elif r["experiment"] == "b":
            print(f"\nb. skewed shuffle join (strategy=shuffle, partition_size {format_size(r['partition_size'])})",
                  file=out)
            head = ["probe", "skew on s (min-max)", "skew off s (min-max)", "join tasks on/off", "split pieces (on)",
                    "longest join task on/off s", "answers on/off = duckdb"]
            rows = []
            for shape in (r["skewed"], r["uniform"]):
                on, off = r["decisions"][f"{shape}/on"], r["decisions"][f"{shape}/off"]
                mon, moff = r["median_run"][f"{shape}/on"], r["median_run"][f"{shape}/off"]
                pieces = ", ".join(f"p{d['partition']}: {d['pieces']} of {d['side']} ({format_size(d['bytes'])})"
                                   for d in on.get("splits", [])) or "none"
                a = r["answers"]
                ans = a if isinstance(a, str) else f"{a.get(shape + '/on', '-')}/{a.get(shape + '/off', '-')}"
                rows.append([f"{shape} ({r['shapes'][shape]})",
                             f"{r['seconds'][shape + '/on']:.2f} ({r['spread'][shape + '/on'][0]:.1f}-"
                             f"{r['spread'][shape + '/on'][1]:.1f})",
                             f"{r['seconds'][shape + '/off']:.2f} ({r['spread'][shape + '/off'][0]:.1f}-"
                             f"{r['spread'][shape + '/off'][1]:.1f})",
                             f"{on.get('join_tasks')}/{off.get('join_tasks')}", pieces,
                             f"{_fmt(mon['join_stage']['longest'])}/{_fmt(moff['join_stage']['longest'])}", ans])
            common.print_markdown_table(head, rows, file=out)
            rr, pr = r["ratios"], r["paired_ratios"]
            on = rr["skewed_over_uniform_on"]
            print(f"  skewed/uniform: skew on {_fmt(on)} [{_fmt(pr['skewed_over_uniform_on'])}] "
                  f"({'met' if on is not None and on <= TARGET_SKEWED_OVER_UNIFORM else 'MISSED'}: target <= "
                  f"{TARGET_SKEWED_OVER_UNIFORM}), skew off {_fmt(rr['skewed_over_uniform_off'])} "
                  f"[{_fmt(pr['skewed_over_uniform_off'])}]; skewed off/on {_fmt(rr['off_over_on_skewed'])}", file=out)
            la = r["load_average"]
            print(f"  load {la['before'][0]:.1f} -> {la['after'][0]:.1f}", file=out)
        elif r["experiment"] == "k":
            n = r["sizes"][0]["chunk_rows"] if r["sizes"] else r["chunk_rows"]
            print(f"\nk. join kernel, one process: a {n:,}-row probe chunk joined with the whole build side, as the "
                  "broadcast step does for every chunk; engine.joins.join_tables against Acero with its hash table "
                  "on the broadcast side (rebuilt per chunk)", file=out)
            head = ["build target", "build rows", "join_tables s/chunk", "hash on broadcast side s/chunk", "chunks",
                    "join_tables s, all chunks", "hash on broadcast side s, all chunks"]
            rows = [[f"{s['target_mib']:g} MiB", f"{s['build_rows']:,}", f"{s['seconds_per_chunk']:.3f}",
                     f"{s['seconds_per_chunk_hash_on_broadcast_side']:.3f}", s["chunks"],
                     f"{s['seconds_all_chunks']:.1f}", f"{s['seconds_all_chunks_hash_on_broadcast_side']:.1f}"]
                    for s in r["sizes"]]
            common.print_markdown_table(head, rows, file=out)
    print(f"command: {command}", file=out)


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.join_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=float, default=None, help="probe rows (default 8e6; --quick: 1e6)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per configuration (default 3; --quick: 1)")
    p.add_argument("--sizes", default=None, help="build map-output sizes in MiB (default 1,4,16,64,256; --quick: "
                                                 "1,4,16)")
    p.add_argument("--quick", action="store_true", help="1e6 probe rows, sizes 1,4,16 MiB, repeat 1")
    p.add_argument("--parts", type=int, default=8, help="Parquet files of the probe")
    p.add_argument("--give-up", type=float, default=4.0, help="a: do not repeat a strategy whose first run took "
                                                            "more than this x the other's (0: always repeat)")
    p.add_argument("--reducers", type=int, default=8, help="b: partition_size = uniform join map output / this")
    p.add_argument("--experiments", default="a,b,k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="dataset cache root (default: benchmarks/data)")
    p.add_argument("--scratch", default=None, help="where outputs go (default: the temp directory)")
    p.add_argument("--results", default=None, help="results file (default benchmarks/results/joins.jsonl; "
                                                   "--quick: quick-joins.jsonl)")
    p.add_argument("--no-save", action="store_true", help="do not append to the results file")
    p.add_argument("--no-check", action="store_true", help="skip the answer checks against DuckDB")
    args = p.parse_args(argv)
    args.rows = int(args.rows if args.rows is not None else (1e6 if args.quick else 8e6))
    args.results = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    args.repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    sizes = [float(x) for x in args.sizes.split(",")] if args.sizes else \
        list(QUICK_SIZES_MIB if args.quick else SIZES_MIB)
    keys = [k.strip() for k in args.experiments.split(",") if k.strip()]
    command = "python -m benchmarks.join_bench " + " ".join(shlex.quote(a) for a in argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    data: dict[str, str] = {}
    builds: dict[float, str] = {}
    if "a" in keys or "k" in keys:
        data["probe_a"] = probe_dataset("uniform32k", args.rows, args.parts, args.seed, args.data)
        for mib in sizes:
            rows = build_rows_for(mib)
            if rows < PROBE_KEYS_A:
                raise SystemExit(f"a build of {mib:g} MiB has {rows:,} rows, fewer than the probe's {PROBE_KEYS_A:,} "
                                 "keys; use sizes of at least 1 MiB")
            builds[mib] = build_dataset(rows, build_parts(mib, args.parts), args.seed, args.data)
    if "b" in keys:
        data["probe_half"] = probe_dataset("half", args.rows, args.parts, args.seed, args.data)
        data["probe_uniform1m"] = probe_dataset("uniform1m", args.rows, args.parts, args.seed, args.data)
        data["build_1m"] = build_dataset(LIGHT_B + 1, 2, args.seed, args.data)
    gen_seconds = time.time() - started
    for path in [*data.values(), *builds.values()]:
        warm_page_cache(path)
    records: list[dict] = []
    params = {"rows": args.rows, "parts": args.parts, "repeat": args.repeat, "sizes_mib": sizes,
              "reducers": args.reducers, "seed": args.seed, "experiments": keys, "quick": args.quick,
              "build_bytes_per_row": round(build_bytes_per_row(), 3),
              "data": {k: os.path.basename(v) for k, v in data.items()},
              "builds": {f"{m:g}": os.path.basename(v) for m, v in builds.items()},
              "data_bytes": {**{k: parquet_bytes(v) for k, v in data.items()},
                             **{f"build_{m:g}MiB": parquet_bytes(v) for m, v in builds.items()}},
              "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    log(f"data ready in {gen_seconds:.0f}s: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in
                                                          params["data_bytes"].items()))
    bench_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    env = None
    scratch = tempfile.mkdtemp(prefix="join-bench-", dir=args.scratch)

    def save(rec: dict) -> None:
        rec.update({"bench_id": bench_id, "time": time.time(), "params": params, "environment": env,
                    "command": command})
        records.append(rec)
        if not args.no_save:
            common.append_records(args.results, [rec])

    try:
        if "a" in keys or "b" in keys:
            from engine.cluster import get_client
            client, info = get_client(None)
            env = common.environment(info, packages=("duckdb",))
            log(f"cluster {info.workers} workers, {info.threads} threads; load {os.getloadavg()[0]:.1f}")
            bench = Bench(client, scratch)
            if "a" in keys:
                save(experiment_a(bench, data["probe_a"], builds, args, log))
            if "b" in keys:
                save(experiment_b(bench, {"half": data["probe_half"], "uniform1m": data["probe_uniform1m"]},
                                  data["build_1m"], args, log))
        if "k" in keys:
            if env is None:
                from types import SimpleNamespace
                env = common.environment(SimpleNamespace(workers=0, threads=0), packages=("duckdb",))
            save(experiment_k(data["probe_a"], builds, args, log))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_tables(records, params, env, command)
    log(f"total {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
