"""The consent screen (S-14, C-05): its words and the subset of scopes granted."""

from __future__ import annotations

from datetime import UTC, datetime

from smart_auth.consent_screen import consent_terms, describe, granted_scope, screen


def test_s14_consent_screen_words_and_the_granted_subset() -> None:
    view = screen("patient/Observation.rs?category=laboratory offline_access openid", ("PATRQT",))
    assert view.offline and view.purposes == ("because you asked for it, for your own use",)
    assert "test results" in view.choices[0].words and "laboratory" in view.choices[0].words
    assert describe("patient/Immunization.cruds").startswith("Create, read, update, delete and")
    assert granted_scope("a b c", ["c", "a", "z"]) == "a c"  # request order, nothing extra
    terms = consent_terms(
        "patient/*.rs patient/Observation.rs?category=vital-signs", datetime.now(UTC), "1y"
    )
    assert terms.resource_types == ("*",)
    assert terms.granular_scopes == ("patient/Observation.rs?category=vital-signs",)
    assert (terms.end - terms.start).days == 365
