"""Who may change what grants access (CONSENT.md C-23 … C-25, C-27; SECURITY.md P-20), end to end
through the real stack: each attack is tried with an app's own token and refused, and nothing
changes upstream or in the consent store; what the rules allow still works."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from consent.codes import CLIENT_SYSTEM
from consent.store import Channel, ConsentStore
from gateway.cli import main
from tests.conftest import SESSION_KEK, RunningGateway, Stack, StartGateway
from tests.e2e.conftest import SessionFor
from tests.e2e.test_consent import (
    AMELIA,
    APP,
    JSON,
    SAMUEL,
    V3_ACT_CODE,
    V3_CONFIDENTIALITY,
    _json,
    app_session,
    grant,
    patient_session,
    post_consent,
)
from tests.support.tokens import AMELIA as AMELIA_USER
from tests.support.tokens import MARIA as MARIA_USER
from tests.support.tokens import PUBLIC_APP, ensure_user, flow_token, services

pytestmark = pytest.mark.e2e

MARIA = "pat-maria-garcia"
LEO = "pat-leo-garcia"
LINK = "RelatedPerson/relperson-maria-garcia"
PATCH = {"Content-Type": "application/json-patch+json"}
SENSITIVE = [
    {"system": V3_ACT_CODE, "code": "PSY"},
    {"system": V3_CONFIDENTIALITY, "code": "R"},
]


async def _consents(gateway: RunningGateway, patient: str) -> list[tuple[str, str, str]]:
    """The patient's Consents as (id, version, status): what must not change after a refusal."""
    store = ConsentStore(services(gateway).db)
    found = await store.search(patient_id=patient, limit=1000)
    return sorted((c["id"], c["meta"]["versionId"], c["status"]) for c in found)


