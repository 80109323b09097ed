"""Reading another party's JSON Web Key Set over HTTP (for :mod:`smart_auth.jwks`): only the URL
given (a client's registered ``jwks_uri`` or a configured issuer's, P-10), no redirects followed,
at most 256 KiB, and only a 200 answer counts."""

from __future__ import annotations

import aiohttp
import orjson

from smart_auth.jwks import FetchedJwks, JwksFetcher, max_age

MAX_BYTES = 256 * 1024


def http_jwks_fetcher(session: aiohttp.ClientSession) -> JwksFetcher:
    """A fetcher over ``session`` (whose timeout bounds every read)."""

    async def fetch(url: str) -> FetchedJwks:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"the JWKS URL answered {response.status}")
            raw = await response.content.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise ValueError("the JWKS is too large")
            return FetchedJwks(orjson.loads(raw), max_age(response.headers.get("Cache-Control")))

    return fetch
