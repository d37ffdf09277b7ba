"""Parsing of FHIR search requests (R4 search.html) into a typed query, before any SQL.

Every parameter is looked up in the R4 SearchParameter definitions; an unknown parameter or a
malformed value is an error (400), or a warning when the client asked for lenient handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from takamul.fhir.definitions import SearchParamDef, definitions
from takamul.fhir.outcome import FhirError, OutcomeIssue

# Parameters that shape the result rather than filter it.
RESULT_PARAMS = frozenset(
    {
        "_count",
        "_offset",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_total",
        "_elements",
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
    }
)
SUPPORTED_MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "missing"}),
    "date": frozenset({"missing"}),
    "reference": frozenset({"missing", "identifier"}),
    "quantity": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "uri": frozenset({"missing", "below", "above"}),
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
PREFIXED_TYPES = frozenset({"date", "number", "quantity"})
SUMMARY_VALUES = frozenset({"true", "false", "text", "data", "count"})
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})


@dataclass(frozen=True, slots=True)
class ParamFilter:
    """One ``name[:modifier]=v1,v2`` clause: the values are ORed."""

    resource_type: str
    param: SearchParamDef
    modifier: str | None
    values: tuple[str, ...]
    # For a chained parameter (subject:Patient.name=x): the filter applied to the target.
    chain: ChainTarget | None = None


@dataclass(frozen=True, slots=True)
class ChainTarget:
    """The inner filters of a chain, parsed once per possible target type: the chained clause
    first, then what the request's guard adds for that type (its resources answer to the same
    rules as those a search returns)."""

    inner: tuple[tuple[str, tuple[Filter, ...]], ...]


@dataclass(frozen=True, slots=True)
class SpecialFilter:
    """``_id`` and ``_lastUpdated``, answered from the resource table itself; internally also
    ``_rid``, a set of row keys the guard checked one by one (never parsed from a request)."""

    resource_type: str
    name: str  # _id | _lastUpdated | _rid
    modifier: str | None
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HasFilter:
    """``_has:Type:refParam:param=value``: resources that ``Type`` points at through refParam."""

    target_type: str  # the type being searched, which the references must point to
    source_type: str
    reference_param: SearchParamDef
    # the clause on the source type first, then what the request's guard adds for it
    inner: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class RestrictedFilter:
    """Internal (never parsed from a request): leaves out resources labelled with any of
    ``labels`` (``meta.security``) about any of ``patients``: their consent withholds those
    categories from the requester (or about anyone, ``everyone``: the requester's role never
    sees them). ``params``: the Patient-compartment parameters of the type (``_id`` for Patient
    itself)."""

    resource_type: str
    labels: tuple[str, ...]
    patients: tuple[str, ...]
    params: tuple[str, ...]
    everyone: bool = False  # about any patient: a role that never sees the label


Filter = ParamFilter | SpecialFilter | HasFilter | RestrictedFilter


@dataclass(frozen=True, slots=True)
class IncludeSpec:
    source_type: str
    param: SearchParamDef | None  # None for the * wildcard
    target_type: str | None
    iterate: bool = False


@dataclass(frozen=True, slots=True)
class SortKey:
    name: str  # a search parameter code, or _id / _lastUpdated
    descending: bool
    param: SearchParamDef | None


@dataclass(slots=True)
class SearchQuery:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 50
    offset: int = 0
    includes: list[IncludeSpec] = field(default_factory=list)
    revincludes: list[IncludeSpec] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None  # _total as asked; None: an estimate when the result is large
    warnings: list[OutcomeIssue] = field(default_factory=list)
    # The parameters as understood, for the self link.
    used: list[tuple[str, str]] = field(default_factory=list)


def split_escaped(value: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not escaped by a backslash; escapes are kept."""
    parts, current, chars = [], [], iter(value)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """Undo the ``\\,`` ``\\|`` ``\\$`` and ``\\\\`` escapes of search.html."""
    return re.sub(r"\\(.)", r"\1", value)


def split_or(value: str) -> tuple[str, ...]:
    """Split ``a,b`` into ORed values. Escapes stay in each value until its type has split it
    further (a token splits system|code first), then ``unescape`` removes them."""
    return tuple(split_escaped(value, ","))


