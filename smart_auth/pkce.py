"""PKCE for every client, S256 only (RFC 7636; SMART 2.2 "PKCE is required"; S-09, S-17).

Authlib's :class:`CodeChallenge` accepts ``plain``, lets a request without a challenge through and
answers a missing verifier with ``invalid_request``. SMART wants none of that: the authorization
request must carry ``code_challenge`` and ``code_challenge_method=S256``, and a missing, blank or
wrong verifier at the token endpoint is ``invalid_grant`` (RFC 7636 4.6).
"""

from __future__ import annotations

import hmac
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oauth2.rfc7636.challenge import CODE_VERIFIER_PATTERN

METHOD = "S256"


def s256_matches(verifier: str, challenge: str) -> bool:
    return hmac.compare_digest(create_s256_code_challenge(verifier), challenge)


class RequiredS256(CodeChallenge):  # type: ignore[misc]
    SUPPORTED_CODE_CHALLENGE_METHOD = [METHOD]
    DEFAULT_CODE_CHALLENGE_METHOD = METHOD
    CODE_CHALLENGE_METHODS = {METHOD: s256_matches}

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge (S256)")
        if data.get("code_challenge_method") != METHOD:
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        request = grant.request
        verifier = request.form.get("code_verifier")
        code = request.authorization_code
        challenge = code.code_challenge
        if not challenge:
            raise InvalidGrantError("the code was issued without a PKCE challenge")
        if code.code_challenge_method != METHOD:
            raise InvalidGrantError("the code's challenge method is not S256")
        if not isinstance(verifier, str) or not CODE_VERIFIER_PATTERN.match(verifier):
            raise InvalidGrantError("code_verifier is missing or malformed")
        if not s256_matches(verifier, challenge):
            raise InvalidGrantError("code_verifier does not match the code_challenge")
