"""Verification of the audit chains (AUDIT.md A-07, A-13): ``fhir-gateway audit verify``.

Per chain, records are read in ``seq`` order from the chain's start — ``seq`` 1 linked to
``GENESIS``, or, after retention removed the oldest records, the newest valid checkpoint at or
before the first record kept, whose signed head the first record must link to. Each record must

- hash to its ``hash`` (else it was **altered**),
- carry the next ``seq`` (a jump is a **gap**: records missing; a repeat a **duplicate**),
- link to the previous record's ``hash`` with ``prev`` (else a **broken link**),
- match every checkpoint at its ``seq`` (else the chain was **rewritten** after it was signed),

and every checkpoint must verify against the trusted keys; a chain that ends before its newest
checkpoint lost its **tail**. An altered record or a broken link is reported as a **reordering**
when a record within the next ``window`` ones links to where it should be (records were moved:
their ``seq`` changed, with or without their hashes being recomputed).

The first problem of each chain is reported, with its ``seq`` and record id; checking that chain
stops there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.chain import EMPTY, Head, record_hash
from gateway.audit.checkpoints import Checkpoint, CheckpointStore, problem
from gateway.audit.store import CHECKPOINTS, EVENTS

WINDOW = 64


class Kind(StrEnum):
    ALTERED = "altered"
    BROKEN_LINK = "broken link"
    GAP = "gap"
    DUPLICATE = "duplicate"
    REORDERED = "reordering"
    REWRITTEN = "rewritten"
    TRUNCATED = "truncated"
    BAD_CHECKPOINT = "bad checkpoint"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    seq: int
    record_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain: str
    records: int
    """Records checked."""
    first: int | None
    last: int | None
    checkpoints: int
    finding: Finding | None

    @property
    def ok(self) -> bool:
        return self.finding is None


@dataclass(slots=True)
class _Suspect:
    finding: Finding
    expected_prev: str
    remaining: int


def _hash(record: Mapping[str, Any]) -> str | None:
    try:
        return record_hash(record)
    except TypeError:
        return None


class ChainVerifier:
    """Checks one chain's records, fed in ``seq`` order."""

    def __init__(
        self,
        chain: str,
        start: Head = EMPTY,
        checkpoints: Mapping[int, Checkpoint] | None = None,
        window: int = WINDOW,
    ) -> None:
        self.chain = chain
        self._expected = start.seq + 1
        self._prev = start.hash
        self._checkpoints = dict(checkpoints or {})
        self._window = window
        self._suspect: _Suspect | None = None
        self.finding: Finding | None = None
        self.records = 0
        self.first: int | None = None
        self.last: int | None = None

    def feed(self, record: Mapping[str, Any]) -> None:
        self.records += 1
        seq = record.get("seq")
        record_id = str(record.get("_id"))
        if isinstance(seq, int):
            self.first = seq if self.first is None else self.first
            self.last = seq
        if self.finding is not None:
            return
        if self._suspect is not None:
            self._look_ahead(record, seq, record_id)
            return
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.finding = Finding(Kind.ALTERED, self._expected, record_id, "it has no valid seq")
            return
        if seq < self._expected:
            self.finding = Finding(
                Kind.DUPLICATE, seq, record_id, f"a second record holds seq {seq}"
            )
            return
        if seq > self._expected:
            missing = f"{self._expected}" + (f"..{seq - 1}" if seq - 1 > self._expected else "")
            self.finding = Finding(
                Kind.GAP, self._expected, record_id, f"record(s) seq {missing} are missing"
            )
            return
        stored = record.get("hash")
        if _hash(record) != stored:
            self._suspect = _Suspect(
                Finding(Kind.ALTERED, seq, record_id, "it does not match its hash: it was changed"),
                self._prev,
                self._window,
            )
            return
        if record.get("prev") != self._prev:
            self._suspect = _Suspect(
                Finding(
                    Kind.BROKEN_LINK,
                    seq,
                    record_id,
                    f"it does not link to the record at seq {seq - 1}: one of them was changed "
                    "or replaced",
                ),
                self._prev,
                self._window,
            )
            return
        checkpoint = self._checkpoints.get(seq)
        if checkpoint is not None and checkpoint.head != stored:
            self.finding = Finding(
                Kind.REWRITTEN,
                seq,
                record_id,
                "it differs from the head signed by the checkpoint at this seq: the chain was "
                "rewritten",
            )
            return
        self._expected = seq + 1
        self._prev = str(stored)

    def _look_ahead(self, record: Mapping[str, Any], seq: object, record_id: str) -> None:
        suspect = self._suspect
        assert suspect is not None
        if seq == suspect.finding.seq:
            self.finding = Finding(
                Kind.DUPLICATE, suspect.finding.seq, record_id, f"a second record holds seq {seq}"
            )
            return
        if record.get("prev") == suspect.expected_prev and seq != suspect.finding.seq:
            at = suspect.finding.seq
            self.finding = Finding(
                Kind.REORDERED,
                at,
                suspect.finding.record_id,
                f"record {record_id}, stored at seq {seq}, was written at seq {at}: records "
                "were moved",
            )
            return
        suspect.remaining -= 1
        if suspect.remaining <= 0:
            self.finding = suspect.finding

    def finish(self) -> ChainReport:
        if self.finding is None and self._suspect is not None:
            self.finding = self._suspect.finding
        if self.finding is None and self._checkpoints:
            newest = max(self._checkpoints)
            if newest >= self._expected:
                self.finding = Finding(
                    Kind.TRUNCATED,
                    self._expected,
                    None,
                    f"the chain ends at seq {self._expected - 1} but a checkpoint signed seq "
                    f"{newest}: records were removed from its end",
                )
        return ChainReport(
            self.chain,
            self.records,
            self.first,
            self.last,
            len(self._checkpoints),
            self.finding,
        )


