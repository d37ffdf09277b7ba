"""Storage of the shared record over SQLAlchemy Core: resources, versions, search indexes.

SQLite (the embedded default) and PostgreSQL share every table and query.
"""

from takamul.store.records import SearchPage, StoredResource
from takamul.store.repository import Session, Store, WriteOptions

__all__ = ["SearchPage", "Session", "Store", "StoredResource", "WriteOptions"]