async def _status(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> int:
    data = orjson.dumps(body) if body is not None else None
    headers = PATCH if method == "PATCH" else JSON
    async with http.request(method, url, data=data, headers=headers) as response:
        await response.read()
        return response.status


async def _upstream(http: aiohttp.ClientSession, stack: Stack, path: str) -> Any:
    async with http.get(f"{stack.upstream.base_url}/{path}") as response:
        return orjson.loads(await response.read())


async def _maria_app(
    gateway: RunningGateway, session_for: SessionFor, *, trusted: bool = False
) -> aiohttp.ClientSession:
    """Maria's third-party app, acting for her and her son Leo (her account is linked to him
    through the RelatedPerson in the EHR)."""
    return await session_for(
        trusted=trusted,
        client_id=APP,
        scope="patient/*.cruds",
        user_id=await ensure_user(gateway, MARIA_USER),
        fhir_user=f"Patient/{MARIA}",
        patient=MARIA,
        acts_for=(MARIA, LEO),
        purposes=("PATRQT",),
    )


# --- C-23: an app cannot write the Consent that governs it -----------------------------------


async def test_c23_an_app_cannot_write_a_consent_that_widens_its_own_access(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for, SAMUEL)
    general = await post_consent(manager, gateway.fhir, grant(SAMUEL, ["Condition"]))
    app = await app_session(session_for, SAMUEL, scope="patient/*.cruds")
    withheld = f"{gateway.fhir}/Condition/cond-samuel-reed-2"  # labelled PSY, R
    assert await _status(app, "GET", withheld) == 403
    before = await _consents(gateway, SAMUEL)

    naming_itself = grant(SAMUEL, ["Condition"])
    naming_itself["provision"]["securityLabel"] = SENSITIVE
    every_app = copy.deepcopy(naming_itself)
    del every_app["provision"]["actor"]
    for attempt in (naming_itself, every_app):
        assert await _status(app, "POST", f"{gateway.fhir}/Consent", attempt) == 403
    widened = {**general, "provision": {**general["provision"], "securityLabel": SENSITIVE}}
    url = f"{gateway.fhir}/Consent/{general['id']}"
    assert await _status(app, "PUT", url, widened) == 403
    longer = copy.deepcopy(general)
    longer["provision"]["period"]["end"] = "2999-12-31T00:00:00Z"
    assert await _status(app, "PUT", url, longer) == 403
    assert await _status(app, "DELETE", url) == 403

    assert await _consents(gateway, SAMUEL) == before
    assert await _status(app, "GET", withheld) == 403


async def test_c23_an_app_cannot_give_consent_for_a_child_nor_lift_a_deny(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for, MARIA)
    await post_consent(manager, gateway.fhir, grant(MARIA, ["Observation"]))
    app = await _maria_app(gateway, session_for)
    before = await _consents(gateway, LEO)
    assert await _status(app, "POST", f"{gateway.fhir}/Consent", grant(LEO, ["Observation"])) == 403
    assert await _consents(gateway, LEO) == before
    async with app.get(f"{gateway.fhir}/Observation?patient=Patient/{LEO}") as response:
        assert (await _json(response)).get("entry", [{}])[0].get("search", {}).get(
            "mode"
        ) == "outcome"  # still nothing of Leo's: no consent

    # Maria denies the app her immunizations; the app cannot take the deny away.
    deny = grant(MARIA, ["Immunization"])
    deny["provision"]["type"] = "deny"
    denied = await post_consent(manager, gateway.fhir, deny)
    url = f"{gateway.fhir}/Consent/{denied['id']}"
    assert await _status(app, "DELETE", url) == 403
    assert await _status(app, "PUT", url, {**denied, "status": "inactive"}) == 403
    assert (await ConsentStore(services(gateway).db).read(denied["id"]))["status"] == "active"


async def test_c23_c13_an_app_withdraws_its_own_permit_and_its_tokens_end_with_it(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(
        gateway,
        user=AMELIA_USER,
        scope="launch/patient openid fhirUser offline_access patient/*.cruds",
    )
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{gateway.fhir}/Consent", headers=headers) as response:
        found = [e["resource"] for e in (await _json(response))["entry"]]
    mine = next(c for c in found if c["status"] == "active")
    history = await ConsentStore(services(gateway).db).history(mine["id"])
    assert history[-1].change is not None
    assert history[-1].change.channel is Channel.CONSENT_SCREEN  # who gave it, and where
    assert history[-1].change.by == "Patient/pat-amelia-rossi"

    async with http.put(
        f"{gateway.fhir}/Consent/{mine['id']}",
        data=orjson.dumps({**mine, "status": "inactive"}),
        headers={**headers, **JSON},
    ) as response:
        assert response.status == 200, await response.text()
    newest = (await ConsentStore(services(gateway).db).history(mine["id"]))[0]
    assert newest.change is not None and newest.change.channel is Channel.FHIR_API
    assert newest.change.by == f"Patient/{AMELIA} via client:{PUBLIC_APP}"
    async with http.get(f"{gateway.fhir}/Patient/{AMELIA}", headers=headers) as response:
        assert response.status == 401  # C-13: withdrawn with its tokens


async def test_c23_the_hospital_portal_manages_consent_but_never_for_itself(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    portal = await session_for(
        client_id="patient-portal",
        manages_consent=True,
        scope="patient/Consent.cruds patient/*.rs",
        patient=SAMUEL,
        acts_for=(SAMUEL,),
        fhir_user=f"Patient/{SAMUEL}",
    )
    created = await post_consent(portal, gateway.fhir, grant(SAMUEL, ["Observation"]))
    assert created["status"] == "active"  # a permit for another app: the patient's choice
    change = (await ConsentStore(services(gateway).db).history(created["id"]))[0].change
    assert change is not None and change.by == f"Patient/{SAMUEL} via client:patient-portal"

    before = await _consents(gateway, SAMUEL)
    for_itself = grant(SAMUEL, ["Condition"], client_id="patient-portal")
    for_itself["provision"]["securityLabel"] = SENSITIVE
    for_everyone = grant(SAMUEL, ["Condition"])
    del for_everyone["provision"]["actor"]
    # A nested permit under a deny that names the portal among other apps still names it.
    sneaky = grant(SAMUEL, ["Condition"])
    sneaky["provision"]["type"] = "deny"
    sneaky["provision"]["actor"].append(
        {
            "role": sneaky["provision"]["actor"][0]["role"],
            "reference": {"identifier": {"system": CLIENT_SYSTEM, "value": "patient-portal"}},
        }
    )
    sneaky["provision"]["provision"] = [{"type": "permit", "securityLabel": SENSITIVE}]
    for attempt in (for_itself, for_everyone, sneaky):
        assert await _status(portal, "POST", f"{gateway.fhir}/Consent", attempt) == 403
    assert await _consents(gateway, SAMUEL) == before

    # A deny that applies to every app, the portal included, is the patient's to lift.
    manager = await patient_session(session_for, SAMUEL)  # the gateway's own stand-in
    deny_all = grant(SAMUEL, ["Observation"])
    deny_all["provision"]["type"] = "deny"
    del deny_all["provision"]["actor"]
    denied = await post_consent(manager, gateway.fhir, deny_all)
    assert await _status(portal, "DELETE", f"{gateway.fhir}/Consent/{denied['id']}") == 403


async def test_c23_an_app_reads_only_the_consents_that_concern_it(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for)
    theirs = await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation"]))
    other = await post_consent(
        manager, gateway.fhir, grant(AMELIA, ["Observation"], client_id="another-app")
    )
    app = await app_session(session_for, scope="patient/*.rs patient/Consent.rs")
    async with app.get(f"{gateway.fhir}/Consent?patient=Patient/{AMELIA}") as response:
        ids = {e["resource"]["id"] for e in (await _json(response)).get("entry", [])}
    assert theirs["id"] in ids and other["id"] not in ids
    assert await _status(app, "GET", f"{gateway.fhir}/Consent/{other['id']}") == 404


async def test_c23_consents_the_upstream_holds_are_never_released(
    gateway: RunningGateway, session_for: SessionFor, fresh_upstream: Stack
) -> None:
    """A Consent stored in the FHIR server behind the gateway (another app's, say) would escape
    C-23's rule that an app reads only the Consents that concern it: it is released by no route,
    and /fhir/Consent answers from the gateway's own store only (C-02)."""
    upstream_consent = grant(AMELIA, ["Observation"], client_id="another-app")
    upstream_consent["id"] = "upstream-consent-1"
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{fresh_upstream.upstream.base_url}/Consent/upstream-consent-1",
            data=orjson.dumps(upstream_consent),
            headers={"Content-Type": "application/fhir+json"},
        ) as response,
    ):
        assert response.status in (200, 201), await response.text()
    try:
        trusted = await session_for(
            scope="system/*.rs", user_id=None, fhir_user=None, patient=None, acts_for=()
        )
        mine = await app_session(session_for, scope="patient/*.rs patient/Consent.rs")
        for http, path in (
            (trusted, f"Patient/{AMELIA}/$everything"),
            (mine, f"Patient/{AMELIA}/$everything"),
            (trusted, f"Patient?_id={AMELIA}&_revinclude=Consent:patient"),
            (mine, f"Patient?_id={AMELIA}&_revinclude=Consent:patient"),
            (trusted, "_history?_count=1000"),
        ):
            async with http.get(f"{gateway.fhir}/{path}") as response:
                bundle = await _json(response)
                assert response.status == 200, (path, bundle)
            types = {e.get("resource", {}).get("resourceType") for e in bundle.get("entry", [])}
            assert "Consent" not in types, path
        assert await _status(mine, "GET", f"{gateway.fhir}/Consent/upstream-consent-1") == 404
        assert await _status(trusted, "GET", f"{gateway.fhir}/Consent/upstream-consent-1") == 404
    finally:
        fresh_upstream.upstream.reset()


async def test_c23_administrators_change_consent_with_a_documented_reason(
    gateway: RunningGateway,
    local_stack_env: Stack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.e2e.test_admin import _admin_browser

    admin = await _admin_browser(gateway)
    try:
        async with admin.session.get(f"{gateway.base}/auth/session") as response:
            headers = {"X-CSRF-Token": (await response.json())["csrf"]}
        paper = grant(AMELIA, ["Immunization"])
        base = f"{gateway.base}/admin/consents"
        async with admin.session.post(base, json={"consent": paper}, headers=headers) as response:
            assert response.status == 400  # no documented request, no change
        body = {"consent": paper, "reason": "signed paper form, ticket 4711"}
        async with admin.session.post(base, json=body, headers=headers) as response:
            assert response.status == 201
            created = await response.json()
        async with admin.session.post(
            f"{base}/{created['id']}/withdraw", json={"reason": "patient phoned"}, headers=headers
        ) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "inactive"
        async with admin.session.get(f"{base}/{created['id']}/history") as response:
            history = await response.json()
    finally:
        await admin.close()
    assert [(v["channel"], v["reason"]) for v in history] == [
        ("admin-api", "patient phoned"),
        ("admin-api", "signed paper form, ticket 4711"),
    ]
    assert all(v["changed_by"].startswith("user:") for v in history)

    # The same through the command line.
    monkeypatch.setenv("FHIR_GATEWAY_MONGODB_URI", local_stack_env.mongo_uri)
    monkeypatch.setenv("FHIR_GATEWAY_MONGODB_DATABASE", gateway.settings.mongodb_database)
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", SESSION_KEK)
    file = tmp_path / "consent.json"
    file.write_text(json.dumps(grant(AMELIA, ["Encounter"])))
    add = ["consent", "add", "--file", str(file), "--reason", "court order 12"]
    assert await asyncio.to_thread(main, add) == 0
    consent_id = capsys.readouterr().out.split("Consent/")[1].strip()
    assert await asyncio.to_thread(main, ["consent", "history", "--id", consent_id]) == 0
    assert "cli (cli)\tcourt order 12" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # --reason is required
        main(["consent", "withdraw", "--id", consent_id])


# --- C-24: consent governs writes ---------------------------------------------------------------


async def test_c24_writes_need_the_patients_consent_and_a_refused_write_changes_nothing(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    manager = await patient_session(session_for, MARIA)
    await post_consent(manager, gateway.fhir, grant(MARIA, ["Observation"]))  # not Leo
    app = await _maria_app(gateway, session_for)
    leos = await _upstream(http, fresh_upstream, f"Observation?subject=Patient/{LEO}&_count=100")
    existing = leos["entry"][0]["resource"]
    new = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": f"Patient/{LEO}"},
        "valueQuantity": {"value": 21.5, "unit": "kg"},
    }
    assert await _status(app, "POST", f"{gateway.fhir}/Observation", new) == 403
    url = f"{gateway.fhir}/Observation/{existing['id']}"
    patch = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    assert await _status(app, "PATCH", url, patch) == 403
    assert await _status(app, "PUT", url, {**existing, "status": "amended"}) == 403
    assert await _status(app, "DELETE", url) == 403
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": new, "request": {"method": "POST", "url": "Observation"}}],
    }
    assert await _status(app, "POST", gateway.fhir, transaction) == 403
    after = await _upstream(http, fresh_upstream, f"Observation?subject=Patient/{LEO}&_count=100")
    assert after["entry"] == leos["entry"]  # nothing reached the upstream

    # Maria consented for herself: her own record takes the write.
    mine = {**new, "subject": {"reference": f"Patient/{MARIA}"}}
    assert await _status(app, "POST", f"{gateway.fhir}/Observation", mine) == 201


async def test_c24_a_deny_of_the_correct_action_stops_changes_but_not_reads(
    gateway: RunningGateway, session_for: SessionFor, fresh_upstream: Stack
) -> None:
    manager = await patient_session(session_for)
    no_changes = {
        "type": "deny",
        "action": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "correct",
                    }
                ]
            }
        ],
    }
    await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation"], nested=[no_changes]))
    app = await app_session(session_for, scope="patient/*.cruds")
    url = f"{gateway.fhir}/Observation/obs-amelia-rossi-1"
    assert await _status(app, "GET", url) == 200
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    assert await _status(app, "PATCH", url, patch) == 403
    new = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "steps"},
        "subject": {"reference": f"Patient/{AMELIA}"},
    }
    assert await _status(app, "POST", f"{gateway.fhir}/Observation", new) == 201  # collect


