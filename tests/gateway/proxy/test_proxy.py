"""The proxy core against a scripted upstream (an aiohttp server that records what it receives and
answers what each test sets): header filtering, SSRF, limits and upstream failures.

The same interactions against the real local FHIR server: ``tests/e2e/test_proxy_roundtrip.py``.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.appkeys import MONGO
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import register_client
from tests.gateway.conftest import METRICS_AUTH, METRICS_TOKEN, SYSTEM_SCOPE, ScriptedUpstream
from tests.support.tokens import minted_token


async def _outcome(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = orjson.loads(await response.read())
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return body  # type: ignore[no-any-return]


async def test_p02_gateway_uses_its_own_credentials_never_the_callers(
    gw: RunningGateway, upstream: ScriptedUpstream, http: aiohttp.ClientSession, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Cookie": "s=1", "X-Forwarded-Host": "evil"}
    async with http.get(f"{gw.fhir}/Patient/p1", headers=headers) as response:
        assert response.status == 200
    forwarded = upstream.seen[-1]["headers"]
    assert forwarded["Authorization"] == "Bearer gateway-own-credential"
    assert token not in str(forwarded)
    assert "Cookie" not in forwarded
    assert "X-Forwarded-Host" not in forwarded
    assert forwarded["Accept"] == "application/fhir+json"


async def test_p11_upstream_headers_are_filtered_and_urls_rewritten(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    upstream.status = 201
    upstream.headers = {
        "Location": f"{upstream.base}/Patient/p9/_history/1",
        "ETag": 'W/"1"',
        "Server": "secret-build-host",
        "Set-Cookie": "upstream=1",
    }
    upstream.body = orjson.dumps(
        {
            "resourceType": "Patient",
            "id": "p9",
            "link": [{"other": {"reference": f"{upstream.base}/Patient/p1"}}],
        }
    )
    async with client.post(
        f"{gw.fhir}/Patient",
        data=b'{"resourceType":"Patient"}',
        headers={"Content-Type": "application/fhir+json"},
    ) as response:
        assert response.status == 201
        assert response.headers["Location"] == f"{gw.fhir}/Patient/p9/_history/1"
        assert response.headers["ETag"] == 'W/"1"'
        assert "Set-Cookie" not in response.headers
        assert "secret-build-host" not in str(response.headers)
        body = await response.read()
    assert upstream.base.encode() not in body
    assert orjson.loads(body)["link"][0]["other"]["reference"] == f"{gw.fhir}/Patient/p1"


async def test_p10_nothing_in_the_request_changes_the_upstream_host(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    attempts = [
        "/fhir/Patient?_getpages=http://evil.example/steal",
        "/fhir/Patient?url=http://evil.example/",
        "/fhir//evil.example/Patient",
        "/fhir/http:%2F%2Fevil.example%2FPatient",
        "/fhir/Patient/..%2F..%2Fadmin",
    ]
    for path in attempts:
        async with client.get(f"{gw.base}{path}", headers={"Host": "evil.example"}) as response:
            await response.read()
    # Everything that reached an upstream reached *this* one, under its base path.
    for seen in upstream.seen:
        assert seen["path"].startswith("/fhir")
        assert ".." not in seen["path"]


async def test_p12_upstream_timeout_is_a_504_outcome(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    upstream.delay = 2.0
    async with client.get(f"{gw.fhir}/Patient/p1") as response:
        assert response.status == 504
        outcome = await _outcome(response)
        assert response.headers["X-Request-Id"]
    assert outcome["issue"][0]["code"] == "timeout"


async def test_p14_upstream_5xx_body_never_reaches_the_caller(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    upstream.status = 500
    upstream.body = orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"diagnostics": "NullPointerException at db-7.internal:5432"}],
        }
    )
    async with client.get(f"{gw.fhir}/Patient/p1") as response:
        assert response.status == 502
        text = await response.text()
    assert "NullPointerException" not in text and "db-7" not in text


async def test_non_json_from_the_upstream_is_a_502(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    upstream.content_type = "text/html"
    upstream.body = b"<html>proxy error page from upstream-lb-3</html>"
    async with client.get(f"{gw.fhir}/Patient/p1") as response:
        assert response.status == 502
        assert "upstream-lb-3" not in await response.text()


async def test_p12_upstream_down_is_a_502_without_its_address(
    start_gateway: StartGateway, local_stack_env: Stack, http: aiohttp.ClientSession
) -> None:
    from gateway.localstack import free_port

    down = f"http://127.0.0.1:{free_port()}/fhir"
    gw = await start_gateway(upstream_url=down, mongodb_uri=local_stack_env.mongo_uri)
    await register_client(gw, "test-system", trusted=True)
    token = await minted_token(
        gw,
        client_id="test-system",
        scope=SYSTEM_SCOPE,
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
    )
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{gw.fhir}/Patient", headers=headers) as response:
        assert response.status == 502
        outcome = await _outcome(response)
    assert down not in str(outcome) and "127.0.0.1" not in str(outcome)


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Accept": "application/fhir+xml"}, ""),
        ({"Accept": "application/xml, text/xml;q=0.9"}, ""),
        ({"Accept": "application/fhir+json;q=0, application/fhir+xml"}, ""),
        ({}, "?_format=xml"),
        ({}, "?_format=application/fhir+xml"),
    ],
)
async def test_xml_is_refused_with_406(
    gw: RunningGateway, client: aiohttp.ClientSession, headers: dict[str, str], query: str
) -> None:
    async with client.get(f"{gw.fhir}/Patient{query}", headers=headers) as response:
        assert response.status == 406
        await _outcome(response)


@pytest.mark.parametrize(
    "accept", ["application/fhir+json", "application/json", "*/*", "text/html, */*;q=0.1", ""]
)
async def test_json_accepts_pass(
    gw: RunningGateway, client: aiohttp.ClientSession, accept: str
) -> None:
    async with client.get(f"{gw.fhir}/Patient/p1", headers={"Accept": accept}) as response:
        assert response.status == 200


async def test_p12_a_20_mb_body_is_refused_with_413(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    body = b'{"resourceType":"Patient","text":"' + b"x" * (20 * 1024 * 1024) + b'"}'
    async with client.post(
        f"{gw.fhir}/Patient",
        data=io.BytesIO(body),
        headers={"Content-Type": "application/fhir+json"},
    ) as response:
        assert response.status == 413
        await _outcome(response)
    assert upstream.seen == []


async def test_p12_a_chunked_body_over_the_limit_is_refused_with_413(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"resourceType":"Patient","text":"'
        for _ in range(20):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    async with client.post(
        f"{gw.fhir}/Patient", data=chunks(), headers={"Content-Type": "application/fhir+json"}
    ) as response:
        assert response.status == 413
        await _outcome(response)
    assert upstream.seen == []


async def test_p12_a_20_kb_url_is_refused_with_414(
    gw: RunningGateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{gw.fhir}/Patient?name={'a' * 20000}") as response:
        assert response.status == 414
        await _outcome(response)


async def test_p12_500_headers_are_refused_with_431(
    gw: RunningGateway, client: aiohttp.ClientSession
) -> None:
    headers = {f"X-Filler-{i}": "1" for i in range(500)}
    async with client.get(f"{gw.fhir}/Patient", headers=headers) as response:
        assert response.status == 431
        await _outcome(response)


async def test_a_body_that_is_not_json_is_a_400(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    async with client.post(
        f"{gw.fhir}/Patient", data=b"{not json", headers={"Content-Type": "application/fhir+json"}
    ) as response:
        assert response.status == 400
        outcome = await _outcome(response)
    assert "not valid JSON" in outcome["issue"][0]["diagnostics"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "status"),
    [
        ("POST", "Patient", "application/fhir+xml", b"<Patient/>", 415),
        ("POST", "Patient", "application/fhir+json", b'{"resourceType":"Observation"}', 400),
        ("POST", "Patient", "application/fhir+json", b"[1, 2]", 400),
        (
            "PUT",
            "Patient/p1",
            "application/fhir+json",
            b'{"resourceType":"Patient","id":"p2"}',
            400,
        ),
        (
            "POST",
            "",
            "application/fhir+json",
            b'{"resourceType":"Bundle","type":"collection"}',
            400,
        ),
        ("PATCH", "Patient/p1", "application/json-patch+json", b'{"op":"remove"}', 400),
        ("POST", "Patient/_search", "application/json", b"{}", 415),
    ],
)
async def test_malformed_writes_are_refused_before_the_upstream(
    gw: RunningGateway,
    upstream: ScriptedUpstream,
    client: aiohttp.ClientSession,
    method: str,
    path: str,
    content_type: str,
    body: bytes,
    status: int,
) -> None:
    async with client.request(
        method, f"{gw.fhir}/{path}", data=body, headers={"Content-Type": content_type}
    ) as response:
        assert response.status == status
        await _outcome(response)
    assert upstream.seen == []


async def test_unknown_paths_are_refused_not_forwarded(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    for path in ("/fhir/$graphql", "/fhir/NotAType", "/fhir/Patient/p1/$export", "/nothing-here"):
        async with client.get(f"{gw.base}{path}") as response:
            assert response.status == 404
            await _outcome(response)
    assert upstream.seen == []


async def test_search_parameters_reach_the_upstream_repeated_and_in_order(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    upstream.body = b'{"resourceType":"Bundle","type":"searchset"}'
    async with client.get(
        f"{gw.fhir}/Observation?code=a&code=b&date=ge2020&_format=json"
    ) as response:
        assert response.status == 200
    assert upstream.seen[-1]["query"] == [("code", "a"), ("code", "b"), ("date", "ge2020")]


async def test_post_search_forwards_the_form(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    upstream.body = b'{"resourceType":"Bundle","type":"searchset"}'
    async with client.post(
        f"{gw.fhir}/Observation/_search", data={"code": "x", "_count": "2"}
    ) as response:
        assert response.status == 200
    seen = upstream.seen[-1]
    assert seen["method"] == "POST" and seen["path"] == "/fhir/Observation/_search"
    assert seen["body"] == b"code=x&_count=2"


async def test_hapi_style_getpages_links_point_at_the_gateway_and_work(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    """A recorded HAPI FHIR searchset page: paging links use ``_getpages`` on the server base;
    the gateway signs them and, followed, sends exactly that link to the upstream."""
    upstream.body = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 5,
            "link": [
                {"relation": "self", "url": f"{upstream.base}/Patient?_count=2"},
                {
                    "relation": "next",
                    "url": f"{upstream.base}?_getpages=9c1b2e5d&_getpagesoffset=2&_count=2"
                    "&_pretty=true&_bundletype=searchset",
                },
            ],
            "entry": [
                {
                    "fullUrl": f"{upstream.base}/Patient/1",
                    "resource": {"resourceType": "Patient", "id": "1"},
                }
            ],
        }
    )
    async with client.get(f"{gw.fhir}/Patient?_count=2") as response:
        page = orjson.loads(await response.read())
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert next_url.startswith(f"{gw.fhir}/_page/")  # opaque and signed
    async with client.get(next_url) as response:
        assert response.status == 200
    seen = upstream.seen[-1]
    assert seen["path"] == "/fhir"
    assert ("_getpages", "9c1b2e5d") in seen["query"]


async def test_every_response_carries_a_request_id(
    gw: RunningGateway, client: aiohttp.ClientSession
) -> None:
    ids = set()
    for path in ("/fhir/Patient/p1", "/fhir/NotAType", "/healthz", "/metrics"):
        async with client.get(f"{gw.base}{path}") as response:
            ids.add(response.headers["X-Request-Id"])
    assert len(ids) == 4


async def test_metrics_count_requests_by_interaction_and_status(
    gw: RunningGateway, client: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        async with client.get(f"{gw.fhir}/Patient/p1") as response:
            await response.read()
    async with client.get(f"{gw.fhir}/NotAType") as response:
        await response.read()
    async with client.get(f"{gw.base}/metrics", headers=METRICS_AUTH) as response:
        text = await response.text()
    assert 'fhir_gateway_requests_total{interaction="read",status="200"} 3.0' in text
    assert 'fhir_gateway_requests_total{interaction="fhir",status="404"} 1.0' in text
    assert 'fhir_gateway_upstream_duration_seconds_count{interaction="read"} 3.0' in text
    assert "fhir_gateway_request_duration_seconds_bucket" in text


async def test_p21_metrics_need_their_token_and_name_no_ids(
    gw: RunningGateway,
    client: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    start_gateway: StartGateway,
    upstream: ScriptedUpstream,
    local_stack_env: Stack,
) -> None:
    async with client.get(f"{gw.fhir}/Patient/p1") as response:
        await response.read()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        async with http.get(f"{gw.base}/metrics", headers=headers) as response:
            assert response.status == 401
            assert "fhir_gateway" not in await response.text()
    async with http.get(f"{gw.base}/metrics", headers=METRICS_AUTH) as response:
        assert response.status == 200
        text = await response.text()
    assert "fhir_gateway_requests_total" in text
    assert "p1" not in text and "test-system" not in text  # no resource, patient or client ids
    unset = await start_gateway(upstream_url=upstream.base, mongodb_uri=local_stack_env.mongo_uri)
    async with http.get(f"{unset.base}/metrics", headers=METRICS_AUTH) as response:
        assert response.status == 404


async def test_readyz_reports_each_dependency(
    gw: RunningGateway, upstream: ScriptedUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gw.base}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"mongodb": "ok", "upstream": "ok"}
    # MongoDB refuses the next query (a fail point of the test database); the upstream fails too.
    await gw.server.app[MONGO].admin.command(
        {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["find"], "errorCode": 91},
        }
    )
    upstream.status = 503
    async with http.get(f"{gw.base}/readyz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["checks"] == {"mongodb": "unavailable", "upstream": "unavailable"}
    assert upstream.base not in str(body)
    async with http.get(f"{gw.base}/healthz") as response:
        assert response.status == 200


async def test_a_transaction_answer_that_does_not_line_up_is_not_released(
    gw: RunningGateway, upstream: ScriptedUpstream, client: aiohttp.ClientSession
) -> None:
    """Every entry of a transaction's answer is checked against the entry it answers: one answer
    more (or fewer) than the request held cannot be matched, so it is not released (fail closed,
    not ``zip`` silently skipping the extra entries)."""
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": observation, "request": {"method": "POST", "url": "Observation"}}],
    }
    smuggled = {"resourceType": "Patient", "id": "someone-else", "name": [{"family": "Hidden"}]}
    upstream.body = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": "201 Created"}, "resource": {**observation, "id": "o1"}},
                {"response": {"status": "200 OK"}, "resource": smuggled},
            ],
        }
    )
    async with client.post(
        gw.fhir, data=orjson.dumps(transaction), headers={"Content-Type": "application/fhir+json"}
    ) as response:
        assert response.status == 502
        text = await response.text()
    assert "Hidden" not in text and "someone-else" not in text
