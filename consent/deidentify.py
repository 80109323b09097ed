"""De-identification for research and other de-identifying purposes of use (CONSENT.md C-16,
C-28; GDPR Art. 89(1); HIPAA 45 CFR 164.514(e)).

Keep-lists, not remove-lists: inside the elements a profile keeps, only what a de-identifying
profile's ``deidentify`` rules name survives, everywhere in the resource -- in every datatype,
BackboneElement, extension and contained resource, not only on Patient. The rules are data
(``consent/data/minimisation/<PURPOSE>.json``); what each element's FHIR type is comes from the R4B
models (:func:`consent.subsetting.element_info`). For each value:

- a primitive is kept when its type is one of ``primitives`` (codes, dates, numbers, URIs...):
  free-text types (``string``, ``markdown``, ``xhtml``, ``base64Binary``, ``url``) are not, so
  narrative, every ``*.text``, every ``display``, ``valueString``, annotations and notes,
  identifier values and attachments go;
- a complex value whose type ``datatypes`` lists keeps only the elements listed there, whatever
  their type (``Reference``: ``reference`` and ``type``; ``Coding``: ``system``, ``version``,
  ``code``; ``Meta``: no ``tag``; ``HumanName``: nothing); any other complex value (a
  BackboneElement, a Period, a Quantity...) is de-identified element by element;
- an extension is kept only when its URL is one of ``extensions``, and then de-identified
  itself; one left without a value goes (FHIR ext-1);
- a modifier extension not listed in ``modifier_extensions`` cannot be dropped (FHIR R4 "Modifier
  Elements": it may change the meaning of everything else), so the resource cannot be released
  for this purpose: :class:`~consent.errors.Unreleasable`;
- an element the models do not know is not kept (unknown is not kept);
- ``to_year``: dates of some resource types (birth and death) are cut to the year;
- a Reference left without a literal ``reference`` goes (it points at nothing that can be
  followed), and so does an element left empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from consent.errors import Unreleasable
from consent.subsetting import ElementInfo, element_info

_DROP: Final = object()
_EXTENSION: Final = element_info("Extension")

# What to do with an element, per (type, key): see Deidentification._plan.
_KEEP: Final = 0
_COMPLEX: Final = 1
_RESOURCES: Final = 2
_EXTENSIONS: Final = 3
_MODIFIERS: Final = 4
_PRIMITIVE_EXTENSIONS: Final = 5
Plan = dict[str, tuple[int, ElementInfo | None, str]]


@dataclass(frozen=True, slots=True)
class Deidentification:
    """The keep rules of a de-identifying profile (see the module docstring)."""

    primitives: frozenset[str]
    datatypes: Mapping[str, frozenset[str]]
    extensions: frozenset[str]
    modifier_extensions: frozenset[str]
    to_year: Mapping[str, frozenset[str]]
    _plans: dict[tuple[int, str], tuple[ElementInfo, Plan]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Deidentification:
        return cls(
            primitives=frozenset(data["primitives"]),
            datatypes={name: frozenset(keys) for name, keys in data["datatypes"].items()},
            extensions=frozenset(data["extensions"]),
            modifier_extensions=frozenset(data["modifier_extensions"]),
            to_year={rtype: frozenset(keys) for rtype, keys in data["to_year"].items()},
        )

    def combined(self, other: Deidentification) -> Deidentification:
        """What both keep (the stricter rules), for a request with several purposes."""
        names = set(self.datatypes) | set(other.datatypes)
        return Deidentification(
            primitives=self.primitives & other.primitives,
            datatypes={n: _both(self.datatypes.get(n), other.datatypes.get(n)) for n in names},
            extensions=self.extensions & other.extensions,
            modifier_extensions=self.modifier_extensions & other.modifier_extensions,
            to_year={
                rtype: self.to_year.get(rtype, frozenset()) | other.to_year.get(rtype, frozenset())
                for rtype in set(self.to_year) | set(other.to_year)
            },
        )

    def resource(
        self, resource: Mapping[str, Any], skip: Iterable[str] = ()
    ) -> tuple[dict[str, Any], bool]:
        """The resource de-identified (a new dict) and whether anything was removed or changed.
        The elements in ``skip`` are copied as they are (contained resources already
        de-identified, say). Raises :class:`Unreleasable` for a modifier extension it may not
        drop."""
        walk = _Walk(self)
        out = walk.resource(resource, frozenset(skip))
        return out, walk.changed

    def _plan(self, info: ElementInfo, kind: str) -> Plan:
        """What to do with each element of a type (built once per type and rules): keep it (a
        kept primitive), walk it (a complex type, contained resources, extensions) or, when it
        is not in the plan, drop it."""
        cached = self._plans.get((id(info), kind))
        if cached is not None:
            return cached[1]
        keep = self.datatypes.get(kind)
        plan: Plan = {"modifierExtension": (_MODIFIERS, None, "")}
        if keep is None or "extension" in keep:
            plan["extension"] = (_EXTENSIONS, None, "")
        for key, element_type in info.types.items():
            if key in ("extension", "modifierExtension") or (keep is not None and key not in keep):
                continue
            if element_type[:1].islower():  # a primitive type
                if element_type in self.primitives or keep is not None:
                    plan[key] = (_KEEP, None, "")
                    plan[f"_{key}"] = (_PRIMITIVE_EXTENSIONS, None, "")
            elif element_type == "Resource":
                plan[key] = (_RESOURCES, None, "")
            else:
                plan[key] = (_COMPLEX, info.part(key), element_type)
        if info.known:  # an unknown type's (from upstream data) is not kept: bounded
            self._plans[(id(info), kind)] = (info, plan)  # the info stays alive with its id
        return plan


class _Walk:
    """One resource's de-identification; ``changed`` tells whether anything went."""

    __slots__ = ("changed", "rules")

    def __init__(self, rules: Deidentification) -> None:
        self.rules = rules
        self.changed = False

    def resource(self, resource: Mapping[str, Any], skip: frozenset[str]) -> dict[str, Any]:
        resource_type = str(resource.get("resourceType", ""))
        plan = self.rules._plan(element_info(resource_type), resource_type)
        out: dict[str, Any] = {}
        for key, item in resource.items():
            if key == "resourceType" or key in skip:
                out[key] = item
            else:
                new = self._element(plan.get(key), item)
                if new is _DROP:
                    self.changed = True
                else:
                    out[key] = new
        for key in self.rules.to_year.get(resource_type, ()):
            value = out.get(key)
            if isinstance(value, str) and len(value) > 4:
                out[key] = value[:4]
                self.changed = True
        return out

    def _object(self, value: Any, plan: Plan) -> Any:
        if not isinstance(value, dict):
            return _DROP
        out: dict[str, Any] = {}
        for key, item in value.items():
            new = self._element(plan.get(key), item)
            if new is _DROP:
                self.changed = True
            else:
                out[key] = new
        return out if out else _DROP

    def _element(self, action: tuple[int, ElementInfo | None, str] | None, item: Any) -> Any:
        if action is None:
            return _DROP  # not named by the rules, or not an element of this type
        what, info, kind = action
        if what == _KEEP:
            return _primitive(item)
        if what == _COMPLEX:
            if info is None:
                return _DROP
            plan = self.rules._plan(info, kind)
            if isinstance(item, list):
                kept = [
                    new for new in (self._complex(v, plan, kind) for v in item) if new is not _DROP
                ]
                return kept if kept else _DROP
            return self._complex(item, plan, kind)
        if what == _EXTENSIONS:
            return self._extensions(item, modifier=False)
        if what == _MODIFIERS:
            return self._extensions(item, modifier=True)
        if what == _RESOURCES:
            resources = item if isinstance(item, list) else (item,)
            kept = [self.resource(r, frozenset()) for r in resources if isinstance(r, dict)]
            return kept if kept else _DROP
        return self._primitive_extensions(item)

    def _complex(self, value: Any, plan: Plan, kind: str) -> Any:
        out = self._object(value, plan)
        if kind == "Reference" and (out is _DROP or "reference" not in out):
            return _DROP  # points at nothing that can be followed (C-16)
        return out

    def _extensions(self, items: Any, *, modifier: bool) -> Any:
        rules = self.rules
        allowed = rules.modifier_extensions if modifier else rules.extensions
        kept = []
        for extension in items if isinstance(items, list) else (items,):
            url = extension.get("url") if isinstance(extension, dict) else None
            if not isinstance(url, str) or url not in allowed:
                if modifier:
                    raise Unreleasable(
                        f"it carries a modifierExtension ({_short(url)}) that de-identification "
                        "does not keep, and a modifier may not be dropped"
                    )
                self.changed = True
                continue
            out = self._object(extension, rules._plan(_EXTENSION, "Extension"))
            if isinstance(out, dict) and out.keys() - {"url", "id"}:
                kept.append(out)
            else:
                self.changed = True
        return kept if kept else _DROP

    def _primitive_extensions(self, element: Any) -> Any:
        """A primitive's ``_x`` companion: its allowed extensions only."""
        if not isinstance(element, dict):
            return _DROP
        extensions = self._extensions(element.get("extension"), modifier=False)
        return {"extension": extensions} if extensions is not _DROP else _DROP


def _primitive(value: Any) -> Any:
    if isinstance(value, dict):
        return _DROP  # an object where the definition says primitive: not kept
    if isinstance(value, list):
        kept = [v for v in value if not isinstance(v, dict | list)]
        return kept if kept else _DROP
    return value


def _both(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str]:
    if a is None:
        return b if b is not None else frozenset()
    return a if b is None else a & b


def _short(url: object) -> str:
    text = str(url)
    return text if len(text) <= 120 else text[:119] + "…"
