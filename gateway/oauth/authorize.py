"""The authorization endpoint and the pages after sign-in: the patient picker and the consent screen
(SMART 2.2 "Obtain authorization code"; S-09 … S-15; CONSENT.md C-05).

``GET``/``POST /auth/authorize`` validates the app's request with Authlib (client, exact redirect
URI, ``response_type=code``, scopes, PKCE S256, ``state``, ``aud``) and the EHR ``launch`` value,
keeps it in a flow, and sends the browser to sign in (or straight on, with a live session). After
sign-in: the patient picker when a patient user who acts for several patients asked
``launch/patient``, then the consent screen. Approving writes the FHIR Consent (patient users)
*before* Authlib issues the code; denying redirects with ``error=access_denied``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError

from consent.minimise import PROFILES
from gateway.appkeys import AUTH, AUTH_SERVER, SETTINGS, UPSTREAM
from gateway.audit import security
from gateway.fhir.representation import acts_for
from gateway.oauth.actsfor import patient_names
from gateway.oauth.adapter import call, plain_request, stored_request, to_response
from gateway.oauth.audited import acting, audited
from gateway.oauth.consents import COMPARTMENT_TYPES, write_app_consent
from gateway.oauth.errors import BadPage, NotAllowed, NotSignedIn
from gateway.oauth.rendering import (
    BROWSER_COOKIE,
    current_session,
    origin_of,
    redirect,
    render,
    set_cookie,
)
from gateway.web.requestkeys import METRIC_LABEL
from smart_auth.accounts.sessions import Session
from smart_auth.accounts.users import Role, User
from smart_auth.clients import Client
from smart_auth.consent_screen import (
    DEFAULT_EXPIRY,
    EXPIRY_CHOICES,
    consent_terms,
    expiry_end,
    granted_scope,
    screen,
    sensitive_categories,
    sensitivity_labels,
)
from smart_auth.flows import Flow, new_browser_cookie
from smart_auth.grants import Grant
from smart_auth.launch import LaunchContext
from smart_auth.scopes import Context, parse_scope


def _redirect_error(flow: Flow, description: str) -> InvalidRequestError:
    return InvalidRequestError(
        description, redirect_uri=flow.params["redirect_uri"], state=flow.params.get("state")
    )


async def authorize(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "authorize"
    auth = request.app[AUTH]
    plain = await plain_request(request)
    validated = await call(request, request.app[AUTH_SERVER].validate_authorization, plain)
    params = {key: value for key, value in plain.payload.data.items() if isinstance(value, str)}
    launch = params.get("launch")
    if launch is not None and await auth.launches.get(launch) is None:
        raise InvalidRequestError(
            "the launch value is unknown or has expired",
            redirect_uri=validated.redirect_uri,
            state=params.get("state"),
        )
    browser = request.cookies.get(BROWSER_COOKIE) or new_browser_cookie()
    flow = await auth.flows.start(browser, params=params)
    session = await current_session(request)
    user = await auth.users.get(session.user_id) if session else None
    if session is not None and user is not None:
        response = await after_sign_in(request, flow, session, user)
    else:
        response = redirect(f"/auth/login?flow={flow.flow_id}")
    set_cookie(request, response, BROWSER_COOKIE, browser)
    return response


async def _launch_context(request: web.Request, flow: Flow, user: User) -> LaunchContext | None:
    launch = flow.params.get("launch")
    if launch is None:
        return None
    context = await request.app[AUTH].launches.get(launch)
    if context is None or context.created_by != user.user_id:
        raise _redirect_error(flow, "the launch value is unknown, expired or not yours")
    return context


async def after_sign_in(
    request: web.Request, flow: Flow, session: Session, user: User
) -> web.Response:
    """Where a signed-in user goes next in this flow."""
    if not flow.is_authorization:
        return redirect(flow.next_page or "/auth/signed-in")
    if user.role is Role.ADMIN:
        raise NotAllowed("Administrator accounts cannot connect apps to health records.")
    patients = await acts_for(request.app[UPSTREAM], user) if user.role is Role.PATIENT else ()
    await request.app[AUTH].flows.signed_in(
        flow.flow_id, user_id=user.user_id, session_id=session.session_id, acts_for=patients
    )
    await _launch_context(request, flow, user)
    asks_patient = "launch/patient" in flow.params.get("scope", "").split()
    if user.role is Role.PATIENT and asks_patient and len(patients) > 1 and flow.patient is None:
        return redirect(f"/auth/patient?flow={flow.flow_id}")
    return redirect(f"/auth/consent?flow={flow.flow_id}")


async def _signed_in_flow(
    request: web.Request, flow_id: object, csrf: object = None
) -> tuple[Flow, Session, User]:
    auth = request.app[AUTH]
    flow = await auth.flows.get(flow_id)
    if flow is None or not flow.check(
        request.cookies.get(BROWSER_COOKIE), None if csrf is None else str(csrf)
    ):
        raise BadPage(
            "This page has expired or was opened in another browser. Start again from the app."
        )
    session = await current_session(request)
    if session is None or flow.user_id != session.user_id:
        raise NotSignedIn("Your sign-in has timed out. Go back to the app and start again.")
    user = await auth.users.get(session.user_id)
    if user is None:
        raise NotSignedIn("This account no longer exists.")
    return flow, session, user


async def picker_page(request: web.Request) -> web.Response:
    flow, _, _ = await _signed_in_flow(request, request.query.get("flow"))
    names = await patient_names(request.app[UPSTREAM], flow.acts_for)
    return render(request, "patient_picker.html", flow=flow, patients=names)


async def picker_submit(request: web.Request) -> web.Response:
    form = await request.post()
    flow, _, _ = await _signed_in_flow(request, form.get("flow"), form.get("csrf", ""))
    patient = form.get("patient")
    if not isinstance(patient, str) or patient not in flow.acts_for:
        raise BadPage("Choose one of the people listed.")
    await request.app[AUTH].flows.choose_patient(flow.flow_id, patient)
    return redirect(f"/auth/consent?flow={flow.flow_id}")


def _offered_scope(requested: str, patient: str | None) -> str:
    """S-13: a ``patient/`` scope is granted only with a patient in context."""
    kept = []
    for scope in requested.split():
        parsed = parse_scope(scope)
        if parsed is not None and parsed.context is Context.PATIENT and patient is None:
            continue
        kept.append(scope)
    return " ".join(kept)


async def _decision_inputs(
    request: web.Request, flow: Flow, user: User
) -> tuple[Any, Client, str, str | None, LaunchContext | None]:
    base = request.app[SETTINGS].public_base_url
    validated = await call(
        request, request.app[AUTH_SERVER].validate_authorization, stored_request(base, flow.params)
    )
    client: Client = validated.request.client
    launch = await _launch_context(request, flow, user)
    patient: str | None = None
    if launch is not None:
        patient = launch.patient
    elif user.role is Role.PATIENT:
        patient = flow.patient if flow.patient in flow.acts_for else user.patient_id
    return validated, client, _offered_scope(validated.request.scope, patient), patient, launch


def _consent_written(user: User, patient: str | None) -> bool:
    """Approving writes the patient's Consent (C-05): a patient user, for a patient."""
    return user.role is Role.PATIENT and patient is not None


