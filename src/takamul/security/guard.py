"""The store guard of one request: SMART scopes (with granular restrictions), the patient
context of ``patient/`` scopes and facility scoping, applied by the store to every read, search,
include, history entry, compartment member and write (see ``takamul.store.guard``).

Facility scoping: a facility-scoped requester sees patient data only of its facility's
patients — those a ``FACILITY_LINKS`` search ties to ``Organization/F`` (it manages their record,
is their primary care, treated them, runs an episode of care, was referred them, is on their care
team) — and a new Patient it registers, so a facility can register its patients and record their
care. It cannot make someone else's patient its own by writing the link itself (an Encounter
naming it as service provider): that takes a referral or care team recorded by those who already
treat the patient, or breaking the glass, which is audited with its reason. Searches get
the facility's patients as an SQL filter, so totals and ``_summary=count`` count only them.
Break-the-glass lifts facility scoping (never the scopes); the audit log flags it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, exists, or_, select

from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError
from takamul.fhir.search_values import ReferenceEntry, SearchIndexer
from takamul.security.consent import (
    ConsentState,
    Restriction,
    Withholding,
    authorises_caregiver,
    consent_register,
    restrictions_of,
    sensitivity,
)
from takamul.security.context import AccessContext
from takamul.security.roles import (
    FACILITY_LINKS,
    MEMBER_TYPES,
    FacilityLink,
    current_participant,
    current_period,
    withheld_labels,
)
from takamul.store.guard import OWNED
from takamul.store.query import RestrictedFilter
from takamul.store.repository import Store
from takamul.store.schema import resource, sp_reference

__all__ = ["AccessGuard"]

# matches no resource: the facility has no patients yet
NOBODY = "takamul-no-patient"
# facilities whose withheld patients one consent state keeps (a bound on memory)
MAX_FACILITIES_KEPT = 1000


class AccessGuard:
    """``takamul.store.guard.Guard`` for one request's ``AccessContext``."""

    def __init__(self, access: AccessContext, store: Store) -> None:
        self.access = access
        self.store = store
        self.indexer: SearchIndexer = store.indexer
        self._facility_patients: frozenset[str] | None = None
        # patient -> whether the facility reaches them, learnt by targeted queries (``_reached``)
        self._reach: dict[str, bool] = {}
        self._consents: dict[str, list[Restriction]] = {}
        # the process's register of the record's Consents, and its state for this request
        # (looked up once, when consent first matters; see ``ConsentRegister``)
        self._consent_register = consent_register(store)
        self._consent_state: ConsentState | None = None
        # (session, type) -> the patients a search being parsed names (``restrictions``)
        self._named: dict[tuple[int, str], tuple[str, frozenset[str]] | None] = {}
        self._caregiver: bool | None = None
        self._withheld_cache: Withholding | None = None
        # patients whose data this request was allowed to write (for the audit log)
        self.written_patients: set[str] = set()
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
        if "caregiver" in self.access.roles and not self._caregiver_authorised():
            raise FhirError(
                403,
                f"Acting for Patient/{self.access.patient} needs the patient's recorded consent "
                "or a legal authority (an active Consent permitting this login); none is recorded",
                "forbidden",
            )

    def _caregiver_authorised(self) -> bool:
        """A caregiver acts for a patient only with a recorded consent or legal authority."""
        if self._caregiver is None:
            patient = self.access.patient
            who = [w for w in (self.access.user, self.access.client_id) if w]
            self._caregiver = bool(patient) and any(
                authorises_caregiver(c, who) for c in self._consents_of(str(patient))
            )
        return self._caregiver

    def visible_stored(self, resource_type: str, content: bytes, interaction: str) -> bool:
        """``visible`` of a stored resource's JSON, parsed only when a rule needs what it says.

        Parsing a Patient costs about as much as the rest of an authorised read's checks
        (13 µs of some 70). A read needs nothing of the content when the requester's scopes
        grant the whole type (no granular restriction, no patient context), it is not bound to
        a facility, the type has no owner, and the resource carries no security label: every
        stored resource is labelled on write (``store.labels_complete``), so a resource without
        a ``"security"`` key anywhere has none, and no withheld or consented label applies."""
        if (
            interaction == "r"
            and b'"security"' not in content
            and getattr(self.store, "labels_complete", False)
            and resource_type not in OWNED
            and not self.access.facility_scoped
            and self.access.allows_whole_type(resource_type, interaction)
            and (
                _patient_data(resource_type)
                or not withheld_labels(self.access.roles, resource_type)
            )
        ):
            return True
        return self.visible(resource_type, orjson.loads(content), interaction)

    def visible(self, resource_type: str, resource: dict[str, Any], interaction: str) -> bool:
        if not self.access.allows(resource_type, interaction, resource):
            return False
        if not self._owns(resource_type, resource, interaction):
            return False
        if interaction not in ("c", "u", "d"):
            hidden = withheld_labels(self.access.roles, resource_type)
            if hidden and hidden & sensitivity(resource):
                return False
        writing = interaction in ("c", "u", "d")
        if (
            interaction in ("c", "u")
            and resource_type == "PractitionerRole"
            and self.access.facility_scoped
            and self._widens_reach(resource)
        ):
            raise FhirError(
                403,
                "This PractitionerRole would give the facility the patients of care teams "
                "the practitioner is on, which it does not treat; the directory's "
                "administrators record such roles",
                "forbidden",
            )
        if not _patient_data(resource_type):
            return True
        labels = sensitivity(resource) if self._consent_applies() else frozenset()
        if not (self.access.facility_scoped or labels or writing):
            # nothing left to check needs the resource's patients: searches that check every
            # match (consent) skip the extraction of its search index for most resources
            return True
        entries = self._entries(resource)
        patients = self._patients_in(resource_type, resource, entries)
        if self.access.facility_scoped and not (
            self._registers(resource_type, entries, patients) or self._reached(patients)
        ):
            return False
        if labels and not self._consented(labels, patients):
            return False
        if writing:
            self.written_patients.update(patients)
        return True

    def _owns(self, resource_type: str, resource: dict[str, Any], interaction: str) -> bool:
        """A type only its owner sees (``store.guard.OWNED``, e.g. a Subscription): the owner
        and administrators; creating one makes the requester its owner."""
        owner_of = OWNED.get(resource_type)
        if owner_of is None or interaction == "c" or "administrator" in self.access.roles:
            return True
        return owner_of(self.store, str(resource.get("id") or "")) == self.access.who

    def exhaustive(self, resource_type: str) -> bool:
        """Searches of this type must be filtered row by row (and counted so): a type only its
        owner sees, or, while the database holds data stored unlabelled by an earlier version,
        patient data (consent is otherwise an SQL filter on the labels, ``filters``)."""
        return resource_type in OWNED or (
            not getattr(self.store, "labels_complete", False)
            and _patient_data(resource_type)
            and self._consent_applies()
        )

    def filters(self, session: Any, resource_type: str) -> list[Any]:
        """Consent as SQL: per set of sensitivity labels, the patients whose consent withholds
        them from this requester; their resources carrying one of the labels are left out
        (labels are added on write, so unlabelled sensitive data does not exist)."""
        # what the requester's role never reads, about anyone (``roles.WITHHELD``)
        by_role = tuple(sorted(withheld_labels(self.access.roles, resource_type)))
        out: list[Any] = (
            [RestrictedFilter(resource_type, by_role, (), (), everyone=True)] if by_role else []
        )
        if not _patient_data(resource_type) or not self._consent_applies():
            return out
        if resource_type == "Patient":
            params: tuple[str, ...] = ("_id",)
        else:
            params = tuple(definitions().patient_data().get(resource_type, ()))
        withheld = self._withheld()
        groups = withheld.groups
        named = self._named.pop((id(session), resource_type), None)
        if named is not None and groups:
            # only the patients the matches can be about need naming in the SQL: the national
            # list of restricting patients would otherwise be bound into every search
            groups = withheld.about(self._about(session, resource_type, params, named))
        return out + [
            RestrictedFilter(resource_type, labels, patients, params) for labels, patients in groups
        ]

    def _about(
        self,
        session: Any,
        resource_type: str,
        params: tuple[str, ...],
        named: tuple[str, frozenset[str]],
    ) -> frozenset[str]:
        """Every patient a match of the search can be about, when a plain clause of the search
        names its patients (``named``: the clause's parameter and ids): the named ones and,
        through the type's Patient-compartment parameters, any other patient the resources
        naming them refer to (one indexed lookup)."""
        key, ids = named
        if resource_type == "Patient":
            return ids
        # the values passed to ``execute``: ``.params()`` copies the statement and works out
        # its cache key again (72 -> 41 us a lookup, SQLite)
        others = session.conn.execute(
            _about_statement(resource_type, key, params), {"ids": sorted(ids)}
        )
        return ids | frozenset(row.target_id for row in others)

    def _withheld(self) -> Withholding:
        """The patients whose consent withholds each label from this requester's facility
        (worked out once per consent state and facility, shared by the process's requests)."""
        if self._withheld_cache is None:
            state = self._state()
            kept = state.withheld.get(self._facility)
            if kept is None:
                out: dict[str, set[str]] = {}
                for patient, restriction in self._consent_register.everyone(state):
                    if not self._permitted(restriction):
                        for label in restriction.labels:
                            out.setdefault(label, set()).add(patient)
                kept = Withholding.of(out)
                if len(state.withheld) >= MAX_FACILITIES_KEPT:
                    state.withheld.clear()
                state.withheld[self._facility] = kept
            self._withheld_cache = kept
        return self._withheld_cache

    # -- consent ----------------------------------------------------------------------------

    def _consent_applies(self) -> bool:
        return self.access.break_glass is None and self._any_restriction()

    def _consented(self, labels: frozenset[str], patients: set[str]) -> bool:
        """Sensitive data of a patient who restricted it: only for the treating team named in
        the Consent (break-the-glass excepted, audited)."""
        for patient in patients:
            for restriction in self._restrictions(patient):
                if restriction.labels & labels and not self._permitted(restriction):
                    return False
        return True

    def _permitted(self, restriction: Restriction) -> bool:
        return self._facility is not None and self._facility in restriction.permitted

    def _state(self) -> ConsentState:
        if self._consent_state is None:
            self._consent_state = self._consent_register.current()
        return self._consent_state

    def _any_restriction(self) -> bool:
        return self._state().any_consent

    def _restrictions(self, patient: str) -> list[Restriction]:
        cached = self._consents.get(patient)
        if cached is not None:
            return cached
        found = [r for c in self._consents_of(patient) if (r := restrictions_of(c))]
        self._consents[patient] = found
        return found

    def _consents_of(self, patient: str) -> list[dict[str, Any]]:
        """The patient's current Consent resources."""
        return self._consent_register.consents_of(self._state(), patient)

    def restrictions(
        self, session: Any, resource_type: str, params: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        # for ``filters``, which the same parse calls next: the patients the search names
        self._named[(id(session), resource_type)] = _named_patients(resource_type, params)
        out = list(self.access.search_restrictions(resource_type))
        if not self.access.facility_scoped or not _patient_data(resource_type):
            return out
        # a write transaction's own connection would see its uncommitted writes: the reach is
        # what is committed, so such a search asks on a reading connection of its own
        conn = None if getattr(session, "writing", False) else session.conn
        if self._names_only_reachable(resource_type, params, conn):
            # The search already keeps to patients the facility reaches (a record page's
            # searches, the web search's candidates): ANDing the facility's whole list of
            # patients could only repeat it, at the cost of thousands of bound values.
            return out
        ids = sorted(self._patients()) or [NOBODY]
        if resource_type == "Patient":
            out.append(("_id", ",".join(ids)))
        else:
            links = definitions().patient_data().get(resource_type, [])
            param = next((p for p in ("patient", "subject") if p in links), links[0])
            out.append((param, ",".join(f"Patient/{i}" for i in ids)))
        return out

    def _names_only_reachable(
        self, resource_type: str, params: Sequence[tuple[str, str]], conn: Any
    ) -> bool:
        """A plain clause of ``params`` names patients (``_id`` of Patients, ``patient`` or
        ``subject`` references of other types), every one of them the facility's (asked on
        ``conn``, the search's own reading connection, or on one of its own when None)."""
        defs = definitions()
        if resource_type == "Patient":
            keys = {"_id"}
        else:
            # ``patient`` is by definition a reference to a Patient; ``subject`` places the
            # resource in the patient's compartment where the compartment says so
            keys = {"patient"} & set(defs.search_params_for(resource_type))
            keys |= {"subject"} & set(defs.patient_data().get(resource_type, ()))
        for key, value in params:
            if key not in keys or not value:
                continue
            ids = [_patient_id(v, bare=key != "subject") for v in value.split(",")]
            named = {i for i in ids if i is not None}
            if len(named) == len(ids) and self._reached(named, conn) == named:
                return True
        return False

    # -- facility ---------------------------------------------------------------------------

    def _entries(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The search values the checks read: the type's patient references and facility
        links only (the whole index of a resource cost about 0.1 ms, on every match of a
        facility's search)."""
        rtype = str(resource.get("resourceType") or "")
        try:
            return self.indexer.extract_some(resource, _guard_params(rtype))
        except ValueError:
            return {}

    def _registers(self, resource_type: str, entries: dict[str, Any], patients: set[str]) -> bool:
        """The resource itself ties the facility to it: a Patient the facility registers (or
        manages), or facility data about no patient. An Encounter, referral or care team that
        would tie an existing patient to the writing facility does not count: a facility could
        otherwise grant itself a patient's whole record by writing one. A treating relationship
        comes from what the patient's own facilities record (their referral to it, a care team
        naming it) or, self-declared, by breaking the glass: audited with the reason, for
        review."""
        if resource_type != "Patient" and patients:
            return False
        return self._links_facility(resource_type, entries)

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
        params = definitions().patient_data().get(resource_type, [])
        return {
            e.target_id
            for p in params
            for e in entries.get(p, ())
            if isinstance(e, ReferenceEntry) and e.target_type == "Patient" and e.target_id
        }

    def patients_in_scope(self) -> frozenset[str] | None:
        """The patients a facility-scoped requester may reach (before consent), or None when
        facility scoping does not apply. Lets a caller narrow its own candidates (the web
        app's name finder) before the guarded search that decides."""
        if not self.access.facility_scoped:
            return None
        return self._patients()

    def _patients(self) -> frozenset[str]:
        """The facility's patients, found once per request through the reference index (on
        a reading connection: what is committed). Only a search that does not name its
        patients needs the whole list; reads and searches about named patients ask
        ``_reached``, whose cost does not grow with the facility."""
        if self._facility_patients is not None:
            return self._facility_patients
        assert self._facility is not None
        org_type, org_id = self._facility.split("/", 1)
        found: set[str] = set()
        now = time.time()
        with self.store.reading() as session:
            for link in FACILITY_LINKS:
                if link.membership:
                    members = _facility_members(session.conn, self._facility, now)
                    found.update(_member_patients(session.conn, link, members, now))
                    continue
                found.update(
                    r[0] for r in session.conn.execute(_link_query(link, org_type, org_id)) if r[0]
                )
        self._facility_patients = frozenset(found)
        return self._facility_patients

    def _reached(self, patients: set[str] | frozenset[str], conn: Any = None) -> frozenset[str]:
        """Those of ``patients`` the facility reaches: the same rule as ``_patients``, asked
        of these patients only (a facility of 50,000 patients made every read fetch all of
        their ids); the answers are kept for the rest of the request. ``conn``: a connection
        of the caller's to ask on (else a reading of its own: a second connection, out of the
        pool, while the caller holds one cost about a tenth of a guarded search)."""
        if self._facility_patients is not None:
            return self._facility_patients & patients
        unknown = {p for p in patients if p not in self._reach}
        if unknown:
            if conn is None:
                with self.store.reading(snapshot=False) as session:
                    found = self._query_reach(unknown, session.conn)
            else:
                found = self._query_reach(unknown, conn)
            self._reach.update((p, p in found) for p in unknown)
        return frozenset(p for p in patients if self._reach[p])

    def _query_reach(self, ids: set[str], conn: Any) -> set[str]:
        assert self._facility is not None
        org_type, org_id = self._facility.split("/", 1)
        found: set[str] = set()
        now = time.time()
        # statement by statement: each link is asked on its own, and the answer is their union
        for link in FACILITY_LINKS:
            if link.membership:
                found |= _member_patients_of(conn, link, self._facility, ids - found, now)
            else:
                query = _among_statement(link, org_type)
                values = {"org_id": org_id, "ids": sorted(ids - found)}
                found.update(r[0] for r in conn.execute(query, values) if r[0])
            if ids <= found:  # the first link (the managing facility) usually settles it
                break
        return found & ids

    def _widens_reach(self, role: dict[str, Any]) -> bool:
        """Writing this PractitionerRole would tie the facility to patients it does not reach:
        the care-team patients of the role (or of its practitioner) that are not its own. A
        facility could otherwise make another's patients its own by giving itself one of their
        team's practitioners; the directory's administrators (not facility-bound) record such
        roles."""
        refs = {f"PractitionerRole/{role.get('id')}"} if role.get("id") else set()
        practitioner = str((role.get("practitioner") or {}).get("reference") or "")
        if practitioner.startswith("Practitioner/"):
            refs.add(practitioner)
        if not refs:
            return False
        link = next(ln for ln in FACILITY_LINKS if ln.membership)
        with self.store.reading() as session:
            reached = _member_patients(session.conn, link, frozenset(refs), time.time())
        return bool(reached - self._reached(reached))


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


@functools.cache
def _about_statement(resource_type: str, key: str, params: tuple[str, ...]) -> Any:
    """``_about``'s query for the patients ``ids`` (bound): the Patient-compartment references
    of the resources that name them in ``key``. Built once per type and clause: building it
    per search (about 175 us) cost as much as running it."""
    naming = sp_reference.alias("naming")
    rids = select(naming.c.rid).where(
        naming.c.res_type == resource_type,
        naming.c.param == key,
        naming.c.target_type == "Patient",
        naming.c.target_id.in_(bindparam("ids", expanding=True)),
    )
    return (
        select(sp_reference.c.target_id)
        .where(
            sp_reference.c.rid.in_(rids),
            sp_reference.c.res_type == resource_type,
            sp_reference.c.param.in_(params),
            sp_reference.c.target_type == "Patient",
        )
        .distinct()
    )


@functools.cache
def _among_statement(link: FacilityLink, org_type: str) -> Any:
    """``_link_query`` for the patients ``ids`` (bound, with ``org_id``), driven from the
    patients' side: their few resources, each asked whether it names the facility (an ``IN``
    of the facility's rows instead made SQLite list all of its encounters, thousands, to
    answer for one patient). Built once per link: building it per request cost more than
    running it."""
    org = sp_reference.alias("org")
    if link.patient_param == "_id":
        names = exists().where(
            org.c.rid == resource.c.rid, _org_match(org, link, org_type, bindparam("org_id"))
        )
        return select(resource.c.res_id).where(
            resource.c.res_type == "Patient",
            resource.c.res_id.in_(bindparam("ids", expanding=True)),
            names,
        )
    pat = sp_reference.alias("pat")
    names = exists().where(
        org.c.rid == pat.c.rid, _org_match(org, link, org_type, bindparam("org_id"))
    )
    return (
        select(pat.c.target_id)
        .where(
            pat.c.res_type == link.resource_type,
            pat.c.param == link.patient_param,
            pat.c.target_type == "Patient",
            pat.c.target_id.in_(bindparam("ids", expanding=True)),
            names,
        )
        .distinct()
    )


def _facility_members(conn: Any, facility: str, now: float) -> frozenset[str]:
    """The references that stand for ``facility`` on a care team: itself, its current
    PractitionerRoles (``active`` not false, ``period`` containing now) and their
    Practitioners. The roles are found by the reference index and judged on their content
    (a facility has hundreds of roles, not millions)."""
    rows = conn.execute(
        select(resource.c.res_id, resource.c.content).where(
            resource.c.rid.in_(_roles_at(facility)), resource.c.deleted.is_(False)
        )
    )
    return frozenset({facility, *_role_references(rows, now)})


def _roles_at(facility: str) -> Any:
    """The rows of the PractitionerRoles whose ``organization`` is ``facility``."""
    org_type, org_id = facility.split("/", 1)
    at = sp_reference.alias("at")
    return select(at.c.rid).where(
        at.c.res_type == "PractitionerRole",
        at.c.param == "organization",
        at.c.target_type == org_type,
        at.c.target_id == org_id,
    )


def _role_references(rows: Any, now: float) -> set[str]:
    """The current roles of ``rows`` (``res_id``, ``content``: ``active`` not false,
    ``period`` containing now) and their Practitioners, as references."""
    out: set[str] = set()
    for row in rows:
        role = orjson.loads(row.content) if row.content else {}
        if role.get("active") is False or not current_period(role.get("period"), now):
            continue
        out.add(f"PractitionerRole/{row.res_id}")
        practitioner = str((role.get("practitioner") or {}).get("reference") or "")
        if practitioner.startswith("Practitioner/"):
            out.add(practitioner)
    return out


def _members_among(conn: Any, facility: str, refs: set[str], now: float) -> frozenset[str]:
    """Those of ``refs`` that stand for ``facility`` on a care team: ``_facility_members``
    asked of these references only (the roles read are those they name, not all of the
    facility's)."""
    out = {facility} & refs
    role_ids = sorted(r.split("/", 1)[1] for r in refs if r.startswith("PractitionerRole/"))
    practitioners = sorted(r.split("/", 1)[1] for r in refs if r.startswith("Practitioner/"))
    if not (role_ids or practitioners):
        return frozenset(out)
    by = sp_reference.alias("by")
    named = [resource.c.res_id.in_(role_ids)] if role_ids else []
    if practitioners:
        held_by = select(by.c.rid).where(
            by.c.res_type == "PractitionerRole",
            by.c.param == "practitioner",
            by.c.target_type == "Practitioner",
            by.c.target_id.in_(practitioners),
        )
        named.append(resource.c.rid.in_(held_by))
    rows = conn.execute(
        select(resource.c.res_id, resource.c.content).where(
            resource.c.res_type == "PractitionerRole",
            resource.c.rid.in_(_roles_at(facility)),
            resource.c.deleted.is_(False),
            or_(*named),
        )
    )
    return frozenset((out | _role_references(rows, now)) & refs)


@functools.cache
def _teams_statement(link: FacilityLink) -> Any:
    """The current content of the teams of ``link`` naming the patients ``ids`` (bound)."""
    pat = sp_reference.alias("pat")
    teams_of = select(pat.c.rid).where(
        pat.c.res_type == link.resource_type,
        pat.c.param == link.patient_param,
        pat.c.target_type == "Patient",
        pat.c.target_id.in_(bindparam("ids", expanding=True)),
    )
    return select(resource.c.rid, resource.c.content).where(
        resource.c.rid.in_(teams_of), resource.c.deleted.is_(False)
    )


def _member_patients_of(
    conn: Any, link: FacilityLink, facility: str, ids: set[str], now: float
) -> set[str]:
    """Those of ``ids`` on a current team of ``link`` with a current participant standing for
    ``facility``: ``_member_patients`` asked from the patients' side (their few teams)."""
    teams = {
        row.rid: orjson.loads(row.content)
        for row in conn.execute(_teams_statement(link), {"ids": sorted(ids)})
        if row.content
    }
    refs = {
        str((p.get("member") or {}).get("reference") or "")
        for team in teams.values()
        for p in team.get("participant") or ()
    }
    refs = {r for r in refs if r.partition("/")[0] in MEMBER_TYPES}
    if not refs:
        return set()
    members = _members_among(conn, facility, refs, now)
    current = [rid for rid, team in teams.items() if current_participant(team, members, now)]
    return _team_patients(conn, link, current)


def _member_patients(
    conn: Any, link: FacilityLink, members: frozenset[str], now: float
) -> set[str]:
    """The patients of the current teams on which one of ``members`` is a current participant.
    The reverse reference index finds the teams naming a member; whether the team and the
    participation are current (status, the team's and the participant's periods, which are not
    all indexed) is read from their content, one query per thousand teams."""
    by_type: dict[str, list[str]] = {}
    for ref in members:
        kind, _, ident = ref.partition("/")
        if kind in MEMBER_TYPES and ident:
            by_type.setdefault(kind, []).append(ident)
    if not by_type:
        return set()
    member = sp_reference.alias("member")
    named = or_(
        *(
            and_(member.c.target_type == kind, member.c.target_id.in_(sorted(ids)))
            for kind, ids in sorted(by_type.items())
        )
    )
    teams = sorted(
        {
            row.rid
            for row in conn.execute(
                select(member.c.rid).where(
                    member.c.res_type == link.resource_type,
                    member.c.param == link.org_param,
                    named,
                )
            )
        }
    )
    found: set[str] = set()
    for start in range(0, len(teams), 1000):
        chunk = teams[start : start + 1000]
        current = {
            row.rid
            for row in conn.execute(
                select(resource.c.rid, resource.c.content).where(
                    resource.c.rid.in_(chunk), resource.c.deleted.is_(False)
                )
            )
            if row.content and current_participant(orjson.loads(row.content), members, now)
        }
        found |= _team_patients(conn, link, current)
    return found


def _team_patients(conn: Any, link: FacilityLink, teams: Iterable[int]) -> set[str]:
    """The patients of the teams (rows) ``teams``."""
    rids = sorted(teams)
    if not rids:
        return set()
    return {
        row.target_id
        for row in conn.execute(
            select(sp_reference.c.target_id).where(
                sp_reference.c.rid.in_(rids),
                sp_reference.c.res_type == link.resource_type,
                sp_reference.c.param == link.patient_param,
                sp_reference.c.target_type == "Patient",
            )
        )
        if row.target_id
    }


def _org_match(org: Any, link: FacilityLink, org_type: str, org_id: Any) -> Any:
    return and_(
        org.c.res_type == link.resource_type,
        org.c.param == link.org_param,
        org.c.target_type == org_type,
        org.c.target_id == org_id,
    )


def _patient_id(value: str, bare: bool) -> str | None:
    """The id of ``Patient/<id>`` (or of a bare id where the parameter means Patients)."""
    if value.startswith("Patient/") and value.count("/") == 1:
        return value.split("/", 1)[1] or None
    if bare and value and "/" not in value and ":" not in value and "|" not in value:
        return value
    return None


def _named_patients(
    resource_type: str, params: Sequence[tuple[str, str]]
) -> tuple[str, frozenset[str]] | None:
    """A plain clause of a search that names its patients (``_id`` of Patients, ``patient`` or
    ``subject`` of other types): its parameter and the ids; the matches are about them."""
    if resource_type == "Patient":
        keys = {"_id"}
    else:
        defs = definitions()
        keys = {"patient"} & set(defs.search_params_for(resource_type))
        keys |= {"subject"} & set(defs.patient_data().get(resource_type, ()))
    for key, value in params:
        if key not in keys or not value:
            continue
        ids = [_patient_id(v, bare=key != "subject") for v in value.split(",")]
        if ids and all(ids):
            return key, frozenset(i for i in ids if i)
    return None


@functools.cache
def _guard_params(resource_type: str) -> tuple[str, ...]:
    """The search parameters of ``resource_type`` the guard's checks read: its patient
    references (``_patients_in``) and its facility links (``_links_facility``)."""
    params = list(definitions().patient_data().get(resource_type, ()))
    params += [ln.org_param for ln in FACILITY_LINKS if ln.resource_type == resource_type]
    return tuple(dict.fromkeys(params))


def _patient_data(resource_type: str) -> bool:
    return resource_type == "Patient" or resource_type in definitions().patient_data()
