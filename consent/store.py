"""Consents in MongoDB (CONSENT.md C-01, C-02, C-05, C-12, C-22; FHIR R4 RESTful API 3.1.0
create, update, delete, read, vread, history; SECURITY.md P-13).

One document per Consent in ``consents``, shaped for the queries the gateway makes::

    {"_id": id, "patient_id": str, "status": str, "client_ids": [str], "actors": [str],
     "root_type": "permit" | "deny", "version": int, "ever_active": bool,
     "last_updated": datetime, "resource": {...the FHIR Consent...}}

and every version (deletions included) in ``consent_history`` for ``vread`` and ``_history``.
Writes are versioned: ``meta.versionId`` counts up from 1 and a write based on a stale version
raises :class:`~consent.errors.VersionConflict` (the ``replace`` is conditional on the version it
read, so two concurrent writers cannot both win).

``active_for`` is one indexed query with no cache. Every write also moves a change counter
(``change_epochs``, ``_id: "consents"``) after it is done, so a reader may cache consents as long
as that counter, read afresh for each request, has not moved: a revocation written through one
gateway instance is still seen by the next request on every instance (C-12).

Every version records who made the change and through what (C-23): a :class:`Change`, stored
beside the resource (``changed_by``, ``channel``, ``reason``) in the current document and in the
history, never inside the FHIR Consent the apps read.

Every value that reaches a query is a checked ``str`` (a FHIR id, a client id, a status code),
never a client's JSON (P-13).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from consent import model
from consent.codes import CLIENT_SYSTEM
from consent.errors import (
    ConsentDeleted,
    ConsentInvalid,
    ConsentNotFound,
    InvalidParameter,
    Issue,
    VersionConflict,
)
from consent.fhirtime import fhir_instant
from smart_auth.idempotent import retried

COLLECTION: Final = "consents"
HISTORY: Final = "consent_history"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
_MAX_SEARCH = 1000

Document = dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


def client_id_value(value: object) -> str:
    """A client id as the authorization server issues them, else :class:`InvalidParameter`."""
    if not isinstance(value, str) or not _CLIENT_ID.match(value):
        raise InvalidParameter("client id must be 1-128 characters of A-Z a-z 0-9 . _ ~ -")
    return value


def _version(value: object) -> int:
    if not isinstance(value, str) or not _VERSION.match(value):
        raise InvalidParameter("a version id is a positive integer")
    return int(value)


def _status(value: object) -> str:
    if not isinstance(value, str) or value not in model.STATUSES:
        raise InvalidParameter(f"status must be one of {', '.join(sorted(model.STATUSES))}")
    return value


class Channel(StrEnum):
    """Through what a Consent was changed (C-23)."""

    CONSENT_SCREEN = "consent-screen"
    """The patient approving an app on the authorization screen (C-05)."""
    ACCOUNT_PAGES = "account-pages"
    """The patient's own pages on the gateway ("Connected apps")."""
    FHIR_API = "fhir-api"
    """``/fhir/Consent``: an app withdrawing its own permit, or a consent-managing app."""
    ADMIN_API = "admin-api"
    """An administrator, through ``/admin``, on a documented request."""
    CLI = "cli"
    """An administrator, through ``fhir-gateway consent ...``."""
    ERASURE = "erasure"
    """The patient's erasure (C-22)."""
    SYSTEM = "system"
    """The gateway itself (a newer approval superseding an older one)."""


