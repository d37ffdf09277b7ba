"""Finding people by name as typed: in any script or spelling, for search boxes.

The linker compares whole records; a search box has a few words, often half typed. Every name
word of every registration is kept under its cross-script skeleton (``names.name_token``:
``سلمى``, ``Salma`` and ``Salmaa`` share ``SLM``), so each typed word narrows the set to the
registrations having a name word of that skeleton, whatever the script, order or field; the
last word may be unfinished and matches skeletons it begins.

It answers with patient ids only: who may see which of them is the store's guard's business,
asked by the caller (the web search runs a guarded ``Patient?_id=`` search on the ids).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Protocol

from takamul.registry.names import NameToken, name_token, token_similarity
from takamul.registry.record import RegistryRecord

__all__ = [
    "MAX_PREFIX_UNION",
    "MAX_RANKED",
    "LiveNameFinder",
    "NameFinder",
    "PatientFinder",
    "name_words",
    "search_words",
]

log = logging.getLogger(__name__)

# A search for an unfinished word of one or two letters matches much of a country: the union
# of its postings stops growing here, and the caller is told to type more.
MAX_PREFIX_UNION = 20_000
# Ranking compares each typed word with the candidate's words; beyond this many candidates
# the order is by skeletons only (the caller shows a first page and says there are more).
MAX_RANKED = 5_000


class PatientFinder(Protocol):
    """What a search box asks of a finder (``LiveNameFinder`` in memory; with the registry's
    index in the store, ``takamul.mpi.stored_finder.StoredNameFinder``)."""

    def usable(self) -> bool: ...

    def find(
        self,
        text: str,
        limit: int = 500,
        prefix: bool = True,
        within: AbstractSet[str] | None = None,
    ) -> list[str]: ...


def name_words(record: RegistryRecord) -> tuple[NameToken, ...]:
    """A registration's distinct name words of every name and field, in order, as tokens."""
    return tuple(dict.fromkeys(t for c in record.names for t in c.tokens if t.skel))


def search_words(text: str) -> list[str]:
    """The words of a search box's text that hold something of a name."""
    return [w for w in text.split() if name_token(w) is not None]


class NameFinder:
    """Patient ids by the skeletons of their name words; thread-safe."""

    def __init__(self) -> None:
        self._postings: dict[str, set[str]] = {}
        self._of: dict[str, frozenset[str]] = {}  # patient id -> its skeletons
        self._tokens: dict[str, tuple[NameToken, ...]] = {}  # patient id -> its name words
        self._sorted: list[str] = []  # distinct skeletons, for prefix ranges
        self._dirty = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._of)

    def add(self, record: RegistryRecord) -> None:
        """Index (or re-index) one registration's name words."""
        self.add_words(record.patient_id, name_words(record))

    def add_words(self, patient_id: str, tokens: tuple[NameToken, ...]) -> None:
        """Index (or re-index) ``patient_id`` under ``tokens`` (its ``name_words``)."""
        skeletons = frozenset(t.skel for t in tokens)
        with self._lock:
            self._drop(patient_id)
            self._of[patient_id] = skeletons
            self._tokens[patient_id] = tokens
            for skel in skeletons:
                held = self._postings.get(skel)
                if held is None:
                    self._postings[skel] = {patient_id}
                    self._dirty = True
                else:
                    held.add(patient_id)

    def add_many(self, records: Iterable[RegistryRecord]) -> None:
        for record in records:
            self.add(record)

    def remove(self, patient_id: str) -> None:
        with self._lock:
            self._drop(patient_id)

    def _drop(self, patient_id: str) -> None:
        self._tokens.pop(patient_id, None)
        for skel in self._of.pop(patient_id, ()):
            held = self._postings.get(skel)
            if held is not None:
                held.discard(patient_id)
                if not held:
                    del self._postings[skel]
                    self._dirty = True

    def find(
        self,
        text: str,
        limit: int = 500,
        prefix: bool = True,
        within: AbstractSet[str] | None = None,
    ) -> list[str]:
        """Patient ids having a name word for every word of ``text`` (the last one may be
        unfinished when ``prefix``); those whose words match most closely as written come
        first. At most ``limit`` ids; [] when ``text`` has no name word. ``within``: only
        these patients (a facility's, say), applied before ranking."""
        words = search_words(text)
        if not words:
            return []
        with self._lock:
            found = self._narrow(words, prefix, within)
            if not found:
                return []
            return self._rank(found, words, limit)

    def _narrow(self, words: list[str], prefix: bool, within: AbstractSet[str] | None) -> set[str]:
        # A scope (a facility's patients) starts the narrowing: an unfinished word is then
        # checked against those few rather than against the country's postings.
        found: set[str] | None = None if within is None else {p for p in within if p in self._of}
        exact = [name_token(w) for w in (words[:-1] if prefix else words)]
        for postings in sorted(
            (self._postings.get(t.skel, set()) for t in exact if t is not None), key=len
        ):
            found = set(postings) if found is None else found & postings
        if prefix:
            last = name_token(words[-1])
            if last is not None:
                found = self._with_prefix(found, last.skel)
        return found or set()

    def _with_prefix(self, found: set[str] | None, start: str) -> set[str]:
        if found is not None:
            # few left: check each one's own skeletons rather than union many postings
            return {pid for pid in found if any(s.startswith(start) for s in self._of[pid])}
        if self._dirty:
            self._sorted = sorted(self._postings)
            self._dirty = False
        at = bisect.bisect_left(self._sorted, start)
        union: set[str] = set()
        while at < len(self._sorted) and self._sorted[at].startswith(start):
            union |= self._postings[self._sorted[at]]
            if len(union) >= MAX_PREFIX_UNION:
                break
            at += 1
        return union

    def _rank(self, found: set[str], words: list[str], limit: int) -> list[str]:
        """Closest spelling first: per typed word, its best similarity (the registry's own
        comparator, across scripts) with the candidate's words; then fewer name words (the
        words typed are more of the name), then a stable order."""
        typed = [t for w in words if (t := name_token(w)) is not None]
        pool = sorted(found, key=lambda pid: (len(self._of[pid]), pid))
        ranked = pool[:MAX_RANKED]

        def closeness(pid: str) -> float:
            own = self._tokens.get(pid, ())
            return sum(max((token_similarity(t, o) for o in own), default=0.0) for t in typed)

        ranked.sort(key=lambda pid: (-round(closeness(pid), 3), len(self._of[pid]), pid))
        return (ranked + pool[MAX_RANKED:])[:limit]


