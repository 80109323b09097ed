"""Proxy overhead, measured side by side in one run: the upstream FHIR server alone, a bare aiohttp
pass-through proxy (``bare_proxy.py``) and the gateway, each in front of the same local upstream;
for the read, also the gateway answering from its encrypted cache (SECURITY.md P-15).

The gateway is measured as a client sees it: a third-party app with a patient's access token
(``patient/*.rs``) and the patient's Consent, so every request is authenticated (signature,
claims, revocation check in MongoDB), authorized (scopes, compartment, search narrowing), decided
by consent (the patient's Consents read from MongoDB, a decision and minimisation per resource)
and filtered (every released resource checked). The same
requests go to the other targets, which ignore the token. The 1,000-entry search runs over a
patient seeded with 1,000 Observations before the run.

The gateway runs twice, on one database behind one public address: ``gateway`` with the cache off
(every read goes to the upstream) and ``gateway, cache hits`` with it on and a TTL longer than the
run (after the warm-up every read is a hit: decrypted and released through the same checks).
Searches are not cached, so only the read runs against the second. The cost of the encryption
itself — one AES-256-GCM encryption and one decryption of the read's resource, with its AAD — is
measured in-process and set against the cached read's latency.

Each target runs as its own process. The load comes from ``wrk`` when it is installed (it costs
the machine least), otherwise from a small aiohttp load generator. Targets are measured in
interleaved rounds and the median round is reported, because shared machines are noisy: compare
the ratios, not the absolute numbers.

    .venv/bin/python benchmarks/proxy_overhead.py [--seconds 5] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import AsyncMongoClient

from consent.store import Change, Channel, ConsentStore
from gateway.cache.crypto import Record, decrypt, encrypt
from gateway.localstack import free_port, local_stack
from smart_auth.clients import ClientStore, ClientType, new_client
from smart_auth.grants import Grant
from smart_auth.key_provider import LocalKeyProvider
from smart_auth.keys import KeyRing
from smart_auth.tokens import TokenPolicy, issue_access_token

CHANGE = Change("cli", Channel.CLI, "benchmark set-up")

HERE = Path(__file__).resolve().parent
BENCH_PATIENT = "pat-bench"
SCENARIOS: dict[str, str] = {
    "read": "/fhir/Patient/pat-amelia-rossi",
    "search (20 Observations)": "/fhir/Observation?patient=Patient/pat-amelia-rossi&_count=20",
    "search (1,000 Observations)": f"/fhir/Observation?patient=Patient/{BENCH_PATIENT}&_count=1000",
}
TOKEN_PATIENTS = {
    "read": "pat-amelia-rossi",
    "search (20 Observations)": "pat-amelia-rossi",
    "search (1,000 Observations)": BENCH_PATIENT,
}


CACHED = "gateway, cache hits"
BIG_SEARCH = "search (1,000 Observations)"


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match[2]]


def _seed_bench_patient(fhir_base: str) -> None:
    """A patient with 1,000 Observations in the upstream, in transactions of 50."""

    def post(bundle: dict[str, object]) -> None:
        request = urllib.request.Request(
            fhir_base,
            data=orjson.dumps(bundle),
            headers={"Content-Type": "application/fhir+json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    post(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Patient", "id": BENCH_PATIENT, "gender": "other"},
                    "request": {"method": "PUT", "url": f"Patient/{BENCH_PATIENT}"},
                }
            ],
        }
    )
    for batch in range(20):
        entries = [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "vital-signs",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{BENCH_PATIENT}"},
                    "effectiveDateTime": f"2025-01-01T00:{batch:02d}:{i:02d}Z",
                    "valueQuantity": {"value": 60 + i, "unit": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
            for i in range(50)
        ]
        post({"resourceType": "Bundle", "type": "transaction", "entry": entries})


async def _mint_tokens(mongo_uri: str, database: str, issuer: str, kek: bytes) -> dict[str, str]:
    """Patient tokens from the gateway's own key ring (the same code the token endpoint uses),
    for a registered third-party app each patient has consented to: every gateway request runs
    the whole pipeline, consent read and decisions included."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        db = client[database]
        await ClientStore(db).add(
            new_client(
                client_id="bench-app",
                name="Benchmark app",
                client_type=ClientType.ASYMMETRIC,
                scope="patient/*.rs",
                purposes=("PATRQT",),
                jwks={"keys": []},
            ),
            replace=True,
        )
        consents = ConsentStore(db)
        await consents.ensure_indexes()
        for patient in set(TOKEN_PATIENTS.values()):
            await consents.grant_app(
                patient,
                "bench-app",
                "Benchmark app",
                ["PATRQT"],
                ["Patient", "Observation"],
                [],
                datetime.now(UTC) - timedelta(minutes=1),
                datetime.now(UTC) + timedelta(days=1),
                change=CHANGE,
            )
        keys = KeyRing(db, LocalKeyProvider(kek))
        key = await keys.signing_key()
        policy = TokenPolicy(issuer, f"{issuer}/fhir")
        tokens = {}
        for scenario, patient in TOKEN_PATIENTS.items():
            grant = Grant(
                client_id="bench-app",
                scope="patient/*.rs",
                expires_at=datetime.now(UTC) + timedelta(hours=2),
                user_id=f"bench-{patient}",
                fhir_user=f"Patient/{patient}",
                patient=patient,
                acts_for=(patient,),
                purposes=("PATRQT",),
            )
            tokens[scenario] = issue_access_token(
                key,
                policy,
                client_id="bench-app",
                scope="patient/*.rs",
                grant=grant,
                purposes=("PATRQT",),
            ).token
        return tokens
    finally:
        await client.close()


