"""Helpers for the patient's own pages through HTTP (the stand-in browser of
:mod:`tests.support.browser`): sign in to a page, find its forms, post them."""

from __future__ import annotations

from typing import Any

from gateway.appkeys import AUTH
from gateway.audit.store import AuditQuery, AuditReader
from tests.conftest import RunningGateway
from tests.support.browser import Browser, Form, Page
from tests.support.tokens import TestUser, ensure_user


async def signed_in(gateway: RunningGateway, user: TestUser, path: str) -> tuple[Browser, Page]:
    """A browser signed in as ``user``, on ``path`` (the sign-in page sends it there). The
    caller closes the browser."""
    await ensure_user(gateway, user)
    browser = Browser(gateway.base)
    page = await browser.get(f"{gateway.base}{path}")
    assert isinstance(page, Page) and page.url.startswith(f"{gateway.base}/auth/login"), page
    page = await browser.login(page, user.username, user.password)
    assert isinstance(page, Page), page
    return browser, page


def form_of(page: Page, action: str, **fields: str) -> Form:
    """The form of ``page`` posting to ``action`` whose hidden fields hold ``fields``."""
    for form in page.forms:
        values = dict(form.fields)
        if form.action == action and all(values.get(k) == v for k, v in fields.items()):
            return form
    raise AssertionError(f"no form {action} {fields} in {page.url}")


def has_form(page: Page, action: str) -> bool:
    return any(form.action == action for form in page.forms)


async def post(browser: Browser, page: Page, form: Form, **values: str) -> Page:
    """Post ``form`` as it is, with ``values`` typed in, and follow to the page shown."""
    result = await browser.submit(page, form, form.data(values=values))
    assert isinstance(result, Page), result
    return result


def csrf_of(page: Page) -> str:
    """The session's CSRF token, from any form of ``page``."""
    for form in page.forms:
        found = dict(form.fields).get("csrf")
        if found:
            return found
    raise AssertionError("no form with a CSRF token")


async def audit_events(gateway: RunningGateway, **query: Any) -> list[dict[str, Any]]:
    """The AuditEvents the gateway recorded that match ``query`` (:class:`AuditQuery` fields),
    newest first."""
    reader = AuditReader(gateway.server.app[AUTH].db)
    return (await reader.search(AuditQuery(count=200, **query))).events


def details(event: dict[str, Any]) -> dict[str, str]:
    """Every entity detail of an event, by type."""
    return {
        str(d.get("type")): str(d.get("valueString"))
        for entity in event.get("entity", [])
        for d in entity.get("detail", [])
    }
