"""Sample data, jobs and single-process pyarrow references shared by the cluster and S3 tests.

This module lives next to the tests and is not importable by workers started from the dask CLIs:
the jobs below reach them only because the engine ships user code by value.
"""

from __future__ import annotations

import os
import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine import Job, agg

# ---------------------------------------------------------------------------------------------
# Data


def vocabulary(size: int, seed: int = 0) -> list[str]:
    """``size`` distinct mixed-case words (so lower-casing merges some of them) plus a few accented ones."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_letters))
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters, size=int(rng.integers(1, 9)))))
    return sorted(words) + ["café", "naïve", "Ünïcode", "ÉCOLE", "école"]


def text_lines(n_lines: int, vocab: list[str], rng: np.random.Generator) -> list[str]:
    """Lines of Zipf-distributed words separated by varied whitespace; some lines are empty."""
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    weights /= weights.sum()
    seps = np.array([" ", " ", " ", "  ", "\t", " \t "])
    lines = []
    for _ in range(n_lines):
        n = int(rng.integers(0, 14))
        if n == 0:
            lines.append("")
            continue
        idx = rng.choice(len(vocab), size=n, p=weights)
        sep = rng.choice(seps, size=n)
        lead = " " if rng.random() < 0.1 else ""
        lines.append(lead + "".join(vocab[i] + (sep[j] if j < n - 1 else "") for j, i in enumerate(idx)))
    return lines


def write_text_corpus(directory, files: int = 3, lines: int = 3000, seed: int = 0) -> list[str]:
    """``files`` text files of ``lines`` lines each (the last one without a trailing newline)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = vocabulary(800, seed)
    paths = []
    for i in range(files):
        path = os.path.join(str(directory), f"part-{i:03d}.txt")
        body = "\n".join(text_lines(lines, vocab, rng))
        if i != files - 1:
            body += "\n"
        with open(path, "w", encoding="utf-8") as f:
            f.write(body)
        paths.append(path)
    return paths


def keyed_table(rows: int, seed: int = 0) -> pa.Table:
    """Rows with two group keys, an integer and a float value, a sort key and a unique id."""
    rng = np.random.default_rng(seed)
    k1 = np.array([f"group-{i:02d}" for i in range(23)])
    return pa.table({
        "k1": pa.array(k1[rng.integers(0, len(k1), rows)]),
        "k2": pa.array(rng.integers(0, 9, rows).astype(np.int32)),
        "v": pa.array(rng.integers(-50, 1000, rows).astype(np.int64)),
        "w": pa.array(rng.normal(0.0, 10.0, rows)),
        "key": pa.array(rng.integers(0, 20_000, rows).astype(np.int64)),
        "id": pa.array(np.arange(rows, dtype=np.int64)),
    })


