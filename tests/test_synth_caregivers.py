"""The synthetic population's caregivers (issue 16): the facility's registry of caregivers at
high burden, read after a bulk load and the hooks' catch-up on both stores, lists per facility
exactly the caregivers the generator's own books (truth/caregivers.csv) put at high burden, with
their totals; the screens are the ZBI-12 as docs/caregivers.md records it; the totals follow the
published distribution; parents of children are not screened; the rest of the population is
written byte for byte as without them."""

from __future__ import annotations

import csv
import re
import statistics
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from random import Random
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from sqlalchemy import text

from takamul.bulk.load import load_paths
from takamul.caregivers.burden import Caregivers
from takamul.caregivers.registry import registry
from takamul.fhir.validation import validate_resource
from takamul.mentalhealth.instruments import instrument
from takamul.mentalhealth.safety import find_all
from takamul.mentalhealth.service import MentalHealth
from takamul.settings import Settings
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store
from takamul.synth import generate, load_config
from takamul.synth.caregiving import HIGH_BURDEN, Caregiving
from takamul.synth.people import Person
from tests.server import postgres_database

END = date(2024, 12, 31)
YEARS = 2
SEED = 616  # not a seed the generator was tuned on
# every caregiver of a dependent adult screened (the default is half) so a population loaded
# in well under a minute holds a few dozen at high burden
SCREENED = 1.0
OURS = re.compile(rb'"id":"cgqr-')
# what the registry reads: the facilities, the Patients, the caregivers and every
# questionnaire response (the mental-health ones too, so the catch-up scores a realistic mix);
# the full population's load is tested in test_synth.py
LOADED = ("Organization", "Patient", "RelatedPerson", "QuestionnaireResponse")


def _config(**extra: Any) -> dict[str, Any]:
    return load_config(
        None,
        country="SA",
        patients=4000,
        seed=SEED,
        years=YEARS,
        caregiving={"screened": SCREENED, **extra},
    )


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("caregivers-synth")
    generate(_config(), out)
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _truth(population: Path) -> list[dict[str, str]]:
    return _csv(population / "truth" / "caregivers.csv")


def _ndjson(population: Path, rtype: str) -> list[dict[str, Any]]:
    path = population / f"{rtype}.ndjson"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _screens(population: Path) -> list[dict[str, Any]]:
    return [r for r in _ndjson(population, "QuestionnaireResponse") if r["id"].startswith("cgqr-")]


def _support_catch_up(store: Store) -> int:
    """What the caregivers hook does on write, over the bulk-loaded ZBI-12 responses in the
    order they were answered (a bulk load runs no hooks; see docs/caregivers.md, Not yet)."""
    hook = Caregivers(store)
    url = instrument("zbi-12").url

    def work(session: Session) -> int:
        everything = find_all(session, "QuestionnaireResponse", [])
        responses = [r for r in everything if r.get("questionnaire") == url]
        for body in sorted(responses, key=lambda r: (str(r["authored"]), str(r["id"]))):
            hook.process(session, str(body["id"]), body)
        return len(responses)

    with unguarded():
        return store.write(work)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, population: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    work = tmp_path_factory.mktemp("caregivers-store")

    def ready(url: str) -> Store:
        s = Store(Settings(database_url=url, export_dir=work / "exports"))
        files = [population / f"{rtype}.ndjson" for rtype in LOADED]
        load_paths(s, files, work / "errors.ndjson", workers=0)
        MentalHealth(s).catch_up()  # as `takamul load` does after a bulk load
        assert _support_catch_up(s) == len(_screens(population))
        return s

    if request.param == "sqlite":
        s = ready(f"sqlite:///{work / 'takamul.sqlite'}")
        yield s
        s.close()
    else:
        with postgres_database() as url:
            s = ready(url)
            yield s
            s.close()


def _previous(row: dict[str, str]) -> int | None:
    totals = row["totals"].split(";")
    return int(totals[-2]) if len(totals) > 1 else None


