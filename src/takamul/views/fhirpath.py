"""A compact FHIRPath compiler for the subset that SQL on FHIR v2 views use.

Each expression is parsed once and compiled into nested Python closures over plain JSON values
(``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` as ``orjson`` returns them), so that
evaluating a view over a million resources costs a few closure calls per column instead of a
parse and a tree walk per resource. ``fhirpathpy`` parses with ANTLR and wraps every node; it is
general but an order of magnitude slower on the paths views use.

FHIR type information is used where it matters and is cheap:

* choice elements (``value[x]``) are resolved from the JSON key suffix (``valueQuantity``), and
  ``x.ofType(T)`` right after a navigation to ``x`` compiles to a direct lookup of ``xT``;
* date, dateTime and time values reached through a typed key or a literal are ``str``
  subclasses (:class:`FPDate`, :class:`FPDateTime`, :class:`FPTime`), so they still compare and
  serialise as strings but temporal comparisons and ``lowBoundary()`` know their precision.

Primitive extensions (``_birthDate``) are not navigated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache, lru_cache
from typing import Any

import orjson

__all__ = [
    "CompiledPath",
    "Env",
    "FPDate",
    "FPDateTime",
    "FPQuantity",
    "FPTime",
    "FhirPathError",
    "FhirPathEvalError",
    "FhirPathSyntaxError",
    "compile_path",
    "evaluate",
    "static_type",
]

Collection = list[Any]
Node = tuple[Any, ...]


class FhirPathError(Exception):
    """An expression that cannot be compiled (syntax, unknown function or variable)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message if position is None else f"{message} (at character {position})")


class FhirPathSyntaxError(FhirPathError):
    pass


class FhirPathEvalError(FhirPathError):
    """An expression that failed on a particular input (e.g. a comparison of two collections)."""


class Env:
    """The evaluation context: the resource, ``%rowIndex`` and ``$index``.

    One instance is reused for every resource of a run; the view evaluator sets the fields.
    """

    __slots__ = ("index", "resource", "row_index")

    def __init__(self, resource: Any = None, row_index: int = 0) -> None:
        self.resource = resource
        self.row_index = row_index
        self.index = 0


Fn = Callable[[Collection, Env], Collection]


class FPDate(str):
    """A FHIR ``date`` (or FHIRPath Date) value: a string that knows its type."""

    __slots__ = ()


class FPDateTime(str):
    """A FHIR ``dateTime`` or ``instant`` value."""

    __slots__ = ()


