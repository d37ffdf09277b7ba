"""Comparison levels shared by every field comparison of the registry, numbered as Splink
numbers Fellegi-Sunter levels: higher is closer, 0 is 'else', -1 is 'a value is missing'.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Level"]


class Level(IntEnum):
    """How close two values are. Each comparison documents what its levels 1-3 mean."""

    MISSING = -1  # one side has no value: no evidence either way
    DIFFERENT = 0
    SIMILAR = 1  # fuzzy name, same birth year, one-edit ID
    EQUIVALENT = 2  # same skeleton, same date after calendar or swap correction
    EXACT = 3
