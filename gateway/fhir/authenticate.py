"""Step 1 of the pipeline: the bearer access token → a frozen :class:`AccessContext` (SMART 2.2
resource server; RFC 6750, RFC 9068; SMART.md S-20, S-26, S-30).

A token is accepted when it is a JWS signed with RS256/RS384/ES256/ES384 by a key of its issuer
(this gateway's key ring, or a configured external issuer's JWKS), its ``aud`` is the gateway's FHIR
base, it has not expired, and it is not revoked. Everything else is 401 with
``WWW-Authenticate: Bearer`` (S-26). ``HS*`` and ``none`` never verify: the key sets hold public
keys only and the algorithm list excludes them.

Revocation is checked separately (:meth:`Authenticator.is_revoked`: the revocation counter read
afresh, the list itself only when the counter moved, :mod:`gateway.fhir.freshness`) so the pipeline
can run it concurrently with the upstream fetch of a read; a write waits for it. Signature checks
are cached per token string (a token's claims never change); expiry is checked on every request.
A cached external token is checked again whenever its issuer's JWKS has been fetched anew since
(the JWKS is kept for its ``Cache-Control`` lifetime, capped by ``client_jwks_max_cache_seconds``):
a key the issuer withdrew from its JWKS stops its tokens then, not at their expiry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pymongo.errors import PyMongoError

from consent.references import is_id, patient_id
from gateway.fhir.context import AccessContext
from gateway.fhir.freshness import ChangeEpochs, EpochCache
from gateway.settings import ExternalIssuer
from gateway.web.errors import BadRequest, ServiceUnavailable, Unauthorized
from smart_auth.jwks import JwksCache, JwksFetcher, JwksUnavailable
from smart_auth.revocations import RevocationList
from smart_auth.scopes import ScopeSet

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]
_LEEWAY_SECONDS = 30
_CACHE_SIZE = 10_000

JwksSource = Callable[[], Awaitable[Mapping[str, Any]]]


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The token from ``Authorization: Bearer``; tokens in URLs are refused (S-33)."""
    if "access_token" in query:
        raise BadRequest("access tokens are not accepted in the URL; use the Authorization header")
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if not value:
        raise Unauthorized("this FHIR API needs a bearer access token", error="")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <access token>'")
    return token.strip()


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only to choose the issuer and key."""
    try:
        compact = jws.extract_compact(token.encode())
        header = dict(compact.headers())
        claims = orjson.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError):
        raise Unauthorized("the access token is not a well-formed JWT") from None
    if not isinstance(claims, dict):
        raise Unauthorized("the access token is not a well-formed JWT")
    return header, claims


def _string_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _bare_patient_id(value: object) -> str | None:
    """A ``patient`` or ``acts_for`` claim: ``x``, ``Patient/x`` or an absolute URL to it."""
    patient = patient_id(value, bare=True) if isinstance(value, str) else None
    return patient if is_id(patient) else None


class Authenticator:
    """Validates access tokens for the FHIR API."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        own_jwks: JwksSource,
        revocations: RevocationList,
        epochs: ChangeEpochs,
        external: Sequence[ExternalIssuer] = (),
        fetch_jwks: JwksFetcher | None = None,
        jwks_refresh_min_seconds: float = 30.0,
        jwks_max_cache_seconds: float = 3600.0,
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._own_jwks = own_jwks
        self._external = {item.issuer: item.jwks_uri for item in external}
        # An issuer's JWKS without Cache-Control is kept as long as the cap allows.
        self._jwks = JwksCache(
            fetch_jwks,
            max_cache_seconds=jwks_max_cache_seconds,
            default_cache_seconds=jwks_max_cache_seconds,
            min_refetch_seconds=jwks_refresh_min_seconds,
        )
        self._key_sets: dict[int, tuple[Mapping[str, Any], KeySet]] = {}
        # A verified token's context and, for an external issuer's, the JWKS it was verified with.
        self._verified: dict[str, tuple[AccessContext, Mapping[str, Any] | None]] = {}
        self._epochs = epochs
        self._revoked: EpochCache[str, bool] = EpochCache(revocations.revoked_among)

    async def authenticate(
        self, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> AccessContext:
        """Verify the request's bearer token (signature, issuer, audience, expiry)."""
        token = bearer_token(headers, query)
        cached = self._verified.get(token)
        if (
            cached is not None
            and cached[1] is not None  # an external token: the key set it was verified with?
            and await self._external_jwks(cached[0].issuer) is not cached[1]
        ):
            cached = None  # fetched anew since: verify again
        if cached is None:
            cached = await self._verify(token)
            if len(self._verified) >= _CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = cached
        context = cached[0]
        if context.expires_at.timestamp() + _LEEWAY_SECONDS < time.time():
            raise Unauthorized("the access token has expired")
        return context

    async def is_revoked(self, context: AccessContext) -> bool:
        """Has this token or its grant been revoked (S-25)? Answered from what was read under the
        current revocation counter, which is read afresh for every request
        (:mod:`gateway.fhir.freshness`). When it cannot be read, the request is refused (503)."""
        if context.external:
            return False  # an external issuer revokes through its own introspection
        try:
            epoch = (await self._epochs.current()).revocations
            keys = RevocationList.keys(context.jti, context.grant_id)
            found = await self._revoked.get_many(keys, epoch, False)
        except PyMongoError:
            log.warning("the revocation list cannot be read")
            raise ServiceUnavailable("access cannot be checked right now; try again") from None
        return any(found.values())

    async def _verify(self, token: str) -> tuple[AccessContext, Mapping[str, Any] | None]:
        """The token's context and, for an external issuer's token, the JWKS that verified it."""
        header, unverified = _unverified(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized(f"tokens signed with '{alg}' are not accepted")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or (issuer != self._issuer and issuer not in self._external):
            raise Unauthorized("the access token comes from an issuer this server does not trust")
        kid = header.get("kid")
        external = issuer != self._issuer
        if external:
            jwks = await self._external_jwks(issuer, kid if isinstance(kid, str) else None)
        else:
            jwks = await self._own_jwks()
        try:
            claims = jwt.decode(token, self._key_set(jwks), algorithms=ALGORITHMS).claims
        except (JoseError, ValueError) as exc:
            raise Unauthorized(
                f"the access token's signature does not verify ({exc.__class__.__name__})"
            ) from None
        if not external and header.get("typ") not in ("at+jwt", "application/at+jwt"):
            raise Unauthorized("this server's access tokens are 'at+jwt' (RFC 9068)")
        return self._context(claims, issuer, external), jwks if external else None

    async def _external_jwks(self, issuer: str, kid: str | None = None) -> Mapping[str, Any]:
        """An external issuer's JWKS, as cached (fetched anew once its lifetime is over, or for
        a ``kid`` it does not hold)."""
        try:
            return await self._jwks.get(self._external[issuer], kid=kid)
        except JwksUnavailable as exc:
            log.warning("cannot load an issuer's JWKS: %s", exc)
            raise Unauthorized("the issuer's signing keys are not available") from None

    def _key_set(self, jwks: Mapping[str, Any]) -> KeySet:
        """The imported keys of a JWKS document (kept per document)."""
        known = self._key_sets.get(id(jwks))
        if known is not None and known[0] is jwks:
            return known[1]
        try:
            keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
        except (JoseError, ValueError):
            raise Unauthorized("the issuer's signing keys are not usable") from None
        if len(self._key_sets) > 64:
            self._key_sets.clear()
        self._key_sets[id(jwks)] = (jwks, keys)  # holding it keeps the id unique
        return keys

    def _context(self, claims: Mapping[str, Any], issuer: str, external: bool) -> AccessContext:
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self._audience not in audiences:
            raise Unauthorized("the access token is not meant for this FHIR server (aud)")
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp + _LEEWAY_SECONDS < now:
            raise Unauthorized("the access token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf - _LEEWAY_SECONDS > now:
            raise Unauthorized("the access token is not valid yet")
        jti, subject = claims.get("jti"), claims.get("sub")
        client_id = claims.get("client_id") or claims.get("azp")
        if not all(isinstance(v, str) and v for v in (jti, subject, client_id)):
            raise Unauthorized("the access token lacks jti, sub or client_id")
        acts_for = frozenset(
            p for p in (_bare_patient_id(v) for v in _string_list(claims.get("acts_for"))) if p
        )
        fhir_user = claims.get("fhirUser")
        if isinstance(fhir_user, str) and fhir_user.startswith(("http://", "https://")):
            fhir_user = "/".join(fhir_user.rstrip("/").split("/")[-2:])
        grant_id = claims.get("grant_id")
        encounter = claims.get("encounter")
        return AccessContext(
            issuer=issuer,
            subject=str(subject),
            client_id=str(client_id),
            scopes=ScopeSet.parse(_string_list(claims.get("scope"))),
            jti=str(jti),
            expires_at=datetime.fromtimestamp(float(exp), UTC),
            grant_id=grant_id if isinstance(grant_id, str) else None,
            patient=_bare_patient_id(claims.get("patient")),
            encounter=encounter if isinstance(encounter, str) else None,
            fhir_user=fhir_user if isinstance(fhir_user, str) else None,
            acts_for=acts_for,
            purposes=_string_list(claims.get("purpose_of_use")),
            external=external,
        )
