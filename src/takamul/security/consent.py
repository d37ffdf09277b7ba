"""Consent: a patient restricts sensitive categories of their record to their treating team.

Sensitive data is recognised by its security label (``meta.security``, v3
ActInformationSensitivityPolicy: ``PSY`` mental health, ``HIV``, ``SEX`` sexual and
reproductive health), which the store adds on write from the cited value sets of
``takamul.fhir.sensitivity`` (ICD-10 and ATC hierarchies, LOINC instruments and tests, SNOMED CT
concepts); the codes are also read at check time, so data stored before a value set grew is
still protected.

A restriction is a FHIR ``Consent`` of the patient, ``status`` active, whose ``provision`` is a
``deny`` listing the categories as ``securityLabel`` and, nested, ``permit`` provisions whose
``actor`` are the treating team (Organizations, or their Practitioners' roles)::

    {"resourceType": "Consent", "status": "active",
     "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy"}]},
     "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
     "patient": {"reference": "Patient/p1"},
     "provision": {"type": "deny",
       "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "PSY"}],
       "provision": [{"type": "permit",
                      "actor": [{"role": {...},
                                 "reference": {"reference": "Organization/mh-clinic"}}]}]}}

Restricted data is visible only to a requester whose facility is a permitted actor (or while
breaking the glass, audited). Anything else sees it as if it did not exist.
"""

from __future__ import annotations

import calendar
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from math import inf
from time import monotonic
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import BigInteger, String, cast, func, select, update

from takamul.fhir.sensitivity import ACT_CODE, LABELS, code_label, sensitivity
from takamul.store.schema import resource, sp_reference, store_setting

if TYPE_CHECKING:
    from takamul.store.repository import Session, Store

__all__ = [
    "ACT_CODE",
    "CONSENT_VERSION",
    "LOGIN_SYSTEM",
    "ConsentRegister",
    "ConsentState",
    "Restriction",
    "Withholding",
    "authorises_caregiver",
    "consent_register",
    "restrictions_of",
    "sensitivity",
]


@dataclass(frozen=True, slots=True)
class Restriction:
    """One active Consent's denial: these labels, except for these actors."""

    consent_id: str
    labels: frozenset[str]
    permitted: frozenset[str]  # "Organization/x", "Practitioner/y", ...


def _label_of(coding: Mapping[str, Any]) -> str | None:
    system, code = coding.get("system"), coding.get("code")
    return code_label(str(system), code) if isinstance(code, str) else None


def restrictions_of(consent: Mapping[str, Any]) -> Restriction | None:
    """The restriction an active patient-privacy Consent makes, if it makes one."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return None
    provision = consent.get("provision") or {}
    if provision.get("type") != "deny":
        return None
    labels = frozenset(
        str(s.get("code"))
        for s in provision.get("securityLabel") or ()
        if isinstance(s, dict) and s.get("code") in LABELS
    )
    labels |= frozenset(
        label
        for cls in provision.get("class") or ()
        if isinstance(cls, dict) and (label := _label_of(cls))
    )
    if not labels:
        return None
    permitted = frozenset(
        str(ref)
        for nested in provision.get("provision") or ()
        if isinstance(nested, dict) and nested.get("type") == "permit"
        for actor in nested.get("actor") or ()
        if isinstance(actor, dict)
        and isinstance(ref := (actor.get("reference") or {}).get("reference"), str)
    )
    return Restriction(str(consent.get("id")), labels, permitted)


# How a Consent names a person who may act for the patient: by their login or client id.
LOGIN_SYSTEM = "https://takamul.health/fhir/sid/login"


def authorises_caregiver(
    consent: Mapping[str, Any], who: Iterable[str], now: datetime | None = None
) -> bool:
    """An active Consent permitting one of ``who`` (login or client ids) to act for the
    patient: a ``permit`` provision (top level or nested) whose actor's reference carries the
    identifier ``LOGIN_SYSTEM|<id>``, within the provision's ``period`` (and the top level's)
    at ``now``. A recorded legal authority is entered the same way."""
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return False
    names = set(who)
    top = consent.get("provision") or {}
    at = now or datetime.now(UTC)
    if not _in_period(top.get("period"), at):
        return False  # an expired consent authorises nothing, nested permits included
    provisions = [top, *(top.get("provision") or ())]
    for provision in provisions:
        if not isinstance(provision, dict) or provision.get("type") != "permit":
            continue
        if not _in_period(provision.get("period"), at):
            continue
        for actor in provision.get("actor") or ():
            identifier = ((actor or {}).get("reference") or {}).get("identifier") or {}
            if identifier.get("system") == LOGIN_SYSTEM and identifier.get("value") in names:
                return True
    return False


def _in_period(period: Any, at: datetime) -> bool:
    """``at`` lies in a FHIR Period (a date-only bound covers its whole day; no period, or an
    unreadable bound, does not limit)."""
    if not isinstance(period, dict):
        return True
    start, end = _instant(period.get("start"), time.min), _instant(period.get("end"), time.max)
    return (start is None or start <= at) and (end is None or at <= end)


def _instant(value: Any, edge: time) -> datetime | None:
    """A bound as an instant: a partial date (year, year-month, date) at its first moment
    (``time.min``) or its last (``time.max``)."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) <= 10:
            parts = [int(p) for p in value.split("-")]
            year, month, day = [*parts, 0, 0][:3]
            last = edge == time.max
            month = month or (12 if last else 1)
            day = day or (calendar.monthrange(year, month)[1] if last else 1)
            return datetime.combine(date(year, month, day), edge, UTC)
        found = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


