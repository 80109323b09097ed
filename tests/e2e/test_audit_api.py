"""``/fhir/AuditEvent`` served by a running gateway from MongoDB (AUDIT.md A-06, A-11): every
search parameter, who sees what (administrators everything, a patient the events where they are
the patient entity, a parent their child's too), paging bound to the token, writes refused, bad
input answered with an OperationOutcome, and the upstream's AuditEvents never released.

Events are written the way the gateway writes them: through an :class:`AuditLog` on the
gateway's database."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.audit import security
from gateway.audit.events import request_events
from gateway.audit.facts import Actor, Observer, PatientRelease
from gateway.audit.log import AuditLog
from tests.audit.conftest import audit_client
from tests.audit.samples import PERMIT, facts
from tests.conftest import RunningGateway, Stack
from tests.e2e.conftest import SessionFor
from tests.support.tokens import MARIA as MARIA_USER
from tests.support.tokens import ensure_user

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"
MARIA = "pat-maria-garcia"
LEO = "pat-leo-garcia"
OTHER = "pat-somebody-else"
HANNAH = "Practitioner/prac-hannah-okafor"
CLIENT = "urn:fhir-gateway:client"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"


def at(day: int, hour: int = 10, ms: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, 0, 0, ms * 1000, tzinfo=UTC)


@dataclass
class Log:
    """The events written, by name, with their ids."""

    ids: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.ids[name]


def _release(patient: str) -> tuple[PatientRelease, ...]:
    return (PatientRelease(patient, (PERMIT,), (f"Observation/obs-{patient}",)),)


@pytest_asyncio.fixture
async def log(
    gateway: RunningGateway, local_stack_env: Stack, tmp_path: Path
) -> AsyncIterator[Log]:
    """Eight events on the gateway's audit log, oldest first (names → ids)."""
    observer = Observer(TEST_CHAIN, gateway.fhir)
    written: dict[str, dict[str, Any]] = {
        "amelia-read": request_events(
            facts(at=at(1), fhir_user=HANNAH, client_id="ward-app", patients=_release(AMELIA)),
            observer,
        )[0],
        "maria-search": request_events(
            facts(
                at=at(2),
                interaction="search-type",
                path="Observation",
                query=f"patient={MARIA},{OTHER}",  # one event per patient: this is Maria's
                fhir_user=HANNAH,
                client_id="ward-app",
                patients=_release(MARIA),
            ),
            observer,
        )[0],
        "leo-refused": request_events(
            facts(
                at=at(3),
                status=403,
                reason="refused",
                client_id="other-app",
                fhir_user=f"Patient/{MARIA}",
                patients=_release(LEO),
            ),
            observer,
        )[0],
        "login": security.login(
            observer, Actor(user_id="u-7", address="192.0.2.7"), succeeded=True, at=at(4)
        ),
        "amelia-create": request_events(
            facts(
                at=at(5, ms=250),
                interaction="create",
                method="POST",
                path="Observation",
                status=201,
                client_id="patient-app",
                fhir_user=f"Patient/{AMELIA}",
                patients=_release(AMELIA),
            ),
            observer,
        )[0],
        "other-read": request_events(
            facts(at=at(6), client_id="ward-app", fhir_user=HANNAH, patients=_release(OTHER)),
            observer,
        )[0],
        "amelia-failed": request_events(
            facts(
                at=at(7),
                status=502,
                reason="upstream",
                client_id="ward-app",
                fhir_user=HANNAH,
                patients=_release(AMELIA),
            ),
            observer,
        )[0],
        "key-rotated": security.key_rotated(observer, Actor.cli(), new_kid="k2", at=at(8)),
    }
    client = audit_client(local_stack_env.mongo_uri)
    audit = AuditLog(client[gateway.settings.mongodb_database], tmp_path / "spool", observer, None)
    await audit.start()
    try:
        await audit.record(list(written.values()))
    finally:
        await audit.close()
        await client.close()
    yield Log({name: event["id"] for name, event in written.items()})


async def backend_session(session_for: SessionFor, scope: str) -> aiohttp.ClientSession:
    """A trusted backend service (no user, no patient) with ``scope``."""
    return await session_for(
        client_id="audit-admin",
        scope=scope,
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )


