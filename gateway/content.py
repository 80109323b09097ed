"""What crosses the FHIR API, in and out: content negotiation, request bodies, and the upstream's
answer decoded for the caller with every upstream URL rewritten to the gateway's base.

Content rules: the gateway speaks FHIR JSON only. A caller that accepts only XML gets 406; a body
that is not JSON gets 415 (wrong media type) or 400 (not parseable); bodies are checked for the
basic FHIR shape (``resourceType`` agrees with the URL, an update's ``id`` agrees with the URL).
A body nesting deeper than ``MAX_BODY_NESTING`` levels is a 400 naming where, before any code that
recurses (the FHIR models' validators) reads it (SECURITY.md P-22).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import (
    BadRequest,
    NotAcceptable,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from gateway.headers import response_headers
from gateway.interaction import FhirInteraction, Kind
from gateway.middleware import fhir_response
from gateway.rewrite import UrlRewriter
from gateway.upstream import UpstreamResponse

log = logging.getLogger(__name__)

_JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
_PATCH_TYPES = frozenset({"application/json-patch+json"})
FORM = "application/x-www-form-urlencoded"
FORMAT_JSON = frozenset({"json", "application/json", "application/fhir+json", "text/json"})
_ACCEPT_JSON = frozenset({"*/*", "application/*", "application/json", "application/fhir+json"})
_BODY_KINDS = frozenset(
    {Kind.CREATE, Kind.UPDATE, Kind.PATCH, Kind.BATCH, Kind.TRANSACTION, Kind.OPERATION}
)


def _media_type(value: str) -> str:
    return value.split(";")[0].strip().lower()


def negotiate(request: web.Request) -> None:
    """Refuse (406) a caller who will take nothing but a format other than FHIR JSON."""
    for fmt in request.query.getall("_format", []):
        if _media_type(fmt) not in FORMAT_JSON:
            raise NotAcceptable(f"_format={fmt} is not supported; this server speaks FHIR JSON")
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        quality = next((p[2:] for p in parts[1:] if p.startswith("q=")), "1")
        if parts[0].lower() in _ACCEPT_JSON and quality not in ("0", "0.0", "0.00", "0.000"):
            return
    raise NotAcceptable("this server answers application/fhir+json only; XML is not supported")


MAX_BODY_NESTING = 100
"""JSON levels a request body may nest. FHIR resources need a few dozen and a transaction Bundle
adds four; orjson reads up to 1,024, more than the models' recursive validators survive."""


def _json_body(raw: bytes) -> Any:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from None
    where = _too_deep(body)
    if where is not None:
        message = f"the request body nests deeper than {MAX_BODY_NESTING} levels"
        issue = {"severity": "error", "code": "structure", "diagnostics": message}
        raise BadRequest(message, extra_issues=[{**issue, "expression": [where]}])
    return body