# -- the record's restrictions, known per server process ------------------------------------

# ``store_setting`` key of the consent version: a counter raised in the transaction of every
# Consent write (``ConsentRegister.follow``), so that any process can tell in one lookup whether
# a Consent changed since it last read them.
CONSENT_VERSION = "consent_version"
# Patients whose Consents one process keeps between changes (a bound on memory, not on speed:
# past it the register starts again from empty).
MAX_PATIENTS_KEPT = 200_000

# (consent version, newest lastUpdated of a Consent): the second catches writers that call no
# write hooks (a bulk load), whose Consents bump no version
ConsentKey = tuple[str | None, float | None]


# (labels, patients) pairs: the labels that the same patients withhold, and those patients
LabelGroups = tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Withholding:
    """The patients whose consent withholds each label from one facility, as a search's
    consent filter needs them: per label a set (to pick out the few a search is about in time
    that does not grow with the country) and the labels withheld by the same patients grouped,
    with those patients sorted (one SQL clause per group, not per label)."""

    by_label: dict[str, frozenset[str]]
    groups: LabelGroups

    @classmethod
    def of(cls, by_label: Mapping[str, Iterable[str]]) -> Withholding:
        sets = {label: frozenset(patients) for label, patients in by_label.items() if patients}
        return cls(sets, group_labels({label: tuple(sorted(p)) for label, p in sets.items()}))

    def about(self, patients: frozenset[str]) -> LabelGroups:
        """``groups`` for a search whose matches can only be about ``patients``."""
        return group_labels(
            {label: tuple(sorted(patients & withheld)) for label, withheld in self.by_label.items()}
        )


