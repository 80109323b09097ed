"""The leak suite: a token for one patient gets nothing of any other patient, by any route.

Patient A is ``pat-amelia-rossi`` with a ``patient/*.rs`` token (``patient/*.cruds`` for writes);
"B" is every other patient of the fixtures. Every route below runs through the real gateway in
front of the real local FHIR server, and every answer is judged by :class:`Judge`:

- no released resource (match, ``_include``/``_revinclude``, nested Bundle, ``contained``) is one
  of B's (the fixture data's own ownership table, ``tests.support.fixture_data``);
- no ``Patient/<B>`` nor any id of B's records anywhere in the body or the headers (an
  OperationOutcome or a ``self`` link may echo what the caller itself sent, nothing more);
- ``total`` is never larger than what is released (and never larger than what A has);
- every link is on the gateway's base, every paging link is one of its signed ``_page`` links,
  and the upstream's address never shows;
- refusals are 403 OperationOutcomes, reads of B's resources are 404 with the very same answer as a
  read of a resource that does not exist.

Requirement ids: SMART.md S-26 (403 for what the token may not see), S-28 (granular scopes), S-29
(batch and transaction entry by entry); SECURITY.md P-10/P-11 (links and addresses stay the
gateway's), P-08 (a parent acts for a child, nobody else).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.fhir import paging as paging_module
from tests.conftest import RunningGateway, Stack, StartGateway
from tests.e2e.conftest import TRUSTED_APP, SessionFor, register_client
from tests.support.fixture_data import PATIENTS, counts, of
from tests.support.leaks import PAGE_LINK, A, Judge, Reply, call
from tests.support.tokens import minted_token

pytestmark = pytest.mark.e2e

# --- the fixture data --------------------------------------------------------------------------

LEO = "pat-leo-garcia"
MARIA = "pat-maria-garcia"
DANIEL = "pat-daniel-novak"
SAMUEL = "pat-samuel-reed"

VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
HIV_CONDITION = "86406008"  # SNOMED CT: HIV disease (only pat-samuel-reed has it)
HEART_RATE = "http://loinc.org|8867-4"
JSON = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


A_HAS: Counter[str] = counts(A)
"""How many resources of each type A has: no answer to A may count more."""


def _codes(resource: dict[str, Any], element: str) -> set[str]:
    value = resource.get(element)
    items = value if isinstance(value, list) else [value] if value else []
    return {c.get("code") for item in items for c in item.get("coding", [])}


A_HEART_RATES = sum(
    1 for r in of(A, "Observation") if "8867-4" in _codes(r, "code")
)  # A's heart-rate Observations
A_VITALS = {r["id"] for r in of(A, "Observation") if "vital-signs" in _codes(r, "category")}
A_LABS = {r["id"] for r in of(A, "Observation") if "laboratory" in _codes(r, "category")}


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _seeded(local_stack_env: Stack) -> None:
    """Start from the fixture data: other modules' writes must not look like leaks here."""
    local_stack_env.upstream.reset()


@pytest.fixture
def clean_upstream(fresh_upstream: Stack) -> Iterator[Stack]:
    """Re-seeded before and after: a write test never leaves its marks for the next test."""
    yield fresh_upstream
    fresh_upstream.upstream.reset()


@pytest.fixture
def judge(gateway: RunningGateway, local_stack_env: Stack) -> Judge:
    return Judge(gateway.fhir, local_stack_env.upstream.base_url)


@pytest.fixture
async def amelia(session_for: SessionFor) -> aiohttp.ClientSession:
    return await session_for(scope="patient/*.rs")


@pytest.fixture
async def amelia_writer(session_for: SessionFor) -> aiohttp.ClientSession:
    return await session_for(scope="patient/*.cruds")


@pytest.fixture
async def daniel(session_for: SessionFor) -> aiohttp.ClientSession:
    return await session_for(
        scope="patient/*.rs",
        user_id="daniel",
        fhir_user=f"Patient/{DANIEL}",
        patient=DANIEL,
        acts_for=(DANIEL,),
    )


async def upstream_get(http: aiohttp.ClientSession, stack: Stack, path: str) -> Reply:
    return await call(http, "GET", f"{stack.upstream.base_url}/{path}")


def _forbidden(reply: Reply) -> None:
    assert reply.status == 403, (reply.status, reply.raw[:400])
    body = reply.body
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "forbidden", body


def _match_ids(body: dict[str, Any]) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in body.get("entry") or []
        if (e.get("search") or {}).get("mode", "match") == "match"
    ]


# --- search routes that must be refused by the gateway itself (403) ----------------------------

