"""Operational endpoints: ``/healthz`` (the process is up), ``/readyz`` (MongoDB and the upstream
answer), ``/metrics`` (Prometheus text format). Their answers never name internal hosts (P-14).

``/metrics`` reveals nothing to strangers (P-21): it is served only with the bearer token of the
``metrics_token`` setting (404 when none is set, 401 for a missing or wrong token), and its labels
carry interaction kinds and statuses, never patient, user or resource ids."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from gateway.appkeys import METRIC_LABEL, METRICS, MONGO, SETTINGS, UPSTREAM

_CHECK_TIMEOUT = 3.0


async def healthz(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "healthz"
    return web.json_response({"status": "ok"})


async def _mongo_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            await request.app[MONGO].admin.command("ping")
    except Exception:  # any failure means "not ready"; the reason is in the database's own logs
        return False
    return True


async def readyz(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "readyz"
    mongo, upstream = await asyncio.gather(
        _mongo_ok(request), request.app[UPSTREAM].ping(_CHECK_TIMEOUT)
    )
    checks = {
        "mongodb": "ok" if mongo else "unavailable",
        "upstream": "ok" if upstream else "unavailable",
    }
    ready = mongo and upstream
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


def _metrics_refusal(request: web.Request) -> web.Response | None:
    """A plain-text refusal unless the request carries the metrics token (P-21)."""
    configured = request.app[SETTINGS].metrics_token
    if configured is None:
        return web.Response(
            status=404, text="metrics are served only with a token: set metrics_token"
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = configured.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        return web.Response(
            status=401,
            text="send the metrics token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return None


async def metrics(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "metrics"
    refusal = _metrics_refusal(request)
    if refusal is not None:
        return refusal
    body = request.app[METRICS].render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
