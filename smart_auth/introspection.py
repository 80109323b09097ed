"""Token introspection (RFC 7662; SMART 2.2 "Token Introspection"; S-24).

The caller authenticates as a client (secret, ``private_key_jwt``) or with a bearer access token of
ours. An active token is described with ``active``, ``scope``, ``client_id``, ``exp``, ``iat``,
``sub``, ``iss``, the context claims (``patient``, ``encounter``, ``fhirUser``) and ``token_type``;
anything else — unknown, expired, revoked, malformed, or a token of another client — is exactly
``{"active": false}``. A client registered with ``introspect_all_tokens`` (a resource server that
checks the tokens of other apps, RFC 7662 2.2) may introspect any token, when it authenticates
with its own credentials (secret or ``private_key_jwt``; not by showing an access token).

Access tokens are checked like the FHIR side checks them (signature, issuer, audience, expiry, the
shared revocation list); refresh tokens against their store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc7662 import IntrospectionEndpoint

_CONTEXT_CLAIMS = ("patient", "encounter", "fhirUser")
BEARER_TOKEN = "bearer_token"  # noqa: S105 - the name of a client authentication method


@dataclass(frozen=True)
class TokenInfo:
    """What introspection knows about one presented token."""

    client_id: str
    active: bool
    claims: dict[str, Any] = field(default_factory=dict)
    token_type: str = "Bearer"  # noqa: S105 - a token type name, not a secret

    def is_expired(self) -> bool:
        return not self.active

    def is_revoked(self) -> bool:
        return not self.active

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)


TokenLookup = Callable[[str, str | None], TokenInfo | None]


class SmartIntrospection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        BEARER_TOKEN,
    ]

    def __init__(self, server: Any, lookup: TokenLookup) -> None:
        super().__init__(server)
        self._lookup = lookup

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenInfo | None:
        if not isinstance(token_string, str) or not token_string:
            return None
        return self._lookup(token_string, token_type_hint)

    def check_permission(self, token: TokenInfo, client: Any, request: Any) -> bool:
        if token.check_client(client):
            return True
        return bool(
            getattr(client, "introspect_all_tokens", False) and request.auth_method != BEARER_TOKEN
        )

    def introspect_token(self, token: TokenInfo) -> dict[str, Any]:
        claims = token.claims
        payload: dict[str, Any] = {
            "active": True,
            "client_id": token.client_id,
            "token_type": token.token_type,
        }
        for name in ("scope", "exp", "iat", "sub", "iss", *_CONTEXT_CLAIMS):
            if claims.get(name) is not None:
                payload[name] = claims[name]
        return payload


def bearer_client_auth(
    lookup: TokenLookup,
) -> Callable[[Callable[[str], Any], Any], Any]:
    """An Authlib client-authentication method for the introspection endpoint: the caller shows
    an active access token of ours and is taken to be that token's client (S-24)."""

    def authenticate(query_client: Callable[[str], Any], request: Any) -> Any:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        info = lookup(header[7:].strip(), "access_token")
        if info is None or not info.active:
            return None
        return query_client(info.client_id)

    return authenticate
