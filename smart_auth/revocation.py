"""Token revocation (RFC 7009; S-25) and the "revoke everything" helpers (P-06, C-13).

Revoking either token of a grant — the access token or the refresh token — ends the whole grant:
its refresh tokens stop working and every access token carrying its ``grant_id`` is refused by the
FHIR side on the very next request (the shared revocation list). An unknown token still gets
200 (RFC 7009 2.2).

:class:`Revoker` is what other parts of the gateway call:

- ``await revoker.revoke_app_for_patient(client_id, patient_id)`` — C-13, the "disconnect" button.
- ``await revoker.sign_out_everywhere(user_id)`` — P-06/P-18: every session and every grant.
- ``await revoker.revoke_grant(grant_id)`` — one grant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint

from smart_auth.accounts.sessions import SessionStore
from smart_auth.grants import GrantStore
from smart_auth.refresh import RefreshStore
from smart_auth.revocations import RevocationList


@dataclass(frozen=True, slots=True)
class Revoked:
    """Grants just revoked, as told to the revoker's ``on_revoke`` (the gateway audits it)."""

    grant_ids: tuple[str, ...]
    reason: str
    client_id: str | None = None
    patient: str | None = None
    user_id: str | None = None
    jti: str | None = None


OnRevoke = Callable[[Revoked], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PresentedToken:
    """A token presented for revocation, once recognised."""

    client_id: str
    grant_id: str
    jti: str | None = None
    expires_at: datetime | None = None

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)


class Revoker:
    """Every revocation goes through here; ``on_revoke`` is told of each after it is done."""

    def __init__(
        self,
        grants: GrantStore,
        refresh: RefreshStore,
        revocations: RevocationList,
        sessions: SessionStore,
    ) -> None:
        self._grants = grants
        self._refresh = refresh
        self._revocations = revocations
        self._sessions = sessions
        self.on_revoke: OnRevoke | None = None

    async def _told(self, revoked: Revoked) -> None:
        if self.on_revoke is not None and (revoked.grant_ids or revoked.jti):
            await self.on_revoke(revoked)

    async def _end(self, grant_ids: list[str]) -> None:
        for grant_id in grant_ids:
            await self._refresh.retire_family(grant_id)

    async def revoke_grant(self, grant_id: str, reason: str = "revoked") -> None:
        await self._grants.revoke(grant_id, reason)
        await self._end([grant_id])
        await self._told(Revoked((grant_id,), reason))

    async def revoke_token(self, token: PresentedToken) -> None:
        if token.jti is not None and token.expires_at is not None:
            await self._revocations.revoke_token(token.jti, token.expires_at)
        await self._grants.revoke(token.grant_id, "revoked")
        await self._end([token.grant_id])
        await self._told(
            Revoked((token.grant_id,), "revocation request", token.client_id, jti=token.jti)
        )

    async def revoke_app_for_patient(self, client_id: str, patient_id: str) -> list[str]:
        """C-13: every grant ``client_id`` holds for ``patient_id`` (ids returned)."""
        ids = await self._grants.revoke_app_for_patient(client_id, patient_id)
        await self._end(ids)
        await self._told(Revoked(tuple(ids), "consent withdrawn", client_id, patient_id))
        return ids

    async def revoke_patient(self, patient_id: str) -> list[str]:
        """C-22: every grant of every app for this patient (ids returned)."""
        ids = await self._grants.revoke_patient(patient_id)
        await self._end(ids)
        await self._told(Revoked(tuple(ids), "patient erased", patient=patient_id))
        return ids

    async def revoke_consent(self, consent_id: str) -> list[str]:
        """The grants written together with one Consent."""
        ids = await self._grants.revoke_consent(consent_id)
        await self._end(ids)
        await self._told(Revoked(tuple(ids), f"Consent/{consent_id} withdrawn"))
        return ids

    async def sign_out_everywhere(self, user_id: str) -> tuple[int, int]:
        """P-06: end every session and every grant of the user; (sessions, grants) ended."""
        sessions = await self._sessions.end_all(user_id)
        ids = await self._grants.revoke_user(user_id)
        await self._end(ids)
        await self._told(Revoked(tuple(ids), "signed out everywhere", user_id=user_id))
        return sessions, len(ids)


class SmartRevocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

    def __init__(
        self,
        server: Any,
        lookup: Callable[[str, str | None], PresentedToken | None],
        revoke: Callable[[PresentedToken], None],
    ) -> None:
        super().__init__(server)
        self._lookup = lookup
        self._revoke = revoke

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        if not isinstance(token_string, str) or not token_string:
            return None
        return self._lookup(token_string, token_type_hint)

    def revoke_token(self, token: PresentedToken, request: Any) -> None:
        self._revoke(token)
