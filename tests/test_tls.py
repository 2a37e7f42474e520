"""TLS between the driver, the scheduler and the workers, with certificates made by this module.

A CA and its certificates are generated here (``cryptography``); a ``dask scheduler --protocol tls``
and a ``dask worker`` (two threads) on 127.0.0.1 get the node certificate, the driver gets a client
certificate through ``engine.tls.*`` (or the CLI's ``--tls-*`` flags, or a Client carrying its own
``Security``). A word count over TLS must equal a pyarrow reference and verify. A driver with no
certificate, with a plain ``tcp://`` address, or with a certificate of another CA is refused with a
ClusterError that says what is wrong and what to set, quickly, and commits nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time

import dask.config
import pytest
from distributed import Client
from distributed.security import Security
from fixtures import CLICluster, _dask_executable, _forget_engine_client, _spawn, _stop, worker_environment
from samples import assert_same_rows, wordcount_reference, write_text_corpus

import engine
from engine.cluster import get_client
from engine.errors import ClusterError
from jobs.wordcount import job as wordcount

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

pytestmark = pytest.mark.cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTITION_SIZE = "16KiB"     # several reducers from a small corpus


# ---------------------------------------------------------------------------------------------
# Certificates


def _name(cn: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, key, issuer_name, issuer_key, *, ca: bool):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: str, data: bytes, mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _authority(d: str, name: str) -> dict:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, _name(name), key, ca=True)
    return {"key": key, "cert": cert, "file": _write(os.path.join(d, f"{name}.pem"), _pem(cert))}


def _leaf(d: str, name: str, ca: dict) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, ca["cert"].subject, ca["key"], ca=False)
    return (_write(os.path.join(d, f"{name}.pem"), _pem(cert)),
            _write(os.path.join(d, f"{name}-key.pem"), _key_pem(key), 0o600))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """The cluster's CA with a node and a client certificate; another CA with an intruder's certificate."""
    d = str(tmp_path_factory.mktemp("pki"))
    ca, other = _authority(d, "cluster-ca"), _authority(d, "other-ca")
    node, node_key = _leaf(d, "node", ca)
    client, client_key = _leaf(d, "driver", ca)
    intruder, intruder_key = _leaf(d, "intruder", other)
    return {"ca": ca["file"], "node": node, "node-key": node_key, "client": client, "client-key": client_key,
            "other-ca": other["file"], "intruder": intruder, "intruder-key": intruder_key, "dir": d}


def _engine_tls(ca: str, cert: str, key: str) -> dict:
    return {"engine.tls.ca-file": ca, "engine.tls.cert": cert, "engine.tls.key": key}


def _driver_tls(pki) -> dict:
    return _engine_tls(pki["ca"], pki["client"], pki["client-key"])


# ---------------------------------------------------------------------------------------------
# A TLS cluster from the dask CLIs


@pytest.fixture(scope="module")
def tls_cluster(pki, tmp_path_factory):
    """``dask scheduler --protocol tls`` and a two-thread ``dask worker`` on 127.0.0.1."""
    workdir = str(tmp_path_factory.mktemp("tls-cluster"))
    exe = _dask_executable()
    env = worker_environment({"PYTHONPATH": REPO})      # the workers import this tree's engine and jobs
    tls = ["--tls-ca-file", pki["ca"], "--tls-cert", pki["node"], "--tls-key", pki["node-key"]]
    scheduler_file = os.path.join(workdir, "scheduler.json")
    scheduler = _spawn([exe, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
                        "--dashboard-address", "127.0.0.1:0", "--scheduler-file", scheduler_file, *tls],
                       workdir, env, "scheduler.log")
    cluster = CLICluster("", scheduler_file, workdir, scheduler)
    try:
        deadline = time.monotonic() + 60
        while not cluster.address:
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TLS scheduler did not start\n{cluster.logs()}")
            try:
                with open(scheduler_file) as f:
                    cluster.address = json.load(f)["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.05)
        cluster.workers.append(_spawn([exe, "worker", cluster.address, "--host", "127.0.0.1", "--nthreads", "2",
                                       "--dashboard-address", "127.0.0.1:0", *tls], workdir, env, "worker.log"))
        security = Security(tls_ca_file=pki["ca"], tls_client_cert=pki["client"], tls_client_key=pki["client-key"],
                            require_encryption=True)
        with Client(cluster.address, security=security, timeout="30s", set_as_default=False) as client:
            try:
                client.wait_for_workers(1, timeout=60)
            except Exception as exc:
                raise RuntimeError(f"the TLS worker did not connect: {exc}\n{cluster.logs()}") from exc
        yield cluster
    finally:
        if cluster.address:
            _forget_engine_client(cluster.address)
        _stop(cluster.workers, timeout=20)
        _stop([scheduler], timeout=10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list[str]]:
    d = tmp_path_factory.mktemp("tls-corpus")
    return str(d), write_text_corpus(d, files=3, lines=3000, seed=14)


def _nothing_committed(out: str) -> None:
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))
    leftovers = [os.path.join(r, n) for r, _, names in os.walk(out) for n in names if n.endswith(".parquet")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------
# Runs over TLS


@pytest.mark.parametrize("how", ["address", "client"])
def test_wordcount_over_tls(how, tls_cluster, pki, corpus, tmp_path):
    """engine.tls.* with a tls:// address, or a Client made with its own Security: the shuffling word
    count runs on the TLS workers and equals the pyarrow reference."""
    text_dir, paths = corpus
    out = str(tmp_path / "wc")
    if how == "address":
        with dask.config.set(_driver_tls(pki)):
            result = engine.run(wordcount, text_dir, out, cluster=tls_cluster.address, partition_size=PARTITION_SIZE)
    else:
        security = Security(tls_ca_file=pki["ca"], tls_client_cert=pki["client"],
                            tls_client_key=pki["client-key"], require_encryption=True)
        with Client(tls_cluster.address, security=security, timeout="10s", set_as_default=False) as client:
            result = engine.run(wordcount, text_dir, out, cluster=client, partition_size=PARTITION_SIZE)
    assert result.report.status == "committed"
    stages = {s.kind: s for s in result.report.stages}
    assert stages["map"].tasks >= 2 and stages["reduce"].tasks >= 2
    used = {t.worker for t in result.report.tasks if t.worker and t.worker != "?"}
    assert used and all(w.startswith("tls://127.0.0.1:") for w in used), used
    assert result.report.cluster["embedded"] is False and result.report.cluster["workers"] == 1
    assert_same_rows(engine.read(out), wordcount_reference(paths), ["word"])
    assert engine.verify(out).files >= 1


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    full["PYTHONPATH"] = REPO
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=full,
                          cwd=REPO, timeout=120)


def test_cli_run_over_tls(tls_cluster, pki, corpus, tmp_path):
    """`mapreduce run --scheduler tls://... --tls-ca-file --tls-cert --tls-key` commits the reference
    answer; without the flags it exits 1 naming the settings, and commits nothing."""
    text_dir, paths = corpus
    bare = tmp_path / "bare"
    p = _cli("run", "jobs/wordcount.py", "--input", text_dir, "--output", str(bare), "--scheduler",
             tls_cluster.address, "--quiet")
    assert p.returncode == 1, p.stderr
    assert "ClusterError" in p.stderr and "asks for TLS" in p.stderr and "--tls-ca-file" in p.stderr, p.stderr
    _nothing_committed(str(bare))

    out = tmp_path / "wc"
    p = _cli("run", "jobs/wordcount.py", "--input", text_dir, "--output", str(out), "--scheduler",
             tls_cluster.address, "--tls-ca-file", pki["ca"], "--tls-cert", pki["client"], "--tls-key",
             pki["client-key"], "--partition-size", PARTITION_SIZE, "--json")
    assert p.returncode == 0, p.stderr
    assert_same_rows(engine.read(str(out)), wordcount_reference(paths), ["word"])
    engine.verify(str(out))


# ---------------------------------------------------------------------------------------------
# Refusals


def _refusals(cluster, pki) -> dict:
    port = cluster.address.rsplit(":", 1)[1]
    return {
        # a plain connection to the TLS port
        "plain-address": (f"tcp://127.0.0.1:{port}", {},
                          [f"speaks TLS and refused a plain connection: connect to tls://127.0.0.1:{port}",
                           "engine.tls.cert"]),
        # no certificate at all
        "no-certificate": (cluster.address, {}, ["asks for TLS", "no CA file and no client certificate",
                                                 "engine.tls.ca-file", "DASK_ENGINE__TLS__CERT"]),
        # the cluster's CA file (public) with a certificate another CA signed
        "certificate-of-other-ca": (cluster.address, _engine_tls(pki["ca"], pki["intruder"], pki["intruder-key"]),
                                    ["refused this driver's certificate", f"engine.tls.cert='{pki['intruder']}'",
                                     "signed by the CA it was given"]),
        # the intruder's own CA: the scheduler's certificate does not verify
        "other-ca-trusted": (cluster.address, _engine_tls(pki["other-ca"], pki["intruder"], pki["intruder-key"]),
                             ["presented a certificate that the CA file",
                              f"engine.tls.ca-file='{pki['other-ca']}' did not sign"]),
    }


@pytest.mark.parametrize("case", ["plain-address", "no-certificate", "certificate-of-other-ca", "other-ca-trusted"])
def test_refused(case, tls_cluster, pki, corpus, tmp_path):
    """Each wrong way in fails within seconds with a ClusterError naming the cause and the settings.
    (The engine's cached connection to this address, made with the good certificate by the tests
    above, must not be reused under other settings.)"""
    address, settings, expected = _refusals(tls_cluster, pki)[case]
    out = str(tmp_path / "out")
    started = time.monotonic()
    with dask.config.set(settings), pytest.raises(ClusterError) as info:
        engine.run(wordcount, corpus[0], out, cluster=address, partition_size=PARTITION_SIZE)
    assert time.monotonic() - started < 8
    for text in expected:
        assert text in str(info.value), str(info.value)
    _nothing_committed(out)


def test_tls_address_of_plain_scheduler(dask_cluster, pki):
    """A tls:// address for a scheduler that speaks plain TCP (the suite's shared CLI cluster)."""
    port = dask_cluster.rsplit(":", 1)[1]
    with dask.config.set(_driver_tls(pki)), pytest.raises(ClusterError) as info:
        get_client(f"tls://127.0.0.1:{port}")
    assert f"does not speak TLS (it answered in plain TCP): connect to tcp://127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize("case", ["missing-file", "not-a-ca", "key-of-another-certificate", "key-without-cert"])