_B = DANIEL
REFUSED_SEARCHES = [
    ("patient-plain-id", f"Observation?patient={_B}"),
    ("patient-reference", f"Observation?patient=Patient/{_B}"),
    ("patient-absolute-url", f"Observation?patient=http://elsewhere.example/fhir/Patient/{_B}"),
    ("patient-gateway-url", f"Observation?patient={{fhir}}/Patient/{_B}"),
    ("subject-plain-id", f"Observation?subject={_B}"),
    ("subject-reference", f"Observation?subject=Patient/{_B}"),
    ("subject-absolute-url", f"Observation?subject=https://elsewhere.example/Patient/{_B}"),
    ("subject-Patient-modifier", f"Observation?subject:Patient={_B}"),
    ("subject-Group-modifier", "Observation?subject:Group=any-group"),
    ("chained-subject-Patient-name", "Observation?subject:Patient.name=Novak"),
    ("chained-subject-name", "Observation?subject.name=Novak"),
    ("chained-patient-identifier", "Observation?patient.identifier=MRN-100102"),
    ("chained-encounter-subject", f"Observation?encounter.subject=Patient/{_B}"),
    ("has-reverse-chain-on-patient", "Patient?_has:Observation:patient:code=8867-4"),
    ("has-reverse-chain-diagnosis", f"Patient?_has:Condition:subject:code={HIV_CONDITION}"),
    ("has-upper-case", "Patient?_HAS:Condition:subject:code=86406008"),
    ("has-on-observation", f"Observation?_has:Observation:derived-from:patient={_B}"),
    ("id-of-B-on-Patient", f"Patient?_id={_B}"),
    ("id-list-on-Patient", f"Patient?_id={A},{_B}"),
    ("id-upper-case-on-Patient", f"Patient?_ID={_B}"),
    ("id-not-on-Patient", f"Patient?_id:not={A}"),
    ("patient-link-to-B", f"Patient?link=Patient/{_B}"),
    ("comma-list", f"Observation?patient={A},{_B}"),
    ("comma-list-references", f"Observation?subject=Patient/{A},Patient/{_B}"),
    ("comma-list-url-encoded", f"Observation?patient={A}%2C{_B}"),
    ("repeated-parameter", f"Observation?patient={A}&patient={_B}"),
    ("upper-case-PATIENT", f"Observation?PATIENT={_B}"),
    ("title-case-Subject", f"Observation?Subject=Patient/{_B}"),
    ("upper-case-own-patient", f"Observation?PATIENT={A}"),
    ("modifier-missing-true", "Observation?patient:missing=true"),
    ("modifier-missing-false", "Observation?subject:missing=false"),
    (
        "modifier-identifier",
        "Observation?patient:identifier=https://hospital.example.org/mrn|MRN-100102",
    ),
    ("modifier-not", f"Observation?patient:not={A}"),
    ("modifier-above", f"Observation?subject:above=Patient/{_B}"),
    ("performer-B", f"Observation?performer=Patient/{_B}"),
    ("condition-subject-B", f"Condition?subject=Patient/{_B}"),
    ("encounter-patient-B", f"Encounter?patient={_B}"),
    ("relatedperson-of-B", f"RelatedPerson?patient={LEO}"),
    ("type-on-type-search", "Observation?_type=Patient"),
    ("filter", f"Observation?_filter=subject%20eq%20Patient/{_B}"),
    ("list", "Observation?_list=some-list"),
    ("query", "Observation?_query=everything"),
    ("contained", "Observation?_contained=true"),
    ("contained-type", "Observation?_containedType=contained"),
    ("system-search-type", "?_type=Observation"),
    ("system-search-no-type", ""),
    ("system-search-type-patient", "?_type=Patient&_id=" + _B),
    ("compartment-of-B", f"Patient/{_B}/Observation"),
    ("compartment-of-B-patient", f"Patient/{_B}/Patient"),
    ("compartment-of-A-naming-B", f"Patient/{A}/Observation?subject=Patient/{_B}"),
    ("compartment-of-A-chained", f"Patient/{A}/Observation?subject.name=Novak"),
    ("everything-of-B", f"Patient/{_B}/$everything"),
    ("type-history-observation", "Observation/_history"),
    ("type-history-patient", "Patient/_history"),
    ("system-history", "_history"),
    ("elements-id-with-B", f"Observation?patient={_B}&_elements=id"),
    ("summary-count-with-B", f"Observation?patient={_B}&_summary=count"),
    ("summary-count-of-B-compartment", f"Patient/{_B}/Condition?_summary=count"),
    # Types outside the compartment carry no patient data, but a reverse chain or a _filter on
    # them tests facts about other patients' records: the design refuses those for every type.
    ("public-type-has-practitioner", f"Practitioner?_has:Encounter:practitioner:patient={SAMUEL}"),
    ("public-type-has-organization", "Organization?_has:Patient:organization:family=Novak"),
    ("public-type-filter", "Practitioner?_filter=name%20eq%20Okafor"),
    ("public-type-type", "Practitioner?_type=Patient"),
]


