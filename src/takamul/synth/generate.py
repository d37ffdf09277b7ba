"""The generator's driver: facilities first, then people block by block (optionally in worker
processes), written in block order so the same seed and config give the same bytes.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from takamul.synth import tables
from takamul.synth.caregiving import Caregiving
from takamul.synth.clinical import Clinic
from takamul.synth.facilities import Network, build_network
from takamul.synth.mentalhealth import CollaborativeCare
from takamul.synth.people import HouseholdFactory, Person
from takamul.synth.referrals import ReferralMaker
from takamul.synth.registrations import Record, Registrar
from takamul.synth.writer import BlockOutput, OutputWriter

__all__ = ["Progress", "Summary", "generate"]

Progress = Callable[[int, int], None]  # (persons written, resources written)


@dataclass(slots=True)
class Summary:
    out_dir: Path
    persons: int
    patients: int
    resources: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.resources.values())

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


class BlockGenerator:
    """Everything a worker needs to turn a block number into serialised people."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.table = tables.country(config["country"])
        self.network: Network = build_network(self.table, config, lambda _t, _b: None)
        self.registrar = Registrar(config, self.table, self.network)
        self.clinic = Clinic(config, self.table, self.network)
        self.mental_health = CollaborativeCare(config, self.table, self.network)
        self.referrals = ReferralMaker(config, self.table, self.network)
        self.caregiving = Caregiving(config, self.table, self.network)

    def run(self, block: int) -> BlockOutput:
        cfg = self.config
        size, n = cfg["block_persons"], cfg["patients"]
        first, last = block * size, min(n, (block + 1) * size)
        rng = Random(f"{cfg['seed']}/{cfg['country']}/block/{block}")
        # A fresh factory per block: its pyramid quotas must not depend on which worker ran
        # which blocks before.
        factory = HouseholdFactory(cfg, self.network)
        out = BlockOutput()
        index, hh = first, 0
        while index < last:
            members = factory.household(rng, f"H{block:05d}-{hh:04d}", index)[: last - index]
            for person in members:
                plan = self.clinic.plan(person, members)
                records = self.registrar.register(rng, person, out.emit)
                # the books of a person with depression or anxiety watch what is written
                books = self.mental_health.books(person)
                emit = out.emit if books is None else books.watch(out.emit)
                # and a dependent adult's watch notes the caregiver RelatedPerson written
                carer = self.caregiving.watcher(person)
                emit = emit if carer is None else carer.watch(emit)
                outcome = self.clinic.history(rng, person, records, members, emit, plan)
                if books is not None:
                    self.mental_health.care(person, records, books, plan is not None, out.emit)
                    row = books.row(person.pid)
                    if row is not None:
                        out.mental_health.append(row)
                out.referrals.extend(self.referrals.refer(person, records, out.emit))
                if carer is not None:
                    out.caregivers.extend(
                        self.caregiving.screen(
                            person, records, members, carer, outcome.get("caregiver", ""), out.emit
                        )
                    )
                if plan is not None:
                    out.programmes.extend(plan.rows(person.pid))
                out.persons.append(_person_row(person, records, outcome))
                out.registrations.extend(
                    [r.patient_id, person.pid, r.facility.fid, r.facility.kind, r.script,
                     ";".join(r.variants)]
                    for r in records
                )  # fmt: skip
            index += len(members)
            hh += 1
        return out


def _person_row(p: Person, records: list[Record], outcome: dict[str, str]) -> list[str]:
    return [
        p.pid, p.household, p.role, p.group, p.nationality, p.sex, p.birth.isoformat(),
        str(p.age), p.region.code, p.region.name, "1" if p.urban else "0",
        "1" if p.region.remote else "0", str(p.lat), str(p.lon), str(p.quintile), p.education,
        p.payer[0] if p.payer else "uninsured", "1" if p.disability else "0", p.national_id,
        p.mother.pid if p.mother else "", p.father.pid if p.father else "", p.home.fid,
        str(p.travel_km), ";".join(sorted(p.conditions)), outcome["screened"],
        outcome["diabetes_controlled"], outcome["mh_treated"], outcome.get("caregiver", ""),
        str(len(records)), p.died.isoformat() if p.died else "",
    ]  # fmt: skip


_WORKER: BlockGenerator | None = None


def _init_worker(config: dict[str, Any]) -> None:
    global _WORKER
    _WORKER = BlockGenerator(config)


def _run_block(block: int) -> BlockOutput:
    assert _WORKER is not None
    return _WORKER.run(block)


def _blocks(config: dict[str, Any]) -> Iterator[BlockOutput]:
    count = -(-config["patients"] // config["block_persons"])
    if config["workers"] <= 1 or count == 1:
        gen = BlockGenerator(config)
        for b in range(count):
            yield gen.run(b)
        return
    ctx = multiprocessing.get_context("fork" if hasattr(__import__("os"), "fork") else "spawn")
    with ctx.Pool(config["workers"], initializer=_init_worker, initargs=(config,)) as pool:
        # imap keeps block order whatever order the workers finish in; chunks of one block
        # bound the memory held in flight to a few blocks.
        yield from pool.imap(_run_block, range(count), chunksize=1)


def generate(config: dict[str, Any], out_dir: Path, progress: Progress | None = None) -> Summary:
    """Write the population described by ``config`` to ``out_dir``; return what was written."""
    started = time.perf_counter()
    writer = OutputWriter(out_dir)
    table = tables.country(config["country"])
    build_network(table, config, writer.emit)
    persons = patients = 0
    try:
        for block in _blocks(config):
            writer.block(block)
            persons += len(block.persons)
            patients += len(block.registrations)
            if progress:
                progress(persons, sum(writer.counts.values()))
    finally:
        writer.close()
    summary = Summary(out_dir, persons, patients, dict(sorted(writer.counts.items())))
    summary.seconds = time.perf_counter() - started
    _write_metadata(writer, config, summary)
    return summary


def _write_metadata(writer: OutputWriter, config: dict[str, Any], summary: Summary) -> None:
    clinical = tables.clinical()
    country = config["country"]
    writer.write_json(
        "truth/effects.json",
        {
            # Worker count changes speed, never bytes, so it is left out of the record.
            "config": {k: v for k, v in config.items() if k != "workers"},
            "prevalence": {
                "age_bands": clinical["age_bands"],
                "conditions": {k: v[country] for k, v in clinical["conditions"].items()},
                "income_rr": config["conditions"]["income_rr"],
                "note": "prevalence = table[sex][age band] * income_rr[quintile - 1]",
            },
            "inequities": config["inequities"],
            "registrations": config["registrations"],
        },
    )
    transaction_time = f"{config['end_date']}T23:59:59+00:00"
    writer.write_json(
        "manifest.json",
        {
            "transactionTime": transaction_time,
            "request": (
                f"takamul synth --country {country} --patients {config['patients']} "
                f"--seed {config['seed']} --years {config['years']}"
            ),
            "requiresAccessToken": False,
            "output": [
                {"type": t, "url": f"{t}.ndjson", "count": c} for t, c in summary.resources.items()
            ],
            "error": [],
        },
    )
