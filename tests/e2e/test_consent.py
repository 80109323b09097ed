"""Consent decides what leaves the gateway (CONSENT.md C-01 … C-18), end to end: the real
authorization server's tokens, the real FHIR server, Consents written through ``/fhir/Consent``
and through the consent screen."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from consent.model import app_grant
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import SessionFor
from tests.support.fixture_data import owner
from tests.support.tokens import AMELIA as AMELIA_USER
from tests.support.tokens import PUBLIC_APP, flow_token, minted_token

pytestmark = pytest.mark.e2e

AMELIA = "pat-amelia-rossi"
SAMUEL = "pat-samuel-reed"
APP = "diary-app"
JSON = {"Content-Type": "application/fhir+json"}
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def grant(
    patient: str,
    types: list[str],
    *,
    client_id: str = APP,
    purposes: tuple[str, ...] = ("PATRQT",),
    nested: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An app grant as the consent screen writes it (C-05), with optional nested provisions."""
    consent = app_grant(
        patient,
        client_id,
        "Diary",
        list(purposes),
        types,
        [],
        datetime.now(UTC) - timedelta(minutes=1),
        datetime.now(UTC) + timedelta(days=30),
    )
    if nested:
        consent["provision"].setdefault("provision", []).extend(nested)
    return consent


async def _json(response: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await response.read())


async def app_session(
    session_for: SessionFor,
    patient: str = AMELIA,
    *,
    client_id: str = APP,
    purposes: tuple[str, ...] = ("PATRQT",),
    scope: str = "patient/*.rs",
) -> aiohttp.ClientSession:
    """A third-party (untrusted) app's token for one patient."""
    return await session_for(
        trusted=False,
        client_id=client_id,
        scope=scope,
        patient=patient,
        acts_for=(patient,),
        fhir_user=f"Patient/{patient}",
        purposes=purposes,
    )


async def patient_session(session_for: SessionFor, patient: str = AMELIA) -> aiohttp.ClientSession:
    """The hospital's patient portal (trusted, ``manages_consent``, patient/Consent.cruds): the
    patient manages their consents through it (C-23)."""
    return await session_for(
        client_id="consent-manager",
        manages_consent=True,
        scope="patient/Consent.cruds",
        patient=patient,
        acts_for=(patient,),
        fhir_user=f"Patient/{patient}",
    )


async def post_consent(
    http: aiohttp.ClientSession, base: str, consent: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"{base}/Consent", data=orjson.dumps(consent), headers=JSON) as response:
        body = await _json(response)
        assert response.status == 201, body
        return body  # type: ignore[no-any-return]


