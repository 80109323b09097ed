"""What the audit log costs the authenticated read (AUDIT.md A-08, A-09): the gateway with its
audit log and the same gateway with a no-op recorder, side by side in one run, reported as a
ratio (the goal: audited throughput at least 0.8x unaudited).

The gateway has no setting that turns auditing off (A-01 allows none), so the unaudited gateway
is built here: this script, started with ``--serve unaudited``, replaces ``AuditLog.record`` and
``AuditLog.record_request`` with coroutines that return at once (no AuditEvent built, chained or
written; the chain, its spool and checkpoints still start) and then runs ``fhir-gateway serve
--workers 1`` in the same process. The audited gateway goes through the same script with nothing
replaced, so both serve through the same code path.

The request is the ``read`` of ``proxy_overhead.py`` (whose set-up this reuses): a third-party
app with a patient's token and the patient's Consent, so every request is authenticated,
consent-checked and released, and, audited, recorded as one AuditEvent (group commit, journaled,
with the audit collection's indexes) before it is answered. The two gateways take turns on one
port, one database and one local upstream, in alternating rounds (wrk -t1, then one connection
for the latency one request pays); the median round is reported. For each round the CPU time of
the gateway, the embedded MongoDB and the upstream is read from /proc (Linux), so that a run on a
shared machine can still be read: CPU per request does not depend on the share of the machine a
process got. The AuditEvents stored during each audited round are counted (one per request).

    .venv/bin/python benchmarks/audit_overhead.py [--seconds 5] [--rounds 3] [--connections 32]
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
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy_overhead import SCENARIOS, Sample, _mint_tokens, _wrk
from pymongo import MongoClient

from gateway.audit.facts import RequestFacts
from gateway.audit.log import AuditLog
from gateway.audit.store import EVENTS
from gateway.localstack import free_port, local_stack

MODES = ("audited", "unaudited")
DATABASE = "bench"


async def _unrecorded_events(self: AuditLog, events: Sequence[Mapping[str, Any]]) -> None:
    return None


async def _unrecorded_request(self: AuditLog, facts: RequestFacts) -> None:
    return None


def _serve(mode: str) -> int:
    """In the gateway's process: ``fhir-gateway serve --workers 1``, with the no-op recorder
    when ``mode`` is ``unaudited``."""
    from gateway.cli import main

    if mode == "unaudited":
        AuditLog.record = _unrecorded_events  # type: ignore[method-assign]
        AuditLog.record_request = _unrecorded_request  # type: ignore[method-assign]
    return main(["serve", "--workers", "1"])


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _events(mongo_uri: str) -> int:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    with client:
        return client[DATABASE][EVENTS].count_documents({})


@dataclass
class Round:
    load: Sample
    single: Sample
    cpu_us: dict[str, float]
    """CPU per request under load, by process (µs)."""
    events_per_request: float


@dataclass
class Bench:
    """One port, one database, one upstream: the gateways take turns on them."""

    env: dict[str, str]
    log: Path
    """Where the gateways write their output (shown when one does not start)."""
    others: dict[str, int]
    """The processes besides the gateway whose CPU is counted: name to pid."""
    kek: bytes
    seconds: int
    connections: int
    token: str = ""

    @property
    def base(self) -> str:
        return self.env["FHIR_GATEWAY_PUBLIC_BASE_URL"]

    @property
    def mongo_uri(self) -> str:
        return self.env["FHIR_GATEWAY_MONGODB_URI"]

    def round(self, mode: str) -> Round:
        with self.log.open("ab") as sink:
            gateway = subprocess.Popen(
                [sys.executable, __file__, "--serve", mode],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(gateway)
            if not self.token:  # the gateway's key ring exists once one has started
                tokens = asyncio.run(_mint_tokens(self.mongo_uri, DATABASE, self.base, self.kek))
                self.token = tokens["read"]
            url = self.base + SCENARIOS["read"]
            _wrk(url, 2, self.connections, self.token)  # warm-up
            pids = {"gateway": gateway.pid, **self.others}
            events = _events(self.mongo_uri)
            before = {name: _cpu(pid) for name, pid in pids.items()}
            load = _wrk(url, self.seconds, self.connections, self.token)
            used = {name: _cpu(pid) - before[name] for name, pid in pids.items()}
            stored = _events(self.mongo_uri) - events
            single = _wrk(url, max(2, self.seconds // 2), 1, self.token)
        finally:
            gateway.terminate()
            gateway.wait()
        requests = load.rps * self.seconds
        cpu_us = {name: seconds / requests * 1e6 for name, seconds in used.items()}
        return Round(load, single, cpu_us, stored / requests)

    def _wait_ready(self, gateway: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{self.log.read_text()[-12000:]}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)


def _median(rounds: list[Round], value: Callable[[Round], float]) -> float:
    return statistics.median(value(r) for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(_serve(args.serve))
    port = free_port()
    rounds: dict[str, list[Round]] = {mode: [] for mode in MODES}
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with local_stack() as (mongo_uri, upstream, mongo), tempfile.TemporaryDirectory() as work:
        assert upstream.process is not None and mongo is not None and mongo.process is not None
        kek = os.urandom(32)
        bench = Bench(
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_GATEWAY_")},
                "FHIR_GATEWAY_MONGODB_DATABASE": DATABASE,
                "FHIR_GATEWAY_RATE_LIMIT_PER_CLIENT": "1000000/second",
                "FHIR_GATEWAY_LOG_LEVEL": "WARNING",
                "FHIR_GATEWAY_UPSTREAM_URL": upstream.base_url,
                "FHIR_GATEWAY_MONGODB_URI": mongo_uri,
                "FHIR_GATEWAY_PORT": str(port),
                "FHIR_GATEWAY_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                "FHIR_GATEWAY_KEY_ENCRYPTION_KEY": base64.b64encode(kek).decode(),
                "FHIR_GATEWAY_AUDIT_SPOOL_DIR": str(Path(work) / "spool"),
            },
            log=Path(work) / "gateway.log",
            others={"MongoDB": mongo.process.pid, "upstream": upstream.process.pid},
            kek=kek,
            seconds=args.seconds,
            connections=args.connections,
        )
        for n in range(args.rounds):
            for mode in MODES if n % 2 == 0 else MODES[::-1]:  # alternate who goes first
                rounds[mode].append(bench.round(mode))
                print(f"round {n + 1}, {mode}: {rounds[mode][-1].load.rps:,.0f} req/s", flush=True)
    _report(rounds, args, started, load_before)


def _report(
    rounds: dict[str, list[Round]],
    args: argparse.Namespace,
    started: datetime,
    load_before: tuple[float, float, float],
) -> None:
    print(
        f"\n{started:%Y-%m-%d %H:%M} UTC · {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} · load average before {load_before[0]:.1f}, "
        f"after {os.getloadavg()[0]:.1f} · wrk -t1, {args.connections} connections, "
        f"{args.rounds} rounds x {args.seconds} s, alternating, median round\n"
    )
    print(
        "| gateway | req/s | p50 ms | p99 ms | p50 ms, 1 connection | AuditEvents per request "
        "| CPU µs/req gateway | MongoDB | upstream | together |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        rs = rounds[mode]
        cpu = {name: statistics.median(r.cpu_us[name] for r in rs) for name in rs[0].cpu_us}
        print(
            f"| {mode} | {_median(rs, lambda r: r.load.rps):,.0f} "
            f"| {_median(rs, lambda r: r.load.p50_ms):.2f} "
            f"| {_median(rs, lambda r: r.load.p99_ms):.2f} "
            f"| {_median(rs, lambda r: r.single.p50_ms):.2f} "
            f"| {_median(rs, lambda r: r.events_per_request):.2f} "
            f"| {cpu['gateway']:,.0f} | {cpu['MongoDB']:,.0f} | {cpu['upstream']:,.0f} "
            f"| {sum(cpu.values()):,.0f} |"
        )
    audited, unaudited = rounds["audited"], rounds["unaudited"]
    pairs = list(zip(audited, unaudited, strict=True))
    throughput = _median(audited, lambda r: r.load.rps) / _median(unaudited, lambda r: r.load.rps)
    by_round = ", ".join(f"{a.load.rps / u.load.rps:.2f}" for a, u in pairs)
    cost = [sum(u.cpu_us.values()) / sum(a.cpu_us.values()) for a, u in pairs]
    added = _median(audited, lambda r: r.single.p50_ms) - _median(
        unaudited, lambda r: r.single.p50_ms
    )
    print(f"\naudited / unaudited req/s: {throughput:.2f} (by round: {by_round})")
    print(
        "unaudited / audited CPU per request, all processes: "
        f"{statistics.median(cost):.2f} (by round: {', '.join(f'{x:.2f}' for x in cost)})"
    )
    print(f"p50 added on one connection: {added:.2f} ms")


if __name__ == "__main__":
    main()
