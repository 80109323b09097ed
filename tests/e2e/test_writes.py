"""Writes and edge cases of the FHIR API: every write passes the checks a read would (scopes with
their restrictions, the compartment, consent on what is answered), and client mistakes are clear
errors, never a 500."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RunningGateway, Stack
from tests.e2e.conftest import SessionFor

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"
JSON = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}
MERGE = {"Content-Type": "application/merge-patch+json"}
VITAL = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


async def _amelia(
    session_for: SessionFor, scope: str = "patient/*.cruds", **claims: Any
) -> aiohttp.ClientSession:
    return await session_for(
        scope=scope, patient=AMELIA, acts_for=(AMELIA,), fhir_user=f"Patient/{AMELIA}", **claims
    )


async def _status(response: aiohttp.ClientResponse) -> tuple[int, Any]:
    raw = await response.read()
    return response.status, orjson.loads(raw) if raw else None


async def test_s28_a_granular_scope_limits_writes_too(
    gateway: RunningGateway, session_for: SessionFor, fresh_upstream: Stack
) -> None:
    app = await _amelia(session_for, scope=f"patient/Observation.rds?category={VITAL}")
    async with app.delete(f"{gateway.fhir}/Observation/obs-amelia-rossi-17") as response:
        status, _ = await _status(response)
    assert status == 404  # a laboratory result: outside the scope's restriction
    async with app.delete(f"{gateway.fhir}/Observation/obs-amelia-rossi-1") as response:
        assert response.status in (200, 204)


async def test_s26_a_resource_shared_with_another_patient_cannot_be_deleted(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    shared = {
        "resourceType": "Observation",
        "id": "obs-shared-with-daniel",
        "status": "final",
        "code": {"text": "shared"},
        "subject": {"reference": f"Patient/{AMELIA}"},
        "performer": [{"reference": "Patient/pat-daniel-novak"}],
    }
    upstream = fresh_upstream.upstream.base_url
    async with http.put(
        f"{upstream}/Observation/{shared['id']}", data=orjson.dumps(shared), headers=JSON
    ) as response:
        assert response.status in (200, 201)
    app = await _amelia(session_for)
    async with app.delete(f"{gateway.fhir}/Observation/{shared['id']}") as response:
        assert response.status == 404
    async with http.get(f"{upstream}/Observation/{shared['id']}") as response:
        assert response.status == 200  # still there


async def test_c03_c24_a_write_without_consent_neither_writes_nor_reads_back(
    gateway: RunningGateway, session_for: SessionFor, fresh_upstream: Stack
) -> None:
    """A third-party app without the patient's consent may not write to the record (C-24), so it
    cannot read a resource back by writing a no-op patch to it either (C-03)."""
    app = await _amelia(session_for, trusted=False, client_id="diary-app", purposes=("PATRQT",))
    url = f"{gateway.fhir}/Observation/obs-amelia-rossi-1"
    async with app.get(url) as response:
        assert response.status == 403
    noop = [{"op": "test", "path": "/status", "value": "final"}]
    async with app.patch(url, data=orjson.dumps(noop), headers=PATCH) as response:
        status, body = await _status(response)
    assert status == 403
    assert body is not None and "no consent" in body["issue"][0]["diagnostics"]
    assert "valueQuantity" not in orjson.dumps(body).decode()


@pytest.mark.parametrize(
    ("operations", "content_type", "expected"),
    [
        (
            [{"op": "replace", "path": "", "value": {"resourceType": "Observation", "id": "x"}}],
            PATCH,
            403,
        ),
        ([{"op": "replace", "path": "/id", "value": "obs-daniel-novak-1"}], PATCH, 403),
        ([{"op": "move", "from": "/id", "path": "/note"}], PATCH, 403),
        ({"resourceType": "Parameters", "parameter": []}, JSON, 415),  # FHIRPath Patch
        (
            {"resourceType": "Parameters", "parameter": []},
            {"Content-Type": "application/json"},
            415,
        ),
        ({"id": "obs-daniel-novak-1"}, MERGE, 403),
        ({"resourceType": "Condition"}, MERGE, 403),
        ([{"op": "remove", "path": "/note"}], MERGE, 400),  # a merge patch is an object
        ({"status": "amended"}, PATCH, 400),  # a JSON Patch is an array
    ],
)
async def test_a_patch_cannot_change_what_a_resource_is(
    gateway: RunningGateway,
    session_for: SessionFor,
    operations: Any,
    content_type: dict[str, str],
    expected: int,
) -> None:
    system = await session_for(
        client_id="test-system", scope="system/*.cruds", patient=None, acts_for=(), fhir_user=None
    )
    async with system.patch(
        f"{gateway.fhir}/Observation/obs-amelia-rossi-2",
        data=orjson.dumps(operations),
        headers=content_type,
    ) as response:
        status, body = await _status(response)
    assert status == expected
    assert body["resourceType"] == "OperationOutcome"


async def test_a_patch_in_another_media_type_is_told_the_two_it_may_use(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    app = await _amelia(session_for)
    async with app.patch(
        f"{gateway.fhir}/Observation/obs-amelia-rossi-2",
        data=orjson.dumps({"resourceType": "Observation", "status": "amended"}),
        headers=JSON,
    ) as response:
        status, outcome = await _status(response)
    assert status == 415
    diagnostics = outcome["issue"][0]["diagnostics"]
    assert "application/json-patch+json" in diagnostics
    assert "application/merge-patch+json" in diagnostics


@pytest.mark.parametrize("content_type", [MERGE, {"Content-Type": "application/json"}])
async def test_a_merge_patch_passes_the_checks_a_json_patch_passes(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
    content_type: dict[str, str],
) -> None:
    """RFC 7396 (plain application/json objects too, as fhirpy sends them): applied to the current
    version, checked like a JSON Patch's result (scope, compartment before and after, consent on
    the answer) and sent to the upstream as an update pinned to that version."""
    app = await _amelia(session_for)
    url = f"{gateway.fhir}/Observation/obs-amelia-rossi-2"
    upstream = f"{fresh_upstream.upstream.base_url}/Observation/obs-amelia-rossi-2"
    async with http.get(upstream) as response:
        before = orjson.loads(await response.read())
    patch = {"note": [{"text": "measured after a walk"}], "code": {"text": "Blood pressure"}}
    async with app.patch(url, data=orjson.dumps(patch), headers=content_type) as response:
        status, patched = await _status(response)
    assert status == 200, patched
    assert patched["note"] == patch["note"] and patched["code"]["text"] == "Blood pressure"
    assert patched["code"]["coding"] == before["code"]["coding"]  # objects merge member by member
    assert patched["meta"]["versionId"] != before["meta"]["versionId"]
    async with app.patch(url, data=orjson.dumps({"note": None}), headers=content_type) as response:
        status, patched = await _status(response)
    assert status == 200 and "note" not in patched  # null removes
    for escape in (
        {"subject": {"reference": "Patient/pat-daniel-novak"}},  # out of the compartment
        {"performer": [{"reference": "Patient/pat-daniel-novak"}]},  # names another patient
    ):
        async with app.patch(url, data=orjson.dumps(escape), headers=content_type) as response:
            status, outcome = await _status(response)
        assert status == 403, outcome
    for other in ({"status": "amended"}, {"status": 7}):  # valid or not: nothing is told
        async with app.patch(
            f"{gateway.fhir}/Observation/obs-daniel-novak-1",
            data=orjson.dumps(other),
            headers=content_type,
        ) as response:
            assert response.status == 404  # another patient's: as if it did not exist
    async with app.patch(url, data=orjson.dumps({"status": 7}), headers=content_type) as response:
        status, outcome = await _status(response)
    assert status == 422 and "status" in outcome["issue"][1]["diagnostics"]  # checked like a PUT
    async with app.patch(
        url, data=orjson.dumps({"status": "amended"}), headers={**content_type, "If-Match": 'W/"1"'}
    ) as response:
        assert response.status in (409, 412)  # the caller's stale version is kept
    async with http.get(upstream) as response:
        after = orjson.loads(await response.read())
    assert after["subject"] == before["subject"] and after["status"] == before["status"]


async def test_c02_consents_never_go_to_the_upstream(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    system = await session_for(
        client_id="test-system", scope="system/*.cruds", patient=None, acts_for=(), fhir_user=None
    )
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Consent", "status": "active"},
                "request": {"method": "POST", "url": "Consent"},
            }
        ],
    }
    async with system.post(gateway.fhir, data=orjson.dumps(transaction), headers=JSON) as response:
        status, body = await _status(response)
    assert status == 400 and "entry 1" in body["issue"][0]["diagnostics"]
    async with system.get(f"{gateway.fhir}?_type=Consent") as response:
        assert response.status == 403


async def test_c02_a_patients_consent_search_without_patient_is_their_own(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    from tests.e2e.test_consent import grant, patient_session, post_consent

    daniel = await patient_session(session_for, "pat-daniel-novak")
    await post_consent(daniel, gateway.fhir, grant("pat-daniel-novak", ["Observation"]))
    amelia = await patient_session(session_for)
    mine = await post_consent(amelia, gateway.fhir, grant(AMELIA, ["Observation"]))
    async with amelia.get(f"{gateway.fhir}/Consent") as response:
        bundle = orjson.loads(await response.read())
    assert [e["resource"]["id"] for e in bundle["entry"]] == [mine["id"]]


async def test_c03_data_that_is_no_patients_needs_no_consent(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    app = await _amelia(
        session_for,
        scope="patient/*.rs",
        trusted=False,
        client_id="diary-app",
        purposes=("PATRQT",),
    )
    async with app.get(f"{gateway.fhir}/Practitioner/prac-hannah-okafor") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "", {"resourceType": "Bundle", "type": "batch", "entry": 5}),
        ("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": {"a": 1}}),
        (
            "POST",
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "contained": [{"resourceType": "NoSuchType", "id": "c1"}],
            },
        ),
        ("GET", "Observation/obs-amelia-rossi-1/$everything", None),
        ("POST", "Patient/pat-amelia-rossi/$everything", {}),
    ],
)
async def test_client_mistakes_are_clear_errors_not_500(
    gateway: RunningGateway, session_for: SessionFor, method: str, path: str, body: Any
) -> None:
    system = await session_for(
        client_id="test-system", scope="system/*.cruds", patient=None, acts_for=(), fhir_user=None
    )
    data = orjson.dumps(body) if body is not None else None
    async with system.request(
        method, f"{gateway.fhir}/{path}", data=data, headers=JSON
    ) as response:
        status, outcome = await _status(response)
    assert 400 <= status < 500, (status, outcome)
    assert outcome["resourceType"] == "OperationOutcome"


async def test_history_with_elements_and_a_deletion_is_answered(
    gateway: RunningGateway, session_for: SessionFor, fresh_upstream: Stack
) -> None:
    system = await session_for(
        client_id="test-system", scope="system/*.cruds", patient=None, acts_for=(), fhir_user=None
    )
    async with system.delete(f"{gateway.fhir}/Observation/obs-amelia-rossi-3") as response:
        assert response.status in (200, 204)
    async with system.get(f"{gateway.fhir}/Observation/_history?_elements=id&_count=5") as response:
        assert response.status == 200


async def test_a_malformed_patient_reference_upstream_fails_no_request(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    broken = {
        "resourceType": "Observation",
        "id": "obs-broken-reference",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/not an id!"},
    }
    async with http.put(
        f"{fresh_upstream.upstream.base_url}/Observation/{broken['id']}",
        data=orjson.dumps(broken),
        headers=JSON,
    ) as response:
        assert response.status in (200, 201)
    system = await session_for(
        client_id="test-system", scope="system/*.rs", patient=None, acts_for=(), fhir_user=None
    )
    async with system.get(f"{gateway.fhir}/Observation/{broken['id']}") as response:
        assert response.status in (200, 403)
    async with system.get(f"{gateway.fhir}/Observation?_count=3") as response:
        assert response.status == 200
