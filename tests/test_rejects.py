"""Bad-record isolation (``on_error="reject"``, ``on_bad_file="reject"``): exact outcomes.

Every test computes its reference with pyarrow in this process, from the generated input minus the
rows it made bad, and checks the rejected rows are exactly those: no more, no fewer, each once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine import Job, agg
from engine.commit import load_manifest
from engine.errors import InputError, TooManyRejectedError
from engine.datasets import filesystem

N_FILES, ROWS = 3, 20_000
POISON = 7          # values v with v % 1000 == POISON make the map function raise


def _write_input(directory, files: int = N_FILES, rows: int = ROWS) -> pa.Table:
    os.makedirs(directory, exist_ok=True)
    tables = []
    for i in range(files):
        t = pa.table({"k": pa.array([(j * 7) % 13 for j in range(rows)], pa.int64()),
                      "v": pa.array(range(i * rows, (i + 1) * rows), pa.int64())})
        pq.write_table(t, os.path.join(directory, f"part-{i}.parquet"), row_group_size=5_000)
        tables.append(t)
    return pa.concat_tables(tables)


def poison_map(t: pa.Table) -> pa.Table:
    """Doubles v; raises on a batch holding a poison value (as a row-wise parser would)."""
    if pc.any(pc.equal(pc.subtract(t["v"], pc.multiply(pc.divide(t["v"], 1000), 1000)), POISON)).as_py():
        raise ValueError("poison value")
    return t.append_column("w", pc.multiply(t["v"], 2))


def _is_poison(v: int) -> bool:
    return v % 1000 == POISON


def _reference(table: pa.Table, keep) -> dict:
    ref: dict = {}
    for k, v in zip(table["k"].to_pylist(), table["v"].to_pylist()):
        if keep(v):
            s, n = ref.get(k, (0, 0))
            ref[k] = (s + 2 * v, n + 1)
    return ref


def _answer(out: str) -> dict:
    t = engine.read(out)
    return {k: (s, n) for k, s, n in zip(t["k"].to_pylist(), t["s"].to_pylist(), t["n"].to_pylist())}


SUM_JOB = Job("poison-sum").map(poison_map).reduce(by="k", aggs={"s": agg.sum("w"), "n": agg.count()})


def _no_commit(out: str) -> None:
    """Nothing committed at ``out``: no manifest, no data file, no published rejected file."""
    fs, root = filesystem(out)
    assert load_manifest(fs, root) is None
    if os.path.isdir(root):
        visible = [n for n in os.listdir(root) if not n.startswith(("_", "."))]
        assert visible == [], visible
        assert not os.listdir(os.path.join(root, "_rejected")) if os.path.isdir(os.path.join(root, "_rejected")) \
            else True


# ---------------------------------------------------------------------------------------------
# Map functions


def test_map_poison_rows_rejected_exactly_and_committed_with_the_run(tmp_path):
    table = _write_input(tmp_path / "in")
    out = str(tmp_path / "out")
    result = engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=100)
    poison = [v for v in table["v"].to_pylist() if _is_poison(v)]
    assert result.report.rejected == len(poison) == 60
    assert _answer(out) == _reference(table, lambda v: not _is_poison(v))
    rejected = engine.read_rejected(out)
    values = sorted(json.loads(r)["v"] for r in rejected["record"].to_pylist())
    assert values == poison                                  # exactly those, each once
    rows = rejected.to_pylist()
    for r in rows:
        v = json.loads(r["record"])["v"]
        assert r["file"].endswith(f"part-{v // ROWS}.parquet") and r["row"] == v % ROWS
        assert r["stage"] == "map" and r["error_type"] == "ValueError" and r["error"] == "poison value"
        assert r["location"] and r["location"].startswith(__file__) and "raise ValueError" in r["traceback"]
    # listed in the manifest, checksummed, verified
    manifest = load_manifest(*filesystem(out))
    listed = manifest.doc["rejected"]
    assert sum(e["rows"] for e in listed) == 60 and manifest.doc["rejected_rows"] == 60
    on_disk = sorted(os.listdir(os.path.join(out, "_rejected")))
    assert on_disk == sorted(os.path.basename(e["path"]) for e in listed)
    engine.verify(out)
    # the data itself is not mixed with them: readers of OUT see only the answer
    import pyarrow.dataset as ds
    assert ds.dataset(out).to_table().num_rows == 13
    assert result.record["rejected"] == 60
    assert "rejected: 60 row(s)" in result.report.summary()


def test_corrupted_rejected_file_fails_verify(tmp_path):
    _write_input(tmp_path / "in", files=1)
    out = str(tmp_path / "out")
    engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=100)
    (name,) = os.listdir(os.path.join(out, "_rejected"))
    path = os.path.join(out, "_rejected", name)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(engine.IntegrityError, match="rejected rows"):
        engine.verify(out)


def test_without_reject_the_poison_fails_the_run_and_commits_nothing(tmp_path):
    _write_input(tmp_path / "in", files=1)
    out = str(tmp_path / "out")
    with pytest.raises(engine.EngineError, match="poison value"):
        engine.run(SUM_JOB, str(tmp_path / "in"), out)
    _no_commit(out)


def test_max_rejected_count_crossed_commits_nothing(tmp_path):
    _write_input(tmp_path / "in")
    out = str(tmp_path / "out")
    with pytest.raises(TooManyRejectedError, match=r"max_rejected.*10\b") as info:
        engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=10)
    assert info.value.rejected > 10 and "poison value" in str(info.value)
    _no_commit(out)
    # the next run (with a limit that holds) commits, and leaves no stray rejected file behind
    engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=60)
    listed = {os.path.basename(e["path"]) for e in load_manifest(*filesystem(out)).doc["rejected"]}
    assert set(os.listdir(os.path.join(out, "_rejected"))) == listed


def test_max_rejected_fraction(tmp_path):
    _write_input(tmp_path / "in")                                 # 60 poison rows of 60,000 = 0.1%
    with pytest.raises(TooManyRejectedError, match=r"60,000 input rows"):
        engine.run(SUM_JOB, str(tmp_path / "in"), str(tmp_path / "o1"), on_error="reject", max_rejected="0.05%")
    _no_commit(str(tmp_path / "o1"))
    r = engine.run(SUM_JOB, str(tmp_path / "in"), str(tmp_path / "o2"), on_error="reject", max_rejected=0.002)
    assert r.report.rejected == 60


def test_function_failing_on_every_row_is_a_bug_not_bad_records(tmp_path):
    _write_input(tmp_path / "in", files=1)

    def broken(t):
        return t.append_column("w", pc.multiply(t["no_such_column"], 2))

    job = Job("broken").map(broken).reduce(by="k", aggs={"n": agg.count()})
    out = str(tmp_path / "out")
    with pytest.raises(engine.EngineError, match="bug in the function"):
        engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=1.0 - 1e-9)
    _no_commit(out)


def test_job_level_policy_and_run_override(tmp_path):
    table = _write_input(tmp_path / "in", files=1)
    job = Job("poison-sum", on_error="reject", max_rejected=50).map(poison_map) \
        .reduce(by="k", aggs={"s": agg.sum("w"), "n": agg.count()})
    r = engine.run(job, str(tmp_path / "in"), str(tmp_path / "o1"))
    assert r.report.rejected == 20
    assert _answer(str(tmp_path / "o1")) == _reference(table, lambda v: not _is_poison(v))
    with pytest.raises(engine.EngineError, match="poison value"):
        engine.run(job, str(tmp_path / "in"), str(tmp_path / "o2"), on_error="fail")


# ---------------------------------------------------------------------------------------------
# Reduce functions: the rows of a failing key are rejected together


def fussy_reduce(t: pa.Table) -> pa.Table:
    if pc.any(pc.equal(t["k"], 5)).as_py():
        raise KeyError("key 5 is not allowed")
    g = t.group_by("k").aggregate([("v", "sum"), ("v", "count")])
    return g.rename_columns(["k", "s", "n"]) if g.column_names[0] == "k" else \
        g.select(["k", "v_sum", "v_count"]).rename_columns(["k", "s", "n"])


def test_reduce_failing_key_rejected_whole(tmp_path):
    table = _write_input(tmp_path / "in", files=2)
    out = str(tmp_path / "out")
    job = Job("fussy").reduce(fussy_reduce, by="k")
    r = engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=10_000)
    five = table.filter(pc.equal(table["k"], 5))
    assert r.report.rejected == five.num_rows
    got = engine.read(out)
    ref = table.filter(pc.not_equal(table["k"], 5)).group_by("k").aggregate([("v", "sum"), ("v", "count")])
    assert dict(zip(got["k"].to_pylist(), zip(got["s"].to_pylist(), got["n"].to_pylist()))) == \
        dict(zip(ref["k"].to_pylist(), zip(ref["v_sum"].to_pylist(), ref["v_count"].to_pylist())))
    rejected = engine.read_rejected(out)
    assert set(rejected["stage"].to_pylist()) == {"reduce"}
    assert set(rejected["key"].to_pylist()) == {json.dumps({"k": 5})}
    assert sorted(json.loads(x)["v"] for x in rejected["record"].to_pylist()) == sorted(five["v"].to_pylist())


# ---------------------------------------------------------------------------------------------
# Readers: CSV and JSON rows that do not parse


CSV_ROWS = 80_000                 # ~1.5 MiB: the wrong-type row lies past the leading MiB whose types are inferred
CSV_BAD = {1500: "17,onlytwo", 70_000: "notanumber,x,1.0", CSV_ROWS: '18,"unclosed,2.0'}   # (a quote left
# open runs to the end of the file, as CSV allows newlines in quoted values: so it comes last here)


def _write_csv(path) -> None:
    """A CSV with good rows and, before the good rows numbered in CSV_BAD, a bad one."""
    lines = ["id,name,score"]
    for i in range(CSV_ROWS + 1):
        if i in CSV_BAD:
            lines.append(CSV_BAD[i])
        if i < CSV_ROWS:
            lines.append(f"{i},name{i % 100},{i * 0.5}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_csv_rows_that_do_not_parse_are_rejected(tmp_path):
    os.makedirs(tmp_path / "csv")
    _write_csv(tmp_path / "csv" / "a.csv")
    out = str(tmp_path / "out")
    job = Job("csv-sum").reduce(by="name", aggs={"n": agg.count(), "s": agg.sum("id")})
    with pytest.raises(InputError, match="a.csv"):
        engine.run(job, str(tmp_path / "csv"), str(tmp_path / "strict"))
    r = engine.run(job, str(tmp_path / "csv"), out, on_error="reject", max_rejected=10)
    rejected = engine.read_rejected(out).to_pylist()
    assert {x["stage"] for x in rejected} == {"read"} and r.report.rejected == len(rejected) == 3
    by_row = {x["row"]: x for x in rejected}
    # data rows counted in the file: the bad row before good row i is data row i + (bad rows before it)
    assert by_row[1500]["raw"] == "17,onlytwo" and "expected 3 fields" in by_row[1500]["error"]
    assert json.loads(by_row[70_001]["record"])["id"] == "notanumber" and "conversion" in by_row[70_001]["error"]
    assert by_row[CSV_ROWS + 2]["raw"] == '18,"unclosed,2.0\n' or by_row[CSV_ROWS + 2]["raw"].startswith('18,"unclosed')
    got = engine.read(out)
    ref: dict = {}
    for i in range(CSV_ROWS):
        n, s_ = ref.get(f"name{i % 100}", (0, 0))
        ref[f"name{i % 100}"] = (n + 1, s_ + i)
    assert dict(zip(got["name"].to_pylist(), zip(got["n"].to_pylist(), got["s"].to_pylist()))) == ref


def test_json_lines_that_do_not_parse_are_rejected(tmp_path):
    os.makedirs(tmp_path / "js")
    lines = []
    for i in range(2000):
        if i == 700:
            lines.append('{"id": 700, "name": "x"')                   # broken
        elif i == 1300:
            lines.append('{"id": "thirteen hundred", "name": "y"}')   # wrong type
        else:
            lines.append(json.dumps({"id": i, "name": f"n{i % 10}"}))
    (tmp_path / "js" / "a.jsonl").write_text("\n".join(lines) + "\n")
    job = Job("json-count").reduce(by="name", aggs={"n": agg.count(), "s": agg.sum("id")})
    out = str(tmp_path / "out")
    r = engine.run(job, str(tmp_path / "js"), out, format="json", on_error="reject", max_rejected=10)
    rejected = engine.read_rejected(out).to_pylist()
    assert sorted(x["row"] for x in rejected) == [700, 1300] and r.report.rejected == 2
    assert all(x["raw"] for x in rejected)
    got = engine.read(out)
    ids = [i for i in range(2000) if i not in (700, 1300)]
    ref: dict = {}
    for i in ids:
        n, s = ref.get(f"n{i % 10}", (0, 0))
        ref[f"n{i % 10}"] = (n + 1, s + i)
    assert dict(zip(got["name"].to_pylist(), zip(got["n"].to_pylist(), got["s"].to_pylist()))) == ref


# ---------------------------------------------------------------------------------------------
# Whole unreadable files


def test_unreadable_file_rejected_whole(tmp_path):
    table = _write_input(tmp_path / "in", files=3)
    with open(tmp_path / "in" / "part-1.parquet", "r+b") as f:   # its footer gone: no reader can open it
        f.truncate(100)
    job = Job("files").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})
    with pytest.raises(InputError, match="part-1.parquet"):
        engine.run(job, str(tmp_path / "in"), str(tmp_path / "strict"))
    out = str(tmp_path / "out")
    r = engine.run(job, str(tmp_path / "in"), out, on_bad_file="reject", max_rejected=5)
    assert r.report.rejected == 1
    (row,) = engine.read_rejected(out).to_pylist()
    assert row["stage"] == "file" and row["file"].endswith("part-1.parquet") and row["row"] is None
    kept = pa.concat_tables([table.slice(0, ROWS), table.slice(2 * ROWS)])
    ref = kept.group_by("k").aggregate([("v", "count"), ("v", "sum")])
    got = engine.read(out)
    assert dict(zip(got["k"].to_pylist(), zip(got["n"].to_pylist(), got["s"].to_pylist()))) == \
        dict(zip(ref["k"].to_pylist(), zip(ref["v_count"].to_pylist(), ref["v_sum"].to_pylist())))


def test_file_unreadable_at_read_time_rejected_whole(tmp_path):
    """A file whose footer reads but whose pages do not: the map task starts over without it."""
    table = _write_input(tmp_path / "in", files=2)
    path = tmp_path / "in" / "part-0.parquet"
    data = bytearray(path.read_bytes())
    for i in range(200, 5000):             # data pages of the first row groups
        data[i] = 0xAB
    path.write_bytes(bytes(data))
    job = Job("pages").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})
    out = str(tmp_path / "out")
    r = engine.run(job, str(tmp_path / "in"), out, on_bad_file="reject", max_rejected=5)
    rejected = engine.read_rejected(out).to_pylist()
    assert [x["stage"] for x in rejected] == ["file"] and rejected[0]["file"].endswith("part-0.parquet")
    assert r.report.rejected == 1
    ref = table.slice(ROWS).group_by("k").aggregate([("v", "count"), ("v", "sum")])
    got = engine.read(out)
    assert dict(zip(got["k"].to_pylist(), zip(got["n"].to_pylist(), got["s"].to_pylist()))) == \
        dict(zip(ref["k"].to_pylist(), zip(ref["v_count"].to_pylist(), ref["v_sum"].to_pylist())))


# ---------------------------------------------------------------------------------------------
# Generations: append keeps the rejected list, overwrite replaces it and removes the old files


def test_append_keeps_and_overwrite_replaces_rejected_files(tmp_path):
    _write_input(tmp_path / "in", files=1)
    out = str(tmp_path / "out")
    engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=100)
    first = {e["path"] for e in load_manifest(*filesystem(out)).doc["rejected"]}
    engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=100, mode="append", force=True)
    second = {e["path"] for e in load_manifest(*filesystem(out)).doc["rejected"]}
    assert first < second and engine.read_rejected(out).num_rows == 40
    engine.run(SUM_JOB, str(tmp_path / "in"), out, on_error="reject", max_rejected=100, mode="overwrite", force=True)
    third = {e["path"] for e in load_manifest(*filesystem(out)).doc["rejected"]}
    assert not (third & second) and engine.read_rejected(out).num_rows == 20
    assert {f"_rejected/{n}" for n in os.listdir(os.path.join(out, "_rejected"))} == third


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_run_reject_and_rejected_summary(tmp_path):
    _write_input(tmp_path / "in", files=2)
    jobfile = tmp_path / "poisonjob.py"
    jobfile.write_text(
        "import pyarrow.compute as pc\nfrom engine import Job, agg\n"
        "def poison_map(t):\n"
        "    if pc.any(pc.equal(pc.subtract(t['v'], pc.multiply(pc.divide(t['v'], 1000), 1000)), 7)).as_py():\n"
        "        raise ValueError('poison value')\n"
        "    return t.append_column('w', pc.multiply(t['v'], 2))\n"
        "job = Job('poison-cli').map(poison_map).reduce(by='k', aggs={'s': agg.sum('w'), 'n': agg.count()})\n")
    out = str(tmp_path / "out")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(jobfile), "--input", str(tmp_path / "in"),
                          "--output", out, "--on-error", "reject", "--max-rejected", "40", "-q"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr
    assert "rejected: 40 row(s)" in run.stdout
    summary = subprocess.run([sys.executable, "-m", "engine", "rejected", out, "--json"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert summary.returncode == 3, summary.stderr
    doc = json.loads(summary.stdout)
    assert doc["rows"] == 40 and doc["by_error"][0]["error"] == "poison value" and len(doc["by_file"]) == 2
    text = subprocess.run([sys.executable, "-m", "engine", "rejected", out], capture_output=True, text=True,
                          env=env, timeout=120)
    assert "40 rejected row(s)" in text.stdout and "poisonjob.py:5" in text.stdout
    too_many = subprocess.run([sys.executable, "-m", "engine", "run", str(jobfile), "--input", str(tmp_path / "in"),
                               "--output", str(tmp_path / "o2"), "--on-error", "reject", "--max-rejected", "5",
                               "-q"], capture_output=True, text=True, env=env, timeout=240)
    assert too_many.returncode == 1 and "--max-rejected" in too_many.stderr and "Nothing was committed" in too_many.stderr
    _no_commit(str(tmp_path / "o2"))


# ---------------------------------------------------------------------------------------------
# On a real cluster: a worker dies after it met poison rows; each bad row is still rejected once


def sum_w_reduce(t: pa.Table) -> pa.Table:
    if pc.any(pc.equal(t["k"], 5)).as_py():
        raise KeyError("key 5 is not allowed")
    g = t.group_by("k").aggregate([("w", "sum"), ("w", "count")])
    return g.select(["k", "w_sum", "w_count"]).rename_columns(["k", "s", "n"])


@pytest.mark.cluster
def test_on_a_cluster_map_and_reduce_rejects(tmp_path, dask_cluster):
    table = _write_input(tmp_path / "in", files=4)
    job = Job("poison-cluster").map(poison_map).reduce(sum_w_reduce, by="k")
    out = str(tmp_path / "out")
    r = engine.run(job, str(tmp_path / "in"), out, cluster=dask_cluster, on_error="reject", max_rejected=10_000)
    assert r.report.cluster.get("workers") == 2 and not r.report.cluster.get("local")
    rejected = engine.read_rejected(out).to_pylist()
    values, keys = table["v"].to_pylist(), table["k"].to_pylist()
    assert sorted(json.loads(x["record"])["v"] for x in rejected if x["stage"] == "map") == \
        sorted(v for v in values if _is_poison(v))
    assert sorted(json.loads(x["record"])["v"] for x in rejected if x["stage"] == "reduce") == \
        sorted(v for k, v in zip(keys, values) if k == 5 and not _is_poison(v))
    ref = _reference(table, lambda v: not _is_poison(v))
    ref.pop(5)
    assert _answer(out) == ref
    engine.verify(out)


@pytest.mark.slow
@pytest.mark.cluster
def test_on_a_cluster_with_a_worker_killed_each_bad_row_is_rejected_once(tmp_path):
    from fixtures import cli_cluster
    table = _write_input(tmp_path / "in", files=4)
    flag = str(tmp_path / "killed-once")

    def killing_poison_map(t: pa.Table) -> pa.Table:
        # the first attempt that meets a poison row takes its worker down (after some rows were rejected)
        if not os.path.exists(flag) and pc.any(pc.equal(t["v"], 2 * ROWS + 1007)).as_py():
            with open(flag, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), 9)
        return poison_map(t)

    job = Job("poison-cluster").map(killing_poison_map).reduce(sum_w_reduce, by="k")
    out = str(tmp_path / "out")
    with cli_cluster(tmp_path / "cluster") as c:
        r = engine.run(job, str(tmp_path / "in"), out, cluster=c.address, on_error="reject", max_rejected=10_000)
    assert os.path.exists(flag)                                   # a worker really died mid-map
    # (the scheduler reruns the dead worker's task elsewhere; the engine sees one attempt that finished)
    rejected = engine.read_rejected(out).to_pylist()
    map_rows = sorted(json.loads(x["record"])["v"] for x in rejected if x["stage"] == "map")
    reduce_rows = sorted(json.loads(x["record"])["v"] for x in rejected if x["stage"] == "reduce")
    values = table["v"].to_pylist()
    keys = table["k"].to_pylist()
    assert map_rows == sorted(v for v in values if _is_poison(v))                       # each once
    assert reduce_rows == sorted(v for k, v in zip(keys, values) if k == 5 and not _is_poison(v))
    assert r.report.rejected == len(map_rows) + len(reduce_rows)
    ref = _reference(table, lambda v: not _is_poison(v))
    ref.pop(5)
    assert _answer(out) == ref
    listed = {os.path.basename(e["path"]) for e in load_manifest(*filesystem(out)).doc["rejected"]}
    assert set(os.listdir(os.path.join(out, "_rejected"))) == listed
    engine.verify(out)


def test_resume_reuses_journaled_rejects_once(tmp_path):
    """A run that failed after its map stage, resumed: the map tasks' rejected files are reused, not redone."""
    table = _write_input(tmp_path / "in")
    gate = str(tmp_path / "reduce-may-run")

    def gated_reduce(t: pa.Table) -> pa.Table:
        if not os.path.exists(gate):
            raise MemoryError("simulated: the reduce cannot run yet")       # not a data error: never rejected
        return sum_w_reduce(t)

    job = Job("poison-resume").map(poison_map).reduce(gated_reduce, by="k")
    out = str(tmp_path / "out")
    with pytest.raises(engine.EngineError, match="cannot run yet"):
        engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=10_000)
    _no_commit(out)
    open(gate, "w").close()
    r = engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=10_000, resume=True)
    assert r.report.stages[0].resumed == N_FILES                      # the map tasks came from the journal
    values, keys = table["v"].to_pylist(), table["k"].to_pylist()
    rejected = engine.read_rejected(out).to_pylist()
    assert sorted(json.loads(x["record"])["v"] for x in rejected if x["stage"] == "map") == \
        sorted(v for v in values if _is_poison(v))
    assert sorted(json.loads(x["record"])["v"] for x in rejected if x["stage"] == "reduce") == \
        sorted(v for k, v in zip(keys, values) if k == 5 and not _is_poison(v))
    assert r.report.rejected == len(rejected)
    ref = _reference(table, lambda v: not _is_poison(v))
    ref.pop(5)
    assert _answer(out) == ref


