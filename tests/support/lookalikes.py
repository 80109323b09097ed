"""Responses made of look-alike resources, for proving that what the gateway concludes once per
shape of resource (and reuses for every resource of that shape) equals what it concludes resource
by resource (CONSENT.md C-10, C-26).

A response is drawn from the fixture patients' records (every resource type they hold), each
resource in several copies: some differ only where no rule looks (ids, versions, dates, values,
display and narrative text) and so share a shape; others carry one or more changes a rule must
notice -- a sensitive code in an odd place (an extension, a component, a contained resource, an
element no list names, a code in lower case or with a system alias), a security label (any case,
with and without a system, confidentiality levels), a malformed shape (a code that is a number, a
``coding`` that is an object, a ``meta`` that is a list...), a reference display, a narrative, a
contained resource, another patient (the token's other patient, or one it does not reach),
nesting deeper than any rule reads, another resource type, a missing id.

The patients are :data:`PATIENT` (the request's), :data:`OTHER` (another patient the token acts
for) and :data:`STRANGER` (one it does not reach).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

PATIENT = "pat-1"
OTHER = "pat-2"
STRANGER = "pat-3"

_ROOT = Path(__file__).resolve().parents[2]
_DATA = _ROOT / "fixtures" / "data"
_CODES = _ROOT / "consent" / "data" / "sensitive-codes"
_OWNERS = {
    "pat-samuel-reed": PATIENT,
    "pat-amelia-rossi": PATIENT,
    "pat-leo-garcia": OTHER,
    "pat-daniel-novak": STRANGER,
}
_SYSTEM_NAMES = {
    "http://snomed.info/sct": ["http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.96"],
    "http://loinc.org": ["http://loinc.org", "HTTP://LOINC.ORG/"],
}
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


@cache
def _records() -> tuple[dict[str, Any], ...]:
    """The fixture patients' resources, their patients renamed to the three above."""
    found: list[dict[str, Any]] = []
    for name in (
        "14-patient-samuel-reed.json",
        "10-patient-amelia-rossi.json",
        "12-patient-leo-garcia.json",
        "11-patient-daniel-novak.json",
        "00-organization-practitioners.json",
    ):
        raw = (_DATA / name).read_bytes()
        for old, new in _OWNERS.items():
            raw = raw.replace(old.encode(), new.encode())
        found += [e["resource"] for e in orjson.loads(raw)["entry"] if "resource" in e]
    return tuple(found)


@cache
def _sensitive_codings() -> tuple[dict[str, str], ...]:
    """Codings that imply a sensitivity label, written as upstreams write them: lists' own
    codes, system aliases, ICD-10 codes from the ranges in any case and with odd spacing."""
    found: list[dict[str, str]] = []
    for path in sorted(_CODES.glob("*.json")):
        category = orjson.loads(path.read_bytes())
        for entry in category.get("codes", ())[:3]:
            for system in _SYSTEM_NAMES.get(entry["system"], [entry["system"]]):
                found.append({"system": system, "code": entry["code"]})
        for span in category.get("icd10_ranges", ())[:2]:
            low = span["from"]
            found += [
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": f"{low}.9"},
                {"system": "urn:oid:2.16.840.1.113883.6.3", "code": f" {low.lower()}9 "},
            ]
    return tuple(found)


_LABELS = (
    {"system": V3_CONFIDENTIALITY, "code": "R"},
    {"system": V3_CONFIDENTIALITY, "code": "v"},
    {"system": V3_CONFIDENTIALITY, "code": "N"},
    {"code": "R"},
    {"system": "urn:other", "code": "V"},
    {"system": V3_ACT_CODE, "code": "PSY"},
    {"system": V3_ACT_CODE, "code": " hiv"},
    {"system": V3_ACT_CODE, "code": "ETH"},
    {"code": "sud"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED"},
)
_MALFORMED: tuple[tuple[str, Any], ...] = (
    ("code", 5),
    ("code", True),
    ("coding", {"system": "http://loinc.org", "code": "1"}),
    ("coding", [5]),
    ("coding", "x"),
    ("system", 7),
    ("meta", []),
    ("meta", None),
    ("security", {"code": "R"}),
    ("security", [{"system": "x"}]),
    ("security", [{"code": "R", "system": 3}]),
    ("category", "vital-signs"),
    ("category", [5]),
    ("securityLabel", [{"coding": [{"code": 5}]}]),
    ("confidentiality", "R"),
)
_PLACES = (
    "extension",
    "component",
    "note",
    "x-unknown",
    "valueCodeableConcept",
    "modifierExtension",
)


def _dicts(value: Any, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            _dicts(item, found)
    elif isinstance(value, list):
        for item in value:
            _dicts(item, found)
    return found


IDS = ("obs-1", "obs-2", "enc-1", "cond-1")
"""Ids that consents name (``data``), among the random ones."""
CODES = (
    {"system": "http://loinc.org", "code": "4548-4"},
    {"system": "http://loinc.org", "code": "8867-4"},
    {"system": "http://loinc.org", "code": "44249-1"},
    {"code": "4548-4"},
)
"""Codes that consents name (``code``), with and without a system."""


def _vary(resource: dict[str, Any], rng: random.Random) -> None:
    """Change what a rule compares only when a provision names it: the id (random, or one a
    consent names), versions, clinical dates (around the years consents name), quantities,
    display and narrative text."""
    n = rng.randrange(10**9)
    resource["id"] = rng.choice(IDS) if rng.random() < 0.1 else f"id-{n}"
    meta = resource.get("meta")
    if isinstance(meta, dict):
        meta["versionId"] = str(n % 97)
        meta["lastUpdated"] = f"20{19 + n % 4}-0{1 + n % 9}-1{n % 10}T10:00:00Z"
    for item in _dicts(resource, []):
        for key in ("effectiveDateTime", "onsetDateTime", "authoredOn", "recordedDate", "start"):
            if isinstance(item.get(key), str):
                item[key] = rng.choice(("2020", "2021-03-04", "2021-09", "2022-01-01T10:00:00Z"))
        if isinstance(item.get("value"), int | float) and not isinstance(item.get("value"), bool):
            item["value"] = n % 300
        if isinstance(item.get("display"), str):
            item["display"] = f"text {n % 13}"
        if isinstance(item.get("div"), str):
            item["div"] = f'<div xmlns="http://www.w3.org/1999/xhtml">{n % 7}</div>'


def _sensitive_code(resource: dict[str, Any], rng: random.Random) -> None:
    coding = dict(rng.choice(_sensitive_codings()))
    target = rng.choice(_dicts(resource, []))
    place = rng.choice(_PLACES)
    concept = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}, coding]}
    if place in ("extension", "modifierExtension"):
        target[place] = [{"url": "http://example.org/x", "valueCodeableConcept": concept}]
    elif place == "component":
        target[place] = [{"code": concept}]
    elif place == "note":
        target[place] = [{"text": "see", "extension": [{"url": "u", "valueCoding": coding}]}]
    else:
        target[place] = concept


