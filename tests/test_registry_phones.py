"""Phones: local and international forms of Saudi and Iranian numbers to E.164."""

from __future__ import annotations

import pytest

from takamul.registry import Level, compare_phones, normalize_phone


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("0501234567", "+966501234567"),
        ("+966 50 123 4567", "+966501234567"),
        ("00966501234567", "+966501234567"),
        ("966501234567", "+966501234567"),
        ("٠٥٠١٢٣٤٥٦٧", "+966501234567"),
        ("09121234567", "+989121234567"),
        ("+98 912 123 4567", "+989121234567"),
        ("۰۹۱۲۱۲۳۴۵۶۷", "+989121234567"),
        ("011 234 5678", "+966112345678"),  # Riyadh landline, through libphonenumber
        ("021 8888 7777", "+982188887777"),  # Tehran landline (not valid in SA)
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_normalize(text: str, e164: str) -> None:
    assert normalize_phone(text) == e164


def test_garbage_is_none() -> None:
    assert normalize_phone("") is None
    assert normalize_phone("12") is None


def test_compare() -> None:
    assert compare_phones(("+966501234567",), ("+966501234567", "+966551234567")) == Level.EXACT
    assert compare_phones(("+966501234567",), ("+966551234567",)) == Level.DIFFERENT
    assert compare_phones((), ("+966551234567",)) == Level.MISSING
