"""The CapabilityStatement's bulk export section (:func:`gateway.fhir.metadata.add_bulk_export`;
FHIR Bulk Data Access IG v2.0): the gateway's operations advertised, the upstream's own
``$export`` replaced, everything else kept."""

from __future__ import annotations

from typing import Any

from gateway.fhir.metadata import BULK_CAPABILITY, add_bulk_export

EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"


def _exports(operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in operations if o["name"] == "export"]


def test_the_upstreams_export_is_replaced_and_the_rest_kept() -> None:
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "instantiates": ["http://example.org/cs"],
        "rest": [
            {
                "mode": "server",
                "operation": [
                    {"name": "export", "definition": "http://upstream.example/export"},
                    {"name": "reindex", "definition": "http://upstream.example/reindex"},
                ],
                "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}],
            }
        ],
    }
    add_bulk_export(statement)
    add_bulk_export(statement)  # idempotent
    assert statement["instantiates"] == ["http://example.org/cs", BULK_CAPABILITY]
    rest = statement["rest"][0]
    assert _exports(rest["operation"]) == [{"name": "export", "definition": EXPORT}]
    assert {"name": "reindex", "definition": "http://upstream.example/reindex"} in rest["operation"]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["interaction"] == [{"code": "read"}]
    assert [o["definition"] for o in _exports(patient["operation"])] == [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    ]
    group = next(r for r in rest["resource"] if r["type"] == "Group")
    assert [o["definition"] for o in _exports(group["operation"])] == [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
    ]


def test_a_statement_without_rest_gets_one() -> None:
    statement: dict[str, Any] = {"resourceType": "CapabilityStatement"}
    add_bulk_export(statement)
    assert _exports(statement["rest"][0]["operation"]) == [{"name": "export", "definition": EXPORT}]
