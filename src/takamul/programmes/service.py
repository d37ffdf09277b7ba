"""The care programmes of one running record: the catalog, its care facts kept live, and the
questions the API, the web app and decision support ask of them."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import date

from takamul.programmes.definitions import Catalog, load_catalog
from takamul.programmes.facility import FacilityRegistries
from takamul.programmes.facts import CareFacts
from takamul.programmes.gaps import PersonGaps, person_gaps
from takamul.programmes.status import PersonStatus, person_statuses, statuses
from takamul.store.repository import Store

__all__ = ["Programmes"]

log = logging.getLogger("takamul.programmes")


class Programmes:
    """Attach once at start-up; every status or gap read afterwards sees every stored write."""

    def __init__(self, store: Store, catalog: Catalog | None = None) -> None:
        self.store = store
        self.catalog = catalog or load_catalog()
        self.facts = CareFacts(store, self.catalog)
        self.registries = FacilityRegistries(store, self.facts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def start_background(
        self, interval: float | None = None, today: Callable[[], date] = date.today
    ) -> None:
        """Every ``interval`` seconds (``TAKAMUL_PROGRAMMES_WARM_SECONDS``, default 300; 0
        turns it off), when the date has changed, compute the new day's registries of the
        facilities viewed the day before (``FacilityRegistries.warm``), in a daemon thread."""
        every = float(
            os.environ.get("TAKAMUL_PROGRAMMES_WARM_SECONDS", "300")
            if interval is None
            else interval
        )
        if every <= 0 or self._thread is not None:
            return
        seen = [today()]

        def run() -> None:
            while not self._stop.wait(every):
                day = today()
                if day == seen[0]:
                    continue
                seen[0] = day
                try:
                    log.info(
                        "care programmes: %d registries ready for %s",
                        self.registries.warm(day),
                        day,
                    )
                except Exception:  # the next day tries again; the loop must not die
                    log.exception("care programmes: warming the new day's registries failed")

        self._thread = threading.Thread(target=run, name="takamul-programmes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

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
