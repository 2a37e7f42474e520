"""The replay simulator (benchmarks.replay) and the object-store shuffle cost model (benchmarks.objectstore).

The scheduler is checked against makespans worked out by hand; skew pieces are found in a real run's
report and checked against the rows of the hash partition they came from; the request counts of the
cost model are checked against a moto S3 server's log of a real run's shuffle.
"""

from __future__ import annotations

import base64
import json
import dask.config
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from benchmarks import objectstore, replay
from benchmarks.replay import ReplayError, Speculation, Stage, Task
from conftest import write_parts
from engine import Job, agg

def tasks(*costs: float, rows: int = 100) -> tuple[Task, ...]:
    return tuple(Task(i, c, rows_in=rows) for i, c in enumerate(costs))


# ---------------------------------------------------------------------------------------------
# The list scheduler, by hand


def test_list_scheduler_gives_each_task_to_the_first_free_slot():
    # 2 slots: A 0-3, B 0-3, A 3-5, B 3-5, A 5-7
    assert replay.stage_makespan(tasks(3, 3, 2, 2, 2), 2) == (7, 0)
    # 3 slots: A 0-3, B 0-3, C 0-2, C 2-4, A 3-5
    assert replay.stage_makespan(tasks(3, 3, 2, 2, 2), 3) == (5, 0)
    # more slots than tasks: the longest task
    assert replay.stage_makespan(tasks(3, 3, 2, 2, 2), 512) == (3, 0)
    assert replay.stage_makespan((), 8) == (0.0, 0)


def test_stages_run_one_after_another_plus_the_driver():
    stages = [Stage("r0-map", 0, "map", tasks(4, 4, 4, 4)), Stage("r0-reduce", 0, "reduce", tasks(1, 1, 5))]
    r = replay.replay(stages, 0.5, 2)
    # map: 2 waves of 4 s; reduce: A 0-1, B 0-1, A 1-6
    assert r.seconds == pytest.approx(0.5 + 8 + 6)
    assert r.stages == [("r0-map", 8), ("r0-reduce", 6)]
    assert replay.replay(stages, 0.5, 64).seconds == pytest.approx(0.5 + 4 + 5)


def test_speculation_copies_a_slow_task_at_its_expected_cost():
    spec = Speculation(multiplier=1.5, min_runtime=0.5, max_concurrent=2)
    # median 1, wait 1.5; the 10 s task's 100 rows should take 1 s: at 1.5 a copy runs 1.5-2.5 and wins
    assert replay.stage_makespan(tasks(1, 1, 1, 10), 4, spec) == (2.5, 1)
    assert replay.stage_makespan(tasks(1, 1, 1, 10), 4) == (10, 0)
    # a task that is big, not slow (ten times the rows), is left alone
    big = tasks(1, 1, 1) + (Task(3, 10, rows_in=1000),)
    assert replay.stage_makespan(big, 4, spec) == (10, 0)
    # a copy waits for a free slot and goes ahead of queued tasks: 2 slots; A: slow 0-10; B: 0-1, 1-2;
    # the copy takes B at 2 (2-3) and wins; the two tasks still queued run 3-4 on A and B
    assert replay.stage_makespan(tasks(10, 1, 1, 1, 1), 2, spec) == (4, 1)
    # at most max_concurrent copies at once: the second slow task waits for the first copy to end
    one = Speculation(1.5, 0.5, 1)
    assert replay.stage_makespan(tasks(10, 10, 1, 1, 1, 1), 8, one) == (3.5, 2)


def test_per_task_overhead_is_calibrated_on_the_runs_own_slots():
    stages = [Stage("r0-map", 0, "map", tasks(1, 1, 1, 1))]
    # 2 slots: two waves of (1 + o) seconds plus a 0.5 s driver make the measured 2.7 s when o = 0.1
    assert replay.calibrate(stages, 0.5, 2, 2.7) == pytest.approx(0.1, abs=1e-6)
    assert replay.calibrate(stages, 0.5, 2, 2.0) == 0.0
    assert replay.replay(replay.with_overhead(stages, 0.1), 0.5, 4).seconds == pytest.approx(1.6)


def test_stragglers_are_seeded_and_keep_their_unslowed_cost():
    stages = [Stage("r0-map", 0, "map", tasks(*[1.0] * 20))]
    slowed = replay.with_stragglers(stages, 0.1, 5, seed=3)
    assert slowed == replay.with_stragglers(stages, 0.1, 5, seed=3)
    costs = sorted(t.cost for t in slowed[0].tasks)
    assert costs == [1.0] * 18 + [5.0, 5.0]
    assert all(t.expected == 1.0 for t in slowed[0].tasks if t.cost == 5.0)
    with pytest.raises(ReplayError):
        replay.with_stragglers(stages, 0, 5)


