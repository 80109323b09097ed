"""CORS on the FHIR API (S-07): only from the origins the calling app registered; metadata from
any origin; preflights answered for registered origins only."""

from __future__ import annotations

import aiohttp
import pytest

from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway
from tests.support.tokens import minted_token, services

pytestmark = pytest.mark.e2e

APP_ORIGIN = "https://diary.example.org"
OTHER_ORIGIN = "https://elsewhere.example.org"


async def _register(gateway: RunningGateway, client_id: str, origin: str) -> None:
    await services(gateway).clients.add(
        new_client(
            client_id=client_id,
            name=client_id,
            client_type=ClientType.ASYMMETRIC,
            scope="patient/*.rs",
            purposes=("PATRQT",),
            origins=(origin,),
            trusted=True,
            jwks={"keys": []},
        )
    )


async def test_s07_preflight_only_for_registered_origins(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await _register(gateway, "diary-app", APP_ORIGIN)
    headers = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
    async with http.options(f"{gateway.fhir}/Observation", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    headers["Origin"] = OTHER_ORIGIN
    async with http.options(f"{gateway.fhir}/Observation", headers=headers) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_s07_responses_carry_cors_only_for_the_tokens_own_app(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await _register(gateway, "diary-app", APP_ORIGIN)
    await _register(gateway, "other-app", OTHER_ORIGIN)
    url = f"{gateway.fhir}/Patient/pat-amelia-rossi"
    own = await minted_token(gateway, client_id="diary-app")
    async with http.get(
        url, headers={"Authorization": f"Bearer {own}", "Origin": APP_ORIGIN}
    ) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    # Another app's registered origin may not read this app's responses.
    async with http.get(
        url, headers={"Authorization": f"Bearer {own}", "Origin": OTHER_ORIGIN}
    ) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
    # An error before any token is known is readable from a registered origin (so the app sees 401).
    async with http.get(url, headers={"Origin": APP_ORIGIN}) as response:
        assert response.status == 401
        assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    async with http.get(
        f"{gateway.fhir}/metadata", headers={"Origin": "https://anyone.example"}
    ) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://anyone.example")
