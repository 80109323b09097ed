"""FHIR R4 search parameters evaluated on one resource, without a FHIRPath engine (FHIR R4 3.1.1
Search; SMART.md S-28: a granular scope such as ``patient/Observation.rs?category=...`` is checked
on every resource released).

Data: ``gateway/fhir/data/search-parameters-r4.json``, derived from HL7's R4 SearchParameter Bundle
by ``scripts/derive_fhir_data.py``. Its ``resources`` object maps a resource type to its
parameters::

    "Observation": {
      "category": {"type": "token", "paths": ["category"]},
      "date":     {"type": "date", "paths": ["effectiveDateTime", "effectivePeriod", ...]},
      "patient":  {"type": "reference", "paths": [{"path": "subject", "target": "Patient"}],
                   "targets": ["Patient"]},
      "code-value-quantity": {"type": "composite", "paths": [], "partial": true}, ...}
    "Patient": {
      "phone": {"type": "token",
                "paths": [{"path": "telecom", "where": {"telecom.system": "phone"}}]}, ...}

- ``type``: the SearchParameter type (token, reference, date, string, uri, number, quantity,
  composite, special).
- ``paths``: where the indexed values are, relative to the resource, as JSON property names (choice
  elements carry their type: ``effectiveDateTime``). A plain string is a dotted path. An object has
  a ``path`` and optionally ``target`` (only references to that type count: FHIRPath
  ``.where(resolve() is Patient)``) and ``where`` (``{"telecom.system": "phone"}``: of the
  elements at the key's prefix, keep those whose child equals the value; FHIRPath
  ``.where(system='phone')``).
- ``targets`` (reference parameters): the resource types the parameter may point at on this type;
  ``["Resource"]`` means any.
- ``partial``: part of the expression could not be written as paths and was dropped (``_text``,
  ``_content``, composites, ``Patient.deceased``...). Evaluating such a parameter can only find
  fewer values than a FHIR server would; one with no paths at all cannot be evaluated.

Accessors are compiled once per (type, parameter), on first use, and cached.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from consent import references
from gateway.fhir.fhirdata import RESOURCE_TYPES, search_parameters

ANY_TYPE = "Resource"
"""In ``targets``: the parameter may point at any resource type."""


class UnsupportedParameter(ValueError):
    """A search parameter, modifier or value this module cannot evaluate; callers refuse (a
    restriction that cannot be checked never widens access)."""


class UnknownParameter(UnsupportedParameter):
    """The parameter is not defined for the resource type in FHIR R4."""


@dataclass(frozen=True, slots=True)
class ElementPath:
    """One path of a parameter: JSON property names from the resource down to the value."""

    steps: tuple[str, ...]
    where: tuple[tuple[int, str, str], ...] = ()
    """``(i, child, value)``: after step ``i``, keep the elements whose ``child`` is ``value``."""
    target: str | None = None
    """Only references to this resource type count."""


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A FHIR R4 search parameter as it applies to one resource type."""

    resource_type: str
    name: str
    type: str
    paths: tuple[ElementPath, ...]
    targets: frozenset[str]
    partial: bool

    def can_target(self, resource_type: str) -> bool:
        return resource_type in self.targets or ANY_TYPE in self.targets


def _element_path(raw: str | Mapping[str, Any]) -> ElementPath:
    if isinstance(raw, str):
        return ElementPath(tuple(raw.split(".")))
    steps = tuple(raw["path"].split("."))
    where: list[tuple[int, str, str]] = []
    for key, value in raw.get("where", {}).items():
        prefix, child = key.rsplit(".", 1)
        at = len(prefix.split(".")) - 1
        if steps[: at + 1] != tuple(prefix.split(".")):
            raise ValueError(f"filter {key} is not on the path {raw['path']}")
        where.append((at, child, value))
    return ElementPath(steps, tuple(where), raw.get("target"))


@cache
def search_param(resource_type: str, name: str) -> SearchParam:
    """The parameter ``name`` of ``resource_type``; :class:`UnknownParameter` if R4 has none."""
    entry = search_parameters().get(resource_type, {}).get(name)
    if entry is None:
        raise UnknownParameter(f"{resource_type} has no search parameter '{name}' in FHIR R4")
    return SearchParam(
        resource_type,
        name,
        entry["type"],
        tuple(_element_path(p) for p in entry["paths"]),
        frozenset(entry.get("targets", ())),
        bool(entry.get("partial", False)),
    )


def param_names(resource_type: str) -> frozenset[str]:
    """Every R4 search parameter of ``resource_type`` (empty for an unknown type)."""
    return frozenset(search_parameters().get(resource_type, {}))


def _param_of(resource: Mapping[str, Any], name: str) -> SearchParam:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise UnknownParameter("the resource has no resourceType")
    return search_param(rtype, name)


