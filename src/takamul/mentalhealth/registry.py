"""The collaborative-care registry: where every enrolled person stands on a date D.

The person is the golden record: every Patient record linked to one person (``mpi_member``)
counts, whichever facility wrote it; a record not linked yet is a person of its own
(``~patient-id``). Dates are the local calendar dates written in the resources (the first ten
characters of a FHIR date or dateTime), so a contact at 01:00 +03:00 counts on its own day.

Rules (also in docs/mental-health.md, "Collaborative-care registry"):

Enrolment
  1. An ``EpisodeOfCare`` typed ``collaborative-care`` in ``CARE_PROGRAMME_SYSTEM`` whose
     ``period.start`` is on or before D, with status planned, waitlist, active or onhold, or
     finished/cancelled with ``period.end`` after D (a person discharged by D is not in the
     registry). ``enrolled_on`` is the earliest ``period.start`` of the person's current
     episodes. The care manager is the episode's ``careManager`` and every participant member
     of its ``team`` CareTeams; its facility is the episode's ``managingOrganization`` (or the
     team's).
  2. Our choice, without any collaborative-care EpisodeOfCare starting on or before D (current
     or not): a person with a depression or anxiety diagnosis (SNOMED 35489007, 370143000,
     197480006; ICD-10 F32*, F33*, F41*; not refuted or entered-in-error) recorded on or before
     D and a PHQ-9 >= 10 or GAD-7 >= 10 on or before D is enrolled on the day of the first such
     score (the "enrolling score"). The facility is then the home (``managingOrganization``) of
     the person's records.
Scores
  Total-score Observations LOINC 44261-6 (PHQ-9) and 70274-6 (GAD-7), status final, amended or
  corrected, dated (``effective[x]``, else ``issued``) on or before D, value ``valueInteger``
  or ``valueQuantity.value``. Same-day ties: the later time, then the larger id. Baseline: the
  first score on or after ``enrolled_on`` (for rule 2 this is the enrolling score). Latest:
  the last score on or after ``enrolled_on``. Change from baseline % = (latest - baseline) /
  baseline * 100, rounded to one decimal (empty when the baseline is 0 or missing).
Status (first rule that applies)
  weeks in care = whole weeks from ``enrolled_on`` to D.
  ``new``: fewer than 28 days in care (< 4 weeks).
  ``remission``: the latest PHQ-9 < 5 and the latest GAD-7 < 5, each where measured (at least
  one of them measured).
  ``response``: the primary measure (PHQ-9 when the person has a PHQ-9 baseline, else GAD-7)
  dropped by >= 50 %: 2 * latest <= baseline (exactly half is a response).
  ``not-improving``: 70 days (10 weeks) or more in care and no response, also when there is
  no follow-up score after the baseline (nothing shows the person is better).
  ``improving``: otherwise.
Flags
  ``safety``: an active ``Flag`` coded SNOMED 225444004 (at risk for suicide) on any record of
  the person: status active, ``period.start`` on or before D (or none), no ``period.end`` or
  one after D.
  ``needs_psychiatric_review``: status ``not-improving`` with no psychiatric case review since
  the latest score (a review that saw the latest data clears it until a new score), or an
  active suicide-risk Flag created (``period.start``) after the last psychiatric case review.
  A psychiatric case review is a completed ``ClinicalImpression`` coded
  ``REVIEW_SYSTEM|psychiatric-case-review`` on the person, dated on or before D (see
  :func:`record_recommendation`).
  ``overdue_contact``: the last contact (or ``enrolled_on`` when there is none yet) is more than
  30 days before D. Contacts are finished ``Encounter``s (``period.start``) and scores, on or
  after ``enrolled_on`` and on or before D.

Reading: SQL over the search-index tables finds the few resources of the relevant types for
the registry's records (a temporary table of their patient ids joins the reference index), and
only those resources' JSON is parsed.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, text

from takamul.fhir.outcome import FhirError
from takamul.mentalhealth.safety import psy_meta
from takamul.mpi.schema import mpi_metadata
from takamul.programmes.facts import day_number, from_day
from takamul.store.repository import Store

__all__ = [
    "ANXIETY_DEPRESSION_ICD10",
    "ANXIETY_DEPRESSION_SNOMED",
    "CARE_PROGRAMME_SYSTEM",
    "CSV_COLUMNS",
    "GAD7",
    "PHQ9",
    "REVIEW_CODE",
    "REVIEW_SYSTEM",
    "STATUSES",
    "SUICIDE_RISK",
    "RegistryRow",
    "caseload",
    "record_recommendation",
    "registry",
    "review_queue",
    "write_registry_csv",
]

CARE_PROGRAMME_SYSTEM = "https://takamul.health/fhir/CodeSystem/care-programme"
COLLABORATIVE_CARE = "collaborative-care"
REVIEW_SYSTEM = "https://takamul.health/fhir/CodeSystem/collaborative-care"
REVIEW_CODE = "psychiatric-case-review"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
PHQ9 = "44261-6"
GAD7 = "70274-6"
SUICIDE_RISK = "225444004"  # SNOMED CT: at risk for suicide
ANXIETY_DEPRESSION_SNOMED = ("35489007", "370143000", "197480006")
ANXIETY_DEPRESSION_ICD10 = ("F32", "F33", "F41")
STATUSES = ("new", "remission", "response", "not-improving", "improving")

NEW_DAYS = 28
NOT_IMPROVING_DAYS = 70
OVERDUE_DAYS = 30
_CURRENT_EPISODE = {"planned", "waitlist", "active", "onhold"}
_ENDED_EPISODE = {"finished", "cancelled"}
_FINAL = {"final", "amended", "corrected"}
_EPOCH = date(1970, 1, 1).toordinal()


# the columns of ``takamul mh registry`` (issue 15), in this order
CSV_COLUMNS = (
    "person_id",
    "patient_ids",
    "enrolled_on",
    "weeks_in_care",
    "baseline_phq9",
    "latest_phq9",
    "baseline_gad7",
    "latest_gad7",
    "phq9_change_pct",
    "status",
    "needs_psychiatric_review",
    "overdue_contact",
    "safety",
    "last_contact",
)


@dataclass(frozen=True, slots=True)
class RegistryRow:
    """One person in the registry on the as-of date."""

    person_id: str  # the golden record's id ("" for a record not linked to a person yet)
    patient_ids: tuple[str, ...]
    enrolled_on: date
    enrolment: str  # "episode" | "diagnosis-and-score"
    weeks_in_care: int
    baseline_phq9: int | None
    latest_phq9: int | None
    baseline_gad7: int | None
    latest_gad7: int | None
    phq9_change_pct: float | None
    gad7_change_pct: float | None
    status: str
    needs_psychiatric_review: bool
    overdue_contact: bool
    safety: bool
    last_contact: date | None
    contacts: int
    care_managers: tuple[str, ...]  # "Practitioner/x", "PractitionerRole/y"
    facilities: tuple[str, ...]  # Organization ids
    unreviewed_flag_on: date | None  # the newest suicide-risk Flag after the last review
    last_review: date | None
    episode_id: str | None


@dataclass(slots=True)
class _Score:
    day: int
    order: tuple[str, str]  # (dateTime text, id): ties on a day
    value: int


@dataclass(slots=True)
class _Person:
    patients: set[str] = field(default_factory=set)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    any_episode: bool = False
    diagnosed: bool = False
    phq9: list[_Score] = field(default_factory=list)
    gad7: list[_Score] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)  # start days of active suicide-risk Flags
    reviews: list[int] = field(default_factory=list)
    encounter_count: int = 0  # finished encounters on or after enrolment, on or before D
    last_encounter: int | None = None
    homes: set[str] = field(default_factory=set)
    enrolled: int | None = None


def _day(value: object) -> int | None:
    """The local calendar date of a FHIR date/dateTime as a day number (None if not one)."""
    return day_number(value) if isinstance(value, str) else None


_from_day = from_day


def _ref_id(ref: object, kind: str) -> str | None:
    if isinstance(ref, dict):
        value = ref.get("reference")
        if isinstance(value, str) and value.startswith(kind + "/"):
            return value[len(kind) + 1 :].split("/_history")[0]
    return None


def _coded(concept: object, system: str, codes: Iterable[str]) -> bool:
    if not isinstance(concept, dict):
        return False
    wanted = set(codes)
    return any(
        c.get("system") == system and c.get("code") in wanted
        for c in concept.get("coding") or ()
        if isinstance(c, dict)
    )


def _diagnosis_code(concept: object) -> bool:
    if _coded(concept, SNOMED, ANXIETY_DEPRESSION_SNOMED):
        return True
    if not isinstance(concept, dict):
        return False
    for c in concept.get("coding") or ():
        system, code = c.get("system") or "", c.get("code") or ""
        if (
            system.startswith("http://hl7.org/fhir/sid/icd-10")
            and isinstance(code, str)
            and code.upper().startswith(ANXIETY_DEPRESSION_ICD10)
        ):
            return True
    return False


# -- reading -----------------------------------------------------------------------------------

_EPISODES = """
SELECT r.res_id, r.content FROM resource r
WHERE r.res_type = 'EpisodeOfCare' AND r.deleted = :f AND EXISTS (
  SELECT 1 FROM sp_token t WHERE t.rid = r.rid AND t.res_type = 'EpisodeOfCare'
  AND t.param = 'type' AND t.code = :code AND t.system = :system)
