"""Step 1 of the pipeline, unit by unit (SMART.md S-20, S-26, S-30, S-33; RFC 6750, RFC 9068): the
bearer token becomes an access context, or a 401/400 that says why. Keys are made here; the
gateway's own key set and an external issuer's JWKS are handed in as functions, so no server runs
(revocation, which reads MongoDB, is tested end to end)."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.fhir.authenticate import Authenticator, bearer_token
from gateway.settings import ExternalIssuer
from gateway.web.errors import BadRequest, Unauthorized
from smart_auth.jwks import FetchedJwks

ISSUER = "https://gw.example"
FHIR = f"{ISSUER}/fhir"
EXTERNAL = "https://idp.example"
OWN = RSAKey.generate_key(2048, parameters={"kid": "own-1", "alg": "RS256"})
THEIRS = ECKey.generate_key("P-256", parameters={"kid": "idp-1", "alg": "ES256"})


def _public(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": FHIR,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "patient/*.rs openid",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "patient": "pat-1",
        "acts_for": ["pat-1", "Patient/pat-2", f"{FHIR}/Patient/pat-3"],
        "fhirUser": f"{FHIR}/Patient/pat-1",
        "purpose_of_use": ["PATRQT"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(
    key: RSAKey | ECKey = OWN, typ: str = "at+jwt", alg: str = "RS256", **claims: Any
) -> str:
    header = {"typ": typ, "alg": alg, "kid": key.kid}
    return jwt.encode(header, _claims(**claims), key, algorithms=[alg])


class Sources:
    """The two key sources, counting how often each is read."""

    def __init__(self) -> None:
        self.own_reads = 0
        self.fetches: list[str] = []
        self.external = _public(THEIRS)
        self.max_age = 600

    async def own(self) -> dict[str, Any]:
        self.own_reads += 1
        return _public(OWN)

    async def fetch(self, url: str) -> FetchedJwks:
        self.fetches.append(url)
        return FetchedJwks(self.external, self.max_age)


def _authenticator(sources: Sources) -> Authenticator:
    return Authenticator(
        issuer=ISSUER,
        audience=FHIR,
        own_jwks=sources.own,
        revocations=SimpleNamespace(revoked_among=None),  # type: ignore[arg-type]
        epochs=None,  # type: ignore[arg-type]  # revocation is not this unit's
        external=[ExternalIssuer(issuer=EXTERNAL, jwks_uri=f"{EXTERNAL}/jwks")],
        fetch_jwks=sources.fetch,
        jwks_refresh_min_seconds=0,
    )


async def _context(token: str, sources: Sources | None = None) -> Any:
    authenticator = _authenticator(sources or Sources())
    return await authenticator.authenticate({"Authorization": f"Bearer {token}"}, {})


def test_s33_bearer_token_only_in_the_header() -> None:
    with pytest.raises(BadRequest):
        bearer_token({}, {"access_token": "x"})
    for header in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer a b"}):
        with pytest.raises(Unauthorized):
            bearer_token(header, {})
    assert bearer_token({"Authorization": "bearer  abc "}, {}) == "abc"


async def test_s20_an_own_token_becomes_an_access_context() -> None:
    context = await _context(_token())
    assert (context.subject, context.client_id, context.patient) == ("user-1", "app-1", "pat-1")
    assert context.acts_for == {"pat-1", "pat-2", "pat-3"}  # every form of a patient reference
    assert context.patients == {"pat-1", "pat-2", "pat-3"}
    assert context.fhir_user == "Patient/pat-1"
    assert context.purposes == ("PATRQT",) and not context.external


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "https://other.example/fhir"},
        {"exp": int(time.time()) - 3600},
        {"iss": "https://unknown.example"},
        {"jti": None},
        {"client_id": None},
    ],
    ids=["wrong-aud", "expired", "unknown-issuer", "no-jti", "no-client"],
)
async def test_s26_tokens_that_do_not_hold_are_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized):
        await _context(_token(**claims))


async def test_s26_own_tokens_are_at_jwt_and_signed_by_the_key_ring() -> None:
    with pytest.raises(Unauthorized):
        await _context(_token(typ="JWT"))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "own-1"})  # the kid, not the key
    with pytest.raises(Unauthorized):
        await _context(_token(key=stranger))
    header = '{"alg":"none","typ":"at+jwt"}'
    unsigned = f"{_b64(header)}.{_b64('{}')}."
    with pytest.raises(Unauthorized):
        await _context(unsigned)


async def test_s30_an_external_issuers_token_is_checked_against_its_jwks() -> None:
    sources = Sources()
    token = _token(key=THEIRS, alg="ES256", iss=EXTERNAL, typ="JWT")
    context = await _context(token, sources)
    assert context.external and context.issuer == EXTERNAL
    assert sources.fetches == [f"{EXTERNAL}/jwks"]
    with pytest.raises(Unauthorized):  # signed by the gateway's key but naming the IdP
        await _context(_token(iss=EXTERNAL), sources)


async def test_s20_a_token_is_verified_once_then_served_from_memory() -> None:
    sources = Sources()
    authenticator = _authenticator(sources)
    token = _token()
    for _ in range(5):
        await authenticator.authenticate({"Authorization": f"Bearer {token}"}, {})
    assert sources.own_reads == 1


async def test_s30_a_key_withdrawn_from_an_external_jwks_stops_its_cached_tokens() -> None:
    """A verified token is kept in memory; an external one is checked again when the issuer's
    JWKS has been fetched anew (here it may not be cached at all: every request refetches)."""
    sources = Sources()
    sources.max_age = 0
    authenticator = _authenticator(sources)
    token = _token(key=THEIRS, alg="ES256", iss=EXTERNAL, typ="JWT")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await authenticator.authenticate(headers, {})).external
    assert (await authenticator.authenticate(headers, {})).external  # same keys: still good
    sources.external = _public(ECKey.generate_key("P-256", parameters={"kid": "idp-2"}))
    with pytest.raises(Unauthorized):
        await authenticator.authenticate(headers, {})


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
