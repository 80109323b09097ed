"""The account's "Security" page (CONSENT.md C-21; SECURITY.md P-04, P-06, P-18): recent sign-ins
and failed attempts (time, address, device), the sessions signed in now and the apps holding
access, "sign out everywhere" (every session and every app's tokens), signing one device out,
changing the password, turning two-step verification on or off and making new recovery codes;
and, first, what to do when you suspect someone else used your account, linking to each of these.

Changing the password, turning the second factor off and new recovery codes ask for the current
password (a session left open on a shared computer must not be enough); wrong passwords count
towards the sign-in lock (P-05). Every step is recorded in the audit trail before the page answers
(P-18, A-01); the sign-ins shown are read from it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.account.viewer import Form, Viewer, done, page, viewer
from gateway.appkeys import AUTH, SETTINGS, UPSTREAM
from gateway.audit import codes, security
from gateway.audit.facts import Actor
from gateway.audit.store import AuditQuery, AuditReader
from gateway.oauth.actsfor import patient_names
from gateway.oauth.audited import acting, audited
from gateway.oauth.rendering import SESSION_COOKIE, clear_cookie, client_address, render
from gateway.pages.i18n import N_
from smart_auth.accounts import mfa
from smart_auth.accounts.passwords import WeakPassword, verify_password
from smart_auth.accounts.users import Role, User

WRONG_PASSWORD = N_("That is not your current password. Nothing was changed.")
_MESSAGES = {
    "password": N_("Your password is changed. Your other devices were signed out."),
    "mfa-on": N_("Two-step verification is on."),
    "mfa-off": N_("Two-step verification is off."),
    "session-ended": N_("That device was signed out."),
}


def _actor(request: web.Request, who: Viewer) -> Actor:
    return acting(request, user_id=who.user.user_id, fhir_user=who.user.fhir_user)


@dataclass(frozen=True, slots=True)
class SignIn:
    """A sign-in, or a failed attempt, as the audit trail holds it (P-05, P-18)."""

    at: datetime
    kind: str
    """``signed-in``, ``wrong-password`` (a password typed for the username) or ``refused`` (the
    account's second factor, or its password asked again, was not right)."""
    address: str
    device: str


def _sign_in(event: dict[str, Any], by_username: bool) -> SignIn:
    address = device = ""
    for agent in event.get("agent", ()):
        if agent.get("requestor"):
            continue
        address = address or str((agent.get("network") or {}).get("address", ""))
        device = device or str(agent.get("name", ""))
    if event.get("outcome") == codes.SUCCESS:
        kind = "signed-in"
    else:
        kind = "wrong-password" if by_username else "refused"
    at = datetime.fromisoformat(str(event["recorded"]).replace("Z", "+00:00"))
    return SignIn(at, kind, address, device)


async def sign_ins(request: web.Request, user: User, limit: int = 20) -> list[SignIn]:
    """The account's latest sign-ins and failed attempts, newest first, from the audit trail:
    the account's own (sign-ins, second factors) and the failed passwords typed for its
    username (which are recorded under the name typed: the answer never says whether the
    account exists, P-05)."""
    reader = AuditReader(request.app[AUTH].db)
    found: list[SignIn] = []
    for key, by_username in (
        (f"{codes.USER_SYSTEM}|{user.user_id}", False),
        (f"{codes.USERNAME_SYSTEM}|{user.username}", True),
    ):
        page = await reader.search(AuditQuery(agent=key, subtype=codes.LOGIN[0], count=limit))
        found += [_sign_in(event, by_username) for event in page.events]
    return sorted(found, key=lambda s: s.at, reverse=True)[:limit]


def _mfa_optional(request: web.Request, user: User) -> bool:
    """Whether this account may turn its second factor off (P-04)."""
    if user.role is Role.ADMIN:
        return False
    return not (user.role is Role.PATIENT and request.app[SETTINGS].mfa_required_for_patients)


async def _view(request: web.Request, who: Viewer, status: int = 200, **extra: Any) -> web.Response:
    auth = request.app[AUTH]
    user = who.user
    grants = await auth.grants.active_for_user(user.user_id)
    clients = {g.client_id: await auth.clients.get(g.client_id) for g in grants}
    patients = {g.patient for g in grants if g.patient}
    names = await patient_names(request.app[UPSTREAM], tuple(sorted(patients)))
    apps = [
        {
            "name": client.name if (client := clients[g.client_id]) else g.client_id,
            "patient": names.get(g.patient or "", ""),
            "patient_id": g.patient,
            "since": g.created_at,
            "until": g.expires_at,
        }
        for g in grants
    ]
    message = _MESSAGES.get(str(request.query.get("done", "")))
    return page(
        request,
        who,
        "security.html",
        status,
        section="security",
        sign_ins=await sign_ins(request, user),
        sessions=await auth.sessions.of_user(user.user_id),
        apps=apps,
        mfa_optional=_mfa_optional(request, user),
        message=message if status == 200 else None,
        errors=extra.get("errors", {}),
        error_params=extra.get("error_params", {}),
    )


async def security_page(request: web.Request) -> web.Response:
    return await _view(request, await viewer(request, about_data=False))


def _signed_out(request: web.Request) -> web.Response:
    response = render(request, "logout.html", csrf="", signed_in=False)
    clear_cookie(response, SESSION_COOKIE)
    return response


async def sign_out_everywhere(request: web.Request) -> web.Response:
    """P-06, P-18: every session of the account and every app's tokens end."""
    who = await viewer(request, await request.post(), about_data=False)
    await request.app[AUTH].revoker.sign_out_everywhere(who.user.user_id)
    await audited(request, security.logout, _actor(request, who), everywhere=True)
    return _signed_out(request)


async def end_session(request: web.Request) -> web.Response:
    """Sign one device out (its session ends; the apps it approved keep their access)."""
    form = await request.post()
    who = await viewer(request, form, about_data=False)
    target = str(form.get("session", ""))
    if not await request.app[AUTH].sessions.end_session(who.user.user_id, target):
        return await _view(
            request, who, 400, errors={"sessions": N_("That device is signed out already.")}
        )
    await audited(request, security.logout, _actor(request, who))
    if target == who.session.session_id:
        return _signed_out(request)
    raise done(who, "/account/security", done="session-ended")


async def _password_checked(request: web.Request, who: Viewer, form: Form) -> bool:
    """The current password typed in ``form`` is right (failures count towards the lock)."""
    auth = request.app[AUTH]
    user, address = who.user, client_address(request)
    typed = str(form.get("current", ""))[:1024]
    if await auth.throttle.locked(user.username, address):
        return False
    if await asyncio.to_thread(verify_password, typed, user.password_hash):
        return True
    await auth.throttle.failed(user.username, address)
    await audited(
        request,
        security.login,
        _actor(request, who),
        succeeded=False,
        reason="the current password asked by the security page was not right",
    )
    return False


async def change_password(request: web.Request) -> web.Response:
    form = await request.post()
    who = await viewer(request, form, about_data=False)
    if not await _password_checked(request, who, form):
        return await _view(request, who, 400, errors={"password": WRONG_PASSWORD})
    new, again = str(form.get("new", ""))[:1024], str(form.get("again", ""))[:1024]
    if new != again:
        error = N_("The two new passwords are not the same. Nothing was changed.")
        return await _view(request, who, 400, errors={"password": error})
    auth = request.app[AUTH]
    try:
        await auth.users.set_password(who.user.user_id, new, who.user.username)
    except WeakPassword as exc:
        return await _view(
            request, who, 400, errors={"password": exc.message}, error_params=exc.params
        )
    await auth.sessions.end_others(who.user.user_id, who.session.session_id)
    await audited(request, security.password_changed, _actor(request, who), who.user.user_id)
    raise done(who, "/account/security", done="password")


async def mfa_off(request: web.Request) -> web.Response:
    form = await request.post()
    who = await viewer(request, form, about_data=False)
    if not _mfa_optional(request, who.user):
        error = N_("Your account must keep two-step verification.")
        return await _view(request, who, 403, errors={"mfa": error})
    if not await _password_checked(request, who, form):
        return await _view(request, who, 400, errors={"mfa": WRONG_PASSWORD})
    await request.app[AUTH].users.disable_mfa(who.user.user_id)
    await audited(
        request, security.second_factor_changed, _actor(request, who), who.user.user_id, "removed"
    )
    raise done(who, "/account/security", done="mfa-off")


async def new_recovery_codes(request: web.Request) -> web.Response:
    form = await request.post()
    who = await viewer(request, form, about_data=False)
    if not who.user.mfa_enrolled:
        error = N_("Turn two-step verification on first.")
        return await _view(request, who, 400, errors={"mfa": error})
    if not await _password_checked(request, who, form):
        return await _view(request, who, 400, errors={"mfa": WRONG_PASSWORD})
    codes = mfa.new_recovery_codes()
    digests = [mfa.recovery_digest(who.user.user_id, code) for code in codes]
    await request.app[AUTH].users.replace_recovery_codes(who.user.user_id, digests)
    await audited(
        request,
        security.second_factor_changed,
        _actor(request, who),
        who.user.user_id,
        "new recovery codes",
    )
    return render(
        request,
        "recovery_codes.html",
        title=N_("New recovery codes"),
        codes=codes,
        next_url="/account/security",
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/account/security", security_page)
    app.router.add_post("/account/security/sign-out-everywhere", sign_out_everywhere)
    app.router.add_post("/account/security/sessions/end", end_session)
    app.router.add_post("/account/security/password", change_password)
    app.router.add_post("/account/security/mfa/off", mfa_off)
    app.router.add_post("/account/security/recovery-codes", new_recovery_codes)
