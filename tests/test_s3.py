"""Everything on S3 (a moto server on 127.0.0.1): input, output and the shuffle directory.

Each scenario runs on the embedded cluster and on the multi-process cluster from the dask CLIs; the
S3 endpoint and credentials reach the workers only through ``storage_options``.
"""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3

import dask.config
import pytest
from samples import (assert_globally_sorted, assert_same_rows, custom_job, custom_reference, keyed_table,
                     read_parquet_parts, sort_job, sort_reference, wordcount_job, wordcount_reference,
                     write_parquet_parts, write_text_corpus)

import engine
from fixtures import S3_KEY, S3_SECRET

pytestmark = [pytest.mark.s3, pytest.mark.cluster]

PARTITION_SIZE = "16KiB"
SECRETS = (S3_KEY, S3_SECRET)


@pytest.fixture(autouse=True)
def _few_hash_partitions():
    """Small reduce partitions (several reducers on little data), but few hash partitions per map file:
    every reducer reads its slices with ranged GETs, and a slower endpoint multiplies their number."""
    with dask.config.set({"engine.shuffle.max-partitions": 8}):
        yield


@pytest.fixture(scope="module")
def s3_data(s3, tmp_path_factory):
    """Text and Parquet inputs uploaded to the bucket, with the local copies for the references."""
    root = tmp_path_factory.mktemp("s3-data")
    text = write_text_corpus(root / "text", files=3, lines=2500, seed=11)
    table = keyed_table(24_000, seed=12)
    parquet = write_parquet_parts(root / "parquet", table, files=3)
    fs = s3["fs"]
    for local in text:
        fs.put(local, f"{s3['bucket']}/input/text/{posixpath.basename(local)}")
    for local in parquet:
        fs.put(local, f"{s3['bucket']}/input/parquet/{posixpath.basename(local)}")
    fs.invalidate_cache()
    return {"text_url": s3["url"]("input", "text"), "parquet_url": s3["url"]("input", "parquet"),
            "text": text, "table": read_parquet_parts(parquet)}


@pytest.fixture(params=["embedded", "cli", "driver"])
def cluster(request):
    """None with the engine's embedded LocalCluster (worker processes, asked for explicitly: these inputs
    are small), the address of the CLI-started cluster, or None for a run in the driver process."""
    if request.param == "embedded":
        with dask.config.set({"engine.local.max-bytes": 0}):
            yield None
    elif request.param == "driver":
        yield None
    else:
        yield request.getfixturevalue("dask_cluster")


def _key(url: str) -> str:
    return url.split("://", 1)[1]


def _shuffle_leftovers(s3, prefix: str) -> list[str]:
    s3["fs"].invalidate_cache()
    if not s3["fs"].exists(prefix):
        return []
    return s3["fs"].find(prefix)


