"""Reading the audit log (AUDIT.md A-06, A-11, A-12): the collections, their indexes, and
:class:`AuditReader`, which the FHIR API's ``/fhir/AuditEvent``, the patient's "Who saw my data"
page and ``fhir-gateway audit export`` search with.

There is no update or delete here, nor anywhere a request can reach (A-06): records are only
inserted (:mod:`gateway.audit.log`) and, past the retention period, expired from the oldest end of
a chain (:mod:`gateway.audit.retention`).

Collections: ``audit_events`` (the records, :mod:`gateway.audit.chain`), ``audit_checkpoints``
(signed chain heads, :mod:`gateway.audit.checkpoints`) and ``audit_keys`` (the public keys that
signed them).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.chain import client_key
from gateway.audit.events import instant

EVENTS = "audit_events"
CHECKPOINTS = "audit_checkpoints"
KEYS = "audit_keys"

MAX_COUNT = 1000
_NEWEST_FIRST = [("recorded", DESCENDING), ("_id", DESCENDING)]


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    events = db[EVENTS]
    await events.create_index([("chain", ASCENDING), ("seq", ASCENDING)], unique=True)
    await events.create_index([("patients", ASCENDING), *_NEWEST_FIRST])
    await events.create_index([("agents", ASCENDING), *_NEWEST_FIRST])
    await events.create_index(_NEWEST_FIRST)
    await db[CHECKPOINTS].create_index([("chain", ASCENDING), ("seq", ASCENDING)], unique=True)


class InvalidCursor(ValueError):
    """A paging cursor this reader did not make."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A search of the audit log; every criterion given must hold (AND). Newest first."""

    patient: str | None = None
    """A bare Patient id: events with that patient entity."""
    patients: frozenset[str] | None = None
    """Events with a patient entity among these ids (what a patient-context token reaches; an
    empty set finds nothing). With :attr:`patient`, both must hold."""
    agent: str | None = None
    """An agent key: ``Practitioner/ID`` (a reference), ``urn:fhir-gateway:client|ID`` (an app;
    see :meth:`for_client`), ``ISSUER|sub`` or ``urn:fhir-gateway:user|ID`` (a user)."""
    since: datetime | None = None
    """Recorded at or after (aware datetime)."""
    until: datetime | None = None
    """Recorded before (aware datetime)."""
    subtype: str | None = None
    """A subtype code: ``read``, ``search-type``, ``110122`` (login)..."""
    subtype_system: str | None = None
    """With :attr:`subtype`: its code system too (``http://hl7.org/fhir/restful-interaction``,
    ``http://dicom.nema.org/resources/ontology/DCM``...)."""
    outcome: str | None = None
    """``0``, ``4``, ``8`` or ``12``."""
    action: str | None = None
    count: int = 50
    cursor: str | None = None
    """From :attr:`AuditPage.next`: the page after it."""

    @staticmethod
    def client(client_id: str) -> str:
        """The agent key of an app, for :attr:`agent`."""
        return client_key(client_id)


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[dict[str, Any]]
    """AuditEvent resources, newest first."""
    next: str | None
    """An opaque cursor for the next page, ``None`` on the last one."""


def _cursor(record: dict[str, Any]) -> str:
    raw = orjson.dumps([record["recorded"], record["_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> tuple[str, str]:
    try:
        recorded, record_id = orjson.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
    except (ValueError, TypeError):
        raise InvalidCursor("not a cursor of this audit log") from None
    if not (isinstance(recorded, str) and isinstance(record_id, str)):
        raise InvalidCursor("not a cursor of this audit log")
    return recorded, record_id


def _filter(query: AuditQuery) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if query.patient is not None:
        found["patients"] = query.patient
    if query.patients is not None:
        found["$and"] = [{"patients": {"$in": sorted(query.patients)}}]
    if query.agent is not None:
        found["agents"] = query.agent
    recorded: dict[str, str] = {}
    if query.since is not None:
        recorded["$gte"] = instant(query.since)
    if query.until is not None:
        recorded["$lt"] = instant(query.until)
    if recorded:
        found["recorded"] = recorded
    for name in ("subtype", "outcome", "action"):
        value = getattr(query, name)
        if value is not None:
            found[name] = str(value)
    if query.subtype_system is not None and query.subtype is not None:
        found["event.subtype"] = {
            "$elemMatch": {"system": query.subtype_system, "code": str(query.subtype)}
        }
    if query.cursor is not None:
        at, record_id = _after(query.cursor)
        found["$or"] = [{"recorded": {"$lt": at}}, {"recorded": at, "_id": {"$lt": record_id}}]
    return found


class AuditReader:
    """Searches AuditEvents (read-only)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._events = db[EVENTS]

    async def search(self, query: AuditQuery) -> AuditPage:
        count = max(1, min(query.count, MAX_COUNT))
        cursor = (
            self._events.find(_filter(query), {"event": 1, "recorded": 1})
            .sort(_NEWEST_FIRST)
            .limit(count + 1)
        )
        records = [record async for record in cursor]
        more = len(records) > count
        records = records[:count]
        return AuditPage(
            [record["event"] for record in records],
            _cursor(records[-1]) if more and records else None,
        )

    async def read(self, event_id: str) -> dict[str, Any] | None:
        record = await self._events.find_one({"_id": str(event_id)}, {"event": 1})
        return None if record is None else dict(record["event"])