"""

# A care manager's episodes by index, not the nation's: those naming them as care manager, and
# those of the patients of the CareTeams they are a member of (an episode's team has no search
# parameter of its own; the team's subject does)
_MANAGED_EPISODES = """
SELECT x.rid FROM sp_reference x WHERE x.res_type = 'EpisodeOfCare'
  AND x.param = 'care-manager' AND x.target_type = :mtype AND x.target_id = :mid
UNION
SELECT e.rid FROM sp_reference m
JOIN sp_reference s ON s.rid = m.rid AND s.res_type = 'CareTeam' AND s.param = 'subject'
  AND s.target_type = 'Patient'
JOIN sp_reference e ON e.res_type = 'EpisodeOfCare' AND e.param = 'patient'
  AND e.target_type = 'Patient' AND e.target_id = s.target_id
WHERE m.res_type = 'CareTeam' AND m.param = 'participant'
  AND m.target_type = :mtype AND m.target_id = :mid
"""
# read after the episodes above are known, by their keys, and their type checked here: in one
# statement the planner, with no idea how few they are, compared them with every
# collaborative-care episode of the nation (1.5 s; 0.2 s with the type's index alone)
_EPISODES_BY_RID = """
SELECT r.res_id, r.content FROM resource r
WHERE r.res_type = 'EpisodeOfCare' AND r.deleted = :f AND r.rid IN ({rids})
"""

_MEMBER_TEAMS = """
SELECT r.content FROM resource r WHERE r.res_type = 'CareTeam' AND r.deleted = :f AND r.rid IN (
  SELECT m.rid FROM sp_reference m WHERE m.res_type = 'CareTeam' AND m.param = 'participant'
    AND m.target_type = :mtype AND m.target_id = :mid)
