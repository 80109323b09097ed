"""The administration API under ``/admin`` (SECURITY.md P-08, P-09) and the EHR launch API (S-13).

Callers are signed in through ``/auth/login`` (a session cookie). ``GET /auth/session`` tells a
signed-in caller their role and the CSRF token that every state-changing call must send back in
``X-CSRF-Token``. The admin API needs the admin role and a completed second factor (administrators
cannot sign in without one); the launch API needs a practitioner (or an administrator). Bodies are
JSON objects whose fields are checked one by one and typed before anything reaches MongoDB (P-13).
Every administrative action is recorded as a security event (P-09).

- ``GET /admin/clients`` · ``POST /admin/clients`` · ``DELETE /admin/clients/{client_id}``
- ``GET /admin/users`` · ``POST /admin/users``
- ``POST /admin/keys/rotate``
- ``POST /admin/patients/{patient_id}/erase`` (C-22)
- ``GET /admin/consents?patient=ID`` · ``GET /admin/consents/{id}/history`` ·
  ``POST /admin/consents`` · ``PUT /admin/consents/{id}`` · ``POST /admin/consents/{id}/withdraw``:
  an administrator changes a patient's Consents on a documented request (C-23); every change needs
  a ``reason`` (the request it acts on), which is recorded with the new version
- ``POST /admin/launch`` and ``POST /auth/launch`` → ``{"launch": ...}``
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from consent.errors import (
    ConsentError,
    InvalidParameter,
)
from consent.store import Change, Channel, ConsentStore, HistoryEntry
from gateway.appkeys import AUDIT, AUTH, CACHE, CONSENTS
from gateway.audit import security
from gateway.audit.security import AdminAction
from gateway.erasure import erase_patient
from gateway.fhir.consent_api import revoke_if_withdrawn
from gateway.oauth.audited import acting, audited
from gateway.oauth.errors import ApiError
from gateway.oauth.rendering import current_session
from gateway.web.requestkeys import METRIC_LABEL
from smart_auth.accounts.passwords import WeakPassword
from smart_auth.accounts.sessions import Session
from smart_auth.accounts.users import Role, UserError
from smart_auth.clients import Client, ClientError, ClientType, new_client
from smart_auth.launch import LaunchError


async def _caller(request: web.Request, roles: tuple[Role, ...]) -> Session:
    session = await current_session(request)
    if session is None:
        raise ApiError(401, "login_required", "sign in at /auth/login first")
    if session.role not in roles:
        raise ApiError(403, "forbidden", "this account's role may not do this")
    if session.role == Role.ADMIN.value:
        user = await request.app[AUTH].users.get(session.user_id)
        if user is None or not user.mfa_enrolled:  # P-04: no administration without MFA
            raise ApiError(403, "mfa_required", "administrators must use a second factor")
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent, session.csrf):
            raise ApiError(403, "csrf", "send the session's CSRF token in X-CSRF-Token")
    return session


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return body


def _str(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"'{name}' must be a string")
    return value


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "invalid_request", f"'{name}' must be a list of strings")
    return tuple(value)


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", f"'{name}' must be a JSON object")
    return value


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, "invalid_request", f"'{name}' must be true or false")
    return value


def client_json(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "type": client.client_type.value,
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
        "purposes": list(client.purposes),
        "origins": list(client.origins),
        "trusted": client.trusted,
        "manages_consent": client.manages_consent,
        "url": client.url,
        "publisher": client.publisher,
        "privacy_policy_url": client.privacy_policy_url,
        "jwks_uri": client.jwks_uri,
        "has_jwks": client.jwks is not None,
    }


async def session_info(request: web.Request) -> web.Response:
    session = await current_session(request)
    if session is None:
        raise ApiError(401, "login_required", "not signed in")
    user = await request.app[AUTH].users.get(session.user_id)
    return web.json_response(
        {"username": user.username if user else None, "role": session.role, "csrf": session.csrf},
        headers={"Cache-Control": "no-store"},
    )


async def list_clients(request: web.Request) -> web.Response:
    await _caller(request, (Role.ADMIN,))
    clients = await request.app[AUTH].clients.all()
    return web.json_response([client_json(c) for c in clients])


async def add_client(request: web.Request) -> web.Response:
    session = await _caller(request, (Role.ADMIN,))
    body = await _body(request)
    jwks = body.get("jwks")
    if jwks is not None and not isinstance(jwks, dict):
        raise ApiError(400, "invalid_request", "'jwks' must be a JSON Web Key Set")
    try:
        client = new_client(
            client_id=_str(body, "client_id") or "",
            name=_str(body, "name") or "",
            client_type=ClientType(_str(body, "type") or ""),
            redirect_uris=_strings(body, "redirect_uris"),
            scope=_str(body, "scope") or "",
            purposes=_strings(body, "purposes"),
            origins=_strings(body, "origins"),
            trusted=_bool(body, "trusted", False),
            manages_consent=_bool(body, "manages_consent", False),
            url=_str(body, "url", required=False),
            publisher=_str(body, "publisher", required=False),
            privacy_policy_url=_str(body, "privacy_policy_url", required=False),
            secret=_str(body, "secret", required=False),
            jwks=jwks,
            jwks_uri=_str(body, "jwks_uri", required=False),
        )
        await request.app[AUTH].clients.add(client)
    except (ClientError, ValueError) as exc:
        raise ApiError(400, "invalid_client_metadata", str(exc)) from None
    await audited(
        request,
        security.admin_action,
        acting(request, user_id=session.user_id),
        AdminAction.CLIENT_ADDED,
        client_id=client.client_id,
    )
    return web.json_response(client_json(client), status=201)


async def remove_client(request: web.Request) -> web.Response:
    session = await _caller(request, (Role.ADMIN,))
    client_id = request.match_info["client_id"]
    if not await request.app[AUTH].clients.remove(client_id):
        raise ApiError(404, "not_found", "no such client")
    await audited(
        request,
        security.admin_action,
        acting(request, user_id=session.user_id),
        AdminAction.CLIENT_REMOVED,
        client_id=client_id,
    )
    return web.Response(status=204)


async def list_users(request: web.Request) -> web.Response:
    await _caller(request, (Role.ADMIN,))
    users = await request.app[AUTH].users.all()
    return web.json_response(
        [
            {
                "username": u.username,
                "role": u.role.value,
                "fhir_user": u.fhir_user,
                "mfa": u.mfa_enrolled,
            }
            for u in users
        ]
    )


async def add_user(request: web.Request) -> web.Response:
    session = await _caller(request, (Role.ADMIN,))
    body = await _body(request)
    try:
        user = await request.app[AUTH].users.add(
            username=_str(body, "username") or "",
            role=Role(_str(body, "role") or ""),
            password=_str(body, "password") or "",
            display_name=_str(body, "display_name", required=False),
            fhir_user=_str(body, "fhir_user", required=False),
            related_persons=_strings(body, "related_persons"),
        )
    except (UserError, WeakPassword, ValueError) as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    await audited(
        request,
        security.admin_action,
        acting(request, user_id=session.user_id),
        AdminAction.USER_ADDED,
        user_id=user.user_id,
        role=user.role.value,
    )
    return web.json_response({"username": user.username, "role": user.role.value}, status=201)


async def rotate_keys(request: web.Request) -> web.Response:
    session = await _caller(request, (Role.ADMIN,))
    old = await request.app[AUTH].keys.signing_key()
    key = await request.app[AUTH].keys.rotate()
    await audited(
        request,
        security.key_rotated,
        acting(request, user_id=session.user_id),
        new_kid=key.kid,
        old_kid=old.kid,
    )
    return web.json_response({"kid": key.kid})


async def erase_patient_data(request: web.Request) -> web.Response:
    """C-22: ``POST /admin/patients/{patient_id}/erase`` (administrator, CSRF)."""
    session = await _caller(request, (Role.ADMIN,))
    try:
        erasure = await erase_patient(
            request.app[AUTH],
            request.app[CONSENTS],
            request.app[CACHE],
            request.app[AUDIT],
            request.match_info["patient_id"],
            actor=acting(request, user_id=session.user_id),
        )
    except InvalidParameter as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return web.json_response(erasure.as_dict())


_MAX_REASON = 500


def _reason(body: dict[str, Any]) -> str:
    reason = _str(body, "reason")
    if not reason or not reason.strip() or len(reason) > _MAX_REASON:
        raise ApiError(
            400,
            "invalid_request",
            f"'reason': the documented request this change acts on (1-{_MAX_REASON} characters)",
        )
    return reason.strip()


def _consents(request: web.Request) -> ConsentStore:
    return request.app[CONSENTS]  # each change it stores is audited (gateway.audit.acts)


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "version": entry.version_id,
        "method": entry.method,
        "at": entry.last_updated.isoformat(),
        "changed_by": entry.change.by if entry.change else None,
        "channel": entry.change.channel.value if entry.change else None,
        "reason": entry.change.reason if entry.change else None,
    }


async def _consent_call(work: Any) -> Any:
    """The consent store's errors as the admin API's JSON errors."""
    try:
        return await work
    except ConsentError as exc:  # its status is the one mapping (consent.errors)
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()  # consent_invalid
        raise ApiError(exc.status, code, str(exc)) from None


async def list_consents(request: web.Request) -> web.Response:
    """``GET /admin/consents?patient=ID``: the patient's Consents, newest first."""
    await _caller(request, (Role.ADMIN,))
    patient = request.query.get("patient", "")
    found = await _consent_call(_consents(request).search(patient_id=patient, limit=1000))
    return web.json_response(found)


