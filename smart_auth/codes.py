"""Authorization codes (RFC 6749 4.1.2, 10.5; SMART S-12, S-31): 256 random bits, stored as a
SHA-256 digest, bound to the client, the redirect URI and the PKCE challenge, alive 60 s at most,
redeemable once. A second redemption is refused and revokes every token issued from the code
(RFC 6749 4.1.2: "SHOULD revoke"; here it does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import insert_once

COLLECTION = "authorization_codes"


def digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """A stored code, as Authlib's ``AuthorizationCodeMixin`` and ``CodeChallenge`` read it."""

    client_id: str
    redirect_uri: str
    scope: str
    grant_id: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: datetime

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_auth_time(self) -> int | None:
        return None

    def get_nonce(self) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Redemption:
    """The outcome of redeeming a code: the code, or the grant of a code redeemed before."""

    code: AuthorizationCode | None
    replayed_grant: str | None


class CodeStore:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], lifetime: timedelta, clock: Clock = system_clock
    ) -> None:
        self._clock = clock
        self._codes = db[COLLECTION]
        self._lifetime = lifetime

    async def ensure_indexes(self) -> None:
        # Used codes are kept a little past their expiry so that a replay is recognised.
        await self._codes.create_index("purge_at", expireAfterSeconds=0)

    async def add(
        self,
        code: str,
        *,
        client_id: str,
        redirect_uri: str,
        scope: str,
        grant_id: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
    ) -> None:
        now = self._clock()
        await insert_once(
            self._codes,
            {
                "_id": digest(code),
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": scope,
                "grant_id": grant_id,
                "code_challenge": code_challenge,
                "code_challenge_method": code_challenge_method,
                "expires_at": now + self._lifetime,
                "purge_at": now + self._lifetime + timedelta(minutes=10),
                "used": False,
            },
        )

    async def redeem(self, code: str, client_id: str) -> Redemption:
        """Mark the code used (atomically) and return it; a used code comes back as
        ``replayed_grant`` so the caller can revoke its family; unknown, expired or another
        client's code: nothing."""
        if not isinstance(code, str) or not isinstance(client_id, str) or len(code) > 512:
            return Redemption(None, None)
        key = digest(code)
        doc = await self._codes.find_one_and_update(
            {"_id": key, "used": False},
            {"$set": {"used": True, "used_at": self._clock()}},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is None:
            used = await self._codes.find_one({"_id": key, "used": True})
            return Redemption(None, used["grant_id"] if used else None)
        if doc["client_id"] != client_id or doc["expires_at"] <= self._clock():
            return Redemption(None, None)
        return Redemption(
            AuthorizationCode(
                client_id=doc["client_id"],
                redirect_uri=doc["redirect_uri"],
                scope=doc["scope"],
                grant_id=doc["grant_id"],
                code_challenge=doc.get("code_challenge"),
                code_challenge_method=doc.get("code_challenge_method"),
                expires_at=doc["expires_at"],
            ),
            None,
        )
