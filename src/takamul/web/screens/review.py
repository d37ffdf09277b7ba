"""The registry review queue: the client registry's uncertain pairs, most probable first, each
opened side by side with the evidence per field; a reviewer links them, keeps them apart,
unlinks a record from its person, or undoes a decision.

The same semantics as the review API (``takamul.api.mpi``): decisions are the registry's own
(``ClientRegistry.decide``, ``unlink``, ``revert``), made as the signed-in person; the two
registrations are read under the viewer's guard, so a record the viewer may not see gives the
same "not found" page as a missing one. Every page and action is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from takamul.fhir.outcome import FhirError
from takamul.mpi.service import AUTOMATIC, ClientRegistry
from takamul.registry.arabic import has_arabic
from takamul.registry.record import FATHER_NAME_EXT
from takamul.store.repository import Session
from takamul.web.context import Screen, Viewer, WebServices, read_form
from takamul.web.i18n import N_
from takamul.web.pages import page
from takamul.web.render import Formatter

__all__ = ["SCREEN", "register"]

SCREEN = Screen(
    "review", "/review", N_("Registry review"), allowed=lambda viewer: viewer.can("registry-review")
)
PAGE_SIZE = 20
BACK = "/app/review"
T = TypeVar("T")

# The comparison fields of the registry's model, in the order a reviewer reads them.
FIELD_LABELS = {
    "given": N_("Given name"),
    "family": N_("Family name"),
    "father": N_("Father's name"),
    "birth_date": N_("Birth date"),
    "national_id": N_("National ID"),
    "phone": N_("Phone"),
    "sex": N_("Sex"),
    "region": N_("Region"),
}
LEVEL_LABELS = {
    "exact": N_("Exact"),
    "equivalent": N_("Equivalent (same name across scripts, or the same date read another way)"),
    "similar": N_("Similar"),
    "different": N_("Different"),
    "missing": N_("Missing on one side"),
}
GRADE_LABELS = {
    "certain": N_("Certain"),
    "probable": N_("Probable"),
    "possible": N_("Possible"),
    "certainly-not": N_("Certainly not"),
}
STATUS_LABELS = {
    "open": N_("Open"),
    "linked": N_("Linked by a reviewer"),
    "not-duplicate": N_("Marked not a duplicate"),
    "resolved": N_("Resolved: the records came together later"),
}
SEX_LABELS = {
    "male": N_("Male"),
    "female": N_("Female"),
    "other": N_("Other"),
    "unknown": N_("Unknown"),
}
# What the notice after an action says, by the action done (only these are shown).
DONE_LABELS = {
    "link": N_("Linked: the two records are one person now."),
    "not-duplicate": N_("Kept apart: the two records are different people."),
    "unlink": N_("Unlinked: the record is a person of its own now."),
    "revert": N_("Undone: the records are back where they were."),
}
EVENT_LABELS = {
    "merge": N_("Linked"),
    "unmerge": N_("Separated"),
    "not-duplicate": N_("Marked not a duplicate"),
}
DECISIONS = ("link", "not-duplicate")


# -- what a page shows of a registration ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scripts:
    """A name as written in Arabic or Persian script and in Latin letters (either may be empty)."""

    native: str
    latin: str


@dataclass(frozen=True, slots=True)
class Registration:
    """One Patient record as a reviewer compares it."""

    patient_id: str
    person_id: str | None
    fellows: int  # other records in its person
    placed_by_reviewer: bool
    given: Scripts
    family: Scripts
    father: Scripts
    birth_date: str | None
    sex: str | None
    national_ids: tuple[str, ...]
    phones: tuple[str, ...]
    region: str
    facility: str | None

    def names(self, field: str) -> Scripts | None:
        return {"given": self.given, "family": self.family, "father": self.father}.get(field)

    @property
    def full_name(self) -> Scripts:
        """Given and family names together, in each script."""
        return Scripts(
            " ".join(p for p in (self.given.native, self.family.native) if p),
            " ".join(p for p in (self.given.latin, self.family.latin) if p),
        )


@dataclass(frozen=True, slots=True)
class EvidenceRow:
    field: str
    label: str
    level: str
    bits: float


@dataclass(frozen=True, slots=True)
class Pair:
    """A review item with both registrations as the viewer may read them."""

    id: int
    status: str
    probability: float
    grade: str
    evidence: tuple[EvidenceRow, ...]
    a: Registration
    b: Registration
    decided_by: str | None

    @property
    def together(self) -> bool:
        return self.a.person_id is not None and self.a.person_id == self.b.person_id


def _by_script(values: list[str]) -> Scripts:
    native = [v for v in values if v and has_arabic(v)]
    latin = [v for v in values if v and not has_arabic(v)]
    return Scripts(" / ".join(dict.fromkeys(native)), " / ".join(dict.fromkeys(latin)))


def _father(body: Mapping[str, Any]) -> Scripts:
    values = [
        ext.get("valueString", "")
        for ext in body.get("extension") or ()
        if ext.get("url") == FATHER_NAME_EXT and isinstance(ext.get("valueString"), str)
    ]
    return _by_script(values)


def _facility(session: Session, body: Mapping[str, Any]) -> str | None:
    """The name of the facility that holds the record, read under the viewer's guard."""
    ref = (body.get("managingOrganization") or {}).get("reference") or ""
    display = (body.get("managingOrganization") or {}).get("display")
    if not ref.startswith("Organization/"):
        return display
    try:
        org = session.read("Organization", ref.removeprefix("Organization/"))
    except FhirError:
        return display or ref
    return str(_json(org.content).get("name") or display or ref)


