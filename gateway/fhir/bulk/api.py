"""The HTTP face of bulk export (FHIR Bulk Data Access IG v2.0): kick-off, status, cancel,
download. The pipeline hands these requests here after authenticating the token, applying the
client's rate limit and checking revocation (``Pipeline._handle``), and records each request's
AuditEvent as for any other request.

- ``GET [base]/$export``, ``GET [base]/Patient/$export``, ``GET [base]/Group/[id]/$export``: a
  checked kick-off (:mod:`gateway.fhir.bulk.params`) becomes a job (202, ``Content-Location``:
  the status URL); 429 with ``Retry-After`` while the client has an unfinished job.
- ``GET [base]/_export/[job]``: 202 with ``X-Progress`` and ``Retry-After`` while it runs; 200 with
  the manifest when done; 500 with an OperationOutcome when it failed.
- ``DELETE [base]/_export/[job]``: cancel (202); its files are deleted.
- ``GET [base]/_export/[job]/[Type].ndjson`` and ``.../errors.ndjson``: a file, decrypted, each
  line checked again against its patients' consents as they are now: a consent withdrawn after
  the job wrote a line withholds it from the download (C-12); a download is audited per patient
  like a search, with what of theirs it released.

A job, its status and its files are served only to tokens of the client that asked for it; to any
other the job does not exist (404).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.fhir.access import authorize
from gateway.fhir.bulk.files import ExportFiles
from gateway.fhir.bulk.jobs import ClientBusy, JobStore, Status
from gateway.fhir.bulk.params import Level, check_headers, parse_kickoff
from gateway.fhir.bulk.runner import REASONS, UPSTREAM_REASON, context_of
from gateway.fhir.consent_gate import ConsentGate
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Fetcher
from gateway.fhir.interaction import parse
from gateway.web.errors import InternalError, MethodNotAllowed, NotFound, TooManyRequests
from gateway.web.metrics import Metrics

NDJSON_MEDIA = "application/fhir+ndjson"
ERRORS_FILE = "errors"

_KICKOFF = re.compile(r"^(?:\$export|Patient/\$export|Group/([A-Za-z0-9\-.]{1,64})/\$export)$")
_JOB = re.compile(r"^_export/([0-9a-f]{32})(?:/([A-Za-z]{1,64})\.ndjson)?$")


def is_bulk_path(path: str) -> bool:
    """Whether a path under the FHIR base is one of bulk export's."""
    return bool(_KICKOFF.match(path) or _JOB.match(path) or path.startswith("_export"))


