"""The patient's own pages through HTTP, as a browser posts their forms (C-12 … C-14, C-19, C-21,
C-25, P-06, P-07, P-18): who may see and change what, CSRF, stale sessions, bad input. The
same flows in a real browser are in ``test_account_browser.py``."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from consent.model import grant_terms
from consent.store import ConsentStore
from gateway.cache.entries import COLLECTION as CACHE_ENTRIES
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.support.browser import (
    Browser,
    Form,
    Page,
    authorize_url,
    callback_params,
    pkce_pair,
)
from tests.support.clock import MovableClock
from tests.support.pages import (
    audit_events,
    csrf_of,
    details,
    form_of,
    has_form,
    post,
    signed_in,
)
from tests.support.tokens import (
    AMELIA,
    HANNAH,
    MARIA,
    PUBLIC_APP,
    REDIRECT,
    ensure_public_client,
    ensure_user,
    flow_token,
    minted_token,
    services,
)

pytestmark = pytest.mark.e2e

AMELIA_ID = "pat-amelia-rossi"
LEO_ID = "pat-leo-garcia"


async def _active_permits(gateway: RunningGateway, patient: str) -> list[dict[str, Any]]:
    consents = await ConsentStore(services(gateway).db).search(patient_id=patient, status="active")
    return [c for c in consents if c["provision"]["type"] == "permit"]


async def _observations(http: aiohttp.ClientSession, gateway: RunningGateway, token: str) -> Any:
    url = f"{gateway.fhir}/Observation?_count=5"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json(content_type=None)


async def test_c19_c12_c13_c14_connected_app_listed_then_disconnected_in_one_click(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(
        gateway, user=AMELIA, scope="launch/patient offline_access patient/*.rs"
    )
    status, bundle = await _observations(http, gateway, tokens["access_token"])
    assert status == 200 and bundle["entry"]
    for entry in bundle["entry"][:2]:  # reads by id go through the encrypted cache
        url = f"{gateway.fhir}/Observation/{entry['resource']['id']}"
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with http.get(url, headers=headers) as response:
            assert response.status == 200
    cached = services(gateway).db[CACHE_ENTRIES]
    assert await cached.count_documents({"owner": f"Patient/{AMELIA_ID}"}) == 2
    browser, page = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        assert page.url == f"{gateway.base}/account/apps" and page.status == 200
        text = page.text
        assert "Test Patient App" in text and "Lab results" in text and "Vital signs" in text
        assert "Sensitive information Not shared" in text  # nothing sensitive was ticked
        assert re.search(r"Last got data \w+ \d+, \d{4}, [\d:]+ [AP]M UTC", text)  # the audit
        assert "because you asked for it" in text and "Nothing is removed" in text
        assert "Showing your own data ( Amelia Grace Rossi )" in text
        form = form_of(page, "/account/apps/disconnect", client_id=PUBLIC_APP)
        done = await post(browser, page, form)  # one click, no password (C-14)
        assert done.url.startswith(f"{gateway.base}/account/apps?")
        assert "Test Patient App is disconnected" in done.text
        assert not has_form(done, "/account/apps/disconnect")
    assert not await _active_permits(gateway, AMELIA_ID)
    assert await cached.count_documents({"owner": f"Patient/{AMELIA_ID}"}) == 0  # purged (C-13)
    history = await ConsentStore(services(gateway).db).history(
        (await ConsentStore(services(gateway).db).search(patient_id=AMELIA_ID))[0]["id"]
    )
    assert history[0].change is not None and history[0].change.channel.value == "account-pages"
    assert history[0].change.by == "Patient/pat-amelia-rossi"
    # C-12: the app's very next call gets nothing: its token is revoked (C-13) ...
    status, _ = await _observations(http, gateway, tokens["access_token"])
    assert status == 401
    async with http.post(
        f"{gateway.base}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": PUBLIC_APP,
        },
    ) as response:
        assert response.status == 400  # ... and so is its refresh token
    # ... and a token it got some other way releases nothing either: no consent (C-03).
    fresh = await minted_token(gateway, client_id=PUBLIC_APP, scope="patient/*.rs")
    status, bundle = await _observations(http, gateway, fresh)
    matches = [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]
    assert status == 200 and not matches and bundle.get("total", 0) == 0
    # The audit trail holds the withdrawal (by whom, through what) and the tokens ended (P-18).
    events = await audit_events(gateway, patient=AMELIA_ID)
    withdrawn = [e for e in events if details(e).get("channel") == "account-pages"]
    assert len(withdrawn) == 1 and withdrawn[0]["subtype"][0]["code"] == "update"
    assert withdrawn[0]["agent"][0]["who"]["reference"] == "Patient/pat-amelia-rossi"
    revoked = [e for e in events if e["subtype"][0]["code"] == "110135"]
    assert revoked and details(revoked[0]).get("client_id") == PUBLIC_APP


async def test_p07_c14_disconnect_without_or_with_a_wrong_csrf_token_changes_nothing(
    gateway: RunningGateway,
) -> None:
    await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    browser, page = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        form = form_of(page, "/account/apps/disconnect", client_id=PUBLIC_APP)
        for csrf in ("", "forged-token"):
            refused = await post(browser, page, form, csrf=csrf)
            assert refused.status == 403 and "nothing was changed" in refused.text
        data = [(k, v) for k, v in form.data() if k != "csrf"]
        async with browser.session.post(
            f"{gateway.base}/account/apps/disconnect", data=data
        ) as response:
            assert response.status == 403
    assert len(await _active_permits(gateway, AMELIA_ID)) == 1


async def test_c19_p08_one_patient_cannot_see_or_disconnect_another_patients_app(
    gateway: RunningGateway,
) -> None:
    await flow_token(gateway, user=MARIA, patient=LEO_ID, scope="launch/patient patient/*.rs")
    assert len(await _active_permits(gateway, LEO_ID)) == 1
    browser, page = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        assert "Test Patient App" not in page.text  # Leo's app is not on Amelia's page
        seen = await browser.get(f"{gateway.base}/account/apps?patient={LEO_ID}")
        assert isinstance(seen, Page) and seen.status == 403 and "Test Patient App" not in seen.text
        security = await browser.get(f"{gateway.base}/account/security")
        assert isinstance(security, Page)
        token = csrf_of(security)  # Amelia's own, valid token
        for patient, status in ((LEO_ID, 403), (AMELIA_ID, 400)):
            async with browser.session.post(
                f"{gateway.base}/account/apps/disconnect",
                data={"csrf": token, "patient": patient, "client_id": PUBLIC_APP},
            ) as response:
                assert response.status == status, await response.text()
    assert len(await _active_permits(gateway, LEO_ID)) == 1


async def test_c19_c25_a_parent_sees_and_disconnects_the_childs_apps_not_another_patients(
    gateway: RunningGateway,
) -> None:
    await flow_token(gateway, user=MARIA, patient=LEO_ID, scope="launch/patient patient/*.rs")
    await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    browser, page = await signed_in(gateway, MARIA, "/account/apps")
    async with browser:
        assert "Showing your own data" in page.text and "No app is connected" in page.text
        assert any(link in page.html for link in (f"?patient={LEO_ID}",))  # the switcher
        leo = await browser.get(f"{gateway.base}/account/apps?patient={LEO_ID}")
        assert isinstance(leo, Page) and leo.status == 200
        assert "Showing the data of" in leo.text and "Leo" in leo.text
        assert "Apps connected to the record of" in leo.text and "Test Patient App" in leo.text
        other = await browser.get(f"{gateway.base}/account/apps?patient={AMELIA_ID}")
        assert isinstance(other, Page) and other.status == 403
        async with browser.session.post(
            f"{gateway.base}/account/apps/disconnect",
            data={"csrf": csrf_of(leo), "patient": AMELIA_ID, "client_id": PUBLIC_APP},
        ) as response:
            assert response.status == 403  # not a patient Maria represents
        done = await post(browser, leo, form_of(leo, "/account/apps/disconnect"))
        assert "Test Patient App is disconnected" in done.text and "Leo" in done.text
    assert not await _active_permits(gateway, LEO_ID)
    assert len(await _active_permits(gateway, AMELIA_ID)) == 1


async def test_p06_c14_a_stale_session_cannot_disconnect(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    clock = MovableClock()
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        session_idle_seconds=60,
        clock=clock,
    )
    await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    browser, page = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        form = form_of(page, "/account/apps/disconnect")
        clock.advance(61)  # idle longer than the session may be
        refused = await post(browser, page, form)
        assert refused.status == 401 and "nothing was changed" in refused.text
        again = await browser.get(f"{gateway.base}/account/apps")
        assert isinstance(again, Page) and again.url.startswith(f"{gateway.base}/auth/login")
    assert len(await _active_permits(gateway, AMELIA_ID)) == 1


async def test_p07_a_form_of_an_ended_session_is_refused_after_signing_in_again(
    gateway: RunningGateway,
) -> None:
    await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    browser, page = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        old = form_of(page, "/account/apps/disconnect")
        security = await browser.get(f"{gateway.base}/account/security")
        assert isinstance(security, Page)
        await post(browser, security, form_of(security, "/account/security/sign-out-everywhere"))
        page = await browser.login(
            await _login_page(browser, gateway), AMELIA.username, AMELIA.password
        )
        assert isinstance(page, Page)
        refused = await post(browser, page, old)  # the old session's CSRF token
        assert refused.status == 403
    assert len(await _active_permits(gateway, AMELIA_ID)) == 1


async def _login_page(browser: Browser, gateway: RunningGateway) -> Page:
    page = await browser.get(f"{gateway.base}/account/apps")
    assert isinstance(page, Page) and "/auth/login" in page.url
    return page


async def test_c19_pages_need_a_signed_in_patient(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/account", "/account/apps", "/account/security"):
            async with http.get(f"{gateway.base}{path}", allow_redirects=False) as response:
                assert response.status == 303
                target = response.headers["Location"]
                assert target.startswith("/auth/login?next=") or target == "/account/apps"
    await ensure_user(gateway, AMELIA)
    for evil in ("https://evil.example/account", "//evil.example/account", "/account/../auth/x"):
        async with Browser(gateway.base) as browser:
            page = await browser.get(f"{gateway.base}/auth/login?next={quote(evil)}")
            assert isinstance(page, Page)
            page = await browser.login(page, AMELIA.username, AMELIA.password)
            assert isinstance(page, Page) and page.url == f"{gateway.base}/auth/signed-in", evil
    browser, page = await signed_in(gateway, HANNAH, "/account/apps")
    async with browser:
        assert page.status == 403 and "for patients" in page.text
        security = await browser.get(f"{gateway.base}/account/security")
        assert isinstance(security, Page) and security.status == 200  # their account's own page


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/account/apps?patient=../../Patient/x", 403),
        ("/account/apps?patient=%7B%22%24gt%22%3A%22%22%7D", 403),
        (f"/account/apps?patient={'x' * 5000}", 403),
        ("/account/apps?disconnected=%00%ff", 200),
        ("/account/nothing-here", 404),
    ],
)
async def test_p22_bad_input_gets_a_readable_page(
    gateway: RunningGateway, path: str, status: int
) -> None:
    browser, _ = await signed_in(gateway, AMELIA, "/account/security")
    async with browser:
        page = await browser.get(f"{gateway.base}{path}")
        assert isinstance(page, Page) and page.status == status
        assert "Traceback" not in page.html and "<h1>" in page.html


async def test_p22_a_link_cannot_make_the_page_announce_a_disconnect(
    gateway: RunningGateway,
) -> None:
    """The notice after a disconnect names a registered app; any other value shows nothing."""
    await ensure_public_client(gateway)
    browser, _ = await signed_in(gateway, AMELIA, "/account/security")
    async with browser:
        for value in ("Your%20bank%20account", "%3Cb%3Eno-such-app%3C%2Fb%3E"):
            page = await browser.get(f"{gateway.base}/account/apps?disconnected={value}")
            assert isinstance(page, Page) and page.status == 200
            assert 'role="status"' not in page.html and "is disconnected" not in page.text
        page = await browser.get(f"{gateway.base}/account/apps?disconnected={PUBLIC_APP}")
        assert isinstance(page, Page) and "Test Patient App is disconnected" in page.text


async def test_p22_bad_form_fields_change_nothing_and_get_a_page(gateway: RunningGateway) -> None:
    await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    browser, page = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        token = csrf_of(page)
        for fields in (
            {"client_id": '{"$gt": ""}'},
            {"client_id": ""},
            {"client_id": "x" * 10_000},
            {"client_id": "no-such-app"},
        ):
            async with browser.session.post(
                f"{gateway.base}/account/apps/disconnect",
                data={"csrf": token, "patient": AMELIA_ID, **fields},
            ) as response:
                assert response.status == 400, fields
                assert "text/html" in response.headers["Content-Type"]
    assert len(await _active_permits(gateway, AMELIA_ID)) == 1


async def test_pages_speak_the_browsers_language_and_the_switcher_keeps_a_choice(
    gateway: RunningGateway,
) -> None:
    await ensure_user(gateway, AMELIA)
    async with aiohttp.ClientSession(
        headers={"Accept-Language": "es-ES,es;q=0.9"}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as spanish:
        async with spanish.get(f"{gateway.base}/auth/login", allow_redirects=True) as response:
            html = await response.text()
        assert '<html lang="es">' in html and "Iniciar sesión" in html and "Usuario" in html
        assert 'hreflang="en"' in html  # the switcher offers English
    browser, page = await signed_in(gateway, AMELIA, "/account/security")
    async with browser:
        assert '<html lang="en">' in page.html and "Recent sign-ins" in page.text
        spanish_page = await browser.get(f"{gateway.base}/account/security?lang=es")
        assert isinstance(spanish_page, Page) and "Inicios de sesión recientes" in spanish_page.text
        kept = await browser.get(f"{gateway.base}/account/apps")
        assert isinstance(kept, Page) and '<html lang="es">' in kept.html  # the cookie kept it
        assert "Aplicaciones conectadas a su historial" in kept.text


async def test_c25_a_representation_ended_in_the_ehr_closes_the_childs_pages_at_once(
    gateway: RunningGateway, fresh_upstream: Stack, http: aiohttp.ClientSession
) -> None:
    """The account pages read whom a parent represents afresh on every page: no time bound."""
    link_url = f"{fresh_upstream.upstream.base_url}/RelatedPerson/relperson-maria-garcia"
    browser, page = await signed_in(gateway, MARIA, f"/account/apps?patient={LEO_ID}")
    async with browser:
        assert page.status == 200 and "Leo" in page.text
        async with http.get(link_url) as response:
            link = await response.json(content_type=None)
        async with http.put(
            link_url,
            data=json.dumps({**link, "active": False}),
            headers={"Content-Type": "application/fhir+json"},
        ) as response:
            assert response.status == 200
        try:
            gone = await browser.get(f"{gateway.base}/account/apps?patient={LEO_ID}")
            assert isinstance(gone, Page) and gone.status == 403
            own = await browser.get(f"{gateway.base}/account/apps")
            assert (
                isinstance(own, Page) and own.status == 200 and "Show the data of" not in own.text
            )
        finally:
            fresh_upstream.upstream.reset()


async def test_c05_c26_c19_the_consent_records_what_the_screen_showed_and_the_pages_say_it_back(
    gateway: RunningGateway,
) -> None:
    """Tick two kinds and one sensitive category, pick 30 days: the token, the Consent and the
    Connected apps page all say exactly that, with the end date the screen showed."""
    await ensure_user(gateway, AMELIA)
    await ensure_public_client(gateway)
    verifier, challenge = pkce_pair()
    async with Browser(gateway.base) as browser:
        page = await browser.get(
            authorize_url(
                gateway.base,
                response_type="code",
                client_id=PUBLIC_APP,
                redirect_uri=REDIRECT,
                scope="launch/patient patient/*.rs",
                state="s",
                aud=gateway.fhir,
                code_challenge=challenge,
                code_challenge_method="S256",
            )
        )
        assert isinstance(page, Page)
        page = await browser.login(page, AMELIA.username, AMELIA.password)
        assert isinstance(page, Page) and "/auth/consent" in page.url
        form = page.forms[0]
        kinds = [v for n, v, on in form.checkboxes if n == "kind"]
        assert _on_by_default(form, "kind") and not any(
            on for n, _, on in form.checkboxes if n == "sensitive"
        )  # kinds ticked, sensitive categories not
        assert {"lab", "vitals", "conditions", "other"} <= set(kinds)
        shown_end = page.html.split('value="30d"', 1)[1].split("until ", 1)[1].split("<", 1)[0]
        data = [(k, v) for k, v in form.fields] + [
            ("kind", "lab"),
            ("kind", "vitals"),
            ("sensitive", "hiv"),
            ("expiry", "30d"),
            ("decision", "approve"),
        ]
        location = await browser.submit(page, form, data)
        assert isinstance(location, str)
        code = callback_params(location)["code"]
        async with browser.session.post(
            f"{gateway.base}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": PUBLIC_APP,
                "code_verifier": verifier,
            },
        ) as response:
            granted = (await response.json())["scope"].split()
    assert "patient/*.rs" not in granted and "patient/DiagnosticReport.rs" in granted
    assert any(
        s.startswith("patient/Observation.rs?category=") and s.endswith("|vital-signs")
        for s in granted
    )
    assert "patient/Condition.rs" not in granted
    (consent,) = await _active_permits(gateway, AMELIA_ID)
    terms = grant_terms(consent)
    assert set(terms.types) >= {"DiagnosticReport", "Specimen"} and "Condition" not in terms.types
    assert {c.rpartition("|")[2] for c in terms.codes["Observation"]} == {
        "laboratory",
        "vital-signs",
    }
    assert terms.labels == ("HIV",)
    end = datetime.fromisoformat(str(terms.end).replace("Z", "+00:00"))
    assert shown_end == f"{end:%B} {end.day}, {end.year}"
    browser, apps = await signed_in(gateway, AMELIA, "/account/apps")
    async with browser:
        listed = apps.text.split("It may see", 1)[1].split("Sensitive information", 1)[0]
        assert listed.split() == ["Lab", "results", "Vital", "signs"]
        assert "Sensitive information HIV" in apps.text
        assert f"Until {shown_end}" in apps.text  # the same date, on the page


def _on_by_default(form: Form, name: str) -> bool:
    """Every checkbox called ``name`` is ticked as the page comes."""
    return all(on for n, _, on in form.checkboxes if n == name)


_POST_FORM = re.compile(r"<form\b[^>]*method=\"post\"[^>]*>(.*?)</form>", re.S | re.I)
_ASSET = re.compile(r"<(?:link|img|source)\b[^>]*\b(?:href|src)=\"([^\"]*)\"", re.I)


def _runs_no_script_and_loads_nothing_from_elsewhere(page: Page) -> None:
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, csp
    assert "script-src" not in csp and "unsafe-inline" not in csp, csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "no-store" in page.headers["Cache-Control"]
    html = page.html.lower()
    assert "<script" not in html and "<style" not in html and " style=" not in html
    assert not re.search(r"<[^>]+\son[a-z]+=", html)  # no event handlers
    assets = _ASSET.findall(page.html)
    assert assets, "the check saw no stylesheet"
    assert all(a.startswith("data:") or re.match(r"/[^/]", a) for a in assets), assets


async def test_p07_every_account_page_runs_no_script_loads_nothing_from_elsewhere_and_says_whose(
    gateway: RunningGateway,
) -> None:
    """Each page of the account, for oneself and for a child, in both languages: a CSP without
    scripts and without framing, no script, style or asset of its own or from elsewhere in the
    HTML, a CSRF token in every form that changes anything, and the name of whose data it is."""
    await flow_token(gateway, user=MARIA, patient=LEO_ID, scope="launch/patient patient/*.rs")
    pages = [
        (path, query, "Leo" if query else "Maria")
        for path in ("/account/apps", "/account/history")
        for query in ("", f"patient={LEO_ID}")
    ] + [("/account/security", "", "(maria)")]  # the account's own page, no patient to choose
    browser, _ = await signed_in(gateway, MARIA, "/account/apps")
    async with browser:
        for lang in ("en", "es"):
            for path, query, whose in pages:
                url = f"{gateway.base}{path}?{'&'.join(filter(None, (query, f'lang={lang}')))}"
                page = await browser.get(url)
                assert isinstance(page, Page) and page.status == 200, url
                assert f'<html lang="{lang}">' in page.html
                _runs_no_script_and_loads_nothing_from_elsewhere(page)
                forms = _POST_FORM.findall(page.html)
                assert all('name="csrf"' in form for form in forms), url
                if path.endswith("security"):
                    assert forms and whose in page.text  # signed in as ...
                else:
                    assert re.search(rf'class="whose"[^>]*>.*?{whose}', page.html, re.S), url
