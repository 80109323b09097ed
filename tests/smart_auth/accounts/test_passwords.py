"""Passwords (SECURITY.md P-03): the policy and Argon2id hashing."""

from __future__ import annotations

import pytest

from smart_auth.accounts.passwords import WeakPassword, check_policy, hash_password, verify_password


def test_p03_password_policy_and_hashing() -> None:
    for weak in ("short", "password1234", "iloveyou!!!!!!", "zzzzzzzzzzzzzz"):
        with pytest.raises(WeakPassword):
            check_policy(weak)
    check_policy("a tidy orange lighthouse")
    stored = hash_password("a tidy orange lighthouse")
    assert stored.startswith("$argon2id$") and "lighthouse" not in stored
    assert verify_password("a tidy orange lighthouse", stored)
    assert not verify_password("a tidy orange lighthouse!", stored)
    assert hash_password("same input") != hash_password("same input")  # per-user salt
