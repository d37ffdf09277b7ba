"""HTTP routes of the care programmes: ``Measure/$care-gaps`` (Da Vinci DEQM) and CDS Hooks 2.0
(``/cds-services``, the ``patient-view`` service ``takamul-care-gaps``).

Thin: parsing, the guarded reads of the Patients, and rendering; the gaps and the documents are
built in ``takamul.programmes.caregaps``. A person's gaps are patient data: they are given only
for a Patient the requester may read (404 otherwise, as for a read) and, for an organization,
only for the Patients its guarded search lets through.

``$care-gaps`` lives under ``/fhir``, so the access-control middleware authenticates and audits
it like any FHIR request. ``/cds-services`` is outside ``/fhir`` and the middleware lets it
through, so the service call authenticates itself here the same way (a SMART Backend Services
bearer token, or a login session), runs under the same guard and writes its own audit event;
the discovery document is public, as CDS Hooks clients read it before they call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
from dateutil.relativedelta import relativedelta
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.programmes.caregaps import care_gaps, cds_cards, parse_care_gaps
from takamul.programmes.measures import store_measures
from takamul.programmes.service import Programmes
from takamul.rest import interactions as ix
from takamul.security.audit import AuditLog, AuditRecord
from takamul.security.context import AccessContext
from takamul.security.guard import AccessGuard
from takamul.store.guard import current_guard, guarded
from takamul.store.repository import Session

__all__ = ["CDS_SERVICE", "add_programme_routes", "discovery"]

log = logging.getLogger("takamul.api")

FHIR_JSON = "application/fhir+json"
CDS_SERVICE = "takamul-care-gaps"
# the types the gaps are derived from: a requester who may not read them gets no gaps
SOURCE_TYPES = ("Condition", "Observation")
# an organization's gaps are computed person by person (about 5 ms each on either store); past
# this many Patient records the answer takes too long: the overdue list is the tool for that
MAX_ORGANIZATION_PATIENTS = 2_000
_PAGE = 1_000
_CHECKED_VALUES = (*ix.PARAMETER_VALUES, "valueCanonical")


def discovery() -> dict[str, Any]:
    """The CDS Hooks discovery document."""
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": CDS_SERVICE,
                "title": "Takamul care gaps",
                "description": (
                    "Open care gaps of the patient in Takamul's care programmes: overdue "
                    "screening and immunization, and chronic conditions (hypertension, diabetes, "
                    "chronic kidney disease) that are not controlled or not followed up, from "
                    "every facility's records of the person."
                ),
                "prefetch": {"patient": "Patient/{{context.patientId}}"},
                "usageRequirements": (
                    "context.patientId is a Patient id of the Takamul shared record; send the "
                    "Takamul access token as 'Authorization: Bearer'."
                ),
            }
        ]
    }


def _parameters(body: Any) -> list[tuple[str, str]]:
    """(name, value) pairs of a ``$care-gaps`` Parameters body: the primitive values an
    operation takes, a canonical (measureUrl) or a Reference (subject, organization)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, "POST $care-gaps takes a Parameters resource", "invalid")
    entries = body.get("parameter") or []
    if not isinstance(entries, list):
        raise FhirError(400, OutcomeIssue("error", "structure", "must be an array", "parameter"))
    out = []
    for n, entry in enumerate(entries):
        where = f"Parameters.parameter[{n}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise FhirError(400, OutcomeIssue("error", "required", "needs a name", where))
        values = [entry[k] for k in _CHECKED_VALUES if k in entry]
        ref = entry.get("valueReference")
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            values.append(ref["reference"])
        if len(values) != 1 or not isinstance(values[0], str | int) or isinstance(values[0], bool):
            raise FhirError(
                400,
                OutcomeIssue(
                    "error", "invalid", f"parameter {name!r} needs exactly one value", where
                ),
            )
        out.append((name, str(values[0])))
    return out


def _require_sources() -> None:
    guard = current_guard.get()
    if guard is not None:
        for rtype in SOURCE_TYPES:
            guard.require(rtype, "r")


def _organization_patients(session: Session, organization: str) -> list[dict[str, Any]]:
    """The Patients managed by ``organization`` that the requester's guard lets through."""
    found: list[dict[str, Any]] = []
    offset = 0
    while True:
        query = session.parse_search(
            "Patient",
            [
                ("organization", f"Organization/{organization}"),
                ("_sort", "_id"),
                ("_count", str(_PAGE)),
                ("_offset", str(offset)),
                ("_total", "none"),
            ],
        )
        page = session.search(query)
        found.extend(r.json() for r in page.matches)
        if len(found) > MAX_ORGANIZATION_PATIENTS:
            raise FhirError(
                400,
                OutcomeIssue(
                    "error",
                    "too-costly",
                    f"Organization/{organization} has more than {MAX_ORGANIZATION_PATIENTS} "
                    "patients; ask per patient (subject), or use the programme's overdue list",
                    "organization",
                ),
            )
        if len(page.matches) < _PAGE:
            return found
        offset += _PAGE


def _note_patients(patients: list[str]) -> None:
    """Name the Patients reported on in the request's audit event: the middleware audits the
    patients the guard collected, and a POST body or an organization's patients are not in the
    URL it reads."""
    guard = current_guard.get()
    noted = getattr(guard, "written_patients", None)
    if isinstance(noted, set):
        noted.update(patients)


