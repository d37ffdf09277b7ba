"""Administration in a real Chromium: logins made through the form sign in, disabled ones do not,
locked ones are unlocked; clients disabled and enabled; signing keys rotated; the audit log with
its chain status, filters and the administrator's own actions; all of it refused to a clinician;
in Arabic, Persian and English with axe-core on every section.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import httpx
from joserfc.jwk import ECKey

from takamul.web.i18n import translations
from tests.web_world import PASSWORD, WebSite, axe_violations, set_preferences, signed_in

# the same in every xdist worker of a run (test ids may be made from it), new in every run
RUN = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:6]
SECTIONS = ("logins", "clients", "keys", "audit")


def _t(lang: str, msgid: str) -> str:
    return translations(lang).gettext(msgid)


def _signs_in(site: WebSite, username: str, password: str) -> int:
    anon = httpx.Client(base_url=site.root, timeout=60, follow_redirects=False)
    r = anon.post("/app/login", data={"username": username, "password": password, "next": "/app/"})
    return r.status_code


def _row(page: Any, name: str) -> Any:
    return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name, exact=True))


def test_every_section_speaks_each_language_and_is_accessible(
    web_site: WebSite, chromium: Any
) -> None:
    page = signed_in(chromium, web_site, "admin", bypass_csp=True)
    for lang, calendar in (("ar", "hijri"), ("fa", "jalali"), ("en", "gregorian")):
        set_preferences(page, lang, calendar)
        page.get_by_role("link", name=_t(lang, "Administration"), exact=True).first.click()
        page.wait_for_url("**/app/admin/logins")
        for section in SECTIONS:
            page.goto(web_site.url(f"/app/admin/{section}"))
            assert page.locator("html").get_attribute("lang") == lang
            nav = page.get_by_role("navigation", name=_t(lang, "Administration"))
            assert nav.get_by_role("link", name=_t(lang, "Audit log")).is_visible()
            assert axe_violations(page) == [], f"{section} {lang}"
    page.context.close()


def test_a_login_made_through_the_form_signs_in_until_disabled(
    web_site: WebSite, chromium: Any
) -> None:
    username = f"nurse-{RUN}"
    password = "a-long-enough-password-7"
    page = signed_in(chromium, web_site, "admin", bypass_csp=True)
    set_preferences(page, "en", "gregorian")
    page.goto(web_site.url("/app/admin/logins"))
    # a facility role without a facility is refused, and the form says why
    page.get_by_label("Username").fill(username)
    page.get_by_label("Initial password").fill(password)
    page.get_by_label("Clinician", exact=True).check()
    page.get_by_role("button", name="Create login").click()
    assert "facility" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Username").input_value() == username  # kept
    assert axe_violations(page) == []
    page.get_by_label("Full name").fill("ممرضة الاختبار")
    page.get_by_label("Initial password").fill(password)
    page.get_by_label("Facility").select_option("org-riyadh")
    page.get_by_role("button", name="Create login").click()
    page.wait_for_url("**done=created")
    assert page.get_by_role("status").inner_text() == "The login was created."
    made = web_site.security.users.get(username)
    assert made is not None and made.roles == ("clinician",) and made.facility == "org-riyadh"
    assert _signs_in(web_site, username, password) == 303
    # disabled: sign-in refused
    _row(page, username).get_by_role("button", name="Disable").click()
    page.wait_for_url("**done=disabled")
    assert _signs_in(web_site, username, password) == 401
    _row(page, username).get_by_role("button", name="Enable").click()
    page.wait_for_url("**done=enabled")
    assert _signs_in(web_site, username, password) == 303
    # locked after repeated failures, unlocked by the administrator
    for _ in range(web_site.security.users.config.lockout_attempts):
        assert _signs_in(web_site, username, "not-the-password-at-all") == 401
    assert _signs_in(web_site, username, password) == 401
    page.goto(web_site.url("/app/admin/logins"))
    _row(page, username).get_by_role("button", name="Unlock").click()
    page.wait_for_url("**done=unlocked")
    assert _signs_in(web_site, username, password) == 303
    page.context.close()


def test_clients_are_disabled_and_enabled(web_site: WebSite, chromium: Any) -> None:
    client_id = f"clinic-system-{RUN}"
    key = ECKey.generate_key("P-384")
    jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "ES384"}]}
    web_site.security.clients.add(
        client_id, "عيادة الاختبار", jwks, "system/Patient.rs", "org-riyadh", ("clinician",)
    )
    page = signed_in(chromium, web_site, "admin", bypass_csp=True)
    set_preferences(page, "fa", "jalali")
    page.goto(web_site.url("/app/admin/clients"))
    _row(page, client_id).get_by_role("button", name=_t("fa", "Disable")).click()
    page.wait_for_url("**done=client-disabled")
    found = web_site.security.clients.get(client_id)
    assert found is not None and not found.active
    assert axe_violations(page) == []
    _row(page, client_id).get_by_role("button", name=_t("fa", "Enable")).click()
    page.wait_for_url("**done=client-enabled")
    found = web_site.security.clients.get(client_id)
    assert found is not None and found.active
    page.context.close()


def test_keys_rotate_and_the_audit_log_shows_the_administrators_actions(
    web_site: WebSite, chromium: Any
) -> None:
    page = signed_in(chromium, web_site, "admin", bypass_csp=True)
    set_preferences(page, "ar", "hijri")
    page.goto(web_site.url("/app/admin/keys"))
    rows = page.locator("table tbody tr")
    before = rows.count()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=_t("ar", "Rotate keys")).click()
    page.wait_for_url("**done=rotated")
    assert rows.count() == before + 1
    signing = page.get_by_text(_t("ar", "Signs new tokens"))
    assert signing.count() == 1
    # the newest key signs (keys newest first)
    assert rows.first.get_by_text(_t("ar", "Signs new tokens")).count() == 1
    # a break-the-glass access by a clinician, to find with the filter
    clinician = web_site.login_http("clinician")
    r = clinician.get(
        f"/fhir/Patient/{web_site.ids['maryam']}",
        headers={"X-Break-Glass-Reason": f"unconscious at the door {RUN}"},
    )
    assert r.status_code == 200, r.text
    time.sleep(0.2)  # the log's buffer
    page.goto(web_site.url("/app/admin/audit?user=admin"))
    status = page.get_by_role("status")
    assert _t("ar", "The hash chain is intact: %(n)s events checked.").split("%")[0] in (
        status.inner_text()
    )
    text = page.locator("table.audit").inner_text()
    assert "key-rotate" in text
    assert axe_violations(page) == []
    # filters through the form: the break-the-glass access, by its patient
    page.get_by_label(_t("ar", "User or client")).fill("")
    page.get_by_label(_t("ar", "Patient id")).fill(web_site.ids["maryam"])
    page.get_by_label(_t("ar", "Break-the-glass only")).check()
    page.get_by_role("button", name=_t("ar", "Filter")).click()
    page.wait_for_url("**break_glass=1**")
    glass = page.locator("table.audit tbody tr")
    assert glass.count() >= 1
    assert f"unconscious at the door {RUN}" in page.locator("table.audit").inner_text()
    assert glass.count() == page.locator("table.audit tbody tr.glass").count()
    assert axe_violations(page) == []
    page.context.close()
    # the administrator's actions are in the log with the administrator as agent
    r = web_site.fhir.get("/AuditEvent", params={"agent": "admin", "subtype": "key-rotate"})
    assert r.json()["total"] >= 1


def test_a_clinician_gets_no_administration(web_site: WebSite, chromium: Any) -> None:
    page = signed_in(chromium, web_site, "clinician", bypass_csp=True)
    set_preferences(page, "en", "gregorian")
    assert page.get_by_role("link", name="Administration").count() == 0
    for path in ("/app/admin", "/app/admin/logins", "/app/admin/audit", "/app/admin/keys"):
        response = page.goto(web_site.url(path))
        assert response is not None and response.status == 403, path
        assert page.get_by_role("heading", name="Not allowed").is_visible()
    assert axe_violations(page) == []
    page.context.close()
    client = web_site.login_http("clinician")
    token = client.get("/app/").text.split('data-csrf="')[1].split('"')[0]
    keys = len(web_site.security.keys.keys(fresh=True))
    r = client.post("/app/admin/keys/rotate", data={"csrf": token})
    assert r.status_code == 403
    assert len(web_site.security.keys.keys(fresh=True)) == keys
    r = client.post(
        "/app/admin/logins",
        data={"csrf": token, "username": f"x-{RUN}", "password": PASSWORD, "role-clinician": "on"},
    )
    assert r.status_code == 403 and web_site.security.users.get(f"x-{RUN}") is None
    # an administrator's change needs the CSRF token too
    admin = web_site.login_http("admin")
    r = admin.post("/app/admin/keys/rotate", data={})
    assert r.status_code == 403
    assert len(web_site.security.keys.keys(fresh=True)) == keys
