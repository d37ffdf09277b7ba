"""A facility's registry, kept current by what changed instead of recomputed on every write.

The registry screen shows the statuses of every person of one facility (5,000 and more). The
grouped query computes them in a few hundred milliseconds; a busy record is written to every
few seconds, so recomputing on every change would make every page view pay it. Instead each
computed registry remembers the record's change sequence (and the client registry's event
number) it saw, and the next read brings it up to date with the persons touched since:

- the resources changed since (``resource_version`` rows after the mark; every version of each,
  so that a deleted Observation or one moved to another patient names the patient it left) give
  the Patient records whose facts may have changed;
- the client registry's events since give the records moved between persons (a link, a merge,
  a reviewer's split) and the persons they left and joined;
- the statuses of just those persons are recomputed with the same query, restricted to them
  (:func:`takamul.programmes.status.statuses` with ``patient_ids``), and replace their rows.

A change that cannot be followed cheaply (a bulk load of thousands of versions, a client
registry event without the moves it made) recomputes the whole registry, as does a new as-of
date. The mark is taken before the work starts and a window of versions before it is read
again next time, so a transaction that took its sequence number earlier but committed later
is not missed (re-reading a change is harmless: statuses are recomputed, not adjusted).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import orjson
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from takamul.mpi.schema import mpi_event
from takamul.programmes.facts import TYPES, CareFacts, extract
from takamul.programmes.status import PersonStatus, statuses
from takamul.store.repository import Store
from takamul.store.schema import resource_version, version_content

__all__ = ["FacilityRegistries"]

FOLLOW_AT_MOST = 2000  # versions changed since the last read: beyond, recompute everything
OVERLAP = 64  # versions read again: a transaction may commit after a later-numbered one
KEPT = 32  # registries kept (facility, programme, as-of date)


def _key(row: PersonStatus) -> str:
    """The row's person: the golden record, or the lone record not linked to one yet."""
    return row.person_id or "~" + row.patient_ids[0]


@dataclass
class _Entry:
    seq: int  # the newest change sequence the rows include
    event: int  # the newest client registry event they include
    rows: dict[str, PersonStatus] = field(default_factory=dict)
    person_of: dict[str, str] = field(default_factory=dict)  # patient id -> row key
    ordered: list[PersonStatus] | None = None

    def put(self, rows: Iterable[PersonStatus]) -> None:
        for row in rows:
            key = _key(row)
            self.rows[key] = row
            for pid in row.patient_ids:
                self.person_of[pid] = key
        self.ordered = None

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            row = self.rows.pop(key, None)
            if row is not None:
                for pid in row.patient_ids:
                    if self.person_of.get(pid) == key:
                        del self.person_of[pid]
        self.ordered = None

    def listed(self) -> list[PersonStatus]:
        # in person order, as a full computation returns them
        if self.ordered is None:
            self.ordered = [self.rows[k] for k in sorted(self.rows)]
        return self.ordered


