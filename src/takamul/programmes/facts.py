"""Care facts: the few dated facts about a patient that the programmes need, kept in one table.

A programme's status needs, per person, the earliest diagnosis, the last visit, the last blood
pressure and glucose test and a few more dates. Reading them from FHIR JSON for a million persons
would parse tens of millions of resources; the search-index tables hold them only across three or
four joins (and the blood pressure components without saying which is which). So each stored
resource that matters is reduced, when it is written, to rows of ``care_fact``
(patient, kind, key, day, values): the status of every person is then one grouped query.

The table follows the record two ways: a write hook replaces a resource's facts in the same
transaction as the resource (so a new blood pressure changes a status on the next read), and a
catch-up pass reads what was stored without hooks (bulk loads) since the last pass, using the
record's global change sequence. Facts are keyed by their source resource, so extracting a
resource twice is harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection

from takamul.mpi.schema import mpi_member
from takamul.programmes.definitions import ICD10, LOINC, PROGRAMME_SYSTEM, SNOMED, Catalog
from takamul.store.repository import Session, Store
from takamul.store.rowcopy import DriverSql, copy_rows, driver_execute
from takamul.store.schema import resource, resource_version, values_in

__all__ = ["CareFacts", "Fact", "care_fact", "day_number", "extract", "from_day"]

facts_metadata = MetaData()

care_fact = Table(
    "care_fact",
    facts_metadata,
    Column("patient_id", String(64), nullable=False),
    Column("source", String(140), nullable=False),  # Type/id of the resource it came from
    Column("kind", String(16), nullable=False),
    Column("code", String(64), nullable=True),
    Column("day", Integer, nullable=True),  # days since 1970-01-01, the local date recorded
    Column("v1", Float, nullable=True),
    Column("v2", Float, nullable=True),
    Column("org", String(64), nullable=True),
    Index("ix_care_fact_patient", "patient_id", "kind"),
    Index("ix_care_fact_source", "source"),
    Index("ix_care_fact_kind", "kind", "code", "day"),
    Index("ix_care_fact_org", "org", "kind"),
)

care_fact_state = Table(
    "care_fact_state",
    facts_metadata,
    Column("key", String(32), primary_key=True),
    Column("value", String(64), nullable=False),
)

# kinds of fact
PATIENT = "patient"  # code: sex, day: birth date, org: managing organization
DEATH = "death"  # day: date of death (0 when only "deceased" is known)
DIAGNOSIS = "dx"  # code: condition key (hypertension, heart-attack, ...)
ENROLMENT = "enrol"  # code: programme id, org: managing organization
VISIT = "visit"  # a finished encounter or a medicine prescribed or dispensed
BP = "bp"  # v1 systolic, v2 diastolic (also a visit)
GLUCOSE = "glucose"  # code: hba1c | fasting-glucose | random-glucose, v1 value (also a visit)
EVIDENCE = "evidence"  # code: system|code of a preventive service done
VISIT_KINDS = (VISIT, BP, GLUCOSE)

TYPES = (
    "Patient",
    "Condition",
    "EpisodeOfCare",
    "Encounter",
    "Observation",
    "MedicationRequest",
    "MedicationDispense",
    "Procedure",
    "Immunization",
    "DiagnosticReport",
)
_EPOCH = date(1970, 1, 1).toordinal()
_MMOL_TO_MG = 18.016  # glucose mmol/L to mg/dL (molar mass 180.16 g/mol)
_FINAL = {"final", "amended", "corrected", "preliminary"}


def day_number(text: str | None) -> int | None:
    """The local calendar date at the start of a FHIR date or dateTime, as a day number."""
    if not text or len(text) < 4:
        return None
    return _day_of(text[:10])


@lru_cache(maxsize=65536)
def _day_of(text: str) -> int | None:
    # cached: a registry reads millions of dates that fall on a few thousand days
    try:
        year = int(text[0:4])
        month = int(text[5:7]) if len(text) >= 7 else 1
        day = int(text[8:10]) if len(text) >= 10 else 1
        return date(year, month, day).toordinal() - _EPOCH
    except ValueError:
        return None


def from_day(day: int | None) -> date | None:
    return None if day is None else date.fromordinal(day + _EPOCH)


# the session extra under which a write transaction's facts are gathered
_GATHERED = "programmes.care_facts"
# session.extras key of the gathered sources written before (their stored facts are replaced)
_REPLACED = "programmes.care_facts.replaced"


@dataclass(frozen=True, slots=True)
class Fact:
    patient_id: str
    kind: str
    code: str | None = None
    day: int | None = None
    v1: float | None = None
    v2: float | None = None
    org: str | None = None


def _ref_id(ref: Any, resource_type: str) -> str | None:
    text = (ref or {}).get("reference") if isinstance(ref, dict) else None
    if not isinstance(text, str):
        return None
    prefix = resource_type + "/"
    at = text.rfind(prefix)
    if at < 0:
        return None
    rest = text[at + len(prefix) :]
    return rest.split("/", 1)[0] or None


def _codings(concept: Any) -> Iterator[tuple[str, str]]:
    for c in (concept or {}).get("coding") or () if isinstance(concept, dict) else ():
        if isinstance(c, dict) and c.get("system") and c.get("code"):
            yield str(c["system"]), str(c["code"])


class _Codes:
    """The catalog's code sets, shaped for lookup while extracting."""

    def __init__(self, catalog: Catalog) -> None:
        self.snomed: dict[str, str] = {}
        self.icd10: list[tuple[str, str]] = []
        for key, spec in catalog.conditions.items():
            for code in spec["snomed"]:
                self.snomed[code] = key
            for code in spec["icd10"]:
                self.icd10.append((code, key))
        m = catalog.measurements
        bp = m["blood-pressure"]
        self.bp_panels = set(bp["panel"])
        self.systolic, self.diastolic = bp["systolic"], bp["diastolic"]
        self.glucose = {
            c: k for k in ("hba1c", "fasting-glucose", "random-glucose") for c in m[k]["loinc"]
        }
        self.evidence = {(e.system, e.code) for p in catalog.prevention for e in p.evidence}
        self.programmes = {p.id for p in catalog.programmes}

    def conditions_of(self, concept: Any) -> set[str]:
        keys: set[str] = set()
        for system, code in _codings(concept):
            if system == SNOMED and code in self.snomed:
                keys.add(self.snomed[code])
            elif system == ICD10:
                for prefix, key in self.icd10:
                    if code == prefix or (
                        code.startswith(prefix)
                        and (len(prefix) == 3 or code[len(prefix) : len(prefix) + 1] in ("", "0"))
                    ):
                        keys.add(key)
        return keys

    def evidence_of(self, concept: Any) -> list[str]:
        return [f"{s}|{c}" for s, c in _codings(concept) if (s, c) in self.evidence]


