"""The name finder behind as-you-type patient search: every word typed narrows by the
registry's cross-script skeleton, the last word may be unfinished, a scope narrows before
ranking, and re-indexing or removing a registration leaves no stale entry."""

from __future__ import annotations

from takamul.registry.finder import NameFinder
from takamul.registry.record import from_patient


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
