"""Request bodies of the FHIR API, read once and checked for their basic shape (step 2 of the
pipeline, with :mod:`gateway.fhir.interaction`).

A body that is not JSON gets 415 (wrong media type) or 400 (not parseable); bodies are checked for
the basic FHIR shape (``resourceType`` agrees with the URL, an update's ``id`` agrees with the URL);
a POST to the base must be a batch or transaction Bundle. ``POST [type]/_search`` takes a form.
A body nesting deeper than ``MAX_BODY_NESTING`` levels is a 400 naming where, before any code that
recurses (the FHIR models' validators) reads it (SECURITY.md P-22).

PATCH takes a JSON Patch (RFC 6902, ``application/json-patch+json``, an array of operations) or a
JSON Merge Patch (RFC 7396, ``application/merge-patch+json``, an object). A body sent as plain
``application/json`` is read by its shape: an array is a JSON Patch, an object a merge patch (what
fhirpy's ``patch()`` sends). FHIRPath Patch (a ``Parameters`` resource) is not supported. The body's
media type is normalised to one of the two patch types for the steps after.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.proxy.negotiation import media_type
from gateway.web.errors import FHIR_JSON, BadRequest, UnsupportedMediaType

_JSON_TYPES = frozenset({FHIR_JSON, "application/json"})
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH)
_PATCH_HELP = (
    f"PATCH takes a JSON Patch ({JSON_PATCH}, an array of operations) or a JSON Merge Patch "
    f"({MERGE_PATCH}, an object with the elements to change)"
)
FORM = "application/x-www-form-urlencoded"
_BODY_KINDS = frozenset(
    {Kind.CREATE, Kind.UPDATE, Kind.PATCH, Kind.BATCH, Kind.TRANSACTION, Kind.OPERATION}
)


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
    if media_type(request.headers.get("Content-Type", FORM)) != FORM:
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
    media = media_type(request.headers.get("Content-Type", ""))
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