def released_types(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["resourceType"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") != "outcome"
    }


async def test_c03_no_consent_means_nothing_for_a_third_party_app(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    app = await app_session(session_for)
    async with app.get(f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}") as response:
        assert response.status == 200
        bundle = await _json(response)
    assert bundle["total"] == 0
    assert released_types(bundle) == set()
    outcome = bundle["entry"][0]["resource"]
    assert "no consent" in outcome["issue"][0]["diagnostics"]
    async with app.get(f"{gateway.fhir}/Patient/{AMELIA}") as response:
        assert response.status == 403
        assert "no consent" in (await _json(response))["issue"][0]["diagnostics"]
    async with app.get(f"{gateway.fhir}/Patient/{AMELIA}/$everything") as response:
        assert released_types(await _json(response)) == set()


async def test_c09_consent_for_some_types_withholds_the_others_in_search_include_and_everything(
    gateway: RunningGateway, session_for: SessionFor, fresh_upstream: Stack
) -> None:
    manager = await patient_session(session_for)
    await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation", "Encounter"]))
    app = await app_session(session_for)

    async with app.get(
        f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_count=100"
    ) as response:
        bundle = await _json(response)
    assert released_types(bundle) == {"Observation"}
    assert bundle["total"] == len(bundle["entry"]) == 22

    async with app.get(f"{gateway.fhir}/Condition?patient=Patient/{AMELIA}") as response:
        bundle = await _json(response)
    assert bundle.get("entry", []) == [] and bundle["total"] == 0  # C-18: no count leaks

    async with app.get(
        f"{gateway.fhir}/Encounter?patient=Patient/{AMELIA}&_revinclude=Condition:encounter"
        "&_include=Encounter:subject"
    ) as response:
        bundle = await _json(response)
    assert released_types(bundle) == {"Encounter"}  # no Condition, no Patient

    async with app.get(f"{gateway.fhir}/Patient/{AMELIA}/$everything") as response:
        bundle = await _json(response)
    assert released_types(bundle) == {"Observation", "Encounter"}


async def test_c09_a_deny_on_a_date_range_withholds_that_period(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    deny_2020_2022 = {
        "type": "deny",
        "dataPeriod": {"start": "2020-01-01", "end": "2022-12-31"},
    }
    manager = await patient_session(session_for)
    await post_consent(
        manager, gateway.fhir, grant(AMELIA, ["Observation"], nested=[deny_2020_2022])
    )
    app = await app_session(session_for)
    async with app.get(
        f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_count=100"
    ) as response:
        bundle = await _json(response)
    dates = sorted({e["resource"]["effectiveDateTime"][:4] for e in bundle["entry"]})
    assert dates == ["2024", "2026"]
    assert bundle["total"] == 11


async def test_c09_sensitive_data_needs_a_provision_that_names_it(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for, SAMUEL)
    general = await post_consent(manager, gateway.fhir, grant(SAMUEL, ["Condition"]))
    app = await app_session(session_for, SAMUEL)
    url = f"{gateway.fhir}/Condition?patient=Patient/{SAMUEL}"
    async with app.get(url) as response:
        ids = {e["resource"]["id"] for e in (await _json(response))["entry"]}
    assert ids == {"cond-samuel-reed-4"}  # only the unlabelled Condition under a general permit
    async with app.get(f"{gateway.fhir}/Condition/cond-samuel-reed-2") as response:
        assert response.status == 403
        reason = (await _json(response))["issue"][0]["diagnostics"]
    assert "sensitive" in reason and f"Consent/{general['id']}" in reason  # C-11

    psychiatric = {
        "type": "permit",
        "securityLabel": [
            {"system": V3_ACT_CODE, "code": "PSY"},
            {"system": V3_CONFIDENTIALITY, "code": "R"},
        ],
    }
    updated = copy.deepcopy(general)
    updated["provision"].setdefault("provision", []).append(psychiatric)
    async with manager.put(
        f"{gateway.fhir}/Consent/{general['id']}", data=orjson.dumps(updated), headers=JSON
    ) as response:
        assert response.status == 200, await response.text()
    async with app.get(url) as response:
        ids = {e["resource"]["id"] for e in (await _json(response))["entry"]}
    assert ids == {"cond-samuel-reed-4", "cond-samuel-reed-2"}  # PSY now; SUD and HIV still not


async def test_c12_withdrawal_through_one_instance_holds_on_the_next_request_of_another(
    gateway: RunningGateway,
    start_gateway: StartGateway,
    local_stack_env: Stack,
    session_for: SessionFor,
) -> None:
    other = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        mongodb_database=gateway.settings.mongodb_database,
        public_base_url=gateway.base,
    )
    second_instance = str(other.server.make_url("/fhir"))
    manager = await patient_session(session_for)
    consent = await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation"]))
    app = await app_session(session_for)
    url = f"/Observation?patient=Patient/{AMELIA}&_count=5"
    async with app.get(second_instance + url) as response:
        assert len((await _json(response))["entry"]) == 5

    withdrawn = {**consent, "status": "inactive"}
    async with manager.put(
        f"{gateway.fhir}/Consent/{consent['id']}", data=orjson.dumps(withdrawn), headers=JSON
    ) as response:
        assert response.status == 200
    async with app.get(second_instance + url) as response:
        bundle = await _json(response)
    assert released_types(bundle) == set() and bundle["total"] == 0


async def test_c13_withdrawing_the_consent_revokes_the_apps_tokens(
    gateway: RunningGateway, session_for: SessionFor, http: aiohttp.ClientSession
) -> None:
    """The consent screen writes the Consent (C-05); deleting it revokes the app's token."""
    tokens = await flow_token(
        gateway, user=AMELIA_USER, client_id=PUBLIC_APP, scope="launch/patient patient/*.rs"
    )
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(
        f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_count=3", headers=headers
    ) as response:
        bundle = await _json(response)
    assert len(bundle["entry"]) == 3  # released under the Consent the patient just gave

    manager = await patient_session(session_for)
    async with manager.get(
        f"{gateway.fhir}/Consent?patient=Patient/{AMELIA}&status=active"
    ) as response:
        consents = [e["resource"] for e in (await _json(response))["entry"]]
    given = [c for c in consents if PUBLIC_APP in orjson.dumps(c).decode()]
    assert len(given) == 1
    async with manager.delete(f"{gateway.fhir}/Consent/{given[0]['id']}") as response:
        assert response.status == 204
    async with http.get(
        f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}", headers=headers
    ) as response:
        assert response.status == 401
    async with manager.get(f"{gateway.fhir}/Consent/{given[0]['id']}") as response:
        assert response.status == 410
    async with manager.get(f"{gateway.fhir}/Consent/{given[0]['id']}/_history") as response:
        history = await _json(response)
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]


