"""FHIR references and ids: the one parser every part of the gateway uses to tell which resource,
and which patient, a reference names (FHIR R4 2.3.0 "Resource References", 2.24.0.1 ``id``).

A literal reference is ``Type/id``, relative or absolute (``https://host/base/Type/id``), possibly
with ``/_history/n`` or a canonical ``|version`` on the end, which never change what it names.
Contained (``#id``), ``urn:`` and conditional (``Type?query``) references name no resource by
type and id: they give ``None`` here, and the callers decide what that means (the compartment
never counts them as "ours").

The id is taken as written: a malformed one still names its type, so a reference to
``Patient/not valid`` is "a reference to some patient" that never equals a real patient's id.
Whatever reaches a database query is checked with :func:`is_id` first.
"""

from __future__ import annotations

import re

ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
"""The FHIR ``id`` datatype."""

_LITERAL = re.compile(
    r"^(?:https?://[^?#\s]+?/)?"  # an absolute base, dropped
    r"([A-Z][A-Za-z]{1,63})/([^/?#|\s]+)"  # Type/id
    r"(?:/_history/[^/?#|\s]+)?/?$"
)


def is_id(value: object) -> bool:
    """Whether ``value`` is a FHIR id (1-64 of ``A-Z a-z 0-9 - .``, not only dots)."""
    return isinstance(value, str) and bool(ID.match(value)) and value.strip(".") != ""


def literal(reference: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference, or ``None`` for anything else."""
    match = _LITERAL.match(reference.split("|", 1)[0].strip())
    return (match.group(1), match.group(2)) if match else None


def patient_id(value: str, *, bare: bool = False) -> str | None:
    """The id of the patient a reference names (``Patient/x``, absolute, versioned), else
    ``None``. ``bare``: a value without a type is a patient id too (search values such as
    ``patient=x``, and the ``patient`` and ``acts_for`` claims of a token)."""
    value = value.strip()
    if value.startswith("Patient/") and "/" not in value[8:] and "|" not in value:
        return value[8:] or None  # the common case, without the general parser
    found = literal(value)
    if found is not None:
        return found[1] if found[0] == "Patient" else None
    if bare and value and not any(c in value for c in "/?#|:"):
        return value
    return None
