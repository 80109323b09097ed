"""``/fhir/Consent``: the patients' Consents, served by the gateway itself from MongoDB, never by
the upstream (CONSENT.md C-01, C-02, C-12, C-13).

Same SMART rules as every FHIR type for reading: ``patient/Consent.rs`` reaches the consents of
the patients the token reaches (their own, their child's); ``user/`` or ``system/`` scopes read
across patients. On top of the scopes, who may change what is :mod:`consent.authority` (C-23): an
app reads the Consents that concern it and withdraws its own permit, nothing else; an app
registered with ``manages_consent`` (the hospital's patient portal) manages them for its patients
but never widens its own access. Every change records who made it, through ``fhir-api``. Every
change is a new version (``meta.versionId``, ``_history``, ``If-Match``). A Consent that breaks the
R4 invariants (ppc-1, ppc-2...) or the gateway's own rules is refused with 422, one issue per
broken rule; the body is validated before anything else reads it, so no body, however crafted,
gets further (SECURITY.md P-22).

Withdrawal takes effect at once: setting a Consent inactive (or any status but active) or deleting
it is seen by the very next FHIR request on every instance (consents are read per request), the
tokens the app got under it are revoked, and the patient's cached resources are purged (C-13).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from multidict import CIMultiDict

from consent import authority
from consent.errors import (
    ConsentDeleted,
    ConsentError,
    ConsentInvalid,
    ConsentNotFound,
    VersionConflict,
)
from consent.model import patient_id_of, validate
from consent.references import patient_id
from consent.store import Change, Channel, ConsentStore, HistoryEntry
from gateway.cache.cache import ResourceCache
from gateway.fhir import auditing, writes
from gateway.fhir.access import AccessDecision, authorize
from gateway.fhir.context import AccessContext
from gateway.fhir.interaction import FhirInteraction, Kind
from gateway.fhir.narrowing import narrow_search
from gateway.proxy.answer import Answer
from gateway.web.errors import (
    BadRequest,
    FhirError,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    error_for_status,
)
from smart_auth.clients import ClientStore
from smart_auth.revocation import Revoker
from smart_auth.scopes import Letter

SEARCH_PARAMETERS = frozenset({"patient", "status", "_count", "_id"})


def _served(answer: Answer) -> None:
    """The Consents an answer releases, for the request's audit record (A-04)."""
    audit = auditing.current()
    body = answer.body
    if audit is None or body is None:
        return
    if body.get("resourceType") == "Consent":
        audit.served(body)
    elif body.get("resourceType") == "Bundle":
        for entry in body.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "Consent":
                audit.served(resource)


