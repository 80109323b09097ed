"""Security AuditEvents (AUDIT.md A-01; SECURITY.md P-05, P-09, P-18): sign-ins and their failures,
sign-outs, second-factor changes, tokens issued and revoked, consent changes, key rotation,
erasure and administrative acts — recorded on the same chain as releases, so that one
verification covers them all.

Codes (DICOM PS3.16 CID 400/401, IHE BALP; "alert" is 110113 Security Alert):

========================  =========================  ====================================  ======
act                       type                       subtype                               action
========================  =========================  ====================================  ======
sign-in (failed: 4)       110114 User Authenticat.   110122 Login                          E
sign-out                  110114 User Authenticat.   110123 Logout                         E
second factor changed     alert                      110137 User Security Attributes Chg.  U
password changed          alert                      110137 User Security Attributes Chg.  U
app approved / denied     alert                      BALP AuthZ-Consent                    E
token issued              alert                      BALP AuthZ-Consent (or AuthZ-Role)    E
token revoked             alert                      110135 Object Security Attributes     D
consent changed           rest                       create / update / delete (BALP)       C/U/D
signing key rotated       alert                      110129 Security Configuration         U
app registered / removed  alert                      110131 Software Configuration         C/D
account added             alert                      110136 Security Roles Changed         C
EHR launch context made   alert                      110135 Object Security Attributes     C
patient erased (C-22)     110110 Patient Record      delete                                D
========================  =========================  ====================================  ======

A token is named by its ``jti`` (as ``urn:ietf:params:oauth:jti:...``), never by its value; a
password or a second-factor secret never appears.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from enum import Enum
from typing import Any

from consent.codes import CLIENT_SYSTEM
from gateway.audit import codes as c
from gateway.audit.events import (
    IdFactory,
    client_agent,
    data_entity,
    detail,
    gateway_reference,
    instant,
    new_id,
    patient_entity,
    purposes_of_use,
    server_agent,
    source,
)
from gateway.audit.facts import Actor, ConsentChange, Observer, utcnow


def _actor_agent(actor: Actor, kind: dict[str, str] | None = None) -> dict[str, Any]:
    """The person (or the command line) who acted: requestor, no network (BALP)."""
    who: dict[str, Any] = {}
    if actor.fhir_user:
        who["reference"] = actor.fhir_user
    if actor.user_id:
        who["identifier"] = {"system": c.USER_SYSTEM, "value": actor.user_id}
    elif actor.username:
        who["identifier"] = {"system": c.USERNAME_SYSTEM, "value": actor.username[:64]}
    elif actor.client_id:  # an app acting on its own (backend services)
        who["identifier"] = {"system": CLIENT_SYSTEM, "value": actor.client_id}
    if not who:
        who["display"] = "unknown"
    coding = kind or c.coding(c.ROLE_CLASS, "AGNT", "agent")
    return {"type": {"coding": [coding]}, "who": who, "requestor": True}


def _device_agent(actor: Actor) -> dict[str, Any] | None:
    """Where the act came from: the app, or the browser (its User-Agent) and address."""
    if not (actor.client_id or actor.address or actor.user_agent):
        return None
    agent = client_agent(actor.client_id, actor.address, c.APPLICATION)
    if not actor.client_id and actor.user_agent:
        agent["name"] = actor.user_agent[:256]
    return agent


def _authorizer(observer: Observer) -> dict[str, Any]:
    return {
        "type": {"coding": [c.coding(c.SECURITY_ROLE_TYPE, "authserver", "authorization server")]},
        "who": gateway_reference(observer),
        "requestor": False,
    }


def _user_entity(user_id: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"identifier": {"system": c.USER_SYSTEM, "value": user_id}},
        "type": c.coding(c.ENTITY_TYPE, *c.PERSON),
        "role": c.coding(c.OBJECT_ROLE, *c.ROLE_SECURITY_USER),
    }
    if details:
        entity["detail"] = details
    return entity


def _token_entity(jti: str, details: list[dict[str, str]]) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"identifier": {"value": f"{c.JTI_PREFIX}{jti}"}},
        "type": c.coding(c.BALP_USER_AGENT, "UserOauthAgent", "User OAuth Agent participant"),
    }
    if details:
        entity["detail"] = details
    return entity


def _object_entity(system: str, value: str, details: list[dict[str, str]]) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"identifier": {"system": system, "value": value}},
        "type": c.coding(c.ENTITY_TYPE, *c.SYSTEM_OBJECT),
        "role": c.coding(c.OBJECT_ROLE, *c.ROLE_SECURITY_RESOURCE),
    }
    if details:
        entity["detail"] = details
    return entity


def _event(
    observer: Observer,
    actor: Actor,
    *,
    type_: dict[str, str],
    subtype: dict[str, str] | None,
    action: str,
    entities: Sequence[dict[str, Any]] = (),
    succeeded: bool = True,
    reason: str | None = None,
    purposes: tuple[str, ...] = (),
    extra_agents: Sequence[dict[str, Any]] = (),
    actor_kind: dict[str, str] | None = None,
    at: datetime | None,
    ids: IdFactory,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": ids(),
        "type": type_,
    }
    if subtype is not None:
        event["subtype"] = [subtype]
    event["action"] = action
    event["recorded"] = instant(at or utcnow())
    event["outcome"] = c.SUCCESS if succeeded else c.MINOR_FAILURE
    if reason:
        event["outcomeDesc"] = reason[:1000]
    if purposes:
        event["purposeOfEvent"] = purposes_of_use(purposes)
    agents = [_actor_agent(actor, actor_kind)]
    device = _device_agent(actor)
    if device is not None:
        agents.append(device)
    agents.extend(extra_agents)
    event["agent"] = agents
    event["source"] = source(observer)
    if entities:
        event["entity"] = list(entities)
    return event


def login(
    observer: Observer,
    actor: Actor,
    *,
    succeeded: bool,
    reason: str | None = None,
    second_factor_pending: bool = False,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """A sign-in, or a failed one (wrong password, unknown name, wrong second factor, locked)."""
    entities = []
    if actor.user_id:
        details = [detail("second-factor", "pending")] if second_factor_pending else None
        entities.append(_user_entity(actor.user_id, details))
    return _event(
        observer,
        actor,
        type_=c.dicom(c.USER_AUTHENTICATION),
        subtype=c.dicom(c.LOGIN),
        action=c.EXECUTE,
        entities=entities,
        succeeded=succeeded,
        reason=reason,
        at=at,
        ids=ids,
    )


def logout(
    observer: Observer,
    actor: Actor,
    *,
    everywhere: bool = False,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """A sign-out; ``everywhere``: every session of the account ended."""
    details = [detail("sessions", "all")] if everywhere else None
    entities = [_user_entity(actor.user_id, details)] if actor.user_id else []
    return _event(
        observer,
        actor,
        type_=c.dicom(c.USER_AUTHENTICATION),
        subtype=c.dicom(c.LOGOUT),
        action=c.EXECUTE,
        entities=entities,
        at=at,
        ids=ids,
    )


def second_factor_changed(
    observer: Observer,
    actor: Actor,
    user_id: str,
    change: str,
    *,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """A second factor enrolled, replaced or removed (``change`` says which)."""
    return _event(
        observer,
        actor,
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.dicom(c.USER_SECURITY_CHANGED),
        action=c.UPDATE,
        entities=[_user_entity(user_id, [detail("second-factor", change)])],
        at=at,
        ids=ids,
    )


def password_changed(
    observer: Observer,
    actor: Actor,
    user_id: str,
    *,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """An account's password changed by its user (the patient's security page, P-18)."""
    return _event(
        observer,
        actor,
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.dicom(c.USER_SECURITY_CHANGED),
        action=c.UPDATE,
        entities=[_user_entity(user_id, [detail("password", "changed")])],
        at=at,
        ids=ids,
    )


def app_authorization(
    observer: Observer,
    actor: Actor,
    *,
    client_id: str,
    patient: str | None,
    permitted: bool,
    scope: str,
    purposes: tuple[str, ...] = (),
    consent_id: str | None = None,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """The decision on the consent screen: the patient (or their representative) approved or
    denied an app (BALP AuthZconsent)."""
    entities = []
    if patient:
        entities.append(patient_entity(patient))
    if consent_id:
        entities.append(data_entity(f"Consent/{consent_id}"))
    entities.append(_object_entity(CLIENT_SYSTEM, client_id, [detail("scope", scope[:2000])]))
    return _event(
        observer,
        replace(actor, client_id=client_id),
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.coding(
            c.BALP_AUTHZ, "AuthZ-Consent", "Authorization Decision using Roles and Consent"
        ),
        action=c.EXECUTE,
        entities=entities,
        succeeded=permitted,
        reason=None if permitted else "the app was denied on the consent screen",
        purposes=purposes,
        extra_agents=[_authorizer(observer)],
        actor_kind=c.coding(c.PARTICIPATION_TYPE, "IRCP", "information recipient"),
        at=at,
        ids=ids,
    )


def token_issued(
    observer: Observer,
    actor: Actor,
    *,
    client_id: str,
    jti: str,
    grant_type: str,
    scope: str,
    patient: str | None = None,
    purposes: tuple[str, ...] = (),
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """An access token issued (its ``jti``, never the token): BALP's authorization decision with
    the token entity. For a user's token ``actor`` is the user; for backend services the app."""
    entities = []
    if patient:
        entities.append(patient_entity(patient))
    details = [detail("grant_type", grant_type), detail("scope", scope[:2000])]
    entities.append(_token_entity(jti, details))
    subtype = (
        c.coding(c.BALP_AUTHZ, "AuthZ-Consent", "Authorization Decision using Roles and Consent")
        if patient
        else c.coding(c.BALP_AUTHZ, "AuthZ-Role", "Authorization Decision using only Roles")
    )
    return _event(
        observer,
        replace(actor, client_id=client_id),
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=subtype,
        action=c.EXECUTE,
        entities=entities,
        purposes=purposes,
        extra_agents=[_authorizer(observer)],
        actor_kind=c.coding(c.PARTICIPATION_TYPE, "IRCP", "information recipient"),
        at=at,
        ids=ids,
    )


