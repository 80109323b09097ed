"""The FHIR API as a SMART resource server: every status of S-26 with an OperationOutcome,
revocation on the very next request (S-25), batches entry by entry (S-29), and tokens of a
configured external issuer (S-30)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.appkeys import AUTH
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import TRUSTED_APP, SessionFor, register_client

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"
AMELIA_OBSERVATION_SEARCH = f"Observation?patient=Patient/{AMELIA}&_count=1"


def _claims(gateway: RunningGateway, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": gateway.base,
        "aud": gateway.fhir,
        "sub": "user-amelia",
        "client_id": TRUSTED_APP,
        "scope": "patient/*.rs",
        "patient": AMELIA,
        "acts_for": [AMELIA],
        "jti": uuid.uuid4().hex,
        "grant_id": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def _signed(gateway: RunningGateway, typ: str = "at+jwt", **overrides: Any) -> str:
    """A token signed by the gateway's own current key, with chosen claims (a trusted app: these
    tests are about tokens and scopes, not consent)."""
    await register_client(gateway, TRUSTED_APP, trusted=True)
    key = await gateway.server.app[AUTH].keys.signing_key()
    return key.sign(_claims(gateway, **overrides), typ=typ)


async def _get(
    http: aiohttp.ClientSession, url: str, token: str | None = None, **headers: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), orjson.loads(await response.read())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_s26_a_valid_token_reads(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    status, _, body = await _get(
        http, f"{gateway.fhir}/{AMELIA_OBSERVATION_SEARCH}", await _signed(gateway)
    )
    assert status == 200 and body["resourceType"] == "Bundle" and body["entry"]


async def test_s26_no_token_is_401_with_a_bare_challenge(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await _get(http, f"{gateway.fhir}/Patient/{AMELIA}")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="fhir"'
    assert body["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c", "Bearer x y"],
)
async def test_s26_a_malformed_token_is_401(
    gateway: RunningGateway, http: aiohttp.ClientSession, authorization: str
) -> None:
    status, headers, body = await _get(
        http, f"{gateway.fhir}/Patient/{AMELIA}", Authorization=authorization
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body["resourceType"] == "OperationOutcome"


async def test_s33_a_token_in_the_url_is_refused(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    token = await _signed(gateway)
    status, _, body = await _get(http, f"{gateway.fhir}/Patient/{AMELIA}?access_token={token}")
    assert status == 400 and body["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}),
        ("not yet valid", {"nbf": int(time.time()) + 3600}),
        ("wrong audience", {"aud": "https://other-fhir.example/fhir"}),
        ("wrong issuer", {"iss": "https://unknown-issuer.example"}),
        ("no jti", {"jti": None}),
        ("no client_id", {"client_id": None}),
    ],
)
async def test_s26_invalid_claims_are_401(
    gateway: RunningGateway, http: aiohttp.ClientSession, case: str, overrides: dict[str, Any]
) -> None:
    token = await _signed(gateway, **overrides)
    status, headers, body = await _get(http, f"{gateway.fhir}/Patient/{AMELIA}", token)
    assert status == 401, case
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["issue"][0]["code"] == "login"


async def test_s20_a_token_that_is_not_an_access_token_is_401(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """An id_token-shaped JWT (typ JWT) from our own key is not an access token (RFC 9068)."""
    status, _, _ = await _get(
        http, f"{gateway.fhir}/Patient/{AMELIA}", await _signed(gateway, typ="JWT")
    )
    assert status == 401


async def test_s26_a_bad_signature_is_401(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """Signed by another key that claims our key's kid."""
    ours = await gateway.server.app[AUTH].keys.signing_key()
    forged_key = RSAKey.generate_key(2048)
    header = {"alg": "RS256", "typ": "at+jwt", "kid": ours.kid}
    forged = jwt.encode(header, _claims(gateway), forged_key, algorithms=["RS256"])
    status, _, _ = await _get(http, f"{gateway.fhir}/Patient/{AMELIA}", forged)
    assert status == 401