def _headers(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {"ETag": f'W/"{meta.get("versionId", "")}"'}
    if meta.get("lastUpdated"):
        headers["Last-Modified"] = _http_date(str(meta["lastUpdated"]))
    return headers


def _http_date(instant: str) -> str:
    moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _if_match(headers: CIMultiDict[str]) -> str | None:
    """The version an ``If-Match`` names (``W/"3"`` → ``3``)."""
    value = headers.get("If-Match")
    return value.strip().removeprefix("W/").strip('"') if value is not None else None


class ConsentApi:
    """The FHIR REST interactions on Consent."""

    def __init__(
        self,
        store: ConsentStore,
        revoker: Revoker,
        clients: ClientStore,
        cache: ResourceCache,
        fhir_base: str,
    ) -> None:
        self._store = store
        self._revoker = revoker
        self._clients = clients
        self._cache = cache
        self._base = fhir_base

    async def _writer(self, context: AccessContext) -> authority.Writer:
        """The app, as registered now (read afresh: the flag is authority, never cached)."""
        client = await self._clients.get(context.client_id)
        manages = bool(client is not None and client.manages_consent and not context.external)
        return authority.Writer(context.client_id, manages)

    async def handle(
        self,
        context: AccessContext,
        interaction: FhirInteraction,
        body: Any,
        headers: CIMultiDict[str],
    ) -> Answer:
        decision = authorize(context, _as_consent_search(interaction))
        try:
            answer = await self._handle(context, decision, body, headers)
        except ConsentError as exc:
            raise fhir_error(exc, if_match=_if_match(headers) is not None) from None
        _served(answer)
        return answer

    @staticmethod
    def _visible(
        decision: AccessDecision,
        writer: authority.Writer,
        resource: Mapping[str, Any],
        letters: frozenset[Letter],
    ) -> bool:
        """Within the token's scopes and patients, and one the app may read (C-23)."""
        if not decision.policy.permits_served(resource, letters):
            return False
        return writer.manages_consent or authority.concerns(resource, writer.client_id)

    def _check_visible(
        self, decision: AccessDecision, writer: authority.Writer, resource: Mapping[str, Any]
    ) -> None:
        if not self._visible(decision, writer, resource, decision.letters | frozenset({"r"})):
            raise NotFound("no such Consent is available to this access token")

    async def _handle(
        self,
        context: AccessContext,
        decision: AccessDecision,
        body: Any,
        headers: CIMultiDict[str],
    ) -> Answer:
        interaction = decision.interaction
        kind, cid = interaction.kind, interaction.resource_id
        writer = await self._writer(context)
        change = Change(_changed_by(context), Channel.FHIR_API)
        if kind is Kind.READ:
            assert cid is not None
            resource = await self._store.read(cid)
            self._check_visible(decision, writer, resource)
            return Answer(200, _headers(resource), resource)
        if kind is Kind.VREAD:
            assert cid is not None and interaction.version_id is not None
            resource = await self._store.vread(cid, interaction.version_id)
            self._check_visible(decision, writer, resource)
            return Answer(200, _headers(resource), resource)
        if kind is Kind.HISTORY_INSTANCE:
            assert cid is not None
            current = await self._latest(cid)
            self._check_visible(decision, writer, current)
            return Answer(200, {}, self._history_bundle(cid, await self._store.history(cid)))
        if kind is Kind.SEARCH_TYPE:
            return Answer(200, {}, await self._search(context, decision, writer))
        if kind is Kind.CREATE:
            body = validate(body)  # first: the checks below read the body (P-22)
            if decision.patient_only:
                writes.check_in_compartment(body, context, "this Consent")
            authority.check_create(writer, body)
            created = await self._store.create(body, change=change)
            location = (
                f"{self._base}/Consent/{created['id']}/_history/{created['meta']['versionId']}"
            )
            return Answer(201, {**_headers(created), "Location": location}, created)
        if kind is Kind.UPDATE:
            assert cid is not None
            current = await self._changeable(cid, context, decision, writer)
            body = validate(body)
            if decision.patient_only:
                writes.check_in_compartment(body, context, "this Consent")
            authority.check_update(writer, current, body)
            updated = await self._store.update(
                cid, body, change=change, if_match=_if_match(headers)
            )
            await revoke_if_withdrawn(self._revoker, self._cache, current, updated)
            return Answer(200, _headers(updated), updated)
        if kind is Kind.DELETE:
            assert cid is not None
            current = await self._changeable(cid, context, decision, writer)
            authority.check_delete(writer, current)
            await self._store.delete(cid, change=change, if_match=_if_match(headers))
            await revoke_if_withdrawn(self._revoker, self._cache, current, None)
            return Answer(204)
        raise Forbidden(
            f"{kind} is not available on Consent; use read, search, create, update or delete"
        )

    async def _changeable(
        self,
        consent_id: str,
        context: AccessContext,
        decision: AccessDecision,
        writer: authority.Writer,
    ) -> dict[str, Any]:
        """The current version of a Consent the caller means to change: one it may see, and
        under a patient/ scope one of its patients' (404 otherwise, like a missing one)."""
        current = await self._store.read(consent_id)
        self._check_visible(decision, writer, current)
        if decision.patient_only:
            writes.check_current(current, context)
        return current

    async def _latest(self, consent_id: str) -> dict[str, Any]:
        """The newest stored version (a deleted Consent's history stays readable)."""
        for entry in await self._store.history(consent_id):
            if entry.resource is not None:
                return entry.resource
        raise ConsentNotFound(consent_id)

    async def _search(
        self, context: AccessContext, decision: AccessDecision, writer: authority.Writer
    ) -> dict[str, Any]:
        params = list(decision.interaction.params)
        if decision.patient_only:
            params = narrow_search(params, "Consent", context.patients, add_constraint=False)
        unknown = sorted({k for k, _ in params} - SEARCH_PARAMETERS)
        if unknown:
            raise BadRequest(f"Consent search supports patient, status, _id, _count; not {unknown}")
        values = {k: v for k, v in params}
        # Repeated ``patient`` parameters AND (each a comma-separated OR): intersect them.
        chosen: set[str] | None = None
        for name, value in params:
            if name != "patient":
                continue
            parsed = [patient_id(item, bare=True) for item in value.split(",") if item]
            named = {p for p in parsed if p is not None}
            if len(named) != len(parsed):
                raise BadRequest("patient takes Patient/[id] or [id]")
            chosen = named if chosen is None else chosen & named
        if chosen is None and decision.patient_only:
            chosen = set(context.patients)
        patients = sorted(chosen) if chosen is not None else []
        if chosen is not None and not patients:
            return {"resourceType": "Bundle", "type": "searchset", "total": 0}
        limit = int(values["_count"]) if values.get("_count", "").isdigit() else 100
        found: list[dict[str, Any]] = []
        targets: list[str | None] = list(patients) or [None]
        for patient in targets:
            found += await self._store.search(
                patient_id=patient, status=values.get("status"), limit=max(1, min(limit, 1000))
            )
        if "_id" in values:
            wanted = set(values["_id"].split(","))
            found = [c for c in found if c.get("id") in wanted]
        found = [c for c in found if self._visible(decision, writer, c, decision.letters)]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {
                    "fullUrl": f"{self._base}/Consent/{c['id']}",
                    "resource": c,
                    "search": {"mode": "match"},
                }
                for c in found
            ],
        }

    def _history_bundle(self, consent_id: str, entries: list[HistoryEntry]) -> dict[str, Any]:
        items = []
        for entry in entries:
            item: dict[str, Any] = {
                "fullUrl": f"{self._base}/Consent/{consent_id}",
                "request": {"method": entry.method, "url": f"Consent/{consent_id}"},
                "response": {
                    "status": "410 Gone" if entry.resource is None else "200 OK",
                    "etag": f'W/"{entry.version_id}"',
                    "lastModified": entry.last_updated.isoformat(),
                },
            }
            if entry.resource is not None:
                item["resource"] = entry.resource
            items.append(item)
        return {"resourceType": "Bundle", "type": "history", "total": len(items), "entry": items}


