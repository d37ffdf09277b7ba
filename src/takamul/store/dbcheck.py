"""``takamul db check``: do the search index rows agree with the stored resources?

Each current resource's index rows are computed again from its stored content with the store's
own indexing code (``store.indexing.index_tuples``, what every write and bulk load uses) and
compared, as multisets, with the rows the index tables hold for it. Differences, by resource:

- ``missing``: a row the content gives that the index lacks (a search would not find it);
- ``extra``: a row the index holds that the content does not give (a search would find it
  wrongly), including rows of a deleted resource or of no resource at all;
- a missing and an extra row of the same parameter are one ``wrong`` row (a value altered).

The store is read in batches of 2,000 resources by ``rid`` (in several processes with
``workers``); each batch's resources and index rows are read in one snapshot, so a write during
the check cannot look like damage. ``repair`` rewrites a
damaged resource's index rows from its content in a write transaction that reads the content
again (what a write would have stored), and deletes the rows of resources that are gone.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, delete, func, select, text

from takamul.store.indexing import VALUE_COLUMNS, index_tuples
from takamul.store.repository import Session, Store
from takamul.store.schema import INDEX_TABLES, resource

__all__ = [
    "CheckReport",
    "IndexDifference",
    "check_index",
    "in_processes",
    "snapshot",
    "within",
]

BATCH = 2_000
KEEP = 1_000  # differences kept for the report; the counts cover them all

Row = tuple[Any, ...]  # (res_type, param, *values): an index row without its rid
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IndexDifference:
    """How one resource's rows of one index table differ from what its content gives."""

    rid: int
    resource: str  # Type/id, or "(no resource, rid N)" for rows of a rid not stored
    kind: str  # string | token | date | reference | quantity | number | uri
    missing: tuple[Row, ...]
    extra: tuple[Row, ...]

    def wrong_params(self) -> list[str]:
        """Parameters with both a missing and an extra row: a value altered in place."""
        return sorted({r[1] for r in self.missing} & {r[1] for r in self.extra})

    def describe(self) -> str:
        parts = []
        wrong = self.wrong_params()
        if wrong:
            parts.append(f"wrong {', '.join(wrong)}")
        missing = [r for r in self.missing if r[1] not in wrong]
        extra = [r for r in self.extra if r[1] not in wrong]
        if missing:
            parts.append(f"{len(missing)} missing ({_params(missing)})")
        if extra:
            parts.append(f"{len(extra)} extra ({_params(extra)})")
        return f"{self.resource} sp_{self.kind}: " + "; ".join(parts)


def _params(rows: Iterable[Row]) -> str:
    return ", ".join(sorted({str(r[1]) for r in rows}))


@dataclass(slots=True)
class CheckReport:
    resources: int = 0  # resources checked (deleted ones included: they must have no rows)
    rows: int = 0  # index rows read
    damaged: int = 0  # resources (or stray rids) with any difference
    missing: int = 0
    extra: int = 0
    repaired: int = 0  # resources (or stray rids) whose rows were rewritten
    differences: list[IndexDifference] = field(default_factory=list)  # the first KEEP

    @property
    def clean(self) -> bool:
        return self.damaged == 0

    def add(self, found: list[IndexDifference]) -> None:
        self.damaged += len({d.rid for d in found})
        self.missing += sum(len(d.missing) for d in found)
        self.extra += sum(len(d.extra) for d in found)
        room = KEEP - len(self.differences)
        if room > 0:
            self.differences.extend(found[:room])


Progress = Callable[[int], None]  # resources checked so far


def count_resources(store: Store) -> int:
    with store.reading() as session:
        return int(session.conn.execute(select(func.count()).select_from(resource)).scalar_one())


def check_index(
    store: Store,
    repair: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
    workers: int = 1,
) -> CheckReport:
    """Compare every resource's index rows with its content; with ``repair``, fix them.

    ``workers`` > 1 checks batches in that many processes (recomputing the index is the cost,
    and it is CPU work); differences are repaired here, in this process, as they come in."""
    report = CheckReport()
    ranges = _ranges(store, batch)
    here = partial(_check_range, store)
    with in_processes(
        here, ranges, workers, _open_worker_store, store.settings, _check_in_worker
    ) as results:
        for found, resources, rows in results:
            report.resources += resources
            report.rows += rows
            report.add(found)
            if repair and found:
                report.repaired += _repair(store, sorted({d.rid for d in found}))
            if progress is not None:
                progress(report.resources)
    return report


@contextmanager
def in_processes(
    here: Callable[..., T],
    spans: Sequence[tuple[Any, Any]],
    workers: int,
    open_worker: Callable[[Any], None],
    settings: Any,
    in_worker: Callable[[Any], T],
) -> Iterator[Iterator[T]]:
    """The results of a check's spans, in order: ``here(low, high)`` in this process, or with
    ``workers`` > 1 ``in_worker(span)`` in that many spawned processes, each opened by
    ``open_worker(settings)``. The processes end with the block, however it ends."""
    if workers <= 1:
        yield (here(low, high) for low, high in spans)
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=open_worker,
        initargs=(settings,),
    )
    try:
        yield pool.map(in_worker, spans)
    finally:
        pool.shutdown(cancel_futures=True)