class QueryParser:
    def __init__(self, resource_type: str, lenient: bool, default_count: int, max_count: int):
        self.resource_type = resource_type
        self.lenient = lenient
        self.default_count = default_count
        self.max_count = max_count
        self.defs = definitions()

    def parse(self, params: list[tuple[str, str]]) -> SearchQuery:
        query = SearchQuery(self.resource_type, count=self.default_count)
        for name, value in params:
            try:
                if self._parse_one(query, name, value):
                    query.used.append((name, value))
            except FhirError as err:
                if not self.lenient:
                    raise
                query.warnings.extend(
                    OutcomeIssue("warning", i.code, f"Ignored: {i.diagnostics}", i.expression)
                    for i in err.issues
                )
        return query

    # -- one parameter ----------------------------------------------------------------

    def _parse_one(self, query: SearchQuery, name: str, value: str) -> bool:
        base = name.split(":", 1)[0]
        if base in RESULT_PARAMS:
            self._parse_result_param(query, base, name, value)
            return base not in ("_format", "_pretty", "_offset")
        if base.startswith("_has"):
            query.filters.append(self._parse_has(name, value))
            return True
        query.filters.append(self._parse_filter(self.resource_type, name, value))
        return True

    def _parse_result_param(self, query: SearchQuery, base: str, name: str, value: str) -> None:
        if base == "_count":
            query.count = min(self._int(name, value), self.max_count)
        elif base == "_offset":
            query.offset = self._int(name, value)
        elif base == "_sort":
            query.sort = [self._sort_key(k) for k in value.split(",") if k]
        elif base in ("_include", "_revinclude"):
            spec = self._include(name, value, reverse=base == "_revinclude")
            (query.revincludes if base == "_revinclude" else query.includes).append(spec)
        elif base == "_summary":
            if value not in SUMMARY_VALUES:
                raise _bad(name, f"_summary must be one of {sorted(SUMMARY_VALUES)}, not '{value}'")
            query.summary = value
        elif base == "_total":
            if value not in TOTAL_VALUES:
                raise _bad(name, f"_total must be one of {sorted(TOTAL_VALUES)}, not '{value}'")
            query.total = value
        elif base == "_elements":
            query.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif base in ("_contained", "_containedType"):
            raise FhirError(400, f"Search parameter '{base}' is not supported", "not-supported")

    def _int(self, name: str, value: str) -> int:
        # ASCII digits only ('²'.isdigit() is true), and no more than a database integer holds
        if not (value.isascii() and value.isdigit()) or int(value) > 2**31 - 1:
            raise _bad(name, f"{name} must be an integer from 0 to 2147483647, not '{value[:40]}'")
        return int(value)

    def _sort_key(self, key: str) -> SortKey:
        descending = key.startswith("-")
        code = key[1:] if descending else key
        if code in ("_id", "_lastUpdated"):
            return SortKey(code, descending, None)
        param = self._param(self.resource_type, code, "_sort")
        if param.type in ("composite", "special"):
            raise _bad("_sort", f"Cannot sort by the {param.type} parameter '{code}'")
        return SortKey(code, descending, param)

    def _include(self, name: str, value: str, reverse: bool) -> IncludeSpec:
        iterate = name.endswith((":iterate", ":recurse"))
        parts = value.split(":")
        if len(parts) < 2 or len(parts) > 3:
            raise _bad(name, f"{name} must look like Type:param[:TargetType], not '{value}'")
        source = parts[0]
        if not self.defs.is_resource_type(source):
            raise _bad(name, f"Unknown resource type '{source}' in {name}={value}")
        if not reverse and source != self.resource_type and not iterate:
            raise _bad(name, f"{name}={value}: the source type must be {self.resource_type}")
        param = None
        if parts[1] != "*":
            param = self._param(source, parts[1], name)
            if param.type != "reference":
                raise _bad(name, f"{name}={value}: '{parts[1]}' is not a reference parameter")
        target = parts[2] if len(parts) == 3 else None
        if target is not None and not self.defs.is_resource_type(target):
            raise _bad(name, f"Unknown target type '{target}' in {name}={value}")
        return IncludeSpec(source, param, target, iterate)

    def _param(self, resource_type: str, code: str, where: str) -> SearchParamDef:
        param = self.defs.search_params_for(resource_type).get(code)
        if param is None:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "not-supported",
                    f"Unknown search parameter '{code}' for {resource_type}; see /fhir/metadata "
                    "for the parameters this server supports",
                    where,
                ),
            )
        return param

    # -- filters ----------------------------------------------------------------------

    def _parse_filter(
        self, resource_type: str, name: str, value: str
    ) -> ParamFilter | SpecialFilter:
        path, _, rest = name.partition(".")
        code, _, modifier_text = path.partition(":")
        modifier = modifier_text or None
        if not value and not rest:
            raise _bad(name, f"Search parameter '{name}' has an empty value")
        if code in ("_id", "_lastUpdated"):
            if rest:
                raise _bad(name, f"'{code}' cannot be chained")
            if modifier not in (None, "missing", "not") or (modifier == "not" and code != "_id"):
                raise _bad(name, f"Modifier ':{modifier}' is not supported on {code}")
            values = split_or(value)
            if code == "_lastUpdated":
                for v in values:
                    _check_prefixed(name, v, "date")
            return SpecialFilter(resource_type, code, modifier, values)
        param = self._param(resource_type, code, name)
        if rest:
            return self._parse_chain(resource_type, param, modifier, rest, name, value)
        self._check_modifier(param, modifier, name)
        values = split_or(value)
        if modifier == "missing":
            if value not in ("true", "false"):
                raise _bad(name, f"{name} must be true or false, not '{value}'")
        else:
            for v in values:
                _check_value(name, param, v)
        return ParamFilter(resource_type, param, modifier, values)

    def _check_modifier(self, param: SearchParamDef, modifier: str | None, name: str) -> None:
        if modifier is None:
            return
        if param.type == "reference" and self.defs.is_resource_type(modifier):
            if param.target and modifier not in param.target:
                raise _bad(name, f"'{param.code}' cannot point to {modifier}")
            return
        allowed = SUPPORTED_MODIFIERS.get(param.type, frozenset())
        if modifier not in allowed:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "not-supported",
                    f"Modifier ':{modifier}' is not supported on {param.type} parameter "
                    f"'{param.code}'; supported: {', '.join(sorted(allowed)) or 'none'}",
                    name,
                ),
            )

    def _parse_chain(
        self,
        resource_type: str,
        param: SearchParamDef,
        modifier: str | None,
        rest: str,
        name: str,
        value: str,
    ) -> ParamFilter:
        if param.type != "reference":
            raise _bad(
                name, f"Only reference parameters can be chained; '{param.code}' is {param.type}"
            )
        if "." in rest:
            raise FhirError(
                400, f"Chains deeper than one level are not supported: '{name}'", "not-supported"
            )
        if modifier is not None:
            if not self.defs.is_resource_type(modifier):
                raise _bad(name, f"'{modifier}' in '{name}' is not a resource type")
            targets: tuple[str, ...] = (modifier,)
        else:
            targets = tuple(t for t in param.target if self.defs.is_resource_type(t))
            targets = tuple(
                t
                for t in targets
                if rest.split(":")[0] in ("_id", "_lastUpdated")
                or rest.split(":")[0] in self.defs.search_params_for(t)
            )
            if not targets:
                raise _bad(
                    name, f"No target type of '{param.code}' has a search parameter '{rest}'"
                )
        inner = tuple((t, (self._parse_filter(t, rest, value),)) for t in targets)
        return ParamFilter(resource_type, param, None, (value,), ChainTarget(inner))

    def _parse_has(self, name: str, value: str) -> HasFilter:
        parts = name.split(":", 3)
        if len(parts) != 4:
            raise _bad(name, f"'{name}' must look like _has:Type:referenceParam:param")
        _, source, ref_code, rest = parts
        if not self.defs.is_resource_type(source):
            raise _bad(name, f"Unknown resource type '{source}' in '{name}'")
        ref_param = self._param(source, ref_code, name)
        if ref_param.type != "reference":
            raise _bad(name, f"'{ref_code}' of {source} is not a reference parameter")
        if rest.startswith("_has:"):
            raise FhirError(400, "Nested _has is not supported", "not-supported")
        inner = self._parse_filter(source, rest, value)
        return HasFilter(self.resource_type, source, ref_param, (inner,))


