"""``GET /fhir/metadata``: the CapabilityStatement (FHIR R4 3.1.0.12 "capabilities"; SMART.md S-07,
S-08). The upstream's, with its URLs on the gateway's base (``gateway.proxy.rewrite``) and every
``rest.security`` replaced by the gateway's SMART section (``smart_auth.discovery``), and the
types the gateway serves itself (``AuditEvent``, ``Consent``: never the upstream's) described as
the gateway serves them; it needs no token and is readable from any origin.

With bulk export on (``export_enabled``), the gateway's own ``$export`` operations are advertised
as the Bulk Data Access IG v2.0 asks (``instantiates`` its CapabilityStatement; the system,
Patient and Group operations), and any ``$export`` the upstream advertises is replaced by them:
the gateway answers ``$export`` itself (``gateway.fhir.bulk``)."""

from __future__ import annotations

from typing import Any

from gateway.fhir.audit_api import SEARCH_PARAMETERS as AUDIT_SEARCH
from gateway.fhir.consent_api import SEARCH_PARAMETERS as CONSENT_SEARCH
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.interaction import parse
from gateway.proxy.answer import Answer
from smart_auth.discovery import Endpoints, add_security

ANY_ORIGIN = {"Access-Control-Allow-Origin": "*"}
"""What the public documents (metadata, discovery, the JWKS) answer any origin."""

_PARAMETER_TYPES = {
    "patient": "reference",
    "agent": "reference",
    "date": "date",
    "subtype": "token",
    "outcome": "token",
    "action": "token",
    "status": "token",
    "_id": "token",
}


def _search_params(names: tuple[str, ...] | frozenset[str]) -> list[dict[str, str]]:
    return [
        {"name": name, "type": _PARAMETER_TYPES[name]}
        for name in sorted(names)
        if name in _PARAMETER_TYPES
    ]


OWN_RESOURCES: dict[str, dict[str, Any]] = {
    "AuditEvent": {
        "type": "AuditEvent",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": _search_params(AUDIT_SEARCH),
    },
    "Consent": {
        "type": "Consent",
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": False,
        "interaction": [
            {"code": code}
            for code in (
                "read",
                "vread",
                "history-instance",
                "search-type",
                "create",
                "update",
                "delete",
            )
        ],
        "searchParam": _search_params(CONSENT_SEARCH),
    },
}
"""The types the gateway answers from its own store, as it answers them: whatever the upstream
says of its own AuditEvents and Consents does not hold behind the gateway."""


def describe_own(statement: dict[str, Any]) -> dict[str, Any]:
    """``statement`` with every server ``rest`` entry listing the gateway's own types as
    :data:`OWN_RESOURCES` and the upstream's entries for them dropped."""
    if statement.get("resourceType") != "CapabilityStatement":
        return statement
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        theirs = [
            entry
            for entry in rest.get("resource") or []
            if not (isinstance(entry, dict) and entry.get("type") in OWN_RESOURCES)
        ]
        rest["resource"] = sorted(
            [*theirs, *OWN_RESOURCES.values()],
            key=lambda entry: str(entry.get("type", "")) if isinstance(entry, dict) else "",
        )
    return statement


BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"
BULK_CAPABILITY = f"{BULK_DATA}/CapabilityStatement/bulk-data"
_EXPORT_OPERATIONS = {
    None: ("export", f"{BULK_DATA}/OperationDefinition/export"),
    "Patient": ("export", f"{BULK_DATA}/OperationDefinition/patient-export"),
    "Group": ("export", f"{BULK_DATA}/OperationDefinition/group-export"),
}


async def capabilities(
    fetcher: Fetcher, endpoints: Endpoints, method: str, *, bulk_export: bool = False
) -> Answer:
    """The CapabilityStatement as the gateway publishes it."""
    answer = await fetcher.fetch(Call(interaction=parse(method, "metadata")))
    if answer.status == 200 and answer.body is not None:
        answer.body = describe_own(add_security(answer.body, endpoints))
        if bulk_export and answer.body.get("resourceType") == "CapabilityStatement":
            add_bulk_export(answer.body)
        answer.headers.pop("ETag", None)  # the body is no longer the upstream's
    answer.headers.update(ANY_ORIGIN)
    return answer


def _without_export(operations: Any) -> list[Any]:
    return [o for o in operations or [] if not (isinstance(o, dict) and o.get("name") == "export")]


def add_bulk_export(statement: dict[str, Any]) -> None:
    """Advertise the gateway's ``$export`` operations (the module's docstring)."""
    instantiates = [i for i in statement.get("instantiates") or [] if i != BULK_CAPABILITY]
    statement["instantiates"] = [*instantiates, BULK_CAPABILITY]
    rests = [r for r in statement.get("rest") or [] if isinstance(r, dict)]
    if not rests:
        rests = [{"mode": "server"}]
        statement["rest"] = rests
    rest = rests[0]
    name, definition = _EXPORT_OPERATIONS[None]
    rest["operation"] = [
        *_without_export(rest.get("operation")),
        {"name": name, "definition": definition},
    ]
    resources = [r for r in rest.get("resource") or [] if isinstance(r, dict)]
    for rtype in ("Patient", "Group"):
        found = next((r for r in resources if r.get("type") == rtype), None)
        if found is None:
            found = {"type": rtype}
            resources.append(found)
        name, definition = _EXPORT_OPERATIONS[rtype]
        found["operation"] = [
            *_without_export(found.get("operation")),
            {"name": name, "definition": definition},
        ]
    rest["resource"] = resources
