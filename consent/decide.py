"""The consent decision: may this resource be released to this request? (FHIR R4 Consent,
hl7.org/fhir/R4/consent.html; CONSENT.md C-03 to C-11, which follow the LEAP Consent Decision
Service's evaluation rules).

A pure function of the patient's consents, the request and the resource::

    decide(consents, request, resource) -> Decision

``compile_consents(consents, request)`` does the request-only work once (which consents are in
force, which provisions name this actor, purpose and action) and returns an :class:`Evaluator`
that decides each resource of a response cheaply; ``decide`` and ``decide_many`` are built on it.

The rules:

- C-06 A consent counts when ``status`` is active, ``scope`` is patient-privacy, ``patient`` is the
  request's patient, and its root ``provision.period`` contains ``request.now``.
- C-07 A provision matches when every attribute it has matches (AND); an attribute's list is an OR
  (any actor, any purpose, any class...); an absent attribute matches anything. Nested provisions
  are looked at only inside a matching parent; the deepest matching provisions decide (a nested
  provision overrides its parent's type; a nested provision without a type inherits it), and
  matching siblings all count (OR).
- C-08 Deny overrides permit, across the provisions of a consent and across all consents of the
  patient.
- C-09 ``class`` (resource types, system ``http://hl7.org/fhir/resource-types``), ``code`` (the
  resource's codes), ``securityLabel`` (its labels), ``dataPeriod`` (its clinical date) and
  ``data`` (``instance``: that resource; ``dependents``: it or a resource referring to it) limit
  which resources a provision is about. ``action`` is compared with ``request.action`` (reads and
  searches are ``access``). Actors match by reference (``Type/id``, or ``system|value`` of an
  identifier reference; ``actor.role`` is not compared); purposes and actions match by code in
  their code system (v3-ActReason, consentaction) without code hierarchies.
- Unknown is not permitted: when the request or the resource lacks what an attribute needs (the
  request declares no purpose, the resource has no date, ``data.meaning`` is ``related`` or
  ``authoredby`` which needs other resources to evaluate), a permit provision does not match and
  a deny provision does.
- Sensitive resources (labels and codes in ``consent/data/sensitive-labels.json`` and
  ``sensitive-codes/``, found wherever they sit in the resource, contained resources included:
  :mod:`consent.facts`) are released only under a permit whose provision chain names each of their
  sensitivity codes and a confidentiality at least as high as theirs in ``securityLabel``. This
  holds under opt-out too. Labels are compared without regard to case.
- C-26 A resource whose sensitivity cannot be decided (malformed labels or codes) is withheld,
  whatever the consents say. A released resource's narrative and the display of its references
  to types that can hold patient data may mention what is withheld, so the decision obliges the
  gateway to remove them (``hide_mentions``), unless the consents that apply to the request
  permit every sensitivity code and the highest confidentiality level (a permit provision names
  them all in ``securityLabel``) and deny nothing: then no resource is withheld from the request
  for its sensitivity or by a deny, and what the text mentions may be seen. (A resource of a type
  outside the permit's ``class`` is still withheld; its display in a reference is not.)
- C-03 No matching permit: deny ("no consent"). C-04 A trusted client runs under opt-out: permit
  unless a deny matches.
- C-11 Every decision names the Consent id and provision path that decided (none for the base
  policy).

Deciding a response's resources: a response holds many resources that look alike to the
provisions (a thousand heart rates differ in their ids, dates and values, none of which a
provision without ``dataPeriod`` or ``data`` compares). :meth:`Evaluator.decide` reads every
resource afresh -- its facts (:func:`consent.facts.facts_key`: type, labels, confidentiality,
problems, mentions, and the codes, date, own reference and references when a provision compares
them) -- and remembers the decision it reached for each distinct set of facts. This is exact:
a decision is a function of the compiled provisions, which do not change for the evaluator's
life, and of those facts alone (``matches``, ``covers`` and the rules above read nothing else),
so equal facts give the same decision, field for field. What no provision compares is left out
of the facts, never guessed. The memory lives as long as the evaluator (one request, one
patient) and is bounded. :meth:`Evaluator.decide_afresh` decides without it, from
:func:`consent.facts.facts`: the reference the memory is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from consent.codes import ACCESS
from consent.facts import FactsKey, ResourceFacts, facts, facts_key
from consent.model import client_key
from consent.provision import Compiler, Provision, covers, deepest


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """Who asks for whose data, why and when (a read-only view of the request)."""

    patient_id: str
    """The patient whose data is released."""
    client_id: str
    """The SMART client; it matches an actor reference whose identifier is
    ``{"system": CLIENT_SYSTEM, "value": client_id}``."""
    now: datetime
    """An aware datetime."""
    actors: tuple[str, ...] = ()
    """Further actor reference keys: ``Practitioner/abc`` for a user token, ``system|value``."""
    purposes: tuple[str, ...] = ()
    """The client's purposes of use (v3-ActReason codes)."""
    trusted: bool = False
    """The client runs under opt-out (C-04)."""
    action: str = ACCESS
    """The consentaction code of the interaction (``access`` for reads and searches)."""


