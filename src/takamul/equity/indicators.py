"""Population indicators by every equity dimension, with 95% confidence intervals.

An indicator is data (``data/indicators/*.json``): a numerator and a denominator as SQL over the
tables of SQL on FHIR views (``data/views/*.json``), a period, a scale, favourable or adverse.
This module materialises the views (from NDJSON files or the shared record's database) into
DuckDB, or into Spark temporary views, builds one row per person, and computes every indicator
for the whole population, for each subgroup of each equity dimension and for each pair of
dimensions (intersections), in two SQL aggregations:

1. per indicator, the counts (and sums, for means) per cell of *all* selected dimensions at once
   (a million people collapse to a few tens of thousands of cells);
2. ``GROUPING SETS`` over those cells: the whole population, each dimension, each pair.

The estimates, confidence intervals and suppression of small cells are then computed on the
aggregated rows (vectorised). The same SQL runs on DuckDB and on Spark SQL (written in the
subset both accept; ``days_between`` is defined in each engine, see ``_DUCKDB_MACROS`` and
``_SPARK_FUNCTIONS``).

Confidence intervals:

* proportions: the Wilson score interval (Wilson EB, "Probable inference, the law of succession,
  and statistical inference", J Am Stat Assoc 1927;22:209-212), which keeps its coverage near
  0 and 100% and for small denominators, where the Wald interval does not (Brown, Cai &
  DasGupta, Stat Sci 2001;16:101-133). The standard error reported (and given to HEAT) is the
  binomial sqrt(p(1-p)/n);
* means (e.g. travel distance): mean ± t(1-α/2, n-1) · s/sqrt(n), Student's t interval; with the
  cell sizes left after suppression (n >= 10) and distances' moderate skew, the central limit
  theorem makes it adequate. t quantiles come from the Cornish-Fisher expansion of Abramowitz &
  Stegun 26.7.5 (exact formulas for 1 and 2 degrees of freedom).

Small cells: a cell whose denominator is below ``min_cell`` (10 by default) is suppressed: no
population, numerator, estimate or interval is published. So that a suppressed cell cannot be
recovered by subtracting its published siblings from their published total (nor a suppressed
total by adding up its published parts), each total together with the cells that add up to it
(the subgroups of one dimension, all cells of a pair, the row or column of a pair) that has
exactly one suppressed member also loses its smallest published part (secondary suppression).
Suppression is deterministic: it depends on the cells' keys and denominators only, never on the
order the engine returns them in (see :func:`suppress`).
"""

from __future__ import annotations

import csv
import json
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import combinations
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from takamul.registry.dates import HIJRI_YEARS, JALALI_YEARS, native_calendar_date
from takamul.views.evaluate import CompiledView, compile_view
from takamul.views.viewdef import ViewError

__all__ = [
    "DATA_DIR",
    "DEFAULT_MIN_CELL",
    "NATIVE_CALENDARS",
    "AgeGroup",
    "DefinitionError",
    "Definitions",
    "Dimension",
    "Estimate",
    "Indicator",
    "IndicatorError",
    "IndicatorResults",
    "OutreachSpec",
    "Period",
    "Population",
    "check_sql",
    "compute",
    "compute_spark",
    "default_period_end",
    "heat_rows",
    "insert_links",
    "load_definitions",
    "load_links",
    "margins",
    "materialize_views",
    "mean_interval",
    "prepare",
    "prepare_spark",
    "suppress",
    "t_quantile",
    "wilson_interval",
    "write_csv",
    "write_heat",
    "write_json",
]

DATA_DIR = Path(__file__).parent / "data"
VIEWS_DIR = DATA_DIR / "views"
INDICATORS_DIR = DATA_DIR / "indicators"
DEFAULT_MIN_CELL = 10
UNKNOWN = "unknown"
# Raw view tables are src_<view>; the tables indicators read are <view> with a person_key added.
SRC_PREFIX = "src_"
EARLIEST = date(1, 1, 1)
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_KINDS = ("proportion", "mean")
FloatArray = npt.NDArray[np.float64]
# Ages above this are keying errors (a Hijri year keyed as a Gregorian one), not ages.
_MAX_AGE = 125
# The calendar other than the Gregorian that a birth date may be keyed in, by the country of the
# record's address (ISO 3166 alpha-2 or alpha-3): births in Saudi Arabia are registered in the
# Umm al-Qura Hijri calendar, in Iran in the Solar Hijri (Jalali) one.
NATIVE_CALENDARS: Mapping[str, str] = {
    "SA": "hijri",
    "SAU": "hijri",
    "IR": "jalali",
    "IRN": "jalali",
}
# A cell: (dimension, subgroup, dimension2, subgroup2); the national row is all None.
CellKey = tuple[str | None, str | None, str | None, str | None]
NATIONAL: CellKey = (None, None, None, None)


# -- errors ----------------------------------------------------------------------------------


class IndicatorError(Exception):
    """Input that cannot be used: missing files, a failing view, an unknown indicator."""


class DefinitionError(IndicatorError):
    """A bad indicator, dimension or view definition; names the file and the field."""

    def __init__(self, source: str | Path, field: str, message: str) -> None:
        self.source = str(source)
        self.field = field
        self.message = message
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {message}")


# -- definitions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgeGroup:
    label: str
    min: int
    max: int | None  # None: open-ended (e.g. 70+)


@dataclass(frozen=True, slots=True)
class Dimension:
    """A dimension of inequality: a SQL expression over the person table, text-valued."""

    id: str
    name: str
    expr: str
    ordered: bool
    order: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    reference: str | None = None

    @property
    def column(self) -> str:
        return f"d_{self.id}"

    def label(self, value: str) -> str:
        return self.labels.get(value, value)


@dataclass(frozen=True, slots=True)
class OutreachSpec:
    """How an indicator's gap becomes a worklist (see :mod:`takamul.equity.outreach`)."""

    action: str
    code: Mapping[str, str] | None
    need: str | None  # SQL: person_key, need (higher = more need)
    need_description: str
    urgent_need: float | None


@dataclass(frozen=True, slots=True)
class Indicator:
    id: str
    abbr: str
    name: str
    description: str
    kind: str  # proportion | mean
    scale: float
    unit: str
    favourable: bool
    lookback_months: int | None
    denominator: str | None
    numerator: str | None
    value: str | None
    codes: tuple[Mapping[str, str], ...]
    outreach: OutreachSpec | None
    source: str
    index: int
    fragments: Mapping[str, str] = field(default_factory=dict, repr=False)

    def where(self, name: str) -> str:
        """The field named in errors, e.g. ``indicators[3] (dm_screen).numerator``."""
        return f"indicators[{self.index}] ({self.id}).{name}"

    def period(self, end: date) -> Period:
        if self.lookback_months is None:
            return Period(EARLIEST, end)
        return Period(_add_months(end, -self.lookback_months) + timedelta(days=1), end)

    def sql(self, name: str, period: Period) -> str:
        """A SQL field with its fragments and period placeholders filled in."""
        field_name = "outreach.need" if name == "need" else name
        text = getattr(self, name) if name != "need" else (self.outreach and self.outreach.need)
        if not text:
            raise DefinitionError(self.source, self.where(field_name), "no SQL given")
        return render_sql(text, self.fragments, period, self.source, self.where(field_name))


@dataclass(frozen=True, slots=True)
class Definitions:
    indicators: tuple[Indicator, ...]
    dimensions: tuple[Dimension, ...]
    age_groups: tuple[AgeGroup, ...]
    primary_care_sql: str
    views: tuple[CompiledView, ...]
    dimensions_source: str = ""

    def indicator(self, indicator_id: str) -> Indicator:
        for ind in self.indicators:
            if ind.id == indicator_id or ind.abbr == indicator_id:
                return ind
        known = ", ".join(i.id for i in self.indicators)
        raise IndicatorError(f"unknown indicator {indicator_id!r}; known: {known}")

    def dimension(self, dimension_id: str) -> Dimension:
        for dim in self.dimensions:
            if dim.id == dimension_id:
                return dim
        known = ", ".join(d.id for d in self.dimensions)
        raise IndicatorError(f"unknown dimension {dimension_id!r}; known: {known}")


@dataclass(frozen=True, slots=True)
class Period:
    start: date
    end: date

    def sql_start(self) -> str:
        return f"'{self.start.isoformat()}'"

    def sql_end(self) -> str:
        return f"'{self.end.isoformat()}'"


