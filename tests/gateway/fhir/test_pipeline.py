"""The pipeline's orchestration, steps 3 to 6 of :meth:`Pipeline.run` (DESIGN.md "The request
pipeline"): which step runs when, and that nothing reaches the upstream once a step has refused.
The steps themselves are stand-ins that record what they were asked (each step has its own tests;
whole requests run end to end in tests/e2e)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from consent.decide import Basis, Decision
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call
from gateway.fhir.interaction import FhirInteraction, Kind, parse
from gateway.fhir.pipeline import Pipeline
from gateway.proxy.answer import Answer
from gateway.settings import load_settings
from gateway.web.errors import FhirError, Forbidden
from smart_auth.scopes import ScopeSet

CONTEXT = AccessContext(
    issuer="i",
    subject="s",
    client_id="app",
    scopes=ScopeSet.parse("system/*.cruds"),
    jti="j",
    expires_at=datetime.now(UTC),
)
OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {}}


class Steps:
    """Stand-ins for the steps, writing what happens into one log."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.refusal: Decision | None = None
        self.refuse_write = False
        self.revoked = False

    # step 1's revocation check, which a batch repeats before every entry
    async def is_revoked(self, context: AccessContext) -> bool:
        self.log.append("revoked?")
        return self.revoked

    # step 4, the consent gate
    async def start(self, context: AccessContext, action: str = "access") -> object:
        self.log.append(f"consent.start {action}")
        return object()

    async def refusal_for_read(self, request: object, decision: Any, asked: Any) -> Any:
        self.log.append("consent.refusal")
        return self.refusal

    # step 5, the upstream
    async def fetch(self, call: Call) -> Answer:
        self.log.append(f"fetch {call.interaction.kind}")
        return Answer(200, {}, dict(OBSERVATION))

    # step 6, the release
    async def answer(self, decision: Any, answer: Answer, consent: object, **_: Any) -> Answer:
        self.log.append("release.answer")
        return answer

    async def written(self, context: Any, decision: Any, answer: Answer) -> Answer:
        self.log.append("release.written")
        return answer

    # the write policy
    async def prepare(self, context: Any, decision: Any, call: Call) -> Any:
        self.log.append("writes.prepare")
        return decision, call

    async def check(self, context: Any, decision: Any, call: Call) -> CIMultiDict[str]:
        self.log.append("writes.check")
        if self.refuse_write:
            raise Forbidden("refused by the write policy")
        return CIMultiDict()

    # step 7, the audit record
    async def record(self, facts: Any) -> None:
        self.log.append(f"audit {facts.status}")

    # the Consent API
    async def handle(self, context: Any, interaction: Any, body: Any, headers: Any) -> Answer:
        self.log.append("consents.handle")
        return Answer(200, {}, {"resourceType": "Bundle", "type": "searchset"})

    # the AuditEvent API
    async def handle_audit(self, context: Any, call: Call) -> Answer:
        self.log.append(f"audit_events.handle {call.interaction.kind}")
        return Answer(200, {}, {"resourceType": "Bundle", "type": "searchset"})


class _As:
    """An object whose methods are some of ``Steps``' under other names."""

    def __init__(self, **methods: Any) -> None:
        self.__dict__.update(methods)


def pipeline(steps: Steps) -> Pipeline:
    settings = load_settings(
        upstream_url="http://upstream.example/fhir",
        mongodb_uri="mongodb://unused",
        public_base_url="http://gw.example",
    )
    return Pipeline(
        settings,
        authenticator=_As(is_revoked=steps.is_revoked),  # type: ignore[arg-type]
        representation=_As(changed=None),  # type: ignore[arg-type]
        fetcher=_As(fetch=steps.fetch),  # type: ignore[arg-type]
        consent=_As(start=steps.start, refusal=steps.refusal_for_read),  # type: ignore[arg-type]
        consents=_As(handle=steps.handle),  # type: ignore[arg-type]
        audit_events=_As(handle=steps.handle_audit),  # type: ignore[arg-type]
        pages=_As(),  # type: ignore[arg-type]
        release=_As(answer=steps.answer, written=steps.written),  # type: ignore[arg-type]
        writes=_As(prepare=steps.prepare, check=steps.check),  # type: ignore[arg-type]
        cors=_As(),  # type: ignore[arg-type]
        rate_limit=_As(),  # type: ignore[arg-type]
        audit=_As(record_request=steps.record),  # type: ignore[arg-type]
    )


