"""Signed checkpoints of audit chains (AUDIT.md A-07, A-13).

A checkpoint says "chain C had reached record ``seq`` whose hash is ``head``, at time ``at``",
signed as a compact JWS (RS256, header ``typ: audit-checkpoint+jwt`` so that it can never pass for
an access token) with the gateway's current token signing key (``KeyRing.signing_key()``).
Anyone who can write to MongoDB can recompute a chain's hashes after editing it; they cannot sign
its head. A checkpoint also anchors the first record kept after retention removed older ones.

Keys rotate (P-17) and retired keys leave the JWKS once their tokens have expired, but a
checkpoint must verify for as long as it is kept. So the public JWK of every key that signed a
checkpoint is stored once, by ``kid``, in ``audit_keys`` (only ever inserted); verification uses
those keys, or only the keys an operator pins (``fhir-gateway audit verify --jwks FILE``, e.g. a
copy of the JWKS taken when each key was published), which also protects against someone who can
write to the database adding a key of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.write_concern import WriteConcern

from gateway.audit.chain import Head
from gateway.audit.store import CHECKPOINTS, KEYS
from smart_auth.keys import ALGORITHM, SigningKey

TYP = "audit-checkpoint+jwt"


class Signer(Protocol):
    """What signs checkpoints: the authorization server's key ring."""

    async def signing_key(self) -> SigningKey: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain: str
    seq: int
    head: str
    at: int
    """Seconds since the epoch when it was signed (every record up to ``seq`` is older)."""
    kid: str
    jws: str

    def document(self) -> dict[str, Any]:
        return {
            "_id": f"{self.chain}:{self.seq}",
            "chain": self.chain,
            "seq": self.seq,
            "head": self.head,
            "at": self.at,
            "kid": self.kid,
            "jws": self.jws,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Checkpoint:
        return cls(
            str(doc["chain"]),
            int(doc["seq"]),
            str(doc["head"]),
            int(doc["at"]),
            str(doc["kid"]),
            str(doc["jws"]),
        )


def public_jwk(key: SigningKey) -> dict[str, Any]:
    return dict(key.key.as_dict(private=False, use="sig", alg=ALGORITHM))


def sign(key: SigningKey, chain: str, head: Head, at: int) -> Checkpoint:
    claims = {"chain": chain, "seq": head.seq, "head": head.hash, "iat": at}
    return Checkpoint(chain, head.seq, head.hash, at, key.kid, key.sign(claims, typ=TYP))


def problem(checkpoint: Checkpoint, keys: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why this checkpoint does not verify against ``keys`` (kid -> public JWK), or ``None``."""
    jwk = keys.get(checkpoint.kid)
    if jwk is None:
        return f"its key {checkpoint.kid} is not among the trusted keys"
    try:
        token = jwt.decode(checkpoint.jws, RSAKey.import_key(dict(jwk)), algorithms=[ALGORITHM])
    except (JoseError, ValueError):
        return "its signature does not verify"
    if token.header.get("typ") != TYP or token.header.get("kid") != checkpoint.kid:
        return "it is not an audit checkpoint of that key"
    claims = token.claims
    signed = (claims.get("chain"), claims.get("seq"), claims.get("head"), claims.get("iat"))
    if signed != (checkpoint.chain, checkpoint.seq, checkpoint.head, checkpoint.at):
        return "its stored fields differ from what was signed"
    return None


class CheckpointStore:
    """Checkpoints and the public keys that signed them, in MongoDB (insert only)."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], write_concern: WriteConcern | None = None
    ) -> None:
        self._checkpoints = db.get_collection(CHECKPOINTS, write_concern=write_concern)
        self._keys = db.get_collection(KEYS, write_concern=write_concern)

    async def save(self, checkpoint: Checkpoint, jwk: Mapping[str, Any]) -> None:
        """Store the signing key (once per kid) and then the checkpoint."""
        await self._keys.update_one(
            {"_id": checkpoint.kid},
            {"$setOnInsert": {"jwk": dict(jwk), "first_used": checkpoint.at}},
            upsert=True,
        )
        await self._checkpoints.insert_one(checkpoint.document())

    async def latest(self, chain: str, at_most: int | None = None) -> Checkpoint | None:
        """The chain's newest checkpoint (with ``seq`` at most ``at_most``)."""
        query: dict[str, Any] = {"chain": chain}
        if at_most is not None:
            query["seq"] = {"$lte": at_most}
        doc = await self._checkpoints.find_one(query, sort=[("seq", DESCENDING)])
        return None if doc is None else Checkpoint.from_document(doc)

    async def of_chain(self, chain: str, from_seq: int = 0) -> list[Checkpoint]:
        """The chain's checkpoints from ``from_seq`` on, oldest first."""
        cursor = self._checkpoints.find({"chain": chain, "seq": {"$gte": from_seq}}).sort("seq", 1)
        return [Checkpoint.from_document(doc) async for doc in cursor]

    async def keys(self) -> dict[str, dict[str, Any]]:
        """Every key that signed a checkpoint: kid -> public JWK."""
        return {str(doc["_id"]): dict(doc["jwk"]) async for doc in self._keys.find({})}