"""

# A facility's registry starts from the records that can place a person there (rule 1: the
# episode's managing organization or its team's; rule 2: the home of one of the person's
# records), not from the nation's episodes and diagnoses
_FACILITY_HOMES = """
SELECT x.target_id FROM sp_reference x JOIN resource r ON r.rid = x.rid AND r.deleted = :f
WHERE x.res_type = 'EpisodeOfCare' AND x.param = 'patient' AND x.target_type = 'Patient'
  AND x.rid IN (SELECT o.rid FROM sp_reference o WHERE o.res_type = 'EpisodeOfCare'
    AND o.param = 'organization' AND o.target_type = 'Organization' AND o.target_id = :org)
UNION
SELECT r.res_id FROM sp_reference x JOIN resource r ON r.rid = x.rid AND r.deleted = :f
WHERE x.res_type = 'Patient' AND x.param = 'organization' AND x.target_type = 'Organization'
  AND x.target_id = :org
"""
# the episodes or conditions of the records in the temporary table mh_fac
_OF_RECORDS = """
SELECT r.res_id, r.content FROM mh_fac p
JOIN sp_reference x ON x.res_type = :type AND x.param = :param AND x.target_type = 'Patient'
  AND x.target_id = p.patient_id
JOIN resource r ON r.rid = x.rid AND r.deleted = :f
"""

# the home (managingOrganization, the only path of Patient's ``organization``) of each record,
# looked up record by record: as a join, the planner misjudged how many Patients have an
# organization (the columns are correlated) and read all of them (0.5 s for 200 records)
_HOMES = """
SELECT p.patient_id, (
  SELECT x.target_id FROM resource r JOIN sp_reference x ON x.rid = r.rid
    AND x.res_type = 'Patient' AND x.param = 'organization' AND x.target_type = 'Organization'
  WHERE r.res_type = 'Patient' AND r.res_id = p.patient_id AND r.deleted = :f) AS home
FROM mh_pat p
"""
# for the nation's registry a hash join over every Patient's organization is the faster way
_HOMES_JOINED = """
SELECT p.patient_id, x.target_id FROM mh_pat p JOIN resource r
  ON r.res_type = 'Patient' AND r.res_id = p.patient_id AND r.deleted = :f
JOIN sp_reference x ON x.rid = r.rid AND x.res_type = 'Patient'
  AND x.param = 'organization' AND x.target_type = 'Organization'
"""
LOOKED_UP = 5000  # records: up to this many, their homes are looked up one by one

# ICD-10 prefixes as ranges (an index range scan) and LIKE (exact on every collation)
_CONDITIONS = """
SELECT r.res_id, r.content FROM resource r
WHERE r.res_type = 'Condition' AND r.deleted = :f AND r.rid IN (
  SELECT t.rid FROM sp_token t WHERE t.res_type = 'Condition' AND t.param = 'code' AND (
    (t.code IN ('35489007', '370143000', '197480006') AND t.system = :snomed)
    OR (t.code >= 'F32' AND t.code < 'F34' AND (t.code LIKE 'F32%' OR t.code LIKE 'F33%'))
    OR (t.code >= 'F41' AND t.code < 'F42' AND t.code LIKE 'F41%')))
"""

# the resources of one type that refer to a registry record (through the temporary table)
_BY_SUBJECT = """
SELECT p.patient_id, r.res_id, r.content{columns} FROM mh_pat p
JOIN sp_reference x ON x.res_type = :type AND x.param = :param AND x.target_id = p.patient_id
  AND x.target_type = 'Patient'
JOIN resource r ON r.rid = x.rid AND r.deleted = :f
{extra}
"""
_SCORES = """JOIN sp_token t ON t.rid = r.rid AND t.res_type = 'Observation' AND t.param = 'code'
  AND t.code IN ('44261-6', '70274-6') AND t.system = 'http://loinc.org'"""
_PAT_COLUMNS = (
    "patient_id VARCHAR(64) PRIMARY KEY, since DOUBLE PRECISION NOT NULL, "
    "since_day VARCHAR(10) NOT NULL"
)
_FINISHED = """JOIN sp_token t ON t.rid = r.rid AND t.res_type = 'Encounter' AND t.param = 'status'
  AND t.code = 'finished'
JOIN sp_date d ON d.rid = r.rid AND d.res_type = 'Encounter' AND d.param = 'date'
  AND d.high > p.since"""

# The few fields the registry needs from the many scores and encounters are taken out of the
# JSON in the database: a row of ~60 bytes travels instead of the whole resource (1.3 M
# Observations are ~650 MB of JSON for 100,000 persons), and the parsing runs in the database
# beside the Python that classifies. The inner query is a fence (OFFSET 0) so the document is
# parsed once per row, not once per field.
_SCORE_FIELDS = """
SELECT patient_id, res_id, code, {status} AS status,
  COALESCE({effectiveDateTime}, {effectiveInstant}, {effectivePeriod_start}, {issued}) AS at,
  COALESCE({valueInteger}, {valueQuantity_value}) AS value
