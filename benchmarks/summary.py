"""``python -m benchmarks summary RESULTS.jsonl``: a results file as Markdown tables.

One table of the engine against its peers (median seconds, the engine's rows/s, and the engine/peer
ratio taken pair by pair within the run), one of every sweep (each knob value's median and rows/s,
the best value marked), and the run's environment line. Meant for pasting into ``RESULTS.md``.
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


__all__ = ["render", "main"]
