"""Sign-in security (SECURITY.md P-03 … P-09, P-13, P-14), driven through the real pages."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.appkeys import AUTH
from smart_auth.accounts import mfa
from smart_auth.accounts.passwords import WeakPassword
from smart_auth.accounts.users import Role
from tests.conftest import RunningGateway, Stack
from tests.support.browser import Browser, Page
from tests.support.clock import MovableClock
from tests.support.tokens import ADMIN, AMELIA, MARIA, ensure_user, flow_token

pytestmark = pytest.mark.e2e

FAILURE = "The username or password is not right"


async def _login_page(browser: Browser, gateway: RunningGateway) -> Page:
    page = await browser.get(f"{gateway.base}/auth/login")
    assert isinstance(page, Page) and page.status == 200
    return page


async def _sign_in(browser: Browser, gateway: RunningGateway, username: str, password: str) -> Page:
    page = await browser.login(await _login_page(browser, gateway), username, password)
    assert isinstance(page, Page)
    return page


async def test_p05_wrong_password_and_unknown_user_answer_alike(gateway: RunningGateway) -> None:
    await ensure_user(gateway, AMELIA)
    async with Browser(gateway.base) as browser:
        wrong = await _sign_in(browser, gateway, AMELIA.username, "not the password at all")
        unknown = await _sign_in(browser, gateway, "nobody-here", "not the password at all")
    assert wrong.status == unknown.status == 401
    assert FAILURE in wrong.text and FAILURE in unknown.text
    assert "fg_session" not in browser.session.cookie_jar.filter_cookies(URL(gateway.base))


async def test_p05_account_locks_after_repeated_failures(
    start_gateway: Any, local_stack_env: Stack
) -> None:
    clock = MovableClock()
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        login_max_failures=3,
        login_lock_seconds=2,
        clock=clock,
    )
    await ensure_user(gateway, AMELIA)
    async with Browser(gateway.base) as browser:
        for _ in range(3):
            page = await _sign_in(browser, gateway, AMELIA.username, "wrong password again")
            assert page.status == 401
        locked = await _sign_in(browser, gateway, AMELIA.username, AMELIA.password)
        assert locked.status == 401 and FAILURE in locked.text  # right password, still refused
        clock.advance(2.2)
        page = await _sign_in(browser, gateway, AMELIA.username, AMELIA.password)
        assert page.status == 200 and page.url.endswith("/auth/signed-in")


async def test_p03_weak_passwords_are_refused_at_creation(gateway: RunningGateway) -> None:
    users = gateway.server.app[AUTH].users
    for password in (
        "short-pw",
        "password1234",
        "qwertyuiop123",
        "aaaaaaaaaaaaaaaa",
        "newuser-is-my-password",
    ):
        with pytest.raises(WeakPassword):
            await users.add(
                username="newuser",
                role=Role.PATIENT,
                password=password,
                fhir_user="Patient/pat-chloe-bennett",
            )
    created = await users.add(
        username="newuser",
        role=Role.PATIENT,
        password="a quiet violet harbour",
        fhir_user="Patient/pat-chloe-bennett",
    )
    assert created.password_hash.startswith("$argon2id$")  # P-03: never reversible


async def test_p04_admin_must_enrol_mfa_then_use_it(gateway: RunningGateway) -> None:
    await ensure_user(gateway, ADMIN)
    async with Browser(gateway.base) as browser:
        page = await _sign_in(browser, gateway, ADMIN.username, ADMIN.password)
        assert page.url.startswith(f"{gateway.base}/auth/mfa/setup")
        assert "<svg" in page.html  # the QR code, inline
        async with browser.session.get(f"{gateway.base}/admin/clients") as response:
            assert response.status == 401  # no admin API before the second factor
        secret = page.html.split('class="secret">')[1].split("<")[0]
        form = page.forms[0]
        page2 = await browser.submit(
            page, form, form.data(values={"code": mfa.current_code(secret)})
        )
        assert isinstance(page2, Page) and "recovery codes" in page2.text
        codes = [c.split("<")[0] for c in page2.html.split("<li><code>")[1:]]
        assert len(codes) == 10
        async with browser.session.get(f"{gateway.base}/admin/clients") as response:
            assert response.status == 200
    # next sign-in: password, then the second factor; a wrong code is refused, a recovery code
    # works once
    for code, ok in (("000000", False), (codes[0], True)):
        async with Browser(gateway.base) as browser:
            page = await _sign_in(browser, gateway, ADMIN.username, ADMIN.password)
            assert page.url.startswith(f"{gateway.base}/auth/mfa?")
            async with browser.session.get(f"{gateway.base}/admin/clients") as response:
                assert response.status == 401
            form = page.forms[0]
            answer = await browser.submit(page, form, form.data(values={"code": code}))
            assert isinstance(answer, Page)
            assert (answer.status == 200) is ok
            async with browser.session.get(f"{gateway.base}/admin/clients") as response:
                assert (response.status == 200) is ok
    assert len((await gateway.server.app[AUTH].users.by_username("admin")).recovery_codes) == 9


async def test_p06_session_cookie_flags_and_idle_timeout(
    start_gateway: Any, local_stack_env: Stack
) -> None:
    clock = MovableClock()
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        session_idle_seconds=1,
        session_cookie_secure=True,
        clock=clock,
    )
    await ensure_user(gateway, AMELIA)

    def set_cookie(response: aiohttp.ClientResponse, name: str) -> str:
        return next(v for v in response.headers.getall("Set-Cookie") if v.startswith(name + "="))

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{gateway.base}/auth/login", allow_redirects=False) as response:
            browser_cookie = set_cookie(response, "fg_browser")
            flow_url = response.headers["Location"]
        jar = {"Cookie": browser_cookie.split(";")[0]}
        async with http.get(f"{gateway.base}{flow_url}", headers=jar) as response:
            html = await response.text()
        flow = flow_url.split("flow=")[1]
        csrf = html.split('name="csrf" value="')[1].split('"')[0]
        async with http.post(
            f"{gateway.base}/auth/login",
            allow_redirects=False,
            headers=jar,
            data={
                "flow": flow,
                "csrf": csrf,
                "username": AMELIA.username,
                "password": AMELIA.password,
            },
        ) as response:
            cookie = set_cookie(response, "fg_session")
    assert "secure" in browser_cookie.lower()
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=lax" in flags and "secure" in flags
    token = cookie.split(";")[0].split("=", 1)[1]
    sessions = gateway.server.app[AUTH].sessions
    assert await sessions.resume(token) is not None
    clock.advance(1.5)
    assert await sessions.resume(token) is None  # idle too long: gone server-side


async def test_p06_logout_and_sign_out_everywhere(gateway: RunningGateway) -> None:
    tokens = await flow_token(gateway, user=MARIA, scope="patient/*.rs offline_access")
    async with Browser(gateway.base) as other_device:
        await _sign_in(other_device, gateway, MARIA.username, MARIA.password)
        async with Browser(gateway.base) as browser:
            page = await _sign_in(browser, gateway, MARIA.username, MARIA.password)
            form = page.forms[0]
            done = await browser.submit(page, form, form.data(button=("everywhere", "1")))
            assert isinstance(done, Page) and "signed out" in done.text
        page = await other_device.get(f"{gateway.base}/auth/signed-in")
        assert isinstance(page, Page) and page.url.startswith(f"{gateway.base}/auth/login")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": "test-patient-app",
            },
        ) as response,
    ):
        assert response.status == 400  # every refresh token of the user is gone too


async def test_p13_operator_objects_cannot_reach_mongodb_through_login(
    gateway: RunningGateway,
) -> None:
    await ensure_user(gateway, AMELIA)
    async with Browser(gateway.base) as browser:
        for username in ('{"$gt": ""}', '{"$ne": null}', "amelia' || '1'=='1"):
            page = await _sign_in(browser, gateway, username, '{"$gt": ""}')
            assert page.status == 401
    users = gateway.server.app[AUTH].users
    assert await users.by_username({"$gt": ""}) is None  # type: ignore[arg-type]
    assert await gateway.server.app[AUTH].clients.get({"$gt": ""}) is None  # type: ignore[arg-type]


async def test_p14_logs_hold_no_tokens_or_passwords(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = await flow_token(gateway, user=MARIA, scope="patient/*.rs offline_access openid")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (
        tokens["access_token"],
        tokens["refresh_token"],
        tokens["id_token"],
        MARIA.password,
    ):
        assert secret not in logged