FROM ({inner}{fence}) s
"""
# encounters: per record, the count and the last local date on or after enrolment
_ENCOUNTER_COUNTS = """
SELECT patient_id, COUNT(*), MAX(day) FROM (
  SELECT patient_id, since_day, substr({period_start}, 1, 10) AS day FROM ({inner}{fence}) s
) e WHERE day >= since_day AND day <= :dtext GROUP BY patient_id
"""


def _json(dialect: str, path: str) -> str:
    """SQL for the text (or number) at a dotted path of the document column ``j``."""
    if dialect == "postgresql":
        return "j #>> '{" + path.replace(".", ",") + "}'"
    return f"json_extract(j, '$.{path}')"


def _fields_sql(dialect: str, template: str, inner: str) -> str:
    doc = (
        "convert_from(r.content, 'UTF8')::jsonb AS j"
        if dialect == "postgresql"
        else "CAST(r.content AS TEXT) AS j"
    )
    fence = " OFFSET 0" if dialect == "postgresql" else " LIMIT -1 OFFSET 0"
    paths = [
        "status",
        "effectiveDateTime",
        "effectiveInstant",
        "effectivePeriod.start",
        "issued",
        "valueInteger",
        "valueQuantity.value",
        "period.start",
    ]
    return template.format(
        inner=inner.replace("r.content", doc),
        fence=fence,
        **{p.replace(".", "_"): _json(dialect, p) for p in paths},
    )


def _episode_current(body: dict[str, Any], d: int) -> bool:
    status = body.get("status")
    period = body.get("period") or {}
    start = _day(period.get("start"))
    if start is None or start > d:
        return False
    if status in _CURRENT_EPISODE:
        return True
    if status in _ENDED_EPISODE:
        end = _day(period.get("end"))
        return end is not None and end > d
    return False


def _temp(conn: Connection, name: str, columns: str) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} ({columns})")


def _fill(
    conn: Connection, name: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Rows into a temporary table: COPY on PostgreSQL (100,000 rows in a fraction of a
    second), executemany on SQLite."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    if conn.dialect.name == "postgresql":
        with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"ANALYZE {name}")
    else:
        marks = ", ".join("?" for _ in columns)
        cursor.executemany(f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})", rows)


def _stream(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """The rows of a query, fetched at once: the rows are small (fields taken out of the JSON
    in the database), and a server-side cursor would keep PostgreSQL from running the query
    in parallel and cost a round trip per batch (measured: 33-34 s instead of 29-30 s for the
    registry of 100,000 persons)."""
    yield from conn.execute(text(sql), params or {})


def _persons_of(conn: Connection, patient_ids: set[str]) -> dict[str, str]:
    """Every record of the persons of ``patient_ids``: patient id -> person key."""
    found = {pid: "~" + pid for pid in patient_ids}
    _temp(conn, "mh_seed", "patient_id VARCHAR(64) PRIMARY KEY")
    _fill(conn, "mh_seed", ("patient_id",), [(p,) for p in patient_ids])
    for patient_id, person_id in _stream(
        conn,
        "SELECT m2.patient_id, m2.person_id FROM mh_seed s "
        "JOIN mpi_member m ON m.patient_id = s.patient_id "
        "JOIN mpi_member m2 ON m2.person_id = m.person_id",
    ):
        found[patient_id] = person_id
    conn.exec_driver_sql("DROP TABLE mh_seed")
    return found


def _episodes(conn: Connection, care_manager: str | None) -> Any:
    """The collaborative-care episodes to start from: every one, or a care manager's."""
    params: dict[str, Any] = {
        "f": False,
        "code": COLLABORATIVE_CARE,
        "system": CARE_PROGRAMME_SYSTEM,
    }
    # ``care-manager`` indexes Practitioners only (its expression is ``where(resolve() is
    # Practitioner)``): a PractitionerRole's caseload reads every episode
    if care_manager is None or not care_manager.startswith("Practitioner/"):
        return conn.execute(text(_EPISODES), params)
    mtype, mid = care_manager.split("/", 1)
    teams = conn.execute(text(_MEMBER_TEAMS), {"f": False, "mtype": mtype, "mid": mid}).scalars()
    if any(_ref_id(orjson.loads(t).get("subject"), "Patient") is None for t in teams):
        # a team of theirs without a Patient subject: its episodes are found only by reading
        # every episode
        return conn.execute(text(_EPISODES), params)
    rids = sorted(
        {int(r[0]) for r in conn.execute(text(_MANAGED_EPISODES), {"mtype": mtype, "mid": mid})}
    )
    if not rids:
        return []
    # integers from the database, so they can be written into the statement
    listed = ", ".join(str(r) for r in rids)
    return [
        (res_id, content)
        for res_id, content in conn.execute(text(_EPISODES_BY_RID.format(rids=listed)), params)
        if _collaborative(orjson.loads(content))
    ]


def _facility_records(conn: Connection, facility: str) -> set[str] | None:
    """Every record of the persons who may be in ``facility``'s registry: a superset (the
    registry keeps those whose facilities include it), found by index; None when it cannot be
    found that way (a team of the facility without a Patient subject: its episodes can only be
    found by reading every episode). A CareTeam's managing organization has no search
    parameter, so the CareTeams are read (one per team, far fewer than the scores)."""
    seeds = {row[0] for row in conn.execute(text(_FACILITY_HOMES), {"f": False, "org": facility})}
    for content in conn.execute(
        text("SELECT content FROM resource WHERE res_type = 'CareTeam' AND deleted = :f"),
        {"f": False},
    ).scalars():
        team = orjson.loads(content)
        managing = team.get("managingOrganization") or ()
        if any(_ref_id(o, "Organization") == facility for o in managing):
            subject = _ref_id(team.get("subject"), "Patient")
            if subject is None:
                return None
            seeds.add(subject)
    return set(_persons_of(conn, seeds))


