"""Operational endpoints: ``/healthz`` (the process is up), ``/readyz`` (MongoDB and the upstream
answer), ``/metrics`` (Prometheus text format). Their answers never name internal hosts (P-14)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.appkeys import METRIC_LABEL, METRICS, MONGO, UPSTREAM

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


async def metrics(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "metrics"
    body = request.app[METRICS].render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
