"""Compilation of a parsed search into SQL over the search-index tables (SQLite and PostgreSQL).

Each filter becomes ``rid IN (subquery)`` on one index table, so every clause uses an index
that starts with (res_type, param) and the planner intersects them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import KeyedColumnElement

from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError
from takamul.fhir.search_values import date_range, decimal_range, normalize_string
from takamul.store.query import (
    Filter,
    HasFilter,
    ParamFilter,
    RestrictedFilter,
    SortKey,
    SpecialFilter,
    split_escaped,
    split_prefix,
    unescape,
)
from takamul.store.schema import INDEX_TABLES, resource, sp_reference, values_in

# The largest code point: a prefix range [v, v + MAX_CHAR) holds every string starting with v,
# in the byte order both stores use for these columns (binary in SQLite, "C" in PostgreSQL).
MAX_CHAR = "\U0010ffff"


def filter_condition(f: Filter, res: Any = resource, drive: bool = True) -> ColumnElement[bool]:
    """A condition on ``res`` (the resource table or an alias of it) for one filter.

    ``drive``: the filter produces the candidate rows (``rid IN (subquery)``); otherwise it
    checks each candidate with a correlated ``EXISTS`` that uses the index on ``rid``. Nested
    queries (chains, _has) use fresh aliases so that SQL never correlates them with the outer
    resource table by accident.
    """
    if isinstance(f, SpecialFilter):
        return _special(f, res)
    if isinstance(f, HasFilter):
        return _has(f, res)
    if isinstance(f, RestrictedFilter):
        return _restricted(f, res)
    return _param_filter(f, res, drive)


def matching_rids(resource_type: str, filters: list[Filter], res: Any = resource) -> Select[Any]:
    """SELECT rid of current resources of ``resource_type`` that satisfy every filter.

    The most selective filter drives and the others only check its candidates: both stores
    would otherwise build every clause's full set of rows first (all HbA1c results, say, to
    find one patient's).
    """
    driver = _driver(filters)
    if driver is not None and not any(_needs_resource(f) for f in filters):
        return _from_index(filters, driver)
    conds = [res.c.res_type == resource_type, res.c.deleted == false()]
    conds.extend(filter_condition(f, res, drive=i == driver) for i, f in enumerate(filters))
    return select(res.c.rid).where(and_(*conds))


def _from_index(filters: list[Filter], driver: int) -> Select[Any]:
    """The rids straight from the driving clause's index table, the other clauses checked
    against its rid: the resource table is not read at all. Index rows exist only for the
    current version of a resource that is not deleted (a write replaces them, a delete drops
    them, ``takamul db check`` verifies it), so the table adds nothing but a lookup per
    candidate (a count of 2,663 Conditions by code read 10,652 pages of it, issue 17); with the
    rid in the index (revision 0005) a count is an index-only scan."""
    lead = filters[driver]
    assert isinstance(lead, ParamFilter)
    table, where = _clause(lead)
    conds = [where]
    conds.extend(
        filter_condition(f, table, drive=False) for i, f in enumerate(filters) if i != driver
    )
    return select(table.c.rid).where(and_(*conds)).distinct()


def _needs_resource(f: Filter) -> bool:
    """Whether a filter reads the resource table itself (its id or lastUpdated) rather than
    only a resource's rid."""
    if isinstance(f, SpecialFilter):
        return f.name != "_rid"
    if isinstance(f, HasFilter):
        return True
    if isinstance(f, RestrictedFilter):
        return f.params == ("_id",)
    return False


# Lower is more selective: a specific id, then references and identifiers, then the rest.
_SELECTIVITY = {
    "reference": 1,
    "string": 3,
    "token": 4,
    "uri": 4,
    "quantity": 5,
    "number": 5,
    "date": 6,
}


def _driver(filters: list[Filter]) -> int | None:
    best, best_rank = None, 99
    for i, f in enumerate(filters):
        rank = _rank(f)
        if rank < best_rank:
            best, best_rank = i, rank
    return best


def _rank(f: Filter) -> int:
    if isinstance(f, SpecialFilter):
        return 0 if f.name in ("_id", "_rid") and f.modifier is None else 99
    if isinstance(f, (HasFilter, RestrictedFilter)) or f.modifier in ("not", "missing"):
        return 99
    if f.chain is not None:
        return 7
    if f.param.type == "token" and "identifier" in f.param.code:
        return 2
    if f.param.type == "string" and f.modifier == "contains":
        return 8
    return _SELECTIVITY.get(f.param.type, 9)


