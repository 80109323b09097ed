"""A minimal SMART app for trying the demo by hand (standard library + joserfc only).

    .venv/bin/python scripts/smart_demo_app.py            # standalone patient launch
    .venv/bin/python scripts/smart_demo_app.py --backend  # backend services (client_credentials)

The standalone mode prints an authorization URL to open in a browser, waits for the redirect on
http://127.0.0.1:8765/callback (the demo patient app's registered redirect URI), exchanges the code
with its PKCE verifier, reads the patient in context from the FHIR API, refreshes the token and
prints what it got. The backend mode signs an RS384 client assertion with the demo backend key in
``fixtures/keys/`` (a demo-only key) and asks for a system-level token.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIRECT = "http://127.0.0.1:8765/callback"


def _post(url: str, data: dict[str, str]) -> dict[str, Any]:
    body = urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return dict(json.loads(response.read()))


def _get(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return dict(json.loads(response.read()))


def _wait_for_code() -> dict[str, str]:
    received: dict[str, str] = {}

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.urlsplit(self.path).query
            received.update({k: v[0] for k, v in urllib.parse.parse_qs(query).items()})
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"The demo app got your answer. You can close this tab.\n")

        def log_message(self, *args: Any) -> None:
            return

    with HTTPServer(("127.0.0.1", 8765), Callback) as server:
        while not received:
            server.handle_request()
    return received


def standalone(base: str) -> None:
    discovery = f"{base}/fhir/.well-known/smart-configuration"
    with urllib.request.urlopen(discovery, timeout=10) as response:  # noqa: S310 - http(s) only
        config = json.loads(response.read())
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    state = secrets.token_urlsafe(12)
    params = {
        "response_type": "code",
        "client_id": "demo-patient-app",
        "redirect_uri": REDIRECT,
        "scope": "launch/patient openid fhirUser offline_access patient/*.rs",
        "state": state,
        "aud": f"{base}/fhir",
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    print("Open this in a browser, sign in (maria / copper-lantern-7390) and allow:\n")
    print(config["authorization_endpoint"] + "?" + urllib.parse.urlencode(params) + "\n")
    answer = _wait_for_code()
    if answer.get("state") != state or "code" not in answer:
        raise SystemExit(f"no code: {answer}")
    tokens = _post(
        config["token_endpoint"],
        {
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": REDIRECT,
            "client_id": "demo-patient-app",
            "code_verifier": verifier,
        },
    )
    print("token response fields:", sorted(tokens), "| patient:", tokens.get("patient"))
    patient = _get(f"{base}/fhir/Patient/{tokens['patient']}", tokens["access_token"])
    print("read the patient in context:", patient.get("name", [{}])[0])
    refreshed = _post(
        config["token_endpoint"],
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "demo-patient-app",
        },
    )
    print(
        "refreshed; new refresh token issued:",
        refreshed["refresh_token"] != tokens["refresh_token"],
    )


def backend(base: str) -> None:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.import_key(
        json.loads((ROOT / "fixtures/keys/backend-service.private.jwk.json").read_text())
    )
    token_url = f"{base}/auth/token"
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "RS384", "kid": key.kid, "typ": "JWT"},
        {
            "iss": "demo-backend-service",
            "sub": "demo-backend-service",
            "aud": token_url,
            "exp": now + 240,
            "iat": now,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithms=["RS384"],
    )
    tokens = _post(
        token_url,
        {
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    print(json.dumps({k: v for k, v in tokens.items() if k != "access_token"}, indent=2))
    print("access token (first 40 characters):", tokens["access_token"][:40] + "...")
    bundle = _get(f"{base}/fhir/Patient?_count=3", tokens["access_token"])
    for entry in bundle.get("entry", []):
        patient = entry["resource"]
        kept = sorted(k for k in patient if k not in ("resourceType", "id", "meta"))
        print(f"Patient/{patient['id']}: elements released for HOPERAT: {', '.join(kept)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8080", help="the gateway's base URL")
    parser.add_argument("--backend", action="store_true", help="backend services instead")
    args = parser.parse_args()
    (backend if args.backend else standalone)(args.base.rstrip("/"))


if __name__ == "__main__":
    main()
