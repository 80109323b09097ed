"""The FHIR R4 Patient compartment as data (FHIR R4 CompartmentDefinition ``patient``; SMART.md
S-26 … S-28; DESIGN.md "The patient compartment is data, not code").

Data: ``gateway/fhir/data/compartmentdefinition-patient.json`` (which search parameters tie each
resource type to a patient) and ``gateway/fhir/data/search-parameters-r4.json`` (where those
parameters' values are, see :mod:`gateway.fhir.searchparams`). A resource is in patient P's
compartment when one of its type's compartment parameters points at ``Patient/P`` (a Patient
resource is also in its own).

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
from consent.references import patient_id
from gateway.fhir.fhirdata import PATIENT_COMPARTMENT_PARAMS, load_json
from gateway.fhir.searchparams import (
    UnknownParameter,
    normalise_reference,
    reference_ids,
    search_param,
)

_ATTRIBUTION = load_json("attribution.json")

PUBLIC_TYPES: frozenset[str] = NO_PATIENT_DATA_TYPES
"""Types that carry no patient data: a patient-context token may read them and they need no
consent. The reviewed list and why each type is on it, or deliberately not, is data:
``consent/data/no-patient-data-types.json`` (the consent engine keeps the display of references to
these types, C-26). A type that is neither in the compartment, a carrier, nor on the list is not
released to anyone (C-27)."""

CARRIERS: dict[str, tuple[tuple[str, ...], ...]] = {
    rtype: tuple(tuple(path.split(".")) for path in paths)
    for rtype, paths in _ATTRIBUTION["carriers"].items()
}
"""Types outside the compartment attributed through the Patient references at these paths."""

UNATTRIBUTED = "?"
"""The owner of what cannot be attributed to patients (no patient id can equal it): a resource
owned by it is released to nobody (C-27)."""

_MAX_NESTING = 3

Contexts = Mapping[str, Mapping[str, Any] | None]
"""Binary security contexts read for a request: ``Type/id`` -> the resource (``None``: not
found)."""


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


def _binary_owners(resource: Mapping[str, Any], contexts: Contexts | None) -> frozenset[str]:
    """A Binary belongs to the patients of its ``securityContext``: that Patient, or the owners of
    the resource it names when the caller has read it (``contexts``). Without a context it is
    attributed to nobody, and so withheld (C-27)."""
    context = security_context(resource)
    if context is not None and context.startswith("Patient/"):
        return frozenset({context.removeprefix("Patient/")})
    found = (contexts or {}).get(context) if context is not None else None
    if found is None or found.get("resourceType") == "Binary":
        return frozenset({UNATTRIBUTED})
    return patients_of(found) or frozenset({UNATTRIBUTED})


def _bundle_owners(resource: Mapping[str, Any], depth: int) -> frozenset[str]:
    """A Bundle (a document, a message, a stored collection) belongs to every patient of every
    resource it holds; one it cannot attribute makes it unattributable."""
    if depth >= _MAX_NESTING:
        return frozenset({UNATTRIBUTED})
    owners: set[str] = set()
    entries = resource.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        held = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(held, dict):
            continue
        found = _owners(held, None, depth + 1)
        if not found and str(held.get("resourceType")) not in PUBLIC_TYPES:
            return frozenset({UNATTRIBUTED})
        owners |= found
    return frozenset(owners)


def _carrier_owners(
    resource: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]
) -> frozenset[str]:
    references: list[Any] = []
    for steps in paths:
        _values(resource, steps, 0, references)
    owners: set[str] = set()
    for value in references:
        literal = value.get("reference") if isinstance(value, dict) else None
        patient = patient_id(literal) if isinstance(literal, str) else None
        if patient is None:
            return frozenset({UNATTRIBUTED})
        owners.add(patient)
    return frozenset(owners)


def _values(node: Any, steps: tuple[str, ...], at: int, out: list[Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _values(item, steps, at, out)
    elif at == len(steps):
        out.append(node)
    elif isinstance(node, dict) and steps[at] in node:
        _values(node[steps[at]], steps, at + 1, out)


def _walk_patient_references(value: Any, found: set[str], skip: str | None = None) -> None:
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and "Patient" in reference:
            patient = patient_id(reference)
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
    return frozenset(match.decode() for match in set(_MENTION.findall(raw)))


_ID = re.compile(rb"[A-Za-z0-9\-.]{1,64}")


def mentions_only(raw: bytes, patients: frozenset[str]) -> bool:
    """Whether :func:`mentioned_patients` finds in ``raw`` no patient outside ``patients`` (and
    nothing that could hide one). Usually answered by counting: in a text without a backslash
    (so without escapes), when every ``Patient`` is one of ``patients`` written
    ``Patient/<id>"``, each is a mention of that patient and of no one else; otherwise the text
    is read as ``mentioned_patients`` reads it."""
    if b"\\" not in raw:
        own = 0
        for patient in patients:
            wanted = patient.encode()
            if _ID.fullmatch(wanted):
                own += raw.count(b"Patient/" + wanted + b'"')
        if own == raw.count(b"Patient"):
            return True
    mentioned = mentioned_patients(raw)
    return mentioned is not None and mentioned <= patients


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


def patients_of(resource: Mapping[str, Any], contexts: Contexts | None = None) -> frozenset[str]:
    """The ids of the patients whose data ``resource`` is: every ``Patient/<id>`` its type's
    compartment parameters point at, plus its own id for a Patient; for the carriers outside the
    compartment (Binary through its security context, Bundle through what it holds, and those of
    ``attribution.json``), the patients they carry, or :data:`UNATTRIBUTED`. Contained resources
    are not looked into (the caller checks them). Empty: no patient's data is attributed to it —
    which releases it only for a type that holds none (:data:`PUBLIC_TYPES`, C-27)."""
    return _owners(resource, contexts, 0)


def _owners(resource: Mapping[str, Any], contexts: Contexts | None, depth: int) -> frozenset[str]:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return frozenset({UNATTRIBUTED})
    if rtype == "Binary":
        return _binary_owners(resource, contexts)
    if rtype == "Bundle":
        return _bundle_owners(resource, depth)
    carried = CARRIERS.get(rtype)
    if carried is not None:
        return _carrier_owners(resource, carried)
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


def attributed(resource: Mapping[str, Any], owners: frozenset[str]) -> bool:
    """C-27: the resource may be released at all — it is some patients' (and all of them are
    known), or of a type that holds no patient data."""
    if UNATTRIBUTED in owners:
        return False
    return bool(owners) or resource.get("resourceType") in PUBLIC_TYPES


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
            patient = patient_id(reference)
            if patient is not None:
                found.add(patient)
        return
    value = node.get(steps[at])
    if value is not None:
        _collect(value, steps, at + 1, found)


@cache
def _owner_paths(resource_type: str) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """For each compartment parameter: its plain element paths (followed directly), or the
    parameter's name when a path has a filter (evaluated through
    :mod:`gateway.fhir.searchparams`)."""
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