def _of_records(
    conn: Connection, patient_ids: set[str], resource_type: str, param: str
) -> list[tuple[str, bytes]]:
    """(id, content) of the resources of ``resource_type`` whose ``param`` names one of the
    records."""
    _temp(conn, "mh_fac", "patient_id VARCHAR(64) PRIMARY KEY")
    _fill(conn, "mh_fac", ("patient_id",), [(p,) for p in patient_ids])
    rows = [
        (row[0], row[1])
        for row in conn.execute(
            text(_OF_RECORDS), {"type": resource_type, "param": param, "f": False}
        )
    ]
    conn.exec_driver_sql("DROP TABLE mh_fac")
    return rows


def _collaborative(episode: dict[str, Any]) -> bool:
    return any(
        _coded(t, CARE_PROGRAMME_SYSTEM, (COLLABORATIVE_CARE,)) for t in episode.get("type") or ()
    )


def _read(
    store: Store,
    as_of: date,
    care_manager: str | None,
    facility: str | None = None,
) -> tuple[dict[str, _Person], dict[str, dict[str, Any]]]:
    d = as_of.toordinal() - _EPOCH
    mpi_metadata.create_all(store.writer)  # a record without the client registry yet
    persons: dict[str, _Person] = {}
    teams: dict[str, dict[str, Any]] = {}
    with store.reader.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            conn.exec_driver_sql("SET LOCAL jit = off")
        seeds: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        records = (
            _facility_records(conn, facility)
            if facility is not None and care_manager is None
            else None
        )  # None: every episode and diagnosis
        episodes = (
            _episodes(conn, care_manager)
            if records is None
            else _of_records(conn, records, "EpisodeOfCare", "patient")
        )
        for res_id, content in episodes:
            body = orjson.loads(content)
            body["id"] = res_id
            if records is not None and not _collaborative(body):
                continue
            pid = _ref_id(body.get("patient"), "Patient")
            start = _day((body.get("period") or {}).get("start"))
            if (
                pid is None
                or start is None
                or start > d
                or body.get("status") == "entered-in-error"
            ):
                continue
            seeds.setdefault(pid, []).append(("episode", body))
        team_ids = sorted(
            {
                t
                for items in seeds.values()
                for _, body in items
                for t in (_ref_id(r, "CareTeam") for r in body.get("team") or ())
                if t
            }
        )
        for i in range(0, len(team_ids), 1000):
            chunk = team_ids[i : i + 1000]
            names = ", ".join(f":t{j}" for j in range(len(chunk)))
            for res_id, content in conn.execute(
                text(
                    "SELECT res_id, content FROM resource WHERE res_type = 'CareTeam' "
                    f"AND deleted = :f AND res_id IN ({names})"
                ),
                {"f": False, **{f"t{j}": v for j, v in enumerate(chunk)}},
            ):
                teams[res_id] = orjson.loads(content)
        if care_manager is not None:
            # a care manager's caseload: only the persons of their episodes (rule 2 persons
            # have no care manager), so the nation's diagnoses are not read
            seeds = {
                pid: [(k, b) for k, b in items if care_manager in _managers(b, teams)]
                for pid, items in seeds.items()
            }
            seeds = {pid: items for pid, items in seeds.items() if items}
        else:
            conditions = (
                conn.execute(text(_CONDITIONS), {"f": False, "snomed": SNOMED})
                if records is None
                else _of_records(conn, records, "Condition", "subject")
            )
            for _res_id, content in conditions:
                body = orjson.loads(content)
                if not _diagnosis_code(body.get("code")):
                    continue
                verification = {
                    c.get("code")
                    for c in (body.get("verificationStatus") or {}).get("coding") or ()
                }
                if verification & {"refuted", "entered-in-error"}:
                    continue
                when = _day(body.get("recordedDate"))
                if when is None:
                    when = _day(body.get("onsetDateTime"))
                if when is not None and when > d:
                    continue
                pid = _ref_id(body.get("subject"), "Patient")
                if pid is not None:
                    seeds.setdefault(pid, []).append(("diagnosis", body))
        member = _persons_of(conn, set(seeds))
        for pid, person in member.items():
            p = persons.get(person)
            if p is None:
                p = persons[person] = _Person()
            p.patients.add(pid)
            for kind, body in seeds.get(pid, ()):
                if kind == "episode":
                    p.any_episode = True
                    if _episode_current(body, d):
                        p.episodes.append(body)
                else:
                    p.diagnosed = True
        candidates = sorted(
            {
                person
                for person, p in persons.items()
                if p.episodes or (p.diagnosed and not p.any_episode)
            }
        )
    # Two passes run at once on connections of their own, each reading its rows once for the
    # persons it has: one the scores of the persons enrolled by an episode (whose enrolment
    # date the episodes give); the other the scores of the persons enrolled by a score (rule
    # 2), which date their enrolment, then the encounters of everyone enrolled. Splitting the
    # persons in two halves instead made each half scan the nation's index rows again; the
    # scores of the many and the encounters take about as long as each other.
    chosen = set(candidates)
    everyone = {pid: k for pid, k in member.items() if k in chosen}
    for key in chosen:
        if persons[key].episodes:
            persons[key].enrolled = _enrolment(persons[key])
    by_episode = {pid: k for pid, k in everyone.items() if persons[k].episodes}
    by_score = {pid: k for pid, k in everyone.items() if not persons[k].episodes}

    def scored_then_visits() -> None:
        _read_scores(store, by_score, persons, as_of)
        for key in set(by_score.values()):
            persons[key].enrolled = _enrolment(persons[key])
        enrolled = {
            pid: day for pid, k in everyone.items() if (day := persons[k].enrolled) is not None
        }
        _read_encounters(store, enrolled, everyone, persons, as_of)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = [
            pool.submit(_read_scores, store, by_episode, persons, as_of),
            pool.submit(scored_then_visits),
        ]
        for part in done:
            part.result()
    _read_rest(store, everyone, persons, as_of)
    return persons, teams


