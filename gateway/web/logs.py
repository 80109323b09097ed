"""Application logging: every line carries the request id (also returned as ``X-Request-Id``).

Logs never contain tokens, passwords, resource content or patient identifiers (P-14). The access
log therefore writes a request's shape, not its path: no query string, a FHIR path by interaction
and type with ids as ``{id}`` (``/fhir/Patient/{id}/_history/{vid}``), a followed paging link as
``/fhir/_page``, and any other path as the route it matched (``/admin/consents/{consent_id}``).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

from gateway.web.requestkeys import LOG_PATH

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
    """One line per request: method, path shape (:func:`loggable_path`), status, duration,
    request id."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms rid=%s',
            request.remote,
            request.method,
            loggable_path(request),
            response.status,
            time * 1000,
            response.headers.get("X-Request-Id", "-"),
        )
