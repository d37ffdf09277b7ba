"""Health equity analytics: the WHO HEAT summary measures of health inequality.

``measures`` computes the 21 summary measures of the WHO Health Equity Assessment Toolkit (HEAT /
HEAT Plus) on one indicator broken down by one dimension of inequality; ``heat`` reads the HEAT Plus
data template and writes the measures as CSV; ``cli`` is the ``takamul equity`` sub-command.
"""

from __future__ import annotations

from takamul.equity.measures import (
    CI_METHOD,
    CIMethod,
    ComputeOptions,
    DimensionData,
    Measure,
    MeasureResult,
    NotApplicableError,
    Subgroup,
    all_measures,
    applicable,
    compute,
    not_applicable_reason,
)

__all__ = [
    "CI_METHOD",
    "CIMethod",
    "ComputeOptions",
    "DimensionData",
    "Measure",
    "MeasureResult",
    "NotApplicableError",
    "Subgroup",
    "all_measures",
    "applicable",
    "compute",
    "not_applicable_reason",
]
