"""Export files at rest (:mod:`gateway.fhir.bulk.files`; SECURITY.md P-15, CONSENT.md C-22): a
chunk is encrypted under the data key of every patient its lines belong to, in layers; erasing any
one of them makes it unreadable; a chunk moved to another job, file or place does not open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from gateway.cache.datakeys import SYSTEM, DataKeys, patient_owner
from gateway.fhir.bulk.files import COLLECTION, ExportFiles, owner_names
from smart_auth.key_provider import LocalKeyProvider
from tests.gateway.cache.conftest import KEK

LATER = datetime.now(UTC) + timedelta(hours=1)
ALONE = b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"}}'
SHARED = b'{"resourceType":"Observation","id":"o2","performer":[{"reference":"Patient/b"}]}'
DIRECTORY = b'{"resourceType":"Practitioner","id":"p1"}'


async def _files(db: AsyncDatabase[dict[str, Any]]) -> tuple[ExportFiles, DataKeys]:
    keys = DataKeys(db, LocalKeyProvider(KEK), memory_seconds=0, retain=timedelta(days=1))
    await keys.ensure_indexes()
    files = ExportFiles(db, keys)
    await files.ensure_indexes()
    return files, keys


async def _read(files: ExportFiles, job: str, file: str) -> bytes:
    return b"".join([chunk async for _, chunk in files.read(job, file)])


def test_owners_are_the_patients_or_system() -> None:
    assert owner_names(frozenset({"b", "a"})) == (patient_owner("a"), patient_owner("b"))
    assert owner_names(frozenset()) == (SYSTEM,)


async def test_p15_c22_chunks_decrypt_in_order_and_erasing_any_owner_shreds_theirs(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    files, keys = await _files(db)
    await files.write("job1", "Observation", 0, owner_names(frozenset({"a"})), [ALONE], LATER)
    shared = owner_names(frozenset({"a", "b"}))
    await files.write("job1", "Observation", 1, shared, [SHARED], LATER)
    await files.write("job1", "Practitioner", 2, owner_names(frozenset()), [DIRECTORY], LATER)
    assert await _read(files, "job1", "Observation") == ALONE + b"\n" + SHARED + b"\n"
    assert await files.files("job1") == {"Observation": 2, "Practitioner": 1}
    owners = [patients async for patients, _ in files.read("job1", "Observation")]
    assert owners == [frozenset({"a"}), frozenset({"a", "b"})]
    assert [p async for p, _ in files.read("job1", "Practitioner")] == [frozenset()]
    async for doc in db[COLLECTION].find({}):
        assert b"Patient/" not in doc["data"] and b"Observation" not in doc["data"]

    await keys.shred(patient_owner("b"))  # erasure of b: the line shared with b goes too
    assert await _read(files, "job1", "Observation") == ALONE + b"\n"
    await keys.shred(patient_owner("a"))
    assert await _read(files, "job1", "Observation") == b""
    assert await _read(files, "job1", "Practitioner") == DIRECTORY + b"\n"


async def test_p15_a_chunk_moved_to_another_job_or_place_does_not_open(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    files, _ = await _files(db)
    await files.write("job1", "Observation", 0, owner_names(frozenset({"a"})), [ALONE], LATER)
    chunk = await db[COLLECTION].find_one({"_id": "job1:0"})
    assert chunk is not None
    await db[COLLECTION].insert_one({**chunk, "_id": "job2:0", "job": "job2"})
    await db[COLLECTION].insert_one({**chunk, "_id": "job1:5", "seq": 5})
    assert await _read(files, "job2", "Observation") == b""
    assert await _read(files, "job1", "Observation") == ALONE + b"\n"  # job1:5 left out


async def test_a_stop_mid_page_drops_its_chunks_and_cancel_deletes_all(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    files, _ = await _files(db)
    for seq in range(4):
        await files.write("job1", "Observation", seq, (SYSTEM,), [DIRECTORY], LATER)
    await files.drop_from("job1", 2)
    assert await files.files("job1") == {"Observation": 2}
    assert await files.delete("job1") == 2
    assert await files.files("job1") == {}
