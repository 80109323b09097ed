"""The application factory: ``create_app(settings)`` builds the aiohttp application used by
``fhir-gateway serve``, ``fhir-gateway demo`` and every test.

Each long-lived resource lives in its own cleanup context and cleans up only what it started: the
MongoDB client, the upstream ``ClientSession``, the authorization server's stores, the FHIR
pipeline (with its own small session for external issuers' JWKS) and, when ``audit_forward_url``
is set, the forwarder of the audit log (with its own session to the audit repository).

The secrets kept in MongoDB are sealed by a key provider (P-19): the one of the configured
key-encryption key, or one passed in (a KMS, say). Without either the application is not built.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import AsyncMongoClient

from consent.store import ConsentStore
from gateway.appkeys import (
    AUTH,
    CLOCK,
    EPOCHS,
    KEY_PROVIDER,
    METRICS,
    MONGO,
    PIPELINE,
    REPRESENTATION,
    REWRITER,
    SETTINGS,
    UPSTREAM,
)
from gateway.audit.forward import open_forwarder
from gateway.audit.store import AuditReader
from gateway.fhir.audit_api import AuditApi
from gateway.fhir.authenticate import Authenticator
from gateway.fhir.consent_api import ConsentApi
from gateway.fhir.consent_gate import ConsentGate
from gateway.fhir.fetch import Fetcher
from gateway.fhir.interaction import path_shape
from gateway.fhir.paging import PageSealer, load_secret
from gateway.fhir.pipeline import Pipeline
from gateway.fhir.ratelimit import ClusterRateLimit
from gateway.fhir.release import Release
from gateway.fhir.writes import WritePolicy
from gateway.oauth import setup_authserver
from gateway.proxy.jwks import http_jwks_fetcher
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import Upstream, create_session
from gateway.settings import Settings, SettingsError, load_key_provider
from gateway.web.cors import Cors
from gateway.web.health import CHECK_TIMEOUT, Health
from gateway.web.logs import AccessLogger
from gateway.web.metrics import Metrics
from gateway.web.middleware import add_request_id, middlewares
from gateway.web.requestkeys import LOG_PATH
from smart_auth.clock import Clock, system_clock
from smart_auth.key_provider import KeyProvider


def runner_options(settings: Settings) -> dict[str, Any]:
    """Options for ``web.AppRunner``/``TestServer``. The HTTP parser's own limits sit well above the
    gateway's, so that an oversized URL or header set reaches ``request_limits`` and gets a FHIR
    answer (414/431) instead of the parser's bare 400."""
    return {
        "max_line_size": max(65536, settings.max_url_bytes * 4),
        "max_field_size": max(65536, settings.max_header_bytes * 4),
        "max_headers": max(1024, settings.max_header_count * 4),
        "access_log_class": AccessLogger,
    }


async def _mongo_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    app[MONGO] = client
    try:
        yield
    finally:
        await client.close()


async def _upstream_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = create_session(settings)
    app[UPSTREAM] = Upstream(session, settings)
    try:
        yield
    finally:
        await session.close()


