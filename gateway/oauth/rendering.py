"""Page plumbing for the sign-in, authorization and account pages: rendering in the visitor's
language, cookies, the current session, security events.

Every page is server-rendered with autoescaping on the shared frame of :mod:`gateway.pages`
(one stylesheet, no script, a CSP that forbids scripts, framing (S-15) and third-party assets
(P-07)), in the language the visitor chose or their browser prefers. Cookies are ``HttpOnly``,
``SameSite=Lax`` and ``Secure`` whenever the gateway is reached over https (P-06).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from gateway.appkeys import AUTH, AUTH_SESSION, AUTH_SESSION_TOKEN, SETTINGS
from gateway.pages.i18n import LANG_COOKIE, LOCALES, NAMES, choose
from gateway.pages.templating import STYLESHEET_URL, Templates, page_headers
from smart_auth.accounts.sessions import Session

SESSION_COOKIE = "fg_session"
BROWSER_COOKIE = "fg_browser"
TEMPLATES = Templates(Path(__file__).parent / "templates")


def page_language(request: web.Request) -> str:
    """The language this page is shown in (:func:`gateway.pages.i18n.choose`)."""
    return choose(
        request.query.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("Accept-Language", ""),
    )


def _languages(request: web.Request, current: str) -> list[dict[str, str]]:
    """The language switcher: a link per other language to this same page (pages answering a
    form have no address to come back to, so they have none)."""
    if request.method != "GET":
        return []
    return [
        {"code": code, "name": NAMES[code], "url": str(request.rel_url.update_query(lang=code))}
        for code in LOCALES
        if code != current
    ]


def render(
    request: web.Request,
    template: str,
    status: int = 200,
    *,
    form_targets: tuple[str, ...] = (),
    templates: Templates = TEMPLATES,
    **context: Any,
) -> web.Response:
    """A page in the visitor's language, with the security headers of every page."""
    lang = page_language(request)
    html = templates.render(
        lang,
        template,
        {
            "lang": lang,
            "languages": _languages(request, lang),
            "stylesheet": STYLESHEET_URL,
            **context,
        },
    )
    response = web.Response(
        status=status,
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers=page_headers(form_targets),
    )
    if request.query.get("lang") == lang and request.cookies.get(LANG_COOKIE) != lang:
        set_cookie(request, response, LANG_COOKIE, lang)
    return response


_LOCAL_NEXT = re.compile(r"^/account(/[A-Za-z0-9/_.-]*)?(\?[A-Za-z0-9_.=&%-]*)?$")


def local_next(value: object) -> str | None:
    """A page to go to after signing in: one of the patient's own pages, or ``None`` (never
    another site: an open redirect would lend the gateway's name to a phishing page)."""
    if not isinstance(value, str) or len(value) > 512 or ".." in value or "//" in value:
        return None
    if _LOCAL_NEXT.match(value):
        return value
    return None


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
