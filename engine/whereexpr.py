"""A small, safe filter language for ``--where``: SQL's WHERE clause, parsed (never evaluated as code)
into a ``pyarrow.compute.Expression``.

Grammar (keywords in any case; ``or`` binds loosest, then ``and``, then ``not``)::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | predicate
    predicate  := "(" condition ")"
                | operand ( ("=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">=") operand
                          | ["not"] "in" "(" literal ("," literal)* ")"
                          | "is" ["not"] "null"
                          | ["not"] "between" operand "and" operand )?
    operand    := column | literal | "{date}"
    column     := name | "double-quoted name"          ("" inside quotes is one ")
    literal    := 'string' ('' inside is one ') | [-]integer | [-]float | true | false | null
                | date 'YYYY-MM-DD' | timestamp 'YYYY-MM-DD HH:MM:SS[.f]'

A bare operand is a predicate too (``where flag`` for a boolean column).

**Placeholders.** ``{date}`` is the run's logical date (``date=``), as a string literal, and is
replaced inside quoted strings too (``date = '{date}'`` and ``date = {date}`` are the same
condition). A condition using it without a logical date is an error.

**Null semantics are SQL's** (three-valued): a comparison with a null is null, ``and``/``or`` are
Kleene's, ``not null`` is null, and a row is kept only when the condition is true. So
``x not in (1, null)`` keeps no row and ``x in (1, 2)`` is null, not false, for a null ``x``. NaN is
an ordinary float that compares false with everything (DuckDB orders it above every number instead:
avoid NaN in conditions).

**Types.** With the input's ``schema``, each literal compared with a column takes the column's type:
a quoted string is read as a value of that type (``d >= '2026-11-01'`` compares dates for a
``date32`` column, ``k = '5'`` compares integers for an integer column, as DuckDB does), numbers
compare with numeric columns (exactly with decimals), and a number compared with a string, date or
boolean column is a :class:`SchemaError` that says to quote it. A name matches the column of that
name, else the one column whose name equals it ignoring case (as in SQL); a column the schema lacks
is a :class:`SchemaError` naming it and listing the schema's columns. Without a schema, literals keep
their own types (strings, ``int64``, ``double``, ``bool``).

Syntax errors are :class:`JobDefinitionError` with the character position and a caret line.

>>> parse_where("region = 'eu' and day >= {date}", date="2026-11-30")   # doctest: +SKIP
<pyarrow.compute.Expression ((region == "eu") and (day >= "2026-11-30"))>
"""

from __future__ import annotations

import datetime as _dt
import decimal
import difflib
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .errors import JobDefinitionError, SchemaError

_KEYWORDS = {"and", "or", "not", "in", "is", "null", "between", "true", "false"}
_PLACEHOLDERS = ("date",)

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<unterminated_string>'(?:[^']|'')*\Z)
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<unterminated_quoted>"(?:[^"]|"")*\Z)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_0-9.]))
  | (?P<bad_number>\.?\d[A-Za-z_0-9.]*)
  | (?P<placeholder>\{[^{}]*\})
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|=|<|>|\(|\)|,|-)
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str           # string, quoted, number, placeholder, word, keyword, op, end
    text: str           # the source text (for keywords: lower-cased)
    pos: int


# AST nodes: plain tuples, tagged by their first element.
#   ("column", name, pos) | ("literal", value, kind, source, pos) | ("compare", op, left, right, pos)
#   ("in", operand, [literals], negated, pos) | ("isnull", operand, negated) | ("between", operand, lo, hi, negated, pos)
#   ("and", left, right) | ("or", left, right) | ("not", inner) | ("bool", operand)


def _caret(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start:end if end >= 0 else len(text)]
    return f"\n  {line}\n  {' ' * (pos - start)}^"


def _syntax(text: str, pos: int, message: str) -> JobDefinitionError:
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    where = f"line {text.count(chr(10), 0, pos) + 1}, character {column}" if "\n" in text else f"character {column}"
    return JobDefinitionError(f"cannot parse the where condition at {where}: {message}{_caret(text, pos)}")