def _wrk(url: str, seconds: int, connections: int, token: str) -> Sample:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Latency Distribution" not in out:
        raise RuntimeError(f"{url} answered errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return Sample(rps, p50, p99)


async def _aiohttp_load(url: str, seconds: int, connections: int, token: str) -> Sample:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Sample(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None

    def load(
        url: str, token: str, seconds: int = args.seconds, connections: int = args.connections
    ) -> Sample:
        if use_wrk:
            return _wrk(url, seconds, connections, token)
        return asyncio.run(_aiohttp_load(url, seconds, connections, token))

    processes: list[subprocess.Popen[bytes]] = []
    kek = os.urandom(32)  # a throwaway key-encryption key for this run
    with local_stack() as (mongo_uri, upstream, _mongo):
        try:
            origin = upstream.base_url.rsplit("/fhir", 1)[0]
            bare_port, gateway_port = free_port(), free_port()
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "bare_proxy.py"), origin, str(bare_port)]
                )
            )
            _seed_bench_patient(upstream.base_url)
            env = {
                **os.environ,
                "FHIR_GATEWAY_MONGODB_DATABASE": "bench",
                "FHIR_GATEWAY_RATE_LIMIT_PER_CLIENT": "1000000/second",
                "FHIR_GATEWAY_LOG_LEVEL": "WARNING",
                "FHIR_GATEWAY_UPSTREAM_URL": upstream.base_url,
                "FHIR_GATEWAY_MONGODB_URI": mongo_uri,
                "FHIR_GATEWAY_PORT": str(gateway_port),
                "FHIR_GATEWAY_PUBLIC_BASE_URL": f"http://127.0.0.1:{gateway_port}",
                "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": base64.b64encode(kek).decode(),
            }
            cached_port = free_port()
            gateways: dict[str, int] = {}
            for port, cache in ((gateway_port, "false"), (cached_port, "true")):
                processes.append(
                    subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "fhir-gateway"),
                            "serve",
                            "--workers",
                            "1",
                        ],
                        env={
                            **env,
                            "FHIR_GATEWAY_PORT": str(port),
                            "FHIR_GATEWAY_CACHE_ENABLED": cache,
                            "FHIR_GATEWAY_CACHE_TTL_SECONDS": "86400",
                        },
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                gateways["gateway" if cache == "false" else CACHED] = processes[-1].pid
            others = {"upstream": upstream.process.pid if upstream.process else 0}
            others["MongoDB"] = _mongo.process.pid if _mongo and _mongo.process else 0
            targets = {
                "upstream alone": origin,
                "bare aiohttp proxy": f"http://127.0.0.1:{bare_port}",
                "gateway": f"http://127.0.0.1:{gateway_port}",
                CACHED: f"http://127.0.0.1:{cached_port}",
            }
            for base in targets.values():
                _wait_http(base + "/fhir/metadata")
            tokens = asyncio.run(
                _mint_tokens(mongo_uri, "bench", f"http://127.0.0.1:{gateway_port}", kek)
            )
            results: dict[tuple[str, str], list[Sample]] = {}
            single: dict[tuple[str, str], list[Sample]] = {}
            cpu: dict[str, list[dict[str, float]]] = {}
            searched: dict[str, list[dict[str, float]]] = {}
            crypto = _crypto_cost(upstream.base_url + SCENARIOS["read"].removeprefix("/fhir"))
            for _ in range(args.rounds):
                for scenario, path in SCENARIOS.items():
                    for target, base in targets.items():
                        if target == CACHED and scenario != "read":
                            continue  # searches are not cached: the same path as "gateway"
                        load(base + path, tokens[scenario], 1)  # warm-up
                        pids = {"gateway": gateways.get(target, 0), **others}
                        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
                        sample = load(base + path, tokens[scenario])
                        results.setdefault((scenario, target), []).append(sample)
                        if scenario == "read" and target in gateways:
                            requests = sample.rps * args.seconds
                            cpu.setdefault(target, []).append(
                                {
                                    name: (_cpu_seconds(pid) - before[name]) / requests * 1e6
                                    for name, pid in pids.items()
                                }
                            )
                        # One request at a time: the latency a request gains, without queueing.
                        before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
                        alone = load(base + path, tokens[scenario], connections=1)
                        single.setdefault((scenario, target), []).append(alone)
                        if scenario == BIG_SEARCH and target in ("upstream alone", "gateway"):
                            requests = alone.rps * args.seconds
                            searched.setdefault(target, []).append(
                                {
                                    name: (_cpu_seconds(pid) - before[name]) / requests * 1e3
                                    for name, pid in pids.items()
                                }
                            )
        finally:
            for process in processes:
                process.terminate()
                process.wait()
    _report(results, single, targets, args, use_wrk)
    _report_cache(results, single, crypto, cpu)
    _report_search_cpu(searched)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its children have used so far; 0 where /proc is
    not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError):
        return 0.0
    used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used + sum(_cpu_seconds(int(child)) for child in children)


