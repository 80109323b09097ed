"""Authorization grants: what a user approved for an app (RFC 6749 1.3; SMART 2.2 launch context).

A :class:`Grant` is made when the user approves the app on the consent screen. Its ``grant_id`` is
carried by the authorization code and by every access and refresh token that descends from it
(the ``grant_id`` claim), so revoking the grant revokes the whole token family at once through the
shared :class:`~smart_auth.revocations.RevocationList` (S-19, S-25, S-31, P-06, C-13).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import insert_once
from smart_auth.revocations import RevocationList

COLLECTION = "grants"


@dataclass(frozen=True)
class Grant:
    """The approved access and its context; Authlib's ``request.user`` during token issuance."""

    client_id: str
    scope: str
    expires_at: datetime  # no token of the family outlives it
    user_id: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    acts_for: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    need_patient_banner: bool | None = None
    smart_style_url: str | None = None
    nonce: str | None = None
    consent_id: str | None = None
    session_id: str | None = None  # online_access: the family lives as long as that sign-in session
    grant_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def get_user_id(self) -> str | None:  # Authlib asks users for an id in a few places
        return self.user_id

    def with_scope(self, scope: str) -> Grant:
        return replace(self, scope=scope)


def _to_doc(grant: Grant) -> dict[str, Any]:
    return {
        "_id": grant.grant_id,
        "client_id": grant.client_id,
        "scope": grant.scope,
        "expires_at": grant.expires_at,
        "user_id": grant.user_id,
        "fhir_user": grant.fhir_user,
        "patient": grant.patient,
        "encounter": grant.encounter,
        "acts_for": list(grant.acts_for),
        "purposes": list(grant.purposes),
        "need_patient_banner": grant.need_patient_banner,
        "smart_style_url": grant.smart_style_url,
        "nonce": grant.nonce,
        "consent_id": grant.consent_id,
        "session_id": grant.session_id,
        "created_at": grant.created_at,
        "revoked_at": None,
    }


def _from_doc(doc: dict[str, Any]) -> Grant:
    return Grant(
        grant_id=doc["_id"],
        client_id=doc["client_id"],
        scope=doc["scope"],
        expires_at=doc["expires_at"],
        user_id=doc.get("user_id"),
        fhir_user=doc.get("fhir_user"),
        patient=doc.get("patient"),
        encounter=doc.get("encounter"),
        acts_for=tuple(doc.get("acts_for", ())),
        purposes=tuple(doc.get("purposes", ())),
        need_patient_banner=doc.get("need_patient_banner"),
        smart_style_url=doc.get("smart_style_url"),
        nonce=doc.get("nonce"),
        consent_id=doc.get("consent_id"),
        session_id=doc.get("session_id"),
        created_at=doc["created_at"],
    )


class GrantStore:
    """Grants in MongoDB, and their revocation (which goes to the shared revocation list)."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        revocations: RevocationList,
        clock: Clock = system_clock,
    ) -> None:
        self._clock = clock
        self._grants = db[COLLECTION]
        self._revocations = revocations

    async def ensure_indexes(self) -> None:
        await self._grants.create_index("expires_at", expireAfterSeconds=0)
        await self._grants.create_index([("client_id", 1), ("patient", 1)])
        await self._grants.create_index("user_id")
        await self._grants.create_index("consent_id")

    async def add(self, grant: Grant) -> None:
        await insert_once(self._grants, _to_doc(grant))

    async def get(self, grant_id: str) -> Grant | None:
        """The grant, unless it was revoked or has ended."""
        if not isinstance(grant_id, str):
            return None
        doc = await self._grants.find_one(
            {"_id": grant_id, "revoked_at": None, "expires_at": {"$gt": self._clock()}}
        )
        return _from_doc(doc) if doc else None

    async def revoke(self, grant_id: str, reason: str = "revoked") -> None:
        """Revoke the grant and every token descending from it."""
        doc = await self._grants.find_one_and_update(
            {"_id": grant_id}, {"$set": {"revoked_at": self._clock(), "reason": reason}}
        )
        expires = doc["expires_at"] if doc else self._clock()
        await self._revocations.revoke_grant(grant_id, expires, reason)

    async def _revoke_where(self, query: dict[str, Any], reason: str) -> list[str]:
        query = {**query, "revoked_at": None}
        ids = [doc["_id"] async for doc in self._grants.find(query, {"_id": 1})]
        for grant_id in ids:
            await self.revoke(grant_id, reason)
        return ids

    async def revoke_app_for_patient(self, client_id: str, patient_id: str) -> list[str]:
        """C-13: end every grant ``client_id`` holds for ``patient_id``; returns their ids."""
        return await self._revoke_where(
            {"client_id": str(client_id), "patient": str(patient_id)}, "consent withdrawn"
        )

    async def revoke_user(self, user_id: str) -> list[str]:
        """P-06 "sign out everywhere": end every grant the user gave."""
        return await self._revoke_where({"user_id": str(user_id)}, "signed out everywhere")

    async def revoke_patient(self, patient_id: str) -> list[str]:
        """C-22 erasure: end every grant of any app for ``patient_id``."""
        return await self._revoke_where({"patient": str(patient_id)}, "patient data erased")

    async def revoke_consent(self, consent_id: str) -> list[str]:
        """End the grants written with one Consent (when that Consent is withdrawn)."""
        return await self._revoke_where({"consent_id": str(consent_id)}, "consent withdrawn")

    async def active_for_user(self, user_id: str) -> list[Grant]:
        now = self._clock()
        cursor = self._grants.find(
            {"user_id": str(user_id), "revoked_at": None, "expires_at": {"$gt": now}}
        ).sort("created_at", -1)
        return [_from_doc(doc) async for doc in cursor]