async def test_s26_alg_none_and_hs256_are_401(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    claims = _b64(orjson.dumps(_claims(gateway)))
    unsigned = f"{_b64(orjson.dumps({'alg': 'none', 'typ': 'at+jwt'}))}.{claims}."
    status, _, _ = await _get(http, f"{gateway.fhir}/Patient/{AMELIA}", unsigned)
    assert status == 401
    # HS256 keyed with our public key (the classic algorithm-confusion attack).
    ours = await gateway.server.app[AUTH].keys.signing_key()
    public_pem = ours.key.as_pem(private=False)
    import hashlib
    import hmac

    header = _b64(orjson.dumps({"alg": "HS256", "typ": "at+jwt", "kid": ours.kid}))
    signature = _b64(hmac.new(public_pem, f"{header}.{claims}".encode(), hashlib.sha256).digest())
    status, _, _ = await _get(
        http, f"{gateway.fhir}/Patient/{AMELIA}", f"{header}.{claims}.{signature}"
    )
    assert status == 401


async def test_s26_a_valid_token_without_the_scope_is_403(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    token = await _signed(gateway, scope="patient/Observation.rs")
    status, _, body = await _get(http, f"{gateway.fhir}/Condition?patient=Patient/{AMELIA}", token)
    assert status == 403
    assert body["issue"][0]["code"] == "forbidden"
    status, _, _ = await _get(http, f"{gateway.fhir}/{AMELIA_OBSERVATION_SEARCH}", token)
    assert status == 200


async def test_s25_revocation_takes_effect_on_the_very_next_request(
    gateway: RunningGateway,
    start_gateway: StartGateway,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
) -> None:
    """Revoked through one instance's revocation list, refused by another instance at once.
    Both instances share the database and the public base URL, as behind a load balancer."""
    other = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        mongodb_database=gateway.settings.mongodb_database,
        public_base_url=gateway.base,
    )
    jti, grant = uuid.uuid4().hex, uuid.uuid4().hex
    token = await _signed(gateway, jti=jti, grant_id=grant)
    sibling = await _signed(gateway, grant_id=grant)
    url = f"/fhir/{AMELIA_OBSERVATION_SEARCH}"
    instances = [str(gateway.server.make_url("")), str(other.server.make_url(""))]
    for instance in instances:
        assert (await _get(http, instance + url, token))[0] == 200
    revocations = gateway.server.app[AUTH].revocations
    await revocations.revoke_token(jti, datetime.now(UTC) + timedelta(hours=1))
    for instance in instances:
        status, _, body = await _get(http, instance + url, token)
        assert status == 401 and "revoked" in body["issue"][0]["diagnostics"]
    assert (await _get(http, instances[1] + url, sibling))[0] == 200
    await revocations.revoke_grant(grant, datetime.now(UTC) + timedelta(hours=1))
    assert (await _get(http, instances[1] + url, sibling))[0] == 401


async def test_s29_a_batch_is_authorized_entry_by_entry(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    http = await session_for(scope="patient/Observation.rs")
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": AMELIA_OBSERVATION_SEARCH}},
            {"request": {"method": "GET", "url": f"Condition?patient=Patient/{AMELIA}"}},
            {"request": {"method": "GET", "url": "Observation?patient=Patient/pat-daniel-novak"}},
            {
                "request": {"method": "POST", "url": "Observation"},
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "note"},
                    "subject": {"reference": f"Patient/{AMELIA}"},
                },
            },
            {"request": {"method": "GET", "url": f"Patient/{AMELIA}"}},
        ],
    }
    async with http.post(
        gateway.fhir, data=orjson.dumps(batch), headers={"Content-Type": "application/fhir+json"}
    ) as response:
        assert response.status == 200
        result = orjson.loads(await response.read())
    assert result["type"] == "batch-response"
    statuses = [entry["response"]["status"][:3] for entry in result["entry"]]
    assert statuses == ["200", "403", "403", "403", "403"]
    first = result["entry"][0]["resource"]
    assert first["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{AMELIA}"
    for refused in result["entry"][1:]:
        assert refused["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert "resource" not in refused


# --- S-30: a configured external issuer ------------------------------------------------------


class ExternalIssuer:
    """A stand-in for a hospital's identity provider: it publishes a JWKS and signs tokens."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": "kc-1", "alg": "ES256"})
        self.published = [self.key]
        self.max_age = 300
        self.fetches = 0
        self.server: TestServer | None = None

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        body = {"keys": [key.as_dict(private=False) for key in self.published]}
        return web.json_response(body, headers={"Cache-Control": f"max-age={self.max_age}"})

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/realms/hospital"))

    def token(self, audience: str, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": [audience, "account"],
            "sub": "kc-user-1",
            "azp": "hospital-dashboard",
            "scope": "openid system/Patient.rs",
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 300,
            **overrides,
        }
        return jwt.encode({"alg": "ES256", "typ": "JWT", "kid": "kc-1"}, claims, self.key)


@pytest_asyncio.fixture
async def external() -> AsyncIterator[ExternalIssuer]:
    issuer = ExternalIssuer()
    app = web.Application()
    app.router.add_get("/realms/hospital/certs", issuer.jwks)
    issuer.server = TestServer(app)
    await issuer.server.start_server()
    yield issuer
    await issuer.server.close()


async def test_s30_an_external_issuers_token_is_accepted_and_an_unknown_issuer_refused(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    external: ExternalIssuer,
    http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        external_issuers=[{"issuer": external.issuer, "jwks_uri": f"{external.issuer}/certs"}],
    )
    url = f"{gw.fhir}/Patient/{AMELIA}"
    # Consent rules apply to external tokens as to ours: an app the gateway does not know is a
    # third party without the patient's consent; the hospital's registered (trusted) one reads.
    status, _, body = await _get(http, url, external.token(gw.fhir, azp="unknown-app"))
    assert status == 403 and "consent" in body["issue"][0]["diagnostics"]
    await register_client(gw, "hospital-dashboard", trusted=True)
    status, _, body = await _get(http, url, external.token(gw.fhir))
    assert status == 200 and body["id"] == AMELIA
    assert (await _get(http, url, external.token(gw.fhir)))[0] == 200
    assert external.fetches == 1  # the JWKS is cached for its Cache-Control lifetime
    # Same rules as our own tokens: the audience, and the scopes.
    assert (await _get(http, url, external.token("https://other.example/fhir")))[0] == 401
    status, _, _ = await _get(http, f"{gw.fhir}/Observation?_count=1", external.token(gw.fhir))
    assert status == 403
    # An issuer nobody configured, even with a key the gateway has seen.
    stranger = external.token(gw.fhir, iss="https://stranger.example/realms/x")
    assert (await _get(http, url, stranger))[0] == 401
    # Another key under the trusted issuer's name.
    impostor = ECKey.generate_key("P-256", parameters={"kid": "kc-1"})
    forged = jwt.encode(
        {"alg": "ES256", "typ": "JWT", "kid": "kc-1"},
        orjson.loads(base64.urlsafe_b64decode(external.token(gw.fhir).split(".")[1] + "==")),
        impostor,
    )
    assert (await _get(http, url, forged))[0] == 401


async def test_s30_a_key_withdrawn_from_an_issuers_jwks_stops_its_tokens_at_the_next_fetch(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    external: ExternalIssuer,
    http: aiohttp.ClientSession,
) -> None:
    """Emergency withdrawal: the issuer removes a key from its JWKS. A token signed with it and
    already verified (kept in memory) stops once the gateway fetches the JWKS again, after the
    JWKS's Cache-Control lifetime, not at the token's expiry."""
    external.max_age = 1
    gw = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        external_issuers=[{"issuer": external.issuer, "jwks_uri": f"{external.issuer}/certs"}],
    )
    await register_client(gw, "hospital-dashboard", trusted=True)
    url = f"{gw.fhir}/Patient/{AMELIA}"
    token = external.token(gw.fhir)
    assert (await _get(http, url, token))[0] == 200
    replacement = ECKey.generate_key("P-256", parameters={"kid": "kc-2", "alg": "ES256"})
    external.published = [replacement]
    await asyncio.sleep(1.2)
    status, _, body = await _get(http, url, token)
    assert status == 401, body
    assert (await _get(http, url, token))[0] == 401
