"""Name chains: parsing Saudi and Iranian HumanNames, similarity over partial chains, swaps
and scripts, and the comparison levels the linker uses."""

from __future__ import annotations

from takamul.registry import (
    Level,
    compare_family,
    compare_father,
    compare_given,
    name_similarity,
    parse_human_name,
)
from takamul.registry.names import NameChain


def chain(**name: object) -> NameChain:
    parsed = parse_human_name(name)
    assert parsed is not None
    return parsed


SAUDI_AR = chain(given=["محمد", "عبدالله", "سعود"], family="القحطاني")
SAUDI_LATIN = chain(given=["Muhammad", "Abd Allah", "Saud"], family="Al-Kahtani")


def test_saudi_chain_order_and_particles() -> None:
    assert SAUDI_AR.given and SAUDI_AR.given.skel == "MHMD"
    assert SAUDI_AR.father and SAUDI_AR.father.norm == "عبدالله"
    assert SAUDI_AR.grandfather and SAUDI_AR.grandfather.norm == "سعود"
    assert SAUDI_AR.family and SAUDI_AR.family.norm == "قحطاني"
    text = chain(text="Mohammed bin Abdullah bin Saud Al Qahtani")
    assert [t.skel for t in text.tokens] == ["MHMD", "ABDL", "SD", "KHTNI"]
    arabic_text = chain(text="محمد بن عبد الله بن سعود آل قحطاني")
    assert arabic_text.given and arabic_text.given.norm == "محمد"
    assert arabic_text.father and arabic_text.father.norm == "عبدالله"


def test_iranian_father_from_extension() -> None:
    parsed = parse_human_name({"given": ["علی"], "family": "کریمی"}, father_name="حسین")
    assert parsed is not None and parsed.father is not None
    assert parsed.father.skel == "HSN"
    assert parse_human_name({}) is None


def test_cross_script_full_chain_is_a_strong_match() -> None:
    assert name_similarity(SAUDI_AR, SAUDI_LATIN) >= 0.9
    assert compare_given(SAUDI_AR, SAUDI_LATIN) == Level.EQUIVALENT
    assert compare_family(SAUDI_AR, SAUDI_LATIN) == Level.EQUIVALENT
    assert compare_father(SAUDI_AR, SAUDI_LATIN) == Level.EQUIVALENT


def test_partial_chain_matches_on_what_is_present() -> None:
    partial = chain(given=["محمد"], family="القحطاني")
    assert name_similarity(SAUDI_AR, partial) == 1.0
    assert compare_father(SAUDI_AR, partial) == Level.MISSING


def test_swapped_given_and_family() -> None:
    a = chain(given=["Reza"], family="Karimi")
    b = chain(given=["Karimi"], family="Reza")
    assert 0.9 <= name_similarity(a, b) < 1.0
    assert compare_given(a, b) == Level.DIFFERENT


def test_persian_letter_forms_are_exact() -> None:
    a = chain(given=["علی"], family="کریمی")
    b = chain(given=["علي"], family="كريمي")
    assert compare_family(a, b) == Level.EXACT
    assert name_similarity(a, b) == 1.0


def test_levels_fuzzy_and_different() -> None:
    a = chain(given=["Mohammed"], family="Alqahtani")
    typo = chain(given=["Mohammde"], family="Alqahtabi")
    assert compare_family(a, typo) == Level.SIMILAR
    assert compare_given(a, typo) == Level.EQUIVALENT  # a vowel slip keeps the skeleton
    other = chain(given=["Khalid"], family="Al-Otaibi")
    assert compare_given(a, other) == Level.DIFFERENT
    assert name_similarity(a, other) < 0.6


def test_arabic_names_with_one_skeleton_are_not_equivalent() -> None:
    a = chain(given=["محمد"], family="حسن")
    b = chain(given=["محمود"], family="حسين")
    assert compare_given(a, b) == Level.SIMILAR
    assert name_similarity(a, b) < 0.85


def test_brothers_are_separated_by_the_given_name() -> None:
    a = chain(given=["فهد", "عبدالله", "سعود"], family="العتيبي")
    b = chain(given=["خالد", "عبدالله", "سعود"], family="العتيبي")
    assert name_similarity(a, b) < 0.85


def test_a_given_name_alone_is_weak_evidence() -> None:
    a = chain(given=["Mohammed"])
    b = chain(given=["محمد"], family="الغامدي")
    assert name_similarity(a, b) <= 0.8
