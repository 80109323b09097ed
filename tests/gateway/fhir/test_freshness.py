"""Change counters: cached answers are reused only while the counter has not moved."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from pymongo import AsyncMongoClient

from consent.model import app_grant
from consent.store import Change, Channel, ConsentStore
from gateway.fhir.freshness import ChangeEpochs, EpochCache
from smart_auth.revocations import RevocationList
from tests.conftest import Stack

CHANGE = Change("cli", Channel.CLI, "test")


async def test_a_cached_value_is_reused_until_the_counter_moves() -> None:
    loads: list[list[str]] = []
    store = {"a": 1}

    async def load(keys: list[str]) -> dict[str, int]:
        loads.append(keys)
        return {k: store[k] for k in keys if k in store}

    cache: EpochCache[str, int] = EpochCache(load)
    assert await cache.get_many(["a", "b"], 7, 0) == {"a": 1, "b": 0}
    store["a"] = 2
    assert await cache.get_many(["a", "b"], 7, 0) == {"a": 1, "b": 0}  # counter unchanged
    assert await cache.get_many(["a"], 8, 0) == {"a": 2}  # counter moved: read again
    assert loads == [["a", "b"], ["a"]]


async def test_s25_c12_writes_move_the_counters_the_gateway_reads(local_stack_env: Stack) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True
    )
    try:
        db = client[f"test_{uuid.uuid4().hex[:12]}"]
        epochs = ChangeEpochs(db)
        before = await epochs.current()
        await RevocationList(db).revoke_token("j1", datetime.now(UTC) + timedelta(hours=1))
        after_revoke = await epochs.current()
        assert after_revoke.revocations == before.revocations + 1
        assert after_revoke.consents == before.consents
        store = ConsentStore(db)
        consent = app_grant(
            "pat-a",
            "app-1",
            "App",
            ["PATRQT"],
            ["Observation"],
            [],
            datetime.now(UTC),
            datetime.now(UTC) + timedelta(days=1),
        )
        created = await store.create(consent, change=CHANGE)
        assert (await epochs.current()).consents == after_revoke.consents + 1
        await store.revoke_app("pat-a", "app-1", change=CHANGE)
        assert (await epochs.current()).consents == after_revoke.consents + 2
        assert created["status"] == "active"
    finally:
        await client.close()
