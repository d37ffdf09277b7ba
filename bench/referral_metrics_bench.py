"""Referral loop metrics speed (issue 16): ``takamul referrals metrics`` for 1,000,000 persons
(target <= 60 s on 2 cores), on SQLite or PostgreSQL.

    python bench/referral_metrics_bench.py [--persons 1000000] [--db sqlite|postgresql] [--reuse]

What the store holds: ``--persons`` Patients (one per person) at their home facilities, the
facility network's Organizations (typed as the synthetic population types them: "Rural Health
House", "Primary Health Care Centre", hospitals, mental health centres) and ``--years`` of
referrals made before the as-of date D: a ServiceRequest and its referral Task per referral,
and a consult note (DocumentReference) in ``Task.output`` for the completed ones with feedback.

How many referrals: 0.342 per person per year by default (``--rate``). Barnett, Song and Landon
(Trends in Physician Referrals in the United States, 1999-2009; Arch Intern Med
2012;172(2):163-170, doi:10.1001/archinternmed.2011.722) count 105 million ambulatory visits
resulting in a referral in 2009, for a US population of about 307 million that year (US Census
Bureau estimate): 342 per 1,000 persons. That is four times the synthetic generator's rate
(8 % of persons referred in a year, and their onward and back-referrals), so the benchmark
errs on the heavy side.

How each referral went follows the synthetic generator's configuration
(``src/takamul/synth/data/default-config.json``, ``referrals``: answered after 0-10 days,
accepted 82 %, rejected 6 %, cancelled 4 %, unanswered 8 %; once accepted, completed 43 %,
failed 30 %, in progress 20 %, on hold 7 % after 3-45 days; feedback on 40 % of the completed),
cut at D. Unlike a bulk load, every Task keeps the versions the API would have written, one per
status change (requested, accepted, in-progress, then completed, failed or on-hold), each dated
by its ``lastModified`` and ``meta.lastUpdated``: the metrics read every version.

The rows are written straight to the store's tables by this script (resource, every version,
and the search-index rows the server extracts: ``takamul.store.bulkwrite.prepare``), COPY on
PostgreSQL, executemany on SQLite: building the store is not what is timed. What is timed is the
command itself, ``python -m takamul.cli referrals metrics --db URL --as-of D --out FILE
--overdue FILE``, a fresh process each run (start-up included). Writes
``bench/results/<date>-referral-metrics-<db>.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import resource as rlimit
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.fhir.search_values import SearchIndexer  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store.bulkwrite import PreparedResource, prepare  # noqa: E402
from takamul.store.indexing import VALUE_COLUMNS  # noqa: E402
from takamul.store.records import instant  # noqa: E402
from takamul.store.repository import Store  # noqa: E402
from takamul.store.schema import INDEX_TABLES  # noqa: E402
from takamul.synth.referrals import (  # noqa: E402
    REFERRAL_TYPE_SYSTEM,
    REFERRAL_TYPES,
    TASK_CODE_SYSTEM,
)

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
AS_OF = date(2026, 11, 30)
TZ = "+03:30"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
# referrals per person per year: 105 million referral visits / about 307 million persons, US 2009
# (Barnett, Song, Landon, Arch Intern Med 2012)
RATE = 0.342
# facilities per 1,000,000 persons: (kind, Organization.type text, count)
NETWORK = (
    ("hh", "Rural Health House", 250),
    ("phc", "Primary Health Care Centre", 100),
    ("gh", "General Hospital", 12),
    ("sh", "Specialist Hospital", 6),
    ("mhc", "Mental Health Centre", 4),
)
# the routes of primary care and their share of the referrals (modelling values)
ROUTES = (
    ("hh", "phc", "consultation", 0.30),
    ("phc", "gh", "consultation", 0.25),
    ("phc", "sh", "consultation", 0.20),
    ("phc", "mhc", "consultation", 0.10),
    ("gh", "phc", "back-referral", 0.10),
    ("sh", "phc", "back-referral", 0.05),
)
# the synthetic generator's configuration (default-config.json, "referrals")
FIRST_ANSWER = (("accepted", 0.82), ("rejected", 0.06), ("cancelled", 0.04), ("unanswered", 0.08))
AFTER_ACCEPTANCE = (("completed", 0.43), ("failed", 0.30), ("in-progress", 0.20), ("on-hold", 0.07))
FEEDBACK_OF_COMPLETED = 0.40
BATCH = 5_000


def _ref(kind: str, rid: str) -> dict[str, str]:
    return {"reference": f"{kind}/{rid}"}


def _cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    x, total = rng.random(), 0.0
    for name, share in weighted:
        total += share
        if x < total:
            return name
    return weighted[-1][0]


@dataclass(slots=True)
class Item:
    """One resource: its current version prepared (content and index rows) and its history."""

    current: PreparedResource
    history: list[tuple[float, bytes]] = field(default_factory=list)  # (last_updated, content)


def _moment(day: date, rng: random.Random) -> tuple[str, float]:
    minute = 8 * 60 + rng.randrange(9 * 60)
    text = f"{day.isoformat()}T{minute // 60:02d}:{minute % 60:02d}:00{TZ}"
    return text, datetime.fromisoformat(text).timestamp()


class Builder:
    """Makes the population's resources, seeded, in batches ready for the tables."""

    def __init__(self, persons: int, years: int, rate: float, seed: int) -> None:
        self.persons, self.years, self.rate = persons, years, rate
        self.rng = random.Random(seed)
        self.indexer = SearchIndexer()
        scale = max(1.0, persons / 1_000_000)
        self.facilities = {
            kind: [f"org-{kind}-{i}" for i in range(max(1, round(n * scale)))]
            for kind, _, n in NETWORK
        }
        self.counts: Counter[str] = Counter()
        self.task_versions = 0

    def _item(self, body: dict[str, Any], when: float) -> PreparedResource:
        self.counts[body["resourceType"]] += 1
        return prepare(body, self.indexer, False, "bench", when)

    def organizations(self) -> list[Item]:
        now = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
        out = []
        for kind, label, _ in NETWORK:
            for i, oid in enumerate(self.facilities[kind]):
                body = {
                    "resourceType": "Organization",
                    "id": oid,
                    "active": True,
                    "type": [{"text": label}],
                    "name": f"{label} {i + 1}",
                }
                out.append(Item(self._item(body, now)))
        return out

    def patients(self) -> Iterator[list[Item]]:
        now = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
        homes = self.facilities["hh"] + self.facilities["phc"]
        batch: list[Item] = []
        for i in range(self.persons):
            rng = self.rng
            body = {
                "resourceType": "Patient",
                "id": f"p{i}",
                "gender": "female" if rng.random() < 0.5 else "male",
                "birthDate": f"{rng.randint(1935, 2025)}-{rng.randint(1, 12):02d}-"
                f"{rng.randint(1, 28):02d}",
                "managingOrganization": _ref("Organization", rng.choice(homes)),
            }
            batch.append(Item(self._item(body, now)))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def referrals(self) -> Iterator[list[Item]]:
        total = round(self.persons * self.rate * self.years)
        days = 365 * self.years
        batch: list[Item] = []
        for n in range(total):
            batch += self._referral(n, AS_OF - timedelta(days=self.rng.randrange(days)))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _referral(self, n: int, made: date) -> list[Item]:
        rng = self.rng
        x, total = rng.random(), 0.0
        route = ROUTES[-1]
        for r in ROUTES:
            total += r[3]
            if x < total:
                route = r
                break
        source, target, kind, _ = route
        requester = _ref("Organization", rng.choice(self.facilities[source]))
        owner = _ref("Organization", rng.choice(self.facilities[target]))
        patient = _ref("Patient", f"p{rng.randrange(self.persons)}")
        authored, authored_at = _moment(made, rng)
        sr_id, task_id = f"rfsr-{n}", f"rftask-{n}"
        items: list[Item] = []
        course = self._course(made)
        final_status = course[-1][0]
        request = {
            "resourceType": "ServiceRequest",
            "id": sr_id,
            "status": {"completed": "completed", "rejected": "revoked", "cancelled": "revoked"}.get(
                final_status, "active"
            ),
            "intent": "order",
            "category": [_cc(SNOMED, "3457005", "Patient referral")],
            "code": _cc(REFERRAL_TYPE_SYSTEM, kind, REFERRAL_TYPES[kind]),
            "subject": patient,
            "authoredOn": authored,
            "requester": requester,
            "performer": [owner],
        }
        items.append(Item(self._item(request, authored_at)))
        task: dict[str, Any] = {
            "resourceType": "Task",
            "id": task_id,
            "status": "requested",
            "intent": "order",
            "code": _cc(TASK_CODE_SYSTEM, "fulfill", "Fulfill the focal request"),
            "focus": _ref("ServiceRequest", sr_id),
            "for": patient,
            "authoredOn": authored,
            "lastModified": authored,
            "requester": requester,
            "owner": owner,
        }
        versions: list[tuple[float, dict[str, Any]]] = [(authored_at, dict(task))]
        for status, day in course[1:]:
            stamp, at = _moment(day, rng)
            task = dict(task, status=status, lastModified=stamp)
            if status == "in-progress":
                task["executionPeriod"] = {"start": day.isoformat()}
            if status in ("completed", "failed"):
                task["executionPeriod"] = dict(
                    task.get("executionPeriod") or {}, end=day.isoformat()
                )
            if status == "completed" and rng.random() < FEEDBACK_OF_COMPLETED:
                note = {
                    "resourceType": "DocumentReference",
                    "id": f"rfdoc-{n}",
                    "status": "current",
                    "type": _cc(LOINC, "11488-4", "Consult note"),
                    "subject": patient,
                    "date": stamp,
                    "author": [owner],
                    "content": [
                        {"attachment": {"contentType": "text/plain", "title": "Consult note"}}
                    ],
                }
                items.append(Item(self._item(note, at)))
                task["output"] = [
                    {
                        "type": {"text": "feedback"},
                        "valueReference": _ref("DocumentReference", f"rfdoc-{n}"),
                    }
                ]
            versions.append((at, task))
        items.append(self._history(versions))
        return items

    def _history(self, versions: list[tuple[float, dict[str, Any]]]) -> Item:
        """The Task as the API would have left it: one version per status change."""
        history = []
        for number, (at, body) in enumerate(versions, start=1):
            meta = {"versionId": str(number), "lastUpdated": instant(at), "source": "bench"}
            rest = {k: v for k, v in body.items() if k not in ("resourceType", "id")}
            history.append(
                (at, orjson.dumps({"resourceType": "Task", "id": body["id"], "meta": meta, **rest}))
            )
        at, last = versions[-1]
        current = self._item(last, at)
        current.content = history[-1][1]
        self.task_versions += len(history)
        return Item(current, history)

    def _course(self, made: date) -> list[tuple[str, date]]:
        """The statuses the referral went through, with their days, cut at D."""
        rng = self.rng
        course = [("requested", made)]
        answer = _pick(rng, FIRST_ANSWER)
        answered = made + timedelta(days=rng.randint(0, 10))
        if answer == "unanswered" or answered > AS_OF:
            return course
        course.append((answer, answered))
        if answer != "accepted":
            return course
        started = answered + timedelta(days=rng.randint(0, 3))
        if started > AS_OF:
            return course
        course.append(("in-progress", started))
        fate = _pick(rng, AFTER_ACCEPTANCE)
        moved = answered + timedelta(days=rng.randint(3, 45))
        if fate != "in-progress" and moved <= AS_OF and moved >= started:
            course.append((fate, moved))
        return course


