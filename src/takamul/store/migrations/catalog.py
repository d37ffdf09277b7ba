"""Every table the packages define, found by importing every module of ``takamul``.

Used when authoring a revision (autogenerate compares a store with it) and by the tests that
prove the migrations make exactly this schema; never at run time, so the store still imports
none of the packages above it. A new table is found here wherever it is declared, which is how
a table added without a migration fails the tests.
"""

from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import MetaData, Table

__all__ = ["application_metadata"]


def application_metadata() -> list[MetaData]:
    """The MetaData of every module-level table of every ``takamul`` module."""
    import takamul

    found: dict[int, MetaData] = {}
    for module_info in pkgutil.walk_packages(takamul.__path__, "takamul."):
        if ".migrations" in module_info.name:
            continue  # the frozen revisions are what is compared, not part of the application
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if isinstance(value, MetaData):
                found[id(value)] = value
            elif isinstance(value, Table):
                found[id(value.metadata)] = value.metadata
    return list(found.values())
