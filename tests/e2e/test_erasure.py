"""Erasure of a patient (C-22), through the command an operator runs and the admin API: every app
loses access at once, the consents are withdrawn (kept as evidence), the audit trail is kept and
the erasure itself is recorded."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from gateway.audit.codes import USER_SYSTEM
from gateway.audit.store import AuditQuery, AuditReader
from tests.conftest import SESSION_KEK, RunningGateway
from tests.support.browser import Page
from tests.support.pages import signed_in
from tests.support.tokens import AMELIA as AMELIA_USER
from tests.support.tokens import PUBLIC_APP, flow_token, services

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"


async def _cli(gateway: RunningGateway, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "FHIR_GATEWAY_MONGODB_URI": str(gateway.settings.mongodb_uri),
        "FHIR_GATEWAY_MONGODB_DATABASE": gateway.settings.mongodb_database,
        "FHIR_GATEWAY_UPSTREAM_URL": str(gateway.settings.upstream_url),
        "FHIR_GATEWAY_PUBLIC_BASE_URL": gateway.base,
        "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": SESSION_KEK,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fhir-gateway"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_c22_erasure_revokes_every_app_and_withdraws_the_consents(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(
        gateway,
        user=AMELIA_USER,
        client_id=PUBLIC_APP,
        scope="launch/patient offline_access patient/*.rs",
    )
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    url = f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_count=1"
    async with http.get(url, headers=headers) as response:
        assert response.status == 200 and (await response.json(content_type=None))["entry"]

    status, output = await _cli(gateway, "patients", "erase", "--patient", AMELIA)
    assert status == 0, output
    assert f"Patient/{AMELIA}: 1 app grant(s) revoked, 0 cache key(s) destroyed" in output
    assert "1 consent(s) withdrawn" in output

    async with http.get(url, headers=headers) as response:
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
    consents = await services(gateway).db["consents"].find({"patient_id": AMELIA}).to_list()
    assert consents and all(c["status"] == "inactive" for c in consents)  # kept as evidence
    # The erasure is in the audit trail, which is kept (C-22, A-01): a Patient Record delete.
    erased = await AuditReader(services(gateway).db).search(AuditQuery(patient=AMELIA, count=100))
    deletes = [
        e
        for e in erased.events
        if e["type"]["code"] == "110110" and e["subtype"][0]["code"] == "delete"
    ]
    assert len(deletes) == 1
    assert deletes[0]["agent"][0]["who"]["identifier"]["value"] == "cli"


async def test_c22_p13_an_erasure_names_a_patient_id_not_a_query(gateway: RunningGateway) -> None:
    status, output = await _cli(
        gateway, "patients", "erase", "--patient", orjson.dumps({"$gt": ""}).decode()
    )
    assert status != 0
    assert "patient id" in output


async def test_c22_erase_by_id_and_the_patient_still_sees_their_history(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """``fhir-gateway patients erase ID``: the app is cut off and its Consent ends, and the
    audit trail is kept — the patient's "Who saw my data" still shows what was sent before,
    and the erasure itself."""
    tokens = await flow_token(gateway, user=AMELIA_USER, scope="launch/patient patient/*.rs")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{gateway.fhir}/Patient/{AMELIA}", headers=headers) as response:
        assert response.status == 200
    status, output = await _cli(gateway, "patients", "erase", AMELIA)
    assert status == 0 and f"Patient/{AMELIA}: 1 app grant(s) revoked" in output, output
    browser, page = await signed_in(gateway, AMELIA_USER, "/account/apps")
    async with browser:
        assert "No app is connected" in page.text
        history = await browser.get(f"{gateway.base}/account/history")
        assert isinstance(history, Page)
        assert "Data of this record erased" in history.text
        assert "1 record(s): Patient" in history.text  # what was sent before is still shown


async def test_c22_p08_an_administrator_erases_through_the_admin_api(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """``POST /admin/patients/{id}/erase``: refused without the session's CSRF token (nothing
    changes), done with it; the app is cut off and the erasure is recorded against the
    administrator, beside the trail it keeps."""
    from tests.e2e.test_admin import _admin_browser

    tokens = await flow_token(gateway, user=AMELIA_USER, scope="launch/patient patient/*.rs")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    url = f"{gateway.fhir}/Patient/{AMELIA}"
    admin = await _admin_browser(gateway)
    try:
        erase = f"{gateway.base}/admin/patients/{AMELIA}/erase"
        async with admin.session.post(erase) as response:
            assert response.status == 403  # no CSRF header
        async with http.get(url, headers=headers) as response:
            assert response.status == 200  # nothing was erased
        async with admin.session.get(f"{gateway.base}/auth/session") as response:
            csrf = (await response.json())["csrf"]
        async with admin.session.post(
            f"{gateway.base}/admin/patients/{quote('$where: 1')}/erase",
            headers={"X-CSRF-Token": csrf},
        ) as response:
            assert response.status == 400  # a patient id, never an operator (P-13)
        async with admin.session.post(erase, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == 200
            done = await response.json()
    finally:
        await admin.close()
    assert done["patient"] == AMELIA and done["grants_revoked"] == 1
    assert len(done["consents_withdrawn"]) == 1
    async with http.get(url, headers=headers) as response:
        assert response.status == 401
    user = await services(gateway).users.by_username("admin2")
    assert user is not None
    trail = await AuditReader(services(gateway).db).search(AuditQuery(patient=AMELIA, count=100))
    deletes = [
        e
        for e in trail.events
        if e["type"]["code"] == "110110" and e["subtype"][0]["code"] == "delete"
    ]
    assert len(deletes) == 1
    assert deletes[0]["agent"][0]["who"]["identifier"] == {
        "system": USER_SYSTEM,
        "value": user.user_id,
    }
    assert any(e["type"]["code"] == "rest" for e in trail.events)  # the read before is kept