def test_overwrite_partitions_keeps_the_rejects_of_the_partitions_it_keeps(tmp_path):
    os.makedirs(tmp_path / "in")
    rows = [{"date": d, "k": i % 3, "v": i + 1000 * n} for n, d in enumerate(["2026-11-01", "2026-11-02"])
            for i in range(1, 20)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "events.parquet")

    def picky(t: pa.Table) -> pa.Table:
        if pc.any(pc.equal(pc.subtract(t["v"], pc.multiply(pc.divide(t["v"], 1000), 1000)), 7)).as_py():
            raise ValueError("seven")
        return t

    job = Job("daily-rejects").map(picky).reduce(by=["date", "k"], aggs={"n": agg.count()})
    out = str(tmp_path / "out")
    kw = dict(partition_by=["date"], mode="overwrite-partitions", where="date = '{date}'", on_error="reject",
              max_rejected=5)
    for d in ("2026-11-01", "2026-11-02"):
        engine.run(job, str(tmp_path / "in"), out, date=d, **kw)
    assert sorted(json.loads(r)["v"] for r in engine.read_rejected(out)["record"].to_pylist()) == [7, 1007]
    engine.run(job, str(tmp_path / "in"), out, date="2026-11-01", force=True, **kw)   # the first day again
    doc = load_manifest(*filesystem(out)).doc
    assert sorted(json.loads(r)["v"] for r in engine.read_rejected(out)["record"].to_pylist()) == [7, 1007]
    assert len(doc["rejected"]) == 2                      # the replaced day's old rejects are gone
    assert {f"_rejected/{n}" for n in os.listdir(os.path.join(out, "_rejected"))} == {e["path"] for e in doc["rejected"]}
    engine.verify(out)


