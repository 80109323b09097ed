"""The Authlib authorization server configured for SMART App Launch 2.2 (S-09 … S-25,
S-31 … S-33).

Registered: the authorization code grant with PKCE S256 required for every client
(:mod:`smart_auth.pkce`), the refresh token grant with rotation and family replay detection
(:mod:`smart_auth.refresh`; a public client may leave out ``client_id`` there, its refresh token
names it), ``client_credentials`` for backend services with ``private_key_jwt``
(:mod:`smart_auth.backend_services`), introspection (RFC 7662) and revocation (RFC 7009). A request
for more than a client's registration is granted what the registration allows of it
(:func:`smart_auth.clients.narrow_scope`). No implicit grant and no password grant are registered,
so both answer ``unsupported_response_type`` / ``unsupported_grant_type`` (S-33). Tokens are minted
by :mod:`smart_auth.tokens`.

Every Authlib call runs in a worker thread; hooks reach MongoDB through :class:`Bridge` (see
:mod:`smart_auth.requests`). Errors are raised, never rendered here: the web layer renders them in
one place. Single-use checks happen where Authlib asks for the object — a code is marked used when
it is looked up, a refresh token retired when its successor is saved — each with one atomic update,
so two concurrent redemptions cannot both succeed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from joserfc.jwk import Key

from smart_auth.backend_services import BackendServicesGrant, PrivateKeyJwt, unauthorized
from smart_auth.client_keys import KeyResolutionError
from smart_auth.clients import Client
from smart_auth.codes import AuthorizationCode
from smart_auth.grants import Grant
from smart_auth.introspection import (
    BEARER_TOKEN,
    SmartIntrospection,
    TokenInfo,
    bearer_client_auth,
)
from smart_auth.pkce import RequiredS256
from smart_auth.refresh import RefreshToken, new_refresh_token, public_client_auth
from smart_auth.requests import AuthResponse, Bridge, PlainRequest
from smart_auth.revocation import PresentedToken, SmartRevocation
from smart_auth.scopes import ScopeError, ScopeSet
from smart_auth.services import AuthServices
from smart_auth.tokens import (
    InvalidAccessToken,
    issue_access_token,
    issue_id_token,
    verify_access_token,
)

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

Represented = Callable[[str], Awaitable[frozenset[str] | None]]
"""The patients a user (by id) may act for now, read afresh from the FHIR data; ``None`` when that
cannot be known (C-25). Given by the web layer, which reads the FHIR server."""


class TemporarilyUnavailable(OAuth2Error):  # type: ignore[misc]
    """Something the decision needs cannot be read now: try again later (never a grant)."""

    error = "temporarily_unavailable"
    status_code = 503


REFRESH_SCOPES = frozenset({"offline_access", "online_access"})
REFRESH = "refresh_token"


class SmartCodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: SmartAuthorizationServer

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        data = self.request.payload.data
        try:
            if not data.get("state"):
                raise InvalidRequestError("state is required")
            audience = (data.get("aud") or data.get("resource") or "").rstrip("/")
            if audience != self.server.services.config.fhir_base:
                raise InvalidRequestError("aud must be this server's FHIR base URL")
        except OAuth2Error as error:
            error.redirect_uri = redirect_uri
            raise
        return redirect_uri

    def save_authorization_code(self, code: str, request: PlainRequest) -> None:
        grant: Grant = request.user
        data = request.payload.data
        self.server.bridge.run(
            self.server.store_code(
                code,
                grant,
                data["redirect_uri"],
                data["code_challenge"],
                data["code_challenge_method"],
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        return self.server.bridge.run(self.server.redeem_code(code, client.client_id))

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: the code was marked used when it was looked up."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Grant | None:
        return self.server.bridge.run(self.server.services.grants.get(authorization_code.grant_id))


class SmartRefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: SmartAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        found = self.server.bridge.run(self.server.check_refresh(refresh_token))
        if found is None:
            return None
        self._grant: Grant = found[1]
        return found[0]

    def _validate_token_scope(self, token: RefreshToken) -> None:
        scope = self.request.payload.scope
        if not scope:
            return
        try:
            asked = ScopeSet.parse(scope, strict=True)
        except ScopeError as exc:
            raise InvalidScopeError(str(exc)) from None
        if not asked.is_within(ScopeSet.parse(token.get_scope())):
            raise InvalidScopeError("a refresh may narrow the scope, never widen it")

    def authenticate_user(self, refresh_token: RefreshToken) -> Grant:
        return self._grant

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        """Nothing to do: the old token was retired when its successor was saved."""


class SmartAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(
        self, services: AuthServices, bridge: Bridge, represented: Represented | None = None
    ) -> None:
        super().__init__()
        self.services = services
        self.bridge = bridge
        self.represented = represented
        self.register_token_generator("default", self._generate_token)
        config = services.config
        self.register_client_auth_method(
            "private_key_jwt",
            PrivateKeyJwt(config.issuer, config.token_url, self._resolve_key, self._first_use),
        )
        self.register_client_auth_method("none", public_client_auth(self._client_of_refresh))
        self.register_client_auth_method(BEARER_TOKEN, bearer_client_auth(self._token_info))
        self.register_grant(SmartCodeGrant, [RequiredS256()])
        self.register_grant(SmartRefreshGrant)
        self.register_grant(BackendServicesGrant)
        self.register_endpoint(SmartIntrospection(self, self._token_info))
        self.register_endpoint(SmartRevocation(self, self._presented, self._revoke))

    # --- Authlib's framework hooks
    def query_client(self, client_id: Any) -> Client | None:
        if not isinstance(client_id, str):
            return None
        return self.bridge.run(self.services.clients.get(client_id))

    def create_oauth2_request(self, request: Any) -> PlainRequest:
        if not isinstance(request, PlainRequest):
            raise TypeError("the web layer passes PlainRequest values")
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> AuthResponse:
        return AuthResponse(status, body, tuple((str(k), str(v)) for k, v in headers))

    def handle_error_response(self, request: Any, error: OAuth2Error) -> AuthResponse:
        raise error

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def validate_requested_scope(self, scope: str | None) -> None:
        if not scope:
            raise InvalidScopeError("scope is required")
        try:
            ScopeSet.parse(scope, strict=True)
        except ScopeError as exc:
            raise InvalidScopeError(str(exc)) from None

    def save_token(self, token: dict[str, Any], request: PlainRequest) -> None:
        grant: Grant | None = request.user
        self.bridge.run(
            self._save_token(token, grant, request.refresh_token, request.client.client_id)
        )

    # --- the calls the web layer makes (in a worker thread)
    def validate_authorization(self, request: PlainRequest) -> Any:
        """The validated authorization grant (``.request.client``, ``.redirect_uri``,
        ``.request.scope``); raises an OAuth2Error (with ``redirect_uri`` when it may redirect)."""
        return self.get_consent_grant(request)

    def issue_code(self, request: PlainRequest, grant: Grant | None) -> AuthResponse:
        """The redirect with a code for an approved ``grant``, or with ``access_denied``."""
        validated = self.get_consent_grant(request)
        response: AuthResponse = self.create_authorization_response(
            request, grant_user=grant, grant=validated
        )
        return response

    # --- async work the hooks hand to the event loop
    async def store_code(
        self, code: str, grant: Grant, redirect_uri: str, challenge: str, method: str
    ) -> None:
        await self.services.grants.add(grant)
        await self.services.codes.add(
            code,
            client_id=grant.client_id,
            redirect_uri=redirect_uri,
            scope=grant.scope,
            grant_id=grant.grant_id,
            code_challenge=challenge,
            code_challenge_method=method,
        )

    async def redeem_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        redemption = await self.services.codes.redeem(code, client_id)
        if redemption.replayed_grant is not None:  # S-31
            await self.services.revoker.revoke_grant(
                redemption.replayed_grant, "authorization code reused"
            )
        return redemption.code

    async def check_refresh(self, token: str) -> tuple[RefreshToken, Grant] | None:
        found = await self.services.refresh.find(token)
        if found is None:
            return None
        if not found.usable(self.services.clock()):
            if found.status.value == "rotated":  # S-19: a retired token again is a replay
                await self.services.revoker.revoke_grant(found.grant_id, "refresh token replayed")
            return None
        grant = await self.services.grants.get(found.grant_id)
        if grant is None:
            return None
        online_only = "offline_access" not in grant.scope.split() and grant.session_id is not None
        if online_only and not await self.services.sessions.alive(str(grant.session_id)):
            return None  # online_access: the family lives as long as the session
        if not await self._still_represented(grant):
            await self.services.revoker.revoke_grant(grant.grant_id, "representation ended")
            return None
        return found, grant

    async def _still_represented(self, grant: Grant) -> bool:
        """C-25: a grant that acts for others (a parent for a child) is re-checked against the
        FHIR data at every refresh; it lives on only while every one of its patients is still
        the user's to act for."""
        if not grant.acts_for or self.represented is None or grant.user_id is None:
            return True  # not a patient user's grant: nobody is represented
        own = (grant.fhir_user or "").removeprefix("Patient/")
        reach = {p for p in (grant.patient, *grant.acts_for) if p} - {own}
        if not reach:
            return True
        now = await self.represented(grant.user_id)
        if now is None:
            raise TemporarilyUnavailable("whom this user may act for cannot be checked now")
        return reach <= now

    async def _save_token(
        self,
        token: dict[str, Any],
        grant: Grant | None,
        old: RefreshToken | None,
        client_id: str,
    ) -> None:
        if old is not None and not await self.services.refresh.retire(old.token_digest):
            await self.services.revoker.revoke_grant(old.grant_id, "refresh token replayed")
            raise InvalidGrantError("the refresh token was already used")
        if grant is not None and "refresh_token" in token:
            await self.services.refresh.add(
                token["refresh_token"],
                client_id=client_id,
                grant_id=grant.grant_id,
                scope=grant.scope,
                family_end=grant.expires_at,
            )

    # --- tokens
    def _generate_token(
        self,
        grant_type: str,
        client: Client,
        user: Grant | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        key = self.bridge.run(self.services.keys.signing_key())
        policy = self.services.config.token_policy
        scope = " ".join((scope or "").split())
        issued = issue_access_token(
            key,
            policy,
            client_id=client.client_id,
            scope=scope,
            grant=user,
            purposes=user.purposes if user is not None else client.purposes,
        )
        token: dict[str, Any] = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": scope,
        }
        if user is None:
            return token
        if user.patient:
            token["patient"] = user.patient
        if user.encounter:
            token["encounter"] = user.encounter
            token["fhirContext"] = [{"reference": f"Encounter/{user.encounter}"}]
        if user.need_patient_banner is not None:
            token["need_patient_banner"] = user.need_patient_banner
        if user.smart_style_url:
            token["smart_style_url"] = user.smart_style_url
        if "openid" in scope.split() and user.user_id:
            token["id_token"] = issue_id_token(key, policy, client_id=client.client_id, grant=user)
        if include_refresh_token and REFRESH_SCOPES & set(user.scope.split()):
            token["refresh_token"] = new_refresh_token()
        return token

    # --- introspection and revocation lookups
    def _token_info(self, token: str, hint: str | None) -> TokenInfo | None:
        return self.bridge.run(self.token_info(token))

    async def token_info(self, token: str) -> TokenInfo | None:
        if token.count(".") == 2:
            jwks = await self.services.keys.public_jwks()
            try:
                claims = verify_access_token(token, jwks, self.services.config.token_policy)
            except InvalidAccessToken:
                return None
            revoked = await self.services.revocations.is_revoked(
                str(claims["jti"]), claims.get("grant_id")
            )
            return TokenInfo(str(claims.get("client_id")), not revoked, claims)
        found = await self.services.refresh.find(token)
        if found is None:
            return None
        grant = await self.services.grants.get(found.grant_id)
        if grant is None or not found.usable(self.services.clock()):
            return TokenInfo(found.client_id, False)
        claims = {
            "scope": found.scope,
            "exp": int(found.expires_at.timestamp()),
            "iat": int(grant.created_at.timestamp()),
            "sub": grant.user_id,
            "iss": self.services.config.issuer,
            "patient": grant.patient,
            "encounter": grant.encounter,
            "fhirUser": grant.fhir_user,
        }
        return TokenInfo(found.client_id, True, claims, token_type=REFRESH)

    def _presented(self, token: str, hint: str | None) -> PresentedToken | None:
        info = self.bridge.run(self.token_info(token))
        if info is None:
            return None
        if info.token_type != REFRESH:
            claims = info.claims
            return PresentedToken(
                info.client_id,
                str(claims["grant_id"]),
                str(claims["jti"]),
                datetime.fromtimestamp(int(claims["exp"]), UTC),
            )
        found = self.bridge.run(self.services.refresh.find(token))
        return PresentedToken(found.client_id, found.grant_id) if found else None

    def _revoke(self, token: PresentedToken) -> None:
        self.bridge.run(self.services.revoker.revoke_token(token))

    # --- client authentication helpers
    def _client_of_refresh(self, token: str) -> str | None:
        found = self.bridge.run(self.services.refresh.find(token))
        return found.client_id if found is not None else None

    def _resolve_key(self, client: Client, header: dict[str, Any]) -> Key:
        try:
            return self.bridge.run(self.services.client_keys.key_for(client, header))
        except KeyResolutionError as exc:
            raise unauthorized(str(exc)) from None

    def _first_use(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        return self.bridge.run(self.services.jtis.first_use(client_id, jti, expires_at))
