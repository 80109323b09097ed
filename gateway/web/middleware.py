"""The middlewares every request passes, outermost first (:func:`middlewares` builds them for one
application's settings and metrics):

1. ``request_context`` — a request id (in every log line; :func:`add_request_id` puts it on every
   response as ``X-Request-Id``) and the request metrics.
2. ``fhir_errors`` — the one place where a :class:`~gateway.web.errors.FhirError` (or aiohttp's own
   HTTP errors, or an unexpected exception) becomes an OperationOutcome response. Nothing else
   renders FHIR errors; no stack trace ever reaches the caller (P-14). A MongoDB failure that no
   step turned into a FHIR error (a timeout, an outage) is a 503: the gateway refuses rather than
   answer without its checks.
3. ``request_limits`` — URL length, header count and size, declared body size (P-12), and a
   body that stalls: while a request's body is still arriving, nothing new for
   ``body_idle_timeout_seconds`` makes every read of it fail with 408, and the connection closes
   after the answer (slow loris on the body; the head has its own timeout in
   :mod:`gateway.web.server`). Handlers read bodies when they need them (a token that may not
   write is refused unread), so the watch measures the client's progress, not the handler's.

With ``trusted_proxies`` set, ``forwarded`` comes first (:mod:`gateway.web.forwarded`). Two
``on_response_prepare`` signals finish every response: :func:`add_request_id` and
:func:`transport_headers`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from pymongo.errors import PyMongoError

from gateway.settings import Settings
from gateway.web.errors import (
    FhirError,
    HeadersTooLarge,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UriTooLong,
    error_for_status,
    error_response,
)
from gateway.web.forwarded import forwarded
from gateway.web.logs import request_id_var
from gateway.web.metrics import Metrics
from gateway.web.requestkeys import FORWARDED_HTTPS, METRIC_LABEL, REQUEST_ID

log = logging.getLogger(__name__)

HSTS = "max-age=31536000"
"""``Strict-Transport-Security`` on https responses: a year, this host only."""


def middlewares(settings: Settings, metrics: Metrics) -> list[Middleware]:
    """The middlewares of an application, outermost first (``forwarded`` only when there are
    trusted proxies)."""

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _request_context(request, handler, metrics)

    @web.middleware
    async def request_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        _check_limits(request, settings)
        if not request.body_exists:
            return await handler(request)
        watch = asyncio.create_task(_watch_body(request, settings.body_idle_timeout_seconds))
        try:
            return await handler(request)
        except RequestTimeout as exc:
            response = error_response(exc)
            response.force_close()  # the rest of the body will not come: no keep-alive
            return response
        finally:
            watch.cancel()

    chain: list[Middleware] = [request_context, fhir_errors, request_limits]
    return [forwarded(settings.trusted_proxies), *chain] if settings.trusted_proxies else chain


async def _request_context(
    request: web.Request, handler: Handler, metrics: Metrics
) -> web.StreamResponse:
    request_id = os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects raised by page handlers
        status = exc.status
        raise
    finally:
        label = request.get(METRIC_LABEL) or "other"
        metrics.observe_request(label, status, time.perf_counter() - started)
        request_id_var.reset(token)


@web.middleware
async def fhir_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FhirError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(error_for_status(exc.status, exc.reason))
    except PyMongoError as exc:  # slow or gone (timeoutMS, server selection): fail closed
        log.warning("the database did not answer: %s", type(exc).__name__)
        return error_response(
            ServiceUnavailable("the gateway cannot reach its database right now; try again")
        )
    except Exception:
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return error_response(
            InternalError(
                f"the gateway failed to handle this request (request id {request[REQUEST_ID]})"
            )
        )


async def _watch_body(request: web.Request, idle: float) -> None:
    """Until the body has arrived whole: when nothing of it came for ``idle`` seconds, every
    read of it fails with :class:`RequestTimeout` (the module's docstring)."""
    content = request.content
    seen = -1
    while not content.is_eof():
        if content.total_bytes == seen:
            log.info("a request body stalled for %.0f s; answering 408", idle)
            content.set_exception(RequestTimeout("the request body stopped arriving"))
            return
        seen = content.total_bytes
        await asyncio.sleep(idle)


def _check_limits(request: web.Request, settings: Settings) -> None:
    if len(request.raw_path) > settings.max_url_bytes:
        raise UriTooLong(f"the URL is longer than {settings.max_url_bytes} bytes")
    if len(request.raw_headers) > settings.max_header_count:
        raise HeadersTooLarge(f"the request has more than {settings.max_header_count} headers")
    if any(
        len(name) + len(value) > settings.max_header_bytes for name, value in request.raw_headers
    ):
        raise HeadersTooLarge(f"a request header is larger than {settings.max_header_bytes} bytes")
    declared = request.content_length
    if declared is not None and declared > settings.max_body_bytes:
        raise PayloadTooLarge(f"the request body is larger than {settings.max_body_bytes} bytes")


async def transport_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: no response names the server software (aiohttp sets
    ``Server`` to its own name and version); a response to an https request carries
    ``Strict-Transport-Security`` (P-01), whether the gateway terminated TLS or a trusted proxy
    did."""
    response.headers.popall(hdrs.SERVER, None)
    if request.secure or request.get(FORWARDED_HTTPS):
        response.headers.setdefault(hdrs.STRICT_TRANSPORT_SECURITY, HSTS)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: every response carries the request's id."""
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id
