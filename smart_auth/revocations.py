"""The revocation list shared by the authorization server (which writes it) and every gateway
instance (which reads it on every FHIR request): RFC 7009 revocation, refresh-token family replay
(S-19, S-31), "sign out everywhere" (P-06) and consent withdrawal (C-13) all end here.

Entries are keyed ``jti:<jti>`` (one access token) or ``grant:<grant_id>`` (every token issued under
one authorization: the code, its access tokens and every rotated refresh token). An entry lives
until the last token it covers has expired (a TTL index removes it then); the check is a single
``_id $in`` lookup. Every write also moves a change counter after it is done: the gateway caches
"not revoked" only until that counter moves and reads the counter afresh for every request, so a
revocation is seen by the very next request on any instance (S-25).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.idempotent import retried

COLLECTION = "revocations"
EPOCHS = "change_epochs"
"""One counter document per kind of change (``{"_id": "revocations", "n": int}``): every write to
the revocation list increments it *after* writing, so a reader that sees an unchanged counter knows
its cached answers still hold (see ``gateway/fhir/freshness.py``)."""


class RevocationList:
    """Revoked access tokens and revoked grants (token families)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._entries: AsyncCollection[dict[str, Any]] = db[COLLECTION]
        self._epochs: AsyncCollection[dict[str, Any]] = db[EPOCHS]

    async def ensure_indexes(self) -> None:
        await self._entries.create_index("expires_at", expireAfterSeconds=0)

    async def _add(self, key: str, expires_at: datetime, reason: str) -> None:
        await retried(
            lambda: self._entries.update_one(
                {"_id": key},
                {
                    "$max": {"expires_at": expires_at},
                    "$setOnInsert": {"revoked_at": datetime.now(UTC), "reason": reason},
                },
                upsert=True,
            )
        )
        # An $inc is not idempotent, but this counter only has to move after the write: moved
        # twice, it costs a cache refill; not moved, the revocation could go unseen.
        await retried(
            lambda: self._epochs.update_one({"_id": COLLECTION}, {"$inc": {"n": 1}}, upsert=True)
        )

    async def revoke_token(self, jti: str, expires_at: datetime, reason: str = "revoked") -> None:
        """Revoke one access token until it would have expired anyway."""
        await self._add(f"jti:{jti}", expires_at, reason)

    async def revoke_grant(
        self, grant_id: str, expires_at: datetime, reason: str = "revoked"
    ) -> None:
        """Revoke every token of one grant; ``expires_at`` must cover its longest-lived token."""
        await self._add(f"grant:{grant_id}", expires_at, reason)

    @staticmethod
    def keys(jti: str, grant_id: str | None = None) -> list[str]:
        """The entries that would revoke a token with this ``jti`` and ``grant_id``."""
        return [f"jti:{jti}"] + ([f"grant:{grant_id}"] if grant_id else [])

    async def is_revoked(self, jti: str, grant_id: str | None = None) -> bool:
        found = await self.revoked_among(self.keys(jti, grant_id))
        return bool(found)

    async def revoked_among(self, keys: list[str]) -> dict[str, bool]:
        """Which of ``keys`` (see :meth:`keys`) are revoked: one indexed ``_id $in`` query, so
        the FHIR side can check many requests' tokens at once."""
        cursor = self._entries.find({"_id": {"$in": keys}}, {"_id": 1})
        return {str(doc["_id"]): True async for doc in cursor}