async def consent_history(request: web.Request) -> web.Response:
    """``GET /admin/consents/{id}/history``: every version, with who changed it and how."""
    await _caller(request, (Role.ADMIN,))
    entries = await _consent_call(_consents(request).history(request.match_info["consent_id"]))
    return web.json_response([_history_json(entry) for entry in entries])


async def add_consent(request: web.Request) -> web.Response:
    """``POST /admin/consents`` ``{"consent": {...}, "reason": "..."}``."""
    session = await _caller(request, (Role.ADMIN,))
    body = await _body(request)
    change = Change(f"user:{session.user_id}", Channel.ADMIN_API, _reason(body))
    created = await _consent_call(
        _consents(request).create(_object(body, "consent"), change=change)
    )
    return web.json_response(created, status=201)


async def _change_consent(
    request: web.Request,
    change_it: Callable[[ConsentStore, str, dict[str, Any], Change], Awaitable[dict[str, Any]]],
) -> web.Response:
    """An administrator's change of one Consent, with the documented reason: stored as a new
    version, the apps' tokens revoked when it ends a permit (C-13), recorded (P-09)."""
    session = await _caller(request, (Role.ADMIN,))
    body = await _body(request)
    change = Change(f"user:{session.user_id}", Channel.ADMIN_API, _reason(body))
    store, consent_id = _consents(request), request.match_info["consent_id"]
    current = await _consent_call(store.read(consent_id))
    updated = await _consent_call(change_it(store, consent_id, body, change))
    await revoke_if_withdrawn(request.app[AUTH].revoker, request.app[CACHE], current, updated)
    return web.json_response(updated)


