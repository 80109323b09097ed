"""Narrow before, check after, unit by unit: :func:`gateway.fhir.narrowing.narrow_search`,
:func:`gateway.fhir.access.authorize` and :class:`gateway.fhir.access.AccessPolicy` with hand-built
access contexts and the fixture resources (SMART.md S-26 … S-29; DESIGN.md "Rules that make the
pipeline safe")."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.fhir.access import READ, SEARCH, SEE, AccessPolicy, authorize
from gateway.fhir.compartment import patients_of
from gateway.fhir.context import AccessContext
from gateway.fhir.interaction import FhirInteraction, parse
from gateway.fhir.narrowing import narrow_search
from gateway.web.errors import Forbidden
from smart_auth.scopes import ScopeSet

DATA_DIR = Path(__file__).resolve().parents[3] / "fixtures" / "data"

A = "pat-amelia-rossi"
B = "pat-daniel-novak"
LEO = "pat-leo-garcia"
MARIA = "pat-maria-garcia"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
LABS = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def _resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DATA_DIR.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        out.extend(entry["resource"] for entry in bundle["entry"])
    return out


RESOURCES = _resources()
BY_ID = {(r["resourceType"], r["id"]): r for r in RESOURCES}


def resource(rtype: str, rid: str) -> dict[str, Any]:
    return json.loads(json.dumps(BY_ID[(rtype, rid)]))


def context(
    scope: str,
    patient: str | None = A,
    acts_for: tuple[str, ...] | None = None,
) -> AccessContext:
    return AccessContext(
        issuer="https://gateway.example",
        subject="user-1",
        client_id="app-1",
        scopes=ScopeSet.parse(scope),
        jti="jti-1",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        patient=patient,
        acts_for=frozenset(acts_for if acts_for is not None else ((patient,) if patient else ())),
        fhir_user=f"Patient/{patient}" if patient else "Practitioner/prac-hannah-okafor",
    )


AMELIA = context("patient/*.rs")
AMELIA_WRITER = context("patient/*.cruds")
MARIA_CTX = context("patient/*.rs", patient=MARIA, acts_for=(MARIA, LEO))
NO_PATIENT = context("patient/*.rs", patient=None)
VITALS_ONLY = context(f"patient/Observation.rs?category={VITALS}")
VITALS_OR_LABS = context(
    f"patient/Observation.rs?category={VITALS} patient/Observation.rs?category={LABS}"
)
VITALS_AND_ALL = context(f"patient/Observation.rs?category={VITALS} patient/Observation.rs")
PRACTITIONER = context("user/*.rs", patient=None)
SEARCH_ONLY = context("patient/Observation.s")
ALLOWED = frozenset({A})


def search(path: str, *query: tuple[str, str]) -> FhirInteraction:
    return parse("GET", path, query)


# --- narrow_search: the constraint ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtype", "param"),
    [
        ("Observation", "patient"),
        ("Condition", "patient"),
        ("Encounter", "patient"),
        ("MedicationRequest", "patient"),
        ("AllergyIntolerance", "patient"),
        ("Immunization", "patient"),
        ("DocumentReference", "patient"),
        ("RelatedPerson", "patient"),
    ],
)
def test_s26_constraint_is_added_to_every_compartment_type(rtype: str, param: str) -> None:
    assert narrow_search([("code", "x")], rtype, ALLOWED) == [
        ("code", "x"),
        (param, f"Patient/{A}"),
    ]


def test_s26_patient_search_is_limited_by_id() -> None:
    assert narrow_search([("family", "Rossi")], "Patient", ALLOWED) == [
        ("family", "Rossi"),
        ("_id", A),
    ]


def test_s26_constraint_names_every_patient_the_token_reaches_and_no_other() -> None:
    kept = narrow_search([], "Observation", frozenset({MARIA, LEO}))
    assert kept == [("patient", f"Patient/{LEO},Patient/{MARIA}")]
    assert narrow_search([], "Patient", frozenset({MARIA, LEO})) == [("_id", f"{LEO},{MARIA}")]


def test_s26_the_callers_own_constraint_word_for_word_is_sent_once() -> None:
    """``patient=Patient/<own id>`` is the constraint itself: the upstream is not asked to apply
    the same filter twice. Any other form of it (a bare id, a modifier, another order of a list,
    one patient of several) still gets the constraint beside it."""
    own = [("_count", "1000"), ("patient", f"Patient/{A}")]
    assert narrow_search(own, "Observation", ALLOWED) == own
    assert narrow_search([("_id", A)], "Patient", ALLOWED) == [("_id", A)]
    for caller in ([("patient", A)], [("patient:Patient", f"Patient/{A}")]):
        assert narrow_search(caller, "Observation", ALLOWED) == [
            *caller,
            ("patient", f"Patient/{A}"),
        ]
    family = frozenset({MARIA, LEO})
    for caller in (
        [("patient", f"Patient/{LEO}")],
        [("patient", f"Patient/{MARIA},Patient/{LEO}")],
    ):
        assert narrow_search(caller, "Observation", family) == [
            *caller,
            ("patient", f"Patient/{LEO},Patient/{MARIA}"),
        ]


def test_s26_compartment_search_is_checked_without_a_second_constraint() -> None:
    params = [("code", "8867-4"), ("patient", A)]
    assert narrow_search(params, "Observation", ALLOWED, add_constraint=False) == params
    with pytest.raises(Forbidden):
        narrow_search([("subject", f"Patient/{B}")], "Observation", ALLOWED, add_constraint=False)


@pytest.mark.parametrize("rtype", ["Device", "Binary", "Linkage", "Bundle", "Subscription"])
def test_s26_types_the_constraint_cannot_limit_are_refused(rtype: str) -> None:
    with pytest.raises(Forbidden):
        narrow_search([], rtype, ALLOWED)


@pytest.mark.parametrize(("rtype", "param"), [("Group", "member"), ("Person", "patient")])
def test_s26_other_compartment_types_are_limited_by_their_own_parameter(
    rtype: str, param: str
) -> None:
    assert narrow_search([], rtype, ALLOWED) == [(param, f"Patient/{A}")]


# --- narrow_search: what passes unchanged --------------------------------------------------------

ORDINARY = [
    ("code", "http://loinc.org|8867-4"),
    ("category", "vital-signs"),
    ("date", "ge2021-01-01"),
    ("status", "final"),
    ("_id", "obs-daniel-novak-1"),  # an Observation id only narrows: the constraint still holds
    ("_lastUpdated", "gt2020"),
    ("_include", "Observation:subject"),
    ("_include:iterate", "Encounter:subject"),
    ("_revinclude", "Provenance:target"),
    ("_count", "2"),
    ("_sort", "-date"),
    ("_elements", "id"),
    ("_summary", "true"),
    ("patient", A),
    ("patient", f"Patient/{A}"),
    ("subject", f"https://gateway.example/fhir/Patient/{A}"),
    ("subject:Patient", A),
    ("encounter", "Encounter/enc-amelia-rossi-1"),
    ("unknown-parameter", "x"),  # the upstream refuses it; the constraint is added anyway
]


@pytest.mark.parametrize(("name", "value"), ORDINARY, ids=[f"{n}={v}" for n, v in ORDINARY])
def test_s26_ordinary_parameters_pass_and_the_constraint_is_added(name: str, value: str) -> None:
    kept = narrow_search([(name, value)], "Observation", ALLOWED)
    constraint = ("patient", f"Patient/{A}")
    assert kept == [(name, value)] + ([constraint] if (name, value) != constraint else [])


def test_s26_a_reference_to_a_practitioner_only_narrows() -> None:
    """``performer`` can point at a Patient, but a Practitioner value cannot reach one."""
    kept = narrow_search([("performer", "Practitioner/prac-hannah-okafor")], "Observation", ALLOWED)
    assert kept[0] == ("performer", "Practitioner/prac-hannah-okafor")


# --- narrow_search: every refusal ----------------------------------------------------------------

REFUSED: list[tuple[str, str, str]] = [
    # (resource type, name, value)
    ("Observation", "patient", B),
    ("Observation", "patient", f"Patient/{B}"),
    ("Observation", "patient", f"http://elsewhere.example/fhir/Patient/{B}"),
    ("Observation", "subject", f"Patient/{B}"),
    ("Observation", "subject:Patient", B),
    ("Observation", "subject:Group", "g-1"),
    ("Observation", "subject:missing", "true"),
    ("Observation", "patient:missing", "false"),
    ("Observation", "patient:identifier", "https://hospital.example.org/mrn|MRN-100102"),
    ("Observation", "patient:not", A),
    ("Observation", "subject:above", f"Patient/{B}"),
    ("Observation", "subject:Patient.name", "Novak"),
    ("Observation", "subject.name", "Novak"),
    ("Observation", "patient.identifier", "MRN-100102"),
    ("Observation", "encounter.subject", f"Patient/{B}"),
    ("Observation", "performer", f"Patient/{B}"),
    ("Observation", "performer", B),
    ("Observation", "focus", f"Patient/{B}"),
    ("Observation", "patient", f"{A},{B}"),
    ("Observation", "subject", f"Patient/{A},Patient/{B}"),
    ("Observation", "patient", f"Patient/{B}/_history/1"),
    ("Observation", "PATIENT", B),
    ("Observation", "PATIENT", A),
    ("Observation", "Subject", f"Patient/{A}"),
    ("Observation", "Code", "8867-4"),
    ("Observation", "_has:Observation:derived-from:patient", B),
    ("Observation", "_HAS:Observation:derived-from:patient", A),
    ("Observation", "_type", "Patient"),
    ("Observation", "_filter", f"subject eq Patient/{B}"),
    ("Observation", "_FILTER", "x"),
    ("Observation", "_list", "l-1"),
    ("Observation", "_query", "q"),
    ("Observation", "_contained", "true"),
    ("Observation", "_containedType", "contained"),
    ("Patient", "_id", B),
    ("Patient", "_id", f"{A},{B}"),
    ("Patient", "_id:not", A),
    ("Patient", "_ID", B),
    ("Patient", "link", f"Patient/{B}"),
    ("Patient", "_has:Condition:subject:code", "86406008"),
    ("Condition", "subject", B),
    ("Condition", "asserter", f"Patient/{B}"),
    ("Encounter", "patient", B),
    ("Encounter", "subject", f"Patient/{B}"),
    ("RelatedPerson", "patient", LEO),
    ("DocumentReference", "author", f"Patient/{B}"),
    ("MedicationRequest", "requester", f"Patient/{B}"),
    ("AllergyIntolerance", "recorder", f"Patient/{B}"),
    ("Immunization", "patient", f"{A},{B}"),
]


@pytest.mark.parametrize(
    ("rtype", "name", "value"), REFUSED, ids=[f"{t}?{n}={v}" for t, n, v in REFUSED]
)
def test_s26_escape_parameters_are_refused(rtype: str, name: str, value: str) -> None:
    with pytest.raises(Forbidden):
        narrow_search([(name, value)], rtype, ALLOWED)


def test_s26_a_repeated_parameter_is_checked_each_time() -> None:
    with pytest.raises(Forbidden):
        narrow_search([("patient", A), ("patient", B)], "Observation", ALLOWED)


def test_p08_a_parent_may_name_her_child_but_nobody_else() -> None:
    allowed = frozenset({MARIA, LEO})
    kept = narrow_search([("patient", f"{LEO},{MARIA}")], "Observation", allowed)
    assert kept[0] == ("patient", f"{LEO},{MARIA}")
    with pytest.raises(Forbidden):
        narrow_search([("patient", f"{LEO},{A}")], "Observation", allowed)


# --- authorize -----------------------------------------------------------------------------------


def test_s26_type_search_is_narrowed_and_judged_by_search_letters() -> None:
    decision = authorize(AMELIA, search("Observation", ("code", "8867-4")))
    assert decision.interaction.params == (("code", "8867-4"), ("patient", f"Patient/{A}"))
    assert decision.letters == SEARCH
    assert decision.patient_only and not decision.restricted


def test_s26_post_search_form_is_narrowed_like_a_query() -> None:
    interaction = parse("POST", "Observation/_search", (), [("patient", B)])
    with pytest.raises(Forbidden):
        authorize(AMELIA, interaction)
    interaction = parse("POST", "Observation/_search", (), [("code", "x")])
    assert authorize(AMELIA, interaction).interaction.params[-1] == ("patient", f"Patient/{A}")


def test_s26_compartment_search_of_another_patient_is_refused() -> None:
    with pytest.raises(Forbidden):
        authorize(AMELIA, search(f"Patient/{B}/Observation"))
    decision = authorize(AMELIA, search(f"Patient/{A}/Observation", ("code", "x")))
    assert decision.interaction.params == (("code", "x"),)
    with pytest.raises(Forbidden):
        authorize(AMELIA, search(f"Patient/{A}/Observation", ("subject", f"Patient/{B}")))


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "", [("_type", "Observation")]),
        ("GET", "", []),
        ("GET", "_history", []),
        ("GET", "Observation/_history", []),
        ("GET", "Patient/_history", []),
        ("GET", f"Patient/{B}/$everything", []),
        ("POST", "_search", []),
    ],
    ids=["system-search", "system-search-bare", "system-history", "type-history-observation",
         "type-history-patient", "everything-of-B", "system-post-search"],
)  # fmt: skip
def test_s26_interactions_beyond_one_compartment_are_refused(
    method: str, path: str, query: list[tuple[str, str]]
) -> None:
    with pytest.raises(Forbidden):
        authorize(AMELIA, parse(method, path, query))


def test_s26_everything_of_own_record_and_of_a_child_are_allowed() -> None:
    assert authorize(AMELIA, parse("GET", f"Patient/{A}/$everything")).patient_only
    assert authorize(MARIA_CTX, parse("GET", f"Patient/{LEO}/$everything")).patient_only
    with pytest.raises(Forbidden):
        authorize(MARIA_CTX, parse("GET", f"Patient/{A}/$everything"))


@pytest.mark.parametrize(
    "path",
    ["Observation", f"Patient/{A}", "Observation/obs-amelia-rossi-1", f"Patient/{A}/Observation"],
)
def test_s26_patient_scopes_without_a_patient_in_context_are_refused(path: str) -> None:
    with pytest.raises(Forbidden):
        authorize(NO_PATIENT, parse("GET", path))


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("Practitioner/prac-hannah-okafor", True),
        ("Organization/org-riverside-general", True),
        ("Binary/bin-1", True),  # judged by its securityContext once fetched
        ("Device/dev-1", False),
        ("Linkage/l-1", False),
        ("Bundle/b-1", False),
        ("Subscription/s-1", False),
    ],
)
def test_s26_patient_tokens_read_compartment_and_directory_types_only(
    path: str, allowed: bool
) -> None:
    if allowed:
        authorize(AMELIA, parse("GET", path))
    else:
        with pytest.raises(Forbidden):
            authorize(AMELIA, parse("GET", path))


@pytest.mark.parametrize(
    "query",
    [
        ("_has:Encounter:practitioner:patient", B),
        ("_filter", "name eq Okafor"),
        ("_type", "Patient"),
        ("_list", "l-1"),
        ("_query", "q"),
        ("_contained", "true"),
    ],
    ids=lambda q: q[0] if isinstance(q, tuple) else str(q),
)
def test_s26_escape_parameters_on_directory_types_are_refused_too(
    query: tuple[str, str],
) -> None:
    """DESIGN.md: the parameters that widen or reshape a result are refused (or handled) — for a
    Practitioner search as for an Observation search: a reverse chain from a directory type tests
    facts about patients' records."""
    with pytest.raises(Forbidden):
        authorize(AMELIA, search("Practitioner", query))


