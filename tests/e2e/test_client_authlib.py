"""Authlib's OAuth 2.0 / OpenID Connect client against the gateway, with its defaults.

The app is built the way Authlib builds its Flask and Starlette clients (``OAuth2Mixin`` +
``OpenIDMixin`` over a ``requests`` ``OAuth2Session``), without the web framework: it reads
``{issuer}/.well-known/openid-configuration``, sends the authorization request with PKCE and a
nonce, exchanges the code with ``client_secret_basic`` (its default for a client with a secret),
validates the id_token (signature against ``jwks_uri``, ``iss``, ``aud``, ``nonce``, expiry) and
reads the ``fhirUser`` it names through the gateway (S-18). Authlib's calls are synchronous: they
run in a thread, the gateway in the event loop."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from authlib.integrations.base_client import BaseApp, FrameworkIntegration, OAuth2Mixin, OpenIDMixin
from authlib.integrations.requests_client import OAuth2Session
from joserfc.errors import InvalidClaimError

from gateway.appkeys import AUTH
from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway
from tests.support.browser import Browser, Page, callback_params
from tests.support.tokens import HANNAH, REDIRECT, ensure_user

pytestmark = pytest.mark.e2e

CLIENT_ID = "authlib-web-app"
SCOPE = "openid fhirUser user/Practitioner.rs user/Patient.rs"


class OidcApp(OAuth2Mixin, OpenIDMixin, BaseApp):  # type: ignore[misc]
    """Authlib's OAuth 2.0 + OpenID Connect client app, as in its framework integrations."""

    client_cls = OAuth2Session


async def _sign_in_and_approve(gateway: RunningGateway, url: str) -> dict[str, str]:
    async with Browser(gateway.base) as browser:
        page = await browser.get(url)
        assert isinstance(page, Page) and "Sign in" in page.text, page
        page = await browser.login(page, HANNAH.username, HANNAH.password)
        assert isinstance(page, Page) and page.url.startswith(f"{gateway.base}/auth/consent")
        form = page.forms[0]
        location = await browser.submit(page, form, form.data(button=("decision", "approve")))
    assert isinstance(location, str) and location.startswith(REDIRECT), location
    return callback_params(location)


async def test_s18_authlib_openid_connect_with_id_token_validation_and_fhir_user(
    gateway: RunningGateway,
) -> None:
    secret = secrets.token_urlsafe(32)
    await ensure_user(gateway, HANNAH)
    await gateway.server.app[AUTH].clients.add(
        new_client(
            client_id=CLIENT_ID,
            name="Authlib Web App",
            client_type=ClientType.SYMMETRIC,
            redirect_uris=(REDIRECT,),
            scope=SCOPE,
            purposes=("TREAT",),
            secret=secret,
        )
    )
    app = OidcApp(
        FrameworkIntegration("gateway"),
        name="gateway",
        client_id=CLIENT_ID,
        client_secret=secret,
        server_metadata_url=f"{gateway.base}/.well-known/openid-configuration",
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256"},
    )
    # SMART's one addition to a plain OIDC request: aud, the FHIR base the token is for.
    start: dict[str, Any] = await asyncio.to_thread(
        app.create_authorization_url, REDIRECT, aud=gateway.fhir
    )
    assert {"url", "state", "code_verifier", "nonce"} <= set(start)
    params = await _sign_in_and_approve(gateway, start["url"])
    assert params["state"] == start["state"]
    token: dict[str, Any] = await asyncio.to_thread(
        app.fetch_access_token,
        REDIRECT,
        code=params["code"],
        code_verifier=start["code_verifier"],
    )
    assert token["scope"] == SCOPE and "id_token" in token

    user = await asyncio.to_thread(app.parse_id_token, token, start["nonce"])
    assert user["iss"] == gateway.base and user["aud"] == CLIENT_ID
    assert user["fhirUser"] == f"{gateway.fhir}/Practitioner/prac-hannah-okafor"
    with pytest.raises(InvalidClaimError):  # Authlib checks the nonce it sent
        await asyncio.to_thread(app.parse_id_token, token, "another-nonce")

    # fhirUser is a FHIR URL on the gateway: the app reads it with its access token.
    response = await asyncio.to_thread(app.get, user["fhirUser"], token=token)
    assert response.status_code == 200, response.text
    practitioner = response.json()
    assert practitioner["resourceType"] == "Practitioner"
    assert practitioner["id"] == "prac-hannah-okafor"
