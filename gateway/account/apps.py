""" "Connected apps" (CONSENT.md C-12 … C-14, C-19): every app the patient's consent lets in, what
it may see in the words of the consent screen, why, since and until when, when it last had data,
and a "Disconnect" button.

What an app may see is read back from its Consent (:func:`consent.model.grant_terms`), not from
its tokens: the Consent is what decides a release. An app is listed while a permit naming it is
active and in force.

Disconnecting is one click (C-14) and goes the way every withdrawal goes: each of the app's active
permits for the patient is withdrawn through :meth:`ConsentStore.withdraw` with a
:class:`~consent.store.Change` naming the person and the channel (``account-pages``), and
:func:`gateway.fhir.consent_api.revoke_if_withdrawn` revokes what that withdrawal ends (the
grants written with the Consent and every token the app holds for the patient, C-13), as for a
withdrawal through the FHIR API or by an administrator. The next request of the app gets nothing
(C-12). The store and the revoker record each step in the audit trail (:mod:`gateway.audit.acts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from consent import authority, fhirtime
from consent.errors import InvalidParameter
from consent.minimise import PROFILES
from consent.model import grant_terms
from consent.store import Change, Channel, client_id_value
from gateway.account.viewer import done, page, viewer
from gateway.appkeys import AUTH, CACHE, CONSENTS
from gateway.audit.store import AuditQuery, AuditReader
from gateway.fhir.consent_api import revoke_if_withdrawn
from gateway.oauth.errors import BadPage
from smart_auth.clients import Client, purpose_codes
from smart_auth.consent_screen import Kind, SensitiveCategory, kinds_of, sensitive_of


@dataclass(frozen=True, slots=True)
class ConnectedApp:
    client_id: str
    name: str
    client: Client | None
    """The registration (``None`` once the app was removed from the registry)."""
    kinds: tuple[Kind, ...]
    sensitive: tuple[SensitiveCategory, ...]
    purposes: tuple[str, ...]
    """Plain wording of the purposes the Consent names."""
    minimisation: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    last_access: datetime | None


def _instant(value: str | None, end: bool = False) -> datetime | None:
    bounds = fhirtime.interval(value) if value else None
    return None if bounds is None else bounds[1 if end else 0]


def _active_permits(consents: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    return [
        c
        for c in consents
        if (c.get("provision") or {}).get("type") == "permit"
        and fhirtime.period_contains_instant((c.get("provision") or {}).get("period"), now)
    ]


_LAST_LOOKED_AT = 50


def _released(event: dict[str, Any], patient: str) -> bool:
    """A FHIR request of the app that sent some of the patient's data."""
    if (event.get("type") or {}).get("code") != "rest" or event.get("outcome") != "0":
        return False
    return any(
        (entity.get("what") or {}).get("reference") == f"Patient/{patient}"
        and detail.get("type") == "released"
        and detail.get("valueString") not in (None, "0")
        for entity in event.get("entity", ())
        for detail in entity.get("detail", ())
    )


async def last_access(reader: AuditReader, patient: str, client_id: str) -> datetime | None:
    """When the app last got data of the patient, from the audit trail (among its latest
    events for the patient: its tokens and approvals are events too)."""
    found = await reader.search(
        AuditQuery(patient=patient, agent=AuditQuery.client(client_id), count=_LAST_LOOKED_AT)
    )
    for event in found.events:
        if _released(event, patient):
            return datetime.fromisoformat(str(event["recorded"]).replace("Z", "+00:00"))
    return None


async def connected_apps(request: web.Request, patient: str) -> list[ConnectedApp]:
    """The apps the patient's active permits name, newest grant first."""
    auth = request.app[AUTH]
    store = request.app[CONSENTS]
    now = datetime.now(UTC)
    found = _active_permits(await store.search(patient_id=patient, status="active"), now)
    known = purpose_codes()
    reader = AuditReader(auth.db)
    apps: dict[str, ConnectedApp] = {}
    for consent in found:
        terms = grant_terms(consent)
        for client_id in sorted(authority.client_ids(consent)):
            if client_id in apps:
                continue
            client = await auth.clients.get(client_id)
            apps[client_id] = ConnectedApp(
                client_id=client_id,
                name=client.name if client else client_id,
                client=client,
                kinds=kinds_of(terms.types, terms.codes),
                sensitive=sensitive_of(terms.labels),
                purposes=tuple(known[p]["plain"] if p in known else p for p in terms.purposes),
                minimisation=tuple(PROFILES[p].plain for p in terms.purposes if p in PROFILES),
                since=_instant(terms.start),
                until=_instant(terms.end, end=True),
                last_access=await last_access(reader, patient, client_id),
            )
    return list(apps.values())


async def apps_page(request: web.Request) -> web.Response:
    who = await viewer(request)
    assert who.patient is not None
    apps = await connected_apps(request, who.patient)
    disconnected = None
    if "disconnected" in request.query:  # after a disconnect; only a registered app is named,
        # so that a link cannot make the page announce whatever it likes
        client = await request.app[AUTH].clients.get(request.query["disconnected"][:128])
        disconnected = client.name if client else None
    return page(request, who, "apps.html", section="apps", apps=apps, disconnected=disconnected)


async def disconnect(request: web.Request) -> web.Response:
    """C-12 … C-14: withdraw the app's permits for this patient and end its tokens."""
    form = await request.post()
    who = await viewer(request, form)
    patient = who.patient
    assert patient is not None
    try:
        client_id = client_id_value(form.get("client_id"))
    except InvalidParameter:
        raise BadPage("Choose an app from the list.") from None
    store = request.app[CONSENTS]
    permits = [
        consent
        for consent in await store.search(patient_id=patient, status="active", client_id=client_id)
        if (consent.get("provision") or {}).get("type") == "permit"
    ]
    if not permits:
        raise BadPage(
            "This app is not connected to this record, so there is nothing to disconnect."
        )
    # The app's tokens for this patient end first, so that the audit trail ties their end to
    # the patient and the app (a grant revoked through its Consent is recorded by grant only);
    # then each permit is withdrawn as every withdrawal is, which revokes anything left and
    # purges the patient's cached resources.
    auth = request.app[AUTH]
    await auth.revoker.revoke_app_for_patient(client_id, patient)
    change = Change(who.user.fhir_user or f"user:{who.user.user_id}", Channel.ACCOUNT_PAGES)
    for consent in permits:
        withdrawn = await store.withdraw(str(consent["id"]), change=change)
        await revoke_if_withdrawn(auth.revoker, request.app[CACHE], consent, withdrawn)
    raise done(who, "/account/apps", disconnected=client_id)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/account/apps", apps_page)
    app.router.add_post("/account/apps/disconnect", disconnect)
