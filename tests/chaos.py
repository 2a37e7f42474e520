"""Faults for the chaos soak (tests/test_chaos_soak.py): a flaky S3 endpoint and a worker killer.

* :class:`FlakyS3Proxy`: an HTTP proxy on 127.0.0.1 in front of an S3 endpoint (the moto server). Each
  request it forwards may be delayed, answered ``503 SlowDown``, dropped before it reaches the store
  (the connection closes with no answer), or dropped *after* the store executed it (the answer is lost:
  the client cannot tell whether its write happened, the ambiguity every retried write must survive).
  The rates are set per run (:meth:`FlakyS3Proxy.set_faults`); the proxy counts what it injected.
* :class:`WorkerKiller`: a thread that sleeps, then SIGKILLs one worker process (the nanny restarts it).

The fault *rates* and the kill *moment* come from the run's seed; which request meets a fault depends
on the order in which threads and worker processes send them, so a replayed seed repeats the same
kinds and rates of faults, not necessarily the same requests.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers that describe one hop, not the message: never forwarded as they came.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}

_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass(frozen=True)
class S3Faults:
    """Per-request fault rates of the proxy (each a probability) and the largest added delay."""

    drop: float = 0.0          # close the connection before forwarding: nothing reached the store
    drop_after: float = 0.0    # forward, then close without answering: the store acted, the client never heard
    slow_down: float = 0.0     # answer 503 SlowDown without forwarding
    delay: float = 0.0         # seconds: each request waits uniform(0, delay) first
    # of the conditional writes (PUT with If-None-Match or If-Match: a lock taken, a manifest created or
    # swapped), the fraction whose answer is lost after the store executed them
    lose_conditional: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive, as botocore's connection pool expects
    server: _ProxyServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):   # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _forward(self) -> None:
        body = self._body()
        conditional = self.command == "PUT" and ("If-None-Match" in self.headers or "If-Match" in self.headers)
        fault, pause = self.server.draw(self.path.split("?", 1)[0], conditional)
        if pause:
            time.sleep(pause)
        if fault == "drop":
            self._hang_up()
            return
        if fault == "slow_down":
            self.send_response_only(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(_SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body or self.command in ("PUT", "POST"):
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, reason, resp_headers = resp.status, resp.reason, resp.getheaders()
        finally:
            conn.close()
        if fault == "drop_after":
            self._hang_up()
            return
        self.send_response_only(status, reason)
        for k, v in resp_headers:
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in resp_headers).get("content-length")
            if length is not None:
                self.send_header("Content-Length", length)
        elif status not in (204, 304) and not 100 <= status < 200:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.faults = S3Faults()
        self.rng = random.Random(0)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        # key suffix -> what happens to the answers of the next conditional writes of such a key, in
        # order: "L" lost, "." delivered (then the rates decide again)
        self.scripts: dict[str, str] = {}

    def draw(self, path: str, conditional: bool) -> tuple[str | None, float]:
        with self.lock:
            f = self.faults
            self.counts["requests"] += 1
            pause = self.rng.uniform(0.0, f.delay) if f.delay else 0.0
            if conditional:
                suffix = next((s for s in self.scripts if path.endswith(s)), None)
                if suffix is not None:
                    step, rest = self.scripts[suffix][0], self.scripts[suffix][1:]
                    if rest:
                        self.scripts[suffix] = rest
                    else:
                        del self.scripts[suffix]
                    lose = step == "L"
                else:
                    lose = self.rng.random() < f.lose_conditional
                if lose:
                    self.counts["lose_conditional"] += 1
                    return "drop_after", pause
                if suffix is not None:
                    return None, pause
            r = self.rng.random()
            for name in ("drop", "drop_after", "slow_down"):
                rate = getattr(f, name)
                if r < rate:
                    self.counts[name] += 1
                    return name, pause
                r -= rate
            return None, pause


class FlakyS3Proxy:
    """An S3 endpoint on 127.0.0.1 that forwards to ``upstream`` and injects faults at the set rates.

    >>> proxy = FlakyS3Proxy("http://127.0.0.1:5000")      # doctest: +SKIP
    >>> proxy.set_faults(S3Faults(drop=0.05), seed=7)       # doctest: +SKIP
    >>> proxy.endpoint                                      # doctest: +SKIP
    'http://127.0.0.1:41234'
    """

    def __init__(self, upstream: str) -> None:
        self._server = _ProxyServer(upstream)
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-s3-proxy", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"

    def set_faults(self, faults: S3Faults, seed: int = 0) -> None:
        with self._server.lock:
            self._server.faults = faults
            self._server.rng = random.Random(seed)
            self._server.scripts = {}

    def lose_answers(self, key_suffix: str, script: str = "L") -> None:
        """Script the answers to the next conditional writes of a key ending in ``key_suffix``, one
        character each: ``L`` lost after the store executed the write, ``.`` delivered."""
        with self._server.lock:
            self._server.scripts[key_suffix] = script

    def calm(self) -> None:
        self.set_faults(S3Faults())

    def counts(self) -> Counter:
        with self._server.lock:
            return Counter(self._server.counts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class WorkerKiller(threading.Thread):
    """After ``delay`` seconds, SIGKILL ``pid`` unless :meth:`cancel` came first; ``killed_at`` tells when."""

    def __init__(self, pid: int, delay: float) -> None:
        super().__init__(name=f"kill-{pid}", daemon=True)
        self.pid, self.delay = pid, delay
        self._cancel = threading.Event()
        self.killed_at: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        if self._cancel.wait(self.delay):
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()
        except ProcessLookupError:
            self.error = f"worker pid {self.pid} was already gone"

    def cancel(self) -> None:
        self._cancel.set()
        self.join(5)


__all__ = ["FlakyS3Proxy", "S3Faults", "WorkerKiller"]
