"""The FHIR R4 Consent resource as this gateway stores it (hl7.org/fhir/R4/consent.html;
CONSENT.md C-01, C-05).

``validate`` checks a Consent against the R4B model of fhir.resources (structure, cardinality,
datatypes and the id pattern) and then against the rules the model does not check, and raises
one :class:`~consent.errors.ConsentInvalid` listing every problem:

- ``ppc-1``   policy or policyRule is present (R4 invariant)
- ``ppc-2``   a patient-privacy Consent names a patient (R4 invariant)
- ``per-1``   every Period has start <= end (R4 invariant)
- ``structure`` the R4B model's checks, and category 1..* (which the model leaves unchecked)
- ``binding`` status, provision.type and provision.data.meaning use their R4 required value sets
- ``gw-1``    scope is patient-privacy: the gateway stores privacy consents only
- ``gw-2``    the root provision exists and has a type (permit or deny), so a Consent always says
              something; nested provisions without a type inherit their parent's
- ``gw-3``    patient is a literal reference ``Patient/[id]`` (it is how consents are indexed)
- ``gw-4``    provisions nest at most ``MAX_DEPTH`` levels

Any JSON at all may arrive here (SECURITY.md P-22): operators as values (``{"$ne": null}``), wrong
JSON types, huge numbers, deep nesting, megabyte strings. The shape is checked first (nesting at
most ``MAX_NESTING`` levels, then the R4B model), and every rule reads only values of the type it
expects, so whatever the body the only error raised is :class:`ConsentInvalid`, naming elements;
bodies are bounded in size (``MAX_ELEMENTS``), issues, element names and messages in number and
length.

``app_grant`` builds the Consent written when a patient approves an app on the authorization
screen (C-05); ``grant_terms`` reads its terms back for the patient's "Connected apps" (C-19).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.resource import Resource

from consent import fhirtime, references
from consent.codes import (
    CLIENT_SYSTEM,
    CONSENT_SCOPE,
    LOINC,
    PATIENT_PRIVACY,
    R4_ONLY_TYPES,
    RESOURCE_TYPES,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)
from consent.errors import ConsentInvalid, InvalidParameter, Issue

MAX_DEPTH = 8
MAX_NESTING = 40
"""JSON nesting (objects and arrays) a Consent may have: a Consent at ``MAX_DEPTH`` provisions with
extensions needs about 30; deeper bodies are refused before the model (whose validators recurse)
sees them."""
MAX_ELEMENTS = 10_000
"""JSON values a Consent may hold (a real one holds a few hundred)."""
MAX_ISSUES = 50
_MAX_NAME = 64
_MAX_MESSAGE = 200
STATUSES = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})
PROVISION_TYPES = frozenset({"permit", "deny"})
DATA_MEANINGS = frozenset({"instance", "related", "dependents", "authoredby"})
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_GRANULAR_PARAMS = frozenset({"category", "code"})


def fhir_id(value: object, what: str = "id") -> str:
    """``value`` if it is a FHIR id (R4 datatypes, ``id``: 1-64 of ``A-Z a-z 0-9 - .``), else
    :class:`InvalidParameter`. Everything that becomes part of a MongoDB query passes here."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) or value.strip(".") == "":
        raise InvalidParameter(f"{what} must be a FHIR id (1-64 characters of A-Z a-z 0-9 - .)")
    return value


def reference_key(reference: object) -> str | None:
    """A comparable key for a FHIR Reference: ``Type/id`` for a literal reference (absolute URLs
    and ``_history`` suffixes reduced), ``system|value`` for a logical (identifier) one."""
    if not isinstance(reference, Mapping):
        return None
    written = reference.get("reference")
    if isinstance(written, str) and written:
        found = references.literal(written)
        return f"{found[0]}/{found[1]}" if found else None
    identifier = reference.get("identifier")
    if isinstance(identifier, Mapping):
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and isinstance(value, str):
            return f"{system}|{value}"
    return None


def client_key(client_id: str) -> str:
    """The reference key of a registered SMART client (see ``CLIENT_SYSTEM``)."""
    return f"{CLIENT_SYSTEM}|{client_id}"


def patient_id_of(consent: Mapping[str, Any]) -> str | None:
    """The id in ``Consent.patient`` when it is a literal ``Patient/[id]`` reference."""
    patient = consent.get("patient")
    written = patient.get("reference") if isinstance(patient, Mapping) else None
    found = references.patient_id(written) if isinstance(written, str) else None
    return found if references.is_id(found) else None


def provisions(consent: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], int]]:
    """Every provision with its path (``provision.provision[1]``) and depth (root = 1)."""
    stack: list[tuple[str, Any, int]] = [("provision", consent.get("provision"), 1)]
    while stack:
        path, node, depth = stack.pop()
        if not isinstance(node, Mapping):
            continue
        yield path, node, depth
        children = node.get("provision")
        if isinstance(children, list):
            for index in reversed(range(len(children))):
                stack.append((f"{path}.provision[{index}]", children[index], depth + 1))


