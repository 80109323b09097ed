"""Erasure of a patient (C-22), through the command an operator runs: every app loses access at
once, the consents are withdrawn (kept as evidence), and the erasure itself is recorded."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.audit.store import AuditQuery, AuditReader
from tests.conftest import SESSION_KEK, RunningGateway
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
