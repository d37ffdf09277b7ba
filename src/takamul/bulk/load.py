"""``takamul load``: FHIR NDJSON files, Bundle files and folders of them into the shared record.

Lines are validated and indexed in worker processes and stored in batches, one transaction per
batch with the file's checkpoint, so an interrupted load resumes where it stopped. Every
rejected line goes to the error file with its reason; a bad line never stops the load.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import select

from takamul.fhir.outcome import FhirError, OutcomeIssue, operation_outcome
from takamul.fhir.search_values import SearchIndexer
from takamul.store.bulkwrite import PreparedResource, prepare, put_many
from takamul.store.repository import Store
from takamul.store.schema import load_checkpoint

SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz")
# Ids for resources that come without one are derived from where they were read, so a second
# load of the same file gives the same ids rather than duplicates.
ID_NAMESPACE = uuid.UUID("6f1c3d1e-6a55-4f0b-9f7e-0d6c7a9b2e41")

# Called after each batch with (bytes consumed, resources stored or rejected) since the last call.
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class LoadSummary:
    loaded: int = 0  # created
    updated: int = 0
    rejected: int = 0
    skipped: int = 0  # lines already stored by an earlier, interrupted run
    files: int = 0
    seconds: float = 0.0
    errors_path: Path | None = None
    per_type: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.loaded + self.updated) / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class Line:
    number: int  # 1-based line (or Bundle entry) number in its file
    raw: bytes | dict[str, Any]


@dataclass(slots=True)
class Prepared:
    number: int
    resource: PreparedResource | None
    error: dict[str, Any] | None


MANIFEST = "manifest.json"


def discover(paths: list[Path]) -> list[Path]:
    """Files to load: the paths given; in a folder, the files listed by its Bulk Data manifest
    (``manifest.json``, as ``$export`` and ``takamul synth`` write it), else every NDJSON/JSON
    file under it, sorted. A manifest given as a file stands for the files it lists.

    Without the manifest rule, loading an export's folder read the manifest itself (and any
    files kept beside the data, such as synth's ``truth/``) as resources, and rejected them.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            listed = manifest_outputs(path / MANIFEST)
            files.extend(
                listed
                if listed is not None
                else sorted(p for p in path.rglob("*") if p.name.endswith(SUFFIXES))
            )
        elif path.exists():
            listed = manifest_outputs(path) if path.name == MANIFEST else None
            files.extend(listed if listed is not None else [path])
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return files


def manifest_outputs(manifest: Path) -> list[Path] | None:
    """The files a Bulk Data manifest lists (``output[].url``, relative to its folder; a URL's
    last segment when it was downloaded), or None when ``manifest`` is absent or not a
    manifest. A listed file that is not there is an error: loading the rest would lose it."""
    if not manifest.is_file():
        return None
    try:
        doc = orjson.loads(manifest.read_bytes())
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or "resourceType" in doc:
        return None  # a FHIR resource or Bundle that happens to have the name
    outputs = doc.get("output")
    if not isinstance(outputs, list):
        return None
    files: list[Path] = []
    for number, output in enumerate(outputs, start=1):
        url = output.get("url") if isinstance(output, dict) else None
        if not isinstance(url, str) or not url:
            raise FileNotFoundError(f"{manifest}: output {number} has no url")
        name = url.rsplit("/", 1)[-1] if "://" in url else url
        file = manifest.parent / name
        if not file.is_file():
            raise FileNotFoundError(
                f"{manifest} lists {url}, which does not exist as {file}: put the file "
                "there, or load the files by name instead of the folder"
            )
        files.append(file)
    return files


def load_paths(
    store: Store,
    paths: list[Path],
    errors_path: Path,
    *,
    batch_size: int = 1000,
    workers: int | None = None,
    progress: Progress | None = None,
    source: str = "urn:takamul:load",
) -> LoadSummary:
    """Load every file under ``paths``, reporting to ``progress`` after each batch."""
    started = time.perf_counter()
    summary = LoadSummary(errors_path=errors_path)
    workers = workers if workers is not None else max(1, (os.cpu_count() or 1) - 1)
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    pool: Executor | None = (
        ProcessPoolExecutor(workers, initializer=_init_worker) if workers > 0 else None
    )
    try:
        with errors_path.open("ab") as errors:
            for file in discover(paths):
                summary.files += 1
                _load_file(store, file, errors, summary, pool, batch_size, progress, source)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if summary.loaded or summary.updated:
        store.refresh_statistics()
    summary.seconds = time.perf_counter() - started
    return summary


# -- one file ---------------------------------------------------------------------------


