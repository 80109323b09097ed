"""Fixtures for the audit package: a fresh database on the real test stack (SecantusDB, started
with test commands so that fail points can be armed), the real key ring as checkpoint signer, and
a factory for audit logs with their own spool directory."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.facts import Observer
from gateway.audit.log import AuditLog
from smart_auth.key_provider import LocalKeyProvider
from smart_auth.keys import KeyRing
from tests.conftest import SESSION_KEK, Stack

PROVIDER = LocalKeyProvider(base64.b64decode(SESSION_KEK))
"""Seals the signing keys the tests' checkpoints are signed with."""

FHIR_BASE = "http://127.0.0.1:8080/fhir"
OpenLog = Callable[..., Awaitable[AuditLog]]


def audit_client(uri: str, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client that notices a recovered server within half a second (the default heartbeat
    takes ten after a failure that marks the server unknown)."""
    return AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=2000, heartbeatFrequencyMS=500, **options
    )


@pytest_asyncio.fixture
async def db(local_stack_env: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client = audit_client(local_stack_env.mongo_uri)
    name = f"audit_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


@pytest_asyncio.fixture
async def admin(local_stack_env: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """The admin database through a client of its own, for fail points."""
    client = audit_client(local_stack_env.mongo_uri)
    try:
        yield client.admin
    finally:
        await client.close()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest_asyncio.fixture
async def open_log(db: AsyncDatabase[dict[str, Any]], spool_dir: Path) -> AsyncIterator[OpenLog]:
    """Factory: ``await open_log(**options)`` — a started AuditLog on ``db`` signing checkpoints
    with the real key ring; closed after the test."""
    logs: list[AuditLog] = []
    keys = KeyRing(db, PROVIDER)
    await keys.ensure_indexes()

    async def start(**options: Any) -> AuditLog:
        chain = options.pop("chain", "test-instance:8080")
        options.setdefault("write_timeout", 1.0)
        log = AuditLog(
            options.pop("database", db),
            options.pop("spool", spool_dir),
            Observer(chain, FHIR_BASE),
            options.pop("signer", keys),
            **options,
        )
        await log.start()
        logs.append(log)
        return log

    yield start
    for log in reversed(logs):
        await log.close()
