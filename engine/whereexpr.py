"""(temporary stand-in; replaced by the full module)"""
from __future__ import annotations
import re
import pyarrow.compute as pc
_OPS = {"=": "__eq__", "==": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__"}
def parse_where(text, schema=None, *, date=None):
    if date is not None:
        text = text.replace("{date}", date)
    parts = [p.strip() for p in re.split(r"\band\b", text)]
    expr = None
    for p in parts:
        m = re.fullmatch(r"(\w+)\s*(==|=|!=|<=|>=|<|>)\s*'([^']*)'", p)
        e = getattr(pc.field(m.group(1)), _OPS[m.group(2)])(m.group(3))
        expr = e if expr is None else expr & e
    return expr