# --- C-25, P-20: representation is re-checked, and not the app's to change ------------------------


async def _end_link_upstream(http: aiohttp.ClientSession, stack: Stack, **changes: Any) -> None:
    link = await _upstream(http, stack, LINK)
    async with http.put(
        f"{stack.upstream.base_url}/{LINK}",
        data=orjson.dumps({**link, **changes}),
        headers={"Content-Type": "application/fhir+json"},
    ) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    "ended",
    [{"active": False}, {"period": {"end": "2021"}}, {"period": {"end": "2024-06"}}],
    ids=["inactive", "ended-in-a-year", "ended-in-a-month"],
)
async def test_c25_an_ended_representation_ends_existing_grants(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
    ended: dict[str, Any],
) -> None:
    local_stack_env.upstream.reset()
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        representation_check_seconds=0.5,
    )
    tokens = await flow_token(
        gateway,
        user=MARIA_USER,
        scope="launch/patient openid fhirUser offline_access patient/*.rs",
        patient=LEO,
    )
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{gateway.fhir}/Patient/{LEO}", headers=headers) as response:
        assert response.status == 200
    await _end_link_upstream(http, local_stack_env, **ended)  # the EHR ends it, not the gateway

    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": PUBLIC_APP,
    }
    async with http.post(f"{gateway.base}/auth/token", data=refresh) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_grant"
    await asyncio.sleep(0.6)  # the stated bound: representation_check_seconds
    async with http.get(f"{gateway.fhir}/Patient/{LEO}", headers=headers) as response:
        assert response.status == 401
    async with http.get(f"{gateway.fhir}/Patient/{MARIA}", headers=headers) as response:
        assert response.status == 401  # the grant is revoked as a whole
    local_stack_env.upstream.reset()


