"""What the consent engine reads from a resource (CONSENT.md C-09): its type and id, its
sensitive labels, its codes, its clinical date and the references it makes.

The FHIR knowledge is data (``consent/data/resource-attributes.json`` and
``consent/data/sensitive-labels.json``, each naming its sources); this module only reads it.
Resources come from the upstream server, so every read is defensive: a malformed element counts as
absent, never as an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from consent import fhirtime
from consent.codes import load_json

_ATTRIBUTES = load_json("resource-attributes.json")
_LABELS = load_json("sensitive-labels.json")

CLINICAL_DATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    resource_type: tuple(tuple(path.split(".")) for path in paths)
    for resource_type, paths in _ATTRIBUTES["clinical_date"].items()
}
CODE_ELEMENTS: tuple[str, ...] = tuple(_ATTRIBUTES["code_elements"])

CONFIDENTIALITY_SYSTEM: str = _LABELS["confidentiality"]["system"]
CONFIDENTIALITY_LEVEL: dict[str, int] = {
    code: rank for rank, code in enumerate(_LABELS["confidentiality"]["order"])
}
"""Confidentiality code -> rank (higher is more restrictive)."""
SENSITIVE_LEVEL: int = CONFIDENTIALITY_LEVEL[_LABELS["confidentiality"]["sensitive_from"]]
SENSITIVITY_SYSTEM: str = _LABELS["sensitivity"]["system"]
SENSITIVITY_CODES: frozenset[str] = frozenset(_LABELS["sensitivity"]["codes"])
INFERRED_LABELS: dict[tuple[str, str], str] = {
    (entry["system"], entry["code"]): entry["label"] for entry in _LABELS["inferred"]
}


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """The attributes of one resource that provisions are matched against."""

    resource_type: str
    reference: str
    """``Type/id`` (empty when the resource has no id)."""
    labels: frozenset[str]
    """Security label codes on the resource (every system), plus labels inferred from its codes."""
    level: int
    """Its highest confidentiality rank (-1 when it carries none)."""
    codes: frozenset[tuple[str, str]]
    """``(system, code)`` of the codings in its code elements (system ``""`` when absent)."""
    date: fhirtime.Interval | None
    """Its clinical date (``meta.lastUpdated`` as the fallback), ``None`` when it has none."""
    references: frozenset[str]
    """Every literal reference it makes (for ``data.meaning = dependents``)."""

    @property
    def sensitive(self) -> frozenset[str]:
        """The labels that need a permit naming them: sensitivity codes, and R/V."""
        found = self.labels & SENSITIVITY_CODES
        if self.level >= SENSITIVE_LEVEL:
            found |= {code for code, rank in CONFIDENTIALITY_LEVEL.items() if rank == self.level}
        return frozenset(found)


def _codings(value: Any) -> Iterator[Mapping[str, Any]]:
    """The Codings in an element that is a Coding, a CodeableConcept or a list of either.

    Here and below, JSON objects are recognised with ``isinstance(x, dict)``: parsed JSON is
    made of dicts, and the ``Mapping`` ABC check costs microseconds per call on this path, which
    runs for every resource released."""
    items = value if isinstance(value, list) else (value,)
    for item in items:
        if not isinstance(item, dict):
            continue
        if "coding" in item:
            coding = item["coding"]
            if isinstance(coding, list):
                yield from (c for c in coding if isinstance(c, dict))
        elif "code" in item:
            yield item


def _code_pairs(resource: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for element in CODE_ELEMENTS:
        value = resource.get(element)
        if value is None:
            continue
        for coding in _codings(value):
            code = coding.get("code")
            if isinstance(code, str):
                system = coding.get("system")
                pairs.add((system if isinstance(system, str) else "", code))
    return frozenset(pairs)


def _follow(value: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def clinical_date(resource: Mapping[str, Any]) -> fhirtime.Interval | None:
    """The resource's clinical date per ``resource-attributes.json``, else ``meta.lastUpdated``."""
    for path in CLINICAL_DATE_PATHS.get(str(resource.get("resourceType")), ()):
        found = fhirtime.interval(_follow(resource, path))
        if found is not None:
            return found
    return fhirtime.interval(_follow(resource, ("meta", "lastUpdated")))


def _references(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.add(item)
            elif isinstance(item, dict | list):
                _references(item, found)
    elif isinstance(value, list):
        for item in value:
            _references(item, found)


def references(resource: Mapping[str, Any]) -> frozenset[str]:
    """Every literal reference in the resource (contained resources included)."""
    found: set[str] = set()
    _references(resource, found)
    return frozenset(found)


def facts(resource: Mapping[str, Any], *, with_references: bool = False) -> ResourceFacts:
    """Read the facts of one resource. References are collected only when asked (they cost a walk
    over the whole resource and only ``data.meaning = dependents`` needs them)."""
    resource_type = str(resource.get("resourceType", ""))
    resource_id = resource.get("id")
    labels: set[str] = set()
    level = -1
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    for coding in security if isinstance(security, list) else ():
        code = coding.get("code") if isinstance(coding, dict) else None
        if not isinstance(code, str):
            continue
        labels.add(code)
        rank = CONFIDENTIALITY_LEVEL.get(code)
        if (
            rank is not None
            and coding.get("system", CONFIDENTIALITY_SYSTEM) == CONFIDENTIALITY_SYSTEM
        ):
            level = max(level, rank)
    codes = _code_pairs(resource)
    for pair in codes:
        inferred = INFERRED_LABELS.get(pair)
        if inferred is not None:
            labels.add(inferred)
    return ResourceFacts(
        resource_type=resource_type,
        reference=f"{resource_type}/{resource_id}" if isinstance(resource_id, str) else "",
        labels=frozenset(labels),
        level=level,
        codes=codes,
        date=clinical_date(resource),
        references=references(resource) if with_references else frozenset(),
    )
