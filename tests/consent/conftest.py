"""Fixture data for the consent tests: the synthetic patients of ``fixtures/data``, and a MongoDB
database of its own per test on the local stack's SecantusDB."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

if TYPE_CHECKING:
    from tests.conftest import Stack

SEED = Path(__file__).resolve().parents[2] / "fixtures" / "data"
SENSITIVE_PATIENT = "pat-samuel-reed"


@cache
def _seed(name: str) -> tuple[dict[str, Any], ...]:
    bundle = orjson.loads((SEED / name).read_bytes())
    return tuple(entry["resource"] for entry in bundle["entry"])


def seed_resources(name: str = "14-patient-samuel-reed.json") -> list[dict[str, Any]]:
    """Fresh copies of the resources of one fixture bundle."""
    return orjson.loads(orjson.dumps(_seed(name)))  # type: ignore[no-any-return]


def seed_resource(resource_type: str, resource_id: str | None = None) -> dict[str, Any]:
    """The first resource of a type (or the one with that id) of the sensitive patient."""
    return next(
        r
        for r in seed_resources()
        if r["resourceType"] == resource_type and resource_id in (None, r["id"])
    )


@pytest_asyncio.fixture
async def mongo(local_stack_env: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True
    )
    yield client
    await client.close()


@pytest_asyncio.fixture
async def db(
    mongo: AsyncMongoClient[dict[str, Any]],
) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A database of its own for each test, dropped afterwards."""
    database = mongo[f"consent_{uuid.uuid4().hex[:12]}"]
    yield database
    await mongo.drop_database(database.name)
