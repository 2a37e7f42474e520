"""Where dask's own log lines go: a log file, not the user's terminal.

distributed logs to stderr by itself: worker start-up banners, "Async instruction ... ended with
CancelledError" when a run is interrupted, "Removing worker ... lose already computed task(s)" when
a worker goes. The engine reports what matters of those in its own words (a retry, a lost worker, a
failed run), so on an embedded cluster the lines go to :func:`log_file` instead
(``engine.log.dask-file``; default ``<tmp>/mapreduce-engine/dask-<pid>.log``), and the terminal keeps
the engine's own lines. ``engine.log.dask-terminal: true`` (``mapreduce --debug``) keeps dask's lines
on the terminal too. A logging setup of the user's own (``distributed.logging`` in dask's config) is
left as it is.

>>> from engine import quiet
>>> quiet.log_file().endswith(".log")
True
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading

from . import config

_LOCK = threading.Lock()
_ROUTED: dict[str, logging.Handler] = {}
_DASK_LOGGERS = ("distributed", "tornado", "bokeh")


def log_file() -> str:
    """The file dask's log lines of this process and of its embedded workers go to."""
    path = config.get("log.dask-file")
    if path:
        return os.path.abspath(os.path.expanduser(str(path)))
    return os.path.join(tempfile.gettempdir(), "mapreduce-engine", f"dask-{os.getpid()}.log")


def to_terminal() -> bool:
    """Whether dask's lines stay on the terminal (``engine.log.dask-terminal``)."""
    return bool(config.get("log.dask-terminal"))


def _users_own_setup() -> bool:
    dc = config.dask_config()
    current = dc.get("distributed.logging", default=None)
    return bool(dc.get("distributed.logging-file-config", default=None)) or (
        isinstance(current, dict) and "version" in current)


def route() -> str | None:
    """Send dask's loggers in this process to :func:`log_file` (their terminal handlers keep only
    CRITICAL); the file's path, or None when dask's lines stay where they are."""
    if to_terminal() or _users_own_setup():
        return None
    import distributed  # noqa: F401 - its logging is set up on import; adjust it after
    path = log_file()
    with _LOCK:
        if path in _ROUTED:
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        for name in _DASK_LOGGERS:
            logger = logging.getLogger(name)
            for h in logger.handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                        and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__, sys.stdout):
                    h.setLevel(logging.CRITICAL)
            logger.addHandler(handler)
        _ROUTED[path] = handler
    return path


def worker_log_level() -> dict:
    """``distributed.logging`` for worker processes that write to the terminal (dask's LocalCluster
    spawns them with the driver's stderr): errors only, unless dask's lines stay on the terminal or
    the user set levels of their own."""
    if to_terminal() or _users_own_setup():
        return {}
    current = config.dask_config().get("distributed.logging", default=None) or {}
    return {"distributed.logging": {"distributed": "error", **(current if isinstance(current, dict) else {})}}
