"""Step 5 of the pipeline with the encrypted cache (DESIGN.md "The request pipeline", step 5;
SECURITY.md P-15; CONSENT.md C-10): a :class:`~gateway.fhir.fetch.Fetcher` that answers reads by
id and vreads from :mod:`gateway.cache`.

- A plain read or vread (no parameters, no header but ``Accept-Language``) is looked up first: in
  this instance's copy of recent entries, valid while the cache's change counters have not moved
  (read afresh for the request, in the same query as the revocation check:
  :mod:`gateway.fhir.freshness`), then in MongoDB, where the lookups of concurrent requests share
  one query (:mod:`gateway.fhir.coalesce`). A fresh entry is answered without the upstream; a
  stale one is revalidated with its ETag (``If-None-Match``): 304 keeps it, anything else replaces
  or removes it. What the upstream answers to a miss is stored.
  A hit is decoded exactly like the upstream's answer and returned to the pipeline, which releases
  it through the same step as any other (scopes, compartment, consent, minimisation: C-10).
- A write (create, update, patch, delete, a transaction) invalidates every resource it names or
  the upstream's answer names, for every instance, once the upstream has answered.
- Everything else, and :meth:`Fetcher.current` (what a write is checked against), goes to the
  upstream.

Whose an entry is. The data key is the one of the patient whose data the resource is
(:func:`gateway.fhir.compartment.patients_of`), or the system key for a type that holds no
patient data. A resource is cached only when that is unambiguous: it belongs to exactly one
patient and its text names no other (:func:`gateway.fhir.compartment.mentioned_patients`), so
that shredding any patient's key leaves no readable copy of their data; a resource of several
patients' compartments, or one that cannot be attributed, is always read from the upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from pymongo.errors import PyMongoError

from gateway.cache.cache import CachedRead, Hit, ResourceCache
from gateway.cache.datakeys import SYSTEM, patient_owner
from gateway.fhir import compartment
from gateway.fhir.coalesce import Coalescer
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.freshness import ChangeEpochs
from gateway.fhir.interaction import WRITE_KINDS, Kind, parse
from gateway.proxy.answer import Answer
from gateway.proxy.headers import response_headers
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import Upstream, UpstreamResponse
from gateway.web.errors import FhirError
from gateway.web.metrics import Metrics

_READS = frozenset({Kind.READ, Kind.VREAD})
_IGNORED_HEADERS = frozenset({"accept-language"})
"""Request headers that do not change what the upstream answers to a read by id."""

log = logging.getLogger(__name__)


def cacheable(call: Call) -> bool:
    """A plain read or vread: nothing in the request could change the upstream's answer."""
    interaction = call.interaction
    return (
        interaction.kind in _READS
        and interaction.resource_type is not None
        and interaction.resource_id is not None
        and not interaction.params
        and call.raw is None
        and all(name.lower() in _IGNORED_HEADERS for name in call.headers)
    )


def owner_of(resource: dict[str, Any], raw: bytes) -> str | None:
    """The owner of the data key an answer is cached under, or ``None`` when it must not be
    cached (the module's docstring)."""
    owners = compartment.patients_of(resource)
    mentioned = compartment.mentioned_patients(raw)
    if mentioned is None or compartment.UNATTRIBUTED in owners or len(owners) > 1:
        return None
    if not mentioned <= owners:
        return None
    if owners:
        return patient_owner(next(iter(owners)))
    return SYSTEM if resource.get("resourceType") in compartment.PUBLIC_TYPES else None


