"""Text that may mention withheld data: references' displays and narrative (CONSENT.md C-26)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consent.codes import REDACTED
from consent.mentions import MASKED, keeps_display, without_mentions

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/p1", "display": "Samuel Reed"},
    "participant": [
        {"individual": {"reference": "Practitioner/prac-1", "display": "Dr Hannah Okafor"}}
    ],
    "reasonReference": [{"reference": "Condition/dx-1", "display": "Major depressive episode"}],
    "serviceProvider": {"reference": "Organization/org-1", "display": "Riverside General"},
}


def redacted(resource: dict[str, Any]) -> bool:
    return any(
        s.get("code") == REDACTED["code"] for s in resource.get("meta", {}).get("security", [])
    )


def test_c26_a_reference_to_patient_data_loses_its_display() -> None:
    before = copy.deepcopy(ENCOUNTER)
    out = without_mentions(ENCOUNTER)
    assert out["reasonReference"] == [{"reference": "Condition/dx-1"}]
    assert out["subject"] == {"reference": "Patient/p1"}
    assert "depressive" not in str(out)
    assert redacted(out)
    assert before == ENCOUNTER  # the input is not changed


def test_c26_references_to_types_without_patient_data_keep_their_display() -> None:
    out = without_mentions(ENCOUNTER)
    assert out["participant"] == ENCOUNTER["participant"]
    assert out["serviceProvider"] == ENCOUNTER["serviceProvider"]
    assert out["class"] == ENCOUNTER["class"]


@pytest.mark.parametrize(
    ("reference", "kept"),
    [
        ({"reference": "Practitioner/p", "display": "x"}, True),
        ({"reference": "https://ehr.example.org/fhir/Location/l/_history/2", "display": "x"}, True),
        ({"type": "Organization", "identifier": {"value": "1"}, "display": "x"}, True),
        ({"reference": "Medication?code=123", "display": "x"}, True),
        ({"reference": "Condition/c", "display": "x"}, False),
        ({"reference": "Observation/o", "type": "Observation", "display": "x"}, False),
        ({"reference": "Practitioner/p", "type": "Condition", "display": "x"}, False),
        ({"reference": "#contained-1", "display": "x"}, False),
        ({"reference": "urn:uuid:3b8f6b1e-8c9b-4b8e-9d7c-1f2e3d4c5b6a", "display": "x"}, False),
        ({"identifier": {"system": "urn:mrn", "value": "1"}, "display": "x"}, False),
        ({"display": "x"}, False),
        ({"reference": 5, "type": "Practitioner", "display": "x"}, False),
    ],
)
def test_c26_which_references_keep_their_display(reference: dict[str, Any], kept: bool) -> None:
    assert keeps_display(reference) is kept


def test_c26_a_reference_with_nothing_but_a_display_becomes_masked() -> None:
    resource = {
        "resourceType": "Observation",
        "id": "o",
        "derivedFrom": [{"display": "HIV viral load of 2024"}],
        "extension": [
            {"url": "http://example.org/about", "valueReference": {"display": "PHQ-9 of May"}}
        ],
    }
    out = without_mentions(resource)
    assert out["derivedFrom"] == [{"extension": [MASKED]}]
    assert out["extension"][0]["valueReference"] == {"extension": [MASKED]}


def test_c26_narrative_is_removed_wherever_it_is() -> None:
    narrative = {"status": "generated", "div": "<div>Admitted for a depressive episode</div>"}
    composition = {
        "resourceType": "Composition",
        "id": "c",
        "text": narrative,
        "section": [{"title": "Problems", "text": narrative}],
        "contained": [{"resourceType": "Condition", "id": "dx", "text": narrative}],
    }
    out = without_mentions(composition)
    assert "depressive" not in str(out)
    assert out["section"] == [{"title": "Problems"}]
    assert out["contained"] == [{"resourceType": "Condition", "id": "dx"}]
    assert redacted(out)


def test_c26_codings_and_meta_keep_their_display() -> None:
    resource = {
        "resourceType": "Observation",
        "id": "o",
        "meta": {"tag": [{"display": "imported"}], "security": [{"code": "R", "display": "r"}]},
        "code": {"coding": [{"display": "Heart rate"}], "text": "Heart rate"},
        "extension": [{"url": "x", "valueCoding": {"display": "only a display"}}],
        "subject": {"reference": "Patient/p1"},
    }
    assert without_mentions(resource) is resource  # nothing to remove: no copy either


def test_c26_malformed_elements_are_left_for_the_decision() -> None:
    odd = {"resourceType": "Observation", "focus": [None, 3, {"display": 5}], "text": "plain"}
    out = without_mentions(odd)
    assert out["focus"] == [None, 3, {"extension": [MASKED]}]
    assert out["text"] == "plain"
