"""What the gateway spends on one 1,000-entry search answer, in-process and without I/O: the
upstream's bytes decoded (URLs rewritten, JSON parsed), every entry checked against the token,
attributed, decided by consent and minimised, the paging links sealed, and the response
rendered -- the work between the upstream's answer and the caller's, the same calls the
pipeline makes (``Release.answer``, ``Answer.render``). The consents are compiled from the
patient's Consent as ``ConsentGate.load`` would; nothing is read from MongoDB.

Two answers, 1,000 entries each, one patient, a ``patient/*.rs`` token, purpose ``PATRQT``:

- ``observations``: the Observations ``proxy_overhead.py`` seeds, as the local upstream
  returns them (each with its own id, ``meta.versionId`` and ``meta.lastUpdated``);
- ``record``: a fixture patient's record (Patient, Observations, Conditions, Encounters,
  MedicationRequests... with displays, narratives and a sensitive Condition), repeated.

Each is timed ``--passes`` times on fresh copies; the table gives the CPU time (``process_time``)
of the fastest and the median pass. The garbage collector is set as ``fhir-gateway serve`` sets
it. CPU time is what a shared machine disturbs least; compare runs made side by side.

    .venv/bin/python benchmarks/release_cost.py [--passes 31]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from consent.decide import compile_consents
from consent.model import app_grant
from gateway.fhir.access import authorize
from gateway.fhir.consent_gate import RequestConsent
from gateway.fhir.context import AccessContext
from gateway.fhir.interaction import parse
from gateway.fhir.paging import PageSealer
from gateway.fhir.release import Release
from gateway.proxy.answer import decode_answer
from gateway.proxy.rewrite import UrlRewriter
from gateway.proxy.upstream import UpstreamResponse
from smart_auth.scopes import ScopeSet

PATIENT = "pat-bench"
UPSTREAM = "http://127.0.0.1:8103/fhir"
PUBLIC = "http://127.0.0.1:8080/fhir"
RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "14-patient-samuel-reed.json"
ENTRIES = 1000


def _observations() -> list[dict[str, Any]]:
    """The Observations of ``proxy_overhead._seed_bench_patient`` as the upstream stores them."""
    return [
        {
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
            "subject": {"reference": f"Patient/{PATIENT}"},
            "effectiveDateTime": f"2025-01-01T00:{i // 50:02d}:{i % 50:02d}Z",
            "valueQuantity": {"value": 60 + i % 50, "unit": "/min"},
            "id": f"{i:08d}-1b2c-4d5e-8f90-a1b2c3d4e5f6",
            "meta": {
                "versionId": f"{i:08d}-9a8b-4c7d-8e6f-5a4b3c2d1e0f",
                "lastUpdated": f"2026-12-01T10:00:{i % 60:02d}.{i % 1000:03d}Z",
            },
        }
        for i in range(ENTRIES)
    ]


def _record() -> list[dict[str, Any]]:
    """A fixture patient's record, made the benchmark patient's, repeated to 1,000 entries."""
    patient = b"pat-samuel-reed"
    raw = RECORD.read_bytes().replace(patient, PATIENT.encode())
    record = [entry["resource"] for entry in orjson.loads(raw)["entry"]]
    record = [r for r in record if r["resourceType"] != "Consent"]
    return [record[i % len(record)] for i in range(ENTRIES)]


def _answer(resources: list[dict[str, Any]], search: str) -> bytes:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{UPSTREAM}/{search}"}],
        "entry": [
            {
                "fullUrl": f"{UPSTREAM}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
    return orjson.dumps(bundle)


class _Consents:
    """``ConsentGate``'s part in a release, without MongoDB: the patient's consents compiled."""

    def __init__(self, consents: list[dict[str, Any]]) -> None:
        self._consents = consents

    async def load(self, request: RequestConsent, patients: Iterable[str]) -> None:
        for patient in patients:
            if patient not in request.evaluators and patient != "?":
                request.evaluators[patient] = compile_consents(
                    self._consents if patient == PATIENT else [], request.attributes(patient)
                )

    async def load_for(
        self, request: RequestConsent, resources: Iterable[Mapping[str, Any]], owners_of: Any
    ) -> None:
        owners: set[str] = set()
        for resource in resources:
            owners |= owners_of(resource)
        await self.load(request, owners)


def _time(passes: int, step: Any) -> tuple[float, float]:
    samples = []
    for _ in range(passes):
        started = time.process_time()
        step()
        samples.append(time.process_time() - started)
    return min(samples) * 1000, statistics.median(samples) * 1000


def main(passes: int) -> None:
    now = datetime.now(UTC)
    context = AccessContext(
        issuer="https://gateway.example",
        subject="bench-user",
        client_id="bench-app",
        scopes=ScopeSet.parse("patient/*.rs"),
        jti="bench",
        expires_at=now + timedelta(hours=1),
        patient=PATIENT,
        fhir_user=f"Patient/{PATIENT}",
        purposes=("PATRQT",),
    )
    consent = app_grant(
        PATIENT,
        "bench-app",
        "Benchmark app",
        ["PATRQT"],
        ["Patient", "Observation", "Condition", "Encounter", "MedicationRequest"],
        [],
        now - timedelta(days=1),
        now + timedelta(days=1),
    )
    consent["id"] = "bench-consent"
    rewriter = UrlRewriter([UPSTREAM], PUBLIC)
    gate = _Consents([consent])
    release = Release(
        None,  # type: ignore[arg-type]  # no Binary in these answers: nothing is fetched
        gate,  # type: ignore[arg-type]
        PageSealer(b"s" * 32, 3600),
        rewriter,
        PUBLIC,
    )
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/fhir+json"}))
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)  # as `fhir-gateway serve` runs
    loop = asyncio.new_event_loop()
    print(f"\n{datetime.now(UTC):%Y-%m-%d}, {passes} passes, CPU ms per 1,000-entry answer\n")
    print("| answer | step | fastest | median | released |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, resources, search in (
        ("observations", _observations(), f"Observation?patient=Patient/{PATIENT}"),
        ("record", _record(), f"Observation?patient=Patient/{PATIENT}"),
    ):
        raw = _answer(resources, search)
        interaction = parse("GET", search.split("?")[0], [("patient", f"Patient/{PATIENT}")])
        upstream = UpstreamResponse(200, headers, raw, 0.0)
        released: list[int] = []

        def decode(upstream: UpstreamResponse = upstream) -> Any:
            return decode_answer(upstream, rewriter)

        def whole(
            upstream: UpstreamResponse = upstream,
            interaction: Any = interaction,
            self_url: str = f"{PUBLIC}/{search}",
            released: list[int] = released,
        ) -> None:
            answer = decode_answer(upstream, rewriter)
            request = RequestConsent(context, False, datetime.now(UTC))
            decision = authorize(context, interaction)
            loop.run_until_complete(release.answer(decision, answer, request, self_url=self_url))
            released.append(len((answer.body or {}).get("entry", [])))
            answer.render()

        for step, run in (("decode (rewrite, parse)", decode), ("whole release", whole)):
            fastest, median = _time(passes, run)
            count = f"{released[-1]:,}" if released and step == "whole release" else ""
            print(f"| {name} | {step} | {fastest:.2f} | {median:.2f} | {count} |")
    loop.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=31)
    main(parser.parse_args().passes)
