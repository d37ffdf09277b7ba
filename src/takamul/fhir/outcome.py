"""Errors that carry a FHIR OperationOutcome, raised anywhere below the API and rendered by it.

The status is the HTTP status the FHIR spec asks for; the layers below the web only choose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    severity: str  # fatal | error | warning | information
    code: str  # FHIR issue-type code, e.g. invalid, not-found, conflict, processing
    diagnostics: str
    expression: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = [self.expression]
        return out


class FhirError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, ``issues`` say why and where."""

    def __init__(
        self, status: int, issues: list[OutcomeIssue] | OutcomeIssue | str, code: str = "invalid"
    ):
        if isinstance(issues, str):
            issues = [OutcomeIssue("error", code, issues)]
        elif isinstance(issues, OutcomeIssue):
            issues = [issues]
        self.status = status
        self.issues = issues
        super().__init__("; ".join(i.diagnostics for i in issues))

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[OutcomeIssue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, f"{resource_type}/{resource_id} is not known to this server", "not-found")


def bad_request(message: str, expression: str | None = None, code: str = "invalid") -> FhirError:
    return FhirError(400, OutcomeIssue("error", code, message, expression))
