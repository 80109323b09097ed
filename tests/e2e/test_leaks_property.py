"""Property-based leak search: random combinations of search parameters, for every resource type
the fixtures hold, through the real gateway with patient A's token; whatever the answer's status,
nothing of another patient is ever released (the rules of :class:`tests.e2e.test_leaks.Judge`).

Parameter names come from each type's real R4 search parameters
(:func:`gateway.fhir.searchparams.param_names`) plus the result parameters, with modifiers, chains
and case variants; values come from a pool holding A's and the other patients' ids in every form,
ids of their records, codes, dates, names and identifiers seen in the fixtures.

Hypothesis runs synchronous test bodies only: the property runs in a worker thread
(``asyncio.to_thread``) and sends each request to the event loop that serves the gateway, so the
gateway, the database and the upstream are the session's real ones. Examples are derandomized
(reproducible in CI) and the run is bounded (``max_examples``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.fhir.compartment import PUBLIC_TYPES, is_compartment_type
from gateway.fhir.searchparams import UnknownParameter, param_names, search_param
from tests.conftest import RunningGateway, Stack
from tests.e2e.conftest import SessionFor
from tests.e2e.test_leaks import A_HAS, HIV_CONDITION
from tests.support.fixture_data import RESOURCES
from tests.support.leaks import OTHERS, A, Judge, Reply, call

pytestmark = pytest.mark.e2e

T = TypeVar("T")

TYPES = sorted({r["resourceType"] for r in RESOURCES})
RESULT_PARAMS = ("_include", "_revinclude", "_count", "_sort", "_elements", "_summary", "_id")
ESCAPES = (
    "_has:Observation:patient:code",
    "_has:Condition:subject:code",
    "_type",
    "_filter",
    "_list",
    "_query",
    "_contained",
    "_containedType",
    "_total",
    "_lastUpdated",
    "_tag",
    "_security",
)
MODIFIERS = (
    *([""] * 12),
    ":missing",
    ":not",
    ":exact",
    ":contains",
    ":identifier",
    ":Patient",
    ":Group",
    ":text",
    ":below",
    ":above",
    ":of-type",
    ":iterate",
    ".name",
    ".identifier",
    ":Patient.family",
)


def _id_forms(patient: str) -> list[str]:
    return [
        patient,
        f"Patient/{patient}",
        "{fhir}/Patient/" + patient,
        f"http://elsewhere.example/fhir/Patient/{patient}",
        f"Patient/{patient}/_history/1",
        f" {patient} ",
    ]


def _sample_ids() -> list[str]:
    """A few ids of each patient's records (every type the fixtures hold)."""
    seen: dict[tuple[str, str], int] = {}
    out: list[str] = []
    for resource in RESOURCES:
        key = (resource["resourceType"], resource["id"].rsplit("-", 1)[0])
        if seen.get(key, 0) < 2:
            seen[key] = seen.get(key, 0) + 1
            out += [resource["id"], f"{resource['resourceType']}/{resource['id']}"]
    return out


NEUTRAL_VALUES: list[str] = [
    # codes, categories, identifiers, names, dates seen in the fixtures
    "8867-4",
    "http://loinc.org|8867-4",
    "85354-9",
    "29463-7",
    "vital-signs",
    "laboratory",
    "survey",
    "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
    HIV_CONDITION,
    "http://snomed.info/sct|" + HIV_CONDITION,
    "HIV",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode|HIV",
    "R",
    "MRN-100101",
    "MRN-100102",
    "https://hospital.example.org/mrn|MRN-100103",
    "Novak",
    "Garcia",
    "Rossi",
    "Reed",
    "maria.garcia@example.com",
    "+1-555-0113",
    "final",
    "active",
    "male",
    "female",
    "2015-05-09",
    "2020",
    "ge2021-01-01",
    "lt2025-06-01",
    "true",
    "false",
    "*",
    "",
]
OTHERS_VALUES = [form for patient in OTHERS for form in _id_forms(patient)]
VALUE_POOL: list[str] = [
    # A's own ids weigh as much as everyone else's together: most probes then pass the narrowing
    # and exercise what the upstream answers and the gateway filters.
    *(_id_forms(A) * len(OTHERS)),
    *OTHERS_VALUES,
    *_sample_ids(),
    *(NEUTRAL_VALUES * 2),
]


