"""The encrypted cache through the real stack (SECURITY.md P-15, P-16, P-17; CONSENT.md C-10, C-12,
C-13, C-22): nothing in clear at rest, a moved ciphertext is a logged miss, consent decides a
cached read like any other, withdrawal purges, erasure shreds, keys rotate under load, a write
through one instance invalidates for all, and with the cache off everything comes from the
upstream."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.asynchronous.database import AsyncDatabase

from consent.model import app_grant
from gateway.appkeys import AUDIT, CACHE, METRICS, MONGO
from gateway.cache.cache import CachedRead, CacheLimits, ResourceCache
from gateway.cache.crypto import Ciphertext, Record, decrypt
from gateway.cache.entries import COLLECTION as ENTRIES
from gateway.cli.keys import WRAPPED_FIELDS, rotate_keys
from gateway.settings import load_key_provider
from gateway.web.metrics import Metrics
from smart_auth.key_provider import LocalKeyProvider, parse_key, version_of
from smart_auth.rewrap import versions_in_use
from tests.conftest import SESSION_KEK, RunningGateway, Stack, StartGateway
from tests.e2e.conftest import SYSTEM_APP, SessionFor, register_client
from tests.support.fixture_data import RESOURCES, of
from tests.support.tokens import minted_token, services

pytestmark = pytest.mark.e2e

AMELIA, DANIEL = "pat-amelia-rossi", "pat-daniel-novak"
JSON = {"Content-Type": "application/fhir+json"}
APP = "cache-diary-app"


def _db(gateway: RunningGateway) -> AsyncDatabase[dict[str, Any]]:
    return gateway.server.app[MONGO][gateway.settings.mongodb_database]


def _metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    value = gateway.server.app[METRICS].registry.get_sample_value(name, labels)
    return value or 0.0


def _hits(gateway: RunningGateway, interaction: str = "read") -> float:
    return _metric(gateway, "fhir_gateway_cache_hits_total", interaction=interaction)


def _path(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


async def _read(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        raw = await response.read()
        return response.status, orjson.loads(raw) if raw else None


async def _system_session(gateway: RunningGateway) -> aiohttp.ClientSession:
    """A trusted backend token from ``gateway``'s key ring (for gateways of the test's own)."""
    await register_client(gateway, SYSTEM_APP, trusted=True)
    token = await minted_token(
        gateway,
        client_id=SYSTEM_APP,
        scope="system/*.cruds",
        user_id=None,
        fhir_user=None,
        patient=None,
        acts_for=(),
        purposes=("TREAT",),
    )
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})


async def _start_pair(
    start_gateway: StartGateway, stack: Stack, **settings: Any
) -> tuple[RunningGateway, RunningGateway]:
    """Two instances on one database (the second under the first's public address, as behind a
    load balancer)."""
    first = await start_gateway(
        upstream_url=stack.upstream.base_url, mongodb_uri=stack.mongo_uri, **settings
    )
    second = await start_gateway(
        upstream_url=stack.upstream.base_url,
        mongodb_uri=stack.mongo_uri,
        mongodb_database=first.settings.mongodb_database,
        public_base_url=first.base,
        **settings,
    )
    return first, second


def _needles(resources: list[dict[str, Any]]) -> set[bytes]:
    """Every name, identifier and code string of the fixtures, and their phone numbers, e-mail
    addresses and street lines (5 bytes or longer: a shorter one could turn up by chance in the
    hundreds of kilobytes of random ciphertext)."""
    found: set[str] = set()

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, dict):
            if key == "name" and isinstance(node.get("family"), str):
                found.update([node["family"], *node.get("given", []), node.get("text", "")])
            if key in ("identifier", "telecom") and isinstance(node.get("value"), str):
                found.add(node["value"])
            if key == "coding" and isinstance(node.get("code"), str):
                found.add(node["code"])
            if key == "address":
                found.update(line for line in node.get("line", []) if isinstance(line, str))
            for name, value in node.items():
                walk(value, name)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)

    for resource in resources:
        walk(resource)
    return {needle.encode() for needle in found if len(needle.encode()) >= 5}


async def _raw_documents(db: AsyncDatabase[dict[str, Any]]) -> dict[str, list[bytes]]:
    """Every document of every collection, as the BSON bytes the database holds."""
    raw: dict[str, list[bytes]] = {}
    for name in await db.list_collection_names():
        collection = db.get_collection(
            name, codec_options=CodecOptions(document_class=RawBSONDocument)
        )
        raw[name] = [bytes(cast(RawBSONDocument, doc).raw) async for doc in collection.find({})]
    return raw


async def test_p15_no_plaintext_at_rest_after_caching_every_fixture_resource(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    for n, resource in enumerate(RESOURCES):
        status, body = await _read(system_http, f"{gateway.fhir}/{_path(resource)}")
        assert status in (200, 403), body  # 403: sensitive, withheld, and cached all the same
        if n % 4 == 0 and status == 200:
            version = body["meta"]["versionId"]
            status, _ = await _read(
                system_http, f"{gateway.fhir}/{_path(resource)}/_history/{version}"
            )
            assert status == 200
    db = _db(gateway)
    stored = await db[ENTRIES].count_documents({"data": {"$exists": True}})
    assert stored > len(RESOURCES)  # every fixture resource, and the vreads

    needles = _needles(RESOURCES)
    assert len(needles) > 100 and b"MRN-100103" in needles and b"Rossi" in needles
    # A needle counts as a whole word: "29046" (an RxNorm code) inside a hex digest of the audit
    # chain is chance, "29046" between quotes or BSON's terminating zero is the code itself.
    words = [
        (needle, re.compile(rb"(?<![0-9A-Za-z])" + re.escape(needle) + rb"(?![0-9A-Za-z])"))
        for needle in needles
    ]
    leaks = {
        (collection, needle.decode())
        for collection, documents in (await _raw_documents(db)).items()
        for document in documents
        for needle, word in words
        if needle in document and word.search(document)
    }
    assert not leaks

    # The scan looks for what is there: an entry decrypted holds those strings.
    entry = await db[ENTRIES].find_one({"_id": f"Patient/{AMELIA}"})
    assert entry is not None
    cache: ResourceCache = gateway.server.app[CACHE]
    key = await cache.keys.for_decryption(entry["key"])
    assert key is not None
    record = Record("Patient", AMELIA, entry["version"], entry["owner"])
    plaintext = decrypt(key.cipher, Ciphertext(entry["nonce"], entry["data"]), record)
    assert b"Rossi" in plaintext and b"Rossi" not in entry["data"]


async def test_p15_a_ciphertext_copied_onto_another_patients_entry_is_a_logged_miss_and_refetched(
    start_gateway: StartGateway, local_stack_env: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    writer, reader = await _start_pair(start_gateway, local_stack_env)
    amelias, daniels = of(AMELIA, "Observation")[0], of(DANIEL, "Observation")[0]
    async with await _system_session(writer) as http:
        for resource in (amelias, daniels):
            assert (await _read(http, f"{writer.fhir}/{_path(resource)}"))[0] == 200
        entries = _db(writer)[ENTRIES]
        copied = await entries.find_one({"_id": _path(amelias)})
        assert copied is not None
        await entries.update_one(
            {"_id": _path(daniels)},
            {"$set": {k: copied[k] for k in ("nonce", "data", "key", "owner", "version")}},
        )
        # Read by an instance that holds no copy in memory: it meets the entry in MongoDB.
        url = f"{reader.server.make_url('/fhir')}/{_path(daniels)}"
        with caplog.at_level(logging.WARNING, logger="gateway.cache"):
            status, body = await _read(http, url)
        assert status == 200 and body["id"] == daniels["id"]
        assert body["subject"]["reference"] == f"Patient/{DANIEL}"  # Daniel's, from the upstream
        assert "a cached Observation does not decrypt" in caplog.text  # an alert, and no ids:
        assert daniels["id"] not in caplog.text and DANIEL not in caplog.text  # P-14
        assert _metric(reader, "fhir_gateway_cache_decrypt_failures_total") == 1
        assert _metric(reader, "fhir_gateway_cache_misses_total", interaction="read") == 1
        status, again = await _read(http, url)  # the refetched answer replaced it
    assert status == 200 and again["id"] == daniels["id"] and _hits(reader) == 1


def _consent(patient: str, *, deny: bool = False) -> dict[str, Any]:
    consent = app_grant(
        patient,
        APP,
        "Diary",
        ["PATRQT"],
        ["Observation", "Patient"],
        [],
        datetime.now(UTC) - timedelta(minutes=1),
        datetime.now(UTC) + timedelta(days=30),
    )
    if deny:
        consent["provision"]["type"] = "deny"
        consent["provision"]["class"] = [
            {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}
        ]
    return consent


async def _apps(session_for: SessionFor) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    """Amelia's third-party app, and her hospital portal (which manages her consents, C-23)."""
    identity: dict[str, Any] = {
        "patient": AMELIA,
        "acts_for": (AMELIA,),
        "fhir_user": f"Patient/{AMELIA}",
    }
    app = await session_for(
        trusted=False, client_id=APP, scope="patient/*.rs", purposes=("PATRQT",), **identity
    )
    portal = await session_for(
        client_id="consent-manager",
        manages_consent=True,
        scope="patient/Consent.cruds",
        **identity,
    )
    return app, portal


