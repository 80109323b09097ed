"""Security events (SECURITY.md P-05, P-09, P-18): sign-ins and their failures, second-factor
failures, sign-outs, and every administrative action, with time, address and device. The patient's
security page lists a user's recent sign-ins from here. Events never hold a password or a token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "security_events"
SIGN_IN_KINDS = frozenset({"login", "mfa-failed"})
RETENTION = timedelta(days=400)


class SecurityEvents:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._events = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._events.create_index("expires_at", expireAfterSeconds=0)
        await self._events.create_index([("actor", 1), ("at", -1)])
        await self._events.create_index([("kind", 1), ("detail.username", 1), ("at", -1)])

    async def record(
        self,
        kind: str,
        *,
        actor: str | None,
        address: str = "",
        user_agent: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        now = datetime.now(UTC)
        await self._events.insert_one(
            {
                "kind": kind,
                "actor": actor,
                "address": address,
                "user_agent": user_agent,
                "detail": detail or {},
                "at": now,
                "expires_at": now + RETENTION,
            }
        )

    async def sign_ins(self, user_id: str, username: str, limit: int = 20) -> list[dict[str, Any]]:
        """The account's recent sign-ins and failed attempts, newest first (P-18): its own
        sign-ins and second-factor failures, and failed passwords typed for its username (a
        failure has no actor: the answer never says whether the account exists, P-05)."""
        query = {
            "$or": [
                {"actor": str(user_id), "kind": {"$in": list(SIGN_IN_KINDS)}},
                {"kind": "login-failed", "detail.username": str(username)[:64]},
            ]
        }
        cursor = self._events.find(query, {"_id": 0}).sort("at", -1).limit(limit)
        return [doc async for doc in cursor]

    async def recent(self, actor: str, limit: int = 50) -> list[dict[str, Any]]:
        cursor = self._events.find({"actor": str(actor)}, {"_id": 0}).sort("at", -1).limit(limit)
        return [doc async for doc in cursor]
