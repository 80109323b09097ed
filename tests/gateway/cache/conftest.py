"""A MongoDB database of its own per test, on the local stack's SecantusDB, and key providers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.key_provider import LocalKeyProvider, WrappedKey

if TYPE_CHECKING:
    from tests.conftest import Stack

KEK = bytes(range(32))
NEW_KEK = bytes(range(32, 64))


class CountingProvider(LocalKeyProvider):
    """A local key provider that counts its unwraps (a KMS would be called that often)."""

    def __init__(self, current: bytes, previous: tuple[bytes, ...] = ()) -> None:
        super().__init__(current, previous)
        self.unwraps = 0

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        self.unwraps += 1
        return await super().unwrap(wrapped)


@pytest_asyncio.fixture
async def db(local_stack_env: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True
    )
    database = client[f"cache_{uuid.uuid4().hex[:12]}"]
    yield database
    await client.drop_database(database.name)
    await client.close()
