"""Property: no Consent an app sends widens what any app can read (CONSENT.md C-23; SECURITY.md
P-22), through the real gateway, consent store and FHIR server.

Each example resets the patient's Consents to the same starting set (a general permit for a
third-party app, a permit and a deny for a practitioner's app), then has an ordinary app — one of
the readers itself or a bystander, with a token of one of the scope shapes an app can hold (patient,
user, system; Consent only or everything) — send one random Consent body as a create, an update of
a starting Consent, or a delete. Afterwards every reader's view of the patient's record (searches
over the types the fixtures hold) must be a subset of what it was before: an app may narrow
(withdraw its own permit), never widen. No body may produce a 500 either.

Hypothesis runs synchronous test bodies only: the property runs in a worker thread and sends each
request to the event loop that serves the gateway (as in ``test_leaks_property``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consent.codes import (
    CLIENT_SYSTEM,
    RESOURCE_TYPES,
    V3_ACT_CODE,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)
from consent.model import app_grant
from consent.store import COLLECTION, HISTORY, Change, Channel, ConsentStore
from tests.conftest import RunningGateway
from tests.e2e.conftest import SessionFor
from tests.support.tokens import services

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SAMUEL = "pat-samuel-reed"
READERS = {"diary-app": False, "gp-app": False, "ward-app": True}  # client -> trusted
BYSTANDER = "bystander-app"
TYPES = ("Condition", "Observation", "Encounter", "MedicationRequest", "DocumentReference")
SCOPES = (
    "patient/Consent.cruds",
    "patient/*.cruds",
    "patient/Consent.c patient/Consent.u",
    "user/Consent.cruds",
    "user/*.cruds",
    "system/Consent.cruds",
)
SETUP = Change("cli", Channel.CLI, "test set-up")


def _starting_consents() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    diary = app_grant(
        SAMUEL, "diary-app", "Diary", ["PATRQT"], ["Condition", "Observation"], [], now, None
    )
    gp = app_grant(SAMUEL, "gp-app", "GP", ["TREAT"], ["Observation", "Encounter"], [], now, None)
    deny = app_grant(SAMUEL, "gp-app", "GP", ["TREAT"], ["Encounter"], [], now, None)
    deny["provision"]["type"] = "deny"
    deny["provision"].pop("purpose")
    ward_deny = app_grant(SAMUEL, "ward-app", "Ward", ["TREAT"], ["Condition"], [], now, None)
    ward_deny["provision"]["type"] = "deny"
    ward_deny["provision"].pop("purpose")
    return [diary, gp, deny, ward_deny]


_ROLE = {"coding": [{"system": V3_PARTICIPATION_TYPE, "code": "IRCP"}]}


def _actor(who: str) -> dict[str, Any]:
    if "/" in who:
        return {"role": _ROLE, "reference": {"reference": who}}
    return {"role": _ROLE, "reference": {"identifier": {"system": CLIENT_SYSTEM, "value": who}}}


JUNK = st.sampled_from([{"$ne": None}, {"$in": ["permit"]}, [], 7, "x" * 70, None, True])


@st.composite
def provisions(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A provision that is valid more often than not, so that many bodies are stored when the
    rules let them through: mostly permits naming one of the readers, for types and labels."""
    provision: dict[str, Any] = {}
    if depth == 0 or draw(st.booleans()):
        provision["type"] = draw(st.sampled_from(["permit", "permit", "permit", "deny"]))
    actors = draw(
        st.lists(
            st.sampled_from([*READERS, *READERS, BYSTANDER, "Practitioner/prac-hannah-okafor"]),
            min_size=1 if depth == 0 and draw(st.integers(0, 4)) else 0,
            max_size=2,
        )
    )
    if actors:
        provision["actor"] = [_actor(a) for a in actors]
    classes = draw(st.lists(st.sampled_from([*TYPES, "Patient"]), max_size=3))
    if classes:
        provision["class"] = [{"system": RESOURCE_TYPES, "code": c} for c in classes]
    labels = draw(st.lists(st.sampled_from(["PSY", "HIV", "SUD", "R", "V", "psy"]), max_size=3))
    if labels:
        provision["securityLabel"] = [
            {"system": V3_CONFIDENTIALITY if code in "RV" else V3_ACT_CODE, "code": code}
            for code in labels
        ]
    if draw(st.integers(0, 3)) == 0:
        provision["purpose"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}
            for p in draw(st.lists(st.sampled_from(["TREAT", "PATRQT", "HRESCH"]), max_size=2))
        ]
    if draw(st.integers(0, 9)) == 0:
        provision[draw(st.sampled_from(["type", "actor", "class", "period"]))] = draw(JUNK)
    if depth < 2 and draw(st.integers(0, 2)) == 0:
        provision["provision"] = draw(st.lists(provisions(depth + 1), max_size=2))
    return provision


