"""``GET /fhir/metadata``: the CapabilityStatement (FHIR R4 3.1.0.12 "capabilities"; SMART.md S-07,
S-08). The upstream's, with its URLs on the gateway's base (``gateway.proxy.rewrite``) and every
``rest.security`` replaced by the gateway's SMART section (``smart_auth.discovery``), and the
types the gateway serves itself (``AuditEvent``, ``Consent``: never the upstream's) described as
the gateway serves them; it needs no token and is readable from any origin."""

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


async def capabilities(fetcher: Fetcher, endpoints: Endpoints, method: str) -> Answer:
    """The CapabilityStatement as the gateway publishes it."""
    answer = await fetcher.fetch(Call(interaction=parse(method, "metadata")))
    if answer.status == 200 and answer.body is not None:
        answer.body = describe_own(add_security(answer.body, endpoints))
        answer.headers.pop("ETag", None)  # the body is no longer the upstream's
    answer.headers.update(ANY_ORIGIN)
    return answer
