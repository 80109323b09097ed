"""The FHIR R4 Patient compartment as data: who a resource belongs to, which types are public,
how a patient-context search is narrowed and which parameters are compartment parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fhir import compartment
from gateway.fhir.compartment import (
    PUBLIC_TYPES,
    UNATTRIBUTED,
    attributed,
    compartment_params,
    is_compartment_param,
    is_compartment_type,
    narrowing_param,
    patients_of,
    security_context,
)
from gateway.fhir.fhirdata import PATIENT_COMPARTMENT_PARAMS, RESOURCE_TYPES
from gateway.fhir.searchparams import ANY_TYPE, param_names, search_param

DATA_DIR = Path(__file__).resolve().parents[3] / "fixtures" / "data"
PATIENT_FILES = sorted(DATA_DIR.glob("1*-patient-*.json"))
COMPARTMENT_TYPES = sorted(t for t, params in PATIENT_COMPARTMENT_PARAMS.items() if params)


def _resources(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def _owner(path: Path) -> str:
    """The patient a ``1x-patient-*.json`` file is about: its one Patient resource."""
    (patient,) = [str(r["id"]) for r in _resources(path) if r["resourceType"] == "Patient"]
    return patient


FIXTURE_ROWS = [
    pytest.param(r, _owner(path), id=f"{r['resourceType']}/{r['id']}")
    for path in PATIENT_FILES
    for r in _resources(path)
]


def test_fixture_table_covers_every_patient() -> None:
    owners = {_owner(path) for path in PATIENT_FILES}
    assert owners == {
        "pat-amelia-rossi",
        "pat-daniel-novak",
        "pat-leo-garcia",
        "pat-maria-garcia",
        "pat-samuel-reed",
        "pat-chloe-bennett",
        "pat-arjun-mehta",
        "pat-nina-keller",
    }


@pytest.mark.parametrize(("resource", "owner"), FIXTURE_ROWS)
def test_s28_every_fixture_resource_belongs_to_its_patient(
    resource: dict[str, Any], owner: str
) -> None:
    assert patients_of(resource) == {owner}
    assert is_compartment_type(resource["resourceType"])


def test_p08_the_mothers_related_person_is_in_the_childs_compartment() -> None:
    child = DATA_DIR / "12-patient-leo-garcia.json"
    (related,) = [r for r in _resources(child) if r["resourceType"] == "RelatedPerson"]
    assert related["id"] == "relperson-maria-garcia"
    assert patients_of(related) == {"pat-leo-garcia"}
    # The mother's Patient links to her RelatedPerson, which is not a patient.
    mother = _resources(DATA_DIR / "13-patient-maria-garcia.json")[0]
    assert mother["link"] and patients_of(mother) == {"pat-maria-garcia"}


def test_s28_directory_fixtures_are_public_and_in_no_compartment() -> None:
    for resource in _resources(DATA_DIR / "00-organization-practitioners.json"):
        assert resource["resourceType"] in PUBLIC_TYPES
        assert patients_of(resource) == frozenset()


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Patient/p1", {"p1"}),
        ("Patient/p1/_history/2", {"p1"}),
        ("https://fhir.example.org/base/Patient/p1", {"p1"}),
        ("http://fhir.example.org/Patient/p1/_history/9", {"p1"}),
        ("Group/g1", set()),
        ("#p1", set()),  # contained: the caller looks inside
        ("urn:uuid:1f0c4b5e-2c9b-4a51-9f0e-6d7c4f0a9b1e", set()),
    ],
)
def test_s28_absolute_and_versioned_references_are_normalised(
    subject: str, expected: set[str]
) -> None:
    observation = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "p1"}],
        "subject": {"reference": subject},
    }
    assert patients_of(observation) == expected


def test_s28_every_compartment_parameter_counts() -> None:
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "Patient/p2"}, {"reference": "Practitioner/x"}],
    }
    assert patients_of(observation) == {"p1", "p2"}
    appointment = {
        "resourceType": "Appointment",
        "participant": [{"actor": {"reference": "Patient/p3"}}, {"actor": {"display": "Dr X"}}],
    }
    assert patients_of(appointment) == {"p3"}
    group = {"resourceType": "Group", "member": [{"entity": {"reference": "Patient/p4"}}]}
    assert patients_of(group) == {"p4"}


def test_s28_a_patient_is_in_its_own_and_its_linked_patients_compartments() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "link": [{"other": {"reference": "Patient/p0"}, "type": "replaces"}],
    }
    assert patients_of(patient) == {"p1", "p0"}  # FHIR R4: Patient.link is the compartment param


def test_s28_resources_without_a_patient_link_belong_to_nobody() -> None:
    assert patients_of({"resourceType": "Observation", "code": {"text": "x"}}) == frozenset()
    assert patients_of({"resourceType": "Organization", "id": "o1"}) == frozenset()
    assert patients_of({"id": "no-type"}) == {UNATTRIBUTED}


def test_c27_carriers_outside_the_compartment_are_attributed_or_unattributable() -> None:
    device = {"resourceType": "Device", "patient": {"reference": "Patient/p1"}}
    assert patients_of(device) == {"p1"}
    assert patients_of({"resourceType": "Device"}) == frozenset()
    assert not attributed({"resourceType": "Device"}, frozenset())  # nobody's: withheld
    linkage = {
        "resourceType": "Linkage",
        "item": [
            {"type": "source", "resource": {"reference": "Patient/p1"}},
            {"type": "alternate", "resource": {"reference": "Observation/o2"}},
        ],
    }
    assert patients_of(linkage) == {UNATTRIBUTED}  # an item that is no Patient: unknown
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}},
            {"resource": {"resourceType": "Organization", "id": "o"}},
        ],
    }
    assert patients_of(bundle) == {"p1"}
    bundle["entry"].append({"resource": {"resourceType": "Observation", "id": "nobody's"}})
    assert patients_of(bundle) == {UNATTRIBUTED}
    nested: dict[str, Any] = {"resourceType": "Bundle", "entry": []}
    for _ in range(5):
        nested = {"resourceType": "Bundle", "entry": [{"resource": nested}]}
    assert patients_of(nested) == {UNATTRIBUTED}
    assert attributed({"resourceType": "Practitioner"}, frozenset())
    assert not attributed({"resourceType": "Basic"}, frozenset())


def test_s28_c27_binary_follows_its_security_context() -> None:
    direct = {"resourceType": "Binary", "securityContext": {"reference": "Patient/p1"}}
    assert patients_of(direct) == {"p1"}
    via = {
        "resourceType": "Binary",
        "securityContext": {"reference": "https://x.example/fhir/DocumentReference/d1"},
    }
    assert patients_of(via) == {UNATTRIBUTED}  # until the caller has read its context
    assert security_context(via) == "DocumentReference/d1"
    document = {"resourceType": "DocumentReference", "subject": {"reference": "Patient/p2"}}
    assert patients_of(via, {"DocumentReference/d1": document}) == {"p2"}
    assert patients_of(via, {"DocumentReference/d1": None}) == {UNATTRIBUTED}
    assert security_context({"resourceType": "Binary"}) is None
    assert patients_of({"resourceType": "Binary", "contentType": "text/plain"}) == {UNATTRIBUTED}
    assert "Binary" not in PUBLIC_TYPES and not is_compartment_type("Binary")


def test_public_types_hold_no_patient_data() -> None:
    assert PUBLIC_TYPES <= RESOURCE_TYPES
    assert not PUBLIC_TYPES & set(COMPARTMENT_TYPES)
    for rtype in PUBLIC_TYPES:
        for name in param_names(rtype):
            param = search_param(rtype, name)
            # No reference of a public type names Patient; a few knowledge-artefact parameters
            # take canonical URLs of any type, which cannot be a Patient (not a canonical type).
            assert "Patient" not in param.targets, (rtype, name)
    for rtype in ("Device", "Person", "Subscription", "Bundle", "Slot", "Linkage"):
        assert rtype not in PUBLIC_TYPES


def test_compartment_params_come_from_the_compartment_definition() -> None:
    assert compartment_params("Observation") == ("subject", "performer")
    assert compartment_params("Patient") == ("link",)
    assert compartment_params("Organization") == ()
    assert compartment_params("NotAType") == ()
    assert is_compartment_type("Encounter") and not is_compartment_type("Practitioner")


@pytest.mark.parametrize("rtype", COMPARTMENT_TYPES)
def test_s28_every_compartment_parameter_is_a_patient_reference(rtype: str) -> None:
    for name in compartment_params(rtype):
        param = search_param(rtype, name)
        assert param.type == "reference" and param.can_target("Patient"), (rtype, name)


@pytest.mark.parametrize("rtype", COMPARTMENT_TYPES)
def test_s28_narrowing_param_exists_targets_patient_and_stays_in_the_compartment(
    rtype: str,
) -> None:
    name = narrowing_param(rtype)
    assert name is not None
    if rtype == "Patient":
        assert name == "_id"
        return
    param = search_param(rtype, name)
    assert param.type == "reference" and not param.partial
    assert "Patient" in param.targets or ANY_TYPE in param.targets
    # Safe: it looks only where the compartment parameters look.
    within = {
        p.steps for other in compartment_params(rtype) for p in search_param(rtype, other).paths
    }
    assert {p.steps for p in param.paths} <= within


@pytest.mark.parametrize(
    ("rtype", "expected"),
    [
        ("Observation", "patient"),
        ("Encounter", "patient"),
        ("Appointment", "patient"),
        ("AdverseEvent", "subject"),
        ("Group", "member"),
        ("Schedule", "actor"),
        ("Patient", "_id"),
        ("Practitioner", None),
        ("Binary", None),
        ("NotAType", None),
    ],
)
def test_s28_narrowing_param_prefers_patient_then_subject(rtype: str, expected: str | None) -> None:
    assert narrowing_param(rtype) == expected


@pytest.mark.parametrize(
    ("rtype", "name", "expected"),
    [
        ("Observation", "subject", True),
        ("Observation", "SUBJECT", True),
        ("Observation", "Subject:patient", True),
        ("Observation", "subject:Patient", True),
        ("Observation", "subject:Patient.name", True),
        ("Observation", "subject.name", True),
        ("Observation", "performer:missing", True),
        ("AllergyIntolerance", "patient:missing", True),
        ("AllergyIntolerance", "PATIENT", True),
        ("Patient", "link:Patient", True),
        ("Coverage", "policy-holder.name", True),
        ("Observation", "patient", False),  # not listed in the CompartmentDefinition
        ("Observation", "code", False),
        ("Observation", "subjects", False),
        ("Patient", "_id", False),
        ("Organization", "subject", False),
    ],
)
def test_s26_compartment_params_are_recognised_in_any_form(
    rtype: str, name: str, expected: bool
) -> None:
    assert is_compartment_param(rtype, name) is expected


_PIECES = [
    b'"Patient/p1"',
    b'"Patient\\/p1"',
    b'"Patient/p2"',
    b'"Patient/p1x"',
    b'"Patient/p1/_history/2"',
    b"Patient/p1",
    b'Patient/"',
    b'"Patient?identifier=x"',
    b'"\\u0050atient/p3"',
    b'"Patient/' + b"a" * 70 + b'"',
    b'"Patient/' + b"a" * 64 + b'"',
    b'"RelatedPatient/p1"',
    b'"Patient"',
    b'"\\/"',
    b'"Patient/p\\"1"',
    b'{"reference":',
    b"}",
    b" ",
]
_OWN = [
    frozenset({"p1"}),
    frozenset({"p1", "p2"}),
    frozenset({"a" * 64}),
    frozenset({"a" * 70}),
    frozenset({"p/1"}),
    frozenset(),
]


@settings(max_examples=400, derandomize=True, database=None)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=12),
    patients=st.sampled_from(_OWN),
)
def test_s26_property_counting_mentions_agrees_with_reading_them(
    pieces: list[bytes], patients: frozenset[str]
) -> None:
    """The quick answer to "does this text name only these patients" is the one
    ``mentioned_patients`` gives, whatever the text holds."""
    raw = b"".join(pieces)
    mentioned = compartment.mentioned_patients(raw)
    assert compartment.mentions_only(raw, patients) == (
        mentioned is not None and mentioned <= patients
    )
