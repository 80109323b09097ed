"""``fhir-gateway exports list|cancel``: the bulk export jobs (``gateway.fhir.bulk``) as an
administrator sees them, and cancelling one (its files are deleted at once, as when the client
cancels it). Listing shows each job's client, level, state and progress, never patient ids;
cancelling is recorded in the audit log (P-09)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.audit import security
from gateway.audit.facts import Actor
from gateway.audit.log import AuditLog
from gateway.audit.security import AdminAction
from gateway.cache.cache import ResourceCache
from gateway.fhir.bulk.files import ExportFiles
from gateway.fhir.bulk.jobs import JobStore
from smart_auth.services import AuthServices


def describe(job: Mapping[str, Any]) -> str:
    """One line per job: id, client, level, state, progress, when."""
    tasks = job.get("tasks")
    done = int((job.get("cursor") or {}).get("task", 0))
    progress = "planning" if tasks is None else f"{done}/{len(tasks)} searches"
    exported = sum(int(n) for n in (job.get("exported") or {}).values())
    withheld = sum(int(n) for n in (job.get("withheld") or {}).values())
    created = job["created_at"].strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{job['_id']}\t{job['client_id']}\t{job['level']}\t{job['status']}\t{progress}\t"
        f"{exported} exported\t{withheld} withheld\t{created}"
    )


async def list_exports(services: AuthServices, limit: int = 100) -> list[str]:
    return [describe(job) for job in await JobStore(services.db).recent(limit)]


async def cancel_export(
    services: AuthServices, audit: AuditLog, cache: ResourceCache, job_id: str
) -> str | None:
    """Cancel a job and delete its files; the client it belonged to, or ``None`` when there was
    no such job (or it was cancelled already)."""
    before = await JobStore(services.db).cancel(job_id)
    if before is None:
        return None
    await ExportFiles(services.db, cache.keys).delete(str(before["_id"]))
    client_id = str(before["client_id"])
    await audit.record(
        [
            security.admin_action(
                audit.observer, Actor.cli(), AdminAction.EXPORT_CANCELLED, client_id=client_id
            )
        ]
    )
    return client_id