def test_the_registry_per_facility_is_the_truths_high_burden(
    store: Store, population: Path
) -> None:
    truth = _truth(population)
    organizations = [o["id"] for o in _ndjson(population, "Organization")]
    homes = {r["home_facility"] for r in truth}
    assert homes <= set(organizations)
    # every primary care centre (where people have their home record), and a hospital, which
    # holds records of the same persons but none cared for there, as a control
    hospital = next(o for o in organizations if o.startswith("org-hospital-"))
    facilities = [o for o in organizations if o.startswith(("org-phc-", "org-healthhouse-"))]
    assert homes <= set(facilities) and len(facilities) > len(homes)
    facilities.append(hospital)
    listed = 0
    for facility in facilities:
        want = {
            (
                r["related_person_id"],
                r["patient_id"],
                int(r["latest_total"]),
                r["screen_dates"].split(";")[-1],
                _previous(r),
            )
            for r in truth
            if r["home_facility"] == facility and r["high_burden"] == "true"
        }
        rows = registry(store, facility, END)
        got = {
            (r.caregiver_id, r.patient_id, r.latest_total, r.latest_date, r.previous_total)
            for r in rows
        }
        assert got == want, facility
        # the hook's catch-up proposed support once for each, still open
        assert all(r.referral_id and r.referral_status == "active" for r in rows), facility
        listed += len(rows)
    high = sum(r["high_burden"] == "true" for r in truth)
    print(f"{listed} caregivers at high burden of {len(truth)} screened, in the registry")
    assert listed == high > 25
    assert high < len(truth)


def test_the_registry_before_a_second_screen_shows_the_first(
    store: Store, population: Path
) -> None:
    """As of the day before a caregiver's second screen the registry has only the first."""
    twice = [r for r in _truth(population) if ";" in r["screen_dates"]]
    assert len(twice) > 10
    checked = 0
    for row in twice[:8]:
        first_total = int(row["totals"].split(";")[0])
        second_day = date.fromisoformat(row["screen_dates"].split(";")[1])
        rows = registry(store, row["home_facility"], second_day - timedelta(days=1))
        mine = [r for r in rows if r.caregiver_id == row["related_person_id"]]
        assert len(mine) == (1 if first_total >= HIGH_BURDEN else 0), row
        if mine:
            assert (mine[0].latest_total, mine[0].previous_total) == (first_total, None)
        checked += 1
    assert checked == 8


def _scores(store: Store) -> list[dict[str, Any]]:
    with store.reader.connect() as conn:
        return [
            orjson.loads(content)
            for (content,) in conn.execute(
                text("SELECT content FROM resource WHERE res_type = 'Observation'")
            )
        ]


def test_every_screen_is_scored_once_with_the_drawn_total(store: Store, population: Path) -> None:
    drawn = {
        f"cgqr-{r['person_id'][1:]}-{n}": int(total)
        for r in _truth(population)
        for n, total in enumerate(r["totals"].split(";"), 1)
    }
    code = instrument("zbi-12").total_code
    scored = Counter()
    for obs in _scores(store):
        if obs["code"]["coding"][0]["code"] != code:
            continue
        response = obs["derivedFrom"][0]["reference"].removeprefix("QuestionnaireResponse/")
        scored[response] += 1
        assert obs["valueInteger"] == drawn[response], response
    assert set(scored) == set(drawn) and set(scored.values()) == {1}


