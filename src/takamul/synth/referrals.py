"""Closed-loop referrals in the synthetic population (issue 16).

For a share of the living persons, a referral along the routes of primary care: from an Iranian
rural health house (the behvarz) to the health centre's GP, from a primary care centre to a
general hospital, a specialist hospital or a mental health centre, and, after a completed
consultation at a hospital, back to primary care (a back-referral). Each referral is a
``ServiceRequest`` with a ``Task`` (focus: the ServiceRequest; requester and owner: the two
facilities' Organizations) whose status followed the state machine of docs/coordination.md
to where it stood on the configuration's ``end_date`` (D).

A bulk load keeps one version per id (the last of a batch wins), so each Task is written once,
as it stood on D: ``authoredOn`` the day it was made, ``lastModified`` the day of its last
status change, ``executionPeriod`` from acceptance to completion. The loop metrics date every
status of that one version by ``lastModified``; so the counts (made, accepted, completed within
30 days, feedback returned) and the days to completion read back exactly, while the days to
acceptance of a referral that went further read as the days to its last change. For the same
reason a referral is cancelled only before it was accepted (a final ``cancelled`` version
cannot show that it had been accepted).

A completed referral without feedback is written ``completed`` with no ``Task.output``: the
appointment took place and the consult note never came back, as a migrated record holds it (a
bulk load is unguarded; through the API the owner could not complete without the feedback).
Rates: completion about 35 % (Patel et al., J Gen Intern Med 2018: 34.8 % of 103,737
primary-care referrals had a documented completed appointment); feedback on a minority of the
completed is a modelling assumption (Barzegari and Abolhasani Shahreza, "Challenges of the
Referral System in Family Medicine Program in Iran: A Scoping Review", Iran J Public Health,
report low reverse-referral rates and poor specialist feedback, without one national rate).

Everything is drawn from a stream of the person's own (``<seed>/<country>/<index>/referrals``),
so what the rest of the generator writes is byte for byte as without this module; the ids are
the module's own (``rfsr-``, ``rftask-``, ``rfdoc-``). The truth, ``truth/referrals.csv``, is
the module's own books: the days it drew, not a reading of what it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from random import Random
from typing import Any

from takamul.synth.facilities import _KINDS, Facility, Network
from takamul.synth.fhir import LOINC, SNOMED, TAKAMUL_CS, cc, ref
from takamul.synth.people import Person
from takamul.synth.registrations import Record
from takamul.synth.sampling import Weighted

__all__ = ["REFERRAL_COLUMNS", "REFERRAL_TYPES", "ReferralMaker"]

Emit = Callable[[str, dict[str, Any]], None]

REFERRAL_COLUMNS = [
    "referral_id",
    "person_id",
    "patient_id",
    "route",
    "type",
    "made",
    "accepted_on",
    "completed_on",
    "feedback",
    "status",
]
REFERRAL_TYPE_SYSTEM = f"{TAKAMUL_CS}/referral-type"
REFERRAL_TYPES = {"consultation": "Referral for consultation", "back-referral": "Back-referral"}
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"
HOSPITALS = ("hospital", "specialist")
# the ServiceRequest's status as the Task left it
_REQUEST_STATUS = {"completed": "completed", "rejected": "revoked", "cancelled": "revoked"}


def facility_label(f: Facility) -> str:
    """The facility type as its ``Organization.type`` text says (what the metrics read)."""
    return _KINDS[f.kind][0]


@dataclass(slots=True)
class _Referral:
    """One referral as the generator drew it: the books of truth/referrals.csv."""

    number: int
    kind: str  # a REFERRAL_TYPES code
    requester: Facility
    owner: Facility
    made: date
    status: str = "requested"
    last: date | None = None  # the day of the last status change
    accepted: date | None = None
    completed: date | None = None
    feedback: bool = False

    def row(self, p: Person, patient_id: str) -> list[str]:
        return [
            f"rftask-{p.index:07d}-{self.number}",
            p.pid,
            patient_id,
            f"{facility_label(self.requester)} → {facility_label(self.owner)}",
            self.kind,
            self.made.isoformat(),
            self.accepted.isoformat() if self.accepted else "",
            self.completed.isoformat() if self.completed else "",
            "true" if self.feedback else "false",
            self.status,
        ]


class ReferralMaker:
    """Draws who is referred, how each referral went, and writes it; one per block generator."""

    def __init__(self, config: dict[str, Any], table: dict[str, Any], network: Network) -> None:
        self.settings: dict[str, Any] = config["referrals"]
        self.network = network
        self.end = date.fromisoformat(config["end_date"])
        self.tz = "+03:30" if table["code"] == "IR" else "+03:00"
        self.stream = f"{config['seed']}/{config['country']}"
        s = self.settings
        self.first_answer = Weighted(list(s["first_answer"]), list(s["first_answer"].values()))
        self.upward = Weighted(list(s["upward"]), list(s["upward"].values()))
        self.fate = Weighted(list(s["after_acceptance"]), list(s["after_acceptance"].values()))

    def refer(self, p: Person, records: list[Record], emit: Emit) -> list[list[str]]:
        """Write the person's referrals (if any) through ``emit``; their truth rows."""
        if not self.settings["enabled"] or p.died is not None:
            return []
        rng = Random(f"{self.stream}/{p.index}/referrals")
        if rng.random() >= self.settings["persons"]:
            return []
        record = next((r for r in records if r.facility is p.home), records[0])
        referrals = self._chain(rng, p)
        for r in referrals:
            self._write(rng, p, record.patient_id, r, emit)
        return [r.row(p, record.patient_id) for r in referrals]

    # -- drawing -------------------------------------------------------------------------------

    def _chain(self, rng: Random, p: Person) -> list[_Referral]:
        """The first referral from the person's home facility, and what a completed one led to:
        from the health centre onward to a hospital, from a hospital back to primary care."""
        window = self.settings["window_days"]
        made = self.end - timedelta(days=int(rng.random() * window))
        home = p.home
        if home.kind == "health_house":
            first = self._referral(rng, 1, "consultation", home, self._pick(rng, p, "phc"), made)
        else:
            kind = self.upward.pick(rng)
            first = self._referral(rng, 1, "consultation", home, self._pick(rng, p, kind), made)
        chain = [first]
        while (nxt := self._next(rng, p, chain[-1], len(chain) + 1)) is not None:
            chain.append(nxt)
        return chain

    def _next(self, rng: Random, p: Person, last: _Referral, number: int) -> _Referral | None:
        s = self.settings
        if last.completed is None:
            return None
        if last.owner.kind in HOSPITALS and last.kind == "consultation":
            if rng.random() >= s["back_referral"]:
                return None
            back_to = p.home if p.home.kind == "phc" else self._primary_care(p)
            kind, requester, owner = "back-referral", last.owner, back_to
        elif last.owner.kind == "phc" and last.kind == "consultation":
            if rng.random() >= s["onward"]:
                return None
            kind, requester, owner = "consultation", last.owner, self._pick(rng, p, "hospital")
        else:
            return None
        made = last.completed + timedelta(days=int(rng.random() * 8))
        if made > self.end:
            return None
        return self._referral(rng, number, kind, requester, owner, made)

    def _primary_care(self, p: Person) -> Facility:
        return self.network.nearest_phc(p.region, p.lat, p.lon)

    def _pick(self, rng: Random, p: Person, kind: str) -> Facility:
        options = self.network.of(p.region, kind) or [
            f for f in self.network.facilities if f.kind == kind
        ]
        return options[int(rng.random() * len(options))]

    def _days(self, rng: Random, key: str) -> int:
        lo, hi = self.settings[key]
        return int(lo + int(rng.random() * (hi - lo + 1)))

    def _referral(
        self, rng: Random, number: int, kind: str, requester: Facility, owner: Facility, made: date
    ) -> _Referral:
        """Draw how the referral went, cut at D: what happened after D has not happened."""
        r = _Referral(number, kind, requester, owner, made, last=made)
        answer = self.first_answer.pick(rng)
        answered = made + timedelta(days=self._days(rng, "accept_days"))
        if answer == "unanswered" or answered > self.end:
            return r
        r.status, r.last = answer, answered
        if answer != "accepted":
            return r  # rejected by the owner, or cancelled by the requester before acceptance
        r.accepted = answered
        fate = self.fate.pick(rng)
        moved = answered + timedelta(days=self._days(rng, "completion_days"))
        if moved > self.end:
            return r  # still accepted on D
        r.status, r.last = fate, moved
        if fate == "completed":
            r.completed = moved
            r.feedback = rng.random() < self.settings["feedback_of_completed"]
        return r

    # -- writing -------------------------------------------------------------------------------

    def _dt(self, rng: Random, day: date) -> str:
        minute = 8 * 60 + int(rng.random() * 9 * 60)
        return f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00{self.tz}"

    def _write(self, rng: Random, p: Person, patient: str, r: _Referral, emit: Emit) -> None:
        suffix = f"{p.index:07d}-{r.number}"
        made = self._dt(rng, r.made)
        requester, owner = (
            ref("Organization", r.requester.org_id),
            ref("Organization", r.owner.org_id),
        )
        emit(
            "ServiceRequest",
            {
                "resourceType": "ServiceRequest",
                "id": f"rfsr-{suffix}",
                "status": _REQUEST_STATUS.get(r.status, "active"),
                "intent": "order",
                "category": [cc(SNOMED, "3457005", "Patient referral")],
                "code": cc(REFERRAL_TYPE_SYSTEM, r.kind, REFERRAL_TYPES[r.kind]),
                "subject": ref("Patient", patient),
                "authoredOn": made,
                "requester": requester,
                "performer": [owner],
            },
        )
        task: dict[str, Any] = {
            "resourceType": "Task",
            "id": f"rftask-{suffix}",
            "status": r.status,
            "intent": "order",
            "code": cc(TASK_CODE_SYSTEM, "fulfill", "Fulfill the focal request"),
            "focus": ref("ServiceRequest", f"rfsr-{suffix}"),
            "for": ref("Patient", patient),
            "authoredOn": made,
            "lastModified": made if r.last == r.made else self._dt(rng, r.last or r.made),
            "requester": requester,
            "owner": owner,
        }
        if r.accepted is not None:
            period = {"start": r.accepted.isoformat()}
            if r.status in ("completed", "failed") and r.last is not None:
                period["end"] = r.last.isoformat()
            task["executionPeriod"] = period
        if r.feedback and r.completed is not None:
            note = f"rfdoc-{suffix}"
            emit("DocumentReference", self._consult_note(rng, note, patient, r))
            task["output"] = [
                {"type": {"text": "Consult note"}, "valueReference": ref("DocumentReference", note)}
            ]
        emit("Task", task)

    def _consult_note(self, rng: Random, rid: str, patient: str, r: _Referral) -> dict[str, Any]:
        assert r.completed is not None
        return {
            "resourceType": "DocumentReference",
            "id": rid,
            "status": "current",
            "type": cc(LOINC, "11488-4", "Consult note"),
            "subject": ref("Patient", patient),
            "date": self._dt(rng, r.completed),
            "author": [ref("Organization", r.owner.org_id)],
            "content": [{"attachment": {"contentType": "text/plain", "title": "Consult note"}}],
        }
