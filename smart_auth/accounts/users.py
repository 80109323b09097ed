"""User accounts (SECURITY.md P-03, P-04, P-08): patients, practitioners and administrators.

A patient user is linked to one Patient (``fhir_user`` = ``Patient/<id>``) and may act for others
through RelatedPerson resources naming them as the related person (``related_persons`` holds those
RelatedPerson ids; the patients they point to are resolved from the FHIR data at authorization time,
so ending a RelatedPerson link ends the representation). A practitioner's ``fhir_user`` is a
``Practitioner/<id>``; an administrator needs none. Usernames are matched case-insensitively; every
lookup takes a ``str`` and nothing else (P-13).

The TOTP secret of a second factor is a secret at rest (P-19): it is stored sealed by the key
provider, bound to the user's id, and unsealed only to check a code
(:meth:`UserStore.mfa_secret`). Secrets stored in clear by earlier versions are sealed at start-up
(:meth:`UserStore.seal_plaintext_mfa`) or, failing that, when the account is next read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from smart_auth.accounts.passwords import check_policy, hash_password
from smart_auth.idempotent import retried
from smart_auth.key_provider import (
    KeyProvider,
    KeyProviderError,
    Sealed,
    WrappedField,
    seal,
    unseal,
)

COLLECTION = "users"
SEALED = WrappedField(COLLECTION, "mfa.sealed_secret")
"""Where the TOTP secrets are sealed (re-wrapped on KEK rotation, P-16)."""
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{2,63}$")
_REFERENCE = re.compile(r"^(Patient|Practitioner|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_BATCH = 500  # updates per round trip when sealing secrets stored in clear

log = logging.getLogger(__name__)


class Role(StrEnum):
    PATIENT = "patient"
    PRACTITIONER = "practitioner"
    ADMIN = "admin"


class UserError(ValueError):
    """A user record that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    role: Role
    display_name: str
    fhir_user: str | None = None
    related_persons: tuple[str, ...] = ()
    password_hash: str = field(default="", repr=False)
    mfa_sealed: Sealed | None = field(default=None, repr=False)  # the TOTP secret
    mfa_last_step: int = 0
    recovery_codes: tuple[str, ...] = field(default=(), repr=False)
    created_at: datetime | None = None

    @property
    def mfa_enrolled(self) -> bool:
        return self.mfa_sealed is not None

    @property
    def patient_id(self) -> str | None:
        """The user's own Patient id, for a patient user."""
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.split("/", 1)[1]
        return None


def normalise_username(username: str) -> str:
    return username.strip().lower()


def valid_username(username: object) -> bool:
    return isinstance(username, str) and bool(_USERNAME.match(normalise_username(username)))


def _from_doc(doc: dict[str, Any]) -> User:
    mfa = doc.get("mfa") or {}
    return User(
        user_id=doc["_id"],
        username=doc["username"],
        role=Role(doc["role"]),
        display_name=doc.get("display_name") or doc["username"],
        fhir_user=doc.get("fhir_user"),
        related_persons=tuple(doc.get("related_persons", ())),
        password_hash=doc["password_hash"],
        mfa_sealed=Sealed.from_doc(mfa["sealed_secret"]) if "sealed_secret" in mfa else None,
        mfa_last_step=int(mfa.get("last_step", 0)),
        recovery_codes=tuple(doc.get("recovery_codes", ())),
        created_at=doc.get("created_at"),
    )


def _totp_aad(user_id: str) -> str:
    return f"totp:{user_id}"


class UserStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], provider: KeyProvider) -> None:
        self._users = db[COLLECTION]
        self._provider = provider

    async def ensure_indexes(self) -> None:
        await self._users.create_index("username", unique=True)

    async def add(
        self,
        *,
        username: str,
        role: Role,
        password: str,
        display_name: str | None = None,
        fhir_user: str | None = None,
        related_persons: tuple[str, ...] = (),
    ) -> User:
        """Create a user; raises :class:`UserError` or
        :class:`~smart_auth.accounts.passwords.WeakPassword` (P-03)."""
        name = normalise_username(username)
        if not _USERNAME.match(name):
            raise UserError(
                "username: 3-64 characters a-z 0-9 . _ @ -, starting with a letter/digit"
            )
        if fhir_user is not None and not _REFERENCE.match(fhir_user):
            raise UserError("fhir_user: a reference like Patient/ID or Practitioner/ID")
        if role is Role.PATIENT and (fhir_user is None or not fhir_user.startswith("Patient/")):
            raise UserError("a patient user needs fhir_user = Patient/ID")
        if role is Role.PRACTITIONER and (
            fhir_user is None or not fhir_user.startswith("Practitioner/")
        ):
            raise UserError("a practitioner user needs fhir_user = Practitioner/ID")
        if related_persons and role is not Role.PATIENT:
            raise UserError("only a patient user acts for others through RelatedPerson links")
        for rp in related_persons:
            if not _ID.match(rp):
                raise UserError(f"related person {rp!r}: a RelatedPerson id")
        check_policy(password, name)
        doc = {
            "_id": uuid.uuid4().hex,
            "username": name,
            "role": role.value,
            "display_name": display_name or name,
            "fhir_user": fhir_user,
            "related_persons": list(related_persons),
            "password_hash": await asyncio.to_thread(hash_password, password),
            "created_at": datetime.now(UTC),
        }
        try:
            await self._users.insert_one(doc)
        except DuplicateKeyError:
            raise UserError(f"the username '{name}' is taken") from None
        return _from_doc(doc)

    async def get(self, user_id: str) -> User | None:
        if not isinstance(user_id, str):
            return None
        doc = await self._users.find_one({"_id": user_id})
        return await self._user(doc) if doc else None

    async def by_username(self, username: str) -> User | None:
        if not valid_username(username):
            return None
        doc = await self._users.find_one({"username": normalise_username(username)})
        return await self._user(doc) if doc else None

    async def all(self) -> list[User]:
        return [await self._user(doc) async for doc in self._users.find({}).sort("username", 1)]

    async def _user(self, doc: dict[str, Any]) -> User:
        if "secret" in (doc.get("mfa") or {}):  # in clear, written by an earlier version
            await self._users.update_one(*await self._sealing(doc))
            doc = await self._users.find_one({"_id": doc["_id"]}) or doc
        return _from_doc(doc)

    async def remove(self, username: str) -> bool:
        if not valid_username(username):
            return False
        result = await self._users.delete_one({"username": normalise_username(username)})
        return result.deleted_count == 1

    async def set_password(self, user_id: str, password: str, username: str) -> None:
        check_policy(password, username)
        digest = await asyncio.to_thread(hash_password, password)
        await retried(
            lambda: self._users.update_one({"_id": user_id}, {"$set": {"password_hash": digest}})
        )

    async def enrol_mfa(self, user_id: str, secret: str, recovery_digests: list[str]) -> None:
        sealed = await seal(self._provider, secret.encode(), _totp_aad(user_id))
        mfa = {"sealed_secret": sealed.to_doc(), "last_step": 0, "enrolled_at": datetime.now(UTC)}
        await retried(
            lambda: self._users.update_one(
                {"_id": user_id}, {"$set": {"mfa": mfa, "recovery_codes": recovery_digests}}
            )
        )

    async def disable_mfa(self, user_id: str) -> None:
        """Turn the second factor off: the TOTP secret and the recovery codes go."""
        await self._users.update_one(
            {"_id": str(user_id)}, {"$unset": {"mfa": "", "recovery_codes": ""}}
        )

    async def replace_recovery_codes(self, user_id: str, recovery_digests: list[str]) -> None:
        """New recovery codes (P-04): the old ones stop working."""
        await self._users.update_one(
            {"_id": str(user_id), "mfa": {"$exists": True}},
            {"$set": {"recovery_codes": recovery_digests}},
        )

    async def mfa_secret(self, user: User) -> str | None:
        """The user's TOTP secret; ``None`` when not enrolled, or when it does not unseal (logged:
        the record was altered or moved, and no code can match it)."""
        if user.mfa_sealed is None:
            return None
        try:
            secret = await unseal(self._provider, user.mfa_sealed, _totp_aad(user.user_id))
        except KeyProviderError as exc:
            log.error("the second factor of user %s is unusable: %s", user.user_id, exc)
            return None
        return secret.decode()

    async def claim_totp_step(self, user_id: str, step: int) -> bool:
        """Record a used TOTP time step; False when it (or a later one) was used already, so a
        code cannot be replayed (RFC 6238 5.2)."""
        result = await self._users.update_one(
            {"_id": user_id, "mfa.last_step": {"$lt": step}}, {"$set": {"mfa.last_step": step}}
        )
        return result.modified_count == 1

    async def use_recovery_code(self, user_id: str, digest: str) -> bool:
        """Spend one recovery code (each works once)."""
        result = await self._users.update_one(
            {"_id": user_id, "recovery_codes": digest}, {"$pull": {"recovery_codes": digest}}
        )
        return result.modified_count == 1

    async def seal_plaintext_mfa(self) -> int:
        """Seal the TOTP secrets an earlier version stored in clear; returns how many this call
        sealed. Idempotent and safe with several instances at once: each update applies only
        while the account still holds that secret in clear, so each account changes once."""
        sealed = 0
        batch: list[UpdateOne] = []
        async for doc in self._users.find({"mfa.secret": {"$exists": True}}, {"mfa.secret": 1}):
            batch.append(UpdateOne(*await self._sealing(doc)))
            if len(batch) == _BATCH:
                sealed += (await self._users.bulk_write(batch, ordered=False)).modified_count
                batch = []
        if batch:
            sealed += (await self._users.bulk_write(batch, ordered=False)).modified_count
        return sealed

    async def _sealing(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The filter and update that replace a TOTP secret in clear with its sealed form."""
        secret = doc["mfa"]["secret"]
        sealed = await seal(self._provider, secret.encode(), _totp_aad(doc["_id"]))
        return (
            {"_id": doc["_id"], "mfa.secret": secret},
            {"$set": {"mfa.sealed_secret": sealed.to_doc()}, "$unset": {"mfa.secret": ""}},
        )
