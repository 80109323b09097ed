"""The AuditEvent search parameters as queries of the log (``gateway/fhir/audit_api.py``; AUDIT.md
A-11): dates at their precision, prefixes, the patient reach, and what is refused. Whole requests
run end to end in tests/e2e/test_audit_api.py."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from gateway.audit.chain import client_key
from gateway.fhir.audit_api import AuditApi, Reach, audit_paging_secret, criteria
from gateway.fhir.context import AccessContext
from gateway.fhir.fetch import Call
from gateway.fhir.interaction import parse
from gateway.web.errors import BadRequest, Forbidden, ServiceUnavailable
from smart_auth.scopes import ScopeSet

ALL = Reach(everything=True)
AMELIA = Reach(everything=False, patients=frozenset({"amelia"}))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "since", "until"),
    [
        ("2026-03-05", utc(2026, 3, 5), utc(2026, 3, 6)),
        ("eq2026-03", utc(2026, 3, 1), utc(2026, 4, 1)),
        ("2026", utc(2026, 1, 1), utc(2027, 1, 1)),
        ("ge2026-03-05", utc(2026, 3, 5), None),
        ("gt2026-03-05", utc(2026, 3, 6), None),
        ("le2026-12", None, utc(2027, 1, 1)),
        ("lt2026-03-05", None, utc(2026, 3, 5)),
        # an instant stands for its millisecond (recorded times are kept to the millisecond)
        (
            "2026-03-05T10:00:00.250Z",
            utc(2026, 3, 5, 10, 0, 0, 250000),
            utc(2026, 3, 5, 10, 0, 0, 251000),
        ),
        ("gt2026-03-05T10:00:00.250Z", utc(2026, 3, 5, 10, 0, 0, 251000), None),
        # a time zone is honoured; microseconds round to the enclosing milliseconds
        ("ge2026-03-05T12:00:00+02:00", utc(2026, 3, 5, 10), None),
        ("lt2026-03-05T10:00:00.2505Z", None, utc(2026, 3, 5, 10, 0, 0, 251000)),
    ],
)
def test_a11_date_is_recorded_within_the_values_precision(
    value: str, since: datetime | None, until: datetime | None
) -> None:
    query = criteria([("date", value)], ALL)
    assert (query.since, query.until) == (since, until)


def test_a11_repeated_dates_and_every_other_parameter_and() -> None:
    query = criteria(
        [
            ("date", "ge2026-03-01"),
            ("date", "ge2026-03-03"),
            ("date", "lt2026-04"),
            ("date", "le2026-03-20"),
            ("patient", "Patient/amelia"),
            ("agent:identifier", client_key("ward-app")),
            ("subtype", "http://hl7.org/fhir/restful-interaction|read"),
            ("outcome", "http://hl7.org/fhir/audit-event-outcome|4"),
            ("action", "R"),
            ("_count", "5000"),
        ],
        ALL,
    )
    assert (query.since, query.until) == (utc(2026, 3, 3), utc(2026, 3, 21))
    assert query.patient == "amelia" and query.patients is None
    assert query.agent == "urn:fhir-gateway:client|ward-app"
    assert (query.subtype, query.subtype_system) == (
        "read",
        "http://hl7.org/fhir/restful-interaction",
    )
    assert (query.outcome, query.action, query.count) == ("4", "R", 1000)


def test_a11_a_patient_reach_bounds_every_query_and_refuses_another_patient() -> None:
    assert criteria([], AMELIA).patients == frozenset({"amelia"})
    assert criteria([("patient", "amelia")], AMELIA).patient == "amelia"
    with pytest.raises(Forbidden):
        criteria([("patient", "Patient/maria")], AMELIA)
    assert criteria([], ALL).patients is None


@pytest.mark.parametrize(
    "params",
    [
        [("date", "sa2026")],
        [("date", "2026-02-30")],
        [("date", "le9999-12-31T23:59:59.999999Z")],
        [("agent", "Practitioner/a,Practitioner/b")],
        [("_count", "-1")],
        [("_elements", "id")],
        [("outcome", "0"), ("outcome", "4")],
    ],
)
def test_bad_parameters_are_refused_with_400(params: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest):
        criteria(params, ALL)


def test_audit_paging_links_have_a_secret_of_their_own() -> None:
    secret = b"s" * 32
    assert audit_paging_secret(secret) != secret
    assert len(audit_paging_secret(secret)) == 32
    assert audit_paging_secret(secret) != audit_paging_secret(b"t" * 32)


class _Down:
    """A reader and a client store whose database does not answer."""

    async def read(self, event_id: str) -> None:
        raise AutoReconnect("down")

    async def search(self, query: object) -> None:
        raise AutoReconnect("down")

    async def get(self, client_id: str) -> None:
        raise AutoReconnect("down")


class _Trusting(_Down):
    async def get(self, client_id: str) -> Any:
        return SimpleNamespace(trusted=True)


@pytest.mark.parametrize("clients", [_Down(), _Trusting()])
@pytest.mark.parametrize("path", ["AuditEvent", "AuditEvent/e1"])
async def test_a11_a_database_that_does_not_answer_is_503_never_500(
    clients: _Down, path: str
) -> None:
    api = AuditApi(
        _Trusting(),  # type: ignore[arg-type]
        clients,  # type: ignore[arg-type]
        paging_secret=b"s" * 32,
        page_lifetime_seconds=60,
        fhir_base="http://gw.example/fhir",
    )
    context = AccessContext(
        issuer="i",
        subject="s",
        client_id="admin",
        scopes=ScopeSet.parse("system/AuditEvent.rs"),
        jti="j",
        expires_at=datetime.now(UTC),
    )
    with pytest.raises(ServiceUnavailable, match="cannot be read right now"):
        await api.handle(context, Call(interaction=parse("GET", path)))


class _Clients:
    def __init__(self, trusted: bool) -> None:
        self.trusted = trusted

    async def get(self, client_id: str) -> Any:
        return SimpleNamespace(trusted=self.trusted)


def _admin_context(*, external: bool) -> AccessContext:
    return AccessContext(
        issuer="https://keycloak.example/realms/h",
        subject="s",
        client_id="audit-admin",
        scopes=ScopeSet.parse("system/AuditEvent.rs"),
        jti="j",
        expires_at=datetime.now(UTC),
        external=external,
    )


async def test_a11_an_external_issuers_token_is_never_an_administrator() -> None:
    """An external issuer's ``client_id`` claim could name a trusted app of ours: it is not
    taken as that app."""
    clients = _Clients(trusted=True)
    api = AuditApi(
        _Trusting(),  # type: ignore[arg-type]
        clients,  # type: ignore[arg-type]
        paging_secret=b"s" * 32,
        page_lifetime_seconds=60,
        fhir_base="http://gw.example/fhir",
    )
    assert (await api.reach(_admin_context(external=False), "s", "searching")).everything
    with pytest.raises(Forbidden, match="for administrators only"):
        await api.reach(_admin_context(external=True), "s", "searching")
    clients.trusted = False  # the flag is read on every request
    with pytest.raises(Forbidden, match="for administrators only"):
        await api.reach(_admin_context(external=False), "s", "searching")
