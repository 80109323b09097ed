"""``fhir-gateway audit verify`` (AUDIT.md A-07) and ``fhir-gateway audit export`` (A-12).

``verify`` walks every chain in MongoDB (:mod:`gateway.audit.verify`), shows progress on a
terminal, prints one line per chain and a summary, and exits 1 when any chain has a problem.
``export`` writes a patient's accounting of disclosures as CSV or JSON
(:mod:`gateway.audit.disclosures`). Both read the same settings as ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from tqdm import tqdm

from gateway.audit.disclosures import disclosures, to_csv, to_json
from gateway.audit.store import AuditReader
from gateway.audit.verify import ChainReport, Report, chain_sizes, verify_all
from gateway.settings import SettingsError, load_settings


def _fail(message: str) -> int:
    print(f"fhir-gateway: {message}", file=sys.stderr)
    return 1


def _run(
    args: argparse.Namespace, work: Callable[[AsyncDatabase[dict[str, Any]]], Awaitable[int]]
) -> int:
    settings = load_settings(args.config)
    if settings.mongodb_uri is None:
        raise SettingsError("FHIR_GATEWAY_MONGODB_URI or MONGODB_URI is required")
    uri = settings.mongodb_uri

    async def main() -> int:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=5000, tz_aware=True
        )
        try:
            return await work(client[settings.mongodb_database])
        except PyMongoError as exc:
            return _fail(f"MongoDB: {exc}")
        finally:
            await client.close()

    return asyncio.run(main())


def _trusted_keys(path: Path | None) -> dict[str, dict[str, Any]] | None:
    if path is None:
        return None
    try:
        jwks = orjson.loads(path.read_bytes())
        return {str(key["kid"]): dict(key) for key in jwks["keys"]}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SettingsError(f"--jwks {path}: not a readable JWKS with kids ({exc})") from None


def _line(report: ChainReport) -> str:
    span = f"seq {report.first}..{report.last}" if report.first is not None else "no records"
    head = (
        f"chain {report.chain}: {report.records:,} record(s) ({span}), "
        f"{report.checkpoints} checkpoint(s): "
    )
    finding = report.finding
    if finding is None:
        return head + "ok"
    record = f" (record {finding.record_id})" if finding.record_id else ""
    return head + f"{finding.kind.upper()} at seq {finding.seq}{record}: {finding.message}"


def print_report(report: Report, out: TextIO) -> None:
    for chain in report.chains:
        print(_line(chain), file=out)
    problems = sum(1 for chain in report.chains if not chain.ok)
    verdict = "ok" if problems == 0 else f"{problems} chain(s) with a problem"
    print(
        f"{len(report.chains)} chain(s), {report.records:,} record(s), "
        f"{report.checkpoints} checkpoint(s): {verdict}",
        file=out,
    )


def _verify(args: argparse.Namespace) -> int:
    keys = _trusted_keys(args.jwks)

    async def work(db: AsyncDatabase[dict[str, Any]]) -> int:
        total = sum((await chain_sizes(db)).values())
        with tqdm(
            total=total, unit="record", desc="verifying", file=sys.stderr, disable=None
        ) as bar:

            def progress(_chain: str, done: int) -> None:
                bar.update(done)

            report = await verify_all(db, trusted_keys=keys, progress=progress)
        print_report(report, sys.stdout)
        return 0 if report.ok else 1

    return _run(args, work)


def _instant(value: str) -> datetime:
    """An ISO date or date-time; without a zone it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not an ISO date or date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _export(args: argparse.Namespace) -> int:
    async def work(db: AsyncDatabase[dict[str, Any]]) -> int:
        rows = [
            row
            async for row in disclosures(
                AuditReader(db), args.patient, since=args.since, until=args.until
            )
        ]
        body = to_csv(rows).encode() if args.format == "csv" else to_json(rows) + b"\n"
        if args.output is None:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
        else:
            try:
                args.output.write_bytes(body)
            except OSError as exc:
                return _fail(f"cannot write {args.output}: {exc.strerror}")
            print(f"{len(rows)} disclosure(s) of Patient/{args.patient} written to {args.output}")
        return 0

    return _run(args, work)


def add_commands(commands: Any, config_help: str) -> None:
    """Add ``audit verify`` and ``audit export`` to the ``fhir-gateway`` parser."""
    audit = commands.add_parser("audit", help="verify the audit trail, export disclosures")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser(
        "verify", help="check every audit chain and checkpoint; exit 1 on any problem (A-07)"
    )
    verify.add_argument(
        "--jwks",
        type=Path,
        help="trust only these public keys (a JWKS file) for checkpoints, instead of the keys "
        "recorded in the database",
    )
    verify.set_defaults(func=_verify)
    export = sub.add_parser(
        "export", help="a patient's accounting of disclosures as CSV or JSON (A-12)"
    )
    export.add_argument("--patient", required=True, help="the Patient id")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--since", type=_instant, help="from this date or date-time (UTC)")
    export.add_argument("--until", type=_instant, help="before this date or date-time (UTC)")
    export.add_argument("--output", type=Path, help="write to this file (default: standard output)")
    export.set_defaults(func=_export)
    for parser in (verify, export):
        parser.add_argument("--config", type=Path, help=config_help)
