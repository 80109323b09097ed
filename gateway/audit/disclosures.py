"""Accounting of disclosures for one patient (AUDIT.md A-12; HIPAA 45 CFR 164.528, GDPR Art. 15):
every AuditEvent with that patient as an entity, newest first, as rows of date, recipient (app and
user), what, purpose and outcome — for ``fhir-gateway audit export`` and the patient's pages.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

import orjson

from consent.codes import CLIENT_SYSTEM
from gateway.audit.store import AuditQuery, AuditReader

_OUTCOMES = {"0": "success", "4": "refused", "8": "failed", "12": "failed"}


@dataclass(frozen=True, slots=True)
class Disclosure:
    date: str
    """When (``AuditEvent.recorded``, UTC)."""
    app: str
    """The app's client id (empty when the act was not an app's)."""
    user: str
    """Who used it: their FHIR resource (``Practitioner/...``) or account."""
    action: str
    """The interaction or act: ``read``, ``search-type``, ``update``, ``Login``..."""
    what: str
    """The resources (reads, writes), or the request and how many resources it released."""
    purpose: str
    """Purposes of use (v3-ActReason codes), comma-separated."""
    outcome: str
    """``success``, ``refused`` or ``failed``."""
    event: str
    """The AuditEvent's id."""


COLUMNS = tuple(f.name for f in fields(Disclosure))


def _who(agent: Mapping[str, Any]) -> str:
    who = agent.get("who") or {}
    if "reference" in who:
        return str(who["reference"])
    identifier = who.get("identifier") or {}
    return str(identifier.get("value", who.get("display", "")))


def _query(entity: Mapping[str, Any]) -> str:
    try:
        return base64.b64decode(str(entity["query"])).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return "(a query)"


def disclosure(event: Mapping[str, Any], patient: str) -> Disclosure:
    """One row for one AuditEvent, seen from ``patient``."""
    app = user = ""
    for agent in event.get("agent", []):
        identifier = (agent.get("who") or {}).get("identifier") or {}
        if identifier.get("system") == CLIENT_SYSTEM and not app:
            app = str(identifier.get("value", ""))
        elif agent.get("requestor") and not user:
            user = _who(agent)
    queries: list[str] = []
    references: list[str] = []
    released = ""
    for entity in event.get("entity", []):
        role = (entity.get("role") or {}).get("code")
        reference = str((entity.get("what") or {}).get("reference", ""))
        if role == "1" and reference == f"Patient/{patient}":
            for detail in entity.get("detail", []):
                if detail.get("type") == "released":
                    released = str(detail.get("valueString", ""))
        elif role == "24" and "query" in entity:
            queries.append(_query(entity))
        elif role == "4" and reference:
            references.append(reference)
    if queries:
        what = "; ".join(queries) + (f" ({released} resource(s) released)" if released else "")
    else:
        what = "; ".join(references)
    subtypes = event.get("subtype") or [event.get("type", {})]
    purposes = [
        coding.get("code", "")
        for concept in event.get("purposeOfEvent", [])
        for coding in concept.get("coding", [])
    ]
    return Disclosure(
        date=str(event.get("recorded", "")),
        app=app,
        user=user,
        action=str(subtypes[0].get("display") or subtypes[0].get("code", "")),
        what=what,
        purpose=",".join(purposes),
        outcome=_OUTCOMES.get(str(event.get("outcome")), str(event.get("outcome", ""))),
        event=str(event.get("id", "")),
    )


async def disclosures(
    reader: AuditReader,
    patient: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    agent: str | None = None,
    page_size: int = 500,
) -> AsyncIterator[Disclosure]:
    """Every row for ``patient``, newest first (``agent``: only those of one app or person, an
    :attr:`AuditQuery.agent` key)."""
    cursor: str | None = None
    while True:
        page = await reader.search(
            AuditQuery(
                patient=patient,
                agent=agent,
                since=since,
                until=until,
                count=page_size,
                cursor=cursor,
            )
        )
        for event in page.events:
            yield disclosure(event, patient)
        if page.next is None:
            return
        cursor = page.next


def to_csv(rows: Iterable[Disclosure]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(value) for value in asdict(row).values()])
    return out.getvalue()


def _cell(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (OWASP CSV injection)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def to_json(rows: Iterable[Disclosure]) -> bytes:
    return orjson.dumps([asdict(row) for row in rows], option=orjson.OPT_INDENT_2)