def _json(content: bytes | None) -> dict[str, Any]:
    return dict(orjson.loads(content)) if content else {}


def registration(
    session: Session, registry: ClientRegistry, body: Mapping[str, Any]
) -> Registration:
    pid = str(body.get("id") or "")
    person, members, manual = registry.placement(pid)
    names = body.get("name") or []
    address = (body.get("address") or [{}])[0]
    return Registration(
        patient_id=pid,
        person_id=person,
        fellows=len(members) - 1 if person else 0,
        placed_by_reviewer=manual,
        given=_by_script([" ".join(n.get("given") or []) for n in names]),
        family=_by_script([n.get("family") or "" for n in names]),
        father=_father(body),
        birth_date=body.get("birthDate"),
        sex=body.get("gender"),
        national_ids=tuple(
            str(i["value"]) for i in body.get("identifier") or () if isinstance(i.get("value"), str)
        ),
        phones=tuple(
            str(t["value"])
            for t in body.get("telecom") or ()
            if t.get("system") in (None, "phone", "sms") and isinstance(t.get("value"), str)
        ),
        region=", ".join(v for v in (address.get("city"), address.get("state")) if v),
        facility=_facility(session, body),
    )


def _patient_id(side: Mapping[str, Any]) -> str:
    return str(side.get("patient") or "").removeprefix("Patient/")


def _read_patient(session: Session, pid: str) -> dict[str, Any] | None:
    """The Patient as the viewer may read it; None when hidden, missing or deleted."""
    try:
        return _json(session.read("Patient", pid).content)
    except FhirError:
        return None


def pair_of(session: Session, registry: ClientRegistry, item: Mapping[str, Any]) -> Pair | None:
    """A review item of ``registry.review(s)`` with both records read under the viewer's guard;
    None when the viewer may not read one of them."""
    bodies = [_read_patient(session, _patient_id(item[k])) for k in ("a", "b")]
    if bodies[0] is None or bodies[1] is None:
        return None
    evidence = tuple(
        EvidenceRow(field, label, item["evidence"][field]["level"], item["evidence"][field]["bits"])
        for field, label in FIELD_LABELS.items()
        if field in item["evidence"]
    )
    return Pair(
        id=int(item["id"]),
        status=str(item["status"]),
        probability=float(item["probability"]),
        grade=str(item["grade"]),
        evidence=evidence,
        a=registration(session, registry, bodies[0]),
        b=registration(session, registry, bodies[1]),
        decided_by=item.get("decidedBy"),
    )


def last_decision(registry: ClientRegistry, pair: Pair) -> dict[str, Any] | None:
    """The latest reviewer's event that moved either record of the pair and is not undone:
    what Undo on the pair's page reverts."""
    found = [
        e
        for pid in (pair.a.patient_id, pair.b.patient_id)
        for e in registry.events(pid, 20)
        if e["kind"] in EVENT_LABELS and e["actor"] != AUTOMATIC and e["revertedBy"] is None
    ]
    return max(found, key=lambda e: e["id"]) if found else None


# -- presentation helpers -----------------------------------------------------------------------


def percent(fmt: Formatter, probability: float) -> str:
    return fmt.num(f"{probability * 100:.1f}")


def signed(fmt: Formatter, bits: float) -> str:
    """A weight with its sign (evidence for or against), a true minus sign; 0 unsigned."""
    if round(bits, 1) == 0:
        return fmt.num("0")
    return fmt.num(f"{bits:+.1f}").replace("-", "\u2212")


