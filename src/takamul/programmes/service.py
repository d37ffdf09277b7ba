"""The care programmes of one running record: the catalog, its care facts kept live, and the
questions the API, the web app and decision support ask of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date

from takamul.programmes.definitions import Catalog, load_catalog
from takamul.programmes.facility import FacilityRegistries
from takamul.programmes.facts import CareFacts
from takamul.programmes.gaps import PersonGaps, person_gaps
from takamul.programmes.status import PersonStatus, person_statuses, statuses
from takamul.store.repository import Store

__all__ = ["Programmes"]


class Programmes:
    """Attach once at start-up; every status or gap read afterwards sees every stored write."""

    def __init__(self, store: Store, catalog: Catalog | None = None) -> None:
        self.store = store
        self.catalog = catalog or load_catalog()
        self.facts = CareFacts(store, self.catalog)
        self.registries = FacilityRegistries(store, self.facts)

    def attach(self, progress: Callable[[int], None] | None = None) -> int:
        """Follow writes and extract what was stored before (bulk loads)."""
        return self.facts.attach(progress)

    def statuses(
        self,
        as_of: date,
        programme_ids: Sequence[str] | None = None,
        patient_ids: Iterable[str] | None = None,
        facility: str | None = None,
    ) -> list[PersonStatus]:
        """Statuses of every registered person (or the persons of ``patient_ids``); resources
        bulk-loaded while the server runs are caught up first."""
        return statuses(
            self.store, self.catalog, as_of, programme_ids, patient_ids, self.facts, facility
        )

    def facility_statuses(
        self, facility: str, programme_id: str, as_of: date
    ) -> list[PersonStatus]:
        """The registry of one programme at ``facility`` (the persons it is responsible for),
        kept between reads and brought up to date with what changed since
        (:mod:`takamul.programmes.facility`)."""
        return self.registries.statuses(facility, programme_id, as_of)

    def person(self, patient_ids: Iterable[str], as_of: date) -> list[PersonStatus]:
        """One person's statuses, read by index (the record page, decision support)."""
        return person_statuses(self.store, self.catalog, patient_ids, as_of)[1]

    def gaps(
        self,
        patient_ids: Iterable[str],
        period_start: date,
        period_end: date,
        as_of: date | None = None,
        measures: Iterable[str] | None = None,
    ) -> PersonGaps:
        return person_gaps(
            self.store, self.catalog, patient_ids, period_start, period_end, as_of, measures
        )