def actor_keys(consent: Mapping[str, Any]) -> list[str]:
    """The reference keys of every actor named anywhere in the Consent."""
    keys: set[str] = set()
    for _, node, _ in provisions(consent):
        actors = node.get("actor")
        for actor in actors if isinstance(actors, list) else ():
            key = reference_key(actor.get("reference")) if isinstance(actor, Mapping) else None
            if key:
                keys.add(key)
    return sorted(keys)


def _name(part: object) -> str:
    """One step of an element path, cut short: a crafted body may have megabyte-long keys."""
    text = str(part)
    return text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 1] + "…"


def _location(loc: Sequence[object]) -> str:
    text = "Consent"
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{_name(part)}"
    return text


def _shape_issue(resource: Mapping[str, Any]) -> Issue | None:
    """A body too deep (more than ``MAX_NESTING`` levels) or too large (more than
    ``MAX_ELEMENTS`` values) to be a Consent, before the model spends time on it. Iterative, so
    no body can exhaust the stack here."""
    stack: list[tuple[Any, tuple[object, ...]]] = [(dict(resource), ())]
    count = 0
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_NESTING:
            return Issue("structure", _location(path), f"nests deeper than {MAX_NESTING} levels")
        count += len(value)
        if count > MAX_ELEMENTS:
            return Issue("structure", "Consent", f"has more than {MAX_ELEMENTS} elements")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(item, dict | list):
                stack.append((item, (*path, key)))
    return None


def _structure_issues(resource: Mapping[str, Any]) -> list[Issue]:
    try:
        Consent.model_validate(dict(resource))
    except pydantic.ValidationError as error:
        return [
            Issue("structure", _location(e["loc"]), _message(e["msg"]))
            for e in error.errors(include_url=False, include_context=False, include_input=False)
        ]
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError):
        # The model's own validators failing on input they did not expect (a contained resource
        # of a type the models lack raises KeyError): still the body's fault.
        return [Issue("structure", "Consent", "the Consent cannot be read as a FHIR R4 Consent")]
    return []


def _contained_issues(resource: Mapping[str, Any]) -> list[Issue]:
    """Contained resources must be of a type the models know (they look it up by name)."""
    issues: list[Issue] = []
    for index, item in enumerate(_listed(resource.get("contained"))):
        kind = item.get("resourceType") if isinstance(item, Mapping) else None
        if isinstance(kind, str) and not _known_type(kind):
            where = f"Consent.contained[{index}].resourceType"
            issues.append(Issue("structure", where, "not a FHIR R4 resource type"))
    return issues


def _known_type(name: str) -> bool:
    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except (KeyError, ValueError, AttributeError, ImportError):
        return False


def _message(text: str) -> str:
    first = text.split("\n")[0].strip()
    return first if len(first) <= _MAX_MESSAGE else first[: _MAX_MESSAGE - 1] + "…"


def _one_of(value: object, allowed: frozenset[str]) -> bool:
    """``value`` is one of the ``allowed`` codes (a crafted value may be any JSON, even a dict)."""
    return isinstance(value, str) and value in allowed


def _listed(value: object) -> list[Any]:
    """The items of a JSON array; nothing for any other value."""
    return value if isinstance(value, list) else []


def _has_code(concept: Any, system: str, code: str) -> bool:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return any(
        isinstance(c, Mapping) and c.get("code") == code and c.get("system") in (system, None)
        for c in _listed(codings)
    )


def _period_issue(value: Any, where: str) -> list[Issue]:
    if not isinstance(value, Mapping) or "start" not in value or "end" not in value:
        return []
    start, end = fhirtime.interval(value["start"]), fhirtime.interval(value["end"])
    if start is not None and end is not None and start[0] > end[1]:
        return [Issue("per-1", where, "a Period's start must not be after its end")]
    return []


