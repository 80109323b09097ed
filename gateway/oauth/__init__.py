"""The aiohttp face of the SMART authorization server (``smart_auth``): routes under ``/auth`` and
``/admin``, the discovery documents, the sign-in and consent pages.

:func:`setup_authserver` adds everything to an application: its cleanup context (the stores, the
worker threads for Authlib, the HTTP session for client JWKS URLs), its routes, and its two
middlewares, placed inside the existing ones, outermost first — ``token_cors`` (CORS on every answer
of the token, introspection and revocation endpoints) and ``auth_errors`` (the one renderer of OAuth
errors and of page errors).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from gateway.appkeys import (
    AUTH,
    AUTH_SERVER,
    AUTH_THREADS,
    CLOCK,
    EPOCHS,
    KEY_PROVIDER,
    MONGO,
    REPRESENTATION,
    SETTINGS,
    UPSTREAM,
)
from gateway.fhir.freshness import ChangeEpochs
from gateway.fhir.representation import Representation, RepresentationUnknown
from gateway.oauth import admin, authorize, endpoints, login
from gateway.oauth.errors import auth_errors
from gateway.pages import templating as pages
from gateway.proxy.jwks import http_jwks_fetcher
from gateway.settings import Settings
from smart_auth.clock import Clock, system_clock
from smart_auth.jwks import JwksFetcher
from smart_auth.key_provider import KeyProvider
from smart_auth.requests import Bridge
from smart_auth.server import SmartAuthorizationServer
from smart_auth.services import AuthConfig, AuthServices, build_services

log = logging.getLogger(__name__)

AUTHLIB_THREADS = 8


def auth_config(settings: Settings) -> AuthConfig:
    return AuthConfig(
        issuer=settings.public_base_url,
        fhir_base=settings.fhir_base_url,
        access_token_lifetime=settings.access_token_lifetime_seconds,
        backend_token_lifetime=settings.backend_token_lifetime_seconds,
        code_lifetime=settings.authorization_code_lifetime_seconds,
        refresh_idle=settings.refresh_token_idle_seconds,
        refresh_max=settings.refresh_token_max_seconds,
        session_idle=settings.session_idle_seconds,
        session_absolute=settings.session_absolute_seconds,
        mfa_required_for_patients=settings.mfa_required_for_patients,
        key_rotation_days=settings.signing_key_rotation_days,
        login_max_failures=settings.login_max_failures,
        login_lock_seconds=settings.login_lock_seconds,
        launch_lifetime=settings.launch_context_lifetime_seconds,
        client_jwks_max_cache=settings.client_jwks_max_cache_seconds,
        cookies_secure=settings.cookies_secure,
    )


async def open_services(
    db: AsyncDatabase[dict[str, Any]],
    settings: Settings,
    key_provider: KeyProvider,
    fetch_jwks: JwksFetcher | None = None,
    clock: Clock = system_clock,
) -> AuthServices:
    """The authorization server's stores, ready to use: indexes made, secrets an earlier version
    kept in clear sealed (P-19), and the key ring opened. A key-encryption key that does not open
    what is stored raises :class:`~smart_auth.key_provider.KeyProviderError` here, before anything
    is served and before anything is sealed or made anew over the old keys."""
    services = build_services(db, auth_config(settings), key_provider, fetch_jwks, clock)
    await services.ensure_indexes()
    log.info("secrets at rest are sealed by key-encryption key %s", key_provider.current_version)
    signing_keys = await services.keys.seal_plaintext()
    await services.keys.public_jwks()
    changed = {"signing keys sealed": signing_keys, **await services.seal_plaintext_secrets()}
    for what, count in changed.items():
        if count:
            log.info("stored in clear by an earlier version: %s %d", what, count)
    return services


async def _auth_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    db = app[MONGO][settings.mongodb_database]
    http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=5), cookie_jar=aiohttp.DummyCookieJar()
    )
    threads = ThreadPoolExecutor(AUTHLIB_THREADS, thread_name_prefix="authlib")
    try:
        services = await open_services(
            db, settings, app[KEY_PROVIDER], http_jwks_fetcher(http), app[CLOCK]
        )
        app[AUTH] = services
        app[AUTH_THREADS] = threads
        app[EPOCHS] = epochs = ChangeEpochs(db)
        app[REPRESENTATION] = representation = Representation(
            app[UPSTREAM],
            services.users,
            services.revoker,
            epochs,
            settings.representation_check_seconds,
        )

        async def represented(user_id: str) -> frozenset[str] | None:
            try:
                return await representation.current(user_id)
            except RepresentationUnknown:
                return None

        app[AUTH_SERVER] = SmartAuthorizationServer(
            services, Bridge(asyncio.get_running_loop()), represented
        )
        yield
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
        await http.close()


def setup_authserver(app: web.Application) -> None:
    """Add the authorization server to ``app`` (call before the catch-all FHIR routes)."""
    # Authlib logs issued tokens at DEBUG: keep its logger above that, whatever the level (P-14).
    logging.getLogger("authlib").setLevel(logging.INFO)
    app.cleanup_ctx.append(_auth_context)
    app.middlewares.append(endpoints.token_cors)
    app.middlewares.append(auth_errors)
    endpoints.add_routes(app)
    authorize.add_routes(app)
    login.add_routes(app)
    admin.add_routes(app)
    pages.add_routes(app)  # the stylesheet every page uses
