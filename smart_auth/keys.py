"""The signing keys of the authorization server: RS256 keys for access tokens (RFC 9068, SMART S-20)
and id_tokens (S-18), published as a JWKS (RFC 7517) at ``jwks_uri``.

Rotation with overlap (SECURITY.md P-17): :meth:`KeyRing.rotate` makes a new key current and marks
the old one retired with ``publish_until`` = now + the longest token lifetime + clock skew; the
JWKS keeps publishing a retired key until then, and a TTL index removes it afterwards. Rotation
also happens by itself when the current key is older than ``rotate_after``.

Several gateway instances share one key ring: the current key is named by one state document
(``_id: "current"``) that rotation changes with a compare-and-set, so two instances rotating at the
same moment end with one new key. :meth:`KeyRing.public_jwks` is cheap: one ``_id`` lookup of that
state document, then the cached key set unless the state's version changed.

Secrets at rest (P-19): a key is stored as its public JWK in clear (what the JWKS publishes) and its
private JWK sealed by the key provider (:mod:`smart_auth.key_provider`), bound to the key's ``kid``
and the thumbprint (RFC 7638) of that public JWK. The database alone therefore holds no private
parameter, and a public key written into it by someone else is not published: every stored key
must unseal before it is trusted. Keys are unsealed when the key set is (re)loaded, never per
token. Keys stored in clear by earlier versions are sealed by :meth:`KeyRing.seal_plaintext` at
start-up.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from smart_auth.key_provider import (
    KeyProvider,
    KeyProviderError,
    Sealed,
    WrappedField,
    seal,
    unseal,
)

KEYS = "signing_keys"
STATE = "signing_key_state"
ALGORITHM = "RS256"
SEALED = WrappedField(KEYS, "private")
"""Where the private keys are sealed (re-wrapped on KEK rotation, P-16)."""
_CLOCK_SKEW = timedelta(minutes=5)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The current private signing key."""

    kid: str
    key: RSAKey
    created_at: datetime
    alg: str = ALGORITHM

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        """A compact JWS of ``claims`` with header ``{typ, alg, kid}``."""
        header = {"typ": typ, "alg": self.alg, "kid": self.kid}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: int
    current: SigningKey
    published: tuple[tuple[dict[str, Any], datetime | None], ...]  # (public JWK, publish_until)


def _new_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex, "alg": ALGORITHM})


def _public(key: RSAKey) -> dict[str, Any]:
    return dict(key.as_dict(private=False, use="sig", alg=ALGORITHM))


def _aad(kid: str, public: Mapping[str, Any]) -> str:
    """What a sealed private key is bound to: its ``kid`` and its public half."""
    return f"signing-key:{kid}:{RSAKey.import_key(dict(public)).thumbprint()}"