def _include_values() -> list[str]:
    out = ["*", "Observation:subject", "Patient:link", "RelatedPerson:patient"]
    for rtype in TYPES:
        for name in sorted(param_names(rtype)):
            try:
                if search_param(rtype, name).type == "reference":
                    out.append(f"{rtype}:{name}")
            except UnknownParameter:
                continue
    return out


INCLUDES = _include_values()
SPECIAL_VALUES: dict[str, st.SearchStrategy[str]] = {
    "_include": st.sampled_from(INCLUDES),
    "_revinclude": st.sampled_from(INCLUDES),
    "_count": st.sampled_from(["0", "1", "2", "5", "50"]),
    "_elements": st.sampled_from(["id", "subject", "id,code", "patient", "contained"]),
    "_summary": st.sampled_from(["true", "false", "count", "data", "text"]),
}
CASES = (*([str] * 9), str.upper, str.title, str.swapcase)


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    rtype: str
    params: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return f"{self.method} {self.path}?" + "&".join(f"{k}={v}" for k, v in self.params)


@st.composite
def parameter(draw: st.DrawFn, rtype: str) -> tuple[str, str]:
    names = sorted(param_names(rtype)) + list(RESULT_PARAMS) + list(ESCAPES)
    name = draw(st.sampled_from(names))
    if name in SPECIAL_VALUES:
        value = draw(SPECIAL_VALUES[name])
        modifier = draw(st.sampled_from(["", "", ":iterate"])) if "include" in name else ""
    elif name == "_sort":
        value = draw(st.sampled_from(["-" + n for n in sorted(param_names(rtype))[:20]] + ["_id"]))
        modifier = ""
    else:
        values = draw(st.lists(st.sampled_from(VALUE_POOL), min_size=1, max_size=3))
        value = ",".join(values)
        modifier = draw(st.sampled_from(MODIFIERS))
    case = draw(st.sampled_from(CASES))
    return case(name + modifier), value


@st.composite
def probes(draw: st.DrawFn) -> Probe:
    rtype = draw(st.sampled_from(TYPES))
    params = tuple(draw(st.lists(parameter(rtype), min_size=0, max_size=3)))
    how = draw(st.sampled_from(["search", "search", "post", "compartment", "read"]))
    if how == "post":
        return Probe("POST", f"{rtype}/_search", rtype, params)
    if how == "compartment":
        owner = draw(st.sampled_from([A, A, *OTHERS]))
        return Probe("GET", f"Patient/{owner}/{rtype}", rtype, params)
    if how == "read":
        target = draw(st.sampled_from([r for r in RESOURCES if r["resourceType"] == rtype]))
        return Probe("GET", f"{rtype}/{target['id']}", rtype, params[:1])
    return Probe("GET", rtype, rtype, params)


def _bound(rtype: str) -> int | None:
    """The most matches any answer to A may count for this type."""
    if rtype in PUBLIC_TYPES or not is_compartment_type(rtype):
        return None
    return A_HAS[rtype]


async def test_s26_property_no_parameter_combination_releases_another_patient(
    gateway: RunningGateway, session_for: SessionFor, local_stack_env: Stack
) -> None:
    local_stack_env.upstream.reset()  # the fixture data only: earlier writes are not A's leaks
    amelia = await session_for(scope="patient/*.rs")
    judge = Judge(gateway.fhir, local_stack_env.upstream.base_url)
    loop = asyncio.get_running_loop()

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    async def send(probe: Probe) -> Reply:
        params = [(k, v.replace("{fhir}", gateway.fhir)) for k, v in probe.params]
        url = f"{gateway.fhir}/{probe.path}"
        if probe.method == "POST":
            return await call(amelia, "POST", url, form=params)
        query = URL(url).with_query(params) if params else URL(url)
        return await call(amelia, "GET", str(query))

    @settings(
        max_examples=100,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(probe=probes())
    def no_leak(probe: Probe) -> None:
        reply = run(send(probe))
        rtype = probe.rtype
        context = f"{probe.describe()} -> {reply.status} {reply.raw[:300]!r}"
        assert reply.status != 500, context
        body = judge.nothing_of_others(reply, at_most=_bound(rtype))
        if reply.status == 200 and isinstance(body, dict):
            links = body.get("link") or []
            following = next((lk["url"] for lk in links if lk.get("relation") == "next"), None)
            if following:
                judge.nothing_of_others(run(call(amelia, "GET", following)), at_most=_bound(rtype))

    await asyncio.to_thread(no_leak)
