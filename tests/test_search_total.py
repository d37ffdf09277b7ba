"""``_total`` over HTTP on SQLite and PostgreSQL (R4 search.html#total): ``accurate`` counts
every match, ``none`` leaves Bundle.total out, ``estimate`` (also the default) counts exactly up
to ``EXACT_UP_TO`` matches and gives PostgreSQL's planner estimate above; ``_summary=count``
stays exact; paging links stay right without an exact total."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from takamul.store.totals import EXACT_UP_TO

JSON = {"Content-Type": "application/fhir+json"}
LARGE = EXACT_UP_TO + 10
SMALL = 3
TAG_SYSTEM = "urn:test:total"


class Results:
    """LARGE Observations with this run's tag, SMALL of them with a code of their own."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.tag = uuid.uuid4().hex[:12]
        self.rare = f"rare-{self.tag}"
        entries = [self._entry(self.rare if i < SMALL else "8480-6") for i in range(LARGE)]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        r = http.post("", json=bundle, headers=JSON, timeout=300)
        assert r.status_code == 200, r.text[:500]

    def _entry(self, code: str) -> dict[str, Any]:
        body = {
            "resourceType": "Observation",
            "meta": {"tag": [{"system": TAG_SYSTEM, "code": self.tag}]},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
        }
        return {"resource": body, "request": {"method": "POST", "url": "Observation"}}

    def search(self, *params: tuple[str, str]) -> dict[str, Any]:
        query = [("_tag", f"{TAG_SYSTEM}|{self.tag}"), *params]
        r = self.http.get("/Observation", params=query)
        assert r.status_code == 200, r.text[:500]
        return dict(r.json())


def relations(bundle: dict[str, Any]) -> set[str]:
    return {link["relation"] for link in bundle["link"]}


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """sqlite or postgresql: the store of the server the test runs against."""
    return str(request.node.callspec.params["fhir_base"])


@pytest.fixture(scope="module")
def results(http: httpx.Client) -> Results:
    return Results(http)


def test_accurate_counts_every_match(results: Results) -> None:
    bundle = results.search(("_total", "accurate"), ("_count", "10"))
    assert bundle["total"] == LARGE
    assert len(bundle["entry"]) == 10
    last = next(link["url"] for link in bundle["link"] if link["relation"] == "last")
    assert f"_offset={(LARGE - 1) // 10 * 10}&" in last


@pytest.mark.parametrize("asked", [None, "estimate"])
def test_estimate_is_exact_for_a_small_result(results: Results, asked: str | None) -> None:
    params = [("code", f"http://loinc.org|{results.rare}")]
    if asked:
        params.append(("_total", asked))
    bundle = results.search(*params)
    assert bundle["total"] == SMALL
    assert len(bundle["entry"]) == SMALL
    assert "last" in relations(bundle) and "next" not in relations(bundle)


@pytest.mark.parametrize("asked", [None, "estimate", "accurate"])
def test_a_page_where_the_matches_end_gives_their_total(
    results: Results, asked: str | None
) -> None:
    """The page query looks one row further; when the matches end on its page the total is the
    offset and what the page holds, without a count. Past the end, the count tells it."""
    code = ("code", f"http://loinc.org|{results.rare}")
    extra = [("_total", asked)] if asked else []
    last_page = results.search(code, ("_count", "2"), ("_offset", "2"), *extra)
    assert (last_page["total"], len(last_page["entry"])) == (SMALL, SMALL - 2)
    assert "next" not in relations(last_page)
    first_page = results.search(code, ("_count", "2"), *extra)
    assert (first_page["total"], len(first_page["entry"])) == (SMALL, 2)
    assert "next" in relations(first_page)
    past_the_end = results.search(code, ("_count", "2"), ("_offset", "10"), *extra)
    assert past_the_end["total"] == SMALL and not past_the_end.get("entry")


@pytest.mark.parametrize("asked", [None, "estimate"])
def test_estimate_of_a_large_result(
    results: Results, http: httpx.Client, store_kind: str, asked: str | None
) -> None:
    params = [("_count", "500")] + ([("_total", asked)] if asked else [])
    bundle = results.search(*params)
    if store_kind == "postgresql":
        # more than could be counted cheaply: an estimate, never below what was counted, and
        # no "last" link (it would be computed from a guess)
        assert bundle["total"] > EXACT_UP_TO
        assert "last" not in relations(bundle)
    else:
        # SQLite has no estimate to give: it counts
        assert bundle["total"] == LARGE and "last" in relations(bundle)
    assert len(bundle["entry"]) == 500 and "next" in relations(bundle)
    seen = _page_through(http, bundle)
    assert seen == LARGE


def test_none_leaves_the_total_out_and_pages_still_end(results: Results) -> None:
    bundle = results.search(("_total", "none"), ("_count", "500"))
    assert "total" not in bundle and "next" in relations(bundle)
    exactly_one_page = results.search(
        ("_total", "none"), ("code", f"http://loinc.org|{results.rare}"), ("_count", str(SMALL))
    )
    assert "total" not in exactly_one_page and len(exactly_one_page["entry"]) == SMALL
    # the store looked one row further: no "next" link to an empty page
    assert "next" not in relations(exactly_one_page)


def test_summary_count_is_exact_whatever_total_asks(results: Results) -> None:
    for asked in ("estimate", "none", "accurate"):
        bundle = results.search(("_summary", "count"), ("_total", asked))
        assert bundle["total"] == LARGE and "entry" not in bundle
    assert results.search(("_summary", "count"))["total"] == LARGE


@pytest.mark.parametrize("value", ["maybe", "", "ACCURATE"])
def test_invalid_total_is_refused_naming_it(http: httpx.Client, value: str) -> None:
    r = http.get("/Observation", params={"_total": value})
    assert r.status_code == 400, r.text[:300]
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error" and "_total" in issue["diagnostics"]
    assert issue.get("expression") == ["_total"]


def test_capability_statement_lists_total(http: httpx.Client) -> None:
    rest = http.get("/metadata").json()["rest"][0]
    observation = next(r for r in rest["resource"] if r["type"] == "Observation")
    total = next(p for p in observation["searchParam"] if p["name"] == "_total")
    assert total["type"] == "special" and "estimate" in total["documentation"]


def _page_through(http: httpx.Client, bundle: dict[str, Any]) -> int:
    seen = len(bundle["entry"])
    while "next" in relations(bundle):
        url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
        bundle = http.get(url).json()
        seen += len(bundle.get("entry", []))
    return seen
