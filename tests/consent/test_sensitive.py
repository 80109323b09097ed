"""Which labels and codes make a resource sensitive (CONSENT.md C-09, C-26): the code lists and
ICD-10 ranges of ``consent/data/sensitive-codes``, system names, case and dots."""

from __future__ import annotations

from importlib import resources

import orjson
import pytest

from consent.sensitive import (
    SENSITIVITY_CODES,
    CodeIndex,
    code_labels,
    confidentiality_rank,
    label,
)

ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.mark.parametrize(
    ("code", "labels"),
    [
        ("F32.9", {"PSY"}),  # major depressive disorder, single episode, unspecified
        ("F329", {"PSY"}),
        ("f32.9", {"PSY"}),
        (" F32.9 ", {"PSY"}),
        ("F01.50", {"PSY"}),
        ("F20", {"PSY"}),
        ("F99", {"PSY"}),
        ("F10.20", {"SUD"}),  # alcohol dependence: substance use, not PSY
        ("F11.20", {"SUD"}),
        ("F19.99", {"SUD"}),
        ("R45.851", {"PSY"}),
        ("T14.91XA", {"PSY"}),
        ("B20", {"HIV"}),
        ("Z21", {"HIV"}),
        ("R75", {"HIV"}),
        ("O98.711", {"HIV"}),
        ("Z20.6", {"HIV"}),
        ("A54.9", {"STD"}),
        ("A50.01", {"STD"}),
        ("A64", {"STD"}),
        ("T74.11XA", {"SDV"}),
        ("T76.21XA", {"SDV"}),
        ("Y07.01", {"SDV"}),
        ("Z30.09", {"SEX"}),
        ("Z3A.20", {"SEX"}),
        ("O04.5", {"SEX"}),
        ("Z71.41", {"SUD"}),
    ],
)
def test_c26_icd10_codes_and_ranges_imply_their_labels(code: str, labels: set[str]) -> None:
    assert code_labels(ICD10_CM, code) == labels
    assert code_labels(ICD10, code) == labels


@pytest.mark.parametrize(
    "code",
    ["F00", "E11.9", "I10", "A49.9", "A65", "O98.5", "O09.90", "Z40", "R45.85", "T75", "G", ""],
)
def test_c26_codes_outside_the_ranges_are_not_sensitive(code: str) -> None:
    assert code_labels(ICD10_CM, code) == frozenset()


@pytest.mark.parametrize(
    "system",
    [
        ICD10_CM,
        "http://hl7.org/fhir/sid/icd-10-cm/",
        "HTTP://HL7.ORG/FHIR/SID/ICD-10-CM",
        "urn:oid:2.16.840.1.113883.6.90",
        ICD10,
        "urn:oid:2.16.840.1.113883.6.3",
    ],
)
def test_c26_a_code_system_is_known_by_each_of_its_names(system: str) -> None:
    assert code_labels(system, "F32.9") == {"PSY"}


def test_c26_codes_match_on_system_and_code() -> None:
    assert code_labels(SNOMED, "86406008") == {"HIV"}
    assert code_labels("urn:oid:2.16.840.1.113883.6.96", "86406008") == {"HIV"}
    assert code_labels(LOINC, "86406008") == frozenset()
    assert code_labels("http://example.org/local", "86406008") == frozenset()
    assert code_labels(ICD10_CM, "86406008") == frozenset()
    assert code_labels(SNOMED, "F32.9") == frozenset()  # an ICD code in the wrong system
    assert code_labels(RXNORM, "36437") == {"PSY"}
    assert code_labels(LOINC, "56888-1") == {"HIV"}


def test_c26_only_icd10_codes_compare_without_regard_to_case_and_dots() -> None:
    index = CodeIndex(
        [
            {"label": "PSY", "codes": [{"system": LOINC, "code": "LA12-3"}]},
            {"label": "HIV", "codes": [{"system": ICD10_CM, "code": "Z21"}]},
        ],
        {LOINC: {}, ICD10_CM: {"icd10": True}},
    )
    assert index.labels(LOINC, "LA12-3") == {"PSY"}
    assert index.labels(LOINC, "la12-3") == frozenset()  # LOINC answer codes are case-sensitive
    assert index.labels(ICD10_CM, "z21") == {"HIV"}
    assert index.labels(ICD10_CM, "Z2.1") == {"HIV"}


def test_c26_labels_and_confidentiality_compare_without_regard_to_case() -> None:
    assert label("psy") == label(" PSY") == "PSY"
    v3 = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    for system in (None, v3, v3.upper(), "http://hl7.org/fhir/v3/Confidentiality"):
        assert confidentiality_rank(label("r"), system) == confidentiality_rank("R", None)
    assert confidentiality_rank("R", "http://example.org/other") is None
    assert confidentiality_rank("PSY", None) is None


def test_c26_every_code_list_names_its_sources_and_a_sensitivity_code() -> None:
    folder = resources.files("consent").joinpath("data", "sensitive-codes")
    files = [entry for entry in folder.iterdir() if entry.name.endswith(".json")]
    assert {orjson.loads(f.read_bytes())["label"] for f in files} >= {
        "PSY",
        "SUD",
        "HIV",
        "STD",
        "SEX",
        "SDV",
    }
    for entry in files:
        data = orjson.loads(entry.read_bytes())
        assert data["_comment"], entry.name
        assert data["label"] in SENSITIVITY_CODES
        for span in data.get("icd10_ranges", ()):
            assert span["from"].replace(".", "") <= span["to"].replace(".", ""), span
