"""The EHR launch (S-13, S-16): a signed-in practitioner creates a launch context through the launch
API; the app's authorization request carries the opaque ``launch`` value, and the token response
carries the context with ``need_patient_banner`` and ``smart_style_url``."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.appkeys import AUTH
from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway
from tests.support.browser import Browser, Page, authorize_url, callback_params, pkce_pair
from tests.support.tokens import HANNAH, MARIA, ensure_user

pytestmark = pytest.mark.e2e

CLINICIAN_APP = "test-clinician-app"
SECRET = "s3cret-" + "x" * 40
REDIRECT = "https://clinician.example.org/callback"
STYLE = "https://ehr.example.org/smart-style.json"


async def _register(gateway: RunningGateway) -> None:
    await gateway.server.app[AUTH].clients.add(
        new_client(
            client_id=CLINICIAN_APP,
            name="Ward Rounds",
            client_type=ClientType.SYMMETRIC,
            redirect_uris=(REDIRECT,),
            scope="launch openid fhirUser user/*.rs patient/*.rs",
            purposes=("TREAT",),
            trusted=True,
            secret=SECRET,
            url="https://clinician.example.org",
        )
    )


async def _launch(browser: Browser, base: str, **body: Any) -> aiohttp.ClientResponse:
    async with browser.session.get(f"{base}/auth/session") as response:
        csrf = (await response.json())["csrf"]
    response = await browser.session.post(
        f"{base}/auth/launch", json=body, headers={"X-CSRF-Token": csrf}
    )
    await response.read()
    return response


async def _sign_in(browser: Browser, gateway: RunningGateway, user: Any) -> None:
    page = await browser.get(f"{gateway.base}/auth/login")
    assert isinstance(page, Page)
    page = await browser.login(page, user.username, user.password)
    assert isinstance(page, Page) and page.url.endswith("/auth/signed-in")


async def test_s13_s16_ehr_launch_with_banner_and_style(gateway: RunningGateway) -> None:
    await _register(gateway)
    await ensure_user(gateway, HANNAH)
    verifier, challenge = pkce_pair()
    async with Browser(gateway.base) as browser:
        await _sign_in(browser, gateway, HANNAH)
        response = await _launch(
            browser,
            gateway.base,
            patient="pat-daniel-novak",
            encounter="enc-daniel-1",
            need_patient_banner=False,
            smart_style_url=STYLE,
        )
        assert response.status == 201
        launch = (await response.json())["launch"]
        state = uuid.uuid4().hex
        page = await browser.get(
            authorize_url(
                gateway.base,
                response_type="code",
                client_id=CLINICIAN_APP,
                redirect_uri=REDIRECT,
                scope="launch openid fhirUser patient/*.rs user/Observation.rs",
                state=state,
                aud=gateway.fhir,
                launch=launch,
                code_challenge=challenge,
                code_challenge_method="S256",
            )
        )
        # the practitioner is signed in already: straight to the consent screen
        assert isinstance(page, Page) and page.url.startswith(f"{gateway.base}/auth/consent")
        assert "Ward Rounds" in page.text
        form = page.forms[0]
        location = await browser.submit(page, form, form.data(button=("decision", "approve")))
        assert isinstance(location, str)
        params = callback_params(location)
        assert params["state"] == state
        async with browser.session.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
            },
            headers={
                "Authorization": "Basic "
                + base64.b64encode(f"{CLINICIAN_APP}:{SECRET}".encode()).decode()
            },
        ) as token_response:
            body = await token_response.json()
    assert token_response.status == 200, body
    assert body["patient"] == "pat-daniel-novak" and body["encounter"] == "enc-daniel-1"
    assert body["need_patient_banner"] is False and body["smart_style_url"] == STYLE
    assert body["fhirContext"] == [{"reference": "Encounter/enc-daniel-1"}]
    assert "refresh_token" not in body  # neither offline_access nor online_access was asked
    keys = KeySet.import_key_set(await gateway.server.app[AUTH].keys.public_jwks())
    claims = jwt.decode(body["access_token"], keys, algorithms=["RS256"]).claims
    assert claims["patient"] == "pat-daniel-novak" and claims["encounter"] == "enc-daniel-1"
    assert claims["fhirUser"] == "Practitioner/prac-hannah-okafor"
    assert "need_patient_banner" not in claims and "smart_style_url" not in claims
    assert "acts_for" not in claims  # practitioners act through user/ scopes and consent


async def test_s13_launch_values_are_bound_to_their_creator_and_the_api_to_roles(
    gateway: RunningGateway,
) -> None:
    await _register(gateway)
    await ensure_user(gateway, HANNAH)
    await ensure_user(gateway, MARIA)
    async with Browser(gateway.base) as hannah:
        await _sign_in(hannah, gateway, HANNAH)
        response = await _launch(hannah, gateway.base, patient="pat-daniel-novak")
        launch = (await response.json())["launch"]
        no_csrf = await hannah.session.post(
            f"{gateway.base}/auth/launch", json={"patient": "pat-daniel-novak"}
        )
        assert no_csrf.status == 403
        bad = await _launch(hannah, gateway.base, patient={"$gt": ""})
        assert bad.status == 400  # P-13: typed fields only
    async with Browser(gateway.base) as maria:
        await _sign_in(maria, gateway, MARIA)
        refused = await _launch(maria, gateway.base, patient="pat-daniel-novak")
        assert refused.status == 403  # a patient cannot create launch contexts
        _, challenge = pkce_pair()
        answer = await maria.get(
            authorize_url(
                gateway.base,
                response_type="code",
                client_id=CLINICIAN_APP,
                redirect_uri=REDIRECT,
                scope="launch patient/*.rs",
                state="st",
                aud=gateway.fhir,
                launch=launch,
                code_challenge=challenge,
                code_challenge_method="S256",
            )
        )
        assert isinstance(answer, str) and callback_params(answer)["error"] == "invalid_request"
    async with Browser(gateway.base) as anonymous:
        _, challenge = pkce_pair()
        answer = await anonymous.get(
            authorize_url(
                gateway.base,
                response_type="code",
                client_id=CLINICIAN_APP,
                redirect_uri=REDIRECT,
                scope="launch patient/*.rs",
                state="st",
                aud=gateway.fhir,
                launch="made-up",
                code_challenge=challenge,
                code_challenge_method="S256",
            )
        )
        assert isinstance(answer, str) and callback_params(answer)["error"] == "invalid_request"