def test_s26_scope_letters_and_types_are_enforced() -> None:
    with pytest.raises(Forbidden):
        authorize(AMELIA, parse("POST", "Observation"))
    with pytest.raises(Forbidden):
        authorize(VITALS_ONLY, parse("GET", "Condition"))
    with pytest.raises(Forbidden):
        authorize(SEARCH_ONLY, parse("GET", "Observation/obs-amelia-rossi-1"))
    assert authorize(SEARCH_ONLY, parse("GET", "Observation")).letters == SEARCH
    assert authorize(AMELIA, parse("GET", "Observation/obs-amelia-rossi-1")).letters == READ


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "Observation", True),
        ("PUT", "Observation/obs-amelia-rossi-1", True),
        ("PATCH", "Observation/obs-amelia-rossi-1", True),
        ("DELETE", "Observation/obs-amelia-rossi-1", True),
        ("POST", "Practitioner", False),
        ("POST", "Organization", False),
        ("POST", "Device", False),
        ("PUT", "Linkage/l-1", False),
    ],
)
def test_s26_patient_tokens_write_compartment_types_only(
    method: str, path: str, allowed: bool
) -> None:
    interaction = parse(method, path)
    if allowed:
        assert authorize(AMELIA_WRITER, interaction).patient_only
    else:
        with pytest.raises(Forbidden):
            authorize(AMELIA_WRITER, interaction)


