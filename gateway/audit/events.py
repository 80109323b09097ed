"""AuditEvents of FHIR requests (AUDIT.md A-01 … A-05), following IHE Basic Audit Log Patterns
(profiles.ihe.net/ITI/BALP: Read, Query, Create, Update, Delete and their Patient variants, with
the OAuth access-token pattern for the user).

``request_events(facts, observer)`` turns the facts of one request into FHIR R4 AuditEvent dicts,
one per patient whose data the request touched (BALP: "one AuditEvent for every Patient"), or one
without a patient entity when there was none (a refusal before any patient was known, data about
no patient):

- ``type`` ``rest``; ``subtype`` the ``restful-interaction`` code; ``action`` R, E, C, U or D;
  ``outcome`` 0 (2xx/3xx), 4 (refused, 4xx) or 8 (failed, 5xx) with ``outcomeDesc``;
  ``purposeOfEvent`` the token's purposes of use (v3-ActReason).
- Agents: the user of the token (BALP ``UserOauthAgent``, requestor, ``who`` = ``fhirUser`` and
  the issuer's ``sub``, the token's ``jti`` in ``policy``, no network — the token itself never);
  the app (``who.identifier`` = its client_id in ``urn:fhir-gateway:client``, network = the
  caller's address); the gateway as server (network = its FHIR base).
- Entities: the patient (role 1); for reads and writes the resource (``Type/id/_history/v``); for
  searches, history and operations the query (role 24, ``query`` = base64 of the raw request, no
  list of results); the X-Request-Id; and per distinct consent decision the Consent and provision
  that decided, its basis, and the purposes whose minimisation profile applied (A-05).

Builders are pure: the same facts and ids give the same dict.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from consent.codes import CLIENT_SYSTEM
from consent.decide import Decision
from gateway.audit import codes as c
from gateway.audit.facts import Observer, PatientRelease, RequestFacts, distinct

IdFactory = Callable[[], str]

MAX_LISTED = 100
"""At most this many resources are listed as entities of one event; ``released`` counts all."""
MAX_DECISIONS = 20
"""At most this many distinct consent decisions per event (a search decides alike many times)."""

# interaction kind -> (restful-interaction code, action)
_REST: dict[str, tuple[str, str]] = {
    "read": ("read", c.READ),
    "vread": ("vread", c.READ),
    "history-instance": ("history-instance", c.READ),
    "history-type": ("history-type", c.EXECUTE),
    "history-system": ("history-system", c.EXECUTE),
    "search-type": ("search-type", c.EXECUTE),
    "search-system": ("search-system", c.EXECUTE),
    # R4 has no search-compartment code: a compartment search is a type search within it.
    "search-compartment": ("search-type", c.EXECUTE),
    "page": ("search", c.EXECUTE),  # the next page of a search
    "capabilities": ("capabilities", c.READ),
    "create": ("create", c.CREATE),
    "update": ("update", c.UPDATE),
    "patch": ("patch", c.UPDATE),
    "delete": ("delete", c.DELETE),
    "batch": ("batch", c.EXECUTE),
    "transaction": ("transaction", c.EXECUTE),
    "operation": ("operation", c.EXECUTE),
}
QUERY_KINDS = frozenset(
    {
        "search-type",
        "search-system",
        "search-compartment",
        "page",
        "history-type",
        "history-system",
        "history-instance",
        "operation",
    }
)
"""Interactions recorded with a query entity and a count, never a list of what was released."""


def new_id() -> str:
    return str(uuid.uuid4())


def instant(at: datetime) -> str:
    """A FHIR ``instant`` in UTC with milliseconds: one fixed format, so that these strings sort
    and compare as the times they are."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def outcome_of(status: int) -> str:
    if status >= 500:
        return c.SERIOUS_FAILURE
    if status >= 400:
        return c.MINOR_FAILURE
    return c.SUCCESS


