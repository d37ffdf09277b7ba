"""Collaborative-care registry speed (issue 15): the registry of 100,000 enrolled persons
(target <= 30 s on 2 cores), on PostgreSQL (or SQLite).

    python bench/mh_registry_bench.py [--base 5000] [--replicas 20] [--reuse]

How the rows are made: this script writes NDJSON files of FHIR resources for ``--base``
enrolled persons (seeded, deterministic): per person a Patient (one in ten has a second record
at another facility, linked to the same person in ``mpi_member`` as the client registry would),
a collaborative-care EpisodeOfCare with a care manager (85 %; one in five of those through a
CareTeam) or a depression/anxiety Condition (15 %, enrolled by the diagnosis-and-score rule),
a PHQ-9 series from enrolment to the as-of date (responders, partial responders,
non-responders, drop-outs) with GAD-7 for half of them, a finished Encounter for each score
and a few without one, suicide-risk Flags (3 %) and psychiatric reviews (2 %). The files are
stored by the ordinary bulk loader (``takamul.bulk.load.load_paths``: validation, index rows by
COPY), so the index tables hold what the server would have written. The stored rows (``resource``
and every ``sp_*`` index table) are then copied ``--replicas - 1`` more times inside PostgreSQL
(``INSERT ... SELECT`` with the row key shifted and the ids of the person's records, episodes,
teams and encounters suffixed ``.rK``, in the index rows and in the JSON), and the person links
likewise: bulk-loading 2.5 M resources one by one takes about 40 minutes on this machine, the
copy a few. ``resource_version`` is not copied (the registry does not read it). Writes
``bench/results/<date>-vm-mh-registry-postgresql.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource as rlimit
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import insert  # noqa: E402

from takamul.bulk.load import load_paths  # noqa: E402
from takamul.mentalhealth.registry import (  # noqa: E402
    CARE_PROGRAMME_SYSTEM,
    REVIEW_CODE,
    REVIEW_SYSTEM,
    registry,
)
from takamul.mpi.schema import mpi_member, mpi_metadata  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store.repository import Store  # noqa: E402
from takamul.store.schema import INDEX_TABLES  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
AS_OF = date(2025, 6, 30)
ORGS = 200
MANAGERS = 700  # about 150 persons per care manager
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def _ref(kind: str, rid: str) -> dict[str, str]:
    return {"reference": f"{kind}/{rid}"}


def _dt(day: date, minute: int) -> str:
    return f"{day.isoformat()}T{8 + minute // 60:02d}:{minute % 60:02d}:00+03:00"


class Writer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, IO[bytes]] = {}
        self.counts: Counter[str] = Counter()

    def emit(self, body: dict[str, Any]) -> None:
        kind = body["resourceType"]
        handle = self.files.get(kind)
        if handle is None:
            handle = self.files[kind] = (self.folder / f"{kind}.ndjson").open("wb")
        handle.write(orjson.dumps(body) + b"\n")
        self.counts[kind] += 1

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def generate(folder: Path, persons: int, seed: int) -> dict[str, str]:
    """Write the NDJSON files; return the person links (patient id -> person id)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w = Writer(folder)
    links: dict[str, str] = {}
    for o in range(ORGS):
        w.emit({"resourceType": "Organization", "id": f"org-{o}", "name": f"Facility {o}"})
    for m in range(MANAGERS):
        w.emit({"resourceType": "Practitioner", "id": f"cm-{m}"})
    for i in range(persons):
        pid, org = f"p{i}", f"org-{rng.randrange(ORGS)}"
        person = f"person-{i}"
        records = [pid]
        w.emit(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": rng.choice(("female", "male")),
                "birthDate": f"{rng.randint(1950, 2005)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                "managingOrganization": _ref("Organization", org),
            }
        )
        if rng.random() < 0.1:
            other = f"p{i}-b"
            records.append(other)
            w.emit(
                {
                    "resourceType": "Patient",
                    "id": other,
                    "gender": "female",
                    "managingOrganization": _ref("Organization", f"org-{rng.randrange(ORGS)}"),
                }
            )
        for r in records:
            links[r] = person
        enrolled = AS_OF - timedelta(days=rng.randint(0, 540))
        manager = f"cm-{rng.randrange(MANAGERS)}"
        if rng.random() < 0.85:
            episode: dict[str, Any] = {
                "resourceType": "EpisodeOfCare",
                "id": f"{pid}-eoc",
                "status": "active",
                "type": [
                    {"coding": [{"system": CARE_PROGRAMME_SYSTEM, "code": "collaborative-care"}]}
                ],
                "patient": _ref("Patient", pid),
                "managingOrganization": _ref("Organization", org),
                "period": {"start": enrolled.isoformat()},
            }
            if rng.random() < 0.2:
                team = f"{pid}-team"
                w.emit(
                    {
                        "resourceType": "CareTeam",
                        "id": team,
                        "subject": _ref("Patient", pid),
                        "participant": [{"member": _ref("Practitioner", manager)}],
                    }
                )
                episode["team"] = [_ref("CareTeam", team)]
            else:
                episode["careManager"] = _ref("Practitioner", manager)
            w.emit(episode)
        else:
            code = rng.choice(("35489007", "197480006"))
            w.emit(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-dx",
                    "code": {"coding": [{"system": SNOMED, "code": code}]},
                    "subject": _ref("Patient", pid),
                    "recordedDate": (enrolled - timedelta(days=rng.randint(0, 60))).isoformat(),
                }
            )
        # trajectory: the share of the baseline left at 12 weeks
        kind = rng.random()
        left = 0.2 if kind < 0.35 else 0.6 if kind < 0.7 else 1.0
        stop = AS_OF if rng.random() < 0.8 else enrolled + timedelta(days=rng.randint(20, 120))
        baseline = rng.randint(10, 24)
        gad = rng.random() < 0.5
        day, n = enrolled, 0
        while day <= min(stop, AS_OF):
            weeks = (day - enrolled).days / 7
            share = 1 - (1 - left) * min(1.0, weeks / 12)
            value = max(0, min(27, round(baseline * share + rng.gauss(0, 1.5))))
            record = records[n % len(records)]
            minute = rng.randrange(480)
            enc = f"{pid}-e{n}"
            w.emit(
                {
                    "resourceType": "Encounter",
                    "id": enc,
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                    },
                    "subject": _ref("Patient", record),
                    "period": {"start": _dt(day, minute), "end": _dt(day, minute + 20)},
                }
            )
            for code, v in (("44261-6", value), ("70274-6", max(0, min(21, value - 3)))):
                if code == "70274-6" and not gad:
                    continue
                w.emit(
                    {
                        "resourceType": "Observation",
                        "id": f"{pid}-{code}-{n}",
                        "status": "final",
                        "code": {"coding": [{"system": LOINC, "code": code}]},
                        "subject": _ref("Patient", record),
                        "encounter": _ref("Encounter", enc),
                        "effectiveDateTime": _dt(day, minute),
                        "valueInteger": v,
                    }
                )
            n += 1
            day += timedelta(days=rng.randint(14, 42))
        if rng.random() < 0.03:
            w.emit(
                {
                    "resourceType": "Flag",
                    "id": f"{pid}-flag",
                    "status": "active",
                    "code": {"coding": [{"system": SNOMED, "code": "225444004"}]},
                    "subject": _ref("Patient", pid),
                    "period": {"start": (AS_OF - timedelta(days=rng.randint(0, 90))).isoformat()},
                }
            )
        if rng.random() < 0.02:
            w.emit(
                {
                    "resourceType": "ClinicalImpression",
                    "id": f"{pid}-review",
                    "status": "completed",
                    "code": {"coding": [{"system": REVIEW_SYSTEM, "code": REVIEW_CODE}]},
                    "subject": _ref("Patient", pid),
                    "effectiveDateTime": _dt(AS_OF - timedelta(days=rng.randint(0, 60)), 60),
                    "assessor": _ref("Practitioner", "psy-1"),
                    "summary": "Synthetic benchmark recommendation.",
                }
            )
    w.close()
    (folder / "counts.json").write_bytes(orjson.dumps(dict(w.counts)))
    (folder / "links.json").write_bytes(orjson.dumps(links))
    return links


