"""The care manager's caseload page (issue 15): a caseload of 150 persons renders with
p95 <= 200 ms, in the store of 100,000 enrolled persons that ``bench/mh_registry_bench.py``
builds (run it first; PostgreSQL).

    python bench/mh_caseload_page.py [--persons 150] [--requests 100] [--db URL]

Steps: in that store, a Practitioner with a login's identifier becomes the care manager of
``--persons`` collaborative-care episodes of one facility (their ``careManager`` updated through
the store's ordinary write path), and a clinician login of that facility is made for them;
``takamul serve`` starts with access control on; the login signs in and the caseload page
(``/app/mentalhealth``, the first 25 rows, most urgent first) is timed, then the facility's
caseload and the psychiatric case-review queue. Writes
``bench/results/<date>-vm-mh-caseload-page-<db>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from web_pages import free_port, pct  # the web bench's helpers (bench/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from takamul.security.audit import USER_SYSTEM  # noqa: E402
from takamul.security.service import Security  # noqa: E402
from takamul.settings import Settings  # noqa: E402
from takamul.store.guard import unguarded  # noqa: E402
from takamul.store.repository import Session, Store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/takamul_bench_mh_registry_100000"
LOGIN = "bench-caseload-cm"
PASSWORD = "bench-caseload-password-1"
FACILITY = "org-3"
AS_OF = "2025-06-30"  # the registry bench's as-of date

_EPISODES = """
SELECT r.res_id FROM resource r
JOIN sp_reference o ON o.rid = r.rid AND o.res_type = 'EpisodeOfCare'
  AND o.param = 'organization' AND o.target_type = 'Organization' AND o.target_id = :org
WHERE r.res_type = 'EpisodeOfCare' AND r.deleted = :f
ORDER BY r.res_id LIMIT :n
"""


def assign_caseload(db: str, persons: int) -> list[str]:
    """The login's Practitioner becomes the care manager of ``persons`` episodes."""
    store = Store(Settings(database_url=db))
    try:
        with store.reader.connect() as conn:
            ids = [
                r[0]
                for r in conn.execute(text(_EPISODES), {"org": FACILITY, "f": False, "n": persons})
            ]
        if len(ids) < persons:
            raise SystemExit(f"{FACILITY} has only {len(ids)} episodes; build a larger store")

        def work(session: Session) -> None:
            practitioner = {
                "resourceType": "Practitioner",
                "id": LOGIN,
                "identifier": [{"system": USER_SYSTEM, "value": LOGIN}],
                "name": [{"family": "Bench", "given": ["Care manager"]}],
            }
            session.update("Practitioner", LOGIN, practitioner)
            for rid in ids:
                body: dict[str, Any] = session.read("EpisodeOfCare", rid).json()
                body["id"] = rid  # the replicas keep the first copy's id in their JSON
                body.pop("team", None)
                body["careManager"] = {"reference": f"Practitioner/{LOGIN}"}
                session.update("EpisodeOfCare", rid, body)

        with unguarded():
            store.write(work)
    finally:
        store.close()
    security = Security.open(db)
    if security.users.get(LOGIN) is None:
        security.users.add(LOGIN, PASSWORD, ["clinician"], FACILITY, "Bench care manager")
    return ids


def serve(db: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "TAKAMUL_AUTH": "true",
        "TAKAMUL_RATE_LIMIT": "0",
        "TAKAMUL_MH_INTERVAL_SECONDS": "0",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "takamul.cli", "serve", "--db", db, "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{root}/fhir/metadata", timeout=5).status_code == 200:
                return server, root
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit("the server exited")
        time.sleep(1)


def timed(client: httpx.Client, url: str, n: int) -> tuple[list[float], httpx.Response]:
    times: list[float] = []
    got = None
    for _ in range(n + 3):
        t = time.perf_counter()
        got = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert got.status_code == 200, (got.status_code, got.text[:300])
    assert got is not None
    return times[3:], got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--persons", type=int, default=150)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    figures: dict[str, str] = {}
    assign_caseload(args.db, args.persons)
    t = time.perf_counter()
    server, root = serve(args.db)
    figures["server start-up (s)"] = f"{time.perf_counter() - t:.0f}"
    try:
        client = httpx.Client(base_url=root, timeout=300)
        r = client.post(
            "/app/login", data={"username": LOGIN, "password": PASSWORD, "next": "/app/"}
        )
        assert r.status_code == 303, r.text[:300]
        mine, got = timed(client, f"/app/mentalhealth?on={AS_OF}", args.requests)
        figures["persons in the caseload (page says)"] = _caseload_total(got.text)
        figures[f"caseload page, {args.persons} persons: p50 / p95 / p99 (ms)"] = (
            f"{pct(mine, 0.5):.0f} / {pct(mine, 0.95):.0f} / {pct(mine, 0.99):.0f}"
        )
        figures["caseload page size (KB)"] = f"{len(got.content) / 1024:.0f}"
        n = max(5, args.requests // 10)
        whole, got = timed(client, f"/app/mentalhealth?on={AS_OF}&scope=facility", n)
        figures["persons in the facility's caseload (page says)"] = _caseload_total(got.text)
        figures["the facility's caseload page: p50 / p95 (ms)"] = (
            f"{pct(whole, 0.5):.0f} / {pct(whole, 0.95):.0f}"
        )
        queue, _ = timed(client, f"/app/mentalhealth/review?on={AS_OF}", n)
        figures["psychiatric case-review queue page: p50 / p95 (ms)"] = (
            f"{pct(queue, 0.5):.0f} / {pct(queue, 0.95):.0f}"
        )
    finally:
        server.terminate()
        server.wait(30)
    write(args, figures)


def _caseload_total(html: str) -> str:
    # "N persons." in the page's language; the digits are what matters
    found = re.search(r"<p>([0-9\u0660-\u0669\u06f0-\u06f9,\u066c]+) ", html)
    return found.group(1) if found else "(not shown)"


def write(args: argparse.Namespace, figures: dict[str, str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    load = os.getloadavg()
    kind = "postgresql" if args.db.startswith("postgresql") else "sqlite"
    out = RESULTS / f"{now:%Y-%m-%d}-vm-mh-caseload-page-{kind}.md"
    lines = [
        f"# Mental health: a care manager's caseload page ({kind})",
        "",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; machine: vm, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (other work shares the machine)",
        "- data: the store of `bench/mh_registry_bench.py` (99,720 enrolled persons, 1.3 M "
        f"Observations); {args.persons} of facility {FACILITY}'s episodes given to one care "
        "manager; HTTP with access control on, signed in as that care manager (a clinician)",
        "- target: a caseload of 150 persons renders p95 <= 200 ms",
        f"- command: `python bench/mh_caseload_page.py --persons {args.persons} "
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