async def test_c25_a_link_ended_through_the_gateway_ends_access_on_the_next_request(
    gateway: RunningGateway,
    session_for: SessionFor,
    system_http: aiohttp.ClientSession,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    """With the default bound of a minute, a change the gateway itself forwards holds at once."""
    tokens = await flow_token(
        gateway,
        user=MARIA_USER,
        scope="launch/patient openid fhirUser offline_access patient/*.rs",
        patient=LEO,
    )
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{gateway.fhir}/Patient/{LEO}", headers=headers) as response:
        assert response.status == 200
    link = await _upstream(http, fresh_upstream, LINK)
    async with system_http.put(
        f"{gateway.fhir}/{LINK}",
        data=orjson.dumps({**link, "active": False}),
        headers=JSON,
    ) as response:
        assert response.status == 200
    async with http.get(f"{gateway.fhir}/Patient/{LEO}", headers=headers) as response:
        assert response.status == 401


async def test_p20_apps_cannot_change_who_represents_whom(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    app = await _maria_app(gateway, session_for, trusted=True)
    link = await _upstream(http, fresh_upstream, LINK)
    maria = await _upstream(http, fresh_upstream, f"Patient/{MARIA}")
    assert await _status(app, "PUT", f"{gateway.fhir}/{LINK}", {**link, "active": True}) == 403
    assert await _status(app, "DELETE", f"{gateway.fhir}/{LINK}") == 403
    adopted = {**link, "patient": {"reference": "Patient/pat-amelia-rossi"}}
    adopted.pop("id")
    assert await _status(app, "POST", f"{gateway.fhir}/RelatedPerson", adopted) == 403
    person = {
        "resourceType": "Person",
        "link": [{"target": {"reference": f"Patient/{MARIA}"}}],
    }
    assert await _status(app, "POST", f"{gateway.fhir}/Person", person) == 403
    linked = [
        {
            "op": "add",
            "path": "/link",
            "value": [{"other": {"reference": f"Patient/{LEO}"}, "type": "seealso"}],
        }
    ]
    assert await _status(app, "PATCH", f"{gateway.fhir}/Patient/{MARIA}", linked) == 403
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {**link, "active": True}, "request": {"method": "PUT", "url": LINK}}
        ],
    }
    assert await _status(app, "POST", gateway.fhir, transaction) == 403
    assert await _upstream(http, fresh_upstream, LINK) == link
    assert await _upstream(http, fresh_upstream, f"Patient/{MARIA}") == maria


