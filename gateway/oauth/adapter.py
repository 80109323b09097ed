"""The one adapter between aiohttp and Authlib's synchronous server core.

Choice (documented as the design asks): Authlib's calls run in a small thread pool
(:data:`~gateway.appkeys.AUTH_THREADS`); the request is read fully first (query, form, headers) into
a :class:`~smart_auth.requests.PlainRequest`. The grant hooks do not work on pre-fetched data: when
Authlib asks for a client, a code or a refresh token, the hook hands the MongoDB coroutine to the
application's event loop through :class:`~smart_auth.requests.Bridge` and the worker thread waits
for it. The event loop never blocks, and every single-use check (code, refresh token, assertion
``jti``) is one atomic MongoDB update at the moment Authlib asks — no stale pre-fetched copy can let
a replay through.

Responses come back as :class:`~smart_auth.requests.AuthResponse` values and become aiohttp
responses here; OAuth errors are raised and rendered by :mod:`gateway.oauth.errors`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from authlib.oauth2.rfc6749 import InvalidRequestError

from gateway.appkeys import AUTH_THREADS, SETTINGS
from smart_auth.requests import AuthResponse, PlainRequest

T = TypeVar("T")

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def read_form(request: web.Request) -> list[tuple[str, str]]:
    """The form fields of a POST (``application/x-www-form-urlencoded`` only)."""
    if request.method != "POST":
        return []
    if request.content_type != FORM:
        raise InvalidRequestError(f"the request body must be {FORM}")
    data = await request.post()
    return [(key, value) for key, value in data.items() if isinstance(value, str)]


async def plain_request(request: web.Request) -> PlainRequest:
    """The request as Authlib sees it, its URI on the gateway's public base."""
    base = request.app[SETTINGS].public_base_url
    return PlainRequest(
        request.method,
        base + request.path_qs,
        dict(request.headers),
        list(request.query.items()),
        await read_form(request),
    )


def stored_request(base_url: str, params: dict[str, str]) -> PlainRequest:
    """An authorization request kept in a flow, replayed for Authlib when the user decides."""
    return PlainRequest("GET", f"{base_url}/auth/authorize", {}, list(params.items()))


async def call(request: web.Request, function: Callable[..., T], *args: Any) -> T:
    """Run a synchronous Authlib call in the worker pool (with the request's log context)."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        request.app[AUTH_THREADS], functools.partial(context.run, function, *args)
    )


def to_response(answer: AuthResponse) -> web.Response:
    headers = {name: value for name, value in answer.headers if name.lower() != "content-type"}
    if answer.status in (301, 302, 303, 307):
        return web.Response(status=answer.status, headers={**headers, **NO_STORE})
    body = answer.body if isinstance(answer.body, dict) else {}
    return web.Response(
        status=answer.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={**headers, **NO_STORE},
    )
