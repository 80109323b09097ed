"""Which language a page is shown in, and dates in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.pages.i18n import choose, date_in_words, time_in_words


@pytest.mark.parametrize(
    ("asked", "cookie", "header", "shown"),
    [
        (None, None, "", "en"),
        (None, None, "es-ES,es;q=0.9,en;q=0.8", "es"),
        (None, None, "en-GB,es;q=0.9", "en"),
        (None, None, "fr-FR, de;q=0.5", "en"),  # no catalogue: English
        (None, None, "fr;q=0.9, es;q=0.8", "es"),  # the best match we have
        (None, None, "es;q=0, en;q=0.1", "en"),  # q=0 means "not this one"
        (None, None, "es;q=bogus, *", "en"),
        (None, None, "x" * 10_000, "en"),
        (None, "es", "en", "es"),  # the switcher's choice, kept in a cookie, wins
        ("en", "es", "es", "en"),  # a link of the switcher wins over the cookie
        ("xx", "nonsense", "es", "es"),  # unknown choices are ignored
    ],
)
def test_the_language_of_a_page(
    asked: str | None, cookie: str | None, header: str, shown: str
) -> None:
    assert choose(asked, cookie, header) == shown


def test_dates_in_words_in_the_language_of_the_page_and_in_utc() -> None:
    late = datetime(2026, 6, 12, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 04:30 UTC next day
    assert date_in_words(late, "en") == "June 13, 2026"
    assert date_in_words(late, "es") == "13 de junio de 2026"
    assert time_in_words(datetime(2026, 6, 12, 15, 4, tzinfo=UTC), "es") == (
        "12 de junio de 2026, 15:04 UTC"
    )
