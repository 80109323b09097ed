"""Two-step sign-in (SECURITY.md P-04): TOTP (RFC 6238, SHA-1, 6 digits, 30 s, as every
authenticator app expects) through ``cryptography``'s implementation, enrolment with a QR code of
the ``otpauth://`` URI (``segno``), and ten single-use recovery codes, shown once and stored as
digests.

A code is accepted for the current time step or one step either side (clock drift), and a step is
accepted once per user (the caller records it with ``UserStore.claim_totp_step``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time

import segno
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

STEP_SECONDS = 30
DIGITS = 6
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def new_secret() -> str:
    """A random 160-bit TOTP secret in base32 (what authenticator apps take)."""
    return base64.b32encode(os.urandom(20)).decode().rstrip("=")


def _totp(secret: str) -> TOTP:
    padded = secret + "=" * (-len(secret) % 8)
    return TOTP(base64.b32decode(padded), DIGITS, SHA1(), STEP_SECONDS, enforce_key_length=False)  # noqa: S303 - RFC 6238's HMAC-SHA-1, what apps use


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return _totp(secret).get_provisioning_uri(account, issuer)


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as inline SVG markup (no script, no external asset)."""
    return str(segno.make(uri, error="m").svg_inline(scale=4, dark="#111", light="#fff"))


def current_code(secret: str, at: float | None = None) -> str:
    """The code an authenticator shows now (used by tests and the enrolment check)."""
    return _totp(secret).generate(int(at if at is not None else time.time())).decode()


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step ``code`` belongs to (now, or one step either side), or ``None``."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    now = int(at if at is not None else time.time())
    totp = _totp(secret)
    for drift in (0, -1, 1):
        moment = now + drift * STEP_SECONDS
        try:
            totp.verify(code.encode(), moment)
        except InvalidToken:
            continue
        return moment // STEP_SECONDS
    return None


def new_recovery_codes(count: int = 10) -> list[str]:
    """Recovery codes like ``k7qm-x2vd-9hps`` (about 59 bits each)."""
    return [
        "-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(4)) for _ in range(3))
        for _ in range(count)
    ]


def recovery_digest(user_id: str, code: str) -> str:
    normalised = code.strip().lower().replace("-", "").replace(" ", "")
    return hashlib.sha256(f"{user_id}:{normalised}".encode()).hexdigest()
