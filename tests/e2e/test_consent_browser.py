"""The consent screen in a real browser (S-14, C-05): headless Chromium (Debian's package) driven by
Playwright signs in, unticks one kind of data, picks an end date, approves, and the granted scope
and the stored Consent are exactly what was left ticked and the date shown."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from consent.store import ConsentStore
from gateway.appkeys import MONGO
from tests.conftest import RunningGateway
from tests.support.browser import authorize_url, callback_params, pkce_pair
from tests.support.chromium import CHROMIUM, FLAGS, require_chromium
from tests.support.tokens import AMELIA, ensure_public_client, ensure_user

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def app_callback() -> AsyncIterator[tuple[str, list[str]]]:
    """The app's redirect URI: a real page that records the URL it was called with."""
    seen: list[str] = []

    async def callback(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.Response(
            text='<link rel="icon" href="data:,"><p>App received the code</p>',
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/callback", callback)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/callback", seen
    await server.close()


async def test_s14_c05_untick_one_kind_in_chromium(
    gateway: RunningGateway, app_callback: tuple[str, list[str]]
) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    redirect, seen = app_callback
    client_id = "browser-app-" + uuid.uuid4().hex[:6]
    scope = "patient/Patient.rs patient/Observation.rs patient/Condition.rs offline_access"
    await ensure_user(gateway, AMELIA)
    await _register(gateway, client_id, redirect, scope)
    verifier, challenge = pkce_pair()
    url = authorize_url(
        gateway.base,
        response_type="code",
        client_id=client_id,
        redirect_uri=redirect,
        scope=scope,
        state="browser-state",
        aud=gateway.fhir,
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            script_errors: list[str] = []
            page.on(
                "console", lambda m: script_errors.append(m.text) if m.type == "error" else None
            )
            await page.goto(url)
            await page.fill("#username", AMELIA.username)
            await page.fill("#password", AMELIA.password)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/auth/consent?**")
            assert await page.is_visible("text=Keep access while I am not using the app")
            assert await page.is_checked("input[name=kind][value=conditions]")
            await page.uncheck("input[name=kind][value=conditions]")
            await page.check("input[name=expiry][value='30d']")
            shown_end = await page.locator("label:has(input[value='30d']) .hint").inner_text()
            await page.click("button[value=approve]")
            await page.wait_for_url(f"{redirect}**")
            assert "App received the code" in await page.content()
            assert not script_errors  # CSP held: nothing was blocked, nothing ran
        finally:
            await browser.close()
    params = callback_params(seen[-1])
    assert params["state"] == "browser-state"
    body = await _redeem(gateway, client_id, redirect, params["code"], verifier)
    assert body["scope"] == "patient/Patient.rs patient/Observation.rs offline_access"
    db = gateway.server.app[MONGO][gateway.settings.mongodb_database]
    consents = [
        c
        for c in await ConsentStore(db).active_for("pat-amelia-rossi")
        if c["provision"]["actor"][0]["reference"]["identifier"]["value"] == client_id
    ]
    assert len(consents) == 1
    classes = {c["code"] for c in consents[0]["provision"]["class"]}
    assert classes == {"Patient", "Observation"}  # Condition was unticked
    period = consents[0]["provision"]["period"]
    end = datetime.fromisoformat(period["end"].replace("Z", "+00:00"))
    assert shown_end == f"until {end:%B} {end.day}, {end.year}"  # the date shown is the date kept
    assert (end.hour, end.minute) == (23, 59) and period["start"] < period["end"]


async def _register(gateway: RunningGateway, client_id: str, redirect: str, scope: str) -> None:
    from gateway.appkeys import AUTH
    from smart_auth.clients import ClientType, new_client

    await ensure_public_client(gateway)
    await gateway.server.app[AUTH].clients.add(
        new_client(
            client_id=client_id,
            name="Browser Test App",
            client_type=ClientType.PUBLIC,
            redirect_uris=(redirect,),
            scope=scope,
            purposes=("PATRQT",),
            url="https://browser-app.example.org",
        )
    )


async def _redeem(
    gateway: RunningGateway, client_id: str, redirect: str, code: str, verifier: str
) -> dict[str, Any]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        ) as response,
    ):
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body
