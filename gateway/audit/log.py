"""The audit log's writing end (AUDIT.md A-07 … A-10): ``await audit.record(events)`` returns
only once the events are durable, and raises :class:`~gateway.audit.errors.AuditUnavailable`
when they cannot be (then nothing may be released: the FHIR error middleware answers 503).

- **Group commit** (A-09). Callers queue their events; one writer task takes everything queued
  (up to ``max_batch`` events), links it to the chain in queue order and writes it with one
  ordered, journaled, time-bounded ``insert_many`` (:mod:`gateway.audit.records`); meanwhile the
  next callers queue up.
- **Spool** (A-08). When MongoDB fails (any ``PyMongoError``, the timeout included) the batch is
  appended to the local spool and fsynced instead, and so is everything after it, so a chain's
  order holds. A replay task writes the spool into MongoDB in order (idempotently: the event id
  is the document's ``_id``, and an ``_id`` already stored is skipped), then empties it under the
  writer's lock and switches back to MongoDB. The spool survives restarts: a new process replays
  what an old one left.
- **Neither** (A-08). When the spool cannot be written either, the batch is taken off the chain
  again and its callers get ``AuditUnavailable``. (If the MongoDB write had timed out and lands
  later, those records are found when the chain is next written and adopted: an event may exist
  for a request that was answered 503, never the other way round.)
- **Checkpoints** (A-07) every ``checkpoint_events`` events or ``checkpoint_seconds``, over what
  is in MongoDB; **retention** (A-13) hourly (:mod:`gateway.audit.retention`).

Logs name the chain, counts and error classes: never an event's content or a patient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from gateway.audit import retention
from gateway.audit.chain import EMPTY, Chain, Head, head_of
from gateway.audit.checkpoints import CheckpointStore, Signer, public_jwk, sign
from gateway.audit.errors import AuditError, AuditUnavailable, ChainInUse, SpoolCorrupt
from gateway.audit.events import request_events
from gateway.audit.facts import Observer, RequestFacts
from gateway.audit.records import PositionTaken, RecordStore
from gateway.audit.spool import Spool
from gateway.audit.tasks import cancel_and_wait

log = logging.getLogger("gateway.audit")

_REPLAY_BATCH = 500
_RETRY_MIN = 0.2
_RETRY_MAX = 5.0
_RETENTION_EVERY = 3600.0
_REVERTED_MAX = 10_000


class Mode(StrEnum):
    MONGODB = "mongodb"
    SPOOL = "spool"


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """For ``/readyz`` and ``/metrics``: no ids, only the state of this instance's chain."""

    chain: str
    mode: Mode
    head: int
    """The last ``seq`` written (to MongoDB or the spool)."""
    spooled_bytes: int
    checkpoint: int
    """The ``seq`` of the newest checkpoint."""


@dataclass(slots=True)
class _Waiter:
    events: list[dict[str, Any]]
    done: asyncio.Future[None]
    records: list[dict[str, Any]] = field(default_factory=list)


