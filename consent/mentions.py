"""What a released resource may say about data that is withheld (CONSENT.md C-26).

A Reference's ``display`` is text about the resource it points at ("Major depressive episode"),
and a narrative (``text``) renders the resource with the displays of what it points at, or says
more. When the referenced resource is withheld -- or could be, because the decision that
released this one does not cover every sensitivity label -- that text tells what consent
withholds. :func:`without_mentions` removes it:

- ``display`` from every Reference to a resource type that can hold patient data: anything but
  the types listed in ``consent/data/no-patient-data-types.json`` (Practitioner, Organization,
  Location, Medication...). A Reference whose target type cannot be told (a contained ``#id``, a
  ``urn:uuid``, only an identifier) loses it too. A Reference that held nothing but its display
  becomes a ``data-absent-reason`` extension ``masked``, so the element stays valid FHIR.
- every Narrative (``text.div``): the resource's own and its contained resources' and
  sections'. Which withheld thing a narrative mentions cannot be known, so none is kept.

The resource's codes and ``meta`` are left alone. When anything is removed the resource gains
the ``REDACTED`` security label, as minimisation does (C-15). The input is never changed;
what is not changed is shared with it, so a resource without mentions costs one walk and no copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from consent.codes import NO_PATIENT_DATA_TYPES, REDACTED

DATA_ABSENT_REASON: Final = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
MASKED: Final = {"url": DATA_ABSENT_REASON, "valueCode": "masked"}
"""The extension a Reference that only had a display becomes (FHIR R4 data-absent-reason)."""

_REFERENCE_KEYS = frozenset({"id", "extension", "reference", "type", "identifier", "display"})
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_CODINGS = frozenset({"coding", "valueCoding", "security", "tag"})
"""Keys whose values are Codings, which may carry a ``display`` too: theirs is kept."""


def _is_reference(value: Mapping[str, Any]) -> bool:
    """A FHIR Reference with a display, recognised by shape: only Reference's keys, and a string
    ``type`` if any (Identifier.type, a CodeableConcept, is an object)."""
    return (
        "display" in value
        and value.keys() <= _REFERENCE_KEYS
        and not isinstance(value.get("type"), dict | list)
    )


def _literal_type(literal: str) -> str | None:
    """The type a literal reference names (``Condition/1``, an absolute or versioned URL, a
    conditional ``Condition?code=...``), ``None`` when it names none."""
    path = literal.split("?", 1)
    if len(path) == 2:
        kind = path[0].rstrip("/").rsplit("/", 1)[-1]
    else:
        parts = literal.split("/_history/", 1)[0].rstrip("/").split("/")
        kind = parts[-2] if len(parts) >= 2 else ""
    return kind if _TYPE_NAME.match(kind) else None


def keeps_display(reference: Mapping[str, Any]) -> bool:
    """Whether a Reference's display may stay: every type it names (its ``reference`` and its
    ``type``) is one that holds no patient data."""
    named: list[str | None] = []
    literal = reference.get("reference")
    if literal is not None:
        named.append(_literal_type(literal) if isinstance(literal, str) else None)
    kind = reference.get("type")
    if kind is not None:
        named.append(kind if isinstance(kind, str) else None)
    return bool(named) and all(t in NO_PATIENT_DATA_TYPES for t in named)


def _without_display(reference: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in reference.items() if k != "display"}
    if not kept.keys() & {"reference", "identifier", "extension"}:
        kept["extension"] = [dict(MASKED)]
    return kept


_UNCHANGED: Final = object()
_DROP: Final = object()


def _walk(value: Any, codings: bool = False) -> Any:
    """``value`` without mentions, or ``_UNCHANGED``. ``codings``: ``value`` holds Codings."""
    if isinstance(value, dict):
        if not codings and _is_reference(value) and not keeps_display(value):
            return _without_display(value)
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if key == "text" and isinstance(item, dict):  # a Narrative
                new: Any = _DROP
            elif key == "meta" or not isinstance(item, dict | list):
                continue
            else:
                new = _walk(item, key in _CODINGS)
                if new is _UNCHANGED:
                    continue
            if changed is None:
                changed = dict(value)
            if new is _DROP:
                del changed[key]
            else:
                changed[key] = new
        return _UNCHANGED if changed is None else changed
    if isinstance(value, list):
        copy: list[Any] | None = None
        for index, item in enumerate(value):
            if isinstance(item, dict | list):
                new = _walk(item, codings)
                if new is not _UNCHANGED:
                    if copy is None:
                        copy = list(value)
                    copy[index] = new
        return _UNCHANGED if copy is None else copy
    return _UNCHANGED


def _labelled(resource: dict[str, Any]) -> dict[str, Any]:
    found = resource.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    labels = meta.get("security")
    security = [s for s in labels if isinstance(s, dict)] if isinstance(labels, list) else []
    if not any(
        s.get("system") == REDACTED["system"] and s.get("code") == REDACTED["code"]
        for s in security
    ):
        security.append(dict(REDACTED))
    return {**resource, "meta": {**meta, "security": security}}


def without_mentions(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource without narrative and without the display of references to types that can
    hold patient data, labelled ``REDACTED`` when anything went; the same resource (as a dict)
    when there was nothing to remove."""
    new = _walk(resource)
    if new is _UNCHANGED:
        return resource if isinstance(resource, dict) else dict(resource)
    return _labelled(new)
