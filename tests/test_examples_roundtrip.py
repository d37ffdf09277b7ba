"""Round trip of the official R4 examples (hl7.fhir.r4.examples 4.0.1) through the server.

What this proves, on SQLite and on PostgreSQL: every non-terminology example resource of the
package is accepted by ``PUT /fhir/{type}/{id}`` and reads back equal to the file, apart from
``meta.versionId``, ``meta.lastUpdated`` and ``meta.source`` (which the server owns; ``meta`` is
dropped when nothing else is in it). The examples the server rejects are exactly those listed
in ``EXPECTED_REJECTIONS``, each genuinely invalid R4 for the reason given there (the reasons
are those of the validator's ``KNOWN_INVALID_EXAMPLES`` in ``test_validation``), or refused by
design (``REFUSED_BY_DESIGN``: the query-based Subscription examples).

Terminology resources (CodeSystem, ValueSet, ConceptMap, NamingSystem) are not loaded: they are
optional for this server, and the validator's tests check their examples on their own.

Read-back goes through the read interaction (``GET /fhir/{type}/{id}``) and, independently of
the server's own code and of httpx, through fhirpy, a FHIR client library (``_id`` searches in
batches). Numbers are compared after JSON parsing, so ``1.50`` and ``1.5`` count as equal: the
server stores parsed JSON, which keeps a decimal's value but not its trailing zeros.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

from tests.corpus import TERMINOLOGY_TYPES, Example, LoadedCorpus, load_corpus
from tests.test_validation import KNOWN_INVALID_EXAMPLES

# The official package ships these genuinely invalid examples; the reasons are the
# validator's, so the server and the validator are held to one list.
# Besides them, valid R4 that this server refuses by design, each with why:
REFUSED_BY_DESIGN: dict[str, str] = {
    name: (
        "an R4 query-based Subscription (criteria Observation?code=...): the server offers "
        "topic-based subscriptions only (docs/notifications.md) and refuses, with 422 naming "
        "Subscription.criteria, one it would accept and never fire"
    )
    for name in ("Subscription-example.json", "Subscription-example-error.json")
}
EXPECTED_REJECTIONS: dict[str, str] = {**KNOWN_INVALID_EXAMPLES, **REFUSED_BY_DESIGN}
SERVER_META = ("versionId", "lastUpdated", "source")
BATCH = 100  # ids per fhirpy _id search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(fhir_base: str) -> LoadedCorpus:
    return load_corpus(fhir_base)


def without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    meta = out.get("meta")
    if isinstance(meta, dict):
        for key in SERVER_META:
            meta.pop(key, None)
        if not meta:
            del out["meta"]
    return out


def first_difference(expected: Any, got: Any, path: str = "") -> str | None:
    """Where two JSON values first differ, for a readable failure."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(expected.keys() | got.keys()):
            if key not in got or key not in expected:
                side = "missing" if key not in got else "unexpected"
                return f"{path}.{key}: {side}"
            found = first_difference(expected[key], got[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{path}: {len(expected)} items, read back {len(got)}"
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if expected == got else f"{path}: {expected!r} != {got!r}"


def _compare(examples: list[Example], read: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    problems = []
    for ex in examples:
        got = read.get((ex.type, ex.id))
        if got is None:
            problems.append(f"{ex.file}: not found")
            continue
        diff = first_difference(without_server_meta(ex.resource), without_server_meta(got))
        if diff:
            problems.append(f"{ex.file}: {ex.type}{diff}")
    return problems


def test_corpus_is_the_non_terminology_examples(corpus: LoadedCorpus) -> None:
    types = {ex.type for ex in corpus.examples}
    assert len(corpus.examples) > 2500
    assert not types & TERMINOLOGY_TYPES
    assert {"Patient", "Observation", "Bundle", "SearchParameter"} <= types
    print(f"\n{corpus.base}: {len(corpus.examples)} PUTs in {corpus.seconds:.1f} s")


def test_rejected_examples_are_exactly_the_known_invalid_ones(corpus: LoadedCorpus) -> None:
    rejected = corpus.rejected
    unexpected = {f: rejected[f] for f in rejected.keys() - EXPECTED_REJECTIONS.keys()}
    accepted = sorted(EXPECTED_REJECTIONS.keys() - rejected.keys())
    assert not unexpected, f"rejected, but valid R4: {unexpected}"
    assert not accepted, f"accepted, but invalid R4: {accepted}"
    statuses = {f: corpus.status[f] for f in rejected}
    assert set(statuses.values()) <= {400, 422}, statuses


def test_examples_read_back_equal(corpus: LoadedCorpus) -> None:
    """The read interaction returns every accepted example as it was sent."""
    examples = corpus.accepted
    read: dict[tuple[str, str], dict[str, Any]] = {}
    headers = {"Accept": "application/fhir+json"}
    with httpx.Client(base_url=corpus.base, timeout=60, headers=headers) as client:
        for ex in examples:
            resp = client.get(f"/{ex.type}/{ex.id}")
            if resp.status_code == 200:
                read[ex.type, ex.id] = resp.json()
    problems = _compare(examples, read)
    assert not problems, f"{len(problems)} examples differ:\n" + "\n".join(problems)


def test_examples_read_back_equal_through_fhirpy(
    corpus: LoadedCorpus, fhir: SyncFHIRClient
) -> None:
    """The same through fhirpy, an independent FHIR client library, by ``_id`` searches."""
    examples = corpus.accepted
    ids_by_type: dict[str, list[str]] = {}
    for ex in examples:
        ids_by_type.setdefault(ex.type, []).append(ex.id)
    read: dict[tuple[str, str], dict[str, Any]] = {}
    for rtype, ids in ids_by_type.items():
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            found = fhir.resources(rtype).search(_id=",".join(batch)).limit(BATCH).fetch()
            for res in found:
                data = res.serialize()
                read[rtype, data["id"]] = data
    problems = _compare(examples, read)
    assert not problems, f"{len(problems)} examples differ:\n" + "\n".join(problems)