@pytest_asyncio.fixture
async def admin(session_for: SessionFor) -> aiohttp.ClientSession:
    """A trusted backend service with system/AuditEvent.rs: the hospital's compliance tooling."""
    return await backend_session(session_for, "system/AuditEvent.rs")


@pytest_asyncio.fixture
async def amelia(session_for: SessionFor) -> aiohttp.ClientSession:
    return await session_for(client_id="amelias-app", trusted=False, scope="patient/AuditEvent.rs")


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with http.get(url, params=params or None) as response:
        return response.status, await response.json(content_type=None)


async def names(
    http: aiohttp.ClientSession, gateway: RunningGateway, log: Log, **params: str
) -> list[str]:
    """The names of the events a search finds, in the order found (one page)."""
    status, bundle = await get(http, f"{gateway.fhir}/AuditEvent", **params)
    assert status == 200, bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    by_id = {i: n for n, i in log.ids.items()}
    # The gateway records this test's own requests too (on its own chain, not the test's):
    # those are left out; every other event found must be one the test wrote.
    return [
        by_id[e["resource"]["id"]]
        for e in bundle.get("entry", [])
        if e["resource"]["source"]["site"] == TEST_CHAIN
    ]


def refused(status: int, body: Any, expected: int, says: str) -> None:
    assert status == expected, body
    assert body["resourceType"] == "OperationOutcome", body
    assert says in body["issue"][0]["diagnostics"], body


TEST_CHAIN = "api-test:1"
"""The chain the test writes its events on."""

NEWEST_FIRST = [
    "key-rotated",
    "amelia-failed",
    "other-read",
    "amelia-create",
    "login",
    "leo-refused",
    "maria-search",
    "amelia-read",
]


# --- administrators -------------------------------------------------------------------------


async def test_a11_an_administrator_sees_every_event_newest_first(
    gateway: RunningGateway,
    log: Log,
    admin: aiohttp.ClientSession,
    session_for: SessionFor,
) -> None:
    assert await names(admin, gateway, log) == NEWEST_FIRST
    status, event = await get(admin, f"{gateway.fhir}/AuditEvent/{log['login']}")
    assert status == 200 and event["resourceType"] == "AuditEvent"
    assert event["id"] == log["login"]
    # user/AuditEvent.rs of a trusted app (the privacy office's) is an administrator's too.
    office = await session_for(
        client_id="privacy-office",
        scope="user/AuditEvent.rs",
        fhir_user=HANNAH,
        patient=None,
        acts_for=(),
    )
    assert await names(office, gateway, log) == NEWEST_FIRST


async def test_a11_search_by_patient_agent_date_subtype_outcome_and_action(
    gateway: RunningGateway, log: Log, admin: aiohttp.ClientSession
) -> None:
    async def found(**params: str) -> list[str]:
        return await names(admin, gateway, log, **params)

    # patient: Patient/[id] or [id]; and the compartment search
    assert await found(patient=f"Patient/{AMELIA}") == [
        "amelia-failed",
        "amelia-create",
        "amelia-read",
    ]
    assert await found(patient=LEO) == ["leo-refused"]
    status, bundle = await get(admin, f"{gateway.fhir}/Patient/{MARIA}/AuditEvent")
    assert status == 200 and [e["resource"]["id"] for e in bundle["entry"]] == [log["maria-search"]]
    # agent: a reference (who.reference) or an identifier (an app, a user)
    assert await found(agent=HANNAH, patient=AMELIA) == ["amelia-failed", "amelia-read"]
    assert await found(agent=f"Patient/{MARIA}") == ["leo-refused"]
    assert await found(**{"agent:identifier": f"{CLIENT}|patient-app"}) == ["amelia-create"]
    assert await found(**{"agent:identifier": "urn:fhir-gateway:user|u-7"}) == ["login"]
    # date: recorded, eq by default at the value's precision, ge/gt/le/lt, repeated = AND
    assert await found(date="2026-03-05") == ["amelia-create"]
    assert await found(date="eq2026-03-05T10:00:00.250Z") == ["amelia-create"]
    assert await found(date="gt2026-03-05T10:00:00.250Z", patient=AMELIA) == ["amelia-failed"]
    assert await found(date="ge2026-03-07") == ["key-rotated", "amelia-failed"]
    assert await found(date="lt2026-03-02") == ["amelia-read"]
    assert await found(date="le2026-03-02") == ["maria-search", "amelia-read"]
    status, bundle = await get(
        admin, f"{gateway.fhir}/AuditEvent?date=ge2026-03-03&date=lt2026-03-05"
    )
    assert [e["resource"]["id"] for e in bundle["entry"]] == [log["login"], log["leo-refused"]]
    assert await found(date="2025") == []
    # subtype: a code, or system|code
    assert await found(subtype="search-type") == ["maria-search"]
    assert await found(subtype=f"{DICOM}|110122") == ["login"]
    assert await found(subtype=f"{RESTFUL}|110122") == []  # that code, in another system
    assert await found(subtype="create", patient=AMELIA) == ["amelia-create"]
    # outcome and action
    assert await found(outcome="4") == ["leo-refused"]
    assert await found(outcome="http://hl7.org/fhir/audit-event-outcome|8") == ["amelia-failed"]
    assert await found(action="C") == ["amelia-create"]
    assert await found(action="U") == ["key-rotated"]
    # POST _search takes the same parameters as a form
    async with admin.post(
        f"{gateway.fhir}/AuditEvent/_search", data={"patient": LEO, "outcome": "4"}
    ) as response:
        bundle = await response.json(content_type=None)
    assert response.status == 200 and [e["resource"]["id"] for e in bundle["entry"]] == [
        log["leo-refused"]
    ]


