"""The one-time labelling of data stored before labels were added on write.

Every patient resource is labelled with its sensitivity when it is written
(``takamul.fhir.sensitivity``), and consent is then enforced in SQL on the ``_security`` index.
A database written by an earlier version holds unlabelled sensitive data, which SQL would not
see; so at start-up, once per database, every current patient resource is labelled in place
(its content, the current version's content and its ``_security`` index rows; the labels are
server-derived metadata, not a new version) and ``store_setting`` records that it was done.
Until then the guard checks every search match one by one, as before.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import orjson
from sqlalchemy import and_, insert, select, update

from takamul.fhir.definitions import definitions
from takamul.fhir.sensitivity import label_sensitive
from takamul.store.schema import resource, resource_version, store_setting

__all__ = ["LABELS_SETTING", "ensure_labelled", "labels_complete"]

log = logging.getLogger(__name__)

LABELS_SETTING = "sensitivity-labels"
_BATCH = 2000


def labels_complete(session: Any) -> bool:
    row = session.conn.execute(
        select(store_setting.c.value).where(store_setting.c.key == LABELS_SETTING)
    ).first()
    return row is not None


def ensure_labelled(store: Any) -> int:
    """Label what an earlier version stored unlabelled (once per database); the number of
    resources that gained a label. ``store``: the ``Store`` being opened (typed loosely: the
    repository imports this module, and imports flow one way)."""
    with store.reading() as session:
        if labels_complete(session):
            return 0
    types = sorted(definitions().patient_data())
    labelled, after = 0, 0
    while True:
        batch, after = store.write(partial(_label_batch, types=types, after=after))
        labelled += batch
        if after < 0:
            break
    store.write(_record_done)
    if labelled:
        log.info("labelled %d sensitive resources stored by an earlier version", labelled)
    return labelled


def _label_batch(session: Any, *, types: list[str], after: int) -> tuple[int, int]:
    rows = session.conn.execute(
        select(resource.c.rid, resource.c.res_type, resource.c.version, resource.c.content)
        .where(
            resource.c.rid > after,
            resource.c.res_type.in_(types),
            resource.c.deleted.is_(False),
        )
        .order_by(resource.c.rid)
        .limit(_BATCH)
    ).all()
    count = 0
    for row in rows:
        if row.content and _relabel(session, row):
            count += 1
    return count, (rows[-1].rid if len(rows) == _BATCH else -1)


def _relabel(session: Any, row: Any) -> bool:
    body = orjson.loads(row.content)
    labelled = label_sensitive(body)
    if labelled is body:
        return False
    content = orjson.dumps(labelled)
    session.conn.execute(update(resource).where(resource.c.rid == row.rid).values(content=content))
    session.conn.execute(
        update(resource_version)
        .where(and_(resource_version.c.rid == row.rid, resource_version.c.version == row.version))
        # a current version's JSON is the resource's alone (``schema.version_content``)
        .where(resource_version.c.content.is_not(None))
        .values(content=content)
    )
    session.reindex(row.rid, row.res_type, labelled)
    return True


def _record_done(session: Any) -> None:
    if not labels_complete(session):
        session.conn.execute(insert(store_setting).values(key=LABELS_SETTING, value="1"))