@dataclass(frozen=True, slots=True)
class Change:
    """Who changed a Consent, through what, and why (C-23); recorded on every version."""

    by: str
    """``Patient/x`` or ``RelatedPerson/y`` (the person), ``client:<id>`` (an app),
    ``user:<id>`` (a signed-in administrator), ``cli``."""
    channel: Channel
    reason: str | None = None
    """The documented request an administrator acted on."""

    def as_document(self) -> dict[str, str | None]:
        return {"changed_by": self.by, "channel": self.channel.value, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Written:
    """A version of a Consent just stored (or a Consent deleted), as told to the store's
    ``on_change`` (the gateway records it in its audit trail, AUDIT.md A-01)."""

    consent_id: str
    version: int
    method: str
    """``create``, ``update`` or ``delete``."""
    patient_id: str | None
    change: Change


OnChange = Callable[[Written], Awaitable[None]]

_METHODS = {"POST": "create", "PUT": "update", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One version of a Consent, for ``_history`` Bundles."""

    version_id: str
    method: str
    """``POST`` (created), ``PUT`` (updated) or ``DELETE``."""
    last_updated: datetime
    resource: dict[str, Any] | None
    """``None`` for a deletion."""
    change: Change | None = None
    """Who made this version (``None`` for versions written before changes were recorded)."""


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What ``erase_patient`` did to the patient's consents (C-22)."""

    withdrawn: tuple[str, ...]
    """Consents that were in force and are now inactive (a new version each)."""
    deleted: tuple[str, ...]
    """Drafts and proposals that never took effect, removed with their history."""
    kept: tuple[str, ...]
    """Every other consent, kept with its history as evidence of lawful processing."""


class ConsentStore:
    """Typed access to the ``consents`` and ``consent_history`` collections."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        *,
        clock: Callable[[], datetime] = _now,
        on_change: OnChange | None = None,
    ) -> None:
        self._on_change = on_change
        """Told of every version written, after it is stored (the gateway audits it)."""
        self._consents = db[COLLECTION]
        self._history = db[HISTORY]
        # The change counters (smart_auth.revocations.EPOCHS; consent does not import smart_auth).
        self._epochs = db["change_epochs"]
        self._clock = clock

    async def ensure_indexes(self) -> None:
        """Create the indexes (idempotent; run at startup)."""
        await self._consents.create_index([("patient_id", ASCENDING), ("status", ASCENDING)])
        await self._consents.create_index([("client_ids", ASCENDING), ("patient_id", ASCENDING)])
        await self._consents.create_index([("actors", ASCENDING)])
        await self._history.create_index(
            [("consent_id", ASCENDING), ("version", ASCENDING)], unique=True
        )
        await self._history.create_index([("patient_id", ASCENDING)])

    # -- writing ---------------------------------------------------------------------------------

    def _document(
        self,
        resource: Mapping[str, Any],
        consent_id: str,
        version: int,
        ever_active: bool,
        change: Change,
        *,
        check: bool = True,
    ) -> Document:
        consent = model.validate(resource) if check else dict(resource)
        moment = self._clock()
        meta = {
            k: v
            for k, v in (consent.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")
        }
        consent = {
            "resourceType": "Consent",
            "id": consent_id,
            "meta": {**meta, "versionId": str(version), "lastUpdated": fhir_instant(moment)},
            **{k: v for k, v in consent.items() if k not in ("resourceType", "id", "meta")},
        }
        actors = model.actor_keys(consent)
        prefix = f"{CLIENT_SYSTEM}|"
        return {
            "_id": consent_id,
            "patient_id": model.patient_id_of(consent),
            "status": consent["status"],
            "client_ids": [key.removeprefix(prefix) for key in actors if key.startswith(prefix)],
            "actors": actors,
            "root_type": consent["provision"]["type"],
            "version": version,
            "ever_active": ever_active or consent["status"] == "active",
            "last_updated": moment,
            **change.as_document(),
            "resource": consent,
        }

    async def _changed(self) -> None:
        """Move the consents' change counter (after every write): readers that cache consents
        check it on each request and read again when it moved (C-12). Sent again once when the
        connection dies under it: moved twice, a cache is refilled once more; not moved, a
        withdrawal could go unseen by the instances that cache consents."""
        await retried(
            lambda: self._epochs.update_one({"_id": "consents"}, {"$inc": {"n": 1}}, upsert=True)
        )

    async def _written(self, written: Written) -> None:
        if self._on_change is not None:
            await self._on_change(written)

    async def _record(self, document: Document, method: str) -> None:
        await self._changed()
        await self._history.insert_one(
            {
                "consent_id": document["_id"],
                "patient_id": document["patient_id"],
                "version": document["version"],
                "method": method,
                "last_updated": document["last_updated"],
                "changed_by": document.get("changed_by"),
                "channel": document.get("channel"),
                "reason": document.get("reason"),
                "resource": document["resource"] if method != "DELETE" else None,
            }
        )
        change = _change_of(document) or Change("unknown", Channel.SYSTEM)
        await self._written(
            Written(
                document["_id"],
                document["version"],
                _METHODS[method],
                document.get("patient_id"),
                change,
            )
        )

    async def create(self, resource: Mapping[str, Any], *, change: Change) -> dict[str, Any]:
        """Store a new Consent (a server-assigned id, version 1) and return it."""
        document = self._document(resource, str(uuid.uuid4()), 1, False, change)
        await self._consents.insert_one(document)
        await self._record(document, "POST")
        return dict(document["resource"])

    async def _current(self, consent_id: str) -> Document:
        document = await self._consents.find_one({"_id": model.fhir_id(consent_id, "consent id")})
        if document is None:
            if await self._history.find_one({"consent_id": consent_id}, {"_id": 1}):
                raise ConsentDeleted(f"Consent/{consent_id} was deleted")
            raise ConsentNotFound(f"Consent/{consent_id} is not known")
        return document

    async def update(
        self,
        consent_id: str,
        resource: Mapping[str, Any],
        *,
        change: Change,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Replace a Consent with a new version. ``if_match``: the version the caller read."""
        return await self._update(await self._current(consent_id), resource, if_match, change)

    async def _update(
        self,
        current: Document,
        resource: Mapping[str, Any],
        if_match: str | None,
        change: Change,
        *,
        check: bool = True,
    ) -> dict[str, Any]:
        consent_id: str = current["_id"]
        if if_match is not None and _version(if_match) != current["version"]:
            raise VersionConflict(f"Consent/{consent_id} is at version {current['version']}")
        if check:  # before reading anything of it: the body may be any JSON (P-22)
            resource = model.validate(resource)
        body_id = resource.get("id")
        if body_id is not None and body_id != consent_id:
            raise ConsentInvalid([Issue("gw-5", "Consent.id", "the id must match the URL")])
        document = self._document(
            resource,
            consent_id,
            current["version"] + 1,
            current.get("ever_active", False),
            change,
            check=False,
        )
        if document["patient_id"] != current["patient_id"]:
            raise ConsentInvalid([Issue("gw-5", "Consent.patient", "the patient cannot change")])
        done = await self._consents.replace_one(
            {"_id": consent_id, "version": current["version"]}, document
        )
        if done.matched_count != 1:
            raise VersionConflict(f"Consent/{consent_id} changed meanwhile")
        await self._record(document, "PUT")
        return dict(document["resource"])

    async def delete(self, consent_id: str, *, change: Change, if_match: str | None = None) -> None:
        """Delete a Consent; its history (and the deletion) stays readable."""
        current = await self._current(consent_id)
        if if_match is not None and _version(if_match) != current["version"]:
            raise VersionConflict(f"Consent/{consent_id} is at version {current['version']}")
        done = await self._consents.delete_one({"_id": consent_id, "version": current["version"]})
        if done.deleted_count != 1:
            raise VersionConflict(f"Consent/{consent_id} changed meanwhile")
        current["version"] += 1
        current["last_updated"] = self._clock()
        current.update(change.as_document())
        await self._record(current, "DELETE")

    # -- reading ---------------------------------------------------------------------------------

    async def read(self, consent_id: str) -> dict[str, Any]:
        """The current version (:class:`ConsentDeleted` once deleted)."""
        return dict((await self._current(consent_id))["resource"])

    async def vread(self, consent_id: str, version_id: str) -> dict[str, Any]:
        """One version of a Consent."""
        version = _version(version_id)
        entry = await self._history.find_one(
            {"consent_id": model.fhir_id(consent_id, "consent id"), "version": version}
        )
        if entry is None:
            current = await self._consents.find_one({"_id": consent_id, "version": version})
            if current is None:
                raise ConsentNotFound(f"Consent/{consent_id} has no version {version}")
            return dict(current["resource"])
        if entry["resource"] is None:
            raise ConsentDeleted(f"version {version} of Consent/{consent_id} is its deletion")
        return dict(entry["resource"])

    async def history(self, consent_id: str) -> list[HistoryEntry]:
        """Every version, newest first."""
        cursor = self._history.find({"consent_id": model.fhir_id(consent_id, "consent id")})
        entries = [
            HistoryEntry(
                str(e["version"]), e["method"], e["last_updated"], e["resource"], _change_of(e)
            )
            async for e in cursor.sort("version", DESCENDING)
        ]
        if not entries:
            await self._current(consent_id)  # raises when unknown
        return entries

    async def search(
        self,
        *,
        patient_id: str | None = None,
        status: str | None = None,
        client_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Consents by patient, status and app (client id), most recently changed first."""
        query: dict[str, str] = {}
        if patient_id is not None:
            query["patient_id"] = model.fhir_id(patient_id, "patient id")
        if status is not None:
            query["status"] = _status(status)
        if client_id is not None:
            query["client_ids"] = client_id_value(client_id)
        if not isinstance(limit, int) or not 1 <= limit <= _MAX_SEARCH:
            raise InvalidParameter(f"limit must be 1..{_MAX_SEARCH}")
        cursor = self._consents.find(query, {"resource": 1}).sort(
            [("last_updated", DESCENDING), ("_id", ASCENDING)]
        )
        return [dict(document["resource"]) async for document in cursor.limit(limit)]

    async def active_for(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's active consents: one indexed read (the store keeps no cache)."""
        query = {"patient_id": model.fhir_id(patient_id, "patient id"), "status": "active"}
        cursor = self._consents.find(query, {"resource": 1, "_id": 0})
        return [document["resource"] async for document in cursor]

    async def active_for_many(self, patient_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """``active_for`` for several patients in one indexed query (the gateway batches the
        requests that arrive together; the store keeps no cache)."""
        # A malformed id (from a malformed reference upstream) has no consents: it is skipped, so
        # one bad reference cannot fail the other requests whose lookups share this query.
        ids = [p for p in patient_ids if isinstance(p, str) and _ID.match(p)]
        query = {"patient_id": {"$in": ids}, "status": "active"}
        found: dict[str, list[dict[str, Any]]] = {patient_id: [] for patient_id in ids}
        async for document in self._consents.find(query, {"resource": 1, "patient_id": 1}):
            found.setdefault(document["patient_id"], []).append(document["resource"])
        return found

    # -- the authorization server's operations ---------------------------------------------------

    async def _set_status(self, document: Document, status: str, change: Change) -> bool:
        """A new version with another status. Not re-validated: the Consent was valid when it
        was stored, and withdrawing it must not fail because a rule was added since (C-14)."""
        resource = {**document["resource"], "status": status}
        try:
            await self._update(document, resource, str(document["version"]), change, check=False)
        except VersionConflict:
            return False
        return True

    async def withdraw(self, consent_id: str, *, change: Change) -> dict[str, Any]:
        """Set a Consent ``inactive`` (a new version, C-12), whatever it holds; returns it."""
        for _ in range(3):  # retry when a concurrent writer changed it meanwhile
            document = await self._current(consent_id)
            if document["status"] == "inactive":
                return dict(document["resource"])
            if await self._set_status(document, "inactive", change):
                return dict((await self._current(consent_id))["resource"])
        raise VersionConflict(f"Consent/{consent_id} keeps changing; try again")

    async def _deactivate(
        self, query: dict[str, Any], change: Change, keep: str | None = None
    ) -> list[str]:
        changed: list[str] = []
        for _ in range(3):  # retry documents a concurrent writer changed meanwhile
            pending = [d async for d in self._consents.find(query) if d["_id"] != keep]
            if not pending:
                break
            for document in pending:
                if await self._set_status(document, "inactive", change):
                    changed.append(document["_id"])
        return sorted(changed)

    async def revoke_app(self, patient_id: str, client_id: str, *, change: Change) -> list[str]:
        """Set inactive every active permit Consent of the patient naming the app (C-12); return
        their ids. Deny consents naming the app stay in force."""
        query = {
            "patient_id": model.fhir_id(patient_id, "patient id"),
            "client_ids": client_id_value(client_id),
            "status": "active",
            "root_type": "permit",
        }
        return await self._deactivate(query, change)

    async def grant_app(
        self,
        patient_id: str,
        client_id: str,
        client_name: str,
        purposes: Sequence[str],
        resource_types: Sequence[str],
        granular_scopes: Sequence[str],
        start: datetime,
        end: datetime | None,
        recorded_by: str | None = None,
        *,
        change: Change,
        supersede: bool = True,
        sensitivity_labels: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Write the Consent given on the authorization screen (C-05) and return it. With
        ``supersede`` the app's earlier grants for this patient become inactive, so the latest
        approval is what holds."""
        client_id_value(client_id)
        consent = model.app_grant(
            patient_id,
            client_id,
            client_name,
            purposes,
            resource_types,
            granular_scopes,
            start,
            end,
            recorded_by,
            sensitivity_labels,
        )
        created = await self.create(consent, change=change)
        if supersede:
            query = {
                "patient_id": patient_id,
                "client_ids": client_id,
                "status": "active",
                "root_type": "permit",
            }
            superseded = Change(change.by, Channel.SYSTEM, f"superseded by Consent/{created['id']}")
            await self._deactivate(query, superseded, keep=created["id"])
        return created

    async def erase_patient(self, patient_id: str, *, change: Change) -> ErasureReport:
        """C-22 for consents. Consents that ever took effect are evidence that processing was
        lawful (GDPR Art. 7(1), 17(3)(b), (e)), so they and their history are kept; those in force
        are withdrawn (made inactive), so nothing more is released. Drafts and proposals that
        never took effect prove nothing and are deleted with their history. No decision is
        cached anywhere, so there is no other derived data to delete."""
        query = {"patient_id": model.fhir_id(patient_id, "patient id")}
        documents = [d async for d in self._consents.find(query)]
        withdrawn = await self._deactivate({**query, "status": "active"}, change)
        never = [
            d["_id"]
            for d in documents
            if not d.get("ever_active") and d["status"] in ("draft", "proposed")
        ]
        if never:
            await self._consents.delete_many({"_id": {"$in": never}, "ever_active": False})
            await self._history.delete_many({"consent_id": {"$in": never}})
            await self._changed()
            for document in documents:
                if document["_id"] in never:
                    await self._written(
                        Written(
                            document["_id"], document["version"] + 1, "delete", patient_id, change
                        )
                    )
        kept = sorted(d["_id"] for d in documents if d["_id"] not in never)
        return ErasureReport(tuple(withdrawn), tuple(sorted(never)), tuple(kept))


def _change_of(document: Mapping[str, Any]) -> Change | None:
    by, channel = document.get("changed_by"), document.get("channel")
    if not isinstance(by, str) or not isinstance(channel, str):
        return None
    try:
        return Change(by, Channel(channel), document.get("reason"))
    except ValueError:
        return None
