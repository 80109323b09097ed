"""The message catalogue of the patient-facing pages: complete, current and translated (every
patient-facing text in one catalogue a hospital can translate)."""

from __future__ import annotations

from babel.messages.pofile import read_po

from gateway.pages.extract import catalogue
from gateway.pages.i18n import DEFAULT, LOCALE_DIR, LOCALES, translations


def _ids(path: str) -> set[str]:
    with (LOCALE_DIR / path).open("rb") as po:
        return {str(m.id) for m in read_po(po) if m.id}


def test_the_catalogue_holds_every_message_of_the_pages_now() -> None:
    """A message added to a template, a page error or a data file without running
    ``python -m gateway.pages.extract`` fails here."""
    extracted = {str(m.id) for m in catalogue() if m.id}
    assert extracted == _ids("messages.pot")
    assert "Connected apps" in extracted and "Lab results" in extracted  # templates, data files
    assert "Use at least %(count)d characters." in extracted  # a message raised by the code


def test_every_language_translates_every_message_with_the_same_placeholders() -> None:
    wanted = _ids("messages.pot")
    for locale in LOCALES:
        if locale == DEFAULT:
            continue
        with (LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as po:
            catalog = read_po(po, locale=locale)
        messages = {str(m.id): m for m in catalog if m.id}
        assert set(messages) == wanted, locale
        untranslated = [i for i, m in messages.items() if not m.string or m.fuzzy]
        assert not untranslated, (locale, untranslated)
        problems = [(m.id, errors) for m, errors in catalog.check() if errors]
        assert not problems, (locale, problems)  # placeholders as in the English message


def test_a_translation_is_used_and_english_needs_none() -> None:
    assert translations("es").gettext("Connected apps") == "Aplicaciones conectadas"
    assert translations("en").gettext("Connected apps") == "Connected apps"
    assert translations("xx").gettext("Allow") == "Allow"
