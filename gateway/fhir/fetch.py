"""Step 5 of the pipeline: one interaction sent to the upstream FHIR server and its answer decoded
(DESIGN.md "The request pipeline").

A :class:`Call` is what the pipeline runs: a whole request, or one entry of a batch or
transaction, already parsed (step 2). :class:`Fetcher` sends it — the upstream request is rebuilt
from the parsed interaction, never copied from the caller's (P-10), request bodies have the
gateway's URLs rewritten to the upstream's, and a form search goes as a form — and decodes the
answer for the caller (:mod:`gateway.proxy.answer`). With the cache on, the pipeline's fetcher is
:class:`gateway.fhir.cached.CachingFetcher`, which answers reads by id from the encrypted cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDict

from gateway.fhir.bodies import FORM
from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.proxy.answer import Answer, decode_answer
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import Upstream, UpstreamResponse
from gateway.web.metrics import Metrics


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One interaction to run: a whole request, or one entry of a batch."""

    interaction: FhirInteraction
    body: Any = None
    """The parsed JSON body, if any."""
    raw: bytes | None = None
    """The body as sent upstream (gateway URLs are rewritten when it is sent)."""
    media: str | None = None
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    """The caller's headers that may go upstream (``gateway.proxy.headers``)."""
    self_url: str = ""
    """The URL the caller asked for, for a Bundle's ``self`` link."""

    def but(self, **changes: Any) -> Call:
        """This call with some fields changed."""
        return replace(self, **changes)


class Fetcher:
    """Sends calls to the upstream and decodes the answers."""

    def __init__(self, upstream: Upstream, rewriter: UrlRewriter, metrics: Metrics) -> None:
        self._upstream = upstream
        self._rewriter = rewriter
        self._metrics = metrics

    async def fetch(self, call: Call) -> Answer:
        """The call's answer, decoded for the caller."""
        return self.decode(await self.send(call))

    async def send(self, call: Call) -> UpstreamResponse:
        """The call sent to the upstream; its answer as it came."""
        interaction = call.interaction
        params: list[tuple[str, str]] = list(interaction.params)
        body, media = call.raw, call.media
        if body is not None:
            body = self._rewriter.body_to_upstream(body)
        elif interaction.form_post:
            body, media, params = urlencode(params).encode(), FORM, []
        upstream = await self._upstream.send(
            interaction.method,
            interaction.upstream_path,
            params=params,
            body=body,
            content_type=media,
            headers=call.headers,
        )
        self._metrics.upstream_latency.labels(interaction.kind.value).observe(upstream.seconds)
        return upstream

    def decode(self, upstream: UpstreamResponse) -> Answer:
        """An upstream answer for the caller (:func:`gateway.proxy.answer.decode_answer`)."""
        return decode_answer(upstream, self._rewriter)

    async def current(self, resource_type: str | None, resource_id: str | None) -> Any:
        """The resource as the upstream holds it now (``None`` when it does not answer 200);
        never from a cache: what a write is checked against must be the upstream's."""
        read = FhirInteraction(Kind.READ, "GET", resource_type, resource_id)
        answer = self.decode(await self.send(Call(interaction=read)))
        return answer.body if answer.status == 200 else None

    async def follow(self, relative_link: str) -> Answer:
        """A paging link the upstream gave, relative to its base (``gateway.fhir.paging``)."""
        upstream = await self._upstream.send("GET", "", url=self._upstream.link_url(relative_link))
        self._metrics.upstream_latency.labels(Kind.PAGE.value).observe(upstream.seconds)
        return decode_answer(upstream, self._rewriter)
