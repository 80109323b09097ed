"""Extracting the message catalogue of the patient-facing pages, for translators.

``python -m gateway.pages.extract`` reads every message of the pages — the templates'
``{% trans %}`` and ``_()``, the Python messages marked ``N_()`` or given to a page error
(``BadPage``, ``NotSignedIn``, ``NotAllowed``) or to ``WeakPassword``, and the wording of the data
files (their ``label`` and ``plain`` values: kinds of data, purposes of use, minimisation) — writes
them to ``locale/messages.pot`` and merges them into each language's ``messages.po`` (new messages
empty, gone ones dropped). A translator then fills in the empty ``msgstr`` entries;
``tests/gateway/pages/test_catalogue.py`` fails while one is missing or the catalogue is stale.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po, write_po

from gateway.pages.i18n import DEFAULT, LOCALE_DIR, LOCALES

ROOT = Path(__file__).resolve().parents[2]
_JSON = "gateway.pages.extract:extract_json"
MAPPING = [
    ("gateway/**/templates/**.html", "jinja2"),
    ("gateway/**.py", "python"),
    ("smart_auth/**.py", "python"),
    ("smart_auth/data/data-kinds.json", _JSON),
    ("smart_auth/data/purposes-of-use.json", _JSON),
    ("consent/data/minimisation/*.json", _JSON),
]
OPTIONS = {"gateway/**/templates/**.html": {"trimmed": "true"}}
KEYWORDS = {
    **DEFAULT_KEYWORDS,
    "BadPage": None,
    "NotSignedIn": None,
    "NotAllowed": None,
    "WeakPassword": None,
}
_KEYS = ("label", "plain")
_FIXED = datetime(2026, 1, 1, tzinfo=UTC)
_HEADER = (
    "# The message catalogue of the FHIR consent gateway's patient-facing pages ({language}).\n"
    "# Written by `python -m gateway.pages.extract` (see docs/development.md); translators fill\n"
    "# in the msgstr lines. Licensed as the project is (Apache-2.0)."
)


def extract_json(
    fileobj: IO[bytes], keywords: object, comment_tags: object, options: object
) -> Iterator[tuple[int, str, str, list[str]]]:
    """Babel extraction method for the data files: every string under a ``label`` or ``plain``
    key, at its line."""
    text = fileobj.read().decode("utf-8")

    def walk(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in _KEYS and isinstance(inner, str):
                    yield inner
                else:
                    yield from walk(inner)
        elif isinstance(value, list):
            for inner in value:
                yield from walk(inner)

    for message in walk(json.loads(text)):
        line = text[: text.find(json.dumps(message, ensure_ascii=False))].count("\n") + 1
        yield line, "", message, []


def catalogue(root: Path = ROOT) -> Catalog:
    """Every message of the pages, as the template every language's catalogue follows."""
    found = Catalog(
        project="fhir-consent-gateway",
        version="0.1.0",
        copyright_holder="the FHIR consent gateway authors",
        msgid_bugs_address="",
        charset="utf-8",
        header_comment=_HEADER.format(language="template"),
    )
    for filename, line, message, comments, context in extract_from_dir(
        root, MAPPING, OPTIONS, KEYWORDS, strip_comment_tags=True
    ):
        found.add(message, None, [(filename, line)], auto_comments=comments, context=context)
    return found


def _write(path: Path, catalog: Catalog) -> None:
    out = io.BytesIO()
    write_po(out, catalog, width=100, omit_header=False, sort_by_file=True)
    path.write_bytes(out.getvalue())


def main() -> None:
    template = catalogue()
    template.creation_date = template.revision_date = _FIXED  # no churn from one run to the next
    _write(LOCALE_DIR / "messages.pot", template)
    for locale in LOCALES:
        if locale == DEFAULT:
            continue
        path = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
        if path.exists():
            with path.open("rb") as po:
                catalog = read_po(po, locale=locale)
        else:
            catalog = Catalog(locale=locale, charset="utf-8")
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        catalog.revision_date = catalog.creation_date = _FIXED
        catalog.header_comment = _HEADER.format(language=locale)
        catalog.project, catalog.version = template.project, template.version
        catalog.msgid_bugs_address = ""
        catalog.fuzzy = False
        _write(path, catalog)
        missing = sum(1 for message in catalog if message.id and not message.string)
        print(f"{path.relative_to(ROOT)}: {len(catalog) - 1} messages, {missing} to translate")


if __name__ == "__main__":
    main()
