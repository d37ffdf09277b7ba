"""Flat views of FHIR data with the HL7 SQL on FHIR v2 standard (ViewDefinition).

```python
from takamul.views import compile_view
from takamul.views.source import iter_ndjson

view = compile_view(Path("patients.json"))          # validated and compiled once
for row in view.run(iter_ndjson([Path("data/")], view.resource_type)):
    ...                                              # tuples in view.column_names order
```

``output`` materialises rows into DuckDB and writes csv, ndjson or parquet; ``cli`` is the
``takamul views`` command; ``evaluate.evaluate_spark`` runs the same evaluator on Apache Spark.
"""

from __future__ import annotations

from takamul.views.evaluate import CompiledView, Row, compile_view, evaluate
from takamul.views.viewdef import (
    Column,
    ViewDefinition,
    ViewDefinitionError,
    ViewError,
    ViewEvaluationError,
    load_view,
    parse_view,
)

__all__ = [
    "Column",
    "CompiledView",
    "Row",
    "ViewDefinition",
    "ViewDefinitionError",
    "ViewError",
    "ViewEvaluationError",
    "compile_view",
    "evaluate",
    "load_view",
    "parse_view",
]