class Tables:
    """Writes items straight to the store's tables (row keys assigned here)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.postgres = store.dialect == "postgresql"
        self.conn = store.writer.raw_connection()
        self.rid = 0

    def write(self, items: list[Item]) -> None:
        resources, versions = [], []
        index: dict[str, list[tuple[Any, ...]]] = {}
        for item in items:
            self.rid += 1
            p = item.current
            history = item.history or [(p.last_updated, p.content)]
            resources.append(
                (self.rid, p.resource_type, p.id, len(history), history[-1][0], False, p.content)
            )
            for number, (at, content) in enumerate(history, start=1):
                method = "POST" if number == 1 else "PUT"
                versions.append(
                    (self.rid, p.resource_type, p.id, number, at, method, False, content)
                )
            for kind, rows in p.index.items():
                index.setdefault(kind, []).extend((self.rid, *row) for row in rows)
        cursor = self.conn.cursor()
        if not self.postgres:
            cursor.execute("BEGIN")  # the store's SQLite connections are in autocommit mode
        self._put(cursor, "resource", RESOURCE_COLUMNS, resources)
        self._put(cursor, "resource_version", VERSION_COLUMNS, versions)
        for kind, rows in index.items():
            columns = ("rid", "res_type", "param", *VALUE_COLUMNS[kind])
            self._put(cursor, INDEX_TABLES[kind].name, columns, rows)
        if not self.postgres:
            cursor.execute("COMMIT")
        cursor.close()
        self.conn.commit()

    def _put(self, cursor: Any, table: str, columns: tuple[str, ...], rows: list[Any]) -> None:
        if self.postgres:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in columns)
            cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def close(self) -> None:
        if self.postgres:
            cursor = self.conn.cursor()
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('resource', 'rid'), (SELECT max(rid) FROM "
                "resource))"
            )
            cursor.close()
            self.conn.commit()
        self.conn.close()


RESOURCE_COLUMNS = ("rid", "res_type", "res_id", "version", "last_updated", "deleted", "content")
VERSION_COLUMNS = (
    "rid",
    "res_type",
    "res_id",
    "version",
    "last_updated",
    "method",
    "deleted",
    "content",
)


def database(kind: str, persons: int, reuse: bool) -> str:
    label = f"{persons // 1_000_000}m" if persons % 1_000_000 == 0 else str(persons)
    if kind == "sqlite":
        path = WORK / f"referrals-{label}.sqlite"
        if not reuse:
            for p in WORK.glob(f"referrals-{label}.sqlite*"):
                p.unlink()
        return f"sqlite:///{path}"
    import psycopg

    name = f"takamul_bench_referrals_{label}"
    if not reuse:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def build(url: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    store = Store(Settings(database_url=url, export_dir=WORK / "exports"))
    builder = Builder(args.persons, args.years, args.rate, args.seed)
    tables = Tables(store)
    tables.write(builder.organizations())
    for n, batch in enumerate(builder.patients(), start=1):
        tables.write(batch)
        print(f"  patients {n * BATCH:,}", end="\r", flush=True)
    print()
    for batch in builder.referrals():
        tables.write(batch)
        print(f"  resources {sum(builder.counts.values()):,}", end="\r", flush=True)
    print()
    tables.close()
    store.analyze()
    store.close()
    facts = {
        "counts": dict(builder.counts),
        "task_versions": builder.task_versions,
        "build_seconds": time.perf_counter() - started,
    }
    (WORK / f"referrals-{args.db}-{args.persons}.json").write_bytes(orjson.dumps(facts))
    return facts


def _children_cpu() -> float:
    used = rlimit.getrusage(rlimit.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measure(url: str, runs: int, extra: list[str]) -> tuple[list[tuple[float, float]], Path, Path]:
    """(wall, CPU of the command) seconds per run; the CPU is the command's own (user + system),
    not the database server's: on a shared machine the wall time says how busy it was too."""
    out = WORK / "referral-metrics.csv"
    overdue = WORK / "referral-overdue.csv"
    command = [sys.executable, "-m", "takamul.cli", "referrals", "metrics", "--db", url]
    command += ["--as-of", AS_OF.isoformat(), "--out", str(out), "--overdue", str(overdue)]
    times = []
    for _ in range(runs):
        t0, cpu0 = time.perf_counter(), _children_cpu()
        subprocess.run([*command, *extra], check=True, cwd=ROOT)
        times.append((time.perf_counter() - t0, _children_cpu() - cpu0))
    return times, out, overdue


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--years", type=int, default=2, help="years of referrals stored before D")
    parser.add_argument("--rate", type=float, default=RATE, help="referrals per person per year")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--by-runs", type=int, default=1, help="runs with --by all (0: none)")
    parser.add_argument("--reuse", action="store_true", help="measure the store built before")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    url = database(args.db, args.persons, args.reuse)
    t0 = time.perf_counter()
    if args.reuse:
        facts = orjson.loads((WORK / f"referrals-{args.db}-{args.persons}.json").read_bytes())
    else:
        facts = build(url, args)
    t_build = 0.0 if args.reuse else time.perf_counter() - t0
    times, out, overdue = measure(url, args.runs, [])
    by_times = measure(url, args.by_runs, ["--by", "all"])[0] if args.by_runs else []
    write(args, facts, t_build, times, by_times, out, overdue)


