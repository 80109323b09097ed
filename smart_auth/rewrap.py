"""Re-wrapping under a new key-encryption key, without downtime (SECURITY.md P-16).

Every data key the key provider wrapped, wherever a store keeps it (each store names its places as
:class:`~smart_auth.key_provider.WrappedField` values), is unwrapped with the KEK version that
wrapped it and wrapped again with the current one. What the data key protects — a sealed secret,
a cache entry — is not touched, so re-wrapping reads and writes a few dozen bytes per key.

It runs while gateways serve: they hold the old and the new KEK versions (the current one wraps,
both unwrap), so every blob opens before, during and after. Each document is changed with a
compare-and-set on the blob that was read, so a concurrent change (another re-wrap, a secret
replaced meanwhile) is never overwritten, and several re-wrappers at once are safe. A blob that
does not unwrap (altered, or wrapped by a version the provider does not hold) is reported and left
as it is; the old version can only be removed once nothing names it (:func:`versions_in_use`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.key_provider import KeyProvider, KeyProviderError, WrappedField, WrappedKey

_BATCH = 200  # compare-and-set updates per round trip


@dataclass(frozen=True, slots=True)
class RewrapReport:
    rewrapped: int
    """Blobs now wrapped by the current version."""
    failed: tuple[str, ...]
    """``collection/_id: why`` for each blob that did not unwrap (left as it is)."""


def _value(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for step in path.split("."):
        node = node.get(step) if isinstance(node, dict) else None
    return node


def _stale(field: WrappedField, current: str) -> dict[str, Any]:
    return {f"{field.path}.kek": {"$exists": True, "$ne": current}}


async def pending(
    db: AsyncDatabase[dict[str, Any]], fields: Sequence[WrappedField], current: str
) -> int:
    """How many blobs are wrapped by a version other than ``current``."""
    total = 0
    for field in fields:
        total += await db[field.collection].count_documents(_stale(field, current))
    return total


async def versions_in_use(
    db: AsyncDatabase[dict[str, Any]], fields: Sequence[WrappedField]
) -> dict[str, int]:
    """How many blobs each KEK version wraps, over every place."""
    counts: dict[str, int] = {}
    for field in fields:
        pipeline: list[dict[str, Any]] = [
            {"$match": {f"{field.path}.kek": {"$exists": True}}},
            {"$group": {"_id": f"${field.path}.kek", "n": {"$sum": 1}}},
        ]
        async for row in await db[field.collection].aggregate(pipeline):
            counts[str(row["_id"])] = counts.get(str(row["_id"]), 0) + int(row["n"])
    return counts


async def rewrap(
    db: AsyncDatabase[dict[str, Any]],
    provider: KeyProvider,
    fields: Sequence[WrappedField],
    *,
    progress: Callable[[int], object] = lambda _n: None,
) -> RewrapReport:
    """Re-wrap every blob of ``fields`` that the current version did not wrap; ``progress`` is
    called with the number of blobs done (re-wrapped or failed) after each batch."""
    current = provider.current_version
    rewrapped, failed = 0, []
    for field in fields:
        collection = db[field.collection]
        batch: list[UpdateOne] = []
        done = 0
        async for doc in collection.find(_stale(field, current), {field.path: 1}):
            blob = _value(doc, field.path)
            where = f"{field.collection}/{doc['_id']}"
            try:
                if not isinstance(blob, dict) or not isinstance(blob.get("key"), bytes):
                    raise KeyProviderError("not a wrapped key")
                old = WrappedKey(str(blob["kek"]), blob["key"])
                new = await provider.wrap(await provider.unwrap(old))
            except KeyProviderError as exc:
                failed.append(f"{where}: {exc}")
                done += 1
                continue
            batch.append(
                UpdateOne(
                    {
                        "_id": doc["_id"],
                        f"{field.path}.kek": old.version,
                        f"{field.path}.key": old.blob,
                    },
                    {"$set": {f"{field.path}.kek": new.version, f"{field.path}.key": new.blob}},
                )
            )
            if len(batch) >= _BATCH:
                rewrapped += await _write(collection, batch)
                progress(len(batch) + done)
                batch, done = [], 0
        if batch:
            rewrapped += await _write(collection, batch)
        progress(len(batch) + done)
    return RewrapReport(rewrapped, tuple(failed))


async def _write(collection: AsyncCollection[dict[str, Any]], batch: list[UpdateOne]) -> int:
    result = await collection.bulk_write(batch, ordered=False)
    return int(result.modified_count)
