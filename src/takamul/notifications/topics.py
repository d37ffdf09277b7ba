"""The subscription topics this server announces, and how a change is matched to a subscriber's
filters.

R4 has no ``SubscriptionTopic`` resource: as the Subscriptions R5 Backport IG (STU 1.1) describes
for R4 servers, a subscription names its topic by canonical URL in ``Subscription.criteria``
and narrows it with ``backport-filter-criteria`` extensions (``Task?owner=Organization/x``); the
server lists its topics in the CapabilityStatement. Each topic here is a resource type, a test
of a stored version (does this change belong to the topic?) and the search parameters its
filters may use. A filter is matched against the search-index values of the changed resource,
extracted by the same code that indexes it for search, so ``owner=Organization/x`` means here
what it means in ``GET Task?owner=Organization/x``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from takamul.coordination.referrals import is_referral
from takamul.equity.outreach import OUTREACH_SYSTEM
from takamul.fhir.search_values import ReferenceEntry, StringEntry, TokenEntry, UriEntry
from takamul.mentalhealth.safety import SUICIDE_RISK
from takamul.programmes.overdue import FOLLOW_UP

__all__ = [
    "CARE_TEAM_MEMBER",
    "TOPICS",
    "TOPIC_BASE",
    "Topic",
    "by_url",
    "filter_matches",
    "topics_of",
]

TOPIC_BASE = "https://takamul.health/fhir/SubscriptionTopic/"
# the filter of the care-team topic that no search parameter of Encounter says: a member of
# an active CareTeam of the encounter's patient (matched by the dispatcher)
CARE_TEAM_MEMBER = "care-team-member"

Body = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Topic:
    code: str
    title: str
    resource_type: str
    description: str
    fires: Callable[[Body], bool]  # does this stored version belong to the topic?
    filters: tuple[str, ...]  # the filter parameters a subscription may use

    @property
    def url(self) -> str:
        return TOPIC_BASE + self.code


def _coded(concept: Any, system: str, test: Callable[[str], bool]) -> bool:
    codings = (concept or {}).get("coding") or () if isinstance(concept, dict) else ()
    return any(
        isinstance(c, dict) and c.get("system") == system and test(str(c.get("code") or ""))
        for c in codings
    )


def _safety_flag(flag: Body) -> bool:
    return _coded(flag.get("code"), SUICIDE_RISK["system"], lambda c: c == SUICIDE_RISK["code"])


def _care_gap(task: Body) -> bool:
    # the care programmes' follow-up worklist Tasks (programmes.overdue: <programme>-follow-up)
    return _coded(task.get("code"), OUTREACH_SYSTEM, lambda c: c.endswith(f"-{FOLLOW_UP}"))


TOPICS: dict[str, Topic] = {
    t.code: t
    for t in (
        Topic(
            "referral-task",
            "Referral Task changes",
            "Task",
            "A referral Task (focus a ServiceRequest) is made or changes: accepted, rejected, "
            "started, completed with feedback, cancelled.",
            is_referral,
            ("owner", "requester", "status", "patient", "focus", "code"),
        ),
        Topic(
            "care-team-encounter",
            "Encounters of patients on a care team",
            "Encounter",
            "An Encounter is recorded or changes for a patient with an active CareTeam; "
            f"'{CARE_TEAM_MEMBER}' narrows it to the teams a member is on.",
            lambda _: True,
            (CARE_TEAM_MEMBER, "patient", "status", "class", "service-provider"),
        ),
        Topic(
            "safety-alert",
            "Mental-health safety alerts",
            "Flag",
            "A safety Flag (SNOMED CT 225444004 at risk for suicide) is raised or changes.",
            _safety_flag,
            ("patient", "status"),
        ),
        Topic(
            "care-gap",
            "Care gaps on the worklist",
            "Task",
            "A care programme's follow-up Task (a person overdue for care) is made or changes.",
            _care_gap,
            ("owner", "patient", "status", "code"),
        ),
    )
}
_BY_URL = {t.url: t for t in TOPICS.values()}


def by_url(url: str) -> Topic | None:
    return _BY_URL.get(url)


def topics_of(resource_type: str, body: Body) -> list[str]:
    """The codes of the topics a stored version belongs to."""
    return [t.code for t in TOPICS.values() if t.resource_type == resource_type and t.fires(body)]


def filter_matches(entries: Mapping[str, Sequence[Any]], param: str, value: str) -> bool:
    """A filter ``param=value`` (values comma-separated: any of them) holds for a resource
    whose search-index values are ``entries``."""
    found = entries.get(param, ())
    return any(_entry_matches(e, v.strip()) for v in value.split(",") for e in found)


def _entry_matches(entry: Any, value: str) -> bool:
    if isinstance(entry, ReferenceEntry):
        if entry.target_type and entry.target_id:
            return value in (f"{entry.target_type}/{entry.target_id}", entry.target_id)
        return value == entry.url
    if isinstance(entry, TokenEntry):
        system, bar, code = value.rpartition("|")
        if not bar:
            return entry.code == value
        return entry.code == code and (entry.system or "") == system
    if isinstance(entry, StringEntry):
        return entry.exact.casefold().startswith(value.casefold())
    if isinstance(entry, UriEntry):
        return entry.value == value
    return False
