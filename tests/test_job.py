"""The job API: building, validation at definition and plan time, fingerprints, explain."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import engine
from engine import Job, agg
from engine.errors import JobDefinitionError, SchemaError
from engine.plan import build_plan, validate_on_sample


def words(t):
    return pa.table({"word": pc.list_flatten(pc.utf8_split_whitespace(t["text"]))})


def test_builders_are_immutable_and_rounds_split_at_reduce():
    base = Job("j").map(words)
    wc = base.reduce(by="word", aggs={"n": agg.count()})
    chained = wc.map(lambda t: t).sort(by="n", descending=True)
    assert len(base.stages) == 1 and len(wc.stages) == 2
    assert [r.kind for r in wc.rounds] == ["aggregate"]
    assert [r.kind for r in chained.rounds] == ["aggregate", "sort"]
    assert [r.kind for r in chained.map(lambda t: t).rounds] == ["aggregate", "sort", "map"]
    assert chained.rounds[1].reduce.descending is True
    assert Job("empty").rounds[0].kind == "map"


@pytest.mark.parametrize("build, message", [
    (lambda: Job("j").reduce(lambda t: t), "by="),
    (lambda: Job("j").reduce(by="k"), "function or aggs"),
    (lambda: Job("j").reduce(lambda t: t, by="k", aggs={"n": agg.count()}), "not both"),
    (lambda: Job("j").reduce(by="k", aggs={"n": "count"}), "unknown aggregation"),
    (lambda: Job("j").reduce(by="k", aggs={}), "non-empty"),
    (lambda: Job("j").reduce(by=["k", "k"], aggs={"n": agg.count()}), "twice"),
    (lambda: Job("j").combine(lambda t: t).sort(by="k"), "combine cannot precede a sort"),
    (lambda: Job("j").combine(lambda t: t).reduce(by="k", aggs={"n": agg.count()}), "derives its own combine"),
    (lambda: Job("j").combine(lambda t: t).map(lambda t: t), "followed by a reduce"),
    (lambda: Job("j").map("not a function"), "function"),
    (lambda: Job(""), "name"),
    (lambda: Job("j").sort(by=[]), "by="),
])
def test_mistakes_are_caught_when_the_job_is_defined(build, message):
    with pytest.raises(JobDefinitionError, match=message):
        build()


def test_trailing_combine_is_caught_when_planned():
    job = Job("j").combine(lambda t: t)
    with pytest.raises(JobDefinitionError, match="no reduce"):
        job.rounds


def test_missing_key_column_is_named_with_the_columns_the_map_output_has():
    plan = build_plan(Job("j").map(words).reduce(by="wrd", aggs={"n": agg.count()}), None)
    with pytest.raises(SchemaError) as exc:
        validate_on_sample(plan, pa.table({"text": ["a b", "c"]}))
    assert "'wrd'" in str(exc.value) and "['word']" in str(exc.value) and "round 1" in str(exc.value)


def test_combine_that_changes_the_schema_is_rejected():
    job = (Job("j").map(words)
           .combine(lambda t: t.group_by("word").aggregate([([], "count_all")]))
           .reduce(lambda t: t, by="word"))
    with pytest.raises(SchemaError, match="combine changed the schema"):
        validate_on_sample(build_plan(job, None), pa.table({"text": ["a b"]}))


def test_aggregation_on_missing_or_wrong_type_column_is_named():
    job = Job("j").reduce(by="k", aggs={"m": agg.mean("nope")})
    with pytest.raises(SchemaError, match="nope"):
        validate_on_sample(build_plan(job, None), pa.table({"k": [1], "v": [1.0]}))
    job = Job("j").reduce(by="k", aggs={"m": agg.mean("s")})
    with pytest.raises(SchemaError, match="'s'"):
        validate_on_sample(build_plan(job, None), pa.table({"k": [1], "s": ["x"]}))


def test_map_that_raises_on_the_sample_fails_early_with_context():
    def broken(t):
        raise KeyError("colx")
    with pytest.raises(JobDefinitionError, match="map function 1.*KeyError"):
        validate_on_sample(build_plan(Job("j").map(broken), None), pa.table({"a": [1]}))


def test_map_returning_a_non_table_is_rejected():
    with pytest.raises(SchemaError, match="must return a pyarrow Table"):
        validate_on_sample(build_plan(Job("j").map(lambda t: t.to_pylist()), None), pa.table({"a": [1]}))


def test_fingerprint_is_stable_and_sensitive_to_code_and_parameters():
    a = Job("wc").map(words).reduce(by="word", aggs={"n": agg.count()})
    b = Job("wc").map(words).reduce(by="word", aggs={"n": agg.count()})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != Job("wc2").map(words).reduce(by="word", aggs={"n": agg.count()}).fingerprint()
    assert a.fingerprint() != Job("wc").map(words).reduce(by="word", aggs={"c": agg.count()}).fingerprint()
    assert a.fingerprint() != Job("wc").map(lambda t: t).reduce(by="word", aggs={"n": agg.count()}).fingerprint()

    def make(threshold):
        return Job("f").map(lambda t: t.filter(pc.greater(t["v"], threshold)))
    assert make(1).fingerprint() != make(2).fingerprint()   # closure values count


def test_explain_shows_rounds_stages_and_graph(tmp_path):
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a b", "b c"]}), tmp_path / "x.parquet")
    job = Job("wc").map(words).reduce(by="word", aggs={"n": agg.count()}).sort(by="n")
    text = job.explain(str(tmp_path))
    assert "Job 'wc': 2 rounds" in text
    assert "round 1 (aggregate by ['word'])" in text and "round 2 (sort by ['n'])" in text
    assert "1 map tasks" in text and "dask graph" in text


def test_public_surface_is_pinned():
    assert set(engine.__all__) >= {"Job", "agg", "run", "read", "verify", "RunResult", "RunReport"}
    for name in engine.__all__:
        assert hasattr(engine, name), name
    for fn in ("count", "sum", "min", "max", "mean", "var", "std", "count_distinct", "approx_distinct",
               "top_k", "first", "last", "median", "quantile"):
        assert callable(getattr(agg, fn)), fn
    import inspect
    params = list(inspect.signature(engine.run).parameters)
    assert params[:13] == ["job", "input", "output", "cluster", "storage_options", "mode", "speculation", "skew",
                           "shuffle_dir", "partition_size", "force", "report", "format"][:13]
    assert list(inspect.signature(engine.read).parameters)[:3] == ["path", "storage_options", "verify"]
    assert list(inspect.signature(engine.verify).parameters)[:2] == ["path", "storage_options"]
