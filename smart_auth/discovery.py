"""Discovery (SMART App Launch 2.2 section 2.0.6 "SMART on FHIR Well-Known URI"; S-01 … S-06, S-08;
OpenID Connect Discovery 1.0 for ``sso-openid-connect``).

- :func:`smart_configuration` — ``{fhir-base}/.well-known/smart-configuration``.
- :func:`openid_configuration` — ``{issuer}/.well-known/openid-configuration``.
- :func:`add_security` — the ``rest.security`` of the CapabilityStatement: the SMART-on-FHIR service
  code and the ``oauth-uris`` extension (FHIR clients such as ``fhirclient`` read their endpoints
  from it).

Every URL is absolute. ``code_challenge_methods_supported`` is ``["S256"]`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smart_auth.scopes import ACCESS_SCOPES, IDENTITY_SCOPES, LAUNCH_SCOPES

CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
ASSERTION_ALGORITHMS = ("RS384", "ES384")
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True, slots=True)
class Endpoints:
    issuer: str  # the gateway's public base URL
    fhir_base: str

    @property
    def authorize(self) -> str:
        return f"{self.issuer}/auth/authorize"

    @property
    def token(self) -> str:
        return f"{self.issuer}/auth/token"

    @property
    def introspect(self) -> str:
        return f"{self.issuer}/auth/introspect"

    @property
    def revoke(self) -> str:
        return f"{self.issuer}/auth/revoke"

    @property
    def jwks(self) -> str:
        return f"{self.issuer}/auth/jwks"

    @property
    def manage(self) -> str:
        return f"{self.issuer}/account/apps"


def _scopes_supported() -> list[str]:
    return [
        *sorted(IDENTITY_SCOPES),
        *sorted(LAUNCH_SCOPES),
        *sorted(ACCESS_SCOPES),
        "patient/*.cruds",
        "patient/*.rs",
        "patient/*.read",
        "user/*.cruds",
        "user/*.rs",
        "user/*.read",
        "system/*.rs",
        "system/*.read",
    ]


def smart_configuration(endpoints: Endpoints) -> dict[str, Any]:
    return {
        "issuer": endpoints.issuer,
        "jwks_uri": endpoints.jwks,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "introspection_endpoint": endpoints.introspect,
        "revocation_endpoint": endpoints.revoke,
        "management_endpoint": endpoints.manage,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": _scopes_supported(),
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(endpoints: Endpoints) -> dict[str, Any]:
    return {
        "issuer": endpoints.issuer,
        "authorization_endpoint": endpoints.authorize,
        "token_endpoint": endpoints.token,
        "jwks_uri": endpoints.jwks,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "fhirUser", "nonce"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
    }


def security_section(endpoints: Endpoints) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` for a SMART-protected server (S-08)."""
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": "authorize", "valueUri": endpoints.authorize},
                    {"url": "token", "valueUri": endpoints.token},
                    {"url": "introspect", "valueUri": endpoints.introspect},
                    {"url": "revoke", "valueUri": endpoints.revoke},
                    {"url": "manage", "valueUri": endpoints.manage},
                ],
            }
        ],
    }


def add_security(statement: dict[str, Any], endpoints: Endpoints) -> dict[str, Any]:
    """The CapabilityStatement with every ``rest`` entry's ``security`` set to ours."""
    if statement.get("resourceType") != "CapabilityStatement":
        return statement
    rests = statement.get("rest") or [{"mode": "server"}]
    statement["rest"] = [
        {**rest, "security": security_section(endpoints)} if isinstance(rest, dict) else rest
        for rest in rests
    ]
    return statement
