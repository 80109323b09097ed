"""Templates of the server-rendered pages, in every language, and the headers every page is sent
with.

Each package with pages keeps its templates in its own folder and a :class:`Templates` for it;
every template extends the shared frame, ``templates/base.html`` here (the language switcher, the
skip link, the one stylesheet). Templates autoescape, undefined names are errors, and text is
marked for the catalogue with Jinja's i18n extension (``{% trans %}``, ``_()``), whitespace
trimmed as the extractor trims it.

Every page runs no script: its CSP forbids scripts, framing (S-15) and third-party assets (P-07),
and it is sent with ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.pages.i18n import LOCALES, date_in_words, time_in_words, translations

SHARED_TEMPLATES = Path(__file__).parent / "templates"
_STYLESHEET = Path(__file__).parent / "static" / "pages.css"
STYLESHEET_URL = "/static/pages.css"


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


class Templates:
    """The templates of one folder beside the shared frame, one Jinja environment per language
    (each with its translations installed, so no two requests share a language by mistake, and
    the filters ``date`` and ``moment`` writing a datetime in words in that language)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._environments: dict[str, jinja2.Environment] = {}

    def _environment(self, locale: str) -> jinja2.Environment:
        found = self._environments.get(locale)
        if found is None:
            found = jinja2.Environment(
                loader=jinja2.ChoiceLoader(
                    [
                        jinja2.FileSystemLoader(self._directory),
                        jinja2.FileSystemLoader(SHARED_TEMPLATES),
                    ]
                ),
                autoescape=jinja2.select_autoescape(default=True),
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
                extensions=["jinja2.ext.i18n"],
            )
            found.policies["ext.i18n.trimmed"] = True
            found.filters["date"] = lambda value, lang=locale: date_in_words(value, lang)
            found.filters["moment"] = lambda value, lang=locale: time_in_words(value, lang)
            found.install_gettext_translations(  # type: ignore[attr-defined]
                translations(locale), newstyle=True
            )
            self._environments[locale] = found
        return found

    def render(self, locale: str, name: str, context: dict[str, Any]) -> str:
        if locale not in LOCALES:
            raise ValueError(f"no catalogue for {locale!r}")
        return self._environment(locale).get_template(name).render(**context)


async def stylesheet(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_STYLESHEET, headers={"Cache-Control": "public, max-age=3600"})


def add_routes(app: web.Application) -> None:
    app.router.add_get(STYLESHEET_URL, stylesheet)
