"""Consent provisions compiled for one request (FHIR R4 Consent.provision; CONSENT.md C-06,
C-07, C-09). The rules are described in :mod:`consent.decide`; this module holds their mechanics.

Compiling checks everything that depends on the request only (status, patient, period, actor,
action, purpose) once and drops the provisions that do not match, so deciding a resource walks a
small tree of :class:`Provision` and compares only resource attributes (class, code,
securityLabel, dataPeriod, data).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from consent import fhirtime
from consent.codes import (
    CONSENT_ACTION,
    CONSENT_SCOPE,
    PATIENT_PRIVACY,
    RESOURCE_TYPES,
    V3_ACT_REASON,
)
from consent.facts import ResourceFacts
from consent.model import patient_id_of, reference_key
from consent.sensitive import (
    SENSITIVE_LEVEL,
    SENSITIVITY_CODES,
    TOP_LEVEL,
    confidentiality_rank,
    label,
)


@dataclass(frozen=True, slots=True)
class Provision:
    """One provision whose request attributes matched; ``None`` means "attribute absent"."""

    consent_id: str
    path: str
    deny: bool
    classes: frozenset[str] | None = None
    codes: frozenset[tuple[str, str]] | None = None
    """``(system, code)``; system ``""`` matches a code in any system."""
    labels: frozenset[str] = frozenset()
    """Codes named in securityLabel other than confidentiality levels (upper case: labels are
    compared without regard to case, C-26)."""
    level: int | None = None
    """The lowest confidentiality rank named in securityLabel."""
    has_labels: bool = False
    data_period: fhirtime.Interval | None = None
    has_data_period: bool = False
    data: tuple[tuple[str, str], ...] | None = None
    """``(meaning, reference key)``."""
    chain_labels: frozenset[str] = frozenset()
    """Labels named on this provision and its ancestors (for sensitive data)."""
    chain_level: int = -1
    """The highest confidentiality rank named on this provision and its ancestors."""
    chain_purposes: frozenset[str] | None = None
    """The purposes this provision and its ancestors allow (``None``: any)."""
    children: tuple[Provision, ...] = ()

    def has_permit(self) -> bool:
        return not self.deny or any(child.has_permit() for child in self.children)

    def uses_dependents(self) -> bool:
        own = any(meaning == "dependents" for meaning, _ in self.data or ())
        return own or any(child.uses_dependents() for child in self.children)

    def uses_data(self) -> bool:
        """A provision in this tree names resources by reference (``data``): the resource's own
        reference is compared."""
        return self.data is not None or any(child.uses_data() for child in self.children)

    def uses_codes(self) -> bool:
        return self.codes is not None or any(child.uses_codes() for child in self.children)

    def uses_dates(self) -> bool:
        return self.has_data_period or any(child.uses_dates() for child in self.children)

    def names_every_label(self) -> bool:
        """This provision and its ancestors name every sensitivity code and the highest
        confidentiality level: nothing is withheld from a permit like this for sensitivity."""
        return self.chain_labels >= SENSITIVITY_CODES and self.chain_level >= TOP_LEVEL

    def permits_every_label(self) -> bool:
        """A permit in this tree names every label (:meth:`names_every_label`)."""
        if not self.deny and self.names_every_label():
            return True
        return any(child.permits_every_label() for child in self.children)

    def has_deny(self) -> bool:
        return self.deny or any(child.has_deny() for child in self.children)

    def is_blanket_deny(self) -> bool:
        """A deny about every resource, without exceptions."""
        specific = self.classes is not None or self.codes is not None or self.has_labels
        specific = specific or self.has_data_period or self.data is not None
        return self.deny and not specific and not self.children


def _codes(concepts: Any, system: str) -> frozenset[str] | None:
    """The codes in ``system`` (or without a system) of a list of Codings or CodeableConcepts."""
    if not concepts:
        return None
    found: set[str] = set()
    for item in concepts:
        codings = item.get("coding", ()) if "coding" in item else (item,)
        found |= {c["code"] for c in codings if c.get("system", system) == system and "code" in c}
    return frozenset(found)


def _security(codings: Sequence[Mapping[str, Any]]) -> tuple[frozenset[str], list[int]]:
    labels: set[str] = set()
    levels: list[int] = []
    for coding in codings:
        code = coding.get("code")
        if not isinstance(code, str):
            continue
        code = label(code)
        rank = confidentiality_rank(code, coding.get("system"))
        if rank is not None:
            levels.append(rank)
        else:
            labels.add(code)
    return frozenset(labels), levels


class Compiler:
    """Compiles consents for one request's patient, actors, purposes, action and time."""

    def __init__(
        self,
        patient_id: str,
        actor_keys: Collection[str],
        purposes: Collection[str],
        action: str,
        now: datetime,
    ) -> None:
        self.patient_id = patient_id
        self.actor_keys = frozenset(actor_keys)
        self.purposes = frozenset(purposes)
        self.action = action
        self.now = now

    def applies(self, consent: Mapping[str, Any]) -> bool:
        """C-06: active, patient-privacy, this patient, root period contains now."""
        if consent.get("status") != "active" or patient_id_of(consent) != self.patient_id:
            return False
        root = consent.get("provision")
        scope = consent.get("scope")
        return (
            isinstance(scope, Mapping)
            and PATIENT_PRIVACY in (_codes([scope], CONSENT_SCOPE) or ())
            and isinstance(root, Mapping)
            and fhirtime.period_contains_instant(root.get("period"), self.now)
        )

    def root(self, consent: Mapping[str, Any]) -> Provision | None:
        """The consent's root provision compiled (``None``: it does not concern this request).
        A consent that cannot be read denies everything: it may hold a deny (fail closed)."""
        consent_id = str(consent.get("id", ""))
        try:
            return self._node(consent_id, consent["provision"], "provision", None)
        except (AttributeError, KeyError, TypeError, ValueError):
            return Provision(consent_id, "provision", deny=True)

    def _requested(self, provision: Mapping[str, Any], deny: bool) -> bool:
        """Do the provision's request attributes (period, actor, action, purpose) match?"""
        if not fhirtime.period_contains_instant(provision.get("period"), self.now):
            return False
        actors = provision.get("actor")
        if actors and not {reference_key(a.get("reference")) for a in actors} & self.actor_keys:
            return False
        actions = _codes(provision.get("action"), CONSENT_ACTION)
        if actions is not None and self.action not in actions:
            return False
        purposes = _codes(provision.get("purpose"), V3_ACT_REASON)
        if purposes is None:
            return True
        if not self.purposes:
            return deny  # unknown purpose: a permit needs it, a deny applies regardless
        return bool(purposes & self.purposes)

    def _node(
        self, consent_id: str, provision: Mapping[str, Any], path: str, parent: Provision | None
    ) -> Provision | None:
        inherited = None if parent is None else ("deny" if parent.deny else "permit")
        kind = provision.get("type", inherited)
        if kind not in ("permit", "deny"):
            return None
        deny = kind == "deny"
        if not self._requested(provision, deny):
            return None
        chain_purposes = parent.chain_purposes if parent else None
        purposes = _codes(provision.get("purpose"), V3_ACT_REASON)
        if purposes is not None:
            chain_purposes = purposes if chain_purposes is None else chain_purposes & purposes
        codes = None
        if provision.get("code"):
            codes = frozenset(
                (str(c.get("system", "")), c["code"])
                for concept in provision["code"]
                for c in concept.get("coding", ())
                if "code" in c
            )
        security = provision.get("securityLabel") or []
        labels, levels = _security(security)
        data_period = provision.get("dataPeriod")
        data = None
        if provision.get("data"):
            data = tuple(
                (str(item.get("meaning", "")), reference_key(item.get("reference")) or "")
                for item in provision["data"]
            )
        node = Provision(
            consent_id=consent_id,
            path=path,
            deny=deny,
            classes=_codes(provision.get("class"), RESOURCE_TYPES),
            codes=codes,
            labels=labels,
            level=min(levels) if levels else None,
            has_labels=bool(security),
            data_period=fhirtime.period(data_period) if data_period is not None else None,
            has_data_period=data_period is not None,
            data=data,
            chain_labels=(parent.chain_labels if parent else frozenset()) | labels,
            chain_level=max([parent.chain_level if parent else -1, *levels]),
            chain_purposes=chain_purposes,
        )
        children = []
        for index, child in enumerate(provision.get("provision") or ()):
            compiled = self._node(consent_id, child, f"{path}.provision[{index}]", node)
            if compiled is not None:
                children.append(compiled)
        return replace(node, children=tuple(children)) if children else node


