"""The application factory: ``create_app(settings)`` builds the aiohttp application used by
``fhir-gateway serve``, ``fhir-gateway demo`` and every test.

Each long-lived resource lives in its own cleanup context and cleans up only what it started: the
MongoDB client, the upstream ``ClientSession``, the authorization server's stores, the encrypted
cache, the audit log, the FHIR pipeline (with its own small session for external issuers' JWKS)
the bulk export jobs' runner (unless ``export_enabled`` is off) and, when ``audit_forward_url``
is set, the forwarder of the audit log (with its own session to
the audit repository). With ``cache_enabled`` the pipeline's fetcher is the caching one; the cache
itself is opened either way, so that a withdrawal or an erasure still purges and shreds what an
earlier run cached.

The secrets kept in MongoDB are sealed by a key provider (P-19): the one of the configured
key-encryption key, or one passed in (a KMS, say). Without either the application is not built.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pymongo
from aiohttp import web
from pymongo import AsyncMongoClient

from consent.store import ConsentStore
from gateway.account import setup_account
from gateway.appkeys import (
    AUDIT,
    AUTH,
    CACHE,
    CLOCK,
    CONSENTS,
    DATABASE_GATE,
    EPOCHS,
    EXPORTER,
    KEY_PROVIDER,
    METRICS,
    MONGO,
    PIPELINE,
    REPRESENTATION,
    REWRITER,
    SETTINGS,
    UPSTREAM,
)
from gateway.audit.acts import consent_written, grants_revoked
from gateway.audit.forward import open_forwarder
from gateway.audit.runtime import open_audit
from gateway.audit.store import AuditReader
from gateway.audit.tasks import cancel_and_wait
from gateway.cache.cache import CacheLimits, ResourceCache
from gateway.fhir.audit_api import AuditApi
from gateway.fhir.authenticate import Authenticator
from gateway.fhir.bulk.api import BulkApi
from gateway.fhir.bulk.files import ExportFiles
from gateway.fhir.bulk.jobs import JobStore
from gateway.fhir.bulk.runner import Exporter, ExportTuning
from gateway.fhir.cached import CachingFetcher
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
from gateway.web.database import DatabaseGate
from gateway.web.health import CHECK_TIMEOUT, Health
from gateway.web.metrics import Metrics
from gateway.web.middleware import add_request_id, middlewares, transport_headers
from gateway.web.requestkeys import LOG_PATH
from gateway.web.server import parser_limits
from smart_auth.clock import Clock, system_clock
from smart_auth.key_provider import KeyProvider
from smart_auth.revocations import EPOCHS as EPOCHS_COLLECTION

FHIR_ROUTES = frozenset({"fhir-base", "fhir"})
"""The names of the routes the FHIR pipeline answers."""

MONGODB_APP_NAME = "fhir-gateway"
"""How the gateway's connections introduce themselves to MongoDB (its logs, ``currentOp``)."""


def runner_options(settings: Settings) -> dict[str, Any]:
    """Options for ``web.AppRunner``/``TestServer``: the HTTP parser's limits
    (:func:`gateway.web.server.parser_limits`). :func:`gateway.web.server.make_runner` adds what
    a plain runner lacks (a head timeout, FHIR answers to what the parser refuses)."""
    return dict(parser_limits(settings))


async def _mongo_context(app: web.Application) -> AsyncIterator[None]:
    """The MongoDB client. Every operation is bounded (``timeoutMS``), so a database that holds a
    query makes the request fail closed (503) instead of wait; one that is gone fails after the
    server-selection timeout (:mod:`gateway.web.database`). Idle connections are closed on this
    side before the server's (or a firewall's) idle cut can break one under a write."""
    settings = app[SETTINGS]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri,
        appname=MONGODB_APP_NAME,
        timeoutMS=round(settings.mongodb_timeout_seconds * 1000),
        serverSelectionTimeoutMS=round(settings.mongodb_server_selection_timeout_seconds * 1000),
        maxIdleTimeMS=round(settings.mongodb_max_idle_seconds * 1000),
        tz_aware=True,
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


async def _audit_context(app: web.Application) -> AsyncIterator[None]:
    """The audit log (AUDIT.md): this instance's chain, its spool, checkpoints signed with the
    key ring's signing key; and the stores that tell it what they change, so that nothing
    changes a Consent or revokes a grant unrecorded (:mod:`gateway.audit.acts`)."""
    settings = app[SETTINGS]
    db = app[MONGO][settings.mongodb_database]
    async with open_audit(settings, db, app[AUTH].keys) as audit:
        app[AUDIT] = audit
        consents = ConsentStore(db, on_change=consent_written(audit))
        await consents.ensure_indexes()
        app[CONSENTS] = consents
        app[AUTH].revoker.on_revoke = grants_revoked(audit)
        try:
            yield
        finally:
            app[AUTH].revoker.on_revoke = None


async def _cache_context(app: web.Application) -> AsyncIterator[None]:
    """The encrypted cache (P-15): its data keys sealed by the key provider, its entries in
    MongoDB; a sweep in progress is awaited on the way out."""
    settings = app[SETTINGS]
    cache = ResourceCache(
        app[MONGO][settings.mongodb_database],
        app[KEY_PROVIDER],
        app[METRICS],
        CacheLimits.from_settings(settings),
        clock=app[CLOCK],
    )
    await cache.ensure_indexes()
    app[CACHE] = cache
    try:
        yield
    finally:
        await cache.close()


