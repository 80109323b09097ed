"""Cross-origin requests to the FHIR API (SMART.md S-07): a browser app may call the FHIR API only
from an origin its registration names. A preflight (``OPTIONS``, no token yet) is answered for an
origin some registered app names; the actual response carries ``Access-Control-Allow-Origin`` only
when the origin belongs to the app the token was issued to. ``metadata`` and the discovery
documents are open to any origin (answered elsewhere). Registrations change rarely: answers are
kept for a few seconds per instance.
"""

from __future__ import annotations

import time

from aiohttp import web
from pymongo.errors import PyMongoError

from smart_auth.clients import ClientStore

_TTL_SECONDS = 30.0
_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, If-Match, If-None-Match, If-None-Exist, Prefer"
)
_EXPOSE_HEADERS = "Location, ETag, Last-Modified, X-Request-Id"


class Cors:
    def __init__(self, clients: ClientStore) -> None:
        self._clients = clients
        self._answers: dict[tuple[str, str | None], tuple[bool, float]] = {}

    async def allowed(self, origin: str, client_id: str | None) -> bool:
        key = (origin, client_id)
        cached = self._answers.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            answer = await self._clients.origin_allowed(origin, client_id)
        except PyMongoError:
            return False  # no CORS headers rather than an error in place of the real answer
        if len(self._answers) > 10_000:
            self._answers.clear()
        self._answers[key] = (answer, time.monotonic() + _TTL_SECONDS)
        return answer

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        public = request.match_info.get("path", "") == "metadata"
        if not origin or not (public or await self.allowed(origin, None)):
            return web.Response(status=403, headers={"Vary": "Origin"})
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": _ALLOW_METHODS,
                "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    async def headers(self, request: web.Request, client_id: str | None) -> dict[str, str]:
        """The CORS headers for a response to this request, if its origin may read it."""
        origin = request.headers.get("Origin")
        if not origin or not await self.allowed(origin, client_id):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": _EXPOSE_HEADERS,
            "Vary": "Origin",
        }