def test_user_scopes_are_not_narrowed_control() -> None:
    decision = authorize(PRACTITIONER, search("Observation", ("patient", B)))
    assert decision.interaction.params == (("patient", B),)
    assert not decision.patient_only
    assert authorize(PRACTITIONER, search("", ("_type", "Observation"))).letters == SEARCH


# --- granular scopes (S-28) ----------------------------------------------------------------------


def test_s28_one_granular_scope_adds_its_restriction_upstream() -> None:
    decision = authorize(VITALS_ONLY, search("Observation", ("code", "8867-4")))
    assert decision.interaction.params == (
        ("code", "8867-4"),
        ("patient", f"Patient/{A}"),
        ("category", VITALS),
    )
    assert decision.restricted


def test_s28_several_granular_scopes_are_an_or_filtered_after() -> None:
    decision = authorize(VITALS_OR_LABS, search("Observation"))
    assert decision.interaction.params == (("patient", f"Patient/{A}"),)
    assert decision.restricted  # every resource released is checked against both


def test_s28_an_unrestricted_scope_beside_a_granular_one_wins() -> None:
    decision = authorize(VITALS_AND_ALL, search("Observation"))
    assert decision.interaction.params == (("patient", f"Patient/{A}"),)  # nothing added


def test_s28_a_granular_restriction_does_not_bypass_the_narrowing() -> None:
    with pytest.raises(Forbidden):
        authorize(VITALS_ONLY, search("Observation", ("patient", B)))