def write(
    args: argparse.Namespace,
    facts: dict[str, Any],
    t_build: float,
    times: list[tuple[float, float]],
    by_times: list[tuple[float, float]],
    out: Path,
    overdue: Path,
) -> None:
    """This store's section of ``<date>-referral-metrics.md`` (the other store's kept)."""
    now = datetime.now(UTC)
    path = RESULTS / f"{now:%Y-%m-%d}-referral-metrics.md"
    sections = _sections(path)
    sections[args.db] = _section(args, facts, t_build, times, by_times, out, overdue, now)
    head = [
        "# Referral loop metrics for 1,000,000 persons",
        "",
        "- target: `takamul referrals metrics` for 1,000,000 persons <= 60 s on 2 cores (issue 16)",
        f"- how the store is made and why this many referrals: `bench/{Path(__file__).name}`'s "
        "docstring",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    body = [sections[k] for k in ("sqlite", "postgresql") if k in sections]
    path.write_text("\n".join(head) + "\n" + "\n".join(body), encoding="utf-8")
    print(path.read_text(encoding="utf-8"))


def _sections(path: Path) -> dict[str, str]:
    """The stores' sections already in the file, by store."""
    if not path.is_file():
        return {}
    found: dict[str, str] = {}
    parts = path.read_text(encoding="utf-8").split("\n## ")[1:]
    for part in parts:
        db = part.split(" ", 1)[0].strip().lower()
        found[db] = "## " + part.rstrip("\n") + "\n"
    return found


def _section(
    args: argparse.Namespace,
    facts: dict[str, Any],
    t_build: float,
    times: list[tuple[float, float]],
    by_times: list[tuple[float, float]],
    out: Path,
    overdue: Path,
    now: datetime,
) -> str:
    with out.open(encoding="utf-8") as handle:
        overall = {
            r["metric"]: r
            for r in csv.DictReader(handle)
            if r["route"] == "all" and r["referral_type"] == "all" and not r["dimension"]
        }
    with overdue.open(encoding="utf-8") as handle:
        n_overdue = sum(1 for _ in handle) - 1
    load = os.getloadavg()
    counts = facts["counts"]
    name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[args.db]
    lines = [
        f"## {args.db} ({name})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (other engineers' work shares the machine)",
        f"- data: generated by this script (seed {args.seed}): {args.persons:,} Patients, "
        f"{args.years} years of referrals before {AS_OF} at {args.rate} per person per year "
        "(Barnett, Song, Landon, Arch Intern Med 2012: 105 million US referral visits in 2009, "
        "about 307 million persons), every Task with one version per status change",
        f"- command: `python bench/referral_metrics_bench.py --persons {args.persons} --db "
        f"{args.db}`; timed: `takamul referrals metrics --db URL --as-of {AS_OF} --out "
        "metrics.csv --overdue overdue.csv`, a fresh process each run",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| persons (Patients) | {counts.get('Patient', 0):,} |",
        f"| Organizations | {counts.get('Organization', 0):,} |",
        f"| referrals stored (ServiceRequest + Task) | {counts.get('Task', 0):,} |",
        f"| Task versions | {facts['task_versions']:,} |",
        f"| consult notes (DocumentReference) | {counts.get('DocumentReference', 0):,} |",
        f"| store built (s; not timed) | {facts.get('build_seconds', t_build):.0f} |",
        f"| **metrics as of {AS_OF}, wall (s), each run; target 60** | "
        + " / ".join(f"**{wall:.1f}**" for wall, _ in times)
        + " |",
        "| the command's own CPU, user + system (s), each run | "
        + " / ".join(f"{cpu:.1f}" for _, cpu in times)
        + " |",
    ]
    if by_times:
        lines.append(
            "| with `--by all` (every equity dimension), wall / CPU (s), each run | "
            + " / ".join(f"{wall:.1f} / {cpu:.1f}" for wall, cpu in by_times)
            + " |"
        )
    lines += [f"| overdue referrals listed | {n_overdue:,} |", ""]
    lines += ["| metric (all routes, all types) | numerator | denominator | value |"]
    lines += ["| --- | --- | --- | --- |"]
    for metric, r in overall.items():
        lines.append(
            f"| {metric} | {r['numerator']} | {r['denominator']} | {r['value']} {r['unit']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