# ---------------------------------------------------------------------------------------------
# Regressions found in review: each failed before its fix


def _plain_input(directory, values, k_mod: int = 7) -> None:
    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.table({"k": pa.array([v % k_mod for v in values], pa.int64()),
                             "v": pa.array(values, pa.int64())}), os.path.join(directory, "a.parquet"))


def test_consecutive_bad_rows_at_a_batch_start_are_bad_records_not_a_bug(tmp_path):
    values = list(range(1000, 1100)) + list(range(2000, 6900))      # 100 bad rows first, then 4,900 good

    def strict(t):
        if pc.any(pc.and_(pc.greater_equal(t["v"], 1000), pc.less(t["v"], 1100))).as_py():
            raise ValueError("malformed record")
        return t

    _plain_input(tmp_path / "in", values)
    r = engine.run(Job("strict").map(strict), str(tmp_path / "in"), str(tmp_path / "out"), on_error="reject",
                   max_rejected=1000)
    assert r.report.rejected == 100 and r.report.output_rows == 4900


def test_bisected_pieces_keep_the_output_types(tmp_path):
    def enrich(t):
        vs = t["v"].to_pylist()
        if 13 in vs:
            raise ValueError("poison 13")
        return t.append_column("x", pa.array([v if v % 100 == 99 else None for v in vs]))   # few values: typed by them

    _plain_input(tmp_path / "in", list(range(1000)))
    for name, job in [("map-only", Job("m").map(enrich)), ("sort", Job("s").map(enrich).sort("v"))]:
        out = str(tmp_path / name)
        r = engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=10)
        assert r.report.rejected == 1 and engine.read(out).schema.field("x").type == pa.int64()


