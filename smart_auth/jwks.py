"""JSON Web Key Sets fetched from URLs (RFC 7517 5; RFC 9111 5.2.2 Cache-Control), for the two
places that read other parties' keys: confidential-asymmetric clients' ``jwks_uri`` (SMART 2.2
"Client Authentication: Asymmetric", S-23) and configured external issuers (S-30).

One cache for both: a JWKS is kept no longer than its ``Cache-Control: max-age`` allows, capped by
a setting; ``no-store``/``no-cache``/``private`` keep it not at all; without the header, the
caller's default applies. A ``kid`` that the cached set does not hold refetches the URL, at most
once per ``min_refetch`` seconds per URL (so an unknown ``kid`` cannot make the gateway hammer a
URL), and the cache holds at most ``max_entries`` URLs. Concurrent callers share one fetch.

Fetching is injected (:data:`JwksFetcher`), so this module stays free of any HTTP client; only
registered or configured URLs are ever passed in (P-10).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FetchedJwks:
    jwks: dict[str, Any]
    max_age: int | None
    """Seconds the response may be cached; 0: not at all; ``None``: it did not say."""


JwksFetcher = Callable[[str], Awaitable[FetchedJwks]]


class JwksUnavailable(Exception):
    """The JWKS could not be read (or not yet again); the message says why."""


def max_age(cache_control: str | None) -> int | None:
    """Seconds a response may be cached according to its ``Cache-Control`` header (``None``
    when it has none)."""
    if not cache_control:
        return None
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if any(d in ("no-store", "no-cache", "private") for d in directives):
        return 0
    for directive in directives:
        match = re.fullmatch(r"(?:s-)?max-age=(\d{1,9})", directive)
        if match:
            return int(match[1])
    return None


def kids(jwks: dict[str, Any]) -> frozenset[str]:
    keys = jwks.get("keys")
    return (
        frozenset(k["kid"] for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str))
        if isinstance(keys, list)
        else frozenset()
    )


@dataclass(slots=True)
class _Entry:
    jwks: dict[str, Any] | None
    expires_at: float
    fetched_at: float


class JwksCache:
    """JWKS documents by URL (the module's docstring)."""

    def __init__(
        self,
        fetch: JwksFetcher | None,
        *,
        max_cache_seconds: float,
        default_cache_seconds: float = 0.0,
        min_refetch_seconds: float = 10.0,
        max_entries: int = 1000,
    ) -> None:
        self._fetch = fetch
        self._cap = max_cache_seconds
        self._default = default_cache_seconds
        self._min_refetch = min_refetch_seconds
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, url: str, *, kid: str | None = None) -> dict[str, Any]:
        """The JWKS at ``url``, fetched unless a fresh copy is cached; a fresh copy without
        ``kid`` is fetched again only once ``min_refetch`` seconds have passed since the last
        fetch (before that the cached copy is returned, and the caller finds no key in it).
        :class:`JwksUnavailable` when it cannot be read."""
        cached = self._fresh(url, kid)
        if cached is not None:
            return cached
        async with self._locks.setdefault(url, asyncio.Lock()):
            cached = self._fresh(url, kid)  # another caller may have fetched meanwhile
            if cached is not None:
                return cached
            return await self._refresh(url, time.monotonic())

    def _fresh(self, url: str, kid: str | None) -> dict[str, Any] | None:
        entry = self._entries.get(url)
        now = time.monotonic()
        if entry is None or entry.jwks is None or entry.expires_at <= now:
            return None
        if kid is None or kid in kids(entry.jwks) or now - entry.fetched_at < self._min_refetch:
            return entry.jwks
        return None

    async def _refresh(self, url: str, now: float) -> dict[str, Any]:
        if self._fetch is None:
            raise JwksUnavailable("key sets cannot be fetched here")
        if url not in self._entries and len(self._entries) >= self._max_entries:
            oldest = min(self._entries, key=lambda u: self._entries[u].fetched_at)
            del self._entries[oldest]
            self._locks.pop(oldest, None)
        try:
            fetched = await self._fetch(url)
        except Exception as exc:
            raise JwksUnavailable(f"the key set could not be read ({type(exc).__name__})") from None
        if not isinstance(fetched.jwks, dict) or not isinstance(fetched.jwks.get("keys"), list):
            raise JwksUnavailable('a key set is {"keys": [...]}')
        ttl = min(self._default if fetched.max_age is None else fetched.max_age, self._cap)
        self._entries[url] = _Entry(fetched.jwks, now + ttl, now)
        return fetched.jwks
