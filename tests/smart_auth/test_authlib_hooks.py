"""The one private Authlib hook the protocol core overrides, and why the dependency is pinned below
the next major version: ``RefreshTokenGrant._validate_token_scope`` (RFC 6749 6: a refresh may
narrow the scope, never widen it; S-19). If a new Authlib stopped calling it, refreshes would lose
that check silently; this test notices."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from authlib.oauth2.rfc6749.grants import RefreshTokenGrant

from smart_auth.server import SmartRefreshGrant
from tests.conftest import RunningGateway
from tests.support.tokens import PUBLIC_APP, flow_token

pytestmark = pytest.mark.e2e


def test_the_hook_still_exists_in_authlib() -> None:
    assert callable(getattr(RefreshTokenGrant, "_validate_token_scope", None))
    assert SmartRefreshGrant._validate_token_scope is not RefreshTokenGrant._validate_token_scope


async def test_s19_every_refresh_goes_through_the_override(
    gateway: RunningGateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = SmartRefreshGrant._validate_token_scope

    def spy(self: SmartRefreshGrant, token: Any) -> None:
        calls.append(str(self.request.payload.scope))
        original(self, token)

    monkeypatch.setattr(SmartRefreshGrant, "_validate_token_scope", spy)
    tokens = await flow_token(gateway)
    wider = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": PUBLIC_APP,
        "scope": f"{tokens['scope']} user/*.rs",
    }
    async with http.post(f"{gateway.base}/auth/token", data=wider) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_scope"
    assert calls and "user/*.rs" in calls[-1]  # refused by the override, not by chance
