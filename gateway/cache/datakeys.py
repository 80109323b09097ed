"""The cache's data keys (SECURITY.md P-15, P-16; CONSENT.md C-22): one AES-256 key per patient,
and one shared by the resources that hold no patient data (:data:`SYSTEM`).

Each key is stored in ``cache_keys`` wrapped by the key provider's current key-encryption key
(KEK), never in clear::

    {"_id": <random key id>, "owner": "Patient/<id>" | "system", "generation": 1,
     "wrapped": {"kek": <KEK version>, "key": <the wrapped key>},
     "encryptions": <how many encryptions it has done>, "created_at": ...,
     "retired_at": ..., "expires_at": ...}          # once a newer generation replaces it

Encryptions are counted in MongoDB, one ``$inc`` per entry written, so the count holds across
instances. Random 96-bit nonces allow 2^32 encryptions under one key (NIST SP 800-38D 8.3); at
:data:`MAX_ENCRYPTIONS` (2^30, a quarter of that) the owner gets a new key of the next generation
and the old one is retired: it still decrypts the entries written under it until they have
expired, and then the TTL index removes it too (an entry revalidated beyond that is a miss, and
is fetched and encrypted again under the new key).

An instance keeps the keys it unwrapped in memory for ``memory_seconds`` (bounded in number too),
so a cache hit costs no call to the key provider, which may be a KMS. Re-wrapping under a new KEK
(:mod:`smart_auth.rewrap`, through :data:`WRAPPED`) changes only ``wrapped``: the keys themselves,
and so every entry, stay as they are.

Crypto-shredding (C-22): :meth:`DataKeys.shred` deletes every key of a patient. From then on no
entry written under them can be decrypted by anyone reading the database, whatever key-encryption
key they hold. The other instances drop the keys they hold in memory (:meth:`DataKeys.forget`)
before their next cached read: the cache moves a change counter when it shreds (see
:mod:`gateway.cache.cache`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from smart_auth.clock import Clock, system_clock
from smart_auth.key_provider import KeyProvider, KeyProviderError, WrappedField, WrappedKey

COLLECTION = "cache_keys"
WRAPPED = WrappedField(COLLECTION, "wrapped")
"""Where the data keys are wrapped (re-wrapped on KEK rotation, P-16)."""
SYSTEM = "system"
"""The owner of the key shared by resources that hold no patient data."""
MAX_ENCRYPTIONS = 2**30
"""Encryptions after which an owner's key is replaced (well below the 2^32 of SP 800-38D)."""

_KEY_BYTES = 32
_MEMORY_LIMIT = 10_000
_ATTEMPTS = 5

log = logging.getLogger(__name__)


def patient_owner(patient_id: str) -> str:
    """The owner a patient's data keys and entries are filed under."""
    return f"Patient/{patient_id}"


@dataclass(frozen=True, slots=True)
class DataKey:
    """An unwrapped data key, ready to encrypt and decrypt."""

    key_id: str
    owner: str
    cipher: AESGCM


