"""SMART App Launch v2 scopes: parsing, what a set of scopes allows on a resource, the search
restrictions that granular scopes imply, and which requested scopes an allowed set covers.

``patient|user|system / Type|* . cruds ?param=value&...``; SMART v1's ``.read``, ``.write`` and
``.*`` are accepted and mapped to ``rs``, ``cud`` and ``cruds``. Granular restrictions are search
parameters of the resource type, checked against a resource with the server's own search-value
extraction, so ``Observation.rs?category=laboratory`` means exactly what the search would match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

from takamul.fhir.definitions import definitions
from takamul.fhir.search_values import (
    ReferenceEntry,
    SearchIndexer,
    StringEntry,
    TokenEntry,
    UriEntry,
    normalize_string,
)
from takamul.security.errors import forbidden

__all__ = [
    "CONTEXTS",
    "INTERACTIONS",
    "OTHER_SCOPES",
    "Restriction",
    "Scope",
    "ScopeError",
    "ScopeSet",
    "combine_restrictions",
    "parse_scope",
    "search_indexer",
    "use_indexer",
]

CONTEXTS = ("patient", "user", "system")
INTERACTIONS = "cruds"  # create, read, update, delete, search; v2 requires this order
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
# Scopes that are not about resources; kept, and granted only when registered as such.
OTHER_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)

_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.(read|write|\*|[a-z]+)(?:\?(.*))?$")
# A plain search parameter code: modifiers (code:in) and chains (subject.name) are refused,
# because a scope must be checkable against the resource alone.
_PARAM = re.compile(r"^_?[a-z][A-Za-z0-9-]*$")

Restriction = tuple[str, str]


class ScopeError(ValueError):
    """A scope that is not a SMART scope; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope, e.g. ``user/Observation.rs?category=laboratory``."""

    context: str  # patient | user | system
    resource_type: str  # a resource type or "*"
    permissions: str  # a subset of "cruds", in that order
    restrictions: tuple[Restriction, ...] = ()  # sorted; all must hold (AND)
    text: str = field(default="", compare=False)  # as written, for echoing back

    def __str__(self) -> str:
        out = f"{self.context}/{self.resource_type}.{self.permissions}"
        if self.restrictions:
            out += "?" + urlencode(self.restrictions, safe="|:/,*")
        return out

    def grants(self, resource_type: str, interaction: str) -> bool:
        """Type and permission only; restrictions and patient context are checked elsewhere."""
        return interaction in self.permissions and self.resource_type in ("*", resource_type)

    def covers(self, other: Scope) -> bool:
        """True if everything ``other`` allows, this scope allows too (other is narrower)."""
        if other.context != self.context:
            return False
        if self.resource_type != "*" and self.resource_type != other.resource_type:
            return False
        if not set(other.permissions) <= set(self.permissions):
            return False
        theirs = dict(other.restrictions)
        return all(
            param in theirs and _values_cover(value, theirs[param])
            for param, value in self.restrictions
        )

    def matches(self, resource: dict[str, Any]) -> bool:
        """The granular restrictions hold for ``resource`` (always true without restrictions)."""
        if not self.restrictions:
            return True
        try:
            entries = search_indexer().extract(resource)
        except ValueError:
            return False
        return all(_param_matches(entries.get(p, ()), v) for p, v in self.restrictions)


def parse_scope(text: str) -> Scope | str:
    """A resource scope, or the text itself for the non-resource scopes (``openid``...).

    Raises ``ScopeError`` for anything else, naming the part that is wrong.
    """
    text = text.strip()
    if text in OTHER_SCOPES:
        return text
    match = _SCOPE.match(text)
    if not match:
        raise ScopeError(
            f"'{text}' is not a SMART scope; write context/Type.permissions, e.g. "
            "system/*.rs, user/Observation.cruds or patient/Observation.rs?category=laboratory"
        )
    context, rtype, perms, query = match.groups()
    if rtype != "*" and not definitions().is_resource_type(rtype):
        raise ScopeError(f"'{text}': '{rtype}' is not a FHIR R4 resource type")
    return Scope(context, rtype, _permissions(text, perms), _restrictions(text, query), text)


def _permissions(text: str, perms: str) -> str:
    if perms in V1_PERMISSIONS:
        return V1_PERMISSIONS[perms]
    if any(p not in INTERACTIONS for p in perms) or len(set(perms)) != len(perms):
        raise ScopeError(f"'{text}': permissions are letters of c, r, u, d, s, each once")
    if perms != "".join(p for p in INTERACTIONS if p in perms):
        raise ScopeError(f"'{text}': permissions must be in the order c, r, u, d, s")
    return perms


def _restrictions(text: str, query: str | None) -> tuple[Restriction, ...]:
    if query is None:
        return ()
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as err:
        raise ScopeError(f"'{text}': the restriction after '?' is not param=value&...") from err
    for param, value in pairs:
        if not _PARAM.match(param):
            raise ScopeError(
                f"'{text}': '{param}' is not a plain search parameter (modifiers and chains "
                "are not supported in scopes)"
            )
        if not value:
            raise ScopeError(f"'{text}': the restriction '{param}' has no value")
    if len({p for p, _ in pairs}) != len(pairs):
        raise ScopeError(f"'{text}': a parameter appears twice; use one with a,b for either")
    return tuple(sorted(pairs))


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The scopes of a token or a role: what they allow, and what they cover."""

    scopes: tuple[Scope, ...] = ()
    others: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> ScopeSet:
        """From a space-separated scope string or a list of scopes; ``ScopeError`` if malformed."""
        items = text.split() if isinstance(text, str) else [t for s in text for t in s.split()]
        scopes: list[Scope] = []
        others: set[str] = set()
        for item in items:
            parsed = parse_scope(item)
            if isinstance(parsed, Scope):
                if parsed not in scopes:
                    scopes.append(parsed)
            else:
                others.add(parsed)
        return cls(tuple(scopes), frozenset(others))

    def __str__(self) -> str:
        return " ".join([s.text or str(s) for s in self.scopes] + sorted(self.others))

    def __iter__(self) -> Iterator[Scope]:
        return iter(self.scopes)

    def __len__(self) -> int:
        return len(self.scopes) + len(self.others)

    def __bool__(self) -> bool:
        return bool(self.scopes or self.others)

    def union(self, other: ScopeSet) -> ScopeSet:
        merged = list(self.scopes) + [s for s in other.scopes if s not in self.scopes]
        return ScopeSet(tuple(merged), self.others | other.others)

    @property
    def contexts(self) -> frozenset[str]:
        return frozenset(s.context for s in self.scopes)

    def grants(self, resource_type: str, interaction: str) -> list[Scope]:
        """The scopes that grant ``interaction`` on ``resource_type``, restricted or not."""
        _check_interaction(interaction)
        return [s for s in self.scopes if s.grants(resource_type, interaction)]

    def allows(
        self, resource_type: str, interaction: str, resource: dict[str, Any] | None = None
    ) -> bool:
        """May ``interaction`` (c, r, u, d, s) happen on ``resource_type``?

        With ``resource``, the definitive answer for that resource (granular restrictions
        checked against it). Without, whether some resources of the type may be reached: a
        search must then add ``search_restrictions`` and a read must ask again with the
        resource. Patient-context scopes also need the resource to be in the launch patient's
        compartment, which ``AccessContext.allows`` checks.
        """
        grants = self.grants(resource_type, interaction)
        if resource is None:
            return bool(grants)
        if resource.get("resourceType") != resource_type:
            return False
        return any(s.matches(resource) for s in grants)

    def allows_all(self, resource_type: str, interaction: str) -> bool:
        """A scope grants ``interaction`` on every resource of the type (no restriction)."""
        return any(not s.restrictions for s in self.grants(resource_type, interaction))

    def search_restrictions(self, resource_type: str) -> list[Restriction]:
        """Search parameters to add (AND) to a search of ``resource_type`` so that it returns
        only what the scopes allow; ``[]`` when a scope allows every resource of the type.

        Raises a 403 FhirError when no scope allows the search, or when the restrictions of
        several scopes cannot be written as one search (say which to use instead).
        """
        grants = self.grants(resource_type, "s")
        if not grants:
            raise forbidden(f"The granted scopes do not allow searching {resource_type}")
        combined = combine_restrictions([s.restrictions for s in grants])
        if combined is None:
            raise forbidden(
                f"The granted scopes restrict {resource_type} in ways that cannot be combined "
                f"into one search ({', '.join(str(s) for s in grants)}); ask for a token "
                "with one of them"
            )
        return combined

    def covers(self, scope: Scope | str) -> bool:
        """Some scope of this set allows everything ``scope`` allows."""
        if isinstance(scope, str):
            return scope in self.others
        return any(mine.covers(scope) for mine in self.scopes)

    def grant(self, requested: ScopeSet) -> tuple[ScopeSet, list[str]]:
        """(the requested scopes this set covers, the texts of those it does not)."""
        granted = tuple(s for s in requested.scopes if self.covers(s))
        refused = [s.text or str(s) for s in requested.scopes if not self.covers(s)]
        others = frozenset(o for o in requested.others if o in self.others)
        refused += sorted(requested.others - others)
        return ScopeSet(granted, others), refused