class FPTime(str):
    """A FHIR ``time`` value."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class FPQuantity:
    """A FHIRPath quantity literal such as ``4 days`` or ``10 'mg'``."""

    value: float | int
    unit: str


_TEMPORAL = (FPDate, FPDateTime, FPTime)
_TEMPORAL_WRAP: dict[str, type[str]] = {
    "date": FPDate,
    "dateTime": FPDateTime,
    "instant": FPDateTime,
    "time": FPTime,
    "Date": FPDate,
    "DateTime": FPDateTime,
    "Time": FPTime,
}

# --------------------------------------------------------------------------------------------
# FHIR type knowledge, derived once from the R4 definitions the server runs on.


@cache
def _type_tables() -> tuple[frozenset[str], dict[str, str], frozenset[str], frozenset[str]]:
    """(choice element names, JSON key suffix -> type code, complex type names, resource types)."""
    from takamul.fhir.definitions import definitions

    defs = definitions()
    choice: set[str] = set()
    for typedef in defs.types.values():
        for el in typedef.elements.values():
            if el.is_choice:
                choice.add(el.name)
    suffixes = {}
    complex_types = set()
    for name, typedef in defs.types.items():
        if typedef.kind in ("primitive-type", "complex-type"):
            suffixes[name[0].upper() + name[1:]] = name
        if typedef.kind == "complex-type":
            complex_types.add(name)
    return frozenset(choice), suffixes, frozenset(complex_types), defs.resource_types


STRING_TYPES = frozenset(
    {
        "string",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "markdown",
        "base64Binary",
        "xhtml",
        "String",
    }
)
INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt", "integer64", "Integer"})
DECIMAL_TYPES = frozenset({"decimal", "Decimal"})
BOOLEAN_TYPES = frozenset({"boolean", "Boolean"})

# --------------------------------------------------------------------------------------------
# Lexer

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<time>@T\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)
  | (?P<date>@\d{4}(?:-\d{2}(?:-\d{2})?)?
        (?:T(?:\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<bq>`(?:[^`\\]|\\.)*`)
  | (?P<ext>%(?:[A-Za-z_][A-Za-z0-9_\-]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<special>\$(?:this|index|total))
  | (?P<op><=|>=|!=|!~|[-+*/&|=~<>.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r"}
_ESCAPES["t"] = "\t"


def _unescape(body: str, pos: int) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise FhirPathSyntaxError(f"invalid escape '\\{nxt}' in a string", pos)
    return "".join(out)


@dataclass(slots=True)
class _Token:
    kind: str  # num | str | date | time | id | ext | special | op | eof
    text: str
    pos: int
    value: Any = None


def _tokenize(src: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if m is None:
            if src[pos] in "'`":
                raise FhirPathSyntaxError("unterminated string or identifier", pos)
            raise FhirPathSyntaxError(f"unexpected character {src[pos]!r}", pos)
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "ws":
            pos = m.end()
            continue
        tok = _Token(kind, text, pos)
        if kind == "str":
            tok.value = _unescape(text[1:-1], pos)
        elif kind == "bq":
            tok.kind = "id"
            tok.value = _unescape(text[1:-1], pos)
        elif kind == "id":
            tok.value = text
        elif kind == "ext":
            body = text[1:]
            tok.value = _unescape(body[1:-1], pos) if body[:1] in ("`", "'") else body
        tokens.append(tok)
        pos = m.end()
    tokens.append(_Token("eof", "", len(src)))
    return tokens


# --------------------------------------------------------------------------------------------
# Parser (precedence climbing, FHIRPath operator precedence from tightest to loosest)

_BINARY_BP = {
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
    "+": 9,
    "-": 9,
    "&": 9,
    "is": 8,
    "as": 8,
    "|": 7,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "in": 4,
    "contains": 4,
    "and": 3,
    "or": 2,
    "xor": 2,
    "implies": 1,
}
_WORD_OPS = frozenset(k for k in _BINARY_BP if k.isalpha())
_CALENDAR_UNITS = frozenset(
    {
        "year",
        "years",
        "month",
        "months",
        "week",
        "weeks",
        "day",
        "days",
        "hour",
        "hours",
        "minute",
        "minutes",
        "second",
        "seconds",
        "millisecond",
        "milliseconds",
    }
)


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens = _tokenize(src)
        self.i = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> _Token:
        tok = self.peek()
        if tok.kind != "op" or tok.text != text:
            found = "end of expression" if tok.kind == "eof" else repr(tok.text)
            raise FhirPathSyntaxError(f"expected '{text}', found {found}", tok.pos)
        return self.advance()

    def parse(self) -> Node:
        if self.peek().kind == "eof":
            raise FhirPathSyntaxError("empty expression", 0)
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "eof":
            raise FhirPathSyntaxError(f"unexpected {tok.text!r}", tok.pos)
        return node

    def _binary_op(self, tok: _Token) -> str | None:
        if tok.kind == "op" and tok.text in _BINARY_BP:
            return tok.text
        if tok.kind == "id" and tok.text in _WORD_OPS:
            return tok.text
        return None

    def expression(self, min_bp: int) -> Node:
        left = self.unary()
        while True:
            op = self._binary_op(self.peek())
            if op is None:
                break
            bp = _BINARY_BP[op]
            if bp <= min_bp:
                break
            self.advance()
            if op in ("is", "as"):
                left = ("typeop", op, left, self.type_specifier())
                continue
            right = self.expression(bp)
            left = ("bin", op, left, right)
        return left

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("+", "-"):
            self.advance()
            operand = self.unary()
            return ("neg", operand) if tok.text == "-" else operand
        return self.postfix(self.term())

    def type_specifier(self) -> str:
        tok = self.advance()
        if tok.kind != "id":
            raise FhirPathSyntaxError("expected a type name", tok.pos)
        name = str(tok.value)
        while self.peek().kind == "op" and self.peek().text == "." and self.peek(1).kind == "id":
            self.advance()
            name = str(self.advance().value)  # drop the namespace (FHIR., System.)
        return name

    def arguments(self) -> list[Node]:
        self.expect("(")
        args: list[Node] = []
        if self.peek().kind == "op" and self.peek().text == ")":
            self.advance()
            return args
        while True:
            args.append(self.expression(0))
            tok = self.peek()
            if tok.kind == "op" and tok.text == ",":
                self.advance()
                continue
            self.expect(")")
            return args

    def postfix(self, node: Node) -> Node:
        while True:
            tok = self.peek()
            if tok.kind == "op" and tok.text == ".":
                self.advance()
                name_tok = self.advance()
                if name_tok.kind != "id":
                    raise FhirPathSyntaxError("expected a name after '.'", name_tok.pos)
                nxt = self.peek()
                if nxt.kind == "op" and nxt.text == "(":
                    node = ("call", node, name_tok.value, self.arguments(), name_tok.pos)
                else:
                    node = ("member", node, name_tok.value)
            elif tok.kind == "op" and tok.text == "[":
                self.advance()
                index = self.expression(0)
                self.expect("]")
                node = ("index", node, index)
            else:
                return node

    def term(self) -> Node:
        tok = self.advance()
        kind = tok.kind
        if kind == "num":
            value: int | float = float(tok.text) if "." in tok.text else int(tok.text)
            nxt = self.peek()
            if nxt.kind == "str":
                self.advance()
                return ("lit", [FPQuantity(value, nxt.value)])
            if nxt.kind == "id" and nxt.text in _CALENDAR_UNITS:
                self.advance()
                return ("lit", [FPQuantity(value, nxt.text)])
            return ("lit", [value])
        if kind == "str":
            return ("lit", [tok.value])
        if kind == "date":
            text = tok.text[1:]
            if "T" in text:
                return ("lit", [FPDateTime(text[:-1] if text.endswith("T") else text)])
            return ("lit", [FPDate(text)])
        if kind == "time":
            return ("lit", [FPTime(tok.text[2:])])
        if kind == "ext":
            return ("var", tok.value, tok.pos)
        if kind == "special":
            return {"$this": ("this",), "$index": ("dollar_index",)}.get(
                tok.text, ("dollar_total", tok.pos)
            )
        if kind == "id":
            if tok.text in ("true", "false") and tok.text == tok.value:
                return ("lit", [tok.text == "true"])
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text == "(":
                return ("call", None, tok.value, self.arguments(), tok.pos)
            return ("member", None, tok.value)
        if kind == "op" and tok.text == "(":
            node = self.expression(0)
            self.expect(")")
            return node
        if kind == "op" and tok.text == "{":
            self.expect("}")
            return ("lit", [])
        found = "end of expression" if kind == "eof" else repr(tok.text)
        raise FhirPathSyntaxError(f"unexpected {found}", tok.pos)


def parse(src: str) -> Node:
    """The syntax tree of ``src``; raises :class:`FhirPathSyntaxError`."""
    return _Parser(src).parse()


# --------------------------------------------------------------------------------------------
# Value helpers


def _is_number(v: Any) -> bool:
    t = type(v)
    return t is int or t is float or t is Decimal


def _identity(focus: Collection, env: Env) -> Collection:
    return focus


def _extend_value(out: Collection, v: Any) -> None:
    if type(v) is list:
        if None in v:  # null placeholders of primitive arrays that carry extensions
            out.extend(x for x in v if x is not None)
        else:
            out.extend(v)
    elif v is not None:
        out.append(v)


def _choice_into(d: dict[str, Any], name: str, out: Collection) -> None:
    """Append the value of the choice element ``name[x]`` of ``d``, found by its key suffix."""
    suffixes = _type_tables()[1]
    n = len(name)
    for key, v in d.items():
        if len(key) > n and key.startswith(name):
            tcode = suffixes.get(key[n:])
            if tcode is not None:
                wrap = _TEMPORAL_WRAP.get(tcode)
                if wrap is not None and type(v) is str:
                    out.append(wrap(v))
                else:
                    _extend_value(out, v)


def _navigate(items: Collection, name: str, choice: bool) -> Collection:
    out: Collection = []
    for it in items:
        if type(it) is dict:
            v = it.get(name)
            if v is None:
                if choice:
                    _choice_into(it, name, out)
            elif type(v) is list:
                if None in v:
                    out.extend(x for x in v if x is not None)
                else:
                    out.extend(v)
            else:
                out.append(v)
    return out


def _key(v: Any) -> Any:
    """A hashable identity for distinct(), union and friends (booleans stay apart from 1/0)."""
    if type(v) is dict or type(v) is list:
        return ("j", orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    if type(v) is bool:
        return ("b", v)
    if _is_number(v):
        return ("n", v)
    return (type(v).__name__, v)


def _distinct(items: Collection) -> Collection:
    seen: set[Any] = set()
    out = []
    for v in items:
        k = _key(v)
        if k not in seen:
            seen.add(k)
            out.append(v)
    return out


def _singleton(coll: Collection, what: str) -> Any:
    if not coll:
        return None
    if len(coll) == 1:
        return coll[0]
    raise FhirPathEvalError(f"{what} expects a single item, got a collection of {len(coll)}")


def _to_bool(coll: Collection, what: str) -> bool | None:
    """FHIRPath singleton evaluation of a collection where a Boolean is expected."""
    if not coll:
        return None
    if len(coll) == 1:
        v = coll[0]
        return v if type(v) is bool else True
    raise FhirPathEvalError(f"{what} expects a single boolean, got a collection of {len(coll)}")


# Temporal values ------------------------------------------------------------------------------

_DT_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?"
    r"(?:T(\d{2})(?::(\d{2})(?::(\d{2}(?:\.\d+)?))?)?)?(Z|[+-]\d{2}:\d{2})?$"
)
_TIME_RE = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2}(?:\.\d+)?))?)?$")


def _parse_temporal(v: Any) -> tuple[str, list[float], int | None] | None:
    """('dt' | 'time', components at their precision, timezone offset in minutes)."""
    if not isinstance(v, str):
        return None
    if type(v) is FPTime or (type(v) is not FPDateTime and type(v) is not FPDate and ":" in v):
        m = _TIME_RE.match(v)
        if m:
            return "time", [float(g) for g in m.groups() if g is not None], None
    m = _DT_RE.match(v)
    if not m:
        return None
    parts = [float(g) for g in m.groups()[:6] if g is not None]
    tz = m.group(7)
    offset = None
    if tz is not None:
        offset = 0 if tz == "Z" else (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 60 + int(tz[4:]))
    return "dt", parts, offset


def _to_utc(parts: list[float], offset: int) -> list[float]:
    year, month, day, hour = (int(p) for p in parts[:4])
    minute = int(parts[4]) if len(parts) > 4 else 0
    moment = datetime(year, month, day, hour, minute) - timedelta(minutes=offset)
    shifted = [moment.year, moment.month, moment.day, moment.hour, moment.minute]
    return [float(x) for x in shifted[: min(len(parts), 5)]] + parts[5:]


def _temporal_cmp(a: Any, b: Any) -> int | str | None:
    """-1/0/1, None when the precisions make the answer unknown, 'nan' if not comparable."""
    pa, pb = _parse_temporal(a), _parse_temporal(b)
    if pa is None or pb is None or pa[0] != pb[0]:
        return "nan"
    ca, cb = pa[1], pb[1]
    if pa[2] is not None and pb[2] is not None and len(ca) >= 4 and len(cb) >= 4:
        try:
            ca, cb = _to_utc(ca, pa[2]), _to_utc(cb, pb[2])
        except ValueError:
            return "nan"
    for x, y in zip(ca, cb, strict=False):
        if x != y:
            return -1 if x < y else 1
    return 0 if len(ca) == len(cb) else None


def _eq_item(a: Any, b: Any) -> bool | None:
    ta, tb = type(a), type(b)
    if ta is tb and (ta is str or ta is int or ta is bool):
        return bool(a == b)
    if isinstance(a, _TEMPORAL) or isinstance(b, _TEMPORAL):
        c = _temporal_cmp(a, b)
        if c == "nan":
            return isinstance(a, str) and isinstance(b, str) and str(a) == str(b)
        return None if c is None else c == 0
    if ta is bool or tb is bool:
        return False
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if ta is FPQuantity and tb is FPQuantity:
        return bool(a.value == b.value and a.unit == b.unit)
    return bool(ta is tb and a == b)


def _normalize_str(s: str) -> str:
    return " ".join(s.split()).casefold()


def _equiv_item(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        if isinstance(a, _TEMPORAL) or isinstance(b, _TEMPORAL):
            c = _temporal_cmp(a, b)
            if c != "nan":
                return c == 0
        return _normalize_str(a) == _normalize_str(b)
    if _is_number(a) and _is_number(b) and type(a) is not bool and type(b) is not bool:
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-9)
    return _eq_item(a, b) is True


def _cmp_items(a: Any, b: Any) -> int | None:
    if isinstance(a, _TEMPORAL) or isinstance(b, _TEMPORAL):
        c = _temporal_cmp(a, b)
        if c != "nan":
            return c if c is None or isinstance(c, int) else None
    if type(a) is bool or type(b) is bool:
        return None
    if _is_number(a) and _is_number(b):
        return -1 if a < b else (1 if a > b else 0)
    if isinstance(a, str) and isinstance(b, str):
        return -1 if a < b else (1 if a > b else 0)
    if type(a) is FPQuantity and type(b) is FPQuantity and a.unit == b.unit:
        return -1 if a.value < b.value else (1 if a.value > b.value else 0)
    return None


def _format_number(v: Any) -> str:
    return repr(v) if type(v) is float else str(v)


def _to_string(v: Any) -> str | None:
    if isinstance(v, str):
        return str(v)
    if type(v) is bool:
        return "true" if v else "false"
    if _is_number(v):
        return _format_number(v)
    if type(v) is FPQuantity:
        return f"{_format_number(v.value)} '{v.unit}'"
    return None


# Boundaries -----------------------------------------------------------------------------------

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _month_days(year: int, month: int) -> int:
    if month == 2 and (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return 29
    return _DAYS_IN_MONTH[month - 1]


def _decimal_boundary(v: Any, high: bool, precision: int | None) -> Any:
    d = Decimal(repr(v)) if type(v) is float else Decimal(int(v))
    exponent = d.as_tuple().exponent
    if not isinstance(exponent, int):
        return None
    half = Decimal(5).scaleb(exponent - 1)
    result = d + half if high else d - half
    if precision is not None:
        result = result.quantize(Decimal(1).scaleb(-precision))
    return float(result)


def _date_boundary(text: str, high: bool) -> str | None:
    m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", text)
    if not m:
        return None
    year = int(m.group(1))
    month = int(m.group(2)) if m.group(2) else (12 if high else 1)
    last = _month_days(year, month) if high else 1
    day = int(m.group(3)) if m.group(3) else last
    return f"{year:04d}-{month:02d}-{day:02d}"


def _datetime_boundary(text: str, high: bool) -> str | None:
    m = _DT_RE.match(text)
    if not m:
        return None
    date_part = _date_boundary(text.split("T", 1)[0], high)
    if date_part is None:
        return None
    hour, minute, second, tz = m.group(4), m.group(5), m.group(6), m.group(7)
    hh = hour or ("23" if high else "00")
    mm = minute or ("59" if high else "00")
    if second is None:
        ss = "59.999" if high else "00.000"
    elif "." in second:
        whole, frac = second.split(".")
        ss = f"{whole}.{(frac + ('999' if high else '000'))[:3]}"
    else:
        ss = f"{second}.{'999' if high else '000'}"
    # Without a time zone the instant could be anywhere from UTC+14 to UTC-12.
    zone = tz or ("-12:00" if high else "+14:00")
    return f"{date_part}T{hh}:{mm}:{ss}{zone}"


def _time_boundary(text: str, high: bool) -> str | None:
    m = _TIME_RE.match(text)
    if not m:
        return None
    hh, mm, second = m.group(1), m.group(2), m.group(3)
    mm = mm or ("59" if high else "00")
    if second is None:
        ss = "59.999" if high else "00.000"
    elif "." in second:
        whole, frac = second.split(".")
        ss = f"{whole}.{(frac + ('999' if high else '000'))[:3]}"
    else:
        ss = f"{second}.{'999' if high else '000'}"
    return f"{hh}:{mm}:{ss}"


def _boundary(v: Any, high: bool, precision: int | None) -> Any:
    if type(v) is bool:
        return None
    if _is_number(v):
        return _decimal_boundary(v, high, precision)
    if type(v) is FPTime:
        r = _time_boundary(v, high)
        return None if r is None else FPTime(r)
    if type(v) is FPDateTime:
        r = _datetime_boundary(v, high)
        return None if r is None else FPDateTime(r)
    if type(v) is FPDate:
        r = _date_boundary(v, high)
        return None if r is None else FPDate(r)
    if type(v) is str:
        if "T" in v:
            r = _datetime_boundary(v, high)
            return None if r is None else FPDateTime(r)
        if ":" in v:
            r = _time_boundary(v, high)
            return None if r is None else FPTime(r)
        r = _date_boundary(v, high)
        return None if r is None else FPDate(r)
    if type(v) is dict and ("start" in v or "end" in v):  # Period
        edge = v.get("end" if high else "start")
        return None if not isinstance(edge, str) else _boundary(FPDateTime(edge), high, None)
    return None


# Date arithmetic ------------------------------------------------------------------------------

_UNIT_FIELDS = {
    "year": "years",
    "years": "years",
    "a": "years",
    "month": "months",
    "months": "months",
    "mo": "months",
    "week": "weeks",
    "weeks": "weeks",
    "wk": "weeks",
    "day": "days",
    "days": "days",
    "d": "days",
    "hour": "hours",
    "hours": "hours",
    "h": "hours",
    "minute": "minutes",
    "minutes": "minutes",
    "min": "minutes",
    "second": "seconds",
    "seconds": "seconds",
    "s": "seconds",
}


def _date_add(v: Any, q: FPQuantity, sign: int) -> Any:
    from dateutil.relativedelta import relativedelta

    field = _UNIT_FIELDS.get(q.unit)
    parsed = _parse_temporal(v)
    if field is None or parsed is None or parsed[0] != "dt":
        return None
    parts = [int(p) for p in parsed[1][:5]]
    seconds = parsed[1][5] if len(parsed[1]) > 5 else 0.0
    n = len(parsed[1])
    year, month, day = parts[0], parts[1] if n > 1 else 1, parts[2] if n > 2 else 1
    hour, minute = parts[3] if n > 3 else 0, parts[4] if n > 4 else 0
    base = datetime(year, month, day, hour, minute) + timedelta(seconds=seconds)
    amount = int(q.value) if field in ("years", "months") else q.value
    moved = base + relativedelta(**{field: sign * amount})
    text = str(v)
    if n == 1:
        out = f"{moved.year:04d}"
    elif n == 2:
        out = f"{moved.year:04d}-{moved.month:02d}"
    elif n == 3:
        out = moved.strftime("%Y-%m-%d")
    else:
        out = moved.strftime("%Y-%m-%dT%H:%M" if n < 6 else "%Y-%m-%dT%H:%M:%S")
        if n >= 6 and "." in text.split("T", 1)[1]:
            out += f".{moved.microsecond // 1000:03d}"
        m = _DT_RE.match(text)
        if m and m.group(7):
            out += m.group(7)
    return (FPDate if n <= 3 and type(v) is not FPDateTime else FPDateTime)(out)


# Types ----------------------------------------------------------------------------------------


def _is_type(v: Any, tname: str) -> bool:
    """Whether ``v`` is of type ``tname``; strings and dicts are judged leniently (see module)."""
    if type(v) is bool:
        return tname in BOOLEAN_TYPES
    if type(v) is int:
        return tname in INTEGER_TYPES or tname in DECIMAL_TYPES
    if type(v) is float or type(v) is Decimal:
        return tname in DECIMAL_TYPES
    if type(v) is FPDate:
        return tname in ("date", "Date")
    if type(v) is FPDateTime:
        return tname in ("dateTime", "instant", "DateTime")
    if type(v) is FPTime:
        return tname in ("time", "Time")
    if type(v) is str:
        if tname in STRING_TYPES:
            return True
        if tname in ("date", "Date"):
            return bool(re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", v))
        if tname in ("dateTime", "DateTime", "instant"):
            return bool(_DT_RE.match(v))
        if tname in ("time", "Time"):
            return bool(_TIME_RE.match(v))
        return False
    if type(v) is dict:
        rtype = v.get("resourceType")
        if rtype is not None:
            return bool(tname == rtype or tname in ("Resource", "DomainResource"))
        _, _, complex_types, resource_types = _type_tables()
        return tname in complex_types or (tname[:1].isupper() and tname not in resource_types)
    if type(v) is FPQuantity:
        return tname == "Quantity"
    return False


def _wrap_typed(v: Any, tname: str) -> Any:
    wrap = _TEMPORAL_WRAP.get(tname)
    if wrap is not None and type(v) is str:
        return wrap(v)
    return v


def _type_name_of(node: Node, what: str) -> str:
    """The type named by an argument such as ``Quantity``, ``FHIR.Patient`` or ``'Patient'``."""
    if node[0] == "member":
        return str(node[2])
    if node[0] == "lit" and len(node[1]) == 1 and isinstance(node[1][0], str):
        return str(node[1][0])
    raise FhirPathSyntaxError(f"{what}() expects a type name")


# --------------------------------------------------------------------------------------------
# Compiler

_BUILTIN_VARS = {
    "ucum": "http://unitsofmeasure.org",
    "sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
}

_REFERENCE_RE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")

Builder = Callable[["_Compiler", Fn, list[Node], bool, int], Fn]
_FUNCTIONS: dict[str, tuple[int, int, Builder]] = {}


def _function(name: str, min_args: int = 0, max_args: int = 0) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        _FUNCTIONS[name] = (min_args, max_args, builder)
        return builder

    return register


class _Compiler:
    def __init__(self, constants: Mapping[str, Collection]) -> None:
        self.constants = constants

    def compile(self, node: Node) -> Fn:
        kind = node[0]
        method = getattr(self, "_c_" + kind)
        fn: Fn = method(node)
        return fn

    # Terms ------------------------------------------------------------------------------------

    def _c_lit(self, node: Node) -> Fn:
        value: Collection = node[1]

        # Shared, not copied: no compiled function mutates a collection it did not create.
        def literal(focus: Collection, env: Env) -> Collection:
            return value

        return literal

    def _c_this(self, node: Node) -> Fn:
        return _identity

    def _c_dollar_index(self, node: Node) -> Fn:
        def index(focus: Collection, env: Env) -> Collection:
            return [env.index]

        return index

    def _c_dollar_total(self, node: Node) -> Fn:
        raise FhirPathSyntaxError("$total (aggregate) is not supported", node[1])

    def _c_var(self, node: Node) -> Fn:
        name: str = node[1]
        if name in self.constants:
            value = list(self.constants[name])

            def constant(focus: Collection, env: Env) -> Collection:
                return value

            return constant
        if name == "rowIndex":

            def row_index(focus: Collection, env: Env) -> Collection:
                return [env.row_index]

            return row_index
        if name in ("resource", "rootResource", "context"):

            def resource(focus: Collection, env: Env) -> Collection:
                return [] if env.resource is None else [env.resource]

            return resource
        if name in _BUILTIN_VARS:
            text = _BUILTIN_VARS[name]

            def builtin(focus: Collection, env: Env) -> Collection:
                return [text]

            return builtin
        raise FhirPathSyntaxError(f"undefined variable %{name}", node[2])

    def _c_member(self, node: Node) -> Fn:
        names: list[str] = []
        n: Node | None = node
        while n is not None and n[0] == "member":
            names.append(n[2])
            n = n[1]
        names.reverse()
        base = None if n is None else self.compile(n)
        choice_names = _type_tables()[0]
        type_filter: str | None = None
        if base is None and names[0][:1].isupper():
            # A leading type name (Patient.name) selects the resources of that type.
            type_filter = names.pop(0)
        steps = [(name, name in choice_names) for name in names]

        if base is None and type_filter is None and len(steps) == 1:
            name, choice = steps[0]

            def member(focus: Collection, env: Env) -> Collection:
                out: Collection = []
                for it in focus:
                    if type(it) is dict:
                        v = it.get(name)
                        if v is None:
                            if choice:
                                _choice_into(it, name, out)
                        elif type(v) is list:
                            _extend_value(out, v)
                        else:
                            out.append(v)
                return out

            return member

        def path(focus: Collection, env: Env) -> Collection:
            items = focus if base is None else base(focus, env)
            if type_filter is not None:
                items = [
                    it
                    for it in items
                    if type(it) is dict
                    and (
                        it.get("resourceType") == type_filter
                        or type_filter in ("Resource", "DomainResource")
                    )
                ]
            for name, choice in steps:
                if not items:
                    return items
                items = _navigate(items, name, choice)
            return items

        return path

    def _c_index(self, node: Node) -> Fn:
        base = self.compile(node[1])
        index = self.compile(node[2])

        def indexer(focus: Collection, env: Env) -> Collection:
            i = _singleton(index(focus, env), "an indexer")
            if i is None:
                return []
            if type(i) is not int:
                raise FhirPathEvalError("an indexer must be an integer")
            items = base(focus, env)
            return [items[i]] if 0 <= i < len(items) else []

        return indexer

    def _c_neg(self, node: Node) -> Fn:
        operand = self.compile(node[1])

        def negate(focus: Collection, env: Env) -> Collection:
            v = _singleton(operand(focus, env), "unary minus")
            if v is None:
                return []
            if type(v) is FPQuantity:
                return [FPQuantity(-v.value, v.unit)]
            if not _is_number(v) or type(v) is bool:
                raise FhirPathEvalError("unary minus expects a number")
            return [-v]

        return negate

    def _c_typeop(self, node: Node) -> Fn:
        _, op, left, tname = node
        fn = self._of_type(left, tname)
        operand = self.compile(left)
        if op == "as":
            return fn

        def is_type(focus: Collection, env: Env) -> Collection:
            items = operand(focus, env)
            if not items:
                return []
            if len(items) > 1:
                raise FhirPathEvalError("'is' expects a single item")
            return [bool(fn(focus, env))]

        return is_type

    # Operators --------------------------------------------------------------------------------

    def _c_bin(self, node: Node) -> Fn:
        _, op, lnode, rnode = node
        left, right = self.compile(lnode), self.compile(rnode)
        if op in ("and", "or", "xor", "implies"):
            return _logic(op, left, right)
        if op in ("=", "!="):
            negate = op == "!="

            def equals(focus: Collection, env: Env) -> Collection:
                lv, rv = left(focus, env), right(focus, env)
                if not lv or not rv:
                    return []
                if len(lv) == 1 and len(rv) == 1:
                    a, b = lv[0], rv[0]
                    if type(a) is str and type(b) is str:  # the common case, inline
                        return [(a == b) != negate]
                    r = _eq_item(a, b)
                    if r is None:
                        return []
                    return [r != negate]
                if len(lv) != len(rv):
                    return [negate]
                for a, b in zip(lv, rv, strict=True):
                    r = _eq_item(a, b)
                    if r is None:
                        return []
                    if not r:
                        return [negate]
                return [not negate]

            return equals
        if op in ("~", "!~"):
            negate = op == "!~"

            def equivalent(focus: Collection, env: Env) -> Collection:
                lv, rv = left(focus, env), right(focus, env)
                if not lv and not rv:
                    return [not negate]
                if len(lv) != len(rv):
                    return [negate]
                remaining = list(rv)
                for a in lv:
                    for j, b in enumerate(remaining):
                        if _equiv_item(a, b):
                            del remaining[j]
                            break
                    else:
                        return [negate]
                return [not negate]

            return equivalent
        if op in ("<", ">", "<=", ">="):
            test = {
                "<": lambda c: c < 0,
                ">": lambda c: c > 0,
                "<=": lambda c: c <= 0,
                ">=": lambda c: c >= 0,
            }[op]

            def compare(focus: Collection, env: Env) -> Collection:
                a = _singleton(left(focus, env), f"'{op}'")
                if a is None:
                    return []
                b = _singleton(right(focus, env), f"'{op}'")
                if b is None:
                    return []
                c = _cmp_items(a, b)
                return [] if c is None else [test(c)]

            return compare
        if op == "|":

            def union(focus: Collection, env: Env) -> Collection:
                return _distinct(left(focus, env) + right(focus, env))

            return union
        if op in ("in", "contains"):
            item_fn, coll_fn = (left, right) if op == "in" else (right, left)

            def membership(focus: Collection, env: Env) -> Collection:
                item = _singleton(item_fn(focus, env), f"'{op}'")
                if item is None:
                    return []
                return [any(_eq_item(item, x) is True for x in coll_fn(focus, env))]

            return membership
        if op == "&":

            def concat(focus: Collection, env: Env) -> Collection:
                a = _singleton(left(focus, env), "'&'")
                b = _singleton(right(focus, env), "'&'")
                return [("" if a is None else str(a)) + ("" if b is None else str(b))]

            return concat
        return _arithmetic(op, left, right)

    # Functions --------------------------------------------------------------------------------

    def _c_call(self, node: Node) -> Fn:
        _, base_node, name, args, pos = node
        if name in ("ofType", "as"):
            if len(args) != 1:
                raise FhirPathSyntaxError(f"{name}() takes 1 argument (a type name)", pos)
            inner = base_node if base_node is not None else ("this",)
            return self._of_type(inner, _type_name_of(args[0], name))
        spec = _FUNCTIONS.get(name)
        if spec is None:
            raise FhirPathSyntaxError(f"unknown or unsupported function {name}()", pos)
        min_args, max_args, builder = spec
        if not min_args <= len(args) <= max_args:
            expected = str(min_args) if min_args == max_args else f"{min_args} to {max_args}"
            raise FhirPathSyntaxError(
                f"{name}() takes {expected} argument(s), got {len(args)}", pos
            )
        base = _identity if base_node is None else self.compile(base_node)
        return builder(self, base, args, base_node is None, pos)

    def _of_type(self, inner: Node, tname: str) -> Fn:
        if inner[0] == "member" and not (inner[1] is None and inner[2][:1].isupper()):
            # x.ofType(T) right after navigating to x: read the choice key xT directly.
            name: str = inner[2]
            parent = None if inner[1] is None else self.compile(inner[1])
            key = name + tname[:1].upper() + tname[1:]
            wrap = _TEMPORAL_WRAP.get(tname)

            def choice_of_type(focus: Collection, env: Env) -> Collection:
                items = focus if parent is None else parent(focus, env)
                out: Collection = []
                for it in items:
                    if type(it) is not dict:
                        continue
                    v = it.get(key)
                    if v is not None:
                        if wrap is not None and type(v) is str:
                            out.append(wrap(v))
                        else:
                            _extend_value(out, v)
                        continue
                    v = it.get(name)
                    if v is None:
                        continue
                    for x in v if type(v) is list else (v,):
                        if x is not None and _is_type(x, tname):
                            out.append(_wrap_typed(x, tname))
                return out

            return choice_of_type
        operand = self.compile(inner)

        def of_type(focus: Collection, env: Env) -> Collection:
            return [_wrap_typed(x, tname) for x in operand(focus, env) if _is_type(x, tname)]

        return of_type

    def lambda_arg(self, node: Node) -> Fn:
        """An argument evaluated once per input item, with that item as the focus ($this)."""
        return self.compile(node)


def _logic(op: str, left: Fn, right: Fn) -> Fn:
    if op == "and":

        def and_(focus: Collection, env: Env) -> Collection:
            a = _to_bool(left(focus, env), "'and'")
            if a is False:
                return [False]
            b = _to_bool(right(focus, env), "'and'")
            if b is False:
                return [False]
            return [True] if a is True and b is True else []

        return and_
    if op == "or":

        def or_(focus: Collection, env: Env) -> Collection:
            a = _to_bool(left(focus, env), "'or'")
            if a is True:
                return [True]
            b = _to_bool(right(focus, env), "'or'")
            if b is True:
                return [True]
            return [False] if a is False and b is False else []

        return or_
    if op == "xor":

        def xor(focus: Collection, env: Env) -> Collection:
            a = _to_bool(left(focus, env), "'xor'")
            b = _to_bool(right(focus, env), "'xor'")
            return [] if a is None or b is None else [a != b]

        return xor

    def implies(focus: Collection, env: Env) -> Collection:
        a = _to_bool(left(focus, env), "'implies'")
        if a is False:
            return [True]
        b = _to_bool(right(focus, env), "'implies'")
        if b is True:
            return [True]
        if a is True and b is False:
            return [False]
        return []

    return implies


def _arithmetic(op: str, left: Fn, right: Fn) -> Fn:
    def arith(focus: Collection, env: Env) -> Collection:
        a = _singleton(left(focus, env), f"'{op}'")
        if a is None:
            return []
        b = _singleton(right(focus, env), f"'{op}'")
        if b is None:
            return []
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return [str(a) + str(b)]
        if op in ("+", "-") and type(b) is FPQuantity and isinstance(a, str):
            r = _date_add(a, b, 1 if op == "+" else -1)
            return [] if r is None else [r]
        if not (_is_number(a) and _is_number(b)) or type(a) is bool or type(b) is bool:
            raise FhirPathEvalError(f"'{op}' expects numbers (or strings for '+')")
        if op == "+":
            return [a + b]
        if op == "-":
            return [a - b]
        if op == "*":
            return [a * b]
        if b == 0:
            return []  # division by zero is empty in FHIRPath
        if op == "/":
            return [a / b]
        if op == "div":
            return [int(a / b)]
        return [math.fmod(a, b) if type(a) is float or type(b) is float else int(math.fmod(a, b))]

    return arith


# Function implementations ------------------------------------------------------------------


def _iterate(crit: Fn, items: Collection, env: Env) -> list[Collection]:
    """Evaluate ``crit`` with each item as $this (and $index)."""
    saved = env.index
    results = []
    try:
        for i, it in enumerate(items):
            env.index = i
            results.append(crit([it], env))
    finally:
        env.index = saved
    return results


@_function("empty")
def _f_empty(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def empty(focus: Collection, env: Env) -> Collection:
        return [not base(focus, env)]

    return empty


@_function("exists", 0, 1)
def _f_exists(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    if not args:

        def exists(focus: Collection, env: Env) -> Collection:
            return [bool(base(focus, env))]

        return exists
    crit = c.lambda_arg(args[0])

    def exists_where(focus: Collection, env: Env) -> Collection:
        return [any(_to_bool(r, "exists()") is True for r in _iterate(crit, base(focus, env), env))]

    return exists_where


@_function("all", 1, 1)
def _f_all(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    crit = c.lambda_arg(args[0])

    def all_(focus: Collection, env: Env) -> Collection:
        return [all(_to_bool(r, "all()") is True for r in _iterate(crit, base(focus, env), env))]

    return all_


def _bool_aggregate(name: str, test: Callable[[list[bool]], bool]) -> None:
    @_function(name)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        def aggregate(focus: Collection, env: Env) -> Collection:
            items = base(focus, env)
            if any(type(x) is not bool for x in items):
                raise FhirPathEvalError(f"{name}() expects booleans")
            return [test(items)]

        return aggregate


_bool_aggregate("allTrue", lambda xs: all(xs))
_bool_aggregate("anyTrue", lambda xs: any(xs))
_bool_aggregate("allFalse", lambda xs: not any(xs))
_bool_aggregate("anyFalse", lambda xs: not all(xs))


@_function("count")
def _f_count(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def count(focus: Collection, env: Env) -> Collection:
        return [len(base(focus, env))]

    return count


@_function("distinct")
def _f_distinct(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def distinct(focus: Collection, env: Env) -> Collection:
        return _distinct(base(focus, env))

    return distinct


@_function("isDistinct")
def _f_is_distinct(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def is_distinct(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        return [len(_distinct(items)) == len(items)]

    return is_distinct


def _element_equals_string(node: Node) -> tuple[str, str] | None:
    """(name, text) when ``node`` is ``name = 'text'`` on a plain (non-choice) element."""
    if node[0] != "bin" or node[1] != "=":
        return None
    left, right = node[2], node[3]
    if left[0] == "lit":
        left, right = right, left
    if (
        left[0] == "member"
        and left[1] is None
        and right[0] == "lit"
        and len(right[1]) == 1
        and type(right[1][0]) is str
        and not left[2][:1].isupper()
        and left[2] not in _type_tables()[0]
    ):
        return left[2], right[1][0]
    return None


@_function("where", 1, 1)
def _f_where(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    crit = c.lambda_arg(args[0])
    simple = _element_equals_string(args[0])
    if simple is not None:
        # where(system = '...'): compare the element directly, the general path otherwise.
        name, text = simple

        def where_equals(focus: Collection, env: Env) -> Collection:
            out: Collection = []
            for it in base(focus, env):
                if type(it) is dict:
                    v = it.get(name)
                    if type(v) is str:
                        if v == text:
                            out.append(it)
                        continue
                    if v is None:
                        continue
                if _to_bool(crit([it], env), "where()") is True:
                    out.append(it)
            return out

        return where_equals

    def where(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        if not items:
            return items
        results = _iterate(crit, items, env)
        return [it for it, r in zip(items, results, strict=True) if _to_bool(r, "where()") is True]

    return where


@_function("select", 1, 1)
def _f_select(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    proj = c.lambda_arg(args[0])

    def select(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        for r in _iterate(proj, base(focus, env), env):
            out.extend(r)
        return out

    return select


@_function("repeat", 1, 1)
def _f_repeat(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    proj = c.lambda_arg(args[0])

    def repeat(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        seen: set[Any] = set()
        pending = base(focus, env)
        while pending:
            nxt: Collection = []
            for r in _iterate(proj, pending, env):
                for x in r:
                    k = _key(x)
                    if k not in seen:
                        seen.add(k)
                        out.append(x)
                        nxt.append(x)
            pending = nxt
        return out

    return repeat


@_function("is", 1, 1)
def _f_is(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    tname = _type_name_of(args[0], "is")

    def is_(focus: Collection, env: Env) -> Collection:
        v = _singleton(base(focus, env), "is()")
        return [] if v is None else [_is_type(v, tname)]

    return is_


def _simple(name: str, fn: Callable[[Collection], Collection]) -> None:
    @_function(name)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        def apply(focus: Collection, env: Env) -> Collection:
            return fn(base(focus, env))

        return apply


@_function("first")
def _f_first(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def first(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        return items if len(items) <= 1 else items[:1]

    return first


_simple("last", lambda xs: xs[-1:])
_simple("tail", lambda xs: xs[1:])
_simple("trace", lambda xs: xs)
_simple("children", lambda xs: _children(xs))
_simple("descendants", lambda xs: _descendants(xs))
_simple("hasValue", lambda xs: [len(xs) == 1 and not isinstance(xs[0], dict | list)])
_simple("getValue", lambda xs: xs if len(xs) == 1 and not isinstance(xs[0], dict) else [])


def _children(items: Collection) -> Collection:
    out: Collection = []
    for it in items:
        if type(it) is dict:
            for k, v in it.items():
                if k != "resourceType" and not k.startswith("_"):
                    _extend_value(out, v)
    return out


def _descendants(items: Collection) -> Collection:
    out: Collection = []
    level = _children(items)
    while level:
        out.extend(level)
        level = _children(level)
    return out


@_function("single")
def _f_single(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def single(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        if len(items) > 1:
            raise FhirPathEvalError(f"single() got a collection of {len(items)}")
        return items

    return single


def _int_arg_function(name: str, apply: Callable[[Collection, int], Collection]) -> None:
    @_function(name, 1, 1)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        arg = c.compile(args[0])

        def fn(focus: Collection, env: Env) -> Collection:
            n = _singleton(arg(focus, env), f"{name}()")
            if type(n) is not int:
                raise FhirPathEvalError(f"{name}() expects an integer")
            return apply(base(focus, env), n)

        return fn


_int_arg_function("skip", lambda xs, n: xs[max(n, 0) :])
_int_arg_function("take", lambda xs, n: xs[: max(n, 0)])


def _set_function(name: str, apply: Callable[[Collection, Collection], Collection]) -> None:
    @_function(name, 1, 1)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        other = c.compile(args[0])

        def fn(focus: Collection, env: Env) -> Collection:
            return apply(base(focus, env), other(focus, env))

        return fn


def _intersect(a: Collection, b: Collection) -> Collection:
    keys = {_key(x) for x in b}
    return [x for x in _distinct(a) if _key(x) in keys]


def _exclude(a: Collection, b: Collection) -> Collection:
    keys = {_key(x) for x in b}
    return [x for x in a if _key(x) not in keys]


_set_function("union", lambda a, b: _distinct(a + b))
_set_function("combine", lambda a, b: a + b)
_set_function("intersect", _intersect)
_set_function("exclude", _exclude)
_set_function("subsetOf", lambda a, b: [not _exclude(a, b)])
_set_function("supersetOf", lambda a, b: [not _exclude(b, a)])


@_function("iif", 2, 3)
def _f_iif(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    crit, then = c.compile(args[0]), c.compile(args[1])
    otherwise = c.compile(args[2]) if len(args) == 3 else None

    def iif(focus: Collection, env: Env) -> Collection:
        scope = focus if root else base(focus, env)
        if len(scope) > 1:
            raise FhirPathEvalError("iif() expects at most one input item")
        if _to_bool(crit(scope, env), "iif()") is True:
            return then(scope, env)
        return [] if otherwise is None else otherwise(scope, env)

    return iif


@_function("not")
def _f_not(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def not_(focus: Collection, env: Env) -> Collection:
        v = _to_bool(base(focus, env), "not()")
        return [] if v is None else [not v]

    return not_


# Conversions ----------------------------------------------------------------------------------


def _convert_integer(v: Any) -> Any:
    if type(v) is bool:
        return 1 if v else 0
    if type(v) is int:
        return v
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v):
        return int(v)
    return None


def _convert_decimal(v: Any) -> Any:
    if type(v) is bool:
        return 1.0 if v else 0.0
    if _is_number(v):
        return float(v)
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d+(\.\d+)?", v):
        return float(v)
    return None


def _convert_boolean(v: Any) -> Any:
    if type(v) is bool:
        return v
    if isinstance(v, str):
        low = v.lower()
        if low in ("true", "t", "yes", "y", "1", "1.0"):
            return True
        if low in ("false", "f", "no", "n", "0", "0.0"):
            return False
        return None
    if _is_number(v) and v in (0, 1):
        return bool(v)
    return None


def _convert_date(v: Any) -> Any:
    if isinstance(v, str) and re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", v.split("T", 1)[0]):
        return FPDate(v.split("T", 1)[0])
    return None


def _convert_datetime(v: Any) -> Any:
    if isinstance(v, str) and _DT_RE.match(v) and type(v) is not FPTime:
        return FPDateTime(v)
    return None


def _convert_time(v: Any) -> Any:
    if isinstance(v, str) and _TIME_RE.match(v):
        return FPTime(v)
    return None


def _conversion(name: str, convert: Callable[[Any], Any]) -> None:
    @_function("to" + name)
    def build_to(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        def to(focus: Collection, env: Env) -> Collection:
            v = _singleton(base(focus, env), f"to{name}()")
            if v is None:
                return []
            r = convert(v)
            return [] if r is None else [r]

        return to

    @_function("convertsTo" + name)
    def build_converts(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        def converts(focus: Collection, env: Env) -> Collection:
            v = _singleton(base(focus, env), f"convertsTo{name}()")
            return [] if v is None else [convert(v) is not None]

        return converts


_conversion("String", _to_string)
_conversion("Integer", _convert_integer)
_conversion("Decimal", _convert_decimal)
_conversion("Boolean", _convert_boolean)
_conversion("Date", _convert_date)
_conversion("DateTime", _convert_datetime)
_conversion("Time", _convert_time)


# Strings --------------------------------------------------------------------------------------


def _string_function(
    name: str, n_args: int, apply: Callable[..., Any], max_args: int | None = None
) -> None:
    @_function(name, n_args, n_args if max_args is None else max_args)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        arg_fns = [c.compile(a) for a in args]

        def fn(focus: Collection, env: Env) -> Collection:
            s = _singleton(base(focus, env), f"{name}()")
            if s is None:
                return []
            if not isinstance(s, str):
                raise FhirPathEvalError(f"{name}() expects a string input")
            values = []
            for a in arg_fns:
                v = _singleton(a(focus, env), f"{name}()")
                if v is None:
                    return []
                values.append(v)
            r = apply(str(s), *values)
            return [] if r is None else [r]

        return fn


def _substring(s: str, start: int, length: int | None = None) -> str | None:
    if start < 0 or start >= len(s):
        return None
    return s[start:] if length is None else s[start : start + max(length, 0)]


_string_function("indexOf", 1, lambda s, x: s.find(x))
_string_function("substring", 1, _substring, 2)
_string_function("startsWith", 1, lambda s, x: s.startswith(x))
_string_function("endsWith", 1, lambda s, x: s.endswith(x))
_string_function("contains", 1, lambda s, x: x in s)
_string_function("upper", 0, lambda s: s.upper())
_string_function("lower", 0, lambda s: s.lower())
_string_function("replace", 2, lambda s, a, b: s.replace(a, b))
_string_function("matches", 1, lambda s, rx: re.search(rx, s, re.DOTALL) is not None)
_string_function("replaceMatches", 2, lambda s, rx, sub: re.sub(rx, sub, s))
_string_function("length", 0, lambda s: len(s))
_string_function("trim", 0, lambda s: s.strip())


@_function("toChars")
def _f_to_chars(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def to_chars(focus: Collection, env: Env) -> Collection:
        s = _singleton(base(focus, env), "toChars()")
        return [] if s is None else list(str(s))

    return to_chars


@_function("split", 1, 1)
def _f_split(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    sep = c.compile(args[0])

    def split(focus: Collection, env: Env) -> Collection:
        s = _singleton(base(focus, env), "split()")
        d = _singleton(sep(focus, env), "split()")
        if s is None or d is None:
            return []
        return str(s).split(str(d)) if d else list(str(s))

    return split


@_function("join", 0, 1)
def _f_join(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    sep = c.compile(args[0]) if args else None

    def join(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        separator = "" if sep is None else _singleton(sep(focus, env), "join()") or ""
        # The SQL on FHIR suite expects '' (not empty) when there is nothing to join.
        return [str(separator).join(_to_string(x) or "" for x in items)]

    return join


# Math -----------------------------------------------------------------------------------------


def _math_function(name: str, apply: Callable[..., Any], n_args: int = 0) -> None:
    @_function(name, 0 if name == "round" else n_args, n_args)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        arg_fns = [c.compile(a) for a in args]

        def fn(focus: Collection, env: Env) -> Collection:
            v = _singleton(base(focus, env), f"{name}()")
            if v is None:
                return []
            if not _is_number(v) or type(v) is bool:
                raise FhirPathEvalError(f"{name}() expects a number")
            values = [_singleton(a(focus, env), f"{name}()") for a in arg_fns]
            if any(x is None for x in values):
                return []
            try:
                r = apply(v, *values)
            except (ValueError, ZeroDivisionError, OverflowError):
                return []
            return [] if r is None or (type(r) is float and math.isnan(r)) else [r]

        return fn


_math_function("abs", abs)
_math_function("ceiling", math.ceil)
_math_function("floor", math.floor)
_math_function("truncate", math.trunc)
_math_function("sqrt", lambda v: math.sqrt(v) if v >= 0 else None)
_math_function("exp", math.exp)
_math_function("ln", math.log)
_math_function("log", lambda v, b: math.log(v, b), 1)
_math_function("power", lambda v, e: v**e if not (v < 0 and not float(e).is_integer()) else None, 1)
_math_function(
    "round",
    lambda v, p=0: float(Decimal(repr(v)).quantize(Decimal(1).scaleb(-int(p)), ROUND_HALF_UP)),
    1,
)


# Boundaries, dates ----------------------------------------------------------------------------


def _boundary_function(name: str, high: bool) -> None:
    @_function(name, 0, 1)
    def build(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
        prec = c.compile(args[0]) if args else None

        def boundary(focus: Collection, env: Env) -> Collection:
            v = _singleton(base(focus, env), f"{name}()")
            if v is None:
                return []
            p = None if prec is None else _singleton(prec(focus, env), f"{name}()")
            r = _boundary(v, high, p if type(p) is int else None)
            return [] if r is None else [r]

        return boundary


_boundary_function("lowBoundary", False)
_boundary_function("highBoundary", True)


@_function("today")
def _f_today(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def today(focus: Collection, env: Env) -> Collection:
        return [FPDate(date.today().isoformat())]

    return today


@_function("now")
def _f_now(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def now(focus: Collection, env: Env) -> Collection:
        return [FPDateTime(datetime.now(UTC).isoformat(timespec="milliseconds"))]

    return now


# FHIR and SQL on FHIR functions ---------------------------------------------------------------


@_function("extension", 1, 1)
def _f_extension(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    url_fn = c.compile(args[0])
    fixed = args[0][1][0] if args[0][0] == "lit" and len(args[0][1]) == 1 else None

    def extension(focus: Collection, env: Env) -> Collection:
        url = fixed if fixed is not None else _singleton(url_fn(focus, env), "extension()")
        out: Collection = []
        for it in base(focus, env):
            if type(it) is dict:
                for ext in it.get("extension") or ():
                    if type(ext) is dict and ext.get("url") == url:
                        out.append(ext)
        return out

    return extension


@_function("getResourceKey")
def _f_get_resource_key(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    def get_resource_key(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        for it in base(focus, env):
            if type(it) is dict and "resourceType" in it and "id" in it:
                out.append(f"{it['resourceType']}/{it['id']}")
        return out

    return get_resource_key


@lru_cache(maxsize=1 << 16)
def _reference_target(reference: str) -> tuple[str, str] | None:
    """(type, key) of a relative literal reference; cached, as references repeat a lot."""
    m = _REFERENCE_RE.match(reference)
    return None if m is None else (m.group(1), f"{m.group(1)}/{m.group(2)}")


@_function("getReferenceKey", 0, 1)
def _f_get_reference_key(c: _Compiler, base: Fn, args: list[Node], root: bool, pos: int) -> Fn:
    wanted = _type_name_of(args[0], "getReferenceKey") if args else None

    def get_reference_key(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        for it in base(focus, env):
            if type(it) is not dict:
                continue
            ref = it.get("reference")
            if type(ref) is not str:
                continue
            # Only relative literal references (Type/id) are keys; absolute URLs, contained
            # (#id) and urn:uuid references cannot be matched to a resource here.
            target = _reference_target(ref)
            if target is not None and (wanted is None or target[0] == wanted):
                out.append(target[1])
        return out

    return get_reference_key


# --------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True, slots=True)
class CompiledPath:
    """A compiled expression; call it with the input collection and an :class:`Env`."""

    source: str
    ast: Node
    fn: Fn

    def __call__(self, focus: Collection, env: Env) -> Collection:
        return self.fn(focus, env)


def compile_path(source: str, constants: Mapping[str, Collection] | None = None) -> CompiledPath:
    """Parse and compile ``source``; ``constants`` maps ``%name`` to a collection.

    Raises :class:`FhirPathError` for a syntax error, an unknown function or variable.
    """
    ast = parse(source)
    return CompiledPath(source, ast, _Compiler(constants or {}).compile(ast))


def evaluate(
    source: str, resource: Any, constants: Mapping[str, Collection] | None = None
) -> Collection:
    """Evaluate ``source`` once against ``resource`` (convenience; compile once for loops)."""
    return compile_path(source, constants)([resource], Env(resource))


# --------------------------------------------------------------------------------------------
# Static types, for the column types of views that do not declare them

_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
_BOOLEAN_FUNCTIONS = frozenset(
    {
        "exists",
        "empty",
        "not",
        "all",
        "allTrue",
        "anyTrue",
        "allFalse",
        "anyFalse",
        "isDistinct",
        "is",
        "startsWith",
        "endsWith",
        "contains",
        "matches",
        "hasValue",
        "subsetOf",
        "supersetOf",
        "toBoolean",
    }
) | frozenset(f"convertsTo{n}" for n in ("String", "Integer", "Decimal", "Boolean", "Date"))
_SAME_TYPE_FUNCTIONS = frozenset(
    {
        "first",
        "last",
        "tail",
        "single",
        "where",
        "skip",
        "take",
        "distinct",
        "trace",
        "lowBoundary",
        "highBoundary",
        "union",
        "combine",
        "intersect",
        "exclude",
    }
)
_RETURN_TYPES = {
    "count": "integer",
    "length": "integer",
    "indexOf": "integer",
    "toInteger": "integer",
    "toDecimal": "decimal",
    "toDate": "date",
    "toDateTime": "dateTime",
    "toTime": "time",
    "today": "date",
    "now": "dateTime",
    "join": "string",
    "toString": "string",
    "upper": "string",
    "lower": "string",
    "substring": "string",
    "replace": "string",
    "replaceMatches": "string",
    "trim": "string",
    "getResourceKey": "string",
    "getReferenceKey": "string",
    "extension": "Extension",
}


def _element_type(owner: str, name: str) -> str | None:
    """The type of element ``name`` of ``owner`` (a type name, or a backbone path)."""
    from takamul.fhir.definitions import definitions

    defs = definitions()
    root = owner.split(".", 1)[0]
    typedef = defs.types.get(root)
    if typedef is None:
        return None
    path = f"{owner}.{name}"
    el = typedef.elements.get(path)
    if el is None:
        return None
    if el.ref:
        return el.ref.lstrip("#")
    if len(el.types) != 1:
        return None
    code = el.types[0].code
    if code.startswith("http://hl7.org/fhirpath/System."):
        return _SYSTEM_TYPES.get(code.rsplit(".", 1)[1])
    if code in ("BackboneElement", "Element") and "." in path:
        return path
    return code


def static_type(
    node: Node, context: str | None, constants: Mapping[str, str] | None = None
) -> str | None:
    """The FHIR type an expression yields on input of type ``context`` (None if unknown).

    ``context`` is a type name (``Patient``, ``HumanName``) or a backbone element path
    (``Patient.contact``). Used to give untyped view columns a database type.
    """
    kind = node[0]
    if kind == "lit":
        values = node[1]
        if len(values) != 1:
            return None
        v = values[0]
        if type(v) is bool:
            return "boolean"
        if type(v) is int:
            return "integer"
        if type(v) is float:
            return "decimal"
        if type(v) is FPDate:
            return "date"
        if type(v) is FPDateTime:
            return "dateTime"
        if type(v) is FPTime:
            return "time"
        if isinstance(v, str):
            return "string"
        return None
    if kind == "this":
        return context
    if kind == "var":
        if constants and node[1] in constants:
            return constants[node[1]]
        return "integer" if node[1] == "rowIndex" else None
    if kind == "member":
        base = context if node[1] is None else static_type(node[1], context, constants)
        if base is None:
            return None
        if node[1] is None and node[2] == base:
            return base
        return _element_type(base, node[2])
    if kind == "index":
        return static_type(node[1], context, constants)
    if kind == "typeop":
        return "boolean" if node[1] == "is" else node[3]
    if kind == "neg":
        return static_type(node[1], context, constants)
    if kind == "bin":
        op = node[1]
        if op in ("and", "or", "xor", "implies", "=", "!=", "~", "!~", "<", ">", "<=", ">="):
            return "boolean"
        if op in ("in", "contains"):
            return "boolean"
        if op == "&":
            return "string"
        left = static_type(node[2], context, constants)
        right = static_type(node[3], context, constants)
        if op == "|":
            return left if left == right else None
        if left == "string" and right == "string" and op == "+":
            return "string"
        numeric = INTEGER_TYPES | DECIMAL_TYPES
        if left in numeric and right in numeric:
            if op == "/":
                return "decimal"
            if left in INTEGER_TYPES and right in INTEGER_TYPES:
                return "integer"
            return "decimal"
        return None
    if kind == "call":
        _, base_node, name, args, _pos = node
        if name in ("ofType", "as") and args:
            try:
                return _type_name_of(args[0], name)
            except FhirPathError:
                return None
        if name in _BOOLEAN_FUNCTIONS:
            return "boolean"
        if name in _RETURN_TYPES:
            return _RETURN_TYPES[name]
        if name in _SAME_TYPE_FUNCTIONS:
            return context if base_node is None else static_type(base_node, context, constants)
        if name == "iif" and len(args) >= 2:
            return static_type(args[1], context, constants)
        return None
    return None
