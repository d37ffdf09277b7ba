"""What the store hands back: a stored version of a resource, and the page of a search."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson


def instant(epoch: float) -> str:
    """A FHIR instant with microseconds, in UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


@dataclass(slots=True)
class StoredResource:
    resource_type: str
    id: str
    version: int
    last_updated: float
    deleted: bool
    content: bytes | None  # orjson bytes with meta filled in; None for a deletion
    method: str = "PUT"
    created: bool = False  # set by writes: 201 rather than 200
    rid: int = 0  # the store's row key, for follow-up queries such as _include

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_modified(self) -> str:
        return http_date(self.last_updated)

    def json(self) -> dict[str, Any]:
        return orjson.loads(self.content) if self.content else {}

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch: float) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate), always in English: ``strftime``'s ``%a`` and
    ``%b`` follow the process's locale, and it was a tenth of a read's own CPU."""
    t = time.gmtime(epoch)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


@dataclass(slots=True)
class SearchPage:
    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    offset: int
    count: int
    outcome_warnings: list[Any] = field(default_factory=list)
    total_exact: bool = True  # False: ``total`` is the planner's estimate (_total=estimate)
    more: bool | None = None  # whether matches follow this page, when the store looked

    @property
    def has_next(self) -> bool:
        if self.count == 0:  # _summary=count and _count=0 have no pages to follow
            return False
        if self.more is not None:
            return self.more
        if self.total is not None and self.total_exact:
            return self.offset + self.count < self.total
        return len(self.matches) == self.count
