"""What the engine reads from a resource: dates, codes, labels (CONSENT.md C-09)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consent import fhirtime
from consent.facts import CLINICAL_DATE_PATHS, facts
from consent.subsetting import element_info
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


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:30:00-05:00"])
def test_p22_dates_whose_utc_instant_leaves_the_calendar_are_no_date(value: str) -> None:
    assert fhirtime.interval(value) is None
    observation = {"resourceType": "Observation", "effectiveDateTime": value}
    assert facts(observation).date is None