@pytest.mark.parametrize("path", [pytest.param(p, id=i) for i, p in REFUSED_SEARCHES])
async def test_s26_escape_route_is_refused(
    path: str, gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    url = f"{gateway.fhir}/{path.format(fhir=gateway.fhir)}".rstrip("/")
    reply = await call(amelia, "GET", url)
    judge.nothing_of_others(reply)
    _forbidden(reply)


POSTED_SEARCHES = [
    ("post-search-patient-B", "Observation/_search", {"patient": _B}),
    ("post-search-subject-B", "Observation/_search", {"subject": f"Patient/{_B}"}),
    ("post-search-code-and-B", "Observation/_search", {"code": "8867-4", "patient": f"{A},{_B}"}),
    ("post-search-has", "Patient/_search", {"_has:Condition:subject:code": HIV_CONDITION}),
    ("post-search-patient-id-B", "Patient/_search", {"_id": _B}),
    ("post-search-system", "_search", {"_type": "Observation"}),
]


@pytest.mark.parametrize(
    ("path", "form"), [pytest.param(p, f, id=i) for i, p, f in POSTED_SEARCHES]
)
async def test_s26_posted_search_naming_another_patient_is_refused(
    path: str,
    form: dict[str, str],
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    judge: Judge,
) -> None:
    reply = await call(amelia, "POST", f"{gateway.fhir}/{path}", form=form)
    judge.nothing_of_others(reply)
    _forbidden(reply)


async def test_s26_posted_search_query_and_form_are_both_checked(
    gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    reply = await call(
        amelia, "POST", f"{gateway.fhir}/Observation/_search?patient={A}", form={"patient": _B}
    )
    judge.nothing_of_others(reply)
    _forbidden(reply)


# --- search routes that are allowed and must release A's data only ------------------------------

ALLOWED_SEARCHES: list[tuple[str, str, int | None]] = [
    # (id, path, the most matches A may get)
    ("id-of-B-on-Observation", "Observation?_id=obs-daniel-novak-1", 0),
    ("id-list-A-and-B-on-Observation", "Observation?_id=obs-amelia-rossi-1,obs-daniel-novak-1", 1),
    ("id-of-B-encounter", "Encounter?_id=enc-daniel-novak-1", 0),
    ("patient-own-id", f"Observation?patient={A}", A_HAS["Observation"]),
    ("subject-own-absolute-url", f"Observation?subject={{fhir}}/Patient/{A}", A_HAS["Observation"]),
    ("subject-Patient-own", f"Observation?subject:Patient={A}", A_HAS["Observation"]),
    ("code-across-patients", f"Observation?code={HEART_RATE}", A_HEART_RATES),
    ("diagnosis-of-B", f"Condition?code={HIV_CONDITION}", 0),
    ("name-of-B-on-Patient", "Patient?family=Novak", 0),
    ("identifier-of-B-on-Patient", "Patient?identifier=MRN-100102", 0),
    ("include-subject", "Observation?_include=Observation:subject", A_HAS["Observation"]),
    ("include-subject-typed", "Observation?_include=Observation:subject:Patient", None),
    (
        "include-encounter-iterate",
        "Observation?_include=Observation:encounter&_include:iterate=Encounter:subject",
        None,
    ),
    ("include-performer", "Observation?_include=Observation:performer", None),
    ("include-star", "Observation?_include=*", None),
    ("include-iterate-star", "Observation?_include:iterate=*", None),
    (
        "revinclude-from-patient",
        "Patient?_revinclude=Observation:subject&_revinclude=RelatedPerson:patient",
        1,
    ),
    (
        "revinclude-iterate",
        "Patient?_revinclude=Encounter:subject&_revinclude:iterate=Observation:encounter",
        1,
    ),
    ("revinclude-star", "Patient?_revinclude=*", 1),
    (
        "revinclude-from-encounter",
        "Encounter?_revinclude=Observation:encounter&_revinclude=Condition:encounter",
        A_HAS["Encounter"],
    ),
    (
        "revinclude-from-practitioner",
        "Practitioner?_revinclude=Encounter:participant&_revinclude=Observation:performer",
        None,
    ),
    ("revinclude-from-organization", "Organization?_revinclude=Patient:organization", None),
    ("elements-id", "Observation?_elements=id", A_HAS["Observation"]),
    ("elements-subject", "Observation?_elements=subject&_count=50", A_HAS["Observation"]),
    ("summary-true", "Patient?_summary=true", 1),
    ("compartment-of-A", f"Patient/{A}/Observation", A_HAS["Observation"]),
    (
        "compartment-of-A-condition",
        f"Patient/{A}/Condition?_include=Condition:encounter",
        A_HAS["Condition"],
    ),
    ("everything-of-A", f"Patient/{A}/$everything", None),
    ("everything-of-A-small-pages", f"Patient/{A}/$everything?_count=3", None),
    ("sort-and-count", "Observation?_sort=-date&_count=5", A_HAS["Observation"]),
    ("sort-by-patient", "Encounter?_sort=patient&_count=50", A_HAS["Encounter"]),
    ("related-person", "RelatedPerson", 0),
    ("directory", "Practitioner", None),
]


@pytest.mark.parametrize(
    ("path", "at_most"), [pytest.param(p, n, id=i) for i, p, n in ALLOWED_SEARCHES]
)
async def test_s26_allowed_search_releases_only_own_data(
    path: str,
    at_most: int | None,
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    judge: Judge,
) -> None:
    reply = await call(amelia, "GET", f"{gateway.fhir}/{path.format(fhir=gateway.fhir)}")
    body = judge.nothing_of_others(reply, at_most=at_most)
    # The local upstream refuses some parameters ('*' includes) with 400; never a 5xx, never B.
    assert reply.status in (200, 400), (reply.status, reply.raw[:300])
    if reply.status == 200:
        assert body["resourceType"] == "Bundle"
        if at_most is not None:
            assert len(_match_ids(body)) <= at_most


COUNTS: list[tuple[str, str, int]] = [
    # (id, path, A's exact count)
    ("summary-count", "Observation?_summary=count", A_HAS["Observation"]),
    ("summary-count-code", f"Observation?code={HEART_RATE}&_summary=count", A_HEART_RATES),
    ("summary-count-diagnosis-of-B", f"Condition?code={HIV_CONDITION}&_summary=count", 0),
    ("summary-count-patients", "Patient?_summary=count", 1),
    ("summary-count-name-of-B", "Patient?family=Novak&_summary=count", 0),
    ("summary-count-compartment", f"Patient/{A}/Observation?_summary=count", A_HAS["Observation"]),
    ("summary-count-everything", f"Patient/{A}/$everything?_summary=count", 10_000),
]


@pytest.mark.parametrize(("path", "exact"), [pytest.param(p, n, id=i) for i, p, n in COUNTS])
async def test_s26_count_is_refused_or_counts_own_data_only(
    path: str, exact: int, gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    """``_summary=count`` either is refused, or counts exactly what A may see."""
    reply = await call(amelia, "GET", f"{gateway.fhir}/{path}")
    body = judge.nothing_of_others(reply, at_most=exact)
    assert reply.status in (200, 403), (reply.status, reply.raw[:300])
    if reply.status == 200 and exact < 10_000:
        assert body.get("total", exact) == exact


async def test_elements_and_summary_on_the_first_page_hold_on_the_next(
    gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    """``_elements=id`` shapes every page of a result, not only the first one."""
    reply = await call(amelia, "GET", f"{gateway.fhir}/Observation?_elements=id&_count=2")
    first = judge.nothing_of_others(reply)
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = judge.nothing_of_others(await call(amelia, "GET", next_url))
    shapes = [sorted(e["resource"]) for e in first["entry"] + second["entry"]]
    assert shapes[0] == shapes[-1], shapes


# --- reads of other patients' resources: 404, the same as for a resource that does not exist -----

B_READS = [
    ("read-observation", "Observation/obs-daniel-novak-1", "Observation/no-such-obs-1"),
    ("read-patient", f"Patient/{_B}", "Patient/no-such-patient"),
    ("read-encounter", "Encounter/enc-daniel-novak-1", "Encounter/no-such-encounter"),
    ("read-condition-sensitive", "Condition/cond-samuel-reed-2", "Condition/no-such-condition"),
    (
        "read-related-person-of-child",
        "RelatedPerson/relperson-maria-garcia",
        "RelatedPerson/no-such-rp",
    ),
    (
        "read-elements-id",
        "Observation/obs-daniel-novak-1?_elements=id",
        "Observation/no-such-obs-1?_elements=id",
    ),
    ("read-summary-true", f"Patient/{_B}?_summary=true", "Patient/no-such-patient?_summary=true"),
    (
        "history-observation",
        "Observation/obs-daniel-novak-1/_history",
        "Observation/no-such-obs-1/_history",
    ),
    ("history-patient", f"Patient/{_B}/_history", "Patient/no-such-patient/_history"),
]


@pytest.mark.parametrize(("path", "missing"), [pytest.param(p, m, id=i) for i, p, m in B_READS])
async def test_s26_read_of_another_patients_resource_is_404_like_a_missing_one(
    path: str,
    missing: str,
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    judge: Judge,
) -> None:
    theirs = await call(amelia, "GET", f"{gateway.fhir}/{path}")
    judge.nothing_of_others(theirs)
    nothing = await call(amelia, "GET", f"{gateway.fhir}/{missing}")
    assert nothing.status == 404, (nothing.status, nothing.raw[:300])
    assert theirs.status == 404, (theirs.status, theirs.raw[:300])
    assert theirs.raw == nothing.raw
    skip = {"date", "x-request-id"}
    assert {k.lower() for k, _ in theirs.headers} - skip == {
        k.lower() for k, _ in nothing.headers
    } - skip


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("Observation/obs-daniel-novak-1", "Observation/no-such-obs-1"),
        (f"Patient/{_B}", "Patient/no-such-patient"),
    ],
    ids=["observation", "patient"],
)
async def test_s26_vread_of_another_patients_version_is_404(
    path: str,
    missing: str,
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    local_stack_env: Stack,
    judge: Judge,
) -> None:
    current = (await upstream_get(http, local_stack_env, path)).body
    version = current["meta"]["versionId"]
    theirs = await call(amelia, "GET", f"{gateway.fhir}/{path}/_history/{version}")
    judge.nothing_of_others(theirs)
    nothing = await call(amelia, "GET", f"{gateway.fhir}/{missing}/_history/{version}")
    assert (theirs.status, theirs.raw) == (nothing.status, nothing.raw) == (404, nothing.raw)


async def test_s26_conditional_read_of_another_patients_resource_is_404(
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    local_stack_env: Stack,
    judge: Judge,
) -> None:
    """``If-None-Match`` with the right version must not turn B's 404 into a 304 that confirms the
    resource and gives away its version and last change (the version ids of many servers are
    1, 2, 3...)."""
    upstream = await upstream_get(http, local_stack_env, "Observation/obs-daniel-novak-1")
    etag = upstream.header("ETag")
    assert etag
    reply = await call(
        amelia,
        "GET",
        f"{gateway.fhir}/Observation/obs-daniel-novak-1",
        headers={"If-None-Match": etag},
    )
    judge.nothing_of_others(reply)
    assert reply.status == 404, (reply.status, reply.headers)
    assert reply.header("ETag") is None and reply.header("Last-Modified") is None


async def test_s26_history_of_own_resource_holds_own_versions_only(
    gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    reply = await call(amelia, "GET", f"{gateway.fhir}/Observation/obs-amelia-rossi-1/_history")
    body = judge.nothing_of_others(reply)
    assert reply.status == 200
    assert [e["resource"]["id"] for e in body["entry"]] == ["obs-amelia-rossi-1"]


# --- paging -------------------------------------------------------------------------------------


async def _first_next_link(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200
        bundle = await response.json(content_type=None)
    return next(link["url"] for link in bundle["link"] if link["relation"] == "next")


async def test_s26_paging_through_own_observations_never_reaches_another_patient(
    gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    url: str | None = f"{gateway.fhir}/Observation?_count=2"
    seen: list[str] = []
    pages = 0
    while url:
        reply = await call(amelia, "GET", url)
        assert reply.status == 200, reply.raw[:300]
        page = judge.nothing_of_others(reply, at_most=A_HAS["Observation"])
        assert len(page.get("entry", [])) <= 2
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((lk["url"] for lk in page.get("link", []) if lk["relation"] == "next"), None)
        if url is not None:
            assert url.startswith(f"{gateway.fhir}/_page/") and PAGE_LINK.search(url)
        pages += 1
        assert pages <= 20
    assert sorted(seen) == sorted(r["id"] for r in of(A, "Observation"))


async def test_s26_paging_link_of_one_patient_is_refused_to_another(
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    daniel: aiohttp.ClientSession,
    judge: Judge,
) -> None:
    link = await _first_next_link(amelia, f"{gateway.fhir}/Observation?_count=2")
    reply = await call(daniel, "GET", link)
    Judge(gateway.fhir, judge.upstream, others=(A,)).nothing_of_others(reply)
    _forbidden(reply)


async def test_s26_paging_link_is_refused_to_another_app_of_the_same_user(
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    session_for: SessionFor,
    judge: Judge,
) -> None:
    link = await _first_next_link(amelia, f"{gateway.fhir}/Observation?_count=2")
    other_app = await session_for(client_id="another-app", scope="patient/*.rs")
    _forbidden(await call(other_app, "GET", link))


def _changed(text: str, at: int) -> str:
    return text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1 :]


@pytest.mark.parametrize("part", ["payload", "signature"])
async def test_s26_paging_link_with_one_byte_changed_is_refused(
    part: str, gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    link = await _first_next_link(amelia, f"{gateway.fhir}/Observation?_count=2")
    prefix, token = link.rsplit("/", 1)
    payload, mac = token.split(".")
    if part == "payload":
        token = _changed(payload, len(payload) // 2) + "." + mac
    else:
        token = payload + "." + _changed(mac, 3)
    reply = await call(amelia, "GET", f"{prefix}/{token}")
    judge.nothing_of_others(reply)
    _forbidden(reply)


async def test_s26_paging_link_after_its_lifetime_is_refused(
    start_gateway: StartGateway, local_stack_env: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway whose links live 10 s. Rather than sleeping, the paging module's clock is moved
    on by a minute once the link is issued: the link, its signature and the check are the real
    ones, and nothing else in the gateway (token expiry included) sees the moved clock."""
    gw = await start_gateway(
        upstream_url=local_stack_env.upstream.base_url,
        mongodb_uri=local_stack_env.mongo_uri,
        page_link_lifetime_seconds=10,
    )
    await register_client(gw, TRUSTED_APP, trusted=True)
    token = await minted_token(gw, client_id=TRUSTED_APP, purposes=("TREAT",), scope="patient/*.rs")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        link = await _first_next_link(session, f"{gw.fhir}/Observation?_count=2")
        fresh = await call(session, "GET", link)
        assert fresh.status == 200
        real = time.time
        monkeypatch.setattr(paging_module, "time", SimpleNamespace(time=lambda: real() + 60))
        reply = await call(session, "GET", link)
    _forbidden(reply)
    assert "expired" in reply.body["issue"][0]["diagnostics"]


# --- granular scopes (S-28) ---------------------------------------------------------------------


@pytest.fixture
async def vitals_only(session_for: SessionFor) -> aiohttp.ClientSession:
    return await session_for(scope=f"patient/Observation.rs?category={VITAL_SIGNS}")


async def test_s28_granular_scope_read_of_a_laboratory_result_is_404(
    gateway: RunningGateway, vitals_only: aiohttp.ClientSession, judge: Judge
) -> None:
    lab = sorted(A_LABS)[0]
    reply = await call(vitals_only, "GET", f"{gateway.fhir}/Observation/{lab}")
    judge.nothing_of_others(reply)
    nothing = await call(vitals_only, "GET", f"{gateway.fhir}/Observation/no-such-obs-1")
    assert (reply.status, reply.raw) == (404, nothing.raw)
    vital = sorted(A_VITALS)[0]
    assert (await call(vitals_only, "GET", f"{gateway.fhir}/Observation/{vital}")).status == 200


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?category=laboratory",
        "?_count=3",
        "?_include=Observation:subject",
        "?code=http://loinc.org|8867-4",
        f"?_id={sorted(A_LABS)[0]}",
    ],
    ids=["all", "laboratory", "paged", "include-subject", "heart-rate", "id-of-a-lab"],
)
async def test_s28_granular_scope_search_releases_vital_signs_only(
    query: str, gateway: RunningGateway, vitals_only: aiohttp.ClientSession, judge: Judge
) -> None:
    url: str | None = f"{gateway.fhir}/Observation{query}"
    released: list[dict[str, Any]] = []
    while url:
        reply = await call(vitals_only, "GET", url)
        assert reply.status == 200, reply.raw[:300]
        body = judge.nothing_of_others(reply, at_most=len(A_VITALS))
        released += [e["resource"] for e in body.get("entry", [])]
        url = next((lk["url"] for lk in body.get("link", []) if lk["relation"] == "next"), None)
    assert all(r["resourceType"] == "Observation" for r in released), "only Observations"
    assert {r["id"] for r in released} <= A_VITALS
    if not query:
        assert {r["id"] for r in released} == A_VITALS


async def test_s28_granular_scope_count_is_refused_or_exact(
    gateway: RunningGateway, vitals_only: aiohttp.ClientSession, judge: Judge
) -> None:
    reply = await call(vitals_only, "GET", f"{gateway.fhir}/Observation?_summary=count")
    body = judge.nothing_of_others(reply, at_most=len(A_VITALS))
    assert reply.status in (200, 403)
    if reply.status == 200:
        assert body["total"] == len(A_VITALS)


# --- batch and transaction (S-29) ---------------------------------------------------------------


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _get(url: str) -> dict[str, Any]:
    return {"request": {"method": "GET", "url": url}}


def _observation(patient: str, marker: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:leak-suite", "value": marker}],
        "code": {"text": "leak suite probe"},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def _post(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


async def _written(http: aiohttp.ClientSession, stack: Stack, marker: str) -> int:
    reply = await upstream_get(http, stack, f"Observation?identifier=urn:leak-suite|{marker}")
    assert reply.status == 200
    return len(reply.body.get("entry", []))


async def test_s29_batch_answers_each_entry_and_refuses_other_patients(
    gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    batch = _bundle(
        "batch",
        _get(f"Patient/{A}"),
        _get("Observation/obs-daniel-novak-1"),
        _get(f"Patient/{_B}"),
        _get(f"Observation?patient={_B}"),
        _get("Observation?_id=obs-amelia-rossi-1,obs-daniel-novak-1"),
        _get(f"Patient/{_B}/$everything"),
        _get(f"Condition?code={HIV_CONDITION}&_summary=count"),
    )
    reply = await call(amelia, "POST", gateway.fhir, body=batch, headers=JSON)
    body = judge.nothing_of_others(reply)
    assert reply.status == 200
    statuses = [e["response"]["status"][:3] for e in body["entry"]]
    assert statuses[:6] == ["200", "404", "404", "403", "200", "403"], statuses
    assert body["entry"][0]["resource"]["id"] == A
    assert _match_ids(body["entry"][4]["resource"]) == ["Observation/obs-amelia-rossi-1"]
    # A count is refused, or it counts A's data only (A has no HIV diagnosis).
    assert statuses[6] == "403" or body["entry"][6]["resource"].get("total") == 0


async def test_s29_batch_write_for_another_patient_is_refused_entry_by_entry(
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    batch = _bundle("batch", _post(_observation(A, mine)), _post(_observation(_B, theirs)))
    reply = await call(amelia_writer, "POST", gateway.fhir, body=batch, headers=JSON)
    body = judge.nothing_of_others(reply)
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["201", "403"]
    assert await _written(http, clean_upstream, mine) == 1
    assert await _written(http, clean_upstream, theirs) == 0


@pytest.mark.parametrize(
    "theirs",
    [
        pytest.param(lambda m: _post(_observation(_B, m)), id="create-for-B"),
        pytest.param(
            lambda m: _post(_observation(A, m, performer=[{"reference": f"Patient/{_B}"}])),
            id="create-naming-B",
        ),
        pytest.param(
            lambda m: {
                "resource": _observation(_B, m) | {"id": "obs-daniel-novak-1"},
                "request": {"method": "PUT", "url": "Observation/obs-daniel-novak-1"},
            },
            id="update-of-B",
        ),
        pytest.param(
            lambda m: {"request": {"method": "DELETE", "url": "Observation/obs-daniel-novak-1"}},
            id="delete-of-B",
        ),
        pytest.param(
            lambda m: {"request": {"method": "DELETE", "url": f"Patient/{_B}"}},
            id="delete-of-B-patient",
        ),
    ],
)
async def test_s29_transaction_with_a_write_for_another_patient_is_refused_whole(
    theirs: Any,
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    mine, marker = uuid.uuid4().hex, uuid.uuid4().hex
    before = (await upstream_get(http, clean_upstream, "Observation/obs-daniel-novak-1")).body
    transaction = _bundle("transaction", _post(_observation(A, mine)), theirs(marker))
    reply = await call(amelia_writer, "POST", gateway.fhir, body=transaction, headers=JSON)
    judge.nothing_of_others(reply)
    assert reply.status in (403, 404), (reply.status, reply.raw[:300])
    assert await _written(http, clean_upstream, mine) == 0, "nothing of the Bundle is written"
    assert await _written(http, clean_upstream, marker) == 0
    after = await upstream_get(http, clean_upstream, "Observation/obs-daniel-novak-1")
    assert after.status == 200 and after.body["meta"] == before["meta"]
    assert (await upstream_get(http, clean_upstream, f"Patient/{_B}")).status == 200


async def test_s29_transaction_reading_another_patient_answers_like_a_missing_resource(
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    """A transaction that reads B's resource must answer exactly as one that reads a resource that
    does not exist: no version, ETag or last change of B's resource, and the same outcome for the
    write beside it (all or nothing)."""
    answers: list[tuple[int, int]] = []
    for target in ("Observation/obs-daniel-novak-1", "Observation/no-such-obs-1"):
        mine = uuid.uuid4().hex
        transaction = _bundle("transaction", _post(_observation(A, mine)), _get(target))
        reply = await call(amelia_writer, "POST", gateway.fhir, body=transaction, headers=JSON)
        if target.startswith("Observation/obs-daniel"):
            if reply.status == 200:
                response = reply.body["entry"][1]["response"]
                assert not {"etag", "lastModified", "location"} & set(response), response
            judge.nothing_of_others(reply)
        written = await _written(http, clean_upstream, mine)
        assert (reply.status >= 400) == (written == 0), "the caller is told what was written"
        answers.append((reply.status, written))
    assert answers[0] == answers[1], f"B's resource / a missing one: {answers}"


@pytest.mark.parametrize(
    ("url", "at_most"),
    [
        pytest.param(f"Condition?code={HIV_CONDITION}&_summary=count", 0, id="count-diagnosis"),
        pytest.param("Patient?_summary=count", 1, id="count-patients"),
        pytest.param("Patient?family=Novak&_summary=count", 0, id="count-name-of-B"),
        pytest.param(f"Observation?code={HEART_RATE}&_count=3", A_HEART_RATES, id="search-code"),
        pytest.param(f"Condition?code={HIV_CONDITION}", 0, id="search-diagnosis"),
    ],
)
async def test_s29_transaction_search_entries_are_narrowed_like_searches(
    url: str,
    at_most: int,
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    judge: Judge,
) -> None:
    """A GET inside a transaction is a search like any other: narrowed to the patient before it
    reaches the upstream, so neither its entries nor its ``total`` count other patients."""
    transaction = _bundle("transaction", _get(url))
    reply = await call(amelia, "POST", gateway.fhir, body=transaction, headers=JSON)
    body = judge.nothing_of_others(reply, at_most=at_most)
    if reply.status == 200:
        nested = body["entry"][0].get("resource") or {}
        assert nested.get("total", 0) <= at_most, nested
        if "_summary=count" in url and "total" in nested:
            assert nested["total"] == at_most, f"a wrong count: {nested['total']} for {at_most}"


# --- writes touching another patient ------------------------------------------------------------


async def test_s26_create_for_another_patient_is_refused(
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    for subject in (
        f"Patient/{_B}",
        f"{gateway.fhir}/Patient/{_B}",
        f"https://x.example/Patient/{_B}",
    ):
        marker = uuid.uuid4().hex
        body = _observation(A, marker) | {"subject": {"reference": subject}}
        reply = await call(
            amelia_writer, "POST", f"{gateway.fhir}/Observation", body=body, headers=JSON
        )
        judge.nothing_of_others(reply)
        _forbidden(reply)
        assert await _written(http, clean_upstream, marker) == 0


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"performer": [{"reference": f"Patient/{_B}"}]}, id="performer-B"),
        pytest.param({"focus": [{"reference": f"Patient/{_B}"}]}, id="focus-B"),
        pytest.param(
            {
                "contained": [
                    {
                        "resourceType": "Patient",
                        "id": "p",
                        "link": [{"other": {"reference": f"Patient/{_B}"}, "type": "seealso"}],
                    }
                ]
            },
            id="contained-naming-B",
        ),
        pytest.param(
            {
                "performer": [
                    {"reference": "Patient?identifier=https://hospital.example.org/mrn|MRN-100102"}
                ]
            },
            id="conditional-reference-to-B",
        ),
    ],
)
async def test_s26_create_naming_another_patient_is_refused(
    extra: dict[str, Any],
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    """A reference a server resolves on write (a conditional ``Patient?identifier=...`` in a
    transaction) names a patient just as ``Patient/<id>`` does."""
    marker = uuid.uuid4().hex
    transaction = _bundle("transaction", _post(_observation(A, marker, **extra)))
    reply = await call(amelia_writer, "POST", gateway.fhir, body=transaction, headers=JSON)
    judge.nothing_of_others(reply)
    _forbidden(reply)
    assert await _written(http, clean_upstream, marker) == 0


async def test_s26_update_delete_patch_of_another_patients_resource_are_404(
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    path = "Observation/obs-daniel-novak-1"
    before = (await upstream_get(http, clean_upstream, path)).body
    mine = _observation(A, uuid.uuid4().hex) | {"id": "obs-daniel-novak-1"}
    patch = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    attempts = [
        await call(amelia_writer, "PUT", f"{gateway.fhir}/{path}", body=mine, headers=JSON),
        await call(
            amelia_writer, "PATCH", f"{gateway.fhir}/{path}", body=patch, headers=JSON_PATCH
        ),
        await call(amelia_writer, "DELETE", f"{gateway.fhir}/{path}"),
        await call(amelia_writer, "DELETE", f"{gateway.fhir}/Patient/{_B}"),
    ]
    missing = await call(amelia_writer, "DELETE", f"{gateway.fhir}/Observation/no-such-obs-1")
    for reply in attempts:
        judge.nothing_of_others(reply)
        assert (reply.status, reply.raw) == (404, missing.raw), (reply.status, reply.raw[:300])
    after = await upstream_get(http, clean_upstream, path)
    assert after.status == 200 and after.body == before
    assert (await upstream_get(http, clean_upstream, f"Patient/{_B}")).status == 200


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param(
            [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{_B}"}],
            id="subject-to-B",
        ),
        pytest.param(
            [{"op": "add", "path": "/performer/-", "value": {"reference": f"Patient/{_B}"}}],
            id="add-performer-B",
        ),
        pytest.param(
            [{"op": "replace", "path": "/id", "value": "obs-daniel-novak-3"}],
            id="id-to-Bs-observation",
        ),
        pytest.param(
            [
                {"op": "copy", "from": "/subject", "path": "/focus"},
                {"op": "replace", "path": "/subject/reference", "value": f"Patient/{_B}"},
            ],
            id="copy-then-move",
        ),
    ],
)
async def test_s26_json_patch_moving_own_observation_to_another_patient_is_refused(
    patch: list[dict[str, Any]],
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    own, theirs = "Observation/obs-amelia-rossi-3", "Observation/obs-daniel-novak-3"
    own_before = (await upstream_get(http, clean_upstream, own)).body
    theirs_before = (await upstream_get(http, clean_upstream, theirs)).body
    reply = await call(
        amelia_writer, "PATCH", f"{gateway.fhir}/{own}", body=patch, headers=JSON_PATCH
    )
    theirs_after = (await upstream_get(http, clean_upstream, theirs)).body
    assert theirs_after == theirs_before, f"B's Observation was overwritten: {theirs_after}"
    assert (await upstream_get(http, clean_upstream, own)).body == own_before
    judge.nothing_of_others(reply)
    assert 400 <= reply.status < 500, (reply.status, reply.raw[:300])


async def test_s26_update_moving_own_observation_to_another_patient_is_refused(
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    path = "Observation/obs-amelia-rossi-3"
    before = (await upstream_get(http, clean_upstream, path)).body
    moved = copy.deepcopy(before)
    moved["subject"] = {"reference": f"Patient/{_B}"}
    moved.pop("meta")
    reply = await call(amelia_writer, "PUT", f"{gateway.fhir}/{path}", body=moved, headers=JSON)
    judge.nothing_of_others(reply)
    _forbidden(reply)
    assert (await upstream_get(http, clean_upstream, path)).body == before


async def test_p08_patient_token_cannot_create_a_patient_record(
    gateway: RunningGateway,
    amelia_writer: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
) -> None:
    """A patient writes inside their own compartment: a create of a Patient makes a new record
    with a new id (the server ignores the body's id), which is nobody's compartment the token
    reaches."""
    family = f"Leaksuite{uuid.uuid4().hex[:8]}"
    body = {"resourceType": "Patient", "id": A, "name": [{"family": family}]}
    reply = await call(amelia_writer, "POST", f"{gateway.fhir}/Patient", body=body, headers=JSON)
    found = await upstream_get(http, clean_upstream, f"Patient?family={family}")
    assert found.body.get("entry", []) == [], f"a new Patient was created ({reply.status})"
    assert reply.status == 403


# --- contained resources ------------------------------------------------------------------------

CONTAINED = [
    (
        "condition-of-B",
        {"resourceType": "Condition", "id": "c", "subject": {"reference": f"Patient/{_B}"}},
    ),
    ("patient-copy", {"resourceType": "Patient", "id": "c", "name": [{"family": "Novak"}]}),
    (
        "related-person-of-B",
        {"resourceType": "RelatedPerson", "id": "c", "patient": {"reference": f"Patient/{_B}"}},
    ),
    (
        "device-of-B",
        {"resourceType": "Device", "id": "c", "patient": {"reference": f"Patient/{_B}"}},
    ),
    (
        "linkage-to-B",
        {
            "resourceType": "Linkage",
            "id": "c",
            "item": [{"type": "source", "resource": {"reference": f"Patient/{_B}"}}],
        },
    ),
    (
        "observation-focus-B",
        {
            "resourceType": "Observation",
            "id": "c",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{A}"},
            "focus": [{"reference": f"Patient/{_B}"}],
        },
    ),
]


@pytest.mark.parametrize("contained", [pytest.param(c, id=i) for i, c in CONTAINED])
async def test_s26_contained_resource_pointing_at_another_patient_is_withheld(
    contained: dict[str, Any],
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    """An Observation of A, written straight into the upstream, that contains a resource pointing
    at B: A reads the Observation, never what it contains about B."""
    own = {
        "resourceType": "Observation",
        "id": "obs-amelia-contained",
        "status": "final",
        "code": {"text": "contained probe"},
        "subject": {"reference": f"Patient/{A}"},
        "contained": [
            contained,
            {"resourceType": "Practitioner", "id": "kept", "name": [{"family": "Kept"}]},
        ],
        "performer": [{"reference": "#kept"}],
        "focus": [{"reference": "#c"}],
    }
    async with http.put(
        f"{clean_upstream.upstream.base_url}/Observation/obs-amelia-contained",
        data=orjson.dumps(own),
        headers=JSON,
    ) as response:
        assert response.status in (200, 201), await response.text()
    for url in (
        f"{gateway.fhir}/Observation/obs-amelia-contained",
        f"{gateway.fhir}/Observation?_id=obs-amelia-contained",
        f"{gateway.fhir}/Patient/{A}/Observation?_id=obs-amelia-contained",
    ):
        reply = await call(amelia, "GET", url)
        body = judge.nothing_of_others(reply)
        assert reply.status == 200
        resource = body if body["resourceType"] == "Observation" else body["entry"][0]["resource"]
        assert resource["id"] == "obs-amelia-contained"
        assert [c["id"] for c in resource.get("contained", [])] == ["kept"]


async def test_resource_shared_with_another_patient_is_not_released(
    gateway: RunningGateway,
    amelia: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    clean_upstream: Stack,
    judge: Judge,
) -> None:
    """A's Observation whose performer is patient B lies in both compartments. The rule of this
    suite is that nothing naming B reaches A. (If the project decides that a
    resource in A's compartment is A's whatever else it names, this test is the one to change.)"""
    shared = {
        "resourceType": "Observation",
        "id": "obs-amelia-shared",
        "status": "final",
        "code": {"text": "measured by another patient"},
        "subject": {"reference": f"Patient/{A}"},
        "performer": [{"reference": f"Patient/{_B}"}],
    }
    async with http.put(
        f"{clean_upstream.upstream.base_url}/Observation/obs-amelia-shared",
        data=orjson.dumps(shared),
        headers=JSON,
    ) as response:
        assert response.status in (200, 201)
    reply = await call(amelia, "GET", f"{gateway.fhir}/Observation/obs-amelia-shared")
    judge.nothing_of_others(reply)


# --- who may see whom: a parent, a practitioner, a token without a patient ----------------------


async def test_p08_parent_sees_her_child_and_nobody_else(
    gateway: RunningGateway, session_for: SessionFor, local_stack_env: Stack
) -> None:
    from tests.support.tokens import MARIA as MARIA_USER
    from tests.support.tokens import ensure_user

    maria = await session_for(
        scope="patient/*.rs",
        user_id=await ensure_user(gateway, MARIA_USER),  # her account links her to Leo (C-25)
        fhir_user=f"Patient/{MARIA}",
        patient=MARIA,
        acts_for=(MARIA, LEO),
    )
    judge = Judge(
        gateway.fhir,
        local_stack_env.upstream.base_url,
        others=tuple(p for p in PATIENTS if p not in (MARIA, LEO)),
    )
    for path in (
        f"Patient/{LEO}",
        "RelatedPerson/relperson-maria-garcia",
        f"Patient/{LEO}/$everything",
    ):
        reply = await call(maria, "GET", f"{gateway.fhir}/{path}")
        judge.nothing_of_others(reply)
        assert reply.status == 200, path
    reply = await call(maria, "GET", f"{gateway.fhir}/Observation?_count=200")
    body = judge.nothing_of_others(reply)
    owners = {e["resource"]["subject"]["reference"] for e in body["entry"]}
    assert owners == {f"Patient/{MARIA}", f"Patient/{LEO}"}
    assert len(body["entry"]) == len(of(MARIA, "Observation")) + len(of(LEO, "Observation"))
    for path in (f"Patient/{A}", "Observation/obs-amelia-rossi-1"):
        reply = await call(maria, "GET", f"{gateway.fhir}/{path}")
        judge.nothing_of_others(reply)
        assert reply.status == 404, path
    for path in (f"Observation?patient={A}", f"Patient?_id={LEO},{A}", f"Patient/{A}/$everything"):
        reply = await call(maria, "GET", f"{gateway.fhir}/{path}")
        judge.nothing_of_others(reply)
        _forbidden(reply)


async def test_practitioner_user_scope_sees_across_patients_control(
    gateway: RunningGateway, session_for: SessionFor
) -> None:
    """A control, not a leak: a user/ token of a practitioner is not limited to one patient."""
    hannah = await session_for(
        scope="user/*.rs",
        user_id="hannah",
        fhir_user="Practitioner/prac-hannah-okafor",
        patient=None,
        acts_for=(),
    )
    reply = await call(hannah, "GET", f"{gateway.fhir}/Observation?patient={_B}&_count=100")
    assert reply.status == 200
    assert len(reply.body["entry"]) == len(of(_B, "Observation"))
    assert (await call(hannah, "GET", f"{gateway.fhir}/Patient/{_B}")).status == 200
    reply = await call(hannah, "GET", f"{gateway.fhir}/Patient?_count=100")
    assert {e["resource"]["id"] for e in reply.body["entry"]} >= set(PATIENTS)


async def test_s26_patient_scopes_without_a_patient_in_context_are_refused(
    gateway: RunningGateway, session_for: SessionFor, judge: Judge
) -> None:
    nobody = await session_for(scope="patient/*.rs", patient=None, acts_for=())
    for path in ("Observation", f"Patient/{A}", f"Patient/{A}/$everything", "Patient"):
        reply = await call(nobody, "GET", f"{gateway.fhir}/{path}")
        judge.nothing_of_others(reply)
        _forbidden(reply)


async def test_s26_own_searches_by_practitioner_still_work(
    gateway: RunningGateway, amelia: aiohttp.ClientSession, judge: Judge
) -> None:
    """Refusing what could reach other patients must not refuse what cannot: a reference parameter
    that names a Practitioner only narrows A's own results."""
    reply = await call(
        amelia, "GET", f"{gateway.fhir}/Observation?performer=Practitioner/prac-hannah-okafor"
    )
    judge.nothing_of_others(reply)
    assert reply.status == 200, reply.raw[:300]