def day_of(epoch: float | None) -> str | None:
    """The ISO date of a registry timestamp (seconds since the epoch, UTC)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).date().isoformat()


# -- routes ------------------------------------------------------------------------------------


def _not_allowed(web: WebServices, viewer: Viewer) -> HTMLResponse:
    return page(
        web,
        viewer,
        "frame/error.html",
        403,
        status=403,
        message=N_("The registry review queue is for registry reviewers."),
    )


def _not_found(web: WebServices, viewer: Viewer) -> HTMLResponse:
    return page(
        web,
        viewer,
        "frame/error.html",
        404,
        status=404,
        message=N_("There is no such pair in the review queue."),
    )


def _refused(web: WebServices, viewer: Viewer, err: FhirError) -> HTMLResponse:
    """A decision the registry refused, said in the viewer's language."""
    if err.status == 404:
        return _not_found(web, viewer)
    message = (
        N_("A record has moved since that decision; undo the later decisions first.")
        if err.status == 409
        else N_("The client registry refused this decision.")
    )
    return page(web, viewer, "frame/error.html", err.status, status=err.status, message=message)


def _row_id(value: str) -> int | None:
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _reason(form: Mapping[str, str]) -> str | None:
    text = (form.get("reason") or "").strip()
    return text[:500] or None


def _formatters(viewer: Viewer) -> tuple[Formatter, Formatter | None]:
    """The viewer's formatter, and a Gregorian one when the viewer reads another calendar
    (birth dates are shown in both)."""
    if viewer.prefs.calendar == "gregorian":
        return Formatter(viewer.prefs), None
    return Formatter(viewer.prefs), Formatter(replace(viewer.prefs, calendar="gregorian"))


def _as_viewer(web: WebServices, viewer: Viewer, work: Callable[[], T]) -> T:
    with web.guarded(viewer):
        return work()


def _done(query: Mapping[str, str]) -> dict[str, Any]:
    """The notice after an action: what was done, its registry event (for Undo) and the pair
    it was done on (where Undo returns)."""
    action = query.get("action")
    if action not in DONE_LABELS:
        return {"action": None, "event": None, "origin": None}
    return {
        "action": action,
        "event": _row_id(query.get("done") or ""),
        "origin": _row_id(query.get("from") or ""),
    }


def _after(path: str, action: str, event: int, origin: int | None) -> RedirectResponse:
    query = {"action": action, "done": event, **({"from": origin} if origin else {})}
    return RedirectResponse(f"{path}?{urlencode(query)}", 303)


