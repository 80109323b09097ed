"""``/fhir/Consent``: the patients' Consents, served by the gateway itself from MongoDB, never by
the upstream (CONSENT.md C-01, C-02, C-12, C-13).

Same SMART rules as every FHIR type: ``patient/Consent.cruds`` lets a patient manage the consents
of the patients their token reaches (their own, their child's); ``user/`` or ``system/`` scopes on
Consent read (and write) across patients. Every change is a new version (``meta.versionId``,
``_history``, ``If-Match``). A Consent that breaks the R4 invariants (ppc-1, ppc-2...) or the
gateway's own rules is refused with 422, one issue per broken rule; the body is validated before
anything else reads it, so no body, however crafted, gets further (SECURITY.md P-22).

Withdrawal takes effect at once: setting a Consent inactive (or any status but active) or deleting
it is seen by the very next FHIR request on every instance (consents are read per request), and
the tokens the app got under it are revoked (C-13).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from multidict import CIMultiDict

from consent.codes import CLIENT_SYSTEM
from consent.errors import (
    ConsentDeleted,
    ConsentError,
    ConsentInvalid,
    ConsentNotFound,
    InvalidParameter,
    VersionConflict,
)
from consent.model import patient_id_of, validate
from consent.store import ConsentStore, HistoryEntry
from gateway import writes
from gateway.access import AccessDecision, authorize
from gateway.content import Answer
from gateway.context import AccessContext
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from gateway.interaction import FhirInteraction, Kind
from gateway.narrowing import narrow_search, patient_id
from smart_auth.revocation import Revoker

_SEARCH_PARAMS = frozenset({"patient", "status", "_count", "_id"})


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

    def __init__(self, store: ConsentStore, revoker: Revoker, fhir_base: str) -> None:
        self._store = store
        self._revoker = revoker
        self._base = fhir_base

    async def handle(
        self,
        context: AccessContext,
        interaction: FhirInteraction,
        body: Any,
        headers: CIMultiDict[str],
    ) -> Answer:
        decision = authorize(context, interaction)
        try:
            return await self._handle(context, decision, body, headers)
        except ConsentInvalid as exc:
            raise Unprocessable(
                f"the Consent breaks {len(exc.issues)} rule(s)",
                extra_issues=[issue.as_issue() for issue in exc.issues],
            ) from None
        except ConsentDeleted as exc:
            raise Gone(str(exc)) from None
        except ConsentNotFound:
            raise NotFound("no such Consent is available to this access token") from None
        except VersionConflict as exc:
            if _if_match(headers) is not None:
                raise PreconditionFailed(str(exc)) from None
            raise Conflict(str(exc)) from None
        except InvalidParameter as exc:
            raise BadRequest(str(exc)) from None
        except ConsentError as exc:
            raise BadRequest(str(exc)) from None

    def _check_visible(self, decision: AccessDecision, resource: Mapping[str, Any]) -> None:
        if not decision.policy.permits(resource, decision.letters | frozenset({"r"})):
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
        if kind is Kind.READ:
            assert cid is not None
            resource = await self._store.read(cid)
            self._check_visible(decision, resource)
            return Answer(200, _headers(resource), resource)
        if kind is Kind.VREAD:
            assert cid is not None and interaction.version_id is not None
            resource = await self._store.vread(cid, interaction.version_id)
            self._check_visible(decision, resource)
            return Answer(200, _headers(resource), resource)
        if kind is Kind.HISTORY_INSTANCE:
            assert cid is not None
            current = await self._latest(cid)
            self._check_visible(decision, current)
            return Answer(200, {}, self._history_bundle(cid, await self._store.history(cid)))
        if kind is Kind.SEARCH_TYPE:
            return Answer(200, {}, await self._search(context, decision))
        if kind is Kind.CREATE:
            body = validate(body)  # first: the checks below read the body (P-22)
            if decision.patient_only:
                writes.check_in_compartment(body, context, "this Consent")
            created = await self._store.create(body)
            location = (
                f"{self._base}/Consent/{created['id']}/_history/{created['meta']['versionId']}"
            )
            return Answer(201, {**_headers(created), "Location": location}, created)
        if kind is Kind.UPDATE:
            assert cid is not None
            current = await self._store.read(cid)
            if decision.patient_only:
                writes.check_current(current, context)
            body = validate(body)
            if decision.patient_only:
                writes.check_in_compartment(body, context, "this Consent")
            updated = await self._store.update(cid, body, if_match=_if_match(headers))
            if _grants_access(current) and not _grants_access(updated):
                await self._withdrawn(current)
            return Answer(200, _headers(updated), updated)
        if kind is Kind.DELETE:
            assert cid is not None
            current = await self._store.read(cid)
            if decision.patient_only:
                writes.check_current(current, context)
            await self._store.delete(cid, if_match=_if_match(headers))
            if _grants_access(current):
                await self._withdrawn(current)
            return Answer(204)
        raise Forbidden(
            f"{kind} is not available on Consent; use read, search, create, update or delete"
        )

    async def _latest(self, consent_id: str) -> dict[str, Any]:
        """The newest stored version (a deleted Consent's history stays readable)."""
        for entry in await self._store.history(consent_id):
            if entry.resource is not None:
                return entry.resource
        raise ConsentNotFound(consent_id)

    async def _withdrawn(self, consent: Mapping[str, Any]) -> None:
        """C-13: the app's tokens granted under this Consent, and its tokens for this patient,
        are revoked with it."""
        consent_id = str(consent.get("id", ""))
        await self._revoker.revoke_consent(consent_id)
        patient = patient_id_of(consent)
        if patient is None:
            return
        for client_id in _client_ids(consent):
            await self._revoker.revoke_app_for_patient(client_id, patient)

    async def _search(self, context: AccessContext, decision: AccessDecision) -> dict[str, Any]:
        params = list(decision.interaction.params)
        if decision.patient_only:
            params = narrow_search(params, "Consent", context.patients, add_constraint=False)
        unknown = sorted({k for k, _ in params} - _SEARCH_PARAMS)
        if unknown:
            raise BadRequest(f"Consent search supports patient, status, _id, _count; not {unknown}")
        values = {k: v for k, v in params}
        # Repeated ``patient`` parameters AND (each a comma-separated OR): intersect them.
        chosen: set[str] | None = None
        for name, value in params:
            if name != "patient":
                continue
            parsed = [patient_id(item) for item in value.split(",") if item]
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
        found = [c for c in found if decision.policy.permits(c, decision.letters)]
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


def _grants_access(consent: Mapping[str, Any]) -> bool:
    """An active Consent whose root provision permits: withdrawing it ends what it granted.
    (Withdrawing a deny, or a draft, takes nothing away, so no token is revoked for it.)"""
    provision = consent.get("provision") or {}
    return consent.get("status") == "active" and provision.get("type", "permit") == "permit"


def _client_ids(consent: Mapping[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(provision: Any) -> None:
        if not isinstance(provision, Mapping):
            return
        for actor in provision.get("actor") or []:
            identifier = ((actor or {}).get("reference") or {}).get("identifier") or {}
            if identifier.get("system") == CLIENT_SYSTEM and isinstance(
                identifier.get("value"), str
            ):
                found.append(identifier["value"])
        for child in provision.get("provision") or []:
            walk(child)

    walk(consent.get("provision"))
    return list(dict.fromkeys(found))
