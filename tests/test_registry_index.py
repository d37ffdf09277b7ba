"""The real-time candidate index keeps its blocks compact (a key's hash, a bare id, a tuple, a
set past ``SMALL`` records): whatever the order of adds, replacements and removals, its candidates
and an ID's holders are those a plain reading of every record's block keys gives."""

from __future__ import annotations

import random
from typing import Any

from takamul.mpi.service import default_model
from takamul.registry.index import CandidateIndex
from takamul.registry.record import RegistryRecord, from_patient

SA_ID = "https://takamul.health/fhir/sid/sa-national-id"
GIVEN = ["Mohammed", "محمد", "Fatimah", "Noura", "نورة"]
FAMILY = ["Al-Harbi", "الحربي", "Al-Qahtani"]


def body(pid: str, rng: random.Random) -> dict[str, Any]:
    # few names, dates and IDs: blocks hold from one record to more than SMALL
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"given": [rng.choice(GIVEN)], "family": rng.choice(FAMILY)}],
        "birthDate": rng.choice(["1980-01-02", "1980-01-03", "2011-07-09"]),
        "identifier": [{"system": SA_ID, "value": rng.choice(["1000000008", "1000000016"])}],
    }


def expected_candidates(
    index: CandidateIndex, records: dict[str, RegistryRecord], record: RegistryRecord
) -> set[str]:
    holders: dict[tuple[str, ...], set[str]] = {}
    for other in records.values():
        for key in index.block_keys(other):
            holders.setdefault(key, set()).add(other.patient_id)
    found: set[str] = set()
    for key in index.block_keys(record):
        members = holders.get(key, set())
        if len(members) <= index.model.blocking[int(key[0])].max_block_size:
            found |= members
    return found - {record.patient_id}


def test_candidates_and_holders_follow_every_add_and_removal() -> None:
    rng = random.Random(11)
    index = CandidateIndex(default_model())
    records: dict[str, RegistryRecord] = {}
    forms: set[type] = set()
    for step in range(600):
        pid = f"p{rng.randrange(40)}"
        if pid in records and rng.random() < 0.35:
            index.remove(pid)
            del records[pid]
        else:
            record = from_patient(body(pid, rng))
            index.add(record)  # a replacement when the patient is there already
            records[pid] = record
        forms.update(type(held) for held in index._blocks.values())
        if step % 25 == 0:
            for record in records.values():
                assert index.candidates(record) == expected_candidates(index, records, record)
            for nid in ("1000000008", "1000000016"):
                carrying = {p for p, r in records.items() if r.national_id == nid}
                assert index.holders_of(nid) == carrying
    # every form a block takes was reached: one record, a few, more than SMALL
    assert forms == {str, tuple, set}
    for pid in list(records):
        index.remove(pid)
    assert not index._blocks and not index._id_holders and len(index) == 0
