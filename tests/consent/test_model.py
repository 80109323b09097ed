"""The Consent resource as stored (CONSENT.md C-01, C-05; FHIR R4 Consent invariants)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import model
from consent.codes import CLIENT_SYSTEM, RESOURCE_TYPES, V3_ACT_REASON
from consent.errors import ConsentInvalid, InvalidParameter
from tests.consent import crafted

START = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
END = datetime(2026, 3, 1, tzinfo=UTC)


def valid() -> dict[str, Any]:
    return model.app_grant("pat-1", "app-a", "App A", ["TREAT"], ["Observation"], [], START, END)


def granular() -> dict[str, Any]:
    """A Consent with nested provisions (a deny of a type with a permit of some codes)."""
    scope = "patient/Observation.rs?category=laboratory"
    return model.app_grant("pat-1", "app-a", "A", [], ["Condition"], [scope], START, END)


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


# --- P-22: whatever the body, a ConsentInvalid naming the element, never another error ----------


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"status": {"$ne": None}}, "Consent.status"),
        ({"status": ["active"]}, "Consent.status"),
        ({"provision": {"type": {"$in": ["permit"]}}}, "Consent.provision.type"),
        ({"scope": {"coding": 5}}, "Consent.scope"),
        ({"category": {"$where": "1"}}, "Consent.category"),
        ({"patient": {"reference": {"$gt": ""}}}, "Consent.patient"),
    ],
)
def test_p22_operators_and_wrong_types_are_invalid_naming_the_element(
    change: dict[str, Any], expression: str
) -> None:
    consent = {**valid(), **change}
    assert any(where.startswith(expression) for _, where in rules(consent))


def test_p22_provision_data_of_the_wrong_type_is_invalid() -> None:
    consent = valid()
    consent["provision"]["provision"] = [
        {"type": "deny", "data": 7},
        {"type": "deny", "data": [{"meaning": {"$ne": 1}, "reference": {"reference": "x/1"}}]},
    ]
    found = {where for _, where in rules(consent)}
    assert "Consent.provision.provision[0].data" in found
    assert "Consent.provision.provision[1].data[0].meaning" in found


@pytest.mark.parametrize("kind", ["NotAType", "MedicinalProduct", "observation"])
def test_p22_contained_resources_of_unknown_types_are_invalid(kind: str) -> None:
    consent = {**valid(), "contained": [{"resourceType": kind, "id": "x"}]}
    assert ("structure", "Consent.contained[0].resourceType") in rules(consent)


def test_p22_deep_nesting_is_refused_before_the_model_reads_it() -> None:
    nested: Any = {"url": "http://example.org/x"}
    for _ in range(900):  # orjson accepts up to 1,024 levels; the model's validators recurse
        nested = {"url": "http://example.org/x", "extension": [nested]}
    found = rules({**valid(), "extension": [nested]})
    [(rule, where)] = found
    assert rule == "structure" and where.startswith("Consent.extension[0].extension[0]")


def test_p22_huge_bodies_names_and_numbers_are_bounded() -> None:
    many = {**valid(), "category": [1] * (model.MAX_ELEMENTS + 1)}
    assert rules(many) == {("structure", "Consent")}
    with pytest.raises(ConsentInvalid) as refused:
        model.validate({**valid(), "category": [1] * 500})
    assert len(refused.value.issues) == model.MAX_ISSUES
    long_key = {**valid(), "k" * 1_000_000: 1, "id": "i" * 3_000_000, "dateTime": 1e308}
    with pytest.raises(ConsentInvalid) as refused:
        model.validate(long_key)
    assert all(len(issue.expression) < 100 for issue in refused.value.issues)
    assert {"Consent.id", "Consent.dateTime"} <= {i.expression for i in refused.value.issues}


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    body=st.one_of(
        crafted.json_values,
        crafted.mutations([valid(), granular()]),
        st.dictionaries(crafted.keys, crafted.json_values).map(
            lambda d: {**d, "resourceType": "Consent"}
        ),
    )
)
def test_p22_property_any_json_is_a_consent_or_consent_invalid(body: Any) -> None:
    try:
        consent = model.validate(body)
    except ConsentInvalid as refused:
        assert 1 <= len(refused.issues) <= model.MAX_ISSUES
        for issue in refused.issues:
            assert issue.expression.startswith("Consent") and len(issue.expression) < 4000
        return
    assert consent == body
