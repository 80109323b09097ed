"""The audit log of a running gateway (AUDIT.md A-07, A-08): built from the settings, started,
and closed when the application (or a command) stops.

For the application's cleanup context::

    async with open_audit(settings, db, key_ring) as audit:
        app[AUDIT] = audit
        yield

Commands that record events run beside the gateway: give them a chain of their own (e.g.
``f"{socket.gethostname()}:cli"``) and a ``lock_timeout`` to wait for another command.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.checkpoints import Signer
from gateway.audit.facts import Observer
from gateway.audit.log import AuditLog
from gateway.settings import Settings


def default_chain_name(port: int) -> str:
    """The host's name and the port: stable across restarts, distinct between instances."""
    return f"{socket.gethostname()}:{port}"


def from_settings(
    settings: Settings,
    db: AsyncDatabase[dict[str, Any]],
    signer: Signer | None,
    *,
    chain: str | None = None,
    lock_timeout: float = 0.0,
) -> AuditLog:
    """The audit log these settings describe (``chain`` overrides ``audit_chain_name``)."""
    name = chain or settings.audit_chain_name or default_chain_name(settings.port)
    return AuditLog(
        db,
        settings.audit_spool_dir,
        Observer(name, settings.fhir_base_url),
        signer,
        write_timeout=settings.audit_write_timeout_seconds,
        checkpoint_events=settings.audit_checkpoint_events,
        checkpoint_seconds=settings.audit_checkpoint_seconds,
        retention_period=timedelta(days=settings.audit_retention_days),
        lock_timeout=lock_timeout,
    )


@contextlib.asynccontextmanager
async def open_audit(
    settings: Settings,
    db: AsyncDatabase[dict[str, Any]],
    signer: Signer | None,
    *,
    chain: str | None = None,
    lock_timeout: float = 0.0,
) -> AsyncIterator[AuditLog]:
    """The audit log of these settings, started; written out and closed on exit. For the
    application's cleanup context, and for commands (pass them their own ``chain``, e.g.
    ``f"{host}:cli"``, and a ``lock_timeout`` to wait for another command)."""
    audit = from_settings(settings, db, signer, chain=chain, lock_timeout=lock_timeout)
    await audit.start()
    try:
        yield audit
    finally:
        await audit.close()
