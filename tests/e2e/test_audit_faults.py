"""Faults with real processes (A-08, A-10): the database stopped, the spool unusable too, and the
recording process killed with SIGKILL under load — no acknowledged AuditEvent is lost, nothing is
acknowledged that is not durable, and the chain still verifies."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.errors import AuditUnavailable
from gateway.audit.facts import Observer
from gateway.audit.log import AuditLog, Mode
from gateway.audit.store import EVENTS
from gateway.audit.verify import verify_all
from gateway.localstack import EmbeddedMongo
from tests.audit.conftest import audit_client
from tests.audit.samples import event
from tests.conftest import Stack

# Closing a client whose server is gone cancels PyMongo's monitor in the middle of connecting,
# and PyMongo (4.x) then leaves that socket to the garbage collector: a ResourceWarning that is
# the driver's, not the gateway's. It is collected right after each test, under this filter.
_DRIVER_SOCKET = "ignore::pytest.PytestUnraisableExceptionWarning"
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings(_DRIVER_SOCKET)]

ROOT = Path(__file__).resolve().parents[2]
OBSERVER = Observer("fault-test:8080", "http://127.0.0.1:8080/fhir")
_ID = re.compile(r"^[0-9a-f-]{36}$")


async def until(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def unusable(spool: Path, moved: Path) -> None:
    """The spool's directory replaced by a file: nothing can be written there (root included)."""
    spool.rename(moved)
    spool.write_text("not a directory")


async def ids_in(db: AsyncDatabase[dict[str, Any]]) -> list[str]:
    return [str(doc["_id"]) async for doc in db[EVENTS].find({}, {"_id": 1}).sort("seq", 1)]


@pytest.fixture(autouse=True)
def _collect_driver_sockets() -> Iterator[None]:
    """Set up before the test's event loop, so torn down after it: the stray socket is freed
    here, while this module's warning filter applies."""
    yield
    gc.collect()


async def test_a08_with_mongodb_stopped_events_are_spooled_and_with_no_spool_refused(
    tmp_path: Path,
) -> None:
    mongo = EmbeddedMongo(data_dir=tmp_path / "mongo")
    await asyncio.to_thread(mongo.start)
    spool = tmp_path / "spool"
    client = audit_client(mongo.uri)
    log = AuditLog(client.audit, spool, OBSERVER, None, write_timeout=0.5)
    try:
        await log.start()
        await log.record([event() for _ in range(5)])

        await asyncio.to_thread(mongo.stop)  # the database is gone
        spooled = [event() for _ in range(5)]
        await asyncio.gather(*(log.record([e]) for e in spooled))  # still acknowledged
        assert log.status().mode is Mode.SPOOL
        assert log.status().spooled_bytes > 0

        unusable(spool, tmp_path / "spool-moved")  # ... and then the spool cannot be written
        with pytest.raises(AuditUnavailable):
            await log.record([event()])
        assert log.status().head == 10  # the refused event is not on the chain
    finally:
        await log.close()
        await client.close()
        await asyncio.to_thread(mongo.stop)


async def test_a08_spooled_events_survive_a_restart_with_mongodb_down(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(data_dir=tmp_path / "mongo")
    await asyncio.to_thread(mongo.start)
    spool = tmp_path / "spool"
    try:
        client = audit_client(mongo.uri)
        log = AuditLog(client.audit, spool, OBSERVER, None, write_timeout=0.5)
        await log.start()
        before = [event() for _ in range(3)]
        await log.record(before)
        await asyncio.to_thread(mongo.stop)
        during = [event() for _ in range(4)]
        for recorded in during:
            await log.record([recorded])
        await log.close()
        await client.close()

        await asyncio.to_thread(mongo.start)  # the same data, a new port, a new process
        client = audit_client(mongo.uri)
        restarted = AuditLog(client.audit, spool, OBSERVER, None, write_timeout=0.5)
        await restarted.start()
        await until(lambda: restarted.status().mode is Mode.MONGODB)
        after = event()
        await restarted.record([after])
        assert await ids_in(client.audit) == [e["id"] for e in [*before, *during, after]]
        assert (await verify_all(client.audit)).ok
        await restarted.close()
        await client.close()
    finally:
        await asyncio.to_thread(mongo.stop)


@pytest.mark.parametrize("mongodb", ["taking writes", "refusing writes"])
async def test_a10_sigkill_mid_load_loses_no_acknowledged_event(
    mongodb: str, local_stack_env: Stack, tmp_path: Path
) -> None:
    client = audit_client(local_stack_env.mongo_uri)
    name = f"audit_{uuid.uuid4().hex[:12]}"
    db = client[name]
    spool = tmp_path / "spool"
    refusing = mongodb == "refusing writes"
    fail_point = {"configureFailPoint": "failCommand", "mode": "off"}
    try:
        if refusing:
            await client.admin.command(
                {
                    **fail_point,
                    "mode": "alwaysOn",
                    "data": {"failCommands": ["insert"], "errorCode": 91},
                }
            )
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.audit_writer",
            local_stack_env.mongo_uri, name, str(spool), OBSERVER.name,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert writer.stdout is not None
        lines: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(lines) < 400 and time.monotonic() < deadline:
            line = await asyncio.wait_for(writer.stdout.readline(), 30)
            if not line:
                break
            lines.append(line)
        writer.send_signal(signal.SIGKILL)  # in the middle of the load
        rest, _ = await writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        text = b"".join(lines).decode() + rest.decode()
        acknowledged = [s for s in text.split("\n")[:-1] if _ID.match(s)]  # complete lines only
        assert len(acknowledged) >= 300, text[:200]
        if refusing:
            await client.admin.command(fail_point)
            refusing = False

        recovered = AuditLog(db, spool, OBSERVER, None, write_timeout=1.0)
        await recovered.start()  # replays what the killed process spooled
        await until(lambda: recovered.status().mode is Mode.MONGODB)
        await recovered.close()
        stored = await ids_in(db)
        assert set(acknowledged) <= set(stored)
        assert len(stored) == len(set(stored))
        report = await verify_all(db)
        assert report.ok, report
    finally:
        if refusing:
            await client.admin.command(fail_point)
        await client.drop_database(name)
        await client.close()
