"""SMART scope grammar (S-27)."""

from __future__ import annotations

import pytest

from smart_auth.scopes import Context, ScopeError, ScopeSet, parse_scope


@pytest.mark.parametrize(
    ("scope", "letters"),
    [
        ("patient/Observation.rs", "rs"),
        ("patient/Observation.read", "rs"),
        ("user/*.write", "cud"),
        ("system/Patient.*", "cruds"),
        ("patient/*.cruds", "cruds"),
        ("user/Condition.c", "c"),
        ("patient/Observation.s", "s"),
    ],
)
def test_s27_v1_and_v2_grammar(scope: str, letters: str) -> None:
    parsed = parse_scope(scope)
    assert parsed is not None
    assert "".join(sorted(parsed.letters)) == "".join(sorted(letters))


def test_s27_granular_restriction() -> None:
    parsed = parse_scope(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    )
    assert parsed is not None
    assert parsed.restriction == (
        ("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"),
    )
    assert parsed.context is Context.PATIENT


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.sr",  # wrong order
        "patient/Observation.rrs",  # repeated letter
        "patient/Observation.x",  # unknown letter
        "patient/Observation.",  # no letters
        "patient/observation.rs",  # not a type
        "clinician/Observation.rs",  # unknown context
        "patient/Observation.read?category=x",  # v1 with a restriction
        "patient/Observation.rs?category",  # restriction without a value
    ],
)
def test_s27_malformed_scopes_are_refused_at_authorization(scope: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(scope)
    with pytest.raises(ScopeError):
        ScopeSet.parse(scope, strict=True)


def test_s27_malformed_scopes_are_ignored_at_request_time() -> None:
    scopes = ScopeSet.parse("openid patient/Observation.sr patient/Condition.rs launch/patient")
    assert [str(s) for s in scopes] == ["patient/Condition.rs"]
    assert scopes.ignored == ("patient/Observation.sr",)
    assert scopes.other == {"openid", "launch/patient"}
    assert not scopes.allows("Observation", "r")


def test_matching_by_type_letter_and_context() -> None:
    scopes = ScopeSet.parse("patient/*.r user/Observation.s")
    assert scopes.allows("Condition", "r", Context.PATIENT)
    assert not scopes.allows("Condition", "s")
    assert scopes.allows("Observation", "s", Context.USER)
    assert not scopes.allows("Observation", "s", Context.PATIENT)
    assert not scopes.allows("Observation", "c")


@pytest.mark.parametrize(
    ("narrow", "wide", "within"),
    [
        ("patient/Observation.rs", "patient/Observation.rs", True),
        ("patient/Observation.r", "patient/Observation.rs", True),
        ("patient/Observation.rs", "patient/Observation.r", False),
        ("patient/Observation.rs", "patient/*.rs", True),
        ("patient/*.rs", "patient/Observation.rs", False),
        ("patient/Observation.rs?category=vital-signs", "patient/Observation.rs", True),
        ("patient/Observation.rs", "patient/Observation.rs?category=vital-signs", False),
        ("user/Observation.rs", "patient/Observation.rs", False),
        ("patient/Observation.rs offline_access", "patient/Observation.rs", False),
        ("patient/Observation.read", "patient/Observation.rs", True),
    ],
)
def test_s19_scope_narrowing(narrow: str, wide: str, within: bool) -> None:
    assert ScopeSet.parse(narrow).is_within(ScopeSet.parse(wide)) is within
