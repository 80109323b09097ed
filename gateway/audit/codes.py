"""Code systems and codes the audit package writes (FHIR R4 AuditEvent,
hl7.org/fhir/R4/auditevent.html; IHE Basic Audit Log Patterns, profiles.ihe.net/ITI/BALP; DICOM
PS3.16 audit codes).

Each constant names its source; the builders in :mod:`gateway.audit.events` and
:mod:`gateway.audit.security` only combine them.
"""

from __future__ import annotations

from typing import Final

# --- code systems
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE: Final = "http://hl7.org/fhir/network-type"
PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SECURITY_ROLE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
BALP_USER_AGENT: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
BALP_ENTITY_TYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_AUTHZ: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"

GATEWAY_SYSTEM: Final = "urn:fhir-gateway:instance"
"""The identifier system of a gateway instance (its audit chain name): the observer and server."""
USER_SYSTEM: Final = "urn:fhir-gateway:user"
"""The identifier system of the gateway's own sign-in accounts (their user id)."""
USERNAME_SYSTEM: Final = "urn:fhir-gateway:username"
"""A name typed on the sign-in page that matched no account (failed sign-ins)."""
GRANT_SYSTEM: Final = "urn:fhir-gateway:grant"
"""The identifier system of an app's grant for a patient (every token of it)."""
SIGNING_KEY_SYSTEM: Final = "urn:fhir-gateway:signing-key"
LAUNCH_SYSTEM: Final = "urn:fhir-gateway:launch"
"""The identifier system of a token signing key (its ``kid``)."""
JTI_PREFIX: Final = "urn:ietf:params:oauth:jti:"
"""BALP: a token's ``jti`` named as an identifier value (RFC 3553 URN)."""

# --- AuditEvent.outcome (R4: a code)
SUCCESS: Final = "0"
MINOR_FAILURE: Final = "4"
"""Refused: the request was answered 4xx."""
SERIOUS_FAILURE: Final = "8"
"""The gateway or a dependency failed: 5xx."""

# --- AuditEvent.action
READ: Final = "R"
EXECUTE: Final = "E"
CREATE: Final = "C"
UPDATE: Final = "U"
DELETE: Final = "D"

# --- DICOM event types and subtypes (PS3.16 CID 400, 401)
USER_AUTHENTICATION: Final = ("110114", "User Authentication")
LOGIN: Final = ("110122", "Login")
LOGOUT: Final = ("110123", "Logout")
SECURITY_ALERT: Final = ("110113", "Security Alert")
PATIENT_RECORD: Final = ("110110", "Patient Record")
SECURITY_CONFIGURATION: Final = ("110129", "Security Configuration")
SOFTWARE_CONFIGURATION: Final = ("110131", "Software Configuration")
OBJECT_SECURITY_CHANGED: Final = ("110135", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED: Final = ("110136", "Security Roles Changed")
USER_SECURITY_CHANGED: Final = ("110137", "User Security Attributes Changed")
SOURCE_ROLE: Final = ("110153", "Source Role ID")
DESTINATION_ROLE: Final = ("110152", "Destination Role ID")
APPLICATION: Final = ("110150", "Application")

# --- audit-entity-type and object-role
PERSON: Final = ("1", "Person")
SYSTEM_OBJECT: Final = ("2", "System Object")
ROLE_PATIENT: Final = ("1", "Patient")
ROLE_DOMAIN_RESOURCE: Final = ("4", "Domain Resource")
ROLE_SECURITY_USER: Final = ("11", "Security User Entity")
ROLE_SECURITY_RESOURCE: Final = ("13", "Security Resource")
ROLE_QUERY: Final = ("24", "Query")


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def dicom(code: tuple[str, str]) -> dict[str, str]:
    return coding(DICOM, code[0], code[1])
