"""Progress of a benchmark run on stderr: a live status line on a terminal, plain lines otherwise.

>>> p = Progress(total_suites=6)                  # doctest: +SKIP
>>> p.suite("groupby")                            # doctest: +SKIP
>>> p.step("q3 engine repeat 2/3", 0.41)          # doctest: +SKIP
>>> p.done("q3: engine 0.41s, duckdb 0.05s")      # doctest: +SKIP

On a terminal every run rewrites one status line (suite i/n, what just ran, elapsed time) and each
finished case leaves a line behind; in a log (CI, a pipe) only the finished cases and suites print,
one line each, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Reports suites, runs and finished cases; ``quiet`` prints nothing."""

    def __init__(self, total_suites: int, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total_suites
        self.index = 0
        self.name = ""
        self.quiet = quiet
        self.started = time.time()
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self._status_shown = False

    def _elapsed(self) -> str:
        s = int(time.time() - self.started)
        return f"{s // 60}:{s % 60:02d}"

    def _clear(self) -> None:
        if self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False

    def line(self, text: str) -> None:
        """A line that stays."""
        if self.quiet:
            return
        self._clear()
        self.stream.write(f"[{self._elapsed()}] {text}\n")
        self.stream.flush()

    def suite(self, name: str) -> None:
        self.index += 1
        self.name = name
        self.line(f"suite {self.index}/{self.total}: {name}")

    def step(self, what: str, seconds: float | None = None) -> None:
        """One run finished (or started, without ``seconds``): only the live status line shows it."""
        if not self.live:
            return
        took = "" if seconds is None else (" failed" if seconds != seconds else f" {seconds:.2f}s")
        text = f"[{self._elapsed()}] {self.name} ({self.index}/{self.total}): {what}{took}"
        self.stream.write("\r\033[K" + text[:200])
        self.stream.flush()
        self._status_shown = True

    def done(self, text: str) -> None:
        """A case finished."""
        self.line(f"  {text}")

    def close(self) -> None:
        self._clear()
        self.stream.flush()


__all__ = ["Progress"]
