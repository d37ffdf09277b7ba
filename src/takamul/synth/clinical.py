"""Clinical history over the years for one person: encounters, conditions, observations,
questionnaires, immunizations, screening, medications, referrals, care plans and caregivers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from random import Random
from typing import Any

from takamul.synth import tables
from takamul.synth.facilities import Network
from takamul.synth.fhir import (
    ATC,
    COND_CAT,
    COND_CLIN,
    COND_VER,
    CVX,
    ICD10,
    LANG_EXT,
    LOINC,
    OBS_CAT,
    SNOMED,
    UCUM,
    V3_ACT,
    V3_ROLE,
    cc,
    coding,
    ext,
    ref,
)
from takamul.synth.followup import Plan, draw_plan, minus_months
from takamul.synth.people import Person
from takamul.synth.registrations import Record
from takamul.synth.sampling import poisson

__all__ = ["Clinic", "Outcome"]

Emit = Callable[[str, dict[str, Any]], None]
Outcome = dict[str, str]  # truth columns about the care a person received

_CHRONIC = (
    "diabetes",
    "hypertension",
    "ckd",
    "asthma",
    "copd",
    "depression",
    "anxiety",
    "dementia",
)
_POSITIVE = ("10828004", "Positive")
_NEGATIVE = ("260385009", "Negative")
_CHILD_RELATION = {"female": ("MTH", "mother"), "male": ("FTH", "father")}


class Clinic:
    def __init__(self, config: dict[str, Any], table: dict[str, Any], network: Network) -> None:
        self.config = config
        self.care = config["care"]
        self.ineq = config["inequities"]
        self.table = table
        self.codes = tables.clinical()
        self.network = network
        self.end = date.fromisoformat(config["end_date"])
        self.start = self.end - timedelta(days=int(365.25 * config["years"]))
        self.tz = "+03:30" if table["code"] == "IR" else "+03:00"
        self.lang = table["language"]
        self.fertility = table["fertility_by_age"]
        self.schedule: list[dict[str, Any]] = table["screening_schedule"]
        self.stream = f"{config['seed']}/{config['country']}"

    # -- the per-person pass --------------------------------------------------------------

    def plan(self, p: Person, household: list[Person]) -> Plan | None:
        """The care-programme plan of a registered person, drawn before the Patient records are
        written because a death shows on every one of them."""
        plan = draw_plan(self.config, self.start, p, household)
        if plan is not None and plan.died is not None:
            p.died = plan.died
        return plan

    def history(
        self,
        rng: Random,
        p: Person,
        records: list[Record],
        household: list[Person],
        emit: Emit,
        plan: Plan | None = None,
    ) -> Outcome:
        h = _History(self, rng, p, records, emit, plan)
        return h.run(household)


class _History:
    """One person's history; holds the id counter and the records to write against."""

    def __init__(
        self,
        clinic: Clinic,
        rng: Random,
        p: Person,
        records: list[Record],
        emit: Emit,
        plan: Plan | None = None,
    ) -> None:
        self.c, self.rng, self.p = clinic, rng, p
        self.plan = plan
        self.muted = False  # a dead person's screening truth is blank, so none is written
        self._write = emit
        self.emit: Emit = self._gated if plan is not None else emit
        self.records = records
        self.home = records[0]
        self.n = 0
        self.out: Outcome = {"screened": "", "diabetes_controlled": "", "mh_treated": ""}
        self.condition_ids: dict[str, str] = {}
        self.controlled = True

    # -- helpers ------------------------------------------------------------------------------

    def _gated(self, rtype: str, body: dict[str, Any]) -> None:
        """A registered person's resources pass their plan (which keeps the books) first."""
        assert self.plan is not None
        if not self.muted and self.plan.accept(rtype, body):
            self._write(rtype, body)

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.p.index:07d}-{self.n}"

    def _at(self, kind: str) -> Record:
        for r in self.records:
            if r.facility.kind == kind:
                return r
        return self.home

    def _day(self, lo: date, hi: date) -> date:
        span = (hi - lo).days
        return lo + timedelta(days=int(self.rng.random() * (span + 1))) if span > 0 else lo

    def _dt(self, day: date) -> str:
        minute = 8 * 60 + int(self.rng.random() * 9 * 60)
        return f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00{self.c.tz}"

    def _subject(self, rec: Record) -> dict[str, str]:
        return ref("Patient", rec.patient_id)

    def encounter(
        self, rec: Record, day: date, code: str, display: str, klass: str = "AMB", days: int = 0
    ) -> str:
        eid = self._id("enc")
        start = self._dt(day)
        end = start if days == 0 else self._dt(day + timedelta(days=days))
        if days == 0:
            end = start[:11] + f"{min(int(start[11:13]) + 1, 23):02d}" + start[13:]
        f = rec.facility
        body: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": coding(
                V3_ACT, klass, {"AMB": "ambulatory", "IMP": "inpatient encounter"}[klass]
            ),
            "type": [cc(SNOMED, code, display)],
            "subject": self._subject(rec),
            "period": {"start": start, "end": end},
            "location": [{"location": ref("Location", f.loc_id)}],
            "serviceProvider": ref("Organization", f.org_id),
        }
        role = f.role("chw" if f.kind == "health_house" else "gp", self.rng)
        if role:
            body["participant"] = [{"individual": ref("PractitionerRole", role)}]
        self.emit("Encounter", body)
        self._last_dt = start
        return eid

    def observation(
        self,
        rec: Record,
        enc: str | None,
        day: date,
        key: str,
        category: str,
        value: float | None = None,
        unit: str = "",
        **extra: Any,
    ) -> str:
        code, display = self.c.codes["observations"][key]
        oid = self._id("obs")
        body: dict[str, Any] = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "category": [cc(OBS_CAT, category)],
            "code": cc(LOINC, code, display),
            "subject": self._subject(rec),
            "effectiveDateTime": self._dt(day),
            "performer": [ref("Organization", rec.facility.org_id)],
        }
        if enc:
            body["encounter"] = ref("Encounter", enc)
        if value is not None:
            body["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        body.update(extra)
        self.emit("Observation", body)
        return oid

    def lab(self, enc_rec: Record, enc: str, day: date, key: str, value: float, unit: str) -> None:
        """Blood tests go to the person's lab record when they are registered at a lab."""
        lab = self._at("lab")
        if lab is enc_rec:
            self.observation(enc_rec, enc, day, key, "laboratory", value, unit)
        else:
            self.observation(lab, None, day, key, "laboratory", value, unit)

    # -- the history ----------------------------------------------------------------------------

    def run(self, household: list[Person]) -> Outcome:
        p, rng, c = self.p, self.rng, self.c
        self._coverage()
        self._caregivers(household)
        self._immunizations()
        chronic = [k for k in _CHRONIC if k in p.conditions]
        for name in list(p.conditions):
            self._condition(name)
        if self.plan is not None:
            for event, onset in self.plan.prior.items():
                self._condition(event, onset)
        if "obesity" in p.conditions:
            pass  # recorded with the other conditions; BMI values follow it
        diabetic = "diabetes" in p.conditions
        if diabetic:
            rr = c.ineq["diabetes_control"]["income_rr"][p.quintile - 1]
            self.controlled = rng.random() < c.ineq["diabetes_control"]["base"] * rr
            self.out["diabetes_controlled"] = "1" if self.controlled else "0"
        self._visits(chronic)
        if self.plan is not None:
            self._programme_visits(self.plan)
        self._screening(diabetic)
        self._cancer_screening()
        self._treatments(chronic)
        self._pregnancies(household)
        self._admissions(chronic)
        return self.out

    def _coverage(self) -> None:
        p = self.p
        if p.payer is None:
            return
        code, _name, _native = p.payer
        self.emit(
            "Coverage",
            {
                "resourceType": "Coverage",
                "id": self._id("cov"),
                "status": "active",
                "beneficiary": self._subject(self.home),
                "relationship": cc(
                    "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self"
                ),
                "period": {"start": max(p.birth, self.c.start).isoformat()},
                "payor": [ref("Organization", f"payer-{code}")],
            },
        )

    def _caregivers(self, household: list[Person]) -> None:
        p = self.p
        carer: Person | None = None
        relation: tuple[str, str] | None = None
        if p.age < 18:
            carer = p.mother or p.father
            if carer is not None:
                relation = _CHILD_RELATION[carer.sex]
        elif "dementia" in p.conditions or p.disability:
            if p.spouse is not None:
                carer = p.spouse
                relation = ("HUSB", "husband") if carer.sex == "male" else ("WIFE", "wife")
            else:
                adults = [m for m in household if m is not p and m.age >= 18]
                if adults:
                    carer = adults[0]
                    relation = ("FAMMEMB", "family member")
        if carer is None or relation is None:
            return
        lang = self.c.lang
        self.emit(
            "RelatedPerson",
            {
                "resourceType": "RelatedPerson",
                "id": self._id("rp"),
                "active": True,
                "patient": self._subject(self.home),
                "relationship": [
                    cc(V3_ROLE, relation[0], relation[1]),
                    cc(SNOMED, "133932002", "Caregiver"),
                ],
                "name": [
                    {
                        "extension": [ext(LANG_EXT, valueCode=lang)],
                        "text": f"{carer.given.native} {carer.family.native}",
                        "family": carer.family.native,
                        "given": [carer.given.native],
                    }
                ],
                "telecom": [{"system": "phone", "value": carer.phone, "use": "mobile"}],
                "gender": carer.sex,
                "birthDate": carer.birth.isoformat(),
            },
        )
        self.out["caregiver"] = carer.pid

    def _immunizations(self) -> None:
        p, c, rng = self.p, self.c, self.rng
        cover = c.care["immunization_dose_coverage"]
        if not p.urban:
            cover *= c.ineq["immunization"]["rural_rr"]
        for dose in c.table["immunization_schedule"]:
            day = p.birth + timedelta(days=dose["age_days"] + int(rng.random() * 14))
            if c.start <= day <= c.end and rng.random() < cover:
                self._vaccine(day, dose["cvx"], dose["display"])
        flu = c.codes["influenza_vaccine"]
        if p.age >= flu["min_age"]:
            for year in range(c.start.year + 1, c.end.year + 1):
                if rng.random() < c.care["influenza_vaccine_per_year"]:
                    self._vaccine(
                        date(year, 10, 1) + timedelta(days=int(rng.random() * 60)),
                        flu["cvx"],
                        flu["display"],
                    )

    def _vaccine(self, day: date, cvx: str, display: str) -> None:
        rec = self.home
        self.emit(
            "Immunization",
            {
                "resourceType": "Immunization",
                "id": self._id("imm"),
                "status": "completed",
                "vaccineCode": cc(CVX, cvx, display),
                "patient": self._subject(rec),
                "occurrenceDateTime": self._dt(min(day, self.c.end)),
                "primarySource": True,
                "location": ref("Location", rec.facility.loc_id),
            },
        )

    def _condition(self, name: str, onset: date | None = None, abated: date | None = None) -> str:
        codes = self.c.codes
        if name.startswith("pregnancy"):
            spec = codes["pregnancy"]
        else:
            spec = (
                codes["prior_events"][name]
                if name in codes["prior_events"]
                else codes["conditions"][name]
            )
        onset = onset or self.p.conditions[name]
        recorded = max(onset, self.c.start)
        cid = self._id("cond")
        body: dict[str, Any] = {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": cc(COND_CLIN, "resolved" if abated else "active"),
            "verificationStatus": cc(COND_VER, "confirmed"),
            "category": [cc(COND_CAT, "problem-list-item", "Problem List Item")],
            "code": {
                "coding": [
                    coding(SNOMED, spec["snomed"], spec["display"]),
                    coding(ICD10, spec["icd10"], spec["icd10_display"]),
                ],
                "text": spec["display"],
            },
            "subject": self._subject(self.home),
            "onsetDateTime": onset.isoformat(),
            "recordedDate": recorded.isoformat(),
        }
        if abated:
            body["abatementDateTime"] = abated.isoformat()
        self.emit("Condition", body)
        self.condition_ids[name] = cid
        return cid

    def _visits(self, chronic: list[str]) -> None:
        p, c, rng = self.p, self.c, self.rng
        care = c.care
        lam = care["phc_visits_per_year"] + care["phc_visits_per_condition_year"] * len(chronic)
        obese = "obesity" in p.conditions
        hypertensive = "hypertension" in p.conditions
        diabetic = "diabetes" in p.conditions
        ckd = "ckd" in p.conditions
        mood = {k: p.conditions[k] for k in ("depression", "anxiety") if k in p.conditions}
        for y in range(c.config["years"]):
            lo = c.start + timedelta(days=int(365.25 * y))
            hi = min(lo + timedelta(days=364), c.end)
            if hi < p.birth:
                continue
            lo = max(lo, p.birth)
            count = min(poisson(rng, lam), care["max_visits_per_year"])
            days = sorted(self._day(lo, hi) for _ in range(count))
            for i, day in enumerate(days):
                review = chronic and rng.random() < 0.7
                code, display = (
                    ("390906007", "Follow-up encounter")
                    if review
                    else ("185349003", "Encounter for check up")
                )
                rec = (
                    self._at("phc")
                    if self.home.facility.kind == "health_house" and (rng.random() < 0.4)
                    else self.home
                )
                enc = self.encounter(rec, day, code, display)
                age = (day - p.birth).days // 365
                if age >= 18 and (hypertensive or rng.random() < 0.6):
                    self._bp(rec, enc, day, hypertensive)
                if i == 0 and age >= 2:
                    bmi = 30 + rng.random() * 12 if obese else min(29.9, rng.gauss(25, 3.2))
                    bmi = max(bmi, 14.0) if age >= 18 else max(min(bmi * 0.7, 29.9), 13.0)
                    self.observation(rec, enc, day, "bmi", "vital-signs", round(bmi, 1), "kg/m2")
                if diabetic and day >= p.conditions["diabetes"] and i < 2:
                    self._hba1c(rec, enc, day)
                if i == 0 and age >= 18 and (diabetic or hypertensive or ckd):
                    self._lipids(rec, enc, day)
                    egfr = (
                        25 + rng.random() * 34 if ckd else max(60.0, rng.gauss(100 - age / 2, 12))
                    )
                    self.lab(rec, enc, day, "egfr", round(egfr), "mL/min/{1.73_m2}")
                if age >= 18:
                    active = {k for k, d in mood.items() if d <= day}
                    if rng.random() < care["phq9_screening_per_year"] / max(count, 1) * 1.0:
                        self.questionnaire(rec, enc, day, "phq9", "depression" in active)
                    if rng.random() < care["gad7_screening_per_year"] / max(count, 1):
                        self.questionnaire(rec, enc, day, "gad7", "anxiety" in active)

    def _bp(self, rec: Record, enc: str, day: date, hypertensive: bool) -> None:
        g = self.rng.gauss
        sys_ = round(g(145, 14) if hypertensive else g(120, 10))
        dia = round(g(92, 9) if hypertensive else g(77, 7))
        if hypertensive and self.plan is not None and "hypertension" in self.plan.programmes:
            # A registered hypertensive's readings follow their control state (drawn from the
            # programme stream, so the block's stream is consumed as before).
            sys_, dia = self.plan.bp(day)
        syscode, sysd = self.c.codes["observations"]["systolic"]
        diacode, diad = self.c.codes["observations"]["diastolic"]

        def comp(code: str, display: str, v: int) -> dict[str, Any]:
            q = {"value": v, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
            return {"code": cc(LOINC, code, display), "valueQuantity": q}

        self.observation(
            rec,
            enc,
            day,
            "bp_panel",
            "vital-signs",
            component=[comp(syscode, sysd, sys_), comp(diacode, diad, dia)],
        )

    def _hba1c(self, rec: Record, enc: str, day: date) -> None:
        rng = self.rng
        # Controlled means below 7% (53 mmol/mol), the usual treatment target.
        value = 6.0 + rng.random() * 0.9 if self.controlled else 7.1 + rng.random() * 4.5
        self.lab(rec, enc, day, "hba1c", round(value, 1), "%")

    # -- care programmes (issue 14) ------------------------------------------------------------

    def _programme_visits(self, plan: Plan) -> None:
        """Follow-up visits of a registered person, every one to five months, at their different
        registrations, most with a blood pressure and for diabetics often a glucose test."""
        p, c = self.p, self.c
        s = plan.settings
        main, self.rng = self.rng, plan.rng  # every helper draws from the programme stream
        try:
            rng = self.rng
            first = max(min(p.conditions[k] for k in plan.programmes), c.start)
            stop = min(c.end, plan.died or c.end, plan.last_contact or c.end)
            m3 = minus_months(c.end, 3)
            days: list[date] = []
            day = first + timedelta(days=int(rng.random() * plan.interval))
            while day <= stop:
                days.append(day)
                day += timedelta(days=int(plan.interval * (0.6 + 0.8 * rng.random())))
            if plan.engagement == "active" and plan.died is None and (not days or days[-1] <= m3):
                # an active person has been seen in the last three months
                days.append(self._day(max(m3 + timedelta(days=1), first), c.end))
            others = [
                r
                for r in self.records[1:]
                if r.facility.kind in ("phc", "health_house", "hospital", "specialist")
            ]
            dm_onset = p.conditions.get("diabetes")
            for i, day in enumerate(days):
                rec = self.home
                if others and rng.random() < s["other_record_visit"]:
                    rec = others[int(rng.random() * len(others))]
                enc = self.encounter(rec, day, "390906007", "Follow-up encounter")
                last = i == len(days) - 1 and day > m3
                if "hypertension" in plan.programmes and (last or rng.random() < s["bp_at_visit"]):
                    self._bp(rec, enc, day, True)
                glucose_p = 0.85 if last else s["glucose_at_visit"]
                if dm_onset is not None and day >= dm_onset and rng.random() < glucose_p:
                    self._glucose(plan, rec, enc, day)
        finally:
            self.rng = main

    def _glucose(self, plan: Plan, rec: Record, enc: str, day: date) -> None:
        kinds = plan.settings["glucose_kinds"]
        u, kind = plan.rng.random(), "hba1c"
        for name, share in kinds.items():
            kind = name
            if u < share:
                break
            u -= share
        value = plan.glucose_value(kind, self.controlled)
        self.lab(rec, enc, day, kind, value, "%" if kind == "hba1c" else "mg/dL")

    def _cancer_screening(self) -> None:
        """Mammography, cervical screening and faecal immunochemical tests by the national
        schedule (data/SA.json, data/IR.json), with the configured screening inequities."""
        p, c = self.p, self.c
        end_age = p.age
        start_age = (c.start - p.birth).days // 365 if p.birth < c.start else 0
        due = [
            sched
            for sched in c.schedule
            if sched["sex"] in ("any", p.sex)
            and end_age >= sched["min_age"]
            and start_age <= sched["max_age"]
        ]
        if not due:
            return
        ineq = c.ineq["screening"]
        factor = ineq["income_rr"][p.quintile - 1]
        factor *= 1.0 if p.urban else ineq["rural_rr"]
        factor *= 1.0 if p.group == "citizen" else ineq["non_citizen_rr"]
        adherence = c.config["programmes"]["cancer_screening_round_adherence"]
        main = self.rng
        self.rng = rng = Random(f"{c.stream}/{p.index}/screening")
        try:
            for sched in due:
                if rng.random() >= sched["uptake"] * factor:
                    continue
                step = 365.25 * sched["interval_years"]
                day = c.start + timedelta(days=int(rng.random() * step))
                while day <= c.end:
                    age = _age_on(p.birth, day)
                    if sched["min_age"] <= age <= sched["max_age"] and rng.random() < adherence:
                        self._screening_test(sched, day)
                    day += timedelta(days=int(step + rng.random() * 45))
        finally:
            self.rng = main

    def _screening_test(self, sched: dict[str, Any], day: date) -> None:
        rec = self._at(sched["setting"])
        if sched["resource"] == "Observation":
            positive = self.rng.random() < sched.get("positive", 0.0)
            self.observation(
                rec,
                None,
                day,
                "fit",
                "laboratory",
                valueCodeableConcept=cc(SNOMED, *(_POSITIVE if positive else _NEGATIVE)),
            )
            return
        enc = self.encounter(rec, day, "185349003", "Encounter for check up")
        self.emit(
            "Procedure",
            {
                "resourceType": "Procedure",
                "id": self._id("proc"),
                "status": "completed",
                "category": cc(SNOMED, "103693007", "Diagnostic procedure"),
                "code": cc(SNOMED, sched["code"], sched["display"]),
                "subject": self._subject(rec),
                "encounter": ref("Encounter", enc),
                "performedDateTime": self._dt(day),
            },
        )

    def _lipids(self, rec: Record, enc: str, day: date) -> None:
        g = self.rng.gauss
        total = max(120.0, g(195, 35))
        hdl = max(25.0, g(45, 10))
        tg = max(50.0, g(150, 50))
        ldl = max(40.0, total - hdl - tg / 5)
        for key, v in (("cholesterol", total), ("hdl", hdl), ("triglycerides", tg), ("ldl", ldl)):
            self.lab(rec, enc, day, key, round(v), "mg/dL")

    def questionnaire(
        self,
        rec: Record,
        enc: str | None,
        day: date,
        key: str,
        positive: bool,
        improving: float = 0.0,
    ) -> int:
        rng = self.rng
        spec = self.c.codes["questionnaires"][key]
        n_items, top = len(spec["items"]), spec["max_item"]
        limit = n_items * top
        if positive:
            total = 10 + int(rng.random() * (limit - 10 + 1))
            total = max(0, int(total * (1 - improving)))
        else:
            total = int(rng.random() ** 2 * 10)
        values = [0] * n_items
        left = min(total, limit)
        while left:
            i = int(rng.random() * n_items)
            if values[i] < top:
                values[i] += 1
                left -= 1
        total = sum(values)
        qid = self._id("qr")
        when = self._dt(day)
        body: dict[str, Any] = {
            "resourceType": "QuestionnaireResponse",
            "id": qid,
            "questionnaire": spec["url"],
            "status": "completed",
            "subject": self._subject(rec),
            "authored": when,
            "item": [
                {"linkId": code, "answer": [{"valueInteger": v}]}
                for code, v in zip(spec["items"], values, strict=True)
            ]
            + [{"linkId": spec["total"], "answer": [{"valueInteger": total}]}],
        }
        if enc:
            body["encounter"] = ref("Encounter", enc)
        self.emit("QuestionnaireResponse", body)
        self.observation(
            rec,
            enc,
            day,
            f"{key}_total",
            "survey",
            valueInteger=total,
            derivedFrom=[ref("QuestionnaireResponse", qid)],
        )
        return total

    def _screening(self, diabetic: bool) -> None:
        p, c, rng = self.p, self.c, self.rng
        s = c.ineq["screening"]
        if p.age < s["min_age"] or diabetic:
            return
        prob = s["base"] * s["income_rr"][p.quintile - 1]
        if not p.urban:
            prob *= s["rural_rr"]
        if p.group != "citizen":
            prob *= s["non_citizen_rr"]
        screened = rng.random() < prob
        self.out["screened"] = "1" if screened else "0"
        plan = self.plan
        if plan is not None and plan.died is not None:
            # The dead leave the screening denominator; the draws are kept so the block's stream
            # is not shifted, but nothing is written.
            self.out["screened"] = ""
            self.muted = True
        if not screened:
            self.muted = False
            return
        lo = c.end - timedelta(days=int(365.25 * s["window_years"]))
        day = self._day(lo, c.end)
        if plan is not None and plan.last_contact is not None and day > plan.last_contact:
            # A person who stopped coming was screened while still coming: the same draw,
            # squeezed into the part of the window before their last contact.
            last = plan.last_contact
            day = lo + (day - lo) * (last - lo).days // (c.end - lo).days if last > lo else last
        rec = self.home
        enc = self.encounter(rec, day, "185349003", "Encounter for check up")
        self.emit(
            "Procedure",
            {
                "resourceType": "Procedure",
                "id": self._id("proc"),
                "status": "completed",
                "category": cc(SNOMED, "103693007", "Diagnostic procedure"),
                "code": cc(SNOMED, "171183004", "Diabetes mellitus screening"),
                "subject": self._subject(rec),
                "encounter": ref("Encounter", enc),
                "performedDateTime": self._dt(day),
            },
        )
        self.lab(rec, enc, day, "hba1c", round(4.8 + rng.random() * 1.6, 1), "%")
        self.muted = False

    def _medication(self, rec: Record, cond: str, day: date, which: int = 0) -> str:
        atc, name, dose = self.c.codes["medications"][cond][which]
        mid = self._id("med")
        body: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": mid,
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": cc(ATC, atc, name),
            "subject": self._subject(rec),
            "authoredOn": day.isoformat(),
            "dosageInstruction": [{"text": dose}],
        }
        if cond in self.condition_ids:
            body["reasonReference"] = [ref("Condition", self.condition_ids[cond])]
        role = rec.facility.role("gp", self.rng)
        if role:
            body["requester"] = ref("PractitionerRole", role)
        self.emit("MedicationRequest", body)
        return mid

    def _psychiatry_referral(self, cond: str, day: date) -> str:
        return self._referral(
            cond, day, "mental_health", "183524004", "Referral to psychiatry service"
        )

    def _referral(self, cond: str, day: date, kind: str, code: str, display: str) -> str:
        p, rng = self.p, self.rng
        options = self.c.network.of(p.region, kind) or [
            f for f in self.c.network.facilities if f.kind == kind
        ]
        target = options[int(rng.random() * len(options))]
        sid = self._id("sr")
        body: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": sid,
            "status": "completed" if day < self.c.end - timedelta(days=60) else "active",
            "intent": "order",
            "category": [cc(SNOMED, "3457005", "Patient referral")],
            "code": cc(SNOMED, code, display),
            "subject": self._subject(self.home),
            "authoredOn": self._dt(day),
            "performer": [ref("HealthcareService", target.service_id)],
            "reasonReference": [ref("Condition", self.condition_ids[cond])],
        }
        role = self.home.facility.role("gp", rng)
        if role:
            body["requester"] = ref("PractitionerRole", role)
        self.emit("ServiceRequest", body)
        return sid

    def _care_plan(
        self, cond: str, day: date, title: str, activities: list[tuple[str, str]]
    ) -> None:
        self.emit(
            "CarePlan",
            {
                "resourceType": "CarePlan",
                "id": self._id("cp"),
                "status": "active",
                "intent": "plan",
                "category": [cc(SNOMED, "734163000", "Care plan")],
                "title": title,
                "subject": self._subject(self.home),
                "period": {"start": day.isoformat()},
                "addresses": [ref("Condition", self.condition_ids[cond])],
                "activity": [{"reference": ref(t, i)} for t, i in activities],
            },
        )

    def _treatments(self, chronic: list[str]) -> None:
        p, c, rng = self.p, self.c, self.rng
        home = self.home
        for cond in chronic:
            day = max(p.conditions[cond], c.start)
            acts: list[tuple[str, str]] = []
            if cond == "diabetes":
                acts.append(("MedicationRequest", self._medication(home, cond, day)))
                if not self.controlled:
                    acts.append(("MedicationRequest", self._medication(home, cond, day, 1)))
                    if rng.random() < 0.15:
                        acts.append(("MedicationRequest", self._medication(home, cond, day, 2)))
                    if rng.random() < c.care["specialist_referral_uncontrolled_diabetes"]:
                        acts.append(
                            (
                                "ServiceRequest",
                                self._referral(
                                    cond, day, "specialist", "306206005", "Referral to service"
                                ),
                            )
                        )
                        spec = self._at("specialist")
                        if spec is not home:
                            when = min(day + timedelta(days=30), c.end)
                            enc = self.encounter(spec, when, "11429006", "Consultation")
                            self._hba1c(spec, enc, when)
                if p.age >= 40:
                    self._medication(home, "statin", day)
                self._care_plan(cond, day, "Diabetes care plan", acts)
            elif cond == "hypertension":
                self._medication(home, cond, day)
                if rng.random() < 0.5:
                    self._medication(home, cond, day, 1)
            elif cond in ("ckd", "asthma", "copd"):
                for i in range(len(c.codes["medications"][cond])):
                    self._medication(home, cond, day, i)
            elif cond == "dementia":
                acts.append(("MedicationRequest", self._medication(home, cond, day)))
                acts.append(("ServiceRequest", self._psychiatry_referral(cond, day)))
                self._care_plan(cond, day, "Dementia care and caregiver support plan", acts)
        mood = [k for k in ("depression", "anxiety") if k in p.conditions]
        if mood:
            mh = c.ineq["mental_health_treatment"]
            prob = mh["base"] * (1.0 if p.urban else mh["rural_rr"])
            treated = rng.random() < prob
            self.out["mh_treated"] = "1" if treated else "0"
            if treated:
                cond = mood[0]
                day = max(p.conditions[cond], c.start)
                acts = [("ServiceRequest", self._psychiatry_referral(cond, day))]
                if rng.random() < c.care["mental_health_treatment_medication"]:
                    acts.append(("MedicationRequest", self._medication(home, cond, day)))
                self._care_plan(cond, day, "Mental health stepped care plan", acts)
                rec = self._at("mental_health")
                key = "phq9" if cond == "depression" else "gad7"
                for k in range(1, 4):
                    when = day + timedelta(days=42 * k)
                    if when > c.end:
                        break
                    enc = self.encounter(rec, when, "390906007", "Follow-up encounter")
                    self.questionnaire(rec, enc, when, key, True, improving=0.2 * k)

    def _pregnancies(self, household: list[Person]) -> None:
        p, c, rng = self.p, self.c, self.rng
        if p.sex != "female" or p.age < 14:
            return
        births = [m.birth for m in household if m.mother is p and c.start <= m.birth <= c.end]
        for birth in births:
            onset = birth - timedelta(days=266)
            self._pregnancy(onset, birth)
        rate = 0.0
        for lo, v in self.c.fertility:
            if p.age >= lo:
                rate = v
        if rng.random() < rate * 0.75:
            self._pregnancy(c.end - timedelta(days=int(rng.random() * 250)), None)

    def _pregnancy(self, onset: date, birth: date | None) -> None:
        c, rng = self.c, self.rng
        self.p.conditions.setdefault("pregnancy", onset)
        self._condition("pregnancy", onset, birth)
        last = birth or c.end
        for k in range(3):
            day = onset + timedelta(days=70 + 70 * k)
            if c.start <= day <= last:
                self.encounter(self.home, day, "424441002", "Prenatal initial visit")
        if c.start <= onset:
            self._medication(self.home, "pregnancy", onset + timedelta(days=40))
        if (
            birth
            and birth + timedelta(days=42) <= c.end
            and rng.random() < c.care["epds_postnatal"]
        ):
            day = birth + timedelta(days=42)
            enc = self.encounter(self.home, day, "133906008", "Postpartum care")
            self.questionnaire(self.home, enc, day, "epds", rng.random() < 0.12)

    def _admissions(self, chronic: list[str]) -> None:
        c, rng = self.c, self.rng
        hosp = self._at("hospital")
        if hosp is self.home:
            return
        rate = c.care["hospital_admission_per_year"] + c.care[
            "hospital_admission_per_condition_year"
        ] * len(chronic)
        for _ in range(poisson(rng, rate * c.config["years"])):
            day = self._day(max(c.start, self.p.birth), c.end - timedelta(days=10))
            self.encounter(
                hosp, day, "32485007", "Hospital admission", "IMP", days=1 + int(rng.random() * 6)
            )


def _age_on(birth: date, day: date) -> int:
    """Completed years of age on ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