# --- C-27: unknown is never public -------------------------------------------------------------


async def _put_upstream(
    http: aiohttp.ClientSession, stack: Stack, resource: dict[str, Any]
) -> None:
    url = f"{stack.upstream.base_url}/{resource['resourceType']}/{resource['id']}"
    async with http.put(
        url, data=orjson.dumps(resource), headers={"Content-Type": "application/fhir+json"}
    ) as response:
        assert response.status in (200, 201), await response.text()


async def test_c27_what_cannot_be_attributed_is_withheld_and_carriers_follow_their_patients(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    document = "DocumentReference/doc-samuel-reed-1"  # labelled PSY, R
    stored = [
        {
            "resourceType": "Binary",
            "id": "bin-samuel-note",
            "contentType": "text/plain",
            "securityContext": {"reference": document},
            "data": "U2FtdWVsJ3Mgbm90ZQ==",
        },
        {"resourceType": "Binary", "id": "bin-orphan", "contentType": "text/plain", "data": "eA=="},
        {
            "resourceType": "Device",
            "id": "dev-samuel-pump",
            "status": "active",
            "patient": {"reference": f"Patient/{SAMUEL}"},
        },
        {"resourceType": "Device", "id": "dev-unassigned", "status": "active"},
        {
            "resourceType": "Linkage",
            "id": "link-samuel",
            "item": [
                {"type": "source", "resource": {"reference": f"Patient/{SAMUEL}"}},
                {"type": "alternate", "resource": {"reference": "Observation/obs-samuel-reed-1"}},
            ],
        },
        {
            "resourceType": "Bundle",
            "id": "bundle-samuel",
            "type": "collection",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Observation",
                        "id": "x",
                        "status": "final",
                        "code": {"text": "x"},
                        "subject": {"reference": f"Patient/{SAMUEL}"},
                    }
                }
            ],
        },
    ]
    for resource in stored:
        await _put_upstream(http, fresh_upstream, resource)

    async def reader(trusted: bool, client_id: str) -> aiohttp.ClientSession:
        return await session_for(
            trusted=trusted,
            client_id=client_id,
            scope="user/*.rs",
            patient=None,
            acts_for=(),
            fhir_user="Practitioner/prac-hannah-okafor",
            purposes=("TREAT",),
        )

    def url(resource: dict[str, Any]) -> str:
        return f"{gateway.fhir}/{resource['resourceType']}/{resource['id']}"

    binary, orphan, pump, unassigned, linkage, bundle = stored
    untrusted = await reader(False, "gp-app")
    for resource in stored:  # Samuel never consented to gp-app: nothing of his, nothing unknown
        assert await _status(untrusted, "GET", url(resource)) == 403, resource["id"]

    manager = await patient_session(session_for, SAMUEL)
    types = ["DocumentReference", "Device", "Bundle", "Linkage", "Binary", "Observation"]
    await post_consent(
        manager, gateway.fhir, grant(SAMUEL, types, client_id="gp-app", purposes=("TREAT",))
    )
    assert await _status(untrusted, "GET", url(pump)) == 200
    assert await _status(untrusted, "GET", url(bundle)) == 200
    # The Binary is decided as its DocumentReference, which is sensitive: a general permit does
    # not release it (before, the Binary had no labels of its own and went out).
    assert await _status(untrusted, "GET", url(binary)) == 403
    for resource in (orphan, unassigned, linkage):
        assert await _status(untrusted, "GET", url(resource)) == 403, resource["id"]

    trusted = await reader(True, "ward-app")  # opt-out: still nothing that cannot be attributed
    for resource in (orphan, unassigned, linkage):
        assert await _status(trusted, "GET", url(resource)) == 403, resource["id"]
    assert await _status(trusted, "GET", url(pump)) == 200
    async with trusted.get(f"{gateway.fhir}/Device?_count=50") as response:
        ids = {e["resource"]["id"] for e in (await _json(response)).get("entry", [])}
    assert "dev-samuel-pump" in ids and "dev-unassigned" not in ids