def _crypto_cost(url: str, rounds: int = 20_000) -> float:
    """Microseconds for one encryption and one decryption of the resource at ``url`` (AES-256-GCM
    with its AAD, random nonce), as the cache does them per miss and per hit."""
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    cipher = AESGCM(AESGCM.generate_key(bit_length=256))
    record = Record("Patient", "pat-amelia-rossi", "1", "Patient/pat-amelia-rossi")
    started = time.perf_counter()
    for _ in range(rounds):
        decrypt(cipher, encrypt(cipher, body, record), record)
    return (time.perf_counter() - started) / rounds * 1e6


def _median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.rps for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
    )


def _report(
    results: dict[tuple[str, str], list[Sample]],
    single: dict[tuple[str, str], list[Sample]],
    targets: dict[str, str],
    args: argparse.Namespace,
    use_wrk: bool,
) -> None:
    tool = "wrk -t1" if use_wrk else "aiohttp load generator"
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d} · {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} · {tool}, {args.connections} connections, "
        f"{args.rounds} rounds x {args.seconds} s, median round\n"
    )
    print("| scenario | target | req/s | p50 ms | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        for target in targets:
            if (scenario, target) not in results:
                continue
            m = _median(results[(scenario, target)])
            print(f"| {scenario} | {target} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} |")
    print(
        "\n| scenario | gateway/bare req/s | gateway/upstream req/s | gateway/bare p50 "
        "| gateway/upstream p50 |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        gw = _median(results[(scenario, "gateway")])
        bare = _median(results[(scenario, "bare aiohttp proxy")])
        direct = _median(results[(scenario, "upstream alone")])
        print(
            f"| {scenario} | {gw.rps / bare.rps:.2f} | {gw.rps / direct.rps:.2f} "
            f"| {gw.p50_ms / bare.p50_ms:.2f} | {gw.p50_ms / direct.p50_ms:.2f} |"
        )
    print("\nOne request at a time (1 connection): the latency each target adds")
    print("\n| scenario | upstream p50 ms | bare p50 ms | gateway p50 ms | gateway/upstream p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        up, bare, gw = (
            _median(single[(scenario, t)])
            for t in ("upstream alone", "bare aiohttp proxy", "gateway")
        )
        print(
            f"| {scenario} | {up.p50_ms:.2f} | {bare.p50_ms:.2f} | {gw.p50_ms:.2f} "
            f"| {gw.p50_ms / up.p50_ms:.2f} |"
        )


def _report_cache(
    results: dict[tuple[str, str], list[Sample]],
    single: dict[tuple[str, str], list[Sample]],
    crypto_us: float,
    cpu: dict[str, list[dict[str, float]]],
) -> None:
    hit, miss = _median(results[("read", CACHED)]), _median(results[("read", "gateway")])
    hit_alone = _median(single[("read", CACHED)])
    miss_alone = _median(single[("read", "gateway")])
    print("\nThe encrypted cache on the authenticated read\n")
    print("| read | req/s | p50 ms | p50 ms, 1 connection |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| from the upstream (cache off) | {miss.rps:,.0f} | {miss.p50_ms:.2f} "
        f"| {miss_alone.p50_ms:.2f} |"
    )
    print(f"| cache hit | {hit.rps:,.0f} | {hit.p50_ms:.2f} | {hit_alone.p50_ms:.2f} |")
    if all(cpu.values()):
        print("\nCPU per read under load, by process (µs; the load generator's own not counted)\n")
        print("| read | gateway | MongoDB | upstream | together |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for target, label in (("gateway", "from the upstream"), (CACHED, "cache hit")):
            used = {
                name: statistics.median(round_[name] for round_ in cpu[target])
                for name in ("gateway", "MongoDB", "upstream")
            }
            print(
                f"| {label} | {used['gateway']:.0f} | {used['MongoDB']:.0f} "
                f"| {used['upstream']:.0f} | {sum(used.values()):.0f} |"
            )
    share = crypto_us / (hit_alone.p50_ms * 1000) * 100
    print(
        f"\ncache hit / upstream read throughput: {hit.rps / miss.rps:.2f}x (goal >= 1.5x); "
        f"encryption + decryption of the resource: {crypto_us:.1f} us = {share:.2f}% of a "
        f"cached read alone (goal < 2%)"
    )


def _report_search_cpu(searched: dict[str, list[dict[str, float]]]) -> None:
    """The CPU one 1,000-entry search costs each process, one request at a time: less disturbed
    by other work on the machine than its latency (time spent waiting for a CPU is not in it)."""
    if set(searched) != {"upstream alone", "gateway"}:
        return
    print(f"\nCPU per {BIG_SEARCH[8:-1]} search, one at a time, by process (ms)\n")
    print("| target | gateway | MongoDB | upstream | together |")
    print("| --- | ---: | ---: | ---: | ---: |")
    together: dict[str, float] = {}
    for target in ("upstream alone", "gateway"):
        used = {
            name: statistics.median(round_[name] for round_ in searched[target])
            for name in ("gateway", "MongoDB", "upstream")
        }
        together[target] = sum(used.values())
        print(
            f"| {target} | {used['gateway']:.2f} | {used['MongoDB']:.2f} "
            f"| {used['upstream']:.2f} | {together[target]:.2f} |"
        )
    print(
        f"\nthrough the gateway / the upstream alone, CPU per search: "
        f"{together['gateway'] / together['upstream alone']:.2f}x"
    )


if __name__ == "__main__":
    main()
