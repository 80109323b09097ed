"""The gateway when MongoDB is slow or gone: a request is refused with a 503 OperationOutcome in
bounded time (fail closed, never released unchecked), ``/readyz`` notices, and the gateway answers
again once the database does.

Faults come from SecantusDB's ``failCommand`` fail point (on the commands named; only the gateway
sends such commands meanwhile) and from stopping a SecantusDB process that the test starts itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from gateway.appkeys import MONGO
from gateway.audit.codes import USER_SYSTEM
from gateway.audit.store import AuditQuery, AuditReader
from gateway.localstack import EmbeddedMongo
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import TRUSTED_APP, register_client
from tests.support.browser import Browser, Page
from tests.support.tokens import AMELIA as AMELIA_USER
from tests.support.tokens import ensure_user, minted_token, services

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"


@pytest_asyncio.fixture
async def admin(local_stack_env: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """The test's own connection to the shared database, for fail points."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(local_stack_env.mongo_uri)
    yield client
    await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    await client.close()


async def fail_point(
    admin: AsyncMongoClient[dict[str, Any]], mode: str | dict[str, int], **data: Any
) -> None:
    await admin.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


async def _trusted_token(gateway: RunningGateway) -> dict[str, str]:
    await register_client(gateway, TRUSTED_APP, trusted=True)
    token = await minted_token(gateway, client_id=TRUSTED_APP, purposes=("TREAT",))
    return {"Authorization": f"Bearer {token}"}


async def _timed_get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with http.get(url, headers=headers) as response:
        body = await response.json(content_type=None)
        return response.status, body, time.monotonic() - started


async def test_a_held_find_is_refused_with_503_within_the_database_timeout(
    gateway: RunningGateway,
    admin: AsyncMongoClient[dict[str, Any]],
    http: aiohttp.ClientSession,
) -> None:
    """Every ``find`` held 30 s used to make a read wait 60 s (two reads in a row) and leave
    ``/readyz`` at 200. With the default ``mongodb_timeout_seconds`` (5) the read is refused
    with a 503 OperationOutcome after one timeout, and ``/readyz``'s query notices too."""
    headers = await _trusted_token(gateway)
    url = f"{gateway.fhir}/Patient/{AMELIA}"
    assert (await _timed_get(http, url, headers))[0] == 200
    await fail_point(
        admin, "alwaysOn", failCommands=["find"], blockConnection=True, blockTimeMS=30_000
    )
    status, body, seconds = await _timed_get(http, url, headers)
    assert status == 503, body
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient"
    assert seconds < gateway.settings.mongodb_timeout_seconds + 2.5, seconds
    status, body, seconds = await _timed_get(http, f"{gateway.base}/readyz")
    assert status == 503 and body["checks"]["mongodb"] == "unavailable", body
    assert seconds < 4.5, seconds
    await fail_point(admin, "off")
    assert (await _timed_get(http, url, headers))[0] == 200
    assert (await _timed_get(http, f"{gateway.base}/readyz"))[0] == 200


async def test_a_database_outage_is_refused_with_503_within_the_selection_timeout(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """With MongoDB gone every request waited 5 to 10 s for its 503; the server-selection timeout
    (``mongodb_server_selection_timeout_seconds``, 2 s by default) now bounds it."""
    mongo = EmbeddedMongo(data_dir=tmp_path / "mongo", log_file=tmp_path / "mongo.log")
    await asyncio.to_thread(mongo.start)
    try:
        gateway = await start_gateway(
            upstream_url=local_stack_env.upstream.base_url, mongodb_uri=mongo.uri
        )
        headers = await _trusted_token(gateway)
        url = f"{gateway.fhir}/Patient/{AMELIA}"
        assert (await _timed_get(http, url, headers))[0] == 200
        await asyncio.to_thread(mongo.stop)
        for _ in range(2):  # the first request after the outage, and the next
            status, body, seconds = await _timed_get(http, url, headers)
            assert status == 503, body
            assert body["resourceType"] == "OperationOutcome"
            assert seconds < 3.5, seconds
    finally:
        await asyncio.to_thread(mongo.stop)


async def test_a_sign_in_survives_connections_dying_under_its_writes(
    gateway: RunningGateway, admin: AsyncMongoClient[dict[str, Any]]
) -> None:
    """The first sign-in after the database dropped the pool's idle connections answered 500: its
    first write went out on a dead connection and was not retried (``retryWrites=false``). The
    writes that may reach the database twice are now sent again once; here the database closes
    the connection under the sign-in page's write (the flow), then under the session's."""
    await ensure_user(gateway, AMELIA_USER)
    async with Browser(gateway.base) as browser:
        await fail_point(admin, {"times": 1}, failCommands=["insert"], closeConnection=True)
        page = await browser.get(f"{gateway.base}/auth/login")
        assert isinstance(page, Page) and page.status == 200, page
        await fail_point(admin, {"times": 1}, failCommands=["insert"], closeConnection=True)
        page = await browser.login(page, AMELIA_USER.username, AMELIA_USER.password)
        assert isinstance(page, Page) and page.status == 200, page
        await fail_point(admin, {"times": 1}, failCommands=["findAndModify"], closeConnection=True)
        page = await browser.get(f"{gateway.base}/auth/signed-in")
        assert isinstance(page, Page) and page.status == 200, page
    user = await services(gateway).users.by_username(AMELIA_USER.username)
    assert user is not None
    # Recorded once, in MongoDB or, if the fail point met its write, in the spool first.
    query = AuditQuery(agent=f"{USER_SYSTEM}|{user.user_id}", subtype="110122", count=10)
    reader = AuditReader(services(gateway).db)
    deadline = time.monotonic() + 10
    found = (await reader.search(query)).events
    while not found and time.monotonic() < deadline:  # a spooled event is replayed shortly
        await asyncio.sleep(0.1)
        found = (await reader.search(query)).events
    assert len(found) == 1


async def test_a_held_write_on_a_sign_in_page_is_a_503_page(
    gateway: RunningGateway,
    admin: AsyncMongoClient[dict[str, Any]],
    http: aiohttp.ClientSession,
) -> None:
    """The authorization server's pages fail closed like the FHIR API: a database that holds a
    write is a 503 page within the database timeout, not a wait and not a 500."""
    await fail_point(
        admin, "alwaysOn", failCommands=["insert"], blockConnection=True, blockTimeMS=30_000
    )
    started = time.monotonic()
    async with http.get(f"{gateway.base}/auth/login", allow_redirects=False) as response:
        assert response.status == 503
        assert "text/html" in response.headers["Content-Type"]
        assert "try again" in await response.text()
    assert time.monotonic() - started < gateway.settings.mongodb_timeout_seconds + 2.5


async def test_idle_connections_are_closed_by_the_gateway_before_the_database_cuts_them(
    gateway: RunningGateway,
) -> None:
    """SecantusDB drops a connection idle for 300 s (its client idle timeout); the gateway closes
    pooled connections idle for ``mongodb_max_idle_seconds`` (60) first, so the next write does
    not meet a dead one."""
    pool = gateway.server.app[MONGO].options.pool_options
    assert pool.max_idle_time_seconds == gateway.settings.mongodb_max_idle_seconds
    assert pool.max_idle_time_seconds is not None and pool.max_idle_time_seconds < 300
