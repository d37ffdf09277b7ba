"""Arabic-script folding: letter forms, marks, invisible characters and compound spacing fold
to one spelling; folding is pure and idempotent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from takamul.registry import fold_arabic


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("أحمد", "احمد"),  # hamza on alef
        ("إبراهيم", "ابراهيم"),  # hamza under alef
        ("آمنة", "امنه"),  # madda, taa marbuta
        ("فاطمة", "فاطمه"),  # taa marbuta / heh
        ("مصطفى", "مصطفي"),  # alef maqsura
        ("کریمی", "كريمي"),  # Persian kaf/yeh vs Arabic
        ("مُحَمَّد", "محمد"),  # harakat and shadda
        ("محـــمد", "محمد"),  # tatweel
        ("گل\u200cمحمد", "گلمحمد"),  # ZWNJ in a Persian compound
        ("عبد الله", "عبدالله"),  # compound spacing
        ("عبد  الرحمن", "عبدالرحمن"),
        ("أبو بكر", "ابوبكر"),
        ("ابو بكر", "ابوبكر"),
        ("نور الدين", "نورالدين"),
        ("حبیب الله", "حبيبالله"),
        ("مسؤول", "مسوول"),  # hamza on waw
        ("أسماء", "اسما"),  # hamza on the line
        ("\u200fعلي\u200e", "علي"),  # direction marks
        ("ﻋﻠﻲ", "علي"),  # presentation forms (NFKC)
        ("١٢٣٤", "1234"),
        ("۱۲۳۴", "1234"),
    ],
)
def test_fold_pairs(a: str, b: str) -> None:
    assert fold_arabic(a) == fold_arabic(b)
    assert fold_arabic(a) == b


def test_latin_passes_through_and_whitespace_collapses() -> None:
    assert fold_arabic("  Mohammed   Al-Qahtani ") == "Mohammed Al-Qahtani"


def test_distinct_names_stay_distinct() -> None:
    assert fold_arabic("حسن") != fold_arabic("حسين")
    assert fold_arabic("محمد") != fold_arabic("محمود")


_ARABIC_ALPHABET = st.sampled_from(
    [
        *"ابتثجحخدذرزسشصضطظعغفقكلمنهويةىأإآؤئءیکگچپژ ـ\u200c\u064e\u0651\u0670",
        "عبد ",
        "ابو ",
        " الله",
        "ال ",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ARABIC_ALPHABET, max_size=20).map("".join))
def test_fold_idempotent_arabic(text: str) -> None:
    once = fold_arabic(text)
    assert fold_arabic(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_fold_idempotent_any_text_and_pure(text: str) -> None:
    before = str(text)
    once = fold_arabic(text)
    assert text == before  # the input is untouched (a new string is returned)
    assert fold_arabic(once) == once
