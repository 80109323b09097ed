"""Passwords (SECURITY.md P-03, after NIST SP 800-63B 5.1.1.2): at least 12 characters, not a common
or breached password, no composition rules; stored as Argon2id (RFC 9106) in PHC string form with a
per-user random salt, using OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).

The common-password list ships as ``data/common-passwords.txt`` (its source is named in the file).
A password is refused when it is on the list, is a listed password with only digits or symbols
added at either end (``password1234``), repeats a few characters (``abababababab``), or contains
the username.
"""

from __future__ import annotations

import hmac
import os
import string
from functools import cache
from importlib import resources

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

MIN_LENGTH = 12
MAX_LENGTH = 256
_TRIM = string.digits + string.punctuation + " "


class WeakPassword(ValueError):
    """The password breaks the policy; the message says how, in words for the user. ``message``
    is an English id of the pages' message catalogue, ``params`` fill its placeholders."""

    def __init__(self, message: str, **params: int) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params


@cache
def common_passwords() -> frozenset[str]:
    text = (
        resources.files("smart_auth.accounts").joinpath("data", "common-passwords.txt").read_text()
    )
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def check_policy(password: str, username: str = "") -> None:
    """Raise :class:`WeakPassword` unless ``password`` meets P-03."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword("Use at least %(count)d characters.", count=MIN_LENGTH)
    if len(password) > MAX_LENGTH:
        raise WeakPassword("Use at most %(count)d characters.", count=MAX_LENGTH)
    lowered = password.lower()
    listed = common_passwords()
    if lowered in listed or lowered.strip(_TRIM) in listed:
        raise WeakPassword("This password is too common; it appears in lists of leaked passwords.")
    if len(set(lowered)) < 4:
        raise WeakPassword("This password repeats too few different characters.")
    if len(username) >= 3 and username.lower() in lowered:
        raise WeakPassword("The password must not contain the username.")


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(salt=salt, length=32, iterations=2, lanes=1, memory_cost=19 * 1024)


def hash_password(password: str) -> str:
    """An Argon2id PHC string (``$argon2id$v=19$m=19456,t=2,p=1$salt$hash``). CPU-bound: call it
    off the event loop."""
    return _kdf(os.urandom(16)).derive_phc_encoded(password.encode())


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches the stored PHC string (CPU-bound too)."""
    try:
        Argon2id.verify_phc_encoded(password.encode(), encoded)
    except (InvalidKey, ValueError):
        return False
    return True


_DUMMY = (
    "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)


def burn_time(password: str) -> None:
    """Spend as long as a real check, so an unknown username answers no faster (P-05)."""
    verify_password(password, _DUMMY)


def constant_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
