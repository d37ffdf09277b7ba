"""The web application's test world: a real server with access control on (SQLite and
PostgreSQL), two facilities (one in Saudi Arabia, one in Iran), a login for every role, a few
patients, and a real Chromium (Debian's, driven by Playwright) with axe-core at hand.

Screens seed what they need on top through ``WebSite.fhir`` (an administrator's client with
``system/*.cruds``). Fixtures are registered for all tests by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from takamul.security.service import Security
from tests.server import ROOT, postgres_database, running_server

PASSWORD = "web-test-password-1"  # every test login's password
CHROMIUM = os.environ.get("TAKAMUL_CHROMIUM", "/usr/bin/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# one login per role; facility logins belong to the Riyadh centre unless named otherwise
LOGINS = {
    "clinician": ("clinician", "org-riyadh", "Dr Amal Al-Harbi"),
    "clinician-tehran": ("clinician", "org-tehran", "Dr Reza Karimi"),
    "chw": ("community-health-worker", "org-riyadh", "Noura Al-Qahtani"),
    "coordinator": ("care-coordinator", "org-riyadh", "Huda Al-Shehri"),
    "reviewer": ("registry-reviewer", None, "Salem Al-Dosari"),
    "analyst": ("analyst", None, "Layla Haddad"),
    "admin": ("administrator", None, "Omar Al-Farsi"),
}
FACILITIES = {
    "org-riyadh": ("مركز الملز الصحي", "SA", "Riyadh"),
    "org-tehran": ("درمانگاه ونک", "IR", "Tehran"),
}


@dataclass
class WebSite:
    root: str  # http://127.0.0.1:port
    db: str
    security: Security
    fhir: httpx.Client  # administrator's FHIR client (system/*.cruds)
    ids: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.root + path

    def login_http(self, login: str) -> httpx.Client:
        """An HTTP client with the login's session cookie (no browser)."""
        client = httpx.Client(base_url=self.root, timeout=60, follow_redirects=False)
        r = client.post(
            "/app/login", data={"username": login, "password": PASSWORD, "next": "/app/"}
        )
        assert r.status_code == 303, r.text
        return client


def _seed(site: WebSite) -> None:
    for org, (name, country, city) in FACILITIES.items():
        r = site.fhir.put(
            f"/Organization/{org}",
            json={
                "resourceType": "Organization",
                "id": org,
                "name": name,
                "address": [{"city": city, "country": country}],
            },
        )
        assert r.status_code in (200, 201), r.text
    for login, (role, facility, display) in LOGINS.items():
        site.security.users.add(login, PASSWORD, [role], facility, display)
    patients = {
        "salma": ("سلمى", "العتيبي", "1985-03-21", "female", "org-riyadh", "1012345672"),
        "maryam": ("مریم", "رضایی", "1990-07-01", "female", "org-tehran", None),
    }
    for key, (given, family, born, sex, org, national_id) in patients.items():
        body: dict[str, Any] = {
            "resourceType": "Patient",
            "name": [{"given": [given], "family": family}],
            "birthDate": born,
            "gender": sex,
            "managingOrganization": {"reference": f"Organization/{org}"},
        }
        if national_id:
            body["identifier"] = [{"system": "urn:oid:2.16.682.1.1", "value": national_id}]
        r = site.fhir.post("/Patient", json=body)
        assert r.status_code == 201, r.text
        site.ids[key] = r.json()["id"]


class FreshToken(httpx.Auth):
    """A bearer token minted again before it expires: the site lives for the whole test
    session, which on a loaded machine outlasts a token's five minutes."""

    def __init__(self, security: Security, client_id: str, base: str) -> None:
        self.security, self.client_id, self.base = security, client_id, base
        self.token, self.minted = "", 0.0

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        if time.monotonic() - self.minted > 120:
            self.token = self.security.tokens.mint(self.client_id, "system/*.cruds", self.base)
            self.minted = time.monotonic()
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def web_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebSite]:
    """A server with the web app, seeded; once on SQLite and once on PostgreSQL."""
    env = {"TAKAMUL_AUTH": "true", "TAKAMUL_RATE_LIMIT": "10000", "TAKAMUL_RATE_BURST": "10000"}
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("web") / "takamul.sqlite"
        url = f"sqlite:///{path}"
        with running_server(url, env) as base:
            yield _site(base, url)
    else:
        with postgres_database() as url, running_server(url, env) as base:
            yield _site(base, url)


def _site(base: str, url: str) -> WebSite:
    security = Security.open(url)
    client_id = f"web-admin-{uuid.uuid4().hex[:8]}"
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384")
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    security.clients.add(
        client_id, "web test admin", jwks, "system/*.cruds", None, ("administrator",)
    )
    fhir = httpx.Client(base_url=base, timeout=60, auth=FreshToken(security, client_id, base))
    site = WebSite(base.rsplit("/fhir", 1)[0], url, security, fhir)
    _seed(site)
    return site


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright (its own browser download is not reachable here)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        raise RuntimeError(
            f"Chromium is not installed at {CHROMIUM}: run `make browser` (Debian's chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def signed_in(browser: Any, site: WebSite, login: str, **context: Any) -> Any:
    """A new browser page signed in as ``login`` (its own cookies)."""
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.goto(site.url("/app/login"))
    page.locator("#username").fill(login)
    page.locator("#password").fill(PASSWORD)
    page.locator("form button[type=submit]").last.click()
    page.wait_for_url("**/app/**")
    return page


def set_preferences(page: Any, lang: str, calendar: str, numerals: str = "latin") -> None:
    """Choose language, calendar and digits through the page's own preference form."""
    page.goto(page.url.split("#")[0])
    form = page.locator("form.prefs")
    form.locator("select[name=lang]").evaluate("(s, v) => { s.value = v; }", lang)
    form.locator("select[name=calendar]").evaluate("(s, v) => { s.value = v; }", calendar)
    form.locator("select[name=numerals]").evaluate("(s, v) => { s.value = v; }", numerals)
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[Any]:
    """axe-core's violations of the impacts given, on the page as it is now. axe is injected by
    the browser context (``bypass_csp``): the page's own policy rightly refuses inline code."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    return [v for v in result["violations"] if v.get("impact") in impacts]
