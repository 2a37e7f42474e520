"""Timing cases: repeats, medians, spreads, pairwise ratios, and the JSON-lines records they become.

A *case* is one workload (say groupby q3 on 1e6 rows) run by one or more *systems* (the engine and
its peers). :func:`measure` runs every system ``repeat`` times, the systems taking turns within a
repeat (the order rotates from one repeat to the next), so slow drift of the machine's load affects
them alike. Every system is a callable returning an :class:`Outcome`: the seconds it measured itself
(only the work, never setup or cleanup) and optionally its answer for checking.

Figures are medians; the *spread* of a figure is ``(max - min) / median`` of its repeats, the noise
``python -m benchmarks compare`` uses. The ratio of the engine to a peer is taken within every repeat
(the two runs seconds apart) and the median of those ratios reported.

An answer is a pyarrow Table, or, when it is too big to hold (``benchmarks.answers.ParquetAnswer``),
the Parquet files the system wrote; :class:`PeakRSS` measures how much memory checking it took.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ENGINE = "engine"


@dataclass
class Outcome:
    """What one timed run of one system returns."""

    seconds: float
    answer: Any = None              # a pyarrow Table, a ParquetAnswer (or anything the case's check understands)
    rows: int | None = None         # rows of the answer
    extra: dict = field(default_factory=dict)   # per-run facts worth keeping (stage times, decisions)


System = Callable[[bool], Outcome]
"""A system under test: ``fn(keep) -> Outcome``; ``keep`` asks it to return its answer too."""


@dataclass
class Measured:
    """Every run of every system of one case."""

    runs: dict[str, list[float]]
    answers: dict[str, Any]
    rows: dict[str, int | None]
    extras: dict[str, list[dict]]
    errors: dict[str, str]


def measure(systems: dict[str, System], repeat: int, *, before: Callable[[], Any] | None = None,
            on_run: Callable[[str, int, float], None] | None = None, keep_answers: bool = True) -> Measured:
    """Run every system ``repeat`` times, taking turns; a system that raises is recorded and skipped.

    ``before`` runs (untimed) before every run, e.g. waiting for an idle cluster. ``on_run(system,
    repeat, seconds)`` reports progress. Answers are kept from the first repeat only.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    names = list(systems)
    runs: dict[str, list[float]] = {n: [] for n in names}
    answers: dict[str, Any] = {}
    rows: dict[str, int | None] = {}
    extras: dict[str, list[dict]] = {n: [] for n in names}
    errors: dict[str, str] = {}
    for rep in range(repeat):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            gc.collect()
            if before is not None:
                before()
            try:
                out = systems[name](keep_answers and rep == 0)
            except Exception as exc:  # noqa: BLE001 - a failing system is a result, not a crash
                errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                if on_run is not None:
                    on_run(name, rep, float("nan"))
                continue
            runs[name].append(out.seconds)
            if out.extra:
                extras[name].append(out.extra)
            if rep == 0:
                answers[name] = out.answer
                rows[name] = out.rows
            if on_run is not None:
                on_run(name, rep, out.seconds)
    return Measured(runs, answers, rows, extras, errors)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, fn())`` by the monotonic performance counter."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


class PeakRSS:
    """The process's resident memory while a block runs, sampled every ``interval`` seconds:
    ``start`` and ``peak`` in bytes (``growth`` = peak - start), and the peak of the bytes Arrow's
    memory pool had allocated (``arrow_peak``: live buffers, without what the allocator keeps cached).

    >>> with PeakRSS() as mem:           # doctest: +SKIP
    ...     check(...)
    >>> mem.growth                        # doctest: +SKIP
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = self.arrow_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        import psutil
        return int(psutil.Process(os.getpid()).memory_info().rss)

    def _sample(self) -> None:
        import pyarrow as pa
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())
            self.arrow_peak = max(self.arrow_peak, pa.total_allocated_bytes())

    def __enter__(self) -> PeakRSS:
        import pyarrow as pa
        self.start = self.peak = self.rss()
        self.arrow_peak = pa.total_allocated_bytes()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: Sequence[float]) -> float | None:
    """``(max - min) / median`` of the repeats: 0 for a single run."""
    if not xs:
        return None
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m > 0 else 0.0


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The median over repeats of ``a[i] / b[i]`` (runs of the same repeat, seconds apart)."""
    ratios = [x / y for x, y in zip(a, b) if y > 0]
    return statistics.median(ratios) if ratios else None


def records(suite: str, case: str, measured: Measured, *, params: dict, sweep: str | None = None,
            input_rows: int | None = None, input_bytes: int | None = None, check: dict | None = None,
            notes: Sequence[str] = ()) -> list[dict]:
    """One ``measurement`` record per system of a measured case (the engine's carries the ratios)."""
    out = []
    for system, runs in measured.runs.items():
        med = median(runs)
        rec: dict[str, Any] = {
            "kind": "measurement", "suite": suite, "case": case, "system": system, "sweep": sweep,
            "params": params, "runs": [round(r, 5) for r in runs],
            "median": round(med, 5) if med is not None else None,
            "min": round(min(runs), 5) if runs else None, "max": round(max(runs), 5) if runs else None,
            "spread": round(spread(runs), 4) if runs else None,
            "input_rows": input_rows, "input_bytes": input_bytes,
            "rows_per_s": round(input_rows / med, 1) if input_rows and med else None,
            "mb_per_s": round(input_bytes / med / 1e6, 3) if input_bytes and med else None,
            "answer_rows": measured.rows.get(system), "error": measured.errors.get(system),
            "extra": measured.extras.get(system, [])[:1] if system == ENGINE else [],
            "notes": list(notes),
        }
        if system == ENGINE:
            rec["ratios"] = {peer: _round(paired_ratio(runs, peer_runs))
                             for peer, peer_runs in measured.runs.items() if peer != ENGINE}
            rec["check"] = check or {}
        out.append(rec)
    return out


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def key(rec: dict) -> tuple:
    """What identifies a measurement across runs of the harness: suite, case, system and knobs."""
    params = rec.get("params") or {}
    knobs = tuple(sorted((k, str(v)) for k, v in params.items()))
    return rec["suite"], rec["case"], rec["system"], rec.get("sweep"), knobs


__all__ = ["Outcome", "System", "Measured", "measure", "timed", "median", "spread", "paired_ratio", "records",
           "key", "ENGINE", "PeakRSS"]