SHARED = ("Organization", "Practitioner")  # not copied: replicas share facilities and managers
SUFFIXED = ("Patient", "CareTeam", "Encounter", "EpisodeOfCare")


def replicate(store: Store, links: dict[str, str], replicas: int) -> None:
    """Copy the loaded rows ``replicas - 1`` times under new row keys and suffixed ids."""
    shared = ", ".join(f"'{t}'" for t in SHARED)
    suffixed = ", ".join(f"'{t}'" for t in SUFFIXED)
    pattern = '"(' + "|".join(SUFFIXED) + ')/([^"]+)"'
    with store.writer.begin() as conn:
        top = conn.exec_driver_sql("SELECT max(rid) FROM resource").scalar_one()
        columns = {
            table: [
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = "
                    f"'{table}' ORDER BY ordinal_position"
                )
            ]
            for table in (t.name for t in INDEX_TABLES.values())
        }
        for k in range(1, replicas):
            shift = k * top
            conn.exec_driver_sql(
                "INSERT INTO resource (rid, res_type, res_id, version, last_updated, deleted, "
                f"content) SELECT rid + {shift}, res_type, res_id || '.r{k}', version, "
                "last_updated, deleted, convert_to(regexp_replace(convert_from(content, 'UTF8'), "
                f"'{pattern}', '\"\\1/\\2.r{k}\"', 'g'), 'UTF8') FROM resource "
                f"WHERE rid <= {top} AND res_type NOT IN ({shared})"
            )
            for table, cols in columns.items():
                values = []
                for c in cols:
                    if c == "rid":
                        values.append(f"rid + {shift}")
                    elif c == "target_id":
                        values.append(
                            f"CASE WHEN target_type IN ({suffixed}) THEN target_id || '.r{k}' "
                            "ELSE target_id END"
                        )
                    elif table == "sp_token" and c == "code":
                        values.append(f"CASE WHEN param = '_id' THEN code || '.r{k}' ELSE code END")
                    else:
                        values.append(c)
                conn.exec_driver_sql(
                    f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(values)} "
                    f"FROM {table} WHERE rid <= {top} AND res_type NOT IN ({shared})"
                )
            conn.execute(
                insert(mpi_member),
                [
                    {
                        "patient_id": f"{p}.r{k}",
                        "person_id": f"{person}.r{k}",
                        "probability": 1.0,
                        "manual": False,
                        "updated": 0.0,
                    }
                    for p, person in links.items()
                ],
            )
            print(f"  replica {k + 1}/{replicas}", end="\r", flush=True)
        conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('resource', 'rid'), (SELECT max(rid) FROM "
            "resource))"
        )
    print()