class KeyRing:
    """The signing keys in MongoDB: ``KeyRing(db, provider)``, then ``await ensure_indexes()``."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        provider: KeyProvider,
        *,
        longest_token_lifetime: timedelta = timedelta(hours=1),
        rotate_after: timedelta | None = None,
    ) -> None:
        self._keys = db[KEYS]
        self._state = db[STATE]
        self._provider = provider
        self._overlap = longest_token_lifetime + _CLOCK_SKEW
        self._rotate_after = rotate_after
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        await self._keys.create_index("publish_until", expireAfterSeconds=0)

    async def signing_key(self) -> SigningKey:
        """The current key (made on first use; rotated when older than ``rotate_after``)."""
        snapshot = await self._load()
        current = snapshot.current
        too_old = self._rotate_after is not None and (
            datetime.now(UTC) - current.created_at > self._rotate_after
        )
        if too_old:
            return await self.rotate(expected_kid=current.kid)
        return current

    async def public_jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}``: the public halves of the current key and of every retired key
        whose tokens may still be valid. Never a private parameter."""
        snapshot = await self._load()
        now = datetime.now(UTC)
        return {
            "keys": [dict(jwk) for jwk, until in snapshot.published if until is None or until > now]
        }

    async def rotate(self, *, expected_kid: str | None = None) -> SigningKey:
        """Make a new key current; the old one stays published until its tokens have expired.
        With ``expected_kid``, rotate only if that key is still the current one."""
        snapshot = await self._load()
        old = snapshot.current
        if expected_kid is not None and old.kid != expected_kid:
            return old
        key = await asyncio.to_thread(_new_key)
        now = datetime.now(UTC)
        await self._keys.insert_one(await self._stored(key, now))
        swapped = await self._state.find_one_and_update(
            {"_id": "current", "kid": old.kid},
            {"$set": {"kid": key.kid, "rotated_at": now}, "$inc": {"version": 1}},
        )
        if swapped is None:  # another instance rotated first: keep its key
            await self._keys.delete_one({"_id": key.kid})
        else:
            await self._keys.update_one(
                {"_id": old.kid},
                {"$set": {"retired_at": now, "publish_until": now + self._overlap}},
            )
        self._snapshot = None
        return (await self._load()).current

    def verify(self, token: str, jwks: dict[str, Any]) -> jwt.Token:
        """Check a token's signature against ``jwks`` (from :meth:`public_jwks`); raises
        :class:`joserfc.errors.JoseError` when it does not verify. Claims are not checked here."""
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        return jwt.decode(token, keys, algorithms=[ALGORITHM])

    async def seal_plaintext(self) -> int:
        """Seal the keys an earlier version stored in clear (``jwk`` with its private parameters)
        and remove the clear copy; returns how many this call sealed. Idempotent, and safe when
        several instances do it at once: each document changes once, from clear to sealed, and an
        instance that loses the race keeps the winner's (equal) result. A key provider that does
        not open the keys sealed already raises before it seals anything."""
        already = await self._keys.find_one({"private": {"$exists": True}})
        if already is not None:
            await self._private_jwk(already)
        sealed = 0
        async for doc in self._keys.find({"jwk": {"$exists": True}}):
            if await self._seal_one(doc):
                sealed += 1
        return sealed

    async def _seal_one(self, doc: dict[str, Any]) -> bool:
        fields = await self._sealed_fields(doc["_id"], RSAKey.import_key(doc["jwk"]))
        result = await self._keys.update_one(
            {"_id": doc["_id"], "jwk": {"$exists": True}}, {"$set": fields, "$unset": {"jwk": ""}}
        )
        return result.modified_count == 1

    async def _stored(self, key: RSAKey, created_at: datetime) -> dict[str, Any]:
        assert key.kid is not None  # _new_key names every key
        return {"_id": key.kid, **await self._sealed_fields(key.kid, key), "created_at": created_at}

    async def _sealed_fields(self, kid: str, key: RSAKey) -> dict[str, Any]:
        public = _public(key)
        private = await seal(
            self._provider, orjson.dumps(key.as_dict(private=True)), _aad(kid, public)
        )
        return {"public": public, "private": private.to_doc()}

    async def _private_jwk(self, doc: dict[str, Any]) -> bytes:
        """The sealed private JWK of a stored key; :class:`KeyProviderError` if it does not
        unseal (another KEK, a changed byte, or a public JWK that is not its own)."""
        if "jwk" in doc:
            raise KeyProviderError(
                f"the signing key {doc['_id']} is stored in clear (by an earlier version still "
                "running?); the gateway seals such keys when it starts"
            )
        try:
            aad = _aad(doc["_id"], doc["public"])
        except (KeyError, JoseError, ValueError, TypeError):
            raise KeyProviderError(
                f"the signing key {doc['_id']} is not stored in the sealed form"
            ) from None
        return await unseal(self._provider, Sealed.from_doc(doc.get("private")), aad)

    async def _authentic(self, doc: dict[str, Any]) -> bool:
        """Whether this key ring made a stored key (a key that did not is left unpublished)."""
        try:
            await self._private_jwk(doc)
        except KeyProviderError as exc:
            log.warning("signing key %s is not published: %s", doc["_id"], exc)
            return False
        return True

    async def _load(self) -> _Snapshot:
        state = await self._state.find_one({"_id": "current"})
        if state is None:
            state = await self._create_first()
        cached = self._snapshot
        if cached is not None and cached.version == state["version"]:
            return cached
        async with self._lock:
            docs = [doc async for doc in self._keys.find({})]
            by_kid = {doc["_id"]: doc for doc in docs}
            current_doc = by_kid.get(state["kid"])
            if current_doc is None:  # state written, key not yet visible: read again
                current_doc = await self._keys.find_one({"_id": state["kid"]})
                if current_doc is None:
                    raise RuntimeError("the signing key state names a key that does not exist")
                by_kid[state["kid"]] = current_doc
            current_key = RSAKey.import_key(orjson.loads(await self._private_jwk(current_doc)))
            # Every stored key that unseals is published: the current one, retired ones until
            # their publish_until (the TTL index then removes them), and an old key whose
            # retirement is being written by a rotation right now.
            published = tuple(
                [
                    (dict(doc["public"]), doc.get("publish_until"))
                    for doc in by_kid.values()
                    if doc is current_doc or await self._authentic(doc)
                ]
            )
            snapshot = _Snapshot(
                state["version"],
                SigningKey(state["kid"], current_key, current_doc["created_at"]),
                published,
            )
            self._snapshot = snapshot
            return snapshot

    async def _create_first(self) -> dict[str, Any]:
        key = await asyncio.to_thread(_new_key)
        now = datetime.now(UTC)
        await self._keys.insert_one(await self._stored(key, now))
        state = {"_id": "current", "kid": key.kid, "version": 1, "rotated_at": now}
        try:
            await self._state.insert_one(state)
        except DuplicateKeyError:  # another instance made the first key at the same time
            await self._keys.delete_one({"_id": key.kid})
            existing = await self._state.find_one({"_id": "current"})
            assert existing is not None
            return existing
        return state


def decode_unverified_header(token: str) -> dict[str, Any] | None:
    """The protected header of a compact JWS, or ``None`` when it is not one."""
    from joserfc import jws

    try:
        return dict(jws.extract_compact(token.encode()).headers())
    except (JoseError, ValueError, UnicodeError):
        return None
