"""The consent step's release of one resource (CONSENT.md C-15, C-26): decision, minimisation and
the text that may mention withheld data, for consents already loaded (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from consent.decide import Basis, compile_consents
from consent.model import app_grant
from gateway.fhir.consent_gate import RequestConsent
from gateway.fhir.context import AccessContext
from smart_auth.scopes import ScopeSet

PATIENT = "pat-1"
NOW = datetime.now(UTC)
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
EVERY_LABEL = [
    {"system": V3_ACT_CODE, "code": code}
    for code in ("ETH", "HIV", "PSY", "SDV", "SEX", "STD", "SUD")
] + [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}]

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "status": "finished",
    "class": {"system": V3_ACT_CODE, "code": "AMB"},
    "subject": {"reference": f"Patient/{PATIENT}"},
    "participant": [{"individual": {"reference": "Practitioner/p", "display": "Dr Okafor"}}],
    "reasonReference": [{"reference": "Condition/dx", "display": "Major depressive episode"}],
}


def request(
    purposes: tuple[str, ...] = ("PATRQT",), *, every_label: bool = False
) -> RequestConsent:
    grant = app_grant(
        PATIENT,
        "app",
        "App",
        list(purposes),
        ["Encounter", "Observation"],
        [],
        NOW - timedelta(minutes=1),
        NOW + timedelta(days=1),
    )
    grant["id"] = "grant"
    if every_label:
        grant["provision"]["provision"] = [{"type": "permit", "securityLabel": EVERY_LABEL}]
    context = AccessContext(
        issuer="i",
        subject="s",
        client_id="app",
        scopes=ScopeSet.parse("patient/*.rs"),
        jti="j",
        expires_at=NOW,
        patient=PATIENT,
        purposes=purposes,
    )
    consent = RequestConsent(context, trusted=False, now=NOW)
    consent.evaluators[PATIENT] = compile_consents([grant], consent.attributes(PATIENT))
    return consent


def test_c26_a_general_permit_releases_references_without_the_display_of_withheld_data() -> None:
    released = request().release(dict(ENCOUNTER))
    assert released is not None
    assert released["reasonReference"] == [{"reference": "Condition/dx"}]
    assert released["participant"] == ENCOUNTER["participant"]
    assert any(s["code"] == "REDACTED" for s in released["meta"]["security"])


def test_c26_a_permit_naming_every_label_keeps_the_display() -> None:
    released = request(every_label=True).release(dict(ENCOUNTER))
    assert released == ENCOUNTER


def test_c26_a_resource_without_mentions_is_released_as_it_came() -> None:
    plain = {k: v for k, v in ENCOUNTER.items() if k != "reasonReference"}
    plain["participant"] = [{"individual": {"reference": "Practitioner/p"}}]
    assert request().release(plain) is plain


OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}], "text": "Temperature"},
    "subject": {"reference": f"Patient/{PATIENT}"},
    "valueString": "told by Nina Keller",
}


def test_c28_research_withholds_what_it_cannot_de_identify_and_says_why() -> None:
    consent = request(("HRESCH",))
    released = consent.release(dict(OBSERVATION))
    assert released is not None
    assert "valueString" not in released and "text" not in released["code"]
    proxy = {"url": "urn:local:reported-by-proxy", "valueBoolean": True}
    assert consent.release({**OBSERVATION, "modifierExtension": [proxy]}) is None
    refusal = consent.last_refusal()
    assert refusal is not None and refusal.basis is Basis.MINIMISATION
    assert "modifierExtension" in refusal.reason and "HRESCH" in refusal.reason
    assert request(("PATRQT",)).release({**OBSERVATION, "modifierExtension": [proxy]})