def _patient(body: dict[str, Any]) -> list[Fact]:
    pid = body.get("id")
    if not pid:
        return []
    org = _ref_id(body.get("managingOrganization"), "Organization")
    facts = [Fact(pid, PATIENT, body.get("gender"), day_number(body.get("birthDate")), org=org)]
    if body.get("deceasedDateTime"):
        facts.append(Fact(pid, DEATH, day=day_number(body["deceasedDateTime"])))
    elif body.get("deceasedBoolean") is True:
        facts.append(Fact(pid, DEATH, day=0))
    return facts


def _condition(body: dict[str, Any], codes: _Codes) -> list[Fact]:
    pid = _ref_id(body.get("subject"), "Patient")
    verification = {c for _, c in _codings(body.get("verificationStatus"))}
    if not pid or verification & {"refuted", "entered-in-error"}:
        return []
    day = day_number(body.get("onsetDateTime")) or day_number(body.get("recordedDate"))
    if day is None:
        day = day_number((body.get("onsetPeriod") or {}).get("start"))
    return [Fact(pid, DIAGNOSIS, key, day) for key in sorted(codes.conditions_of(body.get("code")))]


def _episode(body: dict[str, Any], codes: _Codes) -> list[Fact]:
    pid = _ref_id(body.get("patient"), "Patient")
    if not pid or body.get("status") in ("entered-in-error", "cancelled"):
        return []
    day = day_number((body.get("period") or {}).get("start"))
    org = _ref_id(body.get("managingOrganization"), "Organization")
    found = []
    for concept in body.get("type") or ():
        for system, code in _codings(concept):
            if system == PROGRAMME_SYSTEM and code in codes.programmes:
                found.append(Fact(pid, ENROLMENT, code, day, org=org))
    return found


