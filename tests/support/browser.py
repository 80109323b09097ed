"""A small stand-in for a browser: follows redirects by hand, keeps cookies, reads the HTML forms of
the sign-in and consent pages and posts them back field by field, as a browser would."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp


@dataclass
class Form:
    action: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    checkboxes: list[tuple[str, str, bool]] = field(default_factory=list)
    radios: list[tuple[str, str, bool]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)

    def data(
        self,
        *,
        values: dict[str, str] | None = None,
        untick: set[str] = frozenset(),  # type: ignore[assignment]
        button: tuple[str, str] | None = None,
        radio: dict[str, str] | None = None,
    ) -> list[tuple[str, str]]:
        out = [(k, (values or {}).get(k, v)) for k, v in self.fields]
        out += [(k, v) for k, v in (values or {}).items() if k not in dict(self.fields)]
        out += [(k, v) for k, v, on in self.checkboxes if on and v not in untick]
        chosen = radio or {}
        for name in dict.fromkeys(n for n, _, _ in self.radios):
            if name in chosen:
                out.append((name, chosen[name]))
            else:
                out += [(n, v) for n, v, on in self.radios if n == name and on]
        if button:
            out.append(button)
        return out


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", "")))
        elif tag == "input" and self.forms:
            kind = a.get("type", "text")
            name = a.get("name", "")
            if kind == "checkbox":
                self.forms[-1].checkboxes.append((name, a.get("value", "on"), "checked" in a))
            elif kind == "radio":
                self.forms[-1].radios.append((name, a.get("value", ""), "checked" in a))
            elif name:
                self.forms[-1].fields.append((name, a.get("value", "")))
        elif tag == "button" and self.forms and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def forms_of(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def text_of(html: str) -> str:
    parser = _FormParser()
    parser.feed(html)
    return " ".join(" ".join(parser.text).split())


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


@dataclass
class Page:
    status: int
    url: str
    html: str
    headers: dict[str, str]

    @property
    def forms(self) -> list[Form]:
        return forms_of(self.html)

    @property
    def text(self) -> str:
        return text_of(self.html)


class Browser:
    """Keeps cookies; follows redirects by hand until one leaves the gateway (the callback)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), raise_for_status=False
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _follow(self, response: aiohttp.ClientResponse) -> Page | str:
        """A page of the gateway, or the URL of a redirect that leaves it."""
        url = str(response.url)
        while response.status in (301, 302, 303, 307):
            location = urljoin(url, response.headers["Location"])
            if not location.startswith(self.base):
                return location
            response = await self.session.get(location, allow_redirects=False)
            url = location
        return Page(response.status, url, await response.text(), dict(response.headers))

    async def get(self, url: str) -> Page | str:
        return await self._follow(await self.session.get(url, allow_redirects=False))

    async def submit(self, page: Page, form: Form, data: list[tuple[str, str]]) -> Page | str:
        action = urljoin(page.url, form.action)
        return await self._follow(await self.session.post(action, data=data, allow_redirects=False))

    async def login(self, page: Page, username: str, password: str) -> Page | str:
        form = page.forms[0]
        return await self.submit(
            page, form, form.data(values={"username": username, "password": password})
        )


def callback_params(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorize_url(base: str, **params: str) -> str:
    return f"{base}/auth/authorize?{urlencode(params)}"
