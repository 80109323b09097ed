"""The HTTP server under the application (``gateway/web/server.py``), driven over raw sockets
against a gateway on its own runner: what aiohttp's parser refuses is answered with an
OperationOutcome that does not repeat the request (P-12, P-14), a request head that trickles in is
cut off (slow loris), and no response names the server software."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from gateway.web.server import parser_limits
from tests.conftest import RunningGateway, Stack, StartGateway

pytestmark = pytest.mark.e2e

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwYXQtYW1lbGlhLXJvc3NpIn0.c2lnbmF0dXJl"


async def _exchange(gateway: RunningGateway, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; everything the gateway answers until it closes."""
    port = gateway.settings.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _get(target: bytes, *header_lines: bytes) -> bytes:
    head = b"GET " + target + b" HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
    return head + b"".join(header_lines) + b"\r\n"


def _outcome(answer: bytes, status: int) -> dict[str, object]:
    got, headers, body = _parse(answer)
    assert got == status, answer[:300]
    assert headers["content-type"].startswith("application/fhir+json")
    assert "server" not in headers
    outcome: dict[str, object] = orjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome


async def test_p12_headers_just_over_each_limit_get_an_operation_outcome(
    gateway: RunningGateway,
) -> None:
    """Over the gateway's own limits and over the parser's (which used to answer a plain-text
    400): 431 for a header too large or too many headers, 414 for a request line too long."""
    settings = gateway.settings
    limits = parser_limits(settings)
    big = settings.max_header_bytes - len("X-Big") + 1  # name + value just over the limit
    for size in (big, limits["max_field_size"] + 1):
        answer = await _exchange(
            gateway, _get(b"/fhir/metadata", b"X-Big: " + b"a" * size + b"\r\n")
        )
        _outcome(answer, 431)
    for count in (settings.max_header_count + 1, limits["max_headers"] + 1):
        many = [b"X-H%d: v\r\n" % n for n in range(count)]
        _outcome(await _exchange(gateway, _get(b"/fhir/metadata", *many)), 431)
    for length in (settings.max_url_bytes + 1, limits["max_line_size"] + 1):
        target = b"/fhir/Patient?_id=" + b"a" * (length - len("/fhir/Patient?_id="))
        _outcome(await _exchange(gateway, _get(target)), 414)


async def test_p14_a_malformed_request_line_is_answered_without_repeating_it(
    gateway: RunningGateway,
) -> None:
    """aiohttp's own 400 repeated the request line, an access token in the query included."""
    answer = await _exchange(
        gateway, _get(b"/fhir/Patient?access_token=" + TOKEN.encode() + b"&x=\xff")
    )
    outcome = _outcome(answer, 400)
    assert TOKEN.encode() not in answer and b"access_token" not in answer
    assert outcome["issue"][0]["code"] == "invalid"  # type: ignore[index]


async def test_a_request_head_that_trickles_in_is_cut_off(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    """Slow loris: a client sending its headers a byte at a time was disconnected only by the
    75 s keep-alive; now the head must be complete within ``header_read_timeout_seconds``."""
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        header_read_timeout_seconds=1.0,
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.settings.port)
    started = time.monotonic()
    closed_after: float | None = None
    try:
        for byte in _get(b"/healthz", b"X-Slow: " + b"s" * 200 + b"\r\n"):
            writer.write(bytes([byte]))
            await writer.drain()
            if await _closed(reader, 0.05):
                closed_after = time.monotonic() - started
                break
    except ConnectionError:
        closed_after = time.monotonic() - started
    finally:
        writer.close()
    assert closed_after is not None, "the trickling client was never cut off"
    assert 0.9 < closed_after < 2.5, closed_after


async def test_an_idle_keep_alive_connection_is_not_cut_by_the_head_timeout(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    """The head timeout starts with a head's first byte: a keep-alive connection that waits for
    its next request is left to the keep-alive time, and a request sent after the head timeout
    has passed is answered."""
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        header_read_timeout_seconds=0.5,
    )
    opened: list[object] = []

    async def count(*_: object) -> None:
        opened.append(object())

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        for _ in range(3):
            async with http.get(f"{gateway.base}/healthz") as response:
                assert response.status == 200
            await asyncio.sleep(1.0)
    assert len(opened) == 1  # one connection served all three, a second apart


async def test_no_response_names_the_server_software(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """Every kind of answer: the FHIR API, an OperationOutcome error, a sign-in page, a static
    file, an operational endpoint, a redirect (``Server: Python/3.11 aiohttp/3.14.5`` before)."""
    for path in (
        "/fhir/metadata",
        "/fhir/Patient",
        "/fhir/Nothing/x/y/z",
        "/auth/login?flow=unknown",
        "/auth/static/auth.css",
        "/healthz",
        "/auth/login",
        "/nowhere",
    ):
        async with http.get(f"{gateway.base}{path}", allow_redirects=False) as response:
            await response.read()
            assert "Server" not in response.headers, (path, response.headers["Server"])
    answer = await _exchange(gateway, b"NOT HTTP AT ALL\r\n\r\n")
    assert b"\r\nServer:" not in answer.partition(b"\r\n\r\n")[0]


async def _closed(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), wait)
    except TimeoutError:
        return False
    return data == b""
