"""Content negotiation (FHIR R4 3.1.0 "Content Types and encodings"): the gateway speaks FHIR JSON
only. A caller that will take nothing but another format (XML, say: ``Accept`` or ``_format``) gets
406 before anything else happens."""

from __future__ import annotations

from aiohttp import web

from gateway.web.errors import FHIR_JSON, NotAcceptable

FORMAT_JSON = frozenset({"json", "application/json", FHIR_JSON, "text/json"})
_ACCEPT_JSON = frozenset({"*/*", "application/*", "application/json", FHIR_JSON})


def media_type(value: str) -> str:
    """The bare media type of a ``Content-Type`` value (no parameters, lower case)."""
    return value.split(";")[0].strip().lower()


def negotiate(request: web.Request) -> None:
    """Refuse (406) a caller who will take nothing but a format other than FHIR JSON."""
    for fmt in request.query.getall("_format", []):
        if media_type(fmt) not in FORMAT_JSON:
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
