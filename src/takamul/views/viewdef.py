"""Parsing and validation of SQL on FHIR v2 ViewDefinitions.

Everything that can be checked before reading data is checked here, once: the structure, the
column names (unique, usable as SQL identifiers, the same in every ``unionAll`` branch), the
constants, and every FHIRPath expression (compiled here, so a syntax error or an undefined
``%constant`` is reported before the first resource). Errors name the JSON path of the problem,
e.g. ``select[1].unionAll[0].column[2].name``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from takamul.views.fhirpath import (
    Collection,
    CompiledPath,
    FhirPathError,
    FPDate,
    FPDateTime,
    FPTime,
    compile_path,
    static_type,
)

__all__ = [
    "Column",
    "Select",
    "ViewDefinition",
    "ViewDefinitionError",
    "ViewError",
    "ViewEvaluationError",
    "load_view",
    "parse_view",
]


class ViewError(Exception):
    """Any problem with a view: its definition, or its evaluation on some resource."""


class ViewDefinitionError(ViewError):
    """The ViewDefinition itself is invalid; ``path`` is the JSON path of the problem."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ViewEvaluationError(ViewError):
    """A valid view failed on a resource (e.g. several values for a non-collection column)."""


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CONSTANT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")

# value[x] of a constant -> (JSON types accepted, how the value is held in FHIRPath)
_CONSTANT_TYPES: dict[str, tuple[tuple[type, ...], Any]] = {
    "valueBase64Binary": ((str,), str),
    "valueBoolean": ((bool,), bool),
    "valueCanonical": ((str,), str),
    "valueCode": ((str,), str),
    "valueDate": ((str,), FPDate),
    "valueDateTime": ((str,), FPDateTime),
    "valueDecimal": ((int, float), float),
    "valueId": ((str,), str),
    "valueInstant": ((str,), FPDateTime),
    "valueInteger": ((int,), int),
    "valueInteger64": ((int, str), int),
    "valueOid": ((str,), str),
    "valuePositiveInt": ((int,), int),
    "valueString": ((str,), str),
    "valueTime": ((str,), FPTime),
    "valueUnsignedInt": ((int,), int),
    "valueUri": ((str,), str),
    "valueUrl": ((str,), str),
    "valueUuid": ((str,), str),
}

_SELECT_KEYS = frozenset(
    {"column", "select", "unionAll", "forEach", "forEachOrNull", "repeat", "id", "extension"}
)
_COLUMN_KEYS = frozenset(
    {"name", "path", "type", "collection", "description", "tags", "id", "extension"}
)
_WHERE_KEYS = frozenset({"path", "description", "id", "extension"})


@dataclass(frozen=True, slots=True)
class Column:
    """One output column: its FHIRPath, declared type and whether it holds a list."""

    name: str
    path: str
    compiled: CompiledPath
    type: str | None  # as declared in the view
    collection: bool
    location: str  # JSON path of the column in the view, for error messages
    description: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    inferred_type: str | None = None  # from the FHIR definitions when ``type`` is absent

    @property
    def fhir_type(self) -> str | None:
        """The declared type, else the inferred one (None: unknown, treated as string)."""
        return self.type or self.inferred_type

    def tag(self, name: str) -> str | None:
        for k, v in self.tags:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Select:
    """A selection structure; the root of a view is a Select with only nested ``select``s."""

    columns: tuple[Column, ...]
    selects: tuple[Select, ...]
    union_all: tuple[Select, ...]
    location: str
    for_each: CompiledPath | None = None
    for_each_or_null: CompiledPath | None = None
    repeat: tuple[CompiledPath, ...] = ()

    def output_columns(self) -> list[Column]:
        """Columns in output order: own, then nested selects', then the unionAll's."""
        out = list(self.columns)
        for s in self.selects:
            out.extend(s.output_columns())
        if self.union_all:
            out.extend(self.union_all[0].output_columns())
        return out


