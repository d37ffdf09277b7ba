"""The name finder behind as-you-type patient search: every word typed narrows by the
registry's cross-script skeleton, the last word may be unfinished, a scope narrows before
ranking, and re-indexing or removing a registration leaves no stale entry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from takamul.registry.finder import LiveNameFinder, NameFinder
from takamul.registry.record import RegistryRecord, from_patient


def _finder(*people: tuple[str, str, str]) -> NameFinder:
    finder = NameFinder()
    for pid, given, family in people:
        finder.add(
            from_patient(
                {
                    "resourceType": "Patient",
                    "id": pid,
                    "name": [{"given": [given], "family": family}],
                }
            )
        )
    return finder


PEOPLE = (
    ("p1", "سلمى", "العتيبي"),
    ("p2", "Salem", "Al-Otaibi"),
    ("p3", "مریم", "رضایی"),
    ("p4", "Maryam", "Karimi"),
)


def test_a_name_in_one_script_finds_it_written_in_the_other() -> None:
    finder = _finder(*PEOPLE)
    assert set(finder.find("salma otaibi")) == {"p1", "p2"}
    assert finder.find("العتيبي سلمى")[0] == "p1"  # either order; exact spelling first
    assert set(finder.find("Maryam")) == {"p3", "p4"}
    assert finder.find("Rezaei") == ["p3"]


def test_the_last_word_may_be_unfinished() -> None:
    finder = _finder(*PEOPLE)
    assert set(finder.find("otaibi sa")) == {"p1", "p2"}
    assert finder.find("maryam kar") == ["p4"]
    assert finder.find("maryam kar", prefix=False) == []
    assert finder.find("zz") == []


def test_a_scope_narrows_before_ranking_and_limit() -> None:
    finder = _finder(*PEOPLE)
    assert finder.find("otaibi", within=frozenset({"p2"})) == ["p2"]
    assert finder.find("otaibi", limit=1, within=frozenset({"p1"})) == ["p1"]
    assert finder.find("otaibi", within=frozenset()) == []


def test_reindexing_and_removal_leave_nothing_stale() -> None:
    finder = _finder(*PEOPLE)
    finder.add(
        from_patient({"resourceType": "Patient", "id": "p4", "name": [{"given": ["Zahra"]}]})
    )
    assert finder.find("karimi") == []
    assert finder.find("zahra") == ["p4"]
    finder.remove("p4")
    assert finder.find("zahra") == [] and len(finder) == 3


def _record(pid: str, given: str, family: str) -> RegistryRecord:
    return from_patient(
        {"resourceType": "Patient", "id": pid, "name": [{"given": [given], "family": family}]}
    )


def test_a_background_build_keeps_the_writes_made_meanwhile() -> None:
    """Registrations written while the finder is built are the ones it keeps: an update of a
    registration the build has not read yet, a removal of one it has, one of one it has not."""
    halfway = threading.Event()
    proceed = threading.Event()

    def source() -> Iterator[RegistryRecord]:
        yield _record("p1", "Salma", "Al-Otaibi")
        yield _record("p2", "Salem", "Al-Harbi")
        halfway.set()
        assert proceed.wait(10)
        yield _record("p3", "Maryam", "Karimi")  # renamed meanwhile: this is the old version
        yield _record("p4", "Noura", "Al-Ghamdi")  # removed meanwhile

    finder = LiveNameFinder(source, wait=10)
    finder.start()
    assert halfway.wait(10)
    assert not finder.ready()
    finder.add(_record("p3", "Maryam", "Rezaei"))
    finder.remove("p1")
    finder.remove("p4")
    proceed.set()
    assert finder.find("Rezaei") == ["p3"]  # waits for the build
    assert finder.ready()
    assert finder.find("Karimi") == []
    assert "p1" not in finder.find("Salma")
    assert finder.find("Noura") == []
    assert set(finder.find("Al-Harbi")) == {"p2"}
    assert len(finder) == 2


def test_a_search_waits_for_the_build_and_a_failed_build_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    def slow() -> Iterator[RegistryRecord]:
        assert release.wait(10)
        yield _record("p1", "Salma", "Al-Otaibi")

    finder = LiveNameFinder(slow, wait=0.05)
    finder.start()
    assert len(finder) == 0  # not built within the wait: the caller falls back
    assert finder.find("Salma") == []
    release.set()
    finder_ready = LiveNameFinder(lambda: [_record("p9", "Salma", "Al-Otaibi")], wait=10)
    finder_ready.start()
    assert finder_ready.find("salma") == ["p9"]

    def broken() -> Iterator[RegistryRecord]:
        yield _record("p1", "Salma", "Al-Otaibi")
        raise ConnectionError("the store is unreachable")

    failed = LiveNameFinder(broken, wait=10)
    with caplog.at_level(logging.ERROR):
        failed.start()
        assert len(failed) == 0  # a partial finder is not used
    assert "could not be built" in caplog.text
