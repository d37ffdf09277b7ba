"""The HEAT Plus data template: read it into :class:`DimensionData`, write the measures as CSV.

The template (WHO HEAT Plus, "Data template"; Hosseinpoor et al., Glob Health Action 2018,
Table 1) has one row per setting, date, source, indicator, dimension and subgroup. Every row is
validated; a bad value is reported with its line and column, never dropped, and all problems of a
file are collected before anything is computed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from takamul.equity.measures import (
    DEFAULT_OPTIONS,
    ComputeOptions,
    DimensionData,
    Measure,
    MeasureResult,
    Subgroup,
    all_measures,
)

__all__ = [
    "OUTPUT_COLUMNS",
    "SE_FROM_CI_DIVISOR",
    "TEMPLATE_COLUMNS",
    "GroupKey",
    "MeasureRow",
    "Template",
    "TemplateError",
    "TemplateGroup",
    "TemplateIssue",
    "compute_rows",
    "parse_template",
    "read_template",
    "write_measures",
]

TEMPLATE_COLUMNS: tuple[str, ...] = (
    "setting",
    "date",
    "source",
    "indicator_abbr",
    "indicator_name",
    "dimension",
    "subgroup",
    "estimate",
    "se",
    "ci_lb",
    "ci_ub",
    "population",
    "flag",
    "setting_average",
    "iso3",
    "favourable_indicator",
    "indicator_scale",
    "ordered_dimension",
    "subgroup_order",
    "reference_subgroup",
)
OUTPUT_COLUMNS: tuple[str, ...] = (
    "setting",
    "date",
    "source",
    "indicator_abbr",
    "dimension",
    "measure",
    "estimate",
    "se",
    "ci_lb",
    "ci_ub",
)
# HEAT's rule for a subgroup without a standard error but with a 95% CI: se = (ub − lb) / (2·1.96).
SE_FROM_CI_DIVISOR = 2 * 1.96
_KEY_COLUMNS = ("setting", "date", "source", "indicator_abbr", "dimension")
_REQUIRED_TEXT = ("setting", "date", "source", "indicator_abbr", "indicator_name", "dimension")


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    """One indicator by one dimension in one setting, date and source: one set of measures."""

    setting: str
    date: str
    source: str
    indicator_abbr: str
    dimension: str


@dataclass(frozen=True, slots=True)
class TemplateIssue:
    """A problem in the template: the 1-based line of the file and the column concerned."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.message}"


class TemplateError(ValueError):
    """The template has problems; ``issues`` lists every one of them."""

    def __init__(self, issues: list[TemplateIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues[:5]) + ("; …" if len(issues) > 5 else ""))


@dataclass(frozen=True, slots=True)
class TemplateGroup:
    key: GroupKey
    indicator_name: str
    data: DimensionData
    lines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Template:
    groups: tuple[TemplateGroup, ...]
    rows_read: int


@dataclass(frozen=True, slots=True)
class MeasureRow:
    key: GroupKey
    measure: Measure
    result: MeasureResult


@dataclass(slots=True)
class _Row:
    line: int
    key: GroupKey
    indicator_name: str
    subgroup: Subgroup
    favourable: bool
    scale: float
    ordered: bool
    setting_average: float | None


@dataclass(slots=True)
class _RowParser:
    """Parses the fields of one row, recording every problem instead of stopping at the first."""

    line: int
    values: dict[str, str]
    issues: list[TemplateIssue] = field(default_factory=list)

    def fail(self, column: str, message: str) -> None:
        self.issues.append(TemplateIssue(self.line, column, message))

    def text(self, column: str, required: bool) -> str:
        value = self.values.get(column, "").strip()
        if required and not value:
            self.fail(column, "required value is missing")
        return value

    def number(self, column: str, required: bool = False) -> float | None:
        raw = self.values.get(column, "").strip()
        if not raw:
            if required:
                self.fail(column, "required value is missing")
            return None
        try:
            value = float(raw)
        except ValueError:
            self.fail(column, f"not a number: {raw!r}")
            return None
        if not math.isfinite(value):
            self.fail(column, f"not a finite number: {raw!r}")
            return None
        return value

    def flag01(self, column: str, default: bool | None = None) -> bool | None:
        raw = self.values.get(column, "").strip()
        if not raw and default is not None:
            return default
        value = self.number(column, required=True)
        if value is None:
            return None
        if value not in (0.0, 1.0):
            self.fail(column, f"must be 0 or 1, got {raw!r}")
            return None
        return value == 1.0

    def integer(self, column: str) -> int | None:
        raw = self.values.get(column, "").strip()
        value = self.number(column)
        if value is None:
            return None
        if value != int(value):
            self.fail(column, f"must be a whole number, got {raw!r}")
            return None
        return int(value)


