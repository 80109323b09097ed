"""Backend services (S-21 … S-23): client_credentials with private_key_jwt, RS384 and ES384, and
every assertion defect refused with 401 invalid_client."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from gateway.appkeys import AUTH
from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway

pytestmark = pytest.mark.e2e

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RSA_KEY = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


def _assertion(
    key: Any,
    alg: str,
    client_id: str,
    aud: str | list[str],
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
        "iat": now,
        **claims,
    }
    head = {"alg": alg, "kid": key.kid, "typ": "JWT", **(header or {})}
    return jwt.encode(head, body, key, algorithms=[alg])


async def _register(gateway: RunningGateway, client_id: str, **keys: Any) -> None:
    await gateway.server.app[AUTH].clients.add(
        new_client(
            client_id=client_id,
            name=client_id,
            client_type=ClientType.ASYMMETRIC,
            scope="system/Patient.rs system/Observation.rs",
            purposes=("HOPERAT",),
            **keys,
        )
    )


async def _token(
    gateway: RunningGateway,
    assertion: str,
    scope: str = "system/Patient.rs",
    grant_type: str = "client_credentials",
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": grant_type,
                "scope": scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        ) as response,
    ):
        return response.status, orjson.loads(await response.read())


@pytest_asyncio.fixture
async def backend(gateway: RunningGateway) -> RunningGateway:
    await _register(gateway, "backend-rsa", jwks={"keys": [RSA_KEY.as_dict(private=False)]})
    await _register(gateway, "backend-ec", jwks={"keys": [EC_KEY.as_dict(private=False)]})
    return gateway


@pytest.mark.parametrize(
    ("client_id", "key", "alg"),
    [("backend-rsa", RSA_KEY, "RS384"), ("backend-ec", EC_KEY, "ES384")],
)
async def test_s21_client_credentials_with_rs384_and_es384(
    backend: RunningGateway, client_id: str, key: Any, alg: str
) -> None:
    token_url = f"{backend.base}/auth/token"
    status, body = await _token(backend, _assertion(key, alg, client_id, token_url))
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] <= 300
    assert "refresh_token" not in body and body["scope"] == "system/Patient.rs"
    claims = jwt.decode(body["access_token"], await _jwks(backend), algorithms=["RS256"]).claims
    assert claims["sub"] == client_id and claims["client_id"] == client_id
    assert claims["exp"] - claims["iat"] <= 300 and claims["purpose_of_use"] == ["HOPERAT"]


async def _jwks(gateway: RunningGateway) -> Any:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(await gateway.server.app[AUTH].keys.public_jwks())


def _defects(token_url: str) -> dict[str, str]:
    c = "backend-rsa"
    hmac_key = OctKey.generate_key(256, parameters={"kid": "rsa-1"})
    now = int(time.time())
    unsigned = (
        ".".join(
            base64.urlsafe_b64encode(orjson.dumps(part)).rstrip(b"=").decode()
            for part in (
                {"alg": "none", "typ": "JWT"},
                {"iss": c, "sub": c, "aud": token_url, "exp": now + 60, "jti": "n"},
            )
        )
        + "."
    )
    return {
        "wrong aud": _assertion(RSA_KEY, "RS384", c, f"{token_url}/other"),
        "aud list with the token url and another": _assertion(
            RSA_KEY, "RS384", c, [token_url, "https://other.example"]
        ),
        "iss differs from sub": _assertion(RSA_KEY, "RS384", c, token_url, iss="someone-else"),
        "exp more than 5 minutes ahead": _assertion(RSA_KEY, "RS384", c, token_url, exp=now + 900),
        "expired": _assertion(RSA_KEY, "RS384", c, token_url, exp=now - 120),
        "no jti": _assertion(RSA_KEY, "RS384", c, token_url, jti=None),
        "HS256": jwt.encode(
            {"alg": "HS256", "kid": "rsa-1"},
            {"iss": c, "sub": c, "aud": token_url, "exp": now + 60, "jti": "h"},
            hmac_key,
            algorithms=["HS256"],
        ),
        "alg none": unsigned,
        "RS256 (not allowed)": _assertion(RSA_KEY, "RS256", c, token_url),
        "unknown kid": _assertion(
            RSAKey.generate_key(2048, parameters={"kid": "other"}), "RS384", c, token_url
        ),
        "signed by another key with the registered kid": _assertion(
            RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}), "RS384", c, token_url
        ),
        "jku not registered": _assertion(
            RSA_KEY, "RS384", c, token_url, header={"jku": "https://evil.example/jwks"}
        ),
        "unknown client": _assertion(RSA_KEY, "RS384", "nobody", token_url),
    }


async def test_s22_every_assertion_defect_is_401_invalid_client(backend: RunningGateway) -> None:
    token_url = f"{backend.base}/auth/token"
    for name, assertion in _defects(token_url).items():
        status, body = await _token(backend, assertion)
        assert (status, body.get("error")) == (401, "invalid_client"), name


async def test_s22_a_replayed_jti_is_refused(backend: RunningGateway) -> None:
    assertion = _assertion(RSA_KEY, "RS384", "backend-rsa", f"{backend.base}/auth/token")
    assert (await _token(backend, assertion))[0] == 200
    status, body = await _token(backend, assertion)
    assert (status, body["error"]) == (401, "invalid_client")


async def test_s22_bad_grant_type_is_unsupported(backend: RunningGateway) -> None:
    assertion = _assertion(RSA_KEY, "RS384", "backend-rsa", f"{backend.base}/auth/token")
    status, body = await _token(backend, assertion, grant_type="urn:example:nope")
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_s21_the_grant_is_what_the_registration_allows_of_the_request(
    backend: RunningGateway,
) -> None:
    """Registered for system/Patient.rs system/Observation.rs: a wider request is narrowed and
    the token response says so; a request with nothing in the registration is refused."""
    token_url = f"{backend.base}/auth/token"
    for scope, granted in (
        ("system/*.rs", "system/Patient.rs system/Observation.rs"),
        ("system/Patient.cruds", "system/Patient.rs"),
        ("system/Patient.rs patient/Patient.rs openid", "system/Patient.rs"),
        ("system/*.read", "system/Patient.read system/Observation.read"),
    ):
        status, body = await _token(
            backend, _assertion(RSA_KEY, "RS384", "backend-rsa", token_url), scope=scope
        )
        assert (status, body.get("scope")) == (200, granted), (scope, body)
        claims = jwt.decode(body["access_token"], await _jwks(backend), algorithms=["RS256"])
        assert claims.claims["scope"] == granted
    for scope in ("system/Condition.rs", "patient/Patient.rs", "openid", ""):
        status, body = await _token(
            backend, _assertion(RSA_KEY, "RS384", "backend-rsa", token_url), scope=scope
        )
        assert (status, body["error"]) == (400, "invalid_scope"), scope


@pytest_asyncio.fixture
async def jwks_server() -> AsyncIterator[tuple[str, list[int]]]:
    hits: list[int] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(1)
        body = orjson.dumps({"keys": [EC_KEY.as_dict(private=False)]})
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "max-age=600"}
        )

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/jwks.json", hits
    await server.close()


async def test_s23_jwks_url_with_matching_jku_and_cache_control(
    gateway: RunningGateway, jwks_server: tuple[str, list[int]]
) -> None:
    url, hits = jwks_server
    await _register(gateway, "backend-url", jwks_uri=url)
    token_url = f"{gateway.base}/auth/token"
    for _ in range(2):
        status, body = await _token(
            gateway, _assertion(EC_KEY, "ES384", "backend-url", token_url, header={"jku": url})
        )
        assert status == 200, body
    assert len(hits) == 1  # cached within its max-age
    status, body = await _token(
        gateway,
        _assertion(EC_KEY, "ES384", "backend-url", token_url, header={"jku": url + "?other"}),
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def _introspect(
    gateway: RunningGateway, token: str, *, assertion: str | None = None, bearer: str | None = None
) -> tuple[int, dict[str, Any]]:
    data = {"token": token}
    if assertion is not None:
        data |= {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.base}/auth/introspect", data=data, headers=headers) as response,
    ):
        return response.status, orjson.loads(await response.read())


async def test_s22_aud_is_the_issuer_the_token_url_or_the_endpoint_called(
    backend: RunningGateway,
) -> None:
    token_url = f"{backend.base}/auth/token"
    introspect_url = f"{backend.base}/auth/introspect"
    status, body = await _token(backend, _assertion(RSA_KEY, "RS384", "backend-rsa", backend.base))
    assert status == 200, body
    status, body = await _token(
        backend, _assertion(RSA_KEY, "RS384", "backend-rsa", introspect_url)
    )
    assert (status, body["error"]) == (401, "invalid_client")  # not the endpoint called
    token = (await _token(backend, _assertion(RSA_KEY, "RS384", "backend-rsa", token_url)))[1]
    for aud in (introspect_url, token_url, backend.base):
        status, info = await _introspect(
            backend,
            token["access_token"],
            assertion=_assertion(RSA_KEY, "RS384", "backend-rsa", aud),
        )
        assert (status, info["active"], info["client_id"]) == (200, True, "backend-rsa"), aud
    status, info = await _introspect(
        backend,
        token["access_token"],
        assertion=_assertion(RSA_KEY, "RS384", "backend-rsa", f"{backend.base}/auth/revoke"),
    )
    assert (status, info["error"]) == (401, "invalid_client")


async def test_s24_only_a_registered_resource_server_introspects_other_apps_tokens(
    backend: RunningGateway,
) -> None:
    resource_server_key = RSAKey.generate_key(2048, parameters={"kid": "rs-1"})
    await _register(
        backend,
        "resource-server",
        jwks={"keys": [resource_server_key.as_dict(private=False)]},
        introspect_all_tokens=True,
    )
    url = f"{backend.base}/auth/introspect"
    other = (await _token(backend, _assertion(RSA_KEY, "RS384", "backend-rsa", backend.base)))[1]
    status, info = await _introspect(
        backend, other["access_token"], assertion=_assertion(EC_KEY, "ES384", "backend-ec", url)
    )
    assert (status, info) == (200, {"active": False})  # another app's token
    status, info = await _introspect(
        backend,
        other["access_token"],
        assertion=_assertion(resource_server_key, "RS384", "resource-server", url),
    )
    assert status == 200 and info["active"] is True and info["client_id"] == "backend-rsa"
    assert info["scope"] == "system/Patient.rs"
    # With its own access token as the credential, it sees only its own tokens.
    own = await _token(
        backend, _assertion(resource_server_key, "RS384", "resource-server", backend.base)
    )
    status, info = await _introspect(backend, other["access_token"], bearer=own[1]["access_token"])
    assert (status, info) == (200, {"active": False})