def combine_restrictions(
    alternatives: Sequence[tuple[Restriction, ...]],
) -> list[Restriction] | None:
    """One AND-list of search parameters equal to the OR of ``alternatives`` (each an AND-list),
    or None when there is none.

    ``[]`` in the alternatives means unrestricted. Alternatives narrower than another drop out;
    alternatives that differ in the value of one parameter only merge into ``param=a,b``.
    """
    alts = [tuple(sorted(a)) for a in alternatives]
    if not alts:
        return None
    if any(not a for a in alts):
        return []
    unique: list[tuple[Restriction, ...]] = []
    for alt in alts:
        if any(_narrower(alt, kept) for kept in unique):
            continue
        unique = [kept for kept in unique if not _narrower(kept, alt)] + [alt]
    if len(unique) == 1:
        return list(unique[0])
    params = {tuple(p for p, _ in a) for a in unique}
    if len(params) != 1:
        return None
    names = next(iter(params))
    differing = [i for i in range(len(names)) if len({a[i][1] for a in unique}) > 1]
    if len(differing) != 1:
        return None
    index = differing[0]
    values = list(dict.fromkeys(v for a in unique for v in a[index][1].split(",")))
    out = list(unique[0])
    out[index] = (names[index], ",".join(values))
    return out


def _narrower(a: tuple[Restriction, ...], b: tuple[Restriction, ...]) -> bool:
    """Every resource ``a`` allows, ``b`` allows too (b's restrictions all implied by a's)."""
    mine = dict(a)
    return all(p in mine and _values_cover(v, mine[p]) for p, v in b)


