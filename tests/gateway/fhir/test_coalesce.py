"""Coalesced lookups: batched, and never staler than the request that asked."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fhir.coalesce import Coalescer


async def test_concurrent_requests_share_one_lookup() -> None:
    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, int]:
        calls.append(keys)
        return {key: len(key) for key in keys if key != "missing"}

    coalescer = Coalescer(fetch)
    results = await asyncio.gather(
        coalescer.get_many(["a", "bb"]),
        coalescer.get_many(["bb", "missing"]),
        coalescer.get_many(["ccc"]),
    )
    assert results == [{"a": 1, "bb": 2}, {"bb": 2}, {"ccc": 3}]
    assert calls == [["a", "bb", "missing", "ccc"]]


async def test_s25_a_request_during_a_lookup_waits_for_a_fresh_one() -> None:
    """The second request arrives while the first lookup is running: it must not reuse that
    lookup's answer, which may predate a change made just before the second request."""
    state = {"revoked": False}
    started = asyncio.Event()
    release = asyncio.Event()
    snapshots: list[bool] = []

    async def fetch(keys: list[str]) -> dict[str, bool]:
        snapshot = state["revoked"]  # the read happens here
        snapshots.append(snapshot)
        started.set()
        await release.wait()
        return {key: True for key in keys} if snapshot else {}

    coalescer = Coalescer(fetch)
    first = asyncio.create_task(coalescer.get_many(["jti:1"]))
    await started.wait()
    state["revoked"] = True  # revoked after the first read began...
    second = asyncio.create_task(coalescer.get_many(["jti:1"]))  # ...and before this request
    await asyncio.sleep(0)
    release.set()
    assert await first == {}
    assert await second == {"jti:1": True}
    assert snapshots == [False, True]


async def test_a_failed_lookup_fails_every_waiter_and_the_next_round_recovers() -> None:
    attempts = 0

    async def fetch(keys: list[str]) -> dict[str, bool]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("database unreachable")
        return {}

    coalescer = Coalescer(fetch)
    results = await asyncio.gather(
        coalescer.get_many(["a"]), coalescer.get_many(["b"]), return_exceptions=True
    )
    assert all(isinstance(result, ConnectionError) for result in results)
    assert await coalescer.get_many(["a"]) == {}


async def test_a_cancelled_waiter_does_not_break_the_round() -> None:
    release = asyncio.Event()

    async def fetch(keys: list[str]) -> dict[str, bool]:
        await release.wait()
        return {key: True for key in keys}

    coalescer = Coalescer(fetch)
    cancelled = asyncio.create_task(coalescer.get_many(["a"]))
    kept = asyncio.create_task(coalescer.get_many(["b"]))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    release.set()
    assert await kept == {"b": True}
    with pytest.raises(asyncio.CancelledError):
        await cancelled