class _Parser:
    def __init__(self, text: str, date: str | None) -> None:
        self.text = text
        self.date = date
        self.tokens = self._tokenize()
        self.i = 0

    # -- tokens --------------------------------------------------------------------------------

    def _tokenize(self) -> list[_Token]:
        tokens: list[_Token] = []
        pos = 0
        text = self.text
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                extra = " (the where language has no arithmetic)" if text[pos] in "+*/%" else ""
                raise _syntax(text, pos, f"unexpected character {text[pos]!r}{extra}")
            kind = m.lastgroup
            assert kind is not None
            if kind == "unterminated_string":
                raise _syntax(text, pos, "this string is never closed (a quote inside a string is written '')")
            if kind == "unterminated_quoted":
                raise _syntax(text, pos, 'this quoted name is never closed (a quote inside a name is written "")')
            if kind == "bad_number":
                raise _syntax(text, pos, f"{m.group()!r} is not a number (a name cannot start with a digit: "
                              'quote it, "1st")')
            if kind == "word" and m.group().lower() in _KEYWORDS:
                tokens.append(_Token("keyword", m.group().lower(), pos))
            elif kind != "space":
                tokens.append(_Token(kind, m.group(), pos))
            pos = m.end()
        tokens.append(_Token("end", "", len(text)))
        return tokens

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def _next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _is(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def _accept(self, kind: str, text: str | None = None) -> _Token | None:
        return self._next() if self._is(kind, text) else None

    def _expect(self, kind: str, text: str, what: str) -> _Token:
        if not self._is(kind, text):
            raise self._error(f"expected {what}")
        return self._next()

    def _error(self, message: str, tok: _Token | None = None) -> JobDefinitionError:
        tok = tok or self.tok
        found = "the end of the condition" if tok.kind == "end" else repr(tok.text)
        return _syntax(self.text, tok.pos, f"{message}, found {found}")

    # -- grammar -------------------------------------------------------------------------------

    def parse(self):
        if self._is("end"):
            raise _syntax(self.text, 0, "the condition is empty")
        node = self._or()
        if not self._is("end"):
            raise self._error("expected 'and', 'or' or the end of the condition")
        return node

    def _or(self):
        node = self._and()
        while self._accept("keyword", "or"):
            node = ("or", node, self._and())
        return node

    def _and(self):
        node = self._not()
        while self._accept("keyword", "and"):
            node = ("and", node, self._not())
        return node

    def _not(self):
        if self._accept("keyword", "not"):
            return ("not", self._not())
        return self._predicate()

    def _predicate(self):
        if self._is("op", "("):
            # A parenthesised condition; "(a) = 1" is not in the language (operands are not grouped).
            self._next()
            node = self._or()
            self._expect("op", ")", "')' to close the parenthesis")
            return node
        left = self._operand()
        tok = self.tok
        if tok.kind == "op" and tok.text in ("=", "==", "!=", "<>", "<", "<=", ">", ">="):
            self._next()
            return ("compare", tok.text, left, self._operand(), tok.pos)
        negated = False
        if self._is("keyword", "not"):
            negated = True
            self._next()
            if not (self._is("keyword", "in") or self._is("keyword", "between")):
                raise self._error("expected 'in' or 'between' after 'not'")
        if self._accept("keyword", "in"):
            self._expect("op", "(", "'(' to open the list after 'in'")
            items = [self._literal("a literal in the list")]
            while self._accept("op", ","):
                items.append(self._literal("a literal after ','"))
            self._expect("op", ")", "',' or ')' in the list")
            return ("in", left, items, negated, tok.pos)
        if self._accept("keyword", "between"):
            low = self._operand()
            self._expect("keyword", "and", "'and' between the two bounds of 'between'")
            high = self._operand()
            return ("between", left, low, high, negated, tok.pos)
        if self._accept("keyword", "is"):
            is_not = bool(self._accept("keyword", "not"))
            self._expect("keyword", "null", "'null' after 'is'" + ("" if is_not else " (or 'is not null')"))
            return ("isnull", left, is_not)
        return ("bool", left)

    def _operand(self):
        tok = self.tok
        if tok.kind == "word":
            if tok.text.lower() in ("date", "timestamp") and self.tokens[self.i + 1].kind == "string":
                self._next()
                return self._typed(tok, self._next())
            self._next()
            return ("column", tok.text, tok.pos)
        if tok.kind == "quoted":
            self._next()
            name = tok.text[1:-1].replace('""', '"')
            if not name:
                raise _syntax(self.text, tok.pos, 'a quoted column name cannot be empty ("")')
            return ("column", name, tok.pos)
        if self._is("op", "("):
            raise self._error("expected a column or a value (parentheses group conditions, not values)")
        return self._literal("a column or a value")

    def _literal(self, what: str):
        tok = self.tok
        if tok.kind == "string":
            self._next()
            return ("literal", self._substitute(tok.text[1:-1].replace("''", "'"), tok), "string", tok.text, tok.pos)
        if tok.kind == "placeholder":
            self._next()
            name = tok.text[1:-1].strip()
            if name not in _PLACEHOLDERS:
                raise _syntax(self.text, tok.pos, f"unknown placeholder {tok.text}; the only one is {{date}}, "
                              "the run's logical date")
            return ("literal", self._date_value(tok), "string", tok.text, tok.pos)
        sign = ""
        if self._is("op", "-"):
            self._next()
            sign = "-"
            if not self._is("number"):
                raise self._error("expected a number after '-'")
        if self.tok.kind == "number":
            num = self._next()
            source = sign + num.text
            if re.fullmatch(r"-?\d+", source):
                value = int(source)
                if not -2 ** 63 <= value < 2 ** 63:
                    raise _syntax(self.text, num.pos, f"the integer {source} does not fit in 64 bits")
                return ("literal", value, "int", source, tok.pos)
            return ("literal", float(source), "float", source, tok.pos)
        if tok.kind == "keyword" and tok.text in ("true", "false", "null"):
            self._next()
            value = {"true": True, "false": False, "null": None}[tok.text]
            return ("literal", value, "null" if value is None else "bool", tok.text, tok.pos)
        if tok.kind == "word" and tok.text.lower() in ("date", "timestamp") and self.tokens[self.i + 1].kind == "string":
            self._next()
            return self._typed(tok, self._next())
        raise self._error(f"expected {what}")

    def _typed(self, word: _Token, string: _Token):
        text = self._substitute(string.text[1:-1].replace("''", "'"), string)
        kind = word.text.lower()
        target = pa.date32() if kind == "date" else pa.timestamp("us")
        try:
            value = pa.scalar(text).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise _syntax(self.text, string.pos, f"{text!r} is not a {kind} (write "
                          + ("'YYYY-MM-DD')" if kind == "date" else "'YYYY-MM-DD HH:MM:SS[.ffffff]')")) from None
        return ("literal", value, kind, f"{word.text} {string.text}", word.pos)

    def _date_value(self, tok: _Token) -> str:
        if self.date is None:
            raise JobDefinitionError(
                f"the where condition uses {{date}} (at character {tok.pos + 1}) but this run has no logical date; "
                "pass date='YYYY-MM-DD' (command line: --date YYYY-MM-DD)")
        return self.date

    def _substitute(self, value: str, tok: _Token) -> str:
        if "{date}" not in value:
            return value
        return value.replace("{date}", self._date_value(tok))


# ---------------------------------------------------------------------------------------------
# Compiling the tree into an Expression, with the schema's types


def _value_type(typ: pa.DataType) -> pa.DataType:
    return typ.value_type if pa.types.is_dictionary(typ) else typ


def _is_text(typ: pa.DataType) -> bool:
    return (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ))