def interaction_code(interaction: str) -> tuple[str, str]:
    """The ``restful-interaction`` code and the action of an interaction kind."""
    try:
        return _REST[interaction]
    except KeyError:
        raise ValueError(f"no AuditEvent subtype for the interaction '{interaction}'") from None


def source(observer: Observer) -> dict[str, Any]:
    return {
        "site": observer.name,
        "observer": gateway_reference(observer),
        "type": [c.coding(c.SOURCE_TYPE, "4", "Application Server")],
    }


def gateway_reference(observer: Observer) -> dict[str, Any]:
    return {
        "identifier": {"system": c.GATEWAY_SYSTEM, "value": observer.name},
        "display": "FHIR consent gateway",
    }


def purposes_of_use(purposes: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"coding": [c.coding(c.ACT_REASON, code)]} for code in purposes]


def _user_agent(facts: RequestFacts, writes: bool) -> dict[str, Any] | None:
    """BALP's OAuth user agent: the one the token was issued to act for."""
    if facts.subject is None and facts.fhir_user is None:
        return None
    who: dict[str, Any] = {}
    if facts.fhir_user:
        who["reference"] = facts.fhir_user
    if facts.subject:
        who["identifier"] = {"system": facts.issuer or c.USER_SYSTEM, "value": facts.subject}
    direction = (
        c.coding(c.ROLE_CLASS, "AGNT", "agent")
        if writes
        else c.coding(c.PARTICIPATION_TYPE, "IRCP", "information recipient")
    )
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                c.coding(c.BALP_USER_AGENT, "UserOauthAgent", "User OAuth Agent participant"),
                direction,
            ]
        },
        "who": who,
        "requestor": True,
    }
    if facts.jti:
        agent["policy"] = [facts.jti]
    if facts.purposes:
        agent["purposeOfUse"] = purposes_of_use(facts.purposes)
    return agent


def client_agent(
    client_id: str | None, address: str, role: tuple[str, str], *, requestor: bool = False
) -> dict[str, Any]:
    agent: dict[str, Any] = {"type": {"coding": [c.dicom(role)]}, "requestor": requestor}
    if client_id:
        agent["who"] = {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}}
    if address:
        agent["network"] = {"address": address, "type": "2"}  # IP address
    return agent


def server_agent(observer: Observer, role: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": {"coding": [c.dicom(role)]},
        "who": gateway_reference(observer),
        "requestor": False,
        "network": {"address": observer.fhir_base, "type": "5"},  # URI
    }


def _agents(facts: RequestFacts, observer: Observer, action: str) -> list[dict[str, Any]]:
    # BALP follows DICOM: for a read the server is the Source Role and the app the Destination;
    # for queries, operations and writes the app (where the request comes from) is the Source.
    reads = action == c.READ
    client_role = c.DESTINATION_ROLE if reads else c.SOURCE_ROLE
    server_role = c.SOURCE_ROLE if reads else c.DESTINATION_ROLE
    agents: list[dict[str, Any]] = []
    user = _user_agent(facts, writes=action in (c.CREATE, c.UPDATE, c.DELETE))
    if user is not None:
        agents.append(user)
    agents.append(client_agent(facts.client_id, facts.address, client_role))
    agents.append(server_agent(observer, server_role))
    return agents


def patient_entity(patient: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"reference": f"Patient/{patient}"},
        "type": c.coding(c.ENTITY_TYPE, *c.PERSON),
        "role": c.coding(c.OBJECT_ROLE, *c.ROLE_PATIENT),
    }
    if details:
        entity["detail"] = details
    return entity


def data_entity(reference: str) -> dict[str, Any]:
    return {
        "what": {"reference": reference},
        "type": c.coding(c.ENTITY_TYPE, *c.SYSTEM_OBJECT),
        "role": c.coding(c.OBJECT_ROLE, *c.ROLE_DOMAIN_RESOURCE),
    }


def _query_entity(facts: RequestFacts) -> dict[str, Any]:
    raw = f"{facts.method} {facts.path}"
    if facts.query:
        raw += f"?{facts.query}"
    return {
        "type": c.coding(c.ENTITY_TYPE, *c.SYSTEM_OBJECT),
        "role": c.coding(c.OBJECT_ROLE, *c.ROLE_QUERY),
        "query": base64.b64encode(raw.encode("utf-8", "surrogateescape")).decode("ascii"),
    }


