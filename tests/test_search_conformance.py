"""Search conformance over the official R4 examples (hl7.fhir.r4.examples 4.0.1).

What this proves: for every SearchParameter of type string, token, date, reference, quantity,
number or uri that the loaded (non-terminology) examples exercise, the server's result set
equals what the parameter's FHIRPath expression selects over the corpus, on both stores.

The oracle is independent of the server's own extraction code (``takamul.fhir.search_values``
is not used): each expression is evaluated by fhirpathpy with its R4 model over the example
JSON, and the R4 matching rules of search.html are applied to the typed FHIRPath nodes by the
small functions below. From the nodes found, a few query values are derived per parameter; the
expected ids are the loaded examples of that type with at least one matching node, the actual
ids those the server returns (restricted to the loaded example ids, since other test modules
write to the same server).

Expression rewrites the oracle needs for fhirpathpy (none changes what R4 means to select):

* ``Resource.x`` / ``DomainResource.x`` become ``Type.x`` (fhirpathpy does not match a Patient
  against the base type name);
* ``(path as T)`` and ``path.as(T)`` become ``path.ofType(T)``: R4 applies ``as`` to repeating
  elements, which FHIRPath forbids on collections (fhirpathpy raises); R5 rewrote the same
  expressions with ``ofType``;
* ``resolve()`` is supplied by the oracle: it yields an empty resource of the type a reference
  names (``Type/id``, ``.../Type/id``, or ``Reference.type``), which is all ``resolve() is T``
  needs.

Matching rules (R4 search.html) applied by the oracle:

* string: case- and accent-insensitive starts-with on any part (HumanName and Address parts);
  ``:contains`` the same for a substring; ``:exact`` a case-sensitive equality with a part;
* token: ``code`` matches the code of any Coding / Identifier.value / ContactPoint.value /
  primitive; ``system|code`` also needs the system; ``:text`` is a string search (as above)
  on CodeableConcept.text, Coding.display or Identifier.type.text;
* date: the value and the resource element are half-open ranges at their precision (a Period
  from start to end, open sides unbounded; a Timing from its first to last event); ``eq`` means
  the element's range lies inside the search value's range, ``ge``/``le`` add "the element
  reaches above/below it", ``gt``/``lt`` mean the element reaches above/below it;
* reference: ``Type/id`` (or ``:Type`` and the id) matches a relative reference or an inlined
  resource with that type and id, a bare id any type with that id; an absolute URL matches the
  same URL (without a canonical's ``|version``). An absolute URL ending in ``/Type/id`` also
  counts as naming ``Type/id``: the server's convention, as it cannot tell its own base from
  another's when indexing;
* quantity / number: ``eq`` matches a value inside the range the search value's significant
  figures imply (``5.4`` is [5.35, 5.45)); ``value|system|code`` also needs system and code
  (Money: ``urn:iso:std:iso:4217`` and the currency). Range and SampledData are not
  quantities to the oracle: no query value is taken from them and none is expected to match;
* uri: exact equality; ``:below`` a prefix ending in ``/``.

Query values are the first value found and one that differs from it, per parameter. Parameters
whose values cannot be searched by these rules are exercised but not queried (the count is
printed): references holding only a display, an identifier (the server does not support
``:identifier``) or a ``#contained`` id; CodeableConcepts with text only (covered by ``:text``);
quantities that are Ranges.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import cache, partial
from typing import Any

import httpx
import pytest
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from takamul.fhir.definitions import definitions
from tests.corpus import Example, LoadedCorpus, corpus_examples, load_corpus

CHECKED_TYPES = ("string", "token", "date", "reference", "quantity", "number", "uri")
R4 = models["r4"]

pytestmark = pytest.mark.slow

# (resource type or "*", parameter code) -> why the server and the oracle cannot agree.
EXCLUDED: dict[tuple[str, str], str] = {
    ("*", "_lastUpdated"): "the server assigns meta.lastUpdated; the examples' values are gone",
}


@pytest.fixture(scope="module")
def corpus(fhir_base: str) -> LoadedCorpus:
    return load_corpus(fhir_base)


# -- the oracle: fhirpathpy over the examples ----------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One FHIRPath result: its FHIR type name and its JSON value."""

    type: str
    value: Any


