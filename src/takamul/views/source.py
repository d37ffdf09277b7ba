"""Where a view's resources come from: NDJSON files and folders, or the shared record's database.

Every line is parsed; a line that is not a JSON object with a ``resourceType`` stops the run
with its file and line number (a view over silently dropped data would be wrong without
anyone knowing). In a folder, files named after another resource type (``Observation.ndjson``,
``Observation.001.ndjson``, as Bulk Data exports name them) are skipped without reading.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import orjson

__all__ = [
    "NdjsonError",
    "SourceError",
    "count_database",
    "discover",
    "iter_database",
    "iter_ndjson",
]

# progress(bytes done so far in all files)
Progress = Callable[[int], None]


class SourceError(Exception):
    """Input that cannot be read: a missing file, an unreachable or foreign database."""


class NdjsonError(SourceError):
    """A line of an NDJSON file that is not a FHIR resource."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
_TYPE_PREFIX = re.compile(r"^([A-Z][A-Za-z]+)(?:$|[.\-_])")


def _names_other_type(path: Path, resource_type: str) -> bool:
    from takamul.fhir.definitions import definitions

    m = _TYPE_PREFIX.match(path.name)
    if m is None:
        return False
    named = m.group(1)
    return named != resource_type and definitions().is_resource_type(named)


def discover(paths: Sequence[Path], resource_type: str | None = None) -> list[Path]:
    """The NDJSON files to read: files as given, folders' ``*.ndjson`` (and .gz) sorted by name.

    Raises :class:`SourceError` for a path that does not exist or a folder without NDJSON.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.endswith(_NDJSON_SUFFIXES)
            )
            if not found:
                raise SourceError(f"{path}: no *.ndjson files in this folder")
            if resource_type is not None:
                found = [p for p in found if not _names_other_type(p, resource_type)]
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SourceError(f"{path}: no such file or folder")
    return files


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(line reader, raw file whose tell() measures progress)."""
    raw: IO[bytes] = path.open("rb")
    if path.name.endswith(".gz"):
        reader = cast(IO[bytes], gzip.GzipFile(fileobj=raw))
        return reader, raw
    return raw, raw


def iter_ndjson(
    paths: Sequence[Path],
    resource_type: str | None = None,
    progress: Progress | None = None,
) -> Iterator[dict[str, Any]]:
    """Resources from NDJSON files or folders (see :func:`discover`), in file and line order.

    ``resource_type`` only narrows which files of a folder are read; resources of other types
    in the files read are still yielded (the view skips them). ``progress`` is called now and
    then with the number of bytes read so far, over all files.
    """
    files = discover(paths, resource_type)
    done = 0
    for path in files:
        try:
            reader, raw = _open(path)
        except OSError as err:
            raise SourceError(f"{path}: cannot read: {err.strerror or err}") from err
        with raw, reader:
            lineno = 0
            try:
                for lineno, line in enumerate(reader, 1):
                    if progress is not None and lineno % 2048 == 0:
                        progress(done + raw.tell())
                    if not line.strip():
                        continue
                    try:
                        resource = orjson.loads(line)
                    except orjson.JSONDecodeError as err:
                        raise NdjsonError(path, lineno, f"invalid JSON ({err})") from err
                    if type(resource) is not dict or not isinstance(
                        resource.get("resourceType"), str
                    ):
                        raise NdjsonError(
                            path, lineno, "not a FHIR resource (a JSON object with resourceType)"
                        )
                    yield resource
            except (OSError, EOFError) as err:  # unreadable or truncated .gz
                raise NdjsonError(path, lineno + 1, f"cannot read: {err}") from err
            done += raw.tell()
        if progress is not None:
            progress(done)


def total_bytes(paths: Sequence[Path], resource_type: str | None = None) -> int:
    """The size of the files :func:`iter_ndjson` will read (for a progress bar)."""
    return sum(p.stat().st_size for p in discover(paths, resource_type))


# The shared record's database ---------------------------------------------------------------


def _reader_engine(url: str) -> Any:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from takamul.fhir.outcome import FhirError
    from takamul.store.engine import make_engines

    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise SourceError(f"not a database URL: {url!r}") from err
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        # make_engines would create a missing SQLite file; reading must not.
        if not database or database == ":memory:" or not Path(database).is_file():
            raise SourceError(f"no such SQLite database: {database or url}")
    try:
        return make_engines(url)[1]
    except FhirError as err:
        raise SourceError(str(err)) from err


def _resource_query(resource_type: str, count: bool = False) -> Any:
    from sqlalchemy import func, select

    from takamul.store.schema import resource

    condition = (
        (resource.c.res_type == resource_type)
        & (resource.c.deleted.is_(False))
        & (resource.c.content.is_not(None))
    )
    if count:
        return select(func.count()).select_from(resource).where(condition)
    return select(resource.c.content).where(condition).order_by(resource.c.rid)


def count_database(url: str, resource_type: str) -> int:
    """How many current (not deleted) resources of ``resource_type`` the database holds."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = _reader_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(_resource_query(resource_type, count=True)).scalar_one())
    except SQLAlchemyError as err:
        raise SourceError(f"cannot read the resource table of {_redact(url)}: {err}") from err
    finally:
        engine.dispose()


def iter_database(
    url: str, resource_type: str, batch_size: int = 1000, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """The current, non-deleted resources of ``resource_type`` in the shared record (read-only).

    Rows stream in batches (a server-side cursor on PostgreSQL); ``progress`` gets the number of
    resources read so far.
    """
    from sqlalchemy.exc import SQLAlchemyError

    engine = _reader_engine(url)
    n = 0
    try:
        with engine.connect() as conn:
            result = conn.execution_options(yield_per=batch_size).execute(
                _resource_query(resource_type)
            )
            for (content,) in result:
                n += 1
                if progress is not None and n % 1024 == 0:
                    progress(n)
                yield orjson.loads(content)
    except SQLAlchemyError as err:
        raise SourceError(f"cannot read the resource table of {_redact(url)}: {err}") from err
    finally:
        engine.dispose()
    if progress is not None:
        progress(n)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
