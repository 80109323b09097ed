"""Forwarding the audit log to an audit repository (``gateway/audit/forward.py``; AUDIT.md A-08,
A-13): every stored event reaches the repository as ``PUT AuditEvent/{id}``, in order per
chain, at least once, idempotent by id, through failures and outages, one instance per chain at
a time, with a backlog gauge; recording never waits for the repository."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit import security
from gateway.audit.facts import Actor
from gateway.audit.forward import STATE, FhirSink, Forwarder, open_forwarder, sink_session
from gateway.audit.store import EVENTS
from gateway.localstack import free_port
from gateway.settings import load_settings
from gateway.web.metrics import Metrics
from tests.audit.conftest import OpenLog
from tests.audit.repository import Repository, running_repository
from tests.audit.samples import OBSERVER, event
from tests.conftest import SESSION_KEK, Stack

FAST = {"backoff_seconds": 0.01, "backoff_max_seconds": 0.04, "poll_seconds": 0.02}


@pytest_asyncio.fixture
async def repository() -> AsyncIterator[Repository]:
    async with running_repository() as found:
        yield found


def forwarder(db: AsyncDatabase[dict[str, Any]], sink: Any, **options: Any) -> Forwarder:
    return Forwarder(db, sink, **{**FAST, **options})


async def drain(forwarder: Forwarder, within: float = 20.0) -> None:
    """Rounds until nothing waits (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        await forwarder.run_once()
        if forwarder.backlog == 0:
            return
        assert time.monotonic() < deadline, f"still {forwarder.backlog} event(s) waiting"
        await asyncio.sleep(0.02)


async def until(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def chain_ids(db: AsyncDatabase[dict[str, Any]], chain: str) -> list[str]:
    cursor = db[EVENTS].find({"chain": chain}, {"_id": 1}).sort("seq", 1)
    return [str(doc["_id"]) async for doc in cursor]


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_a08_every_event_reaches_the_real_upstream_as_an_auditevent_idempotent_by_id(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
) -> None:
    log = await open_log()
    login = security.login(OBSERVER, Actor(user_id="u-1", address="192.0.2.1"), succeeded=False)
    await log.record([event("pat-1"), event("pat-2"), login])
    base = local_stack_env.upstream.base_url
    sender = forwarder(db, FhirSink(http, base))
    try:
        await _sent_and_resent(sender, log.chain, db, base, http)
    finally:
        local_stack_env.upstream.reset()  # the shared upstream holds no AuditEvent for others


async def _sent_and_resent(
    sender: Forwarder,
    chain: str,
    db: AsyncDatabase[dict[str, Any]],
    base: str,
    http: aiohttp.ClientSession,
) -> None:
    await drain(sender)

    for record in [doc async for doc in db[EVENTS].find({"chain": chain})]:
        async with http.get(f"{base}/AuditEvent/{record['_id']}") as response:
            assert response.status == 200
            kept = await response.json()
        kept.pop("meta")
        assert kept == record["event"]  # the stored event, as the resource, nothing else

    # At least once: a cursor update lost (a crash after the PUT) sends the events again, and
    # the repository still holds each event once, under its id.
    await db[STATE].update_one({"_id": chain}, {"$set": {"forwarded": 0}})
    assert await sender.run_once() == 3
    ids = ",".join(await chain_ids(db, chain))
    async with http.get(f"{base}/AuditEvent", params={"_id": ids}) as response:
        found = await response.json()
    assert found["total"] == 3


async def test_a08_a_failing_repository_delays_events_but_loses_or_reorders_none(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    http: aiohttp.ClientSession,
    repository: Repository,
) -> None:
    first = await open_log(chain="instance-a:8080")
    second = await open_log(chain="instance-b:8080")
    for _ in range(6):
        await first.record([event()])
        await second.record([event(), event()])
    repository.failures = [500, 503, 500]  # then 201s
    metrics = Metrics()
    sender = forwarder(db, FhirSink(http, repository.base), metrics=metrics, batch_size=4)

    await sender.run_once()
    assert sample(metrics, "fhir_gateway_audit_forward_backlog") == 18  # nothing taken yet
    await drain(sender)

    assert sample(metrics, "fhir_gateway_audit_forward_backlog") == 0
    assert sample(metrics, "fhir_gateway_audit_forwarded_total") == 18
    assert sample(metrics, "fhir_gateway_audit_forward_failures_total") == 3
    for log in (first, second):
        ids = await chain_ids(db, log.chain)
        assert [i for i in repository.taken if i in ids] == ids  # in chain order, every one
        tried = [i for i in repository.attempts if i in ids]
        # An event is tried again until taken before the next one is tried at all.
        assert list(dict.fromkeys(tried)) == ids
        assert [i for n, i in enumerate(tried) if i not in tried[:n]] == ids
    assert len(repository.stored) == 18
    done = {doc["_id"]: doc["forwarded"] async for doc in db[STATE].find()}
    assert done == {first.chain: 6, second.chain: 12}


async def test_a08_a_repository_that_is_down_keeps_the_backlog_until_it_is_back(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    http: aiohttp.ClientSession,
    repository: Repository,
) -> None:
    log = await open_log()
    await log.record([event() for _ in range(5)])
    metrics = Metrics()
    nowhere = FhirSink(http, f"http://127.0.0.1:{free_port()}/fhir")  # nothing listens there
    down = forwarder(db, nowhere, metrics=metrics, owner="this-instance")
    for _ in range(3):
        assert await down.run_once() == 0
        await asyncio.sleep(0.05)
    assert down.backlog == 5
    assert (sample(metrics, "fhir_gateway_audit_forward_failures_total") or 0) >= 1
    assert (await db[STATE].find_one({"_id": log.chain}) or {})["forwarded"] == 0

    back = forwarder(db, FhirSink(http, repository.base), owner="this-instance")
    await drain(back)
    assert repository.taken == await chain_ids(db, log.chain)


async def test_a13_records_removed_by_retention_before_they_were_sent_are_passed_over(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    http: aiohttp.ClientSession,
    repository: Repository,
) -> None:
    log = await open_log()
    await log.record([event() for _ in range(6)])
    await db[EVENTS].delete_many({"chain": log.chain, "seq": {"$lte": 2}})  # expired
    sender = forwarder(db, FhirSink(http, repository.base))
    await sender.run_once()
    assert sender.backlog == 0
    assert repository.taken == await chain_ids(db, log.chain)
    assert len(repository.taken) == 4


async def test_a08_one_instance_forwards_a_chain_at_a_time_and_another_takes_over(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    http: aiohttp.ClientSession,
    repository: Repository,
) -> None:
    log = await open_log()
    await log.record([event() for _ in range(4)])
    now = [1000.0]
    sink = FhirSink(http, repository.base)
    a = forwarder(db, sink, owner="a", lease_seconds=30, clock=lambda: now[0])
    b = forwarder(db, sink, owner="b", lease_seconds=30, clock=lambda: now[0])

    # Both at once: the lease goes to one of them; each event is sent once.
    sent = await asyncio.gather(a.run_once(), b.run_once())
    assert sorted(sent) == [0, 4]
    assert repository.attempts == await chain_ids(db, log.chain)
    holder, other = (a, b) if sent[0] == 4 else (b, a)

    await log.record([event() for _ in range(3)])
    assert await other.run_once() == 0  # the lease is held
    assert other.backlog == 3  # and yet it counts the backlog
    now[0] += 31  # the holder stopped renewing: its lease runs out
    assert await other.run_once() == 3
    assert await holder.run_once() == 0  # lost to the other
    await log.record([event()])
    await other.close()  # gives the lease up: no need to wait for it to run out
    assert await holder.run_once() == 1
    assert repository.taken == await chain_ids(db, log.chain)
    assert len(repository.attempts) == 8


async def test_a08_recording_never_waits_for_the_repository(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    http: aiohttp.ClientSession,
    repository: Repository,
) -> None:
    repository.hold = asyncio.Event()  # the repository takes requests and does not answer
    log = await open_log()
    sender = forwarder(db, FhirSink(http, repository.base))
    await sender.start()
    try:
        await log.record([event()])
        await until(lambda: repository.waiting == 1)
        await asyncio.wait_for(log.record([event() for _ in range(3)]), 10)  # durable meanwhile
        assert repository.waiting == 1 and not repository.taken  # still no answer
        repository.hold.set()
        ids = await chain_ids(db, log.chain)
        await until(lambda: repository.taken == ids)
    finally:
        await sender.close()


@pytest.mark.parametrize(
    ("settings", "authorization"),
    [
        ({"audit_forward_url": "upstream"}, None),
        (
            {
                "audit_forward_url": "upstream",
                "upstream_auth": "bearer",
                "upstream_bearer_token": "upstream-token",
            },
            "Bearer upstream-token",
        ),
        ({"audit_forward_url": "REPOSITORY"}, None),
        (
            {"audit_forward_url": "REPOSITORY", "audit_forward_bearer_token": "audit-token"},
            "Bearer audit-token",
        ),
    ],
)
async def test_the_repository_is_the_upstream_with_its_credentials_or_a_url_with_a_bearer_token(
    settings: dict[str, Any], authorization: str | None, repository: Repository
) -> None:
    values = {
        key: repository.base if value == "REPOSITORY" else value for key, value in settings.items()
    }
    configured = load_settings(
        upstream_url=repository.base, key_encryption_key=SESSION_KEK, **values
    )
    session, sink = sink_session(configured)
    try:
        await sink.put(event())
    finally:
        await session.close()
    assert len(repository.taken) == 1
    assert repository.headers[0].get("Authorization") == authorization
    assert repository.headers[0]["Content-Type"].startswith("application/fhir+json")


async def test_open_forwarder_runs_in_the_background_and_stops_with_its_block(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]], repository: Repository
) -> None:
    configured = load_settings(
        audit_forward_url=repository.base,
        audit_forward_poll_seconds=0.02,
        key_encryption_key=SESSION_KEK,
    )
    log = await open_log()
    metrics = Metrics()
    async with open_forwarder(configured, db, metrics) as running:
        await log.record([event(), event()])
        await until(lambda: len(repository.taken) == 2 and running.backlog == 0)
    state = await db[STATE].find_one({"_id": log.chain})
    assert state is not None and state["owner"] is None  # the lease was given up
    assert sample(metrics, "fhir_gateway_audit_forward_backlog") == 0
