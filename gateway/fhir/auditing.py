"""The audit record of one FHIR request (AUDIT.md A-01 … A-05): who asked, what, the answer's
status, and per patient what was decided about their data and what of it was released; handed to
the audit log before the response goes (A-08, ``Pipeline.handle``).

The pipeline makes a :class:`RequestAudit` for every request and makes it the current one (a
context variable) while the request runs. Every
:class:`~gateway.fhir.consent_gate.RequestConsent` made meanwhile -- the request's own, each batch
entry's (in tasks of their own, which share it), the read-back of a write -- registers its
per-patient :class:`Tally` with it, and the Consent API notes the Consents it serves. The steps
that decide and release therefore know nothing of the audit: they count what they do, and the
record gathers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from consent.decide import Decision
from consent.references import patient_id
from gateway.audit.events import MAX_LISTED
from gateway.audit.facts import PatientRelease, RequestFacts, TokenHolder


@dataclass(slots=True)
class Tally:
    """What one request did with one patient's data."""

    decisions: list[Decision] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    """``Type/id/_history/version`` of what of theirs was released (the first ``MAX_LISTED``)."""
    types: set[str] = field(default_factory=set)
    count: int = 0

    def released(self, resource: Mapping[str, Any]) -> None:
        rtype = str(resource.get("resourceType", ""))
        self.count += 1
        self.types.add(rtype)
        if len(self.resources) < MAX_LISTED:
            self.resources.append(reference_of(resource))


def reference_of(resource: Mapping[str, Any]) -> str:
    """``Type/id/_history/version`` (or less, as far as the resource says)."""
    reference = f"{resource.get('resourceType')}/{resource.get('id')}"
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return f"{reference}/_history/{version}" if isinstance(version, str) else reference


@dataclass(slots=True)
class RequestAudit:
    """One request's audit record, filled in as the request goes (the module's docstring)."""

    method: str
    path: str
    """Under the FHIR base (``Observation``, ``Patient/p1/$everything``)."""
    query: str
    address: str
    request_id: str | None = None
    context: TokenHolder | None = None
    interaction: str = "unknown"
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    _tallies: list[dict[str, Tally]] = field(default_factory=list)

    def gather(self, tallies: dict[str, Tally]) -> None:
        """A :class:`~gateway.fhir.consent_gate.RequestConsent`'s tallies, to be read at the
        end (they keep filling in meanwhile)."""
        self._tallies.append(tallies)

    def served(self, resource: Mapping[str, Any], patients: Iterable[str] | None = None) -> None:
        """A resource the gateway serves itself and releases whole: a Consent (of the patient
        it names), an AuditEvent (of its ``patients``)."""
        if patients is None:
            reference = resource.get("patient")
            patient = (
                patient_id(reference.get("reference", "")) if isinstance(reference, dict) else None
            )
            patients = () if patient is None else (patient,)
        for patient in patients:
            tally = Tally()
            tally.released(resource)
            self._tallies.append({patient: tally})

    def patients(self) -> tuple[PatientRelease, ...]:
        merged: dict[str, Tally] = {}
        for tallies in self._tallies:
            for patient, tally in tallies.items():
                into = merged.setdefault(patient, Tally())
                into.decisions += tally.decisions
                into.resources += tally.resources[: MAX_LISTED - len(into.resources)]
                into.types |= tally.types
                into.count += tally.count
        return tuple(
            PatientRelease(
                patient,
                tuple(dict.fromkeys(tally.decisions)),
                tuple(tally.resources),
                tally.count,
                tuple(sorted(tally.types)),
            )
            for patient, tally in sorted(merged.items())
        )

    def facts(self, status: int, reason: str | None = None) -> RequestFacts:
        return RequestFacts.of(
            self.context,
            interaction=self.interaction,
            method=self.method,
            path=self.path,
            query=self.query,
            status=status,
            address=self.address,
            resource_type=self.resource_type,
            resource_id=self.resource_id,
            version_id=self.version_id,
            patients=self.patients(),
            request_id=self.request_id,
            reason=reason,
        )


_CURRENT: ContextVar[RequestAudit | None] = ContextVar("request_audit", default=None)


@contextmanager
def recording(audit: RequestAudit) -> Iterator[RequestAudit]:
    """Make ``audit`` the current request's record while the block runs."""
    token = _CURRENT.set(audit)
    try:
        yield audit
    finally:
        _CURRENT.reset(token)


def current() -> RequestAudit | None:
    """The record of the request being handled, if any (none in unit tests and commands)."""
    return _CURRENT.get()