def _source_key(file: Path) -> str:
    stat = file.stat()
    text = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()


def _load_file(
    store: Store,
    file: Path,
    errors: IO[bytes],
    summary: LoadSummary,
    pool: Executor | None,
    batch_size: int,
    progress: Progress | None,
    source: str,
) -> None:
    key = _source_key(file)
    done = _checkpoint(store, key)
    size = file.stat().st_size
    if done is not None and done < 0:  # completed earlier
        if progress:
            progress(size, 0)
        return
    # A JSON file is read and parsed once, whichever way it is then loaded.
    document = _read_document(file) if file.name.endswith((".json", ".json.gz")) else None
    if document is not None and _is_transaction_bundle(document[1]):
        before = summary.loaded + summary.updated + summary.rejected
        _load_transaction(store, file, key, document[1], errors, summary, source)
        if progress:
            progress(size, summary.loaded + summary.updated + summary.rejected - before)
        return
    reader = _BytesCounter()
    lines = _ndjson_lines(file, reader) if document is None else _document_lines(document, reader)
    skip = done or 0
    # Pipelined: workers prepare the next batches while this process stores the oldest one.
    in_flight: deque[tuple[Future[list[Prepared]], int]] = deque()
    depth = 1 + (getattr(pool, "_max_workers", 0) or 0)

    def store_oldest() -> None:
        future, last_line = in_flight.popleft()
        prepared = future.result()
        _store_batch(store, file, key, prepared, last_line, errors, summary)
        if progress:
            progress(reader.take(), len(prepared))

    for batch in _batches(lines, batch_size):
        if batch[-1].number <= skip:
            summary.skipped += len(batch)
            continue
        fresh = [line for line in batch if line.number > skip]
        summary.skipped += len(batch) - len(fresh)
        in_flight.append((_submit(fresh, pool, source, key), batch[-1].number))
        if len(in_flight) > depth:
            store_oldest()
    while in_flight:
        store_oldest()
    _mark_complete(store, key, str(file))
    if progress:
        progress(reader.take(), 0)


class _BytesCounter:
    def __init__(self) -> None:
        self.total = 0
        self.reported = 0

    def add(self, n: int) -> None:
        self.total += n

    def take(self) -> int:
        delta, self.reported = self.total - self.reported, self.total
        return delta


def _open(file: Path) -> IO[bytes]:
    if file.name.endswith(".gz"):
        return gzip.open(file, "rb")  # type: ignore[return-value]
    return file.open("rb")


def _ndjson_lines(file: Path, counter: _BytesCounter) -> Iterator[Line]:
    with _open(file) as fh:
        for number, raw in enumerate(fh, start=1):
            counter.add(len(raw))
            if raw.strip():
                yield Line(number, raw)


def _read_document(file: Path) -> tuple[bytes, Any]:
    """The raw bytes of a JSON file and its parsed content (None when it is not valid JSON)."""
    with _open(file) as fh:
        raw = fh.read()
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw, None


def _document_lines(document: tuple[bytes, Any], counter: _BytesCounter) -> Iterator[Line]:
    raw, doc = document
    counter.add(len(raw))
    if doc is None:
        yield Line(1, raw)  # reported as invalid JSON by the preparer
    elif isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        for number, entry in enumerate(doc.get("entry") or [], start=1):
            res = entry.get("resource") if isinstance(entry, dict) else None
            yield Line(number, res if isinstance(res, dict) else {"_bad_entry": entry})
    else:
        yield Line(1, doc if isinstance(doc, dict) else raw)


