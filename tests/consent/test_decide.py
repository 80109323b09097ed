"""The consent decision (CONSENT.md C-03 to C-11), driven by the decision table in
``fixtures/decision-table.json``, plus the properties a table cannot show."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import model
from consent.decide import (
    Basis,
    Decision,
    Evaluator,
    RequestAttributes,
    compile_consents,
    decide,
    decide_many,
)
from consent.errors import Unreleasable
from consent.mentions import without_mentions
from consent.minimise import PURPOSES, minimise
from tests.consent import crafted
from tests.consent.conftest import seed_resources
from tests.support import lookalikes

TABLE: dict[str, Any] = orjson.loads(
    (Path(__file__).parent / "fixtures" / "decision-table.json").read_bytes()
)
ROWS: list[dict[str, Any]] = TABLE["rows"]


def _consent(consent_id: str) -> dict[str, Any]:
    return {**TABLE["consent_defaults"], "id": consent_id, **TABLE["consents"][consent_id]}


def _request(row: dict[str, Any]) -> RequestAttributes:
    values = {**TABLE["request"], **row.get("request", {})}
    return RequestAttributes(
        patient_id=values["patient"],
        client_id=values["client"],
        now=datetime.fromisoformat(row.get("now", TABLE["now"])),
        actors=tuple(values["actors"]),
        purposes=tuple(values["purposes"]),
        trusted=values["trusted"],
        action=values["action"],
    )


def _resource(row: dict[str, Any]) -> dict[str, Any]:
    return {**TABLE["resources"][row["resource"]], **row.get("with", {})}


def _row_id(row: dict[str, Any]) -> str:
    return f"{row['rule']}:{row['id']}"


def test_table_is_large_and_its_ids_unique() -> None:
    assert len(ROWS) >= 40
    assert len({row["id"] for row in ROWS}) == len(ROWS)


def test_c01_every_table_consent_is_a_valid_consent() -> None:
    for consent_id in TABLE["consents"]:
        model.validate(_consent(consent_id))


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_decision_table(row: dict[str, Any]) -> None:
    consents = [_consent(consent_id) for consent_id in row["consents"]]
    decision = decide(consents, _request(row), _resource(row))
    expect = row["expect"]
    assert decision.permitted is (expect["decision"] == "permit"), decision.reason
    assert decision.basis == Basis(expect["basis"]), decision.reason
    assert decision.consent_id == expect.get("consent"), decision.reason
    assert decision.provision == expect.get("provision"), decision.reason
    if "purposes" in expect:
        assert list(decision.purposes) == expect["purposes"]
    if "labels" in expect:
        assert list(decision.labels) == expect["labels"]


def test_c11_reason_names_the_consent_and_provision() -> None:
    row = next(r for r in ROWS if r["id"] == "nested-deny-overrides-parent-permit")
    decision = decide([_consent(c) for c in row["consents"]], _request(row), _resource(row))
    assert "Consent/grant-except-conditions provision.provision[0]" in decision.reason


def test_c03_no_consent_reason_says_consent_is_missing() -> None:
    decision = decide([], _request({}), TABLE["resources"]["obs-1"])
    assert decision.basis is Basis.NO_CONSENT
    assert "no consent" in decision.reason


def test_c06_decision_is_evaluated_per_resource_and_order_of_consents_is_irrelevant() -> None:
    consents = [_consent("grant-app-a"), _consent("deny-instance-obs-1")]
    resources = list(TABLE["resources"].values())
    forward = decide_many(consents, _request({}), resources)
    backward = decide_many(list(reversed(consents)), _request({}), resources)
    assert [d.permitted for d in forward] == [d.permitted for d in backward]
    assert [d.permitted for d in forward] == [
        decide(consents, _request({}), r).permitted for r in resources
    ]


def test_c08_a_consent_that_cannot_be_read_denies_everything() -> None:
    broken = {**_consent("grant-app-a"), "provision": {"type": "permit", "actor": "not a list"}}
    decision = decide([_consent("grant-app-a"), broken], _request({}), TABLE["resources"]["obs-1"])
    assert not decision.permitted
    assert decision.basis is Basis.DENY


def test_c03_refusal_without_fetching_when_nothing_can_be_permitted() -> None:
    assert compile_consents([], _request({})).refusal() == Decision(
        permitted=False,
        basis=Basis.NO_CONSENT,
        reason="no consent: no active Consent of the patient permits this app",
    )
    assert compile_consents([_consent("grant-app-a")], _request({})).refusal() is None
    blanket = compile_consents([_consent("grant-app-a"), _consent("deny-app-a")], _request({}))
    refusal = blanket.refusal()
    assert refusal is not None and refusal.consent_id == "deny-app-a"
    # A deny about some resources only does not refuse the whole request.
    assert (
        compile_consents([_consent("grant-app-a"), _consent("deny-psy")], _request({})).refusal()
        is None
    )


def test_c04_trusted_client_is_refused_only_by_a_blanket_deny() -> None:
    trusted = _request({"request": {"trusted": True}})
    assert compile_consents([], trusted).refusal() is None
    assert compile_consents([_consent("deny-everyone")], trusted).refusal() is not None


def test_c05_app_grant_consent_decides_like_the_table_grant() -> None:
    grant = model.app_grant(
        "pat-1",
        "app-a",
        "App A",
        ["TREAT"],
        ["Observation", "Condition"],
        [],
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    grant["id"] = "granted"
    request = _request({})
    assert decide([grant], request, TABLE["resources"]["obs-1"]).permitted
    assert not decide([grant], request, TABLE["resources"]["medreq-1"]).permitted
    other_app = _request({"request": {"client": "app-b"}})
    assert not decide([grant], other_app, TABLE["resources"]["obs-1"]).permitted


def _observations(count: int) -> list[dict[str, Any]]:
    base = TABLE["resources"]
    kinds = [base["obs-1"], base["obs-2"], base["obs-phq9"], base["obs-hiv-unlabelled"]]
    return [{**kinds[i % len(kinds)], "id": f"obs-{i}"} for i in range(count)]


def test_c10_deciding_a_thousand_resources_is_fast() -> None:
    consents = [_consent("grant-psy"), _consent("deny-data-2020"), _consent("deny-instance-obs-1")]
    resources = _observations(1000)
    request = _request({})
    decide_many(consents, request, resources)  # warm up
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        decisions = decide_many(consents, request, resources)
        runs.append(time.perf_counter() - start)
    assert len(decisions) == 1000
    assert {d.basis for d in decisions} == {Basis.PERMIT, Basis.DENY, Basis.SENSITIVE}
    print(f"decide 1,000 Observations against 3 consents: {min(runs) * 1000:.1f} ms")
    assert min(runs) < 0.25


CRAFTED_BASES = [*TABLE["resources"].values(), *seed_resources()]
CRAFTED_TYPES = sorted({r["resourceType"] for r in CRAFTED_BASES} | {"Binary", "Bundle", "X"})
EVERY_CONSENT = [
    _consent(c) for c in ("grant-psy", "deny-data-2020", "grant-dependents-enc-1", "grant-hba1c")
]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    resource=crafted.resources_like(CRAFTED_BASES, CRAFTED_TYPES),
    trusted=st.booleans(),
)
def test_p22_property_decide_never_raises_on_crafted_resources(
    resource: dict[str, Any], trusted: bool
) -> None:
    """The engine reads upstream data defensively: any resource gets a decision; and what it
    permits, minimisation and the removal of mentions take as the gateway does, raising nothing
    but Unreleasable (C-28)."""
    request = _request({"request": {"trusted": trusted}})
    decision = compile_consents(EVERY_CONSENT, request).decide(resource)
    assert isinstance(decision, Decision)
    assert decision.reason
    if not decision.permitted:
        return
    for purpose in sorted(PURPOSES):
        try:
            released = minimise(resource, [purpose])
        except Unreleasable:
            continue
        assert isinstance(without_mentions(released), dict)


# --- C-26 -------------------------------------------------------------------------------------

EVERY_LABEL = [
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}
    for code in ("ETH", "HIV", "PSY", "SDV", "SEX", "STD", "SUD")
] + [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}]


def _grant_every_label() -> dict[str, Any]:
    consent = _consent("grant-app-a")
    consent["id"] = "grant-every-label"
    consent["provision"] = {
        **consent["provision"],
        "provision": [{"type": "permit", "securityLabel": EVERY_LABEL}],
    }
    return consent


def _with_display(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "focus": [{"reference": "Condition/dx", "display": "Major depression"}]}


def test_c26_a_resource_whose_sensitivity_cannot_be_decided_is_withheld() -> None:
    broken = {**TABLE["resources"]["obs-1"], "meta": {"security": {"code": "PSY"}}}
    for consents, trusted in (([_consent("grant-app-a")], False), ([], True)):
        request = _request({"request": {"trusted": trusted}})
        decision = decide(consents, request, broken)
        assert not decision.permitted and decision.basis is Basis.UNDECIDABLE
        assert "cannot be decided" in decision.reason and "meta.security" in decision.reason
    assert not decide([_grant_every_label()], _request({}), broken).permitted


def test_c26_lowercase_psy_label_needs_a_permit_naming_psy() -> None:
    psy = {
        **TABLE["resources"]["obs-1"],
        "meta": {
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "psy"}
            ]
        },
    }
    general = decide([_consent("grant-app-a")], _request({}), psy)
    assert not general.permitted and general.basis is Basis.SENSITIVE
    assert decide([_consent("grant-psy")], _request({}), psy).permitted
    deny = decide([_consent("grant-psy"), _consent("deny-psy")], _request({}), psy)
    assert not deny.permitted and deny.basis is Basis.DENY  # a PSY deny holds for "psy"
    lowercase = _consent("grant-psy")
    for label in lowercase["provision"]["provision"][0]["securityLabel"]:
        label["code"] = label["code"].lower()  # "psy" and "r" in the Consent name PSY and R
    assert decide([lowercase], _request({}), TABLE["resources"]["obs-phq9"]).permitted


def test_c26_released_text_that_may_mention_withheld_data_must_be_hidden() -> None:
    resource = _with_display(TABLE["resources"]["obs-1"])
    general = decide([_consent("grant-app-a")], _request({}), resource)
    assert general.permitted and general.hide_mentions
    trusted = decide([], _request({"request": {"trusted": True}}), resource)
    assert trusted.permitted and trusted.hide_mentions
    assert not decide(
        [_consent("grant-app-a")], _request({}), TABLE["resources"]["obs-1"]
    ).hide_mentions
    every = decide([_grant_every_label()], _request({}), resource)
    assert every.permitted and not every.hide_mentions
    with_a_deny = decide([_grant_every_label(), _consent("deny-psy")], _request({}), resource)
    assert with_a_deny.permitted and with_a_deny.hide_mentions  # a deny may withhold the target


# --- C-10: decided once per shape -------------------------------------------------------------

CONSENT_IDS = sorted(TABLE["consents"])
COMBINATIONS = [
    ["grant-app-a"],
    ["grant-app-a", "deny-psy", "deny-restricted"],
    ["grant-psy", "grant-hiv-very-restricted", "grant-psy-without-level"],
    ["grant-data-2021", "deny-data-2020", "grant-hba1c"],
    ["grant-instance-obs-2", "deny-instance-obs-1", "grant-dependents-enc-1"],
    ["grant-except-conditions", "grant-nested-deny-in-may", "grant-related-enc-1"],
    ["deny-except-lab-for-app-a", "grant-two-deny-siblings", "grant-lab-only-granular"],
]


@pytest.mark.parametrize("combination", COMBINATIONS, ids="+".join)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    resources=lookalikes.responses(),
    others=st.lists(st.sampled_from(CONSENT_IDS), max_size=1),
    every_label=st.booleans(),
    trusted=st.booleans(),
    purposes=st.sampled_from([["TREAT"], [], ["TREAT", "HRESCH"]]),
)
def test_c10_property_decisions_remembered_per_shape_equal_decisions_made_one_by_one(
    combination: list[str],
    resources: list[dict[str, Any]],
    others: list[str],
    every_label: bool,
    trusted: bool,
    purposes: list[str],
) -> None:
    """An evaluator decides each distinct set of facts once and reuses the decision for the
    look-alikes of a response; every decision must equal the one made for that resource alone
    from its facts (``decide_afresh``), field for field: reason, labels, obligations."""
    consents = [_consent(c) for c in [*combination, *others]]
    if every_label:
        consents.append(_grant_every_label())
    request = _request({"request": {"trusted": trusted, "purposes": purposes}})
    evaluator = compile_consents(consents, request)
    remembered = [evaluator.decide(resource) for resource in resources]
    assert remembered == [evaluator.decide_afresh(resource) for resource in resources]


def test_c10_look_alike_resources_are_decided_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand Observations that differ only in ids, dates and values are one decision."""
    made: list[object] = []
    original = Evaluator._decide

    def counted(self: Evaluator, seen: Any) -> Decision:
        made.append(seen)
        return original(self, seen)

    monkeypatch.setattr(Evaluator, "_decide", counted)
    observations = [
        {
            **TABLE["resources"]["obs-1"],
            "id": f"o{i}",
            "effectiveDateTime": f"2025-01-{1 + i % 28:02d}",
        }
        for i in range(1000)
    ]
    evaluator = compile_consents([_consent("grant-app-a")], _request({}))
    decisions = [evaluator.decide(resource) for resource in observations]
    assert len(made) == 1
    assert all(d.permitted for d in decisions)
    dated = compile_consents([_consent("grant-data-2021")], _request({}))
    assert len({dated.decide(r) for r in observations}) == 1  # every one outside 2021
    assert len(made) == 1 + 28  # a provision that compares dates: one decision per date