def call(method: str, path: str, body: Any = None) -> Call:
    return Call(interaction=parse(method, path), body=body)


async def test_a_read_reads_consent_while_fetching_then_releases() -> None:
    steps = Steps()
    await pipeline(steps).run(CONTEXT, call("GET", "Observation/o1"))
    assert steps.log[0] == "consent.start access"
    assert sorted(steps.log[1:3]) == ["consent.refusal", "fetch read"]  # concurrently
    assert steps.log[3:] == ["release.answer"]


async def test_c03_a_search_refused_by_consent_answers_why_and_releases_nothing() -> None:
    steps = Steps()
    steps.refusal = Decision(permitted=False, basis=Basis.NO_CONSENT, reason="no consent")
    answer = await pipeline(steps).run(CONTEXT, call("GET", "Observation"))
    assert "release.answer" not in steps.log
    assert answer.body is not None and answer.body["total"] == 0
    with pytest.raises(Forbidden):  # a read: 403
        await pipeline(steps).run(CONTEXT, call("GET", "Observation/o1"))


async def test_c24_a_write_is_checked_whole_before_anything_is_sent() -> None:
    steps = Steps()
    await pipeline(steps).run(CONTEXT, call("PUT", "Observation/o1", OBSERVATION))
    assert steps.log == ["writes.prepare", "writes.check", "fetch update", "release.written"]
    refused = Steps()
    refused.refuse_write = True
    with pytest.raises(Forbidden):
        await pipeline(refused).run(CONTEXT, call("PUT", "Observation/o1", OBSERVATION))
    assert not any(step.startswith("fetch") for step in refused.log)


async def test_s29_a_refused_transaction_entry_sends_nothing() -> None:
    steps = Steps()
    steps.refuse_write = True
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": OBSERVATION, "request": {"method": "PUT", "url": "Observation/o1"}},
            {"resource": OBSERVATION, "request": {"method": "PUT", "url": "Observation/o2"}},
        ],
    }
    with pytest.raises(FhirError) as refused:
        transaction = FhirInteraction(Kind.TRANSACTION, "POST")
        await pipeline(steps).run(CONTEXT, Call(interaction=transaction, body=bundle))
    assert "entry 1" in refused.value.diagnostics
    assert not any(step.startswith("fetch") for step in steps.log)


async def test_s29_batch_entries_run_one_by_one_and_fail_alone() -> None:
    steps = Steps()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation/o1"}},
            {"request": {"method": "GET", "url": "NotAType/x"}},
            {"request": {"method": "GET", "url": "Observation/o2"}},
        ],
    }
    answer = await pipeline(steps).run(CONTEXT, Call(interaction=parse("POST", ""), body=bundle))
    assert answer.body is not None
    statuses = [e["response"]["status"] for e in answer.body["entry"]]
    assert statuses[0].startswith("200") and statuses[2].startswith("200")
    assert not statuses[1].startswith("200")
    assert steps.log.count("release.answer") == 2


async def test_c02_consent_is_the_gateways_own_and_never_reaches_the_upstream() -> None:
    steps = Steps()
    await pipeline(steps).run(CONTEXT, call("GET", "Consent"))
    assert steps.log == ["consents.handle"]


async def test_a11_the_audit_log_is_the_gateways_own_and_never_reaches_the_upstream() -> None:
    steps = Steps()
    for method, path in (
        ("GET", "AuditEvent"),
        ("GET", "AuditEvent/e1"),
        ("GET", "Patient/p1/AuditEvent"),
        ("PUT", "AuditEvent/e1"),
        ("DELETE", "AuditEvent/e1"),
        ("GET", "AuditEvent/e1/_history"),
    ):
        await pipeline(steps).run(CONTEXT, call(method, path, body={"resourceType": "AuditEvent"}))
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "AuditEvent?patient=p1"}}],
    }
    await pipeline(steps).run(CONTEXT, Call(interaction=parse("POST", ""), body=batch))
    assert [step for step in steps.log if step != "revoked?"] == [
        "audit_events.handle search-type",
        "audit_events.handle read",
        "audit_events.handle search-compartment",
        "audit_events.handle update",
        "audit_events.handle delete",
        "audit_events.handle history-instance",
        "audit_events.handle search-type",
    ]
