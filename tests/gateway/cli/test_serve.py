"""``fhir-gateway serve`` as an operator runs it, in its own process: what it writes to its log
(P-14), and ``--workers`` (one process per core on one port; SIGINT or SIGTERM stops them all; no
process outlives the command)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.localstack import free_port
from tests.conftest import SESSION_KEK, Stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwYXQtYW1lbGlhLXJvc3NpIn0.c2lnbmF0dXJlLXRoYXQtbGVha3M"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(60)


@contextlib.contextmanager
def served(stack: Stack, tmp_path: Path, *args: str) -> Iterator[Served]:
    """``fhir-gateway serve ARGS`` on a free port, its standard error in a file; stopped (and
    killed if need be) on exit."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
        "FHIR_GATEWAY_UPSTREAM_URL": stack.upstream.base_url,
        "FHIR_GATEWAY_MONGODB_URI": stack.mongo_uri,
        "FHIR_GATEWAY_MONGODB_DATABASE": f"serve_{port}",
        "FHIR_GATEWAY_PORT": str(port),
        "FHIR_GATEWAY_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": SESSION_KEK,
    }
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "fhir-gateway"), "serve", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's job
        )
    running = Served(process, port, log)
    try:
        _wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_ready(served: Served, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert served.process.poll() is None, served.log.read_text()
        try:
            with urllib.request.urlopen(f"{served.base}/healthz", timeout=2):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError(f"not serving after {timeout} s:\n{served.log.read_text()}")


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listeners(pid: int, port: int) -> int:
    """How many listening TCP sockets on ``port`` process ``pid`` holds."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
    return held


def test_p14_the_log_holds_no_token_and_no_query(local_stack_env: Stack, tmp_path: Path) -> None:
    """A malformed request line carrying an access token was written to the log at ERROR by
    aiohttp, whole (query, token and all); so was nothing else a request carried."""
    with served(local_stack_env, tmp_path) as gateway:
        answer = _raw(
            gateway.port,
            b"GET /fhir/Patient?access_token=" + TOKEN.encode() + b"&patient=pat-amelia-rossi"
            b"&x=\xff HTTP/1.1\r\nHost: gateway\r\n\r\n",
        )
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
        _raw(
            gateway.port,
            b"GET /fhir/Observation?patient=pat-amelia-rossi HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n",
        )
        _raw(gateway.port, b"GARBAGE /?access_token=" + TOKEN.encode() + b" HTTP/1.1\r\n\r\n")
        assert gateway.stop() == 0
    logged = gateway.log.read_text(errors="replace")
    for secret in (TOKEN, TOKEN.split(".")[1], "access_token", "pat-amelia-rossi", "patient="):
        assert secret not in logged, (secret, logged)


def test_workers_share_the_port_and_stop_together(local_stack_env: Stack, tmp_path: Path) -> None:
    with served(local_stack_env, tmp_path, "--workers", "2") as gateway:
        workers = _children(gateway.process.pid)
        assert len(workers) == 2, gateway.log.read_text()
        deadline = time.monotonic() + 60  # the first to start answered /healthz already
        while not all(_listeners(pid, gateway.port) == 1 for pid in workers):
            assert time.monotonic() < deadline, gateway.log.read_text()
            time.sleep(0.2)
        assert _listeners(gateway.process.pid, gateway.port) == 0  # the supervisor serves nothing
        for _ in range(20):  # each on a new connection, spread by the kernel
            with urllib.request.urlopen(f"{gateway.base}/fhir/metadata", timeout=10) as response:
                assert response.status == 200
        assert gateway.stop(signal.SIGTERM) == 0
    time.sleep(0.5)
    assert [pid for pid in workers if _alive(pid)] == []


def test_workers_stop_on_ctrl_c_and_die_with_their_supervisor(
    local_stack_env: Stack, tmp_path: Path
) -> None:
    with served(local_stack_env, tmp_path, "--workers", "2") as gateway:
        workers = _children(gateway.process.pid)
        os.killpg(gateway.process.pid, signal.SIGINT)  # Ctrl-C reaches the whole job
        assert gateway.process.wait(60) == 0
    time.sleep(0.5)
    assert [pid for pid in workers if _alive(pid)] == []
    with served(local_stack_env, tmp_path, "--workers", "2") as gateway:
        workers = _children(gateway.process.pid)
        gateway.process.kill()  # the supervisor dies without cleaning up
        gateway.process.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert [pid for pid in workers if _alive(pid)] == []


def test_a_worker_that_cannot_start_stops_the_others_with_its_status(
    local_stack_env: Stack, tmp_path: Path
) -> None:
    """A key-encryption key that does not open what is stored: exit status 2 and the message,
    as with one process."""
    with served(local_stack_env, tmp_path, "--workers", "1") as first:
        database = f"serve_{first.port}"
        first.stop()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
        "FHIR_GATEWAY_UPSTREAM_URL": local_stack_env.upstream.base_url,
        "FHIR_GATEWAY_MONGODB_URI": local_stack_env.mongo_uri,
        "FHIR_GATEWAY_MONGODB_DATABASE": database,
        "FHIR_GATEWAY_PORT": str(port),
        "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fhir-gateway"), "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert b"do not open with the configured key-encryption key" in done.stderr
    assert b"Traceback" not in done.stderr
