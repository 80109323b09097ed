"""Inserting records (A-08, A-09): idempotent — a record already stored is skipped, whichever
unique index the server names — while another record at a taken position, or an event id used
twice, is refused."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.chain import Chain
from gateway.audit.errors import AuditError
from gateway.audit.records import PositionTaken, RecordStore
from gateway.audit.store import EVENTS
from tests.audit.samples import event


async def test_a08_a_record_that_landed_already_is_skipped(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    store = RecordStore(db, timeout=2.0)
    await store.open()
    records = Chain("c1").append([event() for _ in range(5)])
    await store.insert(records[:3])  # a write that timed out, yet landed
    await store.insert(records)  # the replay of the whole batch
    assert await db[EVENTS].count_documents({}) == 5
    assert await store.head("c1") is not None


async def test_a08_a_taken_position_or_a_reused_id_is_refused(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    store = RecordStore(db, timeout=2.0)
    await store.open()
    first = Chain("c1").append([event()])
    await store.insert(first)
    other = Chain("c1").append([event()])  # another writer's seq 1
    with pytest.raises(PositionTaken):
        await store.insert(other)
    chain = Chain("c1")
    chain.append([event()])
    reused = chain.append([first[0]["event"]])  # the same event again, at seq 2
    with pytest.raises(AuditError):
        await store.insert(reused)


async def test_a08_the_head_is_looked_for_from_a_stored_seq_then_in_the_whole_chain(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    """A restart finds its chain's head among the records from the newest checkpoint on; where
    there are none (a checkpoint of records since removed, a database restored from an older
    backup), in the whole chain."""
    store = RecordStore(db, timeout=2.0)
    await store.open()
    records = Chain("c1").append([event() for _ in range(5)])
    await store.insert(records)
    await store.insert(Chain("c2").append([event() for _ in range(7)]))
    for from_seq in (0, 1, 3, 5, 9):
        head = await store.head("c1", from_seq)
        assert head is not None
        assert (head.seq, head.hash) == (5, records[-1]["hash"])
    assert await store.head("c3", 2) is None
