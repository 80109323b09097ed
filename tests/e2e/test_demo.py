"""``fhir-gateway demo``: brings up the embedded database, the seeded FHIR server and the gateway,
answers on its FHIR base (patient data only with a token), and leaves no process behind when
stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.localstack import free_port

pytestmark = pytest.mark.e2e


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc, Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_demo_serves_the_fhir_base_and_stops_cleanly(tmp_path: Path) -> None:
    """Also: the banner's commands work on this port, and the administration commands act on
    the running demo through the settings file it writes (and removes when it stops)."""
    port = free_port()
    env_file = tmp_path / ".demo.env"
    command = str(Path(sys.executable).parent / "fhir-gateway")
    demo = subprocess.Popen(
        [command, "demo", "--port", str(port), "--env-file", str(env_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo.stdout is not None
        banner = ""
        deadline = time.monotonic() + 90
        while "Press Ctrl-C" not in banner and time.monotonic() < deadline:
            line = demo.stdout.readline().decode()
            if not line:
                break
            banner += line
        assert "Press Ctrl-C" in banner, banner
        base = f"http://127.0.0.1:{port}/fhir"
        assert base in banner

        statement = _get(f"{base}/metadata")
        assert statement["resourceType"] == "CapabilityStatement"
        assert statement["implementation"] == {
            **statement["implementation"],  # type: ignore[dict-item]
            "url": base,
        }
        config = _get(f"{base}/.well-known/smart-configuration")
        assert config["token_endpoint"] == f"http://127.0.0.1:{port}/auth/token"
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(f"{base}/Patient?_count=2")
        with refused.value:  # patient data needs an access token
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")

        assert f"scripts/smart_demo_app.py --base http://127.0.0.1:{port}\n" in banner
        assert "FHIR_GATEWAY_MONGODB_URI=" in banner and env_file.is_file()
        env = {k: v for k, v in os.environ.items() if "MONGODB" not in k}
        added = subprocess.run(
            [command, "clients", "add", "--env-file", str(env_file), "--client-id", "new-app",
             "--name", "New App", "--redirect-uri", "https://new.example/cb", "--public",
             "--scopes", "launch/patient patient/*.rs", "--purpose", "PATRQT"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        listed = subprocess.run(
            [command, "clients", "list", "--env-file", str(env_file)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert {"new-app", "demo-patient-app"} <= {
            line.split("\t")[0] for line in listed.stdout.splitlines()
        }, listed.stderr

        children = _children(demo.pid)
        assert len(children) >= 2  # the database and the FHIR server
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, output.decode()
    assert "Stopped." in output.decode()
    assert not env_file.exists()
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []
