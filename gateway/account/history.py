""" "Who saw my data" (CONSENT.md C-20; AUDIT.md A-11, A-12; GDPR Art. 15, HIPAA 164.528): the
audit trail of the patient, newest first — every release of their data through the FHIR API and
every refusal, with the app and the person who used it, what (resource types and how many), when,
why and the outcome — and the acts around it: apps allowed, access given and ended, consents
changed. Filtered by date range and app, a page at a time, and downloadable whole (with the same
filters) as CSV and JSON: the accounting of disclosures of :mod:`gateway.audit.disclosures`.

Everything is read from the audit store (:class:`~gateway.audit.store.AuditReader`) by the
patient entity, so a patient sees exactly the events recorded about them, and only those.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from consent import authority
from consent.codes import CLIENT_SYSTEM
from consent.errors import InvalidParameter
from consent.store import client_id_value
from gateway.account.viewer import Viewer, page, viewer
from gateway.appkeys import AUTH, CONSENTS, UPSTREAM
from gateway.audit import codes
from gateway.audit.disclosures import disclosures, to_csv, to_json
from gateway.audit.store import AuditQuery, AuditReader, InvalidCursor
from gateway.oauth.actsfor import person_names
from gateway.oauth.errors import BadPage
from gateway.pages.i18n import N_
from smart_auth.clients import purpose_codes

PAGE_SIZE = 25
_RELEASES = frozenset({"R", "E"})

KINDS = {
    "released": N_("Data sent"),
    "refused": N_("Refused"),
    "failed": N_("Failed"),
    "changed": N_("Record changed"),
    "consent": N_("Consent changed"),
    "allowed": N_("App allowed"),
    "denied": N_("App denied"),
    "access": N_("Access given"),
    "ended": N_("Access ended"),
    "erased": N_("Data of this record erased"),
    "other": N_("Other"),
}
"""What an event was, in the patient's words."""


@dataclass(frozen=True, slots=True)
class Filters:
    since: datetime | None
    until: datetime | None
    """The end of the last day asked for (exclusive)."""
    app: str | None
    cursor: str | None
    given: dict[str, str]
    """The filters as typed (to fill the form and the links again)."""

    def query(self, patient: str, count: int = PAGE_SIZE) -> AuditQuery:
        return AuditQuery(
            patient=patient,
            agent=AuditQuery.client(self.app) if self.app else None,
            since=self.since,
            until=self.until,
            count=count,
            cursor=self.cursor,
        )


def _day(value: str) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise BadPage("Enter dates as year-month-day, for example 2026-03-31.") from None
    return datetime.combine(day, time(0), UTC)


def filters(request: web.Request) -> Filters:
    """The filters of the page's address; a bad one is a page saying what to type."""
    query = request.query
    given = {k: str(query.get(k, ""))[:64] for k in ("from", "to", "app")}
    since = _day(given["from"])
    until = _day(given["to"])
    if until is not None:
        until += timedelta(days=1)
    if since is not None and until is not None and until <= since:
        raise BadPage("The first date must come before the last one.")
    app = None
    if given["app"]:
        try:
            app = client_id_value(given["app"])
        except InvalidParameter:
            raise BadPage("Choose an app from the list.") from None
    cursor = query.get("older")
    return Filters(since, until, app, cursor[:512] if cursor else None, given)


@dataclass(frozen=True, slots=True)
class Row:
    at: datetime
    kind: str
    app: str
    """The app's name (or its id when it is not registered any more); empty when none."""
    person: str
    """Who used it: a name, or empty."""
    you: bool
    """The one who used it is the signed-in user."""
    types: tuple[str, ...]
    count: str | None
    """How many resources were sent (a release), else ``None``."""
    purposes: tuple[str, ...]
    outcome: str


def _kind(event: dict[str, Any]) -> str:
    kind = str((event.get("type") or {}).get("code", ""))
    subtype = str(((event.get("subtype") or [{}])[0]).get("code", ""))
    failed = event.get("outcome") != codes.SUCCESS
    if kind == "rest":
        writes_consent = any(
            str((e.get("what") or {}).get("reference", "")).startswith("Consent/")
            and (e.get("role") or {}).get("code") == "4"
            for e in event.get("entity", ())
        )
        if writes_consent and event.get("action") not in _RELEASES:
            return "consent"
        if event.get("outcome") == codes.MINOR_FAILURE:
            return "refused"
        if failed:
            return "failed"
        return "released" if event.get("action") in _RELEASES else "changed"
    if subtype == "AuthZ-Consent":
        named_app = any((e.get("role") or {}).get("code") == "13" for e in event.get("entity", ()))
        if named_app:
            return "denied" if failed else "allowed"
        return "access"
    if subtype == codes.OBJECT_SECURITY_CHANGED[0]:
        return "ended"
    if kind == codes.PATIENT_RECORD[0]:
        return "erased"
    return "other"