# --- patients -------------------------------------------------------------------------------


async def test_a11_a_patient_sees_only_the_events_where_they_are_the_patient_entity(
    gateway: RunningGateway, log: Log, amelia: aiohttp.ClientSession
) -> None:
    assert await names(amelia, gateway, log) == ["amelia-failed", "amelia-create", "amelia-read"]
    assert await names(amelia, gateway, log, patient=AMELIA, outcome="0") == [
        "amelia-create",
        "amelia-read",
    ]
    status, event = await get(amelia, f"{gateway.fhir}/AuditEvent/{log['amelia-read']}")
    assert status == 200 and event["id"] == log["amelia-read"]
    # Another patient's events, and events with no patient at all, are as if they did not exist.
    for name in ("maria-search", "other-read", "login", "key-rotated"):
        status, body = await get(amelia, f"{gateway.fhir}/AuditEvent/{log[name]}")
        refused(status, body, 404, "no such AuditEvent")
    # Asking for another patient is refused, not answered empty.
    status, body = await get(amelia, f"{gateway.fhir}/AuditEvent", patient=MARIA)
    refused(status, body, 403, "outside this token's access")
    status, body = await get(amelia, f"{gateway.fhir}/Patient/{MARIA}/AuditEvent")
    refused(status, body, 403, "outside this token's access")
    # Other criteria only narrow what she sees.
    assert await names(amelia, gateway, log, agent=HANNAH) == ["amelia-failed", "amelia-read"]
    assert await names(amelia, gateway, log, subtype="login") == []


