"""Caregivers' burden screens in the synthetic population (issue 16).

The generator gives every dependent person a caregiver ``RelatedPerson`` (``synth.clinical``):
a parent for a child, the spouse or another adult of the household for an adult with dementia
or a disability. This module screens a share of the caregivers of **adults** with the 12-item
Zarit Burden Interview at the person's home facility, once or twice over the synthetic period:
a ``QuestionnaireResponse`` to the ZBI-12 (items ``zbi12-1`` … ``zbi12-12`` answered 0–4) whose
``subject`` is the Patient cared for and whose ``source`` and ``author`` are the caregiver, as
docs/caregivers.md records a screen. The record scores it (the mental-health hook or its
catch-up after a bulk load) and lists the caregiver in the facility's registry at high burden.

Parents of children are not screened: the ZBI-12 and its cut-off were developed and validated
with caregivers of (mostly older) adults who are cognitively impaired, dependent or seriously
ill (Bédard et al. 2001; Higginson et al. 2010; Gratão et al. 2019), and every child here has a
parent as caregiver, so screening them would measure ordinary parenting with an instrument not
made for it.

Totals follow a gamma distribution with the mean and standard deviation of a representative
sample of family caregivers of people with dementia living at home: Hébert, Bravo and Préville
(Can J Aging 2000;19:494-507, Canadian Study of Health and Aging, 312 caregivers) report a
ZBI-22 mean of 22.4 (SD 16.2) of 88 and a median of 18.5. Scaled to the 12 items (×12/22, the
same mean item score: a modelling assumption), that is a mean of 12.2 and an SD of 8.8; the
gamma with that mean and SD has a median of about 10.2, close to the scaled published median
(10.1), so the skew is the published one too. Caregivers of adults with a disability but no
dementia, rural and poorer households are shifted by modelling assumptions (the config's
``caregiving`` keys; none is a published effect). A second screen moves from the first by a
modelling assumption too.

Everything is drawn from a stream of the person's own (``<seed>/<country>/<index>/caregiving``),
so what the rest of the generator writes is byte for byte as without this module; the ids are
the module's own (``cgqr-``). The truth, ``truth/caregivers.csv``, is the module's own books:
the screens it drew, judged at the published cut-off (13, Gratão et al. 2019), not a reading of
what the record made of them. Only the instrument's structure (canonical, linkIds, answer
scores) is read from ``takamul.mentalhealth.instruments``, so the form written is the form the
record knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from random import Random
from typing import Any

from takamul.mentalhealth.instruments import Instrument, instrument
from takamul.synth.facilities import Network
from takamul.synth.fhir import ref
from takamul.synth.followup import draw_plan
from takamul.synth.people import Person
from takamul.synth.registrations import Record

__all__ = ["CAREGIVER_COLUMNS", "HIGH_BURDEN", "Caregiving", "Watch"]

Emit = Callable[[str, dict[str, Any]], None]

CAREGIVER_COLUMNS = [
    "related_person_id",
    "patient_id",
    "person_id",
    "caregiver_person_id",
    "home_facility",
    "cared_for",
    "screen_dates",
    "totals",
    "latest_total",
    "high_burden",
]
# the published cut-off (Gratão et al., Dement Neuropsychol 2019): the truth does not follow
# TAKAMUL_MH_ZBI12_CUTOFF, so the generator's output never depends on the environment
HIGH_BURDEN = 13
ZBI_MAX = 48


@dataclass(slots=True)
class Watch:
    """Watches what is written for one dependent adult and keeps their caregiver's record."""

    related_person: str = ""
    patient: str = ""  # the Patient record the RelatedPerson cares for

    def watch(self, emit: Emit) -> Emit:
        """``emit`` that notes the person's caregiver RelatedPerson as it passes."""

        def watched(rtype: str, body: dict[str, Any]) -> None:
            if rtype == "RelatedPerson" and not self.related_person:
                self.related_person = str(body["id"])
                self.patient = str(body["patient"]["reference"]).removeprefix("Patient/")
            emit(rtype, body)

        return watched


@dataclass(slots=True)
class _Screens:
    """One caregiver's screens as drawn: the books of truth/caregivers.csv."""

    days: list[date] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)

    def row(self, p: Person, w: Watch, carer: str, facility: str) -> list[str]:
        return [
            w.related_person,
            w.patient,
            p.pid,
            carer,
            facility,
            "dementia" if "dementia" in p.conditions else "disability",
            ";".join(d.isoformat() for d in self.days),
            ";".join(str(t) for t in self.totals),
            str(self.totals[-1]),
            "true" if self.totals[-1] >= HIGH_BURDEN else "false",
        ]


