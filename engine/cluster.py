"""Which cluster a run uses: the driver's own threads, an embedded LocalCluster (one per process), an
address, or a Client.

``cluster=None`` (and no ``DASK_SCHEDULER_ADDRESS``) with an input of at most ``engine.local.max-bytes``
runs in the driver process on a thread pool (:mod:`engine.local`): no cluster starts and neither dask
nor distributed is imported. Above that, ``cluster=None`` starts one embedded cluster on 127.0.0.1
the first time it is needed (the scheduler in this process, one worker process per core with one
thread each) and reuses it for later runs in the same process: a notebook or script pays the
start-up once. Its workers are fresh interpreters (``dask spec``) that never import the caller's
script, so a script needs no ``if __name__ == "__main__":`` guard; they run in a session of their
own (Ctrl-C on a terminal reaches the driver alone, which ends the run and then them), log to
``engine.log.dask-file`` and end when the driver dies. ``engine.cluster.launch: spawn`` uses dask's
``LocalCluster`` instead. ``DASK_SCHEDULER_ADDRESS`` in the
environment is honoured like an address. ``memory://`` data lives in one process, so runs that touch
it use the driver's threads or an in-process cluster.

The embedded cluster speaks plain TCP on 127.0.0.1 only (scheduler, workers, nannies and their HTTP
servers, on random ports): no other machine reaches it, every local user can. A ``tls://`` address is
reached with the client certificate of :func:`security` (``engine.tls.*``, else dask's
``distributed.comm.tls.*``); a connection that fails is diagnosed with one TLS handshake of its own, so
the error says whether the scheduler wants TLS, refused the certificate or is not trusted.

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
            if _has_workers(entry[1]):
                return entry
            log.warning("the embedded cluster has lost all its workers; starting a new one")
            _close(entry)
            _EMBEDDED.pop(processes, None)
        from distributed import Client, LocalCluster, SpecCluster
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
        from . import quiet
        logs = quiet.route()
        with config.dask_config().set(quiet.worker_log_level()), config.dask_config().set({"distributed.scheduler.worker-saturation": 1.0,
                                       "distributed.nanny.pre-spawn-environ": env,
                                       "distributed.worker.daemon": False,
                                       "distributed.admin.tick.limit": "30s",
                                       # tasks no worker can run (every worker gone) fail instead of waiting
                                       "distributed.scheduler.no-workers-timeout":
                                           config.dask_config().get("distributed.scheduler.no-workers-timeout",
                                                                    None) or config.get("cluster.no-workers-timeout")}):
            try:
                if processes and _fresh_interpreters():
                    cluster = _subprocess_cluster(workers, threads, dashboard, logs)
                else:
                    where = {"host": "127.0.0.1"} if processes else {}   # in-process clusters talk inproc://
                    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                                           dashboard_address=dashboard, **where,
                                           scheduler_kwargs={"dashboard_address": dashboard} if dashboard else {},
                                           memory_limit=config.get("cluster.memory-limit"))
            except Exception as exc:  # noqa: BLE001
                raise ClusterError(f"could not start the embedded local cluster: {str(exc).rstrip('.')}{_script_hint()}") from exc
            client = Client(cluster, set_as_default=False)
            if isinstance(cluster, SpecCluster) and not isinstance(cluster, LocalCluster):
                try:   # fresh interpreters register a moment after they start
                    client.wait_for_workers(workers, timeout=120)
                except Exception as exc:  # noqa: BLE001
                    client.close()
                    cluster.close()
                    raise ClusterError(f"the embedded cluster's {workers} worker process(es) did not register within "
                                       f"120 s: {exc}") from exc
        link = cluster.dashboard_link if dashboard else None
        log.info("started embedded cluster: %d worker(s) x %d thread(s)%s", workers, threads,
                 f", dashboard {link}" if link else "")
        _EMBEDDED[processes] = (cluster, client)
        return cluster, client


def _has_workers(client) -> bool:
    """Whether the embedded cluster's scheduler still has a worker (a worker process that dies is
    restarted by its nanny; a nanny that dies is not)."""
    try:
        return bool(client.scheduler_info(n_workers=-1).get("workers"))
    except Exception:  # noqa: BLE001 - a scheduler that does not answer has none to offer
        return False


def _close(entry) -> None:
    cluster, client = entry
    for thing in (client, cluster):
        try:
            thing.close()
        except Exception:  # noqa: BLE001 - best effort: it is being replaced
            pass


def _fresh_interpreters() -> bool:
    """Whether the embedded cluster starts its workers as fresh interpreters (``dask spec``) rather
    than with multiprocessing's spawn (dask's LocalCluster). ``engine.cluster.launch``: ``"subprocess"``
    (the default, ``"auto"``) or ``"spawn"``.

    Fresh interpreters never import the caller's main module, where a spawned process runs a script
    (``python job.py``, ``python -m module``) again, guard or no guard: so a run at a script's top level
    needs no ``if __name__ == "__main__":``. They also run in a session of their own, so Ctrl-C on a
    terminal reaches the driver alone, and their log lines go to the log file (:mod:`engine.quiet`)."""
    launch = str(config.get("cluster.launch") or "auto").lower()
    if launch not in ("auto", "spawn", "subprocess"):
        raise ClusterError(f"engine.cluster.launch={launch!r}: write 'subprocess' (the default) or 'spawn'")
    return launch != "spawn"


def _subprocess_cluster(workers: int, threads: int, dashboard: str | None, logs: str | None):
    """The embedded cluster for a script: the scheduler in this process, each worker a ``dask spec``
    interpreter of its own (a nanny and its worker) that never imports the caller's script, so a run
    at a script's top level needs no ``if __name__ == "__main__":``. The workers get this process's
    dask configuration at start; a worker whose driver dies goes with it (Linux: parent-death signal)."""
    from distributed import Scheduler, SpecCluster

    limit = config.get("cluster.memory-limit")
    opts = {"nthreads": threads, "memory_limit": limit if limit is not None else "auto", "host": "127.0.0.1", "dashboard": False,
            "death_timeout": 30}
    spec = {i: {"cls": _ScriptSafeWorker, "options": {"worker_kwargs": dict(opts), "logs": logs}}
            for i in range(workers)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0,
                                               "dashboard_address": dashboard or ":0",
                                               "dashboard": bool(dashboard)}}
    return SpecCluster(workers=spec, scheduler=scheduler, worker=spec[0] if spec else None,
                       name="engine-embedded", silence_logs=False if logs else logging.WARN)


def _death_signal() -> None:   # runs in the child between fork and exec
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the worker's death_timeout still ends it
        pass


def _worker_class():
    from distributed.deploy.subprocess import SubprocessWorker

    class ScriptSafeWorker(SubprocessWorker):
        """``dask spec`` worker process started with this process's dask configuration in its
        environment, ended by a parent-death signal."""

        def __init__(self, scheduler: str, *, logs: str | None = None, **kwargs) -> None:
            super().__init__(scheduler, **kwargs)
            self.logs = logs

        async def _start(self) -> None:
            import asyncio
            import json
            from dask.config import serialize
            env = dict(os.environ)
            settings = config.dask_config().config
            if self.logs:     # its lines go to the log file: dask's usual levels there, not the terminal's
                from dask.config import merge
                settings = merge(settings, {"distributed": {"logging": {"distributed": "info"}}})
            env["DASK_INTERNAL_INHERIT_CONFIG"] = serialize(settings)
            # the driver's import path, as a spawned process gets it: modules the job's code imports by
            # name from the script's folder or the current directory resolve on the workers too
            path = [os.path.abspath(p or os.curdir) for p in sys.path]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in path if os.path.isdir(p)))
            cmd = [sys.executable, "-m", "dask", "spec", self.scheduler, "--spec",
                   json.dumps({"cls": self.worker_class, "opts": {**self.worker_kwargs}})]
            out = open(self.logs, "ab") if self.logs else None   # noqa: SIM115 - the child keeps it
            try:
                # a session of its own: Ctrl-C in the terminal reaches the driver only, which ends the run
                # and then its workers, instead of every worker printing its own traceback. What the job's
                # code prints (stdout) shows on the driver's stderr; dask's log lines (stderr) go to the file.
                self.process = await asyncio.create_subprocess_exec(
                    *cmd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=_driver_stderr(), stderr=out,
                    start_new_session=True,
                    preexec_fn=_death_signal if sys.platform.startswith("linux") else None)
            finally:
                if out is not None:
                    out.close()

    return ScriptSafeWorker


def _driver_stderr() -> int | None:
    """The driver's stderr file descriptor for a worker's stdout (None: inherit the driver's stdout,
    when stderr has no descriptor, as in some embedding hosts)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        try:
            return sys.__stderr__.fileno() if sys.__stderr__ is not None else None
        except (AttributeError, OSError, ValueError):
            return None