def _is_numeric(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)


class _Compiler:
    """Turns the tree into an Expression. A literal compared with a column takes that column's type
    (the *target*: the column's name and type, known when a schema is given)."""

    def __init__(self, text: str, schema: pa.Schema | None, partial: bool = False) -> None:
        import pyarrow.compute as pc
        self.pc = pc
        self.text = text
        self.schema = schema
        self.partial = partial          # columns the schema lacks stay untyped names (no error)

    def compile(self, node):
        tag = node[0]
        if tag == "or":
            return self.compile(node[1]) | self.compile(node[2])
        if tag == "and":
            return self.compile(node[1]) & self.compile(node[2])
        if tag == "not":
            return ~self.compile(node[1])
        if tag == "compare":
            _, op, left, right, _ = node
            target = self._target(left, right)
            lhs, rhs = self._operand(left, target), self._operand(right, target)
            return {"=": lhs == rhs, "==": lhs == rhs, "!=": lhs != rhs, "<>": lhs != rhs,
                    "<": lhs < rhs, "<=": lhs <= rhs, ">": lhs > rhs, ">=": lhs >= rhs}[op]
        if tag == "between":
            _, operand, low, high, negated, _ = node
            target = self._target(operand, low, high)
            value = self._operand(operand, target)
            expr = (value >= self._operand(low, target)) & (value <= self._operand(high, target))
            return ~expr if negated else expr
        if tag == "isnull":
            value = self._operand(node[1], self._target(node[1]))
            return value.is_valid() if node[2] else value.is_null()
        if tag == "in":
            return self._in(node)
        if tag == "bool":
            operand = node[1]
            target = self._target(operand)
            if target is not None and not pa.types.is_boolean(_value_type(target[1])):
                raise SchemaError(f"the where condition uses column {target[0]!r} ({target[1]}) as a condition; only "
                                  f"a boolean column can stand alone: compare it, e.g. {target[0]} = ...")
            if operand[0] == "literal" and operand[2] not in ("bool", "null"):
                raise _syntax(self.text, operand[4], "a value alone is not a condition; compare it with a column")
            return self._operand(operand, ("", pa.bool_()) if operand[0] == "literal" else None)
        raise AssertionError(tag)  # pragma: no cover

    def _in(self, node):
        pc = self.pc
        _, operand, items, negated, pos = node
        target = self._target(operand)
        value = self._operand(operand, target)
        present = [item for item in items if item[2] != "null"]
        has_null = len(present) < len(items)
        scalars = [self._literal(item, target) for item in present]
        try:
            values = _common_array(scalars, None if target is None else _value_type(target[1]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"the values of the 'in' list at character {pos + 1} do not share one type: {exc}") from None
        null = pc.scalar(pa.scalar(None, pa.bool_()))
        # SQL: x in (...) is null, not false, when x is null or when the list holds a null and x is not in it.
        expr = value.isin(values) | (null if has_null else (value.is_null() & null))
        return ~expr if negated else expr

    # -- operands ------------------------------------------------------------------------------

    def _target(self, *nodes) -> tuple[str, pa.DataType] | None:
        """The first column among ``nodes`` with its type (checked against the schema), if any."""
        found = None
        for node in nodes:
            if node[0] == "column" and self.schema is not None:
                name = self._resolve(node)
                if name in self.schema.names:
                    found = found or (name, self.schema.field(name).type)
        return found

    def _resolve(self, node) -> str:
        """The schema's name for a column node: the name itself, else the one name equal to it
        ignoring case (SQL's, and DuckDB's, reading of names)."""
        assert self.schema is not None
        name = node[1]
        names = list(self.schema.names)
        if name in names:
            return name
        folded = [n for n in names if n.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        if self.partial and not folded:
            return name
        close = folded or difflib.get_close_matches(name, names, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SchemaError(f"the where condition names column {name!r}, which the input does not have{hint}; "
                          f"its columns are: {', '.join(names) or '(none)'}")

    def _operand(self, node, target: tuple[str, pa.DataType] | None):
        if node[0] == "column":
            return self.pc.field(self._resolve(node) if self.schema is not None else node[1])
        return self.pc.scalar(self._literal(node, target))

    def _literal(self, node, target: tuple[str, pa.DataType] | None) -> pa.Scalar:
        _, value, kind, source, pos = node
        if target is None:
            if isinstance(value, pa.Scalar):
                return value
            return pa.scalar(None) if kind == "null" else pa.scalar(value)
        name, typ = target
        typ = _value_type(typ)
        column = f"column {name!r} ({_kind(typ)})"
        if isinstance(value, pa.Scalar):            # date '…' / timestamp '…'
            if pa.types.is_timestamp(typ):
                return value.cast(pa.timestamp(typ.unit)).cast(typ)     # a zoned column: the literal is UTC
            return value
        if kind == "null":
            return pa.scalar(None, typ)
        if kind == "string":
            if _is_text(typ):
                return pa.scalar(value, typ)
            if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
                return pa.scalar(value.encode(), typ)
            return self._cast_text(value, typ, column, source, pos)
        if kind in ("int", "float"):
            if pa.types.is_decimal(typ):
                return pa.scalar(decimal.Decimal(source))     # exact: 0.1 is one tenth, as in SQL
            if _is_numeric(typ):
                return pa.scalar(value)
            fix = (f"write the value in quotes to compare text: '{source}'" if _is_text(typ) else
                   f"a {_kind(typ)} column compares with a quoted value{_example(typ)}")
            raise SchemaError(f"the where condition compares {column} with the number {source} (character "
                              f"{pos + 1}); {fix}")
        if kind == "bool":
            if pa.types.is_boolean(typ):
                return pa.scalar(value)
            raise SchemaError(f"the where condition compares {column} with {source} (character {pos + 1}); "
                              f"{source} only compares with boolean columns")
        raise AssertionError(kind)  # pragma: no cover

    def _cast_text(self, value: str, typ: pa.DataType, column: str, source: str, pos: int) -> pa.Scalar:
        try:
            if pa.types.is_boolean(typ):
                if value.strip().lower() not in ("true", "false"):
                    raise ValueError(value)
                return pa.scalar(value.strip().lower() == "true")
            if pa.types.is_timestamp(typ) and typ.tz is not None:
                try:
                    return pa.scalar(value).cast(typ)        # with an offset: '…+01:00' or '…Z'
                except pa.ArrowInvalid:
                    return pa.scalar(value).cast(pa.timestamp(typ.unit)).cast(typ)   # without: UTC
            if pa.types.is_integer(typ):
                return pa.scalar(value.strip()).cast(pa.int64())
            if pa.types.is_floating(typ):
                return pa.scalar(value.strip()).cast(pa.float64())
            return pa.scalar(value).cast(typ)
        except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise SchemaError(f"the where condition compares {column} with {source} (character {pos + 1}), which "
                              f"is not a value of that type{_example(typ)}") from None


def _kind(typ: pa.DataType) -> str:
    return "string" if _is_text(typ) else str(typ)


def _example(typ: pa.DataType) -> str:
    if pa.types.is_date(typ):
        return "; write dates as 'YYYY-MM-DD'"
    if pa.types.is_timestamp(typ):
        return "; write timestamps as 'YYYY-MM-DD HH:MM:SS[.ffffff]'"
    if pa.types.is_boolean(typ):
        return "; write true or false"
    if pa.types.is_integer(typ):
        return "; write an integer"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "; write a number"
    return ""


def _common_array(scalars: list[pa.Scalar], column_type: pa.DataType | None) -> pa.Array:
    """The value set of an ``in`` list: the column's type when every literal has it, the common
    numeric type of numbers (int64, or float64 when one is a float), else the literals' one type."""
    types = {s.type for s in scalars}
    if not scalars:
        return pa.array([], column_type or pa.null())
    if column_type is not None and types == {column_type}:
        return pa.array([s.as_py() for s in scalars], column_type)
    if len(types) == 1:
        return pa.array([s.as_py() for s in scalars], scalars[0].type)
    if types <= {pa.int64(), pa.float64()}:
        return pa.array([float(s.as_py()) for s in scalars], pa.float64())
    if all(pa.types.is_decimal(t) for t in types):
        return pa.array([s.as_py() for s in scalars])          # Arrow picks a precision and scale fitting all
    raise pa.ArrowTypeError("the list mixes " + ", ".join(sorted(str(t) for t in types)))


def parse_where(text: Any, schema: pa.Schema | None = None, *, date: str | _dt.date | None = None,
                partial: bool = False):
    """The ``pyarrow.compute.Expression`` of a where condition written in the language above.

    ``schema`` (the input's columns) types the literals and checks the column names and the types
    (an Arrow type error becomes a :class:`SchemaError`); ``date`` (``'YYYY-MM-DD'`` or a
    ``datetime.date``) is what ``{date}`` stands for. An ``Expression`` passes through unchanged.
    ``partial=True``: ``schema`` holds only some of the columns (a Hive input's partition columns,
    known before any file is opened): those are typed and matched ignoring case, the others stay as
    written and untyped, and nothing is checked.
    """
    import pyarrow.compute as pc
    if isinstance(text, pc.Expression):
        return text
    if not isinstance(text, str):
        raise JobDefinitionError(f"a where condition is a string or a pyarrow.compute.Expression, not "
                                 f"{type(text).__name__}")
    if isinstance(date, _dt.datetime):
        date = date.date().isoformat()
    elif isinstance(date, _dt.date):
        date = date.isoformat()
    tree = _Parser(text, date).parse()
    expr = _Compiler(text, schema, partial).compile(tree)
    if schema is not None and not partial:
        try:
            schema.empty_table().filter(expr)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
            raise SchemaError(f"the where condition {text!r} does not fit the input's column types: {exc}") from None
    return expr


__all__ = ["parse_where"]
