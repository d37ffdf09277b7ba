"""The values of a view's columns: each column's kind (boolean, integer, decimal, text, json)
from its FHIR type, and coercion of rows to those kinds, the same for evaluation and for every
output. On its own so that evaluation and output both use it without importing each other."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from takamul.views.fhirpath import BOOLEAN_TYPES, DECIMAL_TYPES, INTEGER_TYPES
from takamul.views.viewdef import Column, ViewEvaluationError

__all__ = ["Row", "column_kind", "row_coercer"]

Row = tuple[Any, ...]

_PRIMITIVE_TEXT = frozenset(
    {
        "string",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "markdown",
        "base64Binary",
        "xhtml",
        "date",
        "dateTime",
        "instant",
        "time",
    }
)


def column_kind(col: Column) -> str:
    """boolean | integer | bigint | decimal | text | json."""
    t = col.fhir_type
    if t is None or t in _PRIMITIVE_TEXT:
        return "text"
    if t in BOOLEAN_TYPES:
        return "boolean"
    if t == "integer64":
        return "bigint"
    if t in INTEGER_TYPES:
        return "integer"
    if t in DECIMAL_TYPES:
        return "decimal"
    return "json"  # complex types and backbone elements


# Coercion: the values of each column to its declared type, the same for every output ------


def _text(v: Any) -> str:
    if isinstance(v, str):
        return str(v)
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is int or type(v) is float:
        return repr(v)
    return orjson.dumps(v).decode()


def _value_coercer(col: Column, complex_as_text: bool) -> Callable[[Any], Any]:
    kind = column_kind(col)
    what = col.fhir_type

    def fail(v: Any) -> ViewEvaluationError:
        return ViewEvaluationError(
            f"{col.location} ({col.name}): value {v!r} is not of the column type {what}"
        )

    if kind == "text":

        def text(v: Any) -> Any:
            return v if v is None or type(v) is str else _text(v)

        return text
    if kind == "boolean":

        def boolean(v: Any) -> Any:
            if v is None or type(v) is bool:
                return v
            raise fail(v)

        return boolean
    if kind in ("integer", "bigint"):

        def integer(v: Any) -> Any:
            if v is None or type(v) is int:
                return v
            if type(v) is float and v.is_integer():
                return int(v)
            raise fail(v)

        return integer
    if kind == "decimal":

        def decimal(v: Any) -> Any:
            if v is None or type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise fail(v)

        return decimal
    if complex_as_text:

        def json_text(v: Any) -> Any:
            return v if v is None else orjson.dumps(v).decode()

        return json_text
    return lambda v: v


def row_coercer(columns: Iterable[Column], complex_as_text: bool = False) -> Callable[[Row], Row]:
    """A function that coerces a row's values to the columns' types (raises if impossible)."""
    fns: list[Callable[[Any], Any]] = []
    for col in columns:
        one = _value_coercer(col, complex_as_text)
        if col.collection:

            def many(v: Any, one: Callable[[Any], Any] = one) -> Any:
                return v if v is None else [one(x) for x in v]

            fns.append(many)
        else:
            fns.append(one)

    def coerce(row: Row) -> Row:
        return tuple([fn(v) for fn, v in zip(fns, row, strict=True)])

    return coerce