def _encounter(body: dict[str, Any]) -> list[Fact]:
    pid = _ref_id(body.get("subject"), "Patient")
    if not pid or body.get("status") != "finished":
        return []
    org = _ref_id(body.get("serviceProvider"), "Organization")
    return [Fact(pid, VISIT, None, day_number((body.get("period") or {}).get("start")), org=org)]


def _quantity(value: Any) -> tuple[float, str] | None:
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float):
        return None
    return float(value["value"]), str(value.get("code") or value.get("unit") or "")


def _observation(body: dict[str, Any], codes: _Codes) -> list[Fact]:
    pid = _ref_id(body.get("subject"), "Patient")
    if not pid or body.get("status") not in _FINAL:
        return []
    day = day_number(body.get("effectiveDateTime")) or day_number(
        (body.get("effectivePeriod") or {}).get("start")
    )
    org = next(
        (o for o in (_ref_id(p, "Organization") for p in body.get("performer") or ()) if o), None
    )
    loinc = {c for s, c in _codings(body.get("code")) if s == LOINC}
    facts = [Fact(pid, EVIDENCE, e, day, org=org) for e in codes.evidence_of(body.get("code"))]
    if loinc & codes.bp_panels:
        values: dict[str, float] = {}
        for comp in body.get("component") or ():
            q = _quantity(comp.get("valueQuantity"))
            for s, c in _codings(comp.get("code")):
                if s == LOINC and q is not None:
                    values[c] = q[0]
        if codes.systolic in values and codes.diastolic in values:
            facts.append(
                Fact(pid, BP, None, day, values[codes.systolic], values[codes.diastolic], org)
            )
    for code in loinc:
        test = codes.glucose.get(code)
        q = _quantity(body.get("valueQuantity"))
        if test and q is not None:
            value, unit = q
            if test != "hba1c" and unit.lower().replace(" ", "") in ("mmol/l", "mmol/liter"):
                value *= _MMOL_TO_MG
            elif test == "hba1c" and unit.lower() == "mmol/mol":
                value = value / 10.929 + 2.15  # IFCC to NGSP (the NGSP master equation)
            facts.append(Fact(pid, GLUCOSE, test, day, round(value, 2), None, org))
            break
    return facts


def _medication(body: dict[str, Any], resource_type: str) -> list[Fact]:
    pid = _ref_id(body.get("subject"), "Patient")
    if not pid:
        return []
    if resource_type == "MedicationRequest":
        if body.get("status") not in ("active", "completed"):
            return []
        return [Fact(pid, VISIT, "medication", day_number(body.get("authoredOn")))]
    if body.get("status") != "completed":
        return []
    return [Fact(pid, VISIT, "medication", day_number(body.get("whenHandedOver")))]


def _service(body: dict[str, Any], codes: _Codes, resource_type: str) -> list[Fact]:
    if resource_type == "Immunization":
        pid = _ref_id(body.get("patient"), "Patient")
        if not pid or body.get("status") != "completed":
            return []
        day = day_number(body.get("occurrenceDateTime"))
        return [Fact(pid, EVIDENCE, e, day) for e in codes.evidence_of(body.get("vaccineCode"))]
    pid = _ref_id(body.get("subject"), "Patient")
    if not pid or body.get("status") in ("entered-in-error", "not-done", "cancelled"):
        return []
    if resource_type == "Procedure":
        day = day_number(body.get("performedDateTime")) or day_number(
            (body.get("performedPeriod") or {}).get("start")
        )
    else:
        day = day_number(body.get("effectiveDateTime")) or day_number(body.get("issued"))
    return [Fact(pid, EVIDENCE, e, day) for e in codes.evidence_of(body.get("code"))]


def extract(resource_type: str, body: dict[str, Any] | None, codes: _Codes) -> list[Fact]:
    """The care facts of one resource (none for a deleted one or a type that does not matter)."""
    if body is None:
        return []
    if resource_type == "Patient":
        return _patient(body)
    if resource_type == "Condition":
        return _condition(body, codes)
    if resource_type == "EpisodeOfCare":
        return _episode(body, codes)
    if resource_type == "Encounter":
        return _encounter(body)
    if resource_type == "Observation":
        return _observation(body, codes)
    if resource_type in ("MedicationRequest", "MedicationDispense"):
        return _medication(body, resource_type)
    if resource_type in ("Procedure", "Immunization", "DiagnosticReport"):
        return _service(body, codes, resource_type)
    return []


