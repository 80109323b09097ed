"""Batch and transaction Bundles (FHIR R4 3.1.0.11 "Batch/Transaction"; SMART.md S-29).

A **batch** is answered entry by entry, each entry run through the whole pipeline as if it were a
request of its own (a failing entry answers its own OperationOutcome). At most ``max_batch_entries``
entries (413 above it), at most ``batch_concurrency`` of them at the upstream at a time; the token's
revocation is checked again before every entry, as consent is (a token revoked during a batch ends
it with 401), and a batch stops when its caller has gone. A **transaction** holds
writes only (reads in a transaction would reach the upstream un-narrowed: send them in a batch)
and is all-or-nothing: every entry passes the write policy first, one refusal refuses the whole
Bundle before anything is written, and the versions checked are pinned with ``ifMatch``. Its
checks yield to the event loop between entries, so a large transaction does not hold up other
requests, and revocation is checked again just before it is sent. What the
upstream answers is released entry by entry against the entry it answers; an answer that does not
line up with the request is not released at all (502).

An entry's URL is relative to the gateway's base (or the base itself, spelled out); it is parsed
exactly like a request's (:mod:`gateway.fhir.interaction`).
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from multidict import CIMultiDict

from gateway.fhir.access import AccessDecision, authorize
from gateway.fhir.bodies import check_resource_body
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.interaction import WRITE_KINDS, Kind, parse
from gateway.fhir.release import Release
from gateway.fhir.representation import REPRESENTATION_TYPES, Representation
from gateway.fhir.writes import WritePolicy
from gateway.proxy.answer import Answer
from gateway.web.errors import (
    FHIR_JSON,
    BadRequest,
    FhirError,
    PayloadTooLarge,
    Unauthorized,
    UpstreamUnavailable,
)

Run = Callable[[AccessContext, Call], Awaitable[Answer]]
"""The pipeline's steps 3 to 6 for one call."""
Revoked = Callable[[AccessContext], Awaitable[bool]]
"""Whether the token has been revoked since the request arrived."""
Alive = Callable[[], bool]
"""Whether the caller is still connected."""

_ENTRY_HEADERS = (("ifMatch", "If-Match"), ("ifNoneMatch", "If-None-Match"))
_BODY_KINDS = frozenset({Kind.CREATE, Kind.UPDATE, Kind.PATCH, Kind.OPERATION})


def entry_call(entry: Any, fhir_base: str) -> Call:
    """One entry of a batch or transaction, as a call (400 when it is not one)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise BadRequest("every entry needs a request")
    request = entry["request"]
    method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
    if url.startswith(fhir_base):
        url = url[len(fhir_base) :]
    parts = urlsplit(url.lstrip("/"))
    if parts.scheme or parts.netloc:
        raise BadRequest("an entry's URL must be relative to this server's base")
    interaction = parse(method, parts.path, parse_qsl(parts.query, keep_blank_values=True))
    if interaction.kind in (Kind.BATCH, Kind.TRANSACTION, Kind.PAGE):
        raise BadRequest("an entry cannot be a batch, a transaction or a paging link")
    resource = entry.get("resource")
    if interaction.kind in (Kind.CREATE, Kind.UPDATE):
        check_resource_body(interaction, resource)
    carries = interaction.kind in _BODY_KINDS and resource is not None
    headers: CIMultiDict[str] = CIMultiDict()
    for field_name, header in (*_ENTRY_HEADERS, ("ifNoneExist", "If-None-Exist")):
        if isinstance(request.get(field_name), str):
            headers[header] = request[field_name]
    return Call(
        interaction=interaction,
        body=resource,
        raw=orjson.dumps(resource) if carries else None,  # gateway URLs rewritten when sent
        media=FHIR_JSON if carries else None,
        headers=headers,
        self_url=f"{fhir_base}/{url.lstrip('/')}",
    )


def entry_response(answer: Answer) -> dict[str, Any]:
    """A batch-response entry for one entry's answer."""
    try:
        phrase = http.HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    response: dict[str, Any] = {"status": f"{answer.status} {phrase}".strip()}
    for header, field_name in (
        ("Location", "location"),
        ("ETag", "etag"),
        ("Last-Modified", "lastModified"),
    ):
        if header in answer.headers:
            response[field_name] = answer.headers[header]
    entry: dict[str, Any] = {"response": response}
    if answer.body is not None:
        if answer.status >= 400:
            response["outcome"] = answer.body
        else:
            entry["resource"] = answer.body
    return entry