Range = tuple[int | None, int | None]  # rids in (low, high]; None: no bound on that side
Checked = tuple[list[IndexDifference], int, int]  # differences, resources, index rows


def _ranges(store: Store, batch: int) -> list[Range]:
    """Consecutive rid ranges of ``batch`` resources each, covering every rid (index rows of
    no resource, below the first or above the last, included)."""
    with store.reading() as session:
        bounds = [
            int(rid)
            for (rid,) in session.conn.execute(
                text(
                    "SELECT rid FROM (SELECT rid, ROW_NUMBER() OVER (ORDER BY rid) AS n "
                    "FROM resource) numbered WHERE n % :batch = 0 ORDER BY rid"
                ),
                {"batch": batch},
            )
        ]
    edges: list[int | None] = [None, *bounds, None]
    return list(pairwise(edges))


_worker_store: Store | None = None


def _open_worker_store(settings: Any) -> None:
    global _worker_store
    _worker_store = Store(settings)


def _check_in_worker(span: Range) -> Checked:
    assert _worker_store is not None, "the worker's store is opened by its initializer"
    return _check_range(_worker_store, *span)


def _check_range(store: Store, low: int | None, high: int | None) -> Checked:
    """Differences of the resources and index rows with rid in (low, high]."""
    with snapshot(store) as conn:
        query = select(
            resource.c.rid, resource.c.res_type, resource.c.res_id, resource.c.deleted,
            resource.c.content,
        )  # fmt: skip
        rows = conn.execute(within(query, resource.c.rid, low, high)).all()
        expected = {r.rid: _expected(store, r) for r in rows}
        names = {r.rid: f"{r.res_type}/{r.res_id}" for r in rows}
        stored, count = _stored(conn, low, high)
    found: list[IndexDifference] = []
    for rid in sorted(set(expected) | {rid for rid, _kind in stored}):
        want = expected.get(rid, {})
        for kind in sorted(INDEX_TABLES):
            have = stored.get((rid, kind), Counter())
            need = want.get(kind, Counter())
            if have != need:
                found.append(
                    IndexDifference(
                        rid,
                        names.get(rid, f"(no resource, rid {rid})"),
                        kind,
                        tuple(sorted((need - have).elements(), key=repr)),
                        tuple(sorted((have - need).elements(), key=repr)),
                    )
                )
    return found, len(rows), count


def within(query: Any, column: Any, low: object | None, high: object | None) -> Any:
    """``query`` limited to ``column`` in (low, high]; None: no bound on that side."""
    if low is not None:
        query = query.where(column > low)
    if high is not None:
        query = query.where(column <= high)
    return query


@contextmanager
def snapshot(store: Store) -> Iterator[Connection]:
    """A read transaction that sees one snapshot for all its statements (PostgreSQL's default
    READ COMMITTED would give each statement its own)."""
    with store.reader.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin() as transaction:
            yield conn
            transaction.rollback()


def _expected(store: Store, row: Any) -> dict[str, Counter[Row]]:
    if row.deleted or not row.content:
        return {}
    body = orjson.loads(row.content)
    return {
        kind: Counter(_normal(r) for r in rows)
        for kind, rows in index_tuples(store.indexer, row.res_type, body).items()
        if rows
    }


def _stored(
    conn: Connection, low: int | None, high: int | None
) -> tuple[dict[tuple[int, str], Counter[Row]], int]:
    out: dict[tuple[int, str], Counter[Row]] = {}
    count = 0
    for kind, table in INDEX_TABLES.items():
        columns = [table.c.rid, table.c.res_type, table.c.param]
        columns += [table.c[name] for name in VALUE_COLUMNS[kind]]
        for rid, *values in conn.execute(within(select(*columns), table.c.rid, low, high)):
            out.setdefault((rid, kind), Counter())[_normal(tuple(values))] += 1
            count += 1
    return out, count


def _normal(row: Row) -> Row:
    # numbers as floats: a date's bounds or a quantity read back from an integer-valued float
    # column compare equal to the floats the indexer computes
    return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in row)


def _repair(store: Store, rids: list[int]) -> int:
    def work(session: Session) -> int:
        for rid in rids:
            row = session.conn.execute(
                select(resource.c.res_type, resource.c.deleted, resource.c.content).where(
                    resource.c.rid == rid
                )
            ).first()
            if row is None or row.deleted or not row.content:
                for table in INDEX_TABLES.values():
                    session.conn.execute(delete(table).where(table.c.rid == rid))
            else:
                session.reindex(rid, row.res_type, orjson.loads(row.content))
        return len(rids)

    return store.write(work)
