"""The FHIR REST API over HTTP (FastAPI); thin: parsing, status codes, rendering."""

from takamul.api.app import create_app

__all__ = ["create_app"]
