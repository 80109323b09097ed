"""The account's Security page through HTTP (C-21, P-04, P-05, P-06, P-07, P-18): recent sign-ins,
sessions, sign out everywhere, password, second factor; every step needs the session's CSRF
token, and the steps that change the account need the current password."""

from __future__ import annotations

import aiohttp
import pytest

from smart_auth.accounts import mfa
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.support import tokens
from tests.support.browser import Browser, Page
from tests.support.pages import audit_events, csrf_of, details, form_of, post, signed_in
from tests.support.tokens import (
    AMELIA,
    MARIA,
    PUBLIC_APP,
    ensure_user,
    flow_token,
    services,
)

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "a brand new violet lantern"


async def _security(
    gateway: RunningGateway, user: tokens.TestUser = AMELIA
) -> tuple[Browser, Page]:
    return await signed_in(gateway, user, "/account/security")


async def test_p18_recent_sign_ins_and_failures_sessions_and_apps_in_one_place(
    gateway: RunningGateway,
) -> None:
    await ensure_user(gateway, AMELIA)
    async with Browser(gateway.base) as intruder:  # a wrong password typed for the account
        page = await intruder.get(f"{gateway.base}/auth/login")
        assert isinstance(page, Page)
        await intruder.login(page, AMELIA.username, "not the right password at all")
    await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    browser, page = await _security(gateway)
    async with browser:
        text = page.text
        assert page.status == 200 and "If you think someone else used your account" in text
        assert "Wrong password" in text and "Signed in" in text and "127.0.0.1" in text
        assert "Python/3" in text  # the device (user agent) of each sign-in
        assert "This device" in text  # the session in use, among the live ones
        assert "Test Patient App, to the record of" in text and "Amelia" in text
        for anchor in ("#sign-ins", "#everywhere", "#password", "#mfa", "/account/apps"):
            assert f'href="{anchor}"' in page.html, anchor


async def test_p06_p18_sign_out_everywhere_ends_sessions_and_refresh_tokens(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(
        gateway, user=AMELIA, scope="launch/patient offline_access patient/*.rs"
    )
    other, _ = await _security(gateway)  # another device
    browser, page = await _security(gateway)
    async with other, browser:
        done = await post(browser, page, form_of(page, "/account/security/sign-out-everywhere"))
        assert "You are signed out" in done.text
        for device in (browser, other):
            again = await device.get(f"{gateway.base}/account/security")
            assert isinstance(again, Page) and "/auth/login" in again.url
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{gateway.fhir}/Patient/pat-amelia-rossi", headers=headers) as response:
        assert response.status == 401
    async with http.post(
        f"{gateway.base}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": PUBLIC_APP,
        },
    ) as response:
        assert response.status == 400
    user = await services(gateway).users.by_username(AMELIA.username)
    assert user is not None
    logouts = await audit_events(
        gateway, agent=f"urn:fhir-gateway:user|{user.user_id}", subtype="110123"
    )
    assert logouts and details(logouts[0]).get("sessions") == "all"  # recorded (P-18)


async def test_p07_p18_every_security_form_refuses_a_missing_or_wrong_csrf_token(
    gateway: RunningGateway,
) -> None:
    browser, page = await _security(gateway)
    async with browser:
        for action in (
            "/account/security/sign-out-everywhere",
            "/account/security/sessions/end",
            "/account/security/password",
            "/account/security/mfa/off",
            "/account/security/recovery-codes",
        ):
            for csrf in (None, "forged"):
                data = {"current": AMELIA.password, "new": NEW_PASSWORD, "again": NEW_PASSWORD}
                if csrf is not None:
                    data["csrf"] = csrf
                async with browser.session.post(f"{gateway.base}{action}", data=data) as response:
                    assert response.status == 403, action
        still = await browser.get(f"{gateway.base}/account/security")
        assert isinstance(still, Page) and still.status == 200  # still signed in, nothing changed
    user = await services(gateway).users.by_username(AMELIA.username)
    assert user is not None
    async with Browser(gateway.base) as check:  # the password did not change
        page = await check.get(f"{gateway.base}/account/security")
        assert isinstance(page, Page)
        page = await check.login(page, AMELIA.username, AMELIA.password)
        assert isinstance(page, Page) and page.url.endswith("/account/security")


