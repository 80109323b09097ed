"""The FHIR request pipeline (DESIGN.md "The request pipeline"), read top to bottom in
:meth:`Pipeline.handle`:

1. ``authenticate``  the bearer token → :class:`AccessContext` (``authenticate.py``)
2. ``parse``         the request → :class:`FhirInteraction` (``interaction.py``, ``content.py``)
3. ``authorize``     scopes + compartment → allowed and narrowed, or refused (``access.py``)
4. ``consent``       the patients' consents, decided per resource after the scope check, and
                     minimisation (``consent_gate.py``); Consent itself is ``consent_api.py``
5. ``fetch``         the upstream (``upstream.py``); reads run concurrently with the revocation
                     check and the consent read, writes wait for the revocation check
6. ``filter``        every released resource checked again; totals, contained, includes; paging
                     links replaced by signed ones (``filtering.py``, ``paging.py``)
7. (audit)           not built yet: releases are not yet recorded
8. respond, with the CORS headers the caller's origin is entitled to (``cors.py``)

``metadata`` is public (S-07/S-08): it needs no token. Batches are run entry by entry through the
same steps (S-29); a transaction is authorized entry by entry first and sent only when every entry
is allowed.
"""

from __future__ import annotations

import asyncio
import http
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from aiohttp import web
from limits import parse as parse_limit
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from multidict import CIMultiDict

from consent.decide import Decision
from consent.subsetting import apply_elements, apply_summary
from gateway.fhir import compartment, writes
from gateway.fhir.access import SEE, AccessDecision, AccessPolicy, authorize
from gateway.fhir.authenticate import Authenticator
from gateway.fhir.bodies import (
    FORM,
    JSON_PATCH,
    MERGE_PATCH,
    check_resource_body,
    read_body,
    read_form,
)
from gateway.fhir.consent_api import ConsentApi
from gateway.fhir.consent_gate import ConsentGate, RequestConsent
from gateway.fhir.context import AccessContext
from gateway.fhir.filtering import filter_bundle, release_resource
from gateway.fhir.interaction import (
    HISTORY_KINDS,
    WRITE_KINDS,
    FhirInteraction,
    Kind,
    parse,
)
from gateway.fhir.narrowing import patient_id
from gateway.fhir.paging import PageLink, PageSigner
from gateway.fhir.representation import REPRESENTATION_TYPES, Representation
from gateway.proxy.answer import Answer, decode_answer
from gateway.proxy.headers import request_headers
from gateway.proxy.negotiation import negotiate
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import Upstream
from gateway.settings import Settings
from gateway.web.cors import Cors
from gateway.web.errors import (
    FHIR_JSON,
    BadRequest,
    Conflict,
    FhirError,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from gateway.web.metrics import Metrics
from gateway.web.requestkeys import CLIENT_ID, METRIC_LABEL, REQUEST_ID
from smart_auth.scopes import Letter

_READS = frozenset({Kind.READ, Kind.VREAD})
_VALIDATE: frozenset[Letter] = frozenset({"c", "u"})
_MAX_CONTEXTS = 20
_LOCAL_SHAPING = frozenset({"_elements", "_summary"})
_PAGE_RELATIONS = frozenset({"next", "previous", "prev", "first", "last"})
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})
_WRITE_ACTIONS: dict[Kind, str] = {  # consentaction codes (C-24)
    Kind.CREATE: "collect",
    Kind.UPDATE: "correct",
    Kind.PATCH: "correct",
    Kind.DELETE: "correct",
}
_WRITE_LETTERS: dict[Kind, frozenset[Letter]] = {
    Kind.CREATE: frozenset({"c"}),
    Kind.UPDATE: frozenset({"u"}),
    Kind.PATCH: frozenset({"u"}),
    Kind.DELETE: frozenset({"d"}),
}


