"""The patient finder with its words in the store (``mpi_word``), for the registry's store index.

``registry.finder.NameFinder`` keeps every registration's name words under their cross-script
skeletons in each server process: about 1 KB a registration, read and parsed at every start.
With the candidate index in the store, the registry writes each Patient's words into
``mpi_word`` in the transaction that links it (``StoredCandidateIndex.add``), so a search box
needs no copy of them: a search narrows by the typed words' skeletons in SQL (one statement,
each exact word an equality on the primary key, the unfinished last word a range of it), reads
the words of the few registrations left, and ranks them with the in-memory finder's own code on
just those, so both finders answer alike (``tests/test_registry_stored_finder.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy import Connection

from takamul.mpi.stored_index import WORDS_IN
from takamul.registry.finder import MAX_PREFIX_UNION, MAX_RANKED, NameFinder, search_words
from takamul.registry.names import NameToken, name_token, shared_token
from takamul.store.repository import Store
from takamul.store.rowcopy import DriverSql, driver_execute, listed, numbered

__all__ = ["StoredNameFinder"]

ANY_WORD = DriverSql("SELECT 1 FROM mpi_word LIMIT 1")
WORDS_PG = DriverSql(
    "SELECT patient_id, skel, norm, arabic FROM mpi_word"
    " WHERE patient_id = ANY(CAST(:ids AS varchar[]))"
)
CHUNK = 500  # patient ids a statement of ``WORDS_IN`` (SQLite)
# Registrations narrowed by SQL and then ranked: the in-memory finder's ranking stops there
# too (``MAX_RANKED``); more matches than that mean "type more", and which 5,000 of them are
# ranked may differ between the two finders.
POOL = MAX_RANKED


class StoredNameFinder:
    """``NameFinder.find`` answered from ``mpi_word``; nothing held in the process."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def usable(self) -> bool:
        """Holding any registration's words (else the caller uses the FHIR name search)."""
        with self.store.reading(snapshot=False) as session:
            return bool(driver_execute(session.conn, ANY_WORD, {}))

    def find(
        self,
        text: str,
        limit: int = 500,
        prefix: bool = True,
        within: AbstractSet[str] | None = None,
    ) -> list[str]:
        """What ``NameFinder.find`` answers for the registrations of the store."""
        words = search_words(text)
        if not words:
            return []
        exact = [t.skel for w in (words[:-1] if prefix else words) if (t := name_token(w))]
        last = name_token(words[-1]) if prefix else None
        with self.store.reading(snapshot=False) as session:
            conn = session.conn
            if within is not None and len(within) <= MAX_PREFIX_UNION:
                # a facility's patients: their words, narrowed below as the finder narrows
                pool = _words(conn, sorted(within))
            else:
                pool = _narrowed(conn, exact, last.skel if last is not None else None)
            finder = NameFinder()
            for pid, tokens in pool.items():
                finder.add_words(pid, tokens)
        return finder.find(text, limit, prefix, within)


def _narrowed(
    conn: Connection, exact: list[str], start: str | None
) -> dict[str, tuple[NameToken, ...]]:
    """The words of the patients having a word of each exact skeleton and one beginning with
    ``start``, at most ``POOL`` patients, in one statement: a join of ``mpi_word`` with itself
    on the patient (the planner starts from the clause it expects fewest rows of and probes the
    others through the patient's index; an ``INTERSECT`` of each clause's whole set took three
    times as long for three common names at 220,000 registrations), then their words from the
    patient's covering index."""
    clauses = [f"w{i}.skel = :e{i}" for i in range(len(exact))]
    params: dict[str, object] = numbered(exact, "e")
    if start is not None:
        n = len(exact)
        if start:
            clauses.append(f"w{n}.skel >= :low AND w{n}.skel < :high")
            params.update(low=start, high=_after_prefix(start))
        else:
            clauses.append(f"w{n}.skel >= :low")  # every skeleton begins with ""
            params.update(low="")
    if not clauses:
        return {}
    joins = "".join(
        f" JOIN mpi_word w{i} ON w{i}.patient_id = w0.patient_id" for i in range(1, len(clauses))
    )
    matching = (
        f"SELECT DISTINCT w0.patient_id FROM mpi_word w0{joins}"
        f" WHERE {' AND '.join(clauses)} LIMIT {POOL}"
    )
    statement = DriverSql(
        f"SELECT w.patient_id, w.skel, w.norm, w.arabic FROM mpi_word w"
        f" WHERE w.patient_id IN ({matching})"
    )
    return _tokens(driver_execute(conn, statement, params))


def _after_prefix(start: str) -> str:
    """The least string above every string beginning with ``start`` (code point order, which
    is the column's: ``COLLATE "C"`` on PostgreSQL, binary on SQLite)."""
    return start[:-1] + chr(ord(start[-1]) + 1)


def _words(conn: Connection, patient_ids: list[str]) -> dict[str, tuple[NameToken, ...]]:
    rows: list[tuple[Any, ...]] = []
    if conn.dialect.name == "postgresql":
        rows = driver_execute(conn, WORDS_PG, {"ids": patient_ids}) if patient_ids else []
    else:
        for at in range(0, len(patient_ids), CHUNK):
            chunk = patient_ids[at : at + CHUNK]
            rows += driver_execute(conn, listed(WORDS_IN, ":p{i}", len(chunk)), numbered(chunk))
    return _tokens(rows)


def _tokens(rows: Iterable[tuple[Any, ...]]) -> dict[str, tuple[NameToken, ...]]:
    out: dict[str, list[NameToken]] = {}
    for pid, skel, norm, arabic in rows:
        out.setdefault(pid, []).append(shared_token(norm, skel, bool(arabic)))
    return {
        pid: tuple(sorted(tokens, key=lambda t: (t.skel, t.norm))) for pid, tokens in out.items()
    }