def database(db: str, persons: int, reuse: bool) -> str:
    if db == "sqlite":
        path = WORK / f"mh-registry-{persons}.sqlite"
        if not reuse:
            for p in WORK.glob(f"mh-registry-{persons}.sqlite*"):
                p.unlink()
        return f"sqlite:///{path}"
    import psycopg

    name = f"takamul_bench_mh_registry_{persons}"
    if not reuse:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", type=int, default=5_000, help="persons generated and loaded")
    parser.add_argument("--replicas", type=int, default=20, help="copies of the loaded rows")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="bulk-load worker processes")
    parser.add_argument("--reuse", action="store_true", help="measure the store filled before")
    args = parser.parse_args()
    args.db = "postgresql"
    args.persons = args.base * args.replicas
    folder = WORK / f"mh-registry-{args.base}-{args.seed}"
    t0 = time.perf_counter()
    if not (folder / "links.json").is_file():
        generate(folder, args.base, args.seed)
    t_gen = time.perf_counter() - t0
    links: dict[str, str] = orjson.loads((folder / "links.json").read_bytes())
    counts: dict[str, int] = orjson.loads((folder / "counts.json").read_bytes())
    url = database(args.db, args.persons, args.reuse)
    store = Store(Settings(database_url=url, export_dir=WORK / "exports"))
    t0 = time.perf_counter()
    if not args.reuse:
        load_paths(
            store,
            sorted(folder.glob("*.ndjson")),
            WORK / "mh-registry-errors.ndjson",
            workers=args.workers,
        )
        mpi_metadata.create_all(store.writer)
        with store.writer.begin() as conn:
            conn.execute(
                insert(mpi_member),
                [
                    {"patient_id": p, "person_id": person, "probability": 1.0, "manual": False}
                    | {"updated": 0.0}
                    for p, person in links.items()
                ],
            )
        replicate(store, links, args.replicas)
        store.analyze()
    t_load = time.perf_counter() - t0
    times: list[float] = []
    rows: list[Any] = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        rows = registry(store, AS_OF)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    one = registry(store, AS_OF, care_manager="Practitioner/cm-7")
    t_caseload = time.perf_counter() - t0
    peak_mb = rlimit.getrusage(rlimit.RUSAGE_SELF).ru_maxrss / 1024
    store.close()
    by = Counter(r.status for r in rows)
    flags = Counter(
        f
        for r in rows
        for f, on in (
            ("needs_psychiatric_review", r.needs_psychiatric_review),
            ("overdue_contact", r.overdue_contact),
            ("safety", r.safety),
        )
        if on
    )
    now = datetime.now(UTC)
    load = os.getloadavg()
    lines = [
        f"# Collaborative-care registry: {len(rows):,} enrolled persons ({args.db})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (other engineers' work shares the machine)",
        f"- data: generated by this script ({args.base:,} persons, seed {args.seed}) as NDJSON, "
        f"stored by the bulk loader, the stored rows copied to {args.replicas} replicas in "
        "PostgreSQL (ids suffixed); person links written to `mpi_member`",
        "- target: the registry for 100,000 enrolled persons <= 30 s on 2 cores",
        f"- command: `python bench/mh_registry_bench.py --base {args.base} --replicas "
        f"{args.replicas}`",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| persons in the registry | {len(rows):,} |",
        f"| Patient records | {len(links) * args.replicas:,} |",
        *(
            f"| {k} resources | {v * (1 if k in SHARED else args.replicas):,} |"
            for k, v in sorted(counts.items())
        ),
        f"| generation (s, 0 if cached) | {t_gen:.0f} |",
        f"| bulk load and links (s) | {t_load:.0f} |",
        f"| registry as of {AS_OF} (s), each run | " + " / ".join(f"{t:.1f}" for t in times) + " |",
        f"| one care manager's caseload ({len(one)} persons, s) | {t_caseload:.2f} |",
        f"| peak memory of the process (MB) | {peak_mb:,.0f} |",
        "",
        "| status | persons |",
        "| --- | --- |",
        *(f"| {s} | {n:,} |" for s, n in sorted(by.items())),
        "",
        "| flag | persons |",
        "| --- | --- |",
        *(f"| {f} | {n:,} |" for f, n in sorted(flags.items())),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{now:%Y-%m-%d}-vm-mh-registry-{args.db}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
