"""Header allow-lists in both directions (P-02, P-11)."""

from __future__ import annotations

from gateway.proxy.headers import HOP_BY_HOP, REQUEST_ALLOW, request_headers, response_headers


def test_p02_callers_authorization_and_cookies_are_never_forwarded() -> None:
    forwarded = request_headers(
        {
            "Authorization": "Bearer caller-token",
            "Cookie": "session=abc",
            "Proxy-Authorization": "Basic eA==",
            "If-Match": 'W/"3"',
            "Prefer": "return=representation",
        }
    )
    assert forwarded == {"If-Match": 'W/"3"', "Prefer": "return=representation"}


def test_p11_hop_by_hop_and_unknown_headers_are_dropped() -> None:
    forwarded = request_headers(
        {
            "Connection": "keep-alive, If-None-Match",
            "Keep-Alive": "timeout=5",
            "Transfer-Encoding": "chunked",
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "If-None-Match": 'W/"1"',
            "If-Modified-Since": "Tue, 01 Jan 2030 00:00:00 GMT",
        }
    )
    # If-None-Match is allowed, but this request lists it in Connection: it is hop-by-hop here.
    assert forwarded == {"If-Modified-Since": "Tue, 01 Jan 2030 00:00:00 GMT"}


def test_p11_upstream_response_headers_are_filtered() -> None:
    kept = response_headers(
        {
            "ETag": 'W/"2"',
            "Last-Modified": "Tue, 01 Jan 2030 00:00:00 GMT",
            "Location": "http://up/fhir/Patient/1/_history/2",
            "Server": "Internal-FHIR/1.2 (build host db-7)",
            "Set-Cookie": "upstream=1",
            "X-Powered-By": "Express",
            "Transfer-Encoding": "chunked",
        }
    )
    assert set(kept) == {"ETag", "Last-Modified", "Location"}


def test_hop_by_hop_never_allowed() -> None:
    assert not (REQUEST_ALLOW & HOP_BY_HOP)
