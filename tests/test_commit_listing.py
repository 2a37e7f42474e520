"""The commit path's costs that grow with an output's partitions: listing a local output, writing and
reading its manifest. Same answers as before, cheaper (see the ``incremental`` benchmark suite)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg, commit
from engine.datasets import filesystem
from engine.errors import ManifestError


def _find_listing(fs, out: str) -> list[tuple[str, str]]:
    """What ``data_files`` returned when it listed with ``fs.find`` (the reference)."""
    root = out.rstrip("/")
    found = []
    for p in sorted(fs.find(out, withdirs=False)):
        rel = p[len(root) + 1:] if p.startswith(root + "/") else None
        if rel and not any(part.startswith(("_", ".")) for part in rel.split("/")):
            found.append((rel, p))
    return found


def test_local_listing_equals_fsspec_find(tmp_path):
    out = tmp_path / "out"
    files = ["part-a.parquet", "day=1/part-b.parquet", "day=1/region=x/part-c.parquet", "_temporary/r/part-d",
             ".hidden/part-e", "day=2/_tmp/part-f", "day=2/.part-g.crc", "day=2/part-h.parquet", "loose/part-i",
             "day=2/region=%2F/part-j.parquet", "_SUCCESS", "_lock"]
    for f in files:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_bytes(b"x")
    (out / "day=3").mkdir()                                    # an empty partition directory
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "region=y").mkdir(parents=True)
    (elsewhere / "region=y" / "part-k.parquet").write_bytes(b"x")
    os.symlink(elsewhere, out / "day=4")                       # an entry, not followed (as fs.find lists it)
    fs, path = filesystem(str(out))
    listed = commit.data_files(fs, path)
    assert listed == _find_listing(fs, path)
    assert [rel for rel, _ in listed] == ["day=1/part-b.parquet", "day=1/region=x/part-c.parquet",
                                          "day=2/part-h.parquet", "day=2/region=%2F/part-j.parquet",
                                          "day=4", "loose/part-i", "part-a.parquet"]
    assert commit.data_files(fs, str(tmp_path / "missing")) == []
    assert commit.data_files(fs, str(out / "part-a.parquet")) == _find_listing(fs, str(out / "part-a.parquet")) == []


def _events(directory, days: list[str], rows: int = 500) -> None:
    rng = np.random.default_rng(5)
    for day in days:
        os.makedirs(directory / f"day={day}", exist_ok=True)
        pq.write_table(pa.table({"k": rng.choice(["a", "b\u00e9\"", "c/d"], rows), "v": rng.integers(0, 9, rows)}),
                       directory / f"day={day}" / "part.parquet")


def test_manifest_has_one_line_per_file_partition_and_date(tmp_path):
    src, out = tmp_path / "events", str(tmp_path / "out")
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    _events(src, days)
    job = Job("daily").reduce(by=["day", "k"], aggs={"n": agg.count(), "s": agg.sum("v")})
    for day in days:
        engine.run(job, str(src), out, partition_by=["day"], mode="overwrite-partitions", date=day,
                   where="day = '{date}'")
    text = (tmp_path / "out" / "_SUCCESS").read_text(encoding="utf-8")
    doc = json.loads(text)
    fs, path = filesystem(out)
    assert doc == commit.load_manifest(fs, path).doc and doc["checksum"] == commit.seal(doc)["checksum"]
    lines = text.splitlines()
    # every top-level key on its own line, sorted; each entry of files, partitions and dates on one line
    assert [line.split('"')[1] for line in lines if line.startswith(' "')] == sorted(doc)
    for key, entries in (("files", doc["files"]), ("partitions", doc["partitions"]), ("dates", doc["dates"])):
        assert len(entries) == 3
        start = lines.index(f' "{key}": ' + ("[" if isinstance(entries, list) else "{"))
        body = lines[start + 1:start + 1 + len(entries)]
        assert lines[start + 1 + len(entries)].rstrip(",") in (" ]", " }")
        if isinstance(entries, list):
            assert [json.loads(line.strip().rstrip(",")) for line in body] == entries
        else:
            assert [json.loads("{" + line.strip().rstrip(",") + "}") for line in body] == [
                {k: v} for k, v in sorted(entries.items())]
    assert engine.verify(out).files == 3           # raises if a file or the manifest is damaged
    for odd in ({}, {"files": []}, {"a": {}, "b": {"x": 1}, "c": {"x": {"y": [1, 2]}}, "d": [[1], {"z": None}]},
                {"s": "caf\u00e9 \"quoted\"\n\\", "f": 1.5, "n": None, "t": True, "files": [{"b": 1, "a": "\u2028"}]}):
        assert json.loads(commit.manifest_text(odd)) == odd


def test_a_changed_manifest_is_parsed_again(tmp_path):
    src, out = tmp_path / "events", str(tmp_path / "out")
    _events(src, ["2026-01-01"], rows=50)
    engine.run(Job("copy").map(columns=["day", "k", "v"]), str(src), out, partition_by=["day"])
    fs, path = filesystem(out)
    first = commit.load_manifest(fs, path)
    assert commit.load_manifest(fs, path).doc == first.doc
    manifest = tmp_path / "out" / "_SUCCESS"
    doc = json.loads(manifest.read_bytes())
    doc["job"] = "renamed"
    manifest.write_bytes(commit.manifest_text(commit.seal(doc)))          # a valid new generation's bytes
    assert commit.load_manifest(fs, path).doc["job"] == "renamed"
    raw = bytearray(manifest.read_bytes())
    raw[raw.index(b'"renamed"') + 1] ^= 0x01                               # damaged after a good parse
    manifest.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="fails its own checksum"):
        commit.load_manifest(fs, path)
    doc["files"][0]["path"] = "../outside.parquet"                          # forged, resealed
    manifest.write_bytes(commit.manifest_text(commit.seal(doc)))
    with pytest.raises(ManifestError, match="leaves the output"):
        commit.load_manifest(fs, path)