# --- references -------------------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def normalise_reference(reference: str) -> str | None:
    """``Type/id`` for a literal reference (relative, or absolute ``http(s)://.../Type/id``, with
    any ``/_history/n`` or canonical ``|version`` dropped); ``None`` for contained (``#id``),
    ``urn:`` and anything that does not end in a known resource type and id."""
    found = references.literal(reference)
    if found is None or found[0] not in RESOURCE_TYPES or not references.is_id(found[1]):
        return None
    return f"{found[0]}/{found[1]}"


def _reference_string(value: Any) -> str | None:
    if isinstance(value, dict):
        ref = value.get("reference")
        return ref if isinstance(ref, str) else None
    return value if isinstance(value, str) else None  # canonical and uri elements


def _reference_type(value: Any, resource: Mapping[str, Any]) -> str | None:
    """The type a reference value resolves to (contained ones looked up), if it can be told."""
    ref = _reference_string(value)
    if ref is None:
        return None
    if ref.startswith("#"):
        for contained in resource.get("contained", ()):
            if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                rtype = contained.get("resourceType")
                return rtype if isinstance(rtype, str) else None
        return None
    normal = normalise_reference(ref)
    return normal.split("/", 1)[0] if normal else None


# --- values -----------------------------------------------------------------------------------


def _walk(resource: Mapping[str, Any], path: ElementPath) -> list[Any]:
    nodes: list[Any] = [resource]
    for i, step in enumerate(path.steps):
        found: list[Any] = []
        for node in nodes:
            if isinstance(node, dict):
                value = node.get(step)
                if isinstance(value, list):
                    found.extend(v for v in value if v is not None)
                elif value is not None:
                    found.append(value)
        for at, child, expected in path.where:
            if at == i:
                found = [n for n in found if isinstance(n, dict) and n.get(child) == expected]
        if not found:
            return found
        nodes = found
    if path.target is not None:
        nodes = [n for n in nodes if _reference_type(n, resource) == path.target]
    return nodes


def _values(resource: Mapping[str, Any], param: SearchParam) -> list[Any]:
    if len(param.paths) == 1:
        return _walk(resource, param.paths[0])
    out: list[Any] = []
    for path in param.paths:
        out.extend(_walk(resource, path))
    return out


def values(resource: Mapping[str, Any], param: str) -> list[Any]:
    """The element values ``param`` indexes on ``resource`` (lists flattened, in path order)."""
    return _values(resource, _param_of(resource, param))


def _reference_ids(resource: Mapping[str, Any], param: SearchParam) -> list[str]:
    out: list[str] = []
    for value in _values(resource, param):
        ref = _reference_string(value)
        normal = normalise_reference(ref) if ref else None
        if normal and normal not in out and param.can_target(normal.split("/", 1)[0]):
            out.append(normal)
    return out


def reference_ids(resource: Mapping[str, Any], param: str) -> list[str]:
    """The ``Type/id`` of each literal reference ``param`` points at on ``resource`` (contained,
    ``urn:`` and identifier-only references ignored; types outside the parameter's targets too)."""
    sp = _param_of(resource, param)
    if sp.type != "reference":
        raise UnsupportedParameter(f"'{param}' is a {sp.type} parameter, not a reference")
    return _reference_ids(resource, sp)


# --- matching ---------------------------------------------------------------------------------


def _split(text: str, separator: str) -> list[str]:
    """Split on unescaped ``separator`` (FHIR R4 3.1.1.5.7: ``\\,`` ``\\|`` ``\\$`` ``\\\\``),
    keeping the escapes for the next level."""
    if "\\" not in text:
        return text.split(separator)
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if text[i] == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text) if "\\" in text else text


