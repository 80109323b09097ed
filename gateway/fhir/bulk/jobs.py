"""Bulk export jobs in MongoDB (DESIGN.md "Storage"; FHIR Bulk Data Access IG v2.0): one document
per kick-off, which any gateway instance may run while it holds the job's lease, and which records
where the job stands so that another instance resumes it after a stop::

    {"_id": <random job id>, "client_id": ..., "active_client": <client_id while not finished>,
     "token": {issuer, subject, jti, grant_id, fhir_user, purposes, scopes},  # system/ scopes
     "request": <the kick-off URL>, "path": ..., "query": ...,   # the last two for the audit
     "level": "system" | "patient" | "group", "group": <id>,
     "types": [...], "since": ..., "type_filters": [[type, [[name, value], ...]], ...],
     "transaction_time": ..., "status": "queued" | "running" | "done" | "failed" | "cancelled",
     "lease_owner": <instance>, "lease_until": ...,
     "tasks": [{"type": ..., "params": [[name, value], ...], "patient": <id> | null}, ...] | null,
     "cursor": {"task": <index>, "link": <upstream link relative to its base> | null, "seq": <n>},
     "exported": {<type>: n}, "withheld": {<reason>: n}, "patients": [[id, count, [types]], ...],
     "error": <why it failed>, "failures": <runs a dependency stopped>,
     "created_at": ..., "finished_at": ..., "expires_at": ...}

``active_client`` carries a unique sparse index: at most one unfinished job per client, across
instances (the kick-off answers 429 otherwise). The cursor moves only after the chunks of a page
are written, in the same update that counts them, and only while the lease is held: a page is
written at most once, and chunks of a page whose cursor update never landed (numbered from
``cursor.seq`` on) are removed when the job is next claimed. A TTL index removes a finished job
at ``expires_at``. Inputs that reach queries are ids this module made, or typed values (P-13).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from gateway.fhir.bulk.params import ExportRequest
from gateway.fhir.context import AccessContext
from smart_auth.clock import Clock, system_clock

COLLECTION = "export_jobs"


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


class ClientBusy(Exception):
    """The client already has an unfinished job."""


@dataclass(frozen=True, slots=True)
class Cursor:
    task: int = 0
    link: str | None = None
    seq: int = 0


def new_job_id() -> str:
    return os.urandom(16).hex()


class JobStore:
    """The jobs collection: ``JobStore(db)``, then ``ensure_indexes()``."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], clock: Clock = system_clock) -> None:
        self._jobs = db[COLLECTION]
        self._clock = clock

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index("active_client", unique=True, sparse=True)
        await self._jobs.create_index([("status", 1), ("lease_until", 1)])
        await self._jobs.create_index("expires_at", expireAfterSeconds=0)

    async def create(
        self,
        context: AccessContext,
        export: ExportRequest,
        request_url: str,
        *,
        path: str,
        query: str,
    ) -> dict[str, Any]:
        """A queued job for this kick-off; :class:`ClientBusy` when the client has one."""
        now = self._clock()
        doc: dict[str, Any] = {
            "_id": new_job_id(),
            "client_id": context.client_id,
            "active_client": context.client_id,
            "token": {
                "issuer": context.issuer,
                "subject": context.subject,
                "jti": context.jti,
                "grant_id": context.grant_id,
                "fhir_user": context.fhir_user,
                "purposes": list(context.purposes),
                "scopes": str(context.scopes),
            },
            "request": request_url,
            "path": path,
            "query": query,
            "level": export.level.value,
            "group": export.group,
            "types": list(export.types),
            "since": export.since,
            "type_filters": [[t, [list(p) for p in ps]] for t, ps in export.type_filters],
            "transaction_time": now,
            "status": Status.QUEUED.value,
            "lease_until": now,
            "tasks": None,
            "cursor": {"task": 0, "link": None, "seq": 0},
            "exported": {},
            "withheld": {},
            "patients": [],
            "created_at": now,
        }
        try:
            await self._jobs.insert_one(doc)
        except DuplicateKeyError:
            raise ClientBusy(context.client_id) from None
        return doc

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self._jobs.find_one({"_id": str(job_id)})

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        cursor = self._jobs.find({}, sort=[("created_at", -1)], limit=limit)
        return [doc async for doc in cursor]

    async def claim(self, owner: str, lease: timedelta) -> dict[str, Any] | None:
        """An unfinished job whose lease has run out, now leased to ``owner``."""
        now = self._clock()
        return await self._jobs.find_one_and_update(
            {"status": {"$in": list(UNFINISHED)}, "lease_until": {"$lte": now}},
            {
                "$set": {
                    "status": Status.RUNNING.value,
                    "lease_owner": owner,
                    "lease_until": now + lease,
                }
            },
            sort=[("lease_until", 1)],
            return_document=ReturnDocument.AFTER,
        )

    async def set_tasks(
        self, job_id: str, owner: str, tasks: Sequence[Mapping[str, Any]], lease: timedelta
    ) -> bool:
        result = await self._jobs.update_one(
            {"_id": job_id, "lease_owner": owner, "status": Status.RUNNING.value},
            {"$set": {"tasks": list(tasks), "lease_until": self._clock() + lease}},
        )
        return result.modified_count == 1

    async def advance(
        self,
        job_id: str,
        owner: str,
        cursor: Cursor,
        *,
        exported: Mapping[str, int],
        withheld: Mapping[str, int],
        patients: list[list[Any]],
        lease: timedelta,
    ) -> bool:
        """Move the cursor past a page whose chunks are written, and renew the lease; ``False``
        when this instance no longer holds the job (cancelled, or taken over)."""
        inc = {f"exported.{t}": n for t, n in exported.items() if n}
        inc |= {f"withheld.{r}": n for r, n in withheld.items() if n}
        update: dict[str, Any] = {
            "$set": {
                "cursor": {"task": cursor.task, "link": cursor.link, "seq": cursor.seq},
                "patients": patients,
                "lease_until": self._clock() + lease,
            }
        }
        if inc:
            update["$inc"] = inc
        result = await self._jobs.update_one(
            {"_id": job_id, "lease_owner": owner, "status": Status.RUNNING.value}, update
        )
        return result.modified_count == 1

    async def finish(
        self, job_id: str, owner: str, status: Status, keep: timedelta, error: str | None = None
    ) -> bool:
        now = self._clock()
        fields: dict[str, Any] = {"status": status.value, "finished_at": now}
        fields["expires_at"] = now + keep
        if error is not None:
            fields["error"] = error
        result = await self._jobs.update_one(
            {"_id": job_id, "lease_owner": owner, "status": Status.RUNNING.value},
            {"$set": fields, "$unset": {"active_client": ""}},
        )
        return result.modified_count == 1

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Mark an unfinished or finished job cancelled (its files are deleted by the caller);
        the job before, or ``None`` when there was none to cancel."""
        now = self._clock()
        return await self._jobs.find_one_and_update(
            {"_id": str(job_id), "status": {"$ne": Status.CANCELLED.value}},
            {
                "$set": {
                    "status": Status.CANCELLED.value,
                    "finished_at": now,
                    "expires_at": now + timedelta(hours=1),
                },
                "$unset": {"active_client": ""},
            },
        )

    async def note_failure(self, job_id: str) -> int:
        """Count a run of the job that a dependency stopped; how many there have been."""
        doc = await self._jobs.find_one_and_update(
            {"_id": job_id},
            {"$inc": {"failures": 1}},
            projection={"failures": 1},
            return_document=ReturnDocument.AFTER,
        )
        return 0 if doc is None else int(doc.get("failures", 0))

    async def status_of(self, job_id: str) -> str | None:
        doc = await self._jobs.find_one({"_id": job_id}, projection={"status": 1})
        return None if doc is None else str(doc["status"])
