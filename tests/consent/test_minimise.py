"""Data minimisation per purpose of use (CONSENT.md C-15, C-16, C-18)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from consent.codes import REDACTED
from consent.errors import UnknownPurpose, Unreleasable
from consent.minimise import PROFILES, PURPOSES, Profile, minimise, profile_for
from consent.subsetting import element_info
from tests.consent.conftest import seed_resource, seed_resources

SAMUEL_IDENTIFIERS = (
    "Reed",
    "Samuel",
    "MRN-100105",
    "+1-555-0115",
    "samuel.reed@example.com",
    "7 Harbor View Road",
    "97004",
    "Riverside",
    "1990-01-30",
)


def redacted(resource: dict[str, Any]) -> bool:
    return any(
        s.get("code") == "REDACTED" and s.get("system") == REDACTED["system"]
        for s in resource.get("meta", {}).get("security", [])
    )


def test_c15_a_profile_for_each_declared_purpose() -> None:
    assert {"TREAT", "PATRQT", "HRESCH", "HOPERAT", "HPAYMT"} <= PURPOSES


@pytest.mark.parametrize("purpose", sorted(PURPOSES))
def test_c15_profiles_name_only_real_elements(purpose: str) -> None:
    for resource_type, elements in PROFILES[purpose].keep.items():
        info = element_info(resource_type)
        assert info.known, resource_type
        for element in elements or ():
            assert element in info.names.values(), f"{purpose}: {resource_type}.{element}"


@pytest.mark.parametrize("purpose", ["TREAT", "PATRQT"])
def test_c15_treatment_and_patient_request_keep_everything_unlabelled(purpose: str) -> None:
    for resource in seed_resources():
        assert minimise(resource, [purpose]) == resource


def test_c15_removed_elements_are_labelled_redacted_and_labels_kept() -> None:
    phq9 = seed_resource("Observation", "obs-samuel-reed-13")
    paid = minimise(phq9, ["HPAYMT"])
    assert "valueQuantity" not in paid and "valueInteger" not in paid
    assert paid["code"] == phq9["code"]
    assert redacted(paid)
    codes = {s["code"] for s in paid["meta"]["security"]}
    assert {"PSY", "R", "REDACTED"} <= codes


def test_c15_narrative_goes_when_anything_is_removed() -> None:
    obs = {**seed_resource("Observation"), "text": {"status": "generated", "div": "<div>80</div>"}}
    assert "text" in minimise(obs, ["TREAT"])
    assert "text" not in minimise(obs, ["HOPERAT"])


def test_c15_unlisted_type_and_no_purpose_keep_only_identity_and_meta() -> None:
    practitioner = {
        "resourceType": "Practitioner",
        "id": "p1",
        "meta": {"versionId": "2"},
        "name": [{"family": "Okafor"}],
    }
    assert minimise(practitioner, ["HRESCH"]) == {
        "resourceType": "Practitioner",
        "id": "p1",
        "meta": {"versionId": "2", "security": [REDACTED]},
    }
    obs = seed_resource("Observation")
    assert set(minimise(obs, [])) == {"resourceType", "id", "meta"}


def test_c15_unknown_purpose_is_refused() -> None:
    with pytest.raises(UnknownPurpose):
        profile_for(["TREAT", "NOTAPURPOSE"])


def test_c15_several_purposes_keep_what_every_profile_keeps() -> None:
    obs = seed_resource("Observation")
    both = minimise(obs, ["HOPERAT", "HPAYMT"])
    assert "valueQuantity" in minimise(obs, ["HOPERAT"])
    assert "valueQuantity" not in both
    assert "performer" not in both  # HOPERAT keeps it, HPAYMT does not
    patient = seed_resource("Patient")
    research_and_treatment = minimise(patient, ["TREAT", "HRESCH"])
    assert "name" not in research_and_treatment
    assert research_and_treatment["birthDate"] == "1990"


@pytest.mark.parametrize("purpose", sorted(PURPOSES))
def test_c15_minimisation_never_mutates_its_input(purpose: str) -> None:
    for resource in seed_resources():
        before = copy.deepcopy(resource)
        out = minimise(resource, [purpose])
        assert resource == before
        for value in out.values():  # the output shares nothing with the input
            if isinstance(value, dict):
                value["changed"] = True
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                value[0]["changed"] = True
        assert resource == before


def test_c16_research_removes_every_direct_identifier_of_the_patient() -> None:
    patient = seed_resource("Patient")
    research = minimise(patient, ["HRESCH"])
    text = orjson.dumps(research).decode()
    for identifier in SAMUEL_IDENTIFIERS:
        assert identifier not in text
    assert research["birthDate"] == "1990"
    assert research["address"] == [{"use": "home", "state": "OR", "country": "US"}]
    assert research["gender"] == "male"
    assert redacted(research)


RESEARCH = PROFILES["HRESCH"].deidentify


def test_c16_deidentification_of_people_keeps_identifier_system_not_value() -> None:
    keep_all = Profile(("X",), {}, None, deidentify=RESEARCH)
    related = {
        "resourceType": "RelatedPerson",
        "id": "rp1",
        "patient": {"reference": "Patient/p1", "display": "Leo Garcia"},
        "identifier": [{"system": "https://hospital.example.org/mrn", "value": "MRN-1"}],
        "name": [{"family": "Garcia"}],
        "telecom": [{"system": "phone", "value": "+1-555-0100"}],
        "photo": [{"contentType": "image/png", "data": "AAAA"}],
        "birthDate": "1985-07-02",
        "_birthDate": {
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime"}]
        },
        "address": [{"line": ["1 Main St"], "city": "Riverside", "state": "OR"}],
        "relationship": [{"coding": [{"code": "MTH"}]}],
    }
    out = keep_all.apply(related)
    assert out["identifier"] == [{"system": "https://hospital.example.org/mrn"}]
    assert out["patient"] == {"reference": "Patient/p1"}
    assert out["birthDate"] == "1985"
    assert out["address"] == [{"state": "OR"}]
    assert out["relationship"] == related["relationship"]
    for gone in ("name", "telecom", "photo", "_birthDate"):
        assert gone not in out


def test_c16_research_references_keep_only_type_and_id() -> None:
    obs = {
        **seed_resource("Observation"),
        "subject": {"reference": "Patient/pat-samuel-reed", "display": "Samuel Reed"},
        "encounter": {
            "reference": "Encounter/enc-1",
            "type": "Encounter",
            "identifier": {"system": "urn:visit", "value": "V-77"},
        },
        "derivedFrom": [{"display": "Dr Okafor's note"}, {"reference": "Observation/o2"}],
        "hasMember": [{"identifier": {"system": "urn:lab", "value": "L-1"}}],
    }
    out = minimise(obs, ["HRESCH"])
    assert out["subject"] == {"reference": "Patient/pat-samuel-reed"}
    assert out["encounter"] == {"reference": "Encounter/enc-1", "type": "Encounter"}
    assert out["derivedFrom"] == [{"reference": "Observation/o2"}]
    assert "hasMember" not in out  # no literal reference left
    assert "Samuel" not in orjson.dumps(out).decode()
    # Codings keep their system and code, not their display (C-28).
    assert out["code"] == {
        "coding": [{k: c[k] for k in ("system", "code")} for c in obs["code"]["coding"]]
    }


def test_c16_contained_people_are_deidentified_too() -> None:
    keep_all = Profile(("X",), {}, None, deidentify=RESEARCH)
    request = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Reed"}]}],
        "subject": {"reference": "#p"},
    }
    out = keep_all.apply(request)
    assert out["contained"] == [
        {"resourceType": "Patient", "id": "p", "meta": {"security": [REDACTED]}}
    ]
    assert redacted(out)


# --- C-28: research removes free text and identifiers everywhere ------------------------------

LOINC = "http://loinc.org"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
IDENTIFYING = ("Nina", "Keller", "MRN-100108", "555-0118", "Birch", "husband", "intake call")
PROXY = {"url": "urn:local:reported-by-proxy", "valueBoolean": True}
KEEP_ALL_RESEARCH = Profile(("X",), {}, None, deidentify=RESEARCH)
"""Research's keep rules on a profile that keeps every element (so nothing hides behind the
top-level keep-lists)."""


def _free_text_observation() -> dict[str, Any]:
    name = "Nina Keller"
    caller = {"url": "urn:local:caller", "valueString": f"{name} (husband)"}
    return {
        "resourceType": "Observation",
        "id": "o13",
        "meta": {
            "versionId": "3",
            "source": f"https://intake.example.org/{name}",
            "tag": [
                {"system": "urn:tags", "code": "intake", "display": f"intake call with {name}"}
            ],
        },
        "text": {"status": "generated", "div": f"<div>{name}</div>"},
        "identifier": [{"system": "urn:obs", "value": "MRN-100108-7"}],
        "status": "final",
        "category": [{"coding": [{"system": LOINC, "code": "x", "display": f"by {name}"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "93832-4", "display": "Sleep duration"}],
            "text": f"Sleep duration as told by {name}",
        },
        "subject": {"reference": "Patient/pat-nina-keller", "display": name},
        "effectiveDateTime": "2025-09-15T10:00:00Z",
        "valueString": f"{name}, MRN-100108, +1-555-0118, 3 Birch Lane",
        "note": [{"authorString": name, "text": f"{name}'s husband confirms"}],
        "extension": [caller],
        "component": [
            {
                "extension": [caller, {"url": DATA_ABSENT_REASON, "valueCode": "asked-declined"}],
                "code": {"coding": [{"system": LOINC, "code": "c1"}], "text": f"{name} says"},
                "valueQuantity": {"value": 6, "unit": "h", "code": "h"},
            }
        ],
        "referenceRange": [{"text": f"usual for {name}", "low": {"value": 7, "unit": "h"}}],
        "contained": [
            {
                "resourceType": "Condition",
                "id": "c",
                "subject": {"reference": "Patient/pat-nina-keller", "display": name},
                "code": {"coding": [{"system": LOINC, "code": "c"}], "text": "Birch Lane"},
                "note": [{"text": f"{name}"}],
            }
        ],
        "notAnElement": f"{name}",
    }


def _leaks(resource: dict[str, Any]) -> list[str]:
    text = orjson.dumps(resource).decode()
    return [identifying for identifying in IDENTIFYING if identifying in text]


def test_c28_research_removes_free_text_and_identifiers_everywhere() -> None:
    original = _free_text_observation()
    out = minimise(original, ["HRESCH"])
    assert _leaks(out) == []
    text = orjson.dumps({k: v for k, v in out.items() if k != "meta"}).decode()
    assert "display" not in text and '"text"' not in text and "valueString" not in text
    assert "tag" not in out["meta"] and "source" not in out["meta"]
    assert "identifier" not in out and "note" not in out and "notAnElement" not in out
    assert "contained" not in out and "extension" not in out  # not on Observation's keep-list
    assert redacted(out)
    assert original == _free_text_observation()  # the input is not changed
    everything = KEEP_ALL_RESEARCH.apply(original)
    assert _leaks(everything) == []
    assert everything["contained"][0]["code"] == {"coding": [{"system": LOINC, "code": "c"}]}
    assert redacted(everything["contained"][0])


def test_c28_research_keeps_coded_facts_dates_units_and_listed_extensions() -> None:
    out = minimise(_free_text_observation(), ["HRESCH"])
    assert out["code"] == {"coding": [{"system": LOINC, "code": "93832-4"}]}
    assert out["subject"] == {"reference": "Patient/pat-nina-keller"}
    assert out["effectiveDateTime"] == "2025-09-15T10:00:00Z"
    assert out["meta"]["versionId"] == "3"
    assert out["component"] == [
        {
            "extension": [{"url": DATA_ABSENT_REASON, "valueCode": "asked-declined"}],
            "code": {"coding": [{"system": LOINC, "code": "c1"}]},
            "valueQuantity": {"value": 6, "unit": "h", "code": "h"},
        }
    ]
    assert out["referenceRange"] == [{"low": {"value": 7, "unit": "h"}}]


def test_c28_a_modifier_extension_research_cannot_drop_withholds_the_resource() -> None:
    on_resource = _free_text_observation()
    on_resource["modifierExtension"] = [PROXY]
    on_component = _free_text_observation()
    on_component["component"][0]["modifierExtension"] = [PROXY]
    for observation in (on_resource, on_component):
        with pytest.raises(Unreleasable, match="modifierExtension"):
            minimise(observation, ["HRESCH"])
        with pytest.raises(Unreleasable):
            minimise(observation, ["TREAT", "HRESCH"])
        assert minimise(observation, ["TREAT"]) == observation  # others keep it, as before
    in_contained = _free_text_observation()
    in_contained["contained"][0]["modifierExtension"] = [PROXY]
    with pytest.raises(Unreleasable):
        KEEP_ALL_RESEARCH.apply(in_contained)
    assert "contained" not in minimise(in_contained, ["HRESCH"])  # dropped whole: no harm


def test_c28_non_deidentifying_profiles_keep_the_free_text_of_what_they_keep() -> None:
    out = minimise(_free_text_observation(), ["HOPERAT"])
    assert out["code"]["text"].startswith("Sleep duration as told by")
    assert out["valueString"].startswith("Nina Keller")


def test_c28_keep_rules_name_real_fhir_types_and_no_free_text_type() -> None:
    for purpose, profile in PROFILES.items():
        rules = profile.deidentify
        if rules is None:
            continue
        for datatype, elements in rules.datatypes.items():
            info = element_info(datatype)
            assert info.known, (purpose, datatype)
            assert elements <= set(info.types), (purpose, datatype, elements - set(info.types))
        assert not rules.primitives & {"string", "markdown", "xhtml", "base64Binary", "url"}
