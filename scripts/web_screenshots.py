"""Screenshots of every screen of the web application in Arabic, Persian and English, for the
documentation (docs/screenshots/<screen>-<lang>.png).

    python scripts/web_screenshots.py [--persons 300] [--out docs/screenshots]

Builds a small demonstration store (synthetic Saudi population, the demo Bundle, a published
equity report with pairs of dimensions, outreach Tasks), serves it with access control on,
signs in with a login per role and photographs each screen in Debian's Chromium.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TAKAMUL_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "screenshot-password-1"
LANGS = (("ar", "hijri", "arab"), ("fa", "jalali", "persian"), ("en", "gregorian", "latin"))


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "takamul.cli", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def build(work: Path, persons: int) -> tuple[str, str]:
    """The store's URL and the facility with the most registrations."""
    pop = work / "population"
    db = f"sqlite:///{work / 'takamul.sqlite'}"
    run("synth", "--country", "SA", "--patients", str(persons), "--seed", "7", "--out", str(pop))
    files = sorted(str(p) for p in pop.glob("*.ndjson"))
    run("load", *files, "--db", db, "--errors", str(work / "errors.ndjson"))
    run("load-demo", "--db", db)
    run("equity", "report", "-i", str(pop), "--db", db, "--publish", "--pairs",
        "--out", str(work / "report.html"))  # fmt: skip
    run("equity", "indicators", "outreach", "--indicator", "dm_screen", "--db", db,
        "--limit", "300")  # fmt: skip
    orgs = collections.Counter(
        (orjson.loads(line).get("managingOrganization") or {}).get("reference", "")
        for line in (pop / "Patient.ndjson").open("rb")
    )
    facility = next(ref for ref, _ in orgs.most_common() if ref.startswith("Organization/"))
    return db, facility.split("/", 1)[1]


def logins(db: str, facility: str) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from takamul.security.service import Security

    security = Security.open(db)
    for name, role, org in (
        ("shot-clinician", "clinician", facility),
        ("shot-chw", "community-health-worker", facility),
        ("shot-reviewer", "registry-reviewer", None),
        ("shot-analyst", "analyst", None),
        ("shot-admin", "administrator", None),
    ):
        if security.users.get(name) is None:
            security.users.add(name, PASSWORD, [role], org, name.removeprefix("shot-").title())


def serve(db: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "takamul.cli", "serve", "--db", db, "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{root}/fhir/metadata", timeout=2).status_code == 200:
                return proc, root
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def patient_with_measurements(page: Any, root: str) -> str:
    """A patient of the clinician's facility whose record has charts: the first search hit
    whose record page shows one."""
    for typed in ("محمد", "عبد", "نورة", "فاطمة", "سعد"):
        page.goto(f"{root}/app/patients?q={typed}")
        for href in page.locator("#results h3 a").evaluate_all("els => els.map(e => e.href)"):
            page.goto(href)
            if page.locator("svg.chart").count() >= 2:
                return str(href)
    raise SystemExit("no patient with measurements found")


def shoot(root: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    screens = {
        "shot-clinician": ["patients-search", "patients-record"],
        "shot-chw": ["worklist"],
        "shot-reviewer": ["review"],
        "shot-analyst": ["equity"],
        "shot-admin": ["admin"],
    }
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for login, names in screens.items():
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.goto(f"{root}/app/login")
            page.locator("#username").fill(login)
            page.locator("#password").fill(PASSWORD)
            page.locator("form button[type=submit]").last.click()
            page.wait_for_url("**/app/**")
            record = patient_with_measurements(page, root) if login == "shot-clinician" else ""
            for lang, calendar, numerals in LANGS:
                prefs(page, root, lang, calendar, numerals)
                for name in names:
                    page.goto(url(root, name, record))
                    if name == "review" and page.locator("main table a").count():
                        page.locator("main table a").first.click()
                    page.wait_for_load_state("networkidle")
                    # the record and the dashboard are read as a whole: the full page
                    whole = name in ("patients-record", "equity")
                    page.screenshot(path=str(out / f"{name}-{lang}.png"), full_page=whole)
            ctx.close()
        browser.close()


def url(root: str, name: str, record: str) -> str:
    return {
        "patients-search": f"{root}/app/patients?q=محمد",
        "patients-record": record,
        "worklist": f"{root}/app/worklist",
        "review": f"{root}/app/review",
        "equity": f"{root}/app/equity",
        "admin": f"{root}/app/admin/audit",
    }[name]


def prefs(page: Any, root: str, lang: str, calendar: str, numerals: str) -> None:
    page.goto(f"{root}/app/")
    form = page.locator("form.prefs")
    for field, value in (("lang", lang), ("calendar", calendar), ("numerals", numerals)):
        form.locator(f"select[name={field}]").evaluate("(s, v) => { s.value = v; }", value)
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"takamul-shots-{uuid.uuid4().hex[:6]}-") as tmp:
        db, facility = build(Path(tmp), args.persons)
        logins(db, facility)
        proc, root = serve(db)
        try:
            shoot(root, args.out)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
