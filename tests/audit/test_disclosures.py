"""Accounting of disclosures (A-12) and reading the log (A-11): a patient's events, newest first,
as rows of date, recipient, what, purpose and outcome; searches by agent, date, subtype and
outcome with paging; the ``audit export`` command."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit import cli, security
from gateway.audit.disclosures import COLUMNS, disclosure, disclosures, to_csv, to_json
from gateway.audit.events import request_events
from gateway.audit.facts import Actor, ConsentChange, PatientRelease
from gateway.audit.store import AuditQuery, AuditReader, InvalidCursor
from tests.audit.conftest import OpenLog
from tests.audit.samples import AT, OBSERVER, PERMIT, facts
from tests.conftest import Stack


def read_of(patient: str, minutes: int, **overrides: Any) -> dict[str, Any]:
    released = (PatientRelease(patient, (PERMIT,), (f"Observation/o-{minutes}",)),)
    values: dict[str, Any] = {
        "resource_id": f"o-{minutes}",
        "version_id": None,
        "patients": released,
        "at": AT + timedelta(minutes=minutes),
    }
    values.update(overrides)
    return request_events(facts(**values), OBSERVER)[0]


async def recorded(open_log: OpenLog) -> list[dict[str, Any]]:
    log = await open_log()
    events = [
        read_of("pat-1", 1),
        read_of("pat-2", 2),
        request_events(
            facts(
                interaction="search-type",
                path="Observation",
                query="patient=pat-1&code=8867-4",
                client_id="diary",
                status=200,
                patients=(PatientRelease("pat-1", (PERMIT,), count=7),),
                at=AT + timedelta(minutes=3),
            ),
            OBSERVER,
        )[0],
        read_of("pat-1", 4, status=403, reason="no consent", client_id="=cmd|evil"),
        security.consent_changed(
            OBSERVER,
            Actor(user_id="u1", fhir_user="Patient/pat-1"),
            ConsentChange("c-9", "2", "update", "pat-1", "consent-screen"),
            at=AT + timedelta(minutes=5),
        ),
    ]
    for event in events:
        await log.record([event])
    return events


async def test_a12_a_patients_disclosures_newest_first(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    events = await recorded(open_log)
    rows = [row async for row in disclosures(AuditReader(db), "pat-1", page_size=2)]
    assert [row.event for row in rows] == [events[i]["id"] for i in (4, 3, 2, 0)]
    consent, refused, search, read = rows
    assert read.date == "2026-03-04T05:07:07.890Z"
    assert (read.app, read.user, read.action) == ("ward-app", "Practitioner/prac-1", "read")
    assert (read.what, read.purpose, read.outcome) == ("Observation/o-1", "TREAT", "success")
    assert search.what == "GET Observation?patient=pat-1&code=8867-4 (7 resource(s) released)"
    assert search.app == "diary"
    assert refused.outcome == "refused"
    assert consent.what == "Consent/c-9/_history/2" and consent.user == "Patient/pat-1"


async def test_a12_since_and_until(open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]) -> None:
    await recorded(open_log)
    since, until = AT + timedelta(minutes=2), AT + timedelta(minutes=4)
    rows = [r async for r in disclosures(AuditReader(db), "pat-1", since=since, until=until)]
    assert [r.date[:16] for r in rows] == ["2026-03-04T05:09"]


def test_a12_csv_and_json_shapes() -> None:
    rows = [disclosure(read_of("pat-1", 1, client_id="=HYPERLINK(1)"), "pat-1")]
    table = list(csv.reader(io.StringIO(to_csv(rows))))
    assert tuple(table[0]) == COLUMNS
    assert table[1][COLUMNS.index("app")] == "'=HYPERLINK(1)"  # never a formula
    [row] = orjson.loads(to_json(rows))
    assert set(row) == set(COLUMNS)


async def test_a11_search_by_agent_subtype_outcome_with_paging(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]]
) -> None:
    events = await recorded(open_log)
    reader = AuditReader(db)
    by_app = await reader.search(AuditQuery(agent=AuditQuery.client("diary")))
    assert [e["id"] for e in by_app.events] == [events[2]["id"]]
    by_user = await reader.search(AuditQuery(agent="Practitioner/prac-1", count=2))
    assert len(by_user.events) == 2 and by_user.next is not None
    rest = await reader.search(AuditQuery(agent="Practitioner/prac-1", cursor=by_user.next))
    assert [e["id"] for e in by_user.events + rest.events] == [
        events[i]["id"] for i in (3, 2, 1, 0)
    ]
    assert rest.next is None
    refused = await reader.search(AuditQuery(outcome="4"))
    assert [e["id"] for e in refused.events] == [events[3]["id"]]
    updates = await reader.search(AuditQuery(subtype="update", patient="pat-1"))
    assert [e["id"] for e in updates.events] == [events[4]["id"]]
    assert await reader.read(events[0]["id"]) == events[0]
    with pytest.raises(InvalidCursor):
        await reader.search(AuditQuery(cursor="bm90IGEgY3Vyc29y"))


async def test_a12_audit_export_writes_csv_or_json(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    local_stack_env: Stack,
    tmp_path: Path,
) -> None:
    await recorded(open_log)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'mongodb_uri = "{local_stack_env.mongo_uri}"\nmongodb_database = "{db.name}"\n'
    )
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(), "a TOML settings file")
    for kind in ("csv", "json"):
        out = tmp_path / f"{uuid.uuid4().hex}.{kind}"
        command = ["audit", "export", "--patient", "pat-1", "--format", kind]
        command += ["--output", str(out), "--since", "2026-03-04", "--config", str(config)]
        args = parser.parse_args(command)
        assert await asyncio.to_thread(args.func, args) == 0
        body = out.read_text()
        if kind == "csv":
            assert len(body.strip().split("\n")) == 5  # a header and four disclosures
        else:
            assert len(orjson.loads(body)) == 4


def test_a12_dates_without_a_zone_are_utc() -> None:
    assert cli._instant("2026-03-04") == datetime(2026, 3, 4, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        cli._instant("yesterday")