def test_s28_policy_releases_what_the_restriction_matches_only() -> None:
    policy = AccessPolicy(VITALS_ONLY)
    assert policy.permits(resource("Observation", "obs-amelia-rossi-1"))
    assert not policy.permits(resource("Observation", "obs-amelia-rossi-17"))
    assert not policy.permits(resource("Observation", "obs-daniel-novak-1"))
    assert not policy.permits(resource("Patient", A))
    either = AccessPolicy(VITALS_OR_LABS)
    assert either.permits(resource("Observation", "obs-amelia-rossi-17"))
    assert not either.permits(resource("Observation", "obs-samuel-reed-13"))  # survey


def test_s28_a_restriction_that_cannot_be_evaluated_never_widens() -> None:
    odd = AccessPolicy(context("patient/Observation.rs?value-quantity=gt50"))
    assert not odd.permits(resource("Observation", "obs-amelia-rossi-1"))
    unknown = AccessPolicy(context("patient/Observation.rs?no-such-param=x"))
    assert not unknown.permits(resource("Observation", "obs-amelia-rossi-1"))


def test_s28_restriction_without_system_matches_the_code() -> None:
    policy = AccessPolicy(context("patient/Observation.rs?category=laboratory"))
    assert policy.permits(resource("Observation", "obs-amelia-rossi-17"))
    assert not policy.permits(resource("Observation", "obs-amelia-rossi-1"))


