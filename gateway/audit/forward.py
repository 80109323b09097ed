"""Forwarding the audit log to an audit repository (AUDIT.md A-06, A-08; optional, off unless
``audit_forward_url`` is set).

EHR teams keep an audit repository: a FHIR server that collects AuditEvents. The forwarder sends
every record of ``audit_events`` there as ``PUT {base}/AuditEvent/{id}`` with the stored event
as the body (the record's ``event``: the record's other fields are the chain's, see
:mod:`gateway.audit.chain`), after it is durable in MongoDB, never from the request path:

- **Own task, own connection.** It reads MongoDB and writes to the repository over an HTTP
  session of its own; recording (:mod:`gateway.audit.log`) never waits for it, so a repository
  that is down, slow or refusing holds up no release.
- **In order per chain.** Each chain is sent in ``seq`` order, one event at a time; a failed
  event is retried (backoff from ``audit_forward_backoff_seconds``, doubling up to
  ``audit_forward_backoff_max_seconds``) before anything after it is sent. Chains go in
  parallel. Any answer but 200 or 201, a timeout or a connection error is a failure: nothing is
  ever skipped, so an event the repository keeps refusing holds up its chain (the log names the
  chain, the position and the status, never the content).
- **At least once, idempotent by id.** How far each chain has been sent is kept in MongoDB
  (``audit_forward``: ``{_id: chain, forwarded: seq, owner, lease_until}``) and advanced after
  each event the repository took. An event can be sent again (a crash between the answer and the
  cursor's update, a lease taken over): the PUT by id makes that harmless.
- **Any instance, one at a time.** Every instance that forwards looks at every chain; a chain is
  forwarded by the instance holding its lease (``audit_forward_lease_seconds``, renewed on every
  round and every event sent), so an instance that stops is replaced within a lease. The lease
  uses the instances' clocks, which must agree to well within a lease. While a lease is being
  taken over, the two instances can overlap for one event: its PUT is idempotent, and order holds
  again from the next event on.
- **Backlog** (``fhir_gateway_audit_forward_backlog`` in ``/metrics``): events stored in every
  chain and not yet taken, counted on each round by every forwarding instance. No chain name or id
  is a label.

Records removed by retention (:mod:`gateway.audit.retention`) before they were sent are not sent;
a gap in a chain's positions is waited on for one round (a write still landing) and then passed.
When forwarding is first turned on, the whole retained log is sent, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson
import pymongo
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from gateway.audit.store import EVENTS
from gateway.audit.tasks import cancel_and_wait
from gateway.proxy.credentials import Credentials, StaticCredentials, credentials_for
from gateway.proxy.upstream import create_session
from gateway.settings import Settings
from gateway.web.metrics import Metrics

log = logging.getLogger("gateway.audit.forward")

STATE = "audit_forward"
"""The collection of forwarding cursors and leases, one document per chain."""
_ROUND_SECONDS = 5.0
"""How long one chain may keep sending full batches in one round before the others' turn."""
_FHIR_JSON = "application/fhir+json"


class SinkFailed(Exception):
    """The audit repository did not take an event (the message: why, without the content)."""


class Sink(Protocol):
    """Where events go: ``put`` returns once the event is taken, raises :class:`SinkFailed`."""

    async def put(self, event: Mapping[str, Any]) -> None: ...