def group_labels(by_label: Mapping[str, tuple[str, ...]]) -> LabelGroups:
    """(labels, patients) for each set of patients that withholds one or more labels: the
    labels withheld by the same patients together, labels and groups in a stable order."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for label, patients in sorted(by_label.items()):
        if patients:
            groups.setdefault(patients, []).append(label)
    return tuple((tuple(labels), patients) for patients, labels in groups.items())


@dataclass(slots=True)
class ConsentState:
    """What the record's Consents said at one consent key: whether any exists, the Consents of
    the patients asked about so far, and (once a search asked) every active restriction."""

    key: ConsentKey
    any_consent: bool
    by_patient: dict[str, list[dict[str, Any]]]
    everyone: list[tuple[str, Restriction]] | None = None
    # facility -> the patients withholding each label from the facility (for searches)
    withheld: dict[str | None, Withholding] = field(default_factory=dict)


class ConsentRegister:
    """The patients' Consents as the record holds them, kept in memory by each server process
    and checked against the record's consent key (one indexed lookup), so a read does not query
    Consents while none has changed.

    A Consent this process writes takes effect on its next request (the write hook drops what
    is kept when the transaction commits). One written by another process changes the key;
    the key is looked up at most every ``recheck`` seconds (``TAKAMUL_CONSENT_RECHECK_MS``,
    default 250 ms), so a request that starts that long after the commit applies it. With
    ``recheck`` 0 the key is looked up by every request and there is no window at all, at the
    price of a database round trip per request."""

    def __init__(
        self, store: Store, recheck: float = 0.25, clock: Callable[[], float] = monotonic
    ) -> None:
        # weakly: the process-wide map of registers must not keep a closed store alive
        self._store = weakref.ref(store)
        self.recheck = recheck
        self.clock = clock
        self._state: ConsentState | None = None
        self._checked = -inf  # when the key was last looked up (``clock``)
        self._following = False
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        store = self._store()
        if store is None:
            raise RuntimeError("the store of this consent register was closed")
        return store

    # -- the write side ------------------------------------------------------------------

    @property
    def following(self) -> bool:
        return self._following

    def follow(self) -> None:
        """Raise the consent version in the transaction of every Consent this process writes
        (a write hook of the store; once per store)."""
        with self._lock:
            if self._following:
                return
            with self.store.writer.connect() as conn, conn.begin():
                exists = conn.execute(
                    select(store_setting.c.key).where(store_setting.c.key == CONSENT_VERSION)
                ).first()
                if exists is None:
                    conn.execute(_insert_ignore(conn.dialect.name, "0"))
            self.store.write_hooks.append(self._written)
            self._following = True

    def _written(self, session: Session, resource_type: str, resource_id: str, body: Any) -> None:
        if resource_type != "Consent":
            return
        raised = session.conn.execute(
            update(store_setting)
            .where(store_setting.c.key == CONSENT_VERSION)
            .values(value=cast(cast(store_setting.c.value, BigInteger) + 1, String(256)))
        ).rowcount
        if not raised:  # the row was removed since start-up: begin counting again
            session.conn.execute(_insert_ignore(session.conn.dialect.name, "1"))
        session.after_commit.append(self.forget)

    def forget(self) -> None:
        """Look the key up again on the next request (a Consent changed)."""
        self._checked = -inf

    # -- the read side -------------------------------------------------------------------

    def current(self) -> ConsentState:
        """The state for a request that starts now: the kept one if the record's consent key
        has not moved (or was looked up less than ``recheck`` seconds ago), else a fresh one
        (its Consents read again as they are asked for)."""
        now = self.clock()
        state = self._state
        if state is not None and 0 <= now - self._checked < self.recheck:
            return state
        with self.store.reading() as session:
            row = session.conn.execute(select(_VERSION, _NEWEST)).one()
            key: ConsentKey = (row[0], None if row[1] is None else float(row[1]))
            if state is not None and state.key == key:
                self._checked = now
                return state
            found = session.conn.execute(
                select(resource.c.rid)
                .where(resource.c.res_type == "Consent", resource.c.deleted.is_(False))
                .limit(1)
            ).first()
        # read after the key: what is kept is never older than the key it is kept under
        state = ConsentState(key, found is not None, {})
        self._state = state
        self._checked = now
        return state

    def consents_of(self, state: ConsentState, patient: str) -> list[dict[str, Any]]:
        """The patient's current Consent resources (one indexed lookup the first time)."""
        if not state.any_consent:
            return []
        kept = state.by_patient.get(patient)
        if kept is not None:
            return kept
        query = select(resource.c.content).where(
            resource.c.res_type == "Consent",
            resource.c.deleted.is_(False),
            resource.c.rid.in_(
                select(sp_reference.c.rid).where(
                    sp_reference.c.res_type == "Consent",
                    sp_reference.c.param == "patient",
                    sp_reference.c.target_type == "Patient",
                    sp_reference.c.target_id == patient,
                )
            ),
        )
        with self.store.reading() as session:
            found = [orjson.loads(r.content) for r in session.conn.execute(query) if r.content]
        if len(state.by_patient) >= MAX_PATIENTS_KEPT:
            state.by_patient.clear()
        state.by_patient[patient] = found
        return found

    def everyone(self, state: ConsentState) -> list[tuple[str, Restriction]]:
        """Every active restriction in the record with its patient (for searches, whose SQL
        leaves out what is withheld), read once per consent key."""
        if not state.any_consent:
            return []
        if state.everyone is not None:
            return state.everyone
        found: list[tuple[str, Restriction]] = []
        with self.store.reading() as session:
            rows = session.conn.execute(
                select(resource.c.content).where(
                    resource.c.res_type == "Consent", resource.c.deleted.is_(False)
                )
            )
            for row in rows:
                consent = orjson.loads(row.content) if row.content else {}
                restriction = restrictions_of(consent)
                reference = str((consent.get("patient") or {}).get("reference") or "")
                if restriction is not None and reference.startswith("Patient/"):
                    found.append((reference.removeprefix("Patient/"), restriction))
        state.everyone = found
        return found


_VERSION = (
    select(store_setting.c.value).where(store_setting.c.key == CONSENT_VERSION).scalar_subquery()
)
# the newest change of a Consent: the end of the (res_type, last_updated) index
_NEWEST = (
    select(func.max(resource.c.last_updated))
    .where(resource.c.res_type == "Consent")
    .scalar_subquery()
)


def _insert_ignore(dialect: str, value: str) -> Any:
    """The version row, unless a concurrent start-up made it first."""
    values = {"key": CONSENT_VERSION, "value": value}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(store_setting).values(**values).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(store_setting).values(**values).on_conflict_do_nothing()


_REGISTERS: weakref.WeakKeyDictionary[Store, ConsentRegister] = weakref.WeakKeyDictionary()
_REGISTERS_LOCK = threading.Lock()


def consent_register(store: Store) -> ConsentRegister:
    """The process's register of ``store``, following its Consent writes from the first call
    (``TAKAMUL_CONSENT_RECHECK_MS``: how often it looks for other processes' Consents)."""
    register = _REGISTERS.get(store)
    if register is not None and register.following:
        return register  # every request's guard asks: no lock once the register follows
    with _REGISTERS_LOCK:
        register = _REGISTERS.get(store)
        if register is None:
            recheck = recheck_seconds(os.environ.get("TAKAMUL_CONSENT_RECHECK_MS"))
            register = _REGISTERS[store] = ConsentRegister(store, recheck)
    register.follow()
    return register


def recheck_seconds(millis: str | None) -> float:
    """``TAKAMUL_CONSENT_RECHECK_MS`` in seconds (default 250 ms; 0: every request)."""
    if millis is None or not millis.strip():
        return 0.25
    try:
        value = float(millis)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"TAKAMUL_CONSENT_RECHECK_MS must be a number of milliseconds >= 0, not '{millis}'"
        )
    return value / 1000
