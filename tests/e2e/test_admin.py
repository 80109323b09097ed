"""Administration (SECURITY.md P-08, P-09, P-17): the ``fhir-gateway`` client/user/key commands, the
admin API, key rotation with overlap, and the demo registrations."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.appkeys import AUDIT, AUTH
from gateway.audit.codes import USER_SYSTEM
from gateway.audit.store import AuditQuery, AuditReader
from gateway.cli import main
from gateway.cli.admin import register_demo
from smart_auth.accounts.users import Role
from tests.conftest import SESSION_KEK, RunningGateway, Stack
from tests.support.tokens import minted_token

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli_env(local_stack_env: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    database = f"test_cli_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("FHIR_GATEWAY_MONGODB_URI", local_stack_env.mongo_uri)
    monkeypatch.setenv("FHIR_GATEWAY_MONGODB_DATABASE", database)
    monkeypatch.setenv("FHIR_GATEWAY_KEY_ENCRYPTION_KEY", SESSION_KEK)
    return database


def test_p09_clients_and_users_commands(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-confidential-client-secret-of-40-chars!")
    assert (
        main(
            [
                "clients",
                "add",
                "--client-id",
                "cli-app",
                "--name",
                "CLI App",
                "--redirect-uri",
                "https://cli.example.org/cb",
                "--redirect-uri",
                "https://cli.example.org/cb2",
                "--scopes",
                "openid patient/*.rs",
                "--purpose",
                "TREAT",
                "--secret-file",
                str(secret),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "clients",
                "add",
                "--client-id",
                "cli-public",
                "--name",
                "Public",
                "--redirect-uri",
                "https://p.example.org/cb",
                "--scopes",
                "patient/*.rs",
                "--purpose",
                "PATRQT",
                "--public",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "clients",
                "add",
                "--client-id",
                "bad",
                "--name",
                "Bad",
                "--scopes",
                "patient/*.rs",
                "--purpose",
                "NOT-A-CODE",
                "--public",
            ]
        )
        == 1
    )
    capsys.readouterr()
    assert main(["clients", "list"]) == 0
    listed = capsys.readouterr().out
    assert "cli-app\tconfidential-symmetric" in listed and "cli-public\tpublic" in listed
    assert "a-confidential-client-secret" not in listed
    assert main(["clients", "remove", "--client-id", "cli-public"]) == 0
    assert main(["clients", "remove", "--client-id", "cli-public"]) == 1

    weak = tmp_path / "weak"
    weak.write_text("password1234\n")
    assert (
        main(
            [
                "users",
                "add",
                "--username",
                "cliuser",
                "--role",
                "patient",
                "--fhir-user",
                "Patient/pat-chloe-bennett",
                "--password-file",
                str(weak),
            ]
        )
        == 1
    )
    assert "common" in capsys.readouterr().err  # P-03, said plainly
    good = tmp_path / "good"
    good.write_text("a long and unusual passphrase\n")
    assert (
        main(
            [
                "users",
                "add",
                "--username",
                "cliuser",
                "--role",
                "patient",
                "--fhir-user",
                "Patient/pat-chloe-bennett",
                "--password-file",
                str(good),
            ]
        )
        == 0
    )
    assert main(["keys", "rotate"]) == 0
    assert "new signing key" in capsys.readouterr().out


async def test_p17_rotation_keeps_the_old_key_published_until_its_tokens_expire(
    gateway: RunningGateway,
) -> None:
    keys = gateway.server.app[AUTH].keys
    old_token = await minted_token(gateway)
    old = await keys.signing_key()
    new = await keys.rotate()
    assert new.kid != old.kid and (await keys.signing_key()).kid == new.kid
    published = await keys.public_jwks()
    assert {k["kid"] for k in published["keys"]} >= {old.kid, new.kid}
    assert all("d" not in k for k in published["keys"])
    jwt.decode(old_token, KeySet.import_key_set(published), algorithms=["RS256"])  # still verifies
    new_token = await minted_token(gateway)
    assert (
        jwt.decode(new_token, KeySet.import_key_set(published), algorithms=["RS256"]).header["kid"]
        == new.kid
    )
    # a rotation that lost the race keeps the winner's key
    assert (await keys.rotate(expected_kid=old.kid)).kid == new.kid


async def test_p08_p09_admin_api_roles_and_typed_bodies(gateway: RunningGateway) -> None:
    from tests.support.browser import Browser, Page
    from tests.support.tokens import HANNAH, ensure_user

    await ensure_user(gateway, HANNAH)
    async with Browser(gateway.base) as browser:
        page = await browser.get(f"{gateway.base}/auth/login")
        assert isinstance(page, Page)
        await browser.login(page, HANNAH.username, HANNAH.password)
        async with browser.session.get(f"{gateway.base}/admin/clients") as response:
            assert response.status == 403  # a practitioner is no administrator
    admin = await _admin_browser(gateway)
    try:
        async with admin.session.get(f"{gateway.base}/auth/session") as response:
            csrf = (await response.json())["csrf"]
        body: dict[str, Any] = {
            "client_id": "api-app",
            "name": "API App",
            "type": "public",
            "redirect_uris": ["https://api.example.org/cb"],
            "scope": "patient/*.rs",
            "purposes": ["PATRQT"],
        }
        async with admin.session.post(f"{gateway.base}/admin/clients", json=body) as response:
            assert response.status == 403  # no CSRF header
        headers = {"X-CSRF-Token": csrf}
        async with admin.session.post(
            f"{gateway.base}/admin/clients", json=body, headers=headers
        ) as response:
            assert response.status == 201
        injected = {**body, "client_id": {"$gt": ""}}
        async with admin.session.post(
            f"{gateway.base}/admin/clients", json=injected, headers=headers
        ) as response:
            assert response.status == 400  # P-13
        async with admin.session.delete(
            f"{gateway.base}/admin/clients/api-app", headers=headers
        ) as response:
            assert response.status == 204
        async with admin.session.post(
            f"{gateway.base}/admin/keys/rotate", headers=headers
        ) as response:
            assert response.status == 200
        user = await gateway.server.app[AUTH].users.by_username("admin2")
        assert user is not None
        reader = AuditReader(gateway.server.app[AUTH].db)
        page = await reader.search(AuditQuery(agent=f"{USER_SYSTEM}|{user.user_id}", count=100))
        acts = {(e["subtype"][0]["code"], e["action"]) for e in page.events}
        # P-09, A-01: an app registered and removed, the signing key rotated
        assert {("110131", "C"), ("110131", "D"), ("110129", "U")} <= acts
    finally:
        await admin.close()


async def _admin_browser(gateway: RunningGateway) -> Any:
    from smart_auth.accounts import mfa
    from tests.support.browser import Browser, Page

    auth = gateway.server.app[AUTH]
    user = await auth.users.by_username("admin2")
    if user is None:
        user = await auth.users.add(
            username="admin2", role=Role.ADMIN, password="administrator passphrase"
        )
        await auth.users.enrol_mfa(user.user_id, mfa.new_secret(), [])
        user = await auth.users.by_username("admin2")
    secret = await auth.users.mfa_secret(user) if user is not None else None
    assert secret is not None
    browser = Browser(gateway.base)
    page = await browser.get(f"{gateway.base}/auth/login")
    assert isinstance(page, Page)
    page = await browser.login(page, "admin2", "administrator passphrase")
    assert isinstance(page, Page)
    form = page.forms[0]
    done = await browser.submit(page, form, form.data(values={"code": mfa.current_code(secret)}))
    assert isinstance(done, Page) and done.status == 200
    return browser


KEYS = Path(__file__).resolve().parents[2] / "fixtures" / "keys"
PRIVATE_KEY = json.loads((KEYS / "backend-service.private.jwk.json").read_text())


async def test_demo_registrations_from_fixtures(gateway: RunningGateway) -> None:
    auth = gateway.server.app[AUTH]
    audit = gateway.server.app[AUDIT]
    first = await register_demo(auth, audit)
    again = await register_demo(auth, audit)  # idempotent
    assert first == again
    assert {"demo-patient-app", "demo-clinician-app", "demo-backend-service"} <= set(first)
    maria = await auth.users.by_username("maria")
    assert maria is not None and maria.related_persons == ("relperson-maria-garcia",)
    backend = await auth.clients.get("demo-backend-service")
    assert backend is not None and backend.jwks is not None
    assert PRIVATE_KEY["kid"] == backend.jwks["keys"][0]["kid"]
