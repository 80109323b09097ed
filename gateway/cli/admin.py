"""The administration commands of ``fhir-gateway`` (SECURITY.md P-09): ``clients add|list|remove``,
``users add``, ``keys rotate`` (:mod:`gateway.cli.keys`), ``patients erase``,
``consent list|history|add|withdraw`` (an administrator acting on a documented request, C-23), and
``register-demo`` (the demo's apps and users from ``fixtures/``).

Each command reads the same settings as ``serve`` (environment and ``--config``, the key-encryption
key included: the stores it opens seal their secrets, P-19), plus an env file (``--env-file``;
without one and without a configured MongoDB, the running demo's ``.demo.env``, see
:mod:`gateway.cli.demo_env`), connects to MongoDB, does one thing, and records a security event with
actor ``cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from consent.errors import ConsentError, InvalidParameter
from consent.store import Change, Channel, ConsentStore
from gateway.audit import security
from gateway.audit.acts import consent_written, grants_revoked
from gateway.audit.errors import AuditError
from gateway.audit.facts import Actor
from gateway.audit.log import AuditLog
from gateway.audit.runtime import open_audit
from gateway.audit.security import AdminAction
from gateway.cache.cache import CacheLimits, ResourceCache
from gateway.cli import demo_env
from gateway.cli.keys import rotate_keys
from gateway.erasure import erase_patient
from gateway.fhir.consent_api import revoke_if_withdrawn
from gateway.localstack import FIXTURES
from gateway.oauth import open_services
from gateway.settings import Settings, SettingsError, load_key_provider, load_settings
from gateway.web.metrics import Metrics
from smart_auth.accounts.passwords import WeakPassword
from smart_auth.accounts.users import Role, UserError
from smart_auth.clients import ClientError, ClientType, new_client
from smart_auth.services import AuthServices


class CommandError(Exception):
    """A command that cannot be done; the message says why."""


Work = Callable[[AuthServices, AuditLog], Awaitable[int]]


def cli_chain() -> str:
    """The audit chain of commands on this host (one at a time: they wait for each other)."""
    return f"{socket.gethostname()}:cli"


async def _with_services(settings: Settings, work: Work) -> int:
    """Run ``work`` with the authorization server's stores and the audit log of commands (what
    a command changes is recorded there, like what the gateway does: AUDIT.md A-01)."""
    if settings.mongodb_uri is None:
        raise SettingsError("FHIR_GATEWAY_MONGODB_URI or MONGODB_URI is required")
    key_provider = load_key_provider(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        db = client[settings.mongodb_database]
        services = await open_services(db, settings, key_provider)
        async with open_audit(
            settings, db, services.keys, chain=cli_chain(), lock_timeout=30
        ) as audit:
            services.revoker.on_revoke = grants_revoked(audit)
            return await work(services, audit)
    except PyMongoError as exc:
        raise CommandError(f"MongoDB did not answer ({type(exc).__name__})") from None
    except AuditError as exc:
        raise CommandError(f"the audit log cannot be written, so nothing was done: {exc}") from None
    finally:
        await client.close()


def _settings(args: argparse.Namespace) -> Settings:
    """The settings as ``serve`` reads them, plus ``--env-file``; without one, when no MongoDB is
    configured and a demo runs from this checkout, the demo's."""
    env_file: Path | None = args.env_file
    if env_file is None:
        settings = load_settings(args.config)
        if settings.mongodb_uri is not None or not demo_env.DEMO_ENV.is_file():
            return settings
        env_file = demo_env.DEMO_ENV
        print(f"(acting on the running demo: settings from {env_file})", file=sys.stderr)
    return load_settings(args.config, **demo_env.read(env_file))


def _run(args: argparse.Namespace, work: Work) -> int:
    return asyncio.run(_with_services(_settings(args), work))


CachedWork = Callable[[AuthServices, AuditLog, ResourceCache], Awaitable[int]]