def _membership(
    res: Any, table: Any, where: ColumnElement[bool], drive: bool
) -> ColumnElement[bool]:
    if drive:
        return res.c.rid.in_(select(table.c.rid).where(where))
    return exists().where(and_(table.c.rid == res.c.rid, where))


# -- _id and _lastUpdated ------------------------------------------------------------


def _special(f: SpecialFilter, res: Any) -> ColumnElement[bool]:
    if f.name == "_rid":
        return res.c.rid.in_([int(v) for v in f.values])
    if f.name == "_id":
        if f.modifier == "missing":
            return false() if f.values[0] == "true" else true()
        cond = values_in(res.c.res_id, f.values)
        return not_(cond) if f.modifier == "not" else cond
    if f.modifier == "missing":
        return false() if f.values[0] == "true" else true()
    col = res.c.last_updated
    return or_(*(_date_predicate(v, col, col) for v in f.values))


# -- ordinary parameters -------------------------------------------------------------


def _param_filter(f: ParamFilter, res: Any, drive: bool) -> ColumnElement[bool]:
    param = f.param
    if f.chain is not None:
        return _chain(f, res, drive)
    if param.type in ("composite", "special"):
        raise FhirError(
            400,
            f"Searching by the {param.type} parameter '{param.code}' is not supported",
            "not-supported",
        )
    table = INDEX_TABLES[param.type].alias()
    scope = and_(table.c.res_type == f.resource_type, table.c.param == param.code)
    if f.modifier == "missing":
        present = _membership(res, table, scope, drive)
        return not_(present) if f.values[0] == "true" else present
    value_cond = _values_predicate(f, table)
    inside = _membership(res, table, and_(scope, value_cond), drive)
    return not_(inside) if f.modifier == "not" else inside


def _clause(f: ParamFilter) -> tuple[Any, ColumnElement[bool]]:
    """(index table alias, condition on it) of a clause that can drive: its rows are the
    candidates (never a :not or :missing clause, see ``_rank``)."""
    if f.chain is not None:
        return _chain_clause(f)
    if f.param.type in ("composite", "special"):
        _param_filter(f, resource, True)  # raises the not-supported error
    table = INDEX_TABLES[f.param.type].alias()
    scope = and_(table.c.res_type == f.resource_type, table.c.param == f.param.code)
    return table, and_(scope, _values_predicate(f, table))


def _values_predicate(f: ParamFilter, table: Any) -> ColumnElement[bool]:
    """The OR of a clause's values. Plain ``Type/id`` references are grouped into one
    ``target_id IN (...)`` per type: a facility's patients as a restriction are thousands of
    values, and an OR of that many terms passes SQLite's expression depth limit of 1000."""
    values = list(f.values)
    grouped: dict[str, list[str]] = {}
    if f.param.type == "reference" and f.modifier is None:
        rest = []
        for value in values:
            parts = value.split("/")
            plain = len(parts) == 2 and parts[1] and "\\" not in value
            if plain and definitions().is_resource_type(parts[0]):
                grouped.setdefault(parts[0], []).append(parts[1])
            else:
                rest.append(value)
        values = rest
    terms = [
        and_(table.c.target_type == rtype, values_in(table.c.target_id, ids))
        for rtype, ids in grouped.items()
    ]
    terms.extend(_value_predicate(f, table, v) for v in values)
    return or_(*terms)


def _value_predicate(f: ParamFilter, table: Any, value: str) -> ColumnElement[bool]:
    kind = f.param.type
    if kind == "token":
        return _token_predicate(table, value, f.modifier)
    value = unescape(value)
    if kind == "string":
        return _string_predicate(table, value, f.modifier)
    if kind == "date":
        return _date_predicate(value, table.c.low, table.c.high)
    if kind == "reference":
        return _reference_predicate(f, table, value)
    if kind in ("number", "quantity"):
        return _number_predicate(table, value, kind)
    if kind == "uri":
        return _uri_predicate(table, value, f.modifier)
    raise FhirError(400, f"Unsupported parameter type {kind}", "not-supported")


def _prefix(col: KeyedColumnElement[Any], text: str) -> ColumnElement[bool]:
    return and_(col >= text, col < text + MAX_CHAR)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_predicate(table: Any, value: str, modifier: str | None) -> ColumnElement[bool]:
    if modifier == "exact":
        return table.c.exact == value
    norm = normalize_string(value)
    if modifier == "contains":
        return table.c.normalized.like(f"%{_like_escape(norm)}%", escape="\\")
    return _prefix(table.c.normalized, norm)