def _too_deep(body: Any) -> str | None:
    """Where ``body`` nests deeper than ``MAX_BODY_NESTING`` (``Observation.extension[0]...``,
    cut short), else ``None``. Iterative: the check itself cannot exhaust the stack."""
    if not isinstance(body, dict | list):
        return None
    kind = body.get("resourceType") if isinstance(body, dict) else None
    root = kind if isinstance(kind, str) and kind.isalpha() and len(kind) <= 64 else "$"
    stack: list[tuple[Any, tuple[object, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_BODY_NESTING:
            where = root + "".join(
                f"[{p}]" if isinstance(p, int) else f".{str(p)[:64]}" for p in path[:12]
            )
            return where + "…"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(item, dict | list):
                stack.append((item, (*path, key)))
    return None


def check_resource_body(interaction: FhirInteraction, body: Any) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise BadRequest(
            "the request body must be a FHIR resource (a JSON object with resourceType)"
        )
    if interaction.kind in (Kind.CREATE, Kind.UPDATE) and body["resourceType"] != (
        interaction.resource_type
    ):
        raise BadRequest(
            f"the body is a {body['resourceType']} but the URL is for {interaction.resource_type}"
        )
    if interaction.kind is Kind.UPDATE and body.get("id") != interaction.resource_id:
        raise BadRequest("an update's body must carry the same id as the URL")


async def read_form(request: web.Request) -> list[tuple[str, str]]:
    if not request.path.endswith("/_search") or request.method != "POST":
        return []
    if _media_type(request.headers.get("Content-Type", FORM)) != FORM:
        raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
    form = await request.post()
    return [(key, value) for key, value in form.items() if isinstance(value, str)]


async def read_body(
    request: web.Request, interaction: FhirInteraction
) -> tuple[FhirInteraction, Any, bytes | None, str | None]:
    """The request body, parsed and as bytes to forward, and its media type; refines batch into
    transaction."""
    if interaction.kind not in _BODY_KINDS or interaction.method in ("GET", "DELETE"):
        return interaction, None, None, None
    if interaction.kind is Kind.OPERATION and not request.can_read_body:
        return interaction, None, None, None
    media = _media_type(request.headers.get("Content-Type", ""))
    allowed = _JSON_TYPES | (_PATCH_TYPES if interaction.kind is Kind.PATCH else frozenset())
    if media not in allowed:
        raise UnsupportedMediaType(
            f"a {interaction.kind} body must be {' or '.join(sorted(allowed))}, "
            f"not '{media or 'none'}'"
        )
    raw = await request.read()
    body = _json_body(raw)
    if interaction.kind is Kind.PATCH:
        if media in _PATCH_TYPES and not isinstance(body, list):
            raise BadRequest("a JSON Patch body is an array of operations")
        if media in _JSON_TYPES:
            check_resource_body(interaction, body)
    elif interaction.kind in (Kind.BATCH, Kind.TRANSACTION):
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise BadRequest("POST to the FHIR base takes a batch or transaction Bundle")
        bundle_type = body.get("type")
        if bundle_type not in ("batch", "transaction"):
            raise BadRequest("the Bundle's type must be 'batch' or 'transaction'")
        if not isinstance(body.get("entry", []), list):
            raise BadRequest("Bundle.entry must be an array of entries")
        interaction = FhirInteraction(
            Kind.TRANSACTION if bundle_type == "transaction" else Kind.BATCH, "POST"
        )
    else:
        check_resource_body(interaction, body)
    return interaction, body, raw, media


@dataclass(slots=True)
class Answer:
    """A response before rendering: status, headers, parsed JSON body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    raw: bytes | None = None
    """The JSON the body was parsed from, when it came from the upstream."""

    def render(self) -> web.Response:
        if self.body is None:
            return web.Response(status=self.status, headers=self.headers)
        return fhir_response(self.status, orjson.dumps(self.body), self.headers)


def decode_answer(upstream: UpstreamResponse, rewriter: UrlRewriter) -> Answer:
    """The upstream's answer for the caller: allowed headers, upstream URLs rewritten to the
    gateway's base, the JSON body parsed. A 5xx or a body that is not FHIR JSON becomes a 502
    that says nothing of the upstream's internals (P-14)."""
    if upstream.status >= 500:
        log.warning("upstream answered %s", upstream.status)
        raise UpstreamUnavailable(
            f"the upstream FHIR server failed to process the request (status {upstream.status})"
        )
    headers = response_headers(upstream.headers)
    for name in ("Location", "Content-Location"):
        if name in headers:
            rewritten = rewriter.url_to_public(headers[name])
            if rewritten is None:
                del headers[name]
            else:
                headers[name] = rewritten
    if not upstream.body.strip():
        return Answer(upstream.status, headers)
    if not upstream.is_json:
        log.warning("upstream answered a non-JSON body (%s)", upstream.content_type)
        raise UpstreamUnavailable("the upstream FHIR server answered in a format other than JSON")
    raw = rewriter.body_to_public(upstream.body)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable("the upstream FHIR server answered malformed JSON") from None
    if not isinstance(body, dict):
        raise UpstreamUnavailable(
            "the upstream FHIR server answered something other than a resource"
        )
    return Answer(upstream.status, headers, body, raw)
