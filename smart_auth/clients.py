"""The client registry (SMART App Launch 2.2, "Registering a SMART App with an EHR"; client types of
section "Client Authentication": public, confidential-symmetric, confidential-asymmetric).

A :class:`Client` is a frozen value that also answers Authlib's :class:`ClientMixin` questions, with
the SMART defaults where Authlib's differ: there is no default redirect URI and a redirect URI must
match a registered one string for string, except the port of a loopback redirect (S-11, RFC 8252
7.3); each client type has exactly one token endpoint authentication method.

Client secrets are random strings of at least 32 characters, so a SHA-256 digest is enough to store
them (a slow password hash protects low-entropy secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import orjson
from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from yarl import URL

from smart_auth.introspection import BEARER_TOKEN
from smart_auth.scopes import Context, ResourceScope, ScopeError, ScopeSet, parse_scope

COLLECTION = "clients"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{3,128}$")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "[::1]"})
MIN_SECRET_LENGTH = 32
_MAX_NAME = 200


class ClientType(StrEnum):
    PUBLIC = "public"
    SYMMETRIC = "confidential-symmetric"
    ASYMMETRIC = "confidential-asymmetric"


AUTH_METHOD = {
    ClientType.PUBLIC: "none",
    ClientType.SYMMETRIC: "client_secret_basic",
    ClientType.ASYMMETRIC: "private_key_jwt",
}


class ClientError(ValueError):
    """A client registration that cannot be accepted; the message says why."""


@cache
def purpose_codes() -> dict[str, dict[str, str]]:
    """The v3-ActReason purpose-of-use codes we know, with display and plain wording."""
    data = orjson.loads(
        resources.files("smart_auth").joinpath("data", "purposes-of-use.json").read_bytes()
    )
    return dict(data["codes"])


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _is_loopback_http(url: URL) -> bool:
    return url.scheme == "http" and (url.host or "") in _LOOPBACK


@dataclass(frozen=True)
class Client(ClientMixin):  # type: ignore[misc]
    """One registered app."""

    client_id: str
    name: str
    client_type: ClientType
    redirect_uris: tuple[str, ...] = ()
    scope: str = ""
    purposes: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    trusted: bool = False
    manages_consent: bool = False
    """The hospital's own patient portal (C-23): it may change Consents for the patients its token
    reaches, as the patient could on the gateway's pages, but never one that applies to itself.
    Off by default: an app may only read the Consents that concern it and withdraw its own."""
    introspect_all_tokens: bool = False
    """A resource server: may introspect tokens issued to other clients (RFC 7662 2.2)."""
    url: str | None = None
    """The app's web address, shown on the consent screen."""
    publisher: str | None = None
    """Who makes the app (a company, a hospital), shown on the consent screen."""
    privacy_policy_url: str | None = None
    """The app's privacy policy, linked from the consent screen and "Connected apps"."""
    secret_digest: str | None = field(default=None, repr=False)
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    created_at: datetime | None = None

    @property
    def scopes(self) -> ScopeSet:
        return ScopeSet.parse(self.scope)

    @property
    def auth_method(self) -> str:
        return AUTH_METHOD[self.client_type]

    @property
    def grant_types(self) -> frozenset[str]:
        grants: set[str] = set()
        if self.redirect_uris:
            grants |= {"authorization_code", "refresh_token"}
        if self.client_type is ClientType.ASYMMETRIC and Context.SYSTEM in self.scopes.contexts():
            grants.add("client_credentials")
        return frozenset(grants)

    # --- Authlib's ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # S-11: never a default redirect

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """What this client may be granted of the requested scopes (:func:`narrow_scope`);
        ``invalid_scope`` when nothing is left."""
        if not scope:
            return None
        allowed = narrow_scope(scope, self.scopes)
        if allowed is None:
            raise InvalidScopeError(
                "none of the requested scopes is one this app is registered for"
            )
        return allowed

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if redirect_uri in self.redirect_uris:
            return True
        try:
            asked = URL(redirect_uri)
        except ValueError:
            return False
        if not _is_loopback_http(asked):
            return False
        for registered in map(URL, self.redirect_uris):
            if _is_loopback_http(registered) and registered.with_port(None) == asked.with_port(
                None
            ):
                return True  # RFC 8252 7.3: a native app's loopback port may vary
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_digest is None or not isinstance(client_secret, str):
            return False
        return hmac.compare_digest(self.secret_digest, secret_digest(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "introspection" and method == BEARER_TOKEN:
            return True
        if self.client_type is ClientType.SYMMETRIC:
            return method in ("client_secret_basic", "client_secret_post")
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and bool(self.redirect_uris)

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


def narrow_scope(requested: str, allowed: ScopeSet) -> str | None:
    """What of the requested scopes ``allowed`` covers, in request order (RFC 6749 3.3 and SMART
    let the server grant less than asked): a scope within a registered one as asked, a wider one
    narrowed to what the registration allows (``patient/*.cruds`` under a registered
    ``patient/Observation.rs`` becomes ``patient/Observation.rs``), other scopes only when
    registered. :class:`ScopeError` for a malformed scope; ``None`` when nothing is left."""
    ScopeSet.parse(requested, strict=True)  # raises on a malformed scope
    kept: list[str] = []
    for scope in requested.split():
        parsed = parse_scope(scope)
        if parsed is None:
            if scope in allowed.other:
                kept.append(scope)
        elif any(parsed.is_within(theirs) for theirs in allowed.resource):
            kept.append(scope)
        else:
            kept += [str(part) for part in _narrowed(parsed, allowed.resource)]
    return " ".join(dict.fromkeys(kept)) or None


def _narrowed(scope: ResourceScope, allowed: tuple[ResourceScope, ...]) -> list[ResourceScope]:
    """The intersections of ``scope`` with the allowed scopes, none covered by another."""
    kept: list[ResourceScope] = []
    for part in (scope.intersection(theirs) for theirs in allowed):
        if part is None or any(part.is_within(other) for other in kept):
            continue
        kept = [other for other in kept if not other.is_within(part)] + [part]
    return kept


def _web_page(name: str, value: str | None) -> None:
    """A page patients are sent to: an absolute https address (http on a loopback address)."""
    if value is None:
        return
    try:
        url = URL(value)
    except ValueError:
        raise ClientError(f"{name}: a web address") from None
    loopback = _is_loopback_http(url) or url.host == "localhost"
    if not url.is_absolute() or not (url.scheme == "https" or (url.scheme == "http" and loopback)):
        raise ClientError(f"{name} {value!r}: an https address")


def _check(client: Client) -> None:
    if not _CLIENT_ID.match(client.client_id):
        raise ClientError("client_id: 3-128 characters of A-Z a-z 0-9 . _ ~ -")
    if not client.name.strip() or len(client.name) > _MAX_NAME:
        raise ClientError(f"name: required, at most {_MAX_NAME} characters")
    if client.publisher is not None and not 0 < len(client.publisher.strip()) <= _MAX_NAME:
        raise ClientError(f"publisher: 1-{_MAX_NAME} characters")
    _web_page("url", client.url)
    _web_page("privacy policy", client.privacy_policy_url)
    for uri in client.redirect_uris:
        url = URL(uri)
        if not url.is_absolute() or url.fragment:
            raise ClientError(f"redirect URI {uri!r}: absolute, without a fragment")
        if url.scheme == "http" and not _is_loopback_http(url) and url.host != "localhost":
            raise ClientError(f"redirect URI {uri!r}: https, or http on a loopback address")
    try:
        scopes = ScopeSet.parse(client.scope, strict=True)
    except ScopeError as exc:
        raise ClientError(f"scopes: {exc}") from None
    if not scopes.resource:
        raise ClientError("scopes: at least one resource scope")
    unknown = [p for p in client.purposes if p not in purpose_codes()]
    if unknown or not client.purposes:
        raise ClientError(f"purposes: v3-ActReason purpose-of-use codes, not {unknown or 'none'}")
    for origin in client.origins:
        url = URL(origin)
        if not url.is_absolute() or url.path not in ("", "/") or url.query_string:
            raise ClientError(f"origin {origin!r}: scheme://host[:port] only")
    if client.client_type is ClientType.SYMMETRIC and not client.secret_digest:
        raise ClientError("a confidential-symmetric client needs a secret")
    if client.client_type is ClientType.ASYMMETRIC and (client.jwks is None) == (
        client.jwks_uri is None
    ):
        raise ClientError("a confidential-asymmetric client needs a JWKS or a JWKS URL (one)")
    if client.jwks is not None and not isinstance(client.jwks.get("keys"), list):
        raise ClientError('the JWKS must be {"keys": [...]}')
    if client.jwks_uri is not None and URL(client.jwks_uri).scheme != "https":
        host = URL(client.jwks_uri).host or ""
        if host not in _LOOPBACK and host != "localhost":
            raise ClientError("the JWKS URL must be https")
    if Context.SYSTEM in scopes.contexts() and client.client_type is not ClientType.ASYMMETRIC:
        raise ClientError("system/ scopes are for confidential-asymmetric clients only")
    if client.introspect_all_tokens and client.client_type is ClientType.PUBLIC:
        raise ClientError("only a confidential client may introspect other clients' tokens")


def _origin(url: str) -> str:
    parsed = URL(url)
    return str(parsed.origin())


def _to_doc(client: Client) -> dict[str, Any]:
    return {
        "_id": client.client_id,
        "name": client.name,
        "client_type": client.client_type.value,
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
        "purposes": list(client.purposes),
        "origins": [_origin(o) for o in client.origins],
        "trusted": client.trusted,
        "manages_consent": client.manages_consent,
        "introspect_all_tokens": client.introspect_all_tokens,
        "url": client.url,
        "publisher": client.publisher,
        "privacy_policy_url": client.privacy_policy_url,
        "secret_digest": client.secret_digest,
        "jwks": client.jwks,
        "jwks_uri": client.jwks_uri,
        "created_at": client.created_at or datetime.now(UTC),
    }


def _from_doc(doc: dict[str, Any]) -> Client:
    return Client(
        client_id=doc["_id"],
        name=doc["name"],
        client_type=ClientType(doc["client_type"]),
        redirect_uris=tuple(doc.get("redirect_uris", ())),
        scope=doc.get("scope", ""),
        purposes=tuple(doc.get("purposes", ())),
        origins=tuple(doc.get("origins", ())),
        trusted=bool(doc.get("trusted", False)),
        manages_consent=bool(doc.get("manages_consent", False)),
        introspect_all_tokens=bool(doc.get("introspect_all_tokens", False)),
        url=doc.get("url"),
        publisher=doc.get("publisher"),
        privacy_policy_url=doc.get("privacy_policy_url"),
        secret_digest=doc.get("secret_digest"),
        jwks=doc.get("jwks"),
        jwks_uri=doc.get("jwks_uri"),
        created_at=doc.get("created_at"),
    )


def new_client(
    *,
    client_id: str,
    name: str,
    client_type: ClientType,
    redirect_uris: tuple[str, ...] = (),
    scope: str,
    purposes: tuple[str, ...],
    origins: tuple[str, ...] = (),
    trusted: bool = False,
    manages_consent: bool = False,
    introspect_all_tokens: bool = False,
    url: str | None = None,
    publisher: str | None = None,
    privacy_policy_url: str | None = None,
    secret: str | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
) -> Client:
    """A checked client value (raises :class:`ClientError`); the secret is kept as a digest."""
    if secret is not None and len(secret) < MIN_SECRET_LENGTH:
        raise ClientError(f"the client secret must have at least {MIN_SECRET_LENGTH} characters")
    if client_type is not ClientType.SYMMETRIC and secret is not None:
        raise ClientError("only a confidential-symmetric client has a secret")
    if client_type is not ClientType.ASYMMETRIC and (jwks is not None or jwks_uri is not None):
        raise ClientError("only a confidential-asymmetric client has keys")
    client = Client(
        client_id=client_id,
        name=name,
        client_type=client_type,
        redirect_uris=tuple(redirect_uris),
        scope=" ".join(scope.split()),
        purposes=tuple(purposes),
        origins=tuple(origins),
        trusted=trusted,
        manages_consent=manages_consent,
        introspect_all_tokens=introspect_all_tokens,
        url=url,
        publisher=publisher,
        privacy_policy_url=privacy_policy_url,
        secret_digest=secret_digest(secret) if secret is not None else None,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )
    _check(client)
    return client


class ClientStore:
    """The registered clients, keyed by ``client_id`` (always a ``str``, never client JSON)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._clients = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._clients.create_index("origins")

    async def add(self, client: Client, *, replace: bool = False) -> None:
        _check(client)
        doc = _to_doc(client)
        if replace:
            await self._clients.replace_one({"_id": client.client_id}, doc, upsert=True)
            return
        try:
            await self._clients.insert_one(doc)
        except DuplicateKeyError:
            raise ClientError(f"a client '{client.client_id}' is already registered") from None

    async def get(self, client_id: str) -> Client | None:
        if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
            return None
        doc = await self._clients.find_one({"_id": client_id})
        return _from_doc(doc) if doc else None

    async def all(self) -> list[Client]:
        return [_from_doc(doc) async for doc in self._clients.find({}).sort("_id", 1)]

    async def remove(self, client_id: str) -> bool:
        if not isinstance(client_id, str):
            return False
        return (await self._clients.delete_one({"_id": client_id})).deleted_count == 1

    async def origin_allowed(self, origin: str, client_id: str | None = None) -> bool:
        """Whether ``origin`` is registered (by ``client_id``, or by any client) for CORS (S-07)."""
        if not isinstance(origin, str) or not origin:
            return False
        query: dict[str, Any] = {"origins": origin}
        if client_id is not None:
            if not isinstance(client_id, str):
                return False
            query["_id"] = client_id
        return await self._clients.find_one(query, {"_id": 1}) is not None
