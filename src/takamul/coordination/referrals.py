"""Closed-loop referrals: a ``ServiceRequest`` with a ``Task`` whose status the server keeps to
the FHIR Workflow state machine as the SDOH Clinical Care (Gravity) referral Task profile
restricts it, changed only by the party whose move it is.

A referral Task is a Task whose ``focus`` is a ServiceRequest, or one that claims
``REFERRAL_PROFILE``; no other Task is governed (worklist outreach, safety Tasks). The check
runs as a store write hook, inside the writing transaction: a forbidden change raises a 422
``business-rule`` FhirError there, so the whole transaction (a Bundle's other entries too) is
rolled back and nothing is written.

Who may: the owner (``Task.owner``) accepts, rejects, starts, holds, resumes, completes and
fails; the requester (``Task.requester``) creates and cancels. A request acts for an
Organization when its access context's facility is that Organization, for a Practitioner or
PractitionerRole when its facility is the organization of one of their PractitionerRoles.
Unguarded writes (bulk loads, system maintenance) are not a party: they skip the who-may check,
but an update still has to be an allowed transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from sqlalchemy import text

from takamul.fhir.outcome import FhirError, OutcomeIssue
from takamul.security.context import AccessContext
from takamul.store.guard import current_guard
from takamul.store.repository import Session, Store

__all__ = [
    "FEEDBACK_TYPES",
    "FINAL",
    "REFERRAL_PROFILE",
    "TASK_CODE_SYSTEM",
    "TRANSITIONS",
    "Party",
    "Referrals",
    "is_referral",
    "referral_error",
]

REFERRAL_PROFILE = "https://takamul.health/fhir/StructureDefinition/referral-task"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"


class Party(Enum):
    OWNER = "owner"
    REQUESTER = "requester"


OWNER, REQUESTER = Party.OWNER, Party.REQUESTER
# status -> {next status: whose move it is}; leaving on-hold back to where it was is added
# from the Task's history (``_held_from``)
TRANSITIONS: dict[str, dict[str, Party]] = {
    "requested": {"accepted": OWNER, "rejected": OWNER, "cancelled": REQUESTER},
    "accepted": {"in-progress": OWNER, "on-hold": OWNER, "cancelled": REQUESTER},
    "in-progress": {
        "completed": OWNER,
        "failed": OWNER,
        "on-hold": OWNER,
        "cancelled": REQUESTER,
    },
    "on-hold": {"cancelled": REQUESTER},
}
RESUMABLE = frozenset({"accepted", "in-progress"})
FINAL = frozenset({"completed", "failed", "rejected", "cancelled"})
# what the feedback of a completed referral may be: the consult note, the report, the document
FEEDBACK_TYPES = frozenset(
    {"DocumentReference", "DiagnosticReport", "Composition", "Communication"}
)
_VERB = {
    "accepted": "accept",
    "rejected": "reject",
    "in-progress": "start",
    "on-hold": "put on hold",
    "completed": "complete",
    "failed": "fail",
    "cancelled": "cancel",
}


def is_referral(task: Mapping[str, Any]) -> bool:
    """A Task that tracks a referral: its focus is a ServiceRequest, or it claims our profile."""
    focus = str((task.get("focus") or {}).get("reference") or "")
    if focus.startswith("ServiceRequest/") or "/ServiceRequest/" in focus:
        return True
    return REFERRAL_PROFILE in ((task.get("meta") or {}).get("profile") or ())


def referral_error(before: str, after: str, why: str) -> FhirError:
    """The 422 of a forbidden change, naming the transition."""
    return FhirError(
        422,
        OutcomeIssue(
            "error",
            "business-rule",
            f"Task status {before} → {after} is not allowed: {why}",
            "Task.status",
        ),
    )


def _reference(value: object) -> str:
    return str((value or {}).get("reference") or "") if isinstance(value, dict) else ""


def _has_feedback(task: Mapping[str, Any]) -> bool:
    for output in task.get("output") or ():
        target = _reference(output.get("valueReference")).split("/")
        if len(target) >= 2 and target[-2] in FEEDBACK_TYPES:
            return True
    return False


_ONE = text("SELECT content FROM resource WHERE res_type = :t AND res_id = :id AND deleted = :f")


def _previous(session: Session, task_id: str, version: int) -> dict[str, Any] | None:
    """The version before ``version`` (None: there is none, or it was a deletion). One
    indexed lookup: every Task write pays for it, referral or not."""
    if version <= 1:
        return None
    earlier = session.earlier_versions("Task", task_id, version, limit=1)
    return earlier[0] if earlier else None


def _versions_before(session: Session, task_id: str, version: int) -> list[dict[str, Any] | None]:
    """Earlier versions of the Task, newest first (None for a deletion)."""
    return session.earlier_versions("Task", task_id, version)


def organizations_of(session: Session, reference: str) -> set[str]:
    """The Organization ids a party reference acts for (its own, or its roles')."""
    kind, _, rid = reference.rpartition("/")
    kind = kind.rsplit("/", 1)[-1]
    if kind == "Organization":
        return {rid}
    if kind == "PractitionerRole":
        row = session.conn.execute(_ONE, {"t": kind, "id": rid, "f": False}).first()
        roles = [orjson.loads(row.content)] if row is not None and row.content else []
    elif kind == "Practitioner":
        roles = session.referring("PractitionerRole", "practitioner", f"Practitioner/{rid}")
    else:
        return set()
    found = set()
    for role in roles:
        if role.get("active", True) is not False:
            org = _reference(role.get("organization")).rpartition("/")
            if org[0].endswith("Organization") and org[2]:
                found.add(org[2])
    return found


@dataclass(frozen=True, slots=True)
class _Writer:
    """Who writes: the facility of the request's access context (None: bound to none)."""

    facility: str | None
    who: str

    def acts_for(self, session: Session, reference: str) -> bool:
        return bool(self.facility) and self.facility in organizations_of(session, reference)

    def describe(self) -> str:
        if self.facility:
            return f"this request ({self.who}) acts for Organization/{self.facility}"
        return f"this request ({self.who}) is bound to no facility"


def _writer() -> _Writer | None:
    """The party writing now; None for unguarded (system) work."""
    guard = current_guard.get()
    if guard is None:
        return None
    access = getattr(guard, "access", None)
    if not isinstance(access, AccessContext):
        return _Writer(None, "an unknown requester")
    facility = (access.facility or "").removeprefix("Organization/") or None
    return _Writer(facility, access.who)


class Referrals:
    """Attach once at start-up; then every write of a referral Task is checked."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hooked = False

    def attach(self) -> None:
        if not self._hooked:
            self.store.write_hooks.append(self._on_write)
            self._hooked = True

    def _on_write(
        self, session: Session, resource_type: str, resource_id: str, body: dict[str, Any] | None
    ) -> None:
        if resource_type != "Task" or body is None:
            return
        version = int((body.get("meta") or {}).get("versionId") or 1)
        previous = _previous(session, resource_id, version)
        if not is_referral(body) and not (previous is not None and is_referral(previous)):
            return
        writer = _writer()
        if previous is None:
            if writer is not None:
                _check_create(session, body, writer)
            return
        _check_update(session, resource_id, version, previous, body, writer)


def _check_create(session: Session, task: Mapping[str, Any], writer: _Writer) -> None:
    status = str(task.get("status"))
    if status != "requested":
        raise referral_error(
            "(new)", status, "a referral Task is created as requested; the owner then accepts it"
        )
    requester, owner = _reference(task.get("requester")), _reference(task.get("owner"))
    if not requester or not owner:
        raise referral_error(
            "(new)", status, "a referral Task names its requester and its owner (Task.requester, "
            "Task.owner: an Organization, Practitioner or PractitionerRole)"
        )  # fmt: skip
    if not writer.acts_for(session, requester):
        raise referral_error(
            "(new)",
            status,
            f"only the requester ({requester}) may make the referral; {writer.describe()}",
        )


def _check_update(
    session: Session,
    task_id: str,
    version: int,
    previous: Mapping[str, Any],
    task: Mapping[str, Any],
    writer: _Writer | None,
) -> None:
    before, after = str(previous.get("status")), str(task.get("status"))
    if writer is not None:
        _check_parties(previous, task, before, after)
    # an unguarded re-save of an old completed Task is not a completion
    completing = after == "completed" and (before != after or writer is not None)
    if completing and not _has_feedback(task):
        raise referral_error(
            before,
            after,
            "a completed referral carries its feedback in Task.output (a valueReference to "
            f"the consult note or report: {', '.join(sorted(FEEDBACK_TYPES))})",
        )
    if before == after:
        return
    # where an on-hold referral may go back to is in its history, read only then
    history = _versions_before(session, task_id, version) if before == "on-hold" else []
    allowed = _allowed(before, history)
    if after not in allowed:
        if before in FINAL:
            why = f"{before} is final; make a new referral instead"
        else:
            why = f"from {before} a referral may go to {', '.join(sorted(allowed))}"
        raise referral_error(before, after, why)
    if writer is None:
        return
    party = allowed[after]
    reference = _reference(previous.get("owner" if party is OWNER else "requester"))
    if not writer.acts_for(session, reference):
        name = "owner" if party is OWNER else "requester"
        raise referral_error(
            before,
            after,
            f"only the {name} ({reference or 'not recorded'}) may {_VERB.get(after, after)} "
            f"the referral; {writer.describe()}",
        )


def _allowed(before: str, history: list[dict[str, Any] | None]) -> dict[str, Party]:
    allowed = dict(TRANSITIONS.get(before, {}))
    if before == "on-hold":
        left = _held_from(history)
        if left is not None:
            allowed[left] = OWNER
    return allowed


def _held_from(history: list[dict[str, Any] | None]) -> str | None:
    """The status an on-hold referral left: the newest earlier status that was not on-hold."""
    for version in history:
        if version is None:
            return None
        status = version.get("status")
        if status != "on-hold":
            return str(status) if status in RESUMABLE else None
    return None


def _check_parties(
    previous: Mapping[str, Any], task: Mapping[str, Any], before: str, after: str
) -> None:
    """The parties and the request of a referral do not change under a party's write: a new
    owner is a new referral (cancel, then refer again), or the loop could not be followed."""
    for element in ("requester", "owner", "focus"):
        if _reference(previous.get(element)) != _reference(task.get(element)):
            raise referral_error(
                before,
                after,
                f"Task.{element} of a referral does not change; cancel it and make a new "
                "referral instead",
            )