def _labelled(
    rid: str, *labels: tuple[str, str], code: tuple[str, str] | None = None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": rid,
        "subject": {"reference": "Patient/pat-1"},
        "meta": {"security": [{"system": s, "code": c} for s, c in labels]},
    }
    if code is not None:
        resource["code"] = {"coding": [{"system": code[0], "code": code[1]}]}
    return resource


def test_c26_a_sensitive_category_ticked_on_the_consent_screen_releases_that_category_only() -> (
    None
):
    """The Consent written for ticked categories (C-05, C-26) releases resources whose sensitivity
    codes are all ticked, marked restricted or not; nothing with another code, and nothing marked
    restricted without a code, comes with them."""
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    conf = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)

    def grant(*labels: str) -> dict[str, Any]:
        consent = model.app_grant(
            "pat-1",
            "app-a",
            "A",
            ["PATRQT"],
            ["Condition"],
            [],
            start,
            end,
            sensitivity_labels=labels,
        )
        return {**consent, "id": "c1"}

    request = RequestAttributes(
        patient_id="pat-1",
        client_id="app-a",
        now=datetime(2026, 1, 1, tzinfo=UTC),
        purposes=("PATRQT",),
    )
    resources = {
        "plain": _labelled("plain"),
        "psy-restricted": _labelled("psy-restricted", (act, "PSY"), (conf, "R")),
        "psy-by-code": _labelled(
            "psy-by-code", code=("http://hl7.org/fhir/sid/icd-10-cm", "F32.9")
        ),
        "psy-and-sud": _labelled("psy-and-sud", (act, "PSY"), (act, "SUD"), (conf, "R")),
        "sud": _labelled("sud", (act, "SUD"), (conf, "R")),
        "restricted-only": _labelled("restricted-only", (conf, "R")),
        "hiv-very-restricted": _labelled("hiv-very-restricted", (act, "HIV"), (conf, "V")),
    }

    def released(consent: dict[str, Any]) -> set[str]:
        evaluator = compile_consents([consent], request)
        return {name for name, r in resources.items() if evaluator.decide(r).permitted}

    assert released(grant()) == {"plain"}  # off unless ticked
    assert released(grant("PSY")) == {"plain", "psy-restricted", "psy-by-code"}
    assert released(grant("PSY", "SUD")) == {
        "plain",
        "psy-restricted",
        "psy-by-code",
        "psy-and-sud",
        "sud",
    }
    assert released(grant("HIV")) == {"plain", "hiv-very-restricted"}
