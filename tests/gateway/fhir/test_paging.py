"""Sealed paging links (S-26, P-14): tampering, another token, expiry, and nothing of the search
readable in the token."""

from __future__ import annotations

import base64
import string
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.fhir.context import AccessContext
from gateway.fhir.paging import PageLink, PageSealer
from gateway.web.errors import Forbidden
from smart_auth.scopes import ScopeSet

SECRET = b"k" * 32
LINK = PageLink(
    upstream="/Observation?patient=Patient/a&_count=2&_offset=2",
    kind="search-type",
    resource_type="Observation",
    letters="s",
)
ALPHABET = string.ascii_letters + string.digits + "-_"
ALICE = AccessContext(
    issuer="https://gw.example",
    subject="user-a",
    client_id="app-1",
    scopes=ScopeSet.parse("patient/*.rs"),
    jti="j1",
    expires_at=datetime.now(UTC),
    patient="a",
)


def test_a_link_opens_for_the_token_it_was_issued_to() -> None:
    pages = PageSealer(SECRET, 60)
    assert pages.open(pages.seal(LINK, ALICE), ALICE) == LINK
    # A refreshed token of the same user, app and patient continues the same search.
    assert pages.open(pages.seal(LINK, ALICE), replace(ALICE, jti="j2")) == LINK


@pytest.mark.parametrize("position", [0, 5, 20, -10, -2, -1])
def test_changing_one_character_is_refused(position: int) -> None:
    """Every other character at the position, the last included: its low bits are padding that
    a lenient base64 decoder ignores, so only a strict reading refuses all of them."""
    pages = PageSealer(SECRET, 60)
    for _ in range(8):  # fresh salt and nonce each time: other last characters
        token = pages.seal(LINK, ALICE)
        at = position % len(token)
        for swapped in ALPHABET.replace(token[at], ""):
            with pytest.raises(Forbidden):
                pages.open(token[:at] + swapped + token[at + 1 :], ALICE)


@pytest.mark.parametrize(
    "other",
    [
        replace(ALICE, subject="user-b"),
        replace(ALICE, client_id="app-2"),
        replace(ALICE, patient="b"),
        replace(ALICE, issuer="https://elsewhere.example"),
    ],
)
def test_another_tokens_identity_is_refused(other: AccessContext) -> None:
    pages = PageSealer(SECRET, 60)
    with pytest.raises(Forbidden, match="another token"):
        pages.open(pages.seal(LINK, ALICE), other)


def test_an_expired_link_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = PageSealer(SECRET, 10)
    token = pages.seal(LINK, ALICE)
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Forbidden, match="expired"):
        pages.open(token, ALICE)


def test_a_link_sealed_with_another_secret_is_refused() -> None:
    token = PageSealer(b"x" * 32, 60).seal(LINK, ALICE)
    with pytest.raises(Forbidden):
        PageSealer(SECRET, 60).open(token, ALICE)


def test_p14_the_token_shows_nothing_of_the_search_or_who_made_it() -> None:
    pages = PageSealer(SECRET, 60)
    token = pages.seal(LINK, ALICE)
    data = token.partition(".")[2]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    for plain in ("Observation", "patient=Patient/a", "user-a", "app-1", "gw.example", "_offset"):
        assert plain.encode() not in raw
        assert plain not in token
    # Every token is sealed afresh: the same link twice gives two unrelated tokens.
    assert pages.seal(LINK, ALICE) != token
    assert pages.open(pages.seal(LINK, ALICE), ALICE) == pages.open(token, ALICE) == LINK


@pytest.mark.parametrize(
    "token",
    [
        "",
        "p1.",
        "p1.!!!",
        "p1.AAAA",
        "p2." + "A" * 80,
        # A link as an earlier version signed it (readable payload, HMAC): no longer accepted.
        "eyJ1IjoiL09ic2VydmF0aW9uIn0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2ln",
    ],
)
def test_a_malformed_token_is_refused_not_an_error(token: str) -> None:
    with pytest.raises(Forbidden, match="not valid"):
        PageSealer(SECRET, 60).open(token, ALICE)