@dataclass(frozen=True, slots=True)
class Report:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(chain.ok for chain in self.chains)

    @property
    def records(self) -> int:
        return sum(chain.records for chain in self.chains)

    @property
    def checkpoints(self) -> int:
        return sum(chain.checkpoints for chain in self.chains)


Progress = Callable[[str, int], None]
"""Called with the chain and the number of records just checked."""


async def chain_sizes(db: AsyncDatabase[dict[str, Any]]) -> dict[str, int]:
    """Every chain with its number of records (chains with only checkpoints count 0)."""
    sizes: dict[str, int] = {}
    async for row in await db[EVENTS].aggregate([{"$group": {"_id": "$chain", "n": {"$sum": 1}}}]):
        sizes[str(row["_id"])] = int(row["n"])
    for chain in await db[CHECKPOINTS].distinct("chain"):
        sizes.setdefault(str(chain), 0)
    return dict(sorted(sizes.items()))


async def verify_chain(
    db: AsyncDatabase[dict[str, Any]],
    chain: str,
    keys: Mapping[str, Mapping[str, Any]],
    progress: Progress | None = None,
) -> ChainReport:
    events = db[EVENTS]
    checkpoints = await CheckpointStore(db).of_chain(chain)
    for checkpoint in checkpoints:
        why = problem(checkpoint, keys)
        if why is not None:
            finding = Finding(Kind.BAD_CHECKPOINT, checkpoint.seq, None, f"the checkpoint: {why}")
            return ChainReport(chain, 0, None, None, len(checkpoints), finding)
    first = await events.find_one({"chain": chain}, {"seq": 1}, sort=[("seq", 1)])
    if first is not None and isinstance(first.get("seq"), int):
        first_seq = int(first["seq"])
    else:  # every record expired: the newest checkpoint is where the chain resumes
        first_seq = checkpoints[-1].seq + 1 if checkpoints else 1
    start = EMPTY
    for checkpoint in checkpoints:  # the newest one at or before the first record kept
        if checkpoint.seq <= first_seq - 1:
            start = Head(checkpoint.seq, checkpoint.head)
    later = {cp.seq: cp for cp in checkpoints if cp.seq > start.seq}
    verifier = ChainVerifier(chain, start, later)
    done = 0
    cursor = events.find({"chain": chain}).sort([("seq", 1), ("_id", 1)]).batch_size(1000)
    async for record in cursor:
        verifier.feed(record)
        done += 1
        if progress is not None and done % 1000 == 0:
            progress(chain, 1000)
    if progress is not None and done % 1000:
        progress(chain, done % 1000)
    return verifier.finish()


async def verify_all(
    db: AsyncDatabase[dict[str, Any]],
    *,
    trusted_keys: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Verify every chain in the database. ``trusted_keys`` (kid -> public JWK) replaces the
    keys recorded in ``audit_keys``."""
    keys = trusted_keys if trusted_keys is not None else await CheckpointStore(db).keys()
    reports = [await verify_chain(db, chain, keys, progress) for chain in await chain_sizes(db)]
    return Report(reports)
