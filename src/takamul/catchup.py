"""Catching up on a bulk load: what the write hooks would have done had the load run them.

A bulk load (``takamul load``, ``takamul.bulk.load_paths``) stores resources without write
hooks, for speed. Four capabilities then catch up, in the order the server attaches them, so
that what the later ones write passes the registry's and the care facts' hooks, as in the
server:

0. on PostgreSQL, the planner's statistics of tables that have none or stale ones (after a
   restore) are refreshed, so that the passes' lookups are planned on facts;
1. the client registry links the new Patients to persons (``mpi``; when the registry is on);
2. the care programmes read the care facts of every new version (``programmes``);
3. mental health scores the new questionnaire responses and raises their safety Tasks
   (``mentalhealth``);
4. caregivers: a ZBI-12 at high burden gets its support proposal (``caregivers``);
5. the planner's statistics refreshed and, on PostgreSQL, the new rows marked visible to all
   (``VACUUM (ANALYZE)``; on SQLite ``ANALYZE`` of the tables the passes grew, see
   ``Store.refresh_statistics``), so that searches over what the passes wrote are index-only
   from the start.

The server does the same at start-up, before it answers. At 100,000 persons that took minutes,
and it grows with the load: run here, after the load (``takamul load`` does; ``takamul
catch-up`` for a load made otherwise), the work is shown as it goes and the server starts at
once. Each pass is safe to run again, after an interruption too: it finds what an earlier run
did and does not repeat it, and a run with nothing new finds nothing to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from takamul.caregivers.burden import Caregivers
from takamul.mentalhealth.service import MentalHealth
from takamul.mpi.service import ClientRegistry, unlinked_patients
from takamul.programmes.service import Programmes
from takamul.store.repository import Store

__all__ = ["PHASES", "Backlog", "CatchUp", "backlog", "catch_up"]

# what each phase counts as it goes
PHASES = {
    "stale statistics": "tables",
    "registry": "Patient records (read, then linked)",
    "care facts": "resource versions",
    "mental health": "questionnaire responses",
    "caregivers": "questionnaire responses",
    "statistics": "tables",
}

# (phase, how many done so far); called at the start of each phase with 0
Progress = Callable[[str, int], None]


@dataclass
class CatchUp:
    """What one catch-up did: per phase, how many it processed and how long it took."""

    done: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


@dataclass(frozen=True)
class Backlog:
    """What a catch-up would find: Patients without a person, and about how many resource
    versions were stored since the care facts' last pass (API writes count too: their hooks
    ran, but the pass's mark is behind them)."""

    unlinked: int
    versions: int

    def __bool__(self) -> bool:
        return bool(self.unlinked or self.versions)


def backlog(store: Store) -> Backlog:
    """The catch-up's backlog in two look-ups, without loading the registry."""
    unlinked = unlinked_patients(store) if store.settings.mpi else 0
    return Backlog(unlinked, Programmes(store).facts.backlog())


def catch_up(store: Store, progress: Progress | None = None) -> CatchUp:
    """Run the catch-up passes on ``store`` (see the module's text), in order. The registry's
    is left out when no Patient is without a person: it loads every registration into memory,
    which the server does at its start anyway."""
    summary = CatchUp()

    def phase(name: str, run: Callable[[Callable[[int], None]], int]) -> None:
        report = (lambda n: progress(name, n)) if progress is not None else (lambda _n: None)
        report(0)
        started = time.perf_counter()
        summary.done[name] = run(report)
        summary.seconds[name] = time.perf_counter() - started

    # the passes' batch lookups are planned by the statistics: refreshed first where a
    # restore or an interrupted load left none (``Store.stale_statistics``)
    if store.stale_statistics():
        phase("stale statistics", lambda _report: len(store.analyze_stale()))
    if store.settings.mpi and unlinked_patients(store):
        phase("registry", lambda report: ClientRegistry(store).attach(report))
    programmes = Programmes(store)
    phase("care facts", programmes.attach)
    phase("mental health", lambda report: MentalHealth(store).catch_up(report))
    phase("caregivers", lambda report: Caregivers(store).catch_up(report))
    # the hook extracted the facts of what the last two wrote, but the pass's mark is behind
    # them: moved past them here, so that the server's start finds nothing left
    started = time.perf_counter()
    summary.done["care facts"] += programmes.facts.catch_up()
    summary.seconds["care facts"] += time.perf_counter() - started
    if any(summary.done.values()):
        phase("statistics", lambda _report: len(store.refresh_statistics()))
    return summary
