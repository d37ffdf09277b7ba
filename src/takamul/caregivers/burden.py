"""A caregiver's ZBI-12 burden screen and the support referral a high burden makes.

Shape of the screen (see ``docs/caregivers.md``): a ``QuestionnaireResponse`` to the ZBI-12 whose
``subject`` is the Patient cared for and whose ``source`` (and ``author``) is the caregiver, a
``RelatedPerson``. The score is the mental-health hook's: ``takamul.mentalhealth`` scores every
response on write and stores the total Observation; this module judges the same score (the
same pure function, ``score_response``) against the instrument's cut-off and, at high burden,
writes a support referral in the same transaction. A response whose ``subject`` is the
RelatedPerson is read too (the patient is then ``RelatedPerson.patient``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select

from takamul.fhir.outcome import FhirError
from takamul.mentalhealth.instruments import Instrument, instrument
from takamul.mentalhealth.safety import find_all, psy_meta
from takamul.mentalhealth.scoring import Score, derived_id, identify, score_response
from takamul.mentalhealth.service import mh_state
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store
from takamul.store.schema import resource_version

__all__ = [
    "CAREGIVER_SYSTEM",
    "OPEN",
    "SOCIAL_SERVICE",
    "SUPPORT_CODE",
    "Burden",
    "Caregivers",
    "caregiver_of",
    "cutoff",
    "referrals_of",
    "support_referral",
]

log = logging.getLogger("takamul.caregivers")

ZBI = "zbi-12"
RESPONSE = "QuestionnaireResponse"
# our own code for the service: no SNOMED CT or LOINC concept for "caregiver support" has been
# verified here, so none is asserted (as for the ZBI-12 total code)
CAREGIVER_SYSTEM = "https://takamul.health/fhir/CodeSystem/caregivers"
SUPPORT_CODE = "caregiver-support"
# SNOMED CT 410606002 |Social service procedure (procedure)|, a category of the US Core
# ServiceRequest Category value set (hl7.org/fhir/us/core/ValueSet-us-core-servicerequest-category)
SOCIAL_SERVICE = {
    "system": "http://snomed.info/sct",
    "code": "410606002",
    "display": "Social service procedure (procedure)",
}
# a referral still to be acted on: another high score does not make a second one
OPEN = ("draft", "active", "on-hold")


def zbi12() -> Instrument:
    return instrument(ZBI)


def cutoff() -> int:
    """The high-burden cut-off: the lower bound of the ZBI-12's positive band (13, Higginson et
    al. 2010; moved by ``TAKAMUL_MH_ZBI12_CUTOFF``), so the score Observation's interpretation
    and the referral never disagree."""
    return zbi12().bands[-1].min


def _ref_id(ref: Any, resource_type: str) -> str | None:
    text = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(text, str) or not text.startswith(resource_type + "/"):
        return None
    return text[len(resource_type) + 1 :].split("/", 1)[0] or None


def caregiver_of(response: Mapping[str, Any]) -> str | None:
    """The RelatedPerson who answered: ``source``, else ``author``, else ``subject``."""
    for key in ("source", "author", "subject"):
        found = _ref_id(response.get(key), "RelatedPerson")
        if found:
            return found
    return None


def _read(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = session.read(resource_type, resource_id).json()
    except FhirError:  # a response may name a resource not (yet) stored
        return None
    return body


def patient_of(session: Session, response: Mapping[str, Any], caregiver: str) -> str | None:
    """The Patient cared for: the response's subject, else the caregiver's ``patient``."""
    direct = _ref_id(response.get("subject"), "Patient")
    if direct:
        return direct
    related = _read(session, "RelatedPerson", caregiver)
    return _ref_id((related or {}).get("patient"), "Patient")


@dataclass(frozen=True, slots=True)
class Burden:
    """A scored ZBI-12 of one caregiver for one patient."""

    response_id: str
    caregiver: str  # RelatedPerson id
    patient: str  # Patient id
    total: int
    cutoff: int

    @property
    def high(self) -> bool:
        return self.total >= self.cutoff


def referrals_of(session: Session, patient: str, caregiver: str) -> list[dict[str, Any]]:
    """The caregiver-support referrals made for ``caregiver`` of ``patient``, any status."""
    found = find_all(
        session,
        "ServiceRequest",
        [("subject", f"Patient/{patient}"), ("code", f"{CAREGIVER_SYSTEM}|{SUPPORT_CODE}")],
    )
    mine = f"RelatedPerson/{caregiver}"
    return [
        r
        for r in found
        if any(
            isinstance(s, dict) and s.get("reference") == mine
            for s in r.get("supportingInfo") or ()
        )
    ]


def _facility(session: Session, patient: str) -> str | None:
    body = _read(session, "Patient", patient)
    return _ref_id((body or {}).get("managingOrganization"), "Organization")


def support_referral(
    burden: Burden, response: Mapping[str, Any], facility: str | None, number: int
) -> dict[str, Any]:
    """The proposal of support for the caregiver, requested by the patient's facility.

    ``status`` active, ``intent`` proposal: the record proposes it and the facility's team
    decides with the caregiver whether and where to refer (their order is a new request
    ``basedOn`` this one). ``subject`` is the Patient because R4 allows no RelatedPerson there;
    the caregiver is named in ``supportingInfo`` with the response."""
    authored = response.get("authored")
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        # deterministic per caregiver, patient and round: two transactions that both find none
        # open write versions of one resource instead of two referrals
        "id": derived_id("cgs", f"{burden.caregiver}-{burden.patient}-{number}"),
        "meta": psy_meta(),
        "status": "active",
        "intent": "proposal",
        "category": [{"coding": [dict(SOCIAL_SERVICE)]}],
        "code": {
            "coding": [
                {"system": CAREGIVER_SYSTEM, "code": SUPPORT_CODE, "display": "Caregiver support"}
            ],
            "text": "Support for the caregiver",
        },
        "subject": {"reference": f"Patient/{burden.patient}"},
        "authoredOn": authored
        if isinstance(authored, str)
        else datetime.now(UTC).isoformat(timespec="seconds"),
        "reasonCode": [
            {
                "text": f"ZBI-12 total {burden.total} at or above the high-burden cut-off "
                f"{burden.cutoff}"
            }
        ],
        "supportingInfo": [
            {"reference": f"RelatedPerson/{burden.caregiver}"},
            {"reference": f"{RESPONSE}/{burden.response_id}"},
        ],
    }
    if facility:
        body["requester"] = {"reference": f"Organization/{facility}"}
    return body


MARK = "caregivers-seq"  # how far the catch-up has read the record's changes
CATCH_UP_BATCH = 500


class Caregivers:
    """Attach once at start-up, after ``MentalHealth`` (which stores the score)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hooked = False

    def attach(self) -> int:
        """Follow writes, and catch up on responses stored without hooks (a bulk load).
        Returns the number of responses the catch-up looked at."""
        if not self._hooked:
            self.store.write_hooks.append(self._on_write)
            self._hooked = True
        return self.catch_up()

    def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Judge every response version stored since the last pass (``mh_state`` key
        ``caregivers-seq``): a bulk-loaded caregiver's ZBI-12 at high burden gets its support
        proposal as one written through the API would. ``process`` finds a proposal already
        made, so a response the hook saw is not proposed twice. ``progress``: called with the
        number of responses looked at so far, after each batch."""
        with self.store.reader.connect() as conn:
            mark = int(
                conn.execute(select(mh_state.c.value).where(mh_state.c.key == MARK)).scalar() or 0
            )
            end = int(conn.execute(select(func.max(resource_version.c.seq))).scalar() or 0)
            ids = sorted(
                {
                    r.res_id
                    for r in conn.execute(
                        select(resource_version.c.res_id).where(
                            resource_version.c.seq > mark,
                            resource_version.c.seq <= end,
                            resource_version.c.res_type == RESPONSE,
                        )
                    )
                }
            )
        for start in range(0, len(ids), CATCH_UP_BATCH):
            chunk = ids[start : start + CATCH_UP_BATCH]

            def work(session: Session, chunk: list[str] = chunk) -> None:
                for response_id, body in session.current_many(RESPONSE, chunk).items():
                    self.process(session, response_id, body)

            with unguarded():
                self.store.write(work)
            if progress is not None:
                progress(start + len(chunk))
        if end > mark:
            with self.store.writer.begin() as conn:
                conn.execute(delete(mh_state).where(mh_state.c.key == MARK))
                conn.execute(insert(mh_state), [{"key": MARK, "value": str(end)}])
        return len(ids)

    def _on_write(
        self, session: Session, resource_type: str, resource_id: str, body: dict[str, Any] | None
    ) -> None:
        if resource_type == RESPONSE and body is not None:
            with unguarded():
                self.process(session, resource_id, body)

    def process(
        self, session: Session, response_id: str, response: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Judge one stored response; at high burden, the open support referral (made now if
        there was none). None when it is no scored caregiver ZBI-12 at high burden."""
        burden = self.burden(session, response_id, response)
        if burden is None or not burden.high:
            return None
        made = referrals_of(session, burden.patient, burden.caregiver)
        open_ = [r for r in made if r.get("status") in OPEN]
        if open_:
            return open_[0]
        referral = support_referral(
            burden, response, _facility(session, burden.patient), len(made) + 1
        )
        session.update("ServiceRequest", referral["id"], referral)
        return referral

    def burden(
        self, session: Session, response_id: str, response: Mapping[str, Any]
    ) -> Burden | None:
        inst = identify(response)
        if inst is None or inst.id != ZBI or response.get("status") == "entered-in-error":
            return None
        score: Score | None = score_response(response, inst)
        if score is None or score.total is None:  # the instrument's rule: every item answered
            return None
        caregiver = caregiver_of(response)
        if caregiver is None:
            log.info("%s/%s: a ZBI-12 without a RelatedPerson source", RESPONSE, response_id)
            return None
        patient = patient_of(session, response, caregiver)
        if patient is None:
            log.info("%s/%s: no Patient cared for is known", RESPONSE, response_id)
            return None
        return Burden(response_id, caregiver, patient, score.total, cutoff())
