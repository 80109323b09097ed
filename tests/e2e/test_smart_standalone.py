"""The standalone patient launch driven as a real app would, with ``fhirclient`` (the SMART Python
client) on the app side and the sign-in and consent forms posted as a browser posts them:
discovery → authorize → sign in → patient picker → consent → code → token with PKCE → paging through
a search → refresh with rotation → introspect → revoke → 401."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from fhirclient import client as fhirclient
from fhirclient.models.observation import Observation
from joserfc import jwt
from joserfc.jwk import KeySet

from consent.store import ConsentStore
from gateway.appkeys import MONGO
from tests.conftest import RunningGateway
from tests.support.browser import Browser, Page, authorize_url, callback_params, pkce_pair
from tests.support.tokens import (
    AMELIA,
    MARIA,
    PUBLIC_APP,
    REDIRECT,
    ensure_public_client,
    ensure_user,
    flow_token,
    minted_token,
)

pytestmark = pytest.mark.e2e

SCOPE = "openid fhirUser offline_access patient/*.rs"


async def _json(response: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await response.read())


async def test_s01_s06_discovery_document(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        f"{gateway.fhir}/.well-known/smart-configuration", headers={"Accept": "text/html"}
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"  # S-01 whatever Accept says
        assert response.headers["Access-Control-Allow-Origin"] == "*"  # S-07
        config = await _json(response)
    for name in (
        "authorization_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "jwks_uri",
        "issuer",
        "management_endpoint",
    ):
        assert config[name].startswith("http://127.0.0.1:"), name  # absolute
    assert config["issuer"] == gateway.base
    assert config["code_challenge_methods_supported"] == ["S256"]  # S-02: never plain
    assert config["response_types_supported"] == ["code"]  # S-04
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]  # S-05
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) >= {"RS384", "ES384"}
    assert set(config["capabilities"]) >= {  # S-06
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "context-standalone-patient",
        "permission-patient",
        "launch-ehr",
        "context-ehr-patient",
        "context-ehr-encounter",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "permission-offline",
        "sso-openid-connect",
        "authorize-post",
        "client-confidential-asymmetric",
    }
    async with http.get(f"{gateway.base}/.well-known/openid-configuration") as response:
        assert (await _json(response))["issuer"] == gateway.base
    async with http.get(config["jwks_uri"]) as response:
        keys = (await _json(response))["keys"]
    assert keys and all("d" not in key and "p" not in key for key in keys)  # S-18: public only


async def test_s01_the_fhir_base_has_only_the_smart_configuration_well_known(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """Other well-known documents are 404 under the FHIR base, with or without a token (never a
    500, never a 401); OpenID Connect discovery is at the issuer of the id_tokens."""
    token = await minted_token(gateway)
    for name in ("/openid-configuration", "/oauth-authorization-server", "/a/b", "/", ""):
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            async with http.get(f"{gateway.fhir}/.well-known{name}", headers=headers) as response:
                assert response.status == 404, (name, headers, await response.text())
    async with http.get(f"{gateway.base}/.well-known/openid-configuration") as response:
        assert response.status == 200
        assert (await _json(response))["issuer"] == gateway.base


async def test_s08_metadata_carries_the_smart_security_section(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.fhir}/metadata") as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        statement = await _json(response)
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == f"{gateway.base}/auth/authorize"
    assert uris["token"] == f"{gateway.base}/auth/token"


async def test_s16_s19_whole_standalone_launch_with_fhirclient_paging_and_refresh(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await ensure_user(gateway, MARIA)
    await ensure_public_client(gateway)
    smart = fhirclient.FHIRClient(
        settings={
            "app_id": PUBLIC_APP,
            "api_base": gateway.fhir,
            "redirect_uri": REDIRECT,
            "scope": SCOPE,
        }
    )
    # fhirclient reads the endpoints from the CapabilityStatement (S-08) and builds the request
    # with PKCE S256, state and aud.
    authorize_url = await asyncio.to_thread(lambda: smart.authorize_url)
    assert authorize_url.startswith(f"{gateway.base}/auth/authorize?")
    async with Browser(gateway.base) as browser:
        page = await browser.get(authorize_url)
        assert isinstance(page, Page) and "Sign in" in page.text
        page = await browser.login(page, MARIA.username, MARIA.password)
        assert isinstance(page, Page) and page.url.startswith(f"{gateway.base}/auth/patient")
        form = page.forms[0]
        page = await browser.submit(page, form, form.data(radio={"patient": "pat-leo-garcia"}))
        assert isinstance(page, Page) and page.url.startswith(f"{gateway.base}/auth/consent")
        assert "Test Patient App" in page.text and "https://app.example.org" in page.text
        assert "Keep access while I am not using the app" in page.text  # S-14: spelled out
        assert "Leo Garcia" in page.text  # whose record, every time
        form = page.forms[0]
        callback = await browser.submit(page, form, form.data(button=("decision", "approve")))
    assert isinstance(callback, str) and callback.startswith(REDIRECT)
    assert set(callback_params(callback)) == {"code", "state"}  # S-12, S-33: no token in the URL

    await asyncio.to_thread(smart.handle_callback, callback)
    context = smart.launch_context
    assert smart.patient_id == context["patient"] == "pat-leo-garcia"  # S-13, S-16
    assert context["token_type"] == "Bearer" and context["scope"].split() == [
        "launch/patient",
        *SCOPE.split(),
    ]
    access = smart.server.auth.access_token
    refresh = smart.server.auth.refresh_token
    assert access and refresh

    # S-20: an RFC 9068 JWT signed by a key in our JWKS, with the contract's claims
    async with http.get(f"{gateway.base}/auth/jwks") as response:
        keyset = KeySet.import_key_set(await _json(response))
    token = jwt.decode(access, keyset, algorithms=["RS256"])
    claims = token.claims
    assert token.header["typ"] == "at+jwt"
    assert claims["aud"] == gateway.fhir and claims["iss"] == gateway.base
    assert claims["client_id"] == PUBLIC_APP and claims["patient"] == "pat-leo-garcia"
    assert claims["fhirUser"] == "Patient/pat-maria-garcia"
    assert set(claims["acts_for"]) == {"pat-maria-garcia", "pat-leo-garcia"}
    assert claims["purpose_of_use"] == ["PATRQT"] and claims["exp"] - claims["iat"] <= 3600
    # S-18: the id_token
    id_token = jwt.decode(context["id_token"], keyset, algorithms=["RS256"]).claims
    assert id_token["aud"] == PUBLIC_APP and id_token["sub"] == claims["sub"]
    assert id_token["fhirUser"] == f"{gateway.fhir}/Patient/pat-maria-garcia"

    # Paging the way fhirclient does it: perform_iter follows each Bundle's next link (the
    # gateway's signed /_page links) with the same token.
    search = Observation.where(struct={"patient": "pat-leo-garcia", "_count": "5"})
    pages = await asyncio.to_thread(
        lambda: [[e.resource.id for e in b.entry or []] for b in search.perform_iter(smart.server)]
    )
    assert len(pages) >= 3 and all(len(page) <= 5 for page in pages), pages
    ids = [i for page in pages for i in page]
    assert len(ids) == len(set(ids)) and all(i.startswith("obs-leo-garcia") for i in ids), ids

    # C-05: the Consent was written for the chosen patient, actor = the app
    db = gateway.server.app[MONGO][gateway.settings.mongodb_database]
    consents = await ConsentStore(db).active_for("pat-leo-garcia")
    assert len(consents) == 1
    actor = consents[0]["provision"]["actor"][0]["reference"]["identifier"]["value"]
    assert actor == PUBLIC_APP

    # S-19, S-32: refresh rotates; the old refresh token is then a replay
    assert await asyncio.to_thread(smart.reauthorize)
    new_refresh = smart.server.auth.refresh_token
    assert smart.launch_context["scope"] == context["scope"] and new_refresh != refresh
    assert smart.launch_context["patient"] == "pat-leo-garcia"
    new_access = smart.server.auth.access_token

    # S-24: introspection with the token itself as bearer
    async with http.post(
        f"{gateway.base}/auth/introspect",
        data={"token": new_access},
        headers={"Authorization": f"Bearer {new_access}"},
    ) as response:
        info = await _json(response)
    assert info["active"] is True and info["client_id"] == PUBLIC_APP
    assert info["patient"] == "pat-leo-garcia" and info["scope"] == context["scope"]

    # S-25: revoke, then introspection is inactive, the refresh token fails, the FHIR API says 401
    async with http.post(
        f"{gateway.base}/auth/revoke", data={"token": new_access, "client_id": PUBLIC_APP}
    ) as response:
        assert response.status == 200
    async with http.post(
        f"{gateway.base}/auth/introspect",
        data={"token": new_access, "client_id": PUBLIC_APP},
        auth=None,
        headers={"Authorization": f"Bearer {new_access}"},
    ) as response:
        assert response.status == 401  # the bearer itself is revoked now
    async with http.post(
        f"{gateway.base}/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": new_refresh, "client_id": PUBLIC_APP},
    ) as response:
        assert response.status == 400 and (await _json(response))["error"] == "invalid_grant"
    async with http.get(
        f"{gateway.fhir}/Patient/pat-leo-garcia", headers={"Authorization": f"Bearer {new_access}"}
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_s14_a_request_beyond_the_registration_is_narrowed_to_it(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """The grant is what the registration allows of the request (wildcards narrowed to the
    registered types); only a request of which nothing is left is refused."""
    await ensure_public_client(
        gateway, "narrow-app", scope="launch/patient patient/Observation.rs patient/Patient.r"
    )
    tokens = await flow_token(
        gateway, user=AMELIA, client_id="narrow-app", scope="launch/patient patient/*.cruds"
    )
    assert tokens["scope"] == "launch/patient patient/Observation.rs patient/Patient.r"
    _, challenge = pkce_pair()
    async with http.get(
        authorize_url(
            gateway.base,
            response_type="code",
            client_id="narrow-app",
            redirect_uri=REDIRECT,
            scope="user/*.rs openid",
            state="nothing-left",
            aud=gateway.fhir,
            code_challenge=challenge,
            code_challenge_method="S256",
        ),
        allow_redirects=False,
    ) as response:
        assert response.status == 302
        params = callback_params(response.headers["Location"])
    assert (params["error"], params["state"]) == ("invalid_scope", "nothing-left")
    assert "registered" in params["error_description"]
