"""The key provider (SECURITY.md P-15, P-16, P-19): sealing binds a secret to its record, KEK
versions, the stored form, the key file; every failure is a clear :class:`KeyProviderError`."""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from smart_auth.key_provider import (
    KeyProviderError,
    LocalKeyProvider,
    Sealed,
    UnknownKeyVersion,
    UnwrapError,
    parse_key,
    read_key_file,
    seal,
    unseal,
    version_of,
    write_key_file,
)

KEK = bytes(range(32))
OTHER_KEK = bytes(range(32, 64))


async def test_p19_a_sealed_secret_opens_only_for_its_record() -> None:
    provider = LocalKeyProvider(KEK)
    sealed = await seal(provider, b"JBSWY3DPEHPK3PXP", "totp:user-1")
    assert await unseal(provider, sealed, "totp:user-1") == b"JBSWY3DPEHPK3PXP"
    with pytest.raises(UnwrapError, match="another record"):
        await unseal(provider, sealed, "totp:user-2")  # moved onto someone else's account


async def test_p19_sealing_hides_equal_secrets() -> None:
    provider = LocalKeyProvider(KEK)
    one, two = [await seal(provider, b"same secret", "x") for _ in range(2)]
    assert one.key.blob != two.key.blob and one.ciphertext != two.ciphertext
    assert b"same secret" not in one.ciphertext


@pytest.mark.parametrize("part", ["key", "nonce", "data"])
async def test_p19_a_changed_byte_is_a_clear_error_not_a_crash(part: str) -> None:
    provider = LocalKeyProvider(KEK)
    doc = (await seal(provider, b"secret", "paging-secret")).to_doc()
    doc[part] = bytes([doc[part][0] ^ 1]) + doc[part][1:]
    with pytest.raises(UnwrapError, match="altered"):
        await unseal(provider, Sealed.from_doc(doc), "paging-secret")


async def test_p19_a_blob_of_another_kek_names_both_versions() -> None:
    sealed = await seal(LocalKeyProvider(OTHER_KEK), b"secret", "paging-secret")
    with pytest.raises(UnknownKeyVersion) as refused:
        await unseal(LocalKeyProvider(KEK), sealed, "paging-secret")
    assert version_of(OTHER_KEK) in str(refused.value)
    assert version_of(KEK) in str(refused.value)
    assert "paging-secret" in str(refused.value)


async def test_p19_a_version_id_that_lies_about_its_key_is_refused() -> None:
    provider = LocalKeyProvider(KEK)
    sealed = await seal(LocalKeyProvider(OTHER_KEK), b"secret", "x")
    relabelled = replace(sealed, key=replace(sealed.key, version=provider.current_version))
    with pytest.raises(UnwrapError):
        await unseal(provider, relabelled, "x")


async def test_p16_the_newest_version_wraps_and_older_ones_still_unwrap() -> None:
    old = await seal(LocalKeyProvider(OTHER_KEK), b"secret", "x")
    provider = LocalKeyProvider(KEK, previous=[OTHER_KEK])
    assert provider.current_version == version_of(KEK)
    assert await unseal(provider, old, "x") == b"secret"
    new = await seal(provider, b"secret", "x")
    assert new.key.version == version_of(KEK) != old.key.version
    # Re-wrapping for a rotation: the data key moves to the newest version, the ciphertext stays.
    rewrapped = replace(old, key=await provider.wrap(await provider.unwrap(old.key)))
    assert await unseal(LocalKeyProvider(KEK), rewrapped, "x") == b"secret"


def test_p19_version_ids_are_fingerprints_that_reveal_nothing() -> None:
    assert version_of(KEK) == version_of(bytes(KEK)) != version_of(OTHER_KEK)
    version = version_of(KEK)
    assert version.startswith("local:") and len(version) == len("local:") + 16
    assert KEK.hex()[:8] not in version


async def test_p19_the_stored_form_round_trips_and_anything_else_is_refused() -> None:
    sealed = await seal(LocalKeyProvider(KEK), b"secret", "x")
    doc = sealed.to_doc()
    assert set(doc) == {"kek", "key", "nonce", "data"} and doc["kek"] == version_of(KEK)
    assert Sealed.from_doc(doc) == sealed
    for bad in (
        None,
        "secret",
        {},
        {**doc, "kek": 1},
        {**doc, "nonce": b"short"},
        {**doc, "data": "x"},
    ):
        with pytest.raises(KeyProviderError, match="not in the sealed form"):
            Sealed.from_doc(bad)


def test_p19_kek_must_have_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyProvider(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKeyProvider(KEK, previous=[b"short"])


@pytest.mark.parametrize(
    "stored",
    [
        bytes([0xFF]) + os.urandom(31),  # raw
        base64.b64encode(KEK) + b"\n",  # openssl rand -base64 32 > file
        base64.urlsafe_b64encode(bytes(range(200, 232))).rstrip(b"="),  # URL-safe, unpadded
        b"  " + base64.b64encode(KEK) + b"  \r\n",
    ],
)
def test_p19_key_forms_accepted(stored: bytes) -> None:
    assert len(parse_key(stored)) == 32


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        (b"correct horse battery staple!!!!", "looks like text"),  # a 32-character passphrase
        (base64.b64encode(os.urandom(16)), "16 bytes, not 32"),
        (b"not base64 at all, is it?", "not a key"),
        (b"", "0 bytes"),
    ],
)
def test_p19_other_key_forms_are_refused_without_echoing_them(stored: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says) as refused:
        parse_key(stored)
    if stored:
        assert stored.decode() not in str(refused.value)


def test_p19_key_file_is_written_once_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "key-encryption-key"
    write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(path)
    assert len(key) == 32
    with pytest.raises(FileExistsError):
        write_key_file(path)  # never overwritten
    assert read_key_file(path) == key
    with pytest.raises(ValueError, match="cannot read"):
        read_key_file(tmp_path / "missing")
