"""The cache's entries in MongoDB (DESIGN.md "Storage", "Encrypted cache"; SECURITY.md P-15).

One document per read by id (``_id`` = ``Type/id``) or vread (``Type/id/_history/version``); what
the upstream answered is only there encrypted::

    {"_id": "Observation/obs-1", "resource": "Observation/obs-1", "gen": 3,
     "owner": "Patient/pat-1" | "system", "version": "2", "key": <data key id>,
     "nonce": <12 bytes>, "data": <AES-256-GCM ciphertext + tag>,
     "headers": {"ETag": ..., "Last-Modified": ..., "Content-Type": ...},
     "size": <bytes>, "stored_at": ..., "fresh_until": ..., "expires_at": ...}

Ids, versions, owners and the ETag are in clear: they are what the entry is looked up, bound and
revalidated by, and the database holds patient ids elsewhere anyway (consents, grants). A TTL index
removes an entry at ``expires_at``.

Invalidation that every instance sees. Each document carries a generation, ``gen``. A write through
the gateway turns the document of the resource it wrote into a tombstone (``gen`` + 1, nothing
else) and deletes its vread entries; a read that missed stores what it fetched only with a
compare-and-set on the generation it saw before fetching (or by inserting, when there was no
document). So an answer fetched before a write can never be stored after the write's invalidation,
on any instance. Tombstones expire after :data:`TOMBSTONE_SECONDS`.

Bounds. :meth:`EntryStore.sweep` counts the entries and their bytes and, over either bound, deletes
the oldest (by ``stored_at``) until both are 10% under.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import DeleteMany, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from gateway.cache.crypto import Ciphertext
from smart_auth.clock import Clock, system_clock

COLLECTION = "cache_entries"
TOMBSTONE_SECONDS = 15 * 60
"""How long a write's tombstone stays: longer than any read that started before it can take."""

