"""Whom a patient user may act for (SECURITY.md P-08): their own Patient, and every Patient named by
a RelatedPerson the user is linked to (a parent of a child), read from the FHIR data at
authorization time. A RelatedPerson that is inactive or whose period has ended gives nothing, so
ending the link in the record ends the representation at the next authorization. The list is copied
into the grant and travels in the access token's ``acts_for`` claim.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import orjson

from gateway.errors import FhirError
from gateway.upstream import Upstream
from smart_auth.users import User

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _ended(period: object) -> bool:
    if not isinstance(period, dict) or not isinstance(period.get("end"), str):
        return False
    end = period["end"]
    try:
        moment = datetime.fromisoformat(end if "T" in end else f"{end}T23:59:59+00:00")
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment < datetime.now(UTC)


async def acts_for(upstream: Upstream, user: User) -> tuple[str, ...]:
    own = user.patient_id
    if own is None:
        return ()
    patients = [own]
    for related_id in user.related_persons:
        if not _ID.match(related_id):
            continue
        try:
            answer = await upstream.send("GET", f"RelatedPerson/{related_id}")
        except FhirError:
            log.warning("could not read a RelatedPerson link of a user")
            continue
        if answer.status != 200:
            continue
        resource = orjson.loads(answer.body)
        if resource.get("active") is False or _ended(resource.get("period")):
            continue
        reference = (resource.get("patient") or {}).get("reference", "")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            patient = reference.removeprefix("Patient/")
            if _ID.match(patient) and patient not in patients:
                patients.append(patient)
    return tuple(patients)


async def patient_names(upstream: Upstream, ids: tuple[str, ...]) -> dict[str, str]:
    """Display names for the patient picker (the id when the name cannot be read)."""
    names: dict[str, str] = {}
    for patient in ids:
        names[patient] = patient
        try:
            answer = await upstream.send("GET", f"Patient/{patient}")
        except FhirError:
            continue
        if answer.status == 200:
            resource = orjson.loads(answer.body)
            for name in resource.get("name") or []:
                given = " ".join(name.get("given") or [])
                text = name.get("text") or f"{given} {name.get('family', '')}".strip()
                if text:
                    names[patient] = text
                    break
    return names
