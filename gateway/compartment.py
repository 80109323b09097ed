"""The FHIR R4 Patient compartment as data (FHIR R4 CompartmentDefinition ``patient``; SMART.md
S-26 … S-28; DESIGN.md "The patient compartment is data, not code").

Data: ``gateway/data/compartmentdefinition-patient.json`` (which search parameters tie each resource
type to a patient) and ``gateway/data/search-parameters-r4.json`` (where those parameters' values
are, see :mod:`gateway.searchparams`). A resource is in patient P's compartment when one of its
type's compartment parameters points at ``Patient/P`` (a Patient resource is also in its own).

Narrowing a search on one parameter is safe: the gateway's ``param=Patient/P`` is ANDed with the
caller's parameters by the upstream, and the parameter is chosen so that its paths lie within the
compartment parameters' paths, so the upstream can only return a subset of P's compartment
(possibly smaller: an Observation whose only link to P is ``performer`` is not found through
``patient``). Every resource released is checked again with :func:`patients_of`, so a mistake in
narrowing can only hide data, never release it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from consent.codes import NO_PATIENT_DATA_TYPES
from gateway.fhirdata import PATIENT_COMPARTMENT_PARAMS
from gateway.searchparams import (
    UnknownParameter,
    normalise_reference,
    reference_ids,
    search_param,
)

PUBLIC_TYPES: frozenset[str] = NO_PATIENT_DATA_TYPES
"""Types that carry no patient data: a patient-context token may read them. The reviewed list and
why each type is on it, or deliberately not, is data: ``consent/data/no-patient-data-types.json``
(the consent engine keeps the display of references to these types, C-26). A type that is neither
in the compartment nor on the list is not released to a patient-context token."""


def compartment_params(resource_type: str) -> tuple[str, ...]:
    """The search parameters that put a ``resource_type`` in a patient's compartment."""
    return PATIENT_COMPARTMENT_PARAMS.get(resource_type, ())


def is_compartment_type(resource_type: str) -> bool:
    """Whether resources of this type can be in a patient's compartment."""
    return bool(compartment_params(resource_type))


def security_context(resource: Mapping[str, Any]) -> str | None:
    """The ``Type/id`` a Binary's ``securityContext`` points at (its access follows that
    resource's: FHIR R4 Binary 2.3.1.1); ``None`` when there is none."""
    value = resource.get("securityContext")
    ref = value.get("reference") if isinstance(value, Mapping) else None
    return normalise_reference(ref) if isinstance(ref, str) else None


def binary_patients(resource: Mapping[str, Any]) -> frozenset[str]:
    """The patient a Binary belongs to when its ``securityContext`` is that Patient. A Binary whose
    security context is another resource (a DocumentReference, say) is not attributed to anyone
    here, so a patient-context token does not receive it: read the attachment through its
    DocumentReference instead."""
    context = security_context(resource)
    if context is not None and context.startswith("Patient/"):
        return frozenset({context.removeprefix("Patient/")})
    return frozenset()


def _patient_id(reference: str) -> str | None:
    """The id of a reference to a Patient (``Patient/x``, absolute, versioned), else ``None``.
    A malformed id is kept as written: it then never matches a token's patient, and it never
    reaches a database query (the consent store takes valid ids only)."""
    if reference.startswith("Patient/") and reference.count("/") == 1:
        return reference[8:] or None  # the common case, without the general parser
    normalised = normalise_reference(reference)
    if normalised is not None and normalised.startswith("Patient/"):
        return normalised[8:]
    return None


def _walk_patient_references(value: Any, found: set[str], skip: str | None = None) -> None:
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and "Patient" in reference:
            patient = _patient_id(reference)
            if patient is not None:
                found.add(patient)
            elif reference.startswith("Patient?"):
                found.add(reference)  # a conditional reference: unresolved, never "ours"
        for key, item in value.items():
            if key != skip and isinstance(item, dict | list):
                _walk_patient_references(item, found)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                _walk_patient_references(item, found)


_MENTION = re.compile(rb"Patient(?:/|\\/)([A-Za-z0-9\-.]{1,64})")


def mentioned_patients(raw: bytes) -> frozenset[str] | None:
    """Every patient id written as ``Patient/<id>`` anywhere in a JSON text (a superset of the
    references in it), or ``None`` when the text could hide one (a conditional reference, or
    ``\\u`` escapes). When the result holds only a token's own patients, no resource in the
    text can point at anyone else, and the per-resource search for references can be skipped."""
    if b"Patient?" in raw or b"\\u" in raw:
        return None
    return frozenset(match.decode() for match in _MENTION.findall(raw))


