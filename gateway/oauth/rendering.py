"""Page plumbing for the sign-in and authorization pages: templates, cookies, security headers, the
current session.

Every page is server-rendered from ``templates/`` with autoescaping, uses one stylesheet from
``static/``, runs no script, and is sent with a CSP that forbids scripts, framing (S-15) and
third-party assets (P-07), plus ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``.
Cookies are ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` whenever the gateway is reached over
https (P-06).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from yarl import URL

from gateway.appkeys import AUTH, AUTH_SESSION, AUTH_SESSION_TOKEN, SETTINGS
from smart_auth.accounts.sessions import Session

SESSION_COOKIE = "fg_session"
BROWSER_COOKIE = "fg_browser"
_HERE = Path(__file__).parent


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def csp(form_targets: tuple[str, ...] = ()) -> str:
    targets = " ".join(["'self'", *form_targets])
    return (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )


def page_headers(form_targets: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(form_targets),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
    }


def render(
    template: str,
    status: int = 200,
    *,
    form_targets: tuple[str, ...] = (),
    **context: Any,
) -> web.Response:
    html = _templates().get_template(template).render(**context)
    return web.Response(
        status=status,
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers=page_headers(form_targets),
    )


def origin_of(url: str) -> str:
    return str(URL(url).origin())


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.app[SETTINGS].cookies_secure,
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/")


def redirect(location: str, *, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


async def current_session(
    request: web.Request, *, allow_mfa_pending: bool = False
) -> Session | None:
    """The signed-in session of this browser (its idle clock restarted), if any."""
    if AUTH_SESSION in request:
        session = request[AUTH_SESSION]
    else:
        token = request.cookies.get(SESSION_COOKIE)
        found = await request.app[AUTH].sessions.resume(token)
        if found is None:
            return None
        session = found
        request[AUTH_SESSION] = session
        request[AUTH_SESSION_TOKEN] = token or ""
    if session.mfa_pending and not allow_mfa_pending:
        return None
    return session


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"
