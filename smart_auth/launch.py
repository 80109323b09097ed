"""EHR launch contexts (SMART App Launch 2.2 section 2.0.2 "EHR Launch", S-13): an authenticated
practitioner (or an administrator through the admin API) creates a context (patient, optionally an
encounter, whether the app should show a patient banner, a style URL) and gets an opaque ``launch``
value to hand to the app. The app sends it back in its authorization request with the ``launch``
scope; the context then becomes the token's ``patient``/``encounter``. A launch value is bound to
the user who made it and expires after a few minutes.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import insert_once

COLLECTION = "launch_contexts"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class LaunchError(ValueError):
    """A launch context that cannot be made; the message says why."""


@dataclass(frozen=True, slots=True)
class LaunchContext:
    launch: str
    created_by: str  # user id
    patient: str
    encounter: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None


class LaunchStore:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], lifetime: timedelta, clock: Clock = system_clock
    ) -> None:
        self._clock = clock
        self._contexts = db[COLLECTION]
        self._lifetime = lifetime

    async def ensure_indexes(self) -> None:
        await self._contexts.create_index("expires_at", expireAfterSeconds=0)

    async def create(
        self,
        *,
        created_by: str,
        patient: str,
        encounter: str | None = None,
        need_patient_banner: bool = True,
        smart_style_url: str | None = None,
    ) -> LaunchContext:
        patient = patient.removeprefix("Patient/")
        if not _ID.match(patient):
            raise LaunchError("patient: a Patient id")
        if encounter is not None:
            encounter = encounter.removeprefix("Encounter/")
            if not _ID.match(encounter):
                raise LaunchError("encounter: an Encounter id")
        if smart_style_url is not None and not smart_style_url.startswith(("https://", "http://")):
            raise LaunchError("smart_style_url: an absolute URL")
        context = LaunchContext(
            launch=secrets.token_urlsafe(24),
            created_by=created_by,
            patient=patient,
            encounter=encounter,
            need_patient_banner=need_patient_banner,
            smart_style_url=smart_style_url,
        )
        await insert_once(
            self._contexts,
            {
                "_id": context.launch,
                "created_by": created_by,
                "patient": patient,
                "encounter": encounter,
                "need_patient_banner": need_patient_banner,
                "smart_style_url": smart_style_url,
                "expires_at": self._clock() + self._lifetime,
            },
        )
        return context

    async def get(self, launch: str) -> LaunchContext | None:
        if not isinstance(launch, str) or not launch or len(launch) > 128:
            return None
        doc = await self._contexts.find_one({"_id": launch, "expires_at": {"$gt": self._clock()}})
        if doc is None:
            return None
        return LaunchContext(
            launch=doc["_id"],
            created_by=doc["created_by"],
            patient=doc["patient"],
            encounter=doc.get("encounter"),
            need_patient_banner=bool(doc.get("need_patient_banner", True)),
            smart_style_url=doc.get("smart_style_url"),
        )
