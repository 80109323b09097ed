"""The key provider: the key-encryption keys (KEKs) behind every secret the gateway keeps in MongoDB
(SECURITY.md P-15, P-16, P-19; DESIGN.md "Authority", "Encrypted cache").

Envelope encryption. :func:`seal` encrypts a secret with AES-256-GCM (NIST SP 800-38D) under a
fresh random 256-bit data key, with additional authenticated data (AAD) that names what the secret
is and whose (``"totp:<user id>"``), and has the :class:`KeyProvider` wrap the data key under its
current KEK. :func:`unseal` reverses it, and raises :class:`UnwrapError` when a byte was changed or
the blob was moved to another record (the AAD differs), :class:`UnknownKeyVersion` when the KEK
that wrapped it is not held. The encrypted cache wraps its per-patient data keys with the same
provider (:meth:`KeyProvider.wrap`).

Why an envelope rather than AES key wrap of the secret itself (RFC 5649): key wrap has no
associated data, so a wrapped secret copied onto another record (someone's own TOTP seed onto an
administrator's account) would open there, and it is deterministic (equal secrets, equal blobs).
The envelope binds each secret to its record, has the shape a KMS offers (the KMS wraps a small
data key in one call; the encryption stays local), and rotating the KEK re-wraps 40-byte data keys
without touching what they protect. The local provider does wrap the data keys with AES key wrap
(RFC 3394, NIST SP 800-38F): it is made for wrapping keys, needs no nonce under a long-lived KEK,
and its integrity check fails loudly on a changed byte.

Stored form, a subdocument (so that re-wrapping can find blobs by KEK version with a query)::

    {"kek": "local:3f2a9c1d0b7e6a55",  # the KEK version that wrapped the data key
     "key": <40 bytes>,                # the data key, wrapped by that version
     "nonce": <12 bytes>,
     "data": <ciphertext + 16-byte GCM tag>}

KEK versions. The local provider names each KEK by a fingerprint of it (``local:`` + the first 8
bytes of HMAC-SHA-256 under the key of a fixed label; it tells nothing about the key), so a
version id cannot disagree with its key: a gateway given another KEK sees an unknown version and
says so before decrypting anything. A provider holds several versions, wraps with the current one
and unwraps with any. Rotation (P-16) makes a new KEK current, keeps the old ones while blobs
naming them are re-wrapped (``unwrap``, then ``wrap``, of the data key; the ciphertext stays:
:mod:`smart_auth.rewrap`), and then drops them. Every store that keeps wrapped keys says where, as
a :class:`WrappedField`, so that re-wrapping finds all of them.

A KMS behind the same interface. ``wrap`` and ``unwrap`` are coroutines so that they may be
network calls. Vault Transit: ``wrap`` POSTs the base64 data key to ``transit/encrypt/<name>`` and
returns ``WrappedKey("vault:<name>:v<N>", ciphertext)``, ``unwrap`` POSTs it to
``transit/decrypt/<name>``, ``current_version`` is the transit key's latest version, and
``transit/rewrap`` serves rotation. AWS KMS (``Encrypt``/``Decrypt`` with the key ARN), Google
Cloud KMS (``encrypt``/``decrypt`` of a CryptoKeyVersion) and Azure Key Vault (``wrapKey``/
``unwrapKey``) fit the same way; their failures should be raised as :class:`KeyProviderError`.
The key ring and the paging signer keep what they unseal in memory, and the encrypted cache keeps
each unwrapped data key for a bounded time (``cache_key_memory_seconds``), so a KMS is called at
start-up, on rotation and when a cache data key is first needed by an instance, not per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION_LABEL = b"fhir-gateway key-encryption-key version"


class KeyProviderError(Exception):
    """A secret cannot be wrapped or unwrapped; the message says why (never the secret)."""


class UnknownKeyVersion(KeyProviderError):
    """The blob was wrapped by a KEK version that the provider does not hold."""


class UnwrapError(KeyProviderError):
    """The blob does not open: a byte was changed, or it was moved to another record."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key wrapped by the KEK ``version``."""

    version: str
    blob: bytes


class KeyProvider(Protocol):
    """Holds the KEKs; wraps data keys with the current version, unwraps with any it holds."""

    @property
    def current_version(self) -> str: ...

    async def wrap(self, data_key: bytes) -> WrappedKey: ...

    async def unwrap(self, wrapped: WrappedKey) -> bytes: ...


def version_of(kek: bytes) -> str:
    """The version id of a local KEK: a fingerprint that reveals nothing about the key."""
    return "local:" + hmac.new(kek, _VERSION_LABEL, hashlib.sha256).hexdigest()[:16]


