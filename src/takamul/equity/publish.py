"""Published equity reports: ``takamul equity report --publish`` keeps each report (JSON and
HTML) in the shared record's database, and the API serves the newest to dashboards
(``GET /equity/report``) and people (``GET /equity/report.html``) without recomputing."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import Column, Engine, Float, Integer, LargeBinary, MetaData, Table, select

from takamul.store.schema import RowId

__all__ = ["equity_report", "latest_report", "publish_report"]

equity_metadata = MetaData()

equity_report = Table(
    "equity_report",
    equity_metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("created", Float, nullable=False),
    Column("people", Integer, nullable=False),
    Column("report_json", LargeBinary, nullable=False),
    Column("report_html", LargeBinary, nullable=False),
)


def publish_report(engine: Engine, report: dict[str, Any], html: str) -> int:
    equity_metadata.create_all(engine)
    with engine.begin() as conn:
        return int(
            conn.execute(
                equity_report.insert()
                .values(
                    created=time.time(),
                    people=int(report.get("people", 0)),
                    report_json=orjson.dumps(report),
                    report_html=html.encode("utf-8"),
                )
                .returning(equity_report.c.id)
            ).scalar_one()
        )


def latest_report(engine: Engine) -> tuple[bytes, bytes, float] | None:
    """(JSON, HTML, created) of the newest published report, or None."""
    equity_metadata.create_all(engine)
    with engine.connect() as conn:
        row = conn.execute(
            select(equity_report).order_by(equity_report.c.id.desc()).limit(1)
        ).first()
    return (row.report_json, row.report_html, row.created) if row else None
