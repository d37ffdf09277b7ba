"""``takamul mpi check``: do the registry's index rows agree with the stored Patients?

With the candidate index in the store (``Settings.registry_index = "store"``,
``takamul.mpi.stored_index``), every link looks its candidates up in tables: the Patients indexed
(``mpi_indexed``: version, national ID), their block keys as slots (``mpi_block``) and their
name values (``mpi_name``); the patient finder looks names up in ``mpi_word``. A row missing
there is a duplicate the registry no longer finds, or a patient the search box does not; a
stray one, a candidate that is not there. ``takamul db check`` compares the search
index with the resources; this compares the registry's rows, recomputed from each stored
Patient with the registry's own code and model (``StoredCandidateIndex.expected``), with what
the tables hold. By Patient:

- ``not indexed``: a stored Patient with no rows (a bulk load: the next server start or
  ``takamul catch-up`` would index and link it);
- ``indexed at version v, stored at w``: written before the Patient last changed;
- ``national ID``, ``blocks``, ``names``, ``words``: rows that differ from what the content gives;
- ``not a stored Patient``: rows of a Patient deleted or never stored.

The Patients are read in ranges of ``batch`` ids, each range's Patients and rows in one
snapshot, so a link during the check cannot look like damage. ``repair`` rewrites a damaged
range's Patients' rows from their content, read again in the write transaction, under the
registry's lock (running servers' links wait for it; their caches hold Patients, not rows, so
they stay true).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection, func, select, text

from takamul.mpi.schema import mpi_block, mpi_indexed, mpi_name, mpi_word
from takamul.mpi.service import (
    REGISTRY_LOCK,
    TAKE_REGISTRY_LOCK,
    default_model,
    index_location,
    stored_model,
)
from takamul.mpi.stored_index import StoredCandidateIndex, patient_record
from takamul.settings import Settings
from takamul.store.dbcheck import in_processes, snapshot, within
from takamul.store.repository import Session, Store
from takamul.store.rowcopy import driver_execute
from takamul.store.schema import resource

__all__ = ["RegistryIndexDifference", "RegistryIndexReport", "check_registry_index"]

BATCH = 2_000
KEEP = 1_000  # differences kept for the report; the counts cover them all

Progress = Callable[[int], None]  # Patients checked so far
Span = tuple[str | None, str | None]  # patient ids in (low, high]; None: no bound that side


@dataclass(frozen=True, slots=True)
class RegistryIndexDifference:
    """How one Patient's registry index rows differ from what its stored content gives."""

    patient_id: str
    problems: tuple[str, ...]

    def describe(self) -> str:
        return f"Patient/{self.patient_id}: " + "; ".join(self.problems)


@dataclass(slots=True)
class RegistryIndexReport:
    location: str  # "store": checked; "memory": the index is in each process, nothing stored
    patients: int = 0  # stored Patients checked
    rows: int = 0  # index rows read (the four tables)
    damaged: int = 0  # Patients (or stray ids) with any difference
    repaired: int = 0
    differences: list[RegistryIndexDifference] = field(default_factory=list)  # the first KEEP

    @property
    def clean(self) -> bool:
        return self.damaged == 0

    def add(self, found: list[RegistryIndexDifference]) -> None:
        self.damaged += len(found)
        room = KEEP - len(self.differences)
        if room > 0:
            self.differences.extend(found[:room])


@dataclass(slots=True)
class _Held:
    """What the tables hold for one patient id."""

    version: int | None = None
    national_id: str | None = None
    indexed: bool = False
    slots: set[int] = field(default_factory=set)
    names: set[tuple[str, str]] = field(default_factory=set)
    words: set[tuple[str, str, bool]] = field(default_factory=set)

    def rows(self) -> int:
        return int(self.indexed) + len(self.slots) + len(self.names) + len(self.words)


def count_patients(store: Store) -> int:
    """The stored Patients (the progress bar's total)."""
    query = select(func.count()).where(
        resource.c.res_type == "Patient", resource.c.deleted.is_(False)
    )
    with store.reading() as session:
        return int(session.conn.execute(query).scalar_one())


def check_registry_index(
    store: Store,
    repair: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
    workers: int = 1,
) -> RegistryIndexReport:
    """Compare every stored Patient's registry index rows with its content; with ``repair``,
    rewrite the damaged ones. With the index kept in memory (``registry_index`` "memory"),
    nothing is stored to check: the report says so and is clean.

    ``workers`` > 1 checks ranges in that many processes (parsing each Patient and computing
    its keys is the cost, and it is CPU work: about 4,200 Patients a second in one process);
    differences are repaired here, in this process, as they come in."""
    location = index_location(store)
    report = RegistryIndexReport(location)
    if location != "store":
        return report
    index = StoredCandidateIndex(stored_model(store) or default_model(), store)
    spans = _spans(store, batch)
    here = partial(_check_snapshot, index)
    with in_processes(
        here, spans, workers, _open_worker, store.settings, _check_in_worker
    ) as results:
        for found, patients, rows in results:
            report.patients += patients
            report.rows += rows
            report.add(found)
            if repair and found:
                report.repaired += _repair(store, index, [d.patient_id for d in found])
            if progress is not None:
                progress(report.patients)
    return report


Checked = tuple[list[RegistryIndexDifference], int, int]  # differences, Patients, rows

_worker: tuple[Store, StoredCandidateIndex] | None = None


def _open_worker(settings: Settings) -> None:
    global _worker
    store = Store(settings)
    _worker = (store, StoredCandidateIndex(stored_model(store) or default_model(), store))


