"""Audit log throughput and added latency (AUDIT.md A-08, A-09), against the embedded MongoDB
(SecantusDB, on disk, in its own process).

1. Events per second, one event per request, written
   - one ``insert_one`` per event (the same documents, collection indexes and write concern as
     the audit log), from 1 and 64 concurrent requests: a chain without group commit is written
     one event at a time; "unchained" (each event a chain of its own) shows the ceiling of
     concurrent single inserts;
   - through ``AuditLog.record`` (chained, group commit) from 1 and 64 concurrent requests.
2. The latency an audited request gains: building its AuditEvents from its facts and
   ``record_request`` returning (durable), p50 and p99, at concurrency 1 and 64.

Compare the ratios: the machine is shared and noisy.

    .venv/bin/python benchmarks/audit_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from consent.decide import Basis, Decision
from gateway.audit.chain import EMPTY, Chain, link
from gateway.audit.events import request_events
from gateway.audit.facts import Observer, PatientRelease, RequestFacts
from gateway.audit.log import AuditLog
from gateway.audit.records import write_concern
from gateway.audit.store import EVENTS, ensure_indexes
from gateway.localstack import EmbeddedMongo

OBSERVER = Observer("bench:8080", "http://127.0.0.1:8080/fhir")
ROUNDS = 3
PERMIT = Decision(
    permitted=True,
    basis=Basis.PERMIT,
    reason="permitted",
    consent_id="consent-1",
    provision="provision",
    purposes=("TREAT",),
)


def facts() -> RequestFacts:
    """A practitioner's app reading one Observation of one patient: one AuditEvent."""
    return RequestFacts(
        interaction="read",
        method="GET",
        path="Observation/obs-1",
        client_id="ward-app",
        issuer="http://127.0.0.1:8080",
        subject="user-7",
        fhir_user="Practitioner/prac-1",
        jti=uuid.uuid4().hex,
        purposes=("TREAT",),
        address="192.0.2.10",
        resource_type="Observation",
        resource_id="obs-1",
        version_id="3",
        patients=(PatientRelease("pat-1", (PERMIT,), ("Observation/obs-1/_history/3",)),),
        request_id=uuid.uuid4().hex,
    )


async def run_for(
    seconds: float, concurrency: int, step: Callable[[], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Requests per second and each request's latency (ms), ``concurrency`` loops for
    ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await step()
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - start), latencies


def p(latencies: list[float], q: float) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[int(q) - 1]


async def measure(db: AsyncDatabase[dict[str, Any]], spool: Path, seconds: float) -> list[str]:
    concern = await write_concern(db)
    naive_db = db.client[f"{db.name}_naive"]
    await ensure_indexes(naive_db)  # the same collection, indexes and write concern
    naive = naive_db.get_collection(EVENTS, write_concern=concern)
    rows: list[str] = []
    results: dict[tuple[str, int], tuple[float, list[float]]] = {}

    chain = Chain("naive")
    lock = asyncio.Lock()

    async def insert_one() -> None:
        """Without group commit a chain is written one event at a time, in order."""
        event = request_events(facts(), OBSERVER)[0]
        async with lock:
            await naive.insert_one(chain.append([event])[0])

    async def insert_one_unchained() -> None:
        """The ceiling of single inserts: concurrent, each on a chain of its own."""
        event = request_events(facts(), OBSERVER)[0]
        await naive.insert_one(link(event, uuid.uuid4().hex, EMPTY))

    audit = AuditLog(db, spool, OBSERVER, None)
    await audit.start()

    async def record() -> None:
        await audit.record_request(facts())

    scenarios: list[tuple[str, int, Callable[[], Awaitable[None]]]] = [
        ("insert_one per event", 1, insert_one),
        ("group commit (AuditLog.record)", 1, record),
        ("insert_one per event", 64, insert_one),
        ("insert_one per event, unchained", 64, insert_one_unchained),
        ("group commit (AuditLog.record)", 64, record),
    ]
    rounds: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
    try:
        for _ in range(ROUNDS):  # interleaved, the median round reported: the machine is noisy
            for name, concurrency, step in scenarios:
                measured = await run_for(seconds, concurrency, step)
                rounds.setdefault((name, concurrency), []).append(measured)
    finally:
        await audit.close()
    for key, measured in rounds.items():
        results[key] = sorted(measured, key=lambda m: m[0])[len(measured) // 2]
    assert audit.status().mode.value == "mongodb"
    rows.append("| writer | concurrency | events/s | p50 ms | p99 ms |")
    rows.append("| --- | ---: | ---: | ---: | ---: |")
    for (name, concurrency), (rate, latencies) in results.items():
        rows.append(
            f"| {name} | {concurrency} | {rate:,.0f} | {p(latencies, 50):.2f} | "
            f"{p(latencies, 99):.2f} |"
        )
    rows.append("")
    rows.append("| concurrency | group commit / insert_one (events/s) |")
    rows.append("| ---: | ---: |")
    for concurrency in (1, 64):
        ratio = (
            results[("group commit (AuditLog.record)", concurrency)][0]
            / results[("insert_one per event", concurrency)][0]
        )
        rows.append(f"| {concurrency} | {ratio:.2f} |")
    return rows


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as workdir:
        mongo = EmbeddedMongo(data_dir=Path(workdir) / "mongo")
        mongo.start()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, tz_aware=True)
        try:
            rows = await measure(client.bench, Path(workdir) / "spool", seconds)
        finally:
            await client.close()
            mongo.stop()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; "
        f"{ROUNDS} interleaved rounds of {seconds:g} s, the median round\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args().seconds))
