"""What the guard costs in chained and reverse-chained searches (issue 11, finding 1).

Chains and ``_has`` are narrowed by the requester's guard for their inner type, and consent
is an SQL filter on the sensitivity labels added on write. This measures the price on a
synthetic population with access control on, on SQLite and PostgreSQL, for an administrator,
the ministry (both under consent: some patients have restricted their mental health data) and
a facility clinician (facility scoping and consent). Usage:
    python bench/guarded_search.py [--scale 10000] [--repeat 30] [--no-postgres]
Writes bench/results/<date>-<machine>-guarded-search-<scale>.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    RESULTS,
    WORK,
    Server,
    bulk_load,
    machine,
    ndjson_files,
    postgres_database,
    synthesize,
)
from takamul.security.service import Security  # noqa: E402

LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CONSENTS = 200  # patients who restricted their mental health data


def searches(family: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    return {
        "Patient?_has:Observation:subject:code=PHQ-9 total": (
            "Patient",
            [("_has:Observation:subject:code", f"{LOINC}|44261-6"), ("_count", "50")],
        ),
        "Patient?_has:Condition:subject:code=E11": (
            "Patient",
            [("_has:Condition:subject:code", f"{ICD10}|E11"), ("_count", "50")],
        ),
        "Observation?subject:Patient.family=<common>&code=blood pressure": (
            "Observation",
            [("subject:Patient.family", family), ("code", f"{LOINC}|85354-9"), ("_count", "50")],
        ),
        "Encounter?subject:Patient.birthdate=ge1990": (
            "Encounter",
            [("subject:Patient.birthdate", "ge1990-01-01"), ("_count", "50")],
        ),
    }


def common_family(files: list[Path]) -> str:
    path = next(f for f in files if f.name == "Patient.ndjson")
    counts: dict[str, int] = {}
    with path.open("rb") as fh:
        for i, line in enumerate(fh):
            for name in orjson.loads(line).get("name", []):
                if isinstance(name.get("family"), str):
                    counts[name["family"]] = counts.get(name["family"], 0) + 1
            if i > 5000:
                break
    return max(sorted(counts), key=lambda k: counts[k])


def restrict(admin: httpx.Client, files: list[Path]) -> None:
    """Consents of the first patients: mental health data only for a clinic."""
    path = next(f for f in files if f.name == "Patient.ndjson")
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    with path.open("rb") as fh:
        for i, line in enumerate(fh):
            if i >= CONSENTS:
                break
            pid = orjson.loads(line)["id"]
            consent = {
                "resourceType": "Consent",
                "status": "active",
                "scope": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy",
                        }
                    ]
                },
                "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
                "patient": {"reference": f"Patient/{pid}"},
                "provision": {
                    "type": "deny",
                    "securityLabel": [{"system": act, "code": "PSY"}],
                    "provision": [
                        {
                            "type": "permit",
                            "actor": [
                                {
                                    "role": {"text": "treating team"},
                                    "reference": {"reference": "Organization/mh-clinic"},
                                }
                            ],
                        }
                    ],
                },
            }
            r = admin.post("/Consent", json=consent)
            r.raise_for_status()


def first_facility(files: list[Path]) -> str:
    path = next(f for f in files if f.name == "Patient.ndjson")
    with path.open("rb") as fh:
        for line in fh:
            ref = orjson.loads(line).get("managingOrganization", {}).get("reference")
            if ref:
                return str(ref).split("/", 1)[1]
    raise SystemExit("no managing organization in the data")


def timed(call: Callable[[], httpx.Response], repeat: int) -> tuple[float, float, int]:
    times, found = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        r = call()
        times.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
        found = len(r.json().get("entry", []))
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], found


def measure(db_url: str, files: list[Path], repeat: int) -> dict[str, Any]:
    print(f"loading {db_url.split('@')[-1]} ...", flush=True)
    bulk_load(db_url, files)
    os.environ.update(
        {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "100000", "TAKAMUL_RATE_BURST": "100000"}
    )
    server = Server(db_url, 1)
    security = Security.open(db_url)
    try:

        def client(scopes: str, facility: str | None = None, roles: tuple[str, ...] = ()) -> Any:
            cid = f"bench-{time.time_ns()}"
            key = ECKey.generate_key("P-384")
            key.ensure_kid()
            jwks = {"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}
            security.clients.add(cid, "bench", jwks, scopes, facility, roles)
            token = security.tokens.mint(cid, scopes, server.base, lifetime=3600)
            return httpx.Client(
                base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=120
            )

        admin = client("system/*.cruds", roles=("administrator",))
        restrict(admin, files)
        guards = {
            "administrator": admin,
            "ministry (consent)": client("system/*.rs"),
            "facility clinician": client(
                "system/*.rs", facility=first_facility(files), roles=("clinician",)
            ),
        }
        out: dict[str, Any] = {}
        for label, (rtype, params) in searches(common_family(files)).items():
            for guard, http in guards.items():
                call = partial(http.get, f"/{rtype}", params=params)
                p50, p95, found = timed(call, repeat)
                out[f"{label} | {guard}"] = f"{p95:.1f} (p50 {p50:.1f}; {found} on page 1)"
                print(f"  {label} | {guard}: p95 {p95:.1f} ms", flush=True)
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    data, _ = synthesize(args.scale, args.seed)
    files = ndjson_files(data)
    sqlite_path = WORK / f"guarded-{args.scale}.sqlite"
    for p in WORK.glob(sqlite_path.name + "*"):
        p.unlink()
    columns = {"SQLite": measure(f"sqlite:///{sqlite_path}", files, args.repeat)}
    if not args.no_postgres:
        with postgres_database() as url:
            columns["PostgreSQL"] = measure(url, files, args.repeat)
    load = os.getloadavg()[0]
    now = datetime.now(UTC)
    lines = [
        f"# Guarded chained and reverse-chained search, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine()}; 1-minute load average at the end {load:.1f}",
        f"- data: synthetic population, Saudi Arabia, {args.scale:,} persons, seed {args.seed};"
        f" {CONSENTS} patients restricted mental health data (Consent); access control on;"
        f" one server process; {args.repeat} requests per cell, sequential",
        "- each cell: p95 latency in ms (p50; entries on the first page)",
        "",
        "| search | guard | " + " | ".join(columns) + " |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    first = next(iter(columns.values()))
    for key in first:
        search, guard = key.split(" | ")
        cells = " | ".join(str(c.get(key, "")) for c in columns.values())
        lines.append(f"| `{search}` | {guard} | {cells} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{now:%Y-%m-%d}-vm-guarded-search-{args.scale}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
