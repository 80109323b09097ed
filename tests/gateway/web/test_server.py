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


def _post_head(target: bytes, length: int) -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


async def test_a_request_body_that_stops_arriving_is_a_408_and_the_connection_closes(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    """Slow loris on the body: a client that sent its head and a part of its body, then nothing,
    held its connection and handler until the 75 s keep-alive; now ``body_idle_timeout_seconds``
    without a byte is a 408, and the connection closes after it."""
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        body_idle_timeout_seconds=1.0,
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.settings.port)
    started = time.monotonic()
    try:
        writer.write(_post_head(b"/auth/token", 500) + b"grant_type=client_cre")
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()  # to the close
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    outcome = _outcome(answer, 408)
    assert outcome["issue"][0]["code"] == "timeout"  # type: ignore[index]
    assert 0.9 < elapsed < 3.5, elapsed


async def test_a_slow_body_that_keeps_arriving_is_read_whole(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    """The timeout is on silence, not on the whole body: a body trickling in a few bytes at a
    time, each within the timeout, is read to its end and answered (here by the token
    endpoint's own refusal of an unknown client, RFC 6749 JSON)."""
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        body_idle_timeout_seconds=1.0,
    )
    body = b"grant_type=client_credentials&client_id=nobody&client_secret=x"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.settings.port)
    started = time.monotonic()
    try:
        writer.write(_post_head(b"/auth/token", len(body)))
        for at in range(0, len(body), 8):
            writer.write(body[at : at + 8])
            await writer.drain()
            await asyncio.sleep(0.2)  # five times within the timeout
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert time.monotonic() - started > 1.2  # longer than the timeout, all told
    status = int(head.split(b" ", 2)[1])
    assert status == 401, head
