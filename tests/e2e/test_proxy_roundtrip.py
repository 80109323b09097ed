"""Every FHIR REST interaction round-trips through the gateway to the real local FHIR server
(Medplum's FHIR router) and back, with every upstream URL rewritten to the gateway's base."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from tests.conftest import RunningGateway, Stack

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/fhir+json"}


async def _json(response: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await response.read())


def _no_upstream_url(stack: Stack, body: bytes | str) -> None:
    text = body.decode() if isinstance(body, bytes) else body
    assert stack.upstream.base_url not in text
    origin = stack.upstream.base_url.rsplit("/fhir", 1)[0]
    assert origin not in text


async def test_s08_metadata_is_the_upstream_capability_statement_on_our_base(
    gateway: RunningGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.fhir}/metadata") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        raw = await response.read()
    statement = orjson.loads(raw)
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["implementation"]["url"] == gateway.fhir
    _no_upstream_url(local_stack_env, raw)


async def test_search_pages_through_next_links_to_the_end(
    gateway: RunningGateway, local_stack_env: Stack, system_http: aiohttp.ClientSession
) -> None:
    url: str | None = f"{gateway.fhir}/Patient?_count=2"
    seen: list[str] = []
    pages = 0
    total = None
    while url:
        assert url.startswith(gateway.fhir)
        async with system_http.get(url) as response:
            assert response.status == 200
            raw = await response.read()
        _no_upstream_url(local_stack_env, raw)
        page = orjson.loads(raw)
        total = page.get("total", total)
        assert len(page.get("entry", [])) <= 2
        for entry in page.get("entry", []):
            assert entry["fullUrl"] == f"{gateway.fhir}/Patient/{entry['resource']['id']}"
            seen.append(entry["resource"]["id"])
        url = next(
            (link["url"] for link in page.get("link", []) if link["relation"] == "next"), None
        )
        pages += 1
    # A paged result carries no total: the gateway cannot count what it withholds on other pages.
    assert total is None
    assert pages >= 3
    assert len(seen) == len(set(seen)) >= 6


async def test_read_and_vread_carry_versioning_headers(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    async with system_http.get(f"{gateway.fhir}/Patient?_count=1") as response:
        patient_id = (await _json(response))["entry"][0]["resource"]["id"]
    async with system_http.get(f"{gateway.fhir}/Patient/{patient_id}") as response:
        assert response.status == 200
        assert response.headers["ETag"].startswith('W/"')
        assert "Last-Modified" in response.headers
        assert response.headers["X-Request-Id"]
        patient = await _json(response)
    version = patient["meta"]["versionId"]
    async with system_http.get(
        f"{gateway.fhir}/Patient/{patient_id}/_history/{version}"
    ) as response:
        assert response.status == 200
        assert (await _json(response))["meta"]["versionId"] == version


async def test_missing_resource_is_a_404_outcome(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    async with system_http.get(f"{gateway.fhir}/Patient/does-not-exist") as response:
        assert response.status == 404
        assert (await _json(response))["resourceType"] == "OperationOutcome"


async def test_create_update_patch_history_delete(
    gateway: RunningGateway, fresh_upstream: Stack, system_http: aiohttp.ClientSession
) -> None:
    new = {"resourceType": "Patient", "name": [{"family": "Roundtrip", "given": ["Test"]}]}
    async with system_http.post(
        f"{gateway.fhir}/Patient", data=orjson.dumps(new), headers=JSON
    ) as response:
        assert response.status == 201
        location = response.headers["Location"]
        created = await _json(response)
    assert location.startswith(f"{gateway.fhir}/Patient/{created['id']}")
    _no_upstream_url(fresh_upstream, location)

    created["gender"] = "other"
    async with system_http.put(
        f"{gateway.fhir}/Patient/{created['id']}", data=orjson.dumps(created), headers=JSON
    ) as response:
        assert response.status == 200
        assert (await _json(response))["gender"] == "other"

    patch = [{"op": "replace", "path": "/name/0/family", "value": "Patched"}]
    async with system_http.patch(
        f"{gateway.fhir}/Patient/{created['id']}",
        data=orjson.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    ) as response:
        assert response.status == 200
        assert (await _json(response))["name"][0]["family"] == "Patched"

    async with system_http.get(f"{gateway.fhir}/Patient/{created['id']}/_history") as response:
        history = await _json(response)
    assert history["type"] == "history"
    assert len(history["entry"]) == 3

    async with system_http.delete(f"{gateway.fhir}/Patient/{created['id']}") as response:
        assert response.status in (200, 204)
    async with system_http.get(f"{gateway.fhir}/Patient/{created['id']}") as response:
        assert response.status in (404, 410)


async def test_post_search_with_a_form_body(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    async with system_http.post(
        f"{gateway.fhir}/Observation/_search", data={"category": "vital-signs", "_count": "3"}
    ) as response:
        assert response.status == 200
        bundle = await _json(response)
    assert bundle["type"] == "searchset"
    assert 0 < len(bundle["entry"]) <= 3
    for entry in bundle["entry"]:
        codes = [c["code"] for cat in entry["resource"]["category"] for c in cat["coding"]]
        assert "vital-signs" in codes


async def test_include_revinclude_everything_and_compartment_search(
    gateway: RunningGateway, local_stack_env: Stack, system_http: aiohttp.ClientSession
) -> None:
    async with system_http.get(f"{gateway.fhir}/Patient?_count=1") as response:
        patient_id = (await _json(response))["entry"][0]["resource"]["id"]
    ref = f"Patient/{patient_id}"

    async with system_http.get(
        f"{gateway.fhir}/Observation?subject={ref}&_include=Observation:subject&_count=5"
    ) as response:
        bundle = await _json(response)
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert [e["resource"]["id"] for e in included] == [patient_id]

    async with system_http.get(
        f"{gateway.fhir}/Patient?_id={patient_id}&_revinclude=Observation:subject"
    ) as response:
        bundle = await _json(response)
    assert any(e["resource"]["resourceType"] == "Observation" for e in bundle["entry"])

    async with system_http.get(f"{gateway.fhir}/Patient/{patient_id}/$everything") as response:
        assert response.status == 200
        raw = await response.read()
    _no_upstream_url(local_stack_env, raw)
    types = {e["resource"]["resourceType"] for e in orjson.loads(raw)["entry"]}
    assert {"Patient", "Observation", "Condition", "Encounter"} <= types

    async with system_http.get(f"{gateway.fhir}/{ref}/Condition") as response:
        bundle = await _json(response)
    assert bundle["entry"]
    assert all(e["resource"]["subject"]["reference"] == ref for e in bundle["entry"])


async def test_type_and_system_history(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    for path in ("Patient/_history?_count=2", "_history?_count=2"):
        async with system_http.get(f"{gateway.fhir}/{path}") as response:
            assert response.status == 200
            bundle = await _json(response)
        assert bundle["type"] == "history"
        assert len(bundle["entry"]) == 2


async def test_batch_and_transaction(
    gateway: RunningGateway, fresh_upstream: Stack, system_http: aiohttp.ClientSession
) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient?_count=1"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    async with system_http.post(gateway.fhir, data=orjson.dumps(batch), headers=JSON) as response:
        assert response.status == 200
        result = await _json(response)
    assert result["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in result["entry"]] == ["200", "404"]

    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6d1f5a8e-2b7c-4f0e-9a41-1c2d3e4f5a6b",
                "resource": {"resourceType": "Patient", "name": [{"family": "Transaction"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    async with system_http.post(
        gateway.fhir, data=orjson.dumps(transaction), headers=JSON
    ) as response:
        assert response.status == 200
        raw = await response.read()
    _no_upstream_url(fresh_upstream, raw)
    assert orjson.loads(raw)["type"] == "transaction-response"


async def test_readyz_with_the_real_stack(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    async with system_http.get(f"{gateway.base}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"mongodb": "ok", "upstream": "ok"}


async def test_c02_a11_metadata_describes_auditevent_and_consent_as_the_gateway_serves_them(
    gateway: RunningGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{local_stack_env.upstream.base_url}/metadata") as response:
        upstream = await response.json(content_type=None)
    theirs = {
        entry["type"]: {i["code"] for i in entry.get("interaction", [])}
        for rest in upstream["rest"]
        for entry in rest.get("resource", [])
    }
    assert "create" in theirs["AuditEvent"]  # the upstream would take writes: we do not

    async with http.get(f"{gateway.fhir}/metadata") as response:
        statement = await response.json(content_type=None)
    CapabilityStatement.model_validate(statement)
    (rest,) = statement["rest"]
    entries = {}
    for entry in rest["resource"]:
        assert entry["type"] not in entries  # one entry per type, ours replacing theirs
        entries[entry["type"]] = entry
    audit = entries["AuditEvent"]
    assert {i["code"] for i in audit["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in audit["searchParam"]} >= {"patient", "agent", "date", "subtype"}
    consent = {i["code"] for i in entries["Consent"]["interaction"]}
    assert consent >= {"read", "search-type", "update"} and "patch" not in consent
    assert {p["name"] for p in entries["Consent"]["searchParam"]} == {"patient", "status", "_id"}
    assert "Observation" in entries  # the upstream's own types are kept