class FhirSink:
    """A FHIR server's ``PUT {base}/AuditEvent/{id}`` (update as create, idempotent by id)."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, credentials: Credentials | None = None
    ) -> None:
        self._session = session
        self._base = base.rstrip("/")
        self._credentials = credentials or StaticCredentials({})

    async def put(self, event: Mapping[str, Any]) -> None:
        url = f"{self._base}/AuditEvent/{quote(str(event['id']), safe='')}"
        try:
            headers = {
                **(await self._credentials.headers()),
                "Content-Type": _FHIR_JSON,
                "Accept": _FHIR_JSON,
            }
            async with self._session.put(
                url, data=orjson.dumps(event), headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                response.release()
            if status == 401:
                self._credentials.rejected()
        except TimeoutError:
            raise SinkFailed("no answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SinkFailed(f"not reachable ({type(exc).__name__})") from None
        if status not in (200, 201):
            raise SinkFailed(f"answered {status}")


def sink_session(settings: Settings) -> tuple[aiohttp.ClientSession, FhirSink]:
    """The HTTP session (the caller closes it) and the sink ``audit_forward_url`` names:
    ``upstream`` is the upstream FHIR server with its credentials and TLS settings
    (``upstream_auth``, ``upstream_ca_file``, client certificate...); a URL is that FHIR base,
    with ``audit_forward_bearer_token`` if set and the system's trusted CAs."""
    target = settings.audit_forward_url
    if target is None:
        raise ValueError("audit_forward_url is not set")
    timeouts: dict[str, Any] = {
        "upstream_timeout_seconds": settings.audit_forward_timeout_seconds,
        "upstream_max_connections": 4,
    }
    if target == "upstream":
        assert settings.upstream_url is not None
        own = settings.model_copy(update=timeouts)
        session = create_session(own)
        return session, FhirSink(session, settings.upstream_url, credentials_for(own, session))
    headers: dict[str, str] = {}
    if settings.audit_forward_bearer_token is not None:
        token = settings.audit_forward_bearer_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"}
    own = settings.model_copy(
        update={
            **timeouts,
            "upstream_url": target,
            "upstream_verify_tls": True,
            "upstream_ca_file": None,
            "upstream_client_cert_file": None,
            "upstream_client_key_file": None,
        }
    )
    session = create_session(own)
    return session, FhirSink(session, target, StaticCredentials(headers))


