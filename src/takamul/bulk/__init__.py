"""Bulk data in and out of the shared record: NDJSON and Bundle loading, Bulk Data export."""

from takamul.bulk.load import LoadSummary, load_paths

__all__ = ["LoadSummary", "load_paths"]
