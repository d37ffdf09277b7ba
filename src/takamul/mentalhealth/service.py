"""Mental health in the running record: instruments stored as Questionnaires, responses scored
and safety Tasks raised in the writing transaction, a catch-up pass for bulk loads, escalation.

Every way a QuestionnaireResponse enters the record ends in ``MentalHealth.process``: the write
hook covers POST, PUT, transaction and batch entries (they all write through ``Session``), and
the catch-up pass covers bulk loads (``put_many`` runs no hooks), reading the versions stored
since its last pass by the record's change sequence. It runs at server start-up, at the end of
``takamul load``, and periodically in the server.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, delete, func, insert, select

from takamul.mentalhealth.instruments import instruments, merge_wording, questionnaire
from takamul.mentalhealth.safety import (
    Escalation,
    SafetyReads,
    due_safety_tasks,
    escalate_tasks,
    psy_meta,
    safety_flag,
    safety_task,
)
from takamul.mentalhealth.scoring import (
    Score,
    derived_id,
    score_response,
    scored_observation,
)
from takamul.store.guard import unguarded
from takamul.store.repository import Session, Store, WriteOptions
from takamul.store.schema import resource_version

__all__ = ["MentalHealth", "mh_state"]

log = logging.getLogger("takamul.mentalhealth")

mh_metadata = MetaData()
mh_state = Table(
    "mh_state",
    mh_metadata,
    Column("key", String(32), primary_key=True),
    Column("value", String(64), nullable=False),
)

RESPONSE = "QuestionnaireResponse"
TRUSTED = WriteOptions(trusted=True)
# safety Tasks escalated in one write transaction (``MentalHealth.escalate``)
ESCALATION_BATCH = 100


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal apart from ``meta`` (version and time differ; labels are ours either way)."""
    return {k: v for k, v in a.items() if k != "meta"} == {
        k: v for k, v in b.items() if k != "meta"
    }


def _stored(session: Session, reads: SafetyReads | None, resource_type: str, res_id: str) -> bool:
    """Whether the resource is stored: as the batch read it, else read now."""
    if reads is not None:
        return reads.has(resource_type, res_id)
    return session.current(resource_type, res_id) is not None