def _run_cached(args: argparse.Namespace, work: CachedWork) -> int:
    """``_run`` for a command that purges or shreds cached resources too (C-13, C-22)."""
    settings = _settings(args)

    async def with_cache(services: AuthServices, audit: AuditLog) -> int:
        cache = ResourceCache(
            services.db,
            load_key_provider(settings),
            Metrics(),
            CacheLimits.from_settings(settings),
        )
        await cache.ensure_indexes()
        return await work(services, audit, cache)

    return asyncio.run(_with_services(settings, with_cache))


async def _audited(
    audit: AuditLog, build: Callable[..., dict[str, Any]], *args: Any, **details: Any
) -> None:
    """Record an act of the command line (actor ``cli``) before the command reports it done."""
    await audit.record([build(audit.observer, Actor.cli(), *args, **details)])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


def _client_type(args: argparse.Namespace) -> ClientType:
    if args.public:
        return ClientType.PUBLIC
    if args.secret_file:
        return ClientType.SYMMETRIC
    return ClientType.ASYMMETRIC


def _clients_add(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, audit: AuditLog) -> int:
        try:
            client = new_client(
                client_id=args.client_id,
                name=args.name,
                client_type=_client_type(args),
                redirect_uris=tuple(args.redirect_uri or ()),
                scope=args.scopes,
                purposes=tuple(args.purpose),
                origins=tuple(args.origin or ()),
                trusted=args.trusted,
                manages_consent=args.manages_consent,
                introspect_all_tokens=args.introspect_all_tokens,
                url=args.url,
                publisher=args.publisher,
                privacy_policy_url=args.privacy_policy,
                secret=_read(args.secret_file) if args.secret_file else None,
                jwks=json.loads(_read(args.jwks_file)) if args.jwks_file else None,
                jwks_uri=args.jwks_uri,
            )
            await services.clients.add(client, replace=args.replace)
        except (ClientError, json.JSONDecodeError) as exc:
            raise CommandError(str(exc)) from None
        await _audited(
            audit,
            security.admin_action,
            AdminAction.CLIENT_REPLACED if args.replace else AdminAction.CLIENT_ADDED,
            client_id=client.client_id,
        )
        print(f"registered {client.client_id} ({client.client_type.value})")
        return 0

    return _run(args, work)


def _clients_list(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, audit: AuditLog) -> int:
        for client in await services.clients.all():
            print(
                f"{client.client_id}\t{client.client_type.value}\t{client.name}\t"
                f"{' '.join(client.purposes)}\t{client.scope}"
            )
        return 0

    return _run(args, work)


def _clients_remove(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, audit: AuditLog) -> int:
        if not await services.clients.remove(args.client_id):
            raise CommandError(f"no client {args.client_id}")
        await _audited(
            audit, security.admin_action, AdminAction.CLIENT_REMOVED, client_id=args.client_id
        )
        print(f"removed {args.client_id}")
        return 0

    return _run(args, work)


def _users_add(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, audit: AuditLog) -> int:
        try:
            user = await services.users.add(
                username=args.username,
                role=Role(args.role),
                password=_read(args.password_file),
                display_name=args.display_name,
                fhir_user=args.fhir_user,
                related_persons=tuple(args.related_person or ()),
            )
        except (UserError, WeakPassword) as exc:
            raise CommandError(str(exc)) from None
        await _audited(
            audit,
            security.admin_action,
            AdminAction.USER_ADDED,
            user_id=user.user_id,
            role=user.role.value,
        )
        print(f"added {user.username} ({user.role.value})")
        return 0

    return _run(args, work)


def _patients_erase(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, audit: AuditLog, cache: ResourceCache) -> int:
        try:
            patient = args.patient_id or args.patient
            erasure = await erase_patient(
                services, _consents(services, audit), cache, audit, patient, actor=Actor.cli()
            )
        except InvalidParameter as exc:
            raise CommandError(str(exc)) from None
        print(
            f"Patient/{erasure.patient}: {erasure.grants_revoked} app grant(s) revoked, "
            f"{erasure.cache_keys_destroyed} cache key(s) destroyed, "
            f"{len(erasure.consents_withdrawn)} consent(s) withdrawn, "
            f"{len(erasure.consents_deleted)} draft(s) deleted, "
            f"{len(erasure.consents_kept)} kept as evidence"
        )
        return 0

    return _run_cached(args, work)