def test_unsplit_fuses_the_pieces_of_a_split_partition_with_their_merge():
    # Round 0: hash partition 4 was split: a hot key in 2 shares (merged after), one isolated key, 2 sub-buckets.
    decisions = [{"action": "split", "round": 0, "partition": 4, "key": [7], "shares": 2},
                 {"action": "isolate", "round": 0, "partition": 4, "key": [9], "keys": [[9]]},
                 {"action": "split", "round": 0, "partition": 4, "sub_buckets": 2}]
    reduce_ = (Task(0, 1.0, 500, 400), Task(1, 1.0, 500, 400),
               Task(2, 3.0, 9000, 1), Task(3, 3.0, 9000, 1), Task(4, 2.0, 4000, 1),
               Task(5, 0.5, 300, 250), Task(6, 0.5, 300, 250), Task(7, 1.0, 500, 400))
    stages = [Stage("r0-map", 0, "map", tasks(2, 2)), Stage("r0-reduce", 0, "reduce", reduce_),
              Stage("r0-merge", 0, "reduce", (Task(8, 0.25, 2, 1),))]
    flat, merged = replay.unsplit(stages, decisions)
    assert merged == 1 and [s.name for s in flat] == ["r0-map", "r0-reduce"]
    assert [t.cost for t in flat[1].tasks] == [1.0, 1.0, 3 + 3 + 2 + 0.5 + 0.5 + 0.25, 1.0]
    assert flat[1].tasks[2].rows_in == 9000 + 9000 + 4000 + 300 + 300
    # 64 slots: as run, the longest piece (3) then the merge; whole, the partition's 9.25 s
    assert replay.replay(stages, 0, 64).seconds == pytest.approx(2 + 3 + 0.25)
    assert replay.replay(flat, 0, 64).seconds == pytest.approx(2 + 9.25)
    # pieces that cannot be told apart (sub-buckets alone look like any reduce task)
    with pytest.raises(ReplayError, match="hash partition 3"):
        replay.unsplit(stages[:2], [{"action": "split", "round": 0, "partition": 3, "sub_buckets": 2}])


# ---------------------------------------------------------------------------------------------
# A real run's report


def median_per_key(t: pa.Table) -> pa.Table:
    return agg.AggregationSet(["k"], {"med": agg.median("v")}).aggregate(t)


MEDIAN = Job("replay-median").reduce(median_per_key, by="k")


def test_replay_of_a_real_skewed_run_finds_each_split_partitions_rows(tmp_path, capsys):
    rng = np.random.default_rng(5)
    n = 60_000
    k = np.where(rng.random(n) < 0.5, rng.integers(0, 3, n), rng.integers(3, 6000, n))
    table = pa.table({"k": pa.array(k, pa.int64()), "v": rng.normal(0, 1, n)})
    write_parts(tmp_path / "in", table, parts=3)
    result = MEDIAN.run(str(tmp_path / "in"), str(tmp_path / "out"), skew=True, partition_size="64KiB")
    report_path = tmp_path / "report.json"
    report_path.write_text(result.report.to_json())

    rep = replay.load(str(report_path))
    stages, driver = replay.stages_of(rep)
    assert [s.name for s in stages] == ["r0-map", "r0-reduce"] and driver >= 0
    split = sorted({d["partition"] for d in rep.skew if d["action"] in ("isolate", "split") and "partition" in d})
    assert split, rep.skew                           # the three hot keys were given tasks of their own
    flat, merged = replay.unsplit(stages, rep.skew)
    assert merged == len(split)
    # each fused task read exactly the rows of its hash partition (counted from the input, independently)
    partitions = next(d["partitions"] for d in rep.skew if "partitions" in d and d["action"] != "plan")
    from engine.shuffle import partition_ids
    counts = np.bincount(partition_ids(ds.dataset(str(tmp_path / "in")).to_table(), ["k"], partitions),
                         minlength=partitions)
    fused = [t for t in flat[1].tasks if t not in stages[1].tasks]
    assert sorted(t.rows_in for t in fused) == sorted(int(counts[p]) for p in split)
    assert len(flat[1].tasks) == len(stages[1].tasks) - sum(
        len(replay._layouts(rep.skew, 0)[i][1]) + replay._layouts(rep.skew, 0)[i][2] - 1 for i in range(merged))
    # the replay at the run's own slot count is close to what was measured; more slots never take longer
    own = replay.replay(stages, driver, 2).seconds
    assert own <= rep.duration * 1.05
    times = [replay.replay(stages, driver, n).seconds for n in (2, 8, 64)]
    assert times == sorted(times, reverse=True)

    # the table: the run's own slot count (calibrated to its measured time) first, then the asked ones
    result = replay.scenarios(rep, [8, 64])
    assert [r["slots"] for r in result["rows"]] == [2, 8, 64]
    assert result["rows"][0]["as_run"].seconds == pytest.approx(rep.duration, rel=1e-3)
    assert replay.main([str(report_path), "--slots", "8,64"]) == 0
    text = capsys.readouterr().out
    assert "| 64 |" in text and "no skew handling s" in text


