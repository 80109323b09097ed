"""Facts and events to audit in tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consent.decide import Basis, Decision
from gateway.audit.events import request_events
from gateway.audit.facts import Observer, PatientRelease, RequestFacts

OBSERVER = Observer("test-instance:8080", "http://127.0.0.1:8080/fhir")
AT = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)

PERMIT = Decision(
    permitted=True,
    basis=Basis.PERMIT,
    reason="permitted by Consent/consent-1 provision.provision[0]",
    consent_id="consent-1",
    provision="provision.provision[0]",
    purposes=("TREAT",),
)
DENY = Decision(
    permitted=False,
    basis=Basis.DENY,
    reason="denied by Consent/consent-2 provision",
    consent_id="consent-2",
    provision="provision",
)
OPT_OUT = Decision(
    permitted=True, basis=Basis.OPT_OUT, reason="permitted under opt-out", purposes=("TREAT",)
)


def facts(**overrides: Any) -> RequestFacts:
    """A practitioner's app reading one Observation of Patient/pat-1."""
    values: dict[str, Any] = {
        "interaction": "read",
        "method": "GET",
        "path": "Observation/obs-1",
        "client_id": "ward-app",
        "issuer": "http://127.0.0.1:8080",
        "subject": "user-7",
        "fhir_user": "Practitioner/prac-1",
        "jti": "jti-123",
        "purposes": ("TREAT",),
        "address": "192.0.2.10",
        "resource_type": "Observation",
        "resource_id": "obs-1",
        "version_id": "3",
        "patients": (PatientRelease("pat-1", (PERMIT,), ("Observation/obs-1/_history/3",)),),
        "request_id": "req-1",
        "at": AT,
    }
    values.update(overrides)
    return RequestFacts(**values)


def event(patient: str = "pat-1", resource: str = "obs-1") -> dict[str, Any]:
    """One ordinary read event, with a fresh id."""
    released = (PatientRelease(patient, (PERMIT,)),)
    return request_events(facts(resource_id=resource, patients=released), OBSERVER)[0]
