"""The client registry behind ``takamul serve --workers 4``, on SQLite and PostgreSQL: many
clients register the same people at once, each request on a connection of its own so the
registrations land on different server processes, and every person still ends with one golden
record holding all of its registrations (issue 17: one person, one golden record). With the
candidate index in each process's memory and in the store's tables (``TAKAMUL_REGISTRY_INDEX``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from takamul.synth.people import luhn_digit
from tests.server import ROOT, postgres_database, running_server

GOLDEN = "https://takamul.health/fhir/CodeSystem/client-registry|golden-record"
SA_ID = "https://takamul.health/fhir/sid/sa-national-id"
BACKENDS = ["sqlite", "postgresql"]
WORKERS = 4
CLIENTS = 8
# every request on a new connection, so the kernel hands them to any of the workers
CLOSE = {"Connection": "close", "Accept": "application/fhir+json"}

# (given names, family names) as facilities write them: each spelling of one person carries
# the same national ID and birth date, which the model links with certainty.
PEOPLE: list[tuple[list[str], list[str], str]] = [
    (["Mohammed", "Muhammad", "محمد", "Mohamed"], ["Al-Qahtani", "القحطاني"], "male"),
    (["Abdulrahman", "Abdul Rahman", "عبد الرحمن"], ["Al-Dosari", "الدوسري"], "male"),
    (["Fatimah", "Fatima", "فاطمة"], ["Al-Harbi", "الحربي"], "female"),
    (["Khalid", "Khaled", "خالد"], ["Al-Shammari", "الشمري"], "male"),
    (["Noura", "Nora", "نورة"], ["Al-Ghamdi", "الغامدي"], "female"),
    (["Saad", "Sa'ad", "سعد"], ["Al-Mutairi", "المطيري"], "male"),
]
REGISTRATIONS = 8  # of each of those people, from as many facilities
# people registered once: they must stay persons of their own
SINGLES: list[tuple[str, str, str]] = [
    ("Turki", "Al-Anazi", "male"),
    ("Reem", "Al-Zahrani", "female"),
    ("Yousef", "Al-Otaibi", "male"),
]


def _luhn_id(rng: random.Random) -> str:
    """A valid Saudi national ID (10 digits, Luhn check digit)."""
    body = "1" + "".join(rng.choices("0123456789", k=8))
    return body + luhn_digit(body)


def _patient(
    given: str, family: str, born: str, gender: str, nid: str, facility: int
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": SA_ID, "value": nid},
            {
                "system": f"https://takamul.health/fhir/sid/mrn/facility-{facility}",
                "value": f"MRN-{nid}-{facility}",
            },
        ],
        "name": [{"given": [given], "family": family}],
        "gender": gender,
        "birthDate": born,
    }


def registrations() -> list[tuple[str, dict[str, Any]]]:
    """(person key, Patient) for every registration, interleaved as arrivals would be."""
    rng = random.Random(17)
    out: list[tuple[str, dict[str, Any]]] = []
    for n, (givens, families, gender) in enumerate(PEOPLE):
        nid, born = _luhn_id(rng), f"{1950 + 7 * n}-0{1 + n}-1{n}"
        for facility in range(REGISTRATIONS):
            given, family = givens[facility % len(givens)], families[facility % len(families)]
            out.append((nid, _patient(given, family, born, gender, nid, facility)))
    for n, (given, family, gender) in enumerate(SINGLES):
        nid = _luhn_id(rng)
        out.append((nid, _patient(given, family, f"{1941 + 11 * n}-1{n}-2{n}", gender, nid, 0)))
    rng.shuffle(out)
    return out


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty store of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'takamul.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(params=["memory", "store"])
def index_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Where the registry's candidate index lives (``Settings.registry_index``)."""
    return {"TAKAMUL_REGISTRY_INDEX": request.param}


@pytest.fixture
def workers_base(store_url: str, index_env: dict[str, str]) -> Iterator[str]:
    """A ``takamul serve --workers 4`` on a new store of each kind."""
    with running_server(store_url, env=index_env, workers=WORKERS) as base:
        yield base


