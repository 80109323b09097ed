"""Acts the stores tell of, recorded as AuditEvents on the instance's chain (AUDIT.md A-01): a
version of a Consent written, whoever wrote it and through whatever channel (the store's
``on_change``: the consent screen, the FHIR API, the administration API, the command line,
erasure, the patient's pages), and grants revoked, whatever revoked them (the revoker's
``on_revoke``: a revocation request, a withdrawal, a replayed refresh token, an ended
representation, a sign-out everywhere, an erasure). Hooking the stores rather than their callers
means no caller can change a Consent or revoke a grant unrecorded.
"""

from __future__ import annotations

from consent.store import OnChange, Written
from gateway.audit import security
from gateway.audit.facts import Actor, ConsentChange
from gateway.audit.log import AuditLog
from smart_auth.revocation import OnRevoke, Revoked


def actor_of(changed_by: str) -> Actor:
    """Who a :class:`~consent.store.Change` names: ``Patient/x`` or ``RelatedPerson/y`` (a
    person), ``client:<id>`` (an app), ``user:<id>`` (an account), ``cli``."""
    if changed_by == "cli":
        return Actor.cli()
    if changed_by.startswith("client:"):
        return Actor(client_id=changed_by.removeprefix("client:"))
    if changed_by.startswith("user:"):
        return Actor(user_id=changed_by.removeprefix("user:"))
    if "/" in changed_by:
        return Actor(fhir_user=changed_by)
    return Actor(user_id=changed_by)


def consent_written(audit: AuditLog) -> OnChange:
    """A ``ConsentStore``'s ``on_change``: each version written becomes a BALP write event."""

    async def told(written: Written) -> None:
        change = ConsentChange(
            consent_id=written.consent_id,
            version=str(written.version),
            method=written.method,
            patient=written.patient_id,
            channel=written.change.channel.value,
            reason=written.change.reason,
        )
        actor = actor_of(written.change.by)
        await audit.record([security.consent_changed(audit.observer, actor, change)])

    return told


def grants_revoked(audit: AuditLog) -> OnRevoke:
    """A ``Revoker``'s ``on_revoke``: one event per grant (or token) revoked, with why."""

    async def told(revoked: Revoked) -> None:
        actor = Actor(user_id=revoked.user_id, client_id=revoked.client_id)
        if revoked.jti is not None:
            grants: list[str | None] = [None]
        else:
            grants = list(revoked.grant_ids)
        events = [
            security.token_revoked(
                audit.observer,
                actor,
                client_id=revoked.client_id,
                jti=revoked.jti,
                grant_id=grant_id,
                patient=revoked.patient,
                reason=revoked.reason,
            )
            for grant_id in grants
        ]
        await audit.record(events)

    return told
