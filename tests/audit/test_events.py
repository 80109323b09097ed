"""The AuditEvents of requests and security acts (A-01 … A-05): every shape is a valid FHIR R4
AuditEvent (validated with the ``fhir.resources`` R4B model) and follows IHE BALP."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from consent.codes import CLIENT_SYSTEM
from gateway.audit import codes as c
from gateway.audit import security
from gateway.audit.events import QUERY_KINDS, request_events
from gateway.audit.facts import Actor, ConsentChange, PatientRelease, RequestFacts
from gateway.fhir.context import AccessContext
from gateway.fhir.interaction import Kind
from smart_auth.scopes import ScopeSet
from tests.audit.samples import AT, DENY, OBSERVER, OPT_OUT, PERMIT, facts


def valid(event: dict[str, Any]) -> dict[str, Any]:
    AuditEvent.model_validate(event)
    return event


def agent_of(event: dict[str, Any], code: str) -> dict[str, Any]:
    found = [a for a in event["agent"] if any(x["code"] == code for x in a["type"]["coding"])]
    assert len(found) == 1, event["agent"]
    return found[0]


def entities(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event["entity"] if e.get("role", {}).get("code") == role]


EXPECTED_ACTIONS = {
    Kind.READ: "R",
    Kind.VREAD: "R",
    Kind.HISTORY_INSTANCE: "R",
    Kind.CAPABILITIES: "R",
    Kind.CREATE: "C",
    Kind.UPDATE: "U",
    Kind.PATCH: "U",
    Kind.DELETE: "D",
}


@pytest.mark.parametrize("status", [200, 201, 304, 401, 403, 404, 502, 503])
@pytest.mark.parametrize("kind", list(Kind))
def test_a02_every_interaction_and_outcome_is_a_valid_balp_event(kind: Kind, status: int) -> None:
    releases = () if status >= 400 else (PatientRelease("pat-1", (PERMIT,), count=2),)
    events = request_events(
        facts(interaction=kind, status=status, patients=releases, reason="refused"), OBSERVER
    )
    assert len(events) == 1
    event = valid(events[0])
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0]["system"] == c.RESTFUL_INTERACTION
    assert event["action"] == EXPECTED_ACTIONS.get(kind, "E")
    assert event["outcome"] == ("0" if status < 400 else "4" if status < 500 else "8")
    assert ("outcomeDesc" in event) == (status >= 400)
    assert event["recorded"] == "2026-03-04T05:06:07.890Z"
    assert event["purposeOfEvent"] == [{"coding": [c.coding(c.ACT_REASON, "TREAT")]}]


def test_a02_gateway_kinds_map_to_r4_restful_interaction_codes() -> None:
    codes = {
        kind: request_events(facts(interaction=kind), OBSERVER)[0]["subtype"][0]["code"]
        for kind in (Kind.SEARCH_COMPARTMENT, Kind.PAGE, Kind.SEARCH_SYSTEM)
    }
    assert codes == {
        Kind.SEARCH_COMPARTMENT: "search-type",
        Kind.PAGE: "search",
        Kind.SEARCH_SYSTEM: "search-system",
    }


def test_a03_user_app_and_gateway_agents() -> None:
    event = valid(request_events(facts(), OBSERVER)[0])
    user = agent_of(event, "UserOauthAgent")
    assert user["requestor"] is True
    assert user["who"] == {
        "reference": "Practitioner/prac-1",
        "identifier": {"system": "http://127.0.0.1:8080", "value": "user-7"},
    }
    assert user["policy"] == ["jti-123"]
    assert "network" not in user
    assert any(x["code"] == "IRCP" for x in user["type"]["coding"])
    # A read: the data flows to the app, the Destination; the gateway is the Source (BALP Read).
    app = agent_of(event, "110152")
    assert app["who"] == {"identifier": {"system": CLIENT_SYSTEM, "value": "ward-app"}}
    assert app["network"] == {"address": "192.0.2.10", "type": "2"}
    assert app["requestor"] is False
    server = agent_of(event, "110153")
    assert server["who"]["identifier"] == {
        "system": c.GATEWAY_SYSTEM,
        "value": "test-instance:8080",
    }
    assert server["network"] == {"address": "http://127.0.0.1:8080/fhir", "type": "5"}
    assert event["source"]["observer"] == server["who"]


def test_a03_a_query_has_the_app_as_source_and_a_write_has_the_user_as_agent() -> None:
    search = request_events(facts(interaction="search-type"), OBSERVER)[0]
    assert agent_of(search, "110153")["who"]["identifier"]["value"] == "ward-app"
    write = request_events(facts(interaction="update"), OBSERVER)[0]
    assert any(x["code"] == "AGNT" for x in agent_of(write, "UserOauthAgent")["type"]["coding"])


def test_a03_the_token_itself_never_appears() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTcifQ.c2lnbmF0dXJl"
    context = AccessContext(
        issuer="http://127.0.0.1:8080",
        subject="user-7",
        client_id="ward-app",
        scopes=ScopeSet.parse("user/*.rs"),
        jti="jti-123",
        expires_at=AT,
        fhir_user="Practitioner/prac-1",
        purposes=("TREAT",),
    )
    built = RequestFacts.of(
        context, interaction=Kind.READ, method="GET", path="Observation/obs-1", at=AT
    )
    events = request_events(built, OBSERVER)
    text = orjson.dumps(events).decode()
    assert token not in text and "signature" not in text
    assert agent_of(events[0], "UserOauthAgent")["policy"] == ["jti-123"]


def test_a03_a_refusal_without_a_token_has_no_user_agent() -> None:
    refused = RequestFacts.of(
        None,
        interaction=Kind.SEARCH_TYPE,
        method="GET",
        path="Observation",
        query="patient=pat-1",
        status=401,
        address="198.51.100.4",
        reason="no access token",
    )
    event = valid(request_events(refused, OBSERVER)[0])
    assert event["outcome"] == "4"
    assert not [a for a in event["agent"] if a["requestor"]]
    assert agent_of(event, "110153")["network"]["address"] == "198.51.100.4"


def test_a04_a_read_names_the_resource_version_and_the_patient() -> None:
    event = valid(request_events(facts(), OBSERVER)[0])
    [data] = entities(event, "4")
    assert data["what"] == {"reference": "Observation/obs-1/_history/3"}
    [patient] = entities(event, "1")
    assert patient["what"] == {"reference": "Patient/pat-1"}
    assert patient["type"]["code"] == "1"


def test_a04_a_search_records_the_raw_query_and_no_list_of_results() -> None:
    searched = facts(
        interaction="search-type",
        path="Observation",
        query="patient=pat-1&code=8867-4&_include=Observation:subject",
        resource_id=None,
        version_id=None,
        patients=(PatientRelease("pat-1", (PERMIT,), ("Observation/o1", "Patient/pat-1")),),
    )
    event = valid(request_events(searched, OBSERVER)[0])
    [query] = entities(event, "24")
    assert query["type"]["code"] == "2"
    assert base64.b64decode(query["query"]).decode() == (
        "GET Observation?patient=pat-1&code=8867-4&_include=Observation:subject"
    )
    assert not entities(event, "4")
    assert "Observation/o1" not in orjson.dumps(event).decode()
    [patient] = entities(event, "1")
    assert {"type": "released", "valueString": "2"} in patient["detail"]


def test_a04_one_event_per_patient_not_per_resource() -> None:
    two = facts(
        interaction="search-system",
        path="",
        query="_type=Observation",
        patients=(
            PatientRelease("pat-1", (PERMIT,), count=40),
            PatientRelease("pat-2", (OPT_OUT,), count=3),
        ),
    )
    events = [valid(e) for e in request_events(two, OBSERVER)]
    assert len(events) == 2
    assert len({e["id"] for e in events}) == 2
    assert [entities(e, "1")[0]["what"]["reference"] for e in events] == [
        "Patient/pat-1",
        "Patient/pat-2",
    ]
    # Each patient's event holds only that patient.
    assert "pat-2" not in orjson.dumps(events[0]).decode()


def test_a04_patient_ids_appear_only_in_entities() -> None:
    event = request_events(facts(), OBSERVER)[0]
    outside = {k: v for k, v in event.items() if k != "entity"}
    assert "pat-1" not in orjson.dumps(outside).decode()


def test_a05_the_consent_decisions_are_recorded_once_each_with_the_minimisation_profile() -> None:
    decided = facts(
        interaction="search-type",
        patients=(PatientRelease("pat-1", (PERMIT, PERMIT, DENY, PERMIT), count=3),),
    )
    event = valid(request_events(decided, OBSERVER)[0])
    consents = [e for e in event["entity"] if e["type"]["code"] == "Consent"]
    assert [e["what"]["reference"] for e in consents] == ["Consent/consent-1", "Consent/consent-2"]
    permit = {d["type"]: d["valueString"] for d in consents[0]["detail"]}
    assert permit == {
        "decision": "permit",
        "basis": "permit",
        "provision": "provision.provision[0]",
        "minimisation-profile": "TREAT",
    }
    deny = {d["type"]: d["valueString"] for d in consents[1]["detail"]}
    assert deny["decision"] == "deny" and "minimisation-profile" not in deny


def test_a05_the_base_policy_is_recorded_without_a_consent() -> None:
    event = valid(
        request_events(facts(patients=(PatientRelease("pat-1", (OPT_OUT,)),)), OBSERVER)[0]
    )
    [consent] = [e for e in event["entity"] if e["type"]["code"] == "Consent"]
    assert "what" not in consent
    assert {"type": "basis", "valueString": "opt-out"} in consent["detail"]


def test_a04_query_kinds_cover_every_search_and_history() -> None:
    assert {k.value for k in Kind if "search" in k.value or "history" in k.value} <= QUERY_KINDS


ACTOR = Actor(user_id="user-7", fhir_user="Patient/pat-1", address="192.0.2.10", user_agent="Fx")
SECURITY_EVENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "login": lambda: security.login(OBSERVER, ACTOR, succeeded=True, at=AT),
    "failed login": lambda: security.login(
        OBSERVER, Actor(username="someone", address="192.0.2.9"), succeeded=False, reason="x"
    ),
    "logout": lambda: security.logout(OBSERVER, ACTOR, everywhere=True),
    "second factor": lambda: security.second_factor_changed(OBSERVER, ACTOR, "user-7", "enrolled"),
    "app approved": lambda: security.app_authorization(
        OBSERVER,
        ACTOR,
        client_id="diary",
        patient="pat-1",
        permitted=True,
        scope="patient/*.rs",
        purposes=("PATRQT",),
        consent_id="consent-9",
    ),
    "app denied": lambda: security.app_authorization(
        OBSERVER, ACTOR, client_id="diary", patient="pat-1", permitted=False, scope="x"
    ),
    "token issued": lambda: security.token_issued(
        OBSERVER,
        ACTOR,
        client_id="diary",
        jti="jti-9",
        grant_type="authorization_code",
        scope="patient/*.rs",
        patient="pat-1",
        purposes=("PATRQT",),
    ),
    "backend token issued": lambda: security.token_issued(
        OBSERVER,
        Actor(),
        client_id="quality",
        jti="jti-8",
        grant_type="client_credentials",
        scope="s",
    ),
    "token revoked": lambda: security.token_revoked(
        OBSERVER, ACTOR, client_id="diary", jti="jti-9", patient="pat-1", reason="revocation"
    ),
    "grant revoked": lambda: security.token_revoked(
        OBSERVER, Actor.cli(), client_id="diary", grant_id="g1", reason="consent withdrawn"
    ),
    "consent created": lambda: security.consent_changed(
        OBSERVER, ACTOR, ConsentChange("consent-9", "1", "create", "pat-1", "consent-screen")
    ),
    "consent withdrawn": lambda: security.consent_changed(
        OBSERVER, Actor.cli(), ConsentChange("consent-9", "2", "update", "pat-1", "cli", "letter")
    ),
    "key rotated": lambda: security.key_rotated(OBSERVER, Actor.cli(), new_kid="k2", old_kid="k1"),
    "erasure": lambda: security.patient_erased(
        OBSERVER,
        Actor(user_id="admin-1"),
        "pat-1",
        grants_revoked=2,
        consents_withdrawn=1,
        consents_deleted=0,
        consents_kept=1,
    ),
    **{
        f"admin {act.name.lower()}": (
            lambda act=act: security.admin_action(  # type: ignore[misc]
                OBSERVER, Actor(user_id="admin-1"), act, client_id="diary", user_id="u", role="r"
            )
        )
        for act in security.AdminAction
    },
}


@pytest.mark.parametrize("name", list(SECURITY_EVENTS))
def test_a01_every_security_event_is_a_valid_audit_event(name: str) -> None:
    event = valid(SECURITY_EVENTS[name]())
    assert [a for a in event["agent"] if a["requestor"]], "someone is responsible"
    text = orjson.dumps(event).decode()
    assert "password" not in text


def test_a01_sign_ins_use_dicom_user_authentication() -> None:
    ok = SECURITY_EVENTS["login"]()
    failed = SECURITY_EVENTS["failed login"]()
    assert ok["type"]["code"] == "110114" and ok["subtype"][0]["code"] == "110122"
    assert (ok["outcome"], failed["outcome"]) == ("0", "4")
    assert failed["agent"][0]["who"]["identifier"] == {
        "system": c.USERNAME_SYSTEM,
        "value": "someone",
    }
    assert SECURITY_EVENTS["logout"]()["subtype"][0]["code"] == "110123"


def test_a01_a_token_is_named_by_its_jti_only() -> None:
    event = SECURITY_EVENTS["token issued"]()
    [token] = [e for e in event["entity"] if e["type"]["code"] == "UserOauthAgent"]
    assert token["what"]["identifier"]["value"] == "urn:ietf:params:oauth:jti:jti-9"
    backend = SECURITY_EVENTS["backend token issued"]()
    assert backend["agent"][0]["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": "quality"}


def test_a01_a_consent_change_is_a_balp_write_of_the_consent() -> None:
    event = SECURITY_EVENTS["consent withdrawn"]()
    assert (event["type"]["code"], event["subtype"][0]["code"], event["action"]) == (
        "rest",
        "update",
        "U",
    )
    [data] = entities(event, "4")
    assert data["what"]["reference"] == "Consent/consent-9/_history/2"
    assert {"type": "reason", "valueString": "letter"} in data["detail"]
    assert entities(event, "1")[0]["what"]["reference"] == "Patient/pat-1"
