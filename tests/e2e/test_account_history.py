""" "Who saw my data" through HTTP (C-20, A-11, A-12): the patient's audit trail, newest first,
filtered and paged; the CSV and JSON downloads are the audit store's accounting of disclosures
row for row; nobody sees another patient's history."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Any

import aiohttp
import pytest

from gateway.audit.disclosures import COLUMNS, disclosure
from tests.conftest import RunningGateway
from tests.e2e.conftest import register_client
from tests.support.browser import Browser, Page, text_of
from tests.support.pages import audit_events, signed_in
from tests.support.tokens import AMELIA, MARIA, PUBLIC_APP, flow_token, minted_token

pytestmark = pytest.mark.e2e

AMELIA_ID = "pat-amelia-rossi"
LEO_ID = "pat-leo-garcia"
OTHER_APP = "history-other-app"


async def _get(http: aiohttp.ClientSession, gateway: RunningGateway, token: str, path: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{gateway.fhir}/{path}", headers=headers) as response:
        await response.read()
        return response.status


async def _amelias_history(gateway: RunningGateway, http: aiohttp.ClientSession) -> None:
    """Amelia's app reads twice; an app she never allowed is refused once."""
    tokens = await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    assert await _get(http, gateway, tokens["access_token"], "Observation?_count=3") == 200
    assert await _get(http, gateway, tokens["access_token"], f"Patient/{AMELIA_ID}") == 200
    await register_client(gateway, OTHER_APP, trusted=False, purposes=("PATRQT",))
    stranger = await minted_token(gateway, client_id=OTHER_APP, scope="patient/*.rs")
    assert await _get(http, gateway, stranger, f"Patient/{AMELIA_ID}") == 403


def _table(page: Page) -> str:
    """The text of the history's table (not of the filters above it)."""
    if "<tbody>" not in page.html:
        return ""
    body = page.html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return Page(200, "", body, {}).text


async def test_c20_a11_the_history_shows_who_got_what_when_why_and_the_outcome_newest_first(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await _amelias_history(gateway, http)
    browser, page = await signed_in(gateway, AMELIA, "/account/history")
    async with browser:
        assert page.status == 200 and page.url.endswith("/account/history")
        text = _table(page)
        first = text.index("Refused")  # the newest: the stranger app, refused
        read = text.index("1 record(s): Patient")
        search = text.index("3 record(s): Observation")
        assert first < read < search  # newest first
        assert "Test Patient App, used by you" in text
        assert "because you asked for it, for your own use" in text
        assert "App allowed" in text and "Access given" in text
        assert "Consent changed" in text  # the consent the screen wrote
        events = await audit_events(gateway, patient=AMELIA_ID)
        assert page.html.count("<tr>") - 1 == len(events)  # every event, one row each


async def test_c20_filters_by_app_and_by_dates_and_refuses_bad_ones_with_a_page(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await _amelias_history(gateway, http)
    browser, page = await signed_in(gateway, AMELIA, "/account/history")
    async with browser:
        assert f'<option value="{PUBLIC_APP}">' in page.html  # the apps of her consents
        only = await browser.get(f"{gateway.base}/account/history?app={OTHER_APP}")
        assert isinstance(only, Page) and "Refused" in _table(only)
        assert "Test Patient App" not in _table(only) and "Nothing was sent" in _table(only)
        past = await browser.get(f"{gateway.base}/account/history?from=2020-01-01&to=2020-12-31")
        assert isinstance(past, Page) and "Nothing is recorded" in past.text
        for bad in (
            "from=yesterday",
            "from=2026-02-30",
            "from=2026-05-01&to=2026-04-01",
            "app=%7B%22%24gt%22%3A%22%22%7D",
            "older=not-a-cursor",
        ):
            refused = await browser.get(f"{gateway.base}/account/history?{bad}")
            assert isinstance(refused, Page) and refused.status == 400, bad
            assert "<h1>" in refused.html and "Traceback" not in refused.html


async def test_c20_pages_of_the_history_go_back_in_time(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(gateway, user=AMELIA, scope="launch/patient patient/*.rs")
    for _ in range(30):
        assert await _get(http, gateway, tokens["access_token"], f"Patient/{AMELIA_ID}") == 200
    browser, page = await signed_in(gateway, AMELIA, "/account/history")
    async with browser:
        assert page.html.count("<tr>") - 1 == 25 and ">Older<" in page.html
        older_link = page.html.split('class="pager"', 1)[1].split('href="', 1)[1].split('"')[0]
        older = await browser.get(f"{gateway.base}{older_link.replace('&amp;', '&')}")
        assert isinstance(older, Page) and older.status == 200 and ">Newest<" in older.html
        total = len(await audit_events(gateway, patient=AMELIA_ID))
        assert older.html.count("<tr>") - 1 == total - 25


async def test_a12_csv_and_json_downloads_are_the_audit_store_row_for_row(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await _amelias_history(gateway, http)
    store = [
        asdict(disclosure(e, AMELIA_ID)) for e in await audit_events(gateway, patient=AMELIA_ID)
    ]
    assert len(store) >= 5
    browser, _ = await signed_in(gateway, AMELIA, "/account/history")
    async with browser:
        async with browser.session.get(f"{gateway.base}/account/history.json") as response:
            assert (
                response.status == 200 and "attachment" in response.headers["Content-Disposition"]
            )
            assert json.loads(await response.read()) == store
        async with browser.session.get(f"{gateway.base}/account/history.csv") as response:
            assert response.headers["Content-Type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert tuple(rows[0]) == COLUMNS and rows == [
            {k: str(v) for k, v in r.items()} for r in store
        ]
        async with browser.session.get(
            f"{gateway.base}/account/history.json?app={OTHER_APP}"
        ) as response:
            filtered = json.loads(await response.read())
        assert filtered == [r for r in store if r["app"] == OTHER_APP] and len(filtered) == 1


async def test_c20_a11_nobody_sees_another_patients_history(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await _amelias_history(gateway, http)
    tokens = await flow_token(
        gateway, user=MARIA, patient=LEO_ID, scope="launch/patient patient/*.rs"
    )
    assert await _get(http, gateway, tokens["access_token"], "Observation?_count=2") == 200
    browser, _ = await signed_in(gateway, AMELIA, "/account/history")
    async with browser:
        for path in (
            f"/account/history?patient={LEO_ID}",
            f"/account/history.csv?patient={LEO_ID}",
            f"/account/history.json?patient={LEO_ID}",
        ):
            async with browser.session.get(f"{gateway.base}{path}") as response:
                assert response.status == 403, path
                assert "Leo" not in text_of(await response.text())  # not even his name
    browser, page = await signed_in(gateway, MARIA, f"/account/history?patient={LEO_ID}")
    async with browser:
        assert "Who saw the data of" in page.text and "Leo" in page.text
        async with browser.session.get(
            f"{gateway.base}/account/history.json?patient={LEO_ID}"
        ) as response:
            rows: list[dict[str, Any]] = json.loads(await response.read())
        leo = await audit_events(gateway, patient=LEO_ID)
        assert [r["event"] for r in rows] == [e["id"] for e in leo] and rows
        amelia = {e["id"] for e in await audit_events(gateway, patient=AMELIA_ID)}
        assert not amelia & {r["event"] for r in rows}
    async with (
        Browser(gateway.base) as anonymous,
        anonymous.session.get(
            f"{gateway.base}/account/history.json", allow_redirects=False
        ) as response,
    ):
        assert response.status == 303  # to sign in; nothing without a session