@dataclass(frozen=True, slots=True)
class Call:
    """One interaction to run: a whole request, or one entry of a batch."""

    interaction: FhirInteraction
    body: Any = None
    raw: bytes | None = None
    media: str | None = None
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    self_url: str = ""


class Pipeline:
    """The FHIR API: every request under ``/fhir`` goes through :meth:`handle`."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        rewriter: UrlRewriter,
        authenticator: Authenticator,
        signer: PageSigner,
        metrics: Metrics,
        consent: ConsentGate,
        consents: ConsentApi,
        cors: Cors,
        representation: Representation,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.rewriter = rewriter
        self.authenticator = authenticator
        self.signer = signer
        self.metrics = metrics
        self.consent = consent
        self.consents = consents
        self.cors = cors
        self.representation = representation
        self._limit = parse_limit(settings.rate_limit_per_client)
        self._limiter = FixedWindowRateLimiter(MemoryStorage())

    # --- the request -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """A request, with the CORS headers its origin is entitled to (S-07), errors included."""
        if request.method == "OPTIONS":
            return await self.cors.preflight(request)
        try:
            response = await self._handle(request)
        except FhirError as exc:
            if "Origin" in request.headers:
                exc.headers.update(await self.cors.headers(request, request.get(CLIENT_ID)))
            raise
        if "Origin" in request.headers:
            response.headers.update(await self.cors.headers(request, request.get(CLIENT_ID)))
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request[METRIC_LABEL] = "fhir"
        negotiate(request)
        path = request.match_info.get("path", "")
        if path == "metadata":
            interaction = parse(request.method, path)
            request[METRIC_LABEL] = interaction.kind.value
            return (await self._fetch(Call(interaction), request[REQUEST_ID])).render()

        context = await self.authenticator.authenticate(request.headers, request.query)
        request[CLIENT_ID] = context.client_id
        await self._rate_limit(context)
        await self.representation.check(context)  # C-25: a parent still acts for the child
        form = await read_form(request)
        interaction = parse(request.method, path, request.query.items(), form)
        interaction, body, raw, media = await read_body(request, interaction)
        request[METRIC_LABEL] = interaction.kind.value
        call = Call(
            interaction,
            body,
            raw,
            media,
            CIMultiDict(request_headers(request.headers)),
            self.settings.public_base_url + request.path_qs,
        )
        request_id = request[REQUEST_ID]
        if interaction.kind in WRITE_KINDS or interaction.kind in (Kind.BATCH, Kind.TRANSACTION):
            await self._not_revoked(context)
            return (await self._run(context, call, request_id)).render()
        # A read changes nothing upstream: fetch while checking revocation, release only after.
        revoked = asyncio.ensure_future(self.authenticator.is_revoked(context))
        try:
            answer = await self._run(context, call, request_id)
        except FhirError:
            if await revoked:
                raise Unauthorized("the access token has been revoked") from None
            raise
        except BaseException:
            revoked.cancel()
            raise
        if await revoked:
            raise Unauthorized("the access token has been revoked")
        return answer.render()

    async def _not_revoked(self, context: AccessContext) -> None:
        if await self.authenticator.is_revoked(context):
            raise Unauthorized("the access token has been revoked")

    async def _rate_limit(self, context: AccessContext) -> None:
        if not await self._limiter.hit(self._limit, context.client_id):
            stats = await self._limiter.get_window_stats(self._limit, context.client_id)
            wait = max(1, int(stats.reset_time - time.time()) + 1)
            raise TooManyRequests(
                f"too many requests from this app; try again in {wait} s", retry_after=wait
            )

    async def _run(self, context: AccessContext, call: Call, request_id: str) -> Answer:
        kind = call.interaction.kind
        if kind is Kind.BATCH:
            return await self._batch(context, call, request_id)
        if kind is Kind.TRANSACTION:
            return await self._transaction(context, call, request_id)
        if kind is Kind.PAGE:
            return await self._page(context, call, request_id)
        if call.interaction.resource_type == "Consent":
            return await self.consents.handle(
                context, _consent_interaction(call.interaction), call.body, call.headers
            )
        decision = authorize(context, call.interaction)
        if kind in WRITE_KINDS:
            return await self._write(context, decision, call, request_id)
        if kind is Kind.OPERATION and call.interaction.operation == "validate":
            return await self._validate(decision, call, request_id)
        return await self._read(context, decision, call, request_id)

    async def _validate(self, decision: AccessDecision, call: Call, request_id: str) -> Answer:
        """``$validate`` writes nothing and answers an OperationOutcome about the caller's own
        body; any other answer is not passed on. On an instance, the instance must be one the
        token could update: the same answer as for a resource that does not exist otherwise."""
        interaction = call.interaction
        if interaction.resource_id is not None:
            restricted = any(
                s.restriction for s in decision.policy.scopes_for(interaction, _VALIDATE)
            )
            if decision.patient_only or restricted:
                current = await self._current(interaction, request_id)
                if current is None or not decision.policy.permits(current, _VALIDATE):
                    raise NotFound("no such resource is available to this access token")
        answer = await self._fetch(call, request_id)
        if answer.body is not None and answer.body.get("resourceType") != "OperationOutcome":
            answer.body = None
        return answer

    # --- reads -------------------------------------------------------------------------------

    async def _read(
        self, context: AccessContext, decision: AccessDecision, call: Call, request_id: str
    ) -> Answer:
        interaction = decision.interaction
        shaping = [(k, v) for k, v in interaction.params if k in _LOCAL_SHAPING]
        if ("_summary", "count") in shaping:
            # Consent (and often scopes) withhold resources the upstream would count (C-18).
            raise Forbidden(
                "_summary=count is not available through this gateway: the count could include "
                "resources this app may not see; count the entries of a search instead"
            )
        upstream_params = [(k, v) for k, v in interaction.params if k not in _LOCAL_SHAPING]
        # Conditional reads are answered here, after the checks: the upstream's 304 would
        # confirm a resource (and give its version) before anything was checked.
        headers = CIMultiDict(
            (k, v) for k, v in call.headers.items() if k.lower() not in _CONDITIONAL
        )
        consent = await self.consent.start(context)
        fetch = self._fetch(
            Call(interaction.with_params(upstream_params), None, None, None, headers), request_id
        )
        named = _named_patients(call.interaction)
        if decision.patient_only:  # the patients asked about, else every one the token reaches
            patients = sorted(context.patients.intersection(named) or context.patients)
        else:
            patients = sorted(named)
        if not patients:
            answer = await fetch
        else:
            # The patients are known before the fetch: read their consents meanwhile.
            answer, _ = await asyncio.gather(fetch, self.consent.load(consent, patients))
            refusal = (
                consent.refusal(patients)
                if interaction.resource_type is None
                or compartment.is_compartment_type(interaction.resource_type)
                else None  # Practitioner, Medication...: no patient data, no consent needed
            )
            if refusal is not None:
                if interaction.kind in _READS:
                    raise Forbidden(_explain(refusal))
                return _refused_search(refusal)
        released = await self._release(
            decision, answer, call.self_url, consent, request_id, shaping
        )
        return _conditional(released, call.headers)

    async def _release(
        self,
        decision: AccessDecision,
        answer: Answer,
        self_url: str,
        consent: RequestConsent,
        request_id: str,
        shaping: list[tuple[str, str]] | None = None,
    ) -> Answer:
        kind = decision.interaction.kind
        if answer.status >= 400 or answer.body is None:
            if (
                decision.patient_only
                and answer.status in (404, 410)
                and kind in _READS | HISTORY_KINDS | {Kind.OPERATION}
            ):
                raise NotFound("no such resource is available to this access token")
            return answer
        body = answer.body
        if body.get("resourceType") == "OperationOutcome":
            return answer
        if decision.patient_only:
            decision.policy.note_response(answer.raw)
        await self._read_contexts(decision.policy, body, request_id)
        consent.contexts = decision.policy.contexts
        if body.get("resourceType") == "Bundle" and kind not in _READS:
            resources = [e["resource"] for e in body.get("entry") or [] if "resource" in e]
            await self.consent.load_for(consent, resources, decision.policy.owners_of)
            filter_bundle(
                body, decision.policy, decision.letters, exact_total=False, then=consent.release
            )
            if kind is Kind.HISTORY_INSTANCE and decision.patient_only and not body.get("entry"):
                raise NotFound("no such resource is available to this access token")
            self._sign_links(body, decision, self_url, shaping or [])
            if shaping:
                for entry in body.get("entry", []):
                    resource = entry.get("resource")
                    if isinstance(resource, dict) and resource.get("resourceType") != (
                        "OperationOutcome"
                    ):
                        entry["resource"] = _shape(resource, shaping)
            return answer
        if release_resource(body, decision.policy, decision.letters) is None:
            raise NotFound("no such resource is available to this access token")
        owners = decision.policy.owners_of(body)
        await self.consent.load(consent, owners)
        released = consent.release(body, owners)
        if released is None:
            refusal = consent.last_refusal()
            raise Forbidden(_explain(refusal) if refusal else "withheld by the patient's consent")
        answer.body = _shape(released, shaping or [])
        return answer

    async def _read_contexts(
        self, policy: AccessPolicy, body: dict[str, Any], request_id: str
    ) -> None:
        """Read the resources that the Binaries of a response name as their security context
        (other than a Patient), so that each Binary is attributed to, and decided as, that
        resource (C-27). One read per distinct context, at most ``_MAX_CONTEXTS`` per response;
        a Binary whose context was not read is withheld."""
        found = [body] if body.get("resourceType") == "Binary" else []
        if body.get("resourceType") == "Bundle":
            found += [
                e["resource"]
                for e in body.get("entry") or []
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == "Binary"
            ]
        wanted = {
            ref
            for ref in (compartment.security_context(b) for b in found)
            if ref is not None and not ref.startswith("Patient/") and ref not in policy.contexts
        }
        for reference in sorted(wanted)[:_MAX_CONTEXTS]:
            rtype, _, rid = reference.partition("/")
            try:
                read = parse("GET", f"{rtype}/{rid}")
            except FhirError:
                policy.contexts[reference] = None
                continue
            answer = await self._fetch(Call(read), request_id)
            policy.contexts[reference] = answer.body if answer.status == 200 else None

    def _sign_links(
        self,
        bundle: dict[str, Any],
        decision: AccessDecision,
        self_url: str,
        shaping: list[tuple[str, str]],
    ) -> None:
        interaction = decision.interaction
        links: list[dict[str, str]] = [{"relation": "self", "url": self_url}] if self_url else []
        for link in bundle.get("link") or []:
            relation, url = link.get("relation"), link.get("url")
            if relation not in _PAGE_RELATIONS or not isinstance(url, str):
                continue
            relative = self.rewriter.relative_to_public(url)
            if relative is None:
                continue
            page = PageLink(
                relative,
                interaction.kind.value,
                interaction.resource_type,
                "".join(sorted(decision.letters)),
                decision.exact_total,
                tuple(shaping),
            )
            token = self.signer.sign(page, decision.policy.context)
            links.append(
                {"relation": relation, "url": f"{self.settings.fhir_base_url}/_page/{token}"}
            )
        if links:
            bundle["link"] = links
        else:
            bundle.pop("link", None)

    async def _page(self, context: AccessContext, call: Call, request_id: str) -> Answer:
        assert call.interaction.page is not None
        page = self.signer.open(call.interaction.page, context)
        letters: frozenset[Letter] = frozenset(page.letters)  # type: ignore[arg-type]
        interaction = FhirInteraction(Kind(page.kind), "GET", page.resource_type, params=())
        decision = AccessDecision(
            interaction, AccessPolicy(context), letters, page.exact_total, False
        )
        upstream = await self.upstream.send(
            "GET", "", url=self.upstream.link_url(page.upstream), request_id=request_id
        )
        answer = decode_answer(upstream, self.rewriter)
        if (
            answer.body is not None
            and answer.body.get("resourceType") != "Bundle"
            and answer.status < 400
        ):
            raise Forbidden("this paging link does not lead to a Bundle")
        consent = await self.consent.start(context)
        return await self._release(
            decision, answer, call.self_url, consent, request_id, list(page.shaping)
        )

    # --- writes ------------------------------------------------------------------------------

    async def _current(
        self, interaction: FhirInteraction, request_id: str
    ) -> dict[str, Any] | None:
        read = FhirInteraction(Kind.READ, "GET", interaction.resource_type, interaction.resource_id)
        answer = await self._fetch(Call(read), request_id)
        return answer.body if answer.status == 200 else None

    async def _check_write(
        self, context: AccessContext, decision: AccessDecision, call: Call, request_id: str
    ) -> CIMultiDict[str]:
        """Everything a write must pass before it is sent (alone or in a transaction); returns
        the headers to send, with ``If-Match`` pinned to the version that was checked."""
        interaction, kind = decision.interaction, decision.interaction.kind
        policy = decision.policy
        letters = _WRITE_LETTERS[kind]
        headers = call.headers.copy()
        if interaction.resource_type == "Consent":
            raise BadRequest("Consents are written through /fhir/Consent, one at a time")
        if kind in (Kind.CREATE, Kind.UPDATE):
            writes.validate(call.body)
        if kind is Kind.PATCH:
            if call.media != JSON_PATCH:
                raise UnsupportedMediaType(f"patches here are JSON Patch ({JSON_PATCH})")
            writes.check_patch_operations(call.body)
        restricted = any(s.restriction for s in policy.scopes_for(interaction, letters))
        if decision.patient_only and "If-None-Exist" in headers:
            raise Forbidden("conditional creates are not available to patient-context tokens")
        current: dict[str, Any] | None = None
        if kind is not Kind.CREATE:
            # Whose record this is decides the consent (C-24), whatever the token.
            current = await self._current(interaction, request_id)
            # An update that would create is answered like an update of someone else's resource:
            # otherwise the difference would tell which ids exist.
            if (decision.patient_only or restricted) and (
                current is None or not policy.permits(current, letters)
            ):
                raise NotFound("no such resource is available to this access token")
            version = ((current or {}).get("meta") or {}).get("versionId")
            if version and "If-Match" not in headers:
                headers["If-Match"] = f'W/"{version}"'
        after = call.body if kind in (Kind.CREATE, Kind.UPDATE) else None
        if kind is Kind.PATCH and current is not None:
            after = writes.apply_patch(current, call.body)
            if after.get("id") != current.get("id"):
                raise Forbidden("a patch cannot change the resource's id")
        if decision.patient_only and current is not None and after is not None:
            writes.check_authority_unchanged(current, after)
        if after is not None and (decision.patient_only or restricted):
            if decision.patient_only:
                writes.check_conditional_references(after)
                if compartment.patient_references(after) - context.patients:  # contained too
                    raise Forbidden("this write would name a patient outside this token's access")
            if not policy.permits(after, letters):
                raise Forbidden(
                    f"this {interaction.resource_type} would fall outside what this access token "
                    "may write (its patients, or its scope's restriction)"
                )
        await self._check_write_consent(context, kind, [r for r in (current, after) if r])
        return headers

    async def _check_write_consent(
        self, context: AccessContext, kind: Kind, resources: list[dict[str, Any]]
    ) -> None:
        """C-24: the patients whose record a write touches (before and after it) must consent to
        this app doing it, exactly as for a read, before anything reaches the upstream."""
        consent = await self.consent.start(context, _WRITE_ACTIONS[kind])
        for resource in resources:
            owners = compartment.patients_of(resource)
            if not owners:
                continue  # no patient's data: scopes alone decide
            await self.consent.load(consent, owners)
            refusal = consent.refusal_for(resource, owners)
            if refusal is not None:
                raise Forbidden(_explain(refusal))

    async def _write(
        self, context: AccessContext, decision: AccessDecision, call: Call, request_id: str
    ) -> Answer:
        if call.media == MERGE_PATCH:
            decision, call = await self._merge_patch_as_update(context, call, request_id)
        headers = await self._check_write(context, decision, call, request_id)
        interaction = decision.interaction
        answer = await self._fetch(
            Call(interaction, call.body, call.raw, call.media, headers), request_id
        )
        if interaction.resource_type in REPRESENTATION_TYPES and answer.status < 300:
            await self.representation.changed()
        return await self._release_written(context, decision, answer, request_id)

    async def _merge_patch_as_update(
        self, context: AccessContext, call: Call, request_id: str
    ) -> tuple[AccessDecision, Call]:
        """A JSON Merge Patch is applied here to the current resource and sent as an update of
        that version, pinned with ``If-Match``: the upstreams (Medplum's router, HAPI) take JSON
        Patch but not merge patch. A resource the token may not update is answered as missing
        before anything of it is merged; the update then passes every check an update passes."""
        patch = call.interaction
        writes.check_merge_patch(call.body, patch.resource_type, patch.resource_id)
        update = FhirInteraction(Kind.UPDATE, "PUT", patch.resource_type, patch.resource_id)
        decision = authorize(context, update)
        current = await self._current(patch, request_id)
        if current is None or not decision.policy.permits(current, _WRITE_LETTERS[Kind.UPDATE]):
            raise NotFound("no such resource is available to this access token")
        version = (current.get("meta") or {}).get("versionId")
        if not version:
            raise Conflict("the resource has no version to apply a merge patch to")
        after = writes.merge_patch(current, call.body)
        headers = call.headers.copy()
        headers.setdefault("If-Match", f'W/"{version}"')
        return decision, Call(update, after, orjson.dumps(after), FHIR_JSON, headers)

    async def _release_written(
        self, context: AccessContext, decision: AccessDecision, answer: Answer, request_id: str
    ) -> Answer:
        """What a write answers goes through the same checks as a read (scopes, consent,
        minimisation); what the token may not read is left out of the body."""
        body = answer.body
        if body is None or answer.status >= 300 or body.get("resourceType") == "OperationOutcome":
            return answer
        read = AccessDecision(
            FhirInteraction(Kind.READ, "GET", body.get("resourceType")),
            decision.policy,
            SEE,
            False,
            decision.patient_only,
        )
        consent = await self.consent.start(context)
        try:
            released = await self._release(read, Answer(200, {}, body), "", consent, request_id)
        except FhirError:
            answer.body = None
            return answer
        answer.body = released.body
        return answer

    # --- batch and transaction (S-29) --------------------------------------------------------

    def _entry_call(self, entry: Any) -> Call:
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise BadRequest("every entry needs a request")
        request = entry["request"]
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        if url.startswith(self.settings.fhir_base_url):
            url = url[len(self.settings.fhir_base_url) :]
        parts = urlsplit(url.lstrip("/"))
        if parts.scheme or parts.netloc:
            raise BadRequest("an entry's URL must be relative to this server's base")
        query = parse_qsl(parts.query, keep_blank_values=True)
        interaction = parse(method, parts.path, query)
        if interaction.kind in (Kind.BATCH, Kind.TRANSACTION, Kind.PAGE):
            raise BadRequest("an entry cannot be a batch, a transaction or a paging link")
        resource = entry.get("resource")
        if interaction.kind in (Kind.CREATE, Kind.UPDATE):
            check_resource_body(interaction, resource)
        raw = None
        media = None
        if (
            interaction.kind in (Kind.CREATE, Kind.UPDATE, Kind.PATCH, Kind.OPERATION)
            and resource is not None
        ):
            raw = orjson.dumps(resource)  # _fetch rewrites gateway URLs for the upstream
            media = "application/fhir+json"
        headers: CIMultiDict[str] = CIMultiDict()
        for field_name, header in (
            ("ifMatch", "If-Match"),
            ("ifNoneMatch", "If-None-Match"),
            ("ifNoneExist", "If-None-Exist"),
        ):
            if isinstance(request.get(field_name), str):
                headers[header] = request[field_name]
        return Call(
            interaction,
            resource,
            raw,
            media,
            headers,
            f"{self.settings.fhir_base_url}/{url.lstrip('/')}",
        )

    async def _batch(self, context: AccessContext, call: Call, request_id: str) -> Answer:
        entries = []
        for entry in call.body.get("entry") or []:
            try:
                sub = self._entry_call(entry)
                answer = await self._run(context, sub, request_id)
            except FhirError as exc:
                answer = Answer(exc.status, {}, exc.outcome())
            entries.append(_entry_response(answer))
        bundle = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
        return Answer(200, {}, bundle)

    async def _transaction(self, context: AccessContext, call: Call, request_id: str) -> Answer:
        entries = call.body.get("entry") or []
        decisions: list[AccessDecision] = []
        for index, entry in enumerate(entries):
            try:
                sub = self._entry_call(entry)
                if sub.interaction.kind not in WRITE_KINDS:
                    # Reads in a transaction would reach the upstream un-narrowed: use a batch.
                    raise BadRequest(
                        "a transaction here holds writes only (create, update, patch, delete); "
                        "send reads in a batch"
                    )
                decision = authorize(context, sub.interaction)
                headers = await self._check_write(context, decision, sub, request_id)
            except FhirError as exc:
                exc.diagnostics = f"entry {index + 1}: {exc.diagnostics}"
                raise
            if "If-Match" in headers:  # pin the version that was checked
                entry["request"]["ifMatch"] = headers["If-Match"]
            decisions.append(decision)
        raw = orjson.dumps(call.body)  # with the pinned versions; _fetch rewrites its URLs
        answer = await self._fetch(
            Call(call.interaction, call.body, raw, call.media, call.headers), request_id
        )
        if answer.status < 300 and any(
            d.interaction.resource_type in REPRESENTATION_TYPES for d in decisions
        ):
            await self.representation.changed()
        if answer.status >= 400 or answer.body is None:
            return answer
        answered = answer.body.get("entry") or []
        if not isinstance(answered, list) or len(answered) != len(decisions):
            # Every entry answered must be checked against the entry it answers: an answer that
            # does not line up with the request is not released (it was written, though).
            raise UpstreamUnavailable(
                "the FHIR server's transaction response does not match the request entry by "
                "entry; the transaction was sent, but its answer cannot be checked"
            )
        for decision, entry in zip(decisions, answered, strict=True):
            if not isinstance(entry, dict):
                continue
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            released = await self._release_written(
                context, decision, Answer(200, {}, resource), request_id
            )
            if released.body is None:
                entry.pop("resource", None)
            else:
                entry["resource"] = released.body
        return answer

    # --- the upstream ------------------------------------------------------------------------

    async def _fetch(self, call: Call, request_id: str) -> Answer:
        interaction = call.interaction
        params: list[tuple[str, str]] = list(interaction.params)
        body, media = call.raw, call.media
        if body is not None:
            body = self.rewriter.body_to_upstream(body)
        elif interaction.form_post:
            body, media, params = urlencode(params).encode(), FORM, []
        upstream = await self.upstream.send(
            interaction.method,
            interaction.upstream_path,
            params=params,
            body=body,
            content_type=media,
            headers=call.headers,
            request_id=request_id,
        )
        self.metrics.upstream_latency.labels(interaction.kind.value).observe(upstream.seconds)
        return decode_answer(upstream, self.rewriter)


_PATIENT_PARAMS = frozenset({"patient", "subject"})


def _named_patients(interaction: FhirInteraction) -> list[str]:
    """The patients a ``user/`` or ``system/`` request is about before anything is fetched (a
    compartment, ``$everything``, or ``patient=``/``subject=`` values that all name patients),
    so that a refusal that holds for all of them is answered as such (C-03); ``[]`` otherwise."""
    if interaction.compartment is not None and interaction.compartment[0] == "Patient":
        return [interaction.compartment[1]]
    if interaction.operation == "everything" and interaction.resource_id:
        return [interaction.resource_id]
    if interaction.kind is not Kind.SEARCH_TYPE:
        return []
    named: list[str] = []
    for name, value in interaction.params:
        if name not in _PATIENT_PARAMS:
            continue
        for item in value.split(","):
            patient = patient_id(item)
            if patient is None or (name != "patient" and not item.strip().startswith("Patient/")):
                return []  # not only patients: the refusal could depend on the data
            named.append(patient)
    return named


def _shape(resource: dict[str, Any], shaping: list[tuple[str, str]]) -> dict[str, Any]:
    """The caller's ``_elements`` / ``_summary``, applied after the access checks."""
    for name, value in shaping:
        if name == "_elements":
            resource = apply_elements(resource, [v.strip() for v in value.split(",") if v.strip()])
        elif name == "_summary" and value in ("true", "text", "data"):
            resource = apply_summary(resource, value)
    return resource


def _consent_interaction(interaction: FhirInteraction) -> FhirInteraction:
    """Consent lives in the gateway: a compartment search ``Patient/x/Consent`` is a Consent
    search for that patient."""
    if interaction.kind is Kind.SEARCH_COMPARTMENT and interaction.compartment is not None:
        patient = ("patient", f"Patient/{interaction.compartment[1]}")
        return FhirInteraction(
            Kind.SEARCH_TYPE, "GET", "Consent", params=(*interaction.params, patient)
        )
    return interaction


def _conditional(answer: Answer, headers: CIMultiDict[str]) -> Answer:
    """``If-None-Match`` on a released resource: 304 when the caller already has this version."""
    wanted = headers.get("If-None-Match")
    etag = answer.headers.get("ETag")
    if wanted and etag and answer.status == 200 and etag in {t.strip() for t in wanted.split(",")}:
        return Answer(304, {"ETag": etag})
    return answer


def _explain(decision: Decision) -> str:
    """A refusal's OperationOutcome text: why, and which Consent and provision decided (C-11)."""
    where = f" (Consent/{decision.consent_id}, {decision.provision})" if decision.consent_id else ""
    return f"withheld by the patient's consent: {decision.reason}{where}"


def _refused_search(decision: Decision) -> Answer:
    """C-03: a search under a missing or withdrawn consent is an empty result that says why."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "information", "code": "suppressed", "diagnostics": _explain(decision)}
        ],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [{"search": {"mode": "outcome"}, "resource": outcome}],
    }
    return Answer(200, {}, bundle)


def _entry_response(answer: Answer) -> dict[str, Any]:
    try:
        phrase = http.HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    response: dict[str, Any] = {"status": f"{answer.status} {phrase}".strip()}
    for header, field_name in (
        ("Location", "location"),
        ("ETag", "etag"),
        ("Last-Modified", "lastModified"),
    ):
        if header in answer.headers:
            response[field_name] = answer.headers[header]
    entry: dict[str, Any] = {"response": response}
    if answer.body is not None:
        if answer.status >= 400:
            response["outcome"] = answer.body
        else:
            entry["resource"] = answer.body
    return entry
