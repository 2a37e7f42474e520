"""Skewed keys against uniform keys: a non-combinable groupby, a combinable one and a sort.

    python -m benchmarks.skew_bench --rows 2e7 --repeat 3

Three experiments on the embedded LocalCluster (``cluster=None``: one single-threaded worker process
per core), each on a skewed and a uniform dataset of the same number of rows (int64 ``k``, float64
``v``, Parquet, ``--parts`` files, cached under ``benchmarks/data``):

* **a, median**: ``Job.reduce(median_per_key, by="k")``, an exact median per key computed by a
  reduce *function* (no map-side combine is possible). Skewed: the ten heaviest keys hold half the
  rows, the other half is spread over 20,000 light keys. Uniform: 20,010 keys.
* **b, sums**: ``reduce(by="k", aggs={count, sum, mean})`` (combined on the map side). Skewed: one
  key holds half the rows, the other half is spread over 1,000,000 light keys. Uniform: 1,000,001
  keys.
* **c, sort**: ``Job.sort(by="k")``. Skewed: bounded Zipf keys (exponent 1.2) over 1,000,001
  values. Uniform: 1,000,001 keys. Besides time, the largest output partition's rows relative to
  the median partition's (from the committed manifest's files).

Every job runs with ``skew=True`` and ``skew=False``. ``partition_size`` is the map output of the
experiment's uniform dataset (measured in an untimed warm-up run) divided by ``--reducers`` (8), so
a balanced run has several reducers. Each figure is the median of ``--repeat`` runs; configurations
take turns within a repeat and before every timed run the harness waits until the scheduler holds
no tasks. Answers of ``skew=True`` and ``skew=False`` are compared (sorted by key for the groupbys,
in output order for the sort). The reduce-stage timeline of every run (task, worker, start, stop,
rows) is kept in the JSON record, so a missed target can be explained from it.

Besides the ratios of medians, each ratio is also taken within every repeat (runs seconds apart) and
its median reported in brackets: less exposed to load drifting on a shared machine. "rebalance
bound" is the most any rebalancing of a run's reduce tasks could gain: run time / (run time -
reduce stage + reduce task time / cores).

Results are printed as a table, with the skew decisions of the skewed runs, and appended as JSON
lines (one per experiment, with versions, cores, git revision, parameters and the command) to
``benchmarks/results/skew.jsonl``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks import common
from benchmarks.common import wait_idle
from engine import Job, agg
from engine.skew import format_size

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "skew.jsonl")
DATA_VERSION = 1

TARGETS = {"skewed_over_uniform": 1.3, "off_over_on": 2.0, "sort_max_over_median": 1.5}


# ---------------------------------------------------------------------------------------------
# Jobs (module level: the engine ships user functions by value)


def median_per_key(t: pa.Table) -> pa.Table:
    """The exact median of every key's values: a reduce the engine cannot combine on the map side."""
    return agg.AggregationSet(["k"], {"med": agg.median("v")}).aggregate(t)


MEDIAN = Job("skew-median").reduce(median_per_key, by="k")
SUMS = Job("skew-sums").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v"), "m": agg.mean("v")})
SORT = Job("skew-sort").sort(by="k")


# ---------------------------------------------------------------------------------------------
# Data shapes

LIGHT_A = 20_000          # light keys of experiment a
LIGHT_B = 1_000_000       # light keys of experiment b (and the key domain of c)

SHAPES: dict[str, str] = {
    "top10": f"ten heaviest keys hold half the rows, the rest uniform over {LIGHT_A:,} keys",
    "uniform20k": f"uniform over {LIGHT_A + 10:,} keys",
    "half": f"one key holds half the rows, the rest uniform over {LIGHT_B:,} keys",
    "uniform1m": f"uniform over {LIGHT_B + 1:,} keys",
    "zipf1.2": f"bounded Zipf, exponent 1.2, over {LIGHT_B + 1:,} keys (key 0 most frequent)",
}
_STREAM = {name: i for i, name in enumerate(SHAPES)}


