"""The web application for people (``/app/``): server-rendered pages in Arabic, Persian and
English over the same store, guard and audit log as the FHIR API. See docs/web.md."""

from takamul.web.app import add_web_app

__all__ = ["add_web_app"]
