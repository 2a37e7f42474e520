"""What a reader may trust in a committed output, on local disk and on S3 (moto server).

Promises checked here, each with a real run on the embedded LocalCluster:

* ``engine.read`` verifies by default: one flipped byte in a committed part file fails the read with
  an :class:`IntegrityError` naming the file and its partition, whatever columns are asked for;
  ``verify=False`` opts out (and then returns the damaged rows, which is why it is not the default).
* A damaged ``_SUCCESS`` is not a dead end: ``mapreduce verify`` names it, ``--mode overwrite``
  replaces it (compare-and-swap against the damaged bytes) and removes the damaged generation's
  files, ``mapreduce clean --force`` removes it; every other path refuses it with a message that
  gives a remedy that works.
* Manifest entries are validated when the manifest is loaded: a forged manifest (whose checksum an
  attacker can recompute) cannot make ``read`` or ``verify`` open a file outside the output.
"""

from __future__ import annotations

import collections
import json
import os
import posixpath
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import commit
from engine.errors import IntegrityError, ManifestError
from fixtures import Backend, storage_backend
from jobs.wordcount import job as wordcount

ROOT = Path(__file__).resolve().parents[1]
WORDCOUNT = ROOT / "jobs" / "wordcount.py"
PARTITION_SIZE = "16KiB"


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Backend:
    return storage_backend(request, tmp_path, "trust")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four text files of Zipf words, and their word counts computed in plain Python."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(10)
    vocab = np.array([f"term{i}" for i in range(3000)])
    counts: collections.Counter[str] = collections.Counter()
    for i in range(4):
        words = vocab[np.minimum(rng.zipf(1.2, 25_000) - 1, len(vocab) - 1)]
        lines = [" ".join(words[j:j + 10]) for j in range(0, len(words), 10)]
        (d / f"doc-{i}.txt").write_text("\n".join(lines) + "\n")
        counts.update(words.tolist())
    return str(d), dict(counts)


def as_counts(table: pa.Table) -> dict:
    return dict(zip(table["word"].to_pylist(), table["count"].to_pylist()))


def part_files(fs, path: str) -> set[str]:
    fs.invalidate_cache()
    try:
        return {posixpath.basename(p) for p in fs.ls(path, detail=False) if posixpath.basename(p).startswith("part-")}
    except FileNotFoundError:
        return set()