def _request_id_entity(request_id: str) -> dict[str, Any]:
    return {
        "what": {"identifier": {"value": request_id}},
        "type": c.coding(c.BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
    }


def detail(kind: str, value: str) -> dict[str, str]:
    return {"type": kind, "valueString": value}


def decision_entity(decision: Decision) -> dict[str, Any]:
    """A consent decision that applied (A-05): the Consent and provision (none under the base
    policy), the decision, its basis, and the purposes whose minimisation profiles applied."""
    details = [
        detail("decision", "permit" if decision.permitted else "deny"),
        detail("basis", decision.basis.value),
    ]
    if decision.provision:
        details.append(detail("provision", decision.provision))
    if decision.permitted:
        profile = "+".join(decision.purposes) if decision.purposes else "(elements always kept)"
        details.append(detail("minimisation-profile", profile))
    if decision.labels:
        details.append(detail("labels", ",".join(decision.labels)))
    entity: dict[str, Any] = {
        "type": c.coding(c.RESOURCE_TYPES, "Consent", "Consent"),
        "role": c.coding(c.OBJECT_ROLE, *c.ROLE_SECURITY_RESOURCE),
        "detail": details,
    }
    if decision.consent_id:
        entity["what"] = {"reference": f"Consent/{decision.consent_id}"}
    else:
        entity["description"] = "the app's base policy (no Consent decided)"
    return entity


def _target(facts: RequestFacts) -> str | None:
    """The resource a read or write is about, as ``Type/id[/_history/version]``."""
    if not (facts.resource_type and facts.resource_id):
        return None
    reference = f"{facts.resource_type}/{facts.resource_id}"
    return f"{reference}/_history/{facts.version_id}" if facts.version_id else reference


def _entities(facts: RequestFacts, release: PatientRelease | None) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if release is not None:
        details = [detail("released", str(release.released))]
        types = sorted(set(release.types) | {ref.split("/", 1)[0] for ref in release.resources})
        if types:
            details.append(detail("resource-types", ",".join(types)))
        entities.append(patient_entity(release.patient, details))
    if facts.interaction in QUERY_KINDS:
        entities.append(_query_entity(facts))
    else:
        listed = list(release.resources if release is not None else ())
        target = _target(facts)
        if target is not None and not any(
            r == target or r.startswith(f"{target}/") for r in listed
        ):
            listed.insert(0, target)
        entities.extend(data_entity(ref) for ref in dict.fromkeys(listed[:MAX_LISTED]))
    if release is not None:
        entities.extend(decision_entity(d) for d in distinct(release.decisions)[:MAX_DECISIONS])
    if facts.request_id:
        entities.append(_request_id_entity(facts.request_id))
    return entities


def request_events(
    facts: RequestFacts, observer: Observer, ids: IdFactory = new_id
) -> list[dict[str, Any]]:
    """The AuditEvents of one request: one per patient of ``facts.patients``, or one without a
    patient entity when there are none."""
    subtype, action = interaction_code(facts.interaction)
    outcome = outcome_of(facts.status)
    releases: list[PatientRelease | None] = list(facts.patients) or [None]
    events = []
    for release in releases:
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": ids(),
            "type": c.coding(c.AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
            "subtype": [c.coding(c.RESTFUL_INTERACTION, subtype, subtype)],
            "action": action,
            "recorded": instant(facts.at),
            "outcome": outcome,
        }
        if outcome != c.SUCCESS and facts.reason:
            event["outcomeDesc"] = facts.reason[:1000]
        if facts.purposes:
            event["purposeOfEvent"] = purposes_of_use(facts.purposes)
        event["agent"] = _agents(facts, observer, action)
        event["source"] = source(observer)
        event["entity"] = _entities(facts, release)
        events.append(event)
    return events
