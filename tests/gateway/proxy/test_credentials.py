"""P-02: the gateway authenticates to the upstream with OAuth 2.0 client credentials from the FHIR
server's own authorization server (``gateway/proxy/credentials.py``): a client secret or a
``private_key_jwt`` assertion, the token cached and renewed before it expires, never forwarded to a
caller. The authorization server is a small aiohttp server here (a protocol peer, not the thing
under test); the FHIR side is a scripted upstream that records what it receives, and the real local
upstream."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.proxy.credentials import credentials_for
from gateway.settings import SettingsError, load_settings
from tests.conftest import RunningGateway, Stack, StartGateway, gateway_settings
from tests.e2e.conftest import register_client
from tests.support.tokens import minted_token

pytestmark = pytest.mark.e2e

CLIENT_ID = "gateway@fhir.example"
SECRET = "s3cret/with:odd&chars"
SCOPE = "system/*.rs"


@dataclass
class FhirServerPeer:
    """A FHIR server and its authorization server: tokens at ``/oauth/token``, FHIR at ``/fhir``."""

    server: TestServer | None = None
    expires_in: int = 3600
    token_status: int = 200
    fhir_status: int = 200
    issued: list[str] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    fhir_authorization: list[str] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/oauth/token"))

    @property
    def fhir_base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/fhir"))

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append(
            {"authorization": request.headers.get("Authorization", ""), "form": form}
        )
        if self.token_status != 200:
            error = {"error": "invalid_client", "error_description": "the secret was wrong-xyz"}
            return web.json_response(error, status=self.token_status)
        value = f"upstream-token-{len(self.issued) + 1}"
        self.issued.append(value)
        answer = {"access_token": value, "token_type": "Bearer", "expires_in": self.expires_in}
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def fhir(self, request: web.Request) -> web.Response:
        self.fhir_authorization.append(request.headers.get("Authorization", ""))
        body = {"resourceType": "Patient", "id": "p1"}
        status = self.fhir_status
        if status == 401:
            self.fhir_status = 200  # once
        return web.Response(
            status=status, body=orjson.dumps(body), content_type="application/fhir+json"
        )


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[FhirServerPeer]:
    state = FhirServerPeer()
    app = web.Application()
    app.router.add_post("/oauth/token", state.token)
    app.router.add_route("*", "/fhir/{tail:.*}", state.fhir)
    state.server = TestServer(app)
    await state.server.start_server()
    yield state
    await state.server.close()


async def _caller(gateway: RunningGateway) -> dict[str, str]:
    await register_client(gateway, "test-system", trusted=True)
    token = await minted_token(
        gateway,
        client_id="test-system",
        scope="system/*.cruds",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )
    return {"Authorization": f"Bearer {token}"}


async def _gateway(
    start_gateway: StartGateway, stack: Stack, peer: FhirServerPeer, upstream: str, **auth: Any
) -> RunningGateway:
    return await start_gateway(
        upstream_url=upstream,
        mongodb_uri=stack.mongo_uri,
        upstream_auth="client_credentials",
        upstream_oauth_token_url=peer.token_url,
        upstream_oauth_client_id=CLIENT_ID,
        upstream_oauth_scope=SCOPE,
        **auth,
    )


async def test_p02_a_client_secret_token_is_fetched_once_and_sent_upstream_only(
    start_gateway: StartGateway, local_stack_env: Stack, peer: FhirServerPeer
) -> None:
    gateway = await _gateway(
        start_gateway,
        local_stack_env,
        peer,
        peer.fhir_base,
        upstream_oauth_client_secret=SECRET,
    )
    caller = await _caller(gateway)
    async with aiohttp.ClientSession(headers=caller) as http:
        for _ in range(3):
            async with http.get(f"{gateway.fhir}/Patient/p1") as response:
                assert response.status == 200
                answer = await response.read() + str(response.headers).encode()
                assert b"upstream-token" not in answer
    assert peer.fhir_authorization == ["Bearer upstream-token-1"] * 3
    assert len(peer.token_requests) == 1
    request = peer.token_requests[0]
    assert request["form"] == {"grant_type": "client_credentials", "scope": SCOPE}
    scheme, _, encoded = request["authorization"].partition(" ")
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic" and (unquote(user), unquote(password)) == (CLIENT_ID, SECRET)


async def test_p02_the_token_is_renewed_before_it_expires_and_after_a_401(
    start_gateway: StartGateway, local_stack_env: Stack, peer: FhirServerPeer
) -> None:
    peer.expires_in = 2  # renewed halfway through so short a life
    gateway = await _gateway(
        start_gateway,
        local_stack_env,
        peer,
        peer.fhir_base,
        upstream_oauth_client_secret=SECRET,
    )
    async with aiohttp.ClientSession(headers=await _caller(gateway)) as http:
        url = f"{gateway.fhir}/Patient/p1"
        async with http.get(url) as response:
            assert response.status == 200
        await asyncio.sleep(1.2)
        async with http.get(url) as response:
            assert response.status == 200
        peer.expires_in = 3600
        peer.fhir_status = 401  # the upstream no longer takes the token
        async with http.get(url) as response:
            await response.read()
        async with http.get(url) as response:
            assert response.status == 200
    assert peer.fhir_authorization == [
        "Bearer upstream-token-1",
        "Bearer upstream-token-2",
        "Bearer upstream-token-2",
        "Bearer upstream-token-3",
    ]


async def test_p02_private_key_jwt_assertions_are_signed_and_fresh(
    start_gateway: StartGateway, local_stack_env: Stack, peer: FhirServerPeer, tmp_path: Path
) -> None:
    key = ECKey.generate_key("P-384")
    key_file = tmp_path / "upstream-client.pem"
    key_file.write_bytes(key.as_pem(private=True))
    gateway = await _gateway(
        start_gateway,
        local_stack_env,
        peer,
        peer.fhir_base,
        upstream_oauth_private_key_file=key_file,
    )
    async with aiohttp.ClientSession(headers=await _caller(gateway)) as http:
        peer.fhir_status = 401
        for _ in range(2):  # the 401 makes the second request fetch a second token
            async with http.get(f"{gateway.fhir}/Patient/p1") as response:
                await response.read()
    assert len(peer.token_requests) == 2
    jtis = set()
    public = ECKey.import_key(key.as_dict(private=False))
    for request in peer.token_requests:
        form = request["form"]
        assert request["authorization"] == ""
        assert form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        token = jwt.decode(form["client_assertion"], public, algorithms=["ES384"])
        assert token.header["kid"] == key.thumbprint() and token.header["alg"] == "ES384"
        claims = token.claims
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["aud"] == peer.token_url
        assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["exp"] > time.time()
        jtis.add(claims["jti"])
    assert len(jtis) == 2


async def test_p02_a_refusing_token_endpoint_is_a_plain_502(
    start_gateway: StartGateway, local_stack_env: Stack, peer: FhirServerPeer
) -> None:
    peer.token_status = 401
    gateway = await _gateway(
        start_gateway,
        local_stack_env,
        peer,
        peer.fhir_base,
        upstream_oauth_client_secret=SECRET,
    )
    async with (
        aiohttp.ClientSession(headers=await _caller(gateway)) as http,
        http.get(f"{gateway.fhir}/Patient/p1") as response,
    ):
        assert response.status == 502
        text = await response.text()
    assert "OperationOutcome" in text and "cannot authenticate to the upstream" in text
    for detail in ("invalid_client", "wrong-xyz", peer.token_url, "oauth"):
        assert detail not in text
    assert peer.fhir_authorization == []  # nothing was sent without the gateway's credentials


async def test_p02_client_credentials_in_front_of_the_local_upstream(
    start_gateway: StartGateway, local_stack_env: Stack, peer: FhirServerPeer
) -> None:
    gateway = await _gateway(
        start_gateway,
        local_stack_env,
        peer,
        local_stack_env.upstream.base_url,
        upstream_oauth_client_secret=SECRET,
    )
    async with (
        aiohttp.ClientSession(headers=await _caller(gateway)) as http,
        http.get(f"{gateway.fhir}/Patient/pat-amelia-rossi") as response,
    ):
        assert response.status == 200
        assert (await response.json(content_type=None))["id"] == "pat-amelia-rossi"
    assert peer.issued == ["upstream-token-1"]


async def test_p02_basic_credentials_are_encoded_without_deprecated_helpers() -> None:
    settings = gateway_settings(
        8080,
        upstream_url="http://fhir.example/fhir",
        upstream_auth="basic",
        upstream_username="gateway",
        upstream_password="pa:ss",
    )
    async with aiohttp.ClientSession() as session:
        headers = await credentials_for(settings, session).headers()
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"gateway:pa:ss").decode()}


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({}, "upstream_oauth_token_url"),
        ({"upstream_oauth_token_url": "https://idp.example/token"}, "upstream_oauth_client_id"),
        (
            {
                "upstream_oauth_token_url": "https://idp.example/token",
                "upstream_oauth_client_id": "g",
            },
            "one of them",
        ),
        ({"upstream_oauth_token_url": "ftp://idp.example/token"}, "must be an absolute http"),
    ],
)
def test_p02_client_credentials_settings_are_checked_at_start(
    values: dict[str, str], says: str
) -> None:
    with pytest.raises(SettingsError, match=says):
        load_settings(upstream_auth="client_credentials", **values)