def silently_flipped(data: bytes) -> tuple[bytes, int]:
    """``data`` (a Parquet file) with one byte flipped inside a column chunk where pyarrow, without
    page checksums, still decodes the file, to different values; and the flipped offset."""
    original = pq.read_table(pa.BufferReader(data))
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    for rg in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(rg).column(c)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            end = start + chunk.total_compressed_size
            for offset in range((start + end) // 2, min(end, (start + end) // 2 + 200)):
                damaged = bytearray(data)
                damaged[offset] ^= 0x04
                try:
                    table = pq.read_table(pa.BufferReader(bytes(damaged)))
                except Exception:  # noqa: BLE001 - this offset breaks decoding; look for a silent one
                    continue
                if table.num_rows == original.num_rows and not table.equals(original):
                    return bytes(damaged), offset
    raise AssertionError("no byte of the file flips silently")


def cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["ENGINE_HISTORY"] = str(tmp_path / "history.sqlite")
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# Item 2: reads verify by default


@pytest.mark.parametrize("spool", [False, True], ids=["in-memory", "spooled"])
def test_read_refuses_a_flipped_byte_in_a_part_file_by_default(backend, corpus, spool, monkeypatch):
    if spool:
        if backend.name == "local":
            pytest.skip("local files are memory-mapped, never spooled")
        monkeypatch.setattr(commit, "_SPOOL_ABOVE", 0)    # every downloaded file goes through a temp file
    src, expected = corpus
    out = backend.url("flip-part")
    result = wordcount.run(src, out, storage_options=backend.options, partition_size=PARTITION_SIZE)
    assert len(result.manifest.files) >= 2
    assert as_counts(engine.read(out, backend.options)) == expected
    entry = result.manifest.files[-1]
    victim = posixpath.join(backend.path(out), entry["path"])
    damaged, _ = silently_flipped(backend.fs.cat_file(victim))
    backend.fs.pipe_file(victim, damaged)

    with pytest.raises(IntegrityError) as exc:
        engine.read(out, backend.options)
    assert entry["path"] in str(exc.value) and f"partition {entry['partition']}" in str(exc.value)
    assert entry["path"] in "\n".join(exc.value.problems)
    # a projection reads only some columns' pages, yet a flip anywhere in the file still fails it
    for columns in (["word"], ["count"]):
        with pytest.raises(IntegrityError, match=entry["path"]):
            engine.read(out, backend.options, columns=columns)
    with pytest.raises(IntegrityError, match=entry["path"]):
        result.read()

    # the opt-out returns rows, and here they are silently wrong: why verifying is the default
    unverified = engine.read(out, backend.options, verify=False)
    assert unverified.num_rows == len(expected)
    assert as_counts(unverified) != expected
    # nothing was lost: the damaged file is still where it was, byte for byte
    assert backend.fs.cat_file(victim) == damaged


# ---------------------------------------------------------------------------------------------
# Item 5: a damaged _SUCCESS


def damage_manifest(fs, out_path: str, how: str) -> bytes:
    path = posixpath.join(out_path, commit.MANIFEST)
    data = bytearray(fs.cat_file(path))
    if how == "flip":            # still JSON, fails the manifest's own checksum
        i = data.index(b'"rows": ') + len(b'"rows": ')
        data[i] = ord("9") if data[i] != ord("9") else ord("8")
    else:                        # truncated: not JSON at all
        data = data[: len(data) // 2]
    fs.pipe_file(path, bytes(data))
    fs.invalidate_cache()
    return bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_cli_verify_names_a_damaged_manifest_and_overwrite_recovers(corpus, tmp_path, how):
    src, expected = corpus
    out = tmp_path / "out"
    first = cli("run", WORDCOUNT, "--input", src, "--output", out, "--workers", "1", "--partition-size",
                PARTITION_SIZE, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    old_files = part_files(fsspec.filesystem("file"), str(out))
    damage_manifest(fsspec.filesystem("file"), str(out), how)

    check = cli("verify", out, tmp_path=tmp_path)
    assert check.returncode == 1
    assert str(out / "_SUCCESS") in check.stderr
    assert ("fails its own checksum" if how == "flip" else "unreadable") in check.stderr

    with pytest.raises(ManifestError, match="overwrite"):
        engine.read(str(out))
    again = cli("run", WORDCOUNT, "--input", src, "--output", out, "--workers", "1", "--partition-size",
                PARTITION_SIZE, tmp_path=tmp_path)
    assert again.returncode == 1 and "--mode overwrite" in again.stderr and "_SUCCESS" in again.stderr

    fixed = cli("run", WORDCOUNT, "--input", src, "--output", out, "--workers", "1", "--mode", "overwrite",
                "--partition-size", "1MiB", tmp_path=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert as_counts(engine.read(str(out))) == expected
    assert cli("verify", out, tmp_path=tmp_path).returncode == 0
    new_manifest = json.loads((out / "_SUCCESS").read_text())
    # the damaged generation's files are gone, only the new generation's remain
    assert part_files(fsspec.filesystem("file"), str(out)) == {f["path"] for f in new_manifest["files"]}
    assert not old_files & {f["path"] for f in new_manifest["files"]}


def test_overwrite_replaces_a_damaged_manifest_on_each_store(backend, corpus):
    src, expected = corpus
    out = backend.url("damaged-manifest")
    first = wordcount.run(src, out, storage_options=backend.options, partition_size=PARTITION_SIZE)
    damaged = damage_manifest(backend.fs, backend.path(out), "flip")
    manifest_path = posixpath.join(backend.path(out), commit.MANIFEST)

    for mode in ("error", "append"):
        with pytest.raises(ManifestError) as exc:
            wordcount.run(src, out, storage_options=backend.options, mode=mode)
        assert "mode='overwrite'" in str(exc.value) and "clean" in str(exc.value) and "--force" in str(exc.value)
    with pytest.raises(ManifestError, match="mode='overwrite'"):
        engine.verify(out, backend.options)
    assert backend.fs.cat_file(manifest_path) == damaged     # refusing touched nothing

    result = wordcount.run(src, out, storage_options=backend.options, mode="overwrite", partition_size="1MiB")
    assert not result.skipped
    assert as_counts(engine.read(out, backend.options)) == expected
    engine.verify(out, backend.options)
    remaining = part_files(backend.fs, backend.path(out))
    assert remaining == {f["path"] for f in result.manifest.files}
    assert not remaining & {f["path"] for f in first.manifest.files}


@pytest.mark.slow
def test_cli_clean_force_removes_a_damaged_manifest(corpus, tmp_path):
    src, expected = corpus
    out = tmp_path / "out"
    wordcount.run(src, str(out), partition_size=PARTITION_SIZE)
    (out / "notes.txt").write_text("not the engine's")         # foreign files are never removed
    damage_manifest(fsspec.filesystem("file"), str(out), "truncate")

    refused = cli("clean", out, tmp_path=tmp_path)
    assert refused.returncode == 1
    assert "_SUCCESS" in refused.stderr and "--force" in refused.stderr
    assert (out / "_SUCCESS").exists()

    forced = cli("clean", out, "--force", tmp_path=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert not (out / "_SUCCESS").exists()
    assert part_files(fsspec.filesystem("file"), str(out)) == set()
    assert (out / "notes.txt").read_text() == "not the engine's"

    (out / "notes.txt").unlink()
    wordcount.run(src, str(out), partition_size=PARTITION_SIZE)
    assert as_counts(engine.read(str(out))) == expected


# ---------------------------------------------------------------------------------------------
# Item 9: manifest entries stay under the output


def forge(fs, out_path: str, target: str, data: bytes) -> None:
    """Point the manifest's first entry at ``target`` (with ``data``'s size and CRC) and reseal it."""
    path = posixpath.join(out_path, commit.MANIFEST)
    doc = json.loads(fs.cat_file(path))
    doc["files"][0].update({"path": target, "bytes": len(data), "crc32c": commit.crc32c(data),
                            "rows": pq.read_metadata(pa.BufferReader(data)).num_rows})
    fs.pipe_file(path, json.dumps(commit.seal(doc), indent=1, sort_keys=True).encode())
    fs.invalidate_cache()


def outside_targets(backend: Backend, out_path: str, outside_path: str) -> list[str]:
    parent = posixpath.dirname(out_path)
    rel = "../" + posixpath.basename(outside_path)
    if backend.name == "local":
        return [rel, outside_path, "sub/../" + rel, "file://" + outside_path]
    return ["/" + outside_path, rel, "s3://" + outside_path, posixpath.join("..", posixpath.basename(parent),
                                                                             posixpath.basename(outside_path))]


def test_forged_manifest_cannot_point_outside_the_output(backend, corpus):
    src, _ = corpus
    out = backend.url("forged", "out")
    wordcount.run(src, out, storage_options=backend.options, partition_size=PARTITION_SIZE)
    out_path = backend.path(out)
    # a valid Parquet file beside the output: opening it would succeed and return its rows
    secret = pa.table({"word": ["SECRET-ROW"], "count": [1]})
    sink = pa.BufferOutputStream()
    pq.write_table(secret, sink)
    data = sink.getvalue().to_pybytes()
    outside = posixpath.join(posixpath.dirname(out_path), "secret.parquet")
    backend.fs.pipe_file(outside, data)

    for target in outside_targets(backend, out_path, outside):
        forge(backend.fs, out_path, target, data)
        with pytest.raises(ManifestError) as exc:
            engine.read(out, backend.options)
        assert target in str(exc.value)
        with pytest.raises(ManifestError, match="may only list files inside its output"):
            engine.verify(out, backend.options)
        with pytest.raises(ManifestError):
            engine.read(out, backend.options, verify=False)
