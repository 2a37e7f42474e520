"""A slow, unreliable network between the engine and an HTTP service (the S3 endpoint of the tests).

:class:`FlakyProxy` listens on 127.0.0.1 and relays HTTP/1.1 requests, one at a time per connection and
one thread per connection, to an upstream endpoint (moto's S3 server). For each request it draws from a
seeded random generator whether to:

* ``drop`` it: close the connection without forwarding it and without a reply (a connection reset on the
  way to the service: the request never arrived);
* ``lose`` the answer: forward it, let the service act on it, then close the connection without a reply
  (the service did the work but the client never hears of it: a retried conditional write then finds its
  own earlier write);
* ``delay`` it by a random time before forwarding it;
* or relay it untouched.

>>> proxy = FlakyProxy("http://127.0.0.1:5000", seed=7, drop=0.1, delay=0.3)   # doctest: +SKIP
>>> proxy.start(); proxy.url                                                    # doctest: +SKIP
'http://127.0.0.1:40123'

``counts`` says how many requests met each fate, so a test can check the faults happened; ``applies``
restricts the random faults to some requests. ``once`` adds exact faults: ``[(fate, match), ...]``, each
met by the first request ``match(method, path)`` accepts (then it is used up), e.g. to lose the answer
of the first conditional PUT of a manifest.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers that describe one hop, not the message: never relayed as they are.
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect",
        "content-length"}


class FlakyProxy:
    """Relays HTTP to ``upstream`` with seeded drops, lost answers and delays (see the module docstring).

    ``drop``, ``lose`` and ``delay`` are probabilities per request; a delay lasts a uniform time up to
    ``max_delay`` seconds. ``applies(method, path)`` (default: every request) chooses the requests that
    may meet a random fault; the others are relayed untouched. ``once``: faults for the first request
    each ``match`` accepts.
    """

    def __init__(self, upstream: str, *, seed: int = 0, drop: float = 0.0, lose: float = 0.0, delay: float = 0.0,
                 max_delay: float = 0.3, applies: Callable[[str, str], bool] | None = None,
                 once: list[tuple[str, Callable[[str, str], bool]]] | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.drop, self.lose, self.delay, self.max_delay = drop, lose, delay, max_delay
        self.applies = applies or (lambda method, path: True)
        self.once = list(once or [])
        self.seed = seed
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str, str]] = []       # (fate, method, path), in arrival order
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------------
    def start(self) -> FlakyProxy:
        proxy = self

        class Handler(_Relay):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="flaky-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- faults ------------------------------------------------------------------------------
    def fate(self, method: str, path: str) -> tuple[str, float]:
        """``(fate, seconds of delay)`` of the next request; one draw sequence from the seed."""
        with self._lock:
            r, pause = self._random.random(), self._random.random() * self.max_delay
            scripted = next((i for i, (_, match) in enumerate(self.once) if match(method, path)), None)
            if scripted is not None:
                fate = self.once.pop(scripted)[0]
            elif not self.applies(method, path):
                fate = "relay"
            elif r < self.drop:
                fate = "drop"
            elif r < self.drop + self.lose:
                fate = "lose"
            elif r < self.drop + self.lose + self.delay:
                fate = "delay"
            else:
                fate = "relay"
            self.counts[fate] += 1
            self.log.append((fate, method, path))
        return fate, pause if fate == "delay" else 0.0


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive, as S3 clients expect
    owner: FlakyProxy

    def log_message(self, format: str, *args) -> None:     # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass                    # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self) -> None:
        proxy = self.owner
        body = self._body()
        fate, pause = proxy.fate(self.command, self.path)
        if fate == "drop":
            self.close_connection = True        # no reply; the server closes the socket
            return
        if pause:
            time.sleep(pause)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            status, reason, answer = response.status, response.reason, response.getheaders()
        finally:
            upstream.close()
        if fate == "lose":
            self.close_connection = True        # the service acted; the client never hears of it
            return
        self.send_response_only(status, reason)
        length = None
        for k, v in answer:
            if k.lower() == "content-length":
                length = v
            elif k.lower() not in _HOP:
                self.send_header(k, v)
        # A HEAD answer announces the length of the body it does not carry.
        self.send_header("Content-Length", length if self.command == "HEAD" and length is not None
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
        self.wfile.flush()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


__all__ = ["FlakyProxy"]