def written(call: Call) -> set[str]:
    """``Type/id`` of each resource a write names: its own, or its entries' for a transaction."""
    interaction = call.interaction
    if interaction.kind is not Kind.TRANSACTION:
        if interaction.resource_type and interaction.resource_id:
            return {f"{interaction.resource_type}/{interaction.resource_id}"}
        return set()
    named: set[str] = set()
    entries = call.body.get("entry") if isinstance(call.body, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        request = entry.get("request") if isinstance(entry, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        if isinstance(url, str):
            named |= _reference(url)
    return named


def answered(answer: Answer) -> set[str]:
    """``Type/id`` of each resource a write's answer names (``Location``; a transaction's
    entries' ``response.location``)."""
    named = _reference(answer.headers.get("Location", ""))
    entries = (answer.body or {}).get("entry")
    for entry in entries if isinstance(entries, list) else ():
        response = entry.get("response") if isinstance(entry, dict) else None
        location = response.get("location") if isinstance(response, dict) else None
        if isinstance(location, str):
            named |= _reference(location)
    return named


def _reference(url: str) -> set[str]:
    """``Type/id`` of a resource URL (relative, absolute, or with ``_history``), if it is one."""
    path = url.split("?", 1)[0].rstrip("/")
    parts = path.split("/")
    for at in range(len(parts) - 1):
        try:
            interaction = parse("GET", "/".join(parts[at:]))
        except FhirError:
            continue
        if interaction.kind in _READS and interaction.resource_type and interaction.resource_id:
            return {f"{interaction.resource_type}/{interaction.resource_id}"}
    return set()


def _is(body: dict[str, Any] | None, resource_type: str, resource_id: str) -> bool:
    """Whether an answer is the resource that was read (only that is cached under its name)."""
    return body is not None and (body.get("resourceType"), body.get("id")) == (
        resource_type,
        resource_id,
    )


def _kept(upstream: UpstreamResponse) -> dict[str, str]:
    """The upstream's headers a hit is answered with: what the caller may see, and the type."""
    headers = response_headers(upstream.headers)
    headers["Content-Type"] = upstream.headers.get("Content-Type", "application/fhir+json")
    return headers


class CachingFetcher(Fetcher):
    """The fetcher of the pipeline when the cache is on (the module's docstring)."""

    def __init__(
        self,
        upstream: Upstream,
        rewriter: UrlRewriter,
        metrics: Metrics,
        cache: ResourceCache,
        epochs: ChangeEpochs,
    ) -> None:
        super().__init__(upstream, rewriter, metrics)
        self._cache = cache
        self._epochs = epochs
        self._lookups = Coalescer(cache.lookup_many)

    async def fetch(self, call: Call) -> Answer:
        kind = call.interaction.kind
        if cacheable(call):
            return await self._read(call)
        if kind in WRITE_KINDS or kind is Kind.TRANSACTION:
            return await self._write(call)
        return await super().fetch(call)

    async def _read(self, call: Call) -> Answer:
        interaction = call.interaction
        rtype, rid = interaction.resource_type, interaction.resource_id
        assert rtype is not None and rid is not None
        read = CachedRead(rtype, rid, interaction.version_id)
        try:
            epochs = await self._epochs.current()
        except PyMongoError:
            return await super().fetch(call)  # the cache cannot be trusted without its counters
        self._cache.observe(epochs.cache, epochs.cache_keys)
        lookup = await self._cache.recent(read) or (await self._lookups.get_many([read]))[read]
        hit, label = lookup.hit, interaction.kind.value
        if hit is not None and hit.fresh:
            self._metrics.cache_hits.labels(label).inc()
            return self._answer(hit)
        headers = call.headers
        if hit is not None and hit.etag:
            headers = call.headers.copy()
            headers["If-None-Match"] = hit.etag
        upstream = await self.send(call.but(headers=headers))
        if hit is not None and upstream.status == 304:
            self._metrics.cache_revalidations.labels("unchanged").inc()
            await self._cache.revalidated(lookup)
            return self._answer(hit)
        if hit is not None:
            self._metrics.cache_revalidations.labels("changed").inc()
        else:
            self._metrics.cache_misses.labels(label).inc()
        answer = self.decode(upstream)
        if answer.status in (404, 410):
            await self._cache.discard(lookup)
        elif _is(answer.body, rtype, rid) and answer.status == 200:
            assert answer.body is not None
            owner = owner_of(answer.body, upstream.body)
            version = (answer.body.get("meta") or {}).get("versionId")
            if owner is not None and isinstance(version, str):
                await self._cache.store(
                    lookup,
                    owner=owner,
                    version=version,
                    body=upstream.body,
                    headers=_kept(upstream),
                )
        return answer

    def _answer(self, hit: Hit) -> Answer:
        """A hit, decoded as the upstream's answer would be."""
        headers = CIMultiDictProxy(CIMultiDict(hit.headers))
        return self.decode(UpstreamResponse(200, headers, hit.body, 0.0))

    async def _write(self, call: Call) -> Answer:
        """The write, then its resources invalidated. Invalidating after the upstream answered is
        what matters: a read that fetched the old version before that moment cannot store it
        after (the generation moved), and any entry stored before is replaced by a tombstone. A
        write that failed or timed out may have been made all the same: invalidated too."""
        try:
            answer = await super().fetch(call)
        except Exception:
            await self._invalidate(written(call))
            raise
        await self._invalidate(written(call) | answered(answer))
        return answer

    async def _invalidate(self, references: Iterable[str]) -> None:
        """Invalidate; when MongoDB fails here the write stands and is answered, and the old
        entry may be served until its TTL ends, as after a change made behind the gateway."""
        wanted = sorted(references)
        if not wanted:
            return
        try:
            await self._cache.invalidate(wanted)
        except PyMongoError as exc:
            log.error("a write's cache entries could not be invalidated (%s)", type(exc).__name__)
