"""Step 3 of the pipeline: SMART scopes and the patient compartment (SMART 2.2 section 3;
SMART.md S-26 … S-29; DESIGN.md "Rules that make the pipeline safe").

Two halves, in the spirit of google/fhir-gateway's ``AccessChecker``:

- :class:`AccessPolicy` answers, for one resource, "may this token see it?" — the response
  predicate applied to every resource released (matches, includes, contained resources, history
  versions, batch entries). A resource is released when at least one of the token's scopes covers
  its type with a suitable letter, satisfies that scope's granular restriction (S-28), and — for a
  ``patient/`` scope — lies in the compartment of a patient the token reaches (or is of a type that
  holds no patient data).
- :func:`authorize` decides a whole interaction before anything is sent upstream: refuse (403), or
  allow with a narrowed request (a patient-context search gets the patient constraint; a single
  granular scope's restriction is added) and the letters the released resources must be covered by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.fhir import compartment, searchparams
from gateway.fhir.context import AccessContext
from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.fhir.narrowing import narrow_search
from gateway.web.errors import Forbidden
from smart_auth.scopes import Context, Letter, ResourceScope

AUTHORITY_TYPES = frozenset({"RelatedPerson", "Person", "Linkage"})
"""Resources that confer authority over others' records (SECURITY.md P-20); ``Patient.link`` is
checked on the write itself (``writes.check_authority_unchanged``)."""

NEVER_FROM_UPSTREAM = frozenset({"AuditEvent", "Consent"})
"""Types the gateway answers from its own store and never releases from the upstream, whatever
brought them (includes, ``$everything``, history): the audit log is ``/fhir/AuditEvent``
(``audit_api.py``), and AuditEvents the upstream holds (forwarded ones among them, AUDIT.md A-11)
follow other rules than the log's; the Consents that decide are the gateway's (``/fhir/Consent``,
C-02), read under the authority rules of C-23, and Consents the upstream holds (the EHR's own
paper consents, say) would escape them."""

READ: frozenset[Letter] = frozenset({"r"})
SEARCH: frozenset[Letter] = frozenset({"s"})
SEE: frozenset[Letter] = frozenset({"r", "s"})
VALIDATE: frozenset[Letter] = frozenset({"c", "u"})
"""``$validate`` checks a body as a create or an update would."""
WRITE_LETTERS: dict[Kind, frozenset[Letter]] = {
    Kind.CREATE: frozenset({"c"}),
    Kind.UPDATE: frozenset({"u"}),
    Kind.PATCH: frozenset({"u"}),
    Kind.DELETE: frozenset({"d"}),
}
"""The scope letter each write needs (SMART 2.2 section 3: c, u, d)."""
_WRITING = {
    Kind.CREATE: "creating",
    Kind.UPDATE: "updating",
    Kind.PATCH: "updating",
    Kind.DELETE: "deleting",
}


def _satisfies(resource: Mapping[str, Any], scope: ResourceScope) -> bool:
    for name, value in scope.restriction:
        try:
            if not searchparams.matches(resource, name, value):
                return False
        except searchparams.UnsupportedParameter:
            return False  # a restriction we cannot evaluate never widens access
    return True


@dataclass(slots=True)
class AccessPolicy:
    """The per-resource predicate for one token. One per request, and not frozen on purpose: it
    remembers, by object identity, whose compartment each resource of the response is in (so the
    access check, the consent and the filter compute it once), and whether the response names any
    patient outside the token's reach at all (:meth:`note_response`)."""

    context: AccessContext
    contexts: dict[str, dict[str, Any] | None] = field(default_factory=dict, compare=False)
    """Binary security contexts read for this request (``Type/id`` -> the resource, ``None``
    when not found): a Binary belongs to, and is seen with, the resource it names."""
    _owners: dict[int, tuple[Mapping[str, Any], frozenset[str]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _only_own_patients: bool = field(default=False, compare=False, repr=False)
    _scopes: dict[tuple[str, frozenset[Letter]], tuple[ResourceScope, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def note_response(self, raw: bytes | None) -> None:
        """Look once at a whole response's JSON: when it names no patient outside the token's
        reach, resources need not be searched one by one for such references."""
        self._only_own_patients = raw is not None and compartment.mentions_only(
            raw, self.context.patients
        )

    def owners_of(self, resource: Mapping[str, Any]) -> frozenset[str]:
        """:func:`gateway.fhir.compartment.patients_of`, once per resource object."""
        known = self._owners.get(id(resource))
        if known is not None and known[0] is resource:
            return known[1]
        owners = compartment.patients_of(resource, self.contexts)
        self._owners[id(resource)] = (resource, owners)  # holding it keeps the id unique
        return owners

    def _reaches(self, resource: Mapping[str, Any]) -> bool:
        """A patient-context scope reaches this resource: it belongs to the token's patients
        (or holds no patient data) and names no other patient anywhere — a resource shared with
        another patient (say, performed by them) is not released to a patient-context token."""
        rtype = str(resource.get("resourceType", ""))
        allowed = self.context.patients
        if not self._only_own_patients and (
            compartment.patient_references(resource, with_contained=False) - allowed
        ):
            return False
        if rtype in compartment.PUBLIC_TYPES:
            return True
        owners = self.owners_of(resource)
        return bool(owners) and owners <= allowed

    def scopes_for(
        self, interaction: FhirInteraction, letters: frozenset[Letter]
    ) -> list[ResourceScope]:
        """The token's scopes that allow ``letters`` on the interaction's resource type."""
        return _scopes_for(self.context, interaction.resource_type or "", letters)

    def permits(self, resource: Mapping[str, Any], letters: frozenset[Letter] = SEE) -> bool:
        """Whether this token may have ``resource`` from the upstream (or write it there)."""
        if resource.get("resourceType") in NEVER_FROM_UPSTREAM:
            return False
        return self.permits_served(resource, letters)

    def permits_served(self, resource: Mapping[str, Any], letters: frozenset[Letter] = SEE) -> bool:
        """:meth:`permits` for a resource the gateway serves from its own store (a Consent): the
        scopes and the compartment decide, whatever its type."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return False
        scopes = self._scopes.get((rtype, letters))
        if scopes is None:  # the token's scopes for this type and letters, in the token's order
            scopes = tuple(_scopes_for(self.context, rtype, letters))
            if len(self._scopes) < 256:  # types come from upstream data: bounded
                self._scopes[(rtype, letters)] = scopes
        reaches: bool | None = None
        for scope in scopes:
            if scope.context is Context.PATIENT:
                if reaches is None:
                    reaches = self._reaches(resource)
                if not reaches:
                    continue
            if _satisfies(resource, scope):
                return self._context_permitted(resource, letters)
        return False

    def _context_permitted(self, resource: Mapping[str, Any], letters: frozenset[Letter]) -> bool:
        """A Binary whose security context is another resource is seen only with it: the token
        must be allowed that resource too (FHIR R4 Binary 2.3.1.1)."""
        if resource.get("resourceType") != "Binary":
            return True
        reference = compartment.security_context(resource)
        if reference is None or reference.startswith("Patient/"):
            return True
        found = self.contexts.get(reference)
        return found is not None and self.permits(found, letters | READ)

    def permits_bodiless(self, resource_type: str, letters: frozenset[Letter]) -> bool:
        """An entry that names a resource without carrying it (a deletion in a history Bundle):
        only a ``user/`` or ``system/`` scope without restriction covers it, since nothing can be
        checked against the compartment or a granular restriction."""
        if resource_type in NEVER_FROM_UPSTREAM:
            return False
        return any(
            s.covers_type(resource_type)
            and s.letters & letters
            and s.context is not Context.PATIENT
            and not s.restriction
            for s in self.context.scopes
        )

    def permits_contained(self, contained: Mapping[str, Any], letters: frozenset[Letter]) -> bool:
        """A contained resource: its type must be covered, and it may not point at a patient the
        token does not reach."""
        rtype = contained.get("resourceType")
        if not isinstance(rtype, str) or rtype in NEVER_FROM_UPSTREAM:
            return False
        scopes = [s for s in self.context.scopes if s.covers_type(rtype) and s.letters & letters]
        if not scopes:
            return False
        if all(s.context is Context.PATIENT for s in scopes):
            allowed = self.context.patients
            if rtype == "Patient" or not (
                rtype in compartment.PUBLIC_TYPES or compartment.is_compartment_type(rtype)
            ):
                return False  # what a direct read would refuse is not released contained either
            if (
                compartment.patients_of(contained) | compartment.patient_references(contained)
            ) - allowed:
                return False
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessDecision:
    """An allowed interaction: what to send upstream and how to judge what comes back."""

    interaction: FhirInteraction
    """The interaction to send (a search narrowed to the token's patients)."""
    policy: AccessPolicy
    letters: frozenset[Letter]
    """The scope letters the interaction needs: for a read or search, what every resource
    released must be covered by; for a write, what the resource before and after must be."""
    patient_only: bool
    """Only ``patient/`` scopes apply: writes and reads are held to the compartment."""

    @property
    def restricted(self) -> bool:
        """A granular scope (S-28) limits what this interaction may touch."""
        return any(s.restriction for s in self.policy.scopes_for(self.interaction, self.letters))


def _scopes_for(
    context: AccessContext, rtype: str, letters: frozenset[Letter]
) -> list[ResourceScope]:
    return [s for s in context.scopes if s.covers_type(rtype) and s.letters & letters]


def _require(
    context: AccessContext, rtype: str, letters: frozenset[Letter], action: str
) -> list[ResourceScope]:
    scopes = _scopes_for(context, rtype, letters)
    if not scopes:
        raise Forbidden(f"the access token has no scope that allows {action} {rtype}")
    if all(s.context is Context.PATIENT for s in scopes):
        if not context.patients:
            raise Forbidden("patient/ scopes need a patient in context; this token has none")
        reachable = rtype in compartment.PUBLIC_TYPES or compartment.is_compartment_type(rtype)
        if not reachable and rtype != "Binary":
            raise Forbidden(f"{rtype} is not available to patient-context tokens")
    return scopes


def _only_patient(scopes: list[ResourceScope]) -> bool:
    return all(s.context is Context.PATIENT for s in scopes)


def _restriction_params(scopes: list[ResourceScope]) -> list[tuple[str, str]]:
    """Parameters to add upstream for granular scopes (every resource is checked again)."""
    if any(not s.restriction for s in scopes) or len(scopes) != 1:
        return []  # unrestricted, or several restricted scopes (an OR): filtered here only
    return list(scopes[0].restriction)


def _search(context: AccessContext, interaction: FhirInteraction) -> AccessDecision:
    rtype = interaction.resource_type
    assert rtype is not None
    scopes = _require(context, rtype, SEARCH, "searching")
    policy = AccessPolicy(context)
    extra = _restriction_params(scopes)
    patient_only = _only_patient(scopes)
    params = list(interaction.params)
    if interaction.kind is Kind.SEARCH_COMPARTMENT:
        assert interaction.compartment is not None
        if patient_only and interaction.compartment[1] not in context.patients:
            raise Forbidden("that patient's compartment is outside this token's access")
        if patient_only:
            params = narrow_search(params, rtype, context.patients, add_constraint=False)
    elif patient_only:
        # Directory types (Practitioner...) get the same parameter checks, without a constraint.
        public = rtype in compartment.PUBLIC_TYPES
        params = narrow_search(params, rtype, context.patients, add_constraint=not public)
    return AccessDecision(
        interaction=interaction.with_params([*params, *extra]),
        policy=policy,
        letters=SEARCH,
        patient_only=patient_only,
    )


def _system_level(context: AccessContext, interaction: FhirInteraction) -> AccessDecision:
    scopes = [s for s in context.scopes if s.letters & SEE]
    if not scopes or _only_patient(scopes):
        raise Forbidden(
            f"{interaction.kind} is not available to patient-context tokens: "
            "ask each resource type (patient/ scopes are limited to one compartment)"
        )
    types = [t for v in interaction.param_values("_type") for t in v.split(",")]
    letters = SEARCH if interaction.kind is Kind.SEARCH_SYSTEM else SEE
    if "Consent" in types:
        raise Forbidden("Consents are served at /fhir/Consent, not by a system-level search")
    if "AuditEvent" in types:
        raise Forbidden("AuditEvents are served at /fhir/AuditEvent, not by a system-level search")
    for rtype in types or ["*"]:
        if not any(s.resource_type in ("*", rtype) and s.letters & letters for s in scopes):
            raise Forbidden(f"the access token has no scope that allows searching {rtype}")
    return AccessDecision(
        interaction=interaction, policy=AccessPolicy(context), letters=letters, patient_only=False
    )


def authorize(context: AccessContext, interaction: FhirInteraction) -> AccessDecision:
    """Allow (possibly narrowed) or refuse one interaction for this token."""
    kind, rtype = interaction.kind, interaction.resource_type
    if kind in (Kind.SEARCH_TYPE, Kind.SEARCH_COMPARTMENT):
        return _search(context, interaction)
    if kind in (Kind.SEARCH_SYSTEM, Kind.HISTORY_SYSTEM):
        return _system_level(context, interaction)
    assert rtype is not None, kind

    def allowed(letters: frozenset[Letter], patient_only: bool) -> AccessDecision:
        return AccessDecision(
            interaction=interaction,
            policy=AccessPolicy(context),
            letters=letters,
            patient_only=patient_only,
        )

    if kind in (Kind.READ, Kind.VREAD, Kind.HISTORY_INSTANCE):
        return allowed(READ, _only_patient(_require(context, rtype, READ, "reading")))
    if kind is Kind.HISTORY_TYPE:
        if _only_patient(_require(context, rtype, SEARCH, "the history of")):
            raise Forbidden("type-level history cannot be limited to one patient; ask per resource")
        return allowed(SEE, False)
    if kind is Kind.OPERATION and interaction.operation == "everything":
        scopes = _require(context, rtype, READ, "reading")
        if _only_patient(scopes) and interaction.resource_id not in context.patients:
            raise Forbidden("that patient's record is outside this token's access")
        return allowed(SEE, _only_patient(scopes))
    if kind is Kind.OPERATION:  # $validate: writes nothing, answers an OperationOutcome
        return allowed(VALIDATE, _only_patient(_require(context, rtype, VALIDATE, "validating")))
    if kind in WRITE_LETTERS:
        letters = WRITE_LETTERS[kind]
        patient_only = _only_patient(_require(context, rtype, letters, _WRITING[kind]))
        if patient_only:
            _check_patient_write(rtype, kind)
        return allowed(letters, patient_only)
    raise Forbidden(f"{kind} is not available through this gateway")


def _check_patient_write(rtype: str, kind: Kind) -> None:
    """What a ``patient/``-only token may never write, whatever its scopes say."""
    if rtype in AUTHORITY_TYPES:
        # P-20: representation comes from the EHR's data or an administrator, not an app.
        raise Forbidden(
            f"patient-context tokens cannot write {rtype}: it decides who may act for whom"
        )
    if rtype in compartment.PUBLIC_TYPES or not compartment.is_compartment_type(rtype):
        raise Forbidden(f"patient-context tokens cannot write {rtype}")
    if rtype == "Patient" and kind is Kind.CREATE:
        raise Forbidden("patient-context tokens cannot create Patient records")
