"""The consent screen (S-14, C-05, C-26): kinds of data instead of scope codes, plumbing scopes
that are no choices, and a granted scope that is what the ticked kinds leave of the request,
never more."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from consent.model import app_grant, grant_terms
from gateway.oauth.consents import COMPARTMENT_TYPES
from smart_auth.consent_screen import (
    consent_terms,
    expiry_end,
    granted_scope,
    kinds,
    kinds_of,
    screen,
    sensitive_categories,
    sensitive_of,
    sensitivity_labels,
)
from smart_auth.scopes import ScopeSet

ASKED = "openid fhirUser launch/patient offline_access patient/*.rs"
ALL = [kind.id for kind in kinds()]
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def _granted(offered: str, ticked: list[str], offline: bool = True) -> str:
    return granted_scope(offered, ticked, offline=offline, compartment=COMPARTMENT_TYPES)


def test_s14_the_screen_shows_kinds_of_data_and_no_plumbing_scope() -> None:
    view = screen(ASKED, ("PATRQT",), COMPARTMENT_TYPES)
    assert [choice.kind.id for choice in view.kinds] == ALL  # a wildcard is every kind
    assert not any(choice.changes for choice in view.kinds)  # read-only scopes
    assert view.identity and view.offline
    assert view.purposes == ("because you asked for it, for your own use",)
    written = screen("patient/Observation.cruds patient/Condition.rs", (), COMPARTMENT_TYPES)
    shown = {choice.kind.id: choice.changes for choice in written.kinds}
    assert shown == {
        "conditions": False,
        "lab": True,
        "vitals": True,
        "measurements": True,
    }  # the app may change Observations: said on each of their kinds
    granular = screen(f"patient/Observation.rs?category={LAB}", (), COMPARTMENT_TYPES)
    assert [choice.kind.id for choice in granular.kinds] == ["lab"]
    assert not screen("openid fhirUser", (), COMPARTMENT_TYPES).kinds


def test_s14_every_kind_ticked_grants_the_scope_as_asked() -> None:
    assert _granted(ASKED, ALL) == ASKED
    assert _granted(ASKED, ALL, offline=False) == "openid fhirUser launch/patient patient/*.rs"


def test_s14_an_unticked_kind_narrows_the_scope_to_the_others() -> None:
    granted = _granted("launch/patient patient/Observation.rs patient/Condition.rs", ["lab"])
    assert granted == f"launch/patient patient/Observation.rs?category={LAB}"
    wildcard = ScopeSet.parse(_granted(ASKED, ["conditions", "vitals"]))
    types = {scope.resource_type for scope in wildcard if not scope.restriction}
    assert {"Condition", "ClinicalImpression"} <= types
    assert "Practitioner" in types and "Medication" in types  # references can still be followed
    assert not types & {"Observation", "MedicationRequest", "Patient", "Encounter", "*"}
    (vitals,) = [scope for scope in wildcard if scope.restriction]
    assert vitals.resource_type == "Observation" and vitals.restriction[0][1].endswith(
        "|vital-signs"
    )


def test_s14_a_granular_scope_the_app_asked_for_stays_as_asked_or_goes() -> None:
    asked = "patient/Observation.rs?category=laboratory patient/Condition.rs"
    assert _granted(asked, ["lab", "conditions"]) == asked
    assert _granted(asked, ["conditions"]) == "patient/Condition.rs"


def test_s14_nothing_ticked_is_a_refusal_and_plumbing_alone_is_granted() -> None:
    assert _granted(ASKED, []) == ""
    assert _granted(ASKED, ["no-such-kind", "patient/*.cruds"]) == ""  # only kinds count
    assert _granted("openid fhirUser", []) == "openid fhirUser"


@settings(max_examples=40, deadline=None)
@given(
    st.sets(st.sampled_from(ALL)),
    st.sampled_from(
        [
            ASKED,
            "launch/patient patient/*.cruds",
            "patient/Observation.rs patient/MedicationRequest.rs patient/Patient.r",
            f"user/*.rs patient/Observation.rs?category={LAB}",
            "patient/*.read openid",
        ]
    ),
)
def test_s14_the_granted_scope_is_never_more_than_asked(ticked: set[str], asked: str) -> None:
    offered = ScopeSet.parse(asked)
    granted = ScopeSet.parse(_granted(asked, sorted(ticked)))
    assert granted.other <= offered.other
    for scope in granted:
        assert any(scope.is_within(theirs) for theirs in offered), scope


@settings(max_examples=15, deadline=None)
@given(st.sets(st.sampled_from(ALL), min_size=1), st.sets(st.sampled_from(["hiv", "violence"])))
def test_c19_the_consent_written_reads_back_as_the_kinds_ticked(
    ticked: set[str], sensitive: set[str]
) -> None:
    """What "Connected apps" shows of a grant is what the patient ticked on the screen."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    terms = consent_terms(
        _granted(ASKED, sorted(ticked)),
        start,
        expiry_end(start, "30d"),
        sensitivity_labels(sensitive),
    )
    types = list(terms.resource_types)
    if "*" in types:
        types = list(COMPARTMENT_TYPES)
    consent = app_grant(
        "pat-1",
        "app",
        "App",
        ["PATRQT"],
        types,
        terms.granular_scopes,
        terms.start,
        terms.end,
        sensitivity_labels=terms.labels,
    )
    back = grant_terms(consent)
    assert {kind.id for kind in kinds_of(back.types, back.codes)} == ticked
    assert {category.id for category in sensitive_of(back.labels)} == sensitive
    assert back.end is not None and back.end.startswith("2026-03-31T23:59:59")


def test_c26_sensitive_categories_cover_every_sensitivity_code() -> None:
    from consent.sensitive import SENSITIVITY_CODES

    codes = {code for category in sensitive_categories() for code in category.codes}
    assert codes == SENSITIVITY_CODES
    assert sensitivity_labels(["hiv", "mental-health", "unknown"]) == ("PSY", "HIV")


def test_c05_the_end_date_is_the_end_of_the_day_shown() -> None:
    started = datetime(2026, 1, 31, 22, 30, tzinfo=UTC)
    assert expiry_end(started, "1d") == datetime(2026, 2, 1, 23, 59, 59, tzinfo=UTC)
    assert expiry_end(started, "nonsense") == expiry_end(started, "90d")
    terms = consent_terms(
        "patient/*.rs patient/Observation.rs?category=vital-signs",
        started,
        expiry_end(started, "1y"),
    )
    assert terms.resource_types == ("*",)
    assert terms.granular_scopes == ("patient/Observation.rs?category=vital-signs",)
    assert terms.labels == ()


def test_s14_kinds_cover_every_type_of_the_patient_compartment() -> None:
    """Every compartment type falls in a kind; none but the last falls in 'other'."""
    named = {name for kind in kinds()[:-1] for name in (*kind.types, *kind.categories)}
    leftover = set(COMPARTMENT_TYPES) - named
    assert {kind.id for kind in kinds_of(sorted(leftover), {})} == {"other"}
