"""``/fhir/AuditEvent``: the audit log, served by the gateway itself from MongoDB, never by the
upstream (AUDIT.md A-06, A-11; FHIR R4 AuditEvent search parameters).

**Who sees what.** Only scopes that name AuditEvent reach the audit log: a wildcard scope
(``patient/*.rs``, ``system/*.rs``) does not, nor does a granular one (``?param=value``: its
restriction cannot be checked against the log, so it never widens access).

- *Administrators*: a token this gateway issued to an app registered as trusted
  (``fhir-gateway clients add --trusted``), with ``system/AuditEvent.rs`` (a backend service,
  e.g. the hospital's compliance tooling) or ``user/AuditEvent.rs`` (an app its staff use; every
  user of such an app sees the whole log, so register it for the privacy office's app only). The
  app's flag is read afresh on every request; tokens of external issuers are never
  administrators. They see every event.
- *Patients*: ``patient/AuditEvent.rs`` sees the events whose patient entity (role 1) is a
  patient the token reaches: the patient in context and those the user acts for (a parent, their
  child). Never an event without a patient entity (sign-ins, key rotation...) nor another
  patient's. A ``patient`` search value outside that reach is refused (403), like any
  patient-context search that would reach another patient.

Reading by id needs ``r``, searching ``s``. An event the token may not see is answered 404, as one
that does not exist. A patient gets each event without the raw request of a search
(``entity.query``): one search over several patients is recorded once per patient, each event
with the same query, which names the others.

No create, update, patch or delete (A-06): 405 with an OperationOutcome, and the gateway records
events itself. History, vread and operations: 405 as well.

**Search** (``GET``, ``POST _search``, and ``Patient/[id]/AuditEvent``), newest first, every
parameter ANDed, each given at most once and with one value (no comma lists), except ``date``:

==============  ===========================================================================
``patient``     ``Patient/[id]`` or ``[id]``: events with that patient entity
``agent``       ``Type/[id]`` (``Practitioner/..``, ``Patient/..``, ``RelatedPerson/..``):
                an agent's ``who`` reference; ``agent:identifier=system|value`` an agent's
                identifier (an app: ``urn:fhir-gateway:client|[client_id]``; a user:
                ``[issuer]|[sub]``)
``date``        ``recorded``, with the prefixes ``eq`` (default), ``ge``, ``gt``, ``le``, ``lt``,
                at the value's precision (``date=2026-03`` is all of March, UTC); repeat to AND
``subtype``     ``[code]`` or ``[system]|[code]`` (``read``, ``search-type``, ``110122``...)
``outcome``     ``0``, ``4``, ``8`` or ``12``
``action``      ``C``, ``R``, ``U``, ``D`` or ``E``
``_count``      page size, 1 to 1000 (default 50; above 1000, 1000)
==============  ===========================================================================

Anything else is refused with 400 naming it. The Bundle has no ``total`` (the log is not
counted); its ``next`` link is ``{base}/AuditEvent?_page=[token]``: the search and the position
after the last event, sealed as the proxy's paging links are (:mod:`gateway.fhir.paging`:
encrypted, bound to the token's issuer, subject, app and patient, expiring after
``page_link_lifetime_seconds``) but under a key of its own derived from the paging secret, so an
audit link cannot be followed as a proxy link (it would reach the upstream) nor the other way
round. Following one authorizes the search again against the token as it is then.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pymongo
from pymongo.errors import PyMongoError

from consent.fhirtime import interval
from consent.references import patient_id
from gateway.audit.chain import patient_ids
from gateway.audit.store import MAX_COUNT, AuditQuery, AuditReader, InvalidCursor
from gateway.fhir import auditing
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call
from gateway.fhir.interaction import WRITE_KINDS, Kind
from gateway.fhir.paging import PageLink, PageSealer
from gateway.proxy.answer import Answer
from gateway.web.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from smart_auth.clients import ClientStore
from smart_auth.scopes import Context, Letter

TYPE = "AuditEvent"
OUTCOME_SYSTEM = "http://hl7.org/fhir/audit-event-outcome"
ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
SEARCH_PARAMETERS = ("patient", "agent", "date", "subtype", "outcome", "action", "_count")

_OUTCOMES = frozenset({"0", "4", "8", "12"})
_ACTIONS = frozenset({"C", "R", "U", "D", "E"})
_SINGLE = frozenset(SEARCH_PARAMETERS) - {"date"} | {"agent:identifier"}
_REFERENCE = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.+)$")
_MS = timedelta(milliseconds=1)
_PAGE = "_page"
_CURSOR = "_cursor"
_PAGING_CONTEXT = b"fhir-gateway AuditEvent paging links"
_READ_TIMEOUT = 10.0
_FORBIDDEN_SCOPES = (
    "the audit log needs a scope that names AuditEvent: patient/AuditEvent.rs, or "
    "system/AuditEvent.rs or user/AuditEvent.rs for an app registered as trusted"
)


def audit_paging_secret(paging_secret: bytes) -> bytes:
    """The secret audit paging links are sealed under: derived from the gateway's paging secret
    (HMAC-SHA256 with a label of its own), so that it differs from the proxy's."""
    return hmac.new(paging_secret, _PAGING_CONTEXT, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Reach:
    """What of the audit log a token sees: everything (an administrator), or the events of
    these patients."""

    everything: bool
    patients: frozenset[str] = frozenset()

    def sees(self, event: Mapping[str, Any]) -> bool:
        if self.everything:
            return True
        found = patient_ids(event)
        return bool(found) and set(found) <= self.patients

    def shown(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event as this token gets it: whole for an administrator; for a patient without
        the raw request of a search (``entity.query``), which can name other patients (one
        search, one event per patient, each with the same query), and without what identifies
        the people and sessions on the other side rather than what they did: the network
        address a request came from (a clinician's workstation) and the token's id
        (``agent.policy``). Who (the app, the person), what, when and why stay."""
        if self.everything:
            return event
        shown = dict(event)
        entities = event.get("entity")
        if isinstance(entities, list):
            shown["entity"] = [
                {k: v for k, v in e.items() if k != "query"} if isinstance(e, dict) else e
                for e in entities
            ]
        agents = event.get("agent")
        if isinstance(agents, list):
            shown["agent"] = [_without_caller(a) if isinstance(a, dict) else a for a in agents]
        return shown


def _without_caller(agent: Mapping[str, Any]) -> dict[str, Any]:
    """An agent without its token id and, unless it is the gateway's own URI, its address."""
    network = agent.get("network")
    own_uri = isinstance(network, dict) and network.get("type") == "5"  # the gateway's base
    return {k: v for k, v in agent.items() if k != "policy" and (k != "network" or own_uri)}


class AuditApi:
    """The FHIR REST interactions on AuditEvent: read and search."""

    def __init__(
        self,
        reader: AuditReader,
        clients: ClientStore,
        *,
        paging_secret: bytes,
        page_lifetime_seconds: int,
        fhir_base: str,
    ) -> None:
        self._reader = reader
        self._clients = clients
        self._pages = PageSealer(audit_paging_secret(paging_secret), page_lifetime_seconds)
        self._base = fhir_base

    async def handle(self, context: AccessContext, call: Call) -> Answer:
        interaction = call.interaction
        kind = interaction.kind
        if kind in WRITE_KINDS:
            raise MethodNotAllowed(
                "AuditEvents cannot be created, changed or deleted: the audit log is "
                "append-only and the gateway records its events itself",
                headers={"Allow": "GET"},
            )
        if kind is Kind.READ:
            assert interaction.resource_id is not None
            return _served(Answer(200, {}, await self._read(context, interaction.resource_id)))
        if kind in (Kind.SEARCH_TYPE, Kind.SEARCH_COMPARTMENT):
            params = list(interaction.params)
            if interaction.compartment is not None:  # Patient/[id]/AuditEvent
                params.append(("patient", interaction.compartment[1]))
            return _served(Answer(200, {}, await self._search(context, params, call.self_url)))
        raise MethodNotAllowed(
            f"{kind} is not available on AuditEvent; read one by id or search",
            headers={"Allow": "GET"},
        )

    async def reach(self, context: AccessContext, letter: Letter, doing: str) -> Reach:
        """What this token sees of the audit log for ``letter`` (``r`` read, ``s`` search), or
        403."""
        scopes = [
            s
            for s in context.scopes
            if s.resource_type == TYPE and letter in s.letters and not s.restriction
        ]
        if any(s.context is not Context.PATIENT for s in scopes) and not context.external:
            try:
                client = await self._clients.get(context.client_id)
            except PyMongoError:
                raise _unavailable() from None
            if client is not None and client.trusted:
                return Reach(everything=True)
        if any(s.context is Context.PATIENT for s in scopes):
            if not context.patients:
                raise Forbidden("patient/ scopes need a patient in context; this token has none")
            return Reach(everything=False, patients=context.patients)
        if scopes:
            raise Forbidden(
                "user/ and system/ AuditEvent scopes are for administrators only: an app "
                "registered as trusted with this gateway, with a token the gateway issued"
            )
        raise Forbidden(
            f"the access token has no scope that allows {doing} AuditEvent; {_FORBIDDEN_SCOPES}"
        )

    async def _read(self, context: AccessContext, event_id: str) -> dict[str, Any]:
        reach = await self.reach(context, "r", "reading")
        try:
            with pymongo.timeout(_READ_TIMEOUT):
                event = await self._reader.read(event_id)
        except PyMongoError:
            raise _unavailable() from None
        if event is None or not reach.sees(event):
            raise NotFound("no such AuditEvent is available to this access token")
        return reach.shown(event)

    async def _search(
        self, context: AccessContext, params: list[tuple[str, str]], self_url: str
    ) -> dict[str, Any]:
        cursor: str | None = None
        if any(name == _PAGE for name, _ in params):
            if len(params) != 1:
                raise BadRequest("_page takes no other parameters: follow the link as it is")
            params, cursor = self._open(params[0][1], context)
        reach = await self.reach(context, "s", "searching")
        query = replace(criteria(params, reach), cursor=cursor)
        try:
            with pymongo.timeout(_READ_TIMEOUT):
                page = await self._reader.search(query)
        except InvalidCursor:
            raise Forbidden("this paging link is not valid; run the search again") from None
        except PyMongoError:
            raise _unavailable() from None
        events = [reach.shown(event) for event in page.events if reach.sees(event)]  # again
        links = [{"relation": "self", "url": self_url}] if self_url else []
        if page.next is not None:
            links.append({"relation": "next", "url": self._next(params, page.next, context)})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
        if events:
            bundle["entry"] = [
                {
                    "fullUrl": f"{self._base}/{TYPE}/{event['id']}",
                    "resource": event,
                    "search": {"mode": "match"},
                }
                for event in events
            ]
        return bundle

    def _next(self, params: Sequence[tuple[str, str]], cursor: str, context: AccessContext) -> str:
        link = PageLink(
            upstream=urlencode([*params, (_CURSOR, cursor)]),
            kind=Kind.SEARCH_TYPE.value,
            resource_type=TYPE,
            letters="s",
        )
        return f"{self._base}/{TYPE}?{_PAGE}={self._pages.seal(link, context)}"

    def _open(self, token: str, context: AccessContext) -> tuple[list[tuple[str, str]], str | None]:
        """The search and position a paging link carries (403 when it is not one of ours, was
        altered, is another token's or has expired)."""
        link = self._pages.open(token, context)
        if link.resource_type != TYPE or link.kind != Kind.SEARCH_TYPE.value:
            raise Forbidden("this is not a paging link of the audit log")
        pairs = parse_qsl(link.upstream, keep_blank_values=True)
        cursor = next((value for name, value in pairs if name == _CURSOR), None)
        return [(name, value) for name, value in pairs if name != _CURSOR], cursor


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("the audit log cannot be read right now; try again shortly")


def criteria(params: Sequence[tuple[str, str]], reach: Reach) -> AuditQuery:
    """The search parameters as a query of the log, within ``reach``; 400 for a parameter or
    value this API does not take, 403 for a patient outside the reach."""
    names = [name for name, _ in params]
    unknown = sorted(set(names) - set(SEARCH_PARAMETERS) - {"agent:identifier"})
    if unknown:
        raise BadRequest(
            f"AuditEvent search takes {', '.join(SEARCH_PARAMETERS)} (and agent:identifier); "
            f"not {', '.join(unknown)}"
        )
    for name in _SINGLE:
        if names.count(name) > 1:
            raise BadRequest(f"{name} may be given once")
    if "agent" in names and "agent:identifier" in names:
        raise BadRequest("give agent or agent:identifier, not both")
    values: dict[str, str] = {}
    for name, value in params:
        if not value.strip():
            raise BadRequest(f"{name} has no value")
        if "," in value:
            raise BadRequest(f"{name} takes one value (no comma-separated list)")
        values[name] = value.strip()
    query = AuditQuery(patients=None if reach.everything else reach.patients)
    if "patient" in values:
        query = replace(query, patient=_patient(values["patient"], reach))
    if "agent" in values:
        query = replace(query, agent=_agent(values["agent"]))
    if "agent:identifier" in values:
        query = replace(query, agent=_identifier(values["agent:identifier"]))
    if "subtype" in values:
        system, _, code = values["subtype"].rpartition("|")
        if not code:
            raise BadRequest("subtype takes [code] or [system]|[code]")
        query = replace(query, subtype=code, subtype_system=system or None)
    if "outcome" in values:
        query = replace(
            query, outcome=_code("outcome", values["outcome"], OUTCOME_SYSTEM, _OUTCOMES)
        )
    if "action" in values:
        query = replace(query, action=_code("action", values["action"], ACTION_SYSTEM, _ACTIONS))
    if "_count" in values:
        count = values["_count"]
        if not count.isdigit() or int(count) < 1:
            raise BadRequest(f"_count takes a number from 1 to {MAX_COUNT}")
        query = replace(query, count=min(int(count), MAX_COUNT))
    for name, value in params:
        if name == "date":
            since, until = _date_bounds(value.strip())
            if since is not None and (query.since is None or since > query.since):
                query = replace(query, since=since)
            if until is not None and (query.until is None or until < query.until):
                query = replace(query, until=until)
    return query


def _patient(value: str, reach: Reach) -> str:
    found = patient_id(value, bare=True)
    if found is None:
        raise BadRequest("patient takes Patient/[id] or [id]")
    if not reach.everything and found not in reach.patients:
        raise Forbidden("that patient's AuditEvents are outside this token's access")
    return found


def _agent(value: str) -> str:
    if not _REFERENCE.match(value):
        raise BadRequest(
            "agent takes a reference Type/[id] (Practitioner/..., Patient/..., "
            "RelatedPerson/...); for an app or a user use agent:identifier=[system]|[value]"
        )
    return value


def _identifier(value: str) -> str:
    system, bar, code = value.partition("|")
    if not (system and bar and code):
        raise BadRequest(
            "agent:identifier takes [system]|[value], e.g. urn:fhir-gateway:client|[client_id]"
        )
    return value


def _code(name: str, value: str, system: str, codes: frozenset[str]) -> str:
    given_system, bar, code = value.rpartition("|")
    if (bar and given_system and given_system != system) or code not in codes:
        raise BadRequest(f"{name} takes one of {', '.join(sorted(codes))} (system {system})")
    return code


def _date_bounds(value: str) -> tuple[datetime | None, datetime | None]:
    """A ``date`` parameter as [since, until) on ``recorded`` (kept to the millisecond)."""
    match = _PREFIX.match(value)
    prefix = (match.group(1) if match else None) or "eq"
    bounds = interval(match.group(2)) if match else None
    if bounds is None:
        raise BadRequest(
            "date takes a FHIR date, dateTime or instant with an optional prefix eq, ge, gt, "
            f"le or lt (e.g. date=ge2026-03-01); not '{value[:40]}'"
        )
    if prefix not in ("eq", "ge", "gt", "le", "lt"):
        raise BadRequest(f"date takes the prefixes eq, ge, gt, le and lt; not {prefix}")
    low, high = bounds
    try:
        after_high = _floor_ms(high) + _MS
        from_low = _ceil_ms(low)
    except OverflowError:
        raise BadRequest("date is out of range") from None
    if prefix == "ge":
        return from_low, None
    if prefix == "gt":
        return after_high, None
    if prefix == "le":
        return None, after_high
    if prefix == "lt":
        return None, from_low
    return from_low, after_high


def _floor_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _ceil_ms(moment: datetime) -> datetime:
    floor = _floor_ms(moment)
    return floor if floor == moment else floor + _MS


def _served(answer: Answer) -> Answer:
    """The AuditEvents an answer releases, for this request's own audit record: reading who saw
    a patient's data is itself recorded against that patient (A-01)."""
    audit = auditing.current()
    body = answer.body
    if audit is None or body is None:
        return answer
    events = (
        [body]
        if body.get("resourceType") == "AuditEvent"
        else [
            entry["resource"]
            for entry in body.get("entry") or []
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
        ]
    )
    for event in events:
        audit.served(event, patient_ids(event))
    return answer
