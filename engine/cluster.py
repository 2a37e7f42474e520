"""Which cluster a run uses: the driver's own threads, an embedded LocalCluster (one per process), an
address, or a Client.

``cluster=None`` (and no ``DASK_SCHEDULER_ADDRESS``) with an input of at most ``engine.local.max-bytes``
runs in the driver process on a thread pool (:mod:`engine.local`): no cluster starts and neither dask
nor distributed is imported. Above that, ``cluster=None`` starts one ``LocalCluster`` on 127.0.0.1 the
first time it is needed (one worker process per core, one thread each) and reuses it for later runs
in the same process: a notebook or script pays the start-up once. ``DASK_SCHEDULER_ADDRESS`` in the
environment is honoured like an address. ``memory://`` data lives in one process, so runs that touch
it use the driver's threads or an in-process cluster.

>>> client, info = get_client(None)                      # doctest: +SKIP
>>> info.dashboard                                        # doctest: +SKIP
'http://127.0.0.1:8787/status'
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import sys
import socket
import threading
from dataclasses import dataclass
from typing import Any

from . import config
from .errors import ClusterError

log = logging.getLogger("engine")

_LOCK = threading.Lock()
_EMBEDDED: dict[bool, Any] = {}   # processes? -> (cluster, client)


@dataclass(frozen=True)
class ClusterInfo:
    """Facts the runner needs about the cluster it got."""

    embedded: bool
    same_host: bool          # every worker shares this machine's disk
    in_process: bool         # workers share this process's memory (memory:// works)
    workers: int
    threads: int
    dashboard: str | None
    memory_limit: int = 0    # the smallest worker memory limit in bytes (0: unlimited or unknown)
    local: bool = False      # the driver's own threads (engine.local), no cluster

    @property
    def where(self) -> str:
        """Where the run's tasks run, in words (for the report)."""
        if self.local:
            return f"in the driver process ({self.threads} thread(s), no cluster)"
        kind = "embedded local cluster" if self.embedded else "cluster"
        shape = "in-process" if self.in_process else f"{self.workers} worker process(es)"
        return f"on the {kind} ({shape}, {self.threads} thread(s))"


def _worker_env() -> dict[str, str]:
    # Tables that travel between workers arrive with misaligned buffers; let Acero realign them.
    return {"ACERO_ALIGNMENT_HANDLING": "reallocate"}


def _embedded(processes: bool):
    config.dask_config()          # dask's settings for the run (and the CLI's) before distributed is imported
    with _LOCK:
        entry = _EMBEDDED.get(processes)
        if entry is not None and entry[1].status == "running":
            return entry
        from distributed import Client, LocalCluster
        workers = config.get("cluster.workers") or (os.cpu_count() or 1)
        threads = int(config.get("cluster.threads") or 1)
        if not processes:
            threads, workers = workers * threads, 1
        try:
            import bokeh  # noqa: F401
            dashboard = "127.0.0.1:0"
        except ImportError:
            dashboard = None
        env = _worker_env()
        os.environ.update(env)
        with config.dask_config().set({"distributed.scheduler.worker-saturation": 1.0,
                                       "distributed.nanny.pre-spawn-environ": env,
                                       "distributed.worker.daemon": False,
                                       "distributed.admin.tick.limit": "30s"}):
            try:
                where = {"host": "127.0.0.1"} if processes else {}   # in-process clusters talk inproc://
                cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                                       dashboard_address=dashboard, **where,
                                       scheduler_kwargs={"dashboard_address": dashboard} if dashboard else {},
                                       memory_limit=config.get("cluster.memory-limit"))
            except Exception as exc:  # noqa: BLE001
                raise ClusterError(f"could not start the embedded local cluster: {str(exc).rstrip('.')}{_script_hint()}") from exc
            client = Client(cluster, set_as_default=False)
        link = cluster.dashboard_link if dashboard else None
        log.info("started embedded cluster: %d worker(s) x %d thread(s)%s", workers, threads,
                 f", dashboard {link}" if link else "")
        _EMBEDDED[processes] = (cluster, client)
        return cluster, client


def _script_hint() -> str:
    """Advice when the run was started by a plain script: worker processes are spawned, and a spawned
    process imports the script again, so a run at module level starts again in every worker."""
    import multiprocessing
    main = sys.modules.get("__main__")
    if multiprocessing.parent_process() is not None or getattr(main, "__file__", None):
        return ("; if a script starts this run, put the run under `if __name__ == \"__main__\":` (each worker "
                "process imports the script again; inputs up to engine.local.max-bytes run in this process and "
                "need no guard), or pass cluster= a scheduler address")
    return ""


