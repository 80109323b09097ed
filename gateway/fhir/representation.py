"""Whom a patient user may act for, read from the FHIR data and re-checked, not remembered
(SECURITY.md P-08, P-20; CONSENT.md C-25; DESIGN.md "Authority").

A patient user acts for their own Patient and for every Patient named by a RelatedPerson the
account is linked to (a parent of a child). The RelatedPerson must be active and its period must
contain now; an end date that cannot be read (or one given only as ``2021`` or ``2024-06``, read as
the whole year or month, FHIR R4 datatypes) counts as ended when it is past, and a malformed one
counts as ended: the link gives nothing when in doubt.

The list is copied into the grant and travels in the access token's ``acts_for`` claim. It is
checked again:

- at every refresh (the authorization server asks :meth:`Representation.current`): a grant whose
  patients are no longer all represented is revoked, with all its tokens;
- on every FHIR request by a token that acts for someone other than the user themself
  (:meth:`Representation.check`), from an answer at most ``representation_check_seconds`` old per
  gateway instance — the bound for a link ended in the EHR behind the gateway's back — and at once
  after a change the gateway itself saw (a RelatedPerson, Person or Patient written through it moves
  the ``representation`` change counter). A token whose representation ended is refused and its
  grant revoked.

When the FHIR server cannot be read the answer is "unknown", which refuses (503), never releases.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from pymongo.errors import PyMongoError

from consent import fhirtime
from consent.references import is_id, patient_id
from gateway.fhir.context import AccessContext
from gateway.fhir.freshness import ChangeEpochs
from gateway.proxy.upstream import Upstream
from gateway.web.errors import FhirError, ServiceUnavailable, Unauthorized
from smart_auth.accounts.users import User, UserStore
from smart_auth.revocation import Revoker

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CACHE_LIMIT = 10_000

REPRESENTATION_TYPES = frozenset({"RelatedPerson", "Person", "Patient"})
"""Types whose changes can start or end a representation (``Patient.link`` too): a write of one
through the gateway moves the ``representation`` change counter."""


class RepresentationUnknown(Exception):
    """The FHIR data that decides a representation could not be read."""


def link_in_force(related: object, now: datetime) -> bool:
    """An active RelatedPerson whose period contains ``now`` (bounds read as FHIR dates; one that
    cannot be read counts against the link)."""
    if not isinstance(related, dict) or related.get("active") is False:
        return False
    period = related.get("period")
    if period is None:
        return True
    if not isinstance(period, dict):
        return False
    window = fhirtime.period(period)
    return window is not None and window[0] <= now <= window[1]


async def acts_for(upstream: Upstream, user: User, *, strict: bool = False) -> tuple[str, ...]:
    """The user's own Patient first, then every Patient their RelatedPerson links reach now.
    ``strict``: an unreadable link raises :class:`RepresentationUnknown` instead of being left
    out (a check must not mistake an outage for an ended link)."""
    own = user.patient_id
    if own is None:
        return ()
    patients = [own]
    now = datetime.now(UTC)
    for related_id in user.related_persons:
        if not _ID.match(related_id):
            continue
        try:
            answer = await upstream.send("GET", f"RelatedPerson/{related_id}")
        except FhirError:
            if strict:
                raise RepresentationUnknown(related_id) from None
            log.warning("could not read a RelatedPerson link of a user")
            continue
        if answer.status >= 500 and strict:
            raise RepresentationUnknown(related_id)
        if answer.status != 200:
            continue
        try:
            resource = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            if strict:
                raise RepresentationUnknown(related_id) from None
            continue
        if not link_in_force(resource, now):
            continue
        reference = (resource.get("patient") or {}).get("reference")
        patient = patient_id(reference) if isinstance(reference, str) else None
        if patient is not None and is_id(patient) and patient not in patients:
            patients.append(patient)
    return tuple(patients)


@dataclass(frozen=True, slots=True)
class _Checked:
    epoch: int
    at: float
    patients: frozenset[str]


class Representation:
    """Re-checks, for requests and refreshes, that a user still represents their token's
    patients."""

    def __init__(
        self,
        upstream: Upstream,
        users: UserStore,
        revoker: Revoker,
        epochs: ChangeEpochs,
        recheck_seconds: float,
    ) -> None:
        self._upstream = upstream
        self._users = users
        self._revoker = revoker
        self._epochs = epochs
        self._recheck = recheck_seconds
        self._checked: dict[str, _Checked] = {}

    async def current(self, user_id: str) -> frozenset[str]:
        """The patients the user represents now, read afresh (for a refresh)."""
        user = await self._users.get(user_id)
        if user is None:
            return frozenset()
        return frozenset(await acts_for(self._upstream, user, strict=True))

    async def changed(self) -> None:
        """A RelatedPerson, Person or Patient was written through the gateway: every instance
        checks representations afresh on its next request."""
        try:
            await self._epochs.moved("representation")
        except PyMongoError:
            # The write is done; the bound (representation_check_seconds) still holds.
            log.warning("could not move the representation change counter")

    async def check(self, context: AccessContext) -> None:
        """401 (and the grant revoked) when the token's patients are no longer all the user's to
        act for; 503 when that cannot be known. Free for tokens that act only for the user."""
        if context.external or not context.acts_for or not _represents_others(context):
            return
        try:
            epoch = (await self._epochs.current()).representation
        except PyMongoError:
            raise ServiceUnavailable("access cannot be checked right now; try again") from None
        cached = self._checked.get(context.subject)
        fresh = (
            cached is not None
            and cached.epoch == epoch
            and time.monotonic() - cached.at < self._recheck
        )
        if not fresh:
            try:
                patients = await self.current(context.subject)
            except (RepresentationUnknown, PyMongoError):
                raise ServiceUnavailable(
                    "whom this user may act for cannot be checked right now; try again"
                ) from None
            cached = _Checked(epoch, time.monotonic(), patients)
            if len(self._checked) >= _CACHE_LIMIT:
                self._checked.clear()
            self._checked[context.subject] = cached
        assert cached is not None
        if context.patients <= cached.patients:
            return
        if context.grant_id:
            await self._revoker.revoke_grant(context.grant_id, "representation ended")
        raise Unauthorized(
            "the access token acts for a patient this user no longer represents; sign in again"
        )


def _represents_others(context: AccessContext) -> bool:
    """The token reaches a patient other than the user's own. (The authorization server lists
    the user's own Patient first in ``acts_for``, so a token that reaches one patient only, and
    not someone else's, reaches its user's own record.)"""
    user = context.fhir_user
    own = user.removeprefix("Patient/") if user and user.startswith("Patient/") else None
    if own is None:
        return len(context.patients) > 1
    return bool(context.patients - {own})
