"""The kick-off's checks, unit by unit (:mod:`gateway.fhir.bulk.params`; FHIR Bulk Data Access IG
v2.0 "Bulk Data Kick-off Request")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.fhir.bulk.params import (
    ExportRequest,
    Level,
    check_headers,
    exportable_types,
    parse_kickoff,
)
from gateway.fhir.context import AccessContext
from gateway.web.errors import BadRequest, Forbidden
from smart_auth.scopes import ScopeSet


def _token(scope: str, patient: str | None = None) -> AccessContext:
    return AccessContext(
        issuer="https://gw.example.org",
        subject="backend",
        client_id="backend",
        scopes=ScopeSet.parse(scope),
        jti="j",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        patient=patient,
    )


SYSTEM = _token("system/Patient.rs system/Observation.rs system/Practitioner.rs")


def test_without_type_every_type_the_scopes_allow_that_the_level_exports() -> None:
    assert parse_kickoff(SYSTEM, Level.SYSTEM, []) == ExportRequest(
        Level.SYSTEM, ("Observation", "Patient", "Practitioner")
    )
    # Patient and Group level: the compartment's types only (no directory types)
    assert parse_kickoff(SYSTEM, Level.PATIENT, []).types == ("Observation", "Patient")


def test_wildcard_scopes_never_export_what_the_gateway_serves_itself() -> None:
    types = exportable_types(_token("system/*.rs"), Level.SYSTEM)
    assert "Observation" in types and "Organization" in types
    assert "AuditEvent" not in types and "Consent" not in types


def test_the_parameters_are_checked() -> None:
    request = parse_kickoff(
        SYSTEM,
        Level.SYSTEM,
        [
            ("_type", "Observation,Patient"),
            ("_since", "2026-01-01T00:00:00+01:00"),
            ("_outputFormat", "application/ndjson"),
            ("_typeFilter", "Observation?category=laboratory&status=final"),
            ("_typeFilter", "Observation?code=http://loinc.org|1234-5"),
        ],
    )
    assert request.types == ("Observation", "Patient")
    assert request.since == "2026-01-01T00:00:00+01:00"
    assert request.type_filters == (
        ("Observation", (("category", "laboratory"), ("status", "final"))),
        ("Observation", (("code", "http://loinc.org|1234-5"),)),
    )


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ([("_outputFormat", "application/fhir+json")], BadRequest),
        ([("_since", "2026-01-01")], BadRequest),
        ([("_since", "2026-01-01T00:00:00")], BadRequest),  # no time zone
        ([("_type", "Observation"), ("_type", "Patient")], BadRequest),
        ([("_type", "Nope")], BadRequest),
        ([("_type", "Condition")], Forbidden),
        ([("_type", "Consent")], Forbidden),
        ([("_typeFilter", "Condition?code=x")], BadRequest),  # not exported
        ([("_typeFilter", "Observation")], BadRequest),
        ([("_typeFilter", "Observation?subject.name=x")], BadRequest),  # chained
        ([("_typeFilter", "Observation?_has:Foo:bar:baz=x")], BadRequest),
        ([("_typeFilter", "Observation?_revinclude=Provenance:target")], BadRequest),
        ([("_typeFilter", "Observation?_count=1000")], BadRequest),
        ([("_typeFilter", "Observation?nonsense=1")], BadRequest),
        ([("includeAssociatedData", "LatestProvenanceResources")], BadRequest),
        ([("patient", "Patient/x")], BadRequest),
    ],
)
def test_what_is_refused(params: list[tuple[str, str]], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_kickoff(SYSTEM, Level.SYSTEM, params)


def test_a_patient_or_user_token_is_refused() -> None:
    for token in (_token("patient/*.rs", patient="p1"), _token("user/*.rs")):
        with pytest.raises(Forbidden):
            parse_kickoff(token, Level.SYSTEM, [])
    with pytest.raises(Forbidden):  # a read-only system scope cannot search
        parse_kickoff(_token("system/Observation.r"), Level.SYSTEM, [])


@pytest.mark.parametrize(
    "value", ["application/fhir+ndjson", "application/fhir ndjson", "application/ndjson", "ndjson"]
)
def test_ndjson_and_its_aliases(value: str) -> None:
    assert parse_kickoff(SYSTEM, Level.SYSTEM, [("_outputFormat", value)]).types


def test_respond_async_is_required() -> None:
    check_headers({"Prefer": "respond-async"})
    check_headers({"Prefer": "handling=lenient, respond-async", "Accept": "application/fhir+json"})
    with pytest.raises(BadRequest):
        check_headers({})
    with pytest.raises(BadRequest):
        check_headers({"Prefer": "respond-async", "Accept": "text/html"})
