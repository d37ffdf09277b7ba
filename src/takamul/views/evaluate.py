"""Evaluation of a ViewDefinition over FHIR resources into rows.

The view is compiled once into closures (one per selection structure) that follow the
processing algorithm of the specification: each structure yields partial rows for its focus
nodes (``forEach``, ``forEachOrNull``, ``repeat`` or the node itself), joined as a Cartesian
product with the rows of its nested ``select``s and the concatenated rows of its ``unionAll``.
A row is a tuple in the view's column order; :meth:`CompiledView.dicts` gives dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from takamul.views.columns import Row, column_kind, row_coercer
from takamul.views.fhirpath import Collection, Env, FhirPathEvalError, FPQuantity
from takamul.views.viewdef import (
    Column,
    Select,
    ViewDefinition,
    ViewEvaluationError,
    load_view,
    parse_view,
)

__all__ = ["CompiledView", "Row", "compile_view", "evaluate", "evaluate_spark"]

Process = Callable[[Any, Env, int], list[Row]]


def _plain(v: Any) -> Any:
    """A FHIRPath value as a plain JSON value (typed strings become ``str``)."""
    t = type(v)
    if t is str or t is int or t is float or t is bool or t is dict:
        return v
    if isinstance(v, str):
        return str(v)
    if t is Decimal:
        return float(v)
    if t is FPQuantity:
        return {"value": v.value, "unit": v.unit}
    return v


def _where_failure(col: Column | None, err: Exception) -> str:
    return f"{col.location} ({col.name}): {err}" if col is not None else str(err)


def _compile_select(sel: Select) -> Process:
    columns = [(c.compiled.fn, c.collection, c) for c in sel.columns]
    subs = [_compile_select(s) for s in sel.selects]
    unions = [_compile_select(s) for s in sel.union_all]
    # forEachOrNull over nothing: one row of nulls, except that %rowIndex is 0 there.
    null_row: Row = tuple(
        0 if c.path.strip() == "%rowIndex" else None for c in sel.output_columns()
    )

    def own(focus: Collection, env: Env) -> Row:
        values: list[Any] = []
        for fn, collection, col in columns:
            try:
                r = fn(focus, env)
            except FhirPathEvalError as err:
                raise ViewEvaluationError(_where_failure(col, err)) from err
            n = len(r)
            if n == 0:
                values.append([] if collection else None)
            elif collection:
                values.append([_plain(x) for x in r])
            elif n == 1:
                values.append(_plain(r[0]))
            else:
                raise ViewEvaluationError(
                    f"{col.location} ({col.name}): path {col.path!r} returned {n} values; "
                    'set "collection": true or select one value (e.g. with first())'
                )
        return tuple(values)

    def rows_for(node: Any, env: Env, row_index: int) -> list[Row]:
        env.row_index = row_index
        head = own([node], env)
        if not subs and not unions:
            return [head]
        result = [head]
        for sub in subs:
            part = sub(node, env, row_index)
            if not part:
                return []
            if len(part) == 1:
                only = part[0]
                result = [r + only for r in result]
            else:
                result = [r + p for r in result for p in part]
        if unions:
            urows: list[Row] = []
            for branch in unions:
                urows.extend(branch(node, env, row_index))
            if not urows:
                return []
            result = [r + p for r in result for p in urows]
        return result

    def iterate(foci: Collection, env: Env) -> list[Row]:
        if len(foci) == 1:
            return rows_for(foci[0], env, 0)
        out: list[Row] = []
        for i, node in enumerate(foci):
            out.extend(rows_for(node, env, i))
        return out

    def focus_error(err: FhirPathEvalError, what: str) -> ViewEvaluationError:
        return ViewEvaluationError(f"{sel.location}.{what}: {err}")

    if sel.for_each is not None:
        for_each = sel.for_each.fn

        def process_for_each(node: Any, env: Env, row_index: int) -> list[Row]:
            try:
                foci = for_each([node], env)
            except FhirPathEvalError as err:
                raise focus_error(err, "forEach") from err
            return iterate(foci, env) if foci else []

        return process_for_each
    if sel.for_each_or_null is not None:
        for_each_or_null = sel.for_each_or_null.fn

        def process_for_each_or_null(node: Any, env: Env, row_index: int) -> list[Row]:
            try:
                foci = for_each_or_null([node], env)
            except FhirPathEvalError as err:
                raise focus_error(err, "forEachOrNull") from err
            return iterate(foci, env) if foci else [null_row]

        return process_for_each_or_null
    if sel.repeat:
        paths = [p.fn for p in sel.repeat]

        def process_repeat(node: Any, env: Env, row_index: int) -> list[Row]:
            foci: Collection = []

            # Depth first, each node before its descendants, the paths in their order.
            def visit(n: Any) -> None:
                for path in paths:
                    for child in path([n], env):
                        foci.append(child)
                        visit(child)

            try:
                visit(node)
            except FhirPathEvalError as err:
                raise focus_error(err, "repeat") from err
            return iterate(foci, env) if foci else []

        return process_repeat
    return rows_for


class CompiledView:
    """A ViewDefinition ready to run: ``rows(resource)`` returns that resource's rows."""

    def __init__(self, view: ViewDefinition) -> None:
        self.view = view
        self.columns: tuple[Column, ...] = view.columns
        self.column_names: list[str] = [c.name for c in view.columns]
        self.resource_type = view.resource
        self._process = _compile_select(view.root)
        self._where = [(w.fn, w.source, i) for i, w in enumerate(view.where)]
        # One environment for the whole run; rows() resets it for each resource.
        self._env = Env()

    def rows(self, resource: Mapping[str, Any]) -> list[Row]:
        """The rows of one resource (none if it is of another type or fails ``where``)."""
        if type(resource) is not dict or resource.get("resourceType") != self.resource_type:
            return []
        env = self._env
        env.resource = resource
        env.row_index = 0
        env.index = 0
        try:
            if self._where:
                focus = [resource]
                for fn, source, i in self._where:
                    r = fn(focus, env)
                    if not r:
                        return []
                    if len(r) != 1 or type(r[0]) is not bool:
                        raise ViewEvaluationError(
                            f"where[{i}].path: {source!r} must evaluate to a boolean, got "
                            f"{[_plain(x) for x in r][:3]!r}"
                        )
                    if r[0] is False:
                        return []
            return self._process(resource, env, 0)
        except FhirPathEvalError as err:
            raise ViewEvaluationError(f"{self._label(resource)}: {err}") from err
        except ViewEvaluationError as err:
            raise ViewEvaluationError(f"{self._label(resource)}: {err}") from err

    def _label(self, resource: Mapping[str, Any]) -> str:
        return f"{resource.get('resourceType')}/{resource.get('id', '?')}"

    def run(self, resources: Iterable[Mapping[str, Any]]) -> Iterator[Row]:
        """All rows of ``resources``, in input order."""
        rows = self.rows
        for resource in resources:
            yield from rows(resource)

    def dicts(self, resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        names = self.column_names
        return [dict(zip(names, row, strict=True)) for row in self.run(resources)]


def compile_view(view: ViewDefinition | Mapping[str, Any] | str | bytes | Path) -> CompiledView:
    """Compile a view given as a parsed definition, a dict, JSON text or a JSON file path."""
    if isinstance(view, ViewDefinition):
        return CompiledView(view)
    if isinstance(view, Path):
        return CompiledView(load_view(view))
    return CompiledView(parse_view(view))


def evaluate(
    view: ViewDefinition | Mapping[str, Any] | str | bytes | Path,
    resources: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Rows of ``view`` over ``resources`` as dicts keyed by column name."""
    return compile_view(view).dicts(resources)


# Apache Spark ---------------------------------------------------------------------------------


def _partition_runner(raw: Mapping[str, Any]) -> Callable[[Iterable[str]], Iterator[Row]]:
    """The function Spark runs on each partition of NDJSON lines (shipped with the raw view)."""

    def run(lines: Iterable[str]) -> Iterator[Row]:
        import orjson

        view = compile_view(raw)  # once per partition, on the executor
        coerce = row_coercer(view.columns, complex_as_text=True)
        rows = view.rows
        for line in lines:
            if not line.strip():
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError as err:
                raise ValueError(f"invalid NDJSON line ({err}): {line[:120]!r}") from None
            for row in rows(resource):
                yield coerce(row)

    return run


def _spark_paths(ndjson_paths: Iterable[str | Path], resource_type: str) -> list[str]:
    from takamul.views.source import discover

    out: list[str] = []
    for p in ndjson_paths:
        text = str(p)
        if "://" in text:  # hdfs://, s3a://, file:// ... are Spark's to resolve
            out.append(text)
        else:
            out.extend(str(f.resolve()) for f in discover([Path(p)], resource_type))
    return out


def evaluate_spark(
    spark: Any,
    view: ViewDefinition | Mapping[str, Any] | str | bytes | Path,
    ndjson_paths: Iterable[str | Path],
) -> Any:
    """A Spark DataFrame of the view's rows over NDJSON files (national scale).

    The same evaluator runs in ``mapPartitions`` over the text lines; the view's column types
    become the DataFrame schema (decimal -> double, complex values -> JSON text). Local paths
    may be folders (their ``*.ndjson``); URIs with a scheme are passed to Spark as they are.
    """
    try:
        from pyspark.sql import types as st
    except ImportError as err:
        raise ImportError(
            "evaluate_spark needs Apache Spark (pyspark): pip install 'takamul[spark]'"
        ) from err

    compiled = compile_view(view)  # validate on the driver, before any job starts
    base = {
        "boolean": st.BooleanType(),
        "integer": st.IntegerType(),
        "bigint": st.LongType(),
        "decimal": st.DoubleType(),
        "text": st.StringType(),
        "json": st.StringType(),
    }
    fields = []
    for col in compiled.columns:
        dtype = base[column_kind(col)]
        fields.append(
            st.StructField(col.name, st.ArrayType(dtype, True) if col.collection else dtype, True)
        )
    paths = _spark_paths(ndjson_paths, compiled.resource_type)
    if not paths:
        raise ValueError("evaluate_spark: no NDJSON input")
    lines = spark.sparkContext.textFile(",".join(paths))
    rdd = lines.mapPartitions(_partition_runner(dict(compiled.view.raw)))
    return spark.createDataFrame(rdd, schema=st.StructType(fields), verifySchema=False)
