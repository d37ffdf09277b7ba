"""The connection the registry's tables are read on: a registry transaction's own, in the thread
that runs it, so that a link's look-ups see its writes; outside one, a short read of the store
for each look-up. Shared by the stored candidate index and the stored membership."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

from takamul.store.repository import Store
from takamul.store.rowcopy import DriverSql

__all__ = ["BoundConnection", "Riding"]

# statements to send along with another read (in its round trip), and what takes their rows
Riding = tuple[list[tuple[DriverSql, dict[str, Any]]], Callable[[list[list[Any]]], None]]


class BoundConnection:
    """``bind(conn)`` in a transaction's thread; ``with bound() as conn`` to read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._local = threading.local()

    def bind(self, conn: Connection | None) -> None:
        """Read on ``conn`` in this thread from now on (None: short reads of the store)."""
        self._local.conn = conn

    def bound(self) -> Connection | None:
        return getattr(self._local, "conn", None)

    @contextmanager
    def __call__(self) -> Iterator[Connection]:
        conn = self.bound()
        if conn is not None:
            yield conn
            return
        with self.store.reading(snapshot=False) as session:
            yield session.conn