class LocalKeyProvider:
    """KEKs held in this process (from a file or an environment variable): ``current`` wraps,
    ``current`` and ``previous`` unwrap."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        for key in (current, *previous):
            if len(key) != KEY_BYTES:
                raise ValueError(f"a key-encryption key has {KEY_BYTES} bytes")
        self._keys = {version_of(key): key for key in (*previous, current)}
        self._current = version_of(current)

    @property
    def current_version(self) -> str:
        return self._current

    async def wrap(self, data_key: bytes) -> WrappedKey:
        return WrappedKey(self._current, aes_key_wrap(self._keys[self._current], data_key))

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        kek = self._keys.get(wrapped.version)
        if kek is None:
            held = ", ".join(sorted(self._keys))
            raise UnknownKeyVersion(
                f"it was wrapped by key-encryption key {wrapped.version}, which is not the one "
                f"configured here ({held})"
            )
        try:
            return aes_key_unwrap(kek, wrapped.blob)
        except (InvalidUnwrap, ValueError):
            raise UnwrapError(
                f"its data key does not unwrap under {wrapped.version}: it was altered"
            ) from None


@dataclass(frozen=True, slots=True)
class WrappedField:
    """Where a store keeps data keys that a KEK wrapped: a collection, and the dotted path of the
    subdocument holding ``kek`` (the version) and ``key`` (the wrapped data key) — the form of
    :meth:`Sealed.to_doc`, which the cache's data keys share."""

    collection: str
    path: str


@dataclass(frozen=True, slots=True)
class Sealed:
    """A secret encrypted under a data key that a KEK wrapped (see the module docstring)."""

    key: WrappedKey
    nonce: bytes
    ciphertext: bytes

    def to_doc(self) -> dict[str, Any]:
        return {
            "kek": self.key.version,
            "key": self.key.blob,
            "nonce": self.nonce,
            "data": self.ciphertext,
        }

    @classmethod
    def from_doc(cls, doc: object) -> Sealed:
        """The sealed secret stored as ``doc``; :class:`KeyProviderError` if it is not one."""
        if isinstance(doc, Mapping):
            kek, key, nonce, data = (doc.get(name) for name in ("kek", "key", "nonce", "data"))
            if (
                isinstance(kek, str)
                and isinstance(key, bytes)
                and isinstance(nonce, bytes)
                and len(nonce) == _NONCE_BYTES
                and isinstance(data, bytes)
            ):
                return cls(WrappedKey(kek, key), nonce, data)
        raise KeyProviderError("a stored secret is not in the sealed form")


async def seal(provider: KeyProvider, secret: bytes, aad: str) -> Sealed:
    """``secret`` encrypted under a new data key, bound to ``aad`` (its purpose and record)."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, secret, aad.encode())
    return Sealed(await provider.wrap(data_key), nonce, ciphertext)


async def unseal(provider: KeyProvider, sealed: Sealed, aad: str) -> bytes:
    """The secret in ``sealed``, if it was sealed for ``aad`` by a KEK the provider holds."""
    try:
        data_key = await provider.unwrap(sealed.key)
        return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad.encode())
    except KeyProviderError as exc:
        raise type(exc)(f"cannot unseal {aad}: {exc}") from None
    except (InvalidTag, ValueError):
        raise UnwrapError(
            f"cannot unseal {aad}: it was altered or belongs to another record"
        ) from None


def parse_key(data: bytes) -> bytes:
    """A KEK from its stored form: exactly 32 random bytes, or those bytes in base64 (standard or
    URL-safe alphabet, padding optional, surrounding white space ignored). Raises
    :class:`ValueError` saying what is wrong (never echoing the value)."""
    expected = f"{KEY_BYTES} random bytes, raw or in base64 (openssl rand -base64 {KEY_BYTES})"
    if len(data) == KEY_BYTES:
        if all(32 <= byte < 127 for byte in data):  # text, not random bytes: a passphrase?
            raise ValueError(f"this looks like text, not a key; expected {expected}")
        return data
    text = data.strip().replace(b"-", b"+").replace(b"_", b"/")
    try:
        key = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not a key; expected {expected}") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{len(key)} bytes, not {KEY_BYTES}; expected {expected}")
    return key


def read_key_file(path: Path) -> bytes:
    """The KEK in ``path`` (see :func:`parse_key`); :class:`ValueError` saying what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_key(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def write_key_file(path: Path) -> None:
    """A new random KEK in ``path`` (base64, readable by its owner only); the file must not
    exist yet (:class:`FileExistsError`), so that a key is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