_SYSTEM_TYPES = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Integer": "integer",
    "System.Decimal": "decimal",
    "System.Date": "date",
    "System.DateTime": "dateTime",
    "System.Time": "time",
}
_REF_TYPE_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


def _fhirpath_text(expression: str, resource_type: str) -> str:
    text = re.sub(r"(?<![\w.])(?:Domain)?Resource\.", resource_type + ".", expression)
    text = re.sub(r"\(([^()|]+?)\s+as\s+([A-Za-z]+)\)", r"(\1.ofType(\2))", text)
    return text.replace(".as(", ".ofType(")


def _resolve(inputs: list[Any]) -> list[Any]:
    """``resolve()`` as far as the text of a reference tells its target's type."""
    out = []
    for item in inputs:
        data = getattr(item, "data", item)
        ref: Any = data
        declared: Any = None
        if isinstance(data, dict):
            ref, declared = data.get("reference"), data.get("type")
        found = None
        if isinstance(ref, str) and not ref.startswith("#"):
            found = _REF_TYPE_RE.search(ref.split("|")[0])
        target = found.group(1) if found else declared
        if isinstance(target, str) and definitions().is_resource_type(target):
            out.append(ResourceNode.create_node({"resourceType": target}))
    return out


def _node(item: Any) -> Node:
    path = getattr(item, "path", None)
    value = getattr(item, "data", item)
    if isinstance(path, str) and path.startswith("System."):
        return Node(_SYSTEM_TYPES.get(path, "string"), value)
    if isinstance(path, str) and "." in path:
        return Node(R4["path2Type"].get(path, "BackboneElement"), value)
    if isinstance(path, str):
        return Node(path, value)
    return Node(type(value).__name__, value)


@dataclass(frozen=True, slots=True)
class Subject:
    """One (resource type, search parameter) and the nodes its expression selects, by id."""

    resource_type: str
    code: str
    param_type: str
    expression: str
    targets: tuple[str, ...]  # the resource types a reference parameter may point to
    nodes: dict[str, list[Node]]

    @property
    def name(self) -> str:
        return f"{self.resource_type}.{self.code}"

    @property
    def all_nodes(self) -> list[Node]:
        return [n for nodes in self.nodes.values() for n in nodes]


def _union_branches(expression: str) -> list[str]:
    """The operands of the top-level ``|`` (fhirpathpy's union forgets the nodes' types)."""
    parts, depth, start, quoted = [], 0, 0, False
    for i, char in enumerate(expression):
        if char == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        elif not quoted and depth == 0 and char == "|":
            parts.append(expression[start:i].strip())
            start = i + 1
    return [*parts, expression[start:].strip()]


@cache
def _compiled(expression: str, resource_type: str) -> Callable[[dict[str, Any]], list[Any]]:
    options = {"returnRawData": True, "userInvocationTable": {"resolve": {"fn": _resolve}}}
    branches = [
        fhirpath_compile(_fhirpath_text(branch, resource_type), model=R4, options=options)
        for branch in _union_branches(expression)
    ]
    return lambda resource: [item for fn in branches for item in fn(resource, None)]


def oracle(examples: Iterable[Example]) -> tuple[list[Subject], dict[str, str]]:
    """Every (type, param) with at least one node in ``examples``; and oracle errors by name."""
    by_type: dict[str, list[Example]] = {}
    for ex in examples:
        by_type.setdefault(ex.type, []).append(ex)
    subjects: list[Subject] = []
    errors: dict[str, str] = {}
    for rtype in sorted(by_type):
        for code, param in sorted(definitions().search_params_for(rtype).items()):
            if param.type not in CHECKED_TYPES or not param.expression:
                continue
            if (rtype, code) in EXCLUDED or ("*", code) in EXCLUDED:
                continue
            nodes: dict[str, list[Node]] = {}
            for ex in by_type[rtype]:
                try:
                    found = _compiled(param.expression, rtype)(ex.resource)
                except Exception as err:  # an expression fhirpathpy cannot evaluate
                    errors[f"{rtype}.{code}"] = f"{ex.file}: {type(err).__name__}: {err}"
                    continue
                if found:
                    nodes[ex.id] = [_node(item) for item in found]
            if nodes:
                subjects.append(
                    Subject(rtype, code, param.type, param.expression, param.target, nodes)
                )
    return subjects, errors


