"""The FHIR request pipeline (DESIGN.md "The request pipeline"), read top to bottom in
:meth:`Pipeline.handle` and :meth:`Pipeline.run`:

1. ``authenticate``  the bearer token → :class:`AccessContext` (``authenticate.py``), then the
                     app's rate limit and, for a parent acting for a child, that the link still
                     holds (``representation.py``)
2. ``parse``         the request → a :class:`Call` (``interaction.py``, ``bodies.py``)
3. ``authorize``     scopes + compartment → allowed and narrowed, or refused (``access.py``); a
                     followed paging link carries its search's decision (``paging.py``)
4. ``consent``       the patients' consents (``consent_gate.py``): read before the fetch when the
                     patients are known, decided per resource at release; a write is checked
                     whole before it is sent (``writes.py``). Consent itself is ``consent_api.py``
5. ``fetch``         the upstream (``fetch.py``); a read runs concurrently with the revocation
                     check and the consent read, a write waits for the revocation check
6. ``release``       every resource checked again, decided by consent, minimised, shaped; totals,
                     contained, includes; paging links sealed (``release.py``)
7. ``audit``         one AuditEvent per patient whose data the request touched, refusals included,
                     durable before the response goes (``auditing.py``, ``gateway.audit``)
8. respond, with the CORS headers the caller's origin is entitled to (``gateway.web.cors``)

``metadata`` is public (S-07/S-08): it needs no token (``metadata.py``). A batch runs each entry
through steps 3 to 6; a transaction checks every entry through the write policy first
(``batch.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict

from gateway.audit.log import AuditLog
from gateway.fhir import auditing
from gateway.fhir.access import AccessDecision, authorize
from gateway.fhir.audit_api import AuditApi
from gateway.fhir.authenticate import Authenticator
from gateway.fhir.batch import Bundles
from gateway.fhir.bodies import read_body, read_form
from gateway.fhir.consent_api import ConsentApi
from gateway.fhir.consent_gate import ConsentGate, refused
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.interaction import WRITE_KINDS, Kind, parse
from gateway.fhir.metadata import capabilities
from gateway.fhir.paging import PageSealer
from gateway.fhir.ratelimit import ClusterRateLimit
from gateway.fhir.release import Release, conditional, read_call
from gateway.fhir.representation import REPRESENTATION_TYPES, Representation
from gateway.fhir.writes import WritePolicy
from gateway.proxy.answer import Answer
from gateway.proxy.headers import request_headers
from gateway.proxy.negotiation import negotiate
from gateway.settings import Settings
from gateway.web.cors import Cors
from gateway.web.errors import FhirError, Forbidden, TooManyRequests, Unauthorized
from gateway.web.requestkeys import CALLER, CLIENT_ID, METRIC_LABEL, REQUEST_ID
from smart_auth.discovery import Endpoints


class Pipeline:
    """The FHIR API: every request under ``/fhir`` goes through :meth:`handle`."""

    def __init__(
        self,
        settings: Settings,
        *,
        authenticator: Authenticator,
        representation: Representation,
        fetcher: Fetcher,
        consent: ConsentGate,
        consents: ConsentApi,
        audit_events: AuditApi,
        pages: PageSealer,
        release: Release,
        writes: WritePolicy,
        cors: Cors,
        rate_limit: ClusterRateLimit,
        audit: AuditLog,
    ) -> None:
        self._settings = settings
        self._audit = audit
        self._authenticator = authenticator
        self._representation = representation
        self._fetcher = fetcher
        self._consent = consent
        self._consents = consents
        self._audit_events = audit_events
        self._pages = pages
        self._release = release
        self._writes = writes
        self._cors = cors
        self._endpoints = Endpoints(settings.public_base_url, settings.fhir_base_url)
        self._bundles = Bundles(
            self.run,
            writes,
            fetcher,
            release,
            representation,
            authenticator.is_revoked,
            fhir_base=settings.fhir_base_url,
            max_entries=settings.max_batch_entries,
            concurrency=settings.batch_concurrency,
        )
        self._rate_limit = rate_limit

    @property
    def pages(self) -> PageSealer:
        """What seals and opens this gateway's paging links."""
        return self._pages

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """A request, with the CORS headers its origin is entitled to (S-07), errors included."""
        if request.method == "OPTIONS":
            return await self._cors.preflight(request)
        if request.match_info.get("path", "") == "metadata":  # public, for any origin (S-08)
            request[METRIC_LABEL] = Kind.CAPABILITIES.value
            negotiate(request)
            return (await capabilities(self._fetcher, self._endpoints, request.method)).render()
        path = request.match_info.get("path", "")
        audit = auditing.RequestAudit(
            method=request.method,
            path="_page" if path.startswith("_page/") else path,  # never a link's token
            query=_without_token(request.query.items()),
            address=request.get(CALLER) or request.remote or "",
            request_id=request.get(REQUEST_ID),
        )
        try:
            with auditing.recording(audit):
                response = await self._handle(request, audit)
            await self._audit.record_request(audit.facts(response.status))  # 7
        except FhirError as exc:
            _interaction_of_refused(request, audit)
            await self._audit.record_request(audit.facts(exc.status, exc.diagnostics))
            if "Origin" in request.headers:
                exc.headers.update(await self._cors.headers(request, request.get(CLIENT_ID)))
            raise
        except Exception:
            _interaction_of_refused(request, audit)
            await self._audit.record_request(audit.facts(500, "the gateway failed"))
            raise
        if "Origin" in request.headers:
            response.headers.update(await self._cors.headers(request, request.get(CLIENT_ID)))
        return response

    async def _handle(
        self, request: web.Request, audit: auditing.RequestAudit
    ) -> web.StreamResponse:
        request[METRIC_LABEL] = "fhir"
        negotiate(request)
        path = request.match_info.get("path", "")
        # 1. authenticate
        context = await self._authenticator.authenticate(request.headers, request.query)
        audit.context = context
        request[CLIENT_ID] = context.client_id
        await self._within_rate_limit(context)
        await self._representation.check(context)  # C-25: a parent still acts for the child
        # 2. parse
        form = await read_form(request)
        if form:
            audit.query = _without_token(form)
        interaction = parse(request.method, path, request.query.items(), form)
        audit.interaction = interaction.kind.value
        audit.resource_type = interaction.resource_type
        audit.resource_id = interaction.resource_id
        audit.version_id = interaction.version_id
        if interaction.kind in WRITE_KINDS or interaction.kind is Kind.OPERATION:
            authorize(context, interaction)  # a token that may not write is refused unread
        interaction, body, raw, media = await read_body(request, interaction)
        request[METRIC_LABEL] = interaction.kind.value
        call = Call(
            interaction=interaction,
            body=body,
            raw=raw,
            media=media,
            headers=CIMultiDict(request_headers(request.headers)),
            self_url=self._settings.public_base_url + request.path_qs,
        )
        # 3 to 6, with the revocation check: a read changes nothing upstream, so it is fetched
        # while revocation is checked and released only after; anything else waits for it.
        if interaction.kind in WRITE_KINDS or interaction.kind in (Kind.BATCH, Kind.TRANSACTION):
            await self._not_revoked(context)
            return (await self.run(context, call, _connected(request))).render()
        revoked = asyncio.ensure_future(self._authenticator.is_revoked(context))
        try:
            answer = await self.run(context, call)
        except FhirError:
            await self._not_revoked(context, revoked)
            raise
        except BaseException:
            revoked.cancel()
            raise
        await self._not_revoked(context, revoked)
        return answer.render()

    async def run(
        self, context: AccessContext, call: Call, alive: Callable[[], bool] = lambda: True
    ) -> Answer:
        """Steps 3 to 6 for one call: a request, or an entry of a batch (``alive``: whether the
        caller is still there, for the long ones)."""
        kind = call.interaction.kind
        if kind is Kind.BATCH:
            return await self._bundles.batch(context, call, alive)
        if kind is Kind.TRANSACTION:
            return await self._bundles.transaction(context, call)
        if call.interaction.resource_type == "Consent":
            return await self._consents.handle(context, call.interaction, call.body, call.headers)
        if call.interaction.resource_type == "AuditEvent":  # the audit log, from MongoDB
            return await self._audit_events.handle(context, call)
        if kind is Kind.PAGE:  # 3: the decision its search had, bound to this token
            assert call.interaction.page is not None
            page = self._pages.open(call.interaction.page, context)
            audit = auditing.current()
            if audit is not None:  # the search it continues, never the link's token
                audit.path, _, audit.query = page.upstream.lstrip("/").partition("?")
            answer = await self._fetcher.follow(page.upstream)
            if answer.status < 400 and (answer.body or {}).get("resourceType") != "Bundle":
                raise Forbidden("this paging link does not lead to a Bundle")
            consent = await self._consent.start(context)
            return await self._release.answer(
                page.decision(context),
                answer,
                consent,
                self_url=call.self_url,
                shaping=page.shaping,
            )
        decision = authorize(context, call.interaction)  # 3
        if kind in WRITE_KINDS:
            return await self._write(context, decision, call)
        if kind is Kind.OPERATION and call.interaction.operation == "validate":
            return await self._validate(decision, call)
        return await self._read(context, decision, call)

    async def _read(self, context: AccessContext, decision: AccessDecision, call: Call) -> Answer:
        sent, shaping = read_call(call, decision)
        consent = await self._consent.start(context)  # 4, meanwhile 5
        answer, refusal = await asyncio.gather(
            self._fetcher.fetch(sent), self._consent.refusal(consent, decision, call.interaction)
        )
        if refusal is not None:
            return refused(refusal, decision.interaction.kind)
        released = await self._release.answer(  # 6
            decision, answer, consent, self_url=call.self_url, shaping=shaping
        )
        return conditional(released, call.headers)

    async def _write(self, context: AccessContext, decision: AccessDecision, call: Call) -> Answer:
        decision, call = await self._writes.prepare(context, decision, call)
        headers = await self._writes.check(context, decision, call)  # 3 and 4, before sending
        answer = await self._fetcher.fetch(
            call.but(interaction=decision.interaction, headers=headers)
        )
        if decision.interaction.resource_type in REPRESENTATION_TYPES and answer.status < 300:
            await self._representation.changed()
        return await self._release.written(context, decision, answer)

    async def _validate(self, decision: AccessDecision, call: Call) -> Answer:
        """``$validate`` writes nothing and answers an OperationOutcome about the caller's own
        body; any other answer is not passed on."""
        await self._writes.check_validate(decision)
        answer = await self._fetcher.fetch(call)
        if answer.body is not None and answer.body.get("resourceType") != "OperationOutcome":
            answer.body = None
        return answer

    async def _not_revoked(
        self, context: AccessContext, pending: asyncio.Future[bool] | None = None
    ) -> None:
        revoked = await pending if pending is not None else None
        if revoked is None:
            revoked = await self._authenticator.is_revoked(context)
        if revoked:
            raise Unauthorized("the access token has been revoked")

    async def _within_rate_limit(self, context: AccessContext) -> None:
        wait = await self._rate_limit.hit(context.client_id)
        if wait is not None:
            raise TooManyRequests(
                f"too many requests from this app; try again in {wait} s", retry_after=wait
            )


def _interaction_of_refused(request: web.Request, audit: auditing.RequestAudit) -> None:
    """For the record of a request refused before it was parsed (a missing token, the rate
    limit): what it asked for, as far as its method and path say; an operation if they say
    nothing the gateway understands."""
    if audit.interaction != "unknown":
        return
    try:
        interaction = parse(request.method, audit.path, request.query.items(), [])
    except FhirError:
        audit.interaction = Kind.OPERATION.value
        return
    audit.interaction = interaction.kind.value
    audit.resource_type = interaction.resource_type
    audit.resource_id = interaction.resource_id
    audit.version_id = interaction.version_id


def _without_token(params: Iterable[tuple[str, str]]) -> str:
    """The query as the audit record keeps it: never a token (A-03)."""
    return urlencode([(k, v) for k, v in params if k != "access_token"])


def _connected(request: web.Request) -> Callable[[], bool]:
    def alive() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    return alive
