"""The public keys of confidential-asymmetric clients (SMART 2.2 "Client Authentication:
Asymmetric", S-23; SECURITY.md P-10).

A client registers either an inline JWKS or one JWKS URL. An assertion's ``jku`` header, if any,
must be exactly that URL; nothing else is ever fetched. The key is the one whose ``kid`` matches and
whose ``kty`` fits the algorithm (RSA for RS384, EC P-384 for ES384) — exactly one, or the assertion
is refused. A fetched JWKS is cached no longer than its ``Cache-Control: max-age`` (and the
configured cap); ``no-store``/``no-cache`` are not cached at all. An unknown ``kid`` refetches once.

Fetching is injected (:data:`JwksFetcher`), so this module stays free of any HTTP client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, Key, RSAKey

from smart_auth.clients import Client

ALGORITHMS = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}
_MIN_REFETCH = 10.0  # an unknown kid refetches a JWKS URL at most this often (seconds)


class KeyResolutionError(ValueError):
    """No single usable key for this assertion; the message says why (for the client)."""


@dataclass(frozen=True, slots=True)
class FetchedJwks:
    jwks: dict[str, Any]
    max_age: int  # seconds the response may be cached (0: not at all)


JwksFetcher = Callable[[str], Awaitable[FetchedJwks]]


def max_age(cache_control: str | None) -> int:
    """Seconds a response may be cached according to its ``Cache-Control`` header."""
    if not cache_control:
        return 0
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if any(d in ("no-store", "no-cache", "private") for d in directives):
        return 0
    for directive in directives:
        match = re.fullmatch(r"(?:s-)?max-age=(\d{1,9})", directive)
        if match:
            return int(match[1])
    return 0


def select_key(jwks: dict[str, Any], header: dict[str, Any]) -> Key:
    """The one key of ``jwks`` for this JWS header (``alg`` already checked)."""
    kty, crv = ALGORITHMS[header["alg"]]
    kid = header.get("kid")
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise KeyResolutionError("the client's JWKS has no keys")
    candidates = [
        k
        for k in keys
        if isinstance(k, dict)
        and k.get("kty") == kty
        and (crv is None or k.get("crv") == crv)
        and (kid is None or k.get("kid") == kid)
        and k.get("use", "sig") == "sig"
    ]
    if len(candidates) != 1:
        raise KeyResolutionError(
            "no key of the client matches the assertion's kid and algorithm"
            if not candidates
            else "several keys match; send a kid"
        )
    data = {k: v for k, v in candidates[0].items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    return RSAKey.import_key(data) if kty == "RSA" else ECKey.import_key(data)


class ClientKeyResolver:
    def __init__(self, fetch: JwksFetcher | None, max_cache_seconds: int = 3600) -> None:
        self._fetch = fetch
        self._cap = max_cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._fetched_at: dict[str, float] = {}

    async def _remote(self, url: str, *, refresh: bool) -> dict[str, Any]:
        cached = self._cache.get(url)
        if cached and not refresh and cached[0] > time.monotonic():
            return cached[1]
        if self._fetch is None:
            raise KeyResolutionError("JWKS URLs cannot be fetched here")
        if refresh and time.monotonic() - self._fetched_at.get(url, 0.0) < _MIN_REFETCH:
            raise KeyResolutionError("no key of the client matches the assertion's kid")
        self._fetched_at[url] = time.monotonic()
        try:
            fetched = await self._fetch(url)
        except Exception:
            raise KeyResolutionError("the client's JWKS URL could not be read") from None
        ttl = min(fetched.max_age, self._cap)
        if ttl > 0:
            self._cache[url] = (time.monotonic() + ttl, fetched.jwks)
        else:
            self._cache.pop(url, None)
        return fetched.jwks

    async def key_for(self, client: Client, header: dict[str, Any]) -> Key:
        if header.get("alg") not in ALGORITHMS:
            raise KeyResolutionError("assertions are signed with RS384 or ES384")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_uri:
            raise KeyResolutionError("the jku header is not the client's registered JWKS URL")
        if client.jwks is not None:
            return select_key(client.jwks, header)
        if client.jwks_uri is None:
            raise KeyResolutionError("the client has no keys registered")
        jwks = await self._remote(client.jwks_uri, refresh=False)
        try:
            return select_key(jwks, header)
        except KeyResolutionError:
            return select_key(await self._remote(client.jwks_uri, refresh=True), header)