@contextmanager
def _part(store: Store, rows: list[tuple[Any, ...]]) -> Iterator[Connection]:
    """A connection of its own, with ``rows`` (patient id, since, since day) in ``mh_pat``."""
    with store.reader.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            conn.exec_driver_sql("SET LOCAL jit = off")
        _temp(conn, "mh_pat", _PAT_COLUMNS)
        _fill(conn, "mh_pat", ("patient_id", "since", "since_day"), rows)
        yield conn
        conn.exec_driver_sql("DROP TABLE mh_pat")


def _read_scores(
    store: Store, member: dict[str, str], persons: dict[str, _Person], as_of: date
) -> None:
    """The PHQ-9 and GAD-7 totals of every record of ``member`` (patient id -> person key)."""
    d = as_of.toordinal() - _EPOCH
    if not member:
        return
    with _part(store, [(pid, -1e18, "") for pid in member]) as conn:
        sql = _fields_sql(
            conn.dialect.name,
            _SCORE_FIELDS,
            _BY_SUBJECT.format(columns=", t.code", extra=_SCORES),
        )
        rows = _stream(conn, sql, {"type": "Observation", "param": "subject", "f": False})
        # 1.3 million rows for 100,000 persons: the loop is _score inlined, with the names it
        # uses held locally (a third of the time of a call per row)
        final, day_of, make = _FINAL, day_number, _Score
        for pid, res_id, code, status, when, value in rows:
            if status not in final or not isinstance(when, str):
                continue
            day = day_of(when)
            if day is None or day > d:
                continue
            try:
                number = round(float(value))
            except (TypeError, ValueError):
                continue
            p = persons[member[pid]]
            (p.phq9 if code == PHQ9 else p.gad7).append(make(day, (when, res_id), number))
    for p in (persons[k] for k in set(member.values())):
        p.phq9.sort(key=lambda s: (s.day, s.order))
        p.gad7.sort(key=lambda s: (s.day, s.order))


def _read_encounters(
    store: Store,
    enrolled: dict[str, int],
    member: dict[str, str],
    persons: dict[str, _Person],
    as_of: date,
) -> None:
    """Finished encounters of each record of ``enrolled`` (patient id -> enrolment day) from a
    day before enrolment on (the index holds UTC instants; the local date is checked on the
    resource itself), counted per record in the database."""
    if not enrolled:
        return
    rows = [
        (pid, float((day - 1) * 86400), (_from_day(day) or date.min).isoformat())
        for pid, day in enrolled.items()
    ]
    with _part(store, rows) as conn:
        sql = _fields_sql(
            conn.dialect.name,
            _ENCOUNTER_COUNTS,
            _BY_SUBJECT.format(columns=", p.since_day", extra=_FINISHED),
        )
        for pid, count, last in _stream(
            conn,
            sql,
            {"type": "Encounter", "param": "subject", "f": False, "dtext": as_of.isoformat()},
        ):
            p = persons[member[pid]]
            p.encounter_count += count
            last_day = _day(last)
            if last_day is not None and (p.last_encounter is None or last_day > p.last_encounter):
                p.last_encounter = last_day


def _read_rest(
    store: Store, member: dict[str, str], persons: dict[str, _Person], as_of: date
) -> None:
    """Suicide-risk Flags, psychiatric reviews and homes of the records of enrolled persons."""
    d = as_of.toordinal() - _EPOCH
    rows = [(pid, -1e18, "") for pid, k in member.items() if persons[k].enrolled is not None]
    if not rows:
        return
    with _part(store, rows) as conn:
        for pid, _res_id, content in _stream(
            conn,
            _BY_SUBJECT.format(columns="", extra=""),
            {"type": "Flag", "param": "subject", "f": False},
        ):
            body = orjson.loads(content)
            if body.get("status") != "active" or not _coded(
                body.get("code"), SNOMED, (SUICIDE_RISK,)
            ):
                continue
            period = body.get("period") or {}
            start, end = _day(period.get("start")), _day(period.get("end"))
            if (start is None or start <= d) and (end is None or end > d):
                persons[member[pid]].flags.append(start if start is not None else -(10**9))
        for pid, _res_id, content in _stream(
            conn,
            _BY_SUBJECT.format(columns="", extra=""),
            {"type": "ClinicalImpression", "param": "subject", "f": False},
        ):
            body = orjson.loads(content)
            if body.get("status") != "completed" or not _coded(
                body.get("code"), REVIEW_SYSTEM, (REVIEW_CODE,)
            ):
                continue
            day = _day(body.get("effectiveDateTime") or body.get("date"))
            if day is not None and day <= d:
                persons[member[pid]].reviews.append(day)
        homes = _HOMES if len(rows) <= LOOKED_UP else _HOMES_JOINED
        for pid, org in conn.execute(text(homes), {"f": False}):
            if org is not None:
                persons[member[pid]].homes.add(org)


