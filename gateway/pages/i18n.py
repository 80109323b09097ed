"""The message catalogue of every patient-facing page (gettext through Babel): which language a
page is shown in, its translations, and dates in words.

English is the source language: the messages in the code, the templates and the data files are
the catalogue's ids, so a page in English needs no catalogue. Every other language is a ``.po``
file under ``locale/<code>/LC_MESSAGES/messages.po``, read once per process (Babel compiles it
in memory; fuzzy entries are left out, as ``msgfmt`` leaves them out). A hospital adds a
language by adding a ``.po`` file and its code to :data:`LOCALES`; ``docs/development.md`` says
how the catalogue is extracted and updated.

The language of a page: ``?lang=`` when it names one of :data:`LOCALES` (the language switcher's
links; the choice is then kept in a cookie), else that cookie, else the best match of the
browser's ``Accept-Language``, else English.
"""

from __future__ import annotations

import gettext
import io
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_date, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
DEFAULT = "en"
LOCALES: tuple[str, ...] = ("en", "es")
NAMES = {"en": "English", "es": "Español"}
"""Each language's name in itself, for the switcher."""
LANG_COOKIE = "fg_lang"
_MAX_HEADER = 512


def N_(message: str) -> str:
    """Marks ``message`` for the catalogue where it is written; it is translated where it is
    shown (a page's error message, a data file's wording)."""
    return message


@cache
def translations(locale: str) -> gettext.NullTranslations:
    """The translations of ``locale`` (English, or an unknown locale: the messages as written)."""
    if locale == DEFAULT or locale not in LOCALES:
        return gettext.NullTranslations()
    with (LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po, locale=locale)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


def _accepted(header: str) -> list[str]:
    """The languages of an ``Accept-Language`` header, most wanted first (RFC 9110 12.5.4)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header[:_MAX_HEADER].split(",")):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                weight = float(value)
            except ValueError:
                weight = 0.0
        if tag and tag != "*" and weight > 0:
            ranked.append((-weight, index, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def choose(asked: str | None, cookie: str | None, accept_language: str) -> str:
    """The language of a page (see the module's docstring)."""
    for candidate in (asked, cookie):
        if candidate in LOCALES:
            return str(candidate)
    preferred = [tag.replace("_", "-") for tag in _accepted(accept_language)]
    found = Locale.negotiate(preferred, list(LOCALES), sep="-") if preferred else None
    return str(found.language) if found is not None else DEFAULT


def date_in_words(value: datetime, locale: str) -> str:
    """``12 June 2026`` in the page's language (the UTC date)."""
    return format_date(value.astimezone(UTC), "long", locale=locale)


def time_in_words(value: datetime, locale: str) -> str:
    """The date and time (hours and minutes, UTC) in the page's language."""
    moment = value.astimezone(UTC)
    pattern = Locale.parse(locale).datetime_formats["medium"]
    clock = format_time(moment, "short", tzinfo=UTC, locale=locale)
    return str(pattern).format(clock, format_date(moment, "long", locale=locale)) + " UTC"
