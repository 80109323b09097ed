"""PKCE (RFC 7636; S-17): S256 only."""

from __future__ import annotations

from smart_auth.pkce import s256_matches


def test_s17_s256_only() -> None:
    verifier = "v" * 43
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    assert s256_matches(verifier, create_s256_code_challenge(verifier))
    assert not s256_matches(verifier, verifier)  # a "plain" challenge never matches
