"""The ``fhir-gateway`` command.

``serve`` runs the gateway from its settings (environment and an optional TOML file); it needs a
key-encryption key (P-19) and stops with a message naming the settings when there is none, or when
the one given does not open the secrets already in MongoDB. ``--workers N`` runs N processes on the
same port (:mod:`gateway.cli.serving`; default one per core).
``demo`` starts the embedded MongoDB and the seeded local FHIR server, then the gateway on
127.0.0.1:8080 (``--host``, ``--port``), prints where everything is, writes the settings the
administration commands need to ``.demo.env`` (:mod:`gateway.cli.demo_env`), and stops all three on
Ctrl-C. Unless one is configured, it makes a throwaway key-encryption key next to its database (in
its temporary directory, or in ``--data-dir`` so that a kept database stays readable).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from gateway.app import create_app
from gateway.appkeys import SETTINGS
from gateway.audit.cli import add_commands as add_audit_commands
from gateway.audit.runtime import default_chain_name
from gateway.cli import demo_env
from gateway.cli.admin import CommandError, add_commands, register_demo_sync
from gateway.cli.serving import default_workers, serve, serve_workers
from gateway.localstack import EmbeddedError, local_stack
from gateway.settings import Settings, SettingsError, load_settings
from gateway.web.logs import configure_logging
from smart_auth.key_provider import KeyProviderError, write_key_file

log = logging.getLogger("gateway")

DEMO_METRICS_TOKEN = "demo-metrics-token"  # noqa: S105 - published: the demo's only
"""The demo's ``metrics_token`` unless the environment sets one."""


def _env_sets(name: str) -> bool:
    return f"FHIR_GATEWAY_{name.upper()}" in os.environ


DEMO_KEY_FILE = "key-encryption-key"


