"""Writing audit records into MongoDB (AUDIT.md A-06, A-08, A-09): the inserting side of
``audit_events``.

- Write concern: journaled (``j``), and acknowledged by a majority (``w: majority``) when the
  server is a replica set or a sharded cluster (``hello`` says so); a single server takes
  ``w: 1``. SecantusDB reports itself as a one-member replica set and accepts ``majority``.
- Every insert is ordered and bounded by the write timeout (PyMongo's ``timeout()``, which covers
  server selection too), so a slow or absent database becomes an error in bounded time.
- Inserts are idempotent: a record already stored (the same ``_id`` — its event's id —,
  position and hash) is skipped, so a replay, or a write that failed or timed out yet landed,
  never stores anything twice. A chain position (``chain``, ``seq``, unique) held by another
  record raises :class:`PositionTaken`; an event id already used elsewhere, an ``AuditError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from gateway.audit.chain import Head, head_of
from gateway.audit.errors import AuditError
from gateway.audit.store import EVENTS, ensure_indexes

_DUPLICATE_KEY = 11000


class PositionTaken(Exception):
    """The chain position a record was linked to is held by another record."""

    def __init__(self, index: int) -> None:
        super().__init__(f"the chain position of batch record {index} is taken")
        self.index = index


async def write_concern(db: AsyncDatabase[dict[str, Any]]) -> WriteConcern:
    """Journaled, and acknowledged by a majority where there is one to ask."""
    hello = await db.client.admin.command("hello")
    replicated = "setName" in hello or hello.get("msg") == "isdbgrid"
    return WriteConcern(w="majority" if replicated else 1, j=True)


class RecordStore:
    """``audit_events`` for writing: ``await open()`` first."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], timeout: float) -> None:
        self._db = db
        self._timeout = timeout
        self._events = db[EVENTS]

    async def open(self) -> WriteConcern:
        """Create the indexes and choose the write concern (returned, for the checkpoints)."""
        await ensure_indexes(self._db)
        concern = await write_concern(self._db)
        self._events = self._db.get_collection(EVENTS, write_concern=concern)
        return concern

    async def insert(self, records: Sequence[Mapping[str, Any]]) -> None:
        remaining = [dict(record) for record in records]
        with pymongo.timeout(self._timeout):
            while remaining:
                try:
                    await self._events.insert_many(remaining, ordered=True)
                    return
                except BulkWriteError as exc:
                    errors = exc.details.get("writeErrors") or []
                    if not errors or errors[0].get("code") != _DUPLICATE_KEY:
                        raise
                    index = int(errors[0]["index"])
                    by_id = set(errors[0].get("keyPattern") or {"_id": 1}) == {"_id"}
                    await self._stored_already(remaining[index], index, by_id)
                    remaining = remaining[index + 1 :]

    async def _stored_already(self, record: Mapping[str, Any], index: int, by_id: bool) -> None:
        """A duplicate key: fine if this very record is stored (same id, position and hash: a
        write that failed or timed out had landed). Which unique index a server names first
        when both are duplicated varies, so both cases are looked at the same way."""
        same = {key: record[key] for key in ("_id", "chain", "seq", "hash")}
        if await self._events.find_one(same, {"_id": 1}) is not None:
            return
        if by_id:
            raise AuditError(f"audit chain {record['chain']}: an event id was recorded twice")
        raise PositionTaken(index)

    async def head(self, chain: str, from_seq: int = 0) -> Head | None:
        """The chain's last stored record. ``from_seq`` is a ``seq`` known to be stored (the
        newest checkpoint's): only the records from it on are looked at, then the whole chain if
        none is there. (SecantusDB reads every record a sorted query matches before it keeps
        the first: about 1.5 s for a chain of 10,000 on two shared cores, which a start-up
        bounded by the write timeout cannot wait for.)"""
        fields = {"seq": 1, "hash": 1}
        with pymongo.timeout(self._timeout):
            doc = None
            if from_seq > 0:
                query = {"chain": chain, "seq": {"$gte": from_seq}}
                doc = await self._events.find_one(query, fields, sort=[("seq", -1)])
            if doc is None:
                doc = await self._events.find_one({"chain": chain}, fields, sort=[("seq", -1)])
        return None if doc is None else head_of(doc)

    async def from_seq(self, chain: str, first: int) -> list[dict[str, Any]]:
        """The chain's stored records from ``first`` on, in order."""
        with pymongo.timeout(self._timeout):
            cursor = self._events.find({"chain": chain, "seq": {"$gte": first}}).sort("seq", 1)
            return [doc async for doc in cursor]
