"""Step 4 of the pipeline: the patient's consent decides what of theirs leaves the gateway
(CONSENT.md C-03 … C-18), after the scope and compartment checks and for every resource released
— from the upstream and, later, from the cache alike (C-10).

Per request the gateway reads the consents' change counter afresh and uses each concerned
patient's active Consents as read under that counter, reading them again when it has moved
(:mod:`gateway.fhir.freshness`): decisions are never cached and consents never outlive a change, so
a withdrawal through any instance holds on the very next request (C-12). The
consents are compiled once per (request, patient) and each resource is then decided cheaply
(``consent.decide``); what is permitted is minimised for the purposes its decision names
(``consent.minimise``, C-15/C-16) before the caller's ``_elements``/``_summary`` (C-17).

A resource that belongs to several patients is released only if every one of them permits it.
Resources of types that hold no patient data (Practitioner, Organization, Medication...) need no
consent but are still minimised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import PyMongoError

from consent.codes import ACCESS
from consent.decide import Basis, Decision, Evaluator, RequestAttributes, compile_consents
from consent.errors import ConsentError, Unreleasable
from consent.mentions import without_mentions
from consent.minimise import Profile, profile_for
from consent.references import patient_id
from consent.store import ConsentStore
from gateway.fhir import auditing, compartment
from gateway.fhir.access import AccessDecision
from gateway.fhir.auditing import Tally
from gateway.fhir.context import AccessContext
from gateway.fhir.freshness import ChangeEpochs, EpochCache
from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.proxy.answer import Answer
from gateway.web.errors import Forbidden, ServiceUnavailable
from smart_auth.clients import ClientStore

_CLIENT_TTL_SECONDS = 30.0
_PATIENT_PARAMS = frozenset({"patient", "subject"})


@dataclass
class RequestConsent:
    """The consent side of one request: compiled evaluators per patient, and every decision
    taken (for the audit record, C-11)."""

    context: AccessContext
    trusted: bool
    now: datetime
    action: str = ACCESS
    """The consentaction the request is evaluated as: ``access`` for reads; writes are
    ``collect`` (create) or ``correct`` (update, patch, delete), C-24."""
    evaluators: dict[str, Evaluator] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=dict)
    """Per patient: the decisions taken on their data and what of it was released, for the
    request's audit record (A-04, A-05; :mod:`gateway.fhir.auditing`)."""
    contexts: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Binary security contexts read for this request (``Type/id`` -> the resource): a Binary is
    decided as the resource it belongs to (FHIR R4 Binary 2.3.1.1)."""
    _profiles: dict[tuple[str, ...], Profile] = field(
        default_factory=dict, repr=False, compare=False
    )
    """The minimisation profile of each combination of purposes met (``_profile``)."""

    def attributes(self, patient: str) -> RequestAttributes:
        actors = (self.context.fhir_user,) if self.context.fhir_user else ()
        return RequestAttributes(
            patient_id=patient,
            client_id=self.context.client_id,
            now=self.now,
            actors=actors,
            purposes=self.context.purposes,
            trusted=self.trusted,
            action=self.action,
        )

    def refusal(self, patients: Iterable[str]) -> Decision | None:
        """A decision that withholds everything of these patients, if there is one (no consent
        at all, or a blanket deny): the request is answered with it, whatever the upstream
        returned."""
        refusals = {p: self.evaluators[p].refusal() for p in patients if p in self.evaluators}
        found = [r for r in refusals.values() if r is not None]
        if not found or len(found) != len(refusals):
            return None
        for patient, refusal in refusals.items():
            if refusal is not None:
                self._tally(patient).decisions.append(refusal)
        return found[0]

    def _tally(self, patient: str) -> Tally:
        tally = self.tallies.get(patient)
        if tally is None:
            tally = self.tallies[patient] = Tally()
        return tally

    def release(
        self, resource: dict[str, Any], owners: frozenset[str] | None = None
    ) -> dict[str, Any] | None:
        """The resource as released (minimised), or ``None`` when a consent withholds it.
        ``owners``: the patients whose compartment holds it, when already known."""
        if owners is None:
            owners = compartment.patients_of(resource, self.contexts)
        if not compartment.attributed(resource, owners):
            self.decisions.append(_UNATTRIBUTED)
            return None
        decided = self._decided_as(resource)
        purposes: tuple[str, ...] = self.context.purposes
        hide_mentions = False
        for patient in owners if len(owners) == 1 else sorted(owners):
            evaluator = self.evaluators.get(patient)
            if evaluator is None:  # not loaded: nothing may be assumed
                return None
            decision = evaluator.decide(decided)
            self.decisions.append(decision)
            self._tally(patient).decisions.append(decision)
            if not decision.permitted:
                return None
            # Several owners: only what every one of them permits it for (the strictest profile).
            if purposes != decision.purposes:
                purposes = tuple(p for p in purposes if p in decision.purposes)
            hide_mentions = hide_mentions or decision.hide_mentions
        profile = self._profile(purposes)
        released = resource  # nothing to remove: the pipeline owns this parsed resource
        if not profile.keeps_everything(str(resource.get("resourceType", ""))):
            try:
                released = profile.apply(resource)
            except Unreleasable as exc:  # C-28: e.g. a modifier research may not drop
                reason = f"not released for {', '.join(purposes)}: {exc}"
                refusal = Decision(permitted=False, basis=Basis.MINIMISATION, reason=reason)
                self.decisions.append(refusal)
                for patient in owners:
                    self._tally(patient).decisions.append(refusal)
                return None
        for patient in owners:
            self._tally(patient).released(resource)
        # C-26: narrative and references' displays may mention what consent withholds.
        return without_mentions(released) if hide_mentions else released

    def _profile(self, purposes: tuple[str, ...]) -> Profile:
        """The minimisation profile for these purposes, once per request and combination."""
        profile = self._profiles.get(purposes)
        if profile is None:
            try:
                profile = profile_for(purposes)
            except ConsentError:  # a purpose without a profile: keep nothing but the bare resource
                profile = profile_for(())
            self._profiles[purposes] = profile
        return profile

    def _decided_as(self, resource: dict[str, Any]) -> dict[str, Any]:
        """What a resource's consent decision looks at: itself, or for a Binary the resource of
        its security context (its labels and codes, not the Binary's lack of them)."""
        if resource.get("resourceType") == "Binary":
            context = compartment.security_context(resource)
            found = self.contexts.get(context) if context is not None else None
            if found is not None:
                return found
        return resource

    def refusal_for(self, resource: dict[str, Any], owners: frozenset[str]) -> Decision | None:
        """The decision of the first of ``owners`` whose consent does not permit this resource
        (every owner must have been loaded), or ``None`` when all of them permit it."""
        for patient in sorted(owners):
            evaluator = self.evaluators.get(patient)
            if evaluator is None:
                raise RuntimeError(f"consents of Patient/{patient} were not loaded")
            decision = evaluator.decide(resource)
            self.decisions.append(decision)
            self._tally(patient).decisions.append(decision)
            if not decision.permitted:
                return decision
        return None

    def still_permits(self, resource: dict[str, Any], owners: frozenset[str]) -> bool:
        """Whether a resource released earlier (a line of a bulk export file) is still permitted
        by every owner's consents now (loaded); counted as released to them when it is."""
        if self.refusal_for(resource, owners) is not None:
            return False
        for patient in owners:
            self._tally(patient).released(resource)
        return True

    def last_refusal(self) -> Decision | None:
        return next((d for d in reversed(self.decisions) if not d.permitted), None)


_UNATTRIBUTED = Decision(
    permitted=False,
    basis=Basis.UNATTRIBUTED,
    reason="it cannot be attributed to patients, and only data whose patients consented, or data "
    "about no patient, is released",
)


class ConsentGate:
    """Loads consents and client policies for requests."""

    def __init__(self, store: ConsentStore, clients: ClientStore, epochs: ChangeEpochs) -> None:
        self._store = store
        self._clients = clients
        self._epochs = epochs
        self._active: EpochCache[str, list[dict[str, Any]]] = EpochCache(store.active_for_many)
        self._trusted: dict[str, tuple[bool, float]] = {}

    async def _is_trusted(self, client_id: str) -> bool:
        """The client's base policy (C-04): trusted clients run under opt-out. Kept for a few
        seconds per instance; a change of the flag is an administrator's act, not a withdrawal."""
        cached = self._trusted.get(client_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        client = await self._clients.get(client_id)
        trusted = bool(client is not None and client.trusted)
        self._trusted[client_id] = (trusted, time.monotonic() + _CLIENT_TTL_SECONDS)
        return trusted

    async def start(self, context: AccessContext, action: str = ACCESS) -> RequestConsent:
        try:
            trusted = await self._is_trusted(context.client_id)
        except PyMongoError:
            raise ServiceUnavailable("consent cannot be checked right now; try again") from None
        consent = RequestConsent(context, trusted, datetime.now(UTC), action)
        audit = auditing.current()
        if audit is not None:
            audit.gather(consent.tallies)
        return consent

    async def load(self, request: RequestConsent, patients: Iterable[str]) -> None:
        """Read the active consents of these patients (fresh, C-12) and compile them."""
        missing = [
            p
            for p in dict.fromkeys(patients)
            if p not in request.evaluators and p != compartment.UNATTRIBUTED
        ]
        if not missing:
            return
        try:
            epoch = (await self._epochs.current()).consents
            found = await self._active.get_many(missing, epoch, [])
        except PyMongoError:
            raise ServiceUnavailable("consent cannot be checked right now; try again") from None
        for patient in missing:
            consents: list[Mapping[str, Any]] = list(found.get(patient, []))
            request.evaluators[patient] = compile_consents(consents, request.attributes(patient))

    async def load_for(
        self,
        request: RequestConsent,
        resources: Iterable[Mapping[str, Any]],
        owners_of: Callable[[Mapping[str, Any]], frozenset[str]] = compartment.patients_of,
    ) -> None:
        """Load the consents of every patient these resources belong to."""
        owners: set[str] = set()
        for resource in resources:
            owners |= owners_of(resource)
        await self.load(request, owners)

    async def refusal(
        self, request: RequestConsent, decision: AccessDecision, asked: FhirInteraction
    ) -> Decision | None:
        """Before the fetch, when the patients a read is about are known: a decision that
        withholds everything of theirs (no consent at all, a blanket deny), if there is one. The
        consents of those patients are loaded meanwhile, for the release."""
        named = _named_patients(asked)
        context = request.context
        if decision.patient_only:  # the patients asked about, else every one the token reaches
            patients = sorted(context.patients.intersection(named) or context.patients)
        else:
            patients = sorted(named)
        if not patients:
            return None
        await self.load(request, patients)
        rtype = decision.interaction.resource_type
        if rtype is not None and not compartment.is_compartment_type(rtype):
            return None  # Practitioner, Medication...: no patient data, no consent needed
        return request.refusal(patients)

    async def check_write(
        self, context: AccessContext, action: str, resources: Iterable[dict[str, Any]]
    ) -> None:
        """C-24: the patients whose record a write touches (each resource before and after it)
        must consent to this app doing it (``action``, a consentaction code), exactly as for a
        read; 403 naming the Consent that decided otherwise."""
        request = await self.start(context, action)
        for resource in resources:
            owners = compartment.patients_of(resource)
            if not owners:
                continue  # no patient's data: scopes alone decide
            await self.load(request, owners)
            refusal = request.refusal_for(resource, owners)
            if refusal is not None:
                raise Forbidden(explain(refusal))


def _named_patients(interaction: FhirInteraction) -> list[str]:
    """The patients a request is about before anything is fetched (a compartment,
    ``$everything``, or ``patient=``/``subject=`` values that all name patients); ``[]``
    otherwise."""
    if interaction.compartment is not None and interaction.compartment[0] == "Patient":
        return [interaction.compartment[1]]
    if interaction.operation == "everything" and interaction.resource_id:
        return [interaction.resource_id]
    if interaction.kind is not Kind.SEARCH_TYPE:
        return []
    named: list[str] = []
    for name, value in interaction.params:
        if name not in _PATIENT_PARAMS:
            continue
        for item in value.split(","):
            patient = patient_id(item, bare=True)
            if patient is None or (name != "patient" and not item.strip().startswith("Patient/")):
                return []  # not only patients: the refusal could depend on the data
            named.append(patient)
    return named


_NOT_CONSENT = frozenset({Basis.UNATTRIBUTED, Basis.UNDECIDABLE, Basis.MINIMISATION})


def explain(decision: Decision) -> str:
    """A refusal's OperationOutcome text: why, and which Consent and provision decided (C-11)."""
    where = f" (Consent/{decision.consent_id}, {decision.provision})" if decision.consent_id else ""
    if decision.basis in _NOT_CONSENT:  # the gateway's own rules, not a patient's choice
        return f"withheld: {decision.reason}{where}"
    return f"withheld by the patient's consent: {decision.reason}{where}"


def refused(decision: Decision, kind: Kind) -> Answer:
    """C-03: a read under a missing or withdrawn consent is 403; a search is an empty result that
    says why."""
    if kind in (Kind.READ, Kind.VREAD):
        raise Forbidden(explain(decision))
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "information", "code": "suppressed", "diagnostics": explain(decision)}
        ],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [{"search": {"mode": "outcome"}, "resource": outcome}],
    }
    return Answer(200, {}, bundle)
