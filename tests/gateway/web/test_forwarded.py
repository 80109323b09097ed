"""P-01: ``X-Forwarded-*`` is believed from configured proxy addresses only (``trusted_proxies``):
the caller's address that sign-in throttling and the audit trail count (P-05, P-18), and the
scheme that decides ``Strict-Transport-Security``."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest

from gateway.audit.codes import USER_SYSTEM
from gateway.audit.store import AuditQuery, AuditReader
from gateway.web.forwarded import caller_address
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.support.browser import Browser, Page
from tests.support.tokens import AMELIA, ensure_user, services

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "caller"),
    [
        ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # not a proxy: header ignored
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["203.0.113.9, 203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # right-most
        ("127.0.0.1", ["203.0.113.9", "10.1.2.3"], "203.0.113.9"),  # several header lines
        ("127.0.0.1", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # all proxies: the left-most
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["not-an-address, 203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["203.0.113.7, unknown"], None),  # unreadable on the way: believe nothing
    ],
)
def test_p01_the_caller_is_the_right_most_address_no_trusted_proxy_added(
    peer: str, forwarded: list[str], caller: str | None
) -> None:
    assert caller_address(peer, forwarded, PROXIES) == caller


async def _sign_in_from(gateway: RunningGateway, headers: dict[str, str]) -> str:
    """Sign in through the pages with ``headers`` on every request; the address recorded."""
    user_id = await ensure_user(gateway, AMELIA)
    async with Browser(gateway.base) as browser:
        browser.session.headers.update(headers)
        page = await browser.get(f"{gateway.base}/auth/login")
        assert isinstance(page, Page)
        page = await browser.login(page, AMELIA.username, AMELIA.password)
        assert isinstance(page, Page) and page.status == 200
    query = AuditQuery(agent=f"{USER_SYSTEM}|{user_id}", subtype="110122", count=1)
    [login] = (await AuditReader(services(gateway).db).search(query)).events
    return str(next(a["network"]["address"] for a in login["agent"] if "network" in a))


@pytest.mark.e2e
async def test_p01_forwarded_headers_count_only_from_trusted_proxies(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    stack = {"upstream_url": local_stack_env.upstream.base_url}
    plain = await start_gateway(**stack, mongodb_uri=local_stack_env.mongo_uri)
    assert await _sign_in_from(plain, spoofed) == "127.0.0.1"
    proxied = await start_gateway(
        **stack, mongodb_uri=local_stack_env.mongo_uri, trusted_proxies="127.0.0.1/32,::1"
    )
    assert await _sign_in_from(proxied, spoofed) == "203.0.113.7"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{plain.base}/healthz", headers=spoofed) as response:
            assert "Strict-Transport-Security" not in response.headers
        async with http.get(f"{proxied.base}/healthz", headers=spoofed) as response:
            assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        async with http.get(f"{proxied.base}/healthz") as response:  # plain http behind it
            assert "Strict-Transport-Security" not in response.headers