async def _pipeline_context(app: web.Application) -> AsyncIterator[None]:
    """The FHIR pipeline: token validation against the key ring and any external issuers (with
    their own small HTTP session for fetching JWKS), and the shared paging secret."""
    settings = app[SETTINGS]
    auth = app[AUTH]
    db = app[MONGO][settings.mongodb_database]
    epochs = app[EPOCHS]
    configured = settings.paging_secret.get_secret_value() if settings.paging_secret else None
    secret = await load_secret(db, configured, app[KEY_PROVIDER])
    consents = ConsentStore(db)
    await consents.ensure_indexes()
    jwks_http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    authenticator = Authenticator(
        issuer=settings.public_base_url,
        audience=settings.fhir_base_url,
        own_jwks=auth.keys.public_jwks,
        revocations=auth.revocations,
        epochs=epochs,
        external=settings.external_issuers,
        fetch_jwks=http_jwks_fetcher(jwks_http),
        jwks_refresh_min_seconds=settings.jwks_refresh_min_seconds,
        jwks_max_cache_seconds=settings.client_jwks_max_cache_seconds,
    )
    rate_limit = ClusterRateLimit(db, settings.rate_limit_per_client)
    await rate_limit.ensure_indexes()
    fetcher = Fetcher(app[UPSTREAM], app[REWRITER], app[METRICS])
    gate = ConsentGate(consents, auth.clients, epochs)
    pages = PageSealer(secret, settings.page_link_lifetime_seconds)
    app[PIPELINE] = Pipeline(
        settings,
        authenticator=authenticator,
        representation=app[REPRESENTATION],
        fetcher=fetcher,
        consent=gate,
        consents=ConsentApi(consents, auth.revoker, auth.clients, settings.fhir_base_url),
        audit_events=AuditApi(
            AuditReader(db),
            auth.clients,
            paging_secret=secret,
            page_lifetime_seconds=settings.page_link_lifetime_seconds,
            fhir_base=settings.fhir_base_url,
        ),
        pages=pages,
        release=Release(fetcher, gate, pages, app[REWRITER], settings.fhir_base_url),
        writes=WritePolicy(fetcher, gate),
        cors=Cors(auth.clients),
        rate_limit=rate_limit,
    )
    try:
        yield
    finally:
        await jwks_http.close()


async def _audit_forward_context(app: web.Application) -> AsyncIterator[None]:
    """Forwarding the audit log to an audit repository (``audit_forward_url``), in the
    background: requests never wait for it."""
    settings = app[SETTINGS]
    db = app[MONGO][settings.mongodb_database]
    async with open_forwarder(settings, db, app[METRICS]):
        yield


def create_app(
    settings: Settings, *, key_provider: KeyProvider | None = None, clock: Clock = system_clock
) -> web.Application:
    """Build the gateway for these settings; ``key_provider`` replaces the one of the configured
    key-encryption key; ``clock`` the system's time for the authorization server's stores (tests
    move it forward instead of sleeping)."""
    if settings.upstream_url is None:
        raise SettingsError("FHIR_GATEWAY_UPSTREAM_URL (TOML key 'upstream_url') is required")
    if settings.mongodb_uri is None:
        raise SettingsError(
            "FHIR_GATEWAY_MONGODB_URI or MONGODB_URI (TOML key 'mongodb_uri') is required; "
            "'fhir-gateway demo' starts an embedded database for trying the gateway out"
        )
    metrics = Metrics()
    app = web.Application(
        middlewares=middlewares(settings, metrics), client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[KEY_PROVIDER] = key_provider or load_key_provider(settings)
    app[CLOCK] = clock
    app[METRICS] = metrics
    app[REWRITER] = UrlRewriter(
        [settings.upstream_url, *settings.upstream_aliases], settings.fhir_base_url
    )
    app.cleanup_ctx.append(_mongo_context)
    app.cleanup_ctx.append(_upstream_context)
    app.on_response_prepare.append(add_request_id)

    async def mongo_answers() -> bool:
        await app[MONGO].admin.command("ping")
        return True

    async def upstream_answers() -> bool:
        return await app[UPSTREAM].ping(CHECK_TIMEOUT)

    checks = {"mongodb": mongo_answers, "upstream": upstream_answers}
    Health(checks, metrics, settings.metrics_token).add_routes(app)
    setup_authserver(app)  # before the catch-all /fhir route: it serves /fhir/.well-known/...
    app.cleanup_ctx.append(_pipeline_context)  # after the authorization server's (key ring)
    if settings.audit_forward_url is not None:
        app.cleanup_ctx.append(_audit_forward_context)
    app.router.add_route("*", "/fhir", _handle_fhir)
    app.router.add_route("*", "/fhir/{path:.*}", _handle_fhir)
    return app


async def _handle_fhir(request: web.Request) -> web.StreamResponse:
    """Every FHIR REST interaction under ``/fhir``."""
    request[LOG_PATH] = path_shape(request.path)
    return await request.app[PIPELINE].handle(request)