def _parse_row(line: int, values: dict[str, str]) -> tuple[_Row | None, list[TemplateIssue]]:
    p = _RowParser(line, values)
    texts = {c: p.text(c, required=True) for c in _REQUIRED_TEXT}
    subgroup_name = p.text("subgroup", required=True)
    estimate = p.number("estimate", required=True)
    se = p.number("se")
    ci_lb = p.number("ci_lb")
    ci_ub = p.number("ci_ub")
    population = p.number("population")
    setting_average = p.number("setting_average")
    favourable = p.flag01("favourable_indicator")
    scale = p.number("indicator_scale", required=True)
    ordered = p.flag01("ordered_dimension")
    order = p.integer("subgroup_order")
    # A blank reference_subgroup means "not the reference", as in most filled-in templates.
    is_reference = p.flag01("reference_subgroup", default=False)

    if se is not None and se < 0:
        p.fail("se", f"must not be negative, got {se:g}")
    if (ci_lb is None) != (ci_ub is None):
        missing = "ci_ub" if ci_ub is None else "ci_lb"
        p.fail(missing, "ci_lb and ci_ub must be given together")
    elif ci_lb is not None and ci_ub is not None and ci_lb > ci_ub:
        p.fail("ci_ub", f"upper bound {ci_ub:g} is below the lower bound {ci_lb:g}")
    elif se is None and ci_lb is not None and ci_ub is not None:
        se = (ci_ub - ci_lb) / SE_FROM_CI_DIVISOR
    if population is not None and population <= 0:
        p.fail("population", f"must be positive, got {population:g}")
    if scale is not None and scale <= 0:
        p.fail("indicator_scale", f"must be positive, got {scale:g}")
    if ordered and order is None and not p.values.get("subgroup_order", "").strip():
        p.fail("subgroup_order", "required for an ordered dimension")
    if ordered and order is not None and order < 1:
        p.fail("subgroup_order", f"must be 1 or more in an ordered dimension, got {order}")

    if p.issues or estimate is None or scale is None or favourable is None or ordered is None:
        return None, p.issues
    key = GroupKey(
        texts["setting"],
        texts["date"],
        texts["source"],
        texts["indicator_abbr"],
        texts["dimension"],
    )
    subgroup = Subgroup(
        name=subgroup_name,
        estimate=estimate,
        se=se,
        population=population,
        order=order if ordered else None,
        is_reference=bool(is_reference),
    )
    row = _Row(
        line, key, texts["indicator_name"], subgroup, favourable, scale, ordered, setting_average
    )
    return row, []