async def test_c27_a_binary_of_a_released_document_follows_it(
    gateway: RunningGateway,
    session_for: SessionFor,
    fresh_upstream: Stack,
    http: aiohttp.ClientSession,
) -> None:
    binary = {
        "resourceType": "Binary",
        "id": "bin-amelia-letter",
        "contentType": "text/plain",
        "securityContext": {"reference": "DocumentReference/doc-amelia-rossi-1"},
        "data": "bGV0dGVy",
    }
    await _put_upstream(http, fresh_upstream, binary)
    manager = await patient_session(session_for)
    await post_consent(manager, gateway.fhir, grant(AMELIA, ["DocumentReference"]))
    app = await app_session(session_for, scope="patient/Binary.rs patient/DocumentReference.rs")
    assert await _status(app, "GET", f"{gateway.fhir}/Binary/bin-amelia-letter") == 200
    daniel = await session_for(
        scope="patient/*.rs",
        patient="pat-daniel-novak",
        acts_for=("pat-daniel-novak",),
        fhir_user="Patient/pat-daniel-novak",
    )
    assert await _status(daniel, "GET", f"{gateway.fhir}/Binary/bin-amelia-letter") == 404
    only_binary = await app_session(session_for, client_id=APP, scope="patient/Binary.rs")
    assert await _status(only_binary, "GET", f"{gateway.fhir}/Binary/bin-amelia-letter") == 404