async def test_a11_a_parent_sees_her_own_and_her_childs_events(
    gateway: RunningGateway, log: Log, session_for: SessionFor
) -> None:
    maria = await session_for(
        client_id="marias-app",
        trusted=False,
        scope="patient/AuditEvent.rs",
        user_id=await ensure_user(gateway, MARIA_USER),  # her account links her to Leo (C-25)
        fhir_user=f"Patient/{MARIA}",
        patient=MARIA,
        acts_for=(MARIA, LEO),
    )
    assert await names(maria, gateway, log) == ["leo-refused", "maria-search"]
    # She gets her events without the raw query, which names another patient; an administrator
    # gets it whole.
    status, event = await get(maria, f"{gateway.fhir}/AuditEvent/{log['maria-search']}")
    assert status == 200 and event["entity"]
    assert not any("query" in entity for entity in event["entity"])
    assert OTHER not in str(event)
    # Nor the caller's network address nor the token's id: who, what, when and why stay.
    assert not any("policy" in agent for agent in event["agent"])
    assert [a["network"]["type"] for a in event["agent"] if "network" in a] == ["5"]
    assert any(a.get("requestor") for a in event["agent"])
    admin = await backend_session(session_for, "system/AuditEvent.rs")
    status, whole = await get(admin, f"{gateway.fhir}/AuditEvent/{log['maria-search']}")
    queries = [base64.b64decode(e["query"]).decode() for e in whole["entity"] if "query" in e]
    assert any("policy" in agent for agent in whole["agent"])
    assert {a["network"]["type"] for a in whole["agent"] if "network" in a} == {"2", "5"}
    assert queries == [f"GET Observation?patient={MARIA},{OTHER}"]
    assert await names(maria, gateway, log, patient=LEO) == ["leo-refused"]
    status, body = await get(maria, f"{gateway.fhir}/AuditEvent", patient=AMELIA)
    refused(status, body, 403, "outside this token's access")


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        # an administrator's scope from an app not registered as trusted
        (
            {"client_id": "third-party", "trusted": False, "scope": "system/AuditEvent.rs"},
            "for administrators only",
        ),
        # wildcards do not reach the audit log, for any context
        ({"client_id": "audit-admin", "scope": "system/*.rs"}, "names AuditEvent"),
        ({"client_id": "amelias-app", "trusted": False, "scope": "patient/*.rs"}, "names"),
        # a granular scope cannot be checked against the log: it never widens access
        (
            {
                "client_id": "amelias-app",
                "trusted": False,
                "scope": "patient/AuditEvent.rs?outcome=0",
            },
            "names AuditEvent",
        ),
        # read without search
        (
            {"client_id": "amelias-app", "trusted": False, "scope": "patient/AuditEvent.r"},
            "searching",
        ),
        # a patient scope with no patient in context
        (
            {
                "client_id": "amelias-app",
                "trusted": False,
                "scope": "patient/AuditEvent.rs",
                "patient": None,
                "acts_for": (),
            },
            "need a patient in context",
        ),
    ],
)
async def test_a11_who_is_refused_the_audit_log(
    gateway: RunningGateway,
    log: Log,
    session_for: SessionFor,
    claims: dict[str, Any],
    says: str,
) -> None:
    if claims.get("patient", "") is None or str(claims["scope"]).startswith("system/"):
        claims = {"user_id": None, "fhir_user": None, "patient": None, "acts_for": (), **claims}
    http = await session_for(**claims)
    status, body = await get(http, f"{gateway.fhir}/AuditEvent")
    refused(status, body, 403, says)
    if not str(claims["scope"]).endswith(".r"):
        status, body = await get(http, f"{gateway.fhir}/AuditEvent/{log['login']}")
        assert status == 403, body


# --- no writes (A-06) ----------------------------------------------------------------------


async def test_a06_no_write_reaches_the_audit_log_nor_the_upstream(
    gateway: RunningGateway,
    log: Log,
    session_for: SessionFor,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
) -> None:
    # A trusted app whose scopes would allow any write: the audit log still takes none.
    writer = await backend_session(session_for, "system/*.cruds system/AuditEvent.cruds")
    status, event = await get(
        await backend_session(session_for, "system/AuditEvent.rs"),
        f"{gateway.fhir}/AuditEvent/{log['login']}",
    )
    assert status == 200
    forged = {**event, "outcome": "4"}

    async def upstream_count() -> int:
        url = f"{local_stack_env.upstream.base_url}/AuditEvent"
        status, found = await get(http, url, _summary="count")
        assert status == 200
        return int(found["total"])

    before = await upstream_count()
    new = {key: value for key, value in forged.items() if key != "id"}
    url = f"{gateway.fhir}/AuditEvent"
    for method, target, body in (
        ("POST", url, new),
        ("PUT", f"{url}/{log['login']}", forged),
        ("PUT", f"{url}/brand-new-id", {**forged, "id": "brand-new-id"}),
        ("PATCH", f"{url}/{log['login']}", [{"op": "replace", "path": "/outcome", "value": "4"}]),
        ("DELETE", f"{url}/{log['login']}", None),
    ):
        media = "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
        async with writer.request(
            method, target, json=body, headers={"Content-Type": media}
        ) as response:
            answer = await response.json(content_type=None)
        refused(response.status, answer, 405, "append-only")
    # Nor inside a transaction or a batch.
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": new, "request": {"method": "POST", "url": "AuditEvent"}}],
    }
    async with writer.post(gateway.fhir, json=transaction) as response:
        answer = await response.json(content_type=None)
    refused(response.status, answer, 405, "entry 1: AuditEvents cannot be created")
    batch = {**transaction, "type": "batch"}
    async with writer.post(gateway.fhir, json=batch) as response:
        answer = await response.json(content_type=None)
    assert response.status == 200
    assert answer["entry"][0]["response"]["status"].startswith("405")
    # History and versions: the log has none to give.
    for path in (f"AuditEvent/{log['login']}/_history", "AuditEvent/_history"):
        status, body = await get(writer, f"{gateway.fhir}/{path}")
        refused(status, body, 405, "read one by id or search")
    # The event is as it was, and nothing reached the upstream.
    status, kept = await get(writer, f"{url}/{log['login']}")
    assert status == 200 and kept == event
    for event_id in (log["login"], "brand-new-id"):
        status, _ = await get(http, f"{local_stack_env.upstream.base_url}/AuditEvent/{event_id}")
        assert status == 404
    assert await upstream_count() == before


