"""Data minimisation per purpose of use (GDPR Art. 5(1)(c); CONSENT.md C-15, C-16, C-18, C-28).

Each purpose of use (v3-ActReason code) has a profile in ``consent/data/minimisation/<CODE>.json``
listing the top-level elements each resource type keeps. The gateway applies it to every released
resource after the consent decision, with the purposes the :class:`~consent.decide.Decision` names:

- An element the profile does not keep is removed. ``id``, ``meta``, ``resourceType``,
  ``implicitRules`` and ``modifierExtension`` are always kept (a modifier may not be dropped
  silently: FHIR R4 "Modifier Elements").
- When anything is removed, the narrative (``text``) goes too (it may describe what was removed)
  and ``meta.security`` gains ``REDACTED`` (v3-ObservationValue), so the app knows.
- De-identifying profiles (research, C-16, C-28) also apply keep-lists inside what they keep,
  everywhere in the resource (:mod:`consent.deidentify`): no free text, identifier values,
  displays, ``meta.tag`` or extensions they do not name; references reduced to ``reference`` and
  ``type``; birth and death dates cut to the year. A resource with a modifier extension they do
  not name cannot be released for them: :meth:`Profile.apply` raises
  :class:`~consent.errors.Unreleasable` and the gateway withholds it.
- Several purposes: a resource keeps only what every purpose's profile keeps, and is de-identified
  with the stricter rules of every de-identifying one. No purpose: only the elements that are
  always kept.
- Minimisation never mutates its input; it returns new dicts.

``_elements`` and ``_summary`` (``consent.subsetting``) are applied afterwards, on top (C-17).
(The released Bundle is rebuilt, and its ``total`` recounted, by the gateway's filter.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Final

import orjson

from consent.codes import REDACTED
from consent.deidentify import Deidentification
from consent.errors import UnknownPurpose
from consent.subsetting import ALWAYS, clone, element_info


@dataclass(frozen=True, slots=True)
class Profile:
    """What one purpose of use (or a combination of them) keeps."""

    purposes: tuple[str, ...]
    keep: Mapping[str, frozenset[str] | None]
    """Resource type -> element names kept (``None``: every element)."""
    default: frozenset[str] | None
    """For resource types not in ``keep``."""
    deidentify: Deidentification | None
    """The keep rules of a de-identifying profile (``None``: it does not de-identify)."""
    plain: str = ""
    """What it removes, in one sentence for patients (the profile file's ``plain``; the English
    id of the message catalogue). Empty for a combination of purposes."""

    def elements(self, resource_type: str) -> frozenset[str] | None:
        return self.keep.get(resource_type, self.default)

    def keeps_everything(self, resource_type: str) -> bool:
        """True when :meth:`apply` would return an unchanged copy for this type (contained
        resources included: they fall back on the same default)."""
        return (
            self.deidentify is None
            and self.elements(resource_type) is None
            and self.default is None
        )

    def apply(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """The resource minimised (a new dict). :class:`Unreleasable` when a de-identifying
        profile cannot release it."""
        return self._apply(resource)[0]

    def _apply(self, resource: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        resource_type = str(resource.get("resourceType", ""))
        kept = self.elements(resource_type)
        info = element_info(resource_type)
        copy = clone if self.deidentify is None else _same  # de-identification builds anew
        out: dict[str, Any] = {}
        changed = False
        for key, value in resource.items():
            if key in ALWAYS or kept is None or info.name(key) in kept:
                out[key] = copy(value) if key != "contained" else value
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
        if self.deidentify is not None:
            out, removed = self.deidentify.resource(out, skip=("contained",))
            changed = changed or removed
        if changed:
            out.pop("text", None)
            _label_redacted(out)
        return out, changed


def _same(value: Any) -> Any:
    return value


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
        rules = data["deidentify"]
        deidentify = Deidentification.from_data(rules) if rules else None
        profiles[code] = Profile((code,), keep, default, deidentify, str(data["plain"]))
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
        return Profile((), {}, frozenset(), deidentify=None)
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
    deidentify: Deidentification | None = None
    for profile in chosen:
        if profile.deidentify is not None:
            rules = profile.deidentify
            deidentify = rules if deidentify is None else deidentify.combined(rules)
    return Profile(purposes, keep, default, deidentify)


def profile_for(purposes: Iterable[str]) -> Profile:
    """The profile for a request's purposes of use (:class:`UnknownPurpose` for a code without
    a profile). Compute it once per request and ``apply`` it to each resource."""
    return _combined(tuple(sorted(set(purposes))))


def minimise(resource: Mapping[str, Any], purposes: Iterable[str]) -> dict[str, Any]:
    """``resource`` minimised for ``purposes`` (a new dict)."""
    return profile_for(purposes).apply(resource)
