"""Security acts done through the authorization server's pages and APIs, recorded as AuditEvents
before the page answers (AUDIT.md A-01, A-08; SECURITY.md P-05, P-09, P-18): sign-ins and their
failures, second factors, sign-outs, apps approved or denied, tokens issued, administrative acts.
Consent changes and revocations are recorded by the stores themselves (:mod:`gateway.audit.acts`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.appkeys import AUDIT
from gateway.audit.facts import Actor, Observer
from gateway.oauth.rendering import client_address


def acting(
    request: web.Request,
    *,
    user_id: str | None = None,
    username: str | None = None,
    fhir_user: str | None = None,
    client_id: str | None = None,
) -> Actor:
    """Who acts through this request, from where and with what browser."""
    return Actor(
        user_id=user_id,
        username=username,
        fhir_user=fhir_user,
        client_id=client_id,
        address=client_address(request),
        user_agent=request.headers.get("User-Agent", "")[:256],
    )


async def audited(
    request: web.Request,
    build: Callable[..., dict[str, Any]],
    actor: Actor,
    *args: Any,
    **details: Any,
) -> None:
    """Record ``build(observer, actor, *args, **details)`` (a :mod:`gateway.audit.security`
    builder); raises :class:`~gateway.audit.errors.AuditUnavailable` when it cannot be made
    durable, and the act's answer is then a 503 (A-08)."""
    audit = request.app[AUDIT]
    observer: Observer = audit.observer
    await audit.record([build(observer, actor, *args, **details)])
