"""The write policy: what a create, update, patch or delete must pass before anything is sent
upstream, alone or in a transaction (FHIR R4 3.1.0 create/update/patch/delete; SMART.md S-26 … S-29;
CONSENT.md C-24; SECURITY.md P-20). :class:`WritePolicy` runs the checks in this order:

1. Consents are written through ``/fhir/Consent`` only, and AuditEvents not at all (AUDIT.md
   A-06); a merge patch becomes an update of the current version (the upstreams take JSON Patch
   only).
2. The body: created and updated bodies are valid FHIR; a JSON Patch names no ``id``,
   ``resourceType`` or the whole document.
3. The resource before the write (read from the upstream for every update, patch and delete: whose
   record it is decides the consent): under a ``patient/`` scope or a granular one it must be one
   the token may write, else the answer is the one for a resource that does not exist; the version
   read is pinned with ``If-Match``.
4. The resource after the write (the body, or the patch applied here): under a ``patient/`` scope it
   names only the token's patients, no conditional reference, and no changed ``Patient.link``; it
   satisfies the scope's restriction.
5. Consent (C-24): every patient whose record the write touches, before or after, consents to this
   app doing it — evaluated with the consentaction of the write (``collect`` for a create,
   ``correct`` for the others).

The checks on their own:

- Every created or updated body is validated with ``fhir.resources`` (R4B models, close to R4):
  a body that is not a valid resource gets 422 with one OperationOutcome issue per problem,
  each naming the element.
- A ``patient/``-only token writes inside its compartment: the body's compartment references (and
  any reference to a Patient anywhere in it) point only at patients the token reaches, before and
  after a patch; an update or delete touches only a resource that is in the compartment now.
- A patch, JSON Patch (RFC 6902) or JSON Merge Patch (RFC 7396), is applied here to the current
  resource so that its result can be checked before anything is sent; neither may change what the
  resource is (its ``id`` or ``resourceType``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jsonpatch
import orjson
from fhir.resources.R4B import get_fhir_model_class
from multidict import CIMultiDict
from pydantic import ValidationError

from gateway.fhir import compartment
from gateway.fhir.access import AccessDecision, authorize
from gateway.fhir.bodies import JSON_PATCH, MERGE_PATCH
from gateway.fhir.consent_gate import ConsentGate
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.fhirdata import RESOURCE_TYPES
from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.web.errors import (
    FHIR_JSON,
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    Unprocessable,
    UnsupportedMediaType,
)

WRITE_ACTIONS: dict[Kind, str] = {
    Kind.CREATE: "collect",
    Kind.UPDATE: "correct",
    Kind.PATCH: "correct",
    Kind.DELETE: "correct",
}
"""The consentaction code each write is evaluated as (C-24; R4 valueset-consent-action)."""
_HIDDEN = "no such resource is available to this access token"


def _issues(exc: ValidationError) -> list[dict[str, Any]]:
    issues = []
    for error in exc.errors()[:50]:
        where = ".".join(str(part) for part in error["loc"])
        issues.append(
            {
                "severity": "error",
                "code": "structure" if error["type"] == "extra_forbidden" else "value",
                "diagnostics": f"{where}: {error['msg']}",
                "expression": [where] if where else [],
            }
        )
    return issues


def validate(resource: Mapping[str, Any]) -> None:
    """422 unless ``resource`` is a valid FHIR resource of its declared type."""
    rtype = resource.get("resourceType")
    try:
        model = get_fhir_model_class(str(rtype))
    except (KeyError, ValueError):
        if rtype in RESOURCE_TYPES:
            return  # an R4 type the R4B models no longer have: the upstream validates it
        raise Unprocessable(f"'{rtype}' is not a FHIR resource type") from None
    try:
        model.model_validate(resource)
    except (KeyError, TypeError, ValueError) as exc:  # e.g. a contained type the models lack
        if isinstance(exc, ValidationError):
            issues = _issues(exc)
            raise Unprocessable(
                f"the {rtype} is not valid FHIR ({len(issues)} problem(s))", extra_issues=issues
            ) from None
        raise Unprocessable(f"the {rtype} is not valid FHIR: {exc}") from None


def _conditional_references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and "?" in reference:
            yield reference
        for item in value.values():
            yield from _conditional_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _conditional_references(item)


def check_patch_operations(operations: Any) -> None:
    """A JSON Patch may not change what a resource is (``/id``, ``/resourceType``, or the whole
    document at ``""``): the upstream would otherwise write the result over another record."""
    for operation in operations if isinstance(operations, list) else []:
        if not isinstance(operation, dict):
            continue
        for key in ("path", "from"):
            target = operation.get(key)
            if not isinstance(target, str):
                continue
            if target in ("", "/") or target.split("/")[1:2] in (["id"], ["resourceType"]):
                raise Forbidden("a patch cannot change the resource's id or type, nor replace it")


def check_conditional_references(resource: Mapping[str, Any]) -> None:
    """A patient-context write names its references: a conditional one, resolved by the
    upstream, could name anyone (and tell the caller who it found)."""
    conditional = next(_conditional_references(resource), None)
    if conditional is not None:
        raise Forbidden(f"conditional references ({conditional}) are not available here")


def check_in_compartment(resource: Mapping[str, Any], context: AccessContext, what: str) -> None:
    """403 unless a resource a patient-context token writes stays with its patients."""
    check_conditional_references(resource)
    owners = compartment.patients_of(resource)
    if resource.get("resourceType") == "Patient":
        owners = owners | {str(resource.get("id", ""))}
    outside = (owners | compartment.patient_references(resource)) - context.patients
    if outside:
        raise Forbidden(f"{what} would refer to a patient outside this token's access")
    if not owners & context.patients:
        raise Forbidden(f"{what} must belong to a patient this token may act for")


_AUTHORITY_ELEMENTS: dict[str, tuple[str, ...]] = {"Patient": ("link",)}
"""Elements that confer authority over another record (P-20): a patient-context token may not
change them (``Patient.link`` joins records; ``RelatedPerson`` and ``Person`` are refused whole by
the access step)."""


def check_authority_unchanged(current: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """403 when a patient-context write would change an authority-bearing element (P-20)."""
    for element in _AUTHORITY_ELEMENTS.get(str(current.get("resourceType")), ()):
        if current.get(element) != after.get(element):
            raise Forbidden(
                f"{current.get('resourceType')}.{element} links records; it is changed in the "
                "EHR, not by an app"
            )


def check_current(current: Mapping[str, Any] | None, context: AccessContext) -> None:
    """An existing resource a patient-context token updates or deletes must be in its
    compartment; one that is not is answered like one that does not exist."""
    if current is None or not compartment.patients_of(current) & context.patients:
        raise NotFound("no such resource is available to this access token")


def check_merge_patch(patch: Mapping[str, Any], resource_type: str | None, rid: str | None) -> None:
    """A JSON Merge Patch may not change what a resource is: its ``id`` or ``resourceType``, if
    present, must be the URL's (checked before the resource is read, so that the answer does not
    depend on it)."""
    if any(
        key in patch and patch[key] != expected
        for key, expected in (("id", rid), ("resourceType", resource_type))
    ):
        raise Forbidden("a patch cannot change the resource's id or type")


def merge_patch(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The resource after a JSON Merge Patch (RFC 7396 2: objects merge member by member, ``null``
    removes a member, anything else replaces it, arrays included)."""
    return _merge(current, patch)


