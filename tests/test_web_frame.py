"""The web application's frame in a real Chromium: sign-in, language and direction, calendar
defaults from the facility's country, preferences switchable on every page, CSRF, the
Content-Security-Policy, page weight, and axe-core on the frame's pages in all three languages.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.web_world import (
    PASSWORD,
    WebSite,
    axe_violations,
    set_preferences,
    signed_in,
)


def test_sign_in_page_speaks_each_language_in_its_direction(
    web_site: WebSite, chromium: Any
) -> None:
    page = chromium.new_page()
    for lang, direction, heading in (
        ("ar", "rtl", "تسجيل الدخول"),
        ("fa", "rtl", "ورود"),
        ("en", "ltr", "Sign in"),
    ):
        page.goto(web_site.url(f"/app/login?lang={lang}"))
        html = page.locator("html")
        assert html.get_attribute("lang") == lang
        assert html.get_attribute("dir") == direction
        assert page.get_by_role("heading", name=heading).is_visible()
    page.close()


def test_a_login_starts_in_its_facility_countrys_language_and_calendar(
    web_site: WebSite, chromium: Any
) -> None:
    # new logins: the shared ones carry whatever preferences other test modules chose
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    for suffix, role, facility in (
        ("riyadh", "community-health-worker", "org-riyadh"),
        ("tehran", "clinician", "org-tehran"),
        ("nowhere", "registry-reviewer", None),
    ):
        web_site.security.users.add(f"{fresh}-{suffix}", PASSWORD, [role], facility)
    riyadh = signed_in(chromium, web_site, f"{fresh}-riyadh")
    assert riyadh.locator("html").get_attribute("dir") == "rtl"
    assert riyadh.locator("html").get_attribute("lang") == "ar"
    assert riyadh.get_by_role("combobox", name="التقويم").input_value() == "hijri"
    tehran = signed_in(chromium, web_site, f"{fresh}-tehran")
    assert tehran.locator("html").get_attribute("lang") == "fa"
    assert tehran.get_by_role("combobox", name="تقویم").input_value() == "jalali"
    # no facility: English, Gregorian
    nowhere = signed_in(chromium, web_site, f"{fresh}-nowhere")
    assert nowhere.locator("html").get_attribute("lang") == "en"
    for p in (riyadh, tehran, nowhere):
        p.context.close()


def test_preferences_switch_on_any_page_and_are_kept(web_site: WebSite, chromium: Any) -> None:
    page = signed_in(chromium, web_site, "coordinator")
    set_preferences(page, "fa", "jalali", "persian")
    assert page.locator("html").get_attribute("lang") == "fa"
    assert page.get_by_role("navigation", name="صفحه‌ها").is_visible()
    # kept for the login: a new browser signed in as the same person starts in Persian
    again = signed_in(chromium, web_site, "coordinator")
    assert again.locator("html").get_attribute("lang") == "fa"
    set_preferences(again, "en", "gregorian", "latin")
    assert again.locator("html").get_attribute("dir") == "ltr"
    page.context.close()
    again.context.close()


def test_wrong_password_is_refused_and_says_so(web_site: WebSite, chromium: Any) -> None:
    page = chromium.new_page()
    page.goto(web_site.url("/app/login?lang=en"))
    page.get_by_label("Username").fill("chw")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert "/app/login" in page.url
    page.close()


def test_state_changes_need_the_sessions_csrf_token(web_site: WebSite) -> None:
    client = web_site.login_http("chw")
    r = client.post("/app/preferences", data={"lang": "en"})
    assert r.status_code == 403
    home = client.get("/app/")
    token = home.text.split('data-csrf="')[1].split('"')[0]
    r = client.post(
        "/app/preferences",
        data={"lang": "ar", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403  # right token, foreign origin
    r = client.post("/app/preferences", data={"lang": "ar", "csrf": token, "back": "/app/"})
    assert r.status_code == 303
    # signing out needs the token too, and ends the session
    assert client.post("/app/logout", data={}).status_code == 403
    assert client.post("/app/logout", data={"csrf": token}).status_code == 303
    assert client.get("/app/").status_code == 303


def test_pages_carry_a_strict_content_security_policy_and_stay_light(web_site: WebSite) -> None:
    client = web_site.login_http("chw")
    r = client.get("/app/")
    policy = r.headers["content-security-policy"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "script-src 'self'" in policy
    assert r.headers["cache-control"] == "no-store"
    weight = 0
    for asset in (
        "/app/static/takamul.css",
        "/app/static/takamul.js",
        "/app/static/vendor/htmx.min.js",
    ):
        got = client.get(asset)
        assert got.status_code == 200, asset
        weight += len(got.content)
    assert weight <= 200 * 1024, f"a page's JS + CSS weighs {weight} bytes"
    # the sign-in page is a page of ours only: no open redirect after sign-in
    anon = httpx.Client(base_url=web_site.root, follow_redirects=False)
    r = anon.post(
        "/app/login",
        data={"username": "chw", "password": PASSWORD, "next": "https://evil.example/"},
    )
    assert r.headers["location"] == "/app/"


def test_frame_pages_have_no_serious_accessibility_violations(
    web_site: WebSite, chromium: Any
) -> None:
    page = signed_in(chromium, web_site, "admin", bypass_csp=True)
    for lang, calendar in (("ar", "hijri"), ("fa", "jalali"), ("en", "gregorian")):
        set_preferences(page, lang, calendar)
        assert axe_violations(page) == [], lang
        page.goto(web_site.url(f"/app/login?lang={lang}"))
        assert axe_violations(page) == [], f"login {lang}"
        page.goto(web_site.url("/app/"))
    page.context.close()
