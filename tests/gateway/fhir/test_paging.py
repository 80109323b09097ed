"""Signed paging links: tampering, another token, expiry."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.fhir.context import AccessContext
from gateway.fhir.paging import PageLink, PageSigner
from gateway.web.errors import Forbidden
from smart_auth.scopes import ScopeSet

SECRET = b"k" * 32
LINK = PageLink(
    upstream="/Observation?patient=Patient/a&_count=2&_offset=2",
    kind="search-type",
    resource_type="Observation",
    letters="s",
)
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
    signer = PageSigner(SECRET, 60)
    assert signer.open(signer.sign(LINK, ALICE), ALICE) == LINK
    # A refreshed token of the same user, app and patient continues the same search.
    assert signer.open(signer.sign(LINK, ALICE), replace(ALICE, jti="j2")) == LINK


@pytest.mark.parametrize("position", [0, 5, 20, -10, -1])
def test_changing_one_byte_is_refused(position: int) -> None:
    signer = PageSigner(SECRET, 60)
    token = signer.sign(LINK, ALICE)
    swapped = "A" if token[position] != "A" else "B"
    tampered = (
        token[:position] + swapped + token[position + 1 :]
        if position >= 0
        else (token[: len(token) + position] + swapped + token[len(token) + position + 1 :])
    )
    with pytest.raises(Forbidden):
        signer.open(tampered, ALICE)


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
    signer = PageSigner(SECRET, 60)
    with pytest.raises(Forbidden, match="another token"):
        signer.open(signer.sign(LINK, ALICE), other)


def test_an_expired_link_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = PageSigner(SECRET, 10)
    token = signer.sign(LINK, ALICE)
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Forbidden, match="expired"):
        signer.open(token, ALICE)


def test_a_link_signed_with_another_secret_is_refused() -> None:
    token = PageSigner(b"x" * 32, 60).sign(LINK, ALICE)
    with pytest.raises(Forbidden):
        PageSigner(SECRET, 60).open(token, ALICE)
