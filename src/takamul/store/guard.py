"""Authorization at the data layer: a guard set for the current request is consulted by every
read, search, include, history, compartment and write of a store Session.

Enforcing here rather than in each route is what makes every path answer to the same rules:
a resource the requester may not see cannot come back through ``_include``, ``_revinclude``,
``$everything``, history, a transaction entry or a conditional reference, and search totals
count only what the requester may see (restrictions become SQL filters). The guard lives in a
context variable, set by the API for one request and carried into its worker thread; internal
work (the client registry writing golden records, bulk jobs) runs without one or suspends it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ["OWNED", "Guard", "OwnerOf", "current_guard", "guarded", "unguarded"]

# (store, resource id) -> who owns it: "client:<id>" or "user:<name>" (an AccessContext's
# ``who``), or None when no requester does (made by the server itself)
OwnerOf = Callable[[Any, str], str | None]
# Resource types that only their owner (and administrators) may see, and how to find the owner
# of one. Registered by the package that keeps them (notifications: a Subscription, whose
# channel headers may hold the receiver's secret and whose events would tell others what
# happened to whom); consulted by the security guard on every path.
OWNED: dict[str, OwnerOf] = {}


class Guard(Protocol):
    def require(self, resource_type: str, interaction: str) -> None:
        """Refuse (403) an interaction (c, r, u, d, s) the requester may do on no resource of
        the type: refusing it reveals nothing about the data."""

    def visible(self, resource_type: str, resource: dict[str, Any], interaction: str) -> bool:
        """The requester may do ``interaction`` on this resource (scopes with their granular
        restrictions, patient context, facility)."""

    def visible_stored(self, resource_type: str, content: bytes, interaction: str) -> bool:
        """``visible`` of a stored resource's JSON (a guard parses it only if it must)."""

    def restrictions(
        self, session: Any, resource_type: str, params: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """Search parameters ANDed into every search of the type (403 if none is allowed)."""

    def filters(self, session: Any, resource_type: str) -> list[Any]:
        """Internal filters (``store.query.Filter``) ANDed into every search of the type: the
        rules that search parameters cannot say (consent, by label and patient)."""

    def exhaustive(self, resource_type: str) -> bool:
        """Searches of the type must check every match with ``visible`` (and count only
        those): some rule cannot be an SQL filter (consent, which follows codes)."""


current_guard: ContextVar[Guard | None] = ContextVar("takamul_guard", default=None)


class guarded:  # lower case: used as a function, like the context managers beside it
    """``with guarded(guard):`` the store answers to ``guard`` (None: to no one).

    A class rather than ``@contextmanager``, whose generator costs about 1 us to enter and
    leave against 0.3 us: every request enters it."""

    __slots__ = ("_guard", "_token")

    def __init__(self, guard: Guard | None) -> None:
        self._guard = guard

    def __enter__(self) -> None:
        self._token = current_guard.set(self._guard)

    def __exit__(self, *_: object) -> None:
        current_guard.reset(self._token)


@contextmanager
def unguarded() -> Iterator[None]:
    """Internal work on behalf of the system, not the requester (golden records, say)."""
    with guarded(None):
        yield