def test_screens_are_the_zbi12_as_the_docs_record_it(population: Path) -> None:
    zbi = instrument("zbi-12")
    related = {r["id"]: r for r in _ndjson(population, "RelatedPerson")}
    truth = {r["related_person_id"]: r for r in _truth(population)}
    per_carer: dict[str, list[dict[str, Any]]] = {}
    for form in _screens(population):
        carer = form["source"]["reference"].removeprefix("RelatedPerson/")
        assert form["author"] == form["source"]
        assert form["questionnaire"] == zbi.url and form["status"] == "completed"
        assert form["subject"] == related[carer]["patient"]  # the Patient cared for
        answers = [i["answer"][0]["valueInteger"] for i in form["item"]]
        assert [i["linkId"] for i in form["item"]] == list(zbi.items)
        assert all(0 <= a <= 4 for a in answers)
        per_carer.setdefault(carer, []).append(form)
    assert set(per_carer) == set(truth)
    for carer, forms in per_carer.items():
        row = truth[carer]
        assert [f["authored"][:10] for f in forms] == row["screen_dates"].split(";")
        assert [sum(i["answer"][0]["valueInteger"] for i in f["item"]) for f in forms] == [
            int(t) for t in row["totals"].split(";")
        ]
        days = [date.fromisoformat(d) for d in row["screen_dates"].split(";")]
        assert END - timedelta(days=int(365.25 * YEARS)) <= days[0] <= END
        assert all(90 <= (b - a).days <= 365 for a, b in pairwise(days))
        assert row["high_burden"] == ("true" if int(row["latest_total"]) >= 13 else "false")
    step = max(1, len(per_carer) // 40)
    for forms in list(per_carer.values())[::step]:
        for form in forms:
            errors = [i for i in validate_resource(form) if i.severity == "error"]
            assert not errors, (form["id"], errors[:3])


def test_caregivers_of_dependent_adults_are_screened_and_parents_not(population: Path) -> None:
    persons = {p["person"]: p for p in _csv(population / "truth" / "persons.csv")}
    truth = _truth(population)
    screened = {r["person_id"] for r in truth}
    dependent = {
        pid
        for pid, p in persons.items()
        if int(p["age"]) >= 18
        and ("dementia" in p["conditions"].split(";") or p["disability"] == "1")
        and p["caregiver"]
        and not p["died"]
    }
    # every caregiver of a living dependent adult (SCREENED is 1.0), unless they died before
    # the window opened
    assert screened <= dependent and len(dependent - screened) <= 2
    assert all(int(persons[pid]["age"]) >= 18 for pid in screened)
    assert all(persons[r["person_id"]]["caregiver"] == r["caregiver_person_id"] for r in truth)
    assert {r["cared_for"] for r in truth} == {"dementia", "disability"}
    children = [p for p in persons.values() if int(p["age"]) < 18 and p["caregiver"]]
    assert len(children) > 500 and not screened & {p["person"] for p in children}


def _dependent(**attrs: Any) -> Person:
    base = {"conditions": {"dementia": date(2020, 1, 1)}, "quintile": 3, "urban": True}
    return cast(Person, SimpleNamespace(**{**base, **attrs}))


def test_totals_follow_the_published_distribution() -> None:
    """Dementia caregivers' totals: Hébert et al. 2000 (ZBI-22 mean 22.4, SD 16.2, median 18.5
    of 88, scaled to the 12 items: 12.2, 8.8, 10.1); the modelling shifts move the mean."""
    config = load_config(None, country="SA")
    care = Caregiving(config, {"code": "SA"}, cast(Any, None))
    rng = Random(3)

    def totals(person: Person) -> list[int]:
        return [max(0, min(48, round(care._burden(rng, person)))) for _ in range(20000)]

    dementia = totals(_dependent())
    mean, sd = statistics.mean(dementia), statistics.pstdev(dementia)
    high = sum(t >= 13 for t in dementia) / len(dementia)
    print(f"dementia caregivers: mean {mean:.1f}, sd {sd:.1f}, at or above 13: {high:.0%}")
    assert abs(mean - 12.2) < 0.3 and abs(sd - 8.8) < 0.4
    assert 9 <= statistics.median(dementia) <= 11
    assert 0.35 < high < 0.45
    disability = statistics.mean(totals(_dependent(conditions={})))
    rural_poor = statistics.mean(totals(_dependent(urban=False, quintile=1)))
    assert disability < mean - 1 and rural_poor > mean + 1


def test_the_rest_of_the_population_is_written_as_without_it(
    population: Path, tmp_path: Path
) -> None:
    generate(_config(enabled=False), tmp_path)
    compared = 0
    for before in sorted(tmp_path.rglob("*")):
        name = before.relative_to(tmp_path)
        if before.is_dir() or name.name in ("manifest.json", "effects.json", "caregivers.csv"):
            continue
        after = (population / name).read_bytes()
        if before.suffix == ".ndjson":
            after = b"".join(line + b"\n" for line in after.splitlines() if not OURS.search(line))
        assert after == before.read_bytes(), name
        compared += 1
    assert compared > 20
    assert (tmp_path / "truth" / "caregivers.csv").read_text().count("\n") == 1
    assert OURS.search((population / "QuestionnaireResponse.ndjson").read_bytes())
