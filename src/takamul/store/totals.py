"""``Bundle.total`` of a search as ``_total`` asks (R4 search.html#total): ``accurate`` counts
every match, ``none`` leaves the total out, ``estimate`` (also what a search that does not ask
gets) counts exactly up to ``EXACT_UP_TO`` matches and above that gives PostgreSQL's planner
estimate: counting a large result exactly reads every matching index entry, which is the whole
cost of a search that returns one page of it.

SQLite has no row estimate to give, so there ``estimate`` counts exactly; ``_summary=count`` is
always exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, func, select

# Matches counted one by one before an estimate is given instead: a count of this many index
# entries costs about a millisecond.
EXACT_UP_TO = 1000


@dataclass(frozen=True, slots=True)
class Total:
    value: int | None  # None: no total (``_total=none``)
    exact: bool


def exact_count(conn: Connection, rids: Select[Any]) -> int:
    return int(conn.execute(select(func.count()).select_from(rids.subquery())).scalar_one())


def search_total(conn: Connection, rids: Select[Any], mode: str | None) -> Total:
    """The total of the rows of ``rids`` (one per matching resource) for ``_total=mode``
    (None when the request did not ask)."""
    if mode == "none":
        return Total(None, True)
    if mode == "accurate" or conn.dialect.name != "postgresql":
        return Total(exact_count(conn, rids), True)
    bounded = exact_count(conn, rids.limit(EXACT_UP_TO + 1))
    if bounded <= EXACT_UP_TO:
        return Total(bounded, True)
    return Total(max(planner_rows(conn, rids), bounded), False)


def planner_rows(conn: Connection, stmt: Select[Any]) -> int:
    """PostgreSQL's estimate of the rows ``stmt`` returns (EXPLAIN without running it)."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar_one()
    return int(plan[0]["Plan"]["Plan Rows"])
