"""Re-wrapping under a new key-encryption key (SECURITY.md P-16): every wrapped key of every place
moves to the current version, what it protects is untouched, an altered blob is reported and left
as it is, and the counts by version say when an old KEK may go."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.key_provider import LocalKeyProvider, Sealed, WrappedField, seal, unseal, version_of
from smart_auth.rewrap import pending, rewrap, versions_in_use

if TYPE_CHECKING:
    from tests.conftest import Stack

OLD, NEW = bytes(range(32)), bytes(range(32, 64))
SECRETS = WrappedField("secrets", "sealed")
NESTED = WrappedField("accounts", "mfa.sealed")


@pytest_asyncio.fixture
async def db(local_stack_env: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True
    )
    database = client[f"rewrap_{uuid.uuid4().hex[:12]}"]
    yield database
    await client.drop_database(database.name)
    await client.close()


async def _seal_some(db: AsyncDatabase[dict[str, Any]], provider: LocalKeyProvider) -> None:
    for n in range(250):  # more than one batch
        sealed = await seal(provider, f"secret {n}".encode(), f"secret:{n}")
        await db["secrets"].insert_one({"_id": n, "sealed": sealed.to_doc()})
    sealed = await seal(provider, b"totp", "totp:u1")
    await db["accounts"].insert_one({"_id": "u1", "mfa": {"sealed": sealed.to_doc()}})
    await db["accounts"].insert_one({"_id": "u2"})  # nothing sealed


async def test_p16_everything_moves_to_the_new_kek_and_still_opens(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    await _seal_some(db, LocalKeyProvider(OLD))
    rotated = LocalKeyProvider(NEW, [OLD])
    fields = (SECRETS, NESTED)
    assert await pending(db, fields, rotated.current_version) == 251
    done: list[int] = []
    report = await rewrap(db, rotated, fields, progress=done.append)
    assert report.rewrapped == 251 and not report.failed and sum(done) == 251
    assert await versions_in_use(db, fields) == {version_of(NEW): 251}
    new_only = LocalKeyProvider(NEW)
    doc = await db["secrets"].find_one({"_id": 7})
    assert doc is not None
    assert await unseal(new_only, Sealed.from_doc(doc["sealed"]), "secret:7") == b"secret 7"
    account = await db["accounts"].find_one({"_id": "u1"})
    assert account is not None
    assert await unseal(new_only, Sealed.from_doc(account["mfa"]["sealed"]), "totp:u1") == b"totp"
    again = await rewrap(db, rotated, fields)
    assert again.rewrapped == 0  # nothing left to do


async def test_p16_an_altered_blob_is_reported_and_keeps_its_old_version_counted(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    await _seal_some(db, LocalKeyProvider(OLD))
    doc = await db["secrets"].find_one({"_id": 3})
    assert doc is not None
    key = doc["sealed"]["key"]
    await db["secrets"].update_one(
        {"_id": 3}, {"$set": {"sealed.key": bytes([key[0] ^ 1]) + key[1:]}}
    )
    report = await rewrap(db, LocalKeyProvider(NEW, [OLD]), (SECRETS,))
    assert report.rewrapped == 249
    assert len(report.failed) == 1 and report.failed[0].startswith("secrets/3:")
    assert await versions_in_use(db, (SECRETS,)) == {version_of(NEW): 249, version_of(OLD): 1}
