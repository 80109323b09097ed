"""Who is looking at a patient page, and at whose data (CONSENT.md C-19 … C-21; SECURITY.md P-06,
P-07, P-08).

Every page under ``/account`` needs a signed-in session that has finished its second factor;
without one a page sends the browser to sign in and back, and a form is refused (nothing
changes). The pages about data (connected apps, who saw my data) are for patient users: they show
the data of the user's own Patient or of a patient the user represents (a parent for a child),
chosen with ``?patient=`` (a form sends it back as a field). Whom the user represents is read from
the FHIR data on every page, never remembered (C-25): a representation that ended ends the access
to that patient's pages at once.

Every form carries the session's CSRF token; a form without it, with another one, or from a
session that has ended is refused and changes nothing (P-07).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.appkeys import AUTH, UPSTREAM
from gateway.fhir.representation import acts_for
from gateway.oauth.actsfor import patient_names
from gateway.oauth.errors import NotAllowed, NotSignedIn
from gateway.oauth.rendering import current_session, render
from gateway.pages.i18n import N_
from gateway.pages.templating import Templates
from smart_auth.accounts.sessions import Session
from smart_auth.accounts.users import Role, User

TEMPLATES = Templates(Path(__file__).parent / "templates")
SECTIONS: list[tuple[str, str, str]] = [
    ("apps", N_("Connected apps"), "/account/apps"),
    ("history", N_("Who saw my data"), "/account/history"),
    ("security", N_("Security"), "/account/security"),
]
"""The pages of the account's menu: (key, title, path)."""
Form = Mapping[str, object]
"""A posted form (its fields are read one by one and typed before use)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in user of a page and, on the pages about data, whose data it shows."""

    session: Session
    user: User
    patients: dict[str, str]
    """Everyone whose data the user may see (their own Patient first) -> their name."""
    patient: str | None
    """Whose data this page shows (``None`` on the pages about the account itself)."""

    @property
    def patient_name(self) -> str:
        return self.patients.get(self.patient or "", "")

    @property
    def for_someone_else(self) -> bool:
        return self.patient is not None and self.patient != self.user.patient_id

    def link(self, path: str, **query: str) -> str:
        """A link to another page about the same patient."""
        params = {"patient": self.patient, **query} if self.patient else query
        return f"{path}?{urlencode(params)}" if params else path


def _sign_in_first(request: web.Request) -> web.HTTPException | NotSignedIn:
    if request.method == "GET":
        target = f"/auth/login?{urlencode({'next': request.path_qs})}"
        return web.HTTPSeeOther(target, headers={"Cache-Control": "no-store"})
    return NotSignedIn(
        "Your sign-in has ended, so nothing was changed. Sign in again and try once more."
    )


async def viewer(
    request: web.Request, form: Form | None = None, *, about_data: bool = True
) -> Viewer:
    """The viewer of this page; raises a redirect to sign in (a page) or a refusal (a form)."""
    session = await current_session(request)
    if session is None:
        raise _sign_in_first(request)
    user = await request.app[AUTH].users.get(session.user_id)
    if user is None:
        raise _sign_in_first(request)
    if form is not None and not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
        raise NotAllowed(
            "This form has expired or was not sent from this site, so nothing was changed. "
            "Reload the page and try again."
        )
    if not about_data:
        return Viewer(session, user, {}, None)
    if user.role is not Role.PATIENT:
        raise NotAllowed("These pages are for patients. Your account has no health record here.")
    upstream = request.app[UPSTREAM]
    reach = await acts_for(upstream, user)
    asked = form.get("patient") if form is not None else request.query.get("patient")
    chosen = asked if isinstance(asked, str) and asked else user.patient_id
    if chosen not in reach:
        raise NotAllowed(
            "You cannot see this person's data: only your own and that of the people you represent."
        )
    return Viewer(session, user, await patient_names(upstream, reach), chosen)


def page(
    request: web.Request, who: Viewer, template: str, status: int = 200, **context: Any
) -> web.Response:
    """A patient page: the account's templates, the viewer and the section it belongs to."""
    return render(
        request,
        template,
        status,
        templates=TEMPLATES,
        who=who,
        sections=SECTIONS,
        here=request.path,
        **context,
    )


def done(who: Viewer, path: str, **query: str) -> web.HTTPSeeOther:
    """After a form: back to the page it came from (POST/redirect/GET), saying what was done."""
    return web.HTTPSeeOther(who.link(path, **query), headers={"Cache-Control": "no-store"})