def _ScriptSafeWorker(*args, **kwargs):  # noqa: N802 - a class factory SpecCluster calls like a class
    return _worker_class()(*args, **kwargs)


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
    if _EXIT_SIGNAL:
        exit_by_signal()


_EXIT_SIGNAL: list[int] = []


def exit_by_signal() -> None:
    """End the process by the signal recorded in ``_EXIT_SIGNAL`` (SIGINT after Ctrl-C, SIGTERM), as
    Python itself does for an uncaught KeyboardInterrupt: the shell and schedulers see status 130 or
    143. Runs last, after the embedded cluster is closed."""
    import signal
    sig = _EXIT_SIGNAL[-1]
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


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
        client = _connect(cluster)
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


def scheduler_timeout() -> float:
    """``engine.cluster.scheduler-timeout`` in seconds (a number, or text such as ``"30s"``)."""
    value = config.get("cluster.scheduler-timeout")
    try:
        if isinstance(value, str):
            from dask.utils import parse_timedelta
            seconds = float(parse_timedelta(value, default="seconds"))
        else:
            seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"engine.cluster.scheduler-timeout={value!r} is not a duration; write seconds (10) or "
                           "text such as '30s'") from exc
    if not seconds > 0:
        raise ClusterError(f"engine.cluster.scheduler-timeout must be positive, got {value!r}")
    return seconds


