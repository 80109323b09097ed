"""The gateway in front of a scripted upstream (an aiohttp server that records what it receives and
answers what each test sets), for the proxy's and the pipeline's own tests; the real local FHIR
server is in ``tests/e2e``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import register_client
from tests.support.tokens import minted_token

SYSTEM_SCOPE = "system/*.cruds"


@dataclass
class ScriptedUpstream:
    server: TestServer
    seen: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    body: bytes = b'{"resourceType":"Patient","id":"p1"}'
    content_type: str = "application/fhir+json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    in_flight: int = 0
    most_at_once: int = 0
    """The most requests it was answering at the same time."""

    @property
    def base(self) -> str:
        return str(self.server.make_url("/fhir"))


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    state: ScriptedUpstream

    async def handler(request: web.Request) -> web.Response:
        state.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": list(request.query.items()),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        state.in_flight += 1
        state.most_at_once = max(state.most_at_once, state.in_flight)
        try:
            if state.delay:
                await asyncio.sleep(state.delay)
        finally:
            state.in_flight -= 1
        return web.Response(
            status=state.status,
            body=state.body,
            headers={"Content-Type": state.content_type, **state.headers},
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    state = ScriptedUpstream(server)
    yield state
    await server.close()


@pytest_asyncio.fixture
async def gw(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> RunningGateway:
    return await start_gateway(
        upstream_url=upstream.base,
        mongodb_uri=local_stack_env.mongo_uri,
        upstream_timeout_seconds=1.0,
        upstream_auth="bearer",
        upstream_bearer_token="gateway-own-credential",
        metrics_token=METRICS_TOKEN,
    )


METRICS_TOKEN = "test-metrics-token"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest_asyncio.fixture
async def token(gw: RunningGateway) -> str:
    """A trusted backend-services token that may do anything: these tests are about the proxy."""
    await register_client(gw, "test-system", trusted=True)
    return await minted_token(
        gw,
        client_id="test-system",
        scope=SYSTEM_SCOPE,
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )


@pytest_asyncio.fixture
async def client(token: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield session
