"""Bulk export throughput: resources per second that a system-level ``$export`` releases into its
files, against paging the same searches straight from the upstream with no checks at all.

The local stack (embedded MongoDB, Medplum's router seeded with the fixtures) gets ``--patients``
more patients with ``--observations`` Observations and a few Conditions each. The gateway runs
in this process (``create_app`` on a loopback port) with the demo backend service registered; its
token comes from the token endpoint with the service's ``private_key_jwt``, as a client gets it.
Each round, interleaved:

- **direct**: ``GET {upstream}/{type}?_count=N`` for Patient, Observation and Condition, every
  ``next`` link followed and every page parsed (orjson), nothing checked; for Patient level the
  patients listed and each type searched per patient, as the job does;
- **export**: ``GET /fhir/$export`` (and ``/fhir/Patient/$export``)
  ``?_type=Patient,Observation,Condition`` with ``Prefer:
  respond-async``, the status polled every 20 ms until the manifest comes (the job pages the same
  searches and releases every page through the search release path: scopes, compartment,
  consent, minimisation, then encrypts each page's lines per patient into MongoDB);
- **download**: every file of that manifest, decrypted and streamed.

The median round is reported. The machine is shared: read the ratio, not the absolute figures.

    .venv/bin/python benchmarks/export_throughput.py [--patients 40] [--observations 100]
        [--rounds 3] [--page-size 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import orjson
from aiohttp import web

from gateway.app import create_app, runner_options
from gateway.appkeys import AUDIT, AUTH
from gateway.cli.admin import register_demo
from gateway.localstack import free_port, local_stack
from gateway.settings import load_settings

KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
CLIENT = "demo-backend-service"
TYPES = ("Patient", "Observation", "Condition")
Row = tuple[int, float, int, float, float]
"""Resources searched, seconds paging them directly, resources released, seconds from kick-off to
manifest, seconds to download."""


def _seed(fhir_base: str, patients: int, observations: int) -> None:
    """``patients`` patients, each with ``observations`` Observations and 3 Conditions."""

    def post(entries: list[dict[str, Any]]) -> None:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        request = urllib.request.Request(
            fhir_base,
            data=orjson.dumps(bundle),
            headers={"Content-Type": "application/fhir+json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()

    for n in range(patients):
        pid = f"pat-export-bench-{n}"
        subject = {"reference": f"Patient/{pid}"}
        entries: list[dict[str, Any]] = [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": pid,
                    "gender": "other",
                    "birthDate": "1970-01-01",
                    "name": [{"family": f"Bench{n}", "given": ["Export"]}],
                    "telecom": [{"system": "phone", "value": f"+1-555-01{n:02d}"}],
                },
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            }
        ]
        entries += [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": subject,
                    "effectiveDateTime": f"2024-01-{1 + i % 28:02d}T08:00:00Z",
                    "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
                    "note": [{"text": "resting"}],
                },
                "request": {"method": "POST", "url": "Observation"},
            }
            for i in range(observations)
        ]
        entries += [
            {
                "resource": {
                    "resourceType": "Condition",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                    "subject": subject,
                    "recordedDate": "2023-05-01",
                },
                "request": {"method": "POST", "url": "Condition"},
            }
            for _ in range(3)
        ]
        for start in range(0, len(entries), 100):
            post(entries[start : start + 100])


async def _token(http: aiohttp.ClientSession, base: str) -> str:
    pem = (KEYS / "backend-service.private.pem").read_text()
    kid = orjson.loads((KEYS / "backend-service.private.jwk.json").read_text())["kid"]
    token_url = f"{base}/auth/token"
    now = int(time.time())
    assertion = pyjwt.encode(
        {
            "iss": CLIENT,
            "sub": CLIENT,
            "aud": token_url,
            "exp": now + 240,
            "iat": now,
            "jti": str(uuid.uuid4()),
        },
        pem,
        algorithm="RS384",
        headers={"kid": kid},
    )
    data = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    async with http.post(token_url, data=data) as response:
        body = await response.json()
        assert response.status == 200, body
        return str(body["access_token"])


_NARROWING = {"Patient": "_id", "Observation": "subject", "Condition": "subject"}


async def _paged(http: aiohttp.ClientSession, url: str | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while url:
        async with http.get(url) as response:
            bundle = orjson.loads(await response.read())
        found += [e["resource"] for e in bundle.get("entry") or []]
        url = next(
            (x["url"] for x in bundle.get("link") or [] if x.get("relation") == "next"), None
        )
    return found


async def _direct(
    http: aiohttp.ClientSession, upstream: str, page_size: int, level: str
) -> tuple[int, float]:
    """Resources, seconds: the same searches paged straight from the upstream (at Patient
    level: the patients listed, then each type searched per patient, as the job does)."""
    started = time.perf_counter()
    count = 0
    if level == "system":
        for rtype in TYPES:
            count += len(await _paged(http, f"{upstream}/{rtype}?_count={page_size}"))
        return count, time.perf_counter() - started
    patients = await _paged(http, f"{upstream}/Patient?_count={page_size}")
    for patient in patients:
        for rtype in TYPES:
            value = patient["id"] if rtype == "Patient" else f"Patient/{patient['id']}"
            url = f"{upstream}/{rtype}?_count={page_size}&{_NARROWING[rtype]}={value}"
            count += len(await _paged(http, url))
    return count, time.perf_counter() - started


async def _export(
    http: aiohttp.ClientSession, fhir: str, token: str, level: str
) -> tuple[dict[str, Any], float, float]:
    """The manifest, seconds from kick-off to manifest, seconds to download every file."""
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    async with http.get(
        f"{fhir}/$export" if level == "system" else f"{fhir}/Patient/$export",
        params={"_type": ",".join(TYPES)},
        headers={**auth, "Prefer": "respond-async"},
    ) as response:
        assert response.status == 202, await response.text()
        status_url = response.headers["Content-Location"]
    while True:
        async with http.get(status_url, headers=auth) as response:
            if response.status == 200:
                manifest: dict[str, Any] = await response.json()
                break
            assert response.status == 202, await response.text()
        await asyncio.sleep(0.02)
    exported = time.perf_counter() - started
    started = time.perf_counter()
    for item in manifest["output"]:
        async with http.get(item["url"], headers=auth) as response:
            lines = (await response.read()).count(b"\n")
            assert lines == item["count"], (lines, item)
    return manifest, exported, time.perf_counter() - started


async def _run(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="export-bench-") as workdir,
        local_stack(Path(workdir)) as (mongo_uri, upstream, _mongo),
    ):
        _seed(upstream.base_url, args.patients, args.observations)
        port = free_port()
        settings = load_settings(
            host="127.0.0.1",
            port=port,
            public_base_url=f"http://127.0.0.1:{port}",
            upstream_url=upstream.base_url,
            mongodb_uri=mongo_uri,
            mongodb_database="export_bench",
            key_encryption_key=base64.b64encode(os.urandom(32)).decode(),
            audit_spool_dir=Path(workdir) / "spool",
            export_poll_seconds=0.05,
            export_page_size=args.page_size,
            rate_limit_per_client="100000/minute",
            log_level="WARNING",
        )
        app = create_app(settings)
        runner = web.AppRunner(app, **runner_options(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            await register_demo(app[AUTH], app[AUDIT])
            async with aiohttp.ClientSession() as http:
                token = await _token(http, settings.public_base_url)
                results: dict[str, list[Row]] = {"system": [], "patient": []}
                for level in results:
                    await _direct(http, upstream.base_url, args.page_size, level)  # warm-up
                    await _export(http, settings.fhir_base_url, token, level)
                for _ in range(args.rounds):  # interleaved
                    for level, rows in results.items():
                        found, direct_s = await _direct(
                            http, upstream.base_url, args.page_size, level
                        )
                        manifest, export_s, download_s = await _export(
                            http, settings.fhir_base_url, token, level
                        )
                        released = sum(int(o["count"]) for o in manifest["output"])
                        rows.append((found, direct_s, released, export_s, download_s))
        finally:
            await runner.cleanup()
    _report(args, results)


def _report(args: argparse.Namespace, results: dict[str, list[Row]]) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(
        f"{args.patients} extra patients x {args.observations} Observations + fixtures; "
        f"page size {args.page_size}; {args.rounds} interleaved rounds, median"
    )
    print(
        "| level | resources searched | direct paging, no checks (res/s) | export (res/s) "
        "| ratio | released into files (res/s) | download (res/s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for level, rows in results.items():
        direct = statistics.median(r[0] / r[1] for r in rows)
        export = statistics.median(r[0] / r[3] for r in rows)
        released = statistics.median(r[2] / r[3] for r in rows)
        download = statistics.median(r[2] / r[4] for r in rows)
        print(
            f"| {level} | {rows[0][0]:,} | {direct:,.0f} | {export:,.0f} | "
            f"{export / direct:.2f} | {released:,.0f} | {download:,.0f} |"
        )
    for level, rows in results.items():
        for found_n, direct_s, released_n, export_s, download_s in rows:
            print(
                f"  {level}: direct {found_n} in {direct_s:.2f} s; export {released_n} released "
                f"in {export_s:.2f} s; download {download_s:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--observations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=200)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
