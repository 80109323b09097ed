"""One entry's encryption (SECURITY.md P-15): AES-256-GCM bound to its resource, version and
patient; random 96-bit nonces that do not repeat; every failure a :class:`DecryptError`."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.cache.crypto import NONCE_BYTES, Ciphertext, DecryptError, Record, decrypt, encrypt

KEY = AESGCM(bytes(range(32)))
RECORD = Record("Observation", "obs-1", "3", "Patient/pat-a")
BODY = b'{"resourceType":"Observation","id":"obs-1","status":"final"}'


def test_p15_an_entry_opens_for_its_record() -> None:
    assert decrypt(KEY, encrypt(KEY, BODY, RECORD), RECORD) == BODY


@pytest.mark.parametrize(
    "moved",
    [
        {"resource_type": "Condition"},
        {"resource_id": "obs-2"},
        {"version": "2"},
        {"owner": "Patient/pat-b"},
        {"owner": "system"},
    ],
)
def test_p15_aad_mismatch_a_ciphertext_moved_to_another_record_does_not_open(
    moved: dict[str, str],
) -> None:
    sealed = encrypt(KEY, BODY, RECORD)
    with pytest.raises(DecryptError):
        decrypt(KEY, sealed, dataclasses.replace(RECORD, **moved))


def test_p15_aad_ids_cannot_be_spliced_into_another_record() -> None:
    one = Record("Observation", "a|b", "1", "Patient/x")
    other = Record("Observation|a", "b", "1", "Patient/x")
    assert one.aad() != other.aad()
    with pytest.raises(DecryptError):
        decrypt(KEY, encrypt(KEY, BODY, one), other)


def test_p15_another_key_does_not_open_it() -> None:
    with pytest.raises(DecryptError):
        decrypt(AESGCM(bytes(range(1, 33))), encrypt(KEY, BODY, RECORD), RECORD)


@pytest.mark.parametrize("part", ["nonce", "data"])
def test_p15_a_changed_byte_does_not_open(part: str) -> None:
    sealed = encrypt(KEY, BODY, RECORD)
    value = getattr(sealed, part)
    changed = dataclasses.replace(sealed, **{part: bytes([value[0] ^ 1]) + value[1:]})
    with pytest.raises(DecryptError):
        decrypt(KEY, changed, RECORD)


def test_p15_nonces_are_96_random_bits_and_never_repeat() -> None:
    sealed = [encrypt(KEY, BODY, RECORD) for _ in range(20_000)]
    assert all(len(s.nonce) == NONCE_BYTES == 12 for s in sealed)
    assert len({s.nonce for s in sealed}) == len(sealed)
    assert len({s.data for s in sealed}) == len(sealed)  # equal entries, unequal ciphertexts
    assert all(BODY not in s.data for s in sealed[:100])


def test_p15_a_truncated_nonce_is_refused() -> None:
    sealed = encrypt(KEY, BODY, RECORD)
    with pytest.raises(DecryptError, match="96 bits"):
        decrypt(KEY, Ciphertext(sealed.nonce[:8], sealed.data), RECORD)
