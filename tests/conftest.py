"""Shared fixtures.

``local_stack`` starts the real local stack once per test session: SecantusDB (a MongoDB
wire-protocol server) and the local upstream FHIR server (Medplum's FHIR router under Node). When
``MONGODB_URI`` is set, that MongoDB is used instead of the embedded one. ``start_gateway`` builds
a gateway with ``create_app`` and serves it on a real loopback port on the gateway's own runner
(as ``fhir-gateway serve`` does; over TLS when the settings name a certificate), each with its own
database and, unless a test says otherwise, the session's throwaway key-encryption key
(``SESSION_KEK``).
"""

from __future__ import annotations

import base64
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.localstack import LocalUpstream, free_port, local_stack
from gateway.settings import Settings, load_settings
from gateway.web.server import make_runner, tls_context
from smart_auth.clock import Clock, system_clock
from smart_auth.key_provider import KeyProvider

SESSION_KEK = base64.b64encode(os.urandom(32)).decode()  # this test session's, never reused


@dataclass
class Stack:
    mongo_uri: str
    upstream: LocalUpstream


class GatewayServer(TestServer):
    """aiohttp's test server on the gateway's runner (:func:`gateway.web.server.make_runner`)."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.settings = settings

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return make_runner(self.app, self.settings, **kwargs)


@dataclass
class RunningGateway:
    server: TestServer
    settings: Settings

    @property
    def base(self) -> str:
        return self.settings.public_base_url

    @property
    def fhir(self) -> str:
        return self.settings.fhir_base_url


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture(scope="session")
def local_stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    with local_stack(workdir, mongo_uri=os.environ.get("MONGODB_URI"), test_commands=True) as (
        mongo_uri,
        upstream,
        _mongo,
    ):
        yield Stack(mongo_uri, upstream)


@pytest.fixture
def fresh_upstream(local_stack_env: Stack) -> Stack:
    """The local upstream re-seeded to the fixture data, for tests that write."""
    local_stack_env.upstream.reset()
    return local_stack_env


def gateway_settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "public_base_url": f"http://127.0.0.1:{port}",
        "mongodb_database": f"test_{uuid.uuid4().hex[:12]}",
        "key_encryption_key": SESSION_KEK,
        "audit_spool_dir": Path(tempfile.mkdtemp(prefix="audit-spool-")),
        **overrides,
    }
    return load_settings(**values)


@pytest_asyncio.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Factory: ``await start_gateway(upstream_url=..., mongodb_uri=..., **settings)``; a
    ``key_provider`` replaces the one of the settings' key-encryption key."""
    servers: list[TestServer] = []

    async def start(
        *, key_provider: KeyProvider | None = None, clock: Clock = system_clock, **overrides: Any
    ) -> RunningGateway:
        port = free_port()
        settings = gateway_settings(port, **overrides)
        app = create_app(settings, key_provider=key_provider, clock=clock)
        server = GatewayServer(app, settings, host="127.0.0.1", port=port)
        tls = tls_context(settings)
        try:
            await server.start_server(**({"ssl": tls} if tls else {}))
        except BaseException:  # a gateway that refuses to start still closes what it opened
            await server.close()
            raise
        servers.append(server)
        return RunningGateway(server, settings)

    yield start
    for server in reversed(servers):
        await server.close()


@pytest_asyncio.fixture
async def gateway(start_gateway: StartGateway, local_stack_env: Stack) -> RunningGateway:
    """A gateway in front of the real local upstream and database."""
    return await start_gateway(
        upstream_url=local_stack_env.upstream.base_url, mongodb_uri=local_stack_env.mongo_uri
    )


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
