"""Erasure of a patient's data held by the gateway (GDPR Art. 17; CONSENT.md C-22).

What erasure does, in this order: every app's tokens for the patient are revoked (no further
release to anyone), the patient's cache data keys are destroyed (crypto-shredding: from that
moment none of the patient's cached resources can be decrypted, by anyone holding the database or
the key-encryption key) and their entries deleted (:meth:`ResourceCache.shred_patient`), the
patient's consents are withdrawn and their derived data removed (``ConsentStore.erase_patient``:
consents that took effect are kept as evidence of lawful processing, drafts that never did are
deleted), and the erasure itself is recorded in the audit trail, which is kept. The FHIR data
itself belongs to the upstream FHIR server, which erases it by its own procedure; the gateway keeps
no copy of it beyond what is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from consent.model import fhir_id
from consent.store import Change, Channel, ConsentStore
from gateway.audit import security
from gateway.audit.facts import Actor
from gateway.audit.log import AuditLog
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
    audit: AuditLog,
    patient_id: str,
    *,
    actor: Actor,
) -> Erasure:
    """Erase what the gateway holds of one patient; the patient id is checked (P-13). The audit
    trail is kept: it is the record of what was done with the patient's data (A-13)."""
    patient = fhir_id(patient_id, "patient id")
    grants = await services.revoker.revoke_patient(patient)
    shredded = await cache.shred_patient(patient)
    by = "cli" if actor.user_id == "cli" else f"user:{actor.user_id}"
    report = await consents.erase_patient(patient, change=Change(by, Channel.ERASURE))
    erasure = Erasure(patient, len(grants), shredded, report.withdrawn, report.deleted, report.kept)
    await audit.record(
        [
            security.patient_erased(
                audit.observer,
                actor,
                patient,
                grants_revoked=erasure.grants_revoked,
                consents_withdrawn=len(erasure.consents_withdrawn),
                consents_deleted=len(erasure.consents_deleted),
                consents_kept=len(erasure.consents_kept),
                cache_keys_destroyed=erasure.cache_keys_destroyed,
            )
        ]
    )
    return erasure