def test_load_picks_a_report_out_of_a_results_file(tmp_path):
    rep = {"job": "j", "run_id": "r" * 16, "fingerprint": "f", "status": "committed", "start": 0.0, "stop": 2.0,
           "stages": [{"name": "r0-map", "round": 0, "kind": "map", "tasks": 1, "start": 0.5, "stop": 1.5}],
           "tasks": [{"stage": "r0-map", "partition": 0, "attempt": 0, "worker": "w", "start": 0.5, "stop": 1.5}]}
    lines = [{"kind": "run"}, {"kind": "run_report", "suite": "skew", "case": "c", "system": "on", "report": rep},
             {"kind": "run_report", "suite": "skew", "case": "c", "system": "off", "report": rep}]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert replay.load(str(path), "skew:c", "off").job == "j"
    with pytest.raises(ReplayError, match="--system on"):
        replay.load(str(path), "skew:c")
    stages, driver = replay.stages_of(replay.load(str(path), "skew:c", "on"))
    assert stages[0].tasks == (Task(0, 1.0),) and driver == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# The object-store cost model against a real shuffle on moto S3


SUMS = Job("replay-sums").reduce(by="k", aggs={"n": agg.count(), "s": agg.sum("v")})


@pytest.mark.s3
def test_shuffle_request_counts_match_a_moto_s3_run(s3, tmp_path):
    from moto.moto_api import recorder
    rng = np.random.default_rng(1)
    n = 60_000
    table = pa.table({"k": pa.array(rng.integers(0, 3000, n), pa.int64()), "v": rng.random(n)})
    write_parts(tmp_path / "in", table, parts=4)
    shuffle = s3["url"]("replay-shuffle")
    prefix = "/" + shuffle.split("://", 1)[1] + "/"
    saved = recorder._location
    recorder._location = str(tmp_path / "requests.jsonl")
    recorder.reset_recording()
    recorder.start_recording()
    try:
        with dask.config.set({"engine.shuffle.max-partitions": 8}):
            result = SUMS.run(str(tmp_path / "in"), str(tmp_path / "out"), storage_options=s3["storage_options"],
                              shuffle_dir=shuffle, partition_size="16KiB", speculation=False)
    finally:
        recorder.stop_recording()
        recorder._location = saved
    seen = {"put": 0, "get": 0, "delete": 0, "other": 0}
    for line in (tmp_path / "requests.jsonl").read_text().splitlines():
        e = json.loads(line)
        path = e["url"].split("://", 1)[1].split("/", 1)[1].split("?")[0]
        path, query = "/" + path, e["url"].partition("?")[2]
        body = base64.b64decode(e["body"]) if e.get("body_encoded") else (e.get("body") or "").encode()
        if e["method"] == "POST" and query.startswith("delete"):
            seen["delete"] += prefix.strip("/").split("/", 1)[1].encode() in body
        elif not path.startswith(prefix):
            continue
        elif e["method"] == "PUT":
            seen["put"] += 1
        elif e["method"] == "GET" and any(h.lower() == "range" for h in e["headers"]):
            seen["get"] += 1
        else:
            seen["other"] += 1
    maps = next(s.tasks for s in result.report.stages if s.kind == "map")
    reducers = next(s.tasks for s in result.report.stages if s.kind == "reduce")
    assert maps == 4 and reducers >= 2
    map_bytes = max(1, result.report.stages[0].bytes_out // maps)
    model = objectstore.shuffle_requests(maps, reducers, map_bytes)
    assert (seen["put"], seen["get"], seen["delete"]) == (model.puts, model.gets, model.deletes), seen
    assert seen["other"] <= model.lists + model.heads
    priced = objectstore.price(model)
    assert priced["dollars"] == pytest.approx((model.puts + model.lists) * 0.005e-3
                                              + (model.gets + model.heads) * 0.4e-6)


def test_a_ten_thousand_square_shuffle_is_bound_by_the_per_prefix_get_rate():
    req = objectstore.shuffle_requests(10_000, 10_000, 128 << 20)
    assert req.gets == 100_000_000 and req.puts == 10_000 * (3 + 2)     # 128 MiB: 3 parts of 50 MiB
    p = objectstore.price(req, slots=512)
    assert p["read_rate_floor_s"] == pytest.approx(1e8 / 5500)
    assert p["read_s"] == p["read_rate_floor_s"] > p["read_latency_floor_s"]
    assert p["dollars"] == pytest.approx(1e8 * 0.4e-6 + 50_000 * 5e-6 + 3 * 5e-6 + 2 * 0.4e-6)
    # spread over 100 prefixes, the reducers' own latency is the bound
    spread = objectstore.price(req, slots=512, prefixes=100)
    assert spread["read_s"] == spread["read_latency_floor_s"] < p["read_s"] / 5
