"""``fhir-gateway keys rotate``: every key the gateway holds, rotated without downtime
(SECURITY.md P-16, P-17).

1. The token-signing key (P-17): a new key becomes current; the old one stays in the JWKS until
   every token it signed has expired (:mod:`smart_auth.keys`), so no token stops working.
2. The key-encryption key (P-16): everything the configured current KEK did not wrap — the sealed
   secrets (signing keys, TOTP secrets, the paging secret) and the cache's data keys, all of
   :data:`WRAPPED_FIELDS` — is re-wrapped under it while the gateways go on serving
   (:mod:`smart_auth.rewrap`), with a progress bar on a terminal.

A new KEK comes from the settings, not from this command: ``key_encryption_key_file`` (or
``key_encryption_key``) names the new key and ``previous_key_encryption_key_files`` (or
``previous_key_encryption_keys``) the old ones, which go on opening what they wrapped. Every
gateway instance must hold the new key before any of them wraps with it (docs/ehr-teams.md, "Key
rotation"). The command ends by counting what each KEK version still wraps: once nothing names an
old version, it can be removed from the settings and destroyed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from gateway.audit import security
from gateway.audit.facts import Actor
from gateway.audit.log import AuditLog
from gateway.cache.datakeys import WRAPPED as CACHE_DATA_KEYS
from gateway.fhir.paging import SEALED as PAGING_SECRET
from smart_auth.key_provider import KeyProvider, WrappedField
from smart_auth.rewrap import RewrapReport, pending, rewrap, versions_in_use
from smart_auth.services import SEALED_FIELDS, AuthServices

WRAPPED_FIELDS: tuple[WrappedField, ...] = (*SEALED_FIELDS, PAGING_SECRET, CACHE_DATA_KEYS)
"""Every place where the gateway keeps a key that a KEK wrapped."""


@dataclass(frozen=True, slots=True)
class Rotation:
    old_kid: str
    new_kid: str
    kek_version: str
    rewrapped: RewrapReport
    remaining: dict[str, int]
    """Blobs still wrapped by each other KEK version."""

    @property
    def complete(self) -> bool:
        """Whether the current KEK now wraps everything."""
        return not self.rewrapped.failed and not self.remaining


async def rotate_keys(
    services: AuthServices, audit: AuditLog, provider: KeyProvider, *, out: TextIO | None = None
) -> Rotation:
    """Rotate the signing key, then re-wrap under ``provider``'s current KEK (the module's
    docstring); reports on ``out`` (standard output), the progress bar on standard error."""
    out = out or sys.stdout
    old = await services.keys.signing_key()
    new = await services.keys.rotate()
    print(
        f"new signing key {new.kid}; {old.kid} stays in the JWKS until its tokens expire",
        file=out,
        flush=True,
    )
    current = provider.current_version
    total = await pending(services.db, WRAPPED_FIELDS, current)
    print(f"re-wrapping {total} key(s) under key-encryption key {current}", file=out, flush=True)
    with tqdm(total=total, unit="key", desc="re-wrapping", file=sys.stderr, disable=None) as bar:
        report = await rewrap(services.db, provider, WRAPPED_FIELDS, progress=bar.update)
    versions = await versions_in_use(services.db, WRAPPED_FIELDS)
    remaining = {version: n for version, n in sorted(versions.items()) if version != current}
    rotation = Rotation(old.kid, new.kid, current, report, remaining)
    await audit.record(
        [security.key_rotated(audit.observer, Actor.cli(), new_kid=new.kid, old_kid=old.kid)]
    )
    _report(rotation, out)
    return rotation


def _report(rotation: Rotation, out: TextIO) -> None:
    print(f"{rotation.rewrapped.rewrapped} key(s) re-wrapped", file=out)
    for failure in rotation.rewrapped.failed:
        print(f"not re-wrapped: {failure}", file=out)
    if rotation.complete:
        print(
            f"every key is wrapped by {rotation.kek_version}; earlier key-encryption keys can be "
            "removed from the settings",
            file=out,
        )
        return
    for version, count in rotation.remaining.items():
        print(f"still wrapped by {version}: {count}; keep that key until none is", file=out)
