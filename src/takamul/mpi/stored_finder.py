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

from sqlalchemy import Connection

from takamul.mpi.stored_index import WORDS_IN
from takamul.registry.finder import MAX_PREFIX_UNION, NameFinder, search_words
from takamul.registry.names import NameToken, name_token
from takamul.store.repository import Store
from takamul.store.rowcopy import DriverSql, driver_execute, listed, numbered

__all__ = ["StoredNameFinder"]

ANY_WORD = DriverSql("SELECT 1 FROM mpi_word LIMIT 1")
EXACT = "SELECT patient_id FROM mpi_word WHERE skel = :e{i}"
PREFIX = "SELECT patient_id FROM mpi_word WHERE skel >= :low AND skel < :high"
CHUNK = 500  # patient ids a statement of ``WORDS_IN``


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
                pool = sorted(within)
            else:
                pool = _narrowed(conn, exact, last.skel if last is not None else None)
            finder = NameFinder()
            for pid, tokens in _words(conn, pool).items():
                finder.add_words(pid, tokens)
        return finder.find(text, limit, prefix, within)


def _narrowed(conn: Connection, exact: list[str], start: str | None) -> list[str]:
    """Patients having a word of each exact skeleton and one beginning with ``start``: at most
    ``MAX_PREFIX_UNION`` (as the in-memory finder stops an unfinished word's union there)."""
    parts = [EXACT.replace("{i}", str(i)) for i in range(len(exact))]
    params: dict[str, object] = numbered(exact, "e")
    if start is not None:
        parts.append(PREFIX)
        params.update(low=start, high=_after_prefix(start))
    if not parts:
        return []
    statement = DriverSql(" INTERSECT ".join(parts) + f" LIMIT {MAX_PREFIX_UNION}")
    return [pid for (pid,) in driver_execute(conn, statement, params)]


def _after_prefix(start: str) -> str:
    """The least string above every string beginning with ``start`` (code point order, which
    is the column's: ``COLLATE "C"`` on PostgreSQL, binary on SQLite)."""
    return start[:-1] + chr(ord(start[-1]) + 1)


def _words(conn: Connection, patient_ids: Iterable[str]) -> dict[str, tuple[NameToken, ...]]:
    ids = list(patient_ids)
    out: dict[str, list[NameToken]] = {}
    for at in range(0, len(ids), CHUNK):
        chunk = ids[at : at + CHUNK]
        statement = listed(WORDS_IN, ":p{i}", len(chunk))
        for pid, skel, norm, arabic in driver_execute(conn, statement, numbered(chunk)):
            out.setdefault(pid, []).append(NameToken(norm, skel, bool(arabic)))
    return {
        pid: tuple(sorted(tokens, key=lambda t: (t.skel, t.norm))) for pid, tokens in out.items()
    }
