"""Element metadata and the ``_elements`` / ``_summary`` result parameters (FHIR R4 Search
"Summary" and "Elements"; CONSENT.md C-17).

What an element is called, whether it is a summary element, whether it is mandatory, its FHIR
type and which BackboneElement type it has come from the R4B models of fhir.resources (generated
from the FHIR StructureDefinitions: ``isSummary`` becomes ``summary_element_property``,
``min >= 1`` becomes ``element_required``, a choice type ``value[x]`` becomes ``one_of_many``, a
primitive type is the annotation's marker, ``String()``, a complex one the model it names). The
R4B flags equal the R4 ones for the resources this gateway serves. A resource type the models do
not know keeps only its mandatory elements under ``_summary=true``.

Both functions only ever remove elements, so applied after the minimisation profile they narrow it
and never bring back what it removed. They return new dicts and add the ``SUBSETTED`` tag.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.backboneelement import BackboneElement

from consent.codes import SUBSETTED

ALWAYS = frozenset({"id", "meta", "resourceType", "implicitRules", "modifierExtension"})
"""Kept by every subsetting: the resource's identity, its meta, and the rules and modifiers that
change its meaning (FHIR R4 "Modifier Elements": they may not be silently dropped)."""

SUMMARY_MODES = frozenset({"true", "text", "data", "false"})


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """What the models say about the elements of one resource or BackboneElement type."""

    names: dict[str, str] = field(default_factory=dict)
    """JSON key -> element name (``valueQuantity`` -> ``value[x]``, ``_gender`` -> ``gender``)."""
    summary: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    backbones: dict[str, ElementInfo] = field(default_factory=dict)
    known: bool = True
    types: dict[str, str] = field(default_factory=dict)
    """JSON key -> FHIR type (``valueString`` -> ``string``, ``code`` -> ``CodeableConcept``,
    ``component`` -> ``ObservationComponent``, ``contained`` -> ``Resource``)."""
    models: dict[str, type[Any]] = field(default_factory=dict)
    """JSON key -> the model of a complex type (datatype, BackboneElement, Resource)."""

    def part(self, key: str) -> ElementInfo | None:
        """What the models say about the elements of the complex type at ``key``."""
        model = self.models.get(key)
        return None if model is None else _info(model, _INFOS)

    @property
    def coded(self) -> frozenset[str]:
        """The JSON keys whose type is CodeableConcept or Coding."""
        return frozenset(k for k, t in self.types.items() if t in ("CodeableConcept", "Coding"))

    def name(self, key: str) -> str:
        """The element a JSON key belongs to (``_x`` belongs to ``x``)."""
        found = self.names.get(key)
        if found is not None:
            return found
        return key[1:] if key.startswith("_") else key


def _model_class(annotation: Any) -> type[Any] | None:
    """The model of a complex-typed field."""
    for arg in typing.get_args(annotation) or (annotation,):
        klass = getattr(arg, "_model_klass", None)
        if isinstance(klass, str):
            module, _, name = klass.rpartition(".")
            model: type[Any] = getattr(importlib.import_module(module), name)
            return model
        if typing.get_args(arg):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


_PRIMITIVES = {"EncodedBytes": "base64Binary", "UuidVersion": "uuid"}


def _type_name(annotation: Any) -> str:
    """The FHIR type of a field: a primitive's marker (``String()`` -> ``string``), a complex
    type's model (``CodeableConcept``), ``boolean`` for ``bool``."""
    for arg in typing.get_args(annotation) or (annotation,):
        for marker in getattr(arg, "__metadata__", ()):
            name = type(marker).__name__
            return _PRIMITIVES.get(name, name[:1].lower() + name[1:])
        klass = getattr(arg, "_model_klass", None)
        if isinstance(klass, str):
            return klass.rpartition(".")[2]
        if arg is bool:
            return "boolean"
        if typing.get_args(arg):
            found = _type_name(arg)
            if found != "unknown":
                return found
    return "unknown"


