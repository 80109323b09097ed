"""Brute-force protection for sign-in (SECURITY.md P-05; OWASP ASVS 2.2.1).

Failures are counted per account (the username typed, whether it exists or not, so the answer never
tells) and per address. After ``max_failures`` failures an account is locked for ``lock_seconds``;
each further failure doubles the lock (capped at a day). An address gets four times the allowance
before it is locked, since several people may share one. A success clears the account's count.
Counters expire a day after the last failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import retried

COLLECTION = "login_throttle"
_MAX_LOCK = timedelta(days=1)
_ADDRESS_FACTOR = 4


@dataclass(frozen=True, slots=True)
class Throttle:
    max_failures: int = 5
    lock_seconds: int = 60


class LoginThrottle:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], policy: Throttle, clock: Clock = system_clock
    ) -> None:
        self._clock = clock
        self._entries = db[COLLECTION]
        self._policy = policy

    async def ensure_indexes(self) -> None:
        await self._entries.create_index("expires_at", expireAfterSeconds=0)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return f"account:{username.strip().lower()[:128]}", f"address:{address[:64]}"

    async def locked(self, username: str, address: str) -> bool:
        """Whether sign-in is refused right now for this username or this address."""
        now = self._clock()
        cursor = self._entries.find({"_id": {"$in": list(self._keys(username, address))}})
        docs = [doc async for doc in cursor]
        return any(
            doc.get("locked_until") is not None and doc["locked_until"] > now for doc in docs
        )

    async def failed(self, username: str, address: str) -> None:
        now = self._clock()
        account, place = self._keys(username, address)
        for key, allowance in (
            (account, self._policy.max_failures),
            (place, self._policy.max_failures * _ADDRESS_FACTOR),
        ):
            doc = await self._entries.find_one_and_update(
                {"_id": key},
                {"$inc": {"failures": 1}, "$set": {"expires_at": now + timedelta(days=1)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            failures = int(doc["failures"]) if doc else 1
            if failures >= allowance:
                doubling = min(failures - allowance, 20)
                lock = min(timedelta(seconds=self._policy.lock_seconds * 2**doubling), _MAX_LOCK)
                await self._entries.update_one({"_id": key}, {"$set": {"locked_until": now + lock}})

    async def succeeded(self, username: str) -> None:
        account, _ = self._keys(username, "")
        await retried(lambda: self._entries.delete_one({"_id": account}))
