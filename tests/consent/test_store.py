"""Consents in MongoDB (CONSENT.md C-01, C-02, C-05, C-12, C-22; SECURITY.md P-13), against the
real MongoDB-wire server of the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from consent import model
from consent.decide import Basis, RequestAttributes, decide
from consent.errors import (
    ConsentDeleted,
    ConsentInvalid,
    ConsentNotFound,
    InvalidParameter,
    VersionConflict,
)
from consent.store import COLLECTION, Change, Channel, ConsentStore
from tests.conftest import Stack
from tests.consent import crafted
from tests.consent.conftest import seed_resource

CHANGE = Change("cli", Channel.CLI, "test")

DB = AsyncDatabase[dict[str, Any]]
NOW = datetime.now(UTC)
START = NOW - timedelta(days=1)
END = NOW + timedelta(days=90)


@pytest.fixture
async def store(db: DB) -> ConsentStore:
    consents = ConsentStore(db)
    await consents.ensure_indexes()
    return consents


def grant(patient_id: str = "pat-1", client_id: str = "app-a", **extra: Any) -> dict[str, Any]:
    consent = model.app_grant(
        patient_id, client_id, client_id.upper(), ["TREAT"], ["Observation"], [], START, END
    )
    return {**consent, **extra}


def deny_app(patient_id: str = "pat-1", client_id: str = "app-a") -> dict[str, Any]:
    consent = grant(patient_id, client_id)
    consent["provision"] = {"type": "deny", "actor": consent["provision"]["actor"]}
    return consent


def request(client_id: str = "app-a", patient_id: str = "pat-1") -> RequestAttributes:
    return RequestAttributes(patient_id, client_id, datetime.now(UTC), purposes=("TREAT",))


async def test_c02_indexes_on_patient_status_and_actor(store: ConsentStore, db: DB) -> None:
    indexes = [index["key"] for index in (await db[COLLECTION].index_information()).values()]
    assert [("patient_id", 1), ("status", 1)] in indexes
    assert [("client_ids", 1), ("patient_id", 1)] in indexes
    assert [("actors", 1)] in indexes
    await store.ensure_indexes()  # idempotent


async def test_c01_create_assigns_id_and_version(store: ConsentStore) -> None:
    created = await store.create({**grant(), "id": "client-chosen"}, change=CHANGE)
    assert created["id"] != "client-chosen"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"].endswith("Z")
    assert await store.read(created["id"]) == created


async def test_c01_invalid_consent_is_refused_with_every_rule_and_not_stored(
    store: ConsentStore,
) -> None:
    broken = grant()
    del broken["policyRule"]
    broken["provision"] = {**broken["provision"], "type": "maybe"}
    with pytest.raises(ConsentInvalid) as refused:
        await store.create(broken, change=CHANGE)
    assert {issue.rule for issue in refused.value.issues} == {"ppc-1", "binding"}
    assert await store.search(patient_id="pat-1") == []


async def test_c01_update_makes_a_new_version_and_keeps_the_old(store: ConsentStore) -> None:
    created = await store.create(grant(), change=CHANGE)
    consent_id = created["id"]
    updated = await store.update(
        consent_id, {**created, "status": "inactive"}, if_match="1", change=CHANGE
    )
    assert updated["meta"]["versionId"] == "2"
    assert (await store.read(consent_id))["status"] == "inactive"
    assert (await store.vread(consent_id, "1"))["status"] == "active"
    history = await store.history(consent_id)
    assert [(h.version_id, h.method) for h in history] == [("2", "PUT"), ("1", "POST")]
    assert history[0].resource == updated


async def test_c01_stale_version_conflicts(store: ConsentStore) -> None:
    created = await store.create(grant(), change=CHANGE)
    await store.update(
        created["id"], {**created, "status": "inactive"}, if_match="1", change=CHANGE
    )
    with pytest.raises(VersionConflict):
        await store.update(created["id"], created, if_match="1", change=CHANGE)


async def test_c01_concurrent_writers_of_one_version_one_wins(store: ConsentStore) -> None:
    created = await store.create(grant(), change=CHANGE)
    results = await asyncio.gather(
        *(
            store.update(created["id"], {**created, "status": s}, if_match="1", change=CHANGE)
            for s in ("inactive", "rejected", "draft")
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, VersionConflict) for r in results) == 2
    assert [h.version_id for h in await store.history(created["id"])] == ["2", "1"]


async def test_c01_update_cannot_move_a_consent_to_another_patient(store: ConsentStore) -> None:
    created = await store.create(grant(), change=CHANGE)
    moved = {**created, "patient": {"reference": "Patient/pat-2"}}
    with pytest.raises(ConsentInvalid, match="patient"):
        await store.update(created["id"], moved, change=CHANGE)
    with pytest.raises(ConsentInvalid, match="id"):
        await store.update(created["id"], {**created, "id": "other"}, change=CHANGE)
    assert (await store.read(created["id"]))["patient"] == {"reference": "Patient/pat-1"}


async def test_c12_delete_is_recorded_and_ends_the_consent(store: ConsentStore) -> None:
    created = await store.create(grant(), change=CHANGE)
    await store.delete(created["id"], if_match="1", change=CHANGE)
    with pytest.raises(ConsentDeleted):
        await store.read(created["id"])
    with pytest.raises(ConsentDeleted):
        await store.vread(created["id"], "2")
    assert (await store.vread(created["id"], "1")) == created
    assert [h.method for h in await store.history(created["id"])] == ["DELETE", "POST"]
    assert await store.active_for("pat-1") == []


async def test_c01_unknown_ids_and_versions(store: ConsentStore) -> None:
    with pytest.raises(ConsentNotFound):
        await store.read("no-such-consent")
    with pytest.raises(ConsentNotFound):
        await store.history("no-such-consent")
    created = await store.create(grant(), change=CHANGE)
    with pytest.raises(ConsentNotFound):
        await store.vread(created["id"], "7")


@pytest.mark.parametrize(
    "hostile", [{"$gt": ""}, {"$ne": None}, "../x", "", "a" * 65, 5, ["pat-1"]]
)
async def test_p13_query_operators_as_patient_ids_are_refused(
    store: ConsentStore, hostile: Any
) -> None:
    await store.create(grant("pat-1"), change=CHANGE)
    await store.create(grant("pat-2"), change=CHANGE)
    with pytest.raises(InvalidParameter):
        await store.active_for(hostile)
    with pytest.raises(InvalidParameter):
        await store.search(patient_id=hostile)
    with pytest.raises(InvalidParameter):
        await store.read(hostile)
    with pytest.raises(InvalidParameter):
        await store.revoke_app(hostile, "app-a", change=CHANGE)
    with pytest.raises(InvalidParameter):
        await store.erase_patient(hostile, change=CHANGE)
    assert len(await store.active_for("pat-1")) == 1


@pytest.mark.parametrize("hostile", [{"$gt": ""}, {"$ne": None}, "app a", "", "a" * 129, 5])
async def test_p13_query_operators_as_client_ids_are_refused(
    store: ConsentStore, hostile: Any
) -> None:
    await store.create(grant("pat-1"), change=CHANGE)
    with pytest.raises(InvalidParameter):
        await store.revoke_app("pat-1", hostile, change=CHANGE)
    with pytest.raises(InvalidParameter):
        await store.search(client_id=hostile)
    assert len(await store.active_for("pat-1")) == 1


async def test_p13_status_and_version_are_checked_values(store: ConsentStore) -> None:
    created = await store.create(grant(), change=CHANGE)
    with pytest.raises(InvalidParameter):
        await store.search(status={"$in": ["active"]})  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        await store.vread(created["id"], "1 || true")
    with pytest.raises(InvalidParameter):
        await store.update(created["id"], created, if_match='W/"1"', change=CHANGE)


async def test_c02_search_by_patient_status_and_app(store: ConsentStore) -> None:
    a1 = await store.create(grant("pat-1", "app-a"), change=CHANGE)
    b1 = await store.create(grant("pat-1", "app-b"), change=CHANGE)
    a2 = await store.create(grant("pat-2", "app-a"), change=CHANGE)
    await store.update(b1["id"], {**b1, "status": "inactive"}, change=CHANGE)
    assert {c["id"] for c in await store.search(patient_id="pat-1")} == {a1["id"], b1["id"]}
    assert [c["id"] for c in await store.search(patient_id="pat-1", status="active")] == [a1["id"]]
    assert {c["id"] for c in await store.search(client_id="app-a")} == {a1["id"], a2["id"]}
    assert [c["id"] for c in await store.search(client_id="app-a", patient_id="pat-2")] == [
        a2["id"]
    ]
    assert len(await store.search(limit=1)) == 1


async def test_c06_active_for_returns_only_the_patients_active_consents(
    store: ConsentStore,
) -> None:
    active = await store.create(grant("pat-1"), change=CHANGE)
    await store.create(grant("pat-1", status="draft"), change=CHANGE)
    await store.create(grant("pat-2"), change=CHANGE)
    assert await store.active_for("pat-1") == [active]


async def test_c12_revoke_app_deactivates_its_permits_only(store: ConsentStore) -> None:
    mine = await store.create(grant("pat-1", "app-a"), change=CHANGE)
    again = await store.create(grant("pat-1", "app-a"), change=CHANGE)
    blocked = await store.create(deny_app("pat-1", "app-a"), change=CHANGE)
    other_app = await store.create(grant("pat-1", "app-b"), change=CHANGE)
    other_patient = await store.create(grant("pat-2", "app-a"), change=CHANGE)
    revoked = await store.revoke_app("pat-1", "app-a", change=CHANGE)
    assert revoked == sorted([mine["id"], again["id"]])
    still = {c["id"] for c in await store.active_for("pat-1")}
    assert still == {blocked["id"], other_app["id"]}
    assert [c["id"] for c in await store.active_for("pat-2")] == [other_patient["id"]]
    assert (await store.read(mine["id"]))["meta"]["versionId"] == "2"
    assert await store.revoke_app("pat-1", "app-a", change=CHANGE) == []


async def test_c12_revocation_through_one_instance_is_seen_by_the_next_request_on_another(
    store: ConsentStore, db: DB, local_stack_env: Any
) -> None:
    other_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True
    )
    try:
        other = ConsentStore(other_client[db.name])
        await store.grant_app(
            "pat-1", "app-a", "App A", ["TREAT"], ["Observation"], [], START, END, change=CHANGE
        )
        observation = seed_resource("Observation") | {"subject": {"reference": "Patient/pat-1"}}
        assert decide(await other.active_for("pat-1"), request(), observation).permitted
        started = time.perf_counter()
        await store.revoke_app("pat-1", "app-a", change=CHANGE)
        decision = decide(await other.active_for("pat-1"), request(), observation)
        elapsed = time.perf_counter() - started
        assert decision.basis is Basis.NO_CONSENT
        print(f"revoke on one instance -> next decision on another: {elapsed * 1000:.1f} ms")
    finally:
        await other_client.close()


async def test_c14_revocation_works_for_a_consent_todays_rules_would_reject(
    store: ConsentStore, db: DB
) -> None:
    created = await store.create(grant(), change=CHANGE)
    legacy = {k: v for k, v in created.items() if k != "category"}  # stored before a rule
    await db[COLLECTION].update_one({"_id": created["id"]}, {"$set": {"resource": legacy}})
    assert await store.revoke_app("pat-1", "app-a", change=CHANGE) == [created["id"]]
    assert await store.active_for("pat-1") == []


async def test_c05_grant_app_writes_a_valid_consent_that_permits(store: ConsentStore) -> None:
    consent = await store.grant_app(
        "pat-1",
        "app-a",
        "App A",
        ["TREAT"],
        ["Observation"],
        ["patient/Condition.rs?category=problem-list-item"],
        START,
        END,
        "Patient/pat-1",
        change=CHANGE,
    )
    model.validate(consent)
    assert consent["performer"] == [{"reference": "Patient/pat-1"}]
    observation = seed_resource("Observation") | {"subject": {"reference": "Patient/pat-1"}}
    assert decide(await store.active_for("pat-1"), request(), observation).permitted
    assert not decide(await store.active_for("pat-1"), request("app-b"), observation).permitted


async def test_c05_a_new_grant_supersedes_the_apps_earlier_grant(store: ConsentStore) -> None:
    first = await store.grant_app(
        "pat-1", "app-a", "A", ["TREAT"], ["Observation"], [], START, END, change=CHANGE
    )
    other = await store.grant_app(
        "pat-1", "app-b", "B", ["TREAT"], ["Observation"], [], START, END, change=CHANGE
    )
    second = await store.grant_app(
        "pat-1", "app-a", "A", ["TREAT"], ["Condition"], [], START, END, change=CHANGE
    )
    assert {c["id"] for c in await store.active_for("pat-1")} == {other["id"], second["id"]}
    assert (await store.read(first["id"]))["status"] == "inactive"


async def test_c05_grant_app_refuses_bad_values(store: ConsentStore) -> None:
    with pytest.raises(InvalidParameter):
        await store.grant_app(
            "pat-1", "app-a", "A", [], ["NotAType"], [], START, END, change=CHANGE
        )
    with pytest.raises(InvalidParameter):
        await store.grant_app(
            "pat 1", "app-a", "A", [], ["Observation"], [], START, END, change=CHANGE
        )
    with pytest.raises(InvalidParameter):
        await store.grant_app(
            "pat-1", "app a", "A", [], ["Observation"], [], START, END, change=CHANGE
        )
    with pytest.raises(InvalidParameter):
        await store.grant_app(
            "pat-1",
            "app-a",
            "A",
            [],
            [],
            ["patient/Observation.rs?_id=x"],
            START,
            END,
            change=CHANGE,
        )
    assert await store.search(patient_id="pat-1") == []


async def test_c22_erasure_withdraws_keeps_evidence_and_deletes_unused_drafts(
    store: ConsentStore, db: DB
) -> None:
    active = await store.create(grant("pat-1"), change=CHANGE)
    revoked = await store.create(grant("pat-1"), change=CHANGE)
    await store.update(revoked["id"], {**revoked, "status": "inactive"}, change=CHANGE)
    draft = await store.create(grant("pat-1", status="draft"), change=CHANGE)
    was_active = await store.create(grant("pat-1", "app-b"), change=CHANGE)
    await store.update(was_active["id"], {**was_active, "status": "draft"}, change=CHANGE)
    other = await store.create(grant("pat-2"), change=CHANGE)
    report = await store.erase_patient("pat-1", change=CHANGE)
    assert report.withdrawn == (active["id"],)
    assert report.deleted == (draft["id"],)
    assert set(report.kept) == {active["id"], revoked["id"], was_active["id"]}
    assert await store.active_for("pat-1") == []
    with pytest.raises(ConsentNotFound):
        await store.read(draft["id"])
    assert await db["consent_history"].count_documents({"consent_id": draft["id"]}) == 0
    assert [h.version_id for h in await store.history(active["id"])] == ["2", "1"]
    assert [c["id"] for c in await store.active_for("pat-2")] == [other["id"]]


async def test_c12_active_for_cost_per_call(store: ConsentStore) -> None:
    patients = [f"pat-{i}" for i in range(200)]
    consents = [grant(p, f"app-{j}") for p in patients for j in range(5)]
    for consent in consents:
        await store.create(consent, change=CHANGE)
    for _ in range(50):  # warm up
        await store.active_for("pat-7")
    calls = 1000
    started = time.perf_counter()
    for _ in range(calls):
        found = await store.active_for("pat-7")
    mean = (time.perf_counter() - started) / calls
    assert len(found) == 5
    print(f"active_for over {len(consents)} consents, 5 for the patient: {mean * 1e6:.0f} us/call")
    assert mean < 0.05


async def test_p22_property_crafted_bodies_raise_only_the_documented_errors(
    store: ConsentStore,
) -> None:
    """Create and update take any JSON: it is refused with ConsentInvalid (or InvalidParameter,
    VersionConflict for the other arguments), never another error, and nothing is stored."""
    existing = await store.create(grant(), change=CHANGE)
    loop = asyncio.get_running_loop()
    bases = [grant(), deny_app(), {**grant(), "id": existing["id"]}]

    def run(write: Callable[[], Awaitable[object]]) -> None:
        async def call() -> None:
            await write()

        with contextlib.suppress(ConsentInvalid, InvalidParameter, VersionConflict):
            asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=60)

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        body=st.one_of(crafted.json_values, crafted.mutations(bases)),
        if_match=st.sampled_from([None, "1", "x", "0", "99999999999", "1 OR 1"]),
    )
    def writes(body: Any, if_match: str | None) -> None:
        run(lambda: store.create(body, change=CHANGE))
        run(lambda: store.update(existing["id"], body, if_match=if_match, change=CHANGE))

    await asyncio.to_thread(writes)


async def test_c12_the_change_counter_moves_when_the_connection_dies_under_it(
    local_stack_env: Stack,
) -> None:
    """The consents' change counter is what tells caching readers that a Consent changed: the
    database closing the connection under its ``$inc`` (an idle connection cut, a failover) is
    sent once more, so the change is not left unseen."""
    name = f"counter-{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack_env.mongo_uri, tz_aware=True, appName=name
    )
    db = client[f"consent_{uuid.uuid4().hex[:12]}"]
    try:
        consents = ConsentStore(db)
        await consents.ensure_indexes()
        await consents.create(grant(), change=CHANGE)
        before = (await db["change_epochs"].find_one({"_id": "consents"}) or {})["n"]
        # The next update on this store's connections dies: creating a Consent inserts it and
        # its history entry, then moves the counter (the only update).
        await client.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": {"times": 1},
                "data": {"failCommands": ["update"], "closeConnection": True, "appName": name},
            }
        )
        await consents.create(grant(client_id="app-b"), change=CHANGE)
        after = (await db["change_epochs"].find_one({"_id": "consents"}) or {})["n"]
        assert after == before + 1
    finally:
        await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        await client.drop_database(db.name)
        await client.close()
