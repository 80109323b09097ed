"""Erasure of a patient's data held by the gateway (GDPR Art. 17; CONSENT.md C-22).

What erasure does, in this order: every app's tokens for the patient are revoked (no further
release to anyone), the patient's cache data keys are destroyed (crypto-shredding: from that
moment none of the patient's cached resources can be decrypted, by anyone holding the database or
the key-encryption key) and their entries deleted (:meth:`ResourceCache.shred_patient`), the
patient's consents are withdrawn and their derived data removed (``ConsentStore.erase_patient``:
consents that took effect are kept as evidence of lawful processing, drafts that never did are
deleted), and the erasure itself is recorded as a security event. The FHIR data itself belongs to
the upstream FHIR server, which erases it by its own procedure; the gateway keeps no copy of it
beyond what is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from consent.model import fhir_id
from consent.store import Change, Channel, ConsentStore
from gateway.cache.cache import ResourceCache
from smart_auth.services import AuthServices


@dataclass(frozen=True, slots=True)
class Erasure:
    patient: str
    grants_revoked: int
    cache_keys_destroyed: int
    consents_withdrawn: tuple[str, ...]
    consents_deleted: tuple[str, ...]
    consents_kept: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "patient": self.patient,
            "grants_revoked": self.grants_revoked,
            "cache_keys_destroyed": self.cache_keys_destroyed,
            "consents_withdrawn": list(self.consents_withdrawn),
            "consents_deleted": list(self.consents_deleted),
            "consents_kept": list(self.consents_kept),
        }


async def erase_patient(
    services: AuthServices,
    consents: ConsentStore,
    cache: ResourceCache,
    patient_id: str,
    *,
    actor: str | None,
) -> Erasure:
    """Erase what the gateway holds of one patient; the patient id is checked (P-13)."""
    patient = fhir_id(patient_id, "patient id")
    grants = await services.revoker.revoke_patient(patient)
    shredded = await cache.shred_patient(patient)
    change = Change(f"user:{actor}" if actor and actor != "cli" else "cli", Channel.ERASURE)
    report = await consents.erase_patient(patient, change=change)
    erasure = Erasure(patient, len(grants), shredded, report.withdrawn, report.deleted, report.kept)
    await services.events.record("patient-erased", actor=actor, detail=erasure.as_dict())
    return erasure