# --- paging --------------------------------------------------------------------------------


def _next(bundle: dict[str, Any]) -> str | None:
    return next((ln["url"] for ln in bundle.get("link", []) if ln["relation"] == "next"), None)


async def test_a11_paging_walks_the_whole_log_with_links_bound_to_the_token(
    gateway: RunningGateway,
    log: Log,
    admin: aiohttp.ClientSession,
    amelia: aiohttp.ClientSession,
    session_for: SessionFor,
) -> None:
    seen: list[str] = []
    # The test's events, not the gateway's records of the test's own requests (made today).
    before = {"date": "lt2026-04-01"}
    status, bundle = await get(admin, f"{gateway.fhir}/AuditEvent", _count="3", **before)
    assert status == 200
    pages = 1
    while True:
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        link = _next(bundle)
        if link is None:
            break
        assert link.startswith(f"{gateway.fhir}/AuditEvent?_page=")
        status, bundle = await get(admin, link)
        assert status == 200, bundle
        pages += 1
    assert pages == 3 and seen == [log[name] for name in NEWEST_FIRST]
    assert "total" not in bundle

    status, first = await get(
        admin, f"{gateway.fhir}/AuditEvent", _count="1", patient=AMELIA, **before
    )
    link = _next(first)
    assert link is not None
    token = link.split("_page=", 1)[1]
    assert AMELIA not in base64.urlsafe_b64decode(token.split(".", 1)[1] + "==").decode("latin-1")
    # The search goes on with its criteria.
    status, second = await get(admin, link)
    assert [e["resource"]["id"] for e in second["entry"]] == [log["amelia-create"]]
    # Another token (another app, or the same app for another user) cannot follow it.
    other_admin = await session_for(
        client_id="second-admin",
        scope="system/AuditEvent.rs",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )
    status, body = await get(other_admin, link)
    refused(status, body, 403, "issued to another token")
    status, body = await get(amelia, link)
    refused(status, body, 403, "issued to another token")
    # A changed byte, or an audit link followed as a proxy link (it would reach the upstream).
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    status, body = await get(admin, f"{gateway.fhir}/AuditEvent?_page={flipped}")
    refused(status, body, 403, "not valid")
    status, body = await get(admin, f"{gateway.fhir}/_page/{token}")
    refused(status, body, 403, "not valid")
    status, body = await get(admin, link + "&patient=" + MARIA)
    refused(status, body, 400, "_page takes no other parameters")

    # A patient's pages hold only their events.
    status, bundle = await get(amelia, f"{gateway.fhir}/AuditEvent", _count="2", **before)
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    status, bundle = await get(amelia, _next(bundle) or "")
    ids += [e["resource"]["id"] for e in bundle["entry"]]
    assert _next(bundle) is None
    assert ids == [log["amelia-failed"], log["amelia-create"], log["amelia-read"]]


