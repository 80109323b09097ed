"""The consent screen and the patient's own pages in a real browser, as a patient uses them
(C-04, C-05, C-12 … C-14, C-19 … C-21, C-25, P-18): headless Debian Chromium driven by Playwright,
on a phone's screen (390 x 844), against the demo's apps and users.

One gateway and one browser serve the whole module (each test has its own browser context, so
its own cookies). Screenshots of every page land in ``test-results/account-browser/``; with
``UPDATE_DOC_SCREENSHOTS=1`` the phone screenshots the docs show are written to
``docs/screenshots/`` as well.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from consent.store import ConsentStore
from gateway.app import create_app, runner_options
from gateway.appkeys import AUDIT, AUTH
from gateway.cli.admin import register_demo
from gateway.localstack import free_port
from tests.conftest import RunningGateway, Stack, gateway_settings
from tests.support.browser import authorize_url, pkce_pair
from tests.support.chromium import CHROMIUM, FLAGS, require_chromium
from tests.support.tokens import minted_token

if TYPE_CHECKING:  # Playwright is imported when Chromium is there (require_chromium)
    from playwright.async_api import Browser, BrowserContext, Page

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "fixtures" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
OUTPUT = ROOT / "test-results" / "account-browser"
DOCS = ROOT / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
APP = "demo-patient-app"
APP_NAME = "My Health Diary (demo)"
SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"
AMELIA = ("amelia", "violet-harbour-4821", "pat-amelia-rossi")
MARIA = ("maria", "copper-lantern-7390", "pat-maria-garcia")
LEO = "pat-leo-garcia"
TARGETS = "a[href], button, input:not([type=hidden]), select, textarea, summary"


@dataclass
class Demo:
    gateway: RunningGateway
    browser: Browser
    callback: str
    calls: list[str] = field(default_factory=list)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo(local_stack_env: Stack) -> AsyncIterator[Demo]:
    """The gateway with the demo's apps and users, the app's redirect page, and Chromium."""
    require_chromium()
    if not AXE.is_file():
        pytest.fail("axe-core is missing: scripts/test installs it (fixtures/axe)")
    from playwright.async_api import async_playwright

    calls: list[str] = []

    async def callback(request: web.Request) -> web.Response:
        calls.append(str(request.url))
        return web.Response(
            text='<!doctype html><html lang="en"><title>App</title>'
            '<link rel="icon" href="data:,"><p>App received the code</p></html>',
            content_type="text/html",
        )

    app_site = web.Application()
    app_site.router.add_get("/callback", callback)
    site = TestServer(app_site, host="127.0.0.1")
    await site.start_server()
    port = free_port()
    settings = gateway_settings(
        port, upstream_url=local_stack_env.upstream.base_url, mongodb_uri=local_stack_env.mongo_uri
    )
    server = TestServer(create_app(settings), host="127.0.0.1", port=port)
    await server.start_server(**runner_options(settings))
    gateway = RunningGateway(server, settings)
    await register_demo(server.app[AUTH], server.app[AUDIT])
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            # The demo app's loopback redirect URI may use another port (RFC 8252 7.3).
            yield Demo(gateway, browser, f"http://127.0.0.1:{site.port}/callback", calls)
        finally:
            await browser.close()
            await server.close()
            await site.close()


class Shots:
    """Screenshots of one test's pages, numbered in order."""

    def __init__(self, name: str) -> None:
        self.folder = OUTPUT / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    async def take(
        self, page: Page, what: str, *, doc: str | None = None, first_screen: bool = False
    ) -> None:
        """The whole page (and, for a page whose point is its first screen, that screen)."""
        self.count += 1
        await page.screenshot(
            path=str(self.folder / f"{self.count:02d}-{what}.png"), full_page=True
        )
        if first_screen:
            await page.screenshot(
                path=str(self.folder / f"{self.count:02d}-{what}-first-screen.png")
            )
        if doc and os.environ.get("UPDATE_DOC_SCREENSHOTS"):
            DOCS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(DOCS / f"{doc}.png"), full_page=not first_screen)


