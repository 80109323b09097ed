"""Writing the Consent a patient gives on the authorization screen (CONSENT.md C-05), through
``consent.store.ConsentStore.grant_app``: permit, actor = the app, class = the granted resource
types (``*`` becomes every type of the Patient compartment, since a Consent's ``class`` lists
types), purpose = the app's declared purposes, period = now .. the end date the patient picked,
and the sensitive categories the patient ticked as a nested permit naming their labels (C-26).
"""

from __future__ import annotations

from aiohttp import web

from consent.errors import ConsentError
from consent.store import Change, Channel
from gateway.appkeys import CONSENTS
from gateway.fhir.fhirdata import PATIENT_COMPARTMENT_PARAMS
from gateway.oauth.errors import BadPage
from smart_auth.accounts.users import User
from smart_auth.clients import Client
from smart_auth.consent_screen import ConsentTerms

COMPARTMENT_TYPES = tuple(
    sorted({"Patient", *(name for name, params in PATIENT_COMPARTMENT_PARAMS.items() if params)})
)


async def write_app_consent(
    request: web.Request, client: Client, patient: str, user: User, terms: ConsentTerms
) -> str:
    """Write the Consent and return its id (before any code is issued)."""
    types = list(terms.resource_types)
    if "*" in types:
        types = list(COMPARTMENT_TYPES)
    try:
        created = await request.app[CONSENTS].grant_app(
            patient,
            client.client_id,
            client.name,
            list(client.purposes),
            types,
            list(terms.granular_scopes),
            terms.start,
            terms.end,
            user.fhir_user,
            change=Change(user.fhir_user or f"user:{user.user_id}", Channel.CONSENT_SCREEN),
            sensitivity_labels=terms.labels,
        )
    except ConsentError as exc:
        raise BadPage(
            "Your choice could not be recorded, so the app was not connected: %(reason)s",
            reason=str(exc),
        ) from None
    return str(created["id"])