def _token_predicate(table: Any, value: str, modifier: str | None) -> ColumnElement[bool]:
    if modifier == "text":
        return _prefix(table.c.text, normalize_string(unescape(value)))
    parts = [unescape(p) for p in split_escaped(value, "|")]
    if len(parts) == 1:
        return table.c.code == parts[0]
    system, code = parts
    if not system:
        return and_(table.c.code == code, table.c.system.is_(None))
    if not code:
        return table.c.system == system
    return and_(table.c.code == code, table.c.system == system)


def _date_predicate(value: str, low: Any, high: Any) -> ColumnElement[bool]:
    """R4 date comparison on half-open ranges: search value [plo, phi), target [low, high)."""
    prefix, text = split_prefix(value)
    try:
        plo, phi = date_range(text)
    except ValueError as err:
        raise FhirError(400, f"'{value}' is not a valid date: {err}") from err
    eq = and_(low >= plo, high <= phi)
    # ge and le are ORs that no index range can answer; each is inside a range of one column
    # (a target range [low, high) that is not empty), stated as well so that the index on
    # that column gives the candidates instead of every date of the parameter
    predicates: dict[str, ColumnElement[bool]] = {
        "eq": and_(eq, low <= phi),
        "ne": not_(eq),
        "gt": high > phi,
        "lt": low < plo,
        "ge": and_(high >= plo, or_(high > phi, eq)),
        "le": and_(low <= phi, or_(low < plo, eq)),
        "sa": low >= phi,
        "eb": high <= plo,
        "ap": and_(low < phi + (phi - plo) * 0.1 + 86400, high > plo - (phi - plo) * 0.1 - 86400),
    }
    return predicates[prefix]


def _number_predicate(table: Any, value: str, kind: str) -> ColumnElement[bool]:
    prefix, text = split_prefix(value)
    number, system, code = text, None, None
    if kind == "quantity" and "|" in text:
        parts = text.split("|")
        if len(parts) != 3:
            raise FhirError(400, f"'{value}' is not a valid quantity ([prefix]number|system|code)")
        number, system, code = parts[0], parts[1] or None, parts[2] or None
    try:
        exact, plo, phi = decimal_range(number)
    except ValueError as err:
        raise FhirError(400, f"'{value}' is not a valid number: {err}") from err
    col = table.c.value
    margin = abs(exact) * 0.1
    predicates: dict[str, ColumnElement[bool]] = {
        "eq": and_(col >= plo, col < phi),
        "ne": or_(col < plo, col >= phi),
        "gt": col > exact,
        "lt": col < exact,
        "ge": col >= exact,
        "le": col <= exact,
        "sa": col > exact,
        "eb": col < exact,
        "ap": and_(col >= exact - margin, col <= exact + margin),
    }
    cond = predicates[prefix]
    if system is not None:
        cond = and_(cond, table.c.system == system)
    if code is not None:
        # Without a system the code may be the unit as written (search.html, quantity).
        cond = and_(
            cond,
            table.c.code == code if system else or_(table.c.code == code, table.c.unit == code),
        )
    return cond


def _uri_predicate(table: Any, value: str, modifier: str | None) -> ColumnElement[bool]:
    if modifier == "below":
        return _prefix(table.c.value, value)
    if modifier == "above":
        return literal(value).like(table.c.value + "%")
    return table.c.value == value


def _reference_predicate(f: ParamFilter, table: Any, value: str) -> ColumnElement[bool]:
    if f.modifier == "identifier":
        raise FhirError(400, "The :identifier modifier is not supported", "not-supported")
    type_filter = f.modifier if f.modifier and f.modifier != "missing" else None
    if value.startswith(("http://", "https://", "urn:")):
        url = value.split("|", 1)[0]
        return table.c.url == url
    parts = value.split("/")
    if len(parts) >= 2 and definitions().is_resource_type(parts[-2]):
        rtype, rid = parts[-2], parts[-1]
        return and_(table.c.target_type == rtype, table.c.target_id == rid)
    if "/" in value:
        raise FhirError(400, f"'{value}' is not a valid reference (Type/id, id or an absolute URL)")
    cond = table.c.target_id == value
    if type_filter:
        cond = and_(cond, table.c.target_type == type_filter)
    return cond


# -- chains and _has -----------------------------------------------------------------


def _chain(f: ParamFilter, res: Any, drive: bool) -> ColumnElement[bool]:
    ref, where = _chain_clause(f)
    return _membership(res, ref, where, drive)


