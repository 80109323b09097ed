"""What the engine reads from a resource: dates, codes, labels (CONSENT.md C-09)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from consent import fhirtime
from consent.facts import CLINICAL_DATE_PATHS, CODED_ELEMENTS, facts
from consent.subsetting import coded_elements, element_info
from gateway.fhir.fhirdata import RESOURCE_TYPES
from tests.consent.conftest import seed_resources


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2021", utc(2021, 1, 1), utc(2021, 12, 31, 23, 59, 59, 999999)),
        ("2021-12", utc(2021, 12, 1), utc(2021, 12, 31, 23, 59, 59, 999999)),
        ("2024-02", utc(2024, 2, 1), utc(2024, 2, 29, 23, 59, 59, 999999)),
        ("2021-03-04", utc(2021, 3, 4), utc(2021, 3, 4, 23, 59, 59, 999999)),
        ("2021-03-04T10:00:00Z", utc(2021, 3, 4, 10), utc(2021, 3, 4, 10)),
        ("2021-03-04T10:00:00+02:00", utc(2021, 3, 4, 8), utc(2021, 3, 4, 8)),
        ("2021-03-04T10:00:00", utc(2021, 3, 4, 10), utc(2021, 3, 4, 10)),
    ],
)
def test_c09_fhir_dates_are_intervals(value: str, low: datetime, high: datetime) -> None:
    assert fhirtime.interval(value) == (low, high)


@pytest.mark.parametrize("value", ["", "yesterday", "2021-13", "2021-02-30", 2021, None])
def test_c09_not_a_date(value: object) -> None:
    assert fhirtime.interval(value) is None


def test_c06_open_and_malformed_periods() -> None:
    now = utc(2025, 6, 1)
    assert fhirtime.period_contains_instant(None, now)
    assert fhirtime.period_contains_instant({"start": "2025"}, now)
    assert fhirtime.period_contains_instant({"end": "2025-06-01"}, now)
    assert not fhirtime.period_contains_instant({"end": "2025-05-31"}, now)
    assert not fhirtime.period_contains_instant({"start": "soon"}, now)
    assert not fhirtime.period_contains_instant("2025", now)


def test_c09_every_fixture_resource_of_a_dated_type_has_a_clinical_date() -> None:
    for resource in seed_resources():
        if resource["resourceType"] in CLINICAL_DATE_PATHS:
            assert facts(resource).date is not None, resource["id"]


def test_c09_clinical_date_paths_name_real_elements() -> None:
    for resource_type, paths in CLINICAL_DATE_PATHS.items():
        info = element_info(resource_type)
        assert info.known, resource_type
        for path in paths:
            assert path[0] in info.names, f"{resource_type}.{'.'.join(path)}"


def test_c09_fixture_labels_are_read_and_sensitive_data_found() -> None:
    for resource in seed_resources():
        labelled = {s["code"] for s in resource.get("meta", {}).get("security", [])}
        seen = facts(resource)
        assert labelled <= seen.labels
        assert bool(seen.sensitive) == bool(labelled), resource["id"]


def test_c09_a_sensitive_code_makes_an_unlabelled_resource_sensitive() -> None:
    condition = {
        "resourceType": "Condition",
        "id": "c",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "75544000"}]},
    }
    assert facts(condition).sensitive == {"SUD"}
    condition["code"]["coding"][0]["system"] = "http://example.org/other"
    assert facts(condition).sensitive == frozenset()


def test_c09_malformed_resources_are_read_without_errors() -> None:
    odd = {
        "resourceType": "Observation",
        "meta": {"security": ["R", {"code": 5}], "lastUpdated": 7},
        "code": "x",
        "category": [None, {"coding": "y"}],
        "effectiveDateTime": ["2021"],
    }
    seen = facts(odd, with_references=True)
    assert seen.reference == ""
    assert seen.labels == frozenset() and seen.level == -1
    assert seen.codes == frozenset()
    assert seen.date is None
    assert seen.undecidable is not None  # C-26: and so it is withheld


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:30:00-05:00"])
def test_p22_dates_whose_utc_instant_leaves_the_calendar_are_no_date(value: str) -> None:
    assert fhirtime.interval(value) is None
    observation = {"resourceType": "Observation", "effectiveDateTime": value}
    assert facts(observation).date is None


# --- C-26: sensitive data is recognised wherever it sits --------------------------------------

SNOMED = "http://snomed.info/sct"
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
HIV = {"coding": [{"system": SNOMED, "code": "86406008", "display": "HIV infection"}]}
DEPRESSION = {"coding": [{"system": SNOMED, "code": "370143000"}]}
HEART_RATE = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}


def observation(**elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": HEART_RATE,
        "subject": {"reference": "Patient/p1"},
        **elements,
    }


def test_c26_hiv_code_in_value_is_sensitive() -> None:
    seen = facts(observation(valueCodeableConcept=HIV))
    assert seen.sensitive == {"HIV"} and seen.undecidable is None


@pytest.mark.parametrize(
    "resource",
    [
        observation(code=HIV),
        observation(category=[HIV]),
        observation(component=[{"code": HIV}]),
        observation(component=[{"code": HEART_RATE, "valueCodeableConcept": HIV}]),
        observation(extension=[{"url": "http://example.org/dx", "valueCodeableConcept": HIV}]),
        observation(extension=[{"url": "http://example.org/dx", "valueCoding": HIV["coding"][0]}]),
        observation(
            modifierExtension=[
                {
                    "url": "http://example.org/x",
                    "extension": [{"url": "a", "valueCodeableConcept": HIV}],
                }
            ]
        ),
        observation(focus=[{"reference": "Condition/c1"}], interpretation=[HIV]),
        {"resourceType": "Condition", "id": "c", "code": HEART_RATE, "evidence": [{"code": [HIV]}]},
        {"resourceType": "Encounter", "id": "e", "status": "finished", "reasonCode": [HIV]},
        {"resourceType": "Encounter", "id": "e", "status": "finished", "type": [HIV]},
        {"resourceType": "MedicationRequest", "id": "m", "medicationCodeableConcept": HIV},
        {"resourceType": "Immunization", "id": "i", "vaccineCode": HIV},
        {"resourceType": "FamilyMemberHistory", "id": "f", "condition": [{"code": HIV}]},
        {"resourceType": "Claim", "id": "c", "diagnosis": [{"diagnosisCodeableConcept": HIV}]},
        {
            "resourceType": "QuestionnaireResponse",
            "id": "q",
            "item": [
                {
                    "linkId": "1",
                    "item": [{"linkId": "2", "answer": [{"valueCoding": HIV["coding"][0]}]}],
                }
            ],
        },
    ],
    ids=lambda r: str(sorted(set(r) - {"resourceType", "id", "status", "subject"})),
)
def test_c26_a_sensitive_code_anywhere_makes_the_resource_sensitive(
    resource: dict[str, Any],
) -> None:
    seen = facts(resource)
    assert "HIV" in seen.sensitive and seen.undecidable is None


def test_c26_a_contained_sensitive_resource_makes_its_container_sensitive() -> None:
    depression = {"resourceType": "Condition", "id": "dx", "code": DEPRESSION}
    container = observation(contained=[depression], focus=[{"reference": "#dx"}])
    assert facts(container).sensitive == {"PSY"}
    labelled = {
        "resourceType": "Condition",
        "id": "dx",
        "meta": {"security": [{"system": V3_ACT_CODE, "code": "HIV"}, {"code": "V"}]},
        "code": HEART_RATE,
    }
    assert facts(observation(contained=[labelled])).sensitive == {"HIV", "V"}


@pytest.mark.parametrize(
    ("security", "sensitive"),
    [
        ([{"system": V3_ACT_CODE, "code": "psy"}], {"PSY"}),
        ([{"system": V3_ACT_CODE, "code": "Psy "}], {"PSY"}),
        ([{"system": "http://example.org/local", "code": "hiv"}], {"HIV"}),
        ([{"system": V3_CONFIDENTIALITY, "code": "r"}], {"R"}),
        ([{"system": V3_CONFIDENTIALITY.upper(), "code": "v"}], {"V"}),
        ([{"system": "http://hl7.org/fhir/v3/Confidentiality", "code": "R"}], {"R"}),
        ([{"code": "r"}], {"R"}),
    ],
)
def test_c26_security_labels_are_recognised_in_any_case(
    security: list[dict[str, str]], sensitive: set[str]
) -> None:
    seen = facts(observation(meta={"security": security}))
    assert seen.sensitive == sensitive and seen.undecidable is None


@pytest.mark.parametrize(
    ("code", "sensitive"),
    [("F32.9", {"PSY"}), ("f33.1", {"PSY"}), ("F10.20", {"SUD"}), ("B20", {"HIV"})],
)
def test_c26_icd10_mental_health_and_other_ranges_are_recognised(
    code: str, sensitive: set[str]
) -> None:
    condition = {
        "resourceType": "Condition",
        "id": "c",
        "code": {"coding": [{"system": ICD10_CM, "code": code}]},
    }
    assert facts(condition).sensitive == sensitive


def test_c26_labels_carried_as_data_count() -> None:
    document = {
        "resourceType": "DocumentReference",
        "id": "d",
        "status": "current",
        "securityLabel": [{"coding": [{"system": V3_ACT_CODE, "code": "SDV"}]}],
    }
    assert facts(document).sensitive == {"SDV"}
    composition = {"resourceType": "Composition", "id": "c", "confidentiality": "R"}
    assert facts(composition).sensitive == {"R"}


@pytest.mark.parametrize(
    "meta",
    [
        {"security": {"system": V3_ACT_CODE, "code": "PSY"}},
        {"security": "PSY"},
        {"security": ["PSY"]},
        {"security": [{"system": V3_ACT_CODE, "code": 5}]},
        {"security": [{"system": V3_ACT_CODE, "display": "psychiatry"}]},
        {"security": [{"system": {"$ne": 1}, "code": "R"}]},
        {"security": [None]},
        ["security"],
        "restricted",
        {"security": None},
        None,
    ],
)
def test_c26_malformed_security_labels_make_sensitivity_undecidable(meta: Any) -> None:
    assert facts(observation(meta=meta)).undecidable is not None


@pytest.mark.parametrize(
    "elements",
    [
        {"code": {"coding": {"system": SNOMED, "code": "86406008"}}},
        {"code": {"coding": ["86406008"]}},
        {"code": {"coding": [{"system": SNOMED, "code": 86406008}]}},
        {"code": {"coding": [{"system": 7, "code": "86406008"}]}},
        {"code": "86406008"},
        {"category": ["86406008"]},
        {"valueCodeableConcept": "HIV infection"},
        {"component": [{"code": "86406008"}]},
        {"component": [{"code": HEART_RATE, "valueCodeableConcept": ["86406008"]}]},
        {"extension": [{"url": "x", "valueCoding": {"system": SNOMED, "code": None}}]},
        {"contained": [{"resourceType": "Condition", "id": "c", "meta": {"security": "HIV"}}]},
    ],
    ids=str,
)
def test_c26_malformed_code_elements_make_sensitivity_undecidable(
    elements: dict[str, Any],
) -> None:
    assert facts(observation(**elements)).undecidable is not None


def test_c26_primitive_codes_where_the_definition_has_them_are_well_formed() -> None:
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a",
        "type": "allergy",
        "category": ["food"],
        "code": {"coding": [{"system": SNOMED, "code": "91935009"}]},
        "reaction": [{"severity": "mild", "manifestation": [HEART_RATE]}],
    }
    assert facts(allergy).undecidable is None
    weight = observation(
        valueQuantity={
            "value": 70,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        }
    )
    assert facts(weight).undecidable is None


def test_c26_every_fixture_resource_is_decidable_and_coded_elements_are_real() -> None:
    for resource in seed_resources():
        assert facts(resource).undecidable is None, resource["id"]
    everywhere = {path for rtype in RESOURCE_TYPES for path in coded_elements(rtype)}
    for path in CODED_ELEMENTS:
        assert ".".join(path) in everywhere, path


def test_c26_resources_nested_too_deep_are_undecidable() -> None:
    nested: Any = {"url": "x"}
    for _ in range(200):
        nested = {"url": "x", "extension": [nested]}
    assert facts(observation(extension=[nested])).undecidable is not None


def test_c26_narrative_and_reference_displays_are_mentions() -> None:
    assert not facts(observation()).mentions
    assert facts(observation(text={"status": "generated", "div": "<div>x</div>"})).mentions
    assert facts(
        observation(focus=[{"reference": "Condition/c", "display": "Depression"}])
    ).mentions
    assert not facts(
        observation(code={"coding": [{"code": "x", "display": "Heart rate"}]})
    ).mentions
