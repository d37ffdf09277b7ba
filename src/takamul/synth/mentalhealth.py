"""Collaborative care for depression and anxiety in the synthetic population (issue 15).

A share of the adults the generator gave depression or anxiety is enrolled in collaborative
care in primary care (an ``EpisodeOfCare`` typed ``collaborative-care``, most with a
``CareTeam`` and its care manager), screened with the PHQ-2, PHQ-9 and GAD-7 as
``QuestionnaireResponse``s answered item by item, and followed at regular contacts (finished
``Encounter``s) along an intended trajectory: remitters, responders, non-responders, drop-outs
(no contact for more than 30 days) and, by the enrolment date, new enrollees. Rural persons are
enrolled less often and drop out more often (the rural treatment gap). For a share of those in
care long enough, a psychiatric consultant's case review (a ``ClinicalImpression``) is written
on one contact's day.

Everything is drawn from a stream of the person's own (``<seed>/<country>/<index>/mental-
health``), so what the generator wrote before this module, in the block's stream or the
programmes' streams, is written byte for byte as before; this module only adds resources, with
ids of its own (``mhenc-``, ``mhqr-``, ``mhobs-``, ``mheoc-``, ``mhct-``, ``mhci-``).

``Books`` watches every resource written for a person with depression or anxiety (the
module's own and those of the rest of the generator: screening questionnaires, diagnoses,
visits) and, as of the configuration's ``end_date``, classifies the person by the registry
rules of docs/mental-health.md into ``truth/mh_registry.csv``. The rules are re-implemented here
on purpose and ``takamul.mentalhealth.registry`` is not imported: the truth must be an
independent reckoning of it. Only the instruments' structure (canonical URLs, linkIds, total
codes, the self-harm item) is read from ``takamul.mentalhealth.instruments``, so the forms
written are the forms the record knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from random import Random
from typing import Any

from takamul.mentalhealth.instruments import MH_SYSTEM, Instrument, instrument, instruments
from takamul.synth.facilities import Network
from takamul.synth.fhir import LOINC, SNOMED, V3_ACT, cc, coding, ref
from takamul.synth.people import Person
from takamul.synth.registrations import Record
from takamul.synth.sampling import Weighted

__all__ = ["MH_COLUMNS", "TRAJECTORIES", "Books", "CollaborativeCare"]

Emit = Callable[[str, dict[str, Any]], None]

MH_COLUMNS = [
    "person_id",
    "enrolment",
    "trajectory",
    "enrolled_on",
    "weeks_in_care",
    "baseline_phq9",
    "latest_phq9",
    "baseline_gad7",
    "latest_gad7",
    "phq9_change_pct",
    "status",
    "needs_psychiatric_review",
    "overdue_contact",
    "safety",
    "last_contact",
]
TRAJECTORIES = ("remitter", "responder", "non-responder", "drop-out")
MOOD = ("depression", "anxiety")

CARE_PROGRAMME = "https://takamul.health/fhir/CodeSystem/care-programme"
REVIEW_SYSTEM = "https://takamul.health/fhir/CodeSystem/collaborative-care"
REVIEW_CODE = "psychiatric-case-review"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
# the registry's rules (docs/mental-health.md, "Collaborative-care registry")
PHQ9_TOTAL, GAD7_TOTAL = "44261-6", "70274-6"
DIAGNOSES_SNOMED = ("35489007", "370143000", "197480006")
DIAGNOSES_ICD10 = ("F32", "F33", "F41")
NEW_DAYS, NOT_IMPROVING_DAYS, OVERDUE_DAYS = 28, 70, 30
_CURRENT = ("planned", "waitlist", "active", "onhold")
_ENDED = ("finished", "cancelled")
_FINAL = ("final", "amended", "corrected")


def _day(value: object) -> str | None:
    """The local calendar date of a FHIR date/dateTime, as written."""
    return value[:10] if isinstance(value, str) and len(value) >= 10 else None


def _days(a: str, b: str) -> int:
    return (date.fromisoformat(b) - date.fromisoformat(a)).days


@dataclass(slots=True)
class _Score:
    day: str
    at: str  # the dateTime text: ties on a day go by it, then by id
    rid: str
    value: int

    def key(self) -> tuple[str, str, str]:
        return (self.day, self.at, self.rid)


@dataclass(slots=True)
class Books:
    """What was written for one person that the registry reads, and their intended course."""

    end: date
    safety_items: dict[str, str]  # questionnaire canonical -> linkId of its self-harm item
    trajectory: str = ""
    diagnoses: list[str] = field(default_factory=list)  # recorded dates
    condition_ids: dict[str, str] = field(default_factory=dict)  # mood condition -> id
    episodes: list[tuple[str, str, str]] = field(default_factory=list)  # (start, status, end)
    scores: dict[str, list[_Score]] = field(default_factory=dict)  # total code -> scores
    encounters: list[str] = field(default_factory=list)  # finished, local start dates
    flags: list[str] = field(default_factory=list)  # dates of positive self-harm answers
    reviews: list[str] = field(default_factory=list)  # psychiatric case reviews' dates

    def watch(self, emit: Emit) -> Emit:
        """``emit`` that keeps the books of what passes through it first."""

        def watched(rtype: str, body: dict[str, Any]) -> None:
            self.note(rtype, body)
            emit(rtype, body)

        return watched

    def note(self, rtype: str, body: dict[str, Any]) -> None:
        if rtype == "Observation":
            self._observation(body)
        elif rtype == "Encounter" and body.get("status") == "finished":
            day = _day((body.get("period") or {}).get("start"))
            if day:
                self.encounters.append(day)
        elif rtype == "QuestionnaireResponse":
            self._response(body)
        elif rtype == "Condition":
            self._condition(body)
        elif rtype == "EpisodeOfCare":
            period = body.get("period") or {}
            self.episodes.append((period["start"], body["status"], period.get("end", "")))
        elif rtype == "ClinicalImpression" and body.get("status") == "completed":
            code = body["code"]["coding"][0]
            day = _day(body.get("effectiveDateTime") or body.get("date"))
            if (code["system"], code["code"]) == (REVIEW_SYSTEM, REVIEW_CODE) and day:
                self.reviews.append(day)

    def _observation(self, body: dict[str, Any]) -> None:
        code = body["code"]["coding"][0]
        value = body.get("valueInteger")
        if code["system"] != LOINC or code["code"] not in (PHQ9_TOTAL, GAD7_TOTAL):
            return
        at = body.get("effectiveDateTime")
        day = _day(at)
        if body.get("status") in _FINAL and day and isinstance(value, int):
            score = _Score(day, str(at), body["id"], value)
            self.scores.setdefault(code["code"], []).append(score)

    def _response(self, body: dict[str, Any]) -> None:
        item = self.safety_items.get(str(body.get("questionnaire", "")).split("|")[0])
        if item is None or body.get("status") == "entered-in-error":
            return
        for answer_item in body.get("item") or ():
            if answer_item.get("linkId") != item:
                continue
            values = [a.get("valueInteger", 0) for a in answer_item.get("answer") or ()]
            day = _day(body.get("authored"))
            if day and any(v >= 1 for v in values):
                self.flags.append(day)  # the record raises an active suicide-risk Flag

    def _condition(self, body: dict[str, Any]) -> None:
        mood = False
        for c in body["code"]["coding"]:
            if c["system"] == SNOMED and c["code"] in DIAGNOSES_SNOMED:
                mood = True
            if c["system"].startswith("http://hl7.org/fhir/sid/icd-10") and str(
                c["code"]
            ).upper().startswith(DIAGNOSES_ICD10):
                mood = True
        verification = {c["code"] for c in body["verificationStatus"]["coding"]}
        if mood and not verification & {"refuted", "entered-in-error"}:
            self.diagnoses.append(_day(body.get("recordedDate") or body.get("onsetDateTime")) or "")
            name = "depression" if body["code"]["coding"][0]["code"] == "35489007" else "anxiety"
            self.condition_ids.setdefault(name, body["id"])

    # -- the registry as of end_date ------------------------------------------------------------

    def row(self, person_id: str) -> list[str] | None:
        """The person's row of ``truth/mh_registry.csv``, None when not in the registry."""
        d = self.end.isoformat()
        started = [e for e in self.episodes if e[0][:10] <= d]
        current = [e for e in started if e[1] in _CURRENT or (e[1] in _ENDED and e[2][:10] > d)]
        scores = {
            k: sorted((s for s in v if s.day <= d), key=_Score.key) for k, v in self.scores.items()
        }
        enrolled: str | None
        if current:
            enrolment, enrolled = "episode", min(e[0][:10] for e in current)
        elif started or not any(r <= d for r in self.diagnoses):
            return None  # discharged by D (not re-enrolled by a diagnosis), or not diagnosed
        else:
            positive = [s for v in scores.values() for s in v if s.value >= 10]
            if not positive:
                return None
            enrolment, enrolled = "diagnosis-and-score", min(positive, key=_Score.key).day
        phq9 = [s for s in scores.get(PHQ9_TOTAL, []) if s.day >= enrolled]
        gad7 = [s for s in scores.get(GAD7_TOTAL, []) if s.day >= enrolled]
        status = self._status(_days(enrolled, d), phq9, gad7)
        encounters = [e for e in self.encounters if enrolled <= e <= d]
        last = max([s.day for s in phq9 + gad7] + encounters, default="")
        flags = [f for f in self.flags if f <= d]
        review = max((r for r in self.reviews if r <= d), default="")
        latest = max((s.day for s in phq9 + gad7), default="")
        # a review that saw the latest score takes a not-improving person off the queue; a
        # flag raised after the last review puts them back
        unseen = review == "" or review < latest
        unreviewed = any(f > review for f in flags)
        return [
            person_id,
            enrolment,
            self.trajectory if enrolment == "episode" else "",
            enrolled,
            str(_days(enrolled, d) // 7),
            str(phq9[0].value) if phq9 else "",
            str(phq9[-1].value) if phq9 else "",
            str(gad7[0].value) if gad7 else "",
            str(gad7[-1].value) if gad7 else "",
            _change(phq9),
            status,
            _flag((status == "not-improving" and unseen) or unreviewed),
            _flag(_days(last or enrolled, d) > OVERDUE_DAYS),
            _flag(bool(flags)),
            last,
        ]

    @staticmethod
    def _status(days: int, phq9: list[_Score], gad7: list[_Score]) -> str:
        primary = phq9 or gad7
        latest = [v[-1].value for v in (phq9, gad7) if v]
        if days < NEW_DAYS:
            return "new"
        if latest and all(v < 5 for v in latest):
            return "remission"
        if len(primary) > 1 and primary[0].value > 0 and 2 * primary[-1].value <= primary[0].value:
            return "response"
        return "not-improving" if days >= NOT_IMPROVING_DAYS else "improving"


def _change(scores: list[_Score]) -> str:
    if not scores or scores[0].value == 0:
        return ""
    pct = round((scores[-1].value - scores[0].value) * 100 / scores[0].value, 1)
    return f"{pct:g}"


def _flag(value: bool) -> str:
    return "true" if value else "false"


# -- the care ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Course:
    """One enrolled person's intended course."""

    trajectory: str
    enrolled: date
    interval: int  # days between contacts
    last_contact: date  # no contact after it (drop-outs stop early)
    weeks_to_target: float
    discharged: date | None = None


class CollaborativeCare:
    """Draws who is enrolled and writes their collaborative care; one per block generator."""

    def __init__(self, config: dict[str, Any], table: dict[str, Any], network: Network) -> None:
        self.config = config
        self.network = network
        self.settings: dict[str, Any] = config["mental_health"]
        self.end = date.fromisoformat(config["end_date"])
        self.start = self.end - timedelta(days=int(365.25 * config["years"]))
        self.tz = "+03:30" if table["code"] == "IR" else "+03:00"
        self.stream = f"{config['seed']}/{config['country']}"
        self.phq2, self.phq9, self.gad7 = (
            instrument("phq-2"),
            instrument("phq-9"),
            instrument("gad-7"),
        )
        self.safety_items = {
            canonical: inst.safety_item
            for inst in instruments()
            if inst.safety_item
            for canonical in inst.canonicals()
        }

    def books(self, p: Person) -> Books | None:
        """Books for a person the registry could list (a depression or anxiety), else None."""
        if not self.settings["enabled"] or not any(k in p.conditions for k in MOOD):
            return None
        return Books(self.end, self.safety_items)

    def care(
        self, p: Person, records: list[Record], books: Books, registered: bool, emit: Emit
    ) -> None:
        """Enrol the person (or not) and write their collaborative care through ``emit``.

        A person followed by a care programme (``registered``) is not enrolled: their every
        contact is in the programme's books (truth/programme_status.csv), which this module
        must not change."""
        rng = Random(f"{self.stream}/{p.index}/mental-health")
        course = self._course(rng, p, registered)
        if course is None:
            return
        books.trajectory = course.trajectory
        _Writer(self, rng, p, records[0], books, emit).run(course)

    def _course(self, rng: Random, p: Person, registered: bool) -> _Course | None:
        s = self.settings
        onset = min(p.conditions[k] for k in MOOD if k in p.conditions)
        earliest = max(onset, self.end - timedelta(days=s["enrolment_window_days"]))
        share = s["enrolment"] * (1.0 if p.urban else s["rural_enrolment_rr"])
        if registered or p.died is not None or p.age < 18 or earliest > self.end:
            return None
        if rng.random() >= share:
            return None
        enrolled = earliest + timedelta(days=int(rng.random() * ((self.end - earliest).days + 1)))
        weights = dict(s["trajectories"])
        if not p.urban:
            weights["drop-out"] *= s["rural_drop_out_rr"]
        trajectory = Weighted(list(weights), list(weights.values())).pick(rng)
        lo, hi = s["contact_days"]
        interval = lo + int(rng.random() * (hi - lo + 1))
        last = self.end
        if trajectory == "drop-out":
            # the last contact at least two weeks into care and more than 30 days before D
            latest = self.end - timedelta(days=OVERDUE_DAYS + 1)
            first = enrolled + timedelta(days=14)
            if first > latest:
                trajectory = "non-responder"  # too recent to have dropped out
            else:
                last = first + timedelta(days=int(rng.random() * ((latest - first).days + 1)))
        weeks = s["weeks_to_target"][0] + rng.random() * (
            s["weeks_to_target"][1] - s["weeks_to_target"][0]
        )
        course = _Course(trajectory, enrolled, interval, last, weeks)
        reached = enrolled + timedelta(weeks=weeks)
        room = reached + timedelta(days=interval) < self.end
        if trajectory == "remitter" and room and rng.random() < s["discharged_after_remission"]:
            course.last_contact = reached + timedelta(days=interval)
            course.discharged = course.last_contact
        return course


class _Writer:
    """Writes one enrolled person's episode, care team, contacts and forms."""

    def __init__(
        self,
        care: CollaborativeCare,
        rng: Random,
        p: Person,
        home: Record,
        books: Books,
        emit: Emit,
    ) -> None:
        self.c, self.rng, self.p, self.home, self.books = care, rng, p, home, books
        self.emit = books.watch(emit)
        self.n = 0
        self.manager: str | None = None
        self.baseline: dict[str, int] = {}
        self.scores: list[tuple[date, str]] = []  # (day, score Observation id) written so far

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"mh{prefix}-{self.p.index:07d}-{self.n}"

    def _dt(self, day: date) -> str:
        minute = 8 * 60 + int(self.rng.random() * 9 * 60)
        return f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00{self.c.tz}"

    def run(self, course: _Course) -> None:
        s = self.c.settings
        facility = self.home.facility
        if self.rng.random() < s["care_manager"]:
            self.manager = facility.role(
                "chw" if facility.kind == "health_house" else "nurse", self.rng
            )
        self._episode(course)
        day, k = course.enrolled, 0
        contacts = []
        while day <= min(course.last_contact, self.c.end):
            self._contact(course, day, k)
            contacts.append(day)
            k += 1
            jitter = int(self.rng.random() * 5) - 2
            day = course.enrolled + timedelta(days=k * course.interval + jitter)
        # the consultant reviews the case on one contact's day from week 8 on: on the last
        # one the review has seen the latest score, on an earlier one it has not
        later = [c for c in contacts if (c - course.enrolled).days >= 56]
        if later and self.rng.random() < s["case_review"]:
            self._review(later[int(self.rng.random() * len(later))])

    def _review(self, day: date) -> None:
        p, rng = self.p, self.rng
        network = self.c.network
        centres = network.of(p.region, "mental_health") or [
            f for f in network.facilities if f.kind == "mental_health"
        ]
        consultant = centres[int(rng.random() * len(centres))].role("psychiatrist", rng)
        at = f"{day.isoformat()}T18:00:00{self.c.tz}"  # after the day's contact
        body: dict[str, Any] = {
            "resourceType": "ClinicalImpression",
            "id": self._id("ci"),
            "status": "completed",
            "code": cc(REVIEW_SYSTEM, REVIEW_CODE, "Psychiatric case review"),
            "subject": ref("Patient", self.home.patient_id),
            "effectiveDateTime": at,
            "date": at,
            "summary": "Case reviewed with the care manager; treatment plan adjusted.",
            "investigation": [
                {
                    "code": {"text": "PHQ-9 and GAD-7 scores reviewed"},
                    "item": [ref("Observation", oid) for d, oid in self.scores if d <= day],
                }
            ],
        }
        if consultant:
            body["assessor"] = ref("PractitionerRole", consultant)
        problems = [ref("Condition", cid) for _, cid in sorted(self.books.condition_ids.items())]
        if problems:
            body["problem"] = problems
        self.emit("ClinicalImpression", body)

    def _episode(self, course: _Course) -> None:
        home, p = self.home, self.p
        org = ref("Organization", home.facility.org_id)
        episode: dict[str, Any] = {
            "resourceType": "EpisodeOfCare",
            "id": self._id("eoc"),
            "status": "finished" if course.discharged else "active",
            "type": [cc(CARE_PROGRAMME, "collaborative-care", "Collaborative care")],
            "diagnosis": [
                {"condition": ref("Condition", cid)}
                for name, cid in sorted(self.books.condition_ids.items())
                if name in p.conditions
            ],
            "patient": ref("Patient", home.patient_id),
            "managingOrganization": org,
            "period": {"start": course.enrolled.isoformat()},
        }
        if course.discharged:
            episode["period"]["end"] = course.discharged.isoformat()
        if not episode["diagnosis"]:
            del episode["diagnosis"]
        if self.manager:
            team = self._id("ct")
            self.emit(
                "CareTeam",
                {
                    "resourceType": "CareTeam",
                    "id": team,
                    "status": "inactive" if course.discharged else "active",
                    "category": [cc(MH_SYSTEM, "care-team", "Mental health care team")],
                    "name": "Collaborative care team",
                    "subject": ref("Patient", home.patient_id),
                    "period": {"start": course.enrolled.isoformat()},
                    "participant": [
                        {
                            "role": [cc(MH_SYSTEM, "care-manager", "Care manager")],
                            "member": ref("PractitionerRole", self.manager),
                        }
                    ],
                    "managingOrganization": [org],
                },
            )
            episode["careManager"] = ref("PractitionerRole", self.manager)
            episode["team"] = [ref("CareTeam", team)]
        self.emit("EpisodeOfCare", episode)

    def _contact(self, course: _Course, day: date, k: int) -> None:
        home = self.home
        eid = self._id("enc")
        start = self._dt(day)
        body: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": coding(V3_ACT, "AMB", "ambulatory"),
            "type": [cc(SNOMED, "390906007", "Follow-up encounter")],
            "subject": ref("Patient", home.patient_id),
            "period": {"start": start, "end": start},
            "location": [{"location": ref("Location", home.facility.loc_id)}],
            "serviceProvider": ref("Organization", home.facility.org_id),
        }
        if self.manager:
            body["participant"] = [{"individual": ref("PractitionerRole", self.manager)}]
        self.emit("Encounter", body)
        weeks = (day - course.enrolled).days / 7
        if "depression" in self.p.conditions:
            total = self._value(course, "phq9", weeks, 24)
            items = self._phq9_items(total)
            if k == 0:
                self._form(self.c.phq2, items[:2], start, eid, day)
            self._form(self.c.phq9, items, start, eid, day)
        if "anxiety" in self.p.conditions:
            total = self._value(course, "gad7", weeks, 21)
            self._form(self.c.gad7, self._spread(total, 7), start, eid, day)

    # -- scores --------------------------------------------------------------------------------

    def _value(self, course: _Course, key: str, weeks: float, top: int) -> int:
        """The score on a course's path: from the baseline towards the trajectory's target."""
        rng = self.rng
        if key not in self.baseline:
            self.baseline[key] = 10 + int(rng.random() * (top - 10 + 1))
            return self.baseline[key]
        b = self.baseline[key]
        if course.trajectory == "remitter":
            target = int(rng.random() * 5)  # below 5
        elif course.trajectory == "responder":
            target = max(5, b // 2 - int(rng.random() * 3))  # at most half, not remission
        elif course.trajectory == "non-responder":
            target = b // 2 + 1 + int(rng.random() * (b - b // 2))  # more than half
        else:
            target = round(b * (0.6 + rng.random() * 0.4))  # drop-outs improve a little
        share = min(1.0, weeks / course.weeks_to_target)
        value = round(b + (target - b) * share)
        if share < 1.0:
            value += int(rng.random() * 3) - 1  # week-to-week noise on the way
        return max(0, min(top, value))

    def _phq9_items(self, total: int) -> list[int]:
        """PHQ-9 answers summing to ``total``; item 9 positive at the settings' rate at
        enrolment, then in proportion to the score (thoughts of self-harm fade as the
        depression lifts)."""
        s, rng = self.c.settings, self.rng
        item9 = 0
        chance = s["item9_positive_baseline"] * min(1.0, total / self.baseline["phq9"])
        if total >= 5 and rng.random() < chance:
            item9 = Weighted([1, 2, 3], s["item9_value_weights"]).pick(rng)
        item9 = min(item9, total, 3)
        item9 = max(item9, total - 24)  # eight items hold at most 24
        return [*self._spread(total - item9, 8), item9]

    def _spread(self, total: int, n: int) -> list[int]:
        values = [0] * n
        left = total
        while left:
            i = int(self.rng.random() * n)
            if values[i] < 3:
                values[i] += 1
                left -= 1
        return values

    def _form(
        self, inst: Instrument, values: list[int], at: str, encounter: str, day: date
    ) -> None:
        """The response, item by item, and its total-score Observation as scoring on write
        makes it (the record's catch-up finds it and writes no second one)."""
        subject = ref("Patient", self.home.patient_id)
        qid = self._id("qr")
        total = sum(values)
        self.emit(
            "QuestionnaireResponse",
            {
                "resourceType": "QuestionnaireResponse",
                "id": qid,
                "questionnaire": inst.url,
                "status": "completed",
                "subject": subject,
                "encounter": ref("Encounter", encounter),
                "authored": at,
                "item": [
                    {"linkId": link, "answer": [{"valueInteger": v}]}
                    for link, v in zip(inst.items, values, strict=True)
                ],
            },
        )
        band = inst.band(total)
        oid = self._id("obs")
        self.scores.append((day, oid))
        self.emit(
            "Observation",
            {
                "resourceType": "Observation",
                "id": oid,
                "status": "final",
                "category": [cc(OBS_CAT, "survey", "Survey")],
                "code": {"coding": [dict(inst.total_coding)], "text": f"{inst.title} total score"},
                "subject": subject,
                "encounter": ref("Encounter", encounter),
                "effectiveDateTime": at,
                "valueInteger": total,
                "interpretation": [
                    cc(MH_SYSTEM, f"{inst.id}-{band.code}", f"{inst.title} {band.display}")
                ],
                "derivedFrom": [ref("QuestionnaireResponse", qid)],
            },
        )
