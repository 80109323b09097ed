"""Unit tests of the protocol core's pure parts (no server, no database)."""

from __future__ import annotations

import time

import pytest
from joserfc.jwk import ECKey, RSAKey

from smart_auth.accounts import mfa
from smart_auth.accounts.passwords import WeakPassword, check_policy, hash_password, verify_password
from smart_auth.client_keys import KeyResolutionError, select_key
from smart_auth.clients import ClientError, ClientType, narrow_scope, new_client
from smart_auth.consent_screen import consent_terms, describe, granted_scope, screen
from smart_auth.jwks import max_age
from smart_auth.pkce import s256_matches
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


def test_s17_s256_only() -> None:
    verifier = "v" * 43
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    assert s256_matches(verifier, create_s256_code_challenge(verifier))
    assert not s256_matches(verifier, verifier)  # a "plain" challenge never matches


def test_p03_password_policy_and_hashing() -> None:
    for weak in ("short", "password1234", "iloveyou!!!!!!", "zzzzzzzzzzzzzz"):
        with pytest.raises(WeakPassword):
            check_policy(weak)
    check_policy("a tidy orange lighthouse")
    stored = hash_password("a tidy orange lighthouse")
    assert stored.startswith("$argon2id$") and "lighthouse" not in stored
    assert verify_password("a tidy orange lighthouse", stored)
    assert not verify_password("a tidy orange lighthouse!", stored)
    assert hash_password("same input") != hash_password("same input")  # per-user salt


def test_p04_totp_accepts_adjacent_steps_only_and_recovery_codes_are_normalised() -> None:
    secret = mfa.new_secret()
    now = time.time()
    code = mfa.current_code(secret, now)
    assert mfa.matching_step(secret, code, now) == int(now) // 30
    assert mfa.matching_step(secret, code, now + 30) is not None  # clock drift
    assert mfa.matching_step(secret, code, now + 120) is None
    assert mfa.matching_step(secret, "12345", now) is None
    codes = mfa.new_recovery_codes()
    assert len(set(codes)) == 10
    assert mfa.recovery_digest("u", codes[0]) == mfa.recovery_digest("u", codes[0].upper())
    assert "otpauth://totp/" in mfa.provisioning_uri(secret, "amelia", "Gateway")
    assert mfa.qr_svg("otpauth://totp/x?secret=" + secret).startswith("<svg")


def test_s23_key_selection_and_cache_control() -> None:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "a"}).as_dict(private=False)
    ec = ECKey.generate_key("P-384", parameters={"kid": "b"}).as_dict(private=False)
    jwks = {"keys": [rsa, ec]}
    assert select_key(jwks, {"alg": "RS384", "kid": "a"}).kid == "a"
    assert select_key(jwks, {"alg": "ES384", "kid": "b"}).kid == "b"
    for header in (
        {"alg": "RS384", "kid": "b"},
        {"alg": "ES384", "kid": "a"},
        {"alg": "RS384", "kid": "zz"},
    ):
        with pytest.raises(KeyResolutionError):
            select_key(jwks, header)
    two = {"keys": [rsa, {**rsa, "kid": "c"}]}
    with pytest.raises(KeyResolutionError):
        select_key(two, {"alg": "RS384"})  # without a kid, two candidates: refuse
    assert max_age("public, max-age=600") == 600
    assert max_age("no-store") == max_age("max-age=60, no-cache") == 0
    assert max_age(None) is None and max_age("public") is None  # the caller's default applies


def test_s14_consent_screen_words_and_the_granted_subset() -> None:
    view = screen("patient/Observation.rs?category=laboratory offline_access openid", ("PATRQT",))
    assert view.offline and view.purposes == ("because you asked for it, for your own use",)
    assert "test results" in view.choices[0].words and "laboratory" in view.choices[0].words
    assert describe("patient/Immunization.cruds").startswith("Create, read, update, delete and")
    assert granted_scope("a b c", ["c", "a", "z"]) == "a c"  # request order, nothing extra
    terms = consent_terms("patient/*.rs patient/Observation.rs?category=vital-signs", _now(), "1y")
    assert terms.resource_types == ("*",)
    assert terms.granular_scopes == ("patient/Observation.rs?category=vital-signs",)
    assert (terms.end - terms.start).days == 365


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)
