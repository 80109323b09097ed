"""The audit trail of a running gateway (AUDIT.md A-01 … A-05): every FHIR interaction through
the real stack leaves exactly the AuditEvents BALP asks for — one per patient whose data the
request touched, with the right subtype, action and outcome, the user and the app as agents, the
resource or the query, the consent decisions — refusals included, before the response goes; and
the security acts around them (sign-in, token issued, consent given, token revoked) are on the
same chain. Every event is a valid FHIR R4 AuditEvent and none holds a token.

Each request's events are found by the ``X-Request-Id`` its response carried (an entity of every
event of the request)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from fhir.resources.R4B.auditevent import AuditEvent

from consent.store import Change, Channel
from gateway.appkeys import CONSENTS
from gateway.audit.store import AuditQuery, AuditReader
from gateway.audit.verify import verify_all
from tests.conftest import RunningGateway, Stack
from tests.e2e.conftest import register_client
from tests.support.tokens import MARIA, flow_token, minted_token, services

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"
LEO = "pat-leo-garcia"
MARIA_ID = "pat-maria-garcia"
SYSTEM = "audit-trail-system"
THIRD_PARTY = "audit-trail-diary"
JSON = {"Content-Type": "application/fhir+json"}


@dataclass
class Caller:
    http: aiohttp.ClientSession
    token: str

    def jti(self) -> str:
        payload = self.token.split(".")[1]
        return str(orjson.loads(base64.urlsafe_b64decode(payload + "=="))["jti"])


@dataclass
class Answer:
    status: int
    body: Any
    request_id: str


async def send(caller: Caller, method: str, url: str, body: Any = None) -> Answer:
    data = orjson.dumps(body) if body is not None else None
    async with caller.http.request(method, url, data=data, headers=JSON) as response:
        text = await response.read()
        parsed = orjson.loads(text) if text else None
        return Answer(response.status, parsed, response.headers["X-Request-Id"])


async def events_of(gateway: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    """The AuditEvents the gateway recorded for one request (durable before the answer: they are
    there as soon as it is)."""
    reader = AuditReader(services(gateway).db)
    page = await reader.search(AuditQuery(count=1000))
    return [
        e
        for e in page.events
        if any(
            (entity.get("what") or {}).get("identifier", {}).get("value") == request_id
            and entity.get("type", {}).get("code") == "XrequestId"
            for entity in e.get("entity", [])
        )
    ]


def patients(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]


def released(event: dict[str, Any]) -> int:
    [patient] = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
    return int(next(d["valueString"] for d in patient["detail"] if d["type"] == "released"))


def data(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "4"]


def query(event: dict[str, Any]) -> str | None:
    found = [e["query"] for e in event["entity"] if e.get("role", {}).get("code") == "24"]
    return base64.b64decode(found[0]).decode() if found else None


def decisions(event: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {d["type"]: d["valueString"] for d in e["detail"]}
        for e in event["entity"]
        if e.get("type", {}).get("code") == "Consent"
    ]


def shape(event: dict[str, Any]) -> tuple[str, str, str]:
    return (event["subtype"][0]["code"], event["action"], event["outcome"])


def client_of(event: dict[str, Any]) -> str | None:
    for agent in event["agent"]:
        identifier = (agent.get("who") or {}).get("identifier") or {}
        if identifier.get("system") == "urn:fhir-gateway:client":
            return str(identifier["value"])
    return None


def policies(event: dict[str, Any]) -> list[str]:
    return [p for agent in event["agent"] for p in agent.get("policy", [])]


@pytest_asyncio.fixture
async def callers(
    gateway: RunningGateway, fresh_upstream: Stack
) -> AsyncIterator[dict[str, Caller]]:
    """A trusted hospital system (``system/*.cruds``), Amelia's third-party diary app with her
    consent, and the same app for Maria, who never consented."""
    await register_client(gateway, SYSTEM, trusted=True, scope="system/*.cruds")
    await register_client(gateway, THIRD_PARTY, trusted=False, purposes=("PATRQT",))
    now = datetime.now(UTC)
    await gateway.server.app[CONSENTS].grant_app(
        AMELIA,
        THIRD_PARTY,
        "Diary",
        ["PATRQT"],
        ["Patient", "Observation"],
        [],
        now - timedelta(minutes=1),
        now + timedelta(days=1),
        change=Change(f"Patient/{AMELIA}", Channel.CONSENT_SCREEN),
    )
    tokens = {
        "system": await minted_token(
            gateway,
            client_id=SYSTEM,
            scope="system/*.cruds",
            user_id=None,
            fhir_user=None,
            patient=None,
            acts_for=(),
            purposes=("TREAT",),
        ),
        "amelia": await minted_token(
            gateway, client_id=THIRD_PARTY, scope="patient/*.rs", purposes=("PATRQT",)
        ),
        "maria": await minted_token(
            gateway,
            client_id=THIRD_PARTY,
            scope="patient/*.rs",
            user_id="maria-user",
            fhir_user=f"Patient/{MARIA_ID}",
            patient=MARIA_ID,
            acts_for=(MARIA_ID,),
            purposes=("PATRQT",),
        ),
    }
    made = {}
    for name, token in tokens.items():
        made[name] = Caller(
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}), token
        )
    try:
        yield made
    finally:
        for caller in made.values():
            await caller.http.close()
        fresh_upstream.upstream.reset()


async def test_a01_a04_a_read_is_one_event_naming_the_resource_version_and_the_patient(
    gateway: RunningGateway, callers: dict[str, Caller]
) -> None:
    amelia = callers["amelia"]
    answer = await send(amelia, "GET", f"{gateway.fhir}/Patient/{AMELIA}")
    assert answer.status == 200
    [event] = await events_of(gateway, answer.request_id)
    assert shape(event) == ("read", "R", "0")
    assert patients(event) == [f"Patient/{AMELIA}"] and released(event) == 1
    version = answer.body["meta"]["versionId"]
    assert data(event) == [f"Patient/{AMELIA}/_history/{version}"]
    assert client_of(event) == THIRD_PARTY
    assert policies(event) == [amelia.jti()]  # the token's jti, never the token
    [decision] = decisions(event)  # her Consent decided, minimised for PATRQT
    assert decision["decision"] == "permit" and decision["minimisation-profile"] == "PATRQT"
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "PATRQT"


async def test_a04_a_search_is_one_event_with_the_raw_query_and_no_list_of_results(
    gateway: RunningGateway, callers: dict[str, Caller]
) -> None:
    url = f"{gateway.fhir}/Observation?patient={AMELIA}&_count=2"
    answer = await send(callers["amelia"], "GET", url)
    assert answer.status == 200 and len(answer.body["entry"]) == 2
    [event] = await events_of(gateway, answer.request_id)
    assert shape(event) == ("search-type", "E", "0")
    assert query(event) == f"GET Observation?patient={AMELIA}&_count=2"
    assert data(event) == []  # never the results
    assert released(event) == 2
    # The next page is a request of its own, recorded the same way.
    link = next(ln["url"] for ln in answer.body["link"] if ln["relation"] == "next")
    page = await send(callers["amelia"], "GET", link)
    [event] = await events_of(gateway, page.request_id)
    assert shape(event) == ("search", "E", "0") and patients(event) == [f"Patient/{AMELIA}"]
    # The search the page continues, not the sealed token of the link.
    continued = query(event) or ""
    assert "p1." not in continued and f"patient={AMELIA}" in continued


async def test_a04_a_system_search_over_two_patients_is_two_events(
    gateway: RunningGateway, callers: dict[str, Caller]
) -> None:
    url = f"{gateway.fhir}/Condition?patient={AMELIA},{LEO}"
    answer = await send(callers["system"], "GET", url)
    assert answer.status == 200
    owners = {
        e["resource"]["subject"]["reference"] for e in answer.body["entry"] if "resource" in e
    }
    assert owners == {f"Patient/{AMELIA}", f"Patient/{LEO}"}
    events = await events_of(gateway, answer.request_id)
    assert sorted(p for e in events for p in patients(e)) == sorted(owners)
    assert len(events) == 2  # one per patient, not per resource
    per_patient = {patients(e)[0]: released(e) for e in events}
    for reference in owners:
        expected = sum(
            1 for e in answer.body["entry"] if e["resource"]["subject"]["reference"] == reference
        )
        assert per_patient[reference] == expected
    assert all(shape(e) == ("search-type", "E", "0") for e in events)
    assert all(decisions(e)[0]["basis"] == "opt-out" for e in events)  # a trusted app


@pytest.mark.parametrize(
    ("method", "path", "body", "subtype", "action"),
    [
        ("GET", f"Patient/{AMELIA}/_history", None, "history-instance", "R"),
        ("GET", f"Patient/{AMELIA}/$everything", None, "operation", "E"),
        ("GET", f"Patient/{AMELIA}/Observation", None, "search-type", "E"),
    ],
)
async def test_a02_each_read_interaction_has_its_subtype_and_action(
    gateway: RunningGateway,
    callers: dict[str, Caller],
    method: str,
    path: str,
    body: Any,
    subtype: str,
    action: str,
) -> None:
    answer = await send(callers["system"], method, f"{gateway.fhir}/{path}", body)
    assert answer.status == 200, answer.body
    [event] = await events_of(gateway, answer.request_id)
    assert shape(event) == (subtype, action, "0")
    assert patients(event) == [f"Patient/{AMELIA}"]
    assert AuditEvent.model_validate(event)  # a valid R4 AuditEvent


async def test_a02_a_vread_names_the_version_read(
    gateway: RunningGateway, callers: dict[str, Caller]
) -> None:
    current = await send(callers["system"], "GET", f"{gateway.fhir}/Patient/{AMELIA}")
    version = current.body["meta"]["versionId"]
    url = f"{gateway.fhir}/Patient/{AMELIA}/_history/{version}"
    answer = await send(callers["system"], "GET", url)
    assert answer.status == 200
    [event] = await events_of(gateway, answer.request_id)
    assert shape(event) == ("vread", "R", "0")
    assert data(event) == [f"Patient/{AMELIA}/_history/{version}"]


async def test_a02_writes_and_bundles_are_recorded_as_such(
    gateway: RunningGateway, callers: dict[str, Caller]
) -> None:
    system = callers["system"]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{AMELIA}"},
        "valueQuantity": {"value": 61, "unit": "/min"},
    }
    created = await send(system, "POST", f"{gateway.fhir}/Observation", observation)
    assert created.status == 201, created.body
    oid = created.body["id"]
    [event] = await events_of(gateway, created.request_id)
    assert shape(event) == ("create", "C", "0")
    version = created.body["meta"]["versionId"]
    assert data(event) == [f"Observation/{oid}/_history/{version}"]
    assert patients(event) == [f"Patient/{AMELIA}"]

    changed = {**created.body, "status": "amended"}
    updated = await send(system, "PUT", f"{gateway.fhir}/Observation/{oid}", changed)
    assert updated.status == 200
    [event] = await events_of(gateway, updated.request_id)
    assert shape(event) == ("update", "U", "0")

    deleted = await send(system, "DELETE", f"{gateway.fhir}/Observation/{oid}")
    assert deleted.status in (200, 204)
    [event] = await events_of(gateway, deleted.request_id)
    assert shape(event)[:2] == ("delete", "D")

    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{AMELIA}"}},
            {"request": {"method": "GET", "url": f"Patient/{LEO}"}},
        ],
    }
    answered = await send(system, "POST", gateway.fhir, batch)
    assert answered.status == 200
    events = await events_of(gateway, answered.request_id)
    assert {shape(e) for e in events} == {("batch", "E", "0")}
    assert sorted(p for e in events for p in patients(e)) == [
        f"Patient/{AMELIA}",
        f"Patient/{LEO}",
    ]


async def test_a01_refusals_are_recorded_with_their_outcome_and_reason(
    gateway: RunningGateway, callers: dict[str, Caller], http: aiohttp.ClientSession
) -> None:
    # No consent: Maria never approved the diary (403, one event, the decision that refused).
    refused = await send(callers["maria"], "GET", f"{gateway.fhir}/Patient/{MARIA_ID}")
    assert refused.status == 403
    [event] = await events_of(gateway, refused.request_id)
    assert shape(event) == ("read", "R", "4")
    assert patients(event) == [f"Patient/{MARIA_ID}"] and released(event) == 0
    assert decisions(event)[0]["decision"] == "deny"
    assert "consent" in event["outcomeDesc"]
    # Another patient's resource: answered as missing (404), recorded, nothing of Leo's named.
    hidden = await send(callers["amelia"], "GET", f"{gateway.fhir}/Patient/{LEO}")
    assert hidden.status == 404
    [event] = await events_of(gateway, hidden.request_id)
    assert shape(event) == ("read", "R", "4") and patients(event) == []
    # No token at all: one event, no user, outcome 4.
    async with http.get(f"{gateway.fhir}/Patient/{AMELIA}") as response:
        assert response.status == 401
        request_id = response.headers["X-Request-Id"]
    [event] = await events_of(gateway, request_id)
    assert shape(event) == ("read", "R", "4") and policies(event) == []
    assert AuditEvent.model_validate(event)


async def test_a01_sign_in_token_consent_and_revocation_are_on_the_same_chain(
    gateway: RunningGateway,
) -> None:
    tokens = await flow_token(gateway, user=MARIA, scope="patient/*.rs offline_access openid")
    user = await services(gateway).users.by_username(MARIA.username)
    assert user is not None
    reader = AuditReader(services(gateway).db)
    mine = (await reader.search(AuditQuery(agent=f"urn:fhir-gateway:user|{user.user_id}"))).events
    subtypes = {e["subtype"][0]["code"] for e in mine}
    assert "110122" in subtypes  # sign-in
    assert "AuthZ-Consent" in subtypes  # the app approved, and the token issued
    jti = orjson.loads(base64.urlsafe_b64decode(tokens["access_token"].split(".")[1] + "=="))["jti"]
    issued = [
        e
        for e in mine
        if any(
            (x.get("what") or {}).get("identifier", {}).get("value", "").endswith(jti)
            for x in e["entity"]
        )
    ]
    assert len(issued) == 1
    consents = (await reader.search(AuditQuery(patient=MARIA_ID, subtype="create"))).events
    assert any(
        (x.get("what") or {}).get("reference", "").startswith("Consent/")
        for e in consents
        for x in e["entity"]
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base}/auth/revoke",
            data={"token": tokens["refresh_token"], "client_id": "test-patient-app"},
        ) as response,
    ):
        assert response.status == 200
    revoked = (await reader.search(AuditQuery(subtype="110135"))).events
    assert any("revocation" in str(e) for e in revoked)
    # Nothing anywhere holds a token, and the chain verifies.
    everything = (await reader.search(AuditQuery(count=1000))).events
    text = orjson.dumps(everything).decode()
    for secret in (tokens["access_token"], tokens["refresh_token"], tokens["id_token"]):
        assert secret not in text
    for event in everything:
        AuditEvent.model_validate(event)
    report = await verify_all(services(gateway).db)
    assert report.ok, report