# -- matching rules per parameter type -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """One query value and the predicate it means on a node."""

    modifier: str  # "", or ":exact", ":contains", ":text", ":below", ":Type"
    value: str  # as sent, before URL encoding
    matches: Callable[[Node], bool]


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(kept.split())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_parts(node: Node) -> list[str]:
    if isinstance(node.value, str):
        return [node.value]
    keys = {"HumanName": _NAME_PARTS, "Address": _ADDRESS_PARTS}.get(node.type, ())
    parts: list[str] = []
    for key in keys:
        item = node.value.get(key) if isinstance(node.value, dict) else None
        parts.extend(p for p in (item if isinstance(item, list) else [item]) if isinstance(p, str))
    return parts


def string_probes(subject: Subject) -> list[Probe]:
    values = subject.all_nodes
    probes = []
    parts = _distinct(p for n in values for p in _string_parts(n) if p.strip())
    for part in _spread(parts):
        start = part.strip()[:3].upper()
        folded = _fold(start)
        probes.append(Probe("", start, partial(_starts, folded=folded)))
        if len(part) <= 300:
            probes.append(Probe(":exact", part, partial(_is_part, part=part)))
    middle = next((p[1:5] for p in parts if len(p.strip()) > 5 and p[1:5].strip()), None)
    if middle is not None:
        probes.append(Probe(":contains", middle, partial(_contains, folded=_fold(middle))))
    return probes


def _is_part(node: Node, part: str) -> bool:
    return part in _string_parts(node)


def _contains(node: Node, folded: str) -> bool:
    return any(folded in _fold(p) for p in _string_parts(node))


def _starts(node: Node, folded: str) -> bool:
    return any(_fold(p).startswith(folded) for p in _string_parts(node))


_QUANTITY_TYPES = frozenset(
    {"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"}
)


def _token_pairs(node: Node) -> list[tuple[str | None, str]]:
    v = node.value
    if isinstance(v, bool):
        return [(None, "true" if v else "false")]
    if isinstance(v, str | int | float):
        return [(None, str(v))]
    if not isinstance(v, dict):
        return []
    if node.type == "CodeableConcept":
        codings = v.get("coding") or []
        return [pair for c in codings for pair in _token_pairs(Node("Coding", c))]
    field = {"Coding": "code", "Identifier": "value", "ContactPoint": "value"}.get(node.type)
    if node.type in _QUANTITY_TYPES:
        field = "code"
    if field is None or not isinstance(v.get(field), str):
        return []
    system = v.get("system") if node.type != "ContactPoint" else None
    return [(system if isinstance(system, str) else None, v[field])]


def _token_texts(node: Node) -> list[str]:
    """What ``:text`` searches: CodeableConcept.text, Coding.display, Identifier.type.text."""
    v = node.value
    if not isinstance(v, dict):
        return []
    if node.type == "CodeableConcept":
        codings = [c for c in v.get("coding") or [] if isinstance(c, dict)]
        texts = [v.get("text"), *(c.get("display") for c in codings)]
    elif node.type == "Coding":
        texts = [v.get("display")]
    elif node.type == "Identifier" and isinstance(v.get("type"), dict):
        texts = [v["type"].get("text")]
    else:
        return []
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _text_starts(node: Node, folded: str) -> bool:
    return any(_fold(t).startswith(folded) for t in _token_texts(node))


def token_probes(subject: Subject) -> list[Probe]:
    probes = []
    pairs = _distinct(p for n in subject.all_nodes for p in _token_pairs(n) if "|" not in p[1])
    for system, code in _spread(pairs, key=lambda p: p[1]):
        probes.append(Probe("", code, partial(_has_code, code=code)))
        if system and "|" not in system:
            probes.append(Probe("", f"{system}|{code}", partial(_has_pair, pair=(system, code))))
    return probes


def _has_code(node: Node, code: str) -> bool:
    return any(c == code for _, c in _token_pairs(node))


def _has_pair(node: Node, pair: tuple[str, str]) -> bool:
    return pair in _token_pairs(node)