class DataKeys:
    """The data keys in MongoDB: ``DataKeys(db, provider, ...)``, then ``ensure_indexes()``."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        provider: KeyProvider,
        *,
        memory_seconds: float,
        retain: timedelta,
        max_encryptions: int = MAX_ENCRYPTIONS,
        clock: Clock = system_clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``retain``: how long a retired key is kept (the longest an entry written under it
        lives)."""
        self._keys = db[COLLECTION]
        self._provider = provider
        self._memory_seconds = memory_seconds
        self._retain = retain
        self._max = max_encryptions
        self._clock = clock
        self._monotonic = monotonic
        self._memory: OrderedDict[str, tuple[DataKey, float]] = OrderedDict()

    async def ensure_indexes(self) -> None:
        await self._keys.create_index([("owner", 1), ("generation", 1)], unique=True)
        await self._keys.create_index("expires_at", expireAfterSeconds=0)

    async def for_encryption(self, owner: str) -> DataKey:
        """The owner's current key, with one more encryption counted: a new key when the owner
        has none, or when the current one has done :data:`MAX_ENCRYPTIONS`. Raises
        :class:`KeyProviderError` when no key can be had (the provider failing, say)."""
        for _ in range(_ATTEMPTS):
            doc = await self._keys.find_one_and_update(
                {"owner": owner, "retired_at": {"$exists": False}},
                {"$inc": {"encryptions": 1}},
                sort=[("generation", -1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                doc = await self._create(owner, 1)
            elif int(doc["encryptions"]) > self._max:
                old = doc
                doc = await self._create(owner, int(old["generation"]) + 1)
                await self._retire(old)
            if doc is None:  # another instance made that key first: count on theirs
                continue
            try:
                return await self._open(doc)
            except KeyProviderError as exc:
                # Wrapped by a KEK this provider does not hold (removed too early?): the entries
                # under it are lost to this instance anyway; new ones go under a new key.
                log.warning("cache data key %s does not open (%s): replaced", doc["_id"], exc)
                await self._create(owner, int(doc["generation"]) + 1)
                await self._retire(doc)
        raise KeyProviderError("no cache data key could be had for this owner")

    async def for_decryption(self, key_id: str) -> DataKey | None:
        """The key ``key_id``, or ``None`` when it no longer exists (shredded, or retired and
        expired). Raises :class:`KeyProviderError` when it does not unwrap."""
        remembered = self._remembered(key_id)
        if remembered is not None:
            return remembered
        doc = await self._keys.find_one({"_id": key_id})
        return None if doc is None else await self._open(doc)

    async def shred(self, owner: str) -> int:
        """Delete every key of ``owner`` (C-22); returns how many there were."""
        for key_id in [k for k, (key, _) in self._memory.items() if key.owner == owner]:
            del self._memory[key_id]
        result = await self._keys.delete_many({"owner": owner})
        return int(result.deleted_count)

    def forget(self) -> None:
        """Drop every key held in memory (another instance shredded some)."""
        self._memory.clear()

    async def encryptions(self, owner: str) -> dict[int, int]:
        """Encryptions done by each generation of ``owner``'s keys."""
        return {
            int(doc["generation"]): int(doc["encryptions"])
            async for doc in self._keys.find({"owner": owner})
        }

    async def _create(self, owner: str, generation: int) -> dict[str, Any] | None:
        key = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
        wrapped = await self._provider.wrap(key)
        doc = {
            "_id": os.urandom(16).hex(),
            "owner": owner,
            "generation": generation,
            "wrapped": {"kek": wrapped.version, "key": wrapped.blob},
            "encryptions": 1,
            "created_at": self._clock(),
        }
        try:
            await self._keys.insert_one(doc)
        except DuplicateKeyError:
            return None
        self._remember(DataKey(str(doc["_id"]), owner, AESGCM(key)))
        return doc

    async def _retire(self, doc: dict[str, Any]) -> None:
        now = self._clock()
        await self._keys.update_one(
            {"_id": doc["_id"], "retired_at": {"$exists": False}},
            {"$set": {"retired_at": now, "expires_at": now + self._retain}},
        )

    async def _open(self, doc: dict[str, Any]) -> DataKey:
        remembered = self._remembered(str(doc["_id"]))
        if remembered is not None:
            return remembered
        wrapped = doc.get("wrapped")
        if not isinstance(wrapped, dict) or not isinstance(wrapped.get("key"), bytes):
            raise KeyProviderError("a cache data key is not in the wrapped form")
        key = await self._provider.unwrap(WrappedKey(str(wrapped.get("kek")), wrapped["key"]))
        opened = DataKey(str(doc["_id"]), str(doc["owner"]), AESGCM(key))
        self._remember(opened)
        return opened

    def _remember(self, key: DataKey) -> None:
        if self._memory_seconds > 0:
            self._memory[key.key_id] = (key, self._monotonic())
            while len(self._memory) > _MEMORY_LIMIT:
                self._memory.popitem(last=False)

    def _remembered(self, key_id: str) -> DataKey | None:
        found = self._memory.get(key_id)
        if found is None:
            return None
        if self._monotonic() - found[1] >= self._memory_seconds:
            del self._memory[key_id]
            return None
        return found[0]