class Bundles:
    """Runs batches and transactions."""

    def __init__(
        self,
        run: Run,
        writes: WritePolicy,
        fetcher: Fetcher,
        release: Release,
        representation: Representation,
        revoked: Revoked,
        *,
        fhir_base: str,
        max_entries: int,
        concurrency: int,
    ) -> None:
        self._run = run
        self._writes = writes
        self._fetcher = fetcher
        self._release = release
        self._representation = representation
        self._revoked = revoked
        self._fhir_base = fhir_base
        self._max_entries = max_entries
        self._concurrency = concurrency

    def _entries(self, call: Call) -> list[Any]:
        entries = call.body.get("entry") or []
        if len(entries) > self._max_entries:
            raise PayloadTooLarge(
                f"a batch or transaction here holds at most {self._max_entries} entries "
                f"(this one has {len(entries)}); send several"
            )
        return list(entries)

    async def batch(self, context: AccessContext, call: Call, alive: Alive) -> Answer:
        limiter = asyncio.Semaphore(self._concurrency)

        async def one(entry: Any) -> dict[str, Any]:
            async with limiter:
                if not alive():
                    raise asyncio.CancelledError  # the caller has gone: stop the work
                if await self._revoked(context):
                    raise Unauthorized("the access token has been revoked")
                try:
                    answer = await self._run(context, entry_call(entry, self._fhir_base))
                except FhirError as exc:
                    answer = Answer(exc.status, {}, exc.outcome())
                return entry_response(answer)

        tasks = [asyncio.ensure_future(one(entry)) for entry in self._entries(call)]
        try:
            done = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        bundle = {"resourceType": "Bundle", "type": "batch-response", "entry": list(done)}
        return Answer(200, {}, bundle)

    async def transaction(self, context: AccessContext, call: Call) -> Answer:
        decisions = await self._check(context, self._entries(call))
        if await self._revoked(context):
            raise Unauthorized("the access token has been revoked")
        raw = orjson.dumps(call.body)  # with the pinned versions; gateway URLs rewritten when sent
        answer = await self._fetcher.fetch(call.but(raw=raw))
        if answer.status < 300 and any(
            d.interaction.resource_type in REPRESENTATION_TYPES for d in decisions
        ):
            await self._representation.changed()
        if answer.status >= 400 or answer.body is None:
            return answer
        answered = answer.body.get("entry") or []
        if not isinstance(answered, list) or len(answered) != len(decisions):
            # Every entry answered must be checked against the entry it answers: an answer that
            # does not line up with the request is not released (it was written, though).
            raise UpstreamUnavailable(
                "the FHIR server's transaction response does not match the request entry by "
                "entry; the transaction was sent, but its answer cannot be checked"
            )
        for decision, entry in zip(decisions, answered, strict=True):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            released = await self._release.written(context, decision, Answer(200, {}, resource))
            if released.body is None:
                entry.pop("resource", None)
            else:
                entry["resource"] = released.body
        return answer

    async def _check(self, context: AccessContext, entries: list[Any]) -> list[AccessDecision]:
        """Every entry through the write policy before anything is sent; the first refusal
        refuses the Bundle, naming the entry."""
        decisions: list[AccessDecision] = []
        for index, entry in enumerate(entries):
            await asyncio.sleep(0)  # the checks are CPU work: let other requests through
            try:
                sub = entry_call(entry, self._fhir_base)
                if sub.interaction.kind not in WRITE_KINDS:
                    raise BadRequest(
                        "a transaction here holds writes only (create, update, patch, delete); "
                        "send reads in a batch"
                    )
                decision = authorize(context, sub.interaction)
                headers = await self._writes.check(context, decision, sub)
            except FhirError as exc:
                exc.diagnostics = f"entry {index + 1}: {exc.diagnostics}"
                raise
            if "If-Match" in headers:  # pin the version that was checked
                entry["request"]["ifMatch"] = headers["If-Match"]
            decisions.append(decision)
        return decisions
