"""Every attack on the authorization and token endpoints that SMART.md names is tried and refused:
S-07, S-09 … S-12, S-15, S-17, S-19, S-24, S-31 … S-33."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RunningGateway
from tests.support.browser import Browser, Page, authorize_url, callback_params, pkce_pair
from tests.support.clock import MovableClock
from tests.support.tokens import (
    MARIA,
    PUBLIC_APP,
    REDIRECT,
    ensure_public_client,
    ensure_user,
    flow_token,
)

pytestmark = pytest.mark.e2e

TOKEN_SCOPE = "openid fhirUser offline_access patient/*.rs"


def _params(gateway: RunningGateway, **overrides: str | None) -> dict[str, str]:
    _, challenge = pkce_pair()
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": PUBLIC_APP,
        "redirect_uri": REDIRECT,
        "scope": TOKEN_SCOPE,
        "state": "s-" + uuid.uuid4().hex,
        "aud": gateway.fhir,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


async def _authorize(gateway: RunningGateway, **overrides: str | None) -> aiohttp.ClientResponse:
    await ensure_public_client(gateway)
    async with aiohttp.ClientSession() as http:
        response = await http.get(
            authorize_url(gateway.base, **_params(gateway, **overrides)), allow_redirects=False
        )
        await response.read()
        return response


def _error_redirect(response: aiohttp.ClientResponse, error: str) -> dict[str, str]:
    assert response.status == 302, response.status
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    params = callback_params(location)
    assert params["error"] == error and "code" not in params
    return params


async def test_s09_rejects_plain_pkce(gateway: RunningGateway) -> None:
    response = await _authorize(gateway, code_challenge_method="plain")
    _error_redirect(response, "invalid_request")


async def test_s09_rejects_a_missing_challenge(gateway: RunningGateway) -> None:
    response = await _authorize(gateway, code_challenge=None, code_challenge_method=None)
    _error_redirect(response, "invalid_request")


async def test_s09_requires_state_and_echoes_it_on_errors(gateway: RunningGateway) -> None:
    _error_redirect(await _authorize(gateway, state=None), "invalid_request")
    params = _error_redirect(
        await _authorize(gateway, state="xyz", scope="patient/Foo.zz"), "invalid_scope"
    )
    assert params["state"] == "xyz"  # S-12: exactly the state sent


async def test_s10_wrong_audience_gets_no_code(gateway: RunningGateway) -> None:
    _error_redirect(await _authorize(gateway, aud="https://evil.example/fhir"), "invalid_request")
    _error_redirect(await _authorize(gateway, aud=None), "invalid_request")


async def test_s10_resource_is_accepted_for_aud(gateway: RunningGateway) -> None:
    response = await _authorize(gateway, aud=None, resource=gateway.fhir)
    assert response.status == 303 and "/auth/login?flow=" in response.headers["Location"]


async def test_s11_unregistered_redirect_is_an_error_page_never_a_redirect(
    gateway: RunningGateway,
) -> None:
    for redirect_uri in ("https://evil.example/cb", REDIRECT + "/x", None):
        response = await _authorize(gateway, redirect_uri=redirect_uri)
        assert response.status == 400 and "Location" not in response.headers
        assert response.content_type == "text/html"
    unknown = await _authorize(gateway, client_id="no-such-app")
    assert unknown.status == 400 and "Location" not in unknown.headers


async def test_s11_loopback_port_may_vary_for_native_apps(gateway: RunningGateway) -> None:
    response = await _authorize(gateway, redirect_uri="http://127.0.0.1:4242/callback")
    assert response.status == 303


async def test_s15_authorization_pages_refuse_framing_and_carry_csrf(
    gateway: RunningGateway,
) -> None:
    await ensure_public_client(gateway)
    async with Browser(gateway.base) as browser:
        page = await browser.get(authorize_url(gateway.base, **_params(gateway)))
        assert isinstance(page, Page)
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none'
        assert page.headers["X-Frame-Options"] == "DENY"
        assert "Access-Control-Allow-Origin" not in page.headers  # S-07: never on authorize
        form = page.forms[0]
        assert dict(form.fields)["csrf"]
        await ensure_user(gateway, MARIA)
        forged = form.data(
            values={"username": MARIA.username, "password": MARIA.password, "csrf": "forged"}
        )
        answer = await browser.submit(page, form, forged)
        assert isinstance(answer, Page) and answer.status == 400  # P-07


async def _code(gateway: RunningGateway, verifier_challenge: tuple[str, str]) -> str:
    await ensure_user(gateway, MARIA)
    await ensure_public_client(gateway)
    _, challenge = verifier_challenge
    async with Browser(gateway.base) as browser:
        page = await browser.get(
            authorize_url(
                gateway.base,
                **_params(gateway, code_challenge=challenge, scope="patient/*.rs offline_access"),
            )
        )
        assert isinstance(page, Page)
        page = await browser.login(page, MARIA.username, MARIA.password)
        assert isinstance(page, Page)
        form = page.forms[0]
        location = await browser.submit(page, form, form.data(button=("decision", "approve")))
        assert isinstance(location, str)
        return callback_params(location)["code"]


async def _token(
    http: aiohttp.ClientSession, gateway: RunningGateway, **data: str
) -> tuple[int, Any]:
    async with http.post(f"{gateway.base}/auth/token", data=data) as response:
        assert response.headers["Cache-Control"] == "no-store"
        return response.status, orjson.loads(await response.read())


def _exchange(code: str, verifier: str | None) -> dict[str, str]:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": PUBLIC_APP,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return data


@pytest.mark.parametrize("verifier", [None, "", "wrong-" + "x" * 50])
async def test_s17_missing_blank_or_wrong_verifier_is_invalid_grant(
    gateway: RunningGateway, http: aiohttp.ClientSession, verifier: str | None
) -> None:
    pair = pkce_pair()
    code = await _code(gateway, pair)
    status, body = await _token(http, gateway, **_exchange(code, verifier))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_s12_s31_code_is_single_use_and_reuse_revokes_its_tokens(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    verifier, challenge = pkce_pair()
    code = await _code(gateway, (verifier, challenge))
    status, first = await _token(http, gateway, **_exchange(code, verifier))
    assert status == 200 and "refresh_token" in first
    status, second = await _token(http, gateway, **_exchange(code, verifier))
    assert (status, second["error"]) == (400, "invalid_grant")
    # the tokens of the first redemption are revoked
    async with http.post(
        f"{gateway.base}/auth/introspect",
        data={"token": first["access_token"]},
        headers={"Authorization": f"Bearer {first['access_token']}"},
    ) as response:
        assert response.status == 401  # the bearer is no longer valid
    status, body = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=first["refresh_token"],
        client_id=PUBLIC_APP,
    )
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_s12_codes_expire_after_their_lifetime(
    start_gateway: Any, local_stack_env: Any, http: aiohttp.ClientSession
) -> None:
    clock = MovableClock()
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        authorization_code_lifetime_seconds=5,
        clock=clock,
    )
    verifier, challenge = pkce_pair()
    code = await _code(gateway, (verifier, challenge))
    clock.advance(5.5)
    status, body = await _token(http, gateway, **_exchange(code, verifier))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_s19_replayed_refresh_token_revokes_the_family(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(gateway, scope="patient/*.rs offline_access")
    old = tokens["refresh_token"]
    status, rotated = await _token(
        http, gateway, grant_type="refresh_token", refresh_token=old, client_id=PUBLIC_APP
    )
    assert status == 200 and rotated["refresh_token"] != old
    status, replay = await _token(
        http, gateway, grant_type="refresh_token", refresh_token=old, client_id=PUBLIC_APP
    )
    assert (status, replay["error"]) == (400, "invalid_grant")
    # the whole family is gone: the newest refresh token and access token too
    status, body = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=rotated["refresh_token"],
        client_id=PUBLIC_APP,
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    async with http.post(
        f"{gateway.base}/auth/introspect",
        data={"token": rotated["access_token"]},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ) as response:
        assert response.status == 401


async def test_s19_refresh_may_narrow_but_never_widen_the_scope(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(gateway, scope="patient/Observation.rs offline_access")
    status, body = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=PUBLIC_APP,
        scope="patient/*.rs offline_access",
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    # the refused attempt did not burn the refresh token; narrowing works, omitting keeps all
    status, narrowed = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=PUBLIC_APP,
        scope="patient/Observation.r",
    )
    assert status == 200 and narrowed["scope"] == "patient/Observation.r"
    status, full = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=narrowed["refresh_token"],
        client_id=PUBLIC_APP,
    )
    assert status == 200 and full["scope"] == tokens["scope"]


async def test_s19_refresh_token_is_bound_to_its_client(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(gateway, scope="patient/*.rs offline_access")
    await ensure_public_client(gateway, "other-app")
    status, body = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id="other-app",
    )
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_s19_a_public_clients_refresh_token_names_its_client(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """RFC 6749 6: a public client may refresh without client_id (SMART's JavaScript client does
    by default); rotation and replay detection hold as with it."""
    tokens = await flow_token(gateway, scope="patient/*.rs offline_access")
    old = tokens["refresh_token"]
    status, rotated = await _token(http, gateway, grant_type="refresh_token", refresh_token=old)
    assert status == 200 and rotated["refresh_token"] != old, rotated
    assert rotated["scope"] == tokens["scope"]
    status, replay = await _token(http, gateway, grant_type="refresh_token", refresh_token=old)
    assert (status, replay["error"]) == (400, "invalid_grant")
    status, body = await _token(
        http, gateway, grant_type="refresh_token", refresh_token=rotated["refresh_token"]
    )
    assert (status, body["error"]) == (400, "invalid_grant")  # the family was revoked
    status, body = await _token(http, gateway, grant_type="refresh_token", refresh_token="junk")
    assert (status, body["error"]) == (401, "invalid_client")


async def test_s33_no_implicit_no_password_grant(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    response = await _authorize(gateway, response_type="token")
    _error_redirect(response, "unsupported_response_type")
    await ensure_user(gateway, MARIA)
    status, body = await _token(
        http,
        gateway,
        grant_type="password",
        username=MARIA.username,
        password=MARIA.password,
        client_id=PUBLIC_APP,
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_s24_introspection_needs_authentication_and_hides_other_tokens(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    tokens = await flow_token(gateway, scope="patient/*.rs")
    async with http.post(
        f"{gateway.base}/auth/introspect", data={"token": tokens["access_token"]}
    ) as response:
        assert response.status == 401  # no client authentication, no bearer
    for junk in ("not-a-token", tokens["access_token"][:-4] + "AAAA"):
        async with http.post(
            f"{gateway.base}/auth/introspect",
            data={"token": junk},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        ) as r:
            assert r.status == 200 and orjson.loads(await r.read()) == {"active": False}


async def test_s25_revoking_an_unknown_token_answers_200(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await ensure_public_client(gateway)
    async with http.post(
        f"{gateway.base}/auth/revoke", data={"token": "nothing-like-ours", "client_id": PUBLIC_APP}
    ) as response:
        assert response.status == 200


async def test_s07_token_endpoint_cors_only_for_registered_origins(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    from gateway.appkeys import AUTH
    from smart_auth.clients import ClientType, new_client

    await gateway.server.app[AUTH].clients.add(
        new_client(
            client_id="spa-app",
            name="SPA",
            client_type=ClientType.PUBLIC,
            redirect_uris=("https://spa.example.org/cb",),
            scope="patient/*.rs",
            purposes=("PATRQT",),
            origins=("https://spa.example.org",),
        )
    )
    headers = {"Origin": "https://spa.example.org", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{gateway.base}/auth/token", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://spa.example.org"
    headers["Origin"] = "https://evil.example"
    async with http.options(f"{gateway.base}/auth/token", headers=headers) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    # Every answer, errors included, so that a browser app can read why a request failed.
    for path, data, status in (
        ("token", {"grant_type": "refresh_token", "refresh_token": "junk"}, 401),
        ("token", {"grant_type": "authorization_code", "client_id": "spa-app"}, 400),
        ("introspect", {"token": "junk"}, 401),
        ("revoke", {"token": "junk", "client_id": "spa-app"}, 200),
    ):
        for origin, allowed in (("https://spa.example.org", True), ("https://evil.example", False)):
            async with http.post(
                f"{gateway.base}/auth/{path}", data=data, headers={"Origin": origin}
            ) as response:
                assert response.status == status, (path, await response.text())
                cors = response.headers.get("Access-Control-Allow-Origin")
                assert cors == (origin if allowed else None), (path, origin)


async def test_p13_json_operators_in_token_fields_do_not_widen_lookups(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    await flow_token(gateway, scope="patient/*.rs offline_access")
    for value in ('{"$gt": ""}', '{"$ne": null}'):
        status, body = await _token(
            http, gateway, grant_type="refresh_token", refresh_token=value, client_id=PUBLIC_APP
        )
        assert (status, body["error"]) == (400, "invalid_grant")
        status, body = await _token(
            http, gateway, grant_type="refresh_token", refresh_token="x", client_id=value
        )
        assert body["error"] == "invalid_client"


async def test_s09_authorization_endpoint_takes_post(gateway: RunningGateway) -> None:
    await ensure_public_client(gateway)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base}/auth/authorize", data=_params(gateway), allow_redirects=False
        ) as response,
    ):
        assert response.status == 303 and "/auth/login?flow=" in response.headers["Location"]


async def test_s32_online_access_refresh_ends_with_the_session(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    from gateway.appkeys import AUTH

    tokens = await flow_token(gateway, scope="patient/*.rs online_access")
    status, refreshed = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=PUBLIC_APP,
    )
    assert status == 200
    auth = gateway.server.app[AUTH]
    maria = await auth.users.by_username(MARIA.username)
    assert maria is not None
    await auth.sessions.end_all(maria.user_id)  # the user signs out
    status, body = await _token(
        http,
        gateway,
        grant_type="refresh_token",
        refresh_token=refreshed["refresh_token"],
        client_id=PUBLIC_APP,
    )
    assert (status, body["error"]) == (400, "invalid_grant")