def write_parquet_parts(directory, table: pa.Table, files: int = 3, row_group_size: int = 2000) -> list[str]:
    """Write ``table`` as ``files`` Parquet files; each carries its file number in a ``file_id`` column."""
    os.makedirs(directory, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    paths = []
    for i in range(files):
        piece = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        piece = piece.append_column("file_id", pa.array(np.full(piece.num_rows, i, dtype=np.int32)))
        path = os.path.join(str(directory), f"part-{i:03d}.parquet")
        pq.write_table(piece, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def read_parquet_parts(paths: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths])


# ---------------------------------------------------------------------------------------------
# Jobs (module-level functions, closures and constants: all must travel by value)

MIN_VALUE = 0   # rows with v below this are dropped by the custom job's map


def _keep(t: pa.Table) -> pa.Array:
    return pc.greater_equal(t["v"], MIN_VALUE)


def to_partials(t: pa.Table) -> pa.Table:
    """Map: keep some rows, emit one partial (total, n, hi) per row."""
    t = t.filter(_keep(t))
    return pa.table({"k1": t["k1"], "k2": t["k2"], "total": t["v"],
                     "n": pa.array(np.ones(t.num_rows, dtype=np.int64)), "hi": t["w"]})


def _merge(t: pa.Table) -> pa.Table:
    g = t.group_by(["k1", "k2"], use_threads=False).aggregate([("total", "sum"), ("n", "sum"), ("hi", "max")])
    return pa.table({"k1": g["k1"], "k2": g["k2"], "total": g["total_sum"], "n": g["n_sum"], "hi": g["hi_max"]})


def merge_partials(t: pa.Table) -> pa.Table:
    """Combine: associative, commutative, schema-preserving."""
    return _merge(t)


def finish(t: pa.Table) -> pa.Table:
    """Reduce: merge the partials of each (k1, k2) and derive the mean."""
    m = _merge(t)
    return m.append_column("mean", pc.divide(m["total"].cast(pa.float64()), m["n"].cast(pa.float64())))


def custom_job(name: str = "custom") -> Job:
    return Job(name).map(to_partials).combine(merge_partials).reduce(finish, by=["k1", "k2"])


def sort_input(t: pa.Table) -> pa.Table:
    return pa.table({"key": t["key"], "id": t["id"], "half": pc.divide(t["key"], 2)})


def sort_job(name: str = "sorted") -> Job:
    return Job(name).map(sort_input).sort(by="key")


def lower_words(t: pa.Table) -> pa.Table:
    words = pc.list_flatten(pc.utf8_split_whitespace(pc.utf8_lower(t["text"])))
    # utf8_split_whitespace yields "" for empty lines and leading/trailing whitespace: not words.
    return pa.table({"word": words.filter(pc.not_equal(words, ""))})


def wordcount_job(name: str = "wordcount-test") -> Job:
    return Job(name).map(lower_words, columns=["text"]).reduce(by="word", aggs={"count": agg.count()})


# ---------------------------------------------------------------------------------------------
# Single-process references (pyarrow only)


def text_file_lines(path: str) -> list[str]:
    """The lines of a text file; a final newline ends the last line rather than starting an empty one."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def wordcount_reference(paths: list[str], *, keep_empty: bool = False) -> pa.Table:
    """Word counts of ``paths``; ``keep_empty`` also counts the "" tokens utf8_split_whitespace yields."""
    tables = []
    for p in paths:
        words = pc.list_flatten(pc.utf8_split_whitespace(pc.utf8_lower(pa.array(text_file_lines(p), pa.string()))))
        if not keep_empty:
            words = words.filter(pc.not_equal(words, ""))
        tables.append(pa.table({"word": words}))
    counts = pa.concat_tables(tables).group_by("word").aggregate([([], "count_all")])
    return pa.table({"word": counts["word"], "count": counts["count_all"]})


def custom_reference(table: pa.Table) -> pa.Table:
    t = table.filter(pc.greater_equal(table["v"], MIN_VALUE))
    g = t.group_by(["k1", "k2"]).aggregate([("v", "sum"), ([], "count_all"), ("w", "max")])
    total, n = g["v_sum"], g["count_all"]
    return pa.table({"k1": g["k1"], "k2": g["k2"], "total": total, "n": n, "hi": g["w_max"],
                     "mean": pc.divide(total.cast(pa.float64()), n.cast(pa.float64()))})


def sort_reference(table: pa.Table) -> pa.Table:
    return sort_input(table).sort_by([("key", "ascending"), ("id", "ascending")])


def rows_by(table: pa.Table, keys: list[str]) -> list[dict]:
    """Rows as dicts in key order (a canonical form for exact comparison)."""
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def assert_same_rows(actual: pa.Table, expected: pa.Table, keys: list[str]) -> None:
    """Exactly the same rows and column types (row order and chunking aside)."""
    assert actual.column_names == expected.column_names, (actual.column_names, expected.column_names)
    assert [f.type for f in actual.schema] == [f.type for f in expected.schema], (actual.schema, expected.schema)
    assert actual.num_rows == expected.num_rows, (actual.num_rows, expected.num_rows)
    assert rows_by(actual, keys) == rows_by(expected, keys)


def assert_globally_sorted(actual: pa.Table, expected: pa.Table) -> None:
    """A sort job's output, read in partition order, is ordered by key and holds exactly the expected rows."""
    keys = actual["key"].to_numpy()
    assert (np.diff(keys) >= 0).all(), "output is not globally ordered by key"
    assert_same_rows(actual, expected, ["key", "id"])
