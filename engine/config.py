"""Engine defaults, kept under ``engine.*`` in :mod:`dask.config`.

Every knob can be set the dask way (YAML in ``~/.config/dask``, ``DASK_ENGINE__PARTITION_SIZE=32MiB``
environment variables, ``with dask.config.set({"engine.partition-size": "32MiB"}):``) and most can be
overridden per run through :func:`engine.run`'s parameters.

>>> import engine.config as cfg
>>> cfg.get("partition-size")
'64MiB'
>>> cfg.parse_size("1.5 KiB")
1536

Reading a key does not import dask while nothing outside this module can have set one: dask not
imported yet in this process, no ``DASK_ENGINE__*`` variable, no inherited dask configuration and no
dask config file that mentions ``engine`` (a no-op rerun then decides in a fraction of the time).
Otherwise :func:`dask_config` imports ``dask.config``, registers the defaults there and reads it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from .errors import JobDefinitionError

DEFAULTS: dict[str, Any] = {
    # Target size of one reduce partition; drives the number of reducers and coalescing.
    "partition-size": "64MiB",
    # Input files larger than this are split into several map tasks (row groups, byte ranges).
    "split-size": "128MiB",
    # Rows per record batch read from the input.
    "batch-rows": 131072,
    "shuffle": {
        # Map output buffered before it is combined, partitioned and spilled to the shuffle file.
        "spill-size": "64MiB",
        # Hash partitions written by each map task, before coalescing: bounds.
        "min-partitions": 8,
        "max-partitions": 512,
        # Rows per batch in a sorted run (sort rounds); the granularity of range reads.
        "sort-batch-rows": 32768,
        # Key samples each sort map task returns to the driver.
        "sample-size": 512,
        # Where map outputs go; None means a fresh local temporary directory per run.
        "dir": None,
        # Apply the round's combine (or aggregations' partials) on the map side before shuffling.
        "map-combine": True,
        # A map task stops combining once its first combine-min-rows input rows show that the combine
        # removes less than combine-min-reduction of the rows it sees (nearly unique keys); it ships the
        # rest uncombined (aggregations: one state row per input row), and the reducers merge as ever.
        "adaptive-combine": True,
        "combine-min-rows": 1048576,
        "combine-min-reduction": 0.5,
        # Aggregations with no map function before them read Parquet string keys that have small
        # dictionaries as dictionaries, and group and hash their codes; the shuffle files hold values.
        "encoded-keys": True,
    },
    "retries": {
        "attempts": 3,          # attempts per task in all (first + retries)
        "backoff-base": 0.2,    # seconds; doubled each attempt, with full jitter
        "backoff-max": 10.0,
        "budget": None,         # retries one run may spend in all (None: no run-wide limit)
        "retry-on": None,       # per-class attempts, "ConnectionError=5,ValueError=1" (None: every class alike)
    },
    "rejects": {
        "on-error": "fail",     # "reject": rows a map or reduce call fails on go to OUT/_rejected/
        "on-bad-file": "fail",  # "reject": input files no reader can open are set aside whole
        "max": "1%",            # rows a rejecting run may set aside: a count, or a fraction of its input rows
    },
    "memory": {
        "task-fraction": 0.25,  # a task's rows in memory: this share of its worker's memory limit per thread
        "task-bytes": None,     # or this many bytes (also bounds runs in the driver, which have no limit)
    },
    "limits": {
        "max-tasks": None,      # attempts of one run running at once (None: as many as the cluster takes)
        "max-seconds": None,    # wall-clock budget of a run
        "max-cpu-seconds": None,  # task CPU-seconds budget of a run
    },
    "speculation": {
        "enabled": True,
        "quantile": 0.75,       # fraction of a stage's tasks finished before speculating
        "multiplier": 1.5,      # a task is slow after multiplier x median runtime
        "min-runtime": 0.5,     # seconds; never speculate tasks younger than this
        "max-concurrent": 2,    # speculative attempts running at once
        "interval": 0.1,        # seconds between supervisor checks
        "early-multiplier": 2.0,  # before the quantile is reached: threshold x this (few tasks to judge by)
        "zombie-grace": 1.0,    # seconds a cancelled attempt may keep running before its worker is restarted
    },
    "skew": {
        "enabled": True,
        "split-over": 2.0,      # a hash partition over this x the reduce target is split ...
        "factor": 5.0,          # ... and so is one over the target and > factor x the median partition
        "top-keys": 8,          # heaviest keys each map task reports
    },
    "join": {
        # "auto": broadcast a side whose map output is at most broadcast-max (when the join type allows),
        # else a shuffle hash join; "shuffle" or "broadcast" force one (broadcast only where correct).
        "strategy": "auto",
        "broadcast-max": "32MiB",
        # Rows of the big side joined per call in a broadcast join (each call builds a hash table).
        "broadcast-chunk-rows": 1048576,
    },
    "checksums": {
        "page-checksums": True,  # write Parquet page CRCs
    },
    "report": {
        # Write data values (the hot keys of skew decisions) into the manifest, the history, the logs and
        # printed summaries; off: they carry a short hash of each key instead (engine.redact.key_digest).
        "key-values": False,
    },
    "cluster": {
        "workers": None,        # None: one worker process per core
        "threads": 1,
        "memory-limit": "auto",
        # Seconds the driver waits for a scheduler it cannot reach (connecting to it, or reconnecting
        # after losing it mid-run) before the run fails with ClusterError; finished tasks stay journaled.
        "scheduler-timeout": 10.0,
        # How the embedded cluster starts its worker processes. "auto"/"subprocess": as fresh interpreters
        # (`dask spec`) that never import the caller's script, in a session of their own, logging to
        # engine.log.dask-file: a run at a script's top level needs no main guard and Ctrl-C reaches the
        # driver alone. "spawn": dask's LocalCluster (multiprocessing spawn; scripts need a main guard).
        "launch": "auto",
        # A task that no worker of the embedded cluster can run (its workers all gone) fails after this
        # long instead of waiting forever; its retries then fail the run with the reason.
        "no-workers-timeout": "60s",
    },
    "log": {
        # dask's own log lines (worker banners, cancelled-task warnings, lost workers) go to this file
        # rather than the terminal; None: <tmp>/mapreduce-engine/dask-<pid>.log. See engine.quiet.
        "dask-file": None,
        "dask-terminal": False,   # true (mapreduce --debug): dask's lines stay on the terminal too
    },
    "tls": {
        # The driver's TLS files for a tls:// scheduler (PEM); a key unset here falls back to dask's
        # distributed.comm.tls.ca-file / .client.cert / .client.key. key: None when the cert file holds it.
        "ca-file": None,
        "cert": None,
        "key": None,
        # True: refuse plain tcp:// scheduler addresses; None: dask's distributed.comm.require-encryption.
        "require-encryption": None,
    },
    "local": {
        # A run given no cluster (cluster=None, no DASK_SCHEDULER_ADDRESS) whose input is at most this
        # many bytes runs in the driver process on a thread pool, without starting a cluster; 0 always
        # starts the embedded cluster. Measured on 2 cores (benchmarks/startup.py).
        "max-bytes": "64MiB",
    },
    "history": {
        # Where run records go: a SQLite file path, a postgresql:// URL, or "off"; None: the default
        # file (ENGINE_HISTORY overrides this).
        "url": None,
        # Seconds between rewrites of a running run's record (progress and newest checkpoint).
        "heartbeat": 10.0,
    },
    "metrics": {
        "file": None,           # node-exporter textfile (a .prom file, or a directory) written after each run
        "push-gateway": None,   # Prometheus Pushgateway URL pushed to after each run
    },
    "alerts": {
        "on-failure": None,     # a command or an http(s):// URL called with a JSON event (engine.alerts)
        "on-success": None,
        "on-slo-breach": None,
    },
    "cost": {
        # Prices of M7 (cost per run): per CPU-second of the worker processes, per GB-second of their
        # memory limits (0: report the seconds only).
        "cpu-second": 0.0,
        "gb-second": 0.0,
    },
    "output": {
        # A Hive-partitioned output's task writes a new file in a partition directory once its current
        # one there reaches this size (a partition holds at most one file per reduce task, plus one
        # per this many bytes of its data).
        "max-file-bytes": "512MiB",
    },
}

_LOCK = threading.RLock()
_DASK: Any = None                            # dask.config, once the defaults are registered there
_ON_DASK: list[Callable[[], None]] = []      # run once, right after that
_FILES: bool | None = None                   # does a dask config file mention engine.* keys?


def dask_config():
    """``dask.config`` with the ``engine.*`` defaults registered (imports dask on the first call)."""
    global _DASK
    if _DASK is not None:
        return _DASK
    with _LOCK:
        if _DASK is None:
            import dask.config as dc
            dc.update_defaults({"engine": DEFAULTS})
            _DASK = dc
            hooks = list(_ON_DASK)
            _ON_DASK.clear()
            for hook in hooks:
                hook()
    return _DASK


def on_dask(hook: Callable[[], None]) -> None:
    """Run ``hook`` once dask's configuration is in use through :func:`dask_config` (now, if it is):
    settings for dask and distributed that only a run on a cluster needs."""
    with _LOCK:
        if _DASK is None:
            _ON_DASK.append(hook)
            return
    hook()


def _outside_sources() -> bool:
    """Whether a ``DASK_ENGINE__*`` variable, an inherited dask configuration or a dask config file
    (the places dask reads at import) may set an ``engine.*`` key."""
    global _FILES
    env = os.environ
    if "DASK_INTERNAL_INHERIT_CONFIG" in env:
        return True
    if any(k.startswith("DASK_") and k[5:].lower().startswith("engine") for k in env):
        return True
    if _FILES is None:
        _FILES = _config_files_mention_engine()
    return _FILES


def _config_files_mention_engine() -> bool:
    env = os.environ
    import site
    paths = [env.get("DASK_ROOT_CONFIG", "/etc/dask"), os.path.join(sys.prefix, "etc", "dask"),
             *[os.path.join(prefix, "etc", "dask") for prefix in getattr(site, "PREFIXES", [])],
             os.path.join(os.path.expanduser("~"), ".config", "dask")]
    if "DASK_CONFIG" in env:
        paths.append(env["DASK_CONFIG"])
    for path in dict.fromkeys(paths):
        if os.path.isdir(path):
            try:
                files = [os.path.join(path, n) for n in os.listdir(path)
                         if os.path.splitext(n)[1].lower() in (".json", ".yaml", ".yml")]
            except OSError:
                continue
        elif os.path.isfile(path):
            files = [path]
        else:
            continue
        for name in files:
            try:
                with open(name, encoding="utf-8", errors="replace") as f:
                    if "engine" in f.read():
                        return True
            except OSError:
                continue
    return False


def _default(key: str) -> Any:
    node: Any = DEFAULTS
    for part in key.split("."):
        if not isinstance(node, dict):
            raise KeyError(key)
        if part in node:
            node = node[part]
        elif part.replace("_", "-") in node:
            node = node[part.replace("_", "-")]
        else:
            raise KeyError(f"engine.{key}")
    return node


def get(key: str, override: Any = None) -> Any:
    """The value of ``engine.<key>``, or ``override`` when it is not None."""
    if override is not None:
        return override
    if _DASK is None and "dask.config" not in sys.modules and not _outside_sources():
        return _default(key)
    value = dask_config().get(f"engine.{key}", default=_MISSING)
    # Missing only when a `dask.config.set` block that began before the defaults were registered here
    # removed them on exit: the default is the answer.
    return _default(key) if value is _MISSING else value


_MISSING = object()


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15, "ki": 2**10, "kib": 2**10, "mi": 2**20,
          "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40, "pi": 2**50, "pib": 2**50}


if "dask.config" in sys.modules:      # dask is loaded already: register the defaults there now
    dask_config()


def parse_bytes(text: int | float | str) -> int:
    """Bytes from ``"64MiB"``, ``"1.5 kB"``, ``"1e6"`` or ``"MB"``, as :func:`dask.utils.parse_bytes`
    reads them, without importing dask; ValueError for anything else."""
    if isinstance(text, (int, float)):
        return int(text)
    s = text.replace(" ", "")
    if not any(c.isdigit() for c in s):
        s = "1" + s
    cut = len(s)
    while cut > 0 and s[cut - 1].isalpha():
        cut -= 1
    number, unit = s[:cut], s[cut:].lower()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"Could not interpret {number!r} as a number") from None
    if unit not in _UNITS:
        raise ValueError(f"Could not interpret {unit!r} as a byte unit")
    return int(value * _UNITS[unit])


def parse_size(value: int | float | str | None, *, name: str = "size") -> int:
    """Bytes from an int or a string like ``"64MiB"``; a clear error for anything else."""
    if isinstance(value, bool) or value is None:
        raise JobDefinitionError(f"{name} must be a number of bytes or a string like '64MiB', got {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        try:
            size = int(parse_bytes(value))
        except (ValueError, TypeError) as exc:
            raise JobDefinitionError(
                f"{name}={value!r} is not a size; write a number of bytes or a string like '64MiB'") from exc
    if size <= 0:
        raise JobDefinitionError(f"{name} must be positive, got {value!r}")
    return size