async def _phone(demo: Demo) -> tuple[BrowserContext, Page, list[str]]:
    context = await demo.browser.new_context(viewport=PHONE, device_scale_factor=1)
    page = await context.new_page()
    errors: list[str] = []  # a script blocked by the CSP, or any other error, shows here
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return context, page, errors


async def _sign_in(page: Page, user: tuple[str, str, str]) -> None:
    await page.fill("#username", user[0])
    await page.fill("#password", user[1])
    await page.click("button[type=submit]")


async def _connect(
    demo: Demo, page: Page, user: tuple[str, str, str], shots: Shots, *, child: str | None = None
) -> dict[str, Any]:
    """Authorize the demo app as a patient would, on the phone: sign in, (pick the child,) look
    at the consent screen, Allow; the app exchanges its code. Returns the token response."""
    verifier, challenge = pkce_pair()
    state = uuid.uuid4().hex
    gateway = demo.gateway
    await page.goto(
        authorize_url(
            gateway.base,
            response_type="code",
            client_id=APP,
            redirect_uri=demo.callback,
            scope=SCOPE,
            state=state,
            aud=gateway.fhir,
            code_challenge=challenge,
            code_challenge_method="S256",
        )
    )
    await shots.take(page, "sign-in", doc="sign-in")
    await _targets_are_44_px(page)
    await _accessible(page)
    await _sign_in(page, user)
    if child is not None:
        await page.wait_for_url("**/auth/patient?**")
        await shots.take(page, "whose-record", doc="patient-picker")
        await _targets_are_44_px(page)
        await _accessible(page)
        await page.check(f"input[name=patient][value={child}]")
        await page.click("button[type=submit]")
    await page.wait_for_url("**/auth/consent?**")
    await shots.take(
        page, "consent", doc="consent-child" if child else "consent", first_screen=True
    )
    await _allow_on_the_first_screen(page)
    await _targets_are_44_px(page)
    await _accessible(page)
    await page.click("button[value=approve]")
    await page.wait_for_url(f"{demo.callback}**")
    params = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert params["state"] == state
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": demo.callback,
                "client_id": APP,
                "code_verifier": verifier,
            },
        ) as response,
    ):
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


async def _allow_on_the_first_screen(page: Page) -> None:
    """Allow and Deny are on the phone's first screen, not covered by anything."""
    assert await page.evaluate("window.scrollY") == 0
    for value in ("approve", "deny"):
        box = await page.locator(f"button[value={value}]").bounding_box()
        assert box is not None
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (value, box)
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        hit = await page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.value", [x, y])
        assert hit == value  # nothing lies over it


async def _targets_are_44_px(page: Page) -> None:
    """Every link and control a finger can touch is at least 44 x 44 CSS px (WCAG 2.5.5)."""
    sizes = await page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)]
            .filter((e) => e.getClientRects().length > 0)
            .map((e) => { const r = e.getBoundingClientRect();
                          return [e.outerHTML.slice(0, 90), r.width, r.height]; })""",
        TARGETS,
    )
    assert sizes  # the check saw the page's controls
    small = [s for s in sizes if s[1] < 43.5 or s[2] < 43.5]
    assert not small, small


async def _accessible(page: Page) -> None:
    """axe-core, injected into the page, finds no serious or critical violation."""
    await page.evaluate(AXE.read_text(encoding="utf-8"))
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [
        (v["id"], v["impact"], [n["html"][:120] for n in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, bad


async def _fhir(gateway: RunningGateway, token: str, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.fhir}/{path}", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.json(content_type=None)


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


def _why_empty(bundle: dict[str, Any]) -> str:
    """What the search's OperationOutcome says about the data it withheld (C-03)."""
    return " ".join(
        issue.get("diagnostics", "")
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == "outcome"
        for issue in e["resource"].get("issue", [])
    )


async def _check_page(page: Page, errors: list[str]) -> None:
    await _targets_are_44_px(page)
    await _accessible(page)
    assert not errors, errors  # the CSP held: nothing was blocked, no script ran