async def test_a11_a_proxy_paging_link_does_not_open_the_audit_log(
    gateway: RunningGateway, log: Log, session_for: SessionFor
) -> None:
    app = await backend_session(session_for, "system/AuditEvent.rs system/Observation.rs")
    status, bundle = await get(app, f"{gateway.fhir}/Observation", _count="1")
    link = _next(bundle)
    assert status == 200 and link is not None and "/_page/" in link
    token = link.rsplit("/", 1)[1]
    status, body = await get(app, f"{gateway.fhir}/AuditEvent?_page={token}")
    refused(status, body, 403, "not valid")


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("_sort=date", "not _sort"),
        ("entity=Observation/o1", "not entity"),
        ("patient:missing=true", "not patient:missing"),
        ("date=yesterday", "date takes a FHIR date"),
        ("date=ne2026-03-01", "prefixes eq, ge, gt, le and lt"),
        ("date=ge2026-13-01", "date takes a FHIR date"),
        ("_count=0", "_count takes a number"),
        ("_count=many", "_count takes a number"),
        ("outcome=3", "outcome takes one of 0, 12, 4, 8"),
        ("outcome=http://other.example|4", "outcome takes one of"),
        ("action=X", "action takes one of"),
        ("agent=prac-hannah-okafor", "agent takes a reference"),
        ("agent:identifier=just-a-value", "agent:identifier takes"),
        ("agent=Practitioner/a&agent:identifier=s|v", "not both"),
        ("patient=Observation/o1", "patient takes Patient/[id]"),
        ("patient=a,b", "one value"),
        ("subtype=read&subtype=vread", "subtype may be given once"),
        ("subtype=", "subtype has no value"),
        ("subtype=http://x|", "subtype takes"),
        ("_page=not-a-link", "not valid"),
    ],
)
async def test_bad_search_input_is_an_operation_outcome_never_a_500(
    gateway: RunningGateway, log: Log, admin: aiohttp.ClientSession, query: str, says: str
) -> None:
    async with admin.get(f"{gateway.fhir}/AuditEvent?{query}") as response:
        body = await response.json(content_type=None)
    refused(response.status, body, 403 if query.startswith("_page") else 400, says)


async def test_a11_a_missing_or_malformed_id_is_404_or_400(
    gateway: RunningGateway, log: Log, admin: aiohttp.ClientSession
) -> None:
    status, body = await get(admin, f"{gateway.fhir}/AuditEvent/no-such-event")
    refused(status, body, 404, "no such AuditEvent")
    status, body = await get(admin, f"{gateway.fhir}/AuditEvent/bad$id")
    assert status == 400 and body["resourceType"] == "OperationOutcome"


# --- the upstream's AuditEvents --------------------------------------------------------------


@pytest_asyncio.fixture
async def upstream_audit_event(
    fresh_upstream: Stack, http: aiohttp.ClientSession
) -> AsyncIterator[str]:
    """An AuditEvent about Amelia stored in the upstream (as forwarding, or the EHR, puts them
    there); the upstream is reset afterwards."""
    event = {
        "resourceType": "AuditEvent",
        "id": "upstream-audit-1",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "recorded": "2026-03-09T10:00:00.000Z",
        "agent": [{"who": {"reference": HANNAH}, "requestor": True}],
        "source": {"observer": {"display": "EHR"}},
        "entity": [
            {
                "what": {"reference": f"Patient/{AMELIA}"},
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                },
            }
        ],
    }
    base = fresh_upstream.upstream.base_url
    async with http.put(
        f"{base}/AuditEvent/{event['id']}",
        json=event,
        headers={"Content-Type": "application/fhir+json"},
    ) as response:
        assert response.status == 201, await response.text()
    try:
        yield str(event["id"])
    finally:
        fresh_upstream.upstream.reset()


async def test_a11_the_upstreams_audit_events_are_never_released(
    gateway: RunningGateway, session_for: SessionFor, upstream_audit_event: str
) -> None:
    everything = await backend_session(session_for, "system/*.rs system/AuditEvent.rs")
    patient = await session_for(scope="patient/*.rs patient/AuditEvent.rs")
    status, body = await get(everything, f"{gateway.fhir}/AuditEvent/{upstream_audit_event}")
    refused(status, body, 404, "no such AuditEvent")  # not in the log: the upstream is not asked
    for http, path in (
        (everything, f"Patient/{AMELIA}/$everything"),
        (patient, f"Patient/{AMELIA}/$everything"),
        (everything, f"Patient?_id={AMELIA}&_revinclude=AuditEvent:patient"),
        (patient, f"Patient?_id={AMELIA}&_revinclude=AuditEvent:entity"),
        (everything, "_history?_count=1000"),
    ):
        status, bundle = await get(http, f"{gateway.fhir}/{path}")
        assert status == 200, (path, bundle)
        types = {e.get("resource", {}).get("resourceType") for e in bundle.get("entry", [])}
        assert "AuditEvent" not in types, path
        assert "Patient" in types or path.startswith("_history"), path
    status, body = await get(everything, f"{gateway.fhir}?_type=AuditEvent")
    refused(status, body, 403, "served at /fhir/AuditEvent")