async def test_c16_research_purpose_receives_de_identified_patients(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    research = "cohort-study"
    manager = await patient_session(session_for)
    await post_consent(
        manager, gateway.fhir, grant(AMELIA, ["Patient"], client_id=research, purposes=("HRESCH",))
    )
    study = await app_session(session_for, client_id=research, purposes=("HRESCH",))
    async with study.get(f"{gateway.fhir}/Patient/{AMELIA}") as response:
        assert response.status == 200
        patient = await _json(response)
    assert "name" not in patient and "telecom" not in patient and "photo" not in patient
    assert patient["birthDate"] == "1984"
    for address in patient.get("address", []):
        assert "line" not in address
    for identifier in patient.get("identifier", []):
        assert "value" not in identifier
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "REDACTED",
    } in [
        {k: v for k, v in label.items() if k in ("system", "code")}
        for label in patient["meta"]["security"]
    ]


async def test_c17_elements_apply_on_top_of_the_profile(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for)
    await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation"]))
    app = await app_session(session_for)
    async with app.get(
        f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_elements=code&_count=2"
    ) as response:
        bundle = await _json(response)
    for entry in bundle["entry"]:
        # _elements keeps what was asked and the mandatory elements (Observation.status).
        assert set(entry["resource"]) <= {"resourceType", "id", "meta", "code", "status"}
        assert "subject" not in entry["resource"]


async def test_c01_an_invalid_consent_is_refused_with_422_naming_the_rule(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for)
    broken = grant(AMELIA, ["Observation"])
    del broken["policyRule"]
    async with manager.post(
        f"{gateway.fhir}/Consent", data=orjson.dumps(broken), headers=JSON
    ) as response:
        assert response.status == 422
        outcome = await _json(response)
    assert any("ppc-1" in issue["diagnostics"] for issue in outcome["issue"])


async def test_c02_a_patient_manages_only_their_own_consents_and_versions_are_kept(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for)
    async with manager.post(
        f"{gateway.fhir}/Consent",
        data=orjson.dumps(grant("pat-daniel-novak", ["Observation"])),
        headers=JSON,
    ) as response:
        assert response.status == 403  # another patient's consent
    mine = await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation"]))
    assert mine["meta"]["versionId"] == "1"
    changed = {**mine, "status": "inactive"}
    async with manager.put(
        f"{gateway.fhir}/Consent/{mine['id']}",
        data=orjson.dumps(changed),
        headers={**JSON, "If-Match": 'W/"1"'},
    ) as response:
        assert response.status == 200
        assert response.headers["ETag"] == 'W/"2"'
    async with manager.put(
        f"{gateway.fhir}/Consent/{mine['id']}",
        data=orjson.dumps(changed),
        headers={**JSON, "If-Match": 'W/"1"'},
    ) as response:
        assert response.status == 412  # stale version
    async with manager.get(f"{gateway.fhir}/Consent/{mine['id']}/_history/1") as response:
        assert (await _json(response))["status"] == "active"
    # The hospital's consent desk (manages_consent) with a user/ scope reads across patients; an
    # ordinary app with the same scope only reads the Consents that concern it (C-23); another
    # patient's token reads none of them.
    desk = await session_for(
        client_id="consent-desk",
        manages_consent=True,
        scope="user/Consent.rs",
        patient=None,
        acts_for=(),
        fhir_user=None,
    )
    async with desk.get(f"{gateway.fhir}/Consent?status=inactive") as response:
        assert mine["id"] in {e["resource"]["id"] for e in (await _json(response))["entry"]}
    other_app = await session_for(
        client_id="other-reader",
        scope="user/Consent.rs",
        patient=None,
        acts_for=(),
        fhir_user=None,
    )
    async with other_app.get(f"{gateway.fhir}/Consent?status=inactive") as response:
        assert mine["id"] not in {
            e["resource"]["id"] for e in (await _json(response)).get("entry", [])
        }
    async with other_app.get(f"{gateway.fhir}/Consent/{mine['id']}") as response:
        assert response.status == 404
    daniel = await patient_session(session_for, "pat-daniel-novak")
    async with daniel.get(f"{gateway.fhir}/Consent/{mine['id']}") as response:
        assert response.status == 404
    async with daniel.get(f"{gateway.fhir}/Consent?patient=Patient/{AMELIA}") as response:
        assert response.status == 403


