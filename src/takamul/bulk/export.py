"""Bulk Data Access v2 ``$export``: system, Patient and Group level, run in the background.

A job streams the stored JSON of each resource straight into one NDJSON file per type, so an
export costs little more than reading the rows. Job state lives in the store (``export_job``)
so that any API worker can answer a poll, and cancelling deletes the files.

A job is bound to who asked for it (``export_requester``): its files hold what that requester's
grant let it read, so only the same requester with the same grant may poll, cancel or download
it; anyone else is told the job does not exist.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    String,
    Table,
    Text,
    and_,
    false,
    insert,
    or_,
    select,
    update,
)

from takamul.fhir.definitions import definitions
from takamul.fhir.outcome import FhirError
from takamul.store.guard import Guard
from takamul.store.records import instant
from takamul.store.repository import Store
from takamul.store.schema import export_job, resource, sp_reference

NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
FLUSH_EVERY = 2000

# Who asked for each job, in a table of its own rather than new columns of ``export_job``: the
# schema is created with ``create_all``, which adds missing tables to an existing database (SQLite
# or PostgreSQL) but never columns to an existing table.
export_metadata = MetaData()
export_requester = Table(
    "export_requester",
    export_metadata,
    Column("job_id", String(64), primary_key=True),
    Column("requester", Text, nullable=False),  # client:<id> or user:<login>
    Column("scopes", Text, nullable=False),  # the granted scopes, sorted
    Column("patient", String(64), nullable=True),  # the launch patient of patient/ scopes
    Column("facility", String(64), nullable=True),
)


@dataclass(frozen=True, slots=True)
class ExportRequester:
    """Who asked for an export, with the grant its files were made under."""

    requester: str
    scopes: str
    patient: str | None = None
    facility: str | None = None


def _not_found(job_id: str) -> FhirError:
    # the same answer whether the job does not exist or is someone else's: it reveals nothing
    return FhirError(404, f"No export job {job_id}; it may have been cancelled", "not-found")


@dataclass(frozen=True, slots=True)
class ExportRequest:
    kind: str  # system | patient | group
    request_url: str
    types: tuple[str, ...] | None
    since: float | None
    group_id: str | None = None
    # the requester's store guard: the job runs later, in its own thread, and must export
    # only what the requester may read (consent restrictions included)
    guard: Guard | None = None
    # who asked (None on a server without access control): only they may see the job
    requester: ExportRequester | None = None


@dataclass(slots=True)
class JobStatus:
    status: str
    progress: str | None
    manifest: dict[str, Any] | None
    error: str | None


class Exporter:
    """Starts, reports on and cancels export jobs; one background thread runs them in turn."""

    def __init__(self, store: Store, export_dir: Path) -> None:
        self.store = store
        self.export_dir = export_dir
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="takamul-export")
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        export_metadata.create_all(store.writer)
        self._fail_interrupted()

    def _fail_interrupted(self) -> None:
        # A job that was running when the server stopped will never finish.
        self.store.write(
            lambda s: s.conn.execute(
                update(export_job)
                .where(export_job.c.status.in_(("accepted", "running")))
                .values(status="failed", error="The server stopped during the export; retry")
            )
        )

    def start(self, request: ExportRequest) -> str:
        job_id = uuid.uuid4().hex
        now = round(time.time(), 6)
        if request.kind == "group":
            self._check_group(str(request.group_id))
        job = export_job.insert().values(
            job_id=job_id,
            status="accepted",
            request=request.request_url,
            kind=request.kind,
            group_id=request.group_id,
            types=",".join(request.types) if request.types else None,
            since=request.since,
            transaction_time=now,
        )
        owner = request.requester
        self.store.write(lambda s: self._insert_job(s.conn, job, job_id, owner))
        self.pool.submit(self._run, job_id, request, now)
        return job_id

    @staticmethod
    def _insert_job(conn: Any, job: Any, job_id: str, owner: ExportRequester | None) -> None:
        # the job and its requester in one transaction: never a job without its owner
        conn.execute(job)
        if owner is not None:
            conn.execute(
                insert(export_requester).values(
                    job_id=job_id,
                    requester=owner.requester,
                    scopes=owner.scopes,
                    patient=owner.patient,
                    facility=owner.facility,
                )
            )

    def _check_group(self, group_id: str) -> None:
        with self.store.reading() as s:
            s.read("Group", group_id)

    def status(self, job_id: str, requester: ExportRequester | None = None) -> JobStatus:
        """The job's state, for its requester; with access control off (``requester`` None)
        for anyone."""
        with self.store.reading() as s:
            row = s.conn.execute(select(export_job).where(export_job.c.job_id == job_id)).first()
            owner = s.conn.execute(
                select(export_requester).where(export_requester.c.job_id == job_id)
            ).first()
        if row is None or row.status == "cancelled":
            raise _not_found(job_id)
        # a job with no recorded requester (made by an open server, or before jobs were bound)
        # belongs to no one once access control is on
        if requester is not None and (owner is None or _requester_of(owner) != requester):
            raise _not_found(job_id)
        manifest = orjson.loads(row.manifest) if row.manifest else None
        return JobStatus(row.status, row.progress, manifest, row.error)

    def cancel(self, job_id: str, requester: ExportRequester | None = None) -> None:
        self.status(job_id, requester)
        with self.lock:
            self.cancelled.add(job_id)
        self._set(job_id, status="cancelled")
        shutil.rmtree(self.export_dir / job_id, ignore_errors=True)

    def file_path(self, job_id: str, name: str, requester: ExportRequester | None = None) -> Path:
        if "/" in name or name.startswith(".") or not name.endswith(".ndjson"):
            raise FhirError(404, f"No export file {name}", "not-found")
        if self.status(job_id, requester).status != "completed":
            raise FhirError(404, f"Export {job_id} has not completed", "not-found")
        path = self.export_dir / job_id / name
        if not path.exists():
            raise FhirError(404, f"No export file {name} in job {job_id}", "not-found")
        return path

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- the job ------------------------------------------------------------------------------

    def _set(self, job_id: str, **values: Any) -> None:
        # A cancelled job stays cancelled whatever its thread was doing at the time.
        where = and_(export_job.c.job_id == job_id, export_job.c.status != "cancelled")
        self.store.write(lambda s: s.conn.execute(update(export_job).where(where).values(**values)))

    def _is_cancelled(self, job_id: str) -> bool:
        with self.lock:
            if job_id in self.cancelled:
                return True
        # Another server process may have taken the DELETE: the store is the truth.
        with self.store.reading() as s:
            status = s.conn.execute(
                select(export_job.c.status).where(export_job.c.job_id == job_id)
            ).scalar()
        return status == "cancelled"

    def _run(self, job_id: str, request: ExportRequest, transaction_time: float) -> None:
        try:
            self._set(job_id, status="running", progress="starting")
            outputs = self._write_files(job_id, request, transaction_time)
            if self._is_cancelled(job_id):
                return
            manifest = {
                "transactionTime": instant(transaction_time),
                "request": request.request_url,
                # a job bound to its requester serves its files only with the token
                "requiresAccessToken": request.requester is not None,
                "output": outputs,
                "error": [],
            }
            self._set(job_id, status="completed", progress="done", manifest=orjson.dumps(manifest))
        except Exception as err:  # the job must end in a state a client can see
            self._set(job_id, status="failed", error=f"{type(err).__name__}: {err}")

    def _write_files(
        self, job_id: str, request: ExportRequest, transaction_time: float
    ) -> list[dict[str, Any]]:
        folder = self.export_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        outputs = []
        types = self._types(request)
        patients = self._group_patients(request) if request.kind == "group" else None
        for n, rtype in enumerate(types, start=1):
            if self._is_cancelled(job_id):
                return []
            count = self._export_type(folder, rtype, request, transaction_time, patients)
            if count:
                outputs.append({"type": rtype, "url": f"{rtype}.ndjson", "count": count})
            self._set(job_id, progress=f"{n}/{len(types)} resource types ({rtype})")
        return outputs

    def _types(self, request: ExportRequest) -> list[str]:
        defs = definitions()
        if request.kind == "system":
            allowed = sorted(defs.resource_types)
        else:
            allowed = sorted({"Patient", *defs.patient_data()})
        if request.types is None:
            return allowed
        return [t for t in request.types if t in allowed]

    def _group_patients(self, request: ExportRequest) -> list[str]:
        with self.store.reading() as s:
            group = s.read("Group", str(request.group_id)).json()
        ids = []
        for member in group.get("member", []):
            ref = member.get("entity", {}).get("reference", "")
            if ref.startswith("Patient/"):
                ids.append(ref.split("/", 1)[1])
        return ids

    def _export_type(
        self,
        folder: Path,
        rtype: str,
        request: ExportRequest,
        transaction_time: float,
        patients: list[str] | None,
    ) -> int:
        conds: list[ColumnElement[bool]] = [
            resource.c.res_type == rtype,
            resource.c.deleted == false(),
            resource.c.last_updated <= transaction_time,
        ]
        if request.since is not None:
            conds.append(resource.c.last_updated >= request.since)
        if request.kind != "system":
            conds.append(_in_patient_compartment(rtype, patients))
        stmt = select(resource.c.content).where(and_(*conds)).order_by(resource.c.rid)
        count = 0
        path = folder / f"{rtype}.ndjson"
        with self.store.reader.connect() as conn, path.open("wb") as out:
            result = conn.execution_options(stream_results=True, yield_per=FLUSH_EVERY).execute(
                stmt
            )
            for chunk in result.partitions(FLUSH_EVERY):
                lines = [row.content for row in chunk]
                if request.guard is not None:
                    guard = request.guard
                    lines = [c for c in lines if guard.visible(rtype, orjson.loads(c), "r")]
                if lines:
                    out.write(b"\n".join(lines) + b"\n")
                count += len(lines)
        if count == 0:
            path.unlink()
        return count


def _requester_of(row: Any) -> ExportRequester:
    return ExportRequester(row.requester, row.scopes, row.patient, row.facility)


def _in_patient_compartment(rtype: str, patients: list[str] | None) -> ColumnElement[bool]:
    """Resources in the compartment of any patient (or of the listed patients)."""
    if rtype == "Patient":
        return resource.c.res_id.in_(patients) if patients is not None else resource.c.rid > 0
    params = definitions().patient_data().get(rtype, [])
    conds = [
        sp_reference.c.res_type == rtype,
        sp_reference.c.param.in_(params),
        sp_reference.c.target_type == "Patient",
    ]
    if patients is not None:
        conds.append(sp_reference.c.target_id.in_(patients))
    return or_(resource.c.rid.in_(select(sp_reference.c.rid).where(and_(*conds))))
