"""Refresh tokens (RFC 6749 6; RFC 9700 4.14; SMART S-19, S-32): opaque 256-bit values stored as
SHA-256 digests, bound to their client, rotated on every use. Each one belongs to a family (the
grant): using a refresh token retires it and issues its successor; presenting a retired one again
is a replay, and the whole family is revoked. A refresh token expires when unused for the idle
time, and never outlives its grant.

A public client's refresh request may leave out ``client_id`` (RFC 6749 6 requires client
authentication only of confidential clients, and 3.2.1 makes ``client_id`` mandatory only in the
code exchange): its refresh token names its client (:func:`public_client_auth`). SMART's
JavaScript client refreshes like this by default.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from authlib.oauth2.rfc6749.authenticate_client import authenticate_none
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import insert_once

COLLECTION = "refresh_tokens"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


class Status(StrEnum):
    ACTIVE = "active"
    ROTATED = "rotated"


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A stored refresh token, as Authlib's refresh grant reads it."""

    token_digest: str
    client_id: str
    grant_id: str
    scope: str
    status: Status
    expires_at: datetime

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def usable(self, now: datetime) -> bool:
        return self.status is Status.ACTIVE and self.expires_at > now


def public_client_auth(
    client_of: Callable[[str], str | None],
) -> Callable[[Callable[[str], Any], Any], Any]:
    """Authlib's ``none`` client authentication (a public client names itself with
    ``client_id``), which also takes a refresh request without ``client_id`` as coming from the
    client its refresh token was issued to. ``client_of`` is a blocking lookup: refresh token →
    its ``client_id``. Authlib then accepts the client only if it is public; the refresh grant
    checks the token itself (rotation, replay) as for any other refresh."""

    def authenticate(query_client: Callable[[str], Any], request: Any) -> Any:
        payload = request.payload
        if payload.client_id or payload.grant_type != "refresh_token":
            return authenticate_none(query_client, request)
        if any(payload.data.get(name) for name in ("client_secret", "client_assertion")):
            return None
        token = payload.data.get("refresh_token")
        client_id = client_of(token) if isinstance(token, str) and token else None
        return query_client(client_id) if client_id else None

    return authenticate


class RefreshStore:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], idle: timedelta, clock: Clock = system_clock
    ) -> None:
        self._clock = clock
        self._tokens = db[COLLECTION]
        self._idle = idle

    async def ensure_indexes(self) -> None:
        # Retired tokens stay until their family ends, so that a replay is always recognised.
        await self._tokens.create_index("purge_at", expireAfterSeconds=0)
        await self._tokens.create_index("grant_id")

    async def add(
        self, token: str, *, client_id: str, grant_id: str, scope: str, family_end: datetime
    ) -> datetime:
        """Store a new refresh token; returns when it expires if unused."""
        now = self._clock()
        expires = min(now + self._idle, family_end)
        await insert_once(
            self._tokens,
            {
                "_id": digest(token),
                "client_id": client_id,
                "grant_id": grant_id,
                "scope": scope,
                "status": Status.ACTIVE.value,
                "created_at": now,
                "expires_at": expires,
                "purge_at": family_end,
            },
        )
        return expires

    async def find(self, token: str) -> RefreshToken | None:
        if not isinstance(token, str) or not token or len(token) > 512:
            return None
        doc = await self._tokens.find_one({"_id": digest(token)})
        if doc is None:
            return None
        return RefreshToken(
            token_digest=doc["_id"],
            client_id=doc["client_id"],
            grant_id=doc["grant_id"],
            scope=doc["scope"],
            status=Status(doc["status"]),
            expires_at=doc["expires_at"],
        )

    async def retire(self, token_digest: str) -> bool:
        """Retire an active token (atomically); False when it was no longer active, i.e. a
        concurrent or repeated use of the same token."""
        result = await self._tokens.update_one(
            {"_id": token_digest, "status": Status.ACTIVE.value},
            {"$set": {"status": Status.ROTATED.value, "rotated_at": self._clock()}},
        )
        return result.modified_count == 1

    async def retire_family(self, grant_id: str) -> None:
        await self._tokens.update_many(
            {"grant_id": grant_id, "status": Status.ACTIVE.value},
            {"$set": {"status": Status.ROTATED.value, "rotated_at": self._clock()}},
        )
