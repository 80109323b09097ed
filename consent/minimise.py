"""Data minimisation per purpose of use (GDPR Art. 5(1)(c); CONSENT.md C-15, C-16, C-18).

Each purpose of use (v3-ActReason code) has a profile in ``consent/data/minimisation/<CODE>.json``
listing the top-level elements each resource type keeps. The gateway applies it to every released
resource after the consent decision, with the purposes the :class:`~consent.decide.Decision` names:

- An element the profile does not keep is removed. ``id``, ``meta``, ``resourceType``,
  ``implicitRules`` and ``modifierExtension`` are always kept (a modifier may not be dropped
  silently: FHIR R4 "Modifier Elements").
- When anything is removed, the narrative (``text``) goes too (it may describe what was removed)
  and ``meta.security`` gains ``REDACTED`` (v3-ObservationValue), so the app knows.
- ``deidentify`` profiles (research, C-16) remove direct identifiers from the resources that
  describe people, cut birth and death dates to the year, and reduce every Reference to its
  ``reference`` and ``type``.
- Several purposes: a resource keeps only what every purpose's profile keeps, and is de-identified
  if any of them de-identifies. No purpose: only the elements that are always kept.
- Minimisation never mutates its input; it returns new dicts.

``_elements`` and ``_summary`` (``consent.subsetting``) are applied afterwards, on top (C-17).
``release_bundle`` rebuilds a Bundle from the released entries and never reports a ``total``
larger than what the caller may see (C-18).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Final

import orjson

from consent.codes import REDACTED
from consent.errors import UnknownPurpose
from consent.subsetting import ALWAYS, clone, element_info

PEOPLE: Final = frozenset({"Patient", "RelatedPerson", "Person", "Practitioner"})
"""Resource types that describe a person and lose direct identifiers when de-identified."""
_REMOVED_FROM_PEOPLE = ("name", "telecom", "photo", "contact", "_birthDate", "_deceasedDateTime")
_IDENTIFIER_KEEPS = ("use", "type", "system")
_ADDRESS_KEEPS = ("use", "type", "state", "country")
_REFERENCE_KEYS = frozenset({"id", "extension", "reference", "type", "identifier", "display"})
_DROP: Final = object()


@dataclass(frozen=True, slots=True)
class Profile:
    """What one purpose of use (or a combination of them) keeps."""

    purposes: tuple[str, ...]
    keep: Mapping[str, frozenset[str] | None]
    """Resource type -> element names kept (``None``: every element)."""
    default: frozenset[str] | None
    """For resource types not in ``keep``."""
    deidentify: bool

    def elements(self, resource_type: str) -> frozenset[str] | None:
        return self.keep.get(resource_type, self.default)

    def keeps_everything(self, resource_type: str) -> bool:
        """True when :meth:`apply` would return an unchanged copy for this type (contained
        resources included: they fall back on the same default)."""
        return not self.deidentify and self.elements(resource_type) is None and self.default is None

    def apply(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """The resource minimised (a new dict)."""
        return self._apply(resource)[0]

    def _apply(self, resource: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        resource_type = str(resource.get("resourceType", ""))
        kept = self.elements(resource_type)
        info = element_info(resource_type)
        out: dict[str, Any] = {}
        changed = False
        for key, value in resource.items():
            if key in ALWAYS or kept is None or info.name(key) in kept:
                out[key] = clone(value) if key != "contained" else value
            else:
                changed = True
        if isinstance(out.get("contained"), list):
            contained = []
            for item in out["contained"]:
                if isinstance(item, dict):
                    minimised, inner = self._apply(item)
                    contained.append(minimised)
                    changed = changed or inner
            out["contained"] = contained
        if self.deidentify:
            changed = _deidentify(out) or changed
        if changed:
            out.pop("text", None)
            _label_redacted(out)
        return out, changed


def _label_redacted(resource: dict[str, Any]) -> None:
    found = resource.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    security = [s for s in meta.get("security") or [] if isinstance(s, dict)]
    if not any(
        s.get("system") == REDACTED["system"] and s.get("code") == REDACTED["code"]
        for s in security
    ):
        security.append(dict(REDACTED))
    resource["meta"] = {**meta, "security": security}


def _is_reference(value: Mapping[str, Any]) -> bool:
    """A FHIR Reference, recognised by shape: only Reference's keys, one of its own among them,
    and a string ``type`` (Identifier.type, a CodeableConcept, is a dict)."""
    return (
        value.keys() <= _REFERENCE_KEYS
        and ("reference" in value or "display" in value or "identifier" in value)
        and not isinstance(value.get("type"), dict)
    )


def _strip_references(value: Any, changes: list[int]) -> Any:
    """Every Reference reduced to ``reference`` and ``type``; one with neither goes (``_DROP``).
    ``value`` is our own copy and is changed in place."""
    if isinstance(value, dict):
        if _is_reference(value):
            kept = {k: value[k] for k in ("reference", "type") if isinstance(value.get(k), str)}
            if len(kept) != len(value):
                changes.append(1)
            return kept if "reference" in kept else _DROP
        for key in list(value):
            item = _strip_references(value[key], changes)
            if item is _DROP:
                del value[key]
            else:
                value[key] = item
        return value
    if isinstance(value, list) and value:
        items = [
            item for item in (_strip_references(v, changes) for v in value) if item is not _DROP
        ]
        return items or _DROP
    return value


def _year(value: Any) -> Any:
    return value[:4] if isinstance(value, str) and len(value) > 4 else value


def _deidentify(resource: dict[str, Any]) -> bool:
    """Remove direct identifiers (C-16) from our own copy; True when anything changed."""
    changes: list[int] = []
    for key in [k for k in resource if k not in ("meta", "resourceType", "id")]:
        item = _strip_references(resource[key], changes)
        if item is _DROP:
            del resource[key]
            changes.append(1)
        else:
            resource[key] = item
    if resource.get("resourceType") in PEOPLE:
        for key in _REMOVED_FROM_PEOPLE:
            if resource.pop(key, None) is not None:
                changes.append(1)
        for key, keeps in (("identifier", _IDENTIFIER_KEEPS), ("address", _ADDRESS_KEEPS)):
            if isinstance(resource.get(key), list):
                reduced = [
                    {k: v for k, v in item.items() if k in keeps}
                    for item in resource[key]
                    if isinstance(item, dict)
                ]
                if reduced != resource[key]:
                    changes.append(1)
                resource[key] = [item for item in reduced if item]
                if not resource[key]:
                    del resource[key]
        for key in ("birthDate", "deceasedDateTime"):
            if key in resource and _year(resource[key]) != resource[key]:
                resource[key] = _year(resource[key])
                changes.append(1)
    return bool(changes)


def _elements(names: Iterable[str]) -> frozenset[str] | None:
    names = list(names)
    return None if "*" in names else frozenset(names)


def _load() -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    folder = resources.files("consent").joinpath("data", "minimisation")
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        data = orjson.loads(entry.read_bytes())
        code = data["purpose"]["code"]
        if entry.name != f"{code}.json":
            raise ValueError(f"minimisation profile {entry.name} is for purpose {code}")
        keep = {kind: _elements(names) for kind, names in data["keep"].items() if kind != "*"}
        default = _elements(data["keep"].get("*", []))
        profiles[code] = Profile((code,), keep, default, bool(data["deidentify"]))
    return profiles


PROFILES: Final[Mapping[str, Profile]] = _load()
PURPOSES: Final = frozenset(PROFILES)
"""The purposes of use that have a profile (a client may only declare these)."""


def _intersect(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


@lru_cache(maxsize=64)
def _combined(purposes: tuple[str, ...]) -> Profile:
    if not purposes:
        return Profile((), {}, frozenset(), deidentify=False)
    unknown = [p for p in purposes if p not in PROFILES]
    if unknown:
        raise UnknownPurpose(f"no minimisation profile for purpose of use {', '.join(unknown)}")
    chosen = [PROFILES[p] for p in purposes]
    types = {kind for profile in chosen for kind in profile.keep}
    keep: dict[str, frozenset[str] | None] = {}
    for kind in types:
        elements: frozenset[str] | None = None
        for profile in chosen:
            elements = _intersect(elements, profile.elements(kind))
        keep[kind] = elements
    default: frozenset[str] | None = None
    for profile in chosen:
        default = _intersect(default, profile.default)
    return Profile(purposes, keep, default, any(p.deidentify for p in chosen))


def profile_for(purposes: Iterable[str]) -> Profile:
    """The profile for a request's purposes of use (:class:`UnknownPurpose` for a code without
    a profile). Compute it once per request and ``apply`` it to each resource."""
    return _combined(tuple(sorted(set(purposes))))


def minimise(resource: Mapping[str, Any], purposes: Iterable[str]) -> dict[str, Any]:
    """``resource`` minimised for ``purposes`` (a new dict)."""
    return profile_for(purposes).apply(resource)


def _paged(bundle: Mapping[str, Any]) -> bool:
    links = bundle.get("link") or []
    return any(
        isinstance(link, dict) and link.get("relation") in ("next", "previous", "prev")
        for link in links
    )


def release_bundle(
    bundle: Mapping[str, Any],
    release: Callable[[Mapping[str, Any]], dict[str, Any] | None],
) -> dict[str, Any]:
    """A new Bundle holding ``release(resource)`` for each entry, without the entries it returns
    ``None`` for (and without entries that carry no resource).

    ``total`` (C-18): on a single page it becomes the number of released ``match`` entries; on a
    page of a paged result it is omitted, because entries withheld on other pages cannot be
    counted. ``_summary=count`` is answered elsewhere.
    """
    entries = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        released = release(resource) if isinstance(resource, dict) else None
        if released is None:
            continue
        kept = {key: clone(value) for key, value in entry.items() if key != "resource"}
        kept["resource"] = released
        entries.append(kept)
    out = {key: clone(value) for key, value in bundle.items() if key not in ("entry", "total")}
    if "total" in bundle and not _paged(bundle):
        out["total"] = sum(
            1 for entry in entries if (entry.get("search") or {}).get("mode", "match") == "match"
        )
    if entries:
        out["entry"] = entries
    return out