async def test_c10_every_released_resource_is_decided_for_user_tokens_too(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    """A practitioner's untrusted app across patients: only the patients who consented."""
    manager = await patient_session(session_for)
    await post_consent(
        manager,
        gateway.fhir,
        grant(AMELIA, ["Observation"], client_id="gp-app", purposes=("TREAT",)),
    )
    practitioner = await session_for(
        trusted=False,
        client_id="gp-app",
        scope="user/Observation.rs",
        patient=None,
        acts_for=(),
        fhir_user="Practitioner/prac-hannah-okafor",
        purposes=("TREAT",),
    )
    async with practitioner.get(f"{gateway.fhir}/Observation?_count=200") as response:
        bundle = await _json(response)
    assert {owner(e["resource"]) for e in bundle["entry"]} == {AMELIA}


async def test_c04_a_trusted_app_runs_under_opt_out_but_a_deny_still_stops_it(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    clinician = await session_for(
        client_id="ward-rounds",
        scope="user/Observation.rs",
        patient=None,
        acts_for=(),
        fhir_user="Practitioner/prac-hannah-okafor",
        purposes=("TREAT",),
    )
    url = f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}&_count=3"
    async with clinician.get(url) as response:
        assert len((await _json(response))["entry"]) == 3
    deny = grant(AMELIA, ["Observation"], client_id="ward-rounds", purposes=("TREAT",))
    deny["provision"]["type"] = "deny"
    manager = await patient_session(session_for)
    await post_consent(manager, gateway.fhir, deny)
    async with clinician.get(url) as response:
        assert released_types(await _json(response)) == set()


async def test_a_trusted_app_still_gets_no_sensitive_data_without_a_naming_permit(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    clinician = await session_for(
        client_id="ward-rounds",
        scope="user/Condition.rs",
        patient=None,
        acts_for=(),
        fhir_user="Practitioner/prac-hannah-okafor",
        purposes=("TREAT",),
    )
    async with clinician.get(f"{gateway.fhir}/Condition?patient=Patient/{SAMUEL}") as response:
        ids = {e["resource"]["id"] for e in (await _json(response))["entry"]}
    assert ids == {"cond-samuel-reed-4"}


async def test_minted_tokens_of_unknown_apps_are_third_parties(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """A token naming an app the registry does not know runs under opt-in (never trusted)."""
    token = await minted_token(gateway, client_id="never-registered")
    async with http.get(
        f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}",
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert (await _json(response))["total"] == 0


_DEEP = "DEEP-EXTENSION"


def _encoded(body: dict[str, Any]) -> io.BytesIO:
    """The body as JSON, with ``_DEEP`` standing for an extension nested 300 times (600 JSON
    levels: orjson reads up to 1,024 but writes only 254), streamed from a file as aiohttp wants
    for large bodies."""
    nested = '{"url":"http://example.org/x","extension":[' * 300 + '{"url":"x"}' + "]}" * 300
    raw = orjson.dumps(body).replace(f'"{_DEEP}"'.encode(), nested.encode())
    return io.BytesIO(raw)


async def test_p22_crafted_consent_bodies_are_refused_naming_the_element_never_a_500(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    manager = await patient_session(session_for)
    existing = await post_consent(manager, gateway.fhir, grant(AMELIA, ["Observation"]))
    valid = grant(AMELIA, ["Observation"])
    crafted: list[tuple[dict[str, Any], str]] = [
        ({"status": {"$ne": None}}, "Consent.status"),
        ({"provision": {"type": {"$in": ["permit"]}}}, "Consent.provision.type"),
        ({"patient": {"reference": {"$gt": ""}}}, "Consent.patient"),
        ({"$where": "sleep(1000)"}, "Consent.$where"),
        ({"provision": [valid["provision"]]}, "Consent.provision"),  # a list for an object
        ({"category": valid["category"][0]}, "Consent.category"),  # an object for a list
        ({"dateTime": 1e308}, "Consent.dateTime"),
        ({"dateTime": "9" * 3_000_000}, "Consent.dateTime"),
        ({"extension": [_DEEP]}, "Consent.extension[0].extension[0]"),
    ]
    for change, expression in crafted:
        for method, url, body in (
            ("POST", f"{gateway.fhir}/Consent", {**valid, **change}),
            (
                "PUT",
                f"{gateway.fhir}/Consent/{existing['id']}",
                {**valid, **change, "id": existing["id"]},
            ),
        ):
            data = _encoded(body)
            async with manager.request(method, url, data=data, headers=JSON) as response:
                outcome = await _json(response)
                assert response.status in (400, 422), (method, expression, outcome)
            named = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
            assert any(e.startswith(expression) for e in named), (method, named)

    huge = orjson.dumps({**valid, "dateTime": 0}).replace(
        b'"dateTime":0', b'"dateTime":123456789012345678901234567890123'
    )
    async with manager.post(f"{gateway.fhir}/Consent", data=huge, headers=JSON) as response:
        assert response.status == 422

    # Nothing crafted was stored or changed; a well-formed Consent still works and data flows.
    async with manager.get(f"{gateway.fhir}/Consent/{existing['id']}") as response:
        assert (await _json(response))["meta"]["versionId"] == "1"
    await post_consent(manager, gateway.fhir, valid)
    app = await app_session(session_for)
    async with app.get(f"{gateway.fhir}/Observation?patient=Patient/{AMELIA}") as response:
        assert response.status == 200
        assert released_types(await _json(response)) == {"Observation"}


NINA = "pat-nina-keller"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] != "OperationOutcome"
    }


async def test_c26_sensitive_data_is_found_wherever_it_sits_and_permitted_data_still_flows(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    """A general permit: the contained depression, HIV in a value, depression in ICD-10-CM and a
    lowercase psy label are all withheld; the reference naming the depression loses its display;
    everything else flows. A permit naming PSY and R then releases the PSY data, not the HIV."""
    manager = await patient_session(session_for, NINA)
    general = await post_consent(
        manager, gateway.fhir, grant(NINA, ["Observation", "Condition", "Encounter"])
    )
    app = await app_session(session_for, NINA)

    async with app.get(f"{gateway.fhir}/Observation?patient=Patient/{NINA}&_count=50") as reply:
        observations = _ids(await _json(reply))
    assert not {"obs-nina-keller-11", "obs-nina-keller-12"} & observations
    assert {f"obs-nina-keller-{n}" for n in range(1, 11)} <= observations
    async with app.get(f"{gateway.fhir}/Observation/obs-nina-keller-11") as reply:
        assert reply.status == 403
        assert "sensitive" in (await _json(reply))["issue"][0]["diagnostics"]
    async with app.get(f"{gateway.fhir}/Condition?patient=Patient/{NINA}") as reply:
        assert _ids(await _json(reply)) == {"cond-nina-keller-1"}

    async with app.get(f"{gateway.fhir}/Encounter/enc-nina-keller-2") as reply:
        assert reply.status == 200
        encounter = await _json(reply)
    assert encounter["reasonReference"] == [{"reference": "Condition/cond-nina-keller-2"}]
    assert "depressive" not in orjson.dumps(encounter).decode().lower()
    assert encounter["participant"][0]["individual"]["display"] == "Dr Hannah Okafor"
    assert "REDACTED" in {label["code"] for label in encounter["meta"]["security"]}
    async with app.get(f"{gateway.fhir}/Encounter?patient=Patient/{NINA}") as reply:
        assert len(_ids(await _json(reply))) == 3  # the Encounters themselves flow

    psychiatric = {
        "type": "permit",
        "securityLabel": [
            {"system": ACT_CODE, "code": "PSY"},
            {"system": V3_CONFIDENTIALITY, "code": "R"},
        ],
    }
    updated = copy.deepcopy(general)
    updated["provision"]["provision"] = [psychiatric]
    async with manager.put(
        f"{gateway.fhir}/Consent/{general['id']}", data=orjson.dumps(updated), headers=JSON
    ) as reply:
        assert reply.status == 200, await reply.text()
    async with app.get(f"{gateway.fhir}/Observation?patient=Patient/{NINA}&_count=50") as reply:
        observations = _ids(await _json(reply))
    assert "obs-nina-keller-11" in observations and "obs-nina-keller-12" not in observations
    async with app.get(f"{gateway.fhir}/Condition?patient=Patient/{NINA}") as reply:
        assert _ids(await _json(reply)) == {f"cond-nina-keller-{n}" for n in (1, 2, 3)}


async def test_c28_research_removes_free_text_and_identifiers_everywhere_and_data_still_flows(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    """HRESCH: the Observation whose code.text, valueString, note and meta.tag carry Nina's name,
    MRN, phone and address is released without them; the one with a modifier extension research
    may not drop is withheld; her other Observations flow as coded facts."""
    research = "sleep-study"
    manager = await patient_session(session_for, NINA)
    await post_consent(
        manager,
        gateway.fhir,
        grant(NINA, ["Observation", "Patient"], client_id=research, purposes=("HRESCH",)),
    )
    study = await app_session(session_for, NINA, client_id=research, purposes=("HRESCH",))
    async with study.get(f"{gateway.fhir}/Observation?patient=Patient/{NINA}&_count=50") as reply:
        raw = await reply.read()
    bundle = orjson.loads(raw)
    for identifying in ("Nina", "Keller", "MRN-100108", "555-0118", "Birch", "husband", "intake"):
        assert identifying.encode() not in raw, identifying
    released = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert "obs-nina-keller-14" not in released  # its modifier extension cannot be dropped
    assert {f"obs-nina-keller-{n}" for n in (*range(1, 11), 13)} == set(released)
    sleep = released["obs-nina-keller-13"]
    assert sleep["code"] == {"coding": [{"system": "http://loinc.org", "code": "93832-4"}]}
    assert "valueString" not in sleep and "note" not in sleep and "tag" not in sleep["meta"]
    weight = released["obs-nina-keller-3"]
    assert weight["valueQuantity"]["value"] == 64.2 and weight["valueQuantity"]["unit"] == "kg"

    async with study.get(f"{gateway.fhir}/Observation/obs-nina-keller-14") as reply:
        assert reply.status == 403
        assert "modifierExtension" in (await _json(reply))["issue"][0]["diagnostics"]
    async with study.get(f"{gateway.fhir}/Patient/{NINA}") as reply:
        patient = await _json(reply)
    assert patient["birthDate"] == "1979" and "name" not in patient and "telecom" not in patient


async def test_p22_deeply_nested_bodies_of_any_resource_are_a_400_naming_where_not_a_500(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    """Orjson reads 1,024 levels, the FHIR models' validators recurse and fail far earlier: every
    body is checked for depth first, whatever its type."""
    nested = '{"url":"http://example.org/x","extension":[' * 150 + '{"url":"x"}' + "]}" * 150
    observation = (
        '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        f'"subject":{{"reference":"Patient/{AMELIA}"}},"extension":[{nested}]}}'
    )
    bundle = (
        '{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST",'
        f'"url":"Observation"}},"resource":{observation}}}]}}'
    )
    for url, body, where in (
        (f"{gateway.fhir}/Observation", observation, "Observation.extension[0].extension[0]"),
        (gateway.fhir, bundle, "Bundle.entry[0].resource.extension[0]"),
    ):
        async with system_http.post(url, data=io.BytesIO(body.encode()), headers=JSON) as reply:
            outcome = await _json(reply)
            assert reply.status == 400, outcome
        named = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
        assert named and named[0].startswith(where), named
    async with system_http.get(f"{gateway.fhir}/Observation?patient={AMELIA}") as reply:
        assert reply.status == 200 and (await _json(reply))["entry"]  # reads still flow
