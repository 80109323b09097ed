"""The access log names no patient and holds no search (SECURITY.md P-14): FHIR paths by
interaction and type with ids taken out, a followed paging link as ``_page`` without its token,
other routes as the route they matched, never a query string."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from gateway.fhir.interaction import path_shape
from tests.conftest import RunningGateway
from tests.e2e.conftest import TRUSTED_APP, register_client
from tests.support.tokens import minted_token

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/fhir", "/fhir"),
        ("/fhir/metadata", "/fhir/metadata"),
        ("/fhir/Patient", "/fhir/Patient"),
        ("/fhir/Patient/pat-amelia-rossi", "/fhir/Patient/{id}"),
        ("/fhir/Patient/pat-amelia-rossi/_history/3", "/fhir/Patient/{id}/_history/{vid}"),
        ("/fhir/Patient/pat-amelia-rossi/Observation", "/fhir/Patient/{id}/Observation"),
        ("/fhir/Patient/pat-amelia-rossi/$everything", "/fhir/Patient/{id}/$everything"),
        ("/fhir/Patient/_search", "/fhir/Patient/_search"),
        ("/fhir/Patient/_history", "/fhir/Patient/_history"),
        ("/fhir/Observation/$validate", "/fhir/Observation/$validate"),
        ("/fhir/_page/p1.c2VhcmNoLWZvci1hbWVsaWE", "/fhir/_page"),
        ("/fhir/_page/p1.abc/more", "/fhir/_page"),
        # Whatever the caller puts where no id belongs is not written either.
        ("/fhir/pat-amelia-rossi", "/fhir/{?}"),
        ("/fhir/Patient/x/pat-amelia-rossi", "/fhir/Patient/{id}/{?}"),
        ("/fhir/Patient/x/Observation/pat-amelia-rossi", "/fhir/Patient/{id}/Observation/{id}"),
        ("/fhir/Patient//pat-amelia-rossi", "/fhir/Patient/{id}"),
    ],
)
def test_p14_fhir_paths_are_logged_by_shape(path: str, shape: str) -> None:
    assert path_shape(path) == shape


async def test_p14_the_access_log_names_no_patient_and_holds_no_paging_token(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    await register_client(gateway, TRUSTED_APP, trusted=True)
    token = await minted_token(gateway, client_id=TRUSTED_APP, purposes=("TREAT",))
    headers = {"Authorization": f"Bearer {token}"}
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{gateway.fhir}/Patient/{AMELIA}") as response:
            assert response.status == 200
        search = f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_count=1"
        async with http.get(search) as response:
            bundle = await response.json()
        page = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
        async with http.get(page) as response:
            assert response.status == 200
        async with http.get(f"{gateway.fhir}/Patient/{AMELIA}/_history/1") as response:
            pass
        async with http.get(f"{gateway.base}/admin/consents/of-{AMELIA}/history") as response:
            pass
        async with http.get(f"{gateway.base}/no-such-route/{AMELIA}") as response:
            assert response.status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 6, lines
    logged = "\n".join(lines)
    assert AMELIA not in logged
    assert page.rsplit("/", 1)[1] not in logged
    assert "?" not in logged.replace("{?}", "")  # no query string
    assert '"GET /fhir/Patient/{id}" 200' in lines[0]
    assert '"GET /fhir/Observation" 200' in lines[1]
    assert '"GET /fhir/_page" 200' in lines[2]
    assert '"GET /fhir/Patient/{id}/_history/{vid}"' in lines[3]
    assert "GET /admin/consents/{consent_id}/history" in lines[4]
    assert '"GET {unmatched}" 404' in lines[5]
