"""Proxy overhead, measured side by side in one run: the upstream FHIR server alone, a bare aiohttp
pass-through proxy (``bare_proxy.py``) and the gateway, each in front of the same local upstream.

Each target runs as its own process. The load comes from ``wrk`` when it is installed (it costs
the machine least), otherwise from a small aiohttp load generator. Targets are measured in
interleaved rounds and the median round is reported, because shared machines are noisy: compare
the ratios, not the absolute numbers.

    .venv/bin/python benchmarks/proxy_overhead.py [--seconds 5] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
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
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from gateway.embedded import free_port, local_stack

HERE = Path(__file__).resolve().parent
SCENARIOS: dict[str, str] = {
    "read": "/fhir/Patient/pat-amelia-rossi",
    "search (20 Observations)": "/fhir/Observation?patient=Patient/pat-amelia-rossi&_count=20",
}


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


def _wrk(url: str, seconds: int, connections: int) -> Sample:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
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


async def _aiohttp_load(url: str, seconds: int, connections: int) -> Sample:
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
    async with aiohttp.ClientSession(connector=connector) as session:
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

    def load(url: str, seconds: int = args.seconds) -> Sample:
        if use_wrk:
            return _wrk(url, seconds, args.connections)
        return asyncio.run(_aiohttp_load(url, seconds, args.connections))

    processes: list[subprocess.Popen[bytes]] = []
    with local_stack() as (mongo_uri, upstream, _mongo):
        try:
            origin = upstream.base_url.rsplit("/fhir", 1)[0]
            bare_port, gateway_port = free_port(), free_port()
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "bare_proxy.py"), origin, str(bare_port)]
                )
            )
            env = {
                **os.environ,
                "FHIR_GATEWAY_UPSTREAM_URL": upstream.base_url,
                "FHIR_GATEWAY_MONGODB_URI": mongo_uri,
                "FHIR_GATEWAY_PORT": str(gateway_port),
                "FHIR_GATEWAY_PUBLIC_BASE_URL": f"http://127.0.0.1:{gateway_port}",
            }
            processes.append(
                subprocess.Popen(
                    [str(Path(sys.executable).parent / "fhir-gateway"), "serve"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            targets = {
                "upstream alone": origin,
                "bare aiohttp proxy": f"http://127.0.0.1:{bare_port}",
                "gateway": f"http://127.0.0.1:{gateway_port}",
            }
            for base in targets.values():
                _wait_http(base + SCENARIOS["read"])
            results: dict[tuple[str, str], list[Sample]] = {}
            for _ in range(args.rounds):
                for scenario, path in SCENARIOS.items():
                    for target, base in targets.items():
                        load(base + path, 1)  # warm-up
                        results.setdefault((scenario, target), []).append(load(base + path))
        finally:
            for process in processes:
                process.terminate()
                process.wait()
    _report(results, targets, args, use_wrk)


def _median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.rps for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
    )


def _report(
    results: dict[tuple[str, str], list[Sample]],
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
            m = _median(results[(scenario, target)])
            print(f"| {scenario} | {target} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} |")
    print("\n| scenario | gateway/bare req/s | gateway/upstream req/s | gateway/bare p50 |")
    print("| --- | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        gw = _median(results[(scenario, "gateway")])
        bare = _median(results[(scenario, "bare aiohttp proxy")])
        direct = _median(results[(scenario, "upstream alone")])
        print(
            f"| {scenario} | {gw.rps / bare.rps:.2f} | {gw.rps / direct.rps:.2f} "
            f"| {gw.p50_ms / bare.p50_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
