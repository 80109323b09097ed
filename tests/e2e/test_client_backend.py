"""SMART Backend Services with the client assertions of common libraries (S-21, S-22, S-24):
Authlib's ``private_key_jwt`` client auth and a PyJWT-signed assertion, each asking for more than
the client is registered for and getting the registered part.

Authlib's ``PrivateKeyJWT`` without a fixed token endpoint puts the URL it is calling in ``aud``,
so at the introspection endpoint the audience is the introspection URL: accepted there (RFC 7523 3
lets the audience be the endpoint called). Two settings no SMART client can leave at Authlib's
defaults: the algorithm (SMART takes RS384 or ES384, Authlib signs RS256) and the assertion's
lifetime (SMART allows five minutes, Authlib signs for an hour)."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import cache
from typing import Any

import jwt as pyjwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from joserfc.jwk import RSAKey

from gateway.appkeys import AUTH
from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway

pytestmark = pytest.mark.e2e

CLIENT_ID = "library-backend"
REGISTERED = "system/Patient.rs system/Observation.rs"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@cache
def _key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "library-backend-1"})


class SmartPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's ``private_key_jwt`` with RS384 and a five-minute assertion."""

    alg = "RS384"

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(
            private_key_jwt_sign(
                auth.client_secret,
                client_id=auth.client_id,
                token_endpoint=token_endpoint,
                alg=self.alg,
                expires_in=300,
            )
        )


async def _register(gateway: RunningGateway) -> None:
    auth = gateway.server.app[AUTH]
    if await auth.clients.get(CLIENT_ID) is None:
        await auth.clients.add(
            new_client(
                client_id=CLIENT_ID,
                name="Library Backend",
                client_type=ClientType.ASYMMETRIC,
                scope=REGISTERED,
                purposes=("HOPERAT",),
                trusted=True,
                jwks={"keys": [_key().as_dict(private=False)]},
            )
        )


def _status(url: str, token: str) -> int:
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return response.status_code


async def test_s21_s22_s24_authlib_private_key_jwt_down_scoped_and_introspection(
    gateway: RunningGateway,
) -> None:
    await _register(gateway)
    token_url = f"{gateway.base}/auth/token"
    session = OAuth2Session(
        CLIENT_ID, _key(), token_endpoint_auth_method=SmartPrivateKeyJWT(), scope="system/*.rs"
    )
    token: dict[str, Any] = await asyncio.to_thread(
        session.fetch_token, token_url, grant_type="client_credentials"
    )
    assert token["scope"] == REGISTERED  # the wildcard narrowed to the registered types
    assert token["expires_in"] <= 300 and "refresh_token" not in token
    access = token["access_token"]
    assert await asyncio.to_thread(_status, f"{gateway.fhir}/Patient?_count=1", access) == 200
    assert await asyncio.to_thread(_status, f"{gateway.fhir}/Observation?_count=1", access) == 200
    assert await asyncio.to_thread(_status, f"{gateway.fhir}/Condition?_count=1", access) == 403

    # Introspection with the same auth method: this assertion's aud is the introspection URL.
    response = await asyncio.to_thread(
        session.introspect_token, f"{gateway.base}/auth/introspect", token=access
    )
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["active"] is True and info["client_id"] == CLIENT_ID
    assert info["scope"] == REGISTERED


async def test_s21_s22_pyjwt_assertion_down_scoped(gateway: RunningGateway) -> None:
    await _register(gateway)
    token_url = f"{gateway.base}/auth/token"
    now = int(time.time())
    assertion = pyjwt.encode(
        {
            "iss": CLIENT_ID,
            "sub": CLIENT_ID,
            "aud": token_url,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        },
        _key().as_pem(private=True),
        algorithm="RS384",
        headers={"kid": _key().kid},
    )
    response = await asyncio.to_thread(
        requests.post,
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.cruds system/Condition.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["scope"] == "system/Patient.rs"  # letters narrowed; Condition not registered
    claims = await asyncio.to_thread(_verified, token["access_token"], gateway)
    assert claims["client_id"] == CLIENT_ID and claims["scope"] == "system/Patient.rs"


def _verified(access_token: str, gateway: RunningGateway) -> dict[str, Any]:
    """The RFC 9068 access token, checked with PyJWT against the gateway's published keys."""
    key = pyjwt.PyJWKClient(f"{gateway.base}/auth/jwks").get_signing_key_from_jwt(access_token)
    claims: dict[str, Any] = pyjwt.decode(
        access_token, key=key, algorithms=["RS256"], audience=gateway.fhir, issuer=gateway.base
    )
    return claims
