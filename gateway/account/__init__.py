"""The patient's own pages under ``/account`` (CONSENT.md C-12 … C-14, C-19 … C-21; SECURITY.md
P-06, P-07, P-18): "Connected apps" (:mod:`gateway.account.apps`), "Who saw my data"
(:mod:`gateway.account.history`) and "Security" (:mod:`gateway.account.security`), for the
signed-in user and, for a parent, the children they represent (:mod:`gateway.account.viewer`).

Server-rendered on the frame of :mod:`gateway.pages` (no script, CSRF on every form, in the
visitor's language); errors are pages rendered by :mod:`gateway.oauth.errors`, never a trace.
"""

from __future__ import annotations

from aiohttp import web

from gateway.account import apps, history, security


async def _home(request: web.Request) -> web.StreamResponse:
    target = "/account/apps"
    if request.query_string:
        target += f"?{request.query_string}"
    raise web.HTTPSeeOther(target, headers={"Cache-Control": "no-store"})


def setup_account(app: web.Application) -> None:
    """Add the patient's pages to ``app``."""
    app.router.add_get("/account", _home)
    app.router.add_get("/account/", _home)
    apps.add_routes(app)
    history.add_routes(app)
    security.add_routes(app)
