"""Per-app rate limits on the FHIR API that hold across every gateway instance (SECURITY.md P-12).

Fixed windows (``N/second``, ``N/minute``, ``N/hour`` of ``rate_limit_per_client``) counted in
MongoDB (``rate_limits``, one document per app and window, removed by a TTL index after its
window). An instance does not ask MongoDB for every request: it claims a block of the window's
requests at once, an eighth of what the cluster has left (at least one), and spends it locally. A
claim is one conditional update that succeeds only while the block still fits under the limit, so
the cluster never lets through more than the limit; what it can let through less is what the other
instances have claimed and not yet spent, at most an eighth of the remainder each, and blocks
shrink as the limit nears. Once the window is spent an instance refuses without asking again
until the next window.

When MongoDB cannot be written an instance goes on counting alone, up to the limit itself: the
limit protects the upstream and is not an access decision (those fail closed on their own), and
the log says so once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from limits import parse as parse_limit
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

log = logging.getLogger(__name__)

COLLECTION = "rate_limits"
_WINDOWS_KEPT = 4
_BLOCKS_PER_REMAINDER = 8
_CLAIM_ATTEMPTS = 4


@dataclass(slots=True)
class _Window:
    index: int
    left: int
    """What the cluster had left in the window when this instance last looked."""
    tokens: int = 0
    """Requests claimed by this instance and not yet spent."""
    claimed: int = 0
    """Requests this instance has claimed in the window (its own limit when MongoDB is down)."""
    opened: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ClusterRateLimit:
    """Counts every app's requests across instances (the module's docstring)."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        limit: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        item = parse_limit(limit)
        self._amount = item.amount
        self._period = item.get_expiry()
        self._clock = clock
        self._counts: AsyncCollection[dict[str, Any]] = db[COLLECTION]
        self._windows: dict[str, _Window] = {}
        self._alone = False

    async def ensure_indexes(self) -> None:
        await self._counts.create_index("expires_at", expireAfterSeconds=0)

    async def hit(self, client_id: str) -> int | None:
        """Count one request of ``client_id``; ``None`` when it may go, else the seconds until
        the next window (for ``Retry-After``)."""
        now = self._clock()
        index = int(now // self._period)
        window = self._windows.get(client_id)
        if window is None or window.index != index:
            window = self._windows[client_id] = _Window(index, left=self._amount)
            if len(self._windows) > 100_000:
                self._windows = {client_id: window}
        if window.tokens == 0 and window.left > 0:
            async with window.lock:  # one claim at a time; those waiting spend what it brought
                if window.tokens == 0 and window.left > 0:
                    await self._claim(client_id, window)
        if window.tokens == 0:
            return max(1, math.ceil((index + 1) * self._period - now))
        window.tokens -= 1
        return None

    async def _claim(self, client_id: str, window: _Window) -> None:
        key = f"{client_id}:{window.index}"
        ends = datetime.fromtimestamp((window.index + _WINDOWS_KEPT) * self._period, UTC)
        try:
            if not window.opened:  # the window's counter exists before anything is claimed from it
                with suppress(DuplicateKeyError):  # another instance opened it at the same moment
                    await self._counts.update_one(
                        {"_id": key},
                        {"$setOnInsert": {"n": 0, "expires_at": ends}},
                        upsert=True,
                    )
                window.opened = True
            for _ in range(_CLAIM_ATTEMPTS):
                block = max(1, window.left // _BLOCKS_PER_REMAINDER)
                found = await self._counts.find_one_and_update(
                    {"_id": key, "n": {"$lte": self._amount - block}},
                    {"$inc": {"n": block}},
                    return_document=ReturnDocument.AFTER,
                )
                if found is not None:
                    window.tokens, window.claimed = block, window.claimed + block
                    window.left = self._amount - int(found["n"])
                    break
                # The block no longer fits: look again at what is left.
                current = await self._counts.find_one({"_id": key}, {"n": 1})
                if current is None:  # removed under us: open it again on the next request
                    window.opened = False
                    break
                window.left = self._amount - int(current["n"])
                if window.left <= 0:
                    break
        except PyMongoError as exc:
            if not self._alone:
                log.warning("rate limits counted by this instance alone: %s", type(exc).__name__)
            self._alone = True
            block = max(
                0, min(self._amount - window.claimed, window.left // _BLOCKS_PER_REMAINDER or 1)
            )
            window.tokens, window.claimed = block, window.claimed + block
            return
        if self._alone:
            log.warning("rate limits counted across instances again")
        self._alone = False