class Basis(StrEnum):
    """Why a decision came out as it did."""

    PERMIT = "permit"
    """A permit provision matched (and covers the resource's sensitive labels)."""
    DENY = "deny"
    """A deny provision matched (C-08)."""
    SENSITIVE = "sensitive"
    """Sensitive labels no matching permit names (C-09)."""
    NO_CONSENT = "no-consent"
    """Opt-in and no permit matched (C-03)."""
    OPT_OUT = "opt-out"
    """Trusted client, no deny matched (C-04)."""
    UNATTRIBUTED = "unattributed"
    """The resource cannot be attributed to patients and is of no type without patient data:
    nobody's consent can release it (C-27)."""
    UNDECIDABLE = "undecidable"
    """Its sensitivity cannot be decided: malformed labels or codes (C-26)."""
    MINIMISATION = "minimisation"
    """Permitted, but its purpose's minimisation profile cannot release it (C-28)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome for one resource, with its explanation (C-11) and obligations."""

    permitted: bool
    basis: Basis
    reason: str
    consent_id: str | None = None
    """The Consent that decided (``None`` under the base policy)."""
    provision: str | None = None
    """Its provision that decided, e.g. ``provision.provision[1]``."""
    purposes: tuple[str, ...] = ()
    """Purposes of use the resource is released for: apply their minimisation profiles (C-15)."""
    labels: tuple[str, ...] = ()
    """The resource's sensitive labels (released under an explicit permit, or why it was not)."""
    hide_mentions: bool = False
    """Release it without its narrative and without the display of its references to types
    that can hold patient data (C-26; ``consent.mentions.without_mentions``): they may mention
    what is withheld. False when it has neither, or when the request's consents permit every
    sensitivity label and deny nothing."""


_REMEMBERED = 1024
"""Distinct sets of facts an evaluator remembers a decision for (a response rarely holds more
than a few dozen; past the bound, decisions are still made, only not remembered)."""


def _where(node: Provision) -> str:
    return f"Consent/{node.consent_id} {node.path}"


