"""Fresh answers without a query per answer: the change counters.

Every write to the revocation list and to the consents moves a counter in ``change_epochs``
(``{"_id": "revocations", "n": ...}``, ``{"_id": "consents", "n": ...}``) after the write is done;
so do a write through the gateway, a purge and a shred of the encrypted cache (``cache``,
``cache_keys``: :mod:`gateway.cache.cache`), and a change of representation.
For every request the gateway reads those counters afresh — one small ``_id`` query, shared by
the requests that arrive together (:mod:`gateway.fhir.coalesce`) and always made after the request
arrived. An answer cached under the counter it was read at is reused only while the counter has
not moved; when it has, the data are read again. So a revocation or a withdrawn consent that was
written before a request arrived is always seen by it, on every instance (S-25, C-12), while the
common case costs one shared read instead of one per lookup. This is the "version that every
instance checks in MongoDB on each request" of the design; there is no time-to-live anywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.database import AsyncDatabase

from gateway.cache.cache import ENTRIES_CHANGED, KEYS_SHREDDED
from gateway.fhir.coalesce import Coalescer
from smart_auth.idempotent import retried
from smart_auth.revocations import EPOCHS

_KINDS = ["revocations", "consents", "representation", ENTRIES_CHANGED, KEYS_SHREDDED]
_CACHE_LIMIT = 50_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Epochs:
    revocations: int
    consents: int
    representation: int = 0
    cache: int = 0
    """The encrypted cache's entries changed (a write, a purge, a shred: :mod:`gateway.cache`)."""
    cache_keys: int = 0
    """The encrypted cache's data keys were shredded."""


class ChangeEpochs:
    """Reads the change counters, once per round of concurrent requests."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._collection = db[EPOCHS]
        self._reads = Coalescer(self._fetch)

    async def _fetch(self, _keys: list[str]) -> dict[str, Epochs]:
        found = {
            doc["_id"]: int(doc.get("n", 0))
            async for doc in self._collection.find({"_id": {"$in": _KINDS}})
        }
        return {
            "now": Epochs(
                found.get("revocations", 0),
                found.get("consents", 0),
                found.get("representation", 0),
                found.get(ENTRIES_CHANGED, 0),
                found.get(KEYS_SHREDDED, 0),
            )
        }

    async def moved(self, kind: str) -> None:
        """Move one counter, after a change of what it guards (``representation``: a write of a
        RelatedPerson, Person or Patient through the gateway)."""
        if kind not in _KINDS:
            raise ValueError(f"no change counter {kind!r}")
        # Retried on a lost connection: a counter moved twice only costs a cache refill.
        await retried(
            lambda: self._collection.update_one({"_id": kind}, {"$inc": {"n": 1}}, upsert=True)
        )

    async def current(self) -> Epochs:
        """The counters as they are now (read after this call began)."""
        return (await self._reads.get_many(["now"]))["now"]


class EpochCache(Generic[K, V]):
    """Values read under a counter, good until that counter moves."""

    def __init__(self, load: Callable[[list[K]], Awaitable[dict[K, V]]]) -> None:
        self._entries: dict[K, tuple[int, V]] = {}
        self._load = Coalescer(load)

    async def get_many(self, keys: list[K], epoch: int, default: V) -> dict[K, V]:
        """The values of ``keys``, valid at ``epoch`` (read when the cache is older)."""
        out: dict[K, V] = {}
        missing: list[K] = []
        for key in keys:
            cached = self._entries.get(key)
            if cached is not None and cached[0] == epoch:
                out[key] = cached[1]
            else:
                missing.append(key)
        if missing:
            loaded = await self._load.get_many(missing)
            if len(self._entries) + len(missing) > _CACHE_LIMIT:
                self._entries.clear()
            for key in missing:
                value = loaded.get(key, default)
                # Tagged with the counter read *before* this load: if a write landed meanwhile,
                # the counter has moved past it and the next request reads again.
                self._entries[key] = (epoch, value)
                out[key] = value
        return out