def test_fused_maps_after_sort_and_reduce_reject_single_output_rows(tmp_path):
    def drop13(t):
        if pc.any(pc.equal(t["v"], 13)).as_py():
            raise ValueError("thirteen")
        return t

    def ident_reduce(t):
        return t

    _plain_input(tmp_path / "in", list(range(1000)))
    for name, job in [("sort", Job("s").sort("v").map(drop13)),
                      ("reduce", Job("r").reduce(ident_reduce, by="k").map(drop13))]:
        out = str(tmp_path / name)
        r = engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=5)
        rows = engine.read_rejected(out).to_pylist()
        assert r.report.rejected == 1 and [json.loads(x["record"])["v"] for x in rows] == [13]
        assert rows[0]["stage"] == "map" and engine.read(out).num_rows == 999


def test_resume_under_another_policy_recomputes(tmp_path):
    _plain_input(tmp_path / "in", list(range(1000)))
    gate = str(tmp_path / "gate")

    def gated(t):
        if not os.path.exists(gate):
            raise MemoryError("not yet")
        return t.group_by("k").aggregate([("v", "sum")])

    def poison500(t):       # (past the rows the driver samples before the run)
        if pc.any(pc.equal(t["v"], 500)).as_py():
            raise ValueError("poison 500")
        return t

    job = Job("policy").map(poison500).reduce(gated, by="k")
    out = str(tmp_path / "out")
    with pytest.raises(engine.EngineError):
        engine.run(job, str(tmp_path / "in"), out, on_error="reject", max_rejected=10)
    open(gate, "w").close()
    with pytest.raises(engine.EngineError, match="poison 500"):    # fail mode: the bad row is not skipped
        engine.run(job, str(tmp_path / "in"), out, on_error="fail", resume=True)
    _no_commit(out)


