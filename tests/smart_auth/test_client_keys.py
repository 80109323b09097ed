"""Clients' public keys (S-23): the one key an assertion names, and Cache-Control."""

from __future__ import annotations

import pytest
from joserfc.jwk import ECKey, RSAKey

from smart_auth.client_keys import KeyResolutionError, select_key
from smart_auth.jwks import max_age


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
