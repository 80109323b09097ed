"""What the consent engine reads from a resource (CONSENT.md C-09, C-26): its type and id, its
sensitive labels, its codes, its clinical date, the references it makes, and whether it holds
text that may mention other data.

Sensitivity is read wherever it sits (C-26), in one pass over the whole resource:

- security labels in ``meta.security`` of the resource and of every resource nested in it (a
  contained resource's labels are its container's), compared without regard to case;
- every Coding anywhere -- ``code``, ``category``, ``value[x]``, ``reasonCode``, components,
  extensions, contained resources, any backbone element -- matched on system and code against
  the sensitive code lists (:mod:`consent.sensitive`). A list of elements to look in is always one
  element short, so there is none: an element not yet thought of is read as well.

A resource whose sensitivity cannot be decided is withheld (C-26): :attr:`ResourceFacts.undecidable`
says why -- ``meta`` or ``meta.security`` of the wrong shape, a label or a Coding whose code or
system is not a string, a ``coding`` that is not a list of Codings, an element that holds codes
(``resource-attributes.json``, ``coded_elements``) holding something else, or nesting too deep
to read. Everything else in the resource comes from an upstream server and is read defensively: a
malformed element counts as absent, never as an error.

The FHIR knowledge is data (``consent/data/resource-attributes.json``, the files read by
:mod:`consent.sensitive`); this module only reads resources with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consent import fhirtime
from consent.codes import load_json
from consent.sensitive import (
    CONFIDENTIALITY_LEVEL,
    INDEX,
    SENSITIVE_LEVEL,
    SENSITIVITY_CODES,
    confidentiality_rank,
    label,
)
from consent.subsetting import coded_elements

_ATTRIBUTES = load_json("resource-attributes.json")

CLINICAL_DATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    resource_type: tuple(tuple(path.split(".")) for path in paths)
    for resource_type, paths in _ATTRIBUTES["clinical_date"].items()
}
CODE_ELEMENTS: tuple[str, ...] = tuple(_ATTRIBUTES["code_elements"])
CODED_ELEMENTS: tuple[tuple[str, ...], ...] = tuple(
    tuple(path.split(".")) for path in _ATTRIBUTES["coded_elements"]
)
MAX_NESTING = 100
"""JSON levels a resource may nest before its sensitivity counts as undecidable (each nested
QuestionnaireResponse group adds two levels; real resources need far fewer than 100)."""


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """The attributes of one resource that provisions are matched against."""

    resource_type: str
    reference: str
    """``Type/id`` (empty when the resource has no id)."""
    labels: frozenset[str]
    """Security label codes (upper case) on the resource and the resources it contains, plus the
    sensitivity codes implied by its codes."""
    level: int
    """Its highest confidentiality rank (-1 when it carries none)."""
    codes: frozenset[tuple[str, str]]
    """``(system, code)`` of the codings in its code elements (system ``""`` when absent);
    empty when not asked for."""
    date: fhirtime.Interval | None
    """Its clinical date (``meta.lastUpdated`` as the fallback), ``None`` when it has none or
    it was not asked for."""
    references: frozenset[str]
    """Every literal reference it makes (for ``data.meaning = dependents``)."""
    undecidable: str | None = None
    """Why its sensitivity cannot be decided, else ``None`` (C-26: it is then withheld)."""
    mentions: bool = False
    """It has narrative or a Reference with a ``display``: text that may mention data which is
    withheld (C-26)."""

    @property
    def sensitive(self) -> frozenset[str]:
        """The labels that need a permit naming them: sensitivity codes, and R/V."""
        found = self.labels & SENSITIVITY_CODES
        if self.level >= SENSITIVE_LEVEL:
            found |= {code for code, rank in CONFIDENTIALITY_LEVEL.items() if rank == self.level}
        return frozenset(found)


def _codings(value: Any) -> list[Mapping[str, Any]]:
    """The Codings in an element that is a Coding, a CodeableConcept or a list of either.

    Here and below, JSON objects are recognised with ``isinstance(x, dict)``: parsed JSON is
    made of dicts, and the ``Mapping`` ABC check costs microseconds per call on this path, which
    runs for every resource released."""
    found: list[Mapping[str, Any]] = []
    for item in value if isinstance(value, list) else (value,):
        if not isinstance(item, dict):
            continue
        if "coding" in item:
            coding = item["coding"]
            if isinstance(coding, list):
                found += (c for c in coding if isinstance(c, dict))
        elif "code" in item:
            found.append(item)
    return found


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


@dataclass(slots=True)
class _Read:
    """What one pass over a resource found."""

    labels: set[str]
    level: int = -1
    problem: str | None = None
    mentions: bool = False
    references: set[str] | None = None


def _read(resource: Mapping[str, Any], with_references: bool) -> _Read:
    """One pass over the resource, level by level, so the depth is known without recursion (no
    resource can exhaust the stack here) and every object is visited once. The loop is written
    out, with locals and class identity for type tests: it runs for every object of every
    resource released.

    Per object: a ``code`` that is a string is a Coding's (or a Quantity's) and implies labels
    with its system; one that is an object or a list is an element holding CodeableConcepts;
    anything else is malformed. A ``display`` without a code is a Reference's, a ``text`` that
    is an object a Narrative: text that may mention other data. A ``coding`` must be a list of
    objects. An object with a ``resourceType`` is the resource or one nested in it: its labels
    are read (:func:`_resource`)."""
    found = _Read(set(), references=set() if with_references else None)
    labels = found.labels
    lookups = INDEX.lookups
    learn = INDEX.learn
    references = found.references
    level: list[Any] = [resource if isinstance(resource, dict) else dict(resource)]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_NESTING:
            found.problem = f"it nests deeper than {MAX_NESTING} levels"
            return found
        below: list[Any] = []
        push = below.append
        for value in level:
            if value.__class__ is not dict:
                for item in value:
                    kind = item.__class__
                    if kind is dict or kind is list:
                        push(item)
                continue
            for item in value.values():
                kind = item.__class__
                if kind is dict or kind is list:
                    push(item)
            if "code" in value:
                code = value["code"]
                kind = code.__class__
                if kind is str:
                    system = value.get("system")
                    if system.__class__ is str:
                        lookup = lookups[system] if system in lookups else learn(system)
                        if lookup is not None:
                            implied = lookup(code)
                            if implied:
                                labels |= implied
                    elif system is not None:
                        found.problem = "a Coding's system is not a string"
                elif kind is not dict and kind is not list:
                    found.problem = "a Coding's code is not a string"
            elif "display" in value:
                found.mentions = True
            if "coding" in value:
                coding = value["coding"]
                if coding.__class__ is not list:
                    found.problem = "a coding element is not a list of Codings"
                else:
                    for item in coding:
                        if item.__class__ is not dict:
                            found.problem = "a coding element holds something else than Codings"
            if "text" in value and value["text"].__class__ is dict:
                found.mentions = True
            if "resourceType" in value:
                _resource(value, found)
            if references is not None and "reference" in value:
                reference = value["reference"]
                if reference.__class__ is str:
                    references.add(reference)
        level = below
    return found


def _resource(value: dict[str, Any], found: _Read) -> None:
    """The security labels of the resource or of one nested in it (``meta.security``, and the
    labels some types carry as data: DocumentReference.securityLabel,
    Composition.confidentiality), and its coded elements' shape."""
    if "meta" in value:  # present, even as null (which FHIR JSON does not allow)
        meta = value["meta"]
        if meta.__class__ is not dict:
            found.problem = "its meta is not an object"
            return
        if "security" in meta:
            _security(meta["security"], found)
    if "securityLabel" in value:
        concepts = value["securityLabel"]
        for concept in concepts if concepts.__class__ is list else ():
            coding = concept.get("coding") if concept.__class__ is dict else None
            if coding.__class__ is list:
                _security(coding, found)
    confidentiality = value.get("confidentiality")
    if confidentiality.__class__ is str:
        _security([{"code": confidentiality}], found)
    rtype = value.get("resourceType")
    if rtype.__class__ is str:
        paths = _CODED_PATHS.get(rtype)
        if paths is None:
            paths = _coded_paths(rtype)
            if len(_CODED_PATHS) < 1024:  # types come from upstream data: bounded
                _CODED_PATHS[rtype] = paths
        for first, rest in paths:
            item = value.get(first)
            if item is None or (not rest and item.__class__ is dict):
                continue  # absent, or the usual CodeableConcept
            if not _holds_codings(item, rest):
                found.problem = f"its {'.'.join((first, *rest))} does not hold Codings"


