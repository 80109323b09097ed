"""Real access tokens for tests, from the real authorization server of a running gateway.

- :func:`flow_token` — the whole standalone launch as an app and a browser would drive it
  (authorize → sign in → patient picker → consent → code → token with PKCE); returns the token
  response. Registers the client and the user first if they are missing.
- :func:`minted_token` — an access token from the real token-issuing code and the gateway's key
  ring, without the browser flow (fast, for tests that need many tokens with chosen claims). Its
  ``grant_id`` is real only if you pass one you created; ``signing_key`` signs with another key.
- :func:`backend_token` — ``client_credentials`` with a real RS384 ``private_key_jwt`` assertion.

Usage from another test module::

    from tests.support.tokens import flow_token
    tokens = await flow_token(gateway, user=MARIA, scope="launch/patient patient/*.rs")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.appkeys import AUTH
from smart_auth.accounts.users import Role
from smart_auth.clients import ClientType, new_client
from smart_auth.grants import Grant
from smart_auth.keys import SigningKey
from smart_auth.services import AuthServices
from smart_auth.tokens import issue_access_token
from tests.conftest import RunningGateway
from tests.support.browser import Browser, Page, authorize_url, callback_params, pkce_pair

PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:9/callback"


@dataclass(frozen=True)
class TestUser:
    username: str
    role: Role
    fhir_user: str | None
    related_persons: tuple[str, ...] = ()
    password: str = PASSWORD


MARIA = TestUser("maria", Role.PATIENT, "Patient/pat-maria-garcia", ("relperson-maria-garcia",))
AMELIA = TestUser("amelia", Role.PATIENT, "Patient/pat-amelia-rossi")
HANNAH = TestUser("hannah", Role.PRACTITIONER, "Practitioner/prac-hannah-okafor")
ADMIN = TestUser("admin", Role.ADMIN, None)

PUBLIC_APP = "test-patient-app"
PUBLIC_SCOPE = (
    "openid fhirUser launch launch/patient offline_access online_access "
    "patient/*.cruds user/*.cruds"
)


def services(gateway: RunningGateway) -> AuthServices:
    return gateway.server.app[AUTH]


async def ensure_user(gateway: RunningGateway, user: TestUser) -> str:
    auth = services(gateway)
    found = await auth.users.by_username(user.username)
    if found is None:
        found = await auth.users.add(
            username=user.username,
            role=user.role,
            password=user.password,
            fhir_user=user.fhir_user,
            related_persons=user.related_persons,
        )
    return found.user_id


async def ensure_public_client(
    gateway: RunningGateway,
    client_id: str = PUBLIC_APP,
    scope: str = PUBLIC_SCOPE,
    purposes: tuple[str, ...] = ("PATRQT",),
) -> None:
    auth = services(gateway)
    if await auth.clients.get(client_id) is None:
        await auth.clients.add(
            new_client(
                client_id=client_id,
                name="Test Patient App",
                client_type=ClientType.PUBLIC,
                redirect_uris=(REDIRECT,),
                scope=scope,
                purposes=purposes,
                url="https://app.example.org",
            )
        )


async def flow_token(
    gateway: RunningGateway,
    *,
    user: TestUser = MARIA,
    client_id: str = PUBLIC_APP,
    scope: str = "launch/patient openid fhirUser offline_access patient/*.rs",
    patient: str | None = None,
) -> dict[str, Any]:
    """The token response for ``user`` approving ``client_id`` with ``scope`` (all ticked)."""
    await ensure_user(gateway, user)
    if client_id == PUBLIC_APP:
        await ensure_public_client(gateway)
    verifier, challenge = pkce_pair()
    state = uuid.uuid4().hex
    async with Browser(gateway.base) as browser:
        page = await browser.get(
            authorize_url(
                gateway.base,
                response_type="code",
                client_id=client_id,
                redirect_uri=REDIRECT,
                scope=scope,
                state=state,
                aud=gateway.fhir,
                code_challenge=challenge,
                code_challenge_method="S256",
            )
        )
        assert isinstance(page, Page), page
        page = await browser.login(page, user.username, user.password)
        assert isinstance(page, Page), page
        if page.url.startswith(f"{gateway.base}/auth/patient"):
            form = page.forms[0]
            choice = {"patient": patient} if patient else None
            page = await browser.submit(page, form, form.data(radio=choice))
            assert isinstance(page, Page), page
        form = page.forms[0]
        location = await browser.submit(page, form, form.data(button=("decision", "approve")))
        assert isinstance(location, str), location
        params = callback_params(location)
        assert params["state"] == state, params
        async with browser.session.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": REDIRECT,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        ) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
            return body


async def minted_token(
    gateway: RunningGateway,
    *,
    client_id: str = PUBLIC_APP,
    scope: str = "patient/*.rs",
    user_id: str | None = "test-user",
    fhir_user: str | None = "Patient/pat-amelia-rossi",
    patient: str | None = "pat-amelia-rossi",
    acts_for: tuple[str, ...] = ("pat-amelia-rossi",),
    purposes: tuple[str, ...] = ("PATRQT",),
    grant_id: str | None = None,
    signing_key: SigningKey | None = None,
) -> str:
    auth = services(gateway)
    key = signing_key or await auth.keys.signing_key()
    grant = Grant(
        client_id=client_id,
        scope=scope,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        user_id=user_id,
        fhir_user=fhir_user,
        patient=patient,
        acts_for=acts_for,
        purposes=purposes,
        **({"grant_id": grant_id} if grant_id else {}),
    )
    return issue_access_token(
        key,
        auth.config.token_policy,
        client_id=client_id,
        scope=scope,
        grant=grant,
        purposes=purposes,
    ).token


BACKEND_APP = "test-backend"


async def ensure_backend_client(
    gateway: RunningGateway, key: RSAKey, scope: str = "system/*.rs"
) -> None:
    auth = services(gateway)
    if await auth.clients.get(BACKEND_APP) is None:
        await auth.clients.add(
            new_client(
                client_id=BACKEND_APP,
                name="Test Backend",
                client_type=ClientType.ASYMMETRIC,
                scope=scope,
                purposes=("HOPERAT",),
                jwks={"keys": [key.as_dict(private=False, alg="RS384", use="sig")]},
            )
        )


def assertion(key: RSAKey, token_url: str, client_id: str = BACKEND_APP, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
        "iat": now,
    }
    claims.update(overrides)
    header = {"alg": "RS384", "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=["RS384"])


@cache
def backend_key() -> RSAKey:
    """The test backend client's key pair (one per test session)."""
    return RSAKey.generate_key(2048, parameters={"kid": "test-backend-1"})


async def backend_token(gateway: RunningGateway, scope: str = "system/*.rs") -> dict[str, Any]:
    key = backend_key()
    await ensure_backend_client(gateway, key)
    token_url = f"{gateway.base}/auth/token"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion(key, token_url),
            },
        ) as response,
    ):
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body
