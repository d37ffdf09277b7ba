"""Routes of the equity analytics: the newest published report as JSON for dashboards and as
the self-contained HTML page (``takamul equity report --publish`` computes and publishes it)."""

from __future__ import annotations

from fastapi import FastAPI, Response

from takamul.equity.publish import latest_report
from takamul.fhir.outcome import FhirError
from takamul.store.repository import Store

__all__ = ["add_equity_routes"]

NOT_YET = "No equity report has been published yet; run `takamul equity report --db URL --publish`"


def add_equity_routes(app: FastAPI, store: Store) -> None:
    @app.get("/equity/report")
    def report_json() -> Response:
        found = latest_report(store.reader)
        if found is None:
            raise FhirError(404, NOT_YET, "not-found")
        return Response(found[0], 200, media_type="application/json")

    @app.get("/equity/report.html")
    def report_html() -> Response:
        found = latest_report(store.reader)
        if found is None:
            raise FhirError(404, NOT_YET, "not-found")
        return Response(found[1], 200, media_type="text/html; charset=utf-8")
