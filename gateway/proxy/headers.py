"""Which HTTP headers cross the gateway, in each direction (P-11).

Both directions are allow-lists: a header not named here is dropped. Hop-by-hop headers (RFC 9110
7.6.1) and any header named in ``Connection`` are dropped even if someone adds them to a list. The
caller's ``Authorization`` and ``Cookie`` never reach the upstream: the gateway authenticates to it
with its own credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Caller -> upstream: conditional requests and FHIR preferences only. Accept, Content-Type and
# Authorization are set by the gateway itself.
REQUEST_ALLOW = frozenset(
    {
        "accept-language",
        "if-match",
        "if-modified-since",
        "if-none-exist",
        "if-none-match",
        "prefer",
    }
)

# Upstream -> caller: versioning and location headers (Location and Content-Location are rewritten
# to the gateway's base by the caller of ``response_headers``). Content-Type is the gateway's own.
RESPONSE_ALLOW = frozenset({"content-location", "etag", "last-modified", "location", "retry-after"})


def _connection_listed(headers: Mapping[str, str]) -> set[str]:
    listed: set[str] = set()
    for key, value in headers.items():
        if key.lower() == "connection":
            listed.update(token.strip().lower() for token in value.split(","))
    return listed


def _filter(
    items: Iterable[tuple[str, str]], allow: frozenset[str], listed: set[str]
) -> dict[str, str]:
    kept: dict[str, str] = {}
    for key, value in items:
        name = key.lower()
        if name in allow and name not in HOP_BY_HOP and name not in listed:
            kept[key] = value
    return kept


def request_headers(caller: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers that may be forwarded to the upstream."""
    return _filter(caller.items(), REQUEST_ALLOW, _connection_listed(caller))


def response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The upstream's response headers that may be passed back to the caller."""
    return _filter(upstream.items(), RESPONSE_ALLOW, _connection_listed(upstream))
