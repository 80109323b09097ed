"""Step 6 of the pipeline: what of an upstream answer is released, the one path every variant
takes — reads, searches, pages, and what a write or a transaction answers (DESIGN.md "Narrow
before, filter after"; CONSENT.md C-10, C-17, C-18, C-27).

For a Bundle, every entry is checked again against the token (``filtering``), attributed to its
patients and decided by their consents (``consent_gate``), minimised, and shaped by the caller's
``_elements``/``_summary``; ``total`` is recounted or dropped; paging links are replaced by signed
ones (``paging``). A single resource goes the same way, and one the token may not see is answered
like one that does not exist (404), one the consent withholds with 403 naming the Consent (C-11).
Binaries are attributed through their security context, which is read first (C-27).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multidict import CIMultiDict

from consent.subsetting import apply_elements, apply_summary
from gateway.fhir import compartment
from gateway.fhir.access import SEE, AccessDecision, AccessPolicy
from gateway.fhir.consent_gate import ConsentGate, RequestConsent, explain
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.filtering import filter_bundle, release_resource
from gateway.fhir.interaction import HISTORY_KINDS, FhirInteraction, Kind, parse
from gateway.fhir.paging import PageSealer
from gateway.proxy.answer import Answer
from gateway.proxy.rewrite import UrlRewriter
from gateway.web.errors import FhirError, Forbidden, NotFound

Shaping = Sequence[tuple[str, str]]

_READS = frozenset({Kind.READ, Kind.VREAD})
_HIDDEN = "no such resource is available to this access token"
_LOCAL_SHAPING = frozenset({"_elements", "_summary"})
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})
_MAX_CONTEXTS = 20


def read_call(call: Call, decision: AccessDecision) -> tuple[Call, Shaping]:
    """What a read sends upstream, and the shaping the gateway applies itself after the checks
    (``_elements`` and ``_summary`` could otherwise hide a reference from them, C-17).
    Conditional reads are answered here, after the checks: the upstream's 304 would confirm a
    resource (and give its version) before anything was checked."""
    interaction = decision.interaction
    shaping = [(k, v) for k, v in interaction.params if k in _LOCAL_SHAPING]
    if ("_summary", "count") in shaping:
        # Consent (and often scopes) withhold resources the upstream would count (C-18).
        raise Forbidden(
            "_summary=count is not available through this gateway: the count could include "
            "resources this app may not see; count the entries of a search instead"
        )
    params = [(k, v) for k, v in interaction.params if k not in _LOCAL_SHAPING]
    headers = CIMultiDict((k, v) for k, v in call.headers.items() if k.lower() not in _CONDITIONAL)
    return Call(interaction=interaction.with_params(params), headers=headers), shaping


def conditional(answer: Answer, headers: CIMultiDict[str]) -> Answer:
    """``If-None-Match`` on a released resource: 304 when the caller already has this version."""
    wanted = headers.get("If-None-Match")
    etag = answer.headers.get("ETag")
    if wanted and etag and answer.status == 200 and etag in {t.strip() for t in wanted.split(",")}:
        return Answer(304, {"ETag": etag})
    return answer


def _shape(resource: dict[str, Any], shaping: Shaping) -> dict[str, Any]:
    """The caller's ``_elements`` / ``_summary``, applied after the access checks."""
    for name, value in shaping:
        if name == "_elements":
            resource = apply_elements(resource, [v.strip() for v in value.split(",") if v.strip()])
        elif name == "_summary" and value in ("true", "text", "data"):
            resource = apply_summary(resource, value)
    return resource


class Release:
    """Releases upstream answers (the module's docstring)."""

    def __init__(
        self,
        fetcher: Fetcher,
        consent: ConsentGate,
        pages: PageSealer,
        rewriter: UrlRewriter,
        fhir_base: str,
    ) -> None:
        self._fetcher = fetcher
        self._consent = consent
        self._pages = pages
        self._rewriter = rewriter
        self._fhir_base = fhir_base

    async def answer(
        self,
        decision: AccessDecision,
        answer: Answer,
        consent: RequestConsent,
        *,
        self_url: str = "",
        shaping: Shaping = (),
    ) -> Answer:
        """The answer as released to this token, or 403/404."""
        kind = decision.interaction.kind
        if answer.status >= 400 or answer.body is None:
            if (
                decision.patient_only
                and answer.status in (404, 410)
                and kind in _READS | HISTORY_KINDS | {Kind.OPERATION}
            ):
                raise NotFound(_HIDDEN)
            return answer
        body = answer.body
        if body.get("resourceType") == "OperationOutcome":
            return answer
        if decision.patient_only:
            decision.policy.note_response(answer.raw)
        await self._read_contexts(decision.policy, body)
        consent.contexts = decision.policy.contexts
        if body.get("resourceType") == "Bundle" and kind not in _READS:
            await self._release_bundle(decision, body, consent, self_url, shaping)
            return answer
        if release_resource(body, decision.policy, decision.letters) is None:
            raise NotFound(_HIDDEN)
        owners = decision.policy.owners_of(body)
        await self._consent.load(consent, owners)
        released = consent.release(body, owners)
        if released is None:
            refusal = consent.last_refusal()
            raise Forbidden(explain(refusal) if refusal else "withheld by the patient's consent")
        answer.body = _shape(released, shaping)
        return answer

    async def _release_bundle(
        self,
        decision: AccessDecision,
        bundle: dict[str, Any],
        consent: RequestConsent,
        self_url: str,
        shaping: Shaping,
    ) -> None:
        resources = [e["resource"] for e in bundle.get("entry") or [] if "resource" in e]
        await self._consent.load_for(consent, resources, decision.policy.owners_of)
        filter_bundle(bundle, decision.policy, decision.letters, then=consent.release)
        kind = decision.interaction.kind
        if kind is Kind.HISTORY_INSTANCE and decision.patient_only and not bundle.get("entry"):
            raise NotFound(_HIDDEN)
        self._pages.seal_links(
            bundle,
            decision,
            rewriter=self._rewriter,
            fhir_base=self._fhir_base,
            self_url=self_url,
            shaping=shaping,
        )
        if shaping:
            for entry in bundle.get("entry", []):
                resource = entry.get("resource")
                if isinstance(resource, dict) and resource.get("resourceType") != (
                    "OperationOutcome"
                ):
                    entry["resource"] = _shape(resource, shaping)

    async def written(
        self, context: AccessContext, decision: AccessDecision, answer: Answer
    ) -> Answer:
        """What a write answers goes through the same checks as a read (scopes, consent,
        minimisation); what the token may not read is left out of the body."""
        body = answer.body
        if body is None or answer.status >= 300 or body.get("resourceType") == "OperationOutcome":
            return answer
        read = AccessDecision(
            interaction=FhirInteraction(Kind.READ, "GET", body.get("resourceType")),
            policy=decision.policy,
            letters=SEE,
            patient_only=decision.patient_only,
        )
        consent = await self._consent.start(context)
        try:
            released = await self.answer(read, Answer(200, {}, body), consent)
        except FhirError:
            answer.body = None
            return answer
        answer.body = released.body
        return answer

    async def _read_contexts(self, policy: AccessPolicy, body: dict[str, Any]) -> None:
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
                parse("GET", f"{rtype}/{rid}")  # a well-formed reference to a known type
            except FhirError:
                policy.contexts[reference] = None
                continue
            policy.contexts[reference] = await self._fetcher.current(rtype, rid)