def _bad(name: str, message: str) -> FhirError:
    return FhirError(400, OutcomeIssue("error", "invalid", message, name))


_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")
_DATE = re.compile(
    r"^-?[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3])(:[0-5][0-9]"
    r"(:([0-5][0-9]|60)(\.[0-9]+)?)?)?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?$"
)


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _check_prefixed(name: str, value: str, kind: str) -> None:
    _, rest = split_prefix(value)
    if kind == "date" and not _DATE.match(rest):
        raise _bad(name, f"'{value}' is not a valid FHIR date (yyyy[-mm[-dd[Thh:mm[:ss][zone]]]])")
    if kind == "number" and not _NUMBER.match(rest):
        raise _bad(name, f"'{value}' is not a valid number")
    if kind == "quantity":
        number = rest.split("|", 1)[0]
        if not _NUMBER.match(number):
            raise _bad(name, f"'{value}' is not a valid quantity ([prefix]number[|system|code])")


def _check_value(name: str, param: SearchParamDef, value: str) -> None:
    if param.type in PREFIXED_TYPES:
        _check_prefixed(name, value, param.type)
    elif param.type == "token" and len(split_escaped(value, "|")) > 2:
        # system|code with a '|' inside the code must be escaped as \|.
        raise _bad(name, f"'{value}' is not a valid token (system|code, |code or code)")
