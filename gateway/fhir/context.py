"""Who is asking: the frozen result of step 1 of the pipeline (``authenticate``), read by every
later step and never changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from smart_auth.scopes import Context, ScopeSet


@dataclass(frozen=True, slots=True)
class AccessContext:
    """A validated access token, reduced to what access control needs."""

    issuer: str
    subject: str
    client_id: str
    scopes: ScopeSet
    jti: str
    expires_at: datetime
    grant_id: str | None = None
    patient: str | None = None
    """The patient in context (SMART ``patient``), a bare id."""
    encounter: str | None = None
    fhir_user: str | None = None
    """The user's own FHIR resource, relative (``Practitioner/prac-1``)."""
    acts_for: frozenset[str] = frozenset()
    """Patient ids the user may act for (their own and, via RelatedPerson, e.g. their child's)."""
    purposes: tuple[str, ...] = ()
    """Purposes of use (v3-ActReason codes) the token was issued for."""
    external: bool = False
    """Issued by a configured external issuer rather than by this gateway."""
    patients: frozenset[str] = field(init=False, compare=False)
    """The patients a ``patient/`` scope of this token reaches: the patient in context and those
    the user may act for. Empty when no patient is in context. (Derived once: it is read for
    every resource released.)"""

    def __post_init__(self) -> None:
        reach = frozenset() if self.patient is None else frozenset({self.patient}) | self.acts_for
        object.__setattr__(self, "patients", reach)

    def has_context(self, context: Context) -> bool:
        return context in self.scopes.contexts()
