"""Sign-in pages (SECURITY.md P-03 … P-07): password, second factor (TOTP or a recovery code), MFA
enrolment with a QR code, sign-out and "sign out everywhere".

Every form carries a CSRF token: the flow's on the sign-in and second-factor pages (a flow is
bound to this browser by a cookie), the session's on pages for a signed-in user. A failed sign-in
says the same thing whether or not the account exists, and takes as long (P-05).
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web

from gateway.appkeys import AUTH, AUTH_SESSION_TOKEN, SETTINGS
from gateway.audit import security
from gateway.oauth.audited import acting, audited
from gateway.oauth.authorize import after_sign_in
from gateway.oauth.errors import BadPage, NotSignedIn
from gateway.oauth.rendering import (
    BROWSER_COOKIE,
    SESSION_COOKIE,
    clear_cookie,
    client_address,
    current_session,
    local_next,
    redirect,
    render,
    set_cookie,
)
from gateway.pages.i18n import N_
from smart_auth.accounts import mfa
from smart_auth.accounts.passwords import burn_time, verify_password
from smart_auth.accounts.sessions import Session
from smart_auth.accounts.users import Role, User
from smart_auth.flows import Flow, new_browser_cookie

log = logging.getLogger(__name__)

GENERIC_FAILURE = N_(
    "The username or password is not right, or sign-in is paused for this account after "
    "too many attempts. Check and try again in a few minutes."
)
WRONG_CODE = N_("That code is not right. Try again.")


async def _flow(request: web.Request, flow_id: object, csrf: object = None) -> Flow:
    flow = await request.app[AUTH].flows.get(flow_id)
    browser = request.cookies.get(BROWSER_COOKIE)
    if flow is None or not flow.check(browser, None if csrf is None else str(csrf)):
        raise BadPage(
            "This sign-in page has expired or was opened in another browser. "
            "Go back to the app and start again."
        )
    return flow


async def login_page(request: web.Request) -> web.Response:
    flow_id = request.query.get("flow")
    if flow_id is None:  # a plain sign-in, not for an app
        browser = request.cookies.get(BROWSER_COOKIE) or new_browser_cookie()
        next_page = local_next(request.query.get("next")) or "/auth/signed-in"
        flow = await request.app[AUTH].flows.start(browser, next_page=next_page)
        response = redirect(f"/auth/login?flow={flow.flow_id}")
        set_cookie(request, response, BROWSER_COOKIE, browser)
        return response
    flow = await _flow(request, flow_id)
    return render(request, "login.html", flow=flow, error=None, username="")


async def _password_ok(request: web.Request, username: str, password: str) -> User | None:
    auth = request.app[AUTH]
    address = client_address(request)
    if await auth.throttle.locked(username, address):
        await asyncio.to_thread(burn_time, password)
        return None
    user = await auth.users.by_username(username)
    if user is None:
        await asyncio.to_thread(burn_time, password)
        ok = False
    else:
        ok = await asyncio.to_thread(verify_password, password, user.password_hash)
    if not ok or user is None:
        await auth.throttle.failed(username, address)
        return None
    await auth.throttle.succeeded(username)
    return user


def _needs_enrolment(request: web.Request, user: User) -> bool:
    if user.mfa_enrolled:
        return False
    required = request.app[SETTINGS].mfa_required_for_patients
    return user.role is Role.ADMIN or (user.role is Role.PATIENT and required)


async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
    flow = await _flow(request, form.get("flow"), form.get("csrf", ""))
    username = str(form.get("username", ""))[:128]
    password = str(form.get("password", ""))[:1024]
    user = await _password_ok(request, username, password)
    address = client_address(request)
    if user is None:
        await audited(
            request,
            security.login,
            acting(request, username=username[:64]),
            succeeded=False,
            reason="the name or the password was not right, or sign-in is locked",
        )
        return render(
            request, "login.html", 401, flow=flow, error=GENERIC_FAILURE, username=username
        )
    second_factor = user.mfa_enrolled
    enrol = _needs_enrolment(request, user)
    token, session = await request.app[AUTH].sessions.create(
        user_id=user.user_id,
        role=user.role.value,
        mfa_pending=second_factor or enrol,
        address=address,
        user_agent=request.headers.get("User-Agent", ""),
    )
    await audited(
        request,
        security.login,
        acting(request, user_id=user.user_id, fhir_user=user.fhir_user),
        succeeded=True,
        second_factor_pending=second_factor or enrol,
    )
    if second_factor:
        response = redirect(f"/auth/mfa?flow={flow.flow_id}")
    elif enrol:
        response = redirect(f"/auth/mfa/setup?flow={flow.flow_id}")
    else:
        response = await after_sign_in(request, flow, session, user)
    set_cookie(request, response, SESSION_COOKIE, token)
    return response


async def _pending(request: web.Request) -> tuple[Session, User]:
    session = await current_session(request, allow_mfa_pending=True)
    if session is None:
        raise NotSignedIn("Your sign-in has timed out. Go back to the app and start again.")
    user = await request.app[AUTH].users.get(session.user_id)
    if user is None:
        raise NotSignedIn("This account no longer exists.")
    return session, user


async def mfa_page(request: web.Request) -> web.Response:
    flow = await _flow(request, request.query.get("flow"))
    await _pending(request)
    return render(request, "mfa.html", flow=flow, error=None)


async def mfa_submit(request: web.Request) -> web.Response:
    form = await request.post()
    flow = await _flow(request, form.get("flow"), form.get("csrf", ""))
    session, user = await _pending(request)
    auth = request.app[AUTH]
    address = client_address(request)
    code = str(form.get("code", ""))[:64]
    ok = False
    if not await auth.throttle.locked(user.username, address) and user.mfa_enrolled:
        secret = await auth.users.mfa_secret(user)
        step = mfa.matching_step(secret, code) if secret else None
        if step is not None:
            ok = await auth.users.claim_totp_step(user.user_id, step)
        elif len(code.replace("-", "").strip()) == 12:
            ok = await auth.users.use_recovery_code(
                user.user_id, mfa.recovery_digest(user.user_id, code)
            )
    if not ok:
        await auth.throttle.failed(user.username, address)
        await audited(
            request,
            security.login,
            acting(request, user_id=user.user_id, fhir_user=user.fhir_user),
            succeeded=False,
            reason="the second factor was not right",
        )
        return render(request, "mfa.html", 401, flow=flow, error=WRONG_CODE)
    await auth.throttle.succeeded(user.username)
    await auth.sessions.mfa_done(session.session_id)
    return await after_sign_in(request, flow, session, user)


async def mfa_setup_page(request: web.Request) -> web.Response:
    session, user = await _pending(request)
    flow_id = request.query.get("flow")
    if session.mfa_pending and not _needs_enrolment(request, user):
        raise NotSignedIn("Finish signing in first.")
    secret = mfa.new_secret()
    await request.app[AUTH].sessions.set_pending_secret(session.session_id, secret)
    uri = mfa.provisioning_uri(secret, user.username, "FHIR consent gateway")
    return render(
        request,
        "mfa_setup.html",
        csrf=session.csrf,
        flow_id=flow_id or "",
        next_page=local_next(request.query.get("next")) or "",
        secret=secret,
        qr=mfa.qr_svg(uri),
        error=None,
        required=_needs_enrolment(request, user),
    )


async def mfa_setup_submit(request: web.Request) -> web.Response:
    form = await request.post()
    session, user = await _pending(request)
    if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
        raise BadPage("This form has expired. Reload the page and try again.")
    auth = request.app[AUTH]
    secret = await auth.sessions.pending_secret(session.session_id)
    step = mfa.matching_step(secret, str(form.get("code", ""))) if secret else None
    if secret is None or step is None:
        raise BadPage("That code is not right. Open the set-up page again and scan the new code.")
    codes = mfa.new_recovery_codes()
    await auth.users.enrol_mfa(
        user.user_id, secret, [mfa.recovery_digest(user.user_id, c) for c in codes]
    )
    await auth.users.claim_totp_step(user.user_id, step)
    await auth.sessions.mfa_done(session.session_id)
    await audited(
        request,
        security.second_factor_changed,
        acting(request, user_id=user.user_id, fhir_user=user.fhir_user),
        user.user_id,
        "enrolled",
    )
    flow_id = str(form.get("flow", ""))
    next_url = f"/auth/continue?flow={flow_id}" if flow_id else "/auth/signed-in"
    if not flow_id:
        next_url = local_next(form.get("next")) or next_url
    return render(
        request,
        "recovery_codes.html",
        title=N_("Two-step verification is on"),
        codes=codes,
        next_url=next_url,
    )


async def continue_flow(request: web.Request) -> web.Response:
    """After MFA enrolment: carry on with the flow that was interrupted."""
    flow = await _flow(request, request.query.get("flow"))
    session = await current_session(request)
    if session is None:
        raise NotSignedIn("Your sign-in has timed out. Go back to the app and start again.")
    user = await request.app[AUTH].users.get(session.user_id)
    if user is None:
        raise NotSignedIn("This account no longer exists.")
    return await after_sign_in(request, flow, session, user)


async def signed_in(request: web.Request) -> web.Response:
    session = await current_session(request)
    if session is None:
        return redirect("/auth/login")
    user = await request.app[AUTH].users.get(session.user_id)
    if user is None:
        raise NotSignedIn("This account no longer exists.")
    return render(request, "signed_in.html", user=user, csrf=session.csrf)


async def logout_page(request: web.Request) -> web.Response:
    session = await current_session(request, allow_mfa_pending=True)
    return render(
        request, "logout.html", csrf=session.csrf if session else "", signed_in=bool(session)
    )


async def logout_submit(request: web.Request) -> web.Response:
    form = await request.post()
    session = await current_session(request, allow_mfa_pending=True)
    auth = request.app[AUTH]
    if session is not None:
        if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            raise BadPage("This form has expired. Reload the page and try again.")
        if form.get("everywhere") == "1":
            await auth.revoker.sign_out_everywhere(session.user_id)
            await audited(
                request, security.logout, acting(request, user_id=session.user_id), everywhere=True
            )
        else:
            await auth.sessions.end(request.get(AUTH_SESSION_TOKEN))
            await audited(request, security.logout, acting(request, user_id=session.user_id))
    response = render(request, "logout.html", csrf="", signed_in=False)
    clear_cookie(response, SESSION_COOKIE)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/auth/login", login_page)
    app.router.add_post("/auth/login", login_submit)
    app.router.add_get("/auth/mfa", mfa_page)
    app.router.add_post("/auth/mfa", mfa_submit)
    app.router.add_get("/auth/mfa/setup", mfa_setup_page)
    app.router.add_post("/auth/mfa/setup", mfa_setup_submit)
    app.router.add_get("/auth/continue", continue_flow)
    app.router.add_get("/auth/signed-in", signed_in)
    app.router.add_get("/auth/logout", logout_page)
    app.router.add_post("/auth/logout", logout_submit)