def patient_references(
    resource: Mapping[str, Any], *, with_contained: bool = True
) -> frozenset[str]:
    """Every patient any reference in the resource points at, whatever the element: a
    patient-context token must not receive, nor write, a resource that names a patient it does
    not reach. ``with_contained=False`` leaves out the contained resources (checked one by one
    on release). A conditional reference (``Patient?identifier=...``) is returned as written, so
    it never matches a patient id."""
    found: set[str] = set()
    _walk_patient_references(resource, found, None if with_contained else "contained")
    return frozenset(found)


def patients_of(resource: Mapping[str, Any]) -> frozenset[str]:
    """The ids of the patients whose compartment holds ``resource``: every ``Patient/<id>`` its
    type's compartment parameters point at, plus its own id for a Patient, plus a Binary's Patient
    security context. Contained resources are not looked into (the caller checks them)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return frozenset()
    if rtype == "Binary":
        return binary_patients(resource)
    found: set[str] = set()
    if rtype == "Patient" and isinstance(resource.get("id"), str):
        found.add(resource["id"])
    simple, general = _owner_paths(rtype)
    for steps in simple:
        _collect(resource, steps, 0, found)
    for name in general:
        for ref in reference_ids(resource, name):
            if ref.startswith("Patient/"):
                found.add(ref.removeprefix("Patient/"))
    return frozenset(found)


def _collect(node: Any, steps: tuple[str, ...], at: int, found: set[str]) -> None:
    """Follow ``steps`` and add the Patient references found at the end (the hot path of
    :func:`patients_of`: most compartment parameters are plain element paths)."""
    if isinstance(node, list):
        for item in node:
            _collect(item, steps, at, found)
        return
    if not isinstance(node, dict):
        return
    if at == len(steps):
        reference = node.get("reference")
        if isinstance(reference, str):
            patient = _patient_id(reference)
            if patient is not None:
                found.add(patient)
        return
    value = node.get(steps[at])
    if value is not None:
        _collect(value, steps, at + 1, found)


@cache
def _owner_paths(resource_type: str) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """For each compartment parameter: its plain element paths (followed directly), or the
    parameter's name when a path has a filter (evaluated through :mod:`gateway.searchparams`)."""
    simple: list[tuple[str, ...]] = []
    general: list[str] = []
    for name in _patient_params(resource_type):
        paths = search_param(resource_type, name).paths
        if any(path.where for path in paths):
            general.append(name)
        else:
            simple.extend(path.steps for path in paths if path.target in (None, "Patient"))
    return tuple(dict.fromkeys(simple)), tuple(general)


@cache
def _patient_params(resource_type: str) -> tuple[str, ...]:
    """The compartment parameters that are reference parameters able to point at a Patient."""
    out: list[str] = []
    for name in compartment_params(resource_type):
        try:
            param = search_param(resource_type, name)
        except UnknownParameter:
            continue
        if param.type == "reference" and param.can_target("Patient"):
            out.append(name)
    return tuple(out)


def _paths(resource_type: str, name: str) -> frozenset[tuple[str, ...]]:
    return frozenset(p.steps for p in search_param(resource_type, name).paths)


def _narrows_within(resource_type: str, name: str) -> bool:
    """``name`` is a reference parameter that can point at a Patient and only looks where the
    compartment parameters look."""
    try:
        param = search_param(resource_type, name)
    except UnknownParameter:
        return False
    if param.type != "reference" or param.partial or not param.can_target("Patient"):
        return False
    if name in compartment_params(resource_type):
        return True
    within: set[tuple[str, ...]] = set()
    for other in _patient_params(resource_type):
        within |= _paths(resource_type, other)
    return bool(param.paths) and _paths(resource_type, name) <= within


@cache
def narrowing_param(resource_type: str) -> str | None:
    """The parameter the gateway adds to a patient-context search (``name=Patient/<id>``):
    ``patient``, else ``subject``, else the first compartment parameter that can point at a Patient;
    ``_id`` for Patient; ``None`` for a type outside the compartment."""
    if resource_type == "Patient":
        return "_id"
    for name in ("patient", "subject", *compartment_params(resource_type)):
        if _narrows_within(resource_type, name):
            return name
    return None


_PARAM_BASE = re.compile(r"[:.]")


def is_compartment_param(resource_type: str, name: str) -> bool:
    """Whether the query parameter ``name`` is one of the type's compartment parameters, in any
    case, with any modifier or chain (``subject``, ``SUBJECT``, ``subject:Patient``,
    ``patient:missing``, ``subject:Patient.name``, ``subject.name``). The narrowing parameter is
    not one unless the CompartmentDefinition lists it (``patient`` on Observation is not: it is
    ANDed with the gateway's constraint like any ordinary parameter)."""
    base = _PARAM_BASE.split(name, maxsplit=1)[0].strip().casefold()
    return any(base == p.casefold() for p in compartment_params(resource_type))