class MentalHealth:
    """Attach once at start-up; then every stored response is scored and checked for safety."""

    BATCH = 500

    def __init__(self, store: Store) -> None:
        self.store = store
        mh_metadata.create_all(store.writer)
        self._lock = threading.Lock()
        self._hooked = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start-up -----------------------------------------------------------------------------

    def attach(self) -> int:
        """Store the instruments, follow writes, and catch up on responses stored without
        hooks. Returns the number of responses the catch-up processed."""
        self.install_instruments()
        if not self._hooked:
            self.store.write_hooks.append(self._on_write)
            self._hooked = True
        return self.catch_up()

    def install_instruments(self) -> list[str]:
        """Every instrument as a Questionnaire (keeping installed wording); written only when
        its content changed, so a restart makes no new versions. Returns the ids written."""
        written: list[str] = []

        def work(session: Session) -> None:
            for inst in instruments():
                stored = session.current("Questionnaire", inst.id)
                body = merge_wording(questionnaire(inst), stored)
                if stored is None or not _same(stored, body):
                    session.update("Questionnaire", inst.id, body)
                    written.append(inst.id)

        with unguarded():
            self.store.write(work)
        return written

    def store_questionnaire(self, body: dict[str, Any]) -> None:
        """Store a Questionnaire built by ``install_wording`` (its wording installed)."""
        with unguarded():
            self.store.write(lambda s: s.update("Questionnaire", body["id"], body))

    def stored_questionnaire(self, instrument_id: str) -> dict[str, Any] | None:
        with self.store.reading() as session:
            return session.current("Questionnaire", instrument_id)

    # -- writes -------------------------------------------------------------------------------

    def _on_write(
        self, session: Session, resource_type: str, resource_id: str, body: dict[str, Any] | None
    ) -> None:
        if resource_type == RESPONSE and body is not None:
            with unguarded():
                self.process(session, resource_id, body)

    def process(
        self,
        session: Session,
        response_id: str,
        response: Mapping[str, Any],
        derived: list[dict[str, Any]] | None = None,
        reads: SafetyReads | None = None,
    ) -> Score | None:
        """Score one stored response and raise its safety Flag and Task, in ``session``.
        ``derived``: the current Observations derived from it, and ``reads``: what its safety
        follow-up needs, when the caller (a batch) has read them."""
        score = score_response(response)
        if score is None:
            return None
        if response.get("status") == "entered-in-error":
            return score
        observation = scored_observation(response, response_id, score)
        if observation is not None:
            self._store_score(session, response_id, observation, derived)
        else:
            log.info(
                "QuestionnaireResponse/%s not scored: %s",
                response_id,
                "; ".join(i.diagnostics for i in score.issues),
            )
        subject = response.get("subject")
        if score.safety and isinstance(subject, dict) and subject.get("reference"):
            # judged on the answer itself, whatever the status of the form: an answered item 9
            # is known to the record and must be followed up
            flag = safety_flag(response, response_id, score)
            if not _stored(session, reads, "Flag", flag["id"]):
                session.update("Flag", flag["id"], flag)
            task_id = derived_id("mht", response_id)
            if not _stored(session, reads, "Task", task_id):
                task = safety_task(session, response, response_id, score, reads)
                session.update("Task", task_id, task)
        return score

    def _store_score(
        self,
        session: Session,
        response_id: str,
        observation: dict[str, Any],
        derived: list[dict[str, Any]] | None,
    ) -> None:
        coding = observation["code"]["coding"][0]
        if derived is None:
            # one lookup finds both the facility's scores of this response and our own earlier
            derived = session.referring("Observation", "derived-from", f"{RESPONSE}/{response_id}")
        stored = next((o for o in derived if o["id"] == observation["id"]), None)
        facility_scores = [
            o
            for o in derived
            if o["id"] != observation["id"]
            and any(
                c.get("system") == coding["system"] and c.get("code") == coding["code"]
                for c in (o.get("code") or {}).get("coding") or ()
            )
        ]
        if any(o.get("valueInteger") == observation["valueInteger"] for o in facility_scores):
            # the facility already recorded the same total (the synthetic data does): a second
            # Observation of the same score would count the screen twice
            return
        observation["meta"] = psy_meta()
        if stored is None or not _same(stored, observation):
            # built here from a validated response by ``scored_observation``, whose output the
            # tests validate: validating it again would be most of the hook's cost
            session.update("Observation", observation["id"], observation, options=TRUSTED)

    # -- stored without hooks -----------------------------------------------------------------

    def _mark(self) -> int:
        with self.store.reader.connect() as conn:
            value = conn.execute(select(mh_state.c.value).where(mh_state.c.key == "seq")).scalar()
        return int(value or 0)

    def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Process every response version stored since the last pass (bulk loads). Safe to run
        while the server writes: what the hook did is found and not repeated. ``progress``:
        called with the number of responses processed so far, after each batch."""
        with self._lock:
            mark = self._mark()
            with self.store.reader.connect() as conn:
                end = int(conn.execute(select(func.max(resource_version.c.seq))).scalar() or 0)
                # in the order they were stored, each once: a batch's responses then lie
                # together in the table, read page by page when the store is larger than
                # memory (sorted by id, as before, a record's UUIDs spread every batch over it)
                versions = conn.execute(
                    select(resource_version.c.res_id)
                    .where(
                        resource_version.c.seq > mark,
                        resource_version.c.seq <= end,
                        resource_version.c.res_type == RESPONSE,
                    )
                    .order_by(resource_version.c.seq)
                )
                ids = list(dict.fromkeys(r.res_id for r in versions))
            for start in range(0, len(ids), self.BATCH):
                chunk = ids[start : start + self.BATCH]

                def work(session: Session, chunk: list[str] = chunk) -> None:
                    # the batch's responses and their derived Observations read in two
                    # statements: read one by one, each read was a round trip and sent the
                    # previous response's pending rows on its own (10k persons: 20.7 s)
                    bodies = session.current_many(RESPONSE, chunk)
                    derived = session.referring_many(
                        "Observation", "derived-from", [f"{RESPONSE}/{i}" for i in chunk]
                    )
                    reads = SafetyReads.read(session, bodies)
                    for response_id in chunk:
                        if (body := bodies.get(response_id)) is not None:
                            known = derived.get(f"{RESPONSE}/{response_id}", [])
                            self.process(session, response_id, body, known, reads)

                with unguarded():
                    self.store.write(work)
                if progress is not None:
                    progress(start + len(chunk))
            if end > mark:
                with self.store.writer.begin() as conn:
                    conn.execute(delete(mh_state).where(mh_state.c.key == "seq"))
                    conn.execute(insert(mh_state), [{"key": "seq", "value": str(end)}])
            return len(ids)

    # -- escalation ---------------------------------------------------------------------------

    def escalate(self, now: datetime | None = None, hours: float | None = None) -> list[Escalation]:
        """Escalate safety Tasks still not acknowledged after ``hours`` (default
        ``TAKAMUL_MH_ESCALATE_HOURS``, 24)."""
        moment = now or datetime.now(UTC)
        done: list[Escalation] = []
        with unguarded():
            with self.store.reading() as session:
                due = due_safety_tasks(session, moment, hours)
            # A transaction a batch: on SQLite a write transaction holds every other writer
            # (API writes, the audit log), and the first tick over a record loaded with a
            # backlog of unacknowledged Tasks (350,000 persons) held them for over 40 minutes
            # in one. The candidates are read once; each batch reads its own Tasks again.
            for start in range(0, len(due), ESCALATION_BATCH):
                batch = due[start : start + ESCALATION_BATCH]
                done.extend(
                    self.store.write(
                        partial(escalate_tasks, task_ids=batch, now=moment, hours=hours)
                    )
                )
        return done

    def tick(self, now: datetime | None = None) -> list[Escalation]:
        """What the server runs periodically: catch up on bulk loads, then escalate."""
        self.catch_up()
        return self.escalate(now)

    def start_background(self, interval: float | None = None) -> None:
        """Run ``tick`` every ``interval`` seconds (``TAKAMUL_MH_INTERVAL_SECONDS``, default
        300; 0 turns it off) in a daemon thread."""
        every = float(
            os.environ.get("TAKAMUL_MH_INTERVAL_SECONDS", "300") if interval is None else interval
        )
        if every <= 0 or self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(every):
                try:
                    escalated = self.tick()
                    if escalated:
                        log.warning("mental health: escalated %d safety Tasks", len(escalated))
                except Exception:  # the next tick tries again; the loop must not die
                    log.exception("mental health: periodic catch-up/escalation failed")

        self._thread = threading.Thread(target=run, name="takamul-mh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