def _info(model: type[Any], seen: dict[type[Any], ElementInfo]) -> ElementInfo:
    if model in seen:
        return seen[model]
    names: dict[str, str] = {}
    summary: set[str] = set()
    required: set[str] = set()
    backbones: dict[str, type[Any]] = {}
    types: dict[str, str] = {}
    models: dict[str, type[Any]] = {}
    for fhir_field in model.model_fields.values():
        extra = fhir_field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        alias = str(fhir_field.alias)
        choice = extra.get("one_of_many")
        name = f"{choice}[x]" if choice else alias
        names[alias] = names[f"_{alias}"] = name
        types[alias] = _type_name(fhir_field.annotation)
        if extra.get("summary_element_property"):
            summary.add(name)
        mandatory = extra.get("element_required") or extra.get("one_of_many_required")
        if mandatory or fhir_field.is_required():
            required.add(name)
        model_class = _model_class(fhir_field.annotation)
        if model_class is not None:
            models[alias] = model_class
            if issubclass(model_class, BackboneElement):
                backbones[name] = model_class
    info = ElementInfo(names, frozenset(summary), frozenset(required), types=types, models=models)
    seen[model] = info  # recursive backbones (Questionnaire.item.item) share one entry
    for name, backbone in backbones.items():
        info.backbones[name] = _info(backbone, seen)
    return info


@lru_cache(maxsize=256)
def element_info(resource_type: str) -> ElementInfo:
    """Element metadata of a resource type (``known=False`` when the R4B models lack it)."""
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return ElementInfo(known=False)
    return _info(model, _INFOS)


_INFOS: dict[type[Any], ElementInfo] = {}
"""Every model's ElementInfo, built once (backbones and datatypes are shared by many types)."""


@lru_cache(maxsize=256)
def coded_elements(resource_type: str) -> frozenset[str]:
    """The element paths of a resource type, through its BackboneElements, whose type is
    CodeableConcept or Coding (``code``, ``component.valueCodeableConcept``...), two levels
    deep."""
    info = element_info(resource_type)
    found = set(info.coded)
    for name, backbone in info.backbones.items():
        found |= {f"{name}.{key}" for key in backbone.coded}
    return frozenset(found)


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(
        t.get("code") == SUBSETTED["code"] and t.get("system") == SUBSETTED["system"]
        for t in tags
        if isinstance(t, dict)
    ):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def clone(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return {key: clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clone(item) for item in value]
    return value


def _keep(resource: Mapping[str, Any], info: ElementInfo, wanted: frozenset[str]) -> dict[str, Any]:
    return {
        key: clone(value)
        for key, value in resource.items()
        if key in ALWAYS or info.name(key) in wanted
    }


def apply_elements(resource: Mapping[str, Any], elements: Iterable[str]) -> dict[str, Any]:
    """``_elements``: keep the named top-level elements and the mandatory ones (R4 "Elements").

    Names may carry the resource type (``Observation.code``: other types' names are ignored) or
    ``[x]`` (``value`` and ``value[x]`` both mean the choice element); unknown names are ignored.
    """
    resource_type = str(resource.get("resourceType", ""))
    info = element_info(resource_type)
    wanted: set[str] = set()
    for raw in elements:
        name = raw.strip()
        kind, dot, rest = name.partition(".")
        if dot:
            if kind != resource_type:
                continue
            name = rest
        name = name.removesuffix("[x]")
        wanted |= {name, f"{name}[x]"}
    return _tagged(_keep(resource, info, frozenset(wanted) | info.required))


def _summary(value: Any, info: ElementInfo) -> Any:
    """Summary elements of a BackboneElement (or a list of them), recursively."""
    if isinstance(value, list):
        return [_summary(item, info) for item in value]
    if not isinstance(value, dict):
        return clone(value)
    kept: dict[str, Any] = {}
    for key, item in value.items():
        name = info.name(key)
        if key in ALWAYS or name in info.summary or name in info.required:
            backbone = info.backbones.get(name)
            kept[key] = _summary(item, backbone) if backbone else clone(item)
    return kept


def apply_summary(resource: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """``_summary`` = ``true`` (summary elements), ``text`` (text, id, meta and the top-level
    mandatory elements), ``data`` (everything but text) or ``false`` (everything). ``count`` is
    answered without resources and is not handled here."""
    if mode not in SUMMARY_MODES:
        raise ValueError(f"_summary={mode} is not a summary mode for resources")
    if mode == "false":
        return {key: clone(value) for key, value in resource.items()}
    info = element_info(str(resource.get("resourceType", "")))
    if mode == "data":
        return _tagged({k: clone(v) for k, v in resource.items() if k != "text"})
    if mode == "text":
        return _tagged(_keep(resource, info, info.required | {"text"}))
    kept: dict[str, Any] = _summary(resource, info)
    return _tagged(kept)
