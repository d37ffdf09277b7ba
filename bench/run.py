"""Takamul's benchmark: one table of the shared record's speed, written to bench/results/.

Data comes from the synthetic population generator (``takamul synth``). Usage:
    python bench/run.py [--scale 10000] [--db both|sqlite|postgresql|postgresql://...]
                        [--seconds 8] [--workers 2] [--gzip-input auto|yes|no]
The server runs as production runs it: authentication on (a national system's token), the
audit log written; reads are also measured on a second server over the same store with
authentication off, alternating with the first, for the auth-on / auth-off ratio. Every figure
is measured here, on this machine; the table records the date, cores and memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource as resource_module
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server import free_port, postgres_database  # noqa: E402

from takamul.bulk import load_paths  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store import Store  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
# a national system: every search and read without facility scoping
CLIENT = "bench-national-system"
SCOPES = "system/*.cruds"
TARGETS = {
    "bulk load (resources/s)": ">= 3,000",
    "transaction Bundles over HTTP, 4 senders (resources/s)": ">= 1,000",
    "single reads, 16 clients (requests/s)": ">= 3,000, p95 <= 20 ms",
    "auth-on / auth-off reads": ">= 0.90",
    "typical search p95 (ms)": "<= 100",
    "$export (resources/s)": ">= 20,000",
    "synthetic population written (resources/s)": ">= 20,000, memory flat in N",
}


def synthesize(scale: int, seed: int) -> tuple[Path, dict[str, float]]:
    """Generate the population afresh (timed, with the generator's peak memory)."""
    out = WORK / f"synth-SA-{scale}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    command = [sys.executable, "-m", "takamul.cli", "synth", "--country", "SA"]
    command += ["--patients", str(scale), "--seed", str(seed), "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    peak_mb = resource_module.getrusage(resource_module.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out, {"seconds": seconds, "peak_mb": peak_mb}


# From this many persons the input is kept gzipped: at 350k its 8.6 GB of NDJSON beside a
# 68 GB store and the $export's output do not fit this machine's disk. The bulk load reads
# .ndjson.gz as it is.
GZIP_FROM = 200_000


def gzip_input(folder: Path) -> float:
    """Compress the synthesised NDJSON in place (level 1: fast); the seconds it took."""
    started = time.perf_counter()
    for path in sorted(folder.glob("*.ndjson")):
        with path.open("rb") as src, gzip.open(f"{path}.gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        path.unlink()
    return time.perf_counter() - started


def ndjson_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _of_type(files: list[Path], rtype: str) -> Path | None:
    names = (f"{rtype}.ndjson", f"{rtype}.ndjson.gz")
    return next((f for f in files if f.name in names), None)


def count_input(files: list[Path]) -> tuple[int, int]:
    """Resources (lines) and bytes of NDJSON in the input, uncompressed."""
    lines = size = 0
    for f in files:
        with _open(f) as fh:
            for line in fh:
                lines += 1
                size += len(line)
    return lines, size


# -- measurements ---------------------------------------------------------------------------


def bulk_load(db_url: str, files: list[Path]) -> dict[str, Any]:
    store = Store(Settings(database_url=db_url))
    errors = Path(tempfile.mkdtemp()) / "errors.ndjson"
    summary = load_paths(store, files, errors)
    store.close()
    return {
        "resources": summary.loaded + summary.updated,
        "rejected": summary.rejected,
        "seconds": summary.seconds,
        "rate": summary.rate,
    }


class Server:
    def __init__(self, db_url: str, workers: int, auth: bool = True) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.export_dir = tempfile.mkdtemp(prefix="bench-export-")
        env = {
            **os.environ,
            "TAKAMUL_AUTH": "true" if auth else "false",
            # one bulk-reading system is the whole load here: its rate limit would measure itself
            "TAKAMUL_RATE_LIMITS": f"{CLIENT}=1000000",
            "TAKAMUL_EXPORT_DIR": self.export_dir,
        }
        command = [sys.executable, "-m", "takamul.cli", "serve", "--db", db_url]
        command += ["--port", str(self.port), "--workers", str(workers), "--log-level", "info"]
        self.log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        # Every worker, not only the first, must be serving before anything is measured: each
        # loads the registry's candidate index at its start (71 s at 350k persons), and a
        # measurement begun when the first answered ran beside the others' starts, with fewer
        # processes serving (the 350k run's reads, auth off too, fell to half of 100k's).
        deadline = time.time() + 3600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ready() >= workers:
                return
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"server did not start; its log ends:\n{tail}")

    def _ready(self) -> int:
        """Worker processes that have said so in the log, once the API answers."""
        try:
            if httpx.get(f"{self.base}/metadata", timeout=2).status_code != 200:
                return 0
        except httpx.HTTPError:
            return 0
        return self.log.read_text(errors="replace").count("Application startup complete")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        # the $export's files: gigabytes at scale, of no use once counted
        shutil.rmtree(self.export_dir, ignore_errors=True)
        self.log.unlink(missing_ok=True)


def register_client(db_url: str) -> None:
    """The national system's client, with a key of its own (tokens are minted here)."""
    from joserfc.jwk import ECKey

    from takamul.security.service import Security

    security = Security.open(db_url)
    if security.clients.get(CLIENT) is None:
        key = {"keys": [ECKey.generate_key("P-384").as_dict(private=False)]}
        security.clients.add(CLIENT, "Benchmark national system", key, SCOPES)
    security.engine.dispose()


def mint(db_url: str, base: str) -> str:
    from takamul.security.service import Security

    security = Security.open(db_url)
    token = str(security.tokens.mint(CLIENT, SCOPES, base, lifetime=3600))
    security.engine.dispose()
    return token


def loadgen(urls: list[str], concurrency: int, seconds: float, token: str = "") -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(urls))
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            fh.name,
            str(concurrency),
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LOADGEN_TOKEN": token},
    )
    result = dict(json.loads(out.stdout))
    if result.get("errors"):
        raise RuntimeError(f"{result['errors']} requests failed: {result}")
    return result


