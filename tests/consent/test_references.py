"""The one reference parser (FHIR R4 2.3.0 "Resource References"): which resource, and which
patient, a reference names, whatever its form."""

from __future__ import annotations

import pytest

from consent.references import is_id, literal, patient_id

B = "pat-daniel-novak"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"Patient/{B}", B),
        (f"https://x.example/fhir/Patient/{B}", B),
        (f"https://x.example/fhir/Patient/{B}/", B),
        (f"http://x.example/Patient/{B}/_history/2", B),
        (f"  Patient/{B} ", B),
        (f"Patient/{B}/_history/2", B),  # a version of the same patient
        (f"Patient/{B}|4.0.1", B),
        ("Patient/not valid", "not valid"),  # some patient, never equal to a real id
        ("Practitioner/prac-1", None),
        ("https://x.example/fhir/Practitioner/prac-1", None),
        ("#contained-patient", None),
        ("urn:uuid:1234", None),
        ("Patient?identifier=x", None),
        (B, None),  # a bare id names a patient only where the caller says so
        ("", None),
    ],
)
def test_s26_patient_id_reads_every_form_of_a_reference(value: str, expected: str | None) -> None:
    assert patient_id(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (B, B),
        (f"Patient/{B}", B),
        ("Practitioner/prac-1", None),
        ("x|y", None),
        ("https://x.example/other", None),
        ("", None),
    ],
)
def test_s26_a_bare_id_is_a_patient_in_search_values_and_claims(
    value: str, expected: str | None
) -> None:
    assert patient_id(value, bare=True) == expected


def test_literal_and_id() -> None:
    assert literal("https://h/fhir/Observation/o-1/_history/3") == ("Observation", "o-1")
    assert literal("observation/o-1") is None  # types start with a capital
    assert literal("Observation") is None
    assert is_id("a-1.b") and not is_id("a b") and not is_id("...") and not is_id("x" * 65)
    assert not is_id(None) and not is_id({"$gt": ""})