# --- smaller: searches without consent say so; instance $validate checks the instance ------------


async def test_c03_a_user_search_about_a_patient_without_consent_says_why(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    practitioner = await session_for(
        trusted=False,
        client_id="gp-app",
        scope="user/*.rs",
        patient=None,
        acts_for=(),
        fhir_user="Practitioner/prac-hannah-okafor",
        purposes=("TREAT",),
    )
    for query in (f"Observation?patient=Patient/{AMELIA}", f"Patient/{AMELIA}/Condition"):
        async with practitioner.get(f"{gateway.fhir}/{query}") as response:
            bundle = await _json(response)
        assert bundle["total"] == 0
        outcome = bundle["entry"][0]
        assert outcome["search"]["mode"] == "outcome"
        assert "no consent" in outcome["resource"]["issue"][0]["diagnostics"]


async def test_s26_instance_validate_checks_the_instance_against_the_token(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    amelia = await session_for(scope="patient/*.cruds")
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{AMELIA}"},
    }

    async def validate(instance: str) -> str:
        async with amelia.post(
            f"{gateway.fhir}/Observation/{instance}/$validate",
            data=orjson.dumps(body),
            headers=JSON,
        ) as response:
            issue = (await _json(response))["issue"][0]
            return str(issue.get("diagnostics") or issue.get("details"))

    refused = "no such resource is available to this access token"
    assert await validate("obs-daniel-novak-1") == refused  # never reaches the upstream
    assert await validate("no-such-observation") == refused  # the same answer
    assert await validate("obs-amelia-rossi-1") != refused  # her own: the upstream answers