async def test_p03_p18_change_password_needs_the_current_one_and_signs_other_devices_out(
    gateway: RunningGateway,
) -> None:
    other, _ = await _security(gateway)
    browser, page = await _security(gateway)
    async with other, browser:
        form = form_of(page, "/account/security/password")
        wrong = await post(
            browser, page, form, current="not it", new=NEW_PASSWORD, again=NEW_PASSWORD
        )
        assert wrong.status == 400 and "not your current password" in wrong.text
        differ = await post(
            browser, page, form, current=AMELIA.password, new=NEW_PASSWORD, again="other"
        )
        assert differ.status == 400 and "not the same" in differ.text
        weak = await post(browser, page, form, current=AMELIA.password, new="short", again="short")
        assert weak.status == 400 and "at least 12 characters" in weak.text
        done = await post(
            browser, page, form, current=AMELIA.password, new=NEW_PASSWORD, again=NEW_PASSWORD
        )
        assert done.status == 200 and "Your password is changed" in done.text
        gone = await other.get(f"{gateway.base}/account/security")
        assert isinstance(gone, Page) and "/auth/login" in gone.url
        refused = await other.login(gone, AMELIA.username, AMELIA.password)
        assert isinstance(refused, Page) and refused.status == 401
        accepted = await other.login(gone, AMELIA.username, NEW_PASSWORD)
        assert isinstance(accepted, Page) and accepted.url.endswith("/account/security")
    user = await services(gateway).users.by_username(AMELIA.username)
    assert user is not None
    mine = await audit_events(gateway, agent=f"urn:fhir-gateway:user|{user.user_id}")
    assert any(details(e).get("password") == "changed" for e in mine)  # recorded (P-18)
    assert any(
        e["outcome"] != "0" and "security page" in e.get("outcomeDesc", "") for e in mine
    )  # and so was the wrong current password


async def test_p04_p18_two_step_verification_on_then_new_codes_then_off(
    gateway: RunningGateway,
) -> None:
    browser, page = await _security(gateway, MARIA)
    async with browser:
        setup = await browser.get(
            f"{gateway.base}/auth/mfa/setup?next=%2Faccount%2Fsecurity%3Fdone%3Dmfa-on"
        )
        assert isinstance(setup, Page)
        secret = setup.html.split('class="secret">')[1].split("<")[0]
        form = setup.forms[0]
        codes = await post(browser, setup, form, code=mfa.current_code(secret))
        assert (
            "recovery codes" in codes.text and 'href="/account/security?done=mfa-on"' in codes.html
        )
        page = await browser.get(f"{gateway.base}/account/security?done=mfa-on")
        assert isinstance(page, Page) and "Two-step verification is on." in page.text
        form = form_of(page, "/account/security/recovery-codes")
        wrong = await post(browser, page, form, current="wrong password here")
        assert wrong.status == 400
        renewed = await post(browser, page, form, current=MARIA.password)
        assert "New recovery codes" in renewed.text and renewed.html.count("<li><code>") == 10
        off = await browser.session.post(
            f"{gateway.base}/account/security/mfa/off",
            data={"csrf": csrf_of(page), "current": MARIA.password},
            allow_redirects=False,
        )
        assert off.status == 303
    user = await services(gateway).users.by_username(MARIA.username)
    assert user is not None and not user.mfa_enrolled
    mine = await audit_events(gateway, agent=f"urn:fhir-gateway:user|{user.user_id}")
    changes = [details(e)["second-factor"] for e in mine if "second-factor" in details(e)]
    assert changes == ["removed", "new recovery codes", "enrolled"]  # each recorded (P-18)


async def test_p04_a_deployment_that_requires_mfa_does_not_let_a_patient_turn_it_off(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        mfa_required_for_patients=True,
    )
    await ensure_user(gateway, AMELIA)
    auth = services(gateway)
    user = await auth.users.by_username(AMELIA.username)
    assert user is not None
    secret = mfa.new_secret()
    await auth.users.enrol_mfa(user.user_id, secret, [])
    async with Browser(gateway.base) as browser:
        page = await browser.get(f"{gateway.base}/account/security")
        assert isinstance(page, Page)
        page = await browser.login(page, AMELIA.username, AMELIA.password)
        assert isinstance(page, Page) and "/auth/mfa" in page.url
        page = await post(browser, page, page.forms[0], code=mfa.current_code(secret))
        assert page.url.endswith("/account/security")
        assert "Turn off two-step verification" not in page.text
        async with browser.session.post(
            f"{gateway.base}/account/security/mfa/off",
            data={"csrf": csrf_of(page), "current": AMELIA.password},
        ) as response:
            assert response.status == 403
    user = await auth.users.by_username(AMELIA.username)
    assert user is not None and user.mfa_enrolled
