"""Application logging: every line carries the request id (also returned as ``X-Request-Id``).

Logs never contain tokens, passwords, resource content or patient identifiers (P-14). The access
log therefore writes a request's shape, not its path: no query string, a FHIR path by interaction
and type with ids as ``{id}`` (``/fhir/Patient/{id}/_history/{vid}``), a followed paging link as
``/fhir/_page``, and any other path as the route it matched (``/admin/consents/{consent_id}``).
Whatever another library writes is passed through :class:`Redaction` as well: aiohttp's own
loggers (``aiohttp.server`` reports a malformed request with the request line, query and all) and
asyncio's, and every record that reaches the gateway's handler, its arguments and exception text
included.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

from gateway.web.requestkeys import CALLER, LOG_PATH

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


_REDACTIONS = (
    # a query string: a "?" followed by a parameter (name=...)
    (re.compile(r"\?[^\s\"'<>?=&]*=[^\s\"'<>]*"), "?[query removed]"),
    # the value of an Authorization, Proxy-Authorization, Cookie or Set-Cookie header, in a raw
    # header line, a dict or a keyword
    (
        re.compile(
            r"(?i)((?:proxy-)?authorization|(?:set-)?cookie)(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
            r"[^\r\n\"',}]+"
        ),
        r"\1\2[removed]",
    ),
    # a bearer token anywhere
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/-]+=*"), r"\1 [removed]"),
    # anything shaped like a JWT (JWS or JWE, compact form)
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9._-]*"), "[jwt removed]"),
)

REDACTED_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "asyncio",
)
"""Loggers of other libraries that can write what a request carried."""


def redact(text: str) -> str:
    """``text`` without query strings, bearer tokens, JWTs and credential header values."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class Redaction(logging.Filter):
    """Rewrites a record without what :func:`redact` removes: the message with its arguments
    merged in, the exception and stack text. Records are changed in place, so every handler
    after this filter sees the redacted record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):  # met on its logger, now at a handler
            return True
        record.redacted = True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what can be read of it
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), ()
        if record.exc_info:
            record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(level: str) -> None:
    """Log to standard error, every line with its request id and redacted (:class:`Redaction`),
    other libraries' loggers included."""
    redaction = Redaction()
    handler = logging.StreamHandler()
    handler.addFilter(redaction)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in REDACTED_LOGGERS:  # redacted for any handler, not only this one
        other = logging.getLogger(name)
        for old in [f for f in other.filters if isinstance(f, Redaction)]:
            other.removeFilter(old)
        other.addFilter(redaction)


def loggable_path(request: BaseRequest) -> str:
    """What the access log writes for ``request``'s path (the module's docstring): the shape its
    handler recorded, else the route it matched."""
    shape = request.get(LOG_PATH)
    if isinstance(shape, str):
        return shape
    if isinstance(request, Request):
        resource = request.match_info.route.resource
        if resource is not None:
            return resource.canonical
    return "{unmatched}"


class AccessLogger(AbstractAccessLogger):
    """One line per request: the caller's address (as a trusted proxy reported it, else the
    peer's), method, path shape (:func:`loggable_path`), status, duration, request id."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms rid=%s',
            request.get(CALLER) or request.remote,
            request.method,
            loggable_path(request),
            response.status,
            time * 1000,
            response.headers.get("X-Request-Id", "-"),
        )