def sample_ids(files: list[Path], rtype: str, n: int) -> list[str]:
    path = _of_type(files, rtype)
    if path is None:
        return []
    ids = []
    with _open(path) as fh:
        for line in fh:
            ids.append(orjson.loads(line)["id"])
            if len(ids) >= n * 20:
                break
    random.Random(7).shuffle(ids)
    return ids[:n]


def first_values(files: list[Path], rtype: str, n: int) -> list[dict[str, Any]]:
    path = _of_type(files, rtype)
    out: list[dict[str, Any]] = []
    if path is None:
        return out
    with _open(path) as fh:
        for line in fh:
            out.append(orjson.loads(line))
            if len(out) >= n:
                break
    return out


def transactions(
    base: str, token: str, files: list[Path], bundles: int = 40, size: int = 100, senders: int = 4
) -> float:
    """Transaction Bundles of `size` new Observations for existing patients, sent by `senders`
    systems at once (facility feeds arrive side by side), each Bundle after the last answer."""
    obs = first_values(files, "Observation", size)

    def bundle() -> dict[str, Any]:
        entries = []
        for o in obs:
            body = {k: v for k, v in o.items() if k not in ("id", "meta")}
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": body,
                    "request": {"method": "POST", "url": "Observation"},
                }
            )
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    def send(n: int) -> int:
        with httpx.Client(timeout=300, headers=_bearer(token)) as http:
            for _ in range(n):
                r = http.post(
                    base, json=bundle(), headers={"Content-Type": "application/fhir+json"}
                )
                r.raise_for_status()
        return n * size

    started = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        total = sum(pool.map(send, [bundles // senders] * senders))
    return total / (time.perf_counter() - started)


def search_urls(base: str, files: list[Path]) -> dict[str, list[str]]:
    patients = first_values(files, "Patient", 200)
    observations = first_values(files, "Observation", 200)
    conditions = first_values(files, "Condition", 50)
    urls: dict[str, list[str]] = {
        k: []
        for k in (
            "patient by identifier",
            "patient by name",
            "observations by patient, code and date",
            "conditions by code, _summary=count",
            "encounters by date with _include",
        )
    }
    for p in patients:
        for ident in p.get("identifier", [])[:1]:
            urls["patient by identifier"].append(
                f"{base}/Patient?identifier={ident.get('system', '')}|{ident['value']}"
            )
        for name in p.get("name", [])[:1]:
            if name.get("family"):
                urls["patient by name"].append(f"{base}/Patient?family={name['family'][:4]}")
    for o in observations:
        code = o["code"]["coding"][0]["code"]
        urls["observations by patient, code and date"].append(
            f"{base}/Observation?subject={o['subject']['reference']}&code=http://loinc.org|{code}"
            "&date=ge2020-01-01"
        )
    for c in conditions:
        coding = c["code"]["coding"][0]
        urls["conditions by code, _summary=count"].append(
            f"{base}/Condition?code={coding['system']}|{coding['code']}&_summary=count"
        )
    for month in range(1, 13):
        urls["encounters by date with _include"].append(
            f"{base}/Encounter?date=ge2025-{month:02d}-01&date=lt2025-{month:02d}-08"
            "&_include=Encounter:subject&_count=20"
        )
    return {k: v for k, v in urls.items() if v}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def everything(base: str, token: str, files: list[Path]) -> dict[str, float]:
    """$everything for a patient given about 1,000 resources of its own."""
    pid = f"bench-everything-{uuid.uuid4().hex[:8]}"
    obs = first_values(files, "Observation", 1)[0]
    entries = [
        {
            "resource": {"resourceType": "Patient", "id": pid},
            "request": {"method": "PUT", "url": f"Patient/{pid}"},
        }
    ]
    for _ in range(999):
        body = {k: v for k, v in obs.items() if k not in ("id", "meta")}
        body["subject"] = {"reference": f"Patient/{pid}"}
        entries.append({"resource": body, "request": {"method": "POST", "url": "Observation"}})
    with httpx.Client(timeout=300, headers=_bearer(token)) as http:
        http.post(
            base,
            json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
            headers={"Content-Type": "application/fhir+json"},
        ).raise_for_status()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            url: str | None = f"{base}/Patient/{pid}/$everything?_count=1000"
            n = 0
            while url:
                page = http.get(url).json()
                n += len(page.get("entry", []))
                url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
            times.append(time.perf_counter() - started)
    return {"resources": n, "seconds": statistics.median(times)}


def export(base: str, token: str, types: str = "") -> dict[str, float]:
    query = f"?_type={types}" if types else ""
    with httpx.Client(timeout=600, headers=_bearer(token)) as http:
        started = time.perf_counter()
        r = http.get(f"{base}/$export{query}", headers={"Prefer": "respond-async"})
        location = r.headers["Content-Location"]
        while True:
            poll = http.get(location)
            if poll.status_code == 200:
                break
            if poll.status_code != 202:
                raise RuntimeError(f"$export failed: {poll.status_code} {poll.text[:200]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        total = sum(o["count"] for o in poll.json()["output"])
    return {"resources": total, "seconds": seconds, "rate": total / seconds}


def export_row(server: Server, db_url: str, input_bytes: int) -> str:
    """The whole record exported, or its Patients alone when the whole would not fit the disk
    beside the store. The output is larger than the input: at 350k persons, 11 GB for 8.6 GB
    of input (the registry's Persons, the scores and each resource's meta are added)."""
    need = input_bytes * 1.5
    free = shutil.disk_usage(server.export_dir).free
    token = mint(db_url, server.base)
    if need < free:
        ex = export(server.base, token)
        return f"{ex['rate']:,.0f} ({ex['resources']:,} resources)"
    ex = export(server.base, token, "Patient")
    return (
        f"{ex['rate']:,.0f} (Patients only, {ex['resources']:,}: the whole record's "
        f"{need / 1e9:,.1f} GB of NDJSON does not fit the {free / 1e9:,.1f} GB free)"
    )


def catch_up_after_load(db_url: str) -> str:
    from takamul.catchup import catch_up

    store = Store(Settings(database_url=db_url))
    try:
        summary = catch_up(store)
    finally:
        store.close()
    phases = ", ".join(f"{name} {s:,.1f}" for name, s in summary.seconds.items())
    return f"{summary.total_seconds:,.1f} ({phases})"


def db_size(db_url: str, resources: int) -> float:
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    else:
        import psycopg

        with psycopg.connect(db_url) as conn:
            row = conn.execute("select pg_database_size(current_database())").fetchone()
            size = row[0] if row else 0
    return size / max(resources, 1)


# -- the run --------------------------------------------------------------------------------


def measure(
    db_url: str, files: list[Path], seconds: float, workers: int, input_bytes: int
) -> dict[str, Any]:
    """Every measure on one store; a failure ends the column with a row that says what failed,
    keeping what was measured before it (a 350k run is hours of work)."""
    results: dict[str, Any] = {}
    try:
        _measure(results, db_url, files, seconds, workers, input_bytes)
    except Exception as error:  # reported in the table, not lost
        results["failed"] = f"{type(error).__name__}: {error}"[:300].replace("|", "/")
        print(f"  failed: {results['failed']}", flush=True)
    return results


def _measure(
    results: dict[str, Any],
    db_url: str,
    files: list[Path],
    seconds: float,
    workers: int,
    input_bytes: int,
) -> None:
    load = bulk_load(db_url, files)
    results["bulk load (resources/s)"] = f"{load['rate']:,.0f} ({load['resources']:,} resources)"
    print(f"  bulk load: {results['bulk load (resources/s)']}", flush=True)
    resources = int(load["resources"])
    register_client(db_url)
    # A bulk load runs no write hooks: linking its Patients, extracting care facts and scoring
    # questionnaires follow it, as `takamul load` does at its end (timed on its own).
    caught = catch_up_after_load(db_url)
    results["catch-up after the bulk load (s)"] = caught
    print(f"  catch-up: {caught}", flush=True)
    # Then the first start, with nothing left to catch up: one worker alone and timed, so
    # that no measurement below overlaps another worker's start on the same store.
    started = time.perf_counter()
    Server(db_url, 1, auth=True).stop()
    first_start = time.perf_counter() - started
    results["server's first start after the bulk load (s)"] = f"{first_start:,.1f}"
    print(f"  first start: {first_start:,.1f} s", flush=True)
    server = Server(db_url, workers, auth=True)
    open_server = Server(db_url, workers, auth=False)
    try:
        # a token lasts an hour at most: a fresh one for each part of a long run
        rate = transactions(server.base, mint(db_url, server.base), files)
        results["transaction Bundles over HTTP, 4 senders (resources/s)"] = f"{rate:,.0f}"
        print(f"  transaction Bundles: {rate:,.0f} resources/s", flush=True)
        ids = sample_ids(files, "Patient", 2000)
        results.update(reads(server, open_server, mint(db_url, server.base), ids, seconds))
        print(f"  reads: {results['auth-on / auth-off reads']}", flush=True)
        token = mint(db_url, server.base)
        for name, search in search_urls(server.base, files).items():
            r = loadgen(search, 1, max(2.0, seconds / 3), token)
            results[f"search p95: {name} (ms)"] = f"{r['p95_ms']:.1f} (p50 {r['p50_ms']:.1f})"
        ev = everything(server.base, mint(db_url, server.base), files)
        results["$everything, patient with ~1,000 resources (s)"] = (
            f"{ev['seconds']:.2f} ({ev['resources']:,} resources)"
        )
        print("  searches and $everything measured", flush=True)
        results["$export (resources/s)"] = export_row(server, db_url, input_bytes)
        print(f"  $export: {results['$export (resources/s)']}", flush=True)
        results["database size per resource (bytes)"] = f"{db_size(db_url, resources):,.0f}"
    finally:
        server.stop()
        open_server.stop()


def reads(
    server: Server, open_server: Server, token: str, ids: list[str], seconds: float
) -> dict[str, str]:
    """``GET Patient/{id}`` with auth on at 1, 4 and 16 clients; at 16 also with auth off,
    the two servers taking turns (three rounds each) so that both see the same machine."""
    out: dict[str, str] = {}
    paths = [f"/fhir/Patient/{i}" for i in ids]
    for c in (1, 4):
        r = loadgen([f"http://127.0.0.1:{server.port}{p}" for p in paths], c, seconds, token)
        out[f"single reads, {c} clients (requests/s)"] = _latency(r)
    on: list[dict[str, float]] = []
    off: list[dict[str, float]] = []
    for _ in range(3):
        on.append(
            loadgen([f"http://127.0.0.1:{server.port}{p}" for p in paths], 16, seconds, token)
        )
        off.append(loadgen([f"http://127.0.0.1:{open_server.port}{p}" for p in paths], 16, seconds))
    best_on = statistics.median_low([r["rps"] for r in on])
    best_off = statistics.median_low([r["rps"] for r in off])
    median_on = next(r for r in on if r["rps"] == best_on)
    median_off = next(r for r in off if r["rps"] == best_off)
    out["single reads, 16 clients (requests/s)"] = _latency(median_on)
    out["single reads, 16 clients, auth off (requests/s)"] = _latency(median_off)
    out["auth-on / auth-off reads"] = (
        f"{best_on / best_off:.2f} (median of 3 alternating rounds: "
        f"{best_on:,.0f} / {best_off:,.0f} requests/s)"
    )
    return out


def _latency(r: dict[str, float]) -> str:
    return (
        f"{r['rps']:,.0f}; p50 {r['p50_ms']:.1f} / p95 {r['p95_ms']:.1f} / p99 {r['p99_ms']:.1f} ms"
    )


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    python = platform.python_version()
    return f"{platform.node()}: {os.cpu_count()} cores, {mem:.0f} GiB, Python {python}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=10_000, help="persons to synthesise")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0, help="per read measurement")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument(
        "--db",
        default="both",
        help="sqlite, postgresql (a throwaway database on the test server), both, or a "
        "postgresql://... URL of an empty database to run on",
    )
    parser.add_argument(
        "--gzip-input",
        choices=("auto", "yes", "no"),
        default="auto",
        help=f"keep the synthesised NDJSON gzipped (auto: from {GZIP_FROM:,} persons)",
    )
    args = parser.parse_args()

    data, synth = synthesize(args.scale, args.seed)
    if args.gzip_input == "yes" or (args.gzip_input == "auto" and args.scale >= GZIP_FROM):
        print(f"input gzipped in {gzip_input(data):,.0f} s", flush=True)
    files = ndjson_files(data)
    total, input_bytes = count_input(files)
    print(f"data: {data} ({total:,} resources in {len(files)} files)", flush=True)
    synth_row = (
        f"{total / synth['seconds']:,.0f} (whole command, {synth['seconds']:.1f} s; "
        f"peak memory {synth['peak_mb']:.0f} MB)"
    )
    columns: dict[str, dict[str, Any]] = {}
    if args.db in ("sqlite", "both"):
        sqlite_path = WORK / f"bench-{args.scale}.sqlite"
        for p in WORK.glob(sqlite_path.name + "*"):
            p.unlink()
        print("SQLite", flush=True)
        columns["SQLite"] = measure(
            f"sqlite:///{sqlite_path}", files, args.seconds, args.workers, input_bytes
        )
        # measured (its size included): gone before PostgreSQL's store is made, for at 350k
        # persons the two (about 64 and 68 GB) do not fit this machine's disk together
        for p in WORK.glob(sqlite_path.name + "*"):
            p.unlink()
    if args.db.startswith("sqlite:///"):
        columns["SQLite"] = measure(args.db, files, args.seconds, args.workers, input_bytes)
    servers: list[str] = []
    if args.db.startswith("postgresql://"):
        print("PostgreSQL", flush=True)
        servers.append(postgres_server(args.db))
        columns["PostgreSQL"] = measure(args.db, files, args.seconds, args.workers, input_bytes)
    elif args.db in ("postgresql", "both"):
        print("PostgreSQL", flush=True)
        with postgres_database() as url:
            servers.append(postgres_server(url))
            columns["PostgreSQL"] = measure(url, files, args.seconds, args.workers, input_bytes)
    if not columns:
        parser.error(f"--db {args.db!r}: give sqlite, postgresql, both or a postgresql:// URL")
    for column in columns.values():
        column["synthetic population written (resources/s)"] = synth_row
    write_table(columns, args, total, servers)


# The server settings that decide a bulk load's and a large store's speed, recorded with the
# figures: a table measured on another configuration is not comparable.
POSTGRES_SETTINGS = (
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "wal_compression",
    "autovacuum",
)


def postgres_server(url: str) -> str:
    """The PostgreSQL server's version and the settings that matter here, for the table."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        values = [
            f"{name} {conn.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in POSTGRES_SETTINGS
        ]
    return f"PostgreSQL {version[0] if version else '?'}: {', '.join(values)}"


def write_table(
    columns: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    total: int,
    servers: list[str] | None = None,
) -> None:
    now = datetime.now(UTC)
    rows = list(dict.fromkeys(row for column in columns.values() for row in column))
    header = ["measure", *columns, "target"]
    lines = [
        f"# Takamul benchmark, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine()}",
        f"- data: synthetic population, Saudi Arabia, {args.scale:,} persons, seed {args.seed}, "
        f"{total:,} resources; validation on; server: {args.workers} worker processes, "
        "authentication on (a national system's bearer token, scopes system/*.cruds) and the "
        "audit log written, except the auth-off row",
        *(f"- database server: {server}" for server in servers or ()),
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for row in rows:
        target = next((t for k, t in TARGETS.items() if row.startswith(k.split(" (")[0])), "")
        if "auth off" in row:
            target = ""
        if row.startswith("auth-on"):
            target = TARGETS["auth-on / auth-off reads"]
        if row.startswith("search p95"):
            target = TARGETS["typical search p95 (ms)"]
        cells = [row, *(c.get(row, "") for c in columns.values()), target]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stores = "-".join(columns).lower()
    # the time in the name: a second run the same day must not overwrite the first
    out = RESULTS / f"{now:%Y-%m-%d-%H%M}-{platform.node()}-{args.scale}-{stores}.md"
    out.write_text(table, encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
