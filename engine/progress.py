"""Live progress of a run, per stage: tasks done of total, rows read, rows per second, elapsed time
and an estimate of the time left, wherever the run is watched.

* In a Jupyter notebook: one small HTML table, updated in place (an IPython display handle), so the
  executed notebook keeps the final state.
* On a terminal: one line per stage, redrawn in place, finished with a newline.
* Anywhere else (a log file, cron, Airflow): timestamped lines, the stage's first task, then at most
  one line every ``interval`` seconds, and always the line that completes the stage.

``engine.run(..., progress=None)`` picks one by itself (a notebook, or a terminal on stderr; nothing
when stderr is a file or a pipe); ``progress=False`` turns it off; ``progress=Progress(mode="lines")``
forces a kind; any callable ``fn(stage, done, total)`` still works.

>>> import io
>>> p = Progress(io.StringIO(), mode="lines")
>>> p.update("r0-map", 1, 4, rows=1000)
>>> "r0-map: 1/4 tasks" in p.stream.getvalue()
True
"""

from __future__ import annotations

import html
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MODES = ("auto", "notebook", "tty", "lines")


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (a display there is drawn by the notebook)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def default(progress: Any) -> Any:
    """What ``engine.run(progress=...)`` uses: ``None`` picks a display when someone is watching (a
    notebook, or a terminal on stderr), ``False`` none, anything else as given."""
    if progress is False:
        return None
    if progress is None:
        if in_notebook():
            return Progress(mode="notebook")
        if _isatty(sys.stderr):
            return Progress(mode="tty")
        return None
    return progress


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def _rate(rows: float, seconds: float) -> str:
    if seconds <= 0 or rows <= 0:
        return "-"
    r = rows / seconds
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if r >= size:
            return f"{r / size:.1f}{unit} rows/s"
    return f"{r:.0f} rows/s"


@dataclass
class StageProgress:
    """One stage's figures, as the displays show them."""

    name: str
    total: int
    done: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before the first task finishes)."""
        if self.done >= self.total:
            return 0.0
        if self.done == 0:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def words(self) -> str:
        if self.done == 0 and self.total:
            return f"0/{self.total} tasks, started"
        left = self.eta
        eta = "done" if self.done >= self.total else ("ETA ?" if left is None else f"ETA {_duration(left)}")
        return (f"{self.done}/{self.total} tasks, {self.rows:,} rows, {_rate(self.rows, self.elapsed)}, "
                f"{_duration(self.elapsed)} elapsed, {eta}")


class Progress:
    """Per-stage progress for ``engine.run(progress=Progress())`` (see the module's docstring).

    ``mode``: ``"auto"`` (notebook, else a terminal bar on a TTY, else lines), ``"notebook"``,
    ``"tty"`` or ``"lines"``. ``stream``: where the terminal and line modes write (stderr).
    """

    def __init__(self, stream: Any = None, *, mode: str = "auto", interval: float = 5.0, width: int = 24) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "notebook" if stream is None and in_notebook() else ("tty" if _isatty(self.stream) else "lines")
        self.mode = mode
        self.interval = interval
        self.width = width
        self.stages: dict[str, StageProgress] = {}
        self._last_line: dict[str, float] = {}
        self._handle: Any = None
        self._open = False          # a terminal bar is drawn without its newline
        self._lock = threading.Lock()

    # The executor calls update(); any fn(stage, done, total) is also accepted by engine.run.
    def __call__(self, stage: str, done: int, total: int) -> None:
        self.update(stage, done, total)

    def update(self, stage: str, done: int, total: int, rows: int | None = None) -> None:
        """A stage's state: ``done`` of ``total`` tasks finished, ``rows`` read by its finished tasks."""
        with self._lock:
            st = self.stages.get(stage)
            if st is None:
                st = self.stages[stage] = StageProgress(stage, total)
            st.total, st.done = total, done
            if rows is not None:
                st.rows = rows
            if done >= total and st.finished is None:
                st.finished = time.monotonic()
            try:
                if self.mode == "notebook":
                    self._draw_notebook()
                elif self.mode == "tty":
                    self._draw_tty(st)
                else:
                    self._draw_line(st)
            except (OSError, ValueError):
                pass    # a closed stderr never fails a run

    def _draw_tty(self, st: StageProgress) -> None:
        filled = int(self.width * st.done / max(st.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if st.done >= st.total else ""
        self._open = not end
        self.stream.write(f"\r\x1b[2K{st.name:<12} [{bar}] {st.words()}{end}")
        self.stream.flush()

    def _draw_line(self, st: StageProgress) -> None:
        now = time.monotonic()
        if st.done >= st.total or st.done <= 1 or now - self._last_line.get(st.name, -1e9) >= self.interval:
            if st.done == 0 and st.name in self._last_line:
                return
            self._last_line[st.name] = now
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} {st.name}: {st.words()}", file=self.stream, flush=True)

    def close(self) -> None:
        """End a terminal bar left unfinished (the run failed or was interrupted mid-stage), so what
        follows starts on a line of its own."""
        with self._lock:
            if self._open:
                self._open = False
                try:
                    self.stream.write("\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass

    def html(self) -> str:
        """The notebook table: one row per stage, a bar, the figures."""
        rows = []
        for st in self.stages.values():
            pct = 100.0 * st.done / max(st.total, 1)
            left = st.eta
            eta = "done" if st.done >= st.total else ("?" if left is None else _duration(left))
            rows.append(
                "<tr>"
                f"<td style='text-align:left;font-family:monospace'>{html.escape(st.name)}</td>"
                "<td style='width:160px'><div style='background:#e5e7eb;height:10px;width:150px'>"
                f"<div style='background:{'#16a34a' if st.done >= st.total else '#2563eb'};height:10px;"
                f"width:{pct * 1.5:.0f}px'></div></div></td>"
                f"<td class='tasks'>{st.done}/{st.total} tasks</td><td class='rows'>{st.rows:,} rows</td>"
                f"<td class='rate'>{_rate(st.rows, st.elapsed)}</td>"
                f"<td class='elapsed'>{_duration(st.elapsed)} elapsed</td><td class='eta'>ETA {eta}</td></tr>")
        return ("<table class='mapreduce-progress' style='font-size:12px'><tr><th>stage</th><th></th><th>tasks</th>"
                "<th>rows read</th><th>rate</th><th>elapsed</th><th>left</th></tr>" + "".join(rows) + "</table>")

    def _draw_notebook(self) -> None:
        from IPython.display import display
        shown = {"text/html": self.html()}        # HTML only: the cell's text/plain output stays the result's
        if self._handle is None:
            self._handle = display(shown, raw=True, display_id=True)
        else:
            self._handle.update(shown, raw=True)

    def __str__(self) -> str:
        return "\n".join(f"{st.name}: {st.words()}" for st in self.stages.values())
