"""De-identified extracts for research: a SQL on FHIR view's rows with keyed-hash pseudonyms,
per-person shifted dates, generalised age and place, and a k-anonymity check that refuses the
extract when a combination of quasi-identifiers is shared by fewer than k persons.

A policy classifies every column of the view (an unclassified column stops the run, so a column
added to a view later is never exported by accident):

```python
policy = DeidPolicy.load(Path("policy.json"))
key = load_key()                                  # TAKAMUL_DEID_KEY or a key file, >= 32 bytes
report = run_deid(compile_view(Path("patients.json")), iter_ndjson([Path("data")]), policy,
                  key, Path("extract.csv"), DeidFormat.csv)
```

``deid_app`` is the ``takamul deid`` command (``run`` and ``keygen``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import secrets
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
from rich.console import Console

from takamul.views.cli import InputsOption, SourceDbOption
from takamul.views.evaluate import CompiledView, Row, compile_view
from takamul.views.output import OutputFormat, write_rows
from takamul.views.source import SourceError, iter_database, iter_ndjson
from takamul.views.viewdef import Column, ViewError, load_view

__all__ = [
    "DEID_KEY_ENV",
    "DEID_KEY_FILE_ENV",
    "MIN_KEY_BYTES",
    "DeidError",
    "DeidFormat",
    "DeidKey",
    "DeidPolicy",
    "DeidReport",
    "Deidentifier",
    "KAnonymityError",
    "KAnonymityReport",
    "PlaceRule",
    "deid_app",
    "deidentify",
    "load_key",
    "run_deid",
]

DEID_KEY_ENV = "TAKAMUL_DEID_KEY"
DEID_KEY_FILE_ENV = "TAKAMUL_DEID_KEY_FILE"
MIN_KEY_BYTES = 32


class DeidError(Exception):
    """A de-identification that cannot run: no key, a policy that does not fit the view..."""


# -- the key ------------------------------------------------------------------------------------


class DeidKey:
    """The secret behind pseudonyms and date shifts. Its repr shows only a key id (a keyed hash
    of a constant) so that logs and tracebacks never carry the key itself."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise DeidError(
                f"the de-identification key is {len(key)} bytes; at least {MIN_KEY_BYTES} are "
                "needed (make one with `takamul deid keygen --out FILE`)"
            )
        self._key = key

    def digest(self, purpose: str, *parts: str) -> bytes:
        """HMAC-SHA-256 of the parts, separated by a byte no identifier holds (unit separator),
        under a purpose label so that pseudonyms and date shifts are independent."""
        message = "\x1f".join((purpose, *parts)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    @property
    def key_id(self) -> str:
        """A short public name of the key: the same id means the same key (and linkable
        extracts), without revealing anything of the key."""
        return self.digest("key-id").hex()[:12]

    def __repr__(self) -> str:
        return f"DeidKey(id={self.key_id})"

    def __reduce__(self) -> Any:
        raise TypeError("a de-identification key is not serialised")


def load_key(key_file: Path | None = None, environ: Mapping[str, str] | None = None) -> DeidKey:
    """The key from ``key_file``, else from the file named by ``TAKAMUL_DEID_KEY_FILE``, else
    from ``TAKAMUL_DEID_KEY`` (its UTF-8 bytes). A key file's trailing newline is not part of it.
    """
    env = os.environ if environ is None else environ
    path = key_file or (Path(env[DEID_KEY_FILE_ENV]) if env.get(DEID_KEY_FILE_ENV) else None)
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise DeidError(f"cannot read the key file {path}: {err.strerror or err}") from err
        return DeidKey(raw.rstrip(b"\r\n"))
    text = env.get(DEID_KEY_ENV)
    if not text:
        raise DeidError(
            f"no de-identification key: set {DEID_KEY_ENV} or pass --key-file "
            "(make one with `takamul deid keygen --out FILE`)"
        )
    return DeidKey(text.encode("utf-8"))


def new_key_text() -> str:
    """A fresh key: 48 random bytes, URL-safe base64 (64 characters)."""
    return secrets.token_urlsafe(48)


# -- the policy -------------------------------------------------------------------------------

_BAND = re.compile(r"^age_band_([1-9][0-9]?)$")
_PLACE_METHODS = ("keep", "truncate", "round", "map", "drop")


@dataclass(frozen=True, slots=True)
class PlaceRule:
    """How a place column is generalised: keep (a region), truncate (a postal code to its first
    ``length`` characters), round (a coordinate to ``digits`` decimals), map (a city to its
    region, unmapped values to ``default``) or drop."""

    method: str
    length: int | None = None
    digits: int | None = None
    mapping: Mapping[str, str] | None = None
    default: str | None = None

    @classmethod
    def parse(cls, column: str, raw: Any) -> PlaceRule:
        where = f"places.{column}"
        if isinstance(raw, str):
            if raw not in ("keep", "drop"):
                raise DeidError(
                    f'{where}: use "keep", "drop" or an object such as '
                    '{"truncate": 3}, {"round": 1}, {"map": {...}}'
                )
            return cls(raw)
        if not isinstance(raw, Mapping):
            raise DeidError(f"{where}: expected a string or an object, not {raw!r}")
        methods = [m for m in _PLACE_METHODS if m in raw]
        unknown = set(raw) - {*_PLACE_METHODS, "default"}
        if unknown or len(methods) != 1:
            raise DeidError(
                f"{where}: give exactly one of truncate, round, map (and default with map); "
                f"got {sorted(raw)}"
            )
        method = methods[0]
        value = raw[method]
        if method == "truncate":
            if type(value) is not int or value < 1:
                raise DeidError(f"{where}.truncate: a number of characters (1 or more)")
            return cls("truncate", length=value)
        if method == "round":
            if type(value) is not int or not 0 <= value <= 6:
                raise DeidError(f"{where}.round: a number of decimals from 0 to 6")
            return cls("round", digits=value)
        if method == "map":
            if not isinstance(value, Mapping) or not all(
                isinstance(v, str) for v in value.values()
            ):
                raise DeidError(f"{where}.map: an object from values to generalised values")
            default = raw.get("default")
            if default is not None and not isinstance(default, str):
                raise DeidError(f"{where}.default: a string (or leave it out for null)")
            return cls("map", mapping={str(k): v for k, v in value.items()}, default=default)
        return cls(method)

    def to_json(self) -> Any:
        if self.method in ("keep", "drop"):
            return self.method
        if self.method == "truncate":
            return {"truncate": self.length}
        if self.method == "round":
            return {"round": self.digits}
        out: dict[str, Any] = {"map": dict(self.mapping or {})}
        if self.default is not None:
            out["default"] = self.default
        return out


_POLICY_KEYS = frozenset(
    {
        "identifiers",
        "person",
        "dates",
        "date_shift_days",
        "birth_dates",
        "age_reference",
        "top_age",
        "places",
        "drop",
        "keep",
        "quasi_identifiers",
        "k",
        "pseudonym_length",
        "name",
        "description",
    }
)


def _names(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise DeidError(f"{where}: a list of column names")
    return tuple(raw)


def _int(raw: Any, where: str, low: int, high: int) -> int:
    if type(raw) is not int or not low <= raw <= high:
        raise DeidError(f"{where}: a whole number from {low} to {high}, not {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class DeidPolicy:
    """Which columns of a view are what, and how each is de-identified.

    ``identifiers`` map a column to its namespace: the same namespace (e.g. "Patient" for a
    Patient id and for a reference to it) gives the same pseudonym for the same value, so
    extracts made with one key join. ``person`` is the identifier column whose value is the
    person, for per-person date shifts and for counting persons (not rows) in k-anonymity.
    """

    identifiers: Mapping[str, str] = field(default_factory=dict)
    person: str | None = None
    dates: tuple[str, ...] = ()
    date_shift_days: int = 180  # each person's dates move by 1..N days, forward or back
    birth_dates: Mapping[str, str] = field(default_factory=dict)  # year|age|age_band_N
    age_reference: date | None = None  # ages at this date (default: the day of the extract)
    top_age: int = 90  # ages from here on are one group ("90+"), as HIPAA Safe Harbor asks
    places: Mapping[str, PlaceRule] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    quasi_identifiers: tuple[str, ...] = ()
    k: int = 5
    pseudonym_length: int = 32  # hex characters (128 bits)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DeidPolicy:
        unknown = set(raw) - _POLICY_KEYS
        if unknown:
            # A misspelt key would silently leave a column unprotected: refuse it.
            raise DeidError(
                f"unknown policy keys {sorted(unknown)}; known: {', '.join(sorted(_POLICY_KEYS))}"
            )
        ids = raw.get("identifiers") or {}
        if isinstance(ids, list):
            identifiers = {c: c for c in _names(ids, "identifiers")}
        elif isinstance(ids, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in ids.items()
        ):
            identifiers = dict(ids)
        else:
            raise DeidError("identifiers: a list of columns or an object column -> namespace")
        births = raw.get("birth_dates") or {}
        if isinstance(births, list):
            births = {c: "age_band_5" for c in _names(births, "birth_dates")}
        if not isinstance(births, Mapping):
            raise DeidError("birth_dates: an object column -> year | age | age_band_N")
        for column, rule in births.items():
            if rule not in ("year", "age") and not (isinstance(rule, str) and _BAND.match(rule)):
                raise DeidError(
                    f"birth_dates.{column}: use year, age or age_band_N (e.g. age_band_5), "
                    f"not {rule!r}"
                )
        places = raw.get("places") or {}
        if not isinstance(places, Mapping):
            raise DeidError("places: an object column -> rule")
        reference = raw.get("age_reference")
        if reference is not None:
            try:
                reference = (
                    reference if isinstance(reference, date) else date.fromisoformat(reference)
                )
            except (TypeError, ValueError) as err:
                raise DeidError(f"age_reference: a date YYYY-MM-DD, not {reference!r}") from err
        person = raw.get("person")
        if person is not None and not isinstance(person, str):
            raise DeidError("person: the name of an identifier column")
        return cls(
            identifiers=identifiers,
            person=person,
            dates=_names(raw.get("dates"), "dates"),
            date_shift_days=_int(raw.get("date_shift_days", 180), "date_shift_days", 1, 3650),
            birth_dates=dict(births),
            age_reference=reference,
            top_age=_int(raw.get("top_age", 90), "top_age", 1, 150),
            places={c: PlaceRule.parse(c, r) for c, r in places.items()},
            drop=_names(raw.get("drop"), "drop"),
            keep=_names(raw.get("keep"), "keep"),
            quasi_identifiers=_names(raw.get("quasi_identifiers"), "quasi_identifiers"),
            # k = 1 would disable the check; there is no way to ask for that.
            k=_int(raw.get("k", 5), "k", 2, 1000),
            pseudonym_length=_int(raw.get("pseudonym_length", 32), "pseudonym_length", 16, 64),
        )

    @classmethod
    def load(cls, path: Path) -> DeidPolicy:
        """A policy from a JSON or TOML (``.toml``) file."""
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DeidError(f"cannot read the policy {path}: {err.strerror or err}") from err
        try:
            raw = (
                tomllib.loads(data.decode("utf-8"))
                if path.suffix.lower() == ".toml"
                else orjson.loads(data)
            )
        except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as err:
            raise DeidError(f"the policy {path} is not valid JSON or TOML: {err}") from err
        if not isinstance(raw, Mapping):
            raise DeidError(f"the policy {path} must be an object")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "identifiers": dict(self.identifiers),
            "person": self.person,
            "dates": list(self.dates),
            "date_shift_days": self.date_shift_days,
            "birth_dates": dict(self.birth_dates),
            "top_age": self.top_age,
            "places": {c: r.to_json() for c, r in self.places.items()},
            "drop": list(self.drop),
            "keep": list(self.keep),
            "quasi_identifiers": list(self.quasi_identifiers),
            "k": self.k,
            "pseudonym_length": self.pseudonym_length,
        }
        if self.age_reference is not None:
            out["age_reference"] = self.age_reference.isoformat()
        return out


# -- transformations --------------------------------------------------------------------------

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(T.*)?$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
# Names that usually hold direct identifiers: a column so named and kept as is gets a warning.
_SUSPECT = re.compile(
    r"name|phone|telecom|email|address|line\b|text|note|comment|national_?id|mrn|passport|ssn"
    r"|identifier",
    re.IGNORECASE,
)


def _parse_date(value: Any) -> tuple[date, str, str] | None:
    """(the date, its precision year|month|day, the time part) of a FHIR date/dateTime/instant;
    a partial date stands for the middle of its period."""
    if not isinstance(value, str):
        return None
    m = _DATE.match(value)
    if m is None:
        return None
    year, month, day, rest = m.group(1), m.group(2), m.group(3), m.group(4) or ""
    try:
        if month is None:
            return date(int(year), 7, 2), "year", rest
        if day is None:
            return date(int(year), int(month), 15), "month", rest
        return date(int(year), int(month), int(day)), "day", rest
    except ValueError:
        return None


def _format_date(value: date, precision: str, rest: str) -> str:
    if precision == "year":
        return f"{value.year:04d}"
    if precision == "month":
        return f"{value.year:04d}-{value.month:02d}"
    return f"{value.isoformat()}{rest}"


def _age(born: date, on: date) -> int:
    return max(0, on.year - born.year - ((on.month, on.day) < (born.month, born.day)))


def _each(fn: Callable[[Any], Any], collection: bool) -> Callable[[Any], Any]:
    if not collection:
        return fn

    def many(value: Any) -> Any:
        return None if value is None else [fn(v) for v in value]

    return many


@dataclass(frozen=True, slots=True)
class _Plan:
    """What happens to one input column: its index, its output column (None: dropped) and the
    function of (value, row shift in days) that de-identifies it."""

    index: int
    column: Column | None
    fn: Callable[[Any, int | None], Any]


class Deidentifier:
    """A policy checked against a view and compiled into one function per column.

    ``output_view`` is the view as it is written (dropped columns gone, generalised columns
    typed as what they now hold); ``transform`` turns one input row into one output row.
    """

    def __init__(
        self,
        view: CompiledView,
        policy: DeidPolicy,
        key: DeidKey,
        today: date | None = None,
    ) -> None:
        self.view = view
        self.policy = policy
        self.key = key
        self.age_reference = policy.age_reference or today or date.today()
        self.warnings: list[str] = []
        self._check(view, policy)
        names = view.column_names
        self._person_index = names.index(policy.person) if policy.person else None
        self._person_namespace = policy.identifiers.get(policy.person or "", "")
        self._shifts: dict[str, int] = {}
        self._pseudonyms: dict[tuple[str, str], str] = {}
        self.plans = [self._plan(i, col) for i, col in enumerate(view.columns)]
        out_columns = [p.column for p in self.plans if p.column is not None]
        self.output_view = CompiledView(dataclasses.replace(view.view, columns=tuple(out_columns)))
        out_names = [c.name for c in out_columns]
        self.qi_indexes = [out_names.index(q) for q in policy.quasi_identifiers]
        self.person_out_index = out_names.index(policy.person) if policy.person else None

    # -- checking ---------------------------------------------------------------------------

    def _check(self, view: CompiledView, policy: DeidPolicy) -> None:
        names = view.column_names
        assigned: dict[str, list[str]] = {}
        groups: dict[str, Iterable[str]] = {
            "identifiers": policy.identifiers,
            "dates": policy.dates,
            "birth_dates": policy.birth_dates,
            "places": policy.places,
            "drop": policy.drop,
            "keep": policy.keep,
        }
        for group, columns in groups.items():
            for column in columns:
                assigned.setdefault(column, []).append(group)
        problems: list[str] = []
        unknown = sorted(set(assigned) - set(names))
        if unknown:
            problems.append(f"the policy names columns the view does not have: {unknown}")
        twice = sorted(f"{c} ({', '.join(g)})" for c, g in assigned.items() if len(g) > 1)
        if twice:
            problems.append(f"columns classified more than once: {twice}")
        unclassified = [n for n in names if n not in assigned]
        if unclassified:
            problems.append(
                f"columns the policy does not classify: {unclassified} (list each under "
                "identifiers, dates, birth_dates, places, drop or keep)"
            )
        if policy.person is not None and policy.person not in policy.identifiers:
            problems.append(f"person: {policy.person!r} must be one of the identifier columns")
        if policy.dates and policy.person is None:
            problems.append(
                "dates are shifted per person: name the identifier column of the person with person"
            )
        dropped = {*policy.drop, *(c for c, r in policy.places.items() if r.method == "drop")}
        for q in policy.quasi_identifiers:
            if q not in names:
                problems.append(f"quasi-identifier {q!r} is not a column of the view")
            elif q in dropped:
                problems.append(f"quasi-identifier {q!r} is dropped from the extract")
            elif q in policy.identifiers:
                problems.append(
                    f"quasi-identifier {q!r} is an identifier: its pseudonyms are unique per "
                    "person, so every class would hold one person"
                )
        if problems:
            raise DeidError("the policy does not fit the view: " + "; ".join(problems))
        if not policy.quasi_identifiers:
            self.warnings.append(
                "no quasi_identifiers: k-anonymity is checked over the whole extract only"
            )
        if policy.person is None:
            self.warnings.append(
                "no person column: k-anonymity counts rows, which overstates the protection "
                "when a person has several rows"
            )
        for col in view.columns:
            if col.name not in policy.keep:
                continue
            if col.fhir_type in _DATE_TYPES:
                self.warnings.append(
                    f"column {col.name!r} is kept as is but holds {col.fhir_type} values; "
                    "list it under dates or birth_dates"
                )
            elif _SUSPECT.search(col.name):
                self.warnings.append(
                    f"column {col.name!r} is kept as is; its name suggests a direct "
                    "identifier (drop it or list it under identifiers)"
                )

    # -- per-column functions -----------------------------------------------------------------

    def pseudonym(self, value: Any, namespace: str) -> str:
        """The keyed pseudonym of ``value`` in ``namespace`` (hex)."""
        text = self._normalise(value, namespace)
        cached = self._pseudonyms.get((namespace, text))
        if cached is None:
            digest = self.key.digest("pseudonym", namespace, text).hex()
            cached = digest[: self.policy.pseudonym_length]
            if len(self._pseudonyms) < 1_000_000:
                self._pseudonyms[(namespace, text)] = cached
        return cached

    @staticmethod
    def _normalise(value: Any, namespace: str) -> str:
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if _RESOURCE_TYPE.match(namespace) and "/" in text:
            # "Patient/p1", "https://x/fhir/Patient/p1/_history/2" and "p1" are one patient.
            parts = text.split("/")
            for i in range(len(parts) - 1):
                if parts[i] == namespace:
                    return parts[i + 1]
        return text

    def shift_days(self, person: Any) -> int:
        """The person's date shift: 1..N days, forward or back, from the keyed hash."""
        text = self._normalise(person, self._person_namespace)
        shift = self._shifts.get(text)
        if shift is None:
            digest = self.key.digest("date-shift", self._person_namespace, text)
            magnitude = 1 + int.from_bytes(digest[:8], "big") % self.policy.date_shift_days
            shift = magnitude if digest[8] & 1 else -magnitude
            if len(self._shifts) < 1_000_000:
                self._shifts[text] = shift
        return shift

    def _plan(self, index: int, col: Column) -> _Plan:
        policy = self.policy
        name = col.name
        as_text = dataclasses.replace(col, type="string", inferred_type=None, tags=())
        if name in policy.identifiers:
            namespace = policy.identifiers[name]

            def pseudonymise(v: Any) -> Any:
                return None if v is None else self.pseudonym(v, namespace)

            fn = _each(pseudonymise, col.collection)
            return _Plan(index, as_text, lambda v, _s: fn(v))
        if name in policy.dates:
            return _Plan(index, col, _each_shifted(col.collection))
        if name in policy.birth_dates:
            rule = policy.birth_dates[name]
            generalise = _each(self._birth_rule(rule), col.collection)
            out = (
                dataclasses.replace(col, type="integer", inferred_type=None, tags=())
                if rule == "age"
                else as_text
            )
            return _Plan(index, out, lambda v, _s: generalise(v))
        if name in policy.places:
            place = policy.places[name]
            if place.method == "drop":
                return _Plan(index, None, lambda v, _s: None)
            if place.method == "keep":
                return _Plan(index, col, lambda v, _s: v)
            if place.method == "round":
                out = dataclasses.replace(col, type="decimal", inferred_type=None, tags=())
            else:
                out = as_text
            generalise = _each(_place_rule(place), col.collection)
            return _Plan(index, out, lambda v, _s: generalise(v))
        if name in policy.drop:
            return _Plan(index, None, lambda v, _s: None)
        return _Plan(index, col, lambda v, _s: v)  # keep

    def _birth_rule(self, rule: str) -> Callable[[Any], Any]:
        on = self.age_reference
        top = self.policy.top_age

        def age_of(value: Any) -> int | None:
            parsed = _parse_date(value)
            return None if parsed is None else _age(parsed[0], on)

        if rule == "year":

            def year(value: Any) -> Any:
                parsed = _parse_date(value)
                if parsed is None:
                    return None
                if _age(parsed[0], on) >= top:
                    return f"<={on.year - top}"
                return f"{parsed[0].year:04d}"

            return year
        if rule == "age":

            def age(value: Any) -> Any:
                years = age_of(value)
                return None if years is None else min(years, top)

            return age
        m = _BAND.match(rule)
        assert m is not None  # checked when the policy was read
        width = int(m.group(1))

        def band(value: Any) -> Any:
            years = age_of(value)
            if years is None:
                return None
            if years >= top:
                return f"{top}+"
            low = years // width * width
            return f"{low}-{min(low + width - 1, top - 1)}"

        return band

    # -- rows -----------------------------------------------------------------------------

    def transform(self, row: Row) -> Row:
        shift: int | None = None
        if self._person_index is not None:
            person = row[self._person_index]
            if person is not None and not isinstance(person, list):
                shift = self.shift_days(person)
        return tuple([p.fn(row[p.index], shift) for p in self.plans if p.column is not None])

    def class_key(self, out_row: Sequence[Any]) -> bytes:
        """The row's equivalence class: its quasi-identifier values."""
        return orjson.dumps([out_row[i] for i in self.qi_indexes])

    def class_values(self, key: bytes) -> dict[str, Any]:
        return dict(zip(self.policy.quasi_identifiers, orjson.loads(key), strict=True))


def _shift_one(value: Any, shift: int | None) -> Any:
    parsed = _parse_date(value)
    if parsed is None or shift is None:
        # Unparseable, or nobody to take the shift from: leaving it would leak a true date.
        return None
    day, precision, rest = parsed
    return _format_date(day + timedelta(days=shift), precision, rest)


def _each_shifted(collection: bool) -> Callable[[Any, int | None], Any]:
    if not collection:
        return _shift_one

    def many(value: Any, shift: int | None) -> Any:
        return None if value is None else [_shift_one(v, shift) for v in value]

    return many


def _place_rule(rule: PlaceRule) -> Callable[[Any], Any]:
    if rule.method == "truncate":
        length = rule.length or 1

        def truncate(value: Any) -> Any:
            return None if value is None else str(value).strip()[:length]

        return truncate
    if rule.method == "round":
        digits = rule.digits or 0

        def rounded(value: Any) -> Any:
            try:
                return None if value is None else round(float(value), digits)
            except (TypeError, ValueError):
                return None

        return rounded
    mapping = dict(rule.mapping or {})
    default = rule.default

    def mapped(value: Any) -> Any:
        return None if value is None else mapping.get(str(value), default)

    return mapped


# -- k-anonymity -------------------------------------------------------------------------------


@dataclass(slots=True)
class _ClassStats:
    rows: int = 0
    persons: set[str] | None = None

    def size(self) -> int:
        return len(self.persons) if self.persons is not None else self.rows


@dataclass(frozen=True, slots=True)
class KAnonymityReport:
    """The equivalence classes of the extract over its quasi-identifiers."""

    k: int
    quasi_identifiers: tuple[str, ...]
    unit: str  # persons | rows: what a class size counts
    classes: int
    min_size: int | None
    small_classes: tuple[tuple[dict[str, Any], int, int], ...]  # (values, size, rows) below k
    suggestions: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.small_classes

    @property
    def rows_below_k(self) -> int:
        return sum(rows for _, _, rows in self.small_classes)

    def message(self, limit: int = 10) -> str:
        if self.ok:
            return (
                f"k-anonymity holds: every combination of {', '.join(self.quasi_identifiers)} "
                f"is shared by at least {self.k} {self.unit} (smallest class: {self.min_size})"
            )
        lines = [
            f"{len(self.small_classes)} of {self.classes} classes over "
            f"({', '.join(self.quasi_identifiers)}) hold fewer than k={self.k} {self.unit} "
            f"({self.rows_below_k:,} rows); the smallest:"
        ]
        for values, size, rows in self.small_classes[:limit]:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            unit = self.unit[:-1] if size == 1 else self.unit
            lines.append(f"  {size} {unit} ({rows} rows): {shown}")
        if len(self.small_classes) > limit:
            lines.append(f"  ... and {len(self.small_classes) - limit} more")
        if self.suggestions:
            lines.append("suggestions:")
            lines.extend(f"  - {s}" for s in self.suggestions)
        return "\n".join(lines)


class KAnonymityError(DeidError):
    """The extract would have classes below k; nothing was written."""

    def __init__(self, report: KAnonymityReport) -> None:
        self.report = report
        super().__init__(report.message())


def _assess(
    classes: Mapping[bytes, _ClassStats], deid: Deidentifier, k: int, rows_total: int
) -> KAnonymityReport:
    unit = "persons" if deid.person_out_index is not None else "rows"
    small = sorted(
        ((key, s.size(), s.rows) for key, s in classes.items() if s.size() < k),
        key=lambda t: (t[1], t[0]),
    )
    sizes = [s.size() for s in classes.values()]
    suggestions = _suggestions(classes, deid, k, rows_total, small) if small else ()
    return KAnonymityReport(
        k=k,
        quasi_identifiers=deid.policy.quasi_identifiers,
        unit=unit,
        classes=len(classes),
        min_size=min(sizes) if sizes else None,
        small_classes=tuple((deid.class_values(key), size, rows) for key, size, rows in small),
        suggestions=suggestions,
    )


def _without(classes: Mapping[bytes, _ClassStats], position: int) -> dict[bytes, _ClassStats]:
    """The classes with one quasi-identifier left out (classes that differ only there merge)."""
    merged: dict[bytes, _ClassStats] = {}
    for key, stats in classes.items():
        values = orjson.loads(key)
        del values[position]
        target = merged.setdefault(
            orjson.dumps(values),
            _ClassStats(0, set() if stats.persons is not None else None),
        )
        target.rows += stats.rows
        if target.persons is not None and stats.persons is not None:
            target.persons |= stats.persons
    return merged


def _suggestions(
    classes: Mapping[bytes, _ClassStats],
    deid: Deidentifier,
    k: int,
    rows_total: int,
    small: list[tuple[bytes, int, int]],
) -> tuple[str, ...]:
    policy = deid.policy
    out: list[str] = []
    # Which quasi-identifier splits the population most: what is left below k without it.
    if len(policy.quasi_identifiers) > 1:
        for i, q in enumerate(policy.quasi_identifiers):
            rest = _without(classes, i)
            below = sum(s.rows for s in rest.values() if s.size() < k)
            out.append(f"without {q}: {below:,} rows would remain below k")
    for q in policy.quasi_identifiers:
        if q in policy.birth_dates:
            rule = policy.birth_dates[q]
            coarser = {"age": "age_band_5", "year": "age_band_5"}.get(rule)
            if coarser is None:
                band = _BAND.match(rule)
                width = int(band.group(1)) if band else 5
                coarser = f"age_band_{min(width * 2, 99)}"
            out.append(f"generalise {q} further: birth_dates.{q} = {coarser!r} (now {rule!r})")
        elif q in policy.places:
            place = policy.places[q]
            if place.method == "truncate" and (place.length or 1) > 1:
                out.append(f"truncate {q} to {(place.length or 1) - 1} characters")
            elif place.method == "round" and (place.digits or 0) > 0:
                out.append(f"round {q} to {(place.digits or 0) - 1} decimals")
            elif place.method == "keep":
                out.append(f'map {q} to broader areas (places.{q} = {{"map": {{...}}}})')
        elif q in policy.keep:
            out.append(f"group the values of {q} (a coarser column in the view) or leave it out")
    rows = sum(r for _, _, r in small)
    share = rows / rows_total if rows_total else 0.0
    out.append(f"--suppress would remove {rows:,} rows ({share:.1%}) in classes below k")
    return tuple(out)


# -- running ---------------------------------------------------------------------------------


class DeidFormat(StrEnum):
    csv = "csv"
    ndjson = "ndjson"
    parquet = "parquet"

    @property
    def output_format(self) -> OutputFormat:
        return OutputFormat(self.value)


@dataclass(frozen=True, slots=True)
class DeidReport:
    resources: int
    rows_in: int
    rows_out: int
    suppressed_rows: int
    k_anonymity: KAnonymityReport  # of the rows before any suppression
    min_class_size: int | None  # the smallest class in what was written
    columns: tuple[str, ...]
    key_id: str
    age_reference: date
    warnings: tuple[str, ...] = ()


class _Spill:
    """De-identified rows parked on disk between the k-anonymity count and the output, so that
    an extract of any size needs memory only for its classes."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="takamul-deid-"))
        self.path = self.dir / "rows.ndjson"
        self._out: IO[bytes] = self.path.open("wb")

    def write(self, row: Row) -> None:
        self._out.write(orjson.dumps(list(row)) + b"\n")

    def rows(self) -> Iterator[Row]:
        self._out.close()
        with self.path.open("rb") as f:
            for line in f:
                yield tuple(orjson.loads(line))

    def close(self) -> None:
        self._out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(slots=True)
class _Counts:
    resources: int = 0
    rows: int = 0
    classes: dict[bytes, _ClassStats] = field(default_factory=dict)


def _first_pass(
    deid: Deidentifier, resources: Iterable[Mapping[str, Any]], spill: _Spill
) -> _Counts:
    counts = _Counts()
    view = deid.view
    person_at = deid.person_out_index
    for resource in resources:
        counts.resources += 1
        for row in view.rows(resource):
            out = deid.transform(row)
            spill.write(out)
            counts.rows += 1
            key = deid.class_key(out)
            stats = counts.classes.get(key)
            if stats is None:
                stats = counts.classes[key] = _ClassStats(
                    0, set() if person_at is not None else None
                )
            stats.rows += 1
            if stats.persons is not None and person_at is not None:
                person = out[person_at]
                # A row without a person counts as a person of its own.
                stats.persons.add(person if isinstance(person, str) else f"\x00row{counts.rows}")
    return counts


def _extract(
    view: CompiledView,
    resources: Iterable[Mapping[str, Any]],
    policy: DeidPolicy,
    key: DeidKey,
    k: int | None,
    suppress: bool,
    today: date | None,
    sink: Callable[[CompiledView, Iterator[Row]], int],
) -> DeidReport:
    deid = Deidentifier(view, policy, key, today)
    threshold = policy.k if k is None else k
    if threshold < 2:
        raise DeidError("k must be at least 2 (k = 1 is no protection)")
    spill = _Spill()
    try:
        counts = _first_pass(deid, resources, spill)
        report = _assess(counts.classes, deid, threshold, counts.rows)
        if not report.ok and not suppress:
            raise KAnonymityError(report)
        small = {key for key, s in counts.classes.items() if s.size() < threshold}
        kept = [s.size() for key, s in counts.classes.items() if key not in small]
        rows = (r for r in spill.rows() if not small or deid.class_key(r) not in small)
        written = sink(deid.output_view, rows)
    finally:
        spill.close()
    return DeidReport(
        resources=counts.resources,
        rows_in=counts.rows,
        rows_out=written,
        suppressed_rows=counts.rows - written,
        k_anonymity=report,
        min_class_size=min(kept) if kept else None,
        columns=tuple(deid.output_view.column_names),
        key_id=key.key_id,
        age_reference=deid.age_reference,
        warnings=tuple(deid.warnings),
    )


def run_deid(
    view: CompiledView,
    resources: Iterable[Mapping[str, Any]],
    policy: DeidPolicy,
    key: DeidKey,
    out: Path,
    fmt: DeidFormat = DeidFormat.csv,
    *,
    k: int | None = None,
    suppress: bool = False,
    today: date | None = None,
) -> DeidReport:
    """De-identify the view's rows into ``out``. Raises :class:`KAnonymityError` (and writes
    nothing) when a class is below k, unless ``suppress``: then its rows are left out."""

    def sink(output_view: CompiledView, rows: Iterator[Row]) -> int:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed: a failed run leaves no partial extract.
        partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
        try:
            n = write_rows(output_view, rows, fmt.output_format, partial)
            partial.replace(out)
            return n
        finally:
            partial.unlink(missing_ok=True)

    return _extract(view, resources, policy, key, k, suppress, today, sink)


def deidentify(
    view: CompiledView,
    resources: Iterable[Mapping[str, Any]],
    policy: DeidPolicy,
    key: DeidKey,
    *,
    k: int | None = None,
    suppress: bool = False,
    today: date | None = None,
) -> tuple[list[dict[str, Any]], DeidReport]:
    """The de-identified rows as dicts (in memory: for small extracts and tests)."""
    collected: list[dict[str, Any]] = []

    def sink(output_view: CompiledView, rows: Iterator[Row]) -> int:
        names = output_view.column_names
        collected.extend(dict(zip(names, r, strict=True)) for r in rows)
        return len(collected)

    report = _extract(view, resources, policy, key, k, suppress, today, sink)
    return collected, report


# -- the command ------------------------------------------------------------------------------

deid_app = typer.Typer(
    help="De-identified extracts of SQL on FHIR views: pseudonyms, shifted dates, generalised "
    "age and place, k-anonymity.",
    no_args_is_help=True,
)

_SUFFIX_FORMATS = {
    ".csv": DeidFormat.csv,
    ".ndjson": DeidFormat.ndjson,
    ".jsonl": DeidFormat.ndjson,
    ".parquet": DeidFormat.parquet,
}

REFUSED = 3  # the exit status of an extract refused for k-anonymity


@deid_app.callback()
def _deid() -> None:
    """De-identified extracts of SQL on FHIR views."""
    # A callback keeps ``run`` a sub-command, as ``takamul deid run``.


def _fail(console: Console, message: str, status: int = 2) -> typer.Exit:
    console.print(f"[red]deid: {message}[/]", highlight=False)
    return typer.Exit(status)


@deid_app.command("run")
def run_command(
    view: Annotated[Path, typer.Argument(help="ViewDefinition JSON file", show_default=False)],
    policy: Annotated[
        Path,
        typer.Option("--policy", "-p", help="De-identification policy (JSON or TOML)"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file", show_default=False)],
    inputs: InputsOption = None,
    db: SourceDbOption = None,
    k: Annotated[
        int | None,
        typer.Option("--k", help="Smallest class size allowed (default: the policy's, else 5)"),
    ] = None,
    suppress: Annotated[
        bool,
        typer.Option(
            "--suppress", help="Leave out the rows of classes below k instead of refusing"
        ),
    ] = False,
    fmt: Annotated[
        DeidFormat | None,
        typer.Option("--format", "-f", help="csv, ndjson or parquet (default: from --out)"),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help=f"File holding the key (default: ${DEID_KEY_FILE_ENV}, else ${DEID_KEY_ENV})",
            show_default=False,
        ),
    ] = None,
) -> None:
    """De-identify the rows of VIEW over the input resources into OUT."""
    console = Console(stderr=True, soft_wrap=True)
    if bool(inputs) == bool(db):
        raise _fail(console, "give the resources with --input FILE_OR_DIR or --db DATABASE_URL")
    chosen = fmt or _SUFFIX_FORMATS.get(out.suffix.lower(), DeidFormat.csv)
    try:
        key = load_key(key_file)
        rules = DeidPolicy.load(policy)
        compiled = compile_view(load_view(view))
    except DeidError as err:
        raise _fail(console, str(err)) from err
    except ViewError as err:
        raise _fail(console, f"invalid view {view}: {err}") from err
    started = time.perf_counter()
    try:
        if inputs:
            resources = iter_ndjson(inputs, compiled.resource_type)
        else:
            assert db is not None
            resources = iter_database(db, compiled.resource_type)
        report = run_deid(compiled, resources, rules, key, out, chosen, k=k, suppress=suppress)
    except KAnonymityError as err:
        console.print(
            f"[bold red]deid: extract refused[/], nothing written: {err}", highlight=False
        )
        raise typer.Exit(REFUSED) from err
    except DeidError as err:
        raise _fail(console, str(err)) from err
    except SourceError as err:
        raise _fail(console, str(err)) from err
    except ViewError as err:
        raise _fail(console, f"{view}: {err}") from err
    except OSError as err:
        raise _fail(console, f"cannot write {err.filename or out}: {err.strerror or err}") from err
    for warning in report.warnings:
        console.print(f"[yellow]deid: warning: {warning}[/]", highlight=False)
    seconds = time.perf_counter() - started
    kanon = report.k_anonymity
    console.print(
        f"deid: {report.rows_out:,} rows from {report.resources:,} resources to {out} "
        f"in {seconds:.1f} s; k={kanon.k} over ({', '.join(kanon.quasi_identifiers)}): "
        f"smallest class written {report.min_class_size} {kanon.unit}; "
        f"{report.suppressed_rows:,} rows suppressed ({len(kanon.small_classes):,} of "
        f"{kanon.classes:,} classes); ages at {report.age_reference}; "
        f"key id {report.key_id}",
        highlight=False,
    )


@deid_app.command("keygen")
def keygen_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Key file to create (mode 0600)")],
) -> None:
    """Create a new random key file (never overwrites one)."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        # O_EXCL: an existing key is never replaced (its pseudonyms would be lost for good).
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise _fail(console, f"{out} exists; a key file is never overwritten") from err
    except OSError as err:
        raise _fail(console, f"cannot create {out}: {err.strerror or err}") from err
    with os.fdopen(fd, "w") as f:
        f.write(new_key_text() + "\n")
    key = load_key(out)
    console.print(f"deid: new key in {out} (key id {key.key_id}); keep it secret", highlight=False)