async def test_c19_c12_p18_a_patient_connects_an_app_sees_it_and_disconnects_it(
    demo: Demo,
) -> None:
    """Amelia connects the demo app on her phone, sees it under Connected apps, the app reads
    her data, she disconnects it, and the app's next call gets nothing."""
    shots = Shots("patient")
    context, page, errors = await _phone(demo)
    try:
        tokens = await _connect(demo, page, AMELIA, shots)
        status, bundle = await _fhir(demo.gateway, tokens["access_token"], "Observation?_count=3")
        assert status == 200 and _matches(bundle)
        await page.goto(f"{demo.gateway.base}/account/apps")
        await page.wait_for_selector("h1")
        assert await page.locator("h1").inner_text() == "Apps connected to your record"
        assert APP_NAME in await page.content()
        assert "Amelia" in await page.locator(".whose").inner_text()  # whose data, said plainly
        assert "UTC" in await page.locator("dd", has_text="UTC").first.inner_text()  # last access
        await shots.take(page, "connected-apps", doc="connected-apps")
        await _check_page(page, errors)
        await page.click("nav a:has-text('Who saw my data')")
        await page.wait_for_url("**/account/history**")
        first = await page.locator("tbody tr").first.inner_text()
        assert "Data sent" in first and APP_NAME in first and "Observation" in first
        await shots.take(page, "who-saw-my-data", doc="who-saw-my-data")
        await _check_page(page, errors)
        await page.goto(f"{demo.gateway.base}/account/security")
        assert "Signed in" in await page.locator("#sign-ins + table").inner_text()
        await shots.take(page, "security", doc="security")
        await _check_page(page, errors)
        await page.goto(f"{demo.gateway.base}/account/apps")
        await page.click(f"button:has-text('Disconnect {APP_NAME}')")
        await page.wait_for_url("**/account/apps?**disconnected=**")
        assert "is disconnected" in await page.locator("[role=status]").inner_text()
        await shots.take(page, "disconnected", doc="disconnected")
        await _check_page(page, errors)
    finally:
        await context.close()
    status, _ = await _fhir(demo.gateway, tokens["access_token"], "Observation?_count=3")
    assert status == 401  # C-12, C-13: its token ended with the consent
    other = await minted_token(demo.gateway, client_id=APP, scope="patient/*.rs")
    status, bundle = await _fhir(demo.gateway, other, "Observation?_count=3")
    assert status == 200 and not _matches(bundle)  # and no consent lets anything out (C-03)
    assert "consent" in _why_empty(bundle), bundle


async def test_c19_c25_a_parent_connects_an_app_to_the_child_and_disconnects_it(
    demo: Demo,
) -> None:
    """Maria connects the demo app to her son Leo's record, switches her pages to Leo, sees the
    app there (and not on her own record), disconnects it; the app's next call gets nothing."""
    shots = Shots("parent")
    context, page, errors = await _phone(demo)
    try:
        tokens = await _connect(demo, page, MARIA, shots, child=LEO)
        assert tokens["patient"] == LEO
        status, bundle = await _fhir(demo.gateway, tokens["access_token"], "Observation?_count=3")
        assert status == 200 and _matches(bundle)
        await page.goto(f"{demo.gateway.base}/account/apps")
        assert "No app is connected" in await page.locator("main").inner_text()
        await page.click("a:has-text('Show the data of')")
        await page.wait_for_url(f"**/account/apps?patient={LEO}")
        whose = await page.locator(".whose").inner_text()
        assert "Leo" in whose and "whom you represent" in whose
        assert "Leo" in await page.locator("h1").inner_text()
        assert APP_NAME in await page.content()
        await shots.take(page, "connected-apps-child", doc="connected-apps-child")
        await _check_page(page, errors)
        await page.click("nav a:has-text('Who saw my data')")
        await page.wait_for_url(f"**/account/history?patient={LEO}")
        assert "Leo" in await page.locator("h1").inner_text()
        first = await page.locator("tbody tr").first.inner_text()
        assert "Data sent" in first and f"{APP_NAME}, used by you" in first  # by Maria, for Leo
        await shots.take(page, "who-saw-my-data-child")
        await _check_page(page, errors)
        await page.click("nav a:has-text('Connected apps')")
        await page.wait_for_url(f"**/account/apps?patient={LEO}")
        await page.click(f"button:has-text('Disconnect {APP_NAME}')")
        await page.wait_for_url("**/account/apps?**disconnected=**")
        assert "Leo" in await page.locator(".whose").inner_text()  # still the child's page
        await shots.take(page, "disconnected-child")
    finally:
        await context.close()
    status, _ = await _fhir(demo.gateway, tokens["access_token"], "Observation?_count=3")
    assert status == 401
    db = demo.gateway.server.app[AUTH].db
    assert not await ConsentStore(db).search(patient_id=LEO, status="active")
    other = await minted_token(
        demo.gateway,
        client_id=APP,
        scope="patient/*.rs",
        fhir_user="RelatedPerson/relperson-maria-garcia",
        patient=LEO,
        acts_for=(LEO,),
    )
    status, bundle = await _fhir(demo.gateway, other, "Observation?_count=3")
    assert status == 200 and not _matches(bundle)  # no consent lets anything of Leo's out
    assert "consent" in _why_empty(bundle), bundle