def token_text_probes(subject: Subject) -> list[Probe]:
    """``:text``: the start of a CodeableConcept.text, Coding.display or Identifier.type.text."""
    if subject.param_type != "token":
        return []
    texts = _distinct(t for n in subject.all_nodes for t in _token_texts(n))
    probes = []
    for text in _spread(texts):
        start = text.strip()[:3].upper()
        probes.append(Probe(":text", start, partial(_text_starts, folded=_fold(start))))
    return probes


_DATE_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
INF = float("inf")


def date_bounds(text: str) -> tuple[float, float]:
    """The half-open range [low, high) of epoch seconds a FHIR date/dateTime/instant covers."""
    m = _DATE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a FHIR date: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    tz = UTC
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    start = datetime(
        int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), tzinfo=tz
    )
    if month is None:
        end = start.replace(year=start.year + 1)
    elif day is None:
        end = (start + timedelta(days=31)).replace(day=1)
    elif hour is None:
        end = start + timedelta(days=1)
    elif second is None:
        end = start + timedelta(minutes=1)
    else:
        start += timedelta(seconds=int(second))
        end = start + timedelta(seconds=1)
    low, high = start.timestamp(), end.timestamp()
    if fraction:
        low += int(fraction[1:]) / 10 ** (len(fraction) - 1)
        high = low + 10.0 ** -(len(fraction) - 1)
    return low, high


DATE_TYPES = frozenset({"date", "dateTime", "instant"})


def _date_literals(node: Node) -> list[str]:
    v = node.value
    if isinstance(v, str) and node.type in DATE_TYPES:
        return [v]
    if isinstance(v, dict) and node.type == "Period":
        return [x for x in (v.get("start"), v.get("end")) if isinstance(x, str)]
    if isinstance(v, dict) and node.type == "Timing":
        return [x for x in v.get("event") or [] if isinstance(x, str)]
    return []


def _date_range(node: Node) -> tuple[float, float] | None:
    v = node.value
    if isinstance(v, str) and node.type in DATE_TYPES:
        return date_bounds(v)
    if isinstance(v, dict) and node.type == "Period":
        start, end = v.get("start"), v.get("end")
        if start is None and end is None:
            return None
        return (
            date_bounds(start)[0] if start else -INF,
            date_bounds(end)[1] if end else INF,
        )
    if isinstance(v, dict) and node.type == "Timing" and v.get("event"):
        events = [date_bounds(e) for e in v["event"]]
        return min(e[0] for e in events), max(e[1] for e in events)
    return None


def _date_matches(prefix: str, lo: float, hi: float) -> Callable[[Node], bool]:
    def test(node: Node) -> bool:
        found = _date_range(node)
        if found is None:
            return False
        low, high = found
        eq = low >= lo and high <= hi
        return {
            "eq": eq,
            "ge": high > hi or eq,
            "le": low < lo or eq,
            "gt": high > hi,
            "lt": low < lo,
        }[prefix]

    return test


def date_probes(subject: Subject) -> list[Probe]:
    values = subject.all_nodes
    probes = []
    literals = _distinct(x for n in values for x in _date_literals(n))
    prefix_sets = (("eq", "ge", "lt"), ("eq", "le", "gt"))
    for literal, prefixes in zip(_spread(literals), prefix_sets, strict=False):
        lo, hi = date_bounds(literal)
        for prefix in prefixes:
            probes.append(Probe("", prefix + literal, _date_matches(prefix, lo, hi)))
    return probes


_RELATIVE_RE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")


def _reference_keys(node: Node) -> list[str]:
    """``Type/id`` of a relative reference or an inlined resource; the URL of an absolute one.

    An absolute URL ending in ``/Type/id`` is also taken to name ``Type/id``: the server's
    documented convention (it cannot tell its own base from another at indexing time).
    """
    v = node.value
    if isinstance(v, dict) and "resourceType" in v:
        return [f"{v['resourceType']}/{v['id']}"] if isinstance(v.get("id"), str) else []
    ref = v.get("reference") if isinstance(v, dict) else v
    if not isinstance(ref, str):
        return []
    if isinstance(v, str):  # a canonical or uri: without its |version
        ref = ref.split("|", 1)[0]
    keys = [ref] if _is_absolute(ref) else []
    tail = ref.rsplit("/", 2)[-2:] if keys and not ref.startswith("urn:") else [ref]
    m = _RELATIVE_RE.fullmatch("/".join(tail))
    if m and definitions().is_resource_type(m.group(1)):
        keys.append(f"{m.group(1)}/{m.group(2)}")
    return keys


