"""Forwarding the audit log from a running gateway (AUDIT.md A-08; ``audit_forward_url``): the
forwarder runs beside the requests, a repository that does not answer holds up no release, and
``/metrics`` shows the backlog going down once it answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from gateway.audit.facts import Observer
from gateway.audit.log import AuditLog
from gateway.audit.store import EVENTS
from tests.audit.conftest import audit_client
from tests.audit.repository import Repository, running_repository
from tests.audit.samples import event
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import SessionFor

pytestmark = pytest.mark.e2e

METRICS_TOKEN = "forward-metrics-token"


@pytest_asyncio.fixture
async def repository() -> AsyncIterator[Repository]:
    async with running_repository() as found:
        yield found


@pytest_asyncio.fixture
async def gateway(
    start_gateway: StartGateway, local_stack_env: Stack, repository: Repository
) -> AsyncIterator[RunningGateway]:
    """A gateway that forwards its database's audit log to the stand-in repository; it stops
    (its forwarder with it) before the repository does, so that nothing is still sending to
    the repository while it shuts down."""
    running = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        audit_forward_url=repository.base,
        audit_forward_poll_seconds=0.05,
        audit_forward_backoff_seconds=0.05,
        audit_forward_backoff_max_seconds=0.2,
        metrics_token=METRICS_TOKEN,
    )
    yield running
    await running.server.close()


async def backlog(http: aiohttp.ClientSession, gateway: RunningGateway) -> float | None:
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with http.get(f"{gateway.base}/metrics", headers=headers) as response:
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        if family.name == "fhir_gateway_audit_forward_backlog":
            return float(family.samples[0].value)
    return None


async def until(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a08_a_release_never_waits_for_the_audit_repository(
    gateway: RunningGateway,
    repository: Repository,
    session_for: SessionFor,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    repository.hold = asyncio.Event()  # takes the connection, never answers until set
    client = audit_client(local_stack_env.mongo_uri)
    db = client[gateway.settings.mongodb_database]
    log = AuditLog(db, tmp_path / "spool", Observer("other-instance:1", gateway.fhir), None)
    await log.start()
    try:
        await log.record([event(), event(), event()])

        async def in_flight() -> bool:
            return repository.waiting >= 1

        await until(in_flight)
        app = await session_for()
        async with app.get(f"{gateway.fhir}/Patient/pat-amelia-rossi") as response:
            assert response.status == 200  # answered while the repository holds its request
        assert repository.waiting >= 1 and not repository.taken
        # At least the three events of the other instance wait (the gateway's own records of
        # this test's requests, on its chain, join them as the forwarder counts them).
        assert (await backlog(http, gateway) or 0) >= 3

        repository.hold.set()

        async def drained() -> bool:
            stored = [str(d["_id"]) async for d in db[EVENTS].find({}, {"_id": 1})]
            return set(stored) <= set(repository.taken) and await backlog(http, gateway) == 0

        await until(drained)
        stored = [d async for d in db[EVENTS].find({}, {"_id": 1, "chain": 1}).sort("seq", 1)]
        assert sorted(set(repository.taken)) == sorted(str(d["_id"]) for d in stored)
        for chain in {d["chain"] for d in stored}:  # in order within each chain
            ids = [str(d["_id"]) for d in stored if d["chain"] == chain]
            assert [i for i in repository.taken if i in ids] == ids
    finally:
        await log.close()
        await client.close()
