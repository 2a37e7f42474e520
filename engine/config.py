"""Engine defaults, kept under ``engine.*`` in :mod:`dask.config`.

Every knob can be set the dask way (YAML in ``~/.config/dask``, ``DASK_ENGINE__PARTITION_SIZE=32MiB``
environment variables, ``with dask.config.set({"engine.partition-size": "32MiB"}):``) and most can be
overridden per run through :func:`engine.run`'s parameters.

>>> import engine.config as cfg
>>> cfg.get("partition-size")
'64MiB'
>>> cfg.parse_size("1.5 KiB")
1536
"""

from __future__ import annotations

from typing import Any

import dask.config
from dask.utils import parse_bytes

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
    },
    "retries": {
        "attempts": 3,          # attempts per task in all (first + retries)
        "backoff-base": 0.2,    # seconds; doubled each attempt, with full jitter
        "backoff-max": 10.0,
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
    },
}

dask.config.update_defaults({"engine": DEFAULTS})


def get(key: str, override: Any = None) -> Any:
    """The value of ``engine.<key>``, or ``override`` when it is not None."""
    if override is not None:
        return override
    return dask.config.get(f"engine.{key}")


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
