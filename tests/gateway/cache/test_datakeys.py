"""The cache's data keys (SECURITY.md P-15, P-16; CONSENT.md C-22): one per patient and one for
data of no patient, stored wrapped by the KEK, counted and replaced well before 2^32 encryptions,
kept in memory for a bounded time, opened by a previous KEK during rotation, shredded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway.cache.datakeys import (
    COLLECTION,
    MAX_ENCRYPTIONS,
    SYSTEM,
    DataKeys,
    patient_owner,
)
from smart_auth.key_provider import KeyProviderError, LocalKeyProvider, WrappedKey, version_of
from tests.gateway.cache.conftest import KEK, NEW_KEK, CountingProvider

A, B = patient_owner("pat-a"), patient_owner("pat-b")


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _keys(
    db: AsyncDatabase[dict[str, Any]],
    provider: LocalKeyProvider,
    *,
    memory_seconds: float = 300,
    max_encryptions: int = MAX_ENCRYPTIONS,
    ticks: Ticks | None = None,
) -> DataKeys:
    return DataKeys(
        db,
        provider,
        memory_seconds=memory_seconds,
        retain=timedelta(hours=1),
        max_encryptions=max_encryptions,
        monotonic=ticks or Ticks(),
    )


async def test_p15_each_patient_has_a_key_and_data_of_no_patient_shares_one(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    keys = _keys(db, LocalKeyProvider(KEK))
    await keys.ensure_indexes()
    a, b, system = [await keys.for_encryption(owner) for owner in (A, B, SYSTEM)]
    assert len({a.key_id, b.key_id, system.key_id}) == 3
    assert (await keys.for_encryption(A)).key_id == a.key_id  # the same key next time
    assert {a.owner, b.owner, system.owner} == {A, B, SYSTEM}


async def test_p15_a_data_key_is_stored_wrapped_by_the_current_kek_only(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    provider = LocalKeyProvider(KEK)
    keys = _keys(db, provider)
    await keys.ensure_indexes()
    key = await keys.for_encryption(A)
    doc = await db[COLLECTION].find_one({"_id": key.key_id})
    assert doc is not None and doc["wrapped"]["kek"] == version_of(KEK)
    raw = await provider.unwrap(WrappedKey(doc["wrapped"]["kek"], doc["wrapped"]["key"]))
    assert len(raw) == 32
    assert raw not in doc["wrapped"]["key"] and all(raw != v for v in doc.values())


async def test_p15_encryptions_are_counted_and_the_key_replaced_at_the_limit(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    keys = _keys(db, LocalKeyProvider(KEK), max_encryptions=3)
    await keys.ensure_indexes()
    used = [(await keys.for_encryption(A)).key_id for _ in range(7)]
    assert used[0] == used[1] == used[2] != used[3]  # at most 3 under one key
    assert used[3] == used[4] == used[5] != used[6]
    assert len(set(used)) == 3
    generations = {doc["generation"]: doc async for doc in db[COLLECTION].find({"owner": A})}
    assert sorted(generations) == [1, 2, 3]
    assert "retired_at" in generations[1] and "expires_at" in generations[1]  # TTL removes it
    assert "retired_at" not in generations[3]
    assert await keys.for_decryption(used[0]) is not None  # a retired key still decrypts


def test_p15_the_limit_is_well_before_two_to_the_32() -> None:
    assert MAX_ENCRYPTIONS <= 2**31


async def test_p15_two_instances_count_on_one_key(db: AsyncDatabase[dict[str, Any]]) -> None:
    one, two = _keys(db, LocalKeyProvider(KEK)), _keys(db, LocalKeyProvider(KEK))
    await one.ensure_indexes()
    first = await one.for_encryption(A)
    assert (await two.for_encryption(A)).key_id == first.key_id
    assert await one.encryptions(A) == {1: 2}


async def test_p15_an_unwrapped_key_stays_in_memory_for_a_bounded_time(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    provider, ticks = CountingProvider(KEK), Ticks()
    writer = _keys(db, LocalKeyProvider(KEK))
    await writer.ensure_indexes()
    key_id = (await writer.for_encryption(A)).key_id
    reader = _keys(db, provider, memory_seconds=60, ticks=ticks)
    for _ in range(5):
        assert await reader.for_decryption(key_id) is not None
    assert provider.unwraps == 1  # a hit costs no call to the key provider (a KMS)
    ticks.now = 61
    assert await reader.for_decryption(key_id) is not None
    assert provider.unwraps == 2


async def test_p16_a_key_wrapped_by_a_previous_kek_opens_and_a_wrong_kek_fails(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    old = _keys(db, LocalKeyProvider(KEK))
    await old.ensure_indexes()
    key_id = (await old.for_encryption(A)).key_id
    rotated = _keys(db, LocalKeyProvider(NEW_KEK, [KEK]))
    assert await rotated.for_decryption(key_id) is not None
    wrong = _keys(db, LocalKeyProvider(NEW_KEK))
    with pytest.raises(KeyProviderError, match="not the one configured"):
        await wrong.for_decryption(key_id)


async def test_p16_a_key_no_kek_opens_is_replaced_for_new_entries(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    old = _keys(db, LocalKeyProvider(KEK))
    await old.ensure_indexes()
    lost = (await old.for_encryption(A)).key_id
    fresh = await _keys(db, LocalKeyProvider(NEW_KEK)).for_encryption(A)
    assert fresh.key_id != lost
    doc = await db[COLLECTION].find_one({"_id": lost})
    assert doc is not None and "retired_at" in doc


async def test_c22_shredding_deletes_every_key_of_the_patient_only(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    keys = _keys(db, LocalKeyProvider(KEK), max_encryptions=1)
    await keys.ensure_indexes()
    a_keys = {(await keys.for_encryption(A)).key_id for _ in range(3)}  # several generations
    b_key = (await keys.for_encryption(B)).key_id
    assert len(a_keys) >= 2
    assert await keys.shred(A) == len(a_keys)
    for key_id in a_keys:
        assert await keys.for_decryption(key_id) is None  # also gone from this instance's memory
    assert await keys.for_decryption(b_key) is not None
    other = _keys(db, LocalKeyProvider(KEK))
    assert all([await other.for_decryption(key_id) is None for key_id in a_keys])