def instance_name() -> str:
    """Who holds a lease: host, process and a random part (for the logs and the state)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Forwarder:
    """Sends every chain of ``audit_events`` to a sink: ``await start()``, ``await close()`` (or
    :func:`open_forwarder`); :meth:`run_once` is one round, for tests and tools."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        sink: Sink,
        *,
        metrics: Metrics | None = None,
        owner: str | None = None,
        batch_size: int = 100,
        poll_seconds: float = 1.0,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        lease_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = db[EVENTS]
        self._state = db[STATE]
        self._sink = sink
        self._metrics = metrics
        self.owner = owner or instance_name()
        self._batch = batch_size
        self._poll = poll_seconds
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._lease = lease_seconds
        self._clock = clock
        self._delay: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._backlogs: dict[str, int] = {}
        self.backlog: int | None = None
        """The backlog last counted (``None`` before the first round)."""

    # --- life cycle

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="audit-forwarder")

    async def close(self) -> None:
        """Stop, and give up this instance's leases so that another takes over at once."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        try:
            with pymongo.timeout(2.0):
                await self._state.update_many(
                    {"owner": self.owner}, {"$set": {"owner": None, "lease_until": 0.0}}
                )
        except PyMongoError as exc:  # the leases run out by themselves
            log.info("audit forwarding: leases not given up (%s)", type(exc).__name__)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except PyMongoError as exc:
                _reraise_cancellation()
                log.warning("audit forwarding waits for MongoDB (%s)", type(exc).__name__)
            except Exception:  # the forwarder must outlive any surprise
                _reraise_cancellation()
                log.exception("audit forwarding: a round failed")
            await asyncio.sleep(self._poll)

    # --- one round

    async def run_once(self) -> int:
        """Forward what each chain whose lease this instance holds (or takes) has waiting, as far
        as the sink takes it; count the backlog. The number of events sent."""
        chains = sorted(str(chain) for chain in await self._events.distinct("chain"))
        self._backlogs = {chain: self._backlogs.get(chain, 0) for chain in chains}
        sent = sum(await asyncio.gather(*(self._chain_round(chain) for chain in chains)))
        self._publish()
        return sent

    def _publish(self) -> None:
        """The gauge follows every count and every event taken, so that it is current even
        while the repository keeps a request waiting."""
        self.backlog = sum(self._backlogs.values())
        if self._metrics is not None:
            self._metrics.audit_forward_backlog.set(self.backlog)

    async def _chain_round(self, chain: str) -> int:
        state, ours = await self._claim(chain)
        forwarded = int(state.get("forwarded", 0)) if state else 0
        self._backlogs[chain] = await self._backlog(chain, forwarded)
        self._publish()
        if not ours or not self._backlogs[chain] or time.monotonic() < self._retry_at.get(chain, 0):
            return 0
        sent, forwarded = await self._send(chain, forwarded)
        self._backlogs[chain] = await self._backlog(chain, forwarded)
        self._publish()
        return sent

    async def _claim(self, chain: str) -> tuple[dict[str, Any] | None, bool]:
        """Take or renew the chain's lease: its state, and whether this instance holds it."""
        now = self._clock()
        try:
            state = await self._state.find_one_and_update(
                {"_id": chain, "$or": [{"owner": self.owner}, {"lease_until": {"$lt": now}}]},
                {
                    "$set": {"owner": self.owner, "lease_until": now + self._lease},
                    "$setOnInsert": {"forwarded": 0},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # another instance holds the lease
            return await self._state.find_one({"_id": chain}), False
        return state, True

    async def _send(self, chain: str, forwarded: int) -> tuple[int, int]:
        """Send the chain's next events in order until it is done, the sink fails, the lease is
        lost or the round's time is up: how many were sent, and how far the chain is sent."""
        sent = 0
        started = time.monotonic()
        while True:
            cursor = (
                self._events.find(
                    {"chain": chain, "seq": {"$gt": forwarded}}, {"event": 1, "seq": 1}
                )
                .sort("seq", 1)
                .limit(self._batch)
            )
            records = [record async for record in cursor]
            for index, record in enumerate(records):
                seq = int(record["seq"])
                if index > 0 and seq != forwarded + 1:
                    return sent, forwarded  # a gap: a write may still be landing; next round
                try:
                    await self._sink.put(record["event"])
                except SinkFailed as exc:
                    self._failed(chain, seq, str(exc))
                    return sent, forwarded
                sent += 1
                forwarded = seq
                self._backlogs[chain] = max(0, self._backlogs.get(chain, 0) - 1)
                self._publish()
                if self._metrics is not None:
                    self._metrics.audit_forwarded.inc()
                if not await self._advance(chain, seq):
                    log.info("audit forwarding: chain %s is forwarded by another instance", chain)
                    return sent, forwarded
            self._delay.pop(chain, None)
            self._retry_at.pop(chain, None)
            if len(records) < self._batch or time.monotonic() - started > _ROUND_SECONDS:
                return sent, forwarded

    async def _advance(self, chain: str, seq: int) -> bool:
        """Record that the chain is sent up to ``seq`` and renew the lease, if still held."""
        done = await self._state.update_one(
            {"_id": chain, "owner": self.owner},
            {"$max": {"forwarded": seq}, "$set": {"lease_until": self._clock() + self._lease}},
        )
        return done.matched_count == 1

    def _failed(self, chain: str, seq: int, reason: str) -> None:
        delay = min(self._delay.get(chain, self._backoff / 2) * 2, self._backoff_max)
        self._delay[chain] = delay
        self._retry_at[chain] = time.monotonic() + delay
        if self._metrics is not None:
            self._metrics.audit_forward_failures.inc()
        log.warning(
            "audit forwarding: chain %s position %d not taken by the audit repository (%s); "
            "retrying in %.1f s",
            chain,
            seq,
            reason,
            delay,
        )

    async def _backlog(self, chain: str, forwarded: int) -> int:
        """Records of the chain stored after ``forwarded`` (positions between the first and the
        last stored, so records removed by retention are not counted)."""
        last = await self._events.find_one({"chain": chain}, {"seq": 1}, sort=[("seq", -1)])
        if last is None or int(last["seq"]) <= forwarded:
            return 0
        first = await self._events.find_one({"chain": chain}, {"seq": 1}, sort=[("seq", 1)])
        start = max(forwarded, int(first["seq"]) - 1) if first is not None else forwarded
        return int(last["seq"]) - start


def _reraise_cancellation() -> None:
    """Where a loop catches ``Exception``: stop when this task is being cancelled (PyMongo can
    turn a cancellation that reaches it mid-operation into one of its own errors)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def open_forwarder(
    settings: Settings,
    db: AsyncDatabase[dict[str, Any]],
    metrics: Metrics | None = None,
    *,
    sink: Sink | None = None,
) -> AsyncIterator[Forwarder]:
    """The forwarder ``audit_forward_url`` describes, running until the block ends (for the
    application's cleanup context, entered only when the setting is set). ``sink`` replaces the
    one of the settings."""
    session: aiohttp.ClientSession | None = None
    if sink is None:
        session, sink = sink_session(settings)
    forwarder = Forwarder(
        db,
        sink,
        metrics=metrics,
        batch_size=settings.audit_forward_batch_size,
        poll_seconds=settings.audit_forward_poll_seconds,
        backoff_seconds=settings.audit_forward_backoff_seconds,
        backoff_max_seconds=settings.audit_forward_backoff_max_seconds,
        lease_seconds=settings.audit_forward_lease_seconds,
    )
    try:
        await forwarder.start()
        yield forwarder
    finally:
        try:
            await forwarder.close()
        finally:
            if session is not None:
                await session.close()