def _label(resource: dict[str, Any], rng: random.Random) -> None:
    meta = resource.setdefault("meta", {})
    if isinstance(meta, dict):
        security = meta.setdefault("security", [])
        if isinstance(security, list):
            security.append(dict(rng.choice(_LABELS)))


def _malformed(resource: dict[str, Any], rng: random.Random) -> None:
    key, value = rng.choice(_MALFORMED)
    if key == "security":
        meta = resource.setdefault("meta", {})
        if isinstance(meta, dict):
            meta[key] = copy.deepcopy(value)
        return
    target = resource if key in ("meta", "category", "securityLabel", "confidentiality") else None
    if target is None:
        target = rng.choice(_dicts(resource, []))
        if key == "system":
            target.setdefault("code", "x")
    target[key] = copy.deepcopy(value)


def _display(resource: dict[str, Any], rng: random.Random) -> None:
    references = [d for d in _dicts(resource, []) if isinstance(d.get("reference"), str)]
    if references:
        rng.choice(references)["display"] = "Major depressive episode"
    else:
        resource["basedOn"] = [{"display": "an order"}]


def _narrative(resource: dict[str, Any], rng: random.Random) -> None:
    resource["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
    }


def _contained(resource: dict[str, Any], rng: random.Random) -> None:
    inner = copy.deepcopy(rng.choice(_records()))
    inner.pop("contained", None)
    inner["id"] = f"c{rng.randrange(9)}"
    for change in rng.sample(_RELEVANT[:4], rng.randrange(2)):
        change(inner, rng)
    resource.setdefault("contained", []).append(inner)


def _patient(resource: dict[str, Any], rng: random.Random) -> None:
    who = rng.choice((OTHER, STRANGER, PATIENT))
    key = rng.choice(("subject", "patient", "performer", "asserter", "recorder"))
    reference = {"reference": f"Patient/{who}"}
    resource[key] = [reference] if key == "performer" else reference


def _deep(resource: dict[str, Any], rng: random.Random) -> None:
    value: Any = {"url": "http://example.org/deep", "valueString": "x"}
    for level in range(rng.choice((30, 60, 120))):
        value = [value] if level % 2 else {"url": "u", "extension": value}
    resource["extension"] = [value]


def _named(resource: dict[str, Any], rng: random.Random) -> None:
    """A code or a reference a consent names."""
    if rng.random() < 0.5:
        resource["code"] = {"coding": [dict(rng.choice(CODES))]}
    else:
        resource["encounter"] = {"reference": "Encounter/enc-1"}


def _retype(resource: dict[str, Any], rng: random.Random) -> None:
    resource["resourceType"] = rng.choice(("Practitioner", "Basic", "NotAType", "Observation"))


def _no_id(resource: dict[str, Any], rng: random.Random) -> None:
    if rng.random() < 0.5:
        resource.pop("id", None)
    else:
        resource["id"] = 5


_RELEVANT: tuple[Callable[[dict[str, Any], random.Random], None], ...] = (
    _sensitive_code,
    _label,
    _malformed,
    _display,
    _narrative,
    _contained,
    _patient,
    _deep,
    _retype,
    _no_id,
    _named,
)


@st.composite
def responses(draw: st.DrawFn, max_size: int = 40) -> list[dict[str, Any]]:
    """A list of resources such as a search answers: a few originals, each in look-alike copies,
    some of them changed where a rule looks."""
    rng = draw(st.randoms(use_true_random=False))
    records = _records()
    originals = [
        records[i] for i in draw(st.lists(st.integers(0, len(records) - 1), min_size=1, max_size=5))
    ]
    found: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, max_size))):
        resource = copy.deepcopy(rng.choice(originals))
        _vary(resource, rng)
        if rng.random() < 0.4:
            for change in rng.sample(_RELEVANT, rng.choice((1, 1, 2, 3))):
                change(resource, rng)
        found.append(resource)
    return found
