"""Every typed key of the application and request state, in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pymongo import AsyncMongoClient

from gateway.interaction import FhirInteraction
from gateway.metrics import Metrics
from gateway.rewrite import UrlRewriter
from gateway.settings import Settings
from gateway.upstream import Upstream

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MONGO = web.AppKey("mongo", AsyncMongoClient[dict[str, Any]])
UPSTREAM = web.AppKey("upstream", Upstream)
REWRITER = web.AppKey("rewriter", UrlRewriter)

REQUEST_ID = web.RequestKey("request_id", str)
INTERACTION = web.RequestKey("interaction", FhirInteraction)
METRIC_LABEL = web.RequestKey("metric_label", str)
