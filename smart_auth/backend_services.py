"""SMART Backend Services (SMART 2.2 section "Backend Services"; RFC 7523 2.2 and 3; S-21, S-22):
``private_key_jwt`` client authentication and the ``client_credentials`` grant.

Authlib's :class:`JWTBearerClientAssertion` reads the assertion; the checks are SMART's, stricter
than its defaults: only RS384 and ES384 (joserfc's default set would refuse them and allow others),
the key chosen by ``kid``/``jku`` from the registered keys (:mod:`smart_auth.client_keys`), ``aud``
naming this server and nothing else, ``exp`` at most five minutes ahead, and a ``jti`` seen once per
client within the assertion's lifetime (stored in MongoDB with a TTL index). Every failure is
``401 invalid_client``.

S-22 says ``aud`` is the token URL; RFC 7523 3 asks only that it identify the authorization server,
and its update recommends the issuer. Common client libraries put the issuer, the token URL or the
URL of the endpoint they call there (Authlib's client does the last at the introspection
endpoint), so each of the three is accepted; anything else in ``aud`` is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7523.client import ASSERTION_TYPE
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from smart_auth.client_keys import ALGORITHMS
from smart_auth.clients import Client, ClientType, narrow_scope
from smart_auth.scopes import Context, ScopeError

JTI_COLLECTION = "assertion_jtis"
MAX_ASSERTION_LIFETIME = 300
_SKEW = 10


def unauthorized(description: str) -> InvalidClientError:
    return InvalidClientError(description=description, status_code=401)


class JtiStore:
    """The ``jti`` replay store (S-22)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._seen = db[JTI_COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._seen.create_index("expires_at", expireAfterSeconds=0)

    async def first_use(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        try:
            await self._seen.insert_one(
                {"_id": f"{client_id}\x00{jti}", "expires_at": expires_at + timedelta(seconds=60)}
            )
        except DuplicateKeyError:
            return False
        return True


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` with SMART's rules. ``resolve_key`` and ``first_use`` are blocking
    callables (the server runs in a worker thread and they reach MongoDB through its bridge).

    The assertion's ``aud`` names this server: its issuer, its token URL, or the URL of the
    endpoint the assertion is presented to (RFC 7523 3 and its update allow each; SMART's own
    clients use the token URL, Authlib's client puts the introspection URL in an assertion it sends
    there). Every value of ``aud`` must be one of those."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(
        self,
        issuer: str,
        token_url: str,
        resolve_key: Callable[[Client, dict[str, Any]], Key],
        first_use: Callable[[str, str, datetime], bool],
    ) -> None:
        super().__init__(validate_jti=True, leeway=_SKEW)
        self._issuer = issuer
        self._token_url = token_url
        self._resolve_key = resolve_key
        self._first_use = first_use

    def get_audiences(self) -> list[str]:
        """The audiences valid at every endpoint (:meth:`_verify` adds the endpoint called)."""
        return [self._issuer, self._token_url]

    def __call__(self, query_client: Callable[[str], Any], request: Any) -> Client | None:
        data = request.form
        assertion = data.get("client_assertion")
        if data.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return None
        headers, claims = self.extract_assertion(assertion)
        algorithm = headers.get("alg")
        if algorithm not in ALGORITHMS:
            raise unauthorized("client assertions must be signed with RS384 or ES384")
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise unauthorized("the assertion's iss and sub must both be the client_id")
        if data.get("client_id") not in (None, client_id):
            raise unauthorized("client_id does not match the assertion")
        client = query_client(client_id)
        if not isinstance(client, Client) or client.client_type is not ClientType.ASYMMETRIC:
            raise unauthorized("unknown client, or not a confidential-asymmetric one")
        key = self._resolve_key(client, headers)
        try:
            token = jwt.decode(assertion, key, algorithms=[algorithm])
        except JoseError:
            raise unauthorized("the assertion's signature does not verify") from None
        request.client = client
        endpoint = urlsplit(request.uri)._replace(query="", fragment="").geturl()
        self._verify(token.claims, (*self.get_audiences(), endpoint))
        return client

    def _verify(self, claims: dict[str, Any], audiences: tuple[str, ...]) -> None:
        aud = claims.get("aud")
        if not aud or any(
            value not in audiences for value in (aud if isinstance(aud, list) else [aud])
        ):
            raise unauthorized(
                "the assertion's aud must be this server's issuer, its token URL or the URL of "
                "the endpoint called"
            )
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway, exp={"essential": True}, jti={"essential": True}
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise unauthorized(f"invalid assertion: {exc.description or exc.error}") from None
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp > time.time() + MAX_ASSERTION_LIFETIME + _SKEW:
            raise unauthorized("the assertion's exp is more than five minutes ahead")
        if not self.validate_jti(claims, claims["jti"]):
            raise unauthorized("the assertion's jti was used before")

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            return False
        expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        return self._first_use(str(claims["sub"]), jti, expires)


class BackendServicesGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """``client_credentials`` for registered backend clients only. The granted scope is the
    ``system/`` part of what the registration allows of the request (``system/*.rs`` under a
    registered ``system/Patient.rs system/Observation.rs`` grants those two); the token response's
    ``scope`` says what was granted, and a request of which nothing is left is refused (S-21)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_requested_scope(self) -> None:
        scope = self.request.payload.scope
        if not scope:
            raise InvalidScopeError("scope is required")
        client: Client = self.request.client
        try:
            allowed = narrow_scope(scope, client.scopes) or ""
        except ScopeError as exc:
            raise InvalidScopeError(str(exc)) from None
        granted = [s for s in allowed.split() if s.startswith(f"{Context.SYSTEM}/")]
        if not granted:
            raise InvalidScopeError(
                "none of the requested scopes is a system/ scope this client is registered for"
            )
        self.request.scope = " ".join(granted)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """Authlib's, with the granted scope instead of the requested one."""
        token: dict[str, Any] = self.generate_token(
            scope=self.request.scope, include_refresh_token=False
        )
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
