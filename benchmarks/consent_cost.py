"""The cost of the consent step per request (CONSENT.md C-12), measured in-process against the
embedded MongoDB: what ``ConsentGate`` adds to one read of one resource, with the patient's
consents unchanged since the last request (the common case: one shared counter read) and right
after a consent changed (the counter moved: the consents are read again), next to the raw
indexed query and the per-resource decision.

    .venv/bin/python benchmarks/consent_cost.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pymongo import AsyncMongoClient

from consent.store import Change, Channel, ConsentStore
from gateway.fhir.consent_gate import ConsentGate
from gateway.fhir.context import AccessContext
from gateway.fhir.freshness import ChangeEpochs
from gateway.localstack import EmbeddedMongo
from smart_auth.clients import ClientStore, ClientType, new_client
from smart_auth.scopes import ScopeSet

CHANGE = Change("cli", Channel.CLI, "benchmark set-up")

PATIENT = "pat-bench"
RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "10-patient-amelia-rossi.json"
RECORD_TYPES = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
    "DocumentReference",
]
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": f"Patient/{PATIENT}"},
    "effectiveDateTime": "2025-01-01T00:00:00Z",
}


async def _mean_us(n: int, step: Callable[[], Awaitable[object]]) -> float:
    for _ in range(50):
        await step()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await step()
        samples.append(time.perf_counter() - started)
    return statistics.mean(samples) * 1e6


def _record() -> list[dict[str, Any]]:
    """A fixture patient's resources, made the benchmark patient's."""
    raw = RECORD.read_bytes().replace(b"pat-amelia-rossi", PATIENT.encode())
    return [entry["resource"] for entry in orjson.loads(raw)["entry"]]


def _per_resource_us(
    release: Callable[[dict[str, Any]], object], entries: int
) -> tuple[float, int]:
    """Mean µs of ``release`` per resource over a search result of ``entries`` resources, and
    how many of them were released."""
    record = _record()
    page = [record[i % len(record)] for i in range(entries)]
    copies = [orjson.loads(orjson.dumps(page)) for _ in range(5)]  # release may change its input
    best = float("inf")
    released = 0
    for resources in copies:
        started = time.perf_counter()
        outcomes = [release(resource) for resource in resources]
        best = min(best, time.perf_counter() - started)
        released = sum(outcome is not None for outcome in outcomes)
    return best / entries * 1e6, released


async def main(requests: int) -> None:
    mongo = EmbeddedMongo()
    mongo.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, tz_aware=True)
    try:
        db = client["consent_cost"]
        store = ConsentStore(db)
        await store.ensure_indexes()
        clients = ClientStore(db)
        await clients.add(
            new_client(
                client_id="bench-app",
                name="Bench",
                client_type=ClientType.ASYMMETRIC,
                scope="patient/*.rs",
                purposes=("PATRQT",),
                jwks={"keys": []},
            )
        )
        now = datetime.now(UTC)
        for i in range(1000):  # other patients' consents, so the index has work to do
            await store.grant_app(
                f"pat-{i}",
                "bench-app",
                "Bench",
                ["PATRQT"],
                ["Observation"],
                [],
                now,
                None,
                change=CHANGE,
            )
        for types in (["Observation"], ["Patient"], ["Condition"], ["Encounter"], ["Immunization"]):
            await store.grant_app(
                PATIENT,
                "bench-app",
                "Bench",
                ["PATRQT"],
                types,
                [],
                now - timedelta(minutes=1),
                now + timedelta(days=1),
                supersede=False,
                change=CHANGE,
            )
        await store.grant_app(
            PATIENT,
            "bench-app",
            "Bench",
            ["PATRQT", "HRESCH"],
            RECORD_TYPES,
            [],
            now - timedelta(minutes=1),
            now + timedelta(days=1),
            supersede=False,
        )
        gate = ConsentGate(store, clients, ChangeEpochs(db))
        context = AccessContext(
            issuer="i",
            subject="s",
            client_id="bench-app",
            scopes=ScopeSet.parse("patient/*.rs"),
            jti="j",
            expires_at=now,
            patient=PATIENT,
            purposes=("PATRQT",),
        )

        async def one_request() -> object:
            request = await gate.start(context)
            await gate.load(request, [PATIENT])
            return request.release(dict(OBSERVATION))

        async def after_a_change() -> object:
            await db["change_epochs"].update_one({"_id": "consents"}, {"$inc": {"n": 1}})
            return await one_request()

        async def counter_write() -> object:
            return await db["change_epochs"].update_one({"_id": "consents"}, {"$inc": {"n": 1}})

        raw = await _mean_us(requests, lambda: store.active_for(PATIENT))
        unchanged = await _mean_us(requests, one_request)
        changed = await _mean_us(requests, after_a_change) - await _mean_us(requests, counter_write)
        request = await gate.start(context)
        await gate.load(request, [PATIENT])
        started = time.perf_counter()
        for _ in range(requests):
            request.release(dict(OBSERVATION))
        decide = (time.perf_counter() - started) / requests * 1e6
        per_resource: dict[str, tuple[float, int]] = {}
        for purpose in ("PATRQT", "HRESCH"):
            request = await gate.start(replace(context, purposes=(purpose,)))
            await gate.load(request, [PATIENT])
            per_resource[purpose] = _per_resource_us(request.release, 1000)
    finally:
        await client.close()
        mongo.stop()
    print(f"\n{datetime.now(UTC):%Y-%m-%d}, {requests} requests each, mean wall time per request\n")
    print("| step | µs |")
    print("| --- | ---: |")
    print(f"| `active_for` alone (one indexed query, 5 consents among 1,005) | {raw:,.0f} |")
    label = "consent step, consents unchanged (counter read + cached consents + decision)"
    print(f"| {label} | {unchanged:,.0f} |")
    print(f"| consent step right after a consent changed (consents read again) | {changed:,.0f} |")
    print(f"| decision + minimisation of one resource (no I/O) | {decide:,.1f} |")
    print("\nPer released resource, decision + minimisation (no I/O), over a 1,000-entry result")
    print("made of a fixture patient's record (best of 5 passes)\n")
    print("| purpose | µs per resource | released |")
    print("| --- | ---: | ---: |")
    for purpose, (cost, released) in per_resource.items():
        print(f"| {purpose} | {cost:,.1f} | {released:,} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