async def consent_page(request: web.Request) -> web.Response:
    flow, _, user = await _signed_in_flow(request, request.query.get("flow"))
    validated, client, offered, patient, _ = await _decision_inputs(request, flow, user)
    names = await patient_names(request.app[UPSTREAM], (patient,)) if patient else {}
    writes_consent = _consent_written(user, patient)
    return render(
        request,
        "consent.html",
        form_targets=(origin_of(validated.redirect_uri),),
        flow=flow,
        client=client,
        screen=screen(offered, client.purposes, COMPARTMENT_TYPES),
        minimisation=[PROFILES[p].plain for p in client.purposes if p in PROFILES],
        patient_name=names.get(patient or "", ""),
        for_someone_else=writes_consent and patient != user.patient_id,
        sensitive=sensitive_categories() if writes_consent else (),
        writes_consent=writes_consent,
        expiry_choices=[(key, expiry_end(flow.started_at, key)) for key in EXPIRY_CHOICES],
        default_expiry=DEFAULT_EXPIRY,
        user=user,
    )


async def consent_submit(request: web.Request) -> web.Response:
    form = await request.post()
    flow, session, user = await _signed_in_flow(request, form.get("flow"), form.get("csrf", ""))
    auth = request.app[AUTH]
    server = request.app[AUTH_SERVER]
    validated, client, offered, patient, launch = await _decision_inputs(request, flow, user)
    plain = stored_request(request.app[SETTINGS].public_base_url, flow.params)
    if not await auth.flows.finish(flow.flow_id):
        raise BadPage("This request was already answered.")
    granted = ""
    if form.get("decision") == "approve":
        granted = granted_scope(
            offered,
            [v for v in form.getall("kind", []) if isinstance(v, str)],
            offline=form.get("offline") == "1",
            compartment=COMPARTMENT_TYPES,
        )
    if not granted:
        await audited(
            request,
            security.app_authorization,
            acting(request, user_id=user.user_id, fhir_user=user.fhir_user),
            client_id=client.client_id,
            patient=patient,
            permitted=False,
            scope=offered,
            purposes=client.purposes,
        )
        raise AccessDeniedError(redirect_uri=validated.redirect_uri, state=flow.params.get("state"))
    now = datetime.now(UTC)
    expiry = str(form.get("expiry", DEFAULT_EXPIRY))
    end = expiry_end(flow.started_at, expiry if expiry in EXPIRY_CHOICES else DEFAULT_EXPIRY)
    ticked = [v for v in form.getall("sensitive", []) if isinstance(v, str)]
    terms = consent_terms(granted, now, end, sensitivity_labels(ticked))
    cap = now + timedelta(seconds=request.app[SETTINGS].refresh_token_max_seconds)
    consent_id = None
    if _consent_written(user, patient):
        assert patient is not None
        consent_id = await write_app_consent(request, client, patient, user, terms)  # C-05
    scopes = granted.split()
    grant = Grant(
        client_id=client.client_id,
        scope=granted,
        expires_at=min(terms.end, cap),
        user_id=user.user_id,
        fhir_user=user.fhir_user,
        patient=patient,
        encounter=launch.encounter if launch else None,
        acts_for=flow.acts_for,
        purposes=client.purposes,
        need_patient_banner=launch.need_patient_banner if launch else None,
        smart_style_url=launch.smart_style_url if launch else None,
        nonce=flow.params.get("nonce"),
        consent_id=consent_id,
        session_id=session.session_id
        if "online_access" in scopes and "offline_access" not in scopes
        else None,
    )
    await audited(  # before the code leaves
        request,
        security.app_authorization,
        acting(request, user_id=user.user_id, fhir_user=user.fhir_user),
        client_id=client.client_id,
        patient=patient,
        permitted=True,
        scope=granted,
        purposes=client.purposes,
        consent_id=consent_id,
    )
    answer = await call(request, server.issue_code, plain, grant)
    return to_response(answer)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/auth/authorize", authorize)
    app.router.add_post("/auth/authorize", authorize)
    app.router.add_get("/auth/patient", picker_page)
    app.router.add_post("/auth/patient", picker_submit)
    app.router.add_get("/auth/consent", consent_page)
    app.router.add_post("/auth/consent", consent_submit)
