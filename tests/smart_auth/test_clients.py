"""The client registry (SMART 2.2 "Registering a SMART App"; S-11, S-14, S-21, S-27): registrations
checked, redirect URIs matched, requested scopes narrowed to the registration."""

from __future__ import annotations

import pytest

from smart_auth.clients import ClientError, ClientType, narrow_scope, new_client
from smart_auth.scopes import ScopeError, ScopeSet


def _client(**overrides: object) -> object:
    values: dict[str, object] = dict(
        client_id="unit-app",
        name="Unit",
        client_type=ClientType.PUBLIC,
        redirect_uris=("https://app.example/cb", "http://127.0.0.1:7000/cb"),
        scope="openid patient/*.rs",
        purposes=("PATRQT",),
    )
    values.update(overrides)
    return new_client(**values)  # type: ignore[arg-type]


def test_s11_redirect_uris_match_exactly_except_the_loopback_port() -> None:
    client = _client()
    assert client.check_redirect_uri("https://app.example/cb")  # type: ignore[attr-defined]
    for other in (
        "https://app.example/cb/",
        "https://app.example/CB",
        "https://app.example/cb?x=1",
        "http://app.example/cb",
        "http://127.0.0.1:7000/other",
    ):
        assert not client.check_redirect_uri(other), other  # type: ignore[attr-defined]
    assert client.check_redirect_uri("http://127.0.0.1:9999/cb")  # type: ignore[attr-defined]
    assert client.get_default_redirect_uri() is None  # type: ignore[attr-defined]


def test_client_registrations_are_checked() -> None:
    with pytest.raises(ClientError):
        _client(purposes=("NOPE",))
    with pytest.raises(ClientError):
        _client(redirect_uris=("http://evil.example/cb",))
    with pytest.raises(ClientError):
        _client(scope="system/*.rs")  # system scopes need a confidential-asymmetric client
    with pytest.raises(ClientError):
        _client(client_type=ClientType.SYMMETRIC, secret="too-short")
    with pytest.raises(ClientError):
        _client(introspect_all_tokens=True)  # a resource server authenticates: confidential


def test_s27_requests_are_narrowed_to_the_registration_and_malformed_ones_refused() -> None:
    allowed = ScopeSet.parse("openid patient/Observation.rs patient/Patient.r")
    assert narrow_scope(
        "openid patient/Observation.rs?category=laboratory patient/Patient.rs "
        "patient/Condition.rs offline_access",
        allowed,
    ) == ("openid patient/Observation.rs?category=laboratory patient/Patient.r")
    with pytest.raises(ScopeError):
        narrow_scope("patient/Observation.sr", allowed)
    assert narrow_scope("patient/Condition.rs offline_access", allowed) is None


@pytest.mark.parametrize(
    ("requested", "registered", "granted"),
    [
        # a wildcard narrowed to the registered types
        (
            "system/*.rs",
            "system/Patient.rs system/Observation.rs",
            "system/Patient.rs system/Observation.rs",
        ),
        # letters narrowed, the registered restriction kept
        (
            "patient/*.cruds",
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=laboratory",
        ),
        # a wider registration leaves the request as asked
        ("patient/Observation.rs", "patient/*.cruds", "patient/Observation.rs"),
        # parts covered by another part are left out
        ("patient/*.cruds", "patient/*.rs patient/Observation.r", "patient/*.rs"),
        # v1 stays v1 where it can
        (
            "patient/*.read",
            "patient/Observation.rs patient/Patient.r",
            "patient/Observation.read patient/Patient.r",
        ),
        ("user/*.rs", "patient/*.rs", None),
    ],
)
def test_s21_s14_the_grant_is_the_intersection_with_the_registration(
    requested: str, registered: str, granted: str | None
) -> None:
    assert narrow_scope(requested, ScopeSet.parse(registered)) == granted