class AuditLog:
    """One gateway instance's audit chain: ``await start()``, ``await record(...)``, ``await
    close()`` (or :func:`gateway.audit.runtime.open_audit`)."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        spool_dir: Path,
        observer: Observer,
        signer: Signer | None,
        *,
        write_timeout: float = 2.0,
        checkpoint_events: int = 1000,
        checkpoint_seconds: float = 300.0,
        retention_period: timedelta | None = None,
        max_batch: int = 1000,
        lock_timeout: float = 0.0,
    ) -> None:
        self.observer = observer
        self._db = db
        self._spool = Spool(spool_dir, observer.name)
        self._signer = signer
        self._write_timeout = write_timeout
        self._checkpoint_events = checkpoint_events
        self._checkpoint_seconds = checkpoint_seconds
        self._retention = retention_period
        self._max_batch = max_batch
        self._lock_timeout = lock_timeout
        self._chain = Chain(observer.name)
        self._mode = Mode.MONGODB
        self._queue: deque[_Waiter] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._spooled = asyncio.Event()
        self._checkpoint_due = asyncio.Event()
        self._spool_size = 0
        self._replayed = 0
        self._durable: Head | None = None
        self._since_checkpoint = 0
        self._checkpoint_seq = 0
        self._reverted: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._records = RecordStore(db, write_timeout)
        self._checkpoints = CheckpointStore(db)

    @property
    def chain(self) -> str:
        return self.observer.name

    def status(self) -> AuditStatus:
        return AuditStatus(
            self.chain, self._mode, self._chain.head.seq, self._spool_size, self._checkpoint_seq
        )

    def out_of_reach(self) -> None:
        """Told that MongoDB could not be selected just now (a server selection that timed out
        on the request path): the next events go to the spool at once instead of waiting out
        the selection again; the replay brings the log back to MongoDB when it answers."""
        if self._mode is Mode.MONGODB:
            log.warning("audit chain %s: MongoDB is out of reach; spooling", self.chain)
            self._mode = Mode.SPOOL

    # --- life cycle

    async def start(self) -> None:
        concern = await self._records.open()
        self._checkpoints = CheckpointStore(self._db, concern)
        try:
            state = await asyncio.to_thread(self._spool.open, self._lock_timeout)
        except OSError as exc:
            raise AuditError(
                f"the audit spool directory {self._spool.directory} cannot be used: "
                f"{exc.strerror or exc} (setting audit_spool_dir)"
            ) from None
        try:
            latest = await self._checkpoints.latest(self.chain)
            stored = await self._records.head(self.chain, latest.seq if latest else 0)
        except BaseException:
            self._spool.close()
            raise
        self._durable = stored
        self._checkpoint_seq = latest.seq if latest else 0
        if state.last is not None:  # an earlier process spooled: the spool holds the head
            self._chain.head = head_of(state.last)
            self._mode = Mode.SPOOL
            self._spool_size = state.size
            self._spooled.set()
            log.warning(
                "audit chain %s: %d spooled event(s) to replay into MongoDB%s",
                self.chain,
                state.count,
                f" ({state.dropped} bytes of an unacknowledged torn write dropped)"
                if state.dropped
                else "",
            )
        else:
            self._chain.head = stored or EMPTY
        self._running = True
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="audit-writer"),
            asyncio.create_task(self._replay_loop(), name="audit-replay"),
            asyncio.create_task(self._maintain_loop(), name="audit-maintenance"),
        ]

    async def close(self) -> None:
        """Write what is queued, sign a last checkpoint when MongoDB takes it, let go."""
        if not self._running:
            return
        self._running = False
        self._wake.set()
        writer, *others = self._tasks
        await writer
        if self._mode is Mode.MONGODB:
            try:
                await self.checkpoint()
            except Exception as exc:  # the next process signs it
                log.warning(
                    "audit chain %s: no final checkpoint (%s)", self.chain, type(exc).__name__
                )
        for task in others:  # (each loop logs its own errors and never ends by itself)
            await cancel_and_wait(task)
        self._spool.close()

    # --- recording

    async def record(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Return once ``events`` are durable (MongoDB or the fsynced spool), in this order on
        the chain; raise :class:`AuditUnavailable` when they cannot be made durable."""
        if not events:
            return
        if not self._running:
            raise AuditUnavailable()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)
        waiter = _Waiter([dict(event) for event in events], done)
        self._queue.append(waiter)
        self._wake.set()
        await asyncio.shield(waiter.done)

    async def record_request(self, facts: RequestFacts) -> None:
        """Build the request's AuditEvents (one per patient) and record them."""
        await self.record(request_events(facts, self.observer))

    async def _write_loop(self) -> None:
        while self._running or self._queue:
            if not self._queue:
                await self._wake.wait()
                self._wake.clear()
                continue
            batch: list[_Waiter] = []
            size = 0
            while self._queue and (
                not batch or size + len(self._queue[0].events) <= self._max_batch
            ):
                waiter = self._queue.popleft()
                batch.append(waiter)
                size += len(waiter.events)
            try:
                await self._commit(batch)
            except Exception:  # never let one batch stop the writer
                log.exception("audit chain %s: a batch could not be recorded", self.chain)
                _settle(batch, failed=True)

    async def _commit(self, batch: list[_Waiter]) -> None:
        async with self._lock:
            before = self._chain.head
            linked = [waiter for waiter in batch if self._link(waiter)]
            if not linked:
                return
            records = [record for waiter in linked for record in waiter.records]
            try:
                await self._write(records, [event for w in linked for event in w.events])
            except Exception as exc:
                self._chain.head = before
                if len(self._reverted) > _REVERTED_MAX:  # a long outage: keep the latest only
                    self._reverted.clear()
                self._reverted.update(str(record["_id"]) for record in records)
                if not isinstance(exc, AuditUnavailable):
                    log.error(
                        "audit chain %s: %d event(s) not recorded (%s)",
                        self.chain,
                        len(records),
                        type(exc).__name__,
                    )
                _settle(linked, failed=True)
                return
            self._reverted.clear()
            _settle(linked, failed=False)

    def _link(self, waiter: _Waiter) -> bool:
        """Link one caller's events; a malformed event fails that caller only."""
        before = self._chain.head
        try:
            waiter.records = self._chain.append(waiter.events)
        except (KeyError, TypeError, ValueError, AttributeError):
            self._chain.head = before
            log.exception("audit chain %s: an event could not be linked", self.chain)
            _settle([waiter], failed=True)
            return False
        return True

    async def _write(self, records: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        if self._mode is Mode.MONGODB:
            try:
                try:
                    await self._records.insert(records)
                except PositionTaken as taken:
                    records = await self._adopt_landed(taken, events)
                    await self._records.insert(records)
            except PyMongoError as exc:
                log.warning(
                    "audit chain %s: MongoDB did not take %d event(s) (%s); spooling",
                    self.chain,
                    len(records),
                    type(exc).__name__,
                )
                self._mode = Mode.SPOOL
            else:
                self._wrote(records)
                return
        try:
            self._spool_size = await asyncio.to_thread(self._spool.append, records)
        except OSError as exc:
            log.error(
                "audit chain %s: neither MongoDB nor the spool took %d event(s) (%s): refusing",
                self.chain,
                len(records),
                type(exc).__name__,
            )
            if self._spool_size == 0:  # nothing waits in the spool: try MongoDB first next time
                self._mode = Mode.MONGODB
            raise AuditUnavailable() from None
        self._spooled.set()

    async def _adopt_landed(
        self, taken: PositionTaken, events: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The chain position is taken. If what holds it is a batch of ours that was refused
        (its write timed out, the spool failed too) and landed after all, it is part of the
        chain now: link after it. Otherwise another process writes this chain: refuse."""
        first = self._chain.head.seq - len(events) + 1
        try:
            landed = await self._records.from_seq(self.chain, first)
        except PyMongoError:
            raise AuditUnavailable() from None
        ours = bool(landed) and all(str(doc["_id"]) in self._reverted for doc in landed)
        if taken.index != 0 or not ours or landed[0]["seq"] != first:
            log.error(
                "audit chain %s is written by another process too: give each instance its own "
                "audit_chain_name",
                self.chain,
            )
            raise AuditUnavailable() from ChainInUse(self.chain)
        log.warning("audit chain %s: %d refused event(s) had landed; kept", self.chain, len(landed))
        self._chain.head = head_of(landed[-1])
        return self._chain.append(events)

    def _wrote(self, records: list[dict[str, Any]]) -> None:
        self._durable = head_of(records[-1])
        self._since_checkpoint += len(records)
        if self._since_checkpoint >= self._checkpoint_events:
            self._checkpoint_due.set()

    # --- replay

    async def _replay_loop(self) -> None:
        delay = _RETRY_MIN
        while self._running:
            await self._spooled.wait()
            try:
                await self._replay()
                delay = _RETRY_MIN
            except PyMongoError as exc:
                _reraise_cancellation()
                log.info(
                    "audit chain %s: replay waits for MongoDB (%s)", self.chain, type(exc).__name__
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
            except (PositionTaken, SpoolCorrupt, OSError) as exc:
                log.error("audit chain %s: the spool cannot be replayed: %s", self.chain, exc)
                await asyncio.sleep(_RETRY_MAX)
            except Exception:  # the replay must outlive any surprise
                _reraise_cancellation()
                log.exception("audit chain %s: replay failed", self.chain)
                await asyncio.sleep(_RETRY_MAX)

    async def _replay(self) -> None:
        """Write the spool into MongoDB, in order; when all of it is there, empty it and write to
        MongoDB again."""
        while True:
            end = self._spool_size
            if self._replayed < end:
                records, position = await asyncio.to_thread(
                    self._spool.read, self._replayed, end, _REPLAY_BATCH
                )
                if not records:
                    raise SpoolCorrupt(f"{self._spool.path}: spooled records are missing")
                await self._records.insert(records)
                self._replayed = position
                self._wrote(records)
                continue
            async with self._lock:
                if self._replayed != self._spool_size:
                    continue  # more was spooled meanwhile
                await asyncio.to_thread(self._spool.truncate)
                self._spool_size = self._replayed = 0
                self._mode = Mode.MONGODB
                self._spooled.clear()
            log.info("audit chain %s: the spool is in MongoDB; writing there again", self.chain)
            return

    # --- checkpoints and retention

    async def checkpoint(self) -> int | None:
        """Sign the head of what is in MongoDB, when it moved since the last checkpoint; its
        ``seq``."""
        head = self._durable
        if self._signer is None or head is None or head.seq <= self._checkpoint_seq:
            return None
        with pymongo.timeout(self._write_timeout):
            key = await self._signer.signing_key()
            checkpoint = sign(key, self.chain, head, int(time.time()))
            await self._checkpoints.save(checkpoint, public_jwk(key))
        self._checkpoint_seq = checkpoint.seq
        self._since_checkpoint = 0
        return checkpoint.seq

    async def expire(self, now: float | None = None) -> int:
        """Remove records past the retention period (every chain); how many."""
        if self._retention is None:
            return 0
        cutoff = (time.time() if now is None else now) - self._retention.total_seconds()
        return await retention.expire(self._db, int(cutoff))

    async def _maintain_loop(self) -> None:
        next_expiry = time.monotonic()
        while self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._checkpoint_seconds):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            try:
                await self.checkpoint()
                if time.monotonic() >= next_expiry:
                    await self.expire()
                    next_expiry = time.monotonic() + _RETENTION_EVERY
            except Exception as exc:  # (PyMongoError, a key that cannot be read...): next time
                _reraise_cancellation()
                log.warning(
                    "audit chain %s: checkpoint or expiry failed (%s)",
                    self.chain,
                    type(exc).__name__,
                )


def _settle(waiters: list[_Waiter], *, failed: bool) -> None:
    for waiter in waiters:
        if waiter.done.done():
            continue
        if failed:
            waiter.done.set_exception(AuditUnavailable())
        else:
            waiter.done.set_result(None)


def _reraise_cancellation() -> None:
    """Called where a loop catches ``Exception``: when this task is being cancelled (close()),
    stop. PyMongo can turn a cancellation that reaches it mid-operation into one of its own
    errors, and a loop that carried on would keep close() waiting for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen even when its caller has gone (a cancelled request)."""
    if not future.cancelled():
        future.exception()
