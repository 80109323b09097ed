"""Every typed key of the application's state (``web.AppKey``), in one place, and the request keys
of the authorization server's pages. This module names the types of every package, so it sits at
the top, beside the application factory; nothing below ``gateway.oauth`` imports it. The request
keys that the web plumbing reads are in :mod:`gateway.web.requestkeys`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from pymongo import AsyncMongoClient

from consent.store import ConsentStore
from gateway.audit.log import AuditLog
from gateway.cache.cache import ResourceCache
from gateway.fhir.freshness import ChangeEpochs
from gateway.fhir.pipeline import Pipeline
from gateway.fhir.representation import Representation
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import Upstream
from gateway.settings import Settings
from gateway.web.metrics import Metrics
from smart_auth.accounts.sessions import Session
from smart_auth.clock import Clock
from smart_auth.key_provider import KeyProvider
from smart_auth.server import SmartAuthorizationServer
from smart_auth.services import AuthServices

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MONGO = web.AppKey("mongo", AsyncMongoClient[dict[str, Any]])
UPSTREAM = web.AppKey("upstream", Upstream)
REWRITER = web.AppKey("rewriter", UrlRewriter)
AUTH = web.AppKey("auth", AuthServices)
AUTH_SERVER = web.AppKey("auth_server", SmartAuthorizationServer)
AUTH_THREADS = web.AppKey("auth_threads", ThreadPoolExecutor)
EPOCHS = web.AppKey("epochs", ChangeEpochs)
REPRESENTATION = web.AppKey("representation", Representation)
KEY_PROVIDER = web.AppKey[KeyProvider]("key_provider")
CLOCK = web.AppKey[Clock]("clock")
PIPELINE = web.AppKey("pipeline", Pipeline)
AUDIT = web.AppKey("audit", AuditLog)
CONSENTS = web.AppKey("consents", ConsentStore)
CACHE = web.AppKey("cache", ResourceCache)

AUTH_SESSION = web.RequestKey("auth_session", Session)
AUTH_SESSION_TOKEN = web.RequestKey("auth_session_token", str)