ConsentWork = Callable[[AuthServices, ConsentStore, ResourceCache], Awaitable[int]]


def _consents(services: AuthServices, audit: AuditLog) -> ConsentStore:
    """The consents, each change stored recorded in the audit log (gateway.audit.acts)."""
    return ConsentStore(services.db, on_change=consent_written(audit))


def _consent_work(args: argparse.Namespace, work: ConsentWork) -> int:
    async def run(services: AuthServices, audit: AuditLog, cache: ResourceCache) -> int:
        try:
            return await work(services, _consents(services, audit), cache)
        except ConsentError as exc:
            raise CommandError(str(exc)) from None

    return _run_cached(args, run)


def _cli_change(args: argparse.Namespace) -> Change:
    reason = str(args.reason).strip()
    if not reason:
        raise CommandError("--reason: the documented request this change acts on")
    return Change("cli", Channel.CLI, reason[:500])


def _consent_list(args: argparse.Namespace) -> int:
    async def work(_services: AuthServices, store: ConsentStore, _cache: ResourceCache) -> int:
        for consent in await store.search(patient_id=args.patient, limit=1000):
            provision = consent.get("provision") or {}
            print(
                f"{consent['id']}\t{consent['status']}\t{provision.get('type', '')}\t"
                f"v{consent['meta']['versionId']}\t{consent['meta']['lastUpdated']}"
            )
        return 0

    return _consent_work(args, work)


def _consent_history(args: argparse.Namespace) -> int:
    async def work(_services: AuthServices, store: ConsentStore, _cache: ResourceCache) -> int:
        for entry in await store.history(args.id):
            change = entry.change
            who = f"{change.by} ({change.channel.value})" if change else "(not recorded)"
            why = f"\t{change.reason}" if change and change.reason else ""
            when = f"{entry.last_updated:%Y-%m-%d %H:%M}"
            print(f"v{entry.version_id}\t{entry.method}\t{when}\t{who}{why}")
        return 0

    return _consent_work(args, work)


def _consent_add(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, store: ConsentStore, cache: ResourceCache) -> int:
        try:
            consent = json.loads(_read(args.file))
        except json.JSONDecodeError as exc:
            raise CommandError(f"{args.file}: not JSON ({exc.msg})") from None
        created = await store.create(consent, change=_cli_change(args))
        print(f"created Consent/{created['id']}")
        return 0

    return _consent_work(args, work)


def _consent_withdraw(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, store: ConsentStore, cache: ResourceCache) -> int:
        current = await store.read(args.id)
        updated = await store.withdraw(args.id, change=_cli_change(args))
        await revoke_if_withdrawn(services.revoker, cache, current, updated)
        print(f"Consent/{args.id} is inactive (version {updated['meta']['versionId']})")
        return 0

    return _consent_work(args, work)