def _parts(event: dict[str, Any], patient: str) -> tuple[str, str, tuple[str, ...], str | None]:
    """(app id, person reference, resource types, how many) of one event."""
    app = person = ""
    for agent in event.get("agent", ()):
        who = agent.get("who") or {}
        identifier = who.get("identifier") or {}
        if identifier.get("system") == CLIENT_SYSTEM and not app:
            app = str(identifier.get("value", ""))
        elif agent.get("requestor") and "reference" in who and not person:
            person = str(who["reference"])
    types: tuple[str, ...] = ()
    count = None
    for entity in event.get("entity", ()):
        if (entity.get("what") or {}).get("reference") == f"Patient/{patient}":
            for item in entity.get("detail", ()):
                if item.get("type") == "released":
                    count = str(item.get("valueString", ""))
                elif item.get("type") == "resource-types":
                    types = tuple(str(item.get("valueString", "")).split(","))
    return app, person, tuple(t.strip() for t in types if t.strip()), count


async def _rows(request: web.Request, who: Viewer, events: list[dict[str, Any]]) -> list[Row]:
    patient = who.patient or ""
    parts = [_parts(event, patient) for event in events]
    clients = request.app[AUTH].clients
    apps = {app: await clients.get(app) for app, *_ in parts if app}
    people = {f"Patient/{pid}": name for pid, name in who.patients.items()}
    unknown = tuple({p for _, p, *_ in parts if p and p not in people})
    people |= await person_names(request.app[UPSTREAM], unknown)
    known = purpose_codes()
    rows = []
    for event, (app, person, types, count) in zip(events, parts, strict=True):
        client = apps.get(app)
        purposes = tuple(
            known.get(coding.get("code", ""), {}).get("plain", coding.get("code", ""))
            for concept in event.get("purposeOfEvent", ())
            for coding in concept.get("coding", ())
        )
        rows.append(
            Row(
                at=datetime.fromisoformat(str(event["recorded"]).replace("Z", "+00:00")),
                kind=_kind(event),
                app=client.name if client else app,
                person=people.get(person, person),
                you=bool(person) and person == who.user.fhir_user,
                types=types,
                count=count,
                purposes=purposes,
                outcome=str(event.get("outcome", "")),
            )
        )
    return rows


async def _apps(request: web.Request, patient: str) -> list[tuple[str, str]]:
    """The apps the filter offers: those the patient's consents, past or present, name."""
    consents = await request.app[CONSENTS].search(patient_id=patient, limit=1000)
    ids = sorted({app for consent in consents for app in authority.client_ids(consent)})
    clients = request.app[AUTH].clients
    named = [(app, client.name if (client := await clients.get(app)) else app) for app in ids]
    return sorted(named, key=lambda pair: pair[1].lower())


async def history_page(request: web.Request) -> web.Response:
    who = await viewer(request)
    assert who.patient is not None
    chosen = filters(request)
    try:
        found = await AuditReader(request.app[AUTH].db).search(chosen.query(who.patient))
    except InvalidCursor:
        raise BadPage(
            "This page of the history is out of date. Start again from the newest."
        ) from None
    given = {k: v for k, v in chosen.given.items() if v}
    older = who.link("/account/history", **given, older=found.next) if found.next else None
    return page(
        request,
        who,
        "history.html",
        section="history",
        rows=await _rows(request, who, found.events),
        kinds=KINDS,
        apps=await _apps(request, who.patient),
        given=chosen.given,
        paged=chosen.cursor is not None,
        newest=who.link("/account/history", **given),
        older=older,
        download=urlencode({"patient": who.patient, **given}),
    )


async def export(request: web.Request) -> web.Response:
    """The whole history with the page's filters, as CSV or JSON (A-12): the accounting of
    disclosures of :mod:`gateway.audit.disclosures`, row for row what the audit store holds."""
    who = await viewer(request)
    assert who.patient is not None
    chosen = filters(request)
    query = chosen.query(who.patient)
    rows = [
        row
        async for row in disclosures(
            AuditReader(request.app[AUTH].db),
            who.patient,
            since=query.since,
            until=query.until,
            agent=query.agent,
        )
    ]
    fmt = request.match_info["format"]
    name = f"access-history-{who.patient}-{datetime.now(UTC):%Y%m%d}.{fmt}"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if fmt == "csv":
        return web.Response(
            text=to_csv(rows), content_type="text/csv", charset="utf-8", headers=headers
        )
    return web.Response(body=to_json(rows), content_type="application/json", headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/account/history", history_page)
    app.router.add_get(r"/account/history.{format:csv|json}", export)