class LiveNameFinder:
    """A ``NameFinder`` filled from ``source`` (every registration) in a thread of its own, so a
    server process answers while it is built, and kept current by ``add`` and ``remove`` (a
    write hook's, after each commit) from the start: a registration written during the build is
    not overwritten by the older version the build read before it.

    With the registry's candidate index in the store, building this was what was left of a
    server process's start that grows with the population: each registration read and parsed
    again. A search waits for the build for up to ``wait`` seconds; past that (or if the build
    failed) the finder counts as empty, which the web search takes for "no finder" and answers
    with the FHIR name search instead (one script, prefixes)."""

    def __init__(self, source: Callable[[], Iterable[RegistryRecord]], wait: float = 30.0) -> None:
        self._finder = NameFinder()
        self._source = source
        self._wait = wait
        self._ready = threading.Event()
        self._failed = False
        self._lock = threading.Lock()
        self._written: set[str] = set()  # patient ids written since the build began

    def start(self) -> None:
        threading.Thread(target=self._build, name="name-finder", daemon=True).start()

    def _build(self) -> None:
        try:
            for record in self._source():
                with self._lock:
                    if record.patient_id not in self._written:
                        self._finder.add(record)
        except Exception:
            # the store was unreachable, say: searches fall back, and the log says why
            log.exception("the patient name finder could not be built; name searches use FHIR")
            self._failed = True
        finally:
            with self._lock:
                self._written.clear()
                self._ready.set()

    def ready(self) -> bool:
        return self._ready.is_set()

    def add(self, record: RegistryRecord) -> None:
        with self._lock:
            if not self._ready.is_set():
                self._written.add(record.patient_id)
            self._finder.add(record)

    def remove(self, patient_id: str) -> None:
        with self._lock:
            if not self._ready.is_set():
                self._written.add(patient_id)
            self._finder.remove(patient_id)

    def __len__(self) -> int:
        if not self._ready.wait(self._wait) or self._failed:
            return 0
        return len(self._finder)

    def usable(self) -> bool:
        """Built (waiting up to ``wait``) and holding registrations: else the caller falls back
        to the FHIR name search."""
        return len(self) > 0

    def find(
        self,
        text: str,
        limit: int = 500,
        prefix: bool = True,
        within: AbstractSet[str] | None = None,
    ) -> list[str]:
        """``NameFinder.find`` once built (waiting for it, as ``len`` does)."""
        if not self._ready.wait(self._wait):
            return []
        return self._finder.find(text, limit, prefix, within)
