"""The output files of bulk exports, encrypted at rest (SECURITY.md P-15; CONSENT.md C-22).

A file is the NDJSON of one resource type of one job, stored as ordered chunks in MongoDB (a
GridFS-like collection, ``export_chunks``)::

    {"_id": <job>:<seq>, "job": ..., "file": <type>, "seq": <n>, "owners": ["Patient/<id>", ...],
     "keys": [<data key id>, ...], "nonces": [<12 bytes>, ...], "data": <ciphertext>,
     "lines": <resources in it>, "expires_at": ...}

Each chunk holds the lines of one page that belong to the same patients, encrypted with the cache's
data keys (:mod:`gateway.cache.datakeys`): under the key of each patient the lines belong to, one
layer per patient (``system`` for resources that hold no patient data). Erasing a patient destroys
their keys, so their lines in every export file become unreadable at once, as their cached
resources do; a download leaves such chunks out. The additional authenticated data binds each
layer to the job, the file, the chunk's number and the owner, so a chunk moved elsewhere does not
decrypt. A TTL index removes chunks at ``expires_at``; cancelling a job deletes its chunks at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from gateway.cache.crypto import Ciphertext, DecryptError, Record, decrypt, encrypt
from gateway.cache.datakeys import SYSTEM, DataKeys, patient_owner
from smart_auth.key_provider import KeyProviderError

COLLECTION = "export_chunks"


def owner_names(patients: frozenset[str]) -> tuple[str, ...]:
    """The data key owners of lines that belong to these patients."""
    return tuple(patient_owner(p) for p in sorted(patients)) or (SYSTEM,)


def _record(job: str, file: str, seq: int, owner: str) -> Record:
    return Record(f"export:{file}", job, str(seq), owner)


class ExportFiles:
    """The chunks collection: ``ExportFiles(db, keys)``, then ``ensure_indexes()``."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], keys: DataKeys) -> None:
        self._chunks = db[COLLECTION]
        self._keys = keys

    async def ensure_indexes(self) -> None:
        await self._chunks.create_index([("job", 1), ("file", 1), ("seq", 1)])
        await self._chunks.create_index("expires_at", expireAfterSeconds=0)

    async def write(
        self,
        job: str,
        file: str,
        seq: int,
        owners: Sequence[str],
        lines: Sequence[bytes],
        expires_at: datetime,
    ) -> None:
        """One chunk: ``lines`` (each one resource's JSON) under each owner's key in turn."""
        data = b"".join(line + b"\n" for line in lines)
        key_ids: list[str] = []
        nonces: list[bytes] = []
        for owner in owners:
            key = await self._keys.for_encryption(owner)
            sealed = encrypt(key.cipher, data, _record(job, file, seq, owner))
            data = sealed.data
            key_ids.append(key.key_id)
            nonces.append(sealed.nonce)
        await self._chunks.replace_one(
            {"_id": f"{job}:{seq}"},
            {
                "job": job,
                "file": file,
                "seq": seq,
                "owners": list(owners),
                "keys": key_ids,
                "nonces": nonces,
                "data": data,
                "lines": len(lines),
                "expires_at": expires_at,
            },
            upsert=True,
        )

    async def read(self, job: str, file: str) -> AsyncIterator[tuple[frozenset[str], bytes]]:
        """The file's NDJSON, chunk by chunk, each with the patients its lines belong to (none
        for data of no patient); a chunk whose key is gone (the patient erased) or that does not
        decrypt is left out."""
        cursor = self._chunks.find({"job": job, "file": file}, sort=[("seq", 1)])
        async for doc in cursor:
            opened = await self._open(job, file, doc)
            if opened is not None:
                owners = [str(o) for o in doc["owners"]]
                patients = frozenset(o.removeprefix("Patient/") for o in owners if o != SYSTEM)
                yield patients, opened

    async def _open(self, job: str, file: str, doc: dict[str, Any]) -> bytes | None:
        data = bytes(doc["data"])
        layers = list(zip(doc["owners"], doc["keys"], doc["nonces"], strict=True))
        for owner, key_id, nonce in reversed(layers):
            try:
                key = await self._keys.for_decryption(str(key_id))
            except KeyProviderError:
                return None
            if key is None:
                return None
            try:
                data = decrypt(
                    key.cipher,
                    Ciphertext(bytes(nonce), data),
                    _record(job, file, int(doc["seq"]), str(owner)),
                )
            except DecryptError:
                return None
        return data

    async def files(self, job: str) -> dict[str, int]:
        """Each file of the job and how many lines its chunks hold."""
        counts: dict[str, int] = {}
        async for doc in self._chunks.find({"job": job}, projection={"file": 1, "lines": 1}):
            counts[str(doc["file"])] = counts.get(str(doc["file"]), 0) + int(doc["lines"])
        return counts

    async def drop_from(self, job: str, seq: int) -> None:
        """Chunks of a page whose cursor never moved past them (a stop mid-page)."""
        await self._chunks.delete_many({"job": job, "seq": {"$gte": seq}})

    async def delete(self, job: str) -> int:
        result = await self._chunks.delete_many({"job": job})
        return int(result.deleted_count)

    async def keep_until(self, job: str, expires_at: datetime) -> None:
        await self._chunks.update_many({"job": job}, {"$set": {"expires_at": expires_at}})
