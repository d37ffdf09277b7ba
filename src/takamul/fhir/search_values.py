"""Typed search-index entries extracted from a resource by the R4 SearchParameter expressions.

Each parameter's FHIRPath expression is compiled once; one entry becomes one index row in storage.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from takamul.fhir.definitions import (
    Definitions,
    ElementDef,
    SearchParamDef,
    TypeDef,
    definitions,
)

DATE_MIN: float = -1e14  # sentinel for an open-ended lower bound (epoch seconds)
DATE_MAX: float = 1e14  # sentinel for an open-ended upper bound

INDEXED_TYPES = frozenset({"number", "date", "string", "token", "reference", "quantity", "uri"})


@dataclass(frozen=True, slots=True)
class StringEntry:
    normalized: str  # normalize_string(exact): what default and :contains searches compare
    exact: str  # the value untouched, for :exact


@dataclass(frozen=True, slots=True)
class TokenEntry:
    system: str | None
    code: str | None
    text: str | None  # normalized display / text, for :text


@dataclass(frozen=True, slots=True)
class DateEntry:
    low: float  # epoch seconds (UTC), half-open [low, high)
    high: float


@dataclass(frozen=True, slots=True)
class ReferenceEntry:
    target_type: str | None
    target_id: str | None
    url: str | None  # absolute / urn / canonical references, without _history or |version


@dataclass(frozen=True, slots=True)
class QuantityEntry:
    value: float
    low: float
    high: float
    system: str | None
    code: str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class NumberEntry:
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class UriEntry:
    value: str


Entry = (
    StringEntry | TokenEntry | DateEntry | ReferenceEntry | QuantityEntry | NumberEntry | UriEntry
)


# ---------------------------------------------------------------------------------------------
# Value normalisation
# ---------------------------------------------------------------------------------------------

_TATWEEL = "\u0640"


@lru_cache(maxsize=65536)  # displays and names repeat a lot across a bulk load
def normalize_string(text: str) -> str:
    """Casefold, strip accents / Arabic harakat and tatweel, collapse whitespace.

    Letters themselves are kept (Persian ی/ک stay distinct from Arabic ي/ك): folding letter
    variants is a registry-matching concern, not a search one.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    if not decomposed.isascii():
        decomposed = "".join(
            c for c in decomposed if c != _TATWEEL and not unicodedata.combining(c)
        )
    return " ".join(decomposed.split())


_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY = 86400


def _day_seconds(year: int, month: int, day: int) -> int:
    return (date(year, month, day).toordinal() - _EPOCH_ORDINAL) * _DAY


def _next_month_seconds(year: int, month: int) -> int:
    if month == 12:
        return _day_seconds(year, 12, 31) + _DAY
    return _day_seconds(year, month + 1, 1)


def _tz_offset(tz: str | None) -> int:
    if not tz or tz == "Z":
        return 0
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"invalid timezone offset {tz!r}")
    sign = -1 if tz[0] == "-" else 1
    return sign * (hours * 3600 + minutes * 60)


def _time_range(parts: dict[str, str | None], day_start: int) -> tuple[float, float]:
    hour, minute = int(parts["H"] or 0), int(parts["M"] or 0)
    second = int(parts["S"] or 0)
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second is a valid instant
        raise ValueError("time out of range")
    low: float = day_start + hour * 3600 + minute * 60 + second - _tz_offset(parts["tz"])
    if parts["S"] is None:
        return low, low + 60
    fraction = parts["f"]
    if fraction is None:
        return low, low + 1
    scale = 10 ** len(fraction)  # both bounds from the integer second: no rounding drift
    return low + int(fraction) / scale, low + (int(fraction) + 1) / scale


@lru_cache(maxsize=65536)
def date_range(text: str) -> tuple[float, float]:
    """The half-open UTC epoch-second range ``[low, high)`` a date/dateTime/instant denotes.

    The range spans the literal's precision ("2020" is the whole year); an offset is applied and a
    time without one is taken as UTC. Raises ValueError on a malformed value.
    """
    match = _DATE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"malformed FHIR date/dateTime {text!r}")
    parts = match.groupdict()
    try:
        year = int(parts["y"])
        if parts["m"] is None:
            return float(_day_seconds(year, 1, 1)), float(_day_seconds(year, 12, 31) + _DAY)
        month = int(parts["m"])
        if parts["d"] is None:
            return float(_day_seconds(year, month, 1)), float(_next_month_seconds(year, month))
        start = _day_seconds(year, month, int(parts["d"]))
        if parts["H"] is None:
            return float(start), float(start + _DAY)
        return _time_range(parts, start)
    except ValueError as exc:
        raise ValueError(f"malformed FHIR date/dateTime {text!r}: {exc}") from None