_CONTENT = ("owner", "version", "key", "nonce", "data", "headers", "size", "stored_at")
_HEADROOM = 0.9
_DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry as stored: still encrypted."""

    owner: str
    version: str
    key_id: str
    ciphertext: Ciphertext
    headers: dict[str, str]
    fresh_until: datetime


@dataclass(frozen=True, slots=True)
class Slot:
    """What the database holds for one entry id: the generation seen (``None``: no document) and
    the entry (``None``: none, or a tombstone)."""

    gen: int | None = None
    entry: Entry | None = None


def _entry(doc: dict[str, Any]) -> Entry | None:
    try:
        headers = doc["headers"]
        entry = Entry(
            owner=str(doc["owner"]),
            version=str(doc["version"]),
            key_id=str(doc["key"]),
            ciphertext=Ciphertext(bytes(doc["nonce"]), bytes(doc["data"])),
            headers={str(k): str(v) for k, v in headers.items()},
            fresh_until=doc["fresh_until"],
        )
    except (KeyError, TypeError, AttributeError):
        return None  # a tombstone, or not an entry
    return entry


@dataclass(frozen=True, slots=True)
class NewEntry:
    """What :meth:`EntryStore.put` writes."""

    resource: str
    owner: str
    version: str
    key_id: str
    ciphertext: Ciphertext
    headers: dict[str, str]

    def fields(self, now: datetime, fresh: timedelta, keep: timedelta) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "owner": self.owner,
            "version": self.version,
            "key": self.key_id,
            "nonce": self.ciphertext.nonce,
            "data": self.ciphertext.data,
            "headers": self.headers,
            "size": len(self.ciphertext.data),
            "stored_at": now,
            "fresh_until": now + fresh,
            "expires_at": now + fresh + keep,
        }


class EntryStore:
    """The entries: ``EntryStore(db, ...)``, then ``await ensure_indexes()``."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        fresh: timedelta,
        keep: timedelta,
        max_entries: int,
        max_bytes: int,
        clock: Clock = system_clock,
    ) -> None:
        """``fresh``: served without the upstream this long; ``keep``: then kept this long for
        revalidation."""
        self._entries = db[COLLECTION]
        self._fresh = fresh
        self._keep = keep
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock

    async def ensure_indexes(self) -> None:
        await self._entries.create_index("expires_at", expireAfterSeconds=0)
        await self._entries.create_index("owner")
        await self._entries.create_index("resource")
        await self._entries.create_index("stored_at")

    async def get_many(self, entry_ids: list[str]) -> dict[str, Slot]:
        """The slot of each id that has a document."""
        return {
            str(doc["_id"]): Slot(int(doc.get("gen", 0)), _entry(doc))
            async for doc in self._entries.find({"_id": {"$in": entry_ids}})
        }

    async def put(self, entry_id: str, seen: int | None, entry: NewEntry) -> Slot | None:
        """Store ``entry`` unless the generation moved since ``seen`` (``None``: there was no
        document); the slot it now fills, or ``None`` when it was not stored."""
        fields = entry.fields(self._clock(), self._fresh, self._keep)
        if seen is None:
            try:
                await self._entries.insert_one({"_id": entry_id, "gen": 0, **fields})
            except DuplicateKeyError:
                return None
            return Slot(0, _entry(fields))
        result = await self._entries.update_one({"_id": entry_id, "gen": seen}, {"$set": fields})
        return Slot(seen, _entry(fields)) if result.matched_count == 1 else None

    async def refresh(self, entry_id: str, seen: int, version: str) -> datetime | None:
        """The upstream confirmed the entry (304): fresh again, kept longer. Returns until when
        it is fresh (``None`` when it changed meanwhile)."""
        now = self._clock()
        result = await self._entries.update_one(
            {"_id": entry_id, "gen": seen, "version": version},
            {
                "$set": {
                    "stored_at": now,
                    "fresh_until": now + self._fresh,
                    "expires_at": now + self._fresh + self._keep,
                }
            },
        )
        return now + self._fresh if result.matched_count == 1 else None

    async def discard(self, entry_id: str, seen: int) -> None:
        """Delete an entry that cannot be used (its key is gone), unless it changed meanwhile."""
        await self._entries.delete_one({"_id": entry_id, "gen": seen})

    async def invalidate(self, resources: Iterable[str]) -> None:
        """A write changed these resources (``Type/id``): a tombstone for each one's read entry,
        its vread entries deleted — on every instance, in one round trip."""
        expires = self._clock() + timedelta(seconds=TOMBSTONE_SECONDS)
        operations: list[UpdateOne | DeleteMany] = []
        for resource in dict.fromkeys(resources):
            operations.append(
                UpdateOne(
                    {"_id": resource},
                    {
                        "$inc": {"gen": 1},
                        "$set": {"resource": resource, "expires_at": expires},
                        "$unset": dict.fromkeys((*_CONTENT, "fresh_until"), ""),
                    },
                    upsert=True,
                )
            )
            operations.append(DeleteMany({"resource": resource, "_id": {"$ne": resource}}))
        if operations:
            await self._entries.bulk_write(operations, ordered=False)

    async def purge_owner(self, owner: str) -> int:
        """Delete every entry of ``owner``; returns how many."""
        result = await self._entries.delete_many({"owner": owner})
        return int(result.deleted_count)

    async def count_owner(self, owner: str) -> int:
        return await self._entries.count_documents({"owner": owner})

    async def sweep(self) -> int:
        """Keep within the bounds: over either, delete the oldest entries until both are 10%
        under; returns how many were deleted."""
        totals = [
            row
            async for row in await self._entries.aggregate(
                [
                    {"$match": {"data": {"$exists": True}}},
                    {"$group": {"_id": None, "n": {"$sum": 1}, "bytes": {"$sum": "$size"}}},
                ]
            )
        ]
        count = int(totals[0]["n"]) if totals else 0
        size = int(totals[0]["bytes"]) if totals else 0
        if count <= self._max_entries and size <= self._max_bytes:
            return 0
        free_count = count - int(self._max_entries * _HEADROOM) if count > self._max_entries else 0
        free_bytes = size - int(self._max_bytes * _HEADROOM) if size > self._max_bytes else 0
        doomed: list[Any] = []
        freed_count = freed_bytes = 0
        oldest = self._entries.find({"data": {"$exists": True}}, {"size": 1}).sort("stored_at", 1)
        async for doc in oldest:
            if freed_count >= free_count and freed_bytes >= free_bytes:
                break
            doomed.append(doc["_id"])
            freed_count += 1
            freed_bytes += int(doc.get("size", 0))
        deleted = 0
        for start in range(0, len(doomed), _DELETE_BATCH):
            batch = doomed[start : start + _DELETE_BATCH]
            deleted += int((await self._entries.delete_many({"_id": {"$in": batch}})).deleted_count)
        return deleted
