"""Fixtures for whole flows: HTTP sessions that carry real access tokens of a running gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest_asyncio

from tests.conftest import RunningGateway
from tests.smart_auth.tokens import minted_token

SessionFor = Callable[..., Awaitable[aiohttp.ClientSession]]


@pytest_asyncio.fixture
async def session_for(gateway: RunningGateway) -> AsyncIterator[SessionFor]:
    """Factory: an HTTP session whose requests carry a token minted by the gateway's own key ring
    with the given claims (see :func:`tests.smart_auth.tokens.minted_token`)."""
    sessions: list[aiohttp.ClientSession] = []

    async def make(**claims: object) -> aiohttp.ClientSession:
        token = await minted_token(gateway, **claims)  # type: ignore[arg-type]
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


@pytest_asyncio.fixture
async def system_http(session_for: SessionFor) -> aiohttp.ClientSession:
    """A backend-services token that may do anything (for tests of FHIR behaviour, not access)."""
    return await session_for(
        client_id="test-system",
        scope="system/*.cruds",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )
