"""Application logging: every line carries the request id (also returned as ``X-Request-Id``).

Logs never contain tokens, passwords or resource content (P-14); the access log therefore writes
the path without its query string, which may hold patient identifiers.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without query, status, duration, request id."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms rid=%s',
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
            response.headers.get("X-Request-Id", "-"),
        )
