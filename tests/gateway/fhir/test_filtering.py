"""Step 6's filter, unit by unit (DESIGN.md "Narrow before, filter after"; CONSENT.md C-18):
what a token may see of a searchset or history Bundle, with hand-built tokens and resources."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from gateway.fhir.access import SEARCH, SEE, AccessPolicy
from gateway.fhir.context import AccessContext
from gateway.fhir.filtering import filter_bundle, release_resource
from smart_auth.scopes import ScopeSet

A, B = "pat-a", "pat-b"


def policy(scope: str, patient: str | None = A) -> AccessPolicy:
    return AccessPolicy(
        AccessContext(
            issuer="i",
            subject="s",
            client_id="app",
            scopes=ScopeSet.parse(scope),
            jti="j",
            expires_at=datetime.now(UTC),
            patient=patient,
        )
    )


def observation(oid: str, patient: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def bundle(*resources: dict[str, Any], mode: str = "match", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 99,
        "entry": [{"resource": r, "search": {"mode": mode}} for r in resources],
        **extra,
    }


def test_s26_c18_matches_of_other_patients_go_and_total_is_recounted() -> None:
    found = bundle(observation("1", A), observation("2", B), observation("3", A))
    found["entry"].append(
        {"resource": {"resourceType": "Patient", "id": B}, "search": {"mode": "include"}}
    )
    withheld = filter_bundle(found, policy("patient/*.rs"), SEARCH)
    assert [e["resource"]["id"] for e in found["entry"]] == ["1", "3"]
    assert found["total"] == 2  # never the upstream's 99 (C-18)
    assert (withheld.matches, withheld.others) == (1, 1)


def test_c18_total_is_omitted_on_a_page_of_a_paged_result() -> None:
    paged = bundle(observation("1", A), link=[{"relation": "next", "url": "x?page=2"}])
    filter_bundle(paged, policy("patient/*.rs"), SEARCH)
    assert "total" not in paged and len(paged["entry"]) == 1


def test_c18_nothing_released_means_no_entries_and_total_zero() -> None:
    found = bundle(observation("1", B), observation("2", B))
    filter_bundle(found, policy("patient/*.rs"), SEARCH)
    assert found["total"] == 0 and "entry" not in found


def test_c10_the_release_step_decides_after_the_access_check() -> None:
    """``then`` (consent and minimisation) sees only what the token may see, with its owners,
    and may replace or withhold each resource."""
    seen: list[tuple[str, frozenset[str]]] = []

    def then(resource: dict[str, Any], owners: frozenset[str]) -> dict[str, Any] | None:
        seen.append((resource["id"], owners))
        return None if resource["id"] == "3" else {**resource, "minimised": True}

    found = bundle(observation("1", A), observation("2", B), observation("3", A))
    filter_bundle(found, policy("patient/*.rs"), SEARCH, then=then)
    assert seen == [("1", frozenset({A})), ("3", frozenset({A}))]
    assert [(e["resource"]["id"], e["resource"]["minimised"]) for e in found["entry"]] == [
        ("1", True)
    ]
    assert found["total"] == 1


def test_s26_an_outcome_entry_stays_and_includes_need_only_read_or_search() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    found = bundle(observation("1", A))
    found["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    found["entry"].append({"resource": observation("2", A), "search": {"mode": "include"}})
    filter_bundle(found, policy("patient/Observation.s"), SEARCH)
    assert [e["resource"].get("id") for e in found["entry"]] == ["1", None, "2"]


def test_s26_a_deleted_version_in_history_needs_an_unrestricted_user_or_system_scope() -> None:
    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"request": {"method": "DELETE", "url": "Observation/1"}}],
    }
    for scope, kept in (("patient/*.rs", 0), ("system/Observation.rs", 1)):
        copied = copy.deepcopy(history)
        filter_bundle(copied, policy(scope), SEE)
        assert len(copied.get("entry", [])) == kept, scope


def test_s26_contained_resources_of_other_patients_are_removed() -> None:
    theirs = {"resourceType": "Observation", "id": "c", "subject": {"reference": f"Patient/{B}"}}
    ours = {"resourceType": "Observation", "id": "d", "subject": {"reference": f"Patient/{A}"}}
    resource = observation("1", A, contained=[theirs, ours])
    released = release_resource(resource, policy("patient/*.rs"), SEE)
    assert released is not None and released["contained"] == [ours]
    alone = observation("2", A, contained=[theirs])
    assert "contained" not in (release_resource(alone, policy("patient/*.rs"), SEE) or {})