# ContactPoint.system codes (R4 contact-point-system). An Identifier.system is an absolute URI, so
# a mapping with ``value`` and one of these as ``system`` can only be a ContactPoint.
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def _tokens(value: Any) -> Iterable[tuple[str | None, str | None]]:
    """``(system, code)`` pairs of one indexed value (FHIR R4 3.1.1.4.1 token table)."""
    if isinstance(value, dict):
        if "coding" in value or "text" in value:  # CodeableConcept
            for coding in value.get("coding", ()):
                if isinstance(coding, dict):
                    yield coding.get("system"), coding.get("code")
        elif "code" in value or ("system" in value and "value" not in value):  # Coding
            yield value.get("system"), value.get("code")
        elif "value" in value:  # Identifier or ContactPoint
            system = value.get("system")
            yield (None if system in _CONTACT_SYSTEMS else system), _text(value["value"])
    elif isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str | int | float):
        yield None, str(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@lru_cache(maxsize=1024)
def _token_queries(value: str) -> tuple[tuple[str | None, str], ...]:
    """The OR list of a token value, parsed once per distinct value (scopes repeat them)."""
    return tuple(_token_query(item) for item in _split(value, ","))


def _token_query(text: str) -> tuple[str | None, str]:
    """``(system, code)``: system ``None`` = any, ``""`` = none; code ``""`` = any in system."""
    parts = _split(text, "|")
    if len(parts) == 1 and parts[0]:
        return None, _unescape(parts[0])
    if len(parts) == 2 and (parts[0] or parts[1]):
        return _unescape(parts[0]), _unescape(parts[1])
    raise UnsupportedParameter(f"'{text}' is not a token ([system|]code)")


def _token_matches(
    pairs: list[tuple[str | None, str | None]], system: str | None, code: str
) -> bool:
    for have_system, have_code in pairs:
        if system is None:
            if have_code == code:
                return True
        elif system == "":
            if have_system is None and have_code == code:
                return True
        elif have_system == system and (code == "" or have_code == code):
            return True
    return False


def _fold(text: str) -> str:
    """Case- and accent-insensitive form (FHIR R4 3.1.1.4.9 string search)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# The parts of HumanName and Address a string search looks at (FHIR R4 3.1.1.4.9).
_STRING_PARTS = (
    "text", "family", "given", "prefix", "suffix",
    "line", "city", "district", "state", "postalCode", "country",
)  # fmt: skip


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in _STRING_PARTS:
            part = value.get(key)
            if isinstance(part, str):
                yield part
            elif isinstance(part, list):
                yield from (p for p in part if isinstance(p, str))


def _match_string(found: list[Any], wanted: list[str], modifier: str | None) -> bool:
    texts = [s for v in found for s in _strings(v)]
    if modifier == "exact":
        return any(t in texts for t in wanted)
    folded = [_fold(t) for t in texts]
    queries = [_fold(w) for w in wanted]
    if modifier == "contains":
        return any(q in f for q in queries for f in folded)
    return any(f.startswith(q) for q in queries for f in folded)


def _match_reference(
    resource: Mapping[str, Any], sp: SearchParam, wanted: list[str], modifier: str | None
) -> bool:
    if modifier is not None and modifier not in RESOURCE_TYPES:
        raise UnsupportedParameter(f"the modifier ':{modifier}' is not supported on '{sp.name}'")
    have = _reference_ids(resource, sp)
    if modifier is not None:
        have = [ref for ref in have if ref.startswith(modifier + "/")]
    ids = {ref.split("/", 1)[1] for ref in have}
    for item in wanted:
        if "/" in item:
            normal = normalise_reference(item)
            if normal is None:
                raise UnsupportedParameter(f"'{item}' is not a reference (Type/id)")
            if normal in have:
                return True
        elif _ID.match(item) is None or not item.strip("."):
            raise UnsupportedParameter(f"'{item}' is not a resource id")
        elif item in ids:
            return True
    return False


def matches(
    resource: Mapping[str, Any], param: str, value: str, modifier: str | None = None
) -> bool:
    """Whether ``resource`` matches ``param[:modifier]=value``; a comma in ``value`` means OR
    (repeated parameters are ANDed by the caller).

    - token: ``code``, ``system|code``, ``|code`` (no system), ``system|`` on Coding,
      CodeableConcept, Identifier, ContactPoint value and code/string/boolean/uri primitives (a
      primitive has no system: it matches ``code`` and ``|code``); no modifiers.
    - reference: ``Type/id``, ``id``, an absolute URL ending in ``Type/id``; modifier: a type.
    - string: starts with, ignoring case and accents; ``:exact``, ``:contains``.
    - uri: exact.

    Raises :class:`UnknownParameter` or :class:`UnsupportedParameter` for anything else.
    """
    sp = _param_of(resource, param)
    if not sp.paths:
        raise UnsupportedParameter(f"'{param}' on {sp.resource_type} cannot be evaluated here")
    if sp.type == "token" and modifier is None:
        queries = _token_queries(value)
        pairs = [pair for v in _values(resource, sp) for pair in _tokens(v)]
        return any(_token_matches(pairs, system, code) for system, code in queries)
    wanted = [_unescape(item) for item in _split(value, ",")]
    if sp.type == "reference":
        return _match_reference(resource, sp, wanted, modifier)
    if sp.type == "string" and modifier in (None, "exact", "contains"):
        return _match_string(_values(resource, sp), wanted, modifier)
    if modifier is not None:
        raise UnsupportedParameter(f"the modifier ':{modifier}' is not supported on '{param}'")
    if sp.type == "uri":
        found = _values(resource, sp)
        return any(item in found for item in wanted)
    raise UnsupportedParameter(f"{sp.type} parameters ('{param}') are not supported here")