async def update_consent(request: web.Request) -> web.Response:
    """``PUT /admin/consents/{id}`` ``{"consent": {...}, "reason": "...", "if_match": "2"}``."""

    def update(
        store: ConsentStore, consent_id: str, body: dict[str, Any], change: Change
    ) -> Awaitable[dict[str, Any]]:
        if_match = _str(body, "if_match", required=False)
        consent = _object(body, "consent")
        return store.update(consent_id, consent, change=change, if_match=if_match)

    return await _change_consent(request, update)


async def withdraw_consent(request: web.Request) -> web.Response:
    """``POST /admin/consents/{id}/withdraw`` ``{"reason": "..."}``: status ``inactive``."""

    def withdraw(
        store: ConsentStore, consent_id: str, _body: dict[str, Any], change: Change
    ) -> Awaitable[dict[str, Any]]:
        return store.withdraw(consent_id, change=change)

    return await _change_consent(request, withdraw)


async def create_launch(request: web.Request) -> web.Response:
    request[METRIC_LABEL] = "launch"
    session = await _caller(request, (Role.PRACTITIONER, Role.ADMIN))
    body = await _body(request)
    try:
        context = await request.app[AUTH].launches.create(
            created_by=session.user_id,
            patient=_str(body, "patient") or "",
            encounter=_str(body, "encounter", required=False),
            need_patient_banner=_bool(body, "need_patient_banner", True),
            smart_style_url=_str(body, "smart_style_url", required=False),
        )
    except LaunchError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    await audited(
        request,
        security.launch_created,
        acting(request, user_id=session.user_id),
        patient=context.patient,
    )
    return web.json_response({"launch": context.launch}, status=201)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/auth/session", session_info)
    app.router.add_post("/auth/launch", create_launch)
    app.router.add_post("/admin/launch", create_launch)
    app.router.add_get("/admin/clients", list_clients)
    app.router.add_post("/admin/clients", add_client)
    app.router.add_delete("/admin/clients/{client_id}", remove_client)
    app.router.add_get("/admin/users", list_users)
    app.router.add_post("/admin/users", add_user)
    app.router.add_post("/admin/keys/rotate", rotate_keys)
    app.router.add_post("/admin/patients/{patient_id}/erase", erase_patient_data)
    app.router.add_get("/admin/consents", list_consents)
    app.router.add_post("/admin/consents", add_consent)
    app.router.add_put("/admin/consents/{consent_id}", update_consent)
    app.router.add_get("/admin/consents/{consent_id}/history", consent_history)
    app.router.add_post("/admin/consents/{consent_id}/withdraw", withdraw_consent)
