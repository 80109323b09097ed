"""Retention of audit records (AUDIT.md A-13; HIPAA 45 CFR 164.316(b)(2), 164.528: six years by
default, ``audit_retention_days``).

Records leave only from the oldest end of a chain, and only up to a signed checkpoint: for each
chain, the newest checkpoint signed before the cut-off (so every record it covers is older than
the retention period) becomes the chain's anchor; the records up to it and the checkpoints before
it are removed. The anchor stays: verification starts from it, and the first record kept links to
the head it signed, so expiry never breaks verification. Records newer than the anchor wait for
a later checkpoint to age (at most ``audit_checkpoint_seconds`` longer than the period).
"""

from __future__ import annotations

from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.store import CHECKPOINTS, EVENTS


async def expire(db: AsyncDatabase[dict[str, Any]], cutoff: int) -> int:
    """Remove what every chain's newest checkpoint signed before ``cutoff`` (seconds since the
    epoch) covers; the number of records removed."""
    checkpoints = db[CHECKPOINTS]
    removed = 0
    for chain in await checkpoints.distinct("chain"):
        anchor = await checkpoints.find_one(
            {"chain": chain, "at": {"$lt": cutoff}}, sort=[("seq", DESCENDING)]
        )
        if anchor is None:
            continue
        done = await db[EVENTS].delete_many({"chain": chain, "seq": {"$lte": anchor["seq"]}})
        await checkpoints.delete_many({"chain": chain, "seq": {"$lt": anchor["seq"]}})
        removed += done.deleted_count
    return removed
