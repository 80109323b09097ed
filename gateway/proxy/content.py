"""What crosses the FHIR API, in and out: content negotiation, request bodies, and the upstream's
answer decoded for the caller with every upstream URL rewritten to the gateway's base.

Content rules: the gateway speaks FHIR JSON only. A caller that accepts only XML gets 406; a body
that is not JSON gets 415 (wrong media type) or 400 (not parseable); bodies are checked for the
basic FHIR shape (``resourceType`` agrees with the URL, an update's ``id`` agrees with the URL).

PATCH takes a JSON Patch (RFC 6902, ``application/json-patch+json``, an array of operations) or a
JSON Merge Patch (RFC 7396, ``application/merge-patch+json``, an object). A body sent as plain
``application/json`` is read by its shape: an array is a JSON Patch, an object a merge patch (what
fhirpy's ``patch()`` sends). FHIRPath Patch (a ``Parameters`` resource) is not supported. The body's
media type is normalised to one of the two patch types for the steps after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.proxy.headers import response_headers
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import UpstreamResponse
from gateway.web.errors import (
    FHIR_JSON,
    BadRequest,
    NotAcceptable,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from gateway.web.middleware import fhir_response

log = logging.getLogger(__name__)

_JSON_TYPES = frozenset({FHIR_JSON, "application/json"})
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH)
_PATCH_HELP = (
    f"PATCH takes a JSON Patch ({JSON_PATCH}, an array of operations) or a JSON Merge Patch "
    f"({MERGE_PATCH}, an object with the elements to change)"
)
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


def _json_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from None


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
    if interaction.kind is Kind.PATCH:
        if media not in (*_PATCH_TYPES, "application/json"):
            raise UnsupportedMediaType(f"{_PATCH_HELP}, not '{media or 'none'}'")
        raw = await request.read()
        body = _json_body(raw)
        return interaction, body, raw, _patch_type(media, body)
    if media not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"a {interaction.kind} body must be {' or '.join(sorted(_JSON_TYPES))}, "
            f"not '{media or 'none'}'"
        )
    raw = await request.read()
    body = _json_body(raw)
    if interaction.kind in (Kind.BATCH, Kind.TRANSACTION):
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


def _patch_type(media: str, body: Any) -> str:
    """Which patch ``body`` is: the media type said, or for ``application/json`` its shape."""
    if media == "application/json":
        media = JSON_PATCH if isinstance(body, list) else MERGE_PATCH
    if media == JSON_PATCH and not isinstance(body, list):
        raise BadRequest(f"a JSON Patch is an array of operations; {_PATCH_HELP}")
    if media == MERGE_PATCH and not isinstance(body, dict):
        raise BadRequest(f"a JSON Merge Patch of a resource is an object; {_PATCH_HELP}")
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        raise UnsupportedMediaType(f"FHIRPath Patch is not supported; {_PATCH_HELP}")
    return media


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
