"""The upstream's answer decoded for the caller (step 5 of the pipeline, the content half): the
allowed headers only (P-11), every upstream URL rewritten to the gateway's base, the JSON body
parsed; a 5xx or a body that is not FHIR JSON becomes a 502 that says nothing of the upstream's
internals (P-14)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.proxy.headers import response_headers
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import UpstreamResponse
from gateway.web.errors import UpstreamUnavailable, fhir_response

log = logging.getLogger(__name__)


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
