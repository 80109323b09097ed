"""Resource limits and fairness of the FHIR API (SECURITY.md P-12; SMART.md S-25, S-29), against a
scripted upstream that counts and slows what it receives: a batch is bounded in entries and in its
upstream concurrency, stops when its caller goes, and ends when its token is revoked; a write the
token may not make is refused before its body is read; the largest transaction does not hold up
other requests."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp
import orjson

from gateway.appkeys import AUTH
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import register_client
from tests.gateway.conftest import ScriptedUpstream
from tests.support.tokens import minted_token

JSON = {"Content-Type": "application/fhir+json"}


def _batch(count: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Patient/p{n}"}} for n in range(count)],
    }


async def _gateway(
    start_gateway: StartGateway, upstream: ScriptedUpstream, stack: Stack, **settings: Any
) -> tuple[RunningGateway, str]:
    gw = await start_gateway(upstream_url=upstream.base, mongodb_uri=stack.mongo_uri, **settings)
    await register_client(gw, "test-system", trusted=True)
    token = await minted_token(
        gw,
        client_id="test-system",
        scope="system/*.rs system/Observation.c",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
        grant_id="limits-grant",
    )
    return gw, token


async def test_p12_a_batch_over_the_entry_limit_is_413_and_sends_nothing(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    gw, token = await _gateway(start_gateway, upstream, local_stack_env, max_batch_entries=50)
    headers = {"Authorization": f"Bearer {token}", **JSON}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(gw.fhir, data=orjson.dumps(_batch(51))) as response:
            assert response.status == 413
            assert "at most 50 entries" in (await response.json())["issue"][0]["diagnostics"]
        assert upstream.seen == []
        async with http.post(gw.fhir, data=orjson.dumps(_batch(50))) as response:
            assert response.status == 200
    assert len(upstream.seen) == 50


async def test_p12_a_batch_keeps_at_most_its_concurrency_at_the_upstream(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    gw, token = await _gateway(start_gateway, upstream, local_stack_env, batch_concurrency=3)
    upstream.delay = 0.05
    headers = {"Authorization": f"Bearer {token}", **JSON}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(gw.fhir, data=orjson.dumps(_batch(12))) as response,
    ):
        assert response.status == 200
    assert upstream.most_at_once == 3


async def test_p12_a_batch_stops_when_its_caller_has_gone(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    gw, token = await _gateway(start_gateway, upstream, local_stack_env, batch_concurrency=2)
    upstream.delay = 0.1
    headers = {"Authorization": f"Bearer {token}", **JSON}
    async with aiohttp.ClientSession(headers=headers) as http:
        with_timeout = aiohttp.ClientTimeout(total=0.5)
        try:
            async with http.post(gw.fhir, data=orjson.dumps(_batch(200)), timeout=with_timeout):
                pass
        except TimeoutError:
            pass  # the caller hangs up
    await asyncio.sleep(1.0)
    sent = len(upstream.seen)
    await asyncio.sleep(1.0)
    assert len(upstream.seen) == sent < 40  # 200 entries would take 10 s; it stopped


async def test_s25_a_token_revoked_during_a_batch_ends_it(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    gw, token = await _gateway(start_gateway, upstream, local_stack_env, batch_concurrency=1)
    upstream.delay = 0.02
    revocations = gw.server.app[AUTH].revocations
    headers = {"Authorization": f"Bearer {token}", **JSON}

    async def revoke_soon() -> None:
        await asyncio.sleep(0.3)
        await revocations.revoke_grant("limits-grant", _hour_ahead())

    async with aiohttp.ClientSession(headers=headers) as http:
        revoking = asyncio.ensure_future(revoke_soon())
        async with http.post(gw.fhir, data=orjson.dumps(_batch(150))) as response:
            status = response.status
        await revoking
    assert status == 401
    assert len(upstream.seen) < 60  # not the 150 a whole batch would have sent


async def test_p12_a_write_the_token_may_not_make_is_refused_before_its_body_is_read(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    gw, token = await _gateway(start_gateway, upstream, local_stack_env)
    sent = 0

    async def body() -> Any:  # 40 MB, slowly, counting what has gone
        nonlocal sent
        for _ in range(40):
            sent += 1024 * 1024
            yield b" " * (1024 * 1024)
            await asyncio.sleep(0.05)

    headers = {"Authorization": f"Bearer {token}", **JSON}
    answered_after = None
    async with aiohttp.ClientSession(headers=headers) as http:
        try:
            async with http.put(f"{gw.fhir}/Patient/p1", data=body()) as response:
                answered_after = sent
                assert response.status == 403  # system/*.rs: no update
        except aiohttp.ClientError:
            pass  # the gateway may close the connection instead of reading on
    assert answered_after is not None and answered_after <= 4 * 1024 * 1024
    assert upstream.seen == []


async def test_p12_the_largest_transaction_does_not_hold_up_other_requests(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    gw, token = await _gateway(start_gateway, upstream, local_stack_env)
    limit = gw.settings.max_batch_entries
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "x"},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": observation, "request": {"method": "POST", "url": "Observation"}}]
        * limit,
    }
    # As large as the body limit allows.
    size = len(orjson.dumps(observation))
    observation["code"]["text"] = "x" * (gw.settings.max_body_bytes // limit - size - 200)
    created = [{"response": {"status": "201 Created"}}] * limit
    upstream.body = orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction-response", "entry": created}
    )
    headers = {"Authorization": f"Bearer {token}", **JSON}
    slowest = 0.0
    body = orjson.dumps(transaction)
    assert len(body) > gw.settings.max_body_bytes * 0.9

    async with aiohttp.ClientSession(headers=headers) as http:

        async def send() -> int:
            async with http.post(gw.fhir, data=io.BytesIO(body)) as response:
                return response.status

        sending = asyncio.ensure_future(send())
        while not sending.done():
            started = time.perf_counter()
            async with http.get(f"{gw.base}/healthz") as response:
                assert response.status == 200
            slowest = max(slowest, time.perf_counter() - started)
            await asyncio.sleep(0.01)
        assert await sending == 200
    print(f"/healthz: slowest {slowest * 1000:.0f} ms")
    assert slowest < 0.1, f"/healthz waited {slowest * 1000:.0f} ms behind the transaction"


def _hour_ahead() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)


async def test_p12_an_upstream_answer_over_the_limit_is_502_and_not_read_whole(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    limit = 1024 * 1024
    gw, token = await _gateway(
        start_gateway, upstream, local_stack_env, max_upstream_body_bytes=limit
    )
    entries = [{"resource": {"resourceType": "Patient", "id": f"p{n}"}} for n in range(60_000)]
    upstream.body = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})
    assert len(upstream.body) > 2 * limit
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{gw.fhir}/Patient") as response,
    ):
        assert response.status == 502
        outcome = await response.json(content_type=None)
    assert "page the search" in outcome["issue"][0]["diagnostics"]
    upstream.headers = {"Transfer-Encoding": "chunked"}  # no Content-Length to go by
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{gw.fhir}/Patient") as response,
    ):
        assert response.status == 502


async def test_p12_the_rate_limit_holds_across_instances(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    first, token = await _gateway(
        start_gateway, upstream, local_stack_env, rate_limit_per_client="10/minute"
    )
    second = await start_gateway(
        upstream_url=upstream.base,
        mongodb_uri=local_stack_env.mongo_uri,
        mongodb_database=first.settings.mongodb_database,  # the same cluster
        public_base_url=first.settings.public_base_url,  # behind the same address
        rate_limit_per_client="10/minute",
    )
    statuses: list[int] = []
    ports = (first.server.port, second.server.port)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for n in range(30):
            async with http.get(f"http://127.0.0.1:{ports[n % 2]}/fhir/Patient/p1") as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
    assert statuses.count(200) == 10  # not 10 per instance
    assert statuses.count(429) == 20


async def test_p12_a_burst_at_two_instances_lets_through_about_the_limit(
    start_gateway: StartGateway, upstream: ScriptedUpstream, local_stack_env: Stack
) -> None:
    settings = {"rate_limit_per_client": "40/minute"}
    first, token = await _gateway(start_gateway, upstream, local_stack_env, **settings)
    second = await start_gateway(
        upstream_url=upstream.base,
        mongodb_uri=local_stack_env.mongo_uri,
        mongodb_database=first.settings.mongodb_database,
        public_base_url=first.settings.public_base_url,
        **settings,
    )
    ports = (first.server.port, second.server.port)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def one(n: int) -> int:
            async with http.get(f"http://127.0.0.1:{ports[n % 2]}/fhir/Patient/p1") as response:
                return response.status

        statuses = await asyncio.gather(*(one(n) for n in range(120)))
    # Each instance alone would let 40 of its 60 through; together never more than 40, and less
    # only by what the other instance has claimed and not spent.
    assert 40 - 40 // 8 <= statuses.count(200) <= 40
    assert statuses.count(200) + statuses.count(429) == 120
