"""Checks on the synthetic FHIR data in ``fixtures/data``.

Every file is a FHIR R4 ``transaction`` Bundle of ``PUT Type/id`` entries, loaded in name order by
the local upstream server and loadable unchanged into HAPI FHIR. These tests validate each resource
against the ``fhir.resources`` models, check that ids are unique and every reference resolves, and
check the properties the gateway's tests rely on (sensitive labels, the parent/child pair, paging).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

DATA_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "data"
FILES = sorted(DATA_DIR.glob("*.json"))

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
LOINC = "http://loinc.org"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
MRN_SYSTEM = "https://hospital.example.org/mrn"

SENSITIVE = "pat-samuel-reed"
HIDDEN_SENSITIVE = "pat-nina-keller"
"""Sensitive data found only by where it sits (CONSENT.md C-26): a contained Condition, a value,
an ICD-10 code, a lowercase label, a reference's display."""
CHILD = "pat-leo-garcia"
PARENT = "pat-maria-garcia"
PARENT_RELATED_PERSON = "relperson-maria-garcia"

# FHIR id syntax; HAPI also refuses purely numeric client-assigned ids.
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
REFERENCE_PATTERN = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")
# Medplum's router refuses transactions with more than 50 updates.
MAX_ENTRIES_PER_BUNDLE = 50

Resource = dict[str, Any]


def load(path: Path) -> Resource:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


BUNDLES = {path.name: load(path) for path in FILES}
RESOURCES: list[Resource] = [
    entry["resource"] for bundle in BUNDLES.values() for entry in bundle.get("entry", [])
]
BY_REF = {f"{r['resourceType']}/{r['id']}": r for r in RESOURCES}


