"""One settings object for the whole process, read from ``TAKAMUL_*`` environment variables.

Command-line options override the environment; the defaults give a working embedded store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_DATA_DIR = Path(os.environ.get("TAKAMUL_DATA_DIR", "data"))


def _default_db() -> str:
    return f"sqlite:///{DEFAULT_DATA_DIR / 'takamul.sqlite'}"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = field(default_factory=_default_db)
    # The public base of the FHIR API, used in Bundle links and Location headers; derived from
    # the request when unset, which is right behind most proxies that set Host.
    base_url: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    default_page_size: int = 50
    max_page_size: int = 1000
    # Every write is validated against the R4 definitions; turning it off is for trusted bulk
    # reloads of data that was validated before.
    validate: bool = True
    # Where $export writes its NDJSON files (one folder per job).
    export_dir: Path = DEFAULT_DATA_DIR / "exports"
    # The client registry links every Patient as it is stored (Person golden records,
    # Patient/$match, review queue); off only for stores that are not a patient registry.
    mpi: bool = True
    # How registry transactions of several server processes on PostgreSQL take turns:
    # "per-key" locks the registration's block keys and the persons it may change, so that
    # unrelated registrations link in parallel; "global" takes one lock for every link (the
    # behaviour before per-key locks, kept to compare). SQLite has one writer either way.
    registry_locks: str = "per-key"
    # Where the client registry's candidate index lives: "memory", every registration held in
    # each server process (fastest; its memory and start-up time grow with the population),
    # "store", tables of the database that every process shares and looks candidates up in
    # (a national population; docs/mpi.md), or "auto": the store on PostgreSQL, memory on
    # SQLite. Every process of one store must choose alike.
    registry_index: str = "auto"
    # Every request must carry a SMART access token or a login session; off only for an open
    # development server (refused in production: TAKAMUL_PRODUCTION=true).
    auth: bool = True

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        defaults = cls()
        settings = cls(
            database_url=env.get("TAKAMUL_DATABASE_URL") or _default_db(),
            base_url=env.get("TAKAMUL_BASE_URL") or None,
            max_body_bytes=int(env.get("TAKAMUL_MAX_BODY_BYTES", defaults.max_body_bytes)),
            default_page_size=int(env.get("TAKAMUL_DEFAULT_PAGE_SIZE", defaults.default_page_size)),
            max_page_size=int(env.get("TAKAMUL_MAX_PAGE_SIZE", defaults.max_page_size)),
            validate=env.get("TAKAMUL_VALIDATE", "true").lower() not in ("0", "false", "no"),
            export_dir=Path(env.get("TAKAMUL_EXPORT_DIR") or defaults.export_dir),
            mpi=env.get("TAKAMUL_MPI", "true").lower() not in ("0", "false", "no"),
            registry_locks=env.get("TAKAMUL_REGISTRY_LOCKS") or defaults.registry_locks,
            registry_index=env.get("TAKAMUL_REGISTRY_INDEX") or defaults.registry_index,
            auth=env.get("TAKAMUL_AUTH", "true").lower() not in ("0", "false", "no"),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **clean)  # type: ignore[arg-type]