def _values_cover(allowed: str, requested: str) -> bool:
    """Every alternative of ``requested`` (a,b = a OR b) is within one of ``allowed``."""
    options = allowed.split(",")
    return all(any(_value_covers(a, r) for a in options) for r in requested.split(","))


def _value_covers(allowed: str, requested: str) -> bool:
    if allowed == requested:
        return True
    # A code without a system matches that code in any system; "system|" any code of it.
    if "|" not in allowed:
        return requested.endswith("|" + allowed)
    if allowed.endswith("|") and allowed != "|":
        return requested.startswith(allowed)
    return False


def _check_interaction(interaction: str) -> None:
    if len(interaction) != 1 or interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of c, r, u, d, s, not '{interaction}'")


_shared: list[SearchIndexer] = []


def use_indexer(indexer: SearchIndexer) -> None:
    """Share the store's search-value extractor (it compiles every expression once)."""
    _shared[:] = [indexer]
    search_indexer.cache_clear()


@cache
def search_indexer() -> SearchIndexer:
    """The extractor of search values that granular scopes are checked with."""
    return _shared[0] if _shared else SearchIndexer()


def _param_matches(entries: Iterable[object], value: str) -> bool:
    alternatives = value.split(",")
    return any(_entry_matches(e, alt) for e in entries for alt in alternatives)


def _entry_matches(entry: object, value: str) -> bool:
    """A restriction value against one search-index entry of the resource (fail closed: the
    types a scope cannot sensibly restrict by, dates and quantities, never match)."""
    if isinstance(entry, TokenEntry):
        return _token_matches(entry, value)
    if isinstance(entry, ReferenceEntry):
        if "/" in value and not value.startswith(("http:", "https:", "urn:")):
            rtype, _, rid = value.rpartition("/")
            return entry.target_type == rtype and entry.target_id == rid
        return entry.target_id == value or entry.url == value
    if isinstance(entry, StringEntry):
        return entry.normalized.startswith(normalize_string(value))
    if isinstance(entry, UriEntry):
        return entry.value == value
    return False


def _token_matches(entry: TokenEntry, value: str) -> bool:
    if "|" not in value:
        return entry.code == value
    system, _, code = value.partition("|")
    if not system:
        return entry.system is None and entry.code == code
    if not code:
        return entry.system == system
    return entry.system == system and entry.code == code
