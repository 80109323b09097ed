"""The encrypted cache as the FHIR API uses it (DESIGN.md "Encrypted cache"; SECURITY.md P-15;
CONSENT.md C-10, C-13, C-22).

- :meth:`ResourceCache.observe` takes the change counters a request read (``cache``: entries
  changed by a write, a purge or a shred; ``cache_keys``: data keys shredded), and
  :meth:`ResourceCache.recent` answers from this instance's copy of recent entries while the
  counter has not moved (:mod:`gateway.cache.recent`).
- :meth:`ResourceCache.lookup_many` finds and decrypts entries in MongoDB. An entry that does not
  decrypt (a changed byte, or a ciphertext moved from another resource or patient: the AAD
  differs) is a miss, counted in ``fhir_gateway_cache_decrypt_failures`` and logged as a warning;
  it is replaced by what the upstream answers. An entry whose data key is gone (shredded, or
  retired and expired) is a miss too, and is deleted: the lazy half of crypto-shredding.
- :meth:`ResourceCache.store` encrypts what the upstream answered under the owner's data key and
  stores it with a compare-and-set on the generation the lookup saw (see
  :mod:`gateway.cache.entries`), :meth:`ResourceCache.revalidated` keeps an entry the upstream
  confirmed (304).
- :meth:`ResourceCache.invalidate` is called after every write through the gateway.
- :meth:`ResourceCache.purge_patient` (C-13: a withdrawn permit) deletes the patient's entries;
  :meth:`ResourceCache.shred_patient` (C-22: erasure) deletes the patient's data keys first — at
  that moment none of the patient's entries can be decrypted any more — and then the entries.
  Each of the three moves the counters once done, so every instance drops what it holds in memory
  before its next cached read.

What is cached never decides what is released: the caller releases a hit exactly like an upstream
answer (C-10). Log lines name resource types, never ids (P-14). The bounds are kept by a sweep
(:meth:`EntryStore.sweep`) that runs in the background after every :data:`SWEEP_EVERY` entries
stored, at most every :data:`SWEEP_MIN_SECONDS`, so they may be exceeded by what is written in
between.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from gateway.cache.crypto import DecryptError, Record, decrypt, encrypt
from gateway.cache.datakeys import MAX_ENCRYPTIONS, DataKeys, patient_owner
from gateway.cache.entries import EntryStore, NewEntry, Slot
from gateway.cache.recent import RecentEntries
from gateway.settings import Settings
from gateway.web.metrics import Metrics
from smart_auth.clock import Clock, system_clock
from smart_auth.key_provider import KeyProvider, KeyProviderError
from smart_auth.revocations import EPOCHS

SWEEP_EVERY = 200
SWEEP_MIN_SECONDS = 10.0
ENTRIES_CHANGED = "cache"
"""The change counter moved after a write's invalidation, a purge or a shred."""
KEYS_SHREDDED = "cache_keys"
"""The change counter moved after data keys were shredded."""
_MAX_ENTRY_BYTES = 1024 * 1024
_RECENT_ENTRIES = 10_000
_RECENT_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