def token_revoked(
    observer: Observer,
    actor: Actor,
    *,
    client_id: str | None,
    jti: str | None = None,
    grant_id: str | None = None,
    patient: str | None = None,
    reason: str = "revoked",
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """A token or a whole grant (every token of an app for a patient) revoked; ``reason`` says
    why (revocation request, consent withdrawn, refresh token replayed, erasure...)."""
    entities = []
    if patient:
        entities.append(patient_entity(patient))
    details = [detail("reason", reason)]
    if client_id:
        details.append(detail("client_id", client_id))
    if jti:
        entities.append(_token_entity(jti, details))
    else:
        entities.append(_object_entity(c.GRANT_SYSTEM, grant_id or "all", details))
    return _event(
        observer,
        actor,
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.dicom(c.OBJECT_SECURITY_CHANGED),
        action=c.DELETE,
        entities=entities,
        at=at,
        ids=ids,
    )


_CONSENT_ACTIONS = {"create": c.CREATE, "update": c.UPDATE, "delete": c.DELETE}


def consent_changed(
    observer: Observer,
    actor: Actor,
    change: ConsentChange,
    *,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """A Consent created, changed (withdrawal included) or deleted: BALP's create/update/delete
    of a patient's resource, the resource being the Consent version (who, channel, reason)."""
    try:
        action = _CONSENT_ACTIONS[change.method]
    except KeyError:
        raise ValueError(f"no consent change '{change.method}'") from None
    reference = f"Consent/{change.consent_id}"
    if change.version:
        reference += f"/_history/{change.version}"
    data = data_entity(reference)
    data["detail"] = [detail("channel", change.channel)]
    if change.reason:
        data["detail"].append(detail("reason", change.reason[:500]))
    entities = [patient_entity(change.patient)] if change.patient else []
    entities.append(data)
    return _event(
        observer,
        actor,
        type_=c.coding(c.AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        subtype=c.coding(c.RESTFUL_INTERACTION, change.method, change.method),
        action=action,
        entities=entities,
        extra_agents=[server_agent(observer, c.DESTINATION_ROLE)],
        at=at,
        ids=ids,
    )


def key_rotated(
    observer: Observer,
    actor: Actor,
    *,
    new_kid: str,
    old_kid: str | None = None,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """The token signing key rotated (P-17)."""
    details = [detail("old-kid", old_kid)] if old_kid else []
    return _event(
        observer,
        actor,
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.dicom(c.SECURITY_CONFIGURATION),
        action=c.UPDATE,
        entities=[_object_entity(c.SIGNING_KEY_SYSTEM, new_kid, details)],
        at=at,
        ids=ids,
    )


def patient_erased(
    observer: Observer,
    actor: Actor,
    patient: str,
    *,
    grants_revoked: int,
    consents_withdrawn: int,
    consents_deleted: int,
    consents_kept: int,
    cache_keys_destroyed: int = 0,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """What the gateway held of a patient erased (GDPR Art. 17, CONSENT.md C-22)."""
    details = [
        detail("grants-revoked", str(grants_revoked)),
        detail("consents-withdrawn", str(consents_withdrawn)),
        detail("consents-deleted", str(consents_deleted)),
        detail("consents-kept", str(consents_kept)),
        detail("cache-keys-destroyed", str(cache_keys_destroyed)),
    ]
    return _event(
        observer,
        actor,
        type_=c.dicom(c.PATIENT_RECORD),
        subtype=c.coding(c.RESTFUL_INTERACTION, "delete", "delete"),
        action=c.DELETE,
        entities=[patient_entity(patient, details)],
        at=at,
        ids=ids,
    )


class AdminAction(Enum):
    """Administrative acts on the gateway's configuration (P-09): (subtype, action)."""

    CLIENT_ADDED = (c.SOFTWARE_CONFIGURATION, c.CREATE)
    CLIENT_REPLACED = (c.SOFTWARE_CONFIGURATION, c.UPDATE)
    CLIENT_REMOVED = (c.SOFTWARE_CONFIGURATION, c.DELETE)
    USER_ADDED = (c.SECURITY_ROLES_CHANGED, c.CREATE)


def admin_action(
    observer: Observer,
    actor: Actor,
    act: AdminAction,
    *,
    client_id: str | None = None,
    user_id: str | None = None,
    role: str | None = None,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """An app registered, replaced or removed, or an account added (with its role)."""
    subtype, action = act.value
    entities: list[dict[str, Any]] = []
    if client_id:
        entities.append(_object_entity(CLIENT_SYSTEM, client_id, []))
    if user_id:
        entities.append(_user_entity(user_id, [detail("role", role)] if role else None))
    return _event(
        observer,
        actor,
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.dicom(subtype),
        action=action,
        entities=entities,
        at=at,
        ids=ids,
    )


def launch_created(
    observer: Observer,
    actor: Actor,
    *,
    patient: str | None,
    at: datetime | None = None,
    ids: IdFactory = new_id,
) -> dict[str, Any]:
    """An EHR launch context made by a signed-in user (SMART EHR launch): an app launched with it
    gets that patient in context."""
    entities = [patient_entity(patient)] if patient else []
    entities.append(_object_entity(c.LAUNCH_SYSTEM, "launch", []))
    return _event(
        observer,
        actor,
        type_=c.dicom(c.SECURITY_ALERT),
        subtype=c.dicom(c.OBJECT_SECURITY_CHANGED),
        action=c.CREATE,
        entities=entities,
        at=at,
        ids=ids,
    )