_CLIENTS: dict[str, Any] = {}        # address -> Client
_CLIENT_TLS: dict[str, tuple] = {}    # address -> the TLS settings its Client was made with


def _connect(address: str):
    from distributed import Client
    sec, settings = _security_for(address)
    made_with = tuple(sorted((k, str(v)) for k, (_, v) in settings.items())) if sec is not None else ()
    with _LOCK:
        client = _CLIENTS.get(address)
        if client is not None and (client.status != "running" or _CLIENT_TLS.get(address) != made_with):
            if client.status == "running":
                client.close()
            client = None
        if client is None:
            try:
                # the client's timeout also bounds how long it tries to reconnect to a scheduler it lost
                client = Client(address, set_as_default=False, timeout=scheduler_timeout(),
                                **({"security": sec} if sec is not None else {}))
            except Exception as exc:  # noqa: BLE001
                raise ClusterError(_unreachable(address, sec, settings, exc)) from exc
            _CLIENTS[address] = client
            _CLIENT_TLS[address] = made_with
        return client


# --- TLS ---------------------------------------------------------------------------------------

_TLS_FILES = {"ca-file": "distributed.comm.tls.ca-file", "cert": "distributed.comm.tls.client.cert",
              "key": "distributed.comm.tls.client.key"}
_TLS_HOW = ("set engine.tls.ca-file, engine.tls.cert and engine.tls.key (mapreduce run: --tls-ca-file, --tls-cert, "
            "--tls-key; environment: DASK_ENGINE__TLS__CA_FILE, DASK_ENGINE__TLS__CERT, DASK_ENGINE__TLS__KEY), or "
            "dask's distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and distributed.comm.tls.client.key")


