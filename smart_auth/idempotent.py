"""Writes that may safely reach MongoDB twice, and are sent twice when the connection fails.

A pooled connection can die under a write: a server or a network device in between drops idle
connections, a primary steps down. PyMongo retries such writes itself only with retryable writes
on (``retryWrites=true``, the default; the embedded database of the demo and the tests runs
without them). Where sending a write again cannot change its outcome, the stores retry it once
here:

- :func:`retried`: an upsert, a ``$set`` on a document chosen by ``_id``, a delete whose count is
  not read — the second run leaves the database as the first did;
- :func:`insert_once`: an insert of a document whose ``_id`` is set before it is sent; a duplicate
  ``_id`` on the second attempt means the first one was applied.

Writes whose second run would differ — ``$inc``, ``$push``, a conditional update whose result is
read (a code redeemed once, a TOTP step claimed once), an insert whose duplicate means a replay —
are not retried; the ``$inc``s that are, the change counters of revocations and of consents, only
have to move (moved twice, a cache is refilled once more). Timeouts are not retried: the
operation's time bound holds (``timeoutMS``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import AutoReconnect, DuplicateKeyError

log = logging.getLogger(__name__)

T = TypeVar("T")


def _connection_lost(exc: AutoReconnect) -> bool:
    """A connection error after which the write may or may not have been applied (not a timeout,
    whose bound must hold)."""
    return not exc.timeout


async def retried(write: Callable[[], Awaitable[T]]) -> T:
    """Run an idempotent write; run it once more when the connection failed under it."""
    try:
        return await write()
    except AutoReconnect as exc:
        if not _connection_lost(exc):
            raise
        log.info("a database connection failed during a write; sending it again")
        return await write()


async def insert_once(collection: AsyncCollection[Any], document: Mapping[str, Any]) -> None:
    """Insert ``document`` (its ``_id`` set); once more when the connection failed under the first
    attempt, which counts as done if it turns out to have been applied. A duplicate key on the
    first attempt is the caller's to handle, as with ``insert_one``."""
    if "_id" not in document:
        raise ValueError("insert_once needs a document with its _id set")
    try:
        await collection.insert_one(document)
        return
    except AutoReconnect as exc:
        if not _connection_lost(exc):
            raise
        log.info("a database connection failed during an insert; sending it again")
    try:
        await collection.insert_one(document)
    except DuplicateKeyError:
        if await collection.find_one({"_id": document["_id"]}, {"_id": 1}) is None:
            raise  # another unique key: not our first attempt
