"""What the audit step is told (AUDIT.md A-01 … A-05): frozen values that cross from the request
pipeline and the authorization server into :mod:`gateway.audit.events` and
:mod:`gateway.audit.security`.

The pipeline hands one :class:`RequestFacts` per request: who asked (from the token's
:class:`~gateway.fhir.context.AccessContext`), what (the interaction, the raw query), the answer's
status, and per patient whose data was in the response a :class:`PatientRelease` with the
consent decisions that applied to that patient's data and what of theirs was released. Patient
ids live only here and in the AuditEvent's patient entity: never in a log line or a metric label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from consent.decide import Decision


def utcnow() -> datetime:
    return datetime.now(UTC)


class TokenHolder(Protocol):
    """Who a request's token speaks for, as the audit record needs it (an
    :class:`~gateway.fhir.context.AccessContext` is one)."""

    @property
    def client_id(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def fhir_user(self) -> str | None: ...
    @property
    def jti(self) -> str: ...
    @property
    def purposes(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Observer:
    """The gateway instance that records: the AuditEvent's ``source`` and its server agent."""

    name: str
    """The instance's stable name (its audit chain, ``audit_chain_name``)."""
    fhir_base: str
    """The gateway's FHIR base URL (the server agent's network address)."""


@dataclass(frozen=True, slots=True)
class PatientRelease:
    """One patient whose data a request touched: one AuditEvent is recorded for them (BALP)."""

    patient: str
    """The bare Patient id."""
    decisions: tuple[Decision, ...] = ()
    """The consent decisions taken for this patient's resources (CONSENT.md C-11); repeated
    decisions are recorded once."""
    resources: tuple[str, ...] = ()
    """``Type/id`` or ``Type/id/_history/version`` of what of theirs was released or written.
    Listed in the event for reads, writes and batch entries; never for searches (A-04)."""
    count: int | None = None
    """How many of their resources the response held (defaults to ``len(resources)``)."""
    types: tuple[str, ...] = ()
    """The types of their resources released (defaults to those of ``resources``)."""

    @property
    def released(self) -> int:
        return len(self.resources) if self.count is None else self.count


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """Everything the audit record of one FHIR request needs, handed over in one value."""

    interaction: str
    """The interaction kind (:class:`gateway.fhir.interaction.Kind`, a FHIR ``restful-interaction``
    code where one exists)."""
    method: str
    path: str
    """The path under the FHIR base, as requested (``Observation``, ``Patient/p1/$everything``)."""
    query: str = ""
    """The raw query string, as received (for ``POST _search``: the form body)."""
    status: int = 200
    """The HTTP status answered."""
    client_id: str | None = None
    issuer: str | None = None
    subject: str | None = None
    fhir_user: str | None = None
    jti: str | None = None
    purposes: tuple[str, ...] = ()
    address: str = ""
    """The caller's network address."""
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    patients: tuple[PatientRelease, ...] = ()
    request_id: str | None = None
    """``X-Request-Id``: links the event to the log lines of the request."""
    reason: str | None = None
    """For a refusal or failure: the diagnostics the caller was given (``outcomeDesc``)."""
    at: datetime = field(default_factory=utcnow)

    @classmethod
    def of(
        cls,
        context: TokenHolder | None,
        *,
        interaction: str,
        method: str,
        path: str,
        **facts: Any,
    ) -> RequestFacts:
        """The facts of a request by this token (``None``: no valid token, e.g. a 401)."""
        if context is not None:
            facts.setdefault("client_id", context.client_id)
            facts.setdefault("issuer", context.issuer)
            facts.setdefault("subject", context.subject)
            facts.setdefault("fhir_user", context.fhir_user)
            facts.setdefault("jti", context.jti)
            facts.setdefault("purposes", context.purposes)
        return cls(interaction=interaction, method=method, path=path, **facts)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did a security-relevant act (signed in, changed a Consent, rotated a key...)."""

    user_id: str | None = None
    """The gateway's account id (``sub`` of its tokens); ``"cli"`` for the command line."""
    username: str | None = None
    """For a failed sign-in: the name that was typed (no account matched, or the password did
    not)."""
    fhir_user: str | None = None
    client_id: str | None = None
    """The app acting, when it is an app (a token issued to it, a Consent it withdrew)."""
    address: str = ""
    user_agent: str = ""

    @classmethod
    def cli(cls) -> Actor:
        return cls(user_id="cli", address="localhost")


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """A new version of a Consent (BALP: a create/update/delete of the Consent resource)."""

    consent_id: str
    version: str | None
    method: str
    """``create``, ``update`` or ``delete``."""
    patient: str | None
    channel: str
    """How: ``consent-screen``, ``fhir-api``, ``admin-api``, ``cli``, ``erasure``."""
    reason: str | None = None


def distinct(decisions: Iterable[Decision]) -> tuple[Decision, ...]:
    """Each decision once, in first-seen order (a search decides the same way many times)."""
    return tuple(dict.fromkeys(decisions))
