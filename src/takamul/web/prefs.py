"""Each person's language, calendar and digits: kept per login in ``web_preference``; until a
person chooses, the defaults follow the country of the facility the login belongs to."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import Column, Engine, MetaData, String, Table, insert, select, update

from takamul.web.calendars import CALENDARS, NUMERALS
from takamul.web.i18n import LANGUAGES, language

__all__ = ["PreferenceStore", "Preferences", "defaults_for_country", "web_metadata"]

web_metadata = MetaData()
web_preference = Table(
    "web_preference",
    web_metadata,
    Column("username", String(200), primary_key=True),
    Column("lang", String(8), nullable=False),
    Column("calendar", String(16), nullable=False),
    Column("numerals", String(16), nullable=False),
)

# The language a facility's country works in; the rest of the world starts in English.
_COUNTRY_LANGUAGE = {
    "SA": "ar", "AE": "ar", "BH": "ar", "KW": "ar", "OM": "ar", "QA": "ar", "JO": "ar",
    "EG": "ar", "IQ": "ar", "LB": "ar", "SY": "ar", "YE": "ar", "MA": "ar", "DZ": "ar",
    "TN": "ar", "LY": "ar", "SD": "ar", "PS": "ar", "IR": "fa", "AF": "fa",
}  # fmt: skip
# Umm al-Qura is Saudi Arabia's civil calendar; elsewhere in the Arab world people date by the
# Gregorian calendar.
_COUNTRY_CALENDAR = {"SA": "hijri", "IR": "jalali", "AF": "jalali"}


@dataclass(frozen=True, slots=True)
class Preferences:
    lang: str
    calendar: str
    numerals: str

    def changed(self, **values: str) -> Preferences:
        """These preferences with the valid ``values`` applied (unknown ones are ignored)."""
        allowed = {"lang": LANGUAGES, "calendar": CALENDARS, "numerals": NUMERALS}
        valid = {k: v for k, v in values.items() if k in allowed and v in allowed[k]}
        return replace(self, **valid)


def defaults_for_country(country: str | None) -> Preferences:
    code = (country or "").upper()
    lang = language(_COUNTRY_LANGUAGE.get(code, "en"))
    return Preferences(lang.code, _COUNTRY_CALENDAR.get(code, "gregorian"), lang.default_numerals)


class PreferenceStore:
    def __init__(self, engine: Engine, reader: Engine) -> None:
        self.engine, self.reader = engine, reader
        web_metadata.create_all(engine)

    def get(self, username: str) -> Preferences | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                select(web_preference).where(web_preference.c.username == username)
            ).first()
        return None if row is None else Preferences(row.lang, row.calendar, row.numerals)

    def set(self, username: str, prefs: Preferences) -> None:
        values: dict[str, Any] = {
            "lang": prefs.lang,
            "calendar": prefs.calendar,
            "numerals": prefs.numerals,
        }
        with self.engine.connect() as conn, conn.begin():
            done = conn.execute(
                update(web_preference).where(web_preference.c.username == username).values(values)
            )
            if done.rowcount == 0:
                conn.execute(insert(web_preference).values(username=username, **values))


def organization_country(content: bytes | None) -> str | None:
    """The country of an Organization's first address that has one."""
    if not content:
        return None
    body = orjson.loads(content)
    for address in body.get("address") or []:
        if address.get("country"):
            return str(address["country"])
    return None
