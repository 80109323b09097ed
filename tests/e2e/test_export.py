"""Bulk export through consent (FHIR Bulk Data Access IG v2.0) through the real stack, with the demo
backend service's ``private_key_jwt`` (SMART Backend Services): kick-off, poll, download; every
line is what the same client's searches release (scopes, compartment, consent, minimisation:
C-03, C-10, C-15), a patient who denied the client has no line; the files hold nothing in clear
at rest (P-15) and erasure shreds a patient's lines (C-22); one AuditEvent per patient (A-04);
cancel, resume on another instance, and the refusals."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt as pyjwt
import orjson
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway.appkeys import AUDIT, AUTH, CACHE, METRICS, MONGO
from gateway.audit.store import EVENTS
from gateway.cli import main
from gateway.cli.admin import register_demo
from gateway.fhir.bulk.files import COLLECTION as CHUNKS
from gateway.fhir.bulk.jobs import COLLECTION as JOBS
from gateway.localstack import free_port
from tests.conftest import SESSION_KEK, RunningGateway, Stack, StartGateway
from tests.e2e.conftest import SessionFor, register_client
from tests.e2e.test_cache import _needles
from tests.e2e.test_consent import grant, patient_session, post_consent
from tests.support.fixture_data import OWNERS, RESOURCES
from tests.support.tokens import minted_token

pytestmark = pytest.mark.e2e

CLIENT = "demo-backend-service"
KEYS = Path(__file__).resolve().parents[2] / "fixtures" / "keys"
PEM = (KEYS / "backend-service.private.pem").read_text()
KID = orjson.loads((KEYS / "backend-service.private.jwk.json").read_text())["kid"]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
DANIEL = "pat-daniel-novak"
TYPES = ("Condition", "Observation", "Patient")
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _db(gateway: RunningGateway) -> AsyncDatabase[dict[str, Any]]:
    return gateway.server.app[MONGO][gateway.settings.mongodb_database]


async def backend_token(gateway: RunningGateway, scope: str = "system/*.rs") -> str:
    """A backend-services token of the demo backend service (its private_key_jwt, RS384)."""
    auth = gateway.server.app[AUTH]
    if await auth.clients.get(CLIENT) is None:
        await register_demo(auth, gateway.server.app[AUDIT])
    token_url = f"{gateway.base}/auth/token"
    now = int(time.time())
    assertion = pyjwt.encode(
        {
            "iss": CLIENT,
            "sub": CLIENT,
            "aud": token_url,
            "exp": now + 240,
            "iat": now,
            "jti": str(uuid.uuid4()),
        },
        PEM,
        algorithm="RS384",
        headers={"kid": KID},
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        ) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        return str(body["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def kick_off(
    http: aiohttp.ClientSession, token: str, url: str, **params: str
) -> tuple[int, dict[str, str], Any]:
    async with http.get(url, params=params, headers={**ASYNC, **bearer(token)}) as response:
        body = await response.read()
        return response.status, dict(response.headers), orjson.loads(body) if body else None


async def finish(
    http: aiohttp.ClientSession, token: str, status_url: str, within: float = 60.0
) -> dict[str, Any]:
    """Poll the status URL until the manifest comes."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with http.get(status_url, headers=bearer(token)) as response:
            if response.status == 200:
                manifest: dict[str, Any] = await response.json()
                return manifest
            assert response.status == 202, await response.text()
            assert response.headers["X-Progress"] and response.headers["Retry-After"]
        await asyncio.sleep(0.2)
    raise AssertionError("the export did not finish")