def test_a_day_whose_rows_were_all_rejected_keeps_them(tmp_path):
    os.makedirs(tmp_path / "in")
    rows = [{"date": "2026-11-01", "k": i % 3, "bad": True} for i in range(5)] + \
           [{"date": "2026-11-02", "k": i % 3, "bad": False} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "events.parquet")

    def picky(t):
        if pc.any(pc.equal(t["bad"], True)).as_py():
            raise ValueError("broken record")
        return t

    job = Job("daily").map(picky).reduce(by=["date", "k"], aggs={"n": agg.count()})
    out = str(tmp_path / "out")
    kw = dict(partition_by=["date"], mode="overwrite-partitions", where="date = '{date}'", on_error="reject",
              max_rejected=10)
    for day in ("2026-11-01", "2026-11-02"):
        engine.run(job, str(tmp_path / "in"), out, date=day, **kw)
    assert engine.read_rejected(out).num_rows == 5


def test_map_row_offsets_skip_rows_the_csv_reader_set_aside(tmp_path):
    os.makedirs(tmp_path / "csv")
    lines = ["k,v"] + [f"{i % 7},{i}" for i in range(3000)]
    lines.insert(1 + 5, "1,2,3")             # data row 5: a field too many
    lines.insert(1 + 9, "1,notanint")        # data row 9: not a number (past the first rows, typed int)
    (tmp_path / "csv" / "a.csv").write_text("\n".join(lines) + "\n")

    def drop13(t):
        if pc.any(pc.equal(t["v"], 13)).as_py():
            raise ValueError("thirteen")
        return t

    out = str(tmp_path / "out")
    r = engine.run(Job("csv").map(drop13), str(tmp_path / "csv"), out, on_error="reject", max_rejected=10)
    assert r.report.rejected == 3
    data_rows = lines[1:]
    for x in engine.read_rejected(out).to_pylist():
        if x["stage"] == "map":
            assert data_rows[x["row"]] == "6,13"          # the file's own data row, the bad ones counted
        else:
            assert data_rows[x["row"]] in ("1,2,3", "1,notanint")
    assert engine.read(out).schema.field("v").type == pa.int64()


