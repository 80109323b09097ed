"""URL rewriting (P-10, P-11): no upstream URL reaches the caller."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.rewrite import UrlRewriter

UPSTREAM = "http://fhir-internal:8080/fhir"
ALIAS = "https://hapi.internal.example/baseR4"
PUBLIC = "https://gateway.example.org/fhir"


@pytest.fixture
def rewriter() -> UrlRewriter:
    return UrlRewriter([UPSTREAM, ALIAS], PUBLIC)


def test_p11_bundle_links_and_full_urls_are_rewritten(rewriter: UrlRewriter) -> None:
    bundle = {
        "resourceType": "Bundle",
        "link": [
            {"relation": "self", "url": f"{UPSTREAM}/Patient?_count=2"},
            {"relation": "next", "url": f"{ALIAS}?_getpages=abc&_getpagesoffset=2"},
        ],
        "entry": [{"fullUrl": f"{UPSTREAM}/Patient/p1", "resource": {"resourceType": "Patient"}}],
    }
    out = orjson.loads(rewriter.body_to_public(orjson.dumps(bundle)))
    assert out["link"][0]["url"] == f"{PUBLIC}/Patient?_count=2"
    assert out["link"][1]["url"] == f"{PUBLIC}?_getpages=abc&_getpagesoffset=2"
    assert out["entry"][0]["fullUrl"] == f"{PUBLIC}/Patient/p1"


def test_p11_capability_statement_implementation_url(rewriter: UrlRewriter) -> None:
    body = orjson.dumps(
        {"resourceType": "CapabilityStatement", "implementation": {"url": UPSTREAM}}
    )
    assert orjson.loads(rewriter.body_to_public(body))["implementation"]["url"] == PUBLIC


def test_p11_escaped_slashes_are_rewritten(rewriter: UrlRewriter) -> None:
    body = b'{"url":"' + UPSTREAM.replace("/", "\\/").encode() + b'\\/Patient\\/1"}'
    assert orjson.loads(rewriter.body_to_public(body))["url"] == f"{PUBLIC}/Patient/1"


def test_a_longer_host_name_sharing_the_prefix_is_not_touched(rewriter: UrlRewriter) -> None:
    body = orjson.dumps(
        {"system": f"{UPSTREAM}x/identifiers", "other": "http://fhir-internal:80801"}
    )
    assert rewriter.body_to_public(body) == body


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_p11_no_upstream_base_survives_a_rewrite(suffix: str) -> None:
    rewriter = UrlRewriter([UPSTREAM, ALIAS], PUBLIC)
    for boundary in ("/", "?", "#"):
        body = orjson.dumps({"a": [UPSTREAM + boundary + suffix, {"b": ALIAS + boundary + suffix}]})
        decoded = orjson.loads(rewriter.body_to_public(body))
        assert decoded["a"][0] == PUBLIC + boundary + suffix
        assert decoded["a"][1]["b"] == PUBLIC + boundary + suffix
    exact = orjson.loads(rewriter.body_to_public(orjson.dumps([UPSTREAM, ALIAS, suffix])))
    assert exact[:2] == [PUBLIC, PUBLIC]


@given(st.text(alphabet="abcXYZ019-_.", min_size=1, max_size=20))
def test_a_base_followed_by_more_name_is_not_a_base(suffix: str) -> None:
    rewriter = UrlRewriter([UPSTREAM], PUBLIC)
    body = orjson.dumps({"system": UPSTREAM + suffix})
    assert rewriter.body_to_public(body) == body


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"{UPSTREAM}/Patient/1/_history/2", f"{PUBLIC}/Patient/1/_history/2"),
        (f"{ALIAS}/Observation/9", f"{PUBLIC}/Observation/9"),
        ("Patient/1/_history/2", "Patient/1/_history/2"),
        ("http://elsewhere.example/fhir/Patient/1", None),
        (f"{PUBLIC}/Patient/1", f"{PUBLIC}/Patient/1"),
    ],
)
def test_p11_location_headers(rewriter: UrlRewriter, header: str, expected: str | None) -> None:
    assert rewriter.url_to_public(header) == expected


def test_request_bodies_point_back_at_the_upstream(rewriter: UrlRewriter) -> None:
    body = orjson.dumps({"entry": [{"fullUrl": f"{PUBLIC}/Patient/new"}]})
    out = orjson.loads(rewriter.body_to_upstream(body))
    assert out["entry"][0]["fullUrl"] == f"{UPSTREAM}/Patient/new"


def _replaced_form_by_form(body: bytes, sources: list[str], target: str) -> bytes:
    """Every form of every base replaced in turn, each looked for in the whole body: what the
    rewriter must equal however it skips work."""

    def forms(base: str) -> list[bytes]:
        plain = base.encode()
        escaped = plain.replace(b"/", b"\\/")
        return [plain + b for b in (b"/", b"?", b"#", b'"')] + [
            escaped + b for b in (b"\\/", b"?", b"#", b'"')
        ]

    for source in sources:
        for old, new in zip(forms(source), forms(target), strict=True):
            body = body.replace(old, new)
    return body


_BODY_PIECES = [
    UPSTREAM,
    ALIAS,
    PUBLIC,
    UPSTREAM.replace("/", "\\/"),
    ALIAS.replace("/", "\\/"),
    "/",
    "\\/",
    "\\",
    "?",
    "#",
    '"',
    "x",
]


@given(st.lists(st.sampled_from(_BODY_PIECES), max_size=16))
def test_p11_property_rewriting_equals_replacing_every_form_in_turn(pieces: list[str]) -> None:
    body = "".join(pieces).encode()
    rewriter = UrlRewriter([UPSTREAM, ALIAS], PUBLIC)
    assert rewriter.body_to_public(body) == _replaced_form_by_form(body, [UPSTREAM, ALIAS], PUBLIC)
    assert rewriter.body_to_upstream(body) == _replaced_form_by_form(body, [PUBLIC], UPSTREAM)