class Caregiving:
    """Draws which caregivers are screened and their answers; one per block generator."""

    def __init__(self, config: dict[str, Any], table: dict[str, Any], network: Network) -> None:
        self.config = config
        self.settings: dict[str, Any] = config["caregiving"]
        self.network = network
        self.end = date.fromisoformat(config["end_date"])
        self.start = self.end - timedelta(days=int(365.25 * config["years"]))
        self.tz = "+03:30" if table["code"] == "IR" else "+03:00"
        self.stream = f"{config['seed']}/{config['country']}"
        self.zbi: Instrument = instrument("zbi-12")

    def watcher(self, p: Person) -> Watch | None:
        """A watch for an adult the generator may give a caregiver, else None."""
        dependent = "dementia" in p.conditions or p.disability
        if not self.settings["enabled"] or p.age < 18 or not dependent or p.died is not None:
            return None
        return Watch()

    def screen(
        self,
        p: Person,
        records: list[Record],
        members: list[Person],
        watch: Watch,
        carer_pid: str,
        emit: Emit,
    ) -> list[list[str]]:
        """Write the caregiver's screens (if any) through ``emit``; their truth row."""
        if not watch.related_person:
            return []  # no adult of the household to care for them
        rng = Random(f"{self.stream}/{p.index}/caregiving")
        if rng.random() >= self.settings["screened"]:
            return []
        home = next((r for r in records if r.patient_id == watch.patient), records[0])
        screens = self._draw(rng, p, self._carer_end(carer_pid, members))
        if screens is None:
            return []
        for n, (day, total) in enumerate(zip(screens.days, screens.totals, strict=True), 1):
            emit("QuestionnaireResponse", self._response(rng, p, watch, n, day, total))
        return [screens.row(p, watch, carer_pid, home.facility.org_id)]

    # -- drawing -------------------------------------------------------------------------------

    def _carer_end(self, carer_pid: str, members: list[Person]) -> date:
        """The last day the caregiver can answer: the day before their death, else end_date.

        The caregiver's death is drawn by their own care-programme plan (its own stream), which
        may not have been drawn yet when the person they care for comes first in the household:
        drawing it here gives the same date the generator gives them."""
        carer = next((m for m in members if m.pid == carer_pid), None)
        if carer is None:
            return self.end
        died = carer.died
        if died is None:
            plan = draw_plan(self.config, self.start, carer, members)
            died = plan.died if plan is not None else None
        return self.end if died is None else min(self.end, died - timedelta(days=1))

    def _draw(self, rng: Random, p: Person, last: date) -> _Screens | None:
        s = self.settings
        lo = max(self.start, p.conditions.get("dementia", self.start))
        if lo > last:
            return None
        first = lo + timedelta(days=int(rng.random() * ((last - lo).days + 1)))
        latent = self._burden(rng, p)
        screens = _Screens([first], [_total(latent)])
        gap_lo, gap_hi = s["second_after_days"]
        second = first + timedelta(days=gap_lo + int(rng.random() * (gap_hi - gap_lo + 1)))
        if rng.random() < s["second_screen"] and second <= last:
            change = rng.normalvariate(s["change"]["mean"], s["change"]["sd"])
            screens.days.append(second)
            screens.totals.append(_total(latent + change))
        return screens

    def _burden(self, rng: Random, p: Person) -> float:
        """The caregiver's burden on the ZBI-12 scale: gamma with the published SD and the
        published mean moved by the person's circumstances (modelling shifts)."""
        s = self.settings
        shift = s["shift"]
        mean = s["mean"] + shift["income"][p.quintile - 1]
        if "dementia" not in p.conditions:
            mean += shift["disability_without_dementia"]
        if not p.urban:
            mean += shift["rural"]
        sd = s["sd"]
        shape, scale = (mean / sd) ** 2, sd * sd / mean
        return rng.gammavariate(shape, scale)

    # -- writing -------------------------------------------------------------------------------

    def _response(
        self, rng: Random, p: Person, w: Watch, n: int, day: date, total: int
    ) -> dict[str, Any]:
        minute = 8 * 60 + int(rng.random() * 9 * 60)
        carer = ref("RelatedPerson", w.related_person)
        return {
            "resourceType": "QuestionnaireResponse",
            "id": f"cgqr-{p.index:07d}-{n}",
            "questionnaire": self.zbi.url,
            "status": "completed",
            "subject": ref("Patient", w.patient),
            "authored": f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00{self.tz}",
            "author": carer,
            "source": carer,
            "item": [
                {"linkId": link, "answer": [{"valueInteger": v}]}
                for link, v in zip(self.zbi.items, self._answers(rng, total), strict=True)
            ],
        }

    def _answers(self, rng: Random, total: int) -> list[int]:
        """Item answers (0 to the top score) summing to ``total``, spread at random."""
        top, items = self.zbi.max_score, len(self.zbi.items)
        values = [0] * items
        left = total
        while left:
            i = int(rng.random() * items)
            if values[i] < top:
                values[i] += 1
                left -= 1
        return values


def _total(burden: float) -> int:
    return max(0, min(ZBI_MAX, round(burden)))