class FacilityRegistries:
    """Registries of one programme at one facility on one date, followed as the record
    changes. Thread-safe; one per running record (``Programmes.facility_statuses``)."""

    def __init__(self, store: Store, facts: CareFacts, kept: int = KEPT) -> None:
        self.store = store
        self.facts = facts
        self.kept = kept
        self._entries: OrderedDict[tuple[str, str, date], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards the two dicts, held only for moments
        self._working: dict[tuple[str, str, date], threading.Lock] = {}
        self.recomputed = 0  # full computations, for tests and benchmarks
        self.followed = 0  # reads brought up to date from the changes

    def statuses(self, facility: str, programme_id: str, as_of: date) -> list[PersonStatus]:
        """The registry's rows (one per person, in person order), current with every change
        stored before the call."""
        # facts of what was bulk-loaded since, as a full read would; the check is one read, so
        # a view of a quiet record does not take the writer for a catch-up that finds nothing
        if self.facts.behind():
            self.facts.catch_up()
        key = (facility, programme_id, as_of)
        with self._lock:
            working = self._working.setdefault(key, threading.Lock())
        # one reader brings a registry up to date at a time and the others wait for its result
        # rather than doing the same work (a facility's team opens it together in the
        # morning); other facilities' registries are not held up
        with working:
            seq, event = self._marks()
            with self._lock:
                entry = self._entries.get(key)
            if entry is None or not self._follow(entry, facility, programme_id, as_of, seq, event):
                entry = self._compute(facility, programme_id, as_of, seq, event)
            rows = entry.listed()
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self.kept:
                    gone, _ = self._entries.popitem(last=False)
                    self._working.pop(gone, None)
        return rows

    def warm(self, as_of: date) -> int:
        """Compute for ``as_of`` every registry kept for another date (the day before): the
        first view of a new day then finds its facility's registry ready instead of computing
        it in full. Returns the number computed."""
        with self._lock:
            wanted = sorted({(f, p) for f, p, d in self._entries if d != as_of})
        for facility, programme_id in wanted:
            self.statuses(facility, programme_id, as_of)
        return len(wanted)

    # -- the two ways ---------------------------------------------------------------------

    def _compute(
        self, facility: str, programme_id: str, as_of: date, seq: int, event: int
    ) -> _Entry:
        self.recomputed += 1
        entry = _Entry(seq=seq, event=event)
        entry.put(self._rows(facility, programme_id, as_of, None))
        return entry

    def _follow(
        self,
        entry: _Entry,
        facility: str,
        programme_id: str,
        as_of: date,
        seq: int,
        event: int,
    ) -> bool:
        """Bring ``entry`` up to ``seq``/``event``; False when the changes are too many or
        cannot be followed (the caller recomputes)."""
        if seq == entry.seq and event == entry.event:
            return True
        if seq - entry.seq > FOLLOW_AT_MOST:
            return False
        with self.store.reader.connect() as conn:
            moved = self._moved(conn, entry.event, event)
            if moved is None:
                return False
            patients = self._patients_changed(conn, max(0, entry.seq - OVERLAP), seq)
        touched_persons, moved_patients = moved
        patients |= moved_patients
        # every record of a touched person: its status is the person's, over all of them
        keys = {entry.person_of[p] for p in patients if p in entry.person_of}
        keys |= {k for k in touched_persons if k in entry.rows}
        for key in keys:
            patients.update(entry.rows[key].patient_ids)
        fresh = self._rows(facility, programme_id, as_of, patients) if patients else []
        entry.drop(keys | {"~" + p for p in patients})
        # a person found again under another key (newly linked) leaves its old rows
        entry.drop(
            {entry.person_of[p] for r in fresh for p in r.patient_ids if p in entry.person_of}
        )
        entry.put(fresh)
        entry.seq, entry.event = seq, event
        self.followed += 1
        return True

    def _rows(
        self, facility: str, programme_id: str, as_of: date, patient_ids: set[str] | None
    ) -> list[PersonStatus]:
        return statuses(
            self.store,
            self.facts.catalog,
            as_of,
            [programme_id],
            patient_ids=sorted(patient_ids) if patient_ids is not None else None,
            facility=facility,
        )

    # -- what changed -----------------------------------------------------------------------

    def _marks(self) -> tuple[int, int]:
        with self.store.reader.connect() as conn:
            seq = conn.execute(select(func.max(resource_version.c.seq))).scalar()
            event = conn.execute(select(func.max(mpi_event.c.id))).scalar()
        return int(seq or 0), int(event or 0)

    def _patients_changed(self, conn: Connection, after: int, upto: int) -> set[str]:
        """The Patient records named by any version of a resource changed in (after, upto]."""
        changed = conn.execute(
            select(resource_version.c.rid)
            .where(resource_version.c.seq > after, resource_version.c.seq <= upto)
            .where(resource_version.c.res_type.in_(TYPES))
        ).scalars()
        rids = sorted(set(changed))
        patients: set[str] = set()
        for start in range(0, len(rids), 500):
            versions = conn.execute(
                select(resource_version.c.res_type, version_content()).where(
                    resource_version.c.rid.in_(rids[start : start + 500])
                )
            )
            for res_type, content in versions:
                body = orjson.loads(content) if content else None
                patients.update(f.patient_id for f in extract(res_type, body, self.facts.codes))
        return patients

    def _moved(self, conn: Connection, after: int, upto: int) -> tuple[set[str], set[str]] | None:
        """(persons left or joined, records moved) by the client registry's events in
        (after, upto]; None when an event does not say what it moved."""
        if upto == after:
            return set(), set()
        persons: set[str] = set()
        patients: set[str] = set()
        events = conn.execute(
            select(mpi_event.c.kind, mpi_event.c.detail).where(
                mpi_event.c.id > after, mpi_event.c.id <= upto
            )
        )
        for kind, detail in events:
            moves = orjson.loads(detail).get("moves")
            if kind == "batch-link" or moves is None:
                return None  # a batch run moves thousands of records without listing them
            for move in moves:
                patients.add(move["patient"])
                persons.update(p for p in (move.get("from"), move.get("to")) if p)
        return persons, patients