def _cds_request(body: Any) -> tuple[str, str]:
    """(patientId, hookInstance) of a CDS Hooks 2.0 patient-view request, or a 400 that says
    what is wrong."""

    def bad(message: str, where: str) -> FhirError:
        return FhirError(400, OutcomeIssue("error", "invalid", message, where))

    if not isinstance(body, dict):
        raise bad("A CDS Hooks request is a JSON object", "request")
    if body.get("hook") != "patient-view":
        raise bad(
            f"{CDS_SERVICE} answers the 'patient-view' hook, not {str(body.get('hook'))[:40]!r}",
            "hook",
        )
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not instance:
        raise bad("hookInstance (a UUID for this hook call) is required", "hookInstance")
    context = body.get("context")
    if not isinstance(context, dict):
        raise bad("context (with patientId and userId) is required", "context")
    patient = context.get("patientId")
    if not isinstance(patient, str) or not patient:
        raise bad("context.patientId is required", "context.patientId")
    if not isinstance(context.get("userId"), str) or not context["userId"]:
        raise bad("context.userId is required (e.g. Practitioner/123)", "context.userId")
    for key in ("fhirServer", "prefetch", "fhirAuthorization"):
        value = body.get(key)
        expected = str if key == "fhirServer" else dict
        if value is not None and not isinstance(value, expected):
            raise bad(f"{key} must be a {'string' if expected is str else 'JSON object'}", key)
    if body.get("fhirAuthorization") is not None and body.get("fhirServer") is None:
        raise bad("fhirAuthorization is only sent together with fhirServer", "fhirAuthorization")
    pid = patient.removeprefix("Patient/")
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", pid):
        raise bad(f"context.patientId {patient[:70]!r} is not a Patient id", "context.patientId")
    return pid, instance


def add_programme_routes(
    app: FastAPI, programmes: Programmes, base_of: Callable[[Request], str]
) -> None:
    """Store the care-gap Measures and add the routes (before the generic /fhir routes)."""
    store = programmes.store
    written = store_measures(store, programmes.catalog)
    if written:
        log.info("care programmes: stored Measures %s", ", ".join(written))

    def run_care_gaps(params: list[tuple[str, str]], base: str) -> bytes:
        query = parse_care_gaps(params, programmes.catalog)
        _require_sources()
        with store.reading() as session:
            if query.subject is not None:
                patients = [session.read("Patient", query.subject).json()]
            else:
                assert query.organization is not None
                patients = _organization_patients(session, query.organization)
        result, reported = care_gaps(programmes, query, patients, base)
        _note_patients(reported)
        return orjson.dumps(result)

    @app.get("/fhir/Measure/$care-gaps")
    async def care_gaps_get(request: Request) -> Response:
        params = list(request.query_params.multi_items())
        content = await run_in_threadpool(run_care_gaps, params, base_of(request))
        return Response(content, 200, media_type=FHIR_JSON)

    @app.post("/fhir/Measure/$care-gaps")
    async def care_gaps_post(request: Request) -> Response:
        params = list(request.query_params.multi_items())
        raw = await request.body()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and "json" not in kind:
            raise FhirError(
                415,
                f"Content-Type '{kind}' is not supported; send a Parameters resource as "
                "application/fhir+json",
                "not-supported",
            )
        if raw.strip():
            params += _parameters(ix.parse_json(raw))
        content = await run_in_threadpool(run_care_gaps, params, base_of(request))
        return Response(content, 200, media_type=FHIR_JSON)

    @app.get("/cds-services")
    def cds_discovery() -> Response:
        return Response(orjson.dumps(discovery()), 200, media_type="application/json")

    @app.post(f"/cds-services/{CDS_SERVICE}")
    async def cds_patient_view(request: Request) -> Response:
        base = base_of(request)
        security = getattr(request.app.state, "security", None)
        audit = getattr(request.app.state, "audit", None)
        access: AccessContext | None = None
        pid: str | None = None
        try:
            if security is not None:
                access = security.authenticate(request.headers, base)
            pid, _ = _cds_request(ix.parse_json(await request.body()))
            content = await run_in_threadpool(cds_run, pid, access, base)
        except FhirError as err:
            _cds_audit(audit, request, access, pid, err.status, str(err))
            headers = dict(getattr(err, "headers", None) or {})
            return Response(
                orjson.dumps(operation_outcome(err.issues)),
                err.status,
                headers,
                media_type=FHIR_JSON,
            )
        _cds_audit(audit, request, access, pid, 200, None)
        return Response(content, 200, media_type="application/json")

    def cds_run(pid: str, access: AccessContext | None, base: str) -> bytes:
        def work() -> bytes:
            _require_sources()
            with store.reading() as session:
                session.read("Patient", pid)  # 404 for a Patient the requester may not read
            # the gaps as of today: a year's period, so nothing is prospective
            today = date.today()
            gaps = programmes.gaps([pid], today - relativedelta(years=1), today, today)
            return orjson.dumps({"cards": cds_cards(gaps, base)})

        if access is None:
            return work()
        with guarded(AccessGuard(access, store)):
            return work()


def _cds_audit(
    audit: AuditLog | None,
    request: Request,
    access: AccessContext | None,
    pid: str | None,
    status: int,
    text: str | None,
) -> None:
    """The service call's audit event (the middleware does not see /cds-services)."""
    if audit is None:
        return
    fields: dict[str, Any] = {
        "status": status,
        "resource_type": "Patient",
        "resource_id": pid,
        "patient_ids": (pid,) if pid else (),
        "address": request.client.host if request.client else None,
        "outcome_text": text,
    }
    record = (
        AuditRecord.for_access(access, "cds-patient-view", **fields)
        if access is not None
        else AuditRecord("cds-patient-view", **fields)
    )
    audit.record(record)