# --- AccessPolicy over every fixture resource -----------------------------------------------------

PATIENT_DATA = [r for r in RESOURCES if patients_of(r)]


@pytest.mark.parametrize(
    "item", PATIENT_DATA, ids=[f"{r['resourceType']}/{r['id']}" for r in PATIENT_DATA]
)
def test_s26_policy_releases_exactly_the_tokens_patients_data(item: dict[str, Any]) -> None:
    owners = patients_of(item)
    assert AccessPolicy(AMELIA).permits(item) == (A in owners)
    assert AccessPolicy(MARIA_CTX).permits(item) == bool(owners & {MARIA, LEO})
    assert AccessPolicy(PRACTITIONER).permits(item)
    assert not AccessPolicy(NO_PATIENT).permits(item)


def test_s26_policy_letters_must_match() -> None:
    own = resource("Observation", "obs-amelia-rossi-1")
    assert AccessPolicy(SEARCH_ONLY).permits(own, SEARCH)
    assert not AccessPolicy(SEARCH_ONLY).permits(own, READ)
    assert not AccessPolicy(AMELIA).permits(own, frozenset({"c"}))


def test_s26_directory_resources_are_released_to_patient_tokens() -> None:
    policy = AccessPolicy(AMELIA)
    for rtype, rid in (
        ("Practitioner", "prac-hannah-okafor"),
        ("Organization", "org-riverside-general"),
        ("PractitionerRole", next(i for t, i in BY_ID if t == "PractitionerRole")),
    ):
        assert policy.permits(resource(rtype, rid)), rtype


