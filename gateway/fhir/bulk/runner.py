"""Running bulk export jobs (FHIR Bulk Data Access IG v2.0; CONSENT.md C-03, C-10, C-12, C-15,
C-26, C-27; AUDIT.md A-04).

Every instance runs :meth:`Exporter.run_forever` in the background: it claims a job whose lease has
run out (:mod:`gateway.fhir.bulk.jobs`), renews the lease with every page, and stops when it loses
it (the job cancelled, or taken over after a stall). A job is a list of tasks, each a type search
— one per type (and per ``_typeFilter``) at system level, one per patient and type at Patient and
Group level — paged through the upstream with ordinary searches. The upstream's own ``$export`` is
not used: the gateway must see every resource to release it, and needs from the upstream nothing
but search.

Every page goes through the very release path of a search (:meth:`gateway.fhir.release.Release.
answer`): the token's scopes and the compartment (``access``), the consent of each resource's
patients for this client and purpose, read afresh for each page (``consent_gate``), the sensitive
data rules and the purpose's minimisation profile. What is released is written to the type's file,
encrypted (:mod:`gateway.fhir.bulk.files`); what is withheld is counted by reason, never named.

When the last task is done, one AuditEvent per patient whose data went into a file is recorded
(BALP: one per patient; subtype ``operation`` and DICOM "Export"), then the job is done and its
files are kept for ``export_file_lifetime_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from pymongo.errors import PyMongoError

from consent.decide import Basis, Decision
from gateway.audit.events import MAX_DECISIONS
from gateway.audit.facts import PatientRelease, RequestFacts
from gateway.audit.log import AuditLog
from gateway.fhir import compartment
from gateway.fhir.access import AccessDecision, authorize
from gateway.fhir.bulk.files import ExportFiles, owner_names
from gateway.fhir.bulk.jobs import Cursor, JobStore, Status
from gateway.fhir.bulk.params import Level
from gateway.fhir.consent_gate import ConsentGate
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call, Fetcher
from gateway.fhir.interaction import parse
from gateway.fhir.release import Release
from gateway.proxy.answer import Answer
from gateway.proxy.rewrite import UrlRewriter
from gateway.web.errors import (
    FhirError,
    ServiceUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.web.metrics import Metrics
from smart_auth.clients import ClientStore
from smart_auth.scopes import Context, ScopeSet

log = logging.getLogger(__name__)

EXPORT_INTERACTION = "export"
"""The interaction kind of an export's AuditEvents (:mod:`gateway.audit.events`)."""

