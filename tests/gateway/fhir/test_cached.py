"""The caching fetcher's rules, without a server (SECURITY.md P-15; CONSENT.md C-22): which reads
are cached, whose key an answer is cached under (one patient, or data of no patient; anything
else is never cached), and which resources a write invalidates."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from gateway.cache.datakeys import SYSTEM
from gateway.fhir.cached import answered, cacheable, owner_of, written
from gateway.fhir.fetch import Call
from gateway.fhir.interaction import FhirInteraction, Kind, parse
from gateway.proxy.answer import Answer
from tests.support.fixture_data import RESOURCES, owner


def _call(method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Call:
    path, _, query = path.partition("?")
    params = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    interaction = parse(method, path, params)  # type: ignore[arg-type]
    return Call(interaction=interaction, headers=CIMultiDict(headers or {}), **kw)


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("GET", "Observation/obs-1", {}, True),
        ("GET", "Observation/obs-1/_history/2", {}, True),
        ("GET", "Observation/obs-1", {"Accept-Language": "de"}, True),
        ("GET", "Observation/obs-1?_lastUpdated=gt2020", {}, False),
        ("GET", "Observation/obs-1", {"Prefer": "handling=strict"}, False),
        ("GET", "Observation?patient=Patient/x", {}, False),
        ("GET", "Observation/obs-1/_history", {}, False),
        ("PUT", "Observation/obs-1", {}, False),
    ],
)
def test_only_plain_reads_and_vreads_are_cached(
    method: str, path: str, headers: dict[str, str], expected: bool
) -> None:
    assert cacheable(_call(method, path, headers)) is expected


def _owner_of(resource: dict[str, Any]) -> str | None:
    return owner_of(resource, orjson.dumps(resource))


def test_p15_c22_each_fixture_resource_is_cached_under_its_patients_key_or_the_system_key() -> None:
    for resource in RESOURCES:
        patient = owner(resource)
        found = _owner_of(resource)
        if patient is not None:
            assert found == f"Patient/{patient}", resource["id"]
        else:
            assert found == SYSTEM, resource["id"]


def test_c22_a_resource_that_names_another_patient_anywhere_is_not_cached() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o",
        "subject": {"reference": "Patient/a"},
        "performer": [{"reference": "Patient/b"}],
    }
    assert _owner_of(observation) is None  # in two compartments
    observation["performer"] = []
    observation["note"] = [{"text": "see also Patient/b"}]
    assert _owner_of(observation) is None  # b is named: shredding b must leave no copy
    observation["contained"] = [{"resourceType": "Observation", "subject": {"reference": "#x"}}]
    del observation["note"]
    assert _owner_of(observation) == "Patient/a"


def test_unattributable_resources_are_not_cached() -> None:
    assert _owner_of({"resourceType": "Binary", "id": "b", "data": "eA=="}) is None
    assert _owner_of({"resourceType": "Observation", "id": "o", "status": "final"}) is None
    assert _owner_of({"resourceType": "Basic", "id": "b"}) is None


def test_a_write_invalidates_what_it_names_and_what_its_answer_names() -> None:
    assert written(_call("PUT", "Observation/obs-1")) == {"Observation/obs-1"}
    assert written(_call("DELETE", "Patient/p")) == {"Patient/p"}
    assert written(_call("POST", "Observation")) == set()
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "PUT", "url": "Observation/o1"}},
            {"request": {"method": "PATCH", "url": "http://gw.example/fhir/Condition/c1"}},
            {"request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "DELETE", "url": "Observation?code=x"}},
            {"request": "nonsense"},
        ],
    }
    call = Call(interaction=FhirInteraction(Kind.TRANSACTION, "POST"), body=transaction)
    assert written(call) == {"Observation/o1", "Condition/c1"}
    answer = Answer(
        200,
        {"Location": "http://gw.example/fhir/Observation/new/_history/1"},
        {"entry": [{"response": {"location": "Observation/o9/_history/2"}}, {"response": {}}]},
    )
    assert answered(answer) == {"Observation/new", "Observation/o9"}
