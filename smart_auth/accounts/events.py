"""Security events (SECURITY.md P-05, P-09, P-18): sign-ins and their failures, second-factor
failures, sign-outs, and every administrative action, with time, address and device. The patient's
security page lists a user's recent sign-ins from here. Events never hold a password or a token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.idempotent import insert_once

COLLECTION = "security_events"
RETENTION = timedelta(days=400)


class SecurityEvents:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._events = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._events.create_index("expires_at", expireAfterSeconds=0)
        await self._events.create_index([("actor", 1), ("at", -1)])

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
        await insert_once(
            self._events,
            {
                "_id": ObjectId(),
                "kind": kind,
                "actor": actor,
                "address": address,
                "user_agent": user_agent,
                "detail": detail or {},
                "at": now,
                "expires_at": now + RETENTION,
            },
        )

    async def recent(self, actor: str, limit: int = 50) -> list[dict[str, Any]]:
        cursor = self._events.find({"actor": str(actor)}, {"_id": 0}).sort("at", -1).limit(limit)
        return [doc async for doc in cursor]