def _tls_settings() -> dict[str, tuple[str, Any]]:
    """Each TLS file of the driver with the setting it came from: ``{"ca-file": (setting, path), ...}``;
    an ``engine.tls.*`` key that is set wins over dask's own. ``"require-encryption"`` too."""
    dc = config.dask_config()
    out: dict[str, tuple[str, Any]] = {}
    for key, theirs in _TLS_FILES.items():
        mine = config.get(f"tls.{key}")
        out[key] = (f"engine.tls.{key}", mine) if mine else (theirs, dc.get(theirs, None))
    required = config.get("tls.require-encryption")
    out["require-encryption"] = (("engine.tls.require-encryption", required) if required is not None else
                                 ("distributed.comm.require-encryption",
                                  dc.get("distributed.comm.require-encryption", None)))
    return out


def security():
    """The ``distributed.security.Security`` the engine connects to scheduler addresses with, from
    ``engine.tls.ca-file``/``cert``/``key``/``require-encryption`` (each unset key: dask's
    ``distributed.comm.tls.*`` setting); None when no TLS file is set (dask's defaults apply)."""
    return _make_security(_tls_settings())


def _scheme(address: str) -> str:
    return address.split("://", 1)[0].lower() if "://" in address else "tcp"


def _security_for(address: str):
    """``(Security or None, settings)`` for connecting to ``address``; ClusterError when the settings
    cannot work: a ``tls://`` address without a CA file and certificate, a file that is missing or not
    PEM, a plain address while encryption is required."""
    settings = _tls_settings()
    files = {k: settings[k][1] for k in _TLS_FILES}
    required = bool(settings["require-encryption"][1])
    scheme = _scheme(address)
    if scheme != "tls" and required:
        name = settings["require-encryption"][0]
        raise ClusterError(f"{name} is on, and the scheduler address {address!r} is not encrypted: connect to "
                           f"tls://{address.split('://', 1)[-1]} (the scheduler started with --protocol tls), or "
                           f"turn {name} off")
    if scheme == "tls":
        missing = [what for k, what in (("ca-file", "CA file"), ("cert", "client certificate")) if not files[k]]
        if missing:
            raise ClusterError(f"the scheduler address {address!r} asks for TLS, and this driver has no "
                               f"{' and no '.join(missing)}: {_TLS_HOW}; the certificate must be signed by the CA "
                               "the scheduler was given (dask scheduler --tls-ca-file)")
    return _make_security(settings), settings


def _make_security(settings: dict[str, tuple[str, Any]]):
    files = {k: settings[k][1] for k in _TLS_FILES}
    if not any(files.values()):
        return None
    _check_tls_files(settings)
    from distributed.security import Security
    kwargs = {"tls_ca_file": files["ca-file"], "tls_client_cert": files["cert"], "tls_client_key": files["key"]}
    return Security(require_encryption=bool(settings["require-encryption"][1]),
                    **{k: v for k, v in kwargs.items() if v})


def _check_tls_files(settings: dict[str, tuple[str, Any]]) -> None:
    import ssl
    for key in _TLS_FILES:
        name, path = settings[key]
        if path and not os.path.isfile(path):
            raise ClusterError(f"{name}={path!r}: no such file; {_TLS_HOW}")
        if path and not os.access(path, os.R_OK):
            raise ClusterError(f"{name}={path!r}: this user cannot read it (permissions)")
    (ca_name, ca), (cert_name, cert), (key_name, key) = (settings[k] for k in _TLS_FILES)
    if ca:
        try:
            ssl.create_default_context(cafile=ca)
        except ssl.SSLError as exc:
            raise ClusterError(f"{ca_name}={ca!r} holds no PEM CA certificate ({exc.reason or exc}); give the file "
                               "of the CA that signed the cluster's certificates") from exc
    if cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key or None)
        except ssl.SSLError as exc:
            what = (f"{cert_name}={cert!r} and {key_name}={key!r} are not a PEM certificate and its private key"
                    if key else f"{cert_name}={cert!r} is not a PEM certificate followed by its private key "
                    f"(or set {key_name} to the key file)")
            raise ClusterError(f"{what} ({exc.reason or exc})") from exc
    elif key:
        raise ClusterError(f"{key_name} is set and {cert_name} is not: set both; {_TLS_HOW}")


