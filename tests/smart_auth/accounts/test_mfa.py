"""The second factor (SECURITY.md P-04): TOTP steps and recovery codes."""

from __future__ import annotations

import time

from smart_auth.accounts import mfa


def test_p04_totp_accepts_adjacent_steps_only_and_recovery_codes_are_normalised() -> None:
    secret = mfa.new_secret()
    now = time.time()
    code = mfa.current_code(secret, now)
    assert mfa.matching_step(secret, code, now) == int(now) // 30
    assert mfa.matching_step(secret, code, now + 30) is not None  # clock drift
    assert mfa.matching_step(secret, code, now + 120) is None
    assert mfa.matching_step(secret, "12345", now) is None
    codes = mfa.new_recovery_codes()
    assert len(set(codes)) == 10
    assert mfa.recovery_digest("u", codes[0]) == mfa.recovery_digest("u", codes[0].upper())
    assert "otpauth://totp/" in mfa.provisioning_uri(secret, "amelia", "Gateway")
    assert mfa.qr_svg("otpauth://totp/x?secret=" + secret).startswith("<svg")
