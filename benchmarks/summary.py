"""``python -m benchmarks summary RESULTS.jsonl``: a results file as Markdown tables.

One table of the engine against its peers (median seconds, the engine's rows/s, and the engine/peer
ratio taken pair by pair within the run), one of every sweep (each knob value's median and rows/s,
the best value marked), the scale suite's growth curve (seconds per input size, per question and
system) with a least-squares line ``seconds = a + b x rows`` and its value at 1e9 rows, and the
run's environment line. Meant for pasting into ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _rate(r: dict) -> str:
    rate = r.get("rows_per_s")
    if not rate:
        return "-"
    return f"{rate / 1e6:.1f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def peers_table(meas: list[dict]) -> list[str]:
    cases: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in meas:
        if not r.get("sweep") and not r.get("error"):
            cases[(r["suite"], r["case"])][r["system"]] = r
    peers = sorted({s for systems in cases.values() for s in systems if s != "engine"})
    head = ["suite", "case", "engine s", "engine rows/s", *[f"{p} s" for p in peers],
            *[f"engine/{p}" for p in peers], "answers"]
    rows = []
    for (suite, case), systems in cases.items():
        eng = systems.get("engine")
        if eng is None or not peers or not any(p in systems for p in peers):
            continue
        ratios = eng.get("ratios") or {}
        check = eng.get("check") or {}
        rows.append([suite, case, f"{eng['median']:.3f}", _rate(eng),
                     *[f"{systems[p]['median']:.3f}" if p in systems else "-" for p in peers],
                     *[f"{ratios[p]:.2f}" if ratios.get(p) else "-" for p in peers],
                     "equal" if check.get("ok") else ("-" if not check else "DIFFER")])
    return _table(head, rows)


def sweeps_table(meas: list[dict]) -> list[str]:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in meas:
        if r.get("sweep") and not r.get("error"):
            groups[(r["sweep"], r["suite"], r["case"].split(" ")[0])].append(r)
    rows = []
    for (knob, suite, case), recs in groups.items():
        best = min(recs, key=lambda r: r["median"])
        cells = []
        for r in recs:
            value = r["params"].get(knob, r["case"])
            mark = "**" if r is best else ""
            cells.append(f"{mark}{value}: {r['median']:.3f} s ({_rate(r)} rows/s){mark}")
        rows.append([knob, f"{suite}/{case}", "; ".join(cells), str(best["params"].get(knob, best["case"]))])
    return _table(["knob", "workload", "median per value", "best"], rows)


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Least-squares ``(a, b, r2)`` of ``seconds = a + b x rows`` over ``(rows, seconds)`` points (two or more
    sizes), or None."""
    xs = sorted({x for x, _ in points})
    if len(xs) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    syy = sum((y - my) ** 2 for _, y in points)
    r2 = 1 - sum((y - a - b * x) ** 2 for x, y in points) / syy if syy > 0 else 1.0
    return a, b, r2


def _label(rows: float) -> str:
    mantissa, exponent = f"{rows:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def scale_tables(meas: list[dict], at: float = 1e9) -> list[str]:
    """The scale suite: median seconds per input size (one row per question and system), and the
    straight-line fit with its extrapolation to ``at`` rows."""
    recs = [r for r in meas if r["suite"] == "scale" and not r.get("sweep") and not r.get("error")
            and r.get("median") is not None]
    if not recs:
        return []
    sizes = sorted({int(r["params"]["rows"]) for r in recs})
    curves: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in recs:
        curves[(r["params"]["question"], r["system"])][int(r["params"]["rows"])] = r
    order = sorted(curves, key=lambda qs: (int(qs[0][1:]) if qs[0][1:].isdigit() else 0, qs[1] != "engine", qs[1]))
    head = ["question", "system", *[f"{_label(n)} rows s" for n in sizes], "a s", "b s per 1e6 rows",
            "r2", f"at {_label(at)} rows s", "answers"]
    rows = []
    for q, system in order:
        by_size = curves[(q, system)]
        fit = fit_line([(n, by_size[n]["median"]) for n in sizes if n in by_size])
        answers = "-" if system != "engine" else (
            "equal" if all((by_size[n].get("check") or {}).get("ok") for n in by_size) else "DIFFER")
        rows.append([q, system, *[f"{by_size[n]['median']:.3f}" if n in by_size else "-" for n in sizes],
                     *([f"{fit[0]:.3f}", f"{fit[1] * 1e6:.4f}", f"{fit[2]:.3f}", f"{fit[0] + fit[1] * at:,.1f}"]
                       if fit else ["-"] * 4), answers])
    lines = ["Scale: median seconds per input size; `seconds = a + b x rows` fitted by least squares over the "
             f"sizes, and its value at {_label(at)} rows", "", *_table(head, rows)]
    streamed = [r for r in recs if r["system"] == "engine" and (r.get("check") or {}).get("streamed")]
    for r in streamed:
        c = r["check"]
        lines.append(f"- {r['case']}: answers written as Parquet and checked streamed in {c.get('seconds')} s, "
                     f"process memory {c.get('rss_start_mb')} MiB before the check, {c.get('rss_peak_mb')} MiB at "
                     f"its peak (Arrow buffers at most {c.get('arrow_peak_mb')} MiB)")
    return lines


def environment_line(records: list[dict]) -> str:
    run = next((r for r in records if r.get("kind") == "run"), {})
    env = run.get("environment", {})
    v = env.get("versions", {})
    summary = next((r for r in records if r.get("kind") == "summary"), {})
    rev = (env.get("git_revision") or "?")[:7] + (" (dirty)" if env.get("git_dirty") else "")
    return (f"`{run.get('command', 'python -m benchmarks')}` ({run.get('mode', '?')} profile, repeat "
            f"{run.get('params', {}).get('repeat', '?')}): {env.get('cores', '?')} cores, "
            f"{(env.get('memory_bytes') or 0) / 2**30:.0f} GiB, Python {env.get('python', '?')}, pyarrow "
            f"{v.get('pyarrow')}, dask {v.get('dask')}, duckdb {v.get('duckdb')}, polars {v.get('polars')}; "
            f"git {rev}; {summary.get('seconds', '?')} s in all, answers "
            f"{'all equal' if summary.get('ok') else 'NOT all equal'}")


def render(records: list[dict]) -> str:
    meas = [r for r in records if r.get("kind") == "measurement"]
    lines = [environment_line(records), "", *peers_table(meas), "", *sweeps_table(meas)]
    scale = scale_tables(meas)
    if scale:
        lines += ["", *scale]
    from benchmarks.incremental import summary_lines
    incremental = summary_lines(records)
    if incremental:
        lines += ["", *incremental]
    from benchmarks.ops_bench import summary_lines as operations_lines
    operations = operations_lines(records)
    if operations:
        lines += ["", *operations]
    from benchmarks.rejects_bench import summary_lines as rejects_lines
    rejects = rejects_lines(records)
    if rejects:
        lines += ["", *rejects]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks summary", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a JSON lines file written by python -m benchmarks")
    args = ap.parse_args(argv)
    try:
        records = load(args.results)
    except OSError as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(records))
    return 0


__all__ = ["render", "main", "fit_line", "scale_tables"]