def _add_months(day: date, months: int) -> date:
    """``day`` moved by whole months, clamped to a shorter month's end (31 Mar - 1 = 28 Feb)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    for last in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def render_sql(
    text: str, fragments: Mapping[str, str], period: Period, source: str, where: str
) -> str:
    """Fill ``$fragment`` names (recursively) and ``$period_start`` / ``$period_end``."""
    values = {"period_start": period.sql_start(), "period_end": period.sql_end()}
    seen: list[str] = []

    def expand(sql: str, depth: int) -> str:
        if depth > 10:
            raise DefinitionError(source, where, f"fragments nest too deeply: {' -> '.join(seen)}")
        template = string.Template(sql)
        names = {m.group("named") or m.group("braced") for m in template.pattern.finditer(sql)}
        names.discard(None)
        mapping: dict[str, str] = {}
        for name in names:
            if name in values:
                mapping[name] = values[name]
            elif name in fragments:
                seen.append(name)
                mapping[name] = expand(fragments[name], depth + 1)
                seen.pop()
            else:
                known = ", ".join(sorted([*values, *fragments]))
                raise DefinitionError(
                    source, where, f"unknown placeholder ${name} (known: {known})"
                )
        try:
            return template.substitute(mapping)
        except ValueError as err:  # a lone "$" not followed by a name
            raise DefinitionError(source, where, f"bad placeholder: {err}") from err

    return expand(text, 0)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DefinitionError(path, "", "no such file") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DefinitionError(path, "", f"not valid JSON: {err}") from err


class _Fields:
    """Typed access to a JSON object's fields, errors naming the file and the field."""

    def __init__(self, source: str, where: str, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise DefinitionError(source, where, "must be a JSON object")
        self.source, self.where, self.raw = source, where, raw

    def fail(self, name: str, message: str) -> DefinitionError:
        return DefinitionError(self.source, f"{self.where}.{name}" if self.where else name, message)

    def text(self, name: str, default: str | None = None, required: bool = True) -> str:
        value = self.raw.get(name, default)
        if value is None:
            if required:
                raise self.fail(name, "required")
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise self.fail(name, f"must be a non-empty string, got {value!r}")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, name: str, default: bool | None = None) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def number(self, name: str, default: float | None = None) -> float:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {value!r}")
        return float(value)


def _parse_indicator(raw: Any, index: int, source: str, fragments: Mapping[str, str]) -> Indicator:
    f = _Fields(source, f"indicators[{index}]", raw)
    ind_id = f.text("id")
    if not _ID_RE.match(ind_id):
        raise f.fail("id", f"must be lower-case letters, digits and _, got {ind_id!r}")
    f.where = f"indicators[{index}] ({ind_id})"
    kind = f.text("kind", "proportion")
    if kind not in _KINDS:
        raise f.fail("kind", f"must be one of {', '.join(_KINDS)}, got {kind!r}")
    scale = f.number("scale", 100.0 if kind == "proportion" else 1.0)
    if scale <= 0:
        raise f.fail("scale", f"must be positive, got {scale:g}")
    period = raw.get("period", {"lookback_months": None})
    if not isinstance(period, dict) or "lookback_months" not in period:
        raise f.fail("period", 'must be an object such as {"lookback_months": 12} (null: all time)')
    lookback = period["lookback_months"]
    if lookback is not None and (
        isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 1
    ):
        raise f.fail(
            "period.lookback_months", f"must be a whole number >= 1 or null, got {lookback!r}"
        )
    denominator = f.optional_text("denominator")
    numerator = f.optional_text("numerator")
    value = f.optional_text("value")
    if kind == "proportion":
        if denominator is None:
            raise f.fail("denominator", "required for a proportion")
        if numerator is None:
            raise f.fail("numerator", "required for a proportion")
        if value is not None:
            raise f.fail("value", "only a mean has a value")
    else:
        if value is None:
            raise f.fail("value", "required for a mean (SQL giving person_key, value)")
        if numerator is not None:
            raise f.fail("numerator", "a mean has a value, not a numerator")
    codes = raw.get("codes", [])
    if not isinstance(codes, list) or not all(
        isinstance(c, dict) and isinstance(c.get("code"), str) and isinstance(c.get("system"), str)
        for c in codes
    ):
        raise f.fail("codes", "must be a list of objects with system and code")
    outreach = _parse_outreach(raw.get("outreach"), source, f"{f.where}.outreach")
    return Indicator(
        id=ind_id,
        abbr=f.text("abbr", ind_id),
        name=f.text("name"),
        description=f.text("description", "", required=False),
        kind=kind,
        scale=scale,
        unit=f.text("unit", "%" if kind == "proportion" else "", required=False),
        favourable=f.boolean("favourable"),
        lookback_months=lookback,
        denominator=denominator,
        numerator=numerator,
        value=value,
        codes=tuple(codes),
        outreach=outreach,
        source=source,
        index=index,
        fragments=fragments,
    )


def _parse_outreach(raw: Any, source: str, where: str) -> OutreachSpec | None:
    if raw is None:
        return None
    f = _Fields(source, where, raw)
    code = raw.get("code")
    if code is not None and not (
        isinstance(code, dict)
        and isinstance(code.get("system"), str)
        and isinstance(code.get("code"), str)
    ):
        raise f.fail("code", "must be a Coding: an object with system and code")
    urgent = raw.get("urgent_need")
    if urgent is not None and (isinstance(urgent, bool) or not isinstance(urgent, int | float)):
        raise f.fail("urgent_need", f"must be a number, got {urgent!r}")
    return OutreachSpec(
        action=f.text("action"),
        code=code,
        need=f.optional_text("need"),
        need_description=f.text("need_description", "", required=False),
        urgent_need=None if urgent is None else float(urgent),
    )


