"""The HTTP server under the application: aiohttp's, with what aiohttp does not do by itself.

- A request's head (request line and headers) must arrive complete within
  ``header_read_timeout_seconds`` of its first byte; a client that trickles it (slow loris) is
  disconnected. Left alone, aiohttp waits for its keep-alive time (75 s) before closing it.
- A request that aiohttp's HTTP parser refuses — a malformed request line, a line or a header set
  past the parser's own limits — gets an OperationOutcome like every other refusal: 414 for a
  request line too long, 431 for headers, 400 for the rest. aiohttp's own answer is plain text that
  repeats the request line (an access token in the query included) and its log line carries the
  same; here neither the answer nor the log says more than what was wrong (P-14).
- No response names the server software: aiohttp adds ``Server: Python/x aiohttp/y`` to every
  response; the application removes it (:func:`gateway.web.middleware.transport_headers`) and so
  do the answers above.
- TLS when the settings name a certificate (:func:`tls_context`, P-01).

:class:`GatewayRunner` is ``web.AppRunner`` with the first three; ``fhir-gateway serve`` and the
test suite run the application with it (:func:`make_runner`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.settings import Settings
from gateway.web.errors import (
    FHIR_JSON,
    BadRequest,
    FhirError,
    HeadersTooLarge,
    UriTooLong,
    error_for_status,
)
from gateway.web.logs import AccessLogger

log = logging.getLogger(__name__)

# Mozilla's "intermediate" TLS 1.2 suites without finite-field Diffie-Hellman: forward secrecy and
# AEAD only. TLS 1.3 suites are OpenSSL's own (all of them modern).
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


def parser_limits(settings: Settings) -> dict[str, int]:
    """aiohttp's parser limits: well above the gateway's own, so that an oversized URL or header
    set ordinarily meets ``request_limits`` (with its precise answer); what even the parser refuses
    still gets an OperationOutcome (:class:`_Connection`)."""
    return {
        "max_line_size": max(65536, settings.max_url_bytes * 4),
        "max_field_size": max(65536, settings.max_header_bytes * 4),
        "max_headers": max(1024, settings.max_header_count * 4),
    }


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context when ``tls_cert_file`` and ``tls_key_file`` are set: TLS 1.2 or
    newer, forward-secret AEAD suites only, no renegotiation, no compression."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return context


KEEPALIVE_SECONDS = 75.0
"""How long an idle keep-alive connection stays open (aiohttp's ``run_app`` default)."""


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> GatewayRunner:
    """The runner for ``app`` with the gateway's access log, parser limits, keep-alive time and
    head timeout."""
    options: dict[str, Any] = {
        "access_log_class": AccessLogger,
        "keepalive_timeout": KEEPALIVE_SECONDS,
        **parser_limits(settings),
    }
    return GatewayRunner(
        app, head_timeout=settings.header_read_timeout_seconds, **{**options, **kwargs}
    )


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are :class:`_Connection`."""

    def __init__(self, app: web.Application, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout = head_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the application
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            head_timeout=self._head_timeout,
            loop=asyncio.get_running_loop(),
            **self._kwargs,
        )


class _Server(web.Server):
    """aiohttp's server for the application, making :class:`_Connection` protocols."""

    def __init__(self, handler: Any, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._head_timeout = head_timeout

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, head_timeout=self._head_timeout, **self._kwargs)


class _Anonymous(web.Response):
    """A response without the ``Server`` header aiohttp gives every response. The application's
    responses lose it in ``on_response_prepare``; this one is written without the application
    (aiohttp sets the header's default just before the point where it is removed here)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


class _Connection(RequestHandler):
    """One client connection: aiohttp's, with a deadline on each request head and FHIR answers to
    what the parser refuses.

    A head starts with the first byte that arrives while no request is queued or being handled,
    and ends when the parser has read it (aiohttp counts it). Bytes arriving while a request is
    handled are its body. The length of the head's first line tells a request line too long (414)
    from a header too long (431) when the parser refuses a line.

    aiohttp offers no hook for either, so this subclass reads three of ``RequestHandler``'s own
    attributes (``_request_count``, ``_messages``, ``_request_in_progress``) and overrides its
    ``handle_error``; ``tests/gateway/web/test_server.py`` pins the behaviour across aiohttp
    versions.
    """

    __slots__ = ("_head_first_line", "_head_line_done", "_head_timeout", "_head_timer")

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_first_line = 0
        self._head_line_done = False

    def data_received(self, data: bytes) -> None:
        if data and self._head_timer is None and self._between_requests():
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_too_slow)
            self._head_first_line = 0
            self._head_line_done = False
        if self._head_timer is not None and not self._head_line_done:
            end = data.find(b"\n")
            self._head_line_done = end >= 0
            self._head_first_line += end if end >= 0 else len(data)
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # the head arrived (or the parser refused it)
            self._stop_head_timer()

    def _between_requests(self) -> bool:
        """No request is queued or being handled: what arrives now starts a head."""
        return not self._messages and not self._request_in_progress

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        log.info("closed a connection whose request head took over %s s", self._head_timeout)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request the parser refused (or, past every middleware, one that failed):
        an OperationOutcome that does not repeat the request, logged without it."""
        if request.writer.output_size > 0:  # as aiohttp: a response is under way, cannot answer
            raise ConnectionError("the response is under way; no error answer can follow it")
        if isinstance(exc, HttpProcessingError) and status == 400:
            error = self._refusal(exc)
            log.info("refused a request the HTTP parser cannot accept: %s", error.diagnostics)
        else:
            error = error_for_status(status, "the gateway failed to handle this request")
            log.error("a request failed outside the application's middlewares", exc_info=exc)
        response = _Anonymous(
            status=error.status,
            body=orjson.dumps(error.outcome()),
            headers=error.headers,
            content_type=FHIR_JSON,
            charset="utf-8",
        )
        response.force_close()
        return response

    def _refusal(self, exc: HttpProcessingError) -> FhirError:
        if isinstance(exc, LineTooLong):
            if self._head_first_line > self.max_line_size:
                return UriTooLong("the request line is longer than this server accepts")
            return HeadersTooLarge("a request header is larger than this server accepts")
        if "Too many headers" in exc.message:
            return HeadersTooLarge("the request has more headers than this server accepts")
        return BadRequest("the request is not valid HTTP/1.1")