def _assert_no_secrets(text: str | bytes, where: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    for secret in SECRETS:
        assert secret not in text, f"a credential leaked into {where}"


def test_wordcount_text_on_s3(s3, s3_data, cluster, request, tmp_path):
    so = s3["storage_options"]
    name = request.node.callspec.id
    out = s3["url"]("out", f"wc-{name}")
    shuffle = s3["url"]("shuffle", f"wc-{name}")
    html = tmp_path / "report.html"
    result = engine.run(wordcount_job(), s3_data["text_url"], out, cluster=cluster, storage_options=so,
                        shuffle_dir=shuffle, partition_size=PARTITION_SIZE, report=str(html))
    assert result.report.status == "committed"
    assert next(s for s in result.report.stages if s.kind == "map").tasks >= 2
    assert next(s for s in result.report.stages if s.kind == "reduce").tasks >= 2
    expected = wordcount_reference(s3_data["text"])
    assert_same_rows(engine.read(out, storage_options=so), expected, ["word"])
    assert_same_rows(result.read(), expected, ["word"])
    summary = engine.verify(out, storage_options=so)
    assert summary.rows == expected.num_rows and summary.files == len(result.files) >= 2
    # The shuffle went through S3 and was cleaned up after the run.
    assert _shuffle_leftovers(s3, _key(shuffle)) == []

    # No credential in the report, its HTML page, the manifest or the run history.
    _assert_no_secrets(result.report.to_json(), "the run report")
    _assert_no_secrets(html.read_bytes(), "the HTML report")
    _assert_no_secrets(repr(result) + str(result), "the run result's repr")
    manifest = s3["fs"].cat(_key(out) + "/_SUCCESS")
    _assert_no_secrets(manifest, "the _SUCCESS manifest")
    with sqlite3.connect(os.environ["ENGINE_HISTORY"]) as con:
        for row in con.execute("SELECT * FROM runs"):
            _assert_no_secrets(json.dumps(row, default=str), "the run history")

    # A rerun on the unchanged input is a no-op, whatever the mode.
    for mode in ("error", "overwrite", "append"):
        again = engine.run(wordcount_job(), s3_data["text_url"], out, cluster=cluster, storage_options=so,
                           shuffle_dir=shuffle, partition_size=PARTITION_SIZE, mode=mode)
        assert again.skipped and again.run_id == result.run_id, mode
        assert "nothing to do" in again.report.message
        _assert_no_secrets(again.report.to_json(), "the no-op run's report")
    # Another job over committed output is refused by mode="error", and so is a forced rerun.
    with pytest.raises(engine.OutputExistsError):
        engine.run(wordcount_job("other"), s3_data["text_url"], out, cluster=cluster, storage_options=so,
                   shuffle_dir=shuffle, partition_size=PARTITION_SIZE)
    with pytest.raises(engine.OutputExistsError):
        engine.run(wordcount_job(), s3_data["text_url"], out, cluster=cluster, storage_options=so,
                   shuffle_dir=shuffle, partition_size=PARTITION_SIZE, force=True)
    assert json.loads(s3["fs"].cat(_key(out) + "/_SUCCESS"))["run_id"] == result.run_id
    engine.verify(out, storage_options=so)

    # A flipped byte in one committed object: verify names that file, read(verify=True) refuses it.
    doc = json.loads(manifest)
    victim = doc["files"][-1]["path"]
    key = f"{_key(out)}/{victim}"
    data = bytearray(s3["fs"].cat(key))
    data[len(data) // 2] ^= 0x40
    s3["fs"].pipe(key, bytes(data))
    with pytest.raises(engine.IntegrityError) as err:
        engine.verify(out, storage_options=so)
    assert victim in str(err.value)
    assert [p for p in err.value.problems if victim in p] and len(err.value.problems) == 1
    _assert_no_secrets(str(err.value), "the integrity error")
    with pytest.raises(engine.IntegrityError):
        engine.read(out, storage_options=so, verify=True)


def test_custom_reduce_parquet_on_s3(s3, s3_data, cluster, request):
    so = s3["storage_options"]
    name = request.node.callspec.id
    out = s3["url"]("out", f"custom-{name}")
    shuffle = s3["url"]("shuffle", f"custom-{name}")
    result = engine.run(custom_job(), s3_data["parquet_url"], out, cluster=cluster, storage_options=so,
                        shuffle_dir=shuffle, partition_size=PARTITION_SIZE)
    assert next(s for s in result.report.stages if s.kind == "reduce").tasks >= 2
    assert_same_rows(engine.read(out, storage_options=so), custom_reference(s3_data["table"]), ["k1", "k2"])
    engine.verify(out, storage_options=so)
    assert _shuffle_leftovers(s3, _key(shuffle)) == []
    _assert_no_secrets(result.report.to_json(), "the run report")
    _assert_no_secrets(s3["fs"].cat(_key(out) + "/_SUCCESS"), "the _SUCCESS manifest")


def test_sort_parquet_on_s3(s3, s3_data, cluster, request):
    so = s3["storage_options"]
    name = request.node.callspec.id
    out = s3["url"]("out", f"sorted-{name}")
    # One range partition per 128 KiB of map output: a handful of reducers, each a multipart upload.
    result = engine.run(sort_job(), s3_data["parquet_url"], out, cluster=cluster, storage_options=so,
                        shuffle_dir=s3["url"]("shuffle", f"sorted-{name}"), partition_size="128KiB")
    assert len(result.files) >= 2
    assert_globally_sorted(engine.read(out, storage_options=so), sort_reference(s3_data["table"]))
    engine.verify(out, storage_options=so)


def test_overwrite_on_s3_replaces_output(s3, s3_data, dask_cluster):
    so = s3["storage_options"]
    out = s3["url"]("out", "overwrite")
    opts = dict(cluster=dask_cluster, storage_options=so, shuffle_dir=s3["url"]("shuffle", "overwrite"),
                partition_size=PARTITION_SIZE)
    first = engine.run(custom_job(), s3_data["parquet_url"], out, **opts)
    second = engine.run(wordcount_job(), s3_data["text_url"], out, mode="overwrite", **opts)
    assert second.run_id != first.run_id
    assert_same_rows(engine.read(out, storage_options=so), wordcount_reference(s3_data["text"]), ["word"])
    engine.verify(out, storage_options=so)
    # Only the new generation's files remain next to the manifest.
    s3["fs"].invalidate_cache()
    names = {posixpath.basename(p) for p in s3["fs"].ls(_key(out), detail=False)}
    assert {n for n in names if not n.startswith("_")} == {posixpath.basename(f) for f in second.files}
