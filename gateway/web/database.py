"""Failing fast while MongoDB is out of reach.

The MongoDB client bounds every operation by ``mongodb_timeout_seconds`` (PyMongo's ``timeoutMS``).
With that bound set, PyMongo waits for a reachable server for as long as the operation may take and
does not apply ``serverSelectionTimeoutMS``; during an outage every request would wait the whole
operation timeout for its 503. So while the driver knows of no server it can use (its monitor sees
the loss at once when the server closes its connections, later when a network drops them
silently), a request first waits at most ``mongodb_server_selection_timeout_seconds`` for one, then
fails closed: the PyMongo error it gets is rendered as a 503 by the error middleware of its area
(FHIR or authorization server).

The operational endpoints (``/healthz``, ``/readyz`` with its own bounded check, ``/metrics``) and
the public CapabilityStatement do not need the database and are not held back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pymongo
from aiohttp import web
from aiohttp.typedefs import Handler
from pymongo import AsyncMongoClient

_UNGATED = frozenset({"/healthz", "/readyz", "/metrics", "/fhir/metadata"})

ClientSource = Callable[[], "AsyncMongoClient[dict[str, Any]] | None"]


class DatabaseGate:
    """The middleware that holds a request back (briefly) while MongoDB is unreachable."""

    def __init__(self, client: ClientSource, selection_timeout: float) -> None:
        self._client = client
        self._timeout = selection_timeout

    async def wait(self) -> None:
        """Return at once while a server is known to be usable; otherwise wait for one at most
        the selection timeout, raising PyMongo's ``ServerSelectionTimeoutError`` after it."""
        client = self._client()
        if client is None or client.topology_description.has_writable_server():
            return
        with pymongo.timeout(self._timeout):
            await client.admin.command("ping")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _UNGATED:
            await self.wait()
        return await handler(request)
