"""Word count: how many times each whitespace-separated, lower-cased word occurs in a text corpus.

    mapreduce run jobs/wordcount.py --input jobs/data/text --output out/wordcount
"""

import pyarrow as pa
import pyarrow.compute as pc

from engine import Job, agg


def words(t: pa.Table) -> pa.Table:
    """One row per word of every line (empty lines and surrounding whitespace yield no words)."""
    # ascii_split_whitespace: utf8_split_whitespace in pyarrow 26 can keep trailing whitespace in a last token.
    w = pc.list_flatten(pc.ascii_split_whitespace(pc.utf8_lower(t["text"])))
    return pa.table({"word": pc.filter(w, pc.not_equal(w, ""))})


job = Job("wordcount").map(words, columns=["text"]).reduce(by="word", aggs={"count": agg.count()})