def _parse_dimensions(
    raw: Any, source: str
) -> tuple[tuple[Dimension, ...], tuple[AgeGroup, ...], str]:
    f = _Fields(source, "", raw)
    groups_raw = raw.get("age_groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise f.fail("age_groups", "must be a non-empty list")
    groups: list[AgeGroup] = []
    for i, g in enumerate(groups_raw):
        gf = _Fields(source, f"age_groups[{i}]", g)
        lo = gf.number("min")
        hi = g.get("max")
        if lo != int(lo) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
            raise gf.fail(
                "max" if hi is not None else "min", "ages must be whole numbers, min <= max"
            )
        if groups and (groups[-1].max is None or int(lo) != groups[-1].max + 1):
            raise gf.fail("min", "age groups must follow each other without gaps or overlaps")
        groups.append(AgeGroup(gf.text("label"), int(lo), hi))
    dims_raw = raw.get("dimensions")
    if not isinstance(dims_raw, list) or not dims_raw:
        raise f.fail("dimensions", "must be a non-empty list")
    dims: list[Dimension] = []
    for i, d in enumerate(dims_raw):
        df = _Fields(source, f"dimensions[{i}]", d)
        dim_id = df.text("id")
        if not _ID_RE.match(dim_id):
            raise df.fail("id", f"must be lower-case letters, digits and _, got {dim_id!r}")
        if any(x.id == dim_id for x in dims):
            raise df.fail("id", f"dimension {dim_id!r} is defined twice")
        ordered = df.boolean("ordered", False)
        order_raw = d.get("order")
        if d.get("order_from") == "age_groups":
            order: tuple[str, ...] = tuple(g.label for g in groups)
        elif order_raw is None:
            order = ()
        elif isinstance(order_raw, list) and all(isinstance(v, str) for v in order_raw):
            order = tuple(order_raw)
        else:
            raise df.fail("order", "must be a list of subgroup values (text)")
        if ordered and not order:
            raise df.fail("order", "an ordered dimension needs its subgroups in order")
        labels = d.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise df.fail("labels", "must map subgroup values to text")
        dims.append(
            Dimension(
                id=dim_id,
                name=df.text("name"),
                expr=df.text("expr", dim_id),
                ordered=ordered,
                order=order,
                labels=dict(labels),
                reference=df.optional_text("reference"),
            )
        )
    pc_sql = f.text("primary_care_locations")
    return tuple(dims), tuple(groups), pc_sql


def load_definitions(
    paths: Sequence[Path] | None = None, views_dir: Path | None = None
) -> Definitions:
    """Indicators, dimensions and views. ``paths``: indicator files or folders (default: the
    standard set); a file with ``dimensions`` replaces the standard dimensions."""
    files: list[Path] = []
    for p in paths or [INDICATORS_DIR]:
        if p.is_dir():
            files.extend(sorted(p.glob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise DefinitionError(p, "", "no such file or folder")
    indicators: list[Indicator] = []
    dims_file: Path | None = None
    for path in files:
        raw = _read_json(path)
        if not isinstance(raw, dict):
            raise DefinitionError(path, "", "must be a JSON object")
        if "dimensions" in raw:
            if dims_file is not None:
                raise DefinitionError(
                    path, "dimensions", f"dimensions are also defined in {dims_file}"
                )
            dims_file = path
        if "indicators" in raw:
            fragments = raw.get("fragments", {})
            if not isinstance(fragments, dict) or not all(
                isinstance(v, str) for v in fragments.values()
            ):
                raise DefinitionError(path, "fragments", "must map names to SQL text")
            items = raw["indicators"]
            if not isinstance(items, list):
                raise DefinitionError(path, "indicators", "must be a list")
            for i, item in enumerate(items):
                ind = _parse_indicator(item, i, str(path), fragments)
                if any(x.id == ind.id for x in indicators):
                    raise DefinitionError(
                        path, ind.where("id"), f"indicator {ind.id!r} is defined twice"
                    )
                indicators.append(ind)
        elif "dimensions" not in raw:
            raise DefinitionError(path, "", "has neither 'indicators' nor 'dimensions'")
    if dims_file is None:
        dims_file = INDICATORS_DIR / "dimensions.json"
    dimensions, age_groups, pc_sql = _parse_dimensions(_read_json(dims_file), str(dims_file))
    if not indicators:
        raise DefinitionError(
            ", ".join(str(f) for f in files), "indicators", "no indicator defined"
        )
    return Definitions(
        indicators=tuple(indicators),
        dimensions=dimensions,
        age_groups=age_groups,
        primary_care_sql=pc_sql,
        views=load_views(views_dir or VIEWS_DIR),
        dimensions_source=str(dims_file),
    )


def load_views(folder: Path) -> tuple[CompiledView, ...]:
    views: list[CompiledView] = []
    for path in sorted(folder.glob("*.json")):
        try:
            view = compile_view(path)
        except ViewError as err:
            raise DefinitionError(path, "", f"invalid view: {err}") from err
        views.append(view)
    names = {v.view.table_name for v in views}
    for needed in ("patient", "person_link", "location"):
        if needed not in names:
            raise DefinitionError(folder, "", f"a view named {needed!r} is required")
    return tuple(views)


# -- statistics ------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(
    x: npt.ArrayLike, n: npt.ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Wilson (1927) score interval of a binomial proportion x/n, on the 0-1 scale.

    centre = (p + z²/2n) / (1 + z²/n), half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    """
    xs = np.asarray(x, dtype=np.float64)
    ns = np.asarray(n, dtype=np.float64)
    z = _z(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = xs / ns
        denom = 1.0 + z * z / ns
        centre = (p + z * z / (2.0 * ns)) / denom
        half = z * np.sqrt(p * (1.0 - p) / ns + z * z / (4.0 * ns * ns)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom.

    Exact for df 1 and 2; otherwise the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5)
    about the normal quantile, to the 1/df⁴ term: relative error below 2e-3 at df 3, 1e-5 at
    df 9, and it vanishes as df grows.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    x = NormalDist().inv_cdf(p)
    x2 = x * x
    g1 = (x2 + 1.0) * x / 4.0
    g2 = ((5.0 * x2 + 16.0) * x2 + 3.0) * x / 96.0
    g3 = (((3.0 * x2 + 19.0) * x2 + 17.0) * x2 - 15.0) * x / 384.0
    g4 = ((((79.0 * x2 + 776.0) * x2 + 1482.0) * x2 - 1920.0) * x2 - 945.0) * x / 92160.0
    return x + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_interval(
    n: npt.ArrayLike, s1: npt.ArrayLike, s2: npt.ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Mean, sample SD, standard error and t interval from n, Σv and Σv² (per cell)."""
    ns = np.asarray(n, dtype=np.float64)
    sum1 = np.asarray(s1, dtype=np.float64)
    sum2 = np.asarray(s2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sum1 / ns
        # Σ(v - mean)² = Σv² - (Σv)²/n; rounding can make it a hair negative.
        var = np.maximum(sum2 - sum1 * sum1 / ns, 0.0) / (ns - 1.0)
        sd = np.sqrt(var)
        se = sd / np.sqrt(ns)
    q = 0.5 + confidence / 2.0
    t = np.array([t_quantile(q, k - 1.0) if k >= 2 else math.nan for k in ns.ravel()])
    t = t.reshape(ns.shape)
    lb = np.where(ns >= 2, mean - t * se, np.nan)
    ub = np.where(ns >= 2, mean + t * se, np.nan)
    sd = np.where(ns >= 2, sd, np.nan)
    se = np.where(ns >= 2, se, np.nan)
    return mean, sd, se, lb, ub


# -- engines ---------------------------------------------------------------------------------


class Backend(Protocol):
    """The SQL engine: DuckDB (embedded) or Spark SQL; tables are created from SELECTs."""

    name: str

    def create(self, table: str, sql: str, keep: bool = True) -> None: ...

    def query(self, sql: str) -> list[tuple[Any, ...]]: ...

    def columns(self, sql: str) -> list[str]: ...

    def nearest(self, people_sql: str, facilities_sql: str, table: str) -> None: ...

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A table of text columns holding ``rows`` computed in Python."""
        ...


# days_between(a, b): whole days from the date of a to the date of b (FHIR date/dateTime text).
_DUCKDB_MACROS = (
    "CREATE OR REPLACE MACRO days_between(a, b) AS date_diff('day', "
    "try_cast(substr(a, 1, 10) AS DATE), try_cast(substr(b, 1, 10) AS DATE))",
)
_SPARK_FUNCTIONS = (
    "CREATE OR REPLACE TEMPORARY FUNCTION days_between(a STRING, b STRING) RETURNS INT RETURN "
    "datediff(try_cast(substr(b, 1, 10) AS DATE), try_cast(substr(a, 1, 10) AS DATE))",
)

# Great-circle distance on the sphere of takamul.equity.geo (mean Earth radius, IUGG) from unit
# vectors: d = 2R asin(|p - q| / 2); the minimum chord gives the nearest facility.
_EARTH_RADIUS_KM = 6371.0088


def _unit_vector_sql(alias: str) -> str:
    lat, lon = f"radians({alias}.latitude)", f"radians({alias}.longitude)"
    return f"cos({lat}) * cos({lon}) AS ux, cos({lat}) * sin({lon}) AS uy, sin({lat}) AS uz"


class DuckBackend:
    name = "duckdb"

    def __init__(self, con: Any) -> None:
        self.con = con
        for sql in _DUCKDB_MACROS:
            con.execute(sql)

    def create(self, table: str, sql: str, keep: bool = True) -> None:
        # keep=False: a view, for a table that is only its source renamed (no join to save).
        kind = "TABLE" if keep else "VIEW"
        found = self.con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = ? "
            "AND table_schema = current_schema()",
            [table],
        ).fetchone()
        if found and (found[0] == "VIEW") == keep:  # the other kind: CREATE OR REPLACE refuses
            self.con.execute(f"DROP {'VIEW' if keep else 'TABLE'} {table}")
        self.con.execute(f"CREATE OR REPLACE {kind} {table} AS {sql}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        arrays = {c: np.array([r[i] for r in rows], dtype=object) for i, c in enumerate(columns)}
        self.con.register("_rows_arrays", arrays)
        try:
            cast = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in columns)
            self.create(name, f"SELECT {cast} FROM _rows_arrays")
        finally:
            self.con.unregister("_rows_arrays")

    def columns(self, sql: str) -> list[str]:
        return [d[0] for d in self.con.execute(f"SELECT * FROM ({sql}) q LIMIT 0").description]

    def nearest(self, people_sql: str, facilities_sql: str, table: str) -> None:
        """Nearest facility per person with numpy blocks (takamul.equity.geo): a SQL cross join
        of a million people with hundreds of facilities takes DuckDB ~20 s, numpy ~2 s."""
        from takamul.equity.geo import DEFAULT_BLOCK_ELEMENTS, GreatCircle, row_blocks

        people = self.con.execute(people_sql).fetchnumpy()
        facilities = self.con.execute(facilities_sql).fetchnumpy()
        n = len(people["person_key"])
        keys = np.asarray(facilities["location_key"], dtype=object)
        km = np.full(n, np.nan)
        nearest = np.empty(n, dtype=object)
        if n and len(keys):
            gc = GreatCircle(
                people["latitude"],
                people["longitude"],
                facilities["latitude"],
                facilities["longitude"],
            )
            for start, stop in row_blocks(n, len(keys), DEFAULT_BLOCK_ELEMENTS):
                chord2 = gc.chord2_block(start, stop)
                best = np.argmin(chord2, axis=1)
                c2 = chord2[np.arange(stop - start), best]
                km[start:stop] = (
                    2.0 * _EARTH_RADIUS_KM * np.arcsin(np.minimum(np.sqrt(c2) / 2.0, 1.0))
                )
                nearest[start:stop] = keys[best]
        data = {
            "person_key": np.asarray(people["person_key"], dtype=object),
            "nearest_pc_key": nearest,
            "nearest_pc_km": km,
        }
        self.con.register("_nearest_arrays", data)
        try:
            self.create(
                table,
                "SELECT CAST(person_key AS VARCHAR) AS person_key, "
                "CAST(nearest_pc_key AS VARCHAR) AS nearest_pc_key, "
                "CAST(nearest_pc_km AS DOUBLE) AS nearest_pc_km FROM _nearest_arrays "
                "WHERE nearest_pc_key IS NOT NULL",
            )
        finally:
            self.con.unregister("_nearest_arrays")


class SparkBackend:
    name = "spark"

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        for sql in _SPARK_FUNCTIONS:
            spark.sql(sql)

    def create(self, table: str, sql: str, keep: bool = True) -> None:
        df = self.spark.sql(sql)
        if keep:
            # Cached and materialised now, as DuckDB's CREATE TABLE: each such table is read by
            # several indicators, and the cached size lets the planner broadcast small tables
            # instead of shuffling both sides of every join. keep=False leaves a lazy view (the
            # person-keyed event tables: a join of a cached table, not worth a job of its own).
            df = df.cache()
            df.count()
        df.createOrReplaceTempView(table)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.spark.sql(sql).collect()]

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        from pyspark.sql.types import StringType, StructField, StructType

        schema = StructType([StructField(c, StringType()) for c in columns])
        df = self.spark.createDataFrame([tuple(r) for r in rows], schema=schema).cache()
        df.count()
        df.createOrReplaceTempView(name)

    def columns(self, sql: str) -> list[str]:
        return list(self.spark.sql(sql).columns)  # analysed, not run

    def nearest(self, people_sql: str, facilities_sql: str, table: str) -> None:
        chord2 = " + ".join(f"(p.{c} - f.{c}) * (p.{c} - f.{c})" for c in ("ux", "uy", "uz"))
        self.create(
            table,
            f"SELECT person_key, nearest_pc_key, "
            f"2.0 * {_EARTH_RADIUS_KM} * asin(least(sqrt(greatest(c2, 0.0)) / 2.0, 1.0)) "
            f"AS nearest_pc_km FROM (SELECT p.person_key, min_by(f.location_key, {chord2}) AS "
            f"nearest_pc_key, min({chord2}) AS c2 FROM (SELECT person_key, {_unit_vector_sql('a')} "
            f"FROM ({people_sql}) a) p CROSS JOIN (SELECT location_key, {_unit_vector_sql('b')} "
            f"FROM ({facilities_sql}) b) f GROUP BY p.person_key) n",
        )


# -- materialising the views -----------------------------------------------------------------


def load_links(path: Path) -> list[tuple[str, str]]:
    """(Patient key, person key) pairs from a linkage CSV whose first two columns are the
    patient id and the person (``truth/links.csv``, ``takamul mpi link`` output)."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as err:
        raise IndicatorError(f"{path}: cannot read the links file: {err}") from err
    out: list[tuple[str, str]] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise IndicatorError(
                f"{path}: a links CSV needs a header and two columns (patient_id, person)"
            )
        for line, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise IndicatorError(f"{path}:{line}: expected patient_id,person")
            patient = row[0].strip()
            out.append(
                (
                    patient if patient.startswith("Patient/") else f"Patient/{patient}",
                    f"Person/{row[1].strip()}",
                )
            )
    return out


def _views_in_order(
    views: Sequence[CompiledView], inputs: Sequence[Path] | None
) -> list[CompiledView]:
    """Largest input first, so parallel workers finish together."""
    if not inputs:
        return list(views)
    from takamul.views.source import SourceError, total_bytes

    def size(v: CompiledView) -> int:
        try:
            return total_bytes(list(inputs), v.resource_type)
        except SourceError:
            return 0

    return sorted(views, key=size, reverse=True)


def _materialize_to_parquet(
    view_path: str, inputs: list[str] | None, db_url: str | None, out: str
) -> int:
    """Worker process: one view to a Parquet file (top level so ProcessPoolExecutor can send it)."""
    from takamul.views.output import OutputFormat, write_rows
    from takamul.views.source import iter_database, iter_ndjson

    view = compile_view(Path(view_path))
    if db_url is not None:
        resources = iter_database(db_url, view.resource_type)
    else:
        resources = iter_ndjson([Path(p) for p in inputs or []], view.resource_type)
    return write_rows(view, view.run(resources), OutputFormat.parquet, Path(out))


def materialize_views(
    con: Any,
    definitions: Definitions,
    inputs: Sequence[Path] | None = None,
    db_url: str | None = None,
    links: Sequence[tuple[str, str]] | None = None,
    workers: int = 1,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Evaluate every view over the input into DuckDB tables ``src_<view>``; rows per view.

    ``inputs``: NDJSON files or folders; ``db_url``: the shared record's database instead.
    ``links``: extra (patient, person) pairs, e.g. from :func:`load_links`, added to the
    client registry's golden-record links. ``workers`` > 1 evaluates views in parallel
    processes (each writes Parquet that DuckDB then reads). ``progress(view, rows)`` is called
    as each view is done.
    """
    from takamul.views.output import materialize
    from takamul.views.source import SourceError, iter_database, iter_ndjson

    if (inputs is None) == (db_url is None):
        raise IndicatorError("give NDJSON inputs or a database URL (not both)")
    views = _views_in_order(definitions.views, inputs)
    counts: dict[str, int] = {}
    try:
        if workers > 1:
            _materialize_parallel(con, views, inputs, db_url, workers, counts, progress)
        else:
            for view in views:
                resources: Iterable[dict[str, Any]]
                if db_url is not None:
                    resources = iter_database(db_url, view.resource_type)
                else:
                    resources = _ndjson_or_nothing(
                        list(inputs or []), view.resource_type, iter_ndjson
                    )
                name = SRC_PREFIX + view.view.table_name
                counts[name] = materialize(view, view.run(resources), con, name)
                if progress is not None:
                    progress(view.view.table_name, counts[name])
    except (SourceError, ViewError) as err:
        raise IndicatorError(str(err)) from err
    if links:
        insert_links(con, links)
        counts[f"{SRC_PREFIX}person_link"] = counts.get(f"{SRC_PREFIX}person_link", 0) + len(links)
    return counts


def insert_links(con: Any, links: Sequence[tuple[str, str]]) -> None:
    """Add (patient, person) pairs to DuckDB's ``src_person_link`` in one statement (row by row,
    a million links take minutes)."""
    arrays = {
        "patient_key": np.array([patient for patient, _ in links], dtype=object),
        "person_key": np.array([person for _, person in links], dtype=object),
    }
    con.register("_links_arrays", arrays)
    try:
        con.execute(
            f"INSERT INTO {SRC_PREFIX}person_link (person_key, patient_key) "
            "SELECT CAST(person_key AS VARCHAR), CAST(patient_key AS VARCHAR) FROM _links_arrays"
        )
    finally:
        con.unregister("_links_arrays")


def _ndjson_or_nothing(
    inputs: list[Path], resource_type: str, reader: Callable[..., Iterable[dict[str, Any]]]
) -> Iterable[dict[str, Any]]:
    """NDJSON resources of a view; nothing when a folder has no file for that type (a synthetic
    export has no Person file: without the registry, each Patient record is a person)."""
    from takamul.views.source import discover

    if not discover(inputs, resource_type):
        return iter(())
    return reader(inputs, resource_type)


def _materialize_parallel(
    con: Any,
    views: Sequence[CompiledView],
    inputs: Sequence[Path] | None,
    db_url: str | None,
    workers: int,
    counts: dict[str, int],
    progress: Callable[[str, int], None] | None,
) -> None:
    import multiprocessing
    import shutil
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    from takamul.views.source import discover

    workdir = Path(tempfile.mkdtemp(prefix="takamul-indicators-"))
    try:
        paths = {v.view.table_name: _view_path(v, workdir) for v in views}
        # spawn: a forked child would share the parent's DuckDB connection.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {}
            for view in views:
                name = view.view.table_name
                if inputs is not None and not discover(list(inputs), view.resource_type):
                    from takamul.views.output import materialize

                    counts[SRC_PREFIX + name] = materialize(view, iter(()), con, SRC_PREFIX + name)
                    continue
                out = workdir / f"{name}.parquet"
                futures[name] = (
                    pool.submit(
                        _materialize_to_parquet,
                        paths[name],
                        [str(p) for p in inputs] if inputs is not None else None,
                        db_url,
                        str(out),
                    ),
                    out,
                )
            for name, (future, out) in futures.items():
                n = future.result()
                con.execute(
                    f"CREATE OR REPLACE TABLE {SRC_PREFIX}{name} AS "
                    f"SELECT * FROM read_parquet('{out}')"
                )
                counts[SRC_PREFIX + name] = n
                if progress is not None:
                    progress(name, n)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _view_path(view: CompiledView, folder: Path) -> str:
    """A file holding the view's JSON, for a worker process to compile."""
    path = folder / f"view-{view.view.table_name}.json"
    path.write_text(json.dumps(dict(view.view.raw)), encoding="utf-8")
    return str(path)


def default_period_end(inputs: Sequence[Path] | None) -> date:
    """The end of the indicators' period: the ``transactionTime`` of a Bulk Data manifest in an
    input folder (the synthetic population's end date), else today (UTC)."""
    for p in inputs or []:
        manifest = p / "manifest.json" if p.is_dir() else p.parent / "manifest.json"
        if manifest.is_file():
            try:
                stamp = json.loads(manifest.read_text(encoding="utf-8")).get("transactionTime")
                return date.fromisoformat(str(stamp)[:10])
            except (ValueError, json.JSONDecodeError, AttributeError):
                continue
    return datetime.now(UTC).date()


# -- the person table ------------------------------------------------------------------------

_PATIENT_ATTRIBUTES = (
    "gender",
    "birth_date",
    "nationality",
    "region_code",
    "region",
    "urban_rural",
    "income_quintile",
    "education",
    "insurance",
    "disability",
    "latitude",
    "longitude",
)


@dataclass
class Population:
    """Views materialised and one row per person, in one engine, ready for indicators."""

    backend: Backend
    definitions: Definitions
    period_end: date
    people: int
    records: int
    linked: bool  # persons come from the registry (or a links file), not one per record
    event_tables: tuple[str, ...]

    @property
    def unit(self) -> str:
        return "person" if self.linked else "patient record"


def _age_sql(end: date, groups: Sequence[AgeGroup]) -> tuple[str, str, str]:
    """SQL for age in whole years, in months (at ``end``) and the age group label."""
    y, md, d = f"{end.year:04d}", end.strftime("%m-%d"), end.strftime("%d")
    valid = "length(b.birth_date) = 10 AND try_cast(substr(b.birth_date, 1, 4) AS INT) IS NOT NULL"
    by = "try_cast(substr(b.birth_date, 1, 4) AS INT)"
    bm = "try_cast(substr(b.birth_date, 6, 2) AS INT)"
    years = (
        f"CASE WHEN {valid} THEN {y} - {by} - CASE WHEN substr(b.birth_date, 6, 5) > '{md}' "
        "THEN 1 ELSE 0 END END"
    )
    months = (
        f"CASE WHEN {valid} THEN ({y} - {by}) * 12 + ({end.month} - {bm}) - CASE WHEN "
        f"substr(b.birth_date, 9, 2) > '{d}' THEN 1 ELSE 0 END END"
    )
    cases = " ".join(
        f"WHEN a.age >= {g.min}"
        + (f" AND a.age <= {g.max}" if g.max is not None else "")
        + f" THEN '{g.label}'"
        for g in groups
    )
    return years, months, f"CASE {cases} ELSE '{UNKNOWN}' END"


def _native_reading(keyed: str, country: str, first: int, last: int) -> tuple[str, str] | None:
    """(Gregorian date, calendar) of a birth date whose year is impossible as a Gregorian one
    (between ``first`` and ``last``), read in the calendar of the record's country; for another
    country or none, in the one calendar whose years include it (Hijri 1411-1450, Jalali
    1300-1342; the years both calendars have stay unread)."""
    try:
        year = int(keyed[:4])
    except ValueError:
        return None
    calendar = NATIVE_CALENDARS.get(country.strip().upper())
    if calendar is None:
        fits = [
            c for c, years in (("hijri", HIJRI_YEARS), ("jalali", JALALI_YEARS)) if year in years
        ]
        if len(fits) != 1:
            return None
        calendar = fits[0]
    reading = native_calendar_date(keyed, calendar)
    if reading is None or not first <= int(reading[:4]) <= last:
        return None
    return reading, calendar


def _birth_date_readings(b: Backend, period_end: date) -> str:
    """The table ``birth_date_reading`` (keyed, country, gregorian, calendar): each full birth
    date of the Patient records that is impossible as a Gregorian date, read in its native
    calendar (a clerk keyed the Hijri date into the Gregorian field). Returns the SQL of the
    record's country (NULL when the patient view has no ``country`` column)."""
    p = SRC_PREFIX
    country = "pt.country" if "country" in b.columns(f"SELECT * FROM {p}patient") else "NULL"
    first, last = period_end.year - _MAX_AGE, period_end.year
    keyed = b.query(
        f"SELECT DISTINCT pt.birth_date, coalesce(CAST({country} AS STRING), '') FROM "
        f"{p}patient pt WHERE length(pt.birth_date) >= 10 AND NOT coalesce(try_cast(substr("
        f"pt.birth_date, 1, 4) AS INT) BETWEEN {first} AND {last}, false)"
    )
    rows = sorted(
        (str(text), str(where), *reading)
        for text, where in keyed
        if (reading := _native_reading(str(text), str(where), first, last)) is not None
    )
    b.table("birth_date_reading", ("keyed", "country", "gregorian", "calendar"), rows)
    return country


def prepare(
    engine: Any, definitions: Definitions, period_end: date, backend: Backend | None = None
) -> Population:
    """Build ``patient_person``, ``person`` and the person-keyed view tables from ``src_*``.

    ``engine`` is a DuckDB connection (or pass ``backend``, e.g. a :class:`SparkBackend`).
    Persons come from golden-record ``Person`` links (and any links file); a Patient record
    without one is a person of its own. A person's attributes are those of their first record
    (by key), but the birth date, which is read in its calendar (:data:`NATIVE_CALENDARS`) and
    taken from a record where it is plausible; persons with any record marked deceased are left
    out.
    """
    b: Backend = backend or DuckBackend(engine)
    p = SRC_PREFIX
    b.create(
        "patient_person",
        f"SELECT pt.patient_key, coalesce(min(l.person_key), pt.patient_key) AS person_key "
        f"FROM {p}patient pt LEFT JOIN {p}person_link l ON l.patient_key = pt.patient_key "
        f"WHERE pt.patient_key IS NOT NULL GROUP BY pt.patient_key",
    )
    country = _birth_date_readings(b, period_end)
    # A birth date keyed in another calendar (Hijri 1390 as if Gregorian) is read in it
    # (birth_date_reading); a person's birth date comes from a record keyed in the Gregorian
    # calendar with a plausible year, else from one read in another calendar, else the first.
    first, last = period_end.year - _MAX_AGE, period_end.year
    preference = (
        f"CASE WHEN try_cast(substr(pt.birth_date, 1, 4) AS INT) BETWEEN {first} AND {last} "
        f"THEN '0' WHEN r.gregorian IS NOT NULL THEN '1' ELSE '2' END || pt.patient_key"
    )
    gregorian = "coalesce(r.gregorian, pt.birth_date)"
    calendar = (
        "CASE WHEN r.calendar IS NOT NULL THEN r.calendar "
        "WHEN pt.birth_date IS NOT NULL THEN 'gregorian' END"
    )
    attrs = ", ".join(
        f"min_by({gregorian}, {preference}) AS {a}"
        if a == "birth_date"
        else f"min_by(pt.{a}, pt.patient_key) AS {a}"
        for a in _PATIENT_ATTRIBUTES
    )
    years, months, age_group = _age_sql(period_end, definitions.age_groups)
    b.create(
        "person_base",
        f"SELECT a.*, {age_group} AS age_group FROM (SELECT b.*, "
        f"CASE WHEN ({years}) BETWEEN 0 AND {_MAX_AGE} THEN {years} END AS age, "
        f"CASE WHEN ({years}) BETWEEN 0 AND {_MAX_AGE} THEN {months} END AS age_months FROM ("
        f"SELECT m.person_key, min(pt.patient_key) AS patient_key, "
        f"min_by(pt.managing_org_key, pt.patient_key) AS home_org_key, {attrs}, "
        f"min_by({calendar}, {preference}) AS birth_calendar, "
        f"count(*) AS records, max(CASE WHEN pt.deceased THEN 1 ELSE 0 END) AS deceased "
        f"FROM {p}patient pt JOIN patient_person m ON m.patient_key = pt.patient_key "
        f"LEFT JOIN birth_date_reading r ON r.keyed = pt.birth_date "
        f"AND r.country = coalesce({country}, '') "
        f"GROUP BY m.person_key) b WHERE b.deceased = 0) a",
    )
    people_sql = (
        "SELECT person_key, latitude, longitude FROM person_base WHERE latitude IS NOT NULL "
        "AND longitude IS NOT NULL AND abs(latitude) <= 90 AND abs(longitude) <= 360 "
        "ORDER BY person_key"
    )
    b.create("location", f"SELECT * FROM {p}location", keep=False)
    pc = f"SELECT location_key, latitude, longitude FROM ({definitions.primary_care_sql}) pc"
    try:
        b.columns(pc)
    except Exception as err:
        raise DefinitionError(
            definitions.dimensions_source, "primary_care_locations", _sql_error(err)
        ) from err
    b.nearest(people_sql, f"SELECT DISTINCT * FROM ({pc}) q", "person_nearest")
    base = (
        "SELECT pb.*, n.nearest_pc_key, n.nearest_pc_km FROM person_base pb "
        "LEFT JOIN person_nearest n ON n.person_key = pb.person_key"
    )
    for i, d in enumerate(definitions.dimensions):
        try:
            b.columns(f"SELECT CAST(({d.expr}) AS STRING) AS v FROM ({base}) x")
        except Exception as err:
            where = f"dimensions[{i}] ({d.id}).expr"
            raise DefinitionError(definitions.dimensions_source, where, _sql_error(err)) from err
    dims = ", ".join(
        f"coalesce(CAST(({d.expr}) AS STRING), '{UNKNOWN}') AS {d.column}"
        for d in definitions.dimensions
    )
    b.create("person", f"SELECT x.*, {dims} FROM ({base}) x")
    (links,) = b.query(f"SELECT count(*) FROM {p}person_link")[0]
    events: list[str] = []
    for view in definitions.views:
        name = view.view.table_name
        if name in ("patient", "person_link", "location"):
            continue
        if "patient_key" not in view.column_names:
            b.create(name, f"SELECT * FROM {p}{name}", keep=False)
        elif links:
            # A table on DuckDB: observations are read by half the indicators, the join once.
            b.create(
                name,
                f"SELECT coalesce(m.person_key, v.patient_key) AS person_key, v.* "
                f"FROM {p}{name} v LEFT JOIN patient_person m ON m.patient_key = v.patient_key",
                keep=b.name == "duckdb",
            )
        else:
            # Without links every record is its own person: the source, renamed.
            b.create(name, f"SELECT patient_key AS person_key, v.* FROM {p}{name} v", keep=False)
        events.append(name)
    (people, records, linked) = b.query(
        "SELECT count(*), sum(records), sum(CASE WHEN records > 1 OR person_key NOT LIKE "
        "'Patient/%' THEN 1 ELSE 0 END) FROM person"
    )[0]
    return Population(
        backend=b,
        definitions=definitions,
        period_end=period_end,
        people=int(people or 0),
        records=int(records or 0),
        linked=bool(linked),
        event_tables=tuple(events),
    )


def _sql_error(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return "SQL error: " + (text[0] if text else type(err).__name__)


# -- computing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """One cell: the whole population (no dimension), a subgroup, or an intersection."""

    indicator: str
    dimension: str | None
    subgroup: str | None
    dimension2: str | None
    subgroup2: str | None
    population: int | None  # the denominator (people); None when suppressed
    numerator: int | None
    estimate: float | None  # on the indicator's scale (percent for scale 100)
    se: float | None
    ci_lb: float | None
    ci_ub: float | None
    sd: float | None  # means only
    suppressed: str  # "" | "primary" (denominator < min_cell) | "secondary" (complementary)

    @property
    def key(self) -> CellKey:
        return (self.dimension, self.subgroup, self.dimension2, self.subgroup2)


@dataclass
class IndicatorResults:
    indicators: tuple[Indicator, ...]
    dimensions: tuple[Dimension, ...]
    period_end: date
    min_cell: int
    confidence: float
    unit: str
    people: int
    records: int
    estimates: list[Estimate]
    engine: str
    seconds: float = 0.0
    _index: dict[tuple[str, tuple[str | None, ...]], Estimate] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        self._index = {(e.indicator, e.key): e for e in self.estimates}

    def indicator(self, indicator_id: str) -> Indicator:
        for ind in self.indicators:
            if ind.id == indicator_id:
                return ind
        raise IndicatorError(f"indicator {indicator_id!r} was not computed")

    def national(self, indicator_id: str) -> Estimate:
        return self._index[(indicator_id, (None, None, None, None))]

    def get(
        self,
        indicator_id: str,
        dimension: str,
        subgroup: str,
        dimension2: str | None = None,
        subgroup2: str | None = None,
    ) -> Estimate | None:
        return self._index.get((indicator_id, (dimension, subgroup, dimension2, subgroup2)))

    def by(self, indicator_id: str, dimension: str) -> dict[str, Estimate]:
        """The subgroups of one dimension (single breakdown), by subgroup value."""
        return {
            e.subgroup: e
            for e in self.estimates
            if e.indicator == indicator_id
            and e.dimension == dimension
            and e.dimension2 is None
            and e.subgroup is not None
        }


# Values of a mean are summed as decimals with 9 places (exact and order-independent; values and
# their squares up to 1e20 fit in 38 digits with room for a million terms).
_EXACT = "DECIMAL(38, 9)"


def _cell_sql(ind: Indicator, pop: Population, dims: Sequence[Dimension]) -> str:
    period = ind.period(pop.period_end)
    cols = ", ".join(f"p.{d.column}" for d in dims)
    lead = f"'{ind.id}' AS indicator" + (f", {cols}" if cols else "")
    group = f" GROUP BY {cols}" if cols else ""
    if ind.kind == "proportion":
        den = ind.sql("denominator", period)
        num = ind.sql("numerator", period)
        return (
            f"SELECT {lead}, count(*) AS n, CAST(sum(CASE WHEN q.person_key IS NULL THEN 0 "
            f"ELSE 1 END) AS BIGINT) AS x, CAST(NULL AS {_EXACT}) AS s1, "
            f"CAST(NULL AS {_EXACT}) AS s2 "
            f"FROM person p JOIN (SELECT DISTINCT person_key FROM ({den}) den_) d "
            f"ON d.person_key = p.person_key LEFT JOIN (SELECT DISTINCT person_key FROM ({num}) "
            f"num_) q ON q.person_key = p.person_key{group}"
        )
    value = ind.sql("value", period)
    restrict = ""
    if ind.denominator:
        den = ind.sql("denominator", period)
        restrict = (
            f"JOIN (SELECT DISTINCT person_key FROM ({den}) den_) d ON d.person_key = p.person_key "
        )
    # Sums of doubles depend on the order the engine's threads add them in (the last bits of a
    # mean would change from run to run); fixed-point decimals add up exactly in any order.
    return (
        f"SELECT {lead}, count(*) AS n, CAST(0 AS BIGINT) AS x, "
        f"sum(CAST(v.value AS {_EXACT})) AS s1, sum(CAST(v.value * v.value AS {_EXACT})) AS s2 "
        f"FROM person p {restrict}JOIN (SELECT person_key, "
        f"CAST(avg(CAST(value AS {_EXACT})) AS DOUBLE) AS value FROM ({value}) val_ "
        f"WHERE value IS NOT NULL GROUP BY person_key) v ON v.person_key = p.person_key{group}"
    )


def check_sql(pop: Population, ind: Indicator) -> None:
    """Analyse every SQL field of an indicator (without running it): columns and syntax."""
    period = ind.period(pop.period_end)
    needed = {
        "denominator": ("person_key",),
        "numerator": ("person_key",),
        "value": ("person_key", "value"),
    }
    for name, cols in needed.items():
        if getattr(ind, name) is None:
            continue
        sql = ind.sql(name, period)
        try:
            found = [c.lower() for c in pop.backend.columns(sql)]
        except Exception as err:
            raise DefinitionError(ind.source, ind.where(name), _sql_error(err)) from err
        for col in cols:
            if col not in found:
                raise DefinitionError(
                    ind.source,
                    ind.where(name),
                    f"the query must return a column {col!r} (got {found})",
                )


def compute(
    pop: Population,
    dimensions: Sequence[str] | None = None,
    pairs: bool = True,
    min_cell: int = DEFAULT_MIN_CELL,
    confidence: float = 0.95,
    indicators: Sequence[str] | None = None,
    secondary: bool = True,
) -> IndicatorResults:
    """Every indicator, nationally and by each dimension (and each pair with ``pairs``)."""
    import time

    started = time.perf_counter()
    defs = pop.definitions
    # None: every dimension; an empty list: the whole population only.
    dims = defs.dimensions if dimensions is None else tuple(defs.dimension(d) for d in dimensions)
    inds = tuple(defs.indicator(i) for i in indicators) if indicators else defs.indicators
    if min_cell < 0:
        raise IndicatorError(f"min_cell must be 0 or more, got {min_cell}")
    _z(confidence)
    for ind in inds:
        check_sql(pop, ind)
    pop.backend.create("indicator_cells", " UNION ALL ".join(_cell_sql(i, pop, dims) for i in inds))
    sets = ["(indicator)"]
    sets += [f"(indicator, {d.column})" for d in dims]
    if pairs:
        sets += [f"(indicator, {a.column}, {b.column})" for a, b in combinations(dims, 2)]
    cols = ", ".join(d.column for d in dims)
    rows = pop.backend.query(
        f"SELECT indicator{', ' + cols if cols else ''}, sum(n), sum(x), sum(s1), sum(s2) "
        f"FROM indicator_cells GROUP BY GROUPING SETS ({', '.join(sets)})"
    )
    estimates = _estimates(rows, inds, dims, min_cell, confidence, secondary)
    return IndicatorResults(
        indicators=inds,
        dimensions=dims,
        period_end=pop.period_end,
        min_cell=min_cell,
        confidence=confidence,
        unit=pop.unit,
        people=pop.people,
        records=pop.records,
        estimates=estimates,
        engine=pop.backend.name,
        seconds=time.perf_counter() - started,
    )


@dataclass(slots=True)
class _Cell:
    key: CellKey
    n: int
    x: int
    s1: float
    s2: float
    suppressed: str = ""


def _estimates(
    rows: Sequence[tuple[Any, ...]],
    inds: Sequence[Indicator],
    dims: Sequence[Dimension],
    min_cell: int,
    confidence: float,
    secondary: bool,
) -> list[Estimate]:
    by_indicator: dict[str, list[_Cell]] = {i.id: [] for i in inds}
    for row in rows:
        values = row[1 : 1 + len(dims)]
        present = [(d.id, v) for d, v in zip(dims, values, strict=True) if v is not None]
        if len(present) > 2:
            raise AssertionError("a grouping set has at most two dimensions")
        key: CellKey = NATIONAL
        if len(present) == 1:
            key = (present[0][0], str(present[0][1]), None, None)
        elif len(present) == 2:
            key = (present[0][0], str(present[0][1]), present[1][0], str(present[1][1]))
        n, x, s1, s2 = row[1 + len(dims) :]
        by_indicator[str(row[0])].append(
            _Cell(key, int(n or 0), int(x or 0), float(s1 or 0.0), float(s2 or 0.0))
        )
    out: list[Estimate] = []
    order = {d.id: i for i, d in enumerate(dims)}
    for ind in inds:
        cells = by_indicator[ind.id]
        if not any(c.key == NATIONAL for c in cells):
            # An empty denominator has no national row in GROUPING SETS: report it as 0 people.
            cells.append(_Cell(NATIONAL, 0, 0, 0.0, 0.0))
        state = suppress({c.key: c.n for c in cells}, min_cell, secondary)
        for c in cells:
            c.suppressed = state[c.key]
        cells.sort(
            key=lambda c: (
                c.key[0] is not None,
                c.key[2] is not None,
                order.get(c.key[0] or "", -1),
                order.get(c.key[2] or "", -1),
                c.key[1] or "",
                c.key[3] or "",
            )
        )
        out.extend(_cell_estimates(ind, cells, confidence))
    return out


def suppress(
    populations: Mapping[CellKey, int], min_cell: int, secondary: bool = True
) -> dict[CellKey, str]:
    """Which cells of one indicator to hide, by cell key: ``"primary"`` (denominator below
    ``min_cell``, or empty), ``"secondary"`` (hidden so that a hidden cell cannot be recovered
    from a published total), ``""`` (published).

    The result depends only on the cells and their denominators: cells are visited in the
    order of their keys and ties are broken by key, so byte-identical input gives the same
    suppression on every run, whatever order the SQL engine returned the cells in (a cell that
    is hidden in one run and published in the next is recovered by comparing the runs).
    """
    state = {key: "primary" if n < min_cell or n == 0 else "" for key, n in populations.items()}
    if secondary:
        _suppress_complements(state, populations)
    return state


def _key_order(key: CellKey) -> tuple[tuple[int, str], ...]:
    """A total order on cell keys (the national key's Nones first)."""
    return tuple((0, "") if v is None else (1, v) for v in key)


def margins(keys: Iterable[CellKey]) -> list[tuple[CellKey, tuple[CellKey, ...]]]:
    """Every total with the cells that add up to it, in a fixed order: the national total is
    the sum of the subgroups of each dimension and of all cells of each pair of dimensions; a
    subgroup's total is the sum of its row (or column) of each pair it is part of. Totals that
    are not among ``keys`` are left out (nothing to subtract from)."""
    present = set(keys)
    parts: dict[tuple[CellKey, tuple[str, ...]], list[CellKey]] = {}
    for key in sorted(present, key=_key_order):
        d1, v1, d2, v2 = key
        if d1 is None or v1 is None:
            continue
        if d2 is None or v2 is None:
            parts.setdefault((NATIONAL, (d1,)), []).append(key)
            continue
        parts.setdefault((NATIONAL, (d1, d2)), []).append(key)
        parts.setdefault(((d1, v1, None, None), (d2,)), []).append(key)
        parts.setdefault(((d2, v2, None, None), (d1,)), []).append(key)
    ordered = sorted(parts.items(), key=lambda item: (_key_order(item[0][0]), item[0][1]))
    return [(total, tuple(members)) for (total, _), members in ordered if total in present]


def _suppress_complements(state: dict[CellKey, str], populations: Mapping[CellKey, int]) -> None:
    """Secondary suppression: every total and the cells adding up to it keep either no hidden
    member or at least two, so that no hidden cell (nor a hidden total) is the difference of
    published ones. A margin with exactly one hidden member loses one more published part (the
    total itself only when all its parts are hidden), repeated until no margin has one.

    The part chosen is the smallest, but parts that are copies of a subgroup or of the national
    total come last: a total with a single part (a dimension with one subgroup among these
    people, such as the age group of the under-twos) is that part, so hiding the part hides the
    total too, and with it the margins it is a part of. Ties are broken by key."""
    relations = margins(state)
    copies = _copies(state, relations)
    margin = {copies[k] for k in state if k[2] is None}

    def cost(k: CellKey) -> tuple[bool, int, tuple[tuple[int, str], ...]]:
        return (copies[k] in margin, populations[k], _key_order(k))

    changed = True
    while changed:
        changed = False
        for total, parts in relations:
            if sum(1 for k in (total, *parts) if state[k]) != 1:
                continue
            shown = [k for k in parts if not state[k]]
            state[min(shown, key=cost) if shown else total] = "secondary"
            changed = True


def _copies(
    keys: Iterable[CellKey], relations: Sequence[tuple[CellKey, tuple[CellKey, ...]]]
) -> dict[CellKey, CellKey]:
    """Each cell's class of cells that are the same number (a total with one part is that
    part), named by its first key in key order (union-find)."""
    parent = {k: k for k in keys}

    def find(k: CellKey) -> CellKey:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for total, parts in relations:
        if len(parts) == 1:
            a, b = sorted((find(total), find(parts[0])), key=_key_order)
            parent[b] = a
    return {k: find(k) for k in parent}


def _cell_estimates(ind: Indicator, cells: Sequence[_Cell], confidence: float) -> list[Estimate]:
    n = np.array([c.n for c in cells], dtype=np.float64)
    scale = ind.scale
    if ind.kind == "proportion":
        x = np.array([c.x for c in cells], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = x / n
            se = np.sqrt(p * (1.0 - p) / n)
        lb, ub = wilson_interval(x, n, confidence)
        est, se_s, lb_s, ub_s = p * scale, se * scale, lb * scale, ub * scale
        sd = np.full_like(n, np.nan)
    else:
        s1 = np.array([c.s1 for c in cells], dtype=np.float64)
        s2 = np.array([c.s2 for c in cells], dtype=np.float64)
        mean, sd, se, lb, ub = mean_interval(n, s1, s2, confidence)
        est, se_s, lb_s, ub_s = mean * scale, se * scale, lb * scale, ub * scale
        sd = sd * scale
    out: list[Estimate] = []
    for i, c in enumerate(cells):
        shown = not c.suppressed
        out.append(
            Estimate(
                indicator=ind.id,
                dimension=c.key[0],
                subgroup=c.key[1],
                dimension2=c.key[2],
                subgroup2=c.key[3],
                population=c.n if shown else None,
                numerator=(c.x if ind.kind == "proportion" else None) if shown else None,
                estimate=_finite(est[i]) if shown else None,
                se=_finite(se_s[i]) if shown else None,
                ci_lb=_finite(lb_s[i]) if shown else None,
                ci_ub=_finite(ub_s[i]) if shown else None,
                sd=_finite(sd[i]) if shown else None,
                suppressed=c.suppressed,
            )
        )
    return out


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


# -- Spark -----------------------------------------------------------------------------------


def prepare_spark(
    spark: Any,
    ndjson_dir: Path | Sequence[Path],
    definitions: Definitions | None = None,
    period_end: date | None = None,
    links: Sequence[tuple[str, str]] | None = None,
) -> Population:
    """The views evaluated on Spark (``takamul.views.evaluate.evaluate_spark``), registered as
    temporary views ``src_<view>``, then the same person table as :func:`prepare`."""
    import tempfile

    from takamul.views.evaluate import evaluate_spark
    from takamul.views.source import discover

    defs = definitions or load_definitions()
    inputs = [ndjson_dir] if isinstance(ndjson_dir, Path) else list(ndjson_dir)
    end = period_end or default_period_end(inputs)
    backend = SparkBackend(spark)
    for view in defs.views:
        if discover(inputs, view.resource_type):
            df = evaluate_spark(spark, view.view, inputs)
        else:
            # No file for this type (a synthetic export has no Person file). evaluate_spark
            # needs input: an empty file gives the view's schema, and no job runs on it.
            with tempfile.TemporaryDirectory(prefix="takamul-spark-") as folder:
                empty = Path(folder) / f"{view.resource_type}.ndjson"
                empty.touch()
                schema = evaluate_spark(spark, view.view, [empty]).schema
            df = spark.createDataFrame([], schema=schema)
        name = SRC_PREFIX + view.view.table_name
        if view.view.table_name == "person_link" and links:
            extra = spark.createDataFrame(
                [(person, patient, None) for patient, person in links], schema=df.schema
            )
            df = df.unionByName(extra)
        df = df.cache()
        df.count()
        df.createOrReplaceTempView(name)
    return prepare(None, defs, end, backend=backend)


def compute_spark(
    spark: Any,
    ndjson_dir: Path | Sequence[Path],
    definitions: Definitions | None = None,
    period_end: date | None = None,
    links: Sequence[tuple[str, str]] | None = None,
    **options: Any,
) -> IndicatorResults:
    """:func:`compute` on Apache Spark: the same views and the same indicator SQL."""
    pop = prepare_spark(spark, ndjson_dir, definitions, period_end, links)
    return compute(pop, **options)


# -- output ----------------------------------------------------------------------------------

CSV_COLUMNS = (
    "indicator",
    "indicator_name",
    "kind",
    "unit",
    "scale",
    "favourable",
    "period_start",
    "period_end",
    "dimension",
    "subgroup",
    "subgroup_label",
    "dimension2",
    "subgroup2",
    "subgroup2_label",
    "population",
    "numerator",
    "estimate",
    "se",
    "ci_lb",
    "ci_ub",
    "sd",
    "suppressed",
    "ci_method",
)


def _labels(results: IndicatorResults) -> dict[str, Dimension]:
    return {d.id: d for d in results.dimensions}


def result_dicts(results: IndicatorResults) -> list[dict[str, Any]]:
    """One dict per estimate with the indicator's metadata (the tidy form, CSV and JSON)."""
    dims = _labels(results)
    inds = {i.id: i for i in results.indicators}
    out: list[dict[str, Any]] = []
    for e in results.estimates:
        ind = inds[e.indicator]
        period = ind.period(results.period_end)
        out.append(
            {
                "indicator": ind.id,
                "indicator_name": ind.name,
                "kind": ind.kind,
                "unit": ind.unit,
                "scale": ind.scale,
                "favourable": ind.favourable,
                "period_start": None if period.start == EARLIEST else period.start.isoformat(),
                "period_end": period.end.isoformat(),
                "dimension": e.dimension,
                "subgroup": e.subgroup,
                "subgroup_label": dims[e.dimension].label(e.subgroup)
                if e.dimension and e.subgroup is not None
                else None,
                "dimension2": e.dimension2,
                "subgroup2": e.subgroup2,
                "subgroup2_label": dims[e.dimension2].label(e.subgroup2)
                if e.dimension2 and e.subgroup2 is not None
                else None,
                "population": e.population,
                "numerator": e.numerator,
                "estimate": e.estimate,
                "se": e.se,
                "ci_lb": e.ci_lb,
                "ci_ub": e.ci_ub,
                "sd": e.sd,
                "suppressed": e.suppressed,
                "ci_method": "wilson" if ind.kind == "proportion" else "t",
            }
        )
    return out


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(results: IndicatorResults, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = result_dicts(results)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_csv_value(row[c]) for c in CSV_COLUMNS])
    return len(rows)


def write_json(results: IndicatorResults, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = result_dicts(results)
    doc = {
        "period_end": results.period_end.isoformat(),
        "unit_of_analysis": results.unit,
        "people": results.people,
        "patient_records": results.records,
        "min_cell": results.min_cell,
        "confidence": results.confidence,
        "engine": results.engine,
        "indicators": [
            {
                "id": i.id,
                "abbr": i.abbr,
                "name": i.name,
                "description": i.description,
                "kind": i.kind,
                "unit": i.unit,
                "scale": i.scale,
                "favourable": i.favourable,
                "lookback_months": i.lookback_months,
                "codes": [dict(c) for c in i.codes],
            }
            for i in results.indicators
        ],
        "dimensions": [
            {"id": d.id, "name": d.name, "ordered": d.ordered, "order": list(d.order)}
            for d in results.dimensions
        ],
        "estimates": rows,
    }
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return len(rows)


def heat_rows(
    results: IndicatorResults,
    setting: str = "National",
    source: str = "Takamul shared record",
    iso3: str = "",
) -> list[dict[str, str]]:
    """HEAT Plus template rows (``takamul.equity.heat.TEMPLATE_COLUMNS``): every indicator by
    every single dimension. Left out: suppressed subgroups, 'unknown' subgroups, and values of
    an ordered dimension that are not in its order (HEAT needs an order for each)."""
    rows: list[dict[str, str]] = []
    for ind in results.indicators:
        national = results.national(ind.id)
        average = "" if national.estimate is None else repr(national.estimate)
        for dim in results.dimensions:
            for value, e in sorted(results.by(ind.id, dim.id).items()):
                if e.estimate is None or value == UNKNOWN:
                    continue
                if dim.ordered and value not in dim.order:
                    continue
                rows.append(
                    {
                        "setting": setting,
                        "date": str(results.period_end.year),
                        "source": source,
                        "indicator_abbr": ind.abbr,
                        "indicator_name": ind.name,
                        "dimension": dim.name,
                        "subgroup": dim.label(value),
                        "estimate": repr(e.estimate),
                        "se": "" if e.se is None else repr(e.se),
                        "ci_lb": "" if e.ci_lb is None else repr(e.ci_lb),
                        "ci_ub": "" if e.ci_ub is None else repr(e.ci_ub),
                        "population": str(e.population),
                        "flag": "",
                        "setting_average": average,
                        "iso3": iso3,
                        "favourable_indicator": "1" if ind.favourable else "0",
                        "indicator_scale": repr(float(ind.scale)),
                        "ordered_dimension": "1" if dim.ordered else "0",
                        "subgroup_order": str(dim.order.index(value) + 1) if dim.ordered else "",
                        "reference_subgroup": "1" if dim.reference == value else "0",
                    }
                )
    return rows


def write_heat(results: IndicatorResults, path: Path, **options: str) -> int:
    from takamul.equity.heat import TEMPLATE_COLUMNS

    rows = heat_rows(results, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TEMPLATE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
