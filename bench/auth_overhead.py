"""What authentication, authorization and auditing cost on reads: two ``takamul serve``
processes on the same store, one open (``TAKAMUL_AUTH=false``) and one as production runs it
(auth on, a facility-bound client's token, the audit log written, no rate limit in the way),
driven in turn by the same closed-loop load so that both see the same machine load.

The store is the demo population (``takamul synth --country SA``) with Consents added for a
share of the facility's patients (half permitting the facility, half another one), so the
consent path of every read is exercised. Workloads: ``GET Patient/{id}`` and
``GET Observation?patient=…&_count=20`` over the facility's own patients.

Usage::

    python bench/auth_overhead.py --db sqlite [--rounds 4] [--seconds 6] [--concurrency 16]
    python bench/auth_overhead.py --db postgresql [--profile 20]

``--profile N`` also records the auth-on server with py-spy for N seconds while it serves
Patient reads and prints the functions with the most samples (py-spy must be installed).
Prints a JSON summary; ``--json FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server import free_port, postgres_database  # noqa: E402

WORK = ROOT / "bench" / "work" / "auth-overhead"
FACILITY = "org-phc-00001"
OTHER_FACILITY = "org-phc-00008"
CLIENT = "bench-facility-ehr"
# a national system (not bound to a facility): the same reads without facility scoping, to
# tell its cost from that of tokens, consent and audit
NATIONAL_CLIENT = "bench-national-ehr"
SCOPES = "system/*.rs"
TARGET_RATIO = 0.90
_LINE = re.compile(r":\d+\)$")


# -- the store ---------------------------------------------------------------------------------


def population(patients: int, seed: int) -> Path:
    """The synthetic population with a Consent file added (made once, then reused)."""
    out = WORK / f"synth-SA-{patients}-{seed}"
    if not (out / "Consent.ndjson").exists():
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "takamul.cli", "synth", "--country", "SA"]
        command += ["--patients", str(patients), "--seed", str(seed), "--out", str(out)]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        write_consents(out)
    return out


def write_consents(folder: Path) -> None:
    """A PSY/HIV/SEX restriction for every third Patient record: for the facility's patients
    alternately permitting it and another facility, for everyone else their own facility."""
    lines = []
    for n, line in enumerate((folder / "Patient.ndjson").open("rb")):
        if n % 3:
            continue
        patient = orjson.loads(line)
        home = str((patient.get("managingOrganization") or {}).get("reference") or "")
        permitted = home or f"Organization/{OTHER_FACILITY}"
        if home == f"Organization/{FACILITY}" and n % 2:
            permitted = f"Organization/{OTHER_FACILITY}"
        lines.append(orjson.dumps(consent(str(patient["id"]), permitted)))
    (folder / "Consent.ndjson").write_bytes(b"\n".join(lines) + b"\n")


def consent(patient: str, permitted: str) -> dict[str, Any]:
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    return {
        "resourceType": "Consent",
        "id": f"consent-{patient}",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {
            "type": "deny",
            "securityLabel": [{"system": act, "code": c} for c in ("PSY", "HIV", "SEX")],
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {"text": "treating team"},
                            "reference": {"reference": permitted},
                        }
                    ],
                }
            ],
        },
    }


def load(db_url: str, folder: Path) -> None:
    files = sorted(str(p) for p in folder.glob("*.ndjson"))
    command = [sys.executable, "-m", "takamul.cli", "load", *files, "--db", db_url]
    command += ["--errors", str(WORK / "load-errors.ndjson")]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    errors = WORK / "load-errors.ndjson"
    if errors.exists() and b'"resourceType":"Consent"' in errors.read_bytes():
        raise RuntimeError(f"the store refused the benchmark's Consents: see {errors}")


def facility_patients(folder: Path) -> list[str]:
    ids = []
    for line in (folder / "Patient.ndjson").open("rb"):
        patient = orjson.loads(line)
        org = (patient.get("managingOrganization") or {}).get("reference")
        if org == f"Organization/{FACILITY}":
            ids.append(str(patient["id"]))
    return ids


def loaded(db_url: str) -> bool:
    """A kept store (``--store``) already holds the population with its Consents."""
    from sqlalchemy import inspect, text

    from takamul.store.engine import make_engines

    engine, reader = make_engines(db_url)
    reader.dispose()
    try:
        if not inspect(engine).has_table("resource"):
            return False
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM resource WHERE res_type = 'Consent'")
            return bool(conn.execute(query).scalar())
    finally:
        engine.dispose()


@contextlib.contextmanager
def database(kind: str, kept: str | None) -> Iterator[str]:
    if kept is not None:
        yield kept
        return
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="auth-overhead-"))
    try:
        yield f"sqlite:///{folder / 'takamul.sqlite'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def register_client(db_url: str) -> None:
    from joserfc.jwk import ECKey

    from takamul.security.service import Security

    key = {"keys": [ECKey.generate_key("P-384").as_dict(private=False)]}
    security = Security.open(db_url)
    for client, facility in ((CLIENT, FACILITY), (NATIONAL_CLIENT, None)):
        if security.clients.get(client) is not None:
            continue  # a kept store (--store) has it from an earlier run
        name = f"Benchmark EHR ({facility or 'national'})"
        security.clients.add(client, name, key, SCOPES, facility=facility, roles=["clinician"])
    security.engine.dispose()


def mint(db_url: str, base: str, client: str) -> str:
    from takamul.security.service import Security

    security = Security.open(db_url)
    token = security.tokens.mint(client, SCOPES, base, lifetime=3600)
    security.engine.dispose()
    return token


# -- the servers ---------------------------------------------------------------------------------


class Server:
    def __init__(self, db_url: str, auth: bool, workers: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        env = {
            **os.environ,
            "TAKAMUL_AUTH": "true" if auth else "false",
            "TAKAMUL_RATE_LIMIT": "0",  # the limiter is measured by its own test, not here
            "TAKAMUL_EXPORT_DIR": tempfile.mkdtemp(prefix="auth-overhead-export-"),
        }
        command = [sys.executable, "-m", "takamul.cli", "serve", "--db", db_url]
        command += ["--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the load ------------------------------------------------------------------------------------


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _client(
    port: int,
    requests: list[bytes],
    offset: int,
    stop: float,
    latencies: list[float],
    statuses: Counter[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.perf_counter() < stop:
        started = time.perf_counter()
        status = await _get(reader, writer, requests[i % len(requests)])
        latencies.append(time.perf_counter() - started)
        statuses[status] += 1
        i += 1
    writer.close()


async def _drive(port: int, targets: list[str], token: str, clients: int, seconds: float) -> dict:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    requests = [
        f"GET {quote(t, safe='/?&=%:,')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode()
        for t in targets
    ]
    warm: list[float] = []
    end = time.perf_counter() + 0.5
    await asyncio.gather(
        *(_client(port, requests, k, end, warm, Counter()) for k in range(clients))
    )
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(
        *(_client(port, requests, k * 997, stop, latencies, statuses) for k in range(clients))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def drive(port: int, targets: list[str], token: str, clients: int, seconds: float) -> dict:
    """The load, from its own process (so the driver's own work does not share our GIL)."""
    spec = {"port": port, "targets": targets, "token": token, "clients": clients}
    spec["seconds"] = seconds
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as fh:
        fh.write(orjson.dumps(spec))
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--drive", fh.name],
            capture_output=True,
            check=True,
            cwd=ROOT,
        )
    finally:
        os.unlink(fh.name)
    return dict(json.loads(out.stdout))