def key(resource: Resource) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def references(value: Any) -> Iterator[str]:
    """Every ``reference`` string anywhere inside a resource."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from references(v)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def patient_of(resource: Resource) -> str | None:
    if resource["resourceType"] == "Patient":
        return key(resource)
    for field in ("subject", "patient"):
        ref = resource.get(field, {}).get("reference")
        if ref and ref.startswith("Patient/"):
            return str(ref)
    return None


def labels(resource: Resource) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in resource.get("meta", {}).get("security", [])}


def codes(concept: dict[str, Any] | None) -> set[tuple[str, str]]:
    return {(c.get("system", ""), c.get("code", "")) for c in (concept or {}).get("coding", [])}


def of_patient(patient_id: str, resource_type: str | None = None) -> list[Resource]:
    return [
        r
        for r in RESOURCES
        if patient_of(r) == f"Patient/{patient_id}"
        and (resource_type is None or r["resourceType"] == resource_type)
    ]


def test_there_is_data() -> None:
    assert FILES, f"no fixture bundles in {DATA_DIR}"
    assert 150 <= len(RESOURCES) <= 300


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_file_is_a_transaction_of_puts(name: str) -> None:
    bundle = BUNDLES[name]
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    assert 0 < len(bundle["entry"]) <= MAX_ENTRIES_PER_BUNDLE
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": key(resource)}
        assert "meta" not in resource or set(resource["meta"]) <= {"security", "tag", "profile"}


@pytest.mark.parametrize("resource", RESOURCES, ids=key)
def test_resource_validates(resource: Resource) -> None:
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)


def test_ids_are_unique_and_not_numeric() -> None:
    counts = Counter(key(r) for r in RESOURCES)
    assert [k for k, n in counts.items() if n > 1] == []
    for resource in RESOURCES:
        assert ID_PATTERN.match(resource["id"]), resource["id"]
        assert not resource["id"].isdigit()


def test_references_resolve_to_this_or_an_earlier_file() -> None:
    # HAPI checks referential integrity per transaction, so a file may only point at resources in
    # itself or in files loaded before it (in name order).
    known: set[str] = set()
    for name, bundle in BUNDLES.items():
        known |= {key(entry["resource"]) for entry in bundle["entry"]}
        for entry in bundle["entry"]:
            contained = {f"#{r['id']}" for r in entry["resource"].get("contained", [])}
            for ref in references(entry["resource"]):
                if ref.startswith("#"):
                    assert ref in contained, f"{name}: {key(entry['resource'])} points at {ref}"
                    continue
                match = REFERENCE_PATTERN.match(ref)
                assert match, f"{name}: {key(entry['resource'])} has a non-relative reference {ref}"
                assert ref in known, f"{name}: {key(entry['resource'])} points at missing {ref}"


def test_patients() -> None:
    patients = [r for r in RESOURCES if r["resourceType"] == "Patient"]
    assert len(patients) >= 6  # so that Patient?_count=2 takes at least three pages
    assert len({p["gender"] for p in patients}) >= 2
    assert len({p["birthDate"][:4] for p in patients}) == len(patients)
    for patient in patients:
        assert patient["id"].startswith("pat-")
        mrns = [i for i in patient["identifier"] if i["system"] == MRN_SYSTEM]
        assert len(mrns) == 1
        assert patient["address"] and patient["telecom"]
        assert patient["generalPractitioner"][0]["reference"].startswith("Practitioner/")
        assert patient["managingOrganization"]["reference"].startswith("Organization/")


def test_a_gp_and_a_psychiatrist() -> None:
    roles = {
        code
        for r in RESOURCES
        if r["resourceType"] == "PractitionerRole"
        for concept in r["code"]
        for _, code in codes(concept)
    }
    assert {"62247001", "80584001"} <= roles  # general practitioner, psychiatrist (SNOMED CT)
    assert sum(r["resourceType"] == "Organization" for r in RESOURCES) >= 1


@pytest.mark.parametrize(
    "patient_id", sorted(r["id"] for r in RESOURCES if r["resourceType"] == "Patient")
)
def test_each_patient_has_a_full_record(patient_id: str) -> None:
    types = Counter(r["resourceType"] for r in of_patient(patient_id))
    assert types["Encounter"] >= 2
    for resource_type in (
        "Condition",
        "MedicationRequest",
        "AllergyIntolerance",
        "Immunization",
        "DocumentReference",
    ):
        assert types[resource_type] >= 1, resource_type

    observations = of_patient(patient_id, "Observation")
    vital_codes = {
        code
        for o in observations
        if ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")
        in codes(o["category"][0])
        for system, code in codes(o["code"])
        if system == LOINC
    }
    assert {"8867-4", "85354-9", "29463-7", "8302-2"} <= vital_codes
    years = {o["effectiveDateTime"][:4] for o in observations}
    assert len(years) >= 2
    assert all("2020" <= year <= "2026" for year in years)
    for o in observations:
        assert o["encounter"]["reference"].startswith("Encounter/")
        assert o["performer"][0]["reference"].startswith("Practitioner/")
    assert any(o["category"][0]["coding"][0]["code"] == "laboratory" for o in observations)


def test_blood_pressure_has_components() -> None:
    for r in RESOURCES:
        if r["resourceType"] == "Observation" and (LOINC, "85354-9") in codes(r["code"]):
            component_codes = {code for c in r["component"] for _, code in codes(c["code"])}
            assert component_codes == {"8480-6", "8462-4"}
            assert "valueQuantity" not in r


def test_document_attachments_are_inline_text() -> None:
    for r in RESOURCES:
        if r["resourceType"] == "DocumentReference":
            attachment = r["content"][0]["attachment"]
            assert attachment["contentType"].startswith("text/plain")
            assert base64.b64decode(attachment["data"]).decode("utf-8").strip()


def test_sensitive_patient_is_labelled() -> None:
    resources = of_patient(SENSITIVE)
    all_labels = set().union(*(labels(r) for r in resources))
    for code in ("SUD", "PSY", "HIV"):
        assert (ACT_CODE, code) in all_labels
    assert (CONFIDENTIALITY, "R") in all_labels
    assert (CONFIDENTIALITY, "V") in all_labels

    def labelled(resource_type: str, text: str) -> set[tuple[str, str]]:
        [match] = [
            r
            for r in resources
            if r["resourceType"] == resource_type and text in json.dumps(r).lower()
        ]
        return labels(match)

    assert {(ACT_CODE, "SUD"), (CONFIDENTIALITY, "R")} <= labelled("Condition", "opioid")
    assert {(ACT_CODE, "PSY"), (CONFIDENTIALITY, "R")} <= labelled("Condition", "depressive")
    assert {(ACT_CODE, "HIV"), (CONFIDENTIALITY, "R")} <= labelled("Condition", "immunodeficiency")
    assert (ACT_CODE, "SUD") in labelled("MedicationRequest", "buprenorphine")
    assert {(ACT_CODE, "PSY"), (CONFIDENTIALITY, "R")} <= labelled(
        "DocumentReference", "psychiatric"
    )
    # ... and not everything about him is sensitive
    assert any(not labels(r) for r in resources if r["resourceType"] == "Observation")


def test_only_the_sensitive_patients_have_labels() -> None:
    for r in RESOURCES:
        if labels(r):
            assert patient_of(r) in (f"Patient/{SENSITIVE}", f"Patient/{HIDDEN_SENSITIVE}"), key(r)


def test_hidden_sensitive_data_sits_where_only_a_full_reading_finds_it() -> None:
    resources = {r["id"]: r for r in of_patient(HIDDEN_SENSITIVE)}
    contained = resources["obs-nina-keller-11"]["contained"][0]
    assert contained["code"]["coding"][0]["code"] == "370143000"  # depression, in a container
    assert "meta" not in resources["obs-nina-keller-11"]
    value = resources["obs-nina-keller-12"]["valueCodeableConcept"]
    assert value["coding"][0]["code"] == "165816005"  # HIV, in the value
    icd = resources["cond-nina-keller-2"]["code"]["coding"][0]
    assert (icd["system"], icd["code"]) == ("http://hl7.org/fhir/sid/icd-10-cm", "F32.9")
    assert labels(resources["cond-nina-keller-3"]) == {(ACT_CODE, "psy")}
    reason = resources["enc-nina-keller-2"]["reasonReference"][0]
    assert reason == {"reference": "Condition/cond-nina-keller-2", "display": reason["display"]}
    assert "modifierExtension" in resources["obs-nina-keller-14"]
    assert "valueString" in resources["obs-nina-keller-13"]


def test_parent_can_act_for_child() -> None:
    child = BY_REF[f"Patient/{CHILD}"]
    parent = BY_REF[f"Patient/{PARENT}"]
    related = BY_REF[f"RelatedPerson/{PARENT_RELATED_PERSON}"]
    assert child["birthDate"] >= "2014"
    assert related["patient"] == {"reference": f"Patient/{CHILD}"}
    role_codes = {
        code for c in related["relationship"] for system, code in codes(c) if system == ROLE_CODE
    }
    assert {"PRN", "MTH"} <= role_codes
    assert {
        "other": {"reference": f"RelatedPerson/{PARENT_RELATED_PERSON}"},
        "type": "seealso",
    } in (parent["link"])
    assert related["name"][0]["family"] == parent["name"][0]["family"]
    assert related["name"][0]["given"] == parent["name"][0]["given"]
    same_identifier = {(i["system"], i["value"]) for i in related["identifier"]} & {
        (i["system"], i["value"]) for i in parent["identifier"]
    }
    same_telecom = {t["value"] for t in related["telecom"]} & {
        t["value"] for t in parent["telecom"]
    }
    assert same_identifier or same_telecom
