"""Link on create behind ``takamul serve --workers 4``: how long a POST Patient takes until the
registration is stored and linked into its person (one transaction: the 201 means linked), with
every server process linking against the same registry (issue 17; target p95 <= 20 ms).

    python bench/registry_workers.py [--db sqlite|postgresql|both] [--base 10000]
        [--registrations 2000] [--clients 4] [--workers 4] [--compare]
        [--locks per-key|global|both] [--index memory|store|auto|both] [--rates 30,60,90]
        [--rate-seconds 15]

Steps: a population of ``--base`` Patients (one registration of each person, ids known) is
bulk-loaded hookless into a new store; ``takamul serve --workers N`` starts (the first process
links them as a batch, the others load its persons); then ``--clients`` closed-loop clients POST
the measured registrations, each on a new connection so they spread over the workers: half
are other facilities' registrations of base persons (same national ID and birth date, names
spelled another way), half new persons registered twice during the run. Latency is the
client's, request sent to 201 received. Afterwards the registry's tables are read: every
person must have one person id, and no two persons share one.

Writes ``bench/results/<date>-vm-registry-workers-<db>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import create_engine, text

from takamul.synth.people import luhn_digit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server import postgres_database, running_server  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SA_ID = "https://takamul.health/fhir/sid/sa-national-id"
CLOSE = {"Connection": "close", "Accept": "application/fhir+json"}
OPEN_LOOP_THREADS = 32

# one person's given name as facilities spell it
GIVEN = [
    ["Mohammed", "Muhammad", "محمد"],
    ["Abdulrahman", "Abdul Rahman", "عبد الرحمن"],
    ["Khalid", "Khaled", "خالد"],
    ["Saad", "Sa'ad", "سعد"],
    ["Faisal", "Faysal", "فيصل"],
    ["Yousef", "Yusuf", "يوسف"],
    ["Fatimah", "Fatima", "فاطمة"],
    ["Noura", "Nora", "نورة"],
    ["Reem", "Rim", "ريم"],
    ["Aisha", "Aysha", "عائشة"],
]
FAMILY = [
    ["Al-Qahtani", "القحطاني"],
    ["Al-Dosari", "الدوسري"],
    ["Al-Harbi", "الحربي"],
    ["Al-Shammari", "الشمري"],
    ["Al-Ghamdi", "الغامدي"],
    ["Al-Mutairi", "المطيري"],
    ["Al-Otaibi", "العتيبي"],
    ["Al-Zahrani", "الزهراني"],
    ["Al-Anazi", "العنزي"],
    ["Al-Subaie", "السبيعي"],
]


def luhn_id(rng: random.Random) -> str:
    """A valid Saudi national ID (10 digits, Luhn check digit)."""
    body = "1" + "".join(rng.choices("0123456789", k=8))
    return body + luhn_digit(body)


class Person:
    def __init__(self, rng: random.Random, taken: set[str]) -> None:
        # national IDs are one per person: 10,000 random draws of 10^8 bodies share one about
        # half the time (a new person who drew a base person's ID was counted as a split)
        self.nid = luhn_id(rng)
        while self.nid in taken:
            self.nid = luhn_id(rng)
        taken.add(self.nid)
        self.given = rng.randrange(len(GIVEN))
        self.family = rng.randrange(len(FAMILY))
        self.female = self.given >= 6
        self.born = f"{rng.randint(1935, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"

    def registration(self, variant: int, facility: int, pid: str | None = None) -> dict[str, Any]:
        givens, families = GIVEN[self.given], FAMILY[self.family]
        body: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [
                {"system": SA_ID, "value": self.nid},
                {
                    "system": f"https://takamul.health/fhir/sid/mrn/facility-{facility}",
                    "value": f"{self.nid}-{facility}",
                },
            ],
            "name": [
                {
                    "given": [givens[variant % len(givens)]],
                    "family": families[variant % len(families)],
                }
            ],
            "gender": "female" if self.female else "male",
            "birthDate": self.born,
        }
        if pid:
            body["id"] = pid
        return body


def base_file(people: list[Person], folder: Path) -> Path:
    path = folder / "Patient.ndjson"
    with path.open("wb") as out:
        for n, person in enumerate(people):
            out.write(orjson.dumps(person.registration(0, 0, f"base-{n}")) + b"\n")
    return path


def workload(
    people: list[Person], rng: random.Random, count: int
) -> list[tuple[str, dict[str, Any]]]:
    """(person's national ID, Patient) for each measured registration."""
    out: list[tuple[str, dict[str, Any]]] = []
    for _ in range(count // 2):
        person = rng.choice(people)
        out.append((person.nid, person.registration(rng.randint(1, 2), rng.randint(1, 50))))
    taken = {p.nid for p in people}
    for _ in range(count - len(out)):
        person = Person(rng, taken)
        if len(out) % 2:  # the same new person again, later in the run
            out.append((person.nid, person.registration(0, 1)))
        out.append((person.nid, person.registration(1, 2)))
    out = out[:count]
    rng.shuffle(out)
    return out


@contextmanager
def store(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'takamul.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


def load(url: str, path: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "takamul.cli", "load", str(path), "--db", url]
    subprocess.run(
        command, check=True, cwd=ROOT, capture_output=True, env={**os.environ, **(env or {})}
    )
    return time.perf_counter() - started


def drive(
    base: str, work: list[tuple[str, dict[str, Any]]], clients: int
) -> tuple[list[float], dict[str, str], float]:
    """POST every registration from ``clients`` closed-loop threads; (latencies in ms,
    patient id -> national ID, seconds)."""
    latencies: list[float] = []
    made: dict[str, str] = {}
    lock = threading.Lock()
    shares = [work[i::clients] for i in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(share: list[tuple[str, dict[str, Any]]]) -> None:
        # no connection kept: each request connects anew and lands on any worker
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=fresh, headers=CLOSE, timeout=120) as http:
            start.wait()
            for nid, body in share:
                post(http, nid, body)

    def post(http: httpx.Client, nid: str, body: dict[str, Any]) -> None:
        sent = time.perf_counter()
        r = http.post(f"{base}/Patient", json=body)
        took = (time.perf_counter() - sent) * 1000
        if r.status_code != 201:
            raise RuntimeError(f"POST Patient answered {r.status_code}: {r.text[:300]}")
        with lock:
            latencies.append(took)
            made[str(r.json()["id"])] = nid

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, made, time.perf_counter() - began


def drive_at(
    base: str, work: list[tuple[str, dict[str, Any]]], rate: float, seed: int
) -> tuple[list[float], dict[str, str], float]:
    """POST the registrations as they arrive at ``rate`` a second on average (Poisson: the
    gaps drawn from an exponential distribution), whatever the server's pace: an open loop, as
    a country's facilities register people. Latency counts from the registration's scheduled
    arrival, so that time it waited for a free client thread is counted too (no coordinated
    omission). (latencies in ms, patient id -> national ID, seconds)."""
    rng = random.Random(seed)
    arrivals, at = [], 0.0
    for _ in work:
        at += rng.expovariate(rate)
        arrivals.append(at)
    latencies: list[float] = []
    made: dict[str, str] = {}
    lock = threading.Lock()
    queue = iter(zip(arrivals, work, strict=True))
    start = threading.Barrier(OPEN_LOOP_THREADS + 1)
    began = 0.0

    def client() -> None:
        fresh = httpx.Limits(max_keepalive_connections=0)
        # made before the clock starts: 32 clients made at once took the first second's CPU
        with httpx.Client(limits=fresh, headers=CLOSE, timeout=120) as http:
            start.wait()
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                due, (nid, body) = item
                time.sleep(max(0.0, began + due - time.perf_counter()))
                r = http.post(f"{base}/Patient", json=body)
                took = (time.perf_counter() - began - due) * 1000
                if r.status_code != 201:
                    raise RuntimeError(f"POST Patient answered {r.status_code}: {r.text[:300]}")
                with lock:
                    latencies.append(took)
                    made[str(r.json()["id"])] = nid

    # enough threads that a slow answer does not hold the next arrivals back
    threads = [threading.Thread(target=client) for _ in range(OPEN_LOOP_THREADS)]
    for t in threads:
        t.start()
    began = time.perf_counter()  # set before the barrier releases the clients
    start.wait()
    for t in threads:
        t.join()
    return latencies, made, time.perf_counter() - began


def verify(url: str, people: list[Person], made: dict[str, str]) -> tuple[int, int]:
    """(persons wrongly split, persons wrongly joined) among the base and measured ones."""
    nid_of = {f"base-{n}": p.nid for n, p in enumerate(people)} | made
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        member = dict(conn.execute(text("SELECT patient_id, person_id FROM mpi_member")).all())
    engine.dispose()
    persons_of: dict[str, set[str]] = {}
    nids_of: dict[str, set[str]] = {}
    for pid, nid in nid_of.items():
        person = member.get(pid, f"missing-{pid}")
        persons_of.setdefault(nid, set()).add(person)
        nids_of.setdefault(person, set()).add(nid)
    split = sum(1 for persons in persons_of.values() if len(persons) > 1)
    joined = sum(1 for nids in nids_of.values() if len(nids) > 1)
    return split, joined


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def without_registry(kind: str, args: argparse.Namespace) -> dict[str, str]:
    """The same POSTs on the same base with the registry off (TAKAMUL_MPI=false): what the
    store's write costs by itself on this machine, beside which the registry's share shows."""
    rng = random.Random(args.seed)
    taken: set[str] = set()
    people = [Person(rng, taken) for _ in range(args.base)]
    work = workload(people, rng, args.registrations)
    with tempfile.TemporaryDirectory(prefix="takamul-registry-workers-") as tmp:
        folder = Path(tmp)
        with store(kind, folder) as url:
            load(url, base_file(people, folder))
            env = {"TAKAMUL_MPI": "false"}
            with running_server(url, env=env, workers=args.workers) as base:
                drive(base, workload(people, random.Random(args.seed + 1), 40), args.clients)
                latencies, _, _ = drive(base, work, args.clients)
                one, _, _ = drive(base, workload(people, random.Random(args.seed + 2), 200), 1)
    return {
        f"registry off, {args.clients} clients: p50 / p95 / p99 (ms)": " / ".join(
            f"{percentile(latencies, q):.1f}" for q in (0.5, 0.95, 0.99)
        ),
        "registry off, 1 client: p50 / p95 / p99 (ms)": " / ".join(
            f"{percentile(one, q):.1f}" for q in (0.5, 0.95, 0.99)
        ),
    }


def run(kind: str, args: argparse.Namespace, locks: str, index: str) -> dict[str, str]:
    rng = random.Random(args.seed)
    taken: set[str] = set()
    people = [Person(rng, taken) for _ in range(args.base)]
    work = workload(people, rng, args.registrations)
    figures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="takamul-registry-workers-") as tmp:
        folder = Path(tmp)
        with store(kind, folder) as url:
            env = {"TAKAMUL_REGISTRY_LOCKS": locks, "TAKAMUL_REGISTRY_INDEX": index}
            took = load(url, base_file(people, folder), env)
            figures["bulk load of the base population and its catch-up"] = (
                f"{args.base:,} Patients in {took:.1f} s"
            )
            started = time.perf_counter()
            with running_server(url, env=env, workers=args.workers) as base:
                figures["server start (every worker attached)"] = (
                    f"{time.perf_counter() - started:.1f} s"
                )
                figures["server processes' memory (RSS, MB)"] = workers_memory(base)
                warm = workload(people, random.Random(args.seed + 1), 40)
                drive(base, warm, args.clients)  # every worker's first requests
                latencies, made, seconds = drive(base, work, args.clients)
                one, _, _ = drive(base, workload(people, random.Random(args.seed + 2), 200), 1)
                offered = []
                for n, rate in enumerate(args.rates):
                    count = max(100, round(rate * args.rate_seconds))
                    at_rate = workload(people, random.Random(args.seed + 10 + n), count)
                    lat, made_at, took = drive_at(base, at_rate, rate, args.seed + n)
                    made.update(made_at)
                    offered.append((rate, lat, took))
            split, joined = verify(url, people, made)
    figures["registrations measured"] = (
        f"{len(latencies):,} in {seconds:.1f} s ({len(latencies) / seconds:.0f} per second)"
    )
    figures[f"link on create, {args.clients} clients: p50 / p95 / p99 / max (ms)"] = " / ".join(
        f"{percentile(latencies, q):.1f}" for q in (0.5, 0.95, 0.99, 1.0)
    )
    figures["link on create, 1 client: p50 / p95 / p99 (ms)"] = " / ".join(
        f"{percentile(one, q):.1f}" for q in (0.5, 0.95, 0.99)
    )
    for rate, lat, took in offered:
        figures[
            f"link on create, {rate:g} a second offered (open loop): done a second; "
            "p50 / p95 / p99 / max (ms)"
        ] = f"{len(lat) / took:.0f}; " + " / ".join(
            f"{percentile(lat, q):.1f}" for q in (0.5, 0.95, 0.99, 1.0)
        )
    figures["persons split over two person ids / persons joined"] = f"{split} / {joined}"
    if args.compare:
        figures.update(without_registry(kind, args))
    return figures


def measure(kind: str, args: argparse.Namespace) -> dict[str, str]:
    """The figures of each variant asked for (``--locks both``, ``--index both``: each variant
    twice, in turn, each run on a store of its own, so that all see the machine alike)."""
    locks = ["per-key", "global"] if args.locks == "both" else [args.locks]
    if kind != "postgresql":
        locks = ["per-key"]  # SQLite has one writer
    indexes = ["memory", "store"] if args.index == "both" else [args.index]
    variants = [(lk, ix) for lk in locks for ix in indexes]

    def label(key: str, lk: str, ix: str) -> str:
        tags = ([f"{lk} locks"] if kind == "postgresql" else []) + [f"{ix} index"]
        return f"{key} [{', '.join(tags)}]"

    if len(variants) == 1:
        ((lk, ix),) = variants
        return {label(k, lk, ix): v for k, v in run(kind, args, lk, ix).items()}
    rounds: dict[tuple[str, str], list[dict[str, str]]] = {v: [] for v in variants}
    for _ in range(2):
        for variant in rounds:
            rounds[variant].append(run(kind, args, *variant))
    figures: dict[str, str] = {}
    for (lk, ix), runs in rounds.items():
        for key in runs[0]:
            figures[label(key, lk, ix)] = " ; ".join(r[key] for r in runs)
    return figures


def workers_memory(base: str) -> str:
    """The resident memory of the server's processes (the parent and its workers), in MB."""
    port = base.split(":")[2].split("/")[0]
    listing = subprocess.run(
        ["ps", "-eo", "pid,ppid,rss,args"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    rows = [line.split(None, 3) for line in listing]
    parents = [r for r in rows if "takamul.cli serve" in r[3] and f"--port {port}" in r[3]]
    if not parents:
        return "not found"
    family = {parents[0][0]}
    for row in rows:  # uvicorn's workers are children (multiprocessing may add a helper)
        if row[1] in family:
            family.add(row[0])
    sizes = [int(r[2]) // 1024 for r in rows if r[0] in family]
    return " + ".join(str(x) for x in sorted(sizes, reverse=True)) + f" = {sum(sizes)}"


def write_result(kind: str, figures: dict[str, str], args: argparse.Namespace) -> Path:
    now = datetime.now(UTC)
    load1, load5, load15 = os.getloadavg()
    lines = [
        f"# Client registry: link on create with {args.workers} server workers ({kind})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load1:.1f} / {load5:.1f} / "
        f"{load15:.1f} (other work shares the machine)",
        f"- `takamul serve --workers {args.workers}` (access control off: the registry's cost "
        "is measured), every POST on a new connection so requests spread over the workers; "
        "latency seen by the client, request to 201 (stored and linked, one transaction)",
        "- target: link on create p95 <= 20 ms with 4 workers",
        f"- command: `python bench/registry_workers.py --db {kind} --base {args.base} "
        f"--registrations {args.registrations} --clients {args.clients} "
        f"--workers {args.workers} --locks {args.locks} --index {args.index}"
        f"{' --compare' if args.compare else ''} "
        f"--rates {','.join(f'{r:g}' for r in args.rates)} --rate-seconds {args.rate_seconds:g}`",
        "- closed loop: the clients send the next registration when the last is answered, so "
        "the machine is saturated and latency is mostly queueing; open loop: registrations "
        "arrive at an offered rate (Poisson), latency from each one's arrival",
        "- PostgreSQL's registry locks (`TAKAMUL_REGISTRY_LOCKS`): per-key (the default: the "
        "registration's block keys and the persons it may change) or global (one lock for "
        "every link); the candidate index (`TAKAMUL_REGISTRY_INDEX`): in each process's memory "
        "or in the store's tables; with `both`, two runs of each variant in turn, separated by "
        "` ; `",
        "",
        "| measure | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in figures.items()),
        "",
    ]
    # the time too: several runs a day must not overwrite each other
    out = RESULTS / f"{now:%Y-%m-%d-%H%M}-vm-registry-workers-{kind}.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--base", type=int, default=10_000)
    parser.add_argument("--registrations", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--compare", action="store_true", help="also the same POSTs with the registry off"
    )
    parser.add_argument(
        "--rates",
        type=lambda v: [float(r) for r in v.split(",") if r.strip()],
        default=[30.0, 60.0, 90.0],
        help="offered registrations a second for the open-loop runs, comma-separated ('' none)",
    )
    parser.add_argument(
        "--rate-seconds", type=float, default=15.0, help="how long each offered rate runs"
    )
    parser.add_argument(
        "--locks",
        choices=["per-key", "global", "both"],
        default="per-key",
        help="PostgreSQL's registry locks (both: each twice, in turn)",
    )
    parser.add_argument(
        "--index",
        choices=["memory", "store", "auto", "both"],
        default="auto",
        help="where the registry's candidate index lives (both: each twice, in turn)",
    )
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        figures = measure(kind, args)
        print(write_result(kind, figures, args))
        for k, v in figures.items():
            print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
