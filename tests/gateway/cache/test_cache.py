"""The cache over MongoDB (SECURITY.md P-15; CONSENT.md C-13, C-22): what is stored is what was
answered, encrypted; a tampered entry is a logged miss; a write's invalidation wins over a read
that fetched before it; purge and shred; the size bounds."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway.cache.cache import (
    ENTRIES_CHANGED,
    KEYS_SHREDDED,
    CachedRead,
    CacheLimits,
    Lookup,
    ResourceCache,
)
from gateway.cache.datakeys import SYSTEM, patient_owner
from gateway.cache.entries import COLLECTION
from gateway.web.metrics import Metrics
from smart_auth.clock import Clock, system_clock
from smart_auth.key_provider import LocalKeyProvider
from tests.gateway.cache.conftest import KEK
from tests.support.clock import MovableClock

OBS = CachedRead("Observation", "obs-1")
OTHER = CachedRead("Observation", "obs-2")
A, B = "pat-a", "pat-b"
HEADERS = {"ETag": 'W/"1"', "Content-Type": "application/fhir+json"}


def body(rid: str, text: str = "blood pressure") -> bytes:
    return f'{{"resourceType":"Observation","id":"{rid}","code":{{"text":"{text}"}}}}'.encode()


async def _cache(
    db: AsyncDatabase[dict[str, Any]], clock: Clock = system_clock, **limits: Any
) -> ResourceCache:
    cache = ResourceCache(db, LocalKeyProvider(KEK), Metrics(), CacheLimits(**limits), clock=clock)
    await cache.ensure_indexes()
    return cache


async def _lookup(cache: ResourceCache, read: CachedRead) -> Lookup:
    return (await cache.lookup_many([read]))[read]


async def _store(cache: ResourceCache, read: CachedRead, patient: str, version: str = "1") -> bool:
    return await cache.store(
        await _lookup(cache, read),
        owner=patient_owner(patient),
        version=version,
        body=body(read.resource_id),
        headers=HEADERS,
    )


def _failures(cache: ResourceCache) -> float:
    value = cache._metrics.registry.get_sample_value("fhir_gateway_cache_decrypt_failures_total")
    return value or 0.0


async def test_p15_what_is_stored_comes_back_and_is_not_in_clear(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache = await _cache(db)
    assert (await _lookup(cache, OBS)).hit is None
    assert await _store(cache, OBS, A)
    hit = (await _lookup(cache, OBS)).hit
    assert hit is not None and hit.body == body("obs-1") and hit.fresh
    assert hit.etag == 'W/"1"' and hit.version == "1"
    doc = await db[COLLECTION].find_one({"_id": "Observation/obs-1"})
    assert doc is not None and b"blood pressure" not in doc["data"]
    assert doc["owner"] == "Patient/pat-a"


async def test_p15_an_entry_older_than_its_ttl_is_stale(db: AsyncDatabase[dict[str, Any]]) -> None:
    cache = await _cache(db, ttl_seconds=0)
    await _store(cache, OBS, A)
    hit = (await _lookup(cache, OBS)).hit
    assert hit is not None and not hit.fresh


@pytest.mark.parametrize("moved", ["ciphertext", "owner", "key"])
async def test_p15_a_ciphertext_moved_onto_another_patients_entry_is_a_logged_miss(
    db: AsyncDatabase[dict[str, Any]], caplog: pytest.LogCaptureFixture, moved: str
) -> None:
    cache = await _cache(db)
    await _store(cache, OBS, A)
    await _store(cache, OTHER, B)
    a = await db[COLLECTION].find_one({"_id": "Observation/obs-1"})
    assert a is not None
    fields = {
        "ciphertext": {"nonce": a["nonce"], "data": a["data"]},
        "owner": {"nonce": a["nonce"], "data": a["data"], "key": a["key"]},
        "key": {"nonce": a["nonce"], "data": a["data"], "key": a["key"], "owner": a["owner"]},
    }[moved]
    await db[COLLECTION].update_one({"_id": "Observation/obs-2"}, {"$set": fields})
    with caplog.at_level(logging.WARNING, logger="gateway.cache.cache"):
        lookup = await _lookup(cache, OTHER)
    assert lookup.hit is None and lookup.gen is not None
    assert "a cached Observation does not decrypt" in caplog.text
    assert "obs-" not in caplog.text and "pat-" not in caplog.text  # logs carry no ids (P-14)
    assert _failures(cache) == 1
    assert await _store(cache, OTHER, B)  # the refetched answer replaces it
    assert (await _lookup(cache, OTHER)).hit is not None


async def test_p15_a_vread_entry_serves_only_its_version(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache = await _cache(db)
    v1 = CachedRead("Observation", "obs-1", "1")
    assert await _store(cache, v1, A, version="1")
    assert not await _store(cache, CachedRead("Observation", "obs-1", "2"), A, version="1")
    await db[COLLECTION].update_one(
        {"_id": "Observation/obs-1/_history/1"}, {"$set": {"version": "2"}}
    )
    assert (await _lookup(cache, v1)).hit is None  # version changed: fails (AAD or the check)


async def test_a_write_invalidates_and_an_earlier_fetch_cannot_be_stored_after_it(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache, other_instance = await _cache(db), await _cache(db)
    await _store(cache, OBS, A)
    assert await _store(cache, CachedRead("Observation", "obs-1", "1"), A)
    before = await _lookup(other_instance, OBS)  # a read starts, sees the entry, fetches...
    never_cached = await _lookup(other_instance, OTHER)  # ... and one that found nothing
    await cache.invalidate(["Observation/obs-1", "Observation/obs-2"])  # ... a write lands
    assert (await _lookup(other_instance, OBS)).hit is None
    assert (await _lookup(other_instance, CachedRead("Observation", "obs-1", "1"))).hit is None
    for lookup, rid in ((before, "obs-1"), (never_cached, "obs-2")):
        stored = await other_instance.store(
            lookup, owner=patient_owner(A), version="1", body=body(rid), headers=HEADERS
        )
        assert not stored  # what was fetched before the write is not stored after it
    assert await _store(other_instance, OBS, A, version="2")  # a read after the write is


async def test_c13_purging_a_patient_removes_their_entries_only(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache = await _cache(db)
    await _store(cache, OBS, A)
    await _store(cache, OTHER, B)
    assert await cache.purge_patient(A) == 1
    assert (await _lookup(cache, OBS)).hit is None
    assert (await _lookup(cache, OTHER)).hit is not None


async def test_c22_after_shredding_a_copy_of_the_entries_no_longer_decrypts(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache = await _cache(db)
    await _store(cache, OBS, A)
    await _store(cache, OTHER, B)
    copies = [doc async for doc in db[COLLECTION].find({})]
    assert await cache.shred_patient(A) == 1
    await db[COLLECTION].delete_many({})
    await db[COLLECTION].insert_many(copies)  # as if restored from a copy of the database
    reader = await _cache(db)  # another instance, or anyone with the database and the KEK
    assert (await _lookup(reader, OBS)).hit is None
    assert (await _lookup(reader, OTHER)).hit is not None
    assert await db[COLLECTION].count_documents({"_id": "Observation/obs-1"}) == 0  # purged


async def test_data_of_no_patient_is_cached_under_the_system_key(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache = await _cache(db)
    read = CachedRead("Practitioner", "prac-1")
    lookup = await _lookup(cache, read)
    assert await cache.store(lookup, owner=SYSTEM, version="1", body=b"{}", headers=HEADERS)
    assert (await _lookup(cache, read)).hit is not None


async def test_the_bounds_are_kept_by_evicting_the_oldest(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    clock = MovableClock()
    cache = await _cache(db, clock, max_entries=10)
    reads = [CachedRead("Observation", f"obs-{n}") for n in range(15)]
    for read in reads:
        await _store(cache, read, A)
        clock.advance(1)
    assert await cache.entries.sweep() == 6  # down to 90% of the bound
    assert (await _lookup(cache, reads[0])).hit is None
    assert (await _lookup(cache, reads[-1])).hit is not None
    assert await cache.entries.sweep() == 0


async def test_an_answer_too_large_for_the_cache_is_not_stored(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    cache = await _cache(db, max_bytes=1024 * 1024)
    lookup = await _lookup(cache, OBS)
    large = b" " * (CacheLimits(max_bytes=1024 * 1024).max_entry_bytes + 1)
    assert not await cache.store(
        lookup, owner=patient_owner(A), version="1", body=large, headers=HEADERS
    )


async def _counters(db: AsyncDatabase[dict[str, Any]]) -> tuple[int, int]:
    found = {doc["_id"]: doc["n"] async for doc in db["change_epochs"].find({})}
    return found.get(ENTRIES_CHANGED, 0), found.get(KEYS_SHREDDED, 0)


async def test_an_instance_answers_from_memory_until_the_change_counter_moves(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    one, two = await _cache(db), await _cache(db)
    one.observe(*await _counters(db))
    await _store(one, OBS, A)
    assert (await one.recent(OBS)) is not None  # no query: this instance's copy
    two.observe(*await _counters(db))
    assert (await two.recent(OBS)) is None  # another instance has none yet...
    assert (await _lookup(two, OBS)).hit is not None  # ... and reads MongoDB
    assert (await two.recent(OBS)) is not None

    await two.invalidate(["Observation/obs-1"])  # a write through the second instance
    assert (await one.recent(OBS)) is not None  # (until it reads the counters again)
    one.observe(*await _counters(db))
    assert (await one.recent(OBS)) is None
    assert (await _lookup(one, OBS)).hit is None


async def test_c22_a_shred_on_one_instance_drops_the_keys_another_holds_in_memory(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    one, two = await _cache(db), await _cache(db)
    one.observe(*await _counters(db))
    await _store(one, OBS, A)
    key_id = (await db[COLLECTION].find_one({"_id": "Observation/obs-1"}) or {})["key"]
    copy = await db[COLLECTION].find_one({"_id": "Observation/obs-1"})
    assert await two.shred_patient(A) == 1
    assert copy is not None
    await db[COLLECTION].insert_one(copy)  # an entry the purge missed
    one.observe(*await _counters(db))
    assert await one.keys.for_decryption(key_id) is None  # not from memory either
    assert (await _lookup(one, OBS)).hit is None
    assert await db[COLLECTION].count_documents({"_id": "Observation/obs-1"}) == 0  # lazily
