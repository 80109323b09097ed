"""Everything the authorization server keeps in MongoDB, built once per application from a plain
:class:`AuthConfig` (the web layer fills it from its settings) and the key provider that seals the
secrets among it (P-19).

What the collections hold, and how their secrets are protected:

- sealed by the key provider: the signing keys' private halves (``signing_keys``), TOTP secrets
  (``users.mfa``) and TOTP secrets being enrolled (``sessions.pending_totp``);
- kept only as digests, which cannot be turned back: passwords (Argon2id), client secrets,
  session cookies, authorization codes and refresh tokens (SHA-256 of 256-bit random values),
  recovery codes (SHA-256);
- no secret: clients' public keys, grants, consents, flows and launch contexts (each bound to a
  browser cookie or a signed-in user that the database does not hold), sessions' CSRF tokens
  (worthless without the session cookie), revocations, throttling counters, migrations.
  (Security events are AuditEvents, in the gateway's audit trail.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from smart_auth.accounts.sessions import SEALED as SEALED_PENDING_TOTP
from smart_auth.accounts.sessions import SessionStore
from smart_auth.accounts.throttle import LoginThrottle, Throttle
from smart_auth.accounts.users import SEALED as SEALED_TOTP
from smart_auth.accounts.users import UserStore
from smart_auth.backend_services import JtiStore
from smart_auth.client_keys import ClientKeyResolver
from smart_auth.clients import ClientStore
from smart_auth.clock import Clock, system_clock
from smart_auth.codes import CodeStore
from smart_auth.flows import FlowStore
from smart_auth.grants import GrantStore
from smart_auth.jwks import JwksFetcher
from smart_auth.key_provider import KeyProvider, WrappedField
from smart_auth.keys import SEALED as SEALED_SIGNING_KEYS
from smart_auth.keys import KeyRing
from smart_auth.launch import LaunchStore
from smart_auth.refresh import RefreshStore
from smart_auth.revocation import Revoker
from smart_auth.revocations import RevocationList
from smart_auth.tokens import TokenPolicy

SEALED_FIELDS: tuple[WrappedField, ...] = (SEALED_SIGNING_KEYS, SEALED_TOTP, SEALED_PENDING_TOTP)
"""Every place where the authorization server keeps secrets sealed by the key provider."""

MIGRATIONS = "migrations"  # one document per start-up migration that ran to its end
_SEALED = "secrets-sealed"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuer: str  # the gateway's public base URL
    fhir_base: str  # the ``aud`` of access tokens
    access_token_lifetime: int = 3600
    backend_token_lifetime: int = 300
    code_lifetime: int = 60
    refresh_idle: int = 30 * 86400
    refresh_max: int = 365 * 86400
    session_idle: int = 900
    session_absolute: int = 43200
    mfa_required_for_patients: bool = False
    key_rotation_days: int = 30
    login_max_failures: int = 5
    login_lock_seconds: int = 60
    launch_lifetime: int = 300
    client_jwks_max_cache: int = 3600
    cookies_secure: bool = False

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/auth/token"

    @property
    def token_policy(self) -> TokenPolicy:
        return TokenPolicy(
            self.issuer, self.fhir_base, self.access_token_lifetime, self.backend_token_lifetime
        )


@dataclass(frozen=True)
class AuthServices:
    config: AuthConfig
    clients: ClientStore
    users: UserStore
    sessions: SessionStore
    throttle: LoginThrottle
    flows: FlowStore
    launches: LaunchStore
    codes: CodeStore
    grants: GrantStore
    refresh: RefreshStore
    keys: KeyRing
    revocations: RevocationList
    jtis: JtiStore
    client_keys: ClientKeyResolver
    revoker: Revoker
    db: AsyncDatabase[dict[str, Any]]
    clock: Clock = system_clock

    async def ensure_indexes(self) -> None:
        for store in (
            self.clients,
            self.users,
            self.sessions,
            self.throttle,
            self.flows,
            self.launches,
            self.codes,
            self.grants,
            self.refresh,
            self.keys,
            self.revocations,
            self.jtis,
        ):
            await store.ensure_indexes()

    async def seal_plaintext_secrets(self) -> dict[str, int]:
        """Seal the second factors an earlier version stored in clear (the key ring seals its own:
        :meth:`KeyRing.seal_plaintext`); run at start-up, once the key ring has shown that the key
        provider opens what is sealed. Idempotent, safe with several instances at once; returns
        counts of what changed. Once it has run to the end it is not run again (it reads every
        account), and an account written in clear after that is sealed when it is read."""
        migrations = self.db[MIGRATIONS]
        if await migrations.find_one({"_id": _SEALED}) is not None:
            return {}
        changed = {
            "TOTP secrets sealed": await self.users.seal_plaintext_mfa(),
            "TOTP enrolments in progress dropped": await self.sessions.drop_plaintext_pending(),
        }
        with contextlib.suppress(DuplicateKeyError):  # another instance finished at once
            await migrations.update_one(
                {"_id": _SEALED}, {"$setOnInsert": {"done_at": datetime.now(UTC)}}, upsert=True
            )
        return changed


def build_services(
    db: AsyncDatabase[dict[str, Any]],
    config: AuthConfig,
    key_provider: KeyProvider,
    fetch_jwks: JwksFetcher | None = None,
    clock: Clock = system_clock,
) -> AuthServices:
    """Every store, on one database and one clock (injected by tests that move time forward)."""
    revocations = RevocationList(db)
    grants = GrantStore(db, revocations, clock)
    refresh = RefreshStore(db, timedelta(seconds=config.refresh_idle), clock)
    sessions = SessionStore(
        db,
        key_provider,
        idle=timedelta(seconds=config.session_idle),
        absolute=timedelta(seconds=config.session_absolute),
        clock=clock,
    )
    return AuthServices(
        config=config,
        clients=ClientStore(db),
        users=UserStore(db, key_provider),
        sessions=sessions,
        throttle=LoginThrottle(
            db, Throttle(config.login_max_failures, config.login_lock_seconds), clock
        ),
        flows=FlowStore(db, clock),
        launches=LaunchStore(db, timedelta(seconds=config.launch_lifetime), clock),
        codes=CodeStore(db, timedelta(seconds=config.code_lifetime), clock),
        grants=grants,
        refresh=refresh,
        keys=KeyRing(
            db,
            key_provider,
            longest_token_lifetime=timedelta(seconds=config.access_token_lifetime),
            rotate_after=timedelta(days=config.key_rotation_days),
        ),
        revocations=revocations,
        jtis=JtiStore(db),
        client_keys=ClientKeyResolver(fetch_jwks, config.client_jwks_max_cache),
        revoker=Revoker(grants, refresh, revocations, sessions),
        db=db,
        clock=clock,
    )