def _register_all(base: str, work: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """POST every registration from CLIENTS threads started together; patient id -> person key."""
    start = threading.Barrier(CLIENTS)
    shares = [work[i::CLIENTS] for i in range(CLIENTS)]

    def client(share: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
        start.wait()
        done = []
        for key, body in share:
            r = httpx.post(f"{base}/Patient", json=body, headers=CLOSE, timeout=120)
            assert r.status_code == 201, r.text
            done.append((str(r.json()["id"]), key))
        return done

    with ThreadPoolExecutor(CLIENTS) as pool:
        return {pid: key for result in pool.map(client, shares) for pid, key in result}


def _golden_records(base: str) -> dict[str, set[str]]:
    """Every golden Person the registry keeps: person id -> its linked Patient ids."""
    out: dict[str, set[str]] = {}
    url: str | None = f"{base}/Person?_count=500&_tag={GOLDEN}"
    while url:
        bundle = httpx.get(url, headers=CLOSE, timeout=60).json()
        for entry in bundle.get("entry", []):
            person = entry["resource"]
            links = {x["target"]["reference"].removeprefix("Patient/") for x in person["link"]}
            out[person["id"]] = links
        url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
    return out


def test_four_workers_registering_one_person_at_once_make_one_golden_record(
    workers_base: str,
) -> None:
    work = registrations()
    person_key = _register_all(workers_base, work)
    assert len(person_key) == len(work)
    expected: dict[str, set[str]] = {}
    for pid, key in person_key.items():
        expected.setdefault(key, set()).add(pid)

    golden = _golden_records(workers_base)
    # one golden record per real person, holding exactly that person's registrations
    assert sorted(map(sorted, golden.values())) == sorted(map(sorted, expected.values()))
    assert len(golden) == len(PEOPLE) + len(SINGLES)
    person_of = {pid: person for person, members in golden.items() for pid in members}

    # every worker answers from the same registry: ask each registration on a new connection
    root = workers_base.rsplit("/fhir", 1)[0]
    for pid, key in sorted(person_key.items()):
        r = httpx.get(f"{root}/mpi/patients/{pid}", headers=CLOSE, timeout=60)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["person"] == f"Person/{person_of[pid]}"
        assert answer["members"] == sorted(f"Patient/{p}" for p in expected[key])


def test_four_workers_starting_on_a_bulk_load_link_it_once(
    store_url: str, index_env: dict[str, str], tmp_path: Path
) -> None:
    """Registrations bulk-loaded (no write hooks, so no person yet) are linked when the server
    starts: four workers starting together take turns, so the first links them and the others
    load its persons instead of making persons of their own."""
    work = registrations()
    path = tmp_path / "Patient.ndjson"
    ids = {f"loaded-{n}": key for n, (key, _) in enumerate(work)}
    path.write_bytes(
        b"".join(
            orjson.dumps({**body, "id": f"loaded-{n}"}) + b"\n" for n, (_, body) in enumerate(work)
        )
    )
    command = [sys.executable, "-m", "takamul.cli", "load", str(path), "--db", store_url]
    loaded = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **index_env},
    )
    assert loaded.returncode == 0, loaded.stderr
    expected: dict[str, set[str]] = {}
    for pid, key in ids.items():
        expected.setdefault(key, set()).add(pid)
    with running_server(store_url, env=index_env, workers=WORKERS) as base:
        golden = _golden_records(base)
        assert sorted(map(sorted, golden.values())) == sorted(map(sorted, expected.values()))
        root = base.rsplit("/fhir", 1)[0]
        for pid in sorted(ids)[:12]:  # any worker answers alike
            r = httpx.get(f"{root}/mpi/patients/{pid}", headers=CLOSE, timeout=60)
            assert r.status_code == 200, r.text
            assert set(r.json()["members"]) == {f"Patient/{p}" for p in expected[ids[pid]]}