def test_fraction_counts_the_rows_readers_set_aside(tmp_path):
    os.makedirs(tmp_path / "csv")
    lines = ["k,v"] + [f"{i % 7},{i}" if i % 100 != 50 else "1,2,3" for i in range(1000)]   # 10 of 1,000 broken
    (tmp_path / "csv" / "a.csv").write_text("\n".join(lines) + "\n")
    r = engine.run(Job("csv").reduce(by="k", aggs={"n": agg.count()}), str(tmp_path / "csv"), str(tmp_path / "out"),
                   on_error="reject", max_rejected="1%")
    assert r.report.rejected == 10


def test_json_inference_in_reject_mode_keeps_optional_columns(tmp_path):
    os.makedirs(tmp_path / "js")
    lines = [json.dumps({"id": i, "name": f"n{i}"} | ({"score": i * 0.5} if i % 50 == 25 else {}))
             for i in range(3000)]
    lines[3] = json.dumps({"id": "three", "name": "n3"})        # a wrong type among the first lines
    (tmp_path / "js" / "a.jsonl").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    r = engine.run(Job("js").map(lambda t: t), str(tmp_path / "js"), out, format="json", on_error="reject",
                   max_rejected=5)
    got = engine.read(out)
    assert r.report.rejected == 1 and got.num_rows == 2999 and "score" in got.column_names


