"""Callers behind a reverse proxy (P-01): ``X-Forwarded-For``, ``-Proto`` and ``-Host`` are believed
only when the connection comes from an address of ``trusted_proxies``; from anyone else they are
ignored, so a caller cannot pose as another address (sign-in throttling and security events count
per address, P-05) or claim https.

The caller's address is the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy
(each proxy appends the address it saw). The scheme is the first ``X-Forwarded-Proto`` value. The
handlers see a request with that ``remote``, ``scheme`` and ``host``; the gateway still builds every
URL from ``public_base_url``, never from ``Host`` (P-10).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.web.requestkeys import CALLER, FORWARDED_HTTPS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?$")


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


def caller_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str | None:
    """The caller's address: the peer's, or, when the peer is a trusted proxy, the right-most
    forwarded address that is not one (the left-most when all are). ``None`` when a forwarded
    entry on the way cannot be read: then nothing forwarded is believed."""

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    address = _address(peer)
    if address is None or not is_trusted(address):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    caller = peer
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:
            return None
        caller = str(parsed)
        if not is_trusted(parsed):
            break
    return caller


def forwarded(trusted: Sequence[Network]) -> Middleware:
    """The middleware that applies trusted proxies' ``X-Forwarded-*`` headers."""

    @web.middleware
    async def apply_forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = _address(request.remote)
        if address is None or not any(address in network for network in trusted):
            return await handler(request)
        caller = caller_address(
            request.remote, request.headers.getall("X-Forwarded-For", []), trusted
        )
        if caller is not None and caller != request.remote:
            request[CALLER] = caller
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            request[FORWARDED_HTTPS] = proto == "https"
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if not _HOST.match(host):
            host = ""
        return await handler(
            request.clone(
                remote=request.get(CALLER, request.remote),
                scheme=proto if proto in ("http", "https") else request.scheme,
                host=host or request.host,
            )
        )

    return apply_forwarded
