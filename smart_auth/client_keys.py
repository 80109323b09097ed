"""The public keys of confidential-asymmetric clients (SMART 2.2 "Client Authentication:
Asymmetric", S-23; SECURITY.md P-10).

A client registers either an inline JWKS or one JWKS URL. An assertion's ``jku`` header, if any,
must be exactly that URL; nothing else is ever fetched. The key is the one whose ``kid`` matches and
whose ``kty`` fits the algorithm (RSA for RS384, EC P-384 for ES384) — exactly one, or the assertion
is refused. A fetched JWKS is cached by :class:`smart_auth.jwks.JwksCache`: no longer than its
``Cache-Control: max-age`` (and the configured cap), not at all without one; an unknown ``kid``
refetches it, at most every ten seconds.
"""

from __future__ import annotations

from typing import Any

from joserfc.jwk import ECKey, Key, RSAKey

from smart_auth.clients import Client
from smart_auth.jwks import JwksCache, JwksFetcher, JwksUnavailable

ALGORITHMS = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}
_MIN_REFETCH = 10.0  # an unknown kid refetches a JWKS URL at most this often (seconds)


class KeyResolutionError(ValueError):
    """No single usable key for this assertion; the message says why (for the client)."""


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
        self._jwks = JwksCache(
            fetch, max_cache_seconds=max_cache_seconds, min_refetch_seconds=_MIN_REFETCH
        )

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
        kid = header.get("kid")
        try:
            jwks = await self._jwks.get(client.jwks_uri, kid=kid if isinstance(kid, str) else None)
        except JwksUnavailable:
            raise KeyResolutionError("the client's JWKS URL could not be read") from None
        return select_key(jwks, header)