def _rows(source: str, facts: list[Fact]) -> list[dict[str, Any]]:
    return [
        {
            "patient_id": f.patient_id,
            "source": source,
            "kind": f.kind,
            "code": f.code,
            "day": f.day,
            "v1": f.v1,
            "v2": f.v2,
            "org": f.org,
        }
        for f in facts
    ]


FACT_COLUMNS = ("patient_id", "source", "kind", "code", "day", "v1", "v2", "org")


def _tuples(source: str, facts: list[Fact]) -> list[tuple[Any, ...]]:
    """``_rows`` as tuples in ``FACT_COLUMNS`` order, for ``copy_rows``."""
    return [(f.patient_id, source, f.kind, f.code, f.day, f.v1, f.v2, f.org) for f in facts]


# A first pass over a large record inserts millions of facts, each into four B-tree indexes at
# random places. Such a pass drops the three indexes it does not read and builds them once at
# its end, from sorted data; the source index stays (each batch deletes by it, so that a
# resource's facts are never doubled). Measured gain: small (10.6 -> 10.1 s at 10,000 persons on
# PostgreSQL, 711.8 -> 692.8 s at 100,000 on SQLite, where reading the contents is the cost).
DEFERRED_INDEXES = frozenset({"ix_care_fact_patient", "ix_care_fact_kind", "ix_care_fact_org"})


# The first pass's batch of current resources in storage order, straight on the driver and in
# binary form: SQLAlchemy's row processing and the hexadecimal form of ``bytea`` were a fifth
# of the pass on PostgreSQL (30,000 persons).
_SCAN = DriverSql(
    "SELECT rid, res_type, res_id, content FROM resource"
    " WHERE rid > :after AND deleted = :no AND res_type IN ("
    + ", ".join(f"'{name}'" for name in TYPES)
    + ") ORDER BY rid LIMIT :limit"
)


def _deferred() -> list[Index]:
    return [index for index in care_fact.indexes if index.name in DEFERRED_INDEXES]