async def revoke_if_withdrawn(
    revoker: Revoker,
    cache: ResourceCache,
    before: Mapping[str, Any],
    after: Mapping[str, Any] | None,
) -> None:
    """C-13: when a change ends a permit (``after`` is ``None`` for a deletion), the app's tokens
    granted under this Consent, and its tokens for this patient, are revoked with it, and the
    patient's cached resources are purged — all of them, not only those fetched for that app:
    the cache does not record for whom it fetched, and the next reads refill it."""
    if not _grants_access(before) or (after is not None and _grants_access(after)):
        return
    await revoker.revoke_consent(str(before.get("id", "")))
    patient = patient_id_of(before)
    if patient is None:
        return
    for client_id in sorted(authority.client_ids(before)):
        await revoker.revoke_app_for_patient(client_id, patient)
    await cache.purge_patient(patient)


def _grants_access(consent: Mapping[str, Any]) -> bool:
    """An active Consent whose root provision permits: withdrawing it ends what it granted.
    (Withdrawing a deny, or a draft, takes nothing away, so no token is revoked for it.)"""
    provision = consent.get("provision") or {}
    return consent.get("status") == "active" and provision.get("type", "permit") == "permit"


def _changed_by(context: AccessContext) -> str:
    """Who changes a Consent through the FHIR API: the app, and the person using it."""
    app = f"client:{context.client_id}"
    return f"{context.fhir_user} via {app}" if context.fhir_user else app


def _as_consent_search(interaction: FhirInteraction) -> FhirInteraction:
    """Consent lives in the gateway: a compartment search ``Patient/x/Consent`` is a Consent
    search for that patient."""
    if interaction.kind is Kind.SEARCH_COMPARTMENT and interaction.compartment is not None:
        patient = ("patient", f"Patient/{interaction.compartment[1]}")
        return FhirInteraction(
            Kind.SEARCH_TYPE, "GET", "Consent", params=(*interaction.params, patient)
        )
    return interaction


def fhir_error(exc: ConsentError, *, if_match: bool = False) -> FhirError:
    """A consent error as the FHIR API answers it: its status (``ConsentError.status``), with one
    OperationOutcome issue per broken rule for an invalid Consent; a version conflict is 412 when
    the caller named the version (``If-Match``), 409 otherwise."""
    if isinstance(exc, ConsentInvalid):
        return Unprocessable(
            f"the Consent breaks {len(exc.issues)} rule(s)",
            extra_issues=[issue.as_issue() for issue in exc.issues],
        )
    if isinstance(exc, ConsentNotFound) and not isinstance(exc, ConsentDeleted):
        return NotFound("no such Consent is available to this access token")
    if isinstance(exc, VersionConflict) and if_match:
        return PreconditionFailed(str(exc))
    return error_for_status(exc.status, str(exc))
