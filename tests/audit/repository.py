"""A stand-in audit repository for forwarding tests: a FHIR server on a loopback port that takes
``PUT /fhir/AuditEvent/{id}``, answers from a script of failures first, can hold requests open,
and remembers what it was sent, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy


@dataclass
class Repository:
    failures: list[int] = field(default_factory=list)
    """Statuses to answer, one per request, before taking anything."""
    hold: asyncio.Event | None = None
    """When set to an Event, requests wait for it before answering."""
    attempts: list[str] = field(default_factory=list)
    """Every id a PUT was tried for, in arrival order."""
    taken: list[str] = field(default_factory=list)
    """Ids taken (201), in the order first taken."""
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: list[CIMultiDictProxy[str]] = field(default_factory=list)
    waiting: int = 0
    base: str = ""

    async def put(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        self.attempts.append(event_id)
        self.headers.append(request.headers)
        if self.hold is not None:
            self.waiting += 1
            try:
                await self.hold.wait()
            finally:
                self.waiting -= 1
        if self.failures:
            status = self.failures.pop(0)
            outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
            return web.json_response(outcome, status=status)
        body = await request.json()
        assert body["resourceType"] == "AuditEvent" and body["id"] == event_id
        status = 200 if event_id in self.stored else 201
        if status == 201:
            self.taken.append(event_id)
        self.stored[event_id] = body
        return web.json_response(body, status=status, content_type="application/fhir+json")


@contextlib.asynccontextmanager
async def running_repository() -> AsyncIterator[Repository]:
    found = Repository()
    app = web.Application()
    app.router.add_put("/fhir/AuditEvent/{id}", found.put)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.base = str(server.make_url("/fhir"))
    try:
        yield found
    finally:
        if found.hold is not None:
            found.hold.set()
        await server.close()
