"""SMART's JavaScript client (``fhirclient`` from npm, its browser build) in headless Chromium, used
as its documentation shows, with its defaults: a standalone launch from a page on another origin,
the patient read, their Observations paged through, the access token refreshed twice (S-07, S-16,
S-19, S-32). The app is ``fixtures/smart-js-app``, served by a local static server.

What the library does by default and the gateway must take: it asks for the SMART configuration
from the browser, sends the code exchange and every FHIR request cross-origin, and refreshes
without ``client_id`` (a public client's refresh token names it, RFC 6749 6); an answer it cannot
read for want of CORS headers would look like a network failure to it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.appkeys import AUTH
from gateway.localstack import FIXTURES
from smart_auth.clients import ClientType, new_client
from tests.conftest import RunningGateway
from tests.support.chromium import CHROMIUM, FLAGS, require_chromium
from tests.support.tokens import AMELIA, ensure_user

pytestmark = pytest.mark.e2e

APP_DIR = FIXTURES / "smart-js-app"
BUILD = APP_DIR / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"


@pytest_asyncio.fixture
async def js_app() -> AsyncIterator[str]:
    """The app's origin: its two pages and the library's browser build, as static files."""
    if not BUILD.is_file():
        pytest.fail("fhirclient is missing: scripts/test installs it (fixtures/smart-js-app)")
    files = {"/launch.html": APP_DIR / "launch.html", "/app.html": APP_DIR / "app.html"}
    files["/fhir-client.js"] = BUILD

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(files[request.path], headers={"Cache-Control": "no-store"})

    app = web.Application()
    for path in files:
        app.router.add_get(path, serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_s07_s19_js_client_standalone_launch_paging_and_two_refreshes(
    gateway: RunningGateway, js_app: str
) -> None:
    require_chromium()
    from playwright.async_api import Request, async_playwright

    client_id = "js-app-" + uuid.uuid4().hex[:6]
    await ensure_user(gateway, AMELIA)
    await gateway.server.app[AUTH].clients.add(
        new_client(
            client_id=client_id,
            name="Browser SMART App",
            client_type=ClientType.PUBLIC,
            redirect_uris=(f"{js_app}/app.html",),
            scope=SCOPE,
            purposes=("PATRQT",),
            origins=(js_app,),
            url="https://js-app.example.org",
        )
    )
    token_requests: list[dict[str, list[str]]] = []

    def record(request: Request) -> None:
        if request.url == f"{gateway.base}/auth/token" and request.method == "POST":
            token_requests.append(parse_qs(request.post_data or ""))

    launch = f"{js_app}/launch.html?" + urlencode(
        {"iss": gateway.fhir, "client_id": client_id, "scope": SCOPE}
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            page.on("request", record)
            await page.goto(launch)
            await page.wait_for_url(f"{gateway.base}/auth/login**")
            await page.fill("#username", AMELIA.username)
            await page.fill("#password", AMELIA.password)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/auth/consent?**")
            await page.click("button[value=approve]")  # the patient's Consent for the app
            await page.wait_for_url(f"{js_app}/app.html**")
            await page.wait_for_function("['done', 'failed'].includes(document.title)")
            text = await page.text_content("#result")
            assert await page.title() == "done", text
        finally:
            await browser.close()
    result: dict[str, Any] = json.loads(text or "{}")

    assert result["patientId"] == "pat-amelia-rossi" and result["patientName"] == "Rossi"
    assert result["fhirUser"] == "Patient/pat-amelia-rossi"
    pages = result["pageSizes"]
    assert len(pages) >= 3 and all(size <= 5 for size in pages) and pages[0] == 5, pages
    assert result["readsAfterRefresh"] == ["pat-amelia-rossi", "pat-amelia-rossi"]
    assert result["refreshTokensDistinct"] == 3 and result["accessTokensDistinct"] == 3  # rotated
    assert result["scope"] == SCOPE
    # The library's default refresh carries no client_id; the failed one was still readable.
    refreshes = [r for r in token_requests if r.get("grant_type") == ["refresh_token"]]
    assert len(refreshes) == 3 and all("client_id" not in r for r in refreshes)
    assert result["unknownRefresh"]["status"] == 401, result["unknownRefresh"]
