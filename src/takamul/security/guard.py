"""The store guard of one request: SMART scopes (with granular restrictions), the patient
context of ``patient/`` scopes and facility scoping, applied by the store to every read, search,
include, history entry, compartment member and write (see ``takamul.store.guard``).

Facility scoping: a facility-scoped requester sees patient data only of its facility's
patients — those a ``FACILITY_LINKS`` search ties to ``Organization/F`` (it manages their record,
is their primary care, treated them, runs an episode of care, was referred them, is on their care
team) — and a resource that itself carries such a link (a new Encounter of the facility, a new
Patient it manages), so a facility can register its patients and record its care. Searches get
the facility's patients as an SQL filter, so totals and ``_summary=count`` count only them.
Break-the-glass lifts facility scoping (never the scopes); the audit log flags it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select

from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError
from takamul.fhir.search_values import ReferenceEntry, SearchIndexer
from takamul.security.context import AccessContext
from takamul.security.roles import FACILITY_LINKS, FacilityLink
from takamul.store.repository import Store
from takamul.store.schema import resource, sp_reference

__all__ = ["AccessGuard"]

# matches no resource: the facility has no patients yet
NOBODY = "takamul-no-patient"


class AccessGuard:
    """``takamul.store.guard.Guard`` for one request's ``AccessContext``."""

    def __init__(self, access: AccessContext, store: Store) -> None:
        self.access = access
        self.store = store
        self.indexer: SearchIndexer = store.indexer
        self._facility_patients: frozenset[str] | None = None
        self._facility = (
            f"Organization/{access.facility}"
            if access.facility and not access.facility.startswith("Organization/")
            else access.facility
        )

    def require(self, resource_type: str, interaction: str) -> None:
        if resource_type == "AuditEvent" and interaction in ("c", "u", "d"):
            raise FhirError(
                405, "The audit log is append-only and written by the server", "not-supported"
            )
        self.access.require(resource_type, interaction)

    def visible(self, resource_type: str, resource: dict[str, Any], interaction: str) -> bool:
        if not self.access.allows(resource_type, interaction, resource):
            return False
        if not self.access.facility_scoped or not _patient_data(resource_type):
            return True
        entries = self._entries(resource)
        if self._links_facility(resource_type, entries):
            return True
        patients = self._patients_in(resource_type, resource, entries)
        return bool(patients & self._patients())

    def restrictions(self, session: Any, resource_type: str) -> list[tuple[str, str]]:
        out = list(self.access.search_restrictions(resource_type))
        if not self.access.facility_scoped or not _patient_data(resource_type):
            return out
        ids = sorted(self._patients()) or [NOBODY]
        if resource_type == "Patient":
            out.append(("_id", ",".join(ids)))
        else:
            params = definitions().patient_compartment().get(resource_type, [])
            param = next((p for p in ("patient", "subject") if p in params), params[0])
            out.append((param, ",".join(f"Patient/{i}" for i in ids)))
        return out

    # -- facility ---------------------------------------------------------------------------

    def _entries(self, resource: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.indexer.extract(resource)
        except ValueError:
            return {}

    def _links_facility(self, resource_type: str, entries: dict[str, Any]) -> bool:
        for link in FACILITY_LINKS:
            if link.resource_type != resource_type:
                continue
            for entry in entries.get(link.org_param, ()):
                if (
                    isinstance(entry, ReferenceEntry)
                    and f"{entry.target_type}/{entry.target_id}" == self._facility
                ):
                    return True
        return False

    def _patients_in(
        self, resource_type: str, resource: dict[str, Any], entries: dict[str, Any]
    ) -> set[str]:
        if resource_type == "Patient":
            return {str(resource.get("id"))}
        params = definitions().patient_compartment().get(resource_type, [])
        return {
            e.target_id
            for p in params
            for e in entries.get(p, ())
            if isinstance(e, ReferenceEntry) and e.target_type == "Patient" and e.target_id
        }

    def _patients(self) -> frozenset[str]:
        """The facility's patients, found once per request through the reference index (on
        a reading connection: what is committed)."""
        if self._facility_patients is not None:
            return self._facility_patients
        assert self._facility is not None
        org_type, org_id = self._facility.split("/", 1)
        found: set[str] = set()
        with self.store.reading() as session:
            for link in FACILITY_LINKS:
                found.update(
                    r[0] for r in session.conn.execute(_link_query(link, org_type, org_id)) if r[0]
                )
        self._facility_patients = frozenset(found)
        return self._facility_patients


def _link_query(link: FacilityLink, org_type: str, org_id: str) -> Any:
    """Patient ids a facility link ties to ``org_type/org_id``."""
    org = sp_reference.alias("org")
    if link.patient_param == "_id":
        rids = select(org.c.rid).where(_org_match(org, link, org_type, org_id))
        return select(resource.c.res_id).where(resource.c.rid.in_(rids))
    pat = sp_reference.alias("pat")
    return (
        select(pat.c.target_id)
        .select_from(org.join(pat, pat.c.rid == org.c.rid))
        .where(
            _org_match(org, link, org_type, org_id),
            pat.c.param == link.patient_param,
            pat.c.target_type == "Patient",
        )
    )


def _org_match(org: Any, link: FacilityLink, org_type: str, org_id: str) -> Any:
    return and_(
        org.c.res_type == link.resource_type,
        org.c.param == link.org_param,
        org.c.target_type == org_type,
        org.c.target_id == org_id,
    )


def _patient_data(resource_type: str) -> bool:
    return resource_type == "Patient" or resource_type in definitions().patient_compartment()