def test_bad_certificate_files(case, tls_cluster, pki, tmp_path):
    """A missing or unusable file is named with the setting it came from, before any connection."""
    good = _driver_tls(pki)
    garbage = str(tmp_path / "garbage.pem")
    with open(garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    settings, expected = {
        "missing-file": ({**good, "engine.tls.cert": str(tmp_path / "nope.pem")},
                         f"engine.tls.cert='{tmp_path / 'nope.pem'}': no such file"),
        "not-a-ca": ({**good, "engine.tls.ca-file": garbage}, f"engine.tls.ca-file='{garbage}' holds no PEM CA"),
        "key-of-another-certificate": ({**good, "engine.tls.key": pki["intruder-key"]},
                                       "are not a PEM certificate and its private key"),
        "key-without-cert": ({"engine.tls.ca-file": pki["ca"], "engine.tls.key": pki["client-key"]},
                             "no client certificate"),
    }[case]
    with dask.config.set(settings), pytest.raises(ClusterError, match="engine.tls") as info:
        get_client(tls_cluster.address)
    assert expected in str(info.value), str(info.value)


def test_require_encryption_refuses_plain_address(pki):
    with dask.config.set({**_driver_tls(pki), "engine.tls.require-encryption": True}), \
            pytest.raises(ClusterError, match=r"engine.tls.require-encryption is on, and the scheduler address "
                                              r"'tcp://127.0.0.1:1' is not encrypted: connect to tls://127.0.0.1:1"):
        get_client("tcp://127.0.0.1:1")


def test_settings_from_environment(pki):
    """DASK_ENGINE__TLS__* variables reach engine.cluster.security(); dask's own distributed.comm.tls.*
    settings are the fallback for each key the engine's leave unset."""
    code = ("from engine.cluster import security; s = security(); "
            "print(s.tls_ca_file, s.tls_client_cert, s.tls_client_key, s.require_encryption)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(PYTHONPATH=REPO, DASK_ENGINE__TLS__CA_FILE=pki["ca"], DASK_ENGINE__TLS__CERT=pki["client"],
               DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=pki["client-key"],
               DASK_ENGINE__TLS__REQUIRE_ENCRYPTION="True")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [pki["ca"], pki["client"], pki["client-key"], "True"]


# ---------------------------------------------------------------------------------------------
# The embedded cluster stays on loopback


def test_embedded_cluster_listens_on_loopback_only():
    """What docs/security.md says of the embedded cluster: scheduler, nannies, workers and their HTTP
    servers listen on 127.0.0.1 only."""
    psutil = pytest.importorskip("psutil")
    from engine.cluster import _host, get_client
    client, info = get_client(None)
    assert info.embedded and not info.in_process
    assert _host(client.scheduler.address) == "127.0.0.1"
    if info.dashboard:
        assert info.dashboard.startswith("http://127.0.0.1:")
    pids = set(client.run(os.getpid).values())
    pids |= {psutil.Process(p).ppid() for p in pids}           # their nannies
    listening = [(pid, c.laddr.ip) for pid in pids for c in psutil.Process(pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(ip == "127.0.0.1" for _, ip in listening), listening
