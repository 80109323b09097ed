"""Durability and integrity against the real database (A-07 … A-09, A-13): group commit, the spool
when MongoDB refuses writes (a ``failCommand`` fail point), replay in order, failing closed,
checkpoints across key rotation, retention."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import monitoring
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.errors import AuditUnavailable
from gateway.audit.log import AuditLog, Mode
from gateway.audit.runtime import from_settings, open_audit
from gateway.audit.store import CHECKPOINTS, EVENTS, KEYS
from gateway.audit.verify import verify_all
from gateway.settings import load_settings
from smart_auth.keys import KeyRing
from tests.audit.conftest import PROVIDER, OpenLog, audit_client
from tests.audit.samples import event
from tests.conftest import Stack


class Inserts(monitoring.CommandListener):
    """Counts ``insert`` commands on the audit collection."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert" and event.command.get("insert") == EVENTS:
            self.batches.append(len(event.command.get("documents", [])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest_asyncio.fixture
async def fail_inserts(admin: AsyncDatabase[dict[str, Any]]) -> AsyncIterator[Any]:
    """``await arm()`` makes every ``insert`` fail (errorCode 91); turned off after the test."""
    armed = False

    async def arm(on: bool = True) -> None:
        nonlocal armed
        command: dict[str, Any] = {"configureFailPoint": "failCommand", "mode": "off"}
        if on:
            command = {
                "configureFailPoint": "failCommand",
                "mode": "alwaysOn",
                "data": {"failCommands": ["insert"], "errorCode": 91},
            }
        await admin.command(command)
        armed = on

    yield arm
    if armed:
        await arm(False)


async def until(condition: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def unusable(spool: Path) -> None:
    """The spool's directory replaced by a file: nothing can be written there (root included)."""
    shutil.rmtree(spool)
    spool.write_text("not a directory any more")


async def stored(db: AsyncDatabase[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r async for r in db[EVENTS].find({}, {"seq": 1, "prev": 1, "hash": 1}).sort("seq", 1)]


async def test_a09_concurrent_records_share_a_few_ordered_insert_many(
    local_stack_env: Stack, spool_dir: Path, open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    listener = Inserts()
    client = audit_client(local_stack_env.mongo_uri, event_listeners=[listener])
    try:
        log = await open_log(database=client[db.name])
        requests = [[event(), event()] for _ in range(200)]
        await asyncio.gather(*(log.record(events) for events in requests))
    finally:
        await client.close()
    assert sum(listener.batches) == 400
    assert len(listener.batches) <= 20, listener.batches
    records = await stored(db)
    assert [r["seq"] for r in records] == list(range(1, 401))
    by_id = {r["_id"]: r["seq"] for r in records}
    for events in requests:  # each request's events sit together, in the order given
        first, second = (by_id[e["id"]] for e in events)
        assert second == first + 1
    assert (await verify_all(db)).ok


async def test_a08_mongodb_refusing_writes_spools_then_replays_in_order(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]], fail_inserts: Any
) -> None:
    log = await open_log(write_timeout=0.5)
    before = [event() for _ in range(5)]
    await log.record(before)
    await fail_inserts()
    during = [[event()] for _ in range(30)]
    await asyncio.gather(*(log.record(events) for events in during))  # all acknowledged
    assert log.status().mode is Mode.SPOOL
    assert len(await stored(db)) == 5
    await fail_inserts(False)
    await until(lambda: log.status().mode is Mode.MONGODB)
    after = [event() for _ in range(5)]
    await log.record(after)
    records = await stored(db)
    assert [r["seq"] for r in records] == list(range(1, 41))  # none lost, none twice
    ids = [r["_id"] for r in records]
    assert ids[:5] == [e["id"] for e in before] and ids[-5:] == [e["id"] for e in after]
    assert sorted(ids[5:35]) == sorted(e["id"] for events in during for e in events)
    assert log.status().spooled_bytes == 0
    assert (await verify_all(db)).ok


async def test_a08_neither_mongodb_nor_the_spool_refuses_and_leaves_no_gap(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]], spool_dir: Path, fail_inserts: Any
) -> None:
    log = await open_log(write_timeout=3.0)
    await log.record([event()])
    await fail_inserts()
    unusable(spool_dir)
    with pytest.raises(AuditUnavailable) as refused:
        await log.record([event(), event()])
    assert refused.value.status == 503  # the FHIR error middleware answers 503
    await fail_inserts(False)
    await log.record([event()])  # MongoDB is back: the spool is not needed (it still is broken)
    assert log.status().mode is Mode.MONGODB
    assert [r["seq"] for r in await stored(db)] == [1, 2]
    assert (await verify_all(db)).ok


async def test_a07_checkpoints_every_n_events_and_across_key_rotation(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    keys = KeyRing(db, PROVIDER)
    log = await open_log(checkpoint_events=10, signer=keys)
    for _ in range(3):
        await log.record([event() for _ in range(10)])
    await until(lambda: log.status().checkpoint == 30)
    old = await keys.signing_key()
    await keys.rotate()
    await log.record([event() for _ in range(4)])
    assert await log.checkpoint() == 34
    # The old key leaves the key ring (its tokens expired); its checkpoints still verify.
    await db["signing_keys"].delete_one({"_id": old.kid})
    kids = {doc["kid"] async for doc in db[CHECKPOINTS].find({})}
    assert old.kid in kids and len(kids) == 2
    assert await db[KEYS].count_documents({}) == 2
    report = await verify_all(db)
    assert report.ok, report
    assert report.checkpoints >= 2


async def test_a13_retention_removes_old_records_and_verification_stays_green(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    log = await open_log(retention_period=timedelta(days=30))
    await log.record([event() for _ in range(10)])
    assert await log.checkpoint() == 10
    await log.record([event() for _ in range(10)])
    assert await log.checkpoint() == 20
    await log.record([event() for _ in range(5)])
    assert await log.expire(now=time.time()) == 0  # nothing is old yet
    removed = await log.expire(now=time.time() + 31 * 86400)
    assert removed == 20
    assert [r["seq"] for r in await stored(db)] == [21, 22, 23, 24, 25]
    report = await verify_all(db)
    assert report.ok, report
    [chain] = report.chains
    assert (chain.first, chain.last) == (21, 25)
    # Without its anchor, the first record kept shows as records missing.
    await db[CHECKPOINTS].delete_many({})
    broken = await verify_all(db)
    assert not broken.ok and broken.chains[0].finding is not None
    assert broken.chains[0].finding.seq == 1


async def test_a08_a_new_process_continues_the_chain_where_the_old_one_stopped(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    first = await open_log()
    await first.record([event() for _ in range(3)])
    await first.close()
    second: AuditLog = await open_log()
    await second.record([event()])
    assert [r["seq"] for r in await stored(db)] == [1, 2, 3, 4]
    assert (await verify_all(db)).ok


async def test_a07_the_same_event_recorded_twice_is_refused_and_leaves_no_hole(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    log = await open_log()
    once = event()
    await log.record([once])
    with pytest.raises(AuditUnavailable):
        await log.record([once])
    await log.record([event()])
    assert [r["seq"] for r in await stored(db)] == [1, 2]
    assert (await verify_all(db)).ok


async def test_a08_the_audit_log_of_the_settings(
    local_stack_env: Stack, db: AsyncDatabase[dict[str, Any]], spool_dir: Path
) -> None:
    settings = load_settings(
        mongodb_uri=local_stack_env.mongo_uri,
        mongodb_database=db.name,
        port=8765,
        audit_spool_dir=spool_dir,
        audit_checkpoint_events=2,
    )
    async with open_audit(settings, db, KeyRing(db, PROVIDER)) as audit:
        assert audit.chain == f"{socket.gethostname()}:8765"
        assert audit.observer.fhir_base == "http://127.0.0.1:8080/fhir"
        await audit.record([event(), event()])
    named = load_settings(mongodb_uri=local_stack_env.mongo_uri, audit_chain_name="gw-1")
    assert from_settings(named, db, None).chain == "gw-1"
    report = await verify_all(db)
    assert report.ok and report.records == 2 and report.checkpoints == 1