def _drive_main(spec_file: str) -> None:
    import uvloop

    spec = orjson.loads(Path(spec_file).read_bytes())
    result = uvloop.run(
        _drive(spec["port"], spec["targets"], spec["token"], spec["clients"], spec["seconds"])
    )
    print(json.dumps(result))


# -- the profile ---------------------------------------------------------------------------------


def profile(pid: int, seconds: int, drive_load: Any) -> list[tuple[str, float]]:
    """py-spy samples of the server while ``drive_load`` runs: the share of samples in which
    each function is on the stack (inclusive), the top ones."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = Path(tempfile.mkdtemp()) / "profile.txt"
    command = [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "200"]
    # --gil (only the thread holding the GIL: CPU, not waits) needs py-spy to pause the process
    command += ["-f", "raw", "-o", str(raw)] + (
        ["--gil"] if os.environ.get("PYSPY_GIL") else ["--nonblocking"]
    )
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    drive_load(seconds)
    _, err = proc.communicate(timeout=seconds + 60)
    if not raw.exists():
        raise RuntimeError(
            f"py-spy wrote no profile (exit {proc.returncode}): "
            f"{err.decode(errors='replace')[-800:]}"
        )
    total = 0
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = {
            f if os.environ.get("PYSPY_LINES") else _LINE.sub(")", f) for f in stack.split(";")
        }
        for frame in frames:
            inclusive[frame] += n
    keep = [
        (name, 100 * n / total)
        for name, n in inclusive.most_common()
        if any(k in name for k in ("takamul", "sqlalchemy", "psycopg", "starlette", "uvicorn"))
    ]
    return keep[:60]


# -- the run ---------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    folder = population(args.patients, args.seed)
    patients = facility_patients(folder)
    with database(args.db, args.store) as db_url:
        started = time.perf_counter()
        if args.store is None or not loaded(db_url):
            load(db_url, folder)
        register_client(db_url)
        load_seconds = time.perf_counter() - started
        off = Server(db_url, auth=False, workers=args.workers)
        on = Server(db_url, auth=True, workers=args.workers)
        try:
            tokens = {"on": mint(db_url, on.base, CLIENT)}
            tokens["on_national"] = mint(db_url, on.base, NATIONAL_CLIENT)
            return run_rounds(args, patients, off, on, tokens, load_seconds)
        finally:
            off.stop()
            on.stop()


def workloads(patients: list[str]) -> dict[str, list[str]]:
    return {
        "GET Patient/{id}": [f"/fhir/Patient/{p}" for p in patients],
        "GET Observation?patient=…&_count=20": [
            f"/fhir/Observation?patient={p}&_count=20" for p in patients
        ],
    }


def check_answers(off: Server, on: Server, token: str, patients: list[str]) -> dict[str, Any]:
    """Both servers answer the workloads (the auth-on one leaves out restricted data)."""
    headers = {"Authorization": f"Bearer {token}"}
    seen_off = seen_on = 0
    for p in patients[:40]:
        a = httpx.get(f"{off.base}/Observation", params={"patient": p, "_count": 1000}).json()
        b = httpx.get(
            f"{on.base}/Observation", params={"patient": p, "_count": 1000}, headers=headers
        ).json()
        seen_off += len(a.get("entry", []))
        seen_on += len(b.get("entry", []))
    read = httpx.get(f"{on.base}/Patient/{patients[0]}", headers=headers)
    if read.status_code != 200:
        raise RuntimeError(f"auth-on read answered {read.status_code}: {read.text[:300]}")
    return {"observations_open": seen_off, "observations_auth_on": seen_on}


def run_rounds(
    args: argparse.Namespace,
    patients: list[str],
    off: Server,
    on: Server,
    tokens: dict[str, str],
    load_seconds: float,
) -> dict[str, Any]:
    token = tokens["on"]
    answers = check_answers(off, on, token, patients)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    loads: list[float] = []
    modes = [("off", off, ""), *((mode, on, bearer) for mode, bearer in tokens.items())]
    for name, targets in workloads(patients).items():
        per = results.setdefault(name, {mode: [] for mode, _, _ in modes})
        for r in range(args.rounds):
            # rotate who goes first, so none always follows another's leftovers
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for mode, server, bearer in order:
                loads.append(os.getloadavg()[0])
                cpu = cpu_seconds(server.proc.pid)
                result = drive(server.port, targets, bearer, args.concurrency, args.seconds)
                # the server's own CPU per request: what the machine's other jobs do not skew
                result["cpu_ms"] = 1000 * (cpu_seconds(server.proc.pid) - cpu) / result["requests"]
                per[mode].append(result)
                if set(result["statuses"]) != {"200"}:
                    raise RuntimeError(f"{name} {mode}: answers {result['statuses']}, not all 200")
                print(f"{name} round {r + 1} {mode}: {result['rps']:.0f} req/s", file=sys.stderr)
    summary = {
        "db": args.db,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_1min": {"min": min(loads), "max": max(loads), "mean": statistics.mean(loads)},
        "patients": args.patients,
        "facility_patients": len(patients),
        "concurrency": args.concurrency,
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "load_seconds": load_seconds,
        "answers": answers,
        "workloads": {name: summarise(per) for name, per in results.items()},
    }
    if args.profile:
        summary["profile_auth_on"] = {
            name: profile(
                on.proc.pid,
                args.profile,
                lambda s, t=targets: drive(  # type: ignore[misc]
                    on.port, t, tokens[args.profile_as], args.concurrency, s
                ),
            )
            for name, targets in workloads(patients).items()
        }
    return summary


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarise(per: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, runs in per.items():
        requests = sum(r["requests"] for r in runs)
        seconds = sum(r["seconds"] for r in runs)
        statuses: Counter[str] = Counter()
        for r in runs:
            statuses.update(r["statuses"])
        out[mode] = {
            "rps": requests / seconds,
            "rps_rounds": [round(r["rps"], 1) for r in runs],
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p95_ms": statistics.median(r["p95_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "cpu_ms_per_request": statistics.median(r["cpu_ms"] for r in runs),
            "statuses": dict(statuses),
        }
    for mode in per:
        if mode == "off":
            continue
        ratios = [b["rps"] / a["rps"] for a, b in zip(per["off"], per[mode], strict=True)]
        out[mode]["ratio"] = out[mode]["rps"] / out["off"]["rps"]
        out[mode]["ratio_rounds"] = [round(x, 3) for x in ratios]
        out[mode]["meets_target"] = out[mode]["ratio"] >= TARGET_RATIO
    return out


def table(summary: dict[str, Any]) -> str:
    """The summary's workloads as a Markdown table (for ``bench/results/``)."""
    lines = [
        "| workload | mode | req/s (per round) | p50 ms | p95 ms | p99 ms | cpu ms/req "
        "| ratio (per round) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, modes in summary["workloads"].items():
        for mode, r in modes.items():
            rounds = ", ".join(f"{x:.0f}" for x in r["rps_rounds"])
            ratio = ""
            if "ratio" in r:
                per = ", ".join(f"{x:.2f}" for x in r["ratio_rounds"])
                ratio = f"**{r['ratio']:.2f}** ({per})"
            lines.append(
                f"| `{name}` | {mode} | {r['rps']:.0f} ({rounds}) | {r['p50_ms']:.1f} "
                f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_ms_per_request']:.2f} "
                f"| {ratio} |"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--drive":
        _drive_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="processes per server")
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (0: none)")
    parser.add_argument(
        "--profile-as",
        choices=("on", "on_national"),
        default="on",
        help="whose token the profiled load carries (facility-bound or national)",
    )
    parser.add_argument("--store", help="a database URL to keep between runs (loaded once)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    summary = measure(args)
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(table(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