async def download(
    http: aiohttp.ClientSession, token: str, manifest: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        async with http.get(item["url"], headers=bearer(token)) as response:
            assert response.status == 200
            assert response.content_type == "application/fhir+ndjson"
            text = await response.read()
        lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        assert len(lines) == item["count"]
        assert {r["resourceType"] for r in lines} <= {item["type"]}
        files[item["type"]] = lines
    return files


async def searched(http: aiohttp.ClientSession, token: str, url: str) -> dict[str, dict[str, Any]]:
    """Everything the same token's ordinary searches release, paged to the end."""
    found: dict[str, dict[str, Any]] = {}
    next_url: str | None = url
    while next_url:
        async with http.get(next_url, headers=bearer(token)) as response:
            assert response.status == 200
            bundle = await response.json()
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode", "match") == "match":
                resource = entry["resource"]
                found[f"{resource['resourceType']}/{resource['id']}"] = resource
        next_url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
    return found


async def deny_daniel(gateway: RunningGateway, session_for: SessionFor) -> None:
    deny = grant(DANIEL, list(TYPES), client_id=CLIENT, purposes=("HOPERAT",))
    deny["provision"]["type"] = "deny"
    await post_consent(await patient_session(session_for, DANIEL), gateway.fhir, deny)


def _mentions(resource: dict[str, Any], patient: str) -> bool:
    return f"Patient/{patient}" in orjson.dumps(resource).decode() or resource.get("id") == patient


async def test_c03_c10_c15_system_export_is_what_the_clients_searches_release_minimised(
    gateway: RunningGateway, session_for: SessionFor, http: aiohttp.ClientSession
) -> None:
    await deny_daniel(gateway, session_for)
    token = await backend_token(gateway)
    status, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    assert status == 202
    status_url = headers["Content-Location"]
    assert status_url.startswith(f"{gateway.fhir}/_export/")
    manifest = await finish(http, token, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{gateway.fhir}/$export" and manifest["transactionTime"]
    files = await download(http, token, manifest)
    assert set(files) == set(TYPES)  # the demo backend's scopes: Patient, Observation, Condition

    for rtype, lines in files.items():
        ids = [f"{rtype}/{r['id']}" for r in lines]
        assert len(ids) == len(set(ids))
        # exactly what this client's own searches release, line for line (the same release path)
        expected = await searched(http, token, f"{gateway.fhir}/{rtype}?_count=50")
        assert {f"{rtype}/{r['id']}": r for r in lines} == expected
        for resource in lines:
            assert not _mentions(resource, DANIEL)  # C-08: the deny holds for the export
            assert OWNERS.get(f"{rtype}/{resource['id']}") != DANIEL
    patients = files["Patient"]
    assert len(patients) == len({o for o in OWNERS.values()}) - 1
    for patient in patients:  # C-15: HOPERAT keeps no contact details, marks the minimisation
        assert "telecom" not in patient and "address" not in patient and "text" not in patient
        assert any(s.get("code") == "REDACTED" for s in patient["meta"]["security"])

    # What was withheld is counted by reason in the error file, never named.
    assert manifest["error"], manifest
    async with http.get(manifest["error"][0]["url"], headers=bearer(token)) as response:
        assert response.status == 200
        errors = [orjson.loads(x) for x in (await response.read()).splitlines()]
    assert errors and all(e["resourceType"] == "OperationOutcome" for e in errors)
    assert any(e["issue"][0]["details"]["text"] == "consent" for e in errors)
    assert DANIEL not in orjson.dumps(errors).decode()

    # one AuditEvent per patient whose data went into a file, with the Export subtype.
    db = _db(gateway)
    exported = [r async for r in db[EVENTS].find({"event.subtype.code": "110106"}, {"patients": 1})]
    in_files = {OWNERS[f"Patient/{p['id']}"] for p in patients}
    assert sorted(p for r in exported for p in r["patients"]) == sorted(in_files)
    kickoff = await db[EVENTS].count_documents({"event.entity.query": {"$exists": True}})
    assert kickoff >= 1

    metrics = gateway.server.app[METRICS].registry
    assert metrics.get_sample_value("fhir_gateway_export_jobs_total", {"event": "done"}) == 1
    released = metrics.get_sample_value("fhir_gateway_export_resources_total", {"type": "Patient"})
    assert released == len(patients)
    assert (
        metrics.get_sample_value("fhir_gateway_export_withheld_total", {"reason": "consent"}) or 0
    ) > 0


async def test_c12_a_consent_withdrawn_after_the_job_withholds_its_lines_from_the_download(
    gateway: RunningGateway, session_for: SessionFor, http: aiohttp.ClientSession
) -> None:
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    manifest = await finish(http, token, headers["Content-Location"])
    before = await download(http, token, manifest)
    assert any(_mentions(r, DANIEL) for lines in before.values() for r in lines)
    await deny_daniel(gateway, session_for)  # after the job wrote Daniel's lines
    after = await download_loose(http, token, manifest)
    assert not any(_mentions(r, DANIEL) for lines in after.values() for r in lines)
    for rtype, lines in before.items():
        kept = [r for r in lines if not _mentions(r, DANIEL)]
        assert after[rtype] == kept  # everyone else's lines, unchanged


async def test_patient_level_export_with_type_filter_and_since(
    gateway: RunningGateway, session_for: SessionFor, http: aiohttp.ClientSession
) -> None:
    await deny_daniel(gateway, session_for)
    token = await backend_token(gateway)
    status, headers, body = await kick_off(
        http,
        token,
        f"{gateway.fhir}/Patient/$export",
        _type="Patient,Observation",
        _typeFilter="Observation?status=final",
        _since="2000-01-01T00:00:00Z",
        _outputFormat="ndjson",
    )
    assert status == 202, body
    files = await download(http, token, await finish(http, token, headers["Content-Location"]))
    assert set(files) == {"Patient", "Observation"}
    expected = await searched(http, token, f"{gateway.fhir}/Observation?status=final&_count=50")
    assert {f"Observation/{r['id']}": r for r in files["Observation"]} == expected
    assert all(r["status"] == "final" for r in files["Observation"])
    assert not any(_mentions(r, DANIEL) for lines in files.values() for r in lines)


async def test_group_level_exports_only_the_members(
    gateway: RunningGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    members = ("pat-amelia-rossi", "pat-samuel-reed")
    scope = "system/Group.rs system/Patient.rs system/Observation.rs"
    await register_client(gateway, "group-backend", trusted=True, scope=scope)
    token = await minted_token(
        gateway,
        client_id="group-backend",
        scope=scope,
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
        purposes=("TREAT",),
    )
    status, _, body = await kick_off(http, token, f"{gateway.fhir}/Group/no-such-group/$export")
    assert status == 404 and body["resourceType"] == "OperationOutcome"
    group = {
        "resourceType": "Group",
        "id": "export-cohort",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{p}"}} for p in members]
        + [{"entity": {"reference": "Patient/pat-leo-garcia"}, "inactive": True}],
    }
    upstream = f"{local_stack_env.upstream.base_url}/Group/export-cohort"
    async with http.put(upstream, data=orjson.dumps(group), headers=FHIR_JSON) as response:
        assert response.status in (200, 201), await response.text()
    try:
        status, headers, body = await kick_off(
            http, token, f"{gateway.fhir}/Group/export-cohort/$export", _type="Patient,Observation"
        )
        assert status == 202, body
        manifest = await finish(http, token, headers["Content-Location"])
        files = await download(http, token, manifest)
    finally:
        async with http.delete(upstream) as response:
            assert response.status < 300
    assert sorted(r["id"] for r in files["Patient"]) == sorted(members)
    reference = ",".join(f"Patient/{p}" for p in members)
    expected = await searched(http, token, f"{gateway.fhir}/Observation?subject={reference}")
    assert {f"Observation/{r['id']}": r for r in files["Observation"]} == expected
    assert expected


async def test_bad_parameters_are_refused_with_an_operation_outcome(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    token = await backend_token(gateway)
    url = f"{gateway.fhir}/$export"
    cases: list[tuple[dict[str, str], int]] = [
        ({"_outputFormat": "text/csv"}, 400),
        ({"_since": "yesterday"}, 400),
        ({"_since": "2026-01-01"}, 400),
        ({"_type": "NoSuchType"}, 400),
        ({"_type": "Encounter"}, 403),  # not in the client's scopes
        ({"_type": "AuditEvent"}, 403),
        ({"_typeFilter": "Observation?no-such-param=1"}, 400),
        ({"_typeFilter": "Observation?_include=Observation:subject"}, 400),
        ({"_typeFilter": "Encounter?status=finished"}, 400),
        ({"_typeFilter": "Observation"}, 400),
        ({"patient": "Patient/pat-amelia-rossi"}, 400),
        ({"_elements": "id"}, 400),
    ]
    for params, expected in cases:
        status, _, body = await kick_off(http, token, url, **params)
        assert status == expected, (params, body)
        assert body["resourceType"] == "OperationOutcome", params
    async with http.get(url, headers=bearer(token)) as response:  # no Prefer: respond-async
        assert response.status == 400
        assert (await response.json())["resourceType"] == "OperationOutcome"
    assert await _db(gateway)[JOBS].count_documents({}) == 0


async def test_a_token_without_system_scopes_is_refused(
    gateway: RunningGateway, session_for: SessionFor, http: aiohttp.ClientSession
) -> None:
    patient_app = await session_for(
        client_id="export-patient-app",
        scope="patient/*.rs",
        patient="pat-amelia-rossi",
        acts_for=("pat-amelia-rossi",),
        fhir_user="Patient/pat-amelia-rossi",
    )
    for path in ("$export", "Patient/$export"):
        async with patient_app.get(f"{gateway.fhir}/{path}", headers=ASYNC) as response:
            assert response.status == 403
            assert (await response.json())["resourceType"] == "OperationOutcome"
    async with http.get(f"{gateway.fhir}/$export", headers=ASYNC) as response:
        assert response.status == 401


async def test_another_clients_token_cannot_read_status_download_or_cancel(
    gateway: RunningGateway, session_for: SessionFor, http: aiohttp.ClientSession
) -> None:
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export", _type="Patient")
    status_url = headers["Content-Location"]
    manifest = await finish(http, token, status_url)
    other = await session_for(
        client_id="other-backend",
        scope="system/*.rs",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )
    async with other.get(status_url) as response:
        assert response.status == 404
    async with other.get(manifest["output"][0]["url"]) as response:
        assert response.status == 404
        assert b"pat-" not in await response.read()
    async with other.delete(status_url) as response:
        assert response.status == 404
    async with http.get(manifest["output"][0]["url"]) as response:  # no token at all
        assert response.status == 401
    assert len((await download(http, token, manifest))["Patient"]) > 0  # still there for its own


async def test_one_job_per_client_and_a_cancelled_job_leaves_no_file(
    start_gateway: StartGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        export_poll_seconds=30,  # the job stays queued: nothing picks it up in this test
    )
    token = await backend_token(gateway)
    status, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    assert status == 202
    status_url = headers["Content-Location"]
    status, headers, body = await kick_off(http, token, f"{gateway.fhir}/$export")
    assert status == 429 and headers["Retry-After"] and body["resourceType"] == "OperationOutcome"
    async with http.get(status_url, headers=bearer(token)) as response:
        assert response.status == 202 and response.headers["X-Progress"] == "queued"
    async with http.delete(status_url, headers=bearer(token)) as response:
        assert response.status == 202
    async with http.get(status_url, headers=bearer(token)) as response:
        assert response.status == 404
    status, _, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    assert status == 202  # the cancelled one no longer counts


async def _under_way(db: AsyncDatabase[dict[str, Any]], job_id: str) -> None:
    """Wait until the job has done two of its searches and written some of its files."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = await db[JOBS].find_one({"_id": job_id})
        if job is not None and job["tasks"] and job["cursor"]["task"] >= 2:
            break
        await asyncio.sleep(0.02)
    assert await db[CHUNKS].count_documents({"job": job_id}) > 0


async def test_a_job_cancelled_while_it_runs_stops_and_leaves_no_file(
    start_gateway: StartGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        export_page_size=1,
        export_poll_seconds=0.1,
    )
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/Patient/$export")
    status_url = headers["Content-Location"]
    job_id = status_url.rsplit("/", 1)[1]
    db = _db(gateway)
    await _under_way(db, job_id)
    async with http.delete(status_url, headers=bearer(token)) as response:
        assert response.status == 202
    await asyncio.sleep(1.0)  # the runner finds out at its next page
    job = await db[JOBS].find_one({"_id": job_id})
    assert job is not None and job["status"] == "cancelled"
    assert job["cursor"]["task"] < len(job["tasks"])  # it stopped mid-job
    # A page the runner wrote after the cancel is deleted when it finds out: wait for that.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await db[CHUNKS].count_documents({"job": job_id}) == 0:
            break
        await asyncio.sleep(0.1)
    assert await db[CHUNKS].count_documents({"job": job_id}) == 0
    async with http.get(status_url, headers=bearer(token)) as response:
        assert response.status == 404


@pytest.mark.parametrize("cut_off", ["token revoked", "client removed"])
async def test_s25_a_job_whose_token_is_revoked_or_client_removed_stops_at_its_next_page(
    start_gateway: StartGateway, local_stack_env: Stack, http: aiohttp.ClientSession, cut_off: str
) -> None:
    """The job runs under the kick-off's token: revoking that token, or removing the client,
    stops it before its next page is kept (as the very next request would be refused), and its
    files go."""
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        export_page_size=1,
        export_poll_seconds=0.1,
    )
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/Patient/$export")
    job_id = headers["Content-Location"].rsplit("/", 1)[1]
    db = _db(gateway)
    await _under_way(db, job_id)
    auth = gateway.server.app[AUTH]
    if cut_off == "token revoked":
        claims = pyjwt.decode(token, options={"verify_signature": False})
        expires = datetime.fromtimestamp(claims["exp"], UTC)
        await auth.revocations.revoke_token(claims["jti"], expires)
    else:
        assert await auth.clients.remove(CLIENT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = await db[JOBS].find_one({"_id": job_id})
        if job is not None and job["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert job is not None and job["status"] == "failed", job
    assert job["cursor"]["task"] < len(job["tasks"])  # it stopped mid-job
    expected = "revoked" if cut_off == "token revoked" else "no longer registered"
    assert expected in job["error"]
    assert await db[CHUNKS].count_documents({"job": job_id}) == 0


async def test_a_finished_export_cancelled_deletes_its_files(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    status_url = headers["Content-Location"]
    manifest = await finish(http, token, status_url)
    job = status_url.rsplit("/", 1)[1]
    assert await _db(gateway)[CHUNKS].count_documents({"job": job}) > 0
    async with http.delete(status_url, headers=bearer(token)) as response:
        assert response.status == 202
    assert await _db(gateway)[CHUNKS].count_documents({"job": job}) == 0
    async with http.get(manifest["output"][0]["url"], headers=bearer(token)) as response:
        assert response.status == 404


async def test_p15_c22_files_hold_no_plaintext_at_rest_and_erasure_shreds_a_patients_lines(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    manifest = await finish(http, token, headers["Content-Location"])
    files = await download(http, token, manifest)
    assert any(r["id"] == "pat-amelia-rossi" for r in files["Patient"])

    needles = _needles(RESOURCES)
    assert b"Rossi" in needles and b"MRN-100103" in needles
    words = [
        (n, re.compile(rb"(?<![0-9A-Za-z])" + re.escape(n) + rb"(?![0-9A-Za-z])")) for n in needles
    ]
    db = _db(gateway)
    leaks = set()
    for name in (CHUNKS, JOBS):
        collection = db.get_collection(
            name, codec_options=CodecOptions(document_class=RawBSONDocument)
        )
        async for doc in collection.find({}):
            raw = bytes(cast(RawBSONDocument, doc).raw)
            leaks |= {(name, n.decode()) for n, word in words if n in raw and word.search(raw)}
    assert not leaks
    # The scan looks for what is there: the download holds those strings in clear.
    assert b"Rossi" in orjson.dumps(files["Patient"])

    await gateway.server.app[CACHE].shred_patient("pat-amelia-rossi")  # C-22
    after = await download_loose(http, token, manifest)
    assert not any(_mentions(r, "pat-amelia-rossi") for lines in after.values() for r in lines)
    assert after["Patient"]  # the others' lines are still there


async def download_loose(
    http: aiohttp.ClientSession, token: str, manifest: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """The files as served now (after an erasure, fewer lines than the manifest counted)."""
    files: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        async with http.get(item["url"], headers=bearer(token)) as response:
            assert response.status == 200
            text = await response.read()
        files[item["type"]] = [orjson.loads(x) for x in text.splitlines() if x.strip()]
    return files


async def test_a_job_interrupted_by_a_stop_resumes_on_another_instance(
    start_gateway: StartGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    settings: dict[str, Any] = {
        "upstream_url": local_stack_env.upstream.base_url,
        "mongodb_uri": local_stack_env.mongo_uri,
        "export_page_size": 1,  # many pages: the stop falls mid-job
        "export_lease_seconds": 5,
        "export_poll_seconds": 0.2,
    }
    first = await start_gateway(**settings)
    token = await backend_token(first)
    _, headers, _ = await kick_off(http, token, f"{first.fhir}/Patient/$export")
    job_id = headers["Content-Location"].rsplit("/", 1)[1]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(local_stack_env.mongo_uri)
    try:
        await _resumes(first, start_gateway, settings, client, job_id, token, http)
    finally:
        await client.close()


async def _resumes(
    first: RunningGateway,
    start_gateway: StartGateway,
    settings: dict[str, Any],
    client: AsyncMongoClient[dict[str, Any]],
    job_id: str,
    token: str,
    http: aiohttp.ClientSession,
) -> None:
    jobs = client[first.settings.mongodb_database][JOBS]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = await jobs.find_one({"_id": job_id})
        assert job is not None
        if job["tasks"] and job["cursor"]["task"] >= 2:
            break
        await asyncio.sleep(0.02)
    await first.server.close()  # the gateway stops mid-job
    stopped = await jobs.find_one({"_id": job_id})
    assert stopped is not None and stopped["status"] == "running"
    assert stopped["cursor"]["task"] < len(stopped["tasks"])
    done_before = stopped["cursor"]["task"]

    second = await start_gateway(
        **settings,
        mongodb_database=first.settings.mongodb_database,
        audit_chain_name="second-instance",
    )
    token = await backend_token(second)  # the same client, its token from this instance
    status_url = f"{second.fhir}/_export/{job_id}"
    manifest = await finish(http, token, status_url, within=90)
    finished = await jobs.find_one({"_id": job_id})
    assert finished is not None and finished["lease_owner"] == "second-instance"
    assert finished["cursor"]["task"] == len(finished["tasks"]) > done_before
    files = await download(http, token, manifest)
    for rtype, lines in files.items():
        ids = [r["id"] for r in lines]
        assert len(ids) == len(set(ids)), rtype  # no page written twice
        expected = await searched(http, token, f"{second.fhir}/{rtype}?_count=50")
        assert {f"{rtype}/{r['id']}": r for r in lines} == expected


async def test_p09_exports_list_and_cancel_commands(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        export_poll_seconds=30,  # the job stays queued
    )
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    status_url = headers["Content-Location"]
    job = status_url.rsplit("/", 1)[1]
    monkeypatch.setenv("FHIR_GATEWAY_MONGODB_URI", local_stack_env.mongo_uri)
    monkeypatch.setenv("FHIR_GATEWAY_MONGODB_DATABASE", gateway.settings.mongodb_database)
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", SESSION_KEK)
    monkeypatch.setenv("FHIR_GATEWAY_AUDIT_SPOOL_DIR", str(tmp_path))

    assert await asyncio.to_thread(main, ["exports", "list"]) == 0
    listed = capsys.readouterr().out
    assert job in listed and CLIENT in listed and "queued" in listed
    assert "pat-" not in listed
    assert await asyncio.to_thread(main, ["exports", "cancel", "--job", job]) == 0
    async with http.get(status_url, headers=bearer(token)) as response:
        assert response.status == 404
    assert await asyncio.to_thread(main, ["exports", "cancel", "--job", job]) == 1
    cancelled = await _db(gateway)[EVENTS].count_documents({"event.subtype.code": "110106"})
    assert cancelled == 1  # the administrator's cancel, recorded


async def test_the_capability_statement_advertises_the_export_operations(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.fhir}/metadata") as response:
        statement = await response.json()
    assert (
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
        in (statement["instantiates"])
    )
    rest = statement["rest"][0]
    assert [o for o in rest["operation"] if o["name"] == "export"] == [
        {
            "name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
        }
    ]
    by_type = {r["type"]: r for r in rest["resource"]}
    for rtype, definition in (("Patient", "patient-export"), ("Group", "group-export")):
        exports = [o for o in by_type[rtype]["operation"] if o["name"] == "export"]
        assert exports == [
            {
                "name": "export",
                "definition": f"http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{definition}",
            }
        ]


async def test_a_job_the_upstream_keeps_failing_fails_after_five_runs(
    start_gateway: StartGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(
        upstream_url=f"http://127.0.0.1:{free_port()}/fhir",  # nothing listens there
        mongodb_uri=local_stack_env.mongo_uri,
        export_lease_seconds=5,
        export_poll_seconds=0.2,
    )
    token = await backend_token(gateway)
    _, headers, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    status_url = headers["Content-Location"]
    deadline = time.monotonic() + 60
    status, body = 202, None
    while status == 202 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        async with http.get(status_url, headers=bearer(token)) as response:
            status, body = response.status, await response.read()
    assert status == 500
    body = orjson.loads(body or b"{}")
    assert body["resourceType"] == "OperationOutcome"
    assert "failed too often" in body["issue"][0]["diagnostics"]
    job = await _db(gateway)[JOBS].find_one({"_id": status_url.rsplit("/", 1)[1]})
    assert job is not None and job["failures"] == 5 and "active_client" not in job
    metrics = gateway.server.app[METRICS].registry
    assert metrics.get_sample_value("fhir_gateway_export_jobs_total", {"event": "failed"}) == 1
    status, _, _ = await kick_off(http, token, f"{gateway.fhir}/$export")
    assert status == 202  # a failed job no longer holds the client's place