_DECIMAL_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def decimal_range(text: str) -> tuple[float, float, float]:
    """``(value, low, high)``: the value and the range its significant figures imply.

    "5.4" -> (5.4, 5.35, 5.45), "100" -> (100, 99.5, 100.5), "1e2" -> (100, 50, 150).
    """
    if not isinstance(text, str) or not _DECIMAL_RE.fullmatch(text):
        raise ValueError(f"malformed decimal {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"malformed decimal {text!r}") from None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return float(value), float(value - half), float(value + half)


def _number_text(value: Any) -> str | None:
    """The literal text of a JSON number, whose digits carry its precision.

    JSON numbers arrive as int / float (or Decimal); ``repr`` of a float is its shortest literal.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return str(value)


# ---------------------------------------------------------------------------------------------
# Type contexts: every evaluated node carries the FHIR type it was reached as
# ---------------------------------------------------------------------------------------------

# A child lookup: (JSON key, context of the child); None means "a resource, typed at run time".
_Kids = tuple[tuple[str, "_Ctx | None"], ...]


class _Ctx:
    """What the definitions say about a node: its type name and how to navigate into it."""

    __slots__ = ("kids", "model", "owner", "path", "type")

    def __init__(self, model: _Model, type_name: str, owner: TypeDef | None, path: str) -> None:
        self.model = model
        self.type = type_name  # FHIR type code; "BackboneElement" for inline elements
        self.owner = owner  # the StructureDefinition whose elements describe the children
        self.path = path
        self.kids: dict[str, _Kids] = {}

    def child(self, name: str) -> _Kids:
        kids = self.kids.get(name)
        if kids is None:
            kids = self.kids[name] = self.model.children(self, name)
        return kids


class _Model:
    """Navigation tables derived lazily from the StructureDefinitions."""

    def __init__(self, defs: Definitions) -> None:
        self.defs = defs
        self._ctx: dict[tuple[str, str], _Ctx] = {}
        self._by_parent: dict[str, dict[str, dict[str, ElementDef]]] = {}

    def ctx(self, type_name: str) -> _Ctx:
        """The context of a named type (resource, complex or primitive)."""
        key = (type_name, type_name)
        found = self._ctx.get(key)
        if found is None:
            owner = self.defs.types.get(type_name)
            found = self._ctx[key] = _Ctx(self, type_name, owner, type_name)
        return found

    def resource_ctx(self, value: Any) -> _Ctx:
        rtype = value.get("resourceType") if isinstance(value, dict) else None
        return self.ctx(
            rtype if isinstance(rtype, str) and rtype in self.defs.types else "Resource"
        )

    def _inline(self, owner: TypeDef, path: str) -> _Ctx:
        key = (owner.name, path)
        found = self._ctx.get(key)
        if found is None:
            found = self._ctx[key] = _Ctx(self, "BackboneElement", owner, path)
        return found

    def _elements(self, owner: TypeDef) -> dict[str, dict[str, ElementDef]]:
        """parent path -> child name -> ElementDef, built once per StructureDefinition."""
        found = self._by_parent.get(owner.name)
        if found is not None:
            return found
        table: dict[str, dict[str, ElementDef]] = {}
        for path, el in owner.elements.items():
            parent = path.rpartition(".")[0]
            if parent:
                table.setdefault(parent, {})[el.name] = el
        self._by_parent[owner.name] = table
        return table

    def children(self, ctx: _Ctx, name: str) -> _Kids:
        """How child ``name`` appears in JSON; a type's own elements first, then its bases'."""
        owner, path = ctx.owner, ctx.path
        while owner is not None:
            el = self._elements(owner).get(path, {}).get(name)
            if el is not None:
                return self._element_kids(owner, el)
            if path != owner.name or not owner.base:  # inline elements list all their children
                return ()
            owner = self.defs.types.get(owner.base)
            path = owner.name if owner else ""
        return ()

    def _element_kids(self, owner: TypeDef, el: ElementDef) -> _Kids:
        if el.ref:
            return ((el.name, self._inline(owner, el.ref)),)
        codes = [t.code if not t.code.startswith("http") else "string" for t in el.types]
        if el.is_choice:
            return tuple((el.name + c[0].upper() + c[1:], self._typed(owner, el, c)) for c in codes)
        return ((el.name, self._typed(owner, el, codes[0] if codes else "Element")),)

    def _typed(self, owner: TypeDef, el: ElementDef, code: str) -> _Ctx | None:
        if code in ("BackboneElement", "Element") and not el.is_choice:
            return self._inline(owner, el.path)
        if code in ("Resource", "DomainResource"):
            return None
        return self.ctx(code)

    def is_a(self, type_name: str, wanted: str) -> bool:
        """True when ``type_name`` is ``wanted`` or derives from it."""
        while type_name:
            if type_name == wanted:
                return True
            typedef = self.defs.types.get(type_name)
            if typedef is None or not typedef.base:
                return False
            type_name = typedef.base
        return False


# ---------------------------------------------------------------------------------------------
# The fast FHIRPath subset compiler
#
# fhirpathpy is the general evaluator, but it is far too slow for bulk indexing (it re-walks a
# generic AST and wraps every value), and it cannot resolve(). The search expressions of R4 use a
# small subset, so they are compiled here into closures over the JSON dicts. Every node carries
# its FHIR type from the StructureDefinitions (a choice element's type from its JSON key), which
# is what picks the entry mapping; union branches for other resource types are pruned at bind
# time, so a shared parameter such as `clinical-code` costs one branch per resource.
# ---------------------------------------------------------------------------------------------

_Node = tuple[Any, _Ctx]
_Fn = Callable[[list[_Node]], list[_Node]]


class _Unsupported(Exception):
    """The expression is outside the compiled subset: evaluate it with fhirpathpy."""


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<bq>`[^`]*`)|(?P<var>\$this)|(?P<op>!=|[.()\[\]|=,]))"
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise _Unsupported(f"unsupported syntax at {text[pos:]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        tokens.append(("id", value[1:-1]) if kind == "bq" else (kind, value))
        pos = match.end()
    return tokens


# AST nodes are tuples: (kind, ...). Parsing is separate from binding so that each expression is
# parsed once and bound per resource type (which prunes union branches of other types).
_Ast = tuple[Any, ...]


class _Parser:
    """Recursive descent over the subset, with FHIRPath precedence: and < = != < | < as/is < ."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def parse(self) -> _Ast:
        ast = self.and_expr()
        if self.pos != len(self.tokens):
            raise _Unsupported(f"unexpected {self.tokens[self.pos][1]!r}")
        return ast

    def peek(self, value: str) -> bool:
        return self.pos < len(self.tokens) and self.tokens[self.pos][1] == value

    def take(self, value: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens) or (value is not None and not self.peek(value)):
            raise _Unsupported(f"expected {value or 'a token'}")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def and_expr(self) -> _Ast:
        left = self.eq_expr()
        while self.peek("and"):
            self.take()
            left = ("and", left, self.eq_expr())
        return left

    def eq_expr(self) -> _Ast:
        left = self.union()
        if self.peek("=") or self.peek("!="):
            op = self.take()[1]
            left = ("eq", op == "=", left, self.union())
        return left

    def union(self) -> _Ast:
        parts = [self.type_expr()]
        while self.peek("|"):
            self.take()
            parts.append(self.type_expr())
        return ("union", tuple(parts)) if len(parts) > 1 else parts[0]

    def type_expr(self) -> _Ast:
        left = self.postfix()
        if self.peek("as") or self.peek("is"):
            op = self.take()[1]
            left = (op, left, self.type_name())
        return left

    def type_name(self) -> str:
        kind, name = self.take()
        if kind != "id":
            raise _Unsupported("type name expected")
        if name in ("FHIR", "System") and self.peek("."):
            self.take(".")
            if name == "System":
                raise _Unsupported("System types")
            name = self.take()[1]
        return name

    def postfix(self) -> _Ast:
        ast = self.primary()
        while self.peek(".") or self.peek("["):
            if self.take()[1] == ".":
                ast = ("dot", ast, self.invocation())
            else:
                kind, index = self.take()
                self.take("]")
                if kind != "num" or not index.isdigit():
                    raise _Unsupported("only literal indexes")
                ast = ("index", ast, int(index))
        return ast

    def primary(self) -> _Ast:
        kind, value = self.tokens[self.pos] if self.pos < len(self.tokens) else ("", "")
        if value == "(":
            self.take()
            inner = self.and_expr()
            self.take(")")
            return inner
        if kind == "str":
            self.take()
            return ("lit", re.sub(r"\\(.)", r"\1", value[1:-1]))
        if kind == "num":
            self.take()
            return ("lit", Decimal(value) if "." in value else int(value))
        if value in ("true", "false"):
            self.take()
            return ("lit", value == "true")
        if kind == "var":
            self.take()
            return ("this",)
        return ("root", self.invocation())

    def invocation(self) -> _Ast:
        kind, name = self.take()
        if kind != "id":
            raise _Unsupported(f"unexpected {name!r}")
        if not self.peek("("):
            return ("member", name)
        self.take("(")
        args: list[_Ast] = []
        while not self.peek(")"):
            if args:
                self.take(",")
            args.append(self.and_expr())
        self.take(")")
        return ("call", name, tuple(args))


def _parse(text: str) -> _Ast:
    return _Parser(text).parse()


def _empty(nodes: list[_Node]) -> list[_Node]:
    return []


def _this(nodes: list[_Node]) -> list[_Node]:
    return nodes


class _Binder:
    """Turns a parsed expression into closures for one resource type."""

    def __init__(self, model: _Model) -> None:
        self.model = model
        self.bool_ctx = model.ctx("boolean")

    def bind(self, ast: _Ast, root_type: str | None) -> _Fn:
        """``root_type`` is the static type of the input, when known (for pruning)."""
        method: Callable[[_Ast, str | None], _Fn] = getattr(self, "bind_" + ast[0])
        return method(ast, root_type)

    def bind_this(self, ast: _Ast, root_type: str | None) -> _Fn:
        return _this

    def bind_lit(self, ast: _Ast, root_type: str | None) -> _Fn:
        value = ast[1]
        type_name = "boolean" if isinstance(value, bool) else "string"
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            type_name = "integer" if isinstance(value, int) else "decimal"
        result = [(value, self.model.ctx(type_name))]
        return lambda nodes: list(result)

    def bind_root(self, ast: _Ast, root_type: str | None) -> _Fn:
        """The first invocation of a path: a type name filters, anything else navigates."""
        inv = ast[1]
        if inv[0] == "member" and inv[1][:1].isupper():
            return self._type_filter(inv[1], root_type)
        return self.bind_invocation(inv, _this, root_type)

    def _type_filter(self, type_name: str, root_type: str | None) -> _Fn:
        if type_name not in self.model.defs.types:
            raise _Unsupported(f"unknown type {type_name}")
        if root_type is not None:
            return _this if self.model.is_a(root_type, type_name) else _empty
        is_a = self.model.is_a
        return lambda nodes: [n for n in nodes if is_a(n[1].type, type_name)]

    def bind_dot(self, ast: _Ast, root_type: str | None) -> _Fn:
        names: list[str] = []
        while ast[0] == "dot" and ast[2][0] == "member":  # fuse a.b.c into one walk
            names.append(ast[2][1])
            ast = ast[1]
        if not names:
            left = self.bind(ast[1], root_type)
            return _empty if left is _empty else self.bind_invocation(ast[2], left, None)
        names.reverse()
        if ast[0] == "root" and ast[1][0] == "member" and not ast[1][1][:1].isupper():
            names.insert(0, ast[1][1])
            left = _this
        else:
            left = self.bind(ast, root_type)
        if left is _empty:
            return _empty
        walk = _members(tuple(names))
        return walk if left is _this else lambda nodes: walk(left(nodes))

    def bind_invocation(self, inv: _Ast, source: _Fn, root_type: str | None) -> _Fn:
        if inv[0] == "member":
            step = _members((inv[1],))
            return step if source is _this else lambda nodes: step(source(nodes))
        fn = getattr(self, "call_" + inv[1], None)
        if fn is None:
            raise _Unsupported(f"function {inv[1]}()")
        result: _Fn = fn(source, inv[2])
        return result

    def bind_index(self, ast: _Ast, root_type: str | None) -> _Fn:
        source, index = self.bind(ast[1], root_type), ast[2]
        return _empty if source is _empty else lambda nodes: source(nodes)[index : index + 1]

    def bind_union(self, ast: _Ast, root_type: str | None) -> _Fn:
        parts = [p for p in (self.bind(a, root_type) for a in ast[1]) if p is not _empty]
        if not parts:
            return _empty
        if len(parts) == 1:
            return parts[0]
        # FHIRPath's `|` also removes duplicates; entries are de-duplicated anyway, so skip it.
        return lambda nodes: [n for part in parts for n in part(nodes)]

    def bind_as(self, ast: _Ast, root_type: str | None) -> _Fn:
        return self._of_type(self.bind(ast[1], root_type), self._checked_type(ast[2]))

    def bind_is(self, ast: _Ast, root_type: str | None) -> _Fn:
        return self._is(self.bind(ast[1], root_type), self._checked_type(ast[2]))

    def bind_eq(self, ast: _Ast, root_type: str | None) -> _Fn:
        equal, left, right = ast[1], self.bind(ast[2], root_type), self.bind(ast[3], root_type)
        bool_ctx = self.bool_ctx

        def compare(nodes: list[_Node]) -> list[_Node]:
            a, b = left(nodes), right(nodes)
            if not a or not b:
                return []
            same = len(a) == len(b) and all(_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
            return [(same == equal, bool_ctx)]

        return compare

    def bind_and(self, ast: _Ast, root_type: str | None) -> _Fn:
        left, right = self.bind(ast[1], root_type), self.bind(ast[2], root_type)
        bool_ctx = self.bool_ctx

        def both(nodes: list[_Node]) -> list[_Node]:
            a, b = _as_bool(left(nodes)), _as_bool(right(nodes))
            if a is False or b is False:
                return [(False, bool_ctx)]
            return [(True, bool_ctx)] if a and b else []

        return both

    # -- functions --------------------------------------------------------------------

    def _checked_type(self, name: str) -> str:
        if name not in self.model.defs.types:
            raise _Unsupported(f"unknown type {name}")
        return name

    def _type_arg(self, args: tuple[_Ast, ...]) -> str:
        if len(args) != 1 or args[0][0] != "root" or args[0][1][0] != "member":
            raise _Unsupported("a type name argument is expected")
        return self._checked_type(args[0][1][1])

    def _of_type(self, source: _Fn, type_name: str) -> _Fn:
        if source is _empty:
            return _empty
        is_a = self.model.is_a
        return lambda nodes: [n for n in source(nodes) if is_a(n[1].type, type_name)]

    def _is(self, source: _Fn, type_name: str) -> _Fn:
        is_a, bool_ctx = self.model.is_a, self.bool_ctx

        def check(nodes: list[_Node]) -> list[_Node]:
            found = source(nodes)
            return [(is_a(found[0][1].type, type_name), bool_ctx)] if len(found) == 1 else []

        return check

    def call_as(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        return self._of_type(source, self._type_arg(args))

    call_ofType = call_as

    def call_is(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        return self._is(source, self._type_arg(args))

    def call_where(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        if len(args) != 1:
            raise _Unsupported("where() takes one argument")
        criteria = self.bind(args[0], None)
        return lambda nodes: [n for n in source(nodes) if _as_bool(criteria([n])) is True]

    def call_exists(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        if args:
            raise _Unsupported("exists(criteria)")
        bool_ctx = self.bool_ctx
        return lambda nodes: [(bool(source(nodes)), bool_ctx)]

    def call_empty(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        bool_ctx = self.bool_ctx
        return lambda nodes: [(not source(nodes), bool_ctx)]

    def call_not(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        bool_ctx = self.bool_ctx

        def negate(nodes: list[_Node]) -> list[_Node]:
            value = _as_bool(source(nodes))
            return [] if value is None else [(not value, bool_ctx)]

        return negate

    def call_first(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        return lambda nodes: source(nodes)[:1]

    def call_extension(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        if len(args) != 1 or args[0][0] != "lit" or not isinstance(args[0][1], str):
            raise _Unsupported("extension() takes a literal url")
        url, step = args[0][1], _members(("extension",))
        return lambda nodes: [n for n in step(source(nodes)) if n[0].get("url") == url]

    def call_resolve(self, source: _Fn, args: tuple[_Ast, ...]) -> _Fn:
        """A stand-in for the target: a node typed from the reference, with no content.

        Nothing is fetched at index time; ``resolve() is T`` only needs the target's type.
        """
        model = self.model

        def resolve(nodes: list[_Node]) -> list[_Node]:
            out = []
            for value, _ in source(nodes):
                target = _resolved_type(value)
                if target is not None and target in model.defs.types:
                    out.append(({"resourceType": target}, model.ctx(target)))
            return out

        return resolve


def _members(names: tuple[str, ...]) -> _Fn:
    """Navigate the path ``names`` from every node, flattening arrays and typing each result."""

    def walk(nodes: list[_Node]) -> list[_Node]:
        for name in names:
            out: list[_Node] = []
            for value, ctx in nodes:
                if type(value) is not dict:
                    continue
                kids = ctx.kids.get(name)
                if kids is None:
                    kids = ctx.child(name)
                for key, child in kids:
                    item = value.get(key)
                    if item is None:
                        continue
                    if type(item) is list:
                        for x in item:
                            if x is not None:
                                out.append((x, child or ctx.model.resource_ctx(x)))
                    else:
                        out.append((item, child or ctx.model.resource_ctx(item)))
            if not out:
                return out
            nodes = out
        return nodes

    return walk


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _as_bool(nodes: list[_Node]) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean (None = empty)."""
    if not nodes:
        return None
    if len(nodes) == 1 and isinstance(nodes[0][0], bool):
        return nodes[0][0]
    return True


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------

_ID_RE = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_RE = re.compile(rf"([A-Z][A-Za-z]+)/({_ID_RE})(?:/_history/{_ID_RE})?")
_ABSOLUTE_RE = re.compile(rf"(.*/([A-Z][A-Za-z]+)/({_ID_RE}))(?:/_history/{_ID_RE})?")


def _parse_reference(ref: str, resource_types: frozenset[str]) -> ReferenceEntry | None:
    """A Reference.reference string as an index entry; None for local ``#id`` references."""
    if not ref or ref.startswith("#"):
        return None
    if ref.startswith("urn:"):
        return ReferenceEntry(None, None, ref)
    if "://" in ref:
        match = _ABSOLUTE_RE.fullmatch(ref)
        if match and match.group(2) in resource_types:
            return ReferenceEntry(match.group(2), match.group(3), match.group(1))
        return ReferenceEntry(None, None, ref)
    match = _RELATIVE_RE.fullmatch(ref)
    if match and match.group(1) in resource_types:
        return ReferenceEntry(match.group(1), match.group(2), None)
    return ReferenceEntry(None, None, ref)


def _parse_canonical(url: str, resource_types: frozenset[str]) -> ReferenceEntry:
    """A canonical (``url|version``) points at ``url``; a ``.../Type/id`` shape also names it."""
    url = url.split("|", 1)[0]
    found = _parse_reference(url, resource_types)
    if found is None or found.target_type is None:
        return ReferenceEntry(None, None, url)
    return ReferenceEntry(found.target_type, found.target_id, url)


def _resolved_type(value: Any) -> str | None:
    """The resource type a Reference (or canonical) points to, as far as its text tells."""
    if isinstance(value, str):
        ref: Any = value.split("|", 1)[0]
        declared = None
    elif isinstance(value, dict):
        ref, declared = value.get("reference"), value.get("type")
    else:
        return None
    if isinstance(ref, str) and not ref.startswith(("#", "urn:")):
        match = _ABSOLUTE_RE.fullmatch(ref) if "://" in ref else _RELATIVE_RE.fullmatch(ref)
        if match:
            return match.group(2) if "://" in ref else match.group(1)
    return declared if isinstance(declared, str) else None


# ---------------------------------------------------------------------------------------------
# Nodes -> entries, by search parameter type and the node's FHIR type
# ---------------------------------------------------------------------------------------------

_QUANTITY_TYPES = frozenset(
    {"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"}
)
_NAME_PARTS = (
    ("family", False),
    ("given", True),
    ("prefix", True),
    ("suffix", True),
    ("text", False),
)
_ADDRESS_PARTS = (
    ("line", True),
    ("city", False),
    ("district", False),
    ("state", False),
    ("postalCode", False),
    ("country", False),
    ("text", False),
)
_ISO_4217 = "urn:iso:std:iso:4217"
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_OPEN_BOUND = 1e300


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a mapper needs beyond the node: known resource types and the parameter's targets."""

    resource_types: frozenset[str]
    targets: frozenset[str]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _norm(value: Any) -> str | None:
    return normalize_string(value) if isinstance(value, str) and value else None


def _string_parts(value: dict[str, Any], parts: tuple[tuple[str, bool], ...]) -> Iterator[str]:
    for key, repeats in parts:
        item = value.get(key)
        for x in item if repeats and isinstance(item, list) else (item,):
            if isinstance(x, str) and x:
                yield x


def _string_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    if isinstance(value, str):
        texts: Iterable[str] = (value,) if value else ()
    elif isinstance(value, dict) and type_name == "HumanName":
        texts = _string_parts(value, _NAME_PARTS)
    elif isinstance(value, dict) and type_name == "Address":
        texts = _string_parts(value, _ADDRESS_PARTS)
    else:
        return
    for text in texts:
        yield StringEntry(normalize_string(text), text)


def _coding_tokens(value: dict[str, Any]) -> Iterator[Entry]:
    text = _norm(value.get("text"))
    codings = value.get("coding")
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                system, code = _str(coding.get("system")), _str(coding.get("code"))
                yield TokenEntry(system, code, _norm(coding.get("display")))
    # :text matches CodeableConcept.text or any Coding.display (R4 search.html), so the text
    # gets an entry of its own rather than overriding the displays.
    if text:
        yield TokenEntry(None, None, text)


def _complex_token(value: dict[str, Any], type_name: str) -> Entry | None:
    if type_name == "Coding":
        return TokenEntry(
            _str(value.get("system")), _str(value.get("code")), _norm(value.get("display"))
        )
    if type_name == "Identifier":
        kind = value.get("type")
        text = _norm(kind.get("text")) if isinstance(kind, dict) else None
        return TokenEntry(_str(value.get("system")), _str(value.get("value")), text)
    if type_name == "ContactPoint":  # R4: a ContactPoint token matches its value
        return TokenEntry(None, _str(value.get("value")), None)
    if type_name in _QUANTITY_TYPES:
        return TokenEntry(_str(value.get("system")), _str(value.get("code")), None)
    return None


def _token_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    if isinstance(value, bool):
        yield TokenEntry(None, "true" if value else "false", None)
    elif isinstance(value, str | int | float) and str(value):
        yield TokenEntry(None, str(value), None)
    elif isinstance(value, dict):
        if type_name == "CodeableConcept":
            yield from _coding_tokens(value)
            return
        entry = _complex_token(value, type_name)
        if entry is not None and entry != TokenEntry(None, None, None):
            yield entry


def _date_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    if isinstance(value, str):
        found = _safe_date(value) if type_name in _DATE_TYPES else None
        if found:
            yield DateEntry(*found)
    elif isinstance(value, dict) and type_name == "Period":
        start, end = _safe_date(value.get("start")), _safe_date(value.get("end"))
        if start or end:
            yield DateEntry(start[0] if start else DATE_MIN, end[1] if end else DATE_MAX)
    elif isinstance(value, dict) and type_name == "Timing":
        events = [r for r in map(_safe_date, value.get("event") or ()) if r]
        if events:
            yield DateEntry(min(r[0] for r in events), max(r[1] for r in events))


def _safe_date(value: Any) -> tuple[float, float] | None:
    """Indexing never fails on a bad date: validation rejects those before storage."""
    try:
        return date_range(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _reference_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    types = scope.resource_types
    if isinstance(value, str):
        if value:
            yield _parse_canonical(value, types)
    elif isinstance(value, dict) and "resourceType" in value:  # Bundle.entry[0].resource
        rtype, rid = value.get("resourceType"), value.get("id")
        if rtype in types and (not scope.targets or rtype in scope.targets):
            yield ReferenceEntry(rtype, rid if isinstance(rid, str) else None, None)
    elif isinstance(value, dict):
        ref = value.get("reference")
        found = _parse_reference(ref, types) if isinstance(ref, str) else None
        if found is not None:
            yield found


def _quantity(value: Any, system: Any, code: Any, unit: Any) -> QuantityEntry | None:
    text = _number_text(value)
    if text is None:
        return None
    try:
        number, low, high = decimal_range(text)
    except ValueError:
        return None
    return QuantityEntry(number, low, high, _str(system), _str(code), _str(unit))


def _range_quantity(value: dict[str, Any]) -> QuantityEntry | None:
    """A Range indexes as one quantity: value = low (else high), bounds = [low, high].

    An open side gets a huge finite bound rather than inf, which some row encoders turn into null.
    """
    low_q, high_q = value.get("low"), value.get("high")
    low = _quantity_entry(low_q, "Quantity") if isinstance(low_q, dict) else None
    high = _quantity_entry(high_q, "Quantity") if isinstance(high_q, dict) else None
    unit_of = low or high
    if unit_of is None:
        return None
    return QuantityEntry(
        unit_of.value,
        low.low if low else -_OPEN_BOUND,
        high.high if high else _OPEN_BOUND,
        unit_of.system,
        unit_of.code,
        unit_of.unit,
    )


def _quantity_entry(value: dict[str, Any], type_name: str) -> QuantityEntry | None:
    if type_name == "Money":
        return _quantity(value.get("value"), _ISO_4217, value.get("currency"), None)
    if type_name == "Range":
        return _range_quantity(value)
    if type_name in _QUANTITY_TYPES:
        return _quantity(
            value.get("value"), value.get("system"), value.get("code"), value.get("unit")
        )
    return None


def _quantity_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    if isinstance(value, dict):
        entry = _quantity_entry(value, type_name)
        if entry is not None:
            yield entry


def _number_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    if isinstance(value, dict):
        if type_name == "Range":  # RiskAssessment.prediction.probability is decimal | Range
            entry = _range_quantity(value)
            if entry is not None:
                yield NumberEntry(entry.value, entry.low, entry.high)
        return
    text = _number_text(value)
    if text is not None:
        yield NumberEntry(*decimal_range(text))


def _uri_entries(value: Any, type_name: str, scope: _Scope) -> Iterator[Entry]:
    if isinstance(value, str) and value:
        yield UriEntry(value)


_Mapper = Callable[[Any, str, _Scope], Iterator[Entry]]
_MAPPERS: dict[str, _Mapper] = {
    "string": _string_entries,
    "token": _token_entries,
    "date": _date_entries,
    "reference": _reference_entries,
    "quantity": _quantity_entries,
    "number": _number_entries,
    "uri": _uri_entries,
}


# ---------------------------------------------------------------------------------------------
# The fhirpathpy fallback (and reference evaluator for tests)
# ---------------------------------------------------------------------------------------------

_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
_RESOURCE_PREFIX_RE = re.compile(r"(?<![\w.])(?:Domain)?Resource\.")
_BINARY_AS_RE = re.compile(r"\(([^()|]+?)\s+as\s+([A-Za-z]+)\)")


def _fhirpathpy_text(expression: str, resource_type: str) -> str:
    """Work around two fhirpathpy gaps: ``Resource.x`` does not match a Patient, and ``as``
    raises on a collection (R4 uses it on repeating elements; R5 switched to ofType)."""
    text = _RESOURCE_PREFIX_RE.sub(resource_type + ".", expression)
    text = _BINARY_AS_RE.sub(r"(\1.ofType(\2))", text)
    return text.replace(".as(", ".ofType(")


def _shape_type(value: Any, param_type: str) -> str:
    """The FHIR type of an untyped fhirpathpy result, guessed from its JSON shape."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "integer" if isinstance(value, int) else "decimal"
    if not isinstance(value, dict):
        return "dateTime" if param_type == "date" else "string"
    return _dict_shape(value, param_type)


_SHAPES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"resourceType"}), "Resource"),
    (frozenset({"coding"}), "CodeableConcept"),
    (frozenset({"currency"}), "Money"),
    (frozenset({"comparator", "unit"}), "Quantity"),
    (frozenset({"low", "high"}), "Range"),
    (frozenset({"start", "end"}), "Period"),
    (frozenset({"event", "repeat"}), "Timing"),
    (frozenset({"family", "given", "prefix", "suffix"}), "HumanName"),
    (frozenset({"line", "city", "district", "state", "postalCode", "country"}), "Address"),
    (frozenset({"reference", "identifier"}), "Reference"),
    (frozenset({"display"}), "Coding"),
)
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def _dict_shape(value: dict[str, Any], param_type: str) -> str:
    """Best effort only: the fast path knows types exactly; this serves fhirpathpy results."""
    for keys, name in _SHAPES:
        if keys & value.keys():
            return name
    if "value" in value:
        if "code" in value:
            return "Quantity"
        return "ContactPoint" if value.get("system") in _CONTACT_SYSTEMS else "Identifier"
    if "code" in value:
        return "Coding"
    if "text" in value:
        return "HumanName" if param_type == "string" else "CodeableConcept"
    return "Element"


class _FhirpathpyEvaluator:
    """fhirpathpy, compiled once, with resolve() standing in the way the fast path does.

    Used for expressions outside the compiled subset (none among the R4 core parameters) and as
    the reference the equivalence tests compare the fast path with. fhirpathpy keeps global state
    while evaluating, so this path is not meant for concurrent threads.
    """

    def __init__(self, model: _Model, expression: str, resource_type: str, param_type: str) -> None:
        # Imported here: only the fallback needs fhirpathpy, and it is slow to import.
        from fhirpathpy import compile as fp_compile
        from fhirpathpy.models import models

        self.model = model
        self.param_type = param_type
        self.text = _fhirpathpy_text(expression, resource_type)
        options = {"returnRawData": True, "userInvocationTable": {"resolve": {"fn": self._resolve}}}
        self._fn = fp_compile(self.text, model=models["r4"], options=options)
        self._path2type: dict[str, str] = models["r4"]["path2Type"]

    def _resolve(self, inputs: list[Any]) -> list[Any]:
        from fhirpathpy.engine.nodes import ResourceNode

        out = []
        for value in inputs:
            target = _resolved_type(value)
            if target is not None:
                out.append(ResourceNode.create_node({"resourceType": target}))
        return out

    def __call__(self, nodes: list[_Node]) -> list[_Node]:
        out: list[_Node] = []
        for item in self._fn(nodes[0][0], None):
            value, type_name = self._typed(item)
            if value is not None:
                out.append((value, self.model.ctx(type_name)))
        return out

    def _typed(self, item: Any) -> tuple[Any, str]:
        path = getattr(item, "path", None)
        value = getattr(item, "data", item)
        if value is not None and not isinstance(value, str | int | float | bool | dict | list):
            value = str(value)  # FP_DateTime and friends
        if isinstance(path, str) and path.startswith("System."):
            return value, _SYSTEM_TYPES.get(path[7:], "string")
        if isinstance(path, str) and "." in path:
            path = self._path2type.get(path, "BackboneElement")
        if isinstance(path, str) and path in self.model.defs.types:
            return value, path
        return value, _shape_type(value, self.param_type)


# ---------------------------------------------------------------------------------------------
# The indexer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    param: SearchParamDef
    evaluate: _Fn
    mapper: _Mapper
    scope: _Scope

    def entries(self, nodes: list[_Node]) -> list[Entry]:
        mapper, scope = self.mapper, self.scope
        return list(
            dict.fromkeys(e for value, ctx in nodes for e in mapper(value, ctx.type, scope))
        )


class SearchIndexer:
    """Extracts the search-index entries of resources, every expression compiled up front."""

    def __init__(self, defs: Definitions | None = None) -> None:
        self.defs = defs or definitions()
        self._model = _Model(self.defs)
        self._binder = _Binder(self._model)
        self._asts: dict[str, _Ast | None] = {}
        self.fallbacks: set[str] = set()  # expressions evaluated by fhirpathpy
        self._reference: dict[tuple[str, str], _FhirpathpyEvaluator] = {}
        self._plans: dict[str, dict[str, _Plan]] = {
            rtype: self._plan_type(rtype) for rtype in sorted(self.defs.resource_types)
        }

    def _plan_type(self, rtype: str) -> dict[str, _Plan]:
        plans = {}
        for code, param in self.defs.search_params_for(rtype).items():
            if param.type in INDEXED_TYPES and param.expression:
                plan = self._plan(param, self._compile(param.expression, rtype, param.type))
                if plan.evaluate is not _empty:  # other types' branches of a shared expression
                    plans[code] = plan
        return plans

    def _plan(self, param: SearchParamDef, evaluate: _Fn) -> _Plan:
        scope = _Scope(self.defs.resource_types, frozenset(param.target))
        return _Plan(param, evaluate, _MAPPERS[param.type], scope)

    def _compile(self, expression: str, rtype: str, param_type: str) -> _Fn:
        if expression not in self._asts:
            try:
                self._asts[expression] = _parse(expression)
            except _Unsupported:
                self._asts[expression] = None
        ast = self._asts[expression]
        if ast is not None:
            try:
                return self._binder.bind(ast, rtype)
            except _Unsupported:
                pass
        self.fallbacks.add(expression)
        return _FhirpathpyEvaluator(self._model, expression, rtype, param_type)

    def _root(self, resource: dict[str, Any]) -> tuple[dict[str, _Plan], list[_Node]]:
        rtype = resource.get("resourceType")
        plans = self._plans.get(rtype) if isinstance(rtype, str) else None
        if plans is None or not isinstance(rtype, str):
            raise ValueError(f"not a FHIR R4 resource type: {rtype!r}")
        return plans, [(resource, self._model.ctx(rtype))]

    def extract(self, resource: dict[str, Any]) -> dict[str, list[Entry]]:
        """Search-param code -> its de-duplicated entries (only params that have any)."""
        plans, root = self._root(resource)
        out: dict[str, list[Entry]] = {}
        for code, plan in plans.items():
            nodes = plan.evaluate(root)
            if nodes:
                entries = plan.entries(nodes)
                if entries:
                    out[code] = entries
        return out

    def extract_some(
        self, resource: dict[str, Any], codes: Iterable[str]
    ) -> dict[str, list[Entry]]:
        """``extract`` for the parameters ``codes`` only (a subscription's filters)."""
        plans, root = self._root(resource)
        out: dict[str, list[Entry]] = {}
        for code in codes:
            plan = plans.get(code)
            nodes = plan.evaluate(root) if plan is not None else None
            if plan is not None and nodes:
                entries = plan.entries(nodes)
                if entries:
                    out[code] = entries
        return out

    def values(self, resource: dict[str, Any], param_code: str) -> list[Any]:
        """The raw FHIRPath result nodes of one parameter (for debugging and tests)."""
        plan, root = self._plan_for(resource, param_code)
        return [value for value, _ in plan.evaluate(root)] if plan else []

    def _plan_for(self, resource: dict[str, Any], code: str) -> tuple[_Plan | None, list[_Node]]:
        """The parameter's plan; None when it was pruned (it cannot match this type)."""
        plans, root = self._root(resource)
        param = self.defs.search_params_for(resource["resourceType"]).get(code)
        if param is None or param.type not in INDEXED_TYPES or not param.expression:
            raise KeyError(f"{resource['resourceType']} has no indexed search parameter {code!r}")
        return plans.get(code), root

    def _compare(
        self, resource: dict[str, Any], code: str
    ) -> tuple[list[_Node], list[_Node], _Plan]:
        """Fast-path and fhirpathpy nodes of one parameter, for the equivalence tests."""
        plan, root = self._plan_for(resource, code)
        rtype = resource["resourceType"]
        param = self.defs.search_params_for(rtype)[code]
        assert param.expression is not None
        reference = self._reference.get((rtype, code))
        if reference is None:
            reference = _FhirpathpyEvaluator(self._model, param.expression, rtype, param.type)
            self._reference[rtype, code] = reference
        fast = plan.evaluate(root) if plan else []
        return fast, reference(root), plan or self._plan(param, reference)