def _is_absolute(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "urn:"))


def reference_probes(subject: Subject) -> list[Probe]:
    values = subject.all_nodes
    keys = _distinct(k for n in values for k in _reference_keys(n))
    targets = subject.targets
    relative = [
        k for k in keys if not _is_absolute(k) and (not targets or k.split("/")[0] in targets)
    ]
    absolute = [k for k in keys if _is_absolute(k)][:1]
    probes = [Probe("", k, partial(_names, key=k)) for k in _spread(relative) + absolute]
    if relative:  # the same target as Type-modifier + id, and as a bare id of any type
        rtype, rid = relative[0].split("/")
        probes.append(Probe(f":{rtype}", rid, partial(_names, key=relative[0])))
        probes.append(Probe("", rid, partial(_has_id, rid=rid)))
    return probes


def _names(node: Node, key: str) -> bool:
    return key in _reference_keys(node)


def _has_id(node: Node, rid: str) -> bool:
    return any(not _is_absolute(k) and k.split("/")[1] == rid for k in _reference_keys(node))


ISO_4217 = "urn:iso:std:iso:4217"


def _number_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return format(Decimal(repr(value) if isinstance(value, float) else value), "f")


def _quantity(node: Node) -> tuple[str, str | None, str | None] | None:
    """(number text, system, code) of a Quantity-like node."""
    v = node.value
    if not isinstance(v, dict):
        return None
    number = _number_text(v.get("value"))
    if number is None:
        return None
    if node.type == "Money":
        return number, ISO_4217, v.get("currency")
    if node.type in _QUANTITY_TYPES:
        return number, v.get("system"), v.get("code")
    return None


def _in_precision(text: str) -> Callable[[str | None], bool]:
    value = Decimal(text)
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)  # type: ignore[operator]
    return lambda t: t is not None and value - half <= Decimal(t) < value + half


def quantity_probes(subject: Subject) -> list[Probe]:
    values = subject.all_nodes
    found = _distinct(q for n in values if (q := _quantity(n)) is not None)
    probes = []
    for number, system, code in _spread(found, key=lambda q: q[0])[:2]:
        near = _in_precision(number)
        probes.append(Probe("", f"eq{number}", partial(_q_match, near=near)))
        if system and code:
            probes.append(
                Probe(
                    "",
                    f"{number}|{system}|{code}",
                    partial(_q_match, near=near, system=system, code=code),
                )
            )
    return probes


def _q_match(
    node: Node, near: Callable[[str | None], bool], system: str | None = None, code: Any = None
) -> bool:
    q = _quantity(node)
    return q is not None and near(q[0]) and (system is None or (q[1] == system and q[2] == code))


def number_probes(subject: Subject) -> list[Probe]:
    values = subject.all_nodes
    texts = _distinct(t for n in values if (t := _number_text(n.value)) is not None)
    return [
        Probe("", f"eq{t}", partial(_number_near, near=_in_precision(t)))
        for t in _spread(texts)[:2]
    ]


def _number_near(node: Node, near: Callable[[str | None], bool]) -> bool:
    return near(_number_text(node.value))


def uri_probes(subject: Subject) -> list[Probe]:
    values = subject.all_nodes
    uris = _distinct(n.value for n in values if isinstance(n.value, str))
    probes = [Probe("", u, partial(_is_uri, uri=u)) for u in _spread(uris)]
    parent = next((u.rsplit("/", 1)[0] + "/" for u in uris if u.count("/") > 3), None)
    if parent is not None:  # :below with a whole path: a prefix of the uri
        probes.append(Probe(":below", parent, partial(_below, parent=parent)))
    return probes


def _is_uri(node: Node, uri: str) -> bool:
    return node.value == uri


def _below(node: Node, parent: str) -> bool:
    return isinstance(node.value, str) and node.value.startswith(parent)


PROBES: dict[str, Callable[[Subject], list[Probe]]] = {
    "string": string_probes,
    "token": token_probes,
    "date": date_probes,
    "reference": reference_probes,
    "quantity": quantity_probes,
    "number": number_probes,
    "uri": uri_probes,
}


