"""The official R4 examples (hl7.fhir.r4.examples 4.0.1), loaded into a running server once.

Shared by ``test_examples_roundtrip`` and ``test_search_conformance``: every non-terminology
example is PUT to ``/fhir/{type}/{id}`` over one keep-alive connection, the first time either
module asks for it on a backend; both modules then assert only about the ids loaded here, since
other test modules write to the same server.

Terminology resources (CodeSystem, ValueSet, ConceptMap, NamingSystem) are left out: they are
optional for the server and their examples are checked by the validator's own tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import orjson

from tests.fhir_examples import iter_examples

TERMINOLOGY_TYPES = frozenset({"CodeSystem", "ValueSet", "ConceptMap", "NamingSystem"})


@dataclass(frozen=True, slots=True)
class Example:
    file: str
    type: str
    id: str
    resource: dict[str, Any] = field(repr=False)


@dataclass(slots=True)
class LoadedCorpus:
    """What the server answered to the PUT of every example, on one backend."""

    base: str
    examples: tuple[Example, ...]
    status: dict[str, int]  # file -> HTTP status of the PUT
    outcome: dict[str, str]  # file -> the diagnostics of a rejection
    seconds: float

    @property
    def rejected(self) -> dict[str, str]:
        return {f: self.outcome.get(f, "") for f, s in self.status.items() if s >= 400}

    @property
    def accepted(self) -> list[Example]:
        """Examples the server stored; for a (type, id) given twice, the file stored last."""
        last: dict[tuple[str, str], Example] = {}
        for ex in self.examples:
            if self.status[ex.file] < 400:
                last[ex.type, ex.id] = ex
        return list(last.values())

    def ids_of(self, resource_type: str) -> set[str]:
        return {ex.id for ex in self.accepted if ex.type == resource_type}


@cache
def corpus_examples() -> tuple[Example, ...]:
    """Every non-terminology example of the package, in file-name order."""
    return tuple(
        Example(name, res["resourceType"], res["id"], res)
        for name, res in iter_examples()
        if res["resourceType"] not in TERMINOLOGY_TYPES
    )


_LOADED: dict[str, LoadedCorpus] = {}


def load_corpus(fhir_base: str) -> LoadedCorpus:
    """PUT every example to the server at ``fhir_base``; done once per server, then cached."""
    found = _LOADED.get(fhir_base)
    if found is None:
        found = _LOADED[fhir_base] = _put_all(fhir_base, corpus_examples())
    return found


def _put_all(fhir_base: str, examples: tuple[Example, ...]) -> LoadedCorpus:
    status: dict[str, int] = {}
    outcome: dict[str, str] = {}
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    started = time.perf_counter()
    with httpx.Client(base_url=fhir_base, timeout=60, headers=headers) as client:
        for ex in examples:
            resp = client.put(f"/{ex.type}/{ex.id}", content=orjson.dumps(ex.resource))
            status[ex.file] = resp.status_code
            if resp.status_code >= 400:
                outcome[ex.file] = _diagnostics(resp)
    return LoadedCorpus(fhir_base, examples, status, outcome, time.perf_counter() - started)


def _diagnostics(resp: httpx.Response) -> str:
    try:
        issues = resp.json().get("issue", [])
        return "; ".join(str(i.get("diagnostics", i.get("code", ""))) for i in issues)
    except ValueError:
        return resp.text[:500]
