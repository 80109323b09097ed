"""The Consent resource as stored (CONSENT.md C-01, C-05; FHIR R4 Consent invariants)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from consent import model
from consent.codes import CLIENT_SYSTEM, RESOURCE_TYPES, V3_ACT_REASON
from consent.errors import ConsentInvalid, InvalidParameter

START = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
END = datetime(2026, 3, 1, tzinfo=UTC)


def valid() -> dict[str, Any]:
    return model.app_grant("pat-1", "app-a", "App A", ["TREAT"], ["Observation"], [], START, END)


def rules(consent: dict[str, Any]) -> set[tuple[str, str]]:
    with pytest.raises(ConsentInvalid) as refused:
        model.validate(consent)
    return {(issue.rule, issue.expression) for issue in refused.value.issues}


def test_c01_a_valid_consent_passes_unchanged() -> None:
    consent = valid()
    assert model.validate(copy.deepcopy(consent)) == consent


def test_c01_ppc1_policy_or_policy_rule() -> None:
    consent = valid()
    del consent["policyRule"]
    assert rules(consent) == {("ppc-1", "Consent")}
    consent["policy"] = [{"uri": "https://example.org/privacy-policy"}]
    model.validate(consent)


def test_c01_ppc2_privacy_consent_names_a_patient() -> None:
    consent = valid()
    del consent["patient"]
    assert rules(consent) == {("ppc-2", "Consent.patient")}


def test_c01_gw3_patient_is_a_literal_patient_reference() -> None:
    consent = valid()
    consent["patient"] = {"reference": "Group/g1"}
    assert rules(consent) == {("gw-3", "Consent.patient")}
    consent["patient"] = {"identifier": {"system": "urn:mrn", "value": "1"}}
    assert rules(consent) == {("gw-3", "Consent.patient")}


def test_c01_gw1_only_privacy_consents() -> None:
    consent = valid()
    consent["scope"] = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}
        ]
    }
    assert rules(consent) == {("gw-1", "Consent.scope")}


def test_c01_gw2_root_provision_with_a_type() -> None:
    consent = valid()
    del consent["provision"]["type"]
    assert rules(consent) == {("gw-2", "Consent.provision")}
    del consent["provision"]
    assert rules(consent) == {("gw-2", "Consent.provision")}


def test_c01_provision_type_status_and_data_meaning_bindings() -> None:
    consent = valid()
    consent["status"] = "revoked"
    consent["provision"]["type"] = "allow"
    consent["provision"]["provision"] = [
        {"type": "maybe", "data": [{"meaning": "all", "reference": {"reference": "Observation/1"}}]}
    ]
    assert rules(consent) == {
        ("binding", "Consent.status"),
        ("binding", "Consent.provision.type"),
        ("binding", "Consent.provision.provision[0].type"),
        ("binding", "Consent.provision.provision[0].data[0].meaning"),
    }


def test_c01_per1_period_start_not_after_end() -> None:
    consent = valid()
    consent["provision"]["period"] = {"start": "2025-03-02", "end": "2025-03-01"}
    consent["provision"]["provision"] = [
        {"type": "deny", "dataPeriod": {"start": "2021", "end": "2020"}}
    ]
    assert rules(consent) == {
        ("per-1", "Consent.provision.period"),
        ("per-1", "Consent.provision.provision[0].dataPeriod"),
    }
    consent["provision"]["period"] = {"start": "2025-03-01", "end": "2025-03-01"}  # one day
    consent["provision"]["provision"] = []
    model.validate(consent)


def test_c01_gw4_nesting_depth_is_bounded() -> None:
    consent = valid()
    node = consent["provision"]
    for _ in range(model.MAX_DEPTH):
        node["provision"] = [{"type": "deny"}]
        node = node["provision"][0]
    assert ("gw-4", "Consent.provision" + ".provision[0]" * model.MAX_DEPTH) in rules(consent)


def test_c01_structure_errors_from_the_r4_model() -> None:
    consent = valid()
    consent["provision"]["period"]["start"] = "yesterday"
    consent["unknownElement"] = True
    consent["category"] = []
    found = rules(consent)
    assert ("structure", "Consent.provision.period.start") in found
    assert ("structure", "Consent.unknownElement") in found
    assert ("structure", "Consent.category") in found
    assert rules({"resourceType": "Patient"}) == {("structure", "Consent")}
    assert rules([]) == {("structure", "Consent")}  # type: ignore[arg-type]


def test_c01_issues_render_as_operation_outcome_issues() -> None:
    consent = valid()
    del consent["policyRule"]
    with pytest.raises(ConsentInvalid) as refused:
        model.validate(consent)
    assert refused.value.issues[0].as_issue() == {
        "severity": "error",
        "code": "invariant",
        "diagnostics": "ppc-1: either a policy or a policyRule is required",
        "expression": ["Consent"],
    }


def test_c05_app_grant_shape() -> None:
    consent = model.app_grant(
        "pat-1",
        "app-a",
        "App A",
        ["TREAT", "HOPERAT"],
        ["Observation", "Condition"],
        [],
        START,
        END,
        "RelatedPerson/mother",
    )
    provision = consent["provision"]
    assert consent["status"] == "active"
    assert consent["patient"] == {"reference": "Patient/pat-1"}
    assert consent["dateTime"] == "2025-03-01T09:30:00.000Z"
    assert consent["policyRule"]["coding"][0]["code"] == "OPTIN"
    assert consent["category"][0]["coding"][0]["code"] == "59284-0"
    assert consent["performer"] == [{"reference": "RelatedPerson/mother"}]
    assert provision["type"] == "permit"
    assert provision["period"] == {
        "start": "2025-03-01T09:30:00.000Z",
        "end": "2026-03-01T00:00:00.000Z",
    }
    actor = provision["actor"][0]
    assert actor["role"]["coding"][0]["code"] == "IRCP"
    assert actor["reference"] == {
        "type": "Device",
        "identifier": {"system": CLIENT_SYSTEM, "value": "app-a"},
        "display": "App A",
    }
    assert provision["purpose"] == [
        {"system": V3_ACT_REASON, "code": "TREAT"},
        {"system": V3_ACT_REASON, "code": "HOPERAT"},
    ]
    assert provision["class"] == [
        {"system": RESOURCE_TYPES, "code": "Observation"},
        {"system": RESOURCE_TYPES, "code": "Condition"},
    ]
    assert "provision" not in provision
    assert model.actor_keys(consent) == [f"{CLIENT_SYSTEM}|app-a"]


def test_c05_app_grant_accepts_r4_types_the_r4b_models_lack() -> None:
    consent = model.app_grant("pat-1", "app-a", "A", [], ["MedicinalProduct"], [], START, None)
    assert consent["provision"]["class"] == [{"system": RESOURCE_TYPES, "code": "MedicinalProduct"}]
    with pytest.raises(InvalidParameter):
        model.app_grant("pat-1", "app-a", "A", [], ["Medicinalproduct"], [], START, None)
    with pytest.raises(InvalidParameter):
        model.app_grant("pat-1", "app-a", "A", [], ["HumanName"], [], START, None)


def test_c05_app_grant_without_expiry_or_purpose() -> None:
    consent = model.app_grant("pat-1", "app-a", "A", [], ["Patient"], [], START, None)
    assert consent["provision"]["period"] == {"start": "2025-03-01T09:30:00.000Z"}
    assert "purpose" not in consent["provision"]


def test_c05_granular_scope_becomes_deny_with_permitted_codes() -> None:
    consent = model.app_grant(
        "pat-1",
        "app-a",
        "A",
        [],
        ["Condition"],
        [
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "patient/Observation.rs?category=vital-signs",
            "patient/Condition.rs?category=problem-list-item",  # Condition is granted whole
        ],
        START,
        None,
    )
    provision = consent["provision"]
    assert [c["code"] for c in provision["class"]] == ["Condition", "Observation"]
    assert provision["provision"] == [
        {
            "type": "deny",
            "class": [{"system": RESOURCE_TYPES, "code": "Observation"}],
            "provision": [
                {
                    "type": "permit",
                    "class": [{"system": RESOURCE_TYPES, "code": "Observation"}],
                    "code": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        },
                        {"coding": [{"code": "vital-signs"}]},
                    ],
                }
            ],
        }
    ]


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.rs",
        "patient/Observation.rs?",
        "patient/Observation.rs?_id=1",
        "patient/Observation.rs?category=",
        "patient/Nothing.rs?category=x",
        "patient/Observation.rs?category=http://x|",
    ],
)
def test_c05_unsupported_granular_scopes_are_refused(scope: str) -> None:
    with pytest.raises(InvalidParameter):
        model.app_grant("pat-1", "app-a", "A", [], [], [scope], START, None)


def test_c05_app_grant_refuses_bad_ids_and_naive_times() -> None:
    with pytest.raises(InvalidParameter):
        model.app_grant("pat/1", "app-a", "A", [], ["Observation"], [], START, None)
    with pytest.raises(InvalidParameter):
        model.app_grant("pat-1", "", "A", [], ["Observation"], [], START, None)
    with pytest.raises(ValueError, match="time zone"):
        model.app_grant("pat-1", "a", "A", [], ["Observation"], [], datetime(2025, 1, 1), None)


@pytest.mark.parametrize(
    ("reference", "key"),
    [
        ({"reference": "Practitioner/p1"}, "Practitioner/p1"),
        ({"reference": "https://ehr.example.org/fhir/Practitioner/p1"}, "Practitioner/p1"),
        ({"reference": "Practitioner/p1/_history/3"}, "Practitioner/p1"),
        ({"identifier": {"system": CLIENT_SYSTEM, "value": "app-a"}}, f"{CLIENT_SYSTEM}|app-a"),
        ({"display": "Dr Who"}, None),
        ({"reference": "p1"}, None),
        ("Practitioner/p1", None),
    ],
)
def test_c07_actor_reference_keys(reference: Any, key: str | None) -> None:
    assert model.reference_key(reference) == key