async def _pipeline_context(app: web.Application) -> AsyncIterator[None]:
    """The FHIR pipeline: token validation against the key ring and any external issuers (with
    their own small HTTP session for fetching JWKS), and the shared paging secret."""
    settings = app[SETTINGS]
    auth = app[AUTH]
    db = app[MONGO][settings.mongodb_database]
    epochs = app[EPOCHS]
    configured = settings.paging_secret.get_secret_value() if settings.paging_secret else None
    secret = await load_secret(db, configured, app[KEY_PROVIDER])
    consents = app[CONSENTS]
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
    fetcher = (
        CachingFetcher(app[UPSTREAM], app[REWRITER], app[METRICS], app[CACHE], epochs)
        if settings.cache_enabled
        else Fetcher(app[UPSTREAM], app[REWRITER], app[METRICS])
    )
    gate = ConsentGate(consents, auth.clients, epochs)
    pages = PageSealer(secret, settings.page_link_lifetime_seconds)
    release = Release(fetcher, gate, pages, app[REWRITER], settings.fhir_base_url)
    bulk: BulkApi | None = None
    if settings.export_enabled:
        jobs = JobStore(db, app[CLOCK])
        files = ExportFiles(db, app[CACHE].keys)
        await jobs.ensure_indexes()
        await files.ensure_indexes()
        bulk = BulkApi(
            jobs,
            files,
            fetcher,
            gate,
            app[METRICS],
            fhir_base=settings.fhir_base_url,
            retry_after_seconds=max(1, round(settings.export_poll_seconds)),
        )
        app[EXPORTER] = Exporter(
            jobs,
            files,
            fetcher=fetcher,
            release=release,
            consent=gate,
            clients=auth.clients,
            rewriter=app[REWRITER],
            audit=app[AUDIT],
            metrics=app[METRICS],
            tuning=ExportTuning(
                page_size=settings.export_page_size,
                lease=timedelta(seconds=settings.export_lease_seconds),
                poll_seconds=settings.export_poll_seconds,
                file_lifetime=timedelta(seconds=settings.export_file_lifetime_seconds),
            ),
            owner=app[AUDIT].chain,
            revoked=authenticator.is_revoked,
        )
    app[PIPELINE] = Pipeline(
        settings,
        authenticator=authenticator,
        representation=app[REPRESENTATION],
        fetcher=fetcher,
        consent=gate,
        consents=ConsentApi(
            consents, auth.revoker, auth.clients, app[CACHE], settings.fhir_base_url
        ),
        audit_events=AuditApi(
            AuditReader(db),
            auth.clients,
            paging_secret=secret,
            page_lifetime_seconds=settings.page_link_lifetime_seconds,
            fhir_base=settings.fhir_base_url,
        ),
        pages=pages,
        release=release,
        writes=WritePolicy(fetcher, gate),
        cors=Cors(auth.clients),
        rate_limit=rate_limit,
        audit=app[AUDIT],
        database=app[DATABASE_GATE].wait,
        bulk=bulk,
    )
    try:
        yield
    finally:
        await jwks_http.close()


async def _export_context(app: web.Application) -> AsyncIterator[None]:
    """Bulk export jobs, run in the background (:mod:`gateway.fhir.bulk.runner`): a job this
    instance was running when it stopped is resumed by whichever instance claims it next."""
    task = asyncio.create_task(app[EXPORTER].run_forever(), name="bulk-export")
    try:
        yield
    finally:
        # A job stopped mid-page resumes from its last written page.
        await cancel_and_wait(task)


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
    app.cleanup_ctx.append(_cache_context)
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(transport_headers)

    async def mongo_answers() -> bool:
        # A query like the one every FHIR request makes first (the change counters), not a bare
        # ping: a database that answers pings but holds queries is not ready.
        with pymongo.timeout(CHECK_TIMEOUT):
            db = app[MONGO][settings.mongodb_database]
            await db[EPOCHS_COLLECTION].find_one({"_id": "revocations"})
        return True

    async def upstream_answers() -> bool:
        return await app[UPSTREAM].ping(CHECK_TIMEOUT)

    checks = {"mongodb": mongo_answers, "upstream": upstream_answers}
    Health(checks, metrics, settings.metrics_token).add_routes(app)
    setup_authserver(app)  # before the catch-all /fhir route: it serves /fhir/.well-known/...
    setup_account(app)
    # Innermost, so that its 503 is rendered by the error middleware of the request's area.
    gate = DatabaseGate(
        lambda: app.get(MONGO),
        settings.mongodb_server_selection_timeout_seconds,
        waits_itself=FHIR_ROUTES,  # the pipeline waits, inside its audit
    )
    app[DATABASE_GATE] = gate
    app.middlewares.append(gate.middleware)
    app.cleanup_ctx.append(_audit_context)  # after the authorization server's (key ring)
    app.cleanup_ctx.append(_pipeline_context)
    if settings.audit_forward_url is not None:
        app.cleanup_ctx.append(_audit_forward_context)
    if settings.export_enabled:
        app.cleanup_ctx.append(_export_context)
    app.router.add_route("*", "/fhir", _handle_fhir, name="fhir-base")
    app.router.add_route("*", "/fhir/{path:.*}", _handle_fhir, name="fhir")
    return app


async def _handle_fhir(request: web.Request) -> web.StreamResponse:
    """Every FHIR REST interaction under ``/fhir``."""
    request[LOG_PATH] = path_shape(request.path)
    return await request.app[PIPELINE].handle(request)