def _name(exc: Exception) -> str:
    """What a log line says of a failure: its kind, never its message (a database error can
    quote a document's id; logs carry no ids, P-14)."""
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """How long entries live and how much the cache may hold (the ``cache_*`` settings)."""

    ttl_seconds: int = 60
    revalidate_seconds: int = 3600
    max_entries: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    key_memory_seconds: int = 300
    max_encryptions: int = MAX_ENCRYPTIONS

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheLimits:
        return cls(
            ttl_seconds=settings.cache_ttl_seconds,
            revalidate_seconds=settings.cache_revalidate_seconds,
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            key_memory_seconds=settings.cache_key_memory_seconds,
        )

    @property
    def max_entry_bytes(self) -> int:
        """A larger answer is not cached (one entry may not take much of the cache)."""
        return min(_MAX_ENTRY_BYTES, self.max_bytes // 16)

    @property
    def recent_entries(self) -> int:
        """How many entries an instance keeps in memory (:mod:`gateway.cache.recent`)."""
        return min(_RECENT_ENTRIES, self.max_entries)

    @property
    def recent_bytes(self) -> int:
        return min(_RECENT_BYTES, self.max_bytes)


@dataclass(frozen=True, slots=True)
class CachedRead:
    """What is cached for: a read by id (``version`` ``None``) or a vread."""

    resource_type: str
    resource_id: str
    version: str | None = None

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def entry_id(self) -> str:
        if self.version is None:
            return self.reference
        return f"{self.reference}/_history/{self.version}"


@dataclass(frozen=True, slots=True)
class Hit:
    """A decrypted entry: the upstream's body and headers as they were answered."""

    body: bytes
    headers: Mapping[str, str]
    fresh: bool
    version: str

    @property
    def etag(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "etag"), None)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a lookup found: the slot seen (its generation, for :meth:`ResourceCache.store`), the
    change counter it was made under, and the hit."""

    read: CachedRead
    slot: Slot
    epoch: int
    hit: Hit | None = None

    @property
    def gen(self) -> int | None:
        return self.slot.gen


class ResourceCache:
    """The encrypted cache over MongoDB (the module's docstring)."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        provider: KeyProvider,
        metrics: Metrics,
        limits: CacheLimits,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._limits = limits
        keep = timedelta(seconds=limits.revalidate_seconds)
        fresh = timedelta(seconds=limits.ttl_seconds)
        self.entries = EntryStore(
            db,
            fresh=fresh,
            keep=keep,
            max_entries=limits.max_entries,
            max_bytes=limits.max_bytes,
            clock=clock,
        )
        self.keys = DataKeys(
            db,
            provider,
            memory_seconds=limits.key_memory_seconds,
            retain=fresh + keep + timedelta(seconds=1),
            max_encryptions=limits.max_encryptions,
            clock=clock,
        )
        self._recent = RecentEntries(limits.recent_entries, limits.recent_bytes)
        self._keys_epoch = -1
        self._changes = db[EPOCHS]
        self._stored_since_sweep = 0
        self._last_sweep = 0.0
        self._sweeping: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        await self.entries.ensure_indexes()
        await self.keys.ensure_indexes()

    async def close(self) -> None:
        """Stop a sweep in progress (nothing else to stop: the cache holds no connection)."""
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping

    def observe(self, entries_changed: int, keys_shredded: int) -> None:
        """The change counters as a request read them (after it arrived): what this instance
        holds in memory is dropped when they moved."""
        self._recent.observe(entries_changed)
        if keys_shredded > self._keys_epoch:
            self._keys_epoch = keys_shredded
            self.keys.forget()

    async def recent(self, read: CachedRead) -> Lookup | None:
        """A fresh hit from this instance's copy, or ``None`` (then ask :meth:`lookup_many`)."""
        slot = self._recent.get(read.entry_id)
        if slot is None:
            return None
        try:
            lookup = await self._open(read, slot, self._recent.epoch)
        except PyMongoError:
            return None
        return lookup if lookup.hit is not None and lookup.hit.fresh else None

    async def lookup_many(self, reads: list[CachedRead]) -> dict[CachedRead, Lookup]:
        """What MongoDB holds for each read, decrypted (one query for all of them)."""
        epoch = self._recent.epoch
        try:
            slots = await self.entries.get_many([read.entry_id for read in reads])
            found = {
                read: await self._open(read, slots.get(read.entry_id, Slot()), epoch)
                for read in reads
            }
        except PyMongoError as exc:
            log.warning("the cache cannot be read (%s): reading from the upstream", _name(exc))
            return {read: Lookup(read, Slot(), epoch) for read in reads}
        for read, lookup in found.items():
            if lookup.hit is not None:
                self._recent.put(read.entry_id, lookup.slot, epoch)
        return found

    async def _open(self, read: CachedRead, slot: Slot, epoch: int) -> Lookup:
        entry = slot.entry
        if entry is None or slot.gen is None:
            return Lookup(read, slot, epoch)
        if read.version is not None and entry.version != read.version:
            return self._undecryptable(read, slot, epoch, "its version is not the one named")
        try:
            key = await self.keys.for_decryption(entry.key_id)
        except KeyProviderError as exc:
            log.warning("a cached %s: its data key does not open (%s)", read.resource_type, exc)
            return Lookup(read, slot, epoch)
        if key is None:  # shredded (or retired and expired): purge it lazily
            await self._quietly(self.entries.discard(read.entry_id, slot.gen))
            self._recent.drop(read.entry_id)
            return Lookup(read, Slot(), epoch)
        if key.owner != entry.owner:
            return self._undecryptable(read, slot, epoch, "it names another owner's key")
        record = Record(read.resource_type, read.resource_id, entry.version, entry.owner)
        try:
            body = decrypt(key.cipher, entry.ciphertext, record)
        except DecryptError as exc:
            return self._undecryptable(read, slot, epoch, str(exc))
        fresh = self._clock() < entry.fresh_until
        return Lookup(read, slot, epoch, Hit(body, entry.headers, fresh, entry.version))

    def _undecryptable(self, read: CachedRead, slot: Slot, epoch: int, why: str) -> Lookup:
        """An entry that was tampered with: alert, and treat it as a miss (it is overwritten by
        what the upstream answers)."""
        self._metrics.cache_decrypt_failures.inc()
        log.warning(
            "a cached %s does not decrypt (%s): altered, or moved from another record; treated "
            "as a miss (data key %s)",
            read.resource_type,
            why,
            slot.entry.key_id if slot.entry else "-",
        )
        self._recent.drop(read.entry_id)
        return Lookup(read, slot, epoch)

    async def store(
        self,
        lookup: Lookup,
        *,
        owner: str,
        version: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> bool:
        """Encrypt and store what the upstream answered for ``lookup.read``, unless a write
        invalidated it since the lookup; whether it was stored. Failures are logged, never
        raised: the answer is served all the same."""
        read = lookup.read
        if len(body) > self._limits.max_entry_bytes:
            return False
        if read.version is not None and version != read.version:
            return False
        try:
            key = await self.keys.for_encryption(owner)
            record = Record(read.resource_type, read.resource_id, version, owner)
            entry = NewEntry(
                resource=read.reference,
                owner=owner,
                version=version,
                key_id=key.key_id,
                ciphertext=encrypt(key.cipher, body, record),
                headers=dict(headers),
            )
            stored = await self.entries.put(read.entry_id, lookup.gen, entry)
        except (PyMongoError, KeyProviderError) as exc:
            log.warning("a %s was not cached (%s)", read.resource_type, _name(exc))
            return False
        if stored is None:
            return False
        self._recent.put(read.entry_id, stored, lookup.epoch)
        self._stored()
        return True

    async def revalidated(self, lookup: Lookup) -> None:
        """The upstream answered 304 to the entry's ETag: it is fresh again."""
        entry = lookup.slot.entry
        if lookup.hit is None or lookup.gen is None or entry is None:
            return
        try:
            fresh_until = await self.entries.refresh(
                lookup.read.entry_id, lookup.gen, lookup.hit.version
            )
        except PyMongoError as exc:
            log.warning("cache not updated (%s)", _name(exc))
            return
        if fresh_until is not None:
            slot = Slot(lookup.gen, dataclasses.replace(entry, fresh_until=fresh_until))
            self._recent.put(lookup.read.entry_id, slot, lookup.epoch)

    async def discard(self, lookup: Lookup) -> None:
        """The upstream no longer has what the entry holds (404, 410)."""
        if lookup.gen is not None:
            await self._quietly(self.invalidate([lookup.read.reference]))

    async def invalidate(self, references: Iterable[str]) -> None:
        """After a write through the gateway (``Type/id`` of each resource written): every
        instance's next read of them goes to the upstream. Raises :class:`PyMongoError`."""
        await self.entries.invalidate(references)
        await self._moved(ENTRIES_CHANGED)

    async def purge_patient(self, patient_id: str) -> int:
        """C-13: delete the patient's entries; returns how many."""
        purged = await self.entries.purge_owner(patient_owner(patient_id))
        await self._moved(ENTRIES_CHANGED)
        return purged

    async def shred_patient(self, patient_id: str) -> int:
        """C-22: delete the patient's data keys — from then on none of their entries can be
        decrypted — and then the entries; returns how many keys were deleted."""
        owner = patient_owner(patient_id)
        shredded = await self.keys.shred(owner)
        await self._moved(KEYS_SHREDDED)
        await self.entries.purge_owner(owner)
        await self._moved(ENTRIES_CHANGED)
        return shredded

    async def _moved(self, counter: str) -> None:
        """Move a change counter, after the change it announces (see the module docstring)."""
        if counter == ENTRIES_CHANGED:
            self._recent.clear()
        await self._changes.update_one({"_id": counter}, {"$inc": {"n": 1}}, upsert=True)

    def _stored(self) -> None:
        self._stored_since_sweep += 1
        due = time.monotonic() - self._last_sweep >= SWEEP_MIN_SECONDS
        if self._stored_since_sweep >= SWEEP_EVERY and due and self._sweeping is None:
            self._stored_since_sweep = 0
            self._last_sweep = time.monotonic()
            self._sweeping = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        try:
            evicted = await self.entries.sweep()
        except PyMongoError as exc:
            log.warning("cache sweep failed (%s)", _name(exc))
            evicted = 0
        finally:
            self._sweeping = None
        if evicted:
            self._metrics.cache_evictions.inc(evicted)

    async def _quietly(self, work: Awaitable[object]) -> None:
        try:
            await work
        except PyMongoError as exc:
            log.warning("cache not updated (%s)", _name(exc))
