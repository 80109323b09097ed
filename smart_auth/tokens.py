"""Access tokens and id_tokens (RFC 9068 JWT profile for access tokens; SMART 2.2 S-16, S-18, S-20;
OpenID Connect Core 2).

Access token: a JWT with header ``{"typ": "at+jwt", "alg": "RS256", "kid"}`` and the claims ``iss``
(the gateway's public base URL), ``aud`` (its FHIR base URL), ``sub`` (the user's stable id, or the
client id for backend services), ``client_id``, ``scope``, ``jti``, ``iat``, ``exp``, ``grant_id``,
``purpose_of_use`` and, when there is one, ``patient``, ``encounter``, ``fhirUser`` and (patient
users) ``acts_for``. ``need_patient_banner`` and ``smart_style_url`` travel only in the token
response. The id_token (with ``openid``) carries ``iss``, ``sub``, ``aud`` = the client, ``exp``,
``iat``, ``fhirUser`` and the request's ``nonce``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_auth.grants import Grant
from smart_auth.keys import ALGORITHM, SigningKey

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - the RFC 9068 media type, not a secret


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    issuer: str
    audience: str
    access_lifetime: int = 3600
    backend_lifetime: int = 300


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    claims: dict[str, Any]

    @property
    def expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])


def _now() -> int:
    return int(datetime.now(UTC).timestamp())


def issue_access_token(
    key: SigningKey,
    policy: TokenPolicy,
    *,
    client_id: str,
    scope: str,
    grant: Grant | None,
    purposes: tuple[str, ...],
) -> IssuedAccessToken:
    """Mint an access token; ``grant`` is ``None`` for backend services (client_credentials)."""
    now = _now()
    if grant is None:
        lifetime = policy.backend_lifetime
        claims: dict[str, Any] = {"sub": client_id, "grant_id": uuid.uuid4().hex}
    else:
        lifetime = min(policy.access_lifetime, int(grant.expires_at.timestamp()) - now)
        claims = {"sub": grant.user_id or client_id, "grant_id": grant.grant_id}
        if grant.patient:
            claims["patient"] = grant.patient
        if grant.encounter:
            claims["encounter"] = grant.encounter
        if grant.fhir_user:
            claims["fhirUser"] = grant.fhir_user
        if grant.fhir_user and grant.fhir_user.startswith("Patient/"):
            claims["acts_for"] = list(grant.acts_for)
    claims |= {
        "iss": policy.issuer,
        "aud": policy.audience,
        "client_id": client_id,
        "scope": scope,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + max(lifetime, 1),
        "purpose_of_use": list(purposes),
    }
    return IssuedAccessToken(key.sign(claims, typ=ACCESS_TOKEN_TYPE), claims)


def issue_id_token(key: SigningKey, policy: TokenPolicy, *, client_id: str, grant: Grant) -> str:
    now = _now()
    claims: dict[str, Any] = {
        "iss": policy.issuer,
        "sub": grant.user_id or "",
        "aud": client_id,
        "iat": now,
        "exp": now + policy.access_lifetime,
    }
    if grant.fhir_user:
        claims["fhirUser"] = f"{policy.audience}/{grant.fhir_user}"
    if grant.nonce:
        claims["nonce"] = grant.nonce
    return key.sign(claims)


class InvalidAccessToken(ValueError):
    """Not one of our valid access tokens (bad signature, wrong issuer or audience, expired)."""


def verify_access_token(token: str, jwks: dict[str, Any], policy: TokenPolicy) -> dict[str, Any]:
    """The claims of one of our access tokens, checked for signature, ``typ``, ``iss``, ``aud`` and
    ``exp`` (revocation is checked separately, against the revocation list)."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
        raise InvalidAccessToken("not a JWT")
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        decoded = jwt.decode(token, keys, algorithms=[ALGORITHM])
        if decoded.header.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidAccessToken("not an access token")
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": policy.issuer},
            aud={"essential": True, "value": policy.audience},
            exp={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        if isinstance(exc, InvalidAccessToken):
            raise
        raise InvalidAccessToken(type(exc).__name__) from None
    return dict(decoded.claims)