async def _settle_gc(_app: web.Application) -> None:
    """After start-up: leave the long-lived objects out of garbage collection (``gc.freeze``) and
    collect less often. Parsing a large Bundle allocates hundreds of thousands of objects; with
    the default thresholds the collector runs over the whole heap again and again meanwhile
    (measured: orjson parses a 1,000-entry Bundle in 14 ms by default, 6 ms like this)."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _run(
    app: web.Application, settings: Settings, banner: str | None = None, *, reuse_port: bool = False
) -> None:
    """Serve until SIGINT/SIGTERM; ``banner`` is printed once the gateway is listening."""
    app.on_startup.append(_settle_gc)
    serve(
        app,
        settings,
        banner=(lambda: print(banner, flush=True)) if banner else None,
        reuse_port=reuse_port,
    )


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    if args.workers and args.workers > 1 and settings.port == 0:
        raise SettingsError("--workers above 1 needs a fixed port (port = 0 picks one per process)")
    workers = args.workers or (default_workers() if settings.port else 1)
    scheme = "https" if settings.tls_cert_file else "http"
    log.info(
        "FHIR gateway on %s://%s:%s (%s), FHIR base %s",
        scheme,
        settings.host,
        settings.port,
        "1 process" if workers == 1 else f"{workers} worker processes",
        settings.fhir_base_url,
    )
    app = create_app(settings)  # built (not started) once: a bad setting is reported once
    if workers == 1:
        _run(app, settings)
        return 0

    def worker(n: int) -> int:  # in each worker process: starts its own copy of the application
        # Each worker writes an audit chain of its own (one writer per chain, A-07).
        chain = settings.audit_chain_name or default_chain_name(settings.port)
        ours = settings.model_copy(update={"audit_chain_name": f"{chain}:w{n}"})
        app[SETTINGS] = ours
        _run(app, ours, reuse_port=True)
        return 0

    return serve_workers(settings, workers, lambda n: _reported(lambda: worker(n)))


def _demo_key(settings: Settings, workdir: Path) -> Settings:
    """The settings with a throwaway key-encryption key in ``workdir``, unless one is set."""
    if settings.key_encryption_key is not None or settings.key_encryption_key_file is not None:
        return settings
    path = workdir / DEMO_KEY_FILE
    with contextlib.suppress(FileExistsError):  # a kept demo database: keep its key
        write_key_file(path)
    return settings.model_copy(update={"key_encryption_key_file": path})


def _demo(args: argparse.Namespace) -> int:
    public = f"http://{args.host}:{args.port}"
    print("Starting the embedded MongoDB and the local FHIR server...", flush=True)
    with contextlib.ExitStack() as stack:
        workdir = args.data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fhir-gateway-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        mongo_uri, upstream, _mongo = stack.enter_context(local_stack(workdir))
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            public_base_url=public,
            upstream_url=upstream.base_url,
            mongodb_uri=mongo_uri,
            **({} if _env_sets("metrics_token") else {"metrics_token": DEMO_METRICS_TOKEN}),
            **({} if _env_sets("audit_spool_dir") else {"audit_spool_dir": workdir / "audit"}),
        )
        settings = _demo_key(settings, workdir)
        configure_logging(settings.log_level)
        register_demo_sync(settings)  # the demo apps, users and keys from fixtures/
        written = demo_env.write(settings, args.env_file)
        try:
            _run(create_app(settings), settings, _banner(settings, args.env_file))
        finally:
            demo_env.remove(written, args.env_file)
    print("Stopped.", flush=True)
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is under it."""
    path = path.absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _banner(settings: Settings, env_file: Path) -> str:
    public = settings.public_base_url
    settings_lines = "".join(f"    {line}\n" for line in demo_env.demo_lines(settings))
    key_file = settings.key_encryption_key_file
    sealing = f"in {_shown(key_file)}" if key_file else "from the settings"
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    metrics = (
        f"curl -H 'Authorization: Bearer {token}' {public}/metrics"
        if token
        else "off (set metrics_token)"
    )
    return (
        "\nThe FHIR consent gateway demo is running (synthetic data only).\n"
        f"  FHIR base:        {settings.fhir_base_url}\n"
        f"  Capabilities:     {settings.fhir_base_url}/metadata\n"
        f"  SMART discovery:  {settings.fhir_base_url}/.well-known/smart-configuration\n"
        f"  Try an app:       .venv/bin/python scripts/smart_demo_app.py --base {public}\n"
        f"  Health:           {public}/healthz  {public}/readyz\n"
        f"  Metrics:          {metrics}\n"
        "  Demo sign-ins:    amelia / maria (patients), hannah (practitioner), admin;\n"
        "                    passwords in fixtures/users.json (demo only)\n"
        f"  Secrets at rest:  sealed by the key-encryption key {sealing}\n"
        "  Administration:   .venv/bin/fhir-gateway clients list (clients add, users add, ...)\n"
        f"                    act on this demo: they read its settings from {_shown(env_file)}:\n"
        f"{settings_lines}"
        "Press Ctrl-C to stop the gateway, the FHIR server and the database.\n"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhir-gateway",
        description="The FHIR consent gateway: SMART authorization and consent in front of a FHIR "
        "server.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway from its settings")
    serve.add_argument(
        "--config", type=Path, help="a TOML settings file (environment wins over it)"
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="worker processes sharing the port (SO_REUSEPORT), each a whole gateway against the "
        "same MongoDB; 1 serves in this process (default: one per CPU core)",
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo",
        help="run the gateway with an embedded database and FHIR server",
        description="Run the gateway with an embedded MongoDB-compatible database and a local "
        "FHIR server seeded with synthetic patients, the demo apps and users registered "
        "(fixtures/; published credentials, for trying the gateway only). Ctrl-C stops all three.",
    )
    demo.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on, also used in the demo's URLs (default: 127.0.0.1)",
    )
    demo.add_argument(
        "--port", type=int, default=8080, help="the port to listen on (default: 8080)"
    )
    demo.add_argument("--config", type=Path, help="a TOML settings file for other settings")
    demo.add_argument(
        "--data-dir", type=Path, help="keep the demo database here (default: a temporary directory)"
    )
    demo.add_argument(
        "--env-file",
        type=Path,
        default=demo_env.DEMO_ENV,
        help="where to write the settings the administration commands read while the demo runs "
        "(default: .demo.env in the checkout)",
    )
    demo.set_defaults(func=_demo)
    add_commands(commands, "a TOML settings file (environment wins over it)")
    add_audit_commands(commands, "a TOML settings file (environment wins over it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _reported(lambda: int(args.func(args)))


def _reported(command: Callable[[], int]) -> int:
    """Run ``command``; the errors an operator can act on become a message and an exit status."""
    try:
        return command()
    except SettingsError as exc:
        print(f"fhir-gateway: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"fhir-gateway: {exc}", file=sys.stderr)
        return 1
    except EmbeddedError as exc:
        print(f"fhir-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyProviderError as exc:
        print(
            "fhir-gateway: the secrets stored in MongoDB do not open with the configured "
            "key-encryption key (FHIR_GATEWAY_KEY_ENCRYPTION_KEY_FILE or "
            f"FHIR_GATEWAY_KEY_ENCRYPTION_KEY): {exc}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