def matches(node: Provision, seen: ResourceFacts) -> bool:
    """The resource-dependent tests of one provision (C-07, C-09)."""
    if node.classes is not None and seen.resource_type not in node.classes:
        return False
    if node.codes is not None and not any(
        (system, code) in seen.codes or (not system and any(c == code for _, c in seen.codes))
        for system, code in node.codes
    ):
        return False
    if node.has_labels:
        by_level = node.level is not None and seen.level >= node.level
        if not (by_level or node.labels & seen.labels):
            return False
    if node.has_data_period:
        if seen.date is None or node.data_period is None:
            return node.deny  # no clinical date: unknown
        inside = (fhirtime.overlaps if node.deny else fhirtime.contains)(
            node.data_period, seen.date
        )
        if not inside:
            return False
    if node.data is not None:
        return any(_data_matches(meaning, key, node.deny, seen) for meaning, key in node.data)
    return True


def _data_matches(meaning: str, key: str, deny: bool, seen: ResourceFacts) -> bool:
    if meaning == "instance":
        return key == seen.reference
    if meaning == "dependents":
        return key == seen.reference or key in seen.references
    return deny  # related / authoredby need other resources to evaluate: unknown


def deepest(node: Provision, seen: ResourceFacts, found: list[Provision]) -> None:
    """Append the deepest matching provisions under (and including) ``node``."""
    if not matches(node, seen):
        return
    before = len(found)
    for child in node.children:
        deepest(child, seen, found)
    if len(found) == before:
        found.append(node)


def covers(node: Provision, seen: ResourceFacts) -> bool:
    """Does this permit's provision chain name every sensitive label of the resource?"""
    if not (seen.labels & SENSITIVITY_CODES) <= node.chain_labels:
        return False
    return seen.level < SENSITIVE_LEVEL or node.chain_level >= seen.level