def _keys_rotate(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(services: AuthServices, audit: AuditLog) -> int:
        rotation = await rotate_keys(services, audit, load_key_provider(settings))
        return 0 if rotation.complete else 1

    return asyncio.run(_with_services(settings, work))


async def register_demo(
    services: AuthServices, audit: AuditLog, fixtures: Path = FIXTURES
) -> list[str]:
    """Register the demo's clients and users from ``fixtures`` (idempotent; each registration
    recorded in the audit log)."""
    done: list[str] = []
    for path in sorted((fixtures / "clients").glob("*.json")):
        spec = json.loads(path.read_text(encoding="utf-8"))
        secret = _read(path.parent / spec["secret_file"]) if "secret_file" in spec else None
        jwks = json.loads(_read(path.parent / spec["jwks_file"])) if "jwks_file" in spec else None
        client = new_client(
            client_id=spec["client_id"],
            name=spec["name"],
            client_type=ClientType(spec["type"]),
            redirect_uris=tuple(spec.get("redirect_uris", ())),
            scope=spec["scope"],
            purposes=tuple(spec["purposes"]),
            origins=tuple(spec.get("origins", ())),
            trusted=bool(spec.get("trusted", False)),
            manages_consent=bool(spec.get("manages_consent", False)),
            introspect_all_tokens=bool(spec.get("introspect_all_tokens", False)),
            url=spec.get("url"),
            publisher=spec.get("publisher"),
            privacy_policy_url=spec.get("privacy_policy_url"),
            secret=secret,
            jwks=jwks,
            jwks_uri=spec.get("jwks_uri"),
        )
        await services.clients.add(client, replace=True)
        await _audited(
            audit, security.admin_action, AdminAction.CLIENT_REPLACED, client_id=client.client_id
        )
        done.append(client.client_id)
    for spec in json.loads(_read(fixtures / "users.json"))["users"]:
        if await services.users.by_username(spec["username"]) is None:
            user = await services.users.add(
                username=spec["username"],
                role=Role(spec["role"]),
                password=spec["password"],
                display_name=spec.get("display_name"),
                fhir_user=spec.get("fhir_user"),
                related_persons=tuple(spec.get("related_persons", ())),
            )
            await _audited(
                audit,
                security.admin_action,
                AdminAction.USER_ADDED,
                user_id=user.user_id,
                role=user.role.value,
            )
        done.append(spec["username"])
    return done


def _register_demo(args: argparse.Namespace) -> int:
    async def work(services: AuthServices, audit: AuditLog) -> int:
        try:
            done = await register_demo(services, audit, args.fixtures)
        except (ClientError, UserError, WeakPassword, KeyError, json.JSONDecodeError) as exc:
            raise CommandError(
                f"the fixtures in {args.fixtures} cannot be registered: {exc}"
            ) from None
        print(f"registered the demo apps and users (demo credentials only): {', '.join(done)}")
        return 0

    return _run(args, work)


def register_demo_sync(settings: Settings) -> list[str]:
    result: list[str] = []

    async def work(services: AuthServices, audit: AuditLog) -> int:
        result.extend(await register_demo(services, audit))
        return 0

    asyncio.run(_with_services(settings, work))
    return result


def add_commands(commands: Any, config_help: str) -> None:
    """Add ``clients``, ``users`` and ``keys`` to the ``fhir-gateway`` parser."""
    clients = commands.add_parser("clients", help="register, list and remove SMART apps")
    sub = clients.add_subparsers(dest="clients_command", required=True)
    add = sub.add_parser("add", help="register an app")
    add.add_argument("--client-id", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--redirect-uri", action="append", help="repeatable")
    add.add_argument("--scopes", required=True, help="the scopes the app may ask for")
    add.add_argument(
        "--purpose",
        action="append",
        required=True,
        help="v3-ActReason purpose of use (TREAT, PATRQT, HRESCH, ...); repeatable",
    )
    add.add_argument("--origin", action="append", help="a CORS origin of the app; repeatable")
    add.add_argument("--url", help="the app's web address, shown on the consent screen")
    add.add_argument(
        "--publisher", help="who makes the app (a company, a hospital), shown to patients"
    )
    add.add_argument(
        "--privacy-policy",
        help="the https address of the app's privacy policy, linked from the consent screen "
        "and the patient's connected apps",
    )
    add.add_argument("--trusted", action="store_true", help="the hospital's own app (C-04)")
    add.add_argument(
        "--manages-consent",
        action="store_true",
        help="the hospital's own patient portal: may change Consents for the patients its token "
        "reaches, never one that applies to itself (C-23)",
    )
    add.add_argument(
        "--introspect-all-tokens",
        action="store_true",
        help="a resource server that may introspect other apps' tokens (confidential only); "
        "without it, introspection answers active: false for any token not the app's own",
    )
    add.add_argument("--replace", action="store_true", help="overwrite an existing registration")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--public", action="store_true", help="a public client (no secret)")
    kind.add_argument("--secret-file", type=Path, help="confidential-symmetric: file with secret")
    kind.add_argument("--jwks-file", type=Path, help="confidential-asymmetric: its public JWKS")
    kind.add_argument("--jwks-uri", help="confidential-asymmetric: its JWKS URL")
    add.set_defaults(func=_clients_add)
    listing = sub.add_parser("list", help="list the registered apps")
    listing.set_defaults(func=_clients_list)
    remove = sub.add_parser("remove", help="remove an app")
    remove.add_argument("--client-id", required=True)
    remove.set_defaults(func=_clients_remove)

    users = commands.add_parser("users", help="add sign-in accounts")
    usub = users.add_subparsers(dest="users_command", required=True)
    uadd = usub.add_parser("add", help="add a user")
    uadd.add_argument("--username", required=True)
    uadd.add_argument("--role", required=True, choices=[r.value for r in Role])
    uadd.add_argument("--fhir-user", help="Patient/ID or Practitioner/ID")
    uadd.add_argument("--password-file", type=Path, required=True)
    uadd.add_argument("--display-name")
    uadd.add_argument(
        "--related-person",
        action="append",
        help="a RelatedPerson id whose patient this user acts for; repeatable",
    )
    uadd.set_defaults(func=_users_add)

    keys = commands.add_parser("keys", help="rotate keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = ksub.add_parser(
        "rotate",
        help="rotate the token signing key (P-17) and re-wrap every sealed secret and cache data "
        "key under the current key-encryption key (P-16)",
    )
    rotate.set_defaults(func=_keys_rotate)

    patients = commands.add_parser("patients", help="act on what the gateway holds of a patient")
    psub = patients.add_subparsers(dest="patients_command", required=True)
    erase = psub.add_parser(
        "erase",
        help="erase a patient: revoke every app, destroy their cache keys, withdraw their "
        "consents (C-22)",
    )
    which = erase.add_mutually_exclusive_group(required=True)
    which.add_argument("patient_id", nargs="?", help="the Patient id")
    which.add_argument("--patient", help="the Patient id (the same, named)")
    erase.set_defaults(func=_patients_erase)

    consent = commands.add_parser(
        "consent", help="read and change patients' Consents on a documented request (C-23)"
    )
    csub = consent.add_subparsers(dest="consent_command", required=True)
    clist = csub.add_parser("list", help="a patient's Consents")
    clist.add_argument("--patient", required=True, help="the Patient id")
    clist.set_defaults(func=_consent_list)
    chistory = csub.add_parser("history", help="every version, who changed it, how and why")
    chistory.add_argument("--id", required=True, help="the Consent id")
    chistory.set_defaults(func=_consent_history)
    cadd = csub.add_parser("add", help="store a Consent given outside the gateway (e.g. on paper)")
    cadd.add_argument("--file", type=Path, required=True, help="the FHIR Consent as JSON")
    cwithdraw = csub.add_parser("withdraw", help="set a Consent inactive; the apps' tokens go too")
    cwithdraw.add_argument("--id", required=True, help="the Consent id")
    for parser, func in ((cadd, _consent_add), (cwithdraw, _consent_withdraw)):
        parser.add_argument(
            "--reason", required=True, help="the documented request this change acts on"
        )
        parser.set_defaults(func=func)

    demo = commands.add_parser(
        "register-demo",
        help="register the demo's apps and users (published demo credentials: trials only)",
    )
    demo.add_argument(
        "--fixtures",
        type=Path,
        default=FIXTURES,
        help="the fixtures folder with clients/ and users.json (default: this checkout's)",
    )
    demo.set_defaults(func=_register_demo)

    for parser in (
        add,
        listing,
        remove,
        uadd,
        rotate,
        erase,
        clist,
        chistory,
        cadd,
        cwithdraw,
        demo,
    ):
        parser.add_argument("--config", type=Path, help=config_help)
        parser.add_argument(
            "--env-file",
            type=Path,
            help="FHIR_GATEWAY_NAME=value lines to read as well (the environment wins); "
            "default: the running demo's .demo.env when no MongoDB is configured",
        )