def _rule_issues(resource: Mapping[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    if not _one_of(resource.get("status"), STATUSES):
        issues.append(
            Issue("binding", "Consent.status", f"status must be one of {sorted(STATUSES)}")
        )
    if not resource.get("policy") and not resource.get("policyRule"):
        issues.append(Issue("ppc-1", "Consent", "either a policy or a policyRule is required"))
    if not resource.get("category"):
        issues.append(Issue("structure", "Consent.category", "at least one category is required"))
    privacy = _has_code(resource.get("scope"), CONSENT_SCOPE, PATIENT_PRIVACY)
    if not privacy:
        issues.append(Issue("gw-1", "Consent.scope", "scope must be patient-privacy"))
    if privacy and not resource.get("patient"):
        issues.append(Issue("ppc-2", "Consent.patient", "a privacy consent must name a patient"))
    elif resource.get("patient") and patient_id_of(resource) is None:
        issues.append(Issue("gw-3", "Consent.patient", "patient must reference Patient/[id]"))
    root = resource.get("provision")
    if not isinstance(root, Mapping) or "type" not in root:
        issues.append(
            Issue("gw-2", "Consent.provision", "a root provision with a type is required")
        )
    for path, node, depth in provisions(resource):
        where = f"Consent.{path}"
        if depth > MAX_DEPTH:
            issues.append(Issue("gw-4", where, f"provisions nest at most {MAX_DEPTH} deep"))
            break
        if "type" in node and not _one_of(node["type"], PROVISION_TYPES):
            issues.append(Issue("binding", f"{where}.type", "type must be permit or deny"))
        issues += _period_issue(node.get("period"), f"{where}.period")
        issues += _period_issue(node.get("dataPeriod"), f"{where}.dataPeriod")
        for index, data in enumerate(_listed(node.get("data"))):
            if isinstance(data, Mapping) and not _one_of(data.get("meaning"), DATA_MEANINGS):
                issues.append(
                    Issue("binding", f"{where}.data[{index}].meaning", "unknown data meaning")
                )
    return issues


def validate(resource: object) -> dict[str, Any]:
    """The Consent as a plain dict, or :class:`ConsentInvalid` naming every rule it breaks (at
    most ``MAX_ISSUES`` of them). Raises nothing else, whatever ``resource`` is."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Consent":
        raise ConsentInvalid([Issue("structure", "Consent", "the resource must be a Consent")])
    shape = _shape_issue(resource)
    if shape is not None:
        raise ConsentInvalid([shape])
    issues = _contained_issues(resource)
    if not issues:  # the model would stumble on them: report them alone
        issues = _structure_issues(resource)
    issues += _rule_issues(resource)
    if len(issues) > MAX_ISSUES:
        more = Issue("structure", "Consent", f"and {len(issues) - MAX_ISSUES + 1} more problems")
        issues = [*issues[: MAX_ISSUES - 1], more]
    if issues:
        raise ConsentInvalid(issues)
    return dict(resource)


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _resource_type(name: str) -> str:
    if name in R4_ONLY_TYPES:
        return name
    try:
        found = issubclass(get_fhir_model_class(name), Resource)
    except (KeyError, ValueError, AttributeError, ImportError):
        found = False
    if not found:
        raise InvalidParameter(f"{name!r} is not a FHIR resource type")
    return name


def parse_granular_scope(scope: str) -> tuple[str, list[dict[str, str]]]:
    """``patient/Observation.rs?category=<system>|<code>`` -> the resource type and the codings
    it is limited to (SMART App Launch 2.2 "Finer-grained resource constraints using search
    parameters"). Only the ``category`` and ``code`` token parameters are understood."""
    head, sep, query = scope.partition("?")
    resource_type = head.partition("/")[2].partition(".")[0]
    if not sep or not query:
        raise InvalidParameter(f"{scope!r} is not a granular scope")
    codings: list[dict[str, str]] = []
    for name, token in parse_qsl(query, keep_blank_values=True):
        if name not in _GRANULAR_PARAMS or not token:
            raise InvalidParameter(f"granular scope parameter {name!r} is not supported")
        system, bar, code = token.rpartition("|")
        if not code:
            raise InvalidParameter(f"{token!r} is not a token")
        codings.append({"system": system, "code": code} if bar and system else {"code": code})
    return _resource_type(resource_type), codings


def app_grant(
    patient_id: str,
    client_id: str,
    client_name: str,
    purposes: Sequence[str],
    resource_types: Sequence[str],
    granular_scopes: Sequence[str],
    start: datetime,
    end: datetime | None,
    recorded_by: str | None = None,
    sensitivity_labels: Sequence[str] = (),
) -> dict[str, Any]:
    """The Consent a patient gives by approving an app (C-05): permit the app (actor, role IRCP),
    for its declared purposes, to access the granted resource types, from ``start`` to ``end``.

    A granular scope (``patient/Observation.rs?category=...|laboratory``) for a type not granted
    whole becomes a nested ``deny`` of that type with a nested ``permit`` of the granted codes, so
    only those resources of the type are released. ``recorded_by`` (``Patient/x`` or
    ``RelatedPerson/y``, the person who approved) becomes ``performer``.

    ``sensitivity_labels`` (v3-ActCode: PSY, SUD...) are the sensitive categories the patient
    ticked (C-26). They become a nested ``permit`` whose ``securityLabel`` names them, with a
    ``permit`` under it naming the confidentiality levels R and V: a resource with those
    sensitivity codes (and no others) is released, whether or not it is also marked restricted,
    while a resource marked restricted with no sensitivity code, or with one not ticked, is not.
    The other nested provisions (granular scopes) still deny what they deny.
    """
    fhir_id(patient_id, "patient id")
    if not client_id:
        raise InvalidParameter("client id is required")
    whole = [_resource_type(name) for name in dict.fromkeys(resource_types)]
    limited: dict[str, list[dict[str, str]]] = {}
    for scope in granular_scopes:
        resource_type, codings = parse_granular_scope(scope)
        if resource_type not in whole:
            limited.setdefault(resource_type, []).extend(codings)
    period = {"start": fhirtime.fhir_instant(start)}
    if end is not None:
        period["end"] = fhirtime.fhir_instant(end)
    root: dict[str, Any] = {
        "type": "permit",
        "period": period,
        "actor": [
            {
                "role": {
                    "coding": [_coding(V3_PARTICIPATION_TYPE, "IRCP", "information recipient")]
                },
                "reference": {
                    "type": "Device",
                    "identifier": {"system": CLIENT_SYSTEM, "value": client_id},
                    "display": client_name,
                },
            }
        ],
        "class": [_coding(RESOURCE_TYPES, name) for name in [*whole, *limited]],
    }
    if purposes:
        root["purpose"] = [_coding(V3_ACT_REASON, code) for code in dict.fromkeys(purposes)]
    nested: list[dict[str, Any]] = []
    if limited:
        nested += [
            {
                "type": "deny",
                "class": [_coding(RESOURCE_TYPES, name)],
                "provision": [
                    {
                        "type": "permit",
                        "class": [_coding(RESOURCE_TYPES, name)],
                        "code": [{"coding": [coding]} for coding in codings],
                    }
                ],
            }
            for name, codings in limited.items()
        ]
    labels = [label.upper() for label in dict.fromkeys(sensitivity_labels)]
    if labels:
        nested.append(
            {
                "type": "permit",
                "securityLabel": [_coding(V3_ACT_CODE, label) for label in labels],
                "provision": [
                    {
                        "type": "permit",
                        "securityLabel": [
                            _coding(V3_CONFIDENTIALITY, "R"),
                            _coding(V3_CONFIDENTIALITY, "V"),
                        ],
                    }
                ],
            }
        )
    if nested:
        root["provision"] = nested
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [_coding(CONSENT_SCOPE, PATIENT_PRIVACY, "Privacy Consent")]},
        "category": [{"coding": [_coding(LOINC, "59284-0", "Patient Consent")]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": period["start"],
        "policyRule": {"coding": [_coding(V3_ACT_CODE, "OPTIN", "opt-in")]},
        "provision": root,
    }
    if recorded_by:
        consent["performer"] = [{"reference": recorded_by}]
    return validate(consent)


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """What a permit Consent lets its apps see, read back for the patient's pages (C-19)."""

    types: tuple[str, ...]
    """Resource types permitted whole; ``("*",)`` when the permit names no type."""
    codes: Mapping[str, tuple[str, ...]]
    """Types permitted only for some codes (a granular scope): type -> ``system|code``."""
    labels: tuple[str, ...]
    """Sensitivity codes a nested permit names (the sensitive categories the patient ticked)."""
    purposes: tuple[str, ...]
    start: str | None
    end: str | None


def grant_terms(consent: Mapping[str, Any]) -> GrantTerms:
    """The terms of a permit Consent as :func:`app_grant` writes them (a nested deny of a type
    with a permit of codes under it; a nested permit naming sensitivity codes). Read from a
    stored, valid Consent; other nested provisions are not reflected here."""
    root = consent.get("provision") or {}
    classes = [
        c.get("code", "") for c in root.get("class") or () if c.get("system") == RESOURCE_TYPES
    ]
    codes: dict[str, tuple[str, ...]] = {}
    labels: list[str] = []
    for child in root.get("provision") or ():
        kinds = [c.get("code", "") for c in child.get("class") or ()]
        if child.get("type") == "deny" and len(kinds) == 1:
            permitted = [
                f"{coding.get('system', '')}|{coding.get('code', '')}"
                for grandchild in child.get("provision") or ()
                if grandchild.get("type") == "permit"
                for concept in grandchild.get("code") or ()
                for coding in concept.get("coding") or ()
            ]
            codes[kinds[0]] = tuple(permitted)
        elif child.get("type") == "permit" and not kinds:
            labels += [
                str(label.get("code", "")).upper()
                for label in child.get("securityLabel") or ()
                if label.get("system") == V3_ACT_CODE
            ]
    period = root.get("period") or {}
    purposes = [
        p.get("code", "") for p in root.get("purpose") or () if p.get("system") == V3_ACT_REASON
    ]
    whole = [name for name in classes if name not in codes]
    return GrantTerms(
        tuple(whole) or ("*",),
        codes,
        tuple(dict.fromkeys(labels)),
        tuple(purposes),
        period.get("start"),
        period.get("end"),
    )