def _managers(episode: dict[str, Any], teams: dict[str, dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    manager = (episode.get("careManager") or {}).get("reference")
    if isinstance(manager, str):
        found.add(manager)
    for ref in episode.get("team") or ():
        team = teams.get(_ref_id(ref, "CareTeam") or "")
        for part in (team or {}).get("participant") or ():
            who = (part.get("member") or {}).get("reference")
            if isinstance(who, str) and who.split("/")[0] in ("Practitioner", "PractitionerRole"):
                found.add(who)
    return found


def _enrolment(p: _Person) -> int | None:
    if p.episodes:
        return min(_day(e["period"]["start"]) or 0 for e in p.episodes)
    if p.any_episode or not p.diagnosed:
        return None
    positive = [s for s in p.phq9 + p.gad7 if s.value >= 10]
    if not positive:
        return None
    return min(positive, key=lambda s: (s.day, s.order)).day


# -- classifying --------------------------------------------------------------------------------


def _change(baseline: int | None, latest: int | None) -> float | None:
    if baseline is None or latest is None or baseline == 0:
        return None
    return round((latest - baseline) * 100 / baseline, 1)


def _classify(person_key: str, p: _Person, d: int, teams: dict[str, dict[str, Any]]) -> RegistryRow:
    enrolled = p.enrolled
    assert enrolled is not None
    phq9 = [s for s in p.phq9 if s.day >= enrolled]
    gad7 = [s for s in p.gad7 if s.day >= enrolled]
    b_phq, l_phq = (phq9[0].value, phq9[-1].value) if phq9 else (None, None)
    b_gad, l_gad = (gad7[0].value, gad7[-1].value) if gad7 else (None, None)
    days = d - enrolled
    primary = phq9 if phq9 else gad7
    responded = (
        len(primary) > 1 and primary[0].value > 0 and 2 * primary[-1].value <= primary[0].value
    )
    measured = [v for v in (l_phq, l_gad) if v is not None]
    if days < NEW_DAYS:
        status = "new"
    elif measured and all(v < 5 for v in measured):
        status = "remission"
    elif responded:
        status = "response"
    elif days >= NOT_IMPROVING_DAYS:
        status = "not-improving"
    else:
        status = "improving"
    score_days = [s.day for s in phq9 + gad7]
    contacts = p.encounter_count + len(score_days)
    last_contact = max(
        [*score_days, *([p.last_encounter] if p.last_encounter is not None else [])],
        default=None,
    )
    last_review = max(p.reviews) if p.reviews else None
    unreviewed = [f for f in p.flags if last_review is None or f > last_review]
    latest_score = max((s.day for s in phq9 + gad7), default=None)
    stale_review = last_review is None or (latest_score is not None and last_review < latest_score)
    needs_review = (status == "not-improving" and stale_review) or bool(unreviewed)
    managers: set[str] = set()
    facilities: set[str] = set()
    for e in p.episodes:
        managers |= _managers(e, teams)
        org = _ref_id(e.get("managingOrganization"), "Organization")
        if org:
            facilities.add(org)
        for ref in e.get("team") or ():
            team_org = (teams.get(_ref_id(ref, "CareTeam") or "") or {}).get("managingOrganization")
            for o in team_org or ():
                if _ref_id(o, "Organization"):
                    facilities.add(_ref_id(o, "Organization") or "")
    if not p.episodes:
        facilities |= p.homes
    episode = (
        min(p.episodes, key=lambda e: (e["period"]["start"], e["id"]))["id"] if p.episodes else None
    )
    return RegistryRow(
        person_id="" if person_key.startswith("~") else person_key,
        patient_ids=tuple(sorted(p.patients)),
        enrolled_on=_from_day(enrolled) or date.min,
        enrolment="episode" if p.episodes else "diagnosis-and-score",
        weeks_in_care=days // 7,
        baseline_phq9=b_phq,
        latest_phq9=l_phq,
        baseline_gad7=b_gad,
        latest_gad7=l_gad,
        phq9_change_pct=_change(b_phq, l_phq),
        gad7_change_pct=_change(b_gad, l_gad),
        status=status,
        needs_psychiatric_review=needs_review,
        overdue_contact=d - (last_contact if last_contact is not None else enrolled) > OVERDUE_DAYS,
        safety=bool(p.flags),
        last_contact=_from_day(last_contact),
        contacts=contacts,
        care_managers=tuple(sorted(managers)),
        facilities=tuple(sorted(facilities)),
        unreviewed_flag_on=_from_day(max(unreviewed)) if unreviewed else None,
        last_review=_from_day(last_review),
        episode_id=episode,
    )


def registry(
    store: Store,
    as_of: date,
    *,
    care_manager: str | None = None,
    facility: str | None = None,
) -> list[RegistryRow]:
    """Every person in the collaborative-care registry on ``as_of``, in person order.

    ``care_manager`` ("Practitioner/id" or "PractitionerRole/id"): only that care manager's
    caseload; ``facility`` (an Organization id): only the persons of that facility."""
    if care_manager is not None and not care_manager.startswith(
        ("Practitioner/", "PractitionerRole/")
    ):
        raise FhirError(
            400,
            f"care manager {care_manager!r} must be a reference 'Practitioner/id' or "
            "'PractitionerRole/id'",
            "invalid",
        )
    d = as_of.toordinal() - _EPOCH
    persons, teams = _read(store, as_of, care_manager, facility)
    rows = []
    for key in sorted(persons):
        p = persons[key]
        if p.enrolled is None:
            continue
        row = _classify(key, p, d, teams)
        if care_manager is not None and care_manager not in row.care_managers:
            continue
        if facility is not None and facility not in row.facilities:
            continue
        rows.append(row)
    return rows


def caseload(
    store: Store, as_of: date, *, care_manager: str | None = None, facility: str | None = None
) -> list[RegistryRow]:
    """A care manager's caseload (the persons of their episodes, directly or as a member of
    the episode's CareTeam) or all the registry's persons of a facility: the persons needing
    attention first (review, safety, overdue), then by weeks in care."""
    if (care_manager is None) == (facility is None):
        raise FhirError(400, "a caseload needs exactly one of care_manager or facility", "invalid")
    rows = registry(store, as_of, care_manager=care_manager, facility=facility)
    return sorted(
        rows,
        key=lambda r: (
            not r.needs_psychiatric_review,
            not r.safety,
            not r.overdue_contact,
            -r.weeks_in_care,
            r.person_id or r.patient_ids[0],
        ),
    )


def review_queue(rows: Sequence[RegistryRow]) -> list[RegistryRow]:
    """The psychiatric case-review queue: persons needing review, an unreviewed suicide-risk
    Flag first (the newest flag first), then not improving (longest in care first)."""
    queue = [r for r in rows if r.needs_psychiatric_review]
    return sorted(
        queue,
        key=lambda r: (
            r.unreviewed_flag_on is None,
            -(r.unreviewed_flag_on.toordinal() if r.unreviewed_flag_on else 0),
            -r.weeks_in_care,
            r.person_id or r.patient_ids[0],
        ),
    )


# -- the consultant's recommendation -------------------------------------------------------------

# A ClinicalImpression, not a Communication: the consultant's recommendation is a clinical
# assessment of the person (R4: "a record of a clinical assessment ... to determine what
# problem(s) may affect the patient and before planning the treatments"), with its assessor, the
# problems reviewed (``problem``: the depression/anxiety Conditions), the evidence seen
# (``investigation``: the PHQ-9/GAD-7 scores) and the recommendation (``summary``); it is in the
# patient's compartment, so consent and the PSY label apply to it as to the scores. A
# Communication records that a message was conveyed, not the judgement, and has no field for
# the evidence reviewed.


def record_recommendation(
    store: Store,
    patient_id: str,
    consultant: str,
    recommendation: str,
    *,
    when: datetime | None = None,
    scores: Sequence[str] = (),
    problems: Sequence[str] = (),
    episode_id: str | None = None,
) -> str:
    """Store a psychiatric consultant's case review of a person as a completed
    ClinicalImpression; return its id. It counts as the person's psychiatric review from its
    date on (:func:`registry`)."""
    if not consultant.startswith(("Practitioner/", "PractitionerRole/")):
        raise FhirError(
            400,
            f"consultant {consultant!r} must be a reference 'Practitioner/id' or "
            "'PractitionerRole/id'",
            "invalid",
        )
    if not recommendation.strip():
        raise FhirError(400, "the recommendation (ClinicalImpression.summary) is empty", "required")
    moment = when or datetime.now(UTC)
    if moment.tzinfo is None:
        raise FhirError(400, "the review's time needs a time zone (ClinicalImpression.date)")
    stamp = moment.isoformat(timespec="seconds")
    body: dict[str, Any] = {
        "resourceType": "ClinicalImpression",
        "id": str(uuid.uuid4()),
        # a psychiatrist's recommendation is mental-health data: the consent rules apply
        "meta": psy_meta(),
        "status": "completed",
        "code": {
            "coding": [
                {"system": REVIEW_SYSTEM, "code": REVIEW_CODE, "display": "Psychiatric case review"}
            ]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": stamp,
        "date": stamp,
        "assessor": {"reference": consultant},
        "summary": recommendation,
    }
    if scores:
        body["investigation"] = [
            {
                "code": {"text": "PHQ-9 and GAD-7 scores reviewed"},
                "item": [{"reference": f"Observation/{s}"} for s in scores],
            }
        ]
    if problems:
        body["problem"] = [{"reference": f"Condition/{c}"} for c in problems]
    if episode_id:
        body["supportingInfo"] = [{"reference": f"EpisodeOfCare/{episode_id}"}]

    def work(session: Any) -> str:
        session.read("Patient", patient_id)  # a clear 404 for an unknown person
        return str(session.update("ClinicalImpression", body["id"], body).id)

    return store.write(work)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ";".join(str(v) for v in value)
    return str(value)


def write_registry_csv(rows: Iterable[RegistryRow], out: Path) -> int:
    """Write the registry as CSV (``CSV_COLUMNS``; lists joined by ``;``, flags true/false,
    dates YYYY-MM-DD, empty for none); return the number of persons written."""
    n = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(_cell(getattr(r, c)) for c in CSV_COLUMNS)
            n += 1
    return n