class Evaluator:
    """The patient's consents compiled for one request; ``decide`` is cheap per resource."""

    def __init__(self, roots: Sequence[Provision], request: RequestAttributes) -> None:
        self.request = request
        self._roots = tuple(roots)
        self._references = any(root.uses_dependents() for root in roots)
        self._codes = any(root.uses_codes() for root in roots)
        self._dates = any(root.uses_dates() for root in roots)
        self._reference = any(root.uses_data() for root in roots)
        self._decided: dict[FactsKey, Decision] = {}
        self._mentions_kept = any(root.permits_every_label() for root in roots) and not any(
            root.has_deny() for root in roots
        )

    @property
    def consent_ids(self) -> tuple[str, ...]:
        """The consents that apply to this request (in force, naming its actor and purpose)."""
        return tuple(root.consent_id for root in self._roots)

    def refusal(self) -> Decision | None:
        """A decision that holds for every resource of this request, when there is one: a
        blanket deny, or (opt-in) no permit anywhere. Lets the gateway refuse without fetching."""
        for root in self._roots:
            if root.is_blanket_deny():
                return Decision(
                    permitted=False,
                    basis=Basis.DENY,
                    reason=f"denied by {_where(root)}",
                    consent_id=root.consent_id,
                    provision=root.path,
                )
        if not self.request.trusted and not any(root.has_permit() for root in self._roots):
            return _no_consent()
        return None

    def decide(self, resource: Mapping[str, Any]) -> Decision:
        """The decision for one resource: read afresh, decided once per distinct set of facts
        (the module's docstring)."""
        key = facts_key(
            resource,
            with_references=self._references,
            with_codes=self._codes,
            with_date=self._dates,
            with_reference=self._reference,
        )
        decision = self._decided.get(key)
        if decision is None:
            decision = self._decide(ResourceFacts(*key))
            if len(self._decided) < _REMEMBERED:
                self._decided[key] = decision
        return decision

    def decide_afresh(self, resource: Mapping[str, Any]) -> Decision:
        """The decision for one resource, made from its facts alone without what this evaluator
        decided before (what :meth:`decide` must always equal)."""
        seen = facts(
            resource,
            with_references=self._references,
            with_codes=self._codes,
            with_date=self._dates,
        )
        return self._decide(seen)

    def _decide(self, seen: ResourceFacts) -> Decision:
        if seen.undecidable is not None:
            reason = f"its sensitivity cannot be decided ({seen.undecidable}), so it is withheld"
            return Decision(permitted=False, basis=Basis.UNDECIDABLE, reason=reason)
        found: list[Provision] = []
        for root in self._roots:
            deepest(root, seen, found)
        sensitive = tuple(sorted(seen.sensitive))
        for node in found:
            if node.deny:
                reason = f"denied by {_where(node)} (deny overrides permit)"
                return Decision(
                    permitted=False,
                    basis=Basis.DENY,
                    reason=reason,
                    consent_id=node.consent_id,
                    provision=node.path,
                    labels=sensitive,
                )
        permits = found  # no deny matched
        for node in permits:
            if covers(node, seen):
                purposes = self.request.purposes
                if node.chain_purposes is not None:
                    purposes = tuple(p for p in purposes if p in node.chain_purposes)
                return Decision(
                    permitted=True,
                    basis=Basis.PERMIT,
                    reason=f"permitted by {_where(node)}",
                    consent_id=node.consent_id,
                    provision=node.path,
                    purposes=purposes,
                    labels=sensitive,
                    hide_mentions=seen.mentions and not self._mentions_kept,
                )
        if permits or (sensitive and self.request.trusted):
            first = permits[0] if permits else None
            reason = (
                f"sensitive data ({', '.join(sensitive)}) needs a permit that names "
                "these labels in securityLabel"
            )
            return Decision(
                permitted=False,
                basis=Basis.SENSITIVE,
                reason=reason,
                consent_id=first.consent_id if first else None,
                provision=first.path if first else None,
                labels=sensitive,
            )
        if self.request.trusted:
            return Decision(
                permitted=True,
                basis=Basis.OPT_OUT,
                reason="permitted under opt-out: no deny applies",
                purposes=self.request.purposes,
                hide_mentions=seen.mentions and not self._mentions_kept,
            )
        return _no_consent()

    def decide_many(self, resources: Iterable[Mapping[str, Any]]) -> list[Decision]:
        return [self.decide(resource) for resource in resources]


def _no_consent() -> Decision:
    return Decision(
        permitted=False,
        basis=Basis.NO_CONSENT,
        reason="no consent: no active Consent of the patient permits this app",
    )


def compile_consents(
    consents: Iterable[Mapping[str, Any]], request: RequestAttributes
) -> Evaluator:
    """Compile the patient's consents for one request (the per-request part of the decision)."""
    compiler = Compiler(
        request.patient_id,
        {client_key(request.client_id), *request.actors},
        request.purposes,
        request.action,
        request.now,
    )
    roots: list[Provision] = []
    for consent in consents:
        if not compiler.applies(consent):
            continue
        root = compiler.root(consent)
        if root is not None:
            roots.append(root)
    return Evaluator(roots, request)


def decide(
    consents: Iterable[Mapping[str, Any]],
    request: RequestAttributes,
    resource: Mapping[str, Any],
) -> Decision:
    """May ``resource`` be released for ``request``, given the patient's ``consents``?"""
    return compile_consents(consents, request).decide(resource)


def decide_many(
    consents: Iterable[Mapping[str, Any]],
    request: RequestAttributes,
    resources: Iterable[Mapping[str, Any]],
) -> list[Decision]:
    """``decide`` for every resource of a response, compiling the consents once."""
    return compile_consents(consents, request).decide_many(resources)
