"""The local stack for the demo and the test suite: an embedded MongoDB-compatible server
(SecantusDB, run as a separate ``secantusd-py`` process) and the local upstream FHIR server
(Medplum's FHIR router in ``fixtures/upstream``, run with Node).

Both run as child processes on free loopback ports. Each child is in its own process group (so a
Ctrl-C in the terminal reaches the gateway first, which then stops its children in order) and, on
Linux, gets SIGTERM from the kernel if the gateway dies without cleaning up (``PR_SET_PDEATHSIG``),
so no process outlives the command that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures"
UPSTREAM_DIR = FIXTURES / "upstream"
SEED_DIR = FIXTURES / "data"

_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """A local-stack process could not be started."""


def die_with_parent() -> None:
    """In a child process (between fork and exec, or at the start of a forked worker): have the
    kernel send it SIGTERM when its parent dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _spawn(
    args: list[str],
    *,
    log: Path | None,
    stdin: int | None = None,
    stdout: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log_file = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        return subprocess.Popen(  # noqa: S603 - fixed argument lists, no shell
            args,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    finally:
        if log:
            log_file.close()  # type: ignore[union-attr]


@dataclass
class EmbeddedMongo:
    """SecantusDB in a child process. ``uri`` is ready to use once :meth:`start` returns."""

    data_dir: Path | None = None
    log_file: Path | None = None
    test_commands: bool = False
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def uri(self) -> str:
        # retryWrites=false: SecantusDB's retryable-write bookkeeping slows writes as they pile up.
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&retryWrites=false"

    def start(self, timeout: float = 30.0, *, same_port: bool = False) -> None:
        """Start the server on a free port; with ``same_port``, on the port of the previous start
        (a restart that clients already connected notice by themselves)."""
        executable = shutil.which(
            "secantusd-py", path=str(Path(sys.executable).parent)
        ) or shutil.which("secantusd-py")
        if executable is None:
            raise EmbeddedError(
                "secantusd-py was not found: install the 'embedded' extra "
                "(pip install 'fhir-consent-gateway[embedded]') or set MONGODB_URI"
            )
        storage = str(self.data_dir) if self.data_dir else ":memory:"
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            if not (same_port and self.port):
                self.port = free_port()
            args = [
                executable,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                storage,
            ]
            if self.test_commands:
                args.append("--enable-test-commands")
            self.process = _spawn(args, log=self.log_file)
            if self._wait_ready(timeout):
                return
            _stop(self.process)
        raise EmbeddedError(f"the embedded MongoDB did not start (log: {self.log_file or 'none'})")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                client: MongoClient[dict[str, object]] = MongoClient(
                    self.uri, serverSelectionTimeoutMS=500
                )
                with client:
                    client.admin.command("ping")
                    return True
            except PyMongoError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), as a crash would: its connections close unanswered."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


def node_major_version() -> int | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    try:
        return int(out.stdout.strip().lstrip("v").split(".")[0])
    except ValueError:
        return None


def ensure_upstream_installed() -> None:
    """``npm ci`` in ``fixtures/upstream`` when its ``node_modules`` is missing."""
    if (UPSTREAM_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise EmbeddedError("npm was not found; the local FHIR server needs Node.js 20 or newer")
    print("Installing the local FHIR server's packages (npm ci)...", file=sys.stderr, flush=True)
    done = subprocess.run(  # noqa: S603
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=UPSTREAM_DIR, check=False
    )
    if done.returncode != 0:
        raise EmbeddedError("npm ci failed in fixtures/upstream")


@dataclass
class LocalUpstream:
    """The seeded local FHIR server in a child process; ``base_url`` is its FHIR base."""

    seed_dir: Path = SEED_DIR
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    base_url: str = ""

    def start(self, timeout: float = 60.0) -> None:
        major = node_major_version()
        if major is None or major < 20:
            raise EmbeddedError("the local FHIR server needs Node.js 20 or newer on the PATH")
        ensure_upstream_installed()
        args = ["node"]
        if major < 22:
            args.append(
                "--experimental-websocket"
            )  # Medplum's router needs WebSocket (global since 22)
        args += [
            str(UPSTREAM_DIR / "server.mjs"),
            "--host", "127.0.0.1",
            "--port", "0",
            "--base-path", "/fhir",
            "--seed", str(self.seed_dir),
            "--exit-on-stdin-close",
        ]  # fmt: skip
        node = shutil.which("node")
        assert node is not None
        args[0] = node
        self.process = _spawn(
            args, log=self.log_file, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        line = self._read_ready_line(timeout)
        if not line.startswith("READY "):
            self.stop()
            raise EmbeddedError(
                f"the local FHIR server did not start (log: {self.log_file or 'stderr not kept'})"
            )
        self.base_url = line.split(" ", 1)[1].strip()

    def _read_ready_line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        result: list[str] = []
        stdout = self.process.stdout
        reader = threading.Thread(
            target=lambda: result.append(stdout.readline().decode(errors="replace")), daemon=True
        )
        reader.start()
        reader.join(timeout)
        return result[0] if result else ""

    def reset(self) -> None:
        """Re-seed the upstream (its admin route, outside the FHIR base)."""
        import urllib.request

        origin = self.base_url.rsplit("/fhir", 1)[0]
        request = urllib.request.Request(f"{origin}/__admin/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
            response.read()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None:
                with contextlib.suppress(OSError):
                    self.process.stdin.close()
            _stop(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None


@contextlib.contextmanager
def local_stack(
    workdir: Path | None = None, *, mongo_uri: str | None = None, test_commands: bool = False
) -> Iterator[tuple[str, LocalUpstream, EmbeddedMongo | None]]:
    """Start the embedded MongoDB (unless ``mongo_uri`` is given) and the local upstream; yield
    ``(mongo_uri, upstream, mongo)``; stop both on exit, whatever happens."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fhir-gateway-")))
        mongo: EmbeddedMongo | None = None
        if mongo_uri is None:
            mongo = EmbeddedMongo(
                data_dir=workdir / "mongo",
                log_file=workdir / "mongo.log",
                test_commands=test_commands,
            )
            stack.callback(mongo.stop)
            mongo.start()
            mongo_uri = mongo.uri
        upstream = LocalUpstream(log_file=workdir / "upstream.log")
        stack.callback(upstream.stop)
        upstream.start()
        yield mongo_uri, upstream, mongo
