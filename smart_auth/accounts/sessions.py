"""Sign-in sessions (SECURITY.md P-06; OWASP ASVS 3): a random token in a cookie, its SHA-256 digest
in MongoDB; an idle timeout (default 15 min) and an absolute lifetime (default 12 h); sign-out
deletes the record (the cookie alone is then worth nothing); "sign out everywhere" deletes every
session of the user. A session whose user still owes a second factor (or must enrol one) is marked
``mfa_pending`` and opens nothing but the MFA pages.

A TOTP secret being enrolled waits in the session until the user confirms a code from it, sealed by
the key provider and bound to the session (P-19); finishing the second factor removes it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import insert_once, retried
from smart_auth.key_provider import (
    KeyProvider,
    KeyProviderError,
    Sealed,
    WrappedField,
    seal,
    unseal,
)

COLLECTION = "sessions"
SEALED = WrappedField(COLLECTION, "pending_totp")
"""Where TOTP secrets being enrolled are sealed (re-wrapped on KEK rotation, P-16)."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str  # the digest, never the cookie value
    user_id: str
    role: str
    csrf: str
    created_at: datetime
    last_seen: datetime
    expires_at: datetime
    mfa_pending: bool
    address: str
    user_agent: str


def _from_doc(doc: dict[str, Any]) -> Session:
    return Session(
        session_id=doc["_id"],
        user_id=doc["user_id"],
        role=doc["role"],
        csrf=doc["csrf"],
        created_at=doc["created_at"],
        last_seen=doc["last_seen"],
        expires_at=doc["expires_at"],
        mfa_pending=bool(doc.get("mfa_pending")),
        address=doc.get("address", ""),
        user_agent=doc.get("user_agent", ""),
    )


class SessionStore:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        provider: KeyProvider,
        *,
        idle: timedelta,
        absolute: timedelta,
        clock: Clock = system_clock,
    ) -> None:
        self._clock = clock
        self._sessions = db[COLLECTION]
        self._provider = provider
        self._idle = idle
        self._absolute = absolute

    async def ensure_indexes(self) -> None:
        await self._sessions.create_index("expires_at", expireAfterSeconds=0)
        await self._sessions.create_index("user_id")

    async def create(
        self, *, user_id: str, role: str, mfa_pending: bool, address: str, user_agent: str
    ) -> tuple[str, Session]:
        """A new session; returns (cookie token, session)."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        doc = {
            "_id": digest(token),
            "user_id": user_id,
            "role": role,
            "csrf": secrets.token_urlsafe(32),
            "created_at": now,
            "last_seen": now,
            "idle_until": now + self._idle,
            "expires_at": now + self._absolute,
            "mfa_pending": mfa_pending,
            "address": address[:64],
            "user_agent": user_agent[:256],
        }
        await insert_once(self._sessions, doc)
        return token, _from_doc(doc)

    async def resume(self, token: str | None) -> Session | None:
        """The live session of this cookie value, its idle clock restarted; ``None`` (and the
        record deleted) once it has been idle too long or has reached its absolute end."""
        if not isinstance(token, str) or not token or len(token) > 128:
            return None
        now = self._clock()
        doc = await retried(
            lambda: self._sessions.find_one_and_update(
                {"_id": digest(token), "idle_until": {"$gt": now}, "expires_at": {"$gt": now}},
                {"$set": {"last_seen": now, "idle_until": now + self._idle}},
                return_document=ReturnDocument.AFTER,
            )
        )
        if doc is None:
            await retried(lambda: self._sessions.delete_one({"_id": digest(token)}))
            return None
        return _from_doc(doc)

    async def alive(self, session_id: str) -> bool:
        """Whether a session (by digest) is still live, without touching its idle clock."""
        now = self._clock()
        found = await self._sessions.find_one(
            {"_id": session_id, "idle_until": {"$gt": now}, "expires_at": {"$gt": now}},
            {"_id": 1},
        )
        return found is not None

    async def mfa_done(self, session_id: str) -> None:
        await retried(
            lambda: self._sessions.update_one(
                {"_id": session_id},
                {"$set": {"mfa_pending": False}, "$unset": {"pending_totp": ""}},
            )
        )

    async def set_pending_secret(self, session_id: str, secret: str) -> None:
        """Keep a TOTP secret being enrolled (P-04) until the user confirms a code from it."""
        sealed = await seal(self._provider, secret.encode(), f"totp-pending:{session_id}")
        await retried(
            lambda: self._sessions.update_one(
                {"_id": session_id}, {"$set": {"pending_totp": sealed.to_doc()}}
            )
        )

    async def pending_secret(self, session_id: str) -> str | None:
        """The TOTP secret being enrolled; ``None`` when there is none or it does not unseal."""
        doc = await self._sessions.find_one({"_id": session_id}, {"pending_totp": 1})
        if doc is None or "pending_totp" not in doc:
            return None
        try:
            sealed = Sealed.from_doc(doc["pending_totp"])
            secret = await unseal(self._provider, sealed, f"totp-pending:{session_id}")
        except KeyProviderError:
            return None
        return secret.decode()

    async def drop_plaintext_pending(self) -> int:
        """Remove the TOTP secrets being enrolled that an earlier version kept in clear (those
        users scan a new code); returns how many."""
        result = await self._sessions.update_many(
            {"pending_mfa": {"$exists": True}}, {"$unset": {"pending_mfa": ""}}
        )
        return result.modified_count

    async def end(self, token: str | None) -> None:
        if isinstance(token, str) and token:
            await retried(lambda: self._sessions.delete_one({"_id": digest(token)}))

    async def end_all(self, user_id: str) -> int:
        return (await self._sessions.delete_many({"user_id": user_id})).deleted_count

    async def of_user(self, user_id: str) -> list[Session]:
        """The user's live sessions, most recently used first (P-18: "where am I signed in")."""
        now = self._clock()
        query = {"user_id": str(user_id), "idle_until": {"$gt": now}, "expires_at": {"$gt": now}}
        cursor = self._sessions.find(query).sort("last_seen", -1)
        return [_from_doc(doc) async for doc in cursor]

    async def end_session(self, user_id: str, session_id: str) -> bool:
        """End one session of this user (by its digest); ``False`` when it is not theirs."""
        if not isinstance(session_id, str):
            return False
        done = await self._sessions.delete_one({"_id": session_id, "user_id": str(user_id)})
        return done.deleted_count == 1

    async def end_others(self, user_id: str, keep: str) -> int:
        """End every session of the user but ``keep`` (after a password change)."""
        query = {"user_id": str(user_id), "_id": {"$ne": str(keep)}}
        return (await self._sessions.delete_many(query)).deleted_count
