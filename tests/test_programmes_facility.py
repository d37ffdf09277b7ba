"""A facility's registry followed through the record's changes (``Programmes.facility_statuses``)
is, after every kind of change, exactly what a full computation gives: a new or deleted reading,
an Observation moved to another patient, a new registration, a person seen last at another
facility, a death, the client registry linking, merging and splitting persons. Each check also
says which way the registry was brought up to date (followed, or recomputed), so the fast path
is the one proven. Both stores."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from takamul.mpi.service import ClientRegistry
from takamul.programmes import facility as facility_module
from takamul.programmes.service import Programmes
from takamul.programmes.status import PersonStatus, statuses
from takamul.settings import Settings
from takamul.store.repository import Store
from tests.server import postgres_database
from tests.test_programmes_status import bp, condition, encounter, patient

AS_OF = date(2025, 6, 30)
HOME, OTHER = "org-a", "org-b"
GIVEN = ("Noura", "Sara", "Hind", "Fatima", "Mohammed", "Abdullah", "Khalid", "Reem")
FAMILY = ("Alqahtani", "Alotaibi", "Alshehri", "Alzahrani", "Alghamdi", "Alharbi")


def named(pid: str, n: int, org: str = HOME, **extra: Any) -> dict[str, Any]:
    # distinct names and national IDs: the client registry links only the records a test means
    body = patient(pid, org, **extra)
    body["name"] = [{"given": [GIVEN[n % len(GIVEN)]], "family": FAMILY[n % len(FAMILY)]}]
    body["birthDate"] = f"{1940 + n % 50}-{1 + n % 12:02d}-{1 + n % 28:02d}"
    body["identifier"] = [{"system": "https://takamul.health/id/national", "value": f"N{n:07d}"}]
    return body


def put(store: Store, *bodies: dict[str, Any]) -> None:
    def work(session: Any) -> None:
        for body in bodies:
            session.update(body["resourceType"], body["id"], body)

    store.write(work)


def reading(pid: str, rid: str, day: str, systolic: int, diastolic: int) -> dict[str, Any]:
    return {**bp(pid, 0, day, systolic, diastolic), "id": rid}


def _world(store: Store) -> None:
    rng = random.Random(14)

    def work(session: Any) -> None:
        for n in range(40):
            pid = f"p{n}"
            session.update("Patient", pid, named(pid, n, HOME if n < 30 else OTHER))
            onset = f"20{rng.randint(15, 25)}-0{rng.randint(1, 4)}-1{rng.randint(0, 9)}"
            session.update("Condition", f"{pid}-c1", condition(pid, 1, onset))
            for k in range(rng.randint(0, 3)):
                day = f"2025-0{rng.randint(1, 6)}-1{rng.randint(0, 9)}"
                body = bp(pid, k, day, rng.randint(110, 190), rng.randint(65, 115))
                session.update("Observation", body["id"], body)

    store.write(work)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, Programmes, ClientRegistry]]:
    def opened(url: str) -> tuple[Store, Programmes, ClientRegistry]:
        store = Store(Settings(database_url=url, export_dir=tmp_path_factory.mktemp("exports")))
        _world(store)
        registry = ClientRegistry(store)
        registry.attach()
        programmes = Programmes(store)
        programmes.attach()
        return store, programmes, registry

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('facility') / 'takamul.sqlite'}"
        built = opened(url)
        yield built
        built[0].close()
    else:
        with postgres_database() as url:
            built = opened(url)
            yield built
            built[0].close()


def _full(store: Store, programmes: Programmes) -> list[PersonStatus]:
    return statuses(store, programmes.catalog, AS_OF, ["hypertension"], facility=HOME)


def _agrees(store: Store, programmes: Programmes, way: str) -> list[PersonStatus]:
    registries = programmes.registries
    before = (registries.followed, registries.recomputed)
    followed = programmes.facility_statuses(HOME, "hypertension", AS_OF)
    assert followed == _full(store, programmes)
    if way == "followed":
        assert (registries.followed, registries.recomputed) == (before[0] + 1, before[1])
    elif way == "any":
        pass
    elif way == "recomputed":
        assert registries.recomputed == before[1] + 1
    else:  # nothing changed: neither
        assert (registries.followed, registries.recomputed) == before
    return followed


def _row(rows: list[PersonStatus], pid: str) -> PersonStatus | None:
    return next((r for r in rows if pid in r.patient_ids), None)


def test_every_kind_of_change_is_followed(
    world: tuple[Store, Programmes, ClientRegistry],
) -> None:
    store, programmes, registry = world
    first = _agrees(store, programmes, "recomputed")
    assert len(first) >= 25  # the home facility's persons with hypertension
    _agrees(store, programmes, "unchanged")

    # a new reading: p1 becomes controlled
    put(store, reading("p1", "p1-new", "2025-06-29", 120, 80))
    row = _row(_agrees(store, programmes, "followed"), "p1")
    assert row is not None and row.status == "controlled"
    # deleted again: the status is what it was
    store.write(lambda s: s.delete("Observation", "p1-new"))
    assert _row(_agrees(store, programmes, "followed"), "p1") == _row(first, "p1")

    # an Observation recorded on the wrong patient and moved: both persons change
    put(store, reading("p2", "p2-x", "2025-06-28", 185, 115))
    assert _row(_agrees(store, programmes, "followed"), "p2").status == "uncontrolled"  # type: ignore[union-attr]
    put(store, reading("p3", "p2-x", "2025-06-28", 185, 115))
    rows = _agrees(store, programmes, "followed")
    assert _row(rows, "p3").status == "uncontrolled"  # type: ignore[union-attr]
    assert _row(rows, "p2") == _row(first, "p2")

    # a new person registers at the facility
    def newcomer(s: Any) -> None:
        s.update("Patient", "p50", named("p50", 50))
        s.update("Condition", "p50-c1", condition("p50", 1, "2025-06-01"))

    store.write(newcomer)
    assert _row(_agrees(store, programmes, "followed"), "p50").status == "registered-recently"  # type: ignore[union-attr]

    # seen last at another facility: the other facility is now responsible, p4 leaves
    put(store, encounter("p4", 7, "2025-06-29", org=OTHER))
    put(store, named("p4-b", 4, OTHER))
    # p4-b has p4's name, birth date and national ID: the client registry links it on write
    assert registry.person_of("p4-b") == registry.person_of("p4")
    put(store, encounter("p4-b", 1, "2025-06-29", org=OTHER))
    assert _row(_agrees(store, programmes, "followed"), "p4") is None

    # a death: the person leaves the registry
    put(store, named("p5", 5, deceasedDateTime="2025-05-01"))
    assert _row(_agrees(store, programmes, "followed"), "p5") is None

    # a reviewer merges two persons and splits them again
    registry.link("p6", "p31", "reviewer-1", "same person, two registrations")
    merged = _row(_agrees(store, programmes, "followed"), "p6")
    assert merged is not None and set(merged.patient_ids) == {"p6", "p31"}
    registry.unlink("p31", "reviewer-1", "different mothers' names")
    split = _row(_agrees(store, programmes, "followed"), "p6")
    assert split is not None and split.patient_ids == ("p6",)


def test_many_changes_or_a_batch_run_recompute(
    world: tuple[Store, Programmes, ClientRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, programmes, _ = world
    _agrees(store, programmes, "recomputed" if not programmes.registries.followed else "any")
    monkeypatch.setattr(facility_module, "FOLLOW_AT_MOST", 2)
    put(store, *(reading("p7", f"p7-m{k}", f"2025-06-2{k}", 121, 81) for k in range(4)))
    _agrees(store, programmes, "recomputed")
    put(store, reading("p7", "p7-m9", "2025-06-27", 150, 95))
    _agrees(store, programmes, "followed")


def test_another_date_or_facility_is_its_own_registry(
    world: tuple[Store, Programmes, ClientRegistry],
) -> None:
    store, programmes, _ = world
    other_day = programmes.facility_statuses(HOME, "hypertension", date(2025, 1, 31))
    assert other_day == statuses(
        store, programmes.catalog, date(2025, 1, 31), ["hypertension"], facility=HOME
    )
    other = programmes.facility_statuses(OTHER, "hypertension", AS_OF)
    assert other == statuses(store, programmes.catalog, AS_OF, ["hypertension"], facility=OTHER)
    assert {r.facility for r in other} == {OTHER}


def test_a_new_days_registries_are_ready_before_the_first_view(
    world: tuple[Store, Programmes, ClientRegistry],
) -> None:
    store, programmes, _ = world
    registries = programmes.registries
    day, next_day = date(2025, 3, 31), date(2025, 4, 1)
    programmes.facility_statuses(HOME, "hypertension", day)
    assert registries.warm(next_day) >= 1
    before = (registries.followed, registries.recomputed)
    ready = programmes.facility_statuses(HOME, "hypertension", next_day)
    assert (registries.followed, registries.recomputed) == before  # computed by warm
    assert ready == statuses(store, programmes.catalog, next_day, ["hypertension"], facility=HOME)


def test_the_background_warms_when_the_date_changes(
    world: tuple[Store, Programmes, ClientRegistry],
) -> None:
    store, _, _ = world
    programmes = Programmes(store)  # its own registries and thread
    programmes.attach()
    days = [date(2025, 5, 30)]
    programmes.facility_statuses(HOME, "hypertension", days[0])
    programmes.start_background(interval=0.05, today=lambda: days[0])
    try:
        days[0] = date(2025, 5, 31)
        deadline = time.monotonic() + 20
        while programmes.registries.recomputed < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert programmes.registries.recomputed == 2  # the first view, then the new day
    finally:
        programmes.stop()