def _unreachable(address: str, sec, settings: dict[str, tuple[str, Any]], exc: BaseException) -> str:
    """Why connecting to ``address`` failed, and what to do: a TLS handshake of its own tells a scheduler
    that wants TLS, refuses this certificate or is not trusted from one that is not there."""
    plain = f"cannot reach the scheduler at {address!r}: {exc}. Is `dask scheduler` running there?"
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return plain
    tls = _scheme(address) == "tls"
    verdict, why = _handshake(host, int(port),
                              sec.get_connection_args("client")["ssl_context"] if tls and sec else None)
    if not tls and verdict in ("ok", "refused", "untrusted"):
        return (f"the scheduler at {address!r} speaks TLS and refused a plain connection: connect to "
                f"tls://{hostport}" + ("" if sec is not None else f" with a client certificate signed by the "
                                                                   f"cluster's CA: {_TLS_HOW}"))
    if tls and verdict == "plain":
        return (f"the scheduler at {address!r} does not speak TLS (it answered in plain TCP): connect to "
                f"tcp://{hostport}, or start the scheduler and workers with --protocol tls and --tls-ca-file, "
                "--tls-cert, --tls-key")
    if tls and verdict == "untrusted":
        return (f"the scheduler at {address!r} presented a certificate that the CA file "
                f"{settings['ca-file'][0]}={settings['ca-file'][1]!r} did not sign ({why}): give the CA file that "
                "signed the cluster's certificates (engine.tls.ca-file, --tls-ca-file or distributed.comm.tls.ca-file)")
    if tls and verdict == "refused":
        return (f"the scheduler at {address!r} refused this driver's certificate "
                f"{settings['cert'][0]}={settings['cert'][1]!r} ({why}): it accepts only certificates signed by the "
                "CA it was given (dask scheduler --tls-ca-file); give a certificate and key signed by that CA "
                "(engine.tls.cert and engine.tls.key, --tls-cert and --tls-key, or distributed.comm.tls.client.*)")
    return plain


def _handshake(host: str, port: int, context, timeout: float = 3.0) -> tuple[str, str]:
    """One TLS handshake with ``host:port``: ``(verdict, reason)``, the verdict "ok", "refused" (the
    server rejected the certificate, or that there is none), "untrusted" (the server's certificate
    failed verification), "plain" (no TLS there) or "unknown" (no connection, or no answer).
    ``context``: the client's, or None to verify nothing and offer no certificate."""
    import ssl
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return "unknown", str(exc)
    try:
        try:
            conn = context.wrap_socket(sock)
        except ssl.SSLCertVerificationError as exc:
            return "untrusted", exc.verify_message or str(exc)
        except ssl.SSLError as exc:
            plain = exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                                   "UNKNOWN_PROTOCOL", "HTTP_REQUEST")
            return ("plain" if plain else "refused"), exc.reason or str(exc)
        except OSError as exc:
            return "unknown", str(exc)
        with conn:
            # TLS 1.3: the server's verdict on the client's certificate comes after the handshake.
            conn.settimeout(min(timeout, 0.5))
            try:
                conn.recv(1)
            except ssl.SSLError as exc:
                return "refused", exc.reason or str(exc)
            except OSError:
                pass
        return "ok", ""
    finally:
        sock.close()


__all__ = ["get_client", "ClusterInfo", "security", "shutdown", "scheduler_timeout"]
