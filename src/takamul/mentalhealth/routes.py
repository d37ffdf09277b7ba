"""``QuestionnaireResponse/$score``: score a response without storing it.

A FHIR write returns the stored resource, so a client whose response was stored without a score
(too many items missing, in progress) learns why here: the answer is an OperationOutcome with
the total and band (information) or the reasons no score was made (warnings naming the items).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.mentalhealth.scoring import score_response
from takamul.rest import interactions as ix

__all__ = ["add_mh_routes", "score_outcome"]

FHIR_JSON = "application/fhir+json"


def _response_of(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter") or ():
            if isinstance(parameter, dict) and parameter.get("name") == "response":
                body = parameter.get("resource")
                break
    if not isinstance(body, dict) or body.get("resourceType") != "QuestionnaireResponse":
        raise FhirError(
            400,
            OutcomeIssue(
                "error",
                "invalid",
                "Send a QuestionnaireResponse, or a Parameters resource with it as 'response'",
                "QuestionnaireResponse",
            ),
        )
    return body


def score_outcome(body: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OperationOutcome) of scoring ``body``: 200 with the total and band, 422
    with the reasons when no score can be made."""
    response = _response_of(body)
    score = score_response(response)
    if score is None:
        return 422, operation_outcome(
            [
                OutcomeIssue(
                    "error",
                    "not-supported",
                    "The response answers none of the instruments this record scores "
                    "(by its questionnaire url or its item linkIds)",
                    "QuestionnaireResponse.questionnaire",
                )
            ]
        )
    outcome = score.outcome()
    if score.safety:
        outcome["issue"].append(
            {
                "severity": "warning",
                "code": "business-rule",
                "diagnostics": f"{score.instrument.title}: the self-harm item is positive "
                f"({score.safety_value}); storing this response raises a safety Flag and Task",
            }
        )
    return (200 if score.total is not None else 422), outcome


def add_mh_routes(app: FastAPI) -> None:
    """Add ``POST /fhir/QuestionnaireResponse/$score`` (before the generic /fhir routes)."""

    @app.post("/fhir/QuestionnaireResponse/$score")
    async def score(request: Request) -> Response:
        status, outcome = score_outcome(ix.parse_json(await request.body()))
        return Response(orjson.dumps(outcome), status, media_type=FHIR_JSON)