@st.composite
def consent_bodies(draw: st.DrawFn) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = app_grant(
        SAMUEL, "diary-app", "Diary", ["PATRQT"], ["Condition"], [], now, None
    )
    body["status"] = draw(st.sampled_from(["active", "active", "active", "inactive", "draft"]))
    body["provision"] = draw(provisions())
    if draw(st.booleans()):
        body["provision"]["period"] = {
            "start": (now - timedelta(days=1)).isoformat(),
            "end": (now + timedelta(days=draw(st.integers(1, 5000)))).isoformat(),
        }
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["status", "patient", "provision", "scope"]))] = draw(JUNK)
    return body


def _widening(client: str | None) -> dict[str, Any]:
    """A permit for every type the readers search and every sensitivity label, for ``client``
    (``None``: for every app): what an app would send to widen access, if it could."""
    body = app_grant(
        SAMUEL, client or "x", "X", ["PATRQT", "TREAT"], list(TYPES), [], datetime.now(UTC), None
    )
    if client is None:
        del body["provision"]["actor"]
    body["provision"]["securityLabel"] = [
        {"system": V3_ACT_CODE, "code": code} for code in ("PSY", "HIV", "SUD")
    ] + [{"system": V3_CONFIDENTIALITY, "code": "V"}]
    return body


@st.composite
def attempts(draw: st.DrawFn) -> tuple[str, str, str, int, dict[str, Any]]:
    writer = draw(st.sampled_from([*READERS, BYSTANDER]))
    scope = draw(st.sampled_from(SCOPES))
    method = draw(st.sampled_from(["POST", "PUT", "PUT", "DELETE"]))
    target = draw(st.integers(0, 3))
    return writer, scope, method, target, draw(consent_bodies())


async def test_c23_p22_property_no_consent_an_app_sends_widens_any_apps_access(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    db = services(gateway).db
    store = ConsentStore(db)
    loop = asyncio.get_running_loop()

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)

    async def reset() -> list[str]:
        await db[COLLECTION].delete_many({"patient_id": SAMUEL})
        await db[HISTORY].delete_many({"patient_id": SAMUEL})
        return [(await store.create(c, change=SETUP))["id"] for c in _starting_consents()]

    async def token(client: str, scope: str) -> aiohttp.ClientSession:
        patient_scope = scope.startswith("patient/")
        return await session_for(
            trusted=READERS.get(client, False),
            client_id=client,
            scope=scope,
            patient=SAMUEL if patient_scope else None,
            acts_for=(SAMUEL,) if patient_scope else (),
            fhir_user=f"Patient/{SAMUEL}" if patient_scope else "Practitioner/prac-hannah-okafor",
            purposes=("PATRQT",) if client == "diary-app" else ("TREAT",),
        )

    async def view() -> frozenset[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        for client in READERS:
            scope = "patient/*.rs" if client == "diary-app" else "user/*.rs"
            http = await token(client, scope)
            for rtype in TYPES:
                url = f"{gateway.fhir}/{rtype}?patient=Patient/{SAMUEL}&_count=200"
                async with http.get(url) as response:
                    assert response.status == 200, (client, rtype, response.status)
                    bundle = orjson.loads(await response.read())
                for entry in bundle.get("entry", []):
                    if entry.get("search", {}).get("mode") != "outcome":
                        seen.add((client, f"{rtype}/{entry['resource']['id']}"))
            await http.close()
        return frozenset(seen)

    async def attempt(
        writer: str, scope: str, method: str, target: int, body: dict[str, Any]
    ) -> int:
        ids = await reset()
        http = await token(writer, scope)
        url = f"{gateway.fhir}/Consent"
        if method != "POST":
            url += f"/{ids[target]}"
            body = {**body, "id": ids[target]}
        data = orjson.dumps(body) if method != "DELETE" else None
        async with http.request(
            method, url, data=data, headers={"Content-Type": "application/fhir+json"}
        ) as response:
            status = response.status
            await response.read()
        await http.close()
        return status

    await reset()
    before = await view()
    assert {client for client, _ in before} == set(READERS)  # every reader sees something

    @settings(
        max_examples=60,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(attempt_=attempts())
    @example(attempt_=("gp-app", "user/Consent.cruds", "POST", 0, _widening("gp-app")))
    @example(attempt_=("diary-app", "patient/*.cruds", "POST", 0, _widening("diary-app")))
    @example(attempt_=("diary-app", "patient/Consent.cruds", "PUT", 0, _widening("diary-app")))
    @example(attempt_=("bystander-app", "system/Consent.cruds", "POST", 0, _widening(None)))
    @example(attempt_=("gp-app", "user/Consent.cruds", "DELETE", 2, _widening("gp-app")))
    @example(attempt_=("ward-app", "user/*.cruds", "DELETE", 3, _widening("ward-app")))
    @example(
        attempt_=(
            "gp-app",
            "user/Consent.cruds",
            "PUT",
            2,
            {**_widening("gp-app"), "status": "inactive"},
        )
    )
    def never_wider(attempt_: tuple[str, str, str, int, dict[str, Any]]) -> None:
        status = run(attempt(*attempt_))
        assert status != 500, attempt_
        after = run(view())
        assert after <= before, (attempt_, status, sorted(after - before))

    await asyncio.to_thread(never_wider)