def _security(security: Any, found: _Read) -> None:
    if security.__class__ is not list:
        found.problem = "its meta.security is not a list of labels"
        return
    for coding in security:
        code = coding.get("code") if coding.__class__ is dict else None
        if code.__class__ is not str:
            found.problem = "a security label has no code"
            continue
        system = coding.get("system")
        if system is not None and system.__class__ is not str:
            found.problem = "a security label's system is not a string"
        code = label(code)
        found.labels.add(code)
        rank = confidentiality_rank(code, system)
        if rank is not None:
            found.level = max(found.level, rank)


def _holds_codings(value: Any, rest: tuple[str, ...]) -> bool:
    """Whether ``value`` -- and, through lists and ``rest`` of a path, every value below it --
    is a CodeableConcept or Coding (an object) or a list of them."""
    items = value if value.__class__ is list else (value,)
    for item in items:
        if item.__class__ is not dict:
            return False
        if rest:
            below = item.get(rest[0])
            if below is not None and not _holds_codings(below, rest[1:]):
                return False
    return True


def _coded_paths(resource_type: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The ``coded_elements`` paths that are a CodeableConcept or Coding in this resource type
    (``category`` is one in Observation, a code in AllergyIntolerance), as (first, rest)."""
    coded = coded_elements(resource_type)
    return tuple((path[0], path[1:]) for path in CODED_ELEMENTS if ".".join(path) in coded)


_CODED_PATHS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {}
"""``_coded_paths`` by resource type, filled as types are met (a plain dict: read per resource)."""


def references(resource: Mapping[str, Any]) -> frozenset[str]:
    """Every literal reference in the resource (contained resources included)."""
    return frozenset(_read(resource, True).references or ())


FactsKey = tuple[
    str,
    str,
    frozenset[str],
    int,
    frozenset[tuple[str, str]],
    fhirtime.Interval | None,
    frozenset[str],
    str | None,
    bool,
]
"""The fields of :class:`ResourceFacts`, in order, as a plain tuple (:func:`facts_key`)."""

_NONE: frozenset[Any] = frozenset()


def facts_key(
    resource: Mapping[str, Any],
    *,
    with_references: bool = False,
    with_codes: bool = True,
    with_date: bool = True,
    with_reference: bool = True,
) -> FactsKey:
    """The facts of one resource as a tuple, ``ResourceFacts(*key)`` field by field: hashable
    and cheap to build, so a caller can remember what it concluded from equal facts. What was
    not asked for is left empty (``with_reference``: the resource's own ``Type/id``)."""
    resource_type = str(resource.get("resourceType", ""))
    reference = ""
    if with_reference:
        resource_id = resource.get("id")
        reference = f"{resource_type}/{resource_id}" if isinstance(resource_id, str) else ""
    found = _read(resource, with_references)
    return (
        resource_type,
        reference,
        frozenset(found.labels) if found.labels else _NONE,
        found.level,
        _code_pairs(resource) if with_codes else _NONE,
        clinical_date(resource) if with_date else None,
        frozenset(found.references) if found.references else _NONE,
        found.problem,
        found.mentions,
    )


def facts(
    resource: Mapping[str, Any],
    *,
    with_references: bool = False,
    with_codes: bool = True,
    with_date: bool = True,
) -> ResourceFacts:
    """Read the facts of one resource. References, codes and the clinical date are read only
    when asked: the decision engine asks for what its provisions compare (most compare neither
    codes nor dates, and only ``data.meaning = dependents`` needs references)."""
    resource_type = str(resource.get("resourceType", ""))
    resource_id = resource.get("id")
    found = _read(resource, with_references)
    return ResourceFacts(
        resource_type=resource_type,
        reference=f"{resource_type}/{resource_id}" if isinstance(resource_id, str) else "",
        labels=frozenset(found.labels),
        level=found.level,
        codes=_code_pairs(resource) if with_codes else frozenset(),
        date=clinical_date(resource) if with_date else None,
        references=frozenset(found.references) if found.references else frozenset(),
        undecidable=found.problem,
        mentions=found.mentions,
    )
