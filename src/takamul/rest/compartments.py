"""Compartment search (R4 http.html#vsearch, compartmentdefinition.html):
``GET [base]/Patient/p1/Observation?code=...`` is the search ``Observation?code=...`` restricted to
the Observations in Patient p1's compartment, i.e. those that point at p1 through any of the
compartment's parameters for the type (``subject`` or ``performer``), ORed.

It is an ordinary search with one more clause: the parameters, paging, includes and above all
the request's store guard (scopes, patient context, facility, consent) are those of
``Session.parse_search`` and ``Session.search``, so a compartment shows nothing a search of the
type would not.
"""

from __future__ import annotations

from sqlalchemy import and_, select

from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError, operation_outcome
from takamul.rest.interactions import RequestContext, Result
from takamul.rest.rendering import search_bundle
from takamul.store.query import Filter, ParamFilter, SpecialFilter
from takamul.store.repository import Session
from takamul.store.schema import resource, sp_reference

CANONICAL = "http://hl7.org/fhir/CompartmentDefinition/"
# In the definitions table: the compartment's own type is a member by identity.
ITSELF = "{def}"
# Members found through several parameters become an _id list, one bound value each; both
# stores take far more (SQLite 32,766, PostgreSQL 65,535), this leaves room for the rest.
MAX_MEMBERS = 20_000


def compartment_canonicals() -> list[str]:
    """The CompartmentDefinitions this server searches, for the CapabilityStatement."""
    return [CANONICAL + name[0].lower() + name[1:] for name in sorted(definitions().compartments)]


def member_params(compartment_type: str, resource_type: str) -> list[str]:
    """The parameters that place a ``resource_type`` in a ``compartment_type`` compartment, or
    an error that says what can be searched instead."""
    defs = definitions()
    compartment = defs.compartments.get(compartment_type)
    if compartment is None:
        raise FhirError(
            404,
            f"{compartment_type} has no compartment; the compartments are "
            f"{', '.join(sorted(defs.compartments))}",
            "not-supported",
        )
    if not defs.is_resource_type(resource_type):
        raise FhirError(404, f"Unknown resource type '{resource_type}'", "not-supported")
    params = compartment.get(resource_type) or []
    if not params and resource_type != compartment_type:
        raise FhirError(
            400,
            f"{resource_type} is not in the {compartment_type} compartment "
            f"({CANONICAL}{compartment_type[0].lower()}{compartment_type[1:]}); "
            f"search {resource_type} directly",
            "not-supported",
        )
    return params


def search(
    session: Session,
    compartment_type: str,
    compartment_id: str,
    resource_type: str,
    params: list[tuple[str, str]],
    ctx: RequestContext,
) -> Result:
    members = member_params(compartment_type, resource_type)
    # parsed (and guarded) first: a requester who may not search the type learns nothing,
    # not even whether the compartment has members
    query = session.parse_search(resource_type, params, ctx.lenient)
    query.filters.append(
        _membership(session, compartment_type, compartment_id, resource_type, members)
    )
    page = session.search(query)
    outcome = operation_outcome(query.warnings) if query.warnings else None
    path = f"{compartment_type}/{compartment_id}/{resource_type}"
    bundle = search_bundle(page, ctx.base, path, query.used, query.summary, query.elements, outcome)
    return Result(200, bundle)


def _membership(
    session: Session,
    compartment_type: str,
    compartment_id: str,
    resource_type: str,
    members: list[str],
) -> Filter:
    """The clause "in the compartment": ORed over the member parameters."""
    params = [p for p in members if p != ITSELF]
    target = f"{compartment_type}/{compartment_id}"
    if len(params) == 1 and resource_type != compartment_type:
        # one parameter: the very clause of ``Observation?patient=Patient/p1``
        param = definitions().search_params_for(resource_type)[params[0]]
        return ParamFilter(resource_type, param, None, (target,))
    # Several parameters cannot be one search clause (clauses are ANDed): the members are
    # looked up in the reference index, and the search then runs on their ids. The look-up
    # only narrows; every member still passes the guard in Session.search.
    ids = (
        _referring_ids(
            session,
            target_type=compartment_type,
            target_id=compartment_id,
            resource_type=resource_type,
            params=params,
        )
        if params
        else set()
    )
    if resource_type == compartment_type:
        ids.add(compartment_id)  # a Patient is in its own compartment
    if len(ids) > MAX_MEMBERS:
        raise FhirError(
            400,
            f"{target} has more than {MAX_MEMBERS} {resource_type} resources; search "
            f"{resource_type}?{params[0]}={target} with more criteria instead",
            "too-costly",
        )
    return SpecialFilter(resource_type, "_id", None, tuple(sorted(ids)))


def _referring_ids(
    session: Session, target_type: str, target_id: str, resource_type: str, params: list[str]
) -> set[str]:
    """Ids of the current ``resource_type`` resources that point at the target through any of
    ``params`` (deleted resources have no index rows)."""
    return set(
        session.conn.execute(
            select(resource.c.res_id).where(
                resource.c.rid.in_(
                    select(sp_reference.c.rid).where(
                        and_(
                            sp_reference.c.target_type == target_type,
                            sp_reference.c.target_id == target_id,
                            sp_reference.c.res_type == resource_type,
                            sp_reference.c.param.in_(params),
                        )
                    )
                )
            )
        ).scalars()
    )