def test_publishing_a_staged_reject_run_keeps_its_rejected_rows_verifiable(tmp_path):
    _plain_input(tmp_path / "in", list(range(100)))

    def poison13(t):
        if pc.any(pc.equal(t["v"], 13)).as_py():
            raise ValueError("poison 13")
        return t

    job = Job("staged").map(poison13).reduce(by="k", aggs={"n": agg.count()})
    live, staged = str(tmp_path / "live"), str(tmp_path / "staged")
    engine.run(job, str(tmp_path / "in"), live, partition_by=["k"], on_error="reject", max_rejected=5)
    r = engine.run(job, str(tmp_path / "in"), live, partition_by=["k"], on_error="reject", max_rejected=5,
                   stage_to=staged, max_change=1.0, force=True, mode="overwrite-partitions")
    assert r.published is not None
    engine.verify(live)
    rows = engine.read_rejected(live).to_pylist()
    assert [json.loads(x["record"])["v"] for x in rows] == [13]


def test_a_network_error_in_reject_mode_retries_the_task_and_rejects_no_row(tmp_path):
    _plain_input(tmp_path / "in", list(range(1000)))
    calls = str(tmp_path / "calls")

    def flaky_lookup(t):
        with open(calls, "a") as f:
            f.write("x")
        if os.path.getsize(calls) == 2:          # the first task's call (after the driver's sample check) fails
            raise ConnectionRefusedError(111, "Connection refused")
        return t

    r = engine.run(Job("lookup").map(flaky_lookup), str(tmp_path / "in"), str(tmp_path / "out"), on_error="reject",
                   max_rejected=10)
    assert r.report.rejected == 0 and engine.read(str(tmp_path / "out")).num_rows == 1000
    assert os.path.getsize(calls) >= 3 and r.report.stages[0].retries == 1