def _check_in_worker(span: Span) -> Checked:
    assert _worker is not None, "the worker's store is opened by its initializer"
    return _check_snapshot(_worker[1], *span)


def _check_snapshot(index: StoredCandidateIndex, low: str | None, high: str | None) -> Checked:
    with snapshot(index.store) as conn:
        return _check_span(index, conn, low, high)


def _spans(store: Store, batch: int) -> list[Span]:
    """Consecutive id ranges of ``batch`` stored Patients each, covering every id (rows of ids
    below the first Patient's or above the last's included). Only the ranges' last ids come
    back from the database (at a country's 77 million Patients, all the ids would be some
    gigabytes here)."""
    with store.reading() as session:
        bounds = [
            str(pid)
            for (pid,) in session.conn.execute(
                text(
                    "SELECT res_id FROM (SELECT res_id, ROW_NUMBER() OVER (ORDER BY res_id) AS n"
                    " FROM resource WHERE res_type = :patient AND deleted = :deleted) numbered"
                    " WHERE n % :batch = 0 ORDER BY res_id"
                ),
                {"patient": "Patient", "deleted": False, "batch": batch},
            )
        ]
    edges: list[str | None] = [None, *bounds, None]
    return list(pairwise(edges))


def _check_span(
    index: StoredCandidateIndex, conn: Connection, low: str | None, high: str | None
) -> tuple[list[RegistryIndexDifference], int, int]:
    """Differences of the Patients and index rows with ids in (low, high]."""
    patients = conn.execute(
        within(
            select(resource.c.res_id, resource.c.version, resource.c.content).where(
                resource.c.res_type == "Patient", resource.c.deleted.is_(False)
            ),
            resource.c.res_id,
            low,
            high,
        )
    ).all()
    held = _held(conn, low, high)
    rows = sum(h.rows() for h in held.values())
    found = []
    for pid, version, content in patients:
        problems = _problems(index, held.pop(pid, _Held()), int(version), pid, content)
        if problems:
            found.append(RegistryIndexDifference(pid, tuple(problems)))
    for pid, stray in sorted(held.items()):
        found.append(RegistryIndexDifference(pid, (f"not a stored Patient: {stray.rows()} rows",)))
    return sorted(found, key=lambda d: d.patient_id), len(patients), rows


def _held(conn: Connection, low: str | None, high: str | None) -> dict[str, _Held]:
    out: dict[str, _Held] = {}
    query = select(mpi_indexed.c.patient_id, mpi_indexed.c.version, mpi_indexed.c.national_id)
    for pid, version, nid in conn.execute(within(query, mpi_indexed.c.patient_id, low, high)):
        entry = out.setdefault(pid, _Held())
        entry.indexed, entry.version, entry.national_id = True, int(version), nid
    query = select(mpi_block.c.patient_id, mpi_block.c.slot)
    for pid, slot in conn.execute(within(query, mpi_block.c.patient_id, low, high)):
        out.setdefault(pid, _Held()).slots.add(int(slot))
    query = select(mpi_name.c.patient_id, mpi_name.c.field, mpi_name.c.value)
    for pid, name, value in conn.execute(within(query, mpi_name.c.patient_id, low, high)):
        out.setdefault(pid, _Held()).names.add((name, value))
    query = select(mpi_word.c.patient_id, mpi_word.c.skel, mpi_word.c.norm, mpi_word.c.arabic)
    for pid, skel, norm, arabic in conn.execute(within(query, mpi_word.c.patient_id, low, high)):
        out.setdefault(pid, _Held()).words.add((skel, norm, bool(arabic)))
    return out


def _problems(
    index: StoredCandidateIndex, held: _Held, version: int, pid: str, content: Any
) -> list[str]:
    if not content:
        return []
    if not held.rows():
        return ["not indexed"]
    record = patient_record(pid, content)
    want = index.expected(record)
    problems = []
    if not held.indexed:
        problems.append("no mpi_indexed row")
    elif held.version != version:
        problems.append(f"indexed at version {held.version}, stored at {version}")
    if held.indexed and held.national_id != record.national_id:
        problems.append(f"national ID {held.national_id!r}, the Patient's {record.national_id!r}")
    problems += _set_problems("blocks", want.slots, held.slots)
    problems += _set_problems("names", want.names, held.names)
    problems += _set_problems("words", want.words, held.words)
    return problems


def _set_problems(what: str, want: frozenset[Any], have: set[Any]) -> list[str]:
    missing, extra = len(want - have), len(have - want)
    if not missing and not extra:
        return []
    return [f"{what}: {missing} missing, {extra} extra"]


def _repair(store: Store, index: StoredCandidateIndex, patient_ids: list[str]) -> int:
    """Rewrite the rows of ``patient_ids`` from their Patients as stored now (none for one no
    longer stored), in one write transaction under the registry's lock."""

    def work(session: Session) -> int:
        conn = session.conn
        if conn.dialect.name == "postgresql":
            # links hold the registry's lock shared: they finish first, and wait for this
            driver_execute(conn, TAKE_REGISTRY_LOCK, {"key": REGISTRY_LOCK})
        records = []
        for chunk in _chunks(patient_ids, 200):
            query = select(resource.c.res_id, resource.c.version, resource.c.content).where(
                resource.c.res_type == "Patient",
                resource.c.deleted.is_(False),
                resource.c.res_id.in_(chunk),
            )
            for pid, version, content in conn.execute(query):
                if content:
                    records.append((patient_record(pid, content), int(version)))
        index.index_many(conn, records, patient_ids)
        return len(patient_ids)

    return store.write(work)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
