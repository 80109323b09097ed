"""Fixtures for whole flows: HTTP sessions that carry real access tokens of a running gateway.

Tests of access control (scopes, compartment) use a *trusted* client, which runs under opt-out
consent (C-04): without any Consent it sees what its scopes and compartment allow, so those tests
prove access control alone. Tests of consent use untrusted (third-party) clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest_asyncio

from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway
from tests.support.tokens import minted_token, services

SessionFor = Callable[..., Awaitable[aiohttp.ClientSession]]

TRUSTED_APP = "test-trusted-app"
SYSTEM_APP = "test-system"


async def register_client(
    gateway: RunningGateway,
    client_id: str,
    *,
    trusted: bool,
    scope: str = "patient/*.cruds user/*.cruds system/*.cruds",
    purposes: tuple[str, ...] = ("TREAT",),
    manages_consent: bool = False,
) -> None:
    """Register a backend-style client (no redirect) unless it exists."""
    auth = services(gateway)
    if await auth.clients.get(client_id) is None:
        await auth.clients.add(
            new_client(
                client_id=client_id,
                name=f"Test client {client_id}",
                client_type=ClientType.ASYMMETRIC,
                scope=scope,
                purposes=purposes,
                trusted=trusted,
                manages_consent=manages_consent,
                jwks={"keys": []},
            )
        )


@pytest_asyncio.fixture
async def session_for(gateway: RunningGateway) -> AsyncIterator[SessionFor]:
    """Factory: an HTTP session whose requests carry a token minted by the gateway's own key ring
    with the given claims (see :func:`tests.support.tokens.minted_token`). The client defaults
    to a registered trusted app (``trusted=False`` registers it as a third-party app;
    ``manages_consent=True`` as the hospital's patient portal, C-23)."""
    sessions: list[aiohttp.ClientSession] = []

    async def make(
        *, trusted: bool = True, manages_consent: bool = False, **claims: object
    ) -> aiohttp.ClientSession:
        claims.setdefault("client_id", TRUSTED_APP)
        claims.setdefault("purposes", ("TREAT",))
        await register_client(
            gateway, str(claims["client_id"]), trusted=trusted, manages_consent=manages_consent
        )
        token = await minted_token(gateway, **claims)  # type: ignore[arg-type]
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


@pytest_asyncio.fixture
async def system_http(session_for: SessionFor) -> aiohttp.ClientSession:
    """A trusted backend-services token that may do anything (for FHIR behaviour, not access)."""
    return await session_for(
        client_id=SYSTEM_APP,
        scope="system/*.cruds",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )
