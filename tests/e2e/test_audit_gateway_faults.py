"""The audit trail's faults through the real gateway (A-08 … A-10): MongoDB refusing the gateway's
writes, MongoDB stopped, the spool unwritable too, and ``fhir-gateway serve`` killed with SIGKILL
under load. Every request is an authenticated, audited read of a patient's data through the
real upstream; each AuditEvent is matched to its response by the ``X-Request-Id`` the response
carried (the event's request-id entity).

Faults come from SecantusDB's ``failCommand`` fail point, scoped to the gateway's connections by
their application name (``fhir-gateway``), from stopping a SecantusDB process the test starts
itself, and from replacing the spool's directory by a file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway.app import MONGODB_APP_NAME
from gateway.appkeys import AUDIT
from gateway.audit.log import Mode
from gateway.audit.store import EVENTS
from gateway.audit.verify import verify_all
from gateway.localstack import EmbeddedMongo, free_port
from smart_auth.clients import ClientStore, ClientType, new_client
from smart_auth.grants import Grant
from smart_auth.key_provider import LocalKeyProvider
from smart_auth.keys import KeyRing
from smart_auth.tokens import TokenPolicy, issue_access_token
from tests.audit.conftest import audit_client
from tests.conftest import SESSION_KEK, RunningGateway, Stack, StartGateway
from tests.e2e.conftest import TRUSTED_APP, register_client
from tests.e2e.test_audit_faults import until, unusable
from tests.support.tokens import minted_token

# See tests/e2e/test_audit_faults.py: PyMongo leaves a socket of a stopped server to the garbage
# collector; it is collected after each test under this filter.
_DRIVER_SOCKET = "ignore::pytest.PytestUnraisableExceptionWarning"
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings(_DRIVER_SOCKET)]

FHIR_GATEWAY = str(Path(sys.executable).parent / "fhir-gateway")
AMELIA = "pat-amelia-rossi"
READ = f"Patient/{AMELIA}"
REFUSE_INSERTS = {
    "appName": MONGODB_APP_NAME,  # the gateway's connections only: not the test's own
    "failCommands": ["insert"],
    "errorCode": 8,  # UnknownError: a plain refusal, the server stays selectable
}


@dataclass
class Answer:
    status: int
    request_id: str
    body: bytes
    content_type: str


@pytest.fixture(autouse=True)
def _collect_driver_sockets() -> Iterator[None]:
    yield
    gc.collect()


@pytest_asyncio.fixture
async def admin(local_stack_env: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """The test's own connection to the shared database (another application name), for fail
    points; switched off whatever happens."""
    client = audit_client(local_stack_env.mongo_uri)
    try:
        yield client
    finally:
        await fail_point(client, "off")
        await client.close()


async def fail_point(
    client: AsyncMongoClient[dict[str, Any]], mode: str | dict[str, int], **data: Any
) -> None:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Answer:
    async with http.get(url, headers=headers) as response:
        return Answer(
            response.status,
            response.headers["X-Request-Id"],
            await response.read(),
            response.headers.get("Content-Type", ""),
        )


async def reads(
    http: aiohttp.ClientSession, gateway: RunningGateway, headers: dict[str, str], n: int
) -> list[str]:
    """``n`` reads one after the other, each answered 200; their request ids, in order."""
    ids = []
    for _ in range(n):
        answer = await get(http, f"{gateway.fhir}/{READ}", headers)
        assert answer.status == 200, answer
        ids.append(answer.request_id)
    return ids


async def patient_token(gateway: RunningGateway) -> dict[str, str]:
    """A patient's token for a trusted app (opt-out consent: no Consent needed)."""
    await register_client(gateway, TRUSTED_APP, trusted=True)
    token = await minted_token(gateway, client_id=TRUSTED_APP, purposes=("TREAT",))
    return {"Authorization": f"Bearer {token}"}


async def recorded_requests(db: AsyncDatabase[dict[str, Any]]) -> list[str]:
    """The request id of every AuditEvent in ``db``, in chain order (one chain per test)."""
    ids = []
    async for record in db[EVENTS].find({}, {"event.entity": 1, "chain": 1}).sort("seq", 1):
        for entity in record["event"].get("entity", []):
            if (entity.get("type") or {}).get("code") == "XrequestId":
                ids.append(entity["what"]["identifier"]["value"])
    return ids