@dataclass(frozen=True, slots=True)
class ViewDefinition:
    resource: str
    root: Select
    where: tuple[CompiledPath, ...]
    constants: Mapping[str, Collection]
    columns: tuple[Column, ...]
    raw: Mapping[str, Any] = field(repr=False)
    name: str | None = None
    title: str | None = None
    status: str | None = None
    description: str | None = None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def table_name(self) -> str:
        """A SQL-safe table name: the view's name, else its resource type in lower case."""
        base = self.name or self.resource.lower()
        cleaned = re.sub(r"[^A-Za-z0-9_]", "_", base)
        return cleaned if cleaned[:1].isalpha() else f"v_{cleaned}"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Parser:
    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.constants: dict[str, Collection] = {}
        self.constant_types: dict[str, str] = {}

    # helpers ------------------------------------------------------------------------------

    def _string(self, obj: Mapping[str, Any], key: str, loc: str, required: bool) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                raise ViewDefinitionError(f"{loc}.{key}" if loc else key, "is required")
            return None
        if not isinstance(value, str):
            where = f"{loc}.{key}" if loc else key
            raise ViewDefinitionError(where, f"must be a string, got {_describe(value)}")
        return value

    def _array(self, obj: Mapping[str, Any], key: str, loc: str) -> list[Any]:
        value = obj.get(key)
        if value is None:
            return []
        where = f"{loc}.{key}" if loc else key
        if not isinstance(value, list):
            raise ViewDefinitionError(where, f"must be an array, got {_describe(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ViewDefinitionError(
                    f"{where}[{i}]", f"must be an object, got {_describe(item)}"
                )
        return value

    def _compile(self, source: Any, loc: str) -> CompiledPath:
        if not isinstance(source, str):
            raise ViewDefinitionError(
                loc, f"must be a FHIRPath expression (string), got {_describe(source)}"
            )
        try:
            return compile_path(source, self.constants)
        except FhirPathError as err:
            raise ViewDefinitionError(loc, f"invalid FHIRPath {source!r}: {err}") from err

    # structure ----------------------------------------------------------------------------

    def view(self) -> ViewDefinition:
        raw = self.raw
        if not isinstance(raw, Mapping):
            raise ViewDefinitionError(
                "", f"a ViewDefinition must be a JSON object, got {_describe(raw)}"
            )
        rtype = raw.get("resourceType")
        if rtype is not None and rtype != "ViewDefinition":
            raise ViewDefinitionError("resourceType", f"must be 'ViewDefinition', got {rtype!r}")
        resource = self._string(raw, "resource", "", required=True)
        assert resource is not None
        from takamul.fhir.definitions import definitions

        if not definitions().is_resource_type(resource):
            raise ViewDefinitionError("resource", f"{resource!r} is not a FHIR R4 resource type")
        self._constants(raw)
        selects = self._array(raw, "select", "")
        if not selects:
            raise ViewDefinitionError("select", "at least one select is required")
        root = Select(
            columns=(),
            selects=tuple(self._select(s, f"select[{i}]") for i, s in enumerate(selects)),
            union_all=(),
            location="",
        )
        where = []
        for i, w in enumerate(self._array(raw, "where", "")):
            loc = f"where[{i}]"
            self._known_keys(w, _WHERE_KEYS, loc)
            if "path" not in w:
                raise ViewDefinitionError(f"{loc}.path", "is required")
            where.append(self._compile(w["path"], f"{loc}.path"))
        self._validate_columns(root)
        root = self._infer(root, resource)
        return ViewDefinition(
            resource=resource,
            root=root,
            where=tuple(where),
            constants=dict(self.constants),
            columns=tuple(root.output_columns()),
            raw=raw,
            name=self._string(raw, "name", "", required=False),
            title=self._string(raw, "title", "", required=False),
            status=self._string(raw, "status", "", required=False),
            description=self._string(raw, "description", "", required=False),
        )

    def _known_keys(self, obj: Mapping[str, Any], allowed: frozenset[str], loc: str) -> None:
        for key in obj:
            if key not in allowed:
                options = ", ".join(sorted(allowed - {"id", "extension"}))
                raise ViewDefinitionError(f"{loc}.{key}", f"unknown element (allowed: {options})")

    def _constants(self, raw: Mapping[str, Any]) -> None:
        for i, const in enumerate(self._array(raw, "constant", "")):
            loc = f"constant[{i}]"
            name = self._string(const, "name", loc, required=True)
            assert name is not None
            if not _CONSTANT_NAME_RE.match(name):
                raise ViewDefinitionError(f"{loc}.name", f"{name!r} is not a valid constant name")
            if name in self.constants:
                raise ViewDefinitionError(f"{loc}.name", f"constant {name!r} is defined twice")
            values = [k for k in const if k.startswith("value")]
            if len(values) != 1:
                raise ViewDefinitionError(
                    loc,
                    "a constant needs exactly one value[x] (e.g. valueString, valueInteger), "
                    f"found {len(values)}",
                )
            key = values[0]
            if key not in _CONSTANT_TYPES:
                allowed = ", ".join(sorted(_CONSTANT_TYPES))
                raise ViewDefinitionError(
                    f"{loc}.{key}", f"unsupported constant type (allowed: {allowed})"
                )
            accepted, holder = _CONSTANT_TYPES[key]
            value = const[key]
            if not isinstance(value, accepted) or (
                isinstance(value, bool) and bool not in accepted
            ):
                raise ViewDefinitionError(f"{loc}.{key}", f"wrong value type: {_describe(value)}")
            self.constants[name] = [holder(value)]
            self.constant_types[name] = key[5].lower() + key[6:]

    def _select(self, obj: Mapping[str, Any], loc: str) -> Select:
        self._known_keys(obj, _SELECT_KEYS, loc)
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in obj]
        if len(iterators) > 1:
            raise ViewDefinitionError(
                loc, f"use only one of forEach, forEachOrNull and repeat (found {iterators})"
            )
        for_each = self._compile(obj["forEach"], f"{loc}.forEach") if "forEach" in obj else None
        for_each_or_null = (
            self._compile(obj["forEachOrNull"], f"{loc}.forEachOrNull")
            if "forEachOrNull" in obj
            else None
        )
        repeat: tuple[CompiledPath, ...] = ()
        if "repeat" in obj:
            paths = obj["repeat"]
            if not isinstance(paths, list) or not paths:
                raise ViewDefinitionError(
                    f"{loc}.repeat", "must be a non-empty array of FHIRPath expressions"
                )
            repeat = tuple(self._compile(p, f"{loc}.repeat[{i}]") for i, p in enumerate(paths))
        columns = tuple(
            self._column(c, f"{loc}.column[{i}]")
            for i, c in enumerate(self._array(obj, "column", loc))
        )
        selects = tuple(
            self._select(s, f"{loc}.select[{i}]")
            for i, s in enumerate(self._array(obj, "select", loc))
        )
        union_all = tuple(
            self._select(s, f"{loc}.unionAll[{i}]")
            for i, s in enumerate(self._array(obj, "unionAll", loc))
        )
        if not columns and not selects and not union_all:
            raise ViewDefinitionError(loc, "a select needs a column, select or unionAll")
        return Select(
            columns=columns,
            selects=selects,
            union_all=union_all,
            location=loc,
            for_each=for_each,
            for_each_or_null=for_each_or_null,
            repeat=repeat,
        )

    def _column(self, obj: Mapping[str, Any], loc: str) -> Column:
        self._known_keys(obj, _COLUMN_KEYS, loc)
        name = self._string(obj, "name", loc, required=True)
        assert name is not None
        if not _NAME_RE.match(name):
            raise ViewDefinitionError(
                f"{loc}.name",
                f"{name!r} is not a valid column name (a letter, then letters, digits or _)",
            )
        if "path" not in obj:
            raise ViewDefinitionError(f"{loc}.path", "is required")
        compiled = self._compile(obj["path"], f"{loc}.path")
        ctype = self._string(obj, "type", loc, required=False)
        if ctype is not None:
            from takamul.fhir.definitions import definitions

            if ctype not in definitions().types:
                raise ViewDefinitionError(f"{loc}.type", f"{ctype!r} is not a FHIR R4 type")
        collection = obj.get("collection", False)
        if not isinstance(collection, bool):
            raise ViewDefinitionError(
                f"{loc}.collection", f"must be true or false, got {_describe(collection)}"
            )
        tags = []
        for i, tag in enumerate(self._array(obj, "tags", loc)):
            tname = self._string(tag, "name", f"{loc}.tags[{i}]", required=True)
            tvalue = self._string(tag, "value", f"{loc}.tags[{i}]", required=True)
            assert tname is not None and tvalue is not None
            tags.append((tname, tvalue))
        return Column(
            name=name,
            path=obj["path"],
            compiled=compiled,
            type=ctype,
            collection=collection,
            location=loc,
            description=self._string(obj, "description", loc, required=False),
            tags=tuple(tags),
        )

    # column checks (the "Validate Columns" step of the specification) ----------------------

    def _validate_columns(self, root: Select) -> list[Column]:
        return self._validate(root, [])

    def _validate(self, sel: Select, before: list[Column]) -> list[Column]:
        ret = list(before)
        seen = {c.name for c in ret}

        def add(col: Column) -> None:
            if col.name in seen:
                raise ViewDefinitionError(
                    f"{col.location}.name", f"column {col.name!r} is already defined"
                )
            seen.add(col.name)
            ret.append(col)

        for col in sel.columns:
            add(col)
        for sub in sel.selects:
            for col in self._validate(sub, ret)[len(ret) :]:
                add(col)
        if sel.union_all:
            first = self._validate(sel.union_all[0], ret)[len(ret) :]
            first_names = [c.name for c in first]
            for i, branch in enumerate(sel.union_all[1:], start=1):
                names = [c.name for c in self._validate(branch, ret)[len(ret) :]]
                if names != first_names:
                    raise ViewDefinitionError(
                        f"{sel.location}.unionAll[{i}]" if sel.location else f"unionAll[{i}]",
                        f"unionAll branches must have the same columns in the same order: "
                        f"{first_names} vs {names}",
                    )
            for col in first:
                add(col)
        return ret

    # static types for undeclared column types ---------------------------------------------

    def _infer(self, sel: Select, context: str | None) -> Select:
        ctx = context
        iterator = sel.for_each or sel.for_each_or_null or (sel.repeat[0] if sel.repeat else None)
        if iterator is not None:
            ctx = self._static(iterator, context)
        columns = tuple(
            c
            if c.type is not None
            else Column(
                name=c.name,
                path=c.path,
                compiled=c.compiled,
                type=None,
                collection=c.collection,
                location=c.location,
                description=c.description,
                tags=c.tags,
                inferred_type=self._static(c.compiled, ctx),
            )
            for c in sel.columns
        )
        return Select(
            columns=columns,
            selects=tuple(self._infer(s, ctx) for s in sel.selects),
            union_all=tuple(self._infer(s, ctx) for s in sel.union_all),
            location=sel.location,
            for_each=sel.for_each,
            for_each_or_null=sel.for_each_or_null,
            repeat=sel.repeat,
        )

    def _static(self, path: CompiledPath, context: str | None) -> str | None:
        try:
            return static_type(path.ast, context, self.constant_types)
        except (KeyError, IndexError, AttributeError):  # inference is best effort only
            return None


def parse_view(data: Mapping[str, Any] | str | bytes) -> ViewDefinition:
    """Validate and compile a ViewDefinition given as a dict or JSON text.

    Raises :class:`ViewDefinitionError` naming the JSON path of the first problem found.
    """
    if isinstance(data, str | bytes):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise ViewDefinitionError("", f"not valid JSON: {err}") from err
    return _Parser(data).view()  # type: ignore[arg-type]


def load_view(path: Path) -> ViewDefinition:
    """Read, validate and compile the ViewDefinition in the JSON file ``path``."""
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ViewDefinitionError("", f"cannot read {path}: {err.strerror}") from err
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise ViewDefinitionError("", f"{path} is not valid JSON: {err}") from err
    return parse_view(data)