def test_s26_resource_without_a_type_is_never_released() -> None:
    assert not AccessPolicy(PRACTITIONER).permits({"id": "x"})


def test_s26_binary_follows_its_security_context() -> None:
    policy = AccessPolicy(AMELIA)
    own = {"resourceType": "Binary", "id": "b", "securityContext": {"reference": f"Patient/{A}"}}
    theirs = {"resourceType": "Binary", "id": "b", "securityContext": {"reference": f"Patient/{B}"}}
    nothing = {"resourceType": "Binary", "id": "b"}
    assert policy.permits(own)
    assert not policy.permits(theirs)
    assert not policy.permits(nothing)


def test_s26_bodiless_history_entries_need_an_unrestricted_user_scope() -> None:
    restricted = context("user/Observation.rs?category=laboratory", patient=None)
    assert not AccessPolicy(AMELIA).permits_bodiless("Observation", SEE)
    assert not AccessPolicy(restricted).permits_bodiless("Observation", SEE)
    assert AccessPolicy(PRACTITIONER).permits_bodiless("Observation", SEE)


# --- contained resources -------------------------------------------------------------------------


def _to(patient: str, base: str = "") -> dict[str, str]:
    return {"reference": f"{base}Patient/{patient}"}


CONTAINED_REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("condition-of-B", {"resourceType": "Condition", "id": "c", "subject": _to(B)}),
    ("patient-copy", {"resourceType": "Patient", "id": "c"}),
    ("own-patient-copy", {"resourceType": "Patient", "id": A}),
    ("related-person-of-B", {"resourceType": "RelatedPerson", "id": "c", "patient": _to(B)}),
    (
        "encounter-of-B-absolute",
        {"resourceType": "Encounter", "id": "c", "subject": _to(B, "https://x.example/fhir/")},
    ),
    ("device-of-B", {"resourceType": "Device", "id": "c", "patient": _to(B)}),
    (
        "linkage-to-B",
        {"resourceType": "Linkage", "id": "c", "item": [{"type": "source", "resource": _to(B)}]},
    ),
    (
        "observation-focus-B",
        {"resourceType": "Observation", "id": "c", "subject": _to(A), "focus": [_to(B)]},
    ),
    ("no-type", {"id": "c"}),
]


@pytest.mark.parametrize("contained", [pytest.param(c, id=i) for i, c in CONTAINED_REFUSED])
def test_s26_contained_resource_pointing_at_another_patient_is_withheld(
    contained: dict[str, Any],
) -> None:
    """AccessPolicy.permits_contained: a contained resource "may not point at a patient the token
    does not reach" — whatever element points there, whatever type contains the reference."""
    assert not AccessPolicy(AMELIA).permits_contained(contained, SEE)


@pytest.mark.parametrize(
    "contained",
    [
        {"resourceType": "Practitioner", "id": "c", "name": [{"family": "Kept"}]},
        {"resourceType": "Medication", "id": "c"},
        {"resourceType": "Condition", "id": "c", "subject": {"reference": f"Patient/{A}"}},
    ],
    ids=["practitioner", "medication", "own-condition"],
)
def test_s26_contained_resources_of_the_patient_or_the_directory_are_kept(
    contained: dict[str, Any],
) -> None:
    assert AccessPolicy(AMELIA).permits_contained(contained, SEE)


def test_s26_contained_resource_of_an_uncovered_type_is_withheld() -> None:
    assert not AccessPolicy(VITALS_ONLY).permits_contained(
        {"resourceType": "Practitioner", "id": "c"}, SEE
    )


def test_s26_contained_patient_is_kept_for_a_user_scope_control() -> None:
    assert AccessPolicy(PRACTITIONER).permits_contained({"resourceType": "Patient", "id": "c"}, SEE)


def test_s26_a_contained_subject_does_not_put_a_resource_in_a_compartment() -> None:
    """An Observation whose subject is a contained Patient belongs to nobody the token reaches."""
    item = {
        "resourceType": "Observation",
        "id": "o",
        "contained": [{"resourceType": "Patient", "id": A}],
        "subject": {"reference": f"#{A}"},
    }
    assert not AccessPolicy(AMELIA).permits(item)