async def verify_command(mongo_uri: str, database: str) -> tuple[int, str]:
    """``fhir-gateway audit verify`` as an operator runs it: exit status and output."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
        "FHIR_GATEWAY_MONGODB_URI": mongo_uri,
        "FHIR_GATEWAY_MONGODB_DATABASE": database,
    }
    process = await asyncio.create_subprocess_exec(
        FHIR_GATEWAY, "audit", "verify",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_a08_writes_refused_by_mongodb_are_spooled_then_replayed_in_order(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    admin: AsyncMongoClient[dict[str, Any]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """While MongoDB refuses the gateway's inserts, reads are still answered (their events go to
    the fsynced spool); once it takes writes again the spool is replayed into MongoDB in the
    order it was written, before anything newer, nothing lost or stored twice, and
    ``fhir-gateway audit verify`` passes. Concurrent reads share group commits (A-09), into the
    spool as into MongoDB: none of their events is lost or out of place."""
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        audit_spool_dir=tmp_path / "spool",
    )
    audit = gateway.server.app[AUDIT]
    headers = await patient_token(gateway)
    before = await reads(http, gateway, headers, 3)

    await fail_point(admin, "alwaysOn", **REFUSE_INSERTS)
    during = await reads(http, gateway, headers, 10)
    together = await asyncio.gather(
        *(get(http, f"{gateway.fhir}/{READ}", headers) for _ in range(20))
    )
    assert [answer.status for answer in together] == [200] * 20
    assert audit.status().mode is Mode.SPOOL
    assert audit.status().spooled_bytes > 0
    db = admin[gateway.settings.mongodb_database]
    assert await recorded_requests(db) == before  # nothing of the outage in MongoDB yet

    await fail_point(admin, "off")
    await until(lambda: audit.status().mode is Mode.MONGODB)
    after = await reads(http, gateway, headers, 3)

    stored = await recorded_requests(db)
    concurrent = {answer.request_id for answer in together}
    assert len(stored) == len(set(stored)) == 36  # each request once, no other event
    assert stored[:13] == before + during  # in the order they were answered
    assert set(stored[13:33]) == concurrent
    assert stored[33:] == after  # after the replayed ones
    assert (await verify_all(db)).ok
    code, out = await verify_command(local_stack_env.mongo_uri, gateway.settings.mongodb_database)
    assert code == 0, out
    assert "36 record(s)" in out and ": ok" in out, out


async def test_a08_mongodb_gone_a_read_that_had_its_data_is_answered_from_the_spool(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """MongoDB's process dies while a read's AuditEvent is being written (the read's revocation
    and consent checks are done, its data fetched): the event goes to the spool and the read is
    answered 200. From then on every FHIR request needs MongoDB (the token's revocation, the
    consent decision) and is refused 503 with nothing released, until MongoDB is back; then the
    spool is replayed, before anything newer.

    Those refusals leave no AuditEvent: the database gate answers them before the token is read,
    so there is no one to attribute them to (the trail below holds exactly the answered reads)."""
    mongo = EmbeddedMongo(data_dir=tmp_path / "mongo", test_commands=True)
    await asyncio.to_thread(mongo.start)
    control = audit_client(mongo.uri)
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=mongo.uri,
        audit_spool_dir=tmp_path / "spool",
    )
    try:
        audit = gateway.server.app[AUDIT]
        db = control[gateway.settings.mongodb_database]
        headers = await patient_token(gateway)
        before = await reads(http, gateway, headers, 2)
        head = audit.status().head

        # Hold the next audit insert in the server, then kill the server under it.
        await fail_point(
            control, {"times": 1}, appName=MONGODB_APP_NAME, failCommands=["insert"],
            blockConnection=True, blockTimeMS=30_000,
        )  # fmt: skip
        pending = asyncio.ensure_future(get(http, f"{gateway.fhir}/{READ}", headers))
        await until(lambda: audit.status().head == head + 1)  # linked: its write is in flight
        await asyncio.to_thread(mongo.kill)
        answered = await pending
        assert answered.status == 200, answered
        assert AMELIA.encode() in answered.body
        assert audit.status().mode is Mode.SPOOL

        refused = await get(http, f"{gateway.fhir}/{READ}", headers)  # fails closed
        assert refused.status == 503, refused
        assert "fhir+json" in refused.content_type
        assert b'"OperationOutcome"' in refused.body
        assert AMELIA.encode() not in refused.body and b"Rossi" not in refused.body

        await asyncio.to_thread(mongo.start, same_port=True)  # the same data and address
        await until(lambda: audit.status().mode is Mode.MONGODB, within=30)
        after = await reads(http, gateway, headers, 1)
        stored = await recorded_requests(db)
        assert stored == [*before, answered.request_id, *after], stored
        assert (await verify_all(db)).ok
    finally:
        await gateway.server.close()  # while its database is there to take the last checkpoint
        await control.close()
        await asyncio.to_thread(mongo.stop)


async def test_a08_mongodb_refusing_writes_and_no_spool_is_503_with_nothing_released(
    start_gateway: StartGateway,
    local_stack_env: Stack,
    admin: AsyncMongoClient[dict[str, Any]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """When neither MongoDB nor the spool takes the AuditEvent, the read that fetched the
    patient's data is refused: 503 with an OperationOutcome that carries none of it, and the
    refused event is not on the chain. Once either takes writes again, reads are answered."""
    spool = tmp_path / "spool"
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        audit_spool_dir=spool,
    )
    audit = gateway.server.app[AUDIT]
    headers = await patient_token(gateway)
    ok = await get(http, f"{gateway.fhir}/{READ}", headers)
    assert ok.status == 200 and b"Rossi" in ok.body  # what a refusal must not carry
    head = audit.status().head

    unusable(spool, tmp_path / "spool-moved")
    await fail_point(admin, "alwaysOn", **REFUSE_INSERTS)
    for url in (f"{gateway.fhir}/{READ}", f"{gateway.fhir}/Observation?patient={AMELIA}"):
        refused = await get(http, url, headers)
        assert refused.status == 503, refused
        assert "fhir+json" in refused.content_type
        assert b'"OperationOutcome"' in refused.body and b"nothing was released" in refused.body
        assert b"Rossi" not in refused.body and AMELIA.encode() not in refused.body
    assert audit.status().head == head  # the refused events are not on the chain
    assert audit.status().mode is Mode.MONGODB

    await fail_point(admin, "off")
    after = await reads(http, gateway, headers, 1)
    db = admin[gateway.settings.mongodb_database]
    assert await recorded_requests(db) == [ok.request_id, *after]
    assert (await verify_all(db)).ok


@dataclass
class ServedGateway:
    """``fhir-gateway serve`` in a process of its own, configured by its environment."""

    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    runs: list[asyncio.subprocess.Process] = field(default_factory=list)
    sigkilled: bool = False

    @property
    def base(self) -> str:
        return self.env["FHIR_GATEWAY_PUBLIC_BASE_URL"]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.sigkilled = False
        with self.log.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                FHIR_GATEWAY, "serve", "--workers", "1",
                env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.runs.append(self.process)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.alive, self.log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base}/healthz") as response:
                        if response.status == 200:
                            return
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, at once (its exit is awaited by :meth:`killed`)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.sigkilled = True

    async def killed(self) -> None:
        assert self.process is not None and self.sigkilled
        assert await asyncio.wait_for(self.process.wait(), 30) == -signal.SIGKILL

    async def stop(self) -> None:
        for process in self.runs:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def app_token(db: AsyncDatabase[dict[str, Any]], base: str) -> str:
    """A patient's token for a trusted app, from the served gateway's key ring (the code its
    token endpoint issues with)."""
    await ClientStore(db).add(
        new_client(
            client_id=TRUSTED_APP,
            name="Load test app",
            client_type=ClientType.ASYMMETRIC,
            scope="patient/*.rs",
            purposes=("TREAT",),
            trusted=True,
            jwks={"keys": []},
        ),
        replace=True,
    )
    key = await KeyRing(db, LocalKeyProvider(base64.b64decode(SESSION_KEK))).signing_key()
    grant = Grant(
        client_id=TRUSTED_APP,
        scope="patient/*.rs",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        user_id="load-test-user",
        fhir_user=f"Patient/{AMELIA}",
        patient=AMELIA,
        acts_for=(AMELIA,),
        purposes=("TREAT",),
    )
    return issue_access_token(
        key,
        TokenPolicy(base, f"{base}/fhir"),
        client_id=TRUSTED_APP,
        scope="patient/*.rs",
        grant=grant,
        purposes=("TREAT",),
    ).token


LOAD = 1000
CLIENTS = 8
KILL_AFTER = 300
"""Answers with 200 before the SIGKILL: in the middle of the load."""


async def load_until_killed(served: ServedGateway, token: str) -> list[str]:
    """``LOAD`` reads from ``CLIENTS`` concurrent clients, each with its own connections; the
    gateway is killed with SIGKILL once ``KILL_AFTER`` of them have been answered. The request
    ids of the answers that arrived whole with 200."""
    url = f"{served.base}/fhir/{READ}"
    answered: list[str] = []
    sent = 0

    async def client() -> None:
        nonlocal sent
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            while sent < LOAD:
                sent += 1
                try:
                    async with http.get(url) as response:
                        await response.read()
                        if response.status == 200:
                            answered.append(response.headers["X-Request-Id"])
                        else:
                            raise AssertionError(f"{response.status}: {await response.text()}")
                except aiohttp.ClientError:
                    if not served.sigkilled:  # the only way a read may fail here
                        raise
                    await served.killed()
                    return
                if len(answered) == KILL_AFTER:
                    served.kill()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    await served.killed()
    assert sent < LOAD  # killed in the middle
    return answered


@pytest.mark.parametrize("mongodb", ["taking writes", "refusing writes"])
async def test_a10_gateway_killed_mid_load_loses_no_event_of_an_answered_request(
    mongodb: str,
    local_stack_env: Stack,
    admin: AsyncMongoClient[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """``fhir-gateway serve`` (one process, its own spool) under 1,000 reads from 8 clients,
    killed with SIGKILL after 300 answers: once it is started again (and has replayed what the
    killed process spooled, when MongoDB was refusing its writes), every read answered 200 has
    its AuditEvent, none twice, and the chain verifies."""
    port = free_port()
    database = f"test_{uuid.uuid4().hex[:12]}"
    served = ServedGateway(
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
            "FHIR_GATEWAY_UPSTREAM_URL": local_stack_env.upstream.base_url,
            "FHIR_GATEWAY_MONGODB_URI": local_stack_env.mongo_uri,
            "FHIR_GATEWAY_MONGODB_DATABASE": database,
            "FHIR_GATEWAY_PORT": str(port),
            "FHIR_GATEWAY_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": SESSION_KEK,
            "FHIR_GATEWAY_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
            "FHIR_GATEWAY_AUDIT_CHAIN_NAME": "a10-gateway",
            "FHIR_GATEWAY_RATE_LIMIT_PER_CLIENT": "1000000/minute",
            "FHIR_GATEWAY_LOG_LEVEL": "WARNING",
        },
        log=tmp_path / "gateway.log",
    )
    db = admin[database]
    try:
        await served.start()
        token = await app_token(db, served.base)
        if mongodb == "refusing writes":
            await fail_point(admin, "alwaysOn", **REFUSE_INSERTS)
        answered = await load_until_killed(served, token)
        assert len(answered) >= KILL_AFTER
        await fail_point(admin, "off")
        spooled = list((tmp_path / "spool").glob("*.spool"))
        if mongodb == "refusing writes":  # what the killed process acknowledged from its spool
            assert [path.stat().st_size > 0 for path in spooled] == [True]

        await served.start()  # the same chain and spool: replays what the killed one spooled
        await until(lambda: all(path.stat().st_size == 0 for path in spooled), within=30)

        stored = await recorded_requests(db)
        assert len(stored) == len(set(stored))
        missing = set(answered) - set(stored)
        assert not missing, f"{len(missing)} answered read(s) without an AuditEvent"
        report = await verify_all(db)
        assert report.ok, report
    finally:
        await served.stop()
        await admin.drop_database(database)
