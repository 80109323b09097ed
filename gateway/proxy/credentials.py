"""The gateway's own credentials towards the upstream FHIR server (P-02): none, a static bearer
token, HTTP basic, or an access token from the FHIR server's own authorization server by OAuth 2.0
client credentials (RFC 6749 4.4), as cloud FHIR services and EHR vendors require.

For client credentials the gateway authenticates with a client secret (``client_secret_basic``,
RFC 6749 2.3.1) or with a signed assertion (``private_key_jwt``: RFC 7523 2.2 as SMART Backend
Services uses it; RS384 for an RSA key, ES256/ES384 for an EC key, the key id from the settings or
the key's RFC 7638 thumbprint). A token is kept and used until shortly before it expires (30 s
before, or halfway through a life shorter than a minute); concurrent requests share one fetch; an
upstream that answers 401 makes the next request fetch a new one. The token goes to the upstream
only: the caller's own ``Authorization`` is never forwarded, and nothing of the token endpoint's
answer reaches a caller (a failure there is a plain 502).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

from gateway.settings import Settings, SettingsError
from gateway.web.errors import UpstreamUnavailable

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASSERTION_SECONDS = 300
_MAX_ANSWER_BYTES = 64 * 1024
_DEFAULT_LIFETIME = 60  # when the token endpoint does not say (expires_in is only recommended)


class Credentials(Protocol):
    """What the gateway adds to every upstream request to authenticate itself."""

    async def headers(self) -> Mapping[str, str]: ...

    def rejected(self) -> None:
        """The upstream answered 401 to a request made with :meth:`headers`."""


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """No credentials, a static bearer token or HTTP basic."""

    fixed: Mapping[str, str]

    async def headers(self) -> Mapping[str, str]:
        return self.fixed

    def rejected(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # time.monotonic()


class ClientCredentials:
    """OAuth 2.0 client credentials against the upstream's authorization server."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        token_url: str,
        client_id: str,
        client_secret: str | None = None,
        signing_key: RSAKey | ECKey | None = None,
        key_id: str | None = None,
        scope: str | None = None,
    ) -> None:
        if (client_secret is None) == (signing_key is None):
            raise ValueError("a client secret or a signing key, one of them")
        self._session = session
        self._token_url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._key = signing_key
        self._key_id = key_id or (signing_key.thumbprint() if signing_key else None)
        self._scope = scope
        self._token: _Token | None = None
        self._lock = asyncio.Lock()

    async def headers(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {await self._current()}"}

    def rejected(self) -> None:
        self._token = None

    async def _current(self) -> str:
        token = self._token
        if token is not None and token.renew_at > time.monotonic():
            return token.value
        async with self._lock:
            token = self._token  # another request may have fetched one meanwhile
            if token is None or token.renew_at <= time.monotonic():
                token = self._token = await self._fetch()
        return token.value

    async def _fetch(self) -> _Token:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        headers = {"Accept": "application/json"}
        if self._secret is not None:  # RFC 6749 2.3.1: form-encoded, then basic
            user, password = quote(self._client_id, safe=""), quote(self._secret, safe="")
            headers["Authorization"] = basic_authorization(user, password)
        else:
            form |= {"client_assertion_type": ASSERTION_TYPE, "client_assertion": self._assertion()}
        started = time.monotonic()
        try:
            async with self._session.post(
                self._token_url, data=form, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.content.read(_MAX_ANSWER_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("the upstream's token endpoint cannot be reached: %s", type(exc).__name__)
            raise _unavailable() from None
        token = _read_token(status, raw)
        lifetime = token[1]
        renew_in = lifetime - 30 if lifetime >= 60 else lifetime / 2
        return _Token(token[0], started + renew_in)

    def _assertion(self) -> str:
        assert self._key is not None
        alg = _algorithm(self._key)
        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._token_url,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + _ASSERTION_SECONDS,
        }
        header = {"alg": alg, "typ": "JWT", "kid": self._key_id}
        return jwt.encode(header, claims, self._key, algorithms=[alg])


def basic_authorization(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic (RFC 7617)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _unavailable() -> UpstreamUnavailable:
    return UpstreamUnavailable("the gateway cannot authenticate to the upstream FHIR server")


def _read_token(status: int, raw: bytes) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token endpoint's answer."""
    try:
        body = orjson.loads(raw) if len(raw) <= _MAX_ANSWER_BYTES else None
    except orjson.JSONDecodeError:
        body = None
    if status != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        log.warning(
            "the upstream's token endpoint refused the gateway: %s %s",
            status,
            error if isinstance(error, str) else "",
        )
        raise _unavailable()
    value, kind, lifetime = body.get("access_token"), body.get("token_type"), body.get("expires_in")
    if not isinstance(value, str) or not value or str(kind).lower() != "bearer":
        log.warning("the upstream's token endpoint answered without a bearer access token")
        raise _unavailable()
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = _DEFAULT_LIFETIME
    return value, float(lifetime)


def _algorithm(key: RSAKey | ECKey) -> str:
    if isinstance(key, RSAKey):
        return "RS384"
    return {"P-256": "ES256", "P-384": "ES384"}.get(key.curve_name, "ES384")


def _signing_key(settings: Settings) -> RSAKey | ECKey:
    """The private key of ``upstream_oauth_private_key_file``: PEM, or a JWK in JSON."""
    path = settings.upstream_oauth_private_key_file
    assert path is not None
    name = (
        "FHIR_GATEWAY_UPSTREAM_OAUTH_PRIVATE_KEY_FILE (TOML key 'upstream_oauth_private_key_file')"
    )
    try:
        data = path.read_bytes()
        if data.lstrip().startswith(b"{"):
            key = JWKRegistry.import_key(orjson.loads(data))
        else:
            try:
                key = RSAKey.import_key(data)
            except JoseError:
                key = ECKey.import_key(data)
    except (OSError, ValueError, TypeError, JoseError) as exc:
        raise SettingsError(f"{name}: not a usable private key ({type(exc).__name__})") from None
    if not isinstance(key, RSAKey | ECKey) or not key.is_private:
        raise SettingsError(f"{name}: an RSA or EC private key is needed")
    return key


def credentials_for(settings: Settings, session: aiohttp.ClientSession) -> Credentials:
    """The credentials the settings configure (``upstream_auth``)."""
    if settings.upstream_auth == "bearer" and settings.upstream_bearer_token:
        token = settings.upstream_bearer_token.get_secret_value()
        return StaticCredentials({"Authorization": f"Bearer {token}"})
    if settings.upstream_auth == "basic" and settings.upstream_password:
        password = settings.upstream_password.get_secret_value()
        basic = basic_authorization(settings.upstream_username or "", password)
        return StaticCredentials({"Authorization": basic})
    if settings.upstream_auth == "client_credentials":
        assert settings.upstream_oauth_token_url and settings.upstream_oauth_client_id
        secret = settings.upstream_oauth_client_secret
        key_file = settings.upstream_oauth_private_key_file
        return ClientCredentials(
            session,
            token_url=settings.upstream_oauth_token_url,
            client_id=settings.upstream_oauth_client_id,
            client_secret=secret.get_secret_value() if secret else None,
            signing_key=_signing_key(settings) if key_file else None,
            key_id=settings.upstream_oauth_key_id,
            scope=settings.upstream_oauth_scope,
        )
    return StaticCredentials({})