def shutdown() -> None:
    """Close the embedded clusters and the driver's thread pool (also runs at interpreter exit)."""
    with _LOCK:
        for local in list(_LOCAL.values()):
            local.close()
        _LOCAL.clear()
        for cluster, client in list(_EMBEDDED.values()):
            try:
                client.close()
                cluster.close()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        _EMBEDDED.clear()


atexit.register(shutdown)


def _local_addresses() -> set[str]:
    names = {"127.0.0.1", "localhost", "::1", socket.gethostname()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


def _host(address: str) -> str:
    hostport = address.split("://", 1)[-1]
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    return hostport.rsplit(":", 1)[0]


def _is_local_host(host: str) -> bool:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host in _local_addresses()


_LOCAL: dict[int, Any] = {}      # threads -> engine.local.LocalClient


def local_max_bytes() -> int:
    """``engine.local.max-bytes`` in bytes (-1: never run in the driver)."""
    value = config.get("local.max-bytes")
    if value in (None, False, 0, "0", ""):
        return -1
    try:
        limit = int(config.parse_bytes(value))
        return limit if limit > 0 else -1
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"engine.local.max-bytes={value!r} is not a size; write a number of bytes, a string "
                           "like '64MiB', or 0 to always start a cluster") from exc


def _local_threads() -> int:
    workers = config.get("cluster.workers") or (os.cpu_count() or 1)
    return int(workers) * int(config.get("cluster.threads") or 1)


def _local():
    from .local import LocalClient
    threads = _local_threads()
    with _LOCK:
        client = _LOCAL.get(threads)
        if client is None or client.status != "running":
            client = _LOCAL[threads] = LocalClient(threads)
        return client


def get_client(cluster: Any = None, *, in_process: bool = False, input_bytes: int | None = None):
    """``(client, ClusterInfo)`` for ``cluster`` (None, an address, or a ``distributed.Client``).

    With ``cluster=None``, no ``DASK_SCHEDULER_ADDRESS`` and ``input_bytes`` at most
    ``engine.local.max-bytes``, the client is the driver's thread pool (:class:`engine.local.LocalClient`).
    """
    if cluster is None:
        cluster = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if cluster is None and input_bytes is not None and input_bytes <= local_max_bytes():
        client = _local()
        return client, ClusterInfo(True, True, True, 1, client.threads, None, 0, local=True)
    config.dask_config()
    from distributed import Client
    if cluster is None:
        lc, client = _embedded(processes=not in_process)
        info = client.scheduler_info(n_workers=-1)
        workers = info.get("workers", {})
        return client, ClusterInfo(True, True, in_process, len(workers),
                                   sum(w.get("nthreads", 1) for w in workers.values()),
                                   lc.dashboard_link if getattr(lc, "dashboard_link", None) else None,
                                   _min_memory(workers))
    if isinstance(cluster, Client):
        client = cluster
    elif isinstance(cluster, str):
        try:
            client = _connect(cluster)
        except Exception as exc:  # noqa: BLE001
            raise ClusterError(f"cannot reach the scheduler at {cluster!r}: {exc}. Is `dask scheduler` running there?") from exc
    else:
        raise ClusterError(f"cluster must be None, a scheduler address like 'tcp://host:8786', or a "
                           f"distributed.Client; got {type(cluster).__name__}")
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    if not workers:
        try:
            client.wait_for_workers(1, timeout=30)
        except Exception as exc:  # noqa: BLE001
            raise ClusterError(f"the cluster at {client.scheduler.address} has no workers") from exc
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    same_host = all(addr.startswith("inproc://") or _is_local_host(_host(addr)) for addr in workers)
    in_proc = getattr(getattr(client, "cluster", None), "processes", True) is False
    return client, ClusterInfo(False, same_host, in_proc, len(workers),
                               sum(w.get("nthreads", 1) for w in workers.values()),
                               getattr(client, "dashboard_link", None), _min_memory(workers))


def _min_memory(workers: dict) -> int:
    limits = [int(w.get("memory_limit") or 0) // max(1, int(w.get("nthreads", 1))) for w in workers.values()]
    limits = [m for m in limits if m > 0]
    return min(limits) if limits else 0


_CLIENTS: dict[str, Any] = {}


def _connect(address: str):
    from distributed import Client
    with _LOCK:
        client = _CLIENTS.get(address)
        if client is None or client.status != "running":
            client = Client(address, set_as_default=False, timeout="10s")
            _CLIENTS[address] = client
        return client


__all__ = ["get_client", "ClusterInfo", "shutdown"]