def shape_keys(shape: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` int64 keys of the named shape."""
    from benchmarks import datagen
    if shape == "top10":
        return np.where(rng.random(n) < 0.5, rng.integers(0, 10, n), rng.integers(10, 10 + LIGHT_A, n))
    if shape == "uniform20k":
        return rng.integers(0, LIGHT_A + 10, n)
    if shape == "half":
        return np.where(rng.random(n) < 0.5, 0, rng.integers(1, LIGHT_B + 1, n))
    if shape == "uniform1m":
        return rng.integers(0, LIGHT_B + 1, n)
    if shape == "zipf1.2":
        return datagen.sample_ints(rng, LIGHT_B + 1, n, 1.2) - 1
    raise KeyError(shape)


def dataset(shape: str, rows: int, parts: int, seed: int = 0, root: str | None = None) -> str:
    """Generate (or reuse) ``rows`` rows of ``shape`` as ``parts`` Parquet files; returns the directory."""
    from benchmarks import datagen

    def make(file: int, chunk: int, start: int, n: int) -> pa.Table:
        rng = datagen._rng(seed, 50 + _STREAM[shape], file, chunk)
        k = shape_keys(shape, rng, n).astype(np.int64)
        return pa.table({"k": pa.array(k, pa.int64()), "v": pa.array(rng.standard_normal(n), pa.float64())})

    params = {"dataset": "skew", "shape": shape, "rows": rows, "parts": parts, "seed": seed,
              "description": SHAPES[shape]}
    name = f"skew_{shape}_{datagen._label(rows)}_p{parts}_seed{seed}_v{DATA_VERSION}"
    return datagen._cached(root, name, params, lambda d: datagen._write_parquet_files(d, rows, parts, make),
                           quiet=False)


# name, job, skewed shape, uniform shape, run options
EXPERIMENTS: dict[str, tuple[str, Job, str, str, dict]] = {
    "a": ("median (non-combinable reduce fn)", MEDIAN, "top10", "uniform20k", {}),
    "b": ("count/sum/mean (combinable aggs)", SUMS, "half", "uniform1m", {}),
    "d": ("count/sum/mean, map-side combine off", SUMS, "half", "uniform1m", {"map_combine": False}),
    "c": ("sort", SORT, "zipf1.2", "uniform1m", {}),
}


# ---------------------------------------------------------------------------------------------
# Environment


def environment(info) -> dict:
    return common.environment(info, packages=())


# ---------------------------------------------------------------------------------------------
# One run and what it reports


def timeline(result) -> dict:
    """Stage times and the reduce stage's per-task timeline of one run (seconds from stage start)."""
    rep = result.report
    stages = {s.name: s for s in rep.stages}
    out: dict[str, Any] = {"stages": {name: {"tasks": s.tasks, "seconds": round(s.duration, 3),
                                             "rows_in": s.rows_in, "rows_out": s.rows_out,
                                             "bytes_out": s.bytes_out, "speculative": s.speculative}
                                      for name, s in stages.items()}}
    workers = sorted({t.worker for t in rep.tasks})
    red = stages.get("r0-reduce")
    tasks = [t for t in rep.tasks if t.stage == "r0-reduce" and t.status == "ok"]
    if red is None or not tasks:
        return out
    t0 = red.start
    rows = [[t.partition, workers.index(t.worker), round(t.start - t0, 3), round(t.stop - t0, 3), t.rows_in]
            for t in sorted(tasks, key=lambda t: t.start)]
    busy = [0.0] * len(workers)
    for t in tasks:
        busy[workers.index(t.worker)] += t.duration
    work = sum(t.duration for t in tasks)
    longest = max(tasks, key=lambda t: t.duration)
    threads = max(1, rep.cluster.get("threads") or len(workers))
    # The best a perfect scheduler could do with these tasks: all cores busy, or the longest task.
    bound = max(work / threads, longest.duration)
    out["reduce"] = {
        "tasks": rows, "makespan": round(red.duration, 3), "work": round(work, 3),
        "busy_per_worker": [round(b, 3) for b in busy],
        "longest": {"partition": longest.partition, "seconds": round(longest.duration, 3),
                    "rows": longest.rows_in},
        "rows_max_over_median": _ratio(max(t.rows_in for t in tasks), statistics.median(t.rows_in for t in tasks)),
        "balanced_bound": round(bound, 3),
        "rows_total": sum(t.rows_in for t in tasks),
    }
    return out


def partition_rows(result) -> list[int]:
    """Rows of every committed output file, in output (partition) order."""
    files = sorted(result.manifest.files, key=lambda f: (f["partition"], f["path"]))
    return [int(f["rows"]) for f in files]


def digest(table: pa.Table, sort_key: str | list[str] | None) -> tuple[str, pa.Table]:
    """A digest of the table's values (after sorting by ``sort_key`` if given) and the table used."""
    if sort_key is not None:
        keys = [sort_key] if isinstance(sort_key, str) else sort_key
        table = table.sort_by([(k, "ascending") for k in keys])
    h = hashlib.sha256()
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        h.update(name.encode())
        h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
        h.update(str(col.null_count).encode())
    return h.hexdigest(), table


def same_within(a: pa.Table, b: pa.Table, rel: float = 1e-9) -> bool:
    if a.num_rows != b.num_rows or a.column_names != b.column_names:
        return False
    for name in a.column_names:
        x = a.column(name).to_numpy(zero_copy_only=False)
        y = b.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=rel, atol=1e-12, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def plan_signature(run: dict) -> tuple:
    """What the planner decided for one run: the reduce tasks' input rows and the decisions' actions."""
    tasks = run.get("reduce", {}).get("tasks", [])
    return (tuple(sorted(t[4] for t in tasks)), tuple(d.get("action") for d in run["skew_decisions"]))


_ratio, _paired, _fmt = common.ratio, common.paired_ratio, common.fmt


class Bench:
    def __init__(self, client, scratch: str) -> None:
        self.client = client
        self.scratch = scratch

    def run(self, job: Job, data: str, *, skew: bool, partition_size: int | None, keep: bool = False,
            **options: Any):
        """One timed run: ``(seconds, result, table or None)``; the output is deleted afterwards."""
        import engine
        out = os.path.join(self.scratch, f"{job.name}-{uuid.uuid4().hex[:8]}")
        gc.collect()
        wait_idle(self.client)
        t0 = time.perf_counter()
        result = engine.run(job, data, out, skew=skew, partition_size=partition_size, force=True, **options)
        seconds = time.perf_counter() - t0
        table = result.read() if keep else None
        shutil.rmtree(out, ignore_errors=True)
        return seconds, result, table


# ---------------------------------------------------------------------------------------------
# Experiments


def experiment(bench: Bench, key: str, data: dict[str, str], args, log) -> dict:
    title, job, skewed, uniform, options = EXPERIMENTS[key]
    # Untimed warm-up on the uniform data: first-run costs, and the map output that sets partition_size.
    seconds, warm, _ = bench.run(job, data[uniform], skew=True, partition_size=None, **options)
    map_bytes = warm.report.stages[0].bytes_out
    psize = max(1 << 20, map_bytes // args.reducers)
    log(f"[{key}] {title}: warm-up {seconds:.1f}s, map output {format_size(map_bytes)} -> partition_size "
        f"{format_size(psize)}")
    configs = [(skewed, True), (skewed, False), (uniform, True), (uniform, False)]
    times: dict[tuple[str, bool], list[float]] = {c: [] for c in configs}
    runs: dict[tuple[str, bool], list[dict]] = {c: [] for c in configs}
    tables: dict[tuple[str, bool], pa.Table] = {}
    digests: dict[tuple[str, bool], str] = {}
    load_before = os.getloadavg()
    for rep in range(args.repeat):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]   # rotate who goes first
        for shape, skew in order:
            keep = rep == 0 and not args.no_check
            seconds, result, table = bench.run(job, data[shape], skew=skew, partition_size=psize, keep=keep,
                                               **options)
            times[(shape, skew)].append(seconds)
            rec = {"seconds": round(seconds, 3), "rows": result.rows, "load": round(os.getloadavg()[0], 2),
                   "skew_decisions": result.report.skew, **timeline(result)}
            red = rec.get("reduce")
            if red:
                # Upper bound on what any rebalancing of this run's reduce tasks could gain: the reduce
                # stage shrunk to its work spread evenly over the cores, the rest of the run unchanged.
                threads = max(1, result.report.cluster.get("threads") or 1)
                rec["rebalance_bound"] = _ratio(seconds, seconds - red["makespan"] + red["work"] / threads)
            if key == "c":
                rec["partition_rows"] = partition_rows(result)
            runs[(shape, skew)].append(rec)
            if table is not None:
                if key == "c":   # globally ordered by k; ties (equal keys) may come in any order
                    ks = table["k"].to_numpy()
                    rec["ordered"] = bool((ks[1:] >= ks[:-1]).all())
                d, table = digest(table, ["k", "v"] if key == "c" else "k")
                digests[(shape, skew)] = d
                tables[(shape, skew)] = table
            red = rec.get("reduce", {})
            st = rec["stages"]
            log(f"  [{key}] rep {rep + 1} {shape:<10} skew={'on ' if skew else 'off'} {seconds:6.2f}s  "
                f"map {st['r0-map']['seconds']:.2f}s reduce {st['r0-reduce']['seconds']:.2f}s "
                f"({st['r0-reduce']['tasks']} tasks, longest {red.get('longest', {}).get('seconds', 0):.2f}s)"
                f"  load {rec['load']}")
        # Compare answers of skew on/off as soon as both exist, then free them.
        for shape in (skewed, uniform):
            if (shape, True) in tables and (shape, False) in tables:
                a, b = tables.pop((shape, True)), tables.pop((shape, False))
                if digests[(shape, True)] == digests[(shape, False)]:
                    digests[shape] = "identical"
                elif key != "c" and same_within(a, b):
                    digests[shape] = "equal within 1e-9"
                else:
                    digests[shape] = "DIFFER"
                del a, b
    load_after = os.getloadavg()
    med = {c: statistics.median(v) for c, v in times.items()}

    def median_run(c):
        """The repeat whose time is the median (for timelines and partition rows)."""
        order = sorted(range(len(times[c])), key=lambda i: times[c][i])
        return runs[c][order[len(order) // 2]]

    rec: dict[str, Any] = {
        "benchmark": "skew", "experiment": key, "title": title, "job": job.name,
        "skewed": skewed, "uniform": uniform, "shapes": {skewed: SHAPES[skewed], uniform: SHAPES[uniform]},
        "partition_size": psize, "map_bytes_uniform": map_bytes,
        "seconds": {f"{s}/{'on' if k else 'off'}": round(v, 3) for (s, k), v in med.items()},
        "runs": {f"{s}/{'on' if k else 'off'}": v for (s, k), v in runs.items()},
        "ratios": {
            "skewed_over_uniform_on": _ratio(med[(skewed, True)], med[(uniform, True)]),
            "skewed_over_uniform_off": _ratio(med[(skewed, False)], med[(uniform, False)]),
            "off_over_on_skewed": _ratio(med[(skewed, False)], med[(skewed, True)]),
            "off_over_on_uniform": _ratio(med[(uniform, False)], med[(uniform, True)]),
        },
        # The same ratios taken within each repeat (the two runs a few seconds apart), then the median:
        # less sensitive to load that drifts over minutes on a shared machine.
        "paired_ratios": {
            "skewed_over_uniform_on": _paired(times[(skewed, True)], times[(uniform, True)]),
            "off_over_on_skewed": _paired(times[(skewed, False)], times[(skewed, True)]),
            "off_over_on_uniform": _paired(times[(uniform, False)], times[(uniform, True)]),
        },
        "answers": {skewed: digests.get(skewed, "unchecked"), uniform: digests.get(uniform, "unchecked")},
        "same_plan_on_off": {s: plan_signature(runs[(s, True)][0]) == plan_signature(runs[(s, False)][0])
                             for s in (skewed, uniform)},
        "spread": {f"{s}/{'on' if k else 'off'}": [round(min(v), 3), round(max(v), 3)] for (s, k), v in times.items()},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
    }
    if key == "c":
        pr = {}
        for c in configs:
            rows = median_run(c)["partition_rows"]
            pr[f"{c[0]}/{'on' if c[1] else 'off'}"] = {
                "partitions": len(rows), "max": max(rows), "median": statistics.median(rows),
                "max_over_median": _ratio(max(rows), statistics.median(rows))}
        rec["sort_partitions"] = pr
        rec["ratios"]["sort_max_over_median_skewed"] = pr[f"{skewed}/on"]["max_over_median"]
        rec["ratios"]["sort_max_over_median_uniform"] = pr[f"{uniform}/on"]["max_over_median"]
    rec["median_run"] = {f"{s}/{'on' if k else 'off'}": median_run((s, k)) for (s, k) in configs}
    return rec


# ---------------------------------------------------------------------------------------------
# Output


def _timing(r: dict, config: str) -> str:
    lo, hi = r["spread"][config]
    return f"{r['seconds'][config]:.2f} ({lo:.1f}-{hi:.1f})"


def print_table(records: list[dict], params: dict, env: dict, command: str, out=sys.stdout) -> None:
    head = ["exp", "data", "skew on s (min-max)", "skew off s (min-max)", "reduce tasks on/off", "plan on = off",
            "skewed/uniform (on) [paired]", "off/on [paired]", "rebalance bound (off)", "sort max/median rows",
            "answers on = off"]
    rows = []
    for r in records:
        for shape in (r["skewed"], r["uniform"]):
            on, off = r["median_run"][f"{shape}/on"], r["median_run"][f"{shape}/off"]
            is_skewed = shape == r["skewed"]
            oo = "off_over_on_skewed" if is_skewed else "off_over_on_uniform"
            sort = r.get("sort_partitions", {}).get(f"{shape}/on")
            rows.append([
                r["experiment"], shape, _timing(r, f"{shape}/on"), _timing(r, f"{shape}/off"),
                f"{on['stages']['r0-reduce']['tasks']}/{off['stages']['r0-reduce']['tasks']}",
                "yes" if r["same_plan_on_off"][shape] else "no",
                f"{_fmt(r['ratios']['skewed_over_uniform_on'])} [{_fmt(r['paired_ratios']['skewed_over_uniform_on'])}]"
                if is_skewed else "",
                f"{_fmt(r['ratios'][oo])} [{_fmt(r['paired_ratios'][oo])}]",
                _fmt(off.get("rebalance_bound")),
                f"{sort['max_over_median']:.2f} ({sort['partitions']} parts)" if sort else "",
                r["answers"][shape]])
    print(f"\nSkew benchmark: {params['rows']:,} rows per dataset, {params['parts']} Parquet files each, median of "
          f"{params['repeat']}; {env['cores']} cores, {env['cluster']['workers']} workers x "
          f"{env['cluster']['threads'] // max(1, env['cluster']['workers'])} thread", file=out)
    common.print_markdown_table(head, rows, file=out)
    print(f"targets: skewed/uniform with skew handling <= {TARGETS['skewed_over_uniform']}, skew off/on on skewed "
          f"data >= {TARGETS['off_over_on']} (where skew hurts), sort max/median partition rows <= "
          f"{TARGETS['sort_max_over_median']}", file=out)
    for r in records:
        rr = r["ratios"]
        met = [f"skewed/uniform {rr['skewed_over_uniform_on']:.2f} "
               f"{'met' if rr['skewed_over_uniform_on'] <= TARGETS['skewed_over_uniform'] else 'MISSED'}",
               f"off/on {rr['off_over_on_skewed']:.2f} "
               f"{'met' if rr['off_over_on_skewed'] >= TARGETS['off_over_on'] else 'missed'}"
               + (" (same plan with skew on and off)" if r["same_plan_on_off"][r["skewed"]] else "")]
        if "sort_max_over_median_skewed" in rr:
            m = rr["sort_max_over_median_skewed"]
            met.append(f"sort max/median {m:.2f} {'met' if m <= TARGETS['sort_max_over_median'] else 'MISSED'}")
        load = r["load_average"]
        met.append(f"load {load['before'][0]:.1f} -> {load['after'][0]:.1f}")
        print(f"  {r['experiment']}: " + "; ".join(met), file=out)
    print(f"command: {command}", file=out)


def print_details(records: list[dict], out=sys.stdout) -> None:
    for r in records:
        shape = r["skewed"]
        print(f"\n[{r['experiment']}] {r['title']} on {shape} ({r['shapes'][shape]}), partition_size "
              f"{format_size(r['partition_size'])}", file=out)
        for mode in ("on", "off"):
            run = r["median_run"][f"{shape}/{mode}"]
            decisions = run["skew_decisions"]
            print(f"  skew={mode}: {len(decisions)} decision(s)", file=out)
            for d in decisions:
                print(f"    {d.get('action')}: {d.get('reason', d)}", file=out)
            red = run.get("reduce")
            if red:
                print(f"    reduce stage {red['makespan']:.2f}s, task work {red['work']:.2f}s, per worker "
                      f"{', '.join(f'{b:.2f}s' for b in red['busy_per_worker'])}; longest task "
                      f"{red['longest']['seconds']:.2f}s ({red['longest']['rows']:,} rows); balanced bound "
                      f"{red['balanced_bound']:.2f}s; task rows max/median {red['rows_max_over_median']}; "
                      f"run {run['seconds']:.2f}s, rebalance bound {_fmt(run.get('rebalance_bound'))}", file=out)
                print("    tasks (partition, worker, start-stop s, rows): " + "; ".join(
                    f"p{p} w{w} {a:.2f}-{b:.2f} {n:,}" for p, w, a, b, n in red["tasks"]), file=out)
        if "sort_partitions" in r:
            for k, v in r["sort_partitions"].items():
                print(f"  {k}: {v['partitions']} partitions, max {v['max']:,} rows, median {v['median']:,.0f}, "
                      f"max/median {v['max_over_median']:.2f}", file=out)


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.skew_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=float, default=2e7, help="rows of every dataset")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--parts", type=int, default=8, help="Parquet files per dataset")
    p.add_argument("--reducers", type=int, default=8, help="partition_size = uniform map output / this")
    p.add_argument("--experiments", default="a,b,d,c")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="dataset cache root (default: benchmarks/data)")
    p.add_argument("--scratch", default=None, help="where outputs go (default: the temp directory)")
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--no-save", action="store_true", help="do not append to the results file")
    p.add_argument("--no-check", action="store_true", help="skip comparing skew on/off answers")
    args = p.parse_args(argv)
    rows = int(args.rows)
    keys = [k.strip() for k in args.experiments.split(",") if k.strip()]
    command = "python -m benchmarks.skew_bench " + " ".join(shlex.quote(a) for a in argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    shapes = sorted({s for k in keys for s in EXPERIMENTS[k][2:4]}, key=list(SHAPES).index)
    data = {}
    for s in shapes:
        data[s] = dataset(s, rows, args.parts, args.seed, args.data)
    gen_seconds = time.time() - started
    for s in shapes:      # page cache
        for name in sorted(os.listdir(data[s])):
            with open(os.path.join(data[s], name), "rb") as f:
                while f.read(1 << 24):
                    pass
    from engine.cluster import get_client
    client, info = get_client(None)
    env = environment(info)
    params = {"rows": rows, "parts": args.parts, "repeat": args.repeat, "reducers": args.reducers,
              "seed": args.seed, "experiments": keys,
              "data_bytes": {s: sum(os.path.getsize(os.path.join(data[s], f)) for f in os.listdir(data[s])
                                    if f.endswith(".parquet")) for s in shapes}}
    sizes = ", ".join(f"{s} {params['data_bytes'][s] / 1e6:.0f} MB" for s in shapes)
    log(f"data: {sizes} "
        f"({gen_seconds:.0f}s to generate or find); cluster {info.workers} workers, {info.threads} threads; "
        f"load {os.getloadavg()[0]:.1f}")
    scratch = tempfile.mkdtemp(prefix="skew-bench-", dir=args.scratch)
    bench = Bench(client, scratch)
    bench_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    records = []
    try:
        for k in keys:
            rec = experiment(bench, k, data, args, log)
            rec.update({"bench_id": bench_id, "time": time.time(), "params": params, "environment": env,
                        "command": command, "data": {s: os.path.basename(data[s]) for s in (rec["skewed"],
                                                                                             rec["uniform"])}})
            records.append(rec)
            if not args.no_save:
                common.append_records(args.results, [rec])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_details(records)
    print_table(records, params, env, command)
    log(f"total {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
