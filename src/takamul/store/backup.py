"""An online copy of an SQLite store: ``takamul db backup`` and the copy the server makes before
a migration that changes the embedded store's tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["backup_sqlite"]


def backup_sqlite(source: Path, target: Path) -> int:
    """A consistent copy of a live SQLite database with SQLite's backup API; the pages copied.

    Copied in one step, that is in one read transaction: in WAL mode (the store's) writers carry
    on beside it, and no write can make SQLite start the copy again, as it would between steps.
    The copy then leaves WAL mode, so it is one file.
    """
    copied = 0

    def progress(_status: int, remaining: int, total: int) -> None:
        nonlocal copied
        copied = total - remaining

    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=-1, progress=progress)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    return copied
