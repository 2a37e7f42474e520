"""Inverted index: for every word, the sorted list of distinct documents that contain it.

The reduce builds a list per key, which no map-side combine could shrink in general, so this job
exercises the plain (non-combinable) reduce path: all rows of a word reach one reduce call.

Input: documents with ``doc`` and ``text`` columns (Parquet, JSON lines, CSV, ...).
Output: ``word``, ``docs`` (list<string>, sorted), ``n_docs``.
"""

import pyarrow as pa
import pyarrow.compute as pc

from engine import Job


def postings(t: pa.Table) -> pa.Table:
    """One (word, doc) row per word occurrence."""
    words = pc.utf8_split_whitespace(pc.utf8_lower(t["text"]))
    parents = pc.list_parent_indices(words)
    return pa.table({"word": pc.list_flatten(words), "doc": pc.take(t["doc"], parents)})


def index(t: pa.Table) -> pa.Table:
    """Group the postings of many words: distinct sorted documents per word."""
    pairs = t.group_by(["word", "doc"], use_threads=False).aggregate([]).sort_by([("word", "ascending"),
                                                                               ("doc", "ascending")])
    grouped = pairs.group_by("word", use_threads=False).aggregate([("doc", "list")])
    docs = grouped["doc_list"]
    return pa.table({"word": grouped["word"], "docs": docs, "n_docs": pc.list_value_length(docs).cast(pa.int64())})


job = Job("inverted-index").map(postings).reduce(index, by="word")