def _merge(target: Any, patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            merged[key] = _merge(merged.get(key), value)
        else:
            merged[key] = value
    return merged


def apply_patch(current: Mapping[str, Any], operations: Any) -> dict[str, Any]:
    """The resource after a JSON Patch (RFC 6902), to check before the upstream applies it."""
    try:
        patched = jsonpatch.apply_patch(dict(current), operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        raise Unprocessable(f"the JSON Patch cannot be applied: {exc}") from None
    if not isinstance(patched, dict):
        raise Unprocessable("the JSON Patch does not leave a resource")
    return patched


class WritePolicy:
    """Everything a write must pass before it is sent (the module's docstring)."""

    def __init__(self, fetcher: Fetcher, consent: ConsentGate) -> None:
        self._fetcher = fetcher
        self._consent = consent

    async def prepare(
        self, context: AccessContext, decision: AccessDecision, call: Call
    ) -> tuple[AccessDecision, Call]:
        """The write to check and send: a JSON Merge Patch becomes an update of the current
        version, pinned with ``If-Match`` (HAPI and Medplum take JSON Patch but not merge patch).
        A resource the token may not update is answered as missing before anything is merged."""
        if call.media != MERGE_PATCH:
            return decision, call
        patch = call.interaction
        check_merge_patch(call.body, patch.resource_type, patch.resource_id)
        update = FhirInteraction(Kind.UPDATE, "PUT", patch.resource_type, patch.resource_id)
        decision = authorize(context, update)
        current = await self._fetcher.current(patch.resource_type, patch.resource_id)
        if current is None or not decision.policy.permits(current, decision.letters):
            raise NotFound(_HIDDEN)
        version = (current.get("meta") or {}).get("versionId")
        if not version:
            raise Conflict("the resource has no version to apply a merge patch to")
        after = merge_patch(current, call.body)
        headers = call.headers.copy()
        headers.setdefault("If-Match", f'W/"{version}"')
        return decision, call.but(
            interaction=update,
            body=after,
            raw=orjson.dumps(after),
            media=FHIR_JSON,
            headers=headers,
        )

    async def check(
        self, context: AccessContext, decision: AccessDecision, call: Call
    ) -> CIMultiDict[str]:
        """403/404/422 unless the write may go; returns the headers to send it with, ``If-Match``
        pinned to the version that was checked."""
        interaction, kind, policy = decision.interaction, decision.interaction.kind, decision.policy
        checked = decision.patient_only or decision.restricted
        headers = call.headers.copy()
        if interaction.resource_type == "Consent":
            raise BadRequest("Consents are written through /fhir/Consent, one at a time")
        if interaction.resource_type == "AuditEvent":  # in a transaction; alone: audit_api.py
            raise MethodNotAllowed(
                "AuditEvents cannot be created, changed or deleted: the audit log is append-only "
                "and the gateway records its events itself"
            )
        if kind in (Kind.CREATE, Kind.UPDATE):
            validate(call.body)
        if kind is Kind.PATCH:
            if call.media != JSON_PATCH:
                raise UnsupportedMediaType(f"patches here are JSON Patch ({JSON_PATCH})")
            check_patch_operations(call.body)
        if decision.patient_only and "If-None-Exist" in headers:
            raise Forbidden("conditional creates are not available to patient-context tokens")
        current: dict[str, Any] | None = None
        if kind is not Kind.CREATE:
            current = await self._fetcher.current(
                interaction.resource_type, interaction.resource_id
            )
            # An update that would create is answered like an update of someone else's resource:
            # otherwise the difference would tell which ids exist.
            if checked and (current is None or not policy.permits(current, decision.letters)):
                raise NotFound(_HIDDEN)
            version = ((current or {}).get("meta") or {}).get("versionId")
            if version and "If-Match" not in headers:
                headers["If-Match"] = f'W/"{version}"'
        after = call.body if kind in (Kind.CREATE, Kind.UPDATE) else None
        if kind is Kind.PATCH and current is not None:
            after = apply_patch(current, call.body)
            if after.get("id") != current.get("id"):
                raise Forbidden("a patch cannot change the resource's id")
        if after is not None and checked:
            self._check_after(context, decision, current, after)
        touched = [r for r in (current, after) if r is not None]
        await self._consent.check_write(context, WRITE_ACTIONS[kind], touched)
        return headers

    @staticmethod
    def _check_after(
        context: AccessContext,
        decision: AccessDecision,
        current: Mapping[str, Any] | None,
        after: Mapping[str, Any],
    ) -> None:
        if decision.patient_only:
            if current is not None:
                check_authority_unchanged(current, after)
            check_conditional_references(after)
            if compartment.patient_references(after) - context.patients:  # contained too
                raise Forbidden("this write would name a patient outside this token's access")
        if not decision.policy.permits(after, decision.letters):
            raise Forbidden(
                f"this {decision.interaction.resource_type} would fall outside what this access "
                "token may write (its patients, or its scope's restriction)"
            )

    async def check_validate(self, decision: AccessDecision) -> None:
        """``$validate`` on an instance: the instance must be one the token could update; the
        same answer as for a resource that does not exist otherwise."""
        interaction = decision.interaction
        if interaction.resource_id is None:
            return
        if decision.patient_only or decision.restricted:
            current = await self._fetcher.current(
                interaction.resource_type, interaction.resource_id
            )
            if current is None or not decision.policy.permits(current, decision.letters):
                raise NotFound(_HIDDEN)