async def test_c10_c12_a_consent_decides_a_cached_read_exactly_like_an_upstream_one(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    app, portal = await _apps(session_for)
    async with portal.post(
        f"{gateway.fhir}/Consent", data=orjson.dumps(_consent(AMELIA)), headers=JSON
    ) as response:
        assert response.status == 201
    url = f"{gateway.fhir}/{_path(of(AMELIA, 'Observation')[0])}"
    assert (await _read(app, url))[0] == 200  # a miss: fetched and cached
    hits = _hits(gateway)
    assert (await _read(app, url))[0] == 200
    assert _hits(gateway) == hits + 1

    async with portal.post(
        f"{gateway.fhir}/Consent", data=orjson.dumps(_consent(AMELIA, deny=True)), headers=JSON
    ) as response:
        assert response.status == 201  # the patient now refuses this app her Observations
    status, outcome = await _read(app, url)
    assert status == 403 and "Consent/" in orjson.dumps(outcome).decode()
    assert _hits(gateway) == hits + 2  # served from the cache, and withheld all the same


async def test_c13_withdrawing_the_permit_purges_the_patients_cached_resources(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    app, portal = await _apps(session_for)
    async with portal.post(
        f"{gateway.fhir}/Consent", data=orjson.dumps(_consent(AMELIA)), headers=JSON
    ) as response:
        consent = orjson.loads(await response.read())
    for resource in of(AMELIA, "Observation")[:3]:
        assert (await _read(app, f"{gateway.fhir}/{_path(resource)}"))[0] == 200
    entries = _db(gateway)[ENTRIES]
    assert await entries.count_documents({"owner": f"Patient/{AMELIA}"}) == 3

    withdrawn = {**consent, "status": "inactive"}
    async with portal.put(
        f"{gateway.fhir}/Consent/{consent['id']}", data=orjson.dumps(withdrawn), headers=JSON
    ) as response:
        assert response.status == 200
    assert await entries.count_documents({"owner": f"Patient/{AMELIA}"}) == 0
    # (This token was minted, not granted, so no grant of it is revoked: consent refuses it.)
    assert (await _read(app, f"{gateway.fhir}/{_path(of(AMELIA, 'Observation')[0])}"))[0] == 403


async def _cli(gateway: RunningGateway, *args: str, **env: str) -> tuple[int, str, str]:
    environment = {
        **os.environ,
        "FHIR_GATEWAY_MONGODB_URI": str(gateway.settings.mongodb_uri),
        "FHIR_GATEWAY_MONGODB_DATABASE": gateway.settings.mongodb_database,
        "FHIR_GATEWAY_UPSTREAM_URL": str(gateway.settings.upstream_url),
        "FHIR_GATEWAY_PUBLIC_BASE_URL": gateway.base,
        "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": SESSION_KEK,
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fhir-gateway"),
        *args,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_c22_after_erasure_no_cached_entry_of_the_patient_decrypts_and_the_others_do(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    amelias = [of(AMELIA, "Patient")[0], *of(AMELIA, "Observation")[:4]]
    daniels = [of(DANIEL, "Patient")[0], *of(DANIEL, "Observation")[:4]]
    for resource in amelias + daniels:
        assert (await _read(system_http, f"{gateway.fhir}/{_path(resource)}"))[0] == 200
    entries = _db(gateway)[ENTRIES]
    copies = [doc async for doc in entries.find({"data": {"$exists": True}})]  # a backup, say
    assert len(copies) == len(amelias) + len(daniels)

    status, out, err = await _cli(gateway, "patients", "erase", "--patient", AMELIA)
    assert status == 0, out + err
    assert "1 cache key(s) destroyed" in out
    assert await _db(gateway)["cache_keys"].count_documents({"owner": f"Patient/{AMELIA}"}) == 0
    assert await entries.count_documents({"owner": f"Patient/{AMELIA}"}) == 0  # purged too

    await entries.delete_many({})
    await entries.insert_many(copies)  # everything as it was before the erasure, keys aside
    anyone = ResourceCache(  # another instance, or whoever holds the database and the KEK
        _db(gateway), LocalKeyProvider(parse_key(SESSION_KEK.encode())), Metrics(), CacheLimits()
    )
    reads = [CachedRead(r["resourceType"], r["id"]) for r in amelias + daniels]
    found = await anyone.lookup_many(reads)
    assert all(found[CachedRead(r["resourceType"], r["id"])].hit is None for r in amelias)
    assert all(found[CachedRead(r["resourceType"], r["id"])].hit is not None for r in daniels)

    # The running instance held Amelia's key and entries in memory; the command moved the
    # cache's counters, so it let go of both: her read is a miss, Daniel's still a hit.
    await entries.delete_many({})
    await entries.insert_many(copies)
    hits = _hits(gateway)
    misses = _metric(gateway, "fhir_gateway_cache_misses_total", interaction="read")
    for resource in (amelias[1], daniels[1]):
        assert (await _read(system_http, f"{gateway.fhir}/{_path(resource)}"))[0] == 200
    assert _hits(gateway) == hits + 1
    assert _metric(gateway, "fhir_gateway_cache_misses_total", interaction="read") == misses + 1


async def test_a_write_through_one_instance_invalidates_the_next_read_of_another(
    start_gateway: StartGateway, fresh_upstream: Stack
) -> None:
    first, second = await _start_pair(start_gateway, fresh_upstream)
    other = str(second.server.make_url("/fhir"))
    path = _path(of(AMELIA, "Observation")[0])
    async with await _system_session(first) as http:
        _, before = await _read(http, f"{other}/{path}")
        assert (await _read(http, f"{other}/{path}"))[0] == 200
        assert _hits(second) == 1  # the second instance serves it from the cache
        changed = {**before, "status": "amended"}
        async with http.put(
            f"{first.fhir}/{path}", data=orjson.dumps(changed), headers=JSON
        ) as response:
            assert response.status == 200, await response.text()
        status, after = await _read(http, f"{other}/{path}")
    assert status == 200 and after["status"] == "amended"
    assert after["meta"]["versionId"] != before["meta"]["versionId"]
    assert _hits(second) == 1  # fetched from the upstream: the write invalidated it for all


async def _change_behind_the_gateway(stack: Stack, path: str) -> None:
    """An update made in the EHR directly, not through the gateway."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.upstream.base_url}/{path}") as response:
            resource = orjson.loads(await response.read())
        resource["status"] = "amended"
        async with http.put(
            f"{stack.upstream.base_url}/{path}", data=orjson.dumps(resource), headers=JSON
        ) as response:
            assert response.status == 200


async def test_with_the_cache_off_everything_comes_from_the_upstream(
    start_gateway: StartGateway, fresh_upstream: Stack
) -> None:
    cached = await start_gateway(
        upstream_url=fresh_upstream.upstream.base_url, mongodb_uri=fresh_upstream.mongo_uri
    )
    uncached = await start_gateway(
        upstream_url=fresh_upstream.upstream.base_url,
        mongodb_uri=fresh_upstream.mongo_uri,
        cache_enabled=False,
    )
    path = _path(of(AMELIA, "Observation")[1])
    async with await _system_session(cached) as on, await _system_session(uncached) as off:
        for http, gateway in ((on, cached), (off, uncached)):
            assert (await _read(http, f"{gateway.fhir}/{path}"))[1]["status"] == "final"
        await _change_behind_the_gateway(fresh_upstream, path)
        assert (await _read(on, f"{cached.fhir}/{path}"))[1]["status"] == "final"  # within TTL
        assert (await _read(off, f"{uncached.fhir}/{path}"))[1]["status"] == "amended"
    assert _hits(cached) == 1
    assert _hits(uncached) == 0
    assert _metric(uncached, "fhir_gateway_cache_misses_total", interaction="read") == 0
    assert await _db(uncached)[ENTRIES].count_documents({}) == 0


async def test_a_stale_entry_is_revalidated_with_its_etag(
    start_gateway: StartGateway, fresh_upstream: Stack
) -> None:
    gateway = await start_gateway(
        upstream_url=fresh_upstream.upstream.base_url,
        mongodb_uri=fresh_upstream.mongo_uri,
        cache_ttl_seconds=0,
    )
    path = _path(of(AMELIA, "Observation")[2])
    revalidations = "fhir_gateway_cache_revalidations_total"
    async with await _system_session(gateway) as http:
        for _ in range(3):
            assert (await _read(http, f"{gateway.fhir}/{path}"))[1]["status"] == "final"
        assert _metric(gateway, revalidations, outcome="unchanged") == 2  # 304 keeps the entry
        await _change_behind_the_gateway(fresh_upstream, path)
        assert (await _read(http, f"{gateway.fhir}/{path}"))[1]["status"] == "amended"
        assert _metric(gateway, revalidations, outcome="changed") == 1
        assert (await _read(http, f"{gateway.fhir}/{path}"))[1]["status"] == "amended"
        assert _metric(gateway, revalidations, outcome="unchanged") == 3


async def test_p21_the_cache_counters_are_in_metrics_without_ids(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    gateway = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        metrics_token="metrics-token-of-this-test",
    )
    path = _path(of(AMELIA, "Observation")[0])
    async with await _system_session(gateway) as http:
        for _ in range(2):
            assert (await _read(http, f"{gateway.fhir}/{path}"))[0] == 200
        async with http.get(
            f"{gateway.base}/metrics",
            headers={"Authorization": "Bearer metrics-token-of-this-test"},
        ) as response:
            assert response.status == 200
            text = await response.text()
    for name in ("hits", "misses", "revalidations", "decrypt_failures", "evictions"):
        assert f"fhir_gateway_cache_{name}" in text
    assert 'fhir_gateway_cache_hits_total{interaction="read"} 1.0' in text
    assert 'fhir_gateway_cache_misses_total{interaction="read"} 1.0' in text
    assert AMELIA not in text and "obs-" not in text and "Observation" not in text


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


async def test_p16_p17_keys_rotate_while_500_reads_run_and_the_old_kek_is_then_unused(
    start_gateway: StartGateway, local_stack_env: Stack
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    database = f"test_{uuid.uuid4().hex[:12]}"
    stack = {"upstream_url": local_stack_env.upstream.base_url}
    stack |= {"mongodb_uri": local_stack_env.mongo_uri, "mongodb_database": database}
    before = await start_gateway(key_encryption_key=_b64(old), **stack)
    resources = [r for p in (AMELIA, DANIEL) for r in of(p, "Observation")[:5]]
    resources += of(AMELIA, "Patient") + of(DANIEL, "Patient")
    async with await _system_session(before) as http:
        for resource in resources:
            assert (await _read(http, f"{before.fhir}/{_path(resource)}"))[0] == 200
    db = _db(before)
    assert set(await versions_in_use(db, WRAPPED_FIELDS)) == {version_of(old)}

    during = await start_gateway(
        key_encryption_key=_b64(new),
        previous_key_encryption_keys=_b64(old),
        public_base_url=before.base,
        cache_key_memory_seconds=0,  # every hit unwraps its data key: old and new wrappings alike
        **stack,
    )
    base = str(during.server.make_url("/fhir"))
    statuses: list[int] = []
    under_way = asyncio.Event()
    done_when_rotated: list[int] = []
    limit = asyncio.Semaphore(8)

    async def read(http: aiohttp.ClientSession, n: int) -> None:
        async with limit:
            path = _path(resources[n % len(resources)])
            statuses.append((await _read(http, f"{base}/{path}"))[0])
        if len(statuses) == 50:
            under_way.set()

    async def rotate() -> None:
        await under_way.wait()
        await rotate_keys(
            services(during),
            during.server.app[AUDIT],
            load_key_provider(during.settings),
            out=io.StringIO(),
        )
        done_when_rotated.append(len(statuses))

    async with await _system_session(before) as http:  # a token signed by the old signing key
        await asyncio.gather(rotate(), *(read(http, n) for n in range(500)))
    assert len(statuses) == 500 and set(statuses) == {200}
    assert 50 <= done_when_rotated[0] < 500  # the reads went on around the rotation
    assert _hits(during) > 400

    versions = await versions_in_use(db, WRAPPED_FIELDS)
    assert version_of(old) not in versions and versions[version_of(new)] >= 4
    after = await start_gateway(key_encryption_key=_b64(new), **stack)  # the old KEK is gone
    async with await _system_session(after) as http:
        for resource in resources:
            assert (await _read(http, f"{after.fhir}/{_path(resource)}"))[0] == 200
    assert _hits(after) == len(resources)  # every entry still opens: only wrappings changed


async def test_p16_keys_rotate_from_the_command_line_reports_what_it_did(
    gateway: RunningGateway, system_http: aiohttp.ClientSession
) -> None:
    for resource in of(AMELIA, "Observation")[:2]:
        assert (await _read(system_http, f"{gateway.fhir}/{_path(resource)}"))[0] == 200
    new = _b64(os.urandom(32))
    environment = {
        "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": new,
        "FHIR_GATEWAY_PREVIOUS_KEY_ENCRYPTION_KEYS": SESSION_KEK,
    }
    status, out, err = await _cli(gateway, "keys", "rotate", **environment)
    assert status == 0, out + err
    current = version_of(parse_key(new.encode()))
    assert re.search(rf"re-wrapping [1-9]\d* key\(s\) under key-encryption key {current}", out)
    assert f"every key is wrapped by {current}" in out
    assert "new signing key" in out
