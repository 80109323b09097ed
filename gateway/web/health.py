"""Operational endpoints: ``/healthz`` (the process is up), ``/readyz`` (MongoDB and the upstream
answer), ``/metrics`` (Prometheus text format). Their answers never name internal hosts (P-14).

``/metrics`` reveals nothing to strangers (P-21): it is served only with the bearer token of the
``metrics_token`` setting (404 when none is set, 401 for a missing or wrong token), and its labels
carry interaction kinds and statuses, never patient, user or resource ids."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from gateway.web.metrics import Metrics
from gateway.web.requestkeys import METRIC_LABEL

CHECK_TIMEOUT = 3.0

Check = Callable[[], Awaitable[bool]]
"""A readiness check: does the dependency answer? (Bounded by ``CHECK_TIMEOUT`` seconds.)"""


@dataclass(frozen=True, slots=True)
class Health:
    """The operational endpoints of one application: its readiness checks by name (MongoDB, the
    upstream), its metrics and the token that guards them."""

    checks: Mapping[str, Check]
    metrics: Metrics
    metrics_token: SecretStr | None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.render_metrics)

    async def healthz(self, request: web.Request) -> web.Response:
        request[METRIC_LABEL] = "healthz"
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        request[METRIC_LABEL] = "readyz"
        names = list(self.checks)
        results = await asyncio.gather(*(_ok(self.checks[name]) for name in names))
        checks = {
            name: "ok" if ok else "unavailable" for name, ok in zip(names, results, strict=True)
        }
        ready = all(results)
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def render_metrics(self, request: web.Request) -> web.Response:
        request[METRIC_LABEL] = "metrics"
        refusal = self._metrics_refusal(request)
        if refusal is not None:
            return refusal
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def _metrics_refusal(self, request: web.Request) -> web.Response | None:
        """A plain-text refusal unless the request carries the metrics token (P-21)."""
        if self.metrics_token is None:
            return web.Response(
                status=404, text="metrics are served only with a token: set metrics_token"
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = self.metrics_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            return web.Response(
                status=401,
                text="send the metrics token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return None


async def _ok(check: Check) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await check()
    except Exception:  # any failure means "not ready"; the reason is in the dependency's logs
        return False