def _records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the line each starts on (a quoted field may span lines)."""
    reader = csv.reader(lines)
    previous = 0
    for record in reader:
        start = previous + 1
        previous = reader.line_num
        yield start, record


def parse_template(source: str | Iterable[str]) -> tuple[Template, list[TemplateIssue]]:
    """Parse a HEAT Plus template; returns what could be read and every problem found."""
    lines: Iterable[str] = io.StringIO(source) if isinstance(source, str) else source
    records = _records(lines)
    issues: list[TemplateIssue] = []
    header_item = next(records, None)
    if header_item is None:
        return Template((), 0), [TemplateIssue(1, None, "the file is empty: no header line")]
    header_line, raw_header = header_item
    header = [h.strip().lower().lstrip("\ufeff") for h in raw_header]
    missing = [c for c in TEMPLATE_COLUMNS if c not in header]
    for column in missing:
        issues.append(TemplateIssue(header_line, column, "column missing from the header"))
    duplicated = sorted({h for h in header if h and header.count(h) > 1})
    for column in duplicated:
        issues.append(TemplateIssue(header_line, column, "column appears twice in the header"))
    if issues:
        return Template((), 0), issues

    rows: list[_Row] = []
    tainted: set[GroupKey] = set()
    rows_read = 0
    for line, record in records:
        if not any(field.strip() for field in record):
            continue  # a blank line carries no data
        rows_read += 1
        if len(record) > len(header) and not any(f.strip() for f in record[len(header) :]):
            record = record[: len(header)]  # trailing empty cells, as spreadsheets export them
        if len(record) != len(header):
            issues.append(
                TemplateIssue(line, None, f"expected {len(header)} fields, found {len(record)}")
            )
            continue
        values = dict(zip(header, record, strict=True))
        row, row_issues = _parse_row(line, values)
        issues.extend(row_issues)
        if row is not None:
            rows.append(row)
        else:
            # A group with a bad row is not built: its measures would silently miss a subgroup.
            tainted.add(GroupKey(*(values.get(c, "").strip() for c in _KEY_COLUMNS)))
    groups, group_issues = _group(rows)
    groups = [g for g in groups if g.key not in tainted]
    issues.extend(group_issues)
    issues.sort(key=lambda i: (i.line, i.column or ""))
    return Template(tuple(groups), rows_read), issues


def _group(rows: list[_Row]) -> tuple[list[TemplateGroup], list[TemplateIssue]]:
    """Gather rows by (setting, date, source, indicator, dimension) and check they agree."""
    by_key: dict[GroupKey, list[_Row]] = {}
    for row in rows:
        by_key.setdefault(row.key, []).append(row)
    groups: list[TemplateGroup] = []
    issues: list[TemplateIssue] = []
    for key in sorted(by_key):
        members = by_key[key]
        first = members[0]
        bad = False
        for row in members[1:]:
            for column, mine, theirs in (
                ("indicator_name", row.indicator_name, first.indicator_name),
                ("favourable_indicator", row.favourable, first.favourable),
                ("indicator_scale", row.scale, first.scale),
                ("ordered_dimension", row.ordered, first.ordered),
                ("setting_average", row.setting_average, first.setting_average),
            ):
                if mine != theirs:
                    issues.append(
                        TemplateIssue(
                            row.line,
                            column,
                            f"differs from line {first.line} for the same setting, date, "
                            "source, indicator and dimension",
                        )
                    )
                    bad = True
        seen: dict[str, int] = {}
        orders: dict[int, int] = {}
        reference_line: int | None = None
        for row in members:
            s = row.subgroup
            if s.name in seen:
                issues.append(
                    TemplateIssue(
                        row.line, "subgroup", f"subgroup {s.name!r} repeats line {seen[s.name]}"
                    )
                )
                bad = True
            seen.setdefault(s.name, row.line)
            if first.ordered and s.order is not None:
                if s.order in orders:
                    issues.append(
                        TemplateIssue(
                            row.line,
                            "subgroup_order",
                            f"order {s.order} repeats line {orders[s.order]}",
                        )
                    )
                    bad = True
                orders.setdefault(s.order, row.line)
            if s.is_reference:
                if reference_line is not None:
                    issues.append(
                        TemplateIssue(
                            row.line,
                            "reference_subgroup",
                            f"a second reference subgroup (the first is on line {reference_line})",
                        )
                    )
                    bad = True
                reference_line = reference_line or row.line
        if bad:
            continue
        data = DimensionData(
            subgroups=tuple(r.subgroup for r in members),
            favourable=first.favourable,
            scale=first.scale,
            ordered=first.ordered,
            setting_average=first.setting_average,
        )
        groups.append(
            TemplateGroup(key, first.indicator_name, data, tuple(r.line for r in members))
        )
    return groups, issues


def read_template(path: Path) -> Template:
    """Read a HEAT Plus template CSV (UTF-8, with or without BOM); raise :class:`TemplateError`
    listing every problem if any row or group is invalid."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            template, issues = parse_template(handle)
    except UnicodeDecodeError as err:
        raise TemplateError([TemplateIssue(1, None, f"not UTF-8 text: {err}")]) from err
    if issues:
        raise TemplateError(issues)
    return template


def compute_rows(template: Template, options: ComputeOptions = DEFAULT_OPTIONS) -> list[MeasureRow]:
    """Every applicable measure of every group, groups in key order, measures in HEAT's order."""
    return [
        MeasureRow(group.key, measure, result)
        for group in template.groups
        for measure, result in all_measures(group.data, options).items()
    ]


def _number(value: float | None) -> str:
    # repr keeps every digit, so that reading the CSV back gives the same float.
    return "" if value is None else repr(float(value))


def write_measures(path: Path, rows: Iterable[MeasureRow]) -> int:
    """Write the measures CSV (columns :data:`OUTPUT_COLUMNS`); returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OUTPUT_COLUMNS)
        for row in rows:
            k = row.key
            r = row.result
            writer.writerow(
                [
                    k.setting,
                    k.date,
                    k.source,
                    k.indicator_abbr,
                    k.dimension,
                    row.measure.value,
                    _number(r.estimate),
                    _number(r.se),
                    _number(r.ci_lb),
                    _number(r.ci_ub),
                ]
            )
            count += 1
    return count
