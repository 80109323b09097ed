"""The machine-facing endpoints: discovery (S-01 … S-06), the JWKS (S-18), token (S-16 … S-22),
introspection (S-24) and revocation (S-25). (The CapabilityStatement's security section, S-08, is
added by the FHIR API's ``metadata``: :mod:`gateway.fhir.metadata`.)

CORS (S-07): discovery documents, the JWKS and ``metadata`` are readable from any origin; the token,
introspection and revocation endpoints answer cross-origin requests only from an origin some client
registered, and every answer of theirs carries the CORS headers, errors included (a browser app must
be able to read why a refresh failed); the authorization endpoint never sends CORS headers.

Other well-known documents are not under the FHIR base: ``{FHIR base}/.well-known/...`` but the
SMART configuration is 404, whatever the caller's token (OpenID Connect discovery is at
``{issuer}/.well-known/openid-configuration``, for the ``iss`` of the id_tokens).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from pymongo.errors import PyMongoError

from gateway.appkeys import AUTH, AUTH_SERVER, SETTINGS
from gateway.audit import security
from gateway.fhir.metadata import ANY_ORIGIN
from gateway.oauth.adapter import call, plain_request, to_response
from gateway.oauth.audited import acting, audited
from gateway.web.requestkeys import METRIC_LABEL
from smart_auth.discovery import (
    Endpoints,
    openid_configuration,
    smart_configuration,
)
from smart_auth.requests import PlainRequest


def endpoints(request: web.Request) -> Endpoints:
    settings = request.app[SETTINGS]
    return Endpoints(settings.public_base_url, settings.fhir_base_url)


def _json(body: object, headers: dict[str, str]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


async def smart_config(request: web.Request) -> web.Response:
    """S-01: JSON whatever the Accept header says."""
    request[METRIC_LABEL] = "smart-configuration"
    return _json(smart_configuration(endpoints(request)), ANY_ORIGIN)


async def openid_config(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "openid-configuration"
    return _json(openid_configuration(endpoints(request)), ANY_ORIGIN)


async def jwks(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "jwks"
    keys = await request.app[AUTH].keys.public_jwks()
    return _json(keys, {**ANY_ORIGIN, "Cache-Control": "public, max-age=300"})


async def _cors_headers(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if not origin:
        return {}
    try:
        allowed = await request.app[AUTH].clients.origin_allowed(origin)
    except PyMongoError:
        return {}  # no CORS headers rather than an error in place of the real answer
    if allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


async def preflight(request: web.Request) -> web.Response:
    headers = await _cors_headers(request)
    if not headers:
        return web.Response(status=403, headers={"Vary": "Origin"})
    headers |= {
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


_CORS_PATHS = frozenset({"/auth/token", "/auth/introspect", "/auth/revoke"})


@web.middleware
async def token_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """S-07: the CORS headers on every answer of the token, introspection and revocation
    endpoints, errors included (it sits outside the middleware that renders their errors)."""
    if request.path not in _CORS_PATHS or request.method == "OPTIONS":
        return await handler(request)
    response = await handler(request)
    response.headers.update(await _cors_headers(request))
    return response


async def token(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "token"
    server = request.app[AUTH_SERVER]
    plain = await plain_request(request)
    answer = await call(request, server.create_token_response, plain)
    if answer.status == 200 and isinstance(answer.body, dict):
        await _token_issued(request, answer.body, plain)  # before the token leaves
    return to_response(answer)


async def _token_issued(request: web.Request, body: dict[str, Any], plain: PlainRequest) -> None:
    """A-01: the token the gateway just issued, named by its ``jti`` (never by its value)."""
    token = body.get("access_token")
    if not isinstance(token, str) or token.count(".") != 2:
        return
    payload = token.split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    client_id = str(claims.get("client_id", ""))
    sub = claims.get("sub")
    grant_type = plain.form.get("grant_type", "")
    user = sub if isinstance(sub, str) and sub != client_id else None
    fhir_user = claims.get("fhirUser") if isinstance(claims.get("fhirUser"), str) else None
    await audited(
        request,
        security.token_issued,
        acting(request, user_id=user, fhir_user=fhir_user),
        client_id=client_id,
        jti=str(claims.get("jti", "")),
        grant_type=grant_type,
        scope=str(claims.get("scope", "")),
        patient=claims.get("patient") if isinstance(claims.get("patient"), str) else None,
        purposes=tuple(str(p) for p in claims.get("purpose_of_use") or ()),
    )


async def _endpoint(request: web.Request, label: str, endpoint: str) -> web.Response:
    request[METRIC_LABEL] = label
    server = request.app[AUTH_SERVER]
    plain = await plain_request(request)
    answer = await call(request, server.create_endpoint_response, endpoint, plain)
    return to_response(answer)


async def introspect(request: web.Request) -> web.Response:
    return await _endpoint(request, "introspect", "introspection")


async def revoke(request: web.Request) -> web.Response:
    return await _endpoint(request, "revoke", "revocation")


async def no_such_document(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/fhir/.well-known/smart-configuration", smart_config)
    app.router.add_route("*", "/fhir/.well-known{rest:(/.*)?}", no_such_document)
    app.router.add_get("/.well-known/openid-configuration", openid_config)
    app.router.add_get("/auth/jwks", jwks)
    for path, handler in (
        ("/auth/token", token),
        ("/auth/introspect", introspect),
        ("/auth/revoke", revoke),
    ):
        app.router.add_post(path, handler)
        app.router.add_route("OPTIONS", path, preflight)
