"""Authorization requests in progress (RFC 6749 4.1.1 spread over several pages; RFC 9700 4.16).

Between the app's authorization request and the code, the user passes the sign-in page, maybe the
second-factor and patient-picker pages, then the consent screen. The validated request waits here,
server-side, under a random flow id that the pages carry. A flow is bound to the browser that
started it (the digest of a random cookie), carries its own CSRF token for every form of the flow
(P-07), and lives 15 minutes. A flow without an authorization request is a plain sign-in (with a
local ``next`` page).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from smart_auth.clock import Clock, system_clock
from smart_auth.idempotent import insert_once, retried

COLLECTION = "authorization_flows"
LIFETIME = timedelta(minutes=15)
_FLOW_ID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Flow:
    flow_id: str
    browser: str  # digest of the browser cookie
    csrf: str
    started_at: datetime
    params: dict[str, str] = field(default_factory=dict)  # the validated authorization request
    next_page: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    patient: str | None = None
    acts_for: tuple[str, ...] = ()

    @property
    def is_authorization(self) -> bool:
        return bool(self.params)

    def check(self, browser_cookie: str | None, csrf: str | None = None) -> bool:
        """Whether this browser owns the flow (and, for a form post, the CSRF token matches)."""
        if not browser_cookie or not hmac.compare_digest(_digest(browser_cookie), self.browser):
            return False
        return csrf is None or hmac.compare_digest(str(csrf), self.csrf)


def _from_doc(doc: dict[str, Any]) -> Flow:
    return Flow(
        flow_id=doc["_id"],
        browser=doc["browser"],
        csrf=doc["csrf"],
        started_at=doc.get("started_at") or doc["expires_at"] - LIFETIME,
        params=dict(doc.get("params") or {}),
        next_page=doc.get("next_page"),
        user_id=doc.get("user_id"),
        session_id=doc.get("session_id"),
        patient=doc.get("patient"),
        acts_for=tuple(doc.get("acts_for", ())),
    )


def new_browser_cookie() -> str:
    return secrets.token_urlsafe(32)


class FlowStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], clock: Clock = system_clock) -> None:
        self._clock = clock
        self._flows = db[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self._flows.create_index("expires_at", expireAfterSeconds=0)

    async def start(
        self,
        browser_cookie: str,
        *,
        params: dict[str, str] | None = None,
        next_page: str | None = None,
    ) -> Flow:
        now = self._clock()
        doc = {
            "_id": secrets.token_urlsafe(24),
            "browser": _digest(browser_cookie),
            "csrf": secrets.token_urlsafe(32),
            "params": {str(k): str(v) for k, v in (params or {}).items()},
            "next_page": next_page,
            "started_at": now,
            "expires_at": now + LIFETIME,
        }
        await insert_once(self._flows, doc)
        return _from_doc(doc)

    async def get(self, flow_id: object) -> Flow | None:
        if not isinstance(flow_id, str) or not _FLOW_ID.match(flow_id):
            return None
        doc = await self._flows.find_one({"_id": flow_id, "expires_at": {"$gt": self._clock()}})
        return _from_doc(doc) if doc else None

    async def signed_in(
        self, flow_id: str, *, user_id: str, session_id: str, acts_for: tuple[str, ...]
    ) -> Flow | None:
        doc = await retried(
            lambda: self._flows.find_one_and_update(
                {"_id": flow_id},
                {
                    "$set": {
                        "user_id": user_id,
                        "session_id": session_id,
                        "acts_for": list(acts_for),
                    }
                },
                return_document=ReturnDocument.AFTER,
            )
        )
        return _from_doc(doc) if doc else None

    async def choose_patient(self, flow_id: str, patient: str) -> None:
        await retried(
            lambda: self._flows.update_one({"_id": flow_id}, {"$set": {"patient": patient}})
        )

    async def finish(self, flow_id: str) -> bool:
        """End the flow (once: a second approval of the same flow finds nothing)."""
        return (await self._flows.delete_one({"_id": flow_id})).deleted_count == 1
