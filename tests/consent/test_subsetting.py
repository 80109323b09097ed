"""``_elements`` and ``_summary`` on top of the minimisation profile (CONSENT.md C-17; FHIR R4
Search 3.1.1.5.8-9)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consent.codes import SUBSETTED
from consent.minimise import minimise
from consent.subsetting import apply_elements, apply_summary, element_info
from tests.consent.conftest import seed_resource


def subsetted(resource: dict[str, Any]) -> bool:
    return SUBSETTED in resource.get("meta", {}).get("tag", [])


def blood_pressure() -> dict[str, Any]:
    obs = seed_resource("Observation", "obs-samuel-reed-2")
    obs["text"] = {"status": "generated", "div": "<div>120/80</div>"}
    obs["note"] = [{"text": "taken after a walk"}]
    obs["component"][0]["interpretation"] = [{"text": "normal"}]
    return obs


def test_c17_elements_keep_named_and_mandatory_elements() -> None:
    obs = blood_pressure()
    out = apply_elements(obs, ["effective", "Observation.performer", "Patient.name", "bogus"])
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "code",
        "effectiveDateTime",
        "performer",
    }
    assert subsetted(out)


def test_c17_elements_accept_choice_names_with_and_without_x() -> None:
    obs = seed_resource("Observation")
    assert "valueQuantity" in apply_elements(obs, ["value[x]"])
    assert "valueQuantity" in apply_elements(obs, ["value"])
    assert "valueQuantity" not in apply_elements(obs, ["code"])


def test_c17_elements_never_bring_back_what_the_profile_removed() -> None:
    paid = minimise(seed_resource("Observation"), ["HPAYMT"])
    out = apply_elements(paid, ["value", "code", "text"])
    assert "valueQuantity" not in out
    assert "text" not in out
    assert out["code"] == paid["code"]
    codes = {c["code"] for c in out["meta"]["security"]}
    assert "REDACTED" in codes
    assert subsetted(out)


def test_c17_summary_true_keeps_summary_elements_also_inside_backbones() -> None:
    obs = blood_pressure()
    out = apply_summary(obs, "true")
    for gone in ("text", "note", "category"):
        assert gone not in out, gone
    assert out["code"] == obs["code"]
    component = out["component"][0]
    assert "interpretation" not in component
    assert component["code"] == obs["component"][0]["code"]
    assert component["valueQuantity"] == obs["component"][0]["valueQuantity"]
    assert subsetted(out)


def test_c17_summary_true_on_patient_drops_non_summary_elements() -> None:
    patient = seed_resource("Patient")
    assert "generalPractitioner" in patient
    out = apply_summary(patient, "true")
    assert "generalPractitioner" not in out
    assert out["name"] == patient["name"]
    assert out["birthDate"] == patient["birthDate"]


def test_c17_summary_text_keeps_text_id_meta_and_mandatory() -> None:
    out = apply_summary(blood_pressure(), "text")
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "code"}


def test_c17_summary_data_drops_only_text() -> None:
    obs = blood_pressure()
    out = apply_summary(obs, "data")
    assert "text" not in out
    assert {k: v for k, v in out.items() if k != "meta"} == {
        k: v for k, v in obs.items() if k not in ("text", "meta")
    }


def test_c17_summary_false_is_a_copy_without_tag() -> None:
    obs = blood_pressure()
    out = apply_summary(obs, "false")
    assert out == obs
    out["code"]["text"] = "changed"
    assert obs["code"]["text"] != "changed"


def test_c17_summary_count_is_not_a_resource_mode() -> None:
    with pytest.raises(ValueError, match="count"):
        apply_summary(blood_pressure(), "count")


def test_c17_subsetting_never_mutates_input_and_keeps_existing_tags() -> None:
    obs = blood_pressure()
    obs["meta"] = {"tag": [{"system": "urn:t", "code": "x"}]}
    before = copy.deepcopy(obs)
    for out in (apply_elements(obs, ["code"]), apply_summary(obs, "true")):
        assert out["meta"]["tag"] == [{"system": "urn:t", "code": "x"}, SUBSETTED]
        out["meta"]["tag"].clear()
    assert obs == before


def test_c17_unknown_resource_type_keeps_only_mandatory_under_summary() -> None:
    assert not element_info("NotAType").known
    out = apply_summary({"resourceType": "NotAType", "id": "x", "secret": 1}, "true")
    assert set(out) == {"resourceType", "id", "meta"}
