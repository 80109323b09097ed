"""``GET /fhir/metadata``: the CapabilityStatement (FHIR R4 3.1.0.12 "capabilities"; SMART.md S-07,
S-08). The upstream's, with its URLs on the gateway's base (``gateway.proxy.rewrite``) and every
``rest.security`` replaced by the gateway's SMART section (``smart_auth.discovery``); it needs no
token and is readable from any origin."""

from __future__ import annotations

from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.interaction import parse
from gateway.proxy.answer import Answer
from smart_auth.discovery import Endpoints, add_security

ANY_ORIGIN = {"Access-Control-Allow-Origin": "*"}
"""What the public documents (metadata, discovery, the JWKS) answer any origin."""


async def capabilities(fetcher: Fetcher, endpoints: Endpoints, method: str) -> Answer:
    """The CapabilityStatement as the gateway publishes it."""
    answer = await fetcher.fetch(Call(interaction=parse(method, "metadata")))
    if answer.status == 200 and answer.body is not None:
        answer.body = add_security(answer.body, endpoints)
        answer.headers.pop("ETag", None)  # the body is no longer the upstream's
    answer.headers.update(ANY_ORIGIN)
    return answer
