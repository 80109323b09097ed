"""A process that records audit events in a loop, as a loaded gateway would, and prints the id of
each event once ``record`` has returned (acknowledged), one per line. The A-10 fault test kills
it with SIGKILL in the middle and then looks for every id it printed.

    python -m tests.e2e.audit_writer MONGODB_URI DATABASE SPOOL_DIR CHAIN
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from gateway.audit.facts import Observer
from gateway.audit.log import AuditLog
from tests.audit.samples import event

CONCURRENCY = 16


async def main(uri: str, database: str, spool: str, chain: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=2000, heartbeatFrequencyMS=500
    )
    log = AuditLog(
        client[database],
        Path(spool),
        Observer(chain, "http://127.0.0.1/fhir"),
        None,
        write_timeout=0.5,
    )
    await log.start()
    print("READY", flush=True)

    async def requests() -> None:
        while True:
            recorded = event()
            await log.record([recorded])
            sys.stdout.write(f"{recorded['id']}\n")
            sys.stdout.flush()

    await asyncio.gather(*(requests() for _ in range(CONCURRENCY)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
