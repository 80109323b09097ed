"""Throughput of ``fhir-gateway serve --workers N`` for the authenticated, consent-checked read
(the ``read`` scenario of ``proxy_overhead.py``, whose set-up this reuses): the same gateway with
one worker and with N, measured in interleaved rounds against the same local upstream and
embedded MongoDB, median round reported. The ratio to compare with the goal is
``req/s(N) / (N x req/s(1))``; note how many CPUs the machine has, since the load generator, the
upstream and the database share them with the workers. The CPU time the gateway's processes, the
upstream and the database used during each measurement is reported too (from /proc, Linux), so a
run on a machine shared with other work can still be read: requests per gateway CPU-second show
what a worker costs whatever share of the machine it got.

    .venv/bin/python benchmarks/workers.py [--workers 1,2] [--seconds 5] [--rounds 3]
        [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from proxy_overhead import SCENARIOS, Sample, _mint_tokens, _wait_http, _wrk

from gateway.localstack import free_port, local_stack

HERE = Path(__file__).resolve().parent


def _listeners(port: int) -> int:
    """Listening TCP sockets on ``port``: one per worker with SO_REUSEPORT (Linux)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            count += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return count


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (the supervisor and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(c) for c in children.read_text().split())] if children.exists() else [pid]


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / _TICK


def _wait_workers(port: int, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` workers listen: until then the first one ready answers everything."""
    deadline = time.monotonic() + timeout
    while _listeners(port) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    kek = os.urandom(32)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict[int, list[Sample]] = {n: [] for n in counts}
    usage: dict[int, list[tuple[float, float, float]]] = {n: [] for n in counts}
    with local_stack() as (mongo_uri, upstream, mongo):
        assert upstream.process is not None and mongo is not None and mongo.process is not None
        upstream_pid, mongo_pid = upstream.process.pid, mongo.process.pid
        env = {
            **os.environ,
            "FHIR_GATEWAY_MONGODB_DATABASE": "bench",
            "FHIR_GATEWAY_RATE_LIMIT_PER_CLIENT": "1000000/second",
            "FHIR_GATEWAY_LOG_LEVEL": "WARNING",
            "FHIR_GATEWAY_UPSTREAM_URL": upstream.base_url,
            "FHIR_GATEWAY_MONGODB_URI": mongo_uri,
            "FHIR_GATEWAY_PORT": str(port),
            "FHIR_GATEWAY_PUBLIC_BASE_URL": base,
            "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": base64.b64encode(kek).decode(),
        }
        command = [str(Path(sys.executable).parent / "fhir-gateway"), "serve", "--workers"]
        token = ""
        for _ in range(args.rounds):
            for count in counts:
                gateway = subprocess.Popen(
                    [*command, str(count)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    _wait_workers(port, count)
                    _wait_http(base + "/healthz")
                    if not token:
                        tokens = asyncio.run(_mint_tokens(mongo_uri, "bench", base, kek))
                        token = tokens["read"]
                    url = base + SCENARIOS["read"]
                    _wrk(url, 2, args.connections, token)  # warm-up
                    groups = (_tree(gateway.pid), [upstream_pid, mongo_pid])
                    before = [_cpu(pids) for pids in groups], _machine_busy(), time.monotonic()
                    results[count].append(_wrk(url, args.seconds, args.connections, token))
                    elapsed = time.monotonic() - before[2]
                    used = [_cpu(pids) - b for pids, b in zip(groups, before[0], strict=True)]
                    busy = _machine_busy() - before[1]
                    usage[count].append((used[0] / elapsed, used[1] / elapsed, busy / elapsed))
                finally:
                    gateway.terminate()
                    gateway.wait()
    one = statistics.median(s.rps for s in results[counts[0]])
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d} · {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} · wrk -t1, {args.connections} connections, "
        f"{args.rounds} rounds x {args.seconds} s, median round\n"
    )
    print(
        "| workers | req/s | p50 ms | p99 ms | req/s / (workers x req/s at 1) "
        "| gateway CPUs busy | req per gateway CPU-second "
        "| upstream + database CPUs busy | machine CPUs busy |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for count in counts:
        rps = statistics.median(s.rps for s in results[count])
        p50 = statistics.median(s.p50_ms for s in results[count])
        p99 = statistics.median(s.p99_ms for s in results[count])
        gw, deps, machine = (statistics.median(u[i] for u in usage[count]) for i in range(3))
        per_cpu = statistics.median(
            s.rps / u[0] for s, u in zip(results[count], usage[count], strict=True)
        )
        print(
            f"| {count} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {rps / (count * one):.2f} "
            f"| {gw:.2f} | {per_cpu:,.0f} | {deps:.2f} | {machine:.2f} |"
        )


if __name__ == "__main__":
    main()
