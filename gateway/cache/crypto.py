"""One cache entry's encryption: AES-256-GCM (NIST SP 800-38D) under the data key of the patient
whose data it is (SECURITY.md P-15).

The additional authenticated data (AAD) binds the ciphertext to the record it was written for —
the resource type, id and version, and the owner (``Patient/<id>``, or ``system`` for resources
that hold no patient data) — so a ciphertext copied onto another resource's or another patient's
entry fails to decrypt there, even under the right key. The AAD is a JSON array, so no choice of
ids can make two different records' AADs equal.

Nonces are 96 random bits, drawn afresh for every encryption. With random nonces SP 800-38D 8.3
allows at most 2^32 encryptions under one key; the data key ring counts them and moves to a new
key long before (:data:`gateway.cache.datakeys.MAX_ENCRYPTIONS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
_AAD_LABEL = "fhir-gateway cache entry 1"


class DecryptError(Exception):
    """An entry does not open: a byte was changed, it was written for another record, or under
    another key."""


@dataclass(frozen=True, slots=True)
class Record:
    """What an entry's ciphertext is bound to."""

    resource_type: str
    resource_id: str
    version: str
    owner: str

    def aad(self) -> bytes:
        return orjson.dumps(
            [_AAD_LABEL, self.resource_type, self.resource_id, self.version, self.owner]
        )


@dataclass(frozen=True, slots=True)
class Ciphertext:
    nonce: bytes
    data: bytes
    """The ciphertext followed by the 16-byte GCM tag."""


def encrypt(cipher: AESGCM, plaintext: bytes, record: Record) -> Ciphertext:
    nonce = os.urandom(NONCE_BYTES)
    return Ciphertext(nonce, cipher.encrypt(nonce, plaintext, record.aad()))


def decrypt(cipher: AESGCM, sealed: Ciphertext, record: Record) -> bytes:
    """The plaintext, or :class:`DecryptError`."""
    if len(sealed.nonce) != NONCE_BYTES:
        raise DecryptError("the nonce is not 96 bits")
    try:
        return cipher.decrypt(sealed.nonce, sealed.data, record.aad())
    except InvalidTag:
        raise DecryptError("altered, or written for another record or key") from None