_REASONS: dict[Basis, str] = {
    Basis.DENY: "consent",
    Basis.NO_CONSENT: "consent",
    Basis.SENSITIVE: "sensitive",
    Basis.UNATTRIBUTED: "unattributed",
    Basis.UNDECIDABLE: "undecidable",
    Basis.MINIMISATION: "minimisation",
}
SCOPE_REASON = "scope"
UPSTREAM_REASON = "upstream-error"
REASONS = {
    "consent": "withheld by the patient's consent",
    "sensitive": "sensitive data the patient's consent does not release",
    "unattributed": "cannot be attributed to patients (C-27)",
    "undecidable": "its sensitivity could not be decided (C-26)",
    "minimisation": "the purpose's minimisation profile cannot release it (C-28)",
    SCOPE_REASON: "outside the token's scopes",
    UPSTREAM_REASON: "searches the upstream did not answer (their resources are missing)",
}
"""What each withheld count of the error file means."""
MAX_FAILURES = 5
"""Runs of a job that a failing upstream or database may stop before the job fails."""
_TRANSIENT = (
    PyMongoError,
    ServiceUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class ExportTuning:
    page_size: int
    lease: timedelta
    poll_seconds: float
    file_lifetime: timedelta


def context_of(job: Mapping[str, Any]) -> AccessContext:
    """The kick-off's token as the job runs under it: its ``system/`` scopes and purposes."""
    token = job["token"]
    scopes = ScopeSet.parse(str(token["scopes"]))
    return AccessContext(
        issuer=str(token["issuer"]),
        subject=str(token["subject"]),
        client_id=str(job["client_id"]),
        scopes=ScopeSet(tuple(s for s in scopes if s.context is Context.SYSTEM)),
        jti=str(token["jti"]),
        grant_id=token.get("grant_id"),
        expires_at=datetime.max.replace(tzinfo=UTC),
        fhir_user=token.get("fhir_user"),
        purposes=tuple(token.get("purposes") or ()),
    )


@dataclass(slots=True)
class _Released:
    """What of one patient's data went into the files, for their AuditEvent (A-04, A-05)."""

    count: int = 0
    types: set[str] = field(default_factory=set)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """The distinct consent decisions that applied to their data (at most ``MAX_DECISIONS``)."""

    def decided(self, decisions: Iterable[Decision]) -> None:
        for decision in decisions:
            doc = {
                "permitted": decision.permitted,
                "basis": decision.basis.value,
                "reason": decision.reason,
                "consent_id": decision.consent_id,
                "provision": decision.provision,
                "purposes": list(decision.purposes),
                "labels": list(decision.labels),
            }
            if doc not in self.decisions and len(self.decisions) < MAX_DECISIONS:
                self.decisions.append(doc)

    def to_doc(self, patient: str) -> list[Any]:
        return [patient, self.count, sorted(self.types), self.decisions]

    @classmethod
    def from_doc(cls, doc: Sequence[Any]) -> tuple[str, _Released]:
        decisions = list(doc[3]) if len(doc) > 3 else []
        return str(doc[0]), cls(int(doc[1]), set(doc[2]), decisions)

    def release(self, patient: str) -> PatientRelease:
        decisions = tuple(
            Decision(
                permitted=bool(d["permitted"]),
                basis=Basis(d["basis"]),
                reason=str(d["reason"]),
                consent_id=d.get("consent_id"),
                provision=d.get("provision"),
                purposes=tuple(d.get("purposes") or ()),
                labels=tuple(d.get("labels") or ()),
            )
            for d in self.decisions
        )
        return PatientRelease(patient, decisions, (), self.count, tuple(sorted(self.types)))


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A page as the upstream answered it, with the decision its search was authorized under."""

    resource_type: str
    decision: AccessDecision
    answer: Answer
    next_link: str | None


@dataclass(slots=True)
class _Page:
    lines: dict[tuple[str, ...], list[bytes]] = field(default_factory=dict)
    withheld: dict[str, int] = field(default_factory=dict)
    released: int = 0


class Exporter:
    """Runs export jobs (the module's docstring)."""

    def __init__(
        self,
        jobs: JobStore,
        files: ExportFiles,
        *,
        fetcher: Fetcher,
        release: Release,
        consent: ConsentGate,
        clients: ClientStore,
        rewriter: UrlRewriter,
        audit: AuditLog,
        metrics: Metrics,
        tuning: ExportTuning,
        owner: str,
        revoked: Callable[[AccessContext], Awaitable[bool]],
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._fetcher = fetcher
        self._release = release
        self._consent = consent
        self._clients = clients
        self._rewriter = rewriter
        self._audit = audit
        self._metrics = metrics
        self._tuning = tuning
        self._owner = owner
        self._revoked = revoked

    async def run_forever(self) -> None:
        while True:
            try:
                ran = await self.run_one()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die; the job's lease runs out and it resumes
                log.exception("bulk export: a job stopped unexpectedly")
                ran = False
            if not ran:
                await asyncio.sleep(self._tuning.poll_seconds)

    async def run_one(self) -> bool:
        """Claim and run one job; ``False`` when there was none to run."""
        job = await self._jobs.claim(self._owner, self._tuning.lease)
        if job is None:
            return False
        try:
            await self._run(job)
        except _TRANSIENT as exc:  # the lease runs out; this or another instance resumes
            failures = await self._jobs.note_failure(str(job["_id"]))
            if failures >= MAX_FAILURES:
                await self._fail(job, "the upstream or the database failed too often")
            else:
                log.warning("bulk export: job paused (%s); it resumes", type(exc).__name__)
        except FhirError as exc:
            await self._fail(job, exc.diagnostics)
        return True

    async def _cut_off(self, job: Mapping[str, Any], context: AccessContext) -> bool:
        """Whether the job must stop, checked before every page as a request checks its token
        (S-25): the client is no longer registered, or the kick-off's token (or its grant) was
        revoked. It fails then, and its files are deleted."""
        if await self._clients.get(context.client_id) is None:
            await self._fail(job, "the client that asked for this export is no longer registered")
            return True
        if await self._revoked(context):
            await self._fail(job, "the token that started this export was revoked")
            return True
        return False

    async def _fail(self, job: Mapping[str, Any], why: str) -> None:
        await self._files.delete(str(job["_id"]))
        if await self._jobs.finish(
            str(job["_id"]), self._owner, Status.FAILED, self._tuning.file_lifetime, why
        ):
            self._metrics.export_jobs.labels("failed").inc()

    async def _run(self, job: dict[str, Any]) -> None:
        job_id = str(job["_id"])
        context = context_of(job)
        if await self._cut_off(job, context):
            return
        raw = job.get("cursor") or {}
        cursor = Cursor(int(raw.get("task", 0)), raw.get("link"), int(raw.get("seq", 0)))
        await self._files.drop_from(job_id, cursor.seq)
        tasks: list[dict[str, Any]] | None = job.get("tasks")
        if tasks is None:
            tasks = await self._plan(job, context)
            if not await self._jobs.set_tasks(job_id, self._owner, tasks, self._tuning.lease):
                return
        patients = dict(_Released.from_doc(doc) for doc in job.get("patients") or [])
        keep_until = datetime.now(UTC) + self._tuning.file_lifetime + timedelta(days=1)
        # The next page is fetched while this one is released and written (upstream latency
        # overlaps the gateway's work); the cursor still moves one written page at a time.
        pending: asyncio.Future[_Fetched] | None = None
        try:
            while cursor.task < len(tasks):
                task = tasks[cursor.task]
                fetched = await (pending or self._fetch(context, task, cursor.link))
                if await self._cut_off(job, context):  # before anything of this page is kept
                    return
                pending = None
                link = fetched.next_link
                after = Cursor(cursor.task, link) if link else Cursor(cursor.task + 1, None)
                if after.task < len(tasks):
                    pending = asyncio.ensure_future(
                        self._fetch(context, tasks[after.task], after.link)
                    )
                page = await self._page(job_id, context, fetched, cursor, keep_until, patients)
                cursor = Cursor(after.task, after.link, cursor.seq + len(page.lines))
                exported = {task["type"]: page.released} if page.released else {}
                moved = await self._jobs.advance(
                    job_id,
                    self._owner,
                    cursor,
                    exported=exported,
                    withheld=page.withheld,
                    patients=[r.to_doc(p) for p, r in sorted(patients.items())],
                    lease=self._tuning.lease,
                )
                if not moved:  # cancelled, or another instance holds it now
                    if await self._jobs.status_of(job_id) == Status.CANCELLED.value:
                        await self._files.delete(job_id)  # what this page wrote after the cancel
                    return
                for rtype, n in exported.items():
                    self._metrics.export_resources.labels(rtype).inc(n)
                for reason, n in page.withheld.items():
                    self._metrics.export_withheld.labels(reason).inc(n)
        finally:
            if pending is not None:  # never swallow this task's own cancellation
                pending.cancel()
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # retrieved: it has no page to go to
        await self._audit_patients(job, context, patients)
        now = datetime.now(UTC)
        await self._files.keep_until(job_id, now + self._tuning.file_lifetime)
        if await self._jobs.finish(job_id, self._owner, Status.DONE, self._tuning.file_lifetime):
            self._metrics.export_jobs.labels("done").inc()

    async def _plan(self, job: Mapping[str, Any], context: AccessContext) -> list[dict[str, Any]]:
        base: list[list[str]] = [["_count", str(self._tuning.page_size)]]
        if job.get("since"):
            base.append(["_lastUpdated", f"gt{job['since']}"])  # "modified after" (_since)
        filters: dict[str, list[list[list[str]]]] = {}
        for rtype, params in job.get("type_filters") or []:
            filters.setdefault(str(rtype), []).append([list(p) for p in params])
        level = Level(job["level"])
        tasks: list[dict[str, Any]] = []
        if level is Level.SYSTEM:
            for rtype in job["types"]:
                for extra in filters.get(rtype) or [[]]:
                    tasks.append({"type": rtype, "params": base + extra, "patient": None})
            return tasks
        patients = (
            await self._group_members(str(job["group"]))
            if level is Level.GROUP
            else await self._all_patients()
        )
        for patient in patients:
            for rtype in job["types"]:
                param = compartment.narrowing_param(rtype)
                if param is None:
                    continue
                value = patient if param == "_id" else f"Patient/{patient}"
                for extra in filters.get(rtype) or [[]]:
                    params = [*base, *extra, [param, value]]
                    tasks.append({"type": rtype, "params": params, "patient": patient})
        return tasks

    async def _all_patients(self) -> list[str]:
        """Every Patient id the upstream holds (ids only; nothing of them is released here)."""
        found: list[str] = []
        interaction = parse("GET", "Patient", [("_count", str(self._tuning.page_size))])
        answer = await self._fetcher.fetch(Call(interaction=interaction))
        while True:
            if answer.status >= 400 or answer.body is None:
                raise UpstreamUnavailable("the upstream did not list its patients")
            for entry in answer.body.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
                    found.append(str(resource.get("id")))
            link = self._next_link(answer)
            if link is None:
                return list(dict.fromkeys(found))
            answer = await self._fetcher.follow(link)

    async def _group_members(self, group_id: str) -> list[str]:
        group = await self._fetcher.current("Group", group_id)
        if not isinstance(group, dict):
            raise ServiceUnavailable("the Group of this export cannot be read")
        found: list[str] = []
        for member in group.get("member") or []:
            if not isinstance(member, dict) or member.get("inactive") is True:
                continue
            reference = (member.get("entity") or {}).get("reference")
            if isinstance(reference, str) and reference.startswith("Patient/"):
                found.append(reference.removeprefix("Patient/"))
        return list(dict.fromkeys(found))

    def _next_link(self, answer: Answer) -> str | None:
        for link in (answer.body or {}).get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next":
                url = link.get("url")
                if isinstance(url, str):
                    return self._rewriter.relative_to_public(url)
        return None

    async def _fetch(
        self, context: AccessContext, task: Mapping[str, Any], link: str | None
    ) -> _Fetched:
        """One page of a task from the upstream: its first (the search, authorized as any
        search is) or the one its ``link`` names."""
        rtype = str(task["type"])
        params = [(str(k), str(v)) for k, v in task["params"]]
        decision = authorize(context, parse("GET", rtype, params))  # the same as a search's
        if link is None:
            answer = await self._fetcher.fetch(Call(interaction=decision.interaction))
        else:
            answer = await self._fetcher.follow(link)
        usable = answer.status < 400 and (answer.body or {}).get("resourceType") == "Bundle"
        return _Fetched(rtype, decision, answer, self._next_link(answer) if usable else None)

    async def _page(
        self,
        job_id: str,
        context: AccessContext,
        fetched: _Fetched,
        cursor: Cursor,
        keep_until: datetime,
        patients: dict[str, _Released],
    ) -> _Page:
        """One fetched page, released and written."""
        rtype, decision, answer = fetched.resource_type, fetched.decision, fetched.answer
        page = _Page()
        if answer.status >= 400 or (answer.body or {}).get("resourceType") != "Bundle":
            page.withheld[UPSTREAM_REASON] = 1
            return page
        matches = [
            e["resource"]
            for e in (answer.body or {}).get("entry") or []
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and (e.get("search") or {}).get("mode", "match") == "match"
        ]
        owners = {
            f"{r.get('resourceType')}/{r.get('id')}": decision.policy.owners_of(r) for r in matches
        }
        consent = await self._consent.start(context)  # read afresh for every page (C-12)
        released_answer = await self._release.answer(decision, answer, consent)
        released = [
            e["resource"]
            for e in (released_answer.body or {}).get("entry") or []
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == rtype
        ]
        for resource in released:
            key = f"{resource.get('resourceType')}/{resource.get('id')}"
            found = owners.get(key)
            belongs = found if found is not None else compartment.patients_of(resource)
            page.lines.setdefault(owner_names(belongs), []).append(orjson.dumps(resource))
            for patient in belongs:
                released_of = patients.setdefault(patient, _Released())
                released_of.count += 1
                released_of.types.add(rtype)
        page.released = len(released)
        for patient, tally in consent.tallies.items():
            if patient in patients:
                patients[patient].decided(tally.decisions)
        refused = 0
        for decision_taken in consent.decisions:
            if not decision_taken.permitted:
                reason = _REASONS.get(decision_taken.basis, "consent")
                page.withheld[reason] = page.withheld.get(reason, 0) + 1
                refused += 1
        other = len(matches) - len(released) - refused
        if other > 0:
            page.withheld[SCOPE_REASON] = page.withheld.get(SCOPE_REASON, 0) + other
        for n, (names, lines) in enumerate(sorted(page.lines.items())):
            await self._files.write(job_id, rtype, cursor.seq + n, names, lines, keep_until)
        return page

    async def _audit_patients(
        self,
        job: Mapping[str, Any],
        context: AccessContext,
        patients: Mapping[str, _Released],
    ) -> None:
        """One AuditEvent per patient whose data went into a file (A-04), durable (A-08)."""
        if not patients:
            return
        path, query = str(job["path"]), str(job.get("query") or "")
        releases = tuple(
            released.release(patient) for patient, released in sorted(patients.items())
        )
        await self._audit.record_request(
            RequestFacts.of(
                context,
                interaction=EXPORT_INTERACTION,
                method="GET",
                path=path,
                query=urlencode([("job", str(job["_id"]))]) + (f"&{query}" if query else ""),
                status=200,
                patients=releases,
            )
        )