def _chain_clause(f: ParamFilter) -> tuple[Any, ColumnElement[bool]]:
    assert f.chain is not None
    ref = sp_reference.alias()
    branches = []
    for target_type, inner in f.chain.inner:
        target = resource.alias()
        targets = select(target.c.res_id).where(
            and_(
                target.c.res_type == target_type,
                target.c.deleted == false(),
                *(filter_condition(clause, target) for clause in inner),
            )
        )
        branches.append(and_(ref.c.target_type == target_type, ref.c.target_id.in_(targets)))
    where = and_(ref.c.res_type == f.resource_type, ref.c.param == f.param.code, or_(*branches))
    return ref, where


def _has(f: HasFilter, res: Any) -> ColumnElement[bool]:
    ref = sp_reference.alias()
    inner_rids = matching_rids(f.source_type, list(f.inner), resource.alias())
    refs = select(ref.c.target_id).where(
        and_(
            ref.c.res_type == f.source_type,
            ref.c.param == f.reference_param.code,
            ref.c.target_type == f.target_type,
            ref.c.rid.in_(inner_rids),
        )
    )
    return res.c.res_id.in_(refs)


# The aliases of consent's filter, made once: aliasing a table copies every column, and a
# search filtered for consent made two per withheld label, about a third of its CPU (SQLite,
# in-process). Each EXISTS names its own alias as never correlated, so sibling filters and
# nested queries that use the same alias stay independent subqueries.
_RESTRICTED_LABEL = INDEX_TABLES["token"].alias("restricted_label")
_RESTRICTED_REF = sp_reference.alias("restricted_ref")


def _restricted(f: RestrictedFilter, res: Any) -> ColumnElement[bool]:
    """NOT (labelled with one of ``f.labels`` AND about one of ``f.patients``), each an indexed
    lookup."""
    label = _RESTRICTED_LABEL
    labelled = _exists_apart(
        label,
        label.c.rid == res.c.rid,
        label.c.res_type == f.resource_type,
        label.c.param == "_security",
        label.c.code == f.labels[0] if len(f.labels) == 1 else label.c.code.in_(f.labels),
    )
    if f.everyone:
        return not_(labelled)
    if f.params == ("_id",):
        about: ColumnElement[bool] = values_in(res.c.res_id, f.patients)
    else:
        ref = _RESTRICTED_REF
        about = _exists_apart(
            ref,
            ref.c.rid == res.c.rid,
            ref.c.res_type == f.resource_type,
            ref.c.param.in_(list(f.params)),
            ref.c.target_type == "Patient",
            values_in(ref.c.target_id, f.patients),
        )
    return not_(and_(labelled, about))


def _exists_apart(alias: Any, *conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """EXISTS over a shared ``alias`` that is never correlated with an enclosing query."""
    return exists().where(and_(*conditions)).correlate_except(alias)


# -- sorting -------------------------------------------------------------------------

SORT_COLUMN = {
    "string": "normalized",
    "token": "code",
    "reference": "target_id",
    "quantity": "value",
    "number": "value",
    "uri": "value",
}


def sort_expressions(resource_type: str, keys: list[SortKey]) -> list[Any]:
    out: list[Any] = []
    for key in keys:
        if key.name == "_id":
            col: Any = resource.c.res_id
        elif key.name == "_lastUpdated":
            col = resource.c.last_updated
        else:
            assert key.param is not None
            col = _sort_value(resource_type, key)
        out.append(col.desc().nulls_last() if key.descending else col.asc().nulls_last())
    out.append(resource.c.rid.asc())  # a total order, so that pages never overlap
    return out


def _sort_value(resource_type: str, key: SortKey) -> Any:
    assert key.param is not None
    table = INDEX_TABLES[key.param.type].alias()
    if key.param.type == "date":
        column = table.c.high if key.descending else table.c.low
    else:
        column = table.c[SORT_COLUMN[key.param.type]]
    agg = func.max(column) if key.descending else func.min(column)
    return (
        select(agg)
        .where(
            and_(
                table.c.rid == resource.c.rid,
                table.c.res_type == resource_type,
                table.c.param == key.param.code,
            )
        )
        .correlate(resource)
        .scalar_subquery()
    )


def typed_keys(
    type_column: Any, id_column: Any, keys: Iterable[tuple[str, str]]
) -> ColumnElement[bool]:
    """``(type, id) IN keys`` as one ``id IN (...)`` per type: SQLite answers a row-value IN
    by reading the whole table (158 ms for the 20 patients an ``_include`` brings in, at 10k
    persons), whereas each per-type IN is a lookup in the (type, id) index on both stores."""
    by_type: dict[str, set[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, set()).add(rid)
    return or_(
        false(),
        *(and_(type_column == t, id_column.in_(sorted(ids))) for t, ids in sorted(by_type.items())),
    )