class BulkApi:
    """Kick-off, status, cancel and download (the module's docstring)."""

    def __init__(
        self,
        jobs: JobStore,
        files: ExportFiles,
        fetcher: Fetcher,
        consent: ConsentGate,
        metrics: Metrics,
        *,
        fhir_base: str,
        retry_after_seconds: int,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._fetcher = fetcher
        self._consent = consent
        self._metrics = metrics
        self._fhir_base = fhir_base
        self._retry_after = retry_after_seconds

    async def handle(
        self, context: AccessContext, request: web.Request, path: str
    ) -> web.StreamResponse:
        kickoff = _KICKOFF.match(path)
        if kickoff is not None:
            if request.method != "GET":
                raise MethodNotAllowed("a bulk export kick-off is a GET")
            return await self._kickoff(context, request, path, kickoff.group(1))
        found = _JOB.match(path)
        if found is None:
            raise NotFound("no such export for this client")
        job = await self._job(context, found.group(1))
        file = found.group(2)
        if file is not None:
            if request.method != "GET":
                raise MethodNotAllowed("an export file is read with GET")
            return await self._download(request, job, file)
        if request.method == "DELETE":
            return await self._cancel(job)
        if request.method != "GET":
            raise MethodNotAllowed("an export's status is read with GET, cancelled with DELETE")
        return await self._status(job)

    async def _job(self, context: AccessContext, job_id: str) -> dict[str, Any]:
        job = await self._jobs.get(job_id)
        if job is None or job.get("client_id") != context.client_id:
            raise NotFound("no such export for this client")
        expires = job.get("expires_at")
        if isinstance(expires, datetime) and expires <= datetime.now(UTC):
            raise NotFound("this export has expired; its files are deleted")
        if job.get("status") == Status.CANCELLED.value:
            raise NotFound("this export was cancelled")
        return job

    async def _kickoff(
        self, context: AccessContext, request: web.Request, path: str, group: str | None
    ) -> web.StreamResponse:
        check_headers(request.headers)
        level = Level.SYSTEM
        if group is not None:
            level = Level.GROUP
        elif path.startswith("Patient/"):
            level = Level.PATIENT
        export = parse_kickoff(context, level, request.query.items(), group)
        if group is not None:
            authorize(context, parse("GET", f"Group/{group}"))  # the token may read the Group
            if await self._fetcher.current("Group", group) is None:
                raise NotFound("no such Group")
        query = urlencode(list(request.query.items()))
        url = f"{self._fhir_base}/{path}" + (f"?{query}" if query else "")
        try:
            job = await self._jobs.create(context, export, url, path=path, query=query)
        except ClientBusy:
            raise TooManyRequests(
                "this client already has an export running: wait for it, or cancel it",
                retry_after=self._retry_after,
            ) from None
        self._metrics.export_jobs.labels("started").inc()
        return web.Response(
            status=202,
            headers={"Content-Location": f"{self._fhir_base}/_export/{job['_id']}"},
        )

    async def _status(self, job: Mapping[str, Any]) -> web.StreamResponse:
        status = job.get("status")
        if status == Status.FAILED.value:
            raise InternalError(f"the export failed: {job.get('error') or 'unknown error'}")
        if status != Status.DONE.value:
            return web.Response(
                status=202,
                headers={"X-Progress": _progress(job), "Retry-After": str(self._retry_after)},
            )
        return web.Response(
            body=orjson.dumps(await self._manifest(job)),
            content_type="application/json",
            headers={"Expires": job["expires_at"].strftime("%a, %d %b %Y %H:%M:%S GMT")},
        )

    async def _manifest(self, job: Mapping[str, Any]) -> dict[str, Any]:
        base = f"{self._fhir_base}/_export/{job['_id']}"
        files = await self._files.files(str(job["_id"]))
        output = [
            {"type": rtype, "url": f"{base}/{rtype}.ndjson", "count": count}
            for rtype, count in sorted(files.items())
        ]
        errors = [{"type": "OperationOutcome", "url": f"{base}/{ERRORS_FILE}.ndjson"}]
        return {
            "transactionTime": job["transaction_time"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "request": job["request"],
            "requiresAccessToken": True,
            "output": output,
            "error": errors if job.get("withheld") else [],
        }

    async def _cancel(self, job: Mapping[str, Any]) -> web.StreamResponse:
        if await self._jobs.cancel(str(job["_id"])) is None:
            raise NotFound("this export was cancelled")
        await self._files.delete(str(job["_id"]))
        self._metrics.export_jobs.labels("cancelled").inc()
        return web.Response(status=202)

    async def _download(
        self, request: web.Request, job: Mapping[str, Any], file: str
    ) -> web.StreamResponse:
        if job.get("status") != Status.DONE.value:
            raise NotFound("this export has no files yet")
        if file == ERRORS_FILE:
            return web.Response(body=_error_file(job), content_type=NDJSON_MEDIA)
        if file not in (job.get("exported") or {}):
            raise NotFound("this export has no such file")
        response = web.StreamResponse(headers={"Content-Type": NDJSON_MEDIA})
        await response.prepare(request)
        consent = await self._consent.start(context_of(job))  # consents as they are now (C-12)
        async for patients, chunk in self._files.read(str(job["_id"]), file):
            if patients:
                await self._consent.load(consent, patients)
                chunk = b"".join(
                    line + b"\n"
                    for line in chunk.splitlines()
                    if line and consent.still_permits(orjson.loads(line), patients)
                )
            await response.write(chunk)
        await response.write_eof()
        return response


def _progress(job: Mapping[str, Any]) -> str:
    tasks = job.get("tasks")
    if job.get("status") == Status.QUEUED.value or tasks is None:
        return "queued"
    done = int((job.get("cursor") or {}).get("task", 0))
    exported = sum(int(n) for n in (job.get("exported") or {}).values())
    return f"{done} of {len(tasks)} searches done, {exported} resources exported"


def _error_file(job: Mapping[str, Any]) -> bytes:
    """One OperationOutcome per reason resources were withheld, with its count (never which)."""
    lines = []
    for reason, count in sorted((job.get("withheld") or {}).items()):
        upstream = reason == UPSTREAM_REASON
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error" if upstream else "information",
                    "code": "exception" if upstream else "suppressed",
                    "details": {"text": reason},
                    "diagnostics": f"{count} withheld: {REASONS.get(reason, reason)}"
                    if not upstream
                    else f"{count} {REASONS[reason]}",
                }
            ],
        }
        lines.append(orjson.dumps(outcome) + b"\n")
    return b"".join(lines)
