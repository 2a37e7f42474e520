"""Real monitoring services for tests, started on 127.0.0.1 by the test session and stopped after it.

* :func:`require_binary`: the path of a service binary; when it is missing the test is skipped, or
  fails when ``REQUIRE_SERVICES=1`` (CI installs the Debian packages, so there a missing binary is a bug).
* ``pushgateway`` (session fixture) / :func:`start_pushgateway`: Debian's ``prometheus-pushgateway``
  on a free port, with no persistence file (Debian's build defaults to one under /var/lib/prometheus: the
  state would outlive the process and be shared with any other gateway there); yields a
  :class:`Pushgateway` with its URL and a reader of its ``/metrics``. Tests share one gateway and keep
  apart by job name (each test pushes its own job names).

Use from a test module with ``from services import pushgateway  # noqa: F401`` (a fixture).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fixtures import _spawn, _stop


def require_binary(name: str, *candidates: str, package: str | None = None) -> str:
    """The path of ``name`` (on PATH or one of ``candidates``); skip the test without it, unless
    ``REQUIRE_SERVICES=1`` makes that a failure."""
    found = shutil.which(name) or next((c for c in candidates if os.access(c, os.X_OK)), None)
    if found:
        return found
    why = f"needs the {name} binary (apt-get install -y {package or name})"
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pushgateway:
    url: str                 # http://127.0.0.1:PORT
    log: str                 # the gateway's own log file

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def samples(self, prefix: str = "") -> list:
        """The samples of ``/metrics`` whose name starts with ``prefix``, parsed by prometheus_client's parser."""
        from prometheus_client.parser import text_string_to_metric_families
        return [s for fam in text_string_to_metric_families(self.metrics_text()) for s in fam.samples
                if s.name.startswith(prefix)]


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
            return r.status == 200
    return False


@contextlib.contextmanager
def start_pushgateway(workdir: str | None = None, *, timeout: float = 20.0) -> Iterator[Pushgateway]:
    """Start ``prometheus-pushgateway`` on 127.0.0.1 (a free port), wait until ``/-/ready`` answers, stop it after."""
    exe = require_binary("prometheus-pushgateway", "/usr/bin/prometheus-pushgateway")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pushgateway-"))
        log = os.path.join(workdir, "pushgateway.log")
        for _ in range(3):                       # a port taken between free_port() and the bind: try another
            url = f"http://127.0.0.1:{free_port()}"
            # Debian's build persists to /var/lib/prometheus/pushgateway.data unless told otherwise: an empty
            # --persistence.file keeps the state in memory, so every start is empty and shares nothing
            args = [exe, f"--web.listen-address={url[len('http://'):]}", "--persistence.file=", "--log.level=warn"]
            proc = _spawn(args, workdir, dict(os.environ), "pushgateway.log")
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not _ready(url) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None and _ready(url):
                break
            _stop([proc], 5)
        else:
            with open(log, errors="replace") as f:
                pytest.fail(f"prometheus-pushgateway did not become ready:\n{f.read()[-3000:]}")
        try:
            yield Pushgateway(url, log)
        finally:
            _stop([proc], 5)


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory) -> Iterator[Pushgateway]:
    """A Pushgateway for the test session (see the module docstring)."""
    with start_pushgateway(str(tmp_path_factory.mktemp("pushgateway"))) as gw:
        yield gw


def headless_chromium(profile_dir, *, window_size: str | None = None):
    """A Selenium driver of Debian's headless Chromium (console messages kept, for the tests to check);
    skips without chromium and chromium-driver, fails instead under ``REQUIRE_BROWSER=1`` (CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not (chromium and shutil.which("chromedriver")):
        why = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("REQUIRE_BROWSER"):      # CI installs them: there, a missing browser is a failure
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}"]
    if window_size:
        flags.append(f"--window-size={window_size}")
    for flag in flags:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    return driver
