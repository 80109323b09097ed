"""Narrow before: a patient-context search is limited to the token's patients upstream, and the
caller's parameters that could escape that limit are refused (DESIGN.md "Narrow before, filter
after"; SMART.md S-26).

Ordinary search parameters are ANDed with the patient constraint, so they can only narrow further
and pass unchanged. A caller who already sends the constraint word for word
(``patient=Patient/<id>`` for a token of one patient) has it sent once, not twice. What is treated
explicitly:

- a parameter that can point at a Patient (``patient``, ``subject``, ``performer``...): kept only
  when every value (comma lists included, repeated parameters each) names a patient the token
  reaches, with no modifier other than ``:Patient``; refused otherwise (``:missing``,
  ``:identifier``, ``:not``...) — a search for another patient is an error the developer should
  see, not a silently empty page;
- a known parameter written in another case (``PATIENT``): refused, since servers differ on
  whether they ignore it;
- ``_id`` on Patient: every id must be one of the token's patients;
- chained parameters (``encounter.subject.name``) and ``_has`` (reverse chains): refused, since
  they test facts about resources outside the compartment;
- ``_filter``, ``_query``, ``_list``, ``_contained``, ``_containedType``, ``_type``: refused (they
  widen or reshape results in ways the constraint does not cover).

``_include``/``_revinclude`` pass: what they bring in is filtered after (``filtering.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from consent.references import patient_id
from gateway.fhir import compartment, searchparams
from gateway.web.errors import Forbidden

_REFUSED = frozenset({"_filter", "_query", "_list", "_contained", "_containedtype", "_type"})


def _check_patient_values(name: str, value: str, allowed: frozenset[str]) -> None:
    """Each value must be one of the token's patients; a reference explicitly to another type
    (``Practitioner/x``) cannot reach a patient and only narrows."""
    for item in value.split(","):
        patient = patient_id(item, bare=True)
        if patient is None and _typed_non_patient(item):
            continue
        if patient is None or patient not in allowed:
            raise Forbidden(f"'{name}={value}' reaches beyond the patients this token may see")


def _typed_non_patient(value: str) -> bool:
    normalised = searchparams.normalise_reference(value.strip())
    return normalised is not None and not normalised.startswith("Patient/")


def _reaches_patients(resource_type: str, base: str) -> bool:
    """A reference parameter that can point at a Patient (``patient``, ``subject``, ``performer``
    ...): its values decide whose data a search touches."""
    if compartment.is_compartment_param(resource_type, base):
        return True
    try:
        param = searchparams.search_param(resource_type, base)
    except searchparams.UnsupportedParameter:
        return False
    return param.type == "reference" and param.can_target("Patient")


def narrow_search(
    params: Iterable[tuple[str, str]],
    resource_type: str,
    allowed: frozenset[str],
    *,
    add_constraint: bool = True,
) -> list[tuple[str, str]]:
    """The caller's parameters, checked, plus the patient constraint (unless ``add_constraint``
    is False, for a compartment search that already carries it in its path)."""
    known = searchparams.param_names(resource_type)
    by_lower = {name.lower(): name for name in known}
    kept: list[tuple[str, str]] = []
    for name, value in params:
        base = name.split(":", 1)[0]
        lowered = base.lower()
        if lowered.startswith("_has") or lowered in _REFUSED:
            raise Forbidden(
                f"the search parameter '{name}' is not available to patient-context tokens"
            )
        if "." in base:
            raise Forbidden(
                f"chained search parameters ('{name}') are not available to patient-context tokens"
            )
        if base not in known and lowered in by_lower:
            raise Forbidden(
                f"'{base}' is not '{by_lower[lowered]}': search parameter names are case-sensitive"
            )
        if _reaches_patients(resource_type, base):
            modifier = name.split(":", 1)[1] if ":" in name else None
            if modifier not in (None, "Patient"):
                raise Forbidden(f"the search parameter '{name}' could reach other patients' data")
            _check_patient_values(name, value, allowed)
        elif resource_type == "Patient" and lowered == "_id":
            if base != "_id" or ":" in name:
                raise Forbidden(f"the search parameter '{name}' is not available here")
            _check_patient_values(name, value, allowed)
        kept.append((name, value))
    if add_constraint:
        param = compartment.narrowing_param(resource_type)
        if param is None:
            raise Forbidden(
                f"a search of {resource_type} cannot be limited to this token's patients"
            )
        targets = sorted(allowed)
        value = ",".join(targets if param == "_id" else [f"Patient/{p}" for p in targets])
        if (param, value) not in kept:  # the caller's own, word for word: sent once
            kept.append((param, value))
    return kept
