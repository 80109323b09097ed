"""The cluster-wide rate-limit counter (SECURITY.md P-12) against SecantusDB: instances claim blocks
of one shared count and never let through more than the limit between them; a new window starts
afresh; refusals cost no database call; a MongoDB that is not there leaves each instance counting
alone, up to the limit, and says so once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway.fhir.ratelimit import COLLECTION, ClusterRateLimit
from tests.conftest import Stack


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(local_stack_env: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True, retryWrites=False
    )
    try:
        yield client[f"test_{uuid.uuid4().hex[:12]}"]
    finally:
        await client.close()


async def _allowed(limit: ClusterRateLimit, client_id: str, count: int) -> int:
    answers = await asyncio.gather(*(limit.hit(client_id) for _ in range(count)))
    return sum(answer is None for answer in answers)


async def test_p12_three_instances_share_one_limit_exactly_in_a_burst(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    clock = Clock()
    instances = [ClusterRateLimit(db, "100/minute", clock) for _ in range(3)]
    allowed = await asyncio.gather(*(_allowed(limit, "app", 80) for limit in instances))
    # Alone each would let 80 through; together never more than 100, and less only by what the
    # others claimed and had not spent (an eighth of the remainder each).
    assert 100 - 2 * (100 // 8) <= sum(allowed) <= 100
    stored = await db[COLLECTION].find_one({})
    assert stored is not None and stored["n"] <= 100


async def test_p12_limits_are_per_app_and_per_window(db: AsyncDatabase[dict[str, Any]]) -> None:
    clock = Clock()
    limit = ClusterRateLimit(db, "5/minute", clock)
    assert await _allowed(limit, "app-a", 8) == 5
    assert await _allowed(limit, "app-b", 8) == 5  # another app has its own count
    wait = await limit.hit("app-a")
    assert wait is not None and 1 <= wait <= 60
    clock.now += 60
    assert await _allowed(limit, "app-a", 8) == 5  # the next window starts afresh


async def test_p12_a_spent_window_refuses_without_asking_mongodb(
    db: AsyncDatabase[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = ClusterRateLimit(db, "3/minute", Clock())
    assert await _allowed(limit, "app", 3) == 3
    calls: list[str] = []
    collection = db[COLLECTION]

    async def counted(*args: Any, **kwargs: Any) -> None:
        calls.append("find_one_and_update")

    monkeypatch.setattr(type(collection), "find_one_and_update", counted)
    assert await _allowed(limit, "app", 50) == 0
    assert calls == []


async def test_p12_without_mongodb_each_instance_counts_alone_up_to_the_limit(
    local_stack_env: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """MongoDB refuses every write of this instance (SecantusDB's ``failCommand`` fail point,
    scoped to its connections by application name)."""
    admin: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(local_stack_env.mongo_uri)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, appname="rate-limit-alone", retryWrites=False
    )
    try:
        await admin.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": "alwaysOn",
                "data": {
                    "appName": "rate-limit-alone",
                    "failCommands": ["update", "findAndModify", "find"],
                    "errorCode": 8,  # UnknownError
                },
            }
        )
        limit = ClusterRateLimit(client[f"test_{uuid.uuid4().hex[:12]}"], "10/minute", Clock())
        with caplog.at_level(logging.WARNING, logger="gateway.fhir.ratelimit"):
            allowed = 0
            for _ in range(15):
                allowed += await limit.hit("app") is None
        assert allowed == 10
        alone = [r for r in caplog.records if "counted by this instance alone" in r.getMessage()]
        assert len(alone) == 1
    finally:
        await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        await admin.close()
        await client.close()
