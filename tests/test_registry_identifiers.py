"""National IDs: recognition in FHIR identifiers, check digits, typo levels, shared IDs."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from takamul.registry import (
    Level,
    compare_ids,
    ids_shared_across_generations,
    national_id,
    valid_iran_national_code,
    valid_saudi_id,
)
from takamul.registry.identifiers import luhn_valid

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _luhn_complete(stem: str) -> str:
    """Written independently of the validator: try each check digit against the Luhn sum."""
    for d in "0123456789":
        total = 0
        for i, ch in enumerate(reversed(stem + d)):
            x = int(ch) * (2 if i % 2 else 1)
            total += x // 10 + x % 10
        if total % 10 == 0:
            return stem + d
    raise AssertionError


def _iran_complete(stem: str) -> str:
    s = sum(int(c) * w for c, w in zip(stem, range(10, 1, -1), strict=True)) % 11
    return stem + str(s if s < 2 else 11 - s)


def test_known_values() -> None:
    assert luhn_valid("79927398713")  # the textbook Luhn example
    assert not luhn_valid("79927398710")
    assert valid_saudi_id("1000000008") and not valid_saudi_id("3000000004")
    assert not valid_saudi_id("100000000")
    assert valid_iran_national_code("0499370899")
    assert valid_iran_national_code("499370899")  # leading zero dropped when keyed
    assert not valid_iran_national_code("1111111111")  # passes the sum, never issued


@settings(max_examples=200, deadline=None)
@given(st.sampled_from("12"), st.text("0123456789", min_size=8, max_size=8), st.data())
def test_saudi_valid_and_single_digit_changes(prefix: str, body: str, data: st.DataObject) -> None:
    nid = _luhn_complete(prefix + body)
    assert valid_saudi_id(nid)
    i = data.draw(st.integers(0, 9))
    d = data.draw(st.sampled_from([c for c in "0123456789" if c != nid[i]]))
    assert not valid_saudi_id(nid[:i] + d + nid[i + 1 :])


@settings(max_examples=200, deadline=None)
@given(st.text("0123456789", min_size=9, max_size=9), st.data())
def test_iran_valid_and_single_digit_changes(stem: str, data: st.DataObject) -> None:
    code = _iran_complete(stem)
    if len(set(code)) == 1:
        return
    assert valid_iran_national_code(code)
    i = data.draw(st.integers(0, 9))
    d = data.draw(st.sampled_from([c for c in "0123456789" if c != code[i]]))
    changed = code[:i] + d + code[i + 1 :]
    # The check digit maps remainders 1 and 10 both to 1, so a change that moves the
    # remainder between them goes unseen: the only single-digit errors mod 11 lets through.
    r = sum(int(c) * w for c, w in zip(changed[:9], range(10, 1, -1), strict=True)) % 11
    blind_spot = changed[9] == "1" and r in (1, 10)
    assert valid_iran_national_code(changed) == blind_spot


def test_recognised_by_system_or_by_type() -> None:
    ids = [
        {"system": "https://takamul.health/fhir/sid/mrn/phc-1", "value": "PHC-1"},
        {"system": "https://takamul.health/fhir/sid/sa-iqama", "value": "2123456788"},
    ]
    nid = national_id(ids)
    assert nid is not None and nid.value == "2123456788" and nid.valid
    typed = [{"type": {"coding": [{"system": V2_0203, "code": "NI"}]}, "value": "١٢٣٤٥"}]
    other = national_id(typed)
    assert other is not None and other.value == "12345" and other.valid is None
    assert national_id([{"system": "urn:x", "value": "1"}]) is None
    assert national_id(None) is None


def test_compare_ids_levels() -> None:
    assert compare_ids("1123456780", "1123456780") == Level.EXACT
    assert compare_ids("1123456780", "1123456789") == Level.SIMILAR  # substitution
    assert compare_ids("1123456780", "1124356780") == Level.SIMILAR  # transposition
    assert compare_ids("1123456780", "1125436780") == Level.DIFFERENT
    assert compare_ids("1123456780", None) == Level.MISSING


def test_id_shared_by_parent_and_infant_is_flagged() -> None:
    rng = random.Random(3)
    records = [("1123456780", {1988}), ("1123456780", {2024}), ("1999999990", {1990})]
    records += [("1999999990", {1990, 1991})]
    rng.shuffle(records)
    assert ids_shared_across_generations(records) == {"1123456780"}
