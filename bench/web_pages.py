"""The web application's speed targets (issue 13), measured over HTTP against a running server:

- the patient record page of a patient with about 1,000 resources renders (server side) with
  p95 <= 300 ms;
- as-you-type patient search (the htmx fragment) answers with p95 <= 150 ms;

with a large store (the target is the 1,000,000-Patient store; ``--persons`` sets the size).

    python bench/web_pages.py [--persons 45000] [--db sqlite|postgresql] [--requests 200]

Steps: synthesise a Saudi population (Patients and Organizations are loaded), add one patient
with ~1,000 resources at the clinician's facility, bulk-load into a fresh store, start
``takamul serve`` with access control on (the registry indexes every Patient at start-up),
sign in as a clinician of that facility, then time the record page and searches typed as
prefixes of real names (2 to 6 letters of a given name, then given + family). Writes
``bench/results/<date>-vm-web-<patients>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench-web-password-1"
LOINC = "http://loinc.org"


def synth(persons: int, seed: int) -> Path:
    out = WORK / f"web-synth-SA-{persons}-{seed}"
    if not (out / "Patient.ndjson").is_file():
        command = [sys.executable, "-m", "takamul.cli", "synth", "--country", "SA"]
        command += ["--patients", str(persons), "--seed", str(seed), "--years", "1"]
        subprocess.run([*command, "--out", str(out)], check=True, cwd=ROOT)
    return out


def heavy_patient(out: Path, org: str, resources: int) -> Path:
    """One patient at ``org`` with ``resources`` resources: a long-followed diabetic."""
    pid = "bench-heavy-patient"
    rows: list[dict[str, Any]] = [
        {
            "resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1961-05-02",
            "name": [{"given": ["نورة"], "family": "القحطاني"}],
            "managingOrganization": {"reference": f"Organization/{org}"},
        }
    ]  # fmt: skip
    ref = {"reference": f"Patient/{pid}"}
    rng = random.Random(7)
    n = 0
    while len(rows) < resources:
        day = f"{2000 + n // 40:04d}-{1 + n % 12:02d}-{1 + n % 28:02d}"
        kind = n % 5
        if kind == 0:
            rows.append({
                "resourceType": "Encounter", "id": f"bench-enc-{n}", "status": "finished",
                "class": {"code": "AMB"}, "subject": ref, "period": {"start": day},
                "serviceProvider": {"reference": f"Organization/{org}"},
            })  # fmt: skip
        elif kind in (1, 2):
            rows.append({
                "resourceType": "Observation", "id": f"bench-bp-{n}", "status": "final",
                "subject": ref, "effectiveDateTime": day,
                "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
                "component": [
                    {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                     "valueQuantity": {"value": rng.randint(110, 170), "unit": "mmHg"}},
                    {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                     "valueQuantity": {"value": rng.randint(65, 100), "unit": "mmHg"}},
                ],
            })  # fmt: skip
        elif kind == 3:
            rows.append({
                "resourceType": "Observation", "id": f"bench-a1c-{n}", "status": "final",
                "subject": ref, "effectiveDateTime": day,
                "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
                "valueQuantity": {"value": round(rng.uniform(6, 10), 1), "unit": "%"},
            })  # fmt: skip
        else:
            rows.append({
                "resourceType": "MedicationRequest", "id": f"bench-med-{n}", "status": "active",
                "intent": "order", "subject": ref, "authoredOn": day,
                "medicationCodeableConcept": {"text": "Metformin 500 mg"},
            })  # fmt: skip
        n += 1
    path = out / "heavy-patient.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def database(kind: str, persons: int, reuse: bool = False) -> str:
    if kind == "sqlite":
        path = WORK / f"web-{persons}.sqlite"
        for p in WORK.glob(f"web-{persons}.sqlite*"):
            if not reuse:
                p.unlink()
        return f"sqlite:///{path}"
    import psycopg

    name = f"takamul_bench_web_{persons}"
    if reuse:
        return f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=45_000)
    parser.add_argument("--seed", type=int, default=3001)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument(
        "--reuse", action="store_true", help="measure on the store a previous run loaded"
    )
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    t = time.perf_counter()
    population = synth(args.persons, args.seed)
    figures["synthesis (s, cached if ~0)"] = f"{time.perf_counter() - t:.0f}"
    names = [orjson.loads(line) for line in (population / "Patient.ndjson").open("rb")]
    org = next(
        ref.split("/", 1)[1]
        for p in names
        if (ref := (p.get("managingOrganization") or {}).get("reference", "")).startswith(
            "Organization/"
        )
    )
    heavy = heavy_patient(population, org, args.resources)
    db = database(args.db, args.persons, args.reuse)
    t = time.perf_counter()
    files = [population / "Organization.ndjson", population / "Patient.ndjson", heavy]
    if not args.reuse:
        subprocess.run(
            [sys.executable, "-m", "takamul.cli", "load", *map(str, files), "--db", db,
             "--errors", str(WORK / "web-load-errors.ndjson")],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        figures["bulk load (s)"] = f"{time.perf_counter() - t:.0f}"
    figures["Patients stored"] = f"{len(names) + 1:,}"

    sys.path.insert(0, str(ROOT / "src"))
    from takamul.security.service import Security

    security = Security.open(db)
    if security.users.get("bench-clinician") is None:
        security.users.add("bench-clinician", PASSWORD, ["clinician"], org, "Bench clinician")
    port = free_port()
    env = {**os.environ, "TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "0"}
    t = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "takamul.cli", "serve", "--db", db, "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{root}/fhir/metadata", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit("the server exited")
            time.sleep(1)
        figures["server start-up with the registry (s)"] = f"{time.perf_counter() - t:.0f}"
        measure(root, names, args.requests, figures)
    finally:
        server.terminate()
        server.wait(30)
    write(args, figures)


def measure(root: str, names: list[dict[str, Any]], requests: int, figures: dict[str, str]) -> None:
    client = httpx.Client(base_url=root, timeout=60)
    r = client.post(
        "/app/login",
        data={"username": "bench-clinician", "password": PASSWORD, "next": "/app/"},
    )
    assert r.status_code == 303, r.text
    record: list[float] = []
    for _ in range(max(requests // 4, 20) + 3):
        t = time.perf_counter()
        got = client.get("/app/patients/bench-heavy-patient")
        record.append((time.perf_counter() - t) * 1000)
        assert got.status_code == 200, got.status_code
    record = record[3:]  # warm-up
    figures["record page, ~1,000 resources: p50 / p95 (ms)"] = (
        f"{pct(record, 0.5):.0f} / {pct(record, 0.95):.0f}"
    )
    figures["record page size (KB)"] = f"{len(got.content) / 1024:.0f}"
    rng = random.Random(11)
    typed: list[str] = []
    while len(typed) < requests:
        p = rng.choice(names)
        name = (p.get("name") or [{}])[0]
        given = ((name.get("given") or [""])[0]) or ""
        family = name.get("family") or ""
        if not given:
            continue
        k = rng.randint(2, 6)
        typed.append(given[:k] if rng.random() < 0.5 else f"{given} {family[:k]}")
    search: list[float] = []
    hits = 0
    for text in typed:
        t = time.perf_counter()
        got = client.get("/app/patients/results", params={"q": text})
        search.append((time.perf_counter() - t) * 1000)
        assert got.status_code == 200
        hits += "/app/patients/" in got.text
    figures["as-you-type search: p50 / p95 / p99 (ms)"] = (
        f"{pct(search, 0.5):.0f} / {pct(search, 0.95):.0f} / {pct(search, 0.99):.0f}"
    )
    figures["searches with a result"] = f"{hits / len(typed):.0%}"


def write(args: argparse.Namespace, figures: dict[str, str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    load = os.getloadavg()
    patients = figures["Patients stored"].replace(",", "")
    out = RESULTS / f"{now:%Y-%m-%d}-vm-web-{args.db}-{patients}.md"
    lines = [
        f"# Web application pages: {figures['Patients stored']} Patients stored ({args.db})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        f"- data: takamul synth, Saudi Arabia, {args.persons:,} persons, seed {args.seed}; one "
        f"patient with {args.resources:,} resources at the clinician's facility",
        "- targets: record page p95 <= 300 ms; as-you-type search p95 <= 150 ms "
        "(with the 1,000,000-Patient store)",
        f"- command: `python bench/web_pages.py --persons {args.persons} --db {args.db} "
        f"--requests {args.requests}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in figures.items()],
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
