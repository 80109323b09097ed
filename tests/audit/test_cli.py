"""``fhir-gateway audit verify`` through the command's real entry point (A-07)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit.store import EVENTS
from gateway.cli import main
from tests.audit.conftest import OpenLog
from tests.audit.samples import event
from tests.conftest import Stack


async def test_a07_fhir_gateway_audit_verify(
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    local_stack_env: Stack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = await open_log()
    await log.record([event() for _ in range(3)])
    await log.close()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'mongodb_uri = "{local_stack_env.mongo_uri}"\nmongodb_database = "{db.name}"\n'
    )
    command = ["audit", "verify", "--config", str(config)]
    assert await asyncio.to_thread(main, command) == 0
    assert "3 record(s), 1 checkpoint(s): ok" in capsys.readouterr().out
    await db[EVENTS].update_one({"seq": 2}, {"$set": {"event.action": "D"}})
    assert await asyncio.to_thread(main, command) == 1
    assert "ALTERED at seq 2" in capsys.readouterr().out