def register(router: APIRouter, web: WebServices) -> None:
    @router.get("/review")
    def queue(request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _not_allowed(web, viewer)
        registry = web.registry
        notice = _done(request.query_params)
        if registry is None:
            return page(
                web, viewer, "review/queue.html", active=SCREEN.key, back=BACK, off=True, **notice
            )
        wanted = _row_id(request.query_params.get("page") or "1") or 1
        items, total, number, pages = _queue_page(registry, wanted)
        with web.guarded(viewer), web.store.reading() as session:
            pairs = [(item["id"], pair_of(session, registry, item)) for item in items]
        shown = tuple(r.patient_id for _, p in pairs if p for r in (p.a, p.b))
        web.audit_page(request, viewer, "search", resource_type="Patient", patient_ids=shown)
        return page(
            web,
            viewer,
            "review/queue.html",
            active=SCREEN.key,
            back=BACK,
            off=False,
            pairs=pairs,
            total=total,
            number=number,
            pages=pages,
            gregorian=_formatters(viewer)[1],
            done_labels=DONE_LABELS,
            percent=percent,
            grade_labels=GRADE_LABELS,
            **notice,
        )

    @router.get("/review/{review_id}")
    def pair(review_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        if not SCREEN.allowed(viewer):
            return _not_allowed(web, viewer)
        registry, number = web.registry, _row_id(review_id)
        if registry is None or number is None:
            return _not_found(web, viewer)
        try:
            item = registry.review(number)
        except FhirError:
            return _not_found(web, viewer)
        with web.guarded(viewer), web.store.reading() as session:
            shown = pair_of(session, registry, item)
        if shown is None:
            return _not_found(web, viewer)
        ids = (shown.a.patient_id, shown.b.patient_id)
        web.audit_page(request, viewer, "read", resource_type="Patient", patient_ids=ids)
        fmt, gregorian = _formatters(viewer)
        last = last_decision(registry, shown)
        return page(
            web,
            viewer,
            "review/pair.html",
            active=SCREEN.key,
            back=f"{BACK}/{shown.id}",
            pair=shown,
            last=last,
            last_day=day_of(last["at"]) if last else None,
            gregorian=gregorian,
            percent=percent(fmt, shown.probability),
            signed=signed,
            field_labels=FIELD_LABELS,
            level_labels=LEVEL_LABELS,
            grade_labels=GRADE_LABELS,
            status_labels=STATUS_LABELS,
            sex_labels=SEX_LABELS,
            done_labels=DONE_LABELS,
            event_labels=EVENT_LABELS,
            **_done(request.query_params),
        )

    @router.post("/review/{review_id}/decide")
    async def decide(review_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _not_allowed(web, viewer)
        registry, number = web.registry, _row_id(review_id)
        decision = form.get("decision", "")
        if registry is None or number is None or decision not in DECISIONS:
            return _not_found(web, viewer)
        shown = await run_in_threadpool(_visible_pair, web, viewer, registry, number)
        if shown is None:
            return _not_found(web, viewer)
        ids = (shown.a.patient_id, shown.b.patient_id)
        try:
            event = await run_in_threadpool(
                _as_viewer,
                web,
                viewer,
                lambda: registry.decide(number, decision, viewer.username, _reason(form)),
            )
        except FhirError as err:
            web.audit_page(
                request, viewer, f"registry-{decision}", status=err.status, patient_ids=ids
            )
            return _refused(web, viewer, err)
        web.audit_page(
            request,
            viewer,
            f"registry-{decision}",
            resource_type="Patient",
            patient_ids=ids,
            outcome_text=f"registry event {event}",
        )
        following, _ = await run_in_threadpool(registry.reviews, "open", 1, 0)
        path = f"{BACK}/{following[0]['id']}" if following else BACK
        return _after(path, decision, event, shown.id)

    @router.post("/review/{review_id}/unlink")
    async def unlink(review_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _not_allowed(web, viewer)
        registry, number = web.registry, _row_id(review_id)
        if registry is None or number is None or form.get("side") not in ("a", "b"):
            return _not_found(web, viewer)
        shown = await run_in_threadpool(_visible_pair, web, viewer, registry, number)
        if shown is None:
            return _not_found(web, viewer)
        record = shown.a if form["side"] == "a" else shown.b
        try:
            event = await run_in_threadpool(
                _as_viewer,
                web,
                viewer,
                lambda: registry.unlink(record.patient_id, viewer.username, _reason(form)),
            )
        except FhirError as err:
            web.audit_page(
                request,
                viewer,
                "registry-unlink",
                status=err.status,
                patient_ids=(record.patient_id,),
            )
            return _refused(web, viewer, err)
        web.audit_page(
            request,
            viewer,
            "registry-unlink",
            resource_type="Patient",
            resource_id=record.patient_id,
            patient_ids=(record.patient_id,),
            outcome_text=f"registry event {event}",
        )
        return _after(f"{BACK}/{shown.id}", "unlink", event, shown.id)

    @router.post("/review/events/{event_id}/revert")
    async def revert(event_id: str, request: Request) -> Response:
        viewer = web.viewer(request)
        form = await read_form(request)
        web.check_csrf(request, viewer, form)
        if not SCREEN.allowed(viewer):
            return _not_allowed(web, viewer)
        registry, number = web.registry, _row_id(event_id)
        if registry is None or number is None:
            return _not_found(web, viewer)
        moved = await run_in_threadpool(_moved_patients, registry, number)
        try:
            event = await run_in_threadpool(
                _as_viewer,
                web,
                viewer,
                lambda: registry.revert(number, viewer.username, _reason(form)),
            )
        except FhirError as err:
            web.audit_page(request, viewer, "registry-revert", status=err.status, patient_ids=moved)
            return _refused(web, viewer, err)
        web.audit_page(
            request,
            viewer,
            "registry-revert",
            resource_type="Patient",
            patient_ids=moved,
            outcome_text=f"registry event {event} reverts {number}",
        )
        back = _row_id(form.get("review") or "")
        return _after(f"{BACK}/{back}" if back else BACK, "revert", event, back)


def _queue_page(
    registry: ClientRegistry, wanted: int
) -> tuple[list[dict[str, Any]], int, int, int]:
    """(items, total, page number, pages) of the open queue; a page past the end is the last."""
    items, total = registry.reviews("open", PAGE_SIZE, (wanted - 1) * PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    if wanted > pages:
        items, total = registry.reviews("open", PAGE_SIZE, (pages - 1) * PAGE_SIZE)
    return items, total, min(wanted, pages), pages


def _visible_pair(
    web: WebServices, viewer: Viewer, registry: ClientRegistry, number: int
) -> Pair | None:
    """The review item as the viewer may see it (None: missing, or a record hidden)."""
    try:
        item = registry.review(number)
    except FhirError:
        return None
    with web.guarded(viewer), web.store.reading() as session:
        return pair_of(session, registry, item)


def _moved_patients(registry: ClientRegistry, event_id: int) -> tuple[str, ...]:
    """The records an event moved (for the audit record of its undoing)."""
    for e in registry.events(None, 200):
        if e["id"] == event_id:
            return tuple(dict.fromkeys(m["patient"] for m in e["detail"].get("moves", [])))
    return ()
