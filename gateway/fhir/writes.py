"""Checks on what a caller writes (FHIR R4 3.1.0 create/update/patch/delete; the issue's item 8).

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
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway.fhir import compartment
from gateway.fhir.context import AccessContext
from gateway.fhir.fhirdata import RESOURCE_TYPES
from gateway.web.errors import Forbidden, NotFound, Unprocessable


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