def _distinct(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _spread(items: list[Any], key: Callable[[Any], Any] = lambda x: x) -> list[Any]:
    """The first item and, preferably, one that differs from it in ``key``."""
    if not items:
        return []
    other = next((x for x in items[1:] if key(x) != key(items[0])), None)
    return [items[0]] if other is None else [items[0], other]


# -- the test ------------------------------------------------------------------------


def _server_ids(client: httpx.Client, subject: Subject, probe: Probe) -> set[str] | str:
    params = {
        f"{subject.code}{probe.modifier}": _escape(probe.value),
        "_count": "1000",
        "_elements": "id",
    }
    resp = client.get(f"/{subject.resource_type}", params=params)
    ids: set[str] = set()
    while True:
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.text[:300]}"
        bundle = resp.json()
        ids.update(
            e["resource"]["id"]
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        )
        nxt = next((ln["url"] for ln in bundle.get("link", []) if ln["relation"] == "next"), None)
        if nxt is None:
            return ids
        resp = client.get(nxt)


def _show(ids: set[str], limit: int = 8) -> str:
    shown = sorted(ids)
    return ", ".join(shown[:limit]) + (f" (+{len(shown) - limit})" if len(shown) > limit else "")


@dataclass(slots=True)
class Outcome:
    exercised: int  # (type, param) pairs with at least one FHIRPath node in the corpus
    checked: int  # of those, the pairs with at least one query
    queries: int
    mismatches: list[str]
    seconds: float


@cache
def _oracle_of(files: tuple[str, ...]) -> tuple[list[Subject], dict[str, str]]:
    examples = {ex.file: ex for ex in corpus_examples()}
    return oracle(examples[f] for f in files)


def compare_with_server(
    corpus: LoadedCorpus, probes_of: Callable[[Subject], list[Probe]]
) -> Outcome:
    """Run every probe of every (type, param) against the server; collect the differences."""
    started = time.perf_counter()
    accepted = corpus.accepted
    subjects, errors = _oracle_of(tuple(ex.file for ex in accepted))
    assert not errors, "fhirpathpy could not evaluate:\n" + "\n".join(
        f"{k}: {v}" for k, v in errors.items()
    )
    loaded: dict[str, set[str]] = {}
    for ex in accepted:
        loaded.setdefault(ex.type, set()).add(ex.id)
    outcome = Outcome(len(subjects), 0, 0, [], 0.0)
    headers = {"Accept": "application/fhir+json"}
    with httpx.Client(base_url=corpus.base, timeout=60, headers=headers) as client:
        for subject in subjects:
            probes = probes_of(subject)
            outcome.checked += bool(probes)
            for probe in probes:
                outcome.queries += 1
                expected = {
                    rid for rid, nodes in subject.nodes.items() if any(map(probe.matches, nodes))
                }
                got = _server_ids(client, subject, probe)
                where = f"{subject.name}{probe.modifier}={probe.value}"
                if isinstance(got, str):
                    outcome.mismatches.append(f"{where}: {got}")
                    continue
                got &= loaded[subject.resource_type]
                if got != expected:
                    outcome.mismatches.append(
                        f"{where}: missing [{_show(expected - got)}], "
                        f"unexpected [{_show(got - expected)}]"
                    )
    outcome.seconds = time.perf_counter() - started
    print(
        f"\n{corpus.base}: {outcome.checked} of {outcome.exercised} exercised (type, param) pairs "
        f"checked with {outcome.queries} queries in {outcome.seconds:.1f} s; "
        f"{len(outcome.mismatches)} mismatches"
    )
    return outcome


def test_search_matches_fhirpath_over_examples(corpus: LoadedCorpus) -> None:
    outcome = compare_with_server(corpus, lambda s: PROBES[s.param_type](s))
    assert outcome.checked > 1000
    assert not outcome.mismatches, f"{len(outcome.mismatches)} mismatches:\n" + "\n".join(
        outcome.mismatches
    )


def test_token_text_modifier_matches_fhirpath_over_examples(corpus: LoadedCorpus) -> None:
    outcome = compare_with_server(corpus, token_text_probes)
    assert outcome.checked > 100
    assert not outcome.mismatches, f"{len(outcome.mismatches)} mismatches:\n" + "\n".join(
        outcome.mismatches
    )