def _batches(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    batch: list[Line] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_transaction_bundle(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("resourceType") == "Bundle"
        and doc.get("type") in ("transaction", "batch")
    )


# -- preparing (in workers) -----------------------------------------------------------------

_INDEXER: SearchIndexer | None = None


def _init_worker() -> None:
    global _INDEXER
    _INDEXER = SearchIndexer()


def _indexer() -> SearchIndexer:
    global _INDEXER
    if _INDEXER is None:
        _INDEXER = SearchIndexer()
    return _INDEXER


def prepare_lines(lines: list[Line], source: str, key: str) -> list[Prepared]:
    """Parse, validate, stamp and index each line; never raises for a bad line."""
    now = round(time.time(), 6)
    out = []
    for line in lines:
        try:
            body = orjson.loads(line.raw) if isinstance(line.raw, bytes) else line.raw
            if isinstance(body, dict) and "_bad_entry" in body:
                raise FhirError(400, "This Bundle entry holds no resource")
            if isinstance(body, dict) and "id" not in body and "resourceType" in body:
                body = {**body, "id": str(uuid.uuid5(ID_NAMESPACE, f"{key}:{line.number}"))}
            out.append(Prepared(line.number, prepare(body, _indexer(), True, source, now), None))
        except orjson.JSONDecodeError as err:
            issue = OutcomeIssue("error", "structure", f"Not valid JSON: {err}")
            out.append(Prepared(line.number, None, _error(line, [issue])))
        except FhirError as err:
            out.append(Prepared(line.number, None, _error(line, err.issues)))
    return out


def _error(line: Line, issues: list[OutcomeIssue]) -> dict[str, Any]:
    body: Any = line.raw
    if isinstance(body, bytes):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = None
    ident = {}
    if isinstance(body, dict):
        ident = {"resourceType": body.get("resourceType"), "id": body.get("id")}
    return {"line": line.number, **ident, "outcome": operation_outcome(issues)}


def _submit(
    lines: list[Line], pool: Executor | None, source: str, key: str
) -> Future[list[Prepared]]:
    """Prepare a batch in a worker process, or here when there are no workers."""
    if pool is not None:
        return pool.submit(prepare_lines, lines, source, key)
    done: Future[list[Prepared]] = Future()
    done.set_result(prepare_lines(lines, source, key))
    return done


# -- storing ----------------------------------------------------------------------------------


def _store_batch(
    store: Store,
    file: Path,
    key: str,
    prepared: list[Prepared],
    last_line: int,
    errors: IO[bytes],
    summary: LoadSummary,
) -> None:
    good: dict[tuple[str, str], PreparedResource] = {}
    for p in prepared:
        if p.resource is not None:
            # The last version of an id within a batch wins, as it would one by one.
            good[(p.resource.resource_type, p.resource.id)] = p.resource
    bad = [p.error for p in prepared if p.error is not None]
    items = list(good.values())

    def work(session: Any) -> tuple[int, int]:
        counts = put_many(session.conn, items)
        _save_checkpoint(session.conn, key, str(file), last_line, False)
        return counts

    created, updated = store.write(work)
    summary.loaded += created
    summary.updated += updated + (len(prepared) - len(bad) - len(items))
    for item in items:
        summary.per_type[item.resource_type] = summary.per_type.get(item.resource_type, 0) + 1
    for err in bad:
        errors.write(orjson.dumps({"source": str(file), **err}) + b"\n")
    errors.flush()
    summary.rejected += len(bad)


def _checkpoint(store: Store, key: str) -> int | None:
    """Lines already stored from this file; -1 if it was completed; None if never seen."""
    with store.reading() as session:
        row = session.conn.execute(
            select(load_checkpoint).where(load_checkpoint.c.source_key == key)
        ).first()
    if row is None:
        return None
    return -1 if row.completed else int(row.lines_done)


def _save_checkpoint(conn: Any, key: str, source: str, lines: int, completed: bool) -> None:
    updated = conn.execute(
        load_checkpoint.update()
        .where(load_checkpoint.c.source_key == key)
        .values(lines_done=lines, completed=completed)
    )
    if updated.rowcount == 0:
        conn.execute(
            load_checkpoint.insert().values(
                source_key=key, source=source, lines_done=lines, completed=completed
            )
        )


def _mark_complete(store: Store, key: str, source: str) -> None:
    def work(session: Any) -> None:
        row = session.conn.execute(
            select(load_checkpoint.c.lines_done).where(load_checkpoint.c.source_key == key)
        ).first()
        _save_checkpoint(session.conn, key, source, row.lines_done if row else 0, True)

    store.write(work)


def _load_transaction(
    store: Store,
    file: Path,
    key: str,
    bundle: dict[str, Any],
    errors: IO[bytes],
    summary: LoadSummary,
    source: str,
) -> None:
    from takamul.rest.bundles import process
    from takamul.rest.interactions import RequestContext

    try:
        result = process(store, bundle, RequestContext("urn:takamul:load", source=source), 50)
    except FhirError as err:
        errors.write(
            orjson.dumps({"source": str(file), "line": 0, "outcome": err.outcome()}) + b"\n"
        )
        summary.rejected += len(bundle.get("entry") or [])
        _mark_complete(store, key, str(file))
        return
    for number, entry in enumerate(result["entry"], start=1):
        status = entry["response"]["status"]
        if status.startswith("201"):
            summary.loaded += 1
        elif status.startswith("2"):
            summary.updated += 1
        else:
            summary.rejected += 1
            outcome = entry["response"].get("outcome")
            errors.write(
                orjson.dumps({"source": str(file), "line": number, "outcome": outcome}) + b"\n"
            )
    _mark_complete(store, key, str(file))