def _probe_by_source(conn: Connection) -> None:
    """A catch-up batch deletes the old facts of up to ``CareFacts.BATCH`` sources: one index
    probe each. PostgreSQL's planner may price that above a scan of the whole table (a hashed
    ``= ANY`` per row looks cheap beside 5,000 probes priced as random reads), and the table
    is the one the pass is filling, so the scans grew with it. Measured at 50,000 persons
    (1.76 M versions): with the table's statistics out of date, the delete went from 17 to
    100 ms a batch as the table filled (the pass from 54,500 to 27,500 versions/s); with the
    probes, 22 ms a batch throughout; with fresh statistics too, 31.5 -> 27.7 s for the pass.
    Only for the batch's transaction (``SET LOCAL``)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")


class CareFacts:
    """Keeps ``care_fact`` true to the record: a write hook and a catch-up pass."""

    BATCH = 5_000
    # versions behind from which a pass over an empty facts table defers its indexes
    DEFER_INDEXES_FROM = 200_000

    def __init__(self, store: Store, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog
        self.codes = _Codes(catalog)
        facts_metadata.create_all(store.writer)
        # a pass that deferred its indexes and was stopped before it built them: built now
        for index in _deferred():
            index.create(store.writer, checkfirst=True)
        # persons are read from the registry's membership table, which may not exist yet
        mpi_member.create(store.writer, checkfirst=True)
        self._lock = threading.Lock()
        self._hooked = False

    # -- live writes ----------------------------------------------------------------------

    def attach(self, progress: Callable[[int], None] | None = None) -> int:
        """Start following writes, then extract what was stored before. Returns the number
        of resource versions read by the catch-up."""
        if not self._hooked:
            self.store.write_hooks.append(self._on_write)
            self._hooked = True
        return self.catch_up(progress)

    def _on_write(
        self, session: Session, resource_type: str, resource_id: str, body: dict[str, Any] | None
    ) -> None:
        """Gather the facts of the transaction's writes and store them once, before it commits:
        a statement per write would also make the store send its pending index rows each time
        (a transaction Bundle of 100 Observations took 200 round trips more)."""
        if resource_type not in TYPES:
            return
        gathered: dict[str, list[dict[str, Any]]] | None = session.extras.get(_GATHERED)
        replaced: set[str] = session.extras.setdefault(_REPLACED, set())
        if gathered is None:
            gathered = session.extras[_GATHERED] = {}
            session.before_commit.append(
                lambda: self._store_gathered(session.conn, gathered, replaced)
            )
        source = f"{resource_type}/{resource_id}"
        gathered[source] = _rows(source, extract(resource_type, body, self.codes))
        if body is None or str((body.get("meta") or {}).get("versionId")) != "1":
            replaced.add(source)

    def _store_gathered(
        self, conn: Connection, gathered: dict[str, list[dict[str, Any]]], replaced: set[str]
    ) -> None:
        sources = sorted(gathered)
        # a first version has no facts stored yet: only the others' are deleted
        stale = [source for source in sources if source in replaced]
        for start in range(0, len(stale), 500):
            chunk = stale[start : start + 500]
            conn.execute(delete(care_fact).where(care_fact.c.source.in_(chunk)))
        rows = [row for source in sources for row in gathered[source]]
        if rows:
            conn.execute(insert(care_fact), rows)

    # -- stored without hooks ----------------------------------------------------------------

    def _state(self, conn: Connection) -> dict[str, str]:
        return {r.key: r.value for r in conn.execute(select(care_fact_state))}

    def _set_state(self, conn: Connection, key: str, value: str) -> None:
        conn.execute(delete(care_fact_state).where(care_fact_state.c.key == key))
        conn.execute(insert(care_fact_state), [{"key": key, "value": value}])

    def behind(self) -> bool:
        """Whether resources were stored since the last catch-up (one indexed lookup)."""
        return self.backlog() > 0

    def backlog(self) -> int:
        """About how many resource versions the next catch-up reads: those numbered since its
        last pass, or all of them when the catalog's codes changed (one indexed lookup)."""
        with self.store.reader.connect() as conn:
            state = self._state(conn)
            last = int(conn.execute(select(func.max(resource_version.c.seq))).scalar() or 0)
        mark = int(state.get("seq", 0)) if state.get("digest") == self.catalog.digest else 0
        return max(last - mark, 0)

    def forget(self) -> None:
        """Drop every fact, so the next catch-up extracts the whole record again."""
        with self._lock, self.store.writer.begin() as conn:
            conn.execute(delete(care_fact))
            conn.execute(delete(care_fact_state))

    def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Extract the facts of every resource version stored since the last pass (all of them
        when the catalog's codes changed). Safe to run while the server writes."""
        with self._lock:
            with self.store.writer.connect() as conn:
                state = self._state(conn)
                if state.get("digest") != self.catalog.digest:
                    conn.execute(delete(care_fact))
                    conn.execute(delete(care_fact_state))
                    self._set_state(conn, "digest", self.catalog.digest)
                    conn.commit()
                    state = {"seq": "0"}
                mark = int(state.get("seq", 0))
                last = self._bulk(conn, mark)
                deferred = self._defer_indexes(conn) if last is not None else []
            try:
                if last is not None:
                    done = self._scan(mark, last, progress)
                else:
                    done = self._pass(mark, progress)
            finally:
                if deferred:
                    with self.store.writer.begin() as conn:
                        for index in deferred:
                            index.create(conn, checkfirst=True)
            if done >= self.BATCH:
                # the planner needs statistics of the table it was just filled (the bulk
                # load's ANALYZE ran before the facts existed)
                with self.store.writer.connect() as conn:
                    conn.exec_driver_sql("ANALYZE care_fact")
                    conn.commit()
            return done

    def _bulk(self, conn: Connection, mark: int) -> int | None:
        """A first pass over a large record (no fact yet, many versions behind): the last
        version numbered, for ``_scan``; None otherwise. The table is found empty again after
        that number is read, so a live write's facts are either seen there or of a version
        numbered after it (the common case, facts there, costs one lookup)."""
        if not self._no_facts(conn):
            return None
        last = int(conn.execute(select(func.max(resource_version.c.seq))).scalar() or 0)
        if last - mark < self.DEFER_INDEXES_FROM or not self._no_facts(conn):
            return None
        return last

    @staticmethod
    def _no_facts(conn: Connection) -> bool:
        return conn.execute(select(care_fact.c.source).limit(1)).first() is None

    @staticmethod
    def _defer_indexes(conn: Connection) -> list[Index]:
        deferred = _deferred()
        for index in deferred:
            index.drop(conn, checkfirst=True)
        conn.commit()
        return deferred

    def _pass(self, mark: int, progress: Callable[[int], None] | None) -> int:
        """Extract batch by batch from ``mark``, each batch in a transaction that also moves
        the mark. Returns the number of versions read."""
        done = 0
        while True:
            with self.store.writer.begin() as conn:
                _probe_by_source(conn)
                batch = conn.execute(
                    select(
                        resource_version.c.seq,
                        resource_version.c.res_type,
                        resource_version.c.res_id,
                    )
                    .where(resource_version.c.seq > mark)
                    .order_by(resource_version.c.seq)
                    .limit(self.BATCH)
                ).all()
                if not batch:
                    break
                wanted = {(r.res_type, r.res_id) for r in batch if r.res_type in TYPES}
                self._extract_current(conn, wanted)
                mark = batch[-1].seq
                self._set_state(conn, "seq", str(mark))
            done += len(batch)
            if progress is not None:
                progress(done)
        return done

    def _scan(self, mark: int, last: int, progress: Callable[[int], None] | None) -> int:
        """A first pass over a large record: the current version of every resource of the
        types with facts, read in storage order (one sequential scan), instead of each new
        version's resource looked up by key. At 100,000 persons on SQLite the lookups were most
        of the pass: the versions are numbered in load order but the keys are spread over the
        whole table. The mark moves to ``last``, the last version numbered when the facts table
        was found empty; what was stored after it is the next pass's. So only the facts of
        sources written since (by a live write's hook) are deleted before a batch's: a delete
        of every batch's 5,000 sources probed the index of the table being filled, 18 ms a
        batch at 30,000 persons on PostgreSQL, more as it outgrew the cache. Returns the number
        of versions that covers."""
        after, read = 0, 0
        while True:
            with self.store.writer.begin() as conn:
                _probe_by_source(conn)
                batch = driver_execute(
                    conn, _SCAN, {"after": after, "no": False, "limit": self.BATCH}, binary=True
                )
                if not batch:
                    self._set_state(conn, "seq", str(last))
                    break
                contents = [
                    (f"{res_type}/{res_id}", content) for _, res_type, res_id, content in batch
                ]
                fresh = self._written_since(conn, last)
                self._replace(conn, contents, [s for s, _ in contents if s in fresh])
                after = batch[-1][0]
            read += len(batch)
            if progress is not None:
                progress(min(read, last - mark))
        if progress is not None:
            progress(last - mark)
        return last - mark

    @staticmethod
    def _written_since(conn: Connection, last: int) -> set[str]:
        """The sources (``Type/id``) with a version numbered after ``last``: while a first pass
        scans, the only ones that may have facts already (a live write's hook stored them)."""
        found = conn.execute(
            select(resource_version.c.res_type, resource_version.c.res_id).where(
                resource_version.c.seq > last
            )
        )
        return {f"{row.res_type}/{row.res_id}" for row in found}

    def _replace(
        self,
        conn: Connection,
        contents: list[tuple[str, bytes | None]],
        stale: list[str] | None = None,
    ) -> None:
        """The facts of these sources (``Type/id``, current content or None when deleted),
        replacing any they had: a live write's hook may have stored some meanwhile. ``stale``:
        the only sources that may have facts already (default: all of them)."""
        rows: list[tuple[Any, ...]] = []
        for source, content in contents:
            if content is not None:
                res_type = source.partition("/")[0]
                rows.extend(_tuples(source, extract(res_type, orjson.loads(content), self.codes)))
        sources = [source for source, _ in contents] if stale is None else stale
        if sources:
            conn.execute(delete(care_fact).where(values_in(care_fact.c.source, sources, many=100)))
        # one COPY for the batch's tens of thousands of facts: SQLAlchemy's executemany spent
        # more on each row's parameters than the database on inserting it
        copy_rows(conn, care_fact, FACT_COLUMNS, rows)

    def _extract_current(self, conn: Connection, wanted: set[tuple[str, str]]) -> None:
        """Replace the facts of ``wanted`` resources from their current stored version."""
        by_type: dict[str, list[str]] = {}
        for res_type, res_id in wanted:
            by_type.setdefault(res_type, []).append(res_id)
        contents: list[tuple[str, bytes | None]] = []
        for res_type, ids in by_type.items():
            found = conn.execute(
                select(resource.c.res_id, resource.c.deleted, resource.c.content).where(
                    resource.c.res_type == res_type, values_in(resource.c.res_id, ids, many=100)
                )
            )
            contents.extend(
                (f"{res_type}/{row.res_id}", None if row.deleted else row.content) for row in found
            )
        self._replace(conn, contents)