async def test_c14_keyboard_only_through_the_disconnect_flow(demo: Demo) -> None:
    """Sign in and disconnect with the keyboard alone: every step is reached with Tab, shows
    where the focus is, and is done with Enter or Space."""
    context, page, errors = await _phone(demo)
    try:
        await _connect(demo, page, AMELIA, Shots("keyboard-connect"))
        await context.clear_cookies()  # sign in again, by keyboard
        await page.goto(f"{demo.gateway.base}/account/apps")
        await page.wait_for_url("**/auth/login?**")
        await _tab_to(page, "#username")
        await page.keyboard.type(AMELIA[0])
        await page.keyboard.press("Tab")
        await page.keyboard.type(AMELIA[1])
        await page.keyboard.press("Enter")
        await page.wait_for_url("**/account/apps")
        await _tab_to(page, f"button:has-text('Disconnect {APP_NAME}')")
        await page.keyboard.press("Enter")
        await page.wait_for_url("**/account/apps?**disconnected=**")
        assert "is disconnected" in await page.locator("[role=status]").inner_text()
        assert not errors, errors
    finally:
        await context.close()


async def _tab_to(page: Page, selector: str, limit: int = 80) -> None:
    """Press Tab until ``selector`` has the focus, checking that the focus can be seen."""
    target = page.locator(selector).first
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await target.evaluate("(e) => e === document.activeElement"):
            outline = await target.evaluate(
                "(e) => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth]; }"
            )
            assert outline[0] != "none" and outline[1] != "0px", outline  # focus is visible
            return
    raise AssertionError(f"Tab never reached {selector}")


async def test_s14_the_consent_screen_on_a_phone_in_spanish(demo: Demo) -> None:
    """The consent screen as a Spanish-speaking patient sees it: the browser's language, the
    same layout rules (Allow on the first screen, 44 px targets), no accessibility violation."""
    context = await demo.browser.new_context(viewport=PHONE, device_scale_factor=1, locale="es-ES")
    page = await context.new_page()
    shots = Shots("spanish")
    try:
        _, challenge = pkce_pair()
        await page.goto(
            authorize_url(
                demo.gateway.base,
                response_type="code",
                client_id=APP,
                redirect_uri=demo.callback,
                scope=SCOPE,
                state="es",
                aud=demo.gateway.fhir,
                code_challenge=challenge,
                code_challenge_method="S256",
            )
        )
        assert await page.locator("html").get_attribute("lang") == "es"
        await _sign_in(page, AMELIA)
        await page.wait_for_url("**/auth/consent?**")
        assert await page.locator("button[value=approve]").inner_text() == "Permitir"
        assert re.search(r"hasta el \d+ de \w+ de \d{4}", await page.content())
        await shots.take(page, "consent-es", doc="consent-es", first_screen=True)
        await _allow_on_the_first_screen(page)
        await _targets_are_44_px(page)
        await _accessible(page)
        await page.click("button[value=deny]")
        await page.wait_for_url(f"{demo.callback}**")
        assert "error=access_denied" in page.url
    finally:
        await context.close()
