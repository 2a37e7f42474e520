"""Compare two result files of ``python -m benchmarks``: regressions beyond the noise of the repeats.

    python -m benchmarks compare BASELINE.jsonl CANDIDATE.jsonl [--threshold 0.10] [--noise 1.0]

Measurements are matched by suite, case, system, sweep and knob values. For every match the
candidate's median is divided by the baseline's. The *noise* of a pair is the larger of the two
spreads (``(max - min) / median`` of each side's repeats); a change counts only when it exceeds both
``threshold`` and ``noise x`` that spread, and when the two sets of repeats do not overlap at all::

    slower   ratio > 1 + max(threshold, noise x spread)   and   min(candidate) > max(baseline)
    faster   ratio < 1 / (1 + max(threshold, noise x spread))   and   max(candidate) < min(baseline)

Exit status: 0 without regressions, 1 with at least one, 2 when the files cannot be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from benchmarks.harness import key


class ResultsFileError(ValueError):
    """A results file is missing, unreadable or holds no measurements."""


@dataclass(frozen=True)
class Change:
    """One matched measurement: baseline and candidate medians, ratio, tolerance and verdict."""

    key: tuple
    baseline: float
    candidate: float
    ratio: float
    tolerance: float
    verdict: str                # "slower" | "faster" | "same"

    def label(self) -> str:
        suite, case, system, sweep, knobs = self.key
        knob = ", ".join(f"{k}={v}" for k, v in knobs if sweep and k == sweep)
        return f"{suite}/{case}/{system}" + (f" [{knob}]" if knob else "")


def load(path: str) -> dict[tuple, dict]:
    """The measurement records of a results file, by :func:`benchmarks.harness.key`."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path} is not JSON lines: {exc}") from exc
    out = {key(r): r for r in lines if r.get("kind") == "measurement" and r.get("runs")}
    if not out:
        raise ResultsFileError(f"{path} holds no measurements; is it a `python -m benchmarks` results file?")
    return out


def judge(a: dict, b: dict, *, threshold: float = 0.10, noise: float = 1.0) -> Change:
    """Compare one baseline record ``a`` with one candidate record ``b``."""
    ma, mb = a["median"], b["median"]
    ratio = mb / ma if ma > 0 else float("inf")
    spread = max(a.get("spread") or 0.0, b.get("spread") or 0.0)
    tol = max(threshold, noise * spread)
    if ratio > 1 + tol and min(b["runs"]) > max(a["runs"]):
        verdict = "slower"
    elif ratio < 1 / (1 + tol) and max(b["runs"]) < min(a["runs"]):
        verdict = "faster"
    else:
        verdict = "same"
    return Change(key(a), ma, mb, ratio, tol, verdict)


def compare(baseline: dict[tuple, dict], candidate: dict[tuple, dict], *, threshold: float = 0.10,
            noise: float = 1.0) -> tuple[list[Change], list[tuple], list[tuple]]:
    """``(changes of matched measurements, keys only in baseline, keys only in candidate)``."""
    changes = [judge(baseline[k], candidate[k], threshold=threshold, noise=noise)
               for k in baseline if k in candidate and baseline[k]["median"] and candidate[k]["median"]]
    return changes, sorted(set(baseline) - set(candidate)), sorted(set(candidate) - set(baseline))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("baseline")
    ap.add_argument("candidate")
    ap.add_argument("--threshold", type=float, default=0.10, help="smallest relative change reported (0.10 = 10%%)")
    ap.add_argument("--noise", type=float, default=1.0, help="multiple of the repeats' spread a change must exceed")
    ap.add_argument("--all", action="store_true", help="list unchanged measurements too")
    args = ap.parse_args(argv)
    try:
        a, b = load(args.baseline), load(args.candidate)
    except ResultsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    changes, only_a, only_b = compare(a, b, threshold=args.threshold, noise=args.noise)
    if not changes:
        print("error: the two files share no measurement (different suites or knobs?)", file=sys.stderr)
        return 2
    slower = [c for c in changes if c.verdict == "slower"]
    faster = [c for c in changes if c.verdict == "faster"]
    shown = changes if args.all else slower + faster
    width = max([len(c.label()) for c in shown] + [11])
    if shown:
        print(f"{'measurement':<{width}}  baseline s  candidate s   ratio  tolerance  verdict")
    for c in sorted(shown, key=lambda c: -c.ratio):
        mark = {"slower": "REGRESSION", "faster": "improvement", "same": "within noise"}[c.verdict]
        print(f"{c.label():<{width}}  {c.baseline:10.4f}  {c.candidate:11.4f}  {c.ratio:6.2f}  "
              f"{c.tolerance * 100:8.0f}%  {mark}")
    print(f"{len(changes)} measurements compared: {len(slower)} regression(s), {len(faster)} improvement(s), "
          f"{len(changes) - len(slower) - len(faster)} within noise"
          + (f"; {len(only_a)} only in the baseline" if only_a else "")
          + (f"; {len(only_b)} only in the candidate" if only_b else ""))
    return 1 if slower else 0


__all__ = ["load", "judge", "compare", "main", "Change", "ResultsFileError"]
