"""(temporary stand-in; replaced by the full module)"""
from __future__ import annotations
import urllib.parse
import pyarrow as pa
import pyarrow.compute as pc
DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_SAFE = set("\"#%'*/:=?\\{[]^")
def escape(text):
    return "".join(f"%{ord(c):02X}" if (c in _SAFE or ord(c) < 32 or ord(c) == 127) else c for c in text)
def unescape(text):
    return urllib.parse.unquote(text)
def format_value(v, typ):
    if v is None or v == "":
        return None
    return str(v)
def parse_value(text, typ):
    return pa.array([text], pa.string()).cast(typ)[0]
def partition_dir(columns, values):
    return "/".join(f"{escape(c)}={DEFAULT_PARTITION if values[c] is None else escape(values[c])}" for c in columns)
def split_by_partition(table, columns):
    keys = table.select(columns).to_pylist()
    groups = {}
    for i, k in enumerate(keys):
        vals = {c: format_value(k[c], None) for c in columns}
        groups.setdefault(partition_dir(columns, vals), (vals, []))[1].append(i)
    rest = [c for c in table.column_names if c not in columns]
    return [(d, vals, table.select(rest).take(pa.array(idx))) for d, (vals, idx) in sorted(groups.items())]
def check_partition_columns(schema, columns):
    pass
