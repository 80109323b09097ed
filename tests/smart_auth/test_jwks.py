"""The one JWKS cache (RFC 7517; RFC 9111 Cache-Control) for clients' ``jwks_uri`` (S-23) and
external issuers (S-30): fetches counted with a stand-in fetcher (a unit of one class)."""

from __future__ import annotations

from typing import Any

import pytest

from smart_auth.jwks import FetchedJwks, JwksCache, JwksUnavailable


class Counting:
    def __init__(self, max_age: int | None = 600, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.max_age = max_age
        self.fail = fail
        self.kids = ["a"]

    async def __call__(self, url: str) -> FetchedJwks:
        self.calls.append(url)
        if self.fail:
            raise OSError("down")
        keys: list[dict[str, Any]] = [{"kty": "RSA", "kid": kid} for kid in self.kids]
        return FetchedJwks({"keys": keys}, self.max_age)


async def test_s23_a_fresh_set_is_served_from_the_cache() -> None:
    fetch = Counting()
    cache = JwksCache(fetch, max_cache_seconds=3600)
    for _ in range(5):
        await cache.get("https://a.example/jwks", kid="a")
    assert fetch.calls == ["https://a.example/jwks"]


async def test_s23_no_store_and_no_header_follow_the_callers_default() -> None:
    fetch = Counting(max_age=0)
    cache = JwksCache(fetch, max_cache_seconds=3600)
    await cache.get("https://a.example/jwks")
    await cache.get("https://a.example/jwks")
    assert len(fetch.calls) == 2  # not cached at all
    silent = Counting(max_age=None)
    issuers = JwksCache(silent, max_cache_seconds=3600, default_cache_seconds=3600)
    await issuers.get("https://i.example/jwks")
    await issuers.get("https://i.example/jwks")
    assert len(silent.calls) == 1


async def test_s30_an_unknown_kid_refetches_at_most_once_per_interval() -> None:
    fetch = Counting()
    cache = JwksCache(fetch, max_cache_seconds=3600, min_refetch_seconds=3600)
    await cache.get("https://a.example/jwks")
    for _ in range(10):  # an attacker's made-up kids cannot make the gateway hammer the URL
        assert (await cache.get("https://a.example/jwks", kid="nope"))["keys"][0]["kid"] == "a"
    assert len(fetch.calls) == 1
    rotated = JwksCache(fetch, max_cache_seconds=3600, min_refetch_seconds=0)
    await rotated.get("https://b.example/jwks")
    fetch.kids = ["a", "b"]
    assert len((await rotated.get("https://b.example/jwks", kid="b"))["keys"]) == 2


async def test_the_cache_holds_at_most_max_entries_urls() -> None:
    fetch = Counting()
    cache = JwksCache(fetch, max_cache_seconds=3600, max_entries=3)
    for n in range(10):
        await cache.get(f"https://{n}.example/jwks")
    await cache.get("https://9.example/jwks")  # the newest stayed
    assert len(fetch.calls) == 10
    await cache.get("https://0.example/jwks")  # the oldest went
    assert len(fetch.calls) == 11


async def test_a_failing_or_malformed_set_is_unavailable_never_empty() -> None:
    cache = JwksCache(Counting(fail=True), max_cache_seconds=3600)
    with pytest.raises(JwksUnavailable):
        await cache.get("https://down.example/jwks")

    async def not_a_set(url: str) -> FetchedJwks:
        return FetchedJwks({"keys": "x"}, 600)

    with pytest.raises(JwksUnavailable):
        await JwksCache(not_a_set, max_cache_seconds=3600).get("https://odd.example/jwks")
